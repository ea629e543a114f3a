//! Where stream routes, upstreams, SSL objects, services, plugin metadata and secrets live.
//!
//! The Admin API and the data plane see storage only through the [`Store`]
//! trait: reads, writes that are durable before they return, an etcd-like
//! revision counter and a change feed (a `watch` of the latest revision).
//! Back-ends plug in behind it without the Admin API knowing which one runs:
//! [`local::LocalStore`] is the embedded, crash-safe default,
//! [`etcd::EtcdStore`] follows an etcd cluster and [`file::FileStore`] reads
//! a standalone `apisix.yaml`. All three keep their objects, revision and
//! change feed in one [`index::Index`].

mod dir_lock;
pub mod etcd;
pub mod file;
pub mod index;
pub mod local;

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::watch;

use crate::model::Kind;
pub use index::IndexView;

/// One stored object with its etcd-style revisions.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Resource type.
    pub kind: Kind,
    /// Object id (the last segment of its key).
    pub id: String,
    /// The stored JSON object, as the Admin API accepted it.
    pub value: Arc<Value>,
    /// Store revision at which the key was created (`createdIndex`).
    pub create_rev: u64,
    /// Store revision of the last write to the key (`modifiedIndex`).
    pub mod_rev: u64,
}

/// The key a store adds to a stream route it holds but could not accept
/// (the reason is its value): the data plane refuses the route's clients
/// instead of letting them fall through to a wider route, and reads
/// ([`Store::get`], [`Store::list`]) do not show it.
pub const UNSERVABLE: &str = "__unservable";

/// A stored stream route that failed its checks, kept marked [`UNSERVABLE`]
/// so its filters still catch its clients (or a service, so the routes
/// under it refuse theirs); None when it is not a JSON object (nothing to
/// match on).
pub fn unservable(kind: Kind, value: &Value, why: &str) -> Option<Value> {
    if kind != Kind::StreamRoute && kind != Kind::Service {
        return None;
    }
    let mut value = value.clone();
    value
        .as_object_mut()?
        .insert(UNSERVABLE.into(), Value::String(why.to_string()));
    Some(value)
}

/// Why a stored value is marked [`UNSERVABLE`], if it is.
pub fn unservable_reason(value: &Value) -> Option<&str> {
    value.get(UNSERVABLE).and_then(Value::as_str)
}

/// Whether a check failure names a plugin this build does not run: such a
/// value replaces a valid older version instead of leaving it in force
/// (the older one would run without the plugin asked for).
pub fn fails_closed(why: &str) -> bool {
    why.starts_with("unknown plugin [")
}

/// A precondition on a write, checked atomically with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Write whatever is there.
    Any,
    /// Write only if the key's last modification is still this revision
    /// (PATCH's read-modify-write).
    ModRev(u64),
}

/// What a `put` did.
#[derive(Debug, Clone)]
pub struct PutOutcome {
    /// True when the key did not exist before.
    pub created: bool,
    /// The entry as now stored.
    pub entry: Entry,
}

/// Storage failures, mapped by the Admin API to APISIX's status codes.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The back-end cannot take writes (disk error, unreachable cluster).
    #[error("{0}")]
    Unavailable(String),
    /// The back-end is read-only by configuration (standalone file).
    #[error("{0}")]
    ReadOnly(String),
    /// An `Expect::ModRev` precondition failed.
    #[error("value changed before overwritten")]
    Conflict,
    /// Stored data cannot be read back: start-up must stop.
    #[error("{0}")]
    Corrupt(String),
}

/// A consistent view of everything stored, for building a data-plane snapshot.
#[derive(Debug, Clone, Default)]
pub struct Dump {
    /// Revision the dump reflects.
    pub revision: u64,
    /// Every entry, grouped by kind and in key order within a kind.
    pub entries: Vec<Entry>,
}

/// Storage back-end behind the Admin API and the snapshot publisher.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The back-end's objects, revision and change feed, which answer
    /// reads, dumps and subscriptions the same way for every back-end.
    fn index(&self) -> &dyn IndexView;
    /// One object, if present.
    async fn get(&self, kind: Kind, id: &str) -> Result<Option<Entry>, StoreError> {
        Ok(self.index().get(kind, id))
    }
    /// All objects of a kind in key order (byte-wise on the id, as etcd).
    async fn list(&self, kind: Kind) -> Result<Vec<Entry>, StoreError> {
        Ok(self.index().list(kind))
    }
    /// Create or replace; durable before it returns.
    async fn put(
        &self,
        kind: Kind,
        id: &str,
        value: Value,
        expect: Expect,
    ) -> Result<PutOutcome, StoreError>;
    /// Remove; durable before it returns. `None` when the key was absent.
    async fn delete(&self, kind: Kind, id: &str) -> Result<Option<Entry>, StoreError>;
    /// A new unique id for POST: a fresh revision, zero-padded to 20 digits
    /// as APISIX mints them from etcd.
    async fn next_id(&self) -> Result<String, StoreError>;
    /// Everything at one revision.
    async fn dump(&self) -> Result<Dump, StoreError> {
        Ok(self.index().dump())
    }
    /// Latest revision; it only increases.
    fn revision(&self) -> u64 {
        self.index().revision()
    }
    /// Change feed: the receiver sees the latest revision after every change.
    fn subscribe(&self) -> watch::Receiver<u64> {
        self.index().subscribe()
    }
    /// Human name of the back-end for logs (`local:/path`, `etcd`, ...).
    fn describe(&self) -> String;
    /// Why reads may be out of date (the cluster is unreachable and the
    /// last known data is served); `None` while the data is current.
    fn stale(&self) -> Option<String> {
        None
    }
    /// The etcd endpoints' state, for the etcd back-end.
    fn etcd_status(&self) -> Option<etcd::EtcdStatus> {
        None
    }
    /// Binary upgrade: finish the write in progress, refuse later ones and
    /// let a new process open the store; `false` when nothing is held.
    fn hand_over(&self) -> bool {
        false
    }
    /// Undo [`hand_over`](Store::hand_over) after an upgrade that failed.
    fn take_back(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Format a revision as APISIX formats generated ids.
pub fn format_generated_id(rev: u64) -> String {
    format!("{rev:020}")
}

/// Share a stored value, its maps, arrays and strings first trimmed to
/// their length (parsing and editing leave them with spare capacity, which
/// every stored object would otherwise keep for as long as it lives).
pub fn shared_value(mut value: Value) -> Arc<Value> {
    compact(&mut value);
    Arc::new(value)
}

fn compact(v: &mut Value) {
    match v {
        Value::Object(map) => {
            let mut trimmed: serde_json::Map<String, Value> = std::mem::take(map)
                .into_iter()
                .map(|(mut k, mut v)| {
                    k.shrink_to_fit();
                    compact(&mut v);
                    (k, v)
                })
                .collect();
            std::mem::swap(map, &mut trimmed);
        }
        Value::Array(items) => {
            items.shrink_to_fit();
            items.iter_mut().for_each(compact);
        }
        Value::String(s) => s.shrink_to_fit(),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_zero_padded_to_20_digits() {
        assert_eq!(format_generated_id(42), "00000000000000000042");
        assert_eq!(format_generated_id(42).len(), 20);
    }
}
