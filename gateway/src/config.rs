//! Gateway settings: every one a flag and a `C2S_*` variable with a documented default.

use std::path::PathBuf;
use std::time::Duration;

use c2s_shared::config::{BusArgs, LogArgs, Secret};
use c2s_worker::WorkerArgs;

/// Chat2SQL Realtime gateway: terminates client WebSockets and relays through Redis
/// (or, with no Redis URL, runs everything in one process against a SQLite demo database).
#[derive(clap::Parser, Debug, Clone)]
#[command(name = "gateway", version, about)]
pub struct Cli {
    /// Address to listen on (port 0: any free port; the chosen address is printed as `LISTENING <addr>`).
    #[arg(long, env = "C2S_BIND", default_value = "127.0.0.1:8080")]
    pub bind: String,

    /// Name of this node in logs and node status (default: `gw-<random>`).
    #[arg(long, env = "C2S_NODE_ID")]
    pub node_id: Option<String>,

    /// Embedded mode: in-process bus and worker on a SQLite demo database. The default when no Redis URL is set.
    #[arg(long, env = "C2S_EMBEDDED")]
    pub embedded: bool,

    /// Embedded mode: SQLite database file (created with demo data if missing). Default: a fresh demo
    /// database in the system temp directory, removed at exit.
    #[arg(long, env = "C2S_SQLITE_PATH")]
    pub sqlite_path: Option<PathBuf>,

    /// Bearer token of the admin API (`POST /admin/notices`); unset: the admin API is off.
    #[arg(long, env = "C2S_ADMIN_TOKEN")]
    pub admin_token: Option<Secret>,

    /// Interval (ms) of `node_status` on `/ws/monitoring`.
    #[arg(long, env = "C2S_NODE_STATUS_INTERVAL_MS", default_value_t = 5_000)]
    pub node_status_interval_ms: u64,

    #[command(flatten)]
    pub ws: WsArgs,

    #[command(flatten)]
    pub auth: AuthArgs,

    #[command(flatten)]
    pub collab: CollabArgs,

    #[command(flatten)]
    pub bus: BusArgs,

    #[command(flatten)]
    pub log: LogArgs,

    #[command(flatten, next_help_heading = "Embedded worker (only with --embedded)")]
    pub worker: WorkerArgs,
}

impl Cli {
    pub fn is_embedded(&self) -> bool {
        self.embedded || self.bus.redis_url.is_none()
    }
}

/// Per-connection limits and timers.
#[derive(clap::Args, Debug, Clone)]
pub struct WsArgs {
    /// Largest client frame in bytes; a larger one closes the connection with 1009.
    #[arg(long, env = "C2S_MAX_FRAME_BYTES", default_value_t = 64 * 1024)]
    pub max_frame_bytes: usize,

    /// Interval (ms) of server WebSocket pings.
    #[arg(long, env = "C2S_HEARTBEAT_INTERVAL_MS", default_value_t = 10_000)]
    pub heartbeat_interval_ms: u64,

    /// A client silent (no frame, no pong) for longer than this (ms) is closed.
    #[arg(long, env = "C2S_CLIENT_TIMEOUT_MS", default_value_t = 30_000)]
    pub client_timeout_ms: u64,

    /// Bytes of event frames waiting for one client before its event streams wait (one frame larger
    /// than this still goes, alone). Beyond them the socket's writer queues at most 32 frames.
    #[arg(long, env = "C2S_OUTBOUND_QUEUE_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub outbound_queue_bytes: usize,

    /// Executions one connection may follow at once.
    #[arg(long, env = "C2S_MAX_STREAMS_PER_CONNECTION", default_value_t = 32)]
    pub max_streams_per_connection: usize,

    /// Unfinished queries one user may have at once, over all nodes; the next gets `rate_limited`.
    #[arg(long, env = "C2S_MAX_QUERIES_PER_USER", default_value_t = 10)]
    pub max_queries_per_user: usize,

    /// Longest query text in bytes.
    #[arg(long, env = "C2S_MAX_QUERY_BYTES", default_value_t = 32 * 1024)]
    pub max_query_bytes: usize,

