//! Typed, validated `conf/config.yaml`, with APISIX's key names and defaults.
//!
//! Loading mirrors `apisix/cli/file.lua`: `${{VAR}}` placeholders are substituted in the text,
//! the YAML is read, and every key we use falls back to APISIX's default
//! (`apisix/cli/config.lua`) when absent. Unknown keys are ignored so a whole APISIX config can
//! be pasted in. A YAML `null` deletes a default, as APISIX's merge does: for scalars and
//! tables that means "use the default", for `allow_admin` it means "allow everyone" and for
//! other lists it means "empty". Every error is one line naming the key, the value and why, and
//! is raised before anything binds.

pub mod admin_key;
pub mod listen;

pub use listen::ListenSpec;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde_yaml::{Mapping, Value};

/// String whose Debug/Display print "***" (never leaks keys in logs).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// Wrap a secret value.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The secret itself, for comparisons and for sending it where it belongs.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the secret is the empty string (APISIX's "generate one for me").
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Why `config.yaml` could not be used; `Display` is always one line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("failed to read configuration file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file could not be written (admin key write-back).
    #[error("failed to write configuration file {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The text is not valid YAML.
    #[error("failed to parse {origin}: {message}")]
    Syntax {
        /// The file path, or `config.yaml` when parsing text.
        origin: String,
        /// Parser message with line and column.
        message: String,
    },
    /// A `${{NAME}}` placeholder without default names an unset variable.
    #[error("failed to handle configuration: can't find environment variable {0}")]
    MissingEnv(String),
    /// A key has a value of the wrong type or out of range.
    #[error("invalid {key}: {value} ({reason})")]
    Invalid {
        /// Dotted key path, e.g. `apisix.control.port`.
        key: String,
        /// The offending value as written.
        value: String,
        /// What was expected.
        reason: String,
    },
    /// A `stream_proxy` listener entry is invalid (APISIX's wording).
    #[error("invalid stream_proxy.{list} entry: {msg}")]
    Listen {
        /// `tcp` or `udp`.
        list: &'static str,
        /// What is wrong, ending with the entry.
        msg: String,
    },
    /// Two enabled API listeners use the same port (APISIX's wording).
    #[error("{name} {port} conflicts with {other}")]
    PortConflict {
        /// The listener checked last, e.g. `control port`.
        name: &'static str,
        /// The shared port.
        port: u16,
        /// The listener that already has it.
        other: &'static str,
    },
    /// Admin API reachable beyond localhost with no key configured.
    #[error("ERROR: missing valid Admin API token. (deployment.admin.admin_key is empty while allow_admin is not [127.0.0.0/24]; add a key or set admin_key_required: false)")]
    MissingAdminToken,
    /// An admin key is APISIX's published sample key while the Admin API is
    /// reachable from beyond loopback.
    #[error("refusing to start: deployment.admin.admin_key[{index}] (\"{name}\") is the sample key published in APISIX's documentation, and the Admin API is reachable beyond loopback ({why}); set a unique key (or key: '' to have one generated), or keep both admin_listen.ip and allow_admin on loopback")]
    SampleAdminKey {
        /// Position of the entry in `admin_key`.
        index: usize,
        /// The entry's `name`.
        name: String,
        /// What makes the Admin API reachable from elsewhere.
        why: String,
    },
    /// Any other inconsistency, worded as APISIX does where it has a message.
    #[error("{0}")]
    Other(String),
    /// Generated admin keys could not be written back into the file text.
    #[error("failed to write the generated admin key into config.yaml: {0}")]
    WriteBack(String),
}

/// The whole `config.yaml`.
#[derive(Debug, Clone)]
pub struct Config {
    /// `apisix` section.
    pub apisix: Apisix,
    /// `deployment` section.
    pub deployment: Deployment,
    /// `plugin_attr` section.
    pub plugin_attr: PluginAttr,
    /// `nginx_config` section (the stream parts we honour).
    pub nginx_config: NginxConfig,
    /// top-level `stream_plugins`; default APISIX's: ip-restriction, limit-conn, mqtt-proxy, syslog, traffic-split
    pub stream_plugins: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            apisix: Apisix::default(),
            deployment: Deployment::default(),
            plugin_attr: PluginAttr::default(),
            nginx_config: NginxConfig::default(),
            stream_plugins: default_stream_plugins(),
        }
    }
}

/// `apisix` section.
#[derive(Debug, Clone)]
pub struct Apisix {
    /// `proxy_mode`.
    pub proxy_mode: ProxyMode,
    /// `stream_proxy`, with every entry expanded; `None` when absent.
    pub stream_proxy: Option<StreamProxy>,
    /// `enable_admin` (forced off on `data_plane`, on for `control_plane`).
    pub enable_admin: bool,
    /// `enable_control`.
    pub enable_control: bool,
    /// `control` listener.
    pub control: ListenAddr,
    /// `enable_reuseport`.
    pub enable_reuseport: bool,
    /// `proxy_protocol` defaults for TCP entries.
    pub proxy_protocol: ProxyProtocol,
    /// `ssl`.
    pub ssl: SslConf,
    /// `data_encryption`.
    pub data_encryption: DataEncryption,
    /// `disable_upstream_healthcheck`.
    pub disable_upstream_healthcheck: bool,
}

impl Default for Apisix {
    fn default() -> Self {
        Apisix {
            proxy_mode: ProxyMode::Http,
            stream_proxy: None,
            enable_admin: true,
            enable_control: true,
            control: ListenAddr::new(Ipv4Addr::LOCALHOST.into(), 9090),
            enable_reuseport: true,
            proxy_protocol: ProxyProtocol::default(),
            ssl: SslConf::default(),
            data_encryption: DataEncryption::default(),
            disable_upstream_healthcheck: false,
        }
    }
}

/// `apisix.proxy_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProxyMode {
    /// `http` (APISIX's default): no stream listeners.
    #[default]
    Http,
    /// `stream`.
    Stream,
    /// `http&stream`.
    HttpAndStream,
}

/// `apisix.stream_proxy`, ranges already expanded, one spec per port.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StreamProxy {
    /// TCP listeners.
    pub tcp: Vec<ListenSpec>,
    /// UDP listeners.
    pub udp: Vec<ListenSpec>,
}

/// An `{ip, port}` listener address (port 0 allowed: the OS picks one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenAddr {
    /// `ip`.
    pub ip: IpAddr,
    /// `port`.
    pub port: u16,
}

impl ListenAddr {
    /// Build from parts.
    pub fn new(ip: IpAddr, port: u16) -> Self {
        ListenAddr { ip, port }
    }

