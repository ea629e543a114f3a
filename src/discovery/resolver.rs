//! A small DNS stub resolver: A, AAAA and SRV questions to the configured
//! name servers over UDP (again over TCP when the answer is truncated),
//! answered with each record's TTL so callers can re-resolve when it runs out.
//!
//! It speaks only what service discovery needs (RFC 1035 messages, RFC 2782
//! SRV); recursion is the name server's job.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// A record type this resolver asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qtype {
    /// IPv4 address.
    A,
    /// IPv6 address.
    Aaaa,
    /// Service location.
    Srv,
}

impl Qtype {
    fn code(self) -> u16 {
        match self {
            Qtype::A => 1,
            Qtype::Aaaa => 28,
            Qtype::Srv => 33,
        }
    }
}

/// One answer record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// An address (A or AAAA).
    Addr(IpAddr),
    /// An SRV record.
    Srv {
        /// Lower is preferred.
        priority: u16,
        /// Relative weight within a priority.
        weight: u16,
        /// Port.
        port: u16,
        /// Target host name.
        target: String,
    },
}

/// The records of one answer and the smallest TTL among them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answer {
    /// Records of the asked type, in the server's order.
    pub records: Vec<Record>,
    /// Seconds the answer may be kept (`None` when there is no record).
    pub ttl: Option<u32>,
}

/// Name servers and the time each is given to answer.
#[derive(Debug, Clone)]
pub struct Resolver {
    servers: Vec<SocketAddr>,
    timeout: Duration,
}

/// Parse `ip`, `ip:port` or `[v6]:port` (port 53 when absent).
pub fn parse_server(s: &str) -> Option<SocketAddr> {
    let s = s.trim();
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Some(a);
    }
    let bare = s.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, 53))
}

/// The `nameserver` lines of a resolv.conf text.
pub fn resolv_conf_servers(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next().and_then(parse_server))
                .flatten()
        })
        .collect()
}

impl Resolver {
    /// A resolver asking `servers` in turn, each within `timeout`.
    pub fn new(servers: Vec<SocketAddr>, timeout: Duration) -> Resolver {
        Resolver { servers, timeout }
    }

    /// The name servers asked.
    pub fn servers(&self) -> &[SocketAddr] {
        &self.servers
    }

    /// Ask for `name`'s records of type `qtype`: the first server that
    /// answers wins; a name that does not exist is an empty answer.
    pub async fn query(&self, name: &str, qtype: Qtype) -> Result<Answer, String> {
        let mut last = String::from("no name server configured");
        for server in &self.servers {
            match tokio::time::timeout(self.timeout, ask(*server, name, qtype)).await {
                Ok(Ok(a)) => return Ok(a),
                Ok(Err(e)) => last = format!("{server}: {e}"),
                Err(_) => last = format!("{server}: timed out"),
            }
        }
        Err(last)
    }
}

async fn ask(server: SocketAddr, name: &str, qtype: Qtype) -> Result<Answer, String> {
    let id: u16 = rand::random();
    let query = encode_query(id, name, qtype)?;
    let bind: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = UdpSocket::bind(bind).await.map_err(|e| e.to_string())?;
    sock.connect(server).await.map_err(|e| e.to_string())?;
    sock.send(&query).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 4096];
    loop {
        let n = sock.recv(&mut buf).await.map_err(|e| e.to_string())?;
        match decode(&buf[..n], id, qtype) {
            Ok(Decoded::Answer(a)) => return Ok(a),
            Ok(Decoded::Truncated) => return ask_tcp(server, &query, id, qtype).await,
            // A stray datagram (another id): keep waiting for ours.
            Err(DecodeError::OtherId) => continue,
            Err(DecodeError::Bad(e)) => return Err(e),
        }
    }
}

async fn ask_tcp(
    server: SocketAddr,
    query: &[u8],
    id: u16,
    qtype: Qtype,
) -> Result<Answer, String> {
    let mut s = TcpStream::connect(server)
        .await
        .map_err(|e| e.to_string())?;
    let len = u16::try_from(query.len()).map_err(|_| "query too long".to_string())?;
    let mut msg = len.to_be_bytes().to_vec();
    msg.extend_from_slice(query);
    s.write_all(&msg).await.map_err(|e| e.to_string())?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
    match decode(&buf, id, qtype) {
        Ok(Decoded::Answer(a)) => Ok(a),
        Ok(Decoded::Truncated) => Err("truncated answer over TCP".into()),
        Err(DecodeError::OtherId) => Err("answer for another question".into()),
        Err(DecodeError::Bad(e)) => Err(e),
    }
}

