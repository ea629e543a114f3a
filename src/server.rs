//! `serve`: open the store, bind every listener, run until SIGINT/SIGTERM.
//!
//! Start-up is all-or-nothing: the store is opened and every socket bound
//! before anything serves, so a bad data directory or a busy port stops the
//! process with one line naming it. [`start`] returns a [`Server`] handle with
//! the addresses actually bound (port 0 in the config picks a free port, which
//! is how tests run the real server side by side).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access_log::AccessLog;
use crate::admin::{self, AdminState};
use crate::config::ListenSpec;
use crate::config::{Config, ConfigProvider};
use crate::control::{self, ControlState};
use crate::model::crypt::Keyring;
use crate::proxy::listener::{self, ListenerInfo};
use crate::proxy::udp::UdpCounters;
use crate::proxy::worker::{WorkerSockets, Workers};
use crate::proxy::ProxyCtx;
use crate::snapshot::publish;
use crate::stats::Stats;
use crate::store::local::LocalStore;
use crate::store::{Store, StoreError};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The store could not be opened.
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    /// A listener could not be bound.
    #[error("cannot bind {what} {addr}: {error}")]
    Bind {
        /// Which listener (config key).
        what: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        error: std::io::Error,
    },
    /// A configuration this build cannot serve.
    #[error("{0}")]
    Unsupported(String),
}

/// A running server.
pub struct Server {
    admin_addr: Option<SocketAddr>,
    control_addr: Option<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    stats: Arc<Stats>,
    tcp: Vec<Arc<ListenerInfo>>,
    udp: Vec<(Arc<ListenerInfo>, Arc<UdpCounters>)>,
    workers: Option<Workers>,
    proxy: ProxyCtx,
    grace: Duration,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("admin_addr", &self.admin_addr)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Address the Admin API is bound to (None when `enable_admin` is off).
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Address the Control API is bound to (None when `enable_control` is off).
    pub fn control_addr(&self) -> Option<SocketAddr> {
        self.control_addr
    }

    /// Address of the Prometheus export server, when enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The live counters.
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// The TCP listeners, one per `stream_proxy.tcp` entry (ports expanded).
    pub fn tcp_listeners(&self) -> &[Arc<ListenerInfo>] {
        &self.tcp
    }

    /// The UDP listeners with their counters, one per `stream_proxy.udp` entry.
    pub fn udp_listeners(&self) -> &[(Arc<ListenerInfo>, Arc<UdpCounters>)] {
        &self.udp
    }

    /// Connections being proxied right now.
    pub fn active_connections(&self) -> usize {
        self.proxy.active()
    }

    /// Graceful stop: stop accepting, let open connections finish for up to
    /// `nginx_config.worker_shutdown_timeout`, then close the rest.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        let conns = &self.proxy.connections;
        conns.close();
        if !conns.is_empty() {
            tracing::info!(open = conns.len(), grace = ?self.grace, "draining connections");
        }
        if tokio::time::timeout(self.grace, conns.wait())
            .await
            .is_err()
        {
            tracing::warn!(open = conns.len(), "grace period over; closing connections");
            self.proxy.force_close.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(5), conns.wait()).await;
        }
        if let Some(w) = self.workers.take() {
            let _ = tokio::task::spawn_blocking(move || w.join()).await;
        }
    }
}

impl Drop for Server {
    /// A server dropped without [`Server::shutdown`] stops at once: its
    /// worker threads close their listeners and connections and exit.
    fn drop(&mut self) {
        self.cancel.cancel();
        self.proxy.connections.close();
        self.proxy.force_close.cancel();
    }
}

fn open_store(config: &Config) -> Result<Arc<dyn Store>, ServerError> {
    match config.deployment.config_provider {
        ConfigProvider::Local => Ok(Arc::new(LocalStore::open(
            &config.deployment.local.data_dir,
        )?)),
        other => Err(ServerError::Unsupported(format!(
            "deployment.role_traditional.config_provider: {other:?} is not available in this \
             version; use local"
        ))),
    }
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|error| ServerError::Bind { what, addr, error })
}

