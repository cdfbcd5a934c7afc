//! The command connections of the Redis bus, for one Redis or a Redis Cluster.
//!
//! - [`Conn`]: what every non-blocking command goes through — a `ConnectionManager` (one Redis, which
//!   reconnects by itself) or a redis-rs `ClusterConnection` (follows MOVED/ASK, refreshes its slot map,
//!   routes EVALSHA by its first key). Both fail fast (bounded retries and timeouts): callers answer
//!   `unavailable` or retry themselves.
//! - [`Endpoints`]: the seed URLs and the mode, from `--redis-url` / `--redis-cluster`.
//! - Blocking reads (the idle workers' `BLPOP` on the job queue's wake-up list) get a connection of
//!   their own from [`Endpoints::blocking`]: on a shared multiplexed connection every other command
//!   would queue behind them.
//!
//! No subscription ever goes through these connections (see `sharded.rs` and `classic.rs`): redis-rs's
//! cluster connection would take an unsolicited `sunsubscribe` for the reply of the next command.

use std::time::Duration;

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{
    AsyncConnectionConfig, Client, Cmd, ConnectionInfo, IntoConnectionInfo, Pipeline, RedisFuture,
    Value,
};

use crate::bus::BusError;

/// How long one Redis command may take before it counts as failed (blocking reads excepted).
pub(super) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long connecting to Redis may take.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Backoff bounds for re-establishing connections.
pub(super) const RECONNECT_MIN: Duration = Duration::from_millis(100);
pub(super) const RECONNECT_MAX: Duration = Duration::from_secs(1);

/// One Redis, or a Redis Cluster reached through seed nodes.
#[derive(Clone)]
pub(in crate::bus) struct Endpoints {
    pub cluster: bool,
    /// Connection settings of each seed (one when not a cluster), TCP_NODELAY on.
    pub seeds: Vec<ConnectionInfo>,
}

impl Endpoints {
    /// `url` is one URL, or (cluster) a comma-separated list of seed nodes.
    pub fn parse(url: &str, cluster: bool) -> Result<Endpoints, BusError> {
        let parts: Vec<&str> = url
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if parts.is_empty() {
            return Err(BusError::Unavailable("--redis-url is empty".into()));
        }
        if !cluster && parts.len() > 1 {
            return Err(BusError::Unavailable(
                "--redis-url lists several nodes: add --redis-cluster (C2S_REDIS_CLUSTER=true)"
                    .into(),
            ));
        }
        let seeds = parts
            .into_iter()
            .map(|p| Ok(nodelay(p.into_connection_info()?)))
            .collect::<Result<Vec<_>, redis::RedisError>>()?;
        Ok(Endpoints { cluster, seeds })
    }

    /// The command connection.
    pub async fn commands(&self) -> Result<Conn, BusError> {
        if self.cluster {
            let conn = self
                .cluster_client(RESPONSE_TIMEOUT)?
                .get_async_connection()
                .await?;
            return Ok(Conn::Cluster(conn));
        }
        let client = Client::open(self.seeds[0].clone())?;
        let conn = client
            .get_connection_manager_with_config(
                // Fail fast while Redis is down (callers answer `unavailable` and retry themselves);
                // the default schedule made every command wait ~9 s before failing.
                ConnectionManagerConfig::new()
                    .set_response_timeout(Some(RESPONSE_TIMEOUT))
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_number_of_retries(1)
                    .set_min_delay(RECONNECT_MIN)
                    .set_max_delay(RECONNECT_MAX),
            )
            .await?;
        Ok(Conn::Single(conn))
    }

