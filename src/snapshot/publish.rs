//! Store change feed -> compiled snapshot -> atomic swap -> announcement.
//!
//! One task follows the store's revision feed. For each change it takes the
//! store's changes since the snapshot in force (everything, the first time
//! or when the store's change log no longer reaches back that far), applies
//! them on the build thread (a big configuration must not stall accept
//! loops), swaps the result in, lets the health registry start and stop
//! probes, then announces the outcome on a `watch` ([`Published`]) so Admin
//! API writes answer only once the data plane serves them. The feed
//! coalesces bursts of writes into one rebuild.
//!
//! A rebuild that fails (the build panics) keeps the previous snapshot in
//! force and is announced as failed for its revision, with why; the task
//! carries on, so the next change is built and published as usual.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{mpsc, Arc, Mutex};

use serde_json::Value;

use arc_swap::ArcSwap;
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::build::{panic_message, Update};
use super::{Carry, Snapshot};
use crate::model::crypt::Keyring;
use crate::model::Kind;
use crate::secrets::Resolver;
use crate::store::index::Changes;
use crate::store::{Dump, Entry, Store, StoreError};

/// The current snapshot, readable lock-free by every connection.
pub type SharedSnapshot = Arc<ArcSwap<Snapshot>>;

/// A revision the data plane could not apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed {
    /// The store revision of the failed rebuild.
    pub revision: u64,
    /// Why it failed.
    pub reason: String,
}

/// What the data plane has made of the store's revisions so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Published {
    /// Revision of the snapshot in force.
    pub revision: u64,
    /// The newest rebuild that failed, while no later revision is in force.
    pub failed: Option<Failed>,
}

impl Published {
    /// Whether revision `rev` is settled: `Some(Ok)` once a snapshot of `rev`
    /// or later is in force, `Some(Err)` when the rebuild that should have
    /// brought it in failed, `None` while it is still pending.
    pub fn outcome(&self, rev: u64) -> Option<Result<(), &Failed>> {
        if self.revision >= rev {
            return Some(Ok(()));
        }
        self.failed.as_ref().filter(|f| f.revision >= rev).map(Err)
    }
}

/// A running publisher.
#[derive(Debug)]
pub struct Publisher {
    /// The snapshot in force.
    pub current: SharedSnapshot,
    /// What has been applied and what failed.
    pub published: watch::Receiver<Published>,
}

/// What a rebuild starts from: the whole store, or the changes since the
/// snapshot in force.
pub enum Input {
    /// Everything stored (values opened).
    Dump(Dump),
    /// The changes after the snapshot in force, up to a revision.
    Updates(u64, Vec<Update>),
}

/// How a snapshot is compiled (replaced in tests to make builds fail).
type BuildFn = dyn Fn(&Snapshot, Input, &Carry) -> Snapshot + Send + Sync;

/// Compile `input` on top of `prev`.
fn build_input(prev: &Snapshot, input: Input, carry: &Carry) -> Snapshot {
    match input {
        Input::Dump(dump) => Snapshot::build(&dump, Some(prev), carry),
        Input::Updates(revision, updates) => prev.apply(revision, updates, carry),
    }
}

/// What the store gave for a rebuild.
enum Read {
    /// Everything stored, at a point of the change log.
    Whole(Dump, u64),
    /// The changes since the snapshot in force.
    Since(Changes),
}

/// A work item for the build thread.
type Job = Box<dyn FnOnce() + Send>;

/// The one thread that compiles snapshots and releases replaced ones.
///
/// Why one thread: the compiled objects live as long as their snapshots;
/// made and freed on one thread they stay in one malloc arena instead of
/// being spread over the arenas of whichever pool threads ran each build,
/// which kept memory that churn had freed from being reused.
struct BuildThread {
    jobs: Mutex<mpsc::Sender<Job>>,
}

