//! The etcd back-end against a real etcd (`/usr/bin/etcd`): proxies sharing
//! one etcd converge through their watches, keep serving while etcd is down,
//! and pick up what changed once it is back.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use apisix_stream::config::{Config, Etcd, EtcdTls, Secret};
use apisix_stream::model::{EnabledPlugins, Kind};
use apisix_stream::store::etcd::EtcdStore;
use apisix_stream::store::{Expect, Store, StoreError};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::backend::{Backend, Mode};
use crate::harness::{
    call, eventually, eventually_some, free_port, greeting, program, run_cli, spawn_serve,
    wait_listening, within, ChildConfig, ChildGuard, KEY,
};

/// One etcd member on loopback, killed when dropped.
pub(crate) struct EtcdServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    /// `http` or `https` for client URLs.
    scheme: &'static str,
    /// Extra command-line flags (TLS files).
    extra: Vec<String>,
}

impl EtcdServer {
    /// A fresh etcd on ephemeral ports.
    pub(crate) async fn start() -> EtcdServer {
        Self::start_with("http", Vec::new()).await
    }

    /// A fresh etcd with this client scheme and extra flags.
    async fn start_with(scheme: &'static str, extra: Vec<String>) -> EtcdServer {
        let mut e = EtcdServer {
            child: None,
            dir: tempfile::tempdir().expect("tempdir"),
            client_port: free_port(),
            peer_port: free_port(),
            scheme,
            extra,
        };
        e.run_on(e.client_port).await;
        e
    }

