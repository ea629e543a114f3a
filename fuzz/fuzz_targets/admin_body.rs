//! Admin API bodies: any JSON is validated as a stream route, upstream and
//! SSL object without a panic, and PATCH merges of it stay total.
#![no_main]

use apisix_stream::model::{self, EnabledPlugins, Kind, NotEnabled};
use libfuzzer_sys::fuzz_target;

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
    let mut base = serde_json::json!({"nodes": {"127.0.0.1:1": 1}, "type": "roundrobin"});
    model::merge_patch(&mut base, value.clone());
    let mut base = serde_json::json!({"nodes": {"127.0.0.1:1": 1}});
    let _ = model::patch_sub_path(&mut base, "nodes", value);
});
