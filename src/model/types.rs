//! Typed views of validated objects for the data plane, with APISIX's defaults applied
//! (schemas.md): map nodes become array nodes, IPv6 brackets are removed, SNIs are normalised.

use std::fmt;

use ipnet::IpNet;
use serde_json::{Map, Value};

use super::schema::as_int;

/// A stream route as the matcher and proxy use it.
#[derive(Debug, Clone)]
pub struct StreamRoute {
    /// The route id.
    pub id: String,
    /// Client address filter (a bare IP is a /32 or /128).
    pub remote_addr: Option<IpNet>,
    /// Local address filter (a bare IP is a /32 or /128).
    pub server_addr: Option<IpNet>,
    /// Local port filter.
    pub server_port: Option<u16>,
    /// TLS SNI filter, lower-cased (`*`, `*.x.com`, `x.com`).
    pub sni: Option<String>,
    /// Inline upstream.
    pub upstream: Option<Upstream>,
    /// Referenced upstream; wins over the inline one.
    pub upstream_id: Option<String>,
    /// Referenced service.
    pub service_id: Option<String>,
    /// Plugin confs by name.
    pub plugins: Map<String, Value>,
    /// xRPC `protocol.superior_id`: such routes are never matched directly.
    pub superior_id: Option<String>,
    /// Route name.
    pub name: Option<String>,
}

/// Load-balancing algorithm of an upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LbType {
    /// `roundrobin` (the default).
    RoundRobin,
    /// `chash`.
    Chash,
    /// `least_conn`.
    LeastConn,
    /// Anything else (`ewma`, unknown names): fails when traffic arrives.
    Other(String),
}

/// Upstream timeouts in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timeout {
    /// Connect timeout per try.
    pub connect: f64,
    /// Send timeout.
    pub send: f64,
    /// Read timeout.
    pub read: f64,
}

/// One backend node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Host name or IP, IPv6 without brackets.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Weight (0 = never chosen by roundrobin/chash).
    pub weight: u32,
    /// Priority group (higher tried first).
    pub priority: i32,
}

/// Client certificate settings towards the upstream.
#[derive(Clone)]
pub struct UpstreamTls {
    /// Inline client certificate (PEM).
    pub client_cert: Option<String>,
    /// Inline client key (PEM); never printed by `Debug`.
    pub client_key: Option<String>,
    /// SSL object (`type: client`) holding the client certificate.
    pub client_cert_id: Option<String>,
    /// `tls.verify` (default false).
    pub verify: bool,
}

impl fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("client_cert", &self.client_cert.as_ref().map(|_| "<pem>"))
            .field(
                "client_key",
                &self.client_key.as_ref().map(|_| "<redacted>"),
            )
            .field("client_cert_id", &self.client_cert_id)
            .field("verify", &self.verify)
            .finish()
    }
}

/// An upstream as the balancer uses it.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Id for `/upstreams` objects; `None` for inline upstreams.
    pub id: Option<String>,
    /// Nodes in configuration order.
    pub nodes: Vec<Node>,
    /// Algorithm (`type`).
    pub lb: LbType,
    /// `hash_on` (default `vars`).
    pub hash_on: String,
    /// chash key.
    pub key: Option<String>,
    /// Extra tries; `None` = node count − 1.
    pub retries: Option<u32>,
    /// Retry budget in seconds; `None`/0 = none.
    pub retry_timeout: Option<f64>,
    /// Timeouts (all three set when present).
    pub timeout: Option<Timeout>,
    /// Scheme; `http` and unset become `tcp`.
    pub scheme: String,
    /// Client TLS towards the nodes.
    pub tls: Option<UpstreamTls>,
    /// Health-check configuration as given.
    pub checks: Option<Value>,
}

/// Which side an SSL object serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslType {
    /// Certificate presented to clients (default).
    Server,
    /// Certificate presented to upstreams.
    Client,
}

/// An SSL object as the TLS layer uses it.
#[derive(Clone)]
pub struct Ssl {
    /// The SSL id.
    pub id: String,
    /// `type`.
    pub ssl_type: SslType,
    /// SNIs, lower-cased, trailing `.` removed.
    pub snis: Vec<String>,
    /// (certificate PEM, key PEM): `cert`/`key` first, then `certs[i]`/`keys[i]`.
    pub pairs: Vec<(String, String)>,
    /// CA for client-certificate verification (mTLS).
    pub client_ca: Option<String>,
    /// Verify depth (default 1).
    pub client_depth: u32,
    /// `status != 0`.
    pub enabled: bool,
    /// Allowed TLS versions (empty = not restricted).
    pub ssl_protocols: Vec<String>,
}

impl fmt::Debug for Ssl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ssl")
            .field("id", &self.id)
            .field("ssl_type", &self.ssl_type)
            .field("snis", &self.snis)
            .field(
                "pairs",
                &format_args!("<{} cert/key pairs>", self.pairs.len()),
            )
            .field("client_ca", &self.client_ca.as_ref().map(|_| "<pem>"))
            .field("client_depth", &self.client_depth)
            .field("enabled", &self.enabled)
            .field("ssl_protocols", &self.ssl_protocols)
            .finish()
    }
}

