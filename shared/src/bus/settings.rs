//! The bus's tunables, with their documented defaults (set from `config::BusArgs`). Every concern reads
//! its own fields; none changes them after the bus is built.

use std::time::Duration;

/// Tunables of the bus, with their documented defaults (see `config::BusArgs`).
#[derive(Debug, Clone)]
pub struct BusSettings {
    pub key_prefix: String,
    /// Cap (approximate) of each execution's event stream.
    pub event_stream_max_len: usize,
    /// How long an execution's events and state are kept after its last event.
    pub event_ttl: Duration,
    /// How long a client message id is remembered (PROTOCOL.md: 10 minutes).
    pub idempotency_ttl: Duration,
    /// Capacity of each channel's local broadcast; a subscriber further behind re-reads the stream.
    pub fanout_capacity: usize,
    /// The same for an execution's channel, whose chunks are large (up to `C2S_MAX_CHUNK_BYTES` each).
    pub execution_fanout_capacity: usize,
    /// Longest an execution counts against its owner's cap without reaching its terminal event.
    pub user_lease: Duration,
    /// How long an idle collaboration session (query, chat, events) is kept after its last event.
    pub session_ttl: Duration,
    /// Cap (approximate) of each session's event log.
    pub session_event_max_len: usize,
    /// Cap (approximate) of each session's chat history.
    pub chat_max_len: usize,
    /// Replicas every job and event write waits for (`WAIT`); 0: none.
    pub wait_replicas: u32,
    /// How long a write waits for them.
    pub wait_timeout: Duration,
    /// After a write found fewer replicas than asked, how long writes to its slot do not wait.
    pub wait_backoff: Duration,
    /// How long a worker retries publishing an event while Redis is failing over.
    pub publish_retry: Duration,
    /// An execution still `pending` (accepted, its job never recorded as queued) this long was abandoned.
    pub enqueue_grace: Duration,
    /// Bytes of events a running execution's live followers may have left to take (the window).
    pub stream_window_bytes: u64,
    /// How long a follower that left (or whose node died) still counts as live.
    pub resume_grace: Duration,
    /// How long a finished execution's log and state are kept.
    pub finished_retention: Duration,
}

impl Default for BusSettings {
    fn default() -> Self {
        BusSettings {
            key_prefix: "c2s".into(),
            event_stream_max_len: 100_000,
            event_ttl: Duration::from_secs(3600),
            idempotency_ttl: Duration::from_secs(600),
            fanout_capacity: 1024,
            execution_fanout_capacity: 16,
            user_lease: Duration::from_secs(600),
            session_ttl: Duration::from_secs(24 * 3600),
            session_event_max_len: 10_000,
            chat_max_len: 1_000,
            wait_replicas: 0,
            wait_timeout: Duration::from_millis(500),
            wait_backoff: Duration::from_secs(10),
            publish_retry: Duration::from_secs(10),
            enqueue_grace: Duration::from_secs(30),
            stream_window_bytes: 8 * 1024 * 1024,
            resume_grace: Duration::from_secs(5),
            finished_retention: Duration::from_secs(60),
        }
    }
}
