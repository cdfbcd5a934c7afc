//! `/ws/data`: a client on another node subscribes to an execution started elsewhere and receives its whole
//! stream; plus the HTTP endpoints and the `/schema` document itself.

use std::collections::HashSet;
use std::time::Duration;

use crate::harness::*;
use serde_json::{json, Value};

both_redis_modes!(
    subscribe_on_another_node_receives_every_chunk,
    subscribe_on_another_node_receives_every_chunk_on_redis_cluster,
    subscribe_on_another_node_receives_every_chunk_body
);

async fn subscribe_on_another_node_receives_every_chunk_body(mode: RedisMode) {
    let cluster = Cluster::builder("data_subscribe")
        .redis(mode)
        .gateways(2)
        .workers(1)
        .start()
        .await;
    let rows: u64 = 20_000;
    let query = format!("SELECT g AS n FROM generate_series(1,{rows}) g");

    let mut a = cluster.query_client(0).await;
    let exec = a
        .execute(&query, Some(json!({"chunkSize": 500})), Some("d-1"))
        .await;

    // Live: subscribe on node B right after the ack, without afterSeq.
    let mut live = cluster.client(1, "/ws/data").await;
    live.subscribe(&exec, None).await;
    let (frames, got) = tokio::join!(a.collect_execution(&exec), live.collect_execution(&exec));

    let s = check_full_stream(&exec, &frames);
    assert_eq!(
        s.terminal_type(),
        "query_completed",
        "{}",
        short(&s.terminal)
    );
    assert_eq!(
        s.start.as_ref().unwrap()["payload"]["rowFormat"],
        "objects",
        "objects is the default"
    );
    assert_eq!(s.column_names(), vec!["n"]);
    let ns: Vec<u64> = s
        .rows
        .iter()
        .map(|r| r["n"].as_u64().expect("n is an integer"))
        .collect();
    assert_eq!(ns.len() as u64, rows);
    assert_eq!(
        ns.iter().copied().collect::<HashSet<_>>().len() as u64,
        rows,
        "every n once"
    );
    assert_eq!(s.chunks, rows / 500);

    assert_same_frames("subscribe (live) on node B", &got, &frames);

    // After completion: a fresh subscriber gets the whole stream again.
    let mut late = cluster.client(1, "/ws/data").await;
    late.subscribe(&exec, None).await;
    let replay = late.collect_execution(&exec).await;
    assert_same_frames("subscribe after completion on node B", &replay, &frames);

    // And subscribe with afterSeq skips what the client already has.
    let after_seq = seq_of(&frames[frames.len() / 2]);
    let mut partial = cluster.client(0, "/ws/data").await;
    partial.subscribe(&exec, Some(after_seq)).await;
    let tail = partial.collect_execution(&exec).await;
    let expected: Vec<Value> = frames
        .iter()
        .filter(|f| seq_of(f) > after_seq)
        .cloned()
        .collect();
    assert_same_frames("subscribe with afterSeq on node A", &tail, &expected);

    // An execution that does not exist: an error frame (not_found), and the connection stays.
    late.subscribe("no-such-execution", None).await;
    let f = late.recv_json().await;
    assert_eq!(ty(&f), "error", "{}", short(&f));
    assert_eq!(f["payload"]["code"], "not_found", "{}", short(&f));
    late.ping(1).await;

    for (name, c) in [
        ("live", &mut live),
        ("late", &mut late),
        ("partial", &mut partial),
    ] {
        let extra = c.collect_for(Duration::from_millis(200)).await;
        assert!(
            extra.is_empty(),
            "{name} subscriber: frames after the terminal event: {}",
            describe(&extra)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_endpoints_and_schema_document() {
    let cluster = Cluster::builder("data_http")
        .gateways(1)
        .workers(0)
        .start()
        .await;
    let addr = cluster.gateway(0).addr();
    let (status, body) = http_get(addr, "/healthz").await;
    assert_eq!(status, 200, "/healthz: {body}");
    let (status, body) = http_get(addr, "/readyz").await;
    assert_eq!(status, 200, "/readyz with Redis up: {body}");

    let schema = cluster.schema();
    let doc = &schema.document;
    for part in ["client", "server"] {
        let s = doc[part]["$schema"].as_str().unwrap_or_default();
        assert!(
            s.contains("2020-12"),
            "/schema {part} is draft 2020-12: {s:?}"
        );
    }

    // The documented client frames are valid per the published client schema...
    for f in [
        json!({"type": "execute_query", "id": "c-1", "payload": {"query": "select 1",
            "options": {"chunkSize": 1000, "rowFormat": "arrays", "timeoutMs": 500, "maxRows": 10}}}),
        json!({"type": "cancel_query", "payload": {"executionId": "e"}}),
        json!({"type": "resume", "payload": {"executionId": "e", "afterSeq": 3}}),
        json!({"type": "subscribe", "payload": {"executionId": "e"}}),
        json!({"type": "ping", "payload": {"timestamp": 123}}),
    ] {
        schema.assert_valid_client(&f);
    }
    // ...and the published schemas reject what they should (so assert_valid can fail at all).
    assert!(!schema.is_valid_client(&json!({"type": "dance", "payload": {}})));
    assert!(!schema.is_valid_client(&json!({"type": "execute_query", "payload": {}})));
    let bad_server = [
        json!({"type": "pong", "payload": {"timestamp": 1}}),
        json!({"type": "query_progress", "seq": 1, "payload": {"executionId": "e", "timestamp": 1, "progress": 5}}),
        json!({"type": "surprise", "payload": {}}),
    ];
    for f in bad_server {
        assert!(
            !schema.is_valid(&f),
            "the server schema accepts an invalid frame: {f}"
        );
    }
    schema.assert_valid(&json!({"type": "pong", "payload": {"timestamp": 1, "serverTime": 2}}));

    // Ping on /ws/data too.
    let mut d = cluster.client(0, "/ws/data").await;
    d.ping(7).await;
}

// A followed execution whose state disappears from Redis (expired, or a Redis that came back empty):
// the follower gets `error not_found` naming the execution in `executionId`, instead of waiting forever.
both_redis_modes!(
    a_followed_execution_that_vanishes_ends_with_not_found_naming_it,
    a_followed_execution_that_vanishes_ends_with_not_found_naming_it_on_redis_cluster,
    a_followed_execution_that_vanishes_ends_with_not_found_naming_it_body
);

async fn a_followed_execution_that_vanishes_ends_with_not_found_naming_it_body(mode: RedisMode) {
    // No worker: the job stays queued and its stream quiet, so the follower re-checks it.
    let cluster = Cluster::builder("data_vanished")
        .redis(mode)
        .gateways(1)
        .workers(0)
        .gateway_args(["--resync-interval-ms", "200"])
        .start()
        .await;
    let mut c = cluster.query_client(0).await;
    let exec = c.execute("SELECT 1 AS one", None, Some("vanish")).await;
    let removed = cluster
        .redis_query(redis::cmd("DEL").arg(format!("{}:{{e:{exec}}}", cluster.prefix)))
        .await
        .expect("DEL");
    assert_eq!(removed, redis::Value::Int(1), "the execution's state key");
    let f = c.recv_json().await;
    assert_eq!(ty(&f), "error", "{}", short(&f));
    assert_eq!(f["payload"]["code"], "not_found", "{}", short(&f));
    assert_eq!(f["payload"]["executionId"], json!(exec), "{}", short(&f));
    c.ping(1).await;
}
