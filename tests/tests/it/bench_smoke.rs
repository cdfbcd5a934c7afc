//! The benchmark scenarios still run (tiny sizes, no timing assertions): `loadgen stream`,
//! `loadgen fanout`, `loadgen connections` and `loadgen failover` against a real two-gateway cluster, each checking its own results (row counts, seq
//! order, no lost chat message).

use std::time::Duration;

use crate::harness::*;

async fn loadgen(args: &[&str]) -> String {
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(&binaries().loadgen)
            .args(args)
            .output(),
    )
    .await
    .expect("loadgen timed out")
    .expect("loadgen runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "loadgen {args:?} failed: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_scenarios_run() {
    // Measures timing and load: not beside another heavy test (harness/lock.rs).
    let _serial = exclusive().await;
    let cluster = Cluster::builder("bench_smoke")
        .gateways(2)
        .workers(1)
        .start()
        .await;
    let a = format!("ws://{}", cluster.gateway(0).addr());
    let b = format!("ws://{}", cluster.gateway(1).addr());

    let out = loadgen(&[
        "--url",
        &a,
        "stream",
        "--query",
        "SELECT g AS id, md5(g::text) AS hash FROM generate_series(1, 5000) g",
        "--chunk-size",
        "500",
        "--runs",
        "2",
    ])
    .await;
    assert!(out.contains("best rows/s"), "{out}");
    assert_eq!(
        out.matches(" 5000 ").count(),
        2,
        "two runs of 5000 rows:\n{out}"
    );

    let out = loadgen(&[
        "fanout",
        "--gateways",
        &format!("{a},{b}"),
        "--participants",
        "6",
        "--rate",
        "30",
        "--seconds",
        "1",
    ])
    .await;
    assert!(out.contains("lost 0"), "{out}");
    assert!(out.contains("latency ms: p50"), "{out}");

    let pid = cluster.gateway(0).pid().expect("gateway pid").to_string();
    let out = loadgen(&[
        "--url",
        &a,
        "connections",
        "--count",
        "200",
        "--hold-secs",
        "0",
        "--gateway-pid",
        &pid,
    ])
    .await;
    assert!(out.contains("connected 200 of 200"), "{out}");
    assert!(out.contains("KiB per connection"), "{out}");

    // Last: it kills gateway A. Its participants resume on B; the JSON figures say so.
    let json_path =
        std::env::temp_dir().join(format!("c2s-failover-{}.json", uuid::Uuid::new_v4()));
    let out = loadgen(&[
        "--json",
        json_path.to_str().expect("utf-8 temp path"),
        "failover",
        "--from",
        &a,
        "--to",
        &b,
        "--kill-pid",
        &pid,
        "--clients",
        "40",
        "--sessions",
        "4",
        "--rate",
        "20",
        "--before-kill-secs",
        "1",
        "--after-kill-secs",
        "2",
    ])
    .await;
    let figures: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).expect("the JSON figures"))
            .expect("valid JSON");
    let _ = std::fs::remove_file(&json_path);
    assert_eq!(figures["resumed"], 40, "{out}");
    assert_eq!(figures["chat_lost"], 0, "{out}");
    assert_eq!(figures["seq_gaps"], 0, "{out}");
    assert_eq!(figures["duplicates"], 0, "{out}");
    assert!(figures["chat_sent"].as_u64().unwrap_or(0) > 0, "{out}");
}
