//! Faults and abuse on the data plane: thousands of held connections,
//! connect/close churn, upstream and client resets, dead and black-holed
//! nodes, a stalled reader, descriptor exhaustion, `kill -9` under Admin
//! writes, and garbage on TLS and PROXY protocol ports. The process stays
//! up, bounded and exact, and returns to its baseline afterwards.
//!
//! Where the process itself is measured (descriptors, RSS, CPU time, fd
//! limits, kill -9) the server runs as a child `apisix-stream serve` and is
//! read through `/proc/<pid>`. Every test prints its figures.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apisix_stream::config::ListenSpec;
use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::backend::{closed_without_data, roundtrip, Backend, BlackHole, Mode};
use crate::harness::{
    bin, call, eventually, free_port, wait_listening_logged, within, ChildConfig, ChildGuard,
    TestServer, KEY,
};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

// ---------------------------------------------------------------------------
// A child `apisix-stream serve` with known ports, and what /proc says of it.
// ---------------------------------------------------------------------------

/// A running child server.
struct Serve {
    guard: ChildGuard,
    pid: u32,
    admin: SocketAddr,
    control: SocketAddr,
    tcp: Vec<SocketAddr>,
    client: reqwest::Client,
    stderr: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

impl Serve {
    /// A fresh server with `listeners` TCP listeners in its own directory.
    fn start(listeners: usize, extra: &str) -> Serve {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Serve::start_in(dir.path(), listeners, extra, &[]);
        s._dir = Some(dir);
        s
    }

    /// A server on `dir` (its `data/` holds the store), run under the
    /// `wrapper` command line (e.g. `prlimit ...`) when one is given.
    fn start_in(dir: &Path, listeners: usize, extra: &str, wrapper: &[String]) -> Serve {
        Serve::start_with(dir, &vec![""; listeners], extra, wrapper)
    }

    /// As [`Serve::start_in`], one TCP listener per entry of `opts`.
    fn start_with(dir: &Path, opts: &[&str], extra: &str, wrapper: &[String]) -> Serve {
        let (admin, control) = (free_port(), free_port());
        let tcp: Vec<(u16, &str)> = opts.iter().map(|o| (free_port(), *o)).collect();
        let config = tcp
            .iter()
            .fold(ChildConfig::new(admin).control(control), |c, (p, o)| {
                c.tcp_with(*p, o)
            });
        let cfg = dir.join("config.yaml");
        // `extra` goes at the top level.
        let yaml = format!("{}{extra}", config.yaml(&dir.join("data")));
        let tcp: Vec<u16> = tcp.iter().map(|(p, _)| *p).collect();
        std::fs::write(&cfg, yaml).expect("write config");
        Serve::spawn(dir, &cfg, admin, control, &tcp, wrapper)
    }

