//! Per-test PostgreSQL database and Redis key prefix (both removed when dropped unless
//! `C2S_TEST_KEEP=1`), and observing the statements a test's database is running.

use std::collections::BTreeSet;
use std::time::Duration;

use sqlx::{Connection, PgConnection};
use tokio::time::Instant;

use super::*;

/// A PostgreSQL database created for one test, dropped (best effort) when this is dropped. It is
/// prepared for workers by the project's own `deploy/postgres/reader-role.sql`.
pub struct TestDb {
    pub name: String,
    /// The superuser's URL (the test's own connections, table set-up).
    pub url: String,
    /// The least-privilege role's URL, the one workers connect with.
    pub reader_url: String,
}

/// The login role and password that `deploy/postgres/reader-role.sql` creates.
pub const READER_ROLE: &str = "chat2sql_reader";
pub const READER_PASSWORD: &str = "chat2sql-reader-demo";

/// `deploy/postgres/reader-role.sql` changes shared catalogs (the role), which concurrent loads
/// into several test databases would update at once ("tuple concurrently updated"): one at a time.
static READER_SCRIPT_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl TestDb {
    pub async fn create() -> TestDb {
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let admin_url = format!("{}/postgres", pg_server_url());
        let mut admin = pg_connect(&admin_url).await;
        tokio::time::timeout(
            SIDE_CALL_TIMEOUT,
            sqlx::query(&format!(r#"CREATE DATABASE "{name}""#)).execute(&mut admin),
        )
        .await
        .unwrap_or_else(|_| panic!("CREATE DATABASE {name} timed out"))
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name} failed: {e}"));
        let _ = admin.close().await;
        let url = format!("{}/{name}", pg_server_url());
        let mut reader = url::Url::parse(&url).expect("C2S_TEST_PG_URL is a URL");
        let _ = reader.set_username(READER_ROLE);
        let _ = reader.set_password(Some(READER_PASSWORD));
        let db = TestDb {
            reader_url: reader.to_string(),
            url,
            name,
        };
        db.load_reader_role().await;
        db
    }

    /// Loads `deploy/postgres/reader-role.sql` into the database (again: it is idempotent).
    pub async fn load_reader_role(&self) {
        let script_path = workspace_root().join("deploy/postgres/reader-role.sql");
        let script = std::fs::read_to_string(&script_path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", script_path.display()));
        let _serialized = READER_SCRIPT_LOCK.lock().await;
        let mut conn = self.connect().await;
        tokio::time::timeout(SIDE_CALL_TIMEOUT, sqlx::raw_sql(&script).execute(&mut conn))
            .await
            .unwrap_or_else(|_| panic!("loading reader-role.sql into {} timed out", self.name))
            .unwrap_or_else(|e| panic!("loading reader-role.sql into {}: {e}", self.name));
        let _ = conn.close().await;
    }

    /// A connection of the test's own to the test database.
    pub async fn connect(&self) -> PgConnection {
        pg_connect(&self.url).await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if keep_artifacts() {
            eprintln!("C2S_TEST_KEEP: keeping database {}", self.name);
            return;
        }
        let name = self.name.clone();
        let admin_url = format!("{}/postgres", pg_server_url());
        run_detached(async move {
            if let Ok(mut admin) = PgConnection::connect(&admin_url).await {
                let _ = sqlx::query(&format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#))
                    .execute(&mut admin)
                    .await;
                let _ = admin.close().await;
            }
        });
    }
}

pub async fn pg_connect(url: &str) -> PgConnection {
    tokio::time::timeout(SIDE_CALL_TIMEOUT, PgConnection::connect(url))
        .await
        .unwrap_or_else(|_| panic!("connecting to {url} timed out"))
        .unwrap_or_else(|e| panic!("connecting to {url} failed: {e}"))
}

/// Deletes every Redis key under the test's prefix when dropped (best effort).
/// Deletes every Redis key of a test's prefix when dropped (unless `C2S_TEST_KEEP`).
pub struct RedisPrefixGuard {
    pub(super) url: String,
    pub(super) prefix: String,
    pub(super) cluster: bool,
}

impl RedisPrefixGuard {
    pub fn new(prefix: &str) -> RedisPrefixGuard {
        RedisPrefixGuard {
            url: redis_url(),
            prefix: prefix.to_owned(),
            cluster: false,
        }
    }
}

impl Drop for RedisPrefixGuard {
    fn drop(&mut self) {
        if keep_artifacts() {
            return;
        }
        let url = self.url.clone();
        let pattern = format!("{}:*", self.prefix);
        if self.cluster {
            run_detached(async move {
                let keys = cluster_scan(&pattern).await;
                let mut con = redis_cluster_conn().await;
                for key in keys {
                    let _: Result<i64, _> = redis::cmd("DEL").arg(&key).query_async(&mut con).await;
                }
            });
            return;
        }
        run_detached(async move {
            let Ok(client) = redis::Client::open(url.as_str()) else {
                return;
            };
            let Ok(mut con) = client.get_multiplexed_async_connection().await else {
                return;
            };
            let Ok(keys) = scan_keys(&mut con, &pattern).await else {
                return;
            };
            for batch in keys.chunks(500) {
                let _: Result<i64, _> = redis::cmd("DEL").arg(batch).query_async(&mut con).await;
            }
        });
    }
}

/// Keys matching `pattern` on every master of the test Redis Cluster (a replica's SCAN would repeat them).
pub async fn cluster_scan(pattern: &str) -> Vec<String> {
    let mut keys = BTreeSet::new();
    for port in CLUSTER_PORTS {
        let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}")) else {
            continue;
        };
        let Ok(Ok(mut con)) = tokio::time::timeout(
            Duration::from_secs(2),
            client.get_multiplexed_async_connection(),
        )
        .await
        else {
            continue;
        };
        let role: Result<Vec<redis::Value>, _> = redis::cmd("ROLE").query_async(&mut con).await;
        let is_master =
            matches!(role.as_deref(), Ok([redis::Value::BulkString(r), ..]) if r == b"master");
        if is_master {
            if let Ok(found) = scan_keys(&mut con, pattern).await {
                keys.extend(found);
            }
        }
    }
    keys.into_iter().collect()
}

pub(super) async fn scan_keys(
    con: &mut redis::aio::MultiplexedConnection,
    pattern: &str,
) -> redis::RedisResult<Vec<String>> {
    let mut cursor: u64 = 0;
    let mut keys = Vec::new();
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(con)
            .await?;
        keys.extend(batch);
        if next == 0 {
            return Ok(keys);
        }
        cursor = next;
    }
}

