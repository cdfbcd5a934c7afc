//! Logging and tracing, set up once per process: JSON lines (with the trace id) for machines, human
//! format on a terminal; OpenTelemetry spans exported over OTLP/HTTP when an endpoint is configured.
//!
//! W3C `traceparent` travels in the envelope of client frames, in every job and in every event frame, so
//! one trace covers client frame -> gateway -> Redis -> worker -> SQL -> Redis -> gateway -> client.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::global;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::config::{LogArgs, LogFormat};

static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Flushes and stops the trace exporter when dropped (at the end of `main`).
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown_with_timeout(Duration::from_secs(3));
        }
    }
}

/// True when spans are exported (callers skip per-event spans otherwise).
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

pub fn init(args: &LogArgs, service: &'static str) -> TelemetryGuard {
    global::set_text_map_propagator(TraceContextPropagator::new());
    let filter = EnvFilter::try_new(&args.log).unwrap_or_else(|e| {
        eprintln!("invalid --log filter {:?} ({e}); using `info`", args.log);
        EnvFilter::new("info")
    });
    let json = match args.log_format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let fmt: Box<dyn Layer<Registry> + Send + Sync> = if json {
        // The current span's fields (among them `trace_id`) go into every line.
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed()
    };
    let mut provider = None;
    let otel = args.otel_endpoint.as_deref().and_then(|endpoint| {
        let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
        let exporter = match opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(url.clone())
            .with_timeout(Duration::from_secs(5))
            .build()
        {
            Ok(e) => e,
            Err(e) => {
                eprintln!("trace export to {url} disabled: {e}");
                return None;
            }
        };
        let batch = BatchConfigBuilder::default()
            .with_scheduled_delay(Duration::from_millis(args.otel_batch_delay_ms.max(10)))
            .build();
        let traces = SdkTracerProvider::builder()
            .with_span_processor(
                BatchSpanProcessor::builder(exporter)
                    .with_batch_config(batch)
                    .build(),
            )
            .with_resource(Resource::builder().with_service_name(service).build())
            .build();
        let tracer = traces.tracer(service);
        provider = Some(traces);
        EXPORTING.store(true, Ordering::Relaxed);
        Some(tracing_opentelemetry::layer().with_tracer(tracer).boxed())
    });
    let mut layers = vec![fmt];
    layers.extend(otel);
    let result = tracing_subscriber::registry()
        .with(layers)
        .with(filter)
        .try_init();
    if let Err(e) = result {
        eprintln!("logging already initialised: {e}");
    }
    TelemetryGuard { provider }
}

/// Continues the trace of a W3C `traceparent` (if any, and valid) in `span`, and records the trace id
/// in its `trace_id` field (when it has one) so log lines carry it.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    if let Some(traceparent) = traceparent {
        let carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
        let parent = global::get_text_map_propagator(|p| p.extract(&carrier));
        if parent.span().span_context().is_valid() {
            let _ = span.set_parent(parent);
        }
    }
    let context = span.context();
    let span_context = context.span().span_context().clone();
    if span_context.is_valid() {
        span.record("trace_id", span_context.trace_id().to_string());
    }
}

/// The W3C `traceparent` of `span`, to carry across Redis; `fallback` when spans are not exported.
pub fn traceparent_of(span: &tracing::Span, fallback: Option<&str>) -> Option<String> {
    if !exporting() {
        return fallback.map(str::to_owned);
    }
    let mut carrier: HashMap<String, String> = HashMap::new();
    global::get_text_map_propagator(|p| p.inject_context(&span.context(), &mut carrier));
    carrier
        .remove("traceparent")
        .or_else(|| fallback.map(str::to_owned))
}

/// The `traceparent` at the end of an encoded server frame, read without parsing the frame.
pub fn frame_traceparent(frame: &str) -> Option<&str> {
    const KEY: &str = "\"traceparent\":\"";
    let at = frame.rfind(KEY)? + KEY.len();
    frame[at..].split('"').next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_read_from_the_frame_tail() {
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let frame =
            format!(r#"{{"type":"data_chunk","payload":{{}},"seq":3,"traceparent":"{tp}"}}"#);
        assert_eq!(frame_traceparent(&frame), Some(tp));
        assert_eq!(frame_traceparent(r#"{"type":"x"}"#), None);
    }
}
