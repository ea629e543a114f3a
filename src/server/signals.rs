//! How a running server stops and reloads: SIGINT and SIGTERM drain and
//! exit, SIGHUP re-reads `config.yaml` and applies its `stream_proxy`
//! listeners and its admin keys, SIGUSR1 reopens the access log and error
//! log files (logrotate's `postrotate`), SIGUSR2 hands everything to a new
//! binary ([`super::upgrade`]) and then drains and exits.
//!
//! Why the signals are watched before anything binds: a signal arriving
//! during start-up then still stops the process cleanly instead of killing
//! it with the default action.
//!
//! The drain: stop accepting (every listener and the HTTP APIs), let open
//! connections finish for up to `nginx_config.worker_shutdown_timeout`,
//! then close the rest and wait for the worker threads.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Server, ServerError};
use crate::config::Config;

/// What a signal asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    /// SIGINT or SIGTERM: drain and exit.
    Stop,
    /// SIGHUP: re-apply the listeners and admin keys of `config.yaml`.
    Reload,
    /// SIGUSR2: binary upgrade.
    Upgrade,
    /// SIGUSR1: reopen the log files.
    Reopen,
}

/// SIGINT, SIGTERM and SIGHUP, watched from creation on.
struct Signals {
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    hup: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    usr2: Option<tokio::signal::unix::Signal>,
    usr1: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn watch() -> Signals {
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
            Signals {
                int: watch(SignalKind::interrupt(), "SIGINT"),
                term: watch(SignalKind::terminate(), "SIGTERM"),
                hup: watch(SignalKind::hangup(), "SIGHUP"),
                usr2: watch(SignalKind::user_defined2(), "SIGUSR2"),
                usr1: watch(SignalKind::user_defined1(), "SIGUSR1"),
            }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    /// The next signal.
    async fn next(&mut self) -> Event {
        #[cfg(unix)]
        {
            async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            tokio::select! {
                () = recv(&mut self.int) => Event::Stop,
                () = recv(&mut self.term) => Event::Stop,
                () = recv(&mut self.hup) => Event::Reload,
                () = recv(&mut self.usr2) => Event::Upgrade,
                () = recv(&mut self.usr1) => Event::Reopen,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            Event::Stop
        }
    }
}

/// `serve`: start, run until SIGINT/SIGTERM, then stop cleanly. SIGHUP
/// re-reads `config_path` and applies its `stream_proxy` listeners and
/// admin keys; SIGUSR1 reopens the log files.
pub async fn run(config: Config, config_path: Option<PathBuf>) -> Result<(), ServerError> {
    let mut signals = Signals::watch();
    super::upgrade::remember_exe();
    let inherited = tokio::task::spawn_blocking(super::upgrade::receive)
        .await
        .map_err(|e| ServerError::Unsupported(format!("binary upgrade hand-over: {e}")))?
        .map_err(ServerError::Unsupported)?;
    let mut server = super::start(config).await?;
    if let Some(path) = &config_path {
        server.set_config_path(path);
    }
    if inherited > 0 {
        let closed = super::upgrade::drop_unadopted();
        tracing::info!(
            adopted = inherited - closed,
            closed,
            "serving sockets handed over by the previous process (binary upgrade)"
        );
    }
    super::upgrade::report_ready();
    super::upgrade::notify_systemd();
    loop {
        match signals.next().await {
            Event::Stop => break,
            Event::Upgrade => {
                tracing::info!("binary upgrade requested (SIGUSR2)");
                match server.upgrade().await {
                    Ok(pid) => {
                        tracing::info!(new_pid = pid, "binary upgrade: the new process serves; this one stops accepting and drains");
                        break;
                    }
                    Err(why) => {
                        tracing::error!("binary upgrade failed, this process keeps serving: {why}")
                    }
                }
            }
            Event::Reload => {
                if let Some(path) = &config_path {
                    reload(&mut server, path);
                }
            }
            Event::Reopen => server.reopen_logs(),
        }
    }
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(())
}

/// SIGHUP: apply the listeners and admin keys of the file at `path`; a
/// file that does not load keeps the current ones.
fn reload(server: &mut Server, path: &Path) {
    match Config::load(path) {
        Ok(new) => {
            let out = server.reload_listeners(&new);
            tracing::info!(
                added = out.added.len(),
                removed = out.removed.len(),
                failed = out.failed.len(),
                "reloaded stream_proxy listeners from {} (settings other than listeners and admin keys need a restart)",
                path.display()
            );
            match server.reload_admin_keys(&new) {
                Ok(true) => tracing::info!(
                    "admin keys reloaded from {}: the new keys are in force, the old ones no longer accepted",
                    path.display()
                ),
                Ok(false) => {}
                Err(e) => tracing::error!(
                    "admin keys not reloaded from {}: {e}; the current keys stay in force",
                    path.display()
                ),
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot reload {}; keeping the current listeners", path.display())
        }
    }
}

impl Server {
    /// SIGUSR1: reopen the access log and the error log files (after a
    /// rotation moved them); lines queued before go to the old files.
    pub fn reopen_logs(&self) {
        if let Some(log) = &self.proxy.access_log {
            log.reopen();
        }
        crate::logging::reopen();
        tracing::info!("log files reopened");
    }

    /// Graceful stop: stop accepting, let open connections finish for up to
    /// `nginx_config.worker_shutdown_timeout`, then close the rest.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        // Without the copies kept for an upgrade, a socket closes as soon as
        // its accept loop stops: new connections are refused, not queued.
        self.api_sockets.clear();
        self.listeners.release_copies();
        self.proxy.draining.cancel();
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