/// A query message: header with recursion desired, one question.
fn encode_query(id: u16, name: &str, qtype: Qtype) -> Result<Vec<u8>, String> {
    let mut m = Vec::with_capacity(32 + name.len());
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        let len = u8::try_from(label.len())
            .ok()
            .filter(|l| (1..=63).contains(l))
            .ok_or_else(|| format!("invalid host name {name:?}"))?;
        m.push(len);
        m.extend_from_slice(label.as_bytes());
    }
    m.push(0);
    m.extend_from_slice(&qtype.code().to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes());
    Ok(m)
}

enum Decoded {
    Answer(Answer),
    Truncated,
}

enum DecodeError {
    OtherId,
    Bad(String),
}

fn bad(what: &str) -> DecodeError {
    DecodeError::Bad(format!("malformed DNS answer: {what}"))
}

struct Reader<'a> {
    msg: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn bytes(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        let end = self.pos.checked_add(n).ok_or_else(|| bad("length"))?;
        let s = self.msg.get(self.pos..end).ok_or_else(|| bad("short"))?;
        self.pos = end;
        Ok(s)
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.bytes(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.bytes(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A (possibly compressed) name at the cursor, moved past it.
    fn name(&mut self) -> Result<String, DecodeError> {
        let (name, end) = read_name(self.msg, self.pos)?;
        self.pos = end;
        Ok(name)
    }
}

/// The name at `pos`, and where the bytes after it start.
fn read_name(msg: &[u8], mut pos: usize) -> Result<(String, usize), DecodeError> {
    let mut labels: Vec<String> = Vec::new();
    let mut end = None;
    // Each pointer must go backwards, so a loop of pointers ends.
    let mut limit = pos;
    loop {
        let len = *msg.get(pos).ok_or_else(|| bad("name"))?;
        match len {
            0 => {
                end.get_or_insert(pos + 1);
                break;
            }
            l if l & 0xC0 == 0xC0 => {
                let lo = *msg.get(pos + 1).ok_or_else(|| bad("pointer"))?;
                let target = (usize::from(l & 0x3F) << 8) | usize::from(lo);
                end.get_or_insert(pos + 2);
                if target >= limit {
                    return Err(bad("pointer loop"));
                }
                limit = target;
                pos = target;
            }
            l => {
                let l = usize::from(l);
                let label = msg.get(pos + 1..pos + 1 + l).ok_or_else(|| bad("label"))?;
                labels.push(String::from_utf8_lossy(label).into_owned());
                pos += 1 + l;
            }
        }
    }
    Ok((labels.join("."), end.unwrap_or(pos)))
}

fn decode(msg: &[u8], id: u16, qtype: Qtype) -> Result<Decoded, DecodeError> {
    let mut r = Reader { msg, pos: 0 };
    if r.u16()? != id {
        return Err(DecodeError::OtherId);
    }
    let flags = r.u16()?;
    if flags & 0x8000 == 0 {
        return Err(bad("not a response"));
    }
    if flags & 0x0200 != 0 {
        return Ok(Decoded::Truncated);
    }
    let (qd, an) = (r.u16()?, r.u16()?);
    r.bytes(4)?;
    match flags & 0x000F {
        0 => {}
        3 => return Ok(Decoded::Answer(Answer::default())),
        code => {
            return Err(DecodeError::Bad(format!(
                "name server answered rcode {code}"
            )))
        }
    }
    for _ in 0..qd {
        r.name()?;
        r.bytes(4)?;
    }
    let mut answer = Answer::default();
    for _ in 0..an {
        r.name()?;
        let (ty, _class, ttl, len) = (r.u16()?, r.u16()?, r.u32()?, r.u16()?);
        let start = r.pos;
        let data = r.bytes(usize::from(len))?;
        let record = match (ty, qtype) {
            (1, Qtype::A) if data.len() == 4 => Some(Record::Addr(IpAddr::V4(Ipv4Addr::new(
                data[0], data[1], data[2], data[3],
            )))),
            (28, Qtype::Aaaa) if data.len() == 16 => {
                let mut b = [0u8; 16];
                b.copy_from_slice(data);
                Some(Record::Addr(IpAddr::V6(Ipv6Addr::from(b))))
            }
            (33, Qtype::Srv) if data.len() >= 7 => {
                let mut s = Reader { msg, pos: start };
                let (priority, weight, port) = (s.u16()?, s.u16()?, s.u16()?);
                Some(Record::Srv {
                    priority,
                    weight,
                    port,
                    target: s.name()?,
                })
            }
            // CNAMEs on the way and records of other types.
            _ => None,
        };
        if let Some(rec) = record {
            answer.ttl = Some(answer.ttl.map_or(ttl, |t| t.min(ttl)));
            answer.records.push(rec);
        }
    }
    Ok(Decoded::Answer(answer))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rr(name_ptr: bool, ty: u16, ttl: u32, data: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        if name_ptr {
            m.extend_from_slice(&[0xC0, 12]);
        } else {
            m.push(0);
        }
        m.extend_from_slice(&ty.to_be_bytes());
        m.extend_from_slice(&1u16.to_be_bytes());
        m.extend_from_slice(&ttl.to_be_bytes());
        m.extend_from_slice(&u16::try_from(data.len()).unwrap().to_be_bytes());
        m.extend_from_slice(data);
        m
    }

    fn response(id: u16, qtype: Qtype, answers: &[Vec<u8>]) -> Vec<u8> {
        let q = encode_query(id, "svc.test", qtype).unwrap();
        let mut m = q.clone();
        m[2] = 0x81;
        m[3] = 0x80;
        m[7] = u8::try_from(answers.len()).unwrap();
        for a in answers {
            m.extend_from_slice(a);
        }
        m
    }

    #[test]
    fn a_answers_keep_order_and_the_smallest_ttl() {
        let msg = response(
            7,
            Qtype::A,
            &[
                rr(true, 1, 30, &[127, 0, 0, 2]),
                rr(true, 1, 5, &[127, 0, 0, 1]),
            ],
        );
        let Ok(Decoded::Answer(a)) = decode(&msg, 7, Qtype::A) else {
            panic!("answer expected");
        };
        assert_eq!(
            a.records,
            vec![
                Record::Addr("127.0.0.2".parse().unwrap()),
                Record::Addr("127.0.0.1".parse().unwrap())
            ]
        );
        assert_eq!(a.ttl, Some(5));
        assert!(matches!(
            decode(&msg, 8, Qtype::A),
            Err(DecodeError::OtherId)
        ));
    }

    #[test]
    fn srv_targets_follow_compression_pointers() {
        // Target "svc.test" written as a pointer to the question's name.
        let data = [0, 10, 0, 5, 0x1F, 0x90, 0xC0, 12];
        let msg = response(1, Qtype::Srv, &[rr(true, 33, 60, &data)]);
        let Ok(Decoded::Answer(a)) = decode(&msg, 1, Qtype::Srv) else {
            panic!("answer expected");
        };
        assert_eq!(
            a.records,
            vec![Record::Srv {
                priority: 10,
                weight: 5,
                port: 8080,
                target: "svc.test".into()
            }]
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for n in 0..40 {
            let mut msg = response(3, Qtype::A, &[rr(true, 1, 30, &[1, 2, 3, 4])]);
            msg.truncate(n);
            let _ = decode(&msg, 3, Qtype::A);
        }
        let mut looped = response(3, Qtype::A, &[]);
        looped[7] = 1;
        looped.extend_from_slice(&[0xC0, 40]);
        assert!(matches!(
            decode(&looped, 3, Qtype::A),
            Err(DecodeError::Bad(_))
        ));
    }

    #[test]
    fn servers_and_resolv_conf() {
        assert_eq!(parse_server("1.2.3.4"), Some("1.2.3.4:53".parse().unwrap()));
        assert_eq!(
            parse_server("[::1]:5353"),
            Some("[::1]:5353".parse().unwrap())
        );
        assert_eq!(
            resolv_conf_servers("# c\nsearch x\nnameserver 10.0.0.1\nnameserver ::1\n"),
            vec!["10.0.0.1:53".parse().unwrap(), "[::1]:53".parse().unwrap()]
        );
        assert!(encode_query(1, &"a".repeat(64), Qtype::A).is_err());
    }
}
