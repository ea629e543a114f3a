//! CRUD for `stream_routes`, `upstreams`, `ssls`, `services` and
//! `plugin_metadata`, with APISIX 3's ids,
//! status codes, response shapes and error texts.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::{percent_decode, query_pairs, AdminError, AdminState, BODY_LIMIT};
use crate::model::{self, Kind, NotEnabled};
use crate::store::{Entry, Expect};

type Result<T> = std::result::Result<T, AdminError>;

/// `HEAD /apisix/admin` answers 200, as APISIX does.
pub async fn admin_root(method: Method) -> Response {
    if method == Method::HEAD || method == Method::GET {
        StatusCode::OK.into_response()
    } else {
        not_found().await
    }
}

/// Anything outside the Admin API's routes.
pub async fn not_found() -> Response {
    AdminError::NotFound("404 Not Found".into()).into_response()
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A parsed request path below `/apisix/admin/`.
struct Target {
    kind: Kind,
    id: Option<String>,
    sub_path: Option<String>,
}

fn parse_target(state: &AdminState, rest: &str) -> Result<Target> {
    let mut parts = rest.splitn(3, '/');
    let res = parts.next().unwrap_or_default();
    if res == "stream_routes" && !state.stream_enabled {
        return Err(AdminError::BadRequest(
            "stream mode is disabled, can not add stream routes".into(),
        ));
    }
    let kind = Kind::from_segment(res)
        .ok_or_else(|| AdminError::NotFound(format!("Unsupported resource type: {res}")))?;
    let mut id = parts.next().filter(|s| !s.is_empty()).map(str::to_string);
    if kind == Kind::Secret {
        // `secrets/{manager}/{id}`: the stored id is `manager/id`.
        let rest: Vec<&str> = parts.next().unwrap_or_default().splitn(2, '/').collect();
        let sub = rest.get(1).copied().unwrap_or_default();
        id = match (id, rest.first().filter(|s| !s.is_empty())) {
            (Some(manager), Some(secret)) => Some(format!("{manager}/{secret}")),
            (Some(manager), None) => Some(format!("{manager}/")),
            (None, _) => None,
        };
        let sub_path = Some(sub.trim_end_matches('/'))
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        return Ok(Target { kind, id, sub_path });
    }
    let sub_path = parts
        .next()
        .map(|s| s.trim_end_matches('/'))
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    Ok(Target { kind, id, sub_path })
}

fn arg<'a>(args: &'a [(String, String)], name: &str) -> Option<&'a str> {
    args.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

pub(super) async fn read_body(
    state: &AdminState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Option<Value>> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > BODY_LIMIT) {
        return Err(AdminError::TooLarge(BODY_LIMIT));
    }
    // A slow sender must not hold a handler (and its connection) forever.
    let limit = state.body_timeout;
    let bytes: Bytes = tokio::time::timeout(limit, axum::body::to_bytes(body, BODY_LIMIT))
        .await
        .map_err(|_| AdminError::BodyTimeout(limit.as_secs_f64()))?
        .map_err(|_| AdminError::TooLarge(BODY_LIMIT))?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| AdminError::BadBody {
            msg: e.to_string(),
            raw: String::from_utf8_lossy(&bytes).into_owned(),
        })
}

/// Header set on reads served from the last known data while the store's
/// cluster is unreachable; its value says why.
pub const STALE_HEADER: &str = "x-apisix-stale";

