//! The invariants every execution's event stream must satisfy ([`check_full_stream`]), and the paced
//! query the failover tests stop mid-stream.

use serde_json::Value;

use super::*;

/// 100 000 rows paced by the database (every 1000th row sleeps 50 ms): the stream lasts about 5 s, so a
/// node stopped after a few chunks really stops mid-stream.
pub const PACED_QUERY: &str = "SELECT g AS n, md5(g::text) AS h FROM generate_series(1,100000) g \
     WHERE CASE WHEN g % 1000 = 0 THEN pg_sleep(0.05) IS NOT NULL ELSE true END";
pub const PACED_ROWS: u64 = 100_000;

/// Asserts the first column of `rows` is exactly 1..=n, each value once, in order.
pub fn assert_rows_are_1_to(rows: &[Value], n: u64, what: &str) {
    assert_eq!(rows.len() as u64, n, "{what}: row count");
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(
            row[0].as_u64(),
            Some(i as u64 + 1),
            "{what}: row {i} should be n = {} (every row exactly once, in order): {row}",
            i + 1
        );
    }
}

/// What `check_full_stream` found in a complete event stream.
#[derive(Debug)]
pub struct StreamSummary {
    pub terminal: Value,
    pub started: bool,
    pub start: Option<Value>,
    pub complete: Option<Value>,
    pub columns: Vec<Value>,
    pub rows: Vec<Value>,
    pub chunks: u64,
    pub progress: Vec<u64>,
}

impl StreamSummary {
    pub fn terminal_type(&self) -> &str {
        ty(&self.terminal)
    }

    pub fn column_names(&self) -> Vec<&str> {
        self.columns
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect()
    }
}

