//! [`AdminClient`]: typed Admin API calls for the command line, each failure
//! turned into one line that says what happened and what to try.
//!
//! The calls run on a current-thread tokio runtime owned by the client: the
//! command line makes one request at a time and needs no worker threads.

use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::model::{self, Kind};

/// An object that does not exist (HTTP 404); its message is complete, so
/// callers add no context to it.
#[derive(Debug, thiserror::Error)]
#[error("{noun} {id:?} does not exist")]
pub struct NotFound {
    /// What kind of object.
    pub noun: &'static str,
    /// The id asked for.
    pub id: String,
}

/// Where the Admin API is and how to authenticate, after precedence.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Base URL without a trailing slash, e.g. `http://127.0.0.1:9180`.
    pub url: String,
    /// The `X-API-KEY` value, if any; never printed by `Debug`.
    pub key: Option<String>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &self.url)
            .field("key", &self.key.as_ref().map(|_| "***"))
            .finish()
    }
}

/// A blocking facade over the Admin API.
pub struct AdminClient {
    http: reqwest::Client,
    runtime: tokio::runtime::Runtime,
    endpoint: Endpoint,
}

impl std::fmt::Debug for AdminClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminClient")
            .field("url", &self.endpoint.url)
            .finish_non_exhaustive()
    }
}

/// Make `--admin-url` text a base URL: add `http://` when no scheme is
/// given, drop a trailing `/` or `/apisix/admin`.
pub fn normalize_url(text: &str) -> anyhow::Result<String> {
    let t = text.trim();
    let with_scheme = if t.contains("://") {
        t.to_string()
    } else {
        format!("http://{t}")
    };
    let parsed = reqwest::Url::parse(&with_scheme)
        .map_err(|e| anyhow!("invalid --admin-url {text:?}: {e}"))?;
    if parsed.scheme() != "http" && parsed.scheme() != "https" {
        bail!("invalid --admin-url {text:?}: use http:// or https://");
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        bail!("invalid --admin-url {text:?}: no host");
    }
    let mut s = with_scheme.trim_end_matches('/').to_string();
    if let Some(stripped) = s.strip_suffix("/apisix/admin") {
        s = stripped.to_string();
    }
    Ok(s)
}

/// The deepest error in a chain, and whether it says "connection refused".
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur: &(dyn std::error::Error + 'static) = e;
    let mut io_kind = None;
    while let Some(next) = cur.source() {
        if let Some(io) = next.downcast_ref::<std::io::Error>() {
            io_kind = Some(io.kind());
        }
        cur = next;
    }
    match io_kind {
        Some(std::io::ErrorKind::ConnectionRefused) => "connection refused".into(),
        Some(std::io::ErrorKind::ConnectionReset) => "connection reset".into(),
        Some(std::io::ErrorKind::TimedOut) => "timed out".into(),
        _ => {
            let text = cur.to_string();
            let text = text.split(" (os error").next().unwrap_or(&text).to_string();
            let mut chars = text.chars();
            match chars.next() {
                Some(c) => c.to_lowercase().chain(chars).collect(),
                None => "unknown error".into(),
            }
        }
    }
}

/// The message of an error body: `error_msg`, else `message`, else the text.
fn body_message(text: &str) -> String {
    let from_json = serde_json::from_str::<Value>(text).ok().and_then(|v| {
        ["error_msg", "message"]
            .iter()
            .find_map(|k| v.get(*k).and_then(Value::as_str).map(str::to_string))
            .map(|m| match v.get("description").and_then(Value::as_str) {
                Some(d) => format!("{m}: {d}"),
                None => m,
            })
    });
    from_json.unwrap_or_else(|| {
        let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        let line: String = line.trim().chars().take(200).collect();
        if line.is_empty() {
            "no details in the answer".into()
        } else {
            line
        }
    })
}

