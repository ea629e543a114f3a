//! Shared test helpers: an in-process server on ephemeral ports, a child
//! `apisix-stream serve` process that is always killed, and an HTTP client.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use apisix_stream::config::{Config, ListenSpec};
use apisix_stream::server::{self, Server};
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// The admin key every test config uses.
pub const KEY: &str = "test-admin-key-0123456789abcdefghijklmnop";
/// A viewer (read-only) key.
pub const VIEWER_KEY: &str = "test-viewer-key-0123456789abcdefghijklmno";

/// A config.yaml for tests: admin on an ephemeral loopback port, the given
/// data dir, stream proxy enabled. `extra` is appended under `apisix:`.
pub fn test_yaml(data_dir: &Path, admin_port: u16) -> String {
    format!(
        r#"apisix:
  proxy_mode: stream
  stream_proxy:
    tcp:
      - 9100
    udp:
      - 9200
  enable_control: true
  control:
    ip: 127.0.0.1
    port: 0
deployment:
  role: traditional
  role_traditional:
    config_provider: local
  local:
    data_dir: "{dir}"
  admin:
    admin_key:
      - name: admin
        key: {KEY}
        role: admin
      - name: viewer
        key: {VIEWER_KEY}
        role: viewer
    admin_listen:
      ip: 127.0.0.1
      port: {admin_port}
    allow_admin:
      - 127.0.0.0/24
plugin_attr:
  prometheus:
    export_addr:
      ip: 127.0.0.1
      port: 0
"#,
        dir = data_dir.display()
    )
}

/// A server running in this process.
pub struct TestServer {
    pub server: Option<Server>,
    pub admin: SocketAddr,
    /// Bound TCP proxy listeners, in config order.
    pub tcp: Vec<SocketAddr>,
    /// Bound UDP proxy listeners, in config order.
    pub udp: Vec<SocketAddr>,
    pub dir: tempfile::TempDir,
    pub client: reqwest::Client,
}

/// A bounded wait on any future: tests never hang.
pub async fn within<F: std::future::Future>(secs: u64, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .expect("timed out")
}

impl TestServer {
    /// Start with the default test config.
    pub async fn start() -> TestServer {
        Self::start_with(|y| y).await
    }

    /// Start with the test config text transformed by `edit`.
    pub async fn start_with(edit: impl FnOnce(String) -> String) -> TestServer {
        Self::start_in(tempfile::tempdir().expect("tempdir"), edit).await
    }

    /// Start on an existing directory (its `data/` holds the store).
    pub async fn start_in(
        dir: tempfile::TempDir,
        edit: impl FnOnce(String) -> String,
    ) -> TestServer {
        Self::start_full(dir, edit, |_| {}).await
    }

    /// Start with TCP proxy listeners on these addresses (port 0 = ephemeral).
    pub async fn with_tcp(addrs: &[&str]) -> TestServer {
        Self::with_listeners(addrs, &[]).await
    }

    /// Start with these TCP listener entries (TLS flags included).
    pub async fn with_tcp_specs(tcp: Vec<ListenSpec>, extra_yaml: &str) -> TestServer {
        let extra = extra_yaml.to_string();
        let adjust = move |c: &mut Config| {
            if let Some(sp) = c.apisix.stream_proxy.as_mut() {
                sp.tcp = tcp;
            }
        };
        Self::start_full(
            tempfile::tempdir().expect("tempdir"),
            move |y| format!("{y}{extra}"),
            adjust,
        )
        .await
    }

    /// Start with TCP and UDP proxy listeners (port 0 = ephemeral).
    pub async fn with_listeners(tcp: &[&str], udp: &[&str]) -> TestServer {
        let specs = |addrs: &[&str]| -> Vec<ListenSpec> {
            addrs
                .iter()
                .map(|a| ListenSpec::new(a.parse().expect("listen addr")))
                .collect()
        };
        let (tcp, udp) = (specs(tcp), specs(udp));
        let adjust = move |c: &mut Config| {
            if let Some(sp) = c.apisix.stream_proxy.as_mut() {
                sp.tcp = tcp;
                sp.udp = udp;
            }
        };
        Self::start_full(tempfile::tempdir().expect("tempdir"), |y| y, adjust).await
    }

