//! PROXY protocol on listeners: v1 and v2 in, the carried address used for
//! matching and stats only from trusted peers, garbage rejected, v1 out.

use std::net::SocketAddr;

use apisix_stream::config::ListenSpec;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::backend::{closed_without_data, roundtrip, Backend, Mode};
use crate::harness::{within, TestServer};

const TRUST_LOOPBACK: &str = "nginx_config:\n  stream:\n    real_ip_from: [127.0.0.1]\n";
const TRUST_OTHERS: &str = "nginx_config:\n  stream:\n    real_ip_from: [10.0.0.0/8]\n";

fn pp_listener(to_upstream: bool) -> ListenSpec {
    let mut spec = ListenSpec::new("127.0.0.1:0".parse().expect("addr"));
    spec.proxy_protocol = true;
    spec.proxy_protocol_to_upstream = to_upstream;
    spec
}

fn v1(src: &str, proxy: SocketAddr) -> Vec<u8> {
    let src: SocketAddr = src.parse().expect("src");
    format!(
        "PROXY TCP4 {} {} {} {}\r\n",
        src.ip(),
        proxy.ip(),
        src.port(),
        proxy.port()
    )
    .into_bytes()
}

fn v2(src: &str, proxy: SocketAddr) -> Vec<u8> {
    let src: SocketAddr = src.parse().expect("src");
    let (SocketAddr::V4(s), SocketAddr::V4(d)) = (src, proxy) else {
        panic!("v4 only here")
    };
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&s.ip().octets());
    h.extend_from_slice(&d.ip().octets());
    h.extend_from_slice(&s.port().to_be_bytes());
    h.extend_from_slice(&d.port().to_be_bytes());
    h
}

async fn send(proxy: SocketAddr, header: &[u8]) -> TcpStream {
    let mut c = within(5, TcpStream::connect(proxy)).await.expect("connect");
    c.write_all(header).await.expect("header");
    c
}

/// Route 1 sends 198.51.100.0/24 to `customers`, route 2 sends 127.0.0.1
/// to `others`.
async fn customers_and_others(s: &TestServer) -> (Backend, Backend) {
    let customers = Backend::start("customers", Mode::Echo).await;
    let others = Backend::start("others", Mode::Echo).await;
    s.put_route(
        "1",
        &json!({"remote_addr": "198.51.100.0/24",
                "upstream": {"nodes": {customers.addr.to_string(): 1}}}),
    )
    .await;
    s.put_route(
        "2",
        &json!({"remote_addr": "127.0.0.1",
                "upstream": {"nodes": {others.addr.to_string(): 1}}}),
    )
    .await;
    (customers, others)
}

#[tokio::test]
async fn carried_address_routes_when_the_peer_is_trusted() {
    let s = TestServer::with_tcp_specs(vec![pp_listener(false)], TRUST_LOOPBACK).await;
    let (customers, others) = customers_and_others(&s).await;
    let proxy = s.tcp[0];

    // v1 and v2 headers both carry 198.51.100.7: route 1.
    for header in [
        v1("198.51.100.7:40000", proxy),
        v2("198.51.100.7:40001", proxy),
    ] {
        let mut c = send(proxy, &header).await;
        assert_eq!(roundtrip(&mut c, b"hello").await, b"hello");
    }
    assert_eq!(customers.accepted(), 2);
    assert_eq!(others.accepted(), 0);

    // The live connection list shows the carried client, not the peer.
    let mut c = send(proxy, &v1("198.51.100.9:41000", proxy)).await;
    assert_eq!(roundtrip(&mut c, b"x").await, b"x");
    // The two earlier clients have hung up; the proxy may see their close a
    // moment later, so the list is read until only the live one remains.
    let control = s.control();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let list: Value = within(
            5,
            reqwest::get(format!("http://{control}/v1/stream/connections")),
        )
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
        let clients: Vec<String> = list["connections"]
            .as_array()
            .expect("list")
            .iter()
            .filter_map(|c| c["client"].as_str().map(str::to_owned))
            .collect();
        assert!(
            clients.iter().any(|c| c == "198.51.100.9:41000"),
            "the carried client is listed: {list}"
        );
        assert!(
            clients.iter().all(|c| c.starts_with("198.51.100.")),
            "only carried addresses are listed: {list}"
        );
        if clients.len() == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "closed clients stay listed: {list}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    drop(c);

    // An address no route accepts: closed, nothing forwarded.
    let mut c = send(proxy, &v1("203.0.113.5:40002", proxy)).await;
    c.write_all(b"data").await.expect("write");
    assert!(closed_without_data(&mut c).await);
    assert_eq!(customers.accepted() + others.accepted(), 3);

    // PROXY UNKNOWN keeps the peer's own address: route 2.
    let mut c = send(proxy, b"PROXY UNKNOWN\r\n").await;
    assert_eq!(roundtrip(&mut c, b"local").await, b"local");
    assert_eq!(others.accepted(), 1);
}

