//! Standalone mode (`config_provider: yaml` / `json`): routes come from
//! `apisix.yaml` / `apisix.json` beside config.yaml, edits apply without a
//! restart, broken edits are ignored and the Admin API is read-only.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use apisix_stream::config::{Config, ListenSpec};
use apisix_stream::server::{self, Server};
use reqwest::{Method, StatusCode};
use serde_json::json;
use tokio::net::TcpStream;

use crate::backend::{read_line, Backend, Mode};
use crate::harness::{
    bin, eventually, eventually_some, free_port, run_cli, wait_listening, within, ChildGuard,
    TestServer, KEY,
};

/// Longest wait for an edit of the file to show (it is checked every second).
const APPLY_WITHIN: Duration = Duration::from_secs(5);

/// Write the file and give it an mtime no earlier write had, so an edit in
/// the same clock tick (even with the same size) is still seen.
fn write_file(path: &Path, text: &str) {
    static TICK: AtomicU64 = AtomicU64::new(1_500_000_000);
    std::fs::write(path, text).expect("write standalone file");
    let secs = TICK.fetch_add(1, Ordering::SeqCst);
    let f = std::fs::File::options()
        .write(true)
        .open(path)
        .expect("open standalone file");
    f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
        .expect("set mtime");
}

/// `apisix.yaml` with route 1 (matching every connection) to upstream 1 at `node`.
fn yaml_route_to(node: &str) -> String {
    format!(
        "stream_routes:\n  - id: 1\n    upstream_id: 1\nupstreams:\n  - id: 1\n    \
         type: roundrobin\n    nodes:\n      \"{node}\": 1\n#END\n"
    )
}

/// What the proxy answers on a fresh connection: the backend's greeting, or
/// `""` when the connection is closed without data (no route).
async fn greeting(proxy: SocketAddr) -> String {
    let mut c = within(5, TcpStream::connect(proxy))
        .await
        .expect("connect to proxy");
    read_line(&mut c).await
}

/// Poll fresh connections until the proxy answers `want`.
async fn wait_greeting(proxy: SocketAddr, want: &str) {
    let mut got = String::new();
    let applied = eventually(APPLY_WITHIN.as_secs(), async || {
        got = greeting(proxy).await;
        got == want
    })
    .await;
    assert!(applied, "proxy still answers {got:?}, expected {want:?}");
}

/// Start an in-process server whose stream listener is 127.0.0.1:0 and whose
/// standalone file is `file`.
async fn start_plain(config_text: &str, file: PathBuf) -> (Server, SocketAddr) {
    let mut config = Config::from_yaml(config_text).expect("config parses");
    config.deployment.standalone_file = file;
    if let Some(sp) = config.apisix.stream_proxy.as_mut() {
        sp.tcp = vec![ListenSpec::new("127.0.0.1:0".parse().expect("addr"))];
        sp.udp.clear();
    }
    let server = within(10, server::start(config))
        .await
        .expect("server starts");
    let proxy = server.tcp_listeners()[0].local;
    (server, proxy)
}

/// A data-plane config.yaml reading the standalone file of `provider`.
fn data_plane_yaml(provider: &str, proxy_port: u16) -> String {
    format!(
        r#"apisix:
  proxy_mode: stream
  stream_proxy:
    tcp:
      - "127.0.0.1:{proxy_port}"
  enable_control: false
deployment:
  role: data_plane
  role_data_plane:
    config_provider: {provider}
plugin_attr:
  prometheus:
    enable_export_server: false
"#
    )
}

