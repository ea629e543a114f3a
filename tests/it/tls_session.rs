//! TLS sessions and policy on terminating listeners: resumption by ticket
//! or by the server-side cache, as `apisix.ssl` sets them; `ssl_protocols`
//! and `ssl_ciphers`; the full/resumed handshake counters in
//! `/v1/stream/stats` and Prometheus.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::client::Resumption;
use rustls::pki_types::ServerName;
use rustls::{CipherSuite, ClientConfig, HandshakeKind, ProtocolVersion};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::backend::{Backend, Mode};
use crate::harness::{within, TestServer};
use crate::tls::{put_ssl, server_cert, tls_listener, Ca, SeeAnything};

/// A server with one TLS listener, `ssl` as its `apisix.ssl`, a
/// certificate for `s.test` and a route to an echo backend.
async fn server(ssl: &str) -> (TestServer, Backend) {
    let ssl = ssl.to_string();
    let listeners = vec![tls_listener()];
    let s = TestServer::start_full(
        tempfile::tempdir().expect("tempdir"),
        move |y| y.replacen("apisix:\n", &format!("apisix:\n  ssl: {ssl}\n"), 1),
        move |c| {
            if let Some(sp) = c.apisix.stream_proxy.as_mut() {
                sp.tcp = listeners;
            }
        },
    )
    .await;
    let ca = Ca::new("session ca");
    put_ssl(
        &s,
        "1",
        &server_cert(&ca, &["s.test"]),
        &["s.test"],
        json!({}),
    )
    .await;
    let echo = Backend::start("echo", Mode::Echo).await;
    s.put_route(
        "1",
        &json!({"upstream": {"nodes": {echo.addr.to_string(): 1}}}),
    )
    .await;
    (s, echo)
}

/// A client of `versions` (and `suites`, all when empty) that keeps its
/// sessions across connections.
fn client(
    versions: &[&'static rustls::SupportedProtocolVersion],
    suites: &[CipherSuite],
) -> Arc<ClientConfig> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    if !suites.is_empty() {
        provider
            .cipher_suites
            .retain(|s| suites.contains(&s.suite()));
    }
    let mut c = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SeeAnything))
        .with_no_client_auth();
    c.resumption = Resumption::in_memory_sessions(16);
    Arc::new(c)
}

/// One connection: the handshake kind, version and suite, after an echo
/// round trip (which also delivers TLS 1.3 tickets).
async fn connect(
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
) -> std::io::Result<(HandshakeKind, ProtocolVersion, CipherSuite)> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("s.test").expect("name");
    let mut s = within(
        10,
        tokio_rustls::TlsConnector::from(config.clone()).connect(name, tcp),
    )
    .await?;
    s.write_all(b"ping").await?;
    let mut got = [0u8; 4];
    within(5, s.read_exact(&mut got)).await?;
    assert_eq!(&got, b"ping");
    let c = s.get_ref().1;
    let out = (
        c.handshake_kind().expect("kind"),
        c.protocol_version().expect("version"),
        c.negotiated_cipher_suite().expect("suite").suite(),
    );
    s.shutdown().await.ok();
    Ok(out)
}

async fn stats(s: &TestServer) -> Value {
    let control = s
        .server
        .as_ref()
        .and_then(|x| x.control_addr())
        .expect("control");
    within(5, reqwest::get(format!("http://{control}/v1/stream/stats")))
        .await
        .expect("stats")
        .json()
        .await
        .expect("json")
}

async fn kinds(
    addr: SocketAddr,
    version: &'static rustls::SupportedProtocolVersion,
) -> Vec<HandshakeKind> {
    let c = client(&[version], &[]);
    let mut out = Vec::new();
    for _ in 0..3 {
        out.push(connect(addr, &c).await.expect("handshake").0);
    }
    out
}

