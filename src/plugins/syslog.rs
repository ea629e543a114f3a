//! `syslog`: one JSON entry per finished session, sent in batches as
//! RFC 5424 lines over TCP (optionally TLS) or UDP.
//!
//! The entry is built from `log_format` (`"$var"` values are substituted,
//! other values kept; `route_id` and `service_id` added); without a
//! `log_format` in the conf, the one of syslog's plugin metadata
//! (`/apisix/admin/plugin_metadata/syslog`) is used; without either nothing is sent and `syslog's log_format is not set` is
//! logged. Each line reads `<46>1 <RFC 3339 UTC time> - apisix <pid> - -
//! <json>\n` (facility syslog, severity info; stream sessions have no host).
//!
//! Sending never blocks the data plane: the log phase hands the line to a
//! bounded queue ([`QUEUE`]) and a background task batches and sends it;
//! when the queue is full the line is dropped and counted. A batch is sent
//! when it reaches `batch_max_size`, after `inactive_timeout` seconds without
//! a new entry, or `buffer_duration` seconds after its first entry. Failed
//! sends are retried `max_retry_count` times, `retry_delay` seconds apart,
//! then the batch is dropped. Routes with the same conf share one sender.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use serde_json::{Map, Value};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Vars;
use crate::model::duration;

/// Lines a sender queues before dropping new ones.
pub const QUEUE: usize = 10_000;
/// Largest UDP datagram payload built from several lines.
const MAX_DATAGRAM: usize = 60_000;

/// One RFC 5424 line carrying `json`.
pub fn line(json: &str, now: SystemTime) -> String {
    format!(
        "<46>1 {} - apisix {} - - {json}\n",
        crate::timefmt::rfc3339_millis(now),
        std::process::id()
    )
}

/// Where and how a sender delivers.
#[derive(Debug, Clone, PartialEq)]
struct Transport {
    host: String,
    port: u16,
    udp: bool,
    tls: bool,
    timeout: Duration,
    batch_max_size: usize,
    inactive_timeout: Duration,
    buffer_duration: Duration,
    max_retry_count: u32,
    retry_delay: Duration,
}

impl Transport {
    fn from_conf(conf: &Value) -> Result<Transport, String> {
        let int = |k: &str, d: u64| conf.get(k).and_then(Value::as_u64).unwrap_or(d);
        let host = conf
            .get("host")
            .and_then(Value::as_str)
            .ok_or("syslog: host is required")?
            .to_string();
        let port = conf
            .get("port")
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok())
            .ok_or("syslog: bad port")?;
        Ok(Transport {
            host,
            port,
            udp: conf.get("sock_type").and_then(Value::as_str) == Some("udp"),
            tls: conf.get("tls").and_then(Value::as_bool).unwrap_or(false),
            timeout: duration::millis(int("timeout", 3000).max(1)),
            batch_max_size: usize::try_from(int("batch_max_size", 1000).max(1)).unwrap_or(1000),
            inactive_timeout: duration::whole_secs(int("inactive_timeout", 5).max(1)),
            buffer_duration: duration::whole_secs(int("buffer_duration", 60).max(1)),
            max_retry_count: u32::try_from(int("max_retry_count", 0)).unwrap_or(0),
            retry_delay: duration::whole_secs(int("retry_delay", 1)),
        })
    }
}

/// The queue end of one background sender.
#[derive(Debug)]
pub struct Sink {
    tx: mpsc::Sender<String>,
    /// Lines dropped because the queue was full or the sender is gone.
    pub dropped: AtomicU64,
}

impl Sink {
    fn push(&self, line: String) {
        if self.tx.try_send(line).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed);
            // First drop and then every 1000th: a dead receiver cannot flood the log.
            if n.is_multiple_of(1000) {
                tracing::warn!(dropped = n + 1, "syslog queue full; log entries dropped");
            }
        }
    }
}

/// The senders of the process, by conf, so routes (and rebuilt snapshots)
/// with the same conf share one queue and connection. Weak: a sender whose
/// routes are all gone stops once its queue is drained.
#[derive(Debug, Default)]
pub struct Registry {
    sinks: Mutex<HashMap<String, Weak<Sink>>>,
}

impl Registry {
    fn sink(&self, t: &Transport) -> Arc<Sink> {
        let key = format!("{t:?}");
        let mut map = match self.sinks.lock() {
            Ok(m) => m,
            Err(_) => return Arc::new(spawn(t.clone())),
        };
        map.retain(|_, w| w.strong_count() > 0);
        if let Some(s) = map.get(&key).and_then(Weak::upgrade) {
            return s;
        }
        let s = Arc::new(spawn(t.clone()));
        map.insert(key, Arc::downgrade(&s));
        s
    }
}

