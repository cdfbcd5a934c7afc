//! Presence in one process: one node, so nobody else to watch (heartbeats and reaping are no-ops); the
//! per-user connection cap is kept in the bus's state.
//!
//! Invariant: a user's sockets past their lease deadline are dropped before a new one is counted.

use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::NodePresence;
use crate::bus::{BusError, MemoryBus};

#[async_trait]
impl NodePresence for MemoryBus {
    // One process, one node: nobody else to watch.
    async fn node_heartbeat(&self, _node_id: &str) -> Result<(), BusError> {
        Ok(())
    }

    async fn dead_nodes(&self, _ttl: Duration) -> Result<Vec<String>, BusError> {
        Ok(Vec::new())
    }

    async fn node_participants(&self, _node_id: &str) -> Result<Vec<(String, String)>, BusError> {
        Ok(Vec::new())
    }

    async fn forget_node(&self, _node_id: &str) -> Result<(), BusError> {
        Ok(())
    }

    async fn node_listen(&self, _node_id: &str) -> Result<(), BusError> {
        Ok(())
    }

    async fn node_links(&self) -> Result<Option<Vec<(String, u64)>>, BusError> {
        Ok(None)
    }

    async fn open_connection(
        &self,
        user: &str,
        socket: &str,
        max: usize,
        lease: Duration,
    ) -> Result<bool, BusError> {
        let mut state = self.state();
        let now = Instant::now();
        let sockets = state.connections.entry(user.to_owned()).or_default();
        sockets.retain(|_, until| *until > now);
        if !sockets.contains_key(socket) && sockets.len() >= max {
            return Ok(false);
        }
        sockets.insert(socket.to_owned(), now + lease);
        Ok(true)
    }

    async fn close_connection(&self, user: &str, socket: &str) -> Result<(), BusError> {
        let mut state = self.state();
        if let Some(sockets) = state.connections.get_mut(user) {
            sockets.remove(socket);
            if sockets.is_empty() {
                state.connections.remove(user);
            }
        }
        Ok(())
    }
}
