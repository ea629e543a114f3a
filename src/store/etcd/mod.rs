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
//!
//! The parts: [`client`] speaks to the gateway (auth, TLS), [`health`]
//! tracks and probes every endpoint, [`write`] fails writes over between
//! endpoints, [`watch`] follows the prefix and repairs a lost watch,
//! [`cache`] turns etcd's key-values into the store's [`Index`].

mod cache;
mod client;
mod health;
mod watch;
mod write;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use self::cache::{apply_own, Tracking};
use self::client::{b64, build_hosts, header_rev, header_safe, num, unb64, CallError, Conn, Host};
pub use self::health::EndpointReport;
use self::health::Health;
use super::index::Index;
use super::{format_generated_id, Entry, Expect, PutOutcome, Store, StoreError};
use crate::config::{Etcd, Secret};
use crate::model::{EnabledPlugins, Kind};
use crate::store::IndexView;

/// Value of the `<prefix>/<dir>/` placeholders APISIX writes at start-up.
const INIT_DIR: &str = "init_dir";
/// Pause between two start-up tries.
const STARTUP_PAUSE: Duration = Duration::from_secs(1);

/// Everything the store, its watcher task and its writes share.
struct Shared {
    hosts: Vec<Host>,
    /// The prefix without trailing `/`.
    prefix: String,
    /// The prefix as configured, for `describe`.
    conf_prefix: String,
    timeout: Duration,
    /// How often every endpoint is probed (`keepalive_interval`).
    keepalive: Duration,
    watch_timeout: Duration,
    resync_delay: Duration,
    creds: Option<(String, Secret)>,
    /// The plugins this instance enables (others are accepted, not used).
    plugins: EnabledPlugins,
    index: Index<Tracking>,
    conn: Mutex<Conn>,
    /// Every endpoint's state.
    health: Health,
    /// Ids minted by `next_id` and not yet written: their first write is a
    /// create that must not find the key.
    minted: Mutex<HashSet<String>>,
}

/// Most ids remembered as minted (POSTs in flight).
const MAX_MINTED: usize = 1024;

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

/// A store error for a request etcd did not serve.
fn unavailable(what: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(what.to_string())
}

impl Shared {
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

    /// The modification revision of an object as last seen (0: absent).
    fn known_rev(&self, kind: Kind, id: &str) -> u64 {
        self.index
            .read(|c| c.get(&(kind, id.to_string())).map(|e| e.mod_rev))
            .unwrap_or(0)
    }

