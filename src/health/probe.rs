//! One active probe of one target: `tcp` (connect; with `send`/`receive`,
//! write the request and expect a reply starting with `receive`), `udp`
//! (one datagram out, a reply starting with `receive` back), `http`
//! (connect, send a request, read the status line) or `https` (the same over
//! TLS), each socket step bounded by `checks.active.timeout`
//! (resty.healthcheck `run_single_check`).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::timeout;

use super::conf::{Active, ProbeType};
use super::Target;
use crate::tls;

/// What a probe saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Connected (`tcp`), or the exchange completed without an HTTP status
    /// to judge.
    Success,
    /// Refused, reset, TLS failure or closed early.
    TcpFailure,
    /// A step did not finish within the timeout.
    Timeout,
    /// The HTTP status of the answer (0: no valid status line).
    Status(u16),
}

/// Longest status line read before giving up on it.
const MAX_STATUS_LINE: usize = 8 * 1024;

/// The TLS client configuration `https` probes use (None for other types or
/// when it cannot be built): with `https_verify_certificate`, node
/// certificates are checked against `trust` (`apisix.ssl.ssl_trusted_certificate`,
/// as OpenResty's `lua_ssl_trusted_certificate` governs resty.healthcheck).
pub fn tls_config(active: &Active, trust: &tls::Trust) -> Option<Arc<ClientConfig>> {
    if active.probe != ProbeType::Https {
        return None;
    }
    let verify = active.https_verify_certificate.then_some(trust);
    tls::client_config(None, verify).ok()
}

/// The probe request, as resty.healthcheck sends it.
pub fn request(active: &Active, host: &str) -> Vec<u8> {
    let mut head = format!("{} {} HTTP/1.0\r\n", active.http_method, active.http_path);
    for h in &active.req_headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    if host.contains(':') {
        head.push_str(&format!("Host: [{host}]\r\n"));
    } else {
        head.push_str(&format!("Host: {host}\r\n"));
    }
    if !active.http_req_body.is_empty() {
        head.push_str(&format!(
            "Content-Length: {}\r\n",
            active.http_req_body.len()
        ));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(active.http_req_body.as_bytes());
    out
}

/// The status of an HTTP status line (`^HTTP/\d+\.\d+\s+(\d+)`, any case);
/// 0 when it is not one.
pub fn parse_status(line: &str) -> u16 {
    fn digits(s: &str) -> usize {
        s.bytes().take_while(u8::is_ascii_digit).count()
    }
    let parse = || -> Option<u16> {
        if !line.get(..5)?.eq_ignore_ascii_case("HTTP/") {
            return None;
        }
        let rest = &line[5..];
        let major = digits(rest);
        let rest = rest[major..].strip_prefix('.').filter(|_| major > 0)?;
        let minor = digits(rest);
        let rest = &rest[minor..];
        let code = rest.trim_start();
        if minor == 0 || code.len() == rest.len() {
            return None;
        }
        let n = digits(code);
        code[..n].parse().ok()
    };
    parse().unwrap_or(0)
}

/// Probe `target` once.
pub async fn probe(active: &Active, tls: Option<&Arc<ClientConfig>>, target: &Target) -> Outcome {
    let limit = active.timeout;
    let addr = match target.ip.parse::<IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, target.port),
        Err(_) => {
            match timeout(
                limit,
                tokio::net::lookup_host((target.ip.as_str(), target.port)),
            )
            .await
            {
                Ok(Ok(mut addrs)) => match addrs.next() {
                    Some(a) => a,
                    None => return Outcome::TcpFailure,
                },
                Ok(Err(_)) => return Outcome::TcpFailure,
                Err(_) => return Outcome::Timeout,
            }
        }
    };
    if active.probe == ProbeType::Udp {
        return probe_udp(active, addr, limit).await;
    }
    let stream = match timeout(limit, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(_)) => return Outcome::TcpFailure,
        Err(_) => return Outcome::Timeout,
    };
    match active.probe {
        ProbeType::Tcp if active.send.is_none() && active.receive.is_none() => Outcome::Success,
        ProbeType::Tcp | ProbeType::Udp => speak_tcp(stream, active, limit).await,
        ProbeType::Http => exchange(stream, active, &target.hostname, limit).await,
        ProbeType::Https => {
            let Some(config) = tls else {
                return Outcome::TcpFailure;
            };
            let handshake = tls::handshake(stream, config.clone(), &target.hostname);
            match timeout(limit, handshake).await {
                Ok(Ok(s)) => Box::pin(exchange(s, active, &target.hostname, limit)).await,
                Ok(Err(e)) => {
                    tracing::debug!(target = %target, error = %e, "health check TLS handshake failed");
                    Outcome::TcpFailure
                }
                Err(_) => Outcome::Timeout,
            }
        }
    }
}

