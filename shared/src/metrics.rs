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
pub const REDIS_ROUNDTRIP: &str = "c2s_redis_roundtrip_seconds";

pub const JOBS: &str = "c2s_jobs_total";
pub const QUERY_QUEUE_WAIT: &str = "c2s_query_queue_wait_seconds";
pub const QUERY_FIRST_CHUNK: &str = "c2s_query_first_chunk_seconds";
pub const QUERY_EXECUTION: &str = "c2s_query_execution_seconds";
pub const QUERY_TOTAL: &str = "c2s_query_total_seconds";
pub const ROWS_STREAMED: &str = "c2s_rows_streamed_total";
pub const JOB_QUEUE_DEPTH: &str = "c2s_job_queue_depth";
pub const WORKER_RUNNING: &str = "c2s_worker_running_queries";

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
