//! Access control and secrets.
//!
//! Every Admin API route and method sits behind `allow_admin` (socket
//! address only) and then the key check, and a refused request writes
//! nothing. Admin keys, the keyring, the etcd password and private keys
//! never show up in logs, CLI output, API answers or metrics. The sample
//! admin key of APISIX's documentation never guards an Admin API that other
//! hosts can reach, and the files holding secrets are owner-only.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use apisix_stream::config::SAMPLE_ADMIN_KEY;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::backend::{Backend, Mode};
use crate::harness::{
    bin, free_port, run_cli, spawn_serve, wait_exit, wait_listening, wait_listening_logged,
    with_etcd, within, ChildConfig, ChildGuard, TestServer, KEY, VIEWER_KEY,
};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A self-signed certificate and its private key, both PEM.
fn test_cert(name: &str) -> (String, String) {
    let c = rcgen::generate_simple_self_signed(vec![name.to_string()]).expect("cert");
    (c.cert.pem(), c.key_pair.serialize_pem())
}

/// What of a private key PEM must never be seen: the whole text and every
/// base64 body line.
fn pem_secrets(pem: &str) -> Vec<String> {
    let mut out = vec![pem.trim().to_string()];
    out.extend(
        pem.lines()
            .map(str::trim)
            .filter(|l| !l.starts_with("-----") && l.len() >= 16)
            .map(str::to_string),
    );
    out
}

/// Fail if any secret occurs in `text`; `what` names where the text came from.
fn assert_no_secret(what: &str, text: &str, secrets: &[String]) {
    for s in secrets {
        assert!(
            !text.contains(s.as_str()),
            "secret {:?}... found in {what}:\n{text}",
            s.chars().take(12).collect::<String>()
        );
    }
}

/// Every file under `dir` with its bytes, to prove nothing was written.
fn dir_contents(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                out.insert(p, bytes);
            }
        }
    }
    out
}