    /// The address to bind.
    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.port)
    }
}

/// `apisix.proxy_protocol`: defaults for TCP entries that do not set their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProxyProtocol {
    /// `enable_tcp_pp`.
    pub enable_tcp_pp: bool,
    /// `enable_tcp_pp_to_upstream`.
    pub enable_tcp_pp_to_upstream: bool,
}

/// `apisix.ssl`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SslConf {
    /// `fallback_sni`: SNI assumed when a TLS client sends none.
    pub fallback_sni: Option<String>,
}

/// `apisix.data_encryption`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataEncryption {
    /// `keyring`: AES keys for SSL private keys at rest (first encrypts, all decrypt).
    pub keyring: Vec<Secret>,
}

impl Default for DataEncryption {
    fn default() -> Self {
        DataEncryption {
            keyring: vec![
                Secret::new("qeddd145sfvddff3"),
                Secret::new("edd1c9f0985e76a2"),
            ],
        }
    }
}

/// `deployment` section.
#[derive(Debug, Clone, Default)]
pub struct Deployment {
    /// `role`.
    pub role: DeploymentRole,
    /// `role_<role>.config_provider`.
    pub config_provider: ConfigProvider,
    /// `admin`.
    pub admin: Admin,
    /// `etcd`.
    pub etcd: Etcd,
    /// `local` (our embedded store).
    pub local: Local,
    /// The standalone file read by the `yaml`/`json` providers: `apisix.yaml`
    /// or `apisix.json` beside config.yaml (`conf/` when parsed from text).
    pub standalone_file: PathBuf,
}

/// `deployment.role`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeploymentRole {
    /// `traditional`: serves traffic and the Admin API.
    #[default]
    Traditional,
    /// `control_plane`: Admin API only.
    ControlPlane,
    /// `data_plane`: traffic only, Admin API off.
    DataPlane,
}

/// Where routes, upstreams and SSL objects live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConfigProvider {
    /// `local`: embedded store in `deployment.local.data_dir` (our default; APISIX's is etcd).
    #[default]
    Local,
    /// `etcd`.
    Etcd,
    /// `yaml`: read-only `conf/apisix.yaml`.
    Yaml,
    /// `json`: read-only `conf/apisix.json`.
    Json,
}

/// `deployment.admin`.
#[derive(Debug, Clone)]
pub struct Admin {
    /// `admin_key` entries.
    pub admin_key: Vec<AdminKey>,
    /// `admin_key_required`.
    pub admin_key_required: bool,
    /// `admin_listen`.
    pub admin_listen: ListenAddr,
    /// `allow_admin`; `None` = all allowed; a bare IP becomes /32 or /128.
    pub allow_admin: Option<Vec<IpNet>>,
    /// `enable_admin_cors`.
    pub enable_admin_cors: bool,
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            admin_key: vec![AdminKey {
                name: "admin".into(),
                key: Secret::default(),
                role: AdminRole::Admin,
            }],
            admin_key_required: true,
            admin_listen: ListenAddr::new(Ipv4Addr::UNSPECIFIED.into(), 9180),
            allow_admin: Some(vec![default_allow_admin()]),
            enable_admin_cors: true,
        }
    }
}

fn default_allow_admin() -> IpNet {
    IpNet::V4(ipnet::Ipv4Net::new_assert(Ipv4Addr::new(127, 0, 0, 0), 24))
}

/// The admin key printed in APISIX's documentation and sample config files;
/// anyone can try it.
pub const SAMPLE_ADMIN_KEY: &str = "edd1c9f034335f136f87ad84b625c8f1";

/// Loopback networks: 127.0.0.0/8, ::1 and IPv4-mapped 127.0.0.0/8.
const LOOPBACK_NETS: [IpNet; 3] = [
    IpNet::new_assert(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8),
    IpNet::new_assert(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST), 128),
    IpNet::new_assert(
        IpAddr::V6(Ipv4Addr::new(127, 0, 0, 0).to_ipv6_mapped()),
        104,
    ),
];

/// Whether every address of `net` is a loopback address.
fn is_loopback_net(net: &IpNet) -> bool {
    LOOPBACK_NETS.iter().any(|lo| lo.contains(net))
}

impl Admin {
    /// Entries (index, name) whose key is [`SAMPLE_ADMIN_KEY`].
    pub fn sample_key_entries(&self) -> Vec<(usize, &str)> {
        self.admin_key
            .iter()
            .enumerate()
            .filter(|(_, k)| k.key.expose() == SAMPLE_ADMIN_KEY)
            .map(|(i, k)| (i, k.name.as_str()))
            .collect()
    }

    /// Why clients other than this host can reach the Admin API, or `None`
    /// when both `admin_listen.ip` and every `allow_admin` entry are loopback.
    pub fn exposure(&self) -> Option<String> {
        let ip = self.admin_listen.ip;
        if !is_loopback_net(&IpNet::from(ip)) {
            return Some(format!("admin_listen.ip is {ip}"));
        }
        match &self.allow_admin {
            None => Some("allow_admin is null, so every client is allowed".into()),
            Some(nets) => nets
                .iter()
                .find(|n| !is_loopback_net(n))
                .map(|n| format!("allow_admin contains {n}")),
        }
    }
}

/// One `deployment.admin.admin_key` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminKey {
    /// `name`.
    pub name: String,
    /// `key` (empty = generate at start-up).
    pub key: Secret,
    /// `role`.
    pub role: AdminRole,
}

/// Admin key role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AdminRole {
    /// `admin`: every method.
    #[default]
    Admin,
    /// `viewer`: GET only.
    Viewer,
}

/// `deployment.etcd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Etcd {
    /// `host`: `http(s)://` URLs.
    pub host: Vec<String>,
    /// `prefix`.
    pub prefix: String,
    /// `timeout` (seconds).
    pub timeout: u64,
    /// `watch_timeout` (seconds).
    pub watch_timeout: u64,
    /// `startup_retry`.
    pub startup_retry: u32,
    /// `resync_delay` (seconds).
    pub resync_delay: u64,
    /// `user`.
    pub user: Option<String>,
    /// `password`.
    pub password: Option<Secret>,
    /// `tls`.
    pub tls: Option<EtcdTls>,
}

impl Default for Etcd {
    fn default() -> Self {
        Etcd {
            host: vec!["http://127.0.0.1:2379".into()],
            prefix: "/apisix".into(),
            timeout: 30,
            watch_timeout: 50,
            startup_retry: 2,
            resync_delay: 5,
            user: None,
            password: None,
            tls: None,
        }
    }
}

