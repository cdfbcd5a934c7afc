//! The `failover` scenario: `--clients` collaboration participants on gateway A (spread over `--sessions`
//! sessions), chat traffic sent from gateway B, then SIGKILL of A (`--kill-pid`). Every participant of A
//! reconnects to B with `?afterSeq=<last seq it saw>&participantId=<its id>` (taking over its entry at
//! once); the scenario measures, from the kill, when each one
//! has its `session_state` again (resumed), and checks no session event was lost or duplicated: every
//! participant's seq runs on without a gap across the reconnect and it received every chat message sent
//! in its session.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use c2s_protocol::ServerMessage;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::sync::{watch, Semaphore};
use tokio_tungstenite::tungstenite::Message;

use crate::frames;
use crate::net::{connect_from, socket_addr, source_address, Ws};

pub struct Options {
    pub from: String,
    pub to: String,
    pub clients: usize,
    pub sessions: usize,
    pub kill_pid: u32,
    /// Chat messages per second, all sessions together, sent from gateway B.
    pub rate: u64,
    pub before_kill_secs: u64,
    pub after_kill_secs: u64,
    pub parallel: usize,
    pub source_addresses: u8,
}

/// What one participant of gateway A saw.
#[derive(Default)]
struct Outcome {
    resumed_after: Option<Duration>,
    chats: u64,
    gaps: u64,
    duplicates: u64,
    error: Option<String>,
}

/// Reads until `session_state`; returns its snapshot seq and the participant id. Events before it are
/// not expected.
async fn await_session_state(ws: &mut Ws) -> anyhow::Result<(u64, String)> {
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => match frames::parse(&t)?.message {
                ServerMessage::SessionState(state) => {
                    return Ok((state.snapshot_seq, state.participant_id))
                }
                ServerMessage::Error(_) => bail!("join refused: {t}"),
                _ => {}
            },
            Ok(Some(Ok(_))) => continue,
            other => bail!("no session_state: {other:?}"),
        }
    }
}

/// A rejoin passes `afterSeq` and its previous participant id (taken over at once, not left as a ghost
/// until the dead node is reaped).
fn session_url(base: &str, session: &str, user: &str, rejoin: Option<(u64, &str)>) -> String {
    let mut url = format!(
        "{}/ws/collaboration/{session}?user={user}",
        base.trim_end_matches('/')
    );
    if let Some((s, participant)) = rejoin {
        let participant = participant.replace('#', "%23");
        url.push_str(&format!("&afterSeq={s}&participantId={participant}"));
    }
    url
}

