//! The relay of a protocol route's connection.
//!
//! One task owns the session: it reads the client, decodes whole requests,
//! holds a request a fault delays (and those behind it, so order is kept),
//! and writes each request to the upstream of the route that takes it (the
//! route's own, or a subordinate's, connected on first use). It reads the
//! route's own upstream itself; a subordinate's connection has a reader
//! task handing its bytes over a channel. The session task finds the
//! frames, matches each to the request it answers, and writes replies to
//! the client strictly in request order (a reply to the oldest request
//! goes straight out; one that overtook an older request waits for it).
//! Frames that answer no request (pub/sub messages, pushes) go out right
//! after the replies that came before them on the same connection.
//!
//! A client sending bytes that are not the protocol ends its session: the
//! reason is logged at warn and counted in the route's `protocol_errors`;
//! no other connection is touched.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::bytes::{Buf, BytesMut};

use super::{Answer, Codec, Done, ReplyDecoder, ReplyStep, Request, RouteProtocol, Subordinate};
use crate::proxy::copy::{Counters, End, Stops};
use crate::proxy::tcp::Io;
use crate::snapshot::{ConnInfo, UpstreamRt};
use crate::stats::RouteStats;

/// Requests in flight above which the client is not read.
const MAX_IN_FLIGHT: usize = 4096;
/// Size of one read.
const READ_SIZE: usize = 64 * 1024;

/// What the relay of one connection needs to know.
pub struct Session<'a> {
    /// The route matched (the superior of any subordinate).
    pub route_id: &'a str,
    /// Its counters.
    pub stats: &'a RouteStats,
    /// Its compiled `protocol`.
    pub protocol: &'a RouteProtocol,
    /// Its subordinate routes.
    pub subordinates: Arc<[Arc<Subordinate>]>,
    /// The connection's variables.
    pub conn: &'a ConnInfo,
    /// Counters of client bytes.
    pub up: Counters<'a>,
    /// Counters of bytes to the client.
    pub down: Counters<'a>,
}

impl<'a> Session<'a> {
    /// The session of a connection matched to route `route`, whose
    /// compiled `protocol` this is.
    pub fn new(
        route: &'a crate::snapshot::RouteRt,
        protocol: &'a RouteProtocol,
        conn: &'a ConnInfo,
        subordinates: Arc<[Arc<Subordinate>]>,
        up: Counters<'a>,
        down: Counters<'a>,
    ) -> Session<'a> {
        Session {
            route_id: &route.id,
            stats: &route.stats,
            protocol,
            subordinates,
            conn,
            up,
            down,
        }
    }
}

/// A request sent and not yet delivered.
struct Pending {
    req: Request,
    started: Instant,
    reply: Option<BytesMut>,
    /// Frames answering nothing that arrived after this reply.
    trailer: Vec<BytesMut>,
}

/// One upstream connection.
struct Up {
    w: WriteHalf<Box<dyn Io>>,
    rbuf: BytesMut,
    /// Bytes of `rbuf` consumed by the decoder (a frame not yet complete).
    scanned: usize,
    dec: Box<dyn ReplyDecoder>,
    /// Sequence numbers of the requests it has to answer, oldest first.
    outstanding: VecDeque<u64>,
    /// The last request it answered.
    last: Option<u64>,
    /// The task reading it (subordinates; the route's own upstream is read
    /// by the session task).
    reader: Option<JoinHandle<()>>,
}

/// Messages of the upstream reader tasks: the upstream's index and bytes
/// read (`None` at EOF).
type UpMsg = (usize, io::Result<Option<BytesMut>>);

fn spawn_reader(
    idx: usize,
    mut r: ReadHalf<Box<dyn Io>>,
    tx: mpsc::Sender<UpMsg>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let mut buf = BytesMut::with_capacity(READ_SIZE);
            let msg = match r.read_buf(&mut buf).await {
                Ok(0) => Ok(None),
                Ok(_) => Ok(Some(buf)),
                Err(e) => Err(e),
            };
            let last = !matches!(msg, Ok(Some(_)));
            if tx.send((idx, msg)).await.is_err() || last {
                return;
            }
        }
    })
}