/// One Admin API call on `/apisix/admin/<kind>[/<id>[/<sub path>]]`.
pub async fn dispatch(
    State(state): State<Arc<AdminState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Path(rest): Path<String>,
    body: Body,
) -> Result<Response> {
    let target = parse_target(&state, &rest)?;
    let args = query_pairs(uri.query().unwrap_or_default());
    if let Some(ttl) = arg(&args, "ttl") {
        if ttl.parse::<f64>().is_err() {
            return Err(AdminError::BadRequest(
                "invalid argument ttl: should be a number".into(),
            ));
        }
        if method == Method::PUT || method == Method::POST {
            return Err(AdminError::BadRequest(
                "ttl is not supported: stored objects do not expire".into(),
            ));
        }
    }
    let force = arg(&args, "force") == Some("true");
    let noun = target.kind.noun();
    if target.kind == Kind::PluginMetadata {
        match method {
            Method::POST | Method::PATCH => {
                return Err(AdminError::MethodNotAllowed(format!(
                    "not supported `{method}` method for plugin_metadata"
                )))
            }
            Method::PUT if target.sub_path.is_none() => {
                let body = read_body(&state, &headers, body).await?;
                return put_metadata(&state, target.id, body).await;
            }
            _ => {}
        }
    }
    match method {
        Method::GET if target.sub_path.is_none() => {
            let mut resp = match &target.id {
                None => list(&state, target.kind, &args).await?,
                Some(id) => get_one(&state, target.kind, id).await?,
            };
            if let Some(why) = state.store.stale() {
                // Reads keep working from the last known data; say so.
                if let Ok(v) = axum::http::HeaderValue::from_str(&why) {
                    resp.headers_mut().insert(STALE_HEADER, v);
                }
            }
            Ok(resp)
        }
        Method::PUT if target.sub_path.is_none() => {
            let body = read_body(&state, &headers, body).await?;
            put(&state, target.kind, target.id, body).await
        }
        Method::POST if target.kind == Kind::Secret => Err(AdminError::MethodNotAllowed(
            "not supported `POST` method for secret".into(),
        )),
        Method::POST if target.sub_path.is_none() => {
            let body = read_body(&state, &headers, body).await?;
            if target.id.is_some() {
                return Err(AdminError::BadRequest(format!(
                    "wrong {noun} id, do not need it"
                )));
            }
            post(&state, target.kind, body).await
        }
        Method::DELETE if target.sub_path.is_none() => {
            let id = target
                .id
                .ok_or_else(|| AdminError::BadRequest(format!("missing {noun} id")))?;
            delete(&state, target.kind, &id, force).await
        }
        Method::PATCH => {
            let body = read_body(&state, &headers, body).await?;
            let id = target
                .id
                .ok_or_else(|| AdminError::BadRequest(format!("missing {noun} id")))?;
            patch(&state, target.kind, &id, target.sub_path.as_deref(), body).await
        }
        _ => Ok(not_found().await),
    }
}

fn key_of(state: &AdminState, kind: Kind, id: &str) -> String {
    format!("{}/{}/{}", state.prefix, kind.segment(), id)
}

fn public_value(kind: Kind, value: &Value) -> Value {
    let mut v = value.clone();
    model::strip_secrets(kind, &mut v);
    v
}

fn item(state: &AdminState, e: &Entry) -> Value {
    json!({
        "key": key_of(state, e.kind, &e.id),
        "value": public_value(e.kind, &e.value),
        "createdIndex": e.create_rev,
        "modifiedIndex": e.mod_rev,
    })
}

async fn get_one(state: &AdminState, kind: Kind, id: &str) -> Result<Response> {
    let e = state
        .store
        .get(kind, id)
        .await?
        .ok_or(AdminError::KeyNotFound)?;
    Ok(Json(item(state, &e)).into_response())
}

async fn list(state: &AdminState, kind: Kind, args: &[(String, String)]) -> Result<Response> {
    let mut entries = state.store.list(kind).await?;
    if let Some(pattern) = arg(args, "name") {
        let re = regex::Regex::new(pattern)
            .map_err(|e| AdminError::BadRequest(format!("invalid argument name: {e}")))?;
        entries.retain(|e| {
            e.value
                .get("name")
                .and_then(Value::as_str)
                .is_some_and(|n| re.is_match(n))
        });
    }
    if let Some(label) = arg(args, "label") {
        entries.retain(|e| {
            e.value
                .get("labels")
                .and_then(Value::as_object)
                .is_some_and(|l| l.contains_key(label))
        });
    }
    if let (Some(filter), Kind::StreamRoute) = (arg(args, "filter"), kind) {
        let conds: Vec<(String, String)> = filter
            .split('&')
            .filter_map(|c| c.split_once('='))
            .filter(|(k, _)| *k == "service_id" || *k == "upstream_id")
            .map(|(k, v)| (k.to_string(), percent_decode(v)))
            .collect();
        entries.retain(|e| {
            conds.iter().all(|(k, want)| {
                e.value
                    .get(k)
                    .and_then(model::id_string)
                    .is_some_and(|have| &have == want)
            })
        });
    }
    let total = entries.len();
    if let (Some(page), Some(size)) = (arg(args, "page"), arg(args, "page_size")) {
        let size = size
            .parse::<usize>()
            .ok()
            .filter(|s| (10..=500).contains(s))
            .ok_or(AdminError::PlainBadRequest(
                "page_size must be between 10 and 500",
            ))?;
        let page = page
            .parse::<usize>()
            .ok()
            .filter(|p| *p >= 1)
            .ok_or_else(|| {
                AdminError::BadRequest("invalid argument page: should be an integer >= 1".into())
            })?;
        entries.sort_by_key(|e| e.create_rev);
        entries = entries
            .into_iter()
            .skip((page - 1).saturating_mul(size))
            .take(size)
            .collect();
    }
    let list: Vec<Value> = entries.iter().map(|e| item(state, e)).collect();
    Ok(Json(json!({"list": list, "total": total})).into_response())
}

