//! Publishing an execution's events: `seq` numbering, and the chunker that turns rows into
//! `data_chunk`s, cut by rows and by bytes, and paces `query_progress`.
//!
//! Invariants:
//! - events are numbered 1, 2, 3… by the one [`EventSink`] of an execution, in publishing order;
//! - a `data_chunk` frame is at most `C2S_MAX_CHUNK_BYTES`; the rows' bytes sent never pass
//!   `C2S_MAX_RESULT_BYTES` nor their count `maxRows` (the row that would is not sent: `truncated`);
//! - `data_stream_start` goes out once the first chunk is read (the read-ahead), so its `totalRows` is
//!   exact whenever the result ends within that chunk, and otherwise the planner's estimate but never
//!   below the rows already read;
//! - `query_progress` never decreases and stays below 100 until the query completes.

use std::sync::Arc;
use std::time::Instant;

use crate::config::ResolvedOptions;
use crate::failure::Failure;
use crate::pg_text::json_string;
use crate::publisher::Publisher;
use crate::stream_span::StreamSpan;
use crate::window::{Limits, Window};
use bytestring::ByteString;
use c2s_shared::bus::{Bus, BusError, BusEvent};
use c2s_shared::codes::QueryErrorCode;
use c2s_shared::now_ms;
use c2s_shared::protocol::{
    Column, DataStreamComplete, DataStreamStart, QueryProgress, RowFormat, ServerFrame,
    ServerMessage,
};

/// The one writer of an execution's event stream: numbers events 1, 2, 3… and publishes them in order.
pub struct EventSink {
    bus: Arc<dyn Bus>,
    execution_id: String,
    traceparent: Option<String>,
    seq: u64,
    progress: u8,
    /// When the query started (for the first-chunk latency).
    started: Instant,
    /// Publishes the events in order while the next ones are built (created with the first event).
    publisher: Option<Publisher>,
    /// The execution's window of end-to-end backpressure.
    window: Window,
    /// The one span of the events this sink publishes (opened with the first of them once there is a
    /// trace to continue; closed after the terminal one).
    stream: Option<StreamSpan>,
}

impl EventSink {
    pub fn new(bus: Arc<dyn Bus>, execution_id: String, traceparent: Option<String>) -> Self {
        EventSink {
            window: Window::new(bus.clone(), execution_id.clone()),
            bus,
            execution_id,
            traceparent,
            seq: 0,
            progress: 0,
            started: Instant::now(),
            publisher: None,
            stream: None,
        }
    }

    /// A sink that continues a stream someone else wrote up to `last_seq` (a dead worker's).
    pub fn continue_after(
        bus: Arc<dyn Bus>,
        execution_id: String,
        traceparent: Option<String>,
        last_seq: u64,
    ) -> Self {
        EventSink {
            seq: last_seq,
            ..EventSink::new(bus, execution_id, traceparent)
        }
    }

    pub fn execution_id(&self) -> &str {
        &self.execution_id
    }

    /// Makes the window wait for slow followers, within these limits (a sink without them never waits:
    /// the few events that end a stream).
    pub fn pace(&mut self, limits: Limits) {
        self.window.set_limits(limits);
    }

    /// The trace context the events carry (set once the run's span exists).
    pub fn set_traceparent(&mut self, traceparent: Option<String>) {
        self.traceparent = traceparent;
    }

    /// Waits until every event emitted so far is on the bus (a later event starts a new publisher).
    pub async fn flush(&mut self) -> Result<(), BusError> {
        match self.publisher.take() {
            Some(mut publisher) => publisher.flush().await,
            None => Ok(()),
        }
    }

    /// The `seq` of the last event published (0 before the first).
    pub fn last_seq(&self) -> u64 {
        self.seq
    }

    /// Publishes one event; returns the size of its encoded frame. A terminal event returns once it and
    /// every event before it are on the bus; others may still be on their way (see [`Publisher`]).
    pub async fn emit(&mut self, message: ServerMessage) -> Result<usize, BusError> {
        let terminal = message.is_terminal();
        let (seq, span, traceparent) = self.next_event(message.type_name());
        let frame = ServerFrame {
            message,
            seq: Some(seq),
            traceparent,
        }
        .to_text();
        self.send(seq, terminal, frame, span, None).await
    }

    /// Publishes a `data_chunk` whose rows are already JSON (`rows`: the rows, comma-separated), once it
    /// fits in the execution's window (see [`Window`]).
    async fn emit_chunk(
        &mut self,
        chunk_index: u64,
        rows: &[u8],
        row_count: u64,
    ) -> Result<usize, Failure> {
        let (seq, span, traceparent) = self.next_event("data_chunk");
        let frame = chunk_frame(
            &json_string(&self.execution_id),
            now_ms(),
            chunk_index,
            rows,
            seq,
            traceparent.as_deref(),
        );
        self.window.admit(frame.len()).await?;
        Ok(self.send(seq, false, frame, span, Some(row_count)).await?)
    }

