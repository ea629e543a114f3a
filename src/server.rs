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

use arc_swap::ArcSwap;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access_log::AccessLog;
use crate::admin::{self, AdminState};
use crate::config::ListenSpec;
use crate::config::{Config, ConfigProvider};
use crate::control::{self, ControlState};
use crate::health;
use crate::model::crypt::Keyring;
use crate::proxy::listener::{self, ListenerInfo, ListenerSet, SharedListeners};
use crate::proxy::udp::UdpCounters;
use crate::proxy::worker::{WorkerSockets, Workers};
use crate::proxy::ProxyCtx;
use crate::snapshot::publish;
use crate::stats::Stats;
use crate::store::etcd::EtcdStore;
use crate::store::file::{self, FileStore};
use crate::store::local::LocalStore;
use crate::store::{Store, StoreError};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The store could not be opened (the message is the whole story, so it
    /// is not repeated as an error source).
    #[error("cannot open the store: {0}")]
    Store(StoreError),
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

impl From<StoreError> for ServerError {
    fn from(e: StoreError) -> Self {
        ServerError::Store(e)
    }
}

/// A running server.
pub struct Server {
    admin_addr: Option<SocketAddr>,
    control_addr: Option<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    stats: Arc<Stats>,
    bound: Vec<Bound>,
    listeners: SharedListeners,
    reuseport: bool,
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
    pub fn tcp_listeners(&self) -> Vec<Arc<ListenerInfo>> {
        self.listeners.load().tcp.clone()
    }

    /// The UDP listeners with their counters, one per `stream_proxy.udp` entry.
    pub fn udp_listeners(&self) -> Vec<(Arc<ListenerInfo>, Arc<UdpCounters>)> {
        self.listeners.load().udp.clone()
    }

    /// Apply the `stream_proxy` entries of `config` (SIGHUP): bind the new
    /// ones, stop accepting on the removed ones (their connections finish
    /// normally) and keep the unchanged ones untouched. An entry that cannot
    /// be bound is reported and skipped; the others still apply.
    pub fn reload_listeners(&mut self, config: &Config) -> ReloadOutcome {
        let mut out = ReloadOutcome::default();
        let Some(workers) = self.workers.as_ref() else {
            return out;
        };
        let (want_tcp, want_udp) = wanted_entries(config);
        let wanted = |b: &Bound| {
            let list = if b.counters.is_some() {
                &want_udp
            } else {
                &want_tcp
            };
            list.contains(&b.info.spec)
        };
        let (keep, gone): (Vec<Bound>, Vec<Bound>) = std::mem::take(&mut self.bound)
            .into_iter()
            .partition(wanted);
        self.bound = keep;
        let has = |bound: &[Bound], spec: &ListenSpec, udp: bool| {
            bound
                .iter()
                .any(|b| b.counters.is_some() == udp && b.info.spec == *spec)
        };
        let new_tcp: Vec<ListenSpec> = want_tcp
            .iter()
            .filter(|s| !has(&self.bound, s, false))
            .cloned()
            .collect();
        let new_udp: Vec<ListenSpec> = want_udp
            .iter()
            .filter(|s| !has(&self.bound, s, true))
            .cloned()
            .collect();
        // New sockets are bound before old ones close, so an entry whose
        // flags changed on the same address never stops listening.
        let mut per_worker: Vec<WorkerSockets> = (0..workers.count())
            .map(|_| WorkerSockets::default())
            .collect();
        for (spec, udp) in new_tcp
            .iter()
            .map(|s| (s, false))
            .chain(new_udp.iter().map(|s| (s, true)))
        {
            match bind_entry(spec, udp, self.reuseport, &mut per_worker, &self.cancel) {
                Ok(b) => {
                    tracing::info!(listen = %b.info.label, addr = %b.info.local, protocol = if udp { "udp" } else { "tcp" }, "listener added");
                    out.added.push(b.info.label.clone());
                    self.bound.push(b);
                }
                Err(e) => {
                    tracing::error!(listen = %spec.addr, error = %e, "cannot add listener");
                    out.failed.push(format!("{}: {e}", spec.addr));
                }
            }
        }
        workers.add(per_worker);
        for b in gone {
            b.stop.cancel();
            tracing::info!(listen = %b.info.label, "listener removed; its connections drain");
            out.removed.push(b.info.label.clone());
        }
        self.listeners.store(Arc::new(listener_set(&self.bound)));
        out
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

async fn open_store(
    config: &Config,
    cancel: &CancellationToken,
) -> Result<Arc<dyn Store>, ServerError> {
    match config.deployment.config_provider {
        ConfigProvider::Local => Ok(Arc::new(LocalStore::open(
            &config.deployment.local.data_dir,
        )?)),
        provider @ (ConfigProvider::Yaml | ConfigProvider::Json) => {
            let format = match provider {
                ConfigProvider::Json => file::Format::Json,
                _ => file::Format::Yaml,
            };
            Ok(Arc::new(
                FileStore::open(
                    &config.deployment.standalone_file,
                    format,
                    config.stream_plugins.clone(),
                    cancel.clone(),
                )
                .await?,
            ))
        }
        ConfigProvider::Etcd => {
            let store = EtcdStore::connect(&config.deployment.etcd, cancel.clone()).await?;
            Ok(store)
        }
    }
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|error| ServerError::Bind { what, addr, error })
}

/// Lift the soft open-file limit to the hard one: every proxied TCP
/// connection needs two descriptors (plus two pipes while data flows).
/// Returns the soft limit in force afterwards (`None` = unlimited).
pub fn raise_fd_limit() -> Option<u64> {
    let show = |l: Option<u64>| l.map_or_else(|| "unlimited".to_string(), |n| n.to_string());
    use rustix::process::{getrlimit, setrlimit, Resource};
    let lim = getrlimit(Resource::Nofile);
    if lim.current < lim.maximum {
        let raised = rustix::process::Rlimit {
            current: lim.maximum,
            maximum: lim.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => {
                tracing::info!(from = %show(lim.current), to = %show(lim.maximum), "raised the open-file limit");
                return lim.maximum;
            }
            Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
        }
    } else {
        tracing::info!(limit = %show(lim.current), "open-file limit");
    }
    lim.current
}

/// Most concurrent sessions: `worker_connections` per worker, two sockets
/// per session (as nginx counts them), and no more than the open-file limit
/// can carry with room for the store, logs and the APIs: a session holds
/// its two sockets and, while it moves bulk data, two splice pipes (four
/// more descriptors), so the cap can never be reached by running out of
/// descriptors first.
pub fn max_sessions(worker_connections: u64, workers: usize, fd_limit: Option<u64>) -> usize {
    let by_config = worker_connections.saturating_mul(workers as u64) / 2;
    let by_fds = fd_limit.map_or(u64::MAX, |l| l.saturating_sub(64) / 6);
    usize::try_from(by_config.min(by_fds).max(1)).unwrap_or(usize::MAX)
}

fn workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// What a listener reload did, by listener label.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadOutcome {
    /// Entries bound and now accepting.
    pub added: Vec<String>,
    /// Entries that stopped accepting.
    pub removed: Vec<String>,
    /// Entries that could not be bound, with the reason.
    pub failed: Vec<String>,
}

/// One bound `stream_proxy` entry and the token that stops it.
#[derive(Debug)]
struct Bound {
    info: Arc<ListenerInfo>,
    /// Set for UDP entries.
    counters: Option<Arc<UdpCounters>>,
    stop: CancellationToken,
}

fn listener_set(bound: &[Bound]) -> ListenerSet {
    ListenerSet {
        tcp: bound
            .iter()
            .filter(|b| b.counters.is_none())
            .map(|b| b.info.clone())
            .collect(),
        udp: bound
            .iter()
            .filter_map(|b| b.counters.as_ref().map(|c| (b.info.clone(), c.clone())))
            .collect(),
    }
}

/// The tcp and udp entries `config` asks for (none when stream is off).
fn wanted_entries(config: &Config) -> (Vec<ListenSpec>, Vec<ListenSpec>) {
    match config
        .apisix
        .stream_proxy
        .as_ref()
        .filter(|_| config.stream_enabled())
    {
        Some(sp) => (sp.tcp.clone(), sp.udp.clone()),
        None => (Vec::new(), Vec::new()),
    }
}

/// Bind one entry, one socket per worker, appended to `per_worker`.
fn bind_entry(
    spec: &ListenSpec,
    udp: bool,
    reuseport: bool,
    per_worker: &mut [WorkerSockets],
    parent: &CancellationToken,
) -> std::io::Result<Bound> {
    let stop = parent.child_token();
    if udp {
        let (info, socks) = listener::bind_udp(spec, reuseport, per_worker.len())?;
        let (info, counters) = (Arc::new(info), Arc::new(UdpCounters::default()));
        for (w, sock) in per_worker.iter_mut().zip(socks) {
            w.udp
                .push((info.clone(), counters.clone(), sock, stop.clone()));
        }
        Ok(Bound {
            info,
            counters: Some(counters),
            stop,
        })
    } else {
        let (info, socks) = listener::bind_tcp(spec, reuseport, per_worker.len())?;
        let info = Arc::new(info);
        for (w, sock) in per_worker.iter_mut().zip(socks) {
            w.tcp.push((info.clone(), sock, stop.clone()));
        }
        Ok(Bound {
            info,
            counters: None,
            stop,
        })
    }
}

/// Bind every `stream_proxy` entry before anything serves, handing each
/// worker its own socket of every entry.
fn bind_stream(
    config: &Config,
    workers: usize,
    cancel: &CancellationToken,
) -> Result<(Vec<Bound>, Vec<WorkerSockets>), ServerError> {
    let mut per_worker: Vec<WorkerSockets> =
        (0..workers).map(|_| WorkerSockets::default()).collect();
    let (tcp, udp) = wanted_entries(config);
    let mut bound = Vec::new();
    for (spec, is_udp) in tcp
        .iter()
        .map(|s| (s, false))
        .chain(udp.iter().map(|s| (s, true)))
    {
        let what = if is_udp {
            "apisix.stream_proxy.udp entry"
        } else {
            "apisix.stream_proxy.tcp entry"
        };
        let b = bind_entry(
            spec,
            is_udp,
            config.apisix.enable_reuseport,
            &mut per_worker,
            cancel,
        )
        .map_err(|error| ServerError::Bind {
            what,
            addr: spec.addr,
            error,
        })?;
        bound.push(b);
    }
    Ok((bound, per_worker))
}

/// Open the store, bind every listener and start serving.
pub async fn start(config: Config) -> Result<Server, ServerError> {
    let fd_limit = raise_fd_limit();
    let cancel = CancellationToken::new();
    let store = open_store(&config, &cancel).await?;
    let tasks = TaskTracker::new();
    let (bound, per_worker) = bind_stream(&config, workers(), &cancel)?;
    let listeners: SharedListeners = Arc::new(ArcSwap::from_pointee(listener_set(&bound)));
    let stats = Arc::new(Stats::default());
    stats
        .plugins
        .configure(&config.stream_plugins, &config.deployment.etcd.prefix);
    let publisher = publish::start(
        store.clone(),
        stats.clone(),
        Keyring::new(&config.apisix.data_encryption.keyring),
        cancel.clone(),
    )
    .await?;
    if config.apisix.disable_upstream_healthcheck {
        tracing::info!("upstream health checks disabled (apisix.disable_upstream_healthcheck)");
    } else {
        health::manager::spawn(
            publisher.current.clone(),
            publisher.published.clone(),
            &tasks,
            cancel.clone(),
        );
    }
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
    proxy.limits = Arc::new(crate::proxy::Limits::new(max_sessions(
        config.nginx_config.worker_connections,
        workers(),
        fd_limit,
    )));
    tracing::info!(max_sessions = proxy.limits.max_sessions, "session limit");

    let http_limits = crate::http::Limits::from_config(&config.nginx_config.http);
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
        state.body_timeout = config.nginx_config.http.client_body_timeout;
        state.published = Some(publisher.published.clone());
        state.snapshot = Some(publisher.current.clone());
        let state = Arc::new(state);
        crate::http::serve(
            &tasks,
            &cancel,
            listener,
            admin::router(state),
            "admin API",
            http_limits,
        );
    }
    let control_state = ControlState {
        stats: stats.clone(),
        snapshot: publisher.current.clone(),
        listeners: listeners.clone(),
        prefix: config.deployment.etcd.prefix.clone(),
        limits: proxy.limits.clone(),
    };
    let mut control_addr = None;
    if config.apisix.enable_control {
        let addr = config.apisix.control.socket_addr();
        let listener = bind("apisix.control", addr).await?;
        control_addr = listener.local_addr().ok();
        crate::http::serve(
            &tasks,
            &cancel,
            listener,
            control::router(control_state.clone()),
            "control API",
            http_limits,
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
        crate::http::serve(
            &tasks,
            &cancel,
            listener,
            app,
            "prometheus export server",
            http_limits,
        );
    }
    for b in &bound {
        let proto = if b.counters.is_some() { "udp" } else { "tcp" };
        tracing::info!(listen = %b.info.label, addr = %b.info.local, "{proto} proxy listening");
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
        bound,
        listeners,
        reuseport: config.apisix.enable_reuseport,
        workers: Some(workers),
        proxy,
        grace: config.nginx_config.worker_shutdown_timeout,
        cancel,
        tasks,
    })
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

/// `serve`: start, run until SIGINT/SIGTERM, then stop cleanly. SIGHUP
/// re-reads `config_path` and applies its `stream_proxy` listeners.
pub async fn run(
    config: Config,
    config_path: Option<std::path::PathBuf>,
) -> Result<(), ServerError> {
    let mut signals = StopSignals::watch();
    let mut hangup = hangup_signal();
    let mut server = start(config).await?;
    loop {
        tokio::select! {
            () = signals.recv() => break,
            () = next_hangup(&mut hangup) => {
                let Some(path) = &config_path else { continue };
                match Config::load(path) {
                    Ok(new) => {
                        let out = server.reload_listeners(&new);
                        tracing::info!(
                            added = out.added.len(),
                            removed = out.removed.len(),
                            failed = out.failed.len(),
                            "reloaded stream_proxy listeners from {} (other settings need a restart)",
                            path.display()
                        );
                    }
                    Err(e) => tracing::error!(error = %e, "cannot reload {}; keeping the current listeners", path.display()),
                }
            }
        }
    }
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(())
}

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = ();

fn hangup_signal() -> Hangup {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        signal(SignalKind::hangup())
            .map_err(|e| tracing::warn!(error = %e, "cannot watch SIGHUP"))
            .ok()
    }
}

