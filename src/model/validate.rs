//! Resource checks in APISIX's order: schema first (`invalid configuration: ...`), then the
//! checks of apisix/admin/stream_routes.lua + apisix/stream/router/ip_port.lua, apisix/upstream.lua
//! `check_upstream_conf` and apisix/ssl.lua `check_ssl_conf`.
//!
//! Deliberate differences from APISIX, all stricter:
//! - a certificate's key must match it (`the private key does not match the certificate`);
//! - a route's inline `upstream` also gets the cheap upstream checks (IPv6 brackets, map-key
//!   ports, `pass_host: rewrite`, chash `key`, client cert/key), with the same messages
//!   `/upstreams` gives (APISIX only applies the schema there);
//! - map-form node keys with an unbracketed IPv6 host, a non-numeric port or no port are
//!   refused, and so are node weights above `u32::MAX` and priorities outside `i32`
//!   (APISIX's schema has no upper bound; the data plane could not serve them as written);
//! - the inline upstreams of `traffic-split` get the same node checks.

use serde_json::Value;

use super::certs;
use super::defs;
use super::plugins::{self, EnabledPlugins, NotEnabled};
use super::schema::{as_int, quote};

/// Stream route checks (schema, plugins, addresses, protocol).
pub(crate) fn stream_route(
    v: &Value,
    enabled: &EnabledPlugins,
    not_enabled: NotEnabled,
) -> Result<(), String> {
    defs::stream_route()
        .check(v)
        .map_err(|e| format!("invalid configuration: {e}"))?;
    if let Some(up) = v.get("upstream") {
        upstream_checks(up)?;
    }
    if let Some(p) = v.get("plugins").and_then(Value::as_object) {
        plugins::check_plugins(p, enabled, not_enabled)?;
    }
    for field in ["remote_addr", "server_addr"] {
        if let Some(addr) = v.get(field).and_then(Value::as_str) {
            if !super::is_ip_or_cidr(addr) {
                return Err(format!("invalid {field}: {addr}"));
            }
        }
    }
    if let Some(p) = v.get("protocol") {
        super::xrpc::check(p, enabled)?;
        if v.pointer("/plugins/limit-bandwidth").is_some() {
            return Err(PROTOCOL_AND_BANDWIDTH.into());
        }
    }
    Ok(())
}

/// Why a protocol (xRPC) route cannot carry `limit-bandwidth`: it relays
/// request by request, which the plugin's pacing does not cover.
pub(crate) const PROTOCOL_AND_BANDWIDTH: &str =
    "limit-bandwidth does not apply to protocol (xRPC) routes: remove the plugin or the protocol";

/// Service checks, as apisix/admin/services.lua: schema, inline upstream,
/// plugins (the stream plugins, since the service's plugins run on the
/// stream routes that use it).
pub(crate) fn service(
    v: &Value,
    enabled: &EnabledPlugins,
    not_enabled: NotEnabled,
) -> Result<(), String> {
    defs::service()
        .check(v)
        .map_err(|e| format!("invalid configuration: {e}"))?;
    if let Some(up) = v.get("upstream") {
        upstream_checks(up)?;
    }
    if let Some(p) = v.get("plugins").and_then(Value::as_object) {
        plugins::check_plugins(p, enabled, not_enabled)?;
    }
    Ok(())
}

/// plugin_metadata checks, as apisix/admin/plugin_metadata.lua: the id is
/// the name of a plugin this build implements, the body its metadata schema.
pub(crate) fn plugin_metadata(v: &Value) -> Result<(), String> {
    let Some(name) = v.get("id").and_then(Value::as_str) else {
        return Err("missing plugin name".into());
    };
    if !plugins::implemented(name) {
        return Err("invalid plugin name".into());
    }
    let schema = defs::metadata(name).unwrap_or_else(|| defs::plugin_metadata());
    schema
        .check(v)
        .map_err(|e| format!("invalid configuration: {e}"))
}

