//! The command line: argument types in [`args`], behaviour here.
//!
//! Client commands resolve the Admin API address and key (flag > env >
//! config.yaml > default), build bodies in [`resource`], call the server
//! through [`client::AdminClient`] and print with [`output`]. Every failure
//! is an `anyhow` error that `main` prints as one line with exit code 1.

pub mod args;
pub mod client;
pub mod generate;
pub mod list;
pub mod output;
pub mod resource;
pub mod upgrade;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde_json::Value;

use crate::config::{admin_key, AdminRole, Config};
use crate::model::Kind;
use crate::server;
pub use args::{Cli, Command};
use args::{
    GlobalArgs, ListArgs, OutputFormat, RouteCommand, ServiceCommand, SslCommand, UpstreamCommand,
};
use client::{AdminClient, Endpoint};
use output::emit;

/// Threads of the control plane's blocking pool (store writes). Few
/// threads keep the long-lived objects they allocate in few malloc arenas
/// instead of one per thread, which measurably costs memory.
const BLOCKING_THREADS: usize = 4;

/// Config file used when `-c` is not given (only if it exists).
pub const DEFAULT_CONFIG: &str = "conf/config.yaml";
/// Admin API address used when nothing else names one.
pub const DEFAULT_ADMIN_URL: &str = "http://127.0.0.1:9180";
/// Control API address `top` uses when nothing else names one.
pub const DEFAULT_CONTROL_URL: &str = "http://127.0.0.1:9090";

/// Run a parsed command line; errors become one line on stderr in `main`.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let global = cli.global;
    match cli.command {
        Command::Serve => serve(
            global
                .config
                .as_deref()
                .unwrap_or(Path::new(DEFAULT_CONFIG)),
        ),
        Command::Completions { shell } => {
            let mut text = Vec::new();
            generate::completions(shell, &mut text)?;
            emit(&String::from_utf8_lossy(&text))
        }
        Command::Man { out_dir: None } => emit(&String::from_utf8_lossy(&generate::man()?)),
        Command::Man { out_dir: Some(dir) } => {
            let names = generate::man_to_dir(&dir)?;
            emit(&format!(
                "wrote {} man pages to {}\n",
                names.len(),
                dir.display()
            ))
        }
        Command::Route(cmd) => route(&connect(&global)?, cmd),
        Command::Upstream(cmd) => upstream(&connect(&global)?, cmd),
        Command::Service(cmd) => service(&connect(&global)?, cmd),
        Command::Ssl(cmd) => ssl(&connect(&global)?, cmd),
        Command::Top(a) => top(&global, &a),
        Command::Upgrade(a) => {
            let url = control_url(&global, a.control_url.as_deref())?;
            let timeout = crate::top::parse_interval(&a.timeout)?;
            let pid = upgrade::run(&url, timeout)?;
            emit(&format!("{pid}\n"))
        }
    }
}

