//! `$env://` and `$secret://` references through a real server: a TLS
//! certificate taken from the serve process's environment, one read from
//! an in-test HTTP server answering as HashiCorp Vault's KV engine does,
//! plugin settings from the environment, and objects whose reference does
//! not resolve left out with one log line while the others are served.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;

use crate::harness::{
    bin, call, free_port, wait_listening_logged, ChildConfig, ChildGuard, TestServer, KEY,
};
use crate::trust::{acceptor, hello_backend, server_trusting, tls_read, TestCa};

/// The `/v1/stream/skipped` entry of an object, if it is skipped.
async fn skipped(control: SocketAddr, kind: &str, id: &str) -> Option<String> {
    let v = crate::harness::control_json(control, "/v1/stream/skipped").await;
    v["skipped"].as_array().and_then(|l| {
        l.iter()
            .find(|s| s["type"] == kind && s["id"] == id)
            .and_then(|s| s["reason"].as_str())
            .map(str::to_string)
    })
}

/// The reason an object is skipped, once it is (within `secs`).
async fn skip_reason(control: SocketAddr, kind: &str, id: &str, secs: u64) -> String {
    let what = format!("{kind}/{id} skipped");
    crate::harness::eventually_some(secs, &what, async || skipped(control, kind, id).await).await
}

