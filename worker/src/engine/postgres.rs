//! PostgreSQL: each query in its own `READ ONLY` transaction with `statement_timeout`, `lock_timeout`,
//! `idle_in_transaction_session_timeout` and `client_connection_check_interval`, read through a cursor.
//!
//! 1. The query is prepared alone (PostgreSQL refuses several statements in one prepared statement):
//!    that checks it is one statement and gives the columns and their types.
//! 2. `DECLARE c2s_cursor NO SCROLL CURSOR FOR <query>` binds the params; then `FETCH FORWARD n` in the
//!    simple protocol returns every column in PostgreSQL's **text** format, which [`Rule`] maps to JSON
//!    (so every type with a text form is sent, byte for byte as psql shows it). FETCHes of a few dozen
//!    KiB go many to a message, so PostgreSQL computes one batch while the worker encodes the last
//!    (see `stream_cursor`); a FETCH that returns fewer rows than asked ends the result.
//! 3. A statement that cannot be a cursor (`EXPLAIN`, `SHOW`, writes that the read-only transaction
//!    refuses) runs directly; its connection is closed afterwards, so no session state it may have left
//!    (prepared statements, …) reaches another user's query.
//!
//! Cancellation never needs a signal or a privilege: every statement the worker sends races the
//! cancel token and the query's deadline, and losing that race drops the statement and **closes the
//! connection**. PostgreSQL notices the closed socket within `client_connection_check_interval` and
//! aborts the statement, whatever state it was in (even one whose `FETCH` had not reached the server
//! yet: there is nothing a cancel can arrive "too early" for). A connection is returned to the pool only
//! after a clean `ROLLBACK` at a statement boundary.

use std::future::Future;
use std::str::FromStr;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use c2s_shared::bus::Job;
use c2s_shared::codes::QueryErrorCode;
use c2s_shared::protocol::Column;
use futures_util::{FutureExt, StreamExt};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow, PgTypeInfo, PgValueFormat};
use sqlx::Either;
use sqlx::{Column as _, Executor, Postgres, Row, Statement, Type, TypeInfo, ValueRef};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::untraced::Untraced;
use super::{parse_params, Completed, Failure, Param, SqlEngine};
use crate::config::{QueryLimits, ResolvedOptions};
use crate::events::{Chunker, EventSink, Pushed, PROGRESS_EXECUTING};
use crate::pg_text::Rule;

const DECLARE_PREFIX: &str = "DECLARE c2s_cursor NO SCROLL CURSOR FOR ";
/// How long after the query's deadline the worker gives up on a statement itself: PostgreSQL's own
/// `statement_timeout` (set to the time left before each FETCH) normally ends it first, with SQLSTATE
/// 57014. Pauses between statements (a slow reader) end exactly at the deadline.
const DEADLINE_GRACE: Duration = Duration::from_millis(500);
/// `client_connection_check_interval` exists from PostgreSQL 14 on.
const CHECK_INTERVAL_VERSION: u32 = 140_000;

pub struct PostgresEngine {
    pool: PgPool,
    limits: QueryLimits,
    /// Whether the server has `client_connection_check_interval`.
    connection_checks: bool,
}

impl PostgresEngine {
    pub async fn connect(
        url: &str,
        max_connections: u32,
        limits: QueryLimits,
    ) -> Result<PostgresEngine, sqlx::Error> {
        // No statement cache: a user's prepared query must not stay on a pooled connection, where the
        // next user could read its text (pg_prepared_statements) or run it (EXECUTE). Each query's
        // statements are deallocated when its connection goes back to the pool.
        let options = PgConnectOptions::from_str(url)?.statement_cache_capacity(0);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        let version = pool.acquire().await?.server_version_num().unwrap_or(0);
        let connection_checks = version >= CHECK_INTERVAL_VERSION;
        if !connection_checks {
            tracing::warn!(
                server_version_num = version,
                "PostgreSQL before 14 has no client_connection_check_interval: a cancelled or timed-out \
                 statement keeps running on the server until its statement_timeout"
            );
        }
        Ok(PostgresEngine {
            pool,
            limits,
            connection_checks,
        })
    }

