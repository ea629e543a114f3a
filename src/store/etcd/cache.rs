//! The in-memory copy of etcd's objects: decoding the gateway's key-values,
//! checking values as APISIX's readers do, and applying watch events, our
//! own acknowledged writes and full range reads to the store's index.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{json, Value};

use super::client::{b64, header_rev, num, range_end, unb64, CallError};
use super::Shared;
use crate::model::{self, EnabledPlugins, Kind, NotEnabled};
use crate::store::index::{Key, Objects, Table};
use crate::store::{unservable, unservable_reason, Entry};

/// The (kind, id) a key names, if it is one of our objects: exactly
/// `<prefix>/<dir>/<id>` with a known dir and a non-empty id.
pub(super) fn parse_key(prefix: &str, key: &str) -> Option<(Kind, String)> {
    let rest = key.strip_prefix(prefix)?.strip_prefix('/')?;
    let (dir, id) = rest.split_once('/')?;
    let kind = Kind::from_segment(dir)?;
    // A secret's id is `manager/id` (`/apisix/secrets/vault/1`).
    let parts = if kind == Kind::Secret { 2 } else { 1 };
    if id.split('/').count() != parts || id.split('/').any(str::is_empty) {
        return None;
    }
    Some((kind, id.to_string()))
}

/// Check a stored value as APISIX's readers do: a route naming a plugin
/// this instance implements but does not enable is still accepted (the
/// plugin is not used here; another instance sharing the prefix may enable
/// it); one naming a plugin this build does not implement fails closed.
pub(super) fn check_value(
    kind: Kind,
    raw: &[u8],
    plugins: &EnabledPlugins,
) -> Result<Value, String> {
    let v: Value = serde_json::from_slice(raw).map_err(|e| format!("invalid JSON: {e}"))?;
    if !v.is_object() {
        return Err("not a JSON object".into());
    }
    model::validate(kind, &v, plugins, NotEnabled::Skip)?;
    Ok(v)
}

/// One change to one of our keys, decoded from a range or watch answer.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Change {
    /// The key holds a (possibly invalid) value.
    Put {
        kind: Kind,
        id: String,
        /// The full key, for logs.
        key: String,
        /// The checked value, or why it was refused.
        value: Result<Arc<Value>, String>,
        create_rev: u64,
        mod_rev: u64,
    },
    /// The key was deleted at `mod_rev`.
    Delete {
        kind: Kind,
        id: String,
        mod_rev: u64,
    },
}

/// Decode one `kv` of the gateway; `None` for keys that are not our objects.
pub(super) fn change_of(
    prefix: &str,
    plugins: &EnabledPlugins,
    kv: &Value,
    delete: bool,
) -> Option<Change> {
    let key = String::from_utf8(unb64(kv.get("key")?.as_str()?)?).ok()?;
    let (kind, id) = parse_key(prefix, &key)?;
    let mod_rev = num(kv.get("mod_revision"));
    if delete {
        return Some(Change::Delete { kind, id, mod_rev });
    }
    // The gateway leaves out empty values.
    let value = match kv.get("value").and_then(Value::as_str) {
        None => check_value(kind, b"", plugins),
        Some(text) => match unb64(text) {
            Some(raw) => check_value(kind, &raw, plugins).or_else(|why| {
                // A stream route that fails its checks is kept marked, so
                // that, with no valid version to keep, its clients are
                // refused instead of reaching a wider route.
                serde_json::from_slice::<Value>(&raw)
                    .ok()
                    .and_then(|v| unservable(kind, &v, &why))
                    .ok_or(why)
            }),
            None => Err("value is not base64".into()),
        },
    };
    Some(Change::Put {
        kind,
        id,
        key,
        value: value.map(Arc::new),
        create_rev: num(kv.get("create_revision")),
        mod_rev,
    })
}

/// What the etcd store keeps in step with its objects.
///
/// Why `pending`: the watcher task and Admin API writes both update the
/// cache, each in one step under the index's lock (never held across an
/// await). A write is applied as soon as etcd acknowledges it
/// (read-your-writes), so its watch event may arrive later, after older
/// events for the same key: remembering the write's revision until the watch
/// passes it keeps those older events (and a concurrent full re-read) from
/// undoing it.
#[derive(Debug, Default)]
pub(super) struct Tracking {
    /// Highest etcd revision whose watch events have been applied.
    watched: u64,
    /// Our own writes applied before their watch event arrived: the
    /// revision of the write and the entry it left (None for a delete).
    pending: BTreeMap<Key, (u64, Option<Entry>)>,
}