fn str_field(v: &Value, field: &str) -> Option<String> {
    v.get(field).and_then(Value::as_str).map(str::to_string)
}

fn id_field(v: &Value, field: &str) -> Option<String> {
    v.get(field).and_then(super::id_string)
}

/// Parses an IP or CIDR; a bare IP becomes a /32 or /128 network.
fn parse_net(field: &str, s: &str) -> Result<IpNet, String> {
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net);
    }
    s.parse::<std::net::IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("invalid {field}: {s}"))
}

impl StreamRoute {
    /// Reads only the match filters of a stored stream route (one that
    /// cannot be served, to refuse its clients); an error when a filter
    /// present cannot be read, or when it is an xRPC subordinate route.
    pub fn filters_from_value(v: &Value) -> Result<Self, String> {
        if !v.is_object() {
            return Err("not a JSON object".into());
        }
        if v.get("protocol")
            .and_then(|p| p.get("superior_id"))
            .is_some()
        {
            return Err("an xRPC subordinate route is never matched directly".into());
        }
        let net = |field: &str| -> Result<Option<IpNet>, String> {
            match v.get(field) {
                None => Ok(None),
                Some(Value::String(s)) => parse_net(field, s).map(Some),
                Some(other) => Err(format!("invalid {field}: {other}")),
            }
        };
        let server_port = match v.get("server_port") {
            None => None,
            Some(p) => Some(
                as_int(p)
                    .and_then(|n| u16::try_from(n).ok())
                    .ok_or_else(|| format!("invalid server_port: {p}"))?,
            ),
        };
        let sni = match v.get("sni") {
            None => None,
            Some(Value::String(s)) => Some(s.to_ascii_lowercase()),
            Some(other) => return Err(format!("invalid sni: {other}")),
        };
        Ok(StreamRoute {
            id: id_field(v, "id").unwrap_or_default(),
            remote_addr: net("remote_addr")?,
            server_addr: net("server_addr")?,
            server_port,
            sni,
            upstream: None,
            upstream_id: None,
            service_id: None,
            plugins: Map::new(),
            superior_id: None,
            name: str_field(v, "name"),
        })
    }

    /// Builds the view from a validated stream route (with `id`); a route
    /// whose `service_id` was not merged with a stored service is refused.
    pub fn from_value(v: &Value) -> Result<Self, String> {
        if let Some(sid) = id_field(v, "service_id") {
            if v.get(super::SERVICE_MERGED).is_none() {
                return Err(format!(
                    "failed to fetch service configuration by id: {sid}"
                ));
            }
        }
        // The store key is authoritative for the id; the body may lack it.
        let id = id_field(v, "id").unwrap_or_default();
        let net = |field: &str| -> Result<Option<IpNet>, String> {
            v.get(field)
                .and_then(Value::as_str)
                .map(|s| parse_net(field, s))
                .transpose()
        };
        let server_port = match v.get("server_port") {
            None => None,
            Some(p) => Some(
                as_int(p)
                    .and_then(|n| u16::try_from(n).ok())
                    .ok_or_else(|| format!("invalid server_port: {p}"))?,
            ),
        };
        let upstream = v.get("upstream").map(Upstream::from_value).transpose()?;
        Ok(StreamRoute {
            id,
            remote_addr: net("remote_addr")?,
            server_addr: net("server_addr")?,
            server_port,
            sni: str_field(v, "sni").map(|s| s.to_ascii_lowercase()),
            upstream,
            upstream_id: id_field(v, "upstream_id"),
            service_id: id_field(v, "service_id"),
            plugins: v
                .get("plugins")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default(),
            superior_id: v
                .get("protocol")
                .and_then(|p| p.get("superior_id"))
                .and_then(super::id_string),
            name: str_field(v, "name"),
        })
    }
}

/// Splits a map-form node key into host (brackets kept) and port text, as APISIX's
/// `parse_addr`: `[v6]:port`, `[v6]`, `host:port`, `host`.
pub(crate) fn split_host_port(addr: &str) -> (&str, Option<&str>) {
    if addr.starts_with('[') {
        if addr.ends_with(']') {
            return (addr, None);
        }
        if let Some(pos) = addr.rfind("]:") {
            return (&addr[..=pos], Some(&addr[pos + 2..]));
        }
        return (addr, None);
    }
    match addr.rfind(':') {
        Some(pos) if pos + 1 < addr.len() => (&addr[..pos], Some(&addr[pos + 1..])),
        _ => (addr, None),
    }
}

fn unbracket(host: &str) -> String {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
        .to_string()
}

fn to_u32(v: &Value) -> Option<u32> {
    as_int(v).and_then(|n| u32::try_from(n).ok())
}

