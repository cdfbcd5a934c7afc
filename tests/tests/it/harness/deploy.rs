//! Helpers of the deployment tests: the binaries' real configuration surface (read from their
//! `--help`, the same text users read) and the validator tools installed by `scripts/tools.sh`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{binaries, workspace_root};

/// The configuration surface of one binary: its long flags and the environment variables they read.
#[derive(Debug, Clone)]
pub struct ConfigSurface {
    /// `--bind`, `--redis-url`, … (with the dashes).
    pub flags: BTreeSet<String>,
    /// `C2S_BIND`, `C2S_REDIS_URL`, …
    pub env_keys: BTreeSet<String>,
}

impl ConfigSurface {
    /// Runs `<binary> --help` and collects every long flag and every `[env: NAME=…]`.
    pub fn of(binary: &Path) -> ConfigSurface {
        let out = Command::new(binary)
            .arg("--help")
            .output()
            .unwrap_or_else(|e| panic!("running {} --help: {e}", binary.display()));
        assert!(out.status.success(), "{} --help failed", binary.display());
        let text = String::from_utf8_lossy(&out.stdout);
        let mut flags = BTreeSet::new();
        let mut env_keys = BTreeSet::new();
        for line in text.lines() {
            let line = line.trim_start();
            if let Some(rest) = line.strip_prefix("[env: ") {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                env_keys.insert(name);
            }
            // `-h, --help` and `--bind <BIND>`: the first `--word` of an option line.
            let option = line
                .strip_prefix("-h, ")
                .or(line.strip_prefix("-V, "))
                .unwrap_or(line);
            if let Some(rest) = option.strip_prefix("--") {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                    .collect();
                if !name.is_empty() {
                    flags.insert(format!("--{name}"));
                }
            }
        }
        assert!(
            env_keys.len() > 5 && flags.len() > 5,
            "could not read the options of {}",
            binary.display()
        );
        ConfigSurface { flags, env_keys }
    }

    pub fn gateway() -> ConfigSurface {
        ConfigSurface::of(&binaries().gateway)
    }

    pub fn worker() -> ConfigSurface {
        ConfigSurface::of(&binaries().worker)
    }

    /// Whether `arg` (`--flag` or `--flag=value`) names a real flag; non-flag arguments are values.
    pub fn accepts_arg(&self, arg: &str) -> bool {
        match arg.strip_prefix("--") {
            Some(_) => self.flags.contains(arg.split('=').next().unwrap_or(arg)),
            None => true,
        }
    }
}

/// The Python virtualenv `scripts/tools.sh` fills with the validators (check-jsonschema,
/// kubernetes-validate, PyYAML). Override with `C2S_TOOLS_VENV`.
pub fn tools_venv() -> PathBuf {
    if let Some(dir) = std::env::var_os("C2S_TOOLS_VENV") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".cache/chat2sql-realtime/venv")
}

/// Path of a tool in the venv; panics with the command that installs it when missing.
pub fn venv_tool(name: &str) -> PathBuf {
    let path = tools_venv().join("bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: run `bash scripts/tools.sh` (scripts/test.sh does)",
        path.display()
    );
    path
}

/// `deploy/…` in the repository.
pub fn deploy_path(rel: &str) -> PathBuf {
    workspace_root().join("deploy").join(rel)
}
