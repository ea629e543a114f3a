//! `serve`: open the store, bind every listener, run until SIGINT/SIGTERM.
//!
//! Start-up is all-or-nothing: the store is opened and every socket bound
//! before anything serves, so a bad data directory or a busy port stops the
//! process with one line naming it. [`start`] returns a [`Server`] handle with
//! the addresses actually bound (port 0 in the config picks a free port, which
//! is how tests run the real server side by side).
//!
//! This module only wires the pieces together: which store, the snapshot
//! publisher, the health checks, the Admin API, the Control API, the
//! Prometheus export server and the data-plane workers. [`signals`] runs the
//! process (drain on SIGINT/SIGTERM, listener reload on SIGHUP); [`limits`]
//! sizes the session cap from the open-file limit.

pub mod limits;
pub mod signals;
pub mod upgrade;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, AdminState};
use crate::config::{Config, ConfigProvider};
use crate::control::{self, ControlState};
use crate::discovery::Discovery;
use crate::health::registry::Registry;
use crate::model::crypt::Keyring;
use crate::model::EnabledPlugins;
use crate::proxy::listeners::{self, Listeners};
use crate::proxy::udp::UdpCounters;
use crate::proxy::worker::Workers;
use crate::proxy::{ListenerInfo, ProxyConfig, ProxyConfigError, ProxyCtx};
use crate::snapshot::publish;
use crate::snapshot::Carry;
use crate::stats::Stats;
use crate::store::etcd::EtcdStore;
use crate::store::file::{self, FileStore};
use crate::store::local::LocalStore;
use crate::store::{Store, StoreError};

pub use crate::proxy::listeners::ReloadOutcome;
pub use limits::{max_sessions, raise_fd_limit};
pub use signals::run;

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
    /// The data plane's settings could not be applied.
    #[error(transparent)]
    Proxy(#[from] ProxyConfigError),
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
    /// The Admin API's state (its keys are swapped on SIGHUP).
    admin: Option<Arc<AdminState>>,
    control_addr: Option<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    carry: Arc<Carry>,
    listeners: Listeners,
    workers: Option<Workers>,
    proxy: ProxyCtx,
    grace: Duration,
    cancel: CancellationToken,
    tasks: TaskTracker,
    store: Arc<dyn Store>,
    /// Copies of the HTTP APIs' listening sockets, to hand to a new binary.
    api_sockets: Vec<(String, SocketAddr, std::os::fd::OwnedFd)>,
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
        self.carry.stats.clone()
    }

    /// Everything that outlives a snapshot: counters, plugin state, health checkers.
    pub fn carry(&self) -> Arc<Carry> {
        self.carry.clone()
    }

    /// The TCP listeners, one per `stream_proxy.tcp` entry (ports expanded).
    pub fn tcp_listeners(&self) -> Vec<Arc<ListenerInfo>> {
        self.listeners.current().tcp.clone()
    }

    /// The UDP listeners with their counters, one per `stream_proxy.udp` entry.
    pub fn udp_listeners(&self) -> Vec<(Arc<ListenerInfo>, Arc<UdpCounters>)> {
        self.listeners.current().udp.clone()
    }

    /// Apply the `stream_proxy` entries of `config` (SIGHUP): bind the new
    /// ones, stop accepting on the removed ones (their connections finish
    /// normally) and keep the unchanged ones untouched. An entry that cannot
    /// be bound is reported and skipped; the others still apply.
    pub fn reload_listeners(&mut self, config: &Config) -> ReloadOutcome {
        match self.workers.as_ref() {
            Some(workers) => self.listeners.reload(&listeners::wanted(config), workers),
            None => ReloadOutcome::default(),
        }
    }

    /// The config.yaml the server was started from, which
    /// `PUT /apisix/admin/plugins/reload` re-reads.
    pub fn set_config_path(&self, path: &std::path::Path) {
        if let Some(state) = &self.admin {
            let _ = state.config_path.set(path.to_path_buf());
        }
    }

    /// Put the admin keys of `config` in force (SIGHUP); `Ok(true)` when
    /// they changed, an error when the new set is refused.
    pub fn reload_admin_keys(&self, config: &Config) -> Result<bool, String> {
        match &self.admin {
            Some(state) => state.reload_keys(config),
            None => Ok(false),
        }
    }

    /// Binary upgrade (SIGUSR2): start the executable `serve` was started
    /// from, hand it every listening socket and the store, and wait until it
    /// serves; its pid, or why it did not take over (this server then keeps
    /// everything).
    pub async fn upgrade(&self) -> Result<u32, String> {
        use std::os::fd::AsFd;
        let mut sockets: Vec<(String, SocketAddr, std::os::fd::OwnedFd)> = Vec::new();
        for (tag, local, fd) in self.listeners.handover().into_iter().chain(
            self.api_sockets
                .iter()
                .map(|(t, l, fd)| (t.clone(), *l, fd.as_fd().try_clone_to_owned())),
        ) {
            sockets.push((
                tag,
                local,
                fd.map_err(|e| format!("cannot copy a socket: {e}"))?,
            ));
        }
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            let handed: Vec<upgrade::Handed<'_>> = sockets
                .iter()
                .map(|(t, l, fd)| (t.clone(), *l, fd.as_fd()))
                .collect();
            upgrade::hand_over(&handed, store.as_ref())
        })
        .await
        .map_err(|e| format!("upgrade task failed: {e}"))?
    }

    /// Connections being proxied right now.
    pub fn active_connections(&self) -> usize {
        self.proxy.active()
    }
}

