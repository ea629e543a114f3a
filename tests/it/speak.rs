//! Health checks that speak: `tcp` probes with `send`/`receive` that judge
//! the reply, and `udp` probes for UDP nodes.

use std::net::SocketAddr;

use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

use crate::harness::{eventually_some, within, TestServer};

/// A line server answering every line it reads with `reply`.
struct LineServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl LineServer {
    async fn start(reply: &'static str) -> LineServer {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (r, mut w) = s.into_split();
                    let mut lines = BufReader::new(r).lines();
                    while let Ok(Some(_)) = lines.next_line().await {
                        if w.write_all(reply.as_bytes()).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        LineServer { addr, task }
    }
}

impl Drop for LineServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A UDP node answering `ping` with `pong`.
fn udp_pong(sock: UdpSocket) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            if &buf[..n] == b"ping" {
                let _ = sock.send_to(b"pong", from).await;
            }
        }
    })
}

fn node(report: &Value, addr: SocketAddr) -> Value {
    report["nodes"]
        .as_array()
        .and_then(|n| n.iter().find(|n| n["port"] == addr.port()))
        .cloned()
        .unwrap_or(Value::Null)
}

async fn status_becomes(s: &TestServer, addr: SocketAddr, status: &str) -> Value {
    let path = "/v1/healthcheck/stream_routes/1";
    eventually_some(15, &format!("{addr} {status}"), async || {
        let report = s.control_get(path).await;
        (node(&report, addr)["status"] == status).then_some(report)
    })
    .await
}

/// Send `PING` through the proxy and read the reply line.
async fn ping(proxy: SocketAddr) -> String {
    let c = within(5, TcpStream::connect(proxy)).await.expect("connect");
    let (r, mut w) = c.into_split();
    w.write_all(b"PING\r\n").await.expect("write");
    let mut line = String::new();
    let _ = within(5, BufReader::new(r).read_line(&mut line)).await;
    line.trim_end().to_string()
}

#[tokio::test]
async fn a_node_answering_garbage_is_taken_out() {
    let s = TestServer::with_tcp(&["127.0.0.1:0"]).await;
    let good = LineServer::start("+PONG\r\n").await;
    let bad = LineServer::start("-ERR unknown\r\n").await;
    s.put_route(
        "1",
        &json!({"upstream": {"nodes": {good.addr.to_string(): 1, bad.addr.to_string(): 1},
            "checks": {"active": {"type": "tcp", "timeout": 1, "send": "PING\r\n", "receive": "+PONG",
                "healthy": {"interval": 1, "successes": 1},
                "unhealthy": {"interval": 1, "tcp_failures": 1}}}}}),
    )
    .await;
    let report = status_becomes(&s, bad.addr, "unhealthy").await;
    assert_eq!(node(&report, good.addr)["status"], "healthy", "{report}");
    assert_eq!(
        node(&report, bad.addr)["counter"]["tcp_failure"],
        1,
        "{report}"
    );
    for _ in 0..6 {
        assert_eq!(ping(s.tcp[0]).await, "+PONG", "only the good node serves");
    }
    // The same check with the reply given as hex.
    s.put_route(
        "1",
        &json!({"upstream": {"nodes": {good.addr.to_string(): 1, bad.addr.to_string(): 1},
            "checks": {"active": {"type": "tcp", "timeout": 1, "send_hex": "50494e470d0a",
                "receive_hex": "2b504f4e47",
                "healthy": {"interval": 1, "successes": 1},
                "unhealthy": {"interval": 1, "tcp_failures": 1}}}}}),
    )
    .await;
    let report = status_becomes(&s, bad.addr, "unhealthy").await;
    assert_eq!(node(&report, good.addr)["status"], "healthy", "{report}");
}

#[tokio::test]
async fn a_dead_udp_node_is_taken_out_and_comes_back() {
    let s = TestServer::with_listeners(&[], &["127.0.0.1:0"]).await;
    let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let addr = sock.local_addr().expect("addr");
    let mut task = udp_pong(sock);
    let checks = json!({"active": {"type": "udp", "timeout": 0.5, "send": "ping", "receive": "pong",
        "healthy": {"interval": 1, "successes": 1},
        "unhealthy": {"interval": 1, "tcp_failures": 1, "timeouts": 1}}});
    s.put_route(
        "1",
        &json!({"server_port": s.udp[0].port(), "upstream": {"nodes": {addr.to_string(): 1}, "checks": checks}}),
    )
    .await;
    status_becomes(&s, addr, "healthy").await;
    task.abort();
    let _ = task.await;
    let report = status_becomes(&s, addr, "unhealthy").await;
    let c = &node(&report, addr)["counter"];
    assert!(
        c["tcp_failure"].as_u64().unwrap_or(0) + c["timeout_failure"].as_u64().unwrap_or(0) >= 1,
        "{report}"
    );
    let sock = eventually_some(15, "rebind the UDP node", async || {
        UdpSocket::bind(addr).await.ok()
    })
    .await;
    task = udp_pong(sock);
    status_becomes(&s, addr, "healthy").await;
    task.abort();
}

