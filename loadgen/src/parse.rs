//! Scenario `parse`: how fast loadgen's client reads frames, typed (`ServerFrame`, what every scenario
//! uses) against the untyped `serde_json::Value` it used before, on the same synthetic frames in the same
//! run. No server: it isolates the client's share of `loadgen stream`'s figure.

use std::time::Instant;

use serde_json::{json, Value};

use crate::frames;

/// A `data_chunk` of `rows` rows in the default layout (objects) or arrays, 5 columns like the
/// stream benchmark's table (int4, int4, text md5, int4, timestamptz).
fn chunk_frame(rows: usize, objects: bool) -> String {
    let data: Vec<Value> = (0..rows)
        .map(|i| {
            let md5 = format!("{:032x}", (i as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let ts = "2026-12-02T03:04:05.123456Z";
            if objects {
                json!({"id": i, "a": i * 7, "b": md5, "c": i % 1000, "d": ts})
            } else {
                json!([i, i * 7, md5, i % 1000, ts])
            }
        })
        .collect();
    json!({"type": "data_chunk", "payload": {"executionId": "00000000-0000-4000-8000-000000000000",
        "chunkIndex": 3, "data": data, "isLast": false, "timestamp": 1_764_644_645_000i64}, "seq": 7})
    .to_string()
}

/// Rows per second parsed by `parse` over `frame` for about `rounds` frames.
fn rate(frame: &str, rows: usize, rounds: usize, parse: impl Fn(&str) -> usize) -> f64 {
    let start = Instant::now();
    let mut seen = 0usize;
    for _ in 0..rounds {
        seen += parse(frame);
    }
    assert_eq!(seen, rows * rounds, "every row parsed");
    (rows * rounds) as f64 / start.elapsed().as_secs_f64()
}

/// Prints rows/s both ways for objects/500 and arrays/5000, and returns the figures.
pub fn run(rounds: usize) -> anyhow::Result<Value> {
    let typed = |text: &str| match frames::parse(text).map(|f| f.message) {
        Ok(c2s_protocol::ServerMessage::DataChunk(chunk)) => chunk.data.len(),
        _ => 0,
    };
    let untyped = |text: &str| {
        let v: Value = serde_json::from_str(text).unwrap_or_default();
        v["payload"]["data"].as_array().map_or(0, Vec::len)
    };
    println!(
        "{:>8} {:>6} {:>16} {:>16} {:>8}",
        "format", "rows", "typed rows/s", "Value rows/s", "ratio"
    );
    let mut out = Vec::new();
    for (objects, rows) in [(true, 500), (false, 5000)] {
        let frame = chunk_frame(rows, objects);
        let n = (rounds * 500 / rows).max(1);
        // Warm up both, then measure them alternately.
        rate(&frame, rows, n / 10 + 1, typed);
        rate(&frame, rows, n / 10 + 1, untyped);
        let t = rate(&frame, rows, n, typed);
        let u = rate(&frame, rows, n, untyped);
        let format = if objects { "objects" } else { "arrays" };
        println!("{format:>8} {rows:>6} {t:>16.0} {u:>16.0} {:>8.2}", t / u);
        out.push(
            json!({"format": format, "rows": rows, "typed_rows_per_sec": t,
            "value_rows_per_sec": u, "frame_bytes": frame.len()}),
        );
    }
    Ok(json!({"scenario": "parse", "results": out}))
}