    /// The next event's seq, its publish span (only with `C2S_OTEL_CHUNK_SPANS`), and the traceparent
    /// the frame carries: the stream span's, so the delivery spans on the gateways hang below it.
    fn next_event(&mut self, kind: &'static str) -> (u64, Option<tracing::Span>, Option<String>) {
        let seq = self.seq + 1;
        if self.stream.is_none() {
            self.stream = StreamSpan::start(&self.execution_id, self.traceparent.as_deref());
        }
        match &self.stream {
            Some(stream) => {
                let (span, traceparent) = stream.event(kind, seq);
                (seq, span, traceparent)
            }
            None => (seq, None, self.traceparent.clone()),
        }
    }

    /// Hands the event `seq` to the publisher (a terminal one: and waits until all are on the bus).
    async fn send(
        &mut self,
        seq: u64,
        terminal: bool,
        frame: String,
        span: Option<tracing::Span>,
        rows: Option<u64>,
    ) -> Result<usize, BusError> {
        let size = frame.len();
        let event = BusEvent {
            seq,
            terminal,
            frame: ByteString::from(frame),
        };
        let (bus, execution_id) = (&self.bus, &self.execution_id);
        let publisher = self
            .publisher
            .get_or_insert_with(|| Publisher::new(bus.clone(), execution_id.clone()));
        publisher.send(event, span).await?;
        self.seq = seq;
        self.window.published(seq, size);
        if let Some(stream) = &mut self.stream {
            stream.count(rows, size);
        }
        if terminal {
            self.flush().await?;
            // The stream span ends once its last event is on the bus.
            self.stream = None;
        }
        Ok(size)
    }

    /// Emits `query_progress`; `progress` never goes down (a lower value is raised to the last one).
    pub async fn progress(
        &mut self,
        progress: u8,
        step: &str,
        rows_processed: Option<u64>,
    ) -> Result<(), BusError> {
        self.progress = self.progress.max(progress.min(100));
        let msg = ServerMessage::QueryProgress(QueryProgress {
            execution_id: self.execution_id.clone(),
            timestamp: now_ms(),
            progress: self.progress,
            step: step.to_owned(),
            rows_processed,
            queue_position: None,
        });
        self.emit(msg).await.map(|_| ())
    }
}

