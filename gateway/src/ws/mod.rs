//! WebSocket endpoints. Each socket gets one session task (see [`session`]); what it may ask for
//! depends on the endpoint.

mod collab;
mod forward;
mod session;

use std::sync::Arc;

use actix_web::{get, web, HttpRequest, HttpResponse};
use serde::Deserialize;

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
    let (response, mut ws, stream) = actix_ws::handle(req, body)?;
    let state = Arc::clone(state.get_ref());
    match state.try_connect() {
        Some(slot) => {
            actix_web::rt::spawn(session::run(state, endpoint, ws, stream, collab, slot));
        }
        None => {
            // Over the cap: complete the upgrade so a browser sees why (1013), then close.
            actix_web::rt::spawn(async move {
                let _ = ws
                    .text(
                        c2s_shared::protocol::ServerFrame::new(
                            c2s_shared::protocol::ServerMessage::error(
                                c2s_shared::codes::ErrorCode::Unavailable,
                                "this node is at its connection limit; retry shortly",
                                None,
                            ),
                        )
                        .to_text(),
                    )
                    .await;
                let _ = ws
                    .close(Some(session::close_reason(
                        c2s_shared::codes::close::TRY_AGAIN_LATER,
                    )))
                    .await;
            });
        }
    }
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

/// Query parameters of `/ws/collaboration/{sessionId}`. `user`/`name` are a development identity until
/// token authentication replaces them.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CollabParams {
    user: Option<String>,
    name: Option<String>,
    after_seq: Option<u64>,
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
    let user = params.user.unwrap_or_else(|| "anonymous".into());
    let name = params.name.unwrap_or_else(|| user.clone());
    if user.is_empty() || user.len() > MAX_NAME_LEN || name.len() > MAX_NAME_LEN {
        return Ok(HttpResponse::BadRequest()
            .body(format!("user and name must be 1 to {MAX_NAME_LEN} bytes")));
    }
    let join = CollabJoin {
        session_id,
        user,
        name,
        after_seq: params.after_seq,
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
