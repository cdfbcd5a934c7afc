//! Failure detection in seconds (issue 19), with the default timings: a busy worker killed -9, a gateway
//! killed -9 with a session across nodes, a gateway stopped cleanly, a rejoin taking over its ghost, and
//! Redis (one server, or a whole private Redis Cluster) killed and restarted. Each detection time is asserted under a generous bound (the small machine
//! runs other suites beside); the measured figures are printed, and the README's failure table has them.
//!
//! The tests of this file run one at a time (they measure timings).

use std::collections::BTreeSet;
use std::time::Duration;

use crate::harness::raw::*;
use crate::harness::*;
use serde_json::{json, Value};
use tokio::time::Instant;

/// Wide rows, one every 40 ms for about 10 s: the surviving worker is busy encoding and publishing
/// the whole time the other one is being declared dead.
const STREAMING_QUERY: &str = "SELECT g AS n, repeat(md5(g::text), 256) AS pad \
     FROM generate_series(1,250) g WHERE pg_sleep(0.04) IS NOT NULL";

/// Reads `exec`'s events until `query_started`; returns the worker that runs it.
async fn started_on(c: &mut Client, exec: &str) -> String {
    let frames = c
        .recv_events_until(exec, Some(Duration::from_secs(20)), |f| {
            ty(f) == "query_started" || is_terminal(f)
        })
        .await;
    let started = frames.last().expect("non-empty");
    assert_eq!(ty(started), "query_started", "{}", describe(&frames));
    started["payload"]["workerId"]
        .as_str()
        .unwrap_or_else(|| panic!("query_started.workerId: {}", short(started)))
        .to_owned()
}

// ---------------------------------------------------------------------------------------------------------
// 1. A busy worker killed -9
// ---------------------------------------------------------------------------------------------------------

both_redis_modes!(
    a_killed_busy_worker_is_noticed_within_seconds,
    a_killed_busy_worker_is_noticed_within_seconds_on_redis_cluster,
    a_killed_busy_worker_is_noticed_within_seconds_body
);

async fn a_killed_busy_worker_is_noticed_within_seconds_body(mode: RedisMode) {
    let _serial = exclusive().await;
    let mut cluster = Cluster::builder("detect_worker_kill")
        .redis(mode)
        .gateways(1)
        .workers(2)
        // One query each: the sleeping one on one worker, the streaming one on the other.
        .worker_args(["--concurrency", "1"])
        .start()
        .await;
    let mut c = cluster.query_client(0).await;
    let sleeping = c.execute("SELECT pg_sleep(60)", None, Some("sleep")).await;
    let victim_id = started_on(&mut c, &sleeping).await;
    let mut s = cluster.query_client(0).await;
    let streaming = s
        .execute(
            STREAMING_QUERY,
            Some(json!({"chunkSize": 5, "rowFormat": "arrays"})),
            Some("stream"),
        )
        .await;
    let survivor_id = started_on(&mut s, &streaming).await;
    assert_ne!(
        victim_id, survivor_id,
        "scenario check: one query per worker"
    );
    let victim = cluster
        .workers
        .iter()
        .position(|w| w.name == victim_id)
        .unwrap_or_else(|| panic!("query_started names {victim_id:?}, not one of ours"));
    // A few lease renewals pass first: a live worker's leases never expire.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let killed = Instant::now();
    cluster.workers[victim].kill().await;
    let rest = c
        .collect_execution_within(&sleeping, Duration::from_secs(20))
        .await;
    let lost_after = killed.elapsed();
    let terminal = rest.last().expect("a terminal event");
    assert_eq!(ty(terminal), "query_error", "{}", describe(&rest));
    assert_eq!(
        terminal["payload"]["error"]["code"],
        "worker_lost",
        "{}",
        short(terminal)
    );
    // Lease 3 s, looked at every 0.5 s: about 3.5 s; generous for a loaded machine.
    assert!(
        lost_after < Duration::from_secs(8),
        "worker_lost {lost_after:?} after the kill of a busy worker"
    );

    // The busy survivor was never declared dead: its stream completes.
    let frames = s
        .collect_execution_within(&streaming, Duration::from_secs(40))
        .await;
    let done = frames.last().expect("a terminal event");
    assert_eq!(
        ty(done),
        "query_completed",
        "the streaming query on the live worker: {}",
        short(done)
    );
    eprintln!(
        "detection ({mode:?}): query_error worker_lost {lost_after:?} after kill -9 of busy worker \
         {victim_id}; the streaming query on {survivor_id} completed"
    );
}

