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
//! Retrying is safe. Every put and delete of an object is a transaction
//! checking the key's modification revision: the one last seen (a PUT or
//! DELETE, checked again with the revision found should the key have moved
//! on), the one read (a PATCH), or none (a create under a fresh POST id).
//! An attempt that got no answer but applied later cannot undo a newer
//! write, a POST cannot create two objects, and a retry that finds its own
//! earlier attempt applied reports success.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use super::client::{b64, header_rev, num, unb64, CallError};
use super::health::turned_failing;
use super::{unavailable, Shared};
use crate::store::StoreError;

/// Most tries of a PUT or DELETE whose key keeps moving under it.
const MAX_TRIES: usize = 4;

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

/// The answer to a transaction checking one key's modification revision.
#[derive(Debug)]
pub(super) struct Txn {
    /// Whether the check held (and the operation applied).
    pub(super) succeeded: bool,
    /// etcd's answer.
    pub(super) v: Value,
    /// An earlier attempt got no answer.
    pub(super) ambiguous: bool,
}

impl Txn {
    /// The answer of the one operation.
    pub(super) fn response(&self, name: &str) -> Option<&Value> {
        self.v.get("responses")?.get(0)?.get(name)
    }

    /// The key as it is now, when the check failed (`None`: absent).
    pub(super) fn current(&self) -> Option<&Value> {
        self.response("response_range")?.get("kvs")?.get(0)
    }
}

/// What a delete did.
#[derive(Debug)]
pub(super) struct Deleted {
    /// Revision of etcd's answer.
    pub(super) rev: u64,
    /// The key-value removed, when this answer removed it.
    pub(super) prev: Option<Value>,
    /// An earlier attempt that got no answer removed it.
    pub(super) earlier: bool,
}

/// Whether the key-value `kv` holds exactly `value`.
pub(super) fn holds(kv: &Value, value: &[u8]) -> bool {
    kv.get("value")
        .and_then(Value::as_str)
        .and_then(unb64)
        .is_some_and(|v| v == value)
}

impl Shared {
    /// Send a write to etcd, failing over between endpoints within `timeout`.
    pub(super) async fn write(&self, path: &str, body: &Value) -> Result<Written, StoreError> {
        self.write_until(path, body, Instant::now() + self.timeout)
            .await
    }

    /// `op` on `key` (base64) if its modification revision is `mod_rev`
    /// (0: the key is absent); otherwise read the key.
    async fn txn(
        &self,
        key: &str,
        mod_rev: u64,
        op: Value,
        deadline: Instant,
    ) -> Result<Txn, StoreError> {
        let body = json!({
            "compare": [{"key": key, "target": "MOD", "result": "EQUAL", "mod_revision": mod_rev}],
            "success": [op],
            "failure": [{"request_range": {"key": key}}],
        });
        let w = self.write_until("/v3/kv/txn", &body, deadline).await?;
        Ok(Txn {
            succeeded: w
                .v
                .get("succeeded")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            v: w.v,
            ambiguous: w.ambiguous,
        })
    }

    /// Put `text` at `key` (base64) if its modification revision is `want`
    /// (0: absent). With `strict`, a failed check is a conflict; otherwise
    /// the put is checked again against the revision found. Returns the
    /// revision written and the previous `create_revision` (`None`: created).
    pub(super) async fn put_checked(
        &self,
        key: &str,
        text: &str,
        mut want: u64,
        strict: bool,
    ) -> Result<(u64, Option<u64>), StoreError> {
        let deadline = Instant::now() + self.timeout;
        let mut ambiguous = false;
        for _ in 0..MAX_TRIES {
            let op = json!({"request_put": {"key": key, "value": b64(text.as_bytes()), "prev_kv": true}});
            let t = self.txn(key, want, op, deadline).await?;
            ambiguous |= t.ambiguous;
            if t.succeeded {
                let prev = t.response("response_put").and_then(|r| r.get("prev_kv"));
                return Ok((
                    header_rev(&t.v),
                    prev.map(|p| num(p.get("create_revision"))),
                ));
            }
            let current = t.current();
            if let Some(kv) = current.filter(|kv| ambiguous && holds(kv, text.as_bytes())) {
                // An attempt that got no answer did apply: this is that write.
                return Ok((
                    num(kv.get("mod_revision")),
                    (want != 0).then(|| num(kv.get("create_revision"))),
                ));
            }
            if strict {
                return Err(StoreError::Conflict);
            }
            want = current.map_or(0, |kv| num(kv.get("mod_revision")));
        }
        Err(unavailable(
            "etcd: the key kept changing under the write; try again",
        ))
    }

    /// Delete `key` (base64), last seen at modification revision `want`
    /// (0: absent), checked again against the revision found.
    pub(super) async fn delete_checked(
        &self,
        key: &str,
        mut want: u64,
    ) -> Result<Deleted, StoreError> {
        let deadline = Instant::now() + self.timeout;
        let mut ambiguous = false;
        for _ in 0..MAX_TRIES {
            let op = json!({"request_delete_range": {"key": key, "prev_kv": true}});
            let t = self.txn(key, want, op, deadline).await?;
            ambiguous |= t.ambiguous;
            let rev = header_rev(&t.v);
            if t.succeeded {
                let prev = t
                    .response("response_delete_range")
                    .and_then(|r| r.get("prev_kvs"))
                    .and_then(|p| p.get(0))
                    .cloned();
                return Ok(Deleted {
                    rev,
                    prev,
                    earlier: false,
                });
            }
            match t.current() {
                None => {
                    return Ok(Deleted {
                        rev,
                        prev: None,
                        earlier: ambiguous,
                    })
                }
                Some(kv) => want = num(kv.get("mod_revision")),
            }
        }
        Err(unavailable(
            "etcd: the key kept changing under the delete; try again",
        ))
    }

    /// Send a write to etcd, failing over between endpoints until `deadline`.
    pub(super) async fn write_until(
        &self,
        path: &str,
        body: &Value,
        deadline: Instant,
    ) -> Result<Written, StoreError> {
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
