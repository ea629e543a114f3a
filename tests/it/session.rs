//! A session's end as operators see it: one status per session, the same in
//! the access log, syslog and Prometheus, for TCP and UDP (nginx stream
//! rules: 200 served or idle, 403 refused by a plugin, 502 no node, 503
//! refused by a limit); and a SIGTERM drain that waits for what is still
//! owed and nothing else.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use apisix_stream::config::{Config, ListenSpec};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use crate::backend::{closed_without_data, roundtrip, Backend, Mode};
use crate::harness::{
    call, detailed_access_log, eventually_some, free_port, spawn_serve, wait_exit, wait_listening,
    within, ChildConfig, TestServer, KEY,
};
use crate::plugins::{metrics_until, parse_syslog};

/// A server with `tcp` and `udp` loopback listeners, the access log in its
/// directory, the plugins these tests use enabled, and `nginx` lines added
/// under `nginx_config:`.
async fn observed(tcp: usize, udp: usize, nginx: &str) -> (TestServer, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("logs/access_stream.log");
    let extra = format!(
        "{}stream_plugins:\n  - ip-restriction\n  - limit-conn\n  - prometheus\n  - syslog\n",
        detailed_access_log(&log, nginx)
    );
    let specs = |n: usize| -> Vec<ListenSpec> {
        (0..n)
            .map(|_| ListenSpec::new("127.0.0.1:0".parse().expect("addr")))
            .collect()
    };
    let adjust = move |c: &mut Config| {
        if let Some(sp) = c.apisix.stream_proxy.as_mut() {
            sp.tcp = specs(tcp);
            sp.udp = specs(udp);
        }
    };
    let s = TestServer::start_full(dir, move |y| format!("{y}{extra}"), adjust).await;
    (s, log)
}

/// The plugins every route of these tests carries (plus its own): the
/// status goes to Prometheus and, through syslog, to `collector`.
fn logged(collector: SocketAddr, own: Value) -> Value {
    let mut plugins = json!({
        "prometheus": {},
        "syslog": {"host": "127.0.0.1", "port": collector.port(), "sock_type": "udp",
                   "batch_max_size": 1,
                   "log_format": {"route": "$route_id", "status": "$status"}},
    });
    if let (Some(all), Some(own)) = (plugins.as_object_mut(), own.as_object()) {
        all.extend(own.clone());
    }
    plugins
}

/// One access-log line: protocol, status, route, node and end.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Line {
    protocol: String,
    status: u16,
    route: String,
    node: String,
    end: String,
}

fn parse_line(text: &str) -> Line {
    // `<ip> [<time>] <protocol> <status> <sent> <received> <time> k=v ...`
    let after_time = text.split_once("] ").map_or("", |(_, r)| r);
    let mut words = after_time.split(' ');
    let protocol = words.next().unwrap_or_default().to_string();
    let status = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
    let field = |key: &str| -> String {
        let at = format!(" {key}=");
        text.split_once(&at)
            .map(|(_, r)| r.split(' ').next().unwrap_or_default().to_string())
            .unwrap_or_default()
    };
    let end = text
        .split_once(" end=\"")
        .map(|(_, r)| r.trim_end_matches('"').to_string())
        .unwrap_or_default();
    Line {
        protocol,
        status,
        route: field("route"),
        node: field("node"),
        end,
    }
}

/// The access log's lines once `done` holds for them (bounded wait).
async fn access_until(path: &Path, done: impl Fn(&[Line]) -> bool) -> Vec<Line> {
    let read = || -> Vec<Line> {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        text.lines().map(parse_line).collect()
    };
    let what = format!("access log lines in {}", path.display());
    eventually_some(10, &what, async || Some(read()).filter(|l| done(l))).await
}

/// Syslog entries (`route` -> statuses) until `n` arrived.
async fn syslog_statuses(collector: &UdpSocket, n: usize) -> BTreeMap<String, BTreeSet<String>> {
    let mut by_route: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut buf = vec![0u8; 65_536];
    for _ in 0..n {
        let got = within(10, collector.recv(&mut buf)).await.expect("syslog");
        let text = String::from_utf8_lossy(&buf[..got]).into_owned();
        let entry = parse_syslog(text.trim_end_matches('\n'));
        let route = entry["route"].as_str().unwrap_or_default().to_string();
        let status = entry["status"].as_str().unwrap_or_default().to_string();
        by_route.entry(route).or_default().insert(status);
    }
    by_route
}