    /// Start with both the YAML text and the parsed config adjusted.
    pub async fn start_full(
        dir: tempfile::TempDir,
        edit: impl FnOnce(String) -> String,
        adjust: impl FnOnce(&mut Config),
    ) -> TestServer {
        let yaml = edit(test_yaml(&dir.path().join("data"), 0));
        let mut config = Config::from_yaml(&yaml).expect("test config parses");
        if let Some(sp) = config.apisix.stream_proxy.as_mut() {
            // Tests bind ephemeral ports only; never the fixed ones of the text.
            sp.tcp.clear();
            sp.udp.clear();
        }
        adjust(&mut config);
        let server = within(10, server::start(config))
            .await
            .expect("server starts");
        let admin = server.admin_addr().expect("admin enabled");
        let tcp = server.tcp_listeners().iter().map(|l| l.local).collect();
        let udp = server
            .udp_listeners()
            .iter()
            .map(|(l, _)| l.local)
            .collect();
        TestServer {
            server: Some(server),
            admin,
            tcp,
            udp,
            dir,
            client: reqwest::Client::new(),
        }
    }

    /// Stop the server (the data dir stays until drop).
    pub async fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            within(10, s.shutdown()).await;
        }
    }

    /// Address of the Control API.
    pub fn control(&self) -> SocketAddr {
        self.server
            .as_ref()
            .and_then(|srv| srv.control_addr())
            .expect("control API enabled")
    }

    /// `GET /v1/stream/stats` of the Control API.
    pub async fn stream_stats(&self) -> Value {
        let url = format!("http://{}/v1/stream/stats", self.control());
        within(5, reqwest::get(url))
            .await
            .expect("stats")
            .json()
            .await
            .expect("json")
    }

    /// Full URL of an admin path like `/apisix/admin/stream_routes/1`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// PUT a stream route and insist it was accepted.
    pub async fn put_route(&self, id: &str, body: &Value) {
        let (st, v) = self
            .call(
                Method::PUT,
                &format!("/apisix/admin/stream_routes/{id}"),
                Some(&body.to_string()),
            )
            .await;
        assert!(st.is_success(), "PUT route {id}: {st} {v}");
    }

    /// An admin request with the admin key; returns status and parsed JSON
    /// (`Value::Null` when the body is not JSON).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&str>,
    ) -> (StatusCode, Value) {
        call(&self.client, self.admin, Some(KEY), method, path, body).await
    }
}

/// An admin request against any address.
pub async fn call(
    client: &reqwest::Client,
    admin: SocketAddr,
    key: Option<&str>,
    method: Method,
    path: &str,
    body: Option<&str>,
) -> (StatusCode, Value) {
    let mut req = client.request(method, format!("http://{admin}{path}"));
    if let Some(k) = key {
        req = req.header("X-API-KEY", k);
    }
    if let Some(b) = body {
        req = req.body(b.to_string());
    }
    let res = within(10, req.send()).await.expect("request sent");
    let status = res.status();
    let text = within(10, res.text()).await.expect("body read");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// A free loopback TCP port (for child processes, whose bound port we cannot ask).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A child `apisix-stream` process, killed when dropped.
pub struct ChildGuard {
    pub child: Child,
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Path of the built binary.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_apisix-stream"))
}

/// A program a test starts (etcd, dnsmasq, tmux), looked up on PATH and in
/// the sbin directories. A missing one fails the test, naming the Debian
/// package to install: no test is skipped for want of a program.
pub fn program(name: &str, package: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} not found on PATH: install the {package} package \
                 (tests/run.sh installs what the tests need, then runs them)"
            )
        })
}

/// Spawn `apisix-stream serve -c <config>` with stderr captured.
pub fn spawn_serve(config: &Path) -> ChildGuard {
    let child = Command::new(bin())
        .arg("serve")
        .arg("-c")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("spawn serve");
    ChildGuard { child }
}

/// Wait until something accepts TCP connections on `addr`.
pub fn wait_listening(addr: SocketAddr, child: &mut ChildGuard) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            panic!("serve exited early with {status}: {err}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("nothing listening on {addr} after 15s");
}

/// Run `apisix-stream` with arguments to completion (bounded), returning
/// exit code, stdout and stderr.
pub fn run_cli(args: &[&str]) -> (i32, String, String) {
    let mut child = Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            use std::io::Read;
            let mut out = String::new();
            let mut err = String::new();
            if let Some(mut o) = child.stdout.take() {
                let _ = o.read_to_string(&mut out);
            }
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            return (status.code().unwrap_or(-1), out, err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("apisix-stream {args:?} did not finish in 20s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
