//! Reading the SNI from a TLS ClientHello without terminating TLS (for
//! `tls_passthrough` listeners): the bytes are only peeked, so the backend
//! receives the untouched handshake.

/// What the bytes seen so far say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hello {
    /// Not enough bytes yet for the whole ClientHello message.
    NeedMore,
    /// A complete ClientHello; its SNI if it has one (lower-case, no
    /// trailing dot).
    Done(Option<String>),
    /// Not a TLS ClientHello, or malformed.
    Invalid(&'static str),
}

/// The largest TLS record payload (RFC 8446 section 5.1).
const MAX_RECORD: usize = 16 * 1024;

/// The largest ClientHello message accepted (handshake header included).
/// Real ones are a few KiB; large post-quantum key shares, many PSK
/// identities or padding stay well under this.
pub const MAX_HELLO_MESSAGE: usize = 32 * 1024;

/// The most bytes read to find the ClientHello: its largest message split
/// into full records, plus room for a few small ones.
pub const MAX_HELLO: usize = MAX_HELLO_MESSAGE + 64 * 5 + 5;

/// A bounds-checked reader over a byte slice.
struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| usize::from(b[0]))
    }

    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| usize::from(b[0]) << 8 | usize::from(b[1]))
    }

    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]))
    }

    /// A sub-cursor over a length-prefixed block.
    fn block(&mut self, len: usize) -> Option<Cursor<'a>> {
        self.take(len).map(|buf| Cursor { buf })
    }
}

/// Parse the first bytes of a connection: the ClientHello handshake
/// message, which may be split over several handshake records (RFC 8446
/// section 5.1 allows any fragmentation). Records are reassembled only as
/// far as the ClientHello reaches; bytes after it are not looked at.
pub fn parse(buf: &[u8]) -> Hello {
    let mut rest = buf;
    let mut message: Vec<u8> = Vec::new();
    loop {
        if rest.is_empty() {
            return Hello::NeedMore;
        }
        if rest[0] != 0x16 {
            return Hello::Invalid(if message.is_empty() && rest.len() == buf.len() {
                "not a TLS handshake record"
            } else {
                "ClientHello interrupted by another record type"
            });
        }
        if rest.len() < 5 {
            return Hello::NeedMore;
        }
        if rest[1] != 3 {
            return Hello::Invalid("unknown TLS record version");
        }
        let record_len = usize::from(rest[3]) << 8 | usize::from(rest[4]);
        if record_len == 0 || record_len > MAX_RECORD {
            return Hello::Invalid("bad TLS record length");
        }
        let Some(payload) = rest.get(5..5 + record_len) else {
            return Hello::NeedMore;
        };
        rest = &rest[5 + record_len..];
        // The common case: the whole message in the first record.
        let fragment: &[u8] = if message.is_empty() {
            payload
        } else {
            message.extend_from_slice(payload);
            &message
        };
        match message_len(fragment) {
            Err(why) => return Hello::Invalid(why),
            Ok(Some(len)) if fragment.len() >= len => {
                return match parse_hello(&fragment[..len]) {
                    Some(r) => r,
                    None => Hello::Invalid("malformed ClientHello"),
                }
            }
            Ok(_) => {}
        }
        if message.is_empty() {
            message.extend_from_slice(payload);
        }
    }
}

/// The whole length of the handshake message starting `fragment` (header
/// included), once its 4-byte header is there.
fn message_len(fragment: &[u8]) -> Result<Option<usize>, &'static str> {
    match fragment.first() {
        None => return Ok(None),
        Some(1) => {}
        Some(_) => return Err("first handshake message is not a ClientHello"),
    }
    let Some(header) = fragment.get(..4) else {
        return Ok(None);
    };
    let len =
        4 + (usize::from(header[1]) << 16 | usize::from(header[2]) << 8 | usize::from(header[3]));
    if len > MAX_HELLO_MESSAGE {
        return Err("ClientHello too large");
    }
    Ok(Some(len))
}

