//! The test environment: where Redis (single or cluster), PostgreSQL, the workspace and the target
//! directory are, from the `C2S_TEST_*` variables or their defaults.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;

use super::*;

pub fn redis_url() -> String {
    std::env::var("C2S_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Which Redis a test cluster's nodes use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisMode {
    Single,
    /// The local Redis Cluster (3 masters + 3 replicas), `--redis-cluster`.
    Cluster,
}

/// Ports of the local Redis Cluster's nodes (scripts/redis-cluster.sh; masters first at creation).
pub const CLUSTER_PORTS: [u16; 6] = [7001, 7002, 7003, 7004, 7005, 7006];

/// Seed list of the Redis Cluster the tests use.
pub fn redis_cluster_url() -> String {
    std::env::var("C2S_TEST_REDIS_CLUSTER_URL").unwrap_or_else(|_| {
        "redis://127.0.0.1:7001,redis://127.0.0.1:7002,redis://127.0.0.1:7003".into()
    })
}

static REDIS_CLUSTER_UP: OnceLock<Result<(), String>> = OnceLock::new();

/// Makes sure the local Redis Cluster is up and healthy (`scripts/redis-cluster.sh up`, once per test
/// process, then whenever a test asks after killing nodes); panics with the script's output if not.
pub fn ensure_redis_cluster() {
    let ok = REDIS_CLUSTER_UP.get_or_init(run_redis_cluster_up);
    if let Err(e) = ok {
        panic!("{e}");
    }
}

/// `scripts/redis-cluster.sh up` (restarts stopped nodes, rebuilds a broken cluster, waits for ok).
pub fn run_redis_cluster_up() -> Result<(), String> {
    if std::env::var_os("C2S_TEST_REDIS_CLUSTER_URL").is_some() {
        return Ok(()); // someone else's cluster
    }
    let script = workspace_root().join("scripts/redis-cluster.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .arg("up")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("could not run {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} up failed ({}):\n{}{}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// A cluster connection to the test Redis Cluster (follows MOVED, so it works across failovers).
pub async fn redis_cluster_conn() -> redis::cluster_async::ClusterConnection {
    let seeds: Vec<String> = redis_cluster_url().split(',').map(str::to_owned).collect();
    let client = redis::cluster::ClusterClient::builder(seeds)
        .retries(6)
        .min_retry_wait(100)
        .max_retry_wait(1000)
        .build()
        .expect("valid cluster seeds");
    tokio::time::timeout(SIDE_CALL_TIMEOUT, client.get_async_connection())
        .await
        .expect("connecting to the Redis Cluster timed out")
        .expect("connecting to the Redis Cluster failed")
}

/// Runs `body` in both Redis modes, as two tests: `$single` on the single Redis, `$cluster` on the
/// local Redis Cluster. `$body` is an `async fn(RedisMode)`.
/// The cluster variant holds [`super::redis_cluster_shared`] (no test breaks the cluster under it).
macro_rules! both_redis_modes {
    ($single:ident, $cluster:ident, $body:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $single() {
            $body($crate::harness::RedisMode::Single).await
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $cluster() {
            let _shared = $crate::harness::redis_cluster_shared().await;
            $body($crate::harness::RedisMode::Cluster).await
        }
    };
}

/// PostgreSQL server URL without a database name.
pub fn pg_server_url() -> String {
    std::env::var("C2S_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
        .trim_end_matches('/')
        .to_owned()
}

pub fn keep_artifacts() -> bool {
    std::env::var("C2S_TEST_KEEP").is_ok_and(|v| !v.is_empty() && v != "0")
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent directory")
        .to_path_buf()
}

pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => {
            let p = PathBuf::from(d);
            if p.is_absolute() {
                p
            } else {
                workspace_root().join(p)
            }
        }
        None => workspace_root().join("target"),
    }
}
