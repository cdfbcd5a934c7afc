//! What every handler shares.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytestring::ByteString;
use c2s_shared::bus::Bus;
use c2s_shared::config::Secret;
use tokio::sync::{broadcast, watch};

use metrics_exporter_prometheus::PrometheusHandle;

use crate::config::{Cli, CollabArgs, WsArgs};

pub struct AppState {
    pub node_id: String,
    pub bus: Arc<dyn Bus>,
    pub ws: WsArgs,
    pub collab: CollabArgs,
    pub embedded: bool,
    pub started: std::time::Instant,
    /// Set once the node starts draining (SIGTERM): not ready, no new sockets, every socket closed with 1012.
    draining: watch::Sender<bool>,
    /// Open WebSocket connections on this node.
    connections: AtomicUsize,
    /// Operator notices for every socket on this node (fed from the bus by one task per node).
    pub notices: broadcast::Sender<ByteString>,
    pub admin_token: Option<Secret>,
    pub node_status_interval: std::time::Duration,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// Verifies the identity of each upgrade.
    pub auth: crate::auth::Authenticator,
    pub allowed_origins: Vec<String>,
    /// The per-user frame buckets of this node (shared by each user's sockets here).
    pub user_rates: crate::per_user::UserRates,
    /// Which nodes hold their link to Redis (a rejoin takes over its ghosts on the others).
    pub links: Arc<crate::links::Links>,
    /// Local participants per collaboration session (for the active-sessions gauge).
    local_sessions: std::sync::Mutex<std::collections::HashMap<String, usize>>,
}

/// Notices buffered per node; a socket further behind skips the oldest.
const NOTICE_BUFFER: usize = 64;

/// Holds one slot of the node's connection cap; frees it when dropped.
pub struct ConnectionSlot(Arc<AppState>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

impl AppState {
    pub fn new(
        node_id: String,
        bus: Arc<dyn Bus>,
        cli: &Cli,
        embedded: bool,
        metrics: PrometheusHandle,
        auth: crate::auth::Authenticator,
        links: Arc<crate::links::Links>,
    ) -> AppState {
        AppState {
            links,
            auth,
            allowed_origins: cli.auth.allowed_origins.clone(),
            notices: broadcast::Sender::new(NOTICE_BUFFER),
            admin_token: cli.admin_token.clone(),
            node_status_interval: std::time::Duration::from_millis(
                cli.node_status_interval_ms.max(10),
            ),
            metrics,
            local_sessions: Default::default(),
            user_rates: crate::per_user::UserRates::new(
                cli.ws.user_rate_limit_per_sec,
                cli.ws.user_rate_limit_burst,
            ),
            ws: cli.ws.clone(),
            collab: cli.collab.clone(),
            node_id,
            bus,
            embedded,
            started: std::time::Instant::now(),
            draining: watch::Sender::new(false),
            connections: AtomicUsize::new(0),
        }
    }

    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    pub fn start_draining(&self) {
        self.draining.send_replace(true);
    }

    /// Fires when the node starts draining.
    pub fn drain_signal(&self) -> watch::Receiver<bool> {
        self.draining.subscribe()
    }

    /// Relays the bus's operator notices to this node's sockets, for as long as the process lives.
    pub fn relay_notices(self: &Arc<Self>) {
        let state = self.clone();
        actix_web::rt::spawn(async move {
            loop {
                match state.bus.notices().await {
                    Ok(mut subscription) => loop {
                        match subscription.receiver.recv().await {
                            Ok(bytes) => match ByteString::try_from(bytes) {
                                Ok(frame) => {
                                    let _ = state.notices.send(frame);
                                }
                                Err(_) => tracing::warn!("dropped a notice that is not UTF-8"),
                            },
                            Err(broadcast::error::RecvError::Lagged(n)) => {
                                tracing::warn!(missed = n, "notices lagged")
                            }
                            Err(broadcast::error::RecvError::Closed) => break,
                        }
                    },
                    Err(e) => tracing::warn!(error = %e, "subscribing to notices failed; retrying"),
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        });
    }

    /// A participant of `session_id` joined (true) or left (false) on this node.
    pub fn count_participant(&self, session_id: &str, joined: bool) {
        use c2s_shared::metrics as m;
        let mut sessions = self
            .local_sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if joined {
            let n = sessions.entry(session_id.to_owned()).or_default();
            *n += 1;
            metrics::gauge!(m::COLLAB_PARTICIPANTS).increment(1.0);
            if *n == 1 {
                metrics::gauge!(m::COLLAB_SESSIONS).increment(1.0);
            }
        } else if let Some(n) = sessions.get_mut(session_id) {
            *n -= 1;
            metrics::gauge!(m::COLLAB_PARTICIPANTS).decrement(1.0);
            if *n == 0 {
                sessions.remove(session_id);
                metrics::gauge!(m::COLLAB_SESSIONS).decrement(1.0);
            }
        }
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }

    /// Takes a connection slot, or None when the node is at `--max-connections`.
    pub fn try_connect(self: &Arc<Self>) -> Option<ConnectionSlot> {
        let max = self.ws.max_connections;
        self.connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| ConnectionSlot(self.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use c2s_shared::bus::{BusSettings, MemoryBus};
    use clap::Parser;

    #[tokio::test]
    async fn connection_cap_and_drain_flag() {
        let cli = crate::config::Cli::parse_from(["gateway", "--max-connections", "2"]);
        let bus = Arc::new(MemoryBus::new(BusSettings::default()));
        let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
            .build_recorder()
            .handle();
        let links = Arc::new(crate::links::Links::new(
            bus.clone(),
            "n".into(),
            std::time::Duration::ZERO,
            std::time::Duration::ZERO,
        ));
        let state = Arc::new(AppState::new(
            "n".into(),
            bus,
            &cli,
            true,
            metrics,
            crate::auth::Authenticator::Off,
            links,
        ));
        let a = state.try_connect().unwrap();
        let _b = state.try_connect().unwrap();
        assert!(state.try_connect().is_none());
        drop(a);
        assert!(state.try_connect().is_some());
        let mut signal = state.drain_signal();
        assert!(!state.is_draining());
        state.start_draining();
        signal.changed().await.unwrap();
        assert!(state.is_draining());
    }
}
