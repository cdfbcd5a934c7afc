//! The job loop: take a job when a slot is free, run it, publish its terminal event, acknowledge it.
//! Cancel requests arrive on the bus and stop the matching running query.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use c2s_shared::bus::{Bus, BusError, Delivery, TakeOver, Taker, Topic};
use c2s_shared::codes::QueryErrorCode;
use c2s_shared::metrics as m;
use c2s_shared::now_ms;
use c2s_shared::protocol::{
    QueryCancelled, QueryCompleted, QueryError, QueryErrorDetail, QueryResult, QueryStarted,
    ServerMessage,
};
use c2s_shared::telemetry;
use futures_util::FutureExt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::WorkerArgs;
use crate::engine::{Failure, SqlEngine};
use crate::events::EventSink;
use crate::window::Limits;

/// Backoff after a failed read of the job queue (Redis down, …). Capped low: a returning Redis must
/// serve the next query within about a second of being back (a cap of 1 s made the first query wait
/// 0.7 s after a whole cluster's restart, 0.25 s costs a few reads per second while Redis is away).
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_millis(250);

/// Running executions: their cancel token and the job's delivery id (kept fresh in the group).
type Running = Arc<Mutex<HashMap<String, (CancellationToken, String)>>>;

/// How many orphaned jobs one janitor round takes over at most.
const RECLAIM_BATCH: usize = 16;

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
                            .map(|(token, _)| token.clone());
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
        let janitor = tokio::spawn(this.clone().janitor());
        let renewer = tokio::spawn(this.clone().renew_leases());
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
            let taker = Taker {
                consumer: &this.id,
                concurrency: this.args.concurrency.max(1),
                live_for: Duration::from_millis(this.args.job_claim_idle_ms.max(30)),
                fairness: this.args.fairness(),
            };
            let delivery = tokio::select! {
                // The next job the fair scheduler gives us (None after `poll` with nothing to do).
                d = this.bus.next_job(&taker, poll) => d,
                // Stop taking jobs.
                _ = &mut shutdown => break,
            };
            match delivery {
                Ok(Some(delivery)) => {
                    retry = RETRY_MIN;
                    let this = this.clone();
                    tokio::spawn(async move {
                        this.process(delivery, false).await;
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
        janitor.abort();
        let grace = Duration::from_millis(this.args.grace_ms);
        let all = this.args.concurrency.max(1) as u32;
        if tokio::time::timeout(grace, slots.acquire_many(all))
            .await
            .is_err()
        {
            tracing::warn!("shutdown grace period over with queries still running");
        }
        renewer.abort();
    }

    /// Renews the lease of every job this worker runs, every `C2S_JOB_LEASE_RENEW_MS`, on a task of its
    /// own: a query saturating its task (encoding, a slow database) never delays it. One command for
    /// all of them (`job_keep_alive.lua` in the `{jobs}` slot, also on a cluster).
    async fn renew_leases(self: Arc<Self>) {
        let every = Duration::from_millis(self.args.job_lease_renew_ms.max(10));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let mine: Vec<String> = self
                .running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .map(|(_, delivery_id)| delivery_id.clone())
                .collect();
            if let Err(e) = self.bus.keep_alive_jobs(&self.id, &mine).await {
                tracing::warn!(error = %e, "renewing the leases of running jobs failed");
            }
        }
    }

    /// Takes over the jobs of dead workers (their lease expired), every `C2S_JOB_RECLAIM_INTERVAL_MS`:
    /// one that never started is run; one that was running ends with `query_error` `worker_lost`
    /// (re-running it could deliver rows twice; the client decides whether to run it again).
    async fn janitor(self: Arc<Self>) {
        let idle = Duration::from_millis(self.args.job_claim_idle_ms.max(30));
        let every = Duration::from_millis(self.args.job_reclaim_interval_ms.max(10));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Ok(Some(depth)) = self.bus.queue_depth().await {
                metrics::gauge!(m::JOB_QUEUE_DEPTH).set(depth as f64);
            }
            if let Ok(Some(stats)) = self.bus.queue_stats().await {
                metrics::gauge!(m::JOBS_WAITING).set(stats.waiting as f64);
                metrics::gauge!(m::USERS_WAITING).set(stats.waiting_users as f64);
                metrics::gauge!(m::WORKER_SLOTS).set(stats.slots as f64);
            }
            let orphans = match self.bus.reclaim_jobs(&self.id, idle, RECLAIM_BATCH).await {
                Ok(o) => o,
                Err(e) => {
                    tracing::warn!(error = %e, "reclaiming orphaned jobs failed");
                    continue;
                }
            };
            for delivery in orphans {
                let this = self.clone();
                tokio::spawn(async move { this.take_over(delivery).await });
            }
        }
    }

    async fn take_over(&self, delivery: Delivery) {
        let execution_id = delivery.job.execution_id.clone();
        let decision = match self.bus.take_over(&execution_id, &self.id).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(%execution_id, error = %e, "take-over failed; left pending");
                return;
            }
        };
        tracing::warn!(%execution_id, ?decision, "took over the job of a dead worker");
        match decision {
            TakeOver::Start => self.process(delivery, true).await,
            TakeOver::Lost => {
                metrics::counter!(m::JOBS, "outcome" => "worker_lost").increment(1);
                let ended = self
                    .end_with_error(
                        &delivery,
                        QueryErrorCode::WorkerLost,
                        "the worker running this query stopped before it finished; the result is \
                         incomplete: run the query again",
                    )
                    .await;
                match ended.and(self.bus.ack_job(&delivery).await) {
                    Ok(()) => {}
                    Err(e) => tracing::warn!(%execution_id, error = %e, "could not end a lost job"),
                }
            }
            TakeOver::Finished => {
                if let Err(e) = self.bus.ack_job(&delivery).await {
                    tracing::warn!(%execution_id, error = %e, "ack failed");
                }
            }
        }
    }

    /// Ends the stream of a job that cannot finish (its worker died mid-query, or its run panicked)
    /// with a `query_error`, after the last event published.
    async fn end_with_error(
        &self,
        delivery: &Delivery,
        code: QueryErrorCode,
        message: &str,
    ) -> Result<(), BusError> {
        let job = &delivery.job;
        let last = self
            .bus
            .last_seq(&Topic::Execution(job.execution_id.clone()))
            .await?;
        let mut sink = EventSink::continue_after(
            self.bus.clone(),
            job.execution_id.clone(),
            job.traceparent.clone(),
            last,
        );
        sink.emit(ServerMessage::QueryError(QueryError {
            execution_id: job.execution_id.clone(),
            timestamp: now_ms(),
            error: QueryErrorDetail {
                code,
                message: message.to_owned(),
                sqlstate: None,
                position: None,
            },
        }))
        .await
        .map(|_| ())
    }

    /// Runs a job; `started` when the take-over already moved it to running.
    async fn process(&self, delivery: Delivery, started: bool) {
        let job = &delivery.job;
        let execution_id = job.execution_id.clone();
        let token = CancellationToken::new();
        // Registered before the start so a cancel between the two cannot be missed.
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                execution_id.clone(),
                (token.clone(), delivery.delivery_id.clone()),
            );
        metrics::gauge!(m::WORKER_RUNNING).increment(1.0);
        // The sink lives out here so that a panic in the run does not take the events it has queued.
        let mut sink = EventSink::new(self.bus.clone(), execution_id.clone(), None);
        // The safety net: a panic anywhere in the run ends the execution instead of leaving its
        // client waiting (its connection is closed as the run unwinds).
        let outcome =
            std::panic::AssertUnwindSafe(self.run_job(&delivery, &token, started, &mut sink))
                .catch_unwind()
                .await;
        metrics::gauge!(m::WORKER_RUNNING).decrement(1.0);
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&execution_id);
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(panic) => {
                let what = panic_message(panic.as_ref());
                tracing::error!(%execution_id, panic = %what, "the query's run panicked");
                metrics::counter!(m::JOBS, "outcome" => "panicked").increment(1);
                // What was published stays; the error follows the last event in the log.
                let _ = sink.flush().await;
                self.end_with_error(
                    &delivery,
                    QueryErrorCode::Internal,
                    &format!("the worker failed while running this query ({what}); this is a bug"),
                )
                .await
            }
        };
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
        started: bool,
        sink: &mut EventSink,
    ) -> Result<(), BusError> {
        let job = &delivery.job;
        let span = tracing::info_span!(
            "worker.execute",
            otel.name = "worker execute",
            otel.kind = "consumer",
            execution_id = %job.execution_id,
            worker_id = %self.id,
            trace_id = tracing::field::Empty,
        );
        telemetry::continue_trace(&span, job.traceparent.as_deref());
        self.run_job_traced(delivery, cancel, started, sink)
            .instrument(span)
            .await
    }

    async fn run_job_traced(
        &self,
        delivery: &Delivery,
        cancel: &CancellationToken,
        started: bool,
        sink: &mut EventSink,
    ) -> Result<(), BusError> {
        let job = &delivery.job;
        if !started && !self.bus.try_start(&job.execution_id, &self.id).await? {
            tracing::info!(execution_id = %job.execution_id, "job cancelled before it started");
            metrics::counter!(m::JOBS, "outcome" => "skipped").increment(1);
            return Ok(());
        }
        let started = std::time::Instant::now();
        let waited_ms = (now_ms() - job.enqueued_at_ms).max(0);
        // A sibling of this run's span, below the gateway's `enqueue job`.
        telemetry::record_past_span(
            "queue wait",
            job.traceparent.as_deref(),
            job.enqueued_at_ms,
            vec![("execution_id", job.execution_id.clone())],
        );
        metrics::histogram!(m::QUERY_QUEUE_WAIT, "class" => m::user_class(delivery.user_running))
            .record(waited_ms as f64 / 1000.0);
        let options = self.args.limits.resolve(&job.options);
        // Events continue the trace from this worker's span.
        sink.set_traceparent(telemetry::traceparent_of(
            &tracing::Span::current(),
            job.traceparent.as_deref(),
        ));
        sink.emit(ServerMessage::QueryStarted(QueryStarted {
            execution_id: job.execution_id.clone(),
            timestamp: now_ms(),
            worker_id: Some(self.id.clone()),
        }))
        .await?;
        // Slow followers pause the stream (within the query's time); see window.rs.
        sink.pace(Limits {
            cancel: cancel.clone(),
            deadline: tokio::time::Instant::now() + options.timeout,
            timeout: options.timeout,
        });
        let result = self.engine.execute(job, &options, sink, cancel).await;
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
                reason: None,
            }),
            Err(Failure::NoReaders) => {
                tracing::info!(execution_id = %job.execution_id, "no follower for the resume grace; stopping");
                ServerMessage::QueryCancelled(QueryCancelled {
                    execution_id,
                    timestamp,
                    reason: Some("no_readers".into()),
                })
            }
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
        let outcome = match &terminal {
            ServerMessage::QueryCompleted(_) => "completed",
            ServerMessage::QueryCancelled(_) => "cancelled",
            _ => "error",
        };
        metrics::counter!(m::JOBS, "outcome" => outcome).increment(1);
        tracing::info!(
            outcome,
            duration_ms = started.elapsed().as_millis() as u64,
            "query finished"
        );
        metrics::histogram!(m::QUERY_EXECUTION).record(started.elapsed().as_secs_f64());
        metrics::histogram!(m::QUERY_TOTAL)
            .record((now_ms() - job.enqueued_at_ms).max(0) as f64 / 1000.0);
        sink.emit(terminal).await.map(|_| ())
    }
}

/// The text of a panic's payload (`panic!` with a message gives a `&str` or a `String`).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}
