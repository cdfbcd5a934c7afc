//! Cross-process test harness: builds the `gateway` and `worker` binaries once per test process, starts
//! clusters of real processes against the real Redis and PostgreSQL, and talks to them over WebSocket.
//!
//! - [`Cluster`] / [`Node`]: N gateways + M workers, a unique Redis key prefix and a unique PostgreSQL database
//!   per test, logs under `target/test-logs/<test-name>/`, `node.kill()` for failover tests.
//! - [`Client`]: a tokio-tungstenite client; every received frame is validated against the gateway's
//!   `/schema` ("server" part) when the client was made by a cluster.
//! - [`check_full_stream`]: the invariants every execution's event stream must satisfy.
//!
//! Redis runs in two modes ([`RedisMode`]): the single Redis, and a local Redis Cluster of 3 masters + 3
//! replicas (`scripts/redis-cluster.sh up`, started on first use by [`ensure_redis_cluster`]); the suites
//! that matter run in both (`both_redis_modes!`).
//!
//! Environment knobs (all optional): `C2S_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`),
//! `C2S_TEST_REDIS_CLUSTER_URL` (seed list, default the local cluster's 127.0.0.1:7001-7003),
//! `C2S_TEST_PG_URL` (server URL without database, default `postgres://postgres@127.0.0.1:5432`),
//! `C2S_TEST_NO_BUILD=1` (use the binaries already in the target dir), `C2S_TEST_KEEP=1` (keep the test
//! databases and Redis keys), `C2S_TEST_LOG=<filter>` (passed to the nodes as `C2S_LOG`).

#![allow(dead_code)]

pub mod deploy;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Default wait for one frame (and for most other awaits).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a node may take to print its LISTENING / READY line.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on any single database or Redis call made by the harness itself.
const SIDE_CALL_TIMEOUT: Duration = Duration::from_secs(15);

pub const EVENT_TYPES: &[&str] = &[
    "query_started",
    "query_progress",
    "data_stream_start",
    "data_chunk",
    "data_stream_complete",
    "query_completed",
    "query_error",
    "query_cancelled",
];
/// 100 000 rows paced by the database (every 1000th row sleeps 50 ms): the stream lasts about 5 s, so a
/// node stopped after a few chunks really stops mid-stream.
pub const PACED_QUERY: &str = "SELECT g AS n, md5(g::text) AS h FROM generate_series(1,100000) g \
     WHERE CASE WHEN g % 1000 = 0 THEN pg_sleep(0.05) IS NOT NULL ELSE true END";
pub const PACED_ROWS: u64 = 100_000;

/// Asserts the first column of `rows` is exactly 1..=n, each value once, in order.
pub fn assert_rows_are_1_to(rows: &[Value], n: u64, what: &str) {
    assert_eq!(rows.len() as u64, n, "{what}: row count");
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(
            row[0].as_u64(),
            Some(i as u64 + 1),
            "{what}: row {i} should be n = {} (every row exactly once, in order): {row}",
            i + 1
        );
    }
}

pub const TERMINAL_TYPES: &[&str] = &["query_completed", "query_error", "query_cancelled"];

// ---------------------------------------------------------------------------------------------------------
// Environment
// ---------------------------------------------------------------------------------------------------------

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
#[macro_export]
macro_rules! both_redis_modes {
    ($single:ident, $cluster:ident, $body:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $single() {
            $body(RedisMode::Single).await
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $cluster() {
            $body(RedisMode::Cluster).await
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

// ---------------------------------------------------------------------------------------------------------
// Building the binaries (once per test process)
// ---------------------------------------------------------------------------------------------------------

pub struct Binaries {
    pub gateway: PathBuf,
    pub worker: PathBuf,
    pub loadgen: PathBuf,
}

static BINARIES: OnceLock<Result<Binaries, String>> = OnceLock::new();

/// Builds `gateway`, `worker` and `loadgen` once per test process (`cargo build --bins -p …`)
/// and returns their paths; panics with cargo's stderr if the build fails.
pub fn binaries() -> &'static Binaries {
    match BINARIES.get_or_init(build_binaries) {
        Ok(b) => b,
        Err(e) => panic!("{e}"),
    }
}

fn build_binaries() -> Result<Binaries, String> {
    let root = workspace_root();
    if std::env::var_os("C2S_TEST_NO_BUILD").is_none() {
        let cargo = std::env::var_os("CARGO")
            .map(PathBuf::from)
            .or_else(|| option_env!("CARGO").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("cargo"));
        let args = [
            "build",
            "--bins",
            "-p",
            "c2s-gateway",
            "-p",
            "c2s-worker",
            "-p",
            "c2s-loadgen",
        ];
        let out = std::process::Command::new(&cargo)
            .args(args)
            .current_dir(&root)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("could not run {} {}: {e}", cargo.display(), args.join(" ")))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            return Err(format!(
                "`cargo {}` failed ({}) in {}:\n{}",
                args.join(" "),
                out.status,
                root.display(),
                tail_chars(&stderr, 12_000)
            ));
        }
    }
    let dir = target_dir().join("debug");
    let b = Binaries {
        gateway: dir.join("gateway"),
        worker: dir.join("worker"),
        loadgen: dir.join("loadgen"),
    };
    for p in [&b.gateway, &b.worker, &b.loadgen] {
        if !p.is_file() {
            return Err(format!(
                "binary {} does not exist after the build",
                p.display()
            ));
        }
    }
    Ok(b)
}

// ---------------------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------------------

fn tail_chars(s: &str, n: usize) -> &str {
    if s.len() <= n {
        return s;
    }
    let mut start = s.len() - n;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// A frame shortened for error messages.
pub fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() <= 400 {
        s
    } else {
        let mut end = 400;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}… ({} bytes)", &s[..end], s.len())
    }
}

pub fn ty(f: &Value) -> &str {
    f.get("type").and_then(Value::as_str).unwrap_or("<no type>")
}

pub fn exec_of(f: &Value) -> Option<&str> {
    f.get("payload")?.get("executionId")?.as_str()
}

pub fn seq_of(f: &Value) -> u64 {
    f.get("seq")
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("frame without integer `seq`: {}", short(f)))
}

pub fn is_event(f: &Value) -> bool {
    EVENT_TYPES.contains(&ty(f))
}

pub fn is_event_of(f: &Value, exec: &str) -> bool {
    is_event(f) && exec_of(f) == Some(exec)
}

pub fn is_terminal(f: &Value) -> bool {
    TERMINAL_TYPES.contains(&ty(f))
}

pub fn types(frames: &[Value]) -> Vec<&str> {
    frames.iter().map(ty).collect()
}

/// Compact description of a frame list for assertion messages: `type#seq` of each (runs collapsed).
pub fn describe(frames: &[Value]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < frames.len() {
        let t = ty(&frames[i]);
        let mut j = i + 1;
        while j < frames.len() && ty(&frames[j]) == t {
            j += 1;
        }
        let s = |f: &Value| {
            f.get("seq")
                .map(|s| s.to_string())
                .unwrap_or_else(|| "-".into())
        };
        if j - i == 1 {
            out.push(format!("{t}#{}", s(&frames[i])));
        } else {
            out.push(format!(
                "{t}#{}..{} (x{})",
                s(&frames[i]),
                s(&frames[j - 1]),
                j - i
            ));
        }
        i = j;
    }
    format!("[{}]", out.join(", "))
}

/// Runs a future to completion on a fresh runtime in its own thread (usable from `Drop`, even inside a
/// runtime); gives up after the side-call timeout.
fn run_detached<F>(fut: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let handle = std::thread::spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(_) => return,
        };
        rt.block_on(async {
            let _ = tokio::time::timeout(SIDE_CALL_TIMEOUT, fut).await;
        });
    });
    let _ = handle.join();
}

/// A tiny HTTP/1.1 GET (no TLS, `Connection: close`); returns (status, body). Handles Content-Length,
/// chunked and read-to-close bodies.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let fut = async {
        let mut s = TcpStream::connect(addr).await?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let buf = tokio::time::timeout(DEFAULT_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| panic!("GET http://{addr}{path} timed out"))
        .unwrap_or_else(|e| panic!("GET http://{addr}{path} failed: {e}"));
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| {
            panic!(
                "GET {path}: no end of headers in {:?}",
                String::from_utf8_lossy(&buf)
            )
        });
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let mut body = buf[split + 4..].to_vec();
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("GET {path}: bad status line {status_line:?}"));
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    if headers
        .get("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        body = dechunk(&body);
    } else if let Some(len) = headers
        .get("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        body.truncate(len);
    }
    if let Some(enc) = headers.get("content-encoding") {
        assert!(
            enc.eq_ignore_ascii_case("identity"),
            "GET {path}: server used content-encoding {enc} although the request asked for none"
        );
    }
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size_str = String::from_utf8_lossy(&data[..eol]);
        let size = usize::from_str_radix(size_str.split(';').next().unwrap_or("").trim(), 16)
            .unwrap_or_else(|_| panic!("bad chunk size {size_str:?}"));
        data = &data[eol + 2..];
        if size == 0 {
            break;
        }
        out.extend_from_slice(&data[..size.min(data.len())]);
        data = &data[(size + 2).min(data.len())..];
    }
    out
}

// ---------------------------------------------------------------------------------------------------------
// Schema validation
// ---------------------------------------------------------------------------------------------------------

/// The gateway's `/schema` document, compiled.
pub struct SchemaValidator {
    pub document: Value,
    server: jsonschema::Validator,
    client: jsonschema::Validator,
}

impl SchemaValidator {
    pub fn from_document(document: Value) -> SchemaValidator {
        assert!(
            document.get("title").is_some_and(Value::is_string),
            "/schema must have a string `title`: {}",
            short(&document)
        );
        let compile = |part: &str| {
            let schema = document
                .get(part)
                .unwrap_or_else(|| panic!("/schema has no `{part}` member: {}", short(&document)));
            assert!(
                schema.is_object(),
                "/schema `{part}` must be a JSON Schema object"
            );
            jsonschema::validator_for(schema)
                .unwrap_or_else(|e| panic!("/schema `{part}` does not compile as JSON Schema: {e}"))
        };
        let server = compile("server");
        let client = compile("client");
        SchemaValidator {
            document,
            server,
            client,
        }
    }

    /// Fetches `GET /schema` from a gateway and compiles it.
    pub async fn fetch(addr: SocketAddr) -> SchemaValidator {
        let (status, body) = http_get(addr, "/schema").await;
        assert_eq!(status, 200, "GET /schema answered {status}: {body}");
        let doc: Value = serde_json::from_str(&body).unwrap_or_else(|e| {
            panic!("GET /schema is not JSON ({e}): {}", tail_chars(&body, 500))
        });
        SchemaValidator::from_document(doc)
    }

    fn errors(v: &jsonschema::Validator, frame: &Value) -> Vec<String> {
        v.iter_errors(frame)
            .take(8)
            .map(|e| format!("{e} (at `{}`)", e.instance_path))
            .collect()
    }

    /// Panics unless `frame` is a valid server frame per `/schema`.
    pub fn assert_valid(&self, frame: &Value) {
        let errors = Self::errors(&self.server, frame);
        assert!(
            errors.is_empty(),
            "server frame does not match the `server` schema of /schema:\n  {}\nframe: {}",
            errors.join("\n  "),
            short(frame)
        );
    }

