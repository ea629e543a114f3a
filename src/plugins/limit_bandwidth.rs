//! `limit-bandwidth`: token buckets that pace a TCP session's bytes, one
//! per direction (`download_rate` towards the client, `upload_rate` towards
//! the upstream), in bytes per second; 0 or absent is unlimited.
//!
//! A bucket holds `burst` bytes (default: one second of the rate) and is
//! full when it is created. Without `key` each session has its own buckets;
//! with `key` (a variable such as `remote_addr`) every session of the route
//! with the same value shares one pair, kept in [`Registry`] for as long as
//! a session uses it.
//!
//! The rates live in a per-route [`Rates`] cell that every snapshot build
//! of the route updates in place, so a changed rate applies to sessions
//! already running. The relay asks [`Pacer::grant`] how many bytes it may
//! move before each read (a user-space copy or a splice alike) and reports
//! what it moved with [`Pacer::spent`]: bursts stay bounded by the bucket.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use super::Vars;

/// Longest single wait before the rate is looked at again.
const MAX_WAIT: Duration = Duration::from_millis(100);

/// A route's current limits, shared by its sessions and updated by every
/// snapshot build.
#[derive(Debug)]
pub struct Rates {
    download: AtomicU64,
    upload: AtomicU64,
    burst: AtomicU64,
    base: std::time::Instant,
    /// Milliseconds since `base` of the last wait for tokens (0: never).
    throttled_ms: AtomicU64,
}

impl Default for Rates {
    fn default() -> Self {
        Rates {
            download: AtomicU64::new(0),
            upload: AtomicU64::new(0),
            burst: AtomicU64::new(0),
            base: std::time::Instant::now(),
            throttled_ms: AtomicU64::new(0),
        }
    }
}

impl Rates {
    fn set(&self, download: u64, upload: u64, burst: u64) {
        self.download.store(download, Ordering::Relaxed);
        self.upload.store(upload, Ordering::Relaxed);
        self.burst.store(burst, Ordering::Relaxed);
    }

    fn rate(&self, dir: Dir) -> u64 {
        match dir {
            Dir::Down => self.download.load(Ordering::Relaxed),
            Dir::Up => self.upload.load(Ordering::Relaxed),
        }
    }

    /// The bucket size for `rate`: `burst`, else one second of the rate.
    fn size(&self, rate: u64) -> f64 {
        match self.burst.load(Ordering::Relaxed) {
            0 => rate as f64,
            b => b as f64,
        }
    }

    fn mark_throttled(&self) {
        let ms = self.base.elapsed().as_millis() as u64;
        self.throttled_ms.store(ms.max(1), Ordering::Relaxed);
    }

    /// The download and upload rates in bytes/s (0: unlimited).
    pub fn limits(&self) -> (u64, u64) {
        (
            self.download.load(Ordering::Relaxed),
            self.upload.load(Ordering::Relaxed),
        )
    }

    /// True when a session of the route waited for tokens within the last
    /// second.
    pub fn throttled(&self) -> bool {
        let at = self.throttled_ms.load(Ordering::Relaxed);
        at > 0 && (self.base.elapsed().as_millis() as u64).saturating_sub(at) < 1000
    }

    /// The route's entry in `/v1/stream/stats`.
    pub fn report(&self) -> Value {
        json!({
            "download_rate": self.download.load(Ordering::Relaxed),
            "upload_rate": self.upload.load(Ordering::Relaxed),
            "throttled": self.throttled(),
        })
    }
}

/// A direction of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Upstream to client.
    Down,
    /// Client to upstream.
    Up,
}

/// One token bucket.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
    full: bool,
}

impl Bucket {
    /// Add what `rate` earned since the last look (a bucket never used is
    /// filled to `size`), never beyond `size`.
    fn refill(&mut self, rate: u64, size: f64) {
        let now = Instant::now();
        if self.full {
            self.tokens = size;
            self.full = false;
        } else {
            let gained = now.duration_since(self.last).as_secs_f64() * rate as f64;
            self.tokens = (self.tokens + gained).min(size);
        }
        self.last = now;
    }
}

/// The two buckets of a session, or of every session sharing a key.
#[derive(Debug)]
pub struct Buckets {
    down: Mutex<Bucket>,
    up: Mutex<Bucket>,
}

