//! Verified TLS to upstream nodes: `tls.verify: true` checks the node's
//! chain against `apisix.ssl.ssl_trusted_certificate` and its name against
//! the SNI sent (the client's, else `apisix_backend`); without `verify`
//! nothing is checked, as in APISIX.

use std::net::SocketAddr;
use std::sync::Arc;

use apisix_stream::config::ListenSpec;
use rcgen::{BasicConstraints, Certificate, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::backend::read_line;
use crate::harness::{eventually, within, TestServer};

/// A private CA for one test.
pub struct TestCa {
    cert: Certificate,
    key: KeyPair,
}

/// A certificate and its key, PEM.
pub struct Leaf {
    pub cert: String,
    pub key: String,
}

impl TestCa {
    /// A fresh self-signed CA.
    pub fn new(name: &str) -> TestCa {
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("key");
        let cert = p.self_signed(&key).expect("ca");
        TestCa { cert, key }
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A leaf for these names (DNS names or IP addresses), signed by this CA.
    pub fn issue(&self, names: &[&str]) -> Leaf {
        let mut p = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("params");
        p.distinguished_name.push(DnType::CommonName, names[0]);
        let key = KeyPair::generate().expect("key");
        let cert = p.signed_by(&key, &self.cert, &self.key).expect("sign");
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn certs_of(pem: &str) -> Vec<CertificateDer<'static>> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("pem certs")
}

fn key_of(pem: &str) -> PrivateKeyDer<'static> {
    rustls_pemfile::private_key(&mut pem.as_bytes())
        .expect("pem")
        .expect("key")
}

/// A TLS acceptor presenting `leaf`.
pub fn acceptor(leaf: &Leaf) -> TlsAcceptor {
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(certs_of(&leaf.cert), key_of(&leaf.key))
        .expect("server cert");
    TlsAcceptor::from(Arc::new(config))
}

/// A TLS server presenting `leaf`; each accepted session goes to `serve`.
pub async fn tls_server<F, Fut>(leaf: &Leaf, serve: F) -> (SocketAddr, JoinHandle<()>)
where
    F: Fn(tokio_rustls::server::TlsStream<TcpStream>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let acceptor = acceptor(leaf);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let serve = Arc::new(serve);
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, serve) = (acceptor.clone(), serve.clone());
            tokio::spawn(async move {
                if let Ok(s) = acceptor.accept(tcp).await {
                    serve(s).await;
                }
            });
        }
    });
    (addr, task)
}

/// A TLS server presenting `leaf` and answering `hello <SNI received>`.
pub async fn hello_backend(leaf: &Leaf) -> (SocketAddr, JoinHandle<()>) {
    tls_server(leaf, |mut s| async move {
        let sni = s.get_ref().1.server_name().unwrap_or("-").to_string();
        let _ = s.write_all(format!("hello {sni}\n").as_bytes()).await;
        let _ = s.shutdown().await;
    })
    .await
}

/// A server started with `apisix.ssl.ssl_trusted_certificate` naming a
/// file that holds `ca`, listening on `tcp`. The file lives as long as the
/// returned directory.
pub async fn server_trusting(ca: &TestCa, tcp: Vec<ListenSpec>) -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = dir.path().join("trusted.pem");
    std::fs::write(&ca_file, ca.pem()).expect("write ca");
    let trusted = ca_file.display().to_string();
    let s = TestServer::start_full(
        tempfile::tempdir().expect("tempdir"),
        |y| y,
        move |c| {
            c.apisix.ssl.ssl_trusted_certificate = Some(trusted);
            if let Some(sp) = c.apisix.stream_proxy.as_mut() {
                sp.tcp = tcp;
            }
        },
    )
    .await;
    (s, dir)
}

