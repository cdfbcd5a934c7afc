//! Collaboration sessions in one process: each change and its numbered event in one lock, like the
//! scripts on Redis.
//!
//! Invariants: `MemoryBus::session_append_locked` is the only writer of a session's log and counter
//! (the Lua `append` twin); a leave announces only a participant it removed; one node, so a join
//! discounts no ghosts of other nodes.

use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    JoinOutcome, JoinRequest, SessionSnapshot, SessionState, UpdateOutcome, VERSION_PLACEHOLDER,
};
use crate::bus::memory::Session;
use crate::bus::{with_seq, BusError, BusEvent, MemoryBus};

impl MemoryBus {
    /// Numbers `frame` with the session's next seq, logs it and publishes it (the Lua `append` twin).
    fn session_append_locked(&self, session_id: &str, session: &mut Session, frame: &str) -> u64 {
        session.seq += 1;
        let event = BusEvent {
            seq: session.seq,
            terminal: false,
            frame: with_seq(frame, session.seq).into(),
        };
        if session.events.len() >= self.settings.session_event_max_len.max(1) {
            session.events.pop_front();
        }
        session.touched = Some(Instant::now());
        self.hub.deliver(
            &self.keys.session_channel(session_id),
            Bytes::from(event.encode()),
        );
        session.events.push_back(event);
        session.seq
    }
}

#[async_trait]
impl SessionState for MemoryBus {
    async fn session_join(&self, r: JoinRequest<'_>) -> Result<JoinOutcome, BusError> {
        let mut state = self.state();
        self.expire(&mut state);
        let session = state.sessions.entry(r.session_id.to_owned()).or_default();
        // A rejoin takes over its previous entry, if it is the same user's (one node: no ghosts of
        // other nodes to discount from the cap).
        if let Some(old) = r.replaces {
            let same_user = |json: &str| {
                serde_json::from_str::<serde_json::Value>(json)
                    .is_ok_and(|p| p["userId"].as_str() == Some(r.user_id))
            };
            let before = session.participants.len();
            session
                .participants
                .retain(|(id, json)| id != old || !same_user(json));
            if session.participants.len() < before {
                session.cursors.remove(old);
                self.session_append_locked(r.session_id, session, r.replaced_frame);
            }
        }
        if session.participants.len() >= r.max_participants {
            return Ok(JoinOutcome::Full);
        }
        session
            .participants
            .push((r.participant_id.to_owned(), r.participant.to_owned()));
        let seq = self.session_append_locked(r.session_id, session, r.joined_frame);
        let skip = session.chat.len().saturating_sub(r.chat_history);
        Ok(JoinOutcome::Joined(SessionSnapshot {
            seq,
            participants: session
                .participants
                .iter()
                .map(|(_, p)| p.clone())
                .collect(),
            query_text: session.query_text.clone(),
            query_version: session.query_version,
            query_author: session.query_author.clone(),
            cursors: session
                .cursors
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            chat: session.chat.iter().skip(skip).cloned().collect(),
        }))
    }

    async fn session_leave(
        &self,
        session_id: &str,
        participant_id: &str,
        _node_id: &str,
        left_frame: &str,
    ) -> Result<Option<u64>, BusError> {
        let mut state = self.state();
        let Some(session) = state.sessions.get_mut(session_id) else {
            return Ok(None);
        };
        session.cursors.remove(participant_id);
        let before = session.participants.len();
        session.participants.retain(|(id, _)| id != participant_id);
        if session.participants.len() == before {
            return Ok(None);
        }
        Ok(Some(
            self.session_append_locked(session_id, session, left_frame),
        ))
    }

    async fn session_update_query(
        &self,
        session_id: &str,
        author_id: &str,
        text: &str,
        base_version: Option<u64>,
        frame: &str,
    ) -> Result<UpdateOutcome, BusError> {
        let mut state = self.state();
        let session = state.sessions.entry(session_id.to_owned()).or_default();
        if base_version.is_some_and(|b| b != session.query_version) {
            return Ok(UpdateOutcome::Conflict {
                version: session.query_version,
                text: session.query_text.clone(),
            });
        }
        session.query_version += 1;
        session.query_text = text.to_owned();
        session.query_author = Some(author_id.to_owned());
        let version = session.query_version;
        let frame = frame.replacen(VERSION_PLACEHOLDER, &format!("\"version\":{version}"), 1);
        let seq = self.session_append_locked(session_id, session, &frame);
        Ok(UpdateOutcome::Applied { version, seq })
    }

    async fn session_cursor(
        &self,
        session_id: &str,
        participant_id: &str,
        cursor: &str,
        frame: &str,
    ) -> Result<u64, BusError> {
        let mut state = self.state();
        let session = state.sessions.entry(session_id.to_owned()).or_default();
        session
            .cursors
            .insert(participant_id.to_owned(), cursor.to_owned());
        Ok(self.session_append_locked(session_id, session, frame))
    }

    async fn session_chat(
        &self,
        session_id: &str,
        message_id: &str,
        entry: &str,
        frame: &str,
    ) -> Result<Option<u64>, BusError> {
        let ttl = self.settings.idempotency_ttl;
        let cap = self.settings.chat_max_len.max(1);
        let mut state = self.state();
        let session = state.sessions.entry(session_id.to_owned()).or_default();
        session.chat_ids.retain(|_, at| at.elapsed() < ttl);
        if session.chat_ids.contains_key(message_id) {
            return Ok(None);
        }
        session
            .chat_ids
            .insert(message_id.to_owned(), Instant::now());
        if session.chat.len() >= cap {
            session.chat.pop_front();
        }
        session.chat.push_back(entry.to_owned());
        Ok(Some(self.session_append_locked(session_id, session, frame)))
    }

    async fn session_append(&self, session_id: &str, frame: &str) -> Result<u64, BusError> {
        let mut state = self.state();
        let session = state.sessions.entry(session_id.to_owned()).or_default();
        Ok(self.session_append_locked(session_id, session, frame))
    }
}
