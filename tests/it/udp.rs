//! UDP proxying end to end: sessions, isolation between clients, large
//! datagrams, idle expiry, filters, and a real DNS server behind the proxy.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

use crate::harness::{eventually, eventually_some, program, within, ChildGuard, TestServer};

/// A UDP backend answering `<name>:<datagram>` to each datagram.
struct UdpBackend {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for UdpBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl UdpBackend {
    async fn start(name: &'static str) -> UdpBackend {
        // A receive buffer as large as the proxy's own (the system's
        // default holds a few hundred small datagrams): a burst of a
        // thousand clients must not be dropped here, before the proxy is
        // even measured.
        let sock = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )
        .expect("socket");
        let _ = sock.set_recv_buffer_size(4 << 20);
        sock.set_nonblocking(true).expect("nonblocking");
        let local: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        sock.bind(&local.into()).expect("bind");
        let sock = UdpSocket::from_std(sock.into()).expect("tokio socket");
        let addr = sock.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 70_000];
            while let Ok((n, from)) = sock.recv_from(&mut buf).await {
                let mut out = format!("{name}:").into_bytes();
                out.extend_from_slice(&buf[..n]);
                let _ = sock.send_to(&out, from).await;
            }
        });
        UdpBackend { addr, task }
    }
}

async fn client(from: &str) -> UdpSocket {
    UdpSocket::bind(format!("{from}:0"))
        .await
        .expect("bind client")
}

async fn ask(sock: &UdpSocket, to: SocketAddr, msg: &[u8]) -> Option<Vec<u8>> {
    sock.send_to(msg, to).await.expect("send");
    let mut buf = vec![0u8; 70_000];
    match tokio::time::timeout(Duration::from_millis(1500), sock.recv_from(&mut buf)).await {
        Ok(Ok((n, from))) => {
            assert_eq!(
                from,
                to,
                "reply to {} must come from the listener's address",
                sock.local_addr().expect("addr")
            );
            Some(buf[..n].to_vec())
        }
        _ => None,
    }
}

fn route(port: u16, backend: &UdpBackend) -> serde_json::Value {
    json!({"server_port": port, "upstream": {"scheme": "udp", "nodes": {backend.addr.to_string(): 1}}})
}

#[tokio::test]
async fn udp_echo_through_a_route_and_large_datagrams() {
    let s = TestServer::with_listeners(&[], &["127.0.0.1:0"]).await;
    let b = UdpBackend::start("b").await;
    let proxy = s.udp[0];
    let c = client("127.0.0.1").await;
    assert_eq!(ask(&c, proxy, b"before any route").await, None);
    s.put_route("1", &route(proxy.port(), &b)).await;
    assert_eq!(
        ask(&c, proxy, b"hello").await.as_deref(),
        Some(&b"b:hello"[..])
    );
    for size in [8 * 1024, 60 * 1024] {
        let big: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let got = ask(&c, proxy, &big).await.expect("large reply");
        assert_eq!(got.len(), size + 2);
        assert_eq!(&got[2..], &big[..], "{size}-byte datagram altered");
    }
}

#[tokio::test]
async fn each_of_1000_clients_gets_only_its_own_replies() {
    let s = TestServer::with_listeners(&[], &["127.0.0.1:0"]).await;
    let b = UdpBackend::start("b").await;
    let proxy = s.udp[0];
    s.put_route("1", &route(proxy.port(), &b)).await;
    // Client sockets stay open to the end so no two clients share an address.
    // They live on their own loopback address: a late datagram from another
    // test to a recycled 127.0.0.1 port can never reach them.
    let mut open = Vec::new();
    for n in [2usize, 1000] {
        let mut tasks = Vec::new();
        for i in 0..n {
            tasks.push(tokio::spawn(async move {
                let c = client("127.0.0.77").await;
                for round in 0..2 {
                    let msg = format!("client-{i}-round-{round}");
                    let mut got = None;
                    for _ in 0..3 {
                        got = ask(&c, proxy, msg.as_bytes()).await;
                        if got.is_some() {
                            break;
                        }
                    }
                    let got = got.expect("reply");
                    assert_eq!(got, format!("b:{msg}").into_bytes());
                }
                c
            }));
        }
        for t in tasks {
            open.push(within(30, t).await.expect("client task"));
        }
    }
    let total: u64 = s
        .server
        .as_ref()
        .expect("running")
        .udp_listeners()
        .iter()
        .map(|(_, c)| c.sessions_total.load(Ordering::Relaxed))
        .sum();
    assert_eq!(total, 1002, "one session per client");
}

