//! The bus on Redis.
//!
//! - Jobs: a stream (`<prefix>:jobs`) read by the consumer group `workers`, so a job enqueued while no
//!   worker listens waits for one; acknowledged (and deleted) once its terminal event is published.
//! - Execution state: a hash moved through `queued -> running -> done` (or `cancelled`) by Lua scripts, so
//!   a cancel and a worker's start can never both win.
//! - Events: appended to a capped per-execution stream with a TTL (entry id `<seq>-0`, what `resume`
//!   replays) and published on a per-execution channel, in one MULTI so the log and the live feed agree.
//! - Live feed: one pub/sub connection per process, shared by every subscriber through the [`Hub`];
//!   re-established with backoff when it drops, re-subscribing every channel still wanted.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use bytestring::ByteString;
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection, PubSubSink};
use redis::streams::{StreamAutoClaimReply, StreamRangeReply, StreamReadReply};
use redis::IntoConnectionInfo;
use redis::{AsyncConnectionConfig, Client, Script, Value};
use tokio::sync::Mutex as AsyncMutex;

use super::hub::{Hub, Subscription, Upstream};
use super::{
    Bus, BusError, BusEvent, BusSettings, CancelOutcome, Delivery, ExecutionInfo, Job, JoinOutcome,
    JoinRequest, SessionSnapshot, TakeOver, Topic, UpdateOutcome,
};
use crate::keys::{Keys, WORKER_GROUP};

/// How long one Redis command may take before it counts as failed (blocking reads excepted).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long connecting to Redis may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Backoff bounds for re-establishing connections.
const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(1);

const TRY_START: &str = r#"
if redis.call('HGET', KEYS[1], 'state') == 'queued' then
  redis.call('HSET', KEYS[1], 'state', 'running', 'worker', ARGV[1])
  return 1
end
return 0
"#;

/// KEYS: execution hash, user's running set, job stream. ARGV: owner, max per user, now ms, lease ms,
/// event TTL s, job JSON, session id ('' for none).
const ENQUEUE: &str = r#"
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[3])
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[2]) then return 0 end
local exec = string.match(KEYS[1], '[^:]+$')
redis.call('ZADD', KEYS[2], tonumber(ARGV[3]) + tonumber(ARGV[4]), exec)
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call('HSET', KEYS[1], 'state', 'queued', 'owner', ARGV[1], 'session', ARGV[7])
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('XADD', KEYS[3], '*', 'job', ARGV[6])
return 1
"#;

/// KEYS: execution hash. ARGV: key prefix. Frees the owner's slot of a finished execution.
const RELEASE_SLOT: &str = r#"
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner then
  redis.call('ZREM', ARGV[1] .. ':user:' .. owner .. ':running', string.match(KEYS[1], '[^:]+$'))
end
return 0
"#;

const TAKE_OVER: &str = r#"
local s = redis.call('HGET', KEYS[1], 'state')
if s == 'queued' or s == 'running' then
  redis.call('HSET', KEYS[1], 'state', 'running', 'worker', ARGV[1])
  return s
end
return s or 'missing'
"#;

const CANCEL: &str = r#"
local s = redis.call('HGET', KEYS[1], 'state')
if not s then return 'missing' end
if s == 'queued' then
  redis.call('HSET', KEYS[1], 'state', 'cancelled')
  return 'queued'
end
if s == 'running' then
  redis.call('HSET', KEYS[1], 'cancel', '1')
  redis.call('PUBLISH', KEYS[2], ARGV[1])
  return 'running'
end
return s
"#;

/// Shared by every session script: numbers a frame with the session's next seq, appends it to the log,
/// publishes it live and refreshes the session's TTL. ARGV[1] = key base, ARGV[2] = log cap, ARGV[3] = TTL.
const SESSION_APPEND_FN: &str = r#"
local base, maxlen, ttl = ARGV[1], ARGV[2], ARGV[3]
local function append(frame)
  local seq = redis.call('INCR', base .. ':seq')
  local full = string.sub(frame, 1, -2) .. ',"seq":' .. seq .. '}'
  redis.call('XADD', base .. ':events', 'MAXLEN', '~', maxlen, seq .. '-0', 't', '0', 'f', full)
  redis.call('PUBLISH', base .. ':live', seq .. ' 0 ' .. full)
  for _, k in ipairs({':seq', ':events', ':participants', ':query', ':cursors', ':chat'}) do
    redis.call('EXPIRE', base .. k, ttl)
  end
  return seq
