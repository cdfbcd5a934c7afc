//! Prometheus metrics: the recorder set-up and the metric names both binaries use, in one place
//! (the Grafana dashboard queries exactly these names).

use std::net::SocketAddr;

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

pub const WS_CONNECTIONS_OPEN: &str = "c2s_ws_connections_open";
pub const WS_CONNECTIONS_OPENED: &str = "c2s_ws_connections_opened_total";
pub const WS_CONNECTIONS_CLOSED: &str = "c2s_ws_connections_closed_total";
pub const WS_MESSAGES_IN: &str = "c2s_ws_messages_in_total";
pub const WS_BYTES_IN: &str = "c2s_ws_bytes_in_total";
pub const WS_MESSAGES_OUT: &str = "c2s_ws_messages_out_total";
pub const WS_BYTES_OUT: &str = "c2s_ws_bytes_out_total";
pub const WS_ERRORS: &str = "c2s_ws_errors_total";
pub const RESUMES: &str = "c2s_resumes_total";
pub const SLOW_CONSUMER_CLOSES: &str = "c2s_slow_consumer_closes_total";
pub const RATE_LIMITED: &str = "c2s_rate_limited_total";
pub const QUERIES_ENQUEUED: &str = "c2s_queries_enqueued_total";
pub const COLLAB_PARTICIPANTS: &str = "c2s_collab_participants";
pub const COLLAB_SESSIONS: &str = "c2s_collab_sessions";
pub const REDIS_ROUNDTRIP: &str = "c2s_redis_roundtrip_seconds";
/// Refusals of the fairness and capacity limits, by `reason` (see [`REFUSAL_REASONS`]).
pub const REFUSALS: &str = "c2s_refusals_total";

/// Every `reason` of [`REFUSALS`].
pub const REFUSAL_REASONS: &[&str] = &[
    "user_connections",
    "node_connections",
    "user_rate",
    "connection_rate",
    "user_queries",
];

pub const JOBS: &str = "c2s_jobs_total";
pub const QUERY_QUEUE_WAIT: &str = "c2s_query_queue_wait_seconds";
pub const QUERY_FIRST_CHUNK: &str = "c2s_query_first_chunk_seconds";
pub const QUERY_EXECUTION: &str = "c2s_query_execution_seconds";
pub const QUERY_TOTAL: &str = "c2s_query_total_seconds";
pub const ROWS_STREAMED: &str = "c2s_rows_streamed_total";
pub const JOB_QUEUE_DEPTH: &str = "c2s_job_queue_depth";
pub const WORKER_RUNNING: &str = "c2s_worker_running_queries";
pub const OTEL_SPANS_DROPPED: &str = "c2s_otel_spans_dropped_total";

/// Describes the trace exporter's metric and creates it at zero (both binaries export traces).
fn register_tracing() {
    metrics::describe_counter!(
        OTEL_SPANS_DROPPED,
        "finished spans never exported, by reason (queue_full: the export queue was full; \
         export_failed: the export request failed)"
    );
    for reason in ["queue_full", "export_failed"] {
        metrics::counter!(OTEL_SPANS_DROPPED, "reason" => reason).absolute(0);
    }
}

pub const JOBS_WAITING: &str = "c2s_jobs_waiting";
pub const USERS_WAITING: &str = "c2s_users_waiting";
pub const WORKER_SLOTS: &str = "c2s_worker_slots";

/// The `class` of [`QUERY_QUEUE_WAIT`]: `light` (its user had nothing running when it was taken) or
/// `heavy`.
pub fn user_class(user_running: u32) -> &'static str {
    if user_running == 0 {
        "light"
    } else {
        "heavy"
    }
}

