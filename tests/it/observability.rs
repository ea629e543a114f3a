//! Live stats, the Control API, Prometheus metrics and the access log,
//! checked against traffic of known size.

use apisix_stream::config::ListenSpec;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::backend::{roundtrip, Backend, Mode};
use crate::harness::{eventually, within, TestServer};

async fn get_json(url: &str) -> Value {
    let res = within(5, reqwest::get(url)).await.expect("GET");
    assert!(res.status().is_success(), "{url}: {}", res.status());
    within(5, res.json()).await.expect("json")
}

/// Poll `/v1/stream/stats` until `ok` holds (counters settle as sessions end).
async fn stats_until(s: &TestServer, ok: impl Fn(&Value) -> bool) -> Value {
    let url = format!("http://{}/v1/stream/stats", s.control());
    let mut last = Value::Null;
    let settled = eventually(5, async || {
        last = get_json(&url).await;
        ok(&last)
    })
    .await;
    assert!(settled, "stats never settled: {last}");
    last
}

fn route<'a>(stats: &'a Value, id: &str) -> &'a Value {
    stats["routes"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["id"] == id))
        .unwrap_or(&Value::Null)
}

#[tokio::test]
async fn stats_count_exact_bytes_and_sessions() {
    let s = TestServer::with_tcp(&["127.0.0.1:0"]).await;
    let echo = Backend::start("echo", Mode::Echo).await;
    s.put_route(
        "1",
        &json!({"server_port": s.tcp[0].port(),
        "upstream": {"nodes": {echo.addr.to_string(): 1}}}),
    )
    .await;
    for _ in 0..3 {
        let mut c = within(5, TcpStream::connect(s.tcp[0]))
            .await
            .expect("connect");
        let msg = vec![b'x'; 1000];
        assert_eq!(roundtrip(&mut c, &msg).await, msg);
        c.shutdown().await.expect("shutdown");
        let mut rest = Vec::new();
        within(5, c.read_to_end(&mut rest)).await.expect("eof");
    }
    let stats = stats_until(&s, |v| {
        let r = route(v, "1");
        r["total"] == 3 && r["active"] == 0 && r["bytes_out"] == 3000
    })
    .await;
    let r = route(&stats, "1");
    assert_eq!(r["bytes_in"], 3000, "{stats}");
    assert_eq!(r["connect_failures"], 0);
    assert_eq!(stats["total"], 3);
    assert_eq!(stats["active"], 0);
    assert!(stats["uptime_s"].is_u64());
    let node = &stats["nodes"][0];
    assert_eq!(node["route_id"], "1");
    assert_eq!(node["node"], echo.addr.to_string());
    assert_eq!(
        (
            node["total"].as_u64(),
            node["bytes_in"].as_u64(),
            node["bytes_out"].as_u64()
        ),
        (Some(3), Some(3000), Some(3000))
    );
    assert_eq!(node["healthy"], Value::Null, "no checker");
    assert_eq!(stats["listeners"][0]["bytes_in"], 3000);
}

#[tokio::test]
async fn live_connections_are_listed_counted_while_open_and_closable() {
    let s = TestServer::with_tcp(&["127.0.0.1:0"]).await;
    let echo = Backend::start("echo", Mode::Echo).await;
    s.put_route(
        "1",
        &json!({"upstream": {"nodes": {echo.addr.to_string(): 1}}}),
    )
    .await;
    let mut c = within(5, TcpStream::connect(s.tcp[0]))
        .await
        .expect("connect");
    assert_eq!(roundtrip(&mut c, b"12345").await, b"12345");
    // Counters move while the connection is open, not only at its close.
    let stats = stats_until(&s, |v| {
        route(v, "1")["active"] == 1 && route(v, "1")["bytes_in"] == 5
    })
    .await;
    assert_eq!(route(&stats, "1")["bytes_in"], 5);
    assert_eq!(stats["nodes"][0]["active"], 1);
    // The reply can reach the client a moment before the proxy counts it.
    let url = format!("http://{}/v1/stream/connections", s.control());
    let mut list = Value::Null;
    eventually(5, async || {
        list = get_json(&url).await;
        list["connections"][0]["bytes_out"] == 5
    })
    .await;
    let conns = list["connections"].as_array().expect("list");
    assert_eq!(conns.len(), 1, "{list}");
    let conn = &conns[0];
    assert_eq!(conn["route_id"], "1");
    assert_eq!(conn["protocol"], "tcp");
    assert_eq!(conn["node"], echo.addr.to_string());
    assert_eq!(conn["client"], c.local_addr().expect("addr").to_string());
    assert_eq!(
        (conn["bytes_in"].as_u64(), conn["bytes_out"].as_u64()),
        (Some(5), Some(5))
    );
    let id = conn["id"].as_u64().expect("id");
    let client = reqwest::Client::new();
    let url = format!("http://{}/v1/stream/connections/{id}", s.control());
    let res = within(5, client.delete(&url).send()).await.expect("delete");
    assert_eq!(res.status(), 200);
    let mut b = [0u8; 4];
    let n = within(5, c.read(&mut b)).await.unwrap_or(0);
    assert_eq!(n, 0, "closed by the operator");
    let res = within(5, client.delete(&url).send())
        .await
        .expect("delete again");
    assert_eq!(res.status(), 404);
    stats_until(&s, |v| route(v, "1")["active"] == 0).await;
}

