//! Every Redis key and channel name, in one place. All of them start with the configured prefix, so
//! several deployments (or parallel tests) can share one Redis without touching each other.
//!
//! Invariants (Redis Cluster): every key and live channel of one entity carries the same hash tag —
//! `{e:<id>}` for an execution, `{s:<id>}` for a session, `{u:<id>}` for a user, `{n:<id>}` for a gateway
//! node, `{jobs}` for the job queue — so each entity lives in one slot and each Lua script, which only
//! touches one entity, touches one slot. The prefix itself must not contain `{` or `}` (it would become
//! the tag of every key: [`Keys::new`] refuses it). Nothing else (Lua included) builds or parses a key.

#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

/// Why a key prefix was refused.
#[derive(Debug, thiserror::Error)]
#[error("the key prefix {0:?} must not contain `{{` or `}}` (Redis Cluster hash tags)")]
pub struct BadPrefix(pub String);

impl Keys {
    pub fn new(prefix: impl Into<String>) -> Self {
        Keys {
            prefix: prefix.into(),
        }
    }

    /// Like [`Keys::new`], but refuses a prefix that would hash-tag every key into one slot.
    pub fn checked(prefix: impl Into<String>) -> Result<Self, BadPrefix> {
        let prefix = prefix.into();
        if prefix.contains(['{', '}']) {
            return Err(BadPrefix(prefix));
        }
        Ok(Keys { prefix })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Stream of query jobs (the job bodies, entry id = job id), deleted once acknowledged.
    pub fn jobs(&self) -> String {
        format!("{}:{{jobs}}", self.prefix)
    }

    /// Every key of the fair scheduler, in the order the job scripts take them as KEYS[1..9], all in
    /// the `{jobs}` slot (see `bus/jobs/scheduler.rs`): the job stream; `heads` (zset: user with waiting
    /// jobs -> ms of its oldest); `queues` (hash: user -> its waiting job ids, oldest first,
    /// space-separated); `running` (hash: user -> jobs taken and not acknowledged); `claims` (zset: job
    /// id -> ms its worker last refreshed it); `claimed` (hash: job id -> `<consumer>\t<user>`);
    /// `workers` (zset: worker -> ms last seen); `slots` (hash: worker -> its concurrency); `wake` (list
    /// of tokens idle workers block on).
    pub fn scheduler_keys(&self) -> [String; 9] {
        let base = format!("{}:{{jobs}}", self.prefix);
        [
            base.clone(),
            format!("{base}:heads"),
            format!("{base}:queues"),
            format!("{base}:running"),
            format!("{base}:claims"),
            format!("{base}:claimed"),
            format!("{base}:workers"),
            format!("{base}:slots"),
            format!("{base}:wake"),
        ]
    }

    /// Hash with an execution's lifecycle state (`pending`/`queued`/`running`/`done`/`cancelled`/`lost`),
    /// owner, session, creation time, job id and the last `seq` written to its log.
    pub fn execution(&self, execution_id: &str) -> String {
        format!("{}:{{e:{execution_id}}}", self.prefix)
    }

    /// Capped stream of an execution's events, entry id `<seq>-0`: what `resume` replays.
    pub fn execution_events(&self, execution_id: &str) -> String {
        format!("{}:{{e:{execution_id}}}:events", self.prefix)
    }

    /// Sharded pub/sub channel carrying an execution's events live (same slot as its log).
    pub fn execution_channel(&self, execution_id: &str) -> String {
        format!("{}:{{e:{execution_id}}}:live", self.prefix)
    }

    /// Hash of an execution's followers: reader id -> `<seq taken> <live until, ms>` (the window).
    pub fn execution_followers(&self, execution_id: &str) -> String {
        format!("{}:{{e:{execution_id}}}:followers", self.prefix)
    }

    /// Classic pub/sub channel on which workers hear cancel requests (payload: execution id).
    pub fn cancel_channel(&self) -> String {
        format!("{}:cancel", self.prefix)
    }

    /// Every key of a collaboration session, in the order the session scripts take them as KEYS[1..7].
    pub fn session_keys(&self, session_id: &str) -> [String; 7] {
        let base = format!("{}:{{s:{session_id}}}", self.prefix);
        [
            format!("{base}:seq"),
            format!("{base}:events"),
            format!("{base}:live"),
            format!("{base}:participants"),
            format!("{base}:query"),
            format!("{base}:cursors"),
            format!("{base}:chat"),
        ]
    }

    /// Stream of a session's events, entry id `<seq>-0`.
    pub fn session_events(&self, session_id: &str) -> String {
        format!("{}:{{s:{session_id}}}:events", self.prefix)
    }

    /// Sharded pub/sub channel of a session's events.
    pub fn session_channel(&self, session_id: &str) -> String {
        format!("{}:{{s:{session_id}}}:live", self.prefix)
    }

    /// Dedup record of a chat message id in a session.
    pub fn session_chat_id(&self, session_id: &str, message_id: &str) -> String {
        format!("{}:{{s:{session_id}}}:chatid:{message_id}", self.prefix)
    }

    /// The log (stream) of a topic's events.
    pub fn topic_events(&self, topic: &crate::bus::Topic) -> String {
        match topic {
            crate::bus::Topic::Execution(id) => self.execution_events(id),
            crate::bus::Topic::Session(id) => self.session_events(id),
        }
    }

    /// The live (sharded) channel of a topic's events.
    pub fn topic_channel(&self, topic: &crate::bus::Topic) -> String {
        match topic {
            crate::bus::Topic::Execution(id) => self.execution_channel(id),
            crate::bus::Topic::Session(id) => self.session_channel(id),
        }
    }

    /// Classic pub/sub channel of operator notices for every client on every node.
    pub fn notices(&self) -> String {
        format!("{}:notices", self.prefix)
    }

    /// Sorted set of gateway nodes, scored by their last presence heartbeat (Redis server time, ms).
    pub fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    /// Sharded channel a gateway node stays subscribed to for its whole life and nobody publishes on:
    /// its subscriber count (`PUBSUB SHARDNUMSUB`) drops to 0 the moment the node's process, and with
    /// it its connection, is gone. Every node's is in one slot (`{alive}`), so one reply counts them all.
    pub fn node_alive_channel(&self, node_id: &str) -> String {
        format!("{}:{{alive}}:{node_id}", self.prefix)
    }

    /// Set of `<sessionId>\t<participantId>` connected through one node (reaped when the node dies).
    pub fn node_participants(&self, node_id: &str) -> String {
        format!("{}:{{n:{node_id}}}:participants", self.prefix)
    }

    /// Sorted set of a user's unfinished executions, scored by a lease deadline (ms): the per-user cap.
    pub fn user_running(&self, user: &str) -> String {
        format!("{}:{{u:{user}}}:running", self.prefix)
    }

    /// Sorted set of a user's open sockets over all nodes (`<node>\t<socket id>` -> lease deadline, ms):
    /// the per-user connection cap. A dead node's sockets drop out when their leases end.
    pub fn user_connections(&self, user: &str) -> String {
        format!("{}:{{u:{user}}}:connections", self.prefix)
    }

    /// Idempotency record of a client message id, per user.
    pub fn idempotency(&self, user: &str, client_id: &str) -> String {
        format!("{}:{{u:{user}}}:idem:{client_id}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hash tag Redis Cluster hashes: the text between the first `{` and the next `}`.
    fn tag(key: &str) -> &str {
        let open = key.find('{').expect("tagged");
        let close = key[open..].find('}').expect("closed") + open;
        &key[open + 1..close]
    }

    #[test]
    fn each_entity_has_one_tag() {
        let k = Keys::new("c2s");
        let e = [
            k.execution("x"),
            k.execution_events("x"),
            k.execution_channel("x"),
            k.execution_followers("x"),
        ];
        assert!(e.iter().all(|key| tag(key) == "e:x"), "{e:?}");
        let mut s = k.session_keys("s1").to_vec();
        s.extend([
            k.session_events("s1"),
            k.session_channel("s1"),
            k.session_chat_id("s1", "m"),
        ]);
        assert!(s.iter().all(|key| tag(key) == "s:s1"), "{s:?}");
        assert_eq!(tag(&k.user_running("ann")), "u:ann");
        assert_eq!(tag(&k.idempotency("ann", "c-1")), "u:ann");
        assert_eq!(tag(&k.node_participants("gw")), "n:gw");
        assert_eq!(tag(&k.jobs()), "jobs");
        assert!(k.scheduler_keys().iter().all(|key| tag(key) == "jobs"));
        assert_eq!(tag(&k.user_connections("ann")), "u:ann");
        assert!(Keys::checked("a{b").is_err() && Keys::checked("t-1").is_ok());
    }
}
