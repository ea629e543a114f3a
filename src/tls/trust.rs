//! The certificate authorities a verified TLS peer is checked against
//! (`apisix.ssl.ssl_trusted_certificate`): upstream nodes whose upstream
//! says `tls.verify: true`, etcd over TLS with `tls.verify: true`, Vault
//! over https and `https` health probes that verify.
//!
//! As APISIX: unset or `system` means the system's CA bundle (the first of
//! the usual bundle files that holds certificates; the Mozilla roots
//! compiled in when none does); anything else is a PEM file that must exist
//! and hold at least one certificate, or the server does not start.

use std::sync::{Arc, OnceLock};

use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;

/// Where the system's trusted CA bundle usually lives.
const CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// A set of trusted CAs, cheap to clone.
#[derive(Clone)]
pub struct Trust {
    roots: Arc<RootCertStore>,
    /// The certificates the roots were read from (the configured file or
    /// the system's bundle); empty for the compiled-in Mozilla roots, which
    /// the HTTP client has built in as well.
    certs: Arc<Vec<CertificateDer<'static>>>,
    /// What the roots came from, for messages.
    source: Arc<str>,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trust")
            .field("source", &self.source)
            .field("roots", &self.roots.len())
            .finish()
    }
}

impl Default for Trust {
    fn default() -> Trust {
        Trust::system()
    }
}

impl Trust {
    /// The system's CA bundle, read once per process.
    pub fn system() -> Trust {
        static SYSTEM: OnceLock<Trust> = OnceLock::new();
        SYSTEM
            .get_or_init(|| {
                for path in CA_BUNDLES {
                    let Ok(pem) = std::fs::read(path) else {
                        continue;
                    };
                    let mut roots = RootCertStore::empty();
                    let mut reader = pem.as_slice();
                    // The certificates the verifier takes (others are skipped).
                    let certs: Vec<_> = rustls_pemfile::certs(&mut reader)
                        .flatten()
                        .filter(|c| roots.add(c.clone()).is_ok())
                        .collect();
                    if !certs.is_empty() {
                        return Trust {
                            roots: Arc::new(roots),
                            certs: Arc::new(certs),
                            source: Arc::from(format!("system ({path})")),
                        };
                    }
                }
                let roots = RootCertStore {
                    roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
                };
                Trust {
                    roots: Arc::new(roots),
                    certs: Arc::default(),
                    source: Arc::from("system (built-in Mozilla roots)"),
                }
            })
            .clone()
    }

    /// The trust store `apisix.ssl.ssl_trusted_certificate` names: unset or
    /// `system` for the system's, else a PEM file.
    pub fn from_setting(setting: Option<&str>) -> Result<Trust, String> {
        match setting.map(str::trim) {
            None | Some("") | Some("system") => Ok(Trust::system()),
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| {
                    format!("apisix.ssl.ssl_trusted_certificate: cannot read {path}: {e}")
                })?;
                Trust::from_pem(&pem, path)
                    .map_err(|e| format!("apisix.ssl.ssl_trusted_certificate: {path}: {e}"))
            }
        }
    }

    /// A trust store of the certificates in `pem` (`source` names it in messages).
    pub fn from_pem(pem: &[u8], source: &str) -> Result<Trust, String> {
        let mut reader = pem;
        let certs = rustls_pemfile::certs(&mut reader)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("not a PEM certificate file: {e}"))?;
        let mut roots = RootCertStore::empty();
        for c in &certs {
            roots
                .add(c.clone())
                .map_err(|e| format!("not a usable CA certificate: {e}"))?;
        }
        if roots.is_empty() {
            return Err("no PEM certificate in it".into());
        }
        Ok(Trust {
            roots: Arc::new(roots),
            certs: Arc::new(certs),
            source: Arc::from(source),
        })
    }

    /// The trusted roots, for a rustls verifier.
    pub fn roots(&self) -> Arc<RootCertStore> {
        Arc::clone(&self.roots)
    }

    /// What the roots came from (a path, or `system (...)`).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// An HTTP client builder (Vault, etcd) that trusts exactly these
    /// roots: the file's or the system bundle's certificates in place of
    /// the client's built-in ones (which are the compiled-in roots).
    pub fn http_client(&self) -> Result<reqwest::ClientBuilder, String> {
        let mut builder = http_builder();
        if !self.certs.is_empty() {
            builder = builder.tls_built_in_root_certs(false);
            for c in self.certs.iter() {
                let cert = reqwest::Certificate::from_der(c.as_ref())
                    .map_err(|e| format!("{}: {e}", self.source))?;
                builder = builder.add_root_certificate(cert);
            }
        }
        Ok(builder)
    }
}

/// The base of every HTTP client the server makes (Vault, etcd): rustls,
/// no proxy from the environment. [`Trust::http_client`] adds the roots.
pub fn http_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder().use_rustls_tls().no_proxy()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_and_system_mean_the_system_roots() {
        for s in [None, Some("system"), Some("")] {
            let t = Trust::from_setting(s).expect("system roots");
            assert!(t.source().starts_with("system"), "{}", t.source());
            assert!(!t.roots().is_empty());
            // A system bundle's certificates go to HTTP clients too; the
            // compiled-in roots are theirs already.
            let built_in = t.source().contains("built-in");
            let expected = if built_in { 0 } else { t.roots().len() };
            assert_eq!(t.certs.len(), expected, "{}", t.source());
            assert!(t.http_client().is_ok());
        }
    }

    #[test]
    fn a_file_must_exist_and_hold_certificates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.pem");
        let e = Trust::from_setting(missing.to_str()).expect_err("missing file");
        assert!(e.contains("cannot read"), "{e}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "nothing here\n").expect("write");
        let e = Trust::from_setting(empty.to_str()).expect_err("no certificate");
        assert!(e.contains("no PEM certificate"), "{e}");

        let ca = rcgen::generate_simple_self_signed(vec!["ca.test".into()]).expect("ca");
        let good = dir.path().join("ca.pem");
        std::fs::write(&good, ca.cert.pem()).expect("write");
        let t = Trust::from_setting(good.to_str()).expect("a CA file");
        assert_eq!(t.certs.len(), 1);
        assert_eq!(t.roots().len(), 1);
        assert_eq!(t.source(), good.to_str().expect("utf-8"));
    }
}
