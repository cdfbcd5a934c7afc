//! PostgreSQL: each query in its own `READ ONLY` transaction with `statement_timeout`, `lock_timeout`
//! and `idle_in_transaction_session_timeout`, prepared first (one statement only: PostgreSQL refuses
//! several commands in a prepared statement), rows read as a stream (never the whole result), and
//! cancellation or truncation stopping the SQL on the server with `pg_cancel_backend`.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use c2s_shared::bus::Job;
use c2s_shared::codes::QueryErrorCode;
use c2s_shared::protocol::Column;
use futures_util::StreamExt;
use sqlx::postgres::{PgPool, PgPoolOptions, PgTypeInfo};
use sqlx::{Column as _, Executor, Postgres, Statement, Type, TypeInfo};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{parse_params, Completed, Failure, Param, SqlEngine};
use crate::config::{QueryLimits, ResolvedOptions};
use crate::events::{shape_row, Chunker, EventSink, PROGRESS_EXECUTING};
use crate::sql_json::PgDecoder;

/// After a cancel or truncation, how long the rest of the result may take to drain before the
/// connection is closed instead of returned to the pool.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

pub struct PostgresEngine {
    pool: PgPool,
    limits: QueryLimits,
}

enum Stop {
    Cancelled,
    Truncated,
}

impl PostgresEngine {
    pub async fn connect(
        url: &str,
        max_connections: u32,
        limits: QueryLimits,
    ) -> Result<PostgresEngine, sqlx::Error> {
        let pool = PgPoolOptions::new()
            // +1: cancelling a query needs a second connection while the first is busy.
            .max_connections(max_connections + 1)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await?;
        Ok(PostgresEngine { pool, limits })
    }

