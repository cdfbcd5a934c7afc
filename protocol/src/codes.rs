//! The one table of protocol error codes (PROTOCOL.md): `error.payload.code` and `query_error`'s code.
//! Close codes have their own table in `crate::close`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `error.payload.code`: what went wrong with a client frame. The connection stays open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    UnknownType,
    Unauthorized,
    Forbidden,
    NotFound,
    Conflict,
    RateLimited,
    TooLarge,
    Unavailable,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

/// `query_error.payload.error.code`: why a query failed. `sqlstate` carries the database's own code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum QueryErrorCode {
    /// SQLSTATE class 42 syntax error (42601) and friends.
    SyntaxError,
    /// The statement tried to write (SQLSTATE 25006): queries run in a read-only transaction.
    ReadOnly,
    /// The query's time (`timeoutMs`, else `C2S_STATEMENT_TIMEOUT_MS`) ran out: `statement_timeout`
    /// on the database (SQLSTATE 57014), or the worker's own deadline, which also counts reader pauses.
    Timeout,
    /// Something other than this system stopped the query on the database: an administrator's
    /// `pg_cancel_backend` (SQLSTATE 57014 before the timeout) or `pg_terminate_backend` (57P01).
    CancelledExternally,
    /// One value (or one row) is larger than `C2S_MAX_VALUE_BYTES` / a `data_chunk` can carry
    /// (`C2S_MAX_CHUNK_BYTES`): the message names the column and the row. Select less of it.
    ValueTooLarge,
    /// Any other error reported by the database; see `sqlstate`.
    SqlError,
    /// The request itself is invalid (more than one statement, bad parameters, bad options).
    InvalidRequest,
    /// The database could not be reached.
    Unavailable,
    /// The worker running the query died mid-way; its result is incomplete. Run it again.
    WorkerLost,
    /// A bug or an unexpected failure on our side.
    Internal,
}

impl QueryErrorCode {
    /// Maps a PostgreSQL SQLSTATE to our code (the database decides, not a regex over the SQL).
    pub fn from_sqlstate(sqlstate: &str) -> Self {
        match sqlstate {
            "25006" => QueryErrorCode::ReadOnly,
            // 57014 is also an outside `pg_cancel_backend`: the worker tells them apart by the time
            // the statement ran (see the worker's error mapping).
            "57014" => QueryErrorCode::Timeout,
            "57P01" => QueryErrorCode::CancelledExternally,
            "42601" => QueryErrorCode::SyntaxError,
            s if s.starts_with("08") => QueryErrorCode::Unavailable,
            _ => QueryErrorCode::SqlError,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_code_wire_names_match_serde() {
        for code in [
            ErrorCode::BadRequest,
            ErrorCode::UnknownType,
            ErrorCode::Unauthorized,
            ErrorCode::Forbidden,
            ErrorCode::NotFound,
            ErrorCode::Conflict,
            ErrorCode::RateLimited,
            ErrorCode::TooLarge,
            ErrorCode::Unavailable,
            ErrorCode::Internal,
        ] {
            let json = serde_json::to_value(code).unwrap();
            assert_eq!(json, serde_json::Value::String(code.as_str().into()));
        }
    }

    #[test]
    fn sqlstate_mapping() {
        assert_eq!(
            QueryErrorCode::from_sqlstate("25006"),
            QueryErrorCode::ReadOnly
        );
        assert_eq!(
            QueryErrorCode::from_sqlstate("57014"),
            QueryErrorCode::Timeout
        );
        assert_eq!(
            QueryErrorCode::from_sqlstate("42601"),
            QueryErrorCode::SyntaxError
        );
        assert_eq!(
            QueryErrorCode::from_sqlstate("08006"),
            QueryErrorCode::Unavailable
        );
        assert_eq!(
            QueryErrorCode::from_sqlstate("57P01"),
            QueryErrorCode::CancelledExternally
        );
        assert_eq!(
            QueryErrorCode::from_sqlstate("22012"),
            QueryErrorCode::SqlError
        );
    }
}
