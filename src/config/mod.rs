//! Typed, validated `conf/config.yaml`, with APISIX's key names and defaults.
//!
//! Loading mirrors `apisix/cli/file.lua`: `${{VAR}}` placeholders are substituted in the text,
//! the YAML is read, and every key we use falls back to APISIX's default
//! (`apisix/cli/config.lua`) when absent. Unknown keys are ignored so a whole APISIX config can
//! be pasted in. A YAML `null` deletes a default, as APISIX's merge does: for scalars and
//! tables that means "use the default", for `allow_admin` it means "allow everyone" and for
//! other lists it means "empty". Every error is one line naming the key, the value and why, and
//! is raised before anything binds.
//!
//! This module holds the types and the entry points ([`Config::load`], [`Config::from_yaml`]).
//! The work is done in:
//! - `env`: `${{VAR}}` / `${{VAR:=default}}` substitution;
//! - `read`: the section reader and the builders that turn the YAML tree into these types;
//! - `validate`: checks across keys (port clashes, admin key exposure);
//! - [`listen`]: `stream_proxy` listener entries;
//! - [`discovery`]: `discovery:` registries and the resolver keys of node host names;
//! - [`admin_key`]: admin key generation and write-back, through `yaml_edit`, an editor
//!   that changes only the bytes of the edited values so comments and quoting survive.

pub mod admin_key;
pub mod discovery;
mod env;
pub mod listen;
mod read;
mod validate;
mod yaml_edit;

pub use env::substitute_env;
pub use listen::ListenSpec;
pub use read::parse_nginx_duration;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;

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
    /// top-level `stream_plugins`; default APISIX's (ip-restriction, limit-conn, mqtt-proxy, syslog, traffic-split) and limit-bandwidth
    pub stream_plugins: Vec<String>,
    /// `xrpc.protocols[].name`: the xRPC protocols stream routes may name.
    pub xrpc_protocols: Vec<String>,
    /// `discovery:` and the resolver of node host names.
    pub discovery: discovery::DiscoveryConf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            apisix: Apisix::default(),
            deployment: Deployment::default(),
            plugin_attr: PluginAttr::default(),
            nginx_config: NginxConfig::default(),
            stream_plugins: default_stream_plugins(),
            xrpc_protocols: Vec::new(),
            discovery: discovery::DiscoveryConf::default(),
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SslConf {
    /// `fallback_sni`: SNI assumed when a TLS client sends none.
    pub fallback_sni: Option<String>,
    /// `ssl_trusted_certificate`: a PEM file of the CAs that verified
    /// upstreams and etcd are checked against; `None` or `system`: the
    /// system's roots.
    pub ssl_trusted_certificate: Option<String>,
    /// `ssl_protocols`: TLS versions of terminating listeners (space-separated).
    pub ssl_protocols: String,
    /// `ssl_ciphers`: TLS 1.2 suites of terminating listeners (OpenSSL list).
    pub ssl_ciphers: String,
    /// `ssl_session_tickets`: resumption by session tickets (on, as nginx's stream default).
    pub ssl_session_tickets: bool,
    /// `ssl_session_cache_size`: sessions cached per SSL object (0: no cache).
    pub ssl_session_cache_size: usize,
    /// `ssl_session_timeout`: seconds a cached session stays usable.
    pub ssl_session_timeout: u64,
}

/// APISIX's default `apisix.ssl.ssl_ciphers`.
pub const DEFAULT_SSL_CIPHERS: &str = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:\
ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:\
ECDHE-RSA-CHACHA20-POLY1305:DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384";

impl Default for SslConf {
    fn default() -> Self {
        SslConf {
            fallback_sni: None,
            ssl_trusted_certificate: None,
            ssl_protocols: "TLSv1.2 TLSv1.3".into(),
            ssl_ciphers: DEFAULT_SSL_CIPHERS.into(),
            ssl_session_tickets: true,
            ssl_session_cache_size: 0,
            ssl_session_timeout: 300,
        }
    }
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
    /// `keepalive_interval` (seconds): how often each endpoint is probed.
    pub keepalive_interval: u64,
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
    /// The CAs a verified etcd server is checked against: the server sets
    /// it from `apisix.ssl.ssl_trusted_certificate` (not a key of its own).
    pub trusted_ca: Option<String>,
}

