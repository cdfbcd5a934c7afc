//! `loadgen`: drives running gateways with real WebSocket clients and prints what it measured.
//!
//! Scenario `fanout`: `--participants` clients spread over `--sessions` collaboration sessions and over the
//! given gateways send chat messages at `--rate` messages/s in total for `--seconds`; every receiver
//! measures send-to-receive latency (the sender's clock: all clients live in this process). Prints
//! p50/p90/p99/p99.9/max and delivered messages/s, and checks nothing was lost.
//!
//! Scenario `failover`: participants on gateway A, chat sent from gateway B, kill -9 of A; measures when
//! every participant has resumed on B and checks no session event was lost or duplicated.
//!
//! Scenario `connections`: idle sockets on one gateway and its resident memory per socket.
//!
//! Scenario `parse`: the client's frame parsing alone, typed against untyped, no server.
//!
//! Every scenario prints a table; `--json <file>` writes the figures too, `--pid` adds servers' RSS.
//!
//! Scenario `stream` (`stream.rs`): runs one query (default: 1M rows × 5 columns) `--runs` times and reports, per run,
//! the time to ack, to `query_started`, to the first `data_chunk` (also measured from `query_started`),
//! the total time, rows/s and MB/s received. It checks the row count and seq order, and asserts no timings.

use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde_json::{json, Value};

#[derive(Parser)]
#[command(about = "Load generator for the Chat2SQL Realtime gateway")]
struct Cli {
    /// Gateway base URL, e.g. ws://127.0.0.1:8080
    #[arg(long, default_value = "ws://127.0.0.1:8080")]
    url: String,
    /// Also write the figures as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Server processes (gateways, workers, Redis…) whose resident memory is reported at the end.
    #[arg(long = "pid", value_delimiter = ',')]
    pids: Vec<u32>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// The client's parsing alone: typed frames against `serde_json::Value`, no server.
    Parse {
        /// About how many 500-row frames' worth of rows to parse each way.
        #[arg(long, default_value_t = 2000)]
        rounds: usize,
    },
    /// Idle connections: open `--count` sockets, hold them, report the gateway's memory per connection.
    Connections {
        #[arg(long, default_value_t = 10_000)]
        count: usize,
        /// Connections opened at once.
        #[arg(long, default_value_t = 256)]
        parallel: usize,
        /// Seconds to hold them open once all are connected.
        #[arg(long, default_value_t = 5)]
        hold_secs: u64,
        /// The gateway's process id, to read its RSS from /proc.
        #[arg(long)]
        gateway_pid: Option<u32>,
        /// Loopback source addresses to spread over (127.0.0.1 .. 127.0.0.N), past one address's ports.
        #[arg(long, default_value_t = 4)]
        source_addresses: u8,
        /// The endpoint to hold sockets on: `/ws/query` is a browser tab with nothing running;
        /// `/ws/monitoring` sockets also get a `node_status` every interval.
        #[arg(long, default_value = "/ws/query")]
        endpoint: String,
    },
    /// Collaboration fan-out: chat latency across gateway nodes.
    Fanout {
        /// Gateways to spread the participants over (comma-separated base URLs); default: --url.
        #[arg(long, value_delimiter = ',')]
        gateways: Vec<String>,
        #[arg(long, default_value_t = 100)]
        participants: usize,
        #[arg(long, default_value_t = 1)]
        sessions: usize,
        /// Chat messages per second, all senders together.
        #[arg(long, default_value_t = 100)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Also print, for every second of the run (by send time), how many deliveries took over
        /// 5 and 50 ms and the slowest: a tail that is a transient shows at the start.
        #[arg(long)]
        timeline: bool,
    },
    /// Gateway failover: participants on gateway A, chat from gateway B, kill -9 of A; every participant
    /// resumes on B (`?afterSeq=`) and nothing is lost.
    Failover {
        /// Gateway A (its participants are cut), e.g. ws://127.0.0.1:8081
        #[arg(long)]
        from: String,
        /// Gateway B (where they resume)
        #[arg(long)]
        to: String,
        /// Process id of gateway A, killed with SIGKILL.
        #[arg(long)]
        kill_pid: u32,
        #[arg(long, default_value_t = 5_000)]
        clients: usize,
        #[arg(long, default_value_t = 50)]
        sessions: usize,
        /// Chat messages per second from B, all sessions together.
        #[arg(long, default_value_t = 100)]
        rate: u64,
        #[arg(long, default_value_t = 2)]
        before_kill_secs: u64,
        #[arg(long, default_value_t = 5)]
        after_kill_secs: u64,
        /// Joins in flight at once.
        #[arg(long, default_value_t = 256)]
        parallel: usize,
        /// Loopback source addresses to spread over (127.0.0.1 .. 127.0.0.N).
        #[arg(long, default_value_t = 4)]
        source_addresses: u8,
    },
    /// Stream a large result end to end and measure rows/s and time to first chunk.
    Stream(stream::Options),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let figures = match cli.scenario {
        Scenario::Parse { rounds } => parse::run(rounds)?,
        Scenario::Connections {
            count,
            parallel,
            hold_secs,
            gateway_pid,
            source_addresses,
            endpoint,
        } => {
            connections::run(
                &cli.url,
                &endpoint,
                count,
                parallel,
                hold_secs,
                gateway_pid,
                source_addresses,
            )
            .await?
        }
        Scenario::Failover {
            from,
            to,
            kill_pid,
            clients,
            sessions,
            rate,
            before_kill_secs,
            after_kill_secs,
            parallel,
            source_addresses,
        } => {
            failover::run(failover::Options {
                from,
                to,
                clients,
                sessions,
                kill_pid,
                rate,
                before_kill_secs,
                after_kill_secs,
                parallel,
                source_addresses,
            })
            .await?
        }
        Scenario::Fanout {
            gateways,
            participants,
            sessions,
            rate,
            seconds,
            timeline,
        } => {
            let gateways = if gateways.is_empty() {
                vec![cli.url.clone()]
            } else {
                gateways
            };
            let shape = fanout::Shape {
                participants,
                sessions: sessions.max(1),
                rate,
                seconds,
            };
            fanout::run(&gateways, shape, timeline).await?
        }
        Scenario::Stream(options) => stream::run(&cli.url, options).await?,
    };
    finish(figures, &cli.pids, cli.json.as_deref())
}

/// Adds the servers' memory to the figures, prints it, and writes the JSON file if asked.
fn finish(
    mut figures: Value,
    pids: &[u32],
    json_path: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let rss: Vec<Value> = pids
        .iter()
        .map(|pid| json!({"pid": pid, "rss_kib": connections::rss_kib(*pid)}))
        .collect();
    for r in &rss {
        println!("server pid {}: RSS {} KiB", r["pid"], r["rss_kib"]);
    }
    figures["server_rss"] = Value::Array(rss);
    if let Some(path) = json_path {
        std::fs::write(path, serde_json::to_string_pretty(&figures)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("figures written to {}", path.display());
    }
    Ok(())
}

mod baseline;
mod connections;
mod failover;
mod fanout;
mod frames;
mod net;
mod parse;
mod stream;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
