//! Redis Cluster only: a master killed with SIGKILL under 20 streaming clients, a manual `CLUSTER
//! FAILOVER` while streams are followed, and the whole cluster frozen for a few seconds. Every client
//! either gets every row exactly once, in order, or an explicit error — never a gap, a duplicate, or an
//! endless wait. The tests change the shared local cluster, so they run one at a time, and each leaves
//! it healthy again (`scripts/redis-cluster.sh up`).
//! `cargo test -p c2s-tests --test it redis_cluster:: -- --nocapture` prints the time-to-resume figures.

use std::time::Duration;

use crate::harness::*;
use serde_json::{json, Value};
use tokio::time::Instant;

/// 20 000 rows paced by the database (every 200th row sleeps 50 ms): about 5 s from the first chunk to the
/// last, in 100 chunks of 200, light enough for 20 at once on a small machine.
const QUERY: &str = "SELECT g AS n, md5(g::text) AS h FROM generate_series(1,20000) g \
     WHERE CASE WHEN g % 200 = 0 THEN pg_sleep(0.05) IS NOT NULL ELSE true END";
const ROWS: u64 = 20_000;

/// What a client's stream ended with.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// Every row, once, in order, and `query_completed`.
    Complete,
    /// An explicit error ended it (`query_error`, or an `error` naming the execution that resuming
    /// cannot get past); the rows before it were each delivered once, in order.
    ExplicitError(String),
}

struct Followed {
    outcome: Outcome,
    resumes: u32,
    /// From the fault to the first event created after it, if the stream was still running.
    first_event_after: Option<Duration>,
}