/// Checks the invariants of an execution's whole event stream (seq 1..N, one terminal event at the end,
/// event order, progress, chunk numbering, row shapes, totals) and returns what it found.
pub fn check_full_stream(exec: &str, frames: &[Value]) -> StreamSummary {
    let ctx = || format!("execution {exec}: {}", describe(frames));
    assert!(!frames.is_empty(), "{}: no events", ctx());
    let mut started = false;
    let mut start: Option<Value> = None;
    let mut complete: Option<Value> = None;
    let mut columns: Vec<Value> = Vec::new();
    let mut row_format = String::new();
    let mut chunk_size: u64 = 0;
    let mut rows: Vec<Value> = Vec::new();
    let mut chunks: u64 = 0;
    let mut last_chunk: Option<(usize, usize)> = None;
    let mut first_chunk_len: Option<usize> = None;
    let mut progress: Vec<u64> = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        let t = ty(f);
        let p = &f["payload"];
        assert!(
            is_event(f),
            "{}: frame {i} is not an event: {}",
            ctx(),
            short(f)
        );
        assert_eq!(
            exec_of(f),
            Some(exec),
            "{}: frame {i} has another executionId",
            ctx()
        );
        assert_eq!(
            seq_of(f),
            i as u64 + 1,
            "{}: seq must run 1, 2, 3… without gaps; frame {i} is {}",
            ctx(),
            short(f)
        );
        assert!(
            p["timestamp"]
                .as_i64()
                .is_some_and(|t| t > 1_600_000_000_000),
            "{}: frame {i} needs payload.timestamp (ms since the epoch): {}",
            ctx(),
            short(f)
        );
        let last = i + 1 == frames.len();
        assert_eq!(
            is_terminal(f),
            last,
            "{}: exactly one terminal event, and it must be the last (frame {i} is {t})",
            ctx()
        );
        match t {
            "query_started" => {
                assert_eq!(i, 0, "{}: query_started must be the first event", ctx());
                started = true;
            }
            "query_progress" => {
                assert!(
                    complete.is_none(),
                    "{}: query_progress after data_stream_complete",
                    ctx()
                );
                let v = p["progress"].as_u64().unwrap_or_else(|| {
                    panic!("{}: progress must be an integer: {}", ctx(), short(f))
                });
                assert!(
                    v < 100,
                    "{}: progress {v} before the query completed (it stays below 100)",
                    ctx()
                );
                if let Some(&prev) = progress.last() {
                    assert!(
                        v >= prev,
                        "{}: progress went down from {prev} to {v}",
                        ctx()
                    );
                }
                assert!(
                    p["step"].as_str().is_some_and(|s| !s.is_empty()),
                    "{}: query_progress needs a step label: {}",
                    ctx(),
                    short(f)
                );
                progress.push(v);
            }
            "data_stream_start" => {
                assert!(started, "{}: data_stream_start before query_started", ctx());
                assert!(start.is_none(), "{}: second data_stream_start", ctx());
                columns = p["columns"]
                    .as_array()
                    .unwrap_or_else(|| panic!("{}: columns must be an array", ctx()))
                    .clone();
                for c in &columns {
                    assert!(
                        c["name"].is_string() && c["type"].is_string(),
                        "{}: a column is {{name, type}}: {c}",
                        ctx()
                    );
                }
                row_format = p["rowFormat"].as_str().unwrap_or_default().to_owned();
                assert!(
                    row_format == "objects" || row_format == "arrays",
                    "{}: rowFormat must be objects or arrays: {}",
                    ctx(),
                    short(f)
                );
                chunk_size = p["chunkSize"].as_u64().unwrap_or(0);
                assert!(
                    chunk_size > 0,
                    "{}: chunkSize must be positive: {}",
                    ctx(),
                    short(f)
                );
                start = Some(f.clone());
            }
            "data_chunk" => {
                assert!(
                    start.is_some(),
                    "{}: data_chunk before data_stream_start",
                    ctx()
                );
                assert!(
                    complete.is_none(),
                    "{}: data_chunk after data_stream_complete",
                    ctx()
                );
                assert_eq!(
                    p["chunkIndex"].as_u64(),
                    Some(chunks),
                    "{}: chunkIndex must run 0, 1, 2…: {}",
                    ctx(),
                    short(f)
                );
                let data = p["data"]
                    .as_array()
                    .unwrap_or_else(|| panic!("{}: data must be an array", ctx()));
                assert!(!data.is_empty(), "{}: empty data_chunk {}", ctx(), short(f));
                assert!(
                    data.len() as u64 <= chunk_size,
                    "{}: chunk {chunks} has {} rows > chunkSize {chunk_size}",
                    ctx(),
                    data.len()
                );
                if let Some((prev_len, prev_bytes)) = last_chunk {
                    // Only the last chunk may be short, unless the next row did not fit by bytes.
                    let next_row = data[0].to_string().len();
                    assert!(
                        prev_len as u64 == chunk_size
                            || (prev_bytes + 1 + next_row) as f64
                                > chunk_byte_budget(exec) as f64 * 0.95,
                        "{}: chunk {} has {prev_len} rows ({prev_bytes} bytes) < chunkSize {chunk_size}, \
                         yet the next row ({next_row} bytes) would have fitted",
                        ctx(),
                        chunks - 1
                    );
                }
                first_chunk_len.get_or_insert(data.len());
                last_chunk = Some((data.len(), rows_json_len(data)));
                for row in data {
                    check_row_shape(row, &columns, &row_format, &ctx);
                }
                rows.extend(data.iter().cloned());
                chunks += 1;
            }
            "data_stream_complete" => {
                assert!(
                    start.is_some(),
                    "{}: data_stream_complete before data_stream_start",
                    ctx()
                );
                assert!(complete.is_none(), "{}: second data_stream_complete", ctx());
                assert_eq!(
                    p["totalRows"].as_u64(),
                    Some(rows.len() as u64),
                    "{}: data_stream_complete.totalRows must equal the rows streamed",
                    ctx()
                );
                assert_eq!(
                    p["chunks"].as_u64(),
                    Some(chunks),
                    "{}: data_stream_complete.chunks must equal the data_chunks sent",
                    ctx()
                );
                let announced = &start.as_ref().expect("checked")["payload"];
                let total = announced["totalRows"].as_u64().unwrap_or_else(|| {
                    panic!("{}: data_stream_start.totalRows must be a number", ctx())
                });
                let first = first_chunk_len.unwrap_or(0) as u64;
                match announced["totalRowsExact"].as_bool() {
                    Some(true) => assert_eq!(
                        total,
                        rows.len() as u64,
                        "{}: an exact data_stream_start.totalRows must be the real count",
                        ctx()
                    ),
                    Some(false) => {
                        assert!(
                            total > first,
                            "{}: an estimated totalRows {total} must be above the {first} rows read ahead",
                            ctx()
                        );
                        assert!(
                            rows.len() as u64 > first,
                            "{}: totalRows is an estimate although the result ({} rows) ended within \
                             the read-ahead ({first} rows)",
                            ctx(),
                            rows.len()
                        );
                    }
                    None => panic!(
                        "{}: data_stream_start.totalRowsExact must be a boolean",
                        ctx()
                    ),
                }
                complete = Some(f.clone());
            }
            "query_completed" => {
                assert!(started, "{}: query_completed without query_started", ctx());
                assert!(
                    complete.is_some(),
                    "{}: query_completed without data_stream_complete",
                    ctx()
                );
                let r = &p["result"];
                assert_eq!(
                    r["rowCount"].as_u64(),
                    Some(rows.len() as u64),
                    "{}: result.rowCount must equal the rows streamed",
                    ctx()
                );
                assert_eq!(
                    r["columns"],
                    Value::Array(columns.clone()),
                    "{}: result.columns must equal data_stream_start.columns",
                    ctx()
                );
                assert!(
                    r["durationMs"].is_u64(),
                    "{}: result.durationMs: {}",
                    ctx(),
                    short(f)
                );
                assert!(
                    r["truncated"].is_boolean(),
                    "{}: result.truncated: {}",
                    ctx(),
                    short(f)
                );
            }
            "query_error" => {
                let e = &p["error"];
                assert!(e["code"].is_string(), "{}: error.code: {}", ctx(), short(f));
                assert!(
                    e["message"].as_str().is_some_and(|m| !m.is_empty()),
                    "{}: error.message must say what went wrong: {}",
                    ctx(),
                    short(f)
                );
            }
            "query_cancelled" => {}
            other => panic!("{}: unexpected event type {other}", ctx()),
        }
    }
    StreamSummary {
        terminal: frames.last().expect("non-empty").clone(),
        started,
        start,
        complete,
        columns,
        rows,
        chunks,
        progress,
    }
}

