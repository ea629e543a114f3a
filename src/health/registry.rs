//! Probe lifetime: the running [`Checker`]s of the process, one per
//! upstream origin (`upstreams/<id>`, `stream_routes/<id>`).
//!
//! Checkers are created by the snapshot build and attached to their
//! upstream before the snapshot is published; this registry only runs
//! their active probes. Once a snapshot is in force, [`Registry::apply`]
//! starts the probes of checkers it has not seen and stops those of
//! checkers the snapshot no longer holds (deleted upstreams, upstreams that
//! lost `checks`, and checkers replaced by a rebuilt upstream, whose
//! unchanged targets the new checker shares). Probing runs on the main
//! runtime, away from the proxy workers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Checker;

/// A checker whose probes run.
#[derive(Debug)]
struct Running {
    checker: Arc<Checker>,
    stop: CancellationToken,
}

/// The running checkers by upstream origin, and whether checks are on at
/// all (`apisix.disable_upstream_healthcheck`).
#[derive(Debug)]
pub struct Registry {
    enabled: bool,
    running: Mutex<HashMap<String, Running>>,
    tasks: TaskTracker,
    cancel: CancellationToken,
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new(true, TaskTracker::new(), CancellationToken::new())
    }
}

impl Registry {
    /// A registry whose probe tasks run on `tasks` until `cancel`; with
    /// `enabled` false no upstream gets a checker.
    pub fn new(enabled: bool, tasks: TaskTracker, cancel: CancellationToken) -> Registry {
        Registry {
            enabled,
            running: Mutex::default(),
            tasks,
            cancel,
        }
    }

    /// Whether upstreams with `checks` get a checker.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Number of checkers whose probes run.
    pub fn len(&self) -> usize {
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether no probes run.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Make the running probes those of `in_force` (the checkers of the
    /// snapshot just published): start the new ones, stop the others.
    /// Must run inside the tokio runtime.
    pub fn apply<'a>(&self, in_force: impl IntoIterator<Item = &'a Arc<Checker>>) {
        // A panic elsewhere while the lock was held must not stop health
        // checking for the rest of the process: the map stays consistent.
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        let wanted: HashMap<&str, &Arc<Checker>> =
            in_force.into_iter().map(|c| (c.name(), c)).collect();
        running.retain(|origin, r| {
            let keep = wanted
                .get(origin.as_str())
                .is_some_and(|c| Arc::ptr_eq(c, &r.checker));
            if !keep {
                r.stop.cancel();
                if wanted.contains_key(origin.as_str()) {
                    tracing::debug!(checker = %origin, "health checker replaced");
                } else {
                    tracing::info!(checker = %origin, "health checker released");
                }
            }
            keep
        });
        for (origin, checker) in wanted {
            if running.contains_key(origin) {
                continue;
            }
            tracing::info!(
                checker = %origin,
                r#type = checker.checks().kind(),
                targets = checker.targets().len(),
                "health checker started"
            );
            let stop = self.cancel.child_token();
            self.tasks.spawn(Arc::clone(checker).run(stop.clone()));
            running.insert(
                origin.to_string(),
                Running {
                    checker: Arc::clone(checker),
                    stop,
                },
            );
        }
    }
}
