//! RESP framing, incremental over the relay buffers.
//!
//! [`RequestDecoder`] reads client commands: RESP arrays of bulk strings
//! (`*N\r\n$len\r\narg\r\n...`), the only form Redis clients send; the
//! inline form and any other type is refused as malformed. It resumes where
//! the last call stopped, so a request split over many reads is scanned
//! once, and it records where each argument lies instead of copying it.
//!
//! [`ReplyDecoder`] finds where each upstream frame ends, RESP2 and RESP3
//! alike (maps, sets, pushes, attributes, doubles, big numbers, verbatim
//! and blob-error strings), consuming bulk bodies as they arrive without
//! keeping them. For pub/sub it reports a frame's message type (`message`,
//! `subscribe`, ...) so the caller can tell a subscription message from a
//! reply.
//!
//! Declared lengths are checked before anything is reserved: a bulk string
//! above [`MAX_BULK`] or an array above [`MAX_ITEMS`] is malformed, and no
//! buffer is ever sized from a declared length.

use std::ops::Range;

/// Largest bulk string accepted (Redis's `proto-max-bulk-len` default).
pub const MAX_BULK: u64 = 512 * 1024 * 1024;
/// Most elements of one array (Redis's own limit for a client command).
pub const MAX_ITEMS: u64 = 1024 * 1024;
/// Longest length line of a client request (`*N` / `$N`), as APISIX.
const MAX_REQUEST_LINE: usize = 128;
/// Longest simple line an upstream may send (status, error, number).
const MAX_REPLY_LINE: usize = 1024 * 1024;
/// Most nested aggregates in one reply.
const MAX_DEPTH: usize = 64;

/// Why bytes are not RESP.
pub type Malformed = String;

/// Position of `\r\n` in `buf` within `max` bytes; `Err` when none is
/// there although `max` bytes are.
fn find_crlf(buf: &[u8], max: usize) -> Result<Option<usize>, Malformed> {
    let window = &buf[..buf.len().min(max)];
    let mut from = 0;
    while let Some(i) = window[from..].iter().position(|&b| b == b'\r') {
        let at = from + i;
        match window.get(at + 1) {
            Some(b'\n') => return Ok(Some(at)),
            Some(_) => from = at + 1,
            None => break,
        }
    }
    if buf.len() >= max {
        Err(format!("line longer than {} bytes", max - 2))
    } else {
        Ok(None)
    }
}

/// A plain decimal integer, as RESP writes lengths.
fn parse_int(s: &[u8]) -> Result<i64, Malformed> {
    let digits = s.strip_prefix(b"-").unwrap_or(s);
    if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(format!(
            "invalid len string: \"{}\"",
            String::from_utf8_lossy(s)
        ));
    }
    let mut n: i64 = 0;
    for d in digits {
        n = n * 10 + i64::from(d - b'0');
    }
    Ok(if s.len() > digits.len() { -n } else { n })
}

/// Incremental reader of client commands.
#[derive(Debug, Default)]
pub struct RequestDecoder {
    /// Arguments announced by the current request's `*N` (0: not read yet).
    narg: usize,
    /// Where the next unread part of the current request starts.
    pos: usize,
    /// The current request's argument bodies, relative to its start.
    args: Vec<Range<usize>>,
}

