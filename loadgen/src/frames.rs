//! Frames as the protocol crate types them: loadgen sends `ClientMessage`s and reads `ServerFrame`s,
//! never hand-written JSON, so it breaks at compile time when the protocol changes.

use c2s_protocol::{ClientFrame, ClientMessage, OutgoingChat, RowFormat, SendChat, ServerFrame};

/// The text of a client frame without an `id`.
pub fn client_text(message: ClientMessage) -> String {
    let frame = ClientFrame {
        message,
        id: None,
        traceparent: None,
    };
    // Plain data with string keys: serialising cannot fail.
    serde_json::to_string(&frame).unwrap_or_default()
}

/// A `chat_message` frame.
pub fn chat_text(id: String, content: String) -> String {
    client_text(ClientMessage::ChatMessage(SendChat {
        message: OutgoingChat { id, content },
    }))
}

/// A `chat_message` frame with a frame `id`: the server acknowledges it (or refuses it) by that id.
pub fn chat_text_with_ack(frame_id: String, id: String, content: String) -> String {
    let frame = ClientFrame {
        message: ClientMessage::ChatMessage(SendChat {
            message: OutgoingChat { id, content },
        }),
        id: Some(frame_id),
        traceparent: None,
    };
    serde_json::to_string(&frame).unwrap_or_default()
}

/// A server frame, typed.
pub fn parse(text: &str) -> anyhow::Result<ServerFrame> {
    Ok(serde_json::from_str(text)?)
}

/// `--row-format`: the protocol's own names (`objects`, `arrays`).
pub fn row_format(name: &str) -> Result<RowFormat, String> {
    serde_json::from_value(serde_json::Value::from(name))
        .map_err(|_| format!("`{name}` is not a row format: objects or arrays"))
}
