//! resty.expr expressions as `traffic-split` uses them in `match[].vars`:
//! `[[var, op, value], ...]` (all must hold), optionally led by `AND`,
//! `OR`, `!AND` or `!OR`, with nested expressions as operands, and
//! `[var, "!", op, value]` negating one rule.
//!
//! Operators: `==`, `~=`, `>`, `>=`, `<`, `<=` (numeric when the value is a
//! number), `~~` / `~*` (regex, case-insensitive for `~*`), `in` (value is
//! an array), `has` (never true: stream variables are not lists) and
//! `ipmatch` (IP or CIDR, or a list of them). Operator names are
//! case-insensitive. Compiled once at snapshot build.

use ipnet::IpNet;
use regex::Regex;
use serde_json::Value;

/// A compiled expression.
#[derive(Debug)]
pub enum Expr {
    /// Every operand holds (also the empty expression: always true).
    And(Vec<Expr>),
    /// Some operand holds.
    Or(Vec<Expr>),
    /// Not every operand holds.
    NotAnd(Vec<Expr>),
    /// No operand holds.
    NotOr(Vec<Expr>),
    /// One `[var, op, value]` rule.
    Rule(Rule),
}

/// One comparison.
#[derive(Debug)]
pub struct Rule {
    var: String,
    op: Op,
    negate: bool,
}

#[derive(Debug)]
enum Op {
    Eq(Value),
    Ne(Value),
    Num(Cmp, Option<f64>),
    Regex(Regex),
    In(Vec<Value>),
    Has,
    IpMatch(Vec<IpNet>),
}

#[derive(Debug, Clone, Copy)]
enum Cmp {
    Gt,
    Ge,
    Lt,
    Le,
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

impl Expr {
    /// Compile an expression (checked with APISIX's messages first).
    pub fn compile(v: &Value) -> Result<Expr, String> {
        crate::model::plugins::check_expr(v)?;
        Self::compile_list(v)
    }