/// A port where nothing listens (TCP and UDP).
fn dead_port() -> SocketAddr {
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let port = udp.local_addr().expect("addr").port();
    let tcp = std::net::TcpListener::bind(("127.0.0.1", port));
    drop((udp, tcp));
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[tokio::test]
async fn tcp_statuses_agree_in_access_log_syslog_and_prometheus() {
    let (s, log) = observed(5, 0, "").await;
    let echo = Backend::start("echo", Mode::Echo).await;
    let collector = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let sink = collector.local_addr().expect("addr");
    let dead = dead_port();
    let [ok, idle, unreachable, denied, limited] = [0, 1, 2, 3, 4].map(|i| s.tcp[i]);
    let node = |addr: SocketAddr| json!({"nodes": {addr.to_string(): 1}});
    let routes = [
        ("ok", ok, node(echo.addr), json!({})),
        (
            "idle",
            idle,
            json!({"nodes": {echo.addr.to_string(): 1},
                   "timeout": {"connect": 1, "send": 0.3, "read": 0.3}}),
            json!({}),
        ),
        ("dead", unreachable, node(dead), json!({})),
        (
            "deny",
            denied,
            node(echo.addr),
            json!({"ip-restriction": {"blacklist": ["127.0.0.0/8"]}}),
        ),
        (
            "limit",
            limited,
            node(echo.addr),
            json!({"limit-conn": {"conn": 1, "burst": 0, "default_conn_delay": 0.1,
                                  "key": "remote_addr"}}),
        ),
    ];
    for (id, listener, upstream, own) in &routes {
        s.put_route(
            id,
            &json!({"server_port": listener.port(), "upstream": upstream,
                    "plugins": logged(sink, own.clone())}),
        )
        .await;
    }

    // Served to the end: both sides closed.
    let mut c = within(5, TcpStream::connect(ok)).await.expect("connect");
    assert_eq!(roundtrip(&mut c, b"hello").await, b"hello");
    c.shutdown().await.expect("shutdown");
    let mut rest = Vec::new();
    within(5, c.read_to_end(&mut rest)).await.expect("eof");
    // Nothing moves: closed by the idle timeout, still a normal end.
    let mut c = within(5, TcpStream::connect(idle)).await.expect("connect");
    assert!(closed_without_data(&mut c).await);
    // No node answers; the client's address is refused; over the limit.
    let mut c = within(5, TcpStream::connect(unreachable))
        .await
        .expect("connect");
    assert!(closed_without_data(&mut c).await);
    let mut c = within(5, TcpStream::connect(denied))
        .await
        .expect("connect");
    assert!(closed_without_data(&mut c).await);
    let mut held = within(5, TcpStream::connect(limited))
        .await
        .expect("connect");
    assert_eq!(roundtrip(&mut held, b"in").await, b"in");
    let mut c = within(5, TcpStream::connect(limited))
        .await
        .expect("connect");
    assert!(closed_without_data(&mut c).await);

    let want = |id: &str, status: u16| (id.to_string(), status);
    let expected: BTreeSet<(String, u16)> = [
        want("ok", 200),
        want("idle", 200),
        want("dead", 502),
        want("deny", 403),
        want("limit", 503),
    ]
    .into();
    let lines = access_until(&log, |l| {
        let seen: BTreeSet<(String, u16)> = l.iter().map(|x| (x.route.clone(), x.status)).collect();
        expected.is_subset(&seen)
    })
    .await;
    let by_route = |id: &str| -> Vec<&Line> { lines.iter().filter(|l| l.route == id).collect() };
    assert_eq!(lines.len(), 5, "one line per finished session: {lines:#?}");
    assert!(lines.iter().all(|l| l.protocol == "TCP"), "{lines:#?}");
    assert_eq!(by_route("ok")[0].end, "closed");
    assert_eq!(by_route("idle")[0].end, "idle timeout");
    assert_eq!(by_route("dead")[0].node, dead.to_string());
    assert!(
        by_route("dead")[0].end.contains("tries failed"),
        "{lines:#?}"
    );
    assert_eq!(by_route("deny")[0].node, "-");
    assert!(
        by_route("limit")[0].end.contains("limit-conn"),
        "{lines:#?}"
    );

    // syslog's `$status` is the same.
    let statuses = syslog_statuses(&collector, 5).await;
    let one = |s: &str| BTreeSet::from([s.to_string()]);
    assert_eq!(statuses["ok"], one("200"));
    assert_eq!(
        statuses["idle"],
        one("200"),
        "an idle timeout is no failure"
    );
    assert_eq!(statuses["dead"], one("502"));
    assert_eq!(statuses["deny"], one("403"));
    assert_eq!(statuses["limit"], one("503"));

    // And Prometheus's.
    let series = |code: u16, listener: SocketAddr, node: &str| {
        format!(
            "apisix_stream_status{{code=\"{code}\",listen_addr=\"{listener}\",node=\"{node}\"}} 1"
        )
    };
    let e = echo.addr.to_string();
    let want = [
        series(200, ok, &e),
        series(200, idle, &e),
        series(502, unreachable, &dead.to_string()),
        series(403, denied, ""),
        series(503, limited, ""),
    ];
    metrics_until(&s, &want.iter().map(String::as_str).collect::<Vec<_>>()).await;
    drop(held);
}

/// A UDP backend answering each datagram with `re:<datagram>`.
async fn udp_echo() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let addr = sock.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            let mut out = b"re:".to_vec();
            out.extend_from_slice(&buf[..n]);
            let _ = sock.send_to(&out, from).await;
        }
    });
    (addr, task)
}

