//! Counter and threshold transitions, target reuse, reports and probes.
//! (Checker lifetime across snapshots is tested with the snapshot build.)

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::conf::{Checks, ProbeType};
use super::probe::{self, Outcome};
use super::*;
use crate::balancer::Balancer;
use crate::model::{LbType, Node};

/// A checker whose https probes trust the system's roots.
fn checker(name: &str, source: &Value, backends: &[Backend], prev: Option<&Checker>) -> Checker {
    Checker::new(name, source, backends, prev, &crate::tls::Trust::system())
}

fn nodes(list: &[(&str, u16, i32)]) -> Vec<Node> {
    list.iter()
        .map(|&(host, port, priority)| Node {
            host: host.to_string(),
            port,
            weight: 1,
            priority,
        })
        .collect()
}

fn backends(list: &[(&str, u16, i32)]) -> Vec<Backend> {
    Balancer::new(&LbType::RoundRobin, &nodes(list))
        .backends()
        .to_vec()
}

fn tcp_checks(tcp_failures: u32) -> Value {
    json!({"active": {"type": "tcp", "healthy": {"interval": 1, "successes": 2},
        "unhealthy": {"interval": 1, "tcp_failures": tcp_failures, "timeouts": 3}}})
}

#[test]
fn failures_flip_to_unhealthy_through_mostly_healthy() {
    let mut s = TargetState::default();
    let inc = s.apply(Report::TcpFailure, 2).expect("counted");
    assert_eq!(
        (inc.count, inc.from, inc.to),
        (1, Status::Healthy, Status::MostlyHealthy)
    );
    assert!(s.status.is_up(), "mostly_healthy still takes traffic");
    let inc = s.apply(Report::TcpFailure, 2).expect("counted");
    assert_eq!((inc.count, inc.to), (2, Status::Unhealthy));
    assert!(!s.status.is_up());
    // Fully unhealthy: more failures are not counted, the counter stays.
    assert_eq!(s.apply(Report::TcpFailure, 2), None);
    assert_eq!(s.apply(Report::Timeout, 3), None);
    assert_eq!(s.counter.tcp_failure, 2);
}

#[test]
fn successes_flip_back_and_clear_failures() {
    let mut s = TargetState::default();
    s.apply(Report::TcpFailure, 1);
    assert_eq!(s.status, Status::Unhealthy);
    let inc = s.apply(Report::Success, 2).expect("counted");
    assert_eq!(inc.to, Status::MostlyUnhealthy);
    assert_eq!(
        s.counter,
        Counter {
            success: 1,
            ..Counter::default()
        }
    );
    assert!(!s.status.is_up(), "mostly_unhealthy takes no traffic");
    // A failure in between clears the success count.
    s.apply(Report::Timeout, 3);
    assert_eq!((s.counter.success, s.counter.timeout_failure), (0, 1));
    assert_eq!(s.status, Status::MostlyUnhealthy);
    s.apply(Report::Success, 2);
    let inc = s.apply(Report::Success, 2).expect("counted");
    assert_eq!((inc.count, inc.to), (2, Status::Healthy));
    // Fully healthy: successes are not counted.
    assert_eq!(s.apply(Report::Success, 2), None);
    assert_eq!(s.counter.success, 2);
}

#[test]
fn each_failure_kind_has_its_own_counter_and_zero_disables() {
    let mut s = TargetState::default();
    assert_eq!(s.apply(Report::TcpFailure, 0), None, "limit 0 disables");
    assert_eq!(s, TargetState::default());
    s.apply(Report::Timeout, 3);
    s.apply(Report::TcpFailure, 2);
    s.apply(Report::HttpFailure, 5);
    assert_eq!(
        s.counter,
        Counter {
            success: 0,
            tcp_failure: 1,
            http_failure: 1,
            timeout_failure: 1
        }
    );
    assert_eq!(s.status, Status::MostlyHealthy);
    // From mostly_healthy one success is not enough to be healthy again.
    s.apply(Report::Success, 2);
    assert_eq!(s.status, Status::MostlyHealthy);
    assert_eq!(s.counter.tcp_failure, 0);
    s.apply(Report::Success, 2);
    assert_eq!(s.status, Status::Healthy);
    // A threshold reached by one kind flips regardless of the others.
    s.apply(Report::HttpFailure, 5);
    s.apply(Report::Timeout, 2);
    let inc = s.apply(Report::Timeout, 2).expect("counted");
    assert_eq!(inc.to, Status::Unhealthy);
}

