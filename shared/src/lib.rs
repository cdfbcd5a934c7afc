//! What both binaries need: the wire protocol, the one table of error and close codes,
//! Redis key names, the message bus (Redis or in-process), configuration helpers and logging setup.

pub mod bus;
pub mod codes;
pub mod config;
pub mod keys;
pub mod protocol;
pub mod telemetry;

/// Milliseconds since the Unix epoch: the `timestamp` unit of every event (the guide uses `Date.now()`).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}
