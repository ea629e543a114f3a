//! Limits, faults and hostile input: the proxy keeps serving, refuses what
//! it must at once, and returns to its baseline afterwards.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use apisix_stream::config::ListenSpec;
use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::backend::{roundtrip, Backend, Mode};
use crate::harness::{eventually, within, ChildConfig, TestServer, KEY};

async fn with_nginx_config(extra: &str) -> TestServer {
    let extra = format!("nginx_config:\n{extra}");
    TestServer::start_full(
        tempfile::tempdir().expect("tempdir"),
        move |y| format!("{y}{extra}"),
        |c| {
            if let Some(sp) = c.apisix.stream_proxy.as_mut() {
                sp.tcp = vec![ListenSpec::new("127.0.0.1:0".parse().expect("addr"))];
            }
        },
    )
    .await
}

#[tokio::test]
async fn past_the_session_cap_new_connections_close_at_once() {
    let s = with_nginx_config("  event:\n    worker_connections: 4\n").await;
    let echo = Backend::start("echo", Mode::Echo).await;
    s.put_route(
        "1",
        &json!({"upstream": {"nodes": {echo.addr.to_string(): 1}}}),
    )
    .await;
    let cap = s.stream_stats().await["limits"]["max_sessions"]
        .as_u64()
        .expect("cap") as usize;
    assert!(cap >= 2, "cap {cap}");
    let proxy = s.tcp[0];
    let mut held = Vec::new();
    for i in 0..cap {
        let mut c = within(5, TcpStream::connect(proxy)).await.expect("connect");
        assert_eq!(
            roundtrip(&mut c, format!("{i}").as_bytes()).await,
            format!("{i}").as_bytes()
        );
        held.push(c);
    }
    // One more: closed at once, never left hanging.
    let started = Instant::now();
    let mut extra = within(5, TcpStream::connect(proxy)).await.expect("connect");
    let _ = extra.write_all(b"hello").await;
    let mut b = [0u8; 8];
    let n = within(5, extra.read(&mut b)).await.unwrap_or(0);
    assert_eq!(n, 0, "no data past the cap");
    assert!(started.elapsed() < Duration::from_secs(2));
    let st = s.stream_stats().await;
    assert_eq!(st["limits"]["sessions"], cap);
    assert!(st["limits"]["refused"].as_u64().expect("refused") >= 1);
    // Held sessions are unharmed; a freed slot serves a new client.
    for c in &mut held {
        assert_eq!(roundtrip(c, b"still").await, b"still");
    }
    held.pop();
    assert!(
        eventually(5, async || s.stream_stats().await["limits"]["sessions"]
            == cap - 1)
        .await,
        "the slot comes back"
    );
    let mut c = within(5, TcpStream::connect(proxy)).await.expect("connect");
    assert_eq!(roundtrip(&mut c, b"again").await, b"again");
    drop((c, held));
    assert!(
        eventually(5, async || s.stream_stats().await["limits"]["sessions"]
            == 0)
        .await
    );
}

