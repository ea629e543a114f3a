//! An upstream's `checks` object with APISIX's defaults applied
//! (spec: schemas.md `checks.active` / `checks.passive`).
//!
//! The object was validated when it was stored, so reading it never fails:
//! a value of the wrong shape falls back to the default.

use std::time::Duration;

use serde_json::Value;

use crate::model::duration;

/// How active probes talk to a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeType {
    /// Connect only.
    Tcp,
    /// Connect, send an HTTP request, read the status line.
    Http,
    /// Connect, TLS handshake, then as `Http`.
    Https,
    /// Send a datagram, wait for a reply that starts with `receive`.
    Udp,
}

impl ProbeType {
    /// The name as configured (`tcp`, `http`, `https`).
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeType::Tcp => "tcp",
            ProbeType::Http => "http",
            ProbeType::Https => "https",
            ProbeType::Udp => "udp",
        }
    }
}

/// `checks.active` with defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Active {
    /// `type` (default `http`, as APISIX).
    pub probe: ProbeType,
    /// `timeout` per socket operation.
    pub timeout: Duration,
    /// `concurrency`: probes run in parallel at most.
    pub concurrency: usize,
    /// `host`: the hostname probed (Host header, SNI) instead of the node's.
    pub host: Option<String>,
    /// `port`: the port probed instead of the node's.
    pub port: Option<u16>,
    /// `http_method`.
    pub http_method: String,
    /// `http_path`.
    pub http_path: String,
    /// `http_req_body`.
    pub http_req_body: String,
    /// `send` / `send_hex`: bytes written once connected (`tcp`, `udp`).
    pub send: Option<Vec<u8>>,
    /// `receive` / `receive_hex`: the reply must start with these bytes.
    pub receive: Option<Vec<u8>>,
    /// `https_verify_certificate`.
    pub https_verify_certificate: bool,
    /// `req_headers` (`Name: value` lines).
    pub req_headers: Vec<String>,
    /// `healthy.interval`; None disables probing healthy targets.
    pub healthy_interval: Option<Duration>,
    /// `healthy.http_statuses`.
    pub healthy_statuses: Vec<u16>,
    /// `healthy.successes`.
    pub successes: u32,
    /// `unhealthy.interval`; None disables probing unhealthy targets.
    pub unhealthy_interval: Option<Duration>,
    /// `unhealthy.http_statuses`.
    pub unhealthy_statuses: Vec<u16>,
    /// `unhealthy.http_failures`.
    pub http_failures: u32,
    /// `unhealthy.tcp_failures`.
    pub tcp_failures: u32,
    /// `unhealthy.timeouts`.
    pub timeouts: u32,
}

/// `checks.passive` with defaults. Its thresholds also count the failed
/// tries reported on retry, which happen with or without `passive`.
#[derive(Debug, Clone, PartialEq)]
pub struct Passive {
    /// Whether `checks.passive` is present (session-end reports need it).
    pub configured: bool,
    /// `type` (default `http`).
    pub kind: String,
    /// `healthy.successes` (0 disables).
    pub successes: u32,
    /// `unhealthy.tcp_failures` (0 disables).
    pub tcp_failures: u32,
    /// `unhealthy.timeouts` (0 disables).
    pub timeouts: u32,
    /// `unhealthy.http_failures` (0 disables).
    pub http_failures: u32,
}

/// A whole `checks` object.
#[derive(Debug, Clone, PartialEq)]
pub struct Checks {
    /// Active probing.
    pub active: Active,
    /// Passive reports.
    pub passive: Passive,
}

fn at<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    v.pointer(path).filter(|x| !x.is_null())
}

fn count(v: &Value, path: &str, default: u32) -> u32 {
    at(v, path)
        .and_then(Value::as_f64)
        .and_then(duration::count_u32)
        .unwrap_or(default)
}

fn text(v: &Value, path: &str, default: &str) -> String {
    at(v, path)
        .and_then(Value::as_str)
        .unwrap_or(default)
        .to_string()
}

