//! An Admin API 2xx means durable and served: the very next connection
//! uses the change, and a change the data plane cannot serve is answered
//! with a 503 that says why.

use std::time::Instant;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::backend::{connect_from, read_line, Backend, Mode};
use crate::harness::TestServer;

async fn put(s: &TestServer, path: &str, body: &Value) -> (StatusCode, Value) {
    s.call(Method::PUT, path, Some(&body.to_string())).await
}

#[tokio::test]
async fn fifty_alternating_writes_are_each_served_by_the_next_connection() {
    let s = TestServer::with_tcp(&["127.0.0.1:0"]).await;
    let a = Backend::start("a", Mode::Greet).await;
    let b = Backend::start("b", Mode::Greet).await;
    for (id, backend) in [("a", &a), ("b", &b)] {
        let (st, v) = put(
            &s,
            &format!("/apisix/admin/upstreams/{id}"),
            &json!({"nodes": {backend.addr.to_string(): 1}}),
        )
        .await;
        assert!(st.is_success(), "PUT upstream {id}: {st} {v}");
    }
    let started = Instant::now();
    let mut misses = Vec::new();
    for i in 0..50 {
        let want = if i % 2 == 0 { "a" } else { "b" };
        let (st, v) = put(
            &s,
            "/apisix/admin/stream_routes/1",
            &json!({"upstream_id": want}),
        )
        .await;
        assert!(st.is_success(), "PUT {i}: {st} {v}");
        // Immediately: no wait, no retry.
        let mut c = connect_from("127.0.0.1", s.tcp[0]).await;
        let got = read_line(&mut c).await;
        if got != want {
            misses.push((i, want, got));
        }
    }
    println!(
        "50 writes, each followed by one connection: {} misses in {:?}",
        misses.len(),
        started.elapsed()
    );
    assert!(
        misses.is_empty(),
        "served by the previous upstream: {misses:?}"
    );
    assert_eq!(a.accepted() + b.accepted(), 50);
}

#[tokio::test]
async fn a_write_the_data_plane_cannot_serve_is_not_acknowledged() {
    let s = TestServer::with_tcp(&["127.0.0.1:0"]).await;
    let unset = "$env://APISIX_STREAM_TEST_NEVER_SET";

    // An SSL object whose certificate reference does not resolve.
    let (st, v) = put(
        &s,
        "/apisix/admin/ssls/broken",
        &json!({"cert": unset, "key": unset, "snis": ["a.test"]}),
    )
    .await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    let msg = v["error_msg"].as_str().unwrap_or_default();
    assert!(
        msg.starts_with("ssl [broken] is stored but not served: "),
        "{v}"
    );
    let (st, _) = s.call(Method::GET, "/apisix/admin/ssls/broken", None).await;
    assert_eq!(st, StatusCode::OK, "the write itself is durable");

    // A client certificate that does not load, and a route whose upstream
    // would present it: the route cannot reach its nodes.
    let (st, v) = put(
        &s,
        "/apisix/admin/ssls/client",
        &json!({"type": "client", "cert": unset, "key": unset}),
    )
    .await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    let tls_route = json!({"upstream": {"nodes": {"127.0.0.1:1": 1}, "scheme": "tls",
        "tls": {"client_cert_id": "client"}}});
    let (st, v) = put(&s, "/apisix/admin/stream_routes/1", &tls_route).await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    let msg = v["error_msg"].as_str().unwrap_or_default();
    assert!(
        msg.starts_with("stream route [1] is stored but not served: ") && msg.contains("[client]"),
        "{v}"
    );

    // The publisher is not wedged: the next good write is served at once.
    let good = Backend::start("good", Mode::Greet).await;
    let (st, v) = put(
        &s,
        "/apisix/admin/stream_routes/1",
        &json!({"upstream": {"nodes": {good.addr.to_string(): 1}}}),
    )
    .await;
    assert!(st.is_success(), "{st} {v}");
    let mut c = connect_from("127.0.0.1", s.tcp[0]).await;
    assert_eq!(read_line(&mut c).await, "good");
}

async fn start_on(dir: tempfile::TempDir) -> TestServer {
    TestServer::start_full(
        dir,
        |y| y,
        |c| {
            if let Some(sp) = c.apisix.stream_proxy.as_mut() {
                sp.tcp = vec![apisix_stream::config::ListenSpec::new(
                    "127.0.0.1:0".parse().expect("addr"),
                )];
            }
        },
    )
    .await
}

#[tokio::test]
async fn a_stored_route_that_does_not_compile_is_skipped_and_listed_while_others_serve_across_a_restart(
) {
    use apisix_stream::model::Kind;
    use apisix_stream::store::{local::LocalStore, Expect, Store};

    let backend = Backend::start("good", Mode::Greet).await;
    let dir = tempfile::tempdir().expect("tempdir");
    {
        // Written below the Admin API's checks, as a damaged or foreign
        // store could hold it.
        let store = LocalStore::open(&dir.path().join("data")).expect("store");
        let up = json!({"nodes": {backend.addr.to_string(): 1}});
        for (id, v) in [
            (
                "bad",
                json!({"remote_addr": "not an address", "upstream": up}),
            ),
            ("good", json!({"remote_addr": "127.0.0.1", "upstream": up})),
        ] {
            store
                .put(Kind::StreamRoute, id, v, Expect::Any)
                .await
                .expect("put");
        }
    }
    let mut s = start_on(dir).await;
    for round in ["first start", "restart"] {
        let mut c = connect_from("127.0.0.1", s.tcp[0]).await;
        assert_eq!(
            read_line(&mut c).await,
            "good",
            "{round}: the good route serves"
        );
        drop(c);
        let list = s.skipped().await;
        let items = list["skipped"].as_array().expect("skipped list");
        assert_eq!(items.len(), 1, "{round}: {list}");
        assert_eq!(items[0]["type"], "stream_routes");
        assert_eq!(items[0]["id"], "bad");
        assert!(
            items[0]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("not an address")),
            "{round}: {list}"
        );
        // Later writes are applied as usual.
        let (st, v) = put(
            &s,
            "/apisix/admin/stream_routes/other",
            &json!({"server_port": 1, "upstream": {"nodes": {backend.addr.to_string(): 1}}}),
        )
        .await;
        assert!(st.is_success(), "{round}: {st} {v}");
        s.stop().await;
        let dir = std::mem::replace(&mut s.dir, tempfile::tempdir().expect("tempdir"));
        if round == "first start" {
            s = start_on(dir).await;
        }
    }
}
