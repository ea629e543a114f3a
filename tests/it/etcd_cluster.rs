//! The etcd back-end against a real three-member etcd cluster on loopback,
//! with two `serve` processes sharing it: a hung member (`kill -STOP`), a
//! killed leader and a whole-cluster outage. Route changes keep reaching
//! every proxy within seconds, writes fail over inside one Admin request,
//! and no connection through the proxies fails meanwhile.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apisix_stream::config::Etcd;
use apisix_stream::model::{EnabledPlugins, Kind};
use apisix_stream::store::etcd::EtcdStore;
use apisix_stream::store::{Expect, Store, StoreError};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::backend::{Backend, Mode};
use crate::harness::{
    bin, call, eventually, free_port, greeting, program, wait_listening_logged, within,
    ChildConfig, ChildGuard, KEY,
};

/// One member of the test cluster.
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

/// Three etcd members on loopback, killed when dropped.
struct Cluster {
    dir: tempfile::TempDir,
    members: Vec<Member>,
}

impl Cluster {
    /// A fresh three-member cluster, every member answering.
    async fn start() -> Cluster {
        let members: Vec<Member> = (0..3)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                child: None,
            })
            .collect();
        let mut c = Cluster {
            dir: tempfile::tempdir().expect("tempdir"),
            members,
        };
        for i in 0..3 {
            c.run(i);
        }
        for i in 0..3 {
            c.wait_serving(i).await;
        }
        assert!(
            eventually(20, async || c.leader().await.is_some()).await,
            "no leader elected"
        );
        c
    }

    fn url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.members[i].client_port)
    }

    /// Start member `i` (again) on its data dir.
    fn run(&mut self, i: usize) {
        let initial: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect();
        let m = &self.members[i];
        assert!(m.child.is_none(), "{} already running", m.name);
        let client = format!("http://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{}.log", m.name)))
            .expect("etcd log");
        let child = Command::new(program("etcd", "etcd-server"))
            .arg("--data-dir")
            .arg(self.dir.path().join(&m.name))
            .args(["--name", &m.name])
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &initial.join(",")])
            .args(["--initial-cluster-token", "apisix-stream-test"])
            .args(["--initial-cluster-state", "new"])
            // Elections within about half a second (defaults: 100 ms
            // heartbeats, 1 s election timeout), so a new leader is there
            // well inside the proxies' 3 s write timeout even while the
            // rest of the suite loads both CPUs.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        self.members[i].child = Some(child);
    }

    /// Wait until member `i` serves clients (its listener is up).
    async fn wait_serving(&mut self, i: usize) {
        let addr: SocketAddr = format!("127.0.0.1:{}", self.members[i].client_port)
            .parse()
            .expect("addr");
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            if let Some(Ok(Some(st))) = self.members[i].child.as_mut().map(Child::try_wait) {
                panic!("etcd {} exited with {st}", self.members[i].name);
            }
            assert!(Instant::now() < deadline, "etcd {i} not serving after 20s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `kill -<sig>` member `i`.
    fn signal(&self, i: usize, sig: &str) {
        let pid = self.members[i]
            .child
            .as_ref()
            .expect("member running")
            .id()
            .to_string();
        let st = Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill runs");
        assert!(st.success(), "kill {sig} {pid}");
    }

    /// Kill member `i` for good (SIGKILL).
    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The index of the leader, as the members answering say.
    async fn leader(&self) -> Option<usize> {
        let http = reqwest::Client::new();
        let mut ids = Vec::new();
        let mut leader = None;
        for i in 0..self.members.len() {
            let res = tokio::time::timeout(
                Duration::from_millis(500),
                http.post(format!("{}/v3/maintenance/status", self.url(i)))
                    .body("{}")
                    .send(),
            )
            .await;
            let Ok(Ok(res)) = res else {
                ids.push(String::new());
                continue;
            };
            let v: Value = res.json().await.unwrap_or(Value::Null);
            ids.push(v["header"]["member_id"].as_str().unwrap_or("").to_string());
            if let Some(l) = v["leader"].as_str() {
                leader = Some(l.to_string());
            }
        }
        let leader = leader?;
        ids.iter().position(|id| *id == leader)
    }

    /// `etcdctl` against these members; `None` when it failed.
    async fn ctl(&self, members: &[usize], args: &[&str]) -> Option<String> {
        let endpoints: Vec<String> = members.iter().map(|i| self.url(*i)).collect();
        let out = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::process::Command::new(program("etcdctl", "etcd-client"))
                .env("ETCDCTL_API", "3")
                .arg(format!("--endpoints={}", endpoints.join(",")))
                .args(["--dial-timeout=2s", "--command-timeout=3s"])
                .args(args)
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .ok()?
        .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The keys under `prefix`, through these members.
    async fn keys(&self, members: &[usize], prefix: &str) -> Vec<String> {
        let out = self
            .ctl(members, &["get", "--prefix", "--keys-only", prefix])
            .await
            .expect("etcdctl get");
        out.lines()
            .filter(|l| !l.is_empty() && !l.ends_with('/'))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            if self.members[i].child.is_some() {
                // A stopped member must be resumed to die.
                self.signal(i, "-CONT");
            }
            self.kill(i);
        }
    }
}

/// A `serve` process on the cluster, logging to a file.
struct Proxy {
    _child: ChildGuard,
    admin: SocketAddr,
    tcp: SocketAddr,
    control: SocketAddr,
    metrics: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Proxy {
    /// A proxy whose etcd endpoints are `hosts`, in this order.
    fn start(hosts: &[String]) -> Proxy {
        let dir = tempfile::tempdir().expect("tempdir");
        let [admin, tcp, control, metrics] = [0; 4].map(|_| free_port());
        let list: String = hosts.iter().map(|h| format!("      - \"{h}\"\n")).collect();
        let cfg = ChildConfig::new(admin)
            .tcp(tcp)
            .control(control)
            .metrics(metrics)
            .etcd(&format!(
                "    host:\n{list}    prefix: /apisix\n    timeout: 3\n    resync_delay: 1\n"
            ))
            .write(dir.path());
        let log = dir.path().join("serve.log");
        let out = std::fs::File::create(&log).expect("log");
        let child = Command::new(bin())
            .args(["serve", "-c"])
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(out)
            .env("RUST_LOG", "info")
            .spawn()
            .expect("spawn serve");
        let mut child = ChildGuard { child };
        let at = |port: u16| -> SocketAddr { format!("127.0.0.1:{port}").parse().expect("addr") };
        wait_listening_logged(at(admin), &mut child, &log);
        wait_listening_logged(at(tcp), &mut child, &log);
        Proxy {
            _child: child,
            admin: at(admin),
            tcp: at(tcp),
            control: at(control),
            metrics: at(metrics),
            log,
            _dir: dir,
        }
    }

    async fn admin(&self, method: Method, path: &str, body: Option<&str>) -> (StatusCode, Value) {
        call(
            &reqwest::Client::new(),
            self.admin,
            Some(KEY),
            method,
            path,
            body,
        )
        .await
    }

    /// `GET /v1/etcd` of the Control API.
    async fn etcd_state(&self) -> Value {
        let res = within(5, reqwest::get(format!("http://{}/v1/etcd", self.control)))
            .await
            .expect("control API");
        within(5, res.json()).await.expect("JSON")
    }

    /// Whether endpoint `url` is reported healthy.
    async fn healthy(&self, url: &str) -> bool {
        let v = self.etcd_state().await;
        v["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["endpoint"] == url)
            .is_some_and(|e| e["healthy"] == true)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Log lines holding every one of `words`.
    fn log_lines(&self, words: &[&str]) -> usize {
        self.log_text()
            .lines()
            .filter(|l| words.iter().all(|w| l.contains(w)))
            .count()
    }
}

fn route(backend: &Backend) -> String {
    json!({"upstream": {"type": "roundrobin", "nodes": {backend.addr.to_string(): 1}}}).to_string()
}

/// Wait until every proxy greets with `want`; how long it took.
async fn all_forward(proxies: &[&Proxy], want: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    for p in proxies {
        loop {
            if greeting(p.tcp).await.as_deref() == Some(want) {
                break;
            }
            assert!(
                start.elapsed() < limit,
                "{} does not forward to {want} after {limit:?}\n{}",
                p.tcp,
                p.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    start.elapsed()
}

/// Connections through every proxy, all the time: counts those that got
/// no greeting (route 1 exists throughout, so every one must get one).
struct Traffic {
    stop: Arc<AtomicBool>,
    failed: Arc<AtomicU64>,
    done: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    fn start(proxies: &[&Proxy]) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let failed = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicU64::new(0));
        let tasks = proxies
            .iter()
            .map(|p| {
                let (stop, failed, done, addr) =
                    (stop.clone(), failed.clone(), done.clone(), p.tcp);
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        if greeting(addr).await.is_none() {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                })
            })
            .collect();
        Traffic {
            stop,
            failed,
            done,
            tasks,
        }
    }

    /// Stop; (connections made, connections failed).
    async fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = within(10, t).await;
        }
        (
            self.done.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_member_is_passed_over_by_watches_and_writes() {
    let cluster = Cluster::start().await;
    let leader = cluster.leader().await.expect("leader");
    let hung = (leader + 1) % 3;
    let others: Vec<usize> = (0..3).filter(|i| *i != hung).collect();
    // Both proxies start with the member that will hang, so their watches
    // and writes go to it first.
    let hosts: Vec<String> = [hung, others[0], others[1]]
        .iter()
        .map(|i| cluster.url(*i))
        .collect();
    let a = Proxy::start(&hosts);
    let b = Proxy::start(&hosts);
    let b1 = Backend::start("b1", Mode::Greet).await;
    let b2 = Backend::start("b2", Mode::Greet).await;
    let b3 = Backend::start("b3", Mode::Greet).await;
    let (st, v) = a
        .admin(
            Method::PUT,
            "/apisix/admin/stream_routes/1",
            Some(&route(&b1)),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    all_forward(&[&a, &b], "b1", Duration::from_secs(5)).await;
    let traffic = Traffic::start(&[&a, &b]);

    cluster.signal(hung, "-STOP");
    let hung_at = Instant::now();
    // At once: a route change written to the two others, and writes
    // through proxy A, whose first endpoint is the hung member.
    let change = async {
        let out = cluster
            .ctl(&others, &["put", "/apisix/stream_routes/1", &route(&b2)])
            .await;
        assert!(out.is_some(), "etcdctl put through the healthy members");
        all_forward(&[&a, &b], "b2", Duration::from_secs(5)).await;
        hung_at.elapsed()
    };
    let put = async {
        let start = Instant::now();
        let (st, v) = a
            .admin(
                Method::PUT,
                "/apisix/admin/stream_routes/3",
                Some(&route(&b3)),
            )
            .await;
        (st, v, start.elapsed())
    };
    let post = async {
        let start = Instant::now();
        let body = json!({"nodes": {b3.addr.to_string(): 1}}).to_string();
        let (st, v) = a
            .admin(Method::POST, "/apisix/admin/upstreams", Some(&body))
            .await;
        (st, v, start.elapsed())
    };
    let (forwarded, (put_st, put_v, put_took), (post_st, post_v, post_took)) =
        tokio::join!(change, put, post);
    eprintln!(
        "member hung: change forwarded by both proxies after {:.2}s; PUT via a proxy whose first endpoint hangs: {} after {:.2}s; POST: {} after {:.2}s",
        forwarded.as_secs_f64(),
        put_st,
        put_took.as_secs_f64(),
        post_st,
        post_took.as_secs_f64()
    );
    assert!(forwarded < Duration::from_secs(5), "{forwarded:?}");
    assert_eq!(put_st, StatusCode::CREATED, "{put_v}");
    assert!(put_took < Duration::from_secs(4), "PUT took {put_took:?}");
    assert_eq!(post_st, StatusCode::CREATED, "{post_v}");
    assert!(
        post_took < Duration::from_secs(4),
        "POST took {post_took:?}"
    );
    // Both landed, once: one route 3 and exactly one upstream.
    assert_eq!(
        cluster.keys(&others, "/apisix/stream_routes/").await,
        ["/apisix/stream_routes/1", "/apisix/stream_routes/3"]
    );
    assert_eq!(cluster.keys(&others, "/apisix/upstreams/").await.len(), 1);

    // The Control API and the metrics tell which member fails.
    let hung_url = cluster.url(hung);
    let state = a.etcd_state().await;
    let row = state["endpoints"]
        .as_array()
        .and_then(|e| e.iter().find(|e| e["endpoint"] == hung_url.as_str()))
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(row["healthy"], false, "{state}");
    assert!(
        row["last_error"].as_str().is_some_and(|e| !e.is_empty()),
        "{state}"
    );
    assert!(row["failing_since"].is_string(), "{state}");
    assert_eq!(state["reachable"], true, "{state}");
    let metrics = within(
        5,
        reqwest::get(format!("http://{}/apisix/prometheus/metrics", a.metrics)),
    )
    .await
    .expect("metrics");
    let text = within(5, metrics.text()).await.expect("text");
    assert!(text.contains("apisix_etcd_reachable 1"), "{text}");
    assert!(
        text.contains("apisix_etcd_modify_indexes{key=\"stream_routes\"}"),
        "{text}"
    );

    // A newer version of route 3, then the member comes back: it is
    // healthy again within seconds, and the write it held (if it ever
    // applies it) does not undo the newer version.
    let newer = route(&b1);
    cluster
        .ctl(&others, &["put", "/apisix/stream_routes/3", &newer])
        .await
        .expect("etcdctl put");
    cluster.signal(hung, "-CONT");
    let back = Instant::now();
    for p in [&a, &b] {
        assert!(
            eventually(10, async || p.healthy(&hung_url).await).await,
            "{hung_url} never healthy again on {}",
            p.admin
        );
    }
    eprintln!(
        "member resumed: healthy again on both proxies after {:.2}s",
        back.elapsed().as_secs_f64()
    );
    let (done, failed) = traffic.finish().await;
    eprintln!("connections through the proxies meanwhile: {done}, failed: {failed}");
    assert_eq!(failed, 0, "connections failed");
    assert!(done > 0);
    let now = cluster
        .ctl(
            &[0, 1, 2],
            &["get", "/apisix/stream_routes/3", "--print-value-only"],
        )
        .await
        .expect("etcdctl get");
    assert_eq!(now.trim(), newer);
    // The watches moved to another member from the revision they had seen:
    // no full re-read was needed.
    for p in [&a, &b] {
        assert_eq!(
            p.log_lines(&["etcd watch moved to another endpoint", &hung_url]),
            1,
            "{}",
            p.log_text()
        );
        assert_eq!(
            p.log_lines(&["configuration reloaded from etcd"]),
            0,
            "{}",
            p.log_text()
        );
    }
    // One log line per change of state, not per request.
    for p in [&a, &b] {
        assert_eq!(
            p.log_lines(&["etcd endpoint failing", &hung_url]),
            1,
            "{}",
            p.log_text()
        );
        assert_eq!(
            p.log_lines(&["etcd endpoint healthy again", &hung_url]),
            1,
            "{}",
            p.log_text()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_follow_a_new_leader_and_a_cluster_back_from_an_outage() {
    let mut cluster = Cluster::start().await;
    let leader = cluster.leader().await.expect("leader");
    // Proxy A starts with the leader, proxy B with another member.
    let order =
        |first: usize| -> Vec<String> { (0..3).map(|k| cluster.url((first + k) % 3)).collect() };
    let a = Proxy::start(&order(leader));
    let b = Proxy::start(&order((leader + 1) % 3));
    let b1 = Backend::start("b1", Mode::Greet).await;
    let b2 = Backend::start("b2", Mode::Greet).await;
    let b3 = Backend::start("b3", Mode::Greet).await;
    let (st, v) = a
        .admin(
            Method::PUT,
            "/apisix/admin/stream_routes/1",
            Some(&route(&b1)),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    all_forward(&[&a, &b], "b1", Duration::from_secs(5)).await;
    let traffic = Traffic::start(&[&a, &b]);

    // The leader dies: writes through A (first endpoint: the leader) and B
    // (first endpoint: a follower) are answered 2xx across the election.
    cluster.kill(leader);
    let timed = async |p: &Proxy, path: &str, body: String| {
        let start = Instant::now();
        let (st, v) = p.admin(Method::PUT, path, Some(&body)).await;
        (st, v, start.elapsed())
    };
    let ((st, v, took), (st_b, v_b, took_b)) = tokio::join!(
        timed(&a, "/apisix/admin/stream_routes/1", route(&b2)),
        timed(
            &b,
            "/apisix/admin/upstreams/u1",
            json!({"nodes": {b2.addr.to_string(): 1}}).to_string()
        ),
    );
    eprintln!(
        "leader killed: PUT via the proxy starting with it {st} after {:.2}s, via the one starting with a follower {st_b} after {:.2}s",
        took.as_secs_f64(),
        took_b.as_secs_f64()
    );
    assert_eq!(st, StatusCode::OK, "{v}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(st_b, StatusCode::CREATED, "{v_b}");
    assert!(took_b < Duration::from_secs(5), "{took_b:?}");
    let forwarded = all_forward(&[&a, &b], "b2", Duration::from_secs(5)).await;
    eprintln!(
        "leader killed: change forwarded by both proxies {:.2}s after the 2xx",
        forwarded.as_secs_f64()
    );

    // Every member down: writes are refused (never a false 2xx), routes keep flowing.
    let rest: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    for i in &rest {
        cluster.kill(*i);
    }
    let (st, v) = a
        .admin(
            Method::PUT,
            "/apisix/admin/stream_routes/9",
            Some(&route(&b3)),
        )
        .await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(greeting(a.tcp).await.as_deref(), Some("b2"));
    assert_eq!(greeting(b.tcp).await.as_deref(), Some("b2"));

    // Two members back: once they have a quorum, the first PUT succeeds at once.
    for i in &rest {
        cluster.run(*i);
    }
    for i in &rest {
        cluster.wait_serving(*i).await;
    }
    let quorum = Instant::now();
    assert!(
        eventually(20, async || cluster
            .ctl(&rest, &["put", "/quorum-check", "1"])
            .await
            .is_some())
        .await,
        "no quorum after the restart"
    );
    eprintln!(
        "outage over: quorum back {:.2}s after the members restarted",
        quorum.elapsed().as_secs_f64()
    );
    let start = Instant::now();
    let (st, v) = b
        .admin(
            Method::PUT,
            "/apisix/admin/stream_routes/1",
            Some(&route(&b3)),
        )
        .await;
    let took = start.elapsed();
    eprintln!(
        "outage over: first PUT {st} after {:.3}s",
        took.as_secs_f64()
    );
    assert_eq!(st, StatusCode::OK, "{v}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    all_forward(&[&a, &b], "b3", Duration::from_secs(5)).await;
    // The refused write never landed.
    assert_eq!(
        cluster.keys(&rest, "/apisix/stream_routes/").await,
        ["/apisix/stream_routes/1"]
    );
    let (done, failed) = traffic.finish().await;
    eprintln!("connections through the proxies meanwhile: {done}, failed: {failed}");
    assert_eq!(failed, 0, "connections failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_checked_against_the_revision_last_seen() {
    let cluster = Cluster::start().await;
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    let conf = Etcd {
        host: (0..3).map(|i| cluster.url(i)).collect(),
        timeout: 3,
        resync_delay: 1,
        ..Etcd::default()
    };
    let store = within(
        20,
        EtcdStore::connect(&conf, EnabledPlugins::default(), cancel.clone()),
    )
    .await
    .expect("connects");
    let all = [0, 1, 2];
    let value = |port: u16| json!({"nodes": {format!("127.0.0.1:{port}"): 1}});
    let first = store
        .put(Kind::Upstream, "u1", value(1), Expect::Any)
        .await
        .expect("put");
    assert!(first.created);
    // Changed behind the store's back, then a PUT from a cache that may not
    // have seen it yet: the PUT still wins, as a PUT does.
    cluster
        .ctl(
            &all,
            &["put", "/apisix/upstreams/u1", &value(2).to_string()],
        )
        .await
        .expect("etcdctl put");
    let second = store
        .put(Kind::Upstream, "u1", value(3), Expect::Any)
        .await
        .expect("put over a newer version");
    assert!(!second.created);
    assert_eq!(second.entry.create_rev, first.entry.create_rev);
    let stored = cluster
        .ctl(&all, &["get", "/apisix/upstreams/u1", "--print-value-only"])
        .await
        .expect("etcdctl get");
    assert_eq!(
        serde_json::from_str::<Value>(stored.trim()).expect("JSON"),
        value(3)
    );
    // A POST's id taken meanwhile: the create does not overwrite it.
    let id = store.next_id().await.expect("id");
    cluster
        .ctl(
            &all,
            &[
                "put",
                &format!("/apisix/upstreams/{id}"),
                &value(4).to_string(),
            ],
        )
        .await
        .expect("etcdctl put");
    let taken = store.put(Kind::Upstream, &id, value(5), Expect::Any).await;
    assert!(matches!(taken, Err(StoreError::Conflict)), "{taken:?}");
    // A DELETE of an object changed meanwhile still deletes it.
    cluster
        .ctl(
            &all,
            &["put", "/apisix/upstreams/u1", &value(6).to_string()],
        )
        .await
        .expect("etcdctl put");
    let gone = store
        .delete(Kind::Upstream, "u1")
        .await
        .expect("delete")
        .expect("was there");
    assert_eq!(gone.id, "u1");
    assert_eq!(
        cluster.keys(&all, "/apisix/upstreams/").await,
        [format!("/apisix/upstreams/{id}")]
    );
}
