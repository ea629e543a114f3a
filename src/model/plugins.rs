//! Checks of a stream route's `plugins` block, as APISIX's `stream_check_schema`
//! (apisix/plugin.lua): conf type, plugin enabled, plugin schema, plugin-specific checks.
//!
//! Which plugins are enabled is answered here once, by [`EnabledPlugins`]
//! (config.yaml's `stream_plugins`), for the Admin API, the standalone file,
//! the etcd store and the plugins at run time alike; [`NotEnabled`] says what
//! an object naming any other plugin gets.

use std::sync::Arc;

use serde_json::{Map, Value};

use super::defs;
use crate::config::Config;

/// `stream_plugins` when config.yaml does not set it (APISIX's default).
pub const DEFAULT_ENABLED: [&str; 6] = crate::config::DEFAULT_STREAM_PLUGINS;

/// The stream plugins this instance enables; cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnabledPlugins(Arc<[String]>, Arc<[String]>);

impl Default for EnabledPlugins {
    fn default() -> Self {
        EnabledPlugins::new(DEFAULT_ENABLED)
    }
}

impl EnabledPlugins {
    /// Exactly these plugins.
    pub fn new<S: AsRef<str>>(names: impl IntoIterator<Item = S>) -> EnabledPlugins {
        EnabledPlugins(
            names.into_iter().map(|n| n.as_ref().to_string()).collect(),
            Arc::new([]),
        )
    }

    /// The same plugins, with these xRPC protocols enabled.
    pub fn with_protocols<S: AsRef<str>>(self, names: impl IntoIterator<Item = S>) -> Self {
        EnabledPlugins(
            self.0,
            names.into_iter().map(|n| n.as_ref().to_string()).collect(),
        )
    }

    /// The plugins config.yaml's `stream_plugins` enables, and the xRPC
    /// protocols its `xrpc.protocols` lists.
    pub fn of(config: &Config) -> EnabledPlugins {
        EnabledPlugins::new(&config.stream_plugins).with_protocols(&config.xrpc_protocols)
    }

    /// Whether config.yaml's `xrpc.protocols` enables protocol `name`.
    pub fn protocol(&self, name: &str) -> bool {
        self.1.iter().any(|p| p == name)
    }

    /// Whether `name` is enabled.
    pub fn contains(&self, name: &str) -> bool {
        self.0.iter().any(|p| p == name)
    }

    /// The enabled names, in config order.
    pub fn names(&self) -> &[String] {
        &self.0
    }
}

/// The stream plugins this build implements, in APISIX's priority order.
pub const IMPLEMENTED: [&str; 7] = [
    "ip-restriction",
    "limit-conn",
    "limit-bandwidth",
    "mqtt-proxy",
    "traffic-split",
    "prometheus",
    "syslog",
];

/// Whether this build can run the stream plugin `name`.
pub fn implemented(name: &str) -> bool {
    IMPLEMENTED.contains(&name)
}

/// What an object naming a plugin this instance does not enable gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotEnabled {
    /// Refused with APISIX's `unknown plugin [name]`: Admin API writes and
    /// the standalone file, both written for this instance.
    Refuse,
    /// Accepted, the plugin left unchecked and unused, when this build
    /// implements it: objects read from etcd, which instances enabling other
    /// plugins share (APISIX's data-plane check skips them the same way). A
    /// plugin this build does not implement is still refused (unless its
    /// `_meta.disable` is true): its route must not run without it.
    Skip,
}

/// Whether a plugin conf carries `_meta.disable: true`.
pub fn is_disabled(conf: &Value) -> bool {
    conf.get("_meta")
        .and_then(|m| m.get("disable"))
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// Operators a resty.expr rule may use.
const EXPR_OPS: &[&str] = &[
    "==", "~=", ">", "<", ">=", "<=", "~~", "~*", "in", "has", "!", "ipmatch",
];

/// Checks every plugin of a `plugins` object in order, returning APISIX's message for the first
/// failure; a plugin `enabled` does not list is refused or skipped as `not_enabled` says, and
/// one this build does not implement is refused (fail closed: forwarding without a missing
/// auth or ACL plugin would open the route).
pub(crate) fn check_plugins(
    plugins: &Map<String, Value>,
    enabled: &EnabledPlugins,
    not_enabled: NotEnabled,
) -> Result<(), String> {
    for (name, conf) in plugins {
        if !conf.is_object() {
            let json = serde_json::to_string(conf).unwrap_or_default();
            return Err(format!("invalid plugin conf {json} for plugin [{name}]"));
        }
        let disabled = is_disabled(conf);
        let known = implemented(name);
        if !enabled.contains(name) || !known {
            match not_enabled {
                NotEnabled::Skip if known || disabled => continue,
                _ => return Err(format!("unknown plugin [{name}]")),
            }
        }
        if let Err(e) = check_plugin_conf(name, conf) {
            if !disabled {
                return Err(format!(
                    "failed to check the configuration of stream plugin [{name}]: {e}"
                ));
            }
        }
    }
    Ok(())
}

/// Schema plus plugin-specific checks of one plugin conf (of an implemented plugin).
fn check_plugin_conf(name: &str, conf: &Value) -> Result<(), String> {
    if let Some(schema) = defs::plugin(name) {
        schema.check(conf)?;
    }
    match name {
        "ip-restriction" => check_ip_lists(conf),
        "traffic-split" => check_traffic_split(conf),
        _ => Ok(()),
    }
}

/// ip-restriction: every list entry must be an IP or CIDR.
fn check_ip_lists(conf: &Value) -> Result<(), String> {
    for list in ["whitelist", "blacklist"] {
        for entry in conf
            .get(list)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let s = entry.as_str().unwrap_or_default();
            if !super::is_ip_or_cidr(s) {
                return Err(format!("invalid ip address: {s}"));
            }
        }
    }
    Ok(())
}

