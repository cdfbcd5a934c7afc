//! Collaboration sessions (`/ws/collaboration/{sessionId}`) across several gateway processes: one session
//! sequence seen identically by every participant on every node, optimistic query updates, presence
//! (including a node killed with SIGKILL), shared executions, cursor coalescing, resume with `afterSeq`,
//! limits, and the embedded (in-process bus) mode.
//!
//! Every received frame is validated against `/schema`, and every session event's `seq` is checked to
//! continue the session's sequence without a gap (see `Collab` in harness/collab.rs).

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use crate::harness::*;
use serde_json::{json, Value};
use tokio::time::Instant;

/// Wait for one expected session event / reply.
const T: Duration = Duration::from_secs(15);

/// Waits until `observer` sees `joiner`'s `participant_joined`, and checks it: the participant as the
/// joiner was told in its own `session_state`, at seq == the joiner's `snapshotSeq`.
async fn expect_joined(observer: &mut Collab, joiner: &Collab) {
    let pid = joiner.participant_id.clone();
    let f = observer
        .wait_event(&format!("participant_joined of {pid}"), T, |f| {
            ty(f) == "participant_joined" && f["payload"]["participant"]["id"] == json!(pid)
        })
        .await;
    let mine = joiner.state["payload"]["participants"]
        .as_array()
        .expect("checked on join")
        .iter()
        .find(|p| p["id"] == json!(pid))
        .expect("checked on join")
        .clone();
    assert_eq!(
        f["payload"]["participant"],
        mine,
        "{}: participant_joined must describe the participant as its session_state does",
        observer.label()
    );
    assert_eq!(
        seq_of(&f),
        joiner.snapshot_seq,
        "{}: the joiner's participant_joined is at its snapshotSeq: {}",
        observer.label(),
        short(&f)
    );
    assert!(
        f["payload"]["timestamp"]
            .as_i64()
            .is_some_and(|t| t > 1_600_000_000_000),
        "{}",
        short(&f)
    );
}

/// Waits until `observer` sees `participant_left` of `pid`; checks the reason.
async fn expect_left(observer: &mut Collab, pid: &str, reason: &str, within: Duration) -> Value {
    let f = observer
        .wait_event(&format!("participant_left of {pid}"), within, |f| {
            ty(f) == "participant_left" && f["payload"]["participantId"] == json!(pid)
        })
        .await;
    assert_eq!(
        f["payload"]["reason"],
        json!(reason),
        "{}: participant_left of {pid}: {}",
        observer.label(),
        short(&f)
    );
    f
}

/// The session events of `m` with seq in `range`.
fn events_in(m: &Collab, range: std::ops::RangeInclusive<u64>) -> Vec<Value> {
    m.events
        .iter()
        .filter(|f| range.contains(&seq_of(f)))
        .cloned()
        .collect()
}

/// Asserts two participants received the very same session events over the seq range both saw.
fn assert_same_session_events(a: &Collab, b: &Collab) {
    let from = a.start_seq.max(b.start_seq) + 1;
    let to = a.last_seq.min(b.last_seq);
    assert_eq!(
        a.last_seq,
        b.last_seq,
        "{} and {} end at different session seqs: {} vs {}",
        a.label(),
        b.label(),
        describe(&a.events[a.events.len().saturating_sub(10)..]),
        describe(&b.events[b.events.len().saturating_sub(10)..])
    );
    assert_same_frames(
        &format!("session events of {} vs {}", a.label(), b.label()),
        &events_in(a, from..=to),
        &events_in(b, from..=to),
    );
}

fn chat_ids(m: &Collab) -> Vec<String> {
    m.events_of("chat_message")
        .iter()
        .map(|f| {
            f["payload"]["message"]["id"]
                .as_str()
                .unwrap_or_else(|| panic!("chat_message without message.id: {}", short(f)))
                .to_owned()
        })
        .collect()
}

fn position_in_log(m: &Collab, pred: impl Fn(&Value) -> bool) -> Option<usize> {
    m.log.iter().position(pred)
}

// ---------------------------------------------------------------------------------------------------------
// 1. Chat burst from three nodes
// ---------------------------------------------------------------------------------------------------------

both_redis_modes!(
    chat_burst_from_three_nodes_is_delivered_once_in_one_order,
    chat_burst_from_three_nodes_is_delivered_once_in_one_order_on_redis_cluster,
    chat_burst_from_three_nodes_is_delivered_once_in_one_order_body
);

