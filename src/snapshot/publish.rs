//! Store change feed -> compiled snapshot -> atomic swap -> announcement.
//!
//! One task follows the store's revision feed. For each change it takes a
//! consistent dump, compiles a new [`Snapshot`] on a blocking thread (a big
//! configuration must not stall accept loops), swaps it in, lets the health
//! registry start and stop probes, then announces the outcome on a `watch`
//! ([`Published`]) so Admin API writes answer only once the data plane
//! serves them. The feed coalesces bursts of writes into one rebuild.
//!
//! A rebuild that fails (the store cannot be read, or the build panics)
//! keeps the previous snapshot in force and is announced as failed for its
//! revision, with why; the task carries on, so the next change is built
//! and published as usual.

use std::sync::{Arc, Mutex};

use serde_json::Value;

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::build::panic_message;
use super::{Carry, Snapshot};
use crate::model::crypt::Keyring;
use crate::model::Kind;
use crate::secrets::Resolver;
use crate::store::index::{Changes, Key};
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

/// How a snapshot is compiled (replaced in tests to make builds fail).
type BuildFn = dyn Fn(&Dump, &Snapshot, &Carry) -> Snapshot + Send + Sync;

/// Everything one rebuild needs.
struct Rebuilder {
    store: Arc<dyn Store>,
    current: SharedSnapshot,
    carry: Arc<Carry>,
    keyring: Arc<Keyring>,
    build: Arc<BuildFn>,
    /// The store's objects (secrets decrypted) as of the last build, kept
    /// up to date with the store's changes instead of dumping it all.
    mirror: Mutex<Option<Dump>>,
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

/// Bring `dump` (values opened) up to date with `changes`, in key order.
fn apply_changes(dump: &mut Dump, changes: Changes, keyring: &Keyring, refs: &Resolver) {
    let mut updates: Vec<(Key, Option<Entry>)> = changes
        .changed
        .into_iter()
        .map(|mut e| {
            open_secrets(&mut e, keyring, refs);
            ((e.kind, e.id.clone()), Some(e))
        })
        .chain(changes.removed.into_iter().map(|k| (k, None)))
        .collect();
    updates.sort_by(|a, b| a.0.cmp(&b.0));
    let old = std::mem::take(&mut dump.entries);
    let mut out = Vec::with_capacity(old.len() + updates.len());
    // Each update is placed by a binary search; the entries between move
    // over in runs, without comparing their keys.
    let mut rest = old.into_iter();
    for (key, new) in updates {
        let tail = rest.as_slice();
        let at = tail.partition_point(|e| (e.kind, e.id.as_str()) < (key.0, key.1.as_str()));
        out.extend(rest.by_ref().take(at));
        if rest
            .as_slice()
            .first()
            .is_some_and(|e| e.kind == key.0 && e.id == key.1)
        {
            rest.next();
        }
        out.extend(new);
    }
    out.extend(rest);
    dump.entries = out;
    dump.revision = changes.revision;
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
        let base = self.mirror.lock().unwrap_or_else(|p| p.into_inner()).take();
        let changes = base
            .as_ref()
            .and_then(|m| self.store.index().changes_since(m.revision))
            // A changed `secrets` object (or Vault value) resolves every
            // object again, from the store's values.
            .filter(|c| !self.carry.secrets.must_reload(c));
        let (base, changes) = match (base, changes) {
            (Some(m), Some(c)) => (m, Some(c)),
            _ => {
                let dump = self.store.dump().await.map_err(|e| Failed {
                    revision: self.store.revision(),
                    reason: format!("cannot read the store: {e}"),
                })?;
                (dump, None)
            }
        };
        let revision = changes.as_ref().map_or(base.revision, |c| c.revision);
        // Values from secret managers are read here, not while building.
        self.carry.secrets.prefetch(&base, changes.as_ref()).await;
        let prev = self.current.load_full();
        let (carry, keyring, build) =
            (self.carry.clone(), self.keyring.clone(), self.build.clone());
        // A panic in the build ends this blocking task only: it comes back
        // as an error and the previous snapshot stays in force.
        let (dump, built) = tokio::task::spawn_blocking(move || {
            let mut dump = base;
            match changes {
                Some(c) => apply_changes(&mut dump, c, &keyring, &carry.secrets),
                None => dump
                    .entries
                    .iter_mut()
                    .for_each(|e| open_secrets(e, &keyring, &carry.secrets)),
            }
            let built = build(&dump, &prev, &carry);
            (dump, built)
        })
        .await
        .map_err(|e| Failed {
            revision,
            reason: if e.is_panic() {
                format!("snapshot build failed: {}", panic_message(&*e.into_panic()))
            } else {
                format!("snapshot build failed: {e}")
            },
        })?;
        *self.mirror.lock().unwrap_or_else(|p| p.into_inner()) = Some(dump);
        tracing::debug!(revision, routes = built.route_count(), "snapshot published");
        let checkers_changed = built.checkers_changed();
        let replaced = self.current.swap(Arc::new(built));
        if checkers_changed {
            self.carry.health.apply(self.current.load().checkers());
        }
        // Releasing a big snapshot takes time: not on the way to the answer.
        tokio::task::spawn_blocking(move || drop(replaced));
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
    let build: Arc<BuildFn> =
        Arc::new(|dump, prev, carry| Snapshot::build(dump, Some(prev), carry));
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
    let rebuilder = Rebuilder {
        store,
        current: current.clone(),
        carry,
        keyring: Arc::new(keyring),
        build,
        mirror: Mutex::default(),
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
                    }
                } => {
                    if changed.is_err() {
                        break;
                    }
                    changes.borrow_and_update();
                    plugins_changed.borrow_and_update();
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
        let build: Arc<BuildFn> = Arc::new(move |dump, prev, carry| {
            if failing.load(Ordering::SeqCst) {
                panic!("route table exploded");
            }
            Snapshot::build(dump, Some(prev), carry)
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
        let node = kept.routes()[0].upstream.as_ref().expect("upstream");
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
        let node = now.routes()[0].upstream.as_ref().expect("upstream");
        assert_eq!(node.balancer.backends()[0].port, 1003);
        cancel.cancel();
    }

    #[test]
    fn changes_are_merged_into_the_mirror_in_key_order() {
        let e = |kind: Kind, id: &str, rev: u64| Entry {
            kind,
            id: id.into(),
            value: Arc::new(json!({"rev": rev})),
            create_rev: rev,
            mod_rev: rev,
        };
        let mut dump = Dump {
            revision: 3,
            entries: vec![
                e(Kind::Upstream, "u", 1),
                e(Kind::StreamRoute, "b", 2),
                e(Kind::StreamRoute, "d", 3),
            ],
        };
        dump.entries
            .sort_by(|a, b| (a.kind, &a.id).cmp(&(b.kind, &b.id)));
        let kept = Arc::clone(&dump.entries.iter().find(|x| x.id == "u").expect("u").value);
        apply_changes(
            &mut dump,
            Changes {
                revision: 6,
                changed: vec![
                    e(Kind::StreamRoute, "a", 4),
                    e(Kind::StreamRoute, "d", 5),
                    e(Kind::StreamRoute, "e", 6),
                ],
                removed: vec![(Kind::StreamRoute, "b".into())],
            },
            &Keyring::default(),
            &Resolver::default(),
        );
        let mut want: Vec<(Kind, String, u64)> = vec![
            (Kind::Upstream, "u".into(), 1),
            (Kind::StreamRoute, "a".into(), 4),
            (Kind::StreamRoute, "d".into(), 5),
            (Kind::StreamRoute, "e".into(), 6),
        ];
        want.sort();
        let got: Vec<(Kind, String, u64)> = dump
            .entries
            .iter()
            .map(|x| (x.kind, x.id.clone(), x.mod_rev))
            .collect();
        assert_eq!(got, want);
        assert_eq!(dump.revision, 6);
        let u = dump.entries.iter().find(|x| x.id == "u").expect("u");
        assert!(Arc::ptr_eq(&u.value, &kept), "unchanged values are kept");
    }
}
