//! Server → client frames of PROTOCOL.md: every message the server sends, and the envelope around it.
//!
//! Invariants: a server frame is encoded once (`ServerFrame::to_text`) and the same text is fanned out to
//! every recipient; [`ServerMessage::type_name`] is the serde tag, and the type lists in `crate::tables`
//! agree with these variants (tested).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::client::RowFormat;
use crate::codes::{ErrorCode, QueryErrorCode};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Ack {
    /// The acknowledged client message id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// For `execute_query`: the execution the message created (or, for a repeated id, created before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_id: Option<String>,
    /// True when the id was seen before: acknowledged again, not executed again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    pub code: ErrorCode,
    /// For humans: says what to fix.
    pub message: String,
    /// The `id` of the client frame this answers, if it had one.
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// `conflict` on `update_query`: the version the shared query is at now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_version: Option<u64>,
    /// `conflict` on `update_query`: the shared query text now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_query: Option<String>,
    /// Set on the errors that end a followed execution's stream on this socket: `not_found` (it no longer
    /// exists) or `unavailable` (the stream was cut: resume with `afterSeq`). Names the execution, so
    /// clients need not parse `message`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_id: Option<String>,
    /// An error about a collaboration session's stream: which one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// A cut stream: the `afterSeq` to resume from (the last `seq` this socket was sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_seq: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Pong {
    /// The client's `timestamp`, echoed.
    #[serde(default)]
    pub timestamp: Option<Value>,
    /// Server clock, ms since the epoch.
    pub server_time: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueryStarted {
    pub execution_id: String,
    pub timestamp: i64,
    /// The worker that took the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueryProgress {
    pub execution_id: String,
    pub timestamp: i64,
    /// 0..=100, never decreasing within an execution.
    pub progress: u8,
    /// Human label: `queued`, `executing`, `streaming`, …
    pub step: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows_processed: Option<u64>,
    /// With step `queued` (sent by the gateway, without `seq`, while the job waits for a worker): its
    /// place in the fair order of the job queue, 1 being next, if nothing finishes meanwhile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Column {
    pub name: String,
    /// The database's type name (`int4`, `text`, `timestamptz`, …).
    #[serde(rename = "type")]
    pub type_name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataStreamStart {
    pub execution_id: String,
    pub timestamp: i64,
    /// Rows of the result: exact when the result ended within the worker's read-ahead (the first
    /// chunk), else the planner's estimate, never below the rows already read. Always a number.
    pub total_rows: u64,
    /// Whether `totalRows` is exact (`data_stream_complete` always has the exact count).
    pub total_rows_exact: bool,
    /// The planner's own estimate, when it gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_rows: Option<u64>,
    pub columns: Vec<Column>,
    pub row_format: RowFormat,
    pub chunk_size: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataChunk {
    pub execution_id: String,
    pub timestamp: i64,
    /// 0, 1, 2, … within the execution.
    pub chunk_index: u64,
    /// Rows: objects keyed by column name, or arrays in column order (`rowFormat`).
    pub data: Vec<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataStreamComplete {
    pub execution_id: String,
    pub timestamp: i64,
    pub total_rows: u64,
    pub chunks: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueryResult {
    pub row_count: u64,
    pub columns: Vec<Column>,
    pub duration_ms: u64,
    /// True when the row cap stopped the result early.
    pub truncated: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueryCompleted {
    pub execution_id: String,
    pub timestamp: i64,
    pub result: QueryResult,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueryErrorDetail {
    pub code: QueryErrorCode,
    pub message: String,
    /// The database's SQLSTATE, when the database reported the error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sqlstate: Option<String>,
    /// 1-based character position in the query, when the database reported one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueryError {
    pub execution_id: String,
    pub timestamp: i64,
    pub error: QueryErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueryCancelled {
    pub execution_id: String,
    pub timestamp: i64,
    /// Why, when it was not a `cancel_query`: `no_readers` (nobody followed the stream for the resume
    /// grace, so it stopped rather than hold a database connection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

// ---- collaboration ----------------------------------------------------------------------------------------

/// One person (one socket) in a collaboration session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Participant {
    /// Unique per connection: `<userId>#<random>`.
    pub id: String,
    pub user_id: String,
    pub name: String,
    /// The gateway node the participant is connected to.
    pub node_id: String,
    pub joined_at: i64,
}

/// A chat message as the server stamps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChatEntry {
    pub id: String,
    pub content: String,
    /// The author's participant id (from the connection's identity, never from the payload).
    pub author_id: String,
    pub author_name: String,
    /// Server time, ms since the epoch.
    pub timestamp: i64,
}

/// Sent to a participant when it joins: the session as of event `seq` (later events follow it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionState {
    pub session_id: String,
    /// This connection's participant id.
    pub participant_id: String,
    /// The session event this snapshot includes (its own `participant_joined`).
    pub snapshot_seq: u64,
    pub participants: Vec<Participant>,
    pub current_query: String,
    /// Participant id of the last `update_query`, if any.
    pub query_author: Option<String>,
    /// 0 before the first `update_query`.
    pub query_version: u64,
    /// Last known cursor of each participant, by participant id.
    pub cursors: serde_json::Map<String, Value>,
    /// Recent chat history, oldest first.
    pub chat_messages: Vec<ChatEntry>,
    pub timestamp: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ParticipantJoined {
    pub session_id: String,
    pub participant: Participant,
    pub timestamp: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ParticipantLeft {
    pub session_id: String,
    pub participant_id: String,
    /// `closed` (the socket closed), `node_lost` (its gateway stopped answering and its presence expired)
    /// or `replaced` (the same user rejoined presenting this `participantId`, and took its place).
    pub reason: String,
    pub timestamp: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueryUpdated {
    pub session_id: String,
    pub query: String,
    pub author_id: String,
    pub version: u64,
    pub timestamp: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CursorMoved {
    pub session_id: String,
    pub participant_id: String,
    pub cursor: Value,
    pub timestamp: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChatBroadcast {
    pub session_id: String,
    pub message: ChatEntry,
}

/// A query run inside a session: every participant now receives its execution's events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SharedExecution {
    pub session_id: String,
    pub execution_id: String,
    pub author_id: String,
    pub query: String,
    pub timestamp: i64,
}

// ---- monitoring ------------------------------------------------------------------------------------------

/// Sent periodically on `/ws/monitoring`: the node this socket is connected to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    pub node_id: String,
    /// WebSocket connections open on this node.
    pub connections: usize,
    pub draining: bool,
    pub uptime_secs: u64,
    pub timestamp: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NoticeLevel {
    Info,
    Warning,
    Critical,
}

/// An operator's message to every connected client on every node (maintenance, incidents).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SystemNotice {
    pub level: NoticeLevel,
    pub message: String,
    pub timestamp: i64,
}

/// Declares [`ServerMessage`] from one table (variant, payload type, wire name), with its
/// [`SERVER_MESSAGE_TYPES`], its `type_name` and the payload decoder of [`ServerFrame`]'s
/// `Deserialize`: one line per message, so the four cannot disagree.
macro_rules! server_messages {
    ($($variant:ident($payload:ty) = $name:literal,)*) => {
        /// Every message the server sends, tagged by `type` with its body in `payload`.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
        #[serde(tag = "type", content = "payload", rename_all = "snake_case")]
        pub enum ServerMessage {
            $($variant($payload),)*
        }

        /// Every server message `type`, as [`ServerMessage::type_name`] spells them.
        pub const SERVER_MESSAGE_TYPES: &[&str] = &[$($name,)*];

        impl ServerMessage {
            /// The wire name of this message (its `type`).
            pub fn type_name(&self) -> &'static str {
                match self {
                    $(ServerMessage::$variant(_) => $name,)*
                }
            }

            /// Decodes the `payload` of a message of wire type `name` (None: no such type).
            pub(crate) fn decode_payload<'de, D: serde::Deserializer<'de>>(
                name: &str,
                payload: D,
            ) -> Result<Option<Self>, D::Error> {
                match name {
                    $($name => <$payload>::deserialize(payload).map(|p| Some(ServerMessage::$variant(p))),)*
                    _ => Ok(None),
                }
            }
        }
    };
}

server_messages! {
    Ack(Ack) = "ack",
    Error(ErrorBody) = "error",
    Pong(Pong) = "pong",
    QueryStarted(QueryStarted) = "query_started",
    QueryProgress(QueryProgress) = "query_progress",
    DataStreamStart(DataStreamStart) = "data_stream_start",
    DataChunk(DataChunk) = "data_chunk",
    DataStreamComplete(DataStreamComplete) = "data_stream_complete",
    QueryCompleted(QueryCompleted) = "query_completed",
    QueryError(QueryError) = "query_error",
    QueryCancelled(QueryCancelled) = "query_cancelled",
    SessionState(SessionState) = "session_state",
    ParticipantJoined(ParticipantJoined) = "participant_joined",
    ParticipantLeft(ParticipantLeft) = "participant_left",
    QueryUpdated(QueryUpdated) = "query_updated",
    CursorMoved(CursorMoved) = "cursor_moved",
    ChatMessage(ChatBroadcast) = "chat_message",
    SharedExecution(SharedExecution) = "shared_execution",
    NodeStatus(NodeStatus) = "node_status",
    SystemNotice(SystemNotice) = "system_notice",
}

impl ServerMessage {
    /// True for the events that end an execution's stream.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            ServerMessage::QueryCompleted(_)
                | ServerMessage::QueryError(_)
                | ServerMessage::QueryCancelled(_)
        )
    }

    pub fn error(code: ErrorCode, message: impl Into<String>, reference: Option<String>) -> Self {
        ServerMessage::Error(ErrorBody {
            code,
            message: message.into(),
            reference,
            current_version: None,
            current_query: None,
            execution_id: None,
            session_id: None,
            after_seq: None,
        })
    }
}

/// A server frame: the message plus the envelope fields.
// `Deserialize` is in `server_decode.rs`: it reads the payload straight into its type instead of
// buffering the frame as `flatten` would.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct ServerFrame {
    #[serde(flatten)]
    pub message: ServerMessage,
    /// Per-stream sequence number, from 1 with no gaps: per execution on execution events, per session
    /// on session events. What a client resumes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

impl ServerFrame {
    pub fn new(message: ServerMessage) -> Self {
        ServerFrame {
            message,
            seq: None,
            traceparent: None,
        }
    }

    /// Encodes the frame once; the text is shared by every recipient.
    pub fn to_text(&self) -> String {
        // Serializing these plain data types cannot fail (string keys, no non-finite floats from serde_json::Value).
        serde_json::to_string(self).unwrap_or_else(|e| {
            format!(r#"{{"type":"error","payload":{{"code":"internal","message":"encode failed: {e}"}}}}"#)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_message_types_are_the_schemas() {
        // The schema's variants are objects whose `type` property is a const.
        fn collect(v: &Value, out: &mut Vec<String>) {
            match v {
                Value::Object(map) => {
                    if let Some(t) = map
                        .get("properties")
                        .and_then(|p| p.get("type"))
                        .and_then(|t| t.get("const"))
                        .and_then(Value::as_str)
                    {
                        out.push(t.to_owned());
                    }
                    map.values().for_each(|v| collect(v, out));
                }
                Value::Array(items) => items.iter().for_each(|v| collect(v, out)),
                _ => {}
            }
        }
        let schema = serde_json::to_value(schemars::schema_for!(ServerFrame)).unwrap();
        let mut in_schema = Vec::new();
        collect(&schema, &mut in_schema);
        in_schema.sort();
        in_schema.dedup();
        let mut listed: Vec<String> = SERVER_MESSAGE_TYPES.iter().map(|t| t.to_string()).collect();
        listed.sort();
        assert_eq!(listed, in_schema);
    }

    #[test]
    fn server_frame_shape() {
        let mut f = ServerFrame::new(ServerMessage::QueryCancelled(QueryCancelled {
            execution_id: "e".into(),
            timestamp: 1,
            reason: None,
        }));
        f.seq = Some(4);
        let v: Value = serde_json::from_str(&f.to_text()).unwrap();
        assert_eq!(v["type"], "query_cancelled");
        assert_eq!(v["payload"]["executionId"], "e");
        assert_eq!(v["seq"], 4);
        let back: ServerFrame = serde_json::from_value(v).unwrap();
        assert_eq!(back, f);
    }
}