/// Start a sender on the current runtime (the snapshot publisher's). Without
/// a runtime (a snapshot built outside the server) lines are only counted as
/// dropped.
fn spawn(t: Transport) -> Sink {
    let (tx, rx) = mpsc::channel(QUEUE);
    match tokio::runtime::Handle::try_current() {
        Ok(h) => {
            h.spawn(run(rx, t));
        }
        Err(_) => tracing::warn!(host = %t.host, "syslog sender not started: no runtime"),
    }
    Sink {
        tx,
        dropped: AtomicU64::new(0),
    }
}

/// A compiled syslog conf.
#[derive(Debug)]
pub struct Syslog {
    sink: Arc<Sink>,
    log_format: Option<Map<String, Value>>,
    metadata: Arc<super::Metadata>,
    format_warned: AtomicBool,
}

impl Syslog {
    /// Compile a validated conf, attaching the sender for its transport;
    /// without a `log_format` of its own, the one of syslog's plugin
    /// metadata (read per session, so a metadata change applies at once).
    pub fn build(
        conf: &Value,
        registry: &Registry,
        metadata: Arc<super::Metadata>,
    ) -> Result<Syslog, String> {
        let t = Transport::from_conf(conf)?;
        Ok(Syslog {
            sink: registry.sink(&t),
            log_format: conf
                .get("log_format")
                .and_then(Value::as_object)
                .filter(|m| !m.is_empty())
                .cloned(),
            metadata,
            format_warned: AtomicBool::new(false),
        })
    }

    /// The JSON entry of a session, `None` without a `log_format`.
    pub fn entry(&self, vars: &Vars<'_>) -> Option<Map<String, Value>> {
        self.entry_with(&|name| vars.get(name))
    }

    /// The JSON entry with variables read from `get`, `None` without a
    /// `log_format`.
    pub fn entry_with(&self, get: &dyn Fn(&str) -> Option<String>) -> Option<Map<String, Value>> {
        let from_metadata;
        let format = match &self.log_format {
            Some(f) => f,
            None => {
                from_metadata = self.metadata.syslog_log_format()?;
                &*from_metadata
            }
        };
        let mut entry = Map::new();
        for (k, v) in format {
            match v.as_str().and_then(|s| s.strip_prefix('$')) {
                Some(name) => {
                    if let Some(val) = get(name) {
                        entry.insert(k.clone(), Value::String(val));
                    }
                }
                None => {
                    entry.insert(k.clone(), v.clone());
                }
            }
        }
        if let Some(id) = get("route_id") {
            entry.insert("route_id".into(), Value::String(id));
        }
        if let Some(id) = get("service_id") {
            entry.insert("service_id".into(), Value::String(id));
        }
        Some(entry)
    }

    /// Log phase: queue the session's line.
    pub fn log(&self, vars: &Vars<'_>) {
        self.log_with(&|name| vars.get(name));
    }

    /// Queue one line with variables read from `get` (a request of a
    /// protocol route).
    pub fn log_with(&self, get: &dyn Fn(&str) -> Option<String>) {
        let Some(entry) = self.entry_with(get) else {
            // Once per compiled conf: a standing misconfiguration, not per session news.
            if !self.format_warned.swap(true, Ordering::Relaxed) {
                tracing::error!("syslog's log_format is not set");
            }
            return;
        };
        let json = Value::Object(entry).to_string();
        self.sink.push(line(&json, SystemTime::now()));
    }
}

/// An open connection to the syslog server.
type Conn = Box<dyn AsyncWrite + Unpin + Send>;

/// The background sender: batch lines, send, retry, until every queue end
/// is gone; then send what is left and stop.
async fn run(mut rx: mpsc::Receiver<String>, t: Transport) {
    let mut batch: Vec<String> = Vec::new();
    let mut first_at = Instant::now();
    let mut last_at = Instant::now();
    let mut conn: Option<Conn> = None;
    let mut udp: Option<UdpSocket> = None;
    loop {
        let deadline = (last_at + t.inactive_timeout).min(first_at + t.buffer_duration);
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(l) => {
                    if batch.is_empty() {
                        first_at = Instant::now();
                    }
                    last_at = Instant::now();
                    batch.push(l);
                    if batch.len() < t.batch_max_size {
                        continue;
                    }
                }
                None => {
                    if !batch.is_empty() {
                        flush(&t, &mut batch, &mut conn, &mut udp).await;
                    }
                    return;
                }
            },
            () = tokio::time::sleep_until(deadline), if !batch.is_empty() => {}
        }
        flush(&t, &mut batch, &mut conn, &mut udp).await;
    }
}

