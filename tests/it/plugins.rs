//! Stream plugins end to end: ip-restriction, limit-conn, mqtt-proxy,
//! traffic-split, syslog and prometheus through the real server, plus the
//! Admin API's plugin checks.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use apisix_stream::config::ListenSpec;
use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use crate::backend::{closed_without_data, connect_from, read_line, roundtrip, Backend, Mode};
use crate::harness::{eventually, within, TestServer};

/// APISIX's v4 CONNECT test packet (client id `foo`).
const CONNECT_V4: [u8; 17] = [
    0x10, 0x0f, 0x00, 0x04, 0x4d, 0x51, 0x54, 0x54, 0x04, 0x02, 0x00, 0x3c, 0x00, 0x03, 0x66, 0x6f,
    0x6f,
];
/// APISIX's v5 CONNECT test packet (empty client id).
const CONNECT_V5: [u8; 15] = [
    0x10, 0x0d, 0x00, 0x04, 0x4d, 0x51, 0x54, 0x54, 0x05, 0x02, 0x00, 0x3c, 0x00, 0x00, 0x00,
];

/// A v4 CONNECT packet with `client_id`.
fn connect_packet(client_id: &str) -> Vec<u8> {
    let mut body = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3c];
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    let mut p = vec![0x10, body.len() as u8];
    p.extend_from_slice(&body);
    p
}

fn listener() -> ListenSpec {
    ListenSpec::new("127.0.0.1:0".parse().expect("addr"))
}

async fn connect(addr: SocketAddr) -> TcpStream {
    within(5, TcpStream::connect(addr)).await.expect("connect")
}

/// Connect, send `msg`, and return the `Greet` backend's name, then check the
/// backend echoes `msg` intact after its greeting.
async fn greeted_by(addr: SocketAddr, msg: &[u8]) -> String {
    let mut c = connect(addr).await;
    c.write_all(msg).await.expect("write");
    let name = read_line(&mut c).await;
    let mut echoed = vec![0u8; msg.len()];
    within(5, c.read_exact(&mut echoed)).await.expect("echo");
    assert_eq!(echoed, msg, "bytes reach the node intact");
    name
}

/// Poll the metrics until a line equals `want` (sessions are counted as they end).
pub(crate) async fn metrics_until(s: &TestServer, want: &[&str]) -> String {
    let mut text = String::new();
    let shown = eventually(5, async || {
        text = s.metrics_text().await;
        want.iter().all(|w| text.lines().any(|l| l == *w))
    })
    .await;
    assert!(shown, "metrics never showed {want:?}:\n{text}");
    text
}

async fn put(s: &TestServer, path: &str, body: &Value) {
    let (st, v) = s.call(Method::PUT, path, Some(&body.to_string())).await;
    assert!(st.is_success(), "PUT {path}: {st} {v}");
}

#[tokio::test]
async fn ip_restriction_whitelist_blacklist_and_cidr() {
    let s = TestServer::with_tcp(&["127.0.0.1:0"]).await;
    let echo = Backend::start("echo", Mode::Echo).await;
    let up = json!({"nodes": {echo.addr.to_string(): 1}});
    s.put_route(
        "1",
        &json!({"plugins": {"ip-restriction": {"blacklist": ["127.0.0.2"]}}, "upstream": up}),
    )
    .await;
    let mut ok = connect_from("127.0.0.1", s.tcp[0]).await;
    assert_eq!(roundtrip(&mut ok, b"hi").await, b"hi");
    let mut denied = connect_from("127.0.0.2", s.tcp[0]).await;
    assert!(closed_without_data(&mut denied).await);
    assert_eq!(echo.accepted(), 1, "a denied client never reaches the node");

    s.put_route(
        "1",
        &json!({"plugins": {"ip-restriction": {"whitelist": ["127.0.0.0/30", "::1"]}}, "upstream": up}),
    )
    .await;
    let mut ok = connect_from("127.0.0.3", s.tcp[0]).await;
    assert_eq!(roundtrip(&mut ok, b"in").await, b"in");
    let mut denied = connect_from("127.0.0.5", s.tcp[0]).await;
    assert!(closed_without_data(&mut denied).await);
    assert_eq!(echo.accepted(), 2);
}