async fn chat_burst_from_three_nodes_is_delivered_once_in_one_order_body(mode: RedisMode) {
    let cluster = Cluster::builder("collab_chat_burst")
        .redis(mode)
        .gateways(3)
        .workers(0)
        .start()
        .await;
    let sid = new_session_id("burst");
    let mut a = cluster.collab(0, &sid, "alice", "Alice A.").await;
    let mut b = cluster.collab(1, &sid, "bob", "Bob").await;
    expect_joined(&mut a, &b).await;
    let c = cluster.collab(2, &sid, "carol", "Carol").await;
    expect_joined(&mut a, &c).await;
    expect_joined(&mut b, &c).await;
    let listed: BTreeSet<String> = c.state["payload"]["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_owned())
        .collect();
    let all: BTreeSet<String> = [&a, &b, &c]
        .iter()
        .map(|m| m.participant_id.clone())
        .collect();
    assert_eq!(listed, all, "the third joiner sees all three participants");
    let base = c.snapshot_seq;

    // The burst: three tasks, each sending its share back to back, all at once.
    let plan = [("a", 167usize), ("b", 167), ("c", 166)];
    let mut members = vec![a, b, c];
    let mut tasks = Vec::new();
    for (mut m, (tag, n)) in members.drain(..).zip(plan) {
        tasks.push(tokio::spawn(async move {
            let frames: Vec<Value> = (0..n)
                .map(|i| {
                    chat_frame(
                        Some(&format!("f{tag}-{i}")),
                        &format!("{tag}-{i}"),
                        &format!("message {i} from {tag}"),
                    )
                })
                .collect();
            let took = m.client.send_all_draining(&frames, Duration::ZERO).await;
            (m, took)
        }));
    }
    for t in tasks {
        let (m, took) = tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("a sender task did not finish within 60 s")
            .expect("a sender task panicked");
        eprintln!("{}: sent its share in {took:?}", m.label());
        members.push(m);
    }

    let total: usize = plan.iter().map(|p| p.1).sum();
    assert_eq!(total, 500);
    let pids: HashMap<&str, String> = plan
        .iter()
        .zip(&members)
        .map(|((tag, _), m)| (*tag, m.participant_id.clone()))
        .collect();
    let names: HashMap<&str, &str> = [("a", "Alice A."), ("b", "Bob"), ("c", "Carol")].into();
    let expected_ids: BTreeSet<String> = plan
        .iter()
        .flat_map(|(tag, n)| (0..*n).map(move |i| format!("{tag}-{i}")))
        .collect();

    for (m, (_, n)) in members.iter_mut().zip(plan) {
        m.wait_for(
            "all 500 chat messages and own acks",
            Duration::from_secs(45),
            |m| {
                m.events_of("chat_message").len() >= total
                    && m.replies.iter().filter(|f| ty(f) == "ack").count() >= n
            },
        )
        .await;
    }
    for m in members.iter_mut() {
        m.settle(Duration::from_millis(500)).await;
    }

    for (m, (tag, n)) in members.iter().zip(plan) {
        m.assert_no_errors();
        let acks: Vec<&Value> = m.replies.iter().filter(|f| ty(f) == "ack").collect();
        assert_eq!(acks.len(), n, "{}: one ack per chat frame", m.label());
        let acked: BTreeSet<String> = acks
            .iter()
            .map(|f| f["payload"]["id"].as_str().unwrap_or_default().to_owned())
            .collect();
        let sent: BTreeSet<String> = (0..n).map(|i| format!("f{tag}-{i}")).collect();
        assert_eq!(acked, sent, "{}: every chat frame acked once", m.label());
        assert!(
            acks.iter()
                .all(|f| f["payload"].get("duplicate").is_none_or(|d| d == false)),
            "{}: no first send is a duplicate",
            m.label()
        );

        let ids = chat_ids(m);
        assert_eq!(
            ids.len(),
            total,
            "{}: exactly 500 chat_message events",
            m.label()
        );
        let unique: BTreeSet<String> = ids.iter().cloned().collect();
        assert_eq!(
            unique.len(),
            total,
            "{}: no chat message delivered twice",
            m.label()
        );
        assert_eq!(unique, expected_ids, "{}: no chat message lost", m.label());
        // Each sender's messages keep the order it sent them in.
        for (t, n) in plan {
            let mine: Vec<usize> = ids
                .iter()
                .filter_map(|id| id.strip_prefix(&format!("{t}-")))
                .map(|i| i.parse().unwrap())
                .collect();
            assert_eq!(
                mine,
                (0..n).collect::<Vec<_>>(),
                "{}: the messages of {t} arrive in the order sent",
                m.label()
            );
        }
        // Server-stamped author, content as sent, seq right after the joins.
        for (k, f) in m.events_of("chat_message").iter().enumerate() {
            let msg = &f["payload"]["message"];
            let id = msg["id"].as_str().unwrap();
            let (t, i) = id.split_once('-').unwrap();
            assert_eq!(
                msg["authorId"],
                json!(pids[t]),
                "{}: {}",
                m.label(),
                short(f)
            );
            assert_eq!(
                msg["authorName"],
                json!(names[t]),
                "{}: {}",
                m.label(),
                short(f)
            );
            assert_eq!(
                msg["content"],
                json!(format!("message {i} from {t}")),
                "{}: {}",
                m.label(),
                short(f)
            );
            assert_eq!(
                seq_of(f),
                base + 1 + k as u64,
                "{}: {}",
                m.label(),
                short(f)
            );
        }
        assert_eq!(m.last_seq, base + total as u64, "{}", m.label());
    }
    // The identical order everywhere (and the identical frames).
    let orders: Vec<Vec<String>> = members.iter().map(chat_ids).collect();
    assert_eq!(
        orders[0], orders[1],
        "alice and bob saw different chat orders"
    );
    assert_eq!(
        orders[0], orders[2],
        "alice and carol saw different chat orders"
    );
    assert_same_session_events(&members[0], &members[1]);
    assert_same_session_events(&members[0], &members[2]);
}

// ---------------------------------------------------------------------------------------------------------
// 2. Concurrent update_query with the same baseVersion
// ---------------------------------------------------------------------------------------------------------

both_redis_modes!(
    concurrent_query_updates_one_wins_the_other_conflicts,
    concurrent_query_updates_one_wins_the_other_conflicts_on_redis_cluster,
    concurrent_query_updates_one_wins_the_other_conflicts_body
);

async fn concurrent_query_updates_one_wins_the_other_conflicts_body(mode: RedisMode) {
    let cluster = Cluster::builder("collab_conflict")
        .redis(mode)
        .gateways(3)
        .workers(0)
        .start()
        .await;
    let sid = new_session_id("conflict");
    let mut a = cluster.collab(0, &sid, "alice", "Alice").await;
    let mut b = cluster.collab(1, &sid, "bob", "Bob").await;
    expect_joined(&mut a, &b).await;
    let mut o = cluster.collab(2, &sid, "olga", "Olga").await;
    expect_joined(&mut a, &o).await;
    expect_joined(&mut b, &o).await;

    let rounds = 6u64;
    let mut version = 0u64;
    let mut wins = [0u32; 2];
    for r in 0..rounds {
        let (fa, fb) = (format!("ua-{r}"), format!("ub-{r}"));
        let (qa, qb) = (format!("SELECT 'alice', {r}"), format!("SELECT 'bob', {r}"));
        tokio::join!(
            a.update_query(Some(&fa), &qa, Some(version)),
            b.update_query(Some(&fb), &qb, Some(version))
        );
        let (ra, rb) = tokio::join!(a.answer(&fa, T), b.answer(&fb, T));
        let (winner_text, winner_pid, loser_reply, loser_ref) = match (ty(&ra), ty(&rb)) {
            ("ack", "error") => {
                wins[0] += 1;
                (qa.clone(), a.participant_id.clone(), rb.clone(), fb.clone())
            }
            ("error", "ack") => {
                wins[1] += 1;
                (qb.clone(), b.participant_id.clone(), ra.clone(), fa.clone())
            }
            _ => panic!(
                "round {r} (both at baseVersion {version}): exactly one update must win; alice got {}, bob got {}",
                short(&ra),
                short(&rb)
            ),
        };
        let e = &loser_reply["payload"];
        assert_eq!(e["code"], "conflict", "round {r}: {}", short(&loser_reply));
        assert_eq!(
            e["ref"],
            json!(loser_ref),
            "round {r}: {}",
            short(&loser_reply)
        );
        assert_eq!(
            e["currentVersion"],
            json!(version + 1),
            "round {r}: the conflict names the winner's version: {}",
            short(&loser_reply)
        );
        assert_eq!(
            e["currentQuery"],
            json!(winner_text),
            "round {r}: the conflict carries the winner's text: {}",
            short(&loser_reply)
        );
        for m in [&mut a, &mut b, &mut o] {
            let f = m
                .wait_event(&format!("query_updated of round {r}"), T, |f| {
                    ty(f) == "query_updated"
                })
                .await;
            let p = &f["payload"];
            assert_eq!(
                (&p["query"], &p["version"], &p["authorId"]),
                (&json!(winner_text), &json!(version + 1), &json!(winner_pid)),
                "{}: round {r}: the one query_updated is the winner's: {}",
                m.label(),
                short(&f)
            );
        }
        version += 1;
    }
    eprintln!("wins: alice {}, bob {}", wins[0], wins[1]);

    // A stale baseVersion alone: conflict, nothing broadcast.
    o.update_query(Some("stale"), "SELECT 'stale'", Some(version - 1))
        .await;
    let e = o.expect_error("stale", "conflict").await;
    assert_eq!(
        e["payload"]["currentVersion"],
        json!(version),
        "{}",
        short(&e)
    );
    // Without baseVersion: always accepted.
    o.update_query(Some("blind"), "SELECT 'last writer'", None)
        .await;
    o.ack("blind").await;
    version += 1;
    let o_pid = o.participant_id.clone();
    for m in [&mut a, &mut b, &mut o] {
        let f = m
            .wait_event("the blind update", T, |f| ty(f) == "query_updated")
            .await;
        assert_eq!(
            f["payload"]["query"],
            "SELECT 'last writer'",
            "{}",
            short(&f)
        );
        assert_eq!(f["payload"]["version"], json!(version), "{}", short(&f));
        assert_eq!(f["payload"]["authorId"], json!(o_pid), "{}", short(&f));
    }
    for m in [&mut a, &mut b, &mut o] {
        m.settle(Duration::from_millis(400)).await;
        let updates = m.events_of("query_updated");
        assert_eq!(
            updates.len() as u64,
            rounds + 1,
            "{}: one query_updated per round plus the blind one, none for conflicts: {}",
            m.label(),
            describe(&m.events)
        );
        let versions: Vec<u64> = updates
            .iter()
            .map(|f| f["payload"]["version"].as_u64().unwrap())
            .collect();
        assert_eq!(
            versions,
            (1..=rounds + 1).collect::<Vec<_>>(),
            "{}",
            m.label()
        );
    }
    assert_same_session_events(&a, &b);
    assert_same_session_events(&a, &o);
    // A joiner now sees the final text and version.
    let late = cluster.collab(1, &sid, "lee", "Lee").await;
    let p = &late.state["payload"];
    assert_eq!(p["currentQuery"], "SELECT 'last writer'");
    assert_eq!(p["queryVersion"], json!(version));
    assert_eq!(p["queryAuthor"], json!(o.participant_id));
    for m in [&a, &b] {
        let errors: Vec<&Value> = m
            .replies
            .iter()
            .filter(|f| ty(f) == "error" && f["payload"]["code"] != "conflict")
            .collect();
        assert!(errors.is_empty(), "{}: {errors:?}", m.label());
    }
}

// ---------------------------------------------------------------------------------------------------------
// 3. Late joiner and a gateway started later
// ---------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_joiner_gets_query_chat_history_and_cursors_even_on_a_new_gateway() {
    let mut cluster = Cluster::builder("collab_late_joiner")
        .gateways(3)
        .workers(0)
        .gateway_args(["--chat-history", "5"])
        .start()
        .await;
    let sid = new_session_id("late");
    let mut a = cluster.collab(0, &sid, "alice", "Alice").await;
    let mut b = cluster.collab(1, &sid, "bob", "Bob").await;
    expect_joined(&mut a, &b).await;

    a.update_query(Some("q1"), "SELECT 1", Some(0)).await;
    a.ack("q1").await;
    b.update_query(Some("q2"), "SELECT 2 -- by bob", Some(1))
        .await;
    b.ack("q2").await;
    for i in 0..7 {
        let (m, who) = if i % 2 == 0 {
            (&mut a, "a")
        } else {
            (&mut b, "b")
        };
        let fid = format!("c{i}");
        m.chat(
            Some(&fid),
            &format!("h-{i}"),
            &format!("history {i} by {who}"),
        )
        .await;
        m.ack(&fid).await;
    }
    let cursor = json!({"line": 3, "ch": 7, "selection": [[3, 1], [3, 7]]});
    a.move_cursor(cursor.clone()).await;
    let a_pid = a.participant_id.clone();
    b.wait_event("alice's cursor", T, |f| {
        ty(f) == "cursor_moved" && f["payload"]["participantId"] == json!(a_pid)
    })
    .await;
    a.wait_for("7 chats and 2 updates", T, |m| {
        m.events_of("chat_message").len() == 7 && m.events_of("query_updated").len() == 2
    })
    .await;
    let history: Vec<Value> = a
        .events_of("chat_message")
        .iter()
        .map(|f| f["payload"]["message"].clone())
        .collect();
    let last5 = history[2..].to_vec();

    let b_pid = b.participant_id.clone();
    let check_state = move |m: &Collab, participants: &[&str]| {
        let p = &m.state["payload"];
        assert_eq!(p["currentQuery"], "SELECT 2 -- by bob", "{}", m.label());
        assert_eq!(p["queryVersion"], 2, "{}", m.label());
        assert_eq!(p["queryAuthor"], json!(b_pid), "{}", m.label());
        assert_eq!(
            p["chatMessages"],
            Value::Array(last5.clone()),
            "{}: the last --chat-history (5) messages, oldest first, as broadcast",
            m.label()
        );
        assert_eq!(
            p["cursors"][a_pid.as_str()],
            cursor,
            "{}: the last known cursor of alice",
            m.label()
        );
        let ids: BTreeSet<&str> = p["participants"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["id"].as_str().unwrap())
            .collect();
        let want: BTreeSet<&str> = participants.iter().copied().collect();
        assert_eq!(ids, want, "{}: participants", m.label());
    };

    // A late joiner on the third gateway.
    let mut c = cluster.collab(2, &sid, "carol", "Carol").await;
    check_state(
        &c,
        &[&a.participant_id, &b.participant_id, &c.participant_id],
    );
    expect_joined(&mut a, &c).await;
    expect_joined(&mut b, &c).await;
    c.ping(7).await;

    // The third gateway goes away (its participant first leaves), then a new gateway process starts:
    // the state lives in Redis.
    let c_pid = c.participant_id.clone();
    c.close().await;
    expect_left(&mut a, &c_pid, "closed", Duration::from_secs(5)).await;
    expect_left(&mut b, &c_pid, "closed", Duration::from_secs(5)).await;
    cluster.gateways[2].terminate();
    let status = cluster.gateways[2].wait_exit(Duration::from_secs(20)).await;
    assert!(status.is_some(), "gw-2 did not exit within 20 s of SIGTERM");
    let gi = cluster.add_gateway(&[]).await;
    let mut d = cluster.collab(gi, &sid, "dave", "Dave").await;
    check_state(
        &d,
        &[&a.participant_id, &b.participant_id, &d.participant_id],
    );
    expect_joined(&mut a, &d).await;
    expect_joined(&mut b, &d).await;
    // And it is a live member: its chat reaches the others.
    d.chat(Some("dc"), "from-new-node", "hello from a fresh gateway")
        .await;
    d.ack("dc").await;
    for m in [&mut a, &mut b, &mut d] {
        let f = m
            .wait_event("dave's chat", T, |f| ty(f) == "chat_message")
            .await;
        assert_eq!(
            f["payload"]["message"]["id"],
            "from-new-node",
            "{}",
            short(&f)
        );
    }
    for m in [&mut a, &mut b] {
        m.settle(Duration::from_millis(200)).await;
        m.assert_no_errors();
    }
    assert_same_session_events(&a, &b);
}