/// The three resources with a body each that the server would accept.
fn resources(cert: &str, key: &str) -> [(&'static str, Value); 3] {
    let nodes = json!({"127.0.0.1:1995": 1});
    [
        (
            "stream_routes",
            json!({"server_port": 9100, "upstream": {"nodes": nodes, "type": "roundrobin"}}),
        ),
        ("upstreams", json!({"nodes": nodes, "type": "roundrobin"})),
        (
            "ssls",
            json!({"cert": cert, "key": key, "snis": ["walk.test"]}),
        ),
    ]
}

/// One request of the route walk.
#[derive(Debug, Clone)]
struct Req {
    method: Method,
    path: String,
    body: Option<String>,
}

impl Req {
    fn new(method: &str, path: &str, body: Option<String>) -> Req {
        Req {
            method: Method::from_bytes(method.as_bytes()).expect("method"),
            path: path.to_string(),
            body,
        }
    }

    /// Whether a viewer key may make it (GET and HEAD only).
    fn is_read(&self) -> bool {
        self.method == Method::GET || self.method == Method::HEAD
    }
}

/// Every route and method of the Admin API, and paths around it.
fn route_table(cert: &str, key: &str) -> Vec<Req> {
    let mut t = Vec::new();
    for (res, body) in resources(cert, key) {
        let base = format!("/apisix/admin/{res}");
        let mut with_id = body.clone();
        with_id["id"] = json!("2");
        let b = Some(body.to_string());
        t.extend([
            Req::new("GET", &base, None),
            Req::new("GET", &format!("{base}/"), None),
            Req::new("GET", &format!("{base}/1"), None),
            Req::new("GET", &format!("{base}/missing"), None),
            Req::new("GET", &format!("{base}?page=1&page_size=10&name=x"), None),
            Req::new("GET", &format!("{base}/1/desc"), None),
            Req::new("HEAD", &base, None),
            Req::new("HEAD", &format!("{base}/1"), None),
            Req::new("PUT", &format!("{base}/1"), b.clone()),
            Req::new("PUT", &format!("{base}/3"), b.clone()),
            Req::new("PUT", &base, Some(with_id.to_string())),
            Req::new("PUT", &format!("{base}/1/desc"), Some("\"x\"".into())),
            Req::new("PUT", &format!("{base}/4?ttl=10"), b.clone()),
            Req::new("POST", &base, b.clone()),
            Req::new("POST", &format!("{base}/9"), b.clone()),
            Req::new("DELETE", &format!("{base}/1"), None),
            Req::new("DELETE", &format!("{base}/1?force=true"), None),
            Req::new("DELETE", &base, None),
            Req::new(
                "PATCH",
                &format!("{base}/1"),
                Some(r#"{"desc":"x"}"#.into()),
            ),
            Req::new("PATCH", &format!("{base}/1/desc"), Some("\"x\"".into())),
            Req::new(
                "PATCH",
                &format!("{base}/1/nodes"),
                Some(r#"{"127.0.0.1:1":1}"#.into()),
            ),
            Req::new("PATCH", &base, Some(r#"{"desc":"x"}"#.into())),
            Req::new("TRACE", &base, None),
            Req::new("PURGE", &format!("{base}/1"), None),
        ]);
    }
    let route = json!({"upstream": {"nodes": {"127.0.0.1:1995": 1}}}).to_string();
    t.extend([
        Req::new("GET", "/apisix/admin", None),
        Req::new("HEAD", "/apisix/admin", None),
        Req::new("GET", "/apisix/admin/", None),
        Req::new("PUT", "/apisix/admin", Some(route.clone())),
        Req::new("POST", "/apisix/admin", Some(route.clone())),
        Req::new("DELETE", "/apisix/admin", None),
        Req::new(
            "GET",
            "/apisix/admin/stream_routes_test?server_port=9100",
            None,
        ),
        Req::new("GET", "/apisix/admin/stream_routes_test", None),
        Req::new(
            "POST",
            "/apisix/admin/stream_routes_test?server_port=9100",
            None,
        ),
        Req::new("GET", "/apisix/admin/routes", None),
        Req::new("PUT", "/apisix/admin/routes/1", Some(route.clone())),
        Req::new("GET", "/apisix/admin/consumers/1", None),
        Req::new("PUT", "/apisix/admin/plugin_metadata/x", Some("{}".into())),
        Req::new("GET", "/apisix/admin/plugins/list", None),
        Req::new("PUT", "/apisix/admin/plugins/reload", None),
        Req::new("GET", "/apisix/admin/stream_routes%2F1", None),
        Req::new("GET", "/apisix/adminx/stream_routes", None),
        Req::new("GET", "/apisix/prometheus/metrics", None),
        Req::new("GET", "/v1/stream/stats", None),
        Req::new("GET", "/", None),
        Req::new("POST", "/elsewhere", Some(route)),
    ]);
    t
}

/// How a request presents (or does not present) a key.
#[derive(Debug, Clone, Copy)]
enum Cred<'a> {
    None,
    Header(&'a str),
    Query(&'a str),
    Cookie(&'a str),
}

struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }
}

async fn send(
    client: &reqwest::Client,
    admin: SocketAddr,
    req: &Req,
    cred: Cred<'_>,
    extra: &[(&str, &str)],
) -> Answer {
    let mut path = req.path.clone();
    if let Cred::Query(k) = cred {
        let sep = if path.contains('?') { '&' } else { '?' };
        path = format!("{path}{sep}api_key={k}");
    }
    let mut r = client.request(req.method.clone(), format!("http://{admin}{path}"));
    match cred {
        Cred::Header(k) => r = r.header("X-API-KEY", k),
        Cred::Cookie(k) => r = r.header("Cookie", format!("theme=dark; x_api_key={k}")),
        Cred::None | Cred::Query(_) => {}
    }
    for (name, value) in extra {
        r = r.header(*name, *value);
    }
    if let Some(b) = &req.body {
        r = r.body(b.clone());
    }
    let res = within(10, r.send()).await.expect("request sent");
    let status = res.status();
    let headers = res.headers().clone();
    let text = within(10, res.text()).await.expect("body read");
    Answer {
        status,
        headers,
        text,
    }
}

/// Seed one object of each kind under id 1, so refused DELETEs and PATCHes
/// would have something to change.
async fn seed(s: &TestServer, cert: &str, key: &str) {
    for (res, body) in resources(cert, key) {
        let (st, v) = s
            .call(
                Method::PUT,
                &format!("/apisix/admin/{res}/1"),
                Some(&body.to_string()),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "seed {res}: {v}");
    }
}

/// The lists of every resource, read with the admin key.
async fn all_lists(s: &TestServer) -> Vec<Value> {
    let mut out = Vec::new();
    for res in ["stream_routes", "upstreams", "ssls"] {
        let (st, v) = s
            .call(Method::GET, &format!("/apisix/admin/{res}"), None)
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        out.push(v);
    }
    out
}

// ---------------------------------------------------------------------------
// The route walk
// ---------------------------------------------------------------------------

#[tokio::test]
async fn every_admin_route_needs_a_key_and_viewers_only_read() {
    let s = TestServer::start().await;
    let (cert, key) = test_cert("walk.test");
    seed(&s, &cert, &key).await;
    let data = s.dir.path().join("data");
    let lists = all_lists(&s).await;
    let files = dir_contents(&data);
    assert!(!files.is_empty(), "the store keeps files in {data:?}");
    let table = route_table(&cert, &key);
    let near_miss = format!("{KEY}x");
    let short = &KEY[..KEY.len() - 1];
    let upper = KEY.to_ascii_uppercase();
    let mut checked = 0;
    for req in &table {
        // Without a key: 401, whatever the route, method or path.
        let a = send(&s.client, s.admin, req, Cred::None, &[]).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{req:?} without key");
        if req.method != Method::HEAD {
            assert_eq!(
                a.json(),
                json!({"error_msg": "failed to check token", "description": "missing apikey"}),
                "{req:?}"
            );
        }
        // A wrong key, by each way a key travels: 401.
        for cred in [
            Cred::Header("wrong"),
            Cred::Header(""),
            Cred::Header(&near_miss),
            Cred::Header(short),
            Cred::Header(&upper),
            Cred::Query("wrong"),
            Cred::Query(""),
            Cred::Cookie(&near_miss),
        ] {
            let a = send(&s.client, s.admin, req, cred, &[]).await;
            assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{req:?} with {cred:?}");
            if req.method != Method::HEAD {
                assert_eq!(a.json()["description"], "wrong apikey", "{req:?} {cred:?}");
            }
        }
        // The viewer key: writes refused, reads answered.
        for cred in [
            Cred::Header(VIEWER_KEY),
            Cred::Query(VIEWER_KEY),
            Cred::Cookie(VIEWER_KEY),
        ] {
            let a = send(&s.client, s.admin, req, cred, &[]).await;
            if req.is_read() {
                assert_ne!(a.status, StatusCode::UNAUTHORIZED, "{req:?} viewer read");
                assert_ne!(a.status, StatusCode::FORBIDDEN, "{req:?} viewer read");
                assert!(
                    a.status.is_success()
                        || a.status == StatusCode::NOT_FOUND
                        || a.status == StatusCode::BAD_REQUEST,
                    "{req:?} viewer read: {} {}",
                    a.status,
                    a.text
                );
            } else {
                assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{req:?} viewer write");
                assert_eq!(
                    a.json()["description"],
                    "invalid method for role viewer",
                    "{req:?}"
                );
            }
        }
        // Preflight: answered before the key check, empty, with CORS headers.
        let pre = Req::new("OPTIONS", &req.path, None);
        let a = send(
            &s.client,
            s.admin,
            &pre,
            Cred::None,
            &[
                ("Origin", "http://elsewhere.example"),
                ("Access-Control-Request-Method", "DELETE"),
            ],
        )
        .await;
        assert_eq!(a.status, StatusCode::OK, "{pre:?}");
        assert_eq!(a.text, "", "{pre:?}");
        assert!(a.headers["access-control-allow-methods"]
            .to_str()
            .expect("ascii")
            .contains("DELETE"));
        checked += 1;
    }
    assert!(checked >= 90, "walked {checked} routes");
    // The viewer reads real data (the walk above is not all 404s).
    let a = send(
        &s.client,
        s.admin,
        &Req::new("GET", "/apisix/admin/upstreams/1", None),
        Cred::Header(VIEWER_KEY),
        &[],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    // Nothing any refused request asked for was written.
    assert_eq!(all_lists(&s).await, lists, "objects changed");
    assert!(dir_contents(&data) == files, "the store was written to");

    // With CORS off a preflight is an ordinary request: no key, no answer.
    let s = TestServer::start_with(|y| {
        y.replace(
            "    allow_admin:\n",
            "    enable_admin_cors: false\n    allow_admin:\n",
        )
    })
    .await;
    for path in ["/apisix/admin/upstreams", "/apisix/admin/ssls/1", "/x"] {
        let a = send(
            &s.client,
            s.admin,
            &Req::new("OPTIONS", path, None),
            Cred::None,
            &[],
        )
        .await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "OPTIONS {path}");
    }
}

/// The headers clients use to claim another address.
const FORWARDING: [(&str, &str); 9] = [
    ("X-Forwarded-For", "127.0.0.1"),
    ("X-Forwarded-For", "127.0.0.1, 127.0.0.2"),
    ("X-Real-IP", "127.0.0.1"),
    ("Forwarded", "for=127.0.0.1"),
    (
        "Forwarded",
        "for=\"127.0.0.1:40000\";proto=http;by=127.0.0.1",
    ),
    ("X-Client-IP", "127.0.0.1"),
    ("True-Client-IP", "127.0.0.1"),
    ("CF-Connecting-IP", "127.0.0.1"),
    ("X-Originating-IP", "127.0.0.1"),
];

#[tokio::test]
async fn a_client_outside_allow_admin_is_refused_before_the_key_whatever_it_claims() {
    let s = TestServer::start_with(|y| y.replace("- 127.0.0.0/24", "- 127.0.0.1/32")).await;
    let (cert, key) = test_cert("walk.test");
    seed(&s, &cert, &key).await;
    let data = s.dir.path().join("data");
    let lists = all_lists(&s).await;
    let files = dir_contents(&data);
    let outsider = reqwest::Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)))
        .build()
        .expect("client bound to 127.0.0.2");
    let table = route_table(&cert, &key);
    for req in &table {
        for cred in [
            Cred::None,
            Cred::Header("wrong"),
            Cred::Header(VIEWER_KEY),
            Cred::Header(KEY),
            Cred::Query(KEY),
            Cred::Cookie(KEY),
        ] {
            let a = send(&outsider, s.admin, req, cred, &[]).await;
            assert_eq!(
                a.status,
                StatusCode::FORBIDDEN,
                "{req:?} {cred:?} from 127.0.0.2"
            );
            if req.method != Method::HEAD {
                assert!(a.text.contains("127.0.0.2"), "{req:?}: {}", a.text);
            }
        }
        let pre = Req::new("OPTIONS", &req.path, None);
        let a = send(&outsider, s.admin, &pre, Cred::None, &[]).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{pre:?} from 127.0.0.2");
    }
    // Forwarding headers never turn a refused address into an allowed one,
    // alone or all together, for reads and writes.
    let reads_and_writes = [
        Req::new("GET", "/apisix/admin/ssls", None),
        Req::new("DELETE", "/apisix/admin/upstreams/1?force=true", None),
        Req::new(
            "PUT",
            "/apisix/admin/upstreams/7",
            Some(json!({"nodes": {"127.0.0.1:1": 1}}).to_string()),
        ),
    ];
    for req in &reads_and_writes {
        for h in FORWARDING {
            let a = send(&outsider, s.admin, req, Cred::Header(KEY), &[h]).await;
            assert_eq!(a.status, StatusCode::FORBIDDEN, "{req:?} with {h:?}");
        }
        let a = send(&outsider, s.admin, req, Cred::Header(KEY), &FORWARDING).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{req:?} with every header");
    }
    // A PROXY protocol preamble is not trusted on the Admin API either.
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.bind("127.0.0.2:0".parse().expect("addr"))
        .expect("bind 127.0.0.2");
    let mut c = within(5, sock.connect(s.admin)).await.expect("connect");
    let raw = format!(
        "PROXY TCP4 127.0.0.1 127.0.0.1 40000 {port}\r\nGET /apisix/admin/ssls HTTP/1.1\r\nHost: x\r\nX-API-KEY: {KEY}\r\nConnection: close\r\n\r\n",
        port = s.admin.port()
    );
    within(5, c.write_all(raw.as_bytes())).await.expect("write");
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut got)).await;
    let got = String::from_utf8_lossy(&got);
    assert!(
        !got.starts_with("HTTP/1.1 2") && !got.contains("\"list\""),
        "PROXY preamble was trusted: {got}"
    );
    // The allowed address works, and a forwarding header naming a refused
    // address does not lock it out: headers do not count at all.
    let a = send(
        &s.client,
        s.admin,
        &Req::new("GET", "/apisix/admin/ssls", None),
        Cred::Header(KEY),
        &[("X-Forwarded-For", "127.0.0.2"), ("X-Real-IP", "10.9.8.7")],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    // Nothing was written.
    assert_eq!(all_lists(&s).await, lists, "objects changed");
    assert!(dir_contents(&data) == files, "the store was written to");
}

// ---------------------------------------------------------------------------
// The sample key
// ---------------------------------------------------------------------------

/// A config for a child `serve`: every listener on a loopback port of our
/// choosing (no fixed ports), the given admin key.
fn child_yaml(dir: &Path, ports: &ChildPorts, admin_key: &str) -> String {
    ChildConfig::new(ports.admin)
        .tcp(ports.tcp)
        .udp(ports.udp)
        .control(ports.control)
        .metrics(ports.metrics)
        .admin_key(admin_key)
        .yaml(&dir.join("data"))
}

struct ChildPorts {
    admin: u16,
    control: u16,
    metrics: u16,
    tcp: u16,
    udp: u16,
}

impl ChildPorts {
    fn pick() -> ChildPorts {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("udp port")
            .port();
        ChildPorts {
            admin: free_port(),
            control: free_port(),
            metrics: free_port(),
            tcp: free_port(),
            udp,
        }
    }

    fn admin(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.admin))
    }
}

