//! Upstream health checks (`checks.active`, `checks.passive`), following
//! resty.healthcheck as APISIX uses it (spec: balancing.md "Health checks").
//!
//! A [`Checker`] exists per upstream with `checks` that some route uses. It
//! holds one [`Target`] per distinct node (`host:port`, or the
//! `checks.active.host`/`port` overrides), all starting healthy. Reports —
//! active probe results, failed connect tries on retry, failed sessions —
//! move consecutive counters toward the next state; reaching a threshold
//! flips the target between `healthy` and `unhealthy`, passing through
//! `mostly_healthy`/`mostly_unhealthy` on the way as APISIX shows them.
//!
//! Why atomics plus a small mutex: the data plane asks "is node i up?" on
//! every pick, so that answer is one `AtomicBool` per target, read without
//! locks. Counters and the four-state status change together on each
//! report, so they sit behind a per-target mutex taken only by probes and
//! by failure reports (never on a successful pick).
//!
//! A checker is created while a snapshot is built and attached to its
//! upstream before the snapshot is published, so connections reach it
//! through the snapshot they already hold; the [`registry`] runs the active
//! probes of the checkers in force and stops those of replaced snapshots.

pub mod conf;
pub mod probe;
pub mod registry;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::ClientConfig;
use serde_json::{json, Value};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::balancer::Backend;
use crate::tls;
use conf::Checks;
use probe::Outcome;

/// How often at most the "all upstream nodes is unhealthy" warning is
/// repeated per checker.
const FALLBACK_WARN_EVERY: Duration = Duration::from_secs(10);

/// A target's health as resty.healthcheck names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Up; failures are counted toward `unhealthy`.
    Healthy,
    /// Up, with failures counted since the last success.
    MostlyHealthy,
    /// Down, with successes counted since the last failure.
    MostlyUnhealthy,
    /// Down; successes are counted toward `healthy`.
    Unhealthy,
}

impl Status {
    /// The name used in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Healthy => "healthy",
            Status::MostlyHealthy => "mostly_healthy",
            Status::MostlyUnhealthy => "mostly_unhealthy",
            Status::Unhealthy => "unhealthy",
        }
    }

    /// Whether the balancer may pick the target.
    pub fn is_up(self) -> bool {
        matches!(self, Status::Healthy | Status::MostlyHealthy)
    }
}

/// One observation about a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// A probe succeeded (or a healthy HTTP status).
    Success,
    /// Refused, reset or failed at the TCP/TLS level.
    TcpFailure,
    /// An unhealthy HTTP status (or no valid status line).
    HttpFailure,
    /// A step timed out.
    Timeout,
}

impl Report {
    /// resty.healthcheck's counter name, for logs.
    fn counter_name(self) -> &'static str {
        match self {
            Report::Success => "SUCCESS",
            Report::TcpFailure => "TCP",
            Report::HttpFailure => "HTTP",
            Report::Timeout => "TIMEOUT",
        }
    }
}

/// Consecutive counts toward the next state change.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    /// Successes since the last failure.
    pub success: u32,
    /// TCP failures since the last success.
    pub tcp_failure: u32,
    /// HTTP failures since the last success.
    pub http_failure: u32,
    /// Timeouts since the last success.
    pub timeout_failure: u32,
}

/// A report that was counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Increment {
    /// The counter's new value.
    pub count: u32,
    /// Status before.
    pub from: Status,
    /// Status after.
    pub to: Status,
}

/// Status and counters of one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetState {
    /// Current status.
    pub status: Status,
    /// Consecutive counters.
    pub counter: Counter,
}

impl Default for TargetState {
    fn default() -> Self {
        TargetState {
            status: Status::Healthy,
            counter: Counter::default(),
        }
    }
}

