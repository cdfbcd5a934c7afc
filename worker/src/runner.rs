//! The job loop: take a job when a slot is free, run it, publish its terminal event, acknowledge it.
//! Cancel requests arrive on the bus and stop the matching running query.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use c2s_shared::bus::{Bus, BusError, Delivery};
use c2s_shared::now_ms;
use c2s_shared::protocol::{
    QueryCancelled, QueryCompleted, QueryError, QueryResult, QueryStarted, ServerMessage,
};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::WorkerArgs;
use crate::engine::{Failure, SqlEngine};
use crate::events::EventSink;

/// Backoff after a failed read of the job queue (Redis down, …).
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

type Running = Arc<Mutex<HashMap<String, CancellationToken>>>;

pub struct Worker {
    bus: Arc<dyn Bus>,
    engine: Arc<dyn SqlEngine>,
    args: WorkerArgs,
    id: String,
    running: Running,
}

impl Worker {
    pub fn new(bus: Arc<dyn Bus>, engine: Arc<dyn SqlEngine>, args: WorkerArgs) -> Worker {
        let id = args.worker_id();
        Worker {
            bus,
            engine,
            args,
            id,
            running: Arc::default(),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Subscribes to cancel requests; call before `run` so no cancel can be missed. Then `run` takes jobs
    /// until `shutdown` resolves, and waits (up to the grace period) for the running ones.
    pub async fn listen_for_cancels(&self) -> Result<(), BusError> {
        let mut requests = self.bus.cancel_requests().await?;
        let running = self.running.clone();
        tokio::spawn(async move {
            loop {
                match requests.receiver.recv().await {
                    Ok(id) => {
                        let id = String::from_utf8_lossy(&id);
                        let token = running
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get(id.as_ref())
                            .cloned();
                        if let Some(token) = token {
                            tracing::info!(execution_id = %id, "cancel requested");
                            token.cancel();
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "cancel requests lagged");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        Ok(())
    }

    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let this = Arc::new(self);
        let slots = Arc::new(Semaphore::new(this.args.concurrency.max(1)));
        let poll = Duration::from_millis(this.args.job_poll_ms.max(10));
        let mut retry = RETRY_MIN;
        tokio::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                // A free slot for one more query.
                permit = slots.clone().acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => break,
                },
                // Stop taking jobs.
                _ = &mut shutdown => break,
            };
            let delivery = tokio::select! {
                // The next job (None after `poll` with nothing to do).
                d = this.bus.next_job(&this.id, poll) => d,
                // Stop taking jobs.
                _ = &mut shutdown => break,
            };
            match delivery {
                Ok(Some(delivery)) => {
                    retry = RETRY_MIN;
                    let this = this.clone();
                    tokio::spawn(async move {
                        this.process(delivery).await;
                        drop(permit);
                    });
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "reading the job queue failed; retrying");
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(RETRY_MAX);
                }
            }
        }
        let grace = Duration::from_millis(this.args.grace_ms);
        let all = this.args.concurrency.max(1) as u32;
        if tokio::time::timeout(grace, slots.acquire_many(all))
            .await
            .is_err()
        {
            tracing::warn!("shutdown grace period over with queries still running");
        }
    }

    async fn process(&self, delivery: Delivery) {
        let job = &delivery.job;
        let execution_id = job.execution_id.clone();
        let token = CancellationToken::new();
        // Registered before the start so a cancel between the two cannot be missed.
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(execution_id.clone(), token.clone());
        let outcome = self.run_job(&delivery, &token).await;
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&execution_id);
        match outcome {
            Ok(()) => {
                if let Err(e) = self.bus.ack_job(&delivery).await {
                    tracing::warn!(%execution_id, error = %e, "ack failed");
                }
            }
            // Not acknowledged: the job stays pending in the group.
            Err(e) => {
                tracing::error!(%execution_id, error = %e, "could not publish the query's events")
            }
        }
    }

    async fn run_job(
        &self,
        delivery: &Delivery,
        cancel: &CancellationToken,
    ) -> Result<(), BusError> {
        let job = &delivery.job;
        if !self.bus.try_start(&job.execution_id, &self.id).await? {
            tracing::info!(execution_id = %job.execution_id, "job cancelled before it started");
            return Ok(());
        }
        let started = std::time::Instant::now();
        let options = self.args.limits.resolve(&job.options);
        let mut sink = EventSink::new(
            self.bus.clone(),
            job.execution_id.clone(),
            job.traceparent.clone(),
        );
        sink.emit(ServerMessage::QueryStarted(QueryStarted {
            execution_id: job.execution_id.clone(),
            timestamp: now_ms(),
            worker_id: Some(self.id.clone()),
        }))
        .await?;
        let result = self.engine.execute(job, &options, &mut sink, cancel).await;
        let execution_id = job.execution_id.clone();
        let timestamp = now_ms();
        let terminal = match result {
            Ok(done) => ServerMessage::QueryCompleted(QueryCompleted {
                execution_id,
                timestamp,
                result: QueryResult {
                    row_count: done.row_count,
                    columns: done.columns,
                    duration_ms: started.elapsed().as_millis() as u64,
                    truncated: done.truncated,
                },
            }),
            Err(Failure::Cancelled) => ServerMessage::QueryCancelled(QueryCancelled {
                execution_id,
                timestamp,
            }),
            Err(Failure::Query(error)) => {
                tracing::info!(execution_id = %job.execution_id, code = ?error.code, sqlstate = ?error.sqlstate, "query failed");
                ServerMessage::QueryError(QueryError {
                    execution_id,
                    timestamp,
                    error,
                })
            }
            Err(Failure::Bus(e)) => return Err(e),
        };
        sink.emit(terminal).await
    }
}
