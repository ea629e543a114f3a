//! [`Carry`]: everything that outlives one snapshot.
//!
//! A snapshot is rebuilt on every store change and dropped when the last
//! connection holding it ends; some state must survive that. It all lives
//! here, in one value the publisher hands to every build:
//! - the live counters ([`Stats`]): a route that is updated keeps counting
//!   where it was;
//! - the plugin runtime ([`plugins::Shared`]): limit-conn counts of open
//!   sessions, syslog senders and their batches, the prometheus plugin's
//!   counters;
//! - the health checkers ([`Registry`]): the build attaches each upstream's
//!   checker before the snapshot is published (an unchanged upstream keeps
//!   its checker, a rebuilt one with the same `checks` shares its targets'
//!   state), and the publisher then lets the registry start and stop probes;
//! - the trust store of `tls.verify` upstreams ([`tls::Trust`]);
//! - the values read from secret managers ([`secrets::Resolver`]);
//! - the service registries and node host-name cache ([`Discovery`]).
//!
//! Nothing here is reached through a snapshot, and nothing writes a
//! snapshot once it is published.

use std::sync::Arc;

use crate::discovery::Discovery;
use crate::health::registry::Registry;
use crate::plugins;
use crate::secrets;
use crate::stats::Stats;
use crate::tls;

/// State that outlives snapshots: counters, plugin runtime, health checkers.
#[derive(Debug, Default)]
pub struct Carry {
    /// Live counters per route, node and listener, and the connection list.
    pub stats: Arc<Stats>,
    /// Plugin runtime state: enabled plugins, limit-conn counters, syslog
    /// senders, the prometheus plugin's counters.
    pub plugins: plugins::Shared,
    /// Whether upstreams get health checkers, and the probes that run.
    pub health: Registry,
    /// `apisix.ssl.ssl_trusted_certificate`: the CAs `tls.verify` upstreams
    /// are checked against.
    pub trust: tls::Trust,
    /// `$env://` and `$secret://` references, and what secret managers
    /// answered for them.
    pub secrets: Arc<secrets::Resolver>,
    /// `apisix.ssl` versions, ciphers and sessions of terminating listeners.
    pub tls_policy: Arc<tls::session::Policy>,
    /// Service registries and the addresses of node host names.
    pub discovery: Arc<Discovery>,
}

impl Carry {
    /// Fresh counters and plugin state, with health checks run by `health`.
    pub fn new(health: Registry) -> Carry {
        Carry {
            stats: Arc::default(),
            plugins: plugins::Shared::default(),
            health,
            trust: tls::Trust::default(),
            secrets: Arc::default(),
            tls_policy: Arc::new(tls::session::Policy::fallback()),
            discovery: Arc::default(),
        }
    }
}
