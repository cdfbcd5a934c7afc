//! Who is on the other end of a socket: a JWT checked at upgrade (HS256 shared secret, an RS256/ES256
//! public key, or a JWKS file of RS256/ES256 keys chosen by `kid`), or — only in embedded mode or with `--insecure-no-auth` — a development identity from the
//! query string. The algorithm is pinned by the configuration, so `alg: none` and HS/RS confusion fail.
//!
//! Claims: `sub` (user id, required), `name` (display name), `exp` (required), `nbf`, `aud`/`iss` when
//! configured, and `sessions`: the collaboration sessions the user may join (ids, or `"*"` for all).

use std::collections::HashSet;

use actix_web::HttpRequest;
use anyhow::{bail, Context};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::config::Cli;

/// Longest accepted token, in bytes.
const MAX_TOKEN_BYTES: usize = 8 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: String,
    pub name: String,
    /// Token expiry (Unix seconds); None without authentication.
    pub expires_at: Option<i64>,
    /// Collaboration sessions this user may join; None: any (development identity, or `"*"`).
    pub sessions: Option<HashSet<String>>,
}

impl Identity {
    pub fn may_join(&self, session_id: &str) -> bool {
        self.sessions
            .as_ref()
            .is_none_or(|allowed| allowed.contains(session_id))
    }

    /// The development identity: anyone may claim any name. Embedded mode and --insecure-no-auth only.
    pub fn development(user: Option<String>, name: Option<String>) -> Identity {
        let user_id = user.unwrap_or_else(|| "anonymous".into());
        Identity {
            name: name.unwrap_or_else(|| user_id.clone()),
            user_id,
            expires_at: None,
            sessions: None,
        }
    }
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    name: Option<String>,
    exp: i64,
    #[serde(default)]
    sessions: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no token: send `Authorization: Bearer <jwt>` or `?access_token=<jwt>`")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// One key tokens may be signed with, and how they are validated with it.
pub struct VerifyKey {
    /// The JWKS `kid`; None for the single configured secret or PEM key.
    kid: Option<String>,
    key: DecodingKey,
    validation: Validation,
}

pub enum Authenticator {
    /// No authentication (embedded demo, or --insecure-no-auth).
    Off,
    Jwt(Vec<VerifyKey>),
}

/// RS256 for RSA keys, ES256 for EC keys; nothing else comes from a JWKS (no shared secrets there).
fn jwk_algorithm(jwk: &jsonwebtoken::jwk::Jwk) -> Option<Algorithm> {
    use jsonwebtoken::jwk::{AlgorithmParameters, KeyAlgorithm};
    match (&jwk.common.key_algorithm, &jwk.algorithm) {
        (Some(KeyAlgorithm::RS256), AlgorithmParameters::RSA(_)) => Some(Algorithm::RS256),
        (Some(KeyAlgorithm::ES256), AlgorithmParameters::EllipticCurve(_)) => {
            Some(Algorithm::ES256)
        }
        (None, AlgorithmParameters::RSA(_)) => Some(Algorithm::RS256),
        (None, AlgorithmParameters::EllipticCurve(_)) => Some(Algorithm::ES256),
        _ => None,
    }
}

impl Authenticator {
    /// From the configuration; refuses a networked node without authentication unless told so explicitly.
    pub fn from_cli(cli: &Cli) -> anyhow::Result<Authenticator> {
        let secret = match (&cli.auth.jwt_secret, &cli.auth.jwt_secret_file) {
            (Some(s), _) => Some(s.expose().as_bytes().to_vec()),
            (None, Some(path)) => Some(
                std::fs::read(path)
                    .with_context(|| format!("reading --jwt-secret-file {}", path.display()))?
                    .trim_ascii()
                    .to_vec(),
            ),
            (None, None) => None,
        };
        let mut keys: Vec<(Option<String>, DecodingKey, Algorithm)> = Vec::new();
        if let Some(secret) = secret {
            keys.push((None, DecodingKey::from_secret(&secret), Algorithm::HS256));
        }
        if let Some(path) = &cli.auth.jwt_public_key_file {
            let pem = std::fs::read(path)
                .with_context(|| format!("reading --jwt-public-key-file {}", path.display()))?;
            keys.push(match DecodingKey::from_rsa_pem(&pem) {
                Ok(key) => (None, key, Algorithm::RS256),
                Err(_) => (
                    None,
                    DecodingKey::from_ec_pem(&pem)
                        .context("the public key is neither an RSA nor an EC (P-256) PEM key")?,
                    Algorithm::ES256,
                ),
            });
        }
        if let Some(path) = &cli.auth.jwt_jwks_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading --jwt-jwks-file {}", path.display()))?;
            let set: jsonwebtoken::jwk::JwkSet =
                serde_json::from_str(&text).context("--jwt-jwks-file is not a JWK set")?;
            for jwk in &set.keys {
                let kid = jwk
                    .common
                    .key_id
                    .clone()
                    .context("every JWKS key needs a `kid`")?;
                let algorithm = jwk_algorithm(jwk).with_context(|| {
                    format!("JWKS key {kid}: only RS256 and ES256 keys are accepted")
                })?;
                let key = DecodingKey::from_jwk(jwk).with_context(|| format!("JWKS key {kid}"))?;
                keys.push((Some(kid), key, algorithm));
            }
        }
        if keys.len() > 1 && keys.iter().any(|(kid, _, _)| kid.is_none()) {
            bail!("configure one of: a JWT secret, a public key file, or a JWKS file");
        }
        if keys.is_empty() {
            if !cli.is_embedded() && !cli.auth.insecure_no_auth {
                bail!(
                    "a networked gateway needs authentication: set --jwt-secret(-file), \
                     --jwt-public-key-file or --jwt-jwks-file, or pass --insecure-no-auth explicitly"
                );
            }
            tracing::warn!(
                "AUTHENTICATION IS OFF: anyone can connect and claim any identity (?user=&name=). \
                 For demos and tests only."
            );
            return Ok(Authenticator::Off);
        }
        let keys = keys
            .into_iter()
            .map(|(kid, key, algorithm)| {
                let mut validation = Validation::new(algorithm);
                validation.validate_nbf = true;
                validation.leeway = cli.auth.jwt_leeway_secs;
                validation.set_required_spec_claims(&["exp", "sub"]);
                match &cli.auth.jwt_audience {
                    Some(aud) => validation.set_audience(&[aud]),
                    None => validation.validate_aud = false,
                }
                if let Some(iss) = &cli.auth.jwt_issuer {
                    validation.set_issuer(&[iss]);
                }
                VerifyKey {
                    kid,
                    key,
                    validation,
                }
            })
            .collect::<Vec<_>>();
        tracing::info!(keys = keys.len(), "JWT authentication on");
        Ok(Authenticator::Jwt(keys))
    }