async fn next_hangup(h: &mut Hangup) {
    #[cfg(unix)]
    if let Some(s) = h {
        s.recv().await;
        return;
    }
    let _ = h;
    std::future::pending::<()>().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_cap_follows_worker_connections_and_the_fd_limit() {
        // Two sockets per session, per worker, as nginx counts them.
        assert_eq!(max_sessions(10620, 2, None), 10620);
        assert_eq!(max_sessions(4, 2, None), 4);
        // Six descriptors per session (two sockets, two pipes) after a reserve.
        assert_eq!(max_sessions(10620, 8, Some(1024)), 160);
        assert_eq!(max_sessions(10620, 2, Some(10)), 1);
        assert_eq!(max_sessions(0, 2, Some(1 << 20)), 1);
    }

    #[test]
    fn wanted_entries_are_empty_when_stream_is_off() {
        let mut c = Config::default();
        let (tcp, udp) = wanted_entries(&c);
        assert!(tcp.is_empty() && udp.is_empty());
        c = Config::from_yaml(
            "apisix:\n  proxy_mode: http&stream\n  stream_proxy:\n    tcp: [9100, 9101]\n    udp: [9200]\n",
        )
        .expect("config");
        let (tcp, udp) = wanted_entries(&c);
        assert_eq!((tcp.len(), udp.len()), (2, 1));
    }
}