impl Default for Buckets {
    fn default() -> Self {
        let fresh = || {
            Mutex::new(Bucket {
                tokens: 0.0,
                last: Instant::now(),
                full: true,
            })
        };
        Buckets {
            down: fresh(),
            up: fresh(),
        }
    }
}

/// Shared buckets and per-route rates of the whole process (outlives
/// snapshots).
#[derive(Debug, Default)]
pub struct Registry {
    rates: Mutex<HashMap<String, Weak<Rates>>>,
    shared: Mutex<HashMap<String, Weak<Buckets>>>,
}

impl Registry {
    /// The rates cell of `route`, created on first use.
    fn rates(&self, route: &str) -> Arc<Rates> {
        let Ok(mut m) = self.rates.lock() else {
            return Arc::default();
        };
        if let Some(r) = m.get(route).and_then(Weak::upgrade) {
            return r;
        }
        m.retain(|_, w| w.strong_count() > 0);
        let r = Arc::<Rates>::default();
        m.insert(route.to_string(), Arc::downgrade(&r));
        r
    }

    /// The buckets every session with `key` shares, created on first use.
    fn shared(&self, key: String) -> Arc<Buckets> {
        let Ok(mut m) = self.shared.lock() else {
            return Arc::default();
        };
        if let Some(b) = m.get(&key).and_then(Weak::upgrade) {
            return b;
        }
        m.retain(|_, w| w.strong_count() > 0);
        let b = Arc::<Buckets>::default();
        m.insert(key, Arc::downgrade(&b));
        b
    }

    /// Keys with buckets in use now.
    pub fn shared_in_use(&self) -> usize {
        self.shared
            .lock()
            .map_or(0, |m| m.values().filter(|w| w.strong_count() > 0).count())
    }
}

/// A compiled limit-bandwidth conf.
#[derive(Debug)]
pub struct LimitBandwidth {
    rates: Arc<Rates>,
    key: Option<String>,
    prefix: String,
    registry: Arc<Registry>,
}

fn num(conf: &Value, field: &str) -> u64 {
    conf.get(field).and_then(Value::as_u64).unwrap_or(0)
}

impl LimitBandwidth {
    /// Compile a validated conf for route `route` (its rates cell is
    /// updated in place, so running sessions follow).
    pub fn build(
        conf: &Value,
        route: &str,
        registry: Arc<Registry>,
    ) -> Result<LimitBandwidth, String> {
        let rates = registry.rates(route);
        rates.set(
            num(conf, "download_rate"),
            num(conf, "upload_rate"),
            num(conf, "burst"),
        );
        Ok(LimitBandwidth {
            rates,
            key: conf
                .get("key")
                .and_then(Value::as_str)
                .filter(|k| !k.is_empty())
                .map(|k| k.trim_start_matches('$').to_string()),
            prefix: route.to_string(),
            registry,
        })
    }

    /// The route's rates cell.
    pub fn rates(&self) -> &Arc<Rates> {
        &self.rates
    }

    /// The pacing of a new session.
    pub fn pacing(&self, vars: &Vars<'_>) -> Pacing {
        let buckets = match &self.key {
            None => Arc::default(),
            Some(k) => {
                let value = vars.get(k).unwrap_or_default();
                self.registry.shared(format!("{}\0{value}", self.prefix))
            }
        };
        Pacing {
            rates: Arc::clone(&self.rates),
            buckets,
        }
    }
}

/// A session's pacing: the route's rates and the session's (or key's)
/// buckets.
#[derive(Debug, Clone)]
pub struct Pacing {
    rates: Arc<Rates>,
    buckets: Arc<Buckets>,
}

impl Pacing {
    /// The pacer of one direction.
    pub fn pacer(&self, dir: Dir) -> Pacer<'_> {
        Pacer { p: self, dir }
    }
}

/// One direction of a [`Pacing`].
#[derive(Debug, Clone, Copy)]
pub struct Pacer<'a> {
    p: &'a Pacing,
    dir: Dir,
}

