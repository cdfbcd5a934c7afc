//! Plain HTTP routes: probes, the protocol schema, metrics and the admin API.

use std::sync::Arc;

use actix_web::{get, post, web, HttpRequest, HttpResponse};
use c2s_shared::now_ms;
use c2s_shared::protocol::{NoticeLevel, ServerFrame, ServerMessage, SystemNotice};
use serde::Deserialize;

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
    // A probe answers within a second, Redis or not.
    let probe = tokio::time::timeout(std::time::Duration::from_secs(1), state.bus.ping()).await;
    match probe.unwrap_or_else(|_| {
        Err(c2s_shared::bus::BusError::Unavailable(
            "redis did not answer within 1 s".into(),
        ))
    }) {
        Ok(()) => HttpResponse::Ok().content_type("text/plain").body("ready"),
        Err(e) => HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body(format!("not ready: {e}")),
    }
}

/// Prometheus metrics of this node (and, in embedded mode, of its in-process worker).
#[get("/metrics")]
pub async fn metrics(state: web::Data<Arc<AppState>>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}

/// The JSON Schema of every frame, generated from the protocol types.
#[get("/schema")]
pub async fn schema() -> HttpResponse {
    HttpResponse::Ok().json(c2s_shared::protocol::schema_document())
}

#[derive(Debug, Deserialize)]
pub struct NoticeRequest {
    level: NoticeLevel,
    message: String,
}

/// Longest operator notice, in characters.
const MAX_NOTICE_CHARS: usize = 2_000;

/// `POST /admin/notices {level, message}` with `Authorization: Bearer <C2S_ADMIN_TOKEN>`: a
/// `system_notice` to every client on every node.
#[post("/admin/notices")]
pub async fn post_notice(
    req: HttpRequest,
    state: web::Data<Arc<AppState>>,
    body: web::Json<NoticeRequest>,
) -> HttpResponse {
    let Some(token) = &state.admin_token else {
        return HttpResponse::NotFound().body("the admin API is off: set C2S_ADMIN_TOKEN");
    };
    let given = req
        .headers()
        .get("authorization")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "));
    if !given.is_some_and(|g| token.matches(g)) {
        return HttpResponse::Unauthorized()
            .insert_header(("WWW-Authenticate", "Bearer"))
            .body("a valid admin bearer token is required");
    }
    let NoticeRequest { level, message } = body.into_inner();
    if message.is_empty() || message.chars().count() > MAX_NOTICE_CHARS {
        return HttpResponse::BadRequest().body(format!(
            "message must be 1 to {MAX_NOTICE_CHARS} characters"
        ));
    }
    let frame = ServerFrame::new(ServerMessage::SystemNotice(SystemNotice {
        level,
        message,
        timestamp: now_ms(),
    }))
    .to_text();
    match state.bus.publish_notice(&frame).await {
        Ok(()) => HttpResponse::Accepted().json(serde_json::json!({"status": "sent"})),
        Err(e) => HttpResponse::ServiceUnavailable().body(format!("notice not sent: {e}")),
    }
}
