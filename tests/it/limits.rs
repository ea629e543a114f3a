//! Fair limits: idle sockets cannot lock anyone out of the Admin and
//! Control APIs, a UDP flood from forged addresses cannot take the TCP
//! sessions' room, and an empty admin key list opens nothing.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream, UdpSocket};

use crate::backend::{roundtrip, Backend, Mode};
use crate::harness::{
    eventually, free_port, spawn_serve, wait_exit, wait_listening, within, ChildConfig, TestServer,
    KEY,
};

/// `n` open connections to `to` from the loopback address `from`, none of
/// which ever sends a byte.
async fn idle_connections(from: Ipv4Addr, to: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let sock = TcpSocket::new_v4().expect("socket");
        sock.bind(SocketAddr::new(IpAddr::V4(from), 0))
            .expect("bind a loopback source");
        held.push(within(5, sock.connect(to)).await.expect("connect"));
    }
    held
}

/// How long an authorised `GET url` takes; fails unless it is a 200.
async fn authorised_get(client: &reqwest::Client, url: &str) -> Duration {
    let started = Instant::now();
    let res = within(5, client.get(url).header("X-API-KEY", KEY).send())
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(res.status(), StatusCode::OK, "GET {url}");
    started.elapsed()
}

/// Whether the server has closed `c` (EOF or reset) within `secs`.
async fn closed_by_server(c: &mut TcpStream, secs: u64) -> bool {
    let mut b = [0u8; 1];
    matches!(
        tokio::time::timeout(Duration::from_secs(secs), c.read(&mut b)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test]
async fn idle_connections_from_inside_and_outside_allow_admin_lock_no_client_out() {
    // allow_admin is 127.0.0.0/24: 127.0.1.2 is outside, 127.0.0.1 inside.
    let s = TestServer::start().await;
    let client = reqwest::Client::new();
    let admin_url = s.url("/apisix/admin/upstreams");
    let stats_url = format!("http://{}/v1/stream/stats", s.control());
    let outside = Ipv4Addr::new(127, 0, 1, 2);
    let inside = Ipv4Addr::LOCALHOST;

    // 300 silent connections from outside allow_admin take no slot.
    let mut outsiders = idle_connections(outside, s.admin, 300).await;
    let t = authorised_get(&client, &admin_url).await;
    eprintln!("admin GET with 300 idle outsiders: {t:?}");
    assert!(t < Duration::from_secs(1), "{t:?}");
    // Most of them are closed at accept, the rest after their first-byte
    // timeout; none is kept.
    let mut closed_at_once = 0;
    for c in &mut outsiders {
        if closed_by_server(c, 0).await {
            closed_at_once += 1;
        }
    }
    assert!(
        closed_at_once >= 300 - 16,
        "closed at accept: {closed_at_once}"
    );

    // 300 silent connections from inside: the authorised client still gets
    // a slot, at once, from the API and from the Control API.
    let mut insiders = idle_connections(inside, s.admin, 300).await;
    let mut control_idle = idle_connections(inside, s.control(), 300).await;
    let t = authorised_get(&client, &admin_url).await;
    eprintln!("admin GET with 300 idle insiders: {t:?}");
    assert!(t < Duration::from_secs(1), "{t:?}");
    let t = authorised_get(&client, &stats_url).await;
    eprintln!("control GET with 300 idle connections: {t:?}");
    assert!(t < Duration::from_secs(1), "{t:?}");

    // A request that keeps the slots busy while a new one arrives is not
    // cut off, and a client on keep-alive keeps being served.
    for _ in 0..3 {
        authorised_get(&client, &admin_url).await;
    }

    // Nothing silent is kept: every idle socket is closed by the server
    // within the first-byte timeout (5 s), however many there were.
    let started = Instant::now();
    for c in outsiders
        .iter_mut()
        .chain(insiders.iter_mut())
        .chain(control_idle.iter_mut())
    {
        assert!(closed_by_server(c, 8).await, "a silent connection was kept");
    }
    eprintln!(
        "every silent connection closed after {:?}",
        started.elapsed()
    );
    // And the APIs serve as before.
    authorised_get(&client, &admin_url).await;
    authorised_get(&client, &stats_url).await;
    // A refused peer still learns why, on a connection of its own.
    let outsider = reqwest::Client::builder()
        .local_address(IpAddr::V4(outside))
        .build()
        .expect("client bound to 127.0.1.2");
    let res = within(5, outsider.get(&admin_url).header("X-API-KEY", KEY).send())
        .await
        .expect("an answer");
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert!(res.text().await.expect("body").contains("127.0.1.2"));
}

/// A server with one TCP and one UDP listener and this `worker_connections`.
async fn tcp_and_udp(worker_connections: u32) -> TestServer {
    TestServer::start_full(
        tempfile::tempdir().expect("tempdir"),
        move |y| {
            format!("{y}nginx_config:\n  event:\n    worker_connections: {worker_connections}\n")
        },
        |c| {
            if let Some(sp) = c.apisix.stream_proxy.as_mut() {
                sp.tcp = vec![apisix_stream::config::ListenSpec::new(
                    "127.0.0.1:0".parse().expect("addr"),
                )];
                sp.udp = vec![apisix_stream::config::ListenSpec::new(
                    "127.0.0.1:0".parse().expect("addr"),
                )];
            }
        },
    )
    .await
}

fn count(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_udp_flood_from_4000_addresses_leaves_tcp_served() {
    let s = tcp_and_udp(1000).await;
    let echo = Backend::start("echo", Mode::Echo).await;
    // A node that takes datagrams and never answers: sessions stay open.
    let sink = UdpSocket::bind("127.0.0.1:0").await.expect("sink");
    let (tcp, udp) = (s.tcp[0], s.udp[0]);
    s.put_route(
        "tcp",
        &json!({"server_port": tcp.port(), "upstream": {"nodes": {echo.addr.to_string(): 1}}}),
    )
    .await;
    s.put_route(
        "udp",
        &json!({"server_port": udp.port(),
                "upstream": {"nodes": {sink.local_addr().expect("addr").to_string(): 1}}}),
    )
    .await;
    let limits = s.stream_stats().await["limits"].clone();
    let total = count(&limits["max_sessions"]);
    let max_udp = count(&limits["udp"]["max_sessions"]);
    let per_source = count(&limits["udp"]["max_sessions_per_source"]);
    eprintln!("budget {total}, udp share {max_udp}, per address {per_source}");
    assert_eq!(count(&limits["tcp"]["max_sessions"]), total);
    assert!(max_udp < total && per_source < max_udp, "{limits}");

    // Datagrams the server has seen: each opened a session or was refused.
    let seen = async || {
        let l = &s.stream_stats().await["limits"]["udp"];
        count(&l["sessions"]) + count(&l["refused"]) + count(&l["refused_per_source"])
    };
    // One datagram from each of `n` addresses 127.10.x.y, from `first` on,
    // a hundred at a time (each batch fits the listener's receive buffer,
    // so none is lost before the server sees it).
    let flood = async |first: u32, n: u32| {
        let seen0 = seen().await;
        for start in (first..first + n).step_by(100) {
            let end = (start + 100).min(first + n);
            for i in start..end {
                let from = Ipv4Addr::new(127, 10, (i / 250) as u8, (i % 250 + 1) as u8);
                let c = UdpSocket::bind(SocketAddr::new(IpAddr::V4(from), 0))
                    .await
                    .expect("bind a forged-looking source");
                c.send_to(b"x", udp).await.expect("send");
            }
            let want = seen0 + u64::from(end - first);
            assert!(
                eventually(10, async || seen().await >= want).await,
                "datagrams lost"
            );
        }
    };
    // While TCP clients come and go, 4,000 one-byte datagrams, each from
    // its own address.
    let served = tokio::spawn(async move {
        let mut served = 0u32;
        for i in 0..40u32 {
            let mut c = within(5, TcpStream::connect(tcp)).await.expect("connect");
            let msg = format!("during {i}");
            if roundtrip(&mut c, msg.as_bytes()).await == msg.as_bytes() {
                served += 1;
            }
        }
        served
    });
    let above = count(&limits["udp"]["per_source_above"]);
    flood(0, above as u32).await;
    let st = s.stream_stats().await;
    assert_eq!(
        count(&st["limits"]["udp"]["sessions"]),
        above,
        "{}",
        st["limits"]
    );
    // Then one address cycling through source ports gets its share, no more.
    let mut ports = Vec::new();
    for _ in 0..per_source + 20 {
        let c = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        c.send_to(b"x", udp).await.expect("send");
        ports.push(c);
    }
    let per_address = eventually(10, async || {
        count(&s.stream_stats().await["limits"]["udp"]["refused_per_source"]) == 20
    })
    .await;
    let st = s.stream_stats().await;
    assert!(per_address, "{}", st["limits"]);
    assert_eq!(count(&st["limits"]["udp"]["sessions"]), above + per_source);
    flood(above as u32, 4000 - above as u32).await;
    let st = s.stream_stats().await;
    assert_eq!(
        count(&st["limits"]["udp"]["sessions"]),
        max_udp,
        "the UDP share fills up: {}",
        st["limits"]
    );
    assert!(
        count(&st["limits"]["udp"]["refused"]) >= 1,
        "{}",
        st["limits"]
    );
    assert_eq!(within(60, served).await.expect("clients"), 40);

    // With the UDP share full, TCP clients are still served: the quarter
    // kept for TCP holds as many connections as it promises.
    let room = total - max_udp;
    let mut held = Vec::new();
    for i in 0..room {
        let mut c = within(5, TcpStream::connect(tcp)).await.expect("connect");
        let msg = format!("after {i}");
        assert_eq!(
            roundtrip(&mut c, msg.as_bytes()).await,
            msg.as_bytes(),
            "TCP client {i}"
        );
        held.push(c);
    }
    let st = s.stream_stats().await;
    eprintln!("after the flood: {}", st["limits"]);
    assert_eq!(
        count(&st["limits"]["tcp"]["refused"]),
        0,
        "{}",
        st["limits"]
    );
    assert_eq!(count(&st["limits"]["sessions"]), total, "{}", st["limits"]);
    drop((held, ports));
}

#[tokio::test]
async fn an_empty_admin_key_list_opens_nothing_and_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let admin = free_port();
    let yaml = ChildConfig::new(admin).yaml(&dir.path().join("data"));
    let keys_at = yaml
        .find("    admin_key:\n")
        .expect("admin_key in the test config");
    let keys_end = yaml.find("    admin_listen:").expect("admin_listen");
    let yaml = format!(
        "{}    admin_key: []\n{}",
        &yaml[..keys_at],
        &yaml[keys_end..]
    );
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, &yaml).expect("write config");
    let mut child = spawn_serve(&config);
    let addr = SocketAddr::from(([127, 0, 0, 1], admin));
    wait_listening(addr, &mut child);
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/apisix/admin/stream_routes");
    let res = within(5, client.get(&url).send()).await.expect("GET");
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let res = within(5, client.get(&url).header("X-API-KEY", "").send())
        .await
        .expect("GET with an empty key");
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let res = within(
        5,
        client
            .request(Method::PUT, format!("{url}/1"))
            .header("X-API-KEY", KEY)
            .body(r#"{"upstream": {"nodes": {"127.0.0.1:1": 1}}}"#)
            .send(),
    )
    .await
    .expect("PUT");
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    // Said once, at start-up, on stderr.
    let _ = child.child.kill();
    wait_exit(&mut child.child, 10, "serve");
    let mut err = String::new();
    if let Some(mut e) = child.child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut err);
    }
    assert!(
        err.contains("admin_key has no usable key"),
        "nothing logged: {err}"
    );
}