impl BuildThread {
    /// Start the thread; it runs in the caller's runtime context, so what
    /// a build starts (a plugin's sender task) runs on that runtime.
    fn start() -> std::io::Result<BuildThread> {
        let (tx, rx) = mpsc::channel::<Job>();
        let runtime = tokio::runtime::Handle::try_current().ok();
        std::thread::Builder::new()
            .name("snapshot-build".into())
            .spawn(move || {
                let _entered = runtime.as_ref().map(|h| h.enter());
                while let Ok(job) = rx.recv() {
                    job();
                }
            })?;
        Ok(BuildThread {
            jobs: Mutex::new(tx),
        })
    }

    /// Run `f` on the build thread; a panic comes back as its message.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, String> {
        let (tx, rx) = oneshot::channel();
        self.submit(Box::new(move || {
            let out = catch_unwind(AssertUnwindSafe(f)).map_err(|p| panic_message(&*p).to_string());
            let _ = tx.send(out);
        }))?;
        rx.await
            .map_err(|_| "the snapshot build thread stopped".to_string())?
    }

    fn submit(&self, job: Job) -> Result<(), String> {
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(job)
            .map_err(|_| "the snapshot build thread stopped".to_string())
    }
}

/// Everything one rebuild needs.
struct Rebuilder {
    store: Arc<dyn Store>,
    current: SharedSnapshot,
    carry: Arc<Carry>,
    keyring: Arc<Keyring>,
    build: Arc<BuildFn>,
    thread: BuildThread,
    /// The point of the store's change log the snapshot in force was
    /// built from (None before the first build, which reads everything).
    built: Mutex<Option<u64>>,
}

/// Decrypt the secrets of `e`'s value and resolve its `$env://` and
/// `$secret://` references (a new value only when it had any).
fn open_secrets(e: &mut Entry, keyring: &Keyring, refs: &Resolver) {
    if may_hold_secret(e) {
        let mut v = (*e.value).clone();
        keyring.open(e.kind, &mut v);
        if v != *e.value {
            e.value = Arc::new(v);
        }
    }
    refs.resolve(e);
}

/// The changes as updates for the snapshot build, values opened.
fn updates_of(changes: Changes, keyring: &Keyring, refs: &Resolver) -> Vec<Update> {
    changes
        .changed
        .into_iter()
        .map(|mut e| {
            open_secrets(&mut e, keyring, refs);
            ((e.kind, e.id.clone()), Some(e))
        })
        .chain(changes.removed.into_iter().map(|k| (k, None)))
        .collect()
}

/// Whether a stored value has a slot the keyring may have encrypted (a
/// private key); the others are compiled as stored, shared with the store.
fn may_hold_secret(e: &Entry) -> bool {
    let client_key = |v: Option<&Value>| {
        v.and_then(|v| v.get("tls"))
            .and_then(|t| t.get("client_key"))
            .is_some()
    };
    match e.kind {
        Kind::Ssl => true,
        Kind::Upstream => client_key(Some(&e.value)),
        Kind::StreamRoute | Kind::Service => client_key(e.value.get("upstream")),
        Kind::PluginMetadata | Kind::Secret => false,
    }
}

