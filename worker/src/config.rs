//! Worker settings: every limit is a flag and a `C2S_*` variable with a documented default.

use std::time::Duration;

use c2s_shared::protocol::{QueryOptions, RowFormat};

/// Per-query limits. A request's `options` may ask for less, never for more.
#[derive(clap::Args, Debug, Clone)]
pub struct QueryLimits {
    /// Row cap of a query; a larger result is cut and reported with `truncated: true`.
    #[arg(long, env = "C2S_MAX_ROWS", default_value_t = 1_000_000)]
    pub max_rows: u64,

    /// Byte cap of a query's streamed result (encoded chunks); a larger result is cut after the chunk that
    /// crosses it and reported with `truncated: true`.
    #[arg(long, env = "C2S_MAX_RESULT_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub max_result_bytes: u64,

    /// Largest `data_chunk` frame, in bytes: a chunk is cut by bytes as well as by rows. A row that
    /// cannot fit in one chunk ends the query with `value_too_large`.
    #[arg(long, env = "C2S_MAX_CHUNK_BYTES", default_value_t = 1024 * 1024)]
    pub max_chunk_bytes: usize,

    /// Largest single value sent, in bytes of its text; a larger one ends the query with
    /// `value_too_large` naming the column and the row (select a part of it instead).
    #[arg(long, env = "C2S_MAX_VALUE_BYTES", default_value_t = 512 * 1024)]
    pub max_value_bytes: usize,

    /// How often (ms) PostgreSQL checks, while a statement runs, that the worker is still connected
    /// (`client_connection_check_interval`): the worker cancels a statement by closing its connection,
    /// and this bounds how long the database keeps running it afterwards.
    #[arg(long, env = "C2S_DB_CANCEL_CHECK_MS", default_value_t = 250)]
    pub db_cancel_check_ms: u64,

    /// Rows per `data_chunk` when the request does not say.
    #[arg(long, env = "C2S_DEFAULT_CHUNK_SIZE", default_value_t = 500)]
    pub default_chunk_size: u32,

    /// Largest `chunkSize` a request may ask for.
    #[arg(long, env = "C2S_MAX_CHUNK_SIZE", default_value_t = 10_000)]
    pub max_chunk_size: u32,

    /// Statement timeout (ms) when the request does not say.
    #[arg(long, env = "C2S_STATEMENT_TIMEOUT_MS", default_value_t = 30_000)]
    pub statement_timeout_ms: u64,

    /// Largest `timeoutMs` a request may ask for.
    #[arg(long, env = "C2S_MAX_STATEMENT_TIMEOUT_MS", default_value_t = 300_000)]
    pub max_statement_timeout_ms: u64,

    /// `lock_timeout` (ms) of the query's transaction.
    #[arg(long, env = "C2S_LOCK_TIMEOUT_MS", default_value_t = 5_000)]
    pub lock_timeout_ms: u64,

    /// Minimum interval (ms) between two `query_progress` events while streaming.
    #[arg(long, env = "C2S_PROGRESS_INTERVAL_MS", default_value_t = 250)]
    pub progress_interval_ms: u64,

    /// Largest number of bind parameters (`options.params`) a query may carry.
    #[arg(long, env = "C2S_MAX_PARAMS", default_value_t = 100)]
    pub max_params: usize,

    /// Fault injection for the tests of the panic safety net (debug builds only): the value encoder
    /// panics on a value whose text is exactly this.
    #[cfg(debug_assertions)]
    #[arg(long, hide = true)]
    pub debug_panic_on_value: Option<String>,
}

impl Default for QueryLimits {
    fn default() -> Self {
        QueryLimits {
            max_rows: 1_000_000,
            max_result_bytes: 256 * 1024 * 1024,
            max_chunk_bytes: 1024 * 1024,
            max_value_bytes: 512 * 1024,
            db_cancel_check_ms: 250,
            default_chunk_size: 500,
            max_chunk_size: 10_000,
            statement_timeout_ms: 30_000,
            max_statement_timeout_ms: 300_000,
            lock_timeout_ms: 5_000,
            progress_interval_ms: 250,
            max_params: 100,
            #[cfg(debug_assertions)]
            debug_panic_on_value: None,
        }
    }
}

/// The smallest `C2S_MAX_CHUNK_BYTES` honoured: room for a frame's envelope and a few rows.
pub const MIN_CHUNK_BYTES: usize = 4096;

/// A request's options, clamped to the limits.
#[derive(Debug, Clone)]
pub struct ResolvedOptions {
    pub max_rows: u64,
    pub max_bytes: u64,
    pub chunk_size: u32,
    /// Largest `data_chunk` frame in bytes.
    pub chunk_bytes: usize,
    /// Largest single value in bytes.
    pub max_value_bytes: usize,
    pub timeout: Duration,
    pub lock_timeout: Duration,
    pub row_format: RowFormat,
    pub progress_interval: Duration,
}

