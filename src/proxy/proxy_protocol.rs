//! The PROXY protocol (HAProxy's v1 text and v2 binary headers).
//!
//! A listener with `proxy_protocol: true` expects every connection to start
//! with a header carrying the original client address; a missing or
//! malformed header closes the connection. The header is consumed exactly
//! (peeked, then read to its last byte), so whatever follows — a TLS
//! ClientHello, a server-speaks-first silence, payload — is left in the
//! socket untouched for the next stage. A listener with
//! `proxy_protocol_to_upstream: true` writes a v1 header to the node before
//! any client byte.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest v1 header, CRLF included (the specification's limit).
pub const V1_MAX: usize = 107;
/// Longest v2 header we accept (16-byte preamble + addresses + TLVs).
pub const V2_MAX: usize = 16 + 1024;
/// How long a client may take to send its header (nginx's
/// `proxy_protocol_timeout` default).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

const V2_SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// What a header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// A proxied connection: the original client and the address it reached.
    Proxy {
        /// Original client.
        src: SocketAddr,
        /// Original destination.
        dst: SocketAddr,
    },
    /// v1 `UNKNOWN`, v2 `LOCAL` or an unspecified family: keep the peer's address.
    Local,
}

/// Why bytes are not (yet) a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// A valid prefix; more bytes are needed.
    #[error("incomplete PROXY protocol header")]
    Incomplete,
    /// Not a PROXY protocol header.
    #[error("invalid PROXY protocol header: {0}")]
    Invalid(&'static str),
}

/// Parse a header at the start of `buf`; on success also the number of bytes it takes.
pub fn parse(buf: &[u8]) -> Result<(Header, usize), ParseError> {
    if buf.is_empty() {
        return Err(ParseError::Incomplete);
    }
    if buf[0] == b'P' {
        parse_v1(buf)
    } else if buf[0] == b'\r' {
        parse_v2(buf)
    } else {
        Err(ParseError::Invalid("no PROXY signature"))
    }
}

fn parse_v1(buf: &[u8]) -> Result<(Header, usize), ParseError> {
    let sig = b"PROXY ";
    let n = buf.len().min(sig.len());
    if buf[..n] != sig[..n] {
        return Err(ParseError::Invalid("no PROXY signature"));
    }
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        return if buf.len() >= V1_MAX {
            Err(ParseError::Invalid("v1 header longer than 107 bytes"))
        } else {
            Err(ParseError::Incomplete)
        };
    };
    if lf == 0 || window[lf - 1] != b'\r' {
        return Err(ParseError::Invalid("v1 header not ended by CRLF"));
    }
    let line = std::str::from_utf8(&window[sig.len()..lf - 1])
        .map_err(|_| ParseError::Invalid("v1 header is not text"))?;
    let mut parts = line.split(' ');
    let proto = parts.next().unwrap_or_default();
    if proto == "UNKNOWN" {
        return Ok((Header::Local, lf + 1));
    }
    let fields: Vec<&str> = parts.collect();
    let [src, dst, sport, dport] = fields[..] else {
        return Err(ParseError::Invalid("v1 header needs 4 address fields"));
    };
    let ip = |s: &str| -> Result<IpAddr, ParseError> {
        let ip: IpAddr = s
            .parse()
            .map_err(|_| ParseError::Invalid("v1 bad address"))?;
        match (proto, ip) {
            ("TCP4", IpAddr::V4(_)) | ("TCP6", IpAddr::V6(_)) => Ok(ip),
            ("TCP4" | "TCP6", _) => Err(ParseError::Invalid("v1 address family mismatch")),
            _ => Err(ParseError::Invalid(
                "v1 protocol is not TCP4, TCP6 or UNKNOWN",
            )),
        }
    };
    let port = |s: &str| -> Result<u16, ParseError> {
        if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ParseError::Invalid("v1 bad port"));
        }
        s.parse().map_err(|_| ParseError::Invalid("v1 bad port"))
    };
    Ok((
        Header::Proxy {
            src: SocketAddr::new(ip(src)?, port(sport)?),
            dst: SocketAddr::new(ip(dst)?, port(dport)?),
        },
        lf + 1,
    ))
}

