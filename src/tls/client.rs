//! The client side of TLS: to `scheme: tls` upstream nodes, to syslog
//! servers and for `https` health probes.
//!
//! Upstream certificates are not verified unless the upstream says
//! `tls.verify: true`, as in APISIX's stream proxy (nginx's
//! `proxy_ssl_verify off` by default); with it, the node's chain must lead
//! to a CA of the [`Trust`] store and its certificate must name the SNI
//! sent. An upstream may also ask for a client certificate (upstream
//! mTLS). Health probes with `https_verify_certificate` verify against the
//! same [`Trust`] store.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::{client, TlsConnector};

use super::{provider, Trust};

/// Accepts any upstream certificate: upstream certificates are not verified
/// in APISIX's stream proxy (nginx's `proxy_ssl_verify off`).
#[derive(Debug)]
struct AnyServerCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Presents one certificate to every upstream that asks for one.
#[derive(Debug)]
struct FixedClientCert(Arc<CertifiedKey>);

impl rustls::client::ResolvesClientCert for FixedClientCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Client configuration for `scheme: tls` upstreams, with an optional
/// client certificate (upstream mTLS); with `verify`, the server's
/// certificate is checked against that trust store and the name sent.
pub fn client_config(
    client_cert: Option<Arc<CertifiedKey>>,
    verify: Option<&Trust>,
) -> Result<Arc<ClientConfig>, String> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("bad TLS versions: {e}"))?;
    let builder = match verify {
        Some(trust) => builder.with_root_certificates(trust.roots()),
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServerCert(provider))),
    };
    let config = match client_cert {
        None => builder.with_no_client_auth(),
        Some(k) => builder.with_client_cert_resolver(Arc::new(FixedClientCert(k))),
    };
    Ok(Arc::new(config))
}

/// The TLS handshake over a connected `stream`, sending `sni`; no deadline
/// of its own (callers bound it).
pub async fn handshake(
    stream: TcpStream,
    config: Arc<ClientConfig>,
    sni: &str,
) -> io::Result<client::TlsStream<TcpStream>> {
    let name = ServerName::try_from(sni.to_string())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("bad SNI {sni}: {e}")))?;
    TlsConnector::from(config).connect(name, stream).await
}

/// Open TLS to an upstream node, sending `sni` (the client's SNI, or
/// [`DEFAULT_UPSTREAM_SNI`](super::DEFAULT_UPSTREAM_SNI) for plain clients).
pub async fn connect_upstream(
    stream: TcpStream,
    config: Arc<ClientConfig>,
    sni: &str,
    timeout: Duration,
) -> Result<client::TlsStream<TcpStream>, String> {
    tokio::time::timeout(timeout, handshake(stream, config, sni))
        .await
        .map_err(|_| "upstream TLS handshake timed out".to_string())?
        .map_err(|e| format!("upstream TLS handshake failed: {e}"))
}