#[tokio::test]
async fn ip_restriction_on_udp() {
    let s = TestServer::with_listeners(&[], &["127.0.0.1:0"]).await;
    let backend = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let backend_addr = backend.local_addr().expect("addr");
    let echo = tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = backend.recv_from(&mut buf).await {
            let _ = backend.send_to(&buf[..n], from).await;
        }
    });
    s.put_route(
        "u",
        &json!({"plugins": {"ip-restriction": {"whitelist": ["127.0.0.2"]}},
                "upstream": {"nodes": {backend_addr.to_string(): 1}}}),
    )
    .await;
    let allowed = UdpSocket::bind("127.0.0.2:0").await.expect("bind");
    allowed.send_to(b"ping", s.udp[0]).await.expect("send");
    let mut b = [0u8; 16];
    let (n, _) = within(5, allowed.recv_from(&mut b)).await.expect("reply");
    assert_eq!(&b[..n], b"ping");

    let denied = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    for _ in 0..3 {
        denied.send_to(b"ping", s.udp[0]).await.expect("send");
    }
    let got = tokio::time::timeout(Duration::from_millis(300), denied.recv_from(&mut b)).await;
    assert!(got.is_err(), "a refused client gets no reply");
    let counters = s
        .server
        .as_ref()
        .map(|x| x.udp_listeners()[0].1.clone())
        .expect("udp listener");
    let dropped = || counters.dropped.load(std::sync::atomic::Ordering::Relaxed);
    eventually(5, async || dropped() >= 3).await;
    assert_eq!(
        dropped(),
        3,
        "each datagram of a refused client is dropped and counted"
    );
    echo.abort();
}

