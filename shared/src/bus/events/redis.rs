//! Event logs on Redis: an execution's state hash (its `seq`, `trimmed`, `owner`), its capped stream
//! of events (entry id `<seq>-0`, what `resume` replays), its sharded live channel and its followers'
//! positions share one hash tag, so each script below touches one slot. A session's log is read here
//! too (written by `sessions/redis.rs`). Notices go on a classic, node-wide channel.
//!
//! **Events** (`exec_append`, execution slot): each is written only right after the previous seq, so a
//! failover that lost events the worker had written is detected at the next write (`LOGLOST`): the worker
//! then ends the stream with an explicit `query_error` at the next seq (`force`), and readers that cross
//! the hole report the missing range instead of skipping it (`forward.rs`). A write whose reply was lost
//! is retried with the same bytes for up to `C2S_PUBLISH_RETRY_MS` (a failover takes a few seconds); the
//! script recognises one that had landed. With `C2S_REDIS_WAIT_REPLICAS` > 0 every write is followed by
//! `WAIT` in the same round trip: an event the worker moved past is on a replica, so a single master
//! failure loses at most the event in flight, which the retry writes again identically.
//!
//! **The end of an orphan** (`exec_orphaned`): an execution `pending` past the enqueue grace, or `queued`
//! with a job the queue no longer has (see the crash analysis in `jobs/redis.rs`), gets a terminal
//! `query_error` from the first follower that checks it, and its owner's slot back.

use std::time::Duration;

use async_trait::async_trait;
use redis::streams::StreamRangeReply;
use redis::{RedisError, Value};

use super::{topic_fanout, BusEvent, EventLog, ExecutionInfo, Followers, Topic};
use crate::bus::hub::{ChannelKind, Subscription};
use crate::bus::redis_bus::replies::{event_of_entry, seq_of_entry};
use crate::bus::redis_bus::scripts::lua;
use crate::bus::{BusError, RedisBus};
use crate::codes::QueryErrorCode;
use crate::protocol::{QueryError, QueryErrorDetail, ServerFrame, ServerMessage};

/// What an append found.
enum Appended {
    /// Written now (or found written by an earlier attempt). Carries the execution's owner.
    Yes(String),
    /// The log does not end at seq - 1: events were lost; carries the last seq it has.
    LogLost(u64),
}

#[async_trait]
impl EventLog for RedisBus {
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
        self.publish(execution_id, std::slice::from_ref(event))
            .await
    }

    async fn publish_events(
        &self,
        execution_id: &str,
        events: &[BusEvent],
    ) -> Result<(), BusError> {
        self.publish(execution_id, events).await
    }

    async fn end_if_orphaned(&self, execution_id: &str) -> Result<bool, BusError> {
        self.end_orphaned(execution_id).await
    }

    /// Records a follower's position (`exec_follower.lua`).
    async fn follower_position(
        &self,
        execution_id: &str,
        reader: &str,
        taken: u64,
        live_for: Duration,
    ) -> Result<(), BusError> {
        let mut conn = self.conn.clone();
        let _: i64 = lua!("exec_follower.lua")
            .key(self.keys.execution_followers(execution_id))
            .key(self.keys.execution(execution_id))
            .arg(reader)
            .arg(taken)
            .arg(live_for.as_millis() as u64)
            .arg(self.settings.event_ttl.as_secs())
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    /// The live followers and their lowest position, trimming the log below it (`exec_followers.lua`).
    async fn followers(&self, execution_id: &str, trim_up_to: u64) -> Result<Followers, BusError> {
        let mut conn = self.conn.clone();
        let (live, lowest): (i64, i64) = lua!("exec_followers.lua")
            .key(self.keys.execution_followers(execution_id))
            .key(self.keys.execution_events(execution_id))
            .key(self.keys.execution(execution_id))
            .arg(trim_up_to)
            .invoke_async(&mut conn)
            .await?;
        Ok(Followers {
            live: usize::try_from(live).unwrap_or(0),
            min_taken: u64::try_from(lowest).ok(),
        })
    }

    async fn publish_notice(&self, frame: &str) -> Result<(), BusError> {
        self.command(redis::cmd("PUBLISH").arg(self.keys.notices()).arg(frame))
            .await?;
        Ok(())
    }

    async fn notices(&self) -> Result<Subscription, BusError> {
        self.hub
            .subscribe(&self.keys.notices(), ChannelKind::Classic)
            .await
    }
}