#[tokio::test]
async fn tickets_resume_sessions_and_the_counters_move() {
    let (s, _echo) = server("{}").await;
    let addr = s.tcp[0];
    for v in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let k = kinds(addr, v).await;
        assert_eq!(k[0], HandshakeKind::Full, "{v:?}: first is full");
        assert_eq!(
            &k[1..],
            &[HandshakeKind::Resumed, HandshakeKind::Resumed],
            "{v:?}: later connections resume by ticket"
        );
    }
    let st = stats(&s).await;
    assert_eq!(
        st["tls_handshakes"],
        json!({"full": 2, "resumed": 4}),
        "{st}"
    );
    let metrics_addr = s
        .server
        .as_ref()
        .and_then(|x| x.metrics_addr())
        .expect("metrics");
    let text = within(
        5,
        reqwest::get(format!("http://{metrics_addr}/apisix/prometheus/metrics")),
    )
    .await
    .expect("metrics")
    .text()
    .await
    .expect("text");
    assert!(
        text.contains("apisix_stream_tls_handshakes_total{kind=\"resumed\"} 4"),
        "{text}"
    );
    assert!(text.contains("apisix_stream_tls_handshakes_total{kind=\"full\"} 2"));
}

#[tokio::test]
async fn without_tickets_sessions_resume_through_the_cache_or_not_at_all() {
    let (s, _echo) = server("{ssl_session_tickets: false}").await;
    for v in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let k = kinds(s.tcp[0], v).await;
        assert_eq!(k, vec![HandshakeKind::Full; 3], "{v:?}: no resumption");
    }
    let st = stats(&s).await;
    assert_eq!(
        st["tls_handshakes"],
        json!({"full": 6, "resumed": 0}),
        "{st}"
    );
    drop(s);
    let (s, _echo) = server(
        "{ssl_session_tickets: false, ssl_session_cache_size: 100, ssl_session_timeout: 60}",
    )
    .await;
    for v in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let k = kinds(s.tcp[0], v).await;
        assert_eq!(
            k,
            vec![
                HandshakeKind::Full,
                HandshakeKind::Resumed,
                HandshakeKind::Resumed
            ],
            "{v:?}: resumed through the cache"
        );
    }
}

#[tokio::test]
async fn ssl_protocols_and_ssl_ciphers_are_honoured() {
    let (s, _echo) = server(
        "{ssl_protocols: TLSv1.3, ssl_ciphers: 'ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES256-GCM-SHA384'}",
    )
    .await;
    let addr = s.tcp[0];
    let tls12 = client(&[&rustls::version::TLS12], &[]);
    assert!(
        connect(addr, &tls12).await.is_err(),
        "a TLS 1.2 client is refused"
    );
    let tls13 = client(&[&rustls::version::TLS13], &[]);
    let (_, v, _) = connect(addr, &tls13).await.expect("TLS 1.3");
    assert_eq!(v, ProtocolVersion::TLSv1_3);
    drop(s);
    let (s, _echo) = server(
        "{ssl_protocols: TLSv1.2, ssl_ciphers: 'ECDHE-ECDSA-AES256-GCM-SHA384:DHE-RSA-AES128-GCM-SHA256'}",
    )
    .await;
    let addr = s.tcp[0];
    assert!(connect(addr, &tls13).await.is_err(), "TLS 1.3 refused");
    let any12 = client(&[&rustls::version::TLS12], &[]);
    let (_, v, suite) = connect(addr, &any12).await.expect("TLS 1.2");
    assert_eq!(v, ProtocolVersion::TLSv1_2);
    assert_eq!(suite, CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384);
    let other = client(
        &[&rustls::version::TLS12],
        &[CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256],
    );
    assert!(
        connect(addr, &other).await.is_err(),
        "a suite left out of ssl_ciphers is refused"
    );
}

#[test]
fn unknown_cipher_names_are_refused_with_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = crate::harness::test_yaml(&dir.path().join("data"), 0).replacen(
        "apisix:\n",
        "apisix:\n  ssl: {ssl_ciphers: 'ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES129-GCM-SHA256'}\n",
        1,
    );
    let err = apisix_stream::config::Config::from_yaml(&yaml)
        .expect_err("unknown cipher")
        .to_string();
    assert!(err.contains("ECDHE-RSA-AES129-GCM-SHA256"), "{err}");
    assert!(err.contains("apisix.ssl.ssl_ciphers"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}
