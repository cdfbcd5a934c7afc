//! What every handler shares.

use std::sync::Arc;

use c2s_shared::bus::Bus;

use crate::config::{CollabArgs, WsArgs};

pub struct AppState {
    pub node_id: String,
    pub bus: Arc<dyn Bus>,
    pub ws: WsArgs,
    pub collab: CollabArgs,
    pub embedded: bool,
    pub started: std::time::Instant,
}
