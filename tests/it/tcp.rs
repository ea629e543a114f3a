//! The TCP data plane end to end: real listeners, real upstreams, real
//! clients on loopback.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::backend::{
    closed_without_data, connect_from, read_line, roundtrip, Backend, BlackHole, Mode,
};
use crate::harness::{within, TestServer};

async fn connect(addr: std::net::SocketAddr) -> TcpStream {
    within(5, TcpStream::connect(addr))
        .await
        .expect("connect to proxy")
}

fn nodes(backends: &[(&Backend, u32)]) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for (b, w) in backends {
        m.insert(b.addr.to_string(), json!(w));
    }
    serde_json::Value::Object(m)
}

#[tokio::test]
async fn seed_route_proxies_and_unmatched_connections_are_closed() {
    let s = TestServer::with_tcp(&["127.0.0.1:0"]).await;
    let echo = Backend::start("echo", Mode::Echo).await;
    let proxy = s.tcp[0];
    // No route yet: closed at once, nothing forwarded.
    let mut c = connect(proxy).await;
    assert!(closed_without_data(&mut c).await);
    assert_eq!(echo.accepted(), 0);
    s.put_route(
        "1",
        &json!({"remote_addr": "127.0.0.1",
        "upstream": {"nodes": nodes(&[(&echo, 1)]), "type": "roundrobin"}}),
    )
    .await;
    // The route serves as soon as the Admin API has answered.
    let mut c = connect(proxy).await;
    assert_eq!(roundtrip(&mut c, b"mmm").await, b"mmm");
    // remote_addr filter: a client from 127.0.0.2 does not match.
    let mut other = connect_from("127.0.0.2", proxy).await;
    assert!(closed_without_data(&mut other).await);
    assert_eq!(echo.accepted(), 1);
    s.put_route(
        "1",
        &json!({"remote_addr": "127.0.0.0/30",
        "upstream": {"nodes": nodes(&[(&echo, 1)])}}),
    )
    .await;
    let mut other = connect_from("127.0.0.2", proxy).await;
    assert_eq!(roundtrip(&mut other, b"cidr").await, b"cidr");
}

#[tokio::test]
async fn server_addr_and_server_port_select_routes() {
    let s = TestServer::with_tcp(&["0.0.0.0:0", "127.0.0.1:0"]).await;
    let a = Backend::start("a", Mode::Greet).await;
    let b = Backend::start("b", Mode::Greet).await;
    let c = Backend::start("c", Mode::Greet).await;
    let (wild, second) = (s.tcp[0], s.tcp[1]);
    s.put_route(
        "1",
        &json!({"server_addr": "127.0.0.2", "server_port": wild.port(),
        "upstream": {"nodes": nodes(&[(&a, 1)])}}),
    )
    .await;
    s.put_route(
        "2",
        &json!({"server_port": wild.port(), "upstream": {"nodes": nodes(&[(&b, 1)])}}),
    )
    .await;
    s.put_route(
        "3",
        &json!({"server_port": second.port(), "upstream": {"nodes": nodes(&[(&c, 1)])}}),
    )
    .await;
    // Server speaks first: the greeting arrives without the client sending.
    let mut to_2 = connect(format!("127.0.0.2:{}", wild.port()).parse().expect("addr")).await;
    assert_eq!(read_line(&mut to_2).await, "a");
    let mut to_1 = connect(format!("127.0.0.1:{}", wild.port()).parse().expect("addr")).await;
    assert_eq!(read_line(&mut to_1).await, "b");
    let mut sec = connect(second).await;
    assert_eq!(read_line(&mut sec).await, "c");
    assert_eq!(
        roundtrip(&mut sec, b"after greeting").await,
        b"after greeting"
    );
}

#[tokio::test]
async fn weighted_roundrobin_holds_its_ratio_over_1000_connections() {
    let s = TestServer::with_tcp(&["127.0.0.1:0"]).await;
    let a = Backend::start("a", Mode::Greet).await;
    let b = Backend::start("b", Mode::Greet).await;
    let zero = Backend::start("zero", Mode::Greet).await;
    s.put_route(
        "1",
        &json!({"upstream": {"type": "roundrobin",
        "nodes": nodes(&[(&a, 3), (&b, 1), (&zero, 0)])}}),
    )
    .await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..1000 {
        let mut c = connect(s.tcp[0]).await;
        *seen.entry(read_line(&mut c).await).or_default() += 1;
    }
    assert_eq!(seen.get("a"), Some(&750), "{seen:?}");
    assert_eq!(seen.get("b"), Some(&250), "{seen:?}");
    assert_eq!(zero.accepted(), 0, "weight 0 is never picked");
}

