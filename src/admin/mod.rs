//! The Admin API, compatible with APISIX 3 (`/apisix/admin`).
//!
//! Request pipeline, in APISIX's order: `allow_admin` (socket address only;
//! forwarding headers never count), CORS preflight, the key check (constant
//! time over SHA-256 digests), then the resource handlers of [`handlers`].
//! The two checks wrap the whole router, so no route can bypass them.

pub mod error;
pub mod explain;
pub mod handlers;
pub mod introspect;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use ipnet::IpNet;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::config::{AdminRole, Config};
use crate::model::crypt::Keyring;
use crate::model::{EnabledPlugins, Kind};
use crate::snapshot::publish::Published;
use crate::store::Store;
pub use error::AdminError;

/// Largest accepted request body (APISIX allows 1.5 MiB).
pub const BODY_LIMIT: usize = 1536 * 1024;

/// How long a write waits for the data plane to serve it before the answer
/// says it does not.
pub const APPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// One configured admin key, kept only as a digest.
#[derive(PartialEq, Eq)]
struct KeyDigest {
    digest: [u8; 32],
    role: AdminRole,
}

/// Everything the handlers need; built once from the config.
pub struct AdminState {
    /// Where objects are stored.
    pub store: Arc<dyn Store>,
    /// The keys in force; SIGHUP swaps in those of the re-read config.
    keys: arc_swap::ArcSwap<Vec<KeyDigest>>,
    key_required: bool,
    allow: Option<Vec<IpNet>>,
    cors: bool,
    /// Whether stream routes may be managed (`proxy_mode` and `stream_proxy`).
    pub stream_enabled: bool,
    /// Key prefix in answers (`/apisix`).
    pub prefix: String,
    /// Stream plugins enabled in config.yaml (swapped by a plugin reload).
    pub plugins: arc_swap::ArcSwap<EnabledPlugins>,
    /// The config.yaml a plugin reload re-reads (`serve` sets it).
    pub config_path: std::sync::OnceLock<std::path::PathBuf>,
    /// The data plane's lasting state, when a data plane runs: a plugin
    /// reload puts the new `stream_plugins` in force there.
    pub carry: Option<Arc<crate::snapshot::Carry>>,
    /// Service registries configured (`discovery:`); an upstream naming
    /// another `discovery_type` is refused.
    pub discovery: Vec<String>,
    /// What the data plane has applied (and what failed), when a data
    /// plane runs: writes answer only once their revision is served.
    pub published: Option<watch::Receiver<Published>>,
    /// The data plane's current snapshot, when a data plane runs (read-only
    /// explain calls run the real router on it).
    pub snapshot: Option<crate::snapshot::publish::SharedSnapshot>,
    /// `data_encryption.keyring`: private keys are sealed with it before storage.
    pub keyring: Keyring,
    /// `nginx_config.http.client_body_timeout`: a body must arrive within it.
    pub body_timeout: Duration,
    /// How long a write waits to be served ([`APPLY_TIMEOUT`]).
    pub apply_timeout: Duration,
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState")
            .field("keys", &self.keys.load().len())
            .field("stream_enabled", &self.stream_enabled)
            .finish_non_exhaustive()
    }
}

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

/// The usable keys of a config (empty ones never match and are left out).
fn key_digests(config: &Config) -> Vec<KeyDigest> {
    config
        .deployment
        .admin
        .admin_key
        .iter()
        .filter(|k| !k.key.is_empty())
        .map(|k| KeyDigest {
            digest: digest(k.key.expose()),
            role: k.role,
        })
        .collect()
}

impl AdminState {
    /// Build the state from the validated config and an opened store.
    pub fn new(config: &Config, store: Arc<dyn Store>) -> AdminState {
        let admin = &config.deployment.admin;
        let keys = key_digests(config);
        if admin.admin_key_required && keys.is_empty() {
            // As APISIX: an empty key list matches no request (401), it
            // never turns the check off; only admin_key_required: false does.
            tracing::warn!(
                "deployment.admin.admin_key has no usable key: every Admin API request is answered 401 until a key is set (admin_key_required: false turns the check off)"
            );
        }
        AdminState {
            store,
            keys: arc_swap::ArcSwap::from_pointee(keys),
            key_required: admin.admin_key_required,
            allow: admin.allow_admin.clone(),
            cors: admin.enable_admin_cors,
            stream_enabled: config.stream_enabled(),
            prefix: config
                .deployment
                .etcd
                .prefix
                .trim_end_matches('/')
                .to_string(),
            plugins: arc_swap::ArcSwap::from_pointee(EnabledPlugins::of(config)),
            config_path: std::sync::OnceLock::new(),
            carry: None,
            discovery: config.discovery.types(),
            published: None,
            snapshot: None,
            keyring: Keyring::new(&config.apisix.data_encryption.keyring),
            body_timeout: config.nginx_config.http.client_body_timeout,
            apply_timeout: APPLY_TIMEOUT,
        }
    }

