//! Everything TLS, in one place: the crypto provider, certificates compiled
//! from SSL objects, the server side of the data path (termination, SNI
//! peeking) and the client side (upstream nodes, syslog servers, health
//! probes).
//!
//! - [`certs`]: SSL objects compiled to rustls configurations, picked by SNI.
//! - [`accept`]: [`terminate`] and [`peek_sni`] on stream listeners.
//! - [`client`]: client configurations and [`connect_upstream`].
//! - [`clienthello`]: the ClientHello parser behind [`peek_sni`].
//! - [`trust`]: the CAs verified peers are checked against ([`Trust`]).
//! - [`session`]: versions, suites, tickets and session cache of
//!   terminating listeners (`apisix.ssl`), and the handshake counters.
//! - [`suites`]: `ssl_ciphers` (OpenSSL names) mapped to rustls suites.
//!
//! This module sits below the data plane and the snapshot: it imports
//! neither `proxy` nor `snapshot`, so both (and `health`, `plugins`) can
//! use it without an import circle.

pub mod accept;
pub mod certs;
pub mod client;
pub mod clienthello;
pub mod session;
pub mod suites;
pub mod trust;

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

pub use accept::{peek_sni, terminate, CertSource, HANDSHAKE_TIMEOUT};
pub use certs::{certified_key, server_config, TlsCerts};
pub use client::{client_config, connect_upstream, handshake};
pub use trust::Trust;

/// SNI sent to TLS upstreams when the client connection had none (APISIX).
pub const DEFAULT_UPSTREAM_SNI: &str = "apisix_backend";

/// The crypto provider every TLS configuration uses (aws-lc-rs), installed
/// as the process default on first use.
pub fn provider() -> Arc<CryptoProvider> {
    if let Some(p) = CryptoProvider::get_default() {
        return p.clone();
    }
    install_provider();
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
}

/// Install the process's crypto provider (aws-lc-rs) as rustls's default,
/// which the HTTP clients (etcd, CLI) use too; later calls do nothing.
pub fn install_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Lower-case and drop one trailing dot, as APISIX normalises SNIs.
pub fn normalize_sni(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sni_is_lower_case_without_the_trailing_dot() {
        assert_eq!(normalize_sni("Api.Test.COM."), "api.test.com");
        assert_eq!(normalize_sni("a.test"), "a.test");
        assert_eq!(normalize_sni("a.test.."), "a.test.");
    }
}