impl AdminClient {
    /// A client for `endpoint`.
    pub fn new(endpoint: Endpoint) -> anyhow::Result<AdminClient> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .user_agent(concat!("apisix-stream/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot set up the HTTP client")?;
        Ok(AdminClient {
            http,
            runtime,
            endpoint,
        })
    }

    /// The base URL in use.
    pub fn url(&self) -> &str {
        &self.endpoint.url
    }

    /// One request; `Ok(None)` for a 404 so callers can name what is missing.
    fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> anyhow::Result<Option<Value>> {
        Ok(self.exchange(method, path, query, body)?.1)
    }

    /// One request, with the status of a successful answer.
    fn exchange(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> anyhow::Result<(StatusCode, Option<Value>)> {
        let base = &self.endpoint.url;
        let mut req = self
            .http
            .request(method, format!("{base}/apisix/admin/{path}"));
        if !query.is_empty() {
            req = req.query(query);
        }
        if let Some(k) = &self.endpoint.key {
            req = req.header("X-API-KEY", k);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let (status, text) = self
            .runtime
            .block_on(async {
                let res = req.send().await?;
                let status = res.status();
                let text = res.text().await?;
                Ok::<_, reqwest::Error>((status, text))
            })
            .map_err(|e| {
                anyhow!(
                    "cannot reach the admin API at {base}: {} (is `apisix-stream serve` running? \
                     point --admin-url or -c at it)",
                    root_cause(&e)
                )
            })?;
        if status.is_success() {
            if text.trim().is_empty() {
                return Ok((status, Some(Value::Null)));
            }
            let v = serde_json::from_str(&text).map_err(|_| {
                anyhow!("the admin API at {base} answered {status} with a body that is not JSON")
            })?;
            return Ok((status, Some(v)));
        }
        let msg = body_message(&text);
        match status {
            StatusCode::NOT_FOUND => Ok((status, None)),
            StatusCode::UNAUTHORIZED => {
                if msg.contains("role viewer") {
                    bail!("the admin API at {base} refused the change: the API key is read-only (viewer role); use an admin key")
                }
                match &self.endpoint.key {
                    None => bail!(
                        "the admin API at {base} needs an API key: pass --api-key KEY, set APISIX_ADMIN_KEY, or -c the server's config.yaml"
                    ),
                    Some(_) => bail!(
                        "the admin API at {base} rejected the API key ({msg}): check --api-key, APISIX_ADMIN_KEY or the key in -c config.yaml"
                    ),
                }
            }
            StatusCode::FORBIDDEN => {
                bail!("the admin API at {base} refused this client: {msg} (see deployment.admin.allow_admin)")
            }
            s => bail!("{msg} (HTTP {})", s.as_u16()),
        }
    }

    fn not_found(kind: Kind, id: &str) -> anyhow::Error {
        NotFound {
            noun: kind.noun(),
            id: id.to_string(),
        }
        .into()
    }

    /// Every object of a kind, each with its `id`, secrets removed.
    pub fn list(&self, kind: Kind) -> anyhow::Result<Vec<Value>> {
        let v = self
            .call(Method::GET, kind.segment(), &[], None)?
            .ok_or_else(|| {
                anyhow!(
                    "the admin API at {} has no {} resource (HTTP 404)",
                    self.url(),
                    kind.segment()
                )
            })?;
        let list = v
            .get("list")
            .and_then(Value::as_array)
            .ok_or_else(|| anyhow!("unexpected answer from the admin API: no \"list\""))?;
        Ok(list
            .iter()
            .filter_map(|item| unwrap_item(kind, item))
            .collect())
    }

    /// One object, secrets removed.
    pub fn get(&self, kind: Kind, id: &str) -> anyhow::Result<Value> {
        let v = self
            .call(Method::GET, &format!("{}/{id}", kind.segment()), &[], None)?
            .ok_or_else(|| Self::not_found(kind, id))?;
        unwrap_item(kind, &v).ok_or_else(|| anyhow!("unexpected answer from the admin API"))
    }

    /// Create or replace (`Some(id)`, PUT) or create (`None`, POST); returns
    /// the stored object, secrets removed.
    pub fn put(&self, kind: Kind, id: Option<&str>, body: &Value) -> anyhow::Result<Value> {
        Ok(self.write(kind, id, body)?.0)
    }

    /// As [`AdminClient::put`], also telling whether the object is new
    /// (201 Created) or replaced one (200).
    pub fn write(
        &self,
        kind: Kind,
        id: Option<&str>,
        body: &Value,
    ) -> anyhow::Result<(Value, bool)> {
        let (method, path) = match id {
            Some(id) => (Method::PUT, format!("{}/{id}", kind.segment())),
            None => (Method::POST, kind.segment().to_string()),
        };
        let (status, v) = self.exchange(method, &path, &[], Some(body))?;
        let v = v.ok_or_else(|| {
            anyhow!(
                "the admin API at {} has no {} resource (HTTP 404)",
                self.url(),
                kind.segment()
            )
        })?;
        let stored =
            unwrap_item(kind, &v).ok_or_else(|| anyhow!("unexpected answer from the admin API"))?;
        Ok((stored, status == StatusCode::CREATED))
    }

    /// Delete one object.
    pub fn delete(&self, kind: Kind, id: &str, force: bool) -> anyhow::Result<()> {
        let query: &[(&str, &str)] = if force { &[("force", "true")] } else { &[] };
        self.call(
            Method::DELETE,
            &format!("{}/{id}", kind.segment()),
            query,
            None,
        )?
        .ok_or_else(|| Self::not_found(kind, id))?;
        Ok(())
    }

    /// Ask the server which route a connection would take.
    pub fn route_test(&self, query: &[(&str, &str)]) -> anyhow::Result<Value> {
        self.call(Method::GET, "stream_routes_test", query, None)?
            .ok_or_else(|| {
                anyhow!(
                    "the admin API at {} cannot test routes (HTTP 404): is it an older apisix-stream or APISIX itself?",
                    self.url()
                )
            })
    }
}

/// The object inside `{"key": ".../ID", "value": {...}}`, with `id` set from
/// the key when missing and secrets removed (the server strips them too).
fn unwrap_item(kind: Kind, item: &Value) -> Option<Value> {
    let mut v = item.get("value").cloned()?;
    if !v.is_object() {
        return None;
    }
    if v.get("id").is_none() {
        if let Some(id) = item
            .get("key")
            .and_then(Value::as_str)
            .and_then(|k| k.rsplit('/').next())
        {
            v["id"] = Value::String(id.to_string());
        }
    }
    model::strip_secrets(kind, &mut v);
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn endpoint_debug_hides_the_key() {
        let e = Endpoint {
            url: "http://127.0.0.1:9180".into(),
            key: Some("endpoint-secret-key".into()),
        };
        let shown = format!("{e:?}");
        assert!(!shown.contains("endpoint-secret-key"), "{shown}");
        assert!(
            shown.contains("127.0.0.1:9180") && shown.contains("***"),
            "{shown}"
        );
    }

    #[test]
    fn urls() {
        assert_eq!(
            normalize_url("127.0.0.1:9180").unwrap(),
            "http://127.0.0.1:9180"
        );
        assert_eq!(
            normalize_url("http://h:1/apisix/admin/").unwrap(),
            "http://h:1"
        );
        assert!(normalize_url("ftp://h").is_err());
        assert!(normalize_url("http://").is_err());
    }

    #[test]
    fn messages_and_items() {
        assert_eq!(body_message(r#"{"error_msg":"bad"}"#), "bad");
        assert_eq!(
            body_message(r#"{"message":"Key not found"}"#),
            "Key not found"
        );
        assert_eq!(body_message("plain\ntext"), "plain");
        let v = unwrap_item(
            Kind::Ssl,
            &json!({"key": "/apisix/ssls/7", "value": {"cert": "c", "key": "secret"}}),
        )
        .unwrap();
        assert_eq!(v, json!({"cert": "c", "id": "7"}));
    }
}
