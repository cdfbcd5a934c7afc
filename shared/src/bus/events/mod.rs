//! The event logs: every execution's events, numbered by `seq` from 1 and appended to a capped log that
//! `resume` replays, published live on the execution's channel by the same atomic step; the window its
//! live followers leave the worker (end-to-end backpressure); the explicit end of an execution whose job
//! will never run; and operator notices to every node. A collaboration session's log is read through the
//! same [`Topic`] calls (its events are written by `sessions/`).
//!
//! Invariants: an execution's events are numbered by its one writer (its worker), from 1 without gaps;
//! its log keeps them in order, each once (on Redis an append lands only right after the previous
//! `seq`, and none after the terminal one: see `redis.rs`); the step that logs an event publishes it
//! live, so a follower that subscribes, then reads the log after its last `seq`, misses nothing; a log
//! is trimmed only below what every live follower took ([`ExecutionInfo::trimmed`]) or by its cap.
//!
//! `memory.rs` and `redis.rs` (with the scripts beside it) implement [`EventLog`].

mod memory;
mod redis;

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use bytestring::ByteString;

use super::hub::Subscription;
use super::{BusError, BusSettings};

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
        let seq = self.seq.to_string();
        // Sized up front: a chunk's frame is copied once, not once per doubling of the buffer.
        let mut out = String::with_capacity(seq.len() + 3 + self.frame.len());
        out.push_str(&seq);
        out.push_str(if self.terminal { " 1 " } else { " 0 " });
        out.push_str(&self.frame);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<BusEvent, BusError> {
        let (seq, terminal, at) = Self::header(bytes)?;
        let frame =
            std::str::from_utf8(&bytes[at..]).map_err(|e| BusError::Malformed(e.to_string()))?;
        Ok(BusEvent {
            seq,
            terminal,
            frame: ByteString::from(frame),
        })
    }

    /// [`BusEvent::decode`] of a payload received live, the frame sharing its bytes: every local
    /// follower of a channel decodes the same payload, and none copies it.
    pub fn decode_shared(bytes: &Bytes) -> Result<BusEvent, BusError> {
        let (seq, terminal, at) = Self::header(bytes)?;
        let frame = ByteString::try_from(bytes.slice(at..))
            .map_err(|e| BusError::Malformed(e.to_string()))?;
        Ok(BusEvent {
            seq,
            terminal,
            frame,
        })
    }

    /// The `seq`, the terminal flag and where the frame starts.
    fn header(bytes: &[u8]) -> Result<(u64, bool, usize), BusError> {
        let bad = || {
            let start = &bytes[..bytes.len().min(40)];
            BusError::Malformed(format!(
                "bad event header: {}",
                String::from_utf8_lossy(start)
            ))
        };
        let space = bytes.iter().position(|&b| b == b' ').ok_or_else(bad)?;
        let seq = std::str::from_utf8(&bytes[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad)?;
        let terminal = match bytes.get(space + 1..space + 3) {
            Some(b"1 ") => true,
            Some(b"0 ") => false,
            _ => return Err(bad()),
        };
        Ok((seq, terminal, space + 3))
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

/// The local buffer of a topic's channel: smaller for executions, whose frames are large.
pub(crate) fn topic_fanout(topic: &Topic, settings: &BusSettings) -> Option<usize> {
    match topic {
        Topic::Execution(_) => Some(settings.execution_fanout_capacity),
        Topic::Session(_) => None,
    }
}

/// Adds `"seq":N` as the last member of a JSON object frame (the frame was encoded without it).
pub fn with_seq(frame: &str, seq: u64) -> String {
    let body = frame.strip_suffix('}').unwrap_or(frame);
    format!("{body},\"seq\":{seq}}}")
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

#[async_trait]
pub trait EventLog: Send + Sync {
    async fn execution_info(&self, execution_id: &str) -> Result<Option<ExecutionInfo>, BusError>;

    /// Events of `topic` with `seq > after_seq`, oldest first, at most `limit`.
    async fn read_events(
        &self,
        topic: &Topic,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<BusEvent>, BusError>;

    /// Live events of `topic`, from the moment this returns.
    async fn subscribe(&self, topic: &Topic) -> Result<Subscription, BusError>;

    /// The highest `seq` in a topic's log (0 when empty).
    async fn last_seq(&self, topic: &Topic) -> Result<u64, BusError>;

    /// Appends the event to the execution's log and publishes it live; a terminal event marks it done.
    async fn publish_event(&self, execution_id: &str, event: &BusEvent) -> Result<(), BusError>;

    /// [`EventLog::publish_event`] of consecutive events (`seq`s without a gap; only the last may be
    /// terminal), as one step where the bus can: one round trip for the chunks a writer has ready.
    async fn publish_events(
        &self,
        execution_id: &str,
        events: &[BusEvent],
    ) -> Result<(), BusError> {
        for event in events {
            self.publish_event(execution_id, event).await?;
        }
        Ok(())
    }

    /// Ends, with a terminal `query_error` every follower receives, an execution whose job will never run
    /// (abandoned mid-enqueue, or lost from the queue in a failover); true if it did. Followers of a
    /// queued execution call it when their stream is quiet.
    async fn end_if_orphaned(&self, _execution_id: &str) -> Result<bool, BusError> {
        Ok(false)
    }

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

    // ---- operator notices -----------------------------------------------------------------------------------

    /// Sends a `system_notice` frame to every node.
    async fn publish_notice(&self, frame: &str) -> Result<(), BusError>;

    /// Notices sent to every node (payload: the frame).
    async fn notices(&self) -> Result<Subscription, BusError>;
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
        assert!(BusEvent::decode(b"1 0").is_err());
        let shared = Bytes::from(e.encode());
        assert_eq!(BusEvent::decode_shared(&shared).unwrap(), e);
        assert!(BusEvent::decode_shared(&Bytes::from_static(b"7 1 \xff")).is_err());
        assert!(BusEvent::decode_shared(&Bytes::from_static(b" 1 {}")).is_err());
    }
}
