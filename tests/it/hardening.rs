//! Numbers no value can turn into a frozen data plane: timeouts, delays and
//! intervals far beyond any clock are served clamped (and survive a
//! restart), a health check timeout of 1e20 leaves every checker running,
//! an overflowing duration in config.yaml is one config line (at start and
//! on SIGHUP), and node values the data plane could not serve are refused
//! instead of silently handing a route's clients to a wider route.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::backend::{Backend, Mode};
use crate::harness::{
    bin, call, eventually, eventually_some, free_port, greeting, run_cli, spawn_serve, test_yaml,
    wait_listening, wait_listening_logged, within, ChildConfig, ChildGuard, TestServer, KEY,
};

/// Wait until connections through `proxy` yield `want`.
async fn served_by(proxy: SocketAddr, want: Option<&str>) {
    assert!(
        eventually(10, async || greeting(proxy).await.as_deref() == want).await,
        "{proxy} never served by {want:?} (last: {:?})",
        greeting(proxy).await
    );
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn huge_timeout() -> Value {
    json!({"connect": 1e300, "send": 1e300, "read": 1e300})
}

async fn admin(addr: SocketAddr, method: Method, path: &str, body: &Value) -> (StatusCode, Value) {
    let body = (!body.is_null()).then(|| body.to_string());
    call(
        &reqwest::Client::new(),
        addr,
        Some(KEY),
        method,
        path,
        body.as_deref(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_timeouts_via_admin_are_served_and_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (admin_port, tcp_port) = (free_port(), free_port());
    let cfg = ChildConfig::new(admin_port).tcp(tcp_port).write(dir.path());
    let (admin_addr, tcp) = (loopback(admin_port), loopback(tcp_port));
    let mut child = spawn_serve(&cfg);
    wait_listening(admin_addr, &mut child);
    wait_listening(tcp, &mut child);
    let b1 = Backend::start("b1", Mode::Greet).await;
    let b2 = Backend::start("b2", Mode::Greet).await;
    let path = "/apisix/admin/stream_routes/1";

    // Timeouts, retry budget and limit-conn delay of 1e300 seconds.
    let body = json!({
        "upstream": {"nodes": {b1.addr.to_string(): 1}, "timeout": huge_timeout(),
            "retry_timeout": 1e300},
        "plugins": {"limit-conn": {"conn": 1, "burst": 1, "default_conn_delay": 1e300,
            "key": "remote_addr"}},
    });
    let (st, v) = admin(admin_addr, Method::PUT, path, &body).await;
    assert!(st.is_success(), "{st} {v}");
    served_by(tcp, Some("b1")).await;

    // A later write applies: a traffic-split upstream with the same timeouts.
    let body = json!({
        "upstream": {"nodes": {b1.addr.to_string(): 1}},
        "plugins": {"traffic-split": {"rules": [{"weighted_upstreams": [
            {"upstream": {"nodes": {b2.addr.to_string(): 1}, "timeout": huge_timeout()},
             "weight": 1}]}]}},
    });
    let (st, v) = admin(admin_addr, Method::PUT, path, &body).await;
    assert!(st.is_success(), "{st} {v}");
    served_by(tcp, Some("b2")).await;

    // A restart loads it and serves it.
    drop(child);
    let mut child = spawn_serve(&cfg);
    wait_listening(admin_addr, &mut child);
    wait_listening(tcp, &mut child);
    served_by(tcp, Some("b2")).await;

    // DELETE applies.
    let (st, v) = admin(admin_addr, Method::DELETE, path, &Value::Null).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    served_by(tcp, None).await;
    drop(child);
}

/// A loopback port where nothing listens.
async fn dead_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    l.local_addr().expect("addr")
}

async fn control_get(s: &TestServer, path: &str) -> (u16, Value) {
    let url = format!("http://{}{path}", s.control());
    let res = within(5, reqwest::get(&url)).await.expect("GET");
    let status = res.status().as_u16();
    let text = within(5, res.text()).await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Wait until the checker at `path` reports `addr` unhealthy.
async fn goes_unhealthy(s: &TestServer, path: &str, addr: SocketAddr) {
    eventually_some(15, &format!("{addr} unhealthy in {path}"), async || {
        let (code, report) = control_get(s, path).await;
        let nodes = report["nodes"].as_array().cloned().unwrap_or_default();
        let down = nodes.iter().any(|n| {
            n["port"] == addr.port() && n["ip"] == "127.0.0.1" && n["status"] == "unhealthy"
        });
        (code == 200 && down).then_some(())
    })
    .await;
}

fn checks(timeout: f64) -> Value {
    json!({"active": {"type": "tcp", "timeout": timeout,
        "healthy": {"interval": 1, "successes": 1},
        "unhealthy": {"interval": 1, "tcp_failures": 1}}})
}

#[tokio::test]
async fn health_check_timeout_of_1e20_leaves_every_checker_running() {
    let s = TestServer::with_tcp(&["127.0.0.1:0"]).await;
    let live = Backend::start("live", Mode::Greet).await;
    let dead = dead_port().await;
    let nodes = json!({live.addr.to_string(): 1, dead.to_string(): 1});
    // Route 1 (never matched) carries the huge timeout; route 2 is normal.
    s.put_route(
        "1",
        &json!({"server_port": 1, "upstream": {"nodes": nodes, "checks": checks(1e20)}}),
    )
    .await;
    s.put_route(
        "2",
        &json!({"upstream": {"nodes": nodes, "checks": checks(1.0)}}),
    )
    .await;
    goes_unhealthy(&s, "/v1/healthcheck/stream_routes/2", dead).await;
    goes_unhealthy(&s, "/v1/healthcheck/stream_routes/1", dead).await;
    for _ in 0..4 {
        assert_eq!(greeting(s.tcp[0]).await.as_deref(), Some("live"));
    }
    // Once the odd upstream is gone, new upstreams still get checkers.
    let (st, v) = s
        .call(Method::DELETE, "/apisix/admin/stream_routes/1", None)
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    s.put_route(
        "3",
        &json!({"server_port": 1, "upstream": {"nodes": nodes, "checks": checks(2.0)}}),
    )
    .await;
    goes_unhealthy(&s, "/v1/healthcheck/stream_routes/3", dead).await;
}

const OVERFLOW: &str = "99999999999999999999999h";

#[test]
fn overflowing_duration_in_config_yaml_is_one_line_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = test_yaml(&dir.path().join("data"), free_port());
    for (section, key) in [
        (
            "nginx_config:\n  worker_shutdown_timeout: ",
            "worker_shutdown_timeout",
        ),
        (
            "nginx_config:\n  http:\n    client_header_timeout: ",
            "client_header_timeout",
        ),
    ] {
        let cfg = dir.path().join("config.yaml");
        std::fs::write(&cfg, format!("{base}{section}{OVERFLOW}\n")).expect("write");
        let (code, _, err) = run_cli(&["serve", "-c", cfg.to_str().expect("utf8")]);
        assert_eq!(code, 1, "{err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(err.contains(key) && !err.contains("panicked"), "{err}");
    }
}

/// `serve -c <cfg>` with stderr written to `log`.
fn spawn_logged(cfg: &Path, log: &Path) -> ChildGuard {
    let file = std::fs::File::create(log).expect("log file");
    let child = Command::new(bin())
        .arg("serve")
        .arg("-c")
        .arg(cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(file))
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("spawn serve");
    ChildGuard { child }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflowing_duration_on_sighup_is_one_line_and_serving_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (admin_port, tcp_port) = (free_port(), free_port());
    let config = ChildConfig::new(admin_port).tcp(tcp_port);
    let cfg = config.write(dir.path());
    let log = dir.path().join("stderr.log");
    let (admin_addr, tcp) = (loopback(admin_port), loopback(tcp_port));
    let mut child = spawn_logged(&cfg, &log);
    wait_listening_logged(admin_addr, &mut child, &log);
    wait_listening_logged(tcp, &mut child, &log);
    let b1 = Backend::start("b1", Mode::Greet).await;
    let route = json!({"upstream": {"nodes": {b1.addr.to_string(): 1}}});
    let (st, v) = admin(
        admin_addr,
        Method::PUT,
        "/apisix/admin/stream_routes/1",
        &route,
    )
    .await;
    assert!(st.is_success(), "{st} {v}");
    served_by(tcp, Some("b1")).await;

    let text = std::fs::read_to_string(&cfg).expect("read config");
    std::fs::write(
        &cfg,
        format!("{text}nginx_config:\n  worker_shutdown_timeout: {OVERFLOW}\n"),
    )
    .expect("write");
    let pid = child.child.id().to_string();
    let st = Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .expect("kill");
    assert!(st.success());
    let mentions = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("worker_shutdown_timeout"))
            .count()
    };
    assert!(
        eventually(10, async || mentions() > 0).await,
        "the reload error is logged: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(
        mentions(),
        1,
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!log_text.contains("panicked"), "{log_text}");
    assert!(
        child.child.try_wait().expect("wait").is_none(),
        "still running"
    );
    assert_eq!(greeting(tcp).await.as_deref(), Some("b1"));
    let (st, _) = admin(
        admin_addr,
        Method::GET,
        "/apisix/admin/stream_routes/1",
        &Value::Null,
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    drop(child);
}

#[tokio::test]
async fn node_values_the_data_plane_cannot_serve_are_refused() {
    let s = TestServer::with_tcp(&["127.0.0.1:0"]).await;
    let wide = Backend::start("wide", Mode::Greet).await;
    let narrow = Backend::start("narrow", Mode::Greet).await;
    s.put_route(
        "9",
        &json!({"upstream": {"nodes": {wide.addr.to_string(): 1}}}),
    )
    .await;
    s.put_route(
        "1",
        &json!({"remote_addr": "127.0.0.1", "upstream": {"nodes": {narrow.addr.to_string(): 1}}}),
    )
    .await;
    served_by(s.tcp[0], Some("narrow")).await;

    let port_less = narrow.addr.ip().to_string();
    let bad_nodes = [
        json!({narrow.addr.to_string(): 4_294_967_296_u64}),
        json!({narrow.addr.to_string(): 1e300}),
        json!({port_less: 1}),
        json!([{"host": "127.0.0.1", "port": narrow.addr.port(), "weight": 4_294_967_296_u64}]),
    ];
    for nodes in bad_nodes {
        let route = json!({"remote_addr": "127.0.0.1", "upstream": {"nodes": nodes}});
        let (st, v) = s
            .call(
                Method::PUT,
                "/apisix/admin/stream_routes/1",
                Some(&route.to_string()),
            )
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{nodes}: {v}");
        assert!(
            v["error_msg"].as_str().is_some_and(|m| m.contains("node")),
            "{v}"
        );
        let (st, v) = s
            .call(
                Method::PUT,
                "/apisix/admin/upstreams/5",
                Some(&json!({"nodes": nodes}).to_string()),
            )
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{nodes}: {v}");
        // The narrow route is still served as it was, never by the wide one.
        assert_eq!(greeting(s.tcp[0]).await.as_deref(), Some("narrow"));
    }
}