fn parse_v2(buf: &[u8]) -> Result<(Header, usize), ParseError> {
    let n = buf.len().min(V2_SIG.len());
    if buf[..n] != V2_SIG[..n] {
        return Err(ParseError::Invalid("no PROXY signature"));
    }
    if buf.len() < 16 {
        return Err(ParseError::Incomplete);
    }
    let ver_cmd = buf[12];
    if ver_cmd >> 4 != 2 {
        return Err(ParseError::Invalid("v2 version is not 2"));
    }
    let fam = buf[13];
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let total = 16 + len;
    if total > V2_MAX {
        return Err(ParseError::Invalid("v2 header too long"));
    }
    if buf.len() < total {
        return Err(ParseError::Incomplete);
    }
    let body = &buf[16..total];
    match ver_cmd & 0x0f {
        0 => return Ok((Header::Local, total)),
        1 => {}
        _ => return Err(ParseError::Invalid("v2 command is neither LOCAL nor PROXY")),
    }
    let be16 = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    let header = match fam >> 4 {
        0 => Header::Local,
        1 => {
            if body.len() < 12 {
                return Err(ParseError::Invalid("v2 IPv4 addresses truncated"));
            }
            let ip = |b: &[u8]| IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]));
            Header::Proxy {
                src: SocketAddr::new(ip(&body[0..4]), be16(&body[8..10])),
                dst: SocketAddr::new(ip(&body[4..8]), be16(&body[10..12])),
            }
        }
        2 => {
            if body.len() < 36 {
                return Err(ParseError::Invalid("v2 IPv6 addresses truncated"));
            }
            let ip = |b: &[u8]| {
                let mut a = [0u8; 16];
                a.copy_from_slice(&b[..16]);
                IpAddr::V6(Ipv6Addr::from(a))
            };
            Header::Proxy {
                src: SocketAddr::new(ip(&body[0..16]), be16(&body[32..34])),
                dst: SocketAddr::new(ip(&body[16..32]), be16(&body[34..36])),
            }
        }
        // AF_UNIX: no IP address to use.
        3 => Header::Local,
        _ => return Err(ParseError::Invalid("v2 unknown address family")),
    };
    Ok((header, total))
}

/// Why reading a header failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Not a header, or too long.
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// The client closed before sending a whole header.
    #[error("connection closed before the PROXY protocol header")]
    Eof,
    /// No whole header within the deadline.
    #[error("no PROXY protocol header within {0:?}")]
    Timeout(Duration),
    /// Socket error.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Read exactly one header from the start of `stream`, within `timeout`.
pub async fn read_header(stream: &mut TcpStream, timeout: Duration) -> Result<Header, ReadError> {
    match tokio::time::timeout(timeout, read_inner(stream)).await {
        Ok(r) => r,
        Err(_) => Err(ReadError::Timeout(timeout)),
    }
}