/// Lift the soft open-file limit to the hard one: every proxied TCP
/// connection needs two descriptors (plus two pipes while data flows).
pub fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let lim = getrlimit(Resource::Nofile);
    if lim.current < lim.maximum {
        let raised = rustix::process::Rlimit {
            current: lim.maximum,
            maximum: lim.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => {
                tracing::info!(from = ?lim.current, to = ?lim.maximum, "raised the open-file limit")
            }
            Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
        }
    }
}

fn workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Bind every `stream_proxy` entry before anything serves, handing each
/// worker its own socket of every entry.
fn bind_stream(
    config: &Config,
    workers: usize,
) -> Result<(BoundListeners, Vec<WorkerSockets>), ServerError> {
    let mut bound = BoundListeners::default();
    let mut per_worker: Vec<WorkerSockets> =
        (0..workers).map(|_| WorkerSockets::default()).collect();
    let Some(sp) = config
        .apisix
        .stream_proxy
        .as_ref()
        .filter(|_| config.stream_enabled())
    else {
        return Ok((bound, per_worker));
    };
    let reuseport = config.apisix.enable_reuseport;
    let bind_error = |what: &'static str, spec: &ListenSpec| {
        let addr = spec.addr;
        move |error| ServerError::Bind { what, addr, error }
    };
    for spec in &sp.tcp {
        let (info, socks) = listener::bind_tcp(spec, reuseport, workers)
            .map_err(bind_error("apisix.stream_proxy.tcp entry", spec))?;
        let info = Arc::new(info);
        for (w, sock) in per_worker.iter_mut().zip(socks) {
            w.tcp.push((info.clone(), sock));
        }
        bound.tcp.push(info);
    }
    for spec in &sp.udp {
        let (info, socks) = listener::bind_udp(spec, reuseport, workers)
            .map_err(bind_error("apisix.stream_proxy.udp entry", spec))?;
        let (info, counters) = (Arc::new(info), Arc::new(UdpCounters::default()));
        for (w, sock) in per_worker.iter_mut().zip(socks) {
            w.udp.push((info.clone(), counters.clone(), sock));
        }
        bound.udp.push((info, counters));
    }
    Ok((bound, per_worker))
}

/// The stream listeners as bound, for reporting.
#[derive(Debug, Default)]
struct BoundListeners {
    tcp: Vec<Arc<ListenerInfo>>,
    udp: Vec<(Arc<ListenerInfo>, Arc<UdpCounters>)>,
}

