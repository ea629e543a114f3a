//! Checks of a stream route's `protocol` block (xRPC), as APISIX's
//! `xrpc.check_schema`: the protocol must be one config.yaml's
//! `xrpc.protocols` enables (`unknown protocol [name]` otherwise), and its
//! `conf` must pass the protocol's schema. The `logger` entries name a
//! logger plugin this build runs (`syslog`) whose `conf` passes that
//! plugin's schema, and `filter` is a resty.expr expression.

use std::sync::OnceLock;

use serde_json::Value;

use super::defs;
use super::plugins::{check_expr, EnabledPlugins};
use super::schema::Schema;

/// The xRPC protocols this build implements.
pub const IMPLEMENTED: &[&str] = &["redis"];

/// The logger plugins a `protocol.logger` entry may name.
pub const LOGGERS: &[&str] = &["syslog"];

/// APISIX's Redis `conf` schema (apisix/stream/xrpc/protocols/redis/schema.lua).
fn redis_conf() -> &'static Schema {
    static S: OnceLock<Schema> = OnceLock::new();
    S.get_or_init(|| {
        let fault = Schema::object()
            .prop("commands", Schema::array(Schema::string()).min_items(1))
            .prop("key", Schema::string().len(1, usize::MAX))
            .prop("delay", Schema::number())
            .required(&["commands", "delay"]);
        Schema::object()
            .prop("faults", Schema::array(fault).min_items(1))
            .prop("commands", Schema::array(Schema::string()))
    })
}

/// Checks a stream route's `protocol` (its shape was checked by the route
/// schema already).
pub(crate) fn check(p: &Value, enabled: &EnabledPlugins) -> Result<(), String> {
    let Some(name) = p.get("name").and_then(Value::as_str) else {
        return Ok(());
    };
    if !enabled.protocol(name) || !IMPLEMENTED.contains(&name) {
        return Err(format!("unknown protocol [{name}]"));
    }
    if let Some(conf) = p.get("conf") {
        if name == "redis" {
            redis_conf().check(conf)?;
        }
    }
    for logger in p
        .get("logger")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let lname = logger.get("name").and_then(Value::as_str).unwrap_or("");
        if !LOGGERS.contains(&lname) {
            return Err(format!("unknown logger plugin [{lname}]"));
        }
        if let Some(filter) = logger.get("filter") {
            let empty = filter.as_array().is_some_and(Vec::is_empty);
            if !empty {
                check_expr(filter)
                    .map_err(|e| format!("failed to validate the 'filter' expression: {e}"))?;
            }
        }
        let conf = logger.get("conf").cloned().unwrap_or(Value::Null);
        if let Some(schema) = defs::plugin(lname) {
            schema.check(&conf).map_err(|e| {
                format!("failed to check the configuration of logger plugin [{lname}]: {e}")
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn protocols_must_be_enabled_and_confs_valid() {
        let on = EnabledPlugins::new(["syslog"]).with_protocols(["redis"]);
        let off = EnabledPlugins::new(["syslog"]);
        let p = json!({"name": "redis"});
        assert_eq!(check(&p, &off).unwrap_err(), "unknown protocol [redis]");
        check(&p, &on).unwrap();
        let dubbo = EnabledPlugins::new(["syslog"]).with_protocols(["dubbo"]);
        assert_eq!(
            check(&json!({"name": "dubbo"}), &dubbo).unwrap_err(),
            "unknown protocol [dubbo]"
        );
        let bad = json!({"name": "redis", "conf": {"faults": [{"commands": [], "delay": 1}]}});
        assert!(check(&bad, &on).unwrap_err().contains("faults"));
        let bad = json!({"name": "redis", "conf": {"faults": [{"commands": ["get"]}]}});
        assert!(check(&bad, &on).unwrap_err().contains("delay"));
        let good = json!({"name": "redis", "conf": {"faults": [
            {"commands": ["get"], "key": "k", "delay": 0.5}]}});
        check(&good, &on).unwrap();
        let bad = json!({"name": "redis", "logger": [{"name": "kafka-logger", "conf": {}}]});
        assert_eq!(
            check(&bad, &on).unwrap_err(),
            "unknown logger plugin [kafka-logger]"
        );
        let bad = json!({"name": "redis", "logger": [{"name": "syslog", "conf": {}}]});
        assert!(check(&bad, &on).unwrap_err().contains("host"));
        let bad = json!({"name": "redis", "logger": [{"name": "syslog",
            "filter": ["rpc_time", ">", 1], "conf": {"host": "127.0.0.1", "port": 514}}]});
        assert!(check(&bad, &on).unwrap_err().contains("'filter'"));
    }
}
