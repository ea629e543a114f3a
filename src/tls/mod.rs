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
//!
//! This module sits below the data plane and the snapshot: it imports
//! neither `proxy` nor `snapshot`, so both (and `health`, `plugins`) can
//! use it without an import circle.

pub mod accept;
pub mod certs;
pub mod client;
pub mod clienthello;
pub mod trust;

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

pub use accept::{peek_sni, terminate, CertSource, HANDSHAKE_TIMEOUT};
pub use certs::{certified_key, server_config, TlsCerts};
pub use client::{client_config, connect_upstream, handshake, system_roots_config};
pub use trust::Trust;

/// SNI sent to TLS upstreams when the client connection had none (APISIX).
pub const DEFAULT_UPSTREAM_SNI: &str = "apisix_backend";

/// The crypto provider every TLS configuration uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
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