#[tokio::test]
async fn slow_or_silent_admin_clients_are_cut_off() {
    let s = with_nginx_config(
        "  http:\n    client_header_timeout: 1s\n    client_body_timeout: 1s\n    keepalive_timeout: 1s\n",
    )
    .await;
    // A head that never completes: the connection is closed after ~1s.
    let mut c = within(5, TcpStream::connect(s.admin))
        .await
        .expect("connect");
    c.write_all(b"GET /apisix/admin/stream_routes HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let started = Instant::now();
    let mut buf = Vec::new();
    let _ = within(5, c.read_to_end(&mut buf)).await;
    assert!(started.elapsed() < Duration::from_secs(4));
    // A body that stops half way: 408 with an error_msg.
    let mut c = within(5, TcpStream::connect(s.admin))
        .await
        .expect("connect");
    c.write_all(
        format!(
            "PUT /apisix/admin/upstreams/1 HTTP/1.1\r\nHost: x\r\nX-API-KEY: {KEY}\r\nContent-Length: 100\r\n\r\n{{\"nodes\""
        )
        .as_bytes(),
    )
    .await
    .expect("write");
    let mut buf = Vec::new();
    let _ = within(5, c.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("error_msg"), "{text}");
    // An idle keep-alive connection is closed too.
    let mut c = within(5, TcpStream::connect(s.admin))
        .await
        .expect("connect");
    c.write_all(
        format!("GET /apisix/admin/upstreams HTTP/1.1\r\nHost: x\r\nX-API-KEY: {KEY}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .expect("write");
    let mut buf = Vec::new();
    let _ = within(5, c.read_to_end(&mut buf)).await;
    assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200"));
    // Nothing stored, and the API still answers.
    let (st, _) = s.call(Method::GET, "/apisix/admin/upstreams/1", None).await;
    assert_eq!(st, 404);
}

#[tokio::test]
async fn past_the_admin_cap_the_longest_silent_connection_gives_way() {
    let s = TestServer::start().await;
    let mut idle = Vec::new();
    for _ in 0..apisix_stream::http::MAX_CONNECTIONS {
        idle.push(
            within(5, TcpStream::connect(s.admin))
                .await
                .expect("connect"),
        );
    }
    // Past the cap: the connection silent longest is closed at once and
    // its slot goes to the new one, which is served.
    let mut extra = within(5, TcpStream::connect(s.admin))
        .await
        .expect("connect");
    let mut b = [0u8; 1];
    let n = within(5, idle[0].read(&mut b)).await.unwrap_or(0);
    assert_eq!(n, 0, "the oldest silent connection is closed");
    extra
        .write_all(
            format!("GET /apisix/admin/upstreams HTTP/1.1\r\nHost: x\r\nX-API-KEY: {KEY}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .expect("write");
    let mut buf = Vec::new();
    let _ = within(5, extra.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    drop(idle);
    // Slots come back as soon as the idle sockets go.
    let ok = eventually(5, async || {
        let get = s
            .client
            .get(format!("http://{}/apisix/admin/upstreams", s.admin))
            .header("X-API-KEY", KEY)
            .send();
        matches!(
            tokio::time::timeout(Duration::from_secs(2), get).await,
            Ok(Ok(r)) if r.status() == 200
        )
    })
    .await;
    assert!(ok, "the admin API serves again");
}

#[tokio::test]
async fn malformed_nested_and_huge_admin_bodies_get_clear_errors() {
    let s = TestServer::start().await;
    let cases: Vec<(String, u16)> = vec![
        ("{".into(), 400),
        ("[1,2,3]".into(), 400),
        ("\"text\"".into(), 400),
        ("{\"nodes\": {\"127.0.0.1:1\": \"x\"}}".into(), 400),
        (
            format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)),
            400,
        ),
        (
            format!(
                "{{\"nodes\":{{\"127.0.0.1:1\":1}},\"desc\":{}1{}}}",
                "{\"a\":".repeat(200),
                "}".repeat(200)
            ),
            400,
        ),
        (
            format!("{{\"desc\":\"{}\"}}", "x".repeat(2 * 1024 * 1024)),
            413,
        ),
        ("\u{0}\u{1}\u{2}".into(), 400),
    ];
    for (body, want) in cases {
        let (st, v) = s
            .call(Method::PUT, "/apisix/admin/upstreams/1", Some(&body))
            .await;
        assert_eq!(st.as_u16(), want, "{}: {v}", &body[..body.len().min(40)]);
        assert!(
            v["error_msg"].is_string(),
            "{}: {v}",
            &body[..body.len().min(40)]
        );
    }
    // Nothing was stored and a good body still works.
    let (st, _) = s.call(Method::GET, "/apisix/admin/upstreams/1", None).await;
    assert_eq!(st, 404);
    let (st, _) = s
        .call(
            Method::PUT,
            "/apisix/admin/upstreams/1",
            Some(r#"{"nodes":{"127.0.0.1:1":1}}"#),
        )
        .await;
    assert_eq!(st, 201);
}

/// A small tmpfs mounted for one test, unmounted on drop. `None` where the
/// machine does not let us mount (not root, no CAP_SYS_ADMIN).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &std::path::Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).ok()?;
        let ok = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(at.to_path_buf()))
    }

    fn remount(&self, opt: &str) {
        let st = std::process::Command::new("mount")
            .args(["-o", &format!("remount,{opt}")])
            .arg(&self.0)
            .status()
            .expect("mount");
        assert!(st.success(), "remount {opt}");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

async fn put_upstream(s: &TestServer, id: usize, pad: usize) -> (u16, Value) {
    // Many nodes make a big object (`desc` is capped at 256 characters).
    let nodes: serde_json::Map<String, Value> = (0..pad / 20)
        .map(|i| (format!("127.0.{}.{}:1", i / 250, i % 250 + 1), json!(1)))
        .chain(std::iter::once(("127.0.0.1:1".to_string(), json!(1))))
        .collect();
    let body = json!({ "nodes": nodes }).to_string();
    let (st, v) = s
        .call(
            Method::PUT,
            &format!("/apisix/admin/upstreams/{id}"),
            Some(&body),
        )
        .await;
    (st.as_u16(), v)
}

#[tokio::test]
async fn full_or_read_only_disk_fails_writes_cleanly_and_recovers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let Some(fs) = Tmpfs::mount(&data, "1m") else {
        eprintln!("skipped: this machine does not allow mounting a tmpfs");
        return;
    };
    let mut s = TestServer::start_in(dir, |y| y).await;
    let mut acknowledged = Vec::new();
    assert_eq!(put_upstream(&s, 0, 10).await.0, 201);
    acknowledged.push(0);
    // Fill the disk.
    let filler = data.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).expect("filler");
        let chunk = vec![0u8; 16 * 1024];
        while f.write_all(&chunk).and_then(|()| f.sync_all()).is_ok() {}
    }
    let mut refused = None;
    for id in 1..200 {
        match put_upstream(&s, id, 4096).await {
            (201, _) => acknowledged.push(id),
            (st, v) => {
                refused = Some((st, v));
                break;
            }
        }
    }
    let (st, v) = refused.expect("a full disk refuses writes");
    assert_eq!(st, 503, "{v}");
    let msg = v["error_msg"].as_str().expect("error_msg");
    assert!(msg.contains("No space left"), "{msg}");
    // Reads keep working, every acknowledged write is there.
    for id in &acknowledged {
        let (st, _) = s
            .call(Method::GET, &format!("/apisix/admin/upstreams/{id}"), None)
            .await;
        assert_eq!(st, 200);
    }
    // Space returns: writes resume without a restart.
    std::fs::remove_file(&filler).expect("free space");
    assert_eq!(put_upstream(&s, 500, 4096).await.0, 201);
    acknowledged.push(500);
    s.stop().await;
    // A read-only data directory: the stored objects are served and route
    // traffic, writes get a clear 503; once writable, writes resume.
    fs.remount("ro");
    let dir = std::mem::replace(&mut s.dir, tempfile::tempdir().expect("tempdir"));
    let mut s = TestServer::start_in(dir, |y| y).await;
    let (st, _) = s
        .call(Method::GET, "/apisix/admin/upstreams/500", None)
        .await;
    assert_eq!(st, 200);
    let (st, v) = put_upstream(&s, 501, 10).await;
    assert_eq!(st, 503, "{v}");
    assert!(
        v["error_msg"]
            .as_str()
            .is_some_and(|m| m.contains("Read-only")),
        "{v}"
    );
    fs.remount("rw");
    assert_eq!(put_upstream(&s, 502, 10).await.0, 201);
    acknowledged.push(502);
    s.stop().await;
    // Reopened: exactly the acknowledged objects.
    let store = apisix_stream::store::local::LocalStore::open(&data).expect("store opens");
    use apisix_stream::store::Store as _;
    let ids: Vec<usize> = store
        .list(apisix_stream::model::Kind::Upstream)
        .await
        .expect("list")
        .iter()
        .map(|e| e.id.parse().expect("id"))
        .collect();
    let mut want = acknowledged.clone();
    want.sort_by_key(|i| i.to_string());
    assert_eq!(ids, want);
    drop(store);
    drop(fs);
}

fn refuses(addr: SocketAddr) -> bool {
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_err()
}

#[tokio::test]
async fn sighup_adds_and_removes_listeners_without_dropping_connections() {
    use crate::harness::{free_port, spawn_serve, wait_listening};
    let dir = tempfile::tempdir().expect("tempdir");
    let (admin, a, b) = (free_port(), free_port(), free_port());
    let path = ChildConfig::new(admin).tcp(a).write(dir.path());
    let mut child = spawn_serve(&path);
    let admin_addr: SocketAddr = format!("127.0.0.1:{admin}").parse().expect("addr");
    wait_listening(admin_addr, &mut child);
    let echo = Backend::start("echo", Mode::Echo).await;
    let client = reqwest::Client::new();
    let (st, v) = crate::harness::call(
        &client,
        admin_addr,
        Some(KEY),
        Method::PUT,
        "/apisix/admin/stream_routes/1",
        Some(&json!({"upstream": {"nodes": {echo.addr.to_string(): 1}}}).to_string()),
    )
    .await;
    assert!(st.is_success(), "{v}");
    let a_addr: SocketAddr = format!("127.0.0.1:{a}").parse().expect("addr");
    let b_addr: SocketAddr = format!("127.0.0.1:{b}").parse().expect("addr");
    let mut old = within(5, TcpStream::connect(a_addr))
        .await
        .expect("connect a");
    assert_eq!(roundtrip(&mut old, b"before").await, b"before");
    assert!(refuses(b_addr));

    // Swap listener a for b and signal.
    ChildConfig::new(admin).tcp(b).write(dir.path());
    let pid = child.child.id().to_string();
    let hup = || {
        let st = std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .expect("kill");
        assert!(st.success());
    };
    hup();
    assert!(
        eventually(10, async || !refuses(b_addr)).await,
        "the new listener accepts"
    );
    assert!(
        eventually(10, async || refuses(a_addr)).await,
        "the removed one stops"
    );
    let mut new = within(5, TcpStream::connect(b_addr))
        .await
        .expect("connect b");
    assert_eq!(roundtrip(&mut new, b"via b").await, b"via b");
    // The connection accepted on the removed listener carries on.
    assert_eq!(roundtrip(&mut old, b"still here").await, b"still here");

    // A broken file keeps the current listeners; the process lives on.
    std::fs::write(&path, "apisix: [").expect("write");
    hup();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        child.child.try_wait().expect("wait").is_none(),
        "still running"
    );
    assert_eq!(roundtrip(&mut new, b"ok").await, b"ok");
    assert!(!refuses(b_addr));
    drop((old, new));
}

