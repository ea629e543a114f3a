//! The stream access log: one line per finished session, written by a
//! background thread so no connection ever waits on the disk.
//!
//! Configured as APISIX does with `nginx_config.stream.enable_access_log`
//! and `access_log` (a path, or `stderr`). Each line starts with APISIX's
//! default stream format (`$remote_addr [$time_local] $protocol $status
//! $bytes_sent $bytes_received $session_time`) and adds key=value fields:
//! client address, listener, route, node and how the session ended.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

/// A handle to the log writer; cheap to clone.
#[derive(Debug, Clone)]
pub struct AccessLog {
    tx: mpsc::Sender<String>,
}

/// One finished session.
#[derive(Debug)]
pub struct Record<'a> {
    /// Client address.
    pub client: SocketAddr,
    /// `TCP` or `UDP`.
    pub protocol: &'static str,
    /// The session's status as nginx's stream module sets it (decided
    /// once, by [`crate::proxy::session::finish`]).
    pub status: u16,
    /// Listener label.
    pub listener: &'a str,
    /// Route id (`-` when none matched).
    pub route_id: &'a str,
    /// Node (`-` when none was reached).
    pub node: &'a str,
    /// Bytes received from the client.
    pub bytes_in: u64,
    /// Bytes sent to the client.
    pub bytes_out: u64,
    /// Session duration.
    pub duration: Duration,
    /// How it ended: `closed`, `idle timeout`, ... or the error.
    pub end: &'a str,
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// `$time_local` (UTC): `26/Nov/2026:10:00:00 +0000`.
pub fn time_local(t: SystemTime) -> String {
    let c = crate::timefmt::civil(t);
    format!(
        "{:02}/{}/{}:{:02}:{:02}:{:02} +0000",
        c.day,
        MONTHS[(c.month.clamp(1, 12) - 1) as usize],
        c.year,
        c.hour,
        c.minute,
        c.second
    )
}

impl Record<'_> {
    /// The log line (without newline).
    pub fn line(&self, now: SystemTime) -> String {
        format!(
            "{} [{}] {} {} {} {} {:.3} client={} listen={} route={} node={} end=\"{}\"",
            self.client.ip(),
            time_local(now),
            self.protocol,
            self.status,
            self.bytes_out,
            self.bytes_in,
            self.duration.as_secs_f64(),
            self.client,
            self.listener,
            self.route_id,
            self.node,
            self.end,
        )
    }
}

impl AccessLog {
    /// Start the writer for `target`: `stderr`/`/dev/stderr`, or a file
    /// opened for appending (its directory is created).
    pub fn start(target: &str) -> io::Result<AccessLog> {
        let mut out: Box<dyn Write + Send> = if target == "stderr" || target == "/dev/stderr" {
            Box::new(io::stderr())
        } else {
            let path = Path::new(target);
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            )
        };
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = first;
                    batch.push('\n');
                    // Take whatever else is queued, then write once.
                    while let Ok(more) = rx.try_recv() {
                        batch.push_str(&more);
                        batch.push('\n');
                    }
                    if let Err(e) = out.write_all(batch.as_bytes()).and_then(|()| out.flush()) {
                        tracing::warn!(error = %e, "cannot write the access log");
                    }
                }
            })?;
        Ok(AccessLog { tx })
    }

    /// Queue one session's line (never blocks).
    pub fn record(&self, r: &Record<'_>) {
        let _ = self.tx.send(r.line(SystemTime::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn time_local_matches_nginx_format() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_686_911); // 2026-11-26 09:55:11 UTC
        assert_eq!(time_local(t), "26/Nov/2026:09:55:11 +0000");
        assert_eq!(time_local(UNIX_EPOCH), "01/Jan/1970:00:00:00 +0000");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(time_local(leap), "29/Feb/2000:00:00:00 +0000");
    }

    #[test]
    fn line_has_apisix_fields_first() {
        let r = Record {
            client: "127.0.0.1:5000".parse().expect("addr"),
            protocol: "TCP",
            status: 200,
            listener: "0.0.0.0:9100",
            route_id: "1",
            node: "127.0.0.1:1995",
            bytes_in: 3,
            bytes_out: 12,
            duration: Duration::from_millis(1500),
            end: "closed",
        };
        let line = r.line(UNIX_EPOCH);
        assert_eq!(
            line,
            "127.0.0.1 [01/Jan/1970:00:00:00 +0000] TCP 200 12 3 1.500 client=127.0.0.1:5000 \
             listen=0.0.0.0:9100 route=1 node=127.0.0.1:1995 end=\"closed\""
        );
    }

    #[test]
    fn lines_reach_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("logs/access.log");
        let log = AccessLog::start(path.to_str().expect("utf8")).expect("start");
        let r = Record {
            client: "127.0.0.1:1".parse().expect("addr"),
            protocol: "UDP",
            status: 200,
            listener: "l",
            route_id: "r",
            node: "n",
            bytes_in: 1,
            bytes_out: 2,
            duration: Duration::ZERO,
            end: "idle timeout",
        };
        log.record(&r);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.contains("UDP 200 2 1") {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "line not written: {text:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
