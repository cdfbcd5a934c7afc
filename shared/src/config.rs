//! Configuration pieces both binaries flatten into their command line. Every setting is a flag and a
//! `C2S_*` environment variable with a documented default; secrets are masked when the config is printed.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use crate::bus::{Bus, BusError, BusSettings, RedisBus};

/// A URL that may carry a password (`redis://:pw@host`, `postgres://user:pw@host/db`): printed masked.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with its password (if any) replaced by `***` (each URL of a comma-separated list).
    pub fn masked(&self) -> String {
        if self.0.contains(',') {
            let parts: Vec<String> = self
                .0
                .split(',')
                .map(|p| SecretUrl(p.trim().to_owned()).masked())
                .collect();
            return parts.join(",");
        }
        match url::Url::parse(&self.0) {
            Ok(mut u) if u.password().is_some() => {
                let _ = u.set_password(Some("***"));
                u.to_string()
            }
            Ok(u) => u.to_string(),
            // Not a URL we can parse (e.g. a libpq key=value string): show nothing that could be secret.
            Err(_) => "<unparsed, hidden>".into(),
        }
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.masked())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl FromStr for SecretUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().is_empty() {
            return Err("empty URL".into());
        }
        Ok(SecretUrl(s.to_owned()))
    }
}

/// A secret value (token, password): never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Compares in time independent of where the first difference is.
    pub fn matches(&self, candidate: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), candidate.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

impl FromStr for Secret {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err("empty secret".into());
        }
        Ok(Secret(s.to_owned()))
    }
}

/// Where the bus lives and how long it keeps things.
#[derive(clap::Args, Debug, Clone)]
pub struct BusArgs {
    /// Redis URL, e.g. redis://127.0.0.1:6379 (rediss:// for TLS); with --redis-cluster a comma-separated
    /// list of seed nodes. On the gateway, leaving it unset selects embedded mode.
    #[arg(long, env = "C2S_REDIS_URL")]
    pub redis_url: Option<SecretUrl>,

    /// The Redis behind --redis-url is a Redis Cluster (Redis >= 7.0; Valkey works the same way).
    #[arg(long, env = "C2S_REDIS_CLUSTER", default_value_t = false, action = clap::ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true")]
    pub redis_cluster: bool,

    /// Replicas each job and event write waits for (Redis WAIT) before it counts as published; unset: 1
    /// with --redis-cluster, else 0. 0 turns it off.
    #[arg(long, env = "C2S_REDIS_WAIT_REPLICAS")]
    pub redis_wait_replicas: Option<u32>,

    /// Longest a write waits for those replicas (ms); past it the write stands, with a warning.
    #[arg(long, env = "C2S_REDIS_WAIT_TIMEOUT_MS", default_value_t = 500)]
    pub redis_wait_timeout_ms: u64,

    /// After a write reached fewer replicas than asked (e.g. a promoted master without its replica yet),
    /// how long (ms) writes to its slot do not wait for replicas.
    #[arg(long, env = "C2S_REDIS_WAIT_BACKOFF_MS", default_value_t = 10_000)]
    pub redis_wait_backoff_ms: u64,

    /// How long (ms) a worker retries publishing an event while Redis fails over.
    #[arg(long, env = "C2S_PUBLISH_RETRY_MS", default_value_t = 10_000)]
    pub publish_retry_ms: u64,

    /// An execution accepted but whose job was never recorded as queued this long (ms) was abandoned by a
    /// crashed gateway: it ends with an error instead of waiting.
    #[arg(long, env = "C2S_ENQUEUE_GRACE_MS", default_value_t = 30_000)]
    pub enqueue_grace_ms: u64,

    /// Prefix of every Redis key and channel (lets deployments and tests share one Redis).
    #[arg(long, env = "C2S_KEY_PREFIX", default_value = "c2s")]
    pub key_prefix: String,

    /// Approximate cap on the events kept per execution for `resume` (older ones are trimmed).
    #[arg(long, env = "C2S_EVENT_STREAM_MAX_LEN", default_value_t = 100_000)]
    pub event_stream_max_len: usize,