    /// Panics unless `frame` is a valid client frame per `/schema`.
    pub fn assert_valid_client(&self, frame: &Value) {
        let errors = Self::errors(&self.client, frame);
        assert!(
            errors.is_empty(),
            "client frame does not match the `client` schema of /schema:\n  {}\nframe: {}",
            errors.join("\n  "),
            short(frame)
        );
    }

    pub fn is_valid(&self, frame: &Value) -> bool {
        self.server.is_valid(frame)
    }

    pub fn is_valid_client(&self, frame: &Value) -> bool {
        self.client.is_valid(frame)
    }
}

// ---------------------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    Gateway,
    Worker,
}

/// One running `gateway` or `worker` process.
pub struct Node {
    pub name: String,
    pub kind: NodeKind,
    /// The gateway's bound address (from its `LISTENING` line).
    pub addr: Option<SocketAddr>,
    /// Where the process's stderr goes.
    pub log_path: PathBuf,
    pub args: Vec<String>,
    child: Child,
}

impl Node {
    async fn spawn(kind: NodeKind, name: String, args: Vec<String>, log_dir: &Path) -> Node {
        let name = name.as_str();
        let bins = binaries();
        let bin = match kind {
            NodeKind::Gateway => &bins.gateway,
            NodeKind::Worker => &bins.worker,
        };
        let log_path = log_dir.join(format!("{name}.log"));
        // Appending: a respawned node (same name) keeps its previous process's log above its own.
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log_path.display()));
        let mut cmd = Command::new(bin);
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true);
        // Settings come from the flags only, never from the environment the tests happen to run in.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("C2S_") {
                cmd.env_remove(&k);
            }
        }
        cmd.env("C2S_LOG_FORMAT", "text").env("NO_COLOR", "1");
        if let Ok(filter) = std::env::var("C2S_TEST_LOG") {
            cmd.env("C2S_LOG", filter);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} ({}): {e}", name, bin.display()));
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let want = match kind {
            NodeKind::Gateway => "LISTENING ",
            NodeKind::Worker => "READY ",
        };
        let mut other_stdout = Vec::new();
        let waited = tokio::time::timeout(STARTUP_TIMEOUT, async {
            loop {
                match lines.next_line().await {
                    Ok(Some(l)) if l.starts_with(want) => return Ok(l),
                    Ok(Some(l)) => other_stdout.push(l),
                    Ok(None) => return Err("stdout closed before the line was printed".to_string()),
                    Err(e) => return Err(format!("reading stdout failed: {e}")),
                }
            }
        })
        .await;
        let line = match waited {
            Ok(Ok(line)) => line,
            failure => {
                let why = match failure {
                    Err(_) => format!(
                        "no `{}…` line on stdout within {STARTUP_TIMEOUT:?}",
                        want.trim()
                    ),
                    Ok(Err(e)) => e,
                    Ok(Ok(_)) => unreachable!(),
                };
                let _ = child.start_kill();
                let status = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
                panic!(
                    "{name} ({} {}) did not start: {why}; exit: {status:?}\nother stdout: {other_stdout:?}\n\
                     --- {} (tail) ---\n{}",
                    bin.display(),
                    args.join(" "),
                    log_path.display(),
                    read_tail(&log_path, 60)
                );
            }
        };
        let rest = line[want.len()..].trim().to_owned();
        let addr =
            match kind {
                NodeKind::Gateway => Some(rest.parse::<SocketAddr>().unwrap_or_else(|e| {
                    panic!("{name}: cannot parse the address in {line:?}: {e}")
                })),
                NodeKind::Worker => {
                    if let Some(pos) = args.iter().position(|a| a == "--worker-id") {
                        assert_eq!(
                            rest,
                            args[pos + 1],
                            "{name}: READY line names another worker id: {line:?}"
                        );
                    }
                    None
                }
            };
        // Keep draining stdout so the process never blocks on a full pipe.
        let stdout_log = log_dir.join(format!("{name}.stdout.log"));
        tokio::spawn(async move {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&stdout_log)
                .ok();
            if let Some(f) = f.as_mut() {
                let _ = writeln!(f, "{line}");
                for l in &other_stdout {
                    let _ = writeln!(f, "{l}");
                }
            }
            while let Ok(Some(l)) = lines.next_line().await {
                if let Some(f) = f.as_mut() {
                    let _ = writeln!(f, "{l}");
                }
            }
        });
        Node {
            name: name.to_owned(),
            kind,
            addr,
            log_path,
            args,
            child,
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
            .unwrap_or_else(|| panic!("{} is not a gateway: it has no address", self.name))
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr(), path)
    }

    /// SIGKILL, then reap (bounded).
    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not die within 10 s of SIGKILL", self.name))
            .unwrap_or_else(|e| panic!("waiting for {} failed: {e}", self.name));
    }

    /// SIGTERM (graceful shutdown / drain); does not wait.
    pub fn terminate(&self) {
        if let Some(pid) = self.pid() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
    }

    /// Waits for the process to exit; None on timeout.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(Ok(status)) => Some(status),
            _ => None,
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn log_tail(&self, lines: usize) -> String {
        read_tail(&self.log_path, lines)
    }
}

fn read_tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(s) => {
            let all: Vec<&str> = s.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

// ---------------------------------------------------------------------------------------------------------
// Per-test database and Redis prefix
// ---------------------------------------------------------------------------------------------------------

/// A PostgreSQL database created for one test, dropped (best effort) when this is dropped. It is
/// prepared for workers by the project's own `deploy/postgres/reader-role.sql`.
pub struct TestDb {
    pub name: String,
    /// The superuser's URL (the test's own connections, table set-up).
    pub url: String,
    /// The least-privilege role's URL, the one workers connect with.
    pub reader_url: String,
}

/// The login role and password that `deploy/postgres/reader-role.sql` creates.
pub const READER_ROLE: &str = "chat2sql_reader";
pub const READER_PASSWORD: &str = "chat2sql-reader-demo";

/// `deploy/postgres/reader-role.sql` changes shared catalogs (the role), which concurrent loads
/// into several test databases would update at once ("tuple concurrently updated"): one at a time.
static READER_SCRIPT_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl TestDb {
    pub async fn create() -> TestDb {
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let admin_url = format!("{}/postgres", pg_server_url());
        let mut admin = pg_connect(&admin_url).await;
        tokio::time::timeout(
            SIDE_CALL_TIMEOUT,
            sqlx::query(&format!(r#"CREATE DATABASE "{name}""#)).execute(&mut admin),
        )
        .await
        .unwrap_or_else(|_| panic!("CREATE DATABASE {name} timed out"))
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name} failed: {e}"));
        let _ = admin.close().await;
        let url = format!("{}/{name}", pg_server_url());
        let mut reader = url::Url::parse(&url).expect("C2S_TEST_PG_URL is a URL");
        let _ = reader.set_username(READER_ROLE);
        let _ = reader.set_password(Some(READER_PASSWORD));
        let db = TestDb {
            reader_url: reader.to_string(),
            url,
            name,
        };
        db.load_reader_role().await;
        db
    }

    /// Loads `deploy/postgres/reader-role.sql` into the database (again: it is idempotent).
    pub async fn load_reader_role(&self) {
        let script_path = workspace_root().join("deploy/postgres/reader-role.sql");
        let script = std::fs::read_to_string(&script_path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", script_path.display()));
        let _serialized = READER_SCRIPT_LOCK.lock().await;
        let mut conn = self.connect().await;
        tokio::time::timeout(SIDE_CALL_TIMEOUT, sqlx::raw_sql(&script).execute(&mut conn))
            .await
            .unwrap_or_else(|_| panic!("loading reader-role.sql into {} timed out", self.name))
            .unwrap_or_else(|e| panic!("loading reader-role.sql into {}: {e}", self.name));
        let _ = conn.close().await;
    }

    /// A connection of the test's own to the test database.
    pub async fn connect(&self) -> PgConnection {
        pg_connect(&self.url).await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if keep_artifacts() {
            eprintln!("C2S_TEST_KEEP: keeping database {}", self.name);
            return;
        }
        let name = self.name.clone();
        let admin_url = format!("{}/postgres", pg_server_url());
        run_detached(async move {
            if let Ok(mut admin) = PgConnection::connect(&admin_url).await {
                let _ = sqlx::query(&format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#))
                    .execute(&mut admin)
                    .await;
                let _ = admin.close().await;
            }
        });
    }
}

pub async fn pg_connect(url: &str) -> PgConnection {
    tokio::time::timeout(SIDE_CALL_TIMEOUT, PgConnection::connect(url))
        .await
        .unwrap_or_else(|_| panic!("connecting to {url} timed out"))
        .unwrap_or_else(|e| panic!("connecting to {url} failed: {e}"))
}

/// Deletes every Redis key under the test's prefix when dropped (best effort).
/// Deletes every Redis key of a test's prefix when dropped (unless `C2S_TEST_KEEP`).
pub struct RedisPrefixGuard {
    url: String,
    prefix: String,
    cluster: bool,
}

impl RedisPrefixGuard {
    pub fn new(prefix: &str) -> RedisPrefixGuard {
        RedisPrefixGuard {
            url: redis_url(),
            prefix: prefix.to_owned(),
            cluster: false,
        }
    }
}

impl Drop for RedisPrefixGuard {
    fn drop(&mut self) {
        if keep_artifacts() {
            return;
        }
        let url = self.url.clone();
        let pattern = format!("{}:*", self.prefix);
        if self.cluster {
            run_detached(async move {
                let keys = cluster_scan(&pattern).await;
                let mut con = redis_cluster_conn().await;
                for key in keys {
                    let _: Result<i64, _> = redis::cmd("DEL").arg(&key).query_async(&mut con).await;
                }
            });
            return;
        }
        run_detached(async move {
            let Ok(client) = redis::Client::open(url.as_str()) else {
                return;
            };
            let Ok(mut con) = client.get_multiplexed_async_connection().await else {
                return;
            };
            let Ok(keys) = scan_keys(&mut con, &pattern).await else {
                return;
            };
            for batch in keys.chunks(500) {
                let _: Result<i64, _> = redis::cmd("DEL").arg(batch).query_async(&mut con).await;
            }
        });
    }
}

/// Keys matching `pattern` on every master of the test Redis Cluster (a replica's SCAN would repeat them).
pub async fn cluster_scan(pattern: &str) -> Vec<String> {
    let mut keys = BTreeSet::new();
    for port in CLUSTER_PORTS {
        let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}")) else {
            continue;
        };
        let Ok(Ok(mut con)) = tokio::time::timeout(
            Duration::from_secs(2),
            client.get_multiplexed_async_connection(),
        )
        .await
        else {
            continue;
        };
        let role: Result<Vec<redis::Value>, _> = redis::cmd("ROLE").query_async(&mut con).await;
        let is_master =
            matches!(role.as_deref(), Ok([redis::Value::BulkString(r), ..]) if r == b"master");
        if is_master {
            if let Ok(found) = scan_keys(&mut con, pattern).await {
                keys.extend(found);
            }
        }
    }
    keys.into_iter().collect()
}

async fn scan_keys(
    con: &mut redis::aio::MultiplexedConnection,
    pattern: &str,
) -> redis::RedisResult<Vec<String>> {
    let mut cursor: u64 = 0;
    let mut keys = Vec::new();
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(con)
            .await?;
        keys.extend(batch);
        if next == 0 {
            return Ok(keys);
        }
        cursor = next;
    }
}

// ---------------------------------------------------------------------------------------------------------
// Cluster
// ---------------------------------------------------------------------------------------------------------

pub struct ClusterBuilder {
    name: String,
    gateways: usize,
    workers: usize,
    embedded: bool,
    database: Option<bool>,
    gateway_args: Vec<String>,
    worker_args: Vec<String>,
    superuser_workers: bool,
    redis_mode: RedisMode,
}

impl ClusterBuilder {
    /// Workers connect as the superuser (with `--insecure-privileged-role`) instead of the
    /// least-privilege role of `deploy/postgres/reader-role.sql`.
    pub fn superuser_workers(mut self) -> Self {
        self.superuser_workers = true;
        self
    }

    /// Runs the nodes on the single Redis (default) or the local Redis Cluster (started if needed).
    pub fn redis(mut self, mode: RedisMode) -> Self {
        if mode == RedisMode::Cluster && self.redis_mode != mode {
            self.name.push_str("-on-redis-cluster");
        }
        self.redis_mode = mode;
        self
    }

    pub fn gateways(mut self, n: usize) -> Self {
        self.gateways = n;
        self
    }

    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// `gateway --embedded`: no Redis, no PostgreSQL, no worker processes.
    pub fn embedded(mut self) -> Self {
        self.embedded = true;
        self.workers = 0;
        self
    }

    /// Force creating (or not) the per-test database (default: when there are workers).
    pub fn database(mut self, yes: bool) -> Self {
        self.database = Some(yes);
        self
    }

    /// Extra flags for every gateway.
    pub fn gateway_args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.gateway_args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Extra flags for every worker.
    pub fn worker_args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.worker_args.extend(args.into_iter().map(Into::into));
        self
    }

    pub async fn start(self) -> Cluster {
        self.start_on(None).await
    }

    /// Starts the cluster; with `redis`, every node (and the key clean-up) uses that Redis instead of the
    /// shared one.
    async fn start_on(self, redis: Option<&str>) -> Cluster {
        // Build first (blocking, once per process), so a build failure is reported as such.
        let _ = binaries();
        let log_dir = target_dir().join("test-logs").join(&self.name);
        let _ = std::fs::remove_dir_all(&log_dir);
        std::fs::create_dir_all(&log_dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log_dir.display()));
        let prefix = format!("t-{}", uuid::Uuid::new_v4().simple());
        let on_cluster = self.redis_mode == RedisMode::Cluster && !self.embedded;
        if on_cluster {
            ensure_redis_cluster();
        }
        let redis_guard = (!self.embedded).then(|| RedisPrefixGuard {
            url: redis.map_or_else(redis_url, str::to_owned),
            prefix: prefix.clone(),
            cluster: on_cluster,
        });
        let db = if self.database.unwrap_or(self.workers > 0 && !self.embedded) {
            Some(TestDb::create().await)
        } else {
            None
        };
        let mut cluster = Cluster {
            gateways: Vec::new(),
            workers: Vec::new(),
            redis_mode: if on_cluster {
                RedisMode::Cluster
            } else {
                RedisMode::Single
            },
            name: self.name,
            prefix,
            embedded: self.embedded,
            db,
            schema: None,
            log_dir,
            gateway_args: self.gateway_args,
            worker_args: self.worker_args,
            superuser_workers: self.superuser_workers,
            next_gateway: 0,
            next_worker: 0,
            _redis_guard: redis_guard,
        };
        // Point the nodes at another Redis when asked.
        let retarget = |(name, mut args): (String, Vec<String>)| {
            if let (Some(url), Some(pos)) = (redis, args.iter().position(|a| a == "--redis-url")) {
                args[pos + 1] = url.to_owned();
            }
            (name, args)
        };
        let worker_specs: Vec<(String, Vec<String>)> = (0..self.workers)
            .map(|_| retarget(cluster.next_worker_spec(&[])))
            .collect();
        let gateway_specs: Vec<(String, Vec<String>)> = (0..self.gateways)
            .map(|_| retarget(cluster.next_gateway_spec(&[])))
            .collect();
        let log_dir = cluster.log_dir.clone();
        let workers = futures_util::future::join_all(
            worker_specs
                .into_iter()
                .map(|(name, args)| Node::spawn(NodeKind::Worker, name, args, &log_dir)),
        );
        let gateways = futures_util::future::join_all(
            gateway_specs
                .into_iter()
                .map(|(name, args)| Node::spawn(NodeKind::Gateway, name, args, &log_dir)),
        );
        let (workers, gateways) = tokio::join!(workers, gateways);
        cluster.workers = workers;
        cluster.gateways = gateways;
        if let Some(gw) = cluster.gateways.first() {
            cluster.schema = Some(Arc::new(SchemaValidator::fetch(gw.addr()).await));
        }
        cluster
    }
}

