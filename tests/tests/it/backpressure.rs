//! End-to-end backpressure and bounded memory: a result flows at its slowest live follower's pace, the
//! log of a running execution stays within its window (`C2S_STREAM_WINDOW_BYTES` of events not yet
//! taken, plus one window behind them kept for resumes), oversized values never reach a frame, a
//! follower who leaves holds the stream for the resume grace only, the query's time bounds the pauses,
//! and a finished execution's keys expire after `C2S_FINISHED_RETENTION_SECS`.
//!
//! The tests measure Redis memory per execution (`MEMORY USAGE` of its keys), not the whole server's,
//! so that the other tests of this binary running at the same time do not disturb the figures.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::raw::vm_rss_kib;
use crate::harness::*;
use serde_json::{json, Value};

/// The defaults these tests rely on (README, configuration).
const WINDOW: u64 = 8 * 1024 * 1024;
const MAX_CHUNK: u64 = 1024 * 1024;
const ROWS: u64 = 1_000_000;
const QUERY: &str = "SELECT g AS n, md5(g::text) AS h FROM generate_series(1, 1000000) g";

/// The Redis keys of one execution (`shared/src/keys.rs`: one hash tag per execution).
fn execution_keys(prefix: &str, exec: &str) -> [String; 3] {
    let base = format!("{prefix}:{{e:{exec}}}");
    [
        base.clone(),
        format!("{base}:events"),
        format!("{base}:followers"),
    ]
}

