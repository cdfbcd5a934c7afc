//! The bus on Redis: one Redis, or a Redis Cluster (`--redis-cluster`), with the same scripts and keys.
//!
//! - Keys (`keys.rs`): every key and live channel of an execution, a session or a user shares one hash
//!   tag, so each entity lives in one slot; each Lua script (`scripts.rs`, `../lua/`) touches one slot.
//! - Jobs (`jobs.rs`): scheduled fairly between users by scripts on the `{jobs}` slot; idle workers
//!   block on a wake-up list on a connection of their own.
//! - Executions (`executions.rs`): a state hash moved through `pending -> queued -> running -> done` (or
//!   `cancelled`/`lost`) by scripts; events appended to a capped per-execution stream (entry id `<seq>-0`,
//!   what `resume` replays) and published on the execution's sharded channel by the same script; the
//!   per-slot steps of an enqueue and what a crash between them leaves; failover handling.
//! - Sessions (`sessions.rs`): one script per change, numbered by the session's counter.
//! - Live feed: sharded pub/sub with our own placement and resubscription (`sharded.rs`); the node-wide
//!   channels (cancel, notices) on classic pub/sub (`classic.rs`); both shared by every local subscriber
//!   through the [`Hub`].

mod classic;
mod conn;
mod executions;
mod jobs;
mod replicas;
mod replies;
mod scripts;
mod sessions;
mod sharded;
mod slots;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use redis::streams::StreamRangeReply;
use tokio::sync::Mutex as AsyncMutex;

use super::hub::{ChannelKind, Hub, Subscription};
use super::{
    topic_fanout, Bus, BusError, BusEvent, BusSettings, CancelOutcome, Delivery, ExecutionInfo,
    Followers, Job, JoinOutcome, JoinRequest, QueueStats, TakeOver, Taker, Topic, UpdateOutcome,
};
use crate::keys::Keys;
use classic::{RedisUpstream, SharedSink};
use conn::{Conn, Endpoints};
use replies::{event_of_entry, seq_of_entry};
use scripts::Scripts;
use sharded::Sharded;

pub struct RedisBus {
    endpoints: Endpoints,
    settings: BusSettings,
    keys: Keys,
    conn: Conn,
    /// A connection of its own for the idle workers' `BLPOP`, which would stall a shared multiplexed
    /// connection.
    blocking: AsyncMutex<Option<Conn>>,
    hub: Hub,
    /// The classic pub/sub sink, None while reconnecting (readiness looks at it).
    pubsub: SharedSink,
    sharded: Sharded,
    scripts: Scripts,
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
            scripts: Scripts::load(),
        };
        tracing::info!(mode = %bus.endpoints.describe(), "bus: Redis ready");
        Ok(Arc::new(bus))
    }
}

#[async_trait]
impl Bus for RedisBus {
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

    async fn enqueue(&self, job: &Job, max_per_user: usize) -> Result<bool, BusError> {
        self.enqueue_steps(job, max_per_user).await
    }

    async fn claim_idempotency(
        &self,
        user: &str,
        client_id: &str,
        execution_id: &str,
    ) -> Result<Option<String>, BusError> {
        let key = self.keys.idempotency(user, client_id);
        let mut conn = self.conn.clone();
        // SET NX GET: atomically claims the id, or returns what claimed it first.
        let previous: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(execution_id)
            .arg("NX")
            .arg("GET")
            .arg("EX")
            .arg(self.settings.idempotency_ttl.as_secs())
            .query_async(&mut conn)
            .await?;
        Ok(previous)
    }

