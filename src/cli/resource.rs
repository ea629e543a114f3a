//! Flags to Admin API JSON bodies: `--node`, `--plugin` and friends, merged
//! over a `-f FILE|-` base, with local checks whose messages name the flag.

use std::io::Read;
use std::net::IpAddr;
use std::path::Path;

use anyhow::{bail, Context};
use serde_json::{json, Map, Value};

use super::args::{
    LbType, RouteAddArgs, Scheme, ServiceAddArgs, SslAddArgs, UpstreamAddArgs, UpstreamFlags,
};

/// Fields the server sets itself and refuses in a body (a `get` output piped
/// back into `add -f -` carries them).
const SERVER_FIELDS: [&str; 2] = ["create_time", "update_time"];

/// Read a whole file, or stdin for `-`.
pub fn read_input(path: &Path) -> anyhow::Result<String> {
    if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read JSON from stdin")?;
        Ok(text)
    } else {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
    }
}

/// The JSON object of `-f FILE|-`, or an empty object.
fn base_object(file: Option<&Path>) -> anyhow::Result<Map<String, Value>> {
    let Some(path) = file else {
        return Ok(Map::new());
    };
    let text = read_input(path)?;
    let shown = if path.as_os_str() == "-" {
        "stdin".to_string()
    } else {
        path.display().to_string()
    };
    let v: Value = serde_json::from_str(&text)
        .with_context(|| format!("{shown} is not valid JSON (--file)"))?;
    let Value::Object(mut map) = v else {
        bail!("{shown} must hold a JSON object (--file)");
    };
    // A `get` answer wrapped as {"key", "value"} is unwrapped.
    if let (Some(Value::Object(inner)), true) = (map.get("value"), map.contains_key("key")) {
        map = inner.clone();
    }
    for f in SERVER_FIELDS {
        map.remove(f);
    }
    Ok(map)
}

/// A port 1-65535, or an error naming `flag`.
pub fn parse_port(flag: &str, text: &str) -> anyhow::Result<u16> {
    match text.trim().parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => Ok(p as u16),
        _ => bail!("invalid {flag} {text:?}: expected a port number 1-65535"),
    }
}

/// An IP address or CIDR network, or an error naming `flag`.
pub fn parse_ip_or_cidr(flag: &str, text: &str) -> anyhow::Result<String> {
    let t = text.trim();
    if t.parse::<IpAddr>().is_ok() || t.parse::<ipnet::IpNet>().is_ok() {
        Ok(t.to_string())
    } else {
        bail!("invalid {flag} {text:?}: expected an IP address or CIDR such as 10.0.0.0/8")
    }
}

/// An IP address (no network), or an error naming `flag`.
pub fn parse_ip(flag: &str, text: &str) -> anyhow::Result<IpAddr> {
    text.trim()
        .parse::<IpAddr>()
        .map_err(|_| anyhow::anyhow!("invalid {flag} {text:?}: expected an IP address"))
}

fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
}

/// One `--node HOST:PORT[=WEIGHT][@PRIORITY]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Host (IPv6 in brackets, as APISIX wants it).
    pub host: String,
    /// Port.
    pub port: u16,
    /// Weight (default 1).
    pub weight: u32,
    /// Priority, when given.
    pub priority: Option<i64>,
}

impl Node {
    /// `HOST:PORT`, the key of APISIX's map form.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// Parse one `--node HOST:PORT[=WEIGHT][@PRIORITY]`.
pub fn parse_node(text: &str) -> anyhow::Result<Node> {
    let bad = |why: &str| anyhow::anyhow!("invalid --node {text:?}: {why}");
    let (rest, priority) = match text.rsplit_once('@') {
        Some((r, p)) => {
            let p = p
                .trim()
                .parse::<i64>()
                .map_err(|_| bad("the priority after @ must be an integer"))?;
            (r, Some(p))
        }
        None => (text, None),
    };
    let (addr, weight) = match rest.rsplit_once('=') {
        Some((a, w)) => {
            let w = w
                .trim()
                .parse::<u32>()
                .map_err(|_| bad("the weight after = must be an integer 0 or more"))?;
            (a, w)
        }
        None => (rest, 1),
    };
    let (host, port) = if let Some(inner) = addr.strip_prefix('[') {
        let (h, p) = inner
            .split_once("]:")
            .ok_or_else(|| bad("write IPv6 nodes as [ADDR]:PORT"))?;
        if h.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad("not an IPv6 address inside [ ]"));
        }
        // APISIX wants IPv6 node hosts in brackets.
        (&addr[..h.len() + 2], p)
    } else {
        let (h, p) = addr
            .rsplit_once(':')
            .ok_or_else(|| bad("expected HOST:PORT[=WEIGHT][@PRIORITY]"))?;
        if h.contains(':') {
            return Err(bad("write IPv6 nodes as [ADDR]:PORT"));
        }
        if !valid_host(h) {
            return Err(bad("not a host name or IP address"));
        }
        (h, p)
    };
    let Some(port) = p_u16(port) else {
        return Err(bad("the port must be 1-65535"));
    };
    Ok(Node {
        host: host.to_string(),
        port,
        weight,
        priority,
    })
}

