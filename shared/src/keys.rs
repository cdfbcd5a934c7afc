//! Every Redis key and channel name, in one place. All of them start with the configured prefix, so
//! several deployments (or parallel tests) can share one Redis without touching each other.

#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

/// The consumer group that all workers read the job stream with.
pub const WORKER_GROUP: &str = "workers";

impl Keys {
    pub fn new(prefix: impl Into<String>) -> Self {
        Keys {
            prefix: prefix.into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Stream of query jobs, read by the worker consumer group.
    pub fn jobs(&self) -> String {
        format!("{}:jobs", self.prefix)
    }

    /// Hash with an execution's lifecycle state (`queued`/`running`/`done`/`cancelled`) and owner.
    pub fn execution(&self, execution_id: &str) -> String {
        format!("{}:exec:{execution_id}", self.prefix)
    }

    /// Capped stream of an execution's events, entry id `<seq>-0`: what `resume` replays.
    pub fn execution_events(&self, execution_id: &str) -> String {
        format!("{}:exec:{execution_id}:events", self.prefix)
    }

    /// Pub/sub channel carrying an execution's events live.
    pub fn execution_channel(&self, execution_id: &str) -> String {
        format!("{}:exec:{execution_id}:live", self.prefix)
    }

    /// Pub/sub channel on which workers hear cancel requests (payload: execution id).
    pub fn cancel_channel(&self) -> String {
        format!("{}:cancel", self.prefix)
    }

    /// Base of every key of a collaboration session: `<base>:seq`, `:events` (stream, entry id `<seq>-0`),
    /// `:live` (channel), `:participants`, `:query`, `:cursors` (hashes), `:chat` (stream), `:chatid:<id>`.
    /// The session scripts derive the rest from it.
    pub fn session(&self, session_id: &str) -> String {
        format!("{}:session:{session_id}", self.prefix)
    }

    pub fn session_events(&self, session_id: &str) -> String {
        format!("{}:events", self.session(session_id))
    }

    pub fn session_channel(&self, session_id: &str) -> String {
        format!("{}:live", self.session(session_id))
    }

    /// The log (stream) of a topic's events.
    pub fn topic_events(&self, topic: &crate::bus::Topic) -> String {
        match topic {
            crate::bus::Topic::Execution(id) => self.execution_events(id),
            crate::bus::Topic::Session(id) => self.session_events(id),
        }
    }

    /// The live channel of a topic's events.
    pub fn topic_channel(&self, topic: &crate::bus::Topic) -> String {
        match topic {
            crate::bus::Topic::Execution(id) => self.execution_channel(id),
            crate::bus::Topic::Session(id) => self.session_channel(id),
        }
    }

    /// Pub/sub channel of operator notices for every client on every node.
    pub fn notices(&self) -> String {
        format!("{}:notices", self.prefix)
    }

    /// Sorted set of gateway nodes, scored by their last presence heartbeat (ms).
    pub fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    /// Set of `<sessionId>\t<participantId>` connected through one node (reaped when the node dies).
    pub fn node_participants(&self, node_id: &str) -> String {
        format!("{}:node:{node_id}:participants", self.prefix)
    }

    /// Sorted set of a user's unfinished executions, scored by a lease deadline (ms): the per-user cap.
    pub fn user_running(&self, user: &str) -> String {
        format!("{}:user:{user}:running", self.prefix)
    }

    /// Idempotency record of a client message id, per user.
    pub fn idempotency(&self, user: &str, client_id: &str) -> String {
        format!("{}:idem:{user}:{client_id}", self.prefix)
    }
}
