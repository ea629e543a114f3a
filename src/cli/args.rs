//! Command-line arguments (clap derive only, no I/O).
//!
//! Values that need checking beyond their type (addresses, ports, weights,
//! plugin JSON) stay strings here and are checked in [`super::resource`], so
//! a bad value is a one-line error naming the flag rather than a usage error.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// L4 (TCP/UDP) proxy compatible with the Apache APISIX stream proxy.
#[derive(Debug, Parser)]
#[command(
    name = "apisix-stream",
    version,
    about,
    long_about = None,
    after_help = "Examples:\n  apisix-stream serve -c conf/config.yaml\n  apisix-stream route add --id 1 --server-port 9100 --node 127.0.0.1:3306\n  apisix-stream route list"
)]
pub struct Cli {
    /// Options shared by every subcommand.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options accepted before or after any subcommand.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// config.yaml to use: `serve` runs it; client commands read the admin
    /// address and key from it, `top` the control address [default:
    /// conf/config.yaml (when it exists)]
    #[arg(
        short = 'c',
        long,
        global = true,
        value_name = "PATH",
        help_heading = "Global options"
    )]
    pub config: Option<PathBuf>,
    /// Admin API address [default: from the config, else http://127.0.0.1:9180]
    #[arg(
        long,
        global = true,
        value_name = "URL",
        help_heading = "Global options"
    )]
    pub admin_url: Option<String>,
    /// Admin API key (X-API-KEY) [default: the config's first admin key]
    #[arg(
        long,
        global = true,
        env = "APISIX_ADMIN_KEY",
        hide_env_values = true,
        help_heading = "Global options",
        value_name = "KEY"
    )]
    pub api_key: Option<String>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy, the Admin API, the Control API and metrics until SIGINT/SIGTERM.
    ///
    /// Example: apisix-stream serve -c conf/config.yaml
    Serve,
    /// Replace the running server with the binary at the path it was started from, without refusing a connection.
    ///
    /// Finds the server through the Control API, sends it SIGUSR2, waits
    /// for the new process to serve and prints its pid; exits 1 with the
    /// reason when the new process did not take over.
    ///
    /// Example: apisix-stream upgrade -c conf/config.yaml
    Upgrade(UpgradeArgs),
    /// Manage stream routes (/apisix/admin/stream_routes).
    ///
    /// Example: apisix-stream route add --id 1 --server-port 9100 --node 127.0.0.1:3306
    #[command(subcommand)]
    Route(RouteCommand),
    /// Manage upstreams (/apisix/admin/upstreams).
    ///
    /// Example: apisix-stream upstream add --id 1 --node 10.0.0.1:3306 --node 10.0.0.2:3306
    #[command(subcommand)]
    Upstream(UpstreamCommand),
    /// Manage services (/apisix/admin/services): an upstream and plugins shared by stream routes.
    ///
    /// Example: apisix-stream service add --id db --upstream-id 1
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Manage TLS certificates (/apisix/admin/ssls).
    ///
    /// Example: apisix-stream ssl add --cert server.crt --key server.key
    #[command(subcommand)]
    Ssl(SslCommand),
    /// Live dashboard of a running server: connections, bytes and rates per route and node.
    ///
    /// Reads the Control API (GET /v1/stream/stats and /v1/stream/connections).
    /// Keys: q/Esc quit, Tab switch pane, Up/Down select, s sort, p pause,
    /// k close the selected connection (asks y/n).
    ///
    /// Example: apisix-stream top --interval 500ms
    Top(TopArgs),
    /// Print shell completions for SHELL to stdout.
    ///
    /// Example: apisix-stream completions bash > /etc/bash_completion.d/apisix-stream
    Completions {
        /// Shell to generate completions for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to stdout, or write every page to a directory.
    ///
    /// With --out-dir, writes apisix-stream.1 and one page per command
    /// (apisix-stream-route.1, apisix-stream-route-add.1, ...).
    ///
    /// Example: apisix-stream man --out-dir /usr/local/share/man/man1
    Man {
        /// Write all pages into this directory instead of printing the main one.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
}

/// `route` subcommands.
#[derive(Debug, Subcommand)]
pub enum RouteCommand {
    /// Create or replace a stream route; prints one line saying so (-o json: the stored route).
    ///
    /// With --id the route is written with PUT (created or replaced); without
    /// it the server picks an id (POST). Flags override the JSON of --file.
    ///
    /// Example: apisix-stream route add --id 1 --server-port 9100 --node 127.0.0.1:3306
    Add(Box<RouteAddArgs>),
    /// List stream routes as a table (or -o json), optionally filtered and refreshed.
    ///
    /// Example: apisix-stream route list -l env=prod --watch
    List(ListArgs),
    /// Print one stream route as JSON.
    ///
    /// Example: apisix-stream route get 1
    Get(IdArg),
    /// Delete a stream route.
    ///
    /// Example: apisix-stream route delete 1
    Delete(IdArg),
    /// Show which route a connection would take, and why the others lose.
    ///
    /// Runs the server's router on its current routes; changes nothing.
    /// Exits 1 when no route matches.
    ///
    /// Example: apisix-stream route test --server-port 9100 --remote-addr 10.0.0.7
    Test(RouteTestArgs),
}

/// `upstream` subcommands.
#[derive(Debug, Subcommand)]
pub enum UpstreamCommand {
    /// Create or replace an upstream; prints one line saying so (-o json: the stored upstream).
    ///
    /// Example: apisix-stream upstream add --id 1 --node 10.0.0.1:3306=2 --node 10.0.0.2:3306
    Add(Box<UpstreamAddArgs>),
    /// List upstreams as a table (or -o json).
    ///
    /// Example: apisix-stream upstream list
    List(ListArgs),
    /// Print one upstream as JSON.
    ///
    /// Example: apisix-stream upstream get 1
    Get(IdArg),
    /// Delete an upstream (refused while a stream route uses it, unless --force).
    ///
    /// Example: apisix-stream upstream delete 1
    Delete(UpstreamDeleteArgs),
}

/// `service` subcommands.
#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Create or replace a service; prints the stored service.
    ///
    /// Stream routes with --service-id run with its upstream (unless they
    /// have their own) and its plugins (a route's plugin of the same name wins).
    ///
    /// Example: apisix-stream service add --id db --node 10.0.0.1:3306 --plugin ip-restriction='{"whitelist":["10.0.0.0/8"]}'
    Add(Box<ServiceAddArgs>),
    /// List services as a table (or -o json).
    ///
    /// Example: apisix-stream service list
    List(ListArgs),
    /// Print one service as JSON.
    ///
    /// Example: apisix-stream service get db
    Get(IdArg),
    /// Delete a service (refused while a stream route uses it).
    ///
    /// Example: apisix-stream service delete db
    Delete(IdArg),
}