/// N gateway and M worker processes sharing one Redis key prefix and one PostgreSQL database.
pub struct Cluster {
    // Declared first: dropped (SIGKILLed) before the database and the Redis keys are removed.
    pub gateways: Vec<Node>,
    pub workers: Vec<Node>,
    pub redis_mode: RedisMode,
    pub name: String,
    pub prefix: String,
    pub embedded: bool,
    pub db: Option<TestDb>,
    schema: Option<Arc<SchemaValidator>>,
    pub log_dir: PathBuf,
    gateway_args: Vec<String>,
    worker_args: Vec<String>,
    superuser_workers: bool,
    next_gateway: usize,
    next_worker: usize,
    _redis_guard: Option<RedisPrefixGuard>,
}

impl Cluster {
    pub fn builder(test_name: &str) -> ClusterBuilder {
        ClusterBuilder {
            name: test_name.to_owned(),
            gateways: 1,
            workers: 1,
            embedded: false,
            database: None,
            gateway_args: Vec::new(),
            worker_args: Vec::new(),
            superuser_workers: false,
            redis_mode: RedisMode::Single,
        }
    }

    /// `--redis-url …` (and `--redis-cluster`) for a node of this cluster.
    fn redis_args(&self) -> Vec<String> {
        match self.redis_mode {
            RedisMode::Single => vec!["--redis-url".into(), redis_url()],
            RedisMode::Cluster => vec![
                "--redis-url".into(),
                redis_cluster_url(),
                "--redis-cluster".into(),
            ],
        }
    }

    fn next_gateway_spec(&mut self, extra: &[&str]) -> (String, Vec<String>) {
        let name = format!("gw-{}", self.next_gateway);
        self.next_gateway += 1;
        let mut args: Vec<String> = vec!["--bind".into(), "127.0.0.1:0".into()];
        if self.embedded {
            args.push("--embedded".into());
        } else {
            args.extend(self.redis_args());
            args.extend(["--key-prefix".into(), self.prefix.clone()]);
        }
        args.extend(["--node-id".into(), name.clone()]);
        args.extend(self.gateway_args.iter().cloned());
        args.extend(extra.iter().map(|s| s.to_string()));
        // A networked gateway refuses to start without authentication; tests that do not configure a
        // JWT key run it explicitly insecure (development identities from ?user=&name=).
        if !self.embedded && !args.iter().any(|a| a.starts_with("--jwt-")) {
            args.push("--insecure-no-auth".into());
        }
        // Most tests open all their sockets as one development user (`anonymous`) and kill nodes under
        // them; the per-user connection cap is off unless a test sets it (tests/tests/fairness.rs does).
        if !args.iter().any(|a| a == "--max-connections-per-user") {
            args.extend(["--max-connections-per-user".into(), "0".into()]);
        }
        (name, args)
    }

    fn next_worker_spec(&mut self, extra: &[&str]) -> (String, Vec<String>) {
        let name = format!("w-{}", self.next_worker);
        self.next_worker += 1;
        let db = self
            .db
            .as_ref()
            .expect("a worker needs the per-test database");
        let db_url = if self.superuser_workers {
            db.url.clone()
        } else {
            db.reader_url.clone()
        };
        let mut args: Vec<String> = self.redis_args();
        args.extend([
            "--key-prefix".into(),
            self.prefix.clone(),
            "--database-url".into(),
            db_url,
            "--worker-id".into(),
            name.clone(),
        ]);
        if self.superuser_workers {
            args.push("--insecure-privileged-role".into());
        }
        args.extend(self.worker_args.iter().cloned());
        args.extend(extra.iter().map(|s| s.to_string()));
        // An explicit --database-url(-file) replaces the default one.
        let explicit = args
            .iter()
            .filter(|a| a.as_str() == "--database-url" || a.as_str() == "--database-url-file")
            .count();
        if explicit > 1 {
            if let Some(first) = args.iter().position(|a| a == "--database-url") {
                args.drain(first..first + 2);
            }
        }
        (name, args)
    }

    /// Starts one more gateway (extra flags after the cluster's); returns its index.
    pub async fn add_gateway(&mut self, extra: &[&str]) -> usize {
        let (name, args) = self.next_gateway_spec(extra);
        let node = Node::spawn(NodeKind::Gateway, name, args, &self.log_dir).await;
        self.gateways.push(node);
        if self.schema.is_none() {
            self.schema = Some(Arc::new(
                SchemaValidator::fetch(self.gateways[0].addr()).await,
            ));
        }
        self.gateways.len() - 1
    }

    /// Starts gateway `i` again, as a new process with the same arguments (so the same `--node-id`), as a
    /// supervisor restarting a crashed node would; kill it first. Its port may change (`--bind :0`).
    pub async fn respawn_gateway(&mut self, i: usize) {
        let old = &self.gateways[i];
        let (name, args) = (old.name.clone(), old.args.clone());
        let node = Node::spawn(NodeKind::Gateway, name, args, &self.log_dir).await;
        self.gateways[i] = node;
    }

    /// Starts one more worker (extra flags after the cluster's); returns its index.
    pub async fn add_worker(&mut self, extra: &[&str]) -> usize {
        let (name, args) = self.next_worker_spec(extra);
        let node = Node::spawn(NodeKind::Worker, name, args, &self.log_dir).await;
        self.workers.push(node);
        self.workers.len() - 1
    }

    pub fn gateway(&self, i: usize) -> &Node {
        &self.gateways[i]
    }

    pub fn schema(&self) -> Arc<SchemaValidator> {
        self.schema
            .clone()
            .expect("the cluster has no gateway to fetch /schema from")
    }

    /// A WebSocket client on gateway `i`, validating every received frame against `/schema`.
    pub async fn client(&self, i: usize, path: &str) -> Client {
        let gw = &self.gateways[i];
        let mut c = Client::connect(&gw.ws_url(path), Some(self.schema())).await;
        c.label = format!("{}/{}{}", self.name, gw.name, path);
        c
    }

    pub async fn query_client(&self, i: usize) -> Client {
        self.client(i, "/ws/query").await
    }

    pub fn db(&self) -> &TestDb {
        self.db.as_ref().expect("this cluster has no database")
    }