/// Send `msg` from `sock` to `to`; the reply, if one comes within 1.5 s.
async fn ask(sock: &UdpSocket, to: SocketAddr, msg: &[u8]) -> Option<Vec<u8>> {
    sock.send_to(msg, to).await.expect("send");
    let mut buf = vec![0u8; 2048];
    match tokio::time::timeout(Duration::from_millis(1500), sock.recv(&mut buf)).await {
        Ok(Ok(n)) => Some(buf[..n].to_vec()),
        _ => None,
    }
}

#[tokio::test]
async fn udp_statuses_agree_in_access_log_syslog_and_prometheus() {
    let (s, log) = observed(0, 4, "").await;
    let (echo, echo_task) = udp_echo().await;
    let collector = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let sink = collector.local_addr().expect("addr");
    let dead = dead_port();
    let [served, unreachable, denied, limited] = [0, 1, 2, 3].map(|i| s.udp[i]);
    let short = json!({"connect": 1, "send": 0.3, "read": 0.3});
    let routes = [
        ("u-ok", served, echo, json!({})),
        ("u-dead", unreachable, dead, json!({})),
        (
            "u-deny",
            denied,
            echo,
            json!({"ip-restriction": {"blacklist": ["127.0.0.0/8"]}}),
        ),
        (
            "u-limit",
            limited,
            echo,
            json!({"limit-conn": {"conn": 1, "burst": 0, "default_conn_delay": 0.1,
                                  "key": "remote_addr"}}),
        ),
    ];
    for (id, listener, node, own) in &routes {
        s.put_route(
            id,
            &json!({"server_port": listener.port(),
                    "upstream": {"scheme": "udp", "nodes": {node.to_string(): 1}, "timeout": short},
                    "plugins": logged(sink, own.clone())}),
        )
        .await;
    }
    let client = || async { UdpSocket::bind("127.0.0.1:0").await.expect("client") };

    // Answered, then idle: a normal end.
    let c = client().await;
    assert_eq!(ask(&c, served, b"hi").await.as_deref(), Some(&b"re:hi"[..]));
    // The node is unreachable; the client is refused.
    let c = client().await;
    assert_eq!(ask(&c, unreachable, b"anyone?").await, None);
    let c = client().await;
    assert_eq!(ask(&c, denied, b"let me in").await, None);
    // Over the limit while the first session of this address lives.
    let first = client().await;
    assert_eq!(
        ask(&first, limited, b"one").await.as_deref(),
        Some(&b"re:one"[..])
    );
    let second = client().await;
    assert_eq!(ask(&second, limited, b"two").await, None);

    // The first session of the limited address ends idle too.
    let expected: BTreeSet<(String, u16)> = [
        ("u-ok".to_string(), 200),
        ("u-dead".to_string(), 502),
        ("u-deny".to_string(), 403),
        ("u-limit".to_string(), 503),
        ("u-limit".to_string(), 200),
    ]
    .into();
    let lines = access_until(&log, |l| {
        let seen: BTreeSet<(String, u16)> = l.iter().map(|x| (x.route.clone(), x.status)).collect();
        expected.is_subset(&seen)
    })
    .await;
    assert!(lines.iter().all(|l| l.protocol == "UDP"), "{lines:#?}");
    let line = |id: &str, status: u16| {
        lines
            .iter()
            .find(|l| l.route == id && l.status == status)
            .cloned()
            .expect("line")
    };
    assert_eq!(line("u-ok", 200).end, "idle timeout");
    assert_eq!(line("u-ok", 200).node, echo.to_string());
    assert_eq!(line("u-dead", 502).node, dead.to_string());
    assert_eq!(line("u-deny", 403).node, "-");

    assert_eq!(lines.len(), 5, "one line per session: {lines:#?}");
    let statuses = syslog_statuses(&collector, 5).await;
    let one = |s: &str| BTreeSet::from([s.to_string()]);
    assert_eq!(statuses["u-ok"], one("200"));
    assert_eq!(statuses["u-dead"], one("502"));
    assert_eq!(statuses["u-deny"], one("403"));
    assert_eq!(
        statuses["u-limit"],
        BTreeSet::from(["200".to_string(), "503".to_string()])
    );

    let series = |code: u16, listener: SocketAddr, node: &str| {
        format!(
            "apisix_stream_status{{code=\"{code}\",listen_addr=\"{listener}\",node=\"{node}\"}} 1"
        )
    };
    let want = [
        series(200, served, &echo.to_string()),
        series(502, unreachable, &dead.to_string()),
        series(403, denied, ""),
        series(503, limited, ""),
        series(200, limited, &echo.to_string()),
    ];
    metrics_until(&s, &want.iter().map(String::as_str).collect::<Vec<_>>()).await;
    echo_task.abort();
}