#[tokio::test]
async fn untrusted_peers_keep_their_own_address() {
    let s = TestServer::with_tcp_specs(vec![pp_listener(false)], TRUST_OTHERS).await;
    let (customers, others) = customers_and_others(&s).await;
    let proxy = s.tcp[0];
    let mut c = send(proxy, &v1("198.51.100.7:40000", proxy)).await;
    assert_eq!(roundtrip(&mut c, b"hi").await, b"hi");
    assert_eq!(customers.accepted(), 0, "the claim must not count");
    assert_eq!(others.accepted(), 1);
}

#[tokio::test]
async fn missing_or_garbage_headers_close_the_connection() {
    let s = TestServer::with_tcp_specs(vec![pp_listener(false)], TRUST_LOOPBACK).await;
    let echo = Backend::start("echo", Mode::Echo).await;
    s.put_route(
        "1",
        &json!({"upstream": {"nodes": {echo.addr.to_string(): 1}}}),
    )
    .await;
    let proxy = s.tcp[0];
    for garbage in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"PROXY TCP4 198.51.100.7 127.0.0.1 1\r\n",
        b"PROXY TCP4 ::1 127.0.0.1 1 2\r\n",
        b"\r\n\r\n\0\r\nQUIT\n\x11\x11\x00\x0c000000000000",
        &[b'P'; 200],
    ] {
        let mut c = send(proxy, garbage).await;
        assert!(
            closed_without_data(&mut c).await,
            "{:?}",
            String::from_utf8_lossy(garbage)
        );
    }
    // A client that closes before a whole header is sent.
    let mut c = send(proxy, b"PROXY TCP4 1.2").await;
    c.shutdown().await.expect("shutdown");
    assert!(closed_without_data(&mut c).await);
    assert_eq!(echo.accepted(), 0, "nothing reached the upstream");
    // Good headers still work after all that.
    let mut c = send(proxy, &v1("198.51.100.7:40000", proxy)).await;
    assert_eq!(roundtrip(&mut c, b"ok").await, b"ok");
}

#[tokio::test]
async fn a_header_split_across_segments_is_read_whole() {
    let s = TestServer::with_tcp_specs(vec![pp_listener(false)], TRUST_LOOPBACK).await;
    let echo = Backend::start("echo", Mode::Echo).await;
    s.put_route(
        "1",
        &json!({"remote_addr": "198.51.100.7",
                "upstream": {"nodes": {echo.addr.to_string(): 1}}}),
    )
    .await;
    let proxy = s.tcp[0];
    let header = v1("198.51.100.7:40000", proxy);
    let mut c = send(proxy, &header[..9]).await;
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    c.write_all(&header[9..]).await.expect("rest");
    assert_eq!(roundtrip(&mut c, b"split").await, b"split");
}

/// A node that records the first line it receives, then echoes.
async fn line_recorder() -> (SocketAddr, tokio::sync::mpsc::Receiver<String>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut line = Vec::new();
                let mut b = [0u8; 1];
                while s.read_exact(&mut b).await.is_ok() {
                    line.push(b[0]);
                    if b[0] == b'\n' {
                        break;
                    }
                }
                let _ = tx.send(String::from_utf8_lossy(&line).into_owned()).await;
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn upstreams_receive_a_v1_header_with_the_client_address() {
    let mut plain = ListenSpec::new("127.0.0.1:0".parse().expect("addr"));
    plain.proxy_protocol_to_upstream = true;
    let s = TestServer::with_tcp_specs(vec![plain, pp_listener(true)], TRUST_LOOPBACK).await;
    let (node, mut lines) = line_recorder().await;
    s.put_route("1", &json!({"upstream": {"nodes": {node.to_string(): 1}}}))
        .await;

    // A plain listener: the header names the real peer and the proxy's address.
    let direct = s.tcp[0];
    let mut c = within(5, TcpStream::connect(direct))
        .await
        .expect("connect");
    let me = c.local_addr().expect("local");
    assert_eq!(roundtrip(&mut c, b"payload").await, b"payload");
    let line = within(5, lines.recv()).await.expect("line");
    assert_eq!(
        line,
        format!(
            "PROXY TCP4 127.0.0.1 127.0.0.1 {} {}\r\n",
            me.port(),
            direct.port()
        )
    );

    // Behind a trusted PROXY hop, the carried client is passed on.
    let hop = s.tcp[1];
    let mut c = send(hop, &v2("198.51.100.7:40000", hop)).await;
    assert_eq!(roundtrip(&mut c, b"again").await, b"again");
    let line = within(5, lines.recv()).await.expect("line");
    assert_eq!(
        line,
        format!("PROXY TCP4 198.51.100.7 127.0.0.1 40000 {}\r\n", hop.port())
    );
}