    pub fn is_on(&self) -> bool {
        matches!(self, Authenticator::Jwt(_))
    }

    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let Authenticator::Jwt(keys) = self else {
            return Err(AuthError::Invalid("authentication is off".into()));
        };
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::Invalid("token too long".into()));
        }
        // One configured key: that one. A JWKS: the key named by the token's `kid`.
        let chosen = match keys.as_slice() {
            [single] if single.kid.is_none() => single,
            _ => {
                let header = jsonwebtoken::decode_header(token)
                    .map_err(|e| AuthError::Invalid(e.to_string()))?;
                let kid = header
                    .kid
                    .ok_or_else(|| AuthError::Invalid("the token has no `kid`".into()))?;
                keys.iter()
                    .find(|k| k.kid.as_deref() == Some(kid.as_str()))
                    .ok_or_else(|| AuthError::Invalid(format!("unknown key `{kid}`")))?
            }
        };
        let data = jsonwebtoken::decode::<Claims>(token, &chosen.key, &chosen.validation)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        let claims = data.claims;
        if claims.sub.is_empty() || claims.sub.len() > 64 {
            return Err(AuthError::Invalid("`sub` must be 1 to 64 bytes".into()));
        }
        let sessions = if claims.sessions.iter().any(|s| s == "*") {
            None
        } else {
            Some(claims.sessions.into_iter().collect())
        };
        Ok(Identity {
            name: claims.name.unwrap_or_else(|| claims.sub.clone()),
            user_id: claims.sub,
            expires_at: Some(claims.exp),
            sessions,
        })
    }

    /// The identity of an upgrade request: the token's, or (authentication off) the development one.
    pub fn identify(
        &self,
        req: &HttpRequest,
        dev_user: Option<String>,
        dev_name: Option<String>,
    ) -> Result<Identity, AuthError> {
        if !self.is_on() {
            return Ok(Identity::development(dev_user, dev_name));
        }
        let token = bearer_token(req).ok_or(AuthError::Missing)?;
        self.verify(&token)
    }
}

/// `Authorization: Bearer <token>`, else the `access_token` query parameter (browsers cannot set headers
/// on a WebSocket).
fn bearer_token(req: &HttpRequest) -> Option<String> {
    if let Some(value) = req
        .headers()
        .get("authorization")
        .and_then(|h| h.to_str().ok())
    {
        return value.strip_prefix("Bearer ").map(|t| t.trim().to_owned());
    }
    url::form_urlencoded::parse(req.query_string().as_bytes())
        .find(|(k, _)| k == "access_token")
        .map(|(_, v)| v.into_owned())
}

/// True when the request's Origin (if any: non-browser clients send none) is allowed.
pub fn origin_allowed(req: &HttpRequest, allowed: &[String]) -> bool {
    if allowed.is_empty() {
        return true;
    }
    match req.headers().get("origin").and_then(|h| h.to_str().ok()) {
        None => true,
        Some(origin) => allowed
            .iter()
            .any(|a| a == "*" || a.eq_ignore_ascii_case(origin)),
    }
}
