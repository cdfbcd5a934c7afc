//! A 100 000-row query streamed through two gateways and one worker, and resumed on the other gateway,
//! after the stream completed and while it is still streaming.

use std::collections::HashSet;
use std::time::Duration;

use crate::harness::*;
use serde_json::{json, Value};

const ROWS: u64 = 100_000;
const CHUNK: u64 = 1_000;

/// The query of the brief.
const BIG_QUERY: &str = "SELECT g AS n, md5(g::text) AS h FROM generate_series(1,100000) g";

/// The same rows, paced by the database: every 1000th row sleeps 20 ms, so the stream lasts about 2 s and a
/// resume sent after a few chunks really meets a live stream.
const SLOW_BIG_QUERY: &str = "SELECT g AS n, md5(g::text) AS h FROM generate_series(1,100000) g \
     WHERE CASE WHEN g % 1000 = 0 THEN pg_sleep(0.02) IS NOT NULL ELSE true END";

fn options() -> Value {
    json!({"chunkSize": CHUNK, "rowFormat": "arrays"})
}

/// Everything the brief requires of the 100 000-row stream.
fn check_big_result(exec: &str, frames: &[Value]) {
    let s = check_full_stream(exec, frames);
    assert_eq!(
        s.terminal_type(),
        "query_completed",
        "terminal event: {}",
        short(&s.terminal)
    );

    // Order: query_started, query_progress (at least one, nothing else), data_stream_start, chunks (with
    // progress between), data_stream_complete, query_completed.
    assert_eq!(ty(&frames[0]), "query_started", "{}", describe(frames));
    let start_at = frames
        .iter()
        .position(|f| ty(f) == "data_stream_start")
        .expect("checked: completed streams have a data_stream_start");
    assert!(
        start_at >= 2 && frames[1..start_at].iter().all(|f| ty(f) == "query_progress"),
        "between query_started and data_stream_start there must be query_progress events only (at least one): {}",
        describe(frames)
    );
    let complete_at = frames
        .iter()
        .position(|f| ty(f) == "data_stream_complete")
        .expect("checked");
    assert_eq!(
        complete_at,
        frames.len() - 2,
        "data_stream_complete right before query_completed: {}",
        describe(frames)
    );
    assert!(
        frames[start_at + 1..complete_at]
            .iter()
            .all(|f| matches!(ty(f), "data_chunk" | "query_progress")),
        "only data_chunk / query_progress between start and complete: {}",
        describe(frames)
    );

    // Columns and format.
    let start = &s.start.as_ref().expect("checked")["payload"];
    assert_eq!(
        s.column_names(),
        vec!["n", "h"],
        "columns: {}",
        start["columns"]
    );
    assert_eq!(
        start["columns"][0]["type"], "int4",
        "n is int4: {}",
        start["columns"]
    );
    assert_eq!(
        start["columns"][1]["type"], "text",
        "h is text: {}",
        start["columns"]
    );
    assert_eq!(start["rowFormat"], "arrays");
    assert_eq!(start["chunkSize"], CHUNK);

    // Rows: 100 000, every n exactly once, h an md5 hex string.
    assert_eq!(s.rows.len() as u64, ROWS, "row count");
    let mut seen = HashSet::with_capacity(ROWS as usize);
    for row in &s.rows {
        let n = row[0]
            .as_u64()
            .unwrap_or_else(|| panic!("n must be a JSON integer: {row}"));
        assert!((1..=ROWS).contains(&n), "n out of range: {row}");
        assert!(seen.insert(n), "n = {n} delivered twice");
        let h = row[1]
            .as_str()
            .unwrap_or_else(|| panic!("h must be a string: {row}"));
        assert!(
            h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit()),
            "h must be md5 hex: {row}"
        );
    }
    assert_eq!(seen.len() as u64, ROWS);
    assert_eq!(s.chunks, ROWS / CHUNK, "100 000 rows in chunks of 1000");

    let complete = &frames[complete_at]["payload"];
    assert_eq!(complete["totalRows"], ROWS);
    assert_eq!(complete["chunks"], ROWS / CHUNK);
    let result = &s.terminal["payload"]["result"];
    assert_eq!(result["rowCount"], ROWS);
    assert_eq!(result["truncated"], false);
}

/// Frames of `frames` with seq > after.
fn after(frames: &[Value], after_seq: u64) -> Vec<Value> {
    frames
        .iter()
        .filter(|f| seq_of(f) > after_seq)
        .cloned()
        .collect()
}

both_redis_modes!(
    big_result_streams_in_order_and_resumes_on_another_node_after_completion,
    big_result_streams_in_order_and_resumes_on_another_node_after_completion_on_redis_cluster,
    big_result_streams_in_order_and_resumes_on_another_node_after_completion_body
);