/// The `nodes` value of the given nodes: APISIX's map form
/// `{"HOST:PORT": WEIGHT}`, which is what people type and APISIX's docs
/// show; the list form only where the map cannot say it (a priority, or
/// one address given twice).
pub fn nodes_json(nodes: &[Node]) -> Value {
    let mut seen = std::collections::HashSet::new();
    let map_says_it = nodes
        .iter()
        .all(|n| n.priority.is_none() && seen.insert(n.addr()));
    if map_says_it {
        let map: Map<String, Value> = nodes.iter().map(|n| (n.addr(), json!(n.weight))).collect();
        return Value::Object(map);
    }
    Value::Array(
        nodes
            .iter()
            .map(|n| {
                let mut o = json!({"host": n.host, "port": n.port, "weight": n.weight});
                if let (Some(p), Some(m)) = (n.priority, o.as_object_mut()) {
                    m.insert("priority".into(), json!(p));
                }
                o
            })
            .collect(),
    )
}

fn p_u16(text: &str) -> Option<u16> {
    text.parse::<u16>().ok().filter(|p| *p > 0)
}

/// A `--plugin NAME=JSON` pair.
pub fn parse_plugin(text: &str) -> anyhow::Result<(String, Value)> {
    let (name, conf) = text
        .split_once('=')
        .ok_or_else(|| anyhow::anyhow!("invalid --plugin {text:?}: expected NAME=JSON"))?;
    let name = name.trim();
    if name.is_empty() {
        bail!("invalid --plugin {text:?}: the plugin name is empty");
    }
    let conf: Value = serde_json::from_str(conf)
        .map_err(|e| anyhow::anyhow!("invalid --plugin {name}: the value is not JSON ({e})"))?;
    if !conf.is_object() {
        bail!("invalid --plugin {name}: the value must be a JSON object");
    }
    Ok((name.to_string(), conf))
}

fn seconds(flag: &str, text: &str) -> anyhow::Result<Value> {
    match text.trim().parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 && s.fract() == 0.0 && s < 1e9 => Ok(json!(s as u64)),
        Ok(s) if s.is_finite() && s > 0.0 => Ok(json!(s)),
        _ => bail!("invalid {flag} {text:?}: expected a number of seconds above 0"),
    }
}

fn lb_name(t: LbType) -> &'static str {
    match t {
        LbType::Roundrobin => "roundrobin",
        LbType::Chash => "chash",
        LbType::LeastConn => "least_conn",
    }
}

fn scheme_name(s: Scheme) -> &'static str {
    match s {
        Scheme::Tcp => "tcp",
        Scheme::Udp => "udp",
        Scheme::Tls => "tls",
    }
}

/// Whether any upstream flag was given.
fn has_upstream_flags(f: &UpstreamFlags) -> bool {
    !f.nodes.is_empty() || f.lb_type.is_some() || f.key.is_some() || f.scheme.is_some()
}

/// Apply upstream flags over an upstream object.
fn apply_upstream(up: &mut Map<String, Value>, f: &UpstreamFlags) -> anyhow::Result<()> {
    if !f.nodes.is_empty() {
        let nodes = f
            .nodes
            .iter()
            .map(|n| parse_node(n))
            .collect::<anyhow::Result<Vec<_>>>()?;
        up.insert("nodes".into(), nodes_json(&nodes));
    }
    if let Some(t) = f.lb_type {
        up.insert("type".into(), json!(lb_name(t)));
    }
    if let Some(k) = &f.key {
        if k.trim().is_empty() {
            bail!("invalid --key: it is empty");
        }
        up.insert("key".into(), json!(k));
    }
    if let Some(s) = f.scheme {
        up.insert("scheme".into(), json!(scheme_name(s)));
    }
    if !up.contains_key("type") {
        up.insert("type".into(), json!("roundrobin"));
    }
    if up.get("type").and_then(Value::as_str) == Some("chash") && !up.contains_key("key") {
        up.insert("key".into(), json!("remote_addr"));
    }
    Ok(())
}

fn set_text(map: &mut Map<String, Value>, name: &str, v: &Option<String>) {
    if let Some(v) = v {
        map.insert(name.into(), json!(v));
    }
}

/// The id to write under: `--id`, else the base JSON's `id`.
fn take_id(map: &mut Map<String, Value>, flag: &Option<String>) -> anyhow::Result<Option<String>> {
    if let Some(id) = flag {
        if id.trim().is_empty() {
            bail!("invalid --id: it is empty");
        }
        map.insert("id".into(), json!(id));
        return Ok(Some(id.clone()));
    }
    Ok(match map.get("id") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    })
}