end
"#;

/// ARGV[4] participant id, [5] participant JSON, [6] max participants, [7] joined frame,
/// [8] node participants key, [9] its member, [10] chat history size.
const SESSION_JOIN: &str = r#"
if redis.call('HLEN', base .. ':participants') >= tonumber(ARGV[6]) then return {0} end
redis.call('HSET', base .. ':participants', ARGV[4], ARGV[5])
redis.call('SADD', ARGV[8], ARGV[9])
local seq = append(ARGV[7])
local q = redis.call('HMGET', base .. ':query', 'text', 'version', 'author')
local chat = {}
if tonumber(ARGV[10]) > 0 then
  local recent = redis.call('XREVRANGE', base .. ':chat', '+', '-', 'COUNT', ARGV[10])
  for i = #recent, 1, -1 do table.insert(chat, recent[i][2][2]) end
end
return {1, seq, redis.call('HVALS', base .. ':participants'), q[1] or '', q[2] or '0', q[3] or '',
        redis.call('HGETALL', base .. ':cursors'), chat}
"#;

/// ARGV[4] participant id, [5] left frame, [6] node participants key, [7] its member.
const SESSION_LEAVE: &str = r#"
redis.call('SREM', ARGV[6], ARGV[7])
redis.call('HDEL', base .. ':cursors', ARGV[4])
if redis.call('HDEL', base .. ':participants', ARGV[4]) == 1 then return append(ARGV[5]) end
return 0
"#;

/// ARGV[4] text, [5] author, [6] base version or '', [7] frame with the version placeholder.
const SESSION_UPDATE_QUERY: &str = r#"
local current = tonumber(redis.call('HGET', base .. ':query', 'version') or '0')
if ARGV[6] ~= '' and tonumber(ARGV[6]) ~= current then
  return {0, current, redis.call('HGET', base .. ':query', 'text') or ''}
end
local version = current + 1
redis.call('HSET', base .. ':query', 'text', ARGV[4], 'version', version, 'author', ARGV[5])
local s, e = string.find(ARGV[7], '"version":-1', 1, true)
local frame = string.sub(ARGV[7], 1, s - 1) .. '"version":' .. version .. string.sub(ARGV[7], e + 1)
return {1, version, append(frame)}
"#;

/// ARGV[4] participant id, [5] cursor JSON, [6] frame.
const SESSION_CURSOR: &str = r#"
redis.call('HSET', base .. ':cursors', ARGV[4], ARGV[5])
return append(ARGV[6])
"#;

/// ARGV[4] message id, [5] entry JSON, [6] frame, [7] chat cap, [8] dedup TTL.
const SESSION_CHAT: &str = r#"
if not redis.call('SET', base .. ':chatid:' .. ARGV[4], '1', 'NX', 'EX', ARGV[8]) then return 0 end
redis.call('XADD', base .. ':chat', 'MAXLEN', '~', ARGV[7], '*', 'm', ARGV[5])
return append(ARGV[6])
"#;

/// ARGV[4] frame.
const SESSION_APPEND: &str = r#"
return append(ARGV[4])
"#;

fn session_script(body: &str) -> Script {
    Script::new(&format!("{SESSION_APPEND_FN}{body}"))
}

struct SessionScripts {
    join: Script,
    leave: Script,
    update_query: Script,
    cursor: Script,
    chat: Script,
    append: Script,
}

pub struct RedisBus {
    client: Client,
    settings: BusSettings,
    keys: Keys,
    conn: ConnectionManager,
    /// A connection of its own for `XREADGROUP BLOCK`, which would stall a shared multiplexed connection.
    blocking: AsyncMutex<Option<MultiplexedConnection>>,
    hub: Hub,
    /// The pub/sub sink, None while reconnecting (readiness looks at it).
    pubsub: Arc<AsyncMutex<Option<PubSubSink>>>,
    enqueue: Script,
    release_slot: Script,
    try_start: Script,
    take_over: Script,
    cancel: Script,
    session: SessionScripts,
}

