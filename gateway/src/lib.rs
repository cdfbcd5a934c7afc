//! `c2s-gateway`: the WebSocket server as a library. The `gateway` binary parses its [`config::Cli`],
//! installs the process-wide state (tracing, the metrics recorder, the open-files limit) and runs an
//! [`Application`]; tests build one in-process on port 0. See the README for the protocol and the
//! configuration.

mod app;
mod auth;
pub mod config;
mod demo_page;
mod http;
mod links;
mod per_user;
mod presence;
mod state;
mod ws;

pub use app::{install_metrics, Application, RunningApp};