    fn compile_list(v: &Value) -> Result<Expr, String> {
        let items = v
            .as_array()
            .ok_or("rule should be wrapped inside brackets")?;
        let (logic, rest) = match items.first() {
            Some(Value::String(op)) => (op.to_ascii_uppercase(), &items[1..]),
            _ => ("AND".to_string(), &items[..]),
        };
        let operands = rest
            .iter()
            .map(|item| match item.as_array().and_then(|a| a.first()) {
                Some(Value::String(s))
                    if matches!(
                        s.to_ascii_uppercase().as_str(),
                        "AND" | "OR" | "!AND" | "!OR"
                    ) =>
                {
                    Self::compile_list(item)
                }
                _ => Rule::compile(item).map(Expr::Rule),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(match logic.as_str() {
            "OR" => Expr::Or(operands),
            "!AND" => Expr::NotAnd(operands),
            "!OR" => Expr::NotOr(operands),
            _ => Expr::And(operands),
        })
    }

    /// Evaluate with `var` giving variable values.
    pub fn eval(&self, var: &dyn Fn(&str) -> Option<String>) -> bool {
        match self {
            Expr::And(x) => x.iter().all(|e| e.eval(var)),
            Expr::Or(x) => x.iter().any(|e| e.eval(var)),
            Expr::NotAnd(x) => !x.iter().all(|e| e.eval(var)),
            Expr::NotOr(x) => !x.iter().any(|e| e.eval(var)),
            Expr::Rule(r) => r.eval(var(&r.var).as_deref()) != r.negate,
        }
    }
}

impl Rule {
    fn compile(v: &Value) -> Result<Rule, String> {
        let a = v
            .as_array()
            .ok_or("rule should be wrapped inside brackets")?;
        let var = a
            .first()
            .and_then(Value::as_str)
            .ok_or("invalid var name")?
            .to_string();
        let (negate, op_at) = match a.get(1).and_then(Value::as_str) {
            Some("!") => (true, 2),
            _ => (false, 1),
        };
        let op_name = a
            .get(op_at)
            .and_then(Value::as_str)
            .ok_or("invalid expression")?
            .to_ascii_lowercase();
        let value = a.get(op_at + 1).cloned().unwrap_or(Value::Null);
        let op = match op_name.as_str() {
            "==" => Op::Eq(value),
            "~=" => Op::Ne(value),
            ">" => Op::Num(Cmp::Gt, number(&value)),
            ">=" => Op::Num(Cmp::Ge, number(&value)),
            "<" => Op::Num(Cmp::Lt, number(&value)),
            "<=" => Op::Num(Cmp::Le, number(&value)),
            "~~" | "~*" => {
                let p = value.as_str().ok_or("invalid regex")?;
                let p = if op_name == "~*" {
                    format!("(?i){p}")
                } else {
                    p.to_string()
                };
                Op::Regex(Regex::new(&p).map_err(|e| format!("invalid regex: {e}"))?)
            }
            "in" => Op::In(value.as_array().cloned().unwrap_or_default()),
            "has" => Op::Has,
            "ipmatch" => {
                let list = match &value {
                    Value::Array(a) => a.clone(),
                    v => vec![v.clone()],
                };
                Op::IpMatch(
                    list.iter()
                        .map(|s| {
                            s.as_str()
                                .and_then(super::ip_restriction::parse_net)
                                .ok_or_else(|| format!("invalid ip address: {s}"))
                        })
                        .collect::<Result<_, _>>()?,
                )
            }
            other => return Err(format!("invalid operator '{other}'")),
        };
        Ok(Rule { var, op, negate })
    }

    fn eval(&self, l: Option<&str>) -> bool {
        match &self.op {
            Op::Eq(r) => equals(l, r),
            Op::Ne(r) => match r {
                Value::Number(n) => match l.and_then(|s| s.trim().parse::<f64>().ok()) {
                    Some(x) => Some(x) != n.as_f64(),
                    None => true,
                },
                _ => !equals(l, r),
            },
            Op::Num(cmp, r) => {
                let (Some(l), Some(r)) = (l.and_then(|s| s.trim().parse::<f64>().ok()), r) else {
                    return false;
                };
                match cmp {
                    Cmp::Gt => l > *r,
                    Cmp::Ge => l >= *r,
                    Cmp::Lt => l < *r,
                    Cmp::Le => l <= *r,
                }
            }
            Op::Regex(re) => l.is_some_and(|s| re.is_match(s)),
            Op::In(list) => list
                .iter()
                .any(|v| v.as_str().is_some_and(|v| Some(v) == l)),
            Op::Has => false,
            Op::IpMatch(nets) => l
                .and_then(|s| s.parse::<std::net::IpAddr>().ok())
                .is_some_and(|ip| nets.iter().any(|n| n.contains(&ip))),
        }
    }
}

/// Lua's `==` of a string variable (or nil) against a JSON value, with
/// resty.expr's number conversion.
fn equals(l: Option<&str>, r: &Value) -> bool {
    match r {
        Value::Null => l.is_none(),
        Value::String(s) => l == Some(s.as_str()),
        Value::Number(n) => l
            .and_then(|s| s.trim().parse::<f64>().ok())
            .is_some_and(|x| Some(x) == n.as_f64()),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vars(name: &str) -> Option<String> {
        match name {
            "route_id" => Some("3".into()),
            "remote_addr" => Some("127.0.0.1".into()),
            "server_port" => Some("9100".into()),
            "mqtt_client_id" => Some("Sensor-7".into()),
            _ => None,
        }
    }

    fn eval(v: serde_json::Value) -> bool {
        Expr::compile(&v).unwrap().eval(&vars)
    }

    #[test]
    fn comparisons() {
        assert!(eval(json!([["route_id", "==", "3"]])));
        assert!(eval(json!([["route_id", "==", 3]])));
        assert!(!eval(json!([["route_id", "==", "4"]])));
        assert!(eval(json!([["route_id", "~=", "4"]])));
        assert!(eval(json!([["missing", "~=", "4"]])));
        assert!(!eval(json!([["missing", "==", "4"]])));
        assert!(eval(json!([
            ["server_port", ">", 9000],
            ["server_port", "<=", "9100"]
        ])));
        assert!(!eval(json!([["server_port", ">=", 9101]])));
        assert!(!eval(json!([["remote_addr", "<", 1]])));
        assert!(eval(json!([["mqtt_client_id", "~~", "^Sensor-[0-9]+$"]])));
        assert!(!eval(json!([["mqtt_client_id", "~~", "^sensor"]])));
        assert!(eval(json!([["mqtt_client_id", "~*", "^sensor"]])));
        assert!(eval(json!([["route_id", "in", ["1", "3"]]])));
        assert!(!eval(json!([["route_id", "in", ["1", "2"]]])));
        assert!(!eval(json!([["route_id", "has", "3"]])));
        assert!(eval(json!([[
            "remote_addr",
            "ipmatch",
            ["10.0.0.0/8", "127.0.0.0/8"]
        ]])));
        assert!(!eval(json!([["remote_addr", "ipmatch", "10.0.0.1"]])));
    }

    #[test]
    fn negation_and_logic() {
        assert!(eval(json!([["route_id", "!", "==", "4"]])));
        assert!(!eval(json!([["route_id", "!", "in", ["3"]]])));
        assert!(eval(json!([
            "OR",
            ["route_id", "==", "9"],
            ["server_port", "==", "9100"]
        ])));
        assert!(!eval(json!([
            "AND",
            ["route_id", "==", "9"],
            ["server_port", "==", "9100"]
        ])));
        assert!(eval(json!([
            "!AND",
            ["route_id", "==", "9"],
            ["server_port", "==", "9100"]
        ])));
        assert!(!eval(json!([
            "!OR",
            ["route_id", "==", "9"],
            ["server_port", "==", "9100"]
        ])));
        assert!(eval(json!([
            "OR",
            ["AND", ["route_id", "==", "3"], ["server_port", "==", "1"]],
            [
                "AND",
                ["route_id", "==", "3"],
                ["server_port", "==", "9100"]
            ]
        ])));
        assert!(eval(json!([])));
    }

    #[test]
    fn bad_expressions_are_refused_with_apisix_messages() {
        let err = |v: serde_json::Value| Expr::compile(&v).unwrap_err();
        assert_eq!(
            err(json!(["route_id", "==", "3"])),
            "rule should be wrapped inside brackets"
        );
        assert_eq!(
            err(json!([["route_id", "<>", "3"]])),
            "invalid operator '<>'"
        );
        assert!(err(json!([["a", "~~", "("]])).starts_with("invalid regex"));
        assert_eq!(err(json!([["a", "=="]])), "rule too short");
    }
}
