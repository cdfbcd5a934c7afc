//! Collaboration sessions (`/ws/collaboration/{sessionId}`): presence, the shared query text, cursors,
//! chat and shared executions. Every session event goes through the bus, which numbers it with the
//! session's one sequence; each participant follows that sequence like an execution's (replay, then live).

use std::time::{Duration, Instant};

use c2s_shared::bus::{JoinOutcome, JoinRequest, Topic, UpdateOutcome, VERSION_PLACEHOLDER};
use c2s_shared::codes::{close, ErrorCode};
use c2s_shared::now_ms;
use c2s_shared::protocol::{
    ChatBroadcast, ChatEntry, CursorMoved, OutgoingChat, Participant, ParticipantJoined,
    ParticipantLeft, QueryUpdated, ServerFrame, ServerMessage, SessionState, SharedExecution,
    UpdateQuery, MAX_CLIENT_ID_LEN,
};
use serde_json::Value;

use super::session::{refuse, unavailable, Refusal, Session};
use c2s_shared::bus::Job;

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

impl Session {
    fn member(&self) -> Result<&Member, Refusal> {
        self.member
            .as_ref()
            .ok_or_else(|| refuse(ErrorCode::Internal, "not in a collaboration session"))
    }

    /// Joins: adds this participant atomically with its `participant_joined`, sends `session_state`,
    /// then follows the session's events after the snapshot (or after `afterSeq`, replaying what was
    /// missed). On failure, the refusal and the close code to end the socket with.
    pub(super) async fn join(&mut self, join: CollabJoin) -> Result<(), (Refusal, u16)> {
        let limits = self.state.collab.clone();
        let participant = Participant {
            id: format!(
                "{}#{}",
                self.identity.user_id,
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ),
            user_id: self.identity.user_id.clone(),
            name: self.identity.name.clone(),
            node_id: self.state.node_id.clone(),
            joined_at: now_ms(),
        };
        let participant_json = serde_json::to_string(&participant)
            .map_err(|e| (refuse(ErrorCode::Internal, e.to_string()), close::INTERNAL))?;
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
        let outcome = self
            .state
            .bus
            .session_join(JoinRequest {
                session_id: &join.session_id,
                participant_id: &participant.id,
                participant: &participant_json,
                node_id: &self.state.node_id,
                max_participants: limits.max_participants,
                joined_frame: &joined_frame,
                chat_history: limits.chat_history,
                user_id: &participant.user_id,
                rejoin: join.after_seq.is_some() || join.replaces.is_some(),
                replaces: join.replaces.as_deref(),
                replaced_frame: &replaced_frame,
            })
            .await
            .map_err(|e| (unavailable(e), close::TRY_AGAIN_LATER))?;
        let snapshot = match outcome {
            JoinOutcome::Joined(s) => s,
            JoinOutcome::Full => {
                return Err((
                    refuse(
                        ErrorCode::Unavailable,
                        format!(
                            "session {} is full ({} participants); try again later",
                            join.session_id, limits.max_participants
                        ),
                    ),
                    close::TRY_AGAIN_LATER,
                ))
            }
        };
        let state = SessionState {
            session_id: join.session_id.clone(),
            participant_id: participant.id.clone(),
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
        };
        self.member = Some(Member {
            session_id: join.session_id.clone(),
            participant_id: participant.id,
            name: self.identity.name.clone(),
            pending_cursor: None,
            cursor_due: None,
            last_cursor_sent: None,
        });
        self.state.count_participant(&join.session_id, true);
        if join.after_seq.is_some() {
            metrics::counter!(c2s_shared::metrics::RESUMES, "kind" => "session").increment(1);
        }
        let after = join.after_seq.unwrap_or(snapshot.seq).min(snapshot.seq);
        // The subscription is taken before session_state goes out; events after the snapshot queue up.
        self.follow(Topic::Session(join.session_id), after)
            .await
            .map_err(|r| (r, close::TRY_AGAIN_LATER))?;
        self.send(ServerMessage::SessionState(state))
            .await
            .map_err(|_| (refuse(ErrorCode::Internal, "socket closed"), close::NORMAL))?;
        Ok(())
    }

    /// Leaves (socket closing): the last cursor goes out first, then `participant_left`.
    pub(super) async fn leave(&mut self) {
        let _ = self.flush_cursor().await;
        let Some(member) = self.member.take() else {
            return;
        };
        self.state.count_participant(&member.session_id, false);
        let left = participant_left_frame(&member.session_id, &member.participant_id, "closed");
        if let Err(e) = self
            .state
            .bus
            .session_leave(
                &member.session_id,
                &member.participant_id,
                &self.state.node_id,
                &left,
            )
            .await
        {
            // Presence expiry will say it for us.
            tracing::warn!(error = %e, session_id = %member.session_id, "leave not recorded");
        }
    }

