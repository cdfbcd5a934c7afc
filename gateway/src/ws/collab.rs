//! Collaboration sessions (`/ws/collaboration/{sessionId}`): presence, the shared query text, cursors,
//! chat and shared executions. Every session event goes through the bus, which numbers it with the
//! session's one sequence; each participant follows that sequence like an execution's (replay, then live).
//!
//! A socket's place in a session is its [`Member`]; what a participant does goes through its methods.
//! This module knows nothing of the socket: the session loop sends what these return.

use std::time::{Duration, Instant};

use c2s_shared::bus::{
    Job, JoinOutcome, JoinRequest, SessionSnapshot, UpdateOutcome, GHOST_PLACEHOLDER,
    VERSION_PLACEHOLDER,
};
use c2s_shared::codes::ErrorCode;
use c2s_shared::now_ms;
use c2s_shared::protocol::Close;
use c2s_shared::protocol::{
    ChatBroadcast, ChatEntry, CursorMoved, OutgoingChat, Participant, ParticipantJoined,
    ParticipantLeft, QueryUpdated, ServerFrame, ServerMessage, SessionState, SharedExecution,
    UpdateQuery, MAX_CLIENT_ID_LEN,
};
use serde_json::Value;

use super::refusal::Refusal;
use crate::auth::Identity;
use crate::state::AppState;

/// Longest session id, user id or display name.
pub const MAX_NAME_LEN: usize = 64;

/// Who joins which session, from the upgrade request.
#[derive(Debug, Clone)]
pub struct CollabJoin {
    pub session_id: String,
    pub after_seq: Option<u64>,
    /// A rejoin's previous participant id (`?participantId=`): taken over if it is this user's.
    pub replaces: Option<String>,
}

/// A socket's place in a session, and its cursor waiting to be sent.
pub struct Member {
    pub session_id: String,
    pub participant_id: String,
    pub name: String,
    pending_cursor: Option<Value>,
    /// When the pending cursor goes out (coalescing: at most one per interval).
    pub cursor_due: Option<Instant>,
    last_cursor_sent: Option<Instant>,
}

/// Session ids are path segments: letters, digits, `_`, `-`, `.`; 1 to 64 of them.
pub fn valid_session_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_NAME_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// The frame of a `participant_left` event (also written by the presence reaper for dead nodes).
pub fn participant_left_frame(session_id: &str, participant_id: &str, reason: &str) -> String {
    ServerFrame::new(ServerMessage::ParticipantLeft(ParticipantLeft {
        session_id: session_id.to_owned(),
        participant_id: participant_id.to_owned(),
        reason: reason.to_owned(),
        timestamp: now_ms(),
    }))
    .to_text()
}

/// Encodes a session event, carrying the current span's trace context to every participant's node.
fn frame(message: ServerMessage) -> String {
    ServerFrame {
        message,
        seq: None,
        traceparent: c2s_shared::telemetry::traceparent_of(&tracing::Span::current(), None),
    }
    .to_text()
}

/// A join that went through: the participant's place, the `session_state` to send it, and the
/// session `seq` to follow the events after.
pub struct Joined {
    pub member: Member,
    pub state: SessionState,
    pub follow_after: u64,
}