fn serve(path: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    let mut config = Config::load(path)?;
    crate::logging::configure(
        &config.nginx_config.error_log,
        config.nginx_config.error_log_level,
    )?;
    let generated = admin_key::ensure_admin_keys(path, &text, &mut config)?;
    for g in &generated {
        // Shown once, as APISIX does; it is also written back into the file.
        eprintln!(
            "generated admin key for \"{}\" (saved in {}): {}",
            g.name,
            path.display(),
            g.key.expose()
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS)
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(server::run(config, Some(path.to_path_buf())))?;
    Ok(())
}

/// The Admin API address and key a config.yaml gives: `admin_listen` (an
/// unspecified address means this host's loopback) and the first non-empty
/// key of role admin.
pub fn endpoint_from_config(config: &Config) -> Endpoint {
    let admin = &config.deployment.admin;
    let listen = &admin.admin_listen;
    let host = url_host(listen.ip);
    let key = admin
        .admin_key
        .iter()
        .find(|k| k.role == AdminRole::Admin && !k.key.is_empty())
        .map(|k| k.key.expose().to_string());
    Endpoint {
        url: format!("http://{host}:{}", listen.port),
        key,
    }
}

/// How to reach a listener on `ip` from this host, as the host part of a URL.
fn url_host(ip: std::net::IpAddr) -> String {
    if ip.is_unspecified() {
        "127.0.0.1".to_string()
    } else if ip.is_ipv6() {
        format!("[{ip}]")
    } else {
        ip.to_string()
    }
}

/// The Control API address a config.yaml gives (`apisix.control`; an
/// unspecified address means this host's loopback).
pub fn control_url_from_config(config: &Config) -> String {
    let control = &config.apisix.control;
    format!("http://{}:{}", url_host(control.ip), control.port)
}

/// `top`: `--control-url`, else the config's `apisix.control`, else the
/// default address.
fn top(global: &GlobalArgs, a: &args::TopArgs) -> anyhow::Result<()> {
    let interval = crate::top::parse_interval(&a.interval)?;
    let control_url = control_url(global, a.control_url.as_deref())?;
    crate::top::run(crate::top::Options {
        control_url,
        interval,
    })
}

/// The Control API's address: `--control-url`, else the config's
/// `apisix.control`, else the default address.
fn control_url(global: &GlobalArgs, flag: Option<&str>) -> anyhow::Result<String> {
    Ok(match (flag, client_config_path(global)) {
        (Some(u), _) => crate::top::control_base_url(u)?,
        (None, Some(path)) => {
            let config = Config::load(&path).map_err(|e| {
                anyhow::anyhow!(
                    "cannot take the control address from {}: {e}",
                    path.display()
                )
            })?;
            control_url_from_config(&config)
        }
        (None, None) => DEFAULT_CONTROL_URL.to_string(),
    })
}

/// Apply precedence: flags (and `APISIX_ADMIN_KEY`, folded into the flag by
/// clap) first, then the config's values, then the default address.
pub fn resolve_endpoint(
    admin_url: Option<&str>,
    api_key: Option<&str>,
    from_config: Option<Endpoint>,
) -> anyhow::Result<Endpoint> {
    let url = match (admin_url, &from_config) {
        (Some(u), _) => client::normalize_url(u)?,
        (None, Some(c)) => c.url.clone(),
        (None, None) => DEFAULT_ADMIN_URL.to_string(),
    };
    let key = api_key
        .map(str::to_string)
        .or_else(|| from_config.and_then(|c| c.key));
    Ok(Endpoint { url, key })
}

/// The config file to read for client commands, if any.
fn client_config_path(global: &GlobalArgs) -> Option<PathBuf> {
    match &global.config {
        Some(p) => Some(p.clone()),
        None => Some(PathBuf::from(DEFAULT_CONFIG)).filter(|p| p.is_file()),
    }
}

fn connect(global: &GlobalArgs) -> anyhow::Result<AdminClient> {
    let needs_config = global.admin_url.is_none() || global.api_key.is_none();
    let from_config = match client_config_path(global).filter(|_| needs_config) {
        Some(path) => {
            // The config error's text already names its cause; its source
            // chain would repeat it.
            let config = Config::load(&path).map_err(|e| {
                anyhow::anyhow!(
                    "cannot take the admin address and key from {}: {e}",
                    path.display()
                )
            })?;
            Some(endpoint_from_config(&config))
        }
        None => None,
    };
    let endpoint = resolve_endpoint(
        global.admin_url.as_deref(),
        global.api_key.as_deref(),
        from_config,
    )?;
    AdminClient::new(endpoint)
}

fn print_list(
    client: &AdminClient,
    kind: Kind,
    args: &ListArgs,
    table: fn(&[Value]) -> String,
) -> anyhow::Result<()> {
    list::run(client, kind, args, table)
}

fn print_get(client: &AdminClient, kind: Kind, id: &str) -> anyhow::Result<()> {
    let v = client.get(kind, id)?;
    emit(&output::json_text(&v))
}

fn add(client: &AdminClient, kind: Kind, id: Option<String>, body: &Value) -> anyhow::Result<()> {
    let stored = client
        .put(kind, id.as_deref(), body)
        .with_context(|| format!("cannot add the {}", kind.noun()))?;
    emit(&output::json_text(&stored))
}

/// `route add` / `upstream add` / `service add`: write, then one line for people
/// (`created stream route 1 (server_port 9100 -> 127.0.0.1:3306)`), or the
/// stored object with `-o json`.
fn add_confirmed(
    client: &AdminClient,
    kind: Kind,
    id: Option<String>,
    body: &Value,
    output: OutputFormat,
    summary: fn(&Value) -> String,
) -> anyhow::Result<()> {
    let (stored, created) = client
        .write(kind, id.as_deref(), body)
        .with_context(|| format!("cannot add the {}", kind.noun()))?;
    match output {
        OutputFormat::Json => emit(&output::json_text(&stored)),
        OutputFormat::Table => {
            let id = stored.get("id").map_or_else(String::new, |v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            });
            let verb = if created { "created" } else { "updated" };
            emit(&format!(
                "{verb} {} {id} ({})\n",
                kind.noun(),
                summary(&stored)
            ))
        }
    }
}

fn delete(client: &AdminClient, kind: Kind, id: &str, force: bool) -> anyhow::Result<()> {
    client.delete(kind, id, force).map_err(|e| {
        if e.is::<client::NotFound>() {
            e
        } else {
            e.context(format!("cannot delete {} {id:?}", kind.noun()))
        }
    })?;
    emit(&format!("deleted {} {id}\n", kind.noun()))
}

fn route(client: &AdminClient, cmd: RouteCommand) -> anyhow::Result<()> {
    let kind = Kind::StreamRoute;
    match cmd {
        RouteCommand::Add(a) => {
            let (id, body) = resource::route_body(&a)?;
            add_confirmed(client, kind, id, &body, a.output, output::route_summary)
        }
        RouteCommand::List(a) => print_list(client, kind, &a, output::routes_table),
        RouteCommand::Get(a) => print_get(client, kind, &a.id),
        RouteCommand::Delete(a) => delete(client, kind, &a.id, false),
        RouteCommand::Test(a) => route_test(client, &a),
    }
}