/// For [`active_queries_with`]: every execution's statement in this database.
pub const ANY_EXECUTION: &str = "";

/// Active statements (other than our own) in this database: those of the execution whose id is
/// `marker` (the worker names each query's session `c2s <executionId>` in `application_name`, while
/// `query` shows the cursor's FETCH), or whose text contains `marker`; with [`ANY_EXECUTION`], every
/// execution's.
pub async fn active_queries_with(pg: &mut PgConnection, marker: &str) -> i64 {
    tokio::time::timeout(
        SIDE_CALL_TIMEOUT,
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE pid <> pg_backend_pid() AND state = 'active' AND datname = current_database() \
             AND CASE WHEN $1 = '' THEN application_name LIKE 'c2s %' \
                      ELSE strpos(query, $1) > 0 OR application_name = 'c2s ' || $1 END",
        )
        .bind(marker)
        .fetch_one(pg),
    )
    .await
    .expect("pg_stat_activity query timed out")
    .expect("pg_stat_activity query failed")
}

/// Polls until the number of active statements containing `marker` satisfies `pred`; returns whether it
/// did within `within`.
pub async fn wait_active_count(
    pg: &mut PgConnection,
    marker: &str,
    within: Duration,
    pred: impl Fn(i64) -> bool,
) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if pred(active_queries_with(pg, marker).await) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Samples the number of active statements containing `marker` for `during`; returns the maximum seen.
pub async fn max_active_during(pg: &mut PgConnection, marker: &str, during: Duration) -> i64 {
    let deadline = Instant::now() + during;
    let mut max = 0;
    loop {
        max = max.max(active_queries_with(pg, marker).await);
        if Instant::now() >= deadline {
            return max;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
