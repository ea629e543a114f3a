//! Endpoint health, kept in one place for reads, writes and the watch.
//!
//! Every configured endpoint is either healthy or failing (since when, with
//! the last error). Requests try healthy endpoints first, starting with the
//! one that served last, then failing ones as a last resort. A probe per
//! endpoint runs every `keepalive_interval`: a linearizable read of one key,
//! which only a live member in touch with a leader can answer. An endpoint
//! whose probe gets no answer within two intervals turns failing, which also
//! ends a watch or a write waiting on it; a failing endpoint turns healthy as
//! soon as a probe (or any request) is answered. Each change of state is
//! logged once, and so is the whole cluster becoming unreachable or
//! reachable again.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::client::{b64, header_rev};
use super::Shared;

/// What is known of one endpoint.
#[derive(Debug, Clone, Default)]
struct State {
    /// Since when and why the endpoint fails; `None` while healthy.
    failing: Option<(SystemTime, String)>,
    /// Times the endpoint turned failing (lets a waiting request notice).
    epoch: u64,
    /// Last time the endpoint answered.
    last_ok: Option<SystemTime>,
    /// Cluster revision in its last answer.
    revision: u64,
}

#[derive(Debug, Default)]
struct Inner {
    states: Vec<State>,
    /// The endpoint that served the last request.
    preferred: usize,
    /// The configuration was loaded once (before, there is nothing to serve).
    serving: bool,
}

/// The health of every configured endpoint.
#[derive(Debug)]
pub(super) struct Health {
    urls: Vec<String>,
    inner: Mutex<Inner>,
    /// Bumped on every change of state.
    changed: watch::Sender<u64>,
}

/// One endpoint as reported by the Control API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointReport {
    /// The URL as configured.
    pub url: String,
    /// Whether the endpoint answers.
    pub healthy: bool,
    /// Since when it fails.
    pub failing_since: Option<SystemTime>,
    /// Its last error while failing.
    pub last_error: Option<String>,
    /// When it last answered.
    pub last_ok: Option<SystemTime>,
    /// The cluster revision in its last answer.
    pub revision: u64,
}

