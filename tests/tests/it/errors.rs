//! Errors: SQL errors mapped to codes by SQLSTATE, malformed frames answered with `error` frames on a
//! connection that stays usable, oversized frames closed with 1009, and idempotent client ids.

use std::time::{Duration, Instant};

use crate::harness::*;
use serde_json::{json, Value};

/// Runs `query` and returns its `query_error.payload.error`, after checking the stream.
async fn expect_query_error(c: &mut Client, query: &str, options: Option<Value>) -> Value {
    let exec = c.execute(query, options, None).await;
    let frames = c.collect_execution(&exec).await;
    let s = check_full_stream(&exec, &frames);
    assert_eq!(
        s.terminal_type(),
        "query_error",
        "{query:?} must fail; got {}",
        short(&s.terminal)
    );
    assert!(s.rows.is_empty(), "{query:?}: rows before the error");
    s.terminal["payload"]["error"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_errors_are_mapped_by_sqlstate() {
    let cluster = Cluster::builder("errors_sql")
        .in_process()
        .gateways(1)
        .workers(1)
        .start()
        .await;
    let mut pg = cluster.pg().await;
    sqlx::query("CREATE TABLE items (id int PRIMARY KEY)")
        .execute(&mut pg)
        .await
        .unwrap();
    sqlx::query("INSERT INTO items VALUES (1), (2), (3)")
        .execute(&mut pg)
        .await
        .unwrap();
    let mut c = cluster.query_client(0).await;

    // Syntax error.
    let e = expect_query_error(&mut c, "SELEC 1", None).await;
    assert_eq!(e["code"], "syntax_error", "{e}");
    assert_eq!(e["sqlstate"], "42601", "{e}");
    if let Some(pos) = e.get("position") {
        assert_eq!(
            pos,
            &json!(1),
            "PostgreSQL reports the error at character 1: {e}"
        );
    }

    // Writes are refused by the read-only transaction, and nothing is written.
    for q in [
        "CREATE TABLE x(a int)",
        "DELETE FROM items",
        "INSERT INTO items VALUES (4)",
    ] {
        let e = expect_query_error(&mut c, q, None).await;
        assert_eq!(e["code"], "read_only", "{q}: {e}");
        assert_eq!(e["sqlstate"], "25006", "{q}: {e}");
    }
    let x_exists: bool = sqlx::query_scalar("SELECT to_regclass('public.x') IS NOT NULL")
        .fetch_one(&mut pg)
        .await
        .unwrap();
    assert!(!x_exists, "CREATE TABLE x was executed");
    let ids: Vec<i32> = sqlx::query_scalar("SELECT id FROM items ORDER BY id")
        .fetch_all(&mut pg)
        .await
        .unwrap();
    assert_eq!(ids, vec![1, 2, 3], "DELETE / INSERT were executed");

    // Statement timeout from the request's options.
    let started = Instant::now();
    let e = expect_query_error(
        &mut c,
        "SELECT pg_sleep(5)",
        Some(json!({"timeoutMs": 300})),
    )
    .await;
    assert_eq!(e["code"], "timeout", "{e}");
    assert_eq!(e["sqlstate"], "57014", "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "a 300 ms timeout took {:?}",
        started.elapsed()
    );

    // The connection and the worker still serve queries.
    let exec = c
        .execute("SELECT count(*)::int AS c FROM items", None, None)
        .await;
    let frames = c.collect_execution(&exec).await;
    let s = check_full_stream(&exec, &frames);
    assert_eq!(
        s.terminal_type(),
        "query_completed",
        "{}",
        short(&s.terminal)
    );
    assert_eq!(s.rows, vec![json!({"c": 3})]);
}

/// Sends `raw` and expects an `error` frame with `code` (and `ref` when given), then a working ping.
async fn expect_frame_error(
    c: &mut Client,
    raw: &str,
    code: &str,
    reference: Option<&str>,
    ping_ts: i64,
) {
    c.send_text(raw).await;
    let f = c.recv_json().await;
    assert_eq!(
        ty(&f),
        "error",
        "{raw}: expected an error frame, got {}",
        short(&f)
    );
    assert_eq!(f["payload"]["code"], code, "{raw}: {}", short(&f));
    assert!(
        f["payload"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{raw}: the message must say what to fix: {}",
        short(&f)
    );
    match reference {
        Some(r) => assert_eq!(
            f["payload"]["ref"],
            r,
            "{raw}: ref must name the frame's id: {}",
            short(&f)
        ),
        None => assert!(
            f["payload"].get("ref").is_none(),
            "{raw}: no id, so no ref: {}",
            short(&f)
        ),
    }
    assert!(
        f.get("seq").is_none(),
        "an error frame has no seq: {}",
        short(&f)
    );
    // The connection stays usable, and nothing else was sent in between (no ack, no execution).
    c.send_json(json!({"type": "ping", "payload": {"timestamp": ping_ts}}))
        .await;
    let pong = c.recv_json().await;
    assert_eq!(
        ty(&pong),
        "pong",
        "{raw}: after the error, the next frame must be the pong: {}",
        short(&pong)
    );
    assert_eq!(pong["payload"]["timestamp"], ping_ts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_get_error_frames_and_the_connection_survives() {
    let cluster = Cluster::builder("errors_frames")
        .in_process()
        .gateways(1)
        .workers(0)
        .start()
        .await;
    let mut c = cluster.query_client(0).await;

    expect_frame_error(&mut c, "{nope", "bad_request", None, 1).await;
    expect_frame_error(&mut c, "[1,2,3]", "bad_request", None, 2).await;
    expect_frame_error(
        &mut c,
        r#"{"type":"dance","id":"x1","payload":{}}"#,
        "unknown_type",
        Some("x1"),
        3,
    )
    .await;
    expect_frame_error(
        &mut c,
        r#"{"type":"execute_query","id":"q-missing","payload":{}}"#,
        "bad_request",
        Some("q-missing"),
        4,
    )
    .await;
    expect_frame_error(
        &mut c,
        r#"{"type":"execute_query","payload":{"query":42}}"#,
        "bad_request",
        None,
        5,
    )
    .await;
    expect_frame_error(
        &mut c,
        r#"{"type":"cancel_query","payload":{}}"#,
        "bad_request",
        None,
        6,
    )
    .await;
    expect_frame_error(
        &mut c,
        r#"{"type":"ping","payload":"now"}"#,
        "bad_request",
        None,
        7,
    )
    .await;

    // The guide's ping with a top-level timestamp.
    c.send_text(r#"{"type":"ping","timestamp":123}"#).await;
    c.expect_pong(&json!(123)).await;
    // And the documented one.
    c.ping(456).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_over_max_frame_bytes_closes_with_1009() {
    let cluster = Cluster::builder("errors_too_big")
        .in_process()
        .gateways(1)
        .workers(0)
        .start()
        .await;
    let mut c = cluster.query_client(0).await;

    // Just under the default limit (65536): accepted.
    let pad = "x".repeat(60 * 1024);
    c.send_text(&json!({"type": "ping", "payload": {"timestamp": 1, "pad": pad}}).to_string())
        .await;
    c.expect_pong(&json!(1)).await;

    // 100 KB: closed with 1009.
    let pad = "x".repeat(100 * 1024);
    // (The server may close before reading the whole frame, so a failed send is not an error here.)
    let _ = c
        .send_text_lenient(
            &json!({"type": "ping", "payload": {"timestamp": 2, "pad": pad}}).to_string(),
        )
        .await;
    let code = c.expect_close().await;
    assert_eq!(
        code, 1009,
        "a 100 KB frame must close the connection with 1009 (message too big)"
    );
}

both_redis_modes!(
    a_repeated_client_id_is_acknowledged_but_not_run_again,
    a_repeated_client_id_is_acknowledged_but_not_run_again_on_redis_cluster,
    a_repeated_client_id_is_acknowledged_but_not_run_again_body
);

async fn a_repeated_client_id_is_acknowledged_but_not_run_again_body(mode: RedisMode) {
    let cluster = Cluster::builder("errors_idempotency")
        .in_process()
        .redis(mode)
        .gateways(2)
        .workers(1)
        .start()
        .await;
    let mut pg = cluster.pg().await;
    let marker = format!("idem-{}", uuid::Uuid::new_v4().simple());
    let id = format!("idem-{}", &marker[5..21]);
    let query = format!("SELECT n FROM generate_series(1,3) n, pg_sleep(1.5) /* {marker} */");

    let mut a = cluster.query_client(0).await;
    let exec = a.execute(&query, None, Some(&id)).await;

    // Same id again on the same socket while the query runs.
    a.send_json(execute_query_frame(&query, None, Some(&id)))
        .await;
    let dup = a.recv_ack(Some(&id)).await;
    assert_eq!(
        dup["payload"]["executionId"],
        exec.as_str(),
        "{}",
        short(&dup)
    );
    assert_eq!(dup["payload"]["duplicate"], true, "{}", short(&dup));
    assert!(
        wait_active_count(&mut pg, ANY_EXECUTION, Duration::from_secs(10), |n| n >= 1).await,
        "the query never ran"
    );
    let max = max_active_during(&mut pg, ANY_EXECUTION, Duration::from_millis(500)).await;
    assert_eq!(max, 1, "the query runs once, not {max} times");

    let frames = a.collect_execution(&exec).await;
    let s = check_full_stream(&exec, &frames);
    assert_eq!(
        s.terminal_type(),
        "query_completed",
        "{}",
        short(&s.terminal)
    );
    assert_eq!(s.rows.len(), 3);
    let started: Vec<&Value> = frames.iter().filter(|f| ty(f) == "query_started").collect();
    assert_eq!(
        started.len(),
        1,
        "one query_started for the execution: {}",
        describe(&frames)
    );

    // Same id from a second socket on the other node, after completion.
    let mut b = cluster.query_client(1).await;
    b.send_json(execute_query_frame(&query, None, Some(&id)))
        .await;
    let dup2 = b.recv_ack(Some(&id)).await;
    assert_eq!(
        dup2["payload"]["executionId"],
        exec.as_str(),
        "{}",
        short(&dup2)
    );
    assert_eq!(dup2["payload"]["duplicate"], true, "{}", short(&dup2));
    let (late_a, late_b, max2) = tokio::join!(
        a.collect_for(Duration::from_millis(1000)),
        b.collect_for(Duration::from_millis(1000)),
        max_active_during(&mut pg, ANY_EXECUTION, Duration::from_millis(1000))
    );
    assert_eq!(max2, 0, "the duplicate ran the query again");
    assert!(
        late_a.is_empty(),
        "socket A got more frames after its execution ended: {}",
        describe(&late_a)
    );
    // B may be attached to the existing execution (replay), but never to a new one.
    for f in &late_b {
        assert_eq!(
            exec_of(f),
            Some(exec.as_str()),
            "socket B got a frame of another execution: {}",
            short(f)
        );
        let original = frames.iter().find(|o| o.get("seq") == f.get("seq"));
        assert_eq!(
            original,
            Some(f),
            "socket B got an event that A never saw: {}",
            short(f)
        );
    }
    let ids = cluster.execution_ids_in_redis().await;
    assert_eq!(
        ids.into_iter().collect::<Vec<_>>(),
        vec![exec.clone()],
        "exactly one execution was created under the test's Redis prefix"
    );
}
