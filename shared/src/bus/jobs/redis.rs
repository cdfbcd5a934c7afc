//! The job queue on Redis: the enqueue's per-slot steps, idempotency, an execution's start, take-over and
//! cancel; the fair scheduler itself is `scheduler.rs`.
//!
//! **Enqueue** spans three slots (user, execution, job queue), so it is four steps, each atomic:
//! 1. `lease_acquire` (user slot): one of the owner's concurrent-query slots, with a lease deadline;
//! 2. `exec_create` (execution slot): state `pending`, stamped with the server's time;
//! 3. `job_enqueue` (queue slot, `scheduler.rs`), then `WAIT` for replicas when configured;
//! 4. `exec_enqueued` (execution slot): `pending` -> `queued`, recording the job's entry id.
//!
//! The client's `ack` is sent only after step 4. A crash (or an error) between two steps leaves:
//! - after 1: a slot held with no execution: it expires with its lease (`C2S_USER_LEASE_SECS`), or is
//!   given back at once when a later step fails with an error;
//! - after 2: an execution `pending` with no job: nobody was acked, but an idempotent retry can name it.
//!   Once it is older than `C2S_ENQUEUE_GRACE_MS`, a follower's check ends it with a terminal
//!   `query_error` (`exec_orphaned`, `events/redis.rs`) and a worker never starts it (`try_start` marks it `lost`);
//! - after 3: a job for a `pending` execution: a worker starts it while it is younger than the grace (the
//!   normal case: the worker was faster than step 4), else skips it as above;
//! - a job lost later (a failover that promoted a replica without it, a Redis that restarted empty):
//!   the execution is `queued` with a recorded job id that is no longer in the queue; a follower's check
//!   finds that and ends it with a terminal `query_error` `unavailable` — never silence.
//!
//!
//! An execution's start is one script on its slot: `try_start` (`queued`/young `pending` -> `running`) or,
//! for a reclaimed job, `take_over` (which tells its new worker to run it, end it as lost, or just
//! acknowledge it), so two workers never both start it; `cancel` moves a queued one to `cancelled`
//! in the same slot, and tells a running one's worker on the node-wide cancel channel.

use std::time::Duration;

use async_trait::async_trait;

use super::{CancelOutcome, Delivery, Job, JobQueue, QueueStats, TakeOver, Taker};
use crate::bus::hub::{ChannelKind, Subscription};
use crate::bus::redis_bus::scripts::lua;
use crate::bus::{BusError, EventLog, RedisBus};

#[async_trait]
impl JobQueue for RedisBus {
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
        self.command(redis::cmd("DEL").arg(self.keys.idempotency(user, client_id)))
            .await?;
        Ok(())
    }

    async fn cancel(&self, execution_id: &str) -> Result<CancelOutcome, BusError> {
        let found = self.cancel_state(execution_id).await?;
        Ok(match found.as_str() {
            "missing" => CancelOutcome::NotFound,
            "queued" => CancelOutcome::WasQueued,
            "running" => {
                // A separate step (the cancel channel is node-wide, not the execution's slot): if this
                // is lost, the query runs to its end, and its client still gets a terminal event.
                self.command(
                    redis::cmd("PUBLISH")
                        .arg(self.keys.cancel_channel())
                        .arg(execution_id),
                )
                .await?;
                CancelOutcome::Running
            }
            _ => CancelOutcome::Finished,
        })
    }

    async fn queue_position(&self, execution_id: &str) -> Result<Option<u64>, BusError> {
        RedisBus::queue_position(self, execution_id).await
    }

    async fn next_job(
        &self,
        taker: &Taker<'_>,
        block: Duration,
    ) -> Result<Option<Delivery>, BusError> {
        RedisBus::next_job(self, taker, block).await
    }

    async fn queue_stats(&self) -> Result<Option<QueueStats>, BusError> {
        RedisBus::queue_stats(self).await
    }

    async fn ack_job(&self, delivery: &Delivery) -> Result<(), BusError> {
        RedisBus::ack_job(self, delivery).await
    }

    async fn try_start(&self, execution_id: &str, worker_id: &str) -> Result<bool, BusError> {
        let mut conn = self.conn.clone();
        let started: i64 = lua!("try_start.lua")
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
        let previous: String = lua!("take_over.lua")
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

    async fn cancel_requests(&self) -> Result<Subscription, BusError> {
        self.hub
            .subscribe(&self.keys.cancel_channel(), ChannelKind::Classic)
            .await
    }
}

impl RedisBus {
    /// The enqueue, in the steps of the module doc.
    async fn enqueue_steps(&self, job: &Job, max_per_user: usize) -> Result<bool, BusError> {
        let mut leased = self.acquire_lease(job, max_per_user).await?;
        if !leased && self.free_ended_slots(&job.owner).await? > 0 {
            leased = self.acquire_lease(job, max_per_user).await?;
        }
        if !leased {
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

    /// Step 1: one of the owner's slots (`lease_acquire.lua`); false when all are held.
    async fn acquire_lease(&self, job: &Job, max_per_user: usize) -> Result<bool, BusError> {
        let mut conn = self.conn.clone();
        let leased: i64 = lua!("lease_acquire.lua")
            .key(self.keys.user_running(&job.owner))
            .arg(&job.execution_id)
            .arg(max_per_user)
            .arg(crate::now_ms())
            .arg(self.settings.user_lease.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        Ok(leased != 0)
    }

    /// Frees the owner's slots whose executions already ended; returns how many. A worker frees a slot
    /// only after the terminal event is written (another slot, another round trip), so a client that
    /// saw its query end and asks again at once could otherwise be refused for a query that is over.
    /// Only `done` counts: a state not written yet is an enqueue on its way, which holds its slot.
    async fn free_ended_slots(&self, owner: &str) -> Result<usize, BusError> {
        let mut conn = self.conn.clone();
        let held: Vec<String> = redis::cmd("ZRANGE")
            .arg(self.keys.user_running(owner))
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await?;
        let mut freed = 0;
        for execution_id in held {
            let info = self.execution_info(&execution_id).await?;
            if info.is_some_and(|i| i.state == "done") {
                self.release_lease(owner, &execution_id).await?;
                freed += 1;
            }
        }
        Ok(freed)
    }

    /// Steps 2 to 4 (the owner's slot is held).
    async fn enqueue_after_lease(&self, job: &Job) -> Result<(), BusError> {
        let mut conn = self.conn.clone();
        let state_key = self.keys.execution(&job.execution_id);
        let created: i64 = lua!("exec_create.lua")
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
        let before: String = lua!("exec_enqueued.lua")
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

    /// Gives an execution's slot back to its owner (a failed enqueue, or its terminal event:
    /// `events/redis.rs`).
    pub(in crate::bus) async fn release_lease(
        &self,
        owner: &str,
        execution_id: &str,
    ) -> Result<(), BusError> {
        self.command(
            redis::cmd("ZREM")
                .arg(self.keys.user_running(owner))
                .arg(execution_id),
        )
        .await?;
        Ok(())
    }

    /// `cancel.lua`: the execution's state before (a queued one is now cancelled).
    async fn cancel_state(&self, execution_id: &str) -> Result<String, BusError> {
        let mut conn = self.conn.clone();
        Ok(lua!("cancel.lua")
            .key(self.keys.execution(execution_id))
            .invoke_async(&mut conn)
            .await?)
    }
}
