//! Service discovery through the real server: a real dnsmasq whose records
//! change while connections run (A with a port, SRV, TTL refresh), node
//! host names with several addresses, unconfigured registries, empty
//! registries; Consul and Kubernetes against small in-test HTTP servers
//! answering with their documented bodies (no real Consul or Kubernetes).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apisix_stream::config::ListenSpec;
use apisix_stream::discovery::resolver::{Qtype, Resolver};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};

use crate::backend::{read_line, roundtrip, Backend, Mode};
use crate::harness::{eventually, greeting, within, TestServer};

/// A dnsmasq on a loopback port answering for `*.test` from a hosts file
/// (TTL 1 s); SIGHUP makes it read the file again. Killed when dropped.
struct Dnsmasq {
    child: Child,
    port: u16,
    hosts: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Dnsmasq {
    /// Start on a free port (again on another one if that port was taken).
    async fn start(hosts: &str, extra: &[String]) -> Dnsmasq {
        for _ in 0..20 {
            if let Some(d) = Self::start_once(hosts, extra).await {
                return d;
            }
        }
        panic!("dnsmasq did not start");
    }

    async fn start_once(hosts: &str, extra: &[String]) -> Option<Dnsmasq> {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("hosts");
        std::fs::write(&file, hosts).expect("hosts file");
        // dnsmasq binds the port for UDP and TCP.
        let port = crate::harness::free_port();
        let child = Command::new("dnsmasq")
            .args([
                "-k",
                &format!("--port={port}"),
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--no-resolv",
                "--no-hosts",
                "--local=/test/",
                &format!("--addn-hosts={}", file.display()),
                "--local-ttl=1",
                "--pid-file",
                "--user=root",
                &format!("--log-facility={}", dir.path().join("log").display()),
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq runs (apt-get install dnsmasq)");
        let mut d = Dnsmasq {
            child,
            port,
            hosts: file,
            _dir: dir,
        };
        let r = d.resolver();
        // Answering, or exited (the port was taken after all): stop waiting
        // as soon as either is known; the caller tries another port.
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if !matches!(d.child.try_wait(), Ok(None)) {
                return None;
            }
            if r.query("ready.test", Qtype::A).await.is_ok() {
                return Some(d);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    fn server(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn resolver(&self) -> Resolver {
        Resolver::new(
            vec![SocketAddr::from(([127, 0, 0, 1], self.port))],
            Duration::from_secs(1),
        )
    }

    /// Replace the records and have dnsmasq read them again.
    fn set_hosts(&self, hosts: &str) {
        std::fs::write(&self.hosts, hosts).expect("hosts file");
        let st = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .expect("kill -HUP");
        assert!(st.success());
    }
}

/// Route 1 (no server_port filter) to the service `name` of registry `kind`.
async fn route_by_discovery(srv: &mut TestServer, kind: &str, name: &str) {
    srv.put_route(
        "1",
        &json!({"upstream": {"discovery_type": kind, "service_name": name, "type": "roundrobin"}}),
    )
    .await;
}

/// A server with one TCP listener, `apisix_extra` under `apisix:` and
/// `top` appended at the top level.
async fn server(apisix_extra: &str, top: &str) -> TestServer {
    let (apisix_extra, top) = (apisix_extra.to_string(), top.to_string());
    TestServer::start_full(
        tempfile::tempdir().expect("tempdir"),
        move |y| {
            let y = y.replacen(
                "  proxy_mode: stream\n",
                &format!("  proxy_mode: stream\n{apisix_extra}"),
                1,
            );
            format!("{y}{top}")
        },
        |c| {
            if let Some(sp) = c.apisix.stream_proxy.as_mut() {
                sp.tcp = vec![ListenSpec::new("127.0.0.1:0".parse().expect("addr"))];
            }
        },
    )
    .await
}

/// Two greeting backends on one port: 127.0.0.1 ("one") and 127.0.0.2 ("two").
async fn two_loopback_backends() -> (Backend, Backend, u16) {
    for _ in 0..20 {
        let one = Backend::start("one", Mode::Greet).await;
        let port = one.addr.port();
        let addr = SocketAddr::from(([127, 0, 0, 2], port));
        if let Ok(l) = std::net::TcpListener::bind(addr) {
            drop(l);
            let two = Backend::start_on(addr, "two", Mode::Greet).await;
            return (one, two, port);
        }
    }
    panic!("no port free on both 127.0.0.1 and 127.0.0.2");
}

/// Greetings of `n` connections through `proxy`.
async fn greetings(proxy: SocketAddr, n: usize) -> Vec<Option<String>> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(greeting(proxy).await);
    }
    out
}

fn route_stat(stats: &Value, id: &str, field: &str) -> u64 {
    stats["routes"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["id"] == id))
        .and_then(|r| r[field].as_u64())
        .unwrap_or(0)
}

#[tokio::test]
async fn dns_a_records_with_a_port_follow_dnsmasq_while_connections_run() {
    let (_one, _two, port) = two_loopback_backends().await;
    let dns = Dnsmasq::start("127.0.0.1 svc.test\n", &[]).await;
    let mut srv = server(
        "",
        &format!("discovery:\n  dns:\n    servers: [\"{}\"]\n", dns.server()),
    )
    .await;
    let proxy = srv.tcp[0];
    route_by_discovery(&mut srv, "dns", &format!("svc.test:{port}")).await;
    let served = eventually(10, async || greeting(proxy).await.as_deref() == Some("one")).await;
    assert!(served, "the A record's address serves");

    // A session held across the change keeps its node.
    let mut held = within(5, TcpStream::connect(proxy)).await.expect("connect");
    assert_eq!(read_line(&mut held).await, "one");

    dns.set_hosts("127.0.0.2 svc.test\n");
    let started = Instant::now();
    let moved = eventually(10, async || greeting(proxy).await.as_deref() == Some("two")).await;
    assert!(moved, "new connections follow the changed record");
    println!(
        "record change served after {:?} (TTL 1 s)",
        started.elapsed()
    );
    assert_eq!(roundtrip(&mut held, b"still here").await, b"still here");

    dns.set_hosts("127.0.0.1 svc.test\n127.0.0.2 svc.test\n");
    let both = eventually(10, async || {
        let g = greetings(proxy, 4).await;
        g.contains(&Some("one".into())) && g.contains(&Some("two".into()))
    })
    .await;
    assert!(both, "both addresses are balanced once both records exist");
    let stats = srv.stream_stats().await;
    let nodes: Vec<&str> = stats["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|n| n["node"].as_str())
        .collect();
    assert!(
        nodes.contains(&format!("127.0.0.2:{port}").as_str()),
        "discovered nodes are reported: {nodes:?}"
    );
    assert_eq!(roundtrip(&mut held, b"and now").await, b"and now");
    drop(held);
    srv.stop().await;
}

#[tokio::test]
async fn health_checks_run_on_discovered_nodes() {
    let one = Backend::start("one", Mode::Greet).await;
    let port = one.addr.port();
    let dead = SocketAddr::from(([127, 0, 0, 2], port));
    let dns = Dnsmasq::start("127.0.0.2 svc.test\n127.0.0.1 svc.test\n", &[]).await;
    let mut srv = server(
        "",
        &format!("discovery:\n  dns:\n    servers: [\"{}\"]\n", dns.server()),
    )
    .await;
    let proxy = srv.tcp[0];
    srv.put_route(
        "1",
        &json!({"upstream": {"discovery_type": "dns", "service_name": format!("svc.test:{port}"),
            "type": "roundrobin", "retries": 0,
            "checks": {"active": {"type": "tcp", "timeout": 1,
                "healthy": {"interval": 1, "successes": 1},
                "unhealthy": {"interval": 1, "tcp_failures": 1}}}}}),
    )
    .await;
    let url = format!("http://{}/v1/healthcheck/stream_routes/1", srv.control());
    let marked = eventually(15, async || {
        let Ok(res) = reqwest::get(&url).await else {
            return false;
        };
        let report: Value = res.json().await.unwrap_or(Value::Null);
        report["nodes"].as_array().is_some_and(|n| {
            n.iter().any(|n| {
                n["ip"] == dead.ip().to_string() && n["port"] == port && n["status"] == "unhealthy"
            })
        })
    })
    .await;
    assert!(
        marked,
        "the active check probes the discovered node that is down"
    );
    let before = route_stat(&srv.stream_stats().await, "1", "connect_failures");
    let got = greetings(proxy, 6).await;
    assert!(
        got.iter().all(|g| g.as_deref() == Some("one")),
        "the unhealthy discovered node is skipped: {got:?}"
    );
    let after = route_stat(&srv.stream_stats().await, "1", "connect_failures");
    assert_eq!(before, after, "no connection was sent to the dead node");
    srv.stop().await;
}

#[tokio::test]
async fn dns_srv_records_give_ports_and_priorities() {
    let a = Backend::start("a", Mode::Greet).await;
    let b = Backend::start("b", Mode::Greet).await;
    let srv_a = format!(
        "--srv-host=_echo._tcp.svc.test,a.svc.test,{},0,1",
        a.addr.port()
    );
    let srv_b = format!(
        "--srv-host=_echo._tcp.svc.test,b.svc.test,{},10,1",
        b.addr.port()
    );
    let dns = Dnsmasq::start(
        "127.0.0.1 a.svc.test\n127.0.0.1 b.svc.test\n",
        &[srv_a, srv_b],
    )
    .await;
    let mut srv = server(
        "",
        &format!(
            "discovery:\n  dns:\n    servers: [\"{}\"]\n    order: [SRV, A]\n",
            dns.server()
        ),
    )
    .await;
    let proxy = srv.tcp[0];
    route_by_discovery(&mut srv, "dns", "_echo._tcp.svc.test").await;
    let first = eventually(10, async || greeting(proxy).await.as_deref() == Some("a")).await;
    assert!(first, "the lowest SRV priority serves");
    assert!(
        greetings(proxy, 5)
            .await
            .iter()
            .all(|g| g.as_deref() == Some("a")),
        "priority 10 is only a fallback"
    );
    // The preferred target loses its address: the other one takes over.
    dns.set_hosts("127.0.0.1 b.svc.test\n");
    let moved = eventually(10, async || greeting(proxy).await.as_deref() == Some("b")).await;
    assert!(moved, "SRV targets are re-resolved when their TTL runs out");
    srv.stop().await;
}

#[tokio::test]
async fn node_host_name_tries_every_address_in_order() {
    let live = Backend::start("live", Mode::Greet).await;
    let port = live.addr.port();
    // 127.0.0.2 has nothing on this port: connecting there is refused.
    let dns = Dnsmasq::start("127.0.0.2 two.test\n127.0.0.1 two.test\n", &[]).await;
    let answer = dns
        .resolver()
        .query("two.test", Qtype::A)
        .await
        .expect("answer");
    println!("dnsmasq answers two.test with {:?}", answer.records);
    let mut srv = server(
        &format!(
            "  dns_resolver: [\"{}\"]\n  enable_ipv6: false\n",
            dns.server()
        ),
        "",
    )
    .await;
    let proxy = srv.tcp[0];
    srv.put_route(
        "1",
        &json!({"upstream": {"nodes": {format!("two.test:{port}"): 1}, "type": "roundrobin",
            "retries": 0}}),
    )
    .await;
    let got = greetings(proxy, 6).await;
    assert!(
        got.iter().all(|g| g.as_deref() == Some("live")),
        "every connection reaches the address that accepts: {got:?}"
    );
    let stats = srv.stream_stats().await;
    assert_eq!(route_stat(&stats, "1", "connect_failures"), 0, "{stats}");
    srv.stop().await;
}

#[tokio::test]
async fn unconfigured_registry_is_refused_and_empty_registry_closes_fast() {
    let dns = Dnsmasq::start("127.0.0.1 other.test\n", &[]).await;
    let mut srv = server(
        "",
        &format!("discovery:\n  dns:\n    servers: [\"{}\"]\n", dns.server()),
    )
    .await;
    let (st, body) = srv
        .call(
            Method::PUT,
            "/apisix/admin/stream_routes/9",
            Some(
                &json!({"upstream": {"discovery_type": "consul", "service_name": "a"}}).to_string(),
            ),
        )
        .await;
    assert_eq!(st.as_u16(), 400, "{body}");
    assert_eq!(body["error_msg"], "discovery consul is uninitialized");
    let (st, _) = srv
        .call(Method::GET, "/apisix/admin/stream_routes/9", None)
        .await;
    assert_eq!(st.as_u16(), 404, "nothing stored");
    let (st, body) = srv
        .call(
            Method::PUT,
            "/apisix/admin/upstreams/9",
            Some(&json!({"discovery_type": "nacos", "service_name": "a"}).to_string()),
        )
        .await;
    assert_eq!(st.as_u16(), 400, "{body}");

    let proxy = srv.tcp[0];
    route_by_discovery(&mut srv, "dns", "nothing.test:4000").await;
    for _ in 0..3 {
        let started = Instant::now();
        assert_eq!(greeting(proxy).await, None, "closed without data");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "closed fast, not after a timeout: {:?}",
            started.elapsed()
        );
    }
    let stats = srv.stream_stats().await;
    assert!(route_stat(&stats, "1", "connect_failures") >= 3, "{stats}");
    srv.stop().await;
}

/// What an in-test HTTP server answers.
enum Reply {
    Json(u16, Vec<(String, String)>, Value),
    /// A chunked body fed line by line until the sender is dropped.
    Stream(mpsc::UnboundedReceiver<String>),
}

type Handler = Arc<
    dyn Fn(
            String,
            HashMap<String, String>,
            HashMap<String, String>,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Reply> + Send>>
        + Send
        + Sync,
>;

/// A minimal HTTP/1.1 server (one request per connection) for registry stand-ins.
async fn http_server(handler: Handler) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let handler = handler.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut b).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&b[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head).into_owned();
                let mut lines = text.lines();
                let target = lines
                    .next()
                    .and_then(|l| l.split_whitespace().nth(1))
                    .unwrap_or("/")
                    .to_string();
                let headers: HashMap<String, String> = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                    .collect();
                let (path, query) = target.split_once('?').unwrap_or((&target, ""));
                let query: HashMap<String, String> = query
                    .split('&')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                match handler(path.to_string(), query, headers).await {
                    Reply::Json(status, extra, body) => {
                        let body = body.to_string();
                        let mut h = format!(
                            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
                            body.len()
                        );
                        for (k, v) in extra {
                            h.push_str(&format!("{k}: {v}\r\n"));
                        }
                        h.push_str("\r\n");
                        let _ = s.write_all(h.as_bytes()).await;
                        let _ = s.write_all(body.as_bytes()).await;
                    }
                    Reply::Stream(mut rx) => {
                        let h = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
                        if s.write_all(h.as_bytes()).await.is_err() {
                            return;
                        }
                        while let Some(line) = rx.recv().await {
                            let chunk = format!("{:x}\r\n{line}\n\r\n", line.len() + 1);
                            if s.write_all(chunk.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                        let _ = s.write_all(b"0\r\n\r\n").await;
                    }
                }
            });
        }
    });
    (addr, task)
}

