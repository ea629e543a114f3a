//! `apisix.stream_proxy.tcp` / `.udp` listener entries.
//!
//! APISIX accepts a bare port (`9100`, meaning every IPv4 interface), `"ip:port"`,
//! `"[v6]:port"`, inclusive port ranges (`"2000-2005"`, `"127.0.0.1:2000-2005"`) and, for TCP
//! only, a table `{addr, tls, tls_passthrough, proxy_protocol, proxy_protocol_to_upstream}`.
//! Each entry expands to one [`ListenSpec`] per port. Error texts follow `apisix/cli/ops.lua`
//! (`invalid stream_proxy.tcp entry: port out of range (1-65535): 0`), with extra checks where
//! APISIX hands the string to nginx unchecked: we bind sockets ourselves, so the host part must
//! be a concrete IP and the port must be numeric.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde_yaml::Value;

use super::read::show;
use super::{ConfigError, ProxyProtocol};

/// One socket to listen on, as expanded from a `stream_proxy` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenSpec {
    /// Address and port to bind.
    pub addr: SocketAddr,
    /// Terminate TLS (certificate chosen by SNI from the `ssls` objects).
    pub tls: bool,
    /// Peek the ClientHello SNI for routing but forward the TLS bytes untouched.
    pub tls_passthrough: bool,
    /// Connections must start with a PROXY protocol header.
    pub proxy_protocol: bool,
    /// Send a PROXY protocol header with the client address to the upstream.
    pub proxy_protocol_to_upstream: bool,
}

impl ListenSpec {
    /// A plain listener on `addr` with every option off.
    pub fn new(addr: SocketAddr) -> Self {
        ListenSpec {
            addr,
            tls: false,
            tls_passthrough: false,
            proxy_protocol: false,
            proxy_protocol_to_upstream: false,
        }
    }

    /// "ip:port" as APISIX prints listen_addr, e.g. `0.0.0.0:9100`, `[::1]:9100`.
    pub fn listen_addr(&self) -> String {
        self.addr.to_string()
    }
}

/// Options that a table entry may set; strings and numbers take the defaults.
struct EntryOptions {
    tls: bool,
    tls_passthrough: bool,
    proxy_protocol: bool,
    proxy_protocol_to_upstream: bool,
}

/// Parse one `stream_proxy.tcp` (is_tcp = true) or `.udp` entry into specs (a range gives several).
pub fn parse_entry(
    v: &Value,
    is_tcp: bool,
    defaults: &ProxyProtocol,
) -> Result<Vec<ListenSpec>, ConfigError> {
    let list = if is_tcp { "tcp" } else { "udp" };
    let err = |msg: String| ConfigError::Listen { list, msg };
    // PROXY protocol is a TCP feature: APISIX never applies the defaults to UDP.
    let mut opts = EntryOptions {
        tls: false,
        tls_passthrough: false,
        proxy_protocol: is_tcp && defaults.enable_tcp_pp,
        proxy_protocol_to_upstream: is_tcp && defaults.enable_tcp_pp_to_upstream,
    };
    let (ip, ports) = match v {
        Value::Mapping(map) => {
            if !is_tcp {
                return Err(err(format!(
                    "table form is only allowed for tcp: {}",
                    show(v)
                )));
            }
            for (k, val) in map {
                let Some(key) = k.as_str() else { continue };
                let slot = match key {
                    "tls" => &mut opts.tls,
                    "tls_passthrough" => &mut opts.tls_passthrough,
                    "proxy_protocol" => &mut opts.proxy_protocol,
                    "proxy_protocol_to_upstream" => &mut opts.proxy_protocol_to_upstream,
                    _ => continue,
                };
                match val {
                    Value::Bool(b) => *slot = *b,
                    // An explicit null keeps the default, like an absent key.
                    Value::Null => {}
                    other => {
                        return Err(err(format!(
                            "{key} must be a boolean, got {}: {}",
                            show(other),
                            show(v)
                        )))
                    }
                }
            }
            if opts.tls && opts.tls_passthrough {
                return Err(err(format!(
                    "tls and tls_passthrough cannot both be set: {}",
                    show(v)
                )));
            }
            match map.get("addr") {
                None | Some(Value::Null) => return Err(err(format!("missing addr: {}", show(v)))),
                Some(Value::Mapping(_)) => {
                    return Err(err(format!(
                        "addr must be a port number or string: {}",
                        show(v)
                    )))
                }
                Some(addr) => parse_scalar(addr).map_err(err)?,
            }
        }
        other => parse_scalar(other).map_err(err)?,
    };
    Ok(ports
        .map(|port| ListenSpec {
            addr: SocketAddr::new(ip, port),
            tls: opts.tls,
            tls_passthrough: opts.tls_passthrough,
            proxy_protocol: opts.proxy_protocol,
            proxy_protocol_to_upstream: opts.proxy_protocol_to_upstream,
        })
        .collect())
}