/// Follows `exec` on `client` to its end, resuming (on gateway `(i + attempt) % n`) whenever the stream is
/// cut, and checks every event: seq without gap or repeat, rows 1..n in order.
async fn follow(
    cluster: &Cluster,
    mut client: Client,
    exec: &str,
    frames: Vec<Value>,
    i: usize,
    t0: &tokio::sync::watch::Receiver<Option<(Instant, i64)>>,
) -> Followed {
    let mut last_seq = 0;
    let mut rows: Vec<Value> = Vec::new();
    let mut resumes = 0;
    let mut first_event_after = None;
    let mut pending: std::collections::VecDeque<Value> = frames.into();
    let label = format!("client {i} / {exec}");
    loop {
        let f = match pending.pop_front() {
            Some(f) => f,
            None => match client.next_frame(Duration::from_secs(45)).await {
                Received::Frame(f) => f,
                Received::Timeout => {
                    panic!("{label}: no frame for 45 s after seq {last_seq}: an endless wait")
                }
                Received::Closed { code, error } => {
                    // The gateway closed the socket: reconnect elsewhere and resume.
                    resumes += 1;
                    assert!(
                        resumes < 60,
                        "{label}: closed again and again ({code:?} {error:?})"
                    );
                    client = cluster
                        .query_client((i + resumes as usize) % cluster.gateways.len())
                        .await;
                    client.resume(exec, last_seq).await;
                    continue;
                }
            },
        };
        if is_event_of(&f, exec) {
            let seq = seq_of(&f);
            assert_eq!(
                seq,
                last_seq + 1,
                "{label}: seq must go on without gap or repeat: {}",
                short(&f)
            );
            last_seq = seq;
            if first_event_after.is_none() {
                // The first event created after the fault (server clock = this machine's).
                if let Some((t, fault_ms)) = *t0.borrow() {
                    if f["payload"]["timestamp"]
                        .as_i64()
                        .is_some_and(|ts| ts > fault_ms)
                    {
                        first_event_after = Some(t.elapsed());
                    }
                }
            }
            if ty(&f) == "data_chunk" {
                rows.extend(f["payload"]["data"].as_array().cloned().unwrap_or_default());
            }
            match ty(&f) {
                "query_completed" => {
                    assert_rows_are_1_to(&rows, ROWS, &label);
                    return Followed {
                        outcome: Outcome::Complete,
                        resumes,
                        first_event_after,
                    };
                }
                "query_error" | "query_cancelled" => {
                    check_rows_prefix(&rows, &label);
                    let what = format!("{}: {}", ty(&f), f["payload"]["error"]["message"]);
                    return Followed {
                        outcome: Outcome::ExplicitError(what),
                        resumes,
                        first_event_after,
                    };
                }
                _ => continue,
            }
        }
        if ty(&f) != "error" {
            continue; // progress of other streams, pongs…
        }
        let p = &f["payload"];
        let code = p["code"].as_str().unwrap_or_default().to_owned();
        let names_it = p["executionId"] == json!(exec);
        if names_it && code == "not_found" {
            check_rows_prefix(&rows, &label);
            return Followed {
                outcome: Outcome::ExplicitError(format!("not_found: {}", p["message"])),
                resumes,
                first_event_after,
            };
        }
        if names_it {
            assert_eq!(
                p["afterSeq"],
                json!(last_seq),
                "{label}: a cut stream names where to resume: {}",
                short(&f)
            );
        }
        // Cut (`unavailable`), or the resume itself was refused while Redis fails over: try again.
        resumes += 1;
        assert!(
            resumes < 60,
            "{label}: still cut after 60 resumes: {}",
            short(&f)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        client.resume(exec, last_seq).await;
    }
}

fn check_rows_prefix(rows: &[Value], label: &str) {
    for (k, row) in rows.iter().enumerate() {
        assert_eq!(
            row[0].as_u64(),
            Some(k as u64 + 1),
            "{label}: rows before an error are each once, in order"
        );
    }
}

/// The port of the master serving `key`'s slot, from `CLUSTER NODES` of any live node.
async fn master_port_of(key: &str) -> u16 {
    let mut con = redis_cluster_conn().await;
    let slot: i64 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query_async(&mut con)
        .await
        .expect("KEYSLOT");
    let nodes = cluster_nodes().await;
    nodes
        .iter()
        .find(|n| n.master && n.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
        .map(|n| n.port)
        .unwrap_or_else(|| panic!("no master serves slot {slot}: {nodes:?}"))
}

#[derive(Debug)]
struct ClusterNode {
    id: String,
    port: u16,
    master: bool,
    master_id: String,
    slots: Vec<(i64, i64)>,
}

async fn cluster_nodes() -> Vec<ClusterNode> {
    for port in CLUSTER_PORTS {
        let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}")) else {
            continue;
        };
        let Ok(Ok(mut con)) = tokio::time::timeout(
            Duration::from_secs(2),
            client.get_multiplexed_async_connection(),
        )
        .await
        else {
            continue;
        };
        let Ok(text) = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async::<String>(&mut con)
            .await
        else {
            continue;
        };
        return text
            .lines()
            .filter(|l| !l.contains("fail"))
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let port = f
                    .get(1)?
                    .split('@')
                    .next()?
                    .rsplit(':')
                    .next()?
                    .parse()
                    .ok()?;
                let slots = f.iter().skip(8).filter_map(|r| {
                    let (a, b) = r.split_once('-').unwrap_or((r, r));
                    Some((a.parse().ok()?, b.parse().ok()?))
                });
                Some(ClusterNode {
                    id: f[0].to_owned(),
                    port,
                    master: f[2].contains("master"),
                    master_id: f[3].to_owned(),
                    slots: slots.collect(),
                })
            })
            .collect();
    }
    panic!("no cluster node answered CLUSTER NODES")
}

fn node_pid(port: u16) -> u32 {
    let out = std::process::Command::new("bash")
        .arg(workspace_root().join("scripts/redis-cluster.sh"))
        .args(["pid", &port.to_string()])
        .output()
        .expect("redis-cluster.sh pid");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("no pid for node {port}"))
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill {sig} {pid} failed");
}