/// `apisix-stream serve` with extra environment variables, its log in `log`.
fn serve_with_env(config: &Path, log: &Path, env: &[(&str, &str)]) -> ChildGuard {
    let stderr = std::fs::File::create(log).expect("log file");
    let mut cmd = Command::new(bin());
    cmd.arg("serve")
        .arg("-c")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(stderr))
        .env("RUST_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    ChildGuard {
        child: cmd.spawn().expect("spawn serve"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_and_plugin_settings_come_from_the_environment() {
    let ca = TestCa::new("env ca");
    let leaf = ca.issue(&["env.test"]);
    let json_leaf = ca.issue(&["json.test"]);
    let (backend, _task) = hello_backend(&ca.issue(&["backend.test"])).await;
    let syslog = UdpSocket::bind("127.0.0.1:0").await.expect("syslog socket");
    let syslog_port = syslog.local_addr().expect("addr").port();

    let dir = tempfile::tempdir().expect("tempdir");
    let (admin_port, tls_port, control_port) = (free_port(), free_port(), free_port());
    let config = ChildConfig::new(admin_port)
        .tcp_with(tls_port, "tls: true")
        .control(control_port)
        .write(dir.path());
    let log = dir.path().join("serve.log");
    let json_value = json!({"cert": json_leaf.cert, "key": json_leaf.key}).to_string();
    let mut child = serve_with_env(
        &config,
        &log,
        &[
            ("TEST_TLS_CERT", &leaf.cert),
            ("TEST_TLS_KEY", &leaf.key),
            ("TEST_TLS_PAIR", &json_value),
            ("TEST_SYSLOG_HOST", "127.0.0.1"),
            ("TEST_SYSLOG_TAG", "tag-from-the-environment"),
        ],
    );
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().expect("addr");
    let tls: SocketAddr = format!("127.0.0.1:{tls_port}").parse().expect("addr");
    let control: SocketAddr = format!("127.0.0.1:{control_port}").parse().expect("addr");
    wait_listening_logged(admin, &mut child, &log);
    wait_listening_logged(tls, &mut child, &log);
    let client = reqwest::Client::new();
    let put = |path: String, body: Value| {
        let client = client.clone();
        async move {
            call(
                &client,
                admin,
                Some(KEY),
                Method::PUT,
                &path,
                Some(&body.to_string()),
            )
            .await
        }
    };

    let (st, v) = put(
        "/apisix/admin/ssls/env".into(),
        json!({"cert": "$env://TEST_TLS_CERT", "key": "$ENV://TEST_TLS_KEY", "snis": ["env.test"]}),
    )
    .await;
    assert!(st.is_success(), "{st} {v}");
    assert_eq!(
        v["value"]["cert"], "$env://TEST_TLS_CERT",
        "the reference is stored, not its value"
    );
    let (st, v) = put(
        "/apisix/admin/ssls/json".into(),
        json!({"cert": "$env://TEST_TLS_PAIR/cert", "key": "$env://TEST_TLS_PAIR/key",
            "snis": ["json.test"]}),
    )
    .await;
    assert!(st.is_success(), "{st} {v}");
    let (st, v) = put(
        "/apisix/admin/stream_routes/1".into(),
        json!({"upstream": {"scheme": "tls", "nodes": {backend.to_string(): 1}},
            "plugins": {"syslog": {"host": "$env://TEST_SYSLOG_HOST", "port": syslog_port,
                "sock_type": "udp", "batch_max_size": 1,
                "log_format": {"client": "$remote_addr", "tag": "$env://TEST_SYSLOG_TAG"}}}}),
    )
    .await;
    assert!(st.is_success(), "{st} {v}");

    // Handshakes are served with the certificates of the environment.
    assert_eq!(tls_read(tls, "env.test", &ca.pem()).await, "hello env.test");
    assert_eq!(
        tls_read(tls, "json.test", &ca.pem()).await,
        "hello json.test"
    );
    // The syslog plugin sends to the host named by the environment.
    let mut buf = [0u8; 2048];
    let Ok(Ok((n, _))) =
        tokio::time::timeout(Duration::from_secs(10), syslog.recv_from(&mut buf)).await
    else {
        panic!(
            "no syslog message; log: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    };
    let line = String::from_utf8_lossy(&buf[..n]);
    assert!(
        line.contains(r#""tag":"tag-from-the-environment""#)
            && line.contains(r#""client":"127.0.0.1""#),
        "{line}"
    );

    // A reference that does not resolve: that object is left out, with one
    // log line naming it; the others are served.
    let (st, v) = put(
        "/apisix/admin/ssls/missing".into(),
        json!({"cert": "$env://TEST_NOT_SET_ANYWHERE", "key": "$env://TEST_TLS_KEY",
            "snis": ["missing.test"]}),
    )
    .await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    let why = skipped(control, "ssls", "missing")
        .await
        .expect("listed as skipped");
    assert!(
        why.contains("$env://TEST_NOT_SET_ANYWHERE") && why.contains("cert"),
        "{why}"
    );
    assert_eq!(tls_read(tls, "missing.test", &ca.pem()).await, "");
    assert_eq!(tls_read(tls, "env.test", &ca.pem()).await, "hello env.test");
    // Another write and more handshakes do not log it again.
    let (st, v) = put(
        "/apisix/admin/stream_routes/2".into(),
        json!({"server_port": 1, "upstream": {"nodes": {backend.to_string(): 1}}}),
    )
    .await;
    assert!(st.is_success(), "{st} {v}");
    assert_eq!(tls_read(tls, "missing.test", &ca.pem()).await, "");
    let logged = std::fs::read_to_string(&log).expect("log");
    let lines: Vec<&str> = logged
        .lines()
        .filter(|l| l.contains("TEST_NOT_SET_ANYWHERE") && l.contains("ssl skipped"))
        .collect();
    assert_eq!(lines.len(), 1, "one data-plane line naming it: {logged}");
    assert!(lines[0].contains("ssl_id=missing"), "{}", lines[0]);
    assert!(
        !logged.contains("PRIVATE KEY"),
        "values never reach the log"
    );
}

/// Secrets a fake Vault serves: path (after `/v1/`) -> data.
type VaultData = Arc<Mutex<HashMap<String, Value>>>;

/// Vault data holding each leaf's certificate and key (`cert`, `key`) at
/// its path.
fn certificates_at(entries: &[(&str, &crate::trust::Leaf)]) -> VaultData {
    let data: VaultData = Arc::default();
    for (path, leaf) in entries {
        data.lock()
            .expect("data")
            .insert((*path).into(), json!({"cert": leaf.cert, "key": leaf.key}));
    }
    data
}

/// An HTTP server answering `GET /v1/<path>` as Vault's KV version 2 engine
/// does (`{"data": {"data": {...}, "metadata": {...}}}`) for `token`, 403
/// `{"errors": ["permission denied"]}` for any other token and 404
/// `{"errors": []}` for unknown paths.
async fn fake_vault(token: &'static str, data: VaultData) -> (SocketAddr, JoinHandle<()>) {
    fake_vault_over(token, data, None).await
}

/// [`fake_vault`], over https with `tls` when given.
async fn fake_vault_over(
    token: &'static str,
    data: VaultData,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let data = data.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let _ = match tls {
                    None => answer_vault(tcp, token, &data).await,
                    Some(acceptor) => match acceptor.accept(tcp).await {
                        Ok(s) => answer_vault(s, token, &data).await,
                        Err(e) => Err(e),
                    },
                };
            });
        }
    });
    (addr, task)
}

async fn answer_vault<S>(stream: S, token: &str, data: &VaultData) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut reader = BufReader::new(stream);
    loop {
        let mut request = String::new();
        if reader.read_line(&mut request).await? == 0 {
            return Ok(());
        }
        let path = request.split_whitespace().nth(1).unwrap_or("/").to_string();
        let mut presented = None;
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).await?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                match k.trim().to_ascii_lowercase().as_str() {
                    "x-vault-token" => presented = Some(v.trim().to_string()),
                    "content-length" => length = v.trim().parse().unwrap_or(0),
                    _ => {}
                }
            }
        }
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body).await?;
        let key = path.trim_start_matches("/v1/").to_string();
        let found = data.lock().expect("vault data").get(&key).cloned();
        let (status, answer) = match (presented.as_deref() == Some(token), found) {
            (false, _) => ("403 Forbidden", json!({"errors": ["permission denied"]})),
            (true, None) => ("404 Not Found", json!({"errors": []})),
            (true, Some(d)) => (
                "200 OK",
                json!({"request_id": "r", "lease_id": "", "renewable": false,
                    "lease_duration": 0, "wrap_info": null, "warnings": null,
                    "auth": null, "data": {"data": d,
                    "metadata": {"created_time": "2026-01-01T00:00:00Z",
                        "custom_metadata": null, "deletion_time": "",
                        "destroyed": false, "version": 1}}}),
            ),
        };
        let answer = answer.to_string();
        let head = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            answer.len()
        );
        reader.get_mut().write_all(head.as_bytes()).await?;
        reader.get_mut().write_all(answer.as_bytes()).await?;
    }
}

