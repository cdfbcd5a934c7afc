//! Low-level helpers for the failover and overload tests, beside the harness in `mod.rs`: a raw WebSocket
//! client over a plain TCP socket (a client that stops reading, which a WebSocket library would not let us
//! be), a server-frame parser, a lenient HTTP GET, `/metrics` scraping, RSS sampling, and a `redis-server`
//! owned by a test (to stop and restart it).
//!
//! Used as `crate::harness::raw`; it does not depend on the rest of the harness.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::process::{Child, Command};
use tokio::time::Instant;

// ---------------------------------------------------------------------------------------------------------
// Raw WebSocket client
// ---------------------------------------------------------------------------------------------------------

/// A WebSocket client speaking RFC 6455 by hand over a TCP socket. It reads only when told to.
pub struct RawWs {
    tcp: TcpStream,
    /// Bytes read after the upgrade response (server frames), not handed out yet.
    leftover: Vec<u8>,
}

impl RawWs {
    /// Upgrades `path` on `addr`; with `recv_buffer`, the socket's receive buffer is set to that size
    /// first (a small one makes a client that stops reading fill its TCP window sooner).
    pub async fn connect(addr: SocketAddr, path: &str, recv_buffer: Option<u32>) -> RawWs {
        let fut = async {
            let socket = if addr.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            if let Some(n) = recv_buffer {
                socket.set_recv_buffer_size(n)?;
            }
            let mut tcp = socket.connect(addr).await?;
            let key = base64_16(uuid::Uuid::new_v4().as_bytes());
            let request = format!(
                "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            );
            tcp.write_all(request.as_bytes()).await?;
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let head_end = loop {
                if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break p + 4;
                }
                let n = tcp.read(&mut chunk).await?;
                if n == 0 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!(
                            "connection closed during the upgrade: {:?}",
                            String::from_utf8_lossy(&buf)
                        ),
                    ));
                }
                buf.extend_from_slice(&chunk[..n]);
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
            assert!(
                head.starts_with("HTTP/1.1 101"),
                "upgrade of {path} on {addr} refused: {head}"
            );
            Ok::<_, std::io::Error>((tcp, buf[head_end..].to_vec()))
        };
        let (tcp, leftover) = tokio::time::timeout(Duration::from_secs(30), fut)
            .await
            .unwrap_or_else(|_| panic!("raw upgrade of {path} on {addr} timed out"))
            .unwrap_or_else(|e| panic!("raw upgrade of {path} on {addr} failed: {e}"));
        RawWs { tcp, leftover }
    }

    /// Sends one masked text frame (clients must mask, RFC 6455 §5.3).
    pub async fn send_text(&mut self, text: &str) {
        let frame = client_frame(0x1, text.as_bytes());
        tokio::time::timeout(Duration::from_secs(10), self.tcp.write_all(&frame))
            .await
            .expect("raw send timed out")
            .expect("raw send failed");
    }

    /// Reads everything until the server closes the TCP connection (EOF or reset); returns the bytes
    /// (including what was left over from the upgrade) and whether it ended by EOF (false: reset).
    /// Panics if the connection is still open after `within`.
    pub async fn read_to_eof(&mut self, within: Duration) -> (Vec<u8>, bool) {
        let mut out = std::mem::take(&mut self.leftover);
        let deadline = Instant::now() + within;
        let mut chunk = vec![0u8; 256 * 1024];
        loop {
            match tokio::time::timeout_at(deadline, self.tcp.read(&mut chunk)).await {
                Err(_) => panic!(
                    "the server did not close the raw connection within {within:?} ({} bytes read)",
                    out.len()
                ),
                Ok(Ok(0)) => return (out, true),
                Ok(Ok(n)) => out.extend_from_slice(&chunk[..n]),
                Ok(Err(_)) => return (out, false),
            }
        }
    }
}