/// Describes the gateway's metrics (HELP text) and creates them at zero, so a scrape shows every
/// one from the start (dashboards and alerts see 0, not "no data").
pub fn register_gateway() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(
        WS_CONNECTIONS_OPEN,
        "WebSocket connections open, by endpoint"
    );
    describe_counter!(
        WS_CONNECTIONS_OPENED,
        "WebSocket connections accepted, by endpoint"
    );
    describe_counter!(WS_CONNECTIONS_CLOSED, "WebSocket connections closed, by endpoint and close code (1006: dropped without a close frame)");
    describe_counter!(
        WS_MESSAGES_IN,
        "client frames received, by type (`invalid` for undecodable ones)"
    );
    describe_counter!(
        WS_BYTES_IN,
        Unit::Bytes,
        "bytes of client text frames received"
    );
    describe_counter!(WS_MESSAGES_OUT, "frames sent to clients, by type");
    describe_counter!(WS_BYTES_OUT, Unit::Bytes, "bytes of frames sent to clients");
    describe_counter!(WS_ERRORS, "error frames sent to clients, by error code");
    describe_counter!(
        RESUMES,
        "resumes: resume/subscribe of an execution, or a session join with afterSeq, by kind"
    );
    describe_counter!(
        SLOW_CONSUMER_CLOSES,
        "sockets closed with 1013 because the client stopped reading"
    );
    describe_counter!(
        RATE_LIMITED,
        "client frames refused by the per-connection rate limit"
    );
    describe_counter!(QUERIES_ENQUEUED, "query jobs accepted into the job queue");
    describe_counter!(
        REFUSALS,
        "refusals of a per-user or per-node limit, by reason (user_connections, node_connections, \
         user_rate, connection_rate, user_queries)"
    );
    for reason in REFUSAL_REASONS {
        metrics::counter!(REFUSALS, "reason" => *reason).absolute(0);
    }
    describe_gauge!(
        COLLAB_PARTICIPANTS,
        "collaboration participants connected to this node"
    );
    describe_histogram!(
        REDIS_ROUNDTRIP,
        Unit::Seconds,
        "Redis round-trip time (presence heartbeat)"
    );
    for name in [
        WS_BYTES_IN,
        WS_BYTES_OUT,
        SLOW_CONSUMER_CLOSES,
        RATE_LIMITED,
        QUERIES_ENQUEUED,
    ] {
        metrics::counter!(name).absolute(0);
    }
    for kind in ["execution", "session"] {
        metrics::counter!(RESUMES, "kind" => kind).absolute(0);
    }
    metrics::counter!(WS_ERRORS, "code" => "internal").absolute(0);
    metrics::counter!(WS_MESSAGES_IN, "type" => "invalid").absolute(0);
    metrics::counter!(WS_MESSAGES_OUT, "type" => "error").absolute(0);
    for endpoint in [
        "/ws/query",
        "/ws/data",
        "/ws/collaboration",
        "/ws/monitoring",
    ] {
        metrics::gauge!(WS_CONNECTIONS_OPEN, "endpoint" => endpoint).set(0.0);
        metrics::counter!(WS_CONNECTIONS_OPENED, "endpoint" => endpoint).absolute(0);
        metrics::counter!(WS_CONNECTIONS_CLOSED, "endpoint" => endpoint, "code" => "1000")
            .absolute(0);
    }
    metrics::gauge!(COLLAB_PARTICIPANTS).set(0.0);
    metrics::gauge!(COLLAB_SESSIONS).set(0.0);
    let _ = metrics::histogram!(REDIS_ROUNDTRIP);
    register_tracing();
}

