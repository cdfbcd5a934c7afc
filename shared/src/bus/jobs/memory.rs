//! The job queue in one process: the fair scheduler (`fair.rs`) in the bus's one state, executions'
//! states beside it, idle workers woken by a `Notify`.
//!
//! Invariants: an enqueue records the execution and queues its job in one lock, so a job is never taken
//! before its execution exists; a wake-up is armed before a worker looks for a job, so one that comes in
//! between is not missed; nothing is ever reclaimed (a worker cannot die without the bus).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;

use super::{CancelOutcome, Delivery, Job, JobQueue, QueueStats, TakeOver, Taker};
use crate::bus::hub::{ChannelKind, Subscription};
use crate::bus::memory::Execution;
use crate::bus::{BusError, MemoryBus};

impl MemoryBus {
    /// `queued` -> `running` (`try_start.lua` and `take_over.lua` on Redis): the state before, if the
    /// execution exists.
    fn start_queued(&self, execution_id: &str) -> Option<&'static str> {
        let mut state = self.state();
        let e = state.executions.get_mut(execution_id)?;
        let before = e.state;
        if before == "queued" {
            e.state = "running";
        }
        Some(before)
    }
}

#[async_trait]
impl JobQueue for MemoryBus {
    async fn enqueue(&self, job: &Job, max_per_user: usize) -> Result<bool, BusError> {
        let lease = self.settings.user_lease;
        {
            let mut state = self.state();
            self.expire(&mut state);
            let running = state.running_by_user.entry(job.owner.clone()).or_default();
            running.retain(|_, since| since.elapsed() < lease);
            if running.len() >= max_per_user {
                return Ok(false);
            }
            running.insert(job.execution_id.clone(), Instant::now());
            state.executions.insert(
                job.execution_id.clone(),
                Execution {
                    owner: job.owner.clone(),
                    session_id: job.session_id.clone(),
                    state: "queued",
                    events: VecDeque::new(),
                    seq: 0,
                    trimmed: 0,
                    followers: HashMap::new(),
                    touched: Instant::now(),
                },
            );
            state.next_delivery += 1;
            let delivery = Delivery {
                delivery_id: state.next_delivery.to_string(),
                job: job.clone(),
                user_running: 0,
            };
            state.jobs.push(delivery);
        };
        self.wake.notify_one();
        Ok(true)
    }

    async fn claim_idempotency(
        &self,
        user: &str,
        client_id: &str,
        execution_id: &str,
    ) -> Result<Option<String>, BusError> {
        let mut state = self.state();
        self.expire(&mut state);
        let key = (user.to_owned(), client_id.to_owned());
        if let Some((existing, _)) = state.idempotency.get(&key) {
            return Ok(Some(existing.clone()));
        }
        state
            .idempotency
            .insert(key, (execution_id.to_owned(), Instant::now()));
        Ok(None)
    }

    async fn release_idempotency(&self, user: &str, client_id: &str) -> Result<(), BusError> {
        self.state()
            .idempotency
            .remove(&(user.to_owned(), client_id.to_owned()));
        Ok(())
    }

    async fn cancel(&self, execution_id: &str) -> Result<CancelOutcome, BusError> {
        let outcome = {
            let mut state = self.state();
            match state.executions.get_mut(execution_id) {
                None => CancelOutcome::NotFound,
                Some(e) if e.state == "queued" => {
                    e.state = "cancelled";
                    CancelOutcome::WasQueued
                }
                Some(e) if e.state == "running" => CancelOutcome::Running,
                Some(_) => CancelOutcome::Finished,
            }
        };
        if outcome == CancelOutcome::Running {
            self.hub.deliver(
                &self.keys.cancel_channel(),
                Bytes::from(execution_id.to_owned()),
            );
        }
        Ok(outcome)
    }

    async fn queue_position(&self, execution_id: &str) -> Result<Option<u64>, BusError> {
        Ok(self.state().jobs.position(execution_id))
    }

    async fn next_job(
        &self,
        taker: &Taker<'_>,
        block: Duration,
    ) -> Result<Option<Delivery>, BusError> {
        let take = || {
            let mut state = self.state();
            state.slots = taker.concurrency.max(1);
            let slots = state.slots;
            state.jobs.take(slots, taker.fairness)
        };
        // Armed before looking, so a wake-up between the look and the wait is not missed.
        let notified = self.wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(delivery) = take() {
            return Ok(Some(delivery));
        }
        let _ = tokio::time::timeout(block, notified).await;
        Ok(take())
    }

    async fn queue_stats(&self) -> Result<Option<QueueStats>, BusError> {
        let state = self.state();
        Ok(Some(state.jobs.stats(state.slots)))
    }

    async fn ack_job(&self, delivery: &Delivery) -> Result<(), BusError> {
        self.state().jobs.ack(&delivery.delivery_id);
        self.wake.notify_one();
        Ok(())
    }

    async fn try_start(&self, execution_id: &str, _worker_id: &str) -> Result<bool, BusError> {
        Ok(self.start_queued(execution_id) == Some("queued"))
    }

    // One process: a worker cannot die without the whole bus; nothing is ever reclaimed.
    async fn reclaim_jobs(
        &self,
        _consumer: &str,
        _min_idle: Duration,
        _count: usize,
    ) -> Result<Vec<Delivery>, BusError> {
        Ok(Vec::new())
    }

    async fn queue_depth(&self) -> Result<Option<u64>, BusError> {
        Ok(None)
    }

    async fn keep_alive_jobs(&self, _consumer: &str, _ids: &[String]) -> Result<(), BusError> {
        Ok(())
    }

    async fn take_over(&self, execution_id: &str, _worker_id: &str) -> Result<TakeOver, BusError> {
        Ok(match self.start_queued(execution_id) {
            Some("queued") => TakeOver::Start,
            Some("running") => TakeOver::Lost,
            _ => TakeOver::Finished,
        })
    }

    async fn cancel_requests(&self) -> Result<Subscription, BusError> {
        self.hub
            .subscribe(&self.keys.cancel_channel(), ChannelKind::Classic)
            .await
    }
}