/// Upstream checks: IPv6 brackets, schema, then the upstream-specific checks.
pub(crate) fn upstream(v: &Value) -> Result<(), String> {
    check_ipv6_brackets(v)?;
    defs::upstream()
        .check(v)
        .map_err(|e| format!("invalid configuration: {e}"))?;
    upstream_checks(v)
}

/// `IPv6 address must be enclosed with '[' and ']'` for a bare IPv6 host in array nodes.
fn check_ipv6_brackets(v: &Value) -> Result<(), String> {
    let nodes = v.get("nodes").and_then(Value::as_array);
    for node in nodes.into_iter().flatten() {
        if let Some(host) = node.get("host").and_then(Value::as_str) {
            if host.parse::<std::net::Ipv6Addr>().is_ok() {
                return Err(
                    "invalid configuration: IPv6 address must be enclosed with '[' and ']'".into(),
                );
            }
        }
    }
    Ok(())
}

/// The checks after the schema, on a schema-valid upstream.
fn upstream_checks(v: &Value) -> Result<(), String> {
    check_ipv6_brackets(v)?;
    check_nodes(v)?;
    check_speaking_probe(v)?;
    if v.get("pass_host").and_then(Value::as_str) == Some("rewrite")
        && v.get("upstream_host").is_none()
    {
        return Err("`upstream_host` can't be empty when `pass_host` is `rewrite`".to_string());
    }
    if let Some(tls) = v.get("tls") {
        if let (Some(cert), Some(key)) = (tls.get("client_cert"), tls.get("client_key")) {
            if !defs::is_secret_ref(cert) && !defs::is_secret_ref(key) {
                let (cert, key) = (cert.as_str().unwrap_or(""), key.as_str().unwrap_or(""));
                certs::validate_pair(cert, key).map_err(|e| {
                    if e == certs::KEY_MISMATCH {
                        format!("failed to handle cert-key pair: {e}")
                    } else {
                        e
                    }
                })?;
            }
        }
    }
    if v.get("type").and_then(Value::as_str) != Some("chash") {
        return Ok(());
    }
    let hash_on = v.get("hash_on").and_then(Value::as_str).unwrap_or("vars");
    let key = v.get("key").and_then(Value::as_str);
    if hash_on == "consumer" {
        return Ok(());
    }
    let Some(key) = key else {
        return Err("missing key".to_string());
    };
    if hash_on == "vars" {
        let re = regex::Regex::new(defs::HASH_VARS_PATTERN).map_err(|e| e.to_string())?;
        if !re.is_match(key) {
            return Err(format!(
                "invalid configuration: failed to match pattern {} with {}",
                quote(defs::HASH_VARS_PATTERN),
                quote(key)
            ));
        }
    }
    Ok(())
}

/// `checks.active`: `send`/`send_hex` and `receive`/`receive_hex` are one
/// of each at most, and a `udp` check needs both a request and a reply.
fn check_speaking_probe(v: &Value) -> Result<(), String> {
    let Some(active) = v.pointer("/checks/active") else {
        return Ok(());
    };
    for (a, b) in [("send", "send_hex"), ("receive", "receive_hex")] {
        if active.get(a).is_some() && active.get(b).is_some() {
            return Err(format!(
                "invalid configuration: checks.active: only one of {a} and {b} may be set"
            ));
        }
    }
    let has = |a: &str, b: &str| active.get(a).is_some() || active.get(b).is_some();
    if active.get("type").and_then(Value::as_str) == Some("udp")
        && !(has("send", "send_hex") && has("receive", "receive_hex"))
    {
        return Err(
            "invalid configuration: checks.active.type udp needs send (or send_hex) and receive (or receive_hex)"
                .to_string(),
        );
    }
    Ok(())
}