/// SSL object 1 for `vault.test` with its certificate and key read through
/// `secrets` object `vault/1`, and route 1 to `backend` over TLS.
async fn serve_vault_certificate(s: &TestServer, backend: SocketAddr) {
    let (st, v) = s
        .call(
            Method::PUT,
            "/apisix/admin/ssls/1",
            Some(
                &json!({"cert": "$secret://vault/1/apisix/tls/cert",
                    "key": "$secret://vault/1/apisix/tls/key", "snis": ["vault.test"]})
                .to_string(),
            ),
        )
        .await;
    assert!(st.is_success(), "{st} {v}");
    s.put_route(
        "1",
        &json!({"upstream": {"scheme": "tls", "nodes": {backend.to_string(): 1}}}),
    )
    .await;
}

#[tokio::test]
async fn certificates_come_from_vault_through_a_secrets_object() {
    let ca = TestCa::new("vault ca");
    let first = ca.issue(&["vault.test"]);
    let second = ca.issue(&["vault.test"]);
    let data = certificates_at(&[
        ("secret/data/apisix/tls", &first),
        ("kv2/data/apisix/tls", &second),
    ]);
    let (vault, _task) = fake_vault("s.root-token", data.clone()).await;
    let (backend, _b) = hello_backend(&ca.issue(&["backend.test"])).await;

    let mut tls = apisix_stream::config::ListenSpec::new("127.0.0.1:0".parse().expect("addr"));
    tls.tls = true;
    let s = TestServer::with_tcp_specs(vec![tls], "").await;
    let listener = s.tcp[0];
    let secret = |prefix: &str, token: &str| json!({"uri": format!("http://{vault}"), "prefix": prefix, "token": token});
    let (st, v) = s
        .call(
            Method::PUT,
            "/apisix/admin/secrets/vault/1",
            Some(&secret("secret/data", "s.root-token").to_string()),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert_eq!(v["key"], "/apisix/secrets/vault/1");
    assert_eq!(v["value"]["id"], "vault/1");
    let (st, v) = s
        .call(Method::GET, "/apisix/admin/secrets/vault/1", None)
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["value"]["prefix"], "secret/data");
    // APISIX's checks.
    let (st, v) = s
        .call(
            Method::PUT,
            "/apisix/admin/secrets/aws/1",
            Some(&secret("p", "t").to_string()),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error_msg"], "invalid secret manager: aws");
    let (st, v) = s
        .call(
            Method::PUT,
            "/apisix/admin/secrets/vault/2",
            Some(&json!({"uri": format!("http://{vault}"), "prefix": "p"}).to_string()),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["error_msg"]
            .as_str()
            .is_some_and(|m| m.starts_with("invalid configuration: ") && m.contains("token")),
        "{v}"
    );
    let (st, _) = s
        .call(Method::POST, "/apisix/admin/secrets/vault", Some("{}"))
        .await;
    assert_eq!(st, StatusCode::METHOD_NOT_ALLOWED);

    serve_vault_certificate(&s, backend).await;
    assert_eq!(
        tls_read(listener, "vault.test", &ca.pem()).await,
        "hello vault.test"
    );
    let der = |pem: &str| {
        rustls_pemfile::certs(&mut pem.as_bytes())
            .next()
            .expect("a cert")
            .expect("pem")
            .to_vec()
    };
    let presented = |addr, sni: &'static str| crate::trust::peer_certificate(addr, sni, ca.pem());
    assert_eq!(presented(listener, "vault.test").await, der(&first.cert));

    // A change of the secrets object resolves the certificate again.
    let (st, v) = s
        .call(
            Method::PUT,
            "/apisix/admin/secrets/vault/1",
            Some(&secret("kv2/data", "s.root-token").to_string()),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(presented(listener, "vault.test").await, der(&second.cert));
    let control = s.control();

    // A wrong token: the object is left out with Vault's reason, never
    // served half-configured.
    let (st, v) = s
        .call(
            Method::PUT,
            "/apisix/admin/secrets/vault/1",
            Some(&secret("secret/data", "s.wrong").to_string()),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let reason = skip_reason(control, "ssls", "1", 5).await;
    assert!(
        reason.contains("$secret://vault/1/apisix/tls/cert")
            && reason.contains("permission denied"),
        "{reason}"
    );
    assert_eq!(tls_read(listener, "vault.test", &ca.pem()).await, "");
}

#[tokio::test]
async fn vault_over_https_is_checked_against_the_trusted_certificate() {
    let ca = TestCa::new("private vault ca");
    let other_ca = TestCa::new("some other ca");
    let leaf = ca.issue(&["vault.test"]);
    let data = certificates_at(&[("secret/data/apisix/tls", &leaf)]);
    // Two Vaults with the same secrets over https: one with a certificate
    // from the trusted CA, one from another CA.
    let (trusted_vault, _t1) = fake_vault_over(
        "s.token",
        data.clone(),
        Some(acceptor(&ca.issue(&["127.0.0.1"]))),
    )
    .await;
    let (stranger_vault, _t2) = fake_vault_over(
        "s.token",
        data,
        Some(acceptor(&other_ca.issue(&["127.0.0.1"]))),
    )
    .await;
    let mut tls = apisix_stream::config::ListenSpec::new("127.0.0.1:0".parse().expect("addr"));
    tls.tls = true;
    let (s, _ca_dir) = server_trusting(&ca, vec![tls]).await;
    let listener = s.tcp[0];
    let secret = |vault: SocketAddr| {
        json!({"uri": format!("https://{vault}"), "prefix": "secret/data", "token": "s.token"})
            .to_string()
    };
    let put = |path: &'static str, body: String| {
        let s = &s;
        async move { s.call(Method::PUT, path, Some(&body)).await }
    };
    let (st, v) = put("/apisix/admin/secrets/vault/1", secret(trusted_vault)).await;
    assert!(st.is_success(), "{v}");
    let (backend, _b) = hello_backend(&ca.issue(&["backend.test"])).await;
    serve_vault_certificate(&s, backend).await;
    assert_eq!(
        tls_read(listener, "vault.test", &ca.pem()).await,
        "hello vault.test",
        "the certificate was read from the Vault whose CA is trusted"
    );
    // The same secrets from a Vault whose certificate the trusted CA did
    // not issue: not read, the SSL object is left out with the reason.
    let (st, v) = put("/apisix/admin/secrets/vault/1", secret(stranger_vault)).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let reason = skip_reason(s.control(), "ssls", "1", 10).await;
    assert!(
        reason.contains("$secret://vault/1/apisix/tls/cert")
            && reason.contains("failed to retrieve data from vault"),
        "{reason}"
    );
    assert_eq!(tls_read(listener, "vault.test", &ca.pem()).await, "");
}

#[tokio::test]
async fn standalone_files_carry_secrets_and_unresolvable_routes_refuse_their_clients() {
    let ca = TestCa::new("yaml ca");
    let leaf = ca.issue(&["yaml.test"]);
    let data = certificates_at(&[("kv/apisix/front", &leaf)]);
    let (vault, _task) = fake_vault("yaml-token", data).await;
    let wide = crate::backend::Backend::start("wide", crate::backend::Mode::Greet).await;

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("apisix.yaml");
    std::fs::write(
        &file,
        format!(
            r#"secrets:
  - id: vault/1
    uri: http://{vault}
    prefix: kv
    token: yaml-token
ssls:
  - id: front
    cert: $secret://vault/1/apisix/front/cert
    key: $secret://vault/1/apisix/front/key
    snis: [yaml.test]
stream_routes:
  - id: narrow
    remote_addr: 127.0.0.1
    plugins:
      syslog:
        host: $env://TEST_SYSLOG_HOST_SURELY_UNSET
        port: 514
        log_format: {{client: $remote_addr}}
    upstream:
      nodes:
        "{wide}": 1
  - id: wide
    upstream:
      nodes:
        "{wide}": 1
#END
"#,
            wide = wide.addr
        ),
    )
    .expect("write apisix.yaml");
    let mut tls = apisix_stream::config::ListenSpec::new("127.0.0.1:0".parse().expect("addr"));
    tls.tls = true;
    let plain = apisix_stream::config::ListenSpec::new("127.0.0.1:0".parse().expect("addr"));
    let s = TestServer::standalone_yaml(dir, &file, vec![plain, tls]).await;
    let (plain, tls) = (s.tcp[0], s.tcp[1]);
    // The certificate comes from Vault through the file's secrets object
    // (only the handshake is looked at).
    let got = crate::trust::peer_certificate(tls, "yaml.test", ca.pem()).await;
    let want = rustls_pemfile::certs(&mut leaf.cert.as_bytes())
        .next()
        .expect("a cert")
        .expect("pem")
        .to_vec();
    assert_eq!(got, want);
    // The route whose plugin setting does not resolve refuses the clients
    // its filters catch; the others are served.
    let mut narrow = crate::backend::connect_from("127.0.0.1", plain).await;
    assert_eq!(crate::backend::read_line(&mut narrow).await, "");
    let mut other = crate::backend::connect_from("127.0.0.2", plain).await;
    assert_eq!(crate::backend::read_line(&mut other).await, "wide");
    let why = skipped(s.control(), "stream_routes", "narrow")
        .await
        .expect("narrow is skipped");
    assert!(
        why.contains("$env://TEST_SYSLOG_HOST_SURELY_UNSET") && why.contains("plugins.syslog.host"),
        "{why}"
    );
    assert_eq!(skipped(s.control(), "ssls", "front").await, None);
}
