//! Building the gateway: the bus (Redis, or in-process with an embedded worker) and the HTTP server.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::middleware::DefaultHeaders;
use actix_web::{web, App, HttpServer};
use anyhow::Context;
use c2s_shared::bus::{Bus, MemoryBus};
use c2s_worker::engine::sqlite::{default_demo_path, remove_demo};
use c2s_worker::{SqliteEngine, Worker};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::oneshot;

use crate::config::Cli;

/// Response header naming the gateway node that answered (HTTP and WebSocket upgrades).
pub const NODE_HEADER: &str = "x-c2s-node";
use crate::state::AppState;
use crate::{demo_page, http, ws};

/// The bus and, in embedded mode, the in-process worker behind it.
pub struct Backend {
    pub bus: Arc<dyn Bus>,
    pub embedded: bool,
    stop_worker: Option<oneshot::Sender<()>>,
    /// A demo database this process created and removes at exit.
    demo_db: Option<PathBuf>,
}

impl Backend {
    /// Must run inside the tokio runtime that will drive the bus.
    pub async fn start(cli: &Cli) -> anyhow::Result<Backend> {
        if !cli.is_embedded() {
            let bus = cli
                .bus
                .connect_redis()
                .await
                .context("connecting to Redis")?;
            return Ok(Backend {
                bus,
                embedded: false,
                stop_worker: None,
                demo_db: None,
            });
        }
        tracing::warn!(
            "EMBEDDED DEMO MODE: in-process bus and worker on a SQLite demo database, no Redis, no authentication. \
             Not for production: set --redis-url to run as a cluster node."
        );
        let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new(cli.bus.settings()));
        let (path, owned) = match &cli.sqlite_path {
            Some(p) => (p.clone(), false),
            None => (default_demo_path(), true),
        };
        if owned {
            remove_demo(&path);
        }
        let engine = SqliteEngine::open(
            &path,
            cli.worker.concurrency as u32,
            cli.worker.limits.clone(),
        )
        .await
        .with_context(|| format!("opening the SQLite database {}", path.display()))?;
        let worker = Worker::new(bus.clone(), Arc::new(engine), cli.worker.clone());
        worker.listen_for_cancels().await?;
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(worker.run(async {
            let _ = stopped.await;
        }));
        Ok(Backend {
            bus,
            embedded: true,
            stop_worker: Some(stop),
            demo_db: owned.then_some(path),
        })
    }

    pub fn shutdown(mut self) {
        if let Some(stop) = self.stop_worker.take() {
            let _ = stop.send(());
        }
        if let Some(path) = self.demo_db.take() {
            remove_demo(&path);
        }
    }
}

/// The HTTP server, bound (port 0 picks a free port) but not yet running.
pub struct Application {
    server: Server,
    addr: SocketAddr,
    state: Arc<AppState>,
    grace: Duration,
}

/// Binds `addr` with an explicit listen backlog (std's `TcpListener::bind` uses 128).
fn bind_listener(addr: &str, backlog: i32) -> std::io::Result<TcpListener> {
    use std::net::ToSocketAddrs;
    let addr = addr.to_socket_addrs()?.next().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address to bind")
    })?;
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    // A restarted node can bind again while old connections sit in TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(socket.into())
}

