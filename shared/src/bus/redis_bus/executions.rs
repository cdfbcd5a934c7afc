//! An execution's life on Redis, as per-slot steps: enqueue, event publishing, and the explicit end of
//! executions whose job or events were lost.
//!
//! **Enqueue** spans three slots (user, execution, job queue), so it is four steps, each atomic:
//! 1. `lease_acquire` (user slot): one of the owner's concurrent-query slots, with a lease deadline;
//! 2. `exec_create` (execution slot): state `pending`, stamped with the server's time;
//! 3. `job_enqueue` (queue slot, `jobs.rs`), then `WAIT` for replicas when configured;
//! 4. `exec_enqueued` (execution slot): `pending` -> `queued`, recording the job's entry id.
//!
//! The client's `ack` is sent only after step 4. A crash (or an error) between two steps leaves:
//! - after 1: a slot held with no execution: it expires with its lease (`C2S_USER_LEASE_SECS`), or is
//!   given back at once when a later step fails with an error;
//! - after 2: an execution `pending` with no job: nobody was acked, but an idempotent retry can name it.
//!   Once it is older than `C2S_ENQUEUE_GRACE_MS`, a follower's check ends it with a terminal
//!   `query_error` (`exec_orphaned`) and a worker never starts it (`try_start` marks it `lost`);
//! - after 3: a job for a `pending` execution: a worker starts it while it is younger than the grace (the
//!   normal case: the worker was faster than step 4), else skips it as above;
//! - a job lost later (a failover that promoted a replica without it, a Redis that restarted empty):
//!   the execution is `queued` with a recorded job id that is no longer in the queue; a follower's check
//!   finds that and ends it with a terminal `query_error` `unavailable` — never silence.
//!
//! **Events** (`exec_append`, execution slot): each is written only right after the previous seq, so a
//! failover that lost events the worker had written is detected at the next write (`LOGLOST`): the worker
//! then ends the stream with an explicit `query_error` at the next seq (`force`), and readers that cross
//! the hole report the missing range instead of skipping it (`forward.rs`). A write whose reply was lost
//! is retried with the same bytes for up to `C2S_PUBLISH_RETRY_MS` (a failover takes a few seconds); the
//! script recognises one that had landed. With `C2S_REDIS_WAIT_REPLICAS` > 0 every write is followed by
//! `WAIT` in the same round trip: an event the worker moved past is on a replica, so a single master
//! failure loses at most the event in flight, which the retry writes again identically.

use std::time::Duration;

use redis::{RedisError, Value};

use super::RedisBus;
use crate::bus::{BusError, BusEvent, Followers, Job};
use crate::codes::QueryErrorCode;
use crate::protocol::{QueryError, QueryErrorDetail, ServerFrame, ServerMessage};

/// What an append found.
enum Appended {
    /// Written now (or found written by an earlier attempt). Carries the execution's owner.
    Yes(String),
    /// The log does not end at seq - 1: events were lost; carries the last seq it has.
    LogLost(u64),
}