/// `ssl` subcommands.
#[derive(Debug, Subcommand)]
pub enum SslCommand {
    /// Upload a certificate and its key; the key is never printed back.
    ///
    /// Without --sni the names come from the certificate's SANs (else its CN).
    /// --ca turns on client certificate verification (mTLS) with that CA.
    ///
    /// Example: apisix-stream ssl add --cert server.crt --key server.key --sni db.example.com
    Add(SslAddArgs),
    /// List certificates as a table (or -o json).
    ///
    /// Example: apisix-stream ssl list
    List(ListArgs),
    /// Print one certificate object as JSON (without its key).
    ///
    /// Example: apisix-stream ssl get 1
    Get(IdArg),
    /// Delete a certificate.
    ///
    /// Example: apisix-stream ssl delete 1
    Delete(IdArg),
}

/// Output format of `list`, `add` and `route test`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum OutputFormat {
    /// For people: an aligned table that fits 80 columns, or one line.
    #[default]
    Table,
    /// JSON: the objects, each with its id.
    Json,
}

/// Options of `list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// Only objects whose name matches this regular expression (APISIX's `name` list query).
    #[arg(long, value_name = "REGEX")]
    pub name: Option<String>,
    /// Only objects that carry this label key (APISIX's `label` list query).
    #[arg(long, value_name = "KEY")]
    pub label: Option<String>,
    /// Only objects whose labels match: KEY=VALUE, KEY!=VALUE or KEY, comma-separated, all must hold.
    #[arg(short = 'l', long, value_name = "SELECTOR")]
    pub selector: Option<String>,
    /// Keep listing, refreshed every --interval, until interrupted.
    #[arg(short, long)]
    pub watch: bool,
    /// Refresh interval of --watch (e.g. 500ms, 2s).
    #[arg(long, value_name = "DURATION", default_value = "2s")]
    pub interval: String,
}