/// The hub's upstream: the sink half of the current pub/sub connection (None while reconnecting).
struct RedisUpstream {
    sink: Arc<AsyncMutex<Option<PubSubSink>>>,
}

#[async_trait]
impl Upstream for RedisUpstream {
    async fn subscribe(&mut self, channel: &str) -> Result<(), BusError> {
        match self.sink.lock().await.as_mut() {
            Some(sink) => Ok(sink.subscribe(channel).await?),
            None => Err(BusError::Unavailable(
                "redis pub/sub connection is down (reconnecting)".into(),
            )),
        }
    }

    async fn unsubscribe(&mut self, channel: &str) -> Result<(), BusError> {
        if let Some(sink) = self.sink.lock().await.as_mut() {
            sink.unsubscribe(channel).await?;
        }
        Ok(())
    }
}

impl RedisBus {
    /// Connects (command connection and pub/sub) and makes sure the worker group exists.
    pub async fn connect(url: &str, settings: BusSettings) -> Result<Arc<RedisBus>, BusError> {
        // TCP_NODELAY: events are many small writes; with Nagle on, one can wait for Redis's delayed
        // ACK of the previous one.
        let info = url
            .into_connection_info()?
            .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        let client = Client::open(info)?;
        let conn = client
            .get_connection_manager_with_config(
                // Fail fast while Redis is down (callers answer `unavailable` and retry themselves);
                // the default schedule made every command wait ~9 s before failing.
                ConnectionManagerConfig::new()
                    .set_response_timeout(Some(RESPONSE_TIMEOUT))
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_number_of_retries(1)
                    .set_min_delay(RECONNECT_MIN)
                    .set_max_delay(RECONNECT_MAX),
            )
            .await?;
        let keys = Keys::new(settings.key_prefix.clone());

        let sink = Arc::new(AsyncMutex::new(None));
        let (first_sink, first_stream) = client.get_async_pubsub().await?.split();
        *sink.lock().await = Some(first_sink);
        let hub = Hub::new(
            RedisUpstream { sink: sink.clone() },
            settings.fanout_capacity,
        );
        tokio::spawn(pubsub_reader(
            client.clone(),
            hub.clone(),
            sink.clone(),
            first_stream,
        ));

        let bus = RedisBus {
            client,
            settings,
            keys,
            conn,
            blocking: AsyncMutex::new(None),
            hub,
            pubsub: sink,
            enqueue: Script::new(ENQUEUE),
            release_slot: Script::new(RELEASE_SLOT),
            try_start: Script::new(TRY_START),
            take_over: Script::new(TAKE_OVER),
            cancel: Script::new(CANCEL),
            session: SessionScripts {
                join: session_script(SESSION_JOIN),
                leave: session_script(SESSION_LEAVE),
                update_query: session_script(SESSION_UPDATE_QUERY),
                cursor: session_script(SESSION_CURSOR),
                chat: session_script(SESSION_CHAT),
                append: session_script(SESSION_APPEND),
            },
        };
        bus.ensure_group().await?;
        Ok(Arc::new(bus))
    }

    async fn ensure_group(&self) -> Result<(), BusError> {
        let mut conn = self.conn.clone();
        // Start at 0, not $: jobs enqueued before the first worker ever started must still run.
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(self.keys.jobs())
            .arg(WORKER_GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        match created {
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            other => Ok(other?),
        }
    }

    /// Starts a session script invocation with the common ARGV (base, log cap, TTL).
    fn session_call<'a>(
        &self,
        script: &'a Script,
        session_id: &str,
    ) -> redis::ScriptInvocation<'a> {
        let mut call = script.prepare_invoke();
        call.arg(self.keys.session(session_id))
            .arg(self.settings.session_event_max_len)
            .arg(self.settings.session_ttl.as_secs());
        call
    }

    fn node_member(session_id: &str, participant_id: &str) -> String {
        format!("{session_id}\t{participant_id}")
    }

    async fn blocking_conn(&self) -> Result<MultiplexedConnection, BusError> {
        let mut slot = self.blocking.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = self
            .client
            .get_multiplexed_async_connection_with_config(
                &AsyncConnectionConfig::new()
                    .set_response_timeout(None)
                    .set_connection_timeout(Some(CONNECT_TIMEOUT)),
            )
            .await?;
        *slot = Some(c.clone());
        Ok(c)
    }
}