// ---------------------------------------------------------------------------------------------------------
// 4. A gateway killed with SIGKILL
// ---------------------------------------------------------------------------------------------------------

both_redis_modes!(
    participants_of_a_killed_gateway_leave_once_with_node_lost,
    participants_of_a_killed_gateway_leave_once_with_node_lost_on_redis_cluster,
    participants_of_a_killed_gateway_leave_once_with_node_lost_body
);

async fn participants_of_a_killed_gateway_leave_once_with_node_lost_body(mode: RedisMode) {
    const TTL_MS: u64 = 3000;
    const HEARTBEAT_MS: u64 = 500;
    let mut cluster = Cluster::builder("collab_node_lost")
        .redis(mode)
        .gateways(3)
        .workers(0)
        .gateway_args([
            "--presence-ttl-ms",
            &TTL_MS.to_string(),
            "--presence-heartbeat-ms",
            &HEARTBEAT_MS.to_string(),
        ])
        .start()
        .await;
    let sid = new_session_id("nodelost");
    let mut a = cluster.collab(0, &sid, "alice", "Alice").await;
    let mut b = cluster.collab(1, &sid, "bob", "Bob").await;
    expect_joined(&mut a, &b).await;
    let x1 = cluster.collab(2, &sid, "xavier", "Xavier").await;
    let x2 = cluster.collab(2, &sid, "xena", "Xena").await;
    for m in [&mut a, &mut b] {
        expect_joined(m, &x1).await;
        expect_joined(m, &x2).await;
    }
    // Let a couple of presence heartbeats pass, so the victims are well established.
    a.settle(Duration::from_millis(2 * HEARTBEAT_MS)).await;

    let victims = [x1.participant_id.clone(), x2.participant_id.clone()];
    let t0 = Instant::now();
    cluster.gateways[2].kill().await;
    drop((x1, x2));
    let bound = Duration::from_millis(TTL_MS + HEARTBEAT_MS + 2000);
    let waits = async |m: &mut Collab| {
        let mut took = Vec::new();
        let left_of = |m: &Collab, v: &str| -> Option<Value> {
            m.events
                .iter()
                .find(|f| ty(f) == "participant_left" && f["payload"]["participantId"] == json!(v))
                .cloned()
        };
        for v in &victims {
            let remaining = bound.saturating_sub(t0.elapsed());
            m.wait_for(&format!("participant_left of {v}"), remaining, |m| {
                left_of(m, v).is_some()
            })
            .await;
            let f = left_of(m, v).expect("waited for");
            assert_eq!(
                f["payload"]["reason"],
                "node_lost",
                "{}: participant_left after SIGKILL: {}",
                m.label(),
                short(&f)
            );
            took.push((v.clone(), t0.elapsed(), seq_of(&f)));
        }
        took
    };
    let (ta, tb) = tokio::join!(waits(&mut a), waits(&mut b));
    eprintln!("participant_left after SIGKILL: alice {ta:?}, bob {tb:?}");

    // No second participant_left for the victims, on either survivor.
    tokio::join!(
        a.settle(Duration::from_millis(2500)),
        b.settle(Duration::from_millis(2500))
    );
    for m in [&a, &b] {
        for v in &victims {
            let n = m
                .events_of("participant_left")
                .iter()
                .filter(|f| f["payload"]["participantId"] == json!(v))
                .count();
            assert_eq!(
                n,
                1,
                "{}: exactly one participant_left for {v}: {}",
                m.label(),
                describe(&m.events)
            );
        }
        m.assert_no_errors();
    }
    assert_same_session_events(&a, &b);

    // The session lives on: chat still flows, and a newcomer does not see the dead participants.
    a.chat(Some("after"), "after-kill", "still here").await;
    a.ack("after").await;
    let f = b
        .wait_event("chat after the kill", T, |f| ty(f) == "chat_message")
        .await;
    assert_eq!(f["payload"]["message"]["id"], "after-kill");
    let n = cluster.collab(0, &sid, "nina", "Nina").await;
    let ids: BTreeSet<&str> = n.state["payload"]["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    let want: BTreeSet<&str> = [
        a.participant_id.as_str(),
        b.participant_id.as_str(),
        n.participant_id.as_str(),
    ]
    .into();
    assert_eq!(ids, want, "participants after the node loss");
}