/// Node values the data plane must be able to serve as written: map-form keys with
/// a port (a stream proxy has no scheme to take a default port from, and APISIX's
/// stream balancer fails on such a node), weights up to `u32::MAX`, priorities that
/// fit an `i32`. The schema puts no upper bound on these integers.
pub(crate) fn check_nodes(v: &Value) -> Result<(), String> {
    let weight_ok = |w: &Value| as_int(w).is_some_and(|n| u32::try_from(n).is_ok());
    match v.get("nodes") {
        Some(Value::Object(map)) => {
            for (addr, w) in map {
                check_map_key(addr)?;
                if !weight_ok(w) {
                    return Err(format!(
                        "invalid configuration: weight of node {addr} must be at most {}",
                        u32::MAX
                    ));
                }
            }
        }
        Some(Value::Array(items)) => {
            for n in items {
                let host = n.get("host").and_then(Value::as_str).unwrap_or_default();
                if n.get("weight").is_some_and(|w| !weight_ok(w)) {
                    return Err(format!(
                        "invalid configuration: weight of node {host} must be at most {}",
                        u32::MAX
                    ));
                }
                let priority_ok = |p: &Value| as_int(p).is_some_and(|n| i32::try_from(n).is_ok());
                if n.get("priority").is_some_and(|p| !priority_ok(p)) {
                    return Err(format!(
                        "invalid configuration: priority of node {host} must be between {} and {}",
                        i32::MIN,
                        i32::MAX
                    ));
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// A map-form node key `host:port` / `[v6]:port`: the port is required and must be
/// 1..65535.
fn check_map_key(addr: &str) -> Result<(), String> {
    let (host, port) = super::types::split_host_port(addr);
    if !host.starts_with('[') && host.contains(':') {
        return Err("invalid configuration: IPv6 address must be enclosed with '[' and ']'".into());
    }
    let Some(port) = port else {
        return Err(format!(
            "invalid configuration: node {addr} has no port (stream upstream nodes need one)"
        ));
    };
    match port.parse::<i64>() {
        Ok(n) if (1..=65535).contains(&n) => Ok(()),
        Ok(n) => Err(format!("invalid port {n}")),
        Err(_) => Err(format!("invalid port {port}")),
    }
}

/// SSL checks: schema, main pair, extra pairs, client CA.
pub(crate) fn ssl(v: &Value) -> Result<(), String> {
    defs::ssl()
        .check(v)
        .map_err(|e| format!("invalid configuration: {e}"))?;
    let cert = v.get("cert");
    let key = v.get("key");
    let is_ref = |x: Option<&Value>| x.is_some_and(defs::is_secret_ref);
    if !is_ref(cert) && !is_ref(key) {
        let cert = cert.and_then(Value::as_str).unwrap_or("");
        let key = key.and_then(Value::as_str).unwrap_or("");
        certs::validate_pair(cert, key).map_err(|e| {
            if e == certs::KEY_MISMATCH {
                format!("failed to handle cert-key pair: {e}")
            } else {
                e
            }
        })?;
    }
    if v.get("type").and_then(Value::as_str) == Some("client") {
        return Ok(());
    }
    let empty = Vec::new();
    let cert_list = v.get("certs").and_then(Value::as_array).unwrap_or(&empty);
    let key_list = v.get("keys").and_then(Value::as_array).unwrap_or(&empty);
    if cert_list.len() != key_list.len() {
        return Err("mismatched number of certs and keys".to_string());
    }
    for (i, (c, k)) in cert_list.iter().zip(key_list).enumerate() {
        if defs::is_secret_ref(c) || defs::is_secret_ref(k) {
            continue;
        }
        certs::validate_pair(c.as_str().unwrap_or(""), k.as_str().unwrap_or(""))
            .map_err(|e| format!("failed to handle cert-key pair[{}]: {e}", i + 1))?;
    }
    if let Some(ca) = v
        .get("client")
        .and_then(|c| c.get("ca"))
        .and_then(Value::as_str)
    {
        certs::parse_certs(ca).map_err(|e| format!("failed to validate client_cert: {e}"))?;
    }
    Ok(())
}