    /// A PostgreSQL connection of the test's own to the cluster's database.
    pub async fn pg(&self) -> PgConnection {
        self.db().connect().await
    }

    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        let url = redis_url();
        let client = redis::Client::open(url.as_str()).expect("valid redis url");
        tokio::time::timeout(SIDE_CALL_TIMEOUT, client.get_multiplexed_async_connection())
            .await
            .expect("connecting to Redis timed out")
            .expect("connecting to Redis failed")
    }

    /// Runs one Redis command on the cluster's Redis (single or cluster, following MOVED).
    pub async fn redis_query(&self, cmd: &redis::Cmd) -> redis::RedisResult<redis::Value> {
        let fut = async {
            match self.redis_mode {
                RedisMode::Single => cmd.query_async(&mut self.redis().await).await,
                RedisMode::Cluster => cmd.query_async(&mut redis_cluster_conn().await).await,
            }
        };
        tokio::time::timeout(SIDE_CALL_TIMEOUT, fut)
            .await
            .expect("a Redis call of the test timed out")
    }

    /// Every Redis key under this cluster's prefix.
    pub async fn redis_keys(&self) -> Vec<String> {
        let pattern = format!("{}:*", self.prefix);
        if self.redis_mode == RedisMode::Cluster {
            return cluster_scan(&pattern).await;
        }
        let mut con = self.redis().await;
        tokio::time::timeout(SIDE_CALL_TIMEOUT, scan_keys(&mut con, &pattern))
            .await
            .expect("SCAN timed out")
            .expect("SCAN failed")
    }

    /// The execution ids that have state in Redis (`<prefix>:{e:<id>}[:…]`, per shared/src/keys.rs).
    pub async fn execution_ids_in_redis(&self) -> BTreeSet<String> {
        let head = format!("{}:{{e:", self.prefix);
        self.redis_keys()
            .await
            .into_iter()
            .filter_map(|k| {
                k.strip_prefix(&head)
                    .and_then(|rest| rest.split('}').next())
                    .map(str::to_owned)
            })
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "\n==== test {} failed; node logs in {} (Redis prefix {}, database {:?})",
                self.name,
                self.log_dir.display(),
                self.prefix,
                self.db.as_ref().map(|d| d.name.as_str())
            );
            for node in self.gateways.iter().chain(&self.workers) {
                eprintln!(
                    "---- {} (tail of {}) ----\n{}",
                    node.name,
                    node.log_path.display(),
                    node.log_tail(25)
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// PostgreSQL observation
// ---------------------------------------------------------------------------------------------------------

/// For [`active_queries_with`]: every execution's statement in this database.
pub const ANY_EXECUTION: &str = "";

/// Active statements (other than our own) in this database: those of the execution whose id is
/// `marker` (the worker names each query's session `c2s <executionId>` in `application_name`, while
/// `query` shows the cursor's FETCH), or whose text contains `marker`; with [`ANY_EXECUTION`], every
/// execution's.
pub async fn active_queries_with(pg: &mut PgConnection, marker: &str) -> i64 {
    tokio::time::timeout(
        SIDE_CALL_TIMEOUT,
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE pid <> pg_backend_pid() AND state = 'active' AND datname = current_database() \
             AND CASE WHEN $1 = '' THEN application_name LIKE 'c2s %' \
                      ELSE strpos(query, $1) > 0 OR application_name = 'c2s ' || $1 END",
        )
        .bind(marker)
        .fetch_one(pg),
    )
    .await
    .expect("pg_stat_activity query timed out")
    .expect("pg_stat_activity query failed")
}

/// Polls until the number of active statements containing `marker` satisfies `pred`; returns whether it
/// did within `within`.
pub async fn wait_active_count(
    pg: &mut PgConnection,
    marker: &str,
    within: Duration,
    pred: impl Fn(i64) -> bool,
) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if pred(active_queries_with(pg, marker).await) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Samples the number of active statements containing `marker` for `during`; returns the maximum seen.
pub async fn max_active_during(pg: &mut PgConnection, marker: &str, during: Duration) -> i64 {
    let deadline = Instant::now() + during;
    let mut max = 0;
    loop {
        max = max.max(active_queries_with(pg, marker).await);
        if Instant::now() >= deadline {
            return max;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

// ---------------------------------------------------------------------------------------------------------
// WebSocket client
// ---------------------------------------------------------------------------------------------------------

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

enum Incoming {
    Frame(Value),
    Closed,
    Timeout,
}

pub struct Client {
    pub label: String,
    ws: Ws,
    /// The gateway node that accepted the socket (its `x-c2s-node` response header): tells which node a
    /// load balancer picked.
    pub node: Option<String>,
    validator: Option<Arc<SchemaValidator>>,
    /// Frames read while looking for something else, handed out first by `recv_json`.
    stash: VecDeque<Value>,
    /// Short text of the last frames received, for error messages.
    recent: VecDeque<String>,
    close_code: Option<u16>,
    close_error: Option<String>,
    closed: bool,
    /// Wait for one frame.
    pub timeout: Duration,
    /// Every frame received so far (validated), in order.
    pub received: usize,
    /// `query_progress` step `queued` frames (the gateway's, without `seq`), set apart from the
    /// numbered stream the other helpers check (tests/tests/fairness.rs reads them).
    pub queue_positions: Vec<Value>,
}

/// A queued job's place, sent by its gateway outside the execution's numbered stream.
pub fn is_queue_position(f: &Value) -> bool {
    ty(f) == "query_progress" && f.get("seq").is_none() && f["payload"]["step"] == "queued"
}

pub fn execute_query_frame(query: &str, options: Option<Value>, id: Option<&str>) -> Value {
    let mut f = json!({"type": "execute_query", "payload": {"query": query}});
    if let Some(o) = options {
        f["payload"]["options"] = o;
    }
    if let Some(id) = id {
        f["id"] = json!(id);
    }
    f
}

impl Client {
    /// Connects; with a validator every received frame is checked against the server schema.
    pub async fn connect(url: &str, validator: Option<Arc<SchemaValidator>>) -> Client {
        let connected =
            tokio::time::timeout(DEFAULT_TIMEOUT, tokio_tungstenite::connect_async(url)).await;
        let (ws, response) = match connected {
            Err(_) => panic!("timed out connecting to {url}"),
            Ok(Err(e)) => panic!("WebSocket connect to {url} failed: {e}"),
            Ok(Ok(connected)) => connected,
        };
        let node = response
            .headers()
            .get("x-c2s-node")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Client {
            label: url.to_owned(),
            ws,
            node,
            validator,
            stash: VecDeque::new(),
            recent: VecDeque::new(),
            close_code: None,
            close_error: None,
            closed: false,
            timeout: DEFAULT_TIMEOUT,
            received: 0,
            queue_positions: Vec::new(),
        }
    }

    fn recent_text(&self) -> String {
        if self.recent.is_empty() {
            return "(none)".into();
        }
        self.recent
            .iter()
            .cloned()
            .collect::<Vec<_>>()
            .join("\n    ")
    }

    fn closed_msg(&self, waiting_for: &str) -> String {
        format!(
            "{}: connection closed (close code {:?}, error {:?}) while waiting for {waiting_for}; last frames:\n    {}",
            self.label,
            self.close_code,
            self.close_error,
            self.recent_text()
        )
    }

    fn timeout_msg(&self, waiting_for: &str, waited: Duration) -> String {
        format!(
            "{}: timed out after {waited:?} waiting for {waiting_for}; last frames received:\n    {}",
            self.label,
            self.recent_text()
        )
    }

    async fn next_incoming(&mut self, deadline: Instant) -> Incoming {
        loop {
            if self.closed {
                return Incoming::Closed;
            }
            let msg = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Incoming::Timeout,
                Ok(None) => {
                    self.closed = true;
                    continue;
                }
                Ok(Some(Err(e))) => {
                    self.closed = true;
                    self.close_error = Some(e.to_string());
                    continue;
                }
                Ok(Some(Ok(m))) => m,
            };
            if let Some(v) = self.on_message(msg) {
                return Incoming::Frame(v);
            }
        }
    }

    /// Handles one WebSocket message: a text frame is parsed, validated and returned; a close frame is
    /// recorded; control frames are ignored.
    fn on_message(&mut self, msg: Message) -> Option<Value> {
        match msg {
            Message::Text(t) => {
                let text: &str = t.as_str();
                let v: Value = serde_json::from_str(text).unwrap_or_else(|e| {
                    panic!(
                        "{}: server sent a text frame that is not JSON ({e}): {}",
                        self.label,
                        tail_chars(text, 400)
                    )
                });
                if let Some(val) = &self.validator {
                    val.assert_valid(&v);
                }
                if is_queue_position(&v) {
                    self.queue_positions.push(v);
                    return None;
                }
                self.received += 1;
                self.recent.push_back(short(&v));
                if self.recent.len() > 6 {
                    self.recent.pop_front();
                }
                Some(v)
            }
            Message::Binary(b) => panic!(
                "{}: server sent a binary frame ({} bytes); the protocol is JSON text only",
                self.label,
                b.len()
            ),
            Message::Close(cf) => {
                self.close_code = Some(cf.as_ref().map(|c| u16::from(c.code)).unwrap_or(1005));
                self.closed = true;
                None
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => None,
        }
    }

    /// Sends `frames` one after another (frame i at start + i * `gap`; back to back when zero) while
    /// reading whatever the server sends meanwhile, so a burst cannot stall on a full socket. The frames
    /// read are validated and stashed, in order, for the usual `recv_*` calls. Returns the time from the
    /// first send to the end of the last. Panics if a send fails or the whole burst takes longer than `DEFAULT_TIMEOUT` plus the gaps.
    pub async fn send_all_draining(&mut self, frames: &[Value], gap: Duration) -> Duration {
        let mut got: Vec<Message> = Vec::new();
        let mut read_error: Option<String> = None;
        let mut ended = false;
        let bound = DEFAULT_TIMEOUT + gap * frames.len() as u32;
        let sent: Result<Duration, String> = {
            let (mut sink, mut stream) = (&mut self.ws).split();
            let send = async {
                let start = Instant::now();
                // A fixed schedule (frame i at start + i * gap), so timer granularity does not stretch it.
                let mut pace = (!gap.is_zero()).then(|| {
                    let mut t = tokio::time::interval(gap);
                    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                    t
                });
                for (i, f) in frames.iter().enumerate() {
                    if let Some(t) = pace.as_mut() {
                        t.tick().await;
                    }
                    sink.send(Message::text(f.to_string())).await.map_err(|e| {
                        format!("sending frame {i} of {} failed: {e}", frames.len())
                    })?;
                }
                Ok(start.elapsed())
            };
            let send = tokio::time::timeout(bound, send);
            tokio::pin!(send);
            loop {
                tokio::select! {
                    r = &mut send => {
                        break r.unwrap_or_else(|_| Err(format!("sending {} frames took longer than {bound:?}", frames.len())));
                    }
                    m = stream.next(), if !ended => match m {
                        Some(Ok(m)) => got.push(m),
                        Some(Err(e)) => {
                            read_error = Some(e.to_string());
                            ended = true;
                        }
                        None => ended = true,
                    },
                }
            }
        };
        for m in got {
            if let Some(v) = self.on_message(m) {
                self.stash.push_back(v);
            }
        }
        if ended {
            self.closed = true;
            if read_error.is_some() {
                self.close_error = read_error;
            }
        }
        sent.unwrap_or_else(|e| {
            panic!(
                "{}: {e}; last frames:\n    {}",
                self.label,
                self.recent_text()
            )
        })
    }

    /// Sends a JSON frame.
    pub async fn send_json(&mut self, v: Value) {
        self.send_text(&v.to_string()).await;
    }

    /// Sends raw text (for malformed frames).
    pub async fn send_text(&mut self, text: &str) {
        let sent = tokio::time::timeout(
            DEFAULT_TIMEOUT,
            self.ws.send(Message::text(text.to_owned())),
        )
        .await;
        match sent {
            Err(_) => panic!("{}: send timed out", self.label),
            Ok(Err(e)) => panic!("{}: send failed: {e}", self.label),
            Ok(Ok(())) => {}
        }
    }

    /// Sends raw text; returns false instead of panicking if the connection is already gone (for frames
    /// the server may refuse before reading them whole).
    pub async fn send_text_lenient(&mut self, text: &str) -> bool {
        matches!(
            tokio::time::timeout(
                DEFAULT_TIMEOUT,
                self.ws.send(Message::text(text.to_owned()))
            )
            .await,
            Ok(Ok(()))
        )
    }

    /// The next frame (stashed first), waiting at most `self.timeout`.
    pub async fn recv_json(&mut self) -> Value {
        let d = self.timeout;
        self.recv_json_timeout(d).await
    }

    pub async fn recv_json_timeout(&mut self, d: Duration) -> Value {
        match self.try_recv_json(d).await {
            Some(v) => v,
            None => panic!("{}", self.timeout_msg("a frame", d)),
        }
    }

    /// The next frame, or None if none arrives within `d`; panics if the connection closes.
    pub async fn try_recv_json(&mut self, d: Duration) -> Option<Value> {
        if let Some(v) = self.stash.pop_front() {
            return Some(v);
        }
        match self.next_incoming(Instant::now() + d).await {
            Incoming::Frame(v) => Some(v),
            Incoming::Timeout => None,
            Incoming::Closed => panic!("{}", self.closed_msg("a frame")),
        }
    }

    /// Every frame up to and including the first one matching `pred` (each frame waited for at most
    /// `self.timeout`).
    pub async fn recv_until(
        &mut self,
        what: &str,
        mut pred: impl FnMut(&Value) -> bool,
    ) -> Vec<Value> {
        let mut out = Vec::new();
        loop {
            let f = match self.try_recv_json(self.timeout).await {
                Some(f) => f,
                None => panic!(
                    "{}\n  (frames so far while waiting: {})",
                    self.timeout_msg(what, self.timeout),
                    describe(&out)
                ),
            };
            let stop = pred(&f);
            out.push(f);
            if stop {
                return out;
            }
        }
    }

    /// Everything that arrives within `d` (stashed frames first). Panics if the connection closes.
    pub async fn collect_for(&mut self, d: Duration) -> Vec<Value> {
        let mut out: Vec<Value> = self.stash.drain(..).collect();
        let deadline = Instant::now() + d;
        loop {
            match self.next_incoming(deadline).await {
                Incoming::Frame(f) => out.push(f),
                Incoming::Timeout => return out,
                Incoming::Closed => panic!("{}", self.closed_msg("frames during a quiet period")),
            }
        }
    }

    /// Events of `exec` up to and including the first one matching `pred`. Frames of other executions and
    /// non-event frames are stashed for later. `total` bounds the whole wait (else each frame waits at most
    /// `self.timeout`).
    pub async fn recv_events_until(
        &mut self,
        exec: &str,
        total: Option<Duration>,
        mut pred: impl FnMut(&Value) -> bool,
    ) -> Vec<Value> {
        let mut out = Vec::new();
        let mut keep = VecDeque::new();
        let mut done = false;
        while let Some(f) = self.stash.pop_front() {
            if !done && is_event_of(&f, exec) {
                done = pred(&f);
                out.push(f);
            } else {
                keep.push_back(f);
            }
        }
        self.stash = keep;
        if done {
            return out;
        }
        let start = Instant::now();
        let overall = total.map(|d| start + d);
        loop {
            let per_frame = Instant::now() + self.timeout;
            let deadline = overall.map_or(per_frame, |o| o.min(per_frame));
            match self.next_incoming(deadline).await {
                Incoming::Frame(f) if is_event_of(&f, exec) => {
                    let stop = pred(&f);
                    out.push(f);
                    if stop {
                        return out;
                    }
                }
                Incoming::Frame(f) => self.stash.push_back(f),
                Incoming::Timeout => panic!(
                    "{}\n  events of {exec} so far: {}",
                    self.timeout_msg(&format!("events of execution {exec}"), start.elapsed()),
                    describe(&out)
                ),
                Incoming::Closed => panic!(
                    "{}\n  events of {exec} so far: {}",
                    self.closed_msg(&format!("events of execution {exec}")),
                    describe(&out)
                ),
            }
        }
    }

    /// Events of `exec` until (and including) its terminal event.
    pub async fn collect_execution(&mut self, exec: &str) -> Vec<Value> {
        self.recv_events_until(exec, None, is_terminal).await
    }

    /// Like `collect_execution`, but the terminal event must arrive within `total`.
    pub async fn collect_execution_within(&mut self, exec: &str, total: Duration) -> Vec<Value> {
        self.recv_events_until(exec, Some(total), is_terminal).await
    }

    /// Waits for the `ack` of client id `id` (or the next ack without an id). Non-ack frames are stashed;
    /// an `error` frame panics.
    pub async fn recv_ack(&mut self, id: Option<&str>) -> Value {
        let matches =
            |f: &Value| ty(f) == "ack" && f["payload"].get("id").and_then(Value::as_str) == id;
        if let Some(pos) = self.stash.iter().position(matches) {
            return self.stash.remove(pos).expect("position is in range");
        }
        let start = Instant::now();
        let deadline = start + self.timeout;
        loop {
            match self.next_incoming(deadline).await {
                Incoming::Frame(f) if matches(&f) => {
                    let exec = exec_of(&f).unwrap_or("");
                    assert!(
                        !exec.is_empty(),
                        "{}: ack of execute_query without a payload.executionId: {}",
                        self.label,
                        short(&f)
                    );
                    assert!(
                        f.get("seq").is_none(),
                        "an ack carries no seq: {}",
                        short(&f)
                    );
                    return f;
                }
                Incoming::Frame(f) if ty(&f) == "error" || ty(&f) == "ack" => panic!(
                    "{}: expected the ack of id {id:?}, got {}",
                    self.label,
                    short(&f)
                ),
                Incoming::Frame(f) => self.stash.push_back(f),
                Incoming::Timeout => {
                    panic!(
                        "{}",
                        self.timeout_msg(&format!("the ack of id {id:?}"), start.elapsed())
                    )
                }
                Incoming::Closed => panic!("{}", self.closed_msg(&format!("the ack of id {id:?}"))),
            }
        }
    }

    /// Sends `execute_query`, waits for its ack, checks the ack came before any event of the execution and
    /// is not a duplicate; returns the execution id.
    pub async fn execute(
        &mut self,
        query: &str,
        options: Option<Value>,
        id: Option<&str>,
    ) -> String {
        self.send_json(execute_query_frame(query, options, id))
            .await;
        let ack = self.recv_ack(id).await;
        assert!(
            ack["payload"]
                .get("duplicate")
                .is_none_or(|d| d == &json!(false)),
            "{}: the first ack of id {id:?} says duplicate: {}",
            self.label,
            short(&ack)
        );
        let exec = exec_of(&ack).expect("checked in recv_ack").to_owned();
        if let Some(early) = self
            .stash
            .iter()
            .find(|f| exec_of(f) == Some(exec.as_str()))
        {
            panic!(
                "{}: an event of execution {exec} arrived before its ack: {}",
                self.label,
                short(early)
            );
        }
        exec
    }

    /// Runs [`PACED_QUERY`] (chunks of 1000 rows, arrays) and reads its events until `chunks` data chunks
    /// arrived; asserts it is still streaming. Returns the execution id and the events so far.
    pub async fn start_paced_stream(&mut self, id: &str, chunks: u32) -> (String, Vec<Value>) {
        let exec = self
            .execute(
                PACED_QUERY,
                Some(json!({"chunkSize": 1000, "rowFormat": "arrays", "timeoutMs": 120_000})),
                Some(id),
            )
            .await;
        let mut seen = 0;
        let frames = self
            .recv_events_until(&exec, Some(Duration::from_secs(60)), |f| {
                seen += u32::from(ty(f) == "data_chunk");
                seen >= chunks || is_terminal(f)
            })
            .await;
        assert!(
            !is_terminal(frames.last().expect("non-empty")),
            "scenario check: the query must still be streaming after {chunks} chunks: {}",
            describe(&frames)
        );
        (exec, frames)
    }

    pub async fn cancel(&mut self, exec: &str) {
        self.send_json(json!({"type": "cancel_query", "payload": {"executionId": exec}}))
            .await;
    }

    pub async fn resume(&mut self, exec: &str, after_seq: u64) {
        self.send_json(
            json!({"type": "resume", "payload": {"executionId": exec, "afterSeq": after_seq}}),
        )
        .await;
    }

    /// `subscribe` (for `/ws/data`); `after_seq` None leaves the field out.
    pub async fn subscribe(&mut self, exec: &str, after_seq: Option<u64>) {
        let mut payload = json!({"executionId": exec});
        if let Some(s) = after_seq {
            payload["afterSeq"] = json!(s);
        }
        self.send_json(json!({"type": "subscribe", "payload": payload}))
            .await;
    }

    /// Waits for a `pong` echoing `ts` (execution events meanwhile are stashed; anything else panics).
    pub async fn expect_pong(&mut self, ts: &Value) -> Value {
        let start = Instant::now();
        let deadline = start + self.timeout;
        loop {
            let f = match self.stash.iter().position(|f| ty(f) == "pong") {
                Some(pos) => self.stash.remove(pos).expect("in range"),
                None => match self.next_incoming(deadline).await {
                    Incoming::Frame(f) => f,
                    Incoming::Timeout => {
                        panic!("{}", self.timeout_msg("a pong", start.elapsed()))
                    }
                    Incoming::Closed => panic!("{}", self.closed_msg("a pong")),
                },
            };
            match ty(&f) {
                "pong" => {
                    assert_eq!(
                        f["payload"]["timestamp"],
                        *ts,
                        "{}: pong must echo the ping's timestamp: {}",
                        self.label,
                        short(&f)
                    );
                    assert!(
                        f["payload"]["serverTime"]
                            .as_i64()
                            .is_some_and(|t| t > 1_600_000_000_000),
                        "{}: pong.serverTime must be ms since the epoch: {}",
                        self.label,
                        short(&f)
                    );
                    return f;
                }
                _ if is_event(&f) => self.stash.push_back(f),
                _ => panic!("{}: expected a pong, got {}", self.label, short(&f)),
            }
        }
    }

    /// `ping` with `payload.timestamp`, and its pong.
    pub async fn ping(&mut self, ts: i64) -> Value {
        self.send_json(json!({"type": "ping", "payload": {"timestamp": ts}}))
            .await;
        self.expect_pong(&json!(ts)).await
    }

    /// Reads until the server closes the connection; returns the close code (1005 when the close frame had
    /// none). Text frames meanwhile are validated and ignored. Panics on timeout or on a connection that
    /// ends without a close frame.
    pub async fn expect_close(&mut self) -> u16 {
        let start = Instant::now();
        let deadline = start + self.timeout;
        loop {
            match self.next_incoming(deadline).await {
                Incoming::Frame(_) => {}
                Incoming::Timeout => panic!(
                    "{}",
                    self.timeout_msg("the server's close frame", start.elapsed())
                ),
                Incoming::Closed => {
                    return self.close_code.unwrap_or_else(|| {
                        panic!(
                            "{}: the connection ended without a close frame (error {:?})",
                            self.label, self.close_error
                        )
                    })
                }
            }
        }
    }

    pub fn close_code(&self) -> Option<u16> {
        self.close_code
    }

    /// Frames read but not consumed yet.
    pub fn stashed(&self) -> &VecDeque<Value> {
        &self.stash
    }

    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.ws.close(None)).await;
    }
}

// ---------------------------------------------------------------------------------------------------------
// Stream invariants
// ---------------------------------------------------------------------------------------------------------

/// What `check_full_stream` found in a complete event stream.
#[derive(Debug)]
pub struct StreamSummary {
    pub terminal: Value,
    pub started: bool,
    pub start: Option<Value>,
    pub complete: Option<Value>,
    pub columns: Vec<Value>,
    pub rows: Vec<Value>,
    pub chunks: u64,
    pub progress: Vec<u64>,
}

impl StreamSummary {
    pub fn terminal_type(&self) -> &str {
        ty(&self.terminal)
    }

    pub fn column_names(&self) -> Vec<&str> {
        self.columns
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect()
    }
}

/// Checks the invariants of an execution's whole event stream (seq 1..N, one terminal event at the end,
/// event order, progress, chunk numbering, row shapes, totals) and returns what it found.
pub fn check_full_stream(exec: &str, frames: &[Value]) -> StreamSummary {
    let ctx = || format!("execution {exec}: {}", describe(frames));
    assert!(!frames.is_empty(), "{}: no events", ctx());
    let mut started = false;
    let mut start: Option<Value> = None;
    let mut complete: Option<Value> = None;
    let mut columns: Vec<Value> = Vec::new();
    let mut row_format = String::new();
    let mut chunk_size: u64 = 0;
    let mut rows: Vec<Value> = Vec::new();
    let mut chunks: u64 = 0;
    let mut last_chunk: Option<(usize, usize)> = None;
    let mut first_chunk_len: Option<usize> = None;
    let mut progress: Vec<u64> = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        let t = ty(f);
        let p = &f["payload"];
        assert!(
            is_event(f),
            "{}: frame {i} is not an event: {}",
            ctx(),
            short(f)
        );
        assert_eq!(
            exec_of(f),
            Some(exec),
            "{}: frame {i} has another executionId",
            ctx()
        );
        assert_eq!(
            seq_of(f),
            i as u64 + 1,
            "{}: seq must run 1, 2, 3… without gaps; frame {i} is {}",
            ctx(),
            short(f)
        );
        assert!(
            p["timestamp"]
                .as_i64()
                .is_some_and(|t| t > 1_600_000_000_000),
            "{}: frame {i} needs payload.timestamp (ms since the epoch): {}",
            ctx(),
            short(f)
        );
        let last = i + 1 == frames.len();
        assert_eq!(
            is_terminal(f),
            last,
            "{}: exactly one terminal event, and it must be the last (frame {i} is {t})",
            ctx()
        );
        match t {
            "query_started" => {
                assert_eq!(i, 0, "{}: query_started must be the first event", ctx());
                started = true;
            }
            "query_progress" => {
                assert!(
                    complete.is_none(),
                    "{}: query_progress after data_stream_complete",
                    ctx()
                );
                let v = p["progress"].as_u64().unwrap_or_else(|| {
                    panic!("{}: progress must be an integer: {}", ctx(), short(f))
                });
                assert!(
                    v < 100,
                    "{}: progress {v} before the query completed (it stays below 100)",
                    ctx()
                );
                if let Some(&prev) = progress.last() {
                    assert!(
                        v >= prev,
                        "{}: progress went down from {prev} to {v}",
                        ctx()
                    );
                }
                assert!(
                    p["step"].as_str().is_some_and(|s| !s.is_empty()),
                    "{}: query_progress needs a step label: {}",
                    ctx(),
                    short(f)
                );
                progress.push(v);
            }
            "data_stream_start" => {
                assert!(started, "{}: data_stream_start before query_started", ctx());
                assert!(start.is_none(), "{}: second data_stream_start", ctx());
                columns = p["columns"]
                    .as_array()
                    .unwrap_or_else(|| panic!("{}: columns must be an array", ctx()))
                    .clone();
                for c in &columns {
                    assert!(
                        c["name"].is_string() && c["type"].is_string(),
                        "{}: a column is {{name, type}}: {c}",
                        ctx()
                    );
                }
                row_format = p["rowFormat"].as_str().unwrap_or_default().to_owned();
                assert!(
                    row_format == "objects" || row_format == "arrays",
                    "{}: rowFormat must be objects or arrays: {}",
                    ctx(),
                    short(f)
                );
                chunk_size = p["chunkSize"].as_u64().unwrap_or(0);
                assert!(
                    chunk_size > 0,
                    "{}: chunkSize must be positive: {}",
                    ctx(),
                    short(f)
                );
                start = Some(f.clone());
            }
            "data_chunk" => {
                assert!(
                    start.is_some(),
                    "{}: data_chunk before data_stream_start",
                    ctx()
                );
                assert!(
                    complete.is_none(),
                    "{}: data_chunk after data_stream_complete",
                    ctx()
                );
                assert_eq!(
                    p["chunkIndex"].as_u64(),
                    Some(chunks),
                    "{}: chunkIndex must run 0, 1, 2…: {}",
                    ctx(),
                    short(f)
                );
                let data = p["data"]
                    .as_array()
                    .unwrap_or_else(|| panic!("{}: data must be an array", ctx()));
                assert!(!data.is_empty(), "{}: empty data_chunk {}", ctx(), short(f));
                assert!(
                    data.len() as u64 <= chunk_size,
                    "{}: chunk {chunks} has {} rows > chunkSize {chunk_size}",
                    ctx(),
                    data.len()
                );
                if let Some((prev_len, prev_bytes)) = last_chunk {
                    // Only the last chunk may be short, unless the next row did not fit by bytes.
                    let next_row = data[0].to_string().len();
                    assert!(
                        prev_len as u64 == chunk_size
                            || (prev_bytes + 1 + next_row) as f64
                                > chunk_byte_budget(exec) as f64 * 0.95,
                        "{}: chunk {} has {prev_len} rows ({prev_bytes} bytes) < chunkSize {chunk_size}, \
                         yet the next row ({next_row} bytes) would have fitted",
                        ctx(),
                        chunks - 1
                    );
                }
                first_chunk_len.get_or_insert(data.len());
                last_chunk = Some((data.len(), rows_json_len(data)));
                for row in data {
                    check_row_shape(row, &columns, &row_format, &ctx);
                }
                rows.extend(data.iter().cloned());
                chunks += 1;
            }
            "data_stream_complete" => {
                assert!(
                    start.is_some(),
                    "{}: data_stream_complete before data_stream_start",
                    ctx()
                );
                assert!(complete.is_none(), "{}: second data_stream_complete", ctx());
                assert_eq!(
                    p["totalRows"].as_u64(),
                    Some(rows.len() as u64),
                    "{}: data_stream_complete.totalRows must equal the rows streamed",
                    ctx()
                );
                assert_eq!(
                    p["chunks"].as_u64(),
                    Some(chunks),
                    "{}: data_stream_complete.chunks must equal the data_chunks sent",
                    ctx()
                );
                let announced = &start.as_ref().expect("checked")["payload"];
                let total = announced["totalRows"].as_u64().unwrap_or_else(|| {
                    panic!("{}: data_stream_start.totalRows must be a number", ctx())
                });
                let first = first_chunk_len.unwrap_or(0) as u64;
                match announced["totalRowsExact"].as_bool() {
                    Some(true) => assert_eq!(
                        total,
                        rows.len() as u64,
                        "{}: an exact data_stream_start.totalRows must be the real count",
                        ctx()
                    ),
                    Some(false) => {
                        assert!(
                            total > first,
                            "{}: an estimated totalRows {total} must be above the {first} rows read ahead",
                            ctx()
                        );
                        assert!(
                            rows.len() as u64 > first,
                            "{}: totalRows is an estimate although the result ({} rows) ended within \
                             the read-ahead ({first} rows)",
                            ctx(),
                            rows.len()
                        );
                    }
                    None => panic!(
                        "{}: data_stream_start.totalRowsExact must be a boolean",
                        ctx()
                    ),
                }
                complete = Some(f.clone());
            }
            "query_completed" => {
                assert!(started, "{}: query_completed without query_started", ctx());
                assert!(
                    complete.is_some(),
                    "{}: query_completed without data_stream_complete",
                    ctx()
                );
                let r = &p["result"];
                assert_eq!(
                    r["rowCount"].as_u64(),
                    Some(rows.len() as u64),
                    "{}: result.rowCount must equal the rows streamed",
                    ctx()
                );
                assert_eq!(
                    r["columns"],
                    Value::Array(columns.clone()),
                    "{}: result.columns must equal data_stream_start.columns",
                    ctx()
                );
                assert!(
                    r["durationMs"].is_u64(),
                    "{}: result.durationMs: {}",
                    ctx(),
                    short(f)
                );
                assert!(
                    r["truncated"].is_boolean(),
                    "{}: result.truncated: {}",
                    ctx(),
                    short(f)
                );
            }
            "query_error" => {
                let e = &p["error"];
                assert!(e["code"].is_string(), "{}: error.code: {}", ctx(), short(f));
                assert!(
                    e["message"].as_str().is_some_and(|m| !m.is_empty()),
                    "{}: error.message must say what went wrong: {}",
                    ctx(),
                    short(f)
                );
            }
            "query_cancelled" => {}
            other => panic!("{}: unexpected event type {other}", ctx()),
        }
    }
    StreamSummary {
        terminal: frames.last().expect("non-empty").clone(),
        started,
        start,
        complete,
        columns,
        rows,
        chunks,
        progress,
    }
}

/// The default `C2S_MAX_CHUNK_BYTES` (a test that changes it checks chunk sizes itself).
pub const MAX_CHUNK_BYTES: usize = 1024 * 1024;

/// Bytes of rows one chunk may carry (the worker keeps room for the frame's envelope).
fn chunk_byte_budget(exec: &str) -> usize {
    MAX_CHUNK_BYTES - 256 - exec.len()
}

/// Bytes of a chunk's rows as JSON, comma-separated.
fn rows_json_len(rows: &[Value]) -> usize {
    rows.iter().map(|r| r.to_string().len()).sum::<usize>() + rows.len().saturating_sub(1)
}

fn check_row_shape(row: &Value, columns: &[Value], format: &str, ctx: &dyn Fn() -> String) {
    match format {
        "arrays" => {
            let a = row
                .as_array()
                .unwrap_or_else(|| panic!("{}: rowFormat arrays, but a row is {row}", ctx()));
            assert_eq!(
                a.len(),
                columns.len(),
                "{}: row {row} has the wrong arity",
                ctx()
            );
        }
        _ => {
            let o = row
                .as_object()
                .unwrap_or_else(|| panic!("{}: rowFormat objects, but a row is {row}", ctx()));
            for c in columns {
                let name = c["name"].as_str().unwrap_or_default();
                assert!(
                    o.contains_key(name),
                    "{}: row {row} lacks column {name}",
                    ctx()
                );
            }
            assert!(
                o.len() <= columns.len(),
                "{}: row {row} has extra keys",
                ctx()
            );
        }
    }
}

/// Asserts `got` are exactly `expected`, frame by frame (JSON equality), with a readable message.
pub fn assert_same_frames(what: &str, got: &[Value], expected: &[Value]) {
    let seqs = |fs: &[Value]| -> Vec<Option<u64>> {
        fs.iter()
            .map(|f| f.get("seq").and_then(Value::as_u64))
            .collect()
    };
    assert_eq!(
        seqs(got),
        seqs(expected),
        "{what}: the seqs differ\n  got:      {}\n  expected: {}",
        describe(got),
        describe(expected)
    );
    for (i, (g, e)) in got.iter().zip(expected).enumerate() {
        assert!(
            g == e,
            "{what}: frame {i} (seq {:?}) differs\n  got:      {}\n  expected: {}",
            g.get("seq"),
            short(g),
            short(e)
        );
    }
}

/// The current wall clock in ms since the epoch (to compare with server timestamps on this machine).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// An HS256 JWT of `claims` (the gateway's `--jwt-secret` mode).
pub fn hs256(claims: &Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .expect("encoding a JWT")
}

// ---------------------------------------------------------------------------------------------------------
// Collaboration sessions (`/ws/collaboration/{sessionId}`)
// ---------------------------------------------------------------------------------------------------------

/// The server frames that are session events (numbered with the session's `seq`).
pub const SESSION_EVENT_TYPES: &[&str] = &[
    "participant_joined",
    "participant_left",
    "query_updated",
    "cursor_moved",
    "chat_message",
    "shared_execution",
];

pub fn is_session_event(f: &Value) -> bool {
    SESSION_EVENT_TYPES.contains(&ty(f))
}

/// Percent-encodes a query-string value (unreserved characters stay as they are).
pub fn url_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `/ws/collaboration/<session>?user=…&name=…[&afterSeq=…]`.
pub fn collab_path(session: &str, user: &str, name: &str, after_seq: Option<u64>) -> String {
    let mut p = format!(
        "/ws/collaboration/{session}?user={}&name={}",
        url_encode(user),
        url_encode(name)
    );
    if let Some(s) = after_seq {
        p.push_str(&format!("&afterSeq={s}"));
    }
    p
}

/// A unique session id for a test.
pub fn new_session_id(tag: &str) -> String {
    format!("{tag}-{}", uuid::Uuid::new_v4().simple())
}

/// Tries a WebSocket upgrade; Ok on success (the connection is dropped), Err(status) when the server
/// answered the upgrade request with an HTTP status instead.
pub async fn ws_upgrade_status(url: &str) -> Result<(), u16> {
    use tokio_tungstenite::tungstenite::Error as WsError;
    match tokio::time::timeout(DEFAULT_TIMEOUT, tokio_tungstenite::connect_async(url)).await {
        Err(_) => panic!("timed out connecting to {url}"),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(WsError::Http(resp))) => Err(resp.status().as_u16()),
        Ok(Err(e)) => panic!("WebSocket connect to {url} failed without an HTTP status: {e}"),
    }
}