    /// Put the admin keys of a re-read config.yaml in force (SIGHUP), as an
    /// APISIX reload does: requests from then on are checked against them
    /// only. `Ok(true)` when they changed. A config whose keys are all
    /// empty is refused while keys are in force (an empty key is generated
    /// only at start), so a reload never opens the Admin API.
    pub fn reload_keys(&self, config: &Config) -> Result<bool, String> {
        let new = key_digests(config);
        let current = self.keys.load();
        if new == **current {
            return Ok(false);
        }
        if new.is_empty() {
            return Err("no usable admin_key (an empty key is generated only at start)".into());
        }
        self.keys.store(Arc::new(new));
        Ok(true)
    }

    /// Role of a presented token; every key is compared so timing reveals nothing.
    fn role_of(&self, token: &str) -> Option<AdminRole> {
        let presented = digest(token);
        let mut found = None;
        for k in self.keys.load().iter() {
            let diff = k
                .digest
                .iter()
                .zip(presented.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if diff == 0 && found.is_none() {
                found = Some(k.role);
            }
        }
        found
    }

    /// Wait (bounded by `apply_timeout`) until the data plane serves the
    /// store at revision `rev`, which holds a write of `kind`/`id`, so that
    /// a connection made right after a 2xx sees the change. An error, for a
    /// 503, when the rebuild of that revision failed, when it did not come
    /// within the bound, or when the snapshot leaves the object out.
    pub async fn wait_applied(&self, rev: u64, kind: Kind, id: &str) -> Result<(), AdminError> {
        let Some(rx) = &self.published else {
            return Ok(());
        };
        let mut rx = rx.clone();
        let waited = tokio::time::timeout(
            self.apply_timeout,
            rx.wait_for(|p| p.outcome(rev).is_some()),
        )
        .await;
        let failure = match waited {
            Err(_) => Some(format!(
                "the data plane did not apply revision {rev} within {:?}",
                self.apply_timeout
            )),
            Ok(Err(_)) => Some("the data plane has stopped".to_string()),
            Ok(Ok(p)) => match p.outcome(rev) {
                Some(Err(f)) => Some(format!(
                    "revision {} could not be applied: {}",
                    f.revision, f.reason
                )),
                _ => None,
            },
        };
        let failure = failure.or_else(|| {
            let snapshot = self.snapshot.as_ref()?.load();
            snapshot.rejected(kind, id).map(str::to_string)
        });
        let Some(reason) = failure else {
            return Ok(());
        };
        tracing::error!(
            kind = kind.segment(),
            id,
            revision = rev,
            reason = %reason,
            "stored change is not served"
        );
        Err(AdminError::NotApplied(format!(
            "{} [{id}] is stored but not served: {reason}",
            kind.noun()
        )))
    }
}

/// The Admin API router (serve it with `into_make_service_with_connect_info::<SocketAddr>()`).
pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/apisix/admin", any(handlers::admin_root))
        .route(
            "/apisix/admin/stream_routes_test",
            any(explain::stream_routes_test),
        )
        .route("/apisix/admin/plugins", any(introspect::plugins_all))
        .route("/apisix/admin/plugins/list", any(introspect::plugins_list))
        .route("/apisix/admin/plugins/reload", any(introspect::reload))
        .route("/apisix/admin/plugins/{name}", any(introspect::plugin))
        .route(
            "/apisix/admin/schema/validate/{resource}",
            any(introspect::schema_validate),
        )
        .route("/apisix/admin/{*rest}", any(handlers::dispatch))
        .fallback(handlers::not_found)
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .layer(middleware::map_response_with_state(
            state.clone(),
            common_headers,
        ))
        .with_state(state)
}

