//! `rediss://`: a gateway and a worker on a TLS-only Redis (a self-signed certificate made here with
//! openssl; `#insecure` in the URL skips its verification), with the same query, live stream and resume
//! as on plain TCP. The same URL form serves each seed of a Redis Cluster.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crate::harness::raw::free_port;
use crate::harness::*;
use serde_json::json;
use tokio::process::Command;
use tokio::time::Instant;

/// A TLS-only redis-server (no plain port) with a fresh self-signed certificate; killed when dropped.
struct TlsRedis {
    port: u16,
    _child: tokio::process::Child,
}

impl TlsRedis {
    async fn start(dir: &Path) -> TlsRedis {
        std::fs::create_dir_all(dir).expect("log dir");
        let (cert, key) = (dir.join("redis.crt"), dir.join("redis.key"));
        let made = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=127.0.0.1",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stdin(Stdio::null())
            .output()
            .expect("openssl");
        assert!(
            made.status.success(),
            "openssl: {}",
            String::from_utf8_lossy(&made.stderr)
        );
        let port = free_port();
        let log = std::fs::File::create(dir.join("redis.log")).expect("log file");
        let child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .arg("--tls-cert-file")
            .arg(&cert)
            .arg("--tls-key-file")
            .arg(&key)
            .arg("--tls-ca-cert-file")
            .arg(&cert)
            .args([
                "--tls-auth-clients",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("clone")))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server with TLS");
        let server = TlsRedis {
            port,
            _child: child,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while !server.answers() {
            assert!(
                Instant::now() < deadline,
                "the TLS redis-server did not answer"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        server
    }

    fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}/#insecure", self.port)
    }

    fn answers(&self) -> bool {
        std::process::Command::new("redis-cli")
            .args(["--tls", "--insecure", "-p", &self.port.to_string(), "ping"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "PONG")
    }

    /// Whether a plain-TCP client is refused (the server speaks TLS only).
    fn refuses_plain(&self) -> bool {
        !std::process::Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "ping"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "PONG")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_and_workers_run_on_a_tls_redis() {
    let dir = target_dir().join("test-logs").join("redis_tls-redis");
    let redis = TlsRedis::start(&dir).await;
    assert!(
        redis.refuses_plain(),
        "scenario check: the Redis must speak TLS only"
    );
    let cluster = Cluster::builder("redis_tls")
        .gateways(2)
        .workers(1)
        .start_with_redis_url(&redis.url())
        .await;
    let mut a = cluster.query_client(0).await;
    let exec = a
        .execute(
            "SELECT g AS n FROM generate_series(1, 20000) g",
            Some(json!({"chunkSize": 1000, "rowFormat": "arrays"})),
            Some("tls-1"),
        )
        .await;
    let frames = a
        .collect_execution_within(&exec, Duration::from_secs(60))
        .await;
    let summary = check_full_stream(&exec, &frames);
    assert_eq!(summary.terminal_type(), "query_completed");
    assert_rows_are_1_to(&summary.rows, 20_000, "over TLS");
    // A resume on the other gateway replays the log over TLS too.
    let mut b = cluster.query_client(1).await;
    b.resume(&exec, 3).await;
    let replay = b
        .collect_execution_within(&exec, Duration::from_secs(30))
        .await;
    assert_same_frames("resume over TLS", &replay, &frames[3..]);
}