/// Run `serve` on this config text; it must refuse to start with one line.
fn serve_refuses(yaml: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("config.yaml");
    std::fs::write(&cfg, yaml).expect("write");
    let (code, out, err) = run_cli(&["serve", "-c", cfg.to_str().expect("utf8")]);
    assert_ne!(code, 0, "serve started with:\n{yaml}\nstderr: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(out.is_empty(), "{out}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

#[tokio::test]
async fn the_sample_admin_key_only_starts_on_a_loopback_only_admin_api() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ports = ChildPorts::pick();
    let loopback = child_yaml(dir.path(), &ports, SAMPLE_ADMIN_KEY);
    let cases = [
        (
            loopback.replace(
                &format!("      ip: 127.0.0.1\n      port: {}\n", ports.admin),
                &format!("      ip: 0.0.0.0\n      port: {}\n", ports.admin),
            ),
            "admin_listen.ip is 0.0.0.0",
        ),
        (
            loopback.replace(
                "    allow_admin:\n      - 127.0.0.0/24\n",
                "    allow_admin: ~\n",
            ),
            "allow_admin is null, so every client is allowed",
        ),
        (
            loopback.replace(
                "      - 127.0.0.0/24\n",
                "      - 127.0.0.0/24\n      - 192.168.0.0/16\n",
            ),
            "allow_admin contains 192.168.0.0/16",
        ),
        (
            loopback.replace("      - 127.0.0.0/24\n", "      - 0.0.0.0/0\n"),
            "allow_admin contains 0.0.0.0/0",
        ),
    ];
    for (yaml, why) in &cases {
        assert_ne!(yaml, &loopback, "case {why} edits the config");
        let err = serve_refuses(yaml);
        for want in [
            "refusing to start",
            "admin_key[0] (\"admin\")",
            "sample key",
            why,
            "set a unique key",
        ] {
            assert!(err.contains(want), "want {want:?} in {err:?}");
        }
        // Nothing listens: it stopped before binding.
        assert!(
            std::net::TcpStream::connect_timeout(&ports.admin(), Duration::from_millis(200))
                .is_err()
        );
    }
    // Both sides loopback-only: it starts, warns, and the key works.
    let cfg = dir.path().join("config.yaml");
    std::fs::write(&cfg, &loopback).expect("write");
    let mut child = spawn_serve(&cfg);
    wait_listening(ports.admin(), &mut child);
    let client = reqwest::Client::new();
    let (st, _) = crate::harness::call(
        &client,
        ports.admin(),
        Some(SAMPLE_ADMIN_KEY),
        Method::GET,
        "/apisix/admin/upstreams",
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    child.child.kill().expect("kill");
    let _ = child.child.wait();
    let mut err = String::new();
    if let Some(mut e) = child.child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    assert!(
        err.contains("sample key") && err.contains("WARN"),
        "no warning: {err}"
    );
}

// ---------------------------------------------------------------------------
// File permissions
// ---------------------------------------------------------------------------

#[cfg(unix)]
#[tokio::test]
async fn generated_key_keeps_the_config_owner_only_and_the_data_dir_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let ports = ChildPorts::pick();
    let cfg = dir.path().join("config.yaml");
    std::fs::write(&cfg, child_yaml(dir.path(), &ports, "''")).expect("write");
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let mut child = spawn_serve(&cfg);
    wait_listening(ports.admin(), &mut child);
    let mode = |p: &Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
    let written = std::fs::read_to_string(&cfg).expect("read");
    let doc: serde_yaml::Value = serde_yaml::from_str(&written).expect("yaml");
    let key = doc["deployment"]["admin"]["admin_key"][0]["key"]
        .as_str()
        .expect("generated key")
        .to_string();
    assert_eq!(key.len(), 32, "{key}");
    assert_eq!(mode(&cfg), 0o600, "config.yaml after write-back");
    // No temporary copy of the text (and the key) is left beside it.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .expect("ls")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| n == "config.yaml" || n == "data"),
        "{names:?}"
    );
    // The store: the directory is the owner's only, and so is every file.
    let client = reqwest::Client::new();
    let (st, _) = crate::harness::call(
        &client,
        ports.admin(),
        Some(&key),
        Method::PUT,
        "/apisix/admin/upstreams/1",
        Some(r#"{"nodes": {"127.0.0.1:1": 1}}"#),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED);
    let data = dir.path().join("data");
    assert_eq!(mode(&data), 0o700, "data dir");
    let files = dir_contents(&data);
    assert!(!files.is_empty());
    for f in files.keys() {
        assert_eq!(mode(f), 0o600, "{f:?}");
    }
    drop(child);
}

// ---------------------------------------------------------------------------
// Secrets never leak
// ---------------------------------------------------------------------------

/// Run the binary with `RUST_LOG=trace` (bounded); exit code, stdout, stderr.
fn run_traced(args: &[&str], envs: &[(&str, &str)]) -> (i32, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (out_path, err_path) = (dir.path().join("out"), dir.path().join("err"));
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).expect("out"))
        .stderr(File::create(&err_path).expect("err"))
        .env("RUST_LOG", "trace")
        .env_remove("APISIX_ADMIN_KEY");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn");
    let status = wait_exit(&mut child, 30, &format!("apisix-stream {args:?}"));
    (
        status.code().unwrap_or(-1),
        std::fs::read_to_string(out_path).unwrap_or_default(),
        std::fs::read_to_string(err_path).unwrap_or_default(),
    )
}

