//! The `fanout` scenario (see the crate docs).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use c2s_protocol::{ServerFrame, ServerMessage};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::sync::Mutex;

use crate::frames;
use tokio_tungstenite::tungstenite::Message;

/// A client socket as `connect_async` opens it.
type ClientWs =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How many clients, in how many sessions, send how much for how long.
pub struct Shape {
    pub participants: usize,
    pub sessions: usize,
    /// Chat messages per second, all senders together.
    pub rate: u64,
    pub seconds: u64,
}

pub async fn run(gateways: &[String], shape: Shape, timeline: bool) -> anyhow::Result<Value> {
    let Shape {
        participants,
        sessions,
        rate,
        seconds,
    } = shape;
    let run_id = std::process::id();
    let clock = Instant::now();
    println!(
        "scenario fanout: {participants} participants in {sessions} session(s) over {} gateway(s), {rate} msg/s for {seconds} s",
        gateways.len()
    );
    let histogram = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let seconds_of_run = Arc::new(Mutex::new(Timeline::default()));
    // Every socket is read from its session_state on until the joins have settled, so the figures
    // are of the steady state, not of the join storm: every earlier participant receives each later
    // participant_joined, and a socket nobody reads meets the gateway's idle timeout (its pings go
    // unanswered: 10,000 sockets took over 30 s to connect) or makes the first chat messages of the
    // run wait behind them.
    let (all_connected, connected) = tokio::sync::watch::channel(false);
    let draining = connect_all(gateways, participants, sessions, run_id, connected).await?;
    all_connected.send_replace(true);
    let mut sockets = Vec::with_capacity(draining.len());
    for task in draining {
        sockets.push(task.await??);
    }
    let per_session = participants.div_ceil(sessions);
    // What one socket receives: its session's share of the messages (sized so it never grows).
    let expected_each = usize::try_from(rate * seconds).unwrap_or(0) / sessions.max(1) + 16;
    let per_sender_interval = Duration::from_secs_f64(participants as f64 / rate.max(1) as f64);
    let sent_total = rate * seconds;
    let run_for = Duration::from_secs(seconds);
    // The run starts once every socket's receiver is spawned: with the start taken before, the
    // first messages reached sockets whose receivers did not exist yet (10,000 sockets: 20,000
    // spawns) and counted the spawning as latency.
    let (go, started) = tokio::sync::watch::channel(None::<Instant>);
    let mut tasks = Vec::new();
    for (i, ws) in sockets.into_iter().enumerate() {
        let (mut tx, mut rx) = ws.split();
        let histogram = histogram.clone();
        let seconds_of_run = seconds_of_run.clone();
        let (began, mut starting) = (started.clone(), started.clone());
        // Receiver: every chat message from someone else counts, until quiet after the deadline.
        let receiver = tokio::spawn(async move {
            let (mut received, mut node_lost) = (0u64, 0u64);
            // Raw figures, merged into the histogram after the run: a histogram per socket is
            // ~140 KB to zero, and made while the first messages came in, 4,000 of them held the
            // first seconds of every run back (the tail that grew with the number of sockets).
            let mut local = Vec::with_capacity(expected_each);
            let mut local_seconds = Timeline::default();
            let mut start = None;
            loop {
                // Read once it is set (the watch's lock is shared by every receiver).
                if start.is_none() {
                    start = *began.borrow();
                }
                let wait = match start.map(|s| s + run_for) {
                    Some(deadline) if Instant::now() < deadline => {
                        deadline - Instant::now() + Duration::from_secs(3)
                    }
                    Some(_) => Duration::from_secs(3),
                    None => run_for + Duration::from_secs(60),
                };
                let Ok(Some(Ok(msg))) = tokio::time::timeout(wait, rx.next()).await else {
                    break;
                };
                let Message::Text(text) = msg else { continue };
                // Nobody leaves during the run: a `node_lost` is a live gateway presumed dead.
                if text.starts_with("{\"type\":\"participant_left\"") {
                    if let Ok(ServerMessage::ParticipantLeft(left)) =
                        frames::parse(&text).map(|f| f.message)
                    {
                        node_lost += u64::from(left.reason == "node_lost");
                    }
                }
                if !text.starts_with("{\"type\":\"chat_message\"") {
                    continue;
                }
                let Ok(ServerFrame {
                    message: ServerMessage::ChatMessage(chat),
                    ..
                }) = frames::parse(&text)
                else {
                    continue;
                };
                if let Some(sent_us) = chat
                    .message
                    .content
                    .strip_prefix("t=")
                    .and_then(|t| t.parse::<u64>().ok())
                {
                    let now_us = clock.elapsed().as_micros() as u64;
                    let took = now_us.saturating_sub(sent_us).max(1);
                    local.push(took);
                    if start.is_none() {
                        start = *began.borrow();
                    }
                    let start = start.unwrap_or(clock);
                    let since_start = Duration::from_micros(sent_us).saturating_sub(start - clock);
                    local_seconds.record(since_start.as_secs(), took);
                    received += 1;
                }
            }
            let mut h = histogram.lock().await;
            for took in local {
                let _ = h.record(took);
            }
            drop(h);
            seconds_of_run.lock().await.add(&local_seconds);
            (received, node_lost)
        });
        // Sender: its share of the rate, evenly spaced, offset so senders do not fire together.
        let sender = tokio::spawn(async move {
            let Ok(start) = starting
                .wait_for(Option::is_some)
                .await
                .map(|s| s.unwrap_or(clock))
            else {
                return 0;
            };
            let deadline = start + run_for;
            let offset = per_sender_interval.mul_f64((i as f64 / participants as f64).fract());
            let mut next = start + offset;
            let mut sent = 0u64;
            while next < deadline {
                tokio::time::sleep_until(next.into()).await;
                let frame = frames::chat_text(
                    None,
                    format!("{i}-{sent}"),
                    format!("t={}", clock.elapsed().as_micros()),
                );
                if tx.send(Message::text(frame)).await.is_err() {
                    break;
                }
                sent += 1;
                next += per_sender_interval;
            }
            // Keep the socket open until the receivers are done.
            tokio::time::sleep_until((deadline + Duration::from_secs(3)).into()).await;
            let _ = tx.close().await;
            sent
        });
        tasks.push((sender, receiver));
    }
    let start = Instant::now();
    go.send_replace(Some(start));
    let (mut sent, mut received, mut node_lost) = (0u64, 0u64, 0u64);
    for (sender, receiver) in tasks {
        sent += sender.await?;
        let (r, lost) = receiver.await?;
        received += r;
        node_lost += lost;
    }
    let elapsed = start.elapsed().as_secs_f64() - 3.0;
    let h = histogram.lock().await;
    if timeline {
        seconds_of_run.lock().await.print();
    }
    let counts = Counts {
        sent,
        sent_total,
        received,
        expected: sent * per_session as u64,
        node_lost,
    };
    Ok(report(
        &h,
        counts,
        elapsed,
        (participants, sessions, gateways.len(), rate, seconds),
    ))
}

