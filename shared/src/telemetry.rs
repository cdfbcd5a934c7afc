//! Logging and tracing, set up once per process: JSON lines (with the trace id) for machines, human
//! format on a terminal; OpenTelemetry spans exported over OTLP/HTTP when an endpoint is configured.
//!
//! W3C `traceparent` travels in the envelope of client frames, in every job and in every event frame, so
//! one trace covers client frame -> gateway -> Redis -> worker -> SQL -> Redis -> gateway -> client; its
//! sampled flag travels with it, so every process keeps or drops the same traces.
//!
//! Invariants: the log filter (`C2S_LOG`) and the span filter (`C2S_OTEL_FILTER`) are per-layer filters,
//! so neither changes what the other sees; a query's trace has a fixed number of spans whatever the
//! size of its result (per-event spans only with `C2S_OTEL_CHUNK_SPANS`).

mod export;

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use opentelemetry::global;
use opentelemetry::trace::{Span as _, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::config::{LogArgs, LogFormat};

/// The spans exported by default: the project's own (gateway and worker, binary and library, shared), at info.
pub const DEFAULT_OTEL_FILTER: &str =
    "gateway=info,c2s_gateway=info,worker=info,c2s_worker=info,c2s_shared=info";

static EXPORTING: AtomicBool = AtomicBool::new(false);
static CHUNK_SPANS: AtomicBool = AtomicBool::new(false);
/// The tracer of the exported spans, for the few spans built with explicit times.
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

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

/// True when every published and delivered event gets a span of its own (`C2S_OTEL_CHUNK_SPANS`).
pub fn chunk_spans() -> bool {
    exporting() && CHUNK_SPANS.load(Ordering::Relaxed)
}

fn env_filter(directives: &str, what: &str, fallback: &str) -> EnvFilter {
    EnvFilter::try_new(directives).unwrap_or_else(|e| {
        eprintln!("invalid {what} filter {directives:?} ({e}); using `{fallback}`");
        EnvFilter::new(fallback)
    })
}

pub fn init(args: &LogArgs, service: &'static str) -> TelemetryGuard {
    global::set_text_map_propagator(TraceContextPropagator::new());
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
    let mut layers = vec![fmt
        .with_filter(env_filter(&args.log, "--log", "info"))
        .boxed()];
    let mut provider = None;
    if let Some(endpoint) = args.otel_endpoint.as_deref() {
        match export::provider(args, endpoint, service) {
            Ok(traces) => {
                let tracer = traces.tracer(service);
                let _ = TRACER.set(tracer.clone());
                provider = Some(traces);
                EXPORTING.store(true, Ordering::Relaxed);
                CHUNK_SPANS.store(args.otel_chunk_spans, Ordering::Relaxed);
                let filter = env_filter(&args.otel_filter, "--otel", DEFAULT_OTEL_FILTER);
                layers.push(
                    tracing_opentelemetry::layer()
                        .with_tracer(tracer)
                        .with_filter(filter)
                        .boxed(),
                );
            }
            Err(e) => eprintln!("{e}"),
        }
    }
    if let Err(e) = tracing_subscriber::registry().with(layers).try_init() {
        eprintln!("logging already initialised: {e}");
    }
    TelemetryGuard { provider }
}

/// Exports a span that already happened, from `started_at_ms` (Unix ms, another node's clock) until
/// now, as a child of `parent` (a `traceparent`); nothing without a parent or when spans are not exported.
pub fn record_past_span(
    name: &'static str,
    parent: Option<&str>,
    started_at_ms: i64,
    attributes: Vec<(&'static str, String)>,
) {
    let (Some(tracer), Some(parent)) = (TRACER.get(), parent.and_then(extract)) else {
        return;
    };
    let end = SystemTime::now();
    let start = SystemTime::UNIX_EPOCH + Duration::from_millis(started_at_ms.max(0) as u64);
    let mut span = tracer
        .span_builder(name)
        .with_start_time(start.min(end))
        .with_attributes(attributes.into_iter().map(|(k, v)| KeyValue::new(k, v)))
        .start_with_context(tracer, &parent);
    span.end_with_timestamp(end);
}

/// The context of a valid W3C `traceparent`.
fn extract(traceparent: &str) -> Option<opentelemetry::Context> {
    let carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    let parent = global::get_text_map_propagator(|p| p.extract(&carrier));
    parent.span().span_context().is_valid().then_some(parent)
}

/// True when `span` is recorded and exported (its trace was sampled).
pub fn is_sampled(span: &tracing::Span) -> bool {
    span.context().span().span_context().is_sampled()
}

/// Continues the trace of a W3C `traceparent` (if any, and valid) in `span`, and records the trace id
/// in its `trace_id` field (when it has one) so log lines carry it.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    if let Some(parent) = traceparent.and_then(extract) {
        let _ = span.set_parent(parent);
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
