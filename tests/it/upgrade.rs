//! Binary upgrade on SIGUSR2 through the real server: a copy of the binary
//! started from a temporary path, replaced on disk, hands its sockets and
//! store to the new file without refusing a connection.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::backend::{roundtrip, Backend, Mode};
use crate::harness::{
    bin, call, eventually, eventually_some, free_port, wait_listening_logged, within, ChildConfig,
    ChildGuard, KEY,
};

/// A process the test did not spawn itself (the upgraded server), killed
/// when dropped.
struct PidGuard(u32);

impl Drop for PidGuard {
    fn drop(&mut self) {
        signal(self.0, "-KILL");
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([sig, &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

/// Put a copy of `from` at `to` the way a package upgrade does: a new file
/// renamed over the old one.
fn install(from: &Path, to: &Path) {
    let tmp = to.with_extension("new");
    std::fs::copy(from, &tmp).expect("copy binary");
    std::fs::rename(&tmp, to).expect("rename binary");
}

struct Setup {
    dir: tempfile::TempDir,
    exe: PathBuf,
    config: PathBuf,
    log: PathBuf,
    admin: SocketAddr,
    control: SocketAddr,
    proxy: SocketAddr,
    echo: Backend,
    client: reqwest::Client,
    /// Stands in for systemd's `NOTIFY_SOCKET`.
    notify: std::os::unix::net::UnixDatagram,
}

impl Setup {
    async fn new() -> (Setup, ChildGuard) {
        let dir = tempfile::tempdir().expect("tempdir");
        let exe = dir.path().join("apisix-stream");
        install(&bin(), &exe);
        let (admin, control, tcp) = (free_port(), free_port(), free_port());
        let config = ChildConfig::new(admin)
            .control(control)
            .tcp(tcp)
            .write(dir.path());
        let addr = |p: u16| -> SocketAddr { format!("127.0.0.1:{p}").parse().expect("addr") };
        let notify = std::os::unix::net::UnixDatagram::bind(dir.path().join("notify.sock"))
            .expect("notify socket");
        notify.set_nonblocking(true).expect("nonblocking");
        let s = Setup {
            notify,
            log: dir.path().join("serve.log"),
            exe,
            config,
            dir,
            admin: addr(admin),
            control: addr(control),
            proxy: addr(tcp),
            echo: Backend::start("echo", Mode::Echo).await,
            client: reqwest::Client::new(),
        };
        let mut child = s.serve();
        wait_listening_logged(s.admin, &mut child, &s.log);
        s.put_route("1").await;
        assert!(
            eventually(10, async || s.echoes().await).await,
            "the route serves"
        );
        (s, child)
    }

    /// `serve` started from the copied binary, logging to `log`.
    fn serve(&self) -> ChildGuard {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log");
        let child = Command::new(&self.exe)
            .arg("serve")
            .arg("-c")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .env("RUST_LOG", "info")
            .env("NOTIFY_SOCKET", self.dir.path().join("notify.sock"))
            .spawn()
            .expect("spawn serve");
        ChildGuard { child }
    }

    async fn put_route(&self, id: &str) -> u16 {
        let body = json!({"upstream": {"nodes": {self.echo.addr.to_string(): 1}}}).to_string();
        let path = format!("/apisix/admin/stream_routes/{id}");
        let (st, _) = call(
            &self.client,
            self.admin,
            Some(KEY),
            Method::PUT,
            &path,
            Some(&body),
        )
        .await;
        st.as_u16()
    }

    async fn stats(&self) -> Option<Value> {
        let url = format!("http://{}/v1/stream/stats", self.control);
        let res = self.client.get(url).send().await.ok()?;
        res.json().await.ok()
    }

    async fn pid(&self) -> Option<u32> {
        self.stats().await?["pid"].as_u64().map(|p| p as u32)
    }

    async fn echoes(&self) -> bool {
        match within(5, TcpStream::connect(self.proxy)).await {
            Ok(mut s) => roundtrip(&mut s, b"ping").await == b"ping",
            Err(_) => false,
        }
    }

    /// The systemd notifications received so far.
    fn notifications(&self) -> String {
        let mut all = String::new();
        let mut buf = [0u8; 256];
        while let Ok(n) = self.notify.recv(&mut buf) {
            all.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        all
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// One connection attempt through the proxy: connect, one byte there and back.
async fn attempt(addr: SocketAddr) -> bool {
    let Ok(Ok(mut s)) =
        tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await
    else {
        return false;
    };
    if s.write_all(b"x").await.is_err() {
        return false;
    }
    let mut b = [0u8; 1];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut b)).await,
        Ok(Ok(1))
    )
}

/// Send `total` bytes through the echo route in paced chunks, reading the
/// echo back at the same time; whether every byte came back in order, and
/// when the transfer ended.
async fn long_transfer(addr: SocketAddr, total: usize) -> (bool, Instant) {
    let s = within(5, TcpStream::connect(addr)).await.expect("connect");
    let (mut rd, mut wr) = s.into_split();
    let data: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        for chunk in sent.chunks(32 << 10) {
            wr.write_all(chunk).await.expect("write");
            tokio::time::sleep(Duration::from_millis(4)).await;
        }
        wr
    });
    let mut got = vec![0u8; total];
    let ok = within(60, rd.read_exact(&mut got)).await.is_ok();
    let _wr = writer.await.expect("writer");
    (ok && got == data, Instant::now())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigusr2_hands_over_to_the_replaced_binary_without_refusing_a_connection() {
    let (s, mut child) = Setup::new().await;
    let old = child.child.id();
    assert_eq!(s.pid().await, Some(old), "stats name the serving pid");
    // A package upgrade replaces the file the server was started from.
    install(&bin(), &s.exe);

    let stop = Arc::new(AtomicBool::new(false));
    let (tried, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut loops = Vec::new();
    for _ in 0..4 {
        let (stop, tried, refused, addr) = (stop.clone(), tried.clone(), refused.clone(), s.proxy);
        loops.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                tried.fetch_add(1, Ordering::Relaxed);
                if !attempt(addr).await {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let transfer = tokio::spawn(long_transfer(s.proxy, 12 << 20));
    assert!(
        eventually(10, async || tried.load(Ordering::Relaxed) > 200).await,
        "attempts run before the switch"
    );

    let t0 = Instant::now();
    let before = tried.load(Ordering::Relaxed);
    signal(old, "-USR2");
    let new = eventually_some(35, "a new pid serving", async || {
        s.pid().await.filter(|&p| p != old)
    })
    .await;
    let _guard = PidGuard(new);
    let switch = t0.elapsed();
    let serving_at = Instant::now();
    let exe = std::fs::read_link(format!("/proc/{new}/exe")).expect("exe link");
    assert_eq!(exe, s.exe, "the new process runs the replaced file");
    let mut notes = String::new();
    assert!(
        eventually(10, async || {
            notes.push_str(&s.notifications());
            notes.contains(&format!("MAINPID={new}\nREADY=1"))
        })
        .await,
        "systemd learns the new main pid: {notes:?}"
    );
    assert!(
        notes.contains(&format!("MAINPID={old}\nREADY=1")),
        "{notes:?}"
    );

    // The old process drains (the long transfer keeps it) and exits 0.
    let status = tokio::task::spawn_blocking(move || {
        let st = child.child.wait();
        (st, child)
    });
    let (status, _child) = within(60, status).await.expect("join");
    let drain = serving_at.elapsed();
    assert!(status.expect("wait").success(), "the old process exits 0");
    let during = tried.load(Ordering::Relaxed) - before;
    // Keep trying on the new process alone for a moment too.
    let after_exit = tried.load(Ordering::Relaxed);
    assert!(
        eventually(20, async || tried.load(Ordering::Relaxed)
            > after_exit + 500)
        .await,
        "attempts go on after the switch"
    );
    stop.store(true, Ordering::Relaxed);
    for l in loops {
        l.await.expect("attempt loop");
    }
    let (exact, ended) = transfer.await.expect("transfer");
    println!(
        "upgrade: attempts during the switch {during}, total {}, refused {}, switch {switch:?} (signal to new pid serving), drain {drain:?}",
        tried.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed)
    );
    assert_eq!(refused.load(Ordering::Relaxed), 0, "no attempt refused");
    assert!(during >= 1000, "thousands of attempts: {during}");
    assert!(exact, "the long transfer is byte-exact across the switch");
    assert!(ended > serving_at, "the transfer spanned the switch");

    // An Admin write after the switch lands in the store the new process
    // took over and survives a restart.
    assert_eq!(s.put_route("2").await, 201, "{}", s.log_text());
    signal(new, "-TERM");
    assert!(
        eventually(30, async || !alive(new)).await,
        "the new process stops"
    );
    let mut again = s.serve();
    wait_listening_logged(s.admin, &mut again, &s.log);
    let (st, v) = call(
        &s.client,
        s.admin,
        Some(KEY),
        Method::GET,
        "/apisix/admin/stream_routes/2",
        None,
    )
    .await;
    assert_eq!(st.as_u16(), 200, "{v}");
    drop(s.dir);
}

fn cli_upgrade(control: SocketAddr) -> (bool, String, String) {
    let out = Command::new(bin())
        .args(["upgrade", "--control-url", &format!("http://{control}")])
        .output()
        .expect("run upgrade");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_new_binary_leaves_the_old_one_serving_and_a_later_upgrade_works() {
    let (s, mut child) = Setup::new().await;
    let old = child.child.id();
    let broken = s.dir.path().join("broken");
    std::fs::write(&broken, "#!/bin/sh\nexit 1\n").expect("script");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&broken, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    install(&broken, &s.exe);
    let (ok, _, err) = tokio::task::spawn_blocking({
        let c = s.control;
        move || cli_upgrade(c)
    })
    .await
    .expect("cli");
    assert!(!ok, "upgrade fails");
    assert!(
        err.contains(&format!("pid {old} still serves")) && err.contains("exited"),
        "{err}"
    );
    assert_eq!(s.pid().await, Some(old));
    assert!(
        child.child.try_wait().expect("wait").is_none(),
        "still running"
    );
    assert!(
        s.log_text().contains("binary upgrade failed"),
        "{}",
        s.log_text()
    );
    // It keeps serving, the store included.
    assert!(s.echoes().await);
    assert_eq!(s.put_route("2").await, 201, "{}", s.log_text());

    // With a working binary in place, the next upgrade takes over.
    install(&bin(), &s.exe);
    let (ok, out, err) = tokio::task::spawn_blocking({
        let c = s.control;
        move || cli_upgrade(c)
    })
    .await
    .expect("cli");
    assert!(ok, "{err}");
    let new: u32 = out.trim().parse().expect("new pid printed");
    let _guard = PidGuard(new);
    assert_ne!(new, old);
    assert_eq!(s.pid().await, Some(new));
    let st = tokio::task::spawn_blocking(move || child.child.wait().map(|st| (st, child)))
        .await
        .expect("join")
        .expect("wait");
    assert!(st.0.success());
    assert!(s.echoes().await);
    assert_eq!(s.put_route("3").await, 201, "{}", s.log_text());
}
