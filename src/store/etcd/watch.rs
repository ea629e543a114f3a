//! Following etcd: one watch on the prefix, restarted when `watch_timeout`
//! passes, and a full re-read (with back-off and host fail-over) when the
//! watch is lost, etcd compacted past it, or etcd's revision went backwards.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::cache::{apply_event, change_of, note_watched};
use super::client::{b64, chain, gateway_error, header_rev, is_auth_message, num, range_end};
use super::Shared;

/// Longest pause between two rounds of reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Pause before reconnection round `round` (>= 1): `base`, then twice
/// `base`, plus up to a quarter of jitter (`jitter` in 0..=1).
pub(super) fn backoff(base: Duration, round: u32, jitter: f64) -> Duration {
    let base = base.max(Duration::from_millis(200));
    // Twice `resync_delay` at most (APISIX retries every resync_delay): a
    // cluster that is back is noticed, and writes accepted, within seconds.
    let cap = base.max((base * 2).min(MAX_BACKOFF));
    let d = base
        .saturating_mul(1u32 << round.saturating_sub(1).min(16))
        .min(cap);
    d + d.mul_f64(jitter.clamp(0.0, 1.0) / 4.0)
}

/// How one watch ended.
#[derive(Debug)]
pub(super) enum WatchEnd {
    /// The store is shutting down.
    Cancelled,
    /// `watch_timeout` passed: watch again from the same revision.
    Timeout,
    /// Events needed were compacted away: re-read everything.
    Compacted(u64),
    /// etcd's revision is below ours: it was replaced or restored.
    Backwards { expected: u64, current: u64 },
    /// The stream or connection was lost, or etcd cancelled the watch.
    Lost(String),
}

impl Shared {
    /// Re-read until some host answers; `None` once cancelled. The first
    /// round starts at once and tries every host in order; later rounds
    /// back off `resync_delay`, doubling up to a cap, with jitter.
    pub(super) async fn resync(&self, cancel: &CancellationToken, why: String) -> Option<u64> {
        let mut last = why;
        let mut round = 0u32;
        loop {
            if round > 0 {
                let pause = backoff(self.resync_delay, round, rand::random::<f64>());
                tracing::debug!(round, ?pause, error = %last, "etcd still unreachable");
                tokio::select! {
                    () = cancel.cancelled() => return None,
                    () = tokio::time::sleep(pause) => {}
                }
            }
            for _ in 0..self.hosts.len() {
                let host = self.conn().host;
                let attempt = async {
                    if self.creds.is_some() {
                        // A restarted etcd forgets simple tokens.
                        self.authenticate(host).await?;
                    }
                    self.reload(host).await
                };
                let res = tokio::select! {
                    () = cancel.cancelled() => return None,
                    r = attempt => r,
                };
                match res {
                    Ok(rev) => {
                        self.mark_up(host, rev);
                        return Some(rev);
                    }
                    Err(e) => {
                        tracing::debug!(host = %self.hosts[host].url, error = e.text(), "etcd re-read failed");
                        last = e.text().to_string();
                        self.rotate();
                    }
                }
            }
            self.mark_down(&last);
            round += 1;
        }
    }

    /// Apply one watch message; `Some` when the watch must end.
    pub(super) fn on_watch_message(&self, line: &[u8], from: &mut u64) -> Option<WatchEnd> {
        let v: Value = match serde_json::from_slice(line) {
            Ok(v) => v,
            Err(e) => return Some(WatchEnd::Lost(format!("unreadable watch message: {e}"))),
        };
        if let Some(err) = v.get("error") {
            let e = gateway_error(err).or_else(|| gateway_error(&v));
            let msg = e.map_or_else(|| err.to_string(), |e| e.text().to_string());
            return Some(WatchEnd::Lost(format!("watch failed: {msg}")));
        }
        let r = v.get("result")?;
        let flag = |name: &str| r.get(name).and_then(Value::as_bool).unwrap_or(false);
        if flag("canceled") {
            let compacted = num(r.get("compact_revision"));
            if compacted > 0 {
                return Some(WatchEnd::Compacted(compacted));
            }
            let reason = r
                .get("cancel_reason")
                .and_then(Value::as_str)
                .unwrap_or("no reason given");
            if is_auth_message(reason) {
                self.conn().token = None;
            }
            return Some(WatchEnd::Lost(format!(
                "etcd cancelled the watch: {reason}"
            )));
        }
        if flag("created") {
            let current = header_rev(r);
            if current > 0 && current + 1 < *from {
                return Some(WatchEnd::Backwards {
                    expected: *from - 1,
                    current,
                });
            }
        }
        let events = r.get("events").and_then(Value::as_array)?;
        let last = self.index.update(|c| {
            let mut changed = false;
            let mut last = 0;
            for ev in events {
                let Some(kv) = ev.get("kv") else { continue };
                let delete = ev.get("type").and_then(Value::as_str) == Some("DELETE");
                let rev = num(kv.get("mod_revision"));
                last = last.max(rev);
                note_watched(c, rev);
                if let Some(change) = change_of(&self.prefix, &self.plugins, kv, delete) {
                    changed |= apply_event(c, change);
                }
            }
            if changed {
                c.commit(last);
            }
            last
        });
        *from = (*from).max(last + 1);
        None
    }

