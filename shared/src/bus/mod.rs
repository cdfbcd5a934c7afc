//! The message bus between gateways and workers, behind one trait with two implementations:
//! - [`RedisBus`]: Redis Streams for what must not be lost (jobs, per-execution event logs), sharded
//!   pub/sub for live fan-out, Lua scripts for the execution state machine; on one Redis or a Redis
//!   Cluster. Used by every networked deployment.
//! - [`MemoryBus`]: the same semantics in one process, for the embedded default (`gateway --embedded`).
//!
//! Both feed live events through the same [`hub::Hub`], which keeps one subscription per channel per node
//! and fans out to every local subscriber.

pub mod fair;
pub mod hub;
mod memory;
mod redis_bus;

use std::time::Duration;

use async_trait::async_trait;
use bytestring::ByteString;
use serde::{Deserialize, Serialize};

use crate::protocol::QueryOptions;

pub use hub::{ChannelKind, Subscription, RESYNC};
pub use memory::MemoryBus;
pub use redis_bus::RedisBus;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("malformed bus data: {0}")]
    Malformed(String),
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    #[error("bus closed")]
    Closed,
}

/// A query job, as enqueued by a gateway and taken by a worker.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Job {
    pub execution_id: String,
    /// The user that asked (authorization of `resume`/`subscribe`, per-user limits).
    pub owner: String,
    pub query: String,
    #[serde(default)]
    pub options: QueryOptions,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    pub enqueued_at_ms: i64,
    /// The collaboration session it was run in (its participants may follow it too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
}

/// A job handed to one worker; acknowledged with [`Bus::ack_job`] once its terminal event is published.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Redis stream entry id (or a local counter in the memory bus).
    pub delivery_id: String,
    pub job: Job,
    /// Jobs of its owner running when it was taken (0: a light user; the queue-wait metric's class).
    pub user_running: u32,
}

/// How the fair scheduler shares the workers' slots between users (`C2S_USER_SLOT_SHARE`,
/// `C2S_RESERVED_SLOTS`; see `redis_bus/jobs.rs` and `fair.rs`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fairness {
    /// While another user has jobs waiting, a user holding this share of all slots (at least one slot)
    /// is passed over.
    pub share: f64,
    /// Free slots a user that already runs a job may not take: kept for a user with nothing running.
    pub reserved: usize,
}

impl Default for Fairness {
    fn default() -> Self {
        Fairness {
            share: 0.5,
            reserved: 0,
        }
    }
}

/// A worker asking for its next job.
#[derive(Debug, Clone)]
pub struct Taker<'a> {
    pub consumer: &'a str,
    /// Its slots (`C2S_CONCURRENCY`), counted in the total of every worker seen within `live_for`.
    pub concurrency: usize,
    pub live_for: Duration,
    pub fairness: Fairness,
}

/// The job queue as a whole (metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Jobs waiting for a slot.
    pub waiting: u64,
    /// Users with jobs waiting.
    pub waiting_users: u64,
    /// Jobs taken by a worker and not yet acknowledged.
    pub running: u64,
    /// Slots of the workers seen lately.
    pub slots: u64,
}

/// One event of an execution: its `seq`, whether it ends the stream, and the encoded frame (shared bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusEvent {
    pub seq: u64,
    pub terminal: bool,
    pub frame: ByteString,
}

impl BusEvent {
    /// Live pub/sub encoding: `"<seq> <0|1> <frame>"` (the frame is JSON and is never parsed on the way).
    pub fn encode(&self) -> String {
        format!("{} {} {}", self.seq, u8::from(self.terminal), self.frame)
    }

    pub fn decode(bytes: &[u8]) -> Result<BusEvent, BusError> {
        let text = std::str::from_utf8(bytes).map_err(|e| BusError::Malformed(e.to_string()))?;
        let mut parts = text.splitn(3, ' ');
        let bad = || BusError::Malformed(format!("bad event header: {:.40}", text));
        let seq = parts.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
        let terminal = match parts.next() {
            Some("1") => true,
            Some("0") => false,
            _ => return Err(bad()),
        };
        let frame = parts.next().ok_or_else(bad)?;
        Ok(BusEvent {
            seq,
            terminal,
            frame: ByteString::from(frame),
        })
    }
}

/// A stream of numbered events a client can follow: an execution's, or a collaboration session's.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    Execution(String),
    Session(String),
}

