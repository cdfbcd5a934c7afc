//! Fairness between users (issue 21), on real processes and a real Redis (single and cluster):
//! - one user filling every worker slot does not hold another's query behind its queue: the light
//!   user's job takes the next slot that frees (and, with `--reserved-slots`, starts at once);
//! - queued jobs report `query_progress` step `queued` with `queuePosition`;
//! - the per-user connection cap holds over all nodes, refuses with 1013, leaves other users alone, and
//!   lets the user back in once a killed node's leases run out;
//! - the per-user frame rate holds over all of a user's sockets.
//!
//! Time bounds are generous; the figures are printed (`--nocapture`) and reported in the README.

use std::time::{Duration, Instant};

use crate::harness::*;
use serde_json::{json, Value};

/// Reads `c` until `exec`'s `query_started`; returns the frames of `exec` before it.
async fn until_started(c: &mut Client, exec: &str, within: Duration) -> Vec<Value> {
    let deadline = Instant::now() + within;
    let mut before = Vec::new();
    while Instant::now() < deadline {
        let Some(f) = c.try_recv_json(Duration::from_millis(100)).await else {
            continue;
        };
        if exec_of(&f) == Some(exec) {
            if ty(&f) == "query_started" {
                return before;
            }
            before.push(f);
        }
    }
    panic!(
        "{exec} did not start within {within:?}; before: {}",
        describe(&before)
    );
}

/// The `queuePosition`s the client was sent for `exec` (set apart by the harness), in order.
fn queued_positions(c: &Client, exec: &str) -> Vec<u64> {
    c.queue_positions
        .iter()
        .filter(|f| exec_of(f) == Some(exec))
        .filter_map(|f| f["payload"]["queuePosition"].as_u64())
        .collect()
}

both_redis_modes!(
    a_light_user_takes_the_next_free_slot_ahead_of_a_heavy_users_queue,
    a_light_user_takes_the_next_free_slot_ahead_of_a_heavy_users_queue_on_redis_cluster,
    light_user_next_slot_body
);

