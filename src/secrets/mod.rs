//! References to values kept outside the configuration, as APISIX has them:
//! `$env://NAME` (also `$ENV://`, and `$env://NAME/key` for one key of a
//! JSON value) read from the server's environment, and
//! `$secret://vault/ID/path/key` read from HashiCorp Vault through the
//! `secrets` object `vault/ID` ([`vault`]).
//!
//! Where they are honoured: an SSL object's `cert`, `key`, `certs`, `keys`
//! and `client.ca`, and every string inside a `plugins` object. They are
//! resolved when the publisher compiles a snapshot, never per connection:
//! before a build, [`Resolver::prefetch`] reads from Vault what the objects
//! about to be compiled name (cached, re-read after APISIX's secret TTL),
//! then [`Resolver::resolve`] replaces each reference in the object's
//! value. An object with a reference that does not resolve is not compiled
//! half-configured: it is marked unservable with the reason (which names
//! the reference, never a value), so the build leaves it out (an SSL
//! object) or refuses its clients (a stream route), logs it once and lists
//! it in `/v1/stream/skipped`. A change to a `secrets` object, or a Vault
//! value that changed when re-read, resolves every object again.

pub mod vault;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::model::Kind;
use crate::store::index::Changes;
use crate::store::{Dump, Entry, UNSERVABLE};

/// APISIX's `$ENV://` prefix (matched without regard to case).
pub const ENV_PREFIX: &str = "$ENV://";
/// APISIX's `$secret://` prefix.
pub const SECRET_PREFIX: &str = "$secret://";
/// How long a value read from a secret manager is used before it is read
/// again (APISIX's `apisix.lru.secret.ttl` default).
pub const SECRET_TTL: Duration = Duration::from_secs(300);
/// How long a failed read is remembered (APISIX's `neg_ttl` default).
pub const SECRET_NEG_TTL: Duration = Duration::from_secs(60);

/// A parsed reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reference {
    /// `$env://NAME[/key]`.
    Env {
        /// The variable.
        name: String,
        /// A key of the variable's JSON value.
        key: Option<String>,
    },
    /// `$secret://manager/id/path/key`.
    Secret {
        /// The secret manager (`vault`).
        manager: String,
        /// The `secrets` object's id under the manager.
        id: String,
        /// The path in the manager and the key of its value (`path/key`).
        key: String,
    },
}

impl Reference {
    /// `None` when `s` is not a reference; an error when it is one that
    /// cannot be read (APISIX's texts).
    pub fn parse(s: &str) -> Option<Result<Reference, String>> {
        if let Some(rest) = strip_prefix_ignore_case(s, ENV_PREFIX) {
            let (name, key) = match rest.split_once('/') {
                Some((n, k)) if !k.is_empty() => (n, Some(k.to_string())),
                Some((n, _)) => (n, None),
                None => (rest, None),
            };
            return Some(Ok(Reference::Env {
                name: name.to_string(),
                key,
            }));
        }
        let rest = s.strip_prefix(SECRET_PREFIX)?;
        let Some((manager, rest)) = rest.split_once('/') else {
            return Some(Err("error format: no secret manager".into()));
        };
        let Some((id, key)) = rest.split_once('/') else {
            return Some(Err("error format: no secret conf id".into()));
        };
        if key.is_empty() {
            return Some(Err("error format: no secret key id".into()));
        }
        Some(Ok(Reference::Secret {
            manager: manager.to_string(),
            id: id.to_string(),
            key: key.to_string(),
        }))
    }

    /// The `secrets` object id this reference reads through (`vault/1`).
    fn secret_object(&self) -> Option<String> {
        match self {
            Reference::Secret { manager, id, .. } => Some(format!("{manager}/{id}")),
            Reference::Env { .. } => None,
        }
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// Whether a string is a reference this module resolves.
pub fn is_reference(s: &str) -> bool {
    s.starts_with('$') && Reference::parse(s).is_some()
}

/// Read `$env://NAME[/key]` from the environment.
pub fn env_value(name: &str, key: Option<&str>) -> Result<String, String> {
    let value =
        std::env::var(name).map_err(|_| format!("environment variable {name} is not set"))?;
    let Some(key) = key else {
        return Ok(value);
    };
    let json: Value = serde_json::from_str(&value)
        .map_err(|_| format!("environment variable {name} is not a JSON object"))?;
    match json.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Null) | None => Err(format!("environment variable {name} has no key {key}")),
        Some(other) => Ok(other.to_string()),
    }
}

