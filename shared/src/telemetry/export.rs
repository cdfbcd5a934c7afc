//! The span pipeline behind the OpenTelemetry layer: a parent-based ratio sampler, the batch processor
//! with its queue and batch sizes from the settings, and the OTLP/HTTP exporter, with every span that
//! never reaches the receiver counted in `c2s_otel_spans_dropped_total{reason}`.
//!
//! Invariants: the batch processor is handed at most `max_queue_size` spans that the exporter has not
//! taken yet, so it never drops one itself; every span refused here (`queue_full`) or lost with a
//! failed export request (`export_failed`) is counted exactly once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider, Span, SpanData,
    SpanExporter, SpanProcessor,
};
use opentelemetry_sdk::Resource;

use crate::config::LogArgs;
use crate::metrics::OTEL_SPANS_DROPPED;

/// The tracer provider exporting to `endpoint` (`/v1/traces` is appended) as `args` say.
pub fn provider(
    args: &LogArgs,
    endpoint: &str,
    service: &'static str,
) -> Result<SdkTracerProvider, String> {
    let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(url.clone())
        .with_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| format!("trace export to {url} disabled: {e}"))?;
    let max_queue = args.otel_max_queue_size.max(1);
    let batch = BatchConfigBuilder::default()
        .with_scheduled_delay(Duration::from_millis(args.otel_batch_delay_ms.max(10)))
        .with_max_queue_size(max_queue)
        .with_max_export_batch_size(args.otel_max_export_batch_size.clamp(1, max_queue))
        .build();
    let waiting = Arc::new(AtomicUsize::new(0));
    let exporter = CountedExporter {
        inner: exporter,
        waiting: waiting.clone(),
    };
    let processor = CountedProcessor {
        inner: BatchSpanProcessor::builder(exporter)
            .with_batch_config(batch)
            .build(),
        waiting,
        max_queue,
    };
    Ok(SdkTracerProvider::builder()
        .with_sampler(sampler(args.otel_sample_ratio))
        .with_span_processor(processor)
        .with_resource(Resource::builder().with_service_name(service).build())
        .build())
}

/// New traces at `ratio`; a continued one as its parent was (sampled `traceparent`: always, `-00`: never).
fn sampler(ratio: f64) -> Sampler {
    let ratio = if ratio.is_nan() {
        1.0
    } else {
        ratio.clamp(0.0, 1.0)
    };
    Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio)))
}

fn count_dropped(reason: &'static str, spans: usize) {
    metrics::counter!(OTEL_SPANS_DROPPED, "reason" => reason).increment(spans as u64);
}

/// The batch processor, refusing (and counting) a span when `max_queue` wait already.
#[derive(Debug)]
struct CountedProcessor {
    inner: BatchSpanProcessor,
    /// Spans handed to `inner` that the exporter has not taken yet.
    waiting: Arc<AtomicUsize>,
    max_queue: usize,
}

impl SpanProcessor for CountedProcessor {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.max_queue {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            count_dropped("queue_full", 1);
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The OTLP exporter, releasing the queue places of the spans it takes and counting a failed batch.
#[derive(Debug)]
struct CountedExporter<E> {
    inner: E,
    waiting: Arc<AtomicUsize>,
}

impl<E: SpanExporter> SpanExporter for CountedExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let _ = self
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_sub(spans))
            });
        let result = self.inner.export(batch).await;
        if result.is_err() {
            count_dropped("export_failed", spans);
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}
