//! TLS material compiled from SSL objects: a rustls `ServerConfig` per
//! server SSL object (picked per handshake by SNI) and the certificates of
//! `type: client` objects for upstream mTLS.
//!
//! Certificate selection (APISIX): exact name first, then a wildcard
//! `*.suffix` matching exactly one extra label (`*.test.com` serves
//! `a.test.com`, not `test.com` nor `a.b.test.com`), then the catch-all `*`;
//! names compare case-insensitively. Each SSL object has its own
//! `ServerConfig` and so its own session cache: a session resumed under one
//! object never authorises another (and rustls itself refuses to resume a
//! session under a different SNI).

use std::collections::HashMap;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};
use serde_json::Value;

use super::provider;
use super::session::Policy;
use crate::model::{Ssl, SslType};

fn parse_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad certificate: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate in PEM".into());
    }
    Ok(certs)
}

fn parse_key(pem: &str) -> Result<PrivateKeyDer<'static>, String> {
    rustls_pemfile::private_key(&mut pem.as_bytes())
        .map_err(|e| format!("bad private key: {e}"))?
        .ok_or_else(|| "no private key in PEM".to_string())
}

/// A certificate chain with its key, as rustls signs with it.
pub fn certified_key(
    cert: &str,
    key: &str,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, String> {
    CertifiedKey::from_der(parse_certs(cert)?, parse_key(key)?, provider)
        .map(Arc::new)
        .map_err(|e| format!("unusable certificate/key pair: {e}"))
}

/// Picks among an SSL object's pairs (e.g. RSA and ECDSA) the first whose
/// key can sign with a scheme the client offers.
#[derive(Debug)]
struct PairResolver {
    keys: Vec<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for PairResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let offered = hello.signature_schemes();
        self.keys
            .iter()
            .find(|k| k.key.choose_scheme(offered).is_some())
            .or_else(|| self.keys.first())
            .cloned()
    }
}

/// Client-certificate verification against the SSL object's CA, with
/// nginx's `ssl_verify_depth` meaning of `client.depth` (depth 1: the client
/// certificate is signed by the CA directly; each extra level allows one
/// intermediate).
#[derive(Debug)]
struct DepthLimited {
    inner: Arc<dyn ClientCertVerifier>,
    depth: usize,
}

impl ClientCertVerifier for DepthLimited {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if intermediates.len() + 1 > self.depth {
            return Err(rustls::Error::General(format!(
                "client certificate chain longer than depth {}",
                self.depth
            )));
        }
        self.inner
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Build the server configuration of one SSL object.
pub fn server_config(ssl: &Ssl, policy: &Policy) -> Result<Arc<ServerConfig>, String> {
    let provider = Arc::new(CryptoProvider {
        cipher_suites: policy.suites.clone(),
        ..(*provider()).clone()
    });
    let keys = ssl
        .pairs
        .iter()
        .map(|(c, k)| certified_key(c, k, &provider))
        .collect::<Result<Vec<_>, _>>()?;
    if keys.is_empty() {
        return Err("no certificate".into());
    }
    let versions = if ssl.ssl_protocols.is_empty() {
        policy.versions.clone()
    } else {
        super::session::versions(&ssl.ssl_protocols)
    };
    if versions.is_empty() {
        return Err("ssl_protocols allows neither TLSv1.2 nor TLSv1.3".into());
    }
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| format!("bad TLS versions: {e}"))?;
    let builder = match &ssl.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in parse_certs(ca)? {
                roots.add(c).map_err(|e| format!("bad client CA: {e}"))?;
            }
            let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("bad client CA: {e}"))?;
            builder.with_client_cert_verifier(Arc::new(DepthLimited {
                inner,
                depth: ssl.client_depth.max(1) as usize,
            }))
        }
    };
    let mut config = builder.with_cert_resolver(Arc::new(PairResolver { keys }));
    config.session_storage = policy.session_store();
    config.send_tls13_tickets = 1;
    match &policy.ticketer {
        Some(t) => config.ticketer = t.clone(),
        None if policy.cache_size == 0 => config.send_tls13_tickets = 0,
        None => {}
    }
    Ok(Arc::new(config))
}

/// One compiled server SSL object.
#[derive(Debug)]
struct ServerSsl {
    source: Value,
    config: Arc<ServerConfig>,
    snis: Vec<String>,
}

