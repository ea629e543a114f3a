//! TLS end to end: certificates chosen by SNI, SNI routes, mTLS, TLS to
//! upstreams, live certificate changes and passthrough.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use apisix_stream::config::ListenSpec;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::backend::{read_line, Backend, Mode};
use crate::harness::{within, TestServer};

/// A certificate with its key, as PEM and DER.
pub(crate) struct Pem {
    cert: String,
    key: String,
    der: Vec<u8>,
}

/// A test CA that signs server and client certificates.
pub(crate) struct Ca {
    cert: Certificate,
    key: KeyPair,
}

impl Ca {
    pub(crate) fn new(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("key");
        let cert = p.self_signed(&key).expect("ca");
        Ca { cert, key }
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }

    fn issue(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> Pem {
        let mut p = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("params");
        p.distinguished_name.push(DnType::CommonName, names[0]);
        p.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("key");
        let cert = p.signed_by(&key, &self.cert, &self.key).expect("sign");
        Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }
}

pub(crate) fn server_cert(ca: &Ca, names: &[&str]) -> Pem {
    ca.issue(names, ExtendedKeyUsagePurpose::ServerAuth)
}

/// Accepts any server certificate; the test looks at which one it got.
#[derive(Debug)]
pub(crate) struct SeeAnything;

impl ServerCertVerifier for SeeAnything {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn client_config(client_cert: Option<&Pem>) -> Arc<rustls::ClientConfig> {
    let b = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SeeAnything));
    Arc::new(match client_cert {
        None => b.with_no_client_auth(),
        Some(p) => b
            .with_client_auth_cert(vec![CertificateDer::from(p.der.clone())], key_der(&p.key))
            .expect("client cert"),
    })
}

fn key_der(pem: &str) -> PrivateKeyDer<'static> {
    rustls_pemfile::private_key(&mut pem.as_bytes())
        .expect("pem")
        .expect("key")
}

/// Handshake with `sni`; the certificate the proxy presented, and the stream.
pub(crate) async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    client_cert: Option<&Pem>,
) -> std::io::Result<(Vec<u8>, tokio_rustls::client::TlsStream<TcpStream>)> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_string()).expect("name");
    let mut s = within(
        10,
        TlsConnector::from(client_config(client_cert)).connect(name, tcp),
    )
    .await?;
    // TLS 1.3 reports a rejected client certificate only after the
    // handshake: a round trip makes it visible.
    s.flush().await?;
    let cert = s
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .unwrap_or_default();
    Ok((cert, s))
}

pub(crate) fn tls_listener() -> ListenSpec {
    let mut spec = ListenSpec::new("127.0.0.1:0".parse().expect("addr"));
    spec.tls = true;
    spec
}

pub(crate) async fn put_ssl(
    s: &TestServer,
    id: &str,
    pem: &Pem,
    snis: &[&str],
    extra: serde_json::Value,
) {
    let mut body = json!({"cert": pem.cert, "key": pem.key, "snis": snis});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    let (st, v) = s
        .call(
            reqwest::Method::PUT,
            &format!("/apisix/admin/ssls/{id}"),
            Some(&body.to_string()),
        )
        .await;
    assert!(st.is_success(), "PUT ssl {id}: {st} {v}");
}

