//! The Admin API end to end: every endpoint and method, APISIX 3's shapes,
//! status codes and error texts.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::harness::{call, within, TestServer, KEY, VIEWER_KEY};

/// The three stream-route bodies of APISIX's stream-proxy guide, verbatim.
const DOC_REMOTE_ADDR: &str = r#"
{
    "remote_addr": "127.0.0.1",
    "upstream": {
        "nodes": {
            "127.0.0.1:1995": 1
        },
        "type": "roundrobin"
    }
}"#;
const DOC_SERVER_ADDR: &str = r#"
{
    "server_addr": "127.0.0.1",
    "server_port": 2000,
    "upstream": {
        "nodes": {
            "127.0.0.1:1995": 1
        },
        "type": "roundrobin"
    }
}"#;
const DOC_SNI: &str = r#"
{
    "sni": "a.test.com",
    "upstream": {
        "nodes": {
            "127.0.0.1:5991": 1
        },
        "type": "roundrobin"
    }
}"#;

fn err(v: &Value) -> &str {
    v["error_msg"].as_str().unwrap_or("<no error_msg>")
}

#[tokio::test]
async fn seed_document_bodies_answer_as_apisix() {
    let s = TestServer::start().await;
    for body in [DOC_REMOTE_ADDR, DOC_SERVER_ADDR, DOC_SNI] {
        s.call(Method::DELETE, "/apisix/admin/stream_routes/1", None)
            .await;
        let (st, v) = s
            .call(Method::PUT, "/apisix/admin/stream_routes/1", Some(body))
            .await;
        assert_eq!(st, StatusCode::CREATED, "{v}");
        assert_eq!(v["key"], "/apisix/stream_routes/1");
        let sent: Value = serde_json::from_str(body).expect("json");
        for (k, val) in sent.as_object().expect("object") {
            assert_eq!(&v["value"][k], val, "field {k} echoed as sent");
        }
        assert_eq!(v["value"]["id"], "1");
        assert!(v["value"]["create_time"].is_i64());
        assert!(v["value"]["update_time"].is_i64());
        // Defaults are not written back (APISIX echoes the client's JSON).
        assert!(v["value"]["upstream"].get("hash_on").is_none());
        assert_eq!(
            v["value"].as_object().map(|o| o.len()),
            Some(sent.as_object().map_or(0, |o| o.len()) + 3)
        );
    }
    // Replacing an existing key is 200 and keeps create_time.
    let (_, before) = s
        .call(Method::GET, "/apisix/admin/stream_routes/1", None)
        .await;
    let (st, v) = s
        .call(
            Method::PUT,
            "/apisix/admin/stream_routes/1",
            Some(DOC_REMOTE_ADDR),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["value"]["create_time"], before["value"]["create_time"]);
    let (st, got) = s
        .call(Method::GET, "/apisix/admin/stream_routes/1", None)
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(got["key"], "/apisix/stream_routes/1");
    assert_eq!(got["value"]["remote_addr"], "127.0.0.1");
    let created = got["createdIndex"].as_u64().expect("createdIndex");
    let modified = got["modifiedIndex"].as_u64().expect("modifiedIndex");
    assert!(modified > created, "{created} {modified}");
    let (st, v) = s
        .call(Method::DELETE, "/apisix/admin/stream_routes/1", None)
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v, json!({"deleted": "1", "key": "/apisix/stream_routes/1"}));
    let (st, v) = s
        .call(Method::GET, "/apisix/admin/stream_routes/1", None)
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_eq!(v, json!({"message": "Key not found"}));
    let (st, v) = s
        .call(Method::DELETE, "/apisix/admin/stream_routes/1", None)
        .await;
    assert_eq!(
        (st, v),
        (StatusCode::NOT_FOUND, json!({"message": "Key not found"}))
    );
}