/// The id text of a body `id`: strings as they are, numbers printed.
fn id_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn invalid_id() -> AdminError {
    AdminError::BadRequest(
        "invalid configuration: property \"id\" validation failed: object matches none of the required"
            .into(),
    )
}

/// Checks that need other stored objects (APISIX's `checker` steps).
async fn check_references(
    state: &AdminState,
    kind: Kind,
    id: Option<&str>,
    conf: &Value,
) -> Result<()> {
    for (ref_kind, ref_id) in model::references(kind, conf) {
        let found = state.store.get(ref_kind, &ref_id).await?;
        match (ref_kind, found) {
            (Kind::Upstream, None) => {
                return Err(AdminError::BadRequest(format!(
                    "failed to fetch upstream info by upstream id [{ref_id}], response code: 404"
                )))
            }
            (Kind::Ssl, None) => {
                return Err(AdminError::BadRequest(format!(
                    "failed to fetch ssl info by ssl id [{ref_id}], response code: 404"
                )))
            }
            (Kind::Ssl, Some(e))
                if e.value.get("type").and_then(Value::as_str) != Some("client") =>
            {
                return Err(AdminError::BadRequest(format!(
                    "failed to fetch ssl info by ssl id [{ref_id}], wrong ssl type"
                )))
            }
            _ => {}
        }
    }
    if kind != Kind::StreamRoute {
        return Ok(());
    }
    if let Some(sid) = conf.get("service_id").and_then(model::id_string) {
        if state.store.get(Kind::Service, &sid).await?.is_none() {
            return Err(AdminError::BadRequest(format!(
                "failed to fetch service info by service id [{sid}], response code: 404"
            )));
        }
    }
    let protocol = conf.get("protocol");
    if let Some(superior) = protocol
        .and_then(|p| p.get("superior_id"))
        .and_then(model::id_string)
    {
        if id == Some(superior.as_str()) {
            return Err(AdminError::BadRequest(
                "stream route can not set itself as superior_id".into(),
            ));
        }
        let sup = state
            .store
            .get(Kind::StreamRoute, &superior)
            .await?
            .ok_or_else(|| {
                AdminError::BadRequest(format!(
                    "failed to fetch stream routes[{superior}], response code: 404"
                ))
            })?;
        let mine = protocol.and_then(|p| p.get("name")).and_then(Value::as_str);
        let theirs = sup
            .value
            .get("protocol")
            .and_then(|p| p.get("name"))
            .and_then(Value::as_str);
        if mine != theirs {
            return Err(AdminError::BadRequest(format!(
                "protocol mismatch: subordinate protocol [{}] does not match superior protocol [{}]",
                mine.unwrap_or_default(),
                theirs.unwrap_or_default()
            )));
        }
    }
    Ok(())
}

fn validate(state: &AdminState, kind: Kind, conf: &Value) -> Result<()> {
    model::validate(kind, conf, &state.plugins.load(), NotEnabled::Refuse)
        .map_err(AdminError::BadRequest)?;
    crate::discovery::check_types(conf, &state.discovery).map_err(AdminError::BadRequest)
}

fn set_field(conf: &mut Value, name: &str, v: Value) {
    if let Some(obj) = conf.as_object_mut() {
        obj.insert(name.to_string(), v);
    }
}

