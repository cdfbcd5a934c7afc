//! Sharded pub/sub (`SSUBSCRIBE`) with our own placement and resubscription, for one Redis and for a
//! Redis Cluster alike (one Redis is a cluster whose one node serves every slot).
//!
//! Invariants:
//! - The set of wanted channels is kept here (fed by the [`Hub`]: one upstream subscription per channel
//!   per process), each with the node it is subscribed on, or none while it needs (re)subscribing.
//! - Each channel is subscribed with its own `SSUBSCRIBE` on the master of its slot, over a RESP3
//!   connection of ours to that node used for nothing else (never the command connection: redis-rs takes
//!   an unsolicited `sunsubscribe` for the reply of the next command in flight, and its cluster
//!   resubscription sends all of a node's channels in one `SSUBSCRIBE`, which Redis refuses as CROSSSLOT).
//! - A node link that drops, a `sunsubscribe` we did not ask for (Redis sends one to every subscriber of
//!   a slot that moved away, or whose node was demoted), or a MOVED answer marks the channels of that link
//!   unplaced: the slot map is read again (`CLUSTER SLOTS`) and each one is subscribed again, with backoff
//!   while its slot has no reachable master (a failover in progress). Once a channel is back, its local
//!   subscribers get [`Hub::resync`]: they re-read their stream's log after the last `seq` they delivered,
//!   so nothing published while the channel was away is missed.
//! - Messages go from the connection's reader straight into the hub (no hop through the actor below).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use redis::aio::{AsyncPushSender, MultiplexedConnection, SendError};
use redis::{AsyncConnectionConfig, Client, ProtocolVersion, PushInfo, PushKind, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::conn::{Endpoints, CONNECT_TIMEOUT, RECONNECT_MAX, RECONNECT_MIN, RESPONSE_TIMEOUT};
use super::slots::{key_slot, NodeAddr, SlotMap};
use crate::bus::hub::Hub;
use crate::bus::BusError;

enum Ctl {
    Subscribe(String, oneshot::Sender<Result<(), BusError>>),
    Unsubscribe(String, oneshot::Sender<()>),
    /// A link dropped (`channel` None) or Redis sent `sunsubscribe` for `channel`.
    Lost {
        node: NodeAddr,
        generation: u64,
        channel: Option<String>,
    },
}

/// Handle of the sharded subscriber (cheap to clone).
#[derive(Clone)]
pub(super) struct Sharded {
    control: mpsc::UnboundedSender<Ctl>,
    unplaced: Arc<AtomicUsize>,
}

impl Sharded {
    /// Reads the slot map (cluster) and starts the subscriber; messages go to the hub once it is set.
    pub async fn start(endpoints: Endpoints, hub: Arc<OnceLock<Hub>>) -> Result<Sharded, BusError> {
        let (control, rx) = mpsc::unbounded_channel();
        let unplaced = Arc::new(AtomicUsize::new(0));
        let mut actor = Actor {
            map: SlotMap::default(),
            endpoints,
            hub,
            control: control.clone(),
            wanted: HashMap::new(),
            links: HashMap::new(),
            next_generation: 0,
            backoff: RECONNECT_MIN,
            unplaced: unplaced.clone(),
        };
        actor.refresh_map().await?;
        tokio::spawn(actor.run(rx));
        Ok(Sharded { control, unplaced })
    }

    pub async fn subscribe(&self, channel: &str) -> Result<(), BusError> {
        let (tx, rx) = oneshot::channel();
        self.control
            .send(Ctl::Subscribe(channel.to_owned(), tx))
            .map_err(|_| BusError::Closed)?;
        rx.await.map_err(|_| BusError::Closed)?
    }

    pub async fn unsubscribe(&self, channel: &str) {
        let (tx, rx) = oneshot::channel();
        if self
            .control
            .send(Ctl::Unsubscribe(channel.to_owned(), tx))
            .is_ok()
        {
            let _ = rx.await;
        }
    }

    /// Wanted channels that are not subscribed right now (being repaired).
    pub fn unplaced(&self) -> usize {
        self.unplaced.load(Ordering::Relaxed)
    }
}

/// One RESP3 connection to one node, carrying our `SSUBSCRIBE`s to it.
struct Link {
    conn: MultiplexedConnection,
    generation: u64,
    /// Channels we sent `SUNSUBSCRIBE` for whose confirmation has not been seen yet.
    leaving: HashSet<String>,
}

struct Actor {
    endpoints: Endpoints,
    hub: Arc<OnceLock<Hub>>,
    control: mpsc::UnboundedSender<Ctl>,
    map: SlotMap,
    /// Channel -> the node it is subscribed on (None: to be subscribed again).
    wanted: HashMap<String, Option<NodeAddr>>,
    links: HashMap<NodeAddr, Link>,
    next_generation: u64,
    backoff: Duration,
    unplaced: Arc<AtomicUsize>,
}

impl Actor {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Ctl>) {
        let mut repair_at: Option<Instant> = None;
        loop {
            let ctl = match repair_at {
                Some(at) => tokio::select! {
                    ctl = rx.recv() => ctl,
                    _ = tokio::time::sleep_until(at) => {
                        repair_at = self.repair().await;
                        continue;
                    }
                },
                None => rx.recv().await,
            };
            let Some(ctl) = ctl else { return };
            match ctl {
                Ctl::Subscribe(channel, reply) => {
                    let placed = self.place(&channel).await;
                    let _ = reply.send(placed.map(|node| {
                        self.wanted.insert(channel, Some(node));
                    }));
                }
                Ctl::Unsubscribe(channel, done) => {
                    self.leave(&channel).await;
                    let _ = done.send(());
                }
                Ctl::Lost {
                    node,
                    generation,
                    channel,
                } => {
                    if self.on_lost(&node, generation, channel) {
                        repair_at = Some(Instant::now());
                    }
                }
            }
            // Whatever unplaced a channel (a lost link, a failed command on a shared link), it is
            // repaired: now, or at the time the backoff already set.
            if repair_at.is_none() && self.wanted.values().any(Option::is_none) {
                repair_at = Some(Instant::now());
            }
            self.count_unplaced();
        }
    }

    fn count_unplaced(&self) {
        let n = self.wanted.values().filter(|n| n.is_none()).count();
        self.unplaced.store(n, Ordering::Relaxed);
    }

    /// Handles a dropped link or a `sunsubscribe`; true if channels now need subscribing again.
    fn on_lost(&mut self, node: &NodeAddr, generation: u64, channel: Option<String>) -> bool {
        let Some(link) = self.links.get_mut(node) else {
            return false;
        };
        if link.generation != generation {
            return false; // news of a link already replaced
        }
        if let Some(ch) = &channel {
            if link.leaving.remove(ch) {
                return false; // the confirmation of our own SUNSUBSCRIBE
            }
            tracing::info!(%node, channel = %ch, "sharded channel unsubscribed by Redis (slot moved); resubscribing");
        } else {
            tracing::warn!(%node, "sharded pub/sub link lost; resubscribing its channels");
        }
        // The link may now mistake pushes for replies: drop it and move every channel it carried.
        self.drop_link(node);
        true
    }

    fn drop_link(&mut self, node: &NodeAddr) {
        self.links.remove(node);
        for placed in self.wanted.values_mut() {
            if placed.as_ref() == Some(node) {
                *placed = None;
            }
        }
    }

    /// Subscribes every unplaced channel again; returns when to try again if some are still unplaced.
    async fn repair(&mut self) -> Option<Instant> {
        if self.endpoints.cluster {
            if let Err(e) = self.refresh_map().await {
                tracing::warn!(error = %e, "reading the cluster's slot map failed");
            }
        }
        let unplaced: Vec<String> = self
            .wanted
            .iter()
            .filter(|(_, node)| node.is_none())
            .map(|(ch, _)| ch.clone())
            .collect();
        let mut left = 0;
        for channel in unplaced {
            match self.place(&channel).await {
                Ok(node) => {
                    self.wanted.insert(channel.clone(), Some(node));
                    if let Some(hub) = self.hub.get() {
                        hub.resync(&channel);
                    }
                }
                Err(_) => left += 1,
            }
        }
        self.count_unplaced();
        if left == 0 {
            tracing::info!(
                channels = self.wanted.len(),
                "sharded pub/sub subscriptions restored"
            );
            self.backoff = RECONNECT_MIN;
            return None;
        }
        let at = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(RECONNECT_MAX);
        Some(at)
    }

    /// Subscribes `channel` on its slot's master; on MOVED or a dead link, re-reads the slot map once.
    async fn place(&mut self, channel: &str) -> Result<NodeAddr, BusError> {
        let slot = key_slot(channel.as_bytes());
        let mut last_error = None;
        for attempt in 0..2 {
            let Some(node) = self.map.master(slot).cloned() else {
                last_error = Some(BusError::Unavailable(format!("no node serves slot {slot}")));
                break;
            };
            match self.ssubscribe(&node, channel).await {
                Ok(()) => return Ok(node),
                Err(e) => {
                    tracing::debug!(%node, %channel, error = %e, "SSUBSCRIBE failed");
                    last_error = Some(e);
                    if attempt == 0 && self.endpoints.cluster {
                        let _ = self.refresh_map().await;
                    }
                }
            }
        }
        Err(last_error.unwrap_or_else(|| BusError::Unavailable("no node to subscribe on".into())))
    }

    async fn ssubscribe(&mut self, node: &NodeAddr, channel: &str) -> Result<(), BusError> {
        let mut conn = self.link(node).await?;
        let reply = tokio::time::timeout(
            RESPONSE_TIMEOUT,
            redis::cmd("SSUBSCRIBE")
                .arg(channel)
                .query_async::<Value>(&mut conn),
        )
        .await;
        match reply {
            Ok(Ok(Value::ServerError(e))) => Err(BusError::Unavailable(format!(
                "SSUBSCRIBE on {node}: {e:?}"
            ))),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                if !e.is_cluster_error() {
                    // The link is in doubt (closed, or a reply went astray): start over with a new one.
                    self.drop_link(node);
                }
                Err(e.into())
            }
            Err(_) => {
                self.drop_link(node);
                Err(BusError::Unavailable(format!(
                    "SSUBSCRIBE on {node} timed out"
                )))
            }
        }
    }

    async fn leave(&mut self, channel: &str) {
        let Some(Some(node)) = self.wanted.remove(channel) else {
            return;
        };
        let Some(link) = self.links.get_mut(&node) else {
            return;
        };
        link.leaving.insert(channel.to_owned());
        let mut conn = link.conn.clone();
        let sent = tokio::time::timeout(
            RESPONSE_TIMEOUT,
            redis::cmd("SUNSUBSCRIBE")
                .arg(channel)
                .query_async::<Value>(&mut conn),
        )
        .await;
        if !matches!(sent, Ok(Ok(_))) {
            tracing::warn!(%node, %channel, "SUNSUBSCRIBE failed; dropping the link");
            self.drop_link(&node);
        }
    }

    /// The link to `node`, connecting it if needed.
    async fn link(&mut self, node: &NodeAddr) -> Result<MultiplexedConnection, BusError> {
        if let Some(link) = self.links.get(node) {
            return Ok(link.conn.clone());
        }
        self.next_generation += 1;
        let generation = self.next_generation;
        let info = if self.endpoints.cluster {
            self.endpoints.node(&node.host, node.port)
        } else {
            self.endpoints.seeds[0].clone()
        };
        let redis_settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let client = Client::open(info.set_redis_settings(redis_settings))?;
        let push = NodePush {
            node: node.clone(),
            generation,
            hub: self.hub.clone(),
            control: self.control.clone(),
        };
        let conn = client
            .get_multiplexed_async_connection_with_config(
                &AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT))
                    .set_push_sender(push),
            )
            .await?;
        self.links.insert(
            node.clone(),
            Link {
                conn: conn.clone(),
                generation,
                leaving: HashSet::new(),
            },
        );
        Ok(conn)
    }

    /// Reads `CLUSTER SLOTS` from the first node that answers (one Redis: the seed serves every slot).
    async fn refresh_map(&mut self) -> Result<(), BusError> {
        if !self.endpoints.cluster {
            let addr = self.endpoints.seeds[0].addr();
            let (host, port) = match addr {
                redis::ConnectionAddr::Tcp(h, p)
                | redis::ConnectionAddr::TcpTls {
                    host: h, port: p, ..
                } => (h.clone(), *p),
                other => (other.to_string(), 0),
            };
            self.map = SlotMap::single(NodeAddr { host, port });
            return Ok(());
        }
        let mut candidates: Vec<redis::ConnectionInfo> = self
            .map
            .nodes
            .iter()
            .map(|n| self.endpoints.node(&n.host, n.port))
            .collect();
        candidates.extend(self.endpoints.seeds.iter().cloned());
        let mut last_error = BusError::Unavailable("no cluster node answered CLUSTER SLOTS".into());
        for info in candidates {
            match read_slots(info).await {
                Ok(map) => {
                    self.map = map;
                    return Ok(());
                }
                Err(e) => last_error = e,
            }
        }
        Err(last_error)
    }
}

