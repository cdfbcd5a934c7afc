//! What a Redis failover can do to a log, done by hand on the single Redis, and what clients see: always
//! an explicit error, never a gap, a duplicate or an endless wait.
//! - a hole in an execution's log: a resume across it ends with `error not_found` naming the range;
//! - events the worker wrote vanish while it streams (a promoted replica without them): the worker's next
//!   write is refused and the stream ends with a terminal `query_error` `unavailable`;
//! - a queued job vanishes from the queue: its followers get a terminal `query_error` `unavailable`;
//! - a take-over ends an execution whose worker is in fact alive: nothing is appended after that
//!   terminal event, and the fenced worker's query stops at its next event;
//! - a session event the follower saw is renumbered (another event takes its seq) and the follower's live
//!   link drops: after resubscribing it ends with `error unavailable` instead of skipping the new event.
//!
//! The live-link drop is `CLIENT KILL TYPE pubsub`, which cuts every subscriber of the shared Redis: that
//! test runs alone (`harness::alone`), the others of this file one at a time (`harness::exclusive`).

use std::time::Duration;

use crate::harness::*;
use serde_json::{json, Value};

async fn redis(cluster: &Cluster, cmd: &mut redis::Cmd) -> redis::Value {
    cluster
        .redis_query(cmd)
        .await
        .expect("a Redis command of the test")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_across_a_hole_in_the_log_ends_with_not_found_naming_it() {
    let _serial = exclusive().await;
    let cluster = Cluster::builder("log_hole")
        .gateways(1)
        .workers(1)
        .start()
        .await;
    let mut c = cluster.query_client(0).await;
    let exec = c
        .execute(
            "SELECT g AS n FROM generate_series(1, 5000) g",
            Some(json!({"chunkSize": 500, "rowFormat": "arrays"})),
            Some("hole"),
        )
        .await;
    let frames = c.collect_execution(&exec).await;
    check_full_stream(&exec, &frames);
    let events = format!("{}:{{e:{exec}}}:events", cluster.prefix);
    let removed = redis(&cluster, redis::cmd("XDEL").arg(&events).arg("6-0")).await;
    assert_eq!(removed, redis::Value::Int(1), "scenario: event 6 removed");
    c.resume(&exec, 2).await;
    let mut got = Vec::new();
    let end = loop {
        let f = c.recv_json().await;
        if is_event_of(&f, &exec) {
            got.push(seq_of(&f));
            continue;
        }
        break f;
    };
    assert_eq!(
        got,
        [3, 4, 5],
        "the events before the hole, then nothing past it"
    );
    assert_eq!(ty(&end), "error", "{}", short(&end));
    assert_eq!(end["payload"]["code"], "not_found", "{}", short(&end));
    assert_eq!(
        end["payload"]["executionId"],
        json!(exec),
        "{}",
        short(&end)
    );
    assert_eq!(end["payload"]["afterSeq"], json!(5), "{}", short(&end));
    let message = end["payload"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("6..6"),
        "the error names the missing range: {message}"
    );
    let extra = c.collect_for(Duration::from_millis(500)).await;
    assert!(
        extra.iter().all(|f| !is_event_of(f, &exec)),
        "nothing after the error: {}",
        describe(&extra)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_lost_under_a_running_worker_end_its_stream_explicitly() {
    let _serial = exclusive().await;
    let cluster = Cluster::builder("log_lost_while_writing")
        .gateways(1)
        .workers(1)
        .start()
        .await;
    let mut c = cluster.query_client(0).await;
    c.timeout = Duration::from_secs(60);
    let (exec, frames) = c.start_paced_stream("lost", 3).await;
    let seen = seq_of(frames.last().expect("events"));
    // What a replica promoted without the last two events would hold: the log and the execution's
    // record of its last seq, two events back (one atomic step, like a replica's state).
    let rewind = redis::cmd("EVAL")
        .arg(
            "local last = tonumber(redis.call('HGET', KEYS[1], 'seq')) \
             redis.call('XDEL', KEYS[2], last .. '-0', (last - 1) .. '-0') \
             redis.call('HSET', KEYS[1], 'seq', last - 2) return last",
        )
        .arg(2)
        .arg(format!("{}:{{e:{exec}}}", cluster.prefix))
        .arg(format!("{}:{{e:{exec}}}:events", cluster.prefix))
        .clone();
    let last = match redis(&cluster, &mut rewind.clone()).await {
        redis::Value::Int(n) => n as u64,
        other => panic!("rewind: {other:?}"),
    };
    assert!(
        last >= seen,
        "scenario: the follower saw up to {seen}, the log had {last}"
    );
    let mut rest = c
        .collect_execution_within(&exec, Duration::from_secs(60))
        .await;
    let terminal = rest.pop().expect("a terminal event");
    assert_eq!(ty(&terminal), "query_error", "{}", short(&terminal));
    assert_eq!(
        terminal["payload"]["error"]["code"],
        "unavailable",
        "{}",
        short(&terminal)
    );
    let message = terminal["payload"]["error"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(message.contains("lost in a Redis failover"), "{message}");
    // The follower got each event once, in order, up to the explicit end.
    let mut all = frames.clone();
    all.extend(rest);
    all.push(terminal.clone());
    for (i, f) in all.iter().enumerate() {
        assert_eq!(
            seq_of(f),
            i as u64 + 1,
            "no gap, no repeat: {}",
            describe(&all)
        );
    }
    // A client resuming from before the hole is told about it instead of skipping it.
    let mut late = cluster.query_client(0).await;
    late.resume(&exec, 1).await;
    let end = late
        .recv_until("the end of the resumed stream", |f| {
            ty(f) == "error" || is_terminal(f)
        })
        .await
        .pop()
        .expect("frames");
    assert_eq!(
        (ty(&end), end["payload"]["code"].as_str()),
        ("error", Some("not_found")),
        "{}",
        short(&end)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_job_lost_from_the_queue_ends_with_an_explicit_error() {
    let _serial = exclusive().await;
    // No worker: the job stays queued.
    let cluster = Cluster::builder("log_job_lost")
        .gateways(1)
        .workers(0)
        .gateway_args(["--resync-interval-ms", "200"])
        .start()
        .await;
    let mut c = cluster.query_client(0).await;
    let exec = c.execute("SELECT 1 AS one", None, Some("job")).await;
    let quiet = c.collect_for(Duration::from_millis(800)).await;
    assert!(
        quiet.iter().all(|f| !is_event_of(f, &exec)),
        "scenario: still queued: {}",
        describe(&quiet)
    );
    let jobs = format!("{}:{{jobs}}", cluster.prefix);
    let removed = redis(
        &cluster,
        redis::cmd("XTRIM").arg(&jobs).arg("MAXLEN").arg(0),
    )
    .await;
    assert_eq!(
        removed,
        redis::Value::Int(1),
        "scenario: the one job removed"
    );
    let frames = c
        .collect_execution_within(&exec, Duration::from_secs(10))
        .await;
    assert_eq!(frames.len(), 1, "one terminal event: {}", describe(&frames));
    let f = &frames[0];
    assert_eq!((ty(f), seq_of(f)), ("query_error", 1), "{}", short(f));
    assert_eq!(f["payload"]["error"]["code"], "unavailable", "{}", short(f));
    // A client resuming later gets the same explicit end from the log.
    let mut late = cluster.query_client(0).await;
    late.resume(&exec, 0).await;
    let replay = late
        .collect_execution_within(&exec, Duration::from_secs(10))
        .await;
    assert_same_frames("resume of the lost execution", &replay, &frames);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renumbered_session_event_ends_the_follower_instead_of_a_silent_skip() {
    // It cuts every subscriber of the shared Redis: no other test's cluster may be up.
    let _alone = alone().await;
    let cluster = Cluster::builder("log_session_renumbered")
        .alone()
        .gateways(2)
        .workers(0)
        .start()
        .await;
    let sid = format!("s-{}", uuid::Uuid::new_v4().simple());
    let mut a = cluster.collab(0, &sid, "alice", "Alice").await;
    let mut b = cluster.collab(1, &sid, "bob", "Bob").await;
    a.wait_event("bob's join", DEFAULT_TIMEOUT, |f| {
        ty(f) == "participant_joined"
    })
    .await;
    a.chat(Some("c1"), "m1", "first").await;
    a.ack("c1").await;
    let m1 = b
        .wait_event("m1", DEFAULT_TIMEOUT, |f| ty(f) == "chat_message")
        .await;
    let k = seq_of(&m1);
    // A replica promoted without m1: its log and counter end before it.
    let keys = format!("{}:{{s:{sid}}}", cluster.prefix);
    let rewound = redis(
        &cluster,
        redis::cmd("EVAL")
            .arg(
                "redis.call('XDEL', KEYS[1], ARGV[1] .. '-0') \
                 redis.call('XSETID', KEYS[1], (ARGV[1] - 1) .. '-0') return redis.call('DECR', KEYS[2])",
            )
            .arg(2)
            .arg(format!("{keys}:events"))
            .arg(format!("{keys}:seq"))
            .arg(k),
    )
    .await;
    assert_eq!(
        rewound,
        redis::Value::Int(k as i64 - 1),
        "scenario: counter back before m1"
    );
    // The failover cuts the live links; the followers resubscribe.
    redis(
        &cluster,
        redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub"),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The next event takes m1's seq on the new log.
    a.chat(Some("c2"), "m2", "second").await;
    let answer = a.answer("c2", DEFAULT_TIMEOUT).await;
    assert_eq!(ty(&answer), "ack", "{}", short(&answer));
    let err: Value = b
        .reply("the end of bob's stream", DEFAULT_TIMEOUT, |f| {
            ty(f) == "error"
        })
        .await;
    assert_eq!(err["payload"]["code"], "unavailable", "{}", short(&err));
    assert_eq!(err["payload"]["sessionId"], json!(sid), "{}", short(&err));
    assert!(
        b.events_of("chat_message")
            .iter()
            .all(|f| f["payload"]["message"]["id"] != json!("m2")),
        "bob never got m2 under m1's seq"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_job_was_taken_over_is_fenced_off_by_the_terminal_event() {
    let _serial = exclusive().await;
    let cluster = Cluster::builder("log_fenced_worker")
        .gateways(1)
        .workers(1)
        .start()
        .await;
    let mut pg = cluster.pg().await;
    let mut c = cluster.query_client(0).await;
    c.timeout = Duration::from_secs(30);
    let (exec, frames) = c.start_paced_stream("fenced", 3).await;
    // What a take-over does when a lease expired under a worker that is in fact alive (stalled for
    // longer than the lease): it appends the terminal `worker_lost` after the last event, in one step.
    let end_it = redis::cmd("EVAL")
        .arg(
            "local last = tonumber(redis.call('HGET', KEYS[1], 'seq')) \
             local frame = string.format(ARGV[1], last + 1) \
             redis.call('XADD', KEYS[2], (last + 1) .. '-0', 't', '1', 'f', frame) \
             redis.call('HSET', KEYS[1], 'seq', last + 1, 'state', 'done') return last + 1",
        )
        .arg(2)
        .arg(format!("{}:{{e:{exec}}}", cluster.prefix))
        .arg(format!("{}:{{e:{exec}}}:events", cluster.prefix))
        .arg(format!(
            r#"{{"type":"query_error","payload":{{"executionId":"{exec}","timestamp":1,"error":{{"code":"worker_lost","message":"taken over"}}}},"seq":%d}}"#
        ))
        .clone();
    let terminal_seq = match redis(&cluster, &mut end_it.clone()).await {
        redis::Value::Int(n) => n as u64,
        other => panic!("take-over: {other:?}"),
    };
    let injected_at = std::time::Instant::now();
    let mut rest = c
        .collect_execution_within(&exec, Duration::from_secs(30))
        .await;
    let terminal = rest.pop().expect("a terminal event");
    assert_eq!(
        (ty(&terminal), seq_of(&terminal)),
        ("query_error", terminal_seq),
        "the take-over's end is the end: {}",
        short(&terminal)
    );
    // The live worker's next event was refused: its query stopped (the paced query has seconds left),
    // and the log ends with the take-over's terminal event.
    let mut stopped = false;
    while injected_at.elapsed() < Duration::from_millis(2_500) {
        if active_queries_with(&mut pg, &exec).await == 0 {
            stopped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(stopped, "the fenced worker's query still runs");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let last = redis(
        &cluster,
        &mut redis::cmd("XREVRANGE")
            .arg(format!("{}:{{e:{exec}}}:events", cluster.prefix))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .clone(),
    )
    .await;
    let last_id = format!("{last:?}");
    assert!(
        last_id.contains(&format!("{terminal_seq}-0")),
        "nothing after the terminal event: {last_id}"
    );
    let mut all = frames.clone();
    all.extend(rest);
    all.push(terminal);
    for (i, f) in all.iter().enumerate() {
        assert_eq!(
            seq_of(f),
            i as u64 + 1,
            "no gap, no repeat: {}",
            describe(&all)
        );
    }
}