/// All TLS material of a snapshot.
#[derive(Debug, Default)]
pub struct TlsCerts {
    by_id: HashMap<String, Arc<ServerSsl>>,
    exact: HashMap<String, Arc<ServerConfig>>,
    wildcard: HashMap<String, Arc<ServerConfig>>,
    any: Option<Arc<ServerConfig>>,
    /// `type: client` SSL objects by id, for `tls.client_cert_id`.
    clients: HashMap<String, (Value, Arc<CertifiedKey>)>,
    /// SSL objects that could not be loaded, by id, with why.
    rejected: Vec<(String, String)>,
    /// The policy the server configurations were built with.
    policy: Option<Arc<Policy>>,
}

impl TlsCerts {
    /// Compile the SSL objects (id, stored JSON); unchanged objects are
    /// taken from `prev` without parsing their keys again.
    pub fn build<'a>(
        ssls: impl Iterator<Item = (&'a str, &'a Value)>,
        prev: Option<&TlsCerts>,
        policy: &Arc<Policy>,
    ) -> TlsCerts {
        let mut out = TlsCerts {
            policy: Some(policy.clone()),
            ..TlsCerts::default()
        };
        let provider = provider();
        for (id, v) in ssls {
            // E.g. a reference to an environment variable that is not set.
            if let Some(why) = crate::store::unservable_reason(v) {
                tracing::warn!(ssl_id = %id, error = %why, "ssl skipped");
                out.rejected.push((id.to_string(), why.to_string()));
                continue;
            }
            let ssl = match Ssl::from_value(v) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(ssl_id = %id, error = %e, "ssl skipped");
                    out.rejected.push((id.to_string(), e.to_string()));
                    continue;
                }
            };
            if ssl.ssl_type == SslType::Client {
                let Some((c, k)) = ssl.pairs.first() else {
                    continue;
                };
                if let Some(old) = prev.and_then(|p| p.clients.get(id)).filter(|o| o.0 == *v) {
                    out.clients.insert(id.to_string(), old.clone());
                    continue;
                }
                match certified_key(c, k, &provider) {
                    Ok(key) => {
                        out.clients.insert(id.to_string(), (v.clone(), key));
                    }
                    Err(e) => {
                        tracing::warn!(ssl_id = %id, error = %e, "client ssl skipped");
                        out.rejected.push((id.to_string(), e.to_string()));
                    }
                }
                continue;
            }
            if !ssl.enabled {
                continue;
            }
            let compiled = match prev
                .and_then(|p| p.by_id.get(id))
                .filter(|o| o.source == *v)
            {
                Some(old) => old.clone(),
                None => match server_config(&ssl, policy) {
                    Ok(config) => Arc::new(ServerSsl {
                        source: v.clone(),
                        config,
                        snis: ssl.snis.clone(),
                    }),
                    Err(e) => {
                        tracing::warn!(ssl_id = %id, error = %e, "ssl skipped");
                        out.rejected.push((id.to_string(), e.to_string()));
                        continue;
                    }
                },
            };
            for sni in &compiled.snis {
                let target = if sni == "*" {
                    out.any.get_or_insert_with(|| compiled.config.clone());
                    continue;
                } else if let Some(suffix) = sni.strip_prefix("*.") {
                    out.wildcard.entry(suffix.to_string())
                } else {
                    out.exact.entry(sni.clone())
                };
                // The first object (in id order) keeps a name claimed twice.
                target.or_insert_with(|| compiled.config.clone());
            }
            out.by_id.insert(id.to_string(), compiled);
        }
        out
    }

    /// The server configuration for a (lower-case) SNI.
    pub fn lookup(&self, sni: &str) -> Option<&Arc<ServerConfig>> {
        if let Some(c) = self.exact.get(sni) {
            return Some(c);
        }
        if let Some((label, suffix)) = sni.split_once('.') {
            if !label.is_empty() {
                if let Some(c) = self.wildcard.get(suffix) {
                    return Some(c);
                }
            }
        }
        self.any.as_ref()
    }

    /// The policy these configurations were built with, if any.
    pub fn policy(&self) -> Option<&Arc<Policy>> {
        self.policy.as_ref()
    }

    /// The SSL objects that could not be loaded (id, why).
    pub fn rejected(&self) -> &[(String, String)] {
        &self.rejected
    }

    /// A `type: client` SSL object's certificate and key.
    pub fn client_cert(&self, id: &str) -> Option<&Arc<CertifiedKey>> {
        self.clients.get(id).map(|(_, k)| k)
    }
}