/// One participant of a collaboration session: a [`Client`] plus the session bookkeeping. Every frame read
/// is classified: session events (their `seq` must continue the session's sequence without a gap, their
/// `sessionId` must be this session's), execution events (kept in `exec_frames`), and replies (`ack`,
/// `error`, `pong`, kept in `replies` until taken).
pub struct Collab {
    pub client: Client,
    pub session_id: String,
    pub user: String,
    pub name: String,
    /// The gateway's node id.
    pub node: String,
    /// The `session_state` frame received on joining.
    pub state: Value,
    pub participant_id: String,
    pub snapshot_seq: u64,
    /// The session seq the events started after (`afterSeq` if given, else `snapshotSeq`).
    pub start_seq: u64,
    /// The last session seq received.
    pub last_seq: u64,
    /// Every session event received, in order.
    pub events: Vec<Value>,
    /// Index of the next session event not consumed by `next_event` / `wait_event`.
    next: usize,
    /// `ack`, `error`, `pong` frames not taken yet.
    pub replies: VecDeque<Value>,
    /// Every execution event received (shared executions), in order.
    pub exec_frames: Vec<Value>,
    /// Every frame received after `session_state`, in order (for ordering checks).
    pub log: Vec<Value>,
}

impl Cluster {
    pub fn gateway_name(&self, i: usize) -> String {
        self.gateways[i].name.clone()
    }