fn statuses(v: &Value, path: &str, default: &[u16]) -> Vec<u16> {
    match at(v, path).and_then(Value::as_array) {
        Some(list) => list
            .iter()
            .filter_map(Value::as_u64)
            .filter_map(|s| u16::try_from(s).ok())
            .collect(),
        None => default.to_vec(),
    }
}

/// A string field as bytes, or its `_hex` twin decoded; `None` when
/// neither is set (or the hex is not valid).
fn bytes(v: &Value, plain: &str, hex: &str) -> Option<Vec<u8>> {
    if let Some(s) = at(v, plain).and_then(Value::as_str) {
        return Some(s.as_bytes().to_vec());
    }
    let h = at(v, hex).and_then(Value::as_str)?;
    decode_hex(h)
}

/// `"2b504f4e47"` to bytes; `None` for an odd length or a non-hex digit.
pub fn decode_hex(h: &str) -> Option<Vec<u8>> {
    if !h.len().is_multiple_of(2) {
        return None;
    }
    (0..h.len())
        .step_by(2)
        .map(|i| h.get(i..i + 2).and_then(|d| u8::from_str_radix(d, 16).ok()))
        .collect()
}

/// An interval in seconds; 0 (or less) disables.
fn interval(v: &Value, path: &str) -> Option<Duration> {
    duration::secs(at(v, path).and_then(Value::as_f64).unwrap_or(1.0))
}

impl Checks {
    /// Read a validated `checks` object, filling APISIX's defaults.
    pub fn from_value(v: &Value) -> Checks {
        let probe = match at(v, "/active/type").and_then(Value::as_str) {
            Some("tcp") => ProbeType::Tcp,
            Some("https") => ProbeType::Https,
            Some("udp") => ProbeType::Udp,
            _ => ProbeType::Http,
        };
        let timeout = at(v, "/active/timeout")
            .and_then(Value::as_f64)
            .and_then(duration::secs)
            .unwrap_or(Duration::from_secs(1));
        let active = Active {
            probe,
            timeout,
            concurrency: usize::try_from(count(v, "/active/concurrency", 10).max(1)).unwrap_or(1),
            host: at(v, "/active/host")
                .and_then(Value::as_str)
                .map(str::to_string),
            port: at(v, "/active/port")
                .and_then(Value::as_u64)
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p > 0),
            http_method: text(v, "/active/http_method", "GET"),
            http_path: text(v, "/active/http_path", "/"),
            http_req_body: text(v, "/active/http_req_body", ""),
            send: bytes(v, "/active/send", "/active/send_hex"),
            receive: bytes(v, "/active/receive", "/active/receive_hex"),
            https_verify_certificate: at(v, "/active/https_verify_certificate")
                .and_then(Value::as_bool)
                .unwrap_or(true),
            req_headers: at(v, "/active/req_headers")
                .and_then(Value::as_array)
                .map(|h| {
                    h.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
            healthy_interval: interval(v, "/active/healthy/interval"),
            healthy_statuses: statuses(v, "/active/healthy/http_statuses", &[200, 302]),
            successes: count(v, "/active/healthy/successes", 2),
            unhealthy_interval: interval(v, "/active/unhealthy/interval"),
            unhealthy_statuses: statuses(
                v,
                "/active/unhealthy/http_statuses",
                &[429, 404, 500, 501, 502, 503, 504, 505],
            ),
            http_failures: count(v, "/active/unhealthy/http_failures", 5),
            tcp_failures: count(v, "/active/unhealthy/tcp_failures", 2),
            timeouts: count(v, "/active/unhealthy/timeouts", 3),
        };
        let passive = Passive {
            configured: at(v, "/passive").is_some_and(Value::is_object),
            kind: text(v, "/passive/type", "http"),
            successes: count(v, "/passive/healthy/successes", 5),
            tcp_failures: count(v, "/passive/unhealthy/tcp_failures", 2),
            timeouts: count(v, "/passive/unhealthy/timeouts", 7),
            http_failures: count(v, "/passive/unhealthy/http_failures", 5),
        };
        Checks { active, passive }
    }

    /// The checker type shown in reports: `checks.active.type`, else
    /// `checks.passive.type`.
    pub fn kind(&self) -> &str {
        self.active.probe.as_str()
    }
}