fn route_test(client: &AdminClient, a: &args::RouteTestArgs) -> anyhow::Result<()> {
    let port = resource::parse_port("--server-port", &a.server_port)?.to_string();
    let server_addr = resource::parse_ip("--server-addr", &a.server_addr)?.to_string();
    let remote_addr = resource::parse_ip("--remote-addr", &a.remote_addr)?.to_string();
    let mut query = vec![
        ("server_port", port.as_str()),
        ("server_addr", server_addr.as_str()),
        ("remote_addr", remote_addr.as_str()),
    ];
    if let Some(sni) = &a.sni {
        query.push(("sni", sni.as_str()));
    }
    let answer = client
        .route_test(&query)
        .context("cannot test the routes")?;
    let (text, matched) = output::route_test_text(&answer);
    match a.output {
        OutputFormat::Json => emit(&output::json_text(&answer))?,
        OutputFormat::Table => emit(&text)?,
    }
    if !matched {
        bail!("no stream route matches this connection");
    }
    Ok(())
}

fn upstream(client: &AdminClient, cmd: UpstreamCommand) -> anyhow::Result<()> {
    let kind = Kind::Upstream;
    match cmd {
        UpstreamCommand::Add(a) => {
            let (id, body) = resource::upstream_body(&a)?;
            add_confirmed(client, kind, id, &body, a.output, output::upstream_summary)
        }
        UpstreamCommand::List(a) => print_list(client, kind, &a, output::upstreams_table),
        UpstreamCommand::Get(a) => print_get(client, kind, &a.id),
        UpstreamCommand::Delete(a) => delete(client, kind, &a.id, a.force),
    }
}

fn service(client: &AdminClient, cmd: ServiceCommand) -> anyhow::Result<()> {
    let kind = Kind::Service;
    match cmd {
        ServiceCommand::Add(a) => {
            let (id, body) = resource::service_body(&a)?;
            add_confirmed(client, kind, id, &body, a.output, output::service_summary)
        }
        ServiceCommand::List(a) => print_list(client, kind, &a, output::services_table),
        ServiceCommand::Get(a) => print_get(client, kind, &a.id),
        ServiceCommand::Delete(a) => delete(client, kind, &a.id, false),
    }
}

fn ssl(client: &AdminClient, cmd: SslCommand) -> anyhow::Result<()> {
    let kind = Kind::Ssl;
    match cmd {
        SslCommand::Add(a) => {
            let (id, body) = resource::ssl_body(&a)?;
            add(client, kind, id, &body)
        }
        SslCommand::List(a) => print_list(client, kind, &a, output::ssls_table),
        SslCommand::Get(a) => print_get(client, kind, &a.id),
        SslCommand::Delete(a) => delete(client, kind, &a.id, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence() {
        let cfg = Some(Endpoint {
            url: "http://127.0.0.1:9999".into(),
            key: Some("from-config".into()),
        });
        let e = resolve_endpoint(Some("10.0.0.1:1"), Some("flag"), cfg.clone()).unwrap();
        assert_eq!(e.url, "http://10.0.0.1:1");
        assert_eq!(e.key.as_deref(), Some("flag"));
        let e = resolve_endpoint(None, None, cfg).unwrap();
        assert_eq!(e.url, "http://127.0.0.1:9999");
        assert_eq!(e.key.as_deref(), Some("from-config"));
        let e = resolve_endpoint(None, None, None).unwrap();
        assert_eq!(e.url, DEFAULT_ADMIN_URL);
        assert_eq!(e.key, None);
    }

    #[test]
    fn endpoint_of_a_config() {
        let c = Config::from_yaml(
            "deployment:\n  admin:\n    admin_key:\n      - {name: v, key: viewkey, role: viewer}\n      - {name: a, key: adminkey, role: admin}\n    admin_listen: {ip: 0.0.0.0, port: 9181}\n",
        )
        .unwrap();
        let e = endpoint_from_config(&c);
        assert_eq!(e.url, "http://127.0.0.1:9181");
        assert_eq!(e.key.as_deref(), Some("adminkey"));
    }

    #[test]
    fn control_url_of_a_config() {
        let c = Config::from_yaml("apisix:\n  control: {ip: 0.0.0.0, port: 9095}\n").unwrap();
        assert_eq!(control_url_from_config(&c), "http://127.0.0.1:9095");
        let c = Config::from_yaml("apisix:\n  control: {ip: 10.1.2.3, port: 9096}\n").unwrap();
        assert_eq!(control_url_from_config(&c), "http://10.1.2.3:9096");
        let c = Config::from_yaml("apisix:\n  enable_control: true\n").unwrap();
        assert_eq!(control_url_from_config(&c), DEFAULT_CONTROL_URL);
    }
}
