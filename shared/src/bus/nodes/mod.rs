//! Presence: which gateway nodes are alive and which session participants each one carries (so the
//! participants of a node that died are reaped), and which sockets each user holds (the per-user
//! connection cap).
//!
//! Invariants: a node's heartbeat is scored by the bus's clock, never the node's (on Redis the server's
//! time), so nodes whose clocks disagree judge each other alike; a participant is in a session only while
//! its node's participant set names it (on Redis `sessions/redis.rs` orders the two steps so); a socket's slot
//! is held only for its lease unless renewed, so a node that died leaks no slot for longer.
//!
//! `memory.rs` (one process, one node: nothing to watch) and `redis.rs` (with the scripts beside it)
//! implement [`NodePresence`].

mod memory;
mod redis;

use std::time::Duration;

use async_trait::async_trait;

use super::BusError;

#[async_trait]
pub trait NodePresence: Send + Sync {
    // ---- presence of gateway nodes ------------------------------------------------------------------------

    /// Marks `node_id` alive now.
    async fn node_heartbeat(&self, node_id: &str) -> Result<(), BusError>;

    /// Nodes whose last heartbeat is older than `ttl`.
    async fn dead_nodes(&self, ttl: Duration) -> Result<Vec<String>, BusError>;

    /// (session id, participant id) of every participant connected through `node_id`.
    async fn node_participants(&self, node_id: &str) -> Result<Vec<(String, String)>, BusError>;

    /// Forgets a dead node once its participants are reaped.
    async fn forget_node(&self, node_id: &str) -> Result<(), BusError>;

    /// Holds a link to Redis that lives exactly as long as this process (on Redis: a subscription to
    /// the node's alive channel, placed again by the subscriber after any drop), so the peers see a
    /// killed node's link gone at once ([`NodePresence::node_links`]).
    async fn node_listen(&self, node_id: &str) -> Result<(), BusError>;

    /// Every node of the node set with how many links it holds now (0: its process is gone, or it is
    /// reconnecting). None where links are not watched (one process).
    async fn node_links(&self) -> Result<Option<Vec<(String, u64)>>, BusError>;

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
}