impl RequestDecoder {
    /// Read on in `buf` (which starts at the current request's first byte
    /// and keeps every byte given before): `Ok(Some(len))` when the request
    /// is complete in `buf[..len]` (its arguments in [`RequestDecoder::args`]
    /// until the next call), `Ok(None)` when more bytes are needed.
    pub fn decode(&mut self, buf: &[u8]) -> Result<Option<usize>, Malformed> {
        if self.narg == 0 {
            self.args.clear();
            let Some((n, next)) = self.length_line(buf, b'*')? else {
                return Ok(None);
            };
            if n < 1 || n as u64 > MAX_ITEMS {
                return Err(format!("invalid argument number: {n}"));
            }
            self.narg = n as usize;
            self.pos = next;
        }
        while self.args.len() < self.narg {
            let Some((n, start)) = self.length_line(buf, b'$')? else {
                return Ok(None);
            };
            if n < 0 || n as u64 > MAX_BULK {
                return Err(format!("invalid bulk length: {n}"));
            }
            let n = n as usize;
            let end = start + n;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err("bulk string not followed by CRLF".into());
            }
            self.args.push(start..end);
            self.pos = end + 2;
        }
        let len = self.pos;
        self.narg = 0;
        self.pos = 0;
        Ok(Some(len))
    }

    /// The arguments of the request [`RequestDecoder::decode`] completed.
    pub fn args(&self) -> &[Range<usize>] {
        &self.args
    }

    /// A `<prefix><int>\r\n` line at `self.pos`: the number and where the
    /// line ends.
    fn length_line(&self, buf: &[u8], prefix: u8) -> Result<Option<(i64, usize)>, Malformed> {
        let rest = &buf[self.pos.min(buf.len())..];
        let Some(&first) = rest.first() else {
            return Ok(None);
        };
        if first != prefix {
            return Err(format!(
                "expected '{}', got {:?}",
                prefix as char,
                String::from_utf8_lossy(&rest[..rest.len().min(16)])
            ));
        }
        let Some(i) = find_crlf(rest, MAX_REQUEST_LINE)? else {
            return Ok(None);
        };
        let n = parse_int(&rest[1..i])?;
        Ok(Some((n, self.pos + i + 2)))
    }
}

/// What a complete upstream frame is, for matching it to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameInfo {
    /// An ordinary value: the reply to the oldest request waiting.
    Value,
    /// A RESP3 push, or a RESP2 pub/sub array while subscribed: its type
    /// (`message`, `subscribe`, ...) in lower case and, for a
    /// (un)subscribe confirmation, the subscription count it carries.
    PubSub {
        /// The message type.
        kind: String,
        /// The count in a `subscribe`/`unsubscribe` confirmation.
        count: Option<i64>,
    },
}

/// One open aggregate of the frame being read.
#[derive(Debug, Clone, Copy)]
struct Open {
    /// Elements still to read.
    left: u64,
    /// Index of the next element.
    next: u64,
    /// Whether this is the top-level pub/sub candidate.
    watch: bool,
}

/// Incremental finder of upstream frame boundaries.
#[derive(Debug, Default)]
pub struct ReplyDecoder {
    stack: Vec<Open>,
    /// Bytes of a bulk body still to pass.
    skip: u64,
    /// The CRLF after a bulk body is due.
    crlf: bool,
    /// Collect this bulk body (a pub/sub message type).
    collect: bool,
    /// The top-level frame was an attribute: the value follows.
    after_attribute: bool,
    /// Message type and count of the frame being read.
    kind: Option<String>,
    count: Option<i64>,
    /// Whether the upstream is in RESP2 subscribed mode.
    pub subscribed: bool,
}

/// What [`ReplyDecoder::decode`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Every usable byte consumed (this many); the frame needs more.
    More(usize),
    /// A frame ended after this many bytes.
    Frame(usize, FrameInfo),
}

