//! A [`Cluster`] of gateway and worker processes for one test, built with [`ClusterBuilder`]: its own
//! Redis key prefix, its own PostgreSQL database, its own log directory. Its gateways may instead run
//! in the test process ([`ClusterBuilder::in_process`], see [`super::app`]).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use sqlx::PgConnection;

use super::*;

pub struct ClusterBuilder {
    name: String,
    gateways: usize,
    workers: usize,
    embedded: bool,
    database: Option<bool>,
    gateway_args: Vec<String>,
    worker_args: Vec<String>,
    redis_mode: RedisMode,
    pub(super) in_process: bool,
    alone: bool,
}

impl ClusterBuilder {
    /// The test holds [`super::alone`]: this cluster does not wait for it (nor take a ticket).
    pub fn alone(mut self) -> Self {
        self.alone = true;
        self
    }

    /// Runs the nodes on the single Redis (default) or the local Redis Cluster (started if needed).
    pub fn redis(mut self, mode: RedisMode) -> Self {
        if mode == RedisMode::Cluster && self.redis_mode != mode {
            self.name.push_str("-on-redis-cluster");
        }
        self.redis_mode = mode;
        self
    }

    pub fn gateways(mut self, n: usize) -> Self {
        self.gateways = n;
        self
    }

    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// `gateway --embedded`: no Redis, no PostgreSQL, no worker processes.
    pub fn embedded(mut self) -> Self {
        self.embedded = true;
        self.workers = 0;
        self
    }

    /// Force creating (or not) the per-test database (default: when there are workers).
    pub fn database(mut self, yes: bool) -> Self {
        self.database = Some(yes);
        self
    }

    /// Extra flags for every gateway.
    pub fn gateway_args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.gateway_args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Extra flags for every worker.
    pub fn worker_args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.worker_args.extend(args.into_iter().map(Into::into));
        self
    }

    pub async fn start(self) -> Cluster {
        self.start_on(None).await
    }

    /// Starts the cluster; with `redis`, every node (and the key clean-up) uses that Redis instead of the
    /// shared one.
    async fn start_on(self, redis: Option<&str>) -> Cluster {
        // Build first (blocking, once per process), so a build failure is reported as such.
        let _ = binaries();
        // Not while a test that cuts every Redis client runs (lock.rs).
        let ticket = match self.alone {
            true => None,
            false => Some(cluster_ticket().await),
        };
        let log_dir = target_dir().join("test-logs").join(&self.name);
        let _ = std::fs::remove_dir_all(&log_dir);
        std::fs::create_dir_all(&log_dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log_dir.display()));
        let prefix = format!("t-{}", uuid::Uuid::new_v4().simple());
        let on_cluster = self.redis_mode == RedisMode::Cluster && !self.embedded;
        if on_cluster {
            ensure_redis_cluster();
        }
        let redis_guard = (!self.embedded).then(|| RedisPrefixGuard {
            url: redis.map_or_else(redis_url, str::to_owned),
            prefix: prefix.clone(),
            cluster: on_cluster,
        });
        let db = if self.database.unwrap_or(self.workers > 0 && !self.embedded) {
            Some(TestDb::create().await)
        } else {
            None
        };
        let mut cluster = Cluster {
            gateways: Vec::new(),
            workers: Vec::new(),
            redis_mode: if on_cluster {
                RedisMode::Cluster
            } else {
                RedisMode::Single
            },
            name: self.name,
            prefix,
            embedded: self.embedded,
            db,
            schema: None,
            log_dir,
            gateway_args: self.gateway_args,
            worker_args: self.worker_args,
            in_process: self.in_process,
            next_gateway: 0,
            next_worker: 0,
            _redis_guard: redis_guard,
            _ticket: ticket,
        };
        // Point the nodes at another Redis when asked.
        let retarget = |(name, mut args): (String, Vec<String>)| {
            if let (Some(url), Some(pos)) = (redis, args.iter().position(|a| a == "--redis-url")) {
                args[pos + 1] = url.to_owned();
            }
            (name, args)
        };
        let worker_specs: Vec<(String, Vec<String>)> = (0..self.workers)
            .map(|_| retarget(cluster.next_worker_spec(&[])))
            .collect();
        let gateway_specs: Vec<(String, Vec<String>)> = (0..self.gateways)
            .map(|_| retarget(cluster.next_gateway_spec(&[])))
            .collect();
        let log_dir = cluster.log_dir.clone();
        let workers = futures_util::future::join_all(
            worker_specs
                .into_iter()
                .map(|(name, args)| Node::spawn(NodeKind::Worker, name, args, &log_dir)),
        );
        let in_process = self.in_process;
        let gateways = futures_util::future::join_all(
            gateway_specs
                .into_iter()
                .map(|(name, args)| start_gateway(in_process, name, args, &log_dir)),
        );
        let (workers, gateways) = tokio::join!(workers, gateways);
        cluster.workers = workers;
        cluster.gateways = gateways;
        if let Some(gw) = cluster.gateways.first() {
            cluster.schema = Some(Arc::new(SchemaValidator::fetch(gw.addr()).await));
        }
        cluster
    }
}