/// Send a batch with retries; it is empty afterwards either way.
async fn flush(
    t: &Transport,
    batch: &mut Vec<String>,
    conn: &mut Option<Conn>,
    udp: &mut Option<UdpSocket>,
) {
    let mut tries = 0;
    loop {
        let sent = if t.udp {
            send_udp(t, batch, udp).await
        } else {
            send_tcp(t, batch, conn).await
        };
        match sent {
            Ok(()) => break,
            Err(e) => {
                *conn = None;
                *udp = None;
                if tries >= t.max_retry_count {
                    tracing::warn!(host = %t.host, port = t.port, entries = batch.len(), error = %e, "failed to send syslog batch; dropped");
                    break;
                }
                tries += 1;
                tokio::time::sleep(t.retry_delay).await;
            }
        }
    }
    batch.clear();
}

async fn send_tcp(t: &Transport, batch: &[String], conn: &mut Option<Conn>) -> Result<(), String> {
    if conn.is_none() {
        let stream = tokio::time::timeout(t.timeout, TcpStream::connect((t.host.as_str(), t.port)))
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| format!("connect failed: {e}"))?;
        *conn = Some(if t.tls {
            let config = crate::tls::client_config(None, None)?;
            Box::new(crate::tls::connect_upstream(stream, config, &t.host, t.timeout).await?)
        } else {
            Box::new(stream)
        });
    }
    let Some(c) = conn.as_mut() else {
        return Err("no connection".into());
    };
    let data = batch.concat();
    tokio::time::timeout(t.timeout, async {
        c.write_all(data.as_bytes()).await?;
        c.flush().await
    })
    .await
    .map_err(|_| "send timed out".to_string())?
    .map_err(|e| format!("send failed: {e}"))
}

async fn send_udp(
    t: &Transport,
    batch: &[String],
    sock: &mut Option<UdpSocket>,
) -> Result<(), String> {
    if sock.is_none() {
        let addr = tokio::net::lookup_host((t.host.as_str(), t.port))
            .await
            .map_err(|e| format!("cannot resolve: {e}"))?
            .next()
            .ok_or("cannot resolve: no address")?;
        let local: std::net::SocketAddr = if addr.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let s = UdpSocket::bind(local).await.map_err(|e| e.to_string())?;
        s.connect(addr).await.map_err(|e| e.to_string())?;
        *sock = Some(s);
    }
    let Some(s) = sock.as_ref() else {
        return Err("no socket".into());
    };
    // Whole lines packed into datagrams of at most MAX_DATAGRAM bytes.
    let mut datagram = String::new();
    for l in batch {
        if !datagram.is_empty() && datagram.len() + l.len() > MAX_DATAGRAM {
            send_datagram(t, s, &datagram).await?;
            datagram.clear();
        }
        datagram.push_str(l);
    }
    if !datagram.is_empty() {
        send_datagram(t, s, &datagram).await?;
    }
    Ok(())
}

async fn send_datagram(t: &Transport, s: &UdpSocket, d: &str) -> Result<(), String> {
    tokio::time::timeout(t.timeout, s.send(d.as_bytes()))
        .await
        .map_err(|_| "send timed out".to_string())?
        .map(|_| ())
        .map_err(|e| format!("send failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc5424_line_shape() {
        let l = line(r#"{"a":1}"#, std::time::UNIX_EPOCH);
        assert_eq!(
            l,
            format!(
                "<46>1 1970-01-01T00:00:00.000Z - apisix {} - - {{\"a\":1}}\n",
                std::process::id()
            )
        );
    }

    #[test]
    fn transport_defaults() {
        let t =
            Transport::from_conf(&serde_json::json!({"host": "127.0.0.1", "port": 5044})).unwrap();
        assert!(!t.udp && !t.tls);
        assert_eq!(t.timeout, Duration::from_secs(3));
        assert_eq!(t.batch_max_size, 1000);
        assert_eq!(t.inactive_timeout, Duration::from_secs(5));
    }

    #[tokio::test]
    async fn batches_reach_a_udp_server_and_full_queues_drop() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = server.local_addr().unwrap().port();
        let reg = Registry::default();
        let conf = serde_json::json!({"host": "127.0.0.1", "port": port, "sock_type": "udp", "batch_max_size": 2});
        let s = Syslog::build(&conf, &reg, Arc::default()).unwrap();
        let again = Syslog::build(&conf, &reg, Arc::default()).unwrap();
        assert!(Arc::ptr_eq(&s.sink, &again.sink), "same conf, one sender");
        s.sink.push("a\n".into());
        s.sink.push("b\n".into());
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), server.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..n], b"a\nb\n");
        let (tx, _rx) = mpsc::channel(1);
        let full = Sink {
            tx,
            dropped: AtomicU64::new(0),
        };
        full.push("1".into());
        full.push("2".into());
        assert_eq!(full.dropped.load(Ordering::Relaxed), 1);
    }
}