/// Describes the worker's metrics and creates them at zero (see [`register_gateway`]).
pub fn register_worker() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        JOBS,
        "query jobs finished, by outcome (completed, error, cancelled, worker_lost, skipped, panicked)"
    );
    describe_histogram!(
        QUERY_QUEUE_WAIT,
        Unit::Seconds,
        "time from enqueue to a worker starting the query, by class of its user (light: nothing \
         else running, heavy)"
    );
    describe_histogram!(
        QUERY_FIRST_CHUNK,
        Unit::Seconds,
        "time from start to the first data_chunk"
    );
    describe_histogram!(
        QUERY_EXECUTION,
        Unit::Seconds,
        "time from start to the terminal event"
    );
    describe_histogram!(
        QUERY_TOTAL,
        Unit::Seconds,
        "time from enqueue to the terminal event"
    );
    describe_counter!(ROWS_STREAMED, "result rows sent in data_chunks");
    describe_gauge!(
        JOB_QUEUE_DEPTH,
        "jobs in the queue not yet acknowledged (waiting or running)"
    );
    describe_gauge!(WORKER_RUNNING, "queries this worker is running");
    describe_gauge!(JOBS_WAITING, "jobs waiting for a worker slot (all workers)");
    describe_gauge!(USERS_WAITING, "users with jobs waiting for a worker slot");
    describe_gauge!(
        WORKER_SLOTS,
        "slots of the workers seen lately (all workers)"
    );
    for name in [JOBS_WAITING, USERS_WAITING, WORKER_SLOTS] {
        metrics::gauge!(name).set(0.0);
    }
    for outcome in [
        "completed",
        "error",
        "cancelled",
        "worker_lost",
        "skipped",
        "panicked",
    ] {
        metrics::counter!(JOBS, "outcome" => outcome).absolute(0);
    }
    metrics::counter!(ROWS_STREAMED).absolute(0);
    metrics::gauge!(JOB_QUEUE_DEPTH).set(0.0);
    metrics::gauge!(WORKER_RUNNING).set(0.0);
    register_tracing();
    for class in ["light", "heavy"] {
        let _ = metrics::histogram!(QUERY_QUEUE_WAIT, "class" => class);
    }
    for name in [QUERY_FIRST_CHUNK, QUERY_EXECUTION, QUERY_TOTAL] {
        let _ = metrics::histogram!(name);
    }
}

/// Histogram buckets (seconds): 1 ms to 5 min.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

fn builder() -> Result<PrometheusBuilder, BuildError> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
}

/// Installs the process-wide recorder; the caller serves `handle.render()` (the gateway's `/metrics`).
pub fn install() -> Result<PrometheusHandle, BuildError> {
    builder()?.install_recorder()
}

/// Installs the recorder with its own HTTP listener serving `/metrics` on `addr` (the worker).
/// Must run inside a tokio runtime.
pub fn install_with_listener(addr: SocketAddr) -> Result<(), BuildError> {
    builder()?.with_http_listener(addr).install()
}

/// Counts one frame sent to a client, by type, and its bytes. The counters are looked up once per
/// type (a registry lookup and a label string per frame cost more than the rest of a delivery).
pub fn count_frame_out(frame: &str) {
    use std::sync::OnceLock;
    static BY_TYPE: OnceLock<Vec<(&'static str, metrics::Counter)>> = OnceLock::new();
    static BYTES: OnceLock<metrics::Counter> = OnceLock::new();
    let by_type = BY_TYPE.get_or_init(|| {
        crate::protocol::SERVER_MESSAGE_TYPES
            .iter()
            .map(|t| (*t, metrics::counter!(WS_MESSAGES_OUT, "type" => *t)))
            .collect()
    });
    let kind = frame_type(frame);
    match by_type.iter().find(|(t, _)| *t == kind) {
        Some((_, counter)) => counter.increment(1),
        None => metrics::counter!(WS_MESSAGES_OUT, "type" => kind.to_owned()).increment(1),
    }
    BYTES
        .get_or_init(|| metrics::counter!(WS_BYTES_OUT))
        .increment(frame.len() as u64);
}

/// The `type` of an encoded server frame, read without parsing it (frames start with `{"type":"`).
pub fn frame_type(frame: &str) -> &str {
    frame
        .strip_prefix("{\"type\":\"")
        .and_then(|rest| rest.split('"').next())
        .unwrap_or("unknown")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_type_is_read_from_the_prefix() {
        assert_eq!(
            frame_type(r#"{"type":"data_chunk","payload":{}}"#),
            "data_chunk"
        );
        assert_eq!(frame_type("garbage"), "unknown");
    }
}