/// The in-memory copy of etcd's objects, with its tracking.
pub(super) type Cache = Table<Tracking>;

/// Log a stored value that failed its checks.
pub(super) fn warn_invalid(key: &str, error: &str) {
    tracing::warn!(
        key,
        error,
        "ignoring invalid value in etcd; keeping the previous version"
    );
}

/// Whether `value`, a stream route marked unservable, leaves the valid
/// version in force (logged); a marked value replaces only a marked one or
/// nothing.
fn keeps_previous(c: &Cache, key: &Key, full: &str, value: &Value) -> bool {
    let Some(why) = unservable_reason(value) else {
        return false;
    };
    if crate::store::fails_closed(why) {
        // Replaces the older version; the snapshot build logs the route
        // once as refusing its clients.
        return false;
    }
    warn_invalid(full, why);
    c.get(key)
        .is_some_and(|old| unservable_reason(&old.value).is_none())
}

/// Apply one watch event (events come in revision order); true when the
/// data changed.
pub(super) fn apply_event(c: &mut Cache, change: Change) -> bool {
    let (key, rev) = match &change {
        Change::Put {
            kind, id, mod_rev, ..
        }
        | Change::Delete {
            kind, id, mod_rev, ..
        } => ((*kind, id.clone()), *mod_rev),
    };
    note_watched(c, rev);
    if let Some((own, _)) = c.extra.pending.get(&key) {
        if rev < *own {
            // Our newer write is already in force.
            return false;
        }
        c.extra.pending.remove(&key);
    }
    match change {
        Change::Delete { .. } => c.remove(&key).is_some(),
        put => match admitted(c, &key, put) {
            Some(entry) => c.insert(entry),
            None => false,
        },
    }
}

/// The entry a `Put` stores, or `None` when the previous version of `key`
/// stays in force (an invalid value, logged, or an unservable one that
/// must not replace a valid version). Watch events and full reads share
/// this rule.
fn admitted(c: &Cache, key: &Key, put: Change) -> Option<Entry> {
    let Change::Put {
        kind,
        id,
        key: full,
        value,
        create_rev,
        mod_rev,
    } = put
    else {
        return None;
    };
    match value {
        Ok(value) if keeps_previous(c, key, &full, &value) => None,
        Ok(value) => Some(Entry {
            kind,
            id,
            value,
            create_rev,
            mod_rev,
        }),
        Err(e) => {
            warn_invalid(&full, &e);
            None
        }
    }
}

/// Record that the watch has seen revision `rev` (for keys we skip too).
pub(super) fn note_watched(c: &mut Cache, rev: u64) {
    c.extra.watched = c.extra.watched.max(rev);
}

/// Apply one of our own acknowledged writes at `rev` (read-your-writes);
/// true when the data changed.
pub(super) fn apply_own(c: &mut Cache, key: Key, rev: u64, entry: Option<Entry>) -> bool {
    if rev <= c.extra.watched {
        // The watch already delivered it (and maybe newer changes).
        return false;
    }
    if let Some((own, _)) = c.extra.pending.get(&key) {
        if *own >= rev {
            return false;
        }
    }
    c.extra.pending.insert(key.clone(), (rev, entry.clone()));
    match entry {
        Some(e) => c.insert(e),
        None => c.remove(&key).is_some(),
    }
}

/// Replace everything by a full read at `header_rev`: invalid values keep
/// the previous version, own writes newer than the read stay. True when
/// the data changed.
pub(super) fn replace_all(c: &mut Cache, items: Vec<Change>, header_rev: u64) -> bool {
    if header_rev < c.extra.watched {
        // etcd was replaced or restored: our write revisions mean nothing there.
        c.extra.pending.clear();
    }
    let mut next = Objects::new();
    for item in items {
        let Change::Put { kind, id, .. } = &item else {
            continue;
        };
        let key = (*kind, id.clone());
        match admitted(c, &key, item) {
            Some(entry) => {
                next.insert(key, entry);
            }
            None => {
                if let Some(old) = c.get(&key) {
                    next.insert(key, old.clone());
                }
            }
        }
    }
    c.extra.pending.retain(|_, (rev, _)| *rev > header_rev);
    for (key, (_, entry)) in &c.extra.pending {
        match entry {
            Some(e) => next.insert(key.clone(), e.clone()),
            None => next.remove(key),
        };
    }
    c.extra.watched = header_rev;
    c.replace(next)
}