#[tokio::test]
async fn refusals_at_the_session_cap_are_logged_503() {
    let (s, log) = observed(1, 0, "  event:\n    worker_connections: 4\n").await;
    let echo = Backend::start("echo", Mode::Echo).await;
    s.put_route(
        "1",
        &json!({"upstream": {"nodes": {echo.addr.to_string(): 1}}}),
    )
    .await;
    let cap = s.stream_stats().await["limits"]["max_sessions"]
        .as_u64()
        .expect("cap") as usize;
    let mut held = Vec::new();
    for _ in 0..cap {
        let mut c = within(5, TcpStream::connect(s.tcp[0]))
            .await
            .expect("connect");
        assert_eq!(roundtrip(&mut c, b"x").await, b"x");
        held.push(c);
    }
    let mut extra = within(5, TcpStream::connect(s.tcp[0]))
        .await
        .expect("connect");
    assert!(closed_without_data(&mut extra).await);
    let lines = access_until(&log, |l| !l.is_empty()).await;
    assert_eq!(
        lines,
        vec![Line {
            protocol: "TCP".into(),
            status: 503,
            route: "-".into(),
            node: "-".into(),
            end: "session limit reached".into(),
        }]
    );
    drop(held);
}

// ---------------------------------------------------------------------------
// SIGTERM drains what is still owed, then exits 0.
// ---------------------------------------------------------------------------

/// A child `serve` with an Admin API and the given listener ports.
struct Child {
    guard: crate::harness::ChildGuard,
    admin: SocketAddr,
    client: reqwest::Client,
}

impl Child {
    fn start(dir: &Path, tcp: &[u16], udp: &[u16]) -> Child {
        let admin = free_port();
        let config = tcp.iter().fold(ChildConfig::new(admin), |c, p| c.tcp(*p));
        let config = udp.iter().fold(config, |c, p| c.udp(*p));
        let mut guard = spawn_serve(&config.write(dir));
        let admin = SocketAddr::from(([127, 0, 0, 1], admin));
        wait_listening(admin, &mut guard);
        Child {
            guard,
            admin,
            client: reqwest::Client::new(),
        }
    }

    async fn put_route(&self, body: &Value) {
        let (st, v) = call(
            &self.client,
            self.admin,
            Some(KEY),
            Method::PUT,
            "/apisix/admin/stream_routes/1",
            Some(&body.to_string()),
        )
        .await;
        assert!(st.is_success(), "{st} {v}");
    }

    fn terminate(&self) {
        let pid = rustix::process::Pid::from_child(&self.guard.child);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
    }

    /// The exit code and how long the exit took (at most `secs`).
    fn exit_within(&mut self, secs: u64) -> (Option<i32>, Duration) {
        let started = Instant::now();
        let status = wait_exit(&mut self.guard.child, secs, "serve after SIGTERM");
        (status.code(), started.elapsed())
    }
}

