//! Shared test helpers: an in-process server on ephemeral ports; child
//! `apisix-stream serve` processes (their config, start, readiness, exit),
//! always killed; the programs tests start; an HTTP client; and bounded
//! waits (`within`, `eventually`) instead of sleeps.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
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

/// `text` with `from` replaced by `to`, insisting `from` is there (a test
/// config that changed shape fails loudly instead of silently keeping a
/// fixed port).
fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "test config has no {from:?}; it changed shape:\n{text}"
    );
    text.replacen(from, to, 1)
}

/// `yaml` reading its objects from etcd: `config_provider: etcd` and these
/// `deployment.etcd` keys (YAML lines indented by four spaces).
pub fn with_etcd(yaml: &str, keys: &str) -> String {
    let yaml = replace_once(yaml, "config_provider: local", "config_provider: etcd");
    replace_once(
        &yaml,
        "deployment:\n",
        &format!("deployment:\n  etcd:\n{keys}"),
    )
}

/// A config.yaml for a child `apisix-stream serve`: the test config with
/// every listener on a loopback port the test chose (a child process cannot
/// report the ports it bound), no fixed port left.
#[derive(Debug, Clone)]
pub struct ChildConfig {
    admin: u16,
    control: u16,
    metrics: u16,
    tcp: Vec<String>,
    udp: Vec<String>,
    admin_key: Option<String>,
    etcd: Option<String>,
}

impl ChildConfig {
    /// The Admin API on `admin`; no proxy listener; the Control API and the
    /// metrics on ephemeral ports.
    pub fn new(admin: u16) -> ChildConfig {
        ChildConfig {
            admin,
            control: 0,
            metrics: 0,
            tcp: Vec::new(),
            udp: Vec::new(),
            admin_key: None,
            etcd: None,
        }
    }

    /// Add a TCP listener on `127.0.0.1:port`.
    pub fn tcp(self, port: u16) -> ChildConfig {
        self.tcp_with(port, "")
    }

    /// Add a TCP listener on `127.0.0.1:port` with options (`tls: true`, ...).
    pub fn tcp_with(mut self, port: u16, opts: &str) -> ChildConfig {
        self.tcp.push(match opts {
            "" => format!("\"127.0.0.1:{port}\""),
            o => format!("{{addr: \"127.0.0.1:{port}\", {o}}}"),
        });
        self
    }

    /// Add a UDP listener on `127.0.0.1:port`.
    pub fn udp(mut self, port: u16) -> ChildConfig {
        self.udp.push(format!("\"127.0.0.1:{port}\""));
        self
    }

    /// The Control API on `port`.
    pub fn control(mut self, port: u16) -> ChildConfig {
        self.control = port;
        self
    }

    /// The Prometheus export server on `port`.
    pub fn metrics(mut self, port: u16) -> ChildConfig {
        self.metrics = port;
        self
    }

    /// This admin key instead of [`KEY`].
    pub fn admin_key(mut self, key: &str) -> ChildConfig {
        self.admin_key = Some(key.to_string());
        self
    }

    /// Objects from etcd, with these `deployment.etcd` keys (see [`with_etcd`]).
    pub fn etcd(mut self, keys: &str) -> ChildConfig {
        self.etcd = Some(keys.to_string());
        self
    }

    /// The config text, its store in `data`.
    pub fn yaml(&self, data: &Path) -> String {
        let list = |items: &[String]| -> String {
            items.iter().map(|i| format!("      - {i}\n")).collect()
        };
        let mut y = test_yaml(data, self.admin);
        y = replace_once(
            &y,
            "    tcp:\n      - 9100\n",
            &format!("    tcp:\n{}", list(&self.tcp)),
        );
        y = replace_once(
            &y,
            "    udp:\n      - 9200\n",
            &format!("    udp:\n{}", list(&self.udp)),
        );
        y = replace_once(
            &y,
            "  control:\n    ip: 127.0.0.1\n    port: 0\n",
            &format!(
                "  control:\n    ip: 127.0.0.1\n    port: {}\n",
                self.control
            ),
        );
        y = replace_once(
            &y,
            "    export_addr:\n      ip: 127.0.0.1\n      port: 0\n",
            &format!(
                "    export_addr:\n      ip: 127.0.0.1\n      port: {}\n",
                self.metrics
            ),
        );
        if let Some(key) = &self.admin_key {
            y = replace_once(&y, &format!("key: {KEY}\n"), &format!("key: {key}\n"));
        }
        match &self.etcd {
            Some(keys) => with_etcd(&y, keys),
            None => y,
        }
    }