/// A gateway restarted under the same `--node-id` (a supervisor, a StatefulSet) must not keep its previous
/// process's participants alive with its own heartbeat: they leave (`node_lost`) when it starts, long
/// before any presence TTL (60 s here) could do it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_restarted_under_the_same_node_id_reaps_its_previous_participants() {
    let mut cluster = Cluster::builder("collab_node_restart")
        .gateways(2)
        .workers(0)
        .gateway_args([
            "--presence-ttl-ms",
            "60000",
            "--presence-heartbeat-ms",
            "500",
        ])
        .start()
        .await;
    let sid = new_session_id("restart");
    let mut a = cluster.collab(0, &sid, "alice", "Alice").await;
    let x = cluster.collab(1, &sid, "xavier", "Xavier").await;
    expect_joined(&mut a, &x).await;
    let victim = x.participant_id.clone();

    cluster.gateways[1].kill().await;
    drop(x);
    let t0 = Instant::now();
    cluster.respawn_gateway(1).await;
    let left = a
        .wait_event(
            "participant_left of the restarted node's old participant",
            T,
            |f| ty(f) == "participant_left" && f["payload"]["participantId"] == json!(victim),
        )
        .await;
    assert_eq!(left["payload"]["reason"], "node_lost", "{}", short(&left));
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "reaped by the restart, not by a presence TTL: {:?}",
        t0.elapsed()
    );

    // The restarted node serves the session; the old participant is gone from the snapshot.
    let y = cluster.collab(1, &sid, "yann", "Yann").await;
    let ids: BTreeSet<&str> = y.state["payload"]["participants"]
        .as_array()
        .expect("participants")
        .iter()
        .filter_map(|p| p["id"].as_str())
        .collect();
    assert!(!ids.contains(victim.as_str()), "{ids:?}");
    assert!(ids.contains(a.participant_id.as_str()), "{ids:?}");
    a.assert_no_errors();
}

