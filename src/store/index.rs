//! The part every back-end shares: the objects held in memory, the store's
//! revision and the change feed.
//!
//! Each back-end keeps beside its [`Index`] only what is its own (the local
//! store its log file, the standalone store the file it reads, the etcd store
//! its client and watch). Reads (`get`, `list`, `dump`) are answered here for
//! all of them.
//!
//! Why one lock over the objects and the revision: a [`Dump`] must show both
//! at one instant, and the feed must announce revisions in the order they
//! were reached. A back-end does its slow work (an `fsync`, an etcd request)
//! before it takes the lock, so readers never wait on disk or network. The
//! feed is sent while the lock is held: two writers can never announce out
//! of order.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::watch;

use super::{Dump, Entry};
use crate::model::Kind;

/// An object's key: its kind, then its id.
pub type Key = (Kind, String);

/// Objects keyed by kind then id (byte-wise, as etcd orders keys).
pub type Objects = BTreeMap<Key, Entry>;

/// The objects, the revision and the back-end's own bookkeeping `X`, all
/// changed together under the index's lock.
#[derive(Debug, Default)]
pub struct Table<X = ()> {
    objects: Objects,
    revision: u64,
    /// Set by [`Table::commit`]: announce `revision` once the update ends.
    announce: bool,
    /// Bookkeeping the back-end keeps in step with the objects.
    pub extra: X,
}

impl<X> Table<X> {
    /// Every object.
    pub fn objects(&self) -> &Objects {
        &self.objects
    }

    /// One object, if present.
    pub fn get(&self, key: &Key) -> Option<&Entry> {
        self.objects.get(key)
    }

    /// The store's revision (it only increases).
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Store `entry` under its key; true when that changed anything.
    pub fn insert(&mut self, entry: Entry) -> bool {
        let key = (entry.kind, entry.id.clone());
        if self.objects.get(&key) == Some(&entry) {
            return false;
        }
        self.objects.insert(key, entry);
        true
    }

    /// Remove one object, returning it.
    pub fn remove(&mut self, key: &Key) -> Option<Entry> {
        self.objects.remove(key)
    }

    /// Replace every object; true when that changed anything.
    pub fn replace(&mut self, objects: Objects) -> bool {
        if objects == self.objects {
            return false;
        }
        self.objects = objects;
        true
    }

    /// Move the revision to `rev` (if higher) without announcing it: a
    /// revision used up without changing any object (a POST id).
    pub fn advance(&mut self, rev: u64) {
        self.revision = self.revision.max(rev);
    }

    /// Move the revision to `rev` (if higher) and announce the revision in
    /// force on the change feed when this update ends.
    pub fn commit(&mut self, rev: u64) {
        self.advance(rev);
        self.announce = true;
    }
}

/// Objects, revision and change feed of one store.
#[derive(Debug)]
pub struct Index<X = ()> {
    table: Mutex<Table<X>>,
    feed: watch::Sender<u64>,
}

impl<X: Default> Default for Index<X> {
    fn default() -> Self {
        Index::new(Objects::new(), 0, X::default())
    }
}