/// One object id.
#[derive(Debug, Args)]
pub struct IdArg {
    /// The object's id.
    pub id: String,
}

/// Options of `upstream delete`.
#[derive(Debug, Args)]
pub struct UpstreamDeleteArgs {
    /// The upstream's id.
    pub id: String,
    /// Delete even when stream routes still use it.
    #[arg(long)]
    pub force: bool,
}

/// Load balancing of an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LbType {
    /// Weighted round robin.
    Roundrobin,
    /// Consistent hashing on --key.
    Chash,
    /// Fewest active connections.
    #[value(name = "least_conn")]
    LeastConn,
}

/// Protocol spoken to the upstream nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scheme {
    /// Plain TCP.
    Tcp,
    /// UDP.
    Udp,
    /// TLS over TCP.
    Tls,
}

/// Upstream flags shared by `route add` (inline upstream) and `upstream add`.
#[derive(Debug, Args)]
pub struct UpstreamFlags {
    /// Upstream node (repeatable); IPv6 as [::1]:80; weight defaults to 1.
    ///
    /// Stored in APISIX's map form {"HOST:PORT": WEIGHT}; a @PRIORITY on
    /// any node stores the list form [{"host", "port", "weight", "priority"}].
    #[arg(long = "node", value_name = "HOST:PORT[=WEIGHT][@PRIORITY]")]
    pub nodes: Vec<String>,
    /// Load balancing [default: roundrobin].
    #[arg(long = "type", value_enum, value_name = "TYPE")]
    pub lb_type: Option<LbType>,
    /// chash key, e.g. remote_addr.
    #[arg(long, value_name = "KEY")]
    pub key: Option<String>,
    /// Protocol to the nodes [default: tcp].
    #[arg(long, value_enum)]
    pub scheme: Option<Scheme>,
}

