//! Reading `config.yaml`: the YAML tree, a section reader that names every key it
//! rejects, and the builders that turn each section into its typed form with APISIX's
//! defaults.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde_yaml::{Mapping, Value};

use super::env::substitute_env;
use super::{
    default_stream_plugins, listen, standalone_name, validate, Admin, AdminKey, AdminRole, Apisix,
    Config, ConfigError, ConfigProvider, DataEncryption, Deployment, DeploymentRole, ErrorLogLevel,
    Etcd, EtcdTls, ListenAddr, Local, NginxConfig, NginxHttp, NginxStream, PluginAttr, Prometheus,
    ProxyMode, ProxyProtocol, Secret, SslConf, StreamProxy, WorkerProcesses, MAX_WORKER_PROCESSES,
};

/// Parse an nginx time value: a number of seconds, or `<n>ms|s|m|h`. Values beyond
/// [`crate::model::duration::MAX`] (one year) are clamped to it; `None` for text that is
/// not a duration or a number too large for any clock (nginx refuses those too).
pub fn parse_nginx_duration(text: &str) -> Option<std::time::Duration> {
    let t = text.trim();
    let (num, unit) = match t.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => (&t[..i], &t[i..]),
        None => (t, "s"),
    };
    let n: f64 = num
        .parse()
        .ok()
        .filter(|n: &f64| n.is_finite() && *n >= 0.0)?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    let exact = std::time::Duration::try_from_secs_f64(secs).ok()?;
    Some(exact.min(crate::model::duration::MAX))
}

/// A value as it appears in error messages: strings quoted, tables as compact JSON.
pub(super) fn show(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::Tagged(t) => format!("{} {}", t.tag, show(&t.value)),
        Value::Sequence(_) | Value::Mapping(_) => {
            serde_json::to_string(v).unwrap_or_else(|_| "<table>".into())
        }
    }
}

pub(super) fn parse_text(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
    origin: &str,
) -> Result<Config, ConfigError> {
    let text = substitute_env(text, env)?;
    let root: Value = serde_yaml::from_str(&text).map_err(|e| ConfigError::Syntax {
        origin: origin.to_string(),
        message: e.to_string().replace('\n', " "),
    })?;
    build(&root)
}

/// A duration in nginx's notation (`30s`, `500ms`, `2m`, bare seconds) or its default.
fn nginx_duration(
    sec: &Section<'_>,
    key: &str,
    default: std::time::Duration,
) -> Result<std::time::Duration, ConfigError> {
    match sec.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => {
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                other => format!("{other:?}"),
            };
            parse_nginx_duration(&text).ok_or_else(|| {
                sec.invalid(
                    key,
                    v,
                    "expected a duration such as 30s, 500ms or 2m (and not too large for a clock)",
                )
            })
        }
    }
}

/// `worker_processes`: `auto` or an integer from 1 to
/// [`MAX_WORKER_PROCESSES`], as nginx takes it (a quoted number too).
fn worker_processes(sec: &Section<'_>) -> Result<WorkerProcesses, ConfigError> {
    let Some(v) = sec.get("worker_processes") else {
        return Ok(WorkerProcesses::Auto);
    };
    let count = match v {
        Value::String(s) if s == "auto" => return Ok(WorkerProcesses::Auto),
        Value::String(s) => s.parse::<u64>().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    };
    count
        .and_then(|n| usize::try_from(n).ok())
        .filter(|n| *n <= MAX_WORKER_PROCESSES)
        .and_then(std::num::NonZeroUsize::new)
        .map(WorkerProcesses::Count)
        .ok_or_else(|| {
            sec.invalid(
                "worker_processes",
                v,
                format!("expected auto or an integer from 1 to {MAX_WORKER_PROCESSES}"),
            )
        })
}

/// Cursor on one table of the document, carrying its dotted path for error messages.
struct Section<'a> {
    map: Option<&'a Mapping>,
    path: String,
}

