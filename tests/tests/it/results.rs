//! What a result promises its client: a panic in a job ends it (never a hang) and frees its slots, a
//! cancel in any state ends it with `query_cancelled` at once, and `totalRows` is a number the
//! guide's progress bar can divide by (exact for small results, an estimate above the rows read for
//! large ones), with progress that never goes down and stays below 100 until the end.

use std::time::{Duration, Instant};

use crate::harness::*;
use serde_json::json;

const PANIC_VALUE: &str = "c2s-fault-panic";

/// The safety net, proven with a value the (debug-build) encoder is told to panic on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_a_job_ends_it_and_frees_its_slots() {
    let port = free_port();
    let cluster = Cluster::builder("results_panic")
        .gateways(1)
        .workers(1)
        // One query slot per user and one per worker: a leaked slot would block the next query.
        .gateway_args(["--max-queries-per-user", "1"])
        .worker_args([
            "--concurrency".to_owned(),
            "1".to_owned(),
            "--debug-panic-on-value".to_owned(),
            PANIC_VALUE.to_owned(),
            "--metrics-bind".to_owned(),
            format!("127.0.0.1:{port}"),
        ])
        .start()
        .await;
    let mut c = cluster.query_client(0).await;
    let exec = c
        .execute(
            &format!(
                "SELECT g, CASE WHEN g = 1700 THEN '{PANIC_VALUE}' ELSE 'ok' END AS v \
                 FROM generate_series(1, 3000) g"
            ),
            Some(json!({"chunkSize": 500})),
            None,
        )
        .await;
    let frames = c
        .collect_execution_within(&exec, Duration::from_secs(10))
        .await;
    let s = check_full_stream(&exec, &frames);
    assert_eq!(s.terminal_type(), "query_error", "{}", describe(&frames));
    assert_eq!(
        s.terminal["payload"]["error"]["code"],
        "internal",
        "{}",
        short(&s.terminal)
    );
    assert_eq!(s.rows.len(), 1500, "the chunks before the panic arrived");

    // Both slots are free: the same user runs again on the same single-slot worker.
    for _ in 0..3 {
        let next = c.execute("SELECT 1 AS one", None, None).await;
        let frames = c.collect_execution(&next).await;
        assert_eq!(
            check_full_stream(&next, &frames).terminal_type(),
            "query_completed"
        );
    }
    let (status, body) = http_get(format!("127.0.0.1:{port}").parse().unwrap(), "/metrics").await;
    assert_eq!(status, 200);
    let m = parse_metrics(&body);
    assert_eq!(metric(&m, r#"c2s_jobs_total{outcome="panicked"}"#), 1.0);
    assert_eq!(metric(&m, r#"c2s_jobs_total{outcome="completed"}"#), 3.0);
}

/// A cancel sent in any state (while queued, while the worker claims the job, right after
/// `query_started` before the statement reached PostgreSQL, while the statement runs) ends the
/// execution with `query_cancelled`, and the statement leaves the database. Many rounds, at the
/// delays of the issue plus random ones; "claim" rounds free the single worker slot (cancelling a
/// blocker) a random moment before cancelling the queued target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_is_never_lost_whenever_it_arrives() {
    let cluster = Cluster::builder("results_cancel_race")
        .gateways(1)
        .workers(1)
        .gateway_args(["--max-queries-per-user", "100"])
        .worker_args(["--concurrency", "1"])
        .start()
        .await;
    let mut pg = cluster.pg().await;
    let mut c = cluster.query_client(0).await;
    let mut slowest = Duration::ZERO;
    let mut outcomes = std::collections::BTreeMap::<String, u32>::new();
    let mut rng_state = uuid::Uuid::new_v4().as_u128() as u64 | 1;
    let mut random_ms = move |max: u64| {
        // xorshift: a different interleaving every run (the failing round says which).
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        rng_state % max
    };
    for round in 0..60 {
        let (claim_race, delay) = match round % 6 {
            0 => (false, 0),
            1 => (false, 1),
            2 => (false, 5),
            3 => (false, 50),
            4 => (true, random_ms(4)),
            _ => (false, random_ms(30)),
        };
        let blocker = if claim_race {
            let b = c.execute("SELECT pg_sleep(15)", None, None).await;
            c.recv_events_until(&b, Some(Duration::from_secs(10)), |f| {
                ty(f) == "query_started"
            })
            .await;
            Some(b)
        } else {
            None
        };
        let exec = c.execute("SELECT pg_sleep(15)", None, None).await;
        let mut frames = Vec::new();
        if let Some(b) = &blocker {
            // The worker's one slot frees; the target is claimed while its cancel is on the way.
            c.cancel(b).await;
        } else {
            frames = c
                .recv_events_until(&exec, Some(Duration::from_secs(10)), |f| {
                    ty(f) == "query_started" || is_terminal(f)
                })
                .await;
        }
        tokio::time::sleep(Duration::from_millis(delay)).await;
        let sent = Instant::now();
        c.cancel(&exec).await;
        frames.extend(
            c.collect_execution_within(&exec, Duration::from_secs(5))
                .await,
        );
        let took = sent.elapsed();
        slowest = slowest.max(took);
        if let Some(b) = &blocker {
            let ended = c.collect_execution(b).await;
            assert_eq!(ty(ended.last().unwrap()), "query_cancelled");
        }
        let s = check_full_stream(&exec, &frames);
        let state = if s.started { "started" } else { "queued" };
        *outcomes
            .entry(format!("{} ({state})", s.terminal_type()))
            .or_default() += 1;
        assert_eq!(
            s.terminal_type(),
            "query_cancelled",
            "round {round}: cancel {delay} ms after {}: {}",
            if claim_race {
                "freeing the slot"
            } else {
                "query_started"
            },
            describe(&frames)
        );
        assert!(
            took < Duration::from_secs(3),
            "round {round}: query_cancelled {took:?} after the cancel"
        );
    }
    assert!(
        wait_active_count(&mut pg, ANY_EXECUTION, Duration::from_secs(3), |n| n == 0).await,
        "cancelled statements are still running on the database"
    );
    eprintln!("cancel race: 60 rounds {outcomes:?}; slowest cancel -> query_cancelled {slowest:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn total_rows_is_a_number_exact_when_small_and_an_estimate_when_large() {
    let cluster = Cluster::builder("results_total_rows")
        .gateways(1)
        .workers(1)
        .start()
        .await;
    let mut pg = cluster.pg().await;
    sqlx::raw_sql(
        "CREATE TABLE big AS SELECT g AS n FROM generate_series(1, 20000) g; ANALYZE big; \
         CREATE TABLE small AS SELECT g AS n FROM generate_series(1, 37) g; ANALYZE small;",
    )
    .execute(&mut pg)
    .await
    .unwrap();
    let mut c = cluster.query_client(0).await;
    let start_of = |frames: &[serde_json::Value]| {
        frames
            .iter()
            .find(|f| ty(f) == "data_stream_start")
            .expect("data_stream_start")["payload"]
            .clone()
    };
    for (query, chunk, exact, total) in [
        ("SELECT * FROM small", 500, true, 37),
        // Exactly one chunk: the row after it tells the read-ahead the result ends there.
        ("SELECT * FROM big LIMIT 500", 500, true, 500),
        ("SELECT * FROM big LIMIT 501", 500, false, 0),
        ("SELECT * FROM big", 500, false, 0),
        ("SELECT * FROM big WHERE n % 7 = 0", 100, false, 0),
        ("SELECT 1 WHERE false", 500, true, 0),
    ] {
        let exec = c
            .execute(query, Some(json!({"chunkSize": chunk})), None)
            .await;
        let frames = c.collect_execution(&exec).await;
        // The stream checker asserts the number, the exactness rule and monotone progress below 100.
        let s = check_full_stream(&exec, &frames);
        let start = start_of(&frames);
        assert_eq!(start["totalRowsExact"], exact, "{query}: {start}");
        if exact {
            assert_eq!(start["totalRows"], total, "{query}: {start}");
        } else {
            let estimated = start["estimatedRows"]
                .as_u64()
                .expect("the planner's estimate");
            assert_eq!(
                start["totalRows"].as_u64(),
                Some(estimated.max(chunk + 1)),
                "{query}: the estimate, never below the rows read: {start}"
            );
        }
        assert!(
            s.progress.windows(2).all(|w| w[0] <= w[1]),
            "{query}: {:?}",
            s.progress
        );
    }
}