async fn read_inner(stream: &mut TcpStream) -> Result<Header, ReadError> {
    let mut buf = vec![0u8; V2_MAX];
    // Bytes of a header that arrived split across segments. Every byte of a
    // valid but incomplete prefix belongs to the header, so they can be
    // consumed; the next peek then waits for new data instead of spinning.
    let mut have: Vec<u8> = Vec::new();
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Err(ReadError::Eof);
        }
        let parsed = if have.is_empty() {
            parse(&buf[..n])
        } else {
            let mut joined = have.clone();
            joined.extend_from_slice(&buf[..n]);
            parse(&joined)
        };
        match parsed {
            Ok((header, used)) => {
                let rest = used - have.len();
                stream.read_exact(&mut buf[..rest]).await?;
                return Ok(header);
            }
            Err(ParseError::Incomplete) => {
                stream.read_exact(&mut buf[..n]).await?;
                have.extend_from_slice(&buf[..n]);
                if have.len() >= V2_MAX {
                    return Err(ParseError::Invalid("header too long").into());
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The v1 header announcing `client` reaching `server`.
pub fn v1_header(client: SocketAddr, server: SocketAddr) -> String {
    match (client.ip(), server.ip()) {
        (IpAddr::V4(c), IpAddr::V4(s)) => {
            format!("PROXY TCP4 {c} {s} {} {}\r\n", client.port(), server.port())
        }
        (c, s) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            format!(
                "PROXY TCP6 {} {} {} {}\r\n",
                v6(c),
                v6(s),
                client.port(),
                server.port()
            )
        }
    }
}

/// Send the v1 header to a freshly connected node, within `timeout`.
pub async fn write_v1(
    stream: &mut TcpStream,
    client: SocketAddr,
    server: SocketAddr,
    timeout: Duration,
) -> std::io::Result<()> {
    let header = v1_header(client, server);
    match tokio::time::timeout(timeout, stream.write_all(header.as_bytes())).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "timed out sending the PROXY protocol header",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_tcp4_tcp6_and_unknown() {
        let h = b"PROXY TCP4 198.51.100.7 10.0.0.1 56324 443\r\nrest";
        assert_eq!(
            parse(h).unwrap(),
            (
                Header::Proxy {
                    src: sa("198.51.100.7:56324"),
                    dst: sa("10.0.0.1:443")
                },
                h.len() - 4
            )
        );
        let h = b"PROXY TCP6 2001:db8::1 ::1 1 65535\r\n";
        assert_eq!(
            parse(h).unwrap().0,
            Header::Proxy {
                src: sa("[2001:db8::1]:1"),
                dst: sa("[::1]:65535")
            }
        );
        assert_eq!(parse(b"PROXY UNKNOWN\r\n").unwrap(), (Header::Local, 15));
        assert_eq!(
            parse(b"PROXY UNKNOWN ffff::1 ::1 1 2\r\n").unwrap().0,
            Header::Local
        );
    }

    #[test]
    fn v1_prefixes_are_incomplete() {
        let full = b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n";
        for n in 0..full.len() {
            assert_eq!(parse(&full[..n]), Err(ParseError::Incomplete), "{n}");
        }
    }

    #[test]
    fn v1_garbage_is_invalid() {
        for bad in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
            b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
            b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",
            b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
        ] {
            assert!(
                matches!(parse(bad), Err(ParseError::Invalid(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat();
        assert!(matches!(parse(&long), Err(ParseError::Invalid(_))));
    }

    fn v2(cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
        let mut v = V2_SIG.to_vec();
        v.push(0x20 | cmd);
        v.push(fam);
        v.extend_from_slice(&(body.len() as u16).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn v2_ipv4_ipv6_local_and_tlvs() {
        let mut body = vec![198, 51, 100, 7, 10, 0, 0, 1];
        body.extend_from_slice(&56324u16.to_be_bytes());
        body.extend_from_slice(&443u16.to_be_bytes());
        body.extend_from_slice(&[0x04, 0, 1, 0xAA]); // a TLV is skipped
        let h = v2(1, 0x11, &body);
        assert_eq!(
            parse(&[h.as_slice(), b"payload"].concat()).unwrap(),
            (
                Header::Proxy {
                    src: sa("198.51.100.7:56324"),
                    dst: sa("10.0.0.1:443")
                },
                h.len()
            )
        );
        let mut body = vec![0u8; 36];
        body[15] = 1;
        body[31] = 2;
        body[32..34].copy_from_slice(&7u16.to_be_bytes());
        body[34..36].copy_from_slice(&8u16.to_be_bytes());
        assert_eq!(
            parse(&v2(1, 0x21, &body)).unwrap().0,
            Header::Proxy {
                src: sa("[::1]:7"),
                dst: sa("[::2]:8")
            }
        );
        assert_eq!(parse(&v2(0, 0x00, &[])).unwrap(), (Header::Local, 16));
        assert_eq!(parse(&v2(1, 0x00, &[])).unwrap().0, Header::Local);
    }

    #[test]
    fn v2_truncated_and_garbage() {
        let h = v2(1, 0x11, &[1; 12]);
        for n in 0..h.len() {
            assert_eq!(parse(&h[..n]), Err(ParseError::Incomplete), "{n}");
        }
        assert!(matches!(
            parse(&v2(1, 0x11, &[1; 4])),
            Err(ParseError::Invalid(_))
        ));
        assert!(matches!(
            parse(&v2(2, 0x11, &[1; 12])),
            Err(ParseError::Invalid(_))
        ));
        let mut bad_version = h.clone();
        bad_version[12] = 0x11;
        assert!(matches!(parse(&bad_version), Err(ParseError::Invalid(_))));
        let mut huge = V2_SIG.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert!(matches!(parse(&huge), Err(ParseError::Invalid(_))));
        assert!(matches!(
            parse(b"\r\n\r\n\0\r\nQUIX\n"),
            Err(ParseError::Invalid(_))
        ));
    }

    #[test]
    fn v1_written_headers_parse_back() {
        for (c, s) in [
            ("198.51.100.7:1234", "127.0.0.1:9100"),
            ("[2001:db8::7]:1234", "[::1]:9100"),
            ("198.51.100.7:1234", "[::1]:9100"),
        ] {
            let h = v1_header(sa(c), sa(s));
            assert!(h.len() <= V1_MAX);
            let (parsed, used) = parse(h.as_bytes()).unwrap();
            assert_eq!(used, h.len());
            let Header::Proxy { src, dst } = parsed else {
                panic!("{h}")
            };
            assert_eq!(src.port(), 1234);
            assert_eq!(dst.port(), 9100);
        }
        assert_eq!(
            v1_header(sa("198.51.100.7:1234"), sa("127.0.0.1:9100")),
            "PROXY TCP4 198.51.100.7 127.0.0.1 1234 9100\r\n"
        );
    }
}