#[tokio::test]
async fn certificates_are_chosen_by_sni_and_bytes_flow() {
    let s = TestServer::with_tcp_specs(vec![tls_listener()], "").await;
    let ca = Ca::new("test ca");
    let exact = server_cert(&ca, &["a.test.com"]);
    let wild = server_cert(&ca, &["*.test.com"]);
    let any = server_cert(&ca, &["catch-all"]);
    put_ssl(&s, "1", &exact, &["a.test.com"], json!({})).await;
    put_ssl(&s, "2", &wild, &["*.test.com"], json!({})).await;
    let echo = Backend::start("echo", Mode::Echo).await;
    s.put_route(
        "1",
        &json!({"upstream": {"nodes": {echo.addr.to_string(): 1}}}),
    )
    .await;
    let proxy = s.tcp[0];
    let (cert, mut stream) = tls_connect(proxy, "a.test.com", None)
        .await
        .expect("handshake");
    assert_eq!(cert, exact.der, "exact name wins");
    // Private keys are stored sealed with the keyring, never in clear.
    for f in std::fs::read_dir(s.dir.path().join("data")).expect("data dir") {
        let bytes = std::fs::read(f.expect("entry").path()).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&bytes).contains("PRIVATE KEY"),
            "a private key is stored in clear"
        );
    }
    stream.write_all(b"through tls").await.expect("write");
    let mut got = [0u8; 11];
    within(5, stream.read_exact(&mut got)).await.expect("echo");
    assert_eq!(&got, b"through tls");
    let (cert, _) = tls_connect(proxy, "B.Test.Com", None)
        .await
        .expect("handshake");
    assert_eq!(cert, wild.der, "wildcard, case-insensitive");
    // A wildcard covers exactly one label; unknown names fail the handshake
    // while other handshakes carry on.
    for bad in ["x.b.test.com", "test.com", "other.org"] {
        let failed = tls_connect(proxy, bad, None);
        let fine = tls_connect(proxy, "a.test.com", None);
        let (failed, fine) = tokio::join!(failed, fine);
        assert!(failed.is_err(), "{bad} must not get a certificate");
        assert!(fine.is_ok());
    }
    // Non-TLS bytes close that connection only.
    let mut raw = TcpStream::connect(proxy).await.expect("connect");
    raw.write_all(b"GET / HTTP/1.1\r\n\r\n")
        .await
        .expect("write");
    let mut b = [0u8; 64];
    let n = within(5, raw.read(&mut b)).await.unwrap_or(0);
    assert!(
        n == 0 || b[0] == 0x15,
        "plain bytes must get no data (or a TLS alert)"
    );
    // The catch-all certificate serves the rest.
    put_ssl(&s, "3", &any, &["*"], json!({})).await;
    let (cert, _) = tls_connect(proxy, "x.b.test.com", None)
        .await
        .expect("handshake");
    assert_eq!(cert, any.der);
}

#[tokio::test]
async fn sni_routes_pick_upstreams_and_certificates_change_live() {
    let s = TestServer::with_tcp_specs(vec![tls_listener()], "").await;
    let ca = Ca::new("test ca");
    let first = server_cert(&ca, &["*.test.com"]);
    put_ssl(&s, "1", &first, &["*.test.com"], json!({})).await;
    let a = Backend::start("a", Mode::Greet).await;
    let b = Backend::start("b", Mode::Greet).await;
    s.put_route(
        "1",
        &json!({"sni": "a.test.com", "upstream": {"nodes": {a.addr.to_string(): 1}}}),
    )
    .await;
    s.put_route(
        "2",
        &json!({"sni": "*.test.com", "upstream": {"nodes": {b.addr.to_string(): 1}}}),
    )
    .await;
    let proxy = s.tcp[0];
    let (_, mut sa) = tls_connect(proxy, "a.test.com", None).await.expect("a");
    assert_eq!(tls_line(&mut sa).await, "a");
    let (_, mut sb) = tls_connect(proxy, "c.test.com", None).await.expect("c");
    assert_eq!(tls_line(&mut sb).await, "b");
    // Replace the certificate: the next handshake presents the new one.
    let second = server_cert(&ca, &["*.test.com"]);
    put_ssl(&s, "1", &second, &["*.test.com"], json!({})).await;
    let (cert, _) = tls_connect(proxy, "a.test.com", None)
        .await
        .expect("after change");
    assert_eq!(cert, second.der);
}

async fn tls_line<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> String {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    loop {
        let n = within(5, s.read(&mut b)).await.expect("read");
        if n == 0 || b[0] == b'\n' {
            return String::from_utf8_lossy(&out).into_owned();
        }
        out.push(b[0]);
    }
}

#[tokio::test]
async fn mtls_requires_a_client_certificate_from_the_ca() {
    let s = TestServer::with_tcp_specs(vec![tls_listener()], "").await;
    let ca = Ca::new("client ca");
    let other_ca = Ca::new("another ca");
    let server = server_cert(&ca, &["localhost"]);
    put_ssl(
        &s,
        "1",
        &server,
        &["localhost"],
        json!({"client": {"ca": ca.pem(), "depth": 2}}),
    )
    .await;
    let echo = Backend::start("echo", Mode::Echo).await;
    s.put_route(
        "1",
        &json!({"upstream": {"nodes": {echo.addr.to_string(): 1}}}),
    )
    .await;
    let proxy = s.tcp[0];
    let good = ca.issue(&["client"], ExtendedKeyUsagePurpose::ClientAuth);
    let stranger = other_ca.issue(&["client"], ExtendedKeyUsagePurpose::ClientAuth);
    let works = |cert: Option<&Pem>| {
        let cert = cert.map(|c| Pem {
            cert: c.cert.clone(),
            key: c.key.clone(),
            der: c.der.clone(),
        });
        async move {
            let Ok((_, mut stream)) = tls_connect(proxy, "localhost", cert.as_ref()).await else {
                return false;
            };
            if stream.write_all(b"ping").await.is_err() {
                return false;
            }
            let mut got = [0u8; 4];
            within(5, stream.read_exact(&mut got)).await.is_ok() && &got == b"ping"
        }
    };
    assert!(
        works(Some(&good)).await,
        "a certificate from the CA is accepted"
    );
    assert!(!works(None).await, "no client certificate is refused");
    assert!(
        !works(Some(&stranger)).await,
        "another CA's certificate is refused"
    );
    assert_eq!(
        echo.accepted(),
        1,
        "refused clients never reach the upstream"
    );
}