#[tokio::test]
async fn control_api_basics() {
    let s = TestServer::start().await;
    let base = format!("http://{}", s.control());
    assert_eq!(get_json(&format!("{base}/v1/healthcheck")).await, json!({}));
    let res = within(5, reqwest::get(format!("{base}/v1/nope")))
        .await
        .expect("get");
    assert_eq!(res.status(), 404);
    let res = within(5, reqwest::get(format!("{base}/v1/healthcheck/bogus/1")))
        .await
        .expect("get");
    assert_eq!(res.status(), 400);
}

#[tokio::test]
async fn prometheus_agrees_with_the_control_api() {
    let s = TestServer::with_tcp(&["127.0.0.1:0"]).await;
    let echo = Backend::start("echo", Mode::Echo).await;
    s.put_route(
        "1",
        &json!({"upstream": {"nodes": {echo.addr.to_string(): 1}}}),
    )
    .await;
    let mut held = within(5, TcpStream::connect(s.tcp[0]))
        .await
        .expect("connect");
    assert_eq!(roundtrip(&mut held, b"abcdefgh").await, b"abcdefgh");
    stats_until(&s, |v| route(v, "1")["bytes_out"] == 8).await;
    let metrics_addr = s
        .server
        .as_ref()
        .and_then(|x| x.metrics_addr())
        .expect("metrics");
    let text = s.metrics_text().await;
    let listen = format!("listen_addr=\"{}\"", s.tcp[0]);
    let has = |needle: &str| text.lines().any(|l| l.contains(needle));
    // Counted only for routes with the prometheus plugin (tests/it/plugins.rs).
    assert!(
        !has("apisix_stream_connection_total{route=\"1\"}"),
        "{text}"
    );
    assert!(
        has("apisix_stream_route_active_connections{route=\"1\"} 1"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("apisix_stream_active_connections")
                && l.contains(&listen)
                && l.ends_with(" 1")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("apisix_stream_bandwidth")
                && l.contains(&listen)
                && l.contains("type=\"ingress\"")
                && l.contains("side=\"downstream\"")
                && l.ends_with(" 8")),
        "{text}"
    );
    assert!(has("apisix_node_info{"), "{text}");
    let res = within(5, reqwest::get(format!("http://{metrics_addr}/other")))
        .await
        .expect("get");
    assert_eq!(res.status(), 404);
}

#[tokio::test]
async fn access_log_has_one_line_per_session() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("logs/access_stream.log");
    let extra = crate::harness::detailed_access_log(&log, "");
    let s = TestServer::with_tcp_specs(
        vec![ListenSpec::new("127.0.0.1:0".parse().expect("addr"))],
        &extra,
    )
    .await;
    let echo = Backend::start("echo", Mode::Echo).await;
    s.put_route(
        "7",
        &json!({"upstream": {"nodes": {echo.addr.to_string(): 1}}}),
    )
    .await;
    let mut c = within(5, TcpStream::connect(s.tcp[0]))
        .await
        .expect("connect");
    assert_eq!(roundtrip(&mut c, b"hello").await, b"hello");
    c.shutdown().await.expect("shutdown");
    let mut rest = Vec::new();
    within(5, c.read_to_end(&mut rest)).await.expect("eof");
    let client = c.local_addr().expect("addr");
    let mut text = String::new();
    eventually(5, async || {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        !text.is_empty()
    })
    .await;
    let line = text.lines().next().expect("one line");
    assert!(line.starts_with("127.0.0.1 ["), "{line}");
    assert!(line.contains(" TCP 200 5 5 "), "{line}");
    assert!(line.contains(&format!("client={client}")), "{line}");
    assert!(line.contains(&format!("listen={}", s.tcp[0])), "{line}");
    assert!(line.contains("route=7"), "{line}");
    assert!(line.contains(&format!("node={}", echo.addr)), "{line}");
    assert!(line.contains("end=\"closed\""), "{line}");
}

#[tokio::test]
async fn udp_sessions_and_datagrams_are_counted() {
    let s = TestServer::with_listeners(&[], &["127.0.0.1:0"]).await;
    let backend = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let backend_addr = backend.local_addr().expect("addr");
    let echo = tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = backend.recv_from(&mut buf).await {
            let _ = backend.send_to(&buf[..n], from).await;
        }
    });
    s.put_route(
        "u",
        &json!({"upstream": {"nodes": {backend_addr.to_string(): 1}}}),
    )
    .await;
    let c = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("client");
    for _ in 0..4 {
        c.send_to(b"ping", s.udp[0]).await.expect("send");
        let mut b = [0u8; 16];
        within(5, c.recv_from(&mut b)).await.expect("reply");
    }
    let stats = stats_until(&s, |v| route(v, "u")["datagrams_out"] == 4).await;
    let r = route(&stats, "u");
    assert_eq!(
        (r["udp_sessions"].as_u64(), r["datagrams_in"].as_u64()),
        (Some(1), Some(4))
    );
    assert_eq!(
        (
            r["bytes_in"].as_u64(),
            r["bytes_out"].as_u64(),
            r["active"].as_i64()
        ),
        (Some(16), Some(16), Some(1))
    );
    let list = get_json(&format!("http://{}/v1/stream/connections", s.control())).await;
    assert_eq!(list["connections"][0]["protocol"], "udp", "{list}");
    echo.abort();
}
