//! The one `deliver` span of a socket following an execution: opened with the first event it relays
//! (child of the worker's `stream` span, whose context that event carries), closed after the terminal
//! one or when the socket stops following, with the counts of what it relayed as attributes (events,
//! chunks, rows, bytes, and when the first and last chunk were handed to the socket).
//!
//! Invariants: a follower has at most one such span, so a trace holds one `deliver` per follower however
//! large the result; rows are counted only in sampled traces. Per-event `deliver <event>` spans (also
//! for a collaboration session's events) exist only with `C2S_OTEL_CHUNK_SPANS`, for debugging.

use c2s_shared::bus::Topic;
use c2s_shared::now_ms;
use c2s_shared::telemetry;
use tracing::field::Empty;

pub struct DeliverSpan {
    span: tracing::Span,
    /// The trace is exported: worth counting rows for.
    sampled: bool,
    events: u64,
    chunks: u64,
    rows: u64,
    bytes: u64,
    first_chunk_at_ms: Option<i64>,
    last_chunk_at_ms: Option<i64>,
}

impl DeliverSpan {
    /// The span of a follower of `topic` whose first relayed event is `frame`; none for a session's
    /// events, for a frame without trace context, or when spans are not exported.
    pub fn start(topic: &Topic, frame: &str) -> Option<DeliverSpan> {
        let Topic::Execution(execution_id) = topic else {
            return None;
        };
        if !telemetry::exporting() {
            return None;
        }
        let parent = telemetry::frame_traceparent(frame)?;
        let span = tracing::info_span!(
            parent: None,
            "gateway.deliver",
            otel.name = "deliver",
            otel.kind = "consumer",
            execution_id = %execution_id,
            events = Empty,
            chunks = Empty,
            rows = Empty,
            bytes = Empty,
            first_chunk_at_ms = Empty,
            last_chunk_at_ms = Empty,
            trace_id = Empty,
        );
        telemetry::continue_trace(&span, Some(parent));
        Some(DeliverSpan {
            sampled: telemetry::is_sampled(&span),
            span,
            events: 0,
            chunks: 0,
            rows: 0,
            bytes: 0,
            first_chunk_at_ms: None,
            last_chunk_at_ms: None,
        })
    }

    /// Counts one event relayed to the socket.
    pub fn count(&mut self, frame: &str) {
        if !self.sampled {
            return;
        }
        self.events += 1;
        self.bytes += frame.len() as u64;
        if c2s_shared::metrics::frame_type(frame) == "data_chunk" {
            let now = now_ms();
            self.chunks += 1;
            self.rows += chunk_rows(frame);
            self.first_chunk_at_ms.get_or_insert(now);
            self.last_chunk_at_ms = Some(now);
        }
    }
}

impl Drop for DeliverSpan {
    fn drop(&mut self) {
        if !self.sampled {
            return;
        }
        // Recorded once, at the end: a recorded field is one more attribute on the exported span.
        self.span.record("events", self.events);
        self.span.record("chunks", self.chunks);
        self.span.record("rows", self.rows);
        self.span.record("bytes", self.bytes);
        if let (Some(first), Some(last)) = (self.first_chunk_at_ms, self.last_chunk_at_ms) {
            self.span.record("first_chunk_at_ms", first);
            self.span.record("last_chunk_at_ms", last);
        }
    }
}

/// With `C2S_OTEL_CHUNK_SPANS`: the span of relaying one event, child of the span that published it.
pub fn event_span(topic: &Topic, seq: u64, frame: &str) -> Option<tracing::Span> {
    if !telemetry::chunk_spans() {
        return None;
    }
    let span = tracing::info_span!(
        "gateway.deliver_event",
        otel.name = %format!("deliver {}", c2s_shared::metrics::frame_type(frame)),
        otel.kind = "consumer",
        topic = %topic,
        seq,
        trace_id = Empty,
    );
    telemetry::continue_trace(&span, telemetry::frame_traceparent(frame));
    Some(span)
}

/// The rows of a `data_chunk` frame: the elements of its `data` array, counted without parsing them
/// (the array comes after the execution id, a UUID, so the first `"data":[` is the one).
fn chunk_rows(frame: &str) -> u64 {
    const DATA: &str = r#""data":["#;
    let Some(at) = frame.find(DATA) else {
        return 0;
    };
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    let (mut commas, mut any) = (0u64, false);
    for &b in &frame.as_bytes()[at + DATA.len()..] {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => depth += 1,
            b']' | b'}' if depth == 0 => break,
            b']' | b'}' => depth -= 1,
            b',' if depth == 0 => commas += 1,
            b' ' | b'\n' | b'\r' | b'\t' => continue,
            _ => {}
        }
        any = true;
    }
    if any {
        commas + 1
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use c2s_shared::protocol::{DataChunk, ServerFrame, ServerMessage};
    use serde_json::json;

    fn frame(data: Vec<serde_json::Value>) -> String {
        ServerFrame {
            message: ServerMessage::DataChunk(DataChunk {
                execution_id: "0f8fad5b-d9cb-469f-a165-70867728950e".into(),
                timestamp: 1,
                chunk_index: 0,
                data,
            }),
            seq: Some(3),
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        }
        .to_text()
    }

    #[test]
    fn rows_of_a_chunk_are_counted_without_parsing() {
        assert_eq!(chunk_rows(&frame(vec![])), 0);
        assert_eq!(chunk_rows(&frame(vec![json!(1)])), 1);
        let tricky = vec![
            json!({"s": "a,b]\"},", "n": [1, 2, {"x": "]"}]}),
            json!([null, "\\", ",", []]),
            json!({}),
            json!("data\":[,,"),
        ];
        assert_eq!(chunk_rows(&frame(tricky)), 4);
        let many: Vec<_> = (0..500).map(|i| json!({"n": i, "t": "x,y"})).collect();
        assert_eq!(chunk_rows(&frame(many)), 500);
        assert_eq!(chunk_rows(r#"{"type":"query_started","payload":{}}"#), 0);
    }
}
