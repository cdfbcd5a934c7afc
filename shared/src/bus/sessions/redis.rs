//! Collaboration sessions on Redis: every change is one script on the session's slot that changes the
//! state, numbers the event with the session's counter, appends it to the log and publishes it on the
//! session's sharded channel.
//!
//! Join and leave also touch the gateway node's participant set (the node's slot), as a separate step:
//! - join adds the node's entry **before** the join script; a crash in between leaves an entry for a
//!   participant that never joined: when the node is reaped, its leave finds nobody and announces
//!   nothing. A full session removes the entry again.
//! - leave runs the leave script **before** removing the node's entry; a crash in between leaves an entry
//!   whose participant is gone: the reaper's leave is again a no-op, then the entry goes with the node.
//!
//! So a participant is never in a session without its node knowing it (it would never be reaped).
//!
//! With `C2S_REDIS_WAIT_REPLICAS` > 0 each change waits for replicas before it is acknowledged. A failover
//! can still lose the change in flight; its client gets an error (its request failed), but followers may
//! have seen its event live, and the promoted replica's counter numbers the next event the same: see the
//! README's failover limits.

use async_trait::async_trait;
use redis::{ScriptInvocation, Value};

use super::{JoinOutcome, JoinRequest, SessionState, UpdateOutcome};
use crate::bus::redis_bus::replies::parse_join;
use crate::bus::redis_bus::scripts::lua;
use crate::bus::{BusError, RedisBus};

impl RedisBus {
    /// Starts a session script invocation: the session's keys, then the common ARGV (log cap, TTL).
    fn session_call<'a>(
        &self,
        script: &'a redis::Script,
        session_id: &str,
    ) -> ScriptInvocation<'a> {
        let mut call = script.prepare_invoke();
        for key in self.keys.session_keys(session_id) {
            call.key(key);
        }
        call.arg(self.settings.session_event_max_len)
            .arg(self.settings.session_ttl.as_secs());
        call
    }

    fn node_member(session_id: &str, participant_id: &str) -> String {
        format!("{session_id}\t{participant_id}")
    }

    async fn node_entry(
        &self,
        add: bool,
        node_id: &str,
        session_id: &str,
        participant_id: &str,
    ) -> Result<(), BusError> {
        self.command(
            redis::cmd(if add { "SADD" } else { "SREM" })
                .arg(self.keys.node_participants(node_id))
                .arg(Self::node_member(session_id, participant_id)),
        )
        .await?;
        Ok(())
    }
}

#[async_trait]
impl SessionState for RedisBus {
    async fn session_join(&self, r: JoinRequest<'_>) -> Result<JoinOutcome, BusError> {
        self.node_entry(true, r.node_id, r.session_id, r.participant_id)
            .await?;
        let mut conn = self.conn.clone();
        let reply: Value = self
            .session_call(
                lua!("session_join.lua", with "session_lib.lua"),
                r.session_id,
            )
            .arg(r.participant_id)
            .arg(r.participant)
            .arg(r.max_participants)
            .arg(r.joined_frame)
            .arg(r.chat_history)
            .arg(r.user_id)
            .arg(if r.rejoin { "1" } else { "0" })
            .arg(r.replaces.unwrap_or(""))
            .arg(r.replaced_frame)
            .arg(r.node_id)
            .arg(r.gone_nodes.join("\t"))
            .arg(r.ghost_frame)
            .arg(format!("\"{}\"", super::GHOST_PLACEHOLDER))
            .invoke_async(&mut conn)
            .await?;
        self.wait_after(&self.keys.session_events(r.session_id))
            .await?;
        let outcome = parse_join(reply)?;
        if outcome == JoinOutcome::Full {
            self.node_entry(false, r.node_id, r.session_id, r.participant_id)
                .await?;
        }
        Ok(outcome)
    }

