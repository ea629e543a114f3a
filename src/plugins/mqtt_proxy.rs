//! `mqtt-proxy`: read the client's MQTT CONNECT packet before an upstream
//! is chosen, check its protocol name and level, and expose its client id
//! as `mqtt_client_id` (for `chash` upstreams keyed on it).
//!
//! The packet is read, not peeked, so it works the same over TLS; the bytes
//! read (the packet and anything the client sent after it) are kept and sent
//! to the upstream first, so the node sees the stream intact. Reading is
//! bounded in size ([`MAX_PACKET`]) and time ([`PREREAD_TIMEOUT`]). Any
//! failure closes the session with status 503.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::Rejected;

/// Largest CONNECT packet accepted (header included).
pub const MAX_PACKET: usize = 64 * 1024;
/// How long the client has to send its CONNECT packet (nginx's
/// `preread_timeout` default).
pub const PREREAD_TIMEOUT: Duration = Duration::from_secs(30);

/// A parsed CONNECT packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// Protocol name (`MQTT`, `MQIsdp`).
    pub protocol_name: String,
    /// Protocol level (4 = 3.1.1, 5 = 5.0).
    pub level: u8,
    /// Client identifier (may be empty).
    pub client_id: String,
    /// Length of the whole packet.
    pub len: usize,
}

/// Why a CONNECT packet was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MqttError {
    /// The first byte is not a CONNECT type+flags.
    #[error("Received unexpected MQTT packet type+flags: {0}")]
    PacketType(u8),
    /// The remaining length has more than four bytes.
    #[error("malformed MQTT remaining length")]
    Length,
    /// The packet is larger than [`MAX_PACKET`].
    #[error("MQTT packet of {0} bytes is too large")]
    TooLarge(usize),
    /// A field runs past the end of the packet.
    #[error("truncated MQTT CONNECT packet")]
    Truncated,
}

/// The result of looking at the bytes read so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parse {
    /// More bytes are needed.
    Incomplete,
    /// A whole CONNECT packet.
    Done(Connect),
}

