//! Building the gateway: the bus (Redis, or in-process with an embedded worker), node presence and the
//! HTTP server. [`Application::build`] binds the listener (port 0 picks a free one) and starts the bus;
//! [`Application::run_until_stopped`] serves until SIGTERM/SIGINT (the binary), [`Application::spawn`]
//! serves on a thread of its own until [`RunningApp::stop`] (tests start a gateway in-process that way).
//! Process-wide state (the tracing subscriber, the metrics recorder, the open-files limit) is the
//! binary's: nothing here installs it, so several applications can run in one process.

use std::future::Future;
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
use tokio::runtime::Runtime;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::auth::Authenticator;
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

/// A gateway built and bound, not yet serving: its bus runtime, backend (bus and embedded worker),
/// presence beat and listener.
pub struct Application {
    cli: Cli,
    listener: TcpListener,
    addr: SocketAddr,
    node_id: String,
    metrics: PrometheusHandle,
    auth: Authenticator,
    backend: Backend,
    presence: Vec<JoinHandle<()>>,
    /// Which nodes hold their link to Redis (the reaper's and the rejoins').
    links: Arc<crate::links::Links>,
    /// The bus and the embedded worker get a multi-threaded runtime of their own; actix runs its
    /// per-thread workers beside it. Declared last: dropped after the tasks above.
    bus_runtime: Runtime,
}

impl Application {
    /// Checks the authentication set-up, connects the bus (or starts the embedded worker), announces the
    /// node and binds `cli.bind`. `metrics` renders `/metrics`: the binary passes the handle of the
    /// process-wide recorder it installed. Blocks (it drives its own runtime): call it outside any async
    /// context.
    pub fn build(cli: Cli, metrics: PrometheusHandle) -> anyhow::Result<Application> {
        // Refuse a bad or missing authentication set-up before touching anything else.
        let auth = Authenticator::from_cli(&cli)?;
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
        let timings = crate::presence::Timings {
            heartbeat: Duration::from_millis(cli.collab.presence_heartbeat_ms.max(10)),
            ttl: Duration::from_millis(cli.collab.presence_ttl_ms.max(10)),
            reap: Duration::from_millis(cli.collab.presence_reap_ms.max(10)),
        };
        let links = Arc::new(crate::links::Links::new(
            backend.bus.clone(),
            node_id.clone(),
            Duration::from_millis(cli.collab.presence_link_grace_ms),
            timings.ttl,
        ));
        let presence = {
            let _guard = bus_runtime.enter();
            crate::presence::spawn(backend.bus.clone(), node_id.clone(), timings, links.clone())
        };
        let listener = bind_listener(&cli.bind, cli.ws.listen_backlog)
            .with_context(|| format!("binding {}", cli.bind))?;
        let addr = listener.local_addr()?;
        Ok(Application {
            cli,
            listener,
            addr,
            node_id,
            metrics,
            auth,
            backend,
            presence,
            links,
            bus_runtime,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// What the binary does: serves until SIGTERM/SIGINT, then drains (see [`Application::serve`]).
    /// Prints `LISTENING <addr>`, the one line on stdout (tools and tests wait for it to learn the port),
    /// once the signals are caught, so a SIGTERM from then on drains instead of killing.
    pub fn run_until_stopped(self) -> anyhow::Result<()> {
        let addr = self.addr;
        self.serve(move || {
            let signal = c2s_shared::shutdown_signal();
            println!("LISTENING {addr}");
            signal
        })
    }

    /// Serves on a thread of its own until [`RunningApp::stop`] (or drop), then drains like a SIGTERM.
    pub fn spawn(self) -> RunningApp {
        let addr = self.addr;
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("c2s-app-{}", self.node_id))
            .spawn(move || {
                self.serve(|| async {
                    let _ = stopped.await;
                })
            })
            .expect("spawning the application thread");
        RunningApp {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Serves until the future made by `stop` (made inside the server's runtime) resolves, then drains:
    /// `/readyz` turns 503 and upgrades are refused at once, every socket is closed with 1012 (clients
    /// reconnect elsewhere and resume), and the server stops, forcing what is left after the grace period.
    /// Then the node leaves the node set and the bus shuts down.
    fn serve<F, S>(self, stop: S) -> anyhow::Result<()>
    where
        S: FnOnce() -> F,
        F: Future<Output = ()> + 'static,
    {
        let Application {
            cli,
            listener,
            addr,
            node_id,
            metrics,
            auth,
            backend,
            presence,
            links,
            bus_runtime,
        } = self;
        let served = actix_web::rt::System::new().block_on(async {
            let state = Arc::new(AppState::new(
                node_id.clone(),
                backend.bus.clone(),
                &cli,
                backend.embedded,
                metrics,
                auth,
                links,
            ));
            let server = http_server(&cli, state.clone(), listener)?;
            let stop = stop();
            tracing::info!(%addr, embedded = backend.embedded, "gateway listening");
            let handle = server.handle();
            let grace = Duration::from_secs(cli.ws.shutdown_grace_secs);
            actix_web::rt::spawn(async move {
                stop.await;
                tracing::info!(connections = state.connections(), "draining");
                state.start_draining();
                // Let the sessions send their close frames, then stop (graceful, bounded by the grace period).
                let deadline = tokio::time::Instant::now() + grace;
                while state.connections() > 0 && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                handle.stop(true).await;
            });
            server.await?;
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
}

/// The actix server on `listener`, running (its future serves). Must run inside an actix system.
fn http_server(cli: &Cli, state: Arc<AppState>, listener: TcpListener) -> anyhow::Result<Server> {
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
    // Stopping is ours: drain first (see `Application::serve`), then stop.
    .disable_signals()
    .listen(listener)?
    .run();
    Ok(server)
}

/// An [`Application`] serving on its own thread.
pub struct RunningApp {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl RunningApp {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drains and stops the gateway like a SIGTERM would, and waits until it has (bus shut down too).
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take().map(std::thread::JoinHandle::join) {
            None => Ok(()),
            Some(Ok(served)) => served,
            Some(Err(_)) => anyhow::bail!("the application thread panicked"),
        }
    }
}

impl Drop for RunningApp {
    fn drop(&mut self) {
        let _ = self.stop_and_join();
    }
}

/// Installs the process-wide metrics recorder and creates the gateway's metrics (and, in embedded mode,
/// the worker's) at zero; returns the handle that renders `/metrics`. Once per process: the binary's.
pub fn install_metrics(cli: &Cli) -> anyhow::Result<PrometheusHandle> {
    // One recorder per process: the embedded worker's metrics land beside the gateway's.
    let metrics = c2s_shared::metrics::install().context("installing the metrics recorder")?;
    c2s_shared::metrics::register_gateway();
    if cli.is_embedded() {
        c2s_shared::metrics::register_worker();
    }
    Ok(metrics)
}
