//! Certificate and private-key checks (apisix/ssl.lua `validate`), with APISIX's OpenSSL error
//! texts, plus the key/certificate match check APISIX lacks, and SNI extraction.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// APISIX's reason when a certificate does not parse.
pub(crate) const CERT_PARSE_ERR: &str = "failed to parse cert: PEM_read_bio_X509_AUX() failed";
/// APISIX's reason when a private key does not parse.
pub(crate) const KEY_PARSE_ERR: &str = "failed to parse key: PEM_read_bio_PrivateKey() failed";
/// Reason when a key belongs to another certificate.
pub(crate) const KEY_MISMATCH: &str = "the private key does not match the certificate";

/// Parses every certificate of a PEM chain; at least one is required and the first must be a
/// well-formed X.509 certificate.
pub(crate) fn parse_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let mut reader = pem.as_bytes();
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut reader)
        .collect::<Result<_, _>>()
        .map_err(|_| CERT_PARSE_ERR.to_string())?;
    let first = certs.first().ok_or_else(|| CERT_PARSE_ERR.to_string())?;
    x509_parser::parse_x509_certificate(first.as_ref()).map_err(|_| CERT_PARSE_ERR.to_string())?;
    Ok(certs)
}

/// Parses the first private key (PKCS#1, PKCS#8 or SEC1) of a PEM string.
pub(crate) fn parse_key(pem: &str) -> Result<PrivateKeyDer<'static>, String> {
    let mut reader = pem.as_bytes();
    match rustls_pemfile::private_key(&mut reader) {
        Ok(Some(key)) => Ok(key),
        _ => Err(KEY_PARSE_ERR.to_string()),
    }
}

/// APISIX's `validate(cert, key)`: both must parse; our addition: the key must belong to the
/// certificate. Returns the one-line reason on failure (parse errors carry their
/// `failed to parse ...` prefix; a mismatch is the bare [`KEY_MISMATCH`]).
pub(crate) fn validate_pair(cert: &str, key: &str) -> Result<(), String> {
    let certs = parse_certs(cert)?;
    let key = parse_key(key)?;
    let signing = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key)
        .map_err(|_| "failed to parse key: unsupported private key type".to_string())?;
    let certified = CertifiedKey::new(certs, Arc::clone(&signing));
    match certified.keys_match() {
        Ok(()) => Ok(()),
        // The key type cannot report its public key: nothing to compare, accept.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(()),
        Err(_) => Err(KEY_MISMATCH.to_string()),
    }
}

/// SNIs of the first certificate: DNS SANs, else the subject CN; lower-cased.
pub(crate) fn snis_from_cert(pem: &str) -> Result<Vec<String>, String> {
    let certs = parse_certs(pem).map_err(|_| "no valid PEM certificate found".to_string())?;
    let der = certs
        .first()
        .ok_or_else(|| "no valid PEM certificate found".to_string())?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| format!("invalid certificate: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                let n = dns.to_ascii_lowercase();
                if !names.contains(&n) {
                    names.push(n);
                }
            }
        }
    }
    if names.is_empty() {
        for cn in cert.subject().iter_common_name() {
            if let Ok(s) = cn.as_str() {
                names.push(s.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        return Err("the certificate names no DNS SAN and no subject CN".to_string());
    }
    Ok(names)
}