impl QueryLimits {
    pub fn resolve(&self, options: &QueryOptions) -> ResolvedOptions {
        ResolvedOptions {
            max_rows: options.max_rows.unwrap_or(self.max_rows).min(self.max_rows),
            max_bytes: self.max_result_bytes.max(1),
            chunk_size: options
                .chunk_size
                .unwrap_or(self.default_chunk_size)
                .clamp(1, self.max_chunk_size.max(1)),
            chunk_bytes: self.max_chunk_bytes.max(MIN_CHUNK_BYTES),
            max_value_bytes: self.max_value_bytes.max(1),
            timeout: Duration::from_millis(
                options
                    .timeout_ms
                    .unwrap_or(self.statement_timeout_ms)
                    .clamp(1, self.max_statement_timeout_ms.max(1)),
            ),
            lock_timeout: Duration::from_millis(self.lock_timeout_ms),
            row_format: options.row_format.unwrap_or_default(),
            progress_interval: Duration::from_millis(self.progress_interval_ms),
        }
    }
}

/// How the worker takes jobs.
#[derive(clap::Args, Debug, Clone)]
pub struct WorkerArgs {
    /// Name of this worker in the job queue's claims and slot registry (default: `worker-<random>`).
    #[arg(long, env = "C2S_WORKER_ID")]
    pub worker_id: Option<String>,

    /// Queries run at once by this worker.
    #[arg(long, env = "C2S_CONCURRENCY", default_value_t = 4)]
    pub concurrency: usize,

    /// How long (ms) one blocking read of the job queue waits before looking again.
    #[arg(long, env = "C2S_JOB_POLL_MS", default_value_t = 2_000)]
    pub job_poll_ms: u64,

    /// The lease of a job (ms): a job whose worker has not renewed it for this long is presumed orphaned
    /// (its worker died) and reclaimed by another worker: ended with `worker_lost` if it was running,
    /// run if it never started. Lower detects a dead worker sooner; higher tolerates longer stalls
    /// between a live worker and Redis (a stall longer than this ends its running queries).
    #[arg(long, env = "C2S_JOB_CLAIM_IDLE_MS", default_value_t = 3_000)]
    pub job_claim_idle_ms: u64,

    /// Fair share: while other users have jobs waiting, a user whose jobs hold this share of all
    /// workers' slots (at least one slot) is given no more until they are served (0 < share <= 1).
    /// Waiting users are always served fewest-running-first, so with 1 only that order applies.
    #[arg(long, env = "C2S_USER_SLOT_SHARE", default_value_t = 0.5)]
    pub user_slot_share: f64,

    /// Free slots (over all workers) that a user already running a query may not take: kept for a
    /// user with nothing running, whose first query then starts within one wake-up (well under 1 s)
    /// instead of when some running query ends. 0: a user alone gets every slot.
    #[arg(long, env = "C2S_RESERVED_SLOTS", default_value_t = 0)]
    pub reserved_slots: usize,

    /// How often (ms) a worker renews the leases of the jobs it runs, on a task of its own (off the
    /// query path). Keep it at most a third of `C2S_JOB_CLAIM_IDLE_MS`.
    #[arg(long, env = "C2S_JOB_LEASE_RENEW_MS", default_value_t = 1_000)]
    pub job_lease_renew_ms: u64,

    /// How often (ms) a worker looks for expired leases of other workers' jobs (the time from a lease's
    /// expiry to its job being taken over is at most this).
    #[arg(long, env = "C2S_JOB_RECLAIM_INTERVAL_MS", default_value_t = 500)]
    pub job_reclaim_interval_ms: u64,

    /// On shutdown, how long (ms) running queries may take to finish before the worker exits anyway.
    #[arg(long, env = "C2S_WORKER_GRACE_MS", default_value_t = 10_000)]
    pub grace_ms: u64,

    #[command(flatten)]
    pub limits: QueryLimits,
}

impl WorkerArgs {
    pub fn fairness(&self) -> c2s_shared::bus::Fairness {
        c2s_shared::bus::Fairness {
            share: if self.user_slot_share > 0.0 {
                self.user_slot_share.min(1.0)
            } else {
                1.0
            },
            reserved: self.reserved_slots,
        }
    }

    pub fn worker_id(&self) -> String {
        self.worker_id.clone().unwrap_or_else(|| {
            format!("worker-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_clamped_to_limits() {
        let limits = QueryLimits::default();
        let r = limits.resolve(&QueryOptions {
            max_rows: Some(u64::MAX),
            chunk_size: Some(0),
            timeout_ms: Some(u64::MAX),
            ..Default::default()
        });
        assert_eq!(r.max_rows, limits.max_rows);
        assert_eq!(r.chunk_size, 1);
        assert_eq!(
            r.timeout,
            Duration::from_millis(limits.max_statement_timeout_ms)
        );
        let r = limits.resolve(&QueryOptions::default());
        assert_eq!(r.chunk_size, limits.default_chunk_size);
        assert_eq!(r.row_format, RowFormat::Objects);
    }
}