impl<'a> Section<'a> {
    fn key_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// The value under `key`, with `null` treated as absent.
    fn get(&self, key: &str) -> Option<&'a Value> {
        match self.map.and_then(|m| m.get(key)) {
            None | Some(Value::Null) => None,
            Some(v) => Some(v),
        }
    }

    /// Whether `key` is present with an explicit `null`.
    fn is_null(&self, key: &str) -> bool {
        matches!(self.map.and_then(|m| m.get(key)), Some(Value::Null))
    }

    fn invalid(&self, key: &str, v: &Value, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key: self.key_path(key),
            value: show(v),
            reason: reason.into(),
        }
    }

    /// Like [`Section::invalid`] for a value that may hold a secret: its
    /// type is named, the value never shown.
    fn invalid_secret(&self, key: &str, v: &Value, reason: impl Into<String>) -> ConfigError {
        let kind = match v {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::Sequence(_) => "a list",
            Value::Mapping(_) => "a table",
            Value::Tagged(_) => "a tagged value",
        };
        ConfigError::Invalid {
            key: self.key_path(key),
            value: format!("<{kind}, not shown>"),
            reason: reason.into(),
        }
    }

    fn section(&self, key: &str) -> Result<Section<'a>, ConfigError> {
        let map = match self.get(key) {
            None => None,
            Some(Value::Mapping(m)) => Some(m),
            Some(v) => return Err(self.invalid(key, v, "expected a table")),
        };
        Ok(Section {
            map,
            path: self.key_path(key),
        })
    }

    fn bool_or(&self, key: &str, default: bool) -> Result<bool, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(self.invalid(key, v, "expected true or false")),
        }
    }

    fn u64_or(&self, key: &str, default: u64, min: u64) -> Result<u64, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(v @ Value::Number(n)) => match n.as_u64() {
                Some(x) if x >= min => Ok(x),
                _ => Err(self.invalid(key, v, format!("expected an integer >= {min}"))),
            },
            Some(v) => Err(self.invalid(key, v, format!("expected an integer >= {min}"))),
        }
    }

    fn opt_string(&self, key: &str) -> Result<Option<String>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(self.invalid(key, v, "expected a string")),
        }
    }

    fn string_or(&self, key: &str, default: &str) -> Result<String, ConfigError> {
        Ok(self.opt_string(key)?.unwrap_or_else(|| default.to_string()))
    }

    /// A list; a single scalar is accepted as a one-element list. `None` when absent or null.
    fn list(&self, key: &str) -> Result<Option<Vec<&'a Value>>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Sequence(s)) => Ok(Some(s.iter().collect())),
            Some(v @ Value::Mapping(_)) => Err(self.invalid(key, v, "expected a list")),
            Some(v) => Ok(Some(vec![v])),
        }
    }

    fn string_list(&self, key: &str) -> Result<Option<Vec<String>>, ConfigError> {
        let Some(items) = self.list(key)? else {
            return Ok(None);
        };
        items
            .into_iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.clone()),
                other => Err(self.invalid(&format!("{key}[{i}]"), other, "expected a string")),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    fn cidr_list(&self, key: &str) -> Result<Option<Vec<IpNet>>, ConfigError> {
        let Some(items) = self.list(key)? else {
            return Ok(None);
        };
        items
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                let entry = format!("{key}[{i}]");
                let Value::String(s) = v else {
                    return Err(self.invalid(&entry, v, "expected an IP or CIDR string"));
                };
                parse_cidr(s.trim())
                    .ok_or_else(|| self.invalid(&entry, v, "not an IP address or CIDR"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// An `{ip, port}` table; port 0 is allowed (the OS picks one, handy in tests).
    fn listen_addr(&self, key: &str, default: ListenAddr) -> Result<ListenAddr, ConfigError> {
        let sec = self.section(key)?;
        let ip = match sec.get("ip") {
            None => default.ip,
            Some(v @ Value::String(s)) => {
                let bare = s.trim().trim_start_matches('[').trim_end_matches(']');
                bare.parse()
                    .map_err(|_| sec.invalid("ip", v, "expected an IP address"))?
            }
            Some(v) => return Err(sec.invalid("ip", v, "expected an IP address")),
        };
        // APISIX reads the port with tonumber(), so a numeric string is accepted too.
        let port = match sec.get("port") {
            None => default.port,
            Some(v) => {
                let n = match v {
                    Value::Number(n) => n.as_u64(),
                    Value::String(s) => s.trim().parse::<u64>().ok(),
                    _ => None,
                };
                n.and_then(|n| u16::try_from(n).ok())
                    .ok_or_else(|| sec.invalid("port", v, "expected an integer 0-65535"))?
            }
        };
        Ok(ListenAddr { ip, port })
    }
}

fn parse_cidr(s: &str) -> Option<IpNet> {
    if let Ok(net) = s.parse::<IpNet>() {
        return Some(net);
    }
    s.parse::<IpAddr>().ok().map(IpNet::from)
}

fn build(root: &Value) -> Result<Config, ConfigError> {
    let root_map = match root {
        Value::Mapping(m) => Some(m),
        Value::Null => None,
        other => {
            return Err(ConfigError::Invalid {
                key: "config.yaml".into(),
                value: show(other),
                reason: "expected a table at the top level".into(),
            })
        }
    };
    let top = Section {
        map: root_map,
        path: String::new(),
    };
    let deployment = build_deployment(&top)?;
    let mut apisix = build_apisix(&top)?;
    // APISIX forces the Admin API by role (apisix/cli/file.lua).
    match deployment.role {
        DeploymentRole::DataPlane => apisix.enable_admin = false,
        DeploymentRole::ControlPlane => apisix.enable_admin = true,
        DeploymentRole::Traditional => {}
    }
    let plugin_attr = {
        let sec = top.section("plugin_attr")?.section("prometheus")?;
        let d = Prometheus::default();
        PluginAttr {
            prometheus: Prometheus {
                export_uri: sec.string_or("export_uri", &d.export_uri)?,
                metric_prefix: sec.string_or("metric_prefix", &d.metric_prefix)?,
                enable_export_server: sec
                    .bool_or("enable_export_server", d.enable_export_server)?,
                export_addr: sec.listen_addr("export_addr", d.export_addr)?,
                refresh_interval: sec.u64_or("refresh_interval", d.refresh_interval, 1)?,
            },
        }
    };
    let nginx_config = {
        let nginx = top.section("nginx_config")?;
        let shutdown = nginx_duration(
            &nginx,
            "worker_shutdown_timeout",
            NginxConfig::default().worker_shutdown_timeout,
        )?;
        let http_sec = nginx.section("http")?;
        let dh = NginxHttp::default();
        let http = NginxHttp {
            client_header_timeout: nginx_duration(
                &http_sec,
                "client_header_timeout",
                dh.client_header_timeout,
            )?,
            client_body_timeout: nginx_duration(
                &http_sec,
                "client_body_timeout",
                dh.client_body_timeout,
            )?,
            keepalive_timeout: nginx_duration(
                &http_sec,
                "keepalive_timeout",
                dh.keepalive_timeout,
            )?,
        };
        let worker_processes = worker_processes(&nginx)?;
        let event = nginx.section("event")?;
        let worker_connections = event.u64_or(
            "worker_connections",
            NginxConfig::default().worker_connections,
            2,
        )?;
        let sec = nginx.section("stream")?;
        let d = NginxStream::default();
        let escape = sec.string_or("access_log_format_escape", "default")?;
        let access_log_format_escape =
            crate::access_log::Escape::parse(&escape).ok_or_else(|| {
                sec.invalid(
                    "access_log_format_escape",
                    &Value::String(escape.clone()),
                    "expected default, json or none",
                )
            })?;
        // A block scalar (`|`) ends in a newline that is not part of the line.
        let access_log_format = sec
            .string_or("access_log_format", &d.access_log_format)?
            .trim_end_matches(['\n', '\r'])
            .to_string();
        if let Err(e) =
            crate::access_log::Template::compile(&access_log_format, access_log_format_escape)
        {
            return Err(sec.invalid(
                "access_log_format",
                &Value::String(access_log_format.clone()),
                e.to_string(),
            ));
        }
        let level = nginx.string_or("error_log_level", "info")?;
        let error_log_level = ErrorLogLevel::parse(&level).ok_or_else(|| {
            nginx.invalid(
                "error_log_level",
                &Value::String(level.clone()),
                "expected debug, info, notice, warn, error, crit, alert or emerg",
            )
        })?;
        NginxConfig {
            error_log: nginx.string_or("error_log", "stderr")?,
            error_log_level,
            worker_connections,
            http,
            worker_shutdown_timeout: shutdown,
            worker_processes,
            stream: NginxStream {
                real_ip_from: sec.cidr_list("real_ip_from")?.unwrap_or_default(),
                enable_access_log: sec.bool_or("enable_access_log", d.enable_access_log)?,
                access_log: sec.string_or("access_log", &d.access_log)?,
                access_log_format,
                access_log_format_escape,
            },
        }
    };
    let stream_plugins = if top.is_null("stream_plugins") {
        Vec::new()
    } else {
        top.string_list("stream_plugins")?
            .unwrap_or_else(default_stream_plugins)
    };
    let xrpc_protocols = read_xrpc(&top.section("xrpc")?)?;
    let discovery = super::discovery::read(
        root_map.and_then(|m| m.get("discovery")),
        root_map.and_then(|m| m.get("apisix")),
    )?;
    let config = Config {
        apisix,
        deployment,
        plugin_attr,
        nginx_config,
        stream_plugins,
        xrpc_protocols,
        discovery,
    };
    validate::validate(&config)?;
    Ok(config)
}

/// `xrpc.protocols`: `[{name: redis}, ...]`, each a protocol this build
/// implements.
fn read_xrpc(sec: &Section<'_>) -> Result<Vec<String>, ConfigError> {
    let mut names = Vec::new();
    for (i, item) in sec
        .list("protocols")?
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        let key = format!("protocols[{i}]");
        let name = match item {
            Value::Mapping(m) => m.get("name").and_then(Value::as_str),
            _ => None,
        };
        let Some(name) = name else {
            return Err(sec.invalid(&key, item, "expected a table with a name"));
        };
        if !crate::model::xrpc::IMPLEMENTED.contains(&name) {
            return Err(sec.invalid(
                &key,
                item,
                format!(
                    "unknown protocol [{name}]; this build implements {}",
                    crate::model::xrpc::IMPLEMENTED.join(", ")
                ),
            ));
        }
        names.push(name.to_string());
    }
    Ok(names)
}

fn build_apisix(top: &Section<'_>) -> Result<Apisix, ConfigError> {
    let sec = top.section("apisix")?;
    let d = Apisix::default();
    let proxy_mode = match sec.get("proxy_mode") {
        None => d.proxy_mode,
        Some(Value::String(s)) if s == "http" => ProxyMode::Http,
        Some(Value::String(s)) if s == "stream" => ProxyMode::Stream,
        Some(Value::String(s)) if s == "http&stream" => ProxyMode::HttpAndStream,
        Some(v) => {
            return Err(sec.invalid("proxy_mode", v, "expected http, stream or http&stream"))
        }
    };
    let pp_sec = sec.section("proxy_protocol")?;
    let proxy_protocol = ProxyProtocol {
        enable_tcp_pp: pp_sec.bool_or("enable_tcp_pp", false)?,
        enable_tcp_pp_to_upstream: pp_sec.bool_or("enable_tcp_pp_to_upstream", false)?,
    };
    let stream_proxy = match build_stream_proxy(&sec, &proxy_protocol) {
        Ok(sp) => sp,
        // APISIX checks the entries only when stream is on; otherwise they are unused.
        Err(e) if proxy_mode == ProxyMode::Http => {
            tracing::warn!(error = %e, "ignoring stream_proxy: proxy_mode is http");
            None
        }
        Err(e) => return Err(e),
    };
    let enc = sec.section("data_encryption")?;
    let keyring = if enc.is_null("keyring") {
        Vec::new()
    } else {
        if let Some(v @ Value::Mapping(_)) = enc.get("keyring") {
            return Err(enc.invalid_secret("keyring", v, "expected a list"));
        }
        match enc.list("keyring")? {
            None => d.data_encryption.keyring.clone(),
            Some(items) => items
                .into_iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::String(s) if s.len() == 16 || s.len() == 32 => Ok(Secret::new(s)),
                    // The value itself is a secret: show only its length.
                    Value::String(s) => Err(ConfigError::Invalid {
                        key: enc.key_path(&format!("keyring[{i}]")),
                        value: format!("<{} bytes>", s.len()),
                        reason: "expected a 16- or 32-byte string".into(),
                    }),
                    other => Err(enc.invalid_secret(
                        &format!("keyring[{i}]"),
                        other,
                        "expected a string",
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?,
        }
    };
    Ok(Apisix {
        proxy_mode,
        stream_proxy,
        enable_admin: sec.bool_or("enable_admin", d.enable_admin)?,
        enable_control: sec.bool_or("enable_control", d.enable_control)?,
        control: sec.listen_addr("control", d.control)?,
        enable_reuseport: sec.bool_or("enable_reuseport", d.enable_reuseport)?,
        proxy_protocol,
        ssl: read_ssl(&sec.section("ssl")?)?,
        data_encryption: DataEncryption { keyring },
        disable_upstream_healthcheck: sec.bool_or(
            "disable_upstream_healthcheck",
            d.disable_upstream_healthcheck,
        )?,
    })
}

fn read_ssl(ssl: &Section<'_>) -> Result<SslConf, ConfigError> {
    let d = SslConf::default();
    let conf = SslConf {
        fallback_sni: ssl.opt_string("fallback_sni")?,
        ssl_trusted_certificate: ssl.opt_string("ssl_trusted_certificate")?,
        ssl_protocols: ssl.string_or("ssl_protocols", &d.ssl_protocols)?,
        ssl_ciphers: ssl.string_or("ssl_ciphers", &d.ssl_ciphers)?,
        ssl_session_tickets: ssl.bool_or("ssl_session_tickets", d.ssl_session_tickets)?,
        ssl_session_cache_size: usize::try_from(ssl.u64_or(
            "ssl_session_cache_size",
            d.ssl_session_cache_size as u64,
            0,
        )?)
        .unwrap_or(usize::MAX),
        ssl_session_timeout: ssl.u64_or("ssl_session_timeout", d.ssl_session_timeout, 1)?,
    };
    if let Err(e) = crate::tls::session::Policy::new(&conf) {
        let key = if e.contains("ssl_ciphers") {
            "ssl_ciphers"
        } else {
            "ssl_protocols"
        };
        let value = ssl.get(key).cloned().unwrap_or(Value::Null);
        return Err(ssl.invalid(key, &value, e));
    }
    Ok(conf)
}

fn build_stream_proxy(
    apisix: &Section<'_>,
    pp: &ProxyProtocol,
) -> Result<Option<StreamProxy>, ConfigError> {
    if apisix.get("stream_proxy").is_none() {
        return Ok(None);
    }
    let sec = apisix.section("stream_proxy")?;
    let mut out = StreamProxy::default();
    for (list, is_tcp) in [("tcp", true), ("udp", false)] {
        let Some(v) = sec.get(list) else { continue };
        let Value::Sequence(items) = v else {
            return Err(sec.invalid(list, v, "expected a list of listener entries"));
        };
        if items.is_empty() {
            return Err(sec.invalid(list, v, "expected at least one entry"));
        }
        let specs = if is_tcp { &mut out.tcp } else { &mut out.udp };
        for item in items {
            for spec in listen::parse_entry(item, is_tcp, pp)? {
                if specs.iter().any(|s| s.addr == spec.addr) {
                    return Err(ConfigError::Listen {
                        list: if is_tcp { "tcp" } else { "udp" },
                        msg: format!("duplicate address {}: {}", spec.addr, show(item)),
                    });
                }
                specs.push(spec);
            }
        }
    }
    Ok(Some(out))
}

fn build_deployment(top: &Section<'_>) -> Result<Deployment, ConfigError> {
    let sec = top.section("deployment")?;
    let role = match sec.get("role") {
        None => DeploymentRole::Traditional,
        Some(Value::String(s)) if s == "traditional" => DeploymentRole::Traditional,
        Some(Value::String(s)) if s == "control_plane" => DeploymentRole::ControlPlane,
        Some(Value::String(s)) if s == "data_plane" => DeploymentRole::DataPlane,
        Some(v) => {
            return Err(sec.invalid(
                "role",
                v,
                "expected traditional, control_plane or data_plane",
            ))
        }
    };
    let (role_key, default_provider) = match role {
        DeploymentRole::Traditional => ("role_traditional", ConfigProvider::Local),
        // Planes exist to share one store, so they default to etcd as in APISIX.
        DeploymentRole::ControlPlane => ("role_control_plane", ConfigProvider::Etcd),
        DeploymentRole::DataPlane => ("role_data_plane", ConfigProvider::Etcd),
    };
    let role_sec = sec.section(role_key)?;
    let config_provider = match role_sec.get("config_provider") {
        None => default_provider,
        Some(Value::String(s)) => match s.as_str() {
            "local" => ConfigProvider::Local,
            "etcd" => ConfigProvider::Etcd,
            "yaml" => ConfigProvider::Yaml,
            "json" => ConfigProvider::Json,
            _ => {
                return Err(role_sec.invalid(
                    "config_provider",
                    &Value::String(s.clone()),
                    "expected local, etcd, yaml or json",
                ))
            }
        },
        Some(v) => {
            return Err(role_sec.invalid(
                "config_provider",
                v,
                "expected local, etcd, yaml or json",
            ))
        }
    };
    let admin = build_admin(&sec.section("admin")?)?;
    let etcd = build_etcd(&sec.section("etcd")?)?;
    let local_sec = sec.section("local")?;
    let local = Local {
        data_dir: local_sec
            .opt_string("data_dir")?
            .map(PathBuf::from)
            .unwrap_or_else(|| Local::default().data_dir),
    };
    Ok(Deployment {
        role,
        config_provider,
        admin,
        etcd,
        local,
        standalone_file: Path::new("conf").join(standalone_name(config_provider)),
    })
}

fn build_admin(sec: &Section<'_>) -> Result<Admin, ConfigError> {
    let d = Admin::default();
    // An explicit null deletes the default key list, as APISIX's merge does.
    let admin_key = if sec.is_null("admin_key") {
        Vec::new()
    } else {
        match sec.get("admin_key") {
            None => d.admin_key.clone(),
            Some(Value::Sequence(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| build_admin_key(sec, i, v))
                .collect::<Result<Vec<_>, _>>()?,
            Some(v) => return Err(sec.invalid_secret("admin_key", v, "expected a list")),
        }
    };
    // Absent or null allow_admin means every client may reach the Admin API.
    let allow_admin = if sec.is_null("allow_admin") {
        None
    } else if sec.get("allow_admin").is_none() {
        d.allow_admin.clone()
    } else {
        sec.cidr_list("allow_admin")?
    };
    Ok(Admin {
        admin_key,
        admin_key_required: sec.bool_or("admin_key_required", d.admin_key_required)?,
        admin_listen: sec.listen_addr("admin_listen", d.admin_listen)?,
        allow_admin,
        enable_admin_cors: sec.bool_or("enable_admin_cors", d.enable_admin_cors)?,
    })
}

fn build_admin_key(sec: &Section<'_>, i: usize, v: &Value) -> Result<AdminKey, ConfigError> {
    let entry_key = format!("admin_key[{i}]");
    let Value::Mapping(m) = v else {
        return Err(sec.invalid_secret(&entry_key, v, "expected a table {name, key, role}"));
    };
    let entry = Section {
        map: Some(m),
        path: sec.key_path(&entry_key),
    };
    let name = entry.string_or("name", "")?;
    let key = match entry.get("key") {
        None => Secret::default(),
        Some(Value::String(s)) => Secret::new(s.clone()),
        // A key that YAML reads as a number is still a key.
        Some(Value::Number(n)) => Secret::new(n.to_string()),
        Some(v) => return Err(entry.invalid_secret("key", v, "expected a string")),
    };
    let role = match entry.get("role") {
        None => AdminRole::Admin,
        Some(Value::String(s)) if s == "admin" => AdminRole::Admin,
        Some(Value::String(s)) if s == "viewer" => AdminRole::Viewer,
        Some(v) => return Err(entry.invalid("role", v, "expected admin or viewer")),
    };
    Ok(AdminKey { name, key, role })
}

fn build_etcd(sec: &Section<'_>) -> Result<Etcd, ConfigError> {
    let d = Etcd::default();
    let host = match sec.string_list("host")? {
        None => d.host.clone(),
        Some(hosts) => {
            if hosts.is_empty() {
                return Err(sec.invalid(
                    "host",
                    &Value::Sequence(Vec::new()),
                    "expected at least one URL",
                ));
            }
            for (i, h) in hosts.iter().enumerate() {
                if !(h.starts_with("http://") || h.starts_with("https://")) {
                    return Err(sec.invalid(
                        &format!("host[{i}]"),
                        &Value::String(h.clone()),
                        "expected a URL matching ^https?://",
                    ));
                }
            }
            hosts
        }
    };
    let prefix = sec.string_or("prefix", &d.prefix)?;
    if prefix.is_empty() {
        return Err(sec.invalid("prefix", &Value::String(prefix), "must not be empty"));
    }
    let startup_retry = sec.u64_or("startup_retry", u64::from(d.startup_retry), 0)?;
    let startup_retry = u32::try_from(startup_retry).map_err(|_| {
        sec.invalid(
            "startup_retry",
            &Value::Number(startup_retry.into()),
            "too large",
        )
    })?;
    let tls = if sec.get("tls").is_some() {
        let t = sec.section("tls")?;
        Some(EtcdTls {
            cert: t.opt_string("cert")?,
            key: t.opt_string("key")?,
            verify: t.bool_or("verify", true)?,
            sni: t.opt_string("sni")?,
        })
    } else {
        None
    };
    Ok(Etcd {
        host,
        prefix,
        timeout: sec.u64_or("timeout", d.timeout, 1)?,
        watch_timeout: sec.u64_or("watch_timeout", d.watch_timeout, 1)?,
        keepalive_interval: sec.u64_or("keepalive_interval", d.keepalive_interval, 1)?,
        startup_retry,
        resync_delay: sec.u64_or("resync_delay", d.resync_delay, 0)?,
        user: sec.opt_string("user")?,
        password: match sec.get("password") {
            None => None,
            Some(Value::String(s)) => Some(Secret::new(s.clone())),
            Some(v) => return Err(sec.invalid_secret("password", v, "expected a string")),
        },
        trusted_ca: None,
        tls,
    })
}
