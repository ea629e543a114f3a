//! The stream access log: one line per finished session, formatted and
//! written by a background thread so no connection ever waits on the disk
//! or pays for the formatting.
//!
//! Configured as APISIX does: `nginx_config.stream.enable_access_log`,
//! `access_log` (a path, or `stderr`), `access_log_format` (nginx stream
//! variables, compiled once into a [`Template`]; APISIX's default
//! [`DEFAULT_FORMAT`] when unset) and `access_log_format_escape`
//! (`default`, `json` or `none`, with nginx's escaping rules). The file is
//! reopened on request ([`AccessLog::reopen`], SIGUSR1) after the lines
//! queued before it are written, so a rotation loses none.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// APISIX's default stream `access_log_format`.
pub const DEFAULT_FORMAT: &str =
    "$remote_addr [$time_local] $protocol $status $bytes_sent $bytes_received $session_time";

/// APISIX's default format followed by the details of each session
/// (client, listener, route, node and how it ended): the line this server
/// wrote before the format could be chosen.
pub const DETAILED_FORMAT: &str = "$remote_addr [$time_local] $protocol $status $bytes_sent \
     $bytes_received $session_time client=$remote_addr:$remote_port listen=$listen_addr \
     route=$route_id node=$node end=\"$session_end\"";

/// `access_log_format_escape`: how variable values are escaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Escape {
    /// `"`, `\`, control bytes and bytes from 0x7f up as `\xHH`; an unset
    /// value is `-`.
    #[default]
    Default,
    /// JSON string escaping; an unset value is empty.
    Json,
    /// Values as they are; an unset value is empty.
    None,
}

impl Escape {
    /// Parse `default`, `json` or `none`.
    pub fn parse(s: &str) -> Option<Escape> {
        match s {
            "default" => Some(Escape::Default),
            "json" => Some(Escape::Json),
            "none" => Some(Escape::None),
            _ => None,
        }
    }
}

/// The variables a format may name (nginx's stream names, plus
/// `$route_id`, `$node`, `$protocol_name`, `$listen_addr`, `$session_end`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Var {
    RemoteAddr,
    RemotePort,
    ServerAddr,
    ServerPort,
    Protocol,
    Status,
    BytesSent,
    BytesReceived,
    SessionTime,
    TimeLocal,
    TimeIso8601,
    Msec,
    Connection,
    Pid,
    UpstreamAddr,
    UpstreamBytesSent,
    UpstreamBytesReceived,
    UpstreamConnectTime,
    SslServerName,
    RouteId,
    Node,
    ProtocolName,
    ListenAddr,
    SessionEnd,
}

/// Every variable name with its meaning.
const VARS: [(&str, Var); 24] = [
    ("remote_addr", Var::RemoteAddr),
    ("remote_port", Var::RemotePort),
    ("server_addr", Var::ServerAddr),
    ("server_port", Var::ServerPort),
    ("protocol", Var::Protocol),
    ("status", Var::Status),
    ("bytes_sent", Var::BytesSent),
    ("bytes_received", Var::BytesReceived),
    ("session_time", Var::SessionTime),
    ("time_local", Var::TimeLocal),
    ("time_iso8601", Var::TimeIso8601),
    ("msec", Var::Msec),
    ("connection", Var::Connection),
    ("pid", Var::Pid),
    ("upstream_addr", Var::UpstreamAddr),
    ("upstream_bytes_sent", Var::UpstreamBytesSent),
    ("upstream_bytes_received", Var::UpstreamBytesReceived),
    ("upstream_connect_time", Var::UpstreamConnectTime),
    ("ssl_server_name", Var::SslServerName),
    ("route_id", Var::RouteId),
    ("node", Var::Node),
    ("protocol_name", Var::ProtocolName),
    ("listen_addr", Var::ListenAddr),
    ("session_end", Var::SessionEnd),
];

/// The variable names a format may use, for docs and error messages.
pub fn variable_names() -> impl Iterator<Item = &'static str> {
    VARS.iter().map(|(n, _)| *n)
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Var(Var),
}

/// Why a format does not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// `$` not followed by a variable name.
    #[error("invalid variable name at byte {0}")]
    BadName(usize),
    /// A variable this server does not know.
    #[error("unknown variable \"${0}\"")]
    Unknown(String),
}

/// A compiled `access_log_format`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
    escape: Escape,
}

fn is_name(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

impl Template {
    /// Compile `format` (`$name` or `${name}`) once; an unknown variable is
    /// an error, as nginx refuses to start on one.
    pub fn compile(format: &str, escape: Escape) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut rest = format;
        let mut at = 0;
        while let Some(i) = rest.find('$') {
            text.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            let (name, used) = if let Some(inner) = after.strip_prefix('{') {
                let end = inner.find('}').ok_or(TemplateError::BadName(at + i))?;
                (&inner[..end], end + 2)
            } else {
                let end = after.find(|c| !is_name(c)).unwrap_or(after.len());
                (&after[..end], end)
            };
            if name.is_empty() || !name.chars().all(is_name) {
                return Err(TemplateError::BadName(at + i));
            }
            let var = VARS
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| *v)
                .ok_or_else(|| TemplateError::Unknown(name.to_string()))?;
            if !text.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut text)));
            }
            parts.push(Part::Var(var));
            at += i + 1 + used;
            rest = &after[used..];
        }
        text.push_str(rest);
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        Ok(Template { parts, escape })
    }

    /// Append the line of `e` (without newline) to `out`.
    pub fn render(&self, e: &Entry, out: &mut String) {
        let mut value = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Var(v) => {
                    value.clear();
                    if e.write_var(*v, &mut value) {
                        escape_into(self.escape, &value, out);
                    } else if self.escape == Escape::Default {
                        out.push('-');
                    }
                }
            }
        }
    }
}

