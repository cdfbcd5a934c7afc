//! The databases a worker can run queries on, behind one trait. Both stream rows through the same
//! [`Chunker`](crate::events::Chunker) and honour the same limits and cancellation.

pub mod postgres;
pub mod sqlite;
mod untraced;

use async_trait::async_trait;
use c2s_shared::bus::Job;
use c2s_shared::codes::QueryErrorCode;
use c2s_shared::protocol::Column;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::config::ResolvedOptions;
use crate::events::EventSink;
pub use crate::failure::Failure;

/// What a successful run reports for `query_completed`.
#[derive(Debug, Clone)]
pub struct Completed {
    pub row_count: u64,
    pub columns: Vec<Column>,
    pub truncated: bool,
}

#[async_trait]
pub trait SqlEngine: Send + Sync + 'static {
    /// Runs the job's query and streams `query_progress`, `data_stream_start`, `data_chunk`s and
    /// `data_stream_complete` into `sink`. The caller emits `query_started` before and the terminal
    /// event after. Returns promptly with [`Failure::Cancelled`] once `cancel` fires, the SQL stopped.
    async fn execute(
        &self,
        job: &Job,
        options: &ResolvedOptions,
        sink: &mut EventSink,
        cancel: &CancellationToken,
    ) -> Result<Completed, Failure>;
}

/// Longest `db.statement` recorded on a span, in characters.
const STATEMENT_EXCERPT_CHARS: usize = 1_000;

/// The span of one SQL execution (OpenTelemetry database conventions); `db.rows` is recorded at the end.
pub fn db_span(system: &'static str, sql: &str) -> tracing::Span {
    let excerpt: String = sql.chars().take(STATEMENT_EXCERPT_CHARS).collect();
    tracing::info_span!(
        "db.query",
        otel.name = "db query",
        otel.kind = "client",
        db.system = system,
        db.statement = %excerpt,
        db.rows = tracing::field::Empty,
    )
}

/// A bind parameter from `options.params`, typed the way the database will see it.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

/// Binds the params in order, for any database that encodes these plain types.
pub fn bind_all<'q, DB: sqlx::Database>(params: &[Param]) -> <DB as sqlx::Database>::Arguments<'q>
where
    Option<String>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    bool: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    f64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    use sqlx::Arguments;
    let mut args = <DB as sqlx::Database>::Arguments::<'q>::default();
    for p in params {
        // Encoding these plain values cannot fail; an error here would be a driver bug.
        let r = match p {
            Param::Null => args.add(None::<String>),
            Param::Bool(b) => args.add(*b),
            Param::Int(i) => args.add(*i),
            Param::Float(f) => args.add(*f),
            Param::Text(s) => args.add(s.clone()),
        };
        if let Err(e) = r {
            tracing::error!(error = %e, "bind failed");
        }
    }
    args
}

/// Checks `options.params` against the limit and types each value.
pub fn parse_params(params: Option<&[Value]>, max: usize) -> Result<Vec<Param>, Failure> {
    let params = params.unwrap_or_default();
    if params.len() > max {
        return Err(Failure::query(
            QueryErrorCode::InvalidRequest,
            format!("too many params: {} (limit {max})", params.len()),
        ));
    }
    params
        .iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::Null => Ok(Param::Null),
            Value::Bool(b) => Ok(Param::Bool(*b)),
            Value::Number(n) => match n.as_i64() {
                Some(i) => Ok(Param::Int(i)),
                None => Ok(Param::Float(n.as_f64().unwrap_or(f64::NAN))),
            },
            Value::String(s) => Ok(Param::Text(s.clone())),
            _ => Err(Failure::query(
                QueryErrorCode::InvalidRequest,
                format!(
                    "param ${} must be a string, number, boolean or null (arrays and objects: pass JSON text and cast)",
                    i + 1
                ),
            )),
        })
        .collect()
}
