//! WebSocket endpoints. Each socket gets one session task (see [`session`]); what it may ask for
//! depends on the endpoint.

mod collab;
mod deliver_span;
mod follower;
mod forward;
mod session;

use std::sync::Arc;

use actix_web::{get, web, HttpRequest, HttpResponse};
use serde::Deserialize;

use c2s_shared::codes::{close, ErrorCode};
use c2s_shared::protocol::{ServerFrame, ServerMessage};

use crate::auth;
use crate::state::AppState;
pub use collab::participant_left_frame;
use collab::{valid_session_id, CollabJoin, MAX_NAME_LEN};

/// Which endpoint a socket came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/ws/query`: run, cancel and resume queries.
    Query,
    /// `/ws/data`: follow the data stream of an execution started elsewhere.
    Data,
    /// `/ws/collaboration/{sessionId}`: a shared query space.
    Collaboration,
    /// `/ws/monitoring`: latency pings, node status, system notices.
    Monitoring,
}

impl Endpoint {
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Query => "/ws/query",
            Endpoint::Data => "/ws/data",
            Endpoint::Collaboration => "/ws/collaboration",
            Endpoint::Monitoring => "/ws/monitoring",
        }
    }
}

fn upgrade(
    req: &HttpRequest,
    body: web::Payload,
    state: &web::Data<Arc<AppState>>,
    endpoint: Endpoint,
) -> actix_web::Result<HttpResponse> {
    upgrade_into(req, body, state, endpoint, None)
}

/// Development identity parameters (`?user=&name=`), used only when authentication is off.
#[derive(Debug, Default, Deserialize)]
struct DevIdentity {
    user: Option<String>,
    name: Option<String>,
}

/// Why an upgrade is refused: the `error` frame sent, then the close code.
struct UpgradeRefusal {
    code: ErrorCode,
    message: String,
    close: u16,
}

/// Completes every upgrade (so a browser sees the close code, not a failed handshake), then checks in
/// order: origin (1008), identity (4001), session access (4003), node capacity (1013).
fn upgrade_into(
    req: &HttpRequest,
    body: web::Payload,
    state: &web::Data<Arc<AppState>>,
    endpoint: Endpoint,
    collab: Option<CollabJoin>,
) -> actix_web::Result<HttpResponse> {
    if state.is_draining() {
        // A load balancer still sending us upgrades: the client retries, and lands elsewhere.
        return Ok(HttpResponse::ServiceUnavailable()
            .insert_header(("Retry-After", "1"))
            .body("draining: reconnect to another node"));
    }
    let dev = web::Query::<DevIdentity>::from_query(req.query_string())
        .map(|q| q.into_inner())
        .unwrap_or_default();
    let checked = if !auth::origin_allowed(req, &state.allowed_origins) {
        Err(UpgradeRefusal {
            code: ErrorCode::Forbidden,
            message: "this Origin may not open sockets here".into(),
            close: close::POLICY,
        })
    } else {
        match state.auth.identify(req, dev.user, dev.name) {
            Err(e) => Err(UpgradeRefusal {
                code: ErrorCode::Unauthorized,
                message: e.to_string(),
                close: close::UNAUTHORIZED,
            }),
            Ok(identity) => match &collab {
                Some(join) if !identity.may_join(&join.session_id) => Err(UpgradeRefusal {
                    code: ErrorCode::Forbidden,
                    message: format!("your token does not grant session {}", join.session_id),
                    close: close::FORBIDDEN,
                }),
                _ => Ok(identity),
            },
        }
    };
    let (response, mut ws, stream) = actix_ws::handle(req, body)?;
    let state = Arc::clone(state.get_ref());
    let slot = state.try_connect();
    let refused = match (checked, slot) {
        (Ok(identity), Some(slot)) => {
            actix_web::rt::spawn(session::run(
                state, endpoint, ws, stream, identity, collab, slot,
            ));
            return Ok(response);
        }
        (Err(refusal), _) => refusal,
        (Ok(_), None) => {
            metrics::counter!(c2s_shared::metrics::REFUSALS, "reason" => "node_connections")
                .increment(1);
            UpgradeRefusal {
                code: ErrorCode::Unavailable,
                message: "this node is at its connection limit; retry shortly".into(),
                close: close::TRY_AGAIN_LATER,
            }
        }
    };
    actix_web::rt::spawn(async move {
        let frame = ServerFrame::new(ServerMessage::error(refused.code, refused.message, None));
        let _ = ws.text(frame.to_text()).await;
        let _ = ws.close(Some(session::close_reason(refused.close))).await;
    });
    Ok(response)
}

#[get("/ws/monitoring")]
pub async fn monitoring(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<Arc<AppState>>,
) -> actix_web::Result<HttpResponse> {
    upgrade(&req, body, &state, Endpoint::Monitoring)
}

/// Query parameters of `/ws/collaboration/{sessionId}` (besides the identity ones).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CollabParams {
    after_seq: Option<u64>,
    /// A rejoin's previous participant id (from its `session_state`): its entry is taken over.
    participant_id: Option<String>,
    user: Option<String>,
    name: Option<String>,
}

#[get("/ws/collaboration/{session_id}")]
pub async fn collaboration(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<Arc<AppState>>,
    path: web::Path<String>,
    params: web::Query<CollabParams>,
) -> actix_web::Result<HttpResponse> {
    let session_id = path.into_inner();
    if !valid_session_id(&session_id) {
        return Ok(HttpResponse::BadRequest().body(format!(
            "session id must be 1 to {MAX_NAME_LEN} letters, digits, '_', '-' or '.'"
        )));
    }
    let params = params.into_inner();
    let too_long = |v: &Option<String>| {
        v.as_ref()
            .is_some_and(|v| v.is_empty() || v.len() > MAX_NAME_LEN)
    };
    if too_long(&params.user) || too_long(&params.name) {
        return Ok(HttpResponse::BadRequest()
            .body(format!("user and name must be 1 to {MAX_NAME_LEN} bytes")));
    }
    // `<userId>#<8 hex>`: at most a user id and 9 bytes.
    if params
        .participant_id
        .as_ref()
        .is_some_and(|p| p.is_empty() || p.len() > MAX_NAME_LEN + 9)
    {
        return Ok(HttpResponse::BadRequest().body("participantId is not a participant id"));
    }
    let join = CollabJoin {
        session_id,
        after_seq: params.after_seq,
        replaces: params.participant_id,
    };
    upgrade_into(&req, body, &state, Endpoint::Collaboration, Some(join))
}

#[get("/ws/query")]
pub async fn query(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<Arc<AppState>>,
) -> actix_web::Result<HttpResponse> {
    upgrade(&req, body, &state, Endpoint::Query)
}

#[get("/ws/data")]
pub async fn data(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<Arc<AppState>>,
) -> actix_web::Result<HttpResponse> {
    upgrade(&req, body, &state, Endpoint::Data)
}
