//! Self-test of the harness's stream checker: it accepts a well-formed stream and rejects each kind of
//! defect the cross-process tests rely on it to catch. No processes.

use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::harness::*;
use serde_json::{json, Value};

const EXEC: &str = "e-1";

fn ev(seq: u64, ty: &str, mut payload: Value) -> Value {
    payload["executionId"] = json!(EXEC);
    payload["timestamp"] = json!(1_700_000_000_000i64 + seq as i64);
    json!({"type": ty, "seq": seq, "payload": payload})
}

/// 7 rows in chunks of 3, objects.
fn good_stream() -> Vec<Value> {
    let cols = json!([{"name": "n", "type": "int4"}]);
    let rows = |r: std::ops::RangeInclusive<u64>| -> Value { r.map(|n| json!({"n": n})).collect() };
    vec![
        ev(1, "query_started", json!({})),
        ev(
            2,
            "query_progress",
            json!({"progress": 5, "step": "executing"}),
        ),
        ev(
            3,
            "data_stream_start",
            json!({"totalRows": 7, "totalRowsExact": false, "estimatedRows": 7, "columns": cols,
                   "rowFormat": "objects", "chunkSize": 3}),
        ),
        ev(
            4,
            "data_chunk",
            json!({"chunkIndex": 0, "data": rows(1..=3)}),
        ),
        ev(
            5,
            "query_progress",
            json!({"progress": 50, "step": "streaming"}),
        ),
        ev(
            6,
            "data_chunk",
            json!({"chunkIndex": 1, "data": rows(4..=6)}),
        ),
        ev(
            7,
            "data_chunk",
            json!({"chunkIndex": 2, "data": rows(7..=7)}),
        ),
        ev(
            8,
            "data_stream_complete",
            json!({"totalRows": 7, "chunks": 3}),
        ),
        ev(
            9,
            "query_completed",
            json!({"result": {"rowCount": 7, "columns": cols, "durationMs": 2, "truncated": false}}),
        ),
    ]
}

fn renumber(frames: &mut [Value]) {
    for (i, f) in frames.iter_mut().enumerate() {
        f["seq"] = json!(i as u64 + 1);
    }
}

fn rejects(what: &str, frames: Vec<Value>) {
    let r = catch_unwind(AssertUnwindSafe(|| check_full_stream(EXEC, &frames)));
    assert!(
        r.is_err(),
        "check_full_stream accepted a stream with {what}"
    );
}

#[test]
fn the_stream_checker_accepts_a_good_stream() {
    let s = check_full_stream(EXEC, &good_stream());
    assert_eq!(s.terminal_type(), "query_completed");
    assert_eq!(s.rows.len(), 7);
    assert_eq!(s.chunks, 3);
    assert_eq!(s.progress, vec![5, 50]);
}

#[test]
fn the_stream_checker_rejects_defects() {
    let good = good_stream();

    let mut f = good.clone();
    f.remove(4);
    rejects("a seq gap", f);

    let mut f = good.clone();
    f.insert(4, f[3].clone());
    renumber(&mut f);
    rejects("a chunk delivered twice", f);

    let mut f = good.clone();
    f[5]["payload"]["chunkIndex"] = json!(5);
    rejects("a chunkIndex gap", f);

    let mut f = good.clone();
    f[4]["payload"]["progress"] = json!(3);
    rejects("decreasing progress", f);

    let mut f = good.clone();
    f[4]["payload"]["progress"] = json!(101);
    rejects("progress over 100", f);

    let mut f = good.clone();
    f.swap(0, 1);
    renumber(&mut f);
    rejects("query_started not first", f);

    let mut f = good.clone();
    f.push(ev(
        10,
        "query_progress",
        json!({"progress": 100, "step": "done"}),
    ));
    rejects("an event after the terminal one", f);

    let mut f = good.clone();
    f.pop();
    rejects("no terminal event", f);

    let mut f = good.clone();
    f[7]["payload"]["totalRows"] = json!(8);
    rejects("a wrong data_stream_complete.totalRows", f);

    let mut f = good.clone();
    f[7]["payload"]["chunks"] = json!(2);
    rejects("a wrong data_stream_complete.chunks", f);

    let mut f = good.clone();
    f[8]["payload"]["result"]["rowCount"] = json!(6);
    rejects("a wrong result.rowCount", f);

    let mut f = good.clone();
    f[3]["payload"]["data"][1] = json!([2]);
    rejects("an array row in an objects stream", f);

    let mut f = good.clone();
    f[5]["payload"]["data"] = json!([{"n": 4}, {"n": 5}]);
    f[6]["payload"]["data"] = json!([{"n": 6}, {"n": 7}]);
    rejects("a short chunk before the last", f);

    let mut f = good.clone();
    f[2]["payload"]["totalRows"] = json!(100);
    f[2]["payload"]["totalRowsExact"] = json!(true);
    rejects("a wrong exact totalRows in data_stream_start", f);

    let mut f = good.clone();
    f[2]["payload"]["totalRows"] = json!(null);
    rejects("a null totalRows in data_stream_start", f);

    let mut f = good.clone();
    f[2]["payload"]["totalRows"] = json!(3);
    rejects("an estimated totalRows not above the rows read ahead", f);

    let mut f = good.clone();
    f[2]["payload"]
        .as_object_mut()
        .unwrap()
        .remove("totalRowsExact");
    rejects("no totalRowsExact", f);

    let mut f = good.clone();
    f[4]["payload"]["progress"] = json!(100);
    rejects("progress 100 before the query completed", f);

    let mut f = good.clone();
    f[6]["payload"]["executionId"] = json!("other");
    rejects("an event of another execution", f);

    let mut f = good.clone();
    f.remove(7);
    renumber(&mut f);
    rejects("query_completed without data_stream_complete", f);
}

#[test]
fn frame_comparison_detects_differences() {
    let good = good_stream();
    assert_same_frames("same", &good, &good);
    let mut other = good.clone();
    other[3]["payload"]["data"][0]["n"] = json!(99);
    let r = catch_unwind(AssertUnwindSafe(|| assert_same_frames("x", &other, &good)));
    assert!(r.is_err(), "a changed row went unnoticed");
    let r = catch_unwind(AssertUnwindSafe(|| {
        assert_same_frames("x", &good[1..], &good)
    }));
    assert!(r.is_err(), "a missing frame went unnoticed");
}
