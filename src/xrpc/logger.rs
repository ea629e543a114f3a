//! A protocol route's `logger` entries: run at the end of every request
//! (not of the connection), when the entry's `filter` holds over the
//! request's variables (`rpc_time`, the protocol's command line, and the
//! connection's variables).

use serde_json::Value;

use crate::plugins::{self, expr::Expr, syslog::Syslog};

/// One compiled `logger` entry.
#[derive(Debug)]
pub struct Logger {
    filter: Option<Expr>,
    syslog: Syslog,
}

impl Logger {
    /// Compile a validated entry (`name` is `syslog`).
    pub fn compile(v: &Value, shared: &plugins::Shared) -> Result<Logger, String> {
        let name = v.get("name").and_then(Value::as_str).unwrap_or("");
        if name != "syslog" {
            return Err(format!("unknown logger plugin [{name}]"));
        }
        let filter = match v.get("filter") {
            Some(f) if !f.as_array().is_some_and(Vec::is_empty) => Some(Expr::compile(f)?),
            _ => None,
        };
        let conf = v.get("conf").cloned().unwrap_or(Value::Null);
        Ok(Logger {
            filter,
            syslog: shared.syslog_logger(&conf)?,
        })
    }

    /// Send one entry when the filter holds.
    pub fn log(&self, get: &dyn Fn(&str) -> Option<String>) {
        if self.filter.as_ref().is_none_or(|f| f.eval(get)) {
            self.syslog.log_with(get);
        }
    }
}