/// What `route add` and `service add` share: `--upstream-id` or inline
/// nodes (never both), `--plugin`, `--name` and `--desc`.
fn apply_common(
    map: &mut Map<String, Value>,
    upstream_id: Option<&str>,
    upstream: &UpstreamFlags,
    plugins: &[String],
    name: &Option<String>,
    desc: &Option<String>,
) -> anyhow::Result<()> {
    if let Some(uid) = upstream_id {
        if uid.trim().is_empty() {
            bail!("invalid --upstream-id: it is empty");
        }
        map.insert("upstream_id".into(), json!(uid));
        map.remove("upstream");
    }
    if has_upstream_flags(upstream) {
        if upstream_id.is_some() {
            bail!("--type, --key and --scheme describe inline nodes: use them with --node, not --upstream-id");
        }
        let mut up = match map.remove("upstream") {
            Some(Value::Object(o)) => o,
            _ => Map::new(),
        };
        apply_upstream(&mut up, upstream)?;
        if !up.contains_key("nodes") {
            bail!("missing --node: an inline upstream needs at least one node");
        }
        map.remove("upstream_id");
        map.insert("upstream".into(), Value::Object(up));
    }
    if !plugins.is_empty() {
        let table = map
            .entry("plugins")
            .or_insert_with(|| Value::Object(Map::new()));
        let Value::Object(table) = table else {
            bail!("\"plugins\" in --file must be a JSON object");
        };
        for p in plugins {
            let (plugin, conf) = parse_plugin(p)?;
            table.insert(plugin, conf);
        }
    }
    set_text(map, "name", name);
    set_text(map, "desc", desc);
    Ok(())
}

/// The body of `route add` and the id to PUT it under (None = POST).
pub fn route_body(a: &RouteAddArgs) -> anyhow::Result<(Option<String>, Value)> {
    let mut map = base_object(a.file.as_deref())?;
    if let Some(p) = &a.server_port {
        map.insert("server_port".into(), json!(parse_port("--server-port", p)?));
    }
    if let Some(s) = &a.server_addr {
        map.insert(
            "server_addr".into(),
            json!(parse_ip_or_cidr("--server-addr", s)?),
        );
    }
    if let Some(r) = &a.remote_addr {
        map.insert(
            "remote_addr".into(),
            json!(parse_ip_or_cidr("--remote-addr", r)?),
        );
    }
    if let Some(sni) = &a.sni {
        if sni.trim().is_empty() || sni.contains(char::is_whitespace) {
            bail!("invalid --sni {sni:?}: expected a host name such as db.example.com");
        }
        map.insert("sni".into(), json!(sni.trim()));
    }
    apply_common(
        &mut map,
        a.upstream_id.as_deref(),
        &a.upstream,
        &a.plugins,
        &a.name,
        &a.desc,
    )?;
    if let Some(sid) = &a.service_id {
        if sid.trim().is_empty() {
            bail!("invalid --service-id: it is empty");
        }
        map.insert("service_id".into(), json!(sid));
    }
    if !map.contains_key("upstream")
        && !map.contains_key("upstream_id")
        && !map.contains_key("service_id")
    {
        bail!("a stream route needs --node HOST:PORT, --upstream-id ID or --service-id ID");
    }
    let id = take_id(&mut map, &a.id)?;
    Ok((id, Value::Object(map)))
}

/// The body of `service add` and the id to PUT it under (None = POST).
pub fn service_body(a: &ServiceAddArgs) -> anyhow::Result<(Option<String>, Value)> {
    let mut map = base_object(a.file.as_deref())?;
    apply_common(
        &mut map,
        a.upstream_id.as_deref(),
        &a.upstream,
        &a.plugins,
        &a.name,
        &a.desc,
    )?;
    let id = take_id(&mut map, &a.id)?;
    Ok((id, Value::Object(map)))
}

