//! Overload: a client that stops reading is closed (1013) without slowing the others or growing the
//! gateway's memory, the connection cap (1013), and the per-socket rate limit (`rate_limited`, then 1008).
//!
//! The tests of this file run one at a time (the slow-consumer test measures latencies).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::harness::raw::*;
use crate::harness::*;
use serde_json::{json, Value};
use tokio::time::Instant;

// ---------------------------------------------------------------------------------------------------------
// 5. Slow consumer
// ---------------------------------------------------------------------------------------------------------

const SLOW_QUERY: &str = "SELECT g AS n, md5(g::text) AS h FROM generate_series(1,1000000) g";
const SLOW_ROWS: u64 = 1_000_000;
/// Bounds of the brief.
const PING_P99_BOUND: Duration = Duration::from_millis(500);
const RSS_BOUND_KIB: u64 = 300 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_closed_1013_without_slowing_others() {
    let _serial = exclusive().await;
    let cluster = Cluster::builder("overload_slow_consumer")
        .gateways(1)
        .workers(1)
        .gateway_args(["--send-timeout-ms", "1000"])
        .start()
        .await;
    let addr = cluster.gateway(0).addr();
    let pid = cluster.gateway(0).pid().expect("the gateway runs");
    let schema = cluster.schema();

    // The gateway's RSS, sampled every 50 ms until the end of the test.
    let rss_start = vm_rss_kib(pid).expect("VmRSS of the gateway");
    let max_rss = Arc::new(AtomicU64::new(rss_start));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (max_rss, sampling) = (max_rss.clone(), sampling.clone());
        tokio::spawn(async move {
            while sampling.load(Ordering::SeqCst) {
                if let Some(kib) = vm_rss_kib(pid) {
                    max_rss.fetch_max(kib, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    // P: a normal client pinging every 100 ms, recording round trips.
    let mut p = cluster.query_client(0).await;
    p.ping(0).await;
    let pinging = Arc::new(AtomicBool::new(true));
    let pinger = {
        let pinging = pinging.clone();
        tokio::spawn(async move {
            let mut rtts = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut i = 1;
            while pinging.load(Ordering::SeqCst) {
                tick.tick().await;
                let t = Instant::now();
                p.ping(i).await;
                rtts.push(t.elapsed());
                i += 1;
            }
            (p, rtts)
        })
    };

    // S: asks for a million rows, then never reads (a raw socket with a small receive buffer).
    let mut s = RawWs::connect(addr, "/ws/query", Some(4096)).await;
    let frame = execute_query_frame(
        SLOW_QUERY,
        Some(json!({"chunkSize": 1000, "rowFormat": "arrays", "timeoutMs": 300_000})),
        Some("slow-1"),
    );
    schema.assert_valid_client(&frame);
    let sent = Instant::now();
    s.send_text(&frame.to_string()).await;

    // The gateway gives up on S: its slow-consumer counter moves (S itself reads nothing yet).
    let deadline = sent + Duration::from_secs(10);
    let closed_after = loop {
        if let Some(m) = scrape(addr).await {
            if metric_sum(&m, "c2s_slow_consumer_closes_total", &[]) >= 1.0 {
                assert!(
                    metric_sum(&m, "c2s_ws_connections_closed_total", &["code=\"1013\""]) >= 1.0,
                    "the slow consumer's close is counted with code 1013"
                );
                break sent.elapsed();
            }
        }
        assert!(
            Instant::now() < deadline,
            "the gateway did not close the slow consumer within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // A little more of P's pings with the gateway busy elsewhere, then stop P.
    tokio::time::sleep(Duration::from_secs(1)).await;
    pinging.store(false, Ordering::SeqCst);
    let (mut p, rtts) = tokio::time::timeout(Duration::from_secs(30), pinger)
        .await
        .expect("the pinger stopped")
        .expect("the pinger task");

    // S reads now: everything the server had sent, then the close frame with 1013, then EOF.
    let (bytes, clean_eof) = s.read_to_eof(Duration::from_secs(30)).await;
    let (frames, trailing) = parse_server_frames(&bytes);
    assert_eq!(trailing, 0, "S's stream ends with a whole frame");
    let close_at = frames
        .iter()
        .position(|f| f.opcode == 0x8)
        .unwrap_or_else(|| {
            panic!(
                "no close frame among the {} frames ({} bytes) S received (clean EOF: {clean_eof})",
                frames.len(),
                bytes.len()
            )
        });
    assert_eq!(
        close_at,
        frames.len() - 1,
        "the close frame is the last frame"
    );
    assert_eq!(
        frames[close_at].close_code(),
        Some(1013),
        "S is closed with 1013 (try again later)"
    );
    let texts: Vec<Value> = frames[..close_at]
        .iter()
        .filter(|f| f.opcode != 0x9 && f.opcode != 0xA)
        .map(|f| {
            assert!(
                f.fin && f.opcode == 0x1,
                "a server frame that is not text: {f:?}"
            );
            let v: Value = serde_json::from_str(f.text().expect("UTF-8")).expect("JSON");
            schema.assert_valid(&v);
            v
        })
        .collect();
    assert_eq!(
        ty(&texts[0]),
        "ack",
        "S's first frame: {}",
        short(&texts[0])
    );
    assert_eq!(texts[0]["payload"]["id"], "slow-1");
    let exec = exec_of(&texts[0]).expect("ack.executionId").to_owned();
    let events: Vec<&Value> = texts[1..].iter().collect();
    for (i, f) in events.iter().enumerate() {
        assert!(is_event_of(f, &exec), "S got {}", short(f));
        assert_eq!(seq_of(f), i as u64 + 1, "S's events are seq 1, 2, 3…");
    }
    let rows_to_s: usize = events
        .iter()
        .filter(|f| ty(f) == "data_chunk")
        .map(|f| f["payload"]["data"].as_array().map_or(0, Vec::len))
        .sum();
    assert!(
        (rows_to_s as u64) < SLOW_ROWS,
        "scenario check: S must have been cut before the end ({rows_to_s} rows reached it)"
    );

    // Other clients were not slowed down.
    assert!(rtts.len() >= 10, "only {} pings", rtts.len());
    let p50 = percentile(&rtts, 50.0);
    let p99 = percentile(&rtts, 99.0);
    let worst = *rtts.iter().max().expect("non-empty");
    assert!(
        p99 < PING_P99_BOUND,
        "P's ping p99 {p99:?} (p50 {p50:?}, max {worst:?}) over {} pings while S stalled",
        rtts.len()
    );
    p.ping(10_000).await;

    // S resumes its execution from the start, on the same gateway, and gets every row.
    let mut r = cluster.query_client(0).await;
    r.label = "S resumed".into();
    let resumed = Instant::now();
    r.resume(&exec, 0).await;
    let mut next_seq = 1;
    let mut rows: u64 = 0;
    let terminal = loop {
        let f = match r.next_frame(Duration::from_secs(60)).await {
            Received::Frame(f) => f,
            other => panic!("S resumed: {other:?} after {rows} rows"),
        };
        assert!(is_event_of(&f, &exec), "S resumed got {}", short(&f));
        assert_eq!(seq_of(&f), next_seq, "seq runs 1, 2, 3… in the replay");
        next_seq += 1;
        if ty(&f) == "data_chunk" {
            rows += f["payload"]["data"]
                .as_array()
                .map_or(0, |d| d.len() as u64);
        }
        if is_terminal(&f) {
            break f;
        }
        assert!(
            resumed.elapsed() < Duration::from_secs(300),
            "the resumed stream took over 5 minutes"
        );
    };
    assert_eq!(ty(&terminal), "query_completed", "{}", short(&terminal));
    assert_eq!(rows, SLOW_ROWS, "the resumed client gets every row");
    assert_eq!(terminal["payload"]["result"]["rowCount"], json!(SLOW_ROWS));
    let resume_took = resumed.elapsed();

    sampling.store(false, Ordering::SeqCst);
    sampler.await.expect("the RSS sampler");
    let max_rss = max_rss.load(Ordering::SeqCst);
    assert!(
        max_rss < RSS_BOUND_KIB,
        "the gateway's RSS reached {} MiB (from {} MiB at the start)",
        max_rss / 1024,
        rss_start / 1024
    );
    eprintln!(
        "slow consumer: S closed 1013 {closed_after:?} after its execute_query ({} frames, {rows_to_s} rows, \
         {} bytes reached it); P's ping over {} pings: p50 {p50:?}, p99 {p99:?}, max {worst:?}; gateway RSS \
         {} MiB at the start, max {} MiB; the resume from afterSeq 0 delivered {rows} rows in {resume_took:?}",
        frames.len(),
        bytes.len(),
        rtts.len(),
        rss_start / 1024,
        max_rss / 1024
    );
}

// ---------------------------------------------------------------------------------------------------------
// 6. Connection cap
// ---------------------------------------------------------------------------------------------------------

/// Connects to `url`; Ok(client) if it answers a ping, Err(close code) if it was refused with an
/// `unavailable` error frame and closed.
async fn connect_or_refused(cluster: &Cluster, ts: i64) -> Result<Client, Option<u16>> {
    let mut c = cluster.query_client(0).await;
    c.send_text_lenient(&json!({"type": "ping", "payload": {"timestamp": ts}}).to_string())
        .await;
    match c.next_frame(Duration::from_secs(10)).await {
        Received::Frame(f) if ty(&f) == "pong" => {
            assert_eq!(f["payload"]["timestamp"], json!(ts), "{}", short(&f));
            Ok(c)
        }
        Received::Frame(f) if ty(&f) == "error" => {
            assert_eq!(
                f["payload"]["code"],
                "unavailable",
                "a refused connection: {}",
                short(&f)
            );
            let (rest, code) = c.recv_until_close(Duration::from_secs(10)).await;
            assert!(
                rest.is_empty(),
                "frames after the refusal: {}",
                describe(&rest)
            );
            Err(code)
        }
        other => panic!("a new connection got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cap_refuses_the_next_one_with_1013() {
    let _serial = exclusive().await;
    let cluster = Cluster::builder("overload_connection_cap")
        .gateways(1)
        .workers(0)
        .database(false)
        .gateway_args(["--max-connections", "3"])
        .start()
        .await;
    let mut open = Vec::new();
    for i in 0..3 {
        match connect_or_refused(&cluster, i).await {
            Ok(c) => open.push(c),
            Err(code) => panic!("connection {} of 3 refused ({code:?})", i + 1),
        }
    }
    // The 4th: the upgrade completes, one `error unavailable`, then 1013.
    match connect_or_refused(&cluster, 3).await {
        Ok(_) => panic!("a 4th connection was accepted with --max-connections 3"),
        Err(code) => assert_eq!(code, Some(1013), "the 4th connection's close code"),
    }
    // The three still work.
    for (i, c) in open.iter_mut().enumerate() {
        c.ping(100 + i as i64).await;
    }
    // One leaves: a new connection works (once the gateway has seen the close).
    open.remove(0).close().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut refusals = 0;
    let mut newcomer = loop {
        match connect_or_refused(&cluster, 200 + refusals).await {
            Ok(c) => break c,
            Err(code) => {
                assert_eq!(code, Some(1013));
                refusals += 1;
                assert!(
                    Instant::now() < deadline,
                    "no connection accepted 5 s after one of the 3 left"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    newcomer.ping(300).await;
    // And the cap still holds.
    match connect_or_refused(&cluster, 400).await {
        Ok(_) => panic!("a 4th connection was accepted after the swap"),
        Err(code) => assert_eq!(code, Some(1013)),
    }
    for c in open.iter_mut() {
        c.ping(500).await;
    }
}

// ---------------------------------------------------------------------------------------------------------
// 7. Rate limit
// ---------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_refuses_then_closes_1008_and_spares_a_calm_client() {
    let _serial = exclusive().await;
    let (per_sec, burst, max_refused) = (10, 20, 30);
    let cluster = Cluster::builder("overload_rate_limit")
        .gateways(1)
        .workers(0)
        .database(false)
        .gateway_args([
            "--rate-limit-per-sec".to_owned(),
            per_sec.to_string(),
            "--rate-limit-burst".to_owned(),
            burst.to_string(),
            "--rate-limit-max-refused".to_owned(),
            max_refused.to_string(),
        ])
        .start()
        .await;

    // A calm client, 5 pings/s for 3 s, at the same time on its own socket: never limited.
    let mut calm = cluster.query_client(0).await;
    let calm_task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        for i in 0..15 {
            tick.tick().await;
            calm.ping(i).await; // panics on anything but the pong (an error frame included)
        }
        calm
    });

    // A flood: 100 pings as fast as possible.
    let mut flood = cluster.query_client(0).await;
    let started = Instant::now();
    let mut sent = 0;
    for i in 0..100 {
        let ping = json!({"type": "ping", "payload": {"timestamp": i}}).to_string();
        if !flood.send_text_lenient(&ping).await {
            break;
        }
        sent += 1;
    }
    let send_took = started.elapsed();
    let (frames, code) = flood.recv_until_close(Duration::from_secs(10)).await;
    let pongs = frames.iter().filter(|f| ty(f) == "pong").count();
    let limited: Vec<&Value> = frames
        .iter()
        .filter(|f| ty(f) == "error" && f["payload"]["code"] == "rate_limited")
        .collect();
    assert_eq!(
        pongs + limited.len(),
        frames.len(),
        "only pongs and rate_limited errors: {}",
        describe(&frames)
    );
    assert_eq!(
        ty(&frames[0]),
        "pong",
        "the burst lets the first pings through"
    );
    let first_error = frames.iter().position(|f| ty(f) == "error").unwrap_or(0);
    assert!(
        first_error >= burst - 1,
        "the first {burst} (burst) pings are answered before any refusal: {}",
        describe(&frames)
    );
    // The burst, plus what the bucket refilled while the pings went out (10/s).
    let refill = (send_took.as_secs_f64() * per_sec as f64).ceil() as usize;
    assert!(
        pongs >= burst - 1 && pongs <= burst + refill + 3,
        "pongs: {pongs} (burst {burst}, sending took {send_took:?}): {}",
        describe(&frames)
    );
    assert!(
        limited.len() >= max_refused && limited.len() <= max_refused + 1,
        "rate_limited errors before the close: {} (max refused {max_refused})",
        limited.len()
    );
    for e in &limited {
        assert!(
            e["payload"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{}",
            short(e)
        );
    }
    assert_eq!(code, Some(1008), "the flooding socket is closed with 1008");

    let mut calm = tokio::time::timeout(Duration::from_secs(30), calm_task)
        .await
        .expect("the calm client finished")
        .expect("the calm client was never limited");
    calm.ping(99).await;
    eprintln!(
        "rate limit: {sent} pings sent in {send_took:?}; {pongs} pongs, {} rate_limited, then close {code:?}; \
         the calm client's 15 pings were all answered",
        limited.len()
    );
}
