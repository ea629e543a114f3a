//! Redis protocol routes (xRPC) against real `redis-server`s: commands
//! round-trip byte for byte (pipelined, MULTI/EXEC, pub/sub, RESP3),
//! faults delay only their key, the command metrics and per-command log
//! lines, subordinate routes, and malformed clients.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use apisix_stream::config::ListenSpec;
use apisix_stream::xrpc::redis::resp::{ReplyDecoder, Step};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::harness::{eventually, free_port, program, within, TestServer};

/// A `redis-server` on a loopback port, killed when dropped.
struct Redis {
    addr: SocketAddr,
    child: Child,
}

impl Redis {
    fn start() -> Redis {
        let port = free_port();
        let child = Command::new(program("redis-server", "redis-server"))
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let mut r = Redis { addr, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            assert!(
                r.child.try_wait().ok().flatten().is_none(),
                "redis-server exited"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        r
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One command in RESP.
fn cmd(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    out
}

/// Read exactly `n` frames; their bytes, one entry per frame.
async fn frames(c: &mut TcpStream, d: &mut ReplyDecoder, n: usize) -> Vec<String> {
    let mut buf = Vec::new();
    let mut pos = 0;
    let mut start = 0;
    let mut out = Vec::new();
    while out.len() < n {
        match d.decode(&buf[pos..]).expect("valid RESP") {
            Step::Frame(k, _) => {
                pos += k;
                out.push(String::from_utf8_lossy(&buf[start..pos]).into_owned());
                start = pos;
            }
            Step::More(k) => {
                pos += k;
                let mut chunk = [0u8; 4096];
                let got = within(5, c.read(&mut chunk)).await.expect("read");
                assert!(got > 0, "closed after {out:?}");
                buf.extend_from_slice(&chunk[..got]);
            }
        }
    }
    out
}

async fn connect(addr: SocketAddr) -> TcpStream {
    within(5, TcpStream::connect(addr)).await.expect("connect")
}

/// A server with the redis protocol enabled (and prometheus, syslog).
async fn server(extra: &str) -> TestServer {
    let yaml = format!(
        "xrpc:\n  protocols:\n    - name: redis\nstream_plugins: [prometheus, syslog]\n{extra}"
    );
    let spec = ListenSpec::new("127.0.0.1:0".parse().expect("addr"));
    TestServer::with_tcp_specs(vec![spec], &yaml).await
}

fn route_stats(stats: &Value, id: &str) -> Value {
    stats["routes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["id"] == id)
        .cloned()
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_commands_round_trip_unchanged() {
    let redis = Redis::start();
    let logs = tempfile::tempdir().expect("tempdir");
    let log = logs.path().join("access.log");
    let s = server(&format!(
        "nginx_config:\n  stream:\n    enable_access_log: true\n    access_log: {}\n    \
         access_log_format: \"$route_id $protocol_name\"\n",
        log.display()
    ))
    .await;
    s.put_route(
        "1",
        &json!({"protocol": {"name": "redis"},
                "upstream": {"nodes": {redis.addr.to_string(): 1}}}),
    )
    .await;
    let proxy = s.tcp[0];
    let mut c = connect(proxy).await;
    let mut d = ReplyDecoder::default();
    // Pipelined: nine commands in one write, nine replies in order.
    let batch: Vec<&[&str]> = vec![
        &["SET", "k", "v"],
        &["GET", "k"],
        &["INCR", "n"],
        &["LPUSH", "l", "a", "b"],
        &["LRANGE", "l", "0", "-1"],
        &["PING"],
        &["GET", "missing"],
        &["HSET", "h", "f", "v"],
        &["HGETALL", "h"],
    ];
    let bytes: Vec<u8> = batch.iter().flat_map(|a| cmd(a)).collect();
    c.write_all(&bytes).await.expect("write");
    let got = frames(&mut c, &mut d, 9).await;
    assert_eq!(
        got.concat(),
        "+OK\r\n$1\r\nv\r\n:1\r\n:2\r\n*2\r\n$1\r\nb\r\n$1\r\na\r\n+PONG\r\n$-1\r\n:1\r\n\
         *2\r\n$1\r\nf\r\n$1\r\nv\r\n"
    );
    // A big value passes whole.
    let big = "x".repeat(300_000);
    c.write_all(&[cmd(&["SET", "big", &big]), cmd(&["STRLEN", "big"])].concat())
        .await
        .expect("write");
    assert_eq!(frames(&mut c, &mut d, 2).await, ["+OK\r\n", ":300000\r\n"]);
    c.write_all(&[cmd(&["GET", "big"]), cmd(&["PING"])].concat())
        .await
        .expect("write");
    let got = frames(&mut c, &mut d, 2).await;
    assert_eq!(got[0], format!("$300000\r\n{big}\r\n"));
    assert_eq!(got[1], "+PONG\r\n");
    // MULTI/EXEC.
    let tx: Vec<u8> = [
        cmd(&["MULTI"]),
        cmd(&["SET", "a", "1"]),
        cmd(&["INCR", "a"]),
        cmd(&["EXEC"]),
    ]
    .concat();
    c.write_all(&tx).await.expect("write");
    assert_eq!(
        frames(&mut c, &mut d, 4).await.concat(),
        "+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n+OK\r\n:2\r\n"
    );
    // RESP2 pub/sub: two confirmations for one SUBSCRIBE, a message that
    // is no request, then back to normal after the last UNSUBSCRIBE.
    c.write_all(&cmd(&["SUBSCRIBE", "c1", "c2"]))
        .await
        .expect("write");
    let confirms = frames(&mut c, &mut d, 2).await;
    assert_eq!(confirms[1], "*3\r\n$9\r\nsubscribe\r\n$2\r\nc2\r\n:2\r\n");
    let mut other = connect(proxy).await;
    let mut od = ReplyDecoder::default();
    other
        .write_all(&cmd(&["PUBLISH", "c1", "hi"]))
        .await
        .expect("write");
    assert_eq!(frames(&mut other, &mut od, 1).await, [":1\r\n"]);
    assert_eq!(
        frames(&mut c, &mut d, 1).await,
        ["*3\r\n$7\r\nmessage\r\n$2\r\nc1\r\n$2\r\nhi\r\n"]
    );
    c.write_all(&[cmd(&["UNSUBSCRIBE"]), cmd(&["PING"])].concat())
        .await
        .expect("write");
    let tail = frames(&mut c, &mut d, 3).await;
    assert_eq!(tail[2], "+PONG\r\n", "{tail:?}");
    // RESP3 after HELLO 3: a map, a set, and pub/sub as pushes.
    let mut c3 = connect(proxy).await;
    let mut d3 = ReplyDecoder::default();
    c3.write_all(
        &[
            cmd(&["HELLO", "3"]),
            cmd(&["HGETALL", "h"]),
            cmd(&["SMEMBERS", "none"]),
        ]
        .concat(),
    )
    .await
    .expect("write");
    let r3 = frames(&mut c3, &mut d3, 3).await;
    assert!(
        r3[0].starts_with("%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n"),
        "{r3:?}"
    );
    assert_eq!(r3[1..], ["%1\r\n$1\r\nf\r\n$1\r\nv\r\n", "~0\r\n"]);
    c3.write_all(&cmd(&["SUBSCRIBE", "c3"]))
        .await
        .expect("write");
    assert_eq!(
        frames(&mut c3, &mut d3, 1).await,
        [">3\r\n$9\r\nsubscribe\r\n$2\r\nc3\r\n:1\r\n"]
    );
    other
        .write_all(&cmd(&["PUBLISH", "c3", "yo"]))
        .await
        .expect("write");
    assert_eq!(frames(&mut other, &mut od, 1).await, [":1\r\n"]);
    c3.write_all(&cmd(&["PING"])).await.expect("write");
    assert_eq!(
        frames(&mut c3, &mut d3, 2).await,
        [
            ">3\r\n$7\r\nmessage\r\n$2\r\nc3\r\n$2\r\nyo\r\n",
            "+PONG\r\n"
        ]
    );
    // redis-cli through the route.
    let cli = program("redis-cli", "redis-tools");
    let out = Command::new(&cli)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &proxy.port().to_string(),
            "GET",
            "k",
        ])
        .output()
        .expect("redis-cli");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "v");
    let out = Command::new(&cli)
        .args([
            "-3",
            "-h",
            "127.0.0.1",
            "-p",
            &proxy.port().to_string(),
            "HGETALL",
            "h",
        ])
        .output()
        .expect("redis-cli -3");
    // A RESP3 map, as redis-cli prints one.
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "f v");
    // Requests counted: 9 + 2 + 2 + 4 + (subscribe, unsubscribe, ping) + 1
    // publish + (hello, hgetall, smembers, subscribe, ping) + 1 publish +
    // redis-cli's (get; hello, hgetall); the two messages are not requests.
    let want = 9 + 2 + 2 + 4 + 3 + 1 + 5 + 1 + 3;
    let stats = s.stream_stats().await;
    let r = route_stats(&stats, "1");
    assert_eq!(r["protocol"], "redis", "{r}");
    let n = r["requests"].as_u64().unwrap_or(0);
    assert_eq!(n, want, "{r}");
    drop((c, c3, other));
    let counted = eventually(5, async || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.lines().count() >= 3 && text.lines().all(|l| l == "1 redis")
    })
    .await;
    assert!(counted, "{:?}", std::fs::read_to_string(&log));
    println!("requests counted: {n}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_metrics_and_loggers_per_command() {
    let redis = Redis::start();
    let s = server("").await;
    let syslog = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let port = syslog.local_addr().expect("addr").port();
    s.put_route(
        "r1",
        &json!({"protocol": {"name": "redis",
                "conf": {"faults": [{"commands": ["get"], "key": "bogus_key", "delay": 0.5}]},
                "metric": {"enable": true},
                "logger": [{"name": "syslog", "filter": [["rpc_time", ">=", 0.4]],
                            "conf": {"host": "127.0.0.1", "port": port, "sock_type": "udp",
                                     "batch_max_size": 1,
                                     "log_format": {"cmd": "$redis_cmd_line", "t": "$rpc_time",
                                                    "client": "$remote_addr"}}}]},
                "upstream": {"nodes": {redis.addr.to_string(): 1}}}),
    )
    .await;
    let mut c = connect(s.tcp[0]).await;
    let mut d = ReplyDecoder::default();
    let timed = async |c: &mut TcpStream, d: &mut ReplyDecoder, args: &[&str]| {
        let t = Instant::now();
        c.write_all(&cmd(args)).await.expect("write");
        let r = frames(c, d, 1).await;
        (t.elapsed(), r)
    };
    let (fast, r) = timed(&mut c, &mut d, &["GET", "good_key"]).await;
    assert_eq!(r, ["$-1\r\n"]);
    let (slow, r) = timed(&mut c, &mut d, &["GET", "bogus_key"]).await;
    assert_eq!(r, ["$-1\r\n"]);
    let (set, _) = timed(&mut c, &mut d, &["SET", "bogus_key", "1"]).await;
    println!("GET good_key {fast:?}, GET bogus_key {slow:?}, SET bogus_key {set:?}");
    assert!(slow >= Duration::from_millis(500), "{slow:?}");
    assert!(fast < Duration::from_millis(300), "{fast:?}");
    assert!(set < Duration::from_millis(300), "{set:?}");
    // One log line: the slow command only (the filter).
    let mut buf = vec![0u8; 65_536];
    let n = within(5, syslog.recv(&mut buf)).await.expect("datagram");
    let line = String::from_utf8_lossy(&buf[..n]).into_owned();
    let entry = crate::plugins::parse_syslog(line.trim_end_matches('\n'));
    assert_eq!(entry["cmd"], "get bogus_key", "{entry}");
    assert_eq!(entry["client"], "127.0.0.1");
    assert_eq!(entry["route_id"], "r1");
    let t: f64 = entry["t"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or(0.0);
    assert!(t >= 0.5, "{entry}");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), syslog.recv(&mut buf))
            .await
            .is_err(),
        "only the slow command is logged"
    );
    // Counters and the latency histogram.
    let text = s.metrics_text().await;
    let has = |l: &str| text.lines().any(|x| x == l);
    for l in [
        "apisix_redis_commands_total{route=\"r1\",command=\"get\"} 2",
        "apisix_redis_commands_total{route=\"r1\",command=\"set\"} 1",
        "apisix_redis_commands_latency_seconds_bucket{route=\"r1\",command=\"get\",le=\"0.2\"} 1",
        "apisix_redis_commands_latency_seconds_bucket{route=\"r1\",command=\"get\",le=\"1.0\"} 2",
        "apisix_redis_commands_latency_seconds_count{route=\"r1\",command=\"get\"} 2",
        "# TYPE apisix_redis_commands_latency_seconds histogram",
    ] {
        assert!(has(l), "missing {l} in\n{text}");
    }
    let sum = text
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                "apisix_redis_commands_latency_seconds_sum{route=\"r1\",command=\"get\"} ",
            )
        })
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(sum >= 0.5, "{text}");
    // The scrape still parses as OpenMetrics.
    let om = s
        .metrics_text_accepting(Some("application/openmetrics-text; version=1.0.0"))
        .await;
    openmetrics_parser::openmetrics::parse_openmetrics(&om).expect("valid OpenMetrics");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subordinate_route_sends_sets_to_another_node() {
    let main = Redis::start();
    let writes = Redis::start();
    let s = server("").await;
    s.put_route(
        "1",
        &json!({"protocol": {"name": "redis"},
                "upstream": {"nodes": {main.addr.to_string(): 1}}}),
    )
    .await;
    s.put_route(
        "2",
        &json!({"protocol": {"name": "redis", "superior_id": "1", "conf": {"commands": ["SET"]}},
                "upstream": {"nodes": {writes.addr.to_string(): 1}}}),
    )
    .await;
    let mut c = connect(s.tcp[0]).await;
    let mut d = ReplyDecoder::default();
    // Pipelined across both nodes: replies stay in request order.
    let batch = [
        cmd(&["SET", "k", "from-proxy"]),
        cmd(&["GET", "k"]),
        cmd(&["SET", "k2", "x"]),
        cmd(&["ECHO", "last"]),
    ]
    .concat();
    c.write_all(&batch).await.expect("write");
    assert_eq!(
        frames(&mut c, &mut d, 4).await,
        ["+OK\r\n", "$-1\r\n", "+OK\r\n", "$4\r\nlast\r\n"]
    );
    let mut direct = connect(writes.addr).await;
    let mut dd = ReplyDecoder::default();
    direct.write_all(&cmd(&["GET", "k"])).await.expect("write");
    assert_eq!(
        frames(&mut direct, &mut dd, 1).await,
        ["$10\r\nfrom-proxy\r\n"]
    );
    let mut direct_main = connect(main.addr).await;
    direct_main
        .write_all(&cmd(&["EXISTS", "k", "k2"]))
        .await
        .expect("write");
    assert_eq!(frames(&mut direct_main, &mut dd, 1).await, [":0\r\n"]);
    // The subordinate is never matched directly: its route id is not in use.
    let stats = s.stream_stats().await;
    assert_eq!(route_stats(&stats, "2"), Value::Null, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_resp_closes_only_that_client() {
    let redis = Redis::start();
    let s = server("").await;
    s.put_route(
        "1",
        &json!({"protocol": {"name": "redis"},
                "upstream": {"nodes": {redis.addr.to_string(): 1}}}),
    )
    .await;
    let mut good = connect(s.tcp[0]).await;
    let mut gd = ReplyDecoder::default();
    let mut bad = connect(s.tcp[0]).await;
    let mut bd = ReplyDecoder::default();
    for c in [&mut good, &mut bad] {
        c.write_all(&cmd(&["PING"])).await.expect("write");
    }
    assert_eq!(frames(&mut good, &mut gd, 1).await, ["+PONG\r\n"]);
    assert_eq!(frames(&mut bad, &mut bd, 1).await, ["+PONG\r\n"]);
    bad.write_all(b"*2\r\n$3\r\nGET\r\n$999999999999\r\n")
        .await
        .expect("write");
    let mut rest = Vec::new();
    let closed = within(5, bad.read_to_end(&mut rest)).await;
    assert!(closed.is_ok() || rest.is_empty(), "{closed:?}");
    assert!(rest.is_empty(), "no reply to a malformed command: {rest:?}");
    // An inline command is not RESP either.
    let mut inline = connect(s.tcp[0]).await;
    inline.write_all(b"PING\r\n").await.expect("write");
    let mut rest = Vec::new();
    let _ = within(5, inline.read_to_end(&mut rest)).await;
    assert!(rest.is_empty(), "{rest:?}");
    // The other client keeps going on the same route.
    good.write_all(&[cmd(&["SET", "a", "1"]), cmd(&["GET", "a"])].concat())
        .await
        .expect("write");
    assert_eq!(
        frames(&mut good, &mut gd, 2).await,
        ["+OK\r\n", "$1\r\n1\r\n"]
    );
    let counted = eventually(5, async || {
        route_stats(&s.stream_stats().await, "1")["protocol_errors"] == 2
    })
    .await;
    assert!(counted, "{}", s.stream_stats().await);
}

#[tokio::test]
async fn a_route_naming_an_unlisted_protocol_is_refused() {
    let plain = TestServer::with_tcp(&["127.0.0.1:0"]).await;
    let body = json!({"protocol": {"name": "redis"},
                      "upstream": {"nodes": {"127.0.0.1:6379": 1}}})
    .to_string();
    let (st, v) = plain
        .call(Method::PUT, "/apisix/admin/stream_routes/1", Some(&body))
        .await;
    assert_eq!(
        (st.as_u16(), v["error_msg"].as_str()),
        (400, Some("unknown protocol [redis]"))
    );
    let (st, _) = plain
        .call(Method::GET, "/apisix/admin/stream_routes/1", None)
        .await;
    assert_eq!(st.as_u16(), 404, "nothing stored");
    let s = server("").await;
    let (st, _) = s
        .call(Method::PUT, "/apisix/admin/stream_routes/1", Some(&body))
        .await;
    assert_eq!(st.as_u16(), 201);
    let dubbo = json!({"protocol": {"name": "dubbo"},
                       "upstream": {"nodes": {"127.0.0.1:6379": 1}}})
    .to_string();
    let (st, v) = s
        .call(Method::PUT, "/apisix/admin/stream_routes/2", Some(&dubbo))
        .await;
    assert_eq!(
        (st.as_u16(), v["error_msg"].as_str()),
        (400, Some("unknown protocol [dubbo]"))
    );
}

#[tokio::test]
async fn limit_bandwidth_on_a_protocol_route_is_refused_not_ignored() {
    let yaml = "xrpc:\n  protocols:\n    - name: redis\nstream_plugins: [limit-bandwidth]\n";
    let spec = ListenSpec::new("127.0.0.1:0".parse().expect("addr"));
    let s = TestServer::with_tcp_specs(vec![spec], yaml).await;
    let body = json!({"protocol": {"name": "redis"},
                      "plugins": {"limit-bandwidth": {"download_rate": 1000}},
                      "upstream": {"nodes": {"127.0.0.1:6379": 1}}})
    .to_string();
    let (st, v) = s
        .call(Method::PUT, "/apisix/admin/stream_routes/1", Some(&body))
        .await;
    assert!(st.is_client_error(), "{st} {v}");
    let msg = v["error_msg"].as_str().unwrap_or_default();
    assert!(
        msg.contains("limit-bandwidth does not apply to protocol"),
        "{v}"
    );
    let (st, _) = s
        .call(Method::GET, "/apisix/admin/stream_routes/1", None)
        .await;
    assert_eq!(st.as_u16(), 404, "nothing stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unlisted_protocol_in_apisix_yaml_refuses_its_clients() {
    let redis = Redis::start();
    let (s, _file) = TestServer::standalone_text(&format!(
        "stream_routes:\n  - id: r\n    protocol: {{name: redis}}\n    \
         upstream: {{nodes: {{\"{}\": 1}}}}\n#END\n",
        redis.addr
    ))
    .await;
    let skipped = s.skipped().await;
    assert_eq!(
        skipped["skipped"],
        json!([{"type": "stream_routes", "id": "r", "reason": "unknown protocol [redis]"}]),
        "{skipped}"
    );
    // Not proxied as plain TCP: the client is refused.
    let mut c = connect(s.tcp[0]).await;
    c.write_all(&cmd(&["PING"])).await.expect("write");
    let mut rest = Vec::new();
    let _ = within(5, c.read_to_end(&mut rest)).await;
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
}