impl Pacer<'_> {
    fn bucket(&self) -> &Mutex<Bucket> {
        match self.dir {
            Dir::Down => &self.p.buckets.down,
            Dir::Up => &self.p.buckets.up,
        }
    }

    /// How many bytes (1..=`want`) may move now, waiting for the bucket to
    /// refill when it is empty; `want` when the rate is unlimited.
    pub async fn grant(&self, want: usize) -> usize {
        loop {
            let rate = self.p.rates.rate(self.dir);
            if rate == 0 {
                return want;
            }
            let wait = {
                let Ok(mut b) = self.bucket().lock() else {
                    return want;
                };
                let size = self.p.rates.size(rate);
                b.refill(rate, size);
                // Wait for a useful amount, not a byte at a time: a
                // twentieth of a second of the rate, at most the bucket.
                let need = (rate as f64 / 20.0)
                    .clamp(1.0, size.max(1.0))
                    .min(want as f64);
                if b.tokens >= need {
                    return (b.tokens as usize).clamp(1, want);
                }
                Duration::from_secs_f64((need - b.tokens) / rate as f64).min(MAX_WAIT)
            };
            self.p.rates.mark_throttled();
            tokio::time::sleep(wait).await;
        }
    }

    /// Whether one datagram of `n` bytes may pass now, taking its bytes
    /// from the bucket when it may: UDP cannot wait, so a datagram over
    /// the budget is dropped (and the route is marked throttled).
    pub fn admit(&self, n: usize) -> bool {
        let rate = self.p.rates.rate(self.dir);
        if rate == 0 {
            return true;
        }
        let Ok(mut b) = self.bucket().lock() else {
            return true;
        };
        b.refill(rate, self.p.rates.size(rate));
        if b.tokens >= n as f64 {
            b.tokens -= n as f64;
            true
        } else {
            drop(b);
            self.p.rates.mark_throttled();
            false
        }
    }

    /// Take `n` moved bytes from the bucket.
    pub fn spent(&self, n: usize) {
        if self.p.rates.rate(self.dir) == 0 {
            return;
        }
        if let Ok(mut b) = self.bucket().lock() {
            b.tokens -= n as f64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_over_the_budget_are_not_admitted() {
        let p = pacing(1000, 1500);
        let down = p.pacer(Dir::Down);
        assert!(down.admit(1000), "the bucket starts full");
        assert!(down.admit(500));
        assert!(!down.admit(500), "the burst is spent");
        assert!(p.rates.throttled());
        let up = p.pacer(Dir::Up);
        assert!(up.admit(1 << 20), "no upload rate: unlimited");
    }

    fn pacing(down: u64, burst: u64) -> Pacing {
        let rates = Arc::<Rates>::default();
        rates.set(down, 0, burst);
        Pacing {
            rates,
            buckets: Arc::default(),
        }
    }

    #[tokio::test]
    async fn a_full_bucket_then_the_rate() {
        let p = pacing(1_000_000, 100_000);
        let down = p.pacer(Dir::Down);
        let start = Instant::now();
        let mut moved = 0;
        while moved < 300_000 {
            let n = down.grant(1 << 20).await;
            assert!(n <= 100_000, "a grant never exceeds the bucket: {n}");
            down.spent(n);
            moved += n;
        }
        let took = start.elapsed().as_secs_f64();
        assert!((0.15..=0.8).contains(&took), "{took}");
        assert!(p.rates.throttled());
        let up = p.pacer(Dir::Up);
        assert_eq!(up.grant(4096).await, 4096, "no upload limit");
    }

    #[tokio::test]
    async fn a_rate_change_applies_at_once() {
        let p = pacing(100, 0);
        let down = p.pacer(Dir::Down);
        let n = down.grant(1000).await;
        assert_eq!(n, 100, "a full bucket of one second");
        down.spent(n);
        p.rates.set(0, 0, 0);
        let start = Instant::now();
        assert_eq!(down.grant(1 << 20).await, 1 << 20);
        assert!(start.elapsed() < Duration::from_millis(50));
    }

    #[test]
    fn shared_buckets_are_dropped_when_unused() {
        let reg = Registry::default();
        let a = reg.shared("k".into());
        let b = reg.shared("k".into());
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(reg.shared_in_use(), 1);
        drop((a, b));
        assert_eq!(reg.shared_in_use(), 0);
        let _c = reg.shared("other".into());
        assert_eq!(reg.shared.lock().map(|m| m.len()).unwrap_or(0), 1);
    }
}