/// N gateway and M worker processes sharing one Redis key prefix and one PostgreSQL database.
pub struct Cluster {
    // Declared first: dropped (SIGKILLed) before the database and the Redis keys are removed.
    pub gateways: Vec<Node>,
    pub workers: Vec<Node>,
    pub redis_mode: RedisMode,
    pub name: String,
    pub prefix: String,
    pub embedded: bool,
    pub db: Option<TestDb>,
    schema: Option<Arc<SchemaValidator>>,
    pub log_dir: PathBuf,
    gateway_args: Vec<String>,
    worker_args: Vec<String>,
    in_process: bool,
    next_gateway: usize,
    next_worker: usize,
    _redis_guard: Option<RedisPrefixGuard>,
    /// Dropped last: the cluster is down (its keys removed) before a test that runs alone starts.
    _ticket: Option<ClusterTicket>,
}

impl Cluster {
    pub fn builder(test_name: &str) -> ClusterBuilder {
        ClusterBuilder {
            name: test_name.to_owned(),
            gateways: 1,
            workers: 1,
            embedded: false,
            database: None,
            gateway_args: Vec::new(),
            worker_args: Vec::new(),
            redis_mode: RedisMode::Single,
            in_process: false,
            alone: false,
        }
    }

    /// `--redis-url …` (and `--redis-cluster`) for a node of this cluster.
    fn redis_args(&self) -> Vec<String> {
        match self.redis_mode {
            RedisMode::Single => vec!["--redis-url".into(), redis_url()],
            RedisMode::Cluster => vec![
                "--redis-url".into(),
                redis_cluster_url(),
                "--redis-cluster".into(),
            ],
        }
    }

    fn next_gateway_spec(&mut self, extra: &[&str]) -> (String, Vec<String>) {
        let name = format!("gw-{}", self.next_gateway);
        self.next_gateway += 1;
        let mut args: Vec<String> = vec!["--bind".into(), "127.0.0.1:0".into()];
        if self.embedded {
            args.push("--embedded".into());
        } else {
            args.extend(self.redis_args());
            args.extend(["--key-prefix".into(), self.prefix.clone()]);
        }
        args.extend(["--node-id".into(), name.clone()]);
        args.extend(self.gateway_args.iter().cloned());
        args.extend(extra.iter().map(|s| s.to_string()));
        // A networked gateway refuses to start without authentication; tests that do not configure a
        // JWT key run it explicitly insecure (development identities from ?user=&name=).
        if !self.embedded && !args.iter().any(|a| a.starts_with("--jwt-")) {
            args.push("--insecure-no-auth".into());
        }
        // Most tests open all their sockets as one development user (`anonymous`) and kill nodes under
        // them; the per-user connection cap is off unless a test sets it (tests/tests/it/fairness.rs does).
        if !args.iter().any(|a| a == "--max-connections-per-user") {
            args.extend(["--max-connections-per-user".into(), "0".into()]);
        }
        (name, args)
    }

    fn next_worker_spec(&mut self, extra: &[&str]) -> (String, Vec<String>) {
        let name = format!("w-{}", self.next_worker);
        self.next_worker += 1;
        let db = self
            .db
            .as_ref()
            .expect("a worker needs the per-test database");
        // Workers connect as the least-privilege role of `deploy/postgres/reader-role.sql`.
        let db_url = db.reader_url.clone();
        let mut args: Vec<String> = self.redis_args();
        args.extend([
            "--key-prefix".into(),
            self.prefix.clone(),
            "--database-url".into(),
            db_url,
            "--worker-id".into(),
            name.clone(),
        ]);
        args.extend(self.worker_args.iter().cloned());
        args.extend(extra.iter().map(|s| s.to_string()));
        // An explicit --database-url(-file) replaces the default one.
        let explicit = args
            .iter()
            .filter(|a| a.as_str() == "--database-url" || a.as_str() == "--database-url-file")
            .count();
        if explicit > 1 {
            if let Some(first) = args.iter().position(|a| a == "--database-url") {
                args.drain(first..first + 2);
            }
        }
        (name, args)
    }

    /// Starts one more gateway (extra flags after the cluster's); returns its index.
    pub async fn add_gateway(&mut self, extra: &[&str]) -> usize {
        let (name, args) = self.next_gateway_spec(extra);
        let node = start_gateway(self.in_process, name, args, &self.log_dir).await;
        self.gateways.push(node);
        if self.schema.is_none() {
            self.schema = Some(Arc::new(
                SchemaValidator::fetch(self.gateways[0].addr()).await,
            ));
        }
        self.gateways.len() - 1
    }