/// Joins: adds this participant atomically with its `participant_joined` and returns its snapshot
/// (the caller follows the session's events after it, or after `afterSeq`, replaying what was
/// missed). A refusal carries the close code to end the socket with.
pub async fn join(
    state: &AppState,
    identity: &Identity,
    join: CollabJoin,
) -> Result<Joined, Refusal> {
    let limits = &state.collab;
    let participant = Participant {
        id: format!(
            "{}#{}",
            identity.user_id,
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ),
        user_id: identity.user_id.clone(),
        name: identity.name.clone(),
        node_id: state.node_id.clone(),
        joined_at: now_ms(),
    };
    let participant_json = serde_json::to_string(&participant)
        .map_err(|e| Refusal::new(ErrorCode::Internal, e.to_string()).closing(Close::Internal))?;
    let joined_frame = frame(ServerMessage::ParticipantJoined(ParticipantJoined {
        session_id: join.session_id.clone(),
        participant: participant.clone(),
        timestamp: now_ms(),
    }));
    let replaced_frame = join
        .replaces
        .as_deref()
        .map(|old| participant_left_frame(&join.session_id, old, "replaced"))
        .unwrap_or_default();
    let rejoin = join.after_seq.is_some() || join.replaces.is_some();
    // A rejoin takes over its own ghosts on nodes whose link to Redis is gone (dead, not reaped yet).
    let gone_nodes = if rejoin {
        state.links.gone_now().await
    } else {
        Vec::new()
    };
    let ghost_frame = if gone_nodes.is_empty() {
        String::new()
    } else {
        participant_left_frame(&join.session_id, GHOST_PLACEHOLDER, "replaced")
    };
    let outcome = state
        .bus
        .session_join(JoinRequest {
            session_id: &join.session_id,
            participant_id: &participant.id,
            participant: &participant_json,
            node_id: &state.node_id,
            max_participants: limits.max_participants,
            joined_frame: &joined_frame,
            chat_history: limits.chat_history,
            user_id: &participant.user_id,
            rejoin,
            replaces: join.replaces.as_deref(),
            replaced_frame: &replaced_frame,
            gone_nodes: &gone_nodes,
            ghost_frame: &ghost_frame,
        })
        .await
        .map_err(|e| Refusal::unavailable(e).closing(Close::TryAgainLater))?;
    let snapshot = match outcome {
        JoinOutcome::Joined(s) => s,
        JoinOutcome::Full => {
            return Err(Refusal::new(
                ErrorCode::Unavailable,
                format!(
                    "session {} is full ({} participants); try again later",
                    join.session_id, limits.max_participants
                ),
            )
            .closing(Close::TryAgainLater))
        }
    };
    let follow_after = join.after_seq.unwrap_or(snapshot.seq).min(snapshot.seq);
    let session_state = session_state(&join.session_id, &participant.id, snapshot);
    state.count_participant(&join.session_id, true);
    if join.after_seq.is_some() {
        metrics::counter!(c2s_shared::metrics::RESUMES, "kind" => "session").increment(1);
    }
    Ok(Joined {
        member: Member {
            session_id: join.session_id,
            participant_id: participant.id,
            name: identity.name.clone(),
            pending_cursor: None,
            cursor_due: None,
            last_cursor_sent: None,
        },
        state: session_state,
        follow_after,
    })
}

/// The `session_state` a joiner gets: the bus's snapshot as of its own `participant_joined`.
fn session_state(
    session_id: &str,
    participant_id: &str,
    snapshot: SessionSnapshot,
) -> SessionState {
    SessionState {
        session_id: session_id.to_owned(),
        participant_id: participant_id.to_owned(),
        snapshot_seq: snapshot.seq,
        participants: snapshot
            .participants
            .iter()
            .filter_map(|p| serde_json::from_str(p).ok())
            .collect(),
        current_query: snapshot.query_text,
        query_author: snapshot.query_author,
        query_version: snapshot.query_version,
        cursors: snapshot
            .cursors
            .into_iter()
            .filter_map(|(id, c)| serde_json::from_str(&c).ok().map(|c| (id, c)))
            .collect(),
        chat_messages: snapshot
            .chat
            .iter()
            .filter_map(|c| serde_json::from_str::<ChatEntry>(c).ok())
            .collect(),
        timestamp: now_ms(),
    }
}

impl Member {
    /// Leaves (socket closing): the last cursor goes out first, then `participant_left`.
    pub async fn leave(mut self, state: &AppState) {
        let _ = self.flush_cursor(state).await;
        state.count_participant(&self.session_id, false);
        let left = participant_left_frame(&self.session_id, &self.participant_id, "closed");
        if let Err(e) = state
            .bus
            .session_leave(
                &self.session_id,
                &self.participant_id,
                &state.node_id,
                &left,
            )
            .await
        {
            // Presence expiry will say it for us.
            tracing::warn!(error = %e, session_id = %self.session_id, "leave not recorded");
        }
    }