    /// Write `dir/config.yaml` (its store in `dir/data`) and return its path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        let path = dir.join("config.yaml");
        std::fs::write(&path, self.yaml(&dir.join("data"))).expect("write config.yaml");
        path
    }
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

/// `GET` `url` (with `accept` when given) and its body as text.
/// `nginx_config:` with `nginx` lines (each indented two spaces) and the
/// stream access log at `log` in the detailed format.
pub fn detailed_access_log(log: &Path, nginx: &str) -> String {
    format!(
        "nginx_config:\n{nginx}  stream:\n    enable_access_log: true\n    access_log: \"{}\"\n    access_log_format: '{}'\n",
        log.display(),
        apisix_stream::access_log::DETAILED_FORMAT
    )
}

pub async fn get_text(url: &str, accept: Option<&str>) -> String {
    within(5, async {
        let mut req = reqwest::Client::new().get(url);
        if let Some(a) = accept {
            req = req.header("Accept", a);
        }
        req.send().await.expect("get").text().await.expect("text")
    })
    .await
}

/// `GET` `path` on the Control API at `control`, as JSON.
pub async fn control_json(control: SocketAddr, path: &str) -> Value {
    within(5, async {
        reqwest::get(format!("http://{control}{path}"))
            .await
            .expect("control answers")
            .json()
            .await
            .expect("json")
    })
    .await
}

/// A bounded wait on any future: tests never hang.
pub async fn within<F: std::future::Future>(secs: u64, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .expect("timed out")
}

/// How often [`eventually`] and [`eventually_some`] look again.
const POLL: Duration = Duration::from_millis(20);

/// Poll `f` until it holds, for at most `secs` (and once more at the
/// deadline): whether it held. The caller asserts, with its own message.
pub async fn eventually(secs: u64, mut f: impl AsyncFnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if f().await {
            return true;
        }
        tokio::time::sleep(POLL).await;
    }
    f().await
}