    /// The pool (for the start-up check of the role's privileges).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The statement that opens a query's transaction, with its limits and the text formats the
    /// encoders expect, and the savepoint that a failed EXPLAIN or DECLARE rolls back to.
    /// `application_name` names the execution, so that an operator looking at pg_stat_activity (which
    /// shows the cursor's FETCH, not the query) can tell whose statement it is.
    fn begin(&self, options: &ResolvedOptions, execution_id: &str) -> String {
        let timeout = options.timeout.as_millis();
        // Only the characters of an id: nothing that could end the literal.
        let id: String = execution_id
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .take(64)
            .collect();
        let mut sql = format!(
            "BEGIN READ ONLY; SET LOCAL statement_timeout = {timeout}; \
             SET LOCAL lock_timeout = {}; SET LOCAL idle_in_transaction_session_timeout = {}; \
             SET LOCAL DateStyle = 'ISO'; SET LOCAL bytea_output = 'hex'; \
             SET LOCAL extra_float_digits = 1; SET LOCAL application_name = 'c2s {id}'; ",
            options.lock_timeout.as_millis(),
            timeout + 5_000,
        );
        if self.connection_checks {
            sql.push_str(&format!(
                "SET LOCAL client_connection_check_interval = {}; ",
                self.limits.db_cancel_check_ms.max(1)
            ));
        }
        sql.push_str("SAVEPOINT c2s_savepoint");
        sql
    }

    async fn run(
        &self,
        conn: &mut Conn,
        limits: &Interrupts<'_>,
        job: &Job,
        params: &[Param],
        options: &ResolvedOptions,
        sink: &mut EventSink,
    ) -> Result<Completed, Failure> {
        let pg = conn.get();
        limits
            .run((&mut *pg).execute(self.begin(options, &job.execution_id).as_str()))
            .await?;
        let param_types: Vec<PgTypeInfo> = params.iter().map(pg_type_of).collect();
        let statement = limits
            .run((&mut *pg).prepare_with(&job.query, &param_types))
            .await?;
        let types: Vec<PgTypeInfo> = statement
            .columns()
            .iter()
            .map(|c| c.type_info().clone())
            .collect();
        let columns: Vec<Column> = statement
            .columns()
            .iter()
            .map(|c| Column {
                name: c.name().to_owned(),
                type_name: c.type_info().name().to_lowercase(),
            })
            .collect();
        let estimated_rows = if columns.is_empty() {
            Some(0)
        } else {
            estimate_rows(pg, limits, &job.query, params).await?
        };
        sink.progress(PROGRESS_EXECUTING, "executing", None).await?;
        let rows = RowEncoder::new(&columns, &types, options.max_value_bytes, &self.limits);
        let mut chunker = Chunker::new(sink, columns, estimated_rows, options);
        let declare = format!("{DECLARE_PREFIX}{}", job.query);
        let declared = limits
            .run(
                sqlx::query_with(&declare, super::bind_all::<Postgres>(params))
                    .persistent(false)
                    .execute(&mut *pg),
            )
            .await;
        let streamed = match declared {
            Ok(_) => stream_cursor(pg, limits, &rows, &mut chunker).await?,
            Err(f) if not_cursorable(&f) => {
                // Rolled back to before the DECLARE; the statement runs as it is, once.
                conn.reusable = false;
                let pg = conn.get();
                limits
                    .run((&mut *pg).execute("ROLLBACK TO SAVEPOINT c2s_savepoint"))
                    .await?;
                stream_direct(pg, limits, &job.query, params, &rows, &mut chunker).await?
            }
            Err(f) => return Err(shift_position(f, DECLARE_PREFIX.chars().count() as u32)),
        };
        if streamed.mid_statement {
            conn.reusable = false;
        }
        let columns = chunker.columns().to_vec();
        let (row_count, _) = chunker.finish().await?;
        Ok(Completed {
            row_count,
            columns,
            truncated: streamed.truncated,
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
        let started = Instant::now();
        let limits = Interrupts {
            cancel,
            deadline: tokio::time::Instant::now() + options.timeout,
            timeout: options.timeout,
        };
        let params = parse_params(job.options.params.as_deref(), self.limits.max_params)?;
        let mut conn = Conn {
            pg: Some(limits.run(self.pool.acquire()).await?),
            reusable: true,
        };
        let span = super::db_span("postgresql", &job.query);
        let result = self
            .run(&mut conn, &limits, job, &params, options, sink)
            .instrument(span.clone())
            .await
            .map_err(|f| f.classify_cancel(started.elapsed(), options.timeout));
        if let Ok(done) = &result {
            span.record("db.rows", done.row_count);
        }
        // Back to the pool only after a clean end at a statement boundary (a database error ends its
        // statement too); anything else closes the connection, which also stops the statement.
        let reusable = match &result {
            Ok(_) => true,
            Err(f) => f.is_from_database(),
        };
        conn.finish(reusable).await;
        result
    }
}

/// The cancel token and the deadline every statement races.
struct Interrupts<'a> {
    cancel: &'a CancellationToken,
    deadline: tokio::time::Instant,
    timeout: Duration,
}

impl Interrupts<'_> {
    /// Milliseconds left before the deadline, for the next statement's `statement_timeout`.
    fn time_left_ms(&self) -> Result<u128, Failure> {
        let left = self
            .deadline
            .saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return Err(Failure::timeout(self.timeout));
        }
        Ok(left.as_millis().max(1))
    }

    /// Runs one database call unless the query is cancelled or out of time first (then the call is
    /// dropped, and the caller closes the connection).
    async fn run<T>(
        &self,
        call: impl Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, Failure> {
        tokio::select! {
            biased;
            // Cancelled by its client (or the worker is shutting down this query).
            _ = self.cancel.cancelled() => Err(Failure::Cancelled),
            // The query's time is up (and PostgreSQL did not say so first).
            _ = tokio::time::sleep_until(self.deadline + DEADLINE_GRACE) => Err(Failure::timeout(self.timeout)),
            // The call's own result.
            r = call => r.map_err(Failure::from_sqlx),
        }
    }
}