/// Send the request and read the status line.
async fn exchange<S>(mut s: S, active: &Active, host: &str, limit: Duration) -> Outcome
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match timeout(limit, s.write_all(&request(active, host))).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => return Outcome::TcpFailure,
        Err(_) => return Outcome::Timeout,
    }
    let mut line = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        let n = match timeout(limit, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Outcome::TcpFailure,
            Ok(Ok(n)) => n,
            Err(_) => return Outcome::Timeout,
        };
        line.extend_from_slice(&buf[..n]);
        if let Some(end) = line.iter().position(|&b| b == b'\n') {
            line.truncate(end);
            break;
        }
        if line.len() > MAX_STATUS_LINE {
            break;
        }
    }
    let text = String::from_utf8_lossy(&line);
    Outcome::Status(parse_status(text.trim_end_matches('\r')))
}

/// Whether a reply passes: it starts with `receive` (anything passes when
/// `receive` is not set).
fn reply_ok(active: &Active, reply: &[u8]) -> bool {
    active
        .receive
        .as_deref()
        .is_none_or(|want| reply.starts_with(want))
}

/// `tcp` with `send`/`receive`: write `send`, then read until as many bytes
/// as `receive` has arrived (or the peer closed) and compare.
async fn speak_tcp(mut s: TcpStream, active: &Active, limit: Duration) -> Outcome {
    if let Some(out) = &active.send {
        match timeout(limit, s.write_all(out)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Outcome::TcpFailure,
            Err(_) => return Outcome::Timeout,
        }
    }
    let Some(want) = &active.receive else {
        return Outcome::Success;
    };
    let mut got = Vec::with_capacity(want.len());
    let mut buf = [0u8; 512];
    while got.len() < want.len() {
        let n = match timeout(limit, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => n,
            Err(_) => return Outcome::Timeout,
        };
        got.extend_from_slice(&buf[..n]);
        if !want.starts_with(&got[..got.len().min(want.len())]) {
            break;
        }
    }
    if reply_ok(active, &got) {
        Outcome::Success
    } else {
        Outcome::TcpFailure
    }
}

/// `udp`: send one datagram of `send`, wait for a reply starting with
/// `receive`. An ICMP error (port unreachable) is a failure; no reply
/// within the timeout is a timeout.
async fn probe_udp(active: &Active, addr: SocketAddr, limit: Duration) -> Outcome {
    let local: SocketAddr = if addr.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = match UdpSocket::bind(local).await {
        Ok(s) => s,
        Err(_) => return Outcome::TcpFailure,
    };
    if sock.connect(addr).await.is_err() {
        return Outcome::TcpFailure;
    }
    let out = active.send.as_deref().unwrap_or_default();
    match timeout(limit, sock.send(out)).await {
        Ok(Ok(_)) => {}
        Ok(Err(_)) => return Outcome::TcpFailure,
        Err(_) => return Outcome::Timeout,
    }
    let mut buf = vec![0u8; 64 * 1024];
    match timeout(limit, sock.recv(&mut buf)).await {
        Ok(Ok(n)) if reply_ok(active, &buf[..n]) => Outcome::Success,
        Ok(Ok(_)) | Ok(Err(_)) => Outcome::TcpFailure,
        Err(_) => Outcome::Timeout,
    }
}
