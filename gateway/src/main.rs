//! `gateway`: the WebSocket server. See the README for the protocol and the configuration.

mod app;
mod auth;
mod config;
mod demo_page;
mod http;
mod per_user;
mod presence;
mod state;
mod ws;

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cli = config::Cli::parse();
    let _telemetry = c2s_shared::telemetry::init(&cli.log, "chat2sql-gateway");
    tracing::info!(config = ?cli, "starting gateway");
    // Every socket is a file descriptor: take the hard limit rather than the (often 1024) soft one.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::info!(limit, "open files limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open files limit"),
    }
    app::run(cli)
}