pub async fn run(o: Options) -> anyhow::Result<Value> {
    let limit = rlimit::increase_nofile_limit(2 * o.clients as u64 + 4096).unwrap_or(0);
    let (a, b) = (socket_addr(&o.from)?, socket_addr(&o.to)?);
    let run_id = std::process::id();
    let sessions = o.sessions.max(1);
    println!(
        "scenario failover: {} participants on {} in {sessions} sessions, chat {} msg/s from {}; kill -9 of pid {} after {} s (fd limit {limit})",
        o.clients, o.from, o.rate, o.to, o.kill_pid, o.before_kill_secs
    );

    let (killed_tx, killed_rx) = watch::channel::<Option<Instant>>(None);
    // Senders stop first; followers a moment later, once the last messages had time to arrive.
    let (stop_senders, senders_stopped) = watch::channel(false);
    let (stop_followers, followers_stopped) = watch::channel::<Option<SentCounts>>(None);
    let joined = Instant::now();
    let participants = join_all(&o, a, run_id, sessions).await?;
    println!(
        "joined {} participants on A in {:.1} s",
        participants.len(),
        joined.elapsed().as_secs_f64()
    );

    // Followers: read, check seq, count chats; on the cut, rejoin B after the last seq seen.
    let mut followers = Vec::with_capacity(participants.len());
    for (i, (session, user, ws, seq, participant)) in participants.into_iter().enumerate() {
        let (to, killed, stop) = (o.to.clone(), killed_rx.clone(), followers_stopped.clone());
        let source = source_address(i, o.source_addresses);
        followers.push(tokio::spawn(follow(
            (session, user, ws, seq, participant),
            i % sessions,
            to,
            b,
            source,
            killed,
            stop,
        )));
    }

    // Senders: one participant per session on B, sending the chat; their own sockets are drained.
    let mut senders = Vec::with_capacity(sessions);
    let interval = Duration::from_secs_f64(sessions as f64 / o.rate.max(1) as f64);
    for s in 0..sessions {
        let session = format!("fo-{run_id}-{s}");
        let url = session_url(&o.to, &session, &format!("sender{s}"), None);
        let mut ws = connect_from(&url, b, Ipv4Addr::LOCALHOST).await?;
        await_session_state(&mut ws).await?;
        let mut stop = senders_stopped.clone();
        senders.push(tokio::spawn(async move {
            let (mut tx, mut rx) = ws.split();
            // What the server acknowledged counts as sent; a refusal (an `error` for the chat's frame
            // id) is not a lost message: the sender was told.
            let answered = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let counter = answered.clone();
            let answers = tokio::spawn(async move {
                let (mut acked, mut refused) = (0u64, Vec::new());
                while let Some(Ok(msg)) = rx.next().await {
                    let Message::Text(t) = msg else { continue };
                    match frames::parse(&t).map(|f| f.message) {
                        Ok(ServerMessage::Ack(_)) => acked += 1,
                        Ok(ServerMessage::Error(e)) => refused.push(e.message),
                        _ => continue,
                    }
                    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                (acked, refused)
            });
            let mut sent = 0u64;
            let mut tick = tokio::time::interval(interval);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.wait_for(|s| *s) => break,
                }
                let id = format!("s{s}-{sent}");
                let frame = frames::chat_text(Some(id.clone()), id, format!("m{sent}"));
                if tx.send(Message::text(frame)).await.is_err() {
                    break;
                }
                sent += 1;
            }
            // Every message gets its answer (ack or error) before the close, or CATCH_UP runs out.
            let until = Instant::now() + CATCH_UP;
            while answered.load(std::sync::atomic::Ordering::Relaxed) < sent && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let unanswered = sent.saturating_sub(answered.load(std::sync::atomic::Ordering::Relaxed));
            if unanswered > 0 {
                eprintln!("sender {s}: {unanswered} of {sent} chat messages got no answer within {CATCH_UP:?}");
            }
            let _ = tx.close().await;
            let (acked, refused) = tokio::time::timeout(Duration::from_secs(10), answers)
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            if let Some(first) = refused.first() {
                eprintln!("sender {s}: {} of {sent} chat messages refused, e.g. {first}", refused.len());
            }
            (s, acked)
        }));
    }

    tokio::time::sleep(Duration::from_secs(o.before_kill_secs)).await;
    let status = std::process::Command::new("kill")
        .args(["-KILL", &o.kill_pid.to_string()])
        .status()
        .context("running kill")?;
    if !status.success() {
        bail!("kill -KILL {} failed", o.kill_pid);
    }
    let _ = killed_tx.send(Some(Instant::now()));
    tokio::time::sleep(Duration::from_secs(o.after_kill_secs)).await;

    // Stop sending, let the last messages arrive, then stop the followers.
    let _ = stop_senders.send(true);
    let mut sent_per_session: HashMap<usize, u64> = HashMap::new();
    for s in senders {
        let (session, sent) = s.await?;
        sent_per_session.insert(session, sent);
    }
    // The followers read on until they have what their session's sender sent (or CATCH_UP is over).
    let _ = stop_followers.send(Some(Arc::new(sent_per_session.clone())));
    let mut outcomes = Vec::with_capacity(followers.len());
    for f in followers {
        outcomes.push(f.await?);
    }
    report(&o, &sent_per_session, &outcomes)
}

/// Chat messages sent per session (index), known once the senders stopped.
type SentCounts = Arc<HashMap<usize, u64>>;

/// How long followers may take, after the senders stopped, to receive all they sent.
const CATCH_UP: Duration = Duration::from_secs(30);

/// One participant as joined on gateway A: session, user, socket, snapshot seq, participant id.
type Joined = (String, String, Ws, u64, String);

/// Joins every participant on A, `parallel` at a time, each with its `session_state`.
async fn join_all(
    o: &Options,
    a: std::net::SocketAddr,
    run_id: u32,
    sessions: usize,
) -> anyhow::Result<Vec<Joined>> {
    let gate = Arc::new(Semaphore::new(o.parallel.max(1)));
    let mut joins = Vec::with_capacity(o.clients);
    for i in 0..o.clients {
        let permit = gate.clone().acquire_owned().await?;
        let session = format!("fo-{run_id}-{}", i % sessions);
        let user = format!("fo{i}");
        let url = session_url(&o.from, &session, &user, None);
        let source = source_address(i, o.source_addresses);
        joins.push(tokio::spawn(async move {
            let mut ws = connect_from(&url, a, source).await?;
            let (seq, participant) = await_session_state(&mut ws).await?;
            drop(permit);
            anyhow::Ok((session, user, ws, seq, participant))
        }));
    }
    let mut participants = Vec::with_capacity(o.clients);
    for j in joins {
        participants.push(j.await?.context("joining on gateway A")?);
    }
    Ok(participants)
}