    pub(crate) fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.client_port)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// (Re)start on the same data dir, answering clients on `port`.
    async fn run_on(&mut self, port: u16) {
        assert!(self.child.is_none(), "etcd already running");
        let client = format!("{}://127.0.0.1:{port}", self.scheme);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .expect("etcd log");
        let child = Command::new(program("etcd", "etcd-server"))
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--name", "default"])
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("default={peer}")])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        self.child = Some(child);
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let health = tokio::time::timeout(
                Duration::from_secs(1),
                http.get(format!("{client}/health")).send(),
            )
            .await;
            if let Ok(Ok(r)) = health {
                if r.status().is_success() {
                    return;
                }
            }
            if self.scheme == "https" {
                // TLS clients need certificates: go by etcd's own word.
                let log =
                    std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default();
                if log.contains("serving client requests on") {
                    return;
                }
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                let log =
                    std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default();
                panic!("etcd exited with {status}: {log}");
            }
            assert!(Instant::now() < deadline, "etcd not healthy after 20s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `etcdctl <args>` against `port`, bounded; returns stdout.
    async fn ctl_on(&self, port: u16, args: &[&str]) -> String {
        let out = tokio::time::timeout(
            Duration::from_secs(15),
            tokio::process::Command::new(program("etcdctl", "etcd-client"))
                .env("ETCDCTL_API", "3")
                .arg(format!("--endpoints=http://127.0.0.1:{port}"))
                .args(["--dial-timeout=3s", "--command-timeout=5s"])
                .args(args)
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("etcdctl timed out")
        .expect("etcdctl runs");
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub(crate) async fn ctl(&self, args: &[&str]) -> String {
        self.ctl_on(self.client_port, args).await
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A proxy child process using etcd.
struct Proxy {
    _child: ChildGuard,
    admin: SocketAddr,
    tcp: SocketAddr,
    _dir: tempfile::TempDir,
}

/// The test config with `config_provider: etcd`, one TCP listener on
/// `tcp_port`, no UDP, and quick reconnection settings.
fn etcd_config(admin_port: u16, tcp_port: u16, etcd_url: &str) -> ChildConfig {
    ChildConfig::new(admin_port).tcp(tcp_port).etcd(&format!(
        "    host:\n      - \"{etcd_url}\"\n    prefix: /apisix\n    timeout: 3\n    resync_delay: 1\n"
    ))
}

fn spawn_proxy(etcd_url: &str) -> Proxy {
    let dir = tempfile::tempdir().expect("tempdir");
    let (admin_port, tcp_port) = (free_port(), free_port());
    let cfg = etcd_config(admin_port, tcp_port, etcd_url).write(dir.path());
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().expect("addr");
    let tcp: SocketAddr = format!("127.0.0.1:{tcp_port}").parse().expect("addr");
    let mut child = spawn_serve(&cfg);
    wait_listening(admin, &mut child);
    wait_listening(tcp, &mut child);
    Proxy {
        _child: child,
        admin,
        tcp,
        _dir: dir,
    }
}

/// Poll `addr` until a connection yields `want`; returns how long it took.
async fn wait_greeting(addr: SocketAddr, want: Option<&str>, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let got = greeting(addr).await;
        if got.as_deref() == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "{addr} still gives {got:?} instead of {want:?} after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn route(backend: &Backend) -> String {
    json!({"upstream": {"type": "roundrobin", "nodes": {backend.addr.to_string(): 1}}}).to_string()
}

async fn admin(p: &Proxy, method: Method, path: &str, body: Option<&str>) -> (StatusCode, Value) {
    call(
        &reqwest::Client::new(),
        p.admin,
        Some(KEY),
        method,
        path,
        body,
    )
    .await
}

/// GET with the admin key, returning the status and the stale header.
async fn get_stale(p: &Proxy, path: &str) -> (StatusCode, Option<String>) {
    let res = tokio::time::timeout(
        Duration::from_secs(10),
        reqwest::Client::new()
            .get(format!("http://{}{path}", p.admin))
            .header("X-API-KEY", KEY)
            .send(),
    )
    .await
    .expect("GET timed out")
    .expect("GET");
    let stale = res
        .headers()
        .get("x-apisix-stale")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    (res.status(), stale)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_proxies_share_one_etcd_and_survive_its_outage() {
    let mut etcd = EtcdServer::start().await;
    let b1 = Backend::start("b1", Mode::Greet).await;
    let b2 = Backend::start("b2", Mode::Greet).await;
    let b3 = Backend::start("b3", Mode::Greet).await;
    let a = spawn_proxy(&etcd.url());
    let b = spawn_proxy(&etcd.url());

    // A PUT through A is forwarded by B within a second.
    let start = Instant::now();
    let (st, v) = admin(
        &a,
        Method::PUT,
        "/apisix/admin/stream_routes/1",
        Some(&route(&b1)),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    wait_greeting(
        b.tcp,
        Some("b1"),
        Duration::from_secs(1).saturating_sub(start.elapsed()),
    )
    .await;
    assert_eq!(greeting(a.tcp).await.as_deref(), Some("b1"));

    // The key holds the route as plain JSON, in APISIX's layout.
    let stored = etcd
        .ctl(&["get", "/apisix/stream_routes/1", "--print-value-only"])
        .await;
    let stored: Value = serde_json::from_str(stored.trim()).expect("route JSON in etcd");
    assert_eq!(
        stored["upstream"]["nodes"][b1.addr.to_string()],
        1,
        "{stored}"
    );
    assert_eq!(stored["id"], "1", "{stored}");
    // The directory placeholders exist.
    let dir = etcd
        .ctl(&["get", "/apisix/stream_routes/", "--print-value-only"])
        .await;
    assert_eq!(dir.trim(), "init_dir");

    // A delete through B stops A within a second.
    let start = Instant::now();
    let (st, v) = admin(&b, Method::DELETE, "/apisix/admin/stream_routes/1", None).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    wait_greeting(
        a.tcp,
        None,
        Duration::from_secs(1).saturating_sub(start.elapsed()),
    )
    .await;
    assert_eq!(greeting(b.tcp).await, None);

    let (st, _) = admin(
        &a,
        Method::PUT,
        "/apisix/admin/stream_routes/1",
        Some(&route(&b1)),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED);
    wait_greeting(b.tcp, Some("b1"), Duration::from_secs(1)).await;

    // etcd down: old routes keep flowing, writes fail fast, reads say they are stale.
    etcd.stop();
    assert_eq!(greeting(a.tcp).await.as_deref(), Some("b1"));
    assert_eq!(greeting(b.tcp).await.as_deref(), Some("b1"));
    let start = Instant::now();
    let (st, v) = admin(
        &a,
        Method::PUT,
        "/apisix/admin/stream_routes/2",
        Some(&route(&b2)),
    )
    .await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    let msg = v["error_msg"].as_str().unwrap_or_default();
    assert!(msg.contains("etcd"), "{v}");
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "write took {:?}",
        start.elapsed()
    );
    let start = Instant::now();
    let (st, _) = admin(
        &a,
        Method::PUT,
        "/apisix/admin/stream_routes/2",
        Some(&route(&b2)),
    )
    .await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        start.elapsed() < Duration::from_millis(500),
        "not fail-fast"
    );
    for p in [&a, &b] {
        let what = format!("an x-apisix-stale header on {}", p.admin);
        let why = eventually_some(5, &what, async || {
            let (st, stale) = get_stale(p, "/apisix/admin/stream_routes/1").await;
            assert_eq!(st, StatusCode::OK);
            stale
        })
        .await;
        assert!(why.contains("etcd unreachable since"), "{why}");
        let (st, stale) = get_stale(p, "/apisix/admin/stream_routes").await;
        assert_eq!((st, stale.is_some()), (StatusCode::OK, true));
    }

    // A change made while the proxies are cut off (etcd briefly up on another
    // port), then etcd back on its own port: both proxies pick it up.
    let side_port = free_port();
    etcd.run_on(side_port).await;
    etcd.ctl_on(side_port, &["put", "/apisix/stream_routes/1", &route(&b2)])
        .await;
    etcd.stop();
    let port = etcd.client_port;
    etcd.run_on(port).await;
    for p in [&a, &b] {
        wait_greeting(p.tcp, Some("b2"), Duration::from_secs(20)).await;
    }
    for p in [&a, &b] {
        assert!(
            eventually(5, async || get_stale(p, "/apisix/admin/stream_routes/1")
                .await
                .1
                .is_none())
            .await,
            "still stale on {}",
            p.admin
        );
    }
    // Writes work again, and a change made through etcdctl reaches both.
    let (st, v) = admin(
        &b,
        Method::PUT,
        "/apisix/admin/upstreams/u3",
        Some(&json!({"nodes": {b3.addr.to_string(): 1}}).to_string()),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    etcd.ctl(&[
        "put",
        "/apisix/stream_routes/1",
        r#"{"id":"1","upstream_id":"u3"}"#,
    ])
    .await;
    for p in [&a, &b] {
        wait_greeting(p.tcp, Some("b3"), Duration::from_secs(2)).await;
    }
    // An invalid value is ignored: the previous version stays in force.
    etcd.ctl(&["put", "/apisix/stream_routes/1", "not json"])
        .await;
    etcd.ctl(&[
        "put",
        "/apisix/stream_routes/zz",
        r#"{"id":"zz","upstream_id":"u3"}"#,
    ])
    .await;
    assert!(
        eventually(2, async || admin(
            &a,
            Method::GET,
            "/apisix/admin/stream_routes/zz",
            None
        )
        .await
        .0 == StatusCode::OK)
        .await,
        "route zz never arrived"
    );
    let (st, v) = admin(&a, Method::GET, "/apisix/admin/stream_routes/1", None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["value"]["upstream_id"], "u3", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_on_one_proxy_to_first_byte_on_another() {
    let etcd = EtcdServer::start().await;
    let a = spawn_proxy(&etcd.url());
    let b = spawn_proxy(&etcd.url());
    let mut times = Vec::new();
    for i in 0..20 {
        let name = format!("n{i}");
        let backend = Backend::start(&name, Mode::Greet).await;
        let start = Instant::now();
        let (st, v) = admin(
            &a,
            Method::PUT,
            &format!("/apisix/admin/stream_routes/{i}"),
            Some(&route(&backend)),
        )
        .await;
        assert_eq!(st, StatusCode::CREATED, "{v}");
        wait_greeting(b.tcp, Some(&name), Duration::from_secs(5)).await;
        times.push(start.elapsed());
        let (st, _) = admin(
            &a,
            Method::DELETE,
            &format!("/apisix/admin/stream_routes/{i}"),
            None,
        )
        .await;
        assert_eq!(st, StatusCode::OK);
        wait_greeting(b.tcp, None, Duration::from_secs(5)).await;
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (median, max) = (times[times.len() / 2], times[times.len() - 1]);
    eprintln!(
        "PUT on proxy A -> first byte through proxy B over {} rounds: median {:.1} ms, max {:.1} ms",
        times.len(),
        ms(median),
        ms(max)
    );
    assert!(median < Duration::from_secs(1), "median {median:?}");
}

fn store_conf(url: &str) -> Etcd {
    Etcd {
        host: vec![url.to_string()],
        timeout: 3,
        resync_delay: 1,
        ..Etcd::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_follows_etcd_with_authentication() {
    let etcd = EtcdServer::start().await;
    etcd.ctl(&["user", "add", "root:rootpw"]).await;
    etcd.ctl(&["role", "add", "root"]).await;
    etcd.ctl(&["user", "grant-role", "root", "root"]).await;
    etcd.ctl(&["auth", "enable"]).await;
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();

    // Wrong password: a clear start-up error, naming the host.
    let mut conf = store_conf(&etcd.url());
    conf.user = Some("root".into());
    conf.password = Some(Secret::new("wrong"));
    conf.startup_retry = 1;
    let err = tokio::time::timeout(
        Duration::from_secs(20),
        EtcdStore::connect(&conf, EnabledPlugins::default(), cancel.clone()),
    )
    .await
    .expect("bounded")
    .expect_err("wrong password");
    let text = err.to_string();
    assert!(
        text.contains(&etcd.url()) && text.contains("authentication failed"),
        "{text}"
    );
    assert!(!text.contains("wrong"), "password leaked: {text}");

    conf.password = Some(Secret::new("rootpw"));
    // The first host is down: the store fails over to the next one.
    let dead = format!("http://127.0.0.1:{}", free_port());
    conf.host = vec![dead.clone(), etcd.url()];
    let store = tokio::time::timeout(
        Duration::from_secs(20),
        EtcdStore::connect(&conf, EnabledPlugins::default(), cancel.clone()),
    )
    .await
    .expect("bounded")
    .expect("connects");
    let debug = format!("{store:?}");
    assert!(!debug.contains("rootpw"), "{debug}");
    assert_eq!(
        store.describe(),
        format!("etcd:{dead},{}/apisix", etcd.url())
    );
    assert_eq!(store.stale(), None);

    // Writes: created vs replaced, revisions, conflicts, ids.
    let up = json!({"nodes": {"127.0.0.1:80": 1}});
    let first = store
        .put(Kind::Upstream, "u1", up.clone(), Expect::Any)
        .await
        .expect("put");
    assert!(first.created);
    assert_eq!(first.entry.create_rev, first.entry.mod_rev);
    let second = store
        .put(
            Kind::Upstream,
            "u1",
            up.clone(),
            Expect::ModRev(first.entry.mod_rev),
        )
        .await
        .expect("patch");
    assert!(!second.created);
    assert_eq!(second.entry.create_rev, first.entry.create_rev);
    assert!(second.entry.mod_rev > first.entry.mod_rev);
    assert!(store.revision() >= second.entry.mod_rev);
    let conflict = store
        .put(
            Kind::Upstream,
            "u1",
            up.clone(),
            Expect::ModRev(first.entry.mod_rev),
        )
        .await;
    assert!(
        matches!(conflict, Err(StoreError::Conflict)),
        "{conflict:?}"
    );
    let id = store.next_id().await.expect("id");
    assert_eq!(id.len(), 20);
    assert!(id.parse::<u64>().expect("numeric") > second.entry.mod_rev);

    // Changes made by others arrive through the watch; invalid ones are ignored.
    let mut feed = store.subscribe();
    feed.borrow_and_update();
    let authed = ["--user=root:rootpw"];
    let put = |k: &'static str, v: &'static str| {
        let etcd = &etcd;
        async move { etcd.ctl(&[authed[0], "put", k, v]).await }
    };
    put("/apisix/upstreams/u2", r#"{"nodes":{"127.0.0.1:81":1}}"#).await;
    tokio::time::timeout(Duration::from_secs(2), feed.changed())
        .await
        .expect("feed")
        .expect("open");
    let u2 = store
        .get(Kind::Upstream, "u2")
        .await
        .expect("get")
        .expect("u2 arrived");
    assert_eq!(u2.value["nodes"]["127.0.0.1:81"], 1);
    put("/apisix/upstreams/u2", r#"{"nodes": 7}"#).await;
    put("/apisix/routes/9", r#"{"uri":"/x"}"#).await;
    put("/apisix/upstreams/u3", r#"{"nodes":{"127.0.0.1:82":1}}"#).await;
    assert!(
        eventually(2, async || store
            .get(Kind::Upstream, "u3")
            .await
            .expect("get")
            .is_some())
        .await,
        "u3 never arrived"
    );
    let u2_now = store
        .get(Kind::Upstream, "u2")
        .await
        .expect("get")
        .expect("kept");
    assert_eq!(u2_now, u2, "the invalid version replaced the valid one");
    let ids: Vec<String> = store
        .list(Kind::Upstream)
        .await
        .expect("list")
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(ids, ["u1", "u2", "u3"]);
    let dump = store.dump().await.expect("dump");
    assert_eq!(dump.entries.len(), 3);
    assert_eq!(dump.revision, store.revision());

    let gone = store.delete(Kind::Upstream, "u1").await.expect("delete");
    assert_eq!(gone.map(|e| e.id).as_deref(), Some("u1"));
    assert!(store
        .get(Kind::Upstream, "u1")
        .await
        .expect("get")
        .is_none());
    assert!(store
        .delete(Kind::Upstream, "u1")
        .await
        .expect("delete")
        .is_none());
}

#[test]
fn serve_exits_with_one_line_when_etcd_is_unreachable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dead = format!("http://127.0.0.1:{}", free_port());
    let cfg = etcd_config(free_port(), free_port(), &dead).write(dir.path());
    let (code, _out, err) = run_cli(&["serve", "-c", cfg.to_str().expect("utf-8 path")]);
    assert_ne!(code, 0);
    let last = err.lines().last().unwrap_or_default();
    assert!(last.starts_with("apisix-stream: "), "{err}");
    assert!(last.contains(&dead) && last.contains("etcd"), "{err}");
}

/// A CA-signed certificate and key as PEM files.
fn issue(
    dir: &Path,
    name: &str,
    names: &[&str],
    ca: &(rcgen::Certificate, rcgen::KeyPair),
) -> (String, String) {
    let mut p =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("params");
    p.distinguished_name
        .push(rcgen::DnType::CommonName, names[0]);
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = p.signed_by(&key, &ca.0, &ca.1).expect("sign");
    let (c, k) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&c, cert.pem()).expect("write cert");
    std::fs::write(&k, key.serialize_pem()).expect("write key");
    (c.display().to_string(), k.display().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_client_certificate_and_sni() {
    let certs = tempfile::tempdir().expect("tempdir");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test etcd ca");
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let ca = (ca_params.self_signed(&ca_key).expect("ca"), ca_key);
    let ca_file = certs.path().join("ca.pem");
    std::fs::write(&ca_file, ca.0.pem()).expect("write ca");
    let (server_cert, server_key) = issue(certs.path(), "server", &["etcd.test", "127.0.0.1"], &ca);
    let (client_cert, client_key) = issue(certs.path(), "client", &["client"], &ca);
    let etcd = EtcdServer::start_with(
        "https",
        vec![
            format!("--cert-file={server_cert}"),
            format!("--key-file={server_key}"),
            "--client-cert-auth".into(),
            format!("--trusted-ca-file={}", ca_file.display()),
        ],
    )
    .await;
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    let mut conf = store_conf(&etcd.url());
    conf.startup_retry = 3;
    conf.tls = Some(EtcdTls {
        cert: Some(client_cert),
        key: Some(client_key),
        verify: false,
        sni: Some("etcd.test".into()),
    });
    let store = tokio::time::timeout(
        Duration::from_secs(30),
        EtcdStore::connect(&conf, EnabledPlugins::default(), cancel.clone()),
    )
    .await
    .expect("bounded")
    .expect("connects over TLS with a client certificate");
    let up = json!({"nodes": {"127.0.0.1:80": 1}});
    let put = store
        .put(Kind::Upstream, "u1", up.clone(), Expect::Any)
        .await
        .expect("put over TLS");
    assert!(put.created);
    assert_eq!(
        store
            .get(Kind::Upstream, "u1")
            .await
            .expect("get")
            .map(|e| (*e.value).clone()),
        Some(up)
    );

    // Without a client certificate etcd refuses the handshake.
    let mut no_cert = conf.clone();
    no_cert.startup_retry = 1;
    if let Some(t) = no_cert.tls.as_mut() {
        t.cert = None;
        t.key = None;
    }
    let err = within(
        20,
        EtcdStore::connect(&no_cert, EnabledPlugins::default(), cancel.clone()),
    )
    .await
    .expect_err("no client certificate");
    assert!(err.to_string().contains(&etcd.url()), "{err}");
    // verify: true checks the server certificate (its CA is not trusted here).
    let mut verify = conf.clone();
    verify.startup_retry = 1;
    if let Some(t) = verify.tls.as_mut() {
        t.verify = true;
    }
    let err = within(
        20,
        EtcdStore::connect(&verify, EnabledPlugins::default(), cancel.clone()),
    )
    .await
    .expect_err("untrusted server certificate");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
}

/// A proxy on etcd with its config file kept, so it can be restarted as is.
pub(crate) fn spawn_proxy_at(
    etcd_url: &str,
    dir: &Path,
) -> (ChildGuard, PathBuf, SocketAddr, SocketAddr) {
    let (admin_port, tcp_port) = (free_port(), free_port());
    let cfg = etcd_config(admin_port, tcp_port, etcd_url).write(dir);
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().expect("addr");
    let tcp: SocketAddr = format!("127.0.0.1:{tcp_port}").parse().expect("addr");
    let mut child = spawn_serve(&cfg);
    wait_listening(admin, &mut child);
    wait_listening(tcp, &mut child);
    (child, cfg, admin, tcp)
}

/// `etcdctl put` of a stream route.
async fn put(etcd: &EtcdServer, id: &str, v: Value) {
    let key = format!("/apisix/stream_routes/{id}");
    etcd.ctl(&["put", &key, &v.to_string()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_numbers_and_unservable_nodes_in_etcd_freeze_nothing() {
    let etcd = EtcdServer::start().await;
    let wide = Backend::start("wide", Mode::Greet).await;
    let b1 = Backend::start("b1", Mode::Greet).await;
    let b2 = Backend::start("b2", Mode::Greet).await;
    let (dir_a, dir_b) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let (a, cfg_a, admin_a, tcp_a) = spawn_proxy_at(&etcd.url(), dir_a.path());
    let (_b, _, _, tcp_b) = spawn_proxy_at(&etcd.url(), dir_b.path());
    let narrow = |nodes: Value, extra: Value| {
        let mut up = json!({"nodes": nodes});
        if let (Some(u), Some(e)) = (up.as_object_mut(), extra.as_object()) {
            u.extend(e.clone());
        }
        json!({"id": "1", "remote_addr": "127.0.0.1", "upstream": up})
    };
    put(
        &etcd,
        "9",
        json!({"id": "9", "upstream": {"nodes": {wide.addr.to_string(): 1}}}),
    )
    .await;
    // Timeouts of 1e300 seconds: served by both proxies.
    let huge = json!({"timeout": {"connect": 1e300, "send": 1e300, "read": 1e300},
        "retry_timeout": 1e300});
    put(
        &etcd,
        "1",
        narrow(json!({b1.addr.to_string(): 1}), huge.clone()),
    )
    .await;
    for tcp in [tcp_a, tcp_b] {
        wait_greeting(tcp, Some("b1"), Duration::from_secs(5)).await;
    }
    // A restart of one proxy loads everything and serves it.
    drop(a);
    let mut a = spawn_serve(&cfg_a);
    wait_listening(admin_a, &mut a);
    wait_listening(tcp_a, &mut a);
    wait_greeting(tcp_a, Some("b1"), Duration::from_secs(5)).await;
    // Node values the data plane cannot serve: ignored, the previous
    // version stays in force (never the wide route).
    for nodes in [
        json!({b2.addr.to_string(): 4_294_967_296_u64}),
        json!({b2.addr.ip().to_string(): 1}),
    ] {
        put(&etcd, "1", narrow(nodes, json!({}))).await;
    }
    put(
        &etcd,
        "zz",
        json!({"id": "zz", "server_port": 1, "upstream": {"nodes": {wide.addr.to_string(): 1}}}),
    )
    .await;
    assert!(
        eventually(5, async || call(
            &reqwest::Client::new(),
            admin_a,
            Some(KEY),
            Method::GET,
            "/apisix/admin/stream_routes/zz",
            None
        )
        .await
        .0 == StatusCode::OK)
        .await,
        "later key never arrived"
    );
    for tcp in [tcp_a, tcp_b] {
        assert_eq!(greeting(tcp).await.as_deref(), Some("b1"));
    }
    // A proxy restarted while the unservable value is stored refuses the
    // narrow route's clients: they never fall through to the wide route.
    drop(a);
    let mut a = spawn_serve(&cfg_a);
    wait_listening(admin_a, &mut a);
    wait_listening(tcp_a, &mut a);
    assert!(
        eventually(5, async || call(
            &reqwest::Client::new(),
            admin_a,
            Some(KEY),
            Method::GET,
            "/apisix/admin/stream_routes/zz",
            None
        )
        .await
        .0 == StatusCode::OK)
        .await,
        "restarted proxy never loaded the routes"
    );
    // Its snapshot is in force: another client reaches the wide route.
    assert!(
        eventually(5, async || {
            let mut c = crate::backend::connect_from("127.0.0.2", tcp_a).await;
            crate::backend::read_line(&mut c).await == "wide"
        })
        .await,
        "the wide route is not served after the restart"
    );
    for _ in 0..3 {
        assert_eq!(greeting(tcp_a).await, None);
    }
    // Later writes and deletes apply on both.
    put(&etcd, "1", narrow(json!({b2.addr.to_string(): 1}), huge)).await;
    for tcp in [tcp_a, tcp_b] {
        wait_greeting(tcp, Some("b2"), Duration::from_secs(5)).await;
    }
    etcd.ctl(&["del", "/apisix/stream_routes/1"]).await;
    for tcp in [tcp_a, tcp_b] {
        wait_greeting(tcp, Some("wide"), Duration::from_secs(5)).await;
    }
    drop(a);
}

/// A config for an in-process server on `etcd_url` with `verify: true`,
/// trusting `trusted` (`None`: the system's roots).
fn verified_etcd_config(dir: &Path, etcd_url: &str, trusted: Option<&Path>) -> Config {
    let keys = format!(
        "    host: [\"{etcd_url}\"]\n    prefix: /verified\n    timeout: 3\n    startup_retry: 1\n    tls:\n      verify: true\n"
    );
    let yaml = crate::harness::with_etcd(&crate::harness::test_yaml(&dir.join("data"), 0), &keys);
    let mut config = Config::from_yaml(&yaml).expect("test config parses");
    if let Some(sp) = config.apisix.stream_proxy.as_mut() {
        sp.tcp.clear();
        sp.udp.clear();
    }
    config.apisix.ssl.ssl_trusted_certificate = trusted.map(|p| p.display().to_string());
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_over_tls_is_verified_against_the_trusted_certificate() {
    let certs = tempfile::tempdir().expect("tempdir");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "private etcd ca");
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let ca = (ca_params.self_signed(&ca_key).expect("ca"), ca_key);
    let ca_file = certs.path().join("ca.pem");
    std::fs::write(&ca_file, ca.0.pem()).expect("write ca");
    let (server_cert, server_key) = issue(certs.path(), "server", &["127.0.0.1"], &ca);
    let etcd = EtcdServer::start_with(
        "https",
        vec![
            format!("--cert-file={server_cert}"),
            format!("--key-file={server_key}"),
        ],
    )
    .await;

    // The private CA is not among the system's roots: verify refuses etcd.
    let dir = tempfile::tempdir().expect("tempdir");
    let untrusted = verified_etcd_config(dir.path(), &etcd.url(), None);
    let err = match within(30, apisix_stream::server::start(untrusted)).await {
        Ok(_) => panic!("etcd's certificate was accepted without its CA"),
        Err(e) => e.to_string(),
    };
    assert!(err.to_lowercase().contains("certificate"), "{err}");

    // With apisix.ssl.ssl_trusted_certificate naming it, the server starts
    // and its Admin API writes reach etcd.
    let trusted = verified_etcd_config(dir.path(), &etcd.url(), Some(&ca_file));
    let server = within(30, apisix_stream::server::start(trusted))
        .await
        .expect("starts on etcd over verified TLS");
    let admin = server.admin_addr().expect("admin");
    let client = reqwest::Client::new();
    let (st, body) = call(
        &client,
        admin,
        Some(KEY),
        Method::PUT,
        "/apisix/admin/upstreams/u1",
        Some(&json!({"nodes": {"127.0.0.1:80": 1}}).to_string()),
    )
    .await;
    assert!(st.is_success(), "{st} {body}");
    let (st, body) = call(
        &client,
        admin,
        Some(KEY),
        Method::GET,
        "/apisix/admin/upstreams/u1",
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(body["key"], "/verified/upstreams/u1");
    within(10, server.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_etcd_holds_but_cannot_serve_are_deleted_through_the_admin_api() {
    let etcd = EtcdServer::start().await;
    let wide = Backend::start("wide", Mode::Greet).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (admin_port, tcp_port, control_port) = (free_port(), free_port(), free_port());
    let cfg = etcd_config(admin_port, tcp_port, &etcd.url())
        .control(control_port)
        .write(dir.path());
    let addr = |port: u16| -> SocketAddr { format!("127.0.0.1:{port}").parse().expect("addr") };
    let mut child = spawn_serve(&cfg);
    wait_listening(addr(admin_port), &mut child);
    wait_listening(addr(tcp_port), &mut child);
    let p = Proxy {
        _child: child,
        admin: addr(admin_port),
        tcp: addr(tcp_port),
        _dir: dir,
    };
    let skipped = || async {
        let url = format!("http://127.0.0.1:{control_port}/v1/stream/skipped");
        let v: Value = within(5, reqwest::get(url))
            .await
            .expect("skipped")
            .json()
            .await
            .expect("json");
        v["skipped"].clone()
    };
    put(
        &etcd,
        "9",
        json!({"id": "9", "upstream": {"nodes": {wide.addr.to_string(): 1}}}),
    )
    .await;
    wait_greeting(p.tcp, Some("wide"), Duration::from_secs(5)).await;
    // Only etcd holds these, each failing its checks: a narrow route
    // (kept marked, refusing its clients), an upstream and an SSL object
    // (ignored).
    put(
        &etcd,
        "1",
        json!({"id": "1", "remote_addr": "127.0.0.1",
            "upstream": {"nodes": {wide.addr.to_string(): 4_294_967_296_u64}}}),
    )
    .await;
    let bad_upstream = json!({"nodes": {"127.0.0.1:1": 4_294_967_296_u64}}).to_string();
    etcd.ctl(&["put", "/apisix/upstreams/u1", &bad_upstream])
        .await;
    etcd.ctl(&["put", "/apisix/ssls/s1", r#"{"cert": 1}"#])
        .await;
    wait_greeting(p.tcp, None, Duration::from_secs(5)).await;
    let listed = skipped().await;
    assert!(
        listed.as_array().is_some_and(|l| l
            .iter()
            .any(|s| s["type"] == "stream_routes" && s["id"] == "1")),
        "{listed}"
    );
    for path in [
        "/apisix/admin/stream_routes/1",
        "/apisix/admin/upstreams/u1",
        "/apisix/admin/ssls/s1",
    ] {
        let (st, body) = admin(&p, Method::DELETE, path, None).await;
        assert_eq!(st, StatusCode::OK, "{path}: {body}");
        let id = path.rsplit('/').next().expect("id");
        assert_eq!(body["deleted"], id, "{body}");
    }
    let left = etcd
        .ctl(&["get", "--prefix", "--keys-only", "/apisix/"])
        .await;
    for key in ["stream_routes/1", "upstreams/u1", "ssls/s1"] {
        assert!(
            !left.lines().any(|l| l == format!("/apisix/{key}")),
            "{key} still in etcd: {left}"
        );
    }
    // The route is gone from the data plane at once: its clients reach the
    // wide route, and nothing is listed as skipped.
    assert_eq!(greeting(p.tcp).await.as_deref(), Some("wide"));
    assert_eq!(skipped().await, json!([]));
    let (st, _) = admin(&p, Method::DELETE, "/apisix/admin/stream_routes/1", None).await;
    assert_eq!(st, StatusCode::NOT_FOUND, "a second delete finds nothing");
}