// ---------------------------------------------------------------------------------------------------------
// 2. A gateway killed -9 with a session across nodes
// ---------------------------------------------------------------------------------------------------------

/// How many `participant_left` of `participant` `m` has seen.
fn lefts_of(m: &Collab, participant: &str) -> Vec<Value> {
    m.events_of("participant_left")
        .into_iter()
        .filter(|f| f["payload"]["participantId"] == json!(participant))
        .cloned()
        .collect()
}

/// `m` sees `other` (who joined after it) join.
async fn expect_joined(m: &mut Collab, other: &Collab) {
    let id = other.participant_id.clone();
    m.wait_event("participant_joined", Duration::from_secs(10), |f| {
        ty(f) == "participant_joined" && f["payload"]["participant"]["id"] == json!(id)
    })
    .await;
}

both_redis_modes!(
    a_killed_gateways_participants_leave_within_seconds,
    a_killed_gateways_participants_leave_within_seconds_on_redis_cluster,
    a_killed_gateways_participants_leave_within_seconds_body
);

async fn a_killed_gateways_participants_leave_within_seconds_body(mode: RedisMode) {
    let _serial = exclusive().await;
    let mut cluster = Cluster::builder("detect_gateway_kill")
        .redis(mode)
        .gateways(2)
        .workers(0)
        .start()
        .await;
    let sid = new_session_id("detect-gw");
    let mut alice = cluster.collab(0, &sid, "alice", "Alice").await;
    let mut bob = cluster.collab(1, &sid, "bob", "Bob").await;
    expect_joined(&mut alice, &bob).await;
    // Several beats pass first: a live node is never reaped.
    bob.settle(Duration::from_millis(1500)).await;
    assert!(lefts_of(&bob, &alice.participant_id).is_empty());

    let victim = alice.participant_id.clone();
    let killed = Instant::now();
    cluster.gateways[0].kill().await;
    drop(alice);
    bob.wait_for(
        "participant_left of the killed node's participant",
        Duration::from_secs(10),
        |m| !lefts_of(m, &victim).is_empty(),
    )
    .await;
    let left_after = killed.elapsed();
    let left = lefts_of(&bob, &victim);
    assert_eq!(
        left[0]["payload"]["reason"],
        "node_lost",
        "{}",
        short(&left[0])
    );
    // TTL 2 s, looked at every 0.25 s: about 2.3 s; generous for a loaded machine.
    assert!(
        left_after < Duration::from_secs(6),
        "participant_left (node_lost) {left_after:?} after the kill"
    );
    bob.settle(Duration::from_secs(2)).await;
    assert_eq!(
        lefts_of(&bob, &victim).len(),
        1,
        "exactly one participant_left: {}",
        describe(&bob.events)
    );
    bob.assert_no_errors();
    eprintln!("detection ({mode:?}): participant_left (node_lost) {left_after:?} after kill -9 of a gateway");
}

/// A gateway stopped with SIGTERM says so: its participants leave (`closed`) and it leaves the node set
/// before it exits, so nobody waits for its presence to expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_stopped_cleanly_leaves_the_node_set_at_once() {
    let _serial = exclusive().await;
    let mut cluster = Cluster::builder("detect_gateway_stop")
        .gateways(2)
        .workers(0)
        .start()
        .await;
    let sid = new_session_id("detect-stop");
    let mut alice = cluster.collab(0, &sid, "alice", "Alice").await;
    let mut bob = cluster.collab(1, &sid, "bob", "Bob").await;
    expect_joined(&mut alice, &bob).await;
    let nodes = format!("{}:nodes", cluster.prefix);
    let score = redis::cmd("ZSCORE")
        .arg(&nodes)
        .arg(cluster.gateway_name(0))
        .clone();
    assert_ne!(
        cluster.redis_query(&score).await.expect("ZSCORE"),
        redis::Value::Nil,
        "scenario check: the node beats"
    );

    let victim = alice.participant_id.clone();
    let stopped = Instant::now();
    cluster.gateways[0].terminate();
    bob.wait_for(
        "participant_left of the stopped node's participant",
        Duration::from_secs(10),
        |m| !lefts_of(m, &alice.participant_id).is_empty(),
    )
    .await;
    let left_after = stopped.elapsed();
    let left = lefts_of(&bob, &alice.participant_id);
    assert_eq!(
        left[0]["payload"]["reason"],
        "closed",
        "{}",
        short(&left[0])
    );
    drop(alice);
    assert!(
        cluster.gateways[0]
            .wait_exit(Duration::from_secs(20))
            .await
            .is_some(),
        "the gateway exits after SIGTERM"
    );
    assert_eq!(
        cluster.redis_query(&score).await.expect("ZSCORE"),
        redis::Value::Nil,
        "a cleanly stopped node left the node set"
    );
    bob.settle(Duration::from_secs(3)).await;
    assert_eq!(
        lefts_of(&bob, &victim).len(),
        1,
        "exactly one participant_left: {}",
        describe(&bob.events)
    );
    eprintln!("detection: participant_left (closed) {left_after:?} after SIGTERM of a gateway");
}

