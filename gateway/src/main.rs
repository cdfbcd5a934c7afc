//! `gateway`: the WebSocket server. See the README for the protocol and the configuration.

mod app;
mod auth;
mod config;
mod http;
mod presence;
mod state;
mod ws;

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cli = config::Cli::parse();
    let _telemetry = c2s_shared::telemetry::init(&cli.log, "chat2sql-gateway");
    tracing::info!(config = ?cli, "starting gateway");
    app::run(cli)
}