#[tokio::test]
async fn sigterm_delivers_a_udp_reply_still_on_its_way_then_exits_0() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let mut child = Child::start(dir.path(), &[], &[port]);
    // A node that answers one second after it is asked.
    let node = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let node_addr = node.local_addr().expect("addr");
    let (asked_tx, asked_rx) = tokio::sync::oneshot::channel();
    let slow = tokio::spawn(async move {
        let mut buf = [0u8; 64];
        let (n, from) = node.recv_from(&mut buf).await.expect("recv");
        let _ = asked_tx.send(());
        tokio::time::sleep(Duration::from_secs(1)).await;
        let _ = node.send_to(&buf[..n], from).await;
    });
    child
        .put_route(&json!({"upstream": {"scheme": "udp", "nodes": {node_addr.to_string(): 1}}}))
        .await;
    let client = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let proxy = SocketAddr::from(([127, 0, 0, 1], port));
    client.send_to(b"question", proxy).await.expect("send");
    within(5, asked_rx).await.expect("the node was asked");
    child.terminate();
    let mut buf = [0u8; 64];
    let n = within(5, client.recv(&mut buf)).await.expect("the reply");
    assert_eq!(&buf[..n], b"question", "the reply reaches the client");
    let (code, took) = child.exit_within(5);
    eprintln!("exit {code:?} {took:?} after the reply");
    assert_eq!(code, Some(0));
    slow.abort();
}

#[tokio::test]
async fn sigterm_ends_a_session_whose_upstream_finished_although_the_client_stays() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let mut child = Child::start(dir.path(), &[port], &[]);
    // A node that sends its whole reply and closes.
    let node = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let node_addr = node.local_addr().expect("addr");
    let serve = tokio::spawn(async move {
        while let Ok((mut s, _)) = node.accept().await {
            let _ = s.write_all(b"the whole reply").await;
        }
    });
    child
        .put_route(&json!({"upstream": {"nodes": {node_addr.to_string(): 1}}}))
        .await;
    let proxy = SocketAddr::from(([127, 0, 0, 1], port));
    let mut c = within(5, TcpStream::connect(proxy)).await.expect("connect");
    let mut got = Vec::new();
    within(5, c.read_to_end(&mut got))
        .await
        .expect("reply and EOF");
    assert_eq!(got, b"the whole reply");
    // The client keeps its socket open (no shutdown): outside a drain the
    // session would wait for it, as half-close wants.
    let started = Instant::now();
    child.terminate();
    let (code, took) = child.exit_within(10);
    eprintln!("exit {code:?} {took:?} after SIGTERM with the client's socket open");
    assert_eq!(code, Some(0));
    assert!(started.elapsed() < Duration::from_secs(5), "took {took:?}");
    drop(c);
    serve.abort();
}

/// A TLS client that has read the whole reply and closes with the server's
/// close_notify unread answers with a reset: that session was served (200,
/// as nginx logs it), not a client error.
#[tokio::test]
async fn a_tls_client_resetting_after_the_whole_reply_was_served() {
    use crate::tls::{put_ssl, server_cert, tls_connect, tls_listener, Ca};
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("logs/access_stream.log");
    let extra = detailed_access_log(&log, "");
    let adjust = |c: &mut Config| {
        if let Some(sp) = c.apisix.stream_proxy.as_mut() {
            sp.tcp = vec![tls_listener()];
        }
    };
    let s = TestServer::start_full(dir, move |y| format!("{y}{extra}"), adjust).await;
    let ca = Ca::new("reply ca");
    put_ssl(
        &s,
        "1",
        &server_cert(&ca, &["r.test"]),
        &["r.test"],
        json!({}),
    )
    .await;
    // A backend that answers once and closes.
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let backend = l.local_addr().expect("addr");
    let answers = tokio::spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            let _ = c.write_all(b"ok\n").await;
        }
    });
    s.put_route(
        "1",
        &json!({"upstream": {"nodes": {backend.to_string(): 1}}}),
    )
    .await;
    for _ in 0..3 {
        let (_, mut tls) = tls_connect(s.tcp[0], "r.test", None)
            .await
            .expect("handshake");
        let mut got = [0u8; 3];
        within(5, tls.read_exact(&mut got)).await.expect("reply");
        assert_eq!(&got, b"ok\n");
        // The proxy has sent everything and its close_notify by now; the
        // client closes with a reset.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (tcp, _) = tls.into_inner();
        socket2::SockRef::from(&tcp)
            .set_linger(Some(Duration::ZERO))
            .expect("linger");
        drop(tcp);
    }
    let lines = access_until(&log, |l| l.len() >= 3).await;
    answers.abort();
    for line in &lines {
        assert_eq!(line.status, 200, "{line:?}");
        assert_eq!(line.end, "reset by client after its reply", "{line:?}");
    }
}