impl RedisBus {
    /// Appends and publishes consecutive events (none: nothing to do) in one script call, retrying through a
    /// failover; ends the stream explicitly when the log lost events this writer had written. Frees the
    /// owner's slot after a terminal event.
    async fn publish(&self, execution_id: &str, events: &[BusEvent]) -> Result<(), BusError> {
        let (Some(first), Some(event)) = (events.first(), events.last()) else {
            return Ok(());
        };
        let deadline = tokio::time::Instant::now() + self.settings.publish_retry;
        let mut delay = Duration::from_millis(50);
        let appended = loop {
            match self.append_events(execution_id, events, false).await {
                Ok(a) => break a,
                Err(e) if retryable(&e) && tokio::time::Instant::now() + delay < deadline => {
                    tracing::debug!(%execution_id, seq = first.seq, error = %e, "publish failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_millis(500));
                }
                Err(e) => return Err(e.into()),
            }
        };
        let owner = match appended {
            Appended::Yes(owner) => owner,
            Appended::LogLost(last) => {
                return Err(self.end_lost_log(execution_id, first.seq, last).await)
            }
        };
        if event.terminal && !owner.is_empty() {
            self.release_lease(&owner, execution_id).await?;
        }
        Ok(())
    }

    /// One `exec_append.lua` call for consecutive `events` (at least one).
    async fn append_events(
        &self,
        execution_id: &str,
        events: &[BusEvent],
        force: bool,
    ) -> Result<Appended, RedisError> {
        let script = lua!("exec_append.lua");
        let mut evalsha = redis::cmd("EVALSHA");
        evalsha
            .arg(script.get_hash())
            .arg(4)
            .arg(self.keys.execution(execution_id))
            .arg(self.keys.execution_events(execution_id))
            .arg(self.keys.execution_channel(execution_id))
            .arg(self.keys.execution_followers(execution_id))
            .arg(events.first().map_or(0, |e| e.seq))
            .arg(self.settings.event_stream_max_len)
            .arg(self.settings.event_ttl.as_secs())
            .arg(u8::from(force))
            .arg(self.settings.finished_retention.as_secs().max(1));
        for event in events {
            evalsha.arg(u8::from(event.terminal)).arg(event.encode());
        }
        let state_key = self.keys.execution(execution_id);
        let reply = self
            .eval_and_wait::<(i64, String)>(script, evalsha, &state_key)
            .await;
        match reply {
            Ok(((_, owner), _)) => Ok(Appended::Yes(owner)),
            Err(BusError::Redis(e)) if e.code() == Some("LOGLOST") => Ok(Appended::LogLost(
                e.detail().and_then(|d| d.trim().parse().ok()).unwrap_or(0),
            )),
            Err(BusError::Redis(e)) => Err(e),
            Err(other) => Err(RedisError::from((
                redis::ErrorKind::Client,
                "publish",
                other.to_string(),
            ))),
        }
    }

    /// The log lost events `last+1 .. seq-1` (a failover): writes a terminal `query_error` at `seq` so
    /// that every follower ends explicitly, and returns the error that stops the writer.
    async fn end_lost_log(&self, execution_id: &str, seq: u64, last: u64) -> BusError {
        tracing::error!(%execution_id, seq, last, "events of the execution were lost in a Redis failover; ending its stream");
        let message = format!(
            "events {}..{} of this execution were lost in a Redis failover; the result is incomplete: \
             run the query again",
            last + 1,
            seq - 1
        );
        let frame = ServerFrame {
            message: lost_error(execution_id, message),
            seq: Some(seq),
            traceparent: None,
        };
        let end = BusEvent {
            seq,
            terminal: true,
            frame: frame.to_text().into(),
        };
        if let Err(e) = self
            .append_events(execution_id, std::slice::from_ref(&end), true)
            .await
        {
            tracing::error!(%execution_id, error = %e, "could not end the stream of a lost execution");
        }
        BusError::Unavailable(format!(
            "execution {execution_id}: events {}..{} lost in a Redis failover",
            last + 1,
            seq - 1
        ))
    }

    /// Ends an execution whose job will never run (see the module doc); true if it did.
    async fn end_orphaned(&self, execution_id: &str) -> Result<bool, BusError> {
        let mut conn = self.conn.clone();
        let state_key = self.keys.execution(execution_id);
        let (state, job): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(&state_key)
            .arg("state")
            .arg("job")
            .query_async(&mut conn)
            .await?;
        let job_missing = match (state.as_deref(), job) {
            (Some("pending"), _) => false,
            (Some("queued"), Some(job_id)) => {
                let found: Vec<Value> = redis::cmd("XRANGE")
                    .arg(self.keys.jobs())
                    .arg(&job_id)
                    .arg(&job_id)
                    .query_async(&mut conn)
                    .await?;
                found.is_empty()
            }
            _ => return Ok(false),
        };
        let message = if job_missing {
            "the job of this execution was lost (a Redis failover or restart) before a worker took it: \
             run the query again"
        } else {
            "this execution was never fully enqueued (a gateway failed while accepting it): run the \
             query again"
        };
        let frame = ServerFrame::new(lost_error(execution_id, message.into())).to_text();
        let seq: i64 = lua!("exec_orphaned.lua")
            .key(&state_key)
            .key(self.keys.execution_events(execution_id))
            .key(self.keys.execution_channel(execution_id))
            .arg(frame)
            .arg(self.settings.enqueue_grace.as_millis() as u64)
            .arg(u8::from(job_missing))
            .arg(self.settings.event_stream_max_len)
            .arg(self.settings.event_ttl.as_secs())
            .invoke_async(&mut conn)
            .await?;
        if seq > 0 {
            tracing::warn!(%execution_id, job_missing, "ended an execution whose job will never run");
            let owner: Option<String> = redis::cmd("HGET")
                .arg(&state_key)
                .arg("owner")
                .query_async(&mut conn)
                .await?;
            if let Some(owner) = owner {
                self.release_lease(&owner, execution_id).await?;
            }
        }
        Ok(seq > 0)
    }
}

fn lost_error(execution_id: &str, message: String) -> ServerMessage {
    ServerMessage::QueryError(QueryError {
        execution_id: execution_id.to_owned(),
        timestamp: crate::now_ms(),
        error: QueryErrorDetail {
            code: QueryErrorCode::Unavailable,
            message,
            sqlstate: None,
            position: None,
        },
    })
}

/// Errors worth retrying a publish for: the connection or the cluster, not the script or the data.
fn retryable(e: &RedisError) -> bool {
    use redis::ServerErrorKind as S;
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_cluster_error()
        || matches!(
            e.kind(),
            redis::ErrorKind::Server(
                S::ClusterDown | S::TryAgain | S::MasterDown | S::BusyLoading | S::ReadOnly
            )
        )
        || e.code().is_none()
}