    /// Watch the prefix from `*from` until something ends it; `*from`
    /// advances past every event applied.
    pub(super) async fn watch(&self, from: &mut u64, cancel: &CancellationToken) -> WatchEnd {
        let host = self.conn().host;
        let h = &self.hosts[host];
        let dir = self.dir_key();
        let body = json!({"create_request": {
            "key": b64(dir.as_bytes()),
            "range_end": b64(&range_end(dir.as_bytes())),
            "start_revision": *from,
        }});
        let mut req = h.client.post(format!("{}/v3/watch", h.base)).json(&body);
        if let Some(t) = self.conn().token.clone() {
            if let Ok(mut v) = reqwest::header::HeaderValue::from_str(&t) {
                v.set_sensitive(true);
                req = req.header(reqwest::header::AUTHORIZATION, v);
            }
        }
        let deadline = Instant::now() + self.watch_timeout;
        let sent = tokio::select! {
            () = cancel.cancelled() => return WatchEnd::Cancelled,
            r = tokio::time::timeout(self.timeout, req.send()) => r,
        };
        let mut resp = match sent {
            Err(_) => return WatchEnd::Lost(format!("no answer from {} to a watch", h.url)),
            Ok(Err(e)) => return WatchEnd::Lost(chain(&e)),
            Ok(Ok(r)) => r,
        };
        if !resp.status().is_success() {
            let status = resp.status();
            let text = tokio::time::timeout(self.timeout, resp.text())
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            let msg = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| gateway_error(&v))
                .map_or_else(
                    || format!("etcd answered {status}"),
                    |e| e.text().to_string(),
                );
            if is_auth_message(&msg) {
                self.conn().token = None;
            }
            return WatchEnd::Lost(format!("watch refused: {msg}"));
        }
        let mut buf: Vec<u8> = Vec::new();
        loop {
            tokio::select! {
                () = cancel.cancelled() => return WatchEnd::Cancelled,
                () = tokio::time::sleep_until(deadline) => return WatchEnd::Timeout,
                () = self.trouble.notified() => {
                    if self.is_down() {
                        return WatchEnd::Lost("a request to etcd failed".into());
                    }
                }
                chunk = resp.chunk() => match chunk {
                    Ok(Some(bytes)) => {
                        buf.extend_from_slice(&bytes);
                        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                            let line: Vec<u8> = buf.drain(..=pos).collect();
                            let line = line.trim_ascii();
                            if line.is_empty() {
                                continue;
                            }
                            if let Some(end) = self.on_watch_message(line, from) {
                                return end;
                            }
                        }
                    }
                    Ok(None) => return WatchEnd::Lost("etcd closed the watch stream".into()),
                    Err(e) => return WatchEnd::Lost(chain(&e)),
                },
            }
        }
    }

    /// Follow etcd until `cancel`: watch, and re-read after any trouble.
    pub(super) async fn follow(self: Arc<Self>, mut from: u64, cancel: CancellationToken) {
        loop {
            let why = match self.watch(&mut from, &cancel).await {
                WatchEnd::Cancelled => return,
                WatchEnd::Timeout => continue,
                WatchEnd::Compacted(rev) => {
                    tracing::info!(
                        compacted = rev,
                        from,
                        "etcd compacted past the watch; reloading everything"
                    );
                    format!("etcd compacted revision {rev}")
                }
                WatchEnd::Backwards { expected, current } => {
                    tracing::warn!(
                        expected,
                        current,
                        "etcd revision went backwards (etcd replaced or restored); reloading everything"
                    );
                    format!("etcd revision went backwards from {expected} to {current}")
                }
                WatchEnd::Lost(reason) => {
                    tracing::debug!(error = %reason, "etcd watch lost; reloading");
                    reason
                }
            };
            match self.resync(&cancel, why).await {
                Some(rev) => from = rev + 1,
                None => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_twice_the_resync_delay_with_jitter() {
        let s = Duration::from_secs;
        assert_eq!(backoff(s(5), 1, 0.0), s(5));
        assert_eq!(backoff(s(5), 2, 0.0), s(10));
        assert_eq!(backoff(s(5), 10, 0.0), s(10));
        assert_eq!(backoff(s(1), 10, 0.0), s(2));
        assert_eq!(backoff(s(60), 3, 0.0), s(60));
        assert_eq!(backoff(s(4), 1, 1.0), s(5));
        assert_eq!(backoff(s(0), 1, 0.0), Duration::from_millis(200));
    }
}