/// Consul's state as the stand-in serves it.
#[derive(Default)]
struct Consul {
    index: u64,
    services: HashMap<String, Vec<(String, u16)>>,
}

#[tokio::test]
async fn consul_blocking_queries_bring_node_changes() {
    let c1 = Backend::start("c1", Mode::Greet).await;
    let c2 = Backend::start("c2", Mode::Greet).await;
    let state = Arc::new(Mutex::new(Consul {
        index: 5,
        services: HashMap::from([(
            "echo".to_string(),
            vec![("127.0.0.1".to_string(), c1.addr.port())],
        )]),
    }));
    let changed = Arc::new(Notify::new());
    let blocked = Arc::new(Mutex::new(0usize));
    let handler: Handler = {
        let (state, changed, blocked) = (state.clone(), changed.clone(), blocked.clone());
        Arc::new(move |path, query, headers| {
            let (state, changed, blocked) = (state.clone(), changed.clone(), blocked.clone());
            Box::pin(async move {
                if headers.get("x-consul-token").map(String::as_str) != Some("s3cret") {
                    return Reply::Json(403, vec![], json!("ACL not found"));
                }
                let asked: u64 = query.get("index").and_then(|i| i.parse().ok()).unwrap_or(0);
                let now = state.lock().expect("state").index;
                if asked == now
                    && (path == "/v1/catalog/services" || path == "/v1/health/state/any")
                {
                    // A blocking query: answer when something changes.
                    *blocked.lock().expect("count") += 1;
                    let _ = tokio::time::timeout(Duration::from_secs(30), changed.notified()).await;
                }
                let st = state.lock().expect("state");
                let index = vec![("X-Consul-Index".to_string(), st.index.to_string())];
                let body = match path.as_str() {
                    "/v1/catalog/services" => {
                        let mut m = serde_json::Map::new();
                        m.insert("consul".into(), json!([]));
                        for k in st.services.keys() {
                            m.insert(k.clone(), json!(["v1"]));
                        }
                        Value::Object(m)
                    }
                    "/v1/health/state/any" => json!([]),
                    p if p.starts_with("/v1/health/service/") => {
                        assert_eq!(query.get("passing").map(String::as_str), Some("true"));
                        let name = p.trim_start_matches("/v1/health/service/");
                        let nodes = st.services.get(name).cloned().unwrap_or_default();
                        Value::Array(
                            nodes
                                .iter()
                                .map(|(h, p)| {
                                    json!({
                            "Node": {"Node": "n1", "Address": "10.9.9.9"},
                            "Service": {"ID": format!("{name}-{p}"), "Service": name,
                                "Address": h, "Port": p},
                            "Checks": [{"Status": "passing"}]})
                                })
                                .collect(),
                        )
                    }
                    _ => return Reply::Json(404, vec![], json!("not found")),
                };
                Reply::Json(200, index, body)
            })
        })
    };
    let (consul, task) = http_server(handler).await;
    let mut srv = server(
        "",
        &format!(
            "discovery:\n  consul:\n    servers: [\"http://{consul}\"]\n    token: s3cret\n    timeout:\n      wait: 30\n"
        ),
    )
    .await;
    let proxy = srv.tcp[0];
    route_by_discovery(&mut srv, "consul", "echo").await;
    let served = eventually(10, async || greeting(proxy).await.as_deref() == Some("c1")).await;
    assert!(served, "the consul service's node serves");
    let waiting = eventually(5, async || *blocked.lock().expect("count") > 0).await;
    assert!(waiting, "the registry holds a blocking query");

    {
        let mut st = state.lock().expect("state");
        st.index += 1;
        st.services
            .insert("echo".into(), vec![("127.0.0.1".into(), c2.addr.port())]);
    }
    let started = Instant::now();
    changed.notify_waiters();
    let moved = eventually(10, async || greeting(proxy).await.as_deref() == Some("c2")).await;
    assert!(moved, "a change wakes the blocking query");
    println!(
        "consul change served after {:?} (wait 30 s)",
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    // The service loses its nodes: connections close at once, counted.
    {
        let mut st = state.lock().expect("state");
        st.index += 1;
        st.services.remove("echo");
    }
    changed.notify_waiters();
    let empty = eventually(10, async || greeting(proxy).await.is_none()).await;
    assert!(empty, "no node: closed without data");
    srv.stop().await;
    task.abort();
}

#[tokio::test]
async fn kubernetes_endpoints_list_then_watch_events() {
    let k1 = Backend::start("k1", Mode::Greet).await;
    let k2 = Backend::start("k2", Mode::Greet).await;
    let (tx, rx) = mpsc::unbounded_channel::<String>();
    let rx = Arc::new(Mutex::new(Some(rx)));
    let endpoints = |port: u16| {
        json!({"kind": "Endpoints", "apiVersion": "v1",
            "metadata": {"namespace": "default", "name": "echo", "resourceVersion": "11"},
            "subsets": [{"addresses": [{"ip": "127.0.0.1"}],
                "ports": [{"name": "tcp", "port": port, "protocol": "TCP"}]}]})
    };
    let first = endpoints(k1.addr.port());
    let handler: Handler = {
        let rx = rx.clone();
        Arc::new(move |path, query, headers| {
            let (rx, first) = (rx.clone(), first.clone());
            Box::pin(async move {
                if headers.get("authorization").map(String::as_str) != Some("Bearer t0ken") {
                    return Reply::Json(401, vec![], json!({"kind": "Status", "code": 401}));
                }
                if path != "/api/v1/endpoints" {
                    return Reply::Json(404, vec![], json!({"kind": "Status", "code": 404}));
                }
                if query.get("watch").map(String::as_str) == Some("true") {
                    assert_eq!(query.get("resourceVersion").map(String::as_str), Some("10"));
                    return match rx.lock().expect("rx").take() {
                        Some(rx) => Reply::Stream(rx),
                        // Later watches: hold them open, no event.
                        None => {
                            let (keep, rx) = mpsc::unbounded_channel();
                            std::mem::forget(keep);
                            Reply::Stream(rx)
                        }
                    };
                }
                Reply::Json(
                    200,
                    vec![],
                    json!({"kind": "EndpointsList", "apiVersion": "v1",
                    "metadata": {"resourceVersion": "10"}, "items": [first]}),
                )
            })
        })
    };
    let (api, task) = http_server(handler).await;
    let mut srv = server(
        "",
        &format!(
            "discovery:\n  kubernetes:\n    service:\n      schema: http\n      host: \"127.0.0.1\"\n      port: \"{}\"\n    client:\n      token: t0ken\n",
            api.port()
        ),
    )
    .await;
    let proxy = srv.tcp[0];
    route_by_discovery(&mut srv, "kubernetes", "default/echo:tcp").await;
    let served = eventually(10, async || greeting(proxy).await.as_deref() == Some("k1")).await;
    assert!(served, "the listed endpoints serve");
    let event = json!({"type": "MODIFIED", "object": endpoints(k2.addr.port())});
    tx.send(event.to_string()).expect("watch open");
    let moved = eventually(10, async || greeting(proxy).await.as_deref() == Some("k2")).await;
    assert!(moved, "a watch event moves the nodes");
    let deleted = json!({"type": "DELETED", "object": endpoints(k2.addr.port())});
    tx.send(deleted.to_string()).expect("watch open");
    let gone = eventually(10, async || greeting(proxy).await.is_none()).await;
    assert!(gone, "a deleted service has no node");
    srv.stop().await;
    task.abort();
}
