//! The job queue on Redis, scheduled fairly between users. Every key is in the `{jobs}` slot
//! (`Keys::scheduler_keys`), so each step is one script on one slot, on one Redis or a cluster:
//! - `job_enqueue.lua`: the job's body goes to the job stream (`<prefix>:{jobs}`, entry id = job id),
//!   its id to the end of its owner's waiting queue; one idle worker is woken (`wake` list).
//! - `job_take.lua`: a worker with a free slot takes the next job **by user, not FIFO**: among users
//!   with waiting jobs the one with the fewest jobs running goes first (the oldest waiting job among
//!   equals, so equal users take turns: round-robin); a user holding `C2S_USER_SLOT_SHARE` of all
//!   slots is passed over while another user waits; a user with jobs running may not take the last
//!   `C2S_RESERVED_SLOTS` free slots (kept for a user with nothing running, whose job then starts
//!   within one wake-up instead of after a running query). Slots are the sum of the concurrency of
//!   the workers seen within `C2S_JOB_CLAIM_IDLE_MS`. A user alone (reserve 0) gets every slot.
//! - `job_ack.lua`: the job's slot goes back to its user, its body is deleted, a worker is woken.
//! - `job_keep_alive.lua` / `job_reclaim.lua`: a running job is refreshed by its worker (`claims`,
//!   scored by the last refresh); one not refreshed for `C2S_JOB_CLAIM_IDLE_MS` (its worker died) is
//!   taken over by another, keeping its user's slot.
//!
//! A collaboration session's query counts as the work of the participant who ran it (its `owner`).
//!
//! Idle workers block on `BLPOP wake` (their own connection) for at most `C2S_JOB_POLL_MS`, then look
//! again; a lost token costs at most that. The stream stays the record of queued jobs (a job lost from
//! it in a failover is found by `end_if_orphaned`; one whose body vanished is dropped at take time).

use std::time::Duration;

use super::{Delivery, Job, QueueStats, Taker};
use crate::bus::redis_bus::conn::Conn;
use crate::bus::redis_bus::scripts::lua;
use crate::bus::{BusError, RedisBus};

/// Users with waiting jobs one take (or position) looks at: the oldest heads first.
const SCAN_USERS: usize = 1000;

impl RedisBus {
    /// The connection for blocking reads, made on first use and after a failure.
    async fn blocking_conn(&self, block: Duration) -> Result<Conn, BusError> {
        let mut slot = self.blocking.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = self.endpoints.blocking(block).await?;
        *slot = Some(c.clone());
        Ok(c)
    }