/// `deployment.etcd.tls`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTls {
    /// `cert`: client certificate file.
    pub cert: Option<String>,
    /// `key`: client key file.
    pub key: Option<String>,
    /// `verify`: check the server certificate (default true).
    pub verify: bool,
    /// `sni`.
    pub sni: Option<String>,
}

/// `deployment.local` (our extension).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Local {
    /// `data_dir`: relative paths are resolved against the config file's directory by `load`.
    pub data_dir: PathBuf,
}

impl Default for Local {
    fn default() -> Self {
        Local {
            data_dir: PathBuf::from("data"),
        }
    }
}

/// `plugin_attr` section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PluginAttr {
    /// `prometheus`.
    pub prometheus: Prometheus,
}

/// `plugin_attr.prometheus`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prometheus {
    /// `export_uri`.
    pub export_uri: String,
    /// `metric_prefix`.
    pub metric_prefix: String,
    /// `enable_export_server`.
    pub enable_export_server: bool,
    /// `export_addr`.
    pub export_addr: ListenAddr,
    /// `refresh_interval` (seconds).
    pub refresh_interval: u64,
}

impl Default for Prometheus {
    fn default() -> Self {
        Prometheus {
            export_uri: "/apisix/prometheus/metrics".into(),
            metric_prefix: "apisix_".into(),
            enable_export_server: true,
            export_addr: ListenAddr::new(Ipv4Addr::LOCALHOST.into(), 9091),
            refresh_interval: 15,
        }
    }
}

/// `nginx_config` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NginxConfig {
    /// `stream`.
    pub stream: NginxStream,
    /// `worker_shutdown_timeout`: how long SIGTERM/SIGINT lets open
    /// connections finish before closing them (APISIX default 240s).
    pub worker_shutdown_timeout: std::time::Duration,
    /// `event.worker_connections`: sockets one worker may hold (each proxied
    /// session holds two, as in nginx); APISIX default 10620.
    pub worker_connections: u64,
    /// `http`: timeouts of the Admin API, Control API and metrics servers.
    pub http: NginxHttp,
}

/// `nginx_config.http`: the parts that apply to our HTTP APIs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NginxHttp {
    /// `client_header_timeout`: a request head must arrive within it.
    pub client_header_timeout: std::time::Duration,
    /// `client_body_timeout`: a request body must arrive within it.
    pub client_body_timeout: std::time::Duration,
    /// `keepalive_timeout`: an idle keep-alive connection is closed after it.
    pub keepalive_timeout: std::time::Duration,
}

impl Default for NginxHttp {
    fn default() -> Self {
        let s60 = std::time::Duration::from_secs(60);
        NginxHttp {
            client_header_timeout: s60,
            client_body_timeout: s60,
            keepalive_timeout: s60,
        }
    }
}

impl Default for NginxConfig {
    fn default() -> Self {
        NginxConfig {
            worker_connections: 10620,
            http: NginxHttp::default(),
            stream: NginxStream::default(),
            worker_shutdown_timeout: std::time::Duration::from_secs(240),
        }
    }
}

/// Parse an nginx time value: a number of seconds, or `<n>ms|s|m|h`.
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
    Some(std::time::Duration::from_secs_f64(secs))
}

/// `nginx_config.stream`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NginxStream {
    /// `real_ip_from`: peers trusted to send a PROXY protocol client address.
    pub real_ip_from: Vec<IpNet>,
    /// `enable_access_log`.
    pub enable_access_log: bool,
    /// `access_log` path.
    pub access_log: String,
}

impl Default for NginxStream {
    fn default() -> Self {
        NginxStream {
            real_ip_from: Vec::new(),
            enable_access_log: false,
            access_log: "logs/access_stream.log".into(),
        }
    }
}

fn default_stream_plugins() -> Vec<String> {
    [
        "ip-restriction",
        "limit-conn",
        "mqtt-proxy",
        "syslog",
        "traffic-split",
    ]
    .into_iter()
    .map(String::from)
    .collect()
}

impl Config {
    /// Parse config.yaml text; `${{VAR}}` / `${{VAR:=default}}` read from the process environment.
    pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
        Self::from_yaml_with_env(text, &process_env)
    }

    /// Same, with an injected environment (tests must not call std::env::set_var).
    pub fn from_yaml_with_env(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        parse_text(text, env, "config.yaml")
    }

    /// Read and parse the file; relative `data_dir` is resolved against the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = parse_text(&text, &process_env, &path.display().to_string())?;
        let dir = path.parent().unwrap_or_else(|| Path::new(""));
        if config.deployment.local.data_dir.is_relative() {
            config.deployment.local.data_dir = dir.join(&config.deployment.local.data_dir);
        }
        config.deployment.standalone_file =
            dir.join(standalone_name(config.deployment.config_provider));
        Ok(config)
    }

    /// proxy_mode is stream or http&stream AND stream_proxy is present.
    pub fn stream_enabled(&self) -> bool {
        self.apisix.proxy_mode != ProxyMode::Http && self.apisix.stream_proxy.is_some()
    }
}

/// File name of the standalone configuration for a provider (`apisix.json`
/// for `json`, `apisix.yaml` otherwise).
fn standalone_name(provider: ConfigProvider) -> &'static str {
    match provider {
        ConfigProvider::Json => "apisix.json",
        _ => "apisix.yaml",
    }
}

fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Replace `${{NAME}}` / `${{NAME:=default}}` (spaces allowed inside the braces) in `text`.
///
/// Lines whose first non-blank character is `#` are left alone so that a commented-out
/// placeholder does not demand a variable. A placeholder whose name is not a valid variable
/// name is left as written, like APISIX's pattern match does.
pub fn substitute_env(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        if line.trim_start().starts_with('#') {
            out.push_str(line);
            continue;
        }
        let mut rest = line;
        while let Some(start) = rest.find("${{") {
            let after = &rest[start + 3..];
            let Some(end) = after.find("}}") else { break };
            let inner = &after[..end];
            let (name, default) = match inner.split_once(":=") {
                Some((n, d)) => (n.trim(), Some(d.trim())),
                None => (inner.trim(), None),
            };
            if !is_env_name(name) {
                out.push_str(&rest[..start + 3]);
                rest = after;
                continue;
            }
            out.push_str(&rest[..start]);
            match (env(name), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => return Err(ConfigError::MissingEnv(name.to_string())),
            }
            rest = &after[end + 2..];
        }
        out.push_str(rest);
    }
    Ok(out)
}