    /// Seconds an execution's events and state are kept after its last event.
    #[arg(long, env = "C2S_EVENT_TTL_SECS", default_value_t = 3600)]
    pub event_ttl_secs: u64,

    /// Seconds a client message id is remembered for idempotency.
    #[arg(long, env = "C2S_IDEMPOTENCY_TTL_SECS", default_value_t = 600)]
    pub idempotency_ttl_secs: u64,

    /// Messages buffered per channel per node for live subscribers; one further behind re-reads the stream.
    #[arg(long, env = "C2S_FANOUT_CAPACITY", default_value_t = 1024)]
    pub fanout_capacity: usize,

    /// The same for an execution's channel, whose chunks are large: a node holds at most this many
    /// chunks of one execution for its followers (a follower further behind re-reads the log).
    #[arg(long, env = "C2S_EXECUTION_FANOUT_CAPACITY", default_value_t = 16)]
    pub execution_fanout_capacity: usize,

    /// Seconds an unfinished execution at most counts against its owner's concurrent-query cap.
    #[arg(long, env = "C2S_USER_LEASE_SECS", default_value_t = 600)]
    pub user_lease_secs: u64,

    /// Seconds an idle collaboration session (query text, chat, events) is kept after its last event.
    #[arg(long, env = "C2S_SESSION_TTL_SECS", default_value_t = 86_400)]
    pub session_ttl_secs: u64,

    /// Approximate cap on the events kept per collaboration session for resume.
    #[arg(long, env = "C2S_SESSION_EVENT_MAX_LEN", default_value_t = 10_000)]
    pub session_event_max_len: usize,

    /// Approximate cap on the chat messages kept per session.
    #[arg(long, env = "C2S_CHAT_MAX_LEN", default_value_t = 1_000)]
    pub chat_max_len: usize,

    /// Bytes of a running execution's events that its live followers have not all taken yet, at most:
    /// when the window is full the worker stops reading from PostgreSQL until the slowest follower
    /// catches up, and what every follower took is trimmed from the log.
    #[arg(long, env = "C2S_STREAM_WINDOW_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub stream_window_bytes: u64,

    /// How long (ms) a follower whose socket closed still holds an execution's window (time to
    /// reconnect, on any node, and resume); after that the stream goes on without it, and a stream
    /// nobody follows for this long ends (`query_cancelled`, reason `no_readers`).
    #[arg(long, env = "C2S_RESUME_GRACE_MS", default_value_t = 5_000)]
    pub resume_grace_ms: u64,

    /// Seconds a finished execution's log and state are kept (late resumes, session followers).
    #[arg(long, env = "C2S_FINISHED_RETENTION_SECS", default_value_t = 60)]
    pub finished_retention_secs: u64,
}

impl BusArgs {
    pub fn settings(&self) -> BusSettings {
        BusSettings {
            key_prefix: self.key_prefix.clone(),
            event_stream_max_len: self.event_stream_max_len,
            event_ttl: Duration::from_secs(self.event_ttl_secs),
            idempotency_ttl: Duration::from_secs(self.idempotency_ttl_secs),
            fanout_capacity: self.fanout_capacity,
            execution_fanout_capacity: self.execution_fanout_capacity,
            user_lease: Duration::from_secs(self.user_lease_secs),
            session_ttl: Duration::from_secs(self.session_ttl_secs),
            session_event_max_len: self.session_event_max_len,
            chat_max_len: self.chat_max_len,
            wait_replicas: self
                .redis_wait_replicas
                .unwrap_or(u32::from(self.redis_cluster)),
            wait_timeout: Duration::from_millis(self.redis_wait_timeout_ms),
            wait_backoff: Duration::from_millis(self.redis_wait_backoff_ms),
            publish_retry: Duration::from_millis(self.publish_retry_ms),
            enqueue_grace: Duration::from_millis(self.enqueue_grace_ms),
            stream_window_bytes: self.stream_window_bytes.max(1),
            resume_grace: Duration::from_millis(self.resume_grace_ms),
            finished_retention: Duration::from_secs(self.finished_retention_secs),
        }
    }

