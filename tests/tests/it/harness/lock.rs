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
//! Lock order, so that no two tests wait for each other: the Redis Cluster lock first, then
//! [`exclusive`]. Both are tokio locks: a test that panics releases them without poisoning them.

use tokio::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

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
