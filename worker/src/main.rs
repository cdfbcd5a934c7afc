//! `worker`: takes query jobs from Redis and runs them on PostgreSQL.

use std::sync::Arc;

use anyhow::Context;
use c2s_shared::config::{BusArgs, LogArgs, SecretUrl};
use c2s_worker::{PostgresEngine, Worker, WorkerArgs};
use clap::Parser;

/// Chat2SQL Realtime worker: runs queries from the Redis job stream on PostgreSQL and streams the results back.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// PostgreSQL URL the queries run on, e.g. postgres://reader@127.0.0.1:5432/app (use a read-only role).
    #[arg(
        long,
        env = "C2S_DATABASE_URL",
        required_unless_present = "database_url_file"
    )]
    database_url: Option<SecretUrl>,

    /// File holding the PostgreSQL URL (keeps its password out of the environment).
    #[arg(long, env = "C2S_DATABASE_URL_FILE", conflicts_with = "database_url")]
    database_url_file: Option<std::path::PathBuf>,

    /// Serve Prometheus metrics at http://<addr>/metrics (e.g. 0.0.0.0:9091); unset: no metrics listener.
    #[arg(long, env = "C2S_METRICS_BIND")]
    metrics_bind: Option<std::net::SocketAddr>,

    /// Start even if the database role is privileged (a superuser, a member of pg_signal_backend, …),
    /// which lets any user's SQL escape the database or see and stop other users' queries. For a
    /// throw-away development database only; a loud warning is logged.
    #[arg(long, env = "C2S_INSECURE_PRIVILEGED_ROLE")]
    insecure_privileged_role: bool,

    /// Connections in the pool (default: --concurrency).
    #[arg(long, env = "C2S_DB_POOL_SIZE")]
    db_pool_size: Option<u32>,

    #[command(flatten)]
    bus: BusArgs,

    #[command(flatten)]
    worker: WorkerArgs,

    #[command(flatten)]
    log: LogArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _telemetry = c2s_shared::telemetry::init(&cli.log, "chat2sql-worker");
    tracing::info!(config = ?cli, "starting worker");
    if cli.bus.redis_url.is_none() {
        anyhow::bail!("--redis-url / C2S_REDIS_URL is required for a standalone worker");
    }
    if let Some(addr) = cli.metrics_bind {
        c2s_shared::metrics::install_with_listener(addr)
            .with_context(|| format!("serving metrics on {addr}"))?;
        c2s_shared::metrics::register_worker();
    }
    let bus = cli
        .bus
        .connect_redis()
        .await
        .context("connecting to Redis")?;
    let pool_size = cli
        .db_pool_size
        .unwrap_or(cli.worker.concurrency as u32)
        .max(1);
    let database_url: SecretUrl = match (&cli.database_url, &cli.database_url_file) {
        (Some(url), _) => url.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .with_context(|| format!("reading --database-url-file {}", path.display()))?
            .trim()
            .parse()
            .map_err(|e: String| anyhow::anyhow!("--database-url-file {}: {e}", path.display()))?,
        (None, None) => anyhow::bail!("--database-url or --database-url-file is required"),
    };
    let engine =
        PostgresEngine::connect(database_url.expose(), pool_size, cli.worker.limits.clone())
            .await
            .with_context(|| format!("connecting to PostgreSQL at {database_url}"))?;
    let audit = c2s_worker::role_check::audit(engine.pool())
        .await
        .context("checking the database role's privileges")?;
    if !audit.problems.is_empty() {
        if !cli.insecure_privileged_role {
            anyhow::bail!("{}", audit.refusal());
        }
        tracing::warn!(
            role = %audit.role,
            problems = ?audit.problems,
            "PRIVILEGED DATABASE ROLE (--insecure-privileged-role): any user's SQL can escape the \
             database or see and stop other users' queries. For a throw-away development database only."
        );
    }
    let worker = Worker::new(bus, Arc::new(engine), cli.worker.clone());
    worker
        .listen_for_cancels()
        .await
        .context("subscribing to cancel requests")?;
    // The one line on stdout: tools and tests wait for it.
    println!("READY {}", worker.id());
    tracing::info!(worker_id = worker.id(), "ready for jobs");
    worker.run(c2s_shared::shutdown_signal()).await;
    tracing::info!("worker stopped");
    Ok(())
}