/// The body of `upstream add` and the id to PUT it under (None = POST).
pub fn upstream_body(a: &UpstreamAddArgs) -> anyhow::Result<(Option<String>, Value)> {
    let mut map = base_object(a.file.as_deref())?;
    apply_upstream(&mut map, &a.upstream)?;
    if !map.contains_key("nodes") {
        bail!("missing --node: an upstream needs at least one node");
    }
    if let Some(r) = &a.retries {
        let n = r.trim().parse::<u32>().map_err(|_| {
            anyhow::anyhow!("invalid --retries {r:?}: expected an integer 0 or more")
        })?;
        map.insert("retries".into(), json!(n));
    }
    if let Some(t) = &a.retry_timeout {
        map.insert("retry_timeout".into(), seconds("--retry-timeout", t)?);
    }
    let timeouts = [
        ("connect", "--connect-timeout", &a.connect_timeout),
        ("send", "--send-timeout", &a.send_timeout),
        ("read", "--read-timeout", &a.read_timeout),
    ];
    if timeouts.iter().any(|(_, _, v)| v.is_some()) {
        let mut t = match map.remove("timeout") {
            Some(Value::Object(o)) => o,
            _ => Map::new(),
        };
        for (field, flag, v) in timeouts {
            match v {
                Some(text) => {
                    t.insert(field.into(), seconds(flag, text)?);
                }
                // APISIX wants all three; its default is 60 s each.
                None => {
                    t.entry(field).or_insert(json!(60));
                }
            }
        }
        map.insert("timeout".into(), Value::Object(t));
    }
    set_text(&mut map, "name", &a.name);
    set_text(&mut map, "desc", &a.desc);
    let id = take_id(&mut map, &a.id)?;
    Ok((id, Value::Object(map)))
}

fn read_pem(flag: &str, path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read {flag} {}", path.display()))?;
    if !text.contains("-----BEGIN ") {
        bail!("{flag} {} is not a PEM file", path.display());
    }
    Ok(text)
}

/// The body of `ssl add` and the id to PUT it under (None = POST).
pub fn ssl_body(a: &SslAddArgs) -> anyhow::Result<(Option<String>, Value)> {
    let cert = read_pem("--cert", &a.cert)?;
    let key = read_pem("--key", &a.key)?;
    let snis = if a.snis.is_empty() {
        let names = crate::model::snis_from_cert(&cert)
            .map_err(|e| anyhow::anyhow!("--cert {}: {e}", a.cert.display()))?;
        if names.is_empty() {
            bail!(
                "--cert {} names no host (no SAN, no CN): give the names with --sni",
                a.cert.display()
            );
        }
        names
    } else {
        for s in &a.snis {
            if s.trim().is_empty() || s.contains(char::is_whitespace) {
                bail!("invalid --sni {s:?}: expected a host name");
            }
        }
        a.snis.clone()
    };
    let mut map = Map::new();
    map.insert("cert".into(), json!(cert));
    map.insert("key".into(), json!(key));
    map.insert("snis".into(), json!(snis));
    if let Some(ca) = &a.ca {
        map.insert("client".into(), json!({"ca": read_pem("--ca", ca)?}));
    }
    set_text(&mut map, "desc", &a.desc);
    let id = take_id(&mut map, &a.id)?;
    Ok((id, Value::Object(map)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes() {
        let node = |t: &str| parse_node(t).unwrap();
        assert_eq!(
            nodes_json(&[node("127.0.0.1:80")]),
            json!({"127.0.0.1:80": 1})
        );
        assert_eq!(
            nodes_json(&[node("[::1]:8080=5"), node("db.internal:3306=0")]),
            json!({"[::1]:8080": 5, "db.internal:3306": 0})
        );
        // What the map cannot say: a priority, or an address twice.
        assert_eq!(
            nodes_json(&[node("10.0.0.1:80=2"), node("10.0.0.2:80@-1")]),
            json!([{"host": "10.0.0.1", "port": 80, "weight": 2},
                   {"host": "10.0.0.2", "port": 80, "weight": 1, "priority": -1}])
        );
        assert_eq!(
            nodes_json(&[node("10.0.0.1:80=2"), node("10.0.0.1:80=3")]),
            json!([{"host": "10.0.0.1", "port": 80, "weight": 2},
                   {"host": "10.0.0.1", "port": 80, "weight": 3}])
        );
        assert_eq!(node("[::1]:8080=5@3").priority, Some(3));
        for bad in [
            "127.0.0.1",
            "127.0.0.1:0",
            "127.0.0.1:70000",
            "127.0.0.1:80=x",
            "::1:80",
            "[nope]:80",
            "bad host:80",
            "127.0.0.1:80@high",
        ] {
            let e = parse_node(bad).unwrap_err().to_string();
            assert!(e.contains("--node"), "{bad}: {e}");
        }
    }

    #[test]
    fn plugins_and_addresses() {
        assert_eq!(
            parse_plugin(r#"limit-conn={"conn":1}"#).unwrap(),
            ("limit-conn".to_string(), json!({"conn": 1}))
        );
        assert!(parse_plugin("x=[1]").is_err());
        assert!(parse_plugin("x").is_err());
        assert_eq!(parse_port("--server-port", "9100").unwrap(), 9100);
        assert!(parse_port("--server-port", "0")
            .unwrap_err()
            .to_string()
            .contains("--server-port"));
        assert!(parse_ip_or_cidr("--remote-addr", "10.0.0.0/8").is_ok());
        assert!(parse_ip_or_cidr("--remote-addr", "10.0.0.0/33").is_err());
    }
}
