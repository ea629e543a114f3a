//! `discovery:` (service registries) and the `apisix` keys of the resolver
//! for node host names (`dns_resolver`, `dns_resolver_valid`,
//! `resolver_timeout`, `enable_ipv6`), with APISIX's names and defaults
//! (`apisix/discovery/*/schema.lua`, `apisix/cli/config.lua`).
//!
//! A registry whose keys are wrong is refused at start with one line naming
//! the key, as APISIX's `invalid discovery dns configuration: ...`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_yaml::Value;

use super::ConfigError;

/// Everything the service registries and the node-name resolver need.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DiscoveryConf {
    /// `discovery.dns`.
    pub dns: Option<DnsConf>,
    /// `discovery.consul`.
    pub consul: Option<ConsulConf>,
    /// `discovery.kubernetes` (one entry, or several with an `id` each).
    pub kubernetes: Option<Vec<KubernetesConf>>,
    /// Whether `discovery.kubernetes` was a list (service names then start
    /// with the entry's `id/`).
    pub kubernetes_multi: bool,
    /// Other registries named under `discovery:` that this server does not
    /// implement (upstreams naming them are refused).
    pub unsupported: Vec<String>,
    /// Node host names: `apisix.dns_resolver` etc.
    pub resolver: ResolverConf,
}

impl DiscoveryConf {
    /// The registry names configured and served (`dns`, `consul`, `kubernetes`).
    pub fn types(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.dns.is_some() {
            out.push("dns".to_string());
        }
        if self.consul.is_some() {
            out.push("consul".to_string());
        }
        if self.kubernetes.is_some() {
            out.push("kubernetes".to_string());
        }
        out
    }
}

/// `discovery.dns`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct DnsConf {
    /// Name servers, `ip` or `ip:port`.
    pub servers: Vec<String>,
    /// A resolv.conf whose `nameserver` lines are used instead.
    pub resolv_conf: Option<String>,
    /// Record types tried in turn: `last`, `SRV`, `A`, `AAAA`, `CNAME`.
    pub order: Option<Vec<String>>,
}

/// `discovery.consul.timeout` (connect and read in ms, wait in s).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct ConsulTimeout {
    /// Connect timeout, milliseconds.
    pub connect: u64,
    /// Read timeout, milliseconds (added to `wait` for blocking queries).
    pub read: u64,
    /// Blocking query wait, seconds.
    pub wait: u64,
}

impl Default for ConsulTimeout {
    fn default() -> Self {
        ConsulTimeout {
            connect: 2000,
            read: 2000,
            wait: 60,
        }
    }
}

/// `discovery.consul`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct ConsulConf {
    /// `http://host:port` of each Consul server.
    pub servers: Vec<String>,
    /// ACL token (`X-Consul-Token`).
    pub token: String,
    /// Seconds between polls when `keepalive` is false.
    pub fetch_interval: u64,
    /// Blocking queries (true) or polling.
    pub keepalive: bool,
    /// Weight of every node.
    pub weight: u32,
    /// Timeouts.
    pub timeout: ConsulTimeout,
    /// `origin`, `host_sort`, `port_sort` or `combine_sort`.
    pub sort_type: String,
    /// Services never followed.
    pub skip_services: Vec<String>,
    /// Node used for a service that has none.
    pub default_service: Option<ConsulDefault>,
}

impl Default for ConsulConf {
    fn default() -> Self {
        ConsulConf {
            servers: Vec::new(),
            token: String::new(),
            fetch_interval: 3,
            keepalive: true,
            weight: 1,
            timeout: ConsulTimeout::default(),
            sort_type: "origin".into(),
            skip_services: Vec::new(),
            default_service: None,
        }
    }
}

/// `discovery.consul.default_service`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct ConsulDefault {
    /// Host.
    pub host: String,
    /// Port.
    pub port: u16,
}

/// `discovery.kubernetes[].service`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct KubeService {
    /// `http` or `https`.
    pub schema: String,
    /// API server host, or `${VAR}`.
    pub host: String,
    /// API server port, or `${VAR}`.
    pub port: String,
    /// Verify the API server's certificate.
    pub ssl_verify: bool,
}

impl Default for KubeService {
    fn default() -> Self {
        KubeService {
            schema: "https".into(),
            host: "${KUBERNETES_SERVICE_HOST}".into(),
            port: "${KUBERNETES_SERVICE_PORT}".into(),
            ssl_verify: false,
        }
    }
}

/// `discovery.kubernetes[].client`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct KubeClient {
    /// Bearer token, or `${VAR}`.
    pub token: Option<String>,
    /// File holding the token (re-read on every list and watch).
    pub token_file: Option<String>,
}

impl Default for KubeClient {
    fn default() -> Self {
        KubeClient {
            token: None,
            token_file: Some(KUBE_TOKEN_FILE.into()),
        }
    }
}

