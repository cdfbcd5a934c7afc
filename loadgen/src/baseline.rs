//! Baselines measured in the same run as a scenario, with the stock clients: `psql` for PostgreSQL.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Wall time of `psql <url> -c "COPY (<query>) TO STDOUT" > /dev/null`: the database's own ceiling for
/// shipping the result to one client.
pub fn psql_copy(url: &str, query: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let status = Command::new("psql")
        .arg(url)
        .args(["-X", "-q", "-c", &format!("COPY ({query}) TO STDOUT")])
        .stdout(Stdio::null())
        .status()
        .context("running psql (is the PostgreSQL client installed?)")?;
    if !status.success() {
        bail!("psql COPY failed: {status}");
    }
    Ok(started.elapsed())
}

/// When PostgreSQL itself has the first row: the start-up time of the plan's top node, from
/// `EXPLAIN (ANALYZE, TIMING)` (a set-returning function, say, is materialised before its first row).
pub fn first_row_ms(url: &str, query: &str) -> anyhow::Result<f64> {
    let out = Command::new("psql")
        .arg(url)
        .args([
            "-X",
            "-A",
            "-t",
            "-c",
            &format!("EXPLAIN (ANALYZE, TIMING) {query}"),
        ])
        .output()
        .context("running psql")?;
    if !out.status.success() {
        bail!(
            "EXPLAIN ANALYZE failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let plan = String::from_utf8_lossy(&out.stdout);
    plan.lines()
        .next()
        .and_then(|top| top.split("actual time=").nth(1))
        .and_then(|t| t.split("..").next())
        .and_then(|t| t.parse().ok())
        .context("no actual time in the plan")
}
