//! Upstream health checks end to end: active probes against real loopback
//! backends, passive reports from failed sessions and retries, the
//! `/v1/healthcheck` reports, and checker lifetime.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::backend::{read_line, Backend, Mode};
use crate::harness::{eventually_some, within, TestServer};

/// A greeting backend that can be stopped and started again on its port.
struct Flappy {
    addr: SocketAddr,
    name: &'static str,
    accepted: Arc<AtomicUsize>,
    task: Option<JoinHandle<()>>,
}

impl Flappy {
    async fn start(name: &'static str) -> Flappy {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mut f = Flappy {
            addr: l.local_addr().expect("addr"),
            name,
            accepted: Arc::default(),
            task: None,
        };
        f.serve(l);
        f
    }

    fn serve(&mut self, l: TcpListener) {
        let (name, count) = (self.name, self.accepted.clone());
        self.task = Some(tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    if s.write_all(format!("{name}\n").as_bytes()).await.is_ok() {
                        let mut b = [0u8; 64];
                        while matches!(s.read(&mut b).await, Ok(n) if n > 0) {}
                    }
                });
            }
        }));
    }

    /// Close the listening socket (connects are refused from then on).
    async fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }

    /// Listen on the same port again.
    async fn restart(&mut self) {
        let l = eventually_some(15, "rebind the backend port", async || {
            TcpListener::bind(self.addr).await.ok()
        })
        .await;
        self.serve(l);
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Flappy {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// GET a Control API path: status and JSON body.
async fn get(s: &TestServer, path: &str) -> (u16, Value) {
    let url = format!("http://{}{path}", s.control());
    let res = within(5, reqwest::get(&url)).await.expect("GET");
    let status = res.status().as_u16();
    let text = within(5, res.text()).await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The report node for `addr`, from a checker report.
fn node(report: &Value, addr: SocketAddr) -> Value {
    report["nodes"]
        .as_array()
        .and_then(|n| {
            n.iter()
                .find(|n| n["port"] == addr.port() && n["ip"] == addr.ip().to_string())
        })
        .cloned()
        .unwrap_or(Value::Null)
}

/// Wait until the checker of `path` reports `addr` with `status`.
async fn status_becomes(s: &TestServer, path: &str, addr: SocketAddr, status: &str) -> Value {
    eventually_some(15, &format!("{addr} {status} in {path}"), async || {
        let (code, report) = get(s, path).await;
        (code == 200 && node(&report, addr)["status"] == status).then_some(report)
    })
    .await
}

/// Connect through the proxy and read the backend's greeting ("" when the
/// proxy closed the connection instead).
async fn greeting(proxy: SocketAddr) -> String {
    let mut c = within(5, TcpStream::connect(proxy))
        .await
        .expect("connect to proxy");
    read_line(&mut c).await
}

fn checks(tcp_failures: u32, successes: u32) -> Value {
    json!({"active": {"type": "tcp", "timeout": 1,
        "healthy": {"interval": 1, "successes": successes},
        "unhealthy": {"interval": 1, "tcp_failures": tcp_failures}}})
}

/// A loopback port where nothing listens.
async fn dead_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    l.local_addr().expect("addr")
}

#[tokio::test]
async fn dead_node_is_skipped_until_it_comes_back() {
    let s = TestServer::with_tcp(&["127.0.0.1:0"]).await;
    let mut a = Flappy::start("a").await;
    let b = Flappy::start("b").await;
    s.put_route(
        "1",
        &json!({"upstream": {"nodes": {a.addr.to_string(): 1, b.addr.to_string(): 1},
            "checks": checks(1, 1)}}),
    )
    .await;
    let path = "/v1/healthcheck/stream_routes/1";
    status_becomes(&s, path, a.addr, "healthy").await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(greeting(s.tcp[0]).await);
    }
    assert!(
        seen.contains(&"a".to_string()) && seen.contains(&"b".to_string()),
        "{seen:?}"
    );

    a.stop().await;
    let report = status_becomes(&s, path, a.addr, "unhealthy").await;
    assert_eq!(
        node(&report, a.addr)["counter"]["tcp_failure"],
        1,
        "{report}"
    );
    assert_eq!(node(&report, b.addr)["status"], "healthy");
    let (_, stats) = get(&s, "/v1/stream/stats").await;
    let healthy = |label: String| {
        stats["nodes"]
            .as_array()
            .and_then(|n| n.iter().find(|n| n["node"] == label))
            .map(|n| n["healthy"].clone())
    };
    assert_eq!(healthy(a.addr.to_string()), Some(json!(false)), "{stats}");
    assert_eq!(healthy(b.addr.to_string()), Some(json!(true)), "{stats}");
    let (_, before) = get(&s, "/v1/stream/stats").await;
    for _ in 0..6 {
        assert_eq!(greeting(s.tcp[0]).await, "b", "unhealthy node skipped");
    }
    let (_, after) = get(&s, "/v1/stream/stats").await;
    assert_eq!(
        before["routes"][0]["connect_failures"], after["routes"][0]["connect_failures"],
        "the dead node was not even tried"
    );

    a.restart().await;
    let report = status_becomes(&s, path, a.addr, "healthy").await;
    assert_eq!(node(&report, a.addr)["counter"]["success"], 1, "{report}");
    eventually_some(15, "node a used again", async || {
        (greeting(s.tcp[0]).await == "a").then_some(())
    })
    .await;
}

#[tokio::test]
async fn resty_events_example_and_checker_released_on_delete() {
    // t/stream-node/healthcheck-resty-events.t: a dead node in the higher
    // priority group, no retries, active tcp checks with one failure.
    let s = TestServer::with_tcp(&["127.0.0.1:0"]).await;
    let dead = dead_port().await;
    let live = Flappy::start("live").await;
    s.put_route(
        "1",
        &json!({"upstream": {"retries": 0, "type": "roundrobin", "nodes": [
            {"host": "127.0.0.1", "port": dead.port(), "weight": 1, "priority": 1},
            {"host": "127.0.0.1", "port": live.addr.port(), "weight": 1, "priority": 0}],
            "checks": {"active": {"type": "tcp", "timeout": 1,
                "healthy": {"interval": 1, "successes": 1},
                "unhealthy": {"interval": 1, "tcp_failures": 1}}}}}),
    )
    .await;
    let report = status_becomes(&s, "/v1/healthcheck/stream_routes/1", dead, "unhealthy").await;
    assert_eq!(report["name"], "/apisix/stream_routes/1");
    assert_eq!(node(&report, dead)["counter"]["tcp_failure"], 1);
    for _ in 0..3 {
        assert_eq!(greeting(s.tcp[0]).await, "live");
    }
    // Probes reach the live node every second while the checker runs.
    let probes = live.accepted();
    eventually_some(15, "another probe of the live node", async || {
        (live.accepted() > probes).then_some(())
    })
    .await;

    let (st, _) = s
        .call(
            reqwest::Method::DELETE,
            "/apisix/admin/stream_routes/1",
            None,
        )
        .await;
    assert!(st.is_success());
    let (code, body) = get(&s, "/v1/healthcheck/stream_routes/1").await;
    assert_eq!(
        (code, body),
        (404, json!({"error_msg": "stream_routes[1] not found"}))
    );
    assert_eq!(get(&s, "/v1/healthcheck").await, (200, json!({})));
    // The checker is stopped: no more probes reach the node.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let settled = live.accepted();
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(
        live.accepted(),
        settled,
        "probes continued after the route was deleted"
    );
}

#[tokio::test]
async fn failed_sessions_mark_a_node_unhealthy_with_passive_checks() {
    // healthcheck-resty-events.t 3-4: active threshold 254, passive one
    // TCP failure. The node accepts, then resets: sessions end with 502.
    let s = TestServer::with_tcp(&["127.0.0.1:0"]).await;
    let bad = Backend::start("bad", Mode::Reset).await;
    let good = Flappy::start("good").await;
    s.put_route(
        "1",
        &json!({"upstream": {"retries": 0, "nodes": [
            {"host": "127.0.0.1", "port": bad.addr.port(), "weight": 1, "priority": 1},
            {"host": "127.0.0.1", "port": good.addr.port(), "weight": 1, "priority": 0}],
            "checks": {"active": {"type": "tcp",
                "healthy": {"interval": 3600, "successes": 254},
                "unhealthy": {"interval": 3600, "tcp_failures": 254}},
                "passive": {"type": "tcp", "unhealthy": {"tcp_failures": 1}}}}}),
    )
    .await;
    let path = "/v1/healthcheck/stream_routes/1";
    status_becomes(&s, path, bad.addr, "healthy").await;
    let mut c = within(5, TcpStream::connect(s.tcp[0]))
        .await
        .expect("connect");
    c.write_all(b"hello").await.expect("write");
    let mut sink = Vec::new();
    let _ = within(5, c.read_to_end(&mut sink)).await;
    let report = status_becomes(&s, path, bad.addr, "unhealthy").await;
    assert_eq!(
        node(&report, bad.addr)["counter"]["tcp_failure"],
        1,
        "{report}"
    );
    let sessions = bad.accepted();
    for _ in 0..3 {
        assert_eq!(greeting(s.tcp[0]).await, "good");
    }
    assert_eq!(
        bad.accepted(),
        sessions,
        "the failed node got no more sessions"
    );
}

#[tokio::test]
async fn refused_tries_are_reported_on_retry() {
    // No `passive`: failed tries still reach the checker (default passive
    // threshold 2) when the balancer retries another node.
    let s = TestServer::with_tcp(&["127.0.0.1:0"]).await;
    let dead = dead_port().await;
    let good = Flappy::start("good").await;
    s.put_route(
        "1",
        &json!({"upstream": {"retries": 1, "nodes": [
            {"host": "127.0.0.1", "port": dead.port(), "weight": 1, "priority": 1},
            {"host": "127.0.0.1", "port": good.addr.port(), "weight": 1, "priority": 0}],
            "checks": {"active": {"type": "tcp",
                "healthy": {"interval": 3600}, "unhealthy": {"interval": 3600,
                "tcp_failures": 254}}}}}),
    )
    .await;
    let path = "/v1/healthcheck/stream_routes/1";
    status_becomes(&s, path, good.addr, "healthy").await;
    for _ in 0..2 {
        assert_eq!(greeting(s.tcp[0]).await, "good", "retried on the next node");
    }
    let report = status_becomes(&s, path, dead, "unhealthy").await;
    let failures = node(&report, dead)["counter"]["tcp_failure"].as_u64();
    assert!(matches!(failures, Some(2..=3)), "{report}");
    let (_, before) = get(&s, "/v1/stream/stats").await;
    for _ in 0..3 {
        assert_eq!(greeting(s.tcp[0]).await, "good");
    }
    let (_, after) = get(&s, "/v1/stream/stats").await;
    assert_eq!(
        before["routes"][0]["connect_failures"],
        after["routes"][0]["connect_failures"]
    );
}

#[tokio::test]
async fn healthcheck_reports_and_errors() {
    let s = TestServer::with_tcp(&["127.0.0.1:0"]).await;
    let live = Flappy::start("live").await;
    assert_eq!(get(&s, "/v1/healthcheck").await, (200, json!({})));
    let err = |msg: &str| json!({"error_msg": msg});
    assert_eq!(
        get(&s, "/v1/healthcheck/stream_routes").await,
        (404, err("missing src id for src type stream_routes"))
    );
    assert_eq!(
        get(&s, "/v1/healthcheck/bogus/1").await,
        (400, err("invalid src type bogus"))
    );
    assert_eq!(
        get(&s, "/v1/healthcheck/stream_routes/9").await,
        (404, err("stream_routes[9] not found"))
    );
    assert_eq!(
        get(&s, "/v1/healthcheck/routes/1").await,
        (404, err("routes[1] not found"))
    );
    let nodes = json!({live.addr.to_string(): 1});
    s.put_route("1", &json!({"upstream": {"nodes": nodes}}))
        .await;
    assert_eq!(
        get(&s, "/v1/healthcheck/stream_routes/1").await,
        (404, err("no checker for stream_routes[1]"))
    );
    // t/stream-node/control-api-healthcheck.t (unknown keys accepted).
    s.put_route(
        "2",
        &json!({"server_port": 1, "upstream": {"nodes": nodes, "type": "roundrobin",
            "retries": 3, "timeout": {"connect": 40, "send": 40, "read": 40},
            "checks": {"active": {"type": "tcp", "timeout": 40,
                "healthy": {"interval": 1, "successes": 1},
                "unhealthy": {"interval": 1, "failures": 2}}}}}),
    )
    .await;
    let (st, body) = s
        .call(
            reqwest::Method::PUT,
            "/apisix/admin/upstreams/u1",
            Some(&json!({"nodes": nodes, "checks": checks(2, 2)}).to_string()),
        )
        .await;
    assert!(st.is_success(), "{body}");
    s.put_route("3", &json!({"server_port": 2, "upstream_id": "u1"}))
        .await;
    let expected = |name: &str| {
        json!({"name": name, "type": "tcp", "nodes": [{"ip": "127.0.0.1",
            "hostname": "127.0.0.1", "port": live.addr.port(), "status": "healthy",
            "counter": {"success": 0, "tcp_failure": 0, "http_failure": 0,
                "timeout_failure": 0}}]})
    };
    let all = eventually_some(15, "both checkers listed", async || {
        let (code, v) = get(&s, "/v1/healthcheck").await;
        (code == 200 && v.as_array().is_some_and(|a| a.len() == 2)).then_some(v)
    })
    .await;
    assert_eq!(
        all,
        json!([
            expected("/apisix/stream_routes/2"),
            expected("/apisix/upstreams/u1")
        ])
    );
    assert_eq!(
        get(&s, "/v1/healthcheck/stream_routes/2").await,
        (200, expected("/apisix/stream_routes/2"))
    );
    assert_eq!(
        get(&s, "/v1/healthcheck/upstreams/u1").await,
        (200, expected("/apisix/upstreams/u1"))
    );
    assert_eq!(
        get(&s, "/v1/healthcheck/stream_routes/3").await,
        (404, err("no checker for stream_routes[3]")),
        "a referenced upstream is reported under /upstreams"
    );
    let html = crate::harness::get_text(
        &format!("http://{}/v1/healthcheck", s.control()),
        Some("text/html"),
    )
    .await;
    assert!(html.contains("APISIX upstream check status"), "{html}");
    let text = s.metrics_text().await;
    let line = format!(
        "apisix_upstream_status{{name=\"/apisix/upstreams/u1\",ip=\"127.0.0.1\",port=\"{}\"}} 1",
        live.addr.port()
    );
    assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
    // Losing `checks` releases the checker.
    let (st, _) = s
        .call(
            reqwest::Method::PUT,
            "/apisix/admin/upstreams/u1",
            Some(&json!({"nodes": nodes}).to_string()),
        )
        .await;
    assert!(st.is_success());
    eventually_some(15, "upstream u1 without checker", async || {
        (get(&s, "/v1/healthcheck/upstreams/u1").await
            == (404, err("no checker for upstreams[u1]")))
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn disable_upstream_healthcheck_turns_checkers_off() {
    let edit = |y: String| {
        y.replacen(
            "apisix:\n",
            "apisix:\n  disable_upstream_healthcheck: true\n",
            1,
        )
    };
    let adjust = |c: &mut apisix_stream::config::Config| {
        if let Some(sp) = c.apisix.stream_proxy.as_mut() {
            sp.tcp = vec![apisix_stream::config::ListenSpec::new(
                "127.0.0.1:0".parse().expect("addr"),
            )];
        }
    };
    let s = TestServer::start_full(tempfile::tempdir().expect("tempdir"), edit, adjust).await;
    let live = Flappy::start("live").await;
    s.put_route(
        "1",
        &json!({"upstream": {"nodes": {live.addr.to_string(): 1}, "checks": checks(1, 1)}}),
    )
    .await;
    assert_eq!(greeting(s.tcp[0]).await, "live");
    assert_eq!(get(&s, "/v1/healthcheck").await, (200, json!({})));
    assert_eq!(
        get(&s, "/v1/healthcheck/stream_routes/1").await,
        (404, json!({"error_msg": "no checker for stream_routes[1]"}))
    );
    let (_, stats) = get(&s, "/v1/stream/stats").await;
    assert_eq!(stats["nodes"][0]["healthy"], Value::Null);
    assert_eq!(live.accepted(), 1, "no probes");
}