#[tokio::test]
async fn reload_in_process_reports_what_changed() {
    let mut s = with_nginx_config("  event:\n    worker_connections: 1000\n").await;
    let port = crate::harness::free_port();
    let mut config = apisix_stream::config::Config::from_yaml(&crate::harness::test_yaml(
        &s.dir.path().join("data"),
        0,
    ))
    .expect("config");
    let kept = ListenSpec::new("127.0.0.1:0".parse().expect("addr"));
    let added = ListenSpec::new(format!("127.0.0.1:{port}").parse().expect("addr"));
    if let Some(sp) = config.apisix.stream_proxy.as_mut() {
        sp.tcp = vec![kept, added];
        sp.udp = vec![];
    }
    let server = s.server.as_mut().expect("running");
    let out = server.reload_listeners(&config);
    assert_eq!(out.added, [format!("127.0.0.1:{port}")]);
    assert!(out.removed.is_empty() && out.failed.is_empty(), "{out:?}");
    assert_eq!(server.tcp_listeners().len(), 2);
    // Listed by the Control API too.
    let st = s.stream_stats().await;
    let labels: Vec<&str> = st["listeners"]
        .as_array()
        .expect("listeners")
        .iter()
        .filter_map(|l| l["listen"].as_str())
        .collect();
    assert!(
        labels.contains(&format!("127.0.0.1:{port}").as_str()),
        "{labels:?}"
    );
    // A port already taken by someone else fails alone.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut with_bad = config.clone();
    if let Some(sp) = with_bad.apisix.stream_proxy.as_mut() {
        sp.tcp
            .push(ListenSpec::new(taken.local_addr().expect("addr")));
    }
    let server = s.server.as_mut().expect("running");
    let out = server.reload_listeners(&with_bad);
    assert_eq!(out.failed.len(), 1, "{out:?}");
    assert!(out.added.is_empty() && out.removed.is_empty());
    assert_eq!(server.tcp_listeners().len(), 2);
}

