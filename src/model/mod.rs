//! The object model of the Admin API resources (`stream_routes`, `upstreams`, `ssls`,
//! `services`, `plugin_metadata`):
//! APISIX's validation with its exact error texts, ids, PATCH merging, secret stripping, and
//! typed views for the data plane.
//!
//! Bodies stay `serde_json::Value` on the control path, because APISIX stores and echoes the
//! client's JSON untouched (defaults are never written back); the data plane builds the typed
//! views in [`types`] from validated values.

mod certs;
pub mod crypt;
mod defs;
pub mod duration;
mod patch;
pub mod plugins;
pub(crate) mod schema;
pub mod types;
mod validate;
pub(crate) use validate::PROTOCOL_AND_BANDWIDTH;
pub mod xrpc;

#[cfg(test)]
mod accepted;
#[cfg(test)]
mod tests;

use serde_json::Value;

pub use patch::{merge_patch, patch_sub_path};
pub use plugins::{EnabledPlugins, NotEnabled};
pub use types::{LbType, Node, Ssl, SslType, StreamRoute, Timeout, Upstream, UpstreamTls};

/// The stored Admin API resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `/apisix/admin/stream_routes`.
    StreamRoute,
    /// `/apisix/admin/upstreams`.
    Upstream,
    /// `/apisix/admin/ssls`.
    Ssl,
    /// `/apisix/admin/services`.
    Service,
    /// `/apisix/admin/plugin_metadata` (the id is the plugin's name).
    PluginMetadata,
    /// `/apisix/admin/secrets/{manager}/{id}` (id `manager/id`).
    Secret,
}

impl Kind {
    /// Every kind, in URL order.
    pub const ALL: [Kind; 6] = [
        Kind::StreamRoute,
        Kind::Upstream,
        Kind::Ssl,
        Kind::Service,
        Kind::PluginMetadata,
        Kind::Secret,
    ];

    /// The kind named by a URL/etcd segment (`stream_routes`, `upstreams`, ...).
    pub fn from_segment(s: &str) -> Option<Kind> {
        match s {
            "stream_routes" => Some(Kind::StreamRoute),
            "upstreams" => Some(Kind::Upstream),
            "ssls" => Some(Kind::Ssl),
            "services" => Some(Kind::Service),
            "plugin_metadata" => Some(Kind::PluginMetadata),
            "secrets" => Some(Kind::Secret),
            _ => None,
        }
    }

    /// The URL/etcd segment of this kind.
    pub fn segment(self) -> &'static str {
        match self {
            Kind::StreamRoute => "stream_routes",
            Kind::Upstream => "upstreams",
            Kind::Ssl => "ssls",
            Kind::Service => "services",
            Kind::PluginMetadata => "plugin_metadata",
            Kind::Secret => "secrets",
        }
    }

    /// The noun used in messages (`missing stream route id`).
    pub fn noun(self) -> &'static str {
        match self {
            Kind::StreamRoute => "stream route",
            Kind::Upstream => "upstream",
            Kind::Ssl => "ssl",
            Kind::Service => "service",
            Kind::PluginMetadata => "plugin_metadata",
            Kind::Secret => "secret",
        }
    }
}

/// The key a stream route merged with its service carries (set by the
/// snapshot build, never stored): a route with `service_id` without it
/// names a service that does not exist.
pub const SERVICE_MERGED: &str = "__service_merged";

/// Id rule: string 1–64 chars of `[a-zA-Z0-9-_.]` or integer >= 1.
pub fn is_valid_id(v: &Value) -> bool {
    defs::id_schema().check(v).is_ok()
}

/// The id as the stored string (`"1"` for `1` and `"1"`); `None` if not a valid id.
pub fn id_string(v: &Value) -> Option<String> {
    if !is_valid_id(v) {
        return None;
    }
    match v {
        Value::String(s) => Some(s.clone()),
        n => schema::as_int(n).map(|i| i.to_string()),
    }
}

/// Refuses client-set `create_time`/`update_time` at top level and in `upstream`/`plugins`,
/// with APISIX's text (`the property is forbidden:  create_time`, two spaces).
pub fn check_forbidden_times(v: &Value) -> Result<(), String> {
    const FIELDS: [&str; 2] = ["create_time", "update_time"];
    let present = |obj: &Value, f: &str| {
        obj.get(f)
            .is_some_and(|x| !x.is_null() && *x != Value::Bool(false))
    };
    for f in FIELDS {
        if present(v, f) {
            return Err(format!("the property is forbidden:  {f}"));
        }
    }
    for parent in ["upstream", "plugins"] {
        if let Some(obj) = v.get(parent).filter(|o| o.is_object()) {
            for f in FIELDS {
                if present(obj, f) {
                    return Err(format!("the property is forbidden:  {parent}.{f}"));
                }
            }
        }
    }
    Ok(())
}