fn is_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A value as it appears in error messages: strings quoted, tables as compact JSON.
fn show(v: &Value) -> String {
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

fn parse_text(
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
            parse_nginx_duration(&text)
                .ok_or_else(|| sec.invalid(key, v, "expected a duration such as 30s, 500ms or 2m"))
        }
    }
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
        let event = nginx.section("event")?;
        let worker_connections = event.u64_or(
            "worker_connections",
            NginxConfig::default().worker_connections,
            2,
        )?;
        let sec = nginx.section("stream")?;
        let d = NginxStream::default();
        NginxConfig {
            worker_connections,
            http,
            worker_shutdown_timeout: shutdown,
            stream: NginxStream {
                real_ip_from: sec.cidr_list("real_ip_from")?.unwrap_or_default(),
                enable_access_log: sec.bool_or("enable_access_log", d.enable_access_log)?,
                access_log: sec.string_or("access_log", &d.access_log)?,
            },
        }
    };
    let stream_plugins = if top.is_null("stream_plugins") {
        Vec::new()
    } else {
        top.string_list("stream_plugins")?
            .unwrap_or_else(default_stream_plugins)
    };
    let config = Config {
        apisix,
        deployment,
        plugin_attr,
        nginx_config,
        stream_plugins,
    };
    validate(&config)?;
    Ok(config)
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
        ssl: SslConf {
            fallback_sni: sec.section("ssl")?.opt_string("fallback_sni")?,
        },
        data_encryption: DataEncryption { keyring },
        disable_upstream_healthcheck: sec.bool_or(
            "disable_upstream_healthcheck",
            d.disable_upstream_healthcheck,
        )?,
    })
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
        startup_retry,
        resync_delay: sec.u64_or("resync_delay", d.resync_delay, 0)?,
        user: sec.opt_string("user")?,
        password: match sec.get("password") {
            None => None,
            Some(Value::String(s)) => Some(Secret::new(s.clone())),
            Some(v) => return Err(sec.invalid_secret("password", v, "expected a string")),
        },
        tls,
    })
}