/// A number or string entry (or table `addr`) to an IP and an inclusive port range.
fn parse_scalar(v: &Value) -> Result<(IpAddr, std::ops::RangeInclusive<u16>), String> {
    let any_v4 = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    match v {
        Value::Number(n) => {
            if let Some(p) = n.as_u64() {
                let p = check_port_num(p, &n.to_string())?;
                Ok((any_v4, p..=p))
            } else if n.as_i64().is_some() {
                // Negative integers are out of range, as in APISIX.
                Err(format!("port out of range (1-65535): {n}"))
            } else {
                Err(format!("invalid port format: {n}"))
            }
        }
        Value::String(s) => parse_string(s.trim()),
        other => Err(format!(
            "expected a port number, an \"ip:port\" string or a table, got {}",
            show(other)
        )),
    }
}

/// `"9100"`, `"ip:port"`, `"[v6]:port"`, with `port` either `N` or `N-M`.
fn parse_string(entry: &str) -> Result<(IpAddr, std::ops::RangeInclusive<u16>), String> {
    let (ip, port_part) = if let Some(rest) = entry.strip_prefix('[') {
        let Some(close) = rest.find(']') else {
            return Err(format!("missing ']' after IPv6 address: {entry}"));
        };
        let host = &rest[..close];
        let ip: std::net::Ipv6Addr = host
            .parse()
            .map_err(|_| format!("not an IPv6 address in brackets: {entry}"))?;
        let after = &rest[close + 1..];
        // APISIX lets "[::1]" through to nginx; we need a port to bind.
        let Some(port_part) = after.strip_prefix(':') else {
            if after.is_empty() {
                return Err(format!("missing port: {entry}"));
            }
            return Err(format!("invalid port format: {entry}"));
        };
        (IpAddr::V6(ip), port_part)
    } else if let Some((host, port_part)) = entry.split_once(':') {
        // APISIX splits unbracketed strings at the first ':'.
        let ip: IpAddr = host.parse().map_err(|_| {
            format!("host is not an IP address (a concrete address is needed to bind; IPv6 goes in brackets): {entry}")
        })?;
        (ip, port_part)
    } else {
        (IpAddr::V4(Ipv4Addr::UNSPECIFIED), entry)
    };
    if port_part.is_empty() {
        return Err(format!("missing port: {entry}"));
    }
    let range = if let Some((a, b)) = port_part.split_once('-') {
        if !is_digits(a) || !is_digits(b) {
            return Err(format!("invalid port format: {entry}"));
        }
        let start = check_port_str(a)?;
        let end = check_port_str(b)?;
        if start > end {
            return Err(format!("invalid port range (start > end): {port_part}"));
        }
        start..=end
    } else {
        // APISIX only rejects digit-led oddities such as "80.5"; a non-numeric port would
        // reach nginx, so it is rejected here too.
        if !is_digits(port_part) {
            return Err(format!("invalid port format: {entry}"));
        }
        let p = check_port_str(port_part)?;
        p..=p
    };
    Ok((ip, range))
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

fn check_port_str(s: &str) -> Result<u16, String> {
    match s.parse::<u64>() {
        Ok(n) => check_port_num(n, s),
        Err(_) => Err(format!("port out of range (1-65535): {s}")),
    }
}

fn check_port_num(n: u64, shown: &str) -> Result<u16, String> {
    match u16::try_from(n) {
        Ok(p) if p >= 1 => Ok(p),
        _ => Err(format!("port out of range (1-65535): {shown}")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn yaml(s: &str) -> Value {
        serde_yaml::from_str(s).unwrap()
    }

    fn tcp(s: &str) -> Result<Vec<ListenSpec>, String> {
        parse_entry(&yaml(s), true, &ProxyProtocol::default()).map_err(|e| e.to_string())
    }

    fn udp(s: &str) -> Result<Vec<ListenSpec>, String> {
        parse_entry(&yaml(s), false, &ProxyProtocol::default()).map_err(|e| e.to_string())
    }

    fn addrs(v: Vec<ListenSpec>) -> Vec<String> {
        v.into_iter().map(|s| s.listen_addr()).collect()
    }

    #[test]
    fn integer_is_all_ipv4_interfaces() {
        assert_eq!(addrs(tcp("9100").unwrap()), ["0.0.0.0:9100"]);
        assert_eq!(addrs(udp("9200").unwrap()), ["0.0.0.0:9200"]);
    }

    #[test]
    fn string_forms() {
        assert_eq!(addrs(tcp("'9100'").unwrap()), ["0.0.0.0:9100"]);
        assert_eq!(addrs(tcp("'127.0.0.1:9101'").unwrap()), ["127.0.0.1:9101"]);
        assert_eq!(addrs(tcp("'[::1]:9100'").unwrap()), ["[::1]:9100"]);
        assert_eq!(addrs(udp("'127.0.0.1:9211'").unwrap()), ["127.0.0.1:9211"]);
        assert_eq!(addrs(udp("'[::]:53'").unwrap()), ["[::]:53"]);
    }

    #[test]
    fn ranges_expand_inclusively() {
        assert_eq!(
            addrs(tcp("'2000-2002'").unwrap()),
            ["0.0.0.0:2000", "0.0.0.0:2001", "0.0.0.0:2002"]
        );
        assert_eq!(
            addrs(udp("'127.0.0.1:2000-2001'").unwrap()),
            ["127.0.0.1:2000", "127.0.0.1:2001"]
        );
        assert_eq!(addrs(tcp("'[::1]:7-7'").unwrap()), ["[::1]:7"]);
        let specs = tcp("{addr: '3000-3001', tls: true}").unwrap();
        assert_eq!(specs.len(), 2);
        assert!(specs.iter().all(|s| s.tls));
    }

    #[test]
    fn table_form() {
        let s = tcp("{addr: 9102, tls: true}").unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].listen_addr(), "0.0.0.0:9102");
        assert!(s[0].tls && !s[0].tls_passthrough && !s[0].proxy_protocol);
        let s = tcp("{addr: '127.0.0.1:9443', tls_passthrough: true, proxy_protocol: true, proxy_protocol_to_upstream: true}").unwrap();
        assert_eq!(
            s[0],
            ListenSpec {
                addr: "127.0.0.1:9443".parse().unwrap(),
                tls: false,
                tls_passthrough: true,
                proxy_protocol: true,
                proxy_protocol_to_upstream: true,
            }
        );
    }

    #[test]
    fn proxy_protocol_defaults_apply_to_tcp_only() {
        let pp = ProxyProtocol {
            enable_tcp_pp: true,
            enable_tcp_pp_to_upstream: true,
        };
        let s = parse_entry(&yaml("9100"), true, &pp).unwrap();
        assert!(s[0].proxy_protocol && s[0].proxy_protocol_to_upstream);
        let s = parse_entry(&yaml("{addr: 9100, proxy_protocol: false}"), true, &pp).unwrap();
        assert!(!s[0].proxy_protocol && s[0].proxy_protocol_to_upstream);
        let s = parse_entry(&yaml("9100"), false, &pp).unwrap();
        assert!(!s[0].proxy_protocol && !s[0].proxy_protocol_to_upstream);
    }

    #[test]
    fn apisix_error_texts() {
        let cases = [
            ("0", "invalid stream_proxy.tcp entry: port out of range (1-65535): 0"),
            ("65536", "invalid stream_proxy.tcp entry: port out of range (1-65535): 65536"),
            ("-1", "invalid stream_proxy.tcp entry: port out of range (1-65535): -1"),
            ("'127.0.0.1:0'", "invalid stream_proxy.tcp entry: port out of range (1-65535): 0"),
            ("'0-100'", "invalid stream_proxy.tcp entry: port out of range (1-65535): 0"),
            ("'100-70000'", "invalid stream_proxy.tcp entry: port out of range (1-65535): 70000"),
            ("'3000-2000'", "invalid stream_proxy.tcp entry: invalid port range (start > end): 3000-2000"),
            ("'127.0.0.1:'", "invalid stream_proxy.tcp entry: missing port: 127.0.0.1:"),
            ("'80.5'", "invalid stream_proxy.tcp entry: invalid port format: 80.5"),
            ("'1e3'", "invalid stream_proxy.tcp entry: invalid port format: 1e3"),
            ("80.5", "invalid stream_proxy.tcp entry: invalid port format: 80.5"),
            ("'abc'", "invalid stream_proxy.tcp entry: invalid port format: abc"),
            ("'[::1]'", "invalid stream_proxy.tcp entry: missing port: [::1]"),
            ("'99999999999999999999999'", "invalid stream_proxy.tcp entry: port out of range (1-65535): 99999999999999999999999"),
        ];
        for (input, want) in cases {
            assert_eq!(tcp(input).unwrap_err(), want, "input {input}");
        }
        assert_eq!(
            udp("'3000-2000'").unwrap_err(),
            "invalid stream_proxy.udp entry: invalid port range (start > end): 3000-2000"
        );
        assert_eq!(
            udp("0").unwrap_err(),
            "invalid stream_proxy.udp entry: port out of range (1-65535): 0"
        );
    }

    #[test]
    fn host_must_be_an_ip() {
        let e = tcp("'localhost:9100'").unwrap_err();
        assert!(e.starts_with("invalid stream_proxy.tcp entry: host is not an IP address"));
        assert!(e.ends_with("localhost:9100"), "{e}");
        let e = tcp("'[zz]:1'").unwrap_err();
        assert!(e.contains("[zz]:1"), "{e}");
        let e = tcp("'[127.0.0.1]:1'").unwrap_err();
        assert!(e.contains("[127.0.0.1]:1"), "{e}");
        let e = tcp("'[::1:80'").unwrap_err();
        assert!(e.contains("[::1:80"), "{e}");
    }

    #[test]
    fn table_errors() {
        let e = tcp("{tls: true}").unwrap_err();
        assert!(
            e.starts_with("invalid stream_proxy.tcp entry: missing addr"),
            "{e}"
        );
        let e = tcp("{addr: 9100, tls: true, tls_passthrough: true}").unwrap_err();
        assert!(e.contains("tls and tls_passthrough"), "{e}");
        let e = tcp("{addr: 9100, tls: 'yes'}").unwrap_err();
        assert!(e.contains("tls must be a boolean"), "{e}");
        let e = tcp("{addr: 0}").unwrap_err();
        assert_eq!(
            e,
            "invalid stream_proxy.tcp entry: port out of range (1-65535): 0"
        );
        let e = udp("{addr: 9200}").unwrap_err();
        assert!(
            e.starts_with("invalid stream_proxy.udp entry: table form"),
            "{e}"
        );
        let e = tcp("true").unwrap_err();
        assert!(e.contains("expected a port number"), "{e}");
    }
}
