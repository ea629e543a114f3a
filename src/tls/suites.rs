//! `ssl_ciphers` as nginx reads it (an OpenSSL cipher list) mapped to the
//! provider's TLS 1.2 suites.
//!
//! Names the provider implements select that suite; OpenSSL names of
//! suites it lacks (DHE, CBC, static RSA key exchange; APISIX's default list
//! names two DHE suites) are accepted and select nothing; keywords (`HIGH`,
//! `DEFAULT`, `ALL`, `ECDHE`, ...) select every suite; `!x`, `-x`, `+x` and
//! `@STRENGTH` are accepted and change nothing. Any other name is refused.
//! TLS 1.3 suites are not chosen by this list (as in OpenSSL, where
//! `ssl_ciphers` leaves TLS 1.3 alone): all of the provider's stay on.

use rustls::{CipherSuite, SupportedCipherSuite};

/// OpenSSL names of the suites rustls implements.
const NAMES: &[(&str, CipherSuite)] = &[
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "ECDHE-RSA-AES128-GCM-SHA256",
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "ECDHE-RSA-AES256-GCM-SHA384",
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "ECDHE-RSA-CHACHA20-POLY1305",
        CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
];

/// OpenSSL keywords that select every suite.
const KEYWORDS: &[&str] = &[
    "ALL", "DEFAULT", "HIGH", "MEDIUM", "ECDHE", "EECDH", "kECDHE", "AESGCM", "AES", "AES128",
    "AES256", "CHACHA20", "ECDSA", "aECDSA", "RSA", "aRSA", "SHA256", "SHA384", "TLSv1.2",
];

/// Parts of OpenSSL suite names, to recognise a real suite rustls lacks.
const PARTS: &[&str] = &[
    "ECDHE",
    "DHE",
    "EDH",
    "RSA",
    "ECDSA",
    "PSK",
    "AES128",
    "AES256",
    "AES",
    "GCM",
    "CCM",
    "CCM8",
    "SHA",
    "SHA256",
    "SHA384",
    "CHACHA20",
    "POLY1305",
    "CAMELLIA128",
    "CAMELLIA256",
    "ARIA128",
    "ARIA256",
    "DES",
    "CBC3",
    "CBC",
    "RC4",
    "MD5",
    "SEED",
    "NULL",
    "DSS",
];

/// The TLS 1.2 suites of `all` that `list` selects, with every TLS 1.3
/// suite; an empty list selects all.
pub fn select(
    all: &[SupportedCipherSuite],
    list: &str,
) -> Result<Vec<SupportedCipherSuite>, String> {
    let mut wanted: Vec<CipherSuite> = Vec::new();
    let mut every = list.trim().is_empty();
    for name in list.split([':', ',', ' ']).filter(|n| !n.is_empty()) {
        if name.starts_with(['!', '-', '+', '@']) || name.starts_with("TLS_") {
            continue;
        }
        if let Some((_, s)) = NAMES.iter().find(|(n, _)| *n == name) {
            wanted.push(*s);
        } else if KEYWORDS.contains(&name) {
            every = true;
        } else if !name.contains('-') || !name.split('-').all(|p| PARTS.contains(&p)) {
            return Err(format!("unknown cipher {name:?}"));
        }
    }
    let out: Vec<SupportedCipherSuite> = all
        .iter()
        .filter(|s| match s {
            SupportedCipherSuite::Tls13(_) => true,
            SupportedCipherSuite::Tls12(_) => every || wanted.contains(&s.suite()),
        })
        .copied()
        .collect();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls12(list: &str) -> Vec<CipherSuite> {
        let all = rustls::crypto::aws_lc_rs::default_provider().cipher_suites;
        select(&all, list)
            .unwrap()
            .into_iter()
            .filter(|s| matches!(s, SupportedCipherSuite::Tls12(_)))
            .map(|s| s.suite())
            .collect()
    }

    #[test]
    fn openssl_names_select_suites_and_unknown_names_are_refused() {
        assert_eq!(
            tls12("ECDHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES128-GCM-SHA256"),
            vec![CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]
        );
        assert_eq!(tls12("HIGH:!aNULL:!MD5").len(), 6);
        assert_eq!(tls12("").len(), 6);
        let all = rustls::crypto::aws_lc_rs::default_provider().cipher_suites;
        assert!(select(&all, "ECDHE-RSA-AES128-GMC-SHA256").is_err());
        assert!(select(&all, "FOO").is_err());
    }
}