async fn store_and_answer(
    state: &AdminState,
    kind: Kind,
    id: &str,
    conf: Value,
    expect: Expect,
    status_created: StatusCode,
) -> Result<Response> {
    let mut conf = conf;
    state.keyring.seal(kind, &mut conf);
    let out = state.store.put(kind, id, conf, expect).await?;
    state.wait_applied(out.entry.mod_rev, kind, id).await?;
    let status = if out.created {
        status_created
    } else {
        StatusCode::OK
    };
    let body = json!({
        "key": key_of(state, kind, id),
        "value": public_value(kind, &out.entry.value),
    });
    Ok((status, Json(body)).into_response())
}

async fn put(
    state: &AdminState,
    kind: Kind,
    path_id: Option<String>,
    body: Option<Value>,
) -> Result<Response> {
    let mut conf = body.ok_or_else(|| AdminError::BadRequest("missing configurations".into()))?;
    let noun = kind.noun();
    let body_id = conf.get("id").cloned();
    let id = match (path_id, body_id) {
        (None, None) => return Err(AdminError::BadRequest(format!("missing {noun} id"))),
        (Some(p), Some(b)) => {
            let b_text = id_text(&b).unwrap_or_else(|| b.to_string());
            if b_text != p {
                return Err(AdminError::BadRequest(format!("wrong {noun} id")));
            }
            p
        }
        (Some(p), None) => p,
        (None, Some(b)) => id_text(&b).ok_or_else(invalid_id)?,
    };
    set_field(&mut conf, "id", Value::String(id.clone()));
    model::check_forbidden_times(&conf).map_err(AdminError::BadRequest)?;
    validate(state, kind, &conf)?;
    // A secret's id is `manager/id`: the id rule holds for its second part.
    let own_id = match kind {
        Kind::Secret => id.split_once('/').map_or("", |(_, i)| i),
        _ => id.as_str(),
    };
    if !model::is_valid_id(&Value::String(own_id.to_string())) {
        return Err(invalid_id());
    }
    check_references(state, kind, Some(&id), &conf).await?;
    let now = now();
    let create_time = match state.store.get(kind, &id).await? {
        Some(old) => old.value.get("create_time").cloned().unwrap_or(json!(now)),
        None => json!(now),
    };
    set_field(&mut conf, "create_time", create_time);
    set_field(&mut conf, "update_time", json!(now));
    store_and_answer(state, kind, &id, conf, Expect::Any, StatusCode::CREATED).await
}

/// `PUT /apisix/admin/plugin_metadata/<plugin>`: the id is the plugin's
/// name, and no timestamps are added (as APISIX).
async fn put_metadata(
    state: &AdminState,
    path_id: Option<String>,
    body: Option<Value>,
) -> Result<Response> {
    let mut conf = body.ok_or_else(|| AdminError::BadRequest("missing configurations".into()))?;
    model::check_forbidden_times(&conf).map_err(AdminError::BadRequest)?;
    let Some(name) = path_id else {
        return Err(AdminError::BadRequest("missing plugin name".into()));
    };
    set_field(&mut conf, "id", Value::String(name.clone()));
    validate(state, Kind::PluginMetadata, &conf)?;
    store_and_answer(
        state,
        Kind::PluginMetadata,
        &name,
        conf,
        Expect::Any,
        StatusCode::CREATED,
    )
    .await
}

async fn post(state: &AdminState, kind: Kind, body: Option<Value>) -> Result<Response> {
    let mut conf = body.ok_or_else(|| AdminError::BadRequest("missing configurations".into()))?;
    if conf.get("id").is_some() {
        return Err(AdminError::BadRequest(format!(
            "wrong {} id, do not need it",
            kind.noun()
        )));
    }
    model::check_forbidden_times(&conf).map_err(AdminError::BadRequest)?;
    validate(state, kind, &conf)?;
    check_references(state, kind, None, &conf).await?;
    let id = state.store.next_id().await?;
    let now = now();
    set_field(&mut conf, "id", Value::String(id.clone()));
    set_field(&mut conf, "create_time", json!(now));
    set_field(&mut conf, "update_time", json!(now));
    store_and_answer(state, kind, &id, conf, Expect::Any, StatusCode::CREATED).await
}