/// One participant: reads, checks seq, counts chats; on the cut, rejoins B after the last seq seen.
async fn follow(
    joined: Joined,
    session_index: usize,
    to: String,
    b: std::net::SocketAddr,
    source: Ipv4Addr,
    mut killed: watch::Receiver<Option<Instant>>,
    mut stop: watch::Receiver<Option<SentCounts>>,
) -> Outcome {
    let (session, user, ws, seq, participant) = joined;
    let mut out = Outcome::default();
    let (mut ws, mut last, mut on_b) = (ws, seq, false);
    let mut catch_up: Option<Instant> = None;
    loop {
        // Once the senders stopped, read on until this session's chat has all arrived: what was sent
        // last may still be on its way (a rejoin storm replays thousands of events), and counting it
        // lost would blame the system for the end of the run. Past CATCH_UP, what is missing is lost.
        let expected = stop
            .borrow()
            .as_ref()
            .map(|sent| sent.get(&session_index).copied().unwrap_or(0));
        let msg = match expected {
            Some(n) if out.chats >= n => break,
            Some(_) => {
                let until = *catch_up.get_or_insert_with(|| Instant::now() + CATCH_UP);
                match tokio::time::timeout_at(until.into(), ws.next()).await {
                    Ok(msg) => msg,
                    Err(_) => break,
                }
            }
            None => tokio::select! {
                msg = ws.next() => msg,
                _ = stop.wait_for(Option::is_some) => continue,
            },
        };
        let text = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                if on_b {
                    out.error = Some("cut on gateway B".into());
                    break;
                }
                // Cut by the kill: rejoin on B after the last event seen.
                let url = session_url(&to, &session, &user, Some((last, &participant)));
                let rejoined = async {
                    let mut ws = connect_from(&url, b, source).await?;
                    await_session_state(&mut ws).await?;
                    anyhow::Ok(ws)
                };
                match rejoined.await {
                    Ok(new) => {
                        let kill = killed.wait_for(|k| k.is_some()).await.ok().and_then(|k| *k);
                        out.resumed_after = kill.map(|k| k.elapsed());
                        ws = new;
                        on_b = true;
                        continue;
                    }
                    Err(e) => {
                        out.error = Some(format!("rejoin failed: {e}"));
                        break;
                    }
                }
            }
            Some(Ok(_)) => continue,
        };
        let Ok(frame) = frames::parse(&text) else {
            continue;
        };
        if let Some(s) = frame.seq {
            if s <= last {
                out.duplicates += 1;
                continue;
            }
            if s != last + 1 {
                out.gaps += 1;
            }
            last = s;
            if matches!(frame.message, ServerMessage::ChatMessage(_)) {
                out.chats += 1;
            }
        }
    }
    let _ = ws.close(None).await;
    drop(killed);
    out
}

fn report(
    o: &Options,
    sent_per_session: &HashMap<usize, u64>,
    outcomes: &[Outcome],
) -> anyhow::Result<Value> {
    let sessions = o.sessions.max(1);
    let mut h = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let (mut resumed, mut lost, mut gaps, mut dups, mut errors) = (0u64, 0u64, 0u64, 0u64, 0u64);
    for (i, out) in outcomes.iter().enumerate() {
        if let Some(d) = out.resumed_after {
            resumed += 1;
            let _ = h.record(d.as_micros().max(1) as u64);
        }
        let expected = sent_per_session.get(&(i % sessions)).copied().unwrap_or(0);
        lost += expected.saturating_sub(out.chats);
        gaps += out.gaps;
        dups += out.duplicates;
        if let Some(e) = &out.error {
            errors += 1;
            if errors <= 3 {
                eprintln!("participant {i}: {e}");
            }
        }
    }
    let sent: u64 = sent_per_session.values().sum();
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "resumed on B: {resumed} of {} participants; from the kill: p50 {:.1} ms  p90 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        outcomes.len(),
        ms(0.5),
        ms(0.9),
        ms(0.99),
        h.max() as f64 / 1000.0
    );
    println!(
        "chat sent {sent}; chat messages lost {lost}; seq gaps {gaps}; duplicates {dups}; errors {errors}"
    );
    Ok(json!({
        "scenario": "failover",
        "participants": outcomes.len(),
        "sessions": sessions,
        "resumed": resumed,
        "resume_ms": {"p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "max": h.max() as f64 / 1000.0},
        "chat_sent": sent,
        "chat_lost": lost,
        "seq_gaps": gaps,
        "duplicates": dups,
        "errors": errors,
    }))
}