#[tokio::test]
async fn udp_checks_need_a_request_and_a_reply() {
    let s = TestServer::start().await;
    let bodies = [
        json!({"nodes": {"127.0.0.1:53": 1}, "checks": {"active": {"type": "udp"}}}),
        json!({"nodes": {"127.0.0.1:53": 1}, "checks": {"active": {"type": "udp", "send": "x"}}}),
        json!({"nodes": {"127.0.0.1:53": 1}, "checks": {"active": {"type": "tcp", "send_hex": "zz"}}}),
        json!({"nodes": {"127.0.0.1:53": 1}, "checks": {"active": {"type": "tcp", "send": "a", "send_hex": "61"}}}),
    ];
    for body in bodies {
        let (st, v) = s
            .call(
                Method::PUT,
                "/apisix/admin/upstreams/1",
                Some(&body.to_string()),
            )
            .await;
        assert_eq!(st.as_u16(), 400, "{body}: {v}");
    }
    let ok = json!({"nodes": {"127.0.0.1:53": 1},
        "checks": {"active": {"type": "udp", "send_hex": "00", "receive": "x"}}});
    let (st, v) = s
        .call(
            Method::PUT,
            "/apisix/admin/upstreams/1",
            Some(&ok.to_string()),
        )
        .await;
    assert!(st.is_success(), "{v}");
}

#[tokio::test]
async fn udp_sessions_that_never_get_a_reply_take_their_node_out_passively() {
    let s = TestServer::with_listeners(&[], &["127.0.0.1:0"]).await;
    // A node that takes datagrams and never answers, next to one that does.
    let silent = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let silent_addr = silent.local_addr().expect("addr");
    let good = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let good_addr = good.local_addr().expect("addr");
    let task = udp_pong(good);
    // Active probes far apart with thresholds out of reach: only the
    // passive report can change the silent node's status.
    let checks = json!({
        "active": {"type": "udp", "timeout": 0.5, "send": "ping", "receive": "pong",
            "healthy": {"interval": 3600, "successes": 254},
            "unhealthy": {"interval": 3600, "tcp_failures": 254, "timeouts": 254}},
        "passive": {"type": "tcp", "unhealthy": {"timeouts": 1}}});
    s.put_route(
        "1",
        &json!({"server_port": s.udp[0].port(), "upstream": {
            "type": "chash", "key": "remote_port",
            "nodes": {silent_addr.to_string(): 1, good_addr.to_string(): 1},
            "timeout": {"connect": 1, "send": 1, "read": 1},
            "checks": checks}}),
    )
    .await;
    status_becomes(&s, silent_addr, "healthy").await;
    // Clients from different ports until one session lands on the silent
    // node (it gets the datagram and sends nothing back).
    let mut unanswered = Vec::new();
    for _ in 0..40 {
        let c = UdpSocket::bind("127.0.0.1:0").await.expect("client");
        c.send_to(b"ping", s.udp[0]).await.expect("send");
        let mut buf = [0u8; 16];
        match tokio::time::timeout(std::time::Duration::from_millis(300), c.recv_from(&mut buf))
            .await
        {
            Ok(Ok((n, _))) => assert_eq!(&buf[..n], b"pong"),
            _ => unanswered.push(c),
        }
        if !unanswered.is_empty() {
            break;
        }
    }
    assert!(!unanswered.is_empty(), "no session went to the silent node");
    let mut got = [0u8; 16];
    let (n, _) = within(1, silent.recv_from(&mut got)).await.expect("recv");
    assert_eq!(&got[..n], b"ping", "the silent node got the datagram");
    // The session ends idle (timeout 1 s) without a reply: a passive
    // timeout, and with its threshold of 1 the node is out (the active
    // probes' timeouts, 254 needed, cannot do that).
    let report = status_becomes(&s, silent_addr, "unhealthy").await;
    assert!(
        node(&report, silent_addr)["counter"]["timeout_failure"]
            .as_u64()
            .unwrap_or(0)
            >= 1,
        "{report}"
    );
    assert_eq!(node(&report, good_addr)["status"], "healthy", "{report}");
    // Every new session now goes to the node that answers.
    for _ in 0..5 {
        let c = UdpSocket::bind("127.0.0.1:0").await.expect("client");
        c.send_to(b"ping", s.udp[0]).await.expect("send");
        let mut buf = [0u8; 16];
        let (n, _) = within(2, c.recv_from(&mut buf)).await.expect("answered");
        assert_eq!(&buf[..n], b"pong");
    }
    task.abort();
}
