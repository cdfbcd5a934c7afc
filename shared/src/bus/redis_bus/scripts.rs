//! The bus's Lua scripts, one file each under `../lua/` (read with `include_str!`).
//!
//! Invariants of every script: it names each `KEYS[i]` and `ARGV[i]` as a local at its top, receives
//! every key it touches through KEYS (names from `keys.rs`; it never builds or parses one), and touches
//! the keys of one entity only, so one slot of a Redis Cluster. Operations spanning entities are split
//! into per-slot steps by their callers (see the crash analysis in `executions.rs` and `sessions.rs`).
//! The same scripts serve one Redis and a cluster.

use redis::Script;

/// The job scripts share `jobs_lib.lua` (functions, no KEYS of their own), prepended to each.
fn job_script(body: &str) -> Script {
    Script::new(&format!("{}\n{body}", include_str!("../lua/jobs_lib.lua")))
}

/// The session scripts share `session_lib.lua` (a function, no KEYS of its own), prepended to each.
fn session_script(body: &str) -> Script {
    Script::new(&format!(
        "{}\n{body}",
        include_str!("../lua/session_lib.lua")
    ))
}

pub(super) struct Scripts {
    pub lease_acquire: Script,
    pub exec_create: Script,
    pub exec_enqueued: Script,
    pub exec_append: Script,
    pub exec_orphaned: Script,
    pub exec_follower: Script,
    pub exec_followers: Script,
    pub try_start: Script,
    pub take_over: Script,
    pub cancel: Script,
    pub session_join: Script,
    pub session_leave: Script,
    pub session_update_query: Script,
    pub session_cursor: Script,
    pub session_chat: Script,
    pub session_append: Script,
    pub job_enqueue: Script,
    pub job_take: Script,
    pub job_ack: Script,
    pub job_reclaim: Script,
    pub job_keep_alive: Script,
    pub job_position: Script,
    pub conn_acquire: Script,
    pub node_beat: Script,
    pub nodes_dead: Script,
}

impl Scripts {
    pub fn load() -> Scripts {
        Scripts {
            lease_acquire: Script::new(include_str!("../lua/lease_acquire.lua")),
            exec_create: Script::new(include_str!("../lua/exec_create.lua")),
            exec_enqueued: Script::new(include_str!("../lua/exec_enqueued.lua")),
            exec_append: Script::new(include_str!("../lua/exec_append.lua")),
            exec_orphaned: Script::new(include_str!("../lua/exec_orphaned.lua")),
            exec_follower: Script::new(include_str!("../lua/exec_follower.lua")),
            exec_followers: Script::new(include_str!("../lua/exec_followers.lua")),
            try_start: Script::new(include_str!("../lua/try_start.lua")),
            take_over: Script::new(include_str!("../lua/take_over.lua")),
            cancel: Script::new(include_str!("../lua/cancel.lua")),
            session_join: session_script(include_str!("../lua/session_join.lua")),
            session_leave: session_script(include_str!("../lua/session_leave.lua")),
            session_update_query: session_script(include_str!("../lua/session_update_query.lua")),
            session_cursor: session_script(include_str!("../lua/session_cursor.lua")),
            session_chat: session_script(include_str!("../lua/session_chat.lua")),
            session_append: session_script(include_str!("../lua/session_append.lua")),
            job_enqueue: Script::new(include_str!("../lua/job_enqueue.lua")),
            job_take: job_script(include_str!("../lua/job_take.lua")),
            job_ack: job_script(include_str!("../lua/job_ack.lua")),
            job_reclaim: job_script(include_str!("../lua/job_reclaim.lua")),
            job_keep_alive: job_script(include_str!("../lua/job_keep_alive.lua")),
            job_position: Script::new(include_str!("../lua/job_position.lua")),
            conn_acquire: Script::new(include_str!("../lua/conn_acquire.lua")),
            node_beat: Script::new(include_str!("../lua/node_beat.lua")),
            nodes_dead: Script::new(include_str!("../lua/nodes_dead.lua")),
        }
    }
}

#[cfg(test)]
mod tests {
    /// Every script file names its KEYS and ARGV at the top and never builds a key from its pieces.
    #[test]
    fn scripts_take_keys_from_keys_rs() {
        let files = [
            include_str!("../lua/lease_acquire.lua"),
            include_str!("../lua/exec_create.lua"),
            include_str!("../lua/exec_enqueued.lua"),
            include_str!("../lua/exec_append.lua"),
            include_str!("../lua/exec_orphaned.lua"),
            include_str!("../lua/exec_follower.lua"),
            include_str!("../lua/exec_followers.lua"),
            include_str!("../lua/try_start.lua"),
            include_str!("../lua/take_over.lua"),
            include_str!("../lua/cancel.lua"),
            include_str!("../lua/session_join.lua"),
            include_str!("../lua/session_leave.lua"),
            include_str!("../lua/session_update_query.lua"),
            include_str!("../lua/session_cursor.lua"),
            include_str!("../lua/session_chat.lua"),
            include_str!("../lua/session_append.lua"),
            include_str!("../lua/job_enqueue.lua"),
            include_str!("../lua/job_take.lua"),
            include_str!("../lua/job_ack.lua"),
            include_str!("../lua/job_reclaim.lua"),
            include_str!("../lua/job_keep_alive.lua"),
            include_str!("../lua/job_position.lua"),
            include_str!("../lua/conn_acquire.lua"),
        ];
        for file in files {
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
