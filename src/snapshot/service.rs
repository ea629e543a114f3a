//! Stream routes under a service, merged before they are compiled, and the
//! other stored objects that shape a build without being compiled
//! themselves (plugin metadata, the enabled plugins).
//!
//! A stream route with `service_id` runs as APISIX's
//! `merge_service_stream_route` makes it: the route's own `upstream` or
//! `upstream_id` wins, else the service's `upstream`, else its
//! `upstream_id`; the service's plugins are added under the route's (a
//! plugin on the route replaces the service's plugin of that name). Unlike
//! APISIX, whose stream router skips the service entirely when the route
//! has its own `upstream_id`, the service's plugins always apply: a route
//! never runs without an access plugin its service carries.
//!
//! Merging happens on the store's values, before the routes are compiled:
//! the merged value stands in for the route in the build, with the later of
//! the two revisions as its own. A merged value is kept while neither the
//! route nor its service changed (the same `Arc`), so the build reuses the
//! compiled route; when the service changes, every route that uses it gets
//! a new merged value and is compiled again. A route whose service does not
//! exist, or was stored marked unservable (it names a plugin this build
//! does not run), refuses its connections, marked unservable with the reason.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::Carry;
use crate::model::{id_string, Kind, SERVICE_MERGED};
use crate::store::{unservable_reason, Dump, Entry, UNSERVABLE};

/// What one build merged, kept in its snapshot so the next build reuses
/// the merged values whose route and service did not change.
#[derive(Debug, Default)]
pub struct Services {
    /// The plugin generation ([`crate::plugins::Shared::generation`]) the
    /// snapshot was compiled with.
    pub(super) generation: u64,
    /// Merged routes by route id.
    merged: HashMap<String, Merged>,
}

impl Services {
    /// Whether no route was merged with a service.
    pub(super) fn is_empty(&self) -> bool {
        self.merged.is_empty()
    }
}

/// One merged route and what it was made from.
#[derive(Debug)]
struct Merged {
    route: Arc<Value>,
    route_rev: u64,
    service: Option<(Arc<Value>, u64)>,
    value: Arc<Value>,
    mod_rev: u64,
}

impl Merged {
    fn made_from(&self, route: &Entry, service: Option<&Entry>) -> bool {
        let same_service = match (&self.service, service) {
            (None, None) => true,
            (Some((v, rev)), Some(s)) => *rev == s.mod_rev && Arc::ptr_eq(v, &s.value),
            _ => false,
        };
        same_service && self.route_rev == route.mod_rev && Arc::ptr_eq(&self.route, &route.value)
    }
}

/// The store's routes with every route under a service replaced by its
/// merged value (borrowed as is when no route names a service), and what
/// the next build may reuse.
pub(super) fn resolve<'a>(dump: &'a Dump, prev: &Services) -> (Cow<'a, Dump>, Services) {
    let mut next = Services::default();
    // Entries are in (kind, id) order: the services are found by a binary
    // search. Without any service (now or in the previous build) nothing is
    // merged and no route is read, so a write costs what it did; a route
    // naming a service then fails to parse (no merge mark) and is refused.
    let start = dump.entries.partition_point(|e| e.kind < Kind::Service);
    let end = dump.entries.partition_point(|e| e.kind <= Kind::Service);
    let stored = &dump.entries[start..end];
    if stored.is_empty() && prev.merged.is_empty() {
        return (Cow::Borrowed(dump), next);
    }
    let uses_service =
        |e: &Entry| e.kind == Kind::StreamRoute && e.value.get("service_id").is_some();
    let services: HashMap<&str, &Entry> = stored.iter().map(|e| (e.id.as_str(), e)).collect();
    let mut out = dump.clone();
    for e in out.entries.iter_mut().filter(|e| uses_service(e)) {
        if unservable_reason(&e.value).is_some() {
            continue;
        }
        let Some(sid) = e.value.get("service_id").and_then(id_string) else {
            continue;
        };
        let service = services.get(sid.as_str()).copied();
        let merged = match prev.merged.get(&e.id) {
            Some(m) if m.made_from(e, service) => Merged {
                route: Arc::clone(&m.route),
                route_rev: m.route_rev,
                service: m.service.clone(),
                value: Arc::clone(&m.value),
                mod_rev: m.mod_rev,
            },
            _ => Merged {
                route: Arc::clone(&e.value),
                route_rev: e.mod_rev,
                service: service.map(|s| (Arc::clone(&s.value), s.mod_rev)),
                value: Arc::new(match service {
                    Some(s) => match unservable_reason(&s.value) {
                        None => merge(&s.value, &e.value),
                        Some(why) => {
                            refused(&e.value, format!("service [{sid}] cannot be served: {why}"))
                        }
                    },
                    None => refused(
                        &e.value,
                        format!("failed to fetch service configuration by id: {sid}"),
                    ),
                }),
                mod_rev: service.map_or(e.mod_rev, |s| s.mod_rev.max(e.mod_rev)),
            },
        };
        e.value = Arc::clone(&merged.value);
        e.mod_rev = merged.mod_rev;
        next.merged.insert(e.id.clone(), merged);
    }
    (Cow::Owned(out), next)
}