async fn big_result_streams_in_order_and_resumes_on_another_node_after_completion_body(
    mode: RedisMode,
) {
    let cluster = Cluster::builder("query_flow_resume_after_completion")
        .redis(mode)
        .gateways(2)
        .workers(1)
        .start()
        .await;
    let mut a = cluster.query_client(0).await;
    let exec = a.execute(BIG_QUERY, Some(options()), Some("c-1")).await;
    let frames = a.collect_execution(&exec).await;
    check_big_result(&exec, &frames);
    let extra = a.collect_for(Duration::from_millis(300)).await;
    assert!(
        extra.is_empty(),
        "nothing may follow the terminal event: {}",
        describe(&extra)
    );

    // Resume from the middle on the other node.
    let chunk_seqs: Vec<u64> = frames
        .iter()
        .filter(|f| ty(f) == "data_chunk")
        .map(seq_of)
        .collect();
    let after_seq = chunk_seqs[chunk_seqs.len() / 2];
    let mut b = cluster.query_client(1).await;
    b.resume(&exec, after_seq).await;
    let replay = b.collect_execution(&exec).await;
    let expected = after(&frames, after_seq);
    assert_eq!(
        seq_of(&replay[0]),
        after_seq + 1,
        "replay starts right after afterSeq"
    );
    assert_same_frames("resume after completion on node B", &replay, &expected);
    let extra = b.collect_for(Duration::from_millis(300)).await;
    assert!(
        extra.is_empty(),
        "each replayed event exactly once, nothing after the terminal event: {}",
        describe(&extra)
    );

    // A resume with an id is acknowledged before the first event it replays: its relay starts only
    // once the ack went out (the relays write to the socket themselves).
    let mut c = cluster.query_client(0).await;
    c.send_json(
        json!({"type": "resume", "id": "r-1", "payload": {"executionId": exec, "afterSeq": 0}}),
    )
    .await;
    let first = c.recv_json().await;
    assert_eq!(
        (ty(&first), first["payload"]["id"].as_str()),
        ("ack", Some("r-1")),
        "the ack comes before the replay: {}",
        short(&first)
    );
    let replay = c.collect_execution(&exec).await;
    assert_same_frames("resume with an id, from the start", &replay, &frames);
}

both_redis_modes!(
    resume_on_another_node_while_streaming,
    resume_on_another_node_while_streaming_on_redis_cluster,
    resume_on_another_node_while_streaming_body
);

async fn resume_on_another_node_while_streaming_body(mode: RedisMode) {
    let cluster = Cluster::builder("query_flow_resume_while_streaming")
        .redis(mode)
        .gateways(2)
        .workers(1)
        .start()
        .await;
    let mut a = cluster.query_client(0).await;
    let exec = a
        .execute(SLOW_BIG_QUERY, Some(options()), Some("c-live"))
        .await;

    // Read until A has seen 10 chunks.
    let mut chunks_seen = 0;
    let mut frames = a
        .recv_events_until(&exec, None, |f| {
            if ty(f) == "data_chunk" {
                chunks_seen += 1;
            }
            chunks_seen >= 10 || is_terminal(f)
        })
        .await;
    assert!(
        !is_terminal(frames.last().expect("non-empty")),
        "the stream ended before 10 chunks: {}",
        describe(&frames)
    );
    // Resume from the 5th chunk: part replay, part live.
    let after_seq = frames
        .iter()
        .filter(|f| ty(f) == "data_chunk")
        .map(seq_of)
        .nth(4)
        .expect("10 chunks seen");
    let mut b = cluster.query_client(1).await;
    let resume_sent_ms = now_ms();
    b.resume(&exec, after_seq).await;
    let (rest_a, replay) = tokio::join!(a.collect_execution(&exec), b.collect_execution(&exec));
    frames.extend(rest_a);
    check_big_result(&exec, &frames);

    let terminal_ts = frames.last().expect("non-empty")["payload"]["timestamp"]
        .as_i64()
        .expect("checked");
    assert!(
        terminal_ts > resume_sent_ms,
        "scenario check: the stream must still be live when the resume is sent \
         (terminal at {terminal_ts}, resume sent at {resume_sent_ms})"
    );
    assert_same_frames(
        "resume on node B while streaming",
        &replay,
        &after(&frames, after_seq),
    );
    let (extra_a, extra_b) = tokio::join!(
        a.collect_for(Duration::from_millis(300)),
        b.collect_for(Duration::from_millis(300))
    );
    assert!(
        extra_a.is_empty(),
        "A got frames after the terminal event: {}",
        describe(&extra_a)
    );
    assert!(
        extra_b.is_empty(),
        "B got frames after the terminal event: {}",
        describe(&extra_b)
    );
}