    /// Run `serve` on an existing config file with known ports.
    fn spawn(
        dir: &Path,
        cfg: &Path,
        admin: u16,
        control: u16,
        tcp: &[u16],
        wrapper: &[String],
    ) -> Serve {
        let stderr = dir.join(format!("serve-{}.log", free_port()));
        let log = std::fs::File::create(&stderr).expect("log file");
        let mut cmd = match wrapper.split_first() {
            Some((prog, args)) => {
                let mut c = Command::new(prog);
                c.args(args).arg(bin());
                c
            }
            None => Command::new(bin()),
        };
        let child = cmd
            .arg("serve")
            .arg("-c")
            .arg(cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .env("RUST_LOG", "warn")
            .spawn()
            .expect("spawn serve");
        let pid = child.id();
        let mut guard = ChildGuard { child };
        let (admin, control) = (loopback(admin), loopback(control));
        let tcp: Vec<SocketAddr> = tcp.iter().map(|p| loopback(*p)).collect();
        for a in [admin, control].iter().chain(&tcp) {
            wait_listening_logged(*a, &mut guard, &stderr);
        }
        Serve {
            guard,
            pid,
            admin,
            control,
            tcp,
            client: reqwest::Client::new(),
            stderr,
            _dir: None,
        }
    }

    async fn stats(&self) -> Value {
        let get = self
            .client
            .get(format!("http://{}/v1/stream/stats", self.control))
            .send();
        let res = within(5, get).await.expect("stats request");
        within(5, res.json()).await.expect("stats json")
    }

    async fn put_route(&self, id: &str, body: &Value) {
        let (st, v) = call(
            &self.client,
            self.admin,
            Some(KEY),
            Method::PUT,
            &format!("/apisix/admin/stream_routes/{id}"),
            Some(&body.to_string()),
        )
        .await;
        assert!(st.is_success(), "PUT route {id}: {st} {v}");
    }

    fn alive(&mut self) -> bool {
        self.guard.child.try_wait().expect("wait").is_none()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

/// Open descriptors of a process.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// User plus system CPU time of a process, in clock ticks (1/100 s).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)
}

/// The soft open-file limit of a process, from `/proc/<pid>/limits`.
fn nofile_limit(pid: u32) -> Option<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

fn route_to(addr: SocketAddr) -> Value {
    json!({"upstream": {"nodes": {addr.to_string(): 1}}})
}

fn route0(st: &Value, field: &str) -> u64 {
    st["routes"][0][field].as_u64().unwrap_or(u64::MAX)
}

fn gauges(st: &Value) -> (u64, u64, u64) {
    (
        st["active"].as_u64().unwrap_or(u64::MAX),
        st["limits"]["sessions"].as_u64().unwrap_or(u64::MAX),
        route0(st, "active"),
    )
}

/// Open `n` proxied connections, each proven by a round trip, all held.
async fn open_many(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut out = Vec::with_capacity(n);
    let mut next = 0;
    while next < n {
        let batch = (n - next).min(200);
        let mut set = JoinSet::new();
        for k in next..next + batch {
            set.spawn(async move {
                let mut s = within(10, TcpStream::connect(addr)).await.expect("connect");
                let msg = format!("conn {k:06}");
                assert_eq!(roundtrip(&mut s, msg.as_bytes()).await, msg.as_bytes());
                s
            });
        }
        while let Some(r) = set.join_next().await {
            out.push(r.expect("connection task"));
        }
        next += batch;
    }
    out
}

// ---------------------------------------------------------------------------
// 1. Thousands of concurrent connections.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_concurrent_connections_are_held_then_fully_released() {
    // Each held connection costs this process two descriptors (client and
    // echo side) and the child two more.
    let fd_limit = apisix_stream::server::raise_fd_limit().unwrap_or(u64::MAX);
    let n = usize::try_from((fd_limit / 4).min(3000)).unwrap_or(3000);
    if n < 3000 {
        eprintln!("fd limit {fd_limit}: holding {n} connections instead of 3000");
    }
    let echo = Backend::start("echo", Mode::Echo).await;
    let srv = Serve::start(1, "");
    srv.put_route("1", &route_to(echo.addr)).await;
    let proxy = srv.tcp[0];
    {
        let mut c = within(5, TcpStream::connect(proxy)).await.expect("connect");
        assert_eq!(roundtrip(&mut c, b"warm").await, b"warm");
    }
    assert!(eventually(5, async || gauges(&srv.stats().await) == (0, 0, 0)).await);
    let (fds0, rss0) = (fds(srv.pid), rss_kib(srv.pid));

    let started = Instant::now();
    let mut held = open_many(proxy, n).await;
    let opened_in = started.elapsed();
    let st = srv.stats().await;
    assert_eq!(
        gauges(&st),
        (n as u64, n as u64, n as u64),
        "{}",
        st["limits"]
    );
    assert_eq!(st["listeners"][0]["active"], n, "{}", st["listeners"]);
    let (fds1, rss1) = (fds(srv.pid), rss_kib(srv.pid));
    assert!(
        fds1 >= fds0 + 2 * n && fds1 <= fds0 + 2 * n + 16,
        "two descriptors per session: {fds0} -> {fds1} for {n}"
    );
    let per_conn = rss1.saturating_sub(rss0) * KIB / n as u64;
    eprintln!(
        "held {n} connections (opened in {opened_in:?}, {:.0} conn/s); child fds {fds0} -> {fds1}; \
         RSS {rss0} KiB -> {rss1} KiB = {per_conn} B per connection",
        n as f64 / opened_in.as_secs_f64()
    );
    // Two 16 KiB relay buffers per session after traffic, plus task state.
    assert!(
        per_conn < 96 * KIB,
        "{per_conn} B of RSS per idle connection"
    );
    // Every held session still carries bytes.
    for (i, c) in held.iter_mut().enumerate().step_by(97) {
        let msg = format!("again {i}");
        assert_eq!(roundtrip(c, msg.as_bytes()).await, msg.as_bytes());
    }

    drop(held);
    assert!(
        eventually(10, async || gauges(&srv.stats().await) == (0, 0, 0)).await,
        "gauges back to 0: {}",
        srv.stats().await["limits"]
    );
    assert!(
        eventually(10, async || fds(srv.pid) <= fds0 + 4).await,
        "descriptors back to baseline {fds0}: {}",
        fds(srv.pid)
    );
    eprintln!(
        "after close: child fds {}, RSS {} KiB",
        fds(srv.pid),
        rss_kib(srv.pid)
    );
}

// ---------------------------------------------------------------------------
// 2. Connect/close churn.
// ---------------------------------------------------------------------------

async fn one_short_connection(addr: SocketAddr, msg: &[u8]) -> Result<(), String> {
    let t = Duration::from_secs(5);
    let mut s = tokio::time::timeout(t, TcpStream::connect(addr))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    s.write_all(msg).await.map_err(|e| format!("write: {e}"))?;
    let mut got = vec![0u8; msg.len()];
    tokio::time::timeout(t, s.read_exact(&mut got))
        .await
        .map_err(|_| "echo timed out".to_string())?
        .map_err(|e| format!("read: {e}"))?;
    if got != msg {
        return Err("echo differs".to_string());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_close_churn_leaves_no_descriptor_or_gauge_behind() {
    apisix_stream::server::raise_fd_limit();
    let echo = Backend::start("echo", Mode::Echo).await;
    let srv = Serve::start(1, "");
    srv.put_route("1", &route_to(echo.addr)).await;
    let proxy = srv.tcp[0];
    one_short_connection(proxy, b"warm").await.expect("warm-up");
    assert!(eventually(5, async || gauges(&srv.stats().await) == (0, 0, 0)).await);
    let fds0 = fds(srv.pid);
    let total0 = route0(&srv.stats().await, "total");

    const TASKS: usize = 8;
    let started = Instant::now();
    let until = started + Duration::from_secs(3);
    let mut set = JoinSet::new();
    for t in 0..TASKS {
        set.spawn(async move {
            let (mut ok, mut failed) = (0u64, Vec::new());
            // A cap keeps the client's ephemeral ports well clear of exhaustion.
            while Instant::now() < until && ok < 12_000 / TASKS as u64 {
                let msg = format!("task {t} conn {ok}");
                match one_short_connection(proxy, msg.as_bytes()).await {
                    Ok(()) => ok += 1,
                    Err(e) => failed.push(e),
                }
            }
            (ok, failed)
        });
    }
    let (mut ok, mut failed) = (0u64, Vec::new());
    while let Some(r) = set.join_next().await {
        let (o, f) = r.expect("churn task");
        ok += o;
        failed.extend(f);
    }
    let took = started.elapsed();
    let rate = ok as f64 / took.as_secs_f64();
    eprintln!(
        "churn: {ok} connections in {took:.2?} from {TASKS} tasks = {rate:.0} conn/s, {} failed; \
         child fds at end {} (baseline {fds0})",
        failed.len(),
        fds(srv.pid)
    );
    assert!(failed.is_empty(), "failed short connections: {failed:?}");
    assert!(rate > 200.0, "churn rate {rate:.0} conn/s");
    assert!(
        eventually(10, async || {
            let st = srv.stats().await;
            gauges(&st) == (0, 0, 0) && route0(&st, "total") == total0 + ok
        })
        .await,
        "gauges back to 0 and every session counted once: {}",
        srv.stats().await
    );
    assert!(
        eventually(10, async || fds(srv.pid) <= fds0 + 4).await,
        "descriptors back to baseline {fds0}: {}",
        fds(srv.pid)
    );
}

// ---------------------------------------------------------------------------
// 3. Upstream killed mid-transfer.
// ---------------------------------------------------------------------------

/// A backend that, once its first connection has sent one byte, streams
/// `cut_at` bytes to it and then resets it (SO_LINGER 0); the time of the
/// reset is stored in `reset_at`. Waiting for the byte makes sure the proxy
/// has finished connecting (a reset during the connect is a failed connect,
/// closed like any other) and the client has finished connecting too.
async fn resetting_backend(cut_at: u64) -> (SocketAddr, Arc<Mutex<Option<Instant>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let reset_at = Arc::new(Mutex::new(None));
    let mark = reset_at.clone();
    tokio::spawn(async move {
        let Ok((mut s, _)) = l.accept().await else {
            return;
        };
        let mut go = [0u8; 1];
        if s.read_exact(&mut go).await.is_err() {
            return;
        }
        let chunk = vec![0x5au8; 64 * 1024];
        let mut sent = 0u64;
        while sent < cut_at {
            let n = (cut_at - sent).min(chunk.len() as u64) as usize;
            if s.write_all(&chunk[..n]).await.is_err() {
                return;
            }
            sent += n as u64;
        }
        let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
        *mark.lock().expect("lock") = Some(Instant::now());
        drop(s);
    });
    (addr, reset_at)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_reset_mid_transfer_reaches_the_client_as_a_reset() {
    let s = TestServer::with_tcp(&["127.0.0.1:0"]).await;
    // Below and above the point where a direction switches to splice.
    for cut_at in [96 * KIB, 8 * MIB] {
        let (addr, reset_at) = resetting_backend(cut_at).await;
        s.put_route("1", &route_to(addr)).await;
        let mut c = within(5, TcpStream::connect(s.tcp[0]))
            .await
            .expect("connect");
        c.write_all(b"g").await.expect("go");
        let mut got = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        let end = within(10, async {
            loop {
                match c.read(&mut buf).await {
                    Ok(0) => break Ok(()),
                    Ok(n) => got += n as u64,
                    Err(e) => break Err(e),
                }
            }
        })
        .await;
        let seen = Instant::now();
        let reset = reset_at.lock().expect("lock").expect("the backend reset");
        let lag = seen.saturating_duration_since(reset);
        eprintln!(
            "upstream reset after {cut_at} B: client read {got} B, then {end:?} {lag:?} after the reset"
        );
        let err = end.expect_err("the client saw a clean EOF instead of a reset");
        assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
        assert!(got <= cut_at, "{got} B read of {cut_at}");
        assert!(
            lag < Duration::from_secs(2),
            "reset passed on after {lag:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// 4. All nodes down; a black-holed node skipped after the connect timeout.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_nodes_close_the_client_at_once_and_a_black_hole_costs_one_connect_timeout() {
    let s = TestServer::with_tcp(&["127.0.0.1:0"]).await;
    let stats = async || s.stream_stats().await;
    // Two nodes where nothing listens: every connect is refused.
    let dead: Vec<SocketAddr> = (0..2).map(|_| loopback(free_port())).collect();
    s.put_route(
        "1",
        &json!({"upstream": {"retries": 1,
            "nodes": {dead[0].to_string(): 1, dead[1].to_string(): 1}}}),
    )
    .await;
    let before = route0(&stats().await, "connect_failures");
    for _ in 0..3 {
        let started = Instant::now();
        let mut c = within(5, TcpStream::connect(s.tcp[0]))
            .await
            .expect("connect");
        let _ = c.write_all(b"hello").await;
        assert!(closed_without_data(&mut c).await, "data from nowhere");
        let took = started.elapsed();
        eprintln!("all nodes refuse: client closed after {took:?}");
        assert!(took < Duration::from_secs(1), "closed after {took:?}");
    }
    let failures = route0(&stats().await, "connect_failures") - before;
    assert_eq!(failures, 6, "3 sessions x 2 tries each");

    // A black hole tried first (higher priority), then a good node.
    let hole = BlackHole::new();
    let good = Backend::start("good", Mode::Echo).await;
    s.put_route(
        "1",
        &json!({"upstream": {"retries": 1,
            "timeout": {"connect": 0.5, "send": 5, "read": 5},
            "nodes": [
                {"host": "127.0.0.1", "port": hole.addr.port(), "weight": 1, "priority": 1},
                {"host": "127.0.0.1", "port": good.addr.port(), "weight": 1, "priority": 0}]}}),
    )
    .await;
    let st = stats().await;
    let (failures0, retries0) = (route0(&st, "connect_failures"), route0(&st, "retries"));
    for i in 0..2 {
        let started = Instant::now();
        let mut c = within(5, TcpStream::connect(s.tcp[0]))
            .await
            .expect("connect");
        let msg = format!("served {i}");
        assert_eq!(roundtrip(&mut c, msg.as_bytes()).await, msg.as_bytes());
        let took = started.elapsed();
        eprintln!("black hole then good node: served after {took:?}");
        assert!(
            took >= Duration::from_millis(450),
            "the black hole was not tried first: {took:?}"
        );
        assert!(took < Duration::from_millis(1200), "served after {took:?}");
    }
    let st = stats().await;
    assert_eq!(route0(&st, "connect_failures") - failures0, 2);
    assert_eq!(route0(&st, "retries") - retries0, 2);
    assert_eq!(good.accepted(), 2);
}

// ---------------------------------------------------------------------------
// 5. Stalled reader.
// ---------------------------------------------------------------------------

/// The byte at `offset` of every firehose stream.
fn pattern_at(offset: u64) -> u8 {
    (offset % 251) as u8
}

/// One period of the firehose pattern, repeated to at least 64 KiB.
fn pattern_block() -> Vec<u8> {
    (0..251 * 262).map(pattern_at).collect()
}

/// A backend that reads a big-endian u64 `n` from each connection, writes
/// `n` pattern bytes as fast as it can, then closes. `written` counts bytes
/// written over all connections.
async fn firehose() -> (SocketAddr, Arc<AtomicU64>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let written = Arc::new(AtomicU64::new(0));
    let count = written.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let Ok(n) = s.read_u64().await else { return };
                let block = pattern_block();
                let mut sent = 0u64;
                while sent < n {
                    // Blocks are whole periods, so every block starts at offset 0 mod 251.
                    let k = (n - sent).min(block.len() as u64) as usize;
                    if s.write_all(&block[..k]).await.is_err() {
                        return;
                    }
                    sent += k as u64;
                    count.fetch_add(k as u64, Ordering::Relaxed);
                }
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, written)
}

/// Read a firehose stream to EOF, checking every byte; returns the count.
async fn drain_checked(c: &mut TcpStream) -> u64 {
    let block = pattern_block();
    let period = block.len() as u64;
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0u64;
    loop {
        let n = c.read(&mut buf).await.expect("read");
        if n == 0 {
            return got;
        }
        let mut i = 0;
        while i < n {
            let at = ((got + i as u64) % period) as usize;
            let k = (n - i).min(block.len() - at);
            assert!(
                buf[i..i + k] == block[at..at + k],
                "byte {} differs",
                got + i as u64
            );
            i += k;
        }
        got += n as u64;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_keeps_memory_bounded_and_then_gets_every_byte() {
    const TOTAL: u64 = 200 * MIB;
    let (hose, written) = firehose().await;
    let srv = Serve::start(1, "");
    srv.put_route("1", &route_to(hose)).await;
    let proxy = srv.tcp[0];
    // Warm-up: one bulk transfer through the same paths.
    let mut c = within(5, TcpStream::connect(proxy)).await.expect("connect");
    c.write_u64(4 * MIB).await.expect("ask");
    assert_eq!(within(10, drain_checked(&mut c)).await, 4 * MIB);
    drop(c);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss0 = rss_kib(srv.pid);

    let mut c = within(5, TcpStream::connect(proxy)).await.expect("connect");
    let w0 = written.load(Ordering::Relaxed);
    c.write_u64(TOTAL).await.expect("ask");
    let mut peak = rss0;
    let stall = Instant::now();
    while stall.elapsed() < Duration::from_secs(3) {
        peak = peak.max(rss_kib(srv.pid));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let during_stall = written.load(Ordering::Relaxed) - w0;
    let st = srv.stats().await;
    let relayed = route0(&st, "bytes_out");
    let drained = Instant::now();
    let got = within(60, drain_checked(&mut c)).await;
    let drain_took = drained.elapsed();
    let growth = peak.saturating_sub(rss0);
    eprintln!(
        "stalled reader: upstream wrote {} MiB during the 3 s stall ({} MiB relayed so far); \
         child RSS {rss0} KiB, peak {peak} KiB (+{growth} KiB); then {} MiB read in {drain_took:.2?} \
         ({:.0} MiB/s)",
        during_stall / MIB,
        relayed / MIB,
        got / MIB,
        got as f64 / MIB as f64 / drain_took.as_secs_f64()
    );
    assert!(
        during_stall < TOTAL / 2,
        "no back-pressure: {during_stall} B written while nobody read"
    );
    assert!(growth < 16 * KIB, "RSS grew by {growth} KiB");
    assert_eq!(got, TOTAL, "every byte, exactly once");
}

// ---------------------------------------------------------------------------
// 6. Client resets while the upstream is mid-reply.
// ---------------------------------------------------------------------------

/// A backend that, after one byte from the client, writes until writing
/// fails; each connection reports when and how its writes ended.
async fn talker() -> (
    SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<(Instant, std::io::Result<u64>)>,
) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut b = [0u8; 1];
                if s.read_exact(&mut b).await.is_err() {
                    return;
                }
                let chunk = vec![0x33u8; 64 * 1024];
                let mut sent = 0u64;
                let end = loop {
                    if sent >= 4 * 1024 * MIB {
                        break Ok(sent);
                    }
                    match s.write_all(&chunk).await {
                        Ok(()) => sent += chunk.len() as u64,
                        Err(e) => break Err(e),
                    }
                };
                let _ = tx.send((Instant::now(), end));
            });
        }
    });
    (addr, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_resets_mid_reply_close_the_upstream_and_leave_nothing_behind() {
    let s = TestServer::with_tcp(&["127.0.0.1:0"]).await;
    let stats = async || s.stream_stats().await;
    let (up, mut ends) = talker().await;
    s.put_route("1", &route_to(up)).await;
    let proxy = s.tcp[0];

    const CLIENTS: usize = 20;
    let mut set = JoinSet::new();
    for i in 0..CLIENTS {
        set.spawn(async move {
            let mut c = within(5, TcpStream::connect(proxy)).await.expect("connect");
            c.write_all(b"go").await.expect("write");
            // Mid-reply: some of it read, the rest still flowing.
            let mut part = vec![0u8; (64 + i * 16) * 1024];
            within(5, c.read_exact(&mut part)).await.expect("reply");
            socket2::SockRef::from(&c)
                .set_linger(Some(Duration::ZERO))
                .expect("linger");
            drop(c);
            Instant::now()
        });
    }
    let mut last_reset = Instant::now() - Duration::from_secs(60);
    while let Some(r) = set.join_next().await {
        last_reset = last_reset.max(r.expect("client task"));
    }
    // The upstream side of every session is closed, as an error, soon.
    let deadline = tokio::time::Instant::from_std(last_reset + Duration::from_secs(2));
    let (mut resets, mut broken_pipes) = (0, 0);
    let mut latest = last_reset;
    for _ in 0..CLIENTS {
        let (at, end) = tokio::time::timeout_at(deadline, ends.recv())
            .await
            .expect("an upstream connection was still open 2 s after the client reset")
            .expect("talker running");
        let err = end.expect_err("the upstream wrote 4 GiB to a reset client");
        latest = latest.max(at);
        match err.kind() {
            ErrorKind::ConnectionReset => resets += 1,
            ErrorKind::BrokenPipe => broken_pipes += 1,
            _ => {}
        }
        assert!(
            matches!(
                err.kind(),
                ErrorKind::ConnectionReset | ErrorKind::BrokenPipe
            ),
            "{err}"
        );
    }
    eprintln!(
        "{CLIENTS} client resets mid-reply: every upstream side failed within {:?} of the last \
         reset ({resets} ECONNRESET, {broken_pipes} EPIPE)",
        latest - last_reset
    );
    assert!(
        eventually(5, async || gauges(&stats().await) == (0, 0, 0)).await,
        "gauges back to 0: {}",
        stats().await
    );
    // A new client is served as before.
    let mut c = within(5, TcpStream::connect(proxy)).await.expect("connect");
    c.write_all(b"go").await.expect("write");
    let mut part = vec![0u8; 256 * 1024];
    within(5, c.read_exact(&mut part)).await.expect("reply");
    assert!(part.iter().all(|b| *b == 0x33));
    drop(c);
    assert!(eventually(5, async || gauges(&stats().await) == (0, 0, 0)).await);
}

// ---------------------------------------------------------------------------
// 7. Descriptor exhaustion and recovery.
// ---------------------------------------------------------------------------

/// Run a command under an open-file limit of `n`: `prlimit` when present,
/// else a shell `ulimit`.
fn fd_limited(n: u64) -> Vec<String> {
    let has_prlimit = Command::new("prlimit")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if has_prlimit {
        vec!["prlimit".into(), format!("--nofile={n}:{n}")]
    } else {
        vec![
            "sh".into(),
            "-c".into(),
            format!("ulimit -n {n} && exec \"$0\" \"$@\""),
        ]
    }
}

/// One bulk echo on a new connection (both directions past the splice
/// threshold): true when served.
async fn bulk_echo(addr: SocketAddr, len: usize) -> Option<TcpStream> {
    let mut c = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    let out = vec![0x42u8; len];
    let mut back = vec![0u8; len];
    let (mut r, mut w) = c.split();
    let (wrote, read) = tokio::time::timeout(Duration::from_secs(2), async {
        tokio::join!(w.write_all(&out), r.read_exact(&mut back))
    })
    .await
    .ok()?;
    (wrote.is_ok() && read.is_ok() && back == out).then_some(c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fd_exhaustion_is_survived_without_spinning_and_recovers() {
    const LIMIT: u64 = 400;
    const BULK: usize = 320 * 1024;
    let echo = Backend::start("echo", Mode::Echo).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut srv = Serve::start_in(dir.path(), 1, "", &fd_limited(LIMIT));
    if nofile_limit(srv.pid) != Some(LIMIT) {
        eprintln!(
            "skipped: cannot run the server under an open-file limit of {LIMIT} (got {:?})",
            nofile_limit(srv.pid)
        );
        return;
    }
    srv.put_route("1", &route_to(echo.addr)).await;
    let proxy = srv.tcp[0];
    let cap = srv.stats().await["limits"]["max_sessions"]
        .as_u64()
        .expect("cap") as usize;
    let fds0 = fds(srv.pid);
    eprintln!("fd limit {LIMIT}: max_sessions {cap}, child fds at rest {fds0}");
    assert!(
        (cap as u64) < LIMIT / 2,
        "sessions capped below half the fd limit"
    );

    // Up to the session cap: the next connection is closed at once.
    let mut held = open_many(proxy, cap).await;
    let started = Instant::now();
    let mut extra = within(5, TcpStream::connect(proxy)).await.expect("connect");
    let _ = extra.write_all(b"one too many").await;
    assert!(closed_without_data(&mut extra).await, "served past the cap");
    let took = started.elapsed();
    let st = srv.stats().await;
    let refused = st["limits"]["refused"].as_u64().expect("refused");
    eprintln!(
        "{cap} sessions held with {} child fds; session {} closed after {took:?}, refused {refused}",
        fds(srv.pid),
        cap + 1
    );
    assert!(refused >= 1 && took < Duration::from_secs(1));

    // Bulk traffic on every held session wants splice pipes, two descriptors
    // per direction: the descriptors run out, and every session keeps
    // carrying its bytes.
    for (i, c) in held.iter_mut().enumerate() {
        let out: Vec<u8> = (0..BULK).map(|k| (k * 7 + i) as u8).collect();
        let mut back = vec![0u8; BULK];
        let (mut r, mut w) = c.split();
        let (wrote, read) = within(10, async {
            tokio::join!(w.write_all(&out), r.read_exact(&mut back))
        })
        .await;
        wrote.expect("bulk write");
        read.expect("bulk read");
        assert!(back == out, "session {i} garbled its bulk echo");
    }
    let after_bulk = fds(srv.pid);
    eprintln!("after bulk traffic on all {cap} sessions: child fds {after_bulk} of {LIMIT}");
    assert!(
        (after_bulk as u64) < LIMIT,
        "the session cap leaves room for every session's sockets and pipes"
    );
    // Idle connections to the Admin API take whatever descriptors are left
    // (quickly: the API closes a connection silent for 5 s).
    let mut idle_admin = Vec::new();
    for _ in 0..LIMIT {
        let before = fds(srv.pid);
        idle_admin.push(
            within(5, TcpStream::connect(srv.admin))
                .await
                .expect("connect"),
        );
        let took = async || {
            for _ in 0..30 {
                if fds(srv.pid) > before {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            false
        };
        if !took().await {
            break;
        }
    }
    let at_limit = fds(srv.pid);
    let accept_errors0 = srv.stats().await["limits"]["accept_errors"]
        .as_u64()
        .expect("accept_errors");
    eprintln!(
        "after {} idle Admin API connections: child fds {at_limit} of {LIMIT}",
        idle_admin.len()
    );
    assert!(
        at_limit as u64 >= LIMIT - 2,
        "descriptors not exhausted ({at_limit}): the test proves nothing"
    );
    // Exhausted, with a client waiting: counted, backed off, no busy loop.
    let mut waiting = within(5, TcpStream::connect(proxy)).await.expect("connect");
    let _ = waiting.write_all(b"waiting").await;
    let cpu0 = cpu_ticks(srv.pid);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu = cpu_ticks(srv.pid) - cpu0;
    let st = srv.stats().await;
    let accept_errors = st["limits"]["accept_errors"]
        .as_u64()
        .expect("accept_errors");
    let mut b = [0u8; 8];
    let served = matches!(
        tokio::time::timeout(Duration::from_millis(50), waiting.read(&mut b)).await,
        Ok(Ok(n)) if n > 0
    );
    eprintln!(
        "1 s out of descriptors ({} idle Admin API connections took the last ones): \
         child CPU {} ms, accept_errors {accept_errors0} -> {accept_errors}",
        idle_admin.len(),
        cpu * 10
    );
    assert!(!served, "served past the cap");
    assert!(accept_errors > accept_errors0, "{}", st["limits"]);
    assert!(cpu <= 25, "busy at the limit: {} ms CPU in 1 s", cpu * 10);
    assert!(srv.alive(), "the server died: {}", srv.log());
    // The APIs answer on connections they already hold (a new connection
    // would need a descriptor too).
    let (code, v) = call(
        &srv.client,
        srv.admin,
        Some(KEY),
        Method::GET,
        "/apisix/admin/stream_routes/1",
        None,
    )
    .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(srv.stats().await["limits"]["sessions"], cap);
    let fresh = reqwest::Client::new()
        .get(format!("http://{}/v1/stream/stats", srv.control))
        .timeout(Duration::from_millis(500))
        .send()
        .await;
    eprintln!(
        "a new Control API connection at the limit: {}",
        match &fresh {
            Ok(r) => format!("answered {}", r.status()),
            Err(e) => format!("not answered ({e})"),
        }
    );
    drop(fresh);

    drop((held, extra, idle_admin));
    // The waiting client gets an answer once descriptors come back: served,
    // or closed at the session cap while the held sessions wind down.
    let mut echoed = [0u8; 7];
    let answer = within(5, waiting.read_exact(&mut echoed)).await;
    eprintln!(
        "the client that waited through the exhaustion: {}",
        match &answer {
            Ok(_) => "served".to_string(),
            Err(e) => format!("closed ({e})"),
        }
    );
    assert!(answer.is_err() || &echoed == b"waiting");
    drop(waiting);
    assert!(
        eventually(10, async || bulk_echo(proxy, BULK).await.is_some()).await,
        "served again after the connections closed"
    );
    assert!(
        eventually(10, async || gauges(&srv.stats().await) == (0, 0, 0)).await,
        "gauges back to 0: {}",
        srv.stats().await
    );
    assert!(
        eventually(10, async || fds(srv.pid) <= fds0 + 4).await,
        "descriptors back to baseline {fds0}: {}",
        fds(srv.pid)
    );
    assert!(srv.alive(), "the server died: {}", srv.log());
}

// ---------------------------------------------------------------------------
// 8. kill -9 during acknowledged Admin writes.
// ---------------------------------------------------------------------------

/// PUT an upstream; the status, or `None` when no answer came.
async fn try_put(client: &reqwest::Client, admin: SocketAddr, id: &str, body: &str) -> Option<u16> {
    let req = client
        .put(format!("http://{admin}/apisix/admin/upstreams/{id}"))
        .header("X-API-KEY", KEY)
        .body(body.to_string())
        .timeout(Duration::from_secs(5))
        .send();
    let res = req.await.ok()?;
    let status = res.status().as_u16();
    // The answer counts only once it was read whole.
    res.bytes().await.ok()?;
    Some(status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_admin_writes_survive_repeated_kill_9() {
    const ROUNDS: usize = 5;
    const WRITERS: usize = 4;
    let dir = tempfile::tempdir().expect("tempdir");
    let admin_port = free_port();
    let control_port = free_port();
    let cfg = ChildConfig::new(admin_port)
        .control(control_port)
        .write(dir.path());
    let start = || Serve::spawn(dir.path(), &cfg, admin_port, control_port, &[], &[]);
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let mut attempted_total = 0u64;
    for round in 0..ROUNDS {
        let mut srv = start();
        if round > 0 {
            let so_far = acked.lock().expect("lock").clone();
            verify_acked(&srv, &so_far).await;
        }
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let attempted = Arc::new(AtomicU64::new(0));
        let mut set = JoinSet::new();
        for w in 0..WRITERS {
            let (stop, acked, attempted) = (stop.clone(), acked.clone(), attempted.clone());
            let admin = srv.admin;
            set.spawn(async move {
                let client = reqwest::Client::new();
                for seq in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let id = format!("r{round}-w{w}-{seq}");
                    let desc = format!("round {round} writer {w} seq {seq}");
                    let body = json!({"desc": desc, "nodes": {"127.0.0.1:1980": 1}}).to_string();
                    attempted.fetch_add(1, Ordering::Relaxed);
                    match try_put(&client, admin, &id, &body).await {
                        Some(st) if (200..300).contains(&st) => {
                            acked.lock().expect("lock").push((id, desc));
                        }
                        Some(st) => panic!("PUT {id}: {st}"),
                        // The server is gone.
                        None => break,
                    }
                }
            });
        }
        let delay = rand::random_range(50..=300u64);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        srv.guard.child.kill().expect("kill -9");
        srv.guard.child.wait().expect("reaped");
        stop.store(true, Ordering::Relaxed);
        within(10, async {
            while let Some(r) = set.join_next().await {
                r.expect("writer");
            }
        })
        .await;
        let n = attempted.load(Ordering::Relaxed);
        attempted_total += n;
        eprintln!(
            "round {round}: kill -9 after {delay} ms; {n} PUTs sent, {} acknowledged so far",
            acked.lock().expect("lock").len()
        );
        drop(srv);
    }
    let srv = start();
    let acked = acked.lock().expect("lock").clone();
    let stored = verify_acked(&srv, &acked).await;
    eprintln!(
        "{ROUNDS} rounds of kill -9: {attempted_total} PUTs sent, {} acknowledged, \
         {stored} stored after restart, 0 acknowledged writes lost",
        acked.len()
    );
    assert!(
        acked.len() >= ROUNDS,
        "too few writes acknowledged to mean anything"
    );
}

/// Every acknowledged `(id, desc)` is stored with its body; returns how
/// many upstreams are stored (acknowledged or in flight at the kill).
async fn verify_acked(srv: &Serve, acked: &[(String, String)]) -> usize {
    let (st, v) = call(
        &srv.client,
        srv.admin,
        Some(KEY),
        Method::GET,
        "/apisix/admin/upstreams",
        None,
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let stored: std::collections::HashMap<String, Value> = v["list"]
        .as_array()
        .expect("list")
        .iter()
        .map(|e| {
            (
                e["value"]["id"].as_str().unwrap_or_default().to_string(),
                e["value"].clone(),
            )
        })
        .collect();
    let lost: Vec<&str> = acked
        .iter()
        .filter(|(id, desc)| {
            stored.get(id).is_none_or(|v| {
                v["desc"] != desc.as_str() || v["nodes"] != json!({"127.0.0.1:1980": 1})
            })
        })
        .map(|(id, _)| id.as_str())
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost or changed: {lost:?}",
        lost.len(),
        acked.len()
    );
    stored.len()
}

// ---------------------------------------------------------------------------
// 9. Garbage on TLS, TLS passthrough and PROXY protocol ports.
// ---------------------------------------------------------------------------

/// A CA and a certificate it issued for `good.test`.
struct Certs {
    ca_der: rustls::pki_types::CertificateDer<'static>,
    cert_pem: String,
    key_pem: String,
}

fn certs() -> Certs {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "faults ca");
    let ca_key = KeyPair::generate().expect("key");
    let ca = ca.self_signed(&ca_key).expect("ca");
    let leaf_key = KeyPair::generate().expect("key");
    let leaf = CertificateParams::new(vec!["good.test".to_string()])
        .expect("params")
        .signed_by(&leaf_key, &ca, &ca_key)
        .expect("sign");
    Certs {
        ca_der: ca.der().clone(),
        cert_pem: leaf.pem(),
        key_pem: leaf_key.serialize_pem(),
    }
}

fn tls_client(ca: &rustls::pki_types::CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).expect("root");
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

/// The bytes of a real ClientHello for `sni`.
fn client_hello(cfg: Arc<rustls::ClientConfig>, sni: &str) -> Vec<u8> {
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).expect("name");
    let mut conn = rustls::ClientConnection::new(cfg, name).expect("client");
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).expect("hello");
    }
    out
}

/// Send `bytes` (then FIN when `finish`), and wait for the server to close:
/// the time it took and what it sent, or `None` if still open after `secs`.
async fn sent_and_closed(
    addr: SocketAddr,
    bytes: &[u8],
    finish: bool,
    secs: u64,
) -> Option<(Duration, Vec<u8>)> {
    let mut c = within(5, TcpStream::connect(addr)).await.expect("connect");
    let started = Instant::now();
    let _ = c.write_all(bytes).await;
    if finish {
        let _ = c.shutdown().await;
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read_all = async {
        loop {
            match c.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(secs), read_all)
        .await
        .ok()?;
    Some((started.elapsed(), got))
}

/// Send `bytes` one per 200 ms for `secs`, never the whole of them; returns
/// how many were sent and whether the server closed the connection.
async fn slowloris(addr: SocketAddr, bytes: Vec<u8>, secs: u64) -> (usize, bool) {
    let mut c = within(5, TcpStream::connect(addr)).await.expect("connect");
    let until = Instant::now() + Duration::from_secs(secs);
    let mut sent = 0;
    while Instant::now() < until && sent + 1 < bytes.len() {
        if c.write_all(&bytes[sent..=sent]).await.is_err() {
            return (sent, true);
        }
        sent += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut b = [0u8; 1];
    let closed = matches!(
        tokio::time::timeout(Duration::from_millis(1), c.read(&mut b)).await,
        Ok(Ok(0) | Err(_))
    );
    (sent, closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_tls_passthrough_and_proxy_ports_is_rejected_while_good_clients_are_served() {
    let spec = |f: fn(&mut ListenSpec)| {
        let mut s = ListenSpec::new("127.0.0.1:0".parse().expect("addr"));
        f(&mut s);
        s
    };
    let s = TestServer::with_tcp_specs(
        vec![
            spec(|s| s.tls = true),
            spec(|s| s.tls_passthrough = true),
            spec(|s| s.proxy_protocol = true),
        ],
        "",
    )
    .await;
    let (tls_port, pass_port, pp_port) = (s.tcp[0], s.tcp[1], s.tcp[2]);
    let control = s.control();
    let rejected = async |addr: SocketAddr| -> u64 {
        let st: Value = within(5, reqwest::get(format!("http://{control}/v1/stream/stats")))
            .await
            .expect("stats")
            .json()
            .await
            .expect("json");
        st["listeners"]
            .as_array()
            .expect("listeners")
            .iter()
            .find(|l| l["listen"] == addr.to_string())
            .and_then(|l| l["rejected"].as_u64())
            .expect("listener counters")
    };
    let echo = Backend::start("echo", Mode::Echo).await;
    s.put_route("1", &route_to(echo.addr)).await;
    let certs = certs();
    let (st, v) = s
        .call(
            Method::PUT,
            "/apisix/admin/ssls/1",
            Some(
                &json!({"cert": certs.cert_pem, "key": certs.key_pem, "snis": ["good.test"]})
                    .to_string(),
            ),
        )
        .await;
    assert!(st.is_success(), "{v}");
    let client_cfg = tls_client(&certs.ca_der);
    let hello = client_hello(client_cfg.clone(), "good.test");
    let pp_header = b"PROXY TCP4 198.51.100.1 127.0.0.1 40000 9100\r\n".to_vec();

    // Slow senders on every port for the whole test.
    let slow: Vec<_> = [
        (tls_port, hello.clone()),
        (pass_port, hello.clone()),
        (pp_port, pp_header.clone()),
    ]
    .into_iter()
    .map(|(addr, bytes)| tokio::spawn(slowloris(addr, bytes, 3)))
    .collect();

    let mut random = vec![0u8; 512];
    rand::fill(&mut random[..]);
    random[0] = 0xff;
    let cases: [(&str, Vec<u8>, bool); 3] = [
        ("random bytes", random, false),
        (
            "truncated ClientHello",
            hello[..hello.len() / 2].to_vec(),
            true,
        ),
        (
            "HTTP request",
            b"GET / HTTP/1.1\r\nHost: good.test\r\n\r\n".to_vec(),
            false,
        ),
    ];
    for (port, name) in [
        (tls_port, "tls"),
        (pass_port, "tls_passthrough"),
        (pp_port, "proxy_protocol"),
    ] {
        for (what, bytes, finish) in &cases {
            let (took, got) = sent_and_closed(port, bytes, *finish, 3)
                .await
                .unwrap_or_else(|| panic!("{name} port: {what} left open for 3 s"));
            eprintln!(
                "{name} port: {what} closed after {took:?} ({} B sent back)",
                got.len()
            );
            // A TLS port may answer with an alert record; nothing else comes back.
            let alert_only = port == tls_port && got.first().is_none_or(|b| *b == 0x15);
            assert!(
                got.is_empty() || alert_only,
                "{name} port answered {what}: {got:?}"
            );
        }
        assert!(
            eventually(3, async || rejected(port).await == 3).await,
            "{name} port counts 3 rejected, not {}",
            rejected(port).await
        );
    }
    assert_eq!(echo.accepted(), 0, "garbage reached the upstream");

    // Good clients are served while the slow senders hold their sockets.
    let name = rustls::pki_types::ServerName::try_from("good.test").expect("name");
    let tcp = within(5, TcpStream::connect(tls_port))
        .await
        .expect("connect");
    let mut tls = within(
        5,
        tokio_rustls::TlsConnector::from(client_cfg).connect(name, tcp),
    )
    .await
    .expect("TLS handshake");
    tls.write_all(b"over tls").await.expect("write");
    let mut got = [0u8; 8];
    within(5, tls.read_exact(&mut got)).await.expect("echo");
    assert_eq!(&got, b"over tls");
    let mut pass = within(5, TcpStream::connect(pass_port))
        .await
        .expect("connect");
    assert_eq!(
        roundtrip(&mut pass, &hello).await,
        hello,
        "passthrough bytes untouched"
    );
    // A ClientHello split over segments is waited for, then passed on whole.
    let mut split = within(5, TcpStream::connect(pass_port))
        .await
        .expect("connect");
    let third = hello.len() / 3;
    for part in hello.chunks(third) {
        split.write_all(part).await.expect("write");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let mut whole = vec![0u8; hello.len()];
    within(5, split.read_exact(&mut whole)).await.expect("echo");
    assert_eq!(whole, hello, "split ClientHello passed on whole");
    let mut pp = within(5, TcpStream::connect(pp_port))
        .await
        .expect("connect");
    pp.write_all(&pp_header).await.expect("header");
    assert_eq!(
        roundtrip(&mut pp, b"behind a proxy").await,
        b"behind a proxy"
    );
    assert!(
        slow.iter().all(|h| !h.is_finished()),
        "good clients were served while slow senders were connected"
    );
    assert_eq!(
        echo.accepted(),
        4,
        "only the good clients reached the upstream"
    );
    drop((tls, pass, split, pp));

    for (h, name) in slow
        .into_iter()
        .zip(["tls", "tls_passthrough", "proxy_protocol"])
    {
        let (sent, closed) = within(10, h).await.expect("slow sender");
        eprintln!("{name} port: slow sender sent {sent} B in 3 s, closed by the server: {closed}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(echo.accepted(), 4, "a slow sender reached the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_partial_handshakes_cost_no_cpu_while_they_wait() {
    // Clients that send part of a ClientHello or PROXY header and then
    // nothing: the server waits for more bytes (up to its deadline) without
    // polling.
    const PER_PORT: usize = 150;
    apisix_stream::server::raise_fd_limit();
    let echo = Backend::start("echo", Mode::Echo).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let srv = Serve::start_with(
        dir.path(),
        &["tls: true", "tls_passthrough: true", "proxy_protocol: true"],
        "",
        &[],
    );
    srv.put_route("1", &route_to(echo.addr)).await;
    let hello = client_hello(tls_client(&certs().ca_der), "good.test");
    let partial: [&[u8]; 3] = [
        &hello[..hello.len() / 2],
        &hello[..hello.len() / 2],
        b"PROXY TCP4 198.51.100.1 ",
    ];
    let mut slow = Vec::new();
    for (port, bytes) in srv.tcp.iter().zip(partial) {
        for _ in 0..PER_PORT {
            let mut c = within(5, TcpStream::connect(*port)).await.expect("connect");
            c.write_all(bytes).await.expect("write");
            slow.push(c);
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cpu0 = cpu_ticks(srv.pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu = cpu_ticks(srv.pid) - cpu0;
    eprintln!(
        "{} clients stuck mid-handshake: child CPU {} ms over 2 s",
        slow.len(),
        cpu * 10
    );
    // A good passthrough client is served meanwhile.
    let mut good = within(5, TcpStream::connect(srv.tcp[1]))
        .await
        .expect("connect");
    assert_eq!(roundtrip(&mut good, &hello).await, hello);
    assert!(
        cpu <= 20,
        "{} ms of CPU in 2 s while clients wait",
        cpu * 10
    );
    // Given up (FIN) mid-handshake: each closed at once.
    for c in &mut slow {
        c.shutdown().await.expect("shutdown");
    }
    let started = Instant::now();
    for c in &mut slow {
        assert!(closed_without_data(c).await);
    }
    eprintln!(
        "{} half-closed handshakes all closed within {:?}",
        slow.len(),
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(
        echo.accepted(),
        1,
        "only the good client reached the upstream"
    );
}