/// Starts `n` paced streams ([`QUERY`]) at once, spread over the gateways; returns the clients with the
/// frames read so far (the first chunk of each: the streams are running, far from their end).
async fn start_streams(cluster: &Cluster, n: usize) -> Vec<(Client, String, Vec<Value>)> {
    let t = Instant::now();
    let starts = (0..n).map(|i| async move {
        let mut c = cluster.query_client(i % cluster.gateways.len()).await;
        c.timeout = Duration::from_secs(60);
        let exec = c
            .execute(
                QUERY,
                Some(json!({"chunkSize": 200, "rowFormat": "arrays", "timeoutMs": 120_000})),
                Some(&format!("s-{i}")),
            )
            .await;
        let frames = c
            .recv_events_until(&exec, Some(Duration::from_secs(60)), |f| {
                ty(f) == "data_chunk" || is_terminal(f)
            })
            .await;
        assert!(
            !is_terminal(frames.last().expect("events")),
            "scenario: still streaming"
        );
        (c, exec, frames)
    });
    let out = futures_util::future::join_all(starts).await;
    println!("started {n} streams in {:?}", t.elapsed());
    out
}

/// Follows every stream to its end concurrently; prints and returns the outcomes.
async fn follow_all(
    cluster: &Cluster,
    streams: Vec<(Client, String, Vec<Value>)>,
    t0: tokio::sync::watch::Receiver<Option<(Instant, i64)>>,
) -> Vec<(String, Followed)> {
    let tasks = streams
        .into_iter()
        .enumerate()
        .map(|(i, (c, exec, frames))| {
            let t0 = t0.clone();
            async move {
                let f = follow(cluster, c, &exec, frames, i, &t0).await;
                (exec, f)
            }
        });
    futures_util::future::join_all(tasks).await
}

fn report(what: &str, results: &[(String, Followed)], on_victim: &[String]) {
    let complete = results
        .iter()
        .filter(|(_, f)| f.outcome == Outcome::Complete)
        .count();
    let mut waits: Vec<Duration> = results
        .iter()
        .filter(|(exec, _)| on_victim.is_empty() || on_victim.contains(exec))
        .filter_map(|(_, f)| f.first_event_after)
        .collect();
    waits.sort();
    let resumes: u32 = results.iter().map(|(_, f)| f.resumes).sum();
    let pct = |p: f64| {
        waits
            .get(((waits.len() as f64 - 1.0) * p).round() as usize)
            .copied()
    };
    println!(
        "FIGURE {what}: {} clients, {complete} complete with every row once, {} explicit errors, {resumes} resumes; \
         first new event after the fault on the {} streams it hit: p50 {:?}, max {:?}",
        results.len(),
        results.len() - complete,
        waits.len(),
        pct(0.5),
        waits.last()
    );
    for (exec, f) in results {
        if let Outcome::ExplicitError(e) = &f.outcome {
            println!("  {exec}: explicit error: {e}");
        }
    }
}

async fn cluster_on_redis_cluster(name: &str) -> Cluster {
    Cluster::builder(name)
        .redis(RedisMode::Cluster)
        .gateways(2)
        .workers(2)
        .worker_args(["--concurrency", "12"])
        .gateway_args([
            "--resync-interval-ms",
            "500",
            "--max-queries-per-user",
            "100",
        ])
        .start()
        .await
}

/// A session id whose keys live on the master at `port` (found by trying names).
async fn session_on(port: u16, prefix: &str) -> String {
    for i in 0..10_000 {
        let sid = format!("probe-{i}");
        if master_port_of(&format!("{prefix}:{{s:{sid}}}:seq")).await == port {
            return sid;
        }
    }
    panic!("no session id maps to the master :{port}");
}

/// Sends a chat message into session `sid` every 100 ms until one sent after the fault (`t0`) is
/// acknowledged — a write that went through on the shard again; returns the time from the fault to that
/// ack. The messages before the fault must be acknowledged too (the probe works).
async fn probe_writes(
    cluster: &Cluster,
    sid: &str,
    t0: tokio::sync::watch::Receiver<Option<(Instant, i64)>>,
) -> Duration {
    let path = format!("/ws/collaboration/{sid}?user=probe&name=Probe");
    let mut c = cluster.client(1, &path).await;
    let mut sent_after: std::collections::HashSet<String> = Default::default();
    let mut acked_before = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    for n in 0.. {
        assert!(
            Instant::now() < deadline,
            "no chat write went through within 60 s of the fault"
        );
        let id = format!("p-{n}");
        let fault = *t0.borrow();
        if fault.is_some() {
            sent_after.insert(id.clone());
        }
        c.send_json(chat_frame(Some(&id), &format!("m-{n}"), "probe"))
            .await;
        let until = Instant::now() + Duration::from_millis(100);
        while let Some(f) = c
            .try_recv_json(until.saturating_duration_since(Instant::now()))
            .await
        {
            let acked = (ty(&f) == "ack")
                .then(|| f["payload"]["id"].as_str().unwrap_or_default().to_owned());
            match (acked, fault) {
                (Some(id), Some((t, _))) if sent_after.contains(&id) => return t.elapsed(),
                (Some(_), None) => acked_before += 1,
                _ => {}
            }
        }
        if fault.is_none() {
            continue;
        }
        assert!(
            acked_before > 0,
            "scenario check: the probe's writes went through before the fault"
        );
    }
    unreachable!()
}

