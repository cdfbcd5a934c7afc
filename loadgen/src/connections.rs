//! The `connections` scenario: many idle WebSocket connections on one gateway, and what they cost it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::net::{connect_from, socket_addr, source_address};

/// Resident memory of a process in KiB, from /proc (Linux).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

pub async fn run(
    base: &str,
    endpoint: &str,
    count: usize,
    parallel: usize,
    hold_secs: u64,
    gateway_pid: Option<u32>,
    source_addresses: u8,
) -> anyhow::Result<serde_json::Value> {
    // Each socket needs a descriptor here too.
    let limit = rlimit::increase_nofile_limit(count as u64 + 1024).unwrap_or(0);
    let url = format!("{}{endpoint}", base.trim_end_matches('/'));
    let target = socket_addr(&url)?;
    println!("scenario connections: {count} idle sockets to {url} ({parallel} at a time, fd limit {limit})");
    let before = gateway_pid.and_then(rss_kib);
    let gate = Arc::new(Semaphore::new(parallel.max(1)));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(count);
    for i in 0..count {
        let permit = gate.clone().acquire_owned().await?;
        // One development identity per socket: the per-user connection cap is not what this measures.
        let url = format!("{url}?user=lgc{i}");
        let source = source_address(i, source_addresses);
        tasks.push(tokio::spawn(async move {
            let ws = connect_from(&url, target, source).await?;
            drop(permit);
            anyhow::Ok(ws)
        }));
    }
    let mut sockets = Vec::with_capacity(count);
    let mut failed = 0;
    for t in tasks {
        match t.await? {
            Ok(ws) => sockets.push(ws),
            Err(e) => {
                failed += 1;
                if failed <= 3 {
                    eprintln!("connect failed: {e}");
                }
            }
        }
    }
    let elapsed = started.elapsed();
    println!(
        "connected {} of {count} in {:.1} s ({:.0}/s), {failed} failed",
        sockets.len(),
        elapsed.as_secs_f64(),
        sockets.len() as f64 / elapsed.as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(hold_secs)).await;
    let mut per_connection_kib = None;
    let after = gateway_pid.and_then(rss_kib);
    if let (Some(before), Some(after)) = (before, after) {
        let per = (after.saturating_sub(before)) as f64 / sockets.len().max(1) as f64;
        per_connection_kib = Some(per);
        println!("gateway RSS: {before} KiB before, {after} KiB with the sockets open: {per:.1} KiB per connection");
    }
    let connected = sockets.len();
    drop(sockets);
    Ok(serde_json::json!({
        "scenario": "connections", "count": count, "connected": connected, "failed": failed,
        "connect_secs": elapsed.as_secs_f64(), "gateway_rss_kib_before": before,
        "gateway_rss_kib_after": after, "rss_kib_per_connection": per_connection_kib,
    }))
}