#[tokio::test]
async fn post_generates_ids_and_lists_in_key_order() {
    let s = TestServer::start().await;
    let (st, v) = s
        .call(
            Method::POST,
            "/apisix/admin/stream_routes",
            Some(DOC_SERVER_ADDR),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let id = v["value"]["id"].as_str().expect("id").to_string();
    assert_eq!(id.len(), 20);
    assert!(id.chars().all(|c| c.is_ascii_digit()));
    assert_eq!(v["key"], format!("/apisix/stream_routes/{id}"));
    for id in ["2", "10", "a-b-c-ABC_0123"] {
        let (st, _) = s
            .call(
                Method::PUT,
                &format!("/apisix/admin/stream_routes/{id}"),
                Some(DOC_REMOTE_ADDR),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED);
    }
    let (st, v) = s
        .call(Method::GET, "/apisix/admin/stream_routes", None)
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["total"], 4);
    let keys: Vec<&str> = v["list"]
        .as_array()
        .expect("list")
        .iter()
        .map(|i| i["value"]["id"].as_str().expect("id"))
        .collect();
    assert_eq!(keys, [id.as_str(), "10", "2", "a-b-c-ABC_0123"]);
    assert!(v["list"][0]["createdIndex"].is_u64());
    let (_, empty) = s.call(Method::GET, "/apisix/admin/upstreams", None).await;
    assert_eq!(empty, json!({"list": [], "total": 0}));
}