// ---------------------------------------------------------------------------------------------------------
// 5. Shared execution
// ---------------------------------------------------------------------------------------------------------

both_redis_modes!(
    shared_execution_streams_every_row_to_every_participant,
    shared_execution_streams_every_row_to_every_participant_on_redis_cluster,
    shared_execution_streams_every_row_to_every_participant_body
);

async fn shared_execution_streams_every_row_to_every_participant_body(mode: RedisMode) {
    let cluster = Cluster::builder("collab_shared_exec")
        .redis(mode)
        .gateways(3)
        .workers(1)
        .start()
        .await;
    let sid = new_session_id("exec");
    let mut a = cluster.collab(0, &sid, "alice", "Alice").await;
    let mut b = cluster.collab(1, &sid, "bob", "Bob").await;
    expect_joined(&mut a, &b).await;
    let mut c = cluster.collab(2, &sid, "carol", "Carol").await;
    expect_joined(&mut a, &c).await;
    expect_joined(&mut b, &c).await;

    let sql = "SELECT g AS n FROM generate_series(1,20000) g";
    let exec = a
        .execute(
            sql,
            Some(json!({"chunkSize": 1000, "rowFormat": "arrays"})),
            "run-1",
        )
        .await;
    let a_pid = a.participant_id.clone();
    let run = async |m: &mut Collab| {
        let e = exec.clone();
        let f = m
            .wait_event("shared_execution", T, |f| {
                ty(f) == "shared_execution" && f["payload"]["executionId"] == json!(e)
            })
            .await;
        assert_eq!(f["payload"]["authorId"], json!(a_pid), "{}", short(&f));
        assert_eq!(f["payload"]["query"], json!(sql), "{}", short(&f));
        m.collect_execution(&exec, Duration::from_secs(60)).await
    };
    let (fa, fb, fc) = tokio::join!(run(&mut a), run(&mut b), run(&mut c));
    for (m, frames) in [(&a, &fa), (&b, &fb), (&c, &fc)] {
        let s = check_full_stream(&exec, frames);
        assert_eq!(
            s.terminal_type(),
            "query_completed",
            "{}: {}",
            m.label(),
            short(&s.terminal)
        );
        assert_eq!(s.chunks, 20, "{}", m.label());
        let ns: Vec<i64> = s
            .rows
            .iter()
            .map(|r| r[0].as_i64().unwrap_or_else(|| panic!("row {r}")))
            .collect();
        assert_eq!(
            ns,
            (1..=20000).collect::<Vec<i64>>(),
            "{}: every row exactly once, in order",
            m.label()
        );
        // shared_execution comes before the execution's first event.
        let announce = position_in_log(m, |f| {
            ty(f) == "shared_execution" && f["payload"]["executionId"] == json!(exec)
        })
        .unwrap();
        let first = position_in_log(m, |f| is_event_of(f, &exec)).unwrap();
        assert!(
            announce < first,
            "{}: shared_execution must precede the execution's events",
            m.label()
        );
    }
    // The author's ack came before any event of the execution.
    let ack_pos = position_in_log(&a, |f| ty(f) == "ack").unwrap();
    let first = position_in_log(&a, |f| is_event_of(f, &exec)).unwrap();
    assert!(ack_pos < first, "the ack precedes the execution's events");
    assert_same_frames("execution events alice vs bob", &fb, &fa);
    assert_same_frames("execution events alice vs carol", &fc, &fa);
    for m in [&mut a, &mut b, &mut c] {
        m.settle(Duration::from_millis(300)).await;
        m.assert_no_errors();
        assert_eq!(
            m.events_of("shared_execution").len(),
            1,
            "{}: one shared_execution",
            m.label()
        );
        assert_eq!(
            m.exec_frames.len(),
            fa.len(),
            "{}: no execution event twice",
            m.label()
        );
    }
    assert_same_session_events(&a, &b);
    assert_same_session_events(&a, &c);
}