impl ReplyDecoder {
    /// Read on in `buf` (the bytes after those consumed so far).
    pub fn decode(&mut self, buf: &[u8]) -> Result<Step, Malformed> {
        let mut pos = 0;
        loop {
            if self.skip > 0 {
                let avail = (buf.len() - pos) as u64;
                if self.collect {
                    // A message type: a short body read whole (checked at its line).
                    if avail < self.skip {
                        return Ok(Step::More(pos));
                    }
                    let body = &buf[pos..pos + self.skip as usize];
                    self.kind = Some(String::from_utf8_lossy(body).to_ascii_lowercase());
                    self.collect = false;
                }
                let take = avail.min(self.skip);
                pos += take as usize;
                self.skip -= take;
                if self.skip > 0 {
                    return Ok(Step::More(pos));
                }
                self.crlf = true;
            }
            if self.crlf {
                if buf.len() - pos < 2 {
                    return Ok(Step::More(pos));
                }
                if &buf[pos..pos + 2] != b"\r\n" {
                    return Err("bulk string not followed by CRLF".into());
                }
                pos += 2;
                self.crlf = false;
                if let Some(info) = self.element_done() {
                    return Ok(Step::Frame(pos, info));
                }
                continue;
            }
            let rest = &buf[pos..];
            let Some(&prefix) = rest.first() else {
                return Ok(Step::More(pos));
            };
            let Some(i) = find_crlf(rest, MAX_REPLY_LINE)? else {
                return Ok(Step::More(pos));
            };
            let body = &rest[1..i];
            pos += i + 2;
            let done = match prefix {
                b'+' | b'-' | b':' | b'_' | b'#' | b',' | b'(' => {
                    if prefix == b'+' && self.wants_kind() {
                        self.kind = Some(String::from_utf8_lossy(body).to_ascii_lowercase());
                    }
                    if prefix == b':' && self.wants_count() {
                        self.count = parse_int(body).ok();
                    }
                    self.element_done()
                }
                b'$' | b'!' | b'=' => {
                    let n = parse_int(body)?;
                    if n < 0 {
                        if prefix != b'$' || n != -1 {
                            return Err(format!("invalid bulk length: {n}"));
                        }
                        self.element_done()
                    } else {
                        if n as u64 > MAX_BULK {
                            return Err(format!("invalid bulk length: {n}"));
                        }
                        self.collect = self.wants_kind() && n <= 64;
                        self.skip = n as u64;
                        self.crlf = n == 0;
                        if self.collect && n == 0 {
                            self.kind = Some(String::new());
                            self.collect = false;
                        }
                        continue;
                    }
                }
                b'*' | b'%' | b'~' | b'|' | b'>' => {
                    let n = parse_int(body)?;
                    if n < 0 {
                        if prefix != b'*' || n != -1 {
                            return Err(format!("invalid aggregate length: {n}"));
                        }
                        self.element_done()
                    } else {
                        let per = if matches!(prefix, b'%' | b'|') { 2 } else { 1 };
                        let items = (n as u64).saturating_mul(per);
                        if n as u64 > MAX_ITEMS {
                            return Err(format!("invalid aggregate length: {n}"));
                        }
                        if self.stack.len() >= MAX_DEPTH {
                            return Err("aggregates nested too deep".into());
                        }
                        let top = self.stack.is_empty();
                        if top && prefix == b'|' {
                            self.after_attribute = true;
                        }
                        let watch = top
                            && (prefix == b'>'
                                || (prefix == b'*' && self.subscribed && (n == 3 || n == 4)));
                        if watch {
                            self.kind = None;
                            self.count = None;
                        }
                        self.stack.push(Open {
                            left: items,
                            next: 0,
                            watch,
                        });
                        if items == 0 {
                            self.stack.pop();
                            self.element_done()
                        } else {
                            continue;
                        }
                    }
                }
                other => {
                    return Err(format!("unknown prefix: \"{}\"", other as char));
                }
            };
            if let Some(info) = done {
                return Ok(Step::Frame(pos, info));
            }
        }
    }

    /// Whether no frame is partly read.
    pub fn at_frame_start(&self) -> bool {
        self.stack.is_empty() && self.skip == 0 && !self.crlf && !self.after_attribute
    }

    /// Whether the element starting now is a watched frame's first one.
    fn wants_kind(&self) -> bool {
        matches!(self.stack.as_slice(), [o] if o.watch && o.next == 0)
    }

    /// Whether the element starting now is a watched frame's third one.
    fn wants_count(&self) -> bool {
        matches!(self.stack.as_slice(), [o] if o.watch && o.next == 2)
    }

    /// One element ended: close the aggregates it completes; the frame's
    /// info when the top level is done.
    fn element_done(&mut self) -> Option<FrameInfo> {
        let mut watched = false;
        while let Some(open) = self.stack.last_mut() {
            open.left -= 1;
            open.next += 1;
            if open.left > 0 {
                return None;
            }
            watched = open.watch;
            self.stack.pop();
        }
        if self.after_attribute {
            // An attribute precedes the value it describes.
            self.after_attribute = false;
            return None;
        }
        let kind = self.kind.take();
        let count = self.count.take();
        match (watched, kind) {
            (true, Some(kind)) => {
                if self.subscribed
                    && matches!(
                        kind.as_str(),
                        "unsubscribe" | "punsubscribe" | "sunsubscribe"
                    )
                    && count == Some(0)
                {
                    self.subscribed = false;
                }
                Some(FrameInfo::PubSub { kind, count })
            }
            _ => Some(FrameInfo::Value),
        }
    }
}

#[cfg(test)]
#[path = "resp_tests.rs"]
mod tests;