/// A TLS server answering `hello <SNI it received>`, optionally requiring a
/// client certificate from `client_ca`.
async fn tls_backend(pem: &Pem, client_ca: Option<&Ca>) -> (SocketAddr, JoinHandle<()>) {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions");
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(CertificateDer::from(ca.cert.der().to_vec()))
                .expect("root");
            builder.with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider(),
                )
                .build()
                .expect("verifier"),
            )
        }
    };
    let config = builder
        .with_single_cert(
            vec![CertificateDer::from(pem.der.clone())],
            key_der(&pem.key),
        )
        .expect("server cert");
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut s) = acceptor.accept(tcp).await {
                    let sni = s.get_ref().1.server_name().unwrap_or("-").to_string();
                    let _ = s.write_all(format!("hello {sni}\n").as_bytes()).await;
                    let _ = s.shutdown().await;
                }
            });
        }
    });
    (addr, task)
}

#[tokio::test]
async fn tls_to_upstreams_passes_the_sni_and_client_certificates() {
    let plain = ListenSpec::new("127.0.0.1:0".parse().expect("addr"));
    let s = TestServer::with_tcp_specs(vec![plain, tls_listener()], "").await;
    let ca = Ca::new("test ca");
    let backend_cert = server_cert(&ca, &["backend"]);
    let (backend, _task) = tls_backend(&backend_cert, None).await;
    let front = server_cert(&ca, &["test.com"]);
    put_ssl(&s, "1", &front, &["test.com"], json!({})).await;
    let up = json!({"scheme": "tls", "nodes": {backend.to_string(): 1}});
    s.put_route("1", &json!({"upstream": up})).await;
    let mut c = TcpStream::connect(s.tcp[0]).await.expect("plain client");
    assert_eq!(read_line(&mut c).await, "hello apisix_backend");
    let (_, mut t) = tls_connect(s.tcp[1], "test.com", None)
        .await
        .expect("tls client");
    assert_eq!(tls_line(&mut t).await, "hello test.com");

    // An upstream that requires a client certificate.
    let (mtls_backend, _task2) = tls_backend(&backend_cert, Some(&ca)).await;
    let client = ca.issue(&["proxy"], ExtendedKeyUsagePurpose::ClientAuth);
    s.put_route(
        "1",
        &json!({"upstream": {"scheme": "tls", "nodes": {mtls_backend.to_string(): 1}}}),
    )
    .await;
    let mut c = TcpStream::connect(s.tcp[0]).await.expect("connect");
    let mut b = [0u8; 8];
    let n = within(5, c.read(&mut b)).await.unwrap_or(0);
    assert_eq!(
        n, 0,
        "no client certificate: the upstream refuses, the client sees a close"
    );
    s.put_route(
        "1",
        &json!({"upstream": {"scheme": "tls", "nodes": {mtls_backend.to_string(): 1},
        "tls": {"client_cert": client.cert, "client_key": client.key}}}),
    )
    .await;
    let mut c = TcpStream::connect(s.tcp[0]).await.expect("connect");
    assert_eq!(read_line(&mut c).await, "hello apisix_backend");
    // The same through an SSL object of type client.
    let (st, v) = s
        .call(
            reqwest::Method::PUT,
            "/apisix/admin/ssls/client",
            Some(&json!({"type": "client", "cert": client.cert, "key": client.key}).to_string()),
        )
        .await;
    assert!(st.is_success(), "{v}");
    s.put_route(
        "1",
        &json!({"upstream": {"scheme": "tls", "nodes": {mtls_backend.to_string(): 1},
        "tls": {"client_cert_id": "client"}}}),
    )
    .await;
    let mut c = TcpStream::connect(s.tcp[0]).await.expect("connect");
    assert_eq!(read_line(&mut c).await, "hello apisix_backend");
}

