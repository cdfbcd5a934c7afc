//! Which tests may run beside which, now that every suite shares one process (and cargo runs tests
//! concurrently): before, each suite was a binary of its own and cargo ran the binaries one by one.
//!
//! - [`exclusive`]: held by the tests that measure timing or load, or fill the machine (failover,
//!   overload, detection, fairness, backpressure, log integrity, the bench smoke, the Redis Cluster
//!   breakage): none of them runs beside another.
//! - The local Redis Cluster: every test on it holds a shared guard ([`redis_cluster_shared`], taken by
//!   `both_redis_modes!`), the tests that kill, fail over or freeze its nodes hold it alone
//!   ([`break_redis_cluster`]), so no other test sees it broken.
//!
//! - [`alone`]: held by a test that cuts every client of the shared Redis (`CLIENT KILL TYPE pubsub`):
//!   it starts once no [`super::Cluster`] of another test is up, and no other cluster starts meanwhile.
//!   Every cluster holds a [`ClusterTicket`] for that. A cluster starts at once while another is up
//!   (so a test may start a second cluster while holding its first); when none is up and a test waits
//!   to run alone, it waits for that test.
//!
//! Lock order, so that no two tests wait for each other: the Redis Cluster lock first, then
//! [`exclusive`] (which [`alone`] takes first), then the cluster ticket. The locks are tokio locks: a test
//! that panics releases them without poisoning them.

use tokio::sync::{Mutex, MutexGuard, Notify, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::run_redis_cluster_up;

static EXCLUSIVE: Mutex<()> = Mutex::const_new(());
static REDIS_CLUSTER: RwLock<()> = RwLock::const_new(());

/// Held for the whole test by the heavy tests: one at a time.
pub async fn exclusive() -> MutexGuard<'static, ()> {
    EXCLUSIVE.lock().await
}

/// Held by a test that uses the local Redis Cluster without breaking it.
pub async fn redis_cluster_shared() -> RwLockReadGuard<'static, ()> {
    REDIS_CLUSTER.read().await
}

/// The local Redis Cluster to break on purpose, and the machine to measure on, for one test. Heals the
/// cluster when dropped during a panic (a passing test heals it itself, and asserts that it could).
pub struct RedisClusterBreaker {
    // Released in this order: the heavy-test lock, then the cluster.
    _exclusive: MutexGuard<'static, ()>,
    _cluster: RwLockWriteGuard<'static, ()>,
}

pub async fn break_redis_cluster() -> RedisClusterBreaker {
    let cluster = REDIS_CLUSTER.write().await;
    RedisClusterBreaker {
        _exclusive: exclusive().await,
        _cluster: cluster,
    }
}

impl Drop for RedisClusterBreaker {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Err(e) = run_redis_cluster_up() {
                eprintln!("healing the Redis Cluster after a failed test failed: {e}");
            }
        }
    }
}

/// The clusters up, and the test that runs (or waits to run) alone.
struct Beside {
    clusters: usize,
    alone_waiting: bool,
    alone_running: bool,
}

static BESIDE: std::sync::Mutex<Beside> = std::sync::Mutex::new(Beside {
    clusters: 0,
    alone_waiting: false,
    alone_running: false,
});
static BESIDE_CHANGED: Notify = Notify::const_new();

fn beside() -> std::sync::MutexGuard<'static, Beside> {
    BESIDE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Held by every [`super::Cluster`] (except those of the test running [`alone`]) while it is up.
pub struct ClusterTicket(());

pub(super) async fn cluster_ticket() -> ClusterTicket {
    loop {
        // Created before the check: a change after it wakes this future.
        let changed = BESIDE_CHANGED.notified();
        {
            let mut b = beside();
            if !b.alone_running && (!b.alone_waiting || b.clusters > 0) {
                b.clusters += 1;
                return ClusterTicket(());
            }
        }
        changed.await;
    }
}

impl Drop for ClusterTicket {
    fn drop(&mut self) {
        beside().clusters -= 1;
        BESIDE_CHANGED.notify_waiters();
    }
}

/// While held, the test is the only one with a cluster up. Its own clusters are built with
/// [`super::ClusterBuilder::alone`].
pub struct Alone {
    _exclusive: MutexGuard<'static, ()>,
}

pub async fn alone() -> Alone {
    let exclusive = exclusive().await;
    beside().alone_waiting = true;
    loop {
        let changed = BESIDE_CHANGED.notified();
        {
            let mut b = beside();
            if b.clusters == 0 {
                b.alone_waiting = false;
                b.alone_running = true;
                return Alone {
                    _exclusive: exclusive,
                };
            }
        }
        changed.await;
    }
}

impl Drop for Alone {
    fn drop(&mut self) {
        beside().alone_running = false;
        BESIDE_CHANGED.notify_waiters();
    }
}