/// A stand-in etcd that refuses every login, until dropped.
struct RefusingEtcd {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RefusingEtcd {
    fn start() -> RefusingEtcd {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                let mut buf = [0u8; 8192];
                let _ = conn.read(&mut buf);
                let body = r#"{"error":"etcdserver: authentication failed, invalid user ID or password","code":3,"message":"etcdserver: authentication failed, invalid user ID or password"}"#;
                let _ = write!(
                    conn,
                    "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        RefusingEtcd {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for RefusingEtcd {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = std::net::TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Collects everything a client could see.
#[derive(Default)]
struct Seen {
    texts: Vec<(String, String)>,
}

impl Seen {
    fn add(&mut self, what: impl Into<String>, text: impl Into<String>) {
        self.texts.push((what.into(), text.into()));
    }

    fn check(&self, secrets: &[String]) {
        for (what, text) in &self.texts {
            assert_no_secret(what, text, secrets);
        }
    }
}

async fn admin_call(
    seen: &mut Seen,
    client: &reqwest::Client,
    admin: SocketAddr,
    method: &str,
    path: &str,
    cred: Cred<'_>,
    body: Option<Value>,
) -> Answer {
    let req = Req::new(method, path, body.map(|b| b.to_string()));
    let a = send(client, admin, &req, cred, &[]).await;
    let headers: String = a
        .headers
        .iter()
        .map(|(k, v)| format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())))
        .collect();
    seen.add(
        format!("{method} {path} answer ({})", a.status),
        format!("{headers}\n{}", a.text),
    );
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_private_keys_never_show_in_logs_output_answers_or_metrics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ports = ChildPorts::pick();
    let ring = ["ringsecretA12345", "ringsecretB1234567890abcdefghijk"];
    let yaml = format!(
        "{}apisix_extra: 1\nstream_plugins:\n  - prometheus\n  - limit-conn\n",
        child_yaml(dir.path(), &ports, KEY).replace(
            "  enable_control: true\n",
            &format!(
                "  enable_control: true\n  data_encryption:\n    keyring:\n      - {}\n      - {}\n",
                ring[0], ring[1]
            ),
        )
    );
    let cfg = dir.path().join("config.yaml");
    std::fs::write(&cfg, &yaml).expect("write");
    let log_path = dir.path().join("serve.log");
    let child = Command::new(bin())
        .args(["serve", "-c", cfg.to_str().expect("utf8")])
        .stdin(Stdio::null())
        .stdout(File::create(dir.path().join("serve.out")).expect("out"))
        .stderr(File::create(&log_path).expect("log"))
        .env("RUST_LOG", "trace")
        .spawn()
        .expect("spawn serve");
    let mut child = ChildGuard { child };
    wait_listening_logged(ports.admin(), &mut child, &log_path);
    let admin = ports.admin();
    let control = SocketAddr::from(([127, 0, 0, 1], ports.control));
    let metrics = SocketAddr::from(([127, 0, 0, 1], ports.metrics));
    let client = reqwest::Client::new();
    let echo = Backend::start("echo", Mode::Echo).await;

    let (cert_a, key_a) = test_cert("leak.test");
    let (cert_b, key_b) = test_cert("leak.test");
    let (cert_c, key_c) = test_cert("client.leak.test");
    let (cert_d, key_d) = test_cert("patched.leak.test");
    let (_, key_e) = test_cert("other.test");
    let (cert_f, key_f) = test_cert("cli.leak.test");
    // A key whose base64 still decodes but whose DER is damaged.
    let broken_key = {
        let mut lines: Vec<String> = key_e.lines().map(str::to_string).collect();
        let mid = lines.len() / 2;
        lines[mid] = lines[mid].chars().rev().collect();
        lines.join("\n") + "\n"
    };
    let presented = "presented-but-wrong-key-0123456789";
    let mut secrets: Vec<String> = vec![
        KEY.into(),
        VIEWER_KEY.into(),
        presented.into(),
        ring[0].into(),
        ring[1].into(),
    ];
    for k in [&key_a, &key_b, &key_c, &key_d, &key_e, &key_f, &broken_key] {
        secrets.extend(pem_secrets(k));
    }
    let mut seen = Seen::default();
    let h = Cred::Header(KEY);

    // Writes that carry private keys, and reads of what they stored.
    let writes = [
        (
            "PUT",
            "/apisix/admin/ssls/1",
            json!({"cert": cert_a, "key": key_a, "snis": ["leak.test"]}),
            StatusCode::CREATED,
        ),
        (
            "PUT",
            "/apisix/admin/ssls/2",
            json!({"cert": cert_a, "key": key_a, "certs": [cert_b], "keys": [key_b], "snis": ["two.leak.test"]}),
            StatusCode::CREATED,
        ),
        (
            "PUT",
            "/apisix/admin/ssls/3",
            json!({"type": "client", "cert": cert_c, "key": key_c}),
            StatusCode::CREATED,
        ),
        (
            "POST",
            "/apisix/admin/ssls",
            json!({"cert": cert_d, "key": key_d, "snis": ["posted.leak.test"]}),
            StatusCode::CREATED,
        ),
        (
            "PATCH",
            "/apisix/admin/ssls/1",
            json!({"cert": cert_d, "key": key_d}),
            StatusCode::OK,
        ),
        (
            "PATCH",
            "/apisix/admin/ssls/1/desc",
            json!("patched"),
            StatusCode::OK,
        ),
        (
            "PUT",
            "/apisix/admin/upstreams/1",
            json!({
            "nodes": {echo.addr.to_string(): 1}, "scheme": "tls",
            "tls": {"client_cert": cert_c, "client_key": key_c},
            "checks": {"active": {"type": "tcp", "timeout": 1,
                "healthy": {"interval": 1, "successes": 1},
                "unhealthy": {"interval": 1, "tcp_failures": 1}}}}),
            StatusCode::CREATED,
        ),
        (
            "PUT",
            "/apisix/admin/upstreams/2",
            json!({"nodes": {echo.addr.to_string(): 1}, "scheme": "tls", "tls": {"client_cert_id": "3"}}),
            StatusCode::CREATED,
        ),
        (
            "PATCH",
            "/apisix/admin/upstreams/1/tls",
            json!({"client_cert": cert_c, "client_key": key_c, "verify": false}),
            StatusCode::OK,
        ),
        (
            "PUT",
            "/apisix/admin/stream_routes/1",
            json!({"server_port": ports.tcp, "upstream_id": "1", "plugins": {"prometheus": {}}}),
            StatusCode::CREATED,
        ),
        (
            "PUT",
            "/apisix/admin/stream_routes/2",
            json!({"server_port": ports.tcp, "remote_addr": "10.9.9.9",
            "upstream": {"nodes": {echo.addr.to_string(): 1}, "scheme": "tls",
                "tls": {"client_cert": cert_c, "client_key": key_c}}}),
            StatusCode::CREATED,
        ),
    ];
    for (method, path, body, want) in writes {
        let a = admin_call(&mut seen, &client, admin, method, path, h, Some(body)).await;
        assert_eq!(a.status, want, "{method} {path}: {}", a.text);
    }
    for path in [
        "/apisix/admin/ssls",
        "/apisix/admin/ssls/1",
        "/apisix/admin/ssls/2",
        "/apisix/admin/ssls/3",
        "/apisix/admin/upstreams",
        "/apisix/admin/upstreams/1",
        "/apisix/admin/stream_routes",
        "/apisix/admin/stream_routes/2",
    ] {
        for cred in [h, Cred::Header(VIEWER_KEY), Cred::Query(KEY)] {
            let a = admin_call(&mut seen, &client, admin, "GET", path, cred, None).await;
            assert_eq!(a.status, StatusCode::OK, "GET {path}: {}", a.text);
        }
    }
    let a = admin_call(
        &mut seen,
        &client,
        admin,
        "GET",
        &format!(
            "/apisix/admin/stream_routes_test?server_port={}&remote_addr=10.9.9.9",
            ports.tcp
        ),
        h,
        None,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);

    // Failed writes that carry private keys.
    let failures = [
        (
            "PUT",
            "/apisix/admin/ssls/9",
            json!({"cert": cert_a, "key": key_e, "snis": ["x.test"]}),
        ),
        (
            "PUT",
            "/apisix/admin/ssls/9",
            json!({"cert": cert_a, "key": broken_key, "snis": ["x.test"]}),
        ),
        (
            "PUT",
            "/apisix/admin/ssls/9",
            json!({"cert": cert_a, "key": key_e, "snis": ["x.test"], "bogus": 1}),
        ),
        (
            "PUT",
            "/apisix/admin/ssls/9",
            json!({"cert": cert_a, "key": key_e, "certs": [cert_b], "keys": [key_e, broken_key], "snis": ["x.test"]}),
        ),
        (
            "PUT",
            "/apisix/admin/ssls/9",
            json!({"cert": cert_a, "key": [key_e], "snis": ["x.test"]}),
        ),
        (
            "PUT",
            "/apisix/admin/ssls/9",
            json!({"cert": cert_a, "key": key_e, "snis": ["x.test"], "create_time": 1}),
        ),
        ("PATCH", "/apisix/admin/ssls/1", json!({"key": key_e})),
        ("PATCH", "/apisix/admin/ssls/1/key", json!(broken_key)),
        (
            "PUT",
            "/apisix/admin/upstreams/9",
            json!({"nodes": {"127.0.0.1:1": 1}, "tls": {"client_key": key_e}}),
        ),
        (
            "PUT",
            "/apisix/admin/upstreams/9",
            json!({"nodes": {"127.0.0.1:1": 1}, "tls": {"client_cert": cert_a, "client_key": broken_key}}),
        ),
        (
            "PUT",
            "/apisix/admin/upstreams/9",
            json!({"nodes": {"127.0.0.1:1": 1}, "tls": {"client_cert": cert_a, "client_key": key_e, "client_cert_id": "3"}}),
        ),
        (
            "PUT",
            "/apisix/admin/stream_routes/9",
            json!({"upstream": {"nodes": {"127.0.0.1:1": 1}, "tls": {"client_cert": cert_a, "client_key": key_e}}, "plugins": {"nope": {}}}),
        ),
        (
            "POST",
            "/apisix/admin/ssls/5",
            json!({"cert": cert_a, "key": key_e, "snis": ["x.test"]}),
        ),
    ];
    for (method, path, body) in failures {
        let a = admin_call(&mut seen, &client, admin, method, path, h, Some(body)).await;
        assert!(
            a.status.is_client_error(),
            "{method} {path}: {} {}",
            a.status,
            a.text
        );
    }
    // Requests with wrong or insufficient keys.
    let near_miss = format!("{KEY}0");
    let ssl_body = json!({"cert": cert_a, "key": key_e, "snis": ["x.test"]});
    for cred in [
        Cred::None,
        Cred::Header(presented),
        Cred::Header(&near_miss),
        Cred::Query(presented),
        Cred::Cookie(presented),
        Cred::Header(VIEWER_KEY),
        Cred::Query(VIEWER_KEY),
    ] {
        for (method, path) in [
            ("PUT", "/apisix/admin/ssls/8"),
            ("DELETE", "/apisix/admin/ssls/1"),
            ("GET", "/apisix/admin/ssls/1"),
        ] {
            let a = admin_call(
                &mut seen,
                &client,
                admin,
                method,
                path,
                cred,
                Some(ssl_body.clone()),
            )
            .await;
            if method == "GET" && matches!(cred, Cred::Header(VIEWER_KEY) | Cred::Query(VIEWER_KEY))
            {
                assert_eq!(a.status, StatusCode::OK);
            } else {
                assert_eq!(
                    a.status,
                    StatusCode::UNAUTHORIZED,
                    "{method} {path} {cred:?}"
                );
            }
        }
    }

    // Traffic through the route whose upstream has a client key (the echo
    // backend does not speak TLS, so the session fails and is logged).
    if let Ok(Ok(mut c)) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(("127.0.0.1", ports.tcp)),
    )
    .await
    {
        let _ = within(5, c.write_all(b"hello")).await;
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut buf)).await;
    }

    // Control API and metrics.
    for (url, accept) in [
        (
            format!("http://{control}/v1/stream/stats"),
            "application/json",
        ),
        (
            format!("http://{control}/v1/stream/connections"),
            "application/json",
        ),
        (
            format!("http://{control}/v1/healthcheck"),
            "application/json",
        ),
        (format!("http://{control}/v1/healthcheck"), "text/html"),
        (
            format!("http://{control}/v1/healthcheck/upstreams/1"),
            "application/json",
        ),
        (
            format!("http://{control}/v1/healthcheck/stream_routes/2"),
            "application/json",
        ),
        (
            format!("http://{metrics}/apisix/prometheus/metrics"),
            "text/plain",
        ),
    ] {
        let res = within(10, client.get(&url).header("Accept", accept).send())
            .await
            .expect("control request");
        let status = res.status();
        let text = within(10, res.text()).await.expect("body");
        assert!(
            status.is_success() || status == StatusCode::NOT_FOUND,
            "{url}: {status} {text}"
        );
        seen.add(format!("{url} ({accept})"), text);
    }

    // The command line, with the key given every way it can be.
    let url = format!("http://{admin}");
    let cfg_s = cfg.to_str().expect("utf8");
    let files = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, text: &str| {
        let p = files.path().join(name);
        std::fs::write(&p, text).expect("write pem");
        p.to_str().expect("utf8").to_string()
    };
    let (cert_f_path, key_f_path) = (write("f.crt", &cert_f), write("f.key", &key_f));
    let (key_e_path, broken_path) = (write("e.key", &key_e), write("broken.key", &broken_key));
    let missing_cert = "/nonexistent/apisix-stream-test/cert.pem";
    let closed_url = format!("http://127.0.0.1:{}", free_port());
    // Each line is split at spaces (no path here has one); the second field
    // is an APISIX_ADMIN_KEY value, the third whether the command succeeds.
    let by_flag = format!("--admin-url {url} --api-key {KEY}");
    let runs: [(String, Option<&str>, bool); 20] = [
        (format!("ssl list -o json {by_flag}"), None, true),
        (format!("ssl list {by_flag}"), None, true),
        (format!("ssl get 1 {by_flag}"), None, true),
        (format!("ssl get 2 -c {cfg_s}"), None, true),
        (format!("route list -c {cfg_s}"), None, true),
        (format!("route list -o json --admin-url {url}"), Some(KEY), true),
        (format!("route get 2 --admin-url {url} --api-key {VIEWER_KEY}"), None, true),
        (format!("upstream list -o json -c {cfg_s}"), None, true),
        (format!("upstream get 1 -c {cfg_s}"), None, true),
        (
            format!("ssl add --id 7 --cert {cert_f_path} --key {key_f_path} -c {cfg_s}"),
            None,
            true,
        ),
        // Error paths.
        (format!("route list --admin-url {url} --api-key {presented}"), None, false),
        (format!("ssl list -o json --admin-url {url} --api-key {near_miss}"), None, false),
        (format!("ssl get 1 --admin-url {url}"), Some(presented), false),
        (
            format!("ssl add --cert {cert_f_path} --key {key_f_path} --admin-url {url} --api-key {VIEWER_KEY}"),
            None,
            false,
        ),
        (format!("ssl add --cert {missing_cert} --key {key_e_path} -c {cfg_s}"), None, false),
        (format!("ssl add --cert {cert_f_path} --key {key_e_path} -c {cfg_s}"), None, false),
        (format!("ssl add --cert {cert_f_path} --key {broken_path} -c {cfg_s}"), None, false),
        (format!("ssl add --cert {key_f_path} --key {key_f_path} -c {cfg_s}"), None, false),
        (format!("ssl delete 1 --admin-url {url} --api-key {VIEWER_KEY}"), None, false),
        (format!("route list --admin-url {closed_url} --api-key {KEY}"), None, false),
    ];
    for (line, env_key, ok) in &runs {
        let args: Vec<&str> = line.split(' ').collect();
        let envs: Vec<(&str, &str)> = env_key
            .map(|k| ("APISIX_ADMIN_KEY", k))
            .into_iter()
            .collect();
        let (code, out, err) = run_traced(&args, &envs);
        if *ok {
            assert_eq!(code, 0, "{args:?}: {err}");
        } else {
            assert_ne!(code, 0, "{args:?} should fail: {out}");
        }
        seen.add(format!("stdout of {args:?}"), out);
        seen.add(format!("stderr of {args:?}"), err);
    }

    // Start-up failures with secrets in the config: no etcd, an etcd that
    // refuses the login, and plain configuration errors.
    let refusing = RefusingEtcd::start();
    let etcd_yaml = |host: &str| {
        with_etcd(
            &yaml,
            &format!(
                "    host: [\"{host}\"]\n    user: root\n    password: etcd-password-9f8e7d6c5b\n    timeout: 1\n    startup_retry: 1\n"
            ),
        )
    };
    secrets.push("etcd-password-9f8e7d6c5b".into());
    secrets.push("424242424242".into());
    let broken_configs = [
        etcd_yaml(&closed_url),
        etcd_yaml(&format!("http://{}", refusing.addr)),
        // A password YAML reads as a number is refused without being shown.
        etcd_yaml(&format!("http://{}", refusing.addr)).replace(
            "password: etcd-password-9f8e7d6c5b",
            "password: 424242424242",
        ),
        // So is an admin key list written as one table, and a bare key string.
        yaml.replace(
            &format!("      - name: admin\n        key: {KEY}\n        role: admin\n"),
            &format!("      name: admin\n      key: {KEY}\n"),
        )
        .replace(
            &format!("      - name: viewer\n        key: {VIEWER_KEY}\n        role: viewer\n"),
            "",
        ),
        yaml.replace(
            &format!("      - name: viewer\n        key: {VIEWER_KEY}\n        role: viewer\n"),
            &format!("      - {VIEWER_KEY}\n"),
        ),
        yaml.replace("      port: ", "      port: 99999\n      x: "),
        yaml.replace("role: viewer", "role: superuser"),
        yaml.replace(&format!("- {}\n", ring[0]), &format!("- {}x\n", ring[0])),
        yaml.replace("apisix_extra: 1\n", "apisix_extra: [unclosed\n"),
        yaml.replace(
            &format!("port: {}\n", ports.control),
            &format!("port: {}\n", ports.admin),
        ),
        yaml.replace("      - 127.0.0.0/24\n", "      - 0.0.0.0/0\n")
            .replace(
                &format!("key: {KEY}\n"),
                &format!("key: {SAMPLE_ADMIN_KEY}\n"),
            ),
    ];
    for (i, text) in broken_configs.iter().enumerate() {
        let bad_dir = tempfile::tempdir().expect("tempdir");
        let path = bad_dir.path().join("config.yaml");
        std::fs::write(&path, text).expect("write");
        let (code, out, err) = run_traced(&["serve", "-c", path.to_str().expect("utf8")], &[]);
        assert_ne!(code, 0, "broken config {i} started:\n{text}\n{err}");
        seen.add(format!("stdout of broken config {i}"), out);
        seen.add(format!("stderr of broken config {i}"), err);
    }
    drop(refusing);

    // Stop the server and read everything it logged.
    child.child.kill().expect("kill");
    let _ = child.child.wait();
    drop(child);
    let log = std::fs::read_to_string(&log_path).expect("log");
    assert!(log.contains("DEBUG"), "debug logging was on: {log}");
    assert!(log.lines().count() > 20, "{log}");
    seen.add("serve's log", log);
    seen.check(&secrets);

    // At rest, private keys are sealed with the keyring: no PEM in the store.
    let stored: Vec<String> = dir_contents(&dir.path().join("data"))
        .into_values()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .collect();
    assert!(!stored.is_empty());
    let mut at_rest = Vec::new();
    for k in [&key_a, &key_b, &key_c, &key_d, &key_f] {
        at_rest.extend(pem_secrets(k));
    }
    for text in &stored {
        assert_no_secret("the store's files", text, &at_rest);
        assert!(!text.contains("PRIVATE KEY"), "clear private key at rest");
    }
}