    fn minted(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.minted.lock().unwrap_or_else(|p| p.into_inner())
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

    /// Log in, create placeholders and load everything (start-up).
    async fn bootstrap(&self, host: usize) -> Result<u64, CallError> {
        self.authenticate(host).await?;
        self.ensure_dirs(host).await?;
        self.reload(host).await
    }
}

impl EtcdStore {
    /// Connect, load everything under the prefix (checked against `plugins`), start the watch;
    /// fails with a clear message after `startup_retry` tries.
    pub async fn connect(
        conf: &Etcd,
        plugins: EnabledPlugins,
        cancel: CancellationToken,
    ) -> Result<Arc<EtcdStore>, StoreError> {
        let timeout = crate::model::duration::whole_secs(conf.timeout.max(1));
        let hosts = build_hosts(conf, timeout).await?;
        let health = Health::new(hosts.iter().map(|h| h.url.clone()).collect());
        let prefix = conf.prefix.trim_end_matches('/').to_string();
        let shared = Arc::new(Shared {
            hosts,
            prefix,
            conf_prefix: conf.prefix.clone(),
            timeout,
            keepalive: crate::model::duration::whole_secs(conf.keepalive_interval.max(1)),
            watch_timeout: crate::model::duration::whole_secs(conf.watch_timeout.max(1)),
            resync_delay: crate::model::duration::whole_secs(conf.resync_delay),
            creds: conf
                .user
                .as_ref()
                .map(|u| (u.clone(), conf.password.clone().unwrap_or_default())),
            plugins,
            index: Index::default(),
            conn: Mutex::new(Conn::default()),
            health,
            minted: Mutex::new(HashSet::new()),
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
            for host in shared.health.order() {
                match shared.bootstrap(host).await {
                    Ok(rev) => {
                        shared.health.ok(host, rev);
                        shared.health.used(host);
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
                        if e.is_unreachable() {
                            shared.health.failed(host, e.text());
                        }
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
        shared.health.serving();
        shared.start_probes(&cancel);
        tokio::spawn(shared.clone().follow(rev + 1, cancel));
        Ok(Arc::new(EtcdStore { shared }))
    }
}

#[async_trait]
impl Store for EtcdStore {
    fn index(&self) -> &dyn IndexView {
        &self.shared.index
    }

    async fn put(
        &self,
        kind: Kind,
        id: &str,
        value: Value,
        expect: Expect,
    ) -> Result<PutOutcome, StoreError> {
        let s = &self.shared;
        let key = b64(s.key_of(kind, id).as_bytes());
        let text = serde_json::to_string(&value)
            .map_err(|e| unavailable(format!("cannot encode the object: {e}")))?;
        // The first write under an id minted here creates the key, once.
        let fresh = s.minted().remove(id);
        let (want, strict) = match expect {
            Expect::ModRev(r) => (r, true),
            Expect::Any if fresh => (0, true),
            Expect::Any => (s.known_rev(kind, id), false),
        };
        let (rev, prev_create) = s.put_checked(&key, &text, want, strict).await?;
        if rev == 0 {
            return Err(unavailable("etcd answered a write without a revision"));
        }
        let created = prev_create.is_none();
        let create_rev = prev_create.filter(|r| *r > 0).unwrap_or(rev);
        let entry = Entry {
            kind,
            id: id.to_string(),
            value: crate::store::shared_value(value),
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
        let want = s.known_rev(kind, id);
        let d = s
            .delete_checked(&b64(s.key_of(kind, id).as_bytes()), want)
            .await?;
        let (rev, key) = (d.rev, (kind, id.to_string()));
        let Some(prev) = d.prev else {
            // An attempt that got no answer deleted it: report the object
            // as it was known.
            let known = d.earlier.then(|| s.index.read(|c| c.get(&key).cloned()));
            let Some(old) = known.flatten() else {
                return Ok(None);
            };
            s.index.update(|c| {
                if apply_own(c, key, rev, None) {
                    c.commit(rev);
                }
            });
            return Ok(Some(old));
        };
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
                    value: crate::store::shared_value(
                        serde_json::from_slice(&raw).unwrap_or(Value::Null),
                    ),
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
        let key = format!("{}/gen_id", s.prefix);
        let body = json!({"key": b64(key.as_bytes()), "value": b64(b"0")});
        let w = s.write("/v3/kv/put", &body).await?;
        match header_rev(&w.v) {
            0 => Err(unavailable("etcd answered a write without a revision")),
            rev => {
                let id = format_generated_id(rev);
                let mut minted = s.minted();
                if minted.len() >= MAX_MINTED {
                    minted.clear();
                }
                minted.insert(id.clone());
                Ok(id)
            }
        }
    }

    fn describe(&self) -> String {
        format!(
            "etcd:{}{}",
            self.shared.hosts_text(),
            self.shared.conf_prefix
        )
    }

    fn stale(&self) -> Option<String> {
        self.shared.health.down().map(|(since, reason)| {
            header_safe(&format!(
                "etcd unreachable since {}: {reason}",
                crate::timefmt::rfc3339(since)
            ))
        })
    }

    fn etcd_status(&self) -> Option<EtcdStatus> {
        Some(EtcdStatus {
            shared: self.shared.clone(),
        })
    }
}

/// A read-only view of the etcd store's state for the Control API and
/// the metrics.
#[derive(Clone)]
pub struct EtcdStatus {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for EtcdStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStatus")
            .field("endpoints", &self.shared.hosts_text())
            .finish_non_exhaustive()
    }
}

impl EtcdStatus {
    /// Every configured endpoint's state, in configured order.
    pub fn endpoints(&self) -> Vec<EndpointReport> {
        self.shared.health.report()
    }

    /// Whether some endpoint answers (`apisix_etcd_reachable`).
    pub fn reachable(&self) -> bool {
        self.shared.health.any_healthy()
    }

    /// The highest modification revision per kind of object (by its etcd
    /// directory name), as `apisix_etcd_modify_indexes` reports them.
    pub fn modify_indexes(&self) -> Vec<(&'static str, u64)> {
        let mut out: Vec<(&'static str, u64)> =
            Kind::ALL.iter().map(|k| (k.segment(), 0)).collect();
        self.shared.index.read(|c| {
            for e in c.objects().values() {
                if let Some(row) = out.iter_mut().find(|(seg, _)| *seg == e.kind.segment()) {
                    row.1 = row.1.max(e.mod_rev);
                }
            }
        });
        let max = out.iter().map(|(_, r)| *r).max().unwrap_or(0);
        out.push(("max_modify_index", max));
        out.push(("x_etcd_index", self.shared.index.revision()));
        out
    }

    /// The whole state as the Control API shows it.
    pub fn report(&self) -> Value {
        let time = |t: Option<std::time::SystemTime>| t.map(crate::timefmt::rfc3339);
        let endpoints: Vec<Value> = self
            .endpoints()
            .into_iter()
            .map(|e| {
                json!({
                    "endpoint": e.url,
                    "healthy": e.healthy,
                    "failing_since": time(e.failing_since),
                    "last_error": e.last_error,
                    "last_ok": time(e.last_ok),
                    "revision": e.revision,
                })
            })
            .collect();
        let indexes: serde_json::Map<String, Value> = self
            .modify_indexes()
            .into_iter()
            .map(|(k, r)| (k.to_string(), json!(r)))
            .collect();
        json!({
            "reachable": self.reachable(),
            "prefix": self.shared.conf_prefix,
            "keepalive_interval": self.shared.keepalive.as_secs(),
            "endpoints": endpoints,
            "modify_indexes": indexes,
        })
    }
}