/// Restores the shared cluster for the next test (restarts killed nodes; they rejoin as replicas).
fn heal_cluster() {
    run_redis_cluster_up().unwrap_or_else(|e| panic!("the cluster did not heal: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_master_killed_mid_stream_under_20_clients_loses_nothing_silently() {
    // The tests share the local cluster and break it on purpose: one at a time, and no other test on it.
    let _serial = break_redis_cluster().await;
    let cluster = cluster_on_redis_cluster("redis_cluster_master_kill").await;
    let streams = start_streams(&cluster, 20).await;
    // Kill the master of the job queue's slot: it also serves about a third of the executions.
    let victim = master_port_of(&format!("{}:{{jobs}}", cluster.prefix)).await;
    let mut on_victim = Vec::new();
    for (_, exec, _) in &streams {
        if master_port_of(&format!("{}:{{e:{exec}}}", cluster.prefix)).await == victim {
            on_victim.push(exec.clone());
        }
    }
    let probe_sid = session_on(victim, &cluster.prefix).await;
    let (t0_tx, t0) = tokio::sync::watch::channel(None);
    let probe = probe_writes(&cluster, &probe_sid, t0.clone());
    let follow = follow_all(&cluster, streams, t0);
    let kill = async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        signal(node_pid(victim), "-KILL");
        let _ = t0_tx.send(Some((Instant::now(), now_ms())));
    };
    let (results, writes_back, ()) = tokio::join!(follow, probe, kill);
    println!(
        "FIGURE master :{victim} killed: the first write on its shard (a chat message) went through \
         {writes_back:?} after the kill"
    );
    report(
        &format!(
            "master :{victim} killed ({} of 20 executions on it)",
            on_victim.len()
        ),
        &results,
        &on_victim,
    );
    // After the failover, the system works: a new query on the healed cluster completes.
    heal_cluster();
    let mut c = cluster.query_client(0).await;
    let exec = c.execute("SELECT 42 AS n", None, Some("after")).await;
    let frames = c
        .collect_execution_within(&exec, Duration::from_secs(30))
        .await;
    assert_eq!(
        check_full_stream(&exec, &frames).terminal_type(),
        "query_completed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_manual_failover_while_streams_are_followed_delivers_every_row() {
    // The tests share the local cluster and break it on purpose: one at a time, and no other test on it.
    let _serial = break_redis_cluster().await;
    heal_cluster();
    let cluster = cluster_on_redis_cluster("redis_cluster_manual_failover").await;
    let streams = start_streams(&cluster, 6).await;
    let master = master_port_of(&format!("{}:{{e:{}}}", cluster.prefix, streams[0].1)).await;
    let nodes = cluster_nodes().await;
    let master_id = nodes
        .iter()
        .find(|n| n.port == master)
        .map(|n| n.id.clone())
        .expect("master listed");
    let replica = nodes
        .iter()
        .find(|n| !n.master && n.master_id == master_id)
        .map(|n| n.port)
        .unwrap_or_else(|| panic!("master {master} has no replica: {nodes:?}"));
    let (t0_tx, t0) = tokio::sync::watch::channel(None);
    let follow = follow_all(&cluster, streams, t0);
    let failover = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let client = redis::Client::open(format!("redis://127.0.0.1:{replica}")).expect("url");
        let mut con = client
            .get_multiplexed_async_connection()
            .await
            .expect("replica");
        let _: () = redis::cmd("CLUSTER")
            .arg("FAILOVER")
            .query_async(&mut con)
            .await
            .expect("CLUSTER FAILOVER");
        let _ = t0_tx.send(Some((Instant::now(), now_ms())));
        let deadline = Instant::now() + Duration::from_secs(20);
        while cluster_nodes()
            .await
            .iter()
            .find(|n| n.port == replica)
            .is_some_and(|n| !n.master)
        {
            assert!(
                Instant::now() < deadline,
                "the replica {replica} did not take over"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let (results, ()) = tokio::join!(follow, failover);
    report(
        &format!("CLUSTER FAILOVER of :{master} to :{replica}"),
        &results,
        &[],
    );
    for (exec, f) in &results {
        assert_eq!(
            f.outcome,
            Outcome::Complete,
            "{exec}: a manual failover loses nothing"
        );
    }
    heal_cluster();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_whole_cluster_frozen_for_3_s_recovers_without_restarts() {
    // The tests share the local cluster and break it on purpose: one at a time, and no other test on it.
    let _serial = break_redis_cluster().await;
    heal_cluster();
    let cluster = cluster_on_redis_cluster("redis_cluster_frozen").await;
    let streams = start_streams(&cluster, 6).await;
    let pids: Vec<u32> = CLUSTER_PORTS.iter().map(|p| node_pid(*p)).collect();
    let (t0_tx, t0) = tokio::sync::watch::channel(None);
    let follow = follow_all(&cluster, streams, t0);
    let freeze = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        for pid in &pids {
            signal(*pid, "-STOP");
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        for pid in &pids {
            signal(*pid, "-CONT");
        }
        let _ = t0_tx.send(Some((Instant::now(), now_ms())));
    };
    let (results, ()) = tokio::join!(follow, freeze);
    report("all six nodes frozen (SIGSTOP) for 3 s", &results, &[]);
    heal_cluster();
    let mut c = cluster.query_client(1).await;
    let exec = c.execute("SELECT 7 AS n", None, Some("after")).await;
    let frames = c
        .collect_execution_within(&exec, Duration::from_secs(30))
        .await;
    assert_eq!(
        check_full_stream(&exec, &frames).terminal_type(),
        "query_completed"
    );
}

/// The nodes' links to Redis (issue 19) all live on the master of the `{alive}` slot: killing it takes
/// every link away at once, until the failover and the subscribers place them again. No live node is
/// judged dead for it: a session across both gateways sees nobody leave, and chat still goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_master_of_the_nodes_links_killed_reaps_no_live_node() {
    let _serial = break_redis_cluster().await;
    let cluster = Cluster::builder("redis_cluster_links_master_kill")
        .redis(RedisMode::Cluster)
        .gateways(2)
        .workers(0)
        .start()
        .await;
    let sid = new_session_id("links-master");
    let mut alice = cluster.collab(0, &sid, "alice", "Alice").await;
    let mut bob = cluster.collab(1, &sid, "bob", "Bob").await;
    // Past the presence TTL: the nodes judge each other's links from now on.
    bob.settle(Duration::from_millis(2500)).await;
    let victim = master_port_of(&format!("{}:{{alive}}:x", cluster.prefix)).await;
    signal(node_pid(victim), "-KILL");
    let killed = Instant::now();
    // The failover, the links placed again, and then several TTLs.
    bob.settle(Duration::from_secs(8)).await;
    alice.settle(Duration::from_millis(200)).await;
    for m in [&alice, &bob] {
        let lefts = m.events_of("participant_left");
        assert!(
            lefts.is_empty(),
            "nobody left after the links' master was killed: {}",
            describe(&m.events)
        );
    }
    // Chat across the nodes still works once the cluster has failed over.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut n = 0;
    loop {
        n += 1;
        let msg_id = format!("after-{n}");
        alice.chat(Some(&msg_id), &msg_id, "still here").await;
        let reply = alice.answer(&msg_id, Duration::from_secs(5)).await;
        if ty(&reply) == "ack" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "chat never went through: {}",
            short(&reply)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "FIGURE links' master :{victim} killed: 0 participant_left; chat through {:?} after the kill",
        killed.elapsed()
    );
    heal_cluster();
}
