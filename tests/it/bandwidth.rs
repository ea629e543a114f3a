//! `limit-bandwidth` end to end: downloads and uploads paced to the rate
//! (spliced transfers included), buckets shared by key, and rate changes
//! reaching running sessions.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::harness::{eventually_some, within, TestServer};

const MIB: usize = 1024 * 1024;

/// A node that answers `down N` with N bytes, and `up` by reading to EOF
/// and answering with the count.
struct BulkNode {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl BulkNode {
    async fn start() -> BulkNode {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (r, mut w) = s.into_split();
                    let mut r = BufReader::new(r);
                    let mut line = String::new();
                    if r.read_line(&mut line).await.is_err() {
                        return;
                    }
                    if let Some(n) = line.trim().strip_prefix("down ") {
                        let n: usize = n.parse().unwrap_or(0);
                        let chunk = vec![7u8; 64 * 1024];
                        let mut left = n;
                        while left > 0 {
                            let k = left.min(chunk.len());
                            if w.write_all(&chunk[..k]).await.is_err() {
                                return;
                            }
                            left -= k;
                        }
                    } else {
                        let mut sink = Vec::new();
                        let n = r.read_to_end(&mut sink).await.unwrap_or(0);
                        let _ = w.write_all(n.to_string().as_bytes()).await;
                    }
                    let _ = w.shutdown().await;
                });
            }
        });
        BulkNode { addr, task }
    }
}

impl Drop for BulkNode {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Download `n` bytes through the proxy; returns the byte count.
async fn download(proxy: SocketAddr, n: usize) -> usize {
    let mut c = within(5, TcpStream::connect(proxy)).await.expect("connect");
    c.write_all(format!("down {n}\n").as_bytes())
        .await
        .expect("ask");
    let mut got = 0;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match within(20, c.read(&mut buf)).await {
            Ok(0) | Err(_) => return got,
            Ok(k) => got += k,
        }
    }
}

fn route(node: &BulkNode, plugin: Value) -> Value {
    json!({"plugins": {"limit-bandwidth": plugin},
        "upstream": {"nodes": {node.addr.to_string(): 1}}})
}

async fn route_entry(s: &TestServer) -> Value {
    let stats = s.stream_stats().await;
    stats["routes"]
        .as_array()
        .and_then(|r| r.first().cloned())
        .unwrap_or(Value::Null)
}

/// A server with route 1 to a fresh bulk node under `limit-bandwidth` `conf`.
async fn paced(conf: Value) -> (TestServer, BulkNode) {
    let s = TestServer::with_tcp(&["127.0.0.1:0"]).await;
    let node = BulkNode::start().await;
    s.put_route("1", &route(&node, conf)).await;
    (s, node)
}

