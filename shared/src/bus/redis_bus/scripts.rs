//! The rules every Lua script of the bus keeps, their check, and [`lua!`], which builds a script at its
//! call site. The scripts are one file each, beside the Rust of their concern (`../jobs/`, `../events/`,
//! `../sessions/`, `../nodes/`); a library file (`jobs_lib.lua`, `session_lib.lua`) is prepended where
//! a call names it.
//!
//! Invariants of every script: it names each `KEYS[i]` and `ARGV[i]` as a local at its top, receives
//! every key it touches through KEYS (names from `keys.rs`; it never builds or parses one), and touches
//! the keys of one entity only, so one slot of a Redis Cluster. Operations spanning entities are split
//! into per-slot steps by their callers (see the crash analysis in `jobs/redis.rs` and `sessions/redis.rs`).
//! The same scripts serve one Redis and a cluster.

/// The script in `$file` (beside the calling file), built once: `lua!("try_start.lua")`, or with a
/// library file prepended, `lua!("job_take.lua", with "jobs_lib.lua")`. Each script is named so at its
/// one call site.
macro_rules! lua {
    ($file:literal $(, with $lib:literal)?) => {{
        static SCRIPT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
            redis::Script::new(&[$(include_str!($lib),)? include_str!($file)].join("\n"))
        });
        &*SCRIPT
    }};
}
pub(in crate::bus) use lua;

#[cfg(test)]
mod tests {
    /// Every script file names its KEYS and ARGV at the top and never builds a key from its pieces.
    #[test]
    fn scripts_take_keys_from_keys_rs() {
        let bus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/bus");
        let mut files = Vec::new();
        for concern in ["jobs", "events", "sessions", "nodes"] {
            for entry in std::fs::read_dir(bus.join(concern)).expect("a concern's folder") {
                let path = entry.expect("a directory entry").path();
                let name = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default();
                // The libraries (`*_lib.lua`) hold functions only, prepended to the scripts that use them.
                if name.ends_with(".lua") && !name.ends_with("_lib.lua") {
                    files.push(std::fs::read_to_string(&path).expect("a script file"));
                }
            }
        }
        assert_eq!(files.len(), 26, "every script of every concern is checked");
        for file in &files {
            let code: Vec<&str> = file
                .lines()
                .filter(|l| !l.trim_start().starts_with("--") && !l.trim().is_empty())
                .collect();
            // KEYS and ARGV are read only in the leading block of locals.
            let body_start = code
                .iter()
                .position(|l| {
                    !(l.starts_with("local ") || l.starts_with("  ") || l.starts_with('}'))
                })
                .unwrap_or(code.len());
            for line in &code[body_start..] {
                assert!(
                    !line.contains("KEYS[") && !line.contains("ARGV["),
                    "KEYS/ARGV used outside the locals at the top: {line}\n{file}"
                );
            }
            for banned in ["string.match(KEYS", "..':", ".. ':", "string.gsub(KEYS"] {
                assert!(
                    !file.contains(banned),
                    "a script builds or parses a key ({banned}):\n{file}"
                );
            }
        }
    }
}
