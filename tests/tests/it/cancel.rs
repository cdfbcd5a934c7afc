//! Cancelling stops the SQL on the database (not only the stream), and a queued job can be cancelled
//! before any worker starts it.

use std::time::{Duration, Instant};

use crate::harness::*;
use serde_json::json;

both_redis_modes!(
    cancel_stops_the_statement_on_the_database,
    cancel_stops_the_statement_on_the_database_on_redis_cluster,
    cancel_stops_the_statement_on_the_database_body
);

async fn cancel_stops_the_statement_on_the_database_body(mode: RedisMode) {
    let cluster = Cluster::builder("cancel_running")
        .redis(mode)
        .gateways(1)
        .workers(1)
        .start()
        .await;
    let mut pg = cluster.pg().await;
    let mut c = cluster.query_client(0).await;
    let marker = format!("cancel-{}", uuid::Uuid::new_v4().simple());
    let query = format!("SELECT pg_sleep(30) /* {marker} */");

    let exec = c.execute(&query, None, Some("c-cancel")).await;
    let acked = Instant::now();
    // Make sure the statement is really running on the database before cancelling it.
    assert!(
        wait_active_count(&mut pg, &exec, Duration::from_secs(10), |n| n == 1).await,
        "the query never showed up (exactly once) as active in pg_stat_activity"
    );
    tokio::time::sleep_until((acked + Duration::from_millis(200)).into()).await;

    let cancel_sent = Instant::now();
    c.cancel(&exec).await;
    let frames = c
        .collect_execution_within(&exec, Duration::from_secs(2))
        .await;
    let cancelled_after = cancel_sent.elapsed();
    let s = check_full_stream(&exec, &frames);
    assert_eq!(
        s.terminal_type(),
        "query_cancelled",
        "expected query_cancelled, got {}",
        short(&s.terminal)
    );
    assert!(s.started, "the query had started: {}", describe(&frames));
    assert!(
        s.rows.is_empty(),
        "pg_sleep(30) produced rows before the cancel?"
    );
    assert!(cancelled_after <= Duration::from_secs(2));

    // The statement must be gone from the database within 2 s.
    assert!(
        wait_active_count(&mut pg, &exec, Duration::from_secs(2), |n| n == 0).await,
        "the cancelled statement is still active in pg_stat_activity 2 s after query_cancelled"
    );

    // Nothing more for that execution, and the worker still runs queries.
    let extra = c.collect_for(Duration::from_millis(300)).await;
    assert!(
        extra.is_empty(),
        "frames after query_cancelled: {}",
        describe(&extra)
    );
    let exec2 = c.execute("SELECT 1 AS one", None, None).await;
    let frames2 = c.collect_execution(&exec2).await;
    let s2 = check_full_stream(&exec2, &frames2);
    assert_eq!(
        s2.terminal_type(),
        "query_completed",
        "{}",
        short(&s2.terminal)
    );
    assert_eq!(s2.rows, vec![json!({"one": 1})]);
}

both_redis_modes!(
    cancel_a_queued_job_before_it_starts,
    cancel_a_queued_job_before_it_starts_on_redis_cluster,
    cancel_a_queued_job_before_it_starts_body
);

async fn cancel_a_queued_job_before_it_starts_body(mode: RedisMode) {
    let cluster = Cluster::builder("cancel_queued")
        .redis(mode)
        .gateways(1)
        .workers(1)
        .worker_args(["--concurrency", "1"])
        .start()
        .await;
    let mut pg = cluster.pg().await;
    let mut c = cluster.query_client(0).await;
    let m1 = format!("busy-{}", uuid::Uuid::new_v4().simple());
    let m2 = format!("queued-{}", uuid::Uuid::new_v4().simple());

    // Occupy the worker's only slot. (`FROM pg_sleep(5)` rather than `SELECT pg_sleep(5)`: the result is an
    // int4 column, not `void`, so this test does not depend on how `void` is rendered.)
    let e1 = c
        .execute(
            &format!("SELECT 1 AS one FROM pg_sleep(5) /* {m1} */"),
            None,
            Some("q-1"),
        )
        .await;
    let mut f1 = c
        .recv_events_until(&e1, None, |f| ty(f) == "query_started" || is_terminal(f))
        .await;
    assert_eq!(ty(f1.last().unwrap()), "query_started", "{}", describe(&f1));
    assert!(
        wait_active_count(&mut pg, &e1, Duration::from_secs(10), |n| n == 1).await,
        "the first query is not running on the database"
    );

    // Queue a second one and cancel it while it waits.
    let e2 = c
        .execute(
            &format!("SELECT 2 AS two FROM pg_sleep(1) /* {m2} */"),
            None,
            Some("q-2"),
        )
        .await;
    assert_ne!(e1, e2);
    c.cancel(&e2).await;
    let f2 = c
        .collect_execution_within(&e2, Duration::from_secs(2))
        .await;
    let s2 = check_full_stream(&e2, &f2);
    assert_eq!(s2.terminal_type(), "query_cancelled", "{}", describe(&f2));
    assert!(
        f2.iter()
            .all(|f| matches!(ty(f), "query_progress" | "query_cancelled")),
        "a job cancelled while queued must never start (no query_started, no data): {}",
        describe(&f2)
    );
    assert_eq!(
        active_queries_with(&mut pg, &e1).await,
        1,
        "scenario check: the first query must still be running, so the second was still queued"
    );

    // The first query finishes normally.
    f1.extend(c.collect_execution(&e1).await);
    let s1 = check_full_stream(&e1, &f1);
    assert_eq!(
        s1.terminal_type(),
        "query_completed",
        "{}",
        short(&s1.terminal)
    );
    assert_eq!(s1.rows, vec![json!({"one": 1})]);

    // Now the worker is free: the cancelled job must not run.
    let (extra, max_active) = tokio::join!(
        c.collect_for(Duration::from_millis(1500)),
        max_active_during(&mut pg, &e2, Duration::from_millis(1500))
    );
    assert_eq!(
        max_active, 0,
        "the cancelled queued query ran on the database"
    );
    assert!(
        extra.iter().all(|f| exec_of(f) != Some(e2.as_str())),
        "events for the cancelled execution after query_cancelled: {}",
        describe(&extra)
    );
    assert!(extra.is_empty(), "unexpected frames: {}", describe(&extra));

    // Resuming the cancelled execution from the start replays exactly what was sent.
    let mut b = cluster.query_client(0).await;
    b.resume(&e2, 0).await;
    let replay = b.collect_execution(&e2).await;
    assert_same_frames("replay of the cancelled queued job", &replay, &f2);
}
