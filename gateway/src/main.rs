//! `gateway`: the WebSocket server. See the README for the protocol and the configuration.

use c2s_gateway::config::Cli;
use c2s_gateway::Application;
use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _telemetry = c2s_shared::telemetry::init(&cli.log, "chat2sql-gateway");
    tracing::info!(config = ?cli, "starting gateway");
    // Every socket is a file descriptor: take the hard limit rather than the (often 1024) soft one.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::info!(limit, "open files limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open files limit"),
    }
    let metrics = c2s_gateway::install_metrics(&cli)?;
    Application::build(cli, metrics)?.run_until_stopped()
}