/// Decode an MQTT variable-byte integer at the start of `b`: the value and
/// its length, `None` when more bytes are needed.
pub fn var_int(b: &[u8]) -> Result<Option<(usize, usize)>, MqttError> {
    let mut value = 0usize;
    for (i, byte) in b.iter().enumerate() {
        if i >= 4 {
            return Err(MqttError::Length);
        }
        value |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if b.len() >= 4 {
        return Err(MqttError::Length);
    }
    Ok(None)
}

/// Parse a CONNECT packet from the bytes read so far.
pub fn parse(buf: &[u8]) -> Result<Parse, MqttError> {
    let Some(&first) = buf.first() else {
        return Ok(Parse::Incomplete);
    };
    if !(16..=32).contains(&first) {
        return Err(MqttError::PacketType(first));
    }
    let Some((remaining, n)) = var_int(&buf[1..])? else {
        return Ok(Parse::Incomplete);
    };
    let len = 1 + n + remaining;
    if len > MAX_PACKET {
        return Err(MqttError::TooLarge(len));
    }
    if buf.len() < len {
        return Ok(Parse::Incomplete);
    }
    let body = &buf[1 + n..len];
    let mut r = Reader { b: body, pos: 0 };
    let name_len = usize::from(r.u16()?);
    let protocol_name = String::from_utf8_lossy(r.take(name_len)?).into_owned();
    let level = r.u8()?;
    r.take(3)?; // connect flags, keep alive
    if level == 5 {
        let Some((props, k)) = var_int(&body[r.pos..])? else {
            return Err(MqttError::Truncated);
        };
        r.take(k)?;
        r.take(props)?;
    }
    let id_len = usize::from(r.u16()?);
    let client_id = String::from_utf8_lossy(r.take(id_len)?).into_owned();
    Ok(Parse::Done(Connect {
        protocol_name,
        level,
        client_id,
        len,
    }))
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], MqttError> {
        let end = self.pos.checked_add(n).ok_or(MqttError::Truncated)?;
        let s = self.b.get(self.pos..end).ok_or(MqttError::Truncated)?;
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, MqttError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, MqttError> {
        let s = self.take(2)?;
        Ok(u16::from_be_bytes([s[0], s[1]]))
    }
}

/// A compiled mqtt-proxy conf.
#[derive(Debug)]
pub struct MqttProxy {
    protocol_name: String,
    protocol_level: u8,
}

fn reject(reason: impl Into<String>) -> Rejected {
    Rejected::new("mqtt-proxy", 503, reason)
}

impl MqttProxy {
    /// Compile a validated conf.
    pub fn build(conf: &Value) -> Result<MqttProxy, String> {
        let level = conf
            .get("protocol_level")
            .and_then(Value::as_i64)
            .ok_or("mqtt-proxy: protocol_level is required")?;
        Ok(MqttProxy {
            protocol_name: conf
                .get("protocol_name")
                .and_then(Value::as_str)
                .unwrap_or("MQTT")
                .to_string(),
            // A level outside 0..=255 can never match a packet's byte.
            protocol_level: u8::try_from(level).unwrap_or(0),
        })
    }

    /// Check a parsed packet against the conf.
    pub fn accepts(&self, c: &Connect) -> Result<(), Rejected> {
        if c.protocol_name != self.protocol_name {
            return Err(reject(format!(
                "expect protocol name: {}, but got {}",
                self.protocol_name, c.protocol_name
            )));
        }
        if c.level != self.protocol_level {
            return Err(reject(format!(
                "expect protocol level: {}, but got {}",
                self.protocol_level, c.level
            )));
        }
        Ok(())
    }

    /// Read the CONNECT packet into `buf` (bytes already in `buf` count),
    /// check it, and return the client id (`None` when empty).
    pub async fn preread<R>(
        &self,
        client: &mut R,
        buf: &mut Vec<u8>,
    ) -> Result<Option<String>, Rejected>
    where
        R: AsyncRead + Unpin + ?Sized,
    {
        let read = async {
            let mut chunk = [0u8; 4096];
            loop {
                match parse(buf).map_err(|e| reject(e.to_string()))? {
                    Parse::Done(c) => return Ok(c),
                    Parse::Incomplete => {}
                }
                let n = client
                    .read(&mut chunk)
                    .await
                    .map_err(|e| reject(format!("failed to read MQTT packet: {e}")))?;
                if n == 0 {
                    return Err(reject("client closed before a whole MQTT CONNECT packet"));
                }
                buf.extend_from_slice(&chunk[..n]);
            }
        };
        let connect = tokio::time::timeout(PREREAD_TIMEOUT, read)
            .await
            .map_err(|_| reject("timed out reading the MQTT CONNECT packet"))??;
        self.accepts(&connect)?;
        if connect.client_id.is_empty() {
            return Ok(None);
        }
        tracing::debug!(client_id = %connect.client_id, "mqtt client id");
        Ok(Some(connect.client_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The v4 test packet of APISIX's suite (client id `foo`).
    const V4: [u8; 17] = [
        0x10, 0x0f, 0x00, 0x04, 0x4d, 0x51, 0x54, 0x54, 0x04, 0x02, 0x00, 0x3c, 0x00, 0x03, 0x66,
        0x6f, 0x6f,
    ];
    /// The v5 test packet (empty client id, empty properties).
    const V5: [u8; 15] = [
        0x10, 0x0d, 0x00, 0x04, 0x4d, 0x51, 0x54, 0x54, 0x05, 0x02, 0x00, 0x3c, 0x00, 0x00, 0x00,
    ];

    fn done(b: &[u8]) -> Connect {
        match parse(b).unwrap() {
            Parse::Done(c) => c,
            Parse::Incomplete => panic!("incomplete"),
        }
    }

    #[test]
    fn v4_and_v5_packets() {
        let c = done(&V4);
        assert_eq!(
            (
                c.protocol_name.as_str(),
                c.level,
                c.client_id.as_str(),
                c.len
            ),
            ("MQTT", 4, "foo", 17)
        );
        let c = done(&V5);
        assert_eq!((c.level, c.client_id.as_str(), c.len), (5, "", 15));
    }

    #[test]
    fn v5_properties_are_skipped() {
        // properties: session expiry interval (0x11) = 10, then id "clint-111"
        let mut body = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x3c];
        body.extend_from_slice(&[0x05, 0x11, 0x00, 0x00, 0x00, 0x0a]);
        body.extend_from_slice(&[0x00, 0x09]);
        body.extend_from_slice(b"clint-111");
        let mut p = vec![0x10, body.len() as u8];
        p.extend_from_slice(&body);
        assert_eq!(done(&p).client_id, "clint-111");
        // trailing bytes after the packet are not part of it
        p.extend_from_slice(b"more");
        assert_eq!(done(&p).len, p.len() - 4);
    }

    #[test]
    fn partial_packets_ask_for_more() {
        for n in 0..V4.len() {
            assert_eq!(parse(&V4[..n]).unwrap(), Parse::Incomplete, "{n} bytes");
        }
    }

    #[test]
    fn bad_type_flags_and_lengths() {
        assert_eq!(parse(b"mmm"), Err(MqttError::PacketType(b'm')));
        assert_eq!(parse(&[0x30, 0x00]), Err(MqttError::PacketType(0x30)));
        assert_eq!(parse(&[0x0f, 0x00]), Err(MqttError::PacketType(0x0f)));
        assert!(matches!(parse(&[0x20, 0x00]), Err(MqttError::Truncated)));
        assert_eq!(
            parse(&[0x10, 0xff, 0xff, 0xff, 0xff, 0x01]),
            Err(MqttError::Length)
        );
        assert_eq!(
            parse(&[0x10, 0xff, 0xff, 0x7f]),
            Err(MqttError::TooLarge(1 + 3 + 2_097_151))
        );
        assert_eq!(var_int(&[0x80, 0x01]), Ok(Some((128, 2))));
        assert_eq!(var_int(&[0x80]), Ok(None));
    }

    #[test]
    fn truncated_fields_inside_the_packet() {
        // remaining length says 6, but the name claims 4 bytes and then stops
        assert_eq!(
            parse(&[0x10, 0x06, 0x00, 0x04, b'M', b'Q', b'T', b'T']),
            Err(MqttError::Truncated)
        );
        // client id length runs past the end
        let mut p = V4;
        p[13] = 0x09;
        assert_eq!(parse(&p), Err(MqttError::Truncated));
        // v5 properties length runs past the end
        let mut p = V5;
        p[12] = 0x40;
        assert_eq!(parse(&p), Err(MqttError::Truncated));
    }

    #[test]
    fn name_and_level_are_checked() {
        let m = MqttProxy::build(&serde_json::json!({"protocol_level": 4})).unwrap();
        assert!(m.accepts(&done(&V4)).is_ok());
        assert_eq!(m.accepts(&done(&V5)).unwrap_err().code, 503);
        let m =
            MqttProxy::build(&serde_json::json!({"protocol_level": 4, "protocol_name": "MQIsdp"}))
                .unwrap();
        assert!(m.accepts(&done(&V4)).is_err());
    }

    #[tokio::test]
    async fn preread_keeps_every_byte_read() {
        let m = MqttProxy::build(&serde_json::json!({"protocol_level": 4})).unwrap();
        let (mut a, mut b) = tokio::io::duplex(64);
        let mut sent = V4.to_vec();
        sent.extend_from_slice(b"PING");
        tokio::io::AsyncWriteExt::write_all(&mut a, &sent)
            .await
            .unwrap();
        let mut buf = Vec::new();
        let id = m.preread(&mut b, &mut buf).await.unwrap();
        assert_eq!(id.as_deref(), Some("foo"));
        assert_eq!(buf, sent);
        drop(a);
        let mut buf = Vec::new();
        let (a, mut b) = tokio::io::duplex(64);
        drop(a);
        assert!(m.preread(&mut b, &mut buf).await.is_err());
    }
}