/// A query's pooled connection: returned to the pool only by [`Conn::finish`] with `reusable`,
/// otherwise (and on drop, e.g. while a panic unwinds) detached from the pool and closed.
struct Conn {
    pg: Option<PoolConnection<Postgres>>,
    /// False once something may have left session state behind (a statement run directly).
    reusable: bool,
}

impl Conn {
    fn get(&mut self) -> &mut sqlx::PgConnection {
        // `pg` is only taken by `finish`, which consumes the Conn.
        match self.pg.as_mut() {
            Some(pg) => pg,
            None => unreachable!("a finished connection is not used again"),
        }
    }

    async fn finish(mut self, statement_ended: bool) {
        let Some(mut pg) = self.pg.take() else { return };
        if statement_ended && self.reusable {
            // Ends the transaction (everything was read-only), drops session-level advisory locks (what
            // a SELECT can leave behind) and the query's prepared statements (its text).
            let reset = (&mut *pg)
                .execute("ROLLBACK; SELECT pg_advisory_unlock_all(); DEALLOCATE ALL")
                .await;
            if reset.is_ok() {
                return;
            }
        }
        drop(pg.detach());
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(pg) = self.pg.take() {
            drop(pg.detach());
        }
    }
}

/// How a streaming loop ended.
struct Streamed {
    truncated: bool,
    /// It stopped while a statement was still sending rows (the connection must be closed).
    mid_statement: bool,
}

/// FETCHes the declared cursor until it is exhausted or a cap is reached.
///
/// PostgreSQL computes a whole FETCH before it sends its first row (FETCH is a utility statement whose
/// result goes through the portal's store), so one FETCH of everything would not stream, and FETCHes
/// sent one at a time would leave PostgreSQL idle while the worker encodes each batch. So the FETCHes go
/// [`FETCHES_PER_MESSAGE`] to a simple-protocol message: PostgreSQL runs them back to back, computing
/// the next batch while the worker encodes the previous one, and a batch is sized from the rows seen
/// so far to about [`FETCH_TARGET_BYTES`]. A FETCH that returns fewer rows than asked ends the result.
async fn stream_cursor(
    pg: &mut sqlx::PgConnection,
    limits: &Interrupts<'_>,
    rows: &RowEncoder,
    chunker: &mut Chunker<'_>,
) -> Result<Streamed, Failure> {
    // One row beyond the cap tells whether the cap cut the result.
    let mut left_to_ask = chunker.max_rows().saturating_add(1);
    loop {
        let batch = fetch_batch_rows(chunker.average_row_bytes());
        let mut sql = format!(
            // The statements may take what is left of the query's time, pauses before them included.
            "SET LOCAL statement_timeout = {}",
            limits.time_left_ms()?
        );
        let mut asked = Vec::new();
        while asked.len() < FETCHES_PER_MESSAGE && left_to_ask > 0 {
            let n = batch.min(left_to_ask);
            sql.push_str(&format!("; FETCH FORWARD {n} FROM c2s_cursor"));
            asked.push(n);
            left_to_ask -= n;
        }
        let conn = &mut *pg;
        let sql = sql.as_str();
        let mut stream = Untraced::new(move || conn.fetch_many(sql));
        // The first result is the SET's; then one per FETCH, after its rows.
        let (mut results, mut in_fetch, mut exhausted) = (0usize, 0u64, false);
        while let Some(item) = next_item(limits, &mut stream).await? {
            match item {
                Either::Right(row) => {
                    in_fetch += 1;
                    if rows.push(chunker, &row).await? == Pushed::Full {
                        return Ok(Streamed {
                            truncated: true,
                            mid_statement: true,
                        });
                    }
                }
                Either::Left(_) => {
                    if results > 0 && in_fetch < asked[results - 1] {
                        exhausted = true;
                    }
                    results += 1;
                    in_fetch = 0;
                }
            }
        }
        if exhausted || left_to_ask == 0 {
            return Ok(Streamed {
                truncated: false,
                mid_statement: false,
            });
        }
    }
}

