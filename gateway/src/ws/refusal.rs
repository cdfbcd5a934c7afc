//! The one refusal type of the socket layer: what goes back to the client as an `error` frame, and,
//! when the socket cannot go on (a refused upgrade or join), the close code that follows it.
//!
//! Every refusal of a client request is one of these, whether it comes from the upgrade, the join of a
//! collaboration session or a message handler; the socket loop is the only place that sends them.

use actix_ws::{CloseCode, CloseReason};
use c2s_shared::codes::ErrorCode;
use c2s_shared::protocol::{Close, ServerMessage};

/// Why a request is refused.
#[derive(Debug)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
    /// Close the socket after the `error` frame, with this code (None: the socket stays open).
    pub close: Option<Close>,
    /// For `conflict`: the shared query's current version and text.
    pub current: Option<(u64, String)>,
}

impl Refusal {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
            close: None,
            current: None,
        }
    }

    /// The same refusal, ending the socket with `close`.
    pub fn closing(mut self, close: Close) -> Self {
        self.close = Some(close);
        self
    }

    /// The bus could not be reached: the client retries shortly.
    pub fn unavailable(e: c2s_shared::bus::BusError) -> Self {
        tracing::warn!(error = %e, "bus unavailable");
        Refusal::new(
            ErrorCode::Unavailable,
            "the message bus is unavailable; retry shortly",
        )
    }

    /// The same answer for an execution that never existed and one the client may not see.
    pub fn no_execution(execution_id: &str) -> Self {
        Refusal::new(
            ErrorCode::NotFound,
            format!("no execution {execution_id} (never existed, or its events expired)"),
        )
    }

    /// A query text (`execute_query`, `update_query`) over `C2S_MAX_QUERY_BYTES` is `too_large`.
    pub fn check_query_size(query: &str, limit: usize) -> Result<(), Refusal> {
        if query.len() > limit {
            return Err(Refusal::new(
                ErrorCode::TooLarge,
                format!("`query` is {} bytes; the limit is {limit}", query.len()),
            ));
        }
        Ok(())
    }

    /// The `error` message to send; `reference` is the client frame's `id`.
    pub fn into_message(self, reference: Option<String>) -> ServerMessage {
        let mut message = ServerMessage::error(self.code, self.message, reference);
        if let (ServerMessage::Error(body), Some((version, text))) = (&mut message, self.current) {
            body.current_version = Some(version);
            body.current_query = Some(text);
        }
        message
    }
}

/// The close frame for an entry of the close-code table, with its reason text.
pub fn close_reason(close: Close) -> CloseReason {
    close_with(close, close.reason())
}

/// The close frame for an entry of the table, with a more specific description.
pub fn close_with(close: Close, description: impl Into<String>) -> CloseReason {
    CloseReason {
        code: CloseCode::from(close.code()),
        description: Some(description.into()),
    }
}