/// traffic-split: each `match[].vars` must be a valid expression; inline upstreams get
/// the node checks of an upstream.
fn check_traffic_split(conf: &Value) -> Result<(), String> {
    let rules = conf.get("rules").and_then(Value::as_array);
    for rule in rules.into_iter().flatten() {
        let weighted = rule.get("weighted_upstreams").and_then(Value::as_array);
        for up in weighted
            .into_iter()
            .flatten()
            .filter_map(|w| w.get("upstream"))
        {
            super::validate::check_nodes(up)?;
        }
        let matches = rule.get("match").and_then(Value::as_array);
        for m in matches.into_iter().flatten() {
            if let Some(vars) = m.get("vars") {
                check_expr(vars)
                    .map_err(|e| format!("failed to validate the 'vars' expression: {e}"))?;
            }
        }
    }
    Ok(())
}

/// Checks a resty.expr expression: an array of rules `[var, op, value]` (or
/// `[var, "!", op, value]`), optionally led by a logical operator `AND`/`OR`/`!AND`/`!OR`
/// whose operands are nested expressions.
pub(crate) fn check_expr(expr: &Value) -> Result<(), String> {
    let Some(items) = expr.as_array() else {
        return Err("rule should be wrapped inside brackets".to_string());
    };
    let mut rest = items.as_slice();
    if let Some(Value::String(op)) = rest.first() {
        if matches!(op.as_str(), "AND" | "OR" | "!AND" | "!OR") {
            rest = &rest[1..];
        } else {
            return Err("rule should be wrapped inside brackets".to_string());
        }
    }
    for item in rest {
        let Some(rule) = item.as_array() else {
            return Err("rule should be wrapped inside brackets".to_string());
        };
        if let Some(Value::String(op)) = rule.first() {
            if matches!(op.as_str(), "AND" | "OR" | "!AND" | "!OR") {
                check_expr(item)?;
                continue;
            }
        }
        check_rule(rule)?;
    }
    Ok(())
}

/// One `[var, op, value]` rule.
fn check_rule(rule: &[Value]) -> Result<(), String> {
    if rule.len() < 3 {
        return Err("rule too short".to_string());
    }
    if !rule[0].is_string() {
        return Err(format!("invalid var name: {}", rule[0]));
    }
    let mut op_idx = 1;
    let first = rule[1].as_str().unwrap_or_default();
    if first == "!" {
        if rule.len() < 4 {
            return Err("rule too short".to_string());
        }
        op_idx = 2;
    }
    let op = &rule[op_idx];
    let op_str = op.as_str().unwrap_or_default();
    if !op.is_string() || !EXPR_OPS.contains(&op_str) || (op_idx == 2 && op_str == "!") {
        let shown = op
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| op.to_string());
        return Err(format!("invalid operator '{shown}'"));
    }
    if rule.len() > op_idx + 2 {
        return Err("rule too long".to_string());
    }
    let value = &rule[op_idx + 1];
    match op_str {
        "in" if !value.is_array() => {
            Err("invalid argument for operator 'in': expected an array".to_string())
        }
        "~~" | "~*" => match value.as_str() {
            Some(p) if regex::Regex::new(p).is_ok() => Ok(()),
            _ => Err(format!("invalid regex: {value}")),
        },
        "ipmatch" => {
            let list: Vec<&Value> = match value {
                Value::Array(a) => a.iter().collect(),
                v => vec![v],
            };
            for ip in list {
                if !ip.as_str().is_some_and(super::is_ip_or_cidr) {
                    return Err(format!("invalid ip address: {ip}"));
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}