impl TargetState {
    /// Count one report against `limit` (resty.healthcheck `incr_counter`):
    /// a limit of 0 disables the counter; successes are not counted while
    /// fully healthy nor failures while fully unhealthy; a success clears the
    /// failure counters and a failure clears the success counter; reaching
    /// the limit flips the status, a first step away from a final state
    /// makes it `mostly_*`. None when the report was not counted.
    pub fn apply(&mut self, report: Report, limit: u32) -> Option<Increment> {
        let toward_up = report == Report::Success;
        let settled = if toward_up {
            Status::Healthy
        } else {
            Status::Unhealthy
        };
        if limit == 0 || self.status == settled {
            return None;
        }
        let c = &mut self.counter;
        let slot = match report {
            Report::Success => {
                c.tcp_failure = 0;
                c.http_failure = 0;
                c.timeout_failure = 0;
                &mut c.success
            }
            failure => {
                c.success = 0;
                match failure {
                    Report::TcpFailure => &mut c.tcp_failure,
                    Report::HttpFailure => &mut c.http_failure,
                    _ => &mut c.timeout_failure,
                }
            }
        };
        // resty.healthcheck keeps 8-bit counters; thresholds stop at 254.
        *slot = (*slot + 1).min(255);
        let count = *slot;
        let from = self.status;
        let to = if count >= limit {
            settled
        } else if from == Status::Healthy && !toward_up {
            Status::MostlyHealthy
        } else if from == Status::Unhealthy && toward_up {
            Status::MostlyUnhealthy
        } else {
            from
        };
        self.status = to;
        Some(Increment { count, from, to })
    }
}

/// One checked address of an upstream.
#[derive(Debug)]
pub struct Target {
    /// The node's host (an IP, or a name resolved per probe).
    pub ip: String,
    /// The port probed.
    pub port: u16,
    /// `checks.active.host`, else the node's host.
    pub hostname: String,
    up: AtomicBool,
    state: Mutex<TargetState>,
}

impl fmt::Display for Target {
    /// resty.healthcheck's `hostname(ip:port)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({}:{})", self.hostname, self.ip, self.port)
    }
}

impl Target {
    fn new(ip: &str, port: u16, hostname: &str) -> Target {
        Target {
            ip: ip.to_string(),
            port,
            hostname: hostname.to_string(),
            up: AtomicBool::new(true),
            state: Mutex::new(TargetState::default()),
        }
    }

    /// Whether the balancer may pick it (lock-free).
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Status and counters now.
    pub fn state(&self) -> TargetState {
        self.state.lock().map(|s| *s).unwrap_or_default()
    }

    /// resty.healthcheck's log line for a counted report, e.g.
    /// `unhealthy TCP increment (1/1) for '127.0.0.1(127.0.0.1:9995)'`.
    pub fn increment_line(&self, report: Report, count: u32, limit: u32) -> String {
        let verdict = if report == Report::Success {
            "healthy"
        } else {
            "unhealthy"
        };
        format!(
            "{verdict} {} increment ({count}/{limit}) for '{self}'",
            report.counter_name()
        )
    }

    /// Count a report and log the step; `checker` names the upstream.
    fn record(&self, report: Report, limit: u32, checker: &str, source: &str) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let Some(inc) = state.apply(report, limit) else {
            return;
        };
        self.up.store(inc.to.is_up(), Ordering::Relaxed);
        drop(state);
        let line = self.increment_line(report, inc.count, limit);
        if inc.from == inc.to {
            tracing::debug!(checker, source, "{line}");
        } else if inc.to == Status::Unhealthy {
            tracing::warn!(
                checker,
                source,
                target = %self,
                from = inc.from.as_str(),
                to = inc.to.as_str(),
                "{line}"
            );
        } else {
            tracing::info!(
                checker,
                source,
                target = %self,
                from = inc.from.as_str(),
                to = inc.to.as_str(),
                "{line}"
            );
        }
    }
}

/// One node line of a checker report.
#[derive(Debug, Clone)]
pub struct NodeHealth {
    /// Target host.
    pub ip: String,
    /// Target hostname.
    pub hostname: String,
    /// Target port.
    pub port: u16,
    /// Status and counters.
    pub state: TargetState,
}

/// The health checker of one upstream.
pub struct Checker {
    /// `upstreams/<id>` or `stream_routes/<id>` (the storage key without
    /// prefix).
    name: String,
    checks: Checks,
    source: Value,
    targets: Vec<Arc<Target>>,
    /// Backend index -> target index.
    by_node: Vec<usize>,
    tls: Option<Arc<ClientConfig>>,
    born: Instant,
    /// Milliseconds after `born` of the last fallback warning, plus one
    /// (0: never warned).
    warned: AtomicU64,
}

impl fmt::Debug for Checker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Checker")
            .field("name", &self.name)
            .field("type", &self.checks.kind())
            .field("targets", &self.targets.len())
            .finish()
    }
}