/// Connects every participant (round robin over the gateways), waits for its `session_state`, and
/// hands it to [`drain_until_quiet`].
async fn connect_all(
    gateways: &[String],
    participants: usize,
    sessions: usize,
    run_id: u32,
    connected: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<anyhow::Result<ClientWs>>>> {
    let mut sockets = Vec::with_capacity(participants);
    for i in 0..participants {
        let base = gateways[i % gateways.len()].trim_end_matches('/');
        let session = format!("lg-{run_id}-{}", i % sessions);
        let url = format!("{base}/ws/collaboration/{session}?user=lg{i}");
        // TCP_NODELAY, as browsers do: otherwise Nagle holds small frames behind a delayed ACK.
        let (mut ws, _) = tokio_tungstenite::connect_async_with_config(&url, None, true)
            .await
            .with_context(|| format!("connecting {url}"))?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) if t.contains("\"session_state\"") => break,
                Some(Ok(_)) => continue,
                other => bail!("no session_state from {url}: {other:?}"),
            }
        }
        sockets.push(tokio::spawn(drain_until_quiet(ws, connected.clone())));
    }
    Ok(sockets)
}

/// Per second of the run (by send time): deliveries, those over 5 and 50 ms, the slowest (µs).
#[derive(Default)]
struct Timeline(Vec<[u64; 4]>);

