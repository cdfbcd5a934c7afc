//! The one `stream` span of the events one worker publishes for an execution: open from its first
//! event to its terminal one (or to the end of the run), with the counts of events, chunks, rows and
//! bytes as attributes. Every event frame carries its context, so each gateway's `deliver` span of a
//! follower hangs below it.
//!
//! Invariant: an [`EventSink`](crate::events::EventSink) holds at most one, so a query's trace has the
//! same few spans however large its result; a `publish <event>` span per event (children of the stream
//! span) exists only with `C2S_OTEL_CHUNK_SPANS`, for debugging.

use c2s_shared::telemetry;
use tracing::field::Empty;

pub struct StreamSpan {
    span: tracing::Span,
    /// What every event carries (the stream span's context).
    traceparent: Option<String>,
    events: u64,
    chunks: u64,
    rows: u64,
    bytes: u64,
}

impl StreamSpan {
    /// Opens the stream span under `parent` (the run's `traceparent`); none when spans are not
    /// exported or there is no trace to continue.
    pub fn start(execution_id: &str, parent: Option<&str>) -> Option<StreamSpan> {
        if !telemetry::exporting() {
            return None;
        }
        parent?;
        let span = tracing::info_span!(
            parent: None,
            "bus.stream",
            otel.name = "stream",
            otel.kind = "producer",
            execution_id,
            events = Empty,
            chunks = Empty,
            rows = Empty,
            bytes = Empty,
            trace_id = Empty,
        );
        telemetry::continue_trace(&span, parent);
        let traceparent = telemetry::traceparent_of(&span, parent);
        Some(StreamSpan {
            span,
            traceparent,
            events: 0,
            chunks: 0,
            rows: 0,
            bytes: 0,
        })
    }

    /// The `publish` span of the next event (with `C2S_OTEL_CHUNK_SPANS` only) and the `traceparent`
    /// its frame carries.
    pub fn event(&self, kind: &'static str, seq: u64) -> (Option<tracing::Span>, Option<String>) {
        if !telemetry::chunk_spans() {
            return (None, self.traceparent.clone());
        }
        let span = tracing::info_span!(
            parent: &self.span,
            "bus.publish",
            otel.name = %format!("publish {kind}"),
            otel.kind = "producer",
            seq,
        );
        let traceparent = telemetry::traceparent_of(&span, self.traceparent.as_deref());
        (Some(span), traceparent)
    }

    /// Counts one event handed to the bus: `rows` for a `data_chunk`, `bytes` of its frame.
    pub fn count(&mut self, rows: Option<u64>, bytes: usize) {
        self.events += 1;
        self.bytes += bytes as u64;
        if let Some(rows) = rows {
            self.chunks += 1;
            self.rows += rows;
        }
    }
}

impl Drop for StreamSpan {
    fn drop(&mut self) {
        // Recorded once, at the end: a recorded field is one more attribute on the exported span.
        self.span.record("events", self.events);
        self.span.record("chunks", self.chunks);
        self.span.record("rows", self.rows);
        self.span.record("bytes", self.bytes);
    }
}
