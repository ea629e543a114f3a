//! Reading the SNI from a TLS ClientHello without terminating TLS (for
//! `tls_passthrough` listeners): the bytes are only peeked, so the backend
//! receives the untouched handshake.

/// What the bytes seen so far say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hello {
    /// Not enough bytes yet for the whole ClientHello record.
    NeedMore,
    /// A complete ClientHello; its SNI if it has one (lower-case, no
    /// trailing dot).
    Done(Option<String>),
    /// Not a TLS ClientHello, or malformed.
    Invalid(&'static str),
}

/// The largest first flight read: one TLS record (16 KiB) and its header.
pub const MAX_HELLO: usize = 5 + 16 * 1024;

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

/// Parse the first TLS record of a connection. The whole ClientHello must
/// fit in that record (as it does for every common client).
pub fn parse(buf: &[u8]) -> Hello {
    if buf.is_empty() {
        return Hello::NeedMore;
    }
    if buf[0] != 0x16 {
        return Hello::Invalid("not a TLS handshake record");
    }
    if buf.len() < 5 {
        return Hello::NeedMore;
    }
    if buf[1] != 3 {
        return Hello::Invalid("unknown TLS record version");
    }
    let record_len = usize::from(buf[3]) << 8 | usize::from(buf[4]);
    if record_len == 0 || record_len > 16 * 1024 {
        return Hello::Invalid("bad TLS record length");
    }
    if buf.len() < 5 + record_len {
        return Hello::NeedMore;
    }
    match parse_hello(&buf[5..5 + record_len]) {
        Some(r) => r,
        None => Hello::Invalid("malformed ClientHello"),
    }
}

fn parse_hello(record: &[u8]) -> Option<Hello> {
    let mut c = Cursor { buf: record };
    if c.u8()? != 1 {
        return Some(Hello::Invalid(
            "first handshake message is not a ClientHello",
        ));
    }
    let len = c.u24()?;
    let mut h = match c.block(len) {
        Some(h) => h,
        None => return Some(Hello::Invalid("ClientHello spans several records")),
    };
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
        let provider = Arc::new(rustls::crypto::ring::default_provider());
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
        let n = h.len();
        h[8] = 0xff; // ClientHello length beyond the record
        assert!(matches!(parse(&h[..n]), Hello::Invalid(_)));
    }
}