    /// Stops whatever `pid` is running (our own backend), from another connection.
    async fn cancel_backend(&self, pid: i32) {
        let r = sqlx::query("SELECT pg_cancel_backend($1)")
            .bind(pid)
            .execute(&self.pool)
            .await;
        if let Err(e) = r {
            tracing::warn!(pid, error = %e, "pg_cancel_backend failed");
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn stream(
        &self,
        conn: &mut sqlx::PgConnection,
        pid: i32,
        job: &Job,
        options: &ResolvedOptions,
        sink: &mut EventSink,
        cancel: &CancellationToken,
    ) -> Result<Completed, Failure> {
        let params = parse_params(job.options.params.as_deref(), self.limits.max_params)?;
        let param_types: Vec<PgTypeInfo> = params.iter().map(pg_type_of).collect();
        let statement = conn
            .prepare_with(&job.query, &param_types)
            .await
            .map_err(Failure::from_sqlx)?;
        let columns: Vec<Column> = statement
            .columns()
            .iter()
            .map(|c| Column {
                name: c.name().to_owned(),
                type_name: c.type_info().name().to_lowercase(),
            })
            .collect();
        let decoders: Vec<PgDecoder> = columns
            .iter()
            .map(|c| PgDecoder::for_type(&c.type_name))
            .collect();
        let estimated_rows = if columns.is_empty() {
            Some(0)
        } else {
            estimate_rows(conn, &job.query, &params).await
        };
        sink.progress(PROGRESS_EXECUTING, "executing", None).await?;
        let mut chunker = Chunker::start(sink, columns, estimated_rows, options).await?;

        let mut stop: Option<Stop> = None;
        let mut drain_deadline: Option<Instant> = None;
        let mut failure: Option<Failure> = None;
        {
            let mut rows = sqlx::query_with(&job.query, super::bind_all::<sqlx::Postgres>(&params))
                .fetch(&mut *conn);
            loop {
                if drain_deadline.is_some_and(|d| Instant::now() > d) {
                    // The server did not stop in time: the caller closes this connection.
                    failure = Some(Failure::query(
                        QueryErrorCode::Internal,
                        "query did not stop",
                    ));
                    break;
                }
                let next = tokio::select! {
                    biased;
                    // Cancel request from the client: stop the SQL on the server, then drain.
                    _ = cancel.cancelled(), if stop.is_none() => {
                        stop = Some(Stop::Cancelled);
                        drain_deadline = Some(Instant::now() + DRAIN_LIMIT);
                        self.cancel_backend(pid).await;
                        continue;
                    }
                    // The next row (or the end, or an error) from the server.
                    next = rows.next() => next,
                };
                match next {
                    None => break,
                    Some(Err(e)) if stop.is_some() => {
                        tracing::debug!(error = %e, "stream ended by our cancel");
                        break;
                    }
                    Some(Err(e)) => {
                        failure = Some(Failure::from_sqlx(e));
                        break;
                    }
                    Some(Ok(_)) if stop.is_some() => continue,
                    Some(Ok(_)) if chunker.is_full() => {
                        stop = Some(Stop::Truncated);
                        drain_deadline = Some(Instant::now() + DRAIN_LIMIT);
                        self.cancel_backend(pid).await;
                    }
                    Some(Ok(row)) => {
                        let cells = decoders
                            .iter()
                            .enumerate()
                            .map(|(i, d)| d.decode(&row, i))
                            .collect::<Result<Vec<_>, _>>();
                        let cells = match cells {
                            Ok(c) => c,
                            Err(e) => {
                                failure = Some(Failure::query(QueryErrorCode::Internal, e));
                                stop = Some(Stop::Cancelled);
                                drain_deadline = Some(Instant::now() + DRAIN_LIMIT);
                                self.cancel_backend(pid).await;
                                continue;
                            }
                        };
                        let row = shape_row(chunker.columns(), cells, chunker.row_format());
                        if let Err(e) = chunker.push(row).await {
                            failure = Some(e.into());
                            stop = Some(Stop::Cancelled);
                            drain_deadline = Some(Instant::now() + DRAIN_LIMIT);
                            self.cancel_backend(pid).await;
                        }
                    }
                }
            }
        }
        if let Some(f) = failure {
            return Err(f);
        }
        if matches!(stop, Some(Stop::Cancelled)) {
            return Err(Failure::Cancelled);
        }
        let columns = chunker.columns().to_vec();
        let (row_count, _) = chunker.finish().await?;
        Ok(Completed {
            row_count,
            columns,
            truncated: matches!(stop, Some(Stop::Truncated)),
        })
    }
}

#[async_trait]
impl SqlEngine for PostgresEngine {
    async fn execute(
        &self,
        job: &Job,
        options: &ResolvedOptions,
        sink: &mut EventSink,
        cancel: &CancellationToken,
    ) -> Result<Completed, Failure> {
        let mut conn = self.pool.acquire().await.map_err(Failure::from_sqlx)?;
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut *conn)
            .await
            .map_err(Failure::from_sqlx)?;
        // Numbers only: safe to format into the statement.
        let begin = format!(
            "BEGIN READ ONLY; SET LOCAL statement_timeout = {}; SET LOCAL lock_timeout = {}; \
             SET LOCAL idle_in_transaction_session_timeout = {}",
            options.timeout.as_millis(),
            options.lock_timeout.as_millis(),
            options.timeout.as_millis() + 5_000,
        );
        (&mut *conn)
            .execute(begin.as_str())
            .await
            .map_err(Failure::from_sqlx)?;
        let span = super::db_span("postgresql", &job.query);
        let result = self
            .stream(&mut conn, pid, job, options, sink, cancel)
            .instrument(span.clone())
            .await;
        if let Ok(done) = &result {
            span.record("db.rows", done.row_count);
        }
        // Nothing to keep: the transaction was read-only. A connection in doubt (an internal error,
        // a query that would not stop, a lost bus) or that cannot roll back is closed, not reused.
        let clean = match &result {
            Ok(_) | Err(Failure::Cancelled) => true,
            Err(Failure::Query(detail)) => detail.code != QueryErrorCode::Internal,
            Err(Failure::Bus(_)) => false,
        };
        if !clean || (&mut *conn).execute("ROLLBACK").await.is_err() {
            let _ = conn.close().await;
        }
        result
    }
}

fn pg_type_of(p: &Param) -> PgTypeInfo {
    match p {
        Param::Null | Param::Text(_) => <String as Type<Postgres>>::type_info(),
        Param::Bool(_) => <bool as Type<Postgres>>::type_info(),
        Param::Int(_) => <i64 as Type<Postgres>>::type_info(),
        Param::Float(_) => <f64 as Type<Postgres>>::type_info(),
    }
}

/// The planner's row estimate (`EXPLAIN`, which does not run the query), or None if it cannot tell.
async fn estimate_rows(conn: &mut sqlx::PgConnection, sql: &str, params: &[Param]) -> Option<u64> {
    // A savepoint keeps a failing EXPLAIN from aborting the query's transaction.
    (&mut *conn).execute("SAVEPOINT c2s_estimate").await.ok()?;
    let explain = format!("EXPLAIN (FORMAT JSON) {sql}");
    let plan: Result<serde_json::Value, _> =
        sqlx::query_scalar_with(&explain, super::bind_all::<sqlx::Postgres>(params))
            .persistent(false)
            .fetch_one(&mut *conn)
            .await;
    let release = if plan.is_ok() {
        "RELEASE SAVEPOINT c2s_estimate"
    } else {
        "ROLLBACK TO SAVEPOINT c2s_estimate"
    };
    (&mut *conn).execute(release).await.ok()?;
    plan.ok()?
        .get(0)?
        .get("Plan")?
        .get("Plan Rows")?
        .as_f64()
        .map(|r| r.max(0.0) as u64)
}