    /// `update_query`: replaces the shared text (at `baseVersion`, if given).
    pub async fn update_query(&self, state: &AppState, update: UpdateQuery) -> Result<(), Refusal> {
        Refusal::check_query_size(&update.query, state.ws.max_query_bytes)?;
        // The version is filled in by the bus, atomically with the update.
        let template = frame(ServerMessage::QueryUpdated(QueryUpdated {
            session_id: self.session_id.clone(),
            query: update.query.clone(),
            author_id: self.participant_id.clone(),
            version: 0,
            timestamp: now_ms(),
        }))
        .replacen("\"version\":0", VERSION_PLACEHOLDER, 1);
        let outcome = state
            .bus
            .session_update_query(
                &self.session_id,
                &self.participant_id,
                &update.query,
                update.base_version,
                &template,
            )
            .await
            .map_err(Refusal::unavailable)?;
        match outcome {
            UpdateOutcome::Applied { .. } => Ok(()),
            UpdateOutcome::Conflict { version, text } => Err(Refusal {
                current: Some((version, text)),
                ..Refusal::new(
                    ErrorCode::Conflict,
                    format!(
                        "the query is at version {version}, not {}: rebase on the current text and retry",
                        update.base_version.unwrap_or_default()
                    ),
                )
            }),
        }
    }

    /// Keeps the latest cursor; it goes out at most once per `interval` (see `flush_cursor`).
    pub fn move_cursor(&mut self, cursor: Value, interval: Duration) {
        self.pending_cursor = Some(cursor);
        if self.cursor_due.is_none() {
            let earliest = self
                .last_cursor_sent
                .map_or_else(Instant::now, |t| t + interval);
            self.cursor_due = Some(earliest.max(Instant::now()));
        }
    }

    /// Sends the pending cursor, if any, as one `cursor_moved`.
    pub async fn flush_cursor(&mut self, state: &AppState) -> Result<(), Refusal> {
        self.cursor_due = None;
        let Some(cursor) = self.pending_cursor.take() else {
            return Ok(());
        };
        self.last_cursor_sent = Some(Instant::now());
        let cursor_json = cursor.to_string();
        let moved = frame(ServerMessage::CursorMoved(CursorMoved {
            session_id: self.session_id.clone(),
            participant_id: self.participant_id.clone(),
            cursor,
            timestamp: now_ms(),
        }));
        state
            .bus
            .session_cursor(&self.session_id, &self.participant_id, &cursor_json, &moved)
            .await
            .map_err(Refusal::unavailable)?;
        Ok(())
    }

    /// Stamps and broadcasts a chat message; false if its id was seen before (delivered once).
    pub async fn chat(&self, state: &AppState, message: OutgoingChat) -> Result<bool, Refusal> {
        let max = state.collab.max_chat_length;
        if message.id.is_empty() || message.id.len() > MAX_CLIENT_ID_LEN {
            return Err(Refusal::new(
                ErrorCode::BadRequest,
                format!("`message.id` must be 1 to {MAX_CLIENT_ID_LEN} characters"),
            ));
        }
        let length = message.content.chars().count();
        if length > max {
            return Err(Refusal::new(
                ErrorCode::TooLarge,
                format!("the message is {length} characters; the limit is {max}"),
            ));
        }
        let entry = ChatEntry {
            id: message.id.clone(),
            content: message.content,
            author_id: self.participant_id.clone(),
            author_name: self.name.clone(),
            timestamp: now_ms(),
        };
        let entry_json = serde_json::to_string(&entry)
            .map_err(|e| Refusal::new(ErrorCode::Internal, e.to_string()))?;
        let broadcast = frame(ServerMessage::ChatMessage(ChatBroadcast {
            session_id: self.session_id.clone(),
            message: entry,
        }));
        let seq = state
            .bus
            .session_chat(&self.session_id, &message.id, &entry_json, &broadcast)
            .await
            .map_err(Refusal::unavailable)?;
        Ok(seq.is_some())
    }

    /// Tells the session a query was started in it, so every participant follows its events.
    pub async fn announce_execution(&self, state: &AppState, job: &Job) -> Result<(), Refusal> {
        let announcement = frame(ServerMessage::SharedExecution(SharedExecution {
            session_id: self.session_id.clone(),
            execution_id: job.execution_id.clone(),
            author_id: self.participant_id.clone(),
            query: job.query.clone(),
            timestamp: now_ms(),
        }));
        state
            .bus
            .session_append(&self.session_id, &announcement)
            .await
            .map_err(Refusal::unavailable)?;
        Ok(())
    }
}
