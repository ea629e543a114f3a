//! The etcd back-end (`config_provider: etcd`), spoken through etcd v3's
//! HTTP/JSON gateway (`/v3/kv/*`, `/v3/watch`, `/v3/auth/authenticate`).
//!
//! Layout and behaviour follow APISIX (apisix/core/config_etcd.lua):
//! objects live at `<prefix>/stream_routes/<id>`, `<prefix>/upstreams/<id>`
//! and `<prefix>/ssls/<id>` as plain JSON text; `<prefix>/<dir>/` placeholders
//! (`init_dir`) and other directories are skipped. Start-up reads the whole
//! prefix once at revision `R`, then one watch on the prefix from `R + 1`
//! keeps an in-memory cache current; every change bumps the change feed and
//! the snapshot publisher rebuilds from [`Store::dump`], which is served from
//! that cache at one revision (never a fresh etcd read).
//!
//! Why a cache in front of etcd: the data plane and Admin API reads keep
//! working from the last known data while etcd is unreachable (reads then
//! carry a staleness note, writes fail at once with 503), and a lost watch
//! is repaired by a full re-read diffed into the cache, so no event is lost
//! across compactions, restarts or a fail-over to another host.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use base64::Engine as _;
use serde_json::{json, Value};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::index::{Index, Key, Objects, Table};
use super::{format_generated_id, Dump, Entry, Expect, PutOutcome, Store, StoreError};
use crate::config::{Etcd, Secret};
use crate::model::Kind;

/// Value of the `<prefix>/<dir>/` placeholders APISIX writes at start-up.
const INIT_DIR: &str = "init_dir";
/// Longest pause between two rounds of reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Pause between two start-up tries.
const STARTUP_PAUSE: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------
// Pure helpers: encoding, keys, decoding of etcd's JSON.

