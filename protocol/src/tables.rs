//! The lists of message types that clients, tests and tools classify frames by, kept once here and
//! exported in `/schema` (`tables`), from which the TypeScript SDK generates its own.
//!
//! Invariant (tested): every list names only types that exist ([`CLIENT_MESSAGE_TYPES`],
//! [`SERVER_MESSAGE_TYPES`]), and the terminal events are execution events.

use crate::client::CLIENT_MESSAGE_TYPES;
use crate::server::SERVER_MESSAGE_TYPES;

/// The events of one execution's stream: each carries `executionId` and the execution's own `seq`.
pub const EXECUTION_EVENT_TYPES: &[&str] = &[
    "query_started",
    "query_progress",
    "data_stream_start",
    "data_chunk",
    "data_stream_complete",
    "query_completed",
    "query_error",
    "query_cancelled",
];

/// The events that end an execution's stream (exactly one per execution).
pub const TERMINAL_EVENT_TYPES: &[&str] = &["query_completed", "query_error", "query_cancelled"];

/// Collaboration session events, numbered by the session's one `seq` (`session_state` carries
/// `snapshotSeq` instead and is not one of them).
pub const SESSION_EVENT_TYPES: &[&str] = &[
    "participant_joined",
    "participant_left",
    "query_updated",
    "cursor_moved",
    "chat_message",
    "shared_execution",
];

/// Client messages the gateway acknowledges with `ack` when they carry an `id` (README "Acks").
pub const ACKED_CLIENT_TYPES: &[&str] = &[
    "execute_query",
    "cancel_query",
    "resume",
    "subscribe",
    "update_query",
    "chat_message",
    "refresh_token",
];

/// Every list by the name `/schema` exports it under.
pub fn type_tables() -> [(&'static str, &'static [&'static str]); 6] {
    [
        ("clientMessageTypes", CLIENT_MESSAGE_TYPES),
        ("serverMessageTypes", SERVER_MESSAGE_TYPES),
        ("executionEventTypes", EXECUTION_EVENT_TYPES),
        ("terminalEventTypes", TERMINAL_EVENT_TYPES),
        ("sessionEventTypes", SESSION_EVENT_TYPES),
        ("ackedClientTypes", ACKED_CLIENT_TYPES),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_name_existing_types() {
        for list in [EXECUTION_EVENT_TYPES, SESSION_EVENT_TYPES] {
            assert!(list.iter().all(|t| SERVER_MESSAGE_TYPES.contains(t)));
        }
        assert!(TERMINAL_EVENT_TYPES
            .iter()
            .all(|t| EXECUTION_EVENT_TYPES.contains(t)));
        assert!(ACKED_CLIENT_TYPES
            .iter()
            .all(|t| CLIENT_MESSAGE_TYPES.contains(t)));
        assert!(SESSION_EVENT_TYPES
            .iter()
            .all(|t| !EXECUTION_EVENT_TYPES.contains(t)));
    }
}
