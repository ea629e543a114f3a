//! What an APISIX user brings along: services under stream routes, plugin
//! metadata, the Admin API's introspection and plugin reload, and routes
//! naming plugins this server does not run (fail closed), through the real
//! server.

use apisix_stream::config::ListenSpec;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::net::UdpSocket;

use crate::backend::{Backend, Mode};
use crate::harness::{
    call, eventually, free_port, greeting, spawn_serve, wait_listening, within, ChildConfig,
    TestServer, KEY,
};

async fn put(s: &TestServer, path: &str, body: Value) -> (StatusCode, Value) {
    s.call(Method::PUT, path, Some(&body.to_string())).await
}

async fn ok(s: &TestServer, path: &str, body: Value) {
    let (st, v) = put(s, path, body).await;
    assert!(st.is_success(), "PUT {path}: {st} {v}");
}

#[tokio::test]
async fn a_route_under_a_service_follows_the_service() {
    let s = TestServer::with_tcp(&["127.0.0.1:0"]).await;
    let a = Backend::start("a", Mode::Greet).await;
    let b = Backend::start("b", Mode::Greet).await;
    let proxy = s.tcp[0];
    ok(
        &s,
        "/apisix/admin/upstreams/ua",
        json!({"nodes": {a.addr.to_string(): 1}}),
    )
    .await;
    ok(
        &s,
        "/apisix/admin/upstreams/ub",
        json!({"nodes": {b.addr.to_string(): 1}}),
    )
    .await;
    let (st, v) = put(
        &s,
        "/apisix/admin/services/s1",
        json!({"name": "db", "upstream_id": "ua", "labels": {"team": "data"}}),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert_eq!(v["key"], "/apisix/services/s1");
    assert_eq!(v["value"]["upstream_id"], "ua");
    assert!(v["value"]["create_time"].is_i64());
    ok(
        &s,
        "/apisix/admin/stream_routes/r1",
        json!({"service_id": "s1"}),
    )
    .await;
    assert_eq!(greeting(proxy).await.as_deref(), Some("a"));

    // route test and the stats show the service and the upstream in force.
    let (st, t) = s
        .call(
            Method::GET,
            "/apisix/admin/stream_routes_test?remote_addr=127.0.0.1&server_addr=127.0.0.1&server_port=9100",
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{t}");
    let text = t.to_string();
    assert!(text.contains("\"service_id\":\"s1\""), "{text}");
    assert!(text.contains("\"upstream_id\":\"ua\""), "{text}");

    // A change of the service applies to its route at once.
    ok(
        &s,
        "/apisix/admin/services/s1",
        json!({"upstream_id": "ub"}),
    )
    .await;
    assert_eq!(greeting(proxy).await.as_deref(), Some("b"));
    let (st, _) = s
        .call(
            Method::PATCH,
            "/apisix/admin/services/s1",
            Some(&json!({"upstream_id": "ua"}).to_string()),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(greeting(proxy).await.as_deref(), Some("a"));

    // The service's plugins run on the route; the route's own plugin of the
    // same name replaces the service's.
    ok(
        &s,
        "/apisix/admin/services/s1",
        json!({"upstream": {"nodes": {b.addr.to_string(): 1}},
               "plugins": {"ip-restriction": {"blacklist": ["127.0.0.1"]}}}),
    )
    .await;
    assert_eq!(
        greeting(proxy).await,
        None,
        "refused by the service's plugin"
    );
    ok(
        &s,
        "/apisix/admin/stream_routes/r1",
        json!({"service_id": "s1",
               "plugins": {"ip-restriction": {"whitelist": ["127.0.0.1"]}}}),
    )
    .await;
    assert_eq!(
        greeting(proxy).await.as_deref(),
        Some("b"),
        "service's inline upstream"
    );
    // The route's own upstream wins over the service's.
    ok(
        &s,
        "/apisix/admin/stream_routes/r1",
        json!({"service_id": "s1", "upstream_id": "ua",
               "plugins": {"ip-restriction": {"whitelist": ["127.0.0.1"]}}}),
    )
    .await;
    assert_eq!(greeting(proxy).await.as_deref(), Some("a"));
    let stats = s.stream_stats().await;
    assert!(
        stats.to_string().contains("service=s1"),
        "the route's summary names its service: {stats}"
    );
}

#[tokio::test]
async fn services_in_use_cannot_be_deleted_and_bad_ones_are_refused() {
    let s = TestServer::with_tcp(&["127.0.0.1:0"]).await;
    let a = Backend::start("a", Mode::Greet).await;
    ok(
        &s,
        "/apisix/admin/upstreams/1",
        json!({"nodes": {a.addr.to_string(): 1}}),
    )
    .await;
    let cases = [
        (
            json!({"upstream_id": "nope"}),
            "failed to fetch upstream info by upstream id [nope], response code: 404",
        ),
        (
            json!({"plugins": {"x-auth": {}}}),
            "unknown plugin [x-auth]",
        ),
        (
            json!({"server_port": 9100}),
            "invalid configuration: additional properties forbidden, found server_port",
        ),
        (
            json!({"name": ""}),
            r#"invalid configuration: property "name" validation failed: string too short, expected at least 1, got 0"#,
        ),
    ];
    for (body, want) in cases {
        let (st, v) = put(&s, "/apisix/admin/services/1", body).await;
        assert_eq!(
            (st, v["error_msg"].as_str()),
            (StatusCode::BAD_REQUEST, Some(want))
        );
    }
    let (st, v) = put(
        &s,
        "/apisix/admin/stream_routes/1",
        json!({"service_id": "9"}),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(
        v["error_msg"],
        "failed to fetch service info by service id [9], response code: 404"
    );
    let (st, v) = s
        .call(
            Method::POST,
            "/apisix/admin/services",
            Some(&json!({"upstream_id": 1}).to_string()),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let sid = v["value"]["id"].as_str().expect("generated id").to_string();
    ok(
        &s,
        "/apisix/admin/stream_routes/7",
        json!({"service_id": sid}),
    )
    .await;
    assert_eq!(greeting(s.tcp[0]).await.as_deref(), Some("a"));

    let (st, v) = s
        .call(
            Method::DELETE,
            &format!("/apisix/admin/services/{sid}"),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(
        v["error_msg"],
        "can not delete this service directly, stream_route [7] is still using it now"
    );
    let (st, v) = s
        .call(Method::DELETE, "/apisix/admin/upstreams/1", None)
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(
        v["error_msg"],
        format!("can not delete this upstream, service [{sid}] is still using it now")
    );
    let (st, v) = s.call(Method::GET, "/apisix/admin/services", None).await;
    assert_eq!((st, v["total"].as_u64()), (StatusCode::OK, Some(1)));
    assert_eq!(v["list"][0]["key"], format!("/apisix/services/{sid}"));
    // Once no route uses it, it goes.
    let (st, _) = s
        .call(Method::DELETE, "/apisix/admin/stream_routes/7", None)
        .await;
    assert_eq!(st, StatusCode::OK);
    let (st, v) = s
        .call(
            Method::DELETE,
            &format!("/apisix/admin/services/{sid}"),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["deleted"], sid.as_str());
}

#[tokio::test]
async fn syslog_takes_its_log_format_from_plugin_metadata() {
    let s = TestServer::with_tcp(&["127.0.0.1:0"]).await;
    let a = Backend::start("a", Mode::Greet).await;
    let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let port = udp.local_addr().expect("addr").port();
    let (st, v) = s
        .call(
            Method::POST,
            "/apisix/admin/plugin_metadata",
            Some(&json!({"log_format": {}}).to_string()),
        )
        .await;
    assert_eq!(st, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        v["error_msg"],
        "not supported `POST` method for plugin_metadata"
    );
    let (st, v) = put(&s, "/apisix/admin/plugin_metadata/x-auth", json!({})).await;
    assert_eq!(
        (st, v["error_msg"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid plugin name"))
    );
    let (st, v) = put(
        &s,
        "/apisix/admin/plugin_metadata/syslog",
        json!({"log_format": 1}),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(
        v["error_msg"],
        r#"invalid configuration: property "log_format" validation failed: wrong type: expected object, got number"#
    );

    let format = json!({"client": "$remote_addr", "route": "$route_id", "kind": "meta"});
    let (st, v) = put(
        &s,
        "/apisix/admin/plugin_metadata/syslog",
        json!({"log_format": format}),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert_eq!(v["key"], "/apisix/plugin_metadata/syslog");
    assert_eq!(v["value"], json!({"id": "syslog", "log_format": format}));
    ok(
        &s,
        "/apisix/admin/stream_routes/1",
        json!({"plugins": {"syslog": {"host": "127.0.0.1", "port": port, "sock_type": "udp",
                                       "batch_max_size": 1}},
               "upstream": {"nodes": {a.addr.to_string(): 1}}}),
    )
    .await;
    assert_eq!(greeting(s.tcp[0]).await.as_deref(), Some("a"));
    let mut buf = vec![0u8; 65_536];
    let n = within(5, udp.recv(&mut buf)).await.expect("datagram");
    let line = String::from_utf8_lossy(&buf[..n]).into_owned();
    let entry = crate::plugins::parse_syslog(line.trim_end_matches('\n'));
    assert_eq!(
        entry,
        json!({"client": "127.0.0.1", "route": "1", "kind": "meta", "route_id": "1"})
    );

    // A metadata change applies to the next session.
    ok(
        &s,
        "/apisix/admin/plugin_metadata/syslog",
        json!({"log_format": {"who": "$remote_addr"}}),
    )
    .await;
    assert_eq!(greeting(s.tcp[0]).await.as_deref(), Some("a"));
    let n = within(5, udp.recv(&mut buf)).await.expect("datagram");
    let line = String::from_utf8_lossy(&buf[..n]).into_owned();
    let entry = crate::plugins::parse_syslog(line.trim_end_matches('\n'));
    assert_eq!(entry, json!({"who": "127.0.0.1", "route_id": "1"}));
}

#[tokio::test]
async fn introspection_answers_as_apisix() {
    let s = TestServer::start().await;
    let (st, v) = s
        .call(
            Method::GET,
            "/apisix/admin/plugins/list?subsystem=stream",
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    // The default stream_plugins, highest priority first.
    assert_eq!(
        v,
        json!([
            "ip-restriction",
            "limit-conn",
            "limit-bandwidth",
            "mqtt-proxy",
            "traffic-split",
            "syslog"
        ])
    );
    let res = reqwest::Client::new()
        .get(s.url("/apisix/admin/plugins/list?subsystem=tcp"))
        .header("X-API-KEY", KEY)
        .send()
        .await
        .expect("sent");
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(res.text().await.expect("body"), "invalid subsystem passed");

    // The schema answered is the one writes are checked with.
    let (st, schema) = s
        .call(
            Method::GET,
            "/apisix/admin/plugins/limit-conn?subsystem=stream",
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(schema["type"], "object");
    assert_eq!(
        schema["required"],
        json!(["conn", "burst", "default_conn_delay", "key"])
    );
    assert_eq!(
        schema["properties"]["conn"],
        json!({"type": "integer", "exclusiveMinimum": 0})
    );
    let (st, v) = put(
        &s,
        "/apisix/admin/stream_routes/1",
        json!({"plugins": {"limit-conn": {"conn": 1, "burst": 0, "default_conn_delay": 0.1}},
               "upstream": {"nodes": {"127.0.0.1:1": 1}}}),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(
        v["error_msg"],
        "failed to check the configuration of stream plugin [limit-conn]: property \"key\" is required"
    );
    for (path, status, msg) in [
        (
            "/apisix/admin/plugins/prometheus?subsystem=stream",
            404,
            "plugin not found in subsystem stream",
        ),
        (
            "/apisix/admin/plugins/syslog",
            404,
            "plugin not found in subsystem http",
        ),
        (
            "/apisix/admin/plugins/syslog?subsystem=udp",
            400,
            "unsupported subsystem: udp",
        ),
    ] {
        let (st, v) = s.call(Method::GET, path, None).await;
        assert_eq!(
            (st.as_u16(), v["error_msg"].as_str()),
            (status, Some(msg)),
            "{path}"
        );
    }
    let (st, all) = s
        .call(
            Method::GET,
            "/apisix/admin/plugins?all=true&subsystem=stream",
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(all["syslog"]["priority"], 401);
    assert_eq!(
        all["syslog"]["metadata_schema"]["properties"]["log_format"]["type"],
        "object"
    );
    assert_eq!(all["limit-conn"]["schema"], schema);

    // Schema validation: nothing is stored.
    let (st, v) = s
        .call(
            Method::POST,
            "/apisix/admin/schema/validate/stream_routes",
            Some(&json!({"server_port": 70000}).to_string()),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(
        v["error_msg"],
        r#"property "server_port" validation failed: expected 70000 to be at most 65535"#
    );
    let (st, _) = s
        .call(
            Method::POST,
            "/apisix/admin/schema/validate/services",
            Some(&json!({"id": "v", "upstream_id": 1}).to_string()),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = s.call(Method::GET, "/apisix/admin/services/v", None).await;
    assert_eq!(st, StatusCode::NOT_FOUND, "validation stores nothing");
    let (st, v) = s
        .call(
            Method::POST,
            "/apisix/admin/schema/validate/routes",
            Some("{}"),
        )
        .await;
    assert_eq!(
        (st, v["error_msg"].as_str()),
        (
            StatusCode::NOT_FOUND,
            Some("Unsupported resource type: routes")
        )
    );
    let (st, v) = s
        .call(Method::GET, "/apisix/admin/plugins/reload", None)
        .await;
    assert_eq!(st, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        v["error_msg"],
        "please use PUT method to reload the plugins, GET method is not allowed."
    );
}

#[tokio::test]
async fn unknown_plugins_are_refused_by_the_admin_api_and_fail_closed_from_yaml() {
    // A plugin enabled by stream_plugins that this build does not implement.
    let s =
        TestServer::start_with(|y| format!("{y}stream_plugins: [x-auth, ip-restriction]\n")).await;
    let (st, v) = put(
        &s,
        "/apisix/admin/stream_routes/1",
        json!({"plugins": {"x-auth": {}}, "upstream": {"nodes": {"127.0.0.1:1": 1}}}),
    )
    .await;
    assert_eq!(
        (st, v["error_msg"].as_str()),
        (StatusCode::BAD_REQUEST, Some("unknown plugin [x-auth]"))
    );
    let (st, _) = s
        .call(
            Method::GET,
            "/apisix/admin/plugins/x-auth?subsystem=stream",
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    drop(s);

    // From apisix.yaml: the route stays, refusing its clients; the others serve.
    let a = Backend::start("a", Mode::Greet).await;
    let (s, _file) = TestServer::standalone_text(&format!(
        "stream_routes:\n  - id: custom\n    upstream_id: 1\n    plugins: {{x-auth: {{}}}}\n  \
         - id: open\n    upstream_id: 1\n    remote_addr: 127.0.0.2\n  \
         - id: orphan\n    service_id: nope\n    remote_addr: 127.0.0.3\n\
         upstreams:\n  - id: 1\n    nodes: {{\"{}\": 1}}\n#END\n",
        a.addr
    ))
    .await;
    let skipped = s.skipped().await;
    assert_eq!(
        skipped["skipped"],
        json!([{"type": "stream_routes", "id": "custom", "reason": "unknown plugin [x-auth]"},
               {"type": "stream_routes", "id": "orphan",
                "reason": "failed to fetch service configuration by id: nope"}]),
        "{skipped}"
    );
    assert_eq!(greeting(s.tcp[0]).await, None, "refused, not forwarded");
    assert_eq!(a.accepted(), 0, "nothing reached the upstream");
    // Counted as a session of that route.
    let counted = eventually(5, async || {
        let stats = s.stream_stats().await;
        stats["routes"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| r["id"] == "custom" && r["total"] == 1)
    })
    .await;
    assert!(counted, "{}", s.stream_stats().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_reload_rereads_stream_plugins() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (admin_port, tcp_port) = (free_port(), free_port());
    let cfg = ChildConfig::new(admin_port).tcp(tcp_port).write(dir.path());
    let admin = format!("127.0.0.1:{admin_port}").parse().expect("addr");
    let proxy = format!("127.0.0.1:{tcp_port}").parse().expect("addr");
    let mut child = spawn_serve(&cfg);
    wait_listening(admin, &mut child);
    wait_listening(proxy, &mut child);
    let client = reqwest::Client::new();
    let a = Backend::start("a", Mode::Greet).await;
    let route = json!({"plugins": {"ip-restriction": {"blacklist": ["127.0.0.1"]}},
                       "upstream": {"nodes": {a.addr.to_string(): 1}}});
    let (st, v) = call(
        &client,
        admin,
        Some(KEY),
        Method::PUT,
        "/apisix/admin/stream_routes/1",
        Some(&route.to_string()),
    )
    .await;
    assert!(st.is_success(), "{st} {v}");
    assert_eq!(greeting(proxy).await, None, "blacklisted");

    // ip-restriction no longer enabled: after the reload it stops running.
    let text = std::fs::read_to_string(&cfg).expect("read config");
    std::fs::write(&cfg, format!("{text}stream_plugins: [limit-conn]\n")).expect("write config");
    let (st, v) = call(
        &client,
        admin,
        Some(KEY),
        Method::PUT,
        "/apisix/admin/plugins/reload",
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(greeting(proxy).await.as_deref(), Some("a"));
    let (_, list) = call(
        &client,
        admin,
        Some(KEY),
        Method::GET,
        "/apisix/admin/plugins/list?subsystem=stream",
        None,
    )
    .await;
    assert_eq!(list, json!(["limit-conn"]));
    let (st, v) = call(
        &client,
        admin,
        Some(KEY),
        Method::PUT,
        "/apisix/admin/stream_routes/2",
        Some(&route.to_string()),
    )
    .await;
    assert_eq!(
        (st, v["error_msg"].as_str()),
        (
            StatusCode::BAD_REQUEST,
            Some("unknown plugin [ip-restriction]")
        )
    );
    assert!(
        eventually(5, async || greeting(proxy).await.as_deref() == Some("a")).await,
        "still served after the reload"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_and_custom_plugins_from_etcd() {
    let etcd = crate::etcd::EtcdServer::start().await;
    let a = Backend::start("a", Mode::Greet).await;
    let b = Backend::start("b", Mode::Greet).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (admin_port, tcp_port) = (free_port(), free_port());
    let cfg = ChildConfig::new(admin_port)
        .tcp(tcp_port)
        .etcd(&format!(
            "    host:\n      - \"{}\"\n    prefix: /apisix\n    timeout: 3\n    resync_delay: 1\n",
            etcd.url()
        ))
        .write(dir.path());
    let admin = format!("127.0.0.1:{admin_port}").parse().expect("addr");
    let tcp = format!("127.0.0.1:{tcp_port}").parse().expect("addr");
    let log_path = dir.path().join("stderr.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let child = std::process::Command::new(crate::harness::bin())
        .args(["serve", "-c"])
        .arg(&cfg)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::from(log))
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("spawn serve");
    let mut child = crate::harness::ChildGuard { child };
    crate::harness::wait_listening_logged(admin, &mut child, &log_path);
    crate::harness::wait_listening_logged(tcp, &mut child, &log_path);
    let logged = |needle: &str| {
        std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .matches(needle)
            .count()
    };
    let put = async |key: &str, v: Value| {
        etcd.ctl(&["put", &format!("/apisix/{key}"), &v.to_string()])
            .await;
    };
    put(
        "upstreams/ua",
        json!({"id": "ua", "nodes": {a.addr.to_string(): 1}}),
    )
    .await;
    put(
        "upstreams/ub",
        json!({"id": "ub", "nodes": {b.addr.to_string(): 1}}),
    )
    .await;
    put("services/s", json!({"id": "s", "upstream_id": "ua"})).await;
    put("stream_routes/r", json!({"id": "r", "service_id": "s"})).await;
    assert!(
        eventually(5, async || greeting(tcp).await.as_deref() == Some("a")).await,
        "route under the etcd service"
    );
    put("services/s", json!({"id": "s", "upstream_id": "ub"})).await;
    assert!(
        eventually(5, async || greeting(tcp).await.as_deref() == Some("b")).await,
        "service change followed"
    );
    // A route naming a plugin this server does not run refuses its clients.
    put(
        "stream_routes/r",
        json!({"id": "r", "service_id": "s", "plugins": {"x-auth": {"key": "k"}}}),
    )
    .await;
    assert!(
        eventually(5, async || greeting(tcp).await.is_none()).await,
        "fail closed"
    );
    for _ in 0..3 {
        assert_eq!(greeting(tcp).await, None);
    }
    assert_eq!(
        logged("unknown plugin [x-auth]"),
        1,
        "one log line for the route, none per connection"
    );
    // So does one whose service names such a plugin.
    put("stream_routes/r", json!({"id": "r", "service_id": "s"})).await;
    assert!(eventually(5, async || greeting(tcp).await.as_deref() == Some("b")).await);
    put(
        "services/s",
        json!({"id": "s", "upstream_id": "ub", "plugins": {"x-auth": {}}}),
    )
    .await;
    assert!(
        eventually(5, async || greeting(tcp).await.is_none()).await,
        "fail closed through the service"
    );
    let (st, v) = call(
        &reqwest::Client::new(),
        admin,
        Some(KEY),
        Method::GET,
        "/apisix/admin/services/s",
        None,
    )
    .await;
    // Held marked, as an unservable stream route is: not shown by reads.
    assert_eq!(st, StatusCode::NOT_FOUND, "{v}");
    put("services/s", json!({"id": "s", "upstream_id": "ua"})).await;
    assert!(
        eventually(5, async || greeting(tcp).await.as_deref() == Some("a")).await,
        "a valid service serves again"
    );
}

/// `apisix-stream ARGS --admin-url ... --api-key ...` against `s`.
async fn service_cli(s: &TestServer, args: &[&str]) -> (i32, String, String) {
    let url = format!("http://{}", s.admin);
    let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    all.extend(["--admin-url".into(), url, "--api-key".into(), KEY.into()]);
    within(
        30,
        tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = all.iter().map(String::as_str).collect();
            crate::harness::run_cli(&refs)
        }),
    )
    .await
    .expect("cli thread")
}

#[tokio::test]
async fn service_commands_and_routes_under_them() {
    let s = TestServer::with_tcp(&["127.0.0.1:0"]).await;
    let a = Backend::start("a", Mode::Greet).await;
    let node = a.addr.to_string();
    let plugin = r#"ip-restriction={"whitelist":["127.0.0.0/8"]}"#;
    let (code, out, err) = service_cli(
        &s,
        &[
            "service", "add", "--id", "db", "--node", &node, "--plugin", plugin, "--name", "mysql",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        format!("created service db ({node}, plugins ip-restriction)\n")
    );
    let (code, out, err) = service_cli(
        &s,
        &[
            "service", "add", "--id", "db", "--node", &node, "--plugin", plugin, "--name", "mysql",
            "-o", "json",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["id"], "db");
    assert_eq!(
        v["plugins"]["ip-restriction"]["whitelist"][0],
        "127.0.0.0/8"
    );
    let (code, out, err) =
        service_cli(&s, &["route", "add", "--id", "r", "--service-id", "db"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "created stream route r (any connection -> service db)\n"
    );
    assert_eq!(greeting(s.tcp[0]).await.as_deref(), Some("a"));
    let (code, out, _) = service_cli(&s, &["service", "list"]).await;
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("PLUGINS"),
        "{out}"
    );
    assert!(
        lines[1].contains("db") && lines[1].contains(&node) && lines[1].contains("ip-restriction"),
        "{out}"
    );
    let (_, out, _) = service_cli(&s, &["route", "list"]).await;
    assert!(out.contains("service db"), "{out}");
    let (code, _, err) = service_cli(&s, &["service", "delete", "db"]).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("stream_route [r] is still using it now"),
        "{err}"
    );
    let (code, out, _) = service_cli(&s, &["service", "get", "db"]).await;
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<Value>(&out).expect("json")["name"],
        "mysql"
    );
    service_cli(&s, &["route", "delete", "r"]).await;
    let (code, out, err) = service_cli(&s, &["service", "delete", "db"]).await;
    assert_eq!((code, out.as_str()), (0, "deleted service db\n"), "{err}");
}

#[tokio::test]
async fn services_and_plugin_metadata_survive_a_restart_of_the_local_store() {
    let listen = |c: &mut apisix_stream::config::Config| {
        if let Some(sp) = c.apisix.stream_proxy.as_mut() {
            sp.tcp = vec![ListenSpec::new("127.0.0.1:0".parse().expect("addr"))];
        }
    };
    let mut s = TestServer::start_full(tempfile::tempdir().expect("tempdir"), |y| y, listen).await;
    let a = Backend::start("a", Mode::Greet).await;
    ok(
        &s,
        "/apisix/admin/services/s",
        json!({"upstream": {"nodes": {a.addr.to_string(): 1}}}),
    )
    .await;
    ok(
        &s,
        "/apisix/admin/stream_routes/r",
        json!({"service_id": "s"}),
    )
    .await;
    ok(
        &s,
        "/apisix/admin/plugin_metadata/syslog",
        json!({"log_format": {"a": "$remote_addr"}}),
    )
    .await;
    s.stop().await;
    let dir = std::mem::replace(&mut s.dir, tempfile::tempdir().expect("tempdir"));
    let s = TestServer::start_full(dir, |y| y, listen).await;
    assert_eq!(greeting(s.tcp[0]).await.as_deref(), Some("a"));
    let (st, v) = s
        .call(Method::GET, "/apisix/admin/plugin_metadata/syslog", None)
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["value"]["log_format"], json!({"a": "$remote_addr"}));
}