impl<X> Index<X> {
    /// An index holding `objects` at `revision`, which the feed starts with.
    pub fn new(objects: Objects, revision: u64, extra: X) -> Index<X> {
        Index {
            table: Mutex::new(Table {
                objects,
                revision,
                announce: false,
                extra,
            }),
            feed: watch::channel(revision).0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table<X>> {
        // Objects change only through single insert, remove and replace
        // calls, so a panic elsewhere cannot leave the table half-changed.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Look at the table.
    pub fn read<R>(&self, f: impl FnOnce(&Table<X>) -> R) -> R {
        f(&self.lock())
    }

    /// Change the table in one step; a [`Table::commit`] inside `f` is
    /// announced on the feed before the lock is released.
    pub fn update<R>(&self, f: impl FnOnce(&mut Table<X>) -> R) -> R {
        let mut table = self.lock();
        let out = f(&mut table);
        if std::mem::take(&mut table.announce) {
            self.feed.send_replace(table.revision);
        }
        out
    }
}

/// What every store answers straight from its index: reads, dumps,
/// revision and change feed. [`super::Store`] serves these through
/// [`super::Store::index`], so a back-end writes only what is its own.
pub trait IndexView: Send + Sync {
    /// One object, if present.
    fn get(&self, kind: Kind, id: &str) -> Option<Entry>;
    /// Every object of `kind`, in id order.
    fn list(&self, kind: Kind) -> Vec<Entry>;
    /// Every object at the current revision.
    fn dump(&self) -> Dump;
    /// The last revision announced on the feed.
    fn revision(&self) -> u64;
    /// The change feed: the latest announced revision.
    fn subscribe(&self) -> watch::Receiver<u64>;
}

impl<X: Send> IndexView for Index<X> {
    fn get(&self, kind: Kind, id: &str) -> Option<Entry> {
        self.lock().objects.get(&(kind, id.to_string())).cloned()
    }

    fn list(&self, kind: Kind) -> Vec<Entry> {
        self.lock()
            .objects
            .range((kind, String::new())..)
            .take_while(|((k, _), _)| *k == kind)
            .map(|(_, e)| e.clone())
            .collect()
    }

    fn dump(&self) -> Dump {
        let table = self.lock();
        Dump {
            revision: table.revision,
            entries: table.objects.values().cloned().collect(),
        }
    }

    fn revision(&self) -> u64 {
        *self.feed.borrow()
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.feed.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;

    fn entry(kind: Kind, id: &str, rev: u64) -> Entry {
        Entry {
            kind,
            id: id.into(),
            value: Arc::new(json!({"rev": rev})),
            create_rev: rev,
            mod_rev: rev,
        }
    }

    #[test]
    fn lists_by_kind_in_byte_order_and_dumps_at_one_revision() {
        let index: Index = Index::default();
        index.update(|t| {
            for (kind, id) in [
                (Kind::Upstream, "u"),
                (Kind::StreamRoute, "2"),
                (Kind::StreamRoute, "10"),
                (Kind::Ssl, "s"),
            ] {
                assert!(t.insert(entry(kind, id, 1)));
            }
            t.commit(4);
        });
        let ids: Vec<String> = index
            .list(Kind::StreamRoute)
            .into_iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(ids, ["10", "2"]);
        assert_eq!(index.list(Kind::Upstream).len(), 1);
        assert!(index.get(Kind::Ssl, "s").is_some());
        assert!(index.get(Kind::Ssl, "u").is_none());
        let dump = index.dump();
        assert_eq!((dump.revision, dump.entries.len()), (4, 4));
    }

    #[test]
    fn only_commits_reach_the_feed_and_revisions_never_go_back() {
        let index: Index = Index::new(Objects::new(), 3, ());
        let mut feed = index.subscribe();
        assert_eq!(*feed.borrow_and_update(), 3);
        index.update(|t| t.advance(5));
        assert!(!feed.has_changed().expect("open"));
        assert_eq!((index.revision(), index.dump().revision), (3, 5));
        index.update(|t| {
            assert!(t.insert(entry(Kind::Upstream, "1", 6)));
            assert!(!t.insert(entry(Kind::Upstream, "1", 6)), "same entry");
            t.commit(6);
        });
        assert!(feed.has_changed().expect("open"));
        assert_eq!(*feed.borrow_and_update(), 6);
        index.update(|t| t.commit(2));
        assert_eq!(*feed.borrow_and_update(), 6);
        let removed = index.update(|t| t.remove(&(Kind::Upstream, "1".into())));
        assert_eq!(removed.map(|e| e.mod_rev), Some(6));
        assert!(index.update(|t| !t.replace(Objects::new())));
    }
}