/// Samples the Redis memory of an execution's keys every 100 ms; returns the peak when stopped.
fn sample_memory(cluster: &Cluster, exec: &str) -> (Arc<AtomicBool>, tokio::task::JoinHandle<u64>) {
    let keys = execution_keys(&cluster.prefix, exec);
    let running = Arc::new(AtomicBool::new(true));
    let flag = running.clone();
    let url = redis_url();
    let task = tokio::spawn(async move {
        let client = redis::Client::open(url.as_str()).unwrap();
        let mut con = client.get_multiplexed_async_connection().await.unwrap();
        let mut peak = 0u64;
        while flag.load(Ordering::SeqCst) {
            let mut total = 0u64;
            for key in &keys {
                let used: Option<u64> = redis::cmd("MEMORY")
                    .arg("USAGE")
                    .arg(key)
                    .arg("SAMPLES")
                    .arg(0)
                    .query_async(&mut con)
                    .await
                    .unwrap_or(None);
                total += used.unwrap_or(0);
            }
            peak = peak.max(total);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        peak
    });
    (running, task)
}

/// Rows of `n` seen once each, in order; seq contiguous over reconnects.
struct Reading {
    exec: String,
    last_seq: u64,
    next_n: u64,
    terminal: Option<Value>,
    frames: usize,
}

impl Reading {
    fn new(exec: &str) -> Reading {
        Reading {
            exec: exec.to_owned(),
            last_seq: 0,
            next_n: 1,
            terminal: None,
            frames: 0,
        }
    }

    /// Takes one frame of the stream; panics on a duplicate, a gap or a row out of order.
    fn take(&mut self, f: &Value) {
        if !is_event_of(f, &self.exec) {
            assert_ne!(ty(f), "error", "{}: {f}", self.exec);
            return;
        }
        assert_eq!(
            seq_of(f),
            self.last_seq + 1,
            "{}: seq after {}",
            self.exec,
            self.last_seq
        );
        self.last_seq = seq_of(f);
        self.frames += 1;
        if ty(f) == "data_chunk" {
            if self.next_n == 0 {
                // Followed from the middle: the rows go on from this chunk's first.
                self.next_n = first_n(f).unwrap_or(1);
            }
            for row in f["payload"]["data"].as_array().unwrap() {
                assert_eq!(
                    row["n"],
                    json!(self.next_n),
                    "{}: rows in order, once each",
                    self.exec
                );
                self.next_n += 1;
            }
        }
        if is_terminal(f) {
            self.terminal = Some(f.clone());
        }
    }

    fn rows(&self) -> u64 {
        self.next_n - 1
    }
}

/// Reads frames until the terminal event or `until` rows, or until the socket closes; returns whether
/// the socket is still open.
async fn read(c: &mut Client, r: &mut Reading, until: Option<u64>) -> bool {
    loop {
        if r.terminal.is_some() || until.is_some_and(|u| r.rows() >= u) {
            return true;
        }
        match c.next_frame(Duration::from_secs(60)).await {
            Received::Frame(f) => r.take(&f),
            Received::Closed { .. } => return false,
            Received::Timeout => panic!("{}: no frame for 60 s after {} rows", r.exec, r.rows()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_rows_stay_within_the_window_and_a_paused_reader_loses_nothing() {
    // Measures timing and load: not beside another heavy test (harness/lock.rs).
    let _serial = exclusive().await;
    let cluster = Cluster::builder("backpressure_window")
        .gateways(2)
        .workers(1)
        .start()
        .await;
    let mut c = cluster.query_client(0).await;
    let exec = c
        .execute(
            QUERY,
            Some(json!({"chunkSize": 500, "timeoutMs": 240_000})),
            None,
        )
        .await;
    let (sampling, sampler) = sample_memory(&cluster, &exec);
    let mut r = Reading::new(&exec);
    assert!(read(&mut c, &mut r, Some(200_000)).await);

    // Stops reading for 8 s: the worker holds the cursor once the window is full; the gateway closes
    // the socket (1013) when it has taken nothing for C2S_SEND_TIMEOUT_MS.
    let paused_at = r.rows();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let open = read(&mut c, &mut r, None).await;
    let (mut node, mut resumes) = (0, 0);
    if !open || r.terminal.is_none() {
        // Reconnect (to the other node) and resume from the last seq received: the rest, once.
        node = 1;
        resumes += 1;
        let mut again = cluster.query_client(node).await;
        again.resume(&exec, r.last_seq).await;
        assert!(read(&mut again, &mut r, None).await || r.terminal.is_some());
    }
    let terminal = r.terminal.clone().expect("the stream ended");
    assert_eq!(ty(&terminal), "query_completed", "{}", short(&terminal));
    assert_eq!(r.rows(), ROWS, "every row exactly once");
    sampling.store(false, Ordering::SeqCst);
    let peak = sampler.await.unwrap();
    // The README's bound: the events not yet taken (a window), one window behind them kept for
    // resumes, a quarter window between two looks at the followers, a chunk either side; plus the
    // stream's own overhead in Redis (about 10 %).
    let bound = (2 * WINDOW + WINDOW / 4 + 2 * MAX_CHUNK) * 11 / 10;
    assert!(
        peak <= bound,
        "the execution's keys peaked at {peak} bytes in Redis, over the bound of {bound}"
    );
    eprintln!(
        "window: 1M rows (objects, 500-row chunks), paused 8 s after {paused_at} rows, resumed {resumes}x \
         (last on node {node}); the execution's keys peaked at {:.1} MiB in Redis",
        peak as f64 / 1048576.0
    );

    // The finished execution's keys go after C2S_FINISHED_RETENTION_SECS (60).
    let mut redis = cluster.redis().await;
    let keys = execution_keys(&cluster.prefix, &exec);
    let live: i64 = redis::cmd("EXISTS")
        .arg(&keys)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(
        live >= 2,
        "the log and state are kept after the end for late resumes"
    );
    tokio::time::sleep(Duration::from_secs(65)).await;
    let live: i64 = redis::cmd("EXISTS")
        .arg(&keys)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(live, 0, "65 s after the end, the execution's keys are gone");
}

/// The three queries of the issue: a 50 MB value, a 300 MB value, 400 rows of 1 MB. Each ends with
/// `value_too_large` naming the column and the row; no frame is over C2S_MAX_CHUNK_BYTES; the worker
/// holds an oversized value once (as PostgreSQL sent it), the gateway and Redis none of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_values_never_reach_a_frame() {
    // Measures timing and load: not beside another heavy test (harness/lock.rs).
    let _serial = exclusive().await;
    let cluster = Cluster::builder("backpressure_oversized")
        .gateways(1)
        .workers(1)
        .start()
        .await;
    let (gw, wk) = (
        cluster.gateway(0).pid().unwrap(),
        cluster.workers[0].pid().unwrap(),
    );
    let mut c = cluster.query_client(0).await;
    let mut redis = cluster.redis().await;
    for (query, biggest) in [
        ("SELECT repeat('x', 50000000) AS big", 50_000_000u64),
        ("SELECT repeat('x', 300000000) AS big", 300_000_000),
        (
            "SELECT g, repeat('x', 1000000) AS mb FROM generate_series(1, 400) g",
            1_000_000,
        ),
    ] {
        let rss = |pid| vm_rss_kib(pid).unwrap_or(0) * 1024;
        let (gw0, wk0) = (rss(gw), rss(wk));
        let used = |con: &mut redis::aio::MultiplexedConnection| {
            let mut con = con.clone();
            async move {
                let info: String = redis::cmd("INFO")
                    .arg("memory")
                    .query_async(&mut con)
                    .await
                    .unwrap();
                info.lines()
                    .find_map(|l| l.strip_prefix("used_memory:"))
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .unwrap_or(0)
            }
        };
        let redis0 = used(&mut redis).await;
        let peaks = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
        let sampling = Arc::new(AtomicBool::new(true));
        let sampler = {
            let (peaks, sampling) = (peaks.clone(), sampling.clone());
            tokio::spawn(async move {
                while sampling.load(Ordering::SeqCst) {
                    peaks.0.fetch_max(rss(gw), Ordering::SeqCst);
                    peaks.1.fetch_max(rss(wk), Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        let exec = c.execute(query, None, None).await;
        let frames = c.collect_execution(&exec).await;
        sampling.store(false, Ordering::SeqCst);
        sampler.await.unwrap();
        let redis1 = used(&mut redis).await;
        let s = check_full_stream(&exec, &frames);
        let error = &s.terminal["payload"]["error"];
        assert_eq!(
            s.terminal_type(),
            "query_error",
            "{query}: {}",
            short(&s.terminal)
        );
        assert_eq!(error["code"], "value_too_large", "{query}: {error}");
        let message = error["message"].as_str().unwrap();
        assert!(
            message.contains("row 1") && message.contains('`'),
            "{query}: names the column and row: {message}"
        );
        for f in &frames {
            let size = f.to_string().len() as u64;
            assert!(size <= MAX_CHUNK, "{query}: a frame of {size} bytes");
        }
        let gw_growth = peaks.0.load(Ordering::SeqCst).saturating_sub(gw0);
        let wk_growth = peaks.1.load(Ordering::SeqCst).saturating_sub(wk0);
        // The documented bound: the worker reads the widest row whole as PostgreSQL sends it (the
        // driver's read buffer, which may grow to twice it while it reads); the gateway and Redis hold
        // none of it.
        assert!(
            wk_growth <= 2 * biggest + 64 * 1024 * 1024,
            "{query}: the worker grew by {} MiB for a {} MB value",
            wk_growth >> 20,
            biggest / 1_000_000
        );
        assert!(
            gw_growth <= 64 * 1024 * 1024,
            "{query}: the gateway grew by {} MiB",
            gw_growth >> 20
        );
        assert!(
            redis1.saturating_sub(redis0) <= 2 * WINDOW + 4 * MAX_CHUNK,
            "{query}: Redis grew by {} MiB",
            redis1.saturating_sub(redis0) >> 20
        );
        eprintln!(
            "oversized: {query}: value_too_large; growth: worker {} MiB, gateway {} MiB, Redis {} KiB",
            wk_growth >> 20,
            gw_growth >> 20,
            redis1.saturating_sub(redis0) >> 10
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_gone_for_less_than_the_grace_loses_nothing_and_no_follower_frees_the_stream() {
    // Measures timing and load: not beside another heavy test (harness/lock.rs).
    let _serial = exclusive().await;
    let cluster = Cluster::builder("backpressure_grace")
        .gateways(2)
        .workers(1)
        .worker_args(["--concurrency", "1"])
        .start()
        .await;
    let mut pg = cluster.pg().await;

    // A follower that drops its socket and comes back on the other node within the grace (5 s).
    let mut c = cluster.query_client(0).await;
    let exec = c
        .execute(
            QUERY,
            Some(json!({"chunkSize": 500, "timeoutMs": 240_000})),
            None,
        )
        .await;
    let mut r = Reading::new(&exec);
    assert!(read(&mut c, &mut r, Some(100_000)).await);
    c.close().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut back = cluster.query_client(1).await;
    back.resume(&exec, r.last_seq).await;
    read(&mut back, &mut r, None).await;
    assert_eq!(ty(r.terminal.as_ref().unwrap()), "query_completed");
    assert_eq!(r.rows(), ROWS, "every row once across the reconnect");

    // One that never returns: after the grace the stream ends (no_readers) and frees its connection
    // and its slot, without waiting for the query's time.
    let mut c = cluster.query_client(0).await;
    let exec = c
        .execute(
            QUERY,
            Some(json!({"chunkSize": 500, "timeoutMs": 240_000})),
            None,
        )
        .await;
    let mut r = Reading::new(&exec);
    assert!(read(&mut c, &mut r, Some(50_000)).await);
    c.close().await;
    let left = Instant::now();
    // Watched in Redis, not by following it (a follower would keep it going).
    let mut redis = cluster.redis().await;
    let state_key = execution_keys(&cluster.prefix, &exec)[0].clone();
    let info_seq = loop {
        let (state, seq): (Option<String>, Option<u64>) = redis::cmd("HMGET")
            .arg(&state_key)
            .arg("state")
            .arg("seq")
            .query_async(&mut redis)
            .await
            .unwrap();
        if state.as_deref() == Some("done") {
            break seq.unwrap_or(0);
        }
        assert!(
            left.elapsed() < Duration::from_secs(40),
            "the abandoned stream did not end"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let ended_after = left.elapsed();
    let mut watcher = cluster.client(1, "/ws/data").await;
    watcher
        .subscribe(&exec, Some(info_seq.saturating_sub(1)))
        .await;
    let frames = watcher.collect_execution(&exec).await;
    let end = frames.last().unwrap();
    assert_eq!(ty(end), "query_cancelled", "{}", describe(&frames));
    assert_eq!(end["payload"]["reason"], "no_readers", "{}", short(end));
    assert!(
        wait_active_count(&mut pg, &exec, Duration::from_secs(3), |n| n == 0).await,
        "the abandoned stream still holds its statement"
    );
    // The worker's one slot is free again.
    let mut next = cluster.query_client(0).await;
    let one = next.execute("SELECT 1 AS one", None, None).await;
    assert_eq!(
        check_full_stream(&one, &next.collect_execution(&one).await).terminal_type(),
        "query_completed"
    );
    eprintln!("grace: an abandoned stream ended {ended_after:?} after its only follower left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_stream_still_ends_with_the_statement_timeout() {
    // Measures timing and load: not beside another heavy test (harness/lock.rs).
    let _serial = exclusive().await;
    let cluster = Cluster::builder("backpressure_timeout")
        .gateways(1)
        .workers(1)
        .start()
        .await;
    let mut pg = cluster.pg().await;
    let mut c = cluster.query_client(0).await;
    let exec = c
        .execute(
            QUERY,
            Some(json!({"chunkSize": 500, "timeoutMs": 3000})),
            None,
        )
        .await;
    let mut r = Reading::new(&exec);
    assert!(read(&mut c, &mut r, Some(20_000)).await);
    // The reader stops; the worker pauses with its cursor open, until the query's 3 s are up.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        wait_active_count(&mut pg, &exec, Duration::from_secs(2), |n| n == 0).await,
        "the statement outlived the query's time"
    );
    if !read(&mut c, &mut r, None).await || r.terminal.is_none() {
        let mut again = cluster.query_client(0).await;
        again.resume(&exec, r.last_seq).await;
        read(&mut again, &mut r, None).await;
    }
    let end = r.terminal.clone().unwrap();
    assert_eq!(ty(&end), "query_error", "{}", short(&end));
    assert_eq!(
        end["payload"]["error"]["code"],
        "timeout",
        "{}",
        short(&end)
    );
    assert!(r.rows() < ROWS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_execution_goes_at_its_slowest_participants_pace() {
    // Measures timing and load: not beside another heavy test (harness/lock.rs).
    let _serial = exclusive().await;
    // Ann, Bob and Carol are read by one test task; on a loaded box one of them may not be polled for
    // seconds while the others parse, which the default send timeout (5 s) would close with 1013. The
    // pace is what this test checks, not the slow-consumer close (overload.rs checks that).
    let cluster = Cluster::builder("backpressure_shared")
        .gateways(2)
        .workers(1)
        .gateway_args(["--send-timeout-ms", "60000"])
        .start()
        .await;
    let session = new_session_id("bp");
    let mut ann = cluster.collab(0, &session, "ann", "Ann").await;
    let mut bob = cluster.collab(1, &session, "bob", "Bob").await;
    let exec = ann
        .execute(
            QUERY,
            Some(json!({"chunkSize": 500, "timeoutMs": 240_000})),
            "run",
        )
        .await;
    // Bob reads nothing for 4 s: Ann's stream stalls once the window is full.
    let start = Instant::now();
    let mut ann_rows = Vec::new();
    while start.elapsed() < Duration::from_secs(4) {
        ann.settle(Duration::from_millis(200)).await;
        ann_rows.push(rows_of(&ann.exec_events(&exec)));
    }
    let stalled_at = *ann_rows.last().unwrap();
    assert!(
        stalled_at < ROWS
            && ann_rows[ann_rows.len() - 5..]
                .iter()
                .all(|&n| n == stalled_at),
        "Ann went on while Bob read nothing: {ann_rows:?}"
    );
    // Bob reads again: both get every row, once. Carol, who may see the session's executions, comes
    // late: she gets what the log still holds, told of what is gone, then the rest.
    let late = async {
        let mut carol = cluster.client(1, "/ws/data").await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        carol.subscribe(&exec, Some(0)).await;
        let (mut told, mut r) = (None, Reading::new(&exec));
        while r.terminal.is_none() {
            match carol.next_frame(Duration::from_secs(60)).await {
                Received::Frame(f) if ty(&f) == "error" && exec_of(&f).is_none() => {
                    assert!(
                        told.is_none() && r.frames == 0,
                        "one notice, before the events: {f}"
                    );
                    told = Some(
                        f["payload"]["message"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                    );
                }
                Received::Frame(f) if r.frames == 0 && is_event_of(&f, &exec) => {
                    // The first event kept: the events from there on, and the rows from its first.
                    r.last_seq = seq_of(&f) - 1;
                    r.next_n = 0;
                    r.take(&f);
                }
                Received::Frame(f) => r.take(&f),
                other => panic!("carol: {other:?}"),
            }
        }
        (told, r)
    };
    let (a, b, (told, carol)) = tokio::join!(
        ann.collect_execution(&exec, Duration::from_secs(120)),
        bob.collect_execution(&exec, Duration::from_secs(120)),
        late
    );
    for (who, frames) in [("ann", &a), ("bob", &b)] {
        let s = check_full_stream(&exec, frames);
        assert_eq!(s.terminal_type(), "query_completed", "{who}");
        assert_eq!(s.rows.len() as u64, ROWS, "{who}: every row once");
    }
    assert_eq!(
        carol.next_n - 1,
        ROWS,
        "carol got the rest, to the last row"
    );
    if let Some(message) = &told {
        assert!(message.contains("no longer retained"), "{message}");
    }
    eprintln!(
        "shared: Ann stalled at {stalled_at} rows while Bob read nothing; Carol, 2 s late, was told: {told:?}"
    );
}

/// The `n` of the first row of a data_chunk (None for other events).
fn first_n(f: &Value) -> Option<u64> {
    f["payload"]["data"].get(0)?.get("n")?.as_u64()
}

fn rows_of(frames: &[Value]) -> u64 {
    frames
        .iter()
        .filter(|f| ty(f) == "data_chunk")
        .map(|f| {
            f["payload"]["data"]
                .as_array()
                .map_or(0, |d| d.len() as u64)
        })
        .sum()
}
