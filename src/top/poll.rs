//! Reading the Control API in the background.
//!
//! A task polls `/v1/stream/stats` and `/v1/stream/connections` every
//! interval and publishes each result on a `watch` channel, which keeps only
//! the newest value: a slow screen never queues stale samples, and a slow or
//! dead server never blocks drawing or key handling. A failed poll is
//! published too (the dashboard shows "disconnected, retrying") and polling
//! simply goes on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::{watch, Notify};
use tokio::time::MissedTickBehavior;

use super::app::{Connection, ConnectionList, Sample, Stats};

/// A client of one server's Control API.
#[derive(Debug, Clone)]
pub struct ControlClient {
    http: reqwest::Client,
    base: String,
}

impl ControlClient {
    /// A client for `base` (e.g. `http://127.0.0.1:9090`); each request
    /// gives up after `timeout`.
    pub fn new(base: &str, timeout: Duration) -> anyhow::Result<ControlClient> {
        let http = reqwest::Client::builder()
            .connect_timeout(timeout)
            .timeout(timeout)
            .user_agent(concat!("apisix-stream-top/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(ControlClient {
            http,
            base: base.trim_end_matches('/').to_string(),
        })
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, String> {
        let res = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .map_err(|e| root_cause(&e))?;
        let status = res.status();
        let body = res.bytes().await.map_err(|e| root_cause(&e))?;
        if !status.is_success() {
            return Err(http_error(status, &body));
        }
        serde_json::from_slice(&body).map_err(|e| format!("unexpected answer from {path}: {e}"))
    }

    /// `GET /v1/stream/stats`.
    pub async fn stats(&self) -> Result<Stats, String> {
        self.get("/v1/stream/stats").await
    }

    /// `GET /v1/stream/connections`.
    pub async fn connections(&self) -> Result<Vec<Connection>, String> {
        self.get::<ConnectionList>("/v1/stream/connections")
            .await
            .map(|l| l.connections)
    }

    /// `DELETE /v1/stream/connections/{id}`.
    pub async fn close(&self, id: u64) -> Result<(), String> {
        let res = self
            .http
            .delete(format!("{}/v1/stream/connections/{id}", self.base))
            .send()
            .await
            .map_err(|e| root_cause(&e))?;
        let status = res.status();
        if status.is_success() {
            return Ok(());
        }
        let body = res.bytes().await.unwrap_or_default();
        Err(http_error(status, &body))
    }

    /// Both reads, concurrently, stamped with the time they finished.
    pub async fn sample(&self) -> Sample {
        let (stats, connections) = tokio::join!(self.stats(), self.connections());
        Sample {
            at: Instant::now(),
            stats,
            connections,
        }
    }
}

/// The message of an error answer: the server's `error_msg` when it gave one.
fn http_error(status: StatusCode, body: &[u8]) -> String {
    let msg = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("error_msg")?.as_str().map(str::to_string));
    match msg {
        Some(m) => format!("{status}: {m}"),
        None => status.to_string(),
    }
}

/// The innermost cause of a request error ("Connection refused"), which
/// says more than the URL-laden outer message.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    if e.to_string().contains("timed out") || cur.to_string().contains("timed out") {
        return "timed out".to_string();
    }
    let text = cur.to_string();
    // "Connection refused (os error 111)": the code adds nothing on screen.
    match text.find(" (os error ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// Start polling every `interval` (and at once whenever `poke` is
/// notified). Stops when every receiver is gone.
pub fn spawn(
    client: Arc<ControlClient>,
    interval: Duration,
    poke: Arc<Notify>,
) -> watch::Receiver<Option<Sample>> {
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = poke.notified() => {}
                () = tx.closed() => return,
            }
            let sample = client.sample().await;
            if tx.send(Some(sample)).is_err() {
                return;
            }
        }
    });
    rx
}