/// Write `v` escaped by `mode` (nginx's `ngx_stream_log_escape` and
/// `ngx_escape_json`).
fn escape_into(mode: Escape, v: &str, out: &mut String) {
    match mode {
        Escape::None => out.push_str(v),
        Escape::Default => {
            for b in v.bytes() {
                if b < 0x20 || b == b'"' || b == b'\\' || b >= 0x7f {
                    let _ = write!(out, "\\x{b:02X}");
                } else {
                    out.push(char::from(b));
                }
            }
        }
        Escape::Json => {
            for c in v.chars() {
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\t' => out.push_str("\\t"),
                    '\u{8}' => out.push_str("\\b"),
                    '\u{c}' => out.push_str("\\f"),
                    c if u32::from(c) < 0x20 => {
                        let _ = write!(out, "\\u{:04x}", u32::from(c));
                    }
                    c => out.push(c),
                }
            }
        }
    }
}

/// One finished session, as the session's end describes it.
#[derive(Debug)]
pub struct Record<'a> {
    /// Client address.
    pub client: SocketAddr,
    /// Local address the session arrived on.
    pub server: SocketAddr,
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
    /// TLS SNI, when the client sent one.
    pub sni: Option<&'a str>,
    /// How long connecting the node took, when it was connected.
    pub connect_time: Option<Duration>,
    /// The application protocol of a protocol-aware route (`redis`).
    pub protocol_name: Option<&'a str>,
    /// Bytes received from the client.
    pub bytes_in: u64,
    /// Bytes sent to the client.
    pub bytes_out: u64,
    /// Session duration.
    pub duration: Duration,
    /// How it ended: `closed`, `idle timeout`, ... or the error.
    pub end: &'a str,
}

/// A finished session as the writer thread formats it (owned).
#[derive(Debug, Clone)]
pub struct Entry {
    /// When the session ended.
    pub time: SystemTime,
    /// The session's serial number in this process (`$connection`).
    pub connection: u64,
    /// Client address.
    pub client: SocketAddr,
    /// Local address.
    pub server: SocketAddr,
    /// `TCP` or `UDP`.
    pub protocol: &'static str,
    /// `$status`.
    pub status: u16,
    /// Listener label.
    pub listener: String,
    /// Route id, when one matched.
    pub route_id: Option<String>,
    /// Node `host:port`, when one was tried.
    pub node: Option<String>,
    /// TLS SNI.
    pub sni: Option<String>,
    /// Node connect time.
    pub connect_time: Option<Duration>,
    /// `$protocol_name`.
    pub protocol_name: Option<String>,
    /// Bytes from the client.
    pub bytes_in: u64,
    /// Bytes to the client.
    pub bytes_out: u64,
    /// Session duration.
    pub duration: Duration,
    /// How it ended.
    pub end: String,
}

fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// `secs.mmm`, as nginx prints `$session_time` and friends.
fn seconds(out: &mut String, d: Duration) {
    let _ = write!(out, "{}.{:03}", d.as_secs(), d.subsec_millis());
}

impl Entry {
    fn from_record(r: &Record<'_>, connection: u64, time: SystemTime) -> Entry {
        let some = |s: &str| (s != "-").then(|| s.to_string());
        Entry {
            time,
            connection,
            client: r.client,
            server: r.server,
            protocol: r.protocol,
            status: r.status,
            listener: r.listener.to_string(),
            route_id: some(r.route_id),
            node: some(r.node),
            sni: r.sni.map(str::to_string),
            connect_time: r.connect_time,
            protocol_name: r.protocol_name.map(str::to_string),
            bytes_in: r.bytes_in,
            bytes_out: r.bytes_out,
            duration: r.duration,
            end: r.end.to_string(),
        }
    }