/// The strings of a stored value that may hold references, visited mutably.
fn for_each_slot(kind: Kind, v: &mut Value, f: &mut dyn FnMut(&str, &mut String)) {
    fn walk(path: &mut String, v: &mut Value, f: &mut dyn FnMut(&str, &mut String)) {
        match v {
            Value::String(s) => f(path, s),
            Value::Array(items) => {
                for (i, item) in items.iter_mut().enumerate() {
                    let len = path.len();
                    path.push_str(&format!("[{i}]"));
                    walk(path, item, f);
                    path.truncate(len);
                }
            }
            Value::Object(map) => {
                for (k, item) in map.iter_mut() {
                    let len = path.len();
                    path.push('.');
                    path.push_str(k);
                    walk(path, item, f);
                    path.truncate(len);
                }
            }
            _ => {}
        }
    }
    let Value::Object(map) = v else { return };
    match kind {
        Kind::Ssl => {
            for field in ["cert", "key", "certs", "keys"] {
                if let Some(slot) = map.get_mut(field) {
                    walk(&mut field.to_string(), slot, f);
                }
            }
            if let Some(Value::Object(client)) = map.get_mut("client") {
                if let Some(slot) = client.get_mut("ca") {
                    walk(&mut "client.ca".to_string(), slot, f);
                }
            }
        }
        Kind::Secret => {}
        _ => {
            if let Some(slot) = map.get_mut("plugins") {
                walk(&mut "plugins".to_string(), slot, f);
            }
        }
    }
}

/// The slots of a stored value that may hold references, read-only.
fn scan_slots(kind: Kind, v: &Value, f: &mut dyn FnMut(&str)) {
    fn walk(v: &Value, f: &mut dyn FnMut(&str)) {
        match v {
            Value::String(s) => f(s),
            Value::Array(items) => items.iter().for_each(|i| walk(i, f)),
            Value::Object(map) => map.values().for_each(|i| walk(i, f)),
            _ => {}
        }
    }
    let Value::Object(map) = v else { return };
    match kind {
        Kind::Ssl => {
            for field in ["cert", "key", "certs", "keys"] {
                if let Some(slot) = map.get(field) {
                    walk(slot, f);
                }
            }
            if let Some(slot) = map.get("client").and_then(|c| c.get("ca")) {
                walk(slot, f);
            }
        }
        Kind::Secret => {}
        _ => {
            if let Some(slot) = map.get("plugins") {
                walk(slot, f);
            }
        }
    }
}

/// The references in a stored value's slots.
fn references(kind: Kind, v: &Value) -> Vec<Reference> {
    let mut out = Vec::new();
    scan_slots(kind, v, &mut |s| {
        if let Some(Ok(r)) = s.starts_with('$').then(|| Reference::parse(s)).flatten() {
            out.push(r);
        }
    });
    out
}

/// Whether a stored value's slots hold a reference.
pub fn has_reference(kind: Kind, v: &Value) -> bool {
    let mut found = false;
    scan_slots(kind, v, &mut |s| found |= is_reference(s));
    found
}

/// A value read from a secret manager, and when.
#[derive(Debug, Clone)]
struct Fetched {
    value: Result<String, String>,
    at: Instant,
    /// The `secrets` object as it was read with.
    conf: Arc<Value>,
}

