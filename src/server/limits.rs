//! How many sessions the process may hold: the open-file limit raised as far
//! as allowed, `worker_connections`, and the number of data-plane workers.
//!
//! A proxied TCP session holds two descriptors, its two sockets; a UDP
//! session holds one. Splice pipes are not per session: each worker lends
//! them from a bounded pool ([`crate::proxy::pool`]). The cap keeps a fixed
//! reserve for everything that is not a session — listeners, the HTTP APIs'
//! connections, the store and log files, the pipe pools and health probes —
//! so it is reached before the process could run out of descriptors.

use crate::proxy::pool::PIPES_PER_WORKER;

/// Descriptors one TCP session holds: its client and upstream sockets.
pub const FDS_PER_SESSION: u64 = 2;
/// Standard streams, epoll and wake-up descriptors, store and log files.
const FD_BASE: u64 = 48;
/// Connections kept for each of the Admin, Control and metrics APIs.
const FD_PER_API: u64 = 16;
/// Health probes in flight at once.
const FD_PROBES: u64 = 32;

/// Descriptors kept back for everything that is not a session, with
/// `workers` data-plane workers and `listeners` stream listener entries
/// (each bound once per worker).
pub fn fd_reserve(workers: usize, listeners: usize) -> u64 {
    let workers = workers.max(1) as u64;
    FD_BASE
        + 3 * FD_PER_API
        + FD_PROBES
        + workers * listeners as u64
        + workers * 2 * PIPES_PER_WORKER as u64
}

/// Lift the soft open-file limit to the hard one: every proxied TCP
/// connection needs two descriptors. Returns the soft limit in force
/// afterwards (`None` = unlimited).
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
/// carries at two descriptors per session after `reserve` (see
/// [`fd_reserve`]), so the cap is reached before the descriptors run out.
pub fn max_sessions(
    worker_connections: u64,
    workers: usize,
    fd_limit: Option<u64>,
    reserve: u64,
) -> usize {
    let by_config = worker_connections.saturating_mul(workers as u64) / 2;
    let by_fds = fd_limit.map_or(u64::MAX, |l| l.saturating_sub(reserve) / FDS_PER_SESSION);
    usize::try_from(by_config.min(by_fds).max(1)).unwrap_or(usize::MAX)
}

/// Data-plane workers: one per core the process may use.
pub fn workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_cap_follows_worker_connections_and_the_fd_limit() {
        // Two sockets per session, per worker, as nginx counts them.
        assert_eq!(max_sessions(10620, 2, None, 0), 10620);
        assert_eq!(max_sessions(4, 2, None, 0), 4);
        // Two descriptors per session after the reserve.
        assert_eq!(max_sessions(10620, 8, Some(1024), 64), 480);
        assert_eq!(max_sessions(10620, 2, Some(10), 64), 1);
        assert_eq!(max_sessions(0, 2, Some(1 << 20), 64), 1);
    }

    #[test]
    fn the_cap_at_common_fd_limits() {
        // Two workers and one listener: about 9,900 sessions at 20,000.
        let reserve = fd_reserve(2, 1);
        assert_eq!(reserve, 48 + 48 + 32 + 2 + 64);
        assert_eq!(max_sessions(u64::MAX, 2, Some(20_000), reserve), 9_903);
        assert_eq!(
            max_sessions(u64::MAX, 4, Some(65_536), fd_reserve(4, 2)),
            32_636
        );
        assert!(workers() >= 1);
    }
}