impl Drop for Server {
    /// A server dropped without [`Server::shutdown`] stops at once: its
    /// worker threads close their listeners and connections and exit.
    fn drop(&mut self) {
        self.cancel.cancel();
        self.proxy.draining.cancel();
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
                    EnabledPlugins::of(config),
                    cancel.clone(),
                )
                .await?,
            ))
        }
        ConfigProvider::Etcd => {
            let plugins = EnabledPlugins::of(config);
            // etcd over TLS with `verify` trusts the same CAs as verified upstreams.
            let etcd = crate::config::Etcd {
                trusted_ca: config.apisix.ssl.ssl_trusted_certificate.clone(),
                ..config.deployment.etcd.clone()
            };
            let store = EtcdStore::connect(&etcd, plugins, cancel.clone()).await?;
            Ok(store)
        }
    }
}

/// Bind an HTTP API's listener (or adopt the one a previous binary handed
/// over); returns it with the address bound, keeping a copy in `keep`.
async fn bind(
    what: &'static str,
    addr: SocketAddr,
    keep: &mut Vec<(String, SocketAddr, std::os::fd::OwnedFd)>,
) -> Result<(TcpListener, SocketAddr), ServerError> {
    use std::os::fd::AsFd;
    let fail = |error| ServerError::Bind { what, addr, error };
    let tag = format!("{what} {addr}");
    let listener = match upgrade::take(&tag) {
        Some(fd) => {
            let std = std::net::TcpListener::from(fd);
            std.set_nonblocking(true).map_err(fail)?;
            TcpListener::from_std(std).map_err(fail)?
        }
        None => TcpListener::bind(addr).await.map_err(fail)?,
    };
    let local = listener.local_addr().map_err(fail)?;
    let copy = listener.as_fd().try_clone_to_owned().map_err(fail)?;
    keep.push((tag, local, copy));
    Ok((listener, local))
}