/// Options of `route add`.
#[derive(Debug, Args)]
pub struct RouteAddArgs {
    /// Route id (PUT); without it the server picks one (POST).
    #[arg(long)]
    pub id: Option<String>,
    /// Match connections arriving on this local address (IP or CIDR).
    #[arg(long, value_name = "IP")]
    pub server_addr: Option<String>,
    /// Match connections arriving on this local port.
    #[arg(long, value_name = "PORT")]
    pub server_port: Option<String>,
    /// Match clients in this address or network.
    #[arg(long, value_name = "IP|CIDR")]
    pub remote_addr: Option<String>,
    /// Match TLS connections with this SNI (exact or *.wildcard).
    #[arg(long, value_name = "HOST")]
    pub sni: Option<String>,
    /// Inline upstream.
    #[command(flatten)]
    pub upstream: UpstreamFlags,
    /// Use a stored upstream instead of inline nodes.
    #[arg(long, value_name = "ID", conflicts_with = "nodes")]
    pub upstream_id: Option<String>,
    /// Run under this service (its upstream unless the route has one, and its plugins).
    #[arg(long, value_name = "ID")]
    pub service_id: Option<String>,
    /// Plugin configuration (repeatable), e.g. limit-conn='{"conn":1,...}'.
    #[arg(long = "plugin", value_name = "NAME=JSON")]
    pub plugins: Vec<String>,
    /// Route name.
    #[arg(long)]
    pub name: Option<String>,
    /// Description.
    #[arg(long, value_name = "TEXT")]
    pub desc: Option<String>,
    /// The whole route as JSON (- for stdin); the other flags override it.
    #[arg(short, long, value_name = "FILE|-")]
    pub file: Option<PathBuf>,
    /// What to print: a one-line confirmation (table) or the stored object (json).
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// Options of `upstream add`.
#[derive(Debug, Args)]
pub struct UpstreamAddArgs {
    /// Upstream id (PUT); without it the server picks one (POST).
    #[arg(long)]
    pub id: Option<String>,
    /// Nodes, balancing and scheme.
    #[command(flatten)]
    pub upstream: UpstreamFlags,
    /// Extra tries on other nodes after a failed connect [default: nodes - 1].
    #[arg(long, value_name = "N")]
    pub retries: Option<String>,
    /// Seconds allowed for all retries together.
    #[arg(long, value_name = "SECS")]
    pub retry_timeout: Option<String>,
    /// Connect timeout in seconds [default: 60].
    #[arg(long, value_name = "SECS")]
    pub connect_timeout: Option<String>,
    /// Send timeout in seconds [default: 60].
    #[arg(long, value_name = "SECS")]
    pub send_timeout: Option<String>,
    /// Read timeout in seconds [default: 60].
    #[arg(long, value_name = "SECS")]
    pub read_timeout: Option<String>,
    /// Upstream name.
    #[arg(long)]
    pub name: Option<String>,
    /// Description.
    #[arg(long, value_name = "TEXT")]
    pub desc: Option<String>,
    /// The whole upstream as JSON (- for stdin); the other flags override it.
    #[arg(short, long, value_name = "FILE|-")]
    pub file: Option<PathBuf>,
    /// What to print: a one-line confirmation (table) or the stored object (json).
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// Options of `service add`.
#[derive(Debug, Args)]
pub struct ServiceAddArgs {
    /// Service id (PUT); without it the server picks one (POST).
    #[arg(long)]
    pub id: Option<String>,
    /// Inline upstream.
    #[command(flatten)]
    pub upstream: UpstreamFlags,
    /// Use a stored upstream instead of inline nodes.
    #[arg(long, value_name = "ID", conflicts_with = "nodes")]
    pub upstream_id: Option<String>,
    /// Plugin configuration (repeatable), e.g. ip-restriction='{"whitelist":["10.0.0.0/8"]}'.
    #[arg(long = "plugin", value_name = "NAME=JSON")]
    pub plugins: Vec<String>,
    /// Service name.
    #[arg(long)]
    pub name: Option<String>,
    /// Description.
    #[arg(long, value_name = "TEXT")]
    pub desc: Option<String>,
    /// The whole service as JSON (- for stdin); the other flags override it.
    #[arg(short, long, value_name = "FILE|-")]
    pub file: Option<PathBuf>,
    /// What to print: a one-line confirmation (table) or the stored object (json).
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// Options of `ssl add`.
#[derive(Debug, Args)]
pub struct SslAddArgs {
    /// Certificate chain (PEM).
    #[arg(long, value_name = "FILE")]
    pub cert: PathBuf,
    /// Private key (PEM).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// Server name (repeatable) [default: the certificate's SANs].
    #[arg(long = "sni", value_name = "NAME")]
    pub snis: Vec<String>,
    /// CA (PEM) that client certificates must chain to (turns on mTLS).
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// SSL object id (PUT); without it the server picks one (POST).
    #[arg(long)]
    pub id: Option<String>,
    /// Description.
    #[arg(long, value_name = "TEXT")]
    pub desc: Option<String>,
}

/// Options of `route test`.
#[derive(Debug, Args)]
pub struct RouteTestArgs {
    /// Local port the connection arrives on.
    #[arg(long, value_name = "PORT")]
    pub server_port: String,
    /// Local address the connection arrives on.
    #[arg(long, value_name = "IP", default_value = "127.0.0.1")]
    pub server_addr: String,
    /// Client address.
    #[arg(long, value_name = "IP", default_value = "127.0.0.1")]
    pub remote_addr: String,
    /// TLS SNI the client sends.
    #[arg(long, value_name = "HOST")]
    pub sni: Option<String>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// Options of `upgrade`.
#[derive(Debug, Args)]
pub struct UpgradeArgs {
    /// Control API address [default: the config's apisix.control, else http://127.0.0.1:9090]
    #[arg(long, value_name = "URL")]
    pub control_url: Option<String>,
    /// How long to wait for the new process to take over, e.g. 40s.
    #[arg(long, value_name = "DURATION", default_value = "40s")]
    pub timeout: String,
}

/// Options of `top`.
#[derive(Debug, Args)]
pub struct TopArgs {
    /// Refresh interval, e.g. 1s, 500ms, 2m.
    #[arg(long, value_name = "DURATION", default_value = "1s")]
    pub interval: String,
    /// Control API address [default: the config's apisix.control, else http://127.0.0.1:9090]
    #[arg(long, value_name = "URL")]
    pub control_url: Option<String>,
}