#[tokio::test]
async fn traditional_yaml_serves_reloads_and_refuses_admin_writes() {
    let a = Backend::start("a", Mode::Greet).await;
    let b = Backend::start("b", Mode::Greet).await;
    let (mut s, file) = TestServer::standalone_text(&yaml_route_to(&a.addr.to_string())).await;
    let proxy = s.tcp[0];
    assert_eq!(greeting(proxy).await, "a");

    // GET lists what the file holds.
    let (st, v) = s
        .call(Method::GET, "/apisix/admin/stream_routes", None)
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["total"], 1, "{v}");
    assert_eq!(v["list"][0]["value"]["id"], "1", "{v}");
    assert_eq!(v["list"][0]["value"]["upstream_id"], 1, "{v}");
    let (st, v) = s.call(Method::GET, "/apisix/admin/upstreams/1", None).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["value"]["nodes"][a.addr.to_string()], 1, "{v}");

    // Every write is refused with 405 and a message.
    let route = json!({"upstream": {"nodes": {b.addr.to_string(): 1}}}).to_string();
    let writes: [(Method, &str, Option<&str>); 5] = [
        (Method::PUT, "/apisix/admin/stream_routes/2", Some(&route)),
        (Method::POST, "/apisix/admin/stream_routes", Some(&route)),
        (
            Method::PATCH,
            "/apisix/admin/stream_routes/1",
            Some(r#"{"desc": "x"}"#),
        ),
        (Method::DELETE, "/apisix/admin/stream_routes/1", None),
        (
            Method::PUT,
            "/apisix/admin/upstreams/9",
            Some(r#"{"nodes": {"127.0.0.1:1": 1}}"#),
        ),
    ];
    for (method, path, body) in writes {
        let (st, v) = s.call(method.clone(), path, body).await;
        assert_eq!(st, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}: {v}");
        let msg = v["error_msg"].as_str().unwrap_or_default();
        assert!(
            msg.contains("standalone") && msg.contains("apisix.yaml"),
            "{method} {path}: {v}"
        );
    }
    assert_eq!(greeting(proxy).await, "a");

    // An edit applies without a restart.
    write_file(&file, &yaml_route_to(&b.addr.to_string()));
    wait_greeting(proxy, "b").await;
    let (_, v) = s.call(Method::GET, "/apisix/admin/upstreams/1", None).await;
    assert_eq!(v["value"]["nodes"][b.addr.to_string()], 1, "{v}");

    // A broken edit (no end marker) is ignored; reads say why.
    let half = yaml_route_to(&a.addr.to_string()).replace("#END\n", "");
    write_file(&file, &half);
    let url = s.url("/apisix/admin/stream_routes");
    let stale = eventually_some(
        APPLY_WITHIN.as_secs(),
        "the broken edit reported",
        async || {
            let res = within(10, s.client.get(&url).header("X-API-KEY", KEY).send())
                .await
                .expect("GET");
            let stale = res.headers().get("x-apisix-stale")?;
            Some(stale.to_str().unwrap_or_default().to_string())
        },
    )
    .await;
    assert!(stale.contains("missing valid end flag"), "{stale}");
    assert_eq!(greeting(proxy).await, "b");

    // Deleting the route from the file closes new connections.
    write_file(
        &file,
        &format!(
            "upstreams:\n  - id: 1\n    nodes: {{\"{}\": 1}}\n#END\n",
            b.addr
        ),
    );
    wait_greeting(proxy, "").await;
    let (_, v) = s
        .call(Method::GET, "/apisix/admin/stream_routes", None)
        .await;
    assert_eq!(v["total"], 0, "{v}");
    s.stop().await;
}

#[tokio::test]
async fn data_plane_yaml_child_reloads_and_logs_broken_edits() {
    let a = Backend::start("a", Mode::Greet).await;
    let b = Backend::start("b", Mode::Greet).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let proxy_port = free_port();
    let cfg = dir.path().join("config.yaml");
    std::fs::write(&cfg, data_plane_yaml("yaml", proxy_port)).expect("write config");
    let file = dir.path().join("apisix.yaml");
    // The node's port comes from the environment.
    write_file(&file, &yaml_route_to("127.0.0.1:${{BACKEND_PORT}}"));
    let log_path = dir.path().join("stderr.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let child = Command::new(bin())
        .arg("serve")
        .arg("-c")
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .env("RUST_LOG", "warn")
        .env("BACKEND_PORT", a.addr.port().to_string())
        .spawn()
        .expect("spawn serve");
    let mut child = ChildGuard { child };
    let proxy: SocketAddr = format!("127.0.0.1:{proxy_port}").parse().expect("addr");
    wait_listening(proxy, &mut child);
    assert_eq!(greeting(proxy).await, "a");

    let logged = |needle: &str| {
        std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .matches(needle)
            .count()
    };
    let wait_logged = async |needle: &str| {
        let seen = eventually(APPLY_WITHIN.as_secs(), async || logged(needle) > 0).await;
        assert!(seen, "no log line {needle:?}");
    };

    // Invalid YAML (with the marker): ignored, logged.
    write_file(&file, "stream_routes: [\n  {upstream_id: 1}\n#END\n");
    wait_logged("failed to parse yaml file").await;
    assert_eq!(greeting(proxy).await, "a");

    // Valid YAML without the marker: ignored, logged; the earlier broken
    // version was logged once although it was checked again since.
    write_file(
        &file,
        &yaml_route_to(&b.addr.to_string()).replace("#END", ""),
    );
    wait_logged("missing valid end flag in file").await;
    assert_eq!(logged("failed to parse yaml file"), 1);
    assert!(logged(&file.display().to_string()) >= 2);
    assert_eq!(greeting(proxy).await, "a");

    // A good edit moves the route.
    write_file(&file, &yaml_route_to(&b.addr.to_string()));
    wait_greeting(proxy, "b").await;
    assert_eq!(logged("missing valid end flag in file"), 1);

    // An invalid item is skipped with APISIX's message; the rest loads.
    write_file(
        &file,
        &format!(
            "stream_routes:\n  - id: bad\n    upstream_id: 1\n    plugins: {{x-rewrite: {{}}}}\n  \
             - id: 1\n    upstream_id: 1\nupstreams:\n  - id: 1\n    nodes: {{\"{}\": 1}}\n#END\n",
            a.addr
        ),
    );
    wait_greeting(proxy, "a").await;
    wait_logged("failed to check item data of [stream_routes] err:unknown plugin [x-rewrite]")
        .await;
    assert!(
        child.child.try_wait().expect("wait").is_none(),
        "serve exited"
    );
}

#[tokio::test]
async fn data_plane_json_serves_and_reloads() {
    let a = Backend::start("a", Mode::Greet).await;
    let b = Backend::start("b", Mode::Greet).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("apisix.json");
    let doc = |node: SocketAddr| {
        json!({
            "stream_routes": [{"id": 1, "upstream_id": "up"}],
            "upstreams": [{"id": "up", "type": "roundrobin", "nodes": {node.to_string(): 1}}],
            "routes": [{"uri": "/ignored"}],
        })
        .to_string()
    };
    write_file(&file, &doc(a.addr));
    let (server, proxy) = start_plain(&data_plane_yaml("json", 9100), file.clone()).await;
    assert!(server.admin_addr().is_none(), "data plane has no Admin API");
    assert_eq!(greeting(proxy).await, "a");
    write_file(&file, &doc(b.addr));
    wait_greeting(proxy, "b").await;
    within(10, server.shutdown()).await;
}

#[test]
fn serve_stops_on_a_missing_or_broken_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("config.yaml");
    std::fs::write(&cfg, data_plane_yaml("yaml", free_port())).expect("write config");
    let file = dir.path().join("apisix.yaml");
    let cfg_arg = cfg.to_str().expect("utf-8 path");
    let last_line = |err: &str| err.lines().last().unwrap_or_default().to_string();

    let (code, _, err) = run_cli(&["serve", "-c", cfg_arg]);
    assert_ne!(code, 0, "{err}");
    let line = last_line(&err);
    assert!(
        line.contains(&file.display().to_string()) && line.contains("No such file"),
        "{err}"
    );

    std::fs::write(&file, "stream_routes: []\n").expect("write");
    let (code, _, err) = run_cli(&["serve", "-c", cfg_arg]);
    assert_ne!(code, 0, "{err}");
    assert!(
        last_line(&err).contains(&format!(
            "missing valid end flag in file {}",
            file.display()
        )),
        "{err}"
    );

    std::fs::write(&file, "stream_routes: [\n#END\n").expect("write");
    let (code, _, err) = run_cli(&["serve", "-c", cfg_arg]);
    assert_ne!(code, 0, "{err}");
    assert!(
        last_line(&err).contains(&format!("failed to parse yaml file {}", file.display())),
        "{err}"
    );
}

#[tokio::test]
async fn unservable_route_in_file_refuses_its_clients_instead_of_falling_through() {
    let wide = Backend::start("wide", Mode::Greet).await;
    // Route "narrow" has a map-form node without a port (refused by the
    // Admin API); route "wide" catches every other client.
    let (s, _file) = TestServer::standalone_text(&format!(
        "stream_routes:\n  - id: narrow\n    remote_addr: 127.0.0.1\n    upstream:\n      \
         nodes:\n        \"127.0.0.1\": 1\n  - id: wide\n    upstream:\n      nodes:\n        \
         \"{}\": 1\n#END\n",
        wide.addr
    ))
    .await;
    let proxy = s.tcp[0];
    // A client the narrow route filters for is closed, never sent to the
    // wide route's backend; any other client reaches the wide route.
    let mut narrow_client = crate::backend::connect_from("127.0.0.1", proxy).await;
    assert_eq!(read_line(&mut narrow_client).await, "");
    let mut other = crate::backend::connect_from("127.0.0.2", proxy).await;
    assert_eq!(read_line(&mut other).await, "wide");
    // The Control API lists the narrow route as skipped, with its reason.
    let listed = s.skipped().await;
    let text = listed.to_string();
    assert!(text.contains("narrow"), "{text}");
    assert!(!text.contains("\"wide\""), "{text}");
    // Reads of the Admin API show only what can be served.
    let (st, v) = s
        .call(Method::GET, "/apisix/admin/stream_routes", None)
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["total"], 1, "{v}");
}
