//! SQLite, for the embedded demo: a read-only connection pool over a demo database this module creates
//! and fills with sample data. Same limits, chunking and cancellation as PostgreSQL; the timeout is
//! enforced by the worker (SQLite has no statement_timeout).

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use c2s_shared::bus::Job;
use c2s_shared::codes::QueryErrorCode;
use c2s_shared::protocol::Column;
use futures_util::StreamExt;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use sqlx::{Column as _, ConnectOptions, Connection, Executor, Statement, TypeInfo};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{parse_params, Completed, Failure, SqlEngine};
use crate::config::{QueryLimits, ResolvedOptions};
use crate::events::{Chunker, EventSink, Pushed, PROGRESS_EXECUTING};
use crate::sql_json::sqlite_cell;

pub struct SqliteEngine {
    pool: SqlitePool,
    limits: QueryLimits,
    path: PathBuf,
}

/// The demo schema and data: customers, products and orders, deterministic.
const DEMO_SQL: &str = r#"
CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, country TEXT NOT NULL, created_at TEXT NOT NULL);
CREATE TABLE products (id INTEGER PRIMARY KEY, name TEXT NOT NULL, category TEXT NOT NULL, price REAL NOT NULL);
CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL REFERENCES customers(id),
                     product_id INTEGER NOT NULL REFERENCES products(id), quantity INTEGER NOT NULL,
                     amount REAL NOT NULL, ordered_at TEXT NOT NULL);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 50)
INSERT INTO customers
SELECT i,
       (ARRAY_NAME.v) || ' ' || i,
       CASE i % 5 WHEN 0 THEN 'CN' WHEN 1 THEN 'US' WHEN 2 THEN 'DE' WHEN 3 THEN 'BR' ELSE 'JP' END,
       date('2024-01-01', '+' || (i * 7) || ' days')
FROM n, (SELECT 'Customer' AS v) AS ARRAY_NAME;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20)
INSERT INTO products
SELECT i, 'Product ' || i,
       CASE i % 4 WHEN 0 THEN 'books' WHEN 1 THEN 'games' WHEN 2 THEN 'tools' ELSE 'food' END,
       round(5 + (i * 37 % 200) + 0.99, 2)
FROM n;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000)
INSERT INTO orders
SELECT i, 1 + (i * 17 % 50), 1 + (i * 7 % 20), 1 + i % 5,
       round((1 + i % 5) * (5 + ((1 + (i * 7 % 20)) * 37 % 200) + 0.99), 2),
       datetime('2025-01-01', '+' || (i * 13) || ' hours')
FROM n;
"#;

impl SqliteEngine {
    /// Opens `path` read-only for queries; creates it with the demo data first if it does not exist.
    pub async fn open(
        path: &Path,
        max_connections: u32,
        limits: QueryLimits,
    ) -> Result<SqliteEngine, sqlx::Error> {
        if !path.exists() {
            let mut conn = SqliteConnectOptions::new()
                .filename(path)
                .create_if_missing(true)
                .connect()
                .await?;
            sqlx::raw_sql(DEMO_SQL).execute(&mut conn).await?;
            conn.close().await?;
            tracing::info!(path = %path.display(), "created the SQLite demo database");
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections.max(1))
            .connect_with(SqliteConnectOptions::new().filename(path).read_only(true))
            .await?;
        Ok(SqliteEngine {
            pool,
            limits,
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[async_trait]
impl SqlEngine for SqliteEngine {
    async fn execute(
        &self,
        job: &Job,
        options: &ResolvedOptions,
        sink: &mut EventSink,
        cancel: &CancellationToken,
    ) -> Result<Completed, Failure> {
        let span = super::db_span("sqlite", &job.query);
        let result = self
            .run(job, options, sink, cancel)
            .instrument(span.clone())
            .await;
        if let Ok(done) = &result {
            span.record("db.rows", done.row_count);
        }
        result
    }
}

impl SqliteEngine {
    /// Runs the statement and streams its rows (the body of [`SqlEngine::execute`], in its span).
    async fn run(
        &self,
        job: &Job,
        options: &ResolvedOptions,
        sink: &mut EventSink,
        cancel: &CancellationToken,
    ) -> Result<Completed, Failure> {
        let deadline = tokio::time::Instant::now() + options.timeout;
        let params = parse_params(job.options.params.as_deref(), self.limits.max_params)?;
        let mut conn = self.pool.acquire().await.map_err(Failure::from_sqlx)?;
        let statement = conn.prepare(&job.query).await.map_err(Failure::from_sqlx)?;
        let columns: Vec<Column> = statement
            .columns()
            .iter()
            .map(|c| Column {
                name: c.name().to_owned(),
                type_name: c.type_info().name().to_lowercase(),
            })
            .collect();
        sink.progress(PROGRESS_EXECUTING, "executing", None).await?;
        let mut chunker = Chunker::new(sink, columns, None, options);
        let mut truncated = false;
        let mut rows = sqlx::query_with(&job.query, super::bind_all::<sqlx::Sqlite>(&params))
            .fetch(&mut *conn);
        loop {
            let next = tokio::select! {
                biased;
                // Cancel request: dropping the stream stops SQLite's statement.
                _ = cancel.cancelled() => return Err(Failure::Cancelled),
                // The query's time is up.
                _ = tokio::time::sleep_until(deadline) => return Err(Failure::timeout(options.timeout)),
                // The next row.
                next = rows.next() => next,
            };
            match next {
                None => break,
                Some(Err(e)) => return Err(Failure::from_sqlx(e)),
                Some(Ok(row)) => {
                    let cells = (0..chunker.columns().len())
                        .map(|i| sqlite_cell(&row, i))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| Failure::query(QueryErrorCode::Internal, e))?;
                    if let Some(i) = cells
                        .iter()
                        .position(|c| value_bytes(c) > options.max_value_bytes)
                    {
                        return Err(Failure::query(
                            QueryErrorCode::ValueTooLarge,
                            format!(
                                "column `{}` of row {} is larger than C2S_MAX_VALUE_BYTES ({})",
                                chunker.columns()[i].name,
                                chunker.total_rows() + 1,
                                options.max_value_bytes
                            ),
                        ));
                    }
                    let pushed = chunker
                        .push_row(|i, out| {
                            serde_json::to_writer(out, &cells[i]).map_err(|e| {
                                Failure::query(QueryErrorCode::Internal, e.to_string())
                            })
                        })
                        .await?;
                    if pushed == Pushed::Full {
                        truncated = true;
                        break;
                    }
                }
            }
        }
        drop(rows);
        let columns = chunker.columns().to_vec();
        let (row_count, _) = chunker.finish().await?;
        Ok(Completed {
            row_count,
            columns,
            truncated,
        })
    }
}

/// The size of a value's text or bytes (what `C2S_MAX_VALUE_BYTES` bounds).
fn value_bytes(value: &serde_json::Value) -> usize {
    match value {
        serde_json::Value::String(s) => s.len(),
        _ => 0,
    }
}

/// The default demo database file: one per process, under the system temp directory.
pub fn default_demo_path() -> PathBuf {
    std::env::temp_dir().join(format!("c2s-demo-{}.db", std::process::id()))
}

/// Removes a demo database file this process created (best effort).
pub fn remove_demo(path: &Path) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}