    /// A followed execution with no live event for this long (ms) is re-read from its log (safety net
    /// for live messages lost while Redis pub/sub reconnected).
    #[arg(long, env = "C2S_RESYNC_INTERVAL_MS", default_value_t = 2_000)]
    pub resync_interval_ms: u64,

    /// Events read from an execution's log per round trip when replaying.
    #[arg(long, env = "C2S_REPLAY_BATCH", default_value_t = 256)]
    pub replay_batch: usize,

    /// On SIGTERM/SIGINT the node drains: not ready, closes every socket with 1012, and exits within
    /// this many seconds.
    #[arg(long, env = "C2S_SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    pub shutdown_grace_secs: u64,

    /// Pending TCP connections the kernel queues for this node (listen backlog; capped by
    /// net.core.somaxconn). A small one drops SYNs when thousands of clients reconnect at once after a
    /// node failure, and each dropped SYN costs its client a 1 s, then 3 s, retransmit.
    #[arg(long, env = "C2S_LISTEN_BACKLOG", default_value_t = 4096)]
    pub listen_backlog: i32,

    /// WebSocket connections this node accepts at once; the next one is closed with 1013 at upgrade.
    #[arg(long, env = "C2S_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// WebSocket connections one user may have open at once over all nodes (every endpoint counts);
    /// the next is closed with 1013 at upgrade. 0: no cap.
    #[arg(long, env = "C2S_MAX_CONNECTIONS_PER_USER", default_value_t = 32)]
    pub max_connections_per_user: usize,

    /// How long (ms) a socket counts against its user's cap without being renewed (renewed on
    /// heartbeat ticks once a third of it has passed): after a node crash, its users' sockets stop
    /// counting within this.
    #[arg(long, env = "C2S_CONNECTION_LEASE_MS", default_value_t = 30_000)]
    pub connection_lease_ms: u64,

    /// Frames per second one user may send on average over all of their sockets on a node.
    #[arg(long, env = "C2S_USER_RATE_LIMIT_PER_SEC", default_value_t = 400)]
    pub user_rate_limit_per_sec: u32,

    /// Frames one user may send in a burst over all of their sockets on a node.
    #[arg(long, env = "C2S_USER_RATE_LIMIT_BURST", default_value_t = 2_000)]
    pub user_rate_limit_burst: u32,

    /// How often (ms) a queued query's place in the job queue is looked up and, when it changed, sent
    /// as `query_progress` step `queued` with `queuePosition`.
    #[arg(long, env = "C2S_QUEUE_POSITION_INTERVAL_MS", default_value_t = 1_000)]
    pub queue_position_interval_ms: u64,

    /// Frames per second a connection may send on average (token bucket refill rate).
    #[arg(long, env = "C2S_RATE_LIMIT_PER_SEC", default_value_t = 200)]
    pub rate_limit_per_sec: u32,

    /// Frames a connection may send in a burst (token bucket size).
    #[arg(long, env = "C2S_RATE_LIMIT_BURST", default_value_t = 1_000)]
    pub rate_limit_burst: u32,

    /// Refused (rate-limited) frames after which a connection is closed with 1008.
    #[arg(long, env = "C2S_RATE_LIMIT_MAX_REFUSED", default_value_t = 200)]
    pub rate_limit_max_refused: u32,

    /// A client that has not taken a frame for this long (ms) is a slow consumer: closed with 1013
    /// (it resumes with `afterSeq`).
    #[arg(long, env = "C2S_SEND_TIMEOUT_MS", default_value_t = 5_000)]
    pub send_timeout_ms: u64,
}

/// Who may connect. See README "Security".
#[derive(clap::Args, Debug, Clone)]
pub struct AuthArgs {
    /// HS256 shared secret of the JWTs clients present.
    #[arg(long, env = "C2S_JWT_SECRET")]
    pub jwt_secret: Option<Secret>,

    /// File holding the HS256 secret (instead of --jwt-secret; surrounding whitespace ignored).
    #[arg(long, env = "C2S_JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<PathBuf>,

    /// PEM public key (RSA -> RS256, EC P-256 -> ES256) the JWTs are verified with.
    #[arg(long, env = "C2S_JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<PathBuf>,