async fn light_user_next_slot_body(mode: RedisMode) {
    // Measures timing and load: not beside another heavy test (harness/lock.rs).
    let _serial = exclusive().await;
    let cluster = Cluster::builder("fair_next_slot")
        .redis(mode)
        .gateways(2)
        .workers(1)
        .worker_args(["--concurrency", "2"])
        .gateway_args(["--queue-position-interval-ms", "200"])
        .start()
        .await;
    let mut pg = cluster.pg().await;
    // The heavy user: one 2 s query and five 4 s ones, within its own cap; two run, four wait.
    let mut hog = cluster.client(0, "/ws/query?user=hog").await;
    let mut hog_execs = Vec::new();
    for i in 0..6 {
        let secs = if i == 0 { 2 } else { 4 };
        let q = format!("SELECT pg_sleep({secs}) /*fair-hog*/");
        hog_execs.push(hog.execute(&q, None, None).await);
    }
    assert!(
        wait_active_count(&mut pg, ANY_EXECUTION, Duration::from_secs(10), |n| n == 2).await,
        "scenario: both slots taken by the heavy user"
    );
    // The light user, on the other node: FIFO would put it behind four 4 s queries (about 8 s).
    let mut victim = cluster.client(1, "/ws/query?user=victim").await;
    let sent = Instant::now();
    let exec = victim.execute("SELECT 1 AS one", None, None).await;
    let before = until_started(&mut victim, &exec, Duration::from_secs(20)).await;
    assert!(
        before.is_empty(),
        "no numbered event before query_started: {}",
        describe(&before)
    );
    let waited = sent.elapsed();
    eprintln!("fairness ({mode:?}): the light user's query started after {waited:?}");
    // It takes the slot the 2 s query frees (about 1.5 s from here), not one after the queue.
    assert!(
        waited < Duration::from_millis(3_500),
        "the light user's query waited {waited:?}: it was scheduled behind the heavy user's queue"
    );
    assert_eq!(
        queued_positions(&victim, &exec).first(),
        Some(&1),
        "while it waited it was told it is next: {:?}",
        victim.queue_positions
    );
    let rest = victim.collect_execution(&exec).await;
    assert_eq!(
        rest.last().map(ty),
        Some("query_completed"),
        "{}",
        describe(&rest)
    );
    // The heavy user's last job was told its place too, behind its own earlier ones.
    let last = hog_execs.last().expect("six");
    until_started(&mut hog, last, Duration::from_secs(30)).await;
    let positions = queued_positions(&hog, last);
    assert!(
        positions.first().is_some_and(|p| *p >= 3),
        "the last of the heavy user's queue reported {positions:?}"
    );
    assert!(
        positions.windows(2).all(|w| w[1] <= w[0]),
        "its position only moves forward: {positions:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reserved_slot_starts_a_light_users_query_at_once() {
    // Measures timing and load: not beside another heavy test (harness/lock.rs).
    let _serial = exclusive().await;
    let cluster = Cluster::builder("fair_reserved")
        .gateways(1)
        .workers(1)
        .worker_args(["--concurrency", "3", "--reserved-slots", "1"])
        .start()
        .await;
    let mut pg = cluster.pg().await;
    let mut hog = cluster.client(0, "/ws/query?user=hog").await;
    for _ in 0..5 {
        hog.execute("SELECT pg_sleep(6) /*fair-res*/", None, None)
            .await;
    }
    assert!(
        wait_active_count(&mut pg, ANY_EXECUTION, Duration::from_secs(10), |n| n == 2).await,
        "scenario: the heavy user runs two"
    );
    let most = max_active_during(&mut pg, ANY_EXECUTION, Duration::from_millis(1_500)).await;
    assert_eq!(
        most, 2,
        "the third slot stays free for a user with nothing running"
    );
    let mut victim = cluster.client(0, "/ws/query?user=victim").await;
    let sent = Instant::now();
    let exec = victim.execute("SELECT 1 AS one", None, None).await;
    until_started(&mut victim, &exec, Duration::from_secs(10)).await;
    let waited = sent.elapsed();
    eprintln!("fairness (reserved slot): the light user's query started after {waited:?}");
    assert!(
        waited < Duration::from_secs(2),
        "with a reserved slot the light user's query waited {waited:?} (documented: within 1 s)"
    );
}

/// A socket for `user` on gateway `i` that the server refuses: its error, then close 1013.
async fn expect_refused(cluster: &Cluster, i: usize, user: &str) {
    let mut c = cluster.client(i, &format!("/ws/query?user={user}")).await;
    let (frames, code) = c.recv_until_close(Duration::from_secs(10)).await;
    assert_eq!(code, Some(1013), "refused with 1013: {}", describe(&frames));
    assert!(
        frames
            .iter()
            .any(|f| ty(f) == "error" && f["payload"]["code"] == "rate_limited"),
        "the refusal says why: {}",
        describe(&frames)
    );
}

both_redis_modes!(
    the_per_user_connection_cap_holds_over_nodes_and_survives_a_killed_node,
    the_per_user_connection_cap_holds_over_nodes_and_survives_a_killed_node_on_redis_cluster,
    connection_cap_body
);

async fn connection_cap_body(mode: RedisMode) {
    // Measures timing and load: not beside another heavy test (harness/lock.rs).
    let _serial = exclusive().await;
    let lease = Duration::from_millis(1_500);
    let mut cluster = Cluster::builder("fair_conn_cap")
        .redis(mode)
        .gateways(2)
        .workers(0)
        .database(false)
        .gateway_args([
            "--max-connections-per-user",
            "3",
            "--connection-lease-ms",
            "1500",
            "--heartbeat-interval-ms",
            "200",
        ])
        .start()
        .await;
    let mut held = Vec::new();
    for i in 0..2 {
        let mut c = cluster.client(0, "/ws/query?user=capped").await;
        c.ping(i).await;
        held.push(c);
    }
    let mut third = cluster.client(1, "/ws/query?user=capped").await;
    third.ping(3).await;
    // The fourth, on either node, is refused; another user is not.
    expect_refused(&cluster, 1, "capped").await;
    expect_refused(&cluster, 0, "capped").await;
    let mut other = cluster.client(1, "/ws/query?user=other").await;
    other.ping(4).await;
    // A closed socket gives its slot back at once.
    third.close().await;
    let mut again = None;
    for _ in 0..50 {
        let mut c = cluster.client(1, "/ws/query?user=capped").await;
        match c.try_recv_json(Duration::from_millis(300)).await {
            None => {
                again = Some(c);
                break;
            }
            Some(_) => {
                let _ = c.recv_until_close(Duration::from_secs(5)).await;
            }
        }
    }
    let mut again = again.expect("the slot of a closed socket comes back");
    again.ping(5).await;
    // The node holding two of the user's sockets is killed: their leases still count for a while...
    cluster.gateways[0].kill().await;
    drop(held);
    let killed = Instant::now();
    expect_refused(&cluster, 1, "capped").await;
    // ...and then run out: the user gets back in on the surviving node.
    let mut back = None;
    while killed.elapsed() < lease * 4 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let mut c = cluster.client(1, "/ws/query?user=capped").await;
        if c.try_recv_json(Duration::from_millis(300)).await.is_none() {
            back = Some(c);
            break;
        }
    }
    let mut back = back.unwrap_or_else(|| {
        panic!(
            "still locked out {:?} after the node was killed",
            killed.elapsed()
        )
    });
    eprintln!(
        "connection cap ({mode:?}): back in {:?} after kill -9 (lease {lease:?})",
        killed.elapsed()
    );
    back.ping(6).await;
    other.ping(7).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_user_frame_rate_holds_over_all_of_a_users_sockets() {
    // Measures timing and load: not beside another heavy test (harness/lock.rs).
    let _serial = exclusive().await;
    let (per_sec, burst) = (5u64, 10u64);
    let cluster = Cluster::builder("fair_user_rate")
        .gateways(1)
        .workers(0)
        .database(false)
        .gateway_args([
            "--rate-limit-per-sec",
            "1000",
            "--rate-limit-burst",
            "1000",
            "--user-rate-limit-per-sec",
            "5",
            "--user-rate-limit-burst",
            "10",
            "--rate-limit-max-refused",
            "1000",
        ])
        .start()
        .await;
    let mut sockets = Vec::new();
    for _ in 0..3 {
        sockets.push(cluster.client(0, "/ws/query?user=chatty").await);
    }
    let started = Instant::now();
    for (s, c) in sockets.iter_mut().enumerate() {
        for i in 0..10 {
            let ping = json!({"type": "ping", "payload": {"timestamp": s * 100 + i}});
            c.send_json(ping).await;
        }
    }
    let (mut pongs, mut limited) = (0u64, 0u64);
    for c in &mut sockets {
        while let Some(f) = c.try_recv_json(Duration::from_millis(500)).await {
            match ty(&f) {
                "pong" => pongs += 1,
                "error" if f["payload"]["code"] == "rate_limited" => {
                    let message = f["payload"]["message"].as_str().unwrap_or_default();
                    assert!(message.contains("all your connections"), "{}", short(&f));
                    limited += 1;
                }
                _ => panic!("unexpected {}", short(&f)),
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    eprintln!("user rate: {pongs} pongs, {limited} refused of 30 pings over 3 sockets");
    assert_eq!(pongs + limited, 30);
    // Each socket alone would pass all its 10; together they get the user's burst and its refill.
    let allowed = burst + (per_sec as f64 * elapsed).ceil() as u64;
    assert!(
        (burst..=allowed).contains(&pongs),
        "{pongs} pongs over 3 sockets; the user's bucket allows {burst}..={allowed}"
    );
    // Another user is not limited by this one.
    let mut calm = cluster.client(0, "/ws/query?user=calm").await;
    for i in 0..5 {
        calm.ping(i).await;
    }
}

/// The figure of the issue (not a check; run by hand, see README *Fairness*): user `hog` keeps 10
/// `SELECT pg_sleep(8)` running or queued on gateway 0, user `victim` sends `SELECT 1` on gateway 1;
/// prints how long it waited to start and to complete. Worker flags from `C2S_MEASURE_WORKER_ARGS`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run with --ignored --nocapture"]
async fn measure_light_user_wait_under_a_heavy_user() {
    // Measures timing and load: not beside another heavy test (harness/lock.rs).
    let _serial = exclusive().await;
    let extra = std::env::var("C2S_MEASURE_WORKER_ARGS").unwrap_or_default();
    let cluster = Cluster::builder("fair_measure")
        .gateways(2)
        .workers(1)
        .worker_args(extra.split_whitespace().map(str::to_owned))
        .start()
        .await;
    let mut pg = cluster.pg().await;
    let mut hog = cluster.client(0, "/ws/query?user=hog").await;
    let hog_query =
        |i: u32| execute_query_frame("SELECT pg_sleep(8)", None, Some(&format!("h{i}")));
    for i in 0..10 {
        hog.send_json(hog_query(i)).await;
    }
    // Keeps 10 going: every one that ends is replaced.
    let keep = tokio::spawn(async move {
        let mut next = 10;
        loop {
            if let Some(f) = hog.try_recv_json(Duration::from_millis(100)).await {
                if is_terminal(&f) {
                    hog.send_json(hog_query(next)).await;
                    next += 1;
                }
            }
        }
    });
    assert!(wait_active_count(&mut pg, ANY_EXECUTION, Duration::from_secs(10), |n| n >= 1).await);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut victim = cluster.client(1, "/ws/query?user=victim").await;
    let sent = Instant::now();
    let exec = victim.execute("SELECT 1 AS one", None, None).await;
    until_started(&mut victim, &exec, Duration::from_secs(60)).await;
    let started = sent.elapsed();
    victim.collect_execution(&exec).await;
    let done = sent.elapsed();
    keep.abort();
    eprintln!(
        "MEASURE worker args {extra:?}: the light user's SELECT 1 started after {:.2} s, completed after {:.2} s",
        started.as_secs_f64(),
        done.as_secs_f64()
    );
}
