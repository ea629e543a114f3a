//! `serve` start-up: admin key generation and write-back, and clear one-line
//! errors for bad configuration before anything binds.

use reqwest::{Method, StatusCode};

use crate::harness::{
    call, free_port, run_cli, spawn_serve, test_yaml, wait_exit, wait_listening, ChildConfig,
};

const WITH_COMMENTS: &str = r#"# top comment kept
apisix:
  proxy_mode: stream   # trailing comment kept
  enable_control: false
  stream_proxy:
    tcp:
      - 9100
deployment:
  role_traditional:
    config_provider: local
  local:
    data_dir: data
  admin:
    admin_key:
      - name: admin
        key: ''     # filled in at first start
        role: admin
    admin_listen:
      ip: 127.0.0.1
      port: PORT
plugin_attr:
  prometheus:
    enable_export_server: false
# bottom comment kept
"#;

#[tokio::test]
async fn empty_admin_key_is_generated_written_back_and_printed_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let cfg = dir.path().join("config.yaml");
    let original = WITH_COMMENTS.replace("PORT", &port.to_string());
    std::fs::write(&cfg, &original).expect("write");
    let admin = format!("127.0.0.1:{port}").parse().expect("addr");
    let mut child = spawn_serve(&cfg);
    wait_listening(admin, &mut child);
    let written = std::fs::read_to_string(&cfg).expect("read back");
    let doc: serde_yaml::Value = serde_yaml::from_str(&written).expect("still YAML");
    let key = doc["deployment"]["admin"]["admin_key"][0]["key"]
        .as_str()
        .expect("key is a string")
        .to_string();
    assert!(key.len() >= 32, "{key}");
    assert!(key.chars().all(|c| c.is_ascii_alphabetic()));
    // Every other line is unchanged, comments included.
    let changed: Vec<(&str, &str)> = original
        .lines()
        .zip(written.lines())
        .filter(|(a, b)| a != b)
        .collect();
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert!(changed[0].1.contains(&key));
    assert_eq!(original.lines().count(), written.lines().count());
    let client = reqwest::Client::new();
    let (st, _) = call(
        &client,
        admin,
        Some(&key),
        Method::GET,
        "/apisix/admin/stream_routes",
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    child.child.kill().expect("kill");
    let _ = child.child.wait();
    let mut err = String::new();
    if let Some(mut e) = child.child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut err);
    }
    assert_eq!(err.matches(&key).count(), 1, "printed once: {err}");
    drop(child);
    // A second start keeps the key and prints nothing about it.
    let mut child = spawn_serve(&cfg);
    wait_listening(admin, &mut child);
    let client = reqwest::Client::new();
    assert_eq!(std::fs::read_to_string(&cfg).expect("read"), written);
    let (st, _) = call(
        &client,
        admin,
        Some(&key),
        Method::GET,
        "/apisix/admin/upstreams",
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK);
}

fn start_error(yaml: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("config.yaml");
    std::fs::write(&cfg, yaml).expect("write");
    let (code, _, err) = run_cli(&["serve", "-c", cfg.to_str().expect("utf8")]);
    assert_eq!(code, 1, "expected failure for:\n{yaml}\nstderr: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

#[test]
fn bad_configuration_stops_start_up_with_one_line_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let base = test_yaml(&dir.path().join("data"), port);
    let cases = [
        (
            base.replace("      - 9100", "      - 0"),
            "port out of range (1-65535): 0",
        ),
        (
            base.replace("      - 9100", "      - \"3000-2000\""),
            "invalid port range (start > end): 3000-2000",
        ),
        (
            base.replace("      - 9100", "      - \"127.0.0.1:\""),
            "missing port: 127.0.0.1:",
        ),
        (
            base.replace("      - 9200", "      - \"80.5\""),
            "invalid port format: 80.5",
        ),
        (
            base.replace("proxy_mode: stream", "proxy_mode: tcp"),
            "proxy_mode",
        ),
        (base.replace("- 127.0.0.0/24", "- not-an-ip"), "allow_admin"),
        (
            base.replace("config_provider: local", "config_provider: zookeeper"),
            "config_provider",
        ),
        (base.replace("role: viewer", "role: superuser"), "role"),
        (
            base.replace(
                &format!("port: {port}\n"),
                "port: ${{APISIX_STREAM_TEST_SURELY_UNSET_VAR}}\n",
            ),
            "can't find environment variable APISIX_STREAM_TEST_SURELY_UNSET_VAR",
        ),
        ("apisix: [unclosed".to_string(), "config"),
    ];
    for (yaml, want) in cases {
        let err = start_error(&yaml);
        assert!(err.contains(want), "want {want:?} in {err:?}");
    }
}

#[test]
fn worker_processes_other_than_auto_or_1_to_256_stops_start_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = test_yaml(&dir.path().join("data"), free_port());
    for bad in ["abc", "-3", "1000", "0"] {
        let yaml = format!("{base}nginx_config:\n  worker_processes: {bad}\n");
        let err = start_error(&yaml);
        assert!(
            err.contains("invalid nginx_config.worker_processes")
                && err.contains("expected auto or an integer from 1 to 256"),
            "for {bad}: {err}"
        );
    }
}

#[test]
fn env_default_is_used_when_the_variable_is_unset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let yaml = ChildConfig::new(port)
        .yaml(&dir.path().join("data"))
        .replace(
            &format!("port: {port}\n"),
            &format!("port: ${{{{APISIX_STREAM_TEST_UNSET_PORT:={port}}}}}\n"),
        );
    assert!(yaml.contains(":="), "{yaml}");
    let cfg = dir.path().join("config.yaml");
    std::fs::write(&cfg, yaml).expect("write");
    let mut child = spawn_serve(&cfg);
    wait_listening(
        format!("127.0.0.1:{port}").parse().expect("addr"),
        &mut child,
    );
}

#[test]
fn a_busy_admin_port_is_named() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let dir = tempfile::tempdir().expect("tempdir");
    let err = start_error(&test_yaml(&dir.path().join("data"), port));
    assert!(
        err.contains("admin_listen") && err.contains(&port.to_string()),
        "{err}"
    );
}

#[test]
fn sigterm_stops_serve_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let cfg = ChildConfig::new(port).write(dir.path());
    let mut child = spawn_serve(&cfg);
    wait_listening(
        format!("127.0.0.1:{port}").parse().expect("addr"),
        &mut child,
    );
    let pid = child.child.id().to_string();
    let st = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(st.success());
    let status = wait_exit(&mut child.child, 10, "serve after SIGTERM");
    assert_eq!(status.code(), Some(0), "clean exit on SIGTERM");
}

#[test]
fn a_busy_stream_port_is_named() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = test_yaml(&dir.path().join("data"), free_port())
        .replace("      - 9100\n", &format!("      - \"127.0.0.1:{port}\"\n"));
    let err = start_error(&yaml);
    assert!(
        err.contains("stream_proxy.tcp") && err.contains(&port.to_string()),
        "{err}"
    );
}