    /// Joins `session` on gateway `i` as `user` / `name`; checks the `session_state` it gets first.
    pub async fn collab(&self, i: usize, session: &str, user: &str, name: &str) -> Collab {
        self.collab_after(i, session, user, name, None).await
    }

    /// Like `collab`, with `afterSeq` (replay of the session events after it).
    pub async fn collab_after(
        &self,
        i: usize,
        session: &str,
        user: &str,
        name: &str,
        after_seq: Option<u64>,
    ) -> Collab {
        let path = collab_path(session, user, name, after_seq);
        let mut client = self.client(i, &path).await;
        client.label = format!(
            "{}/{}/{}[{user}]",
            self.name, self.gateways[i].name, session
        );
        Collab::from_client(
            client,
            session,
            user,
            name,
            &self.gateways[i].name,
            after_seq,
        )
        .await
    }
}

impl Collab {
    /// Reads and checks the first frame (`session_state`) of a freshly connected collaboration socket.
    pub async fn from_client(
        mut client: Client,
        session: &str,
        user: &str,
        name: &str,
        node: &str,
        after_seq: Option<u64>,
    ) -> Collab {
        let state = client.recv_json().await;
        let label = client.label.clone();
        assert_eq!(
            ty(&state),
            "session_state",
            "{label}: the first frame must be session_state, got {}",
            short(&state)
        );
        assert!(
            state.get("seq").is_none(),
            "{label}: session_state carries no top-level seq: {}",
            short(&state)
        );
        let p = &state["payload"];
        assert_eq!(p["sessionId"], json!(session), "{label}: {}", short(&state));
        let participant_id = p["participantId"]
            .as_str()
            .unwrap_or_else(|| panic!("{label}: session_state.participantId: {}", short(&state)))
            .to_owned();
        assert!(
            participant_id.starts_with(&format!("{user}#"))
                && participant_id.len() > user.len() + 1,
            "{label}: the participant id must be `<userId>#<random>`, got {participant_id:?}"
        );
        let snapshot_seq = p["snapshotSeq"]
            .as_u64()
            .unwrap_or_else(|| panic!("{label}: session_state.snapshotSeq: {}", short(&state)));
        assert!(
            snapshot_seq >= 1,
            "{label}: the joiner's own participant_joined is an event, so snapshotSeq >= 1: {}",
            short(&state)
        );
        let participants = p["participants"]
            .as_array()
            .unwrap_or_else(|| panic!("{label}: session_state.participants: {}", short(&state)));
        let me: Vec<&Value> = participants
            .iter()
            .filter(|x| x["id"] == json!(participant_id))
            .collect();
        assert_eq!(
            me.len(),
            1,
            "{label}: the joiner is listed exactly once among the participants: {}",
            short(&state)
        );
        assert_eq!(me[0]["userId"], json!(user), "{label}: {}", short(me[0]));
        assert_eq!(me[0]["name"], json!(name), "{label}: {}", short(me[0]));
        assert_eq!(me[0]["nodeId"], json!(node), "{label}: {}", short(me[0]));
        let ids: BTreeSet<&str> = participants
            .iter()
            .filter_map(|x| x["id"].as_str())
            .collect();
        assert_eq!(
            ids.len(),
            participants.len(),
            "{label}: participant ids are unique: {}",
            short(&state)
        );
        let version = p["queryVersion"]
            .as_u64()
            .unwrap_or_else(|| panic!("{label}: session_state.queryVersion: {}", short(&state)));
        assert!(p["currentQuery"].is_string(), "{label}: {}", short(&state));
        if version == 0 {
            assert_eq!(p["currentQuery"], json!(""), "{label}: {}", short(&state));
            assert!(p["queryAuthor"].is_null(), "{label}: {}", short(&state));
        } else {
            assert!(p["queryAuthor"].is_string(), "{label}: {}", short(&state));
        }
        assert!(p["cursors"].is_object(), "{label}: {}", short(&state));
        assert!(p["chatMessages"].is_array(), "{label}: {}", short(&state));
        let start_seq = after_seq.unwrap_or(snapshot_seq).min(snapshot_seq);
        Collab {
            client,
            session_id: session.to_owned(),
            user: user.to_owned(),
            name: name.to_owned(),
            node: node.to_owned(),
            state,
            participant_id,
            snapshot_seq,
            start_seq,
            last_seq: start_seq,
            events: Vec::new(),
            next: 0,
            replies: VecDeque::new(),
            exec_frames: Vec::new(),
            log: Vec::new(),
        }
    }

