//! Frames as the protocol crate types them: loadgen sends `ClientMessage`s and reads `ServerFrame`s,
//! never hand-written JSON, so it breaks at compile time when the protocol changes.

use c2s_protocol::{ClientFrame, ClientMessage, OutgoingChat, RowFormat, SendChat, ServerFrame};

/// The text of a client frame, with a frame `id` when the server should acknowledge it by that id.
pub fn client_text(message: ClientMessage, id: Option<String>) -> String {
    let frame = ClientFrame {
        message,
        id,
        traceparent: None,
    };
    // Plain data with string keys: serialising cannot fail.
    serde_json::to_string(&frame).unwrap_or_default()
}

/// A `chat_message` frame (acknowledged by `frame_id` when there is one).
pub fn chat_text(frame_id: Option<String>, id: String, content: String) -> String {
    let chat = SendChat {
        message: OutgoingChat { id, content },
    };
    client_text(ClientMessage::ChatMessage(chat), frame_id)
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