#[tokio::test]
async fn reload_swaps_an_entry_whose_options_changed_on_the_same_address() {
    let mut s = with_nginx_config("  event:\n    worker_connections: 1000\n").await;
    let echo = Backend::start("echo", Mode::Echo).await;
    s.put_route(
        "1",
        &json!({"upstream": {"nodes": {echo.addr.to_string(): 1}}}),
    )
    .await;
    let addr = s.tcp[0];
    let mut old = within(5, TcpStream::connect(addr)).await.expect("connect");
    assert_eq!(roundtrip(&mut old, b"plain").await, b"plain");

    // The same address, now expecting a PROXY protocol header.
    let mut config = apisix_stream::config::Config::from_yaml(&crate::harness::test_yaml(
        &s.dir.path().join("data"),
        0,
    ))
    .expect("config");
    let mut spec = ListenSpec::new(addr);
    spec.proxy_protocol = true;
    if let Some(sp) = config.apisix.stream_proxy.as_mut() {
        sp.tcp = vec![spec];
        sp.udp = vec![];
    }
    let server = s.server.as_mut().expect("running");
    let out = server.reload_listeners(&config);
    assert_eq!(out.added, [addr.to_string()], "{out:?}");
    assert_eq!(out.removed, [addr.to_string()], "{out:?}");
    assert!(out.failed.is_empty(), "{out:?}");
    let now = server.tcp_listeners();
    assert!(now.len() == 1 && now[0].spec.proxy_protocol && now[0].local == addr);

    // New connections are served by the new entry: with a header they are
    // proxied, without one they are refused.
    let answer = async |data: &[u8]| -> Option<Vec<u8>> {
        let mut c = within(5, TcpStream::connect(addr)).await.ok()?;
        c.write_all(data).await.ok()?;
        let mut b = [0u8; 5];
        let wait = Duration::from_secs(2);
        match tokio::time::timeout(wait, c.read(&mut b)).await {
            Ok(Ok(n)) => Some(b[..n].to_vec()),
            // Closed with a reset: nothing came back either.
            Ok(Err(_)) => Some(Vec::new()),
            Err(_) => None,
        }
    };
    let header = b"PROXY TCP4 192.0.2.1 127.0.0.1 1111 2222\r\nhello";
    assert!(
        eventually(10, async || answer(header).await.as_deref()
            == Some(b"hello"))
        .await,
        "served with a header"
    );
    assert!(
        eventually(10, async || answer(b"hello\r\n").await.as_deref()
            == Some(b""))
        .await,
        "no header, no data"
    );
    // The connection accepted before the change carries on.
    assert_eq!(roundtrip(&mut old, b"still here").await, b"still here");
}