    pub fn label(&self) -> &str {
        &self.client.label
    }

    /// Reads one frame (waiting until `deadline`) and files it; false on timeout.
    pub async fn pump(&mut self, deadline: Instant) -> bool {
        let wait = deadline.saturating_duration_since(Instant::now());
        let Some(f) = self.client.try_recv_json(wait).await else {
            return false;
        };
        self.file(f);
        true
    }

    fn file(&mut self, f: Value) {
        let label = self.client.label.clone();
        if is_session_event(&f) {
            let seq = f.get("seq").and_then(Value::as_u64).unwrap_or_else(|| {
                panic!(
                    "{label}: a session event without integer seq: {}",
                    short(&f)
                )
            });
            assert_eq!(
                seq,
                self.last_seq + 1,
                "{label}: session seq must continue {} without gap or repeat, got {}; events so far: {}",
                self.last_seq,
                short(&f),
                describe(&self.events[self.events.len().saturating_sub(12)..])
            );
            assert_eq!(
                f["payload"]["sessionId"],
                json!(self.session_id),
                "{label}: session event of another session: {}",
                short(&f)
            );
            self.last_seq = seq;
            self.events.push(f.clone());
        } else if is_event(&f) && exec_of(&f).is_some() {
            self.exec_frames.push(f.clone());
        } else if matches!(ty(&f), "ack" | "error" | "pong") {
            assert!(
                f.get("seq").is_none(),
                "{label}: a reply carries no seq: {}",
                short(&f)
            );
            self.replies.push_back(f.clone());
        } else {
            panic!(
                "{label}: unexpected frame on a collaboration socket: {}",
                short(&f)
            );
        }
        self.log.push(f);
    }