impl Shared {
    /// Read everything under the prefix and diff it into the cache;
    /// returns the revision of the read.
    pub(super) async fn reload(&self, host: usize) -> Result<u64, CallError> {
        let dir = self.dir_key();
        let body = json!({
            "key": b64(dir.as_bytes()),
            "range_end": b64(&range_end(dir.as_bytes())),
        });
        let v = self.call(host, "/v3/kv/range", &body).await?;
        let rev = header_rev(&v);
        if rev == 0 {
            return Err(CallError::Etcd("etcd answered without a revision".into()));
        }
        let items: Vec<Change> = v
            .get("kvs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|kv| change_of(&self.prefix, &self.plugins, kv, false))
            .collect();
        self.index.update(|c| {
            if rev < c.extra.watched {
                tracing::warn!(
                    seen = c.extra.watched,
                    now = rev,
                    "etcd revision went backwards (etcd replaced or restored); reloading everything"
                );
            }
            if replace_all(c, items, rev) || rev > c.revision() {
                c.commit(rev);
            }
        });
        Ok(rev)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::client::b64;
    use super::*;

    fn kv(key: &str, value: &str, create: u64, m: u64) -> Value {
        json!({
            "key": b64(key.as_bytes()),
            "value": b64(value.as_bytes()),
            "create_revision": create.to_string(),
            "mod_revision": m.to_string(),
        })
    }

    fn put(id: &str, v: Value, create: u64, m: u64) -> Change {
        Change::Put {
            kind: Kind::Upstream,
            id: id.into(),
            key: format!("/apisix/upstreams/{id}"),
            value: Ok(Arc::new(v)),
            create_rev: create,
            mod_rev: m,
        }
    }

    fn entry(id: &str, v: Value, create: u64, m: u64) -> Entry {
        Entry {
            kind: Kind::Upstream,
            id: id.into(),
            value: Arc::new(v),
            create_rev: create,
            mod_rev: m,
        }
    }

    fn decode(kv: &Value, delete: bool) -> Option<Change> {
        change_of("/apisix", &EnabledPlugins::default(), kv, delete)
    }

    fn up(n: u32) -> Value {
        json!({"nodes": {"127.0.0.1:80": n}})
    }

    #[test]
    fn keys_name_our_objects_only() {
        let p = "/apisix";
        assert_eq!(
            parse_key(p, "/apisix/stream_routes/1"),
            Some((Kind::StreamRoute, "1".into()))
        );
        assert_eq!(
            parse_key(p, "/apisix/upstreams/u-1"),
            Some((Kind::Upstream, "u-1".into()))
        );
        assert_eq!(
            parse_key(p, "/apisix/ssls/x"),
            Some((Kind::Ssl, "x".into()))
        );
        assert_eq!(
            parse_key(p, "/apisix/secrets/vault/1"),
            Some((Kind::Secret, "vault/1".into()))
        );
        for other in [
            "/apisix/secrets/vault",
            "/apisix/secrets/vault/",
            "/apisix/secrets/vault/1/x",
            "/apisix/stream_routes/",
            "/apisix/routes/1",
            "/apisix/gen_id",
            "/apisix/upstreams/a/b",
            "/apisixx/upstreams/1",
            "/other/upstreams/1",
        ] {
            assert_eq!(parse_key(p, other), None, "{other}");
        }
    }

    /// Whether `c` puts a stream route marked unservable.
    fn marked(c: &Option<Change>) -> bool {
        matches!(c, Some(Change::Put { value: Ok(v), .. }) if unservable_reason(v).is_some())
    }

    #[test]
    fn decoding_checks_values() {
        let c = decode(
            &kv(
                "/apisix/upstreams/1",
                r#"{"nodes":{"127.0.0.1:1":1}}"#,
                3,
                5,
            ),
            false,
        );
        assert!(matches!(
            c,
            Some(Change::Put {
                create_rev: 3,
                mod_rev: 5,
                value: Ok(_),
                ..
            })
        ));
        for bad in ["init_dir", "[1]", r#"{"nodes": 5}"#] {
            let c = decode(&kv("/apisix/upstreams/1", bad, 3, 5), false);
            assert!(
                matches!(c, Some(Change::Put { value: Err(_), .. })),
                "{bad}"
            );
        }
        // A plugin this build does not implement marks the route
        // unservable (fail closed); one it implements but does not enable
        // here is accepted unchecked (another instance may enable it); an
        // enabled one is still checked.
        let route = r#"{"server_port": 9100, "upstream_id": "1", "plugins": {"x-custom": {}}}"#;
        let c = decode(&kv("/apisix/stream_routes/r", route, 3, 5), false);
        assert!(marked(&c), "{c:?}");
        let other = r#"{"upstream_id": "1", "plugins": {"prometheus": {"prefer_name": 1}}}"#;
        let c = decode(&kv("/apisix/stream_routes/r", other, 3, 5), false);
        assert!(matches!(c, Some(Change::Put { value: Ok(_), .. })), "{c:?}");
        let enabled = EnabledPlugins::new(["prometheus"]);
        let c = change_of(
            "/apisix",
            &enabled,
            &kv("/apisix/stream_routes/r", other, 3, 5),
            false,
        );
        assert!(marked(&c), "{c:?}");
        // A stream route that fails its checks is kept, marked unservable;
        // one that is not a JSON object is refused.
        let bad = r#"{"upstream_id": "1", "plugins": {"limit-conn": {"conn": "x"}}}"#;
        let c = decode(&kv("/apisix/stream_routes/r", bad, 3, 5), false);
        assert!(marked(&c), "{c:?}");
        let c = decode(&kv("/apisix/stream_routes/r", "[1]", 3, 5), false);
        assert!(
            matches!(c, Some(Change::Put { value: Err(_), .. })),
            "{c:?}"
        );
        // Placeholders and other keys are skipped; deletions carry their revision.
        assert_eq!(
            decode(&kv("/apisix/upstreams/", "init_dir", 1, 1), false),
            None
        );
        let del = json!({"key": b64(b"/apisix/upstreams/1"), "mod_revision": "9"});
        assert_eq!(
            decode(&del, true),
            Some(Change::Delete {
                kind: Kind::Upstream,
                id: "1".into(),
                mod_rev: 9
            })
        );
    }

    #[test]
    fn an_unservable_route_is_kept_marked_only_without_a_valid_version() {
        let route = |v: Value, rev: u64| Change::Put {
            kind: Kind::StreamRoute,
            id: "r".into(),
            key: "/apisix/stream_routes/r".into(),
            value: Ok(Arc::new(v)),
            create_rev: 2,
            mod_rev: rev,
        };
        let bad = unservable(
            Kind::StreamRoute,
            &json!({"remote_addr": "127.0.0.1"}),
            "bad",
        )
        .expect("an object");
        let key = (Kind::StreamRoute, "r".to_string());
        let mut c = Cache::default();
        assert!(apply_event(&mut c, route(bad.clone(), 2)), "nothing before");
        assert_eq!(unservable_reason(&c.objects()[&key].value), Some("bad"));
        assert!(apply_event(&mut c, route(json!({"upstream_id": "1"}), 3)));
        assert!(!apply_event(&mut c, route(bad.clone(), 4)), "valid kept");
        assert_eq!(c.objects()[&key].mod_rev, 3);
        // A full read keeps the valid version too, and marks a new key.
        let mut other = route(bad.clone(), 5);
        if let Change::Put { id, .. } = &mut other {
            *id = "s".into();
        }
        assert!(replace_all(&mut c, vec![route(bad, 5), other], 5));
        assert_eq!(c.objects()[&key].mod_rev, 3);
        assert!(unservable_reason(&c.objects()[&(Kind::StreamRoute, "s".into())].value).is_some());
    }

    #[test]
    fn events_update_and_invalid_values_keep_the_previous_version() {
        let mut c = Cache::default();
        assert!(apply_event(&mut c, put("1", up(1), 2, 2)));
        assert!(
            !apply_event(&mut c, put("1", up(1), 2, 2)),
            "same event twice"
        );
        let invalid = Change::Put {
            kind: Kind::Upstream,
            id: "1".into(),
            key: "/apisix/upstreams/1".into(),
            value: Err("bad".into()),
            create_rev: 2,
            mod_rev: 3,
        };
        assert!(!apply_event(&mut c, invalid));
        assert_eq!(
            c.objects()[&(Kind::Upstream, "1".into())].value,
            Arc::new(up(1))
        );
        assert_eq!(c.extra.watched, 3);
        assert!(apply_event(
            &mut c,
            Change::Delete {
                kind: Kind::Upstream,
                id: "1".into(),
                mod_rev: 4
            }
        ));
        assert!(!apply_event(
            &mut c,
            Change::Delete {
                kind: Kind::Upstream,
                id: "1".into(),
                mod_rev: 5
            }
        ));
        assert!(c.objects().is_empty());
    }

    #[test]
    fn own_writes_are_visible_at_once_and_never_rolled_back() {
        let mut c = Cache::default();
        let k = (Kind::Upstream, "1".to_string());
        // Our write at 5 lands before the watch has seen it.
        assert!(apply_own(
            &mut c,
            k.clone(),
            5,
            Some(entry("1", up(5), 5, 5))
        ));
        // Older watch events for the key do not undo it.
        assert!(!apply_event(&mut c, put("1", up(4), 4, 4)));
        assert_eq!(c.objects()[&k].mod_rev, 5);
        // Its own event is a no-op; a later one applies.
        assert!(!apply_event(&mut c, put("1", up(5), 5, 5)));
        assert!(c.extra.pending.is_empty());
        assert!(apply_event(&mut c, put("1", up(6), 5, 6)));
        // A write the watch already passed is ignored (the delete at 7 stays).
        assert!(apply_event(
            &mut c,
            Change::Delete {
                kind: Kind::Upstream,
                id: "1".into(),
                mod_rev: 7
            }
        ));
        assert!(!apply_own(
            &mut c,
            k.clone(),
            6,
            Some(entry("1", up(6), 5, 6))
        ));
        assert!(!c.objects().contains_key(&k));
        // An own delete is not undone by an older put event.
        assert!(apply_own(
            &mut c,
            k.clone(),
            10,
            Some(entry("1", up(10), 10, 10))
        ));
        assert!(apply_own(&mut c, k.clone(), 11, None));
        assert!(!apply_event(&mut c, put("1", up(10), 10, 10)));
        assert!(!c.objects().contains_key(&k));
    }

    #[test]
    fn full_reads_are_diffed_into_the_cache() {
        let mut c = Cache::default();
        assert!(replace_all(
            &mut c,
            vec![put("1", up(1), 2, 2), put("2", up(2), 3, 3)],
            3
        ));
        assert!(!replace_all(
            &mut c,
            vec![put("1", up(1), 2, 2), put("2", up(2), 3, 3)],
            4
        ));
        // "2" deleted, "1" replaced by an invalid value: keeps the old one.
        let invalid = Change::Put {
            kind: Kind::Upstream,
            id: "1".into(),
            key: "/apisix/upstreams/1".into(),
            value: Err("bad".into()),
            create_rev: 2,
            mod_rev: 6,
        };
        assert!(replace_all(&mut c, vec![invalid], 6));
        assert_eq!(c.objects().len(), 1);
        assert_eq!(c.objects()[&(Kind::Upstream, "1".into())].mod_rev, 2);
        // An own write newer than the read survives it.
        assert!(apply_own(
            &mut c,
            (Kind::Upstream, "9".into()),
            8,
            Some(entry("9", up(9), 8, 8))
        ));
        assert!(!replace_all(&mut c, vec![put("1", up(1), 2, 2)], 7));
        assert!(c.objects().contains_key(&(Kind::Upstream, "9".into())));
        // etcd replaced by one at a lower revision: its content wins.
        assert!(replace_all(&mut c, vec![put("3", up(3), 2, 2)], 2));
        assert_eq!(
            c.objects().keys().map(|k| k.1.as_str()).collect::<Vec<_>>(),
            ["3"]
        );
        assert_eq!(c.extra.watched, 2);
    }
}