impl Checker {
    /// A checker for `backends` with the `checks` object `source`. Targets
    /// equal to one of `prev` (same host, port and hostname) are shared
    /// with it — counters and state included — when `prev` has the same
    /// `checks`. `https` probes verify node certificates (with
    /// `https_verify_certificate`) against `trust`.
    pub fn new(
        name: &str,
        source: &Value,
        backends: &[Backend],
        prev: Option<&Checker>,
        trust: &tls::Trust,
    ) -> Checker {
        let checks = Checks::from_value(source);
        let prev = prev.filter(|p| p.source == *source);
        let mut targets: Vec<Arc<Target>> = Vec::new();
        let mut by_node = Vec::with_capacity(backends.len());
        for b in backends {
            let port = checks.active.port.unwrap_or(b.port);
            let hostname = checks.active.host.as_deref().unwrap_or(&b.host);
            let same =
                |t: &&Arc<Target>| t.ip == b.host && t.port == port && t.hostname == hostname;
            let index = match targets.iter().position(|t| same(&t)) {
                Some(i) => i,
                None => {
                    let t = prev
                        .and_then(|p| p.targets.iter().find(same).cloned())
                        .unwrap_or_else(|| Arc::new(Target::new(&b.host, port, hostname)));
                    targets.push(t);
                    targets.len() - 1
                }
            };
            by_node.push(index);
        }
        let tls = probe::tls_config(&checks.active, trust);
        Checker {
            name: name.to_string(),
            checks,
            source: source.clone(),
            targets,
            by_node,
            tls,
            born: Instant::now(),
            warned: AtomicU64::new(0),
        }
    }