/// What a client of a TLS listener reads with `sni` (the proxy's
/// certificate is checked against `ca`); empty when the proxy closes.
pub async fn tls_read(addr: SocketAddr, sni: &str, ca: &str) -> String {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs_of(ca) {
        roots.add(c).expect("root");
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from(sni.to_string()).expect("name");
    let Ok(mut s) = within(10, TlsConnector::from(Arc::new(config)).connect(name, tcp)).await
    else {
        return String::new();
    };
    let mut out = Vec::new();
    let _ = within(10, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).trim_end().to_string()
}

/// The certificate (DER) a TLS listener presents for `sni`, checked
/// against `ca`; empty when the handshake fails.
pub async fn peer_certificate(addr: SocketAddr, sni: &str, ca: String) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs_of(&ca) {
        roots.add(c).expect("root");
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from(sni.to_string()).expect("name");
    match within(10, TlsConnector::from(Arc::new(config)).connect(name, tcp)).await {
        Ok(s) => s
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
            .unwrap_or_default(),
        Err(_) => Vec::new(),
    }
}

/// What a plain client reads (empty when the proxy closes).
async fn plain_read(addr: SocketAddr) -> String {
    let mut c = TcpStream::connect(addr).await.expect("connect");
    let mut out = Vec::new();
    let _ = within(10, c.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).trim_end().to_string()
}

#[tokio::test]
async fn verified_upstreams_are_refused_for_a_wrong_name_or_ca_and_served_for_the_right_one() {
    let ca = TestCa::new("private upstream ca");
    let other_ca = TestCa::new("some other ca");
    let mut tls = ListenSpec::new("127.0.0.1:0".parse().expect("addr"));
    tls.tls = true;
    let plain = ListenSpec::new("127.0.0.1:0".parse().expect("addr"));
    let (s, _ca_dir) = server_trusting(&ca, vec![plain, tls]).await;
    let (plain, tls) = (s.tcp[0], s.tcp[1]);

    // The proxy terminates TLS for two names.
    let front = ca.issue(&["backend.test", "other.test"]);
    let (st, v) = s
        .call(
            reqwest::Method::PUT,
            "/apisix/admin/ssls/front",
            Some(
                &json!({"cert": front.cert, "key": front.key,
                    "snis": ["backend.test", "other.test"]})
                .to_string(),
            ),
        )
        .await;
    assert!(st.is_success(), "{v}");

    let (node, _t1) = hello_backend(&ca.issue(&["backend.test"])).await;
    let (stranger, _t2) = hello_backend(&other_ca.issue(&["backend.test"])).await;
    let route = |node: SocketAddr, verify: Option<bool>| {
        let mut up = json!({"scheme": "tls", "nodes": {node.to_string(): 1}, "retries": 0});
        if let Some(v) = verify {
            up["tls"] = json!({"verify": v});
        }
        json!({"upstream": up})
    };

    // verify: true, the name sent is the client's SNI.
    s.put_route("1", &route(node, Some(true))).await;
    assert_eq!(
        tls_read(tls, "backend.test", &ca.pem()).await,
        "hello backend.test",
        "the node's certificate names the SNI sent and comes from the trusted CA"
    );
    assert_eq!(
        tls_read(tls, "other.test", &ca.pem()).await,
        "",
        "the node's certificate does not name other.test: refused"
    );
    // A plain client: the name sent is apisix_backend, which the node's
    // certificate does not carry.
    assert_eq!(plain_read(plain).await, "");
    let failures = || async {
        let stats = s.stream_stats().await;
        stats["nodes"]
            .as_array()
            .map(|n| {
                n.iter()
                    .filter(|n| n["route_id"] == "1")
                    .filter_map(|n| n["connect_failures"].as_u64())
                    .sum::<u64>()
            })
            .unwrap_or(0)
    };
    assert!(
        eventually(5, async || failures().await >= 2).await,
        "refused handshakes are counted as the node's failures"
    );

    // Right name, untrusted CA: refused.
    s.put_route("1", &route(stranger, Some(true))).await;
    assert_eq!(tls_read(tls, "backend.test", &ca.pem()).await, "");

    // Without verify (absent or false), nothing is checked, as in APISIX.
    for verify in [None, Some(false)] {
        s.put_route("1", &route(stranger, verify)).await;
        assert_eq!(
            tls_read(tls, "other.test", &ca.pem()).await,
            "hello other.test"
        );
        assert_eq!(
            read_line(&mut TcpStream::connect(plain).await.expect("connect")).await,
            "hello apisix_backend"
        );
    }
}

#[tokio::test]
async fn a_missing_trusted_certificate_file_stops_the_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope.pem");
    let yaml = crate::harness::test_yaml(&dir.path().join("data"), 0).replace(
        "  proxy_mode: stream\n",
        &format!(
            "  proxy_mode: stream\n  ssl:\n    ssl_trusted_certificate: {}\n",
            missing.display()
        ),
    );
    let mut config = apisix_stream::config::Config::from_yaml(&yaml).expect("parses");
    if let Some(sp) = config.apisix.stream_proxy.as_mut() {
        sp.tcp.clear();
        sp.udp.clear();
    }
    let err = match within(10, apisix_stream::server::start(config)).await {
        Ok(_) => panic!("started without its trusted certificate file"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("ssl_trusted_certificate") && err.contains("nope.pem"),
        "{err}"
    );
}

/// An HTTPS server presenting `leaf` that answers every request `200 OK`.
async fn https_ok(leaf: &Leaf) -> (SocketAddr, JoinHandle<()>) {
    tls_server(leaf, |mut s| async move {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match s.read(&mut byte).await {
                Ok(1) => head.push(byte[0]),
                _ => return,
            }
        }
        let _ = s
            .write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
            .await;
        let _ = s.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn https_probes_verify_nodes_against_the_trusted_certificate() {
    let ca = TestCa::new("private probe ca");
    let other_ca = TestCa::new("some other ca");
    let plain = ListenSpec::new("127.0.0.1:0".parse().expect("addr"));
    let (s, _ca_dir) = server_trusting(&ca, vec![plain]).await;
    // Probes verify the node's certificate for its address (the hostname
    // sent), against the configured CA file.
    let (good, _g) = https_ok(&ca.issue(&["127.0.0.1"])).await;
    let (stranger, _t) = https_ok(&other_ca.issue(&["127.0.0.1"])).await;
    s.put_route(
        "1",
        &json!({"upstream": {"nodes": {good.to_string(): 1, stranger.to_string(): 1},
            "checks": {"active": {"type": "https", "https_verify_certificate": true,
                "timeout": 1,
                "healthy": {"interval": 1, "successes": 1},
                "unhealthy": {"interval": 1, "http_failures": 1, "tcp_failures": 1,
                    "timeouts": 1}}}}}),
    )
    .await;
    let path = "/v1/healthcheck/stream_routes/1";
    let node = |report: &serde_json::Value, addr: SocketAddr| {
        report["nodes"]
            .as_array()
            .and_then(|n| n.iter().find(|n| n["port"] == addr.port()))
            .cloned()
            .unwrap_or_default()
    };
    crate::harness::eventually_some(15, "the stranger's probe failed", async || {
        let r = s.control_get(path).await;
        (node(&r, stranger)["status"] == "unhealthy").then_some(())
    })
    .await;
    // Two more probe rounds: the node whose CA is trusted passes every one
    // of them (one failure would take it out).
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let report = s.control_get(path).await;
    assert_eq!(node(&report, good)["status"], "healthy", "{report}");
    assert_eq!(node(&report, good)["counter"]["tcp_failure"], 0, "{report}");
    assert_eq!(node(&report, stranger)["status"], "unhealthy", "{report}");
}
