//! Client → server frames of PROTOCOL.md and their two-step decoding.
//!
//! A client frame is decoded in two steps (`decode_client_frame`): the envelope first, then the payload by
//! `type`, so an unknown type and a malformed payload get different error codes. Nothing here panics on
//! client input: every refusal is a [`FrameError`] that becomes an `error` frame.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::codes::ErrorCode;

/// Longest accepted client message id (PROTOCOL.md: at most 64 characters).
pub const MAX_CLIENT_ID_LEN: usize = 64;

/// How rows are laid out in `data_chunk.data`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RowFormat {
    /// One object per row keyed by column name (what the guide's table expects).
    #[default]
    Objects,
    /// One array per row in column order (compact).
    Arrays,
}

/// `execute_query.options`. Every field is optional; the worker clamps them to its configured limits.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueryOptions {
    /// Row cap for this query (clamped to the worker's `--max-rows`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rows: Option<u64>,
    /// Rows per `data_chunk` (clamped to `--max-chunk-size`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_size: Option<u32>,
    /// Statement timeout for this query in ms (clamped to `--max-statement-timeout-ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row_format: Option<RowFormat>,
    /// Bind values for `$1`, `$2`, … (strings, numbers, booleans, null).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Vec<Value>>,
}

// ---------------------------------------------------------------------------------------------------------
// Client -> server
// ---------------------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecuteQuery {
    pub query: String,
    #[serde(default)]
    pub options: Option<QueryOptions>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionRef {
    pub execution_id: String,
}

/// `resume` / `subscribe`: replay an execution's events after `afterSeq` (0 or absent: from the start), then live.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StreamFrom {
    pub execution_id: String,
    #[serde(default)]
    pub after_seq: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Ping {
    /// Echoed back in `pong` (the guide sends `Date.now()`).
    #[serde(default)]
    pub timestamp: Option<Value>,
}

/// `update_query` (collaboration): replace the shared query text. With `baseVersion`, only if the text is
/// still at that version (optimistic concurrency); without it, last writer wins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpdateQuery {
    pub query: String,
    #[serde(default)]
    pub base_version: Option<u64>,
}

/// `move_cursor` (collaboration): any JSON the editor uses for a cursor or selection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MoveCursor {
    pub cursor: Value,
}

/// A chat message as the client sends it; author and time are stamped by the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutgoingChat {
    /// Client-chosen message id (≤ 64 chars): a message re-sent with the same id is delivered once.
    pub id: String,
    pub content: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SendChat {
    pub message: OutgoingChat,
}

/// `refresh_token`: a fresh JWT for the same user, sent before the current one expires.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RefreshToken {
    pub token: String,
}

/// Every message a client may send, tagged by `type` with its body in `payload`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", content = "payload", rename_all = "snake_case")]
pub enum ClientMessage {
    ExecuteQuery(ExecuteQuery),
    CancelQuery(ExecutionRef),
    Resume(StreamFrom),
    Subscribe(StreamFrom),
    Ping(Ping),
    UpdateQuery(UpdateQuery),
    MoveCursor(MoveCursor),
    ChatMessage(SendChat),
    RefreshToken(RefreshToken),
}

impl ClientMessage {
    /// The message's wire `type` (its serde tag; one of [`CLIENT_MESSAGE_TYPES`]).
    pub fn type_name(&self) -> &'static str {
        match self {
            ClientMessage::ExecuteQuery(_) => "execute_query",
            ClientMessage::CancelQuery(_) => "cancel_query",
            ClientMessage::Resume(_) => "resume",
            ClientMessage::Subscribe(_) => "subscribe",
            ClientMessage::Ping(_) => "ping",
            ClientMessage::UpdateQuery(_) => "update_query",
            ClientMessage::MoveCursor(_) => "move_cursor",
            ClientMessage::ChatMessage(_) => "chat_message",
            ClientMessage::RefreshToken(_) => "refresh_token",
        }
    }
}

/// The `type` of every `ClientMessage` variant: tells an unknown type from a malformed known one.
pub const CLIENT_MESSAGE_TYPES: &[&str] = &[
    "execute_query",
    "cancel_query",
    "resume",
    "subscribe",
    "ping",
    "update_query",
    "move_cursor",
    "chat_message",
    "refresh_token",
];

/// A decoded client frame: the message and the envelope fields that travel beside it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ClientFrame {
    #[serde(flatten)]
    pub message: ClientMessage,
    /// Client message id (≤ 64 chars): acknowledged with `ack`, and never executed twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// W3C trace context to continue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// Why a client frame was refused; becomes an `error` frame, the connection stays.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameError {
    pub code: ErrorCode,
    pub message: String,
    /// The frame's `id`, when it could be read.
    pub reference: Option<String>,
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for FrameError {}

/// The envelope as read before the payload is interpreted.
#[derive(Deserialize)]
struct RawEnvelope {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    payload: Option<Value>,
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    traceparent: Option<String>,
    /// The guide sends `{type:'ping', timestamp}` with the timestamp at top level.
    #[serde(default)]
    timestamp: Option<Value>,
}