/// The default `C2S_MAX_CHUNK_BYTES` (a test that changes it checks chunk sizes itself).
pub const MAX_CHUNK_BYTES: usize = 1024 * 1024;

/// Bytes of rows one chunk may carry (the worker keeps room for the frame's envelope).
fn chunk_byte_budget(exec: &str) -> usize {
    MAX_CHUNK_BYTES - 256 - exec.len()
}

/// Bytes of a chunk's rows as JSON, comma-separated.
fn rows_json_len(rows: &[Value]) -> usize {
    rows.iter().map(|r| r.to_string().len()).sum::<usize>() + rows.len().saturating_sub(1)
}

fn check_row_shape(row: &Value, columns: &[Value], format: &str, ctx: &dyn Fn() -> String) {
    match format {
        "arrays" => {
            let a = row
                .as_array()
                .unwrap_or_else(|| panic!("{}: rowFormat arrays, but a row is {row}", ctx()));
            assert_eq!(
                a.len(),
                columns.len(),
                "{}: row {row} has the wrong arity",
                ctx()
            );
        }
        _ => {
            let o = row
                .as_object()
                .unwrap_or_else(|| panic!("{}: rowFormat objects, but a row is {row}", ctx()));
            for c in columns {
                let name = c["name"].as_str().unwrap_or_default();
                assert!(
                    o.contains_key(name),
                    "{}: row {row} lacks column {name}",
                    ctx()
                );
            }
            assert!(
                o.len() <= columns.len(),
                "{}: row {row} has extra keys",
                ctx()
            );
        }
    }
}

/// Asserts `got` are exactly `expected`, frame by frame (JSON equality), with a readable message.
pub fn assert_same_frames(what: &str, got: &[Value], expected: &[Value]) {
    let seqs = |fs: &[Value]| -> Vec<Option<u64>> {
        fs.iter()
            .map(|f| f.get("seq").and_then(Value::as_u64))
            .collect()
    };
    assert_eq!(
        seqs(got),
        seqs(expected),
        "{what}: the seqs differ\n  got:      {}\n  expected: {}",
        describe(got),
        describe(expected)
    );
    for (i, (g, e)) in got.iter().zip(expected).enumerate() {
        assert!(
            g == e,
            "{what}: frame {i} (seq {:?}) differs\n  got:      {}\n  expected: {}",
            g.get("seq"),
            short(g),
            short(e)
        );
    }
}
