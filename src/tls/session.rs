//! The server-side TLS policy of terminating listeners, from `apisix.ssl`:
//! TLS versions (`ssl_protocols`), TLS 1.2 cipher suites (`ssl_ciphers`),
//! session tickets (`ssl_session_tickets`) and the server-side session
//! cache (`ssl_session_cache_size`, `ssl_session_timeout`); and the counters
//! of full and resumed handshakes.
//!
//! The server builds its policy once at start-up and every SSL object is
//! compiled with it. Ticket keys belong to the policy, so to the process:
//! one rotating ticketer (a new key every 6 hours, tickets accepted for at
//! most 12) serves every SSL object and every worker thread.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::server::{NoServerSessionStorage, ProducesTickets, StoresServerSessions};
use rustls::{HandshakeKind, SupportedCipherSuite, SupportedProtocolVersion};

use super::suites;
use crate::config::SslConf;

/// TLS versions, suites and session settings of terminating listeners.
#[derive(Debug)]
pub struct Policy {
    /// Versions allowed when the SSL object names none.
    pub versions: Vec<&'static SupportedProtocolVersion>,
    /// The provider's suites allowed by `ssl_ciphers`.
    pub suites: Vec<SupportedCipherSuite>,
    /// The process's ticketer; `None` with `ssl_session_tickets: false`.
    pub ticketer: Option<Arc<dyn ProducesTickets>>,
    /// Sessions kept per SSL object (0: no server-side cache).
    pub cache_size: usize,
    /// How long a cached session stays usable.
    pub timeout: Duration,
    full: AtomicU64,
    resumed: AtomicU64,
}

/// Versions from `TLSv1.2`/`TLSv1.3` names; all of them for an empty list.
pub fn versions(names: &[String]) -> Vec<&'static SupportedProtocolVersion> {
    let mut v = Vec::new();
    if names.is_empty() || names.iter().any(|p| p == "TLSv1.3") {
        v.push(&rustls::version::TLS13);
    }
    if names.is_empty() || names.iter().any(|p| p == "TLSv1.2") {
        v.push(&rustls::version::TLS12);
    }
    v
}

impl Policy {
    /// The policy `conf` describes, with the process's crypto provider.
    pub fn new(conf: &SslConf) -> Result<Policy, String> {
        let names: Vec<String> = conf
            .ssl_protocols
            .split_whitespace()
            .map(str::to_string)
            .collect();
        let versions = versions(&names);
        if versions.is_empty() {
            return Err(format!(
                "apisix.ssl.ssl_protocols: {:?} allows neither TLSv1.2 nor TLSv1.3",
                conf.ssl_protocols
            ));
        }
        let suites = suites::select(&super::provider().cipher_suites, &conf.ssl_ciphers)
            .map_err(|e| format!("apisix.ssl.ssl_ciphers: {e}"))?;
        let ticketer = if conf.ssl_session_tickets {
            Some(
                rustls::crypto::aws_lc_rs::Ticketer::new()
                    .map_err(|e| format!("cannot make TLS session ticket keys: {e}"))?,
            )
        } else {
            None
        };
        Ok(Policy {
            versions,
            suites,
            ticketer,
            cache_size: conf.ssl_session_cache_size,
            timeout: Duration::from_secs(conf.ssl_session_timeout),
            full: AtomicU64::new(0),
            resumed: AtomicU64::new(0),
        })
    }

    /// The policy of the default `apisix.ssl` (without tickets if no ticket
    /// key can be made).
    pub fn fallback() -> Policy {
        Policy::new(&SslConf::default()).unwrap_or_else(|_| Policy {
            versions: versions(&[]),
            suites: super::provider().cipher_suites.clone(),
            ticketer: None,
            cache_size: 0,
            timeout: Duration::from_secs(300),
            full: AtomicU64::new(0),
            resumed: AtomicU64::new(0),
        })
    }

    /// Count a finished server handshake as full or resumed.
    pub fn count(&self, kind: Option<HandshakeKind>) {
        match kind {
            Some(HandshakeKind::Resumed) => self.resumed.fetch_add(1, Ordering::Relaxed),
            _ => self.full.fetch_add(1, Ordering::Relaxed),
        };
    }

    /// Server handshakes since start: (full, resumed).
    pub fn handshakes(&self) -> (u64, u64) {
        (
            self.full.load(Ordering::Relaxed),
            self.resumed.load(Ordering::Relaxed),
        )
    }

    /// A session store for one SSL object's configuration.
    pub fn session_store(&self) -> Arc<dyn StoresServerSessions> {
        if self.cache_size == 0 {
            Arc::new(NoServerSessionStorage {})
        } else {
            Arc::new(SessionCache::new(self.cache_size, self.timeout))
        }
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy::fallback()
    }
}

/// A bounded server-side session cache whose entries expire.
#[derive(Debug)]
struct SessionCache {
    max: usize,
    ttl: Duration,
    inner: Mutex<CacheInner>,
}

#[derive(Debug, Default)]
struct CacheInner {
    map: HashMap<Vec<u8>, (Vec<u8>, Instant)>,
    order: VecDeque<Vec<u8>>,
}

impl SessionCache {
    fn new(max: usize, ttl: Duration) -> SessionCache {
        SessionCache {
            max,
            ttl,
            inner: Mutex::new(CacheInner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl StoresServerSessions for SessionCache {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        let mut c = self.lock();
        if c.order.len() > 2 * self.max {
            let CacheInner { map, order } = &mut *c;
            order.retain(|k| map.contains_key(k));
        }
        while c.map.len() >= self.max {
            match c.order.pop_front() {
                Some(old) => {
                    c.map.remove(&old);
                }
                None => break,
            }
        }
        if c.map.insert(key.clone(), (value, Instant::now())).is_none() {
            c.order.push_back(key);
        }
        true
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        let c = self.lock();
        c.map
            .get(key)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(v, _)| v.clone())
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        let mut c = self.lock();
        c.map
            .remove(key)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(v, _)| v)
    }

    fn can_cache(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_keeps_the_newest_sessions_and_forgets_expired_ones() {
        let c = SessionCache::new(2, Duration::from_secs(60));
        for k in [b"a", b"b", b"c"] {
            assert!(c.put(k.to_vec(), k.to_vec()));
        }
        assert_eq!(c.get(b"a"), None);
        assert_eq!(c.get(b"b"), Some(b"b".to_vec()));
        assert_eq!(c.take(b"c"), Some(b"c".to_vec()));
        assert_eq!(c.take(b"c"), None);
        let short = SessionCache::new(2, Duration::ZERO);
        short.put(b"a".to_vec(), b"a".to_vec());
        assert_eq!(short.get(b"a"), None);
    }

    #[test]
    fn protocols_and_ciphers_come_from_the_config() {
        let conf = SslConf {
            ssl_protocols: "TLSv1.3".into(),
            ..SslConf::default()
        };
        let p = Policy::new(&conf).unwrap();
        assert_eq!(p.versions.len(), 1);
        assert!(p.ticketer.is_some());
        let bad = SslConf {
            ssl_protocols: "TLSv1.1".into(),
            ..SslConf::default()
        };
        assert!(Policy::new(&bad).unwrap_err().contains("ssl_protocols"));
        let bad = SslConf {
            ssl_ciphers: "ECDHE-RSA-AES128-GMC-SHA256".into(),
            ..SslConf::default()
        };
        assert!(Policy::new(&bad).unwrap_err().contains("GMC"));
    }
}