/// Decodes one text frame. Errors say what to fix.
pub fn decode_client_frame(text: &str) -> Result<ClientFrame, FrameError> {
    let raw: RawEnvelope = serde_json::from_str(text).map_err(|e| {
        // Try to recover the id for `ref`, even from an envelope without a usable `type`.
        let reference = serde_json::from_str::<Value>(text)
            .ok()
            .and_then(|v| v.get("id").and_then(Value::as_str).map(str::to_owned));
        FrameError {
            code: ErrorCode::BadRequest,
            message: if e.is_syntax() || e.is_eof() {
                format!("frame is not valid JSON: {e}")
            } else {
                format!("frame must be an object {{\"type\": string, \"payload\": object}}: {e}")
            },
            reference,
        }
    })?;
    let id = match raw.id {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.len() <= MAX_CLIENT_ID_LEN && !s.is_empty() => Some(s),
        Some(Value::String(_)) => {
            return Err(FrameError {
                code: ErrorCode::BadRequest,
                message: format!("`id` must be 1 to {MAX_CLIENT_ID_LEN} characters"),
                reference: None,
            })
        }
        Some(_) => {
            return Err(FrameError {
                code: ErrorCode::BadRequest,
                message: "`id` must be a string".into(),
                reference: None,
            })
        }
    };
    let fail = |code, message: String| FrameError {
        code,
        message,
        reference: id.clone(),
    };
    if !CLIENT_MESSAGE_TYPES.contains(&raw.kind.as_str()) {
        return Err(fail(
            ErrorCode::UnknownType,
            format!(
                "unknown message type `{}`; expected one of: {}",
                raw.kind,
                CLIENT_MESSAGE_TYPES.join(", ")
            ),
        ));
    }
    let mut payload = match raw.payload {
        None | Some(Value::Null) => Value::Object(Default::default()),
        Some(p @ Value::Object(_)) => p,
        Some(_) => {
            return Err(fail(
                ErrorCode::BadRequest,
                "`payload` must be a JSON object".into(),
            ))
        }
    };
    if raw.kind == "ping" {
        if let (Some(ts), Some(obj)) = (raw.timestamp, payload.as_object_mut()) {
            obj.entry("timestamp").or_insert(ts);
        }
    }
    let message: ClientMessage = serde_json::from_value(serde_json::json!({
        "type": raw.kind,
        "payload": payload,
    }))
    .map_err(|e| {
        fail(
            ErrorCode::BadRequest,
            format!("invalid `{}` payload: {e}", raw.kind),
        )
    })?;
    Ok(ClientFrame {
        message,
        id,
        traceparent: raw.traceparent,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_client_type_decodes() {
        let samples = [
            r#"{"type":"execute_query","payload":{"query":"select 1"}}"#,
            r#"{"type":"cancel_query","payload":{"executionId":"e"}}"#,
            r#"{"type":"resume","payload":{"executionId":"e","afterSeq":3}}"#,
            r#"{"type":"subscribe","payload":{"executionId":"e"}}"#,
            r#"{"type":"ping"}"#,
            r#"{"type":"update_query","payload":{"query":"select 2","baseVersion":1}}"#,
            r#"{"type":"move_cursor","payload":{"cursor":{"line":1,"ch":4}}}"#,
            r#"{"type":"chat_message","payload":{"message":{"id":"m1","content":"hi","authorId":"spoofed"}}}"#,
            r#"{"type":"refresh_token","payload":{"token":"x.y.z"}}"#,
        ];
        assert_eq!(samples.len(), CLIENT_MESSAGE_TYPES.len());
        for (s, listed) in samples.into_iter().zip(CLIENT_MESSAGE_TYPES) {
            let frame = decode_client_frame(s).unwrap();
            let tag = serde_json::to_value(&frame.message).unwrap()["type"].clone();
            assert_eq!(
                frame.message.type_name(),
                tag,
                "type_name() must be the serde tag"
            );
            assert_eq!(frame.message.type_name(), *listed);
        }
    }

    #[test]
    fn guide_ping_with_top_level_timestamp_is_echoed() {
        let f = decode_client_frame(r#"{"type":"ping","timestamp":123}"#).unwrap();
        assert_eq!(
            f.message,
            ClientMessage::Ping(Ping {
                timestamp: Some(Value::from(123))
            })
        );
    }

    #[test]
    fn error_kinds_are_distinguished() {
        assert_eq!(
            decode_client_frame("{nope").unwrap_err().code,
            ErrorCode::BadRequest
        );
        let e = decode_client_frame(r#"{"type":"dance","id":"x1"}"#).unwrap_err();
        assert_eq!(
            (e.code, e.reference.as_deref()),
            (ErrorCode::UnknownType, Some("x1"))
        );
        let e = decode_client_frame(r#"{"type":"execute_query","payload":{}}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(e.message.contains("query"), "{}", e.message);
        let long = "x".repeat(65);
        let e = decode_client_frame(&format!(r#"{{"type":"ping","id":"{long}"}}"#)).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
    }
}