impl std::fmt::Display for Topic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Topic::Execution(id) => write!(f, "execution {id}"),
            Topic::Session(id) => write!(f, "session {id}"),
        }
    }
}

impl Topic {
    pub fn id(&self) -> &str {
        match self {
            Topic::Execution(id) | Topic::Session(id) => id,
        }
    }
}

/// Everything a participant's join needs, written atomically with its `participant_joined` event.
#[derive(Debug, Clone)]
pub struct JoinRequest<'a> {
    pub session_id: &'a str,
    pub participant_id: &'a str,
    /// The participant as JSON (`protocol::Participant`).
    pub participant: &'a str,
    pub node_id: &'a str,
    pub max_participants: usize,
    /// The `participant_joined` frame, without `seq` (the bus numbers it).
    pub joined_frame: &'a str,
    /// How many recent chat messages the snapshot carries.
    pub chat_history: usize,
    /// The joiner's user id (`protocol::Participant::user_id`).
    pub user_id: &'a str,
    /// A rejoin (`afterSeq`, or a previous participant id): the cap does not count the user's own
    /// entries on other nodes (ghosts of a node that died, not yet reaped).
    pub rejoin: bool,
    /// A rejoin's previous participant id: if still there and the same user's, it is removed first
    /// (`replaced_frame` announces it), atomically with the join.
    pub replaces: Option<&'a str>,
    /// The `participant_left` frame (reason `replaced`) of `replaces`, without `seq`.
    pub replaced_frame: &'a str,
}

/// The session as of the joiner's own `participant_joined` event (`seq`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SessionSnapshot {
    pub seq: u64,
    /// Participants as JSON, in no particular order.
    pub participants: Vec<String>,
    pub query_text: String,
    pub query_version: u64,
    pub query_author: Option<String>,
    /// (participant id, cursor JSON).
    pub cursors: Vec<(String, String)>,
    /// Chat entries as JSON, oldest first.
    pub chat: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum JoinOutcome {
    Joined(SessionSnapshot),
    /// The session has `max_participants` already.
    Full,
}

#[derive(Debug, Clone, PartialEq)]
pub enum UpdateOutcome {
    Applied {
        version: u64,
        seq: u64,
    },
    /// `baseVersion` was stale: the text is at `version` now.
    Conflict {
        version: u64,
        text: String,
    },
}

/// The local buffer of a topic's channel: smaller for executions, whose frames are large.
pub(crate) fn topic_fanout(topic: &Topic, settings: &BusSettings) -> Option<usize> {
    match topic {
        Topic::Execution(_) => Some(settings.execution_fanout_capacity),
        Topic::Session(_) => None,
    }
}

/// In a `query_updated` frame template, the version the bus fills in atomically with the update.
pub const VERSION_PLACEHOLDER: &str = "\"version\":-1";

/// Adds `"seq":N` as the last member of a JSON object frame (the frame was encoded without it).
pub fn with_seq(frame: &str, seq: u64) -> String {
    let body = frame.strip_suffix('}').unwrap_or(frame);
    format!("{body},\"seq\":{seq}}}")
}

/// What `cancel` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// It was still queued: it is now cancelled and will never run. The caller publishes `query_cancelled`.
    WasQueued,
    /// It is running: its worker was told to stop the SQL and will publish `query_cancelled`.
    Running,
    /// It had already ended.
    Finished,
    /// No such execution (never existed, or expired).
    NotFound,
}

/// What a worker that reclaimed a dead worker's job may do with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TakeOver {
    /// It had not started: run it.
    Start,
    /// It was running when its worker died: its stream must be ended (`worker_lost`).
    Lost,
    /// It had ended (or was cancelled, or expired): just acknowledge it.
    Finished,
}

/// The lifecycle state of an execution, as kept on the bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutionInfo {
    pub owner: String,
    pub state: String,
    /// The collaboration session it was run in, if any.
    pub session_id: Option<String>,
    /// The last `seq` written to its log (a reader past it saw events the log lost in a failover).
    pub seq: u64,
    /// Events up to this `seq` were trimmed because every live follower had taken them (the window):
    /// a resume from before it is told so and goes on, unlike a hole a failover left.
    pub trimmed: u64,
}

