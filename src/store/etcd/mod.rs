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
//! The parts: [`client`] speaks to the gateway (auth, TLS, fail-over),
//! [`watch`] follows the prefix and repairs a lost watch, [`cache`] turns
//! etcd's key-values into the store's [`Index`].

mod cache;
mod client;
mod watch;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use self::cache::{apply_own, Tracking};
use self::client::{b64, build_hosts, header_rev, header_safe, num, unb64, CallError, Conn, Host};
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
    watch_timeout: Duration,
    resync_delay: Duration,
    creds: Option<(String, Secret)>,
    /// The plugins this instance enables (others are accepted, not used).
    plugins: EnabledPlugins,
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
        let prefix = conf.prefix.trim_end_matches('/').to_string();
        let shared = Arc::new(Shared {
            hosts,
            prefix,
            conf_prefix: conf.prefix.clone(),
            timeout,
            watch_timeout: crate::model::duration::whole_secs(conf.watch_timeout.max(1)),
            resync_delay: crate::model::duration::whole_secs(conf.resync_delay),
            creds: conf
                .user
                .as_ref()
                .map(|u| (u.clone(), conf.password.clone().unwrap_or_default())),
            plugins,
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
        let host = s.writable()?;
        let key = format!("{}/gen_id", s.prefix);
        let body = json!({"key": b64(key.as_bytes()), "value": b64(b"0")});
        let v = s.write(host, "/v3/kv/put", &body).await?;
        match header_rev(&v) {
            0 => Err(unavailable("etcd answered a write without a revision")),
            rev => Ok(format_generated_id(rev)),
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
        let conn = self.shared.conn();
        conn.down.as_ref().map(|(since, reason)| {
            header_safe(&format!(
                "etcd unreachable since {}: {reason}",
                crate::timefmt::rfc3339(*since)
            ))
        })
    }
}