    /// Starts gateway `i` again, as a new process with the same arguments (so the same `--node-id`), as a
    /// supervisor restarting a crashed node would; kill it first. Its port may change (`--bind :0`).
    pub async fn respawn_gateway(&mut self, i: usize) {
        let old = &self.gateways[i];
        let (name, args) = (old.name.clone(), old.args.clone());
        let node = start_gateway(self.in_process, name, args, &self.log_dir).await;
        self.gateways[i] = node;
    }

    /// Starts one more worker (extra flags after the cluster's); returns its index.
    pub async fn add_worker(&mut self, extra: &[&str]) -> usize {
        let (name, args) = self.next_worker_spec(extra);
        let node = Node::spawn(NodeKind::Worker, name, args, &self.log_dir).await;
        self.workers.push(node);
        self.workers.len() - 1
    }

    pub fn gateway(&self, i: usize) -> &Node {
        &self.gateways[i]
    }

    pub fn schema(&self) -> Arc<SchemaValidator> {
        self.schema
            .clone()
            .expect("the cluster has no gateway to fetch /schema from")
    }

    /// A WebSocket client on gateway `i`, validating every received frame against `/schema`.
    pub async fn client(&self, i: usize, path: &str) -> Client {
        let gw = &self.gateways[i];
        let mut c = Client::connect(&gw.ws_url(path), Some(self.schema())).await;
        c.label = format!("{}/{}{}", self.name, gw.name, path);
        c
    }

    pub async fn query_client(&self, i: usize) -> Client {
        self.client(i, "/ws/query").await
    }

    pub fn db(&self) -> &TestDb {
        self.db.as_ref().expect("this cluster has no database")
    }

    /// A PostgreSQL connection of the test's own to the cluster's database.
    pub async fn pg(&self) -> PgConnection {
        self.db().connect().await
    }

    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        let url = redis_url();
        let client = redis::Client::open(url.as_str()).expect("valid redis url");
        tokio::time::timeout(SIDE_CALL_TIMEOUT, client.get_multiplexed_async_connection())
            .await
            .expect("connecting to Redis timed out")
            .expect("connecting to Redis failed")
    }

    /// Runs one Redis command on the cluster's Redis (single or cluster, following MOVED).
    pub async fn redis_query(&self, cmd: &redis::Cmd) -> redis::RedisResult<redis::Value> {
        let fut = async {
            match self.redis_mode {
                RedisMode::Single => cmd.query_async(&mut self.redis().await).await,
                RedisMode::Cluster => cmd.query_async(&mut redis_cluster_conn().await).await,
            }
        };
        tokio::time::timeout(SIDE_CALL_TIMEOUT, fut)
            .await
            .expect("a Redis call of the test timed out")
    }

    /// Every Redis key under this cluster's prefix.
    pub async fn redis_keys(&self) -> Vec<String> {
        let pattern = format!("{}:*", self.prefix);
        if self.redis_mode == RedisMode::Cluster {
            return cluster_scan(&pattern).await;
        }
        let mut con = self.redis().await;
        tokio::time::timeout(SIDE_CALL_TIMEOUT, scan_keys(&mut con, &pattern))
            .await
            .expect("SCAN timed out")
            .expect("SCAN failed")
    }

    /// The execution ids that have state in Redis (`<prefix>:{e:<id>}[:…]`, per shared/src/keys.rs).
    pub async fn execution_ids_in_redis(&self) -> BTreeSet<String> {
        let head = format!("{}:{{e:", self.prefix);
        self.redis_keys()
            .await
            .into_iter()
            .filter_map(|k| {
                k.strip_prefix(&head)
                    .and_then(|rest| rest.split('}').next())
                    .map(str::to_owned)
            })
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "\n==== test {} failed; node logs in {} (Redis prefix {}, database {:?})",
                self.name,
                self.log_dir.display(),
                self.prefix,
                self.db.as_ref().map(|d| d.name.as_str())
            );
            for node in self.gateways.iter().chain(&self.workers) {
                eprintln!(
                    "---- {} (tail of {}) ----\n{}",
                    node.name,
                    node.log_path.display(),
                    node.log_tail(25)
                );
            }
        }
    }
}

impl ClusterBuilder {
    /// Like [`ClusterBuilder::start`], but every node (and the key clean-up) uses the Redis at `url`, e.g.
    /// a `redis-server` the test owns and stops. Nodes added later with `add_gateway`/`add_worker`, and
    /// `Cluster::redis()`, still use the shared [`redis_url`].
    pub async fn start_with_redis_url(self, url: &str) -> Cluster {
        assert!(!self.embedded, "an embedded cluster has no Redis");
        self.start_on(Some(url)).await
    }
}