/// Everything APISIX checks without other stored objects, in APISIX's order, returning the
/// exact `error_msg`. A plugin that `enabled` does not list is refused or skipped as
/// `not_enabled` says. Private keys must be given in clear (PEM) or as secret references.
pub fn validate(
    kind: Kind,
    v: &Value,
    enabled: &EnabledPlugins,
    not_enabled: NotEnabled,
) -> Result<(), String> {
    match kind {
        Kind::StreamRoute => validate::stream_route(v, enabled, not_enabled),
        Kind::Upstream => validate::upstream(v),
        Kind::Ssl => validate::ssl(v),
        Kind::Service => validate::service(v, enabled, not_enabled),
        Kind::PluginMetadata => validate::plugin_metadata(v),
        Kind::Secret => crate::secrets::validate(v),
    }
}

/// The JSON schema an object of `kind` is checked against first (the
/// answer of `POST /apisix/admin/schema/validate/<kind>` and of the
/// plugin introspection come from the same definitions the checks use).
pub fn check_schema(kind: Kind, v: &Value) -> Result<(), String> {
    match kind {
        Kind::StreamRoute => defs::stream_route().check(v),
        Kind::Upstream => defs::upstream().check(v),
        Kind::Ssl => defs::ssl().check(v),
        Kind::Service => defs::service().check(v),
        Kind::PluginMetadata => defs::plugin_metadata().check(v),
        Kind::Secret => crate::secrets::vault::schema().check(v),
    }
}

/// A stream plugin's conf schema as JSON (`GET /apisix/admin/plugins/<name>`);
/// `None` for a plugin this build does not implement.
pub fn plugin_schema_json(name: &str) -> Option<Value> {
    defs::plugin(name).map(schema::Schema::to_json)
}

/// A stream plugin's metadata schema as JSON, if it has one.
pub fn plugin_metadata_schema_json(name: &str) -> Option<Value> {
    defs::metadata(name).map(schema::Schema::to_json)
}

/// Stored objects `v` refers to and that must exist: a stream route's or service's `upstream_id`, an
/// upstream's `tls.client_cert_id` (which must also be an ssl of `type: client`).
pub fn references(kind: Kind, v: &Value) -> Vec<(Kind, String)> {
    let mut out = Vec::new();
    match kind {
        Kind::StreamRoute | Kind::Service => {
            if let Some(id) = v.get("upstream_id").and_then(id_string) {
                out.push((Kind::Upstream, id));
            }
        }
        Kind::Upstream => {
            if let Some(id) = v
                .get("tls")
                .and_then(|t| t.get("client_cert_id"))
                .and_then(id_string)
            {
                out.push((Kind::Ssl, id));
            }
        }
        Kind::Ssl | Kind::PluginMetadata | Kind::Secret => {}
    }
    out
}

/// Removes what must never leave the server: ssl `key`/`keys`, upstream `tls.client_key`, a
/// route's inline `upstream.tls.client_key`.
pub fn strip_secrets(kind: Kind, v: &mut Value) {
    fn strip_tls_key(up: Option<&mut Value>) {
        if let Some(Value::Object(tls)) = up.and_then(|u| u.get_mut("tls")) {
            tls.remove("client_key");
        }
    }
    match kind {
        Kind::Ssl => {
            if let Value::Object(map) = v {
                map.remove("key");
                map.remove("keys");
            }
        }
        Kind::Upstream => strip_tls_key(Some(v)),
        Kind::StreamRoute | Kind::Service => strip_tls_key(v.get_mut("upstream")),
        Kind::PluginMetadata | Kind::Secret => {}
    }
}

/// SNIs (DNS SANs, else the subject CN) of the first certificate in a PEM string, lower-cased.
pub fn snis_from_cert(pem: &str) -> Result<Vec<String>, String> {
    certs::snis_from_cert(pem)
}

/// Whether `s` is an IP address or a CIDR with a valid mask (≤32 for v4, ≤128 for v6).
pub(crate) fn is_ip_or_cidr(s: &str) -> bool {
    s.parse::<std::net::IpAddr>().is_ok() || s.parse::<ipnet::IpNet>().is_ok()
}