impl Default for Etcd {
    fn default() -> Self {
        Etcd {
            host: vec!["http://127.0.0.1:2379".into()],
            prefix: "/apisix".into(),
            timeout: 30,
            watch_timeout: 50,
            keepalive_interval: 1,
            startup_retry: 2,
            resync_delay: 5,
            user: None,
            password: None,
            tls: None,
            trusted_ca: None,
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
    /// `worker_processes`: how many data-plane workers run.
    pub worker_processes: WorkerProcesses,
    /// `error_log`: `stderr` (the default) or a file, reopened on SIGUSR1.
    pub error_log: String,
    /// `error_log_level`: the least severe level written (`RUST_LOG`
    /// overrides it).
    pub error_log_level: ErrorLogLevel,
}

/// `nginx_config.error_log_level`: nginx's levels, `debug` to `emerg`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ErrorLogLevel {
    /// `debug`.
    Debug,
    /// `info` (the default when the key is absent).
    #[default]
    Info,
    /// `notice` (written as info).
    Notice,
    /// `warn`.
    Warn,
    /// `error`.
    Error,
    /// `crit` (written as error).
    Crit,
    /// `alert` (written as error).
    Alert,
    /// `emerg` (written as error).
    Emerg,
}

impl ErrorLogLevel {
    /// Parse nginx's level name.
    pub fn parse(s: &str) -> Option<ErrorLogLevel> {
        Some(match s {
            "debug" => ErrorLogLevel::Debug,
            "info" => ErrorLogLevel::Info,
            "notice" => ErrorLogLevel::Notice,
            "warn" => ErrorLogLevel::Warn,
            "error" => ErrorLogLevel::Error,
            "crit" => ErrorLogLevel::Crit,
            "alert" => ErrorLogLevel::Alert,
            "emerg" => ErrorLogLevel::Emerg,
            _ => return None,
        })
    }

    /// The `tracing` filter directive this level maps to.
    pub fn directive(self) -> &'static str {
        match self {
            ErrorLogLevel::Debug => "debug",
            ErrorLogLevel::Info | ErrorLogLevel::Notice => "info",
            ErrorLogLevel::Warn => "warn",
            _ => "error",
        }
    }
}

/// The most data-plane workers `worker_processes` may ask for.
pub const MAX_WORKER_PROCESSES: usize = 256;

/// `nginx_config.worker_processes`: `auto` (APISIX's default) or a count
/// from 1 to [`MAX_WORKER_PROCESSES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WorkerProcesses {
    /// One worker per core the process may use.
    #[default]
    Auto,
    /// This many workers.
    Count(std::num::NonZeroUsize),
}

impl WorkerProcesses {
    /// The number of workers, given the cores the process may use.
    pub fn count(self, cores: usize) -> usize {
        match self {
            WorkerProcesses::Auto => cores.max(1),
            WorkerProcesses::Count(n) => n.get(),
        }
    }
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
            worker_processes: WorkerProcesses::Auto,
            error_log: "stderr".into(),
            error_log_level: ErrorLogLevel::default(),
        }
    }
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
    /// `access_log_format`: nginx stream variables (APISIX's default
    /// format when unset).
    pub access_log_format: String,
    /// `access_log_format_escape`: `default`, `json` or `none`.
    pub access_log_format_escape: crate::access_log::Escape,
}

impl Default for NginxStream {
    fn default() -> Self {
        NginxStream {
            real_ip_from: Vec::new(),
            enable_access_log: false,
            access_log: "logs/access_stream.log".into(),
            access_log_format: crate::access_log::DEFAULT_FORMAT.into(),
            access_log_format_escape: crate::access_log::Escape::Default,
        }
    }
}

/// `stream_plugins` when config.yaml does not set it (APISIX's default,
/// plus `limit-bandwidth`).
pub const DEFAULT_STREAM_PLUGINS: [&str; 6] = [
    "ip-restriction",
    "limit-bandwidth",
    "limit-conn",
    "mqtt-proxy",
    "syslog",
    "traffic-split",
];

fn default_stream_plugins() -> Vec<String> {
    DEFAULT_STREAM_PLUGINS.map(String::from).to_vec()
}

impl Config {
    /// Parse config.yaml text; `${{VAR}}` / `${{VAR:=default}}` read from the process environment.
    pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
        Self::from_yaml_with_env(text, &env::process_env)
    }

    /// Same, with an injected environment (tests must not call std::env::set_var).
    pub fn from_yaml_with_env(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        read::parse_text(text, env, "config.yaml")
    }

    /// Read and parse the file; relative `data_dir` is resolved against the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = read::parse_text(&text, &env::process_env, &path.display().to_string())?;
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

#[cfg(test)]
mod tests;
