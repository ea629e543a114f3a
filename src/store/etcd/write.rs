//! Writes that fail over inside one request's time budget (`timeout`).
//!
//! A write goes to the healthiest endpoint first; an endpoint that refuses
//! the connection, has no leader, or stays silent (its share of the budget
//! runs out, or its probe declares it failing meanwhile) is passed over for
//! the next one. While some endpoint was healthy when the write began, the
//! round is repeated after a short pause (a leader election) until the
//! budget runs out; when every endpoint was already failing, one round is
//! tried, so a write fails fast during an outage yet succeeds as soon as a
//! member with a quorum answers, with no reconnect wait.
//!
//! Retrying is safe: a PUT of the same value twice leaves the same object; a
//! create under a fresh id and a PATCH are transactions with a revision check,
//! and a retry that finds its own earlier attempt applied reports success
//! (see `mod.rs`).

use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use super::client::{header_rev, CallError};
use super::health::turned_failing;
use super::{unavailable, Shared};
use crate::store::StoreError;

/// First pause between two rounds over the endpoints.
const FIRST_PAUSE: Duration = Duration::from_millis(100);
/// Longest pause between two rounds.
const MAX_PAUSE: Duration = Duration::from_millis(500);

/// An answered write.
#[derive(Debug)]
pub(super) struct Written {
    /// etcd's answer.
    pub(super) v: Value,
    /// An earlier attempt was sent but not answered: it may have applied.
    pub(super) ambiguous: bool,
}

/// The share of `left` for the attempt `k` of `n` in a round.
pub(super) fn share(left: Duration, k: usize, n: usize) -> Duration {
    let rest = u32::try_from(n.saturating_sub(k)).unwrap_or(1).max(1);
    left / rest
}

impl Shared {
    /// Send a write to etcd, failing over between endpoints within `timeout`.
    pub(super) async fn write(&self, path: &str, body: &Value) -> Result<Written, StoreError> {
        let deadline = Instant::now() + self.timeout;
        let hopeless = !self.health.any_healthy();
        let mut rx = self.health.subscribe();
        let mut ambiguous = false;
        let mut last = String::from("no endpoint answered");
        let mut pause = FIRST_PAUSE;
        loop {
            let order = self.health.order();
            for (k, &host) in order.iter().enumerate() {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                let bound = share(left, k, order.len());
                let epoch = self.health.epoch(host);
                let url = &self.hosts[host].url;
                let res = tokio::select! {
                    r = self.call_within(host, path, body, bound) => r,
                    () = turned_failing(&self.health, &mut rx, host, epoch) => {
                        let why = self.health.error_of(host).unwrap_or_default();
                        Err(CallError::Silent(format!("{url} stopped answering: {why}")))
                    }
                };
                match res {
                    Ok(v) => {
                        self.health.ok(host, header_rev(&v));
                        self.health.used(host);
                        return Ok(Written { v, ambiguous });
                    }
                    Err(e) if e.is_unreachable() => {
                        ambiguous |= matches!(e, CallError::Silent(_));
                        self.health.failed(host, e.text());
                        tracing::debug!(endpoint = %url, error = e.text(), "etcd write not served; trying the next endpoint");
                        last = e.text().to_string();
                    }
                    Err(CallError::Auth(m)) => {
                        return Err(unavailable(format!("etcd refused the request: {m}")))
                    }
                    Err(e) => return Err(unavailable(format!("etcd error: {}", e.text()))),
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if hopeless || left <= pause {
                break;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_PAUSE);
        }
        Err(unavailable(format!("etcd is unreachable: {last}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_attempt_gets_its_share_of_what_is_left() {
        let s = Duration::from_secs;
        assert_eq!(share(s(3), 0, 3), s(1));
        assert_eq!(share(s(2), 1, 3), s(1));
        assert_eq!(share(s(1), 2, 3), s(1));
        assert_eq!(share(s(1), 5, 3), s(1));
    }
}