#[test]
fn checks_defaults_follow_apisix() {
    let c = Checks::from_value(&json!({"active": {}}));
    let a = &c.active;
    assert_eq!(a.probe, ProbeType::Http, "http is APISIX's default type");
    assert_eq!(a.timeout, Duration::from_secs(1));
    assert_eq!(a.concurrency, 10);
    assert_eq!((a.http_method.as_str(), a.http_path.as_str()), ("GET", "/"));
    assert!(a.https_verify_certificate);
    assert_eq!(a.healthy_interval, Some(Duration::from_secs(1)));
    assert_eq!(a.unhealthy_interval, Some(Duration::from_secs(1)));
    assert_eq!(
        (a.successes, a.tcp_failures, a.timeouts, a.http_failures),
        (2, 2, 3, 5)
    );
    assert_eq!(a.healthy_statuses, vec![200, 302]);
    assert_eq!(
        a.unhealthy_statuses,
        vec![429, 404, 500, 501, 502, 503, 504, 505]
    );
    let p = &c.passive;
    assert!(!p.configured);
    assert_eq!((p.successes, p.tcp_failures, p.timeouts), (5, 2, 7));
    let c = Checks::from_value(&json!({"active": {"type": "tcp", "timeout": 0.5,
        "healthy": {"interval": 0}, "port": 8080, "host": "example.com"},
        "passive": {"unhealthy": {"tcp_failures": 1}}}));
    assert_eq!(c.kind(), "tcp");
    assert_eq!(c.active.timeout, Duration::from_millis(500));
    assert_eq!(c.active.healthy_interval, None, "interval 0 disables");
    assert_eq!(c.active.port, Some(8080));
    assert!(c.passive.configured);
    assert_eq!(c.passive.tcp_failures, 1);
}

#[test]
fn targets_follow_nodes_and_overrides() {
    let b = backends(&[
        ("127.0.0.1", 1995, 0),
        ("127.0.0.1", 1995, 1),
        ("::1", 80, 0),
    ]);
    let c = checker("upstreams/1", &tcp_checks(1), &b, None);
    assert_eq!(c.targets().len(), 2, "a repeated node is one target");
    let t = &c.targets()[1];
    assert_eq!(
        (t.ip.as_str(), t.port, t.hostname.as_str()),
        ("::1", 80, "::1")
    );
    let over = json!({"active": {"type": "tcp", "port": 9000, "host": "probe.local"}});
    let c = checker("upstreams/1", &over, &b, None);
    let t = &c.targets()[0];
    assert_eq!(
        (t.ip.as_str(), t.port, t.hostname.as_str()),
        ("127.0.0.1", 9000, "probe.local")
    );
    assert_eq!(t.to_string(), "probe.local(127.0.0.1:9000)");
    let t = Target::new("127.0.0.1", 9995, "127.0.0.1");
    assert_eq!(
        t.increment_line(Report::TcpFailure, 1, 1),
        "unhealthy TCP increment (1/1) for '127.0.0.1(127.0.0.1:9995)'"
    );
    assert_eq!(
        t.increment_line(Report::Success, 1, 2),
        "healthy SUCCESS increment (1/2) for '127.0.0.1(127.0.0.1:9995)'"
    );
}

