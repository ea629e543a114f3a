//! Introspection and plugin reload, with APISIX's paths and answers
//! (apisix/admin/init.lua, apisix/admin/plugins.lua):
//! - `GET /apisix/admin/plugins/list?subsystem=stream`: the stream plugins
//!   this server runs (enabled by `stream_plugins` and implemented), highest
//!   priority first;
//! - `GET /apisix/admin/plugins/{name}?subsystem=stream`: the plugin's conf
//!   schema, rendered from the very definition the Admin API validates with;
//!   `GET /apisix/admin/plugins?all=true&subsystem=stream`: every one with
//!   its priority and schemas;
//! - `POST /apisix/admin/schema/validate/{resource}`: the resource's schema
//!   check alone, nothing stored;
//! - `PUT /apisix/admin/plugins/reload`: re-read `stream_plugins` (and
//!   `plugin_attr`) from config.yaml and compile every route again.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use super::handlers::{not_found, read_body};
use super::{query_pairs, AdminError, AdminState};
use crate::config::Config;
use crate::model::{self, EnabledPlugins, Kind};

type Result<T> = std::result::Result<T, AdminError>;

/// `subsystem` of the query (`http` when absent).
fn subsystem(uri: &Uri) -> String {
    query_pairs(uri.query().unwrap_or_default())
        .into_iter()
        .find(|(k, _)| k == "subsystem")
        .map_or_else(|| "http".to_string(), |(_, v)| v)
}

fn query_has(uri: &Uri, key: &str, value: &str) -> bool {
    query_pairs(uri.query().unwrap_or_default())
        .iter()
        .any(|(k, v)| k == key && v == value)
}

/// The stream plugins that run here: enabled and implemented, highest
/// priority first.
pub fn running(enabled: &EnabledPlugins) -> Vec<&'static str> {
    let mut names: Vec<&'static str> = model::plugins::IMPLEMENTED
        .iter()
        .copied()
        .filter(|n| enabled.contains(n))
        .collect();
    names.sort_by_key(|n| std::cmp::Reverse(crate::plugins::priority(n).unwrap_or(0)));
    names
}

/// `GET /apisix/admin/plugins/list`.
pub async fn plugins_list(
    State(state): State<Arc<AdminState>>,
    method: Method,
    uri: Uri,
) -> Result<Response> {
    if method != Method::GET {
        return Ok(not_found().await);
    }
    match subsystem(&uri).as_str() {
        // This server runs no HTTP plugins.
        "http" => Ok(Json(Value::Array(Vec::new())).into_response()),
        "stream" => Ok(Json(running(&state.plugins.load())).into_response()),
        _ => Err(AdminError::PlainBadRequest("invalid subsystem passed")),
    }
}

/// The subsystem of a plugin query, refused as APISIX does when unknown.
fn checked_subsystem(uri: &Uri) -> Result<String> {
    let sub = subsystem(uri);
    if sub != "http" && sub != "stream" {
        return Err(AdminError::BadRequest(format!(
            "unsupported subsystem: {sub}"
        )));
    }
    Ok(sub)
}

/// What `?all=true` lists of one plugin.
fn describe(name: &str) -> Value {
    let mut v = json!({
        "version": 0.1,
        "priority": crate::plugins::priority(name),
        "schema": model::plugin_schema_json(name),
    });
    if let Some(meta) = model::plugin_metadata_schema_json(name) {
        v["metadata_schema"] = meta;
    }
    v
}

/// `GET /apisix/admin/plugins?all=true&subsystem=stream`.
pub async fn plugins_all(
    State(state): State<Arc<AdminState>>,
    method: Method,
    uri: Uri,
) -> Result<Response> {
    if method != Method::GET {
        return Ok(not_found().await);
    }
    let sub = checked_subsystem(&uri)?;
    if !query_has(&uri, "all", "true") {
        return Err(AdminError::NotFound(format!(
            "plugin not found in subsystem {sub}"
        )));
    }
    let mut all = Map::new();
    if sub == "stream" {
        for name in running(&state.plugins.load()) {
            all.insert(name.to_string(), describe(name));
        }
    }
    Ok(Json(Value::Object(all)).into_response())
}

/// `GET /apisix/admin/plugins/{name}`.
pub async fn plugin(
    State(state): State<Arc<AdminState>>,
    method: Method,
    uri: Uri,
    Path(name): Path<String>,
) -> Result<Response> {
    if method != Method::GET {
        return Ok(not_found().await);
    }
    let sub = checked_subsystem(&uri)?;
    let runs = sub == "stream" && running(&state.plugins.load()).contains(&name.as_str());
    if !runs {
        return Err(AdminError::NotFound(format!(
            "plugin not found in subsystem {sub}"
        )));
    }
    if query_has(&uri, "schema_type", "consumer") {
        return Err(AdminError::BadRequest("not found schema".into()));
    }
    let schema = model::plugin_schema_json(&name)
        .ok_or_else(|| AdminError::BadRequest("not found schema".into()))?;
    Ok(Json(schema).into_response())
}

/// `POST /apisix/admin/schema/validate/{resource}`: 200 with an empty body
/// when the body passes the resource's schema, else 400 with the schema
/// error as `error_msg`.
pub async fn schema_validate(
    State(state): State<Arc<AdminState>>,
    method: Method,
    headers: HeaderMap,
    Path(resource): Path<String>,
    body: Body,
) -> Result<Response> {
    if method != Method::POST {
        return Ok(not_found().await);
    }
    let kind = Kind::from_segment(&resource)
        .ok_or_else(|| AdminError::NotFound(format!("Unsupported resource type: {resource}")))?;
    let body = read_body(&state, &headers, body)
        .await?
        .unwrap_or(Value::Null);
    model::check_schema(kind, &body).map_err(AdminError::BadRequest)?;
    Ok(StatusCode::OK.into_response())
}

/// How long a reload waits for every route to be compiled again.
const RELOAD_WAIT: Duration = Duration::from_secs(5);

/// `PUT /apisix/admin/plugins/reload`: `done` once the re-read
/// `stream_plugins` are in force; other methods get APISIX's 405.
pub async fn reload(State(state): State<Arc<AdminState>>, method: Method) -> Result<Response> {
    if method != Method::PUT {
        return Err(AdminError::MethodNotAllowed(format!(
            "please use PUT method to reload the plugins, {method} method is not allowed."
        )));
    }
    let Some(path) = state.config_path.get() else {
        return Err(AdminError::NotApplied(
            "plugins cannot be reloaded: the server was not started from a config file".into(),
        ));
    };
    let config = Config::load(path)
        .map_err(|e| AdminError::NotApplied(format!("failed to reload plugins: {e}")))?;
    state.plugins.store(Arc::new(EnabledPlugins::of(&config)));
    if let Some(carry) = &state.carry {
        carry
            .plugins
            .configure(&config.stream_plugins, &config.deployment.etcd.prefix);
        let generation = carry.plugins.generation();
        if let Some(snapshot) = &state.snapshot {
            let applied = tokio::time::timeout(RELOAD_WAIT, async {
                while snapshot.load().plugin_generation() < generation {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await;
            if applied.is_err() {
                return Err(AdminError::NotApplied(format!(
                    "the data plane did not apply the reloaded plugins within {RELOAD_WAIT:?}"
                )));
            }
        }
    }
    tracing::info!(
        stream_plugins = ?config.stream_plugins,
        "plugins reloaded from {} (plugin_attr.prometheus export server settings need a restart)",
        path.display()
    );
    Ok((StatusCode::OK, "done").into_response())
}
