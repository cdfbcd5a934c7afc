//! Scenario `stream`: runs one query `--runs` times and reports, per run, the time to ack, to
//! `query_started`, to the first `data_chunk` (also measured from `query_started`), the total time,
//! rows/s and MB/s received; with `--pg-url`, psql COPY of the same query as the baseline, in the same
//! run. It checks the row count and seq order, and asserts no timings.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use c2s_protocol::{ClientMessage, ExecuteQuery, QueryOptions, RowFormat, ServerMessage};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::{baseline, frames, ms};

/// What to run, and how often.
#[derive(clap::Args)]
pub struct Options {
    /// The query to run.
    #[arg(
        long,
        default_value = "SELECT g AS id, g * 2 AS doubled, md5(g::text) AS hash, g % 7 AS bucket, now() AS at FROM generate_series(1, 1000000) g"
    )]
    pub query: String,
    /// Rows per chunk.
    #[arg(long, default_value_t = 5000)]
    pub chunk_size: u32,
    /// `objects` or `arrays`.
    #[arg(long, default_value = "arrays", value_parser = frames::row_format)]
    pub row_format: RowFormat,
    /// Row cap asked for.
    #[arg(long, default_value_t = 1_000_000)]
    pub max_rows: u64,
    /// How many times to run it (one after the other).
    #[arg(long, default_value_t = 3)]
    pub runs: u32,
    /// Give up on a run after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout_secs: u64,
    /// How the client reads a `data_chunk`: `count` checks its JSON and counts its rows without
    /// building them (like psql's COPY into /dev/null, so the figure is the system's, not the
    /// client's JSON library's); `typed` builds every row as a `serde_json::Value`, as a client that
    /// uses each row would.
    #[arg(long, default_value = "count", value_parser = ["count", "typed"])]
    pub decode: String,
    /// PostgreSQL URL of the workers' database: adds the baselines of the same run (psql COPY of
    /// the same query to /dev/null, and PostgreSQL's own time to its first row).
    #[arg(long)]
    pub pg_url: Option<String>,
}

struct RunFigures {
    ack: Duration,
    started: Duration,
    first_chunk: Duration,
    first_chunk_after_started: Duration,
    total: Duration,
    rows: u64,
    bytes: u64,
}

/// Runs the scenario against the gateway at `base_url`; returns the figures.
pub async fn run(base_url: &str, o: Options) -> anyhow::Result<Value> {
    let url = format!("{}/ws/query", base_url.trim_end_matches('/'));
    println!(
        "scenario stream: {url}\nquery: {}\nchunkSize {}, rowFormat {:?}, runs {}\n",
        o.query, o.chunk_size, o.row_format, o.runs
    );
    println!(
        "{:>4} {:>9} {:>11} {:>13} {:>16} {:>10} {:>10} {:>12} {:>9}",
        "run",
        "ack ms",
        "started ms",
        "1st chunk ms",
        "1st after start",
        "total ms",
        "rows",
        "rows/s",
        "MB/s"
    );
    let mut all = Vec::new();
    for run in 1..=o.runs {
        let options = QueryOptions {
            chunk_size: Some(o.chunk_size),
            row_format: Some(o.row_format),
            max_rows: Some(o.max_rows),
            ..QueryOptions::default()
        };
        let f = tokio::time::timeout(
            Duration::from_secs(o.timeout_secs),
            stream_once(&url, &o.query, options, o.decode == "typed"),
        )
        .await
        .context("run timed out")??;
        println!(
            "{:>4} {:>9.1} {:>11.1} {:>13.1} {:>16.1} {:>10.0} {:>10} {:>12.0} {:>9.1}",
            run,
            ms(f.ack),
            ms(f.started),
            ms(f.first_chunk),
            ms(f.first_chunk_after_started),
            ms(f.total),
            f.rows,
            f.rows as f64 / f.total.as_secs_f64(),
            f.bytes as f64 / 1e6 / f.total.as_secs_f64()
        );
        all.push(f);
    }
    print_summary(&all);
    let mut figures = figures_of(&o, &all);
    if let Some(pg) = &o.pg_url {
        let copy = baseline::psql_copy(pg, &o.query)?;
        let first_row = baseline::first_row_ms(pg, &o.query)?;
        // The same rows as the runs (psql has no row cap: the query itself must end there).
        let rows = all.first().map_or(o.max_rows, |f| f.rows);
        let copy_rate = rows as f64 / copy.as_secs_f64();
        let best = all
            .iter()
            .map(|f| f.rows as f64 / f.total.as_secs_f64())
            .fold(0.0, f64::max);
        println!(
            "baseline: psql COPY {:.0} ms ({copy_rate:.0} rows/s for {rows} rows): best run = {:.0} % of it; PostgreSQL's first row after {first_row:.1} ms",
            ms(copy),
            100.0 * best / copy_rate
        );
        figures["baseline"] = json!({"psql_copy_ms": ms(copy), "psql_copy_rows_per_sec": copy_rate,
            "best_vs_copy_percent": 100.0 * best / copy_rate, "pg_first_row_ms": first_row});
    }
    Ok(figures)
}

