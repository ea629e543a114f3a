//! Checker lifetime: one task follows the published snapshots and keeps
//! exactly one running [`Checker`] per upstream with `checks` that a route
//! uses.
//!
//! For every such upstream it hangs the checker on the upstream's
//! `health` slot, which connections read lock-free through the snapshot
//! they hold. An upstream reused unchanged by a rebuild keeps its checker;
//! a rebuilt upstream with the same `checks` gets a new checker sharing the
//! targets (state and counters) that did not change; an upstream that is
//! deleted, no longer used, or loses `checks` has its checker stopped and
//! unhooked. Probing runs on this runtime, away from the proxy workers.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};

use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Checker;
use crate::snapshot::publish::SharedSnapshot;
use crate::snapshot::{Snapshot, UpstreamRt};

/// A running checker.
#[derive(Debug)]
struct Entry {
    checker: Arc<Checker>,
    upstream: Weak<UpstreamRt>,
    stop: CancellationToken,
}

/// The running checkers by upstream origin (`upstreams/<id>`,
/// `stream_routes/<id>`).
#[derive(Debug)]
pub struct Registry {
    entries: HashMap<String, Entry>,
    tasks: TaskTracker,
    cancel: CancellationToken,
}

/// The `checks` of an upstream, when it has some.
fn checks_of(up: &UpstreamRt) -> Option<&Value> {
    up.source.get("checks").filter(|c| c.is_object())
}

impl Registry {
    /// An empty registry whose probe tasks run on `tasks` until `cancel`.
    pub fn new(tasks: TaskTracker, cancel: CancellationToken) -> Registry {
        Registry {
            entries: HashMap::new(),
            tasks,
            cancel,
        }
    }

    /// Number of running checkers.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no checker runs.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Start, reuse and stop checkers so that they match `snap`.
    pub fn sync(&mut self, snap: &Snapshot) {
        let mut wanted: Vec<Arc<UpstreamRt>> = Vec::new();
        let mut seen: HashSet<&str> = HashSet::new();
        for route in snap.routes() {
            if let Ok(up) = &route.upstream {
                if checks_of(up).is_some() && seen.insert(&up.origin) {
                    wanted.push(up.clone());
                }
            }
        }
        self.entries.retain(|origin, e| {
            let keep = seen.contains(origin.as_str());
            if !keep {
                e.stop.cancel();
                if let Some(up) = e.upstream.upgrade() {
                    up.health.store(None);
                }
                tracing::info!(checker = %origin, "health checker released");
            }
            keep
        });
        for up in wanted {
            let Some(checks) = checks_of(&up) else {
                continue;
            };
            if let Some(e) = self.entries.get(&up.origin) {
                if e.upstream.upgrade().is_some_and(|u| Arc::ptr_eq(&u, &up)) {
                    if up.health.load().is_none() {
                        up.health.store(Some(e.checker.clone()));
                    }
                    continue;
                }
            }
            let prev = self.entries.remove(&up.origin);
            let checker = Arc::new(Checker::new(
                &up.origin,
                checks,
                up.balancer.backends(),
                prev.as_ref().map(|e| &*e.checker),
            ));
            if let Some(p) = prev {
                p.stop.cancel();
            }
            tracing::info!(
                checker = %up.origin,
                r#type = checker.checks().kind(),
                targets = checker.targets().len(),
                "health checker started"
            );
            up.health.store(Some(checker.clone()));
            let stop = self.cancel.child_token();
            self.tasks.spawn(checker.clone().run(stop.clone()));
            self.entries.insert(
                up.origin.clone(),
                Entry {
                    checker,
                    upstream: Arc::downgrade(&up),
                    stop,
                },
            );
        }
    }

    /// Stop every checker.
    pub fn stop_all(&mut self) {
        for (_, e) in self.entries.drain() {
            e.stop.cancel();
        }
    }
}

/// Follow `published` (the publisher's revision feed) and keep the checkers
/// of `current` running until `cancel`.
pub fn spawn(
    current: SharedSnapshot,
    mut published: watch::Receiver<u64>,
    tasks: &TaskTracker,
    cancel: CancellationToken,
) {
    let mut registry = Registry::new(tasks.clone(), cancel.clone());
    tasks.spawn(async move {
        loop {
            published.borrow_and_update();
            registry.sync(&current.load_full());
            tokio::select! {
                () = cancel.cancelled() => break,
                changed = published.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
            }
        }
        registry.stop_all();
    });
}