impl Timeline {
    fn record(&mut self, second: u64, took_us: u64) {
        let i = usize::try_from(second).unwrap_or(usize::MAX).min(3600);
        if self.0.len() <= i {
            self.0.resize(i + 1, [0; 4]);
        }
        let s = &mut self.0[i];
        s[0] += 1;
        s[1] += u64::from(took_us > 5_000);
        s[2] += u64::from(took_us > 50_000);
        s[3] = s[3].max(took_us);
    }

    fn add(&mut self, other: &Timeline) {
        if self.0.len() < other.0.len() {
            self.0.resize(other.0.len(), [0; 4]);
        }
        for (s, o) in self.0.iter_mut().zip(&other.0) {
            s[0] += o[0];
            s[1] += o[1];
            s[2] += o[2];
            s[3] = s[3].max(o[3]);
        }
    }

    fn print(&self) {
        for (i, [n, over5, over50, max]) in self.0.iter().enumerate() {
            println!(
                "second {i}: {n} delivered, {over5} over 5 ms, {over50} over 50 ms, max {:.1} ms",
                *max as f64 / 1000.0
            );
        }
    }
}

/// Messages sent and delivered. Each message reaches everyone in its session (the sender too), so
/// `expected` is `sent` times the session size.
struct Counts {
    sent: u64,
    sent_total: u64,
    received: u64,
    expected: u64,
    /// `participant_left (node_lost)` frames received: false positives of failure detection.
    node_lost: u64,
}

/// Prints the figures and returns them as JSON; `setup` is (participants, sessions, gateways, rate, seconds).
fn report(
    h: &Histogram<u64>,
    counts: Counts,
    elapsed: f64,
    setup: (usize, usize, usize, u64, u64),
) -> Value {
    let Counts {
        sent,
        sent_total,
        received,
        expected,
        node_lost,
    } = counts;
    let (participants, sessions, gateways, rate, seconds) = setup;
    println!(
        "sent {sent} (target {sent_total}), delivered {received} (expected {expected}), lost {}",
        expected.saturating_sub(received)
    );
    println!(
        "latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.9) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.value_at_quantile(0.999) as f64 / 1000.0,
        h.max() as f64 / 1000.0
    );
    let rate_delivered = received as f64 / elapsed.max(0.001);
    println!("delivered messages/s: {rate_delivered:.0}; participant_left (node_lost) of live nodes: {node_lost}");
    let q = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    json!({
        "scenario": "fanout", "participants": participants, "sessions": sessions,
        "gateways": gateways, "rate": rate, "seconds": seconds,
        "sent": sent, "delivered": received, "expected": expected,
        "lost": expected.saturating_sub(received),
        "latency_ms": {"p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999),
                       "max": h.max() as f64 / 1000.0},
        "delivered_per_sec": rate_delivered,
        "false_node_lost": node_lost,
    })
}

/// Reads a socket until every socket is connected and this one has been quiet for [`QUIET`] (at
/// most [`SETTLE_LIMIT`] after they all are).
async fn drain_until_quiet(
    mut ws: ClientWs,
    mut connected: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<ClientWs> {
    const QUIET: Duration = Duration::from_millis(500);
    const SETTLE_LIMIT: Duration = Duration::from_secs(60);
    let mut until = None;
    loop {
        if until.is_none() && *connected.borrow_and_update() {
            until = Some(Instant::now() + SETTLE_LIMIT);
        }
        if until.is_some_and(|u| Instant::now() >= u) {
            return Ok(ws);
        }
        match tokio::time::timeout(QUIET, ws.next()).await {
            Ok(Some(Ok(_))) => continue,
            Ok(other) => bail!("a socket ended while the joins settled: {other:?}"),
            Err(_) if until.is_some() => return Ok(ws),
            Err(_) => continue,
        }
    }
}