/// Open the store, bind every listener and start serving.
pub async fn start(config: Config) -> Result<Server, ServerError> {
    let fd_limit = raise_fd_limit();
    let workers = config
        .nginx_config
        .worker_processes
        .count(limits::workers());
    let cancel = CancellationToken::new();
    let store = open_store(&config, &cancel).await?;
    let tasks = TaskTracker::new();
    let wanted = listeners::wanted(&config);
    let (listeners, per_worker) =
        Listeners::bind(&wanted, config.apisix.enable_reuseport, workers, &cancel).map_err(
            |e| ServerError::Bind {
                what: e.entry.protocol.config_key(),
                addr: e.entry.spec.addr,
                error: e.error,
            },
        )?;
    let checks = !config.apisix.disable_upstream_healthcheck;
    if !checks {
        tracing::info!("upstream health checks disabled (apisix.disable_upstream_healthcheck)");
    }
    let tls_policy = crate::tls::session::Policy::new(&config.apisix.ssl)
        .map(Arc::new)
        .map_err(ServerError::Unsupported)?;
    let trust =
        crate::tls::Trust::from_setting(config.apisix.ssl.ssl_trusted_certificate.as_deref())
            .map_err(ServerError::Unsupported)?;
    let carry = Arc::new(Carry {
        secrets: Arc::new(crate::secrets::Resolver::trusting(trust.clone())),
        trust,
        tls_policy,
        discovery: Arc::new(Discovery::start(&config.discovery, &cancel, &tasks)),
        ..Carry::new(Registry::new(checks, tasks.clone(), cancel.clone()))
    });
    // Values read from secret managers are read again when their time is up.
    tasks.spawn(crate::secrets::refresher(
        carry.secrets.clone(),
        cancel.clone(),
    ));
    carry
        .plugins
        .configure(&config.stream_plugins, &config.deployment.etcd.prefix);
    let publisher = publish::start(
        store.clone(),
        carry.clone(),
        Keyring::new(&config.apisix.data_encryption.keyring),
        cancel.clone(),
    )
    .await?;
    let reserve = limits::fd_reserve(workers, wanted.len());
    let max_sessions = max_sessions(
        config.nginx_config.worker_connections,
        workers,
        fd_limit,
        reserve,
    );
    let proxy = ProxyCtx::new(
        publisher.current.clone(),
        carry.stats.clone(),
        ProxyConfig::from_config(&config, max_sessions)?,
    );
    tracing::info!(
        max_sessions,
        fd_reserve = reserve,
        max_udp = proxy.limits.max_udp,
        udp_per_source = proxy.limits.udp_per_source,
        "session limits"
    );

    let http_limits = crate::http::Limits::from_config(&config.nginx_config.http);
    let mut api_sockets = Vec::new();
    let mut admin_addr = None;
    let mut admin = None;
    if config.apisix.enable_admin {
        let addr = config.deployment.admin.admin_listen.socket_addr();
        let (listener, local) =
            bind("deployment.admin.admin_listen", addr, &mut api_sockets).await?;
        admin_addr = Some(local);
        let mut state = AdminState::new(&config, store.clone());
        state.body_timeout = config.nginx_config.http.client_body_timeout;
        state.published = Some(publisher.published.clone());
        state.snapshot = Some(publisher.current.clone());
        state.carry = Some(carry.clone());
        let state = Arc::new(state);
        admin = Some(state.clone());
        let app = admin::router(state);
        let limits = http_limits
            .clone()
            .only_for(config.deployment.admin.allow_admin.clone());
        crate::http::serve(&tasks, &cancel, listener, app, "admin API", limits);
    }
    let control_state = ControlState {
        carry: carry.clone(),
        snapshot: publisher.current.clone(),
        listeners: listeners.shared(),
        prefix: config.deployment.etcd.prefix.clone(),
        limits: proxy.limits.clone(),
        etcd: store.etcd_status(),
    };
    let mut control_addr = None;
    if config.apisix.enable_control {
        let addr = config.apisix.control.socket_addr();
        let (listener, local) = bind("apisix.control", addr, &mut api_sockets).await?;
        control_addr = Some(local);
        let app = control::router(control_state.clone());
        crate::http::serve(
            &tasks,
            &cancel,
            listener,
            app,
            "control API",
            http_limits.clone(),
        );
    }
    let mut metrics_addr = None;
    let prom = &config.plugin_attr.prometheus;
    if prom.enable_export_server {
        let addr = prom.export_addr.socket_addr();
        let (listener, local) =
            bind("plugin_attr.prometheus.export_addr", addr, &mut api_sockets).await?;
        metrics_addr = Some(local);
        let app =
            crate::metrics::router(control_state, &prom.export_uri, prom.metric_prefix.clone());
        let what = "prometheus export server";
        crate::http::serve(&tasks, &cancel, listener, app, what, http_limits);
    }
    listeners.log_listening();
    let workers = Workers::spawn(per_worker, &proxy, &cancel).map_err(|e| {
        cancel.cancel();
        ServerError::Unsupported(format!("cannot start proxy workers: {e}"))
    })?;
    tracing::info!(store = %store.describe(), "apisix-stream started");
    Ok(Server {
        admin_addr,
        admin,
        control_addr,
        metrics_addr,
        carry,
        listeners,
        workers: Some(workers),
        proxy,
        grace: config.nginx_config.worker_shutdown_timeout,
        cancel,
        tasks,
        store,
        api_sockets,
    })
}
