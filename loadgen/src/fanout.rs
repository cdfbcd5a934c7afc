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

pub async fn run(
    gateways: &[String],
    participants: usize,
    sessions: usize,
    rate: u64,
    seconds: u64,
) -> anyhow::Result<Value> {
    let run_id = std::process::id();
    let clock = Instant::now();
    println!(
        "scenario fanout: {participants} participants in {sessions} session(s) over {} gateway(s), {rate} msg/s for {seconds} s",
        gateways.len()
    );
    let histogram = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let sockets = connect_all(gateways, participants, sessions, run_id).await?;
    // Let the joins settle before measuring, so the figures are of the steady state, not of the join
    // storm: every earlier participant receives each later participant_joined, and a socket nobody
    // reads meanwhile would make the first chat messages of the run wait behind them.
    let sockets = drain_until_quiet(sockets).await?;
    let per_session = participants.div_ceil(sessions);
    let per_sender_interval = Duration::from_secs_f64(participants as f64 / rate.max(1) as f64);
    let sent_total = rate * seconds;
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for (i, ws) in sockets.into_iter().enumerate() {
        let (mut tx, mut rx) = ws.split();
        let histogram = histogram.clone();
        // Receiver: every chat message from someone else counts, until quiet after the deadline.
        let receiver = tokio::spawn(async move {
            let (mut received, mut node_lost) = (0u64, 0u64);
            let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
            loop {
                let wait = if Instant::now() < deadline {
                    deadline - Instant::now() + Duration::from_secs(3)
                } else {
                    Duration::from_secs(3)
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
                    let _ = local.record(now_us.saturating_sub(sent_us).max(1));
                    received += 1;
                }
            }
            let _ = histogram.lock().await.add(&local);
            (received, node_lost)
        });
        // Sender: its share of the rate, evenly spaced, offset so senders do not fire together.
        let sender = tokio::spawn(async move {
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
    let (mut sent, mut received, mut node_lost) = (0u64, 0u64, 0u64);
    for (sender, receiver) in tasks {
        sent += sender.await?;
        let (r, lost) = receiver.await?;
        received += r;
        node_lost += lost;
    }
    let elapsed = start.elapsed().as_secs_f64() - 3.0;
    let h = histogram.lock().await;
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

/// Connects every participant (round robin over the gateways) and waits for its `session_state`.
async fn connect_all(
    gateways: &[String],
    participants: usize,
    sessions: usize,
    run_id: u32,
) -> anyhow::Result<Vec<ClientWs>> {
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
        sockets.push(ws);
    }
    Ok(sockets)
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

/// Reads every socket until it has been quiet for [`QUIET`] (at most [`SETTLE_LIMIT`] in all).
async fn drain_until_quiet<S>(sockets: Vec<S>) -> anyhow::Result<Vec<S>>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
        + Unpin
        + Send
        + 'static,
{
    const QUIET: Duration = Duration::from_millis(500);
    const SETTLE_LIMIT: Duration = Duration::from_secs(60);
    let until = Instant::now() + SETTLE_LIMIT;
    let tasks: Vec<_> = sockets
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                while Instant::now() < until {
                    match tokio::time::timeout(QUIET, ws.next()).await {
                        Ok(Some(Ok(_))) => continue,
                        Ok(other) => bail!("a socket ended while the joins settled: {other:?}"),
                        Err(_) => break,
                    }
                }
                anyhow::Ok(ws)
            })
        })
        .collect();
    let mut settled = Vec::with_capacity(tasks.len());
    for t in tasks {
        settled.push(t.await??);
    }
    Ok(settled)
}
