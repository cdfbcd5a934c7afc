//! Identity and access: JWT on every upgrade (4001 for every kind of bad token), session access (4003),
//! the Origin allow-list (1008), token expiry and refresh mid-connection, executions only for their owner
//! (or their session's participants), and a networked gateway that refuses to start without auth.

use std::time::{Duration, Instant};

use crate::harness::*;
use base64::Engine as _;
use futures_util::StreamExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "test-secret-9f2c";
const AUDIENCE: &str = "chat2sql";
const ISSUER: &str = "test-issuer";

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn claims(sub: &str, exp_in: i64) -> Value {
    json!({"sub": sub, "name": format!("{sub} (name)"), "exp": now() + exp_in, "aud": AUDIENCE, "iss": ISSUER,
           "sessions": ["s-granted"]})
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(workspace_root().join("tests/fixtures/jwt").join(name)).unwrap()
}

/// Opens a socket and returns the frames it got and the close code the server ended it with.
async fn connect_outcome(
    url: &str,
    headers: &[(&str, &str)],
    hold: Duration,
) -> (Vec<Value>, Option<u16>) {
    let mut request = url.into_client_request().unwrap();
    for (k, v) in headers {
        let name =
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap();
        request.headers_mut().insert(name, v.parse().unwrap());
    }
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(request),
    )
    .await
    .expect("connect timed out")
    .expect("the upgrade itself is always accepted");
    let mut frames = Vec::new();
    let deadline = Instant::now() + hold;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next()).await {
            Err(_) => return (frames, None),
            Ok(Some(Ok(Message::Text(t)))) => frames.push(serde_json::from_str(&t).unwrap()),
            Ok(Some(Ok(Message::Close(c)))) => return (frames, c.map(|c| u16::from(c.code))),
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(_))) | Ok(None) => return (frames, None),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_get_4001_and_good_ones_carry_the_identity() {
    let public_key = workspace_root().join("tests/fixtures/jwt/rs256-public.pem");
    let cluster = Cluster::builder("auth_tokens")
        .in_process()
        .gateways(1)
        .workers(0)
        .database(false)
        .gateway_args([
            "--jwt-secret",
            SECRET,
            "--jwt-audience",
            AUDIENCE,
            "--jwt-issuer",
            ISSUER,
        ])
        .start()
        .await;
    // A second gateway verifying RS256 with a public key.
    let rs_cluster = Cluster::builder("auth_tokens_rs")
        .in_process()
        .gateways(1)
        .workers(0)
        .database(false)
        .gateway_args([
            "--jwt-public-key-file",
            public_key.to_str().unwrap(),
            "--jwt-audience",
            AUDIENCE,
        ])
        .start()
        .await;
    let hs_url = cluster.gateway(0).ws_url("/ws/query");
    let rs_url = rs_cluster.gateway(0).ws_url("/ws/query");

    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let good = claims("alice", 600);
    let mut no_sub = good.clone();
    no_sub.as_object_mut().unwrap().remove("sub");
    let mut not_yet = good.clone();
    not_yet["nbf"] = json!(now() + 600);
    let mut wrong_aud = good.clone();
    wrong_aud["aud"] = json!("someone-else");
    let mut wrong_iss = good.clone();
    wrong_iss["iss"] = json!("mallory");
    let alg_none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&good)
    );
    // HS/RS confusion: an HS256 token "signed" with the RS256 server's public key as the secret.
    let confused = hs256(&good, &fixture("rs256-public.pem"));
    let rs_good = jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        &good,
        &EncodingKey::from_rsa_pem(&fixture("rs256-private.pem")).unwrap(),
    )
    .unwrap();

    let bad: Vec<(&str, String, Option<String>)> = vec![
        ("no token", hs_url.clone(), None),
        (
            "bad signature",
            hs_url.clone(),
            Some(hs256(&good, b"not-the-secret")),
        ),
        ("alg none", hs_url.clone(), Some(alg_none)),
        (
            "expired",
            hs_url.clone(),
            Some(hs256(&claims("alice", -600), SECRET.as_bytes())),
        ),
        (
            "not yet valid",
            hs_url.clone(),
            Some(hs256(&not_yet, SECRET.as_bytes())),
        ),
        (
            "wrong audience",
            hs_url.clone(),
            Some(hs256(&wrong_aud, SECRET.as_bytes())),
        ),
        (
            "wrong issuer",
            hs_url.clone(),
            Some(hs256(&wrong_iss, SECRET.as_bytes())),
        ),
        (
            "no sub",
            hs_url.clone(),
            Some(hs256(&no_sub, SECRET.as_bytes())),
        ),
        ("garbage", hs_url.clone(), Some("not.a.jwt".into())),
        ("HS/RS confusion", rs_url.clone(), Some(confused)),
        (
            "RS token on the HS node",
            hs_url.clone(),
            Some(rs_good.clone()),
        ),
    ];
    for (case, url, token) in bad {
        let header = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = header
            .iter()
            .map(|h| ("authorization", h.as_str()))
            .collect();
        let (frames, code) = connect_outcome(&url, &headers, Duration::from_secs(5)).await;
        assert_eq!(code, Some(4001), "{case}: frames {frames:?}");
        assert_eq!(
            frames.first().map(|f| f["payload"]["code"].clone()),
            Some(json!("unauthorized")),
            "{case}"
        );
    }

    // Valid tokens: header on the HS node, query parameter (browsers) on both.
    let hs_good = hs256(&good, SECRET.as_bytes());
    let bearer = format!("Bearer {hs_good}");
    let (_, code) = connect_outcome(
        &hs_url,
        &[("authorization", &bearer)],
        Duration::from_millis(500),
    )
    .await;
    assert_eq!(code, None, "a valid token keeps the socket open");
    let (_, code) = connect_outcome(
        &format!("{rs_url}?access_token={rs_good}"),
        &[],
        Duration::from_millis(500),
    )
    .await;
    assert_eq!(
        code, None,
        "a valid RS256 token in access_token keeps the socket open"
    );

    // The identity comes from the token: participant ids, names and chat authors.
    let collab = |sub: &str| {
        let token = hs256(&claims(sub, 600), SECRET.as_bytes());
        format!(
            "{}?access_token={token}&user=spoofed",
            cluster.gateway(0).ws_url("/ws/collaboration/s-granted")
        )
    };
    let mut a = Client::connect(&collab("alice"), Some(cluster.schema())).await;
    let state = a.recv_json().await;
    assert_eq!(state["type"], "session_state");
    let me = &state["payload"]["participants"][0];
    assert_eq!(me["userId"], "alice", "{state}");
    assert_eq!(me["name"], "alice (name)");
    let mut b = Client::connect(&collab("bob"), Some(cluster.schema())).await;
    b.recv_json().await;
    let joined = a.recv_json().await;
    assert_eq!(
        joined["payload"]["participant"]["userId"], "bob",
        "{joined}"
    );
    b.send_json(json!({"type": "chat_message", "payload": {"message": {"id": "m1", "content": "hi", "authorId": "alice#x"}}}))
        .await;
    let chat = a.recv_json().await;
    assert!(
        chat["payload"]["message"]["authorId"]
            .as_str()
            .unwrap()
            .starts_with("bob#"),
        "{chat}"
    );
    assert_eq!(chat["payload"]["message"]["authorName"], "bob (name)");

    // A session the token does not grant: 4003.
    let token = hs256(&claims("carol", 600), SECRET.as_bytes());
    let url = format!(
        "{}?access_token={token}",
        cluster.gateway(0).ws_url("/ws/collaboration/s-other")
    );
    let (frames, code) = connect_outcome(&url, &[], Duration::from_secs(5)).await;
    assert_eq!(code, Some(4003), "{frames:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_closes_with_4001_unless_refreshed() {
    let cluster = Cluster::builder("auth_expiry")
        .in_process()
        .gateways(1)
        .workers(0)
        .database(false)
        .gateway_args(["--jwt-secret", SECRET, "--jwt-leeway-secs", "0"])
        .start()
        .await;
    let short = hs256(&json!({"sub": "dave", "exp": now() + 2}), SECRET.as_bytes());
    let url = format!(
        "{}?access_token={short}",
        cluster.gateway(0).ws_url("/ws/query")
    );
    let started = Instant::now();
    let (frames, code) = connect_outcome(&url, &[], Duration::from_secs(10)).await;
    assert_eq!(code, Some(4001), "{frames:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed after {:?}",
        started.elapsed()
    );
    assert_eq!(frames.last().unwrap()["payload"]["code"], "unauthorized");

    // Refreshed before expiry (same sub): still open after the first token's expiry.
    let short = hs256(&json!({"sub": "dave", "exp": now() + 2}), SECRET.as_bytes());
    let url = format!(
        "{}?access_token={short}",
        cluster.gateway(0).ws_url("/ws/query")
    );
    let mut c = Client::connect(&url, Some(cluster.schema())).await;
    // A token for someone else is refused and changes nothing.
    let other = hs256(
        &json!({"sub": "eve", "exp": now() + 600}),
        SECRET.as_bytes(),
    );
    c.send_json(json!({"type": "refresh_token", "id": "r0", "payload": {"token": other}}))
        .await;
    let refused = c.recv_json().await;
    assert_eq!(refused["payload"]["code"], "forbidden", "{refused}");
    let fresh = hs256(
        &json!({"sub": "dave", "exp": now() + 600}),
        SECRET.as_bytes(),
    );
    c.send_json(json!({"type": "refresh_token", "id": "r1", "payload": {"token": fresh}}))
        .await;
    let ack = c.recv_json().await;
    assert_eq!(ack["type"], "ack", "{ack}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    c.ping(7).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origins_and_execution_ownership() {
    let cluster = Cluster::builder("auth_origin")
        .in_process()
        .gateways(1)
        .workers(0)
        .database(false)
        .gateway_args([
            "--jwt-secret",
            SECRET,
            "--allowed-origins",
            "https://app.example,https://admin.example",
        ])
        .start()
        .await;
    let token = |sub: &str| hs256(&json!({"sub": sub, "exp": now() + 600}), SECRET.as_bytes());
    let url = |sub: &str| {
        format!(
            "{}?access_token={}",
            cluster.gateway(0).ws_url("/ws/query"),
            token(sub)
        )
    };
    let (frames, code) = connect_outcome(
        &url("alice"),
        &[("origin", "https://evil.example")],
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(code, Some(1008), "{frames:?}");
    let (_, code) = connect_outcome(
        &url("alice"),
        &[("origin", "https://app.example")],
        Duration::from_millis(500),
    )
    .await;
    assert_eq!(code, None);

    // Alice's execution (queued: no worker runs here) is hers: Bob may not follow it, and is told
    // exactly what an id that never existed gets (tests/tests/it/isolation.rs walks every message).
    let mut alice = Client::connect(&url("alice"), Some(cluster.schema())).await;
    let exec = alice.execute("SELECT 1", None, Some("a1")).await;
    let mut bob = Client::connect(&url("bob"), Some(cluster.schema())).await;
    for kind in ["resume", "subscribe"] {
        bob.send_json(
            json!({"type": kind, "id": "b1", "payload": {"executionId": exec, "afterSeq": 0}}),
        )
        .await;
        let refused = bob.recv_json().await;
        assert_eq!(refused["payload"]["code"], "not_found", "{kind}: {refused}");
    }
    let mut alice2 = Client::connect(&url("alice"), Some(cluster.schema())).await;
    alice2
        .send_json(
            json!({"type": "resume", "id": "a2", "payload": {"executionId": exec, "afterSeq": 0}}),
        )
        .await;
    let ack = alice2.recv_json().await;
    assert_eq!(ack["type"], "ack", "the owner may resume: {ack}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_networked_gateway_refuses_to_start_without_auth() {
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(&binaries().gateway)
            .args(["--bind", "127.0.0.1:0", "--redis-url", &redis_url()])
            .env_remove("C2S_INSECURE_NO_AUTH")
            .env_remove("C2S_JWT_SECRET")
            .output(),
    )
    .await
    .expect("the gateway should exit at once")
    .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--insecure-no-auth"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_keys_are_chosen_by_kid() {
    let jwks = workspace_root().join("tests/fixtures/jwt/jwks.json");
    let cluster = Cluster::builder("auth_jwks")
        .in_process()
        .gateways(1)
        .workers(0)
        .database(false)
        .gateway_args(["--jwt-jwks-file", jwks.to_str().unwrap()])
        .start()
        .await;
    let private = EncodingKey::from_rsa_pem(&fixture("rs256-private.pem")).unwrap();
    let body = json!({"sub": "frank", "exp": now() + 600});
    let signed = |kid: Option<&str>| {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, &body, &private).unwrap()
    };
    let url = |token: &str| {
        format!(
            "{}?access_token={token}",
            cluster.gateway(0).ws_url("/ws/query")
        )
    };
    let (_, code) = connect_outcome(
        &url(&signed(Some("test-key-1"))),
        &[],
        Duration::from_millis(500),
    )
    .await;
    assert_eq!(code, None, "the JWKS key named by kid verifies the token");
    for (case, token) in [
        ("unknown kid", signed(Some("other-key"))),
        ("no kid", signed(None)),
        ("HS256 with the kid", {
            let mut header = Header::new(Algorithm::HS256);
            header.kid = Some("test-key-1".into());
            jsonwebtoken::encode(
                &header,
                &body,
                &EncodingKey::from_secret(&fixture("rs256-public.pem")),
            )
            .unwrap()
        }),
    ] {
        let (frames, code) = connect_outcome(&url(&token), &[], Duration::from_secs(5)).await;
        assert_eq!(code, Some(4001), "{case}: {frames:?}");
    }
}