/// A masked client frame with FIN set.
pub fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 14);
    f.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        f.push(0x80 | len as u8);
    } else if len <= u16::MAX as usize {
        f.push(0x80 | 126);
        f.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        f.push(0x80 | 127);
        f.extend_from_slice(&(len as u64).to_be_bytes());
    }
    let mask: [u8; 4] = uuid::Uuid::new_v4().as_bytes()[..4]
        .try_into()
        .expect("4 bytes");
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// One frame sent by the server.
#[derive(Debug, Clone)]
pub struct RawFrame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl RawFrame {
    /// The close code of a close frame (None: no code, or not a close frame).
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == 0x8 && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }

    pub fn text(&self) -> Option<&str> {
        (self.opcode == 0x1)
            .then(|| std::str::from_utf8(&self.payload).ok())
            .flatten()
    }
}

/// Parses server frames (unmasked; 7-bit, 16-bit and 64-bit lengths). Returns the complete frames and
/// the number of trailing bytes that do not form a whole frame. Panics on a masked server frame.
pub fn parse_server_frames(mut bytes: &[u8]) -> (Vec<RawFrame>, usize) {
    let mut frames = Vec::new();
    loop {
        if bytes.len() < 2 {
            return (frames, bytes.len());
        }
        let fin = bytes[0] & 0x80 != 0;
        let opcode = bytes[0] & 0x0f;
        assert!(bytes[1] & 0x80 == 0, "a server frame must not be masked");
        let (len, header) = match bytes[1] & 0x7f {
            126 => {
                if bytes.len() < 4 {
                    return (frames, bytes.len());
                }
                (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4)
            }
            127 => {
                if bytes.len() < 10 {
                    return (frames, bytes.len());
                }
                let mut b = [0u8; 8];
                b.copy_from_slice(&bytes[2..10]);
                (u64::from_be_bytes(b) as usize, 10)
            }
            n => (n as usize, 2),
        };
        if bytes.len() < header + len {
            return (frames, bytes.len());
        }
        frames.push(RawFrame {
            fin,
            opcode,
            payload: bytes[header..header + len].to_vec(),
        });
        bytes = &bytes[header + len..];
    }
}

fn base64_16(bytes: &[u8; 16]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------------------
// HTTP, metrics, processes
// ---------------------------------------------------------------------------------------------------------

/// A GET that never panics: None when the connection is refused, fails, or takes longer than `within`.
/// Returns (status, body) (the body as received; fine for short plain-text answers).
pub async fn try_http_get(addr: SocketAddr, path: &str, within: Duration) -> Option<(u16, String)> {
    let fut = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf).to_string();
        let status = text.split_whitespace().nth(1)?.parse::<u16>().ok()?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Some((status, body))
    };
    tokio::time::timeout(within, fut).await.ok().flatten()
}

/// `GET /metrics` (None if the node does not answer).
pub async fn scrape(addr: SocketAddr) -> Option<String> {
    match try_http_get(addr, "/metrics", Duration::from_secs(10)).await {
        Some((200, body)) => Some(body),
        _ => None,
    }
}

/// Sum of every series of metric `name` (any labels) in a Prometheus text exposition whose label set
/// contains every `label_filter` fragment (e.g. `code="1013"`).
pub fn metric_sum(text: &str, name: &str, label_filter: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            let rest = key.strip_prefix(name)?;
            if !(rest.is_empty() || rest.starts_with('{')) {
                return None;
            }
            if !label_filter.iter().all(|f| rest.contains(f)) {
                return None;
            }
            value.trim().parse::<f64>().ok()
        })
        .sum()
}

/// Resident set size of a process, in KiB (`VmRSS` of /proc/<pid>/status).
pub fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding 127.0.0.1:0")
        .port()
}