/// Base64 (standard alphabet, padded) as the gateway wants keys and values.
fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Decode a base64 field of a gateway answer.
fn unb64(text: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

/// The `range_end` that makes a range cover every key starting with `key`.
fn range_end(key: &[u8]) -> Vec<u8> {
    let mut end = key.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte was 0xff: "\0" means "to the end of the keyspace".
    vec![0]
}

/// An int64 field of a gateway answer (rendered as a string, or absent when 0).
fn num(v: Option<&Value>) -> u64 {
    match v {
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        Some(Value::Number(n)) => n.as_u64().unwrap_or(0),
        _ => 0,
    }
}

/// `header.revision` of a gateway answer.
fn header_rev(v: &Value) -> u64 {
    num(v.get("header").and_then(|h| h.get("revision")))
}

/// The (kind, id) a key names, if it is one of our objects: exactly
/// `<prefix>/<dir>/<id>` with a known dir and a non-empty id.
fn parse_key(prefix: &str, key: &str) -> Option<(Kind, String)> {
    let rest = key.strip_prefix(prefix)?.strip_prefix('/')?;
    let (dir, id) = rest.split_once('/')?;
    if id.is_empty() || id.contains('/') {
        return None;
    }
    Some((Kind::from_segment(dir)?, id.to_string()))
}

/// Check a stored value as APISIX's readers do. Plugins are checked with
/// their own names counted as enabled: a route naming a plugin this
/// instance does not enable is still accepted (the plugin is ignored).
fn check_value(kind: Kind, raw: &[u8]) -> Result<Value, String> {
    let v: Value = serde_json::from_slice(raw).map_err(|e| format!("invalid JSON: {e}"))?;
    if !v.is_object() {
        return Err("not a JSON object".into());
    }
    let plugins: Vec<String> = v
        .get("plugins")
        .and_then(Value::as_object)
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default();
    crate::model::validate(kind, &v, &plugins)?;
    Ok(v)
}

/// One change to one of our keys, decoded from a range or watch answer.
#[derive(Debug, Clone, PartialEq)]
enum Change {
    /// The key holds a (possibly invalid) value.
    Put {
        kind: Kind,
        id: String,
        /// The full key, for logs.
        key: String,
        /// The checked value, or why it was refused.
        value: Result<Arc<Value>, String>,
        create_rev: u64,
        mod_rev: u64,
    },
    /// The key was deleted at `mod_rev`.
    Delete {
        kind: Kind,
        id: String,
        mod_rev: u64,
    },
}

/// Decode one `kv` of the gateway; `None` for keys that are not our objects.
fn change_of(prefix: &str, kv: &Value, delete: bool) -> Option<Change> {
    let key = String::from_utf8(unb64(kv.get("key")?.as_str()?)?).ok()?;
    let (kind, id) = parse_key(prefix, &key)?;
    let mod_rev = num(kv.get("mod_revision"));
    if delete {
        return Some(Change::Delete { kind, id, mod_rev });
    }
    // The gateway leaves out empty values.
    let value = match kv.get("value").and_then(Value::as_str) {
        None => check_value(kind, b""),
        Some(text) => match unb64(text) {
            Some(raw) => check_value(kind, &raw),
            None => Err("value is not base64".into()),
        },
    };
    Some(Change::Put {
        kind,
        id,
        key,
        value: value.map(Arc::new),
        create_rev: num(kv.get("create_revision")),
        mod_rev,
    })
}

// ---------------------------------------------------------------------------
// The cache and how changes are applied to it.

/// What the etcd store keeps in step with its objects.
///
/// Why `pending`: the watcher task and Admin API writes both update the
/// cache, each in one step under the index's lock (never held across an
/// await). A write is applied as soon as etcd acknowledges it
/// (read-your-writes), so its watch event may arrive later, after older
/// events for the same key: remembering the write's revision until the watch
/// passes it keeps those older events (and a concurrent full re-read) from
/// undoing it.
#[derive(Debug, Default)]
struct Tracking {
    /// Highest etcd revision whose watch events have been applied.
    watched: u64,
    /// Our own writes applied before their watch event arrived: the
    /// revision of the write and the entry it left (None for a delete).
    pending: BTreeMap<Key, (u64, Option<Entry>)>,
}

/// The in-memory copy of etcd's objects, with its tracking.
type Cache = Table<Tracking>;

fn warn_invalid(key: &str, error: &str) {
    tracing::warn!(
        key,
        error,
        "ignoring invalid value in etcd; keeping the previous version"
    );
}

/// Apply one watch event (events come in revision order); true when the
/// data changed.
fn apply_event(c: &mut Cache, change: Change) -> bool {
    let (key, rev) = match &change {
        Change::Put {
            kind, id, mod_rev, ..
        }
        | Change::Delete {
            kind, id, mod_rev, ..
        } => ((*kind, id.clone()), *mod_rev),
    };
    note_watched(c, rev);
    if let Some((own, _)) = c.extra.pending.get(&key) {
        if rev < *own {
            // Our newer write is already in force.
            return false;
        }
        c.extra.pending.remove(&key);
    }
    match change {
        Change::Put {
            kind,
            id,
            key: full,
            value,
            create_rev,
            mod_rev,
        } => match value {
            Ok(value) => c.insert(Entry {
                kind,
                id,
                value,
                create_rev,
                mod_rev,
            }),
            Err(e) => {
                warn_invalid(&full, &e);
                false
            }
        },
        Change::Delete { .. } => c.remove(&key).is_some(),
    }
}

/// Record that the watch has seen revision `rev` (for keys we skip too).
fn note_watched(c: &mut Cache, rev: u64) {
    c.extra.watched = c.extra.watched.max(rev);
}

/// Apply one of our own acknowledged writes at `rev` (read-your-writes);
/// true when the data changed.
fn apply_own(c: &mut Cache, key: Key, rev: u64, entry: Option<Entry>) -> bool {
    if rev <= c.extra.watched {
        // The watch already delivered it (and maybe newer changes).
        return false;
    }
    if let Some((own, _)) = c.extra.pending.get(&key) {
        if *own >= rev {
            return false;
        }
    }
    c.extra.pending.insert(key.clone(), (rev, entry.clone()));
    match entry {
        Some(e) => c.insert(e),
        None => c.remove(&key).is_some(),
    }
}

/// Replace everything by a full read at `header_rev`: invalid values keep
/// the previous version, own writes newer than the read stay. True when
/// the data changed.
fn replace_all(c: &mut Cache, items: Vec<Change>, header_rev: u64) -> bool {
    if header_rev < c.extra.watched {
        // etcd was replaced or restored: our write revisions mean nothing there.
        c.extra.pending.clear();
    }
    let mut next = Objects::new();
    for item in items {
        let Change::Put {
            kind,
            id,
            key: full,
            value,
            create_rev,
            mod_rev,
        } = item
        else {
            continue;
        };
        let key = (kind, id.clone());
        match value {
            Ok(value) => {
                next.insert(
                    key,
                    Entry {
                        kind,
                        id,
                        value,
                        create_rev,
                        mod_rev,
                    },
                );
            }
            Err(e) => {
                warn_invalid(&full, &e);
                if let Some(old) = c.get(&key) {
                    next.insert(key, old.clone());
                }
            }
        }
    }
    c.extra.pending.retain(|_, (rev, _)| *rev > header_rev);
    for (key, (_, entry)) in &c.extra.pending {
        match entry {
            Some(e) => next.insert(key.clone(), e.clone()),
            None => next.remove(key),
        };
    }
    c.extra.watched = header_rev;
    c.replace(next)
}

// ---------------------------------------------------------------------------
// Time and back-off.

/// Pause before reconnection round `round` (>= 1): `base`, then twice
/// `base`, plus up to a quarter of jitter (`jitter` in 0..=1).
fn backoff(base: Duration, round: u32, jitter: f64) -> Duration {
    let base = base.max(Duration::from_millis(200));
    // Twice `resync_delay` at most (APISIX retries every resync_delay): a
    // cluster that is back is noticed, and writes accepted, within seconds.
    let cap = base.max((base * 2).min(MAX_BACKOFF));
    let d = base
        .saturating_mul(1u32 << round.saturating_sub(1).min(16))
        .min(cap);
    d + d.mul_f64(jitter.clamp(0.0, 1.0) / 4.0)
}

/// An error with its causes, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

/// Keep only what an HTTP header value may carry.
fn header_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c == ' ' || c.is_ascii_graphic() {
                c
            } else {
                '?'
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Talking to etcd.

/// Why a request to etcd failed.
#[derive(Debug, Clone, PartialEq)]
enum CallError {
    /// No answer: connection refused or lost, timeout, cluster unavailable.
    Unreachable(String),
    /// The auth token is missing, expired or invalid.
    Auth(String),
    /// etcd answered with an error.
    Etcd(String),
}

impl CallError {
    fn text(&self) -> &str {
        match self {
            CallError::Unreachable(s) | CallError::Auth(s) | CallError::Etcd(s) => s,
        }
    }
}

/// Classify an `{"error", "code", "message"}` answer of the gateway.
fn gateway_error(v: &Value) -> Option<CallError> {
    let err = v.get("error")?;
    let msg = v
        .get("message")
        .or(Some(err))
        .and_then(Value::as_str)
        .unwrap_or("etcd error")
        .to_string();
    let code = v.get("code").and_then(Value::as_u64).unwrap_or(0);
    Some(if is_auth_message(&msg) || code == 16 {
        CallError::Auth(msg)
    } else if code == 14 || code == 4 {
        CallError::Unreachable(msg)
    } else {
        CallError::Etcd(msg)
    })
}

fn is_auth_message(msg: &str) -> bool {
    msg.contains("invalid auth token")
        || msg.contains("user name is empty")
        || msg.contains("Unauthenticated")
}

/// One configured etcd endpoint.
struct Host {
    /// The URL as configured.
    url: String,
    /// Base of request URLs (the SNI name replaces the host when `tls.sni` is set).
    base: String,
    client: reqwest::Client,
}

/// Reachability and session state.
#[derive(Default)]
struct Conn {
    /// Index of the host in use.
    host: usize,
    /// Auth token of the current session.
    token: Option<String>,
    /// Since when and why etcd is unreachable.
    down: Option<(SystemTime, String)>,
}

/// How one watch ended.
#[derive(Debug)]
enum WatchEnd {
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

struct Shared {
    hosts: Vec<Host>,
    /// The prefix without trailing `/`.
    prefix: String,
    /// The prefix as configured, for `describe`.
    conf_prefix: String,
    timeout: Duration,
    watch_timeout: Duration,
    resync_delay: Duration,
    creds: Option<(String, Secret)>,
    index: Index<Tracking>,
    conn: Mutex<Conn>,
    /// Poked when a write finds etcd unreachable, so the watcher resyncs.
    trouble: Notify,
}

/// The etcd store; cheap to share behind an `Arc`.
pub struct EtcdStore {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hosts: Vec<&str> = self.shared.hosts.iter().map(|h| h.url.as_str()).collect();
        f.debug_struct("EtcdStore")
            .field("hosts", &hosts)
            .field("prefix", &self.shared.conf_prefix)
            .field("user", &self.shared.creds.as_ref().map(|(u, _)| u))
            .finish_non_exhaustive()
    }
}

fn unavailable(what: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(what.to_string())
}

async fn build_hosts(conf: &Etcd, timeout: Duration) -> Result<Vec<Host>, StoreError> {
    let tls = conf.tls.as_ref();
    let identity = match tls.map(|t| (&t.cert, &t.key)) {
        Some((Some(cert), Some(key))) => {
            let mut pem = std::fs::read(key).map_err(|e| {
                unavailable(format!("cannot read deployment.etcd.tls.key {key}: {e}"))
            })?;
            pem.push(b'\n');
            pem.extend(std::fs::read(cert).map_err(|e| {
                unavailable(format!("cannot read deployment.etcd.tls.cert {cert}: {e}"))
            })?);
            Some(reqwest::Identity::from_pem(&pem).map_err(|e| {
                unavailable(format!(
                    "invalid deployment.etcd.tls cert/key {cert}, {key}: {}",
                    chain(&e)
                ))
            })?)
        }
        Some((None, None)) | None => None,
        Some(_) => {
            return Err(unavailable(
                "deployment.etcd.tls needs both cert and key for a client certificate",
            ))
        }
    };
    let mut hosts = Vec::new();
    for url in &conf.host {
        let bad = |why: String| unavailable(format!("invalid deployment.etcd.host {url}: {why}"));
        let parsed = reqwest::Url::parse(url).map_err(|e| bad(e.to_string()))?;
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .no_proxy()
            .connect_timeout(timeout)
            .tcp_keepalive(Duration::from_secs(30));
        let mut base = url.trim_end_matches('/').to_string();
        if parsed.scheme() == "https" {
            if let Some(id) = identity.clone() {
                builder = builder.identity(id);
            }
            if tls.is_some_and(|t| !t.verify) {
                builder = builder.danger_accept_invalid_certs(true);
            }
            if let Some(sni) = tls.and_then(|t| t.sni.as_deref()) {
                // Connect to the configured address but present (and verify) the SNI name.
                let port = parsed.port_or_known_default().unwrap_or(2379);
                let name = parsed.host_str().ok_or_else(|| bad("no host".into()))?;
                let name = name.trim_start_matches('[').trim_end_matches(']');
                let addrs: Vec<SocketAddr> = match name.parse::<std::net::IpAddr>() {
                    Ok(ip) => vec![SocketAddr::new(ip, port)],
                    Err(_) => tokio::net::lookup_host((name, port))
                        .await
                        .map_err(|e| bad(format!("cannot resolve {name}: {e}")))?
                        .collect(),
                };
                builder = builder.resolve_to_addrs(sni, &addrs);
                let mut u = parsed.clone();
                u.set_host(Some(sni))
                    .map_err(|e| bad(format!("invalid tls.sni {sni}: {e}")))?;
                base = u.as_str().trim_end_matches('/').to_string();
            }
        }
        let client = builder.build().map_err(|e| bad(chain(&e)))?;
        hosts.push(Host {
            url: url.clone(),
            base,
            client,
        });
    }
    if hosts.is_empty() {
        return Err(unavailable("deployment.etcd.host is empty"));
    }
    Ok(hosts)
}

impl Shared {
    fn conn(&self) -> MutexGuard<'_, Conn> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn hosts_text(&self) -> String {
        let urls: Vec<&str> = self.hosts.iter().map(|h| h.url.as_str()).collect();
        urls.join(",")
    }

    fn key_of(&self, kind: Kind, id: &str) -> String {
        format!("{}/{}/{}", self.prefix, kind.segment(), id)
    }

    fn dir_key(&self) -> String {
        format!("{}/", self.prefix)
    }

    fn rotate(&self) {
        let mut conn = self.conn();
        conn.host = (conn.host + 1) % self.hosts.len();
    }

    fn mark_down(&self, reason: &str) {
        let mut conn = self.conn();
        if conn.down.is_none() {
            tracing::warn!(
                hosts = %self.hosts_text(),
                error = reason,
                "etcd unreachable; serving the last known configuration"
            );
            conn.down = Some((SystemTime::now(), reason.to_string()));
        }
    }

    fn mark_up(&self, host: usize, revision: u64) {
        let mut conn = self.conn();
        conn.host = host;
        if conn.down.take().is_some() {
            tracing::info!(
                host = %self.hosts[host].url,
                revision,
                "etcd reachable again; configuration resynchronised"
            );
        }
    }

    /// One POST to the gateway, bounded by `timeout`.
    async fn raw(
        &self,
        host: usize,
        path: &str,
        body: &Value,
        token: Option<&str>,
    ) -> Result<Value, CallError> {
        let h = &self.hosts[host];
        let mut req = h.client.post(format!("{}{path}", h.base)).json(body);
        if let Some(t) = token {
            if let Ok(mut v) = reqwest::header::HeaderValue::from_str(t) {
                v.set_sensitive(true);
                req = req.header(reqwest::header::AUTHORIZATION, v);
            }
        }
        let exchange = async {
            let resp = req
                .send()
                .await
                .map_err(|e| CallError::Unreachable(chain(&e)))?;
            let status = resp.status();
            let bytes = resp
                .bytes()
                .await
                .map_err(|e| CallError::Unreachable(chain(&e)))?;
            let v: Value = serde_json::from_slice(&bytes).map_err(|e| {
                CallError::Etcd(format!("unreadable answer from etcd ({status}): {e}"))
            })?;
            if let Some(err) = gateway_error(&v) {
                return Err(err);
            }
            if !status.is_success() {
                return Err(CallError::Etcd(format!("etcd answered {status}")));
            }
            Ok(v)
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| {
                CallError::Unreachable(format!(
                    "no answer from {} within {}s",
                    h.url,
                    self.timeout.as_secs()
                ))
            })?
    }

    /// Get a fresh auth token (when `user` is configured).
    async fn authenticate(&self, host: usize) -> Result<(), CallError> {
        let Some((user, password)) = &self.creds else {
            return Ok(());
        };
        let body = json!({"name": user, "password": password.expose()});
        let v = match self.raw(host, "/v3/auth/authenticate", &body, None).await {
            // Authentication failures are not session problems: report them as they are.
            Err(CallError::Auth(m)) => return Err(CallError::Etcd(m)),
            other => other?,
        };
        let token = v
            .get("token")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| CallError::Etcd("etcd authentication returned no token".into()))?;
        self.conn().token = Some(token);
        Ok(())
    }

    /// A request with the session token, re-authenticating once when etcd
    /// says the token is missing or invalid.
    async fn call(&self, host: usize, path: &str, body: &Value) -> Result<Value, CallError> {
        if self.creds.is_some() && self.conn().token.is_none() {
            self.authenticate(host).await?;
        }
        let token = self.conn().token.clone();
        match self.raw(host, path, body, token.as_deref()).await {
            Err(CallError::Auth(_)) if self.creds.is_some() => {
                self.authenticate(host).await?;
                let token = self.conn().token.clone();
                self.raw(host, path, body, token.as_deref()).await
            }
            other => other,
        }
    }

    /// The host for a write, or at once an error while etcd is unreachable.
    fn writable(&self) -> Result<usize, StoreError> {
        let conn = self.conn();
        match &conn.down {
            Some((_, reason)) => Err(unavailable(format!("etcd is unreachable: {reason}"))),
            None => Ok(conn.host),
        }
    }

    /// A write request; an unreachable etcd is remembered (and the watcher
    /// told) so later writes fail fast until it is back.
    async fn write(&self, host: usize, path: &str, body: &Value) -> Result<Value, StoreError> {
        match self.call(host, path, body).await {
            Ok(v) => Ok(v),
            Err(CallError::Unreachable(reason)) => {
                self.mark_down(&reason);
                self.trouble.notify_one();
                Err(unavailable(format!("etcd is unreachable: {reason}")))
            }
            Err(CallError::Auth(m)) => Err(unavailable(format!("etcd refused the request: {m}"))),
            Err(CallError::Etcd(m)) => Err(unavailable(format!("etcd error: {m}"))),
        }
    }

    /// Create the `<prefix>/<dir>/` placeholders that are missing.
    async fn ensure_dirs(&self, host: usize) -> Result<(), CallError> {
        for kind in Kind::ALL {
            let key = format!("{}/{}/", self.prefix, kind.segment());
            let k = b64(key.as_bytes());
            let txn = json!({
                "compare": [{"key": k, "target": "CREATE", "result": "EQUAL", "create_revision": 0}],
                "success": [{"request_put": {"key": k, "value": b64(INIT_DIR.as_bytes())}}],
            });
            match self.call(host, "/v3/kv/txn", &txn).await {
                Ok(_) => {}
                Err(CallError::Etcd(m)) => {
                    // A read-only etcd user may not write them; readers do not need them.
                    tracing::warn!(
                        key,
                        error = m,
                        "cannot create the etcd directory placeholder"
                    );
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Read everything under the prefix and diff it into the cache;
    /// returns the revision of the read.
    async fn reload(&self, host: usize) -> Result<u64, CallError> {
        let dir = self.dir_key();
        let body = json!({
            "key": b64(dir.as_bytes()),
            "range_end": b64(&range_end(dir.as_bytes())),
        });
        let v = self.call(host, "/v3/kv/range", &body).await?;
        let rev = header_rev(&v);
        if rev == 0 {
            return Err(CallError::Etcd("etcd answered without a revision".into()));
        }
        let items: Vec<Change> = v
            .get("kvs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|kv| change_of(&self.prefix, kv, false))
            .collect();
        self.index.update(|c| {
            if rev < c.extra.watched {
                tracing::warn!(
                    seen = c.extra.watched,
                    now = rev,
                    "etcd revision went backwards (etcd replaced or restored); reloading everything"
                );
            }
            if replace_all(c, items, rev) || rev > c.revision() {
                c.commit(rev);
            }
        });
        Ok(rev)
    }

    /// Log in, create placeholders and load everything (start-up).
    async fn bootstrap(&self, host: usize) -> Result<u64, CallError> {
        self.authenticate(host).await?;
        self.ensure_dirs(host).await?;
        self.reload(host).await
    }

    /// Re-read until some host answers; `None` once cancelled. The first
    /// round starts at once and tries every host in order; later rounds
    /// back off `resync_delay`, doubling up to a cap, with jitter.
    async fn resync(&self, cancel: &CancellationToken, why: String) -> Option<u64> {
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

    fn is_down(&self) -> bool {
        self.conn().down.is_some()
    }

    /// Apply one watch message; `Some` when the watch must end.
    fn on_watch_message(&self, line: &[u8], from: &mut u64) -> Option<WatchEnd> {
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
                if let Some(change) = change_of(&self.prefix, kv, delete) {
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
    async fn watch(&self, from: &mut u64, cancel: &CancellationToken) -> WatchEnd {
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
    async fn follow(self: Arc<Self>, mut from: u64, cancel: CancellationToken) {
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

impl EtcdStore {
    /// Connect, load everything under the prefix, start the watch; fails with a clear message after `startup_retry` tries.
    pub async fn connect(
        conf: &Etcd,
        cancel: CancellationToken,
    ) -> Result<Arc<EtcdStore>, StoreError> {
        let timeout = Duration::from_secs(conf.timeout.max(1));
        let hosts = build_hosts(conf, timeout).await?;
        let prefix = conf.prefix.trim_end_matches('/').to_string();
        let shared = Arc::new(Shared {
            hosts,
            prefix,
            conf_prefix: conf.prefix.clone(),
            timeout,
            watch_timeout: Duration::from_secs(conf.watch_timeout.max(1)),
            resync_delay: Duration::from_secs(conf.resync_delay),
            creds: conf
                .user
                .as_ref()
                .map(|u| (u.clone(), conf.password.clone().unwrap_or_default())),
            index: Index::default(),
            conn: Mutex::new(Conn::default()),
            trouble: Notify::new(),
        });
        let tries = conf.startup_retry.max(1);
        let mut last = String::new();
        let mut loaded = None;
        'tries: for attempt in 1..=tries {
            if attempt > 1 {
                tokio::select! {
                    () = cancel.cancelled() => break 'tries,
                    () = tokio::time::sleep(STARTUP_PAUSE) => {}
                }
            }
            for _ in 0..shared.hosts.len() {
                let host = shared.conn().host;
                match shared.bootstrap(host).await {
                    Ok(rev) => {
                        loaded = Some(rev);
                        break 'tries;
                    }
                    Err(e) => {
                        tracing::warn!(
                            host = %shared.hosts[host].url,
                            attempt,
                            error = e.text(),
                            "cannot load the configuration from etcd"
                        );
                        last = e.text().to_string();
                        shared.rotate();
                    }
                }
            }
        }
        let Some(rev) = loaded else {
            return Err(unavailable(format!(
                "cannot connect to etcd at {} after {tries} tries: {last}",
                shared.hosts_text()
            )));
        };
        let objects = shared.index.read(|c| c.objects().len());
        tracing::info!(
            hosts = %shared.hosts_text(),
            prefix = %shared.conf_prefix,
            objects,
            revision = rev,
            "loaded the configuration from etcd"
        );
        tokio::spawn(shared.clone().follow(rev + 1, cancel));
        Ok(Arc::new(EtcdStore { shared }))
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, kind: Kind, id: &str) -> Result<Option<Entry>, StoreError> {
        Ok(self.shared.index.get(kind, id))
    }

    async fn list(&self, kind: Kind) -> Result<Vec<Entry>, StoreError> {
        Ok(self.shared.index.list(kind))
    }

    async fn put(
        &self,
        kind: Kind,
        id: &str,
        value: Value,
        expect: Expect,
    ) -> Result<PutOutcome, StoreError> {
        let s = &self.shared;
        let host = s.writable()?;
        let key = b64(s.key_of(kind, id).as_bytes());
        let text = serde_json::to_string(&value)
            .map_err(|e| unavailable(format!("cannot encode the object: {e}")))?;
        let put = json!({"key": key, "value": b64(text.as_bytes()), "prev_kv": true});
        let (rev, prev) = match expect {
            Expect::Any => {
                let v = s.write(host, "/v3/kv/put", &put).await?;
                (header_rev(&v), v.get("prev_kv").cloned())
            }
            Expect::ModRev(r) => {
                let txn = json!({
                    "compare": [{"key": key, "target": "MOD", "result": "EQUAL", "mod_revision": r}],
                    "success": [{"request_put": put}],
                });
                let v = s.write(host, "/v3/kv/txn", &txn).await?;
                if !v.get("succeeded").and_then(Value::as_bool).unwrap_or(false) {
                    return Err(StoreError::Conflict);
                }
                let resp = v
                    .get("responses")
                    .and_then(|r| r.get(0))
                    .and_then(|r| r.get("response_put"));
                (header_rev(&v), resp.and_then(|r| r.get("prev_kv")).cloned())
            }
        };
        if rev == 0 {
            return Err(unavailable("etcd answered a write without a revision"));
        }
        let created = prev.is_none();
        let create_rev = prev
            .map(|p| num(p.get("create_revision")))
            .filter(|r| *r > 0)
            .unwrap_or(rev);
        let entry = Entry {
            kind,
            id: id.to_string(),
            value: Arc::new(value),
            create_rev,
            mod_rev: rev,
        };
        s.index.update(|c| {
            if apply_own(c, (kind, id.to_string()), rev, Some(entry.clone())) {
                c.commit(rev);
            }
        });
        Ok(PutOutcome { created, entry })
    }

    async fn delete(&self, kind: Kind, id: &str) -> Result<Option<Entry>, StoreError> {
        let s = &self.shared;
        let host = s.writable()?;
        let body = json!({"key": b64(s.key_of(kind, id).as_bytes()), "prev_kv": true});
        let v = s.write(host, "/v3/kv/deleterange", &body).await?;
        let rev = header_rev(&v);
        let Some(prev) = v
            .get("prev_kvs")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
        else {
            return Ok(None);
        };
        let key = (kind, id.to_string());
        let old = s.index.update(|c| {
            let old = c.get(&key).cloned().unwrap_or_else(|| {
                let raw = prev
                    .get("value")
                    .and_then(Value::as_str)
                    .and_then(unb64)
                    .unwrap_or_default();
                Entry {
                    kind,
                    id: id.to_string(),
                    value: Arc::new(serde_json::from_slice(&raw).unwrap_or(Value::Null)),
                    create_rev: num(prev.get("create_revision")),
                    mod_rev: num(prev.get("mod_revision")),
                }
            });
            if apply_own(c, key, rev, None) {
                c.commit(rev);
            }
            old
        });
        Ok(Some(old))
    }

    async fn next_id(&self) -> Result<String, StoreError> {
        let s = &self.shared;
        let host = s.writable()?;
        let key = format!("{}/gen_id", s.prefix);
        let body = json!({"key": b64(key.as_bytes()), "value": b64(b"0")});
        let v = s.write(host, "/v3/kv/put", &body).await?;
        match header_rev(&v) {
            0 => Err(unavailable("etcd answered a write without a revision")),
            rev => Ok(format_generated_id(rev)),
        }
    }

    async fn dump(&self) -> Result<Dump, StoreError> {
        Ok(self.shared.index.dump())
    }

    fn revision(&self) -> u64 {
        self.shared.index.revision()
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.index.subscribe()
    }

    fn describe(&self) -> String {
        format!(
            "etcd:{}{}",
            self.shared.hosts_text(),
            self.shared.conf_prefix
        )
    }

    fn stale(&self) -> Option<String> {
        let conn = self.shared.conn();
        conn.down.as_ref().map(|(since, reason)| {
            header_safe(&format!(
                "etcd unreachable since {}: {reason}",
                crate::timefmt::rfc3339(*since)
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &str, create: u64, m: u64) -> Value {
        json!({
            "key": b64(key.as_bytes()),
            "value": b64(value.as_bytes()),
            "create_revision": create.to_string(),
            "mod_revision": m.to_string(),
        })
    }

    fn put(id: &str, v: Value, create: u64, m: u64) -> Change {
        Change::Put {
            kind: Kind::Upstream,
            id: id.into(),
            key: format!("/apisix/upstreams/{id}"),
            value: Ok(Arc::new(v)),
            create_rev: create,
            mod_rev: m,
        }
    }

    fn entry(id: &str, v: Value, create: u64, m: u64) -> Entry {
        Entry {
            kind: Kind::Upstream,
            id: id.into(),
            value: Arc::new(v),
            create_rev: create,
            mod_rev: m,
        }
    }

    fn up(n: u32) -> Value {
        json!({"nodes": {"127.0.0.1:80": n}})
    }

    #[test]
    fn base64_and_range_end() {
        assert_eq!(b64(b"/apisix/"), "L2FwaXNpeC8=");
        assert_eq!(unb64("L2FwaXNpeC8=").as_deref(), Some(&b"/apisix/"[..]));
        assert_eq!(unb64("not base64!"), None);
        assert_eq!(range_end(b"/apisix/"), b"/apisix0");
        assert_eq!(range_end(b"a\xff"), b"b");
        assert_eq!(range_end(b"\xff"), b"\0");
    }

    #[test]
    fn int64_fields_come_as_strings_or_numbers() {
        assert_eq!(num(Some(&json!("42"))), 42);
        assert_eq!(num(Some(&json!(42))), 42);
        assert_eq!(num(None), 0);
        assert_eq!(header_rev(&json!({"header": {"revision": "7"}})), 7);
    }

    #[test]
    fn keys_name_our_objects_only() {
        let p = "/apisix";
        assert_eq!(
            parse_key(p, "/apisix/stream_routes/1"),
            Some((Kind::StreamRoute, "1".into()))
        );
        assert_eq!(
            parse_key(p, "/apisix/upstreams/u-1"),
            Some((Kind::Upstream, "u-1".into()))
        );
        assert_eq!(
            parse_key(p, "/apisix/ssls/x"),
            Some((Kind::Ssl, "x".into()))
        );
        for other in [
            "/apisix/stream_routes/",
            "/apisix/routes/1",
            "/apisix/gen_id",
            "/apisix/upstreams/a/b",
            "/apisixx/upstreams/1",
            "/other/upstreams/1",
        ] {
            assert_eq!(parse_key(p, other), None, "{other}");
        }
    }

    #[test]
    fn decoding_checks_values() {
        let c = change_of(
            "/apisix",
            &kv(
                "/apisix/upstreams/1",
                r#"{"nodes":{"127.0.0.1:1":1}}"#,
                3,
                5,
            ),
            false,
        );
        assert!(matches!(
            c,
            Some(Change::Put {
                create_rev: 3,
                mod_rev: 5,
                value: Ok(_),
                ..
            })
        ));
        for bad in ["init_dir", "[1]", r#"{"nodes": 5}"#] {
            let c = change_of("/apisix", &kv("/apisix/upstreams/1", bad, 3, 5), false);
            assert!(
                matches!(c, Some(Change::Put { value: Err(_), .. })),
                "{bad}"
            );
        }
        // A plugin unknown here is accepted; a known one is still checked.
        let route = r#"{"server_port": 9100, "upstream_id": "1", "plugins": {"x-custom": {}}}"#;
        let c = change_of(
            "/apisix",
            &kv("/apisix/stream_routes/r", route, 3, 5),
            false,
        );
        assert!(matches!(c, Some(Change::Put { value: Ok(_), .. })), "{c:?}");
        let bad = r#"{"upstream_id": "1", "plugins": {"limit-conn": {"conn": "x"}}}"#;
        let c = change_of("/apisix", &kv("/apisix/stream_routes/r", bad, 3, 5), false);
        assert!(
            matches!(c, Some(Change::Put { value: Err(_), .. })),
            "{c:?}"
        );
        // Placeholders and other keys are skipped; deletions carry their revision.
        assert_eq!(
            change_of(
                "/apisix",
                &kv("/apisix/upstreams/", "init_dir", 1, 1),
                false
            ),
            None
        );
        let del = json!({"key": b64(b"/apisix/upstreams/1"), "mod_revision": "9"});
        assert_eq!(
            change_of("/apisix", &del, true),
            Some(Change::Delete {
                kind: Kind::Upstream,
                id: "1".into(),
                mod_rev: 9
            })
        );
    }

    #[test]
    fn events_update_and_invalid_values_keep_the_previous_version() {
        let mut c = Cache::default();
        assert!(apply_event(&mut c, put("1", up(1), 2, 2)));
        assert!(
            !apply_event(&mut c, put("1", up(1), 2, 2)),
            "same event twice"
        );
        let invalid = Change::Put {
            kind: Kind::Upstream,
            id: "1".into(),
            key: "/apisix/upstreams/1".into(),
            value: Err("bad".into()),
            create_rev: 2,
            mod_rev: 3,
        };
        assert!(!apply_event(&mut c, invalid));
        assert_eq!(
            c.objects()[&(Kind::Upstream, "1".into())].value,
            Arc::new(up(1))
        );
        assert_eq!(c.extra.watched, 3);
        assert!(apply_event(
            &mut c,
            Change::Delete {
                kind: Kind::Upstream,
                id: "1".into(),
                mod_rev: 4
            }
        ));
        assert!(!apply_event(
            &mut c,
            Change::Delete {
                kind: Kind::Upstream,
                id: "1".into(),
                mod_rev: 5
            }
        ));
        assert!(c.objects().is_empty());
    }

    #[test]
    fn own_writes_are_visible_at_once_and_never_rolled_back() {
        let mut c = Cache::default();
        let k = (Kind::Upstream, "1".to_string());
        // Our write at 5 lands before the watch has seen it.
        assert!(apply_own(
            &mut c,
            k.clone(),
            5,
            Some(entry("1", up(5), 5, 5))
        ));
        // Older watch events for the key do not undo it.
        assert!(!apply_event(&mut c, put("1", up(4), 4, 4)));
        assert_eq!(c.objects()[&k].mod_rev, 5);
        // Its own event is a no-op; a later one applies.
        assert!(!apply_event(&mut c, put("1", up(5), 5, 5)));
        assert!(c.extra.pending.is_empty());
        assert!(apply_event(&mut c, put("1", up(6), 5, 6)));
        // A write the watch already passed is ignored (the delete at 7 stays).
        assert!(apply_event(
            &mut c,
            Change::Delete {
                kind: Kind::Upstream,
                id: "1".into(),
                mod_rev: 7
            }
        ));
        assert!(!apply_own(
            &mut c,
            k.clone(),
            6,
            Some(entry("1", up(6), 5, 6))
        ));
        assert!(!c.objects().contains_key(&k));
        // An own delete is not undone by an older put event.
        assert!(apply_own(
            &mut c,
            k.clone(),
            10,
            Some(entry("1", up(10), 10, 10))
        ));
        assert!(apply_own(&mut c, k.clone(), 11, None));
        assert!(!apply_event(&mut c, put("1", up(10), 10, 10)));
        assert!(!c.objects().contains_key(&k));
    }

    #[test]
    fn full_reads_are_diffed_into_the_cache() {
        let mut c = Cache::default();
        assert!(replace_all(
            &mut c,
            vec![put("1", up(1), 2, 2), put("2", up(2), 3, 3)],
            3
        ));
        assert!(!replace_all(
            &mut c,
            vec![put("1", up(1), 2, 2), put("2", up(2), 3, 3)],
            4
        ));
        // "2" deleted, "1" replaced by an invalid value: keeps the old one.
        let invalid = Change::Put {
            kind: Kind::Upstream,
            id: "1".into(),
            key: "/apisix/upstreams/1".into(),
            value: Err("bad".into()),
            create_rev: 2,
            mod_rev: 6,
        };
        assert!(replace_all(&mut c, vec![invalid], 6));
        assert_eq!(c.objects().len(), 1);
        assert_eq!(c.objects()[&(Kind::Upstream, "1".into())].mod_rev, 2);
        // An own write newer than the read survives it.
        assert!(apply_own(
            &mut c,
            (Kind::Upstream, "9".into()),
            8,
            Some(entry("9", up(9), 8, 8))
        ));
        assert!(!replace_all(&mut c, vec![put("1", up(1), 2, 2)], 7));
        assert!(c.objects().contains_key(&(Kind::Upstream, "9".into())));
        // etcd replaced by one at a lower revision: its content wins.
        assert!(replace_all(&mut c, vec![put("3", up(3), 2, 2)], 2));
        assert_eq!(
            c.objects().keys().map(|k| k.1.as_str()).collect::<Vec<_>>(),
            ["3"]
        );
        assert_eq!(c.extra.watched, 2);
    }

    #[test]
    fn gateway_errors_are_classified() {
        let e = |code: u64, msg: &str| json!({"error": msg, "message": msg, "code": code});
        assert!(matches!(
            gateway_error(&e(16, "etcdserver: invalid auth token")),
            Some(CallError::Auth(_))
        ));
        assert!(matches!(
            gateway_error(&e(3, "etcdserver: user name is empty")),
            Some(CallError::Auth(_))
        ));
        assert!(matches!(
            gateway_error(&e(14, "etcdserver: no leader")),
            Some(CallError::Unreachable(_))
        ));
        assert!(matches!(
            gateway_error(&e(
                3,
                "etcdserver: authentication failed, invalid user ID or password"
            )),
            Some(CallError::Etcd(_))
        ));
        assert_eq!(gateway_error(&json!({"header": {}})), None);
    }

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
