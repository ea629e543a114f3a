//! Admin API bodies: any JSON is validated as a stream route, upstream and
//! SSL object without a panic, PATCH merges of it stay total, and whatever
//! validation accepts compiles into a snapshot without a panic and without
//! being left out.
#![no_main]

use std::sync::Arc;

use apisix_stream::health::registry::Registry;
use apisix_stream::model::{self, EnabledPlugins, Kind, NotEnabled};
use apisix_stream::snapshot::{Carry, Snapshot};
use apisix_stream::store::{Dump, Entry};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

fn entry(kind: Kind, id: &str, v: Value) -> Entry {
    Entry {
        kind,
        id: id.into(),
        value: Arc::new(v),
        create_rev: 1,
        mod_rev: 1,
    }
}

/// Build a snapshot of `entries` and require none of them left out.
fn compiles(entries: Vec<Entry>) {
    let carry = Carry::new(Registry::new(
        true,
        TaskTracker::new(),
        CancellationToken::new(),
    ));
    let ids: Vec<(Kind, String)> = entries.iter().map(|e| (e.kind, e.id.clone())).collect();
    let snap = Snapshot::build(
        &Dump {
            revision: 1,
            entries,
        },
        None,
        &carry,
    );
    for (kind, id) in ids {
        if kind != Kind::Ssl {
            assert_eq!(snap.rejected(kind, &id), None, "accepted {kind:?} {id} left out");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let plugins = EnabledPlugins::new([
        "ip-restriction",
        "limit-conn",
        "mqtt-proxy",
        "syslog",
        "traffic-split",
        "prometheus",
    ]);
    for kind in Kind::ALL {
        let _ = model::validate(kind, &value, &plugins, NotEnabled::Refuse);
        let _ = model::validate(kind, &value, &plugins, NotEnabled::Skip);
        let _ = model::references(kind, &value);
        let mut stripped = value.clone();
        model::strip_secrets(kind, &mut stripped);
    }
    let plain = json!({"nodes": {"127.0.0.1:1": 1}});
    // As a stream route (naming upstream "u1" or not) next to a plain upstream.
    let refs_ok = model::references(Kind::StreamRoute, &value)
        .iter()
        .all(|(k, id)| *k == Kind::Upstream && id == "u1");
    if refs_ok && model::validate(Kind::StreamRoute, &value, &plugins, NotEnabled::Refuse).is_ok() {
        compiles(vec![
            entry(Kind::StreamRoute, "r1", value.clone()),
            entry(Kind::Upstream, "u1", plain.clone()),
        ]);
    }
    // As an upstream a route names (so its checks are compiled too).
    if model::references(Kind::Upstream, &value).is_empty()
        && model::validate(Kind::Upstream, &value, &plugins, NotEnabled::Refuse).is_ok()
    {
        compiles(vec![
            entry(Kind::StreamRoute, "r1", json!({"upstream_id": "u1"})),
            entry(Kind::Upstream, "u1", value.clone()),
        ]);
    }
    let mut base = serde_json::json!({"nodes": {"127.0.0.1:1": 1}, "type": "roundrobin"});
    model::merge_patch(&mut base, value.clone());
    let mut base = serde_json::json!({"nodes": {"127.0.0.1:1": 1}});
    let _ = model::patch_sub_path(&mut base, "nodes", value);
});
