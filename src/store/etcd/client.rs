//! Talking to etcd through its HTTP/JSON gateway: the encodings it wants,
//! one client per configured host (TLS, client certificate, SNI), the auth
//! session, and errors sorted into "unreachable", "no answer", "auth" and
//! "etcd said no".

use std::net::SocketAddr;
use std::sync::MutexGuard;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};

use super::{unavailable, Shared};
use crate::config::Etcd;
use crate::store::StoreError;

/// Base64 (standard alphabet, padded) as the gateway wants keys and values.
pub(super) fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Decode a base64 field of a gateway answer.
pub(super) fn unb64(text: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

/// The `range_end` that makes a range cover every key starting with `key`.
pub(super) fn range_end(key: &[u8]) -> Vec<u8> {
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
pub(super) fn num(v: Option<&Value>) -> u64 {
    match v {
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        Some(Value::Number(n)) => n.as_u64().unwrap_or(0),
        _ => 0,
    }
}

/// `header.revision` of a gateway answer.
pub(super) fn header_rev(v: &Value) -> u64 {
    num(v.get("header").and_then(|h| h.get("revision")))
}

/// An error with its causes, on one line.
pub(super) fn chain(e: &dyn std::error::Error) -> String {
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
pub(super) fn header_safe(s: &str) -> String {
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

/// Why a request to etcd failed.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum CallError {
    /// Not served, surely not applied: connection refused, no leader.
    Unreachable(String),
    /// Sent but not answered (timeout, connection lost, etcd's own request
    /// timeout): a write may or may not have been applied.
    Silent(String),
    /// The auth token is missing, expired or invalid.
    Auth(String),
    /// etcd answered with an error.
    Etcd(String),
}

impl CallError {
    /// The message, whatever the kind.
    pub(super) fn text(&self) -> &str {
        match self {
            CallError::Unreachable(s)
            | CallError::Silent(s)
            | CallError::Auth(s)
            | CallError::Etcd(s) => s,
        }
    }

    /// Whether the endpoint could not serve the request (try another).
    pub(super) fn is_unreachable(&self) -> bool {
        matches!(self, CallError::Unreachable(_) | CallError::Silent(_))
    }
}

/// Classify an `{"error", "code", "message"}` answer of the gateway.
pub(super) fn gateway_error(v: &Value) -> Option<CallError> {
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
    } else if msg.contains("timed out") || msg.contains("leader changed") || code == 4 {
        // etcd's words for "may or may not have been applied".
        CallError::Silent(msg)
    } else if code == 14 || msg.contains("no leader") || msg.contains("proposal dropped") {
        CallError::Unreachable(msg)
    } else {
        CallError::Etcd(msg)
    })
}

/// Whether etcd's message says the auth token is missing or invalid.
pub(super) fn is_auth_message(msg: &str) -> bool {
    msg.contains("invalid auth token")
        || msg.contains("user name is empty")
        || msg.contains("Unauthenticated")
}

/// One configured etcd endpoint.
pub(super) struct Host {
    /// The URL as configured.
    pub(super) url: String,
    /// Base of request URLs (the SNI name replaces the host when `tls.sni` is set).
    pub(super) base: String,
    pub(super) client: reqwest::Client,
}

/// Session state.
#[derive(Default)]
pub(super) struct Conn {
    /// Auth token of the current session.
    pub(super) token: Option<String>,
}

pub(super) async fn build_hosts(conf: &Etcd, timeout: Duration) -> Result<Vec<Host>, StoreError> {
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
    // `verify` (the default) checks the server against
    // `apisix.ssl.ssl_trusted_certificate` (the system's bundle when unset).
    let verifying = tls.is_none_or(|t| t.verify);
    let trusted = if verifying {
        Some(crate::tls::Trust::from_setting(conf.trusted_ca.as_deref()).map_err(unavailable)?)
    } else {
        None
    };
    let mut hosts = Vec::new();
    for url in &conf.host {
        let bad = |why: String| unavailable(format!("invalid deployment.etcd.host {url}: {why}"));
        let parsed = reqwest::Url::parse(url).map_err(|e| bad(e.to_string()))?;
        let base_builder = match (&trusted, parsed.scheme()) {
            (Some(trust), "https") => trust.http_client().map_err(unavailable)?,
            _ => crate::tls::trust::http_builder(),
        };
        let mut builder = base_builder
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
    /// The connection state (a plain lock, never held across an await).
    pub(super) fn conn(&self) -> MutexGuard<'_, Conn> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One POST to the gateway, bounded by `bound`.
    pub(super) async fn raw(
        &self,
        host: usize,
        path: &str,
        body: &Value,
        token: Option<&str>,
        bound: Duration,
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
            let resp = req.send().await.map_err(|e| {
                if e.is_connect() {
                    CallError::Unreachable(chain(&e))
                } else {
                    CallError::Silent(chain(&e))
                }
            })?;
            let status = resp.status();
            let bytes = resp
                .bytes()
                .await
                .map_err(|e| CallError::Silent(chain(&e)))?;
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
        tokio::time::timeout(bound, exchange).await.map_err(|_| {
            CallError::Silent(format!(
                "no answer from {} within {:.1}s",
                h.url,
                bound.as_secs_f64()
            ))
        })?
    }

    /// Get a fresh auth token (when `user` is configured).
    pub(super) async fn authenticate(&self, host: usize) -> Result<(), CallError> {
        let Some((user, password)) = &self.creds else {
            return Ok(());
        };
        let body = json!({"name": user, "password": password.expose()});
        let v = match self
            .raw(host, "/v3/auth/authenticate", &body, None, self.timeout)
            .await
        {
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

    /// A request with the session token, bounded by `timeout`.
    pub(super) async fn call(
        &self,
        host: usize,
        path: &str,
        body: &Value,
    ) -> Result<Value, CallError> {
        self.call_within(host, path, body, self.timeout).await
    }

    /// A request with the session token, bounded by `bound`,
    /// re-authenticating once when etcd says the token is missing or invalid.
    pub(super) async fn call_within(
        &self,
        host: usize,
        path: &str,
        body: &Value,
        bound: Duration,
    ) -> Result<Value, CallError> {
        if self.creds.is_some() && self.conn().token.is_none() {
            self.authenticate(host).await?;
        }
        let token = self.conn().token.clone();
        match self.raw(host, path, body, token.as_deref(), bound).await {
            Err(CallError::Auth(_)) if self.creds.is_some() => {
                self.authenticate(host).await?;
                let token = self.conn().token.clone();
                self.raw(host, path, body, token.as_deref(), bound).await
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            gateway_error(&e(2, "raft proposal dropped")),
            Some(CallError::Unreachable(_))
        ));
        assert!(matches!(
            gateway_error(&e(14, "etcdserver: request timed out")),
            Some(CallError::Silent(_))
        ));
        assert!(matches!(
            gateway_error(&e(14, "etcdserver: leader changed")),
            Some(CallError::Silent(_))
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
}