// ---------------------------------------------------------------------------------------------------------
// 3. A rejoin takes over its ghost
// ---------------------------------------------------------------------------------------------------------

both_redis_modes!(
    a_rejoin_with_its_participant_id_takes_over_its_ghost_at_once,
    a_rejoin_with_its_participant_id_takes_over_its_ghost_at_once_on_redis_cluster,
    a_rejoin_with_its_participant_id_takes_over_its_ghost_at_once_body
);

async fn a_rejoin_with_its_participant_id_takes_over_its_ghost_at_once_body(mode: RedisMode) {
    a_rejoin_takes_over_its_ghost_at_once(mode, Rejoin::WithParticipantId).await
}

both_redis_modes!(
    a_rejoin_with_after_seq_only_takes_over_its_ghost_at_once,
    a_rejoin_with_after_seq_only_takes_over_its_ghost_at_once_on_redis_cluster,
    a_rejoin_with_after_seq_only_takes_over_its_ghost_at_once_body
);

async fn a_rejoin_with_after_seq_only_takes_over_its_ghost_at_once_body(mode: RedisMode) {
    a_rejoin_takes_over_its_ghost_at_once(mode, Rejoin::AfterSeqOnly).await
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Rejoin {
    /// `afterSeq` and `participantId` (what the SDK sends).
    WithParticipantId,
    /// `afterSeq` only: the ghost is known by its node's link to Redis being gone.
    AfterSeqOnly,
}

/// With a cap of 2, Alice (node A) and Bob (node B) fill the session; A is killed and Alice rejoins on B
/// at once: she is let in (her ghost does not count), Bob gets one `participant_left` (`replaced`) then
/// her `participant_joined`, and no `node_lost` later. Another tab of Alice's on live node B stays.
async fn a_rejoin_takes_over_its_ghost_at_once(mode: RedisMode, how: Rejoin) {
    let _serial = exclusive().await;
    let mut cluster = Cluster::builder("detect_ghost_takeover")
        .redis(mode)
        .gateways(2)
        .workers(0)
        .gateway_args(["--max-participants", "3"])
        .start()
        .await;
    let sid = new_session_id("detect-ghost");
    let mut alice = cluster.collab(0, &sid, "alice", "Alice").await;
    let mut other_tab = cluster.collab(1, &sid, "alice", "Alice").await;
    let mut bob = cluster.collab(1, &sid, "bob", "Bob").await;
    expect_joined(&mut alice, &bob).await;
    // The nodes judge links only once their own has been up for the presence TTL (2 s).
    alice.settle(Duration::from_millis(2500)).await;
    let (ghost, after) = (alice.participant_id.clone(), alice.last_seq);

    let killed = Instant::now();
    cluster.gateways[0].kill().await;
    drop(alice);
    let mut path = collab_path(&sid, "alice", "Alice", Some(after));
    if how == Rejoin::WithParticipantId {
        path = format!("{path}&participantId={}", url_encode(&ghost));
    }
    let client = cluster.client(1, &path).await;
    let node = cluster.gateway_name(1);
    let mut back = Collab::from_client(client, &sid, "alice", "Alice", &node, Some(after)).await;
    let rejoined_after = killed.elapsed();
    let listed: Vec<&str> = back.state["payload"]["participants"]
        .as_array()
        .expect("participants")
        .iter()
        .filter_map(|p| p["id"].as_str())
        .collect();
    assert!(
        !listed.contains(&ghost.as_str()),
        "the ghost is gone from the rejoiner's snapshot: {listed:?}"
    );
    assert!(
        listed.contains(&other_tab.participant_id.as_str()),
        "the same user's tab on a live node stays: {listed:?}"
    );
    let new_id = back.participant_id.clone();
    expect_joined(&mut bob, &back).await;
    let left = lefts_of(&bob, &ghost);
    assert_eq!(left.len(), 1, "{}", describe(&bob.events));
    assert_eq!(
        left[0]["payload"]["reason"],
        "replaced",
        "{}",
        short(&left[0])
    );
    let joined_seq = bob
        .events_of("participant_joined")
        .iter()
        .find(|f| f["payload"]["participant"]["id"] == json!(new_id))
        .map(|f| seq_of(f))
        .expect("waited for");
    assert!(
        seq_of(&left[0]) < joined_seq,
        "the ghost leaves before the rejoiner joins"
    );
    // Past the presence TTL: the dead node's reaper finds nobody left to announce.
    bob.settle(Duration::from_secs(4)).await;
    back.settle(Duration::from_millis(100)).await;
    other_tab.settle(Duration::from_millis(100)).await;
    assert_eq!(lefts_of(&bob, &ghost).len(), 1, "{}", describe(&bob.events));
    assert!(lefts_of(&bob, &new_id).is_empty());
    assert!(lefts_of(&bob, &other_tab.participant_id).is_empty());
    bob.assert_no_errors();
    back.assert_no_errors();
    eprintln!(
        "detection ({mode:?}): rejoined ({how:?}) {rejoined_after:?} after kill -9 of its \
         gateway; one participant_left (replaced), no node_lost"
    );
}

/// A killed node carrying many participants (3 sessions of 100, the cap's half) is reaped in one step
/// per session: each peer gets every one of them as `participant_left (node_lost)` exactly once,
/// within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_gateway_with_hundreds_of_participants_is_reaped_within_seconds() {
    const SESSIONS: usize = 3;
    const PER_SESSION: usize = 100;
    let _serial = exclusive().await;
    let mut cluster = Cluster::builder("detect_mass_reap")
        .gateways(2)
        .workers(0)
        .start()
        .await;
    let mut ghosts = Vec::new();
    let mut watchers = Vec::new();
    for s in 0..SESSIONS {
        let sid = new_session_id(&format!("detect-mass{s}"));
        watchers.push(cluster.collab(1, &sid, "watcher", "Watcher").await);
        for p in 0..PER_SESSION {
            let user = format!("u{p}");
            let ghost = cluster.collab(0, &sid, &user, &user).await;
            ghosts.push((s, ghost.participant_id.clone(), ghost));
        }
    }
    // Several beats and reaper rounds pass: none of the live ones leaves.
    for w in &mut watchers {
        w.settle(Duration::from_millis(700)).await;
    }
    let killed = Instant::now();
    cluster.gateways[0].kill().await;
    let ghosts: Vec<(usize, String)> = ghosts.into_iter().map(|(s, id, _)| (s, id)).collect();
    let mut last_left = Duration::ZERO;
    for (s, w) in watchers.iter_mut().enumerate() {
        let expected: BTreeSet<&str> = ghosts
            .iter()
            .filter(|(gs, _)| *gs == s)
            .map(|(_, id)| id.as_str())
            .collect();
        w.wait_for(
            "every ghost's participant_left",
            Duration::from_secs(15),
            |m| m.events_of("participant_left").len() >= PER_SESSION,
        )
        .await;
        last_left = last_left.max(killed.elapsed());
        w.settle(Duration::from_millis(500)).await;
        let lefts = w.events_of("participant_left");
        let ids: Vec<&str> = lefts
            .iter()
            .filter_map(|f| f["payload"]["participantId"].as_str())
            .collect();
        assert_eq!(ids.len(), PER_SESSION, "each ghost leaves exactly once");
        assert_eq!(ids.iter().copied().collect::<BTreeSet<_>>(), expected);
        let reasons: BTreeSet<String> = lefts
            .iter()
            .map(|f| f["payload"]["reason"].to_string())
            .collect();
        assert_eq!(reasons, BTreeSet::from(["\"node_lost\"".to_owned()]));
        w.assert_no_errors();
    }
    // The link goes with the process: about the grace (0.5 s) plus a reaper round.
    assert!(
        last_left < Duration::from_secs(8),
        "{last_left:?} until the last participant_left"
    );
    eprintln!(
        "detection: {} participants of a killed gateway left at their peers {last_left:?} after the kill",
        SESSIONS * PER_SESSION
    );
}

