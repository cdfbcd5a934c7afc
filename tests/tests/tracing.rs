//! One trace per query across processes: a gateway and a worker export spans over OTLP/HTTP to a
//! receiver inside this test; after one query (started with a client `traceparent`) the spans share the
//! client's trace id and chain client -> gateway receive -> enqueue -> worker execute -> publish ->
//! gateway deliver, and the SQL span carries the database attributes.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_spans_gateway_redis_worker_and_delivery() {
    let (port, spans) = otlp_receiver().await;
    let otel = [
        "--otel-endpoint".to_owned(),
        format!("http://127.0.0.1:{port}"),
        "--otel-batch-delay-ms".to_owned(),
        "100".to_owned(),
    ];
    let cluster = Cluster::builder("tracing")
        .gateways(2)
        .workers(1)
        .gateway_args(otel.clone())
        .worker_args(otel)
        .start()
        .await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let mut c = cluster.query_client(0).await;
    let mut frame = execute_query_frame(
        "SELECT g AS n FROM generate_series(1, 3000) g",
        Some(json!({"chunkSize": 1000})),
        Some("traced-1"),
    );
    frame["traceparent"] = json!(format!("00-{trace_id}-{client_span}-01"));
    c.send_json(frame).await;
    let ack = c.recv_ack(Some("traced-1")).await;
    let exec = exec_of(&ack).unwrap().to_owned();
    let frames = c.collect_execution(&exec).await;
    check_full_stream(&exec, &frames);
    // Every event carries the trace onwards.
    for f in &frames {
        let tp = f["traceparent"].as_str().unwrap_or_default();
        assert!(
            tp.contains(trace_id),
            "event without the trace: {}",
            short(f)
        );
    }
    // A second client on the other node follows the same execution: its deliveries join the trace too.
    let mut other = cluster.client(1, "/ws/data").await;
    other.subscribe(&exec, None).await;
    other.collect_execution(&exec).await;

    // Wait for the expected spans (batches are exported every 100 ms).
    let deadline = Instant::now() + Duration::from_secs(20);
    let (by_id, trace): (HashMap<String, ReceivedSpan>, Vec<ReceivedSpan>) = loop {
        let trace: Vec<ReceivedSpan> = spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect();
        let names: Vec<&str> = trace.iter().map(|s| s.name.as_str()).collect();
        let delivered = names
            .iter()
            .filter(|n| **n == "deliver query_completed")
            .count();
        if names.contains(&"worker execute") && names.contains(&"db query") && delivered >= 2 {
            break (
                trace
                    .iter()
                    .map(|s| (s.span_id.clone(), s.clone()))
                    .collect(),
                trace,
            );
        }
        assert!(
            Instant::now() < deadline,
            "spans of the trace so far: {names:?}; all spans received: {}",
            spans.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let named =
        |name: &str| -> Vec<&ReceivedSpan> { trace.iter().filter(|s| s.name == name).collect() };
    let parent_name = |s: &ReceivedSpan| -> String {
        by_id
            .get(&s.parent_span_id)
            .map_or_else(|| format!("<{}>", s.parent_span_id), |p| p.name.clone())
    };

    let receive = named("gateway receive execute_query");
    assert_eq!(receive.len(), 1, "{trace:#?}");
    assert_eq!(
        receive[0].parent_span_id, client_span,
        "the client's span is the parent"
    );
    let enqueue = named("enqueue job");
    assert_eq!(parent_name(enqueue[0]), "gateway receive execute_query");
    let execute = named("worker execute");
    assert_eq!(execute.len(), 1);
    assert_eq!(parent_name(execute[0]), "enqueue job");
    let db = named("db query");
    assert_eq!(parent_name(db[0]), "worker execute");
    assert_eq!(
        db[0].attributes.get("db.system").map(String::as_str),
        Some("postgresql")
    );
    assert!(db[0]
        .attributes
        .get("db.statement")
        .is_some_and(|s| s.contains("generate_series")));
    assert_eq!(
        db[0].attributes.get("db.rows").map(String::as_str),
        Some("3000")
    );
    let published_chunks = named("publish data_chunk");
    assert_eq!(published_chunks.len(), 3, "one publish span per chunk");
    for p in &published_chunks {
        let parent = parent_name(p);
        assert!(
            parent == "db query" || parent == "worker execute",
            "publish under {parent}"
        );
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
    // Deliveries on both nodes (3 chunks each), each the child of the publish of that chunk.
    let delivered_chunks = named("deliver data_chunk");
    assert_eq!(
        delivered_chunks.len(),
        6,
        "3 chunks delivered on each of 2 nodes"
    );
    for d in &delivered_chunks {
        assert_eq!(parent_name(d), "publish data_chunk");
    }
}