/// Parse one whole ClientHello message (handshake header included).
fn parse_hello(message: &[u8]) -> Option<Hello> {
    let mut c = Cursor { buf: message };
    c.take(1)?; // message type, checked by `message_len`
    let len = c.u24()?;
    let mut h = c.block(len)?;
    h.take(2 + 32)?; // client version, random
    let sid = h.u8()?;
    h.take(sid)?;
    let suites = h.u16()?;
    h.take(suites)?;
    let comp = h.u8()?;
    h.take(comp)?;
    if h.buf.is_empty() {
        return Some(Hello::Done(None)); // no extensions at all
    }
    let ext_len = h.u16()?;
    let mut exts = h.block(ext_len)?;
    while !exts.buf.is_empty() {
        let ty = exts.u16()?;
        let len = exts.u16()?;
        let mut body = exts.block(len)?;
        if ty != 0 {
            continue;
        }
        let list_len = body.u16()?;
        let mut list = body.block(list_len)?;
        while !list.buf.is_empty() {
            let name_type = list.u8()?;
            let name_len = list.u16()?;
            let name = list.take(name_len)?;
            if name_type == 0 {
                let name = std::str::from_utf8(name).ok()?;
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
                    return Some(Hello::Invalid("bad server name"));
                }
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                return Some(Hello::Done(Some(name)));
            }
        }
        return Some(Hello::Done(None));
    }
    Some(Hello::Done(None))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real ClientHello from rustls for `name`.
    fn hello(name: Option<&str>) -> Vec<u8> {
        use std::sync::Arc;
        let provider = crate::tls::provider();
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let mut config = config;
        config.enable_sni = name.is_some();
        let server =
            rustls::pki_types::ServerName::try_from(name.unwrap_or("ignored.test").to_string())
                .expect("name");
        let mut conn = rustls::ClientConnection::new(Arc::new(config), server).expect("conn");
        let mut out = Vec::new();
        conn.write_tls(&mut out).expect("hello");
        out
    }

    #[test]
    fn sni_from_a_real_client_hello() {
        let h = hello(Some("A.Test.com"));
        assert_eq!(parse(&h), Hello::Done(Some("a.test.com".into())));
        for cut in [0, 1, 4, 5, 40, h.len() - 1] {
            assert_eq!(parse(&h[..cut]), Hello::NeedMore, "cut at {cut}");
        }
        assert_eq!(parse(&hello(None)), Hello::Done(None));
    }

    #[test]
    fn garbage_is_invalid() {
        assert!(matches!(parse(b"GET / HTTP/1.1\r\n"), Hello::Invalid(_)));
        assert!(matches!(parse(&[0x16, 3, 1, 0, 0]), Hello::Invalid(_)));
        assert!(matches!(
            parse(&[0x16, 3, 1, 0, 4, 2, 0, 0, 0]),
            Hello::Invalid(_)
        ));
        let mut h = hello(Some("x.test"));
        h[5] = 2; // not a ClientHello
        assert!(matches!(parse(&h), Hello::Invalid(_)));
        let mut h = hello(Some("x.test"));
        h[6] = 1; // a ClientHello of 64 KiB and more
        assert_eq!(parse(&h), Hello::Invalid("ClientHello too large"));
        let mut h = hello(Some("x.test"));
        h[8] = h[8].wrapping_add(1); // message goes on past the record
        let alert = [0x15, 3, 3, 0, 2, 2, 40];
        assert_eq!(parse(&h), Hello::NeedMore);
        h.extend_from_slice(&alert);
        assert_eq!(
            parse(&h),
            Hello::Invalid("ClientHello interrupted by another record type")
        );
    }

    /// `hello`'s handshake message re-framed into records cut at `cuts`
    /// (offsets into the message).
    fn reframe(record: &[u8], cuts: &[usize]) -> Vec<u8> {
        let message = &record[5..];
        let mut out = Vec::new();
        let mut from = 0;
        for &to in cuts.iter().chain(std::iter::once(&message.len())) {
            let part = &message[from..to];
            out.extend_from_slice(&[0x16, record[1], record[2]]);
            out.extend_from_slice(&u16::try_from(part.len()).expect("len").to_be_bytes());
            out.extend_from_slice(part);
            from = to;
        }
        out
    }

    #[test]
    fn a_client_hello_split_over_several_records() {
        let h = hello(Some("Split.Test"));
        let n = h.len() - 5;
        for cuts in [
            vec![1],
            vec![2],
            vec![4],
            vec![n / 2],
            vec![n - 1],
            vec![1, 3, 100, n - 1],
            (1..n).collect::<Vec<_>>(),
        ] {
            let split = reframe(&h, &cuts);
            assert_eq!(
                parse(&split),
                Hello::Done(Some("split.test".into())),
                "cuts {cuts:?}"
            );
            // Every shorter prefix asks for more, never fails.
            for end in [0, 5, 6, 10, split.len() / 2, split.len() - 1] {
                assert_eq!(
                    parse(&split[..end]),
                    Hello::NeedMore,
                    "cuts {cuts:?} end {end}"
                );
            }
            // Bytes after the ClientHello (the next flight) are not looked at.
            let mut more = split.clone();
            more.extend_from_slice(b"\x14\x03\x03\x00\x01\x01");
            assert_eq!(parse(&more), Hello::Done(Some("split.test".into())));
        }
        // Only the ClientHello is reassembled: a second record that does not
        // carry handshake bytes is refused.
        let mut bad = reframe(&h, &[n / 2]);
        let second = 5 + n / 2;
        bad[second] = 0x17;
        assert!(matches!(parse(&bad), Hello::Invalid(_)));
    }
}
