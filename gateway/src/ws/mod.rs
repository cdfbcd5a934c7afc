//! WebSocket endpoints. Each socket gets one session task (see [`session`]); what it may ask for
//! depends on the endpoint.

mod forward;
mod session;

use std::sync::Arc;

use actix_web::{get, web, HttpRequest, HttpResponse};

use crate::state::AppState;

/// Which endpoint a socket came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/ws/query`: run, cancel and resume queries.
    Query,
    /// `/ws/data`: follow the data stream of an execution started elsewhere.
    Data,
}

impl Endpoint {
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Query => "/ws/query",
            Endpoint::Data => "/ws/data",
        }
    }
}

fn upgrade(
    req: &HttpRequest,
    body: web::Payload,
    state: &web::Data<Arc<AppState>>,
    endpoint: Endpoint,
) -> actix_web::Result<HttpResponse> {
    let (response, ws, stream) = actix_ws::handle(req, body)?;
    let state = Arc::clone(state.get_ref());
    actix_web::rt::spawn(session::run(state, endpoint, ws, stream));
    Ok(response)
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