impl Application {
    /// Must run inside an actix system.
    pub fn build(
        cli: &Cli,
        backend: &Backend,
        node_id: String,
        metrics: PrometheusHandle,
        auth: crate::auth::Authenticator,
    ) -> anyhow::Result<Application> {
        let listener = bind_listener(&cli.bind, cli.ws.listen_backlog)
            .with_context(|| format!("binding {}", cli.bind))?;
        let addr = listener.local_addr()?;
        let state = Arc::new(AppState::new(
            node_id,
            backend.bus.clone(),
            cli,
            backend.embedded,
            metrics,
            auth,
        ));
        state.relay_notices();
        let data = web::Data::new(state.clone());
        let node_header = state.node_id.clone();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                // Which node answered: lets operators (and the load-balancer tests) see where a
                // socket behind a load balancer landed.
                .wrap(DefaultHeaders::new().add((NODE_HEADER, node_header.as_str())))
                .service(http::healthz)
                .service(http::readyz)
                .service(http::schema)
                .service(http::metrics)
                .service(demo_page::index)
                .service(demo_page::asset)
                .service(ws::query)
                .service(ws::data)
                .service(ws::collaboration)
                .service(ws::monitoring)
                .service(http::post_notice)
        })
        // Small frames (chat, cursors, pongs) go out at once: with Nagle on, a frame written while the
        // previous one is unacknowledged waits for the peer's delayed ACK (tens of ms).
        .tcp_nodelay(true)
        .shutdown_timeout(cli.ws.shutdown_grace_secs)
        // Signals are ours: drain first (see `run_until_stopped`), then stop.
        .disable_signals()
        .listen(listener)?
        .run();
        Ok(Application {
            server,
            addr,
            state,
            grace: Duration::from_secs(cli.ws.shutdown_grace_secs),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until SIGTERM/SIGINT, then drains: `/readyz` turns 503 and upgrades are refused at once,
    /// every socket is closed with 1012 (clients reconnect elsewhere and resume), and the server stops,
    /// forcing what is left after the grace period.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let handle = self.server.handle();
        let state = self.state.clone();
        let grace = self.grace;
        // Registered before anything else runs, so a SIGTERM from now on drains instead of killing.
        let signal = c2s_shared::shutdown_signal();
        actix_web::rt::spawn(async move {
            signal.await;
            tracing::info!(connections = state.connections(), "draining");
            state.start_draining();
            // Let the sessions send their close frames, then stop (graceful, bounded by the grace period).
            let deadline = tokio::time::Instant::now() + grace;
            while state.connections() > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            handle.stop(true).await;
        });
        self.server.await
    }
}

/// Runs the gateway described by `cli` until it is stopped.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    // The bus and the embedded worker get a multi-threaded runtime of their own; actix runs its
    // per-thread workers beside it.
    // Refuse a bad or missing authentication set-up before touching anything else.
    let auth = crate::auth::Authenticator::from_cli(&cli)?;
    // One recorder per process: the embedded worker's metrics land beside the gateway's.
    let metrics = c2s_shared::metrics::install().context("installing the metrics recorder")?;
    c2s_shared::metrics::register_gateway();
    if cli.is_embedded() {
        c2s_shared::metrics::register_worker();
    }
    let bus_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("c2s-bus")
        .enable_all()
        .build()?;
    let backend = bus_runtime.block_on(Backend::start(&cli))?;
    let node_id = cli
        .node_id
        .clone()
        .unwrap_or_else(|| format!("gw-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]));
    // Before listening: participants still registered under this node id belong to a previous process
    // with the same id (a restarted node); this one has no sockets yet.
    bus_runtime.block_on(crate::presence::reap_previous_incarnation(
        backend.bus.as_ref(),
        &node_id,
    ));
    let presence = {
        let _guard = bus_runtime.enter();
        crate::presence::spawn(
            backend.bus.clone(),
            node_id.clone(),
            crate::presence::Timings {
                heartbeat: Duration::from_millis(cli.collab.presence_heartbeat_ms.max(10)),
                ttl: Duration::from_millis(cli.collab.presence_ttl_ms.max(10)),
                reap: Duration::from_millis(cli.collab.presence_reap_ms.max(10)),
            },
        )
    };
    let served = actix_web::rt::System::new().block_on(async {
        let app = Application::build(&cli, &backend, node_id.clone(), metrics, auth)?;
        // The one line on stdout: tools and tests wait for it to learn the port.
        println!("LISTENING {}", app.addr());
        tracing::info!(addr = %app.addr(), embedded = backend.embedded, "gateway listening");
        app.run_until_stopped().await?;
        anyhow::Ok(())
    });
    bus_runtime.block_on(async {
        // The beat stopped for good (awaited) before the node leaves the node set.
        for task in presence {
            task.abort();
            let _ = task.await;
        }
        crate::presence::announce_shutdown(backend.bus.as_ref(), &node_id).await;
    });
    backend.shutdown();
    bus_runtime.shutdown_timeout(Duration::from_secs(2));
    served
}
