//! The `gateway` and `worker` binaries (built once per test process) and one running [`Node`] of them:
//! its LISTENING/READY line, its log file, kill and signal.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::*;

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    Gateway,
    Worker,
}

/// One running `gateway` or `worker` process.
pub struct Node {
    pub name: String,
    /// The gateway's bound address (from its `LISTENING` line).
    pub addr: Option<SocketAddr>,
    /// Where the process's stderr goes.
    pub log_path: PathBuf,
    pub args: Vec<String>,
    run: Running,
}

/// How a [`Node`] runs: a child process, or (a gateway only) an [`c2s_gateway::Application`] in this
/// test process (see [`super::app`]), which cannot be killed or signalled.
pub(super) enum Running {
    Process(Child),
    /// Kept for its drop, which stops the gateway.
    InProcess {
        _app: c2s_gateway::RunningApp,
    },
}

impl Node {
    pub(super) async fn spawn(
        kind: NodeKind,
        name: String,
        args: Vec<String>,
        log_dir: &Path,
    ) -> Node {
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
            addr,
            log_path,
            args,
            run: Running::Process(child),
        }
    }

    /// A gateway running in this process (built by [`super::app`]).
    pub(super) fn in_process(
        name: String,
        args: Vec<String>,
        log_path: PathBuf,
        app: c2s_gateway::RunningApp,
    ) -> Node {
        Node {
            name,
            addr: Some(app.addr()),
            log_path,
            args,
            run: Running::InProcess { _app: app },
        }
    }

    /// The child process; panics for an in-process gateway (a test that kills or signals nodes needs
    /// real processes).
    fn child(&mut self) -> &mut Child {
        if matches!(self.run, Running::InProcess { .. }) {
            panic!("{}", self.not_a_process());
        }
        match &mut self.run {
            Running::Process(child) => child,
            Running::InProcess { .. } => unreachable!("checked above"),
        }
    }

    fn not_a_process(&self) -> String {
        format!(
            "{} runs in the test process: it has no pid and cannot be killed or signalled",
            self.name
        )
    }

    pub fn pid(&self) -> Option<u32> {
        match &self.run {
            Running::Process(child) => child.id(),
            Running::InProcess { .. } => panic!("{}", self.not_a_process()),
        }
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
        let name = self.name.clone();
        let child = self.child();
        let _ = child.start_kill();
        tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .unwrap_or_else(|_| panic!("{name} did not die within 10 s of SIGKILL"))
            .unwrap_or_else(|e| panic!("waiting for {name} failed: {e}"));
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
        match tokio::time::timeout(within, self.child().wait()).await {
            Ok(Ok(status)) => Some(status),
            _ => None,
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child().try_wait(), Ok(None))
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