/// Who still uses the object about to be deleted, as APISIX words it.
async fn still_used(state: &AdminState, kind: Kind, id: &str) -> Result<Option<String>> {
    let uses = |v: &Value, path: &[&str]| {
        let mut cur = v;
        for p in path {
            match cur.get(*p) {
                Some(next) => cur = next,
                None => return false,
            }
        }
        model::id_string(cur).as_deref() == Some(id)
    };
    // Which objects may refer to this kind, through which field, and how
    // APISIX words the refusal.
    type Message = fn(&str) -> String;
    let checks: &[(Kind, &[&str], Message)] = match kind {
        Kind::Upstream => &[
            (Kind::StreamRoute, &["upstream_id"], |user| {
                format!("can not delete this upstream, stream route [{user}] is still using it now")
            }),
            (Kind::Service, &["upstream_id"], |user| {
                format!("can not delete this upstream, service [{user}] is still using it now")
            }),
        ],
        Kind::StreamRoute => &[(Kind::StreamRoute, &["protocol", "superior_id"], |user| {
            format!(
                "can not delete this stream route directly, stream route [{user}] is still using it as superior_id"
            )
        })],
        Kind::Ssl => &[(Kind::Upstream, &["tls", "client_cert_id"], |user| {
            format!("can not delete this ssl, upstream [{user}] is still using it now")
        })],
        Kind::Service => &[(Kind::StreamRoute, &["service_id"], |user| {
            format!(
                "can not delete this service directly, stream_route [{user}] is still using it now"
            )
        })],
        // As APISIX: references to a secret are not tracked.
        Kind::PluginMetadata | Kind::Secret => &[],
    };
    for (users, path, message) in checks {
        let found = state
            .store
            .list(*users)
            .await?
            .iter()
            .find(|e| !(e.kind == kind && e.id == id) && uses(&e.value, path))
            .map(|e| message(&e.id));
        if found.is_some() {
            return Ok(found);
        }
    }
    Ok(None)
}

async fn delete(state: &AdminState, kind: Kind, id: &str, force: bool) -> Result<Response> {
    // Reads do not show a stored object that cannot be served (a route
    // marked unservable, a value etcd holds that fails its checks), but it
    // can still be deleted: the store says whether there was anything.
    if !force {
        if let Some(msg) = still_used(state, kind, id).await? {
            return Err(AdminError::BadRequest(msg));
        }
    }
    state
        .store
        .delete(kind, id)
        .await?
        .ok_or(AdminError::KeyNotFound)?;
    state.wait_applied(state.store.revision(), kind, id).await?;
    Ok(Json(json!({"deleted": id, "key": key_of(state, kind, id)})).into_response())
}

async fn patch(
    state: &AdminState,
    kind: Kind,
    id: &str,
    sub_path: Option<&str>,
    body: Option<Value>,
) -> Result<Response> {
    let body = body.ok_or_else(|| AdminError::BadRequest("missing new configuration".into()))?;
    let existing = state
        .store
        .get(kind, id)
        .await?
        .ok_or(AdminError::KeyNotFound)?;
    let mut conf = (*existing.value).clone();
    // Merge and validate on clear text; the result is sealed again on store.
    state.keyring.open(kind, &mut conf);
    let now = now();
    match sub_path {
        None => {
            if !body.is_object() {
                return Err(AdminError::BadRequest("invalid configuration".into()));
            }
            let keeps_update_time = body.get("update_time").is_some();
            model::merge_patch(&mut conf, body);
            if !keeps_update_time {
                set_field(&mut conf, "update_time", json!(now));
            }
        }
        Some(path) => {
            model::patch_sub_path(&mut conf, path, body).map_err(AdminError::BadRequest)?;
            set_field(&mut conf, "update_time", json!(now));
        }
    }
    set_field(&mut conf, "id", Value::String(id.to_string()));
    if let Some(ct) = existing.value.get("create_time") {
        set_field(&mut conf, "create_time", ct.clone());
    }
    validate(state, kind, &conf)?;
    check_references(state, kind, Some(id), &conf).await?;
    store_and_answer(
        state,
        kind,
        id,
        conf,
        Expect::ModRev(existing.mod_rev),
        StatusCode::OK,
    )
    .await
}
