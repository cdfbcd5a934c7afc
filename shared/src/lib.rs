//! What both binaries need besides the wire protocol (re-exported from `c2s-protocol`):
//! Redis key names, the message bus (Redis or in-process), configuration helpers and logging setup.

pub mod bus;
pub mod config;
pub mod keys;
pub mod metrics;
pub mod telemetry;

/// The wire protocol (the `c2s-protocol` crate), under the paths the rest of the tree uses.
pub use c2s_protocol as protocol;
pub use c2s_protocol::codes;

/// Milliseconds since the Unix epoch: the `timestamp` unit of every event (the guide uses `Date.now()`).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C): when a process should drain and stop. The handlers are
/// installed when this is called (not when first polled), so no signal between the two is lost.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    let ctrl_c = tokio::signal::ctrl_c();
    async move {
        #[cfg(unix)]
        let term = async move {
            match term {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {},
            _ = term => {},
        }
    }
}