/// Open the store, bind every listener and start serving.
pub async fn start(config: Config) -> Result<Server, ServerError> {
    raise_fd_limit();
    let store = open_store(&config)?;
    let cancel = CancellationToken::new();
    let tasks = TaskTracker::new();
    let (bound, per_worker) = bind_stream(&config, workers())?;
    let stats = Arc::new(Stats::default());
    let publisher = publish::start(
        store.clone(),
        stats.clone(),
        Keyring::new(&config.apisix.data_encryption.keyring),
        cancel.clone(),
    )
    .await?;
    let mut proxy = ProxyCtx::new(publisher.current.clone());
    proxy.stats = stats.clone();
    let stream_log = &config.nginx_config.stream;
    if stream_log.enable_access_log {
        let log = AccessLog::start(&stream_log.access_log).map_err(|e| {
            ServerError::Unsupported(format!(
                "cannot open nginx_config.stream.access_log {}: {e}",
                stream_log.access_log
            ))
        })?;
        proxy.access_log = Some(log);
    }
    proxy.fallback_sni = config.apisix.ssl.fallback_sni.clone();
    proxy.real_ip_from = Arc::from(config.nginx_config.stream.real_ip_from.clone());

    let mut admin_addr = None;
    if config.apisix.enable_admin {
        let listener = bind(
            "deployment.admin.admin_listen",
            config.deployment.admin.admin_listen.socket_addr(),
        )
        .await?;
        let local = listener.local_addr().map_err(|error| ServerError::Bind {
            what: "deployment.admin.admin_listen",
            addr: config.deployment.admin.admin_listen.socket_addr(),
            error,
        })?;
        admin_addr = Some(local);
        let mut state = AdminState::new(&config, store.clone());
        state.published = Some(publisher.published.clone());
        state.snapshot = Some(publisher.current.clone());
        let state = Arc::new(state);
        serve_http(&tasks, &cancel, listener, admin::router(state), "admin API");
    }
    let control_state = ControlState {
        stats: stats.clone(),
        snapshot: publisher.current.clone(),
        tcp: bound.tcp.clone(),
        udp: bound.udp.clone(),
        prefix: config.deployment.etcd.prefix.clone(),
    };
    let mut control_addr = None;
    if config.apisix.enable_control {
        let addr = config.apisix.control.socket_addr();
        let listener = bind("apisix.control", addr).await?;
        control_addr = listener.local_addr().ok();
        serve_http(
            &tasks,
            &cancel,
            listener,
            control::router(control_state.clone()),
            "control API",
        );
    }
    let mut metrics_addr = None;
    let prom = &config.plugin_attr.prometheus;
    if prom.enable_export_server {
        let addr = prom.export_addr.socket_addr();
        let listener = bind("plugin_attr.prometheus.export_addr", addr).await?;
        metrics_addr = listener.local_addr().ok();
        let app =
            control::metrics_router(control_state, &prom.export_uri, prom.metric_prefix.clone());
        serve_http(&tasks, &cancel, listener, app, "prometheus export server");
    }
    for l in &bound.tcp {
        tracing::info!(listen = %l.label, addr = %l.local, "tcp proxy listening");
    }
    for (l, _) in &bound.udp {
        tracing::info!(listen = %l.label, addr = %l.local, "udp proxy listening");
    }
    let workers = Workers::spawn(per_worker, &proxy, &cancel).map_err(|e| {
        cancel.cancel();
        ServerError::Unsupported(format!("cannot start proxy workers: {e}"))
    })?;
    tracing::info!(store = %store.describe(), "apisix-stream started");
    Ok(Server {
        admin_addr,
        control_addr,
        metrics_addr,
        stats,
        tcp: bound.tcp,
        udp: bound.udp,
        workers: Some(workers),
        proxy,
        grace: config.nginx_config.worker_shutdown_timeout,
        cancel,
        tasks,
    })
}

/// Serve an HTTP API (admin, control, metrics) until `cancel`.
fn serve_http(
    tasks: &TaskTracker,
    cancel: &CancellationToken,
    listener: TcpListener,
    app: axum::Router,
    what: &'static str,
) {
    let stop = cancel.clone();
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "{what} listening");
    }
    tasks.spawn(async move {
        // Peer addresses reach the handlers (allow_admin needs them).
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
        {
            tracing::error!(error = %e, "{what} failed");
        }
    });
}

/// SIGINT and SIGTERM, watched from creation on: created before anything
/// binds, so a signal arriving during start-up still stops cleanly.
struct StopSignals {
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    fn watch() -> StopSignals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let watch = |kind: SignalKind, name: &str| match signal(kind) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch {name}");
                    None
                }
            };
            StopSignals {
                int: watch(SignalKind::interrupt(), "SIGINT"),
                term: watch(SignalKind::terminate(), "SIGTERM"),
            }
        }
        #[cfg(not(unix))]
        StopSignals {}
    }

    /// Resolve when SIGINT or SIGTERM arrives.
    async fn recv(&mut self) {
        #[cfg(unix)]
        {
            async fn next(s: &mut Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            tokio::select! {
                () = next(&mut self.int) => {}
                () = next(&mut self.term) => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// `serve`: start, run until SIGINT/SIGTERM, then stop cleanly.
pub async fn run(config: Config) -> Result<(), ServerError> {
    let mut signals = StopSignals::watch();
    let server = start(config).await?;
    signals.recv().await;
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(())
}