// ---------------------------------------------------------------------------------------------------------
// 6. Cursor flood
// ---------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursor_flood_is_coalesced_and_ends_on_the_final_position() {
    let cluster = Cluster::builder("collab_cursor_flood")
        .gateways(2)
        .workers(0)
        .start()
        .await;
    let sid = new_session_id("cursor");
    let mut s = cluster.collab(0, &sid, "sam", "Sam").await;
    let mut r1 = cluster.collab(1, &sid, "rita", "Rita").await;
    expect_joined(&mut s, &r1).await;
    let mut r2 = cluster.collab(0, &sid, "rob", "Rob").await;
    expect_joined(&mut s, &r2).await;
    expect_joined(&mut r1, &r2).await;

    let n = 1000;
    let final_cursor = json!({"line": n - 1, "ch": 4242, "final": true});
    let frames: Vec<Value> = (0..n)
        .map(|i| {
            let cursor = if i == n - 1 {
                final_cursor.clone()
            } else {
                json!({"line": i, "ch": i % 80})
            };
            json!({"type": "move_cursor", "payload": {"cursor": cursor}})
        })
        .collect();
    let elapsed = s
        .client
        .send_all_draining(&frames, Duration::from_millis(1))
        .await;
    let s_pid = s.participant_id.clone();
    let max_allowed = elapsed.as_millis() as usize / 50 + 3;
    for m in [&mut s, &mut r1, &mut r2] {
        let fc = final_cursor.clone();
        let pid = s_pid.clone();
        m.wait_for("the final cursor position", Duration::from_secs(5), |m| {
            m.events.iter().any(|f| {
                ty(f) == "cursor_moved"
                    && f["payload"]["participantId"] == json!(pid)
                    && f["payload"]["cursor"] == fc
            })
        })
        .await;
        m.settle(Duration::from_millis(300)).await;
        let moved: Vec<&Value> = m
            .events_of("cursor_moved")
            .into_iter()
            .filter(|f| f["payload"]["participantId"] == json!(s_pid))
            .collect();
        eprintln!(
            "{}: {} cursor_moved for {n} moves in {elapsed:?} (allowed {max_allowed})",
            m.label(),
            moved.len()
        );
        assert!(
            moved.len() <= max_allowed,
            "{}: {} cursor_moved for moves over {elapsed:?}; at most {max_allowed} allowed at 50 ms",
            m.label(),
            moved.len()
        );
        assert_eq!(
            moved.last().unwrap()["payload"]["cursor"],
            final_cursor,
            "{}: the last cursor_moved carries the final position",
            m.label()
        );
        let lines: Vec<u64> = moved
            .iter()
            .map(|f| f["payload"]["cursor"]["line"].as_u64().unwrap())
            .collect();
        assert!(
            lines.windows(2).all(|w| w[0] < w[1]),
            "{}: positions only move forward (latest wins): {lines:?}",
            m.label()
        );
        assert!(
            moved.len() >= 2,
            "{}: a second of movement shows intermediate positions, got {lines:?}",
            m.label()
        );
        m.assert_no_errors();
    }
    assert_same_session_events(&s, &r1);
    assert_same_session_events(&s, &r2);
    let late = cluster.collab(1, &sid, "lena", "Lena").await;
    assert_eq!(
        late.state["payload"]["cursors"][s_pid.as_str()],
        final_cursor,
        "a joiner sees the final cursor"
    );
}

// ---------------------------------------------------------------------------------------------------------
// 7. Resume with afterSeq on another node
// ---------------------------------------------------------------------------------------------------------

both_redis_modes!(
    reconnect_elsewhere_with_after_seq_replays_exactly_the_missed_events,
    reconnect_elsewhere_with_after_seq_replays_exactly_the_missed_events_on_redis_cluster,
    reconnect_elsewhere_with_after_seq_replays_exactly_the_missed_events_body
);