    async fn release_idempotency(&self, user: &str, client_id: &str) -> Result<(), BusError> {
        let mut conn = self.conn.clone();
        let _: i64 = redis::cmd("DEL")
            .arg(self.keys.idempotency(user, client_id))
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    async fn execution_info(&self, execution_id: &str) -> Result<Option<ExecutionInfo>, BusError> {
        let mut conn = self.conn.clone();
        type Fields = (
            Option<String>,
            Option<String>,
            Option<String>,
            Option<u64>,
            Option<u64>,
        );
        let (state, owner, session, seq, trimmed): Fields = redis::cmd("HMGET")
            .arg(self.keys.execution(execution_id))
            .arg("state")
            .arg("owner")
            .arg("session")
            .arg("seq")
            .arg("trimmed")
            .query_async(&mut conn)
            .await?;
        Ok(state.map(|state| ExecutionInfo {
            owner: owner.unwrap_or_default(),
            state,
            session_id: session.filter(|s| !s.is_empty()),
            seq: seq.unwrap_or(0),
            trimmed: trimmed.unwrap_or(0),
        }))
    }

    async fn cancel(&self, execution_id: &str) -> Result<CancelOutcome, BusError> {
        let found = self.cancel_state(execution_id).await?;
        Ok(match found.as_str() {
            "missing" => CancelOutcome::NotFound,
            "queued" => CancelOutcome::WasQueued,
            "running" => {
                // A separate step (the cancel channel is node-wide, not the execution's slot): if this
                // is lost, the query runs to its end, and its client still gets a terminal event.
                let mut conn = self.conn.clone();
                let _: i64 = redis::cmd("PUBLISH")
                    .arg(self.keys.cancel_channel())
                    .arg(execution_id)
                    .query_async(&mut conn)
                    .await?;
                CancelOutcome::Running
            }
            _ => CancelOutcome::Finished,
        })
    }

    async fn read_events(
        &self,
        topic: &Topic,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<BusEvent>, BusError> {
        let mut conn = self.conn.clone();
        let reply: StreamRangeReply = redis::cmd("XRANGE")
            .arg(self.keys.topic_events(topic))
            .arg(format!("{}-0", after_seq + 1))
            .arg("+")
            .arg("COUNT")
            .arg(limit.max(1))
            .query_async(&mut conn)
            .await?;
        reply.ids.iter().map(event_of_entry).collect()
    }

    async fn subscribe(&self, topic: &Topic) -> Result<Subscription, BusError> {
        self.hub
            .subscribe_bounded(
                &self.keys.topic_channel(topic),
                ChannelKind::Sharded,
                topic_fanout(topic, &self.settings),
            )
            .await
    }

    async fn next_job(
        &self,
        taker: &Taker<'_>,
        block: Duration,
    ) -> Result<Option<Delivery>, BusError> {
        RedisBus::next_job(self, taker, block).await
    }

    async fn queue_position(&self, execution_id: &str) -> Result<Option<u64>, BusError> {
        RedisBus::queue_position(self, execution_id).await
    }

    async fn queue_stats(&self) -> Result<Option<QueueStats>, BusError> {
        RedisBus::queue_stats(self).await
    }

    async fn open_connection(
        &self,
        user: &str,
        socket: &str,
        max: usize,
        lease: Duration,
    ) -> Result<bool, BusError> {
        let mut conn = self.conn.clone();
        let open: i64 = self
            .scripts
            .conn_acquire
            .key(self.keys.user_connections(user))
            .arg(socket)
            .arg(max)
            .arg(lease.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        Ok(open == 1)
    }

    async fn close_connection(&self, user: &str, socket: &str) -> Result<(), BusError> {
        let mut conn = self.conn.clone();
        let _: i64 = redis::cmd("ZREM")
            .arg(self.keys.user_connections(user))
            .arg(socket)
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    async fn ack_job(&self, delivery: &Delivery) -> Result<(), BusError> {
        RedisBus::ack_job(self, delivery).await
    }

    async fn try_start(&self, execution_id: &str, worker_id: &str) -> Result<bool, BusError> {
        let mut conn = self.conn.clone();
        let started: i64 = self
            .scripts
            .try_start
            .key(self.keys.execution(execution_id))
            .arg(worker_id)
            .arg(self.settings.enqueue_grace.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        Ok(started == 1)
    }

    async fn reclaim_jobs(
        &self,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<Delivery>, BusError> {
        RedisBus::reclaim_jobs(self, consumer, min_idle, count).await
    }

    async fn queue_depth(&self) -> Result<Option<u64>, BusError> {
        RedisBus::queue_depth(self).await
    }

    async fn keep_alive_jobs(
        &self,
        consumer: &str,
        delivery_ids: &[String],
    ) -> Result<(), BusError> {
        RedisBus::keep_alive_jobs(self, consumer, delivery_ids).await
    }

    async fn take_over(&self, execution_id: &str, worker_id: &str) -> Result<TakeOver, BusError> {
        let mut conn = self.conn.clone();
        let previous: String = self
            .scripts
            .take_over
            .key(self.keys.execution(execution_id))
            .arg(worker_id)
            .invoke_async(&mut conn)
            .await?;
        Ok(match previous.as_str() {
            "queued" => TakeOver::Start,
            "running" => TakeOver::Lost,
            _ => TakeOver::Finished,
        })
    }

    async fn last_seq(&self, topic: &Topic) -> Result<u64, BusError> {
        let mut conn = self.conn.clone();
        if let Topic::Execution(id) = topic {
            // The execution's own record of its last seq (its log may have lost entries in a failover).
            let seq: Option<u64> = redis::cmd("HGET")
                .arg(self.keys.execution(id))
                .arg("seq")
                .query_async(&mut conn)
                .await?;
            return Ok(seq.unwrap_or(0));
        }
        let reply: StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(self.keys.topic_events(topic))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut conn)
            .await?;
        Ok(reply
            .ids
            .first()
            .and_then(|e| seq_of_entry(&e.id))
            .unwrap_or(0))
    }

    async fn publish_event(&self, execution_id: &str, event: &BusEvent) -> Result<(), BusError> {
        self.publish(execution_id, event).await
    }

    async fn end_if_orphaned(&self, execution_id: &str) -> Result<bool, BusError> {
        self.end_orphaned(execution_id).await
    }

    async fn cancel_requests(&self) -> Result<Subscription, BusError> {
        self.hub
            .subscribe(&self.keys.cancel_channel(), ChannelKind::Classic)
            .await
    }

    async fn follower_position(
        &self,
        execution_id: &str,
        reader: &str,
        taken: u64,
        live_for: Duration,
    ) -> Result<(), BusError> {
        self.record_follower(execution_id, reader, taken, live_for)
            .await
    }

    async fn followers(&self, execution_id: &str, trim_up_to: u64) -> Result<Followers, BusError> {
        self.read_followers(execution_id, trim_up_to).await
    }

    async fn session_join(&self, r: JoinRequest<'_>) -> Result<JoinOutcome, BusError> {
        self.join(r).await
    }

    async fn session_leave(
        &self,
        session_id: &str,
        participant_id: &str,
        node_id: &str,
        left_frame: &str,
    ) -> Result<Option<u64>, BusError> {
        self.leave(session_id, participant_id, node_id, left_frame)
            .await
    }

    async fn session_update_query(
        &self,
        session_id: &str,
        author_id: &str,
        text: &str,
        base_version: Option<u64>,
        frame: &str,
    ) -> Result<UpdateOutcome, BusError> {
        self.update_query(session_id, author_id, text, base_version, frame)
            .await
    }

    async fn session_cursor(
        &self,
        session_id: &str,
        participant_id: &str,
        cursor: &str,
        frame: &str,
    ) -> Result<u64, BusError> {
        self.cursor(session_id, participant_id, cursor, frame).await
    }

    async fn session_chat(
        &self,
        session_id: &str,
        message_id: &str,
        entry: &str,
        frame: &str,
    ) -> Result<Option<u64>, BusError> {
        self.chat(session_id, message_id, entry, frame).await
    }

    async fn session_append(&self, session_id: &str, frame: &str) -> Result<u64, BusError> {
        self.append(session_id, frame).await
    }

    async fn publish_notice(&self, frame: &str) -> Result<(), BusError> {
        let mut conn = self.conn.clone();
        let _: i64 = redis::cmd("PUBLISH")
            .arg(self.keys.notices())
            .arg(frame)
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    async fn notices(&self) -> Result<Subscription, BusError> {
        self.hub
            .subscribe(&self.keys.notices(), ChannelKind::Classic)
            .await
    }

    /// Scored by the Redis server's clock (`node_beat.lua`): the nodes' clocks may disagree.
    async fn node_heartbeat(&self, node_id: &str) -> Result<(), BusError> {
        let mut conn = self.conn.clone();
        let _: i64 = self
            .scripts
            .node_beat
            .key(self.keys.nodes())
            .arg(node_id)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    async fn dead_nodes(&self, ttl: Duration) -> Result<Vec<String>, BusError> {
        let mut conn = self.conn.clone();
        Ok(self
            .scripts
            .nodes_dead
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
        let mut conn = self.conn.clone();
        let _: i64 = redis::cmd("DEL")
            .arg(self.keys.node_participants(node_id))
            .query_async(&mut conn)
            .await?;
        let _: i64 = redis::cmd("ZREM")
            .arg(self.keys.nodes())
            .arg(node_id)
            .query_async(&mut conn)
            .await?;
        Ok(())
    }
}