fn token_from(req: &Request) -> Option<String> {
    let from_query = query_pairs(req.uri().query().unwrap_or_default())
        .into_iter()
        .find(|(k, _)| k == "api_key")
        .map(|(_, v)| v);
    if from_query.is_some() {
        return from_query;
    }
    if let Some(v) = req.headers().get("x-api-key") {
        return Some(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    cookie(req.headers(), "x_api_key")
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// A query string as decoded `(key, value)` pairs, in order.
pub(crate) fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

/// Decode `%XX` and `+` in a query value.
pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `allow_admin`, preflight and key check, before any handler runs.
async fn guard(
    State(state): State<Arc<AdminState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    let ip = match peer.ip() {
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(std::net::IpAddr::V4)
            .unwrap_or(std::net::IpAddr::V6(v6)),
        v4 => v4,
    };
    if let Some(allow) = &state.allow {
        if !allow.iter().any(|net| net.contains(&ip)) {
            tracing::info!(%peer, "admin request refused by allow_admin");
            return AdminError::Forbidden(format!("access from {ip} is not allowed (allow_admin)"))
                .into_response();
        }
    }
    if req.method() == Method::OPTIONS && state.cors {
        return StatusCode::OK.into_response();
    }
    if state.key_required {
        let role = match token_from(&req) {
            None => return AdminError::Unauthorized("missing apikey").into_response(),
            Some(t) => match state.role_of(&t) {
                None => return AdminError::Unauthorized("wrong apikey").into_response(),
                Some(r) => r,
            },
        };
        if role == AdminRole::Viewer && req.method() != Method::GET && req.method() != Method::HEAD
        {
            return AdminError::Unauthorized("invalid method for role viewer").into_response();
        }
    }
    next.run(req).await
}

async fn common_headers(State(state): State<Arc<AdminState>>, mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert("x-api-version", HeaderValue::from_static("v3"));
    if state.cors {
        h.insert("access-control-allow-origin", HeaderValue::from_static("*"));
        h.insert(
            "access-control-allow-credentials",
            HeaderValue::from_static("true"),
        );
        h.insert(
            "access-control-expose-headers",
            HeaderValue::from_static("*"),
        );
        h.insert("access-control-max-age", HeaderValue::from_static("3600"));
        h.insert(
            "access-control-allow-methods",
            HeaderValue::from_static("POST, GET, PUT, OPTIONS, DELETE, PATCH"),
        );
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::publish::Failed;
    use crate::snapshot::{Carry, Snapshot};
    use crate::store::{Dump, Entry};

    #[tokio::test]
    async fn writes_are_acknowledged_only_once_served() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = crate::store::local::LocalStore::open(dir.path()).expect("store");
        let mut state = AdminState::new(&Config::default(), Arc::new(store));
        state.apply_timeout = Duration::from_millis(50);
        let (tx, rx) = watch::channel(Published {
            revision: 3,
            failed: None,
        });
        state.published = Some(rx);
        let ssl = Entry {
            kind: Kind::Ssl,
            id: "1".into(),
            value: Arc::new(serde_json::json!({"id": "1", "cert": "x", "key": "y"})),
            create_rev: 3,
            mod_rev: 3,
        };
        let snapshot = Snapshot::build(
            &Dump {
                revision: 3,
                entries: vec![ssl],
            },
            None,
            &Carry::default(),
        );
        state.snapshot = Some(Arc::new(arc_swap::ArcSwap::from_pointee(snapshot)));
        let message = |r: Result<(), AdminError>| match r {
            Err(AdminError::NotApplied(m)) => m,
            other => panic!("not a 503: {other:?}"),
        };

        assert!(state.wait_applied(3, Kind::StreamRoute, "1").await.is_ok());
        let m = message(state.wait_applied(3, Kind::Ssl, "1").await);
        assert!(m.starts_with("ssl [1] is stored but not served: "), "{m}");
        let m = message(state.wait_applied(4, Kind::Upstream, "u").await);
        assert_eq!(
            m,
            "upstream [u] is stored but not served: the data plane did not apply revision 4 within 50ms"
        );
        tx.send_modify(|p| {
            p.failed = Some(Failed {
                revision: 5,
                reason: "snapshot build failed: boom".into(),
            })
        });
        let m = message(state.wait_applied(4, Kind::Upstream, "u").await);
        assert_eq!(
            m,
            "upstream [u] is stored but not served: revision 5 could not be applied: snapshot build failed: boom"
        );
        drop(tx);
        let m = message(state.wait_applied(6, Kind::Upstream, "u").await);
        assert!(m.ends_with("the data plane has stopped"), "{m}");
    }

    #[test]
    fn reloaded_keys_replace_the_old_ones_and_never_become_none() {
        use crate::config::{AdminKey, Secret};
        let dir = tempfile::tempdir().expect("tempdir");
        let store = crate::store::local::LocalStore::open(dir.path()).expect("store");
        let with_keys = |keys: &[(&str, AdminRole)]| {
            let mut c = Config::default();
            c.deployment.admin.admin_key = keys
                .iter()
                .map(|(k, role)| AdminKey {
                    name: format!("{k}-name"),
                    key: Secret::new(*k),
                    role: *role,
                })
                .collect();
            c
        };
        let state = AdminState::new(&with_keys(&[("old", AdminRole::Admin)]), Arc::new(store));
        assert_eq!(state.role_of("old"), Some(AdminRole::Admin));
        let same = with_keys(&[("old", AdminRole::Admin)]);
        assert_eq!(state.reload_keys(&same), Ok(false));
        let new = with_keys(&[("new", AdminRole::Admin), ("look", AdminRole::Viewer)]);
        assert_eq!(state.reload_keys(&new), Ok(true));
        assert_eq!(state.role_of("old"), None);
        assert_eq!(state.role_of("new"), Some(AdminRole::Admin));
        assert_eq!(state.role_of("look"), Some(AdminRole::Viewer));
        // A reload with only empty keys would open the API: refused.
        let empty = with_keys(&[("", AdminRole::Admin)]);
        assert!(state.reload_keys(&empty).is_err());
        assert!(state.reload_keys(&with_keys(&[])).is_err());
        assert_eq!(state.role_of("new"), Some(AdminRole::Admin));
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b+c"), "a b c");
        assert_eq!(percent_decode("upstream_id%3D1"), "upstream_id=1");
        assert_eq!(percent_decode("bad%zz"), "bad%zz");
        assert_eq!(percent_decode("end%2"), "end%2");
    }
}