/// Resolves references for the publisher; one per server.
#[derive(Debug, Default)]
pub struct Resolver {
    /// `secrets` objects by id (`vault/1`), as of the last prefetch.
    confs: Mutex<HashMap<String, Arc<Value>>>,
    /// Values read from secret managers, by reference text.
    fetched: Mutex<HashMap<String, Fetched>>,
    /// Set when a re-read value differs from the one in use: every object
    /// is resolved again on the next build.
    stale: std::sync::atomic::AtomicBool,
    /// Wakes the publisher when `stale` was set.
    pub changed: tokio::sync::Notify,
    /// What secret managers' certificates are checked against.
    trust: crate::tls::Trust,
    /// The HTTP client for secret managers, built on first use.
    http: std::sync::OnceLock<Result<reqwest::Client, String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Resolver {
    /// Whether the next build must resolve every object again (instead of
    /// only the changed ones): a `secrets` object changed, or a value read
    /// again from a secret manager differs.
    pub fn must_reload(&self, changes: &Changes) -> bool {
        let stale = self.stale.swap(false, std::sync::atomic::Ordering::SeqCst);
        stale
            || changes.changed.iter().any(|e| e.kind == Kind::Secret)
            || changes.removed.iter().any(|(k, _)| *k == Kind::Secret)
    }

    /// Read from secret managers what the objects about to be compiled
    /// name (all of `base` without `changes`, else the changed ones), with
    /// the `secrets` objects of `base` updated by `changes`.
    pub async fn prefetch(&self, base: &Dump, changes: Option<&Changes>) {
        let mut confs: HashMap<String, Arc<Value>> = base
            .entries
            .iter()
            .filter(|e| e.kind == Kind::Secret)
            .map(|e| (e.id.clone(), Arc::clone(&e.value)))
            .collect();
        let to_open: Vec<&Entry> = match changes {
            None => base.entries.iter().collect(),
            Some(c) => {
                for e in c.changed.iter().filter(|e| e.kind == Kind::Secret) {
                    confs.insert(e.id.clone(), Arc::clone(&e.value));
                }
                for (_, id) in c.removed.iter().filter(|(k, _)| *k == Kind::Secret) {
                    confs.remove(id);
                }
                c.changed.iter().collect()
            }
        };
        let mut wanted: HashSet<(String, Reference)> = HashSet::new();
        for e in to_open {
            for r in references(e.kind, &e.value) {
                if matches!(r, Reference::Secret { .. }) {
                    let text = reference_text(&r);
                    wanted.insert((text, r));
                }
            }
        }
        *lock(&self.confs) = confs.clone();
        for (text, r) in wanted {
            let conf = r.secret_object().and_then(|id| confs.get(&id).cloned());
            let fresh = lock(&self.fetched).get(&text).is_some_and(|f| {
                let ttl = if f.value.is_ok() {
                    SECRET_TTL
                } else {
                    SECRET_NEG_TTL
                };
                f.at.elapsed() < ttl && conf.as_ref().is_some_and(|c| **c == *f.conf)
            });
            if fresh {
                continue;
            }
            let Some(conf) = conf else {
                // Resolved as "no secret conf" when the object is compiled.
                continue;
            };
            let value = self.fetch(&r, &conf).await;
            let old = lock(&self.fetched).insert(
                text,
                Fetched {
                    value: value.clone(),
                    at: Instant::now(),
                    conf: Arc::clone(&conf),
                },
            );
            // Objects compiled earlier with the old value get the new one.
            if old.is_some_and(|o| *o.conf == *conf && o.value != value) {
                self.stale.store(true, std::sync::atomic::Ordering::SeqCst);
                self.changed.notify_one();
            }
        }
    }

    /// Read again every cached value whose time is up; `true` (and the next
    /// build resolves everything again) when one changed.
    pub async fn refresh(&self) -> bool {
        let due: Vec<(String, Fetched)> = lock(&self.fetched)
            .iter()
            .filter(|(_, f)| {
                let ttl = if f.value.is_ok() {
                    SECRET_TTL
                } else {
                    SECRET_NEG_TTL
                };
                f.at.elapsed() >= ttl
            })
            .map(|(k, f)| (k.clone(), f.clone()))
            .collect();
        let mut changed = false;
        for (text, old) in due {
            let Some(Ok(r)) = Reference::parse(&text) else {
                continue;
            };
            let value = self.fetch(&r, &old.conf).await;
            changed |= value != old.value;
            lock(&self.fetched).insert(
                text,
                Fetched {
                    value,
                    at: Instant::now(),
                    conf: old.conf,
                },
            );
        }
        if changed {
            self.stale.store(true, std::sync::atomic::Ordering::SeqCst);
            self.changed.notify_one();
        }
        changed
    }

    /// The value of one reference, from the environment or the values
    /// [`prefetch`](Self::prefetch) read.
    fn lookup(&self, r: &Reference, text: &str) -> Result<String, String> {
        match r {
            Reference::Env { name, key } => env_value(name, key.as_deref()),
            Reference::Secret { manager, id, .. } => {
                if !lock(&self.confs).contains_key(&format!("{manager}/{id}")) {
                    return Err(format!("no secret conf, secret_uri: {text}"));
                }
                match lock(&self.fetched).get(text) {
                    Some(f) => f.value.clone(),
                    None => Err("not read from the secret manager yet".into()),
                }
            }
        }
    }

    /// Replace the references of `e`'s value; a value with one that does
    /// not resolve is marked unservable with why (naming the reference and
    /// the field, never a value).
    pub fn resolve(&self, e: &mut Entry) {
        if !has_reference(e.kind, &e.value) {
            return;
        }
        let mut problem: Option<String> = None;
        let mut any = false;
        let mut v = (*e.value).clone();
        for_each_slot(e.kind, &mut v, &mut |field, s| {
            if problem.is_some() || !s.starts_with('$') {
                return;
            }
            let Some(parsed) = Reference::parse(s) else {
                return;
            };
            any = true;
            match parsed.and_then(|r| self.lookup(&r, s)) {
                Ok(value) => *s = value,
                Err(why) => problem = Some(format!("cannot resolve {s} ({field}): {why}")),
            }
        });
        if !any {
            return;
        }
        if let Some(why) = problem {
            let mut marked = (*e.value).clone();
            if let Value::Object(map) = &mut marked {
                map.insert(UNSERVABLE.into(), Value::String(why));
            }
            v = marked;
        }
        e.value = Arc::new(v);
    }

    /// A resolver whose secret managers are reached over https with
    /// certificates checked against `trust`.
    pub fn trusting(trust: crate::tls::Trust) -> Resolver {
        Resolver {
            trust,
            ..Resolver::default()
        }
    }

    /// Read one `$secret://` reference through its `secrets` object.
    async fn fetch(&self, r: &Reference, conf: &Value) -> Result<String, String> {
        match r {
            Reference::Secret { manager, key, .. } if manager == "vault" => {
                let client = self
                    .http
                    .get_or_init(|| vault::client(&self.trust))
                    .as_ref()
                    .map_err(Clone::clone)?;
                vault::get(client, conf, key).await
            }
            Reference::Secret { manager, .. } => Err(format!("no secret manager: {manager}")),
            Reference::Env { name, key } => env_value(name, key.as_deref()),
        }
    }
}

/// A reference as text (the cache key).
fn reference_text(r: &Reference) -> String {
    match r {
        Reference::Env { name, key: None } => format!("$env://{name}"),
        Reference::Env { name, key: Some(k) } => format!("$env://{name}/{k}"),
        Reference::Secret { manager, id, key } => format!("{SECRET_PREFIX}{manager}/{id}/{key}"),
    }
}

/// Check a `secrets` object (`id` is `manager/id`) as APISIX's Admin API
/// does, with its texts.
pub fn validate(v: &Value) -> Result<(), String> {
    let id = v.get("id").and_then(Value::as_str).unwrap_or_default();
    let Some((manager, _)) = id.split_once('/') else {
        return Err("no secret id".into());
    };
    match manager {
        "vault" => vault::schema()
            .check(v)
            .map_err(|e| format!("invalid configuration: {e}")),
        other => Err(format!("invalid secret manager: {other}")),
    }
}

/// Periodically read again the values whose time is up, until `cancel`.
pub async fn refresher(resolver: Arc<Resolver>, cancel: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {
                if resolver.refresh().await {
                    tracing::info!("a secret changed in its secret manager; resolving references again");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
