//! Why a query run did not complete, and how driver errors map to the protocol's query error codes.
//! A leaf module: the engines, the chunker and the job loop all speak it.

use std::time::Duration;

use c2s_shared::bus::BusError;
use c2s_shared::codes::QueryErrorCode;
use c2s_shared::protocol::QueryErrorDetail;

/// Why a run did not complete.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("cancelled")]
    Cancelled,
    /// Nobody followed the stream for the resume grace: it ends, freeing its connection and slots.
    #[error("no live follower")]
    NoReaders,
    #[error("{}", .0.message)]
    Query(QueryErrorDetail),
    /// The events could not be published: nobody can be told, the job stays pending for another try.
    #[error("bus: {0}")]
    Bus(#[from] BusError),
}

impl Failure {
    pub fn query(code: QueryErrorCode, message: impl Into<String>) -> Failure {
        Failure::Query(QueryErrorDetail {
            code,
            message: message.into(),
            sqlstate: None,
            position: None,
        })
    }

    /// The query's own time ran out (the worker's deadline, reader pauses included).
    pub fn timeout(limit: Duration) -> Failure {
        Failure::query(
            QueryErrorCode::Timeout,
            format!(
                "the query ran out of its time ({} ms, pauses of slow readers included); \
                 ask for a larger timeoutMs or a smaller result",
                limit.as_millis()
            ),
        )
    }

    /// True when the database itself reported the error (the statement ended; the connection is in a
    /// known state and can be rolled back and reused).
    pub fn is_from_database(&self) -> bool {
        matches!(self, Failure::Query(d) if d.sqlstate.is_some())
    }

    /// SQLSTATE 57014 is both `statement_timeout` and an outside `pg_cancel_backend`. The worker never
    /// cancels with a signal (it closes the connection), so a 57014 that came before the query's time
    /// was up, and does not say "statement timeout", was somebody else's.
    pub fn classify_cancel(self, ran_for: Duration, limit: Duration) -> Failure {
        match self {
            Failure::Query(mut d)
                if d.sqlstate.as_deref() == Some("57014")
                    && !d.message.contains("statement timeout")
                    && ran_for < limit.mul_f64(0.9) =>
            {
                d.code = QueryErrorCode::CancelledExternally;
                d.message = format!(
                    "{} (the query was cancelled on the database by someone other than this system)",
                    d.message
                );
                Failure::Query(d)
            }
            other => other,
        }
    }

    /// Maps a driver error: database errors keep their SQLSTATE and position.
    pub fn from_sqlx(e: sqlx::Error) -> Failure {
        match e {
            sqlx::Error::Database(db)
                if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() =>
            {
                // SQLite's result codes are not SQLSTATEs: map the ones users meet, keep the text.
                let code = match db.code().as_deref() {
                    Some("8") => QueryErrorCode::ReadOnly,
                    _ => QueryErrorCode::SqlError,
                };
                Failure::query(code, db.message())
            }
            sqlx::Error::Database(db) => {
                let sqlstate = db.code().map(|c| c.into_owned());
                let position = db
                    .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                    .and_then(|pg| match pg.position() {
                        Some(sqlx::postgres::PgErrorPosition::Original(p)) => Some(p as u32),
                        _ => None,
                    });
                let code = match sqlstate.as_deref() {
                    Some(s) => QueryErrorCode::from_sqlstate(s),
                    None => QueryErrorCode::SqlError,
                };
                Failure::Query(QueryErrorDetail {
                    code,
                    message: db.message().to_owned(),
                    sqlstate,
                    position,
                })
            }
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_) => Failure::query(
                QueryErrorCode::Unavailable,
                format!("database unavailable: {e}"),
            ),
            other => Failure::query(QueryErrorCode::Internal, other.to_string()),
        }
    }
}