#[tokio::test]
async fn key_checks_roles_and_headers() {
    let s = TestServer::start().await;
    let path = "/apisix/admin/stream_routes";
    let (st, v) = call(&s.client, s.admin, None, Method::GET, path, None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert_eq!(
        v,
        json!({"error_msg": "failed to check token", "description": "missing apikey"})
    );
    let (st, v) = call(&s.client, s.admin, Some("nope"), Method::GET, path, None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert_eq!(v["description"], "wrong apikey");
    // api_key query argument works too.
    let res = within(
        5,
        s.client.get(s.url(&format!("{path}?api_key={KEY}"))).send(),
    )
    .await
    .expect("send");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["x-api-version"], "v3");
    assert_eq!(res.headers()["content-type"], "application/json");
    assert_eq!(res.headers()["access-control-allow-origin"], "*");
    // The viewer reads but cannot write.
    let (st, _) = call(
        &s.client,
        s.admin,
        Some(VIEWER_KEY),
        Method::GET,
        path,
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    let (st, v) = call(
        &s.client,
        s.admin,
        Some(VIEWER_KEY),
        Method::PUT,
        "/apisix/admin/stream_routes/1",
        Some(DOC_REMOTE_ADDR),
    )
    .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert_eq!(v["description"], "invalid method for role viewer");
    let (st, _) = s
        .call(Method::GET, "/apisix/admin/stream_routes/1", None)
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND, "viewer write must not be stored");
    // Preflight needs no key; unknown resources and paths are 404.
    let res = within(5, s.client.request(Method::OPTIONS, s.url(path)).send())
        .await
        .expect("send");
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers()["access-control-allow-methods"]
        .to_str()
        .expect("ascii")
        .contains("PATCH"));
    let (st, v) = s.call(Method::GET, "/apisix/admin/routez", None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_eq!(err(&v), "Unsupported resource type: routez");
    let (st, _) = s.call(Method::GET, "/elsewhere", None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let res = within(
        5,
        s.client
            .head(s.url("/apisix/admin"))
            .header("X-API-KEY", KEY)
            .send(),
    )
    .await
    .expect("send");
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn allow_admin_is_checked_before_the_key() {
    let s = TestServer::start_with(|y| y.replace("- 127.0.0.0/24", "- 10.0.0.0/8")).await;
    let (st, v) = s
        .call(Method::GET, "/apisix/admin/stream_routes", None)
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    assert!(err(&v).contains("127.0.0.1"), "{v}");
    let res = within(
        5,
        s.client
            .get(s.url("/apisix/admin/stream_routes"))
            .header("X-API-KEY", KEY)
            .header("X-Forwarded-For", "10.1.2.3")
            .header("X-Real-IP", "10.1.2.3")
            .send(),
    )
    .await
    .expect("send");
    assert_eq!(
        res.status(),
        StatusCode::FORBIDDEN,
        "forwarding headers never count"
    );
    let (st, _) = call(
        &s.client,
        s.admin,
        None,
        Method::GET,
        "/apisix/admin/upstreams",
        None,
    )
    .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn stream_mode_disabled_refuses_stream_routes() {
    for edit in [
        |y: String| y.replace("proxy_mode: stream", "proxy_mode: http"),
        |y: String| {
            y.replace(
                "  stream_proxy:\n    tcp:\n      - 9100\n    udp:\n      - 9200\n",
                "",
            )
        },
    ] {
        let s = TestServer::start_with(edit).await;
        for (m, body) in [(Method::PUT, Some(DOC_REMOTE_ADDR)), (Method::GET, None)] {
            let (st, v) = s.call(m, "/apisix/admin/stream_routes/1", body).await;
            assert_eq!(st, StatusCode::BAD_REQUEST);
            assert_eq!(
                v,
                json!({"error_msg": "stream mode is disabled, can not add stream routes"})
            );
        }
        // Upstreams are still manageable.
        let (st, _) = s
            .call(
                Method::PUT,
                "/apisix/admin/upstreams/1",
                Some(r#"{"nodes": {"127.0.0.1:80": 1}}"#),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED);
    }
}

#[tokio::test]
async fn request_errors_have_apisix_texts() {
    let s = TestServer::start().await;
    let no_sni = json!({"cert": "c".repeat(200), "key": "k".repeat(100)}).to_string();
    let cases: Vec<(Method, &str, Option<&str>, &str)> = vec![
        (Method::PUT, "/apisix/admin/stream_routes/*invalid", Some(DOC_REMOTE_ADDR),
         "invalid configuration: property \"id\" validation failed: object matches none of the required"),
        (Method::PUT, "/apisix/admin/stream_routes", Some(DOC_REMOTE_ADDR), "missing stream route id"),
        (Method::PUT, "/apisix/admin/stream_routes/1", Some(r#"{"id": "2"}"#), "wrong stream route id"),
        (Method::POST, "/apisix/admin/upstreams", Some(r#"{"id": 3, "nodes": {"127.0.0.1:80": 1}}"#),
         "wrong upstream id, do not need it"),
        (Method::PUT, "/apisix/admin/stream_routes/1", None, "missing configurations"),
        (Method::PUT, "/apisix/admin/stream_routes/1", Some(r#"{"create_time": 1}"#),
         "the property is forbidden:  create_time"),
        (Method::PUT, "/apisix/admin/stream_routes/1",
         Some(r#"{"remote_addr": ":/8", "upstream": {"nodes": {"127.0.0.1:1995": 1}}}"#),
         "invalid remote_addr: :/8"),
        (Method::PUT, "/apisix/admin/stream_routes/1", Some(r#"{"server_port": 70000}"#),
         "invalid configuration: property \"server_port\" validation failed: expected 70000 to be at most 65535"),
        (Method::PUT, "/apisix/admin/stream_routes/1", Some(r#"{"upstream_id": "404"}"#),
         "failed to fetch upstream info by upstream id [404], response code: 404"),
        (Method::PUT, "/apisix/admin/stream_routes/1", Some(r#"{"plugins": {"mqttt-proxy": {}}}"#),
         "unknown plugin [mqttt-proxy]"),
        (Method::PUT, "/apisix/admin/upstreams/1", Some(r#"{"nodes": {"127.0.0.1:80": 1}, "retries": -1}"#),
         "invalid configuration: property \"retries\" validation failed: expected -1 to be at least 0"),
        (Method::PUT, "/apisix/admin/upstreams/1", Some(r#"{"nodes": {"127.0.0.1:80": 1}, "type": "chash"}"#),
         "missing key"),
        (Method::PUT, "/apisix/admin/ssls/1", Some(&no_sni),
         "invalid configuration: then clause did not match"),
        (Method::DELETE, "/apisix/admin/upstreams", None, "missing upstream id"),
        (Method::PATCH, "/apisix/admin/upstreams", Some("{}"), "missing upstream id"),
        (Method::PUT, "/apisix/admin/stream_routes/1?ttl=abc", Some(DOC_REMOTE_ADDR),
         "invalid argument ttl: should be a number"),
    ];
    for (m, path, body, want) in cases {
        let (st, v) = s.call(m.clone(), path, body).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{m} {path}: {v}");
        assert_eq!(err(&v), want, "{m} {path}");
    }
    // Nothing of the above was stored.
    let (_, v) = s
        .call(Method::GET, "/apisix/admin/stream_routes", None)
        .await;
    assert_eq!(v["total"], 0);
    // A body that is not JSON is echoed back.
    let (st, v) = s
        .call(
            Method::PUT,
            "/apisix/admin/stream_routes/1",
            Some("{not json"),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(err(&v).starts_with("invalid request body: "), "{v}");
    assert_eq!(v["req_body"], "{not json");
    // Oversized bodies are refused without being read whole.
    let big = format!(r#"{{"desc": "{}"}}"#, "x".repeat(2 << 20));
    let (st, v) = s
        .call(Method::PUT, "/apisix/admin/stream_routes/1", Some(&big))
        .await;
    assert_eq!(st, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(err(&v).contains("larger than"), "{v}");
}

#[tokio::test]
async fn upstream_references_and_forced_delete() {
    let s = TestServer::start().await;
    let (st, _) = s
        .call(
            Method::PUT,
            "/apisix/admin/upstreams/1",
            Some(r#"{"type": "roundrobin", "nodes": {"127.0.0.1:1995": 1}}"#),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let (st, v) = s
        .call(
            Method::PUT,
            "/apisix/admin/stream_routes/7",
            Some(r#"{"server_port": 9100, "upstream_id": "1"}"#),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let (st, v) = s
        .call(Method::DELETE, "/apisix/admin/upstreams/1", None)
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(
        err(&v),
        "can not delete this upstream, stream route [7] is still using it now"
    );
    let (_, v) = s
        .call(
            Method::GET,
            "/apisix/admin/stream_routes?filter=upstream_id%3D1",
            None,
        )
        .await;
    assert_eq!(v["total"], 1);
    let (_, v) = s
        .call(
            Method::GET,
            "/apisix/admin/stream_routes?filter=upstream_id%3D2",
            None,
        )
        .await;
    assert_eq!(v["total"], 0);
    let (st, v) = s
        .call(Method::DELETE, "/apisix/admin/upstreams/1?force=true", None)
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["deleted"], "1");
}

#[tokio::test]
async fn patch_merges_replaces_arrays_and_deletes_nulls() {
    let s = TestServer::start().await;
    let (st, created) = s
        .call(
            Method::PUT,
            "/apisix/admin/upstreams/1",
            Some(r#"{"type": "roundrobin", "nodes": {"127.0.0.1:80": 1, "127.0.0.2:80": 2}, "desc": "a", "timeout": {"connect": 1, "send": 2, "read": 3}}"#),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let (st, v) = s
        .call(
            Method::PATCH,
            "/apisix/admin/upstreams/1",
            Some(r#"{"nodes": {"127.0.0.3:80": 5}, "desc": null, "timeout": {"read": 9}}"#),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let val = &v["value"];
    // Objects merge recursively (nodes map merges too), null deletes.
    assert_eq!(val["nodes"]["127.0.0.3:80"], 5);
    assert_eq!(val["nodes"]["127.0.0.1:80"], 1);
    assert!(val.get("desc").is_none());
    assert_eq!(val["timeout"], json!({"connect": 1, "send": 2, "read": 9}));
    assert_eq!(val["create_time"], created["value"]["create_time"]);
    // Sub-path PATCH replaces the attribute whole.
    let (st, v) = s
        .call(
            Method::PATCH,
            "/apisix/admin/upstreams/1/nodes",
            Some(r#"[{"host": "127.0.0.9", "port": 81, "weight": 1}]"#),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(
        v["value"]["nodes"],
        json!([{"host": "127.0.0.9", "port": 81, "weight": 1}])
    );
    // A patch that breaks the schema is refused and nothing changes.
    let (st, v) = s
        .call(
            Method::PATCH,
            "/apisix/admin/upstreams/1",
            Some(r#"{"retries": -1}"#),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(err(&v).contains("retries"), "{v}");
    let (st, v) = s
        .call(Method::PATCH, "/apisix/admin/upstreams/1", Some("[1]"))
        .await;
    assert_eq!(
        (st, err(&v)),
        (StatusCode::BAD_REQUEST, "invalid configuration")
    );
    let (st, v) = s
        .call(Method::PATCH, "/apisix/admin/upstreams/1", None)
        .await;
    assert_eq!(
        (st, err(&v)),
        (StatusCode::BAD_REQUEST, "missing new configuration")
    );
    let (st, v) = s
        .call(Method::PATCH, "/apisix/admin/upstreams/9", Some("{}"))
        .await;
    assert_eq!(
        (st, v),
        (StatusCode::NOT_FOUND, json!({"message": "Key not found"}))
    );
    // PATCH works on stream routes too.
    s.call(
        Method::PUT,
        "/apisix/admin/stream_routes/1",
        Some(DOC_SERVER_ADDR),
    )
    .await;
    let (st, v) = s
        .call(
            Method::PATCH,
            "/apisix/admin/stream_routes/1",
            Some(r#"{"server_port": 2001}"#),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["value"]["server_port"], 2001);
    assert_eq!(v["value"]["server_addr"], "127.0.0.1");
}

#[tokio::test]
async fn list_paging_and_name_filter() {
    let s = TestServer::start().await;
    for i in 1..=12 {
        let body = format!(r#"{{"name": "up-{i}", "nodes": {{"127.0.0.1:80": 1}}}}"#);
        let (st, _) = s
            .call(
                Method::PUT,
                &format!("/apisix/admin/upstreams/{i}"),
                Some(&body),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED);
    }
    let (_, v) = s
        .call(
            Method::GET,
            "/apisix/admin/upstreams?page=2&page_size=10",
            None,
        )
        .await;
    assert_eq!(v["total"], 12);
    let names: Vec<&str> = v["list"]
        .as_array()
        .expect("list")
        .iter()
        .map(|i| i["value"]["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["up-11", "up-12"], "paging follows creation order");
    let res = within(
        5,
        s.client
            .get(s.url("/apisix/admin/upstreams?page=1&page_size=5"))
            .header("X-API-KEY", KEY)
            .send(),
    )
    .await
    .expect("send");
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        res.text().await.expect("text"),
        "page_size must be between 10 and 500"
    );
    let (_, v) = s
        .call(
            Method::GET,
            "/apisix/admin/upstreams?name=up-1%5B01%5D",
            None,
        )
        .await;
    assert_eq!(v["total"], 2, "{v}");
}

fn test_cert(name: &str) -> (String, String) {
    let c = rcgen::generate_simple_self_signed(vec![name.to_string()]).expect("cert");
    (c.cert.pem(), c.key_pair.serialize_pem())
}

#[tokio::test]
async fn ssl_keys_are_checked_and_never_returned() {
    let s = TestServer::start().await;
    let (cert, key) = test_cert("test.com");
    let (_, other_key) = test_cert("other.com");
    let body = json!({"cert": cert, "key": key, "snis": ["test.com"]}).to_string();
    let (st, v) = s
        .call(Method::PUT, "/apisix/admin/ssls/1", Some(&body))
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert!(v["value"].get("key").is_none(), "key echoed: {v}");
    assert_eq!(v["value"]["snis"], json!(["test.com"]));
    let (_, v) = s.call(Method::GET, "/apisix/admin/ssls/1", None).await;
    assert!(v["value"].get("key").is_none());
    assert_eq!(v["value"]["cert"], cert);
    let (_, v) = s.call(Method::GET, "/apisix/admin/ssls", None).await;
    assert!(!v.to_string().contains("PRIVATE KEY"));
    // A PATCH of other fields keeps the stored key valid.
    let (st, v) = s
        .call(
            Method::PATCH,
            "/apisix/admin/ssls/1",
            Some(r#"{"snis": ["test.com", "www.test.com"]}"#),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let mismatch = json!({"cert": cert, "key": other_key, "sni": "test.com"}).to_string();
    let (st, v) = s
        .call(Method::PUT, "/apisix/admin/ssls/2", Some(&mismatch))
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(err(&v).contains("does not match"), "{v}");
    let garbage = json!({"cert": "-".repeat(200), "key": key, "sni": "test.com"}).to_string();
    let (st, v) = s
        .call(Method::PUT, "/apisix/admin/ssls/3", Some(&garbage))
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(
        err(&v),
        "failed to parse cert: PEM_read_bio_X509_AUX() failed"
    );
}
