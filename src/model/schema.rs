//! A small JSON-schema checker whose error texts have the shapes of lua-jsonschema, the
//! validator APISIX uses, so Admin API errors read exactly like APISIX's.
//!
//! Only the keywords APISIX's stream schemas use are supported. Validation stops at the first
//! error, as APISIX's does. Within one object the checks run in this order: `required`,
//! `properties` (in the order the schema lists them), `patternProperties`,
//! `additionalProperties`, `dependencies`; then `enum`, `anyOf`, `oneOf`, `not`, `if/then/else`.

use regex::Regex;
use serde_json::Value;

/// JSON types a schema can require.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ty {
    String,
    Integer,
    Number,
    Boolean,
    Object,
    Array,
}

impl Ty {
    fn name(self) -> &'static str {
        match self {
            Ty::String => "string",
            Ty::Integer => "integer",
            Ty::Number => "number",
            Ty::Boolean => "boolean",
            Ty::Object => "object",
            Ty::Array => "array",
        }
    }
}

/// String formats lua-jsonschema knows and APISIX uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Ipv4,
    Ipv6,
}

/// `if`, `then`, `else` subschemas.
type IfThenElse = (Schema, Option<Schema>, Option<Schema>);

/// One schema node; built with the chained constructors below.
#[derive(Debug, Clone, Default)]
pub(crate) struct Schema {
    ty: Option<Ty>,
    min_len: Option<usize>,
    max_len: Option<usize>,
    pattern: Option<(String, Option<Regex>)>,
    format: Option<Format>,
    minimum: Option<f64>,
    maximum: Option<f64>,
    exclusive_minimum: Option<f64>,
    enum_values: Option<Vec<Value>>,
    properties: Vec<(&'static str, Schema)>,
    pattern_properties: Option<Box<Schema>>,
    no_additional: bool,
    required: Vec<&'static str>,
    items: Option<Box<Schema>>,
    min_items: Option<usize>,
    max_items: Option<usize>,
    unique_items: bool,
    any_of: Vec<Schema>,
    one_of: Vec<Schema>,
    not: Option<Box<Schema>>,
    dependencies: Vec<(&'static str, Schema)>,
    if_then_else: Option<Box<IfThenElse>>,
}

impl Schema {
    /// An empty schema (accepts anything).
    pub(crate) fn any() -> Schema {
        Schema::default()
    }
    /// A schema requiring the given type.
    pub(crate) fn of(ty: Ty) -> Schema {
        Schema {
            ty: Some(ty),
            ..Schema::default()
        }
    }
    pub(crate) fn string() -> Schema {
        Schema::of(Ty::String)
    }
    pub(crate) fn integer() -> Schema {
        Schema::of(Ty::Integer)
    }
    pub(crate) fn number() -> Schema {
        Schema::of(Ty::Number)
    }
    pub(crate) fn boolean() -> Schema {
        Schema::of(Ty::Boolean)
    }
    pub(crate) fn object() -> Schema {
        Schema::of(Ty::Object)
    }
    pub(crate) fn array(items: Schema) -> Schema {
        Schema {
            ty: Some(Ty::Array),
            items: Some(Box::new(items)),
            ..Schema::default()
        }
    }
    pub(crate) fn len(mut self, min: usize, max: usize) -> Schema {
        self.min_len = Some(min);
        self.max_len = Some(max);
        self
    }
    pub(crate) fn max_len(mut self, max: usize) -> Schema {
        self.max_len = Some(max);
        self
    }
    /// Adds a `pattern`; patterns are constants, so one that fails to compile is a bug
    /// caught by the unit tests (it then matches nothing).
    pub(crate) fn pattern(mut self, p: &str) -> Schema {
        self.pattern = Some((p.to_string(), Regex::new(p).ok()));
        self
    }
    pub(crate) fn format(mut self, f: Format) -> Schema {
        self.format = Some(f);
        self
    }
    pub(crate) fn min(mut self, v: f64) -> Schema {
        self.minimum = Some(v);
        self
    }
    pub(crate) fn max(mut self, v: f64) -> Schema {
        self.maximum = Some(v);
        self
    }
    pub(crate) fn range(self, lo: f64, hi: f64) -> Schema {
        self.min(lo).max(hi)
    }
    pub(crate) fn gt(mut self, v: f64) -> Schema {
        self.exclusive_minimum = Some(v);
        self
    }
    pub(crate) fn enumeration(mut self, values: Vec<Value>) -> Schema {
        self.enum_values = Some(values);
        self
    }
    pub(crate) fn str_enum(self, values: &[&str]) -> Schema {
        self.enumeration(values.iter().map(|s| Value::from(*s)).collect())
    }
    pub(crate) fn prop(mut self, name: &'static str, s: Schema) -> Schema {
        self.properties.push((name, s));
        self
    }
    pub(crate) fn pattern_props(mut self, s: Schema) -> Schema {
        self.pattern_properties = Some(Box::new(s));
        self
    }
    pub(crate) fn closed(mut self) -> Schema {
        self.no_additional = true;
        self
    }
    pub(crate) fn required(mut self, names: &[&'static str]) -> Schema {
        self.required.extend_from_slice(names);
        self
    }
    pub(crate) fn min_items(mut self, n: usize) -> Schema {
        self.min_items = Some(n);
        self
    }
    pub(crate) fn max_items(mut self, n: usize) -> Schema {
        self.max_items = Some(n);
        self
    }
    pub(crate) fn unique(mut self) -> Schema {
        self.unique_items = true;
        self
    }
    pub(crate) fn any_of(mut self, list: Vec<Schema>) -> Schema {
        self.any_of = list;
        self
    }
    pub(crate) fn one_of(mut self, list: Vec<Schema>) -> Schema {
        self.one_of = list;
        self
    }
    pub(crate) fn not(mut self, s: Schema) -> Schema {
        self.not = Some(Box::new(s));
        self
    }
    pub(crate) fn dependency(mut self, name: &'static str, s: Schema) -> Schema {
        self.dependencies.push((name, s));
        self
    }
    pub(crate) fn if_then_else(
        mut self,
        cond: Schema,
        then: Option<Schema>,
        els: Option<Schema>,
    ) -> Schema {
        self.if_then_else = Some(Box::new((cond, then, els)));
        self
    }

    /// The schema as JSON Schema (as APISIX's plugins write theirs):
    /// what `GET /apisix/admin/plugins/<name>` answers, from the same
    /// definition [`Schema::check`] validates with.
    pub(crate) fn to_json(&self) -> Value {
        let mut out = serde_json::Map::new();
        let num = |n: f64| {
            if n.fract() == 0.0 && n.abs() < 9.0e15 {
                Value::from(n as i64)
            } else {
                Value::from(n)
            }
        };
        if let Some(ty) = self.ty {
            out.insert("type".into(), ty.name().into());
        }
        if let Some(n) = self.min_len {
            out.insert("minLength".into(), n.into());
        }
        if let Some(n) = self.max_len.filter(|n| *n != usize::MAX) {
            out.insert("maxLength".into(), n.into());
        }
        if let Some((p, _)) = &self.pattern {
            out.insert("pattern".into(), p.clone().into());
        }
        if let Some(f) = self.format {
            let name = match f {
                Format::Ipv4 => "ipv4",
                Format::Ipv6 => "ipv6",
            };
            out.insert("format".into(), name.into());
        }
        if let Some(n) = self.minimum {
            out.insert("minimum".into(), num(n));
        }
        if let Some(n) = self.maximum {
            out.insert("maximum".into(), num(n));
        }
        if let Some(n) = self.exclusive_minimum {
            out.insert("exclusiveMinimum".into(), num(n));
        }
        if let Some(values) = &self.enum_values {
            out.insert("enum".into(), Value::Array(values.clone()));
        }
        if !self.properties.is_empty() {
            let props: serde_json::Map<String, Value> = self
                .properties
                .iter()
                .map(|(k, s)| ((*k).to_string(), s.to_json()))
                .collect();
            out.insert("properties".into(), Value::Object(props));
        }
        if let Some(pp) = &self.pattern_properties {
            let mut m = serde_json::Map::new();
            m.insert(".*".into(), pp.to_json());
            out.insert("patternProperties".into(), Value::Object(m));
        }
        if self.no_additional {
            out.insert("additionalProperties".into(), false.into());
        }
        if !self.required.is_empty() {
            out.insert("required".into(), self.required.clone().into());
        }
        if let Some(items) = &self.items {
            out.insert("items".into(), items.to_json());
        }
        if let Some(n) = self.min_items {
            out.insert("minItems".into(), n.into());
        }
        if let Some(n) = self.max_items {
            out.insert("maxItems".into(), n.into());
        }
        if self.unique_items {
            out.insert("uniqueItems".into(), true.into());
        }
        let list = |l: &[Schema]| Value::Array(l.iter().map(Schema::to_json).collect());
        if !self.any_of.is_empty() {
            out.insert("anyOf".into(), list(&self.any_of));
        }
        if !self.one_of.is_empty() {
            out.insert("oneOf".into(), list(&self.one_of));
        }
        if let Some(n) = &self.not {
            out.insert("not".into(), n.to_json());
        }
        if !self.dependencies.is_empty() {
            let deps: serde_json::Map<String, Value> = self
                .dependencies
                .iter()
                .map(|(k, s)| ((*k).to_string(), s.to_json()))
                .collect();
            out.insert("dependencies".into(), Value::Object(deps));
        }
        if let Some(ite) = &self.if_then_else {
            let (cond, then, els) = &**ite;
            out.insert("if".into(), cond.to_json());
            if let Some(t) = then {
                out.insert("then".into(), t.to_json());
            }
            if let Some(e) = els {
                out.insert("else".into(), e.to_json());
            }
        }
        Value::Object(out)
    }

    /// Checks `v`, returning lua-jsonschema's message for the first failure.
    pub(crate) fn check(&self, v: &Value) -> Result<(), String> {
        if let Some(ty) = self.ty {
            if !is_type(v, ty) {
                return Err(format!(
                    "wrong type: expected {}, got {}",
                    ty.name(),
                    kind_of(v)
                ));
            }
        }
        match v {
            Value::Object(map) => self.check_object(map)?,
            Value::Array(items) => self.check_array(items)?,
            Value::String(s) => self.check_string(s)?,
            Value::Number(_) => self.check_number(v)?,
            _ => {}
        }
        if let Some(values) = &self.enum_values {
            if !values.iter().any(|e| json_eq(e, v)) {
                return Err("matches none of the enum values".to_string());
            }
        }
        if !self.any_of.is_empty() && !self.any_of.iter().any(|s| s.check(v).is_ok()) {
            return Err("object matches none of the required".to_string());
        }
        if !self.one_of.is_empty() {
            let matched: Vec<usize> = self
                .one_of
                .iter()
                .enumerate()
                .filter(|(_, s)| s.check(v).is_ok())
                .map(|(i, _)| i + 1)
                .collect();
            match matched.as_slice() {
                [] => return Err("value should match only one schema, but matches none".into()),
                [_] => {}
                [a, b, ..] => {
                    return Err(format!(
                        "value should match only one schema, but matches both schemas {a} and {b}"
                    ))
                }
            }
        }
        if let Some(n) = &self.not {
            if n.check(v).is_ok() {
                return Err("value wasn't supposed to match schema".to_string());
            }
        }
        if let Some(ite) = &self.if_then_else {
            let (cond, then, els) = &**ite;
            if cond.check(v).is_ok() {
                if let Some(t) = then {
                    if t.check(v).is_err() {
                        return Err("then clause did not match".to_string());
                    }
                }
            } else if let Some(e) = els {
                if e.check(v).is_err() {
                    return Err("else clause did not match".to_string());
                }
            }
        }
        Ok(())
    }

    fn check_object(&self, map: &serde_json::Map<String, Value>) -> Result<(), String> {
        for name in &self.required {
            if !map.contains_key(*name) {
                return Err(format!("property {} is required", quote(name)));
            }
        }
        for (name, s) in &self.properties {
            if let Some(value) = map.get(*name) {
                s.check(value).map_err(|e| prop_err(name, &e))?;
            }
        }
        if let Some(pp) = &self.pattern_properties {
            for (name, value) in map {
                pp.check(value).map_err(|e| prop_err(name, &e))?;
            }
        }
        if self.no_additional && self.pattern_properties.is_none() {
            for name in map.keys() {
                if !self.properties.iter().any(|(p, _)| p == name) {
                    return Err(format!("additional properties forbidden, found {name}"));
                }
            }
        }
        for (name, s) in &self.dependencies {
            if map.contains_key(*name) {
                let obj = Value::Object(map.clone());
                s.check(&obj).map_err(|e| {
                    format!(
                        "failed to validate dependent schema for {}: {e}",
                        quote(name)
                    )
                })?;
            }
        }
        Ok(())
    }

    fn check_array(&self, items: &[Value]) -> Result<(), String> {
        if let Some(min) = self.min_items {
            if items.len() < min {
                return Err(format!("expect array to have at least {min} items"));
            }
        }
        if let Some(max) = self.max_items {
            if items.len() > max {
                return Err(format!("expect array to have at most {max} items"));
            }
        }
        if self.unique_items {
            for i in 0..items.len() {
                for j in (i + 1)..items.len() {
                    if json_eq(&items[i], &items[j]) {
                        return Err(format!(
                            "expected unique items but items {} and {} are equal",
                            i + 1,
                            j + 1
                        ));
                    }
                }
            }
        }
        if let Some(s) = &self.items {
            for (i, item) in items.iter().enumerate() {
                s.check(item)
                    .map_err(|e| format!("failed to validate item {}: {e}", i + 1))?;
            }
        }
        Ok(())
    }

    fn check_string(&self, s: &str) -> Result<(), String> {
        let len = s.chars().count();
        if let Some(min) = self.min_len {
            if len < min {
                return Err(format!(
                    "string too short, expected at least {min}, got {len}"
                ));
            }
        }
        if let Some(max) = self.max_len {
            if len > max {
                return Err(format!(
                    "string too long, expected at most {max}, got {len}"
                ));
            }
        }
        if let Some((p, re)) = &self.pattern {
            if !re.as_ref().is_some_and(|re| re.is_match(s)) {
                return Err(format!(
                    "failed to match pattern {} with {}",
                    quote(p),
                    quote(s)
                ));
            }
        }
        match self.format {
            Some(Format::Ipv4) if s.parse::<std::net::Ipv4Addr>().is_err() => {
                Err(format!("expected valid ipv4, got {}", quote(s)))
            }
            Some(Format::Ipv6) if s.parse::<std::net::Ipv6Addr>().is_err() => {
                Err(format!("expected valid ipv6, got {}", quote(s)))
            }
            _ => Ok(()),
        }
    }

    fn check_number(&self, v: &Value) -> Result<(), String> {
        let Some(n) = v.as_f64() else { return Ok(()) };
        if let Some(min) = self.minimum {
            if n < min {
                return Err(format!(
                    "expected {} to be at least {}",
                    fmt_num(n),
                    fmt_num(min)
                ));
            }
        }
        if let Some(max) = self.maximum {
            if n > max {
                return Err(format!(
                    "expected {} to be at most {}",
                    fmt_num(n),
                    fmt_num(max)
                ));
            }
        }
        if let Some(min) = self.exclusive_minimum {
            if n <= min {
                return Err(format!(
                    "expected {} to be greater than {}",
                    fmt_num(n),
                    fmt_num(min)
                ));
            }
        }
        Ok(())
    }
}

/// `property "<name>" validation failed: <inner>`.
pub(crate) fn prop_err(name: &str, inner: &str) -> String {
    format!("property {} validation failed: {inner}", quote(name))
}

/// Lua's `%q` quoting: double quotes with `\`, `"` and newlines escaped.
pub(crate) fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\0' => out.push_str("\\0"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Formats a number as Lua prints it: integral values without a fraction.
pub(crate) fn fmt_num(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        format!("{n}")
    }
}

/// Whether `v` is an integral JSON number (1 and 1.0 both count, as in Lua).
pub(crate) fn is_integer(v: &Value) -> bool {
    match v {
        Value::Number(n) => {
            n.is_i64()
                || n.is_u64()
                || n.as_f64()
                    .is_some_and(|f| f.fract() == 0.0 && f.is_finite())
        }
        _ => false,
    }
}

/// The integer value of an integral JSON number.
pub(crate) fn as_int(v: &Value) -> Option<i64> {
    if let Some(i) = v.as_i64() {
        return Some(i);
    }
    let f = v.as_f64()?;
    if f.fract() == 0.0 && f.abs() < 9.0e15 {
        Some(f as i64)
    } else {
        None
    }
}

fn is_type(v: &Value, ty: Ty) -> bool {
    match ty {
        Ty::String => v.is_string(),
        Ty::Integer => is_integer(v),
        Ty::Number => v.is_number(),
        Ty::Boolean => v.is_boolean(),
        Ty::Object => v.is_object(),
        Ty::Array => v.is_array(),
    }
}

/// The type name lua-jsonschema reports for a value.
pub(crate) fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// JSON equality where numbers compare by value (1 == 1.0).
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_eq(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, p)| y.get(k).is_some_and(|q| json_eq(p, q)))
        }
        _ => a == b,
    }
}