/// FETCHes of one message (see [`stream_cursor`]).
const FETCHES_PER_MESSAGE: usize = 64;
/// Bytes of JSON one FETCH aims at: small enough that a batch is computed and sent quickly, large
/// enough that statements are not the cost.
const FETCH_TARGET_BYTES: u64 = 64 * 1024;

/// Rows of one FETCH for rows of this average size (before any row: a guess for narrow rows).
fn fetch_batch_rows(average_row_bytes: u64) -> u64 {
    match average_row_bytes {
        0 => 256,
        bytes => (FETCH_TARGET_BYTES / bytes).clamp(16, 4096),
    }
}

/// Runs a statement that cannot be a cursor and streams whatever rows it returns.
async fn stream_direct(
    pg: &mut sqlx::PgConnection,
    limits: &Interrupts<'_>,
    sql: &str,
    params: &[Param],
    rows: &RowEncoder,
    chunker: &mut Chunker<'_>,
) -> Result<Streamed, Failure> {
    // Without params the simple protocol returns text, like FETCH; with params the rows are binary
    // and only text-like columns can be sent (see `RowEncoder::binary_cell`).
    let conn = &mut *pg;
    let mut stream = Untraced::new(move || {
        if params.is_empty() {
            conn.fetch(sql)
        } else {
            sqlx::query_with(sql, super::bind_all::<Postgres>(params))
                .persistent(false)
                .fetch(conn)
        }
    });
    while let Some(row) = next_item(limits, &mut stream).await? {
        if rows.push(chunker, &row).await? == Pushed::Full {
            return Ok(Streamed {
                truncated: true,
                mid_statement: true,
            });
        }
    }
    Ok(Streamed {
        truncated: false,
        mid_statement: false,
    })
}

/// The next row of a statement's stream (or, for several statements, the next row or end of one). An
/// item already received is taken at once (only the cancel flag is looked at); waiting for one races
/// the cancel and the deadline, like every statement.
async fn next_item<T>(
    limits: &Interrupts<'_>,
    stream: &mut (impl futures_util::Stream<Item = Result<T, sqlx::Error>> + Unpin),
) -> Result<Option<T>, Failure> {
    if limits.cancel.is_cancelled() {
        return Err(Failure::Cancelled);
    }
    match stream.next().now_or_never() {
        Some(ready) => ready.transpose().map_err(Failure::from_sqlx),
        None => limits.run(async { stream.next().await.transpose() }).await,
    }
}

/// Turns rows into JSON with each column's rule, and enforces the largest value.
struct RowEncoder {
    names: Vec<String>,
    type_names: Vec<String>,
    rules: Vec<Rule>,
    max_value_bytes: usize,
    /// Fault injection (debug builds): panic on this value's text.
    #[cfg(debug_assertions)]
    panic_on: Option<String>,
}

impl RowEncoder {
    fn new(
        columns: &[Column],
        types: &[PgTypeInfo],
        max_value_bytes: usize,
        #[cfg_attr(not(debug_assertions), allow(unused_variables))] limits: &QueryLimits,
    ) -> RowEncoder {
        RowEncoder {
            names: columns.iter().map(|c| c.name.clone()).collect(),
            type_names: columns.iter().map(|c| c.type_name.clone()).collect(),
            rules: types.iter().map(Rule::for_type).collect(),
            max_value_bytes,
            #[cfg(debug_assertions)]
            panic_on: limits.debug_panic_on_value.clone(),
        }
    }

    async fn push(&self, chunker: &mut Chunker<'_>, row: &PgRow) -> Result<Pushed, Failure> {
        let row_number = chunker.total_rows() + 1;
        chunker
            .push_row(|i, out| self.cell(row, i, row_number, out))
            .await
    }