#[tokio::test]
async fn idle_sessions_expire_and_are_freed() {
    let s = TestServer::with_listeners(&[], &["127.0.0.1:0"]).await;
    let b = UdpBackend::start("b").await;
    let proxy = s.udp[0];
    s.put_route(
        "1",
        &json!({"server_port": proxy.port(), "upstream": {
        "timeout": {"connect": 1, "send": 0.3, "read": 0.3},
        "nodes": {b.addr.to_string(): 1}}}),
    )
    .await;
    let c = client("127.0.0.1").await;
    assert!(ask(&c, proxy, b"x").await.is_some());
    let counters = s.server.as_ref().expect("running").udp_listeners()[0]
        .1
        .clone();
    assert_eq!(counters.sessions_active.load(Ordering::Relaxed), 1);
    assert!(
        eventually(5, async || counters.sessions_active.load(Ordering::Relaxed)
            == 0)
        .await,
        "the idle session ends"
    );
    // The same client gets a fresh session afterwards.
    assert!(ask(&c, proxy, b"y").await.is_some());
    assert_eq!(counters.sessions_total.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn remote_addr_filter_and_route_changes_apply_to_new_sessions() {
    let s = TestServer::with_listeners(&[], &["127.0.0.1:0"]).await;
    let a = UdpBackend::start("a").await;
    let b = UdpBackend::start("b").await;
    let proxy = s.udp[0];
    s.put_route(
        "1",
        &json!({"remote_addr": "127.0.0.2", "upstream": {"nodes": {a.addr.to_string(): 1}}}),
    )
    .await;
    let outsider = client("127.0.0.1").await;
    assert_eq!(
        ask(&outsider, proxy, b"x").await,
        None,
        "non-matching client dropped"
    );
    let insider = client("127.0.0.2").await;
    assert_eq!(
        ask(&insider, proxy, b"x").await.as_deref(),
        Some(&b"a:x"[..])
    );
    s.put_route(
        "1",
        &json!({"remote_addr": "127.0.0.2", "upstream": {"nodes": {b.addr.to_string(): 1}}}),
    )
    .await;
    assert_eq!(
        ask(&insider, proxy, b"y").await.as_deref(),
        Some(&b"a:y"[..]),
        "session keeps its node"
    );
    let newcomer = client("127.0.0.2").await;
    assert_eq!(
        ask(&newcomer, proxy, b"z").await.as_deref(),
        Some(&b"b:z"[..])
    );
}

#[tokio::test]
async fn an_unreachable_node_does_not_kill_the_listener() {
    let s = TestServer::with_listeners(&[], &["127.0.0.1:0"]).await;
    let dead = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let dead_addr = dead.local_addr().expect("addr");
    drop(dead);
    let b = UdpBackend::start("b").await;
    let proxy = s.udp[0];
    s.put_route(
        "1",
        &json!({"remote_addr": "127.0.0.3", "upstream": {"nodes": {dead_addr.to_string(): 1}}}),
    )
    .await;
    s.put_route(
        "2",
        &json!({"remote_addr": "127.0.0.4", "upstream": {"nodes": {b.addr.to_string(): 1}}}),
    )
    .await;
    let to_dead = client("127.0.0.3").await;
    for _ in 0..5 {
        assert_eq!(ask(&to_dead, proxy, b"anyone?").await, None);
    }
    let alive = client("127.0.0.4").await;
    assert_eq!(
        ask(&alive, proxy, b"hi").await.as_deref(),
        Some(&b"b:hi"[..])
    );
}

/// A DNS query for `name` type A, id 0x1234.
fn dns_query(name: &str) -> Vec<u8> {
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

#[tokio::test]
async fn dns_queries_are_answered_by_a_real_dns_server() {
    let path = program("dnsmasq", "dnsmasq-base");
    // A port below the ephemeral range, so the many client sockets of the
    // other tests cannot take it between our check and dnsmasq's bind.
    let mut started = None;
    for attempt in 0..20u16 {
        let port = 20_000 + (std::process::id() as u16 % 5_000) + attempt * 97;
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        let child = Command::new(&path)
            .args([
                "--no-daemon",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                &format!("--port={port}"),
                "--address=/apisix-stream.test/192.0.2.7",
                "--user=root",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dnsmasq");
        let mut guard = ChildGuard { child };
        tokio::time::sleep(Duration::from_millis(200)).await;
        if guard.child.try_wait().expect("wait").is_none() {
            started = Some((port, guard));
            break;
        }
    }
    let (port, _guard) = started.expect("dnsmasq started on a free port");
    let s = TestServer::with_listeners(&[], &["127.0.0.1:0"]).await;
    let proxy = s.udp[0];
    s.put_route(
        "1",
        &json!({"server_port": proxy.port(), "upstream": {"scheme": "udp",
        "nodes": {format!("127.0.0.1:{port}"): 1}}}),
    )
    .await;
    let c = client("127.0.0.1").await;
    let answer = eventually_some(30, "a DNS answer through the proxy", async || {
        ask(&c, proxy, &dns_query("www.apisix-stream.test")).await
    })
    .await;
    assert_eq!(&answer[..2], &[0x12, 0x34], "same query id");
    assert_eq!(answer[3] & 0x0f, 0, "NOERROR");
    assert!(
        answer.windows(4).any(|w| w == [192, 0, 2, 7]),
        "A record in the answer"
    );
}

#[tokio::test]
async fn ipv6_listeners_carry_udp() {
    let s = TestServer::with_listeners(&[], &["[::1]:0"]).await;
    let b = UdpBackend::start("v6").await;
    let proxy = s.udp[0];
    s.put_route(
        "1",
        &json!({"remote_addr": "::1", "upstream": {"nodes": {b.addr.to_string(): 1}}}),
    )
    .await;
    let c = UdpSocket::bind("[::1]:0").await.expect("bind v6 client");
    assert_eq!(
        ask(&c, proxy, b"six").await.as_deref(),
        Some(&b"v6:six"[..])
    );
}