/// The `p`-th percentile (0..=100, nearest rank) of `values`.
pub fn percentile(values: &[Duration], p: f64) -> Duration {
    assert!(!values.is_empty(), "percentile of nothing");
    let mut v = values.to_vec();
    v.sort();
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

// ---------------------------------------------------------------------------------------------------------
// A redis-server owned by the test
// ---------------------------------------------------------------------------------------------------------

/// A `redis-server` child process on its own port, without persistence (killed when dropped).
pub struct RedisServer {
    pub port: u16,
    log_dir: PathBuf,
    child: Option<Child>,
    starts: usize,
    /// More `redis-server` arguments (a cluster node's).
    extra_args: Vec<String>,
}

impl RedisServer {
    /// Starts `redis-server` on a free port; its output goes to `<log_dir>/redis-<n>.log`.
    pub async fn start(log_dir: &Path) -> RedisServer {
        RedisServer::start_with(log_dir, free_port(), Vec::new()).await
    }

    /// Starts `redis-server` on `port` with more arguments.
    async fn start_with(log_dir: &Path, port: u16, extra_args: Vec<String>) -> RedisServer {
        std::fs::create_dir_all(log_dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log_dir.display()));
        let mut server = RedisServer {
            port,
            log_dir: log_dir.to_path_buf(),
            child: None,
            starts: 0,
            extra_args,
        };
        server.restart().await;
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// (Re)starts the server on the same port and waits until it answers PING (bounded).
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "redis-server is already running");
        self.starts += 1;
        let log = self
            .log_dir
            .join(format!("redis-{}-{}.log", self.port, self.starts));
        let out = std::fs::File::create(&log)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        let err = out.try_clone().expect("clone log file handle");
        let port = self.port.to_string();
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            port.as_str(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
        ])
        .args(&self.extra_args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .kill_on_drop(true);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server: {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if self.ping().await {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "redis-server on port {} exited at start-up ({status}); log {}:\n{}",
                    self.port,
                    log.display(),
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer PING within 15 s; log {}",
                self.port,
                log.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether the server answers `PING` with `+PONG` (raw RESP, bounded to 1 s).
    pub async fn ping(&self) -> bool {
        let addr = self.addr();
        let fut = async {
            let mut s = TcpStream::connect(addr).await.ok()?;
            s.write_all(b"PING\r\n").await.ok()?;
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf).await.ok()?;
            Some(buf[..n].starts_with(b"+PONG"))
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(1), fut).await,
            Ok(Some(true))
        )
    }

    /// SIGKILL (no shutdown, no save), then reap (bounded).
    pub async fn kill(&mut self) {
        let mut child = self.child.take().expect("redis-server is not running");
        let _ = child.start_kill();
        tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .expect("redis-server did not die within 10 s of SIGKILL")
            .expect("waiting for redis-server failed");
    }
}

// ---------------------------------------------------------------------------------------------------------
// A Redis Cluster owned by the test
// ---------------------------------------------------------------------------------------------------------

/// A private Redis Cluster of three masters without replicas (so `--redis-wait-replicas 0`), for a test
/// that kills and restarts all of it without disturbing the shared one. Each node keeps its slot map in
/// its `nodes.conf`, so a restarted cluster comes back with the same slots (and no data).
pub struct RedisClusterServers {
    pub nodes: Vec<RedisServer>,
}

impl RedisClusterServers {
    pub async fn start(log_dir: &Path) -> RedisClusterServers {
        let mut nodes = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            let conf = log_dir.join(format!("nodes-{port}.conf"));
            let _ = std::fs::remove_file(&conf);
            let args = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &conf.to_string_lossy(),
                "--cluster-node-timeout",
                "2000",
            ]
            .map(str::to_owned)
            .to_vec();
            nodes.push(RedisServer::start_with(log_dir, port, args).await);
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        create.args(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)));
        create.args(["--cluster-replicas", "0", "--cluster-yes"]);
        let out = create
            .output()
            .await
            .expect("running redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let servers = RedisClusterServers { nodes };
        servers.wait_ok(Duration::from_secs(20)).await;
        servers
    }

    /// The seed list for `--redis-url` (with `--redis-cluster`).
    pub fn url(&self) -> String {
        let urls: Vec<String> = self.nodes.iter().map(RedisServer::url).collect();
        urls.join(",")
    }

    /// Waits until every node says `cluster_state:ok` (bounded).
    pub async fn wait_ok(&self, within: Duration) {
        let deadline = Instant::now() + within;
        for node in &self.nodes {
            loop {
                let out = Command::new("redis-cli")
                    .args(["-p", &node.port.to_string(), "cluster", "info"])
                    .output()
                    .await
                    .expect("running redis-cli cluster info");
                if String::from_utf8_lossy(&out.stdout).contains("cluster_state:ok") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the private Redis Cluster is not ok within {within:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    pub async fn kill_all(&mut self) {
        for node in &mut self.nodes {
            node.kill().await;
        }
    }

    pub async fn restart_all(&mut self) {
        for node in &mut self.nodes {
            node.restart().await;
        }
    }
}
