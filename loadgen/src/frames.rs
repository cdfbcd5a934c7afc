//! Frames as the protocol crate types them: loadgen sends `ClientMessage`s and reads `ServerFrame`s,
//! never hand-written JSON, so it breaks at compile time when the protocol changes.

use std::borrow::Cow;

use c2s_protocol::{ClientFrame, ClientMessage, OutgoingChat, RowFormat, SendChat, ServerFrame};
use serde::de::{IgnoredAny, SeqAccess, Visitor};
use serde::Deserialize;

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

/// A `data_chunk` read only as far as its `seq` and the number of its rows: every byte is still
/// checked to be JSON, but no row is built (what `psql … > /dev/null` does with COPY's rows). `None`
/// for any other frame, which [`parse`] then reads whole.
pub fn chunk_row_count(text: &str) -> Option<(Option<u64>, u64)> {
    let frame: CountedFrame = serde_json::from_str(text).ok()?;
    match (frame.kind.as_ref(), frame.payload.and_then(|p| p.data)) {
        ("data_chunk", Some(RowCount(rows))) => Some((frame.seq, rows)),
        _ => None,
    }
}

#[derive(Deserialize)]
struct CountedFrame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    seq: Option<u64>,
    payload: Option<CountedPayload>,
}

#[derive(Deserialize)]
struct CountedPayload {
    data: Option<RowCount>,
}

/// The length of a JSON array whose elements are skipped, not built.
struct RowCount(u64);

impl<'de> Deserialize<'de> for RowCount {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Counter;
        impl<'de> Visitor<'de> for Counter {
            type Value = RowCount;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an array of rows")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RowCount, A::Error> {
                let mut n = 0;
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    n += 1;
                }
                Ok(RowCount(n))
            }
        }
        d.deserialize_seq(Counter)
    }
}

/// `--row-format`: the protocol's own names (`objects`, `arrays`).
pub fn row_format(name: &str) -> Result<RowFormat, String> {
    serde_json::from_value(serde_json::Value::from(name))
        .map_err(|_| format!("`{name}` is not a row format: objects or arrays"))
}