    async fn session_leave(
        &self,
        session_id: &str,
        participant_id: &str,
        node_id: &str,
        left_frame: &str,
    ) -> Result<Option<u64>, BusError> {
        let mut conn = self.conn.clone();
        let seq: u64 = self
            .session_call(
                lua!("session_leave.lua", with "session_lib.lua"),
                session_id,
            )
            .arg(participant_id)
            .arg(left_frame)
            .invoke_async(&mut conn)
            .await?;
        self.wait_after(&self.keys.session_events(session_id))
            .await?;
        self.node_entry(false, node_id, session_id, participant_id)
            .await?;
        Ok((seq > 0).then_some(seq))
    }

    async fn session_leave_many(
        &self,
        session_id: &str,
        node_id: &str,
        leaves: &[(String, String)],
    ) -> Result<usize, BusError> {
        if leaves.is_empty() {
            return Ok(0);
        }
        let mut conn = self.conn.clone();
        let mut call = self.session_call(
            lua!("session_leave_many.lua", with "session_lib.lua"),
            session_id,
        );
        for (participant_id, left_frame) in leaves {
            call.arg(participant_id).arg(left_frame);
        }
        let announced: usize = call.invoke_async(&mut conn).await?;
        self.wait_after(&self.keys.session_events(session_id))
            .await?;
        let mut forget = redis::cmd("SREM");
        forget.arg(self.keys.node_participants(node_id));
        for (participant_id, _) in leaves {
            forget.arg(Self::node_member(session_id, participant_id));
        }
        self.command(&forget).await?;
        Ok(announced)
    }

    async fn session_update_query(
        &self,
        session_id: &str,
        author_id: &str,
        text: &str,
        base_version: Option<u64>,
        frame: &str,
    ) -> Result<UpdateOutcome, BusError> {
        let mut conn = self.conn.clone();
        let (applied, version, third): (i64, u64, Value) = self
            .session_call(
                lua!("session_update_query.lua", with "session_lib.lua"),
                session_id,
            )
            .arg(text)
            .arg(author_id)
            .arg(base_version.map(|v| v.to_string()).unwrap_or_default())
            .arg(frame)
            .invoke_async(&mut conn)
            .await?;
        self.wait_after(&self.keys.session_events(session_id))
            .await?;
        let decode = |what: &str| BusError::Malformed(format!("session update reply: {what}"));
        Ok(if applied == 1 {
            UpdateOutcome::Applied {
                version,
                seq: redis::from_redis_value(third).map_err(|e| decode(&e.to_string()))?,
            }
        } else {
            UpdateOutcome::Conflict {
                version,
                text: redis::from_redis_value(third).map_err(|e| decode(&e.to_string()))?,
            }
        })
    }

    async fn session_cursor(
        &self,
        session_id: &str,
        participant_id: &str,
        cursor: &str,
        frame: &str,
    ) -> Result<u64, BusError> {
        let mut conn = self.conn.clone();
        let seq = self
            .session_call(
                lua!("session_cursor.lua", with "session_lib.lua"),
                session_id,
            )
            .arg(participant_id)
            .arg(cursor)
            .arg(frame)
            .invoke_async(&mut conn)
            .await?;
        self.wait_after(&self.keys.session_events(session_id))
            .await?;
        Ok(seq)
    }

    async fn session_chat(
        &self,
        session_id: &str,
        message_id: &str,
        entry: &str,
        frame: &str,
    ) -> Result<Option<u64>, BusError> {
        let mut conn = self.conn.clone();
        let seq: u64 = self
            .session_call(lua!("session_chat.lua", with "session_lib.lua"), session_id)
            .key(self.keys.session_chat_id(session_id, message_id))
            .arg(entry)
            .arg(frame)
            .arg(self.settings.chat_max_len)
            .arg(self.settings.idempotency_ttl.as_secs())
            .invoke_async(&mut conn)
            .await?;
        self.wait_after(&self.keys.session_events(session_id))
            .await?;
        Ok((seq > 0).then_some(seq))
    }

    async fn session_append(&self, session_id: &str, frame: &str) -> Result<u64, BusError> {
        let mut conn = self.conn.clone();
        let seq = self
            .session_call(
                lua!("session_append.lua", with "session_lib.lua"),
                session_id,
            )
            .arg(frame)
            .invoke_async(&mut conn)
            .await?;
        self.wait_after(&self.keys.session_events(session_id))
            .await?;
        Ok(seq)
    }
}
