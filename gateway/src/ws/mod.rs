//! WebSocket endpoints: the HTTP handlers that upgrade a request and hand the socket to its session
//! task ([`session`]). What a socket may ask for depends on its [`Endpoint`].
//!
//! Module map (leaves first): `endpoint` (which messages each endpoint takes), `refusal` (the one
//! refusal type), `outbound` (what streams hand the socket), `timers`, `pacing` (rate limits),
//! `follower` and `deliver_span` (a stream's bookkeeping), `forward` (relays one stream), `streams`
//! (the streams of one socket), `collab` (a participant's actions), `queries` (the query messages),
//! `session` (the socket loop).

mod collab;
mod deliver_span;
mod endpoint;
mod follower;
mod forward;
mod outbound;
mod pacing;
mod queries;
mod refusal;
mod session;
mod streams;
mod timers;

use std::sync::Arc;

use actix_web::{get, web, HttpRequest, HttpResponse};
use serde::Deserialize;

use c2s_shared::codes::ErrorCode;
use c2s_shared::protocol::{Close, ServerFrame};

use crate::auth;
use crate::state::AppState;
pub use collab::participant_left_frame;
use collab::{valid_session_id, CollabJoin, MAX_NAME_LEN};
use refusal::{close_reason, Refusal};

pub use endpoint::Endpoint;

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
    let checked =
        if !auth::origin_allowed(req, &state.allowed_origins) {
            Err(Refusal::new(
                ErrorCode::Forbidden,
                "this Origin may not open sockets here",
            )
            .closing(Close::Policy))
        } else {
            match state.auth.identify(req, dev.user, dev.name) {
                Err(e) => Err(Refusal::new(ErrorCode::Unauthorized, e.to_string())
                    .closing(Close::Unauthorized)),
                Ok(identity) => match &collab {
                    Some(join) if !identity.may_join(&join.session_id) => Err(Refusal::new(
                        ErrorCode::Forbidden,
                        format!("your token does not grant session {}", join.session_id),
                    )
                    .closing(Close::Forbidden)),
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
            Refusal::new(
                ErrorCode::Unavailable,
                "this node is at its connection limit; retry shortly",
            )
            .closing(Close::TryAgainLater)
        }
    };
    actix_web::rt::spawn(async move {
        let close = refused.close.map(close_reason);
        let frame = ServerFrame::new(refused.into_message(None));
        let _ = ws.text(frame.to_text()).await;
        let _ = ws.close(close).await;
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