    /// Connects to Redis (`--redis-url` must be set).
    pub async fn connect_redis(&self) -> Result<Arc<dyn Bus>, BusError> {
        let url = self.redis_url.as_ref().ok_or_else(|| {
            BusError::Unavailable("--redis-url / C2S_REDIS_URL is not set".into())
        })?;
        let bus: Arc<dyn Bus> =
            RedisBus::connect(url.expose(), self.redis_cluster, self.settings()).await?;
        Ok(bus)
    }
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable on a terminal, JSON otherwise.
    Auto,
    Json,
    Text,
}

#[derive(clap::Args, Debug, Clone)]
pub struct LogArgs {
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `c2s_gateway=debug,info`.
    #[arg(long, env = "C2S_LOG", default_value = "info")]
    pub log: String,

    /// Log output format.
    #[arg(long, env = "C2S_LOG_FORMAT", value_enum, default_value_t = LogFormat::Auto)]
    pub log_format: LogFormat,

    /// OTLP/HTTP endpoint traces are exported to, e.g. http://otel-collector:4318 (`/v1/traces` is
    /// appended). Unset: no trace export.
    #[arg(long, env = "C2S_OTEL_ENDPOINT")]
    pub otel_endpoint: Option<String>,

    /// How long (ms) spans are batched before export.
    #[arg(long, env = "C2S_OTEL_BATCH_DELAY_MS", default_value_t = 2_000)]
    pub otel_batch_delay_ms: u64,

    /// Which spans are exported (tracing EnvFilter syntax), independent of --log: `C2S_LOG=error`
    /// still exports every trace.
    #[arg(long, env = "C2S_OTEL_FILTER", default_value = crate::telemetry::DEFAULT_OTEL_FILTER)]
    pub otel_filter: String,

    /// Fraction of new traces exported (0..=1). Parent-based: a trace continued from a client's
    /// `traceparent`, a job or an event follows the sampled flag it carries.
    #[arg(long, env = "C2S_OTEL_SAMPLE_RATIO", default_value_t = 1.0)]
    pub otel_sample_ratio: f64,

    /// Finished spans waiting for export, at most; further spans are dropped (and counted).
    #[arg(long, env = "C2S_OTEL_MAX_QUEUE_SIZE", default_value_t = 2_048)]
    pub otel_max_queue_size: usize,

    /// Spans sent in one export request, at most.
    #[arg(long, env = "C2S_OTEL_MAX_EXPORT_BATCH_SIZE", default_value_t = 512)]
    pub otel_max_export_batch_size: usize,

    /// Debugging: one span per published and per delivered event (traces then grow with the result).
    #[arg(long, env = "C2S_OTEL_CHUNK_SPANS", default_value_t = false, action = clap::ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true")]
    pub otel_chunk_spans: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_is_hidden_and_compared() {
        let s: Secret = "tok3n".parse().unwrap();
        assert_eq!(format!("{s:?}"), "\"***\"");
        assert!(s.matches("tok3n"));
        assert!(!s.matches("tok3"));
        assert!(!s.matches("tok3m"));
    }

    #[test]
    fn secrets_are_masked() {
        let u: SecretUrl = "postgres://app:hunter2@db:5432/x".parse().unwrap();
        assert!(!format!("{u:?}").contains("hunter2"));
        assert!(u.masked().contains("***"));
        let r: SecretUrl = "redis://:pw@127.0.0.1:6379".parse().unwrap();
        assert!(!r.to_string().contains("pw@"));
        let plain: SecretUrl = "redis://127.0.0.1:6379".parse().unwrap();
        assert_eq!(plain.masked(), "redis://127.0.0.1:6379");
        let seeds: SecretUrl = "redis://:pw@10.0.0.1:7001, rediss://:pw@10.0.0.2:7002"
            .parse()
            .unwrap();
        assert!(!seeds.masked().contains("pw@"), "{}", seeds.masked());
        assert_eq!(seeds.masked().split(',').count(), 2);
    }
}