fn invalid(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

/// The session task's state.
struct Relay<'s, 'a> {
    s: &'s Session<'a>,
    codec: Box<dyn Codec>,
    ups: Vec<Option<Up>>,
    tx: mpsc::Sender<UpMsg>,
    order: VecDeque<Pending>,
    /// Sequence number of `order[0]`.
    base: u64,
    /// The target of the last request sent.
    last_target: usize,
    /// A faulted request waiting: its target and when it may go.
    held: Option<(Request, usize, Instant, tokio::time::Instant)>,
    out: BytesMut,
    /// Client bytes decoded and queued, not yet written.
    decoded: usize,
    /// The queued runs of requests: target and length, in order.
    fwd: Vec<(usize, usize)>,
}

/// Relay `client` and `upstream` (the route's own node) for a protocol
/// route until the session ends.
///
/// The client and the route's own upstream are read and written in this
/// task (no hop through another task on the common path); subordinate
/// upstreams, connected on demand, have reader tasks.
pub async fn relay(
    s: Session<'_>,
    stops: Stops<'_>,
    client: Box<dyn Io>,
    upstream: Box<dyn Io>,
) -> End {
    let (mut cr, mut cw) = tokio::io::split(client);
    let (tx, mut rx) = mpsc::channel::<UpMsg>(64);
    let (mut main_r, uw) = tokio::io::split(upstream);
    let codec = Arc::clone(&s.protocol.proto).codec();
    let main = Up {
        w: uw,
        rbuf: BytesMut::new(),
        scanned: 0,
        dec: codec.reply_decoder(),
        outstanding: VecDeque::new(),
        last: None,
        reader: None,
    };
    let mut ups = vec![Some(main)];
    ups.resize_with(1 + s.subordinates.len(), || None);
    let mut r = Relay {
        s: &s,
        codec,
        ups,
        tx,
        order: VecDeque::new(),
        base: 0,
        last_target: 0,
        held: None,
        out: BytesMut::new(),
        decoded: 0,
        fwd: Vec::new(),
    };
    let Stops {
        idle,
        closed,
        drain,
        ..
    } = stops;
    let mut cbuf = BytesMut::with_capacity(READ_SIZE);
    let mut mbuf = BytesMut::with_capacity(READ_SIZE);
    let mut client_eof = false;
    let mut draining = false;
    let mut deadline = tokio::time::Instant::now() + idle;
    let end = loop {
        if let Err(end) = r.pump(&mut cbuf).await {
            break end;
        }
        let idle_now = r.order.is_empty() && r.held.is_none() && r.out.is_empty();
        if client_eof && idle_now {
            break End::Clean;
        }
        if draining && idle_now {
            break End::Drained;
        }
        let held_until = r.held.as_ref().map(|h| h.3);
        let can_read = !client_eof && r.held.is_none() && r.order.len() < MAX_IN_FLIGHT;
        if mbuf.capacity() < READ_SIZE / 4 {
            mbuf.reserve(READ_SIZE);
        }
        tokio::select! {
            res = cw.write(&r.out), if !r.out.is_empty() => match res {
                Ok(n) => {
                    r.out.advance(n);
                    for c in s.down.0 {
                        c.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    if r.out.is_empty() {
                        if let Err(e) = cw.flush().await {
                            break End::Client(e);
                        }
                    }
                }
                Err(e) => break End::Client(e),
            },
            res = cr.read_buf(&mut cbuf), if can_read => match res {
                Ok(0) => client_eof = true,
                Ok(n) => {
                    for c in s.up.0 {
                        c.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    deadline = tokio::time::Instant::now() + idle;
                }
                Err(e) => break End::Client(e),
            },
            res = main_r.read_buf(&mut mbuf) => {
                deadline = tokio::time::Instant::now() + idle;
                match res {
                    // The route's upstream closed: what it answered is delivered.
                    Ok(0) => break End::Clean,
                    Ok(_) => {
                        if let Err(e) = r.on_upstream(0, &mut mbuf) {
                            break End::Upstream(e);
                        }
                    }
                    Err(e) => break End::Upstream(e),
                }
            },
            msg = rx.recv() => {
                let Some((i, res)) = msg else { break End::Clean };
                deadline = tokio::time::Instant::now() + idle;
                match res {
                    Ok(Some(mut bytes)) => {
                        if let Err(e) = r.on_upstream(i, &mut bytes) {
                            break End::Upstream(e);
                        }
                    }
                    Ok(None) => {
                        let waiting = r.ups[i].as_ref().is_some_and(|u| !u.outstanding.is_empty());
                        if waiting {
                            break End::Clean;
                        }
                        // An idle subordinate connection closed: reconnect on demand.
                        r.ups[i] = None;
                    }
                    Err(e) => break End::Upstream(e),
                }
            },
            _ = tokio::time::sleep_until(held_until.unwrap_or(deadline)), if held_until.is_some() => {
                if let Some((req, target, started, _)) = r.held.take() {
                    if let Err(end) = r.send(&mut cbuf, req, target, started).await {
                        break end;
                    }
                }
            },
            _ = tokio::time::sleep_until(deadline) => break End::IdleTimeout,
            _ = &mut *closed => break End::Closed,
            _ = drain.cancelled(), if !draining => draining = true,
        }
    };
    // Requests never answered still count and log, as unfinished.
    let now = Instant::now();
    for p in r.order.drain(..) {
        finish(&s, &p, now);
    }
    for u in r.ups.iter().flatten() {
        if let Some(reader) = &u.reader {
            reader.abort();
        }
    }
    // What is due to the client goes out before the close.
    let last = async {
        if !r.out.is_empty() {
            cw.write_all(&r.out).await?;
            for c in s.down.0 {
                c.fetch_add(r.out.len() as u64, Ordering::Relaxed);
            }
        }
        cw.shutdown().await
    };
    let _ = tokio::time::timeout(idle, last).await;
    end
}

/// The end of request `p` at `now`.
fn finish(s: &Session<'_>, p: &Pending, now: Instant) {
    let done = Done {
        req: &p.req,
        rpc_time: now.saturating_duration_since(p.started),
    };
    s.protocol.finish(s.stats, s.route_id, s.conn, &done);
}

impl Relay<'_, '_> {
    /// Decode and send what the client buffer holds, unless a fault holds
    /// a request.
    async fn pump(&mut self, cbuf: &mut BytesMut) -> Result<(), End> {
        let want_line = self.s.protocol.wants_line();
        let mut now: Option<Instant> = None;
        while self.held.is_none() {
            let req = match self.codec.decode_request(&cbuf[self.decoded..], want_line) {
                Ok(Some(req)) => req,
                Ok(None) => break,
                Err(why) => {
                    self.s.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        route_id = %self.s.route_id,
                        client = %self.s.conn.remote_addr,
                        reason = %why,
                        "malformed request; connection closed"
                    );
                    self.flush_upstreams(cbuf).await?;
                    return Err(End::Client(invalid(why)));
                }
            };
            // One clock read for the requests of one read.
            let started = *now.get_or_insert_with(Instant::now);
            let target = self.target(&req);
            if let Some(delay) = req.delay {
                let until = tokio::time::Instant::now() + delay;
                self.held = Some((req, target, started, until));
                break;
            }
            self.queue(req, target, started).await?;
        }
        self.flush_upstreams(cbuf).await
    }

    /// Which upstream takes `req`: 0 for the route's, 1 + k for subordinate k.
    fn target(&self, req: &Request) -> usize {
        if req.pinned {
            return self.last_target;
        }
        self.s
            .subordinates
            .iter()
            .position(|sub| sub.protocol.proto.takes(req))
            .map_or(0, |k| k + 1)
    }

    /// Send a held request now, and go on with those behind it.
    async fn send(
        &mut self,
        cbuf: &mut BytesMut,
        req: Request,
        target: usize,
        started: Instant,
    ) -> Result<(), End> {
        self.queue(req, target, started).await?;
        self.flush_upstreams(cbuf).await
    }

    /// Queue a complete request (the `req.len` client bytes after those
    /// queued already) to its upstream, connecting a subordinate's on
    /// first use.
    async fn queue(&mut self, req: Request, target: usize, started: Instant) -> Result<(), End> {
        if self.ups[target].is_none() {
            let up = self.connect(target).await.map_err(End::Upstream)?;
            self.ups[target] = Some(up);
        }
        let seq = self.base + self.order.len() as u64;
        let Some(up) = self.ups[target].as_mut() else {
            return Err(End::Upstream(invalid("upstream missing".into())));
        };
        self.decoded += req.len;
        match self.fwd.last_mut() {
            Some((t, len)) if *t == target => *len += req.len,
            _ => self.fwd.push((target, req.len)),
        }
        up.dec.sent(&req);
        up.outstanding.push_back(seq);
        self.last_target = target;
        self.order.push_back(Pending {
            req,
            started,
            reply: None,
            trailer: Vec::new(),
        });
        Ok(())
    }

    /// Write the queued requests, straight from the client buffer, each
    /// run to its upstream in order.
    async fn flush_upstreams(&mut self, cbuf: &mut BytesMut) -> Result<(), End> {
        let mut fwd = std::mem::take(&mut self.fwd);
        for &(t, len) in &fwd {
            if let Some(up) = self.ups[t].as_mut() {
                up.w.write_all(&cbuf[..len]).await.map_err(End::Upstream)?;
                up.w.flush().await.map_err(End::Upstream)?;
            }
            cbuf.advance(len);
        }
        self.decoded = 0;
        fwd.clear();
        self.fwd = fwd;
        Ok(())
    }

    /// Connect subordinate `target - 1`'s upstream.
    async fn connect(&mut self, target: usize) -> io::Result<Up> {
        let sub = &self.s.subordinates[target - 1];
        let upstream = sub
            .upstream
            .as_ref()
            .map_err(|why| io::Error::other(format!("subordinate route [{}]: {why}", sub.id)))?;
        let io = connect_upstream(upstream, self.s.conn, self.s.stats).await?;
        let (r, w) = tokio::io::split(io);
        Ok(Up {
            w,
            rbuf: BytesMut::new(),
            scanned: 0,
            dec: self.codec.reply_decoder(),
            outstanding: VecDeque::new(),
            last: None,
            reader: Some(spawn_reader(target, r, self.tx.clone())),
        })
    }

    /// Bytes from upstream `i`: match its complete frames to requests and
    /// deliver what is due.
    fn on_upstream(&mut self, i: usize, bytes: &mut BytesMut) -> io::Result<()> {
        // One clock read for the replies of one read.
        let mut now: Option<Instant> = None;
        let Some(up) = self.ups[i].as_mut() else {
            return Ok(());
        };
        if up.rbuf.is_empty() {
            // Nothing pending: take the read buffer as it is.
            std::mem::swap(&mut up.rbuf, bytes);
        } else {
            up.rbuf.extend_from_slice(bytes);
            bytes.clear();
        }
        // Complete frames are handled in place: `pos` is where the next one
        // starts; `emit` is a run of them due to the client, not yet in `out`.
        let mut pos = 0;
        let mut emit = 0..0;
        loop {
            let step = up
                .dec
                .decode(&up.rbuf[pos + up.scanned..])
                .map_err(invalid)?;
            match step {
                ReplyStep::More(n) => {
                    up.scanned += n;
                    break;
                }
                ReplyStep::Frame(n, answer) => {
                    let frame = pos..pos + up.scanned + n;
                    pos = frame.end;
                    up.scanned = 0;
                    let seq = match (&answer, up.outstanding.front()) {
                        (_, None) => None,
                        (Answer::Oldest, Some(_)) => up.outstanding.pop_front(),
                        (Answer::IfCommand(c), Some(&seq)) => {
                            let idx = (seq - self.base) as usize;
                            let same = self.order.get(idx).is_some_and(|p| *p.req.command == **c);
                            if same {
                                up.outstanding.pop_front()
                            } else {
                                None
                            }
                        }
                    };
                    let direct = match seq {
                        // The oldest request's reply: straight to the client.
                        Some(seq) if seq == self.base && !self.order.is_empty() => {
                            up.last = Some(seq);
                            if let Some(p) = self.order.pop_front() {
                                self.base += 1;
                                finish(self.s, &p, *now.get_or_insert_with(Instant::now));
                            }
                            true
                        }
                        // It overtook an older request: it waits.
                        Some(seq) => {
                            up.last = Some(seq);
                            if let Some(p) = self.order.get_mut((seq - self.base) as usize) {
                                p.reply = Some(BytesMut::from(&up.rbuf[frame.clone()]));
                            }
                            false
                        }
                        // No request's: after the last reply of this upstream.
                        None => {
                            let after = up
                                .last
                                .filter(|l| *l >= self.base)
                                .and_then(|l| self.order.get_mut((l - self.base) as usize));
                            match after {
                                Some(p) => {
                                    p.trailer.push(BytesMut::from(&up.rbuf[frame.clone()]));
                                    false
                                }
                                None => true,
                            }
                        }
                    };
                    if direct {
                        if emit.end == frame.start {
                            emit.end = frame.end;
                        } else {
                            self.out.extend_from_slice(&up.rbuf[emit]);
                            emit = frame;
                        }
                    }
                }
            }
        }
        self.out.extend_from_slice(&up.rbuf[emit]);
        up.rbuf.advance(pos);
        self.deliver(now);
        Ok(())
    }

    /// Pass the replies due, in request order.
    fn deliver(&mut self, mut now: Option<Instant>) {
        while self.order.front().is_some_and(|p| p.reply.is_some()) {
            let Some(p) = self.order.pop_front() else {
                break;
            };
            self.base += 1;
            if let Some(reply) = &p.reply {
                self.out.extend_from_slice(reply);
            }
            for t in &p.trailer {
                self.out.extend_from_slice(t);
            }
            finish(self.s, &p, *now.get_or_insert_with(Instant::now));
        }
    }
}

/// Connect to a node of `upstream` (TLS when it asks).
async fn connect_upstream(
    upstream: &UpstreamRt,
    conn: &ConnInfo,
    stats: &RouteStats,
) -> io::Result<Box<dyn Io>> {
    let connected = crate::proxy::connect::connect_tcp(upstream, conn, stats, &[])
        .await
        .map_err(|e| io::Error::other(e.to_string()))?;
    let stream = connected.stream;
    let _ = stream.set_nodelay(true);
    match &upstream.tls {
        None => Ok(Box::new(stream)),
        Some(Err(why)) => Err(io::Error::other(why.clone())),
        Some(Ok(config)) => {
            let sni = conn
                .sni
                .as_deref()
                .unwrap_or(crate::tls::DEFAULT_UPSTREAM_SNI);
            let tls =
                crate::tls::connect_upstream(stream, config.clone(), sni, upstream.connect_timeout)
                    .await
                    .map_err(io::Error::other)?;
            Ok(Box::new(tls))
        }
    }
}
