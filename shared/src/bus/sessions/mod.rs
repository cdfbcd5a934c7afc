//! Collaboration sessions: participants, the shared query text (versioned), cursors and chat, every
//! change reported by a session event.
//!
//! Invariants (both implementations): every session event is numbered by one per-session counter and
//! appended to the session's log and live channel in the same atomic step as the state change it
//! reports, so all nodes see one order; a participant's `participant_left` is appended once at most
//! (only by the leave that removed it); a chat message id is kept once (for the idempotency TTL).
//! The log is read through [`super::EventLog`] with [`super::Topic::Session`].
//!
//! `memory.rs` and `redis.rs` (with the scripts beside it) implement [`SessionState`].

mod memory;
mod redis;

use async_trait::async_trait;

use super::BusError;

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
    /// Nodes whose link to Redis is gone (dead, not reaped yet): a rejoin takes over the user's own
    /// entries on them at once, each announced by `ghost_frame` (another live tab of the same user, on
    /// a live node, is never taken).
    pub gone_nodes: &'a [String],
    /// The `participant_left` frame (reason `replaced`) of a ghost on a gone node, without `seq`, whose
    /// participant id is [`GHOST_PLACEHOLDER`] (the bus puts each ghost's id there).
    pub ghost_frame: &'a str,
}

/// The participant id of [`JoinRequest::ghost_frame`], replaced by each ghost's id: no participant
/// has it (ids are `<userId>#<random>` with a non-empty user id), and JSON needs no escape for it.
pub const GHOST_PLACEHOLDER: &str = "#ghost#";

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

/// In a `query_updated` frame template, the version the bus fills in atomically with the update.
pub const VERSION_PLACEHOLDER: &str = "\"version\":-1";

#[async_trait]
pub trait SessionState: Send + Sync {
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

    /// Several participants of one session leave at once (a dead node's reaper): each `(participant
    /// id, left frame)` as [`SessionState::session_leave`] would, in one step on Redis; returns how
    /// many were announced.
    async fn session_leave_many(
        &self,
        session_id: &str,
        node_id: &str,
        leaves: &[(String, String)],
    ) -> Result<usize, BusError> {
        let mut announced = 0;
        for (participant_id, left_frame) in leaves {
            let left = self
                .session_leave(session_id, participant_id, node_id, left_frame)
                .await?;
            announced += usize::from(left.is_some());
        }
        Ok(announced)
    }

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
}