// ---------------------------------------------------------------------------------------------------------
// 4. Redis killed and restarted
// ---------------------------------------------------------------------------------------------------------

/// Sends `SELECT 1` until one completes; returns when it did. Refusals (`unavailable`) are retried.
async fn first_query_completes(c: &mut Client, within: Duration) -> usize {
    let deadline = Instant::now() + within;
    for attempt in 1.. {
        assert!(
            Instant::now() < deadline,
            "no query completed within {within:?} of Redis coming back ({attempt} attempts)"
        );
        let id = format!("after-{attempt}");
        c.send_json(execute_query_frame("SELECT 1 AS one", None, Some(&id)))
            .await;
        let answer = loop {
            match c.next_frame(Duration::from_secs(10)).await {
                Received::Frame(f) => {
                    if (ty(&f) == "ack" && f["payload"]["id"] == json!(id))
                        || (ty(&f) == "error" && f["payload"]["ref"] == json!(id))
                    {
                        break Some(f);
                    }
                }
                Received::Closed { code, error } => {
                    panic!("the socket closed ({code:?}, {error:?}) around a Redis restart")
                }
                Received::Timeout => break None,
            }
        };
        let Some(answer) = answer else { continue };
        if ty(&answer) == "error" {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let exec = exec_of(&answer)
            .expect("ack names its execution")
            .to_owned();
        let frames = c
            .collect_execution_within(&exec, deadline.saturating_duration_since(Instant::now()))
            .await;
        if frames.last().is_some_and(|f| ty(f) == "query_completed") {
            return attempt;
        }
    }
    unreachable!()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_redis_serves_the_next_query_within_seconds() {
    let _serial = exclusive().await;
    let mut redis = RedisServer::start(
        &target_dir()
            .join("test-logs")
            .join("detect_redis_restart-redis"),
    )
    .await;
    let cluster = Cluster::builder("detect_redis_restart")
        .gateways(1)
        .workers(1)
        .start_with_redis_url(&redis.url())
        .await;
    let mut c = cluster.query_client(0).await;
    first_query_completes(&mut c, Duration::from_secs(30)).await;

    redis.kill().await;
    // Long enough for every connection to notice and back off to its cap.
    tokio::time::sleep(Duration::from_secs(5)).await;
    redis.restart().await;
    let up = Instant::now();
    let attempts = first_query_completes(&mut c, Duration::from_secs(20)).await;
    let served_after = up.elapsed();
    assert!(
        served_after < Duration::from_secs(6),
        "the first query after Redis came back completed {served_after:?} after the restart"
    );
    eprintln!(
        "detection: first query completed {served_after:?} after Redis restarted ({attempts} attempts)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_redis_cluster_serves_the_next_query_within_seconds() {
    let _serial = exclusive().await;
    let log_dir = target_dir()
        .join("test-logs")
        .join("detect_redis_cluster_restart-redis");
    let _ = std::fs::remove_dir_all(&log_dir);
    let mut redis = RedisClusterServers::start(&log_dir).await;
    // Three masters without replicas: nothing to WAIT for.
    let cluster_args = ["--redis-cluster", "--redis-wait-replicas", "0"];
    let cluster = Cluster::builder("detect_redis_cluster_restart")
        .gateways(1)
        .workers(1)
        .gateway_args(cluster_args)
        .worker_args(cluster_args)
        .start_with_redis_url(&redis.url())
        .await;
    let mut c = cluster.query_client(0).await;
    first_query_completes(&mut c, Duration::from_secs(30)).await;

    redis.kill_all().await;
    // Long enough for every connection to notice and back off to its cap.
    tokio::time::sleep(Duration::from_secs(5)).await;
    redis.restart_all().await;
    let up = Instant::now();
    // The cluster serves nothing until its nodes agree again (`cluster_state:ok`); our part is the rest.
    redis.wait_ok(Duration::from_secs(20)).await;
    let cluster_ok = up.elapsed();
    let attempts = first_query_completes(&mut c, Duration::from_secs(30)).await;
    let served_after = up.elapsed();
    assert!(
        served_after < Duration::from_secs(10),
        "the first query after the Redis Cluster came back completed {served_after:?} after the restart"
    );
    eprintln!(
        "detection: first query completed {served_after:?} after the whole Redis Cluster restarted \
         ({cluster_ok:?} until cluster_state:ok, {:?} after it; {attempts} attempts)",
        served_after.saturating_sub(cluster_ok)
    );
}