/// Execution events come numbered 1, 2, 3, … without a gap.
fn check_seq(last_seq: &mut u64, seq: Option<u64>) -> anyhow::Result<()> {
    if let Some(seq) = seq {
        if seq != *last_seq + 1 {
            bail!("seq gap: {last_seq} then {seq}");
        }
        *last_seq = seq;
    }
    Ok(())
}

/// The best rate and the median time to the first chunk.
fn print_summary(all: &[RunFigures]) {
    if let Some(best) = all
        .iter()
        .map(|f| f.rows as f64 / f.total.as_secs_f64())
        .reduce(f64::max)
    {
        let mut firsts: Vec<f64> = all
            .iter()
            .map(|f| ms(f.first_chunk_after_started))
            .collect();
        firsts.sort_by(f64::total_cmp);
        println!(
            "\nbest rows/s: {best:.0}; median first chunk after query_started: {:.1} ms",
            firsts[firsts.len() / 2]
        );
    }
}

/// The runs as JSON.
fn figures_of(o: &Options, all: &[RunFigures]) -> Value {
    let runs: Vec<Value> = all
        .iter()
        .map(|f| {
            json!({
                "ack_ms": ms(f.ack), "started_ms": ms(f.started), "first_chunk_ms": ms(f.first_chunk),
                "first_chunk_after_started_ms": ms(f.first_chunk_after_started),
                "total_ms": ms(f.total), "rows": f.rows, "bytes": f.bytes,
                "rows_per_sec": f.rows as f64 / f.total.as_secs_f64(),
            })
        })
        .collect();
    let figures = json!({"scenario": "stream", "query": o.query, "chunk_size": o.chunk_size,
           "row_format": o.row_format, "decode": o.decode, "runs": runs});
    figures
}

async fn stream_once(
    url: &str,
    query: &str,
    options: QueryOptions,
    typed: bool,
) -> anyhow::Result<RunFigures> {
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let t0 = Instant::now();
    let request = ClientMessage::ExecuteQuery(ExecuteQuery {
        query: query.to_owned(),
        options: Some(options),
    });
    let frame = frames::client_text(request, None);
    ws.send(Message::text(frame)).await?;
    let (mut ack, mut started, mut first_chunk) = (None, None, None);
    let (mut rows, mut bytes, mut last_seq) = (0u64, 0u64, 0u64);
    while let Some(msg) = ws.next().await {
        let text = match msg? {
            Message::Text(t) => t,
            Message::Close(c) => bail!("closed by server: {c:?}"),
            _ => continue,
        };
        bytes += text.len() as u64;
        if !typed {
            if let Some((seq, n)) = frames::chunk_row_count(&text) {
                check_seq(&mut last_seq, seq)?;
                first_chunk.get_or_insert(t0.elapsed());
                rows += n;
                continue;
            }
        }
        let frame = frames::parse(&text)?;
        check_seq(&mut last_seq, frame.seq)?;
        match frame.message {
            ServerMessage::Ack(_) => ack = Some(t0.elapsed()),
            ServerMessage::QueryStarted(_) => started = Some(t0.elapsed()),
            ServerMessage::DataChunk(chunk) => {
                first_chunk.get_or_insert(t0.elapsed());
                rows += chunk.data.len() as u64;
            }
            ServerMessage::QueryCompleted(done) => {
                let total = t0.elapsed();
                let expected = done.result.row_count;
                if expected != rows {
                    bail!("received {rows} rows, query_completed says {expected}");
                }
                let _ = ws.close(None).await;
                let started = started.unwrap_or_default();
                let first_chunk = first_chunk.unwrap_or(total);
                return Ok(RunFigures {
                    ack: ack.unwrap_or_default(),
                    started,
                    first_chunk,
                    first_chunk_after_started: first_chunk.saturating_sub(started),
                    total,
                    rows,
                    bytes,
                });
            }
            ServerMessage::QueryError(_)
            | ServerMessage::QueryCancelled(_)
            | ServerMessage::Error(_) => {
                bail!("query failed: {text}")
            }
            _ => {}
        }
    }
    bail!("connection ended before query_completed")
}