    /// A connection for blocking reads only: its commands may wait up to `block` (plus a margin).
    pub async fn blocking(&self, block: Duration) -> Result<Conn, BusError> {
        let patience = block + RESPONSE_TIMEOUT;
        if self.cluster {
            let conn = self
                .cluster_client(patience)?
                .get_async_connection()
                .await?;
            return Ok(Conn::Cluster(conn));
        }
        let client = Client::open(self.seeds[0].clone())?;
        let conn: MultiplexedConnection = client
            .get_multiplexed_async_connection_with_config(
                &AsyncConnectionConfig::new()
                    .set_response_timeout(Some(patience))
                    .set_connection_timeout(Some(CONNECT_TIMEOUT)),
            )
            .await?;
        Ok(Conn::Blocking(conn))
    }

    fn cluster_client(&self, response_timeout: Duration) -> Result<ClusterClient, BusError> {
        Ok(ClusterClient::builder(self.seeds.clone())
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(response_timeout)
            .overall_response_timeout(Some(response_timeout + RESPONSE_TIMEOUT))
            // A dead master's slots fail over within about two node timeouts; commands meanwhile fail
            // within about a second and their callers decide (the default retried for minutes).
            .retries(3)
            .min_retry_wait(50)
            .max_retry_wait(400)
            .build()?)
    }

    /// Connection settings of `host:port` with the seeds' credentials and TLS mode.
    pub fn node(&self, host: &str, port: u16) -> ConnectionInfo {
        let seed = &self.seeds[0];
        let addr = match seed.addr() {
            redis::ConnectionAddr::TcpTls {
                insecure,
                tls_params,
                ..
            } => redis::ConnectionAddr::TcpTls {
                host: host.to_owned(),
                port,
                insecure: *insecure,
                tls_params: tls_params.clone(),
            },
            _ => redis::ConnectionAddr::Tcp(host.to_owned(), port),
        };
        seed.clone().set_addr(addr)
    }

    /// How the mode is described in logs.
    pub fn describe(&self) -> String {
        let addrs: Vec<String> = self.seeds.iter().map(|s| s.addr().to_string()).collect();
        if self.cluster {
            format!("Redis Cluster (seeds {})", addrs.join(", "))
        } else {
            format!("single Redis ({})", addrs.join(", "))
        }
    }
}

fn nodelay(info: ConnectionInfo) -> ConnectionInfo {
    // TCP_NODELAY: events are many small writes; with Nagle on, one can wait for Redis's delayed ACK of
    // the previous one.
    info.set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true))
}

/// A command connection: one Redis or a cluster.
#[derive(Clone)]
pub(in crate::bus) enum Conn {
    Single(ConnectionManager),
    Blocking(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Blocking(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Blocking(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Blocking(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl Conn {
    /// `WAIT replicas timeout` on the node that serves `key`'s slot (where the caller just wrote it);
    /// returns how many replicas acknowledged.
    pub async fn wait_on(
        &mut self,
        key: &str,
        replicas: u32,
        timeout: Duration,
    ) -> Result<i64, BusError> {
        let mut wait = redis::cmd("WAIT");
        wait.arg(replicas).arg(timeout.as_millis() as u64);
        let reply: Value = match self {
            Conn::Cluster(c) => {
                use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
                let slot = super::slots::key_slot(key.as_bytes());
                c.route_command(
                    wait,
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::new(
                        slot,
                        SlotAddr::Master,
                    ))),
                )
                .await?
            }
            other => wait.query_async(other).await?,
        };
        Ok(redis::from_redis_value(reply).unwrap_or(0))
    }

    /// `PING` one node (in a cluster: any node, so that readiness does not fail with one master).
    pub async fn ping_one(&mut self) -> Result<(), BusError> {
        let reply: Value = match self {
            Conn::Cluster(c) => {
                c.route_command(
                    redis::cmd("PING"),
                    redis::cluster_routing::RoutingInfo::SingleNode(
                        redis::cluster_routing::SingleNodeRoutingInfo::Random,
                    ),
                )
                .await?
            }
            other => redis::cmd("PING").query_async(other).await?,
        };
        match reply {
            Value::SimpleString(_) | Value::BulkString(_) | Value::Okay => Ok(()),
            other => Err(BusError::Malformed(format!("PING answered {other:?}"))),
        }
    }
}