    /// Reads everything that arrives within `d`.
    pub async fn settle(&mut self, d: Duration) {
        let deadline = Instant::now() + d;
        while self.pump(deadline).await {}
    }

    /// Pumps until `cond(self)` holds; panics after `within`.
    pub async fn wait_for(
        &mut self,
        what: &str,
        within: Duration,
        mut cond: impl FnMut(&Collab) -> bool,
    ) {
        let start = Instant::now();
        let deadline = start + within;
        while !cond(self) {
            if !self.pump(deadline).await && !cond(self) {
                panic!(
                    "{}: timed out after {:?} waiting for {what}; session events: {}; replies: {:?}",
                    self.client.label,
                    start.elapsed(),
                    describe(&self.events[self.events.len().saturating_sub(20)..]),
                    self.replies.iter().map(short).collect::<Vec<_>>()
                );
            }
        }
    }

    /// The next session event not consumed yet.
    pub async fn next_event(&mut self, within: Duration) -> Value {
        self.wait_event("the next session event", within, |_| true)
            .await
    }

    /// Consumes session events until one matches `pred` (the skipped ones stay in `events`); returns it.
    pub async fn wait_event(
        &mut self,
        what: &str,
        within: Duration,
        mut pred: impl FnMut(&Value) -> bool,
    ) -> Value {
        let start = Instant::now();
        let deadline = start + within;
        loop {
            while self.next < self.events.len() {
                let i = self.next;
                self.next += 1;
                if pred(&self.events[i]) {
                    return self.events[i].clone();
                }
            }
            if !self.pump(deadline).await {
                panic!(
                    "{}: timed out after {:?} waiting for {what}; session events so far: {}",
                    self.client.label,
                    start.elapsed(),
                    describe(&self.events[self.events.len().saturating_sub(20)..])
                );
            }
        }
    }

    /// Session events not consumed yet (marks them consumed).
    pub fn take_unread(&mut self) -> Vec<Value> {
        let out = self.events[self.next..].to_vec();
        self.next = self.events.len();
        out
    }

    /// Session events of type `t` received so far.
    pub fn events_of(&self, t: &str) -> Vec<&Value> {
        self.events.iter().filter(|f| ty(f) == t).collect()
    }

    /// Takes the first reply matching `pred`, pumping until it arrives.
    pub async fn reply(
        &mut self,
        what: &str,
        within: Duration,
        mut pred: impl FnMut(&Value) -> bool,
    ) -> Value {
        let start = Instant::now();
        let deadline = start + within;
        loop {
            if let Some(pos) = self.replies.iter().position(&mut pred) {
                return self.replies.remove(pos).expect("in range");
            }
            if !self.pump(deadline).await {
                panic!(
                    "{}: timed out after {:?} waiting for {what}; replies: {:?}; session events: {}",
                    self.client.label,
                    start.elapsed(),
                    self.replies.iter().map(short).collect::<Vec<_>>(),
                    describe(&self.events[self.events.len().saturating_sub(20)..])
                );
            }
        }
    }

    /// The `ack` or the `error` answering client frame id `id`.
    pub async fn answer(&mut self, id: &str, within: Duration) -> Value {
        self.reply(&format!("the answer to frame {id}"), within, |f| {
            (ty(f) == "ack" && f["payload"]["id"] == json!(id))
                || (ty(f) == "error" && f["payload"]["ref"] == json!(id))
        })
        .await
    }

    /// The `ack` of frame `id`; panics if an `error` answers it instead.
    pub async fn ack(&mut self, id: &str) -> Value {
        let f = self.answer(id, DEFAULT_TIMEOUT).await;
        assert_eq!(
            ty(&f),
            "ack",
            "{}: expected the ack of {id}, got {}",
            self.client.label,
            short(&f)
        );
        f
    }

    /// The `error` answering frame `id`, with code `code`.
    pub async fn expect_error(&mut self, id: &str, code: &str) -> Value {
        let f = self.answer(id, DEFAULT_TIMEOUT).await;
        assert_eq!(
            (ty(&f), f["payload"]["code"].as_str()),
            ("error", Some(code)),
            "{}: expected error {code} answering {id}, got {}",
            self.client.label,
            short(&f)
        );
        assert!(
            f["payload"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{}: an error says what to fix: {}",
            self.client.label,
            short(&f)
        );
        f
    }

    /// Panics if any `error` frame was received and not taken.
    pub fn assert_no_errors(&self) {
        let errors: Vec<String> = self
            .replies
            .iter()
            .filter(|f| ty(f) == "error")
            .map(short)
            .collect();
        assert!(
            errors.is_empty(),
            "{}: unexpected error frames: {errors:?}",
            self.client.label
        );
    }

    pub async fn send(&mut self, v: Value) {
        self.client.send_json(v).await;
    }

    pub async fn chat(&mut self, frame_id: Option<&str>, msg_id: &str, content: &str) {
        self.send(chat_frame(frame_id, msg_id, content)).await;
    }

    pub async fn update_query(&mut self, frame_id: Option<&str>, query: &str, base: Option<u64>) {
        self.send(update_query_frame(frame_id, query, base)).await;
    }

    pub async fn move_cursor(&mut self, cursor: Value) {
        self.send(json!({"type": "move_cursor", "payload": {"cursor": cursor}}))
            .await;
    }

    /// `execute_query` on the collaboration socket; returns the execution id from its ack.
    pub async fn execute(&mut self, query: &str, options: Option<Value>, id: &str) -> String {
        self.send(execute_query_frame(query, options, Some(id)))
            .await;
        let ack = self.ack(id).await;
        exec_of(&ack)
            .unwrap_or_else(|| {
                panic!(
                    "{}: the ack of execute_query names the execution: {}",
                    self.client.label,
                    short(&ack)
                )
            })
            .to_owned()
    }

    /// The events of execution `exec` received so far.
    pub fn exec_events(&self, exec: &str) -> Vec<Value> {
        self.exec_frames
            .iter()
            .filter(|f| exec_of(f) == Some(exec))
            .cloned()
            .collect()
    }

    /// Pumps until the terminal event of `exec` arrived; returns all its events.
    pub async fn collect_execution(&mut self, exec: &str, within: Duration) -> Vec<Value> {
        let e = exec.to_owned();
        self.wait_for(&format!("the end of execution {exec}"), within, |c| {
            c.exec_frames
                .iter()
                .any(|f| exec_of(f) == Some(e.as_str()) && is_terminal(f))
        })
        .await;
        self.exec_events(exec)
    }

    /// App-level ping; waits for its pong.
    pub async fn ping(&mut self, ts: i64) -> Value {
        self.send(json!({"type": "ping", "payload": {"timestamp": ts}}))
            .await;
        let f = self
            .reply("a pong", DEFAULT_TIMEOUT, |f| {
                ty(f) == "pong" && f["payload"]["timestamp"] == json!(ts)
            })
            .await;
        assert!(
            f["payload"]["serverTime"]
                .as_i64()
                .is_some_and(|t| t > 1_600_000_000_000),
            "{}: pong.serverTime: {}",
            self.client.label,
            short(&f)
        );
        f
    }

    pub async fn close(self) {
        self.client.close().await;
    }
}

pub fn chat_frame(frame_id: Option<&str>, msg_id: &str, content: &str) -> Value {
    let mut f =
        json!({"type": "chat_message", "payload": {"message": {"id": msg_id, "content": content}}});
    if let Some(id) = frame_id {
        f["id"] = json!(id);
    }
    f
}

pub fn update_query_frame(frame_id: Option<&str>, query: &str, base: Option<u64>) -> Value {
    let mut f = json!({"type": "update_query", "payload": {"query": query}});
    if let Some(b) = base {
        f["payload"]["baseVersion"] = json!(b);
    }
    if let Some(id) = frame_id {
        f["id"] = json!(id);
    }
    f
}

// ---------------------------------------------------------------------------------------------------------
// Failover and overload (failover.rs, overload.rs)
// ---------------------------------------------------------------------------------------------------------

/// What [`Client::next_frame`] got.
#[derive(Debug)]
pub enum Received {
    /// A text frame (validated like every other).
    Frame(Value),
    /// The connection ended: the code of the server's close frame (None: it ended without one, e.g. the
    /// node was killed) and the transport error, if any.
    Closed {
        code: Option<u16>,
        error: Option<String>,
    },
    /// Nothing within the wait.
    Timeout,
}

impl Client {
    /// The next frame (stashed first), how the connection ended, or `Timeout` after `d`. Unlike
    /// `try_recv_json` it does not panic when the connection ends: failover tests expect that.
    pub async fn next_frame(&mut self, d: Duration) -> Received {
        if let Some(v) = self.stash.pop_front() {
            return Received::Frame(v);
        }
        match self.next_incoming(Instant::now() + d).await {
            Incoming::Frame(v) => Received::Frame(v),
            Incoming::Timeout => Received::Timeout,
            Incoming::Closed => Received::Closed {
                code: self.close_code,
                error: self.close_error.clone(),
            },
        }
    }

    /// Every frame (stashed first) until the connection ends, and the close code (None: no close frame).
    /// Panics if it is still open after `within`.
    pub async fn recv_until_close(&mut self, within: Duration) -> (Vec<Value>, Option<u16>) {
        let start = Instant::now();
        let deadline = start + within;
        let mut out: Vec<Value> = self.stash.drain(..).collect();
        loop {
            match self.next_incoming(deadline).await {
                Incoming::Frame(v) => out.push(v),
                Incoming::Closed => return (out, self.close_code),
                Incoming::Timeout => panic!(
                    "{}\n  (frames meanwhile: {})",
                    self.timeout_msg("the end of the connection", start.elapsed()),
                    describe(&out)
                ),
            }
        }
    }
}

impl ClusterBuilder {
    /// Like [`ClusterBuilder::start`], but every node (and the key clean-up) uses the Redis at `url`, e.g.
    /// a `redis-server` the test owns and stops. Nodes added later with `add_gateway`/`add_worker`, and
    /// `Cluster::redis()`, still use the shared [`redis_url`].
    pub async fn start_with_redis_url(self, url: &str) -> Cluster {
        assert!(!self.embedded, "an embedded cluster has no Redis");
        self.start_on(Some(url)).await
    }
}

// ---------------------------------------------------------------------------------------------------------
// Prometheus metrics
// ---------------------------------------------------------------------------------------------------------

/// `name{labels} value` lines of a Prometheus text exposition, keyed by `name{labels}` as printed.
pub fn parse_metrics(text: &str) -> std::collections::HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// One metric of [`parse_metrics`]'s map (panics, listing what there is, when it is missing).
pub fn metric(metrics: &std::collections::HashMap<String, f64>, key: &str) -> f64 {
    *metrics.get(key).unwrap_or_else(|| {
        panic!("no metric {key} in:\n{}", {
            let mut keys: Vec<_> = metrics.keys().cloned().collect();
            keys.sort();
            keys.join("\n")
        })
    })
}

/// A free loopback port (for a listener a process is told to open).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