async fn reconnect_elsewhere_with_after_seq_replays_exactly_the_missed_events_body(
    mode: RedisMode,
) {
    let cluster = Cluster::builder("collab_resume")
        .redis(mode)
        .gateways(3)
        .workers(0)
        .start()
        .await;
    let sid = new_session_id("resume");
    let mut a = cluster.collab(0, &sid, "alice", "Alice").await;
    let mut p = cluster.collab(1, &sid, "pat", "Pat").await;
    expect_joined(&mut a, &p).await;
    for i in 1..=3 {
        let fid = format!("r{i}");
        a.chat(Some(&fid), &format!("r-{i}"), &format!("before {i}"))
            .await;
        a.ack(&fid).await;
    }
    p.wait_for("the first three chats", T, |m| {
        m.events_of("chat_message").len() == 3
    })
    .await;
    p.settle(Duration::from_millis(200)).await;
    let last = p.last_seq;
    let old_pid = p.participant_id.clone();
    p.close().await;
    let left = expect_left(&mut a, &old_pid, "closed", Duration::from_secs(5)).await;
    assert_eq!(seq_of(&left), last + 1);

    // Missed: chats, a query update, a cursor.
    for i in 4..=5 {
        let fid = format!("r{i}");
        a.chat(Some(&fid), &format!("r-{i}"), &format!("missed {i}"))
            .await;
        a.ack(&fid).await;
    }
    a.update_query(Some("u"), "SELECT 'missed'", Some(0)).await;
    a.ack("u").await;
    a.move_cursor(json!({"line": 1, "ch": 2})).await;
    let a_pid = a.participant_id.clone();
    a.wait_for("its own missed events", T, |m| {
        m.events_of("chat_message").len() == 5
            && m.events_of("query_updated").len() == 1
            && m.events
                .iter()
                .any(|f| ty(f) == "cursor_moved" && f["payload"]["participantId"] == json!(a_pid))
    })
    .await;
    let before_rejoin = a.last_seq;

    let mut p2 = cluster
        .collab_after(2, &sid, "pat", "Pat", Some(last))
        .await;
    assert_eq!(p2.start_seq, last);
    assert!(
        p2.snapshot_seq > before_rejoin,
        "the new snapshot includes the missed events and the rejoin: {} vs {before_rejoin}",
        p2.snapshot_seq
    );
    let snap = p2.snapshot_seq;
    p2.wait_for("the replay up to the snapshot", T, |m| m.last_seq >= snap)
        .await;
    expect_joined(&mut a, &p2).await;
    let replay = events_in(&p2, last + 1..=snap);
    assert_eq!(
        replay.first().map(seq_of),
        Some(last + 1),
        "the replay starts right after afterSeq"
    );
    assert_same_frames(
        "replayed events vs what alice saw live",
        &replay,
        &events_in(&a, last + 1..=snap),
    );
    assert_eq!(
        types(&replay),
        vec![
            "participant_left",
            "chat_message",
            "chat_message",
            "query_updated",
            "cursor_moved",
            "participant_joined"
        ],
        "{}",
        describe(&replay)
    );
    assert_eq!(replay[0]["payload"]["participantId"], json!(old_pid));
    assert_eq!(
        replay[5]["payload"]["participant"]["id"],
        json!(p2.participant_id)
    );
    assert_eq!(p2.state["payload"]["currentQuery"], "SELECT 'missed'");

    // Then live, both ways.
    a.chat(Some("r6"), "r-6", "live").await;
    a.ack("r6").await;
    let f = p2
        .wait_event("the live chat", T, |f| {
            ty(f) == "chat_message" && f["payload"]["message"]["id"] == "r-6"
        })
        .await;
    assert_eq!(seq_of(&f), snap + 1, "{}", short(&f));
    p2.chat(Some("p1"), "p-1", "back").await;
    p2.ack("p1").await;
    a.wait_event("pat's chat", T, |f| {
        ty(f) == "chat_message" && f["payload"]["message"]["id"] == "p-1"
    })
    .await;
    p2.settle(Duration::from_millis(200)).await;
    a.settle(Duration::from_millis(200)).await;
    assert_same_session_events(&a, &p2);
    a.assert_no_errors();
    p2.assert_no_errors();
}