    /// [`Checker::new`], isolated: a checker that cannot be built is logged
    /// and left out (its upstream is served without health checks), and
    /// never stops the checkers of other upstreams.
    pub fn build(
        name: &str,
        source: &Value,
        backends: &[Backend],
        prev: Option<&Checker>,
        trust: &tls::Trust,
    ) -> Option<Checker> {
        let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Checker::new(name, source, backends, prev, trust)
        }));
        match built {
            Ok(c) => Some(c),
            Err(_) => {
                tracing::error!(checker = %name, "health checker not built; upstream served without health checks");
                None
            }
        }
    }

    /// `upstreams/<id>` or `stream_routes/<id>`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The `checks` object it was built from.
    pub fn source(&self) -> &Value {
        &self.source
    }

    /// The parsed `checks`.
    pub fn checks(&self) -> &Checks {
        &self.checks
    }

    /// The checked targets, in node order.
    pub fn targets(&self) -> &[Arc<Target>] {
        &self.targets
    }

    fn target(&self, node: usize) -> Option<&Arc<Target>> {
        self.by_node.get(node).and_then(|&i| self.targets.get(i))
    }

    /// Whether backend `node` may be picked (lock-free; unknown => true).
    pub fn healthy(&self, node: usize) -> bool {
        self.target(node).is_none_or(|t| t.is_up())
    }

    /// Warn, at most every few seconds, when every node is unhealthy and
    /// the balancer therefore uses all of them.
    pub fn warn_if_all_unhealthy(&self) {
        if self.by_node.len() < 2 || (0..self.by_node.len()).any(|i| self.healthy(i)) {
            return;
        }
        let now = self.born.elapsed().as_millis() as u64 + 1;
        let last = self.warned.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= FALLBACK_WARN_EVERY.as_millis() as u64;
        // One winner per period: the exchange fails for racing connections.
        if due
            && self
                .warned
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(checker = %self.name, "all upstream nodes is unhealthy, use default");
        }
    }

    /// A connect try to backend `node` failed and another node is about to
    /// be tried (APISIX reports this with or without `checks.passive`,
    /// against the passive thresholds).
    pub fn report_try_failure(&self, node: usize, timed_out: bool) {
        let Some(t) = self.target(node) else { return };
        let p = &self.checks.passive;
        if timed_out {
            t.record(Report::Timeout, p.timeouts, &self.name, "retry");
        } else {
            t.record(Report::TcpFailure, p.tcp_failures, &self.name, "retry");
        }
    }

    /// A session on backend `node` ended with a status other than 200:
    /// a TCP failure when `checks.passive` is configured.
    pub fn report_session_failure(&self, node: usize) {
        let p = &self.checks.passive;
        if !p.configured {
            return;
        }
        if let Some(t) = self.target(node) {
            t.record(Report::TcpFailure, p.tcp_failures, &self.name, "passive");
        }
    }

    /// A UDP session on backend `node` ended idle without a single reply:
    /// a timeout when `checks.passive` is configured.
    pub fn report_no_reply(&self, node: usize) {
        let p = &self.checks.passive;
        if !p.configured {
            return;
        }
        if let Some(t) = self.target(node) {
            t.record(Report::Timeout, p.timeouts, &self.name, "passive");
        }
    }

    /// Count an active probe's outcome for `target`.
    fn record_probe(&self, target: &Target, outcome: Outcome) {
        let a = &self.checks.active;
        let (report, limit) = match outcome {
            Outcome::Success => (Report::Success, a.successes),
            Outcome::TcpFailure => (Report::TcpFailure, a.tcp_failures),
            Outcome::Timeout => (Report::Timeout, a.timeouts),
            Outcome::Status(s) if a.healthy_statuses.contains(&s) => (Report::Success, a.successes),
            Outcome::Status(s) if s == 0 || a.unhealthy_statuses.contains(&s) => {
                (Report::HttpFailure, a.http_failures)
            }
            Outcome::Status(s) => {
                tracing::debug!(checker = %self.name, %target, status = s, "health check status ignored");
                return;
            }
        };
        target.record(report, limit, &self.name, "active");
    }

    /// Each target's status and counters, in node order.
    pub fn nodes(&self) -> Vec<NodeHealth> {
        self.targets
            .iter()
            .map(|t| NodeHealth {
                ip: t.ip.clone(),
                hostname: t.hostname.clone(),
                port: t.port,
                state: t.state(),
            })
            .collect()
    }

    /// The Control API report (`name` is `<prefix>/<name>`).
    pub fn report(&self, prefix: &str) -> Value {
        let nodes: Vec<Value> = self
            .nodes()
            .into_iter()
            .map(|n| {
                let c = n.state.counter;
                json!({
                    "ip": n.ip,
                    "hostname": n.hostname,
                    "port": n.port,
                    "status": n.state.status.as_str(),
                    "counter": {
                        "success": c.success,
                        "tcp_failure": c.tcp_failure,
                        "http_failure": c.http_failure,
                        "timeout_failure": c.timeout_failure,
                    },
                })
            })
            .collect();
        json!({
            "name": format!("{prefix}/{}", self.name),
            "type": self.checks.kind(),
            "nodes": nodes,
        })
    }

    /// Run the active probes until `stop`: healthy targets every
    /// `healthy.interval`, unhealthy ones every `unhealthy.interval`, at
    /// most `concurrency` probes at once per round.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let a = &self.checks.active;
        let healthy = self.side(a.healthy_interval, true, &stop);
        let unhealthy = self.side(a.unhealthy_interval, false, &stop);
        tokio::join!(healthy, unhealthy);
        tracing::debug!(checker = %self.name, "health checker stopped");
    }

    /// Probe rounds for the targets on one side (up or down).
    async fn side(self: &Arc<Self>, every: Option<Duration>, up: bool, stop: &CancellationToken) {
        let Some(every) = every else { return };
        loop {
            let started = tokio::time::Instant::now();
            let due: Vec<Arc<Target>> = self
                .targets
                .iter()
                .filter(|t| t.state().status.is_up() == up)
                .cloned()
                .collect();
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.round(due) => {}
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(every.saturating_sub(started.elapsed())) => {}
            }
        }
    }

    /// Probe `due`, `concurrency` at a time, counting each result as it
    /// arrives. Dropping the future aborts probes in flight.
    async fn round(self: &Arc<Self>, due: Vec<Arc<Target>>) {
        let mut queue = due.into_iter();
        let mut running = JoinSet::new();
        loop {
            while running.len() < self.checks.active.concurrency {
                let Some(t) = queue.next() else { break };
                let me = Arc::clone(self);
                running.spawn(async move {
                    let outcome = probe::probe(&me.checks.active, me.tls.as_ref(), &t).await;
                    tracing::trace!(checker = %me.name, target = %t, ?outcome, "health probe");
                    me.record_probe(&t, outcome);
                });
            }
            if running.join_next().await.is_none() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests;