/// Where an execution's live followers are, as the worker sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Followers {
    /// Followers whose socket is open, or closed less than the resume grace ago.
    pub live: usize,
    /// The lowest `seq` every live follower has written to its socket (None: no live follower).
    pub min_taken: Option<u64>,
}

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

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// The tunables this bus runs with.
    fn settings(&self) -> &BusSettings;

    /// Liveness of the bus (readiness probes).
    async fn ping(&self) -> Result<(), BusError>;

    // ---- gateway side -----------------------------------------------------------------------------------

    /// Records the execution as `queued` and appends the job to the durable job queue, unless its owner
    /// already has `max_per_user` unfinished executions (then false, nothing written). An execution holds
    /// its owner's slot until its terminal event, or at most `user_lease` (a crash cannot leak slots).
    async fn enqueue(&self, job: &Job, max_per_user: usize) -> Result<bool, BusError>;

    /// Remembers `client_id` of `user` as having created `execution_id`, unless it was seen before:
    /// then returns the execution it created then.
    async fn claim_idempotency(
        &self,
        user: &str,
        client_id: &str,
        execution_id: &str,
    ) -> Result<Option<String>, BusError>;

    /// Forgets a claim whose message could not be accepted, so that the client's retry runs.
    async fn release_idempotency(&self, user: &str, client_id: &str) -> Result<(), BusError>;

    async fn execution_info(&self, execution_id: &str) -> Result<Option<ExecutionInfo>, BusError>;

    async fn cancel(&self, execution_id: &str) -> Result<CancelOutcome, BusError>;

    /// Events of `topic` with `seq > after_seq`, oldest first, at most `limit`.
    async fn read_events(
        &self,
        topic: &Topic,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<BusEvent>, BusError>;

    /// Live events of `topic`, from the moment this returns.
    async fn subscribe(&self, topic: &Topic) -> Result<Subscription, BusError>;

    // ---- worker side ------------------------------------------------------------------------------------

    /// Waits up to `block` for a job the fair scheduler gives this worker (which has a free slot).
    async fn next_job(
        &self,
        taker: &Taker<'_>,
        block: Duration,
    ) -> Result<Option<Delivery>, BusError>;

    /// Where a queued execution's job stands in the fair order (1: next), None if it is not waiting.
    async fn queue_position(&self, _execution_id: &str) -> Result<Option<u64>, BusError> {
        Ok(None)
    }

    /// Waiting and running jobs, users waiting, and slots, if the bus can tell.
    async fn queue_stats(&self) -> Result<Option<QueueStats>, BusError> {
        Ok(None)
    }

    async fn ack_job(&self, delivery: &Delivery) -> Result<(), BusError>;

    /// `queued` -> `running`, atomically; false if it was cancelled (or taken) before.
    async fn try_start(&self, execution_id: &str, worker_id: &str) -> Result<bool, BusError>;

    /// Jobs pending on other consumers for longer than `min_idle` (their worker died), now this consumer's.
    async fn reclaim_jobs(
        &self,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<Delivery>, BusError>;

    /// Jobs in the queue not yet acknowledged (waiting or running), if the bus can tell.
    async fn queue_depth(&self) -> Result<Option<u64>, BusError>;

    /// Resets the idle time of jobs this consumer is still running, so nobody reclaims them.
    async fn keep_alive_jobs(
        &self,
        consumer: &str,
        delivery_ids: &[String],
    ) -> Result<(), BusError>;

    /// Decides, atomically, what a reclaimed job's new worker does with it (and takes it over).
    async fn take_over(&self, execution_id: &str, worker_id: &str) -> Result<TakeOver, BusError>;

    /// The highest `seq` in a topic's log (0 when empty).
    async fn last_seq(&self, topic: &Topic) -> Result<u64, BusError>;

    /// Appends the event to the execution's log and publishes it live; a terminal event marks it done.
    async fn publish_event(&self, execution_id: &str, event: &BusEvent) -> Result<(), BusError>;

    /// Ends, with a terminal `query_error` every follower receives, an execution whose job will never run
    /// (abandoned mid-enqueue, or lost from the queue in a failover); true if it did. Followers of a
    /// queued execution call it when their stream is quiet.
    async fn end_if_orphaned(&self, _execution_id: &str) -> Result<bool, BusError> {
        Ok(false)
    }

    /// Cancel requests for running executions (payload: execution id), for workers.
    async fn cancel_requests(&self) -> Result<Subscription, BusError>;

    // ---- the window of a running execution (end-to-end backpressure) ---------------------------------

    /// A follower (`reader`: unique per followed stream) has written every event up to `taken` to its
    /// socket; it counts as live until `live_for` from now (refreshed while its socket is open).
    async fn follower_position(
        &self,
        execution_id: &str,
        reader: &str,
        taken: u64,
        live_for: Duration,
    ) -> Result<(), BusError>;

    /// The live followers of an execution and the lowest `seq` they all took. The events up to that
    /// `seq`, but not beyond `trim_up_to`, are removed from the log (recorded as
    /// [`ExecutionInfo::trimmed`]); 0 trims nothing.
    async fn followers(&self, execution_id: &str, trim_up_to: u64) -> Result<Followers, BusError>;

    // ---- collaboration sessions -------------------------------------------------------------------------
    // Every session event is numbered by one per-session counter and appended to the session's log and
    // live channel in the same atomic step as the state change it reports, so all nodes see one order.

    /// Adds the participant (unless the session is full) and returns the snapshot including it. A
    /// rejoin takes over its previous entry first (see [`JoinRequest::replaces`]).
    async fn session_join(&self, request: JoinRequest<'_>) -> Result<JoinOutcome, BusError>;

    /// Removes the participant; appends `left_frame` only if it was still there (so exactly once).
    async fn session_leave(
        &self,
        session_id: &str,
        participant_id: &str,
        node_id: &str,
        left_frame: &str,
    ) -> Result<Option<u64>, BusError>;

    /// Replaces the shared query text if `base_version` is current (or absent). `frame` contains
    /// [`VERSION_PLACEHOLDER`], replaced by the new version.
    async fn session_update_query(
        &self,
        session_id: &str,
        author_id: &str,
        text: &str,
        base_version: Option<u64>,
        frame: &str,
    ) -> Result<UpdateOutcome, BusError>;

    /// Records the participant's cursor and appends `frame` (`cursor_moved`).
    async fn session_cursor(
        &self,
        session_id: &str,
        participant_id: &str,
        cursor: &str,
        frame: &str,
    ) -> Result<u64, BusError>;

    /// Keeps the chat entry in the history and appends `frame`, unless `message_id` was seen before
    /// (then None).
    async fn session_chat(
        &self,
        session_id: &str,
        message_id: &str,
        entry: &str,
        frame: &str,
    ) -> Result<Option<u64>, BusError>;

    /// Appends any other session event (`shared_execution`).
    async fn session_append(&self, session_id: &str, frame: &str) -> Result<u64, BusError>;

    // ---- the per-user connection cap ---------------------------------------------------------------

    /// Takes (or renews) a connection slot of `user` for socket `socket` (unique over all nodes), for
    /// `lease`, unless the user has `max` live ones; true if the socket may stay.
    async fn open_connection(
        &self,
        user: &str,
        socket: &str,
        max: usize,
        lease: Duration,
    ) -> Result<bool, BusError>;

    /// Gives the slot back (the socket closed).
    async fn close_connection(&self, user: &str, socket: &str) -> Result<(), BusError>;

    // ---- operator notices -----------------------------------------------------------------------------------

    /// Sends a `system_notice` frame to every node.
    async fn publish_notice(&self, frame: &str) -> Result<(), BusError>;

    /// Notices sent to every node (payload: the frame).
    async fn notices(&self) -> Result<Subscription, BusError>;

    // ---- presence of gateway nodes ------------------------------------------------------------------------

    /// Marks `node_id` alive now.
    async fn node_heartbeat(&self, node_id: &str) -> Result<(), BusError>;

    /// Nodes whose last heartbeat is older than `ttl`.
    async fn dead_nodes(&self, ttl: Duration) -> Result<Vec<String>, BusError>;

    /// (session id, participant id) of every participant connected through `node_id`.
    async fn node_participants(&self, node_id: &str) -> Result<Vec<(String, String)>, BusError>;

    /// Forgets a dead node once its participants are reaped.
    async fn forget_node(&self, node_id: &str) -> Result<(), BusError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_is_added_as_last_member() {
        assert_eq!(
            with_seq(r#"{"type":"x","payload":{}}"#, 7),
            r#"{"type":"x","payload":{},"seq":7}"#
        );
    }

    #[test]
    fn event_round_trip() {
        let e = BusEvent {
            seq: 42,
            terminal: true,
            frame: ByteString::from(r#"{"type":"x y"}"#),
        };
        assert_eq!(BusEvent::decode(e.encode().as_bytes()).unwrap(), e);
        assert!(BusEvent::decode(b"x 1 {}").is_err());
        assert!(BusEvent::decode(b"1 2 {}").is_err());
    }
}