/// The service account's token file.
pub const KUBE_TOKEN_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// `discovery.kubernetes` (or one entry of its list).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct KubernetesConf {
    /// Entry id (list form only).
    pub id: String,
    /// API server.
    pub service: KubeService,
    /// Credentials.
    pub client: KubeClient,
    /// `namespace_selector` (`equal`, `not_equal`, `match`, `not_match`).
    pub namespace_selector: Option<BTreeMap<String, serde_yaml::Value>>,
    /// `label_selector`.
    pub label_selector: Option<String>,
    /// Weight of every node.
    pub default_weight: u32,
    /// Watch EndpointSlices instead of Endpoints.
    pub watch_endpoint_slices: bool,
}

impl Default for KubernetesConf {
    fn default() -> Self {
        KubernetesConf {
            id: String::new(),
            service: KubeService::default(),
            client: KubeClient::default(),
            namespace_selector: None,
            label_selector: None,
            default_weight: 50,
            watch_endpoint_slices: false,
        }
    }
}

/// How node host names are resolved (`apisix.*`).
#[derive(Debug, Clone, PartialEq)]
pub struct ResolverConf {
    /// `dns_resolver`: name servers; empty = the system resolver.
    pub dns_resolver: Vec<String>,
    /// `dns_resolver_valid`: seconds an answer is kept, instead of its TTL.
    pub dns_resolver_valid: Option<u64>,
    /// `resolver_timeout`.
    pub resolver_timeout: Duration,
    /// `enable_ipv6`: AAAA answers are used too.
    pub enable_ipv6: bool,
}

impl Default for ResolverConf {
    fn default() -> Self {
        ResolverConf {
            dns_resolver: Vec::new(),
            dns_resolver_valid: None,
            resolver_timeout: Duration::from_secs(5),
            enable_ipv6: true,
        }
    }
}

fn invalid(key: &str, v: &Value, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        value: super::read::show(v),
        reason: reason.into(),
    }
}

fn parse<T: for<'de> Deserialize<'de>>(key: &str, v: &Value) -> Result<T, ConfigError> {
    serde_yaml::from_value(v.clone()).map_err(|e| invalid(key, v, e.to_string()))
}

const DNS_ORDER: [&str; 5] = ["last", "SRV", "A", "AAAA", "CNAME"];

fn check_dns(d: &DnsConf, v: &Value) -> Result<(), ConfigError> {
    if d.servers.is_empty() && d.resolv_conf.is_none() {
        return Err(invalid(
            "discovery.dns",
            v,
            "invalid discovery dns configuration: servers or resolv_conf is required",
        ));
    }
    if let Some(order) = &d.order {
        if order.is_empty() || order.len() > 5 {
            return Err(invalid("discovery.dns.order", v, "expected 1 to 5 entries"));
        }
        for (i, o) in order.iter().enumerate() {
            if !DNS_ORDER.contains(&o.as_str()) || order[..i].contains(o) {
                return Err(invalid(
                    "discovery.dns.order",
                    v,
                    format!("{o:?} is not one of last, SRV, A, AAAA, CNAME (each once)"),
                ));
            }
        }
    }
    Ok(())
}

fn check_consul(c: &ConsulConf, v: &Value) -> Result<(), ConfigError> {
    // Keys of APISIX's consul discovery that have nothing to act on here:
    // said once at start rather than taken silently.
    if v.get("dump").is_some() {
        tracing::warn!(
            "discovery.consul.dump is not supported: the registry is not written to a file"
        );
    }
    if v.get("shared_size").is_some() {
        tracing::warn!("discovery.consul.shared_size has no effect: nodes are kept in process memory, not in an nginx shared dict");
    }
    if c.servers.is_empty() {
        return Err(invalid(
            "discovery.consul.servers",
            v,
            "invalid discovery consul configuration: servers is required",
        ));
    }
    for s in &c.servers {
        let rest = s.strip_prefix("http://").ok_or_else(|| {
            invalid(
                "discovery.consul.servers",
                v,
                "only support consul http schema address, eg: http://address:port",
            )
        })?;
        if rest.is_empty() || rest.contains('/') {
            return Err(invalid(
                "discovery.consul.servers",
                v,
                "invalid consul server address, the valid format: http://address:port",
            ));
        }
    }
    if !["origin", "host_sort", "port_sort", "combine_sort"].contains(&c.sort_type.as_str()) {
        return Err(invalid(
            "discovery.consul.sort_type",
            v,
            "expected origin, host_sort, port_sort or combine_sort",
        ));
    }
    if c.fetch_interval == 0 || c.weight == 0 {
        return Err(invalid(
            "discovery.consul",
            v,
            "fetch_interval and weight must be at least 1",
        ));
    }
    Ok(())
}

fn check_kube(k: &KubernetesConf, key: &str, v: &Value) -> Result<(), ConfigError> {
    if !["http", "https"].contains(&k.service.schema.as_str()) {
        return Err(invalid(
            key,
            v,
            format!(
                "service.schema should set to one of [http,https] but {}",
                k.service.schema
            ),
        ));
    }
    if k.client.token.is_none() && k.client.token_file.is_none() {
        return Err(invalid(
            key,
            v,
            "one of [client.token,client.token_file] should be set but none",
        ));
    }
    Ok(())
}

