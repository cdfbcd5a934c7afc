//! Reading a server frame: `{type, payload, seq?, traceparent?}` in one pass, the payload straight into
//! its type. (A derived `Deserialize` with `#[serde(flatten)]` first buffers the whole frame, a
//! `data_chunk`'s rows included, into an intermediate tree: a third slower than untyped JSON.)
//!
//! Invariant: it accepts exactly what the derived decoder did: keys in any order (a payload before its
//! `type` is buffered, then read), unknown keys ignored, an unknown `type` or a bad payload an error.

use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

use crate::server::{ServerFrame, ServerMessage};

impl<'de> Deserialize<'de> for ServerFrame {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(FrameVisitor)
    }
}

struct FrameVisitor;

/// The `payload` of a message whose `type` was already read.
struct Payload<'a>(&'a str);

impl<'de> de::DeserializeSeed<'de> for Payload<'_> {
    type Value = ServerMessage;

    fn deserialize<D: Deserializer<'de>>(self, payload: D) -> Result<ServerMessage, D::Error> {
        ServerMessage::decode_payload(self.0, payload)?
            .ok_or_else(|| de::Error::unknown_variant(self.0, crate::SERVER_MESSAGE_TYPES))
    }
}

impl<'de> Visitor<'de> for FrameVisitor {
    type Value = ServerFrame;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a server frame {type, payload, seq?, traceparent?}")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ServerFrame, A::Error> {
        let mut kind: Option<String> = None;
        let mut message = None;
        let mut early_payload: Option<Value> = None;
        let (mut seq, mut traceparent) = (None, None);
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match key.as_ref() {
                "type" => kind = Some(map.next_value()?),
                "payload" => match kind.as_deref() {
                    Some(kind) => message = Some(map.next_value_seed(Payload(kind))?),
                    None => early_payload = Some(map.next_value()?),
                },
                "seq" => seq = map.next_value()?,
                "traceparent" => traceparent = map.next_value()?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let kind = kind.ok_or_else(|| de::Error::missing_field("type"))?;
        let message = match (message, early_payload) {
            (Some(message), _) => message,
            (None, Some(payload)) => de::DeserializeSeed::deserialize(Payload(&kind), payload)
                .map_err(de::Error::custom)?,
            (None, None) => return Err(de::Error::missing_field("payload")),
        };
        Ok(ServerFrame {
            message,
            seq,
            traceparent,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::{QueryCancelled, ServerMessage};

    #[test]
    fn reads_what_it_writes_in_any_key_order() {
        let frame = ServerFrame {
            message: ServerMessage::QueryCancelled(QueryCancelled {
                execution_id: "e".into(),
                timestamp: 1,
                reason: None,
            }),
            seq: Some(4),
            traceparent: None,
        };
        let back: ServerFrame = serde_json::from_str(&frame.to_text()).unwrap();
        assert_eq!(back, frame);
        let reordered = r#"{"seq":4,"payload":{"executionId":"e","timestamp":1},"extra":[1],"type":"query_cancelled"}"#;
        assert_eq!(
            serde_json::from_str::<ServerFrame>(reordered).unwrap(),
            frame
        );
    }

    #[test]
    fn refuses_unknown_types_and_bad_payloads() {
        for bad in [
            r#"{"type":"dance","payload":{}}"#,
            r#"{"type":"query_cancelled","payload":{"executionId":3}}"#,
            r#"{"type":"query_cancelled"}"#,
            r#"{"payload":{}}"#,
            r#"[1]"#,
        ] {
            assert!(serde_json::from_str::<ServerFrame>(bad).is_err(), "{bad}");
        }
    }
}