    fn scheduler_script<'s>(&self, script: &'s redis::Script) -> redis::ScriptInvocation<'s> {
        let mut invocation = script.prepare_invoke();
        for key in self.keys.scheduler_keys() {
            invocation.key(key);
        }
        invocation
    }

    /// The enqueue's queue step (see `redis.rs`): returns the job id.
    pub(super) async fn push_job(&self, job: &Job) -> Result<String, BusError> {
        let body = serde_json::to_string(job).map_err(|e| BusError::Malformed(e.to_string()))?;
        let script = lua!("job_enqueue.lua");
        let mut evalsha = redis::cmd("EVALSHA");
        evalsha.arg(script.get_hash()).arg(9);
        for key in self.keys.scheduler_keys() {
            evalsha.arg(key);
        }
        evalsha.arg(&job.owner).arg(body);
        Ok(self
            .eval_and_wait::<String>(script, evalsha, &self.keys.jobs())
            .await?
            .0)
    }

    async fn take(&self, taker: &Taker<'_>) -> Result<Option<Delivery>, BusError> {
        let mut conn = self.conn.clone();
        let taken: Option<(String, Vec<u8>, u32)> = self
            .scheduler_script(lua!("job_take.lua", with "jobs_lib.lua"))
            .arg(taker.consumer)
            .arg(taker.concurrency.max(1))
            .arg(taker.live_for.as_millis() as u64)
            .arg(taker.fairness.share)
            .arg(taker.fairness.reserved)
            .arg(SCAN_USERS)
            .invoke_async(&mut conn)
            .await?;
        let Some((id, body, user_running)) = taken else {
            return Ok(None);
        };
        match serde_json::from_slice::<Job>(&body) {
            Ok(job) => Ok(Some(Delivery {
                delivery_id: id,
                job,
                user_running,
            })),
            Err(e) => {
                // A job nobody can read would hold its slot forever: drop it, loudly.
                tracing::error!(%id, error = %e, "dropping malformed job");
                self.ack_id(&id).await?;
                Ok(None)
            }
        }
    }

    pub(super) async fn next_job(
        &self,
        taker: &Taker<'_>,
        block: Duration,
    ) -> Result<Option<Delivery>, BusError> {
        if let Some(delivery) = self.take(taker).await? {
            return Ok(Some(delivery));
        }
        // Nothing for us now: wait for a wake-up (an enqueue, a slot freed), then look once more.
        let mut conn = self.blocking_conn(block).await?;
        let wake = &self.keys.scheduler_keys()[8];
        let woken: redis::RedisResult<Option<(String, String)>> = redis::cmd("BLPOP")
            .arg(wake)
            .arg(block.as_secs_f64().max(0.01))
            .query_async(&mut conn)
            .await;
        if let Err(e) = woken {
            // Drop the connection so the next call makes a fresh one.
            *self.blocking.lock().await = None;
            return Err(e.into());
        }
        self.take(taker).await
    }

    async fn ack_id(&self, id: &str) -> Result<(), BusError> {
        let mut conn = self.conn.clone();
        let _: i64 = self
            .scheduler_script(lua!("job_ack.lua", with "jobs_lib.lua"))
            .arg(id)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    pub(super) async fn ack_job(&self, delivery: &Delivery) -> Result<(), BusError> {
        self.ack_id(&delivery.delivery_id).await
    }

    pub(super) async fn reclaim_jobs(
        &self,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<Delivery>, BusError> {
        let mut conn = self.conn.clone();
        let claimed: Vec<(String, Vec<u8>)> = self
            .scheduler_script(lua!("job_reclaim.lua", with "jobs_lib.lua"))
            .arg(consumer)
            .arg(min_idle.as_millis() as u64)
            .arg(count.max(1))
            .invoke_async(&mut conn)
            .await?;
        let mut jobs = Vec::new();
        for (id, body) in claimed {
            match serde_json::from_slice::<Job>(&body) {
                Ok(job) => jobs.push(Delivery {
                    delivery_id: id,
                    job,
                    user_running: 0,
                }),
                Err(_) => tracing::error!(%id, "reclaimed a malformed job; left pending"),
            }
        }
        Ok(jobs)
    }

    pub(super) async fn queue_depth(&self) -> Result<Option<u64>, BusError> {
        let mut conn = self.conn.clone();
        let depth: u64 = redis::cmd("XLEN")
            .arg(self.keys.jobs())
            .query_async(&mut conn)
            .await?;
        Ok(Some(depth))
    }

    pub(super) async fn queue_stats(&self) -> Result<Option<QueueStats>, BusError> {
        let keys = self.keys.scheduler_keys();
        let mut conn = self.conn.clone();
        let (depth, waiting_users, running, slots): (u64, u64, u64, Vec<u64>) = redis::pipe()
            .cmd("XLEN")
            .arg(&keys[0])
            .cmd("ZCARD")
            .arg(&keys[1])
            .cmd("ZCARD")
            .arg(&keys[4])
            .cmd("HVALS")
            .arg(&keys[7])
            .query_async(&mut conn)
            .await?;
        Ok(Some(QueueStats {
            waiting: depth.saturating_sub(running),
            waiting_users,
            running,
            slots: slots.iter().sum(),
        }))
    }

    pub(super) async fn queue_position(&self, execution_id: &str) -> Result<Option<u64>, BusError> {
        let mut conn = self.conn.clone();
        let (owner, job): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(self.keys.execution(execution_id))
            .arg("owner")
            .arg("job")
            .query_async(&mut conn)
            .await?;
        let (Some(owner), Some(job)) = (owner, job) else {
            return Ok(None);
        };
        let position: i64 = self
            .scheduler_script(lua!("job_position.lua"))
            .arg(owner)
            .arg(job)
            .arg(SCAN_USERS)
            .invoke_async(&mut conn)
            .await?;
        Ok(u64::try_from(position).ok().filter(|p| *p > 0))
    }

    pub(super) async fn keep_alive_jobs(
        &self,
        consumer: &str,
        delivery_ids: &[String],
    ) -> Result<(), BusError> {
        let mut conn = self.conn.clone();
        let _: i64 = self
            .scheduler_script(lua!("job_keep_alive.lua", with "jobs_lib.lua"))
            .arg(consumer)
            .arg(delivery_ids)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }
}
