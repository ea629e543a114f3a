//! What a connection costs the proxy: descriptors and memory, measured on a
//! child `apisix-stream serve` through `/proc/<pid>`.
//!
//! - thousands of held connections (as many as the fd limit allows, 9,000
//!   at a limit of 20,000) all echo;
//! - connections that moved 64 KiB each way and then idle hold no relay
//!   buffer (a few KiB of RSS each);
//! - parallel bulk downloads stay byte-exact while the proxy holds two
//!   descriptors per connection plus a fixed reserve (the pipe pools).
//!
//! The backends run in a separate process (this test binary started again
//! as [`backend_process`]), so this process holds only the client sides.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::harness::{
    bin, call, free_port, wait_listening_logged, within, ChildConfig, ChildGuard, KEY,
};

const KIB: u64 = 1024;
/// Set in the environment of the backend process.
const BACKEND_ENV: &str = "APISIX_STREAM_TEST_BACKEND";
/// Bytes of one download.
const DOWNLOAD: usize = 8 << 20;

/// The heavy tests here run one at a time (descriptors of this process).
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The byte at `offset` of a download.
fn pattern(offset: usize) -> u8 {
    (offset.wrapping_mul(31) ^ (offset >> 13)) as u8
}

/// Not a test of its own: the backend process the tests below start. It
/// serves an echo port and a download port (each connection gets
/// [`DOWNLOAD`] bytes of [`pattern`], then EOF) until its stdin closes.
#[test]
#[ignore = "the backend process of the capacity tests"]
fn backend_process() {
    if std::env::var_os(BACKEND_ENV).is_none() {
        return;
    }
    let _ = apisix_stream::server::raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let echo = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
        let download = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        println!(
            "BACKEND {} {}",
            echo.local_addr().expect("addr"),
            download.local_addr().expect("addr")
        );
        tokio::spawn(async move {
            while let Ok((mut s, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if s.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        tokio::spawn(async move {
            let block: Vec<u8> = (0..DOWNLOAD).map(pattern).collect();
            let block = std::sync::Arc::new(block);
            while let Ok((mut s, _)) = download.accept().await {
                let block = block.clone();
                tokio::spawn(async move {
                    let _ = s.write_all(&block).await;
                });
            }
        });
        let mut stdin = tokio::io::stdin();
        let mut sink = Vec::new();
        let _ = stdin.read_to_end(&mut sink).await;
    });
}

/// The running backend process: its echo and download addresses.
struct Backends {
    _guard: ChildGuard,
    echo: SocketAddr,
    download: SocketAddr,
}

fn backends() -> Backends {
    let exe = std::env::current_exe().expect("test binary");
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "capacity::backend_process",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(BACKEND_ENV, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the backend process");
    let out = child.stdout.take().expect("stdout");
    let line = BufReader::new(out)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.split_once("BACKEND ").map(|(_, a)| a.to_string()))
        .expect("the backend process names its ports");
    let mut addrs = line
        .split_whitespace()
        .map(|a| a.parse::<SocketAddr>().expect("address"));
    let (echo, download) = (addrs.next().expect("echo"), addrs.next().expect("dl"));
    Backends {
        _guard: ChildGuard { child },
        echo,
        download,
    }
}

/// A child `serve` with one TCP listener per route target.
struct Proxy {
    guard: ChildGuard,
    pid: u32,
    admin: SocketAddr,
    control: SocketAddr,
    tcp: Vec<SocketAddr>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

impl Proxy {
    /// Start `serve` with `listeners` TCP listeners.
    fn start(listeners: usize) -> Proxy {
        let dir = tempfile::tempdir().expect("tempdir");
        let (admin, control) = (free_port(), free_port());
        let ports: Vec<u16> = (0..listeners).map(|_| free_port()).collect();
        let config = ports
            .iter()
            .fold(ChildConfig::new(admin).control(control), |c, p| c.tcp(*p));
        let cfg = config.write(dir.path());
        let log = dir.path().join("serve.log");
        let child = Command::new(bin())
            .arg("serve")
            .arg("-c")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log).expect("log")))
            .env("RUST_LOG", "warn")
            .spawn()
            .expect("spawn serve");
        let pid = child.id();
        let mut guard = ChildGuard { child };
        let tcp: Vec<SocketAddr> = ports.into_iter().map(loopback).collect();
        let (admin, control) = (loopback(admin), loopback(control));
        for a in [admin, control].iter().chain(&tcp) {
            wait_listening_logged(*a, &mut guard, &log);
        }
        Proxy {
            guard,
            pid,
            admin,
            control,
            tcp,
            log,
            _dir: dir,
        }
    }

    /// Route everything arriving on listener `i` to `node`.
    async fn route(&self, i: usize, node: SocketAddr) {
        let body = json!({"server_port": self.tcp[i].port(), "upstream": {"nodes": {node.to_string(): 1}}});
        let (st, v) = call(
            &reqwest::Client::new(),
            self.admin,
            Some(KEY),
            reqwest::Method::PUT,
            &format!("/apisix/admin/stream_routes/{i}"),
            Some(&body.to_string()),
        )
        .await;
        assert!(st.is_success(), "PUT route {i}: {st} {v}");
    }

    async fn stats(&self) -> Value {
        let get = reqwest::get(format!("http://{}/v1/stream/stats", self.control));
        let res = within(5, get).await.expect("stats request");
        within(5, res.json()).await.expect("stats json")
    }

    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid)).map_or(0, |d| d.count())
    }

    /// Resident memory in KiB.
    fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// The soft open-file limit `serve` runs under.
    fn nofile(&self) -> u64 {
        let limits =
            std::fs::read_to_string(format!("/proc/{}/limits", self.pid)).unwrap_or_default();
        limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    fn assert_alive(&mut self) {
        let exited = self.guard.child.try_wait().expect("wait");
        assert!(
            exited.is_none(),
            "serve exited: {}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }
}

/// The soft open-file limit of this process, raised to the hard one.
fn own_fd_limit() -> u64 {
    apisix_stream::server::raise_fd_limit().unwrap_or(u64::MAX)
}

/// Open `n` connections to `addr`, `batch` at a time, each sending
/// `per_conn` bytes and reading them back; all held.
async fn open_echoing(addr: SocketAddr, n: usize, batch: usize, per_conn: usize) -> Vec<TcpStream> {
    let mut out = Vec::with_capacity(n);
    let mut next = 0;
    while next < n {
        let size = (n - next).min(batch);
        let mut set = JoinSet::new();
        for k in next..next + size {
            set.spawn(async move {
                let mut s = within(20, TcpStream::connect(addr))
                    .await
                    .unwrap_or_else(|e| panic!("connect {k}: {e}"));
                let msg: Vec<u8> = (0..per_conn).map(|i| (i + k) as u8).collect();
                let (mut r, mut w) = s.split();
                let mut back = vec![0u8; per_conn];
                let (wrote, read) = within(20, async {
                    tokio::join!(w.write_all(&msg), r.read_exact(&mut back))
                })
                .await;
                wrote.expect("write");
                read.unwrap_or_else(|e| panic!("echo {k}: {e}"));
                assert!(back == msg, "connection {k} garbled its echo");
                s
            });
        }
        while let Some(r) = set.join_next().await {
            out.push(r.expect("connection task"));
        }
        next += size;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nine_thousand_held_connections_all_echo() {
    let _heavy = HEAVY.lock().await;
    let own = own_fd_limit();
    let be = backends();
    let mut proxy = Proxy::start(1);
    proxy.route(0, be.echo).await;
    let limit = proxy.nofile();
    let cap = proxy.stats().await["limits"]["max_sessions"]
        .as_u64()
        .expect("max_sessions");
    // Two descriptors per session after a reserve of a few hundred.
    assert!(
        cap >= limit.saturating_sub(600) / 2 && cap <= limit / 2,
        "max_sessions {cap} at an fd limit of {limit}"
    );
    // This process holds the client sides and needs some room for the
    // tests running beside this one.
    let n = cap.min(9_000).min(own.saturating_sub(8_000)) as usize;
    if n < 9_000 {
        eprintln!("fd limits {limit} (serve) and {own} (tests): holding {n} connections");
    }
    let fds0 = proxy.fds();
    let started = Instant::now();
    let mut held = open_echoing(proxy.tcp[0], n, 250, 16).await;
    let opened = started.elapsed();
    let fds1 = proxy.fds();
    let st = proxy.stats().await;
    assert_eq!(st["limits"]["sessions"], n, "{}", st["limits"]);
    assert!(
        fds1 <= fds0 + 2 * n + 8,
        "two descriptors per session: {fds0} -> {fds1} for {n}"
    );
    // Every one of them still echoes its own bytes.
    let started = Instant::now();
    for (i, c) in held.iter_mut().enumerate() {
        let msg = format!("again {i:05}");
        c.write_all(msg.as_bytes()).await.expect("write");
        let mut back = vec![0u8; msg.len()];
        within(10, c.read_exact(&mut back))
            .await
            .unwrap_or_else(|e| panic!("echo {i}: {e}"));
        assert_eq!(back, msg.as_bytes());
    }
    eprintln!(
        "fd limit {limit}: max_sessions {cap}; held {n} connections (opened in {opened:?}) \
         with {fds1} descriptors ({fds0} at rest); all echoed again in {:?}",
        started.elapsed()
    );
    proxy.assert_alive();
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_idle_after_64k_each_way_hold_no_relay_buffer() {
    const N: usize = 2_000;
    const MOVED: usize = 64 * 1024;
    let _heavy = HEAVY.lock().await;
    let _ = own_fd_limit();
    let be = backends();
    let mut proxy = Proxy::start(1);
    proxy.route(0, be.echo).await;
    // Warm up: the pools and the allocator's arenas as after any traffic.
    drop(open_echoing(proxy.tcp[0], 100, 50, MOVED).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss0 = proxy.rss_kib();
    let held = open_echoing(proxy.tcp[0], N, 50, MOVED).await;
    let rss1 = proxy.rss_kib();
    let per_conn = rss1.saturating_sub(rss0) * KIB / N as u64;
    eprintln!(
        "{N} connections idle after {} KiB each way: RSS {rss0} KiB -> {rss1} KiB = {per_conn} B each",
        MOVED / 1024
    );
    assert!(
        per_conn <= 8 * KIB,
        "{per_conn} B of RSS per idle connection after traffic"
    );
    let st = proxy.stats().await;
    assert_eq!(st["limits"]["sessions"], N, "{}", st["limits"]);
    proxy.assert_alive();
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_8mib_downloads_are_exact_at_two_descriptors_per_connection() {
    const N: usize = 64;
    let _heavy = HEAVY.lock().await;
    let be = backends();
    let mut proxy = Proxy::start(1);
    proxy.route(0, be.download).await;
    let fds0 = proxy.fds();
    let pid = proxy.pid;
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        std::thread::spawn(move || {
            let mut most = 0;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                let n = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
                most = most.max(n);
                std::thread::sleep(Duration::from_millis(2));
            }
            most
        })
    };
    let want: std::sync::Arc<Vec<u8>> = std::sync::Arc::new((0..DOWNLOAD).map(pattern).collect());
    let started = Instant::now();
    let mut set = JoinSet::new();
    for k in 0..N {
        let addr = proxy.tcp[0];
        let want = want.clone();
        set.spawn(async move {
            let mut s = within(10, TcpStream::connect(addr)).await.expect("connect");
            let mut got = Vec::with_capacity(DOWNLOAD);
            within(120, s.read_to_end(&mut got))
                .await
                .unwrap_or_else(|e| panic!("download {k}: {e}"));
            assert_eq!(got.len(), DOWNLOAD, "download {k} length");
            if got != *want {
                let bad = got.iter().zip(want.iter()).position(|(a, b)| a != b);
                panic!("download {k} differs from offset {bad:?}");
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.expect("download task");
    }
    let took = started.elapsed();
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let most = sampler.join().expect("sampler");
    // The reserve on top of two per connection: each worker's pipe pool.
    let workers = apisix_stream::server::limits::workers();
    let pipes = 2 * apisix_stream::proxy::pool::PIPES_PER_WORKER * workers;
    eprintln!(
        "{N} downloads of {} MiB exact in {took:?} ({:.0} MB/s); proxy descriptors {fds0} at rest, \
         at most {most} (bound {fds0} + {} + {pipes} pipe ends)",
        DOWNLOAD >> 20,
        (N * DOWNLOAD) as f64 / took.as_secs_f64() / 1e6,
        2 * N
    );
    assert!(
        most <= fds0 + 2 * N + pipes,
        "{most} descriptors for {N} connections ({fds0} at rest)"
    );
    proxy.assert_alive();
}
