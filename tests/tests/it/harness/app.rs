//! In-process gateways (zero2prod's `spawn_app`): a [`c2s_gateway::Application`] built from the same
//! flags a gateway process would get, bound on port 0 and served on a thread of its own, so a suite that
//! never kills or signals a gateway skips the process start. Workers stay processes.
//!
//! Invariants: the flags come only from the cluster (like a process, whose `C2S_*` environment is
//! cleared, except that clap still reads the `C2S_*` variables of the test process: the harness never
//! sets any); nothing process-wide is installed (no tracing subscriber, no metrics recorder: `/metrics`
//! of an in-process gateway is empty, so metrics suites use processes); an embedded in-process gateway
//! gets its own SQLite file under the cluster's log directory (a process's default is per pid, which all
//! in-process gateways share). Stopping (on drop) drains like a SIGTERM and waits until the gateway and
//! its bus are down, before the cluster's Redis keys and database are removed.

use std::path::Path;

use c2s_gateway::config::Cli;
use c2s_gateway::Application;
use clap::Parser as _;
use metrics_exporter_prometheus::PrometheusBuilder;

use super::{Cluster, ClusterBuilder, Node, NodeKind};

impl ClusterBuilder {
    /// The cluster's gateways run in this test process instead of as processes.
    pub fn in_process(mut self) -> Self {
        self.in_process = true;
        self
    }
}

/// An embedded gateway (in-process bus and worker on SQLite) running in this test process.
pub async fn spawn_app(test_name: &str) -> Cluster {
    Cluster::builder(test_name)
        .embedded()
        .in_process()
        .start()
        .await
}

/// Starts gateway `name` with `args`: in this process when `in_process`, else as a process.
pub(super) async fn start_gateway(
    in_process: bool,
    name: String,
    mut args: Vec<String>,
    log_dir: &Path,
) -> Node {
    if !in_process {
        return Node::spawn(NodeKind::Gateway, name, args, log_dir).await;
    }
    if args.iter().any(|a| a == "--embedded") && !args.iter().any(|a| a == "--sqlite-path") {
        let db = log_dir.join(format!("{name}.db"));
        // A fresh demo database, as a process's own default would be.
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
        }
        args.extend(["--sqlite-path".into(), db.display().to_string()]);
    }
    let log_path = log_dir.join(format!("{name}.log"));
    let _ = std::fs::write(
        &log_path,
        "in-process gateway: it logs nowhere (the test process installs no tracing subscriber)\n",
    );
    let cli = Cli::try_parse_from(std::iter::once("gateway".to_owned()).chain(args.clone()))
        .unwrap_or_else(|e| panic!("{name}: bad gateway flags {args:?}: {e}"));
    // A recorder that is never installed: its handle renders nothing.
    let metrics = PrometheusBuilder::new().build_recorder().handle();
    let built = tokio::task::spawn_blocking(move || Application::build(cli, metrics))
        .await
        .expect("building the gateway panicked");
    let app = built.unwrap_or_else(|e| panic!("{name} ({}) did not start: {e:#}", args.join(" ")));
    Node::in_process(name, args, log_path, app.spawn())
}