#[test]
fn unchanged_targets_keep_their_state_only_with_the_same_checks() {
    let b1 = backends(&[("127.0.0.1", 1, 0), ("127.0.0.1", 2, 0)]);
    let c1 = checker("upstreams/1", &tcp_checks(1), &b1, None);
    c1.targets()[0].record(Report::TcpFailure, 1, "t", "test");
    assert!(!c1.healthy(0));
    let b2 = backends(&[("127.0.0.1", 1, 0), ("127.0.0.1", 3, 0)]);
    let c2 = checker("upstreams/1", &tcp_checks(1), &b2, Some(&c1));
    assert!(Arc::ptr_eq(&c1.targets()[0], &c2.targets()[0]));
    assert!(!c2.healthy(0), "state kept");
    assert!(c2.healthy(1), "new target starts healthy");
    let c3 = checker("upstreams/1", &tcp_checks(2), &b2, Some(&c2));
    assert!(c3.healthy(0), "other checks: fresh targets");
}

#[test]
fn retry_and_session_reports_use_passive_thresholds() {
    let b = backends(&[("127.0.0.1", 1, 0), ("127.0.0.1", 2, 0)]);
    // No `passive`: failed tries still count (default threshold 2),
    // failed sessions do not.
    let c = checker("stream_routes/1", &tcp_checks(254), &b, None);
    c.report_session_failure(0);
    assert_eq!(c.targets()[0].state(), TargetState::default());
    c.report_try_failure(0, false);
    assert!(c.healthy(0));
    c.report_try_failure(0, false);
    assert!(!c.healthy(0));
    c.report_try_failure(1, true);
    assert_eq!(c.targets()[1].state().counter.timeout_failure, 1);
    // With `passive`, a failed session counts as a TCP failure.
    let mut checks = tcp_checks(254);
    checks["passive"] = json!({"type": "tcp", "unhealthy": {"tcp_failures": 1}});
    let c = checker("stream_routes/1", &checks, &b, None);
    c.report_session_failure(1);
    assert!(c.healthy(0) && !c.healthy(1));
    assert_eq!(c.targets()[1].state().counter.tcp_failure, 1);
}

#[test]
fn report_has_apisix_shape() {
    let b = backends(&[("127.0.0.1", 1995, 0)]);
    let c = checker("stream_routes/1", &tcp_checks(2), &b, None);
    assert_eq!(
        c.report("/apisix"),
        json!({"name": "/apisix/stream_routes/1", "type": "tcp",
            "nodes": [{"ip": "127.0.0.1", "hostname": "127.0.0.1", "port": 1995,
                "status": "healthy",
                "counter": {"success": 0, "tcp_failure": 0, "http_failure": 0,
                    "timeout_failure": 0}}]})
    );
}

#[test]
fn balancer_skips_unhealthy_nodes_and_falls_back_to_all() {
    let n = nodes(&[
        ("10.0.0.1", 80, 1),
        ("10.0.0.2", 80, 1),
        ("10.0.0.3", 80, 0),
    ]);
    let b = Balancer::new(&LbType::RoundRobin, &n);
    let c = checker("upstreams/1", &tcp_checks(1), b.backends(), None);
    c.targets()[0].record(Report::TcpFailure, 1, "t", "test");
    let hook = |i: usize| c.healthy(i);
    for _ in 0..10 {
        let p = b.pick(None, &[], &hook).expect("a node");
        assert_eq!(p.index, 1, "the healthy node of the top priority group");
    }
    c.targets()[1].record(Report::TcpFailure, 1, "t", "test");
    assert_eq!(b.pick(None, &[], &hook).expect("a node").index, 2);
    c.targets()[2].record(Report::TcpFailure, 1, "t", "test");
    // All unhealthy: every node is a candidate again, priority first.
    c.warn_if_all_unhealthy();
    let p = b.pick(None, &[], &hook).expect("fallback");
    assert!(p.index < 2, "{p:?}");
    // chash walks the ring past unhealthy nodes.
    let ring = Balancer::new(
        &LbType::Chash,
        &nodes(&[("10.0.0.1", 80, 0), ("10.0.0.2", 80, 0)]),
    );
    let c = checker("upstreams/2", &tcp_checks(1), ring.backends(), None);
    let hook = |i: usize| c.healthy(i);
    let key = b"client-7";
    let first = ring.pick(Some(key), &[], &hook).expect("a node").index;
    c.targets()[first].record(Report::TcpFailure, 1, "t", "test");
    let second = ring.pick(Some(key), &[], &hook).expect("a node").index;
    assert_ne!(first, second);
}