impl Node {
    /// Builds the node list from `nodes` (map or array form).
    pub fn list_from_value(nodes: &Value) -> Result<Vec<Node>, String> {
        match nodes {
            Value::Object(map) => map
                .iter()
                .map(|(addr, w)| {
                    let (host, port) = split_host_port(addr);
                    let port = port
                        .and_then(|p| p.parse::<u16>().ok())
                        .filter(|p| *p > 0)
                        .ok_or_else(|| format!("node {addr} has no valid port"))?;
                    Ok(Node {
                        host: unbracket(host),
                        port,
                        weight: to_u32(w)
                            .ok_or_else(|| format!("invalid weight of node {addr}"))?,
                        priority: 0,
                    })
                })
                .collect(),
            Value::Array(items) => items
                .iter()
                .map(|n| {
                    let host = n
                        .get("host")
                        .and_then(Value::as_str)
                        .ok_or("node without host")?;
                    let port = n
                        .get("port")
                        .and_then(as_int)
                        .and_then(|p| u16::try_from(p).ok())
                        .filter(|p| *p > 0)
                        .ok_or_else(|| format!("node {host} has no valid port"))?;
                    Ok(Node {
                        host: unbracket(host),
                        port,
                        weight: n.get("weight").and_then(to_u32).unwrap_or(0),
                        priority: n
                            .get("priority")
                            .and_then(as_int)
                            .and_then(|p| i32::try_from(p).ok())
                            .unwrap_or(0),
                    })
                })
                .collect(),
            _ => Err("invalid nodes".to_string()),
        }
    }
}

impl Upstream {
    /// Builds the view from a validated upstream (inline or stored).
    pub fn from_value(v: &Value) -> Result<Self, String> {
        let nodes = match v.get("nodes") {
            Some(n) => Node::list_from_value(n)?,
            None => Vec::new(),
        };
        let lb = match v
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("roundrobin")
        {
            "roundrobin" => LbType::RoundRobin,
            "chash" => LbType::Chash,
            "least_conn" => LbType::LeastConn,
            other => LbType::Other(other.to_string()),
        };
        let timeout = v.get("timeout").and_then(|t| {
            Some(Timeout {
                connect: t.get("connect")?.as_f64()?,
                send: t.get("send")?.as_f64()?,
                read: t.get("read")?.as_f64()?,
            })
        });
        let scheme = match v.get("scheme").and_then(Value::as_str) {
            None | Some("http") => "tcp".to_string(),
            Some(s) => s.to_string(),
        };
        let tls = v.get("tls").map(|t| UpstreamTls {
            client_cert: str_field(t, "client_cert"),
            client_key: str_field(t, "client_key"),
            client_cert_id: id_field(t, "client_cert_id"),
            verify: t.get("verify").and_then(Value::as_bool).unwrap_or(false),
        });
        Ok(Upstream {
            id: id_field(v, "id"),
            nodes,
            lb,
            hash_on: str_field(v, "hash_on").unwrap_or_else(|| "vars".to_string()),
            key: str_field(v, "key"),
            retries: v
                .get("retries")
                .and_then(as_int)
                .map(|n| u32::try_from(n.max(0)).unwrap_or(u32::MAX)),
            retry_timeout: v.get("retry_timeout").and_then(Value::as_f64),
            timeout,
            scheme,
            tls,
            checks: v.get("checks").cloned(),
        })
    }
}

/// Lower-cases an SNI and removes a trailing `.`.
fn normalise_sni(s: &str) -> String {
    let lower = s.to_ascii_lowercase();
    lower.strip_suffix('.').map(str::to_string).unwrap_or(lower)
}

impl Ssl {
    /// Builds the view from a validated SSL object (with `id`; keys already decrypted).
    pub fn from_value(v: &Value) -> Result<Self, String> {
        let id = id_field(v, "id").ok_or("missing ssl id")?;
        let ssl_type = match v.get("type").and_then(Value::as_str) {
            Some("client") => SslType::Client,
            _ => SslType::Server,
        };
        let mut snis = Vec::new();
        if let Some(s) = v.get("sni").and_then(Value::as_str) {
            snis.push(normalise_sni(s));
        }
        for s in v
            .get("snis")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(s) = s.as_str() {
                let n = normalise_sni(s);
                if !snis.contains(&n) {
                    snis.push(n);
                }
            }
        }
        let mut pairs = Vec::new();
        if let (Some(c), Some(k)) = (str_field(v, "cert"), str_field(v, "key")) {
            pairs.push((c, k));
        }
        let certs = v.get("certs").and_then(Value::as_array);
        let keys = v.get("keys").and_then(Value::as_array);
        if let (Some(certs), Some(keys)) = (certs, keys) {
            for (c, k) in certs.iter().zip(keys) {
                if let (Some(c), Some(k)) = (c.as_str(), k.as_str()) {
                    pairs.push((c.to_string(), k.to_string()));
                }
            }
        }
        let client = v.get("client");
        Ok(Ssl {
            id,
            ssl_type,
            snis,
            pairs,
            client_ca: client.and_then(|c| str_field(c, "ca")),
            client_depth: client
                .and_then(|c| c.get("depth"))
                .and_then(to_u32)
                .unwrap_or(1),
            enabled: v.get("status").and_then(as_int).unwrap_or(1) != 0,
            ssl_protocols: v
                .get("ssl_protocols")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|p| p.as_str().map(str::to_string))
                .collect(),
        })
    }
}
