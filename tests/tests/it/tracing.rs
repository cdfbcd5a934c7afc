//! One trace per query across processes: gateways and workers export spans over OTLP/HTTP to a
//! receiver inside this test. After a query started with a client `traceparent` the spans share the
//! client's trace id and have the fixed shape client -> gateway receive -> enqueue -> queue wait /
//! worker execute -> db query / stream -> one deliver per follower, whatever the size of the result;
//! traces are exported whatever the log level (`C2S_LOG=warn`, `error`, embedded mode too); with a
//! sample ratio of 0 only the traces of a sampled client `traceparent` are exported; a full export
//! queue is counted in `c2s_otel_spans_dropped_total`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Debug, Clone)]
struct ReceivedSpan {
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    name: String,
    attributes: HashMap<String, String>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A minimal OTLP/HTTP receiver: accepts `POST /v1/traces` (protobuf) and keeps every span.
async fn otlp_receiver() -> (u16, Arc<Mutex<Vec<ReceivedSpan>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let spans: Arc<Mutex<Vec<ReceivedSpan>>> = Arc::default();
    let store = spans.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let store = store.clone();
            tokio::spawn(async move {
                // Keep-alive: serve requests on this connection until it closes.
                let mut buf = Vec::new();
                loop {
                    let head_end = loop {
                        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break p + 4;
                        }
                        let mut chunk = [0u8; 8192];
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buf.len() < head_end + length {
                        let mut chunk = [0u8; 65536];
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body: Vec<u8> = buf.drain(..head_end + length).skip(head_end).collect();
                    if let Ok(request) = ExportTraceServiceRequest::decode(body.as_slice()) {
                        let mut store = store.lock().unwrap();
                        for rs in request.resource_spans {
                            for ss in rs.scope_spans {
                                for span in ss.spans {
                                    let attributes = span
                                        .attributes
                                        .iter()
                                        .map(|kv| {
                                            let v = match kv
                                                .value
                                                .as_ref()
                                                .and_then(|v| v.value.clone())
                                            {
                                                Some(AnyValue::StringValue(s)) => s,
                                                Some(AnyValue::IntValue(i)) => i.to_string(),
                                                other => format!("{other:?}"),
                                            };
                                            (kv.key.clone(), v)
                                        })
                                        .collect();
                                    store.push(ReceivedSpan {
                                        trace_id: hex(&span.trace_id),
                                        span_id: hex(&span.span_id),
                                        parent_span_id: hex(&span.parent_span_id),
                                        name: span.name,
                                        attributes,
                                    });
                                }
                            }
                        }
                    }
                    let reply = "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
                    if socket.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, spans)
}

/// `--otel-endpoint` to the receiver on `port`, batches every 100 ms, then `extra`.
fn otel_args(port: u16, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "--otel-endpoint".to_owned(),
        format!("http://127.0.0.1:{port}"),
        "--otel-batch-delay-ms".to_owned(),
        "100".to_owned(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// The spans received so far of the trace `trace_id`.
fn trace_of(spans: &Mutex<Vec<ReceivedSpan>>, trace_id: &str) -> Vec<ReceivedSpan> {
    spans
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.trace_id == trace_id)
        .cloned()
        .collect()
}

/// Waits (20 s at most) until the trace `trace_id` has `deliveries` `deliver` spans and the worker's
/// spans, then a little longer so that anything else exported with them has arrived too.
async fn wait_trace(
    spans: &Mutex<Vec<ReceivedSpan>>,
    trace_id: &str,
    deliveries: usize,
) -> Vec<ReceivedSpan> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let trace = trace_of(spans, trace_id);
        let count = |name: &str| trace.iter().filter(|s| s.name == name).count();
        if count("worker execute") == 1 && count("stream") >= 1 && count("deliver") >= deliveries {
            break;
        }
        let names: Vec<&str> = trace.iter().map(|s| s.name.as_str()).collect();
        assert!(
            Instant::now() < deadline,
            "spans of trace {trace_id} so far: {names:?}; all spans received: {}",
            spans.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Both services batch every 100 ms: stragglers of the same trace come within this.
    tokio::time::sleep(Duration::from_millis(600)).await;
    trace_of(spans, trace_id)
}

/// Runs `query` with the client's `traceparent` (if any) to the end; returns the events.
async fn run_traced(
    c: &mut Client,
    query: &str,
    chunk_size: u32,
    id: &str,
    traceparent: Option<&str>,
) -> (String, Vec<serde_json::Value>) {
    let mut frame = execute_query_frame(query, Some(json!({"chunkSize": chunk_size})), Some(id));
    if let Some(tp) = traceparent {
        frame["traceparent"] = json!(tp);
    }
    c.send_json(frame).await;
    let ack = c.recv_ack(Some(id)).await;
    let exec = exec_of(&ack).unwrap().to_owned();
    let frames = c.collect_execution(&exec).await;
    check_full_stream(&exec, &frames);
    (exec, frames)
}

fn named<'a>(trace: &'a [ReceivedSpan], name: &str) -> Vec<&'a ReceivedSpan> {
    trace.iter().filter(|s| s.name == name).collect()
}

fn attr<'a>(span: &'a ReceivedSpan, key: &str) -> Option<&'a str> {
    span.attributes.get(key).map(String::as_str)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_spans_gateway_redis_worker_and_delivery() {
    let (port, spans) = otlp_receiver().await;
    let cluster = Cluster::builder("tracing")
        .gateways(2)
        .workers(1)
        .gateway_args(otel_args(port, &[]))
        .worker_args(otel_args(port, &[]))
        .start()
        .await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let mut c = cluster.query_client(0).await;
    let (exec, frames) = run_traced(
        &mut c,
        "SELECT g AS n FROM generate_series(1, 3000) g",
        1000,
        "traced-1",
        Some(&format!("00-{trace_id}-{client_span}-01")),
    )
    .await;
    // Every event carries the trace onwards, and its sampled flag.
    for f in &frames {
        let tp = f["traceparent"].as_str().unwrap_or_default();
        assert!(
            tp.contains(trace_id) && tp.ends_with("-01"),
            "event without the trace: {}",
            short(f)
        );
    }
    // A second client on the other node follows the same execution: its delivery joins the trace too.
    let mut other = cluster.client(1, "/ws/data").await;
    other.subscribe(&exec, None).await;
    other.collect_execution(&exec).await;

    let trace = wait_trace(&spans, trace_id, 2).await;
    let by_id: HashMap<String, ReceivedSpan> = trace
        .iter()
        .map(|s| (s.span_id.clone(), s.clone()))
        .collect();
    let parent_name = |s: &ReceivedSpan| -> String {
        by_id
            .get(&s.parent_span_id)
            .map_or_else(|| format!("<{}>", s.parent_span_id), |p| p.name.clone())
    };
    let mut names: Vec<&str> = trace.iter().map(|s| s.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "db query",
            "deliver",
            "deliver",
            "enqueue job",
            "gateway receive execute_query",
            "queue wait",
            "stream",
            "worker execute"
        ],
        "the shape of a query's trace: {trace:#?}"
    );
    let receive = named(&trace, "gateway receive execute_query");
    assert_eq!(
        receive[0].parent_span_id, client_span,
        "the client's span is the parent"
    );
    let enqueue = named(&trace, "enqueue job");
    assert_eq!(parent_name(enqueue[0]), "gateway receive execute_query");
    assert_eq!(parent_name(named(&trace, "queue wait")[0]), "enqueue job");
    assert_eq!(
        parent_name(named(&trace, "worker execute")[0]),
        "enqueue job"
    );
    let db = named(&trace, "db query");
    assert_eq!(parent_name(db[0]), "worker execute");
    assert_eq!(attr(db[0], "db.system"), Some("postgresql"));
    assert!(attr(db[0], "db.statement").is_some_and(|s| s.contains("generate_series")));
    assert_eq!(attr(db[0], "db.rows"), Some("3000"));
    let stream = named(&trace, "stream")[0];
    assert_eq!(parent_name(stream), "worker execute");
    assert_eq!(attr(stream, "chunks"), Some("3"), "{stream:?}");
    assert_eq!(attr(stream, "rows"), Some("3000"), "{stream:?}");
    // started, progress, stream start, 3 chunks, stream complete, completed (progress is paced).
    let events: u64 = attr(stream, "events").unwrap().parse().unwrap();
    assert!(events >= 7, "{stream:?}");
    // One delivery per follower (one on each node), each relaying the whole result.
    for d in named(&trace, "deliver") {
        assert_eq!(parent_name(d), "stream");
        assert_eq!(attr(d, "chunks"), Some("3"), "{d:?}");
        assert_eq!(attr(d, "rows"), Some("3000"), "{d:?}");
        assert_eq!(
            attr(d, "events").map(|e| e.parse::<u64>().unwrap()),
            Some(events)
        );
        let bytes: u64 = attr(d, "bytes").unwrap().parse().unwrap();
        assert!(bytes > 3000 * 7, "{d:?}");
        let first: i64 = attr(d, "first_chunk_at_ms").unwrap().parse().unwrap();
        let last: i64 = attr(d, "last_chunk_at_ms").unwrap().parse().unwrap();
        assert!(first <= last, "{d:?}");
    }
    // Log lines written inside the trace carry its id (the harness asks for text logs; JSON logs carry
    // the same span fields).
    let needle = format!("trace_id=\"{trace_id}\"");
    let logged_until = Instant::now() + Duration::from_secs(10);
    loop {
        // The harness copies the node's stderr to its log file as it comes: allow it a moment.
        let worker_log = cluster.workers[0].log_tail(200);
        if worker_log
            .lines()
            .any(|l| l.contains("query finished") && l.contains(&needle))
        {
            break;
        }
        assert!(
            Instant::now() < logged_until,
            "no worker log line with the trace id:\n{worker_log}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `C2S_LOG=warn` or `error` quiets the logs, not the traces: gateway and worker both export.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_are_exported_whatever_the_log_level() {
    let (port, spans) = otlp_receiver().await;
    for (i, level) in ["warn", "error"].into_iter().enumerate() {
        let args = otel_args(port, &["--log", level]);
        let cluster = Cluster::builder(&format!("tracing-log-{level}"))
            .gateways(1)
            .workers(1)
            .gateway_args(args.clone())
            .worker_args(args)
            .start()
            .await;
        let trace_id = format!("4bf92f3577b34da6a3ce929d0e0e474{i}");
        let mut c = cluster.query_client(0).await;
        run_traced(
            &mut c,
            "SELECT g AS n FROM generate_series(1, 1000) g",
            500,
            "quiet-1",
            Some(&format!("00-{trace_id}-00f067aa0ba902b7-01")),
        )
        .await;
        let trace = wait_trace(&spans, &trace_id, 1).await;
        for name in ["gateway receive execute_query", "enqueue job", "db query"] {
            assert_eq!(named(&trace, name).len(), 1, "C2S_LOG={level}: {trace:#?}");
        }
        // The logs did stay quiet.
        let log = cluster.workers[0].log_tail(500);
        assert!(
            !log.contains("query finished"),
            "C2S_LOG={level} logged an info line:\n{log}"
        );
    }
}

/// Embedded mode (gateway and worker in one process) with `C2S_LOG=error` exports the whole trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_mode_exports_traces_at_log_level_error() {
    let (port, spans) = otlp_receiver().await;
    let cluster = Cluster::builder("tracing-embedded")
        .embedded()
        .gateways(1)
        .gateway_args(otel_args(port, &["--log", "error"]))
        .start()
        .await;
    let trace_id = "5bf92f3577b34da6a3ce929d0e0e4736";
    let mut c = cluster.query_client(0).await;
    run_traced(
        &mut c,
        "SELECT id, name FROM customers ORDER BY id",
        10,
        "embedded-1",
        Some(&format!("00-{trace_id}-00f067aa0ba902b7-01")),
    )
    .await;
    let trace = wait_trace(&spans, trace_id, 1).await;
    let db = named(&trace, "db query");
    assert_eq!(db.len(), 1, "{trace:#?}");
    assert_eq!(attr(db[0], "db.system"), Some("sqlite"));
    assert_eq!(named(&trace, "gateway receive execute_query").len(), 1);
}

/// A 100k-row result in 500-row chunks (200 chunks) makes the same few spans as a small one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn span_count_of_a_large_query_is_bounded() {
    let (port, spans) = otlp_receiver().await;
    let cluster = Cluster::builder("tracing-large")
        .gateways(1)
        .workers(1)
        .gateway_args(otel_args(port, &[]))
        .worker_args(otel_args(port, &[]))
        .start()
        .await;
    let trace_id = "6bf92f3577b34da6a3ce929d0e0e4736";
    let mut c = cluster.query_client(0).await;
    run_traced(
        &mut c,
        "SELECT g AS n, md5(g::text) AS h FROM generate_series(1, 100000) g",
        500,
        "large-1",
        Some(&format!("00-{trace_id}-00f067aa0ba902b7-01")),
    )
    .await;
    let trace = wait_trace(&spans, trace_id, 1).await;
    eprintln!("spans in the trace of a 100k-row query: {}", trace.len());
    assert!(trace.len() <= 10, "{} spans: {trace:#?}", trace.len());
    let deliver = named(&trace, "deliver");
    assert_eq!(deliver.len(), 1);
    assert_eq!(attr(deliver[0], "chunks"), Some("200"), "{:?}", deliver[0]);
    assert_eq!(attr(deliver[0], "rows"), Some("100000"), "{:?}", deliver[0]);
}

/// Ratio 0: a trace the client did not start sampled is not exported (no traceparent, or `-00`), one
/// the client sampled (`-01`) is, under the client's trace id; the decision travels in the events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_ratio_zero_exports_only_client_sampled_traces() {
    let (port, spans) = otlp_receiver().await;
    let args = otel_args(port, &["--otel-sample-ratio", "0"]);
    let cluster = Cluster::builder("tracing-sampling")
        .gateways(1)
        .workers(1)
        .gateway_args(args.clone())
        .worker_args(args)
        .start()
        .await;
    let sql = "SELECT g AS n FROM generate_series(1, 1000) g";
    let mut c = cluster.query_client(0).await;
    let (_, untraced) = run_traced(&mut c, sql, 500, "root-1", None).await;
    let unsampled_id = "7bf92f3577b34da6a3ce929d0e0e4736";
    let (_, unsampled) = run_traced(
        &mut c,
        sql,
        500,
        "unsampled-1",
        Some(&format!("00-{unsampled_id}-00f067aa0ba902b7-00")),
    )
    .await;
    for f in untraced.iter().chain(&unsampled) {
        let tp = f["traceparent"].as_str().unwrap_or_default();
        assert!(tp.ends_with("-00"), "an unsampled event: {}", short(f));
    }
    assert!(unsampled
        .iter()
        .all(|f| f["traceparent"].as_str().unwrap().contains(unsampled_id)));
    let sampled_id = "8bf92f3577b34da6a3ce929d0e0e4736";
    run_traced(
        &mut c,
        sql,
        500,
        "sampled-1",
        Some(&format!("00-{sampled_id}-00f067aa0ba902b7-01")),
    )
    .await;
    let trace = wait_trace(&spans, sampled_id, 1).await;
    assert_eq!(trace.len(), 7, "the whole sampled trace: {trace:#?}");
    let others: Vec<(String, String)> = spans
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.trace_id != sampled_id)
        .map(|s| (s.trace_id.clone(), s.name.clone()))
        .collect();
    assert!(others.is_empty(), "spans of unsampled traces: {others:?}");
}

/// A full export queue drops spans, and says how many: the receiver here never answers, so the queue
/// (4 spans) fills while the first export waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_spans_are_counted() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let args = otel_args(
        port,
        &[
            "--otel-max-queue-size",
            "4",
            "--otel-max-export-batch-size",
            "2",
            "--otel-chunk-spans",
        ],
    );
    let cluster = Cluster::builder("tracing-dropped")
        .gateways(1)
        .workers(1)
        .gateway_args(args.clone())
        .worker_args(args)
        .start()
        .await;
    let mut c = cluster.query_client(0).await;
    run_traced(
        &mut c,
        "SELECT g AS n FROM generate_series(1, 2000) g",
        100,
        "dropped-1",
        None,
    )
    .await;
    let (status, metrics) = http_get(cluster.gateway(0).addr(), "/metrics").await;
    assert_eq!(status, 200);
    let dropped: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(r#"c2s_otel_spans_dropped_total{reason="queue_full"} "#))
        .unwrap_or_else(|| panic!("no dropped-span counter in:\n{metrics}"))
        .trim()
        .parse()
        .unwrap();
    // 20 chunks delivered, a span each, against a queue of 4 that nothing empties.
    assert!(dropped >= 10.0, "dropped {dropped}");
}
