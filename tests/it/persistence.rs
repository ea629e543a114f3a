//! Acknowledged writes survive restarts and `kill -9`; a damaged store stops
//! start-up instead of starting empty.

use std::io::Read;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::harness::{
    call, free_port, run_cli, spawn_serve, wait_listening, ChildConfig, TestServer, KEY,
};

#[tokio::test]
async fn data_survives_a_clean_restart() {
    let mut s = TestServer::start().await;
    let (st, _) = s
        .call(
            Method::PUT,
            "/apisix/admin/upstreams/u1",
            Some(r#"{"nodes": {"127.0.0.1:3306": 1}}"#),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let (st, before) = s
        .call(
            Method::PUT,
            "/apisix/admin/stream_routes/1",
            Some(r#"{"server_port": 9100, "upstream_id": "u1"}"#),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    s.stop().await;
    let dir = std::mem::replace(&mut s.dir, tempfile::tempdir().expect("tempdir"));
    let s2 = TestServer::start_in(dir, |y| y).await;
    let (st, after) = s2
        .call(Method::GET, "/apisix/admin/stream_routes/1", None)
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(after["value"], before["value"]);
    // Ids minted after the restart never reuse a revision.
    let (_, posted) = s2
        .call(
            Method::POST,
            "/apisix/admin/upstreams",
            Some(r#"{"nodes": {"127.0.0.1:1": 1}}"#),
        )
        .await;
    let id: u64 = posted["value"]["id"]
        .as_str()
        .expect("id")
        .parse()
        .expect("numeric");
    assert!(id > after["modifiedIndex"].as_u64().expect("rev"));
}

#[tokio::test]
async fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let cfg = ChildConfig::new(port).write(dir.path());
    let admin = format!("127.0.0.1:{port}").parse().expect("addr");
    let client = reqwest::Client::new();
    let mut child = spawn_serve(&cfg);
    wait_listening(admin, &mut child);
    for i in 0..20 {
        let body = json!({"server_port": 9100, "desc": format!("route {i}"),
                          "upstream": {"nodes": {"127.0.0.1:1995": 1}}})
        .to_string();
        let (st, _) = call(
            &client,
            admin,
            Some(KEY),
            Method::PUT,
            &format!("/apisix/admin/stream_routes/{i}"),
            Some(&body),
        )
        .await;
        assert_eq!(st, StatusCode::CREATED);
    }
    // Kill at once after the last acknowledgement: no chance to flush later.
    child.child.kill().expect("kill -9");
    child.child.wait().expect("reaped");
    drop(child);
    let mut child = spawn_serve(&cfg);
    wait_listening(admin, &mut child);
    let client = reqwest::Client::new();
    let (st, v) = call(
        &client,
        admin,
        Some(KEY),
        Method::GET,
        "/apisix/admin/stream_routes",
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["total"], 20, "{v}");
    let (_, last) = call(
        &client,
        admin,
        Some(KEY),
        Method::GET,
        "/apisix/admin/stream_routes/19",
        None,
    )
    .await;
    assert_eq!(last["value"]["desc"], "route 19");
}

#[test]
fn a_damaged_store_stops_start_up_with_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("mkdir");
    std::fs::write(data.join("store.log"), b"this is not a store file at all").expect("write");
    let cfg = ChildConfig::new(free_port()).write(dir.path());
    let (code, _, err) = run_cli(&["serve", "-c", cfg.to_str().expect("utf8")]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("store") && err.contains("damaged"), "{err}");
    // The damaged file is left as it was for the operator to inspect.
    let mut kept = String::new();
    std::fs::File::open(data.join("store.log"))
        .expect("open")
        .read_to_string(&mut kept)
        .expect("read");
    assert_eq!(kept, "this is not a store file at all");
}

#[tokio::test]
async fn a_second_serve_on_the_same_data_dir_is_refused_even_without_its_lock_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let cfg = ChildConfig::new(port).write(dir.path());
    let admin = format!("127.0.0.1:{port}").parse().expect("addr");
    let mut first = spawn_serve(&cfg);
    wait_listening(admin, &mut first);
    let data = dir.path().join("data");
    // The second process: its own ports, the first one's data directory.
    let other = tempfile::tempdir().expect("tempdir");
    let other_port = free_port();
    let other_cfg = other.path().join("config.yaml");
    std::fs::write(&other_cfg, ChildConfig::new(other_port).yaml(&data)).expect("write");
    let second = || run_cli(&["serve", "-c", other_cfg.to_str().expect("utf8")]);
    let (code, _, err) = second();
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    let holder = format!("pid {} holds its lock", first.child.id());
    assert!(err.contains("is in use") && err.contains(&holder), "{err}");
    // Deleting LOCK, or replacing it, does not let the second one in.
    std::fs::remove_file(data.join("LOCK")).expect("rm LOCK");
    let (code, _, err) = second();
    assert_eq!(code, 1, "deleted LOCK: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains("is in use"), "{err}");
    std::fs::write(data.join("LOCK"), "").expect("new LOCK");
    let (code, _, err) = second();
    assert_eq!(code, 1, "recreated LOCK: {err}");
    assert!(err.contains("is in use"), "{err}");
    // The holder still writes.
    let client = reqwest::Client::new();
    let (st, _) = call(
        &client,
        admin,
        Some(KEY),
        Method::PUT,
        "/apisix/admin/upstreams/1",
        Some(r#"{"nodes": {"127.0.0.1:1995": 1}}"#),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED);
    // Once it is gone, the directory is free.
    first.child.kill().expect("kill");
    first.child.wait().expect("reaped");
    let admin2 = format!("127.0.0.1:{other_port}").parse().expect("addr");
    let mut second = spawn_serve(&other_cfg);
    wait_listening(admin2, &mut second);
    let (st, _) = call(
        &client,
        admin2,
        Some(KEY),
        Method::GET,
        "/apisix/admin/upstreams/1",
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK);
}
