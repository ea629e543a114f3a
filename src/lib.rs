//! apisix-stream: an L4 (TCP/UDP) proxy compatible with the Apache APISIX
//! stream proxy, in one executable.
//!
//! Module map:
//! - [`config`]: `conf/config.yaml` with APISIX's keys, validated before
//!   anything binds; admin key generation and write-back.
//! - [`model`]: stream routes, upstreams, SSL objects, services, plugin
//!   metadata and secrets, validated with APISIX's rules and error texts.
//! - [`store`]: where those objects live (the embedded crash-safe store by
//!   default, an etcd cluster shared with other proxies, or a read-only
//!   standalone `apisix.yaml`) behind one trait; the three share one
//!   in-memory index (objects, revision, change feed).
//! - [`admin`]: the APISIX-3-compatible Admin API over the store.
//! - [`snapshot`]: the compiled, immutable routes and upstreams the data
//!   plane reads, rebuilt on every store change and swapped atomically;
//!   its `Carry` owns all that outlives one snapshot (counters, plugin
//!   runtime, health checkers), and nothing writes a published snapshot.
//! - [`balancer`]: node selection (roundrobin, chash, least_conn).
//! - [`discovery`]: upstream nodes from a registry (`dns`, `consul`,
//!   `kubernetes`) and the background cache of node host names' addresses;
//!   a changed node list makes the publisher rebuild the snapshot.
//! - [`plugins`]: stream plugins compiled per route and run per session
//!   (preread: ip-restriction, limit-conn, mqtt-proxy, traffic-split; log:
//!   prometheus, syslog); of the snapshot they see only its leaves
//!   (`snapshot::conn`, `snapshot::upstream`).
//! - [`health`]: upstream health checks (active probes, passive reports)
//!   feeding the balancer and the Control API; checkers are attached while
//!   a snapshot is built, and its registry runs the probes of those in force.
//! - [`proxy`]: the data plane: listeners (bound, and changed on SIGHUP by
//!   a pure plan), per-core workers, connection handling and the byte relay;
//!   a session's end becomes its one status in [`proxy::session`].
//! - [`secrets`]: `$env://` and `$secret://` references in SSL objects and
//!   plugin settings, resolved while a snapshot is built (HashiCorp Vault
//!   through `secrets` objects).
//! - [`tls`]: everything TLS: certificates compiled from SSL objects,
//!   termination and SNI peeking on listeners, and the client side for
//!   upstreams, syslog and health probes. It imports neither [`proxy`] nor
//!   [`snapshot`].
//! - [`stats`]: live counters per route, node and listener, and the list of
//!   live connections (counters only: it imports nothing of the crate);
//!   [`control`] serves them (Control API), [`metrics`] as Prometheus text;
//!   [`access_log`] writes one line per finished session; [`logging`] is
//!   the error log (stderr or `nginx_config.error_log`).
//! - [`server`]: `serve`, wiring the pieces together; `server::signals`
//!   drains on SIGTERM and re-applies the listeners on SIGHUP,
//!   `server::limits` sizes the session cap from the open-file limit;
//!   [`http`] fronts the HTTP APIs with connection caps and timeouts;
//!   [`timefmt`] prints UTC times.
//! - [`fsutil`]: crash-safe file writes (atomic replace, owner-only files, directory fsync).
//! - [`cli`]: the command line.
//! - [`xrpc`]: protocol-aware routes (Redis): requests decoded per
//!   command for faults, metrics, logs and subordinate routes.
//! - [`top`]: the `top` dashboard, a Control API client drawn with ratatui.
//!
//! Control path: an Admin API write is validated, made durable by the store,
//! and announced on the store's change feed; the publisher compiles a new
//! snapshot, swaps it in and announces the revision applied (or why it
//! failed), and only then does the Admin API answer: 2xx once the write's
//! revision is served, 503 with the reason when the rebuild failed, did not
//! come in time, or left the written object out.
//!
//! Data path: accept -> admit (PROXY header, TLS) -> load the snapshot once
//! -> match a route -> preread plugins -> pick a node (retrying others on
//! connect failure) -> relay bytes both ways with half-close, counting them
//! as they move -> finish: the session's status, written once to the access
//! log, the log plugins, the passive health check and the counters.

pub mod access_log;
pub mod admin;
pub mod balancer;
pub mod cli;
pub mod config;
pub mod control;
pub mod discovery;
pub mod fsutil;
pub mod health;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod plugins;
pub mod proxy;
pub mod secrets;
pub mod server;
pub mod snapshot;
pub mod stats;
pub mod store;
pub mod timefmt;
pub mod tls;
pub mod top;
pub mod xrpc;