    /// Write the value of `v`; `false` when it is unset.
    fn write_var(&self, v: Var, out: &mut String) -> bool {
        let _ = match v {
            Var::RemoteAddr => write!(out, "{}", unmapped(self.client.ip())),
            Var::RemotePort => write!(out, "{}", self.client.port()),
            Var::ServerAddr => write!(out, "{}", unmapped(self.server.ip())),
            Var::ServerPort => write!(out, "{}", self.server.port()),
            Var::Protocol => write!(out, "{}", self.protocol),
            Var::Status => write!(out, "{}", self.status),
            Var::BytesSent => write!(out, "{}", self.bytes_out),
            Var::BytesReceived => write!(out, "{}", self.bytes_in),
            Var::SessionTime => {
                seconds(out, self.duration);
                Ok(())
            }
            Var::TimeLocal => write!(out, "{}", time_local(self.time)),
            Var::TimeIso8601 => {
                let c = crate::timefmt::civil(self.time);
                write!(
                    out,
                    "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}+00:00",
                    c.year, c.month, c.day, c.hour, c.minute, c.second
                )
            }
            Var::Msec => {
                seconds(
                    out,
                    self.time.duration_since(UNIX_EPOCH).unwrap_or_default(),
                );
                Ok(())
            }
            Var::Connection => write!(out, "{}", self.connection),
            Var::Pid => write!(out, "{}", std::process::id()),
            Var::UpstreamAddr | Var::Node => match &self.node {
                Some(n) => write!(out, "{n}"),
                None => return false,
            },
            Var::UpstreamBytesSent | Var::UpstreamBytesReceived if self.node.is_none() => {
                return false
            }
            Var::UpstreamBytesSent => write!(out, "{}", self.bytes_in),
            Var::UpstreamBytesReceived => write!(out, "{}", self.bytes_out),
            Var::UpstreamConnectTime => match self.connect_time {
                Some(d) => {
                    seconds(out, d);
                    Ok(())
                }
                None => return false,
            },
            Var::SslServerName => match &self.sni {
                Some(s) => write!(out, "{s}"),
                None => return false,
            },
            Var::RouteId => match &self.route_id {
                Some(s) => write!(out, "{s}"),
                None => return false,
            },
            Var::ProtocolName => match &self.protocol_name {
                Some(s) => write!(out, "{s}"),
                None => return false,
            },
            Var::ListenAddr => write!(out, "{}", self.listener),
            Var::SessionEnd => write!(out, "{}", self.end),
        };
        true
    }
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

/// What the writer thread is asked to do.
enum Msg {
    Line(Box<Entry>),
    Reopen,
}

/// A handle to the log writer; cheap to clone.
#[derive(Debug, Clone)]
pub struct AccessLog {
    tx: mpsc::Sender<Msg>,
    serial: Arc<AtomicU64>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Msg::Line(_) => "Line",
            Msg::Reopen => "Reopen",
        })
    }
}

/// Where lines go: stderr, or a file reopened on request.
enum Sink {
    Stderr,
    File(PathBuf, std::fs::File),
}

/// Open `path` for appending, creating it and its directory.
pub fn open_append(path: &Path) -> io::Result<std::fs::File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

impl Sink {
    fn open(target: &str) -> io::Result<Sink> {
        if target == "stderr" || target == "/dev/stderr" {
            return Ok(Sink::Stderr);
        }
        let path = PathBuf::from(target);
        let file = open_append(&path)?;
        Ok(Sink::File(path, file))
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Sink::Stderr => io::stderr().write_all(bytes),
            Sink::File(_, f) => f.write_all(bytes),
        }
    }

    fn reopen(&mut self) {
        if let Sink::File(path, file) = self {
            match open_append(path) {
                Ok(f) => *file = f,
                Err(e) => tracing::warn!(
                    path = %path.display(), error = %e,
                    "cannot reopen the access log; writing to the old file"
                ),
            }
        }
    }
}

impl AccessLog {
    /// Start the writer for `target` (`stderr`/`/dev/stderr`, or a file
    /// opened for appending, its directory created) with a compiled format.
    pub fn start(target: &str, template: Template) -> io::Result<AccessLog> {
        let mut sink = Sink::open(target)?;
        let (tx, rx) = mpsc::channel::<Msg>();
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let mut batch = String::new();
                while let Ok(first) = rx.recv() {
                    let mut reopen = false;
                    let mut next = Some(first);
                    // Take whatever else is queued (up to a reopen), then write once.
                    while let Some(msg) = next.take() {
                        match msg {
                            Msg::Line(e) => {
                                template.render(&e, &mut batch);
                                batch.push('\n');
                            }
                            Msg::Reopen => {
                                reopen = true;
                                break;
                            }
                        }
                        next = rx.try_recv().ok();
                    }
                    if !batch.is_empty() {
                        if let Err(e) = sink.write(batch.as_bytes()) {
                            tracing::warn!(error = %e, "cannot write the access log");
                        }
                        batch.clear();
                    }
                    if reopen {
                        sink.reopen();
                    }
                }
            })?;
        Ok(AccessLog {
            tx,
            serial: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Queue one session's entry (never blocks; formatting happens on the
    /// writer thread).
    pub fn record(&self, r: &Record<'_>) {
        let n = self.serial.fetch_add(1, Ordering::Relaxed) + 1;
        let entry = Entry::from_record(r, n, SystemTime::now());
        let _ = self.tx.send(Msg::Line(Box::new(entry)));
    }

    /// Reopen the file after the lines queued so far are written (log
    /// rotation); stderr is left as it is.
    pub fn reopen(&self) {
        let _ = self.tx.send(Msg::Reopen);
    }
}

#[cfg(test)]
mod tests;
