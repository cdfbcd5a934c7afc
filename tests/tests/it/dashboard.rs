//! The Grafana dashboard in deploy/ must chart metrics that really exist: every metric name its
//! queries use appears in a real /metrics scrape of a gateway and a worker.

use std::collections::BTreeSet;

use crate::harness::*;

/// Metric names (`c2s_…`) in a text, with the histogram series suffixes removed.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("c2s_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        names.insert(base.to_owned());
        rest = &tail[end..];
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_metric_exists() {
    let path = workspace_root().join("deploy/grafana/chat2sql-realtime.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("dashboard file"))
            .expect("dashboard is JSON");
    let mut queried = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            queried.extend(metric_names(target["expr"].as_str().expect("expr")));
        }
    }
    assert!(
        queried.len() >= 15,
        "the dashboard queries only {queried:?}"
    );

    let port = free_port();
    let cluster = Cluster::builder("dashboard")
        .gateways(1)
        .workers(1)
        .worker_args(["--metrics-bind".to_owned(), format!("127.0.0.1:{port}")])
        .start()
        .await;
    let (_, gateway) = http_get(cluster.gateway(0).addr(), "/metrics").await;
    let worker_addr = format!("127.0.0.1:{port}").parse().unwrap();
    let (_, worker) = http_get(worker_addr, "/metrics").await;
    let scraped = metric_names(&format!("{gateway}\n{worker}"));
    let missing: Vec<_> = queried.difference(&scraped).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics no process exports: {missing:?}\nexported: {scraped:?}"
    );
}