/// A `data_chunk` frame, byte for byte what serde writes for the same `ServerFrame` (tested), built
/// around rows that are already JSON so they are never parsed or re-encoded.
fn chunk_frame(
    execution_id_json: &str,
    timestamp: i64,
    chunk_index: u64,
    rows: &[u8],
    seq: u64,
    traceparent: Option<&str>,
) -> String {
    let mut frame = Vec::with_capacity(rows.len() + 160 + execution_id_json.len());
    frame.extend_from_slice(br#"{"type":"data_chunk","payload":{"executionId":"#);
    frame.extend_from_slice(execution_id_json.as_bytes());
    frame.extend_from_slice(br#","timestamp":"#);
    frame.extend_from_slice(timestamp.to_string().as_bytes());
    frame.extend_from_slice(br#","chunkIndex":"#);
    frame.extend_from_slice(chunk_index.to_string().as_bytes());
    frame.extend_from_slice(br#","data":["#);
    frame.extend_from_slice(rows);
    frame.extend_from_slice(br#"]},"seq":"#);
    frame.extend_from_slice(seq.to_string().as_bytes());
    if let Some(tp) = traceparent {
        frame.extend_from_slice(br#","traceparent":"#);
        frame.extend_from_slice(json_string(tp).as_bytes());
    }
    frame.push(b'}');
    // Every piece is valid UTF-8: JSON text from serde or from the row encoders.
    String::from_utf8(frame).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Bytes of a `data_chunk` frame around its rows (envelope, ids, numbers, traceparent), generously.
const CHUNK_ENVELOPE_BYTES: usize = 256;

/// Progress reported once execution started, before any row.
pub const PROGRESS_EXECUTING: u8 = 5;
/// Progress at which streaming starts; it then climbs towards 99 with `totalRows`.
pub const PROGRESS_STREAMING: u8 = 10;

/// What became of a row offered to the chunker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Added,
    /// The row cap or the byte cap is reached: this row is not sent, the result is truncated.
    Full,
}

/// Buffers encoded rows into chunks (cut at `chunk_size` rows or the chunk byte budget), emits them,
/// and paces progress events.
pub struct Chunker<'a> {
    sink: &'a mut EventSink,
    columns: Arc<[Column]>,
    /// For objects: each column's key, already a JSON string.
    keys: Vec<String>,
    options: &'a ResolvedOptions,
    estimated_rows: Option<u64>,
    /// `totalRows` as announced in `data_stream_start`, once it went out.
    announced_total: Option<u64>,
    /// The current chunk's rows, comma-separated JSON.
    data: Vec<u8>,
    rows_in_chunk: usize,
    /// The most row bytes one chunk may carry.
    chunk_budget: usize,
    chunk_index: u64,
    total_rows: u64,
    /// Row bytes in the chunks sent so far.
    total_bytes: u64,
    last_progress: Instant,
}

impl<'a> Chunker<'a> {
    /// A chunker for a result with these columns; nothing is emitted before the first row is read.
    pub fn new(
        sink: &'a mut EventSink,
        columns: Vec<Column>,
        estimated_rows: Option<u64>,
        options: &'a ResolvedOptions,
    ) -> Chunker<'a> {
        let keys = columns.iter().map(|c| json_string(&c.name)).collect();
        let chunk_budget = options
            .chunk_bytes
            .saturating_sub(CHUNK_ENVELOPE_BYTES + sink.execution_id.len())
            .max(1);
        Chunker {
            sink,
            columns: columns.into(),
            keys,
            options,
            estimated_rows,
            announced_total: None,
            data: Vec::new(),
            rows_in_chunk: 0,
            chunk_budget,
            chunk_index: 0,
            total_rows: 0,
            total_bytes: 0,
            last_progress: Instant::now(),
        }
    }

    pub fn columns(&self) -> &[Column] {
        &self.columns
    }

    pub fn row_format(&self) -> RowFormat {
        self.options.row_format
    }

    /// Rows per chunk.
    pub fn chunk_rows(&self) -> u64 {
        u64::from(self.options.chunk_size)
    }

    /// The row cap of this query.
    pub fn max_rows(&self) -> u64 {
        self.options.max_rows
    }

    /// Rows accepted so far.
    pub fn total_rows(&self) -> u64 {
        self.total_rows
    }

    /// Average bytes of a row's JSON so far (0 before the first).
    pub fn average_row_bytes(&self) -> u64 {
        let bytes = self.total_bytes + self.data.len() as u64;
        bytes.checked_div(self.total_rows).unwrap_or(0)
    }

    /// Offers one row: `cell(i, out)` writes column `i`'s value as JSON into `out`. Returns
    /// [`Pushed::Full`] (and drops the row) when it would pass the row or byte cap.
    pub async fn push_row(
        &mut self,
        mut cell: impl FnMut(usize, &mut Vec<u8>) -> Result<(), Failure>,
    ) -> Result<Pushed, Failure> {
        if self.total_rows >= self.options.max_rows {
            return Ok(Pushed::Full);
        }
        let start = self.data.len();
        let written = self.write_row(&mut cell);
        if let Err(e) = written {
            self.data.truncate(start);
            return Err(e);
        }
        let row_bytes = self.data.len() - start;
        if row_bytes > self.chunk_budget {
            self.data.truncate(start);
            return Err(Failure::query(
                QueryErrorCode::ValueTooLarge,
                format!(
                    "row {} is {row_bytes} bytes of JSON, more than one data_chunk carries \
                     (C2S_MAX_CHUNK_BYTES {}): select fewer or shorter columns",
                    self.total_rows + 1,
                    self.options.chunk_bytes
                ),
            ));
        }
        if self.total_bytes + self.data.len() as u64 > self.options.max_bytes {
            self.data.truncate(start);
            return Ok(Pushed::Full);
        }
        // A further row exists: the read-ahead is over, and a chunk that is full goes out.
        if self.rows_in_chunk > 0
            && (self.rows_in_chunk >= self.options.chunk_size as usize
                || self.data.len() > self.chunk_budget)
        {
            // The new row (after its leading comma) opens the next chunk, in the same buffer (its
            // capacity is kept, so a chunk is not grown again from nothing by doublings).
            let row = self.data[start + 1..].to_vec();
            self.data.truncate(start);
            self.announce(false).await?;
            self.flush().await?;
            self.data.extend_from_slice(&row);
        }
        self.rows_in_chunk += 1;
        self.total_rows += 1;
        // After the announcement there is no reason to hold a full chunk back.
        if self.announced_total.is_some()
            && (self.rows_in_chunk >= self.options.chunk_size as usize
                || self.data.len() >= self.chunk_budget)
        {
            self.flush().await?;
        }
        Ok(Pushed::Added)
    }

    /// Writes one row (`,` first unless it opens the chunk) as an object or an array.
    fn write_row(
        &mut self,
        cell: &mut impl FnMut(usize, &mut Vec<u8>) -> Result<(), Failure>,
    ) -> Result<(), Failure> {
        if self.rows_in_chunk > 0 {
            self.data.push(b',');
        }
        let objects = self.options.row_format == RowFormat::Objects;
        self.data.push(if objects { b'{' } else { b'[' });
        for i in 0..self.keys.len() {
            if i > 0 {
                self.data.push(b',');
            }
            if objects {
                self.data.extend_from_slice(self.keys[i].as_bytes());
                self.data.push(b':');
            }
            cell(i, &mut self.data)?;
        }
        self.data.push(if objects { b'}' } else { b']' });
        Ok(())
    }

    /// Emits `data_stream_start` once: `exact` when the whole result is already read.
    async fn announce(&mut self, exact: bool) -> Result<(), BusError> {
        if self.announced_total.is_some() {
            return Ok(());
        }
        let total = if exact {
            self.total_rows
        } else {
            // At least one more row than those read exists.
            self.estimated_rows
                .unwrap_or(0)
                .max(self.total_rows.saturating_add(1))
        };
        self.announced_total = Some(total);
        self.sink
            .emit(ServerMessage::DataStreamStart(DataStreamStart {
                execution_id: self.sink.execution_id.clone(),
                timestamp: now_ms(),
                total_rows: total,
                total_rows_exact: exact,
                estimated_rows: self.estimated_rows,
                columns: self.columns.to_vec(),
                row_format: self.options.row_format,
                chunk_size: self.options.chunk_size,
            }))
            .await
            .map(|_| ())
    }

    async fn flush(&mut self) -> Result<(), Failure> {
        if self.rows_in_chunk == 0 {
            return Ok(());
        }
        if self.chunk_index == 0 {
            metrics::histogram!(c2s_shared::metrics::QUERY_FIRST_CHUNK)
                .record(self.sink.started.elapsed().as_secs_f64());
        }
        metrics::counter!(c2s_shared::metrics::ROWS_STREAMED).increment(self.rows_in_chunk as u64);
        let rows = self.rows_in_chunk as u64;
        self.sink
            .emit_chunk(self.chunk_index, &self.data, rows)
            .await?;
        self.total_bytes += self.data.len() as u64;
        self.data.clear();
        self.rows_in_chunk = 0;
        self.chunk_index += 1;
        if self.last_progress.elapsed() >= self.options.progress_interval {
            self.last_progress = Instant::now();
            let total = self.announced_total.unwrap_or(self.total_rows).max(1);
            let span = u64::from(99 - PROGRESS_STREAMING);
            let done = (self.total_rows.min(total) * span) / total;
            let progress = PROGRESS_STREAMING + done.min(span) as u8;
            self.sink
                .progress(progress, "streaming", Some(self.total_rows))
                .await?;
        }
        Ok(())
    }

    /// Emits what is left and `data_stream_complete`; returns (rows, chunks).
    pub async fn finish(mut self) -> Result<(u64, u64), Failure> {
        self.announce(true).await?;
        self.flush().await?;
        let msg = ServerMessage::DataStreamComplete(DataStreamComplete {
            execution_id: self.sink.execution_id.clone(),
            timestamp: now_ms(),
            total_rows: self.total_rows,
            chunks: self.chunk_index,
        });
        self.sink.emit(msg).await?;
        Ok((self.total_rows, self.chunk_index))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use c2s_shared::protocol::DataChunk;
    use serde_json::Value;

    #[test]
    fn chunk_frame_is_what_serde_writes() {
        let rows = [
            serde_json::json!({"n": 1, "s": "a\"b"}),
            serde_json::json!({"n": 2, "s": null}),
        ];
        let joined = rows
            .iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join(",");
        for traceparent in [
            None,
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        ] {
            let ours = chunk_frame(
                &json_string("e-1"),
                1_700_000_000_123,
                7,
                joined.as_bytes(),
                42,
                traceparent,
            );
            let theirs = ServerFrame {
                message: ServerMessage::DataChunk(DataChunk {
                    execution_id: "e-1".into(),
                    timestamp: 1_700_000_000_123,
                    chunk_index: 7,
                    data: rows.to_vec(),
                }),
                seq: Some(42),
                traceparent: traceparent.map(str::to_owned),
            }
            .to_text();
            assert_eq!(ours, theirs);
            let parsed: Value = serde_json::from_str(&ours).unwrap();
            assert_eq!(parsed["payload"]["data"][0]["s"], "a\"b");
        }
    }
}
