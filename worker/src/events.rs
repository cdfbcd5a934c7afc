//! Publishing an execution's events: `seq` numbering, and the chunker that turns rows into `data_chunk`s
//! and paces `query_progress`.

use std::sync::Arc;
use std::time::Instant;

use bytestring::ByteString;
use c2s_shared::bus::{Bus, BusError, BusEvent};
use c2s_shared::now_ms;
use c2s_shared::protocol::{
    Column, DataChunk, DataStreamComplete, DataStreamStart, QueryProgress, RowFormat, ServerFrame,
    ServerMessage,
};
use c2s_shared::telemetry;
use serde_json::Value;
use tracing::Instrument;

use crate::config::ResolvedOptions;

/// The one writer of an execution's event stream: numbers events 1, 2, 3… and publishes them in order.
pub struct EventSink {
    bus: Arc<dyn Bus>,
    execution_id: String,
    traceparent: Option<String>,
    seq: u64,
    progress: u8,
    /// When the query started (for the first-chunk latency).
    started: Instant,
}

impl EventSink {
    pub fn new(bus: Arc<dyn Bus>, execution_id: String, traceparent: Option<String>) -> Self {
        EventSink {
            bus,
            execution_id,
            traceparent,
            seq: 0,
            progress: 0,
            started: Instant::now(),
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

    /// Publishes one event; returns the size of its encoded frame.
    pub async fn emit(&mut self, message: ServerMessage) -> Result<usize, BusError> {
        let seq = self.seq + 1;
        let terminal = message.is_terminal();
        let mut frame = ServerFrame {
            message,
            seq: Some(seq),
            traceparent: self.traceparent.clone(),
        };
        // When exporting traces: one span per published event, and the frame carries it so that the
        // delivery spans on the gateways hang below it.
        let span = telemetry::exporting().then(|| {
            let kind = c2s_shared::metrics::frame_type(&frame.to_text()).to_owned();
            tracing::info_span!(
                "bus.publish",
                otel.name = %format!("publish {kind}"),
                otel.kind = "producer",
                seq,
            )
        });
        if let Some(span) = &span {
            frame.traceparent = telemetry::traceparent_of(span, self.traceparent.as_deref());
        }
        let event = BusEvent {
            seq,
            terminal,
            frame: ByteString::from(frame.to_text()),
        };
        let publish = self.bus.publish_event(&self.execution_id, &event);
        match span {
            Some(span) => publish.instrument(span).await?,
            None => publish.await?,
        }
        self.seq = seq;
        Ok(event.frame.len())
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
        });
        self.emit(msg).await.map(|_| ())
    }
}

/// Progress reported once execution started, before any row.
pub const PROGRESS_EXECUTING: u8 = 5;
/// Progress at which streaming starts; it then climbs towards 99 with the planner's row estimate.
pub const PROGRESS_STREAMING: u8 = 10;

/// Buffers rows into chunks of `chunk_size`, emits them, and paces progress events.
pub struct Chunker<'a> {
    sink: &'a mut EventSink,
    columns: Arc<[Column]>,
    options: &'a ResolvedOptions,
    estimated_rows: Option<u64>,
    rows: Vec<Value>,
    chunk_index: u64,
    total_rows: u64,
    /// Bytes of the chunks sent so far.
    total_bytes: u64,
    last_progress: Instant,
}

impl<'a> Chunker<'a> {
    /// Emits `data_stream_start` and returns the chunker for the rows.
    pub async fn start(
        sink: &'a mut EventSink,
        columns: Vec<Column>,
        estimated_rows: Option<u64>,
        options: &'a ResolvedOptions,
    ) -> Result<Chunker<'a>, BusError> {
        sink.emit(ServerMessage::DataStreamStart(DataStreamStart {
            execution_id: sink.execution_id.clone(),
            timestamp: now_ms(),
            total_rows: None,
            estimated_rows,
            columns: columns.clone(),
            row_format: options.row_format,
            chunk_size: options.chunk_size,
        }))
        .await?;
        Ok(Chunker {
            sink,
            columns: columns.into(),
            options,
            estimated_rows,
            rows: Vec::with_capacity(options.chunk_size as usize),
            chunk_index: 0,
            total_rows: 0,
            total_bytes: 0,
            last_progress: Instant::now(),
        })
    }

    pub fn columns(&self) -> &[Column] {
        &self.columns
    }

    pub fn row_format(&self) -> RowFormat {
        self.options.row_format
    }

    pub fn total_rows(&self) -> u64 {
        self.total_rows
    }

    /// True once the row cap or the byte cap is reached: the next row would go beyond it.
    pub fn is_full(&self) -> bool {
        self.total_rows >= self.options.max_rows || self.total_bytes >= self.options.max_bytes
    }

    /// Adds one row (already shaped as object or array); emits a chunk when full.
    pub async fn push(&mut self, row: Value) -> Result<(), BusError> {
        self.rows.push(row);
        self.total_rows += 1;
        if self.rows.len() >= self.options.chunk_size as usize {
            self.flush().await?;
            if self.last_progress.elapsed() >= self.options.progress_interval {
                self.last_progress = Instant::now();
                let progress = match self.estimated_rows {
                    Some(est) if est > 0 => {
                        let span = u64::from(99 - PROGRESS_STREAMING);
                        let done = (self.total_rows.min(est) * span) / est;
                        PROGRESS_STREAMING + done as u8
                    }
                    _ => PROGRESS_STREAMING,
                };
                self.sink
                    .progress(progress, "streaming", Some(self.total_rows))
                    .await?;
            }
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), BusError> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(
            &mut self.rows,
            Vec::with_capacity(self.options.chunk_size as usize),
        );
        if self.chunk_index == 0 {
            metrics::histogram!(c2s_shared::metrics::QUERY_FIRST_CHUNK)
                .record(self.sink.started.elapsed().as_secs_f64());
        }
        metrics::counter!(c2s_shared::metrics::ROWS_STREAMED).increment(data.len() as u64);
        let msg = ServerMessage::DataChunk(DataChunk {
            execution_id: self.sink.execution_id.clone(),
            timestamp: now_ms(),
            chunk_index: self.chunk_index,
            data,
        });
        self.total_bytes += self.sink.emit(msg).await? as u64;
        self.chunk_index += 1;
        Ok(())
    }

    /// Emits the last partial chunk and `data_stream_complete`; returns (rows, chunks).
    pub async fn finish(mut self) -> Result<(u64, u64), BusError> {
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

/// Shapes one row from its cells, per `rowFormat`.
pub fn shape_row(columns: &[Column], cells: Vec<Value>, format: RowFormat) -> Value {
    match format {
        RowFormat::Arrays => Value::Array(cells),
        RowFormat::Objects => {
            Value::Object(columns.iter().map(|c| c.name.clone()).zip(cells).collect())
        }
    }
}