    pub(super) async fn update_query(&mut self, update: UpdateQuery) -> Result<(), Refusal> {
        let limit = self.state.ws.max_query_bytes;
        if update.query.len() > limit {
            return Err(refuse(
                ErrorCode::TooLarge,
                format!(
                    "`query` is {} bytes; the limit is {limit}",
                    update.query.len()
                ),
            ));
        }
        let member = self.member()?;
        // The version is filled in by the bus, atomically with the update.
        let template = frame(ServerMessage::QueryUpdated(QueryUpdated {
            session_id: member.session_id.clone(),
            query: update.query.clone(),
            author_id: member.participant_id.clone(),
            version: 0,
            timestamp: now_ms(),
        }))
        .replacen("\"version\":0", VERSION_PLACEHOLDER, 1);
        let outcome = self
            .state
            .bus
            .session_update_query(
                &member.session_id,
                &member.participant_id,
                &update.query,
                update.base_version,
                &template,
            )
            .await
            .map_err(unavailable)?;
        match outcome {
            UpdateOutcome::Applied { .. } => Ok(()),
            UpdateOutcome::Conflict { version, text } => Err(Refusal {
                code: ErrorCode::Conflict,
                message: format!(
                    "the query is at version {version}, not {}: rebase on the current text and retry",
                    update.base_version.unwrap_or_default()
                ),
                current: Some((version, text)),
            }),
        }
    }

    /// Keeps the latest cursor; it goes out at most once per interval (see `flush_cursor`).
    pub(super) async fn move_cursor(&mut self, cursor: Value) -> Result<(), Refusal> {
        let interval = Duration::from_millis(self.state.collab.cursor_interval_ms);
        let member = self
            .member
            .as_mut()
            .ok_or_else(|| refuse(ErrorCode::Internal, "not in a collaboration session"))?;
        member.pending_cursor = Some(cursor);
        if member.cursor_due.is_none() {
            let earliest = member
                .last_cursor_sent
                .map_or_else(Instant::now, |t| t + interval);
            member.cursor_due = Some(earliest.max(Instant::now()));
        }
        Ok(())
    }

    pub(super) async fn flush_cursor(&mut self) -> Result<(), Refusal> {
        let Some(member) = self.member.as_mut() else {
            return Ok(());
        };
        member.cursor_due = None;
        let Some(cursor) = member.pending_cursor.take() else {
            return Ok(());
        };
        member.last_cursor_sent = Some(Instant::now());
        let cursor_json = cursor.to_string();
        let moved = frame(ServerMessage::CursorMoved(CursorMoved {
            session_id: member.session_id.clone(),
            participant_id: member.participant_id.clone(),
            cursor,
            timestamp: now_ms(),
        }));
        let (session_id, participant_id) =
            (member.session_id.clone(), member.participant_id.clone());
        self.state
            .bus
            .session_cursor(&session_id, &participant_id, &cursor_json, &moved)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Stamps and broadcasts a chat message; false if its id was seen before (delivered once).
    pub(super) async fn chat(&mut self, message: OutgoingChat) -> Result<bool, Refusal> {
        let max = self.state.collab.max_chat_length;
        if message.id.is_empty() || message.id.len() > MAX_CLIENT_ID_LEN {
            return Err(refuse(
                ErrorCode::BadRequest,
                format!("`message.id` must be 1 to {MAX_CLIENT_ID_LEN} characters"),
            ));
        }
        let length = message.content.chars().count();
        if length > max {
            return Err(refuse(
                ErrorCode::TooLarge,
                format!("the message is {length} characters; the limit is {max}"),
            ));
        }
        let member = self.member()?;
        let entry = ChatEntry {
            id: message.id.clone(),
            content: message.content,
            author_id: member.participant_id.clone(),
            author_name: member.name.clone(),
            timestamp: now_ms(),
        };
        let entry_json = serde_json::to_string(&entry)
            .map_err(|e| refuse(ErrorCode::Internal, e.to_string()))?;
        let broadcast = frame(ServerMessage::ChatMessage(ChatBroadcast {
            session_id: member.session_id.clone(),
            message: entry,
        }));
        let seq = self
            .state
            .bus
            .session_chat(&member.session_id, &message.id, &entry_json, &broadcast)
            .await
            .map_err(unavailable)?;
        Ok(seq.is_some())
    }

    /// Tells the session a query was started in it, so every participant follows its events.
    pub(super) async fn announce_execution(&mut self, job: &Job) -> Result<(), Refusal> {
        let member = self.member()?;
        let announcement = frame(ServerMessage::SharedExecution(SharedExecution {
            session_id: member.session_id.clone(),
            execution_id: job.execution_id.clone(),
            author_id: member.participant_id.clone(),
            query: job.query.clone(),
            timestamp: now_ms(),
        }));
        self.state
            .bus
            .session_append(&member.session_id, &announcement)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}