    /// JWK set file (JSON `{"keys":[…]}`) of RS256/ES256 keys, chosen by the token's `kid`.
    #[arg(long, env = "C2S_JWT_JWKS_FILE")]
    pub jwt_jwks_file: Option<PathBuf>,

    /// Required `aud` claim, if set.
    #[arg(long, env = "C2S_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Required `iss` claim, if set.
    #[arg(long, env = "C2S_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Clock skew (s) tolerated on `exp` and `nbf`.
    #[arg(long, env = "C2S_JWT_LEEWAY_SECS", default_value_t = 5)]
    pub jwt_leeway_secs: u64,

    /// Run a networked gateway without authentication (development identities from `?user=&name=`).
    #[arg(long, env = "C2S_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,

    /// Browser origins allowed to open sockets (comma-separated, `*` for any); other origins get 1008.
    /// Empty: no check. Requests without an Origin header (non-browser clients) are not affected.
    #[arg(long, env = "C2S_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
}

/// Collaboration sessions and presence.
#[derive(clap::Args, Debug, Clone)]
pub struct CollabArgs {
    /// A participant's cursor is broadcast at most once per this many ms (latest position wins).
    #[arg(long, env = "C2S_CURSOR_INTERVAL_MS", default_value_t = 50)]
    pub cursor_interval_ms: u64,

    /// A gateway silent for this long (ms, by the Redis clock) is presumed dead and its participants
    /// leave (`node_lost`). Keep it at least 3 heartbeats; raise it on a slow or lossy network to Redis
    /// (a live node silent this long is reaped: a false `node_lost`, its clients rejoin).
    #[arg(long, env = "C2S_PRESENCE_TTL_MS", default_value_t = 2_000)]
    pub presence_ttl_ms: u64,

    /// How often (ms) a gateway marks itself alive.
    #[arg(long, env = "C2S_PRESENCE_HEARTBEAT_MS", default_value_t = 500)]
    pub presence_heartbeat_ms: u64,

    /// How often (ms) a gateway looks for dead ones (a dead node's participants leave within
    /// `C2S_PRESENCE_TTL_MS` plus this).
    #[arg(long, env = "C2S_PRESENCE_REAP_MS", default_value_t = 250)]
    pub presence_reap_ms: u64,

    /// A gateway whose link to Redis (a subscription held for the life of its process) has been gone
    /// this long (ms) is dead: its participants leave (`node_lost`) without waiting for
    /// `C2S_PRESENCE_TTL_MS`, and a rejoin takes over its ghost at once. A live node's link drops only
    /// when its connection does, and it takes the link again at once; raise this where connections to
    /// Redis are cut and re-made often. 0: only the heartbeat TTL decides.
    #[arg(long, env = "C2S_PRESENCE_LINK_GRACE_MS", default_value_t = 500)]
    pub presence_link_grace_ms: u64,

    /// Participants one session may have at once.
    #[arg(long, env = "C2S_MAX_PARTICIPANTS", default_value_t = 200)]
    pub max_participants: usize,

    /// Longest chat message, in characters.
    #[arg(long, env = "C2S_MAX_CHAT_LENGTH", default_value_t = 4_000)]
    pub max_chat_length: usize,

    /// Recent chat messages a joiner gets in `session_state`.
    #[arg(long, env = "C2S_CHAT_HISTORY", default_value_t = 50)]
    pub chat_history: usize,
}

impl WsArgs {
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms.max(10))
    }
    pub fn client_timeout(&self) -> Duration {
        Duration::from_millis(self.client_timeout_ms.max(10))
    }
    pub fn send_timeout(&self) -> Duration {
        Duration::from_millis(self.send_timeout_ms.max(1))
    }
    pub fn connection_lease(&self) -> Duration {
        Duration::from_millis(self.connection_lease_ms.max(30))
    }
    pub fn queue_position_interval(&self) -> Duration {
        Duration::from_millis(self.queue_position_interval_ms.max(10))
    }
    pub fn resync_interval(&self) -> Duration {
        Duration::from_millis(self.resync_interval_ms.max(10))
    }
}