impl Health {
    /// Every endpoint healthy until shown otherwise.
    pub(super) fn new(urls: Vec<String>) -> Health {
        let states = vec![State::default(); urls.len()];
        Health {
            urls,
            inner: Mutex::new(Inner {
                states,
                preferred: 0,
                serving: false,
            }),
            changed: watch::channel(0).0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Endpoint `i` answered, at cluster revision `revision` (0: unknown).
    pub(super) fn ok(&self, i: usize, revision: u64) {
        let mut inner = self.lock();
        let was_down = inner.states.iter().all(|s| s.failing.is_some());
        let Some(s) = inner.states.get_mut(i) else {
            return;
        };
        s.last_ok = Some(SystemTime::now());
        s.revision = s.revision.max(revision);
        let Some((since, _)) = s.failing.take() else {
            return;
        };
        let down_for = SystemTime::now()
            .duration_since(since)
            .unwrap_or_default()
            .as_secs_f64();
        tracing::info!(
            endpoint = %self.urls[i],
            down_for_s = format!("{down_for:.1}"),
            "etcd endpoint healthy again"
        );
        if was_down && inner.serving {
            tracing::info!(endpoint = %self.urls[i], "etcd reachable again");
        }
        drop(inner);
        self.changed.send_modify(|g| *g += 1);
    }

    /// Endpoint `i` did not answer (or cannot serve); true when it was healthy.
    pub(super) fn failed(&self, i: usize, error: &str) -> bool {
        let mut inner = self.lock();
        let Some(s) = inner.states.get_mut(i) else {
            return false;
        };
        if let Some((_, last)) = &mut s.failing {
            *last = error.to_string();
            return false;
        }
        s.failing = Some((SystemTime::now(), error.to_string()));
        s.epoch += 1;
        tracing::warn!(endpoint = %self.urls[i], error, "etcd endpoint failing");
        if inner.serving && inner.states.iter().all(|s| s.failing.is_some()) {
            tracing::warn!(
                endpoints = %self.urls.join(","),
                error,
                "etcd unreachable; serving the last known configuration"
            );
        }
        drop(inner);
        self.changed.send_modify(|g| *g += 1);
        true
    }

    /// The configuration is loaded: from now on the whole cluster going
    /// down or coming back is logged too.
    pub(super) fn serving(&self) {
        self.lock().serving = true;
    }

    /// Endpoint `i` served a request: later requests start with it.
    pub(super) fn used(&self, i: usize) {
        let mut inner = self.lock();
        if i < inner.states.len() {
            inner.preferred = i;
        }
    }

    /// The order to try endpoints in: healthy ones from the preferred one
    /// on, then failing ones (longest failing last).
    pub(super) fn order(&self) -> Vec<usize> {
        let inner = self.lock();
        let n = inner.states.len();
        let ring = (0..n).map(|k| (inner.preferred + k) % n);
        let mut healthy: Vec<usize> = ring
            .clone()
            .filter(|i| inner.states[*i].failing.is_none())
            .collect();
        let mut failing: Vec<usize> = ring
            .filter(|i| inner.states[*i].failing.is_some())
            .collect();
        failing.sort_by_key(|i| {
            std::cmp::Reverse(inner.states[*i].failing.as_ref().map(|(since, _)| *since))
        });
        healthy.append(&mut failing);
        healthy
    }

    /// How many times endpoint `i` turned failing so far.
    pub(super) fn epoch(&self, i: usize) -> u64 {
        self.lock().states.get(i).map_or(0, |s| s.epoch)
    }

    /// The last error of endpoint `i` while it fails.
    pub(super) fn error_of(&self, i: usize) -> Option<String> {
        self.lock()
            .states
            .get(i)
            .and_then(|s| s.failing.as_ref().map(|(_, e)| e.clone()))
    }

    /// Whether endpoint `i` is healthy.
    pub(super) fn is_healthy(&self, i: usize) -> bool {
        self.lock()
            .states
            .get(i)
            .is_some_and(|s| s.failing.is_none())
    }

    /// Whether some endpoint is healthy.
    pub(super) fn any_healthy(&self) -> bool {
        self.lock().states.iter().any(|s| s.failing.is_none())
    }

    /// Since when and why every endpoint fails; `None` while one answers.
    pub(super) fn down(&self) -> Option<(SystemTime, String)> {
        let inner = self.lock();
        if inner.states.iter().any(|s| s.failing.is_none()) {
            return None;
        }
        inner
            .states
            .iter()
            .filter_map(|s| s.failing.clone())
            .max_by_key(|(since, _)| *since)
    }

    /// Notified on every change of state.
    pub(super) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Every endpoint's state, in configured order.
    pub(super) fn report(&self) -> Vec<EndpointReport> {
        let inner = self.lock();
        self.urls
            .iter()
            .zip(&inner.states)
            .map(|(url, s)| EndpointReport {
                url: url.clone(),
                healthy: s.failing.is_none(),
                failing_since: s.failing.as_ref().map(|(t, _)| *t),
                last_error: s.failing.as_ref().map(|(_, e)| e.clone()),
                last_ok: s.last_ok,
                revision: s.revision,
            })
            .collect()
    }
}

/// Wait until endpoint `i` turns failing again (its epoch moves past `epoch`).
pub(super) async fn turned_failing(
    health: &Health,
    rx: &mut watch::Receiver<u64>,
    i: usize,
    epoch: u64,
) {
    loop {
        if health.epoch(i) != epoch {
            return;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl Shared {
    /// How long a probe may go unanswered before its endpoint fails.
    pub(super) fn probe_limit(&self) -> Duration {
        (self.keepalive * 2).min(self.timeout)
    }

    /// Probe endpoint `i` once and record the outcome.
    async fn probe(&self, i: usize) {
        let key = b64(self.dir_key().as_bytes());
        let body = json!({"key": key, "count_only": true});
        match self
            .call_within(i, "/v3/kv/range", &body, self.probe_limit())
            .await
        {
            Ok(v) => self.health.ok(i, header_rev(&v)),
            Err(e) if e.is_unreachable() => {
                self.health.failed(i, e.text());
            }
            // An answer, even a refusal, shows the member is alive.
            Err(_) => self.health.ok(i, 0),
        }
    }

    /// Probe endpoint `i` every `keepalive_interval` until `cancel`.
    async fn probe_loop(self: Arc<Self>, i: usize, cancel: CancellationToken) {
        loop {
            let next = Instant::now() + self.keepalive;
            tokio::select! {
                () = cancel.cancelled() => return,
                () = self.probe(i) => {}
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep_until(next) => {}
            }
        }
    }

    /// Start one prober per endpoint.
    pub(super) fn start_probes(self: &Arc<Self>, cancel: &CancellationToken) {
        for i in 0..self.hosts.len() {
            tokio::spawn(self.clone().probe_loop(i, cancel.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health() -> Health {
        Health::new(vec![
            "http://a".into(),
            "http://b".into(),
            "http://c".into(),
        ])
    }

    #[test]
    fn healthy_endpoints_come_first_from_the_preferred_one() {
        let h = health();
        assert_eq!(h.order(), [0, 1, 2]);
        h.used(1);
        assert_eq!(h.order(), [1, 2, 0]);
        assert!(h.failed(1, "silent"));
        assert!(!h.failed(1, "still silent"));
        assert_eq!(h.order(), [2, 0, 1]);
        assert_eq!(h.error_of(1).as_deref(), Some("still silent"));
        assert_eq!(h.epoch(1), 1);
        h.ok(1, 7);
        assert_eq!(h.order(), [1, 2, 0]);
        assert_eq!(h.error_of(1), None);
        assert_eq!(h.report()[1].revision, 7);
    }

    #[test]
    fn the_cluster_is_down_only_when_every_endpoint_fails() {
        let h = health();
        let mut rx = h.subscribe();
        h.failed(0, "a");
        h.failed(1, "b");
        assert!(rx.has_changed().unwrap_or(false));
        rx.borrow_and_update();
        assert_eq!(h.down(), None);
        assert!(h.any_healthy());
        h.failed(2, "c");
        assert_eq!(h.down().map(|(_, e)| e).as_deref(), Some("c"));
        assert!(!h.any_healthy());
        // Failing ones are still tried, as a last resort.
        assert_eq!(h.order().len(), 3);
        h.ok(0, 0);
        assert_eq!(h.down(), None);
        assert_eq!(h.order()[0], 0);
        assert!(rx.has_changed().unwrap_or(false));
        let r = h.report();
        assert!(r[0].healthy && !r[1].healthy);
        assert_eq!(r[1].last_error.as_deref(), Some("b"));
    }
}
