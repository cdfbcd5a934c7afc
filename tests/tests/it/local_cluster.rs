//! `deploy/local-cluster.sh`: the compose topology without Docker (nginx in front of 2 gateways, 2 workers)
//! is brought up, a WebSocket client runs a query through the load balancer, the gateway it landed on is
//! killed with SIGKILL, the client reconnects through the load balancer (nginx moves on to the surviving
//! gateway), resumes, and gets every row exactly once; `down` stops every process.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::harness::*;
use serde_json::json;

const PROCESSES: [&str; 5] = ["gateway-1", "gateway-2", "worker-1", "worker-2", "lb"];

/// One cluster of the script, in its own state directory, ports, Redis prefix and database; `down` runs
/// on drop, then the harness's guards remove its keys and database, so a failing test leaves nothing.
struct LocalCluster {
    dir: PathBuf,
    env: Vec<(String, String)>,
    lb_port: u16,
    gateway_ports: [u16; 2],
    // Dropped after `down` (fields drop after `Drop::drop`).
    _keys: RedisPrefixGuard,
    /// Created empty here; the script loads the demo data into it.
    _db: TestDb,
}

impl LocalCluster {
    async fn new() -> LocalCluster {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let dir = std::env::temp_dir().join(format!("c2s-local-cluster-{id}"));
        let (lb_port, gateway_ports) = (free_port(), [free_port(), free_port()]);
        let metrics = [free_port(), free_port()];
        let prefix = format!("t-lc-{id}");
        let db = TestDb::create().await;
        let bin_dir = binaries()
            .gateway
            .parent()
            .expect("the binaries' directory")
            .to_path_buf();
        let env = vec![
            ("LC_DIR", dir.display().to_string()),
            ("LC_LB_PORT", lb_port.to_string()),
            (
                "LC_GATEWAY_PORTS",
                format!("{} {}", gateway_ports[0], gateway_ports[1]),
            ),
            ("LC_METRICS_PORTS", format!("{} {}", metrics[0], metrics[1])),
            ("LC_REDIS_URL", redis_url()),
            ("LC_KEY_PREFIX", prefix.clone()),
            ("LC_PG_URL", pg_server_url()),
            ("LC_DB", db.name.clone()),
            ("LC_BIN_DIR", bin_dir.display().to_string()),
            // scripts/test.sh has started the services and installed nginx already.
            ("LC_SKIP_SERVICES", "1".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        LocalCluster {
            dir,
            env,
            lb_port,
            gateway_ports,
            _keys: RedisPrefixGuard::new(&prefix),
            _db: db,
        }
    }

    /// Runs `deploy/local-cluster.sh <args>`; returns (success, stdout + stderr).
    fn script(&self, args: &[&str]) -> (bool, String) {
        let script = workspace_root().join("deploy/local-cluster.sh");
        let out = Command::new("bash")
            .arg(&script)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    fn ws_url(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{path}", self.lb_port)
    }

    fn pid(&self, name: &str) -> Option<u32> {
        let text = std::fs::read_to_string(self.dir.join(format!("{name}.pid"))).ok()?;
        text.trim().parse().ok()
    }

    fn log_tail(&self, name: &str) -> String {
        let text =
            std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        let _ = self.script(&["down"]);
        if !keep_artifacts() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_cluster_survives_a_gateway_kill_behind_the_load_balancer() {
    let cluster = LocalCluster::new().await;
    let (ok, out) = cluster.script(&["up"]);
    assert!(ok, "local-cluster.sh up failed:\n{out}");
    for name in PROCESSES {
        let pid = cluster
            .pid(name)
            .unwrap_or_else(|| panic!("no pid file for {name}:\n{out}"));
        assert!(alive(pid), "{name} (pid {pid}) is not running after up");
    }

    // The demo page and the probes answer through the load balancer.
    let lb = format!("127.0.0.1:{}", cluster.lb_port)
        .parse()
        .expect("addr");
    let (status, page) = http_get(lb, "/").await;
    assert_eq!(status, 200, "the demo page through the load balancer");
    assert!(page.contains("<html") || page.contains("<!doctype") || page.contains("<!DOCTYPE"));
    assert_eq!(http_get(lb, "/readyz").await.0, 200);

    // A query through the load balancer, on the demo database, as the read-only role.
    let mut first = Client::connect(&cluster.ws_url("/ws/query?user=alice"), None).await;
    let node = first
        .node
        .clone()
        .expect("the gateway names itself in x-c2s-node");
    assert!(node == "gateway-1" || node == "gateway-2", "node {node}");
    let demo = first
        .execute("SELECT count(*) AS n FROM orders", None, Some("lc-demo"))
        .await;
    let frames = first.collect_execution(&demo).await;
    let s = check_full_stream(&demo, &frames);
    assert_eq!(
        s.terminal_type(),
        "query_completed",
        "{}",
        describe(&frames)
    );
    assert_eq!(s.rows.len(), 1);
    let count = &s.rows[0];
    let count = count
        .get(0)
        .or_else(|| count.get("n"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        count,
        json!(1000),
        "the demo data is loaded: {}",
        describe(&frames)
    );

    // A long stream; kill -9 its gateway mid-way.
    let (exec, mut frames) = first.start_paced_stream("lc-paced", 10).await;
    let pid = cluster.pid(&node).expect("pid of the gateway");
    let (ok, out) = cluster.script(&["kill", &node]);
    assert!(ok, "local-cluster.sh kill {node}: {out}");
    let (rest, _code) = first.recv_until_close(Duration::from_secs(10)).await;
    frames.extend(rest.into_iter().filter(|f| is_event_of(f, &exec)));
    for _ in 0..100 {
        if !alive(pid) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!alive(pid), "{node} still runs after SIGKILL");

    // Reconnect through the same load balancer address: nginx skips the dead gateway.
    let mut second = Client::connect(&cluster.ws_url("/ws/query?user=alice"), None).await;
    let other = second.node.clone().expect("x-c2s-node");
    assert_ne!(
        other, node,
        "the load balancer must route to the surviving gateway"
    );
    let last = seq_of(frames.last().expect("non-empty"));
    second.resume(&exec, last).await;
    let replay = second
        .collect_execution_within(&exec, Duration::from_secs(120))
        .await;
    assert_eq!(
        seq_of(&replay[0]),
        last + 1,
        "the resume continues after afterSeq"
    );
    frames.extend(replay);
    let s = check_full_stream(&exec, &frames);
    assert_eq!(
        s.terminal_type(),
        "query_completed",
        "{}\ngateway log:\n{}",
        short(&s.terminal),
        cluster.log_tail(&other)
    );
    assert_rows_are_1_to(
        &s.rows,
        PACED_ROWS,
        "after the resume through the load balancer",
    );

    // `down` stops everything, and nothing listens on the cluster's ports any more.
    let pids: Vec<(&str, u32)> = PROCESSES
        .iter()
        .filter_map(|n| cluster.pid(n).map(|p| (*n, p)))
        .collect();
    let (ok, out) = cluster.script(&["down"]);
    assert!(ok, "local-cluster.sh down: {out}");
    for (name, pid) in pids {
        assert!(!alive(pid), "{name} (pid {pid}) still runs after down");
    }
    for port in [
        cluster.lb_port,
        cluster.gateway_ports[0],
        cluster.gateway_ports[1],
    ] {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "port {port} still accepts connections after down"
        );
    }
    let (_, status) = cluster.script(&["status"]);
    assert!(!status.contains("running"), "status after down:\n{status}");
}