#[tokio::test]
async fn limit_conn_conn_2_burst_1_serves_three() {
    let s = TestServer::with_tcp(&["127.0.0.1:0"]).await;
    let echo = Backend::start("echo", Mode::Echo).await;
    s.put_route(
        "1",
        &json!({"plugins": {"limit-conn": {"conn": 2, "burst": 1, "default_conn_delay": 1,
                                            "key": "remote_addr"}},
                "upstream": {"nodes": {echo.addr.to_string(): 1}}}),
    )
    .await;
    let start = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(connect(s.tcp[0]).await);
    }
    // Every session stays open until all five are decided.
    let outcomes = within(10, async {
        let mut tasks = Vec::new();
        for mut c in clients {
            tasks.push(tokio::spawn(async move {
                let _ = c.write_all(b"x").await;
                let mut b = [0u8; 1];
                let served = matches!(c.read(&mut b).await, Ok(1));
                (served, start.elapsed(), c)
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.expect("task"));
        }
        out
    })
    .await;
    let served: Vec<Duration> = outcomes
        .iter()
        .filter(|(ok, _, _)| *ok)
        .map(|(_, t, _)| *t)
        .collect();
    assert_eq!(served.len(), 3, "3 served, 2 closed: {outcomes:?}");
    let delayed = served
        .iter()
        .filter(|t| **t >= Duration::from_millis(950))
        .count();
    assert_eq!(delayed, 1, "one waited default_conn_delay: {served:?}");
    assert_eq!(echo.accepted(), 3);
    let carry = s.server.as_ref().map(|x| x.carry()).expect("carry");
    assert_eq!(carry.plugins.limit_conn.in_use(), 3);
    drop(outcomes);
    eventually(5, async || carry.plugins.limit_conn.in_use() == 0).await;
    assert_eq!(
        carry.plugins.limit_conn.in_use(),
        0,
        "counts end with the sessions"
    );
    // Fresh capacity afterwards.
    let mut c = connect(s.tcp[0]).await;
    assert_eq!(roundtrip(&mut c, b"again").await, b"again");
}

#[tokio::test]
async fn mqtt_proxy_routes_by_client_id_with_chash() {
    let s = TestServer::with_tcp(&["127.0.0.1:0"]).await;
    let a = Backend::start("A", Mode::Greet).await;
    let b = Backend::start("B", Mode::Greet).await;
    s.put_route(
        "1",
        &json!({"plugins": {"mqtt-proxy": {"protocol_name": "MQTT", "protocol_level": 4}},
                "upstream": {"type": "chash", "key": "mqtt_client_id",
                             "nodes": {a.addr.to_string(): 1, b.addr.to_string(): 1}}}),
    )
    .await;
    // The CONNECT bytes (and what follows them) reach the node intact.
    let mut first = CONNECT_V4.to_vec();
    first.extend_from_slice(b"after");
    let foo = greeted_by(s.tcp[0], &first).await;
    for _ in 0..3 {
        assert_eq!(
            greeted_by(s.tcp[0], &CONNECT_V4).await,
            foo,
            "stable per id"
        );
    }
    let mut seen: HashMap<String, String> = HashMap::new();
    for i in 0..20 {
        let id = format!("client-{i}");
        let node = greeted_by(s.tcp[0], &connect_packet(&id)).await;
        assert_eq!(greeted_by(s.tcp[0], &connect_packet(&id)).await, node);
        seen.insert(id, node);
    }
    let used: std::collections::HashSet<&String> = seen.values().collect();
    assert_eq!(
        used.len(),
        2,
        "different ids spread over both nodes: {seen:?}"
    );

    // A v5 packet to a level-4 route, or something else entirely: closed.
    let before = a.accepted() + b.accepted();
    for bad in [&CONNECT_V5[..], b"mmm"] {
        let mut c = connect(s.tcp[0]).await;
        c.write_all(bad).await.expect("write");
        assert!(closed_without_data(&mut c).await);
    }
    assert_eq!(a.accepted() + b.accepted(), before, "no node contacted");

    // Level 5 with an empty id falls back to the client address.
    s.put_route(
        "1",
        &json!({"plugins": {"mqtt-proxy": {"protocol_level": 5}},
                "upstream": {"type": "chash", "key": "mqtt_client_id",
                             "nodes": {a.addr.to_string(): 1, b.addr.to_string(): 1}}}),
    )
    .await;
    let name = greeted_by(s.tcp[0], &CONNECT_V5).await;
    assert!(name == "A" || name == "B");
}

#[tokio::test]
async fn mqtt_proxy_over_tls() {
    let mut tls = listener();
    tls.tls = true;
    let s = TestServer::with_tcp_specs(vec![tls], "").await;
    let cert = rcgen::generate_simple_self_signed(vec!["mqtt.test".to_string()]).expect("cert");
    put(
        &s,
        "/apisix/admin/ssls/1",
        &json!({"cert": cert.cert.pem(), "key": cert.key_pair.serialize_pem(), "snis": ["mqtt.test"]}),
    )
    .await;
    let greet = Backend::start("tls-node", Mode::Greet).await;
    s.put_route(
        "1",
        &json!({"plugins": {"mqtt-proxy": {"protocol_level": 4}},
                "upstream": {"type": "chash", "key": "mqtt_client_id",
                             "nodes": {greet.addr.to_string(): 1}}}),
    )
    .await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).expect("root");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = connect(s.tcp[0]).await;
    let name = rustls::pki_types::ServerName::try_from("mqtt.test").expect("name");
    let mut c = within(
        5,
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .expect("handshake");
    c.write_all(&CONNECT_V4).await.expect("write");
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.last() != Some(&b'\n') {
        within(5, c.read_exact(&mut byte)).await.expect("greeting");
        line.push(byte[0]);
    }
    assert_eq!(line, b"tls-node\n");
    let mut echoed = [0u8; 17];
    within(5, c.read_exact(&mut echoed)).await.expect("echo");
    assert_eq!(echoed, CONNECT_V4);
}

#[tokio::test]
async fn traffic_split_weights_and_vars() {
    let s = TestServer::with_tcp(&["127.0.0.1:0"]).await;
    let a = Backend::start("A", Mode::Greet).await;
    let b = Backend::start("B", Mode::Greet).await;
    put(
        &s,
        "/apisix/admin/upstreams/2",
        &json!({"nodes": {b.addr.to_string(): 1}}),
    )
    .await;
    let own = json!({"nodes": {a.addr.to_string(): 1}});
    let count = |names: Vec<String>| {
        let mut m: HashMap<String, usize> = HashMap::new();
        for n in names {
            *m.entry(n).or_default() += 1;
        }
        m
    };
    async fn ten(addr: SocketAddr) -> Vec<String> {
        let mut out = Vec::new();
        for _ in 0..10 {
            out.push(greeted_by(addr, b"x").await);
        }
        out
    }
    // 1 to upstream 2, 9 to the route's own upstream.
    s.put_route(
        "1",
        &json!({"plugins": {"traffic-split": {"rules": [{"weighted_upstreams": [
                    {"upstream_id": "2", "weight": 1}, {"weight": 9}]}]}},
                "upstream": own}),
    )
    .await;
    let m = count(ten(s.tcp[0]).await);
    assert_eq!((m.get("A"), m.get("B")), (Some(&9), Some(&1)), "{m:?}");

    // 9 to an inline upstream, 1 to the route's own.
    s.put_route(
        "1",
        &json!({"plugins": {"traffic-split": {"rules": [{"weighted_upstreams": [
                    {"upstream": {"type": "roundrobin", "nodes": {b.addr.to_string(): 1}}, "weight": 9},
                    {"weight": 1}]}]}},
                "upstream": own}),
    )
    .await;
    let m = count(ten(s.tcp[0]).await);
    assert_eq!((m.get("A"), m.get("B")), (Some(&1), Some(&9)), "{m:?}");

    // A matching rule sends everything to upstream 2; a non-matching one nothing.
    let port = s.tcp[0].port();
    for (vars, want) in [
        (
            json!([["route_id", "==", "1"], ["server_port", "==", port]]),
            "B",
        ),
        (json!([["route_id", "==", "3"]]), "A"),
        (json!([["remote_addr", "ipmatch", "10.0.0.0/8"]]), "A"),
    ] {
        s.put_route(
            "1",
            &json!({"plugins": {"traffic-split": {"rules": [{"match": [{"vars": vars}],
                        "weighted_upstreams": [{"upstream_id": "2"}]}]}},
                    "upstream": own}),
        )
        .await;
        for _ in 0..3 {
            assert_eq!(greeted_by(s.tcp[0], b"y").await, want, "vars {vars}");
        }
    }
}

/// The RFC 5424 shape and the JSON of one syslog line.
pub(crate) fn parse_syslog(line: &str) -> Value {
    let re = regex::Regex::new(
        r"^<46>1 \d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z - apisix (\d+) - - (\{.*\})$",
    )
    .expect("regex");
    let caps = re
        .captures(line)
        .unwrap_or_else(|| panic!("not RFC 5424: {line:?}"));
    assert_eq!(caps[1].parse::<u32>().ok(), Some(std::process::id()));
    serde_json::from_str(&caps[2]).expect("json")
}

#[tokio::test]
async fn syslog_lines_over_udp_and_tcp() {
    let s = TestServer::with_tcp(&["127.0.0.1:0"]).await;
    let echo = Backend::start("echo", Mode::Echo).await;
    let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let up = json!({"nodes": {echo.addr.to_string(): 1}});
    let format = json!({"client_ip": "$remote_addr", "vip": "$server_addr", "kind": "stream",
                        "sent": "$bytes_sent"});
    s.put_route(
        "1",
        &json!({"plugins": {"syslog": {"host": "127.0.0.1", "port": udp.local_addr().expect("a").port(),
                                        "sock_type": "udp", "batch_max_size": 1, "log_format": format}},
                "upstream": up}),
    )
    .await;
    let mut c = connect(s.tcp[0]).await;
    assert_eq!(roundtrip(&mut c, b"hello").await, b"hello");
    drop(c);
    let mut buf = vec![0u8; 65_536];
    let n = within(5, udp.recv(&mut buf)).await.expect("datagram");
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(text.ends_with('\n'), "{text:?}");
    let entry = parse_syslog(text.trim_end_matches('\n'));
    assert_eq!(
        entry,
        json!({"client_ip": "127.0.0.1", "vip": "127.0.0.1", "kind": "stream", "sent": "5",
               "route_id": "1"})
    );

    // TCP: two sessions fill a batch of two, sent together.
    s.put_route(
        "1",
        &json!({"plugins": {"syslog": {"host": "127.0.0.1", "port": tcp.local_addr().expect("a").port(),
                                        "batch_max_size": 2, "log_format": {"ip": "$remote_addr"}}},
                "upstream": up}),
    )
    .await;
    for _ in 0..2 {
        let mut c = connect(s.tcp[0]).await;
        assert_eq!(roundtrip(&mut c, b"x").await, b"x");
    }
    let (mut conn, _) = within(5, tcp.accept()).await.expect("syslog connection");
    let mut got = String::new();
    within(5, async {
        while got.matches('\n').count() < 2 {
            let n = conn.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed early: {got:?}");
            got.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    })
    .await;
    for line in got.lines() {
        assert_eq!(
            parse_syslog(line),
            json!({"ip": "127.0.0.1", "route_id": "1"})
        );
    }
}

#[tokio::test]
async fn prometheus_metrics_per_spec() {
    let extra = "stream_plugins:\n  - mqtt-proxy\n  - prometheus\n";
    let s = TestServer::with_tcp_specs(vec![listener(), listener()], extra).await;
    let echo = Backend::start("echo", Mode::Echo).await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    s.put_route(
        "1",
        &json!({"name": "mqtt", "server_port": s.tcp[0].port(),
                "plugins": {"mqtt-proxy": {"protocol_level": 4}, "prometheus": {"prefer_name": true}},
                "upstream": {"nodes": {echo.addr.to_string(): 1}}}),
    )
    .await;
    s.put_route(
        "2",
        &json!({"server_port": s.tcp[1].port(), "plugins": {"prometheus": {}},
                "upstream": {"nodes": {closed.to_string(): 1}}}),
    )
    .await;
    // Served, then rejected by mqtt-proxy: both counted.
    let mut c = connect(s.tcp[0]).await;
    assert_eq!(roundtrip(&mut c, &CONNECT_V4).await, CONNECT_V4);
    drop(c);
    let mut c = connect(s.tcp[0]).await;
    c.write_all(b"mmm").await.expect("write");
    assert!(closed_without_data(&mut c).await);
    // An unreachable node: 502 with the node set.
    let mut c = connect(s.tcp[1]).await;
    assert!(closed_without_data(&mut c).await);
    let l0 = s.tcp[0].to_string();
    let l1 = s.tcp[1].to_string();
    let text = metrics_until(
        &s,
        &[
            "apisix_stream_connection_total{route=\"mqtt\"} 2",
            "apisix_stream_connection_total{route=\"2\"} 1",
            &format!(
                "apisix_stream_status{{code=\"200\",listen_addr=\"{l0}\",node=\"{}\"}} 1",
                echo.addr
            ),
            &format!("apisix_stream_status{{code=\"503\",listen_addr=\"{l0}\",node=\"\"}} 1"),
            &format!(
                "apisix_stream_status{{code=\"502\",listen_addr=\"{l1}\",node=\"{closed}\"}} 1"
            ),
        ],
    )
    .await;
    assert!(text.contains("apisix_node_info{"), "{text}");
    assert!(
        !text.contains("apisix_stream_connection_total{route=\"1\"}"),
        "labelled by name with prefer_name: {text}"
    );
}

#[tokio::test]
async fn admin_checks_plugin_names_and_confs() {
    let s = TestServer::start().await;
    let up = json!({"nodes": {"127.0.0.1:1995": 1}});
    for (plugins, msg) in [
        (json!({"mqttt-proxy": {}}), "unknown plugin [mqttt-proxy]"),
        (json!({"prometheus": {}}), "unknown plugin [prometheus]"),
        (
            json!({"ip-restriction": {}}),
            "failed to check the configuration of stream plugin [ip-restriction]: value should match only one schema, but matches none",
        ),
        (
            json!({"ip-restriction": {"whitelist": ["1.2.3.4/99"]}}),
            "failed to check the configuration of stream plugin [ip-restriction]: invalid ip address: 1.2.3.4/99",
        ),
        (
            json!({"mqtt-proxy": {"protocol_name": "MQTT"}}),
            "failed to check the configuration of stream plugin [mqtt-proxy]: property \"protocol_level\" is required",
        ),
        (
            json!({"traffic-split": {"rules": [{"match": [{"vars": [["route_id", "<>", "1"]]}]}]}}),
            "failed to check the configuration of stream plugin [traffic-split]: failed to validate the 'vars' expression: invalid operator '<>'",
        ),
    ] {
        let (st, v) = s
            .call(
                Method::PUT,
                "/apisix/admin/stream_routes/1",
                Some(&json!({"plugins": plugins, "upstream": up}).to_string()),
            )
            .await;
        assert_eq!(st, 400, "{plugins}: {v}");
        assert_eq!(v, json!({"error_msg": msg}), "{plugins}");
    }
    // A disabled plugin's conf errors are tolerated.
    s.put_route(
        "1",
        &json!({"plugins": {"ip-restriction": {"_meta": {"disable": true}}}, "upstream": up}),
    )
    .await;
}
