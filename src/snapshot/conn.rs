//! What is known about a connection when it is routed, and the stream
//! variables read from it (`$remote_addr`, `$server_port`, ...).
//!
//! A leaf of the snapshot: it imports nothing of the crate, so the plugins
//! (which read variables) and the snapshot (which matches routes on them)
//! share it without depending on each other.

use std::net::IpAddr;

/// What is known about a connection when it is routed.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// Client address (IPv4-mapped IPv6 shown as IPv4).
    pub remote_addr: IpAddr,
    /// Client port.
    pub remote_port: u16,
    /// Local address the connection arrived on.
    pub server_addr: IpAddr,
    /// Local port the connection arrived on.
    pub server_port: u16,
    /// TLS SNI, lower-case without a trailing dot.
    pub sni: Option<String>,
    /// MQTT client id read by the mqtt-proxy plugin (after routing).
    pub mqtt_client_id: Option<String>,
}

impl ConnInfo {
    /// The stream variable `name` of this connection (nginx's names), if set.
    pub fn var(&self, name: &str) -> Option<String> {
        match name {
            "remote_addr" => Some(self.remote_addr.to_string()),
            "remote_port" => Some(self.remote_port.to_string()),
            "server_addr" => Some(self.server_addr.to_string()),
            "server_port" => Some(self.server_port.to_string()),
            "ssl_server_name" => self.sni.clone(),
            "mqtt_client_id" => self.mqtt_client_id.clone(),
            _ => None,
        }
    }
}

/// Undo IPv4-mapped IPv6 so filters written as IPv4 match dual-stack sockets.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// Replace each `$name` in a template (`vars_combinations`, limit-conn's
/// `var_combination`) by `var(name)`, unset ones by nothing. Returns the
/// text and how many variables had a value.
pub fn expand_template(t: &str, var: &dyn Fn(&str) -> Option<String>) -> (String, usize) {
    let mut out = String::new();
    let mut found = 0;
    let mut rest = t;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let end = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        if let Some(v) = var(&after[..end]) {
            found += 1;
            out.push_str(&v);
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    (out, found)
}
