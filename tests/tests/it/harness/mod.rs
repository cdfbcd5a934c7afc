//! Cross-process test harness: builds the `gateway` and `worker` binaries once per test process, starts
//! clusters of real processes (or gateways in this process, [`spawn_app`]) against the real Redis and
//! PostgreSQL, and talks to them over WebSocket.
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
//! Modules, one per section: `env` (where the services are), `process` (binaries, [`Node`]), `app`
//! (in-process gateways), `db` (per-test database and Redis prefix), `cluster`, `client`, `schema`,
//! `frames` and `stream` (reading frames, stream invariants), `collab`, `http` (GET, `/metrics`), `lock`
//! (which tests run beside which), and `raw` / `deploy` (the low-level and deployment helpers, used by path).
//!
//! Environment knobs (all optional): `C2S_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`),
//! `C2S_TEST_REDIS_CLUSTER_URL` (seed list, default the local cluster's 127.0.0.1:7001-7003),
//! `C2S_TEST_PG_URL` (server URL without database, default `postgres://postgres@127.0.0.1:5432`),
//! `C2S_TEST_NO_BUILD=1` (use the binaries already in the target dir), `C2S_TEST_KEEP=1` (keep the test
//! databases and Redis keys), `C2S_TEST_LOG=<filter>` (passed to the nodes as `C2S_LOG`).

mod app;
mod client;
mod cluster;
mod collab;
mod db;
#[macro_use]
mod env;
pub mod deploy;
mod frames;
mod http;
mod lock;
mod process;
pub mod raw;
mod schema;
mod stream;

pub use app::*;
pub use client::*;
pub use cluster::*;
pub use collab::*;
pub use db::*;
pub use env::*;
pub use frames::*;
pub use http::*;
pub use lock::*;
pub use process::*;
pub use schema::*;
pub use stream::*;

use std::future::Future;
use std::time::Duration;

/// Default wait for one frame (and for most other awaits).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a node may take to print its LISTENING / READY line.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on any single database or Redis call made by the harness itself.
const SIDE_CALL_TIMEOUT: Duration = Duration::from_secs(15);

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