/// Reads the pub/sub stream into the hub; when the connection drops, reconnects with backoff and
/// re-subscribes every channel the hub still has subscribers for.
async fn pubsub_reader(
    client: Client,
    hub: Hub,
    sink: Arc<AsyncMutex<Option<PubSubSink>>>,
    mut stream: redis::aio::PubSubStream,
) {
    loop {
        while let Some(msg) = stream.next().await {
            hub.deliver(
                msg.get_channel_name(),
                Bytes::copy_from_slice(msg.get_payload_bytes()),
            );
        }
        *sink.lock().await = None;
        tracing::warn!("redis pub/sub connection lost; reconnecting");
        let mut delay = RECONNECT_MIN;
        stream = loop {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(RECONNECT_MAX);
            let Ok(pubsub) = client.get_async_pubsub().await else {
                continue;
            };
            let (mut new_sink, new_stream) = pubsub.split();
            let channels = hub.channels();
            if !channels.is_empty() && new_sink.subscribe(&channels).await.is_err() {
                continue;
            }
            *sink.lock().await = Some(new_sink);
            tracing::info!(channels = channels.len(), "redis pub/sub reconnected");
            break new_stream;
        };
    }
}

/// The `seq` of an event log entry: its stream id is `<seq>-0`.
fn seq_of_entry(id: &str) -> Option<u64> {
    id.split('-').next()?.parse().ok()
}

fn field_bytes<'a>(
    map: &'a std::collections::HashMap<String, Value>,
    name: &str,
) -> Option<&'a [u8]> {
    match map.get(name) {
        Some(Value::BulkString(b)) => Some(b.as_slice()),
        Some(Value::SimpleString(s)) => Some(s.as_bytes()),
        _ => None,
    }
}