#[tokio::test]
async fn chash_on_remote_addr_is_sticky() {
    let s = TestServer::with_tcp(&["127.0.0.1:0"]).await;
    let backends = [
        Backend::start("a", Mode::Greet).await,
        Backend::start("b", Mode::Greet).await,
        Backend::start("c", Mode::Greet).await,
    ];
    let n: Vec<(&Backend, u32)> = backends.iter().map(|b| (b, 1)).collect();
    s.put_route(
        "1",
        &json!({"upstream": {"type": "chash", "key": "remote_addr", "nodes": nodes(&n)}}),
    )
    .await;
    let mut used = std::collections::HashSet::new();
    for i in 1..=24 {
        let from = format!("127.0.0.{i}");
        let mut first = None;
        for _ in 0..4 {
            let mut c = connect_from(&from, s.tcp[0]).await;
            let name = read_line(&mut c).await;
            assert_eq!(
                *first.get_or_insert_with(|| name.clone()),
                name,
                "client {from} moved"
            );
        }
        used.insert(first.unwrap_or_default());
    }
    assert!(
        used.len() >= 2,
        "24 clients all hashed to one node: {used:?}"
    );
}

#[tokio::test]
async fn least_conn_prefers_the_idle_node() {
    let s = TestServer::with_tcp(&["127.0.0.1:0"]).await;
    let a = Backend::start("a", Mode::Greet).await;
    let b = Backend::start("b", Mode::Greet).await;
    s.put_route(
        "1",
        &json!({"upstream": {"type": "least_conn", "nodes": nodes(&[(&a, 1), (&b, 1)])}}),
    )
    .await;
    let mut held = connect(s.tcp[0]).await;
    let busy = read_line(&mut held).await;
    for _ in 0..5 {
        let mut c = connect(s.tcp[0]).await;
        let name = read_line(&mut c).await;
        assert_ne!(
            name, busy,
            "least_conn sent a new connection to the busy node"
        );
        drop(c);
        // Let the proxy see the close before the next pick.
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

#[tokio::test]
async fn retries_skip_a_refusing_node() {
    let s = TestServer::with_tcp(&["127.0.0.1:0"]).await;
    let live = Backend::start("live", Mode::Greet).await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let closed_addr = closed.local_addr().expect("addr");
    drop(closed);
    s.put_route(
        "1",
        &json!({"upstream": {"type": "roundrobin",
        "nodes": {closed_addr.to_string(): 5, live.addr.to_string(): 1}}}),
    )
    .await;
    for _ in 0..12 {
        let mut c = connect(s.tcp[0]).await;
        assert_eq!(read_line(&mut c).await, "live");
    }
    // retries: 0 gives up after the first failure.
    s.put_route(
        "1",
        &json!({"upstream": {"type": "roundrobin", "retries": 0,
        "nodes": {closed_addr.to_string(): 1}}}),
    )
    .await;
    let mut c = connect(s.tcp[0]).await;
    assert!(closed_without_data(&mut c).await);
}

#[tokio::test]
async fn connect_timeout_to_a_black_hole_then_next_node() {
    let s = TestServer::with_tcp(&["127.0.0.1:0"]).await;
    let hole = BlackHole::new();
    let live = Backend::start("live", Mode::Greet).await;
    s.put_route(
        "1",
        &json!({"upstream": {"retries": 0,
        "timeout": {"connect": 0.3, "send": 5, "read": 5},
        "nodes": {hole.addr.to_string(): 1}}}),
    )
    .await;
    let started = Instant::now();
    let mut c = connect(s.tcp[0]).await;
    assert!(closed_without_data(&mut c).await);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250),
        "closed before the connect timeout: {took:?}"
    );
    assert!(
        took < Duration::from_secs(3),
        "connect timeout not applied: {took:?}"
    );
    s.put_route(
        "1",
        &json!({"upstream": {"type": "roundrobin",
        "timeout": {"connect": 0.3, "send": 5, "read": 5},
        "nodes": [{"host": "127.0.0.1", "port": hole.addr.port(), "weight": 1, "priority": 1},
                  {"host": "127.0.0.1", "port": live.addr.port(), "weight": 1}]}}),
    )
    .await;
    let mut c = connect(s.tcp[0]).await;
    assert_eq!(read_line(&mut c).await, "live");
}