impl Rebuilder {
    /// Build a snapshot of the store as it is now and put it in force;
    /// returns its revision.
    async fn rebuild(&self) -> Result<u64, Failed> {
        let prev = self.current.load_full();
        let built = *self.built.lock().unwrap_or_else(|p| p.into_inner());
        let index = self.store.index();
        // Changes that touch services or plugin metadata, and a plugin
        // reload, take a whole build.
        let since = built
            .and_then(|seq| index.changes_since(seq))
            .filter(|c| prev.applies(&c.changed, &c.removed, &self.carry))
            // A changed `secrets` object (or Vault value) resolves every
            // object again, from the store's values.
            .filter(|c| !self.carry.secrets.must_reload(c));
        let read = match since {
            Some(c) => Read::Since(c),
            None => {
                let (dump, seq) = index.dump_seq();
                Read::Whole(dump, seq)
            }
        };
        let (revision, seq) = match &read {
            Read::Since(c) => (c.revision, c.seq),
            Read::Whole(d, seq) => (d.revision, *seq),
        };
        // Values from secret managers are read here, not while building.
        match &read {
            Read::Whole(dump, _) => self.carry.secrets.prefetch(dump, None).await,
            Read::Since(c) => {
                let base = Dump {
                    revision: c.revision,
                    entries: index.list(Kind::Secret),
                };
                self.carry.secrets.prefetch(&base, Some(c)).await;
            }
        }
        let (carry, keyring, build) =
            (self.carry.clone(), self.keyring.clone(), self.build.clone());
        // A panic in the build comes back as an error and the previous
        // snapshot stays in force.
        let built = self
            .thread
            .run(move || {
                let input = match read {
                    Read::Whole(mut dump, _) => {
                        dump.entries
                            .iter_mut()
                            .for_each(|e| open_secrets(e, &keyring, &carry.secrets));
                        Input::Dump(dump)
                    }
                    Read::Since(c) => {
                        Input::Updates(c.revision, updates_of(c, &keyring, &carry.secrets))
                    }
                };
                build(&prev, input, &carry)
            })
            .await
            .map_err(|why| Failed {
                revision,
                reason: format!("snapshot build failed: {why}"),
            })?;
        *self.built.lock().unwrap_or_else(|p| p.into_inner()) = Some(seq);
        tracing::debug!(revision, routes = built.route_count(), "snapshot published");
        let checkers_changed = built.checkers_changed();
        let replaced = self.current.swap(Arc::new(built));
        if checkers_changed {
            self.carry.health.apply(self.current.load().checkers());
        }
        // Releasing a snapshot is not on the way to the answer.
        let _ = self.thread.submit(Box::new(move || drop(replaced)));
        Ok(revision)
    }
}

/// Build the first snapshot, then keep it current until `cancel`.
pub async fn start(
    store: Arc<dyn Store>,
    carry: Arc<Carry>,
    keyring: Keyring,
    cancel: CancellationToken,
) -> Result<Publisher, StoreError> {
    let build: Arc<BuildFn> = Arc::new(build_input);
    start_with(store, carry, keyring, cancel, build).await
}