/// A route under a service, as APISIX's `merge_service_stream_route`
/// makes it (see the module comment).
pub fn merge(service: &Value, route: &Value) -> Value {
    let mut merged = route.clone();
    let Some(obj) = merged.as_object_mut() else {
        return merged;
    };
    obj.insert(SERVICE_MERGED.into(), Value::Bool(true));
    if let Some(plugins) = service.get("plugins").and_then(Value::as_object) {
        let mine = obj
            .entry("plugins")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(mine) = mine.as_object_mut() {
            for (name, conf) in plugins {
                if !mine.contains_key(name) {
                    mine.insert(name.clone(), conf.clone());
                }
            }
        }
    }
    if !obj.contains_key("upstream") && !obj.contains_key("upstream_id") {
        if let Some(up) = service.get("upstream") {
            obj.insert("upstream".into(), up.clone());
        } else if let Some(id) = service.get("upstream_id") {
            obj.insert("upstream_id".into(), id.clone());
        }
    }
    merged
}

/// A route whose service is not stored, or cannot be served: kept, so its
/// filters still catch its clients, and refused.
fn refused(route: &Value, why: String) -> Value {
    let mut v = route.clone();
    if let Some(obj) = v.as_object_mut() {
        obj.insert(UNSERVABLE.into(), Value::String(why));
    }
    v
}

/// Put the stored plugin metadata in force for the plugins (syslog's
/// `log_format`), before the routes are compiled.
pub(super) fn apply_metadata(dump: &Dump, carry: &Carry) {
    // Entries are in (kind, id) order.
    let at = dump
        .entries
        .partition_point(|e| (e.kind, e.id.as_str()) < (Kind::PluginMetadata, "syslog"));
    let syslog = dump
        .entries
        .get(at)
        .filter(|e| e.kind == Kind::PluginMetadata && e.id == "syslog")
        .map(|e| Arc::clone(&e.value));
    carry.plugins.metadata.set_syslog(syslog.as_deref());
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry(kind: Kind, id: &str, value: Value, rev: u64) -> Entry {
        Entry {
            kind,
            id: id.into(),
            value: Arc::new(value),
            create_rev: rev,
            mod_rev: rev,
        }
    }

    #[test]
    fn the_route_wins_and_the_service_fills_in() {
        let service = json!({
            "upstream": {"nodes": {"127.0.0.1:1": 1}},
            "upstream_id": "u",
            "plugins": {"ip-restriction": {"whitelist": ["10.0.0.0/8"]}, "prometheus": {}},
        });
        let bare = merge(&service, &json!({"service_id": "s"}));
        assert_eq!(bare["upstream"], service["upstream"]);
        assert!(bare.get("upstream_id").is_none(), "inline wins over id");
        assert_eq!(bare["plugins"], service["plugins"]);
        let own = merge(
            &service,
            &json!({"service_id": "s", "upstream_id": "mine",
                    "plugins": {"ip-restriction": {"whitelist": ["127.0.0.1"]}}}),
        );
        assert_eq!(own["upstream_id"], "mine");
        assert!(own.get("upstream").is_none());
        assert_eq!(
            own["plugins"]["ip-restriction"]["whitelist"][0],
            "127.0.0.1"
        );
        assert!(own["plugins"].get("prometheus").is_some());
        let by_id = merge(&json!({"upstream_id": "u"}), &json!({"service_id": "s"}));
        assert_eq!(by_id["upstream_id"], "u");
    }

    #[test]
    fn merged_values_are_reused_until_route_or_service_changes() {
        let route = entry(Kind::StreamRoute, "r", json!({"service_id": "s"}), 3);
        let plain = entry(Kind::StreamRoute, "p", json!({"upstream_id": "u"}), 4);
        let service = entry(Kind::Service, "s", json!({"upstream_id": "u"}), 5);
        let dump = Dump {
            revision: 5,
            entries: vec![route.clone(), plain.clone(), service.clone()],
        };
        let (first, cache) = resolve(&dump, &Services::default());
        assert_eq!(first.entries[0].value["upstream_id"], "u");
        assert_eq!(first.entries[0].mod_rev, 5);
        assert!(Arc::ptr_eq(&first.entries[1].value, &plain.value));
        let (again, cache) = resolve(&dump, &cache);
        assert!(Arc::ptr_eq(
            &first.entries[0].value,
            &again.entries[0].value
        ));
        let changed = entry(Kind::Service, "s", json!({"upstream_id": "v"}), 9);
        let dump = Dump {
            revision: 9,
            entries: vec![route, plain, changed],
        };
        let (third, _) = resolve(&dump, &cache);
        assert_eq!(third.entries[0].value["upstream_id"], "v");
        assert_eq!(third.entries[0].mod_rev, 9);
        let none = Dump {
            revision: 9,
            entries: vec![entry(Kind::StreamRoute, "r", json!({"service_id": "x"}), 3)],
        };
        let (gone, _) = resolve(&none, &Services::default());
        assert!(
            Arc::ptr_eq(&gone.entries[0].value, &none.entries[0].value),
            "no service anywhere: nothing is read"
        );
        let err = crate::model::StreamRoute::from_value(&gone.entries[0].value).unwrap_err();
        assert_eq!(err, "failed to fetch service configuration by id: x");
        let mut some = none.clone();
        some.entries.push(entry(Kind::Service, "s", json!({}), 4));
        let (gone, _) = resolve(&some, &Services::default());
        assert_eq!(
            unservable_reason(&gone.entries[0].value),
            Some("failed to fetch service configuration by id: x")
        );
    }
}
