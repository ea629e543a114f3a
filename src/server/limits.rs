//! How many sessions the process may hold: the open-file limit raised as far
//! as allowed, `worker_connections`, and the number of data-plane workers.
//!
//! A proxied TCP session holds two sockets and, while it moves bulk data,
//! two splice pipes: six descriptors at most. The cap keeps a fixed reserve
//! for the store, the logs and the HTTP APIs, so it is reached before the
//! process could run out of descriptors.

/// Descriptors kept back for everything that is not a session.
const FD_RESERVE: u64 = 64;
/// Descriptors one session may hold: two sockets and two splice pipes.
const FDS_PER_SESSION: u64 = 6;

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
/// can carry after the reserve at six descriptors per session, so the cap
/// can never be reached by running out of descriptors first.
pub fn max_sessions(worker_connections: u64, workers: usize, fd_limit: Option<u64>) -> usize {
    let by_config = worker_connections.saturating_mul(workers as u64) / 2;
    let by_fds = fd_limit.map_or(u64::MAX, |l| l.saturating_sub(FD_RESERVE) / FDS_PER_SESSION);
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
        assert_eq!(max_sessions(10620, 2, None), 10620);
        assert_eq!(max_sessions(4, 2, None), 4);
        // Six descriptors per session (two sockets, two pipes) after a reserve.
        assert_eq!(max_sessions(10620, 8, Some(1024)), 160);
        assert_eq!(max_sessions(10620, 2, Some(10)), 1);
        assert_eq!(max_sessions(0, 2, Some(1 << 20)), 1);
    }

    #[test]
    fn the_cap_at_common_fd_limits() {
        // (limit - 64) / 6 whenever worker_connections allows more.
        assert_eq!(max_sessions(u64::MAX, 4, Some(65_536)), 10_912);
        assert!(workers() >= 1);
    }
}