#[tokio::test]
async fn passthrough_routes_by_sni_without_terminating() {
    let mut spec = ListenSpec::new("127.0.0.1:0".parse().expect("addr"));
    spec.tls_passthrough = true;
    let s = TestServer::with_tcp_specs(vec![spec], "").await;
    let ca = Ca::new("backend ca");
    let x_cert = server_cert(&ca, &["x.test"]);
    let y_cert = server_cert(&ca, &["y.test"]);
    let (x, _tx) = tls_backend(&x_cert, None).await;
    let (y, _ty) = tls_backend(&y_cert, None).await;
    s.put_route(
        "1",
        &json!({"sni": "x.test", "upstream": {"nodes": {x.to_string(): 1}}}),
    )
    .await;
    s.put_route(
        "2",
        &json!({"sni": "*.test", "upstream": {"nodes": {y.to_string(): 1}}}),
    )
    .await;
    let proxy = s.tcp[0];
    let (cert, mut sx) = tls_connect(proxy, "x.test", None).await.expect("x");
    assert_eq!(
        cert, x_cert.der,
        "the backend's own certificate reaches the client"
    );
    assert_eq!(tls_line(&mut sx).await, "hello x.test");
    let (cert, mut sy) = tls_connect(proxy, "y.test", None).await.expect("y");
    assert_eq!(cert, y_cert.der);
    assert_eq!(tls_line(&mut sy).await, "hello y.test");
    // Garbage instead of a ClientHello is closed.
    let mut raw = TcpStream::connect(proxy).await.expect("connect");
    raw.write_all(b"hello there, not tls\r\n")
        .await
        .expect("write");
    let mut b = [0u8; 8];
    let n = within(5, raw.read(&mut b)).await.unwrap_or(0);
    assert_eq!(n, 0);
    // A client that never sends its ClientHello is dropped at the deadline,
    // not held forever; meanwhile others are served.
    let _silent = TcpStream::connect(proxy).await.expect("connect");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(tls_connect(proxy, "x.test", None).await.is_ok());
}

/// A local relay to `proxy` that re-frames each client's first TLS record
/// (its ClientHello) into two records cut `cut` bytes into the handshake
/// message, sent in two writes apart, then forwards everything untouched.
async fn splitting_relay(proxy: SocketAddr, cut: usize) -> (SocketAddr, JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut head = [0u8; 5];
                c.read_exact(&mut head).await.expect("record header");
                let len = usize::from(u16::from_be_bytes([head[3], head[4]]));
                let mut hello = vec![0u8; len];
                c.read_exact(&mut hello).await.expect("record");
                let record = |part: &[u8]| {
                    let mut r = vec![0x16, head[1], head[2]];
                    r.extend_from_slice(&u16::try_from(part.len()).expect("len").to_be_bytes());
                    r.extend_from_slice(part);
                    r
                };
                let mut p = TcpStream::connect(proxy).await.expect("connect");
                p.set_nodelay(true).expect("nodelay");
                p.write_all(&record(&hello[..cut])).await.expect("first");
                // The proxy peeks the first record alone before the rest.
                tokio::time::sleep(Duration::from_millis(100)).await;
                p.write_all(&record(&hello[cut..])).await.expect("second");
                let _ = tokio::io::copy_bidirectional(&mut c, &mut p).await;
            });
        }
    });
    (addr, task)
}

#[tokio::test]
async fn passthrough_reassembles_a_client_hello_split_over_two_records() {
    let mut spec = ListenSpec::new("127.0.0.1:0".parse().expect("addr"));
    spec.tls_passthrough = true;
    let s = TestServer::with_tcp_specs(vec![spec], "").await;
    let ca = Ca::new("backend ca");
    let x_cert = server_cert(&ca, &["x.test"]);
    let y_cert = server_cert(&ca, &["y.test"]);
    let (x, _tx) = tls_backend(&x_cert, None).await;
    let (y, _ty) = tls_backend(&y_cert, None).await;
    s.put_route(
        "1",
        &json!({"sni": "x.test", "upstream": {"nodes": {x.to_string(): 1}}}),
    )
    .await;
    s.put_route("2", &json!({"upstream": {"nodes": {y.to_string(): 1}}}))
        .await;
    // Cut inside the handshake header, and in the random (the SNI is then
    // in the second record only).
    for cut in [2, 40] {
        let (relay, task) = splitting_relay(s.tcp[0], cut).await;
        let (cert, mut sx) = tls_connect(relay, "x.test", None)
            .await
            .unwrap_or_else(|e| panic!("cut {cut}: handshake through the proxy: {e}"));
        assert_eq!(cert, x_cert.der, "cut {cut}: routed by the SNI");
        assert_eq!(tls_line(&mut sx).await, "hello x.test");
        task.abort();
    }
}
