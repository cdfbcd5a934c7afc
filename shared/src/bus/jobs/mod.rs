//! The job queue: a gateway enqueues a query (under its owner's cap, once per client message id), a
//! worker takes it from the fair scheduler, starts it, keeps it alive, and acknowledges it once its
//! terminal event is published; a worker takes over the jobs of one that died; a client cancels.
//!
//! Invariants (both implementations): one worker starts an execution (`queued -> running`, decided
//! atomically by `try_start` or `take_over`), and a cancelled one never starts; an execution holds its
//! owner's slot from its enqueue to its terminal event (at most `user_lease`); a job taken and not yet
//! acknowledged stays in the queue until its worker acknowledges it (on Redis, a worker that died leaves
//! it to `reclaim_jobs` and `take_over`; in one process a worker cannot die without the bus).
//!
//! `memory.rs` (with the in-process scheduler `fair.rs`) and `redis.rs` (with `scheduler.rs` and the
//! scripts beside them) implement [`JobQueue`].

pub(super) mod fair;
mod memory;
mod redis;
mod scheduler;

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::hub::Subscription;
use super::BusError;
use crate::protocol::QueryOptions;

/// A query job, as enqueued by a gateway and taken by a worker.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Job {
    pub execution_id: String,
    /// The user that asked (authorization of `resume`/`subscribe`, per-user limits).
    pub owner: String,
    pub query: String,
    #[serde(default)]
    pub options: QueryOptions,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    pub enqueued_at_ms: i64,
    /// The collaboration session it was run in (its participants may follow it too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
}

/// A job handed to one worker; acknowledged with [`JobQueue::ack_job`] once its terminal event is published.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Redis stream entry id (or a local counter in the memory bus).
    pub delivery_id: String,
    pub job: Job,
    /// Jobs of its owner running when it was taken (0: a light user; the queue-wait metric's class).
    pub user_running: u32,
}

/// How the fair scheduler shares the workers' slots between users (`C2S_USER_SLOT_SHARE`,
/// `C2S_RESERVED_SLOTS`; see `scheduler.rs` and `fair.rs`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fairness {
    /// While another user has jobs waiting, a user holding this share of all slots (at least one slot)
    /// is passed over.
    pub share: f64,
    /// Free slots a user that already runs a job may not take: kept for a user with nothing running.
    pub reserved: usize,
}

impl Default for Fairness {
    fn default() -> Self {
        Fairness {
            share: 0.5,
            reserved: 0,
        }
    }
}

/// A worker asking for its next job.
#[derive(Debug, Clone)]
pub struct Taker<'a> {
    pub consumer: &'a str,
    /// Its slots (`C2S_CONCURRENCY`), counted in the total of every worker seen within `live_for`.
    pub concurrency: usize,
    pub live_for: Duration,
    pub fairness: Fairness,
}

/// The job queue as a whole (metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Jobs waiting for a slot.
    pub waiting: u64,
    /// Users with jobs waiting.
    pub waiting_users: u64,
    /// Jobs taken by a worker and not yet acknowledged.
    pub running: u64,
    /// Slots of the workers seen lately.
    pub slots: u64,
}

/// What `cancel` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// It was still queued: it is now cancelled and will never run. The caller publishes `query_cancelled`.
    WasQueued,
    /// It is running: its worker was told to stop the SQL and will publish `query_cancelled`.
    Running,
    /// It had already ended.
    Finished,
    /// No such execution (never existed, or expired).
    NotFound,
}

/// What a worker that reclaimed a dead worker's job may do with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TakeOver {
    /// It had not started: run it.
    Start,
    /// It was running when its worker died: its stream must be ended (`worker_lost`).
    Lost,
    /// It had ended (or was cancelled, or expired): just acknowledge it.
    Finished,
}

#[async_trait]
pub trait JobQueue: Send + Sync {
    // ---- gateway side -----------------------------------------------------------------------------------

    /// Records the execution as `queued` and appends the job to the durable job queue, unless its owner
    /// already has `max_per_user` unfinished executions (then false, nothing written). An execution holds
    /// its owner's slot until its terminal event, or at most `user_lease` (a crash cannot leak slots).
    async fn enqueue(&self, job: &Job, max_per_user: usize) -> Result<bool, BusError>;

    /// Remembers `client_id` of `user` as having created `execution_id`, unless it was seen before:
    /// then returns the execution it created then.
    async fn claim_idempotency(
        &self,
        user: &str,
        client_id: &str,
        execution_id: &str,
    ) -> Result<Option<String>, BusError>;

    /// Forgets a claim whose message could not be accepted, so that the client's retry runs.
    async fn release_idempotency(&self, user: &str, client_id: &str) -> Result<(), BusError>;

    async fn cancel(&self, execution_id: &str) -> Result<CancelOutcome, BusError>;

    /// Where a queued execution's job stands in the fair order (1: next), None if it is not waiting.
    async fn queue_position(&self, _execution_id: &str) -> Result<Option<u64>, BusError> {
        Ok(None)
    }

    // ---- worker side ------------------------------------------------------------------------------------

    /// Waits up to `block` for a job the fair scheduler gives this worker (which has a free slot).
    async fn next_job(
        &self,
        taker: &Taker<'_>,
        block: Duration,
    ) -> Result<Option<Delivery>, BusError>;

    /// Waiting and running jobs, users waiting, and slots, if the bus can tell.
    async fn queue_stats(&self) -> Result<Option<QueueStats>, BusError> {
        Ok(None)
    }

    async fn ack_job(&self, delivery: &Delivery) -> Result<(), BusError>;

    /// `queued` -> `running`, atomically; false if it was cancelled (or taken) before.
    async fn try_start(&self, execution_id: &str, worker_id: &str) -> Result<bool, BusError>;

    /// Jobs pending on other consumers for longer than `min_idle` (their worker died), now this consumer's.
    async fn reclaim_jobs(
        &self,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<Delivery>, BusError>;

    /// Jobs in the queue not yet acknowledged (waiting or running), if the bus can tell.
    async fn queue_depth(&self) -> Result<Option<u64>, BusError>;

    /// Resets the idle time of jobs this consumer is still running, so nobody reclaims them.
    async fn keep_alive_jobs(
        &self,
        consumer: &str,
        delivery_ids: &[String],
    ) -> Result<(), BusError>;

    /// Decides, atomically, what a reclaimed job's new worker does with it (and takes it over).
    async fn take_over(&self, execution_id: &str, worker_id: &str) -> Result<TakeOver, BusError>;

    /// Cancel requests for running executions (payload: execution id), for workers.
    async fn cancel_requests(&self) -> Result<Subscription, BusError>;
}