#[test]
fn status_lines_and_requests() {
    assert_eq!(probe::parse_status("HTTP/1.1 200 OK"), 200);
    assert_eq!(probe::parse_status("http/1.0   503"), 503);
    assert_eq!(probe::parse_status("HTTP/2.0 404 Not Found"), 404);
    assert_eq!(probe::parse_status("HTTP/1.1200 OK"), 0);
    assert_eq!(probe::parse_status("SSH-2.0-OpenSSH"), 0);
    assert_eq!(probe::parse_status(""), 0);
    let c = Checks::from_value(&json!({"active": {"http_path": "/status",
        "req_headers": ["User-Agent: probe", "X-A: 1"]}}));
    assert_eq!(
        String::from_utf8(probe::request(&c.active, "example.com")).expect("utf8"),
        "GET /status HTTP/1.0\r\nUser-Agent: probe\r\nX-A: 1\r\nHost: example.com\r\n\r\n"
    );
    let c = Checks::from_value(&json!({"active": {"http_method": "POST",
        "http_req_body": "ping"}}));
    assert_eq!(
        String::from_utf8(probe::request(&c.active, "::1")).expect("utf8"),
        "POST / HTTP/1.0\r\nHost: [::1]\r\nContent-Length: 4\r\n\r\nping"
    );
}

/// A loopback server answering every connection with `reply`.
async fn http_server(reply: &'static str) -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(reply.as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn probes_classify_outcomes() {
    let target = |addr: std::net::SocketAddr| Target::new("127.0.0.1", addr.port(), "127.0.0.1");
    let up = http_server("HTTP/1.1 500 Internal Server Error\r\n\r\n").await;
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        l.local_addr().expect("addr")
    };
    let tcp = Checks::from_value(&json!({"active": {"type": "tcp"}}));
    assert_eq!(
        probe::probe(&tcp.active, None, &target(up)).await,
        Outcome::Success
    );
    assert_eq!(
        probe::probe(&tcp.active, None, &target(closed)).await,
        Outcome::TcpFailure
    );
    let http = Checks::from_value(&json!({"active": {"type": "http", "timeout": 2}}));
    assert_eq!(
        probe::probe(&http.active, None, &target(up)).await,
        Outcome::Status(500)
    );
    let c = checker(
        "upstreams/1",
        &json!({"active": {"unhealthy": {"http_failures": 1}}}),
        &backends(&[("127.0.0.1", up.port(), 0)]),
        None,
    );
    c.record_probe(&c.targets()[0], Outcome::Status(500));
    assert!(!c.healthy(0), "500 is an unhealthy status");
    c.record_probe(&c.targets()[0], Outcome::Status(200));
    c.record_probe(&c.targets()[0], Outcome::Status(302));
    assert!(c.healthy(0), "200 and 302 are healthy statuses");
    c.record_probe(&c.targets()[0], Outcome::Status(418));
    assert!(c.healthy(0), "other statuses are ignored");
    // A server that never answers: the read times out.
    let silent = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let quick = Checks::from_value(&json!({"active": {"timeout": 0.2}}));
    let t = target(silent.local_addr().expect("addr"));
    assert_eq!(
        probe::probe(&quick.active, None, &t).await,
        Outcome::Timeout
    );
}
