//! Following etcd: one watch on the prefix, restarted when `watch_timeout`
//! passes. A watch whose endpoint stops answering its probes (see
//! [`super::health`]), loses its leader or breaks is dropped and opened
//! again on the next healthy endpoint from the last revision seen; a full
//! re-read (with back-off and endpoint fail-over) follows when no endpoint
//! takes the watch, etcd compacted past it, or etcd's revision went
//! backwards.
//!
//! Why probes and not HTTP/2 pings or watch progress requests: the watch
//! goes through etcd's HTTP/JSON gateway over HTTP/1.1, which has no pings,
//! and etcd's gateway (Go's HTTP/1 server) reads no further request messages
//! on a stream once it has answered, so a progress request cannot be sent on
//! it. A linearizable one-key read on the same endpoint, which etcd 3.4 and
//! 3.5 both serve, proves what the watch needs: the member is alive and in
//! touch with a leader. The watch also asks etcd to end it should the member
//! lose its leader (`hasleader` metadata, as etcd's own client does).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::cache::{apply_event, change_of, note_watched};
use super::client::{
    b64, chain, gateway_error, header_rev, is_auth_message, num, range_end, CallError,
};
use super::health::{turned_failing, Health};
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

/// Wait until some endpoint is healthy again.
async fn came_back(health: &Health, rx: &mut tokio::sync::watch::Receiver<u64>) {
    loop {
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        if health.any_healthy() {
            return;
        }
    }
}

impl Shared {
    /// Re-read until some endpoint answers; `None` once cancelled. The first
    /// round starts at once and tries every endpoint, healthy ones first;
    /// later rounds wait `resync_delay`, doubling up to a cap, with jitter,
    /// or until a probe finds an endpoint answering again.
    pub(super) async fn resync(&self, cancel: &CancellationToken, why: String) -> Option<u64> {
        let mut last = why;
        let mut round = 0u32;
        let mut rx = self.health.subscribe();
        loop {
            if round > 0 {
                let pause = backoff(self.resync_delay, round, rand::random::<f64>());
                tracing::debug!(round, ?pause, error = %last, "etcd still unreachable");
                rx.borrow_and_update();
                tokio::select! {
                    () = cancel.cancelled() => return None,
                    () = tokio::time::sleep(pause) => {}
                    () = came_back(&self.health, &mut rx) => {}
                }
            }
            for host in self.health.order() {
                let epoch = self.health.epoch(host);
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
                    () = turned_failing(&self.health, &mut rx, host, epoch) => Err(CallError::Silent(
                        self.health.error_of(host).unwrap_or_default(),
                    )),
                };
                match res {
                    Ok(rev) => {
                        self.health.ok(host, rev);
                        self.health.used(host);
                        tracing::info!(
                            endpoint = %self.hosts[host].url,
                            revision = rev,
                            "configuration reloaded from etcd"
                        );
                        return Some(rev);
                    }
                    Err(e) => {
                        tracing::debug!(endpoint = %self.hosts[host].url, error = e.text(), "etcd re-read failed");
                        last = e.text().to_string();
                        if e.is_unreachable() {
                            self.health.failed(host, e.text());
                        }
                    }
                }
            }
            round += 1;
        }
    }

    /// Apply one watch message; `Some` when the watch must end.
    pub(super) fn on_watch_message(
        &self,
        line: &[u8],
        from: &mut u64,
        created: &mut bool,
    ) -> Option<WatchEnd> {
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
            *created = true;
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

    /// Watch the prefix on endpoint `host` from `*from` until something
    /// ends it; `*from` advances past every event applied, `*created` tells
    /// whether etcd took the watch.
    pub(super) async fn watch(
        &self,
        host: usize,
        from: &mut u64,
        cancel: &CancellationToken,
        created: &mut bool,
    ) -> WatchEnd {
        let h = &self.hosts[host];
        let mut rx = self.health.subscribe();
        let epoch = self.health.epoch(host);
        let dir = self.dir_key();
        let body = json!({"create_request": {
            "key": b64(dir.as_bytes()),
            "range_end": b64(&range_end(dir.as_bytes())),
            "start_revision": *from,
        }});
        // Ask the member to end the watch should it lose its leader.
        let mut req = h
            .client
            .post(format!("{}/v3/watch", h.base))
            .header("grpc-metadata-hasleader", "true")
            .json(&body);
        if let Some(t) = self.conn().token.clone() {
            if let Ok(mut v) = reqwest::header::HeaderValue::from_str(&t) {
                v.set_sensitive(true);
                req = req.header(reqwest::header::AUTHORIZATION, v);
            }
        }
        let deadline = Instant::now() + self.watch_timeout;
        let sent = tokio::select! {
            () = cancel.cancelled() => return WatchEnd::Cancelled,
            () = turned_failing(&self.health, &mut rx, host, epoch) => return self.silent(host),
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
                () = turned_failing(&self.health, &mut rx, host, epoch) => return self.silent(host),
                chunk = resp.chunk() => match chunk {
                    Ok(Some(bytes)) => {
                        buf.extend_from_slice(&bytes);
                        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                            let line: Vec<u8> = buf.drain(..=pos).collect();
                            let line = line.trim_ascii();
                            if line.is_empty() {
                                continue;
                            }
                            if let Some(end) = self.on_watch_message(line, from, created) {
                                return end;
                            }
                            if *created && !self.health.is_healthy(host) {
                                self.health.ok(host, 0);
                            }
                        }
                    }
                    Ok(None) => return WatchEnd::Lost("etcd closed the watch stream".into()),
                    Err(e) => return WatchEnd::Lost(chain(&e)),
                },
            }
        }
    }

    /// How a watch on an endpoint its probe declared failing ends.
    fn silent(&self, host: usize) -> WatchEnd {
        let why = self.health.error_of(host).unwrap_or_default();
        WatchEnd::Lost(format!("{} stopped answering: {why}", self.hosts[host].url))
    }

    /// Follow etcd until `cancel`: watch, move the watch to another
    /// endpoint when its own fails, and re-read after any other trouble.
    pub(super) async fn follow(self: Arc<Self>, mut from: u64, cancel: CancellationToken) {
        // Watches lost in a row without etcd taking one.
        let mut misses = 0usize;
        loop {
            let host = self.health.order().first().copied().unwrap_or(0);
            let mut created = false;
            let end = self.watch(host, &mut from, &cancel, &mut created).await;
            let why = match end {
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
                    if !is_auth_message(&reason) {
                        self.health.failed(host, &reason);
                    }
                    misses = if created { 1 } else { misses + 1 };
                    if misses <= self.hosts.len() && self.health.any_healthy() {
                        let next = self.health.order().first().copied().unwrap_or(0);
                        tracing::info!(
                            from = %self.hosts[host].url,
                            to = %self.hosts[next].url,
                            revision = from.saturating_sub(1),
                            error = %reason,
                            "etcd watch moved to another endpoint"
                        );
                        continue;
                    }
                    tracing::debug!(error = %reason, "etcd watch lost; reloading");
                    reason
                }
            };
            misses = 0;
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