    fn cell(
        &self,
        row: &PgRow,
        i: usize,
        row_number: u64,
        out: &mut Vec<u8>,
    ) -> Result<(), Failure> {
        let raw = row
            .try_get_raw(i)
            .map_err(|e| self.failed(i, row_number, &e))?;
        if raw.is_null() {
            out.extend_from_slice(b"null");
            return Ok(());
        }
        let binary = raw.format() == PgValueFormat::Binary;
        let bytes = raw.as_bytes().map_err(|e| self.failed(i, row_number, &e))?;
        if bytes.len() > self.max_value_bytes {
            return Err(Failure::query(
                QueryErrorCode::ValueTooLarge,
                format!(
                    "column `{}` of row {row_number} holds {} bytes; the largest value sent is \
                     C2S_MAX_VALUE_BYTES ({}): select a part of it, e.g. left({0}::text, 1000)",
                    self.names[i],
                    bytes.len(),
                    self.max_value_bytes
                ),
            ));
        }
        #[cfg(debug_assertions)]
        if self.panic_on.as_deref().map(str::as_bytes) == Some(bytes) {
            panic!(
                "fault injection: --debug-panic-on-value matched column `{}`",
                self.names[i]
            );
        }
        let written = if binary {
            self.binary_cell(i, bytes, out)
        } else {
            self.rules[i].encode(bytes, out).map_err(|e| e.0)
        };
        written.map_err(|e| self.failed(i, row_number, &e))
    }

    /// A directly run statement with params returns binary values: only text-like ones have the
    /// same bytes as their text form.
    fn binary_cell(&self, i: usize, bytes: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        match self.type_names[i].as_str() {
            "text" | "varchar" | "bpchar" | "name" | "unknown" | "json" => {
                let rule = if self.type_names[i] == "json" {
                    Rule::Json
                } else {
                    Rule::Text
                };
                rule.encode(bytes, out).map_err(|e| e.0)
            }
            "jsonb" => match bytes.split_first() {
                Some((1, json)) => Rule::Json.encode(json, out).map_err(|e| e.0),
                _ => Err("unknown jsonb binary version".into()),
            },
            other => Err(format!(
                "a `{other}` column of a statement run with params cannot be sent; cast it to text"
            )),
        }
    }

    fn failed(&self, i: usize, row_number: u64, e: &dyn std::fmt::Display) -> Failure {
        Failure::query(
            QueryErrorCode::Internal,
            format!(
                "column `{}` ({}) of row {row_number} could not be sent: {e}",
                self.names[i], self.type_names[i]
            ),
        )
    }
}

/// A DECLARE refused for the statement's kind (it is not a query: EXPLAIN, SHOW, a write, …).
fn not_cursorable(f: &Failure) -> bool {
    matches!(f, Failure::Query(d) if matches!(d.sqlstate.as_deref(), Some("42601" | "0A000")))
}

/// A position reported for the DECLARE statement, moved back onto the user's query.
fn shift_position(f: Failure, prefix: u32) -> Failure {
    match f {
        Failure::Query(mut d) => {
            d.position = d
                .position
                .and_then(|p| p.checked_sub(prefix))
                .filter(|p| *p > 0);
            Failure::Query(d)
        }
        other => other,
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
/// A failing EXPLAIN rolls back to the transaction's savepoint, so the query itself still runs.
async fn estimate_rows(
    pg: &mut sqlx::PgConnection,
    limits: &Interrupts<'_>,
    sql: &str,
    params: &[Param],
) -> Result<Option<u64>, Failure> {
    let explain = format!("EXPLAIN (FORMAT JSON) {sql}");
    let plan: Result<serde_json::Value, Failure> = limits
        .run(
            sqlx::query_scalar_with(&explain, super::bind_all::<Postgres>(params))
                .persistent(false)
                .fetch_one(&mut *pg),
        )
        .await;
    let plan = match plan {
        Ok(plan) => plan,
        // Cancelled or out of time: the query ends here.
        Err(f) if !f.is_from_database() => return Err(f),
        Err(_) => {
            limits
                .run((&mut *pg).execute("ROLLBACK TO SAVEPOINT c2s_savepoint"))
                .await?;
            return Ok(None);
        }
    };
    Ok(plan
        .get(0)
        .and_then(|p| p.get("Plan"))
        .and_then(|p| p.get("Plan Rows"))
        .and_then(|r| r.as_f64())
        .map(|r| r.max(0.0) as u64))
}
