//! HashiCorp Vault's KV engine as a secret manager, as APISIX's
//! `apisix/secret/vault.lua` reads it.
//!
//! `$secret://vault/ID/path/to/name/key` with the `secrets` object
//! `vault/ID` (`uri`, `prefix`, `token`, `namespace`) is `GET
//! {uri}/v1/{prefix}/path/to/name` with `X-Vault-Token` (and
//! `X-Vault-Namespace`), and the value is `key` of the secret's data. The
//! answer of a KV version 1 engine (`{"data": {key: value}}`, what APISIX
//! reads) and of a version 2 engine (`{"data": {"data": {key: value},
//! "metadata": {...}}}`, reached with a `prefix` ending in `data`, such as
//! `secret/data`) are both understood. `token` may itself be an `$env://`
//! reference.

use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;

use super::{env_value, Reference};
use crate::model::schema::Schema;
use crate::tls::Trust;

/// How long one read from Vault may take (APISIX's default).
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// APISIX's schema of a Vault `secrets` object.
pub(crate) fn schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        Schema::object()
            .prop(
                "uri",
                Schema::string().pattern(r"^[^\/]+:\/\/([\da-zA-Z.-]+|\[[\da-fA-F:]+\])(:\d+)?"),
            )
            .prop("prefix", Schema::string())
            .prop("token", Schema::string())
            .prop("namespace", Schema::string())
            .required(&["uri", "prefix", "token"])
    })
}

/// The HTTP client Vault is read with: over https, the server's certificate
/// is checked against `trust` (`apisix.ssl.ssl_trusted_certificate`).
pub fn client(trust: &Trust) -> Result<reqwest::Client, String> {
    trust
        .http_client()?
        .timeout(TIMEOUT)
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))
}

/// `/v1/{prefix}/{path}` with empty and `.` segments dropped and `..`
/// applied, as APISIX normalises it.
fn request_path(prefix: &str, path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for seg in ["v1", prefix, path].iter().flat_map(|p| p.split('/')) {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    format!("/{}", parts.join("/"))
}

/// Read `path/key` (the part of the reference after `vault/ID/`) through
/// the `secrets` object `conf`.
pub async fn get(client: &reqwest::Client, conf: &Value, key: &str) -> Result<String, String> {
    let (path, name) = key
        .rsplit_once('/')
        .ok_or_else(|| format!("error key format, key: {key}"))?;
    if path.is_empty() {
        return Err(format!("can't find main key, key: {key}"));
    }
    if name.is_empty() {
        return Err(format!("can't find sub key, key: {key}"));
    }
    let field = |f: &str| conf.get(f).and_then(Value::as_str).unwrap_or_default();
    let token = match Reference::parse(field("token")) {
        Some(Ok(Reference::Env { name, key })) => env_value(&name, key.as_deref())
            .map_err(|e| format!("cannot resolve the vault token: {e}"))?,
        _ => field("token").to_string(),
    };
    let url = format!(
        "{}{}",
        field("uri").trim_end_matches('/'),
        request_path(field("prefix"), path)
    );
    let mut req = client.get(&url).header("X-Vault-Token", token);
    if let Some(ns) = conf.get("namespace").and_then(Value::as_str) {
        req = req.header("X-Vault-Namespace", ns);
    }
    let res = req
        .send()
        .await
        .map_err(|e| format!("failed to retrieve data from vault at {url}: {}", chain(&e)))?;
    let status = res.status();
    let body = res
        .text()
        .await
        .map_err(|e| format!("failed to retrieve data from vault at {url}: {}", chain(&e)))?;
    let json: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    if !status.is_success() {
        let errors = json
            .get("errors")
            .and_then(Value::as_array)
            .map(|e| {
                e.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .unwrap_or_default();
        return Err(format!("vault answered {status} for {url}: {errors}"));
    }
    let data = json
        .get("data")
        .filter(|d| d.is_object())
        .ok_or_else(|| format!("no data in vault's answer for {url}"))?;
    // KV version 2 wraps the secret in data.data, beside data.metadata.
    let data = match (data.get("data"), data.get("metadata")) {
        (Some(inner), Some(_)) if inner.is_object() => inner,
        _ => data,
    };
    match data.get(name) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Null) | None => Err(format!("no key {name} in vault secret {path}")),
        Some(other) => Ok(other.to_string()),
    }
}

/// An error with its sources, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_paths_are_normalised_as_apisix_does() {
        assert_eq!(request_path("kv/apisix", "foo"), "/v1/kv/apisix/foo");
        assert_eq!(request_path("/kv//apisix/", "./a/b"), "/v1/kv/apisix/a/b");
        assert_eq!(request_path("secret/data", "x/../y"), "/v1/secret/data/y");
    }

    #[test]
    fn the_schema_is_apisix_s() {
        let ok = serde_json::json!({"uri": "http://127.0.0.1:8200", "prefix": "kv/apisix", "token": "root"});
        assert!(schema().check(&ok).is_ok());
        let e = schema()
            .check(&serde_json::json!({"uri": "http://127.0.0.1:8200", "prefix": "kv"}))
            .expect_err("token is required");
        assert!(e.contains("token"), "{e}");
        let e = schema()
            .check(&serde_json::json!({"uri": "not a uri", "prefix": "kv", "token": "t"}))
            .expect_err("bad uri");
        assert!(e.contains("uri"), "{e}");
    }
}