#[async_trait]
impl Bus for RedisBus {
    /// Ready when commands answer and the live (pub/sub) link is up.
    async fn ping(&self) -> Result<(), BusError> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        if self.pubsub.lock().await.is_none() {
            return Err(BusError::Unavailable(
                "redis pub/sub connection is down (reconnecting)".into(),
            ));
        }
        Ok(())
    }

    async fn enqueue(&self, job: &Job, max_per_user: usize) -> Result<bool, BusError> {
        let body = serde_json::to_string(job).map_err(|e| BusError::Malformed(e.to_string()))?;
        let mut conn = self.conn.clone();
        let accepted: i64 = self
            .enqueue
            .key(self.keys.execution(&job.execution_id))
            .key(self.keys.user_running(&job.owner))
            .key(self.keys.jobs())
            .arg(&job.owner)
            .arg(max_per_user)
            .arg(crate::now_ms())
            .arg(self.settings.user_lease.as_millis() as u64)
            .arg(self.settings.event_ttl.as_secs())
            .arg(body)
            .arg(job.session_id.as_deref().unwrap_or_default())
            .invoke_async(&mut conn)
            .await?;
        Ok(accepted == 1)
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
        let (state, owner, session): (Option<String>, Option<String>, Option<String>) =
            redis::cmd("HMGET")
                .arg(self.keys.execution(execution_id))
                .arg("state")
                .arg("owner")
                .arg("session")
                .query_async(&mut conn)
                .await?;
        Ok(state.map(|state| ExecutionInfo {
            owner: owner.unwrap_or_default(),
            state,
            session_id: session.filter(|s| !s.is_empty()),
        }))
    }

    async fn cancel(&self, execution_id: &str) -> Result<CancelOutcome, BusError> {
        let mut conn = self.conn.clone();
        let found: String = self
            .cancel
            .key(self.keys.execution(execution_id))
            .key(self.keys.cancel_channel())
            .arg(execution_id)
            .invoke_async(&mut conn)
            .await?;
        Ok(match found.as_str() {
            "missing" => CancelOutcome::NotFound,
            "queued" => CancelOutcome::WasQueued,
            "running" => CancelOutcome::Running,
            _ => CancelOutcome::Finished,
        })
    }

    async fn read_events(
        &self,
        topic: &Topic,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<BusEvent>, BusError> {
        let key = self.keys.topic_events(topic);
        let mut conn = self.conn.clone();
        let reply: StreamRangeReply = redis::cmd("XRANGE")
            .arg(key)
            .arg(format!("{}-0", after_seq + 1))
            .arg("+")
            .arg("COUNT")
            .arg(limit.max(1))
            .query_async(&mut conn)
            .await?;
        reply
            .ids
            .into_iter()
            .map(|entry| {
                let seq = seq_of_entry(&entry.id)
                    .ok_or_else(|| BusError::Malformed(format!("event id {}", entry.id)))?;
                let terminal = field_bytes(&entry.map, "t") == Some(b"1");
                let frame = field_bytes(&entry.map, "f").ok_or_else(|| {
                    BusError::Malformed(format!("event {} has no frame", entry.id))
                })?;
                let frame = ByteString::try_from(Bytes::copy_from_slice(frame))
                    .map_err(|e| BusError::Malformed(e.to_string()))?;
                Ok(BusEvent {
                    seq,
                    terminal,
                    frame,
                })
            })
            .collect()
    }

    async fn subscribe(&self, topic: &Topic) -> Result<Subscription, BusError> {
        self.hub.subscribe(&self.keys.topic_channel(topic)).await
    }

    async fn next_job(
        &self,
        consumer: &str,
        block: Duration,
    ) -> Result<Option<Delivery>, BusError> {
        let mut conn = self.blocking_conn().await?;
        let read: redis::RedisResult<Option<StreamReadReply>> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(WORKER_GROUP)
            .arg(consumer)
            .arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(block.as_millis() as u64)
            .arg("STREAMS")
            .arg(self.keys.jobs())
            .arg(">")
            .query_async(&mut conn)
            .await;
        let reply = match read {
            Ok(r) => r,
            Err(e) => {
                // Drop the connection so the next call makes a fresh one; recreate the group if Redis lost it.
                *self.blocking.lock().await = None;
                if e.code() == Some("NOGROUP") {
                    self.ensure_group().await?;
                }
                return Err(e.into());
            }
        };
        let Some(entry) = reply
            .and_then(|r| r.keys.into_iter().next())
            .and_then(|k| k.ids.into_iter().next())
        else {
            return Ok(None);
        };
        let job = field_bytes(&entry.map, "job")
            .ok_or_else(|| BusError::Malformed("job entry without `job` field".into()))
            .and_then(|b| {
                serde_json::from_slice::<Job>(b).map_err(|e| BusError::Malformed(e.to_string()))
            });
        match job {
            Ok(job) => Ok(Some(Delivery {
                delivery_id: entry.id,
                job,
            })),
            Err(e) => {
                // A job nobody can read would be redelivered forever: drop it, loudly.
                tracing::error!(id = %entry.id, error = %e, "dropping malformed job");
                self.ack_job(&Delivery {
                    delivery_id: entry.id,
                    job: Job::default(),
                })
                .await?;
                Ok(None)
            }
        }
    }

    async fn ack_job(&self, delivery: &Delivery) -> Result<(), BusError> {
        let mut conn = self.conn.clone();
        redis::pipe()
            .cmd("XACK")
            .arg(self.keys.jobs())
            .arg(WORKER_GROUP)
            .arg(&delivery.delivery_id)
            .ignore()
            .cmd("XDEL")
            .arg(self.keys.jobs())
            .arg(&delivery.delivery_id)
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    async fn reclaim_jobs(
        &self,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<Delivery>, BusError> {
        let mut conn = self.conn.clone();
        let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(self.keys.jobs())
            .arg(WORKER_GROUP)
            .arg(consumer)
            .arg(min_idle.as_millis() as u64)
            .arg("0-0")
            .arg("COUNT")
            .arg(count.max(1))
            .query_async(&mut conn)
            .await?;
        let mut jobs = Vec::new();
        for entry in reply.claimed {
            let job =
                field_bytes(&entry.map, "job").and_then(|b| serde_json::from_slice::<Job>(b).ok());
            match job {
                Some(job) => jobs.push(Delivery {
                    delivery_id: entry.id,
                    job,
                }),
                None => tracing::error!(id = %entry.id, "reclaimed a malformed job; left pending"),
            }
        }
        Ok(jobs)
    }

    async fn queue_depth(&self) -> Result<Option<u64>, BusError> {
        let mut conn = self.conn.clone();
        let depth: u64 = redis::cmd("XLEN")
            .arg(self.keys.jobs())
            .query_async(&mut conn)
            .await?;
        Ok(Some(depth))
    }

    async fn keep_alive_jobs(
        &self,
        consumer: &str,
        delivery_ids: &[String],
    ) -> Result<(), BusError> {
        if delivery_ids.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let _: Value = redis::cmd("XCLAIM")
            .arg(self.keys.jobs())
            .arg(WORKER_GROUP)
            .arg(consumer)
            .arg(0)
            .arg(delivery_ids)
            .arg("JUSTID")
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    async fn take_over(&self, execution_id: &str, worker_id: &str) -> Result<TakeOver, BusError> {
        let mut conn = self.conn.clone();
        let previous: String = self
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
        let key = self.keys.topic_events(topic);
        let mut conn = self.conn.clone();
        let reply: StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(key)
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

    async fn try_start(&self, execution_id: &str, worker_id: &str) -> Result<bool, BusError> {
        let mut conn = self.conn.clone();
        let started: i64 = self
            .try_start
            .key(self.keys.execution(execution_id))
            .arg(worker_id)
            .invoke_async(&mut conn)
            .await?;
        Ok(started == 1)
    }

    async fn publish_event(&self, execution_id: &str, event: &BusEvent) -> Result<(), BusError> {
        let events_key = self.keys.execution_events(execution_id);
        let ttl = self.settings.event_ttl.as_secs();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("XADD")
            .arg(&events_key)
            .arg("MAXLEN")
            .arg("~")
            .arg(self.settings.event_stream_max_len)
            .arg(format!("{}-0", event.seq))
            .arg("t")
            .arg(u8::from(event.terminal))
            .arg("f")
            .arg(&*event.frame)
            .ignore()
            .cmd("EXPIRE")
            .arg(&events_key)
            .arg(ttl)
            .ignore()
            .cmd("PUBLISH")
            .arg(self.keys.execution_channel(execution_id))
            .arg(event.encode())
            .ignore();
        if event.terminal {
            let exec_key = self.keys.execution(execution_id);
            pipe.cmd("HSET")
                .arg(&exec_key)
                .arg("state")
                .arg("done")
                .ignore()
                .cmd("EXPIRE")
                .arg(&exec_key)
                .arg(ttl)
                .ignore();
        }
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn).await?;
        if event.terminal {
            let _: i64 = self
                .release_slot
                .key(self.keys.execution(execution_id))
                .arg(self.keys.prefix())
                .invoke_async(&mut conn)
                .await?;
        }
        Ok(())
    }

    async fn cancel_requests(&self) -> Result<Subscription, BusError> {
        self.hub.subscribe(&self.keys.cancel_channel()).await
    }

    async fn session_join(&self, r: JoinRequest<'_>) -> Result<JoinOutcome, BusError> {
        let mut conn = self.conn.clone();
        let reply: Value = self
            .session_call(&self.session.join, r.session_id)
            .arg(r.participant_id)
            .arg(r.participant)
            .arg(r.max_participants)
            .arg(r.joined_frame)
            .arg(self.keys.node_participants(r.node_id))
            .arg(Self::node_member(r.session_id, r.participant_id))
            .arg(r.chat_history)
            .invoke_async(&mut conn)
            .await?;
        parse_join(reply)
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
            .session_call(&self.session.leave, session_id)
            .arg(participant_id)
            .arg(left_frame)
            .arg(self.keys.node_participants(node_id))
            .arg(Self::node_member(session_id, participant_id))
            .invoke_async(&mut conn)
            .await?;
        Ok((seq > 0).then_some(seq))
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
            .session_call(&self.session.update_query, session_id)
            .arg(text)
            .arg(author_id)
            .arg(base_version.map(|v| v.to_string()).unwrap_or_default())
            .arg(frame)
            .invoke_async(&mut conn)
            .await?;
        Ok(if applied == 1 {
            UpdateOutcome::Applied {
                version,
                seq: redis::from_redis_value(third)
                    .map_err(|e| BusError::Malformed(e.to_string()))?,
            }
        } else {
            UpdateOutcome::Conflict {
                version,
                text: redis::from_redis_value(third)
                    .map_err(|e| BusError::Malformed(e.to_string()))?,
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
        Ok(self
            .session_call(&self.session.cursor, session_id)
            .arg(participant_id)
            .arg(cursor)
            .arg(frame)
            .invoke_async(&mut conn)
            .await?)
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
            .session_call(&self.session.chat, session_id)
            .arg(message_id)
            .arg(entry)
            .arg(frame)
            .arg(self.settings.chat_max_len)
            .arg(self.settings.idempotency_ttl.as_secs())
            .invoke_async(&mut conn)
            .await?;
        Ok((seq > 0).then_some(seq))
    }

    async fn session_append(&self, session_id: &str, frame: &str) -> Result<u64, BusError> {
        let mut conn = self.conn.clone();
        Ok(self
            .session_call(&self.session.append, session_id)
            .arg(frame)
            .invoke_async(&mut conn)
            .await?)
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
        self.hub.subscribe(&self.keys.notices()).await
    }

    async fn node_heartbeat(&self, node_id: &str) -> Result<(), BusError> {
        let mut conn = self.conn.clone();
        let _: i64 = redis::cmd("ZADD")
            .arg(self.keys.nodes())
            .arg(crate::now_ms())
            .arg(node_id)
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    async fn dead_nodes(&self, ttl: Duration) -> Result<Vec<String>, BusError> {
        let mut conn = self.conn.clone();
        let cutoff = crate::now_ms() - ttl.as_millis() as i64;
        Ok(redis::cmd("ZRANGEBYSCORE")
            .arg(self.keys.nodes())
            .arg("-inf")
            .arg(cutoff)
            .query_async(&mut conn)
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

    async fn forget_node(&self, node_id: &str) -> Result<(), BusError> {
        let mut conn = self.conn.clone();
        redis::pipe()
            .cmd("DEL")
            .arg(self.keys.node_participants(node_id))
            .ignore()
            .cmd("ZREM")
            .arg(self.keys.nodes())
            .arg(node_id)
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }
}

/// Reads the join script's reply: `{0}` (full) or
/// `{1, seq, participants, text, version, author, cursors (flat pairs), chat}`.
fn parse_join(reply: Value) -> Result<JoinOutcome, BusError> {
    let bad = |what: &str| BusError::Malformed(format!("session join reply: {what}"));
    let Value::Array(items) = reply else {
        return Err(bad("not an array"));
    };
    let text = |v: &Value| -> Result<String, BusError> {
        redis::from_redis_value::<String>(v.clone()).map_err(|e| bad(&e.to_string()))
    };
    let number = |v: &Value| -> Result<u64, BusError> {
        redis::from_redis_value::<u64>(v.clone()).map_err(|e| bad(&e.to_string()))
    };
    let list = |v: &Value| -> Result<Vec<String>, BusError> {
        redis::from_redis_value::<Vec<String>>(v.clone()).map_err(|e| bad(&e.to_string()))
    };
    match items.first().map(number).transpose()? {
        Some(0) => return Ok(JoinOutcome::Full),
        Some(1) if items.len() == 8 => {}
        _ => return Err(bad("unexpected shape")),
    }
    let author = text(&items[5])?;
    let flat_cursors = list(&items[6])?;
    let cursors = flat_cursors
        .chunks(2)
        .filter_map(|pair| match pair {
            [id, cursor] => Some((id.clone(), cursor.clone())),
            _ => None,
        })
        .collect();
    Ok(JoinOutcome::Joined(SessionSnapshot {
        seq: number(&items[1])?,
        participants: list(&items[2])?,
        query_text: text(&items[3])?,
        query_version: number(&items[4])?,
        query_author: (!author.is_empty()).then_some(author),
        cursors,
        chat: list(&items[7])?,
    }))
}
