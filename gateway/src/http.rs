//! Plain HTTP routes: probes, the protocol schema, and the landing page.

use std::sync::Arc;

use actix_web::{get, web, HttpResponse};

use crate::state::AppState;

/// Alive: the process answers (with who it is).
#[get("/healthz")]
pub async fn healthz(state: web::Data<Arc<AppState>>) -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({
        "status": "ok",
        "nodeId": state.node_id,
        "embedded": state.embedded,
        "draining": state.is_draining(),
        "connections": state.connections(),
        "uptimeSecs": state.started.elapsed().as_secs(),
    }))
}

/// Ready: the bus (Redis) answers. 503 otherwise, so a load balancer sends clients elsewhere.
#[get("/readyz")]
pub async fn readyz(state: web::Data<Arc<AppState>>) -> HttpResponse {
    if state.is_draining() {
        return HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body("draining");
    }
    match state.bus.ping().await {
        Ok(()) => HttpResponse::Ok().content_type("text/plain").body("ready"),
        Err(e) => HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body(format!("not ready: {e}")),
    }
}

/// The JSON Schema of every frame, generated from the protocol types.
#[get("/schema")]
pub async fn schema() -> HttpResponse {
    HttpResponse::Ok().json(c2s_shared::protocol::schema_document())
}

/// A small page to try the query endpoint from a browser.
#[get("/")]
pub async fn index() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(include_str!("index.html"))
}
