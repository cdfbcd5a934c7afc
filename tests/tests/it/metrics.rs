//! `/metrics` on the gateway and on the worker: after a known workload the counters moved by exactly
//! the expected amounts.

use crate::harness::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_by_the_workload() {
    let port = free_port();
    let cluster = Cluster::builder("metrics")
        .gateways(1)
        .workers(1)
        .worker_args(["--metrics-bind".to_owned(), format!("127.0.0.1:{port}")])
        .start()
        .await;
    let mut c = cluster.query_client(0).await;
    for (query, rows) in [
        ("SELECT g FROM generate_series(1, 1200) g", 1200),
        ("SELECT 1 AS one", 1),
    ] {
        let exec = c
            .execute(query, Some(json!({"chunkSize": 500})), None)
            .await;
        let frames = c.collect_execution(&exec).await;
        let s = check_full_stream(&exec, &frames);
        assert_eq!(s.rows.len(), rows);
    }
    let exec = c.execute("SELEC 1", None, None).await;
    c.collect_execution(&exec).await;
    c.ping(1).await;

    let (status, body) = http_get(cluster.gateway(0).addr(), "/metrics").await;
    assert_eq!(status, 200);
    let gw = parse_metrics(&body);
    assert_eq!(
        metric(&gw, r#"c2s_ws_messages_in_total{type="execute_query"}"#),
        3.0
    );
    assert_eq!(metric(&gw, r#"c2s_ws_messages_in_total{type="ping"}"#), 1.0);
    assert_eq!(metric(&gw, "c2s_queries_enqueued_total"), 3.0);
    assert_eq!(
        metric(&gw, r#"c2s_ws_messages_out_total{type="query_completed"}"#),
        2.0
    );
    assert_eq!(
        metric(&gw, r#"c2s_ws_messages_out_total{type="query_error"}"#),
        1.0
    );
    // 3 chunks for 1200 rows by 500, 1 for the single row.
    assert_eq!(
        metric(&gw, r#"c2s_ws_messages_out_total{type="data_chunk"}"#),
        4.0
    );
    assert_eq!(
        metric(&gw, r#"c2s_ws_connections_open{endpoint="/ws/query"}"#),
        1.0
    );
    assert!(metric(&gw, "c2s_ws_bytes_out_total") > 10_000.0);
    for reason in [
        "user_connections",
        "node_connections",
        "user_rate",
        "user_queries",
    ] {
        let refusals = format!(r#"c2s_refusals_total{{reason="{reason}"}}"#);
        assert_eq!(metric(&gw, &refusals), 0.0, "{refusals}");
    }

    let worker_addr = format!("127.0.0.1:{port}").parse().unwrap();
    let (status, body) = http_get(worker_addr, "/metrics").await;
    assert_eq!(status, 200);
    let wk = parse_metrics(&body);
    assert_eq!(metric(&wk, r#"c2s_jobs_total{outcome="completed"}"#), 2.0);
    assert_eq!(metric(&wk, r#"c2s_jobs_total{outcome="error"}"#), 1.0);
    assert_eq!(metric(&wk, "c2s_rows_streamed_total"), 1201.0);
    assert_eq!(metric(&wk, "c2s_query_first_chunk_seconds_count"), 2.0);
    // One query at a time: each was taken while its user had nothing else running.
    assert_eq!(
        metric(&wk, r#"c2s_query_queue_wait_seconds_count{class="light"}"#),
        3.0
    );
    assert_eq!(
        metric(&wk, r#"c2s_query_queue_wait_seconds_count{class="heavy"}"#),
        0.0
    );
}