async fn read_slots(info: redis::ConnectionInfo) -> Result<SlotMap, BusError> {
    let host = match info.addr() {
        redis::ConnectionAddr::Tcp(h, _) | redis::ConnectionAddr::TcpTls { host: h, .. } => {
            h.clone()
        }
        other => other.to_string(),
    };
    let client = Client::open(info)?;
    let mut conn = client
        .get_multiplexed_async_connection_with_config(
            &AsyncConnectionConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(CONNECT_TIMEOUT)),
        )
        .await?;
    let reply: Value = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(&mut conn)
        .await?;
    let map = SlotMap::parse(&reply, &host)
        .ok_or_else(|| BusError::Malformed("unexpected CLUSTER SLOTS reply".into()))?;
    if map.master(0).is_none() && map.nodes.is_empty() {
        return Err(BusError::Unavailable("the cluster serves no slot".into()));
    }
    Ok(map)
}

/// Receives a link's pushes: messages into the hub at once, everything that changes a subscription to
/// the actor.
struct NodePush {
    node: NodeAddr,
    generation: u64,
    hub: Arc<OnceLock<Hub>>,
    control: mpsc::UnboundedSender<Ctl>,
}

impl AsyncPushSender for NodePush {
    fn send(&self, info: PushInfo) -> Result<(), SendError> {
        fn text(v: Option<&Value>) -> Option<&[u8]> {
            match v {
                Some(Value::BulkString(b)) => Some(b.as_slice()),
                _ => None,
            }
        }
        let lost = |channel: Option<String>| Ctl::Lost {
            node: self.node.clone(),
            generation: self.generation,
            channel,
        };
        match info.kind {
            PushKind::SMessage => {
                if let (Some(channel), Some(payload), Some(hub)) = (
                    text(info.data.first()),
                    text(info.data.get(1)),
                    self.hub.get(),
                ) {
                    hub.deliver(
                        &String::from_utf8_lossy(channel),
                        Bytes::copy_from_slice(payload),
                    );
                }
            }
            PushKind::SUnsubscribe => {
                let channel =
                    text(info.data.first()).map(|c| String::from_utf8_lossy(c).into_owned());
                let _ = self.control.send(lost(channel));
            }
            PushKind::Disconnection => {
                let _ = self.control.send(lost(None));
            }
            _ => {}
        }
        Ok(())
    }
}