#[tokio::test]
async fn half_close_reaches_the_upstream_and_the_reply_comes_back() {
    let s = TestServer::with_tcp(&["127.0.0.1:0"]).await;
    let counter = Backend::start("count", Mode::CountThenReply).await;
    s.put_route(
        "1",
        &json!({"upstream": {"nodes": nodes(&[(&counter, 1)])}}),
    )
    .await;
    let mut c = connect(s.tcp[0]).await;
    c.write_all(&[7u8; 5000]).await.expect("write");
    c.shutdown().await.expect("half-close");
    let mut reply = String::new();
    within(5, c.read_to_string(&mut reply)).await.expect("read");
    assert_eq!(reply, "got 5000 bytes");
}

#[tokio::test]
async fn upstream_reset_is_passed_on() {
    let s = TestServer::with_tcp(&["127.0.0.1:0"]).await;
    let rst = Backend::start("rst", Mode::Reset).await;
    s.put_route("1", &json!({"upstream": {"nodes": nodes(&[(&rst, 1)])}}))
        .await;
    let mut c = connect(s.tcp[0]).await;
    c.write_all(b"hello").await.expect("write");
    let mut b = [0u8; 8];
    let r = within(5, c.read(&mut b)).await;
    let e = r.expect_err("a reset, not a clean EOF");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset);
}

#[tokio::test]
async fn ten_mib_each_way_arrive_intact() {
    let s = TestServer::with_tcp(&["127.0.0.1:0"]).await;
    let echo = Backend::start("echo", Mode::Echo).await;
    s.put_route("1", &json!({"upstream": {"nodes": nodes(&[(&echo, 1)])}}))
        .await;
    let c = connect(s.tcp[0]).await;
    let (mut r, mut w) = c.into_split();
    let mut data = vec![0u8; 10 << 20];
    let mut x: u32 = 12345;
    for b in data.iter_mut() {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        *b = (x >> 16) as u8;
    }
    let sent = Sha256::digest(&data);
    let writer = tokio::spawn(async move {
        w.write_all(&data).await.expect("write 10 MiB");
        w.shutdown().await.expect("shutdown");
    });
    let mut got = Vec::with_capacity(10 << 20);
    within(30, r.read_to_end(&mut got))
        .await
        .expect("read back");
    within(5, writer).await.expect("writer");
    assert_eq!(got.len(), 10 << 20);
    assert_eq!(Sha256::digest(&got), sent);
}

#[tokio::test]
async fn live_route_changes_leave_open_connections_alone() {
    let s = TestServer::with_tcp(&["127.0.0.1:0"]).await;
    let a = Backend::start("a", Mode::Greet).await;
    let b = Backend::start("b", Mode::Greet).await;
    s.put_route("1", &json!({"upstream": {"nodes": nodes(&[(&a, 1)])}}))
        .await;
    let mut old = connect(s.tcp[0]).await;
    assert_eq!(read_line(&mut old).await, "a");
    s.put_route("1", &json!({"upstream": {"nodes": nodes(&[(&b, 1)])}}))
        .await;
    let mut new = connect(s.tcp[0]).await;
    assert_eq!(read_line(&mut new).await, "b");
    assert_eq!(roundtrip(&mut old, b"still a").await, b"still a");
    let (st, _) = s
        .call(
            reqwest::Method::DELETE,
            "/apisix/admin/stream_routes/1",
            None,
        )
        .await;
    assert!(st.is_success());
    let mut none = connect(s.tcp[0]).await;
    assert!(closed_without_data(&mut none).await);
    assert_eq!(roundtrip(&mut old, b"streaming on").await, b"streaming on");
    assert_eq!(roundtrip(&mut new, b"b too").await, b"b too");
}

#[tokio::test]
async fn upstream_id_and_host_names() {
    let s = TestServer::with_tcp(&["127.0.0.1:0"]).await;
    let a = Backend::start("a", Mode::Greet).await;
    let (st, _) = s
        .call(
            reqwest::Method::PUT,
            "/apisix/admin/upstreams/u1",
            Some(&json!({"nodes": {format!("localhost:{}", a.addr.port()): 1}}).to_string()),
        )
        .await;
    assert!(st.is_success());
    s.put_route("1", &json!({"upstream_id": "u1"})).await;
    let mut c = connect(s.tcp[0]).await;
    assert_eq!(
        read_line(&mut c).await,
        "a",
        "host name resolved at connect time"
    );
    // An unresolvable name closes the connection.
    s.put_route(
        "1",
        &json!({"upstream": {"nodes": {"no-such-host.invalid:1995": 1}}}),
    )
    .await;
    let mut c = connect(s.tcp[0]).await;
    assert!(closed_without_data(&mut c).await);
}