/// Poll `f` until it yields a value, for at most `secs`; the test fails
/// naming `what` when it never does.
pub async fn eventually_some<T>(secs: u64, what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {secs}s waiting: {what}"
        );
        tokio::time::sleep(POLL).await;
    }
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

    /// Start in standalone mode (`config_provider: yaml`) on the
    /// `apisix.yaml` at `file` (inside `dir`), with the given TCP listeners.
    pub async fn standalone_yaml(
        dir: tempfile::TempDir,
        file: &Path,
        tcp: Vec<ListenSpec>,
    ) -> TestServer {
        let path = file.to_path_buf();
        Self::start_full(
            dir,
            |y| y.replace("config_provider: local", "config_provider: yaml"),
            move |c| {
                c.deployment.standalone_file = path;
                if let Some(sp) = c.apisix.stream_proxy.as_mut() {
                    sp.tcp = tcp;
                }
            },
        )
        .await
    }

    /// [`TestServer::standalone_yaml`] on an `apisix.yaml` holding `text`,
    /// with one plain TCP listener; also returns the file's path.
    pub async fn standalone_text(text: &str) -> (TestServer, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("apisix.yaml");
        std::fs::write(&file, text).expect("write apisix.yaml");
        let plain = ListenSpec::new("127.0.0.1:0".parse().expect("addr"));
        (Self::standalone_yaml(dir, &file, vec![plain]).await, file)
    }

    /// The Prometheus endpoint's text.
    pub async fn metrics_text(&self) -> String {
        self.metrics_text_accepting(None).await
    }

    /// The Prometheus endpoint's text, asked for with `accept`.
    pub async fn metrics_text_accepting(&self, accept: Option<&str>) -> String {
        let addr = self
            .server
            .as_ref()
            .and_then(|x| x.metrics_addr())
            .expect("metrics");
        get_text(&format!("http://{addr}/apisix/prometheus/metrics"), accept).await
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

    /// `GET` on the Control API, as JSON.
    pub async fn control_get(&self, path: &str) -> Value {
        control_json(self.control(), path).await
    }

    /// `GET /v1/stream/stats` of the Control API.
    pub async fn stream_stats(&self) -> Value {
        self.control_get("/v1/stream/stats").await
    }

    /// `GET /v1/stream/skipped` of the Control API.
    pub async fn skipped(&self) -> Value {
        self.control_get("/v1/stream/skipped").await
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

/// Ports [`free_port`] hands out: below the kernel's ephemeral range
/// (32768 and up by default), so no outgoing connection of another test and
/// no bind to port 0 can be given one between the pick and the child's bind.
const PICKED_PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A loopback port free for TCP and UDP (for child processes, whose bound
/// port we cannot ask). Each call in this process gets another port.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let span = u32::from(PICKED_PORTS.end - PICKED_PORTS.start);
    // Test processes running at once start at different places.
    let start = std::process::id() * 7919;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = PICKED_PORTS.start + u16::try_from((start + n) % span).expect("in range");
        let tcp = TcpListener::bind(("127.0.0.1", port));
        let udp = std::net::UdpSocket::bind(("127.0.0.1", port));
        if tcp.is_ok() && udp.is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {PICKED_PORTS:?}");
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

/// Wait until something accepts TCP connections on `addr`; a child that
/// exits first fails the test with its stderr (piped).
pub fn wait_listening(addr: SocketAddr, child: &mut ChildGuard) {
    wait_accepting(addr, child, |c| {
        let mut err = String::new();
        if let Some(mut e) = c.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut err);
        }
        err
    });
}

/// As [`wait_listening`], for a child whose stderr goes to the file `log`.
pub fn wait_listening_logged(addr: SocketAddr, child: &mut ChildGuard, log: &Path) {
    wait_accepting(addr, child, |_| {
        std::fs::read_to_string(log).unwrap_or_default()
    });
}

fn wait_accepting(addr: SocketAddr, child: &mut ChildGuard, stderr: impl Fn(&mut Child) -> String) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.child.try_wait() {
            panic!(
                "serve exited early with {status}: {}",
                stderr(&mut child.child)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("nothing listening on {addr} after 15s");
}

/// Wait for a child to exit, for at most `secs`; past that it is killed and
/// the test fails naming `what`.
pub fn wait_exit(child: &mut Child, secs: u64, what: &str) -> ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish in {secs}s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
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
    let status = wait_exit(&mut child, 20, &format!("apisix-stream {args:?}"));
    use std::io::Read;
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    (status.code().unwrap_or(-1), out, err)
}

/// The first line a connection through `proxy` yields: the backend's
/// greeting, or `None` when the proxy closed it.
pub async fn greeting(proxy: SocketAddr) -> Option<String> {
    let mut s = within(5, tokio::net::TcpStream::connect(proxy))
        .await
        .expect("connect to proxy");
    let mut out = Vec::new();
    let mut b = [0u8; 64];
    loop {
        let n = match tokio::time::timeout(
            Duration::from_secs(3),
            tokio::io::AsyncReadExt::read(&mut s, &mut b),
        )
        .await
        {
            Ok(Ok(n)) => n,
            Ok(Err(_)) => 0,
            Err(_) => panic!("proxy neither answered nor closed within 3s"),
        };
        if n == 0 {
            return (!out.is_empty()).then(|| String::from_utf8_lossy(&out).into_owned());
        }
        out.extend_from_slice(&b[..n]);
        if let Some(pos) = out.iter().position(|c| *c == b'\n') {
            return Some(String::from_utf8_lossy(&out[..pos]).into_owned());
        }
    }
}