#[tokio::test]
async fn sighup_puts_changed_admin_keys_in_force() {
    use crate::harness::{free_port, spawn_serve, wait_listening};
    use reqwest::StatusCode;
    let dir = tempfile::tempdir().expect("tempdir");
    let admin = free_port();
    let path = ChildConfig::new(admin).write(dir.path());
    let mut child = spawn_serve(&path);
    let admin_addr: SocketAddr = format!("127.0.0.1:{admin}").parse().expect("addr");
    wait_listening(admin_addr, &mut child);
    let client = reqwest::Client::new();
    let status = |key: &'static str| {
        let client = client.clone();
        async move {
            let (st, _) = crate::harness::call(
                &client,
                admin_addr,
                Some(key),
                Method::GET,
                "/apisix/admin/upstreams",
                None,
            )
            .await;
            st
        }
    };
    const NEW: &str = "a-new-admin-key-after-reload";
    assert_eq!(status(KEY).await, StatusCode::OK);
    assert_eq!(status(NEW).await, StatusCode::UNAUTHORIZED);

    ChildConfig::new(admin).admin_key(NEW).write(dir.path());
    let st = std::process::Command::new("kill")
        .args(["-HUP", &child.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(st.success());
    assert!(
        eventually(10, async || status(NEW).await == StatusCode::OK).await,
        "the new key is accepted after SIGHUP"
    );
    assert_eq!(
        status(KEY).await,
        StatusCode::UNAUTHORIZED,
        "the old key is no longer accepted"
    );
    assert!(
        child.child.try_wait().expect("wait").is_none(),
        "still running"
    );
}
