//! Presence on Redis: the node set (a sorted set, node id -> last beat by the Redis server's clock), each
//! node's participant set (`<session id>\t<participant id>` members, written by `sessions/redis.rs`), and
//! each user's socket leases (a sorted set scored by lease deadline, in the user's slot).
//!
//! Invariant: the node set and a node's participant set are two slots, so forgetting a node is two steps,
//! participants first: a crash in between leaves the node listed, and the next reaper round forgets it
//! again (never a participant set without its node, which no reaper would find).

use std::time::Duration;

use async_trait::async_trait;

use super::NodePresence;
use crate::bus::redis_bus::scripts::lua;
use crate::bus::{BusError, RedisBus};

#[async_trait]
impl NodePresence for RedisBus {
    /// Scored by the Redis server's clock (`node_beat.lua`): the nodes' clocks may disagree.
    async fn node_heartbeat(&self, node_id: &str) -> Result<(), BusError> {
        let mut conn = self.conn.clone();
        let _: i64 = lua!("node_beat.lua")
            .key(self.keys.nodes())
            .arg(node_id)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    async fn dead_nodes(&self, ttl: Duration) -> Result<Vec<String>, BusError> {
        let mut conn = self.conn.clone();
        Ok(lua!("nodes_dead.lua")
            .key(self.keys.nodes())
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?)
    }

    async fn node_participants(&self, node_id: &str) -> Result<Vec<(String, String)>, BusError> {
        let mut conn = self.conn.clone();
        let members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys.node_participants(node_id))
            .query_async(&mut conn)
            .await?;
        Ok(members
            .into_iter()
            .filter_map(|m| {
                m.split_once('\t')
                    .map(|(s, p)| (s.to_owned(), p.to_owned()))
            })
            .collect())
    }

    /// Two keys of two slots, so two steps: the node's participant set first (a crash after it leaves
    /// the node in the set, and the next reaper round forgets it again).
    async fn forget_node(&self, node_id: &str) -> Result<(), BusError> {
        self.command(redis::cmd("DEL").arg(self.keys.node_participants(node_id)))
            .await?;
        self.command(redis::cmd("ZREM").arg(self.keys.nodes()).arg(node_id))
            .await?;
        Ok(())
    }

    async fn node_listen(&self, node_id: &str) -> Result<(), BusError> {
        self.hold_channel(&self.keys.node_alive_channel(node_id))
            .await
    }

    /// The node set, then one `PUBSUB SHARDNUMSUB` of every node's alive channel (on a cluster it goes
    /// to every node and the counts are summed; only the slot's master has subscribers).
    async fn node_links(&self) -> Result<Option<Vec<(String, u64)>>, BusError> {
        let mut conn = self.conn.clone();
        let nodes: Vec<String> = redis::cmd("ZRANGE")
            .arg(self.keys.nodes())
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await?;
        if nodes.is_empty() {
            return Ok(Some(Vec::new()));
        }
        let mut count = redis::cmd("PUBSUB");
        count.arg("SHARDNUMSUB");
        for node in &nodes {
            count.arg(self.keys.node_alive_channel(node));
        }
        let counts: std::collections::HashMap<String, i64> = count.query_async(&mut conn).await?;
        Ok(Some(
            nodes
                .into_iter()
                .map(|node| {
                    let n = counts
                        .get(&self.keys.node_alive_channel(&node))
                        .copied()
                        .unwrap_or(0);
                    (node, n.max(0) as u64)
                })
                .collect(),
        ))
    }

    async fn open_connection(
        &self,
        user: &str,
        socket: &str,
        max: usize,
        lease: Duration,
    ) -> Result<bool, BusError> {
        let mut conn = self.conn.clone();
        let open: i64 = lua!("conn_acquire.lua")
            .key(self.keys.user_connections(user))
            .arg(socket)
            .arg(max)
            .arg(lease.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        Ok(open == 1)
    }

    async fn close_connection(&self, user: &str, socket: &str) -> Result<(), BusError> {
        self.command(
            redis::cmd("ZREM")
                .arg(self.keys.user_connections(user))
                .arg(socket),
        )
        .await?;
        Ok(())
    }
}