/// Cross-key checks APISIX performs in `apisix/cli/ops.lua` before rendering nginx.conf.
fn validate(c: &Config) -> Result<(), ConfigError> {
    // Same order as ops.lua: the later listener is named first in the message.
    let mut taken: Vec<(u16, &'static str)> = Vec::new();
    let mut claim = |name: &'static str, port: u16| -> Result<(), ConfigError> {
        // Port 0 asks the OS for a free port, so it never clashes.
        if port == 0 {
            return Ok(());
        }
        if let Some((_, other)) = taken.iter().find(|(p, _)| *p == port) {
            return Err(ConfigError::PortConflict { name, port, other });
        }
        taken.push((port, name));
        Ok(())
    };
    if c.apisix.enable_admin {
        claim("admin port", c.deployment.admin.admin_listen.port)?;
    }
    if c.apisix.enable_control {
        claim("control port", c.apisix.control.port)?;
    }
    if c.plugin_attr.prometheus.enable_export_server {
        claim("prometheus port", c.plugin_attr.prometheus.export_addr.port)?;
    }

    let admin = &c.deployment.admin;
    if c.apisix.enable_admin && admin.admin_key_required {
        let local_only =
            matches!(&admin.allow_admin, Some(v) if v.len() == 1 && v[0] == default_allow_admin());
        if !local_only {
            if admin.admin_key.is_empty() {
                return Err(ConfigError::MissingAdminToken);
            }
            for k in &admin.admin_key {
                // Empty admin-role keys get generated at start-up; others stay unusable.
                if k.key.is_empty() && k.role != AdminRole::Admin {
                    tracing::warn!(name = %k.name, "admin_key entry has an empty key and will never match");
                }
            }
        }
    }

    // A key everyone knows guards nothing once others can connect.
    if c.apisix.enable_admin && admin.admin_key_required {
        if let Some((index, name)) = admin.sample_key_entries().first().copied() {
            match admin.exposure() {
                Some(why) => {
                    return Err(ConfigError::SampleAdminKey {
                        index,
                        name: name.to_string(),
                        why,
                    })
                }
                None => tracing::warn!(
                    name,
                    "admin_key entry uses the sample key from APISIX's documentation; the Admin API is loopback-only, but replace the key before exposing it"
                ),
            }
        }
    }

    if c.stream_plugins.iter().any(|p| p == "prometheus")
        && !c.plugin_attr.prometheus.enable_export_server
    {
        return Err(ConfigError::Other(
            "L4 prometheus metric should be exposed via export server".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn parse(text: &str) -> Result<Config, String> {
        Config::from_yaml_with_env(text, &no_env).map_err(|e| e.to_string())
    }

    fn err(text: &str) -> String {
        let e = parse(text).unwrap_err();
        assert!(!e.contains('\n'), "multi-line error: {e}");
        e
    }

    #[test]
    fn defaults_match_apisix() {
        for c in [Config::default(), parse("").unwrap(), parse("{}").unwrap()] {
            assert_eq!(c.apisix.proxy_mode, ProxyMode::Http);
            assert!(c.apisix.stream_proxy.is_none());
            assert!(!c.stream_enabled());
            assert!(c.apisix.enable_admin && c.apisix.enable_control);
            assert_eq!(c.apisix.control.socket_addr().to_string(), "127.0.0.1:9090");
            assert!(c.apisix.enable_reuseport);
            assert_eq!(c.apisix.proxy_protocol, ProxyProtocol::default());
            assert_eq!(c.apisix.data_encryption.keyring.len(), 2);
            assert_eq!(
                c.apisix.data_encryption.keyring[0].expose(),
                "qeddd145sfvddff3"
            );
            assert!(!c.apisix.disable_upstream_healthcheck);
            let d = &c.deployment;
            assert_eq!(d.role, DeploymentRole::Traditional);
            assert_eq!(d.config_provider, ConfigProvider::Local);
            assert_eq!(
                d.admin.admin_listen.socket_addr().to_string(),
                "0.0.0.0:9180"
            );
            assert_eq!(
                d.admin.allow_admin,
                Some(vec!["127.0.0.0/24".parse().unwrap()])
            );
            assert_eq!(
                d.admin.admin_key,
                vec![AdminKey {
                    name: "admin".into(),
                    key: Secret::default(),
                    role: AdminRole::Admin
                }]
            );
            assert!(d.admin.admin_key_required && d.admin.enable_admin_cors);
            assert_eq!(d.etcd, Etcd::default());
            assert_eq!(d.etcd.host, ["http://127.0.0.1:2379"]);
            assert_eq!(d.etcd.prefix, "/apisix");
            assert_eq!(
                (
                    d.etcd.timeout,
                    d.etcd.watch_timeout,
                    d.etcd.startup_retry,
                    d.etcd.resync_delay
                ),
                (30, 50, 2, 5)
            );
            assert_eq!(d.local.data_dir, PathBuf::from("data"));
            let p = &c.plugin_attr.prometheus;
            assert_eq!(p.export_uri, "/apisix/prometheus/metrics");
            assert_eq!(p.metric_prefix, "apisix_");
            assert!(p.enable_export_server);
            assert_eq!(p.export_addr.socket_addr().to_string(), "127.0.0.1:9091");
            assert_eq!(p.refresh_interval, 15);
            assert_eq!(c.nginx_config.stream, NginxStream::default());
            assert_eq!(c.nginx_config.stream.access_log, "logs/access_stream.log");
            assert_eq!(
                c.stream_plugins,
                [
                    "ip-restriction",
                    "limit-conn",
                    "mqtt-proxy",
                    "syslog",
                    "traffic-split"
                ]
            );
        }
    }

    const INTERFACE_EXAMPLE: &str = r#"
apisix:
  proxy_mode: stream            # http | stream | http&stream; stream routes need stream
  stream_proxy:
    tcp:
      - 9100                    # port on all interfaces
      - "127.0.0.1:9101"        # address:port
      - addr: 9102              # table form
        tls: true               # TLS termination, certificate picked by SNI from ssls
      - "9300-9310"             # port range
      - addr: 9443
        tls_passthrough: true   # route by ClientHello SNI without terminating
    udp:
      - 9200
      - "127.0.0.1:9211"
  enable_control: true
  control: {ip: 127.0.0.1, port: 9090}
deployment:
  role: traditional
  role_traditional:
    config_provider: local      # local (embedded default) | etcd | yaml
  admin:
    admin_key:
      - {name: admin, key: '', role: admin}   # '' -> generate, write back, print once
    admin_listen: {ip: 127.0.0.1, port: 9180}
    allow_admin: [127.0.0.0/24]
  etcd:
    host: ["http://127.0.0.1:2379"]
    prefix: /apisix
plugin_attr:
  prometheus:
    export_addr: {ip: 127.0.0.1, port: 9091}   # GET /apisix/prometheus/metrics
"#;

    #[test]
    fn interface_example_parses() {
        let c = parse(INTERFACE_EXAMPLE).unwrap();
        assert!(c.stream_enabled());
        let sp = c.apisix.stream_proxy.as_ref().unwrap();
        assert_eq!(sp.tcp.len(), 4 + 11);
        assert_eq!(sp.tcp[0].listen_addr(), "0.0.0.0:9100");
        assert_eq!(sp.tcp[1].listen_addr(), "127.0.0.1:9101");
        assert!(sp.tcp[2].tls);
        assert_eq!(sp.tcp[3].listen_addr(), "0.0.0.0:9300");
        assert_eq!(sp.tcp[13].listen_addr(), "0.0.0.0:9310");
        assert!(sp.tcp[14].tls_passthrough);
        let udp: Vec<_> = sp.udp.iter().map(ListenSpec::listen_addr).collect();
        assert_eq!(udp, ["0.0.0.0:9200", "127.0.0.1:9211"]);
        assert_eq!(
            c.deployment.admin.admin_listen.socket_addr().to_string(),
            "127.0.0.1:9180"
        );
    }

    #[test]
    fn full_config_values() {
        let c = parse(
            r#"
apisix:
  proxy_mode: "http&stream"
  enable_admin: true
  enable_reuseport: false
  proxy_protocol: {enable_tcp_pp: true, enable_tcp_pp_to_upstream: true}
  ssl: {fallback_sni: "a.example"}
  data_encryption: {keyring: ["0123456789abcdef0123456789abcdef"]}
  disable_upstream_healthcheck: true
  stream_proxy:
    only: true
    tcp: [9100]
    udp: [9200]
  node_listen: 9080
deployment:
  role: traditional
  role_traditional: {config_provider: etcd}
  admin:
    admin_key:
      - {name: a, key: k1, role: admin}
      - {name: v, key: 12345, role: viewer}
    admin_key_required: true
    allow_admin: [10.0.0.1, "::1", 192.168.0.0/16]
    enable_admin_cors: false
    admin_listen: {ip: "::", port: "9181"}
  etcd:
    host: ["https://e1:2379", "http://e2:2379"]
    prefix: /p
    timeout: 3
    user: root
    password: secretpw
    tls: {cert: /c.pem, key: /k.pem, verify: false, sni: etcd.local}
  local: {data_dir: /var/lib/apisix-stream}
plugin_attr:
  prometheus: {export_uri: /m, metric_prefix: x_, enable_export_server: false, refresh_interval: 5}
nginx_config:
  stream: {real_ip_from: [127.0.0.1, 10.0.0.0/8], enable_access_log: true, access_log: /tmp/a.log}
stream_plugins: [ip-restriction]
"#,
        )
        .unwrap();
        assert!(c.stream_enabled());
        assert_eq!(c.apisix.proxy_mode, ProxyMode::HttpAndStream);
        assert!(!c.apisix.enable_reuseport);
        let sp = c.apisix.stream_proxy.as_ref().unwrap();
        assert!(sp.tcp[0].proxy_protocol && sp.tcp[0].proxy_protocol_to_upstream);
        assert!(!sp.udp[0].proxy_protocol);
        assert_eq!(c.apisix.ssl.fallback_sni.as_deref(), Some("a.example"));
        assert_eq!(c.apisix.data_encryption.keyring.len(), 1);
        assert!(c.apisix.disable_upstream_healthcheck);
        let a = &c.deployment.admin;
        assert_eq!(c.deployment.config_provider, ConfigProvider::Etcd);
        assert_eq!(a.admin_key[0].key.expose(), "k1");
        assert_eq!(a.admin_key[1].key.expose(), "12345");
        assert_eq!(a.admin_key[1].role, AdminRole::Viewer);
        let allow: Vec<String> = a
            .allow_admin
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(allow, ["10.0.0.1/32", "::1/128", "192.168.0.0/16"]);
        assert!(!a.enable_admin_cors);
        assert_eq!(a.admin_listen.socket_addr().to_string(), "[::]:9181");
        let e = &c.deployment.etcd;
        assert_eq!(e.host.len(), 2);
        assert_eq!(
            (e.prefix.as_str(), e.timeout, e.watch_timeout),
            ("/p", 3, 50)
        );
        assert_eq!(e.user.as_deref(), Some("root"));
        assert_eq!(e.password.as_ref().map(Secret::expose), Some("secretpw"));
        let tls = e.tls.as_ref().unwrap();
        assert_eq!(
            (tls.cert.as_deref(), tls.verify, tls.sni.as_deref()),
            (Some("/c.pem"), false, Some("etcd.local"))
        );
        assert_eq!(
            c.deployment.local.data_dir,
            PathBuf::from("/var/lib/apisix-stream")
        );
        let p = &c.plugin_attr.prometheus;
        assert_eq!(
            (
                p.export_uri.as_str(),
                p.metric_prefix.as_str(),
                p.enable_export_server,
                p.refresh_interval
            ),
            ("/m", "x_", false, 5)
        );
        let s = &c.nginx_config.stream;
        assert_eq!(s.real_ip_from.len(), 2);
        assert!(s.enable_access_log);
        assert_eq!(c.stream_plugins, ["ip-restriction"]);
        // Secrets never show up in Debug output.
        let dbg = format!("{c:?}");
        assert!(
            !dbg.contains("secretpw") && !dbg.contains("k1") && !dbg.contains("0123456789abcdef")
        );
    }

    #[test]
    fn nulls_delete_defaults() {
        let c = parse("deployment:\n  admin:\n    allow_admin:\n    admin_key: ~\n    admin_key_required: false\nstream_plugins:\napisix:\n  control:\n").unwrap();
        assert_eq!(c.deployment.admin.allow_admin, None);
        assert!(c.deployment.admin.admin_key.is_empty());
        assert!(c.stream_plugins.is_empty());
        assert_eq!(c.apisix.control.port, 9090);
    }

    #[test]
    fn stream_needs_mode_and_section() {
        assert!(!parse("apisix: {proxy_mode: stream}")
            .unwrap()
            .stream_enabled());
        assert!(!parse("apisix: {stream_proxy: {tcp: [9100]}}")
            .unwrap()
            .stream_enabled());
        assert!(
            parse("apisix: {proxy_mode: stream, stream_proxy: {tcp: [9100]}}")
                .unwrap()
                .stream_enabled()
        );
        // Entries are only checked when stream is on, as APISIX does.
        let c = parse("apisix: {stream_proxy: {tcp: [0]}}").unwrap();
        assert!(c.apisix.stream_proxy.is_none());
    }

    #[test]
    fn listener_errors_surface() {
        assert_eq!(
            err("apisix: {proxy_mode: stream, stream_proxy: {tcp: [0]}}"),
            "invalid stream_proxy.tcp entry: port out of range (1-65535): 0"
        );
        assert_eq!(
            err("apisix: {proxy_mode: stream, stream_proxy: {udp: ['3000-2000']}}"),
            "invalid stream_proxy.udp entry: invalid port range (start > end): 3000-2000"
        );
        let e = err("apisix: {proxy_mode: stream, stream_proxy: {tcp: [9100, '0.0.0.0:9100']}}");
        assert_eq!(
            e,
            "invalid stream_proxy.tcp entry: duplicate address 0.0.0.0:9100: \"0.0.0.0:9100\""
        );
        let e = err("apisix: {proxy_mode: stream, stream_proxy: {tcp: ['9100-9102', 9101]}}");
        assert!(e.contains("duplicate address 0.0.0.0:9101"), "{e}");
        // Same port on tcp and udp is fine.
        parse("apisix: {proxy_mode: stream, stream_proxy: {tcp: [9100], udp: [9100]}}").unwrap();
        let e = err("apisix: {proxy_mode: stream, stream_proxy: {tcp: []}}");
        assert_eq!(
            e,
            "invalid apisix.stream_proxy.tcp: [] (expected at least one entry)"
        );
        let e = err("apisix: {proxy_mode: stream, stream_proxy: {tcp: 9100}}");
        assert!(
            e.starts_with("invalid apisix.stream_proxy.tcp: 9100"),
            "{e}"
        );
    }

    #[test]
    fn bad_values_name_key_value_and_reason() {
        let cases = [
            ("apisix: {proxy_mode: tcp}", "invalid apisix.proxy_mode: \"tcp\" (expected http, stream or http&stream)"),
            ("apisix: {proxy_mode: 1}", "invalid apisix.proxy_mode: 1 (expected http, stream or http&stream)"),
            ("deployment: {role_traditional: {config_provider: xds}}", "invalid deployment.role_traditional.config_provider: \"xds\" (expected local, etcd, yaml or json)"),
            ("deployment: {role: edge}", "invalid deployment.role: \"edge\" (expected traditional, control_plane or data_plane)"),
            ("deployment: {admin: {admin_key: [{name: a, key: b, role: root}]}}", "invalid deployment.admin.admin_key[0].role: \"root\" (expected admin or viewer)"),
            ("deployment: {admin: {admin_key: [{name: a, key: b}, x]}}", "invalid deployment.admin.admin_key[1]: <a string, not shown> (expected a table {name, key, role})"),
            ("deployment: {admin: {allow_admin: [127.0.0.1, nope]}}", "invalid deployment.admin.allow_admin[1]: \"nope\" (not an IP address or CIDR)"),
            ("deployment: {admin: {allow_admin: [10.0.0.0/33]}}", "invalid deployment.admin.allow_admin[0]: \"10.0.0.0/33\" (not an IP address or CIDR)"),
            ("nginx_config: {stream: {real_ip_from: [1.2.3]}}", "invalid nginx_config.stream.real_ip_from[0]: \"1.2.3\" (not an IP address or CIDR)"),
            ("deployment: {admin: {admin_listen: {port: 70000}}}", "invalid deployment.admin.admin_listen.port: 70000 (expected an integer 0-65535)"),
            ("apisix: {control: {port: abc}}", "invalid apisix.control.port: \"abc\" (expected an integer 0-65535)"),
            ("apisix: {control: {ip: localhost}}", "invalid apisix.control.ip: \"localhost\" (expected an IP address)"),
            ("plugin_attr: {prometheus: {export_addr: {port: -1}}}", "invalid plugin_attr.prometheus.export_addr.port: -1 (expected an integer 0-65535)"),
            ("deployment: {etcd: {host: [\"127.0.0.1:2379\"]}}", "invalid deployment.etcd.host[0]: \"127.0.0.1:2379\" (expected a URL matching ^https?://)"),
            ("deployment: {etcd: {prefix: ''}}", "invalid deployment.etcd.prefix: \"\" (must not be empty)"),
            ("deployment: {etcd: {timeout: 0}}", "invalid deployment.etcd.timeout: 0 (expected an integer >= 1)"),
            ("apisix: {enable_admin: 'yes'}", "invalid apisix.enable_admin: \"yes\" (expected true or false)"),
            ("apisix: [1]", "invalid apisix: [1] (expected a table)"),
            ("apisix: {data_encryption: {keyring: [short]}}", "invalid apisix.data_encryption.keyring[0]: <5 bytes> (expected a 16- or 32-byte string)"),
            ("stream_plugins: [1]", "invalid stream_plugins[0]: 1 (expected a string)"),
            ("- 1", "invalid config.yaml: [1] (expected a table at the top level)"),
        ];
        for (text, want) in cases {
            assert_eq!(err(text), want, "for {text}");
        }
    }

    #[test]
    fn port_zero_allowed_for_api_listeners() {
        let c = parse("apisix: {control: {port: 0}}\ndeployment: {admin: {admin_listen: {port: 0}}}\nplugin_attr: {prometheus: {export_addr: {port: 0}}}").unwrap();
        assert_eq!(c.apisix.control.port, 0);
        assert_eq!(c.deployment.admin.admin_listen.port, 0);
        assert_eq!(c.plugin_attr.prometheus.export_addr.port, 0);
    }

    #[test]
    fn port_conflicts() {
        assert_eq!(
            err("apisix: {control: {port: 9180}}"),
            "control port 9180 conflicts with admin port"
        );
        assert_eq!(
            err("plugin_attr: {prometheus: {export_addr: {port: 9090}}}"),
            "prometheus port 9090 conflicts with control port"
        );
        // Disabled listeners do not claim their port.
        parse("apisix: {enable_admin: false, control: {port: 9180}}").unwrap();
        parse("apisix: {enable_control: false}\nplugin_attr: {prometheus: {export_addr: {port: 9090}}}").unwrap();
    }

    #[test]
    fn missing_admin_token() {
        let text = "deployment: {admin: {admin_key: ~, allow_admin: [0.0.0.0/0]}}";
        assert!(err(text).starts_with("ERROR: missing valid Admin API token."));
        // Fine when only localhost may connect, when keys are off, or when admin is off.
        parse("deployment: {admin: {admin_key: ~}}").unwrap();
        parse("deployment: {admin: {admin_key: ~, allow_admin: ~, admin_key_required: false}}")
            .unwrap();
        parse("apisix: {enable_admin: false}\ndeployment: {admin: {admin_key: ~, allow_admin: ~}}")
            .unwrap();
        // data_plane forces the Admin API off, control_plane on.
        let c =
            parse("deployment: {role: data_plane, admin: {admin_key: ~, allow_admin: ~}}").unwrap();
        assert!(!c.apisix.enable_admin);
        assert_eq!(c.deployment.config_provider, ConfigProvider::Etcd);
        let c = parse("apisix: {enable_admin: false}\ndeployment: {role: control_plane}").unwrap();
        assert!(c.apisix.enable_admin);
    }

    #[test]
    fn prometheus_in_stream_plugins_needs_export_server() {
        assert_eq!(
            err("stream_plugins: [prometheus]\nplugin_attr: {prometheus: {enable_export_server: false}}"),
            "L4 prometheus metric should be exposed via export server"
        );
        parse("stream_plugins: [prometheus]").unwrap();
    }

    #[test]
    fn env_substitution() {
        let env = |name: &str| match name {
            "PORT" => Some("9200".to_string()),
            "MODE" => Some("stream".to_string()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        let out = substitute_env("a: ${{PORT}}\nb: ${{ MODE }}\nc: ${{NOPE:=dflt}}\nd: ${{ NOPE := x y }}\ne: '${{EMPTY:=z}}'\n", &env).unwrap();
        assert_eq!(out, "a: 9200\nb: stream\nc: dflt\nd: x y\ne: ''\n");
        // Commented lines and invalid names are left alone; a lone "${{" is kept.
        let out = substitute_env("# ${{NOPE}}\nx: ${{1bad}}\ny: ${{\n", &env).unwrap();
        assert_eq!(out, "# ${{NOPE}}\nx: ${{1bad}}\ny: ${{\n");
        let e = substitute_env("a: 1\nb: ${{ NOPE }}\n", &env).unwrap_err();
        assert_eq!(
            e.to_string(),
            "failed to handle configuration: can't find environment variable NOPE"
        );
        let c = Config::from_yaml_with_env(
            "apisix:\n  proxy_mode: ${{MODE}}\n  stream_proxy:\n    udp: [${{PORT}}]\n  control:\n    port: ${{CONTROL_PORT:=9999}}\n",
            &env,
        )
        .unwrap();
        assert!(c.stream_enabled());
        assert_eq!(c.apisix.stream_proxy.unwrap().udp[0].addr.port(), 9200);
        assert_eq!(c.apisix.control.port, 9999);
    }

    #[test]
    fn syntax_errors_are_one_line_with_position() {
        let e = err("apisix:\n  proxy_mode: [stream\n");
        assert!(e.starts_with("failed to parse config.yaml: "), "{e}");
        assert!(e.contains("line"), "{e}");
    }

    #[test]
    fn load_resolves_data_dir_and_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, "apisix: {proxy_mode: stream}\n").unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.deployment.local.data_dir, dir.path().join("data"));
        std::fs::write(&path, "deployment: {local: {data_dir: store/x}}\n").unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.deployment.local.data_dir, dir.path().join("store/x"));
        std::fs::write(&path, "deployment: {local: {data_dir: /abs}}\n").unwrap();
        assert_eq!(
            Config::load(&path).unwrap().deployment.local.data_dir,
            PathBuf::from("/abs")
        );
        std::fs::write(&path, "a: [\n").unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("failed to parse {}: ", path.display())),
            "{e}"
        );
        assert!(!e.contains('\n'));
        let missing = dir.path().join("nope.yaml");
        let e = Config::load(&missing).unwrap_err().to_string();
        assert!(e.contains("nope.yaml"), "{e}");
    }

    fn sample_key_yaml(listen_ip: &str, allow: &str) -> String {
        format!(
            "deployment:\n  admin:\n    admin_key:\n      - {{name: admin, key: abcdefghijklmnop, role: admin}}\n      - {{name: shared, key: {SAMPLE_ADMIN_KEY}, role: viewer}}\n    admin_listen: {{ip: '{listen_ip}', port: 9180}}\n{allow}"
        )
    }

    #[test]
    fn sample_admin_key_is_refused_unless_the_admin_api_is_loopback_only() {
        let refused = [
            // Listening on every interface, whatever allow_admin says.
            (
                "0.0.0.0",
                "    allow_admin: [127.0.0.0/24]\n",
                "admin_listen.ip is 0.0.0.0",
            ),
            (
                "::",
                "    allow_admin: [127.0.0.1]\n",
                "admin_listen.ip is ::",
            ),
            (
                "10.1.2.3",
                "    allow_admin: [127.0.0.0/24]\n",
                "admin_listen.ip is 10.1.2.3",
            ),
            // Loopback listener, but allow_admin lets anyone in or names other networks.
            (
                "127.0.0.1",
                "    allow_admin: ~\n",
                "allow_admin is null, so every client is allowed",
            ),
            (
                "127.0.0.1",
                "    allow_admin: [127.0.0.0/24, 10.0.0.0/8]\n",
                "allow_admin contains 10.0.0.0/8",
            ),
            (
                "127.0.0.1",
                "    allow_admin: [0.0.0.0/0]\n",
                "allow_admin contains 0.0.0.0/0",
            ),
            (
                "127.0.0.1",
                "    allow_admin: [127.0.0.0/7]\n",
                "allow_admin contains 127.0.0.0/7",
            ),
            (
                "::1",
                "    allow_admin: ['::/0']\n",
                "allow_admin contains ::/0",
            ),
        ];
        for (ip, allow, why) in refused {
            let e = err(&sample_key_yaml(ip, allow));
            assert!(e.starts_with("refusing to start: deployment.admin.admin_key[1] (\"shared\") is the sample key"), "{e}");
            assert!(e.contains(why), "want {why:?} in {e}");
            assert!(e.contains("set a unique key"), "{e}");
            assert!(!e.contains(SAMPLE_ADMIN_KEY), "{e}");
        }
        // The default allow_admin (absent key) is loopback; a 0.0.0.0 listener still refuses.
        let e = err(&format!(
            "deployment: {{admin: {{admin_key: [{{name: a, key: {SAMPLE_ADMIN_KEY}}}]}}}}"
        ));
        assert!(
            e.contains("admin_key[0] (\"a\")") && e.contains("0.0.0.0"),
            "{e}"
        );
        // Loopback only on both sides: allowed.
        for (ip, allow) in [
            ("127.0.0.1", "    allow_admin: [127.0.0.0/24]\n"),
            (
                "127.0.0.1",
                "    allow_admin: [127.0.0.1, '::1', 127.0.0.0/8]\n",
            ),
            ("::1", "    allow_admin: ['::1/128', '::ffff:127.0.0.1']\n"),
            ("127.0.0.2", "    allow_admin: []\n"),
        ] {
            let c = parse(&sample_key_yaml(ip, allow)).unwrap();
            assert_eq!(c.deployment.admin.sample_key_entries(), [(1, "shared")]);
            assert_eq!(c.deployment.admin.exposure(), None);
        }
        // No check when the key is never used: Admin API off, data plane, keys not required.
        let exposed = sample_key_yaml("0.0.0.0", "    allow_admin: ~\n");
        parse(&format!("apisix: {{enable_admin: false}}\n{exposed}")).unwrap();
        parse(&exposed.replace("deployment:\n", "deployment:\n  role: data_plane\n")).unwrap();
        parse(&sample_key_yaml(
            "0.0.0.0",
            "    allow_admin: ~\n    admin_key_required: false\n",
        ))
        .unwrap();
        // A key that merely contains the sample is not the sample.
        let c = parse(&format!(
            "deployment: {{admin: {{admin_key: [{{name: a, key: x{SAMPLE_ADMIN_KEY}}}]}}}}"
        ))
        .unwrap();
        assert!(c.deployment.admin.sample_key_entries().is_empty());
    }

    #[test]
    fn debug_of_a_config_never_shows_secrets() {
        let text = format!(
            "apisix:\n  data_encryption:\n    keyring: [ring-key-0123456, ring-key-0123456789abcdef0123456]\ndeployment:\n  admin:\n    admin_key:\n      - {{name: admin, key: admin-secret-key-xyz, role: admin}}\n      - {{name: viewer, key: viewer-secret-key-xyz, role: viewer}}\n      - {{name: sample, key: {SAMPLE_ADMIN_KEY}, role: viewer}}\n    admin_listen: {{ip: 127.0.0.1}}\n  etcd:\n    user: root\n    password: etcd-secret-password\n"
        );
        let c = parse(&text).unwrap();
        assert_eq!(
            c.deployment.etcd.password.as_ref().unwrap().expose(),
            "etcd-secret-password"
        );
        assert_eq!(
            c.deployment.admin.admin_key[0].key.expose(),
            "admin-secret-key-xyz"
        );
        for shown in [
            format!("{c:?}"),
            format!("{c:#?}"),
            format!("{:?}", c.deployment),
            format!("{:?}", c.deployment.admin),
            format!("{:?}", c.deployment.etcd),
            format!("{:?}", c.apisix.data_encryption),
        ] {
            for secret in [
                "admin-secret-key-xyz",
                "viewer-secret-key-xyz",
                SAMPLE_ADMIN_KEY,
                "etcd-secret-password",
                "ring-key-0123456",
            ] {
                assert!(!shown.contains(secret), "{secret} shown in {shown}");
            }
        }
        // Errors about secret values name the key, never the value.
        for (text, secret, key) in [
            (
                "apisix: {data_encryption: {keyring: [not-16-bytes-secret]}}",
                "not-16-bytes-secret",
                "keyring[0]",
            ),
            (
                "apisix: {data_encryption: {keyring: [1234567890123456]}}",
                "1234567890123456",
                "keyring[0]",
            ),
            (
                "apisix: {data_encryption: {keyring: {a: ring-secret-0123}}}",
                "ring-secret-0123",
                "keyring",
            ),
            (
                "deployment: {etcd: {password: 98765432}}",
                "98765432",
                "etcd.password",
            ),
            (
                "deployment: {etcd: {password: [pw-secret]}}",
                "pw-secret",
                "etcd.password",
            ),
            (
                "deployment: {admin: {admin_key: [{name: a, key: [key-secret]}]}}",
                "key-secret",
                "admin_key[0].key",
            ),
            (
                "deployment: {admin: {admin_key: [key-secret-in-a-list]}}",
                "key-secret-in-a-list",
                "admin_key[0]",
            ),
            (
                "deployment: {admin: {admin_key: {name: a, key: key-secret-table}}}",
                "key-secret-table",
                "admin_key",
            ),
        ] {
            let e = err(text);
            assert!(!e.contains(secret), "{e}");
            assert!(e.contains(key) && e.contains('<'), "{e}");
        }
    }

    #[test]
    fn secret_is_masked() {
        let s = Secret::new("topsecret");
        assert_eq!(format!("{s:?} {s}"), "*** ***");
        assert_eq!(s.expose(), "topsecret");
        assert!(!s.is_empty() && Secret::default().is_empty());
    }
}