async fn start_with(
    store: Arc<dyn Store>,
    carry: Arc<Carry>,
    keyring: Keyring,
    cancel: CancellationToken,
    build: Arc<BuildFn>,
) -> Result<Publisher, StoreError> {
    let current: SharedSnapshot = Arc::new(ArcSwap::from_pointee(Snapshot::empty()));
    let mut changes = store.subscribe();
    changes.borrow_and_update();
    // A plugin reload compiles every route again without a store change.
    let mut plugins_changed = carry.plugins.subscribe();
    plugins_changed.borrow_and_update();
    let thread = BuildThread::start().map_err(|e| {
        StoreError::Unavailable(format!("cannot start the snapshot build thread: {e}"))
    })?;
    // A registry's changed node list rebuilds as a store change does.
    let mut nodes_changed = carry.discovery.subscribe();
    nodes_changed.borrow_and_update();
    let rebuilder = Rebuilder {
        store,
        current: current.clone(),
        carry,
        keyring: Arc::new(keyring),
        build,
        thread,
        built: Mutex::new(None),
    };
    let first = rebuilder
        .rebuild()
        .await
        .map_err(|f| StoreError::Unavailable(f.reason))?;
    let (tx, rx) = watch::channel(Published {
        revision: first,
        failed: None,
    });
    tokio::spawn(async move {
        let carry = rebuilder.carry.clone();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                changed = async {
                    tokio::select! {
                        c = changes.changed() => c,
                        c = plugins_changed.changed() => c,
                        c = nodes_changed.changed() => c,
                    }
                } => {
                    if changed.is_err() {
                        break;
                    }
                    changes.borrow_and_update();
                    plugins_changed.borrow_and_update();
                    nodes_changed.borrow_and_update();
                }
                // A value read again from a secret manager changed.
                _ = carry.secrets.changed.notified() => {}
            }
            match rebuilder.rebuild().await {
                Ok(revision) => {
                    tx.send_replace(Published {
                        revision,
                        failed: None,
                    });
                }
                Err(f) => {
                    tracing::error!(
                        revision = f.revision,
                        error = %f.reason,
                        "cannot apply the store's changes; keeping the previous snapshot"
                    );
                    tx.send_modify(|p| p.failed = Some(f));
                }
            }
        }
    });
    Ok(Publisher {
        current,
        published: rx,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::store::local::LocalStore;
    use crate::store::Expect;

    async fn settled(rx: &mut watch::Receiver<Published>, rev: u64) -> Result<(), Failed> {
        let p = tokio::time::timeout(
            Duration::from_secs(10),
            rx.wait_for(|p| p.outcome(rev).is_some()),
        )
        .await
        .expect("settled in time")
        .expect("publisher running");
        p.outcome(rev).expect("settled").map_err(Failed::clone)
    }

    #[test]
    fn outcomes_follow_applied_and_failed_revisions() {
        let mut p = Published {
            revision: 5,
            failed: None,
        };
        assert_eq!(p.outcome(5), Some(Ok(())));
        assert_eq!(p.outcome(6), None);
        p.failed = Some(Failed {
            revision: 7,
            reason: "boom".into(),
        });
        assert_eq!(p.outcome(4), Some(Ok(())));
        assert!(matches!(p.outcome(7), Some(Err(f)) if f.reason == "boom"));
        assert!(p.outcome(6).is_some_and(|o| o.is_err()));
        assert_eq!(p.outcome(8), None);
    }

    #[tokio::test]
    async fn a_failed_build_is_reported_for_its_revision_and_the_next_one_publishes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> = Arc::new(LocalStore::open(dir.path()).expect("open"));
        let fail = Arc::new(AtomicBool::new(false));
        let failing = fail.clone();
        let build: Arc<BuildFn> = Arc::new(move |prev, input, carry| {
            if failing.load(Ordering::SeqCst) {
                panic!("route table exploded");
            }
            build_input(prev, input, carry)
        });
        let cancel = CancellationToken::new();
        let publisher = start_with(
            store.clone(),
            Arc::default(),
            Keyring::default(),
            cancel.clone(),
            build,
        )
        .await
        .expect("first build");
        let mut rx = publisher.published.clone();
        let route =
            |port: u16| json!({"id": "1", "upstream": {"nodes": {format!("127.0.0.1:{port}"): 1}}});
        let put = |v: serde_json::Value| {
            let store = store.clone();
            async move {
                store
                    .put(Kind::StreamRoute, "1", v, Expect::Any)
                    .await
                    .expect("put")
                    .entry
                    .mod_rev
            }
        };

        let r1 = put(route(1001)).await;
        assert_eq!(settled(&mut rx, r1).await, Ok(()));
        assert_eq!(publisher.current.load().route_count(), 1);

        fail.store(true, Ordering::SeqCst);
        let r2 = put(route(1002)).await;
        let failed = settled(&mut rx, r2).await.expect_err("the build panicked");
        assert_eq!(failed.revision, r2);
        assert!(
            failed.reason.contains("route table exploded"),
            "{}",
            failed.reason
        );
        let kept = publisher.current.load();
        assert_eq!(kept.revision, r1, "the previous snapshot stays in force");
        let routes = kept.routes();
        let node = routes[0].upstream.as_ref().expect("upstream");
        assert_eq!(node.balancer.backends()[0].port, 1001);

        fail.store(false, Ordering::SeqCst);
        let r3 = put(route(1003)).await;
        assert_eq!(
            settled(&mut rx, r3).await,
            Ok(()),
            "a later write publishes"
        );
        assert_eq!(rx.borrow().failed, None, "the failure is cleared");
        let now = publisher.current.load();
        assert_eq!(now.revision, r3);
        let routes = now.routes();
        let node = routes[0].upstream.as_ref().expect("upstream");
        assert_eq!(node.balancer.backends()[0].port, 1003);
        cancel.cancel();
    }
}