#[tokio::test]
async fn shutdown_drains_open_connections() {
    let mut s = TestServer::with_tcp(&["127.0.0.1:0"]).await;
    let echo = Backend::start("echo", Mode::Echo).await;
    s.put_route("1", &json!({"upstream": {"nodes": nodes(&[(&echo, 1)])}}))
        .await;
    let mut open = connect(s.tcp[0]).await;
    assert_eq!(roundtrip(&mut open, b"before").await, b"before");
    let proxy = s.tcp[0];
    let server = s.server.take().expect("running");
    let stopping = tokio::spawn(server.shutdown());
    tokio::time::sleep(Duration::from_millis(200)).await;
    // New connections are refused, the open one still works.
    assert!(
        TcpStream::connect(proxy).await.is_err(),
        "still accepting while draining"
    );
    assert_eq!(roundtrip(&mut open, b"during drain").await, b"during drain");
    assert!(
        !stopping.is_finished(),
        "shutdown did not wait for the open connection"
    );
    drop(open);
    within(5, stopping).await.expect("shutdown finished");
}

#[tokio::test]
async fn sigterm_drains_then_exits() {
    use crate::harness::{
        call, eventually_some, free_port, spawn_serve, wait_listening, ChildConfig, KEY,
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (admin_port, proxy_port) = (free_port(), free_port());
    let cfg = ChildConfig::new(admin_port)
        .tcp(proxy_port)
        .write(dir.path());
    let mut child = spawn_serve(&cfg);
    let admin = format!("127.0.0.1:{admin_port}").parse().expect("addr");
    let proxy: std::net::SocketAddr = format!("127.0.0.1:{proxy_port}").parse().expect("addr");
    wait_listening(admin, &mut child);
    let echo = Backend::start("echo", Mode::Echo).await;
    let body = json!({"upstream": {"nodes": nodes(&[(&echo, 1)])}}).to_string();
    let (st, _) = call(
        &reqwest::Client::new(),
        admin,
        Some(KEY),
        reqwest::Method::PUT,
        "/apisix/admin/stream_routes/1",
        Some(&body),
    )
    .await;
    assert!(st.is_success());
    let mut open = connect(proxy).await;
    assert_eq!(roundtrip(&mut open, b"before").await, b"before");
    let pid = child.child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill")
        .success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        TcpStream::connect(proxy).await.is_err(),
        "still accepting after SIGTERM"
    );
    assert_eq!(roundtrip(&mut open, b"draining").await, b"draining");
    assert!(
        child.child.try_wait().expect("wait").is_none(),
        "exited with a connection open"
    );
    drop(open);
    let status = eventually_some(10, "serve exits after the drain", async || {
        child.child.try_wait().expect("wait")
    })
    .await;
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn grace_period_closes_lingering_connections() {
    let mut s = TestServer::start_full(
        tempfile::tempdir().expect("tempdir"),
        |y| format!("{y}nginx_config:\n  worker_shutdown_timeout: 300ms\n"),
        |c| {
            if let Some(sp) = c.apisix.stream_proxy.as_mut() {
                sp.tcp = vec![apisix_stream::config::ListenSpec::new(
                    "127.0.0.1:0".parse().expect("addr"),
                )];
            }
        },
    )
    .await;
    let echo = Backend::start("echo", Mode::Echo).await;
    s.put_route("1", &json!({"upstream": {"nodes": nodes(&[(&echo, 1)])}}))
        .await;
    let mut open = connect(s.tcp[0]).await;
    assert_eq!(roundtrip(&mut open, b"x").await, b"x");
    let started = Instant::now();
    within(5, s.server.take().expect("running").shutdown()).await;
    assert!(started.elapsed() >= Duration::from_millis(250));
    let mut b = [0u8; 4];
    let n = within(5, open.read(&mut b)).await.unwrap_or(0);
    assert_eq!(n, 0, "connection closed after the grace period");
}

#[tokio::test]
async fn ipv6_listener_and_remote_addr() {
    let s = TestServer::with_tcp(&["[::1]:0"]).await;
    let echo = Backend::start("echo", Mode::Echo).await;
    s.put_route(
        "1",
        &json!({"remote_addr": "::1/128", "server_addr": "::1",
        "upstream": {"nodes": nodes(&[(&echo, 1)])}}),
    )
    .await;
    let mut c = connect(s.tcp[0]).await;
    assert_eq!(roundtrip(&mut c, b"over v6").await, b"over v6");
}
