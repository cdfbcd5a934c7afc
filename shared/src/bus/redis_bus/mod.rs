//! The bus on Redis: one Redis, or a Redis Cluster (`--redis-cluster`), with the same scripts and keys.
//! This folder holds what every concern shares; each concern implements its trait for [`RedisBus`] in
//! its own `redis.rs`, beside its Lua scripts:
//!
//! - Keys (`keys.rs`): every key and live channel of an execution, a session or a user shares one hash
//!   tag, so each entity lives in one slot; each Lua script touches one slot (`scripts.rs` checks the
//!   rules every script keeps).
//! - Jobs (`../jobs/redis.rs`, `../jobs/scheduler.rs`): the enqueue's per-slot steps and what a crash
//!   between them leaves; scheduled fairly between users by scripts on the `{jobs}` slot; idle workers
//!   block on a wake-up list on a connection of their own.
//! - Events (`../events/redis.rs`): a state hash moved through `pending -> queued -> running -> done`
//!   (or `cancelled`/`lost`) by scripts; events appended to a capped per-execution stream (entry id
//!   `<seq>-0`, what `resume` replays) and published on the execution's sharded channel by the same
//!   script; failover handling.
//! - Sessions (`../sessions/redis.rs`): one script per change, numbered by the session's counter.
//! - Nodes (`../nodes/redis.rs`): heartbeats by the server's clock, the per-user socket leases.
//! - Shared here: the command connections (`conn.rs`), the `WAIT` for replicas after a write
//!   (`replicas.rs`), reply parsing (`replies.rs`), and the live feed: sharded pub/sub with our own
//!   placement and resubscription (`sharded.rs`, `slots.rs`); the node-wide channels (cancel, notices)
//!   on classic pub/sub (`classic.rs`); both shared by every local subscriber through the [`Hub`].
//!
//! Invariant: the fields below are set once by [`RedisBus::connect`]; the concerns only read them (the
//! blocking connection and the pub/sub sink are replaced after a failure, under their own locks).

mod classic;
pub(super) mod conn;
mod replicas;
pub(super) mod replies;
pub(super) mod scripts;
mod sharded;
mod slots;

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use tokio::sync::Mutex as AsyncMutex;

use super::hub::Hub;
use super::{BusCore, BusError, BusSettings};
use crate::keys::Keys;
use classic::{RedisUpstream, SharedSink};
use conn::{Conn, Endpoints};
use sharded::Sharded;

pub struct RedisBus {
    pub(super) endpoints: Endpoints,
    pub(super) settings: BusSettings,
    pub(super) keys: Keys,
    pub(super) conn: Conn,
    /// A connection of its own for the idle workers' `BLPOP`, which would stall a shared multiplexed
    /// connection.
    pub(super) blocking: AsyncMutex<Option<Conn>>,
    pub(super) hub: Hub,
    /// The classic pub/sub sink, None while reconnecting (readiness looks at it).
    pubsub: SharedSink,
    sharded: Sharded,
    replicas: replicas::Replicas,
}

impl RedisBus {
    /// Connects (commands, classic and sharded pub/sub). `url` is
    /// one Redis URL or, with `cluster`, a comma-separated list of seed nodes.
    pub async fn connect(
        url: &str,
        cluster: bool,
        settings: BusSettings,
    ) -> Result<Arc<RedisBus>, BusError> {
        let endpoints = Endpoints::parse(url, cluster)?;
        let keys = Keys::checked(settings.key_prefix.clone())
            .map_err(|e| BusError::Unavailable(e.to_string()))?;
        tracing::info!(mode = %endpoints.describe(), "bus: connecting to Redis");
        let conn = endpoints.commands().await?;
        let hub_cell = Arc::new(OnceLock::new());
        let sharded = Sharded::start(endpoints.clone(), hub_cell.clone()).await?;
        let (first_sink, first_stream) = classic::connect(&endpoints.seeds).await?;
        let sink: SharedSink = Arc::new(AsyncMutex::new(Some(first_sink)));
        let hub = Hub::new(
            RedisUpstream {
                sink: sink.clone(),
                sharded: sharded.clone(),
            },
            settings.fanout_capacity,
        );
        let _ = hub_cell.set(hub.clone());
        tokio::spawn(classic::reader(
            endpoints.seeds.clone(),
            hub.clone(),
            sink.clone(),
            first_stream,
        ));
        let replicas = replicas::Replicas::new(
            settings.wait_replicas,
            settings.wait_timeout,
            settings.wait_backoff,
        );
        let bus = RedisBus {
            replicas,
            endpoints,
            settings,
            keys,
            conn,
            blocking: AsyncMutex::new(None),
            hub,
            pubsub: sink,
            sharded,
        };
        tracing::info!(mode = %bus.endpoints.describe(), "bus: Redis ready");
        Ok(Arc::new(bus))
    }

    /// Runs one command whose integer reply (a count) is not needed.
    /// Subscribes `channel` on the sharded subscriber for good (it is placed again after any drop);
    /// what arrives on it is dropped (nobody publishes there).
    pub(in crate::bus) async fn hold_channel(&self, channel: &str) -> Result<(), BusError> {
        self.sharded.subscribe(channel).await
    }

    pub(super) async fn command(&self, cmd: &redis::Cmd) -> Result<(), BusError> {
        let mut conn = self.conn.clone();
        let _: i64 = cmd.query_async(&mut conn).await?;
        Ok(())
    }
}

#[async_trait]
impl BusCore for RedisBus {
    fn settings(&self) -> &BusSettings {
        &self.settings
    }

    /// Ready when commands answer and the classic pub/sub link is up (sharded channels being repaired
    /// are logged, not a readiness failure: their followers read the log meanwhile).
    async fn ping(&self) -> Result<(), BusError> {
        let mut conn = self.conn.clone();
        conn.ping_one().await?;
        if self.pubsub.lock().await.is_none() {
            return Err(BusError::Unavailable(
                "redis pub/sub connection is down (reconnecting)".into(),
            ));
        }
        let unplaced = self.sharded.unplaced();
        if unplaced > 0 {
            tracing::debug!(unplaced, "sharded channels being resubscribed");
        }
        Ok(())
    }
}