#[tokio::test]
async fn a_download_is_paced_to_the_rate() {
    let (s, _node) = paced(json!({"download_rate": MIB, "burst": 64 * 1024})).await;
    let proxy = s.tcp[0];
    let started = Instant::now();
    let transfer = tokio::spawn(download(proxy, 4 * MIB));
    let entry = eventually_some(5, "route throttled", async || {
        let e = route_entry(&s).await;
        (e["limit_bandwidth"]["throttled"] == true).then_some(e)
    })
    .await;
    assert_eq!(entry["limit_bandwidth"]["download_rate"], MIB, "{entry}");
    let got = transfer.await.expect("download");
    let took = started.elapsed().as_secs_f64();
    println!("4 MiB at 1 MiB/s took {took:.2} s");
    assert_eq!(got, 4 * MIB);
    assert!((3.0..=6.0).contains(&took), "took {took:.2} s");
    let metrics_addr = s
        .server
        .as_ref()
        .and_then(|x| x.metrics_addr())
        .expect("metrics");
    let metrics = within(
        5,
        reqwest::get(format!("http://{metrics_addr}/apisix/prometheus/metrics")),
    )
    .await
    .expect("metrics")
    .text()
    .await
    .unwrap_or_default();
    assert!(
        metrics.contains("stream_route_bandwidth_limit{route=\"1\",direction=\"out\"} 1048576"),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_upload_is_paced_and_downloads_are_not() {
    let (s, _node) = paced(json!({"upload_rate": MIB, "burst": 64 * 1024})).await;
    let proxy = s.tcp[0];
    let started = Instant::now();
    assert_eq!(download(proxy, 4 * MIB).await, 4 * MIB);
    let down = started.elapsed().as_secs_f64();
    assert!(down < 2.0, "downloads are not limited: {down:.2} s");

    let started = Instant::now();
    let mut c = within(5, TcpStream::connect(proxy)).await.expect("connect");
    c.write_all(b"up\n").await.expect("ask");
    let chunk = vec![1u8; 64 * 1024];
    for _ in 0..(2 * MIB / chunk.len()) {
        within(10, c.write_all(&chunk)).await.expect("upload");
    }
    c.shutdown().await.expect("shutdown");
    let mut answer = String::new();
    within(10, c.read_to_string(&mut answer))
        .await
        .expect("answer");
    let took = started.elapsed().as_secs_f64();
    println!("2 MiB upload at 1 MiB/s took {took:.2} s");
    assert_eq!(answer, (2 * MIB).to_string());
    assert!((1.5..=4.0).contains(&took), "took {took:.2} s");
}

#[tokio::test]
async fn sessions_with_the_same_key_share_one_budget() {
    let (s, _node) = paced(
        json!({"download_rate": MIB, "burst": 64 * 1024, "key_type": "var", "key": "remote_addr"}),
    )
    .await;
    let proxy = s.tcp[0];
    let started = Instant::now();
    let a = tokio::spawn(download(proxy, MIB));
    let b = tokio::spawn(download(proxy, MIB));
    assert_eq!(a.await.expect("a"), MIB);
    assert_eq!(b.await.expect("b"), MIB);
    let took = started.elapsed().as_secs_f64();
    println!("two 1 MiB downloads sharing 1 MiB/s took {took:.2} s");
    assert!((1.7..=4.0).contains(&took), "shared budget: {took:.2} s");
}

#[tokio::test]
async fn a_rate_change_reaches_a_running_session() {
    let (s, node) = paced(json!({"download_rate": 256 * 1024, "burst": 64 * 1024})).await;
    let proxy = s.tcp[0];
    let started = Instant::now();
    // 16 MiB at 256 KiB/s would take a minute.
    let transfer = tokio::spawn(download(proxy, 16 * MIB));
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.put_route("1", &route(&node, json!({"download_rate": 16 * MIB})))
        .await;
    let got = transfer.await.expect("download");
    let took = started.elapsed().as_secs_f64();
    println!("16 MiB with the rate raised after 0.5 s took {took:.2} s");
    assert_eq!(got, 16 * MIB);
    assert!(took < 4.0, "the new rate applied: {took:.2} s");
}

#[tokio::test]
async fn bad_limit_bandwidth_confs_are_refused() {
    let s = TestServer::start().await;
    for conf in [
        json!({"download_rate": -1}),
        json!({"upload_rate": "fast"}),
        json!({"key_type": "var_combination", "key": "$remote_addr"}),
    ] {
        let body = json!({"plugins": {"limit-bandwidth": conf},
            "upstream": {"nodes": {"127.0.0.1:1": 1}}});
        let (st, v) = s
            .call(
                reqwest::Method::PUT,
                "/apisix/admin/stream_routes/1",
                Some(&body.to_string()),
            )
            .await;
        assert_eq!(st.as_u16(), 400, "{conf}: {v}");
    }
}

/// UDP cannot be delayed: datagrams past the bucket are dropped, both ways,
/// and those within it pass.
#[tokio::test]
async fn udp_datagrams_over_the_rate_are_dropped() {
    let s = TestServer::with_listeners(&[], &["127.0.0.1:0"]).await;
    let echo = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let node = echo.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = echo.recv_from(&mut buf).await {
            let _ = echo.send_to(&buf[..n], from).await;
        }
    });
    // One second of a 1,000 B/s rate: two 500-byte datagrams a second.
    let route = |rates: Value| {
        json!({"server_port": s.udp[0].port(),
               "plugins": {"limit-bandwidth": rates},
               "upstream": {"nodes": {node.to_string(): 1}}})
    };
    let client = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    client.connect(s.udp[0]).await.expect("connect");
    let burst = async |n: usize| {
        for _ in 0..n {
            client.send(&[1u8; 500]).await.expect("send");
        }
        let mut got = 0;
        let mut buf = [0u8; 2048];
        while let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_millis(300), client.recv(&mut buf)).await
        {
            got += 1;
        }
        got
    };
    for (rates, what) in [
        (json!({"upload_rate": 1000}), "upload"),
        (json!({"download_rate": 1000}), "download"),
    ] {
        s.put_route("1", &route(rates)).await;
        // A fresh session (and bucket) per case: wait out the first.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let got = burst(10).await;
        println!("{what}: {got} of 10 datagrams of 500 bytes at 1,000 B/s");
        assert!((2..=4).contains(&got), "{what}: {got} of 10 passed");
    }
    s.put_route("1", &route(json!({"download_rate": 0}))).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(burst(10).await, 10, "rate 0 is unlimited");
    task.abort();
}