/// Read `discovery:` (from the document's root) and the resolver keys
/// (from its `apisix` table).
pub(super) fn read(
    discovery: Option<&Value>,
    apisix: Option<&Value>,
) -> Result<DiscoveryConf, ConfigError> {
    let mut out = DiscoveryConf {
        resolver: read_resolver(apisix)?,
        ..DiscoveryConf::default()
    };
    let Some(d) = discovery else {
        return Ok(out);
    };
    let Value::Mapping(map) = d else {
        return Err(invalid("discovery", d, "expected a table"));
    };
    for (name, v) in map {
        let name = name.as_str().unwrap_or_default();
        match name {
            "dns" => {
                let c: DnsConf = parse("discovery.dns", v)?;
                check_dns(&c, v)?;
                out.dns = Some(c);
            }
            "consul" => {
                let c: ConsulConf = parse("discovery.consul", v)?;
                check_consul(&c, v)?;
                out.consul = Some(c);
            }
            "kubernetes" => {
                let (list, multi) = match v {
                    Value::Sequence(items) => {
                        let list = items
                            .iter()
                            .map(|i| parse::<KubernetesConf>("discovery.kubernetes", i))
                            .collect::<Result<Vec<_>, _>>()?;
                        if list.is_empty() || list.iter().any(|k| k.id.is_empty()) {
                            return Err(invalid(
                                "discovery.kubernetes",
                                v,
                                "every entry of the list needs an id",
                            ));
                        }
                        (list, true)
                    }
                    _ => (
                        vec![parse::<KubernetesConf>("discovery.kubernetes", v)?],
                        false,
                    ),
                };
                for k in &list {
                    check_kube(k, "discovery.kubernetes", v)?;
                }
                out.kubernetes = Some(list);
                out.kubernetes_multi = multi;
            }
            other => out.unsupported.push(other.to_string()),
        }
    }
    Ok(out)
}

fn read_resolver(apisix: Option<&Value>) -> Result<ResolverConf, ConfigError> {
    let mut out = ResolverConf::default();
    let get = |k: &str| match apisix.and_then(|a| a.get(k)) {
        None | Some(Value::Null) => None,
        Some(v) => Some(v),
    };
    if let Some(v) = get("dns_resolver") {
        out.dns_resolver = parse("apisix.dns_resolver", v)?;
    }
    if let Some(v) = get("dns_resolver_valid") {
        out.dns_resolver_valid = Some(parse("apisix.dns_resolver_valid", v)?);
    }
    if let Some(v) = get("resolver_timeout") {
        let secs: u64 = parse("apisix.resolver_timeout", v)?;
        out.resolver_timeout = Duration::from_secs(secs.max(1));
    }
    if let Some(v) = get("enable_ipv6") {
        out.enable_ipv6 = parse("apisix.enable_ipv6", v)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(yaml: &str) -> Result<DiscoveryConf, ConfigError> {
        let root: Value = serde_yaml::from_str(yaml).expect("yaml");
        read(root.get("discovery"), root.get("apisix"))
    }

    #[test]
    fn apisix_keys_and_defaults() {
        let c = conf(
            "apisix:\n  dns_resolver: [127.0.0.1:53]\n  dns_resolver_valid: 7\n  enable_ipv6: false\ndiscovery:\n  dns:\n    servers: [\"127.0.0.1:5353\"]\n  consul:\n    servers: [\"http://127.0.0.1:8500\"]\n  kubernetes:\n    service: {schema: http, host: 127.0.0.1, port: \"6443\"}\n    client: {token: abc}\n  eureka: {}\n",
        )
        .expect("valid");
        assert_eq!(c.resolver.dns_resolver, vec!["127.0.0.1:53"]);
        assert_eq!(c.resolver.dns_resolver_valid, Some(7));
        assert!(!c.resolver.enable_ipv6);
        assert_eq!(c.types(), vec!["dns", "consul", "kubernetes"]);
        assert_eq!(c.unsupported, vec!["eureka"]);
        let consul = c.consul.expect("consul");
        assert_eq!(consul.timeout.wait, 60);
        assert!(consul.keepalive);
        let k = &c.kubernetes.expect("k8s")[0];
        assert_eq!(k.default_weight, 50);
        assert_eq!(k.client.token.as_deref(), Some("abc"));
    }

    #[test]
    fn bad_registries_are_refused_naming_the_key() {
        let e = conf("discovery:\n  dns: {}\n").expect_err("no servers");
        assert!(e.to_string().contains("discovery.dns"), "{e}");
        let e = conf("discovery:\n  dns:\n    servers: [a]\n    order: [MX]\n").expect_err("order");
        assert!(e.to_string().contains("order"), "{e}");
        let e = conf("discovery:\n  consul:\n    servers: [\"https://x:1\"]\n").expect_err("https");
        assert!(e.to_string().contains("only support consul http"), "{e}");
        let e = conf("discovery:\n  kubernetes:\n    - service: {host: a, port: \"1\"}\n")
            .expect_err("no id");
        assert!(e.to_string().contains("id"), "{e}");
    }
}