// ---------------------------------------------------------------------------------------------------------
// 8. Limits and identity
// ---------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_identity_and_duplicate_chat() {
    let cluster = Cluster::builder("collab_limits")
        .gateways(2)
        .workers(0)
        .gateway_args(["--max-participants", "2"])
        .start()
        .await;
    // Bad session ids are refused at the upgrade.
    for bad in ["bad%20id", "star*id", "caf%C3%A9", &"x".repeat(65)] {
        let url = cluster
            .gateway(0)
            .ws_url(&format!("/ws/collaboration/{bad}"));
        assert_eq!(
            ws_upgrade_status(&url).await,
            Err(400),
            "session id {bad:?} must be refused with 400"
        );
    }
    let sid = new_session_id("limits");
    let mut a = cluster.collab(0, &sid, "alice", "Alice").await;
    let mut b = cluster.collab(1, &sid, "bob", "Bob").await;
    expect_joined(&mut a, &b).await;

    // The third joiner (on either node) is refused: error unavailable, then close 1013.
    for gw in [1, 0] {
        let mut third = cluster
            .client(gw, &collab_path(&sid, "carl", "Carl", None))
            .await;
        let f = third.recv_json().await;
        assert_eq!(
            (ty(&f), f["payload"]["code"].as_str()),
            ("error", Some("unavailable")),
            "the 3rd joiner with --max-participants 2: {}",
            short(&f)
        );
        assert_eq!(third.expect_close().await, 1013);
    }

    // Chat length: counted in characters.
    a.chat(Some("long"), "m-long", &"x".repeat(4001)).await;
    a.expect_error("long", "too_large").await;
    a.chat(Some("max"), "m-max", &"é".repeat(4000)).await;
    a.ack("max").await;
    // The author comes from the connection, not from the payload.
    a.send(json!({"type": "chat_message", "id": "spoof", "payload": {"message": {
        "id": "m-spoof", "content": "hi", "authorId": "spoofed", "authorName": "Mallory", "timestamp": 1
    }}}))
    .await;
    a.ack("spoof").await;
    // The same message id twice: delivered once, the second ack says duplicate.
    a.chat(Some("d1"), "m-dup", "first").await;
    let ack1 = a.ack("d1").await;
    assert!(
        ack1["payload"].get("duplicate").is_none_or(|d| d == false),
        "{}",
        short(&ack1)
    );
    a.chat(Some("d2"), "m-dup", "second").await;
    let ack2 = a.ack("d2").await;
    assert_eq!(ack2["payload"]["duplicate"], true, "{}", short(&ack2));
    // Query text above --max-query-bytes (default 32768).
    let big = format!("SELECT 1 -- {}", "y".repeat(32_768));
    a.update_query(Some("big"), &big, None).await;
    a.expect_error("big", "too_large").await;
    a.chat(Some("end"), "m-end", "end").await;
    a.ack("end").await;

    let a_pid = a.participant_id.clone();
    for m in [&mut a, &mut b] {
        m.wait_event("the last chat", T, |f| {
            ty(f) == "chat_message" && f["payload"]["message"]["id"] == "m-end"
        })
        .await;
        m.settle(Duration::from_millis(300)).await;
        assert_eq!(
            chat_ids(m),
            vec!["m-max", "m-spoof", "m-dup", "m-end"],
            "{}: too long not delivered, the duplicate delivered once",
            m.label()
        );
        for f in m.events_of("chat_message") {
            let msg = &f["payload"]["message"];
            assert_eq!(msg["authorId"], json!(a_pid), "{}: {}", m.label(), short(f));
            assert_eq!(msg["authorName"], "Alice", "{}: {}", m.label(), short(f));
            assert!(
                msg["timestamp"]
                    .as_i64()
                    .is_some_and(|t| (t - now_ms()).abs() < 120_000),
                "{}: the server stamps the time: {}",
                m.label(),
                short(f)
            );
        }
        let dup = m
            .events_of("chat_message")
            .into_iter()
            .find(|f| f["payload"]["message"]["id"] == "m-dup")
            .unwrap();
        assert_eq!(dup["payload"]["message"]["content"], "first");
        assert!(
            m.events_of("query_updated").is_empty(),
            "{}: a refused update is not broadcast",
            m.label()
        );
        assert!(
            m.events_of("participant_joined")
                .iter()
                .all(|f| f["payload"]["participant"]["userId"] != "carl"),
            "{}: a refused joiner is never announced",
            m.label()
        );
    }
    let errors: Vec<&Value> = a.replies.iter().filter(|f| ty(f) == "error").collect();
    assert!(errors.is_empty(), "unexpected errors: {errors:?}");
    b.assert_no_errors();
    a.ping(1).await;

    // A slot frees when someone leaves.
    let b_pid = b.participant_id.clone();
    b.close().await;
    expect_left(&mut a, &b_pid, "closed", Duration::from_secs(5)).await;
    let carl = cluster.collab(1, &sid, "carl", "Carl").await;
    expect_joined(&mut a, &carl).await;
}

// ---------------------------------------------------------------------------------------------------------
// 9. Embedded mode
// ---------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_mode_has_the_same_session_semantics() {
    let cluster = Cluster::builder("collab_embedded")
        .embedded()
        .gateways(1)
        .start()
        .await;
    let sid = new_session_id("emb");
    let mut a = cluster.collab(0, &sid, "alice", "Alice").await;
    let mut b = cluster.collab(0, &sid, "bob", "Bob").await;
    expect_joined(&mut a, &b).await;

    a.chat(Some("c1"), "e-1", "hello embedded").await;
    a.ack("c1").await;
    b.chat(Some("c2"), "e-2", "hi back").await;
    b.ack("c2").await;
    b.update_query(Some("u1"), "SELECT count(*) FROM customers", Some(0))
        .await;
    b.ack("u1").await;
    a.update_query(Some("u2"), "SELECT 'stale'", Some(0)).await;
    let e = a.expect_error("u2", "conflict").await;
    assert_eq!(e["payload"]["currentVersion"], 1);
    assert_eq!(
        e["payload"]["currentQuery"],
        "SELECT count(*) FROM customers"
    );
    let b_pid = b.participant_id.clone();
    for m in [&mut a, &mut b] {
        m.wait_for("two chats and one update", T, |m| {
            m.events_of("chat_message").len() == 2 && m.events_of("query_updated").len() == 1
        })
        .await;
        m.settle(Duration::from_millis(200)).await;
        assert_eq!(chat_ids(m), vec!["e-1", "e-2"], "{}", m.label());
        let u = m.events_of("query_updated")[0].clone();
        assert_eq!(u["payload"]["version"], 1, "{}", short(&u));
        assert_eq!(u["payload"]["authorId"], json!(b_pid), "{}", short(&u));
        assert_eq!(
            u["payload"]["query"],
            "SELECT count(*) FROM customers",
            "{}",
            short(&u)
        );
    }
    assert_same_session_events(&a, &b);
    a.ping(5).await;

    let c = cluster.collab(0, &sid, "carol", "Carol").await;
    let p = &c.state["payload"];
    assert_eq!(p["queryVersion"], 1);
    assert_eq!(p["queryAuthor"], json!(b_pid));
    let history: Vec<&str> = p["chatMessages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(history, vec!["e-1", "e-2"]);
    expect_joined(&mut a, &c).await;
    expect_joined(&mut b, &c).await;
    let b_pid2 = b.participant_id.clone();
    b.close().await;
    expect_left(&mut a, &b_pid2, "closed", Duration::from_secs(5)).await;
}