impl RedisBus {
    pub(super) async fn enqueue_steps(
        &self,
        job: &Job,
        max_per_user: usize,
    ) -> Result<bool, BusError> {
        let mut conn = self.conn.clone();
        let leased: i64 = self
            .scripts
            .lease_acquire
            .key(self.keys.user_running(&job.owner))
            .arg(&job.execution_id)
            .arg(max_per_user)
            .arg(crate::now_ms())
            .arg(self.settings.user_lease.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        if leased == 0 {
            return Ok(false);
        }
        if let Err(e) = self.enqueue_after_lease(job).await {
            // Give the slot back, and make sure a job that did reach the queue is never run.
            let _ = self.release_lease(&job.owner, &job.execution_id).await;
            let _ = self.cancel_state(&job.execution_id).await;
            return Err(e);
        }
        Ok(true)
    }

    async fn enqueue_after_lease(&self, job: &Job) -> Result<(), BusError> {
        let mut conn = self.conn.clone();
        let state_key = self.keys.execution(&job.execution_id);
        let created: i64 = self
            .scripts
            .exec_create
            .key(&state_key)
            .arg(&job.owner)
            .arg(job.session_id.as_deref().unwrap_or_default())
            .arg(self.settings.event_ttl.as_secs())
            .invoke_async(&mut conn)
            .await?;
        if created == 0 {
            return Err(BusError::Malformed(format!(
                "execution {} exists already",
                job.execution_id
            )));
        }
        let job_id = self.push_job(job).await?;
        let before: String = self
            .scripts
            .exec_enqueued
            .key(&state_key)
            .arg(&job_id)
            .invoke_async(&mut conn)
            .await?;
        match before.as_str() {
            "lost" | "missing" => Err(BusError::Unavailable(format!(
                "execution {} was lost while it was being enqueued",
                job.execution_id
            ))),
            _ => Ok(()),
        }
    }

    /// Runs a write to `key`'s slot, then (when configured, see `replicas.rs`) `WAIT`s for replicas in
    /// the same round trip, on the same node. A shortfall does not fail the write: its master has it (a
    /// failover meanwhile is detected by the checks described above).
    pub(super) async fn write_and_wait<T: redis::FromRedisValue>(
        &self,
        write: redis::Cmd,
        key: &str,
    ) -> Result<(T, i64), BusError> {
        let mut conn = self.conn.clone();
        let wanted = self.replicas.wanted_for(key);
        if wanted == 0 {
            let value: T = write.query_async(&mut conn).await?;
            return Ok((value, 0));
        }
        let mut pipe = redis::pipe();
        pipe.add_command(write)
            .cmd("WAIT")
            .arg(wanted)
            .arg(self.replicas.timeout.as_millis() as u64);
        let (value, acked): (T, i64) = pipe.query_async(&mut conn).await?;
        self.replicas.record(key, acked, wanted);
        Ok((value, acked))
    }

    /// After a write to `key`'s slot made by one script call: waits for the configured replicas there.
    pub(super) async fn wait_after(&self, key: &str) -> Result<(), BusError> {
        let wanted = self.replicas.wanted_for(key);
        if wanted == 0 {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let acked = conn.wait_on(key, wanted, self.replicas.timeout).await?;
        self.replicas.record(key, acked, wanted);
        Ok(())
    }

    pub(super) async fn release_lease(
        &self,
        owner: &str,
        execution_id: &str,
    ) -> Result<(), BusError> {
        let mut conn = self.conn.clone();
        let _: i64 = redis::cmd("ZREM")
            .arg(self.keys.user_running(owner))
            .arg(execution_id)
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    pub(super) async fn cancel_state(&self, execution_id: &str) -> Result<String, BusError> {
        let mut conn = self.conn.clone();
        Ok(self
            .scripts
            .cancel
            .key(self.keys.execution(execution_id))
            .invoke_async(&mut conn)
            .await?)
    }

    /// Appends and publishes one event, retrying through a failover; ends the stream explicitly when the
    /// log lost events this writer had written. Frees the owner's slot after a terminal event.
    pub(super) async fn publish(
        &self,
        execution_id: &str,
        event: &BusEvent,
    ) -> Result<(), BusError> {
        let deadline = tokio::time::Instant::now() + self.settings.publish_retry;
        let mut delay = Duration::from_millis(50);
        let appended = loop {
            match self.append_event(execution_id, event, false).await {
                Ok(a) => break a,
                Err(e) if retryable(&e) && tokio::time::Instant::now() + delay < deadline => {
                    tracing::debug!(%execution_id, seq = event.seq, error = %e, "publish failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_millis(500));
                }
                Err(e) => return Err(e.into()),
            }
        };
        let owner = match appended {
            Appended::Yes(owner) => owner,
            Appended::LogLost(last) => {
                return Err(self.end_lost_log(execution_id, event.seq, last).await)
            }
        };
        if event.terminal && !owner.is_empty() {
            self.release_lease(&owner, execution_id).await?;
        }
        Ok(())
    }

    async fn append_event(
        &self,
        execution_id: &str,
        event: &BusEvent,
        force: bool,
    ) -> Result<Appended, RedisError> {
        let script = &self.scripts.exec_append;
        let mut evalsha = redis::cmd("EVALSHA");
        evalsha
            .arg(script.get_hash())
            .arg(4)
            .arg(self.keys.execution(execution_id))
            .arg(self.keys.execution_events(execution_id))
            .arg(self.keys.execution_channel(execution_id))
            .arg(self.keys.execution_followers(execution_id))
            .arg(event.seq)
            .arg(u8::from(event.terminal))
            .arg(&*event.frame)
            .arg(self.settings.event_stream_max_len)
            .arg(self.settings.event_ttl.as_secs())
            .arg(u8::from(force))
            .arg(self.settings.finished_retention.as_secs().max(1));
        let state_key = self.keys.execution(execution_id);
        let reply = match self
            .write_and_wait::<(i64, String)>(evalsha.clone(), &state_key)
            .await
        {
            Err(BusError::Redis(e))
                if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
            {
                let mut conn = self.conn.clone();
                script.prepare_invoke().load_async(&mut conn).await?;
                self.write_and_wait::<(i64, String)>(evalsha, &state_key)
                    .await
            }
            other => other,
        };
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
        if let Err(e) = self.append_event(execution_id, &end, true).await {
            tracing::error!(%execution_id, error = %e, "could not end the stream of a lost execution");
        }
        BusError::Unavailable(format!(
            "execution {execution_id}: events {}..{} lost in a Redis failover",
            last + 1,
            seq - 1
        ))
    }

    /// Records a follower's position (`exec_follower.lua`).
    pub(super) async fn record_follower(
        &self,
        execution_id: &str,
        reader: &str,
        taken: u64,
        live_for: Duration,
    ) -> Result<(), BusError> {
        let mut conn = self.conn.clone();
        let _: i64 = self
            .scripts
            .exec_follower
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
    pub(super) async fn read_followers(
        &self,
        execution_id: &str,
        trim_up_to: u64,
    ) -> Result<Followers, BusError> {
        let mut conn = self.conn.clone();
        let (live, lowest): (i64, i64) = self
            .scripts
            .exec_followers
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

    /// Ends an execution whose job will never run (see the module doc); true if it did.
    pub(super) async fn end_orphaned(&self, execution_id: &str) -> Result<bool, BusError> {
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
        let seq: i64 = self
            .scripts
            .exec_orphaned
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
