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

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Mutex, MutexGuard};

use tokio::sync::watch;

use super::{unservable_reason, Dump, Entry};
use crate::model::Kind;

/// An object's key: its kind, then its id.
pub type Key = (Kind, String);

/// Objects keyed by kind then id (byte-wise, as etcd orders keys).
pub type Objects = BTreeMap<Key, Entry>;

/// How many changed keys the index remembers for [`IndexView::changes_since`];
/// a reader further behind takes a whole [`Dump`].
const CHANGE_LOG_CAP: usize = 1 << 16;

/// What changed after a point of the change log: a reader that has every
/// object as of that point applies these to have them as of `seq`.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    /// The store revision the changes lead to.
    pub revision: u64,
    /// The point of the change log they lead to.
    pub seq: u64,
    /// Objects written since, as they are now (in key order).
    pub changed: Vec<Entry>,
    /// Keys removed since (in key order).
    pub removed: Vec<Key>,
}

/// The objects, the revision and the back-end's own bookkeeping `X`, all
/// changed together under the index's lock.
#[derive(Debug, Default)]
pub struct Table<X = ()> {
    objects: Objects,
    revision: u64,
    /// Set by [`Table::commit`]: announce `revision` once the update ends.
    announce: bool,
    /// Keys changed in this update, logged under the next `seq`.
    touched: Vec<Key>,
    /// Counts the updates that changed objects (the change log's clock:
    /// unlike the revision, it moves with every change, including those
    /// that arrive at a revision already reached).
    seq: u64,
    /// Changed keys by `seq`, oldest first.
    log: VecDeque<(u64, Key)>,
    /// Changes after this `seq` are all in `log`.
    log_floor: u64,
    /// Every object was replaced in this update.
    replaced: bool,
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
        self.touched.push(key.clone());
        self.objects.insert(key, entry);
        true
    }

    /// Remove one object, returning it.
    pub fn remove(&mut self, key: &Key) -> Option<Entry> {
        let old = self.objects.remove(key);
        if old.is_some() {
            self.touched.push(key.clone());
        }
        old
    }

    /// Replace every object; true when that changed anything. Readers of
    /// [`IndexView::changes_since`] take a whole dump afterwards.
    pub fn replace(&mut self, objects: Objects) -> bool {
        if objects == self.objects {
            return false;
        }
        self.objects = objects;
        self.replaced = true;
        true
    }

    /// Log the keys changed in an update under a new `seq`; a replacement
    /// of everything makes earlier points unknown instead.
    fn settle(&mut self) {
        let replaced = std::mem::take(&mut self.replaced);
        if !replaced && self.touched.is_empty() {
            return;
        }
        self.seq = self.seq.saturating_add(1);
        if replaced {
            self.touched.clear();
            self.log.clear();
            self.log_floor = self.seq;
            return;
        }
        for key in std::mem::take(&mut self.touched) {
            self.log.push_back((self.seq, key));
        }
        while self.log.len() > CHANGE_LOG_CAP {
            if let Some((rev, _)) = self.log.pop_front() {
                self.log_floor = self.log_floor.max(rev);
            }
        }
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
                touched: Vec::new(),
                seq: 0,
                log: VecDeque::new(),
                log_floor: 0,
                replaced: false,
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
        table.settle();
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
    fn dump(&self) -> Dump {
        self.dump_seq().0
    }
    /// Every object at the current revision, and the change log's point.
    fn dump_seq(&self) -> (Dump, u64);
    /// What changed after point `seq` of the change log, or None when that
    /// is no longer known (too far behind, or everything was replaced):
    /// take a dump.
    fn changes_since(&self, seq: u64) -> Option<Changes>;
    /// The last revision announced on the feed.
    fn revision(&self) -> u64;
    /// The change feed: the latest announced revision.
    fn subscribe(&self) -> watch::Receiver<u64>;
}

impl<X: Send> IndexView for Index<X> {
    fn get(&self, kind: Kind, id: &str) -> Option<Entry> {
        self.lock()
            .objects
            .get(&(kind, id.to_string()))
            .filter(|e| unservable_reason(&e.value).is_none())
            .cloned()
    }

    fn list(&self, kind: Kind) -> Vec<Entry> {
        self.lock()
            .objects
            .range((kind, String::new())..)
            .take_while(|((k, _), _)| *k == kind)
            .filter(|(_, e)| unservable_reason(&e.value).is_none())
            .map(|(_, e)| e.clone())
            .collect()
    }

    fn dump_seq(&self) -> (Dump, u64) {
        let table = self.lock();
        let dump = Dump {
            revision: table.revision,
            entries: table.objects.values().cloned().collect(),
        };
        (dump, table.seq)
    }

    fn changes_since(&self, seq: u64) -> Option<Changes> {
        let table = self.lock();
        if seq < table.log_floor || seq > table.seq {
            return None;
        }
        let from = table.log.partition_point(|(s, _)| *s <= seq);
        let keys: BTreeSet<&Key> = table.log.range(from..).map(|(_, k)| k).collect();
        let mut out = Changes {
            revision: table.revision,
            seq: table.seq,
            ..Changes::default()
        };
        for key in keys {
            match table.objects.get(key) {
                Some(e) => out.changed.push(e.clone()),
                None => out.removed.push(key.clone()),
            }
        }
        Some(out)
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

    #[test]
    fn changes_since_a_point_of_the_log_or_a_dump_when_unknown() {
        let index: Index = Index::new(Objects::new(), 2, ());
        let (_, s0) = index.dump_seq();
        assert!(index
            .changes_since(s0)
            .is_some_and(|c| c.changed.is_empty()));
        index.update(|t| {
            t.insert(entry(Kind::StreamRoute, "a", 3));
            t.insert(entry(Kind::StreamRoute, "b", 3));
            t.commit(3);
        });
        let (_, s1) = index.dump_seq();
        index.update(|t| {
            t.remove(&(Kind::StreamRoute, "a".into()));
            t.insert(entry(Kind::Upstream, "u", 4));
            t.commit(4);
        });
        let ids = |c: &Changes| -> (Vec<String>, Vec<String>) {
            (
                c.changed.iter().map(|e| e.id.clone()).collect(),
                c.removed.iter().map(|k| k.1.clone()).collect(),
            )
        };
        let c = index.changes_since(s0).expect("known");
        assert_eq!(c.revision, 4);
        assert_eq!(ids(&c), (vec!["b".into(), "u".into()], vec!["a".into()]));
        let c = index.changes_since(s1).expect("known");
        assert_eq!(ids(&c), (vec!["u".into()], vec!["a".into()]));
        assert!(index.changes_since(c.seq + 1).is_none(), "not reached");

        // A change that arrives at a revision already reached is still a
        // change for a reader at that revision.
        let s2 = c.seq;
        index.update(|t| {
            t.insert(entry(Kind::StreamRoute, "c", 3));
            t.commit(3);
        });
        let c = index.changes_since(s2).expect("known");
        assert_eq!((c.revision, ids(&c).0), (4, vec!["c".to_string()]));
        // A replacement of everything leaves earlier points to a dump.
        index.update(|t| {
            t.replace(Objects::new());
            t.commit(6);
        });
        assert!(index.changes_since(c.seq).is_none());
        let (dump, s3) = index.dump_seq();
        assert_eq!(dump.revision, 6);
        assert!(index
            .changes_since(s3)
            .is_some_and(|c| c.changed.is_empty()));
    }
}
