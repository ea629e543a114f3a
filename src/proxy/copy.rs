//! Moving bytes between a client and its upstream, both directions at once.
//!
//! Each direction is a pump: read what is available, write all of it, count
//! it as it moves (so `top` shows live rates), repeat. EOF on one side shuts
//! down the write side of the other (half-close) and the other direction
//! keeps going; a read or write error ends the whole session and the peer
//! gets a reset instead of a clean FIN (a reset is never passed on as a
//! clean finish). The session also ends after `idle` without traffic in
//! either direction, and, once the server drains (SIGTERM), as soon as the
//! upstream has finished and its bytes are delivered: a client that keeps
//! its socket open after the whole reply does not hold the process.
//!
//! Each direction starts by copying through a small user-space buffer, which
//! is cheapest for request/response traffic. Once a direction has carried
//! [`SPLICE_AFTER`] bytes it is a bulk transfer, and on Linux it moves each
//! burst with `splice(2)` through a pipe so the data no longer enters user
//! space. Buffers and pipes come from the worker's [`pool`] when the socket
//! is readable and go back once written out, so an idle connection holds
//! neither, even after traffic; with no pipe free, a burst is copied in user
//! space.
//!
//! A relay with TLS on either side copies in user space (the bytes must be
//! encrypted or decrypted there), in [`Steps`]: a direction whose
//! destination speaks TLS reads up to [`pool::BIG`] bytes at once, which
//! leave as up to four records in one `writev`; a direction from TLS to
//! plain moves one record's worth ([`pool::BUF`]) per step, which measured
//! cheaper than gathering several. The TLS side is flushed before the next
//! read.
//!
//! A session paced by `limit-bandwidth` asks its [`Pacer`] before each read
//! how many bytes it may move and reads (or splices) no more than that;
//! sessions without it skip this with one `Option` check per chunk.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::task::Poll;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::pool;
use super::pump::Pump;
use crate::plugins::limit_bandwidth::{Dir, Pacer, Pacing};

pub use super::pump::SPLICE_AFTER;

/// How a relayed session ended.
#[derive(Debug)]
pub enum End {
    /// Both directions finished with EOF.
    Clean,
    /// No byte moved for the idle timeout.
    IdleTimeout,
    /// Reading from or writing to the client failed.
    Client(io::Error),
    /// Reading from or writing to the upstream failed.
    Upstream(io::Error),
    /// An operator closed it (Control API).
    Closed,
    /// The server drains and the upstream had finished (all its bytes
    /// delivered); the client's side was not waited for.
    Drained,
    /// The client reset its connection after everything owed to it had
    /// been delivered and its write side shut (it closed with bytes
    /// unread, such as a TLS close_notify): served. The reset still
    /// reaches the upstream, whose side may not have finished.
    ClientReset,
}

/// Which side gets a reset when a session ended in error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetTarget {
    /// The client failed: reset the upstream.
    Upstream,
    /// The upstream failed: reset the client.
    Client,
}

impl End {
    /// The peer to reset so an error is passed on, never a clean close.
    pub fn reset_target(&self) -> Option<ResetTarget> {
        match self {
            End::Client(_) | End::ClientReset => Some(ResetTarget::Upstream),
            End::Upstream(_) => Some(ResetTarget::Client),
            _ => None,
        }
    }
}

/// Counters a direction adds its bytes to as they move.
#[derive(Clone, Copy)]
pub struct Counters<'a>(pub &'a [&'a AtomicU64]);

impl Counters<'_> {
    pub(super) fn add(&self, n: usize) {
        for c in self.0 {
            c.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

/// Time of the last byte moved and the directions finished, shared by
/// both directions.
pub(super) struct Activity {
    base: Instant,
    last_ms: AtomicU64,
    finished: AtomicU8,
}

impl Activity {
    fn new() -> Self {
        Activity {
            base: Instant::now(),
            last_ms: AtomicU64::new(0),
            finished: AtomicU8::new(0),
        }
    }

    /// Count one direction finished; true when the other had finished
    /// already (the session ends now).
    pub(super) fn finish_one(&self) -> bool {
        self.finished.fetch_add(1, Ordering::Relaxed) >= 1
    }

    pub(super) fn touch(&self) {
        let ms = self.base.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn deadline(&self, idle: Duration) -> Instant {
        self.base + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + idle
    }
}

/// Which side a pump error came from.
pub(super) enum PumpError {
    Read(io::Error),
    Write(io::Error),
}

/// Read at most `cap` bytes from any byte stream (TLS) into a buffer from
/// the worker's pool (a large one past [`pool::BUF`]), taken only while
/// the read is tried: it goes straight back when nothing is there, so a
/// direction waiting for bytes holds none.
///
/// Once bytes came, it keeps reading what is already there (never
/// waiting) until `cap` is filled: a TLS stream hands out one record per
/// read, so this gathers the records a burst brought and the write that
/// follows sends them in one call, waking the receiver once. EOF or an
/// error met after some bytes is kept in `held` and returned by the next
/// call (without reading again), after those bytes have been written.
async fn read_pooled_io<R>(
    src: &mut R,
    cap: usize,
    held: &mut Option<Held>,
) -> io::Result<(pool::Buffer, usize)>
where
    R: AsyncRead + Unpin,
{
    std::future::poll_fn(|cx| {
        match held.take() {
            Some(Held::Eof) => return Poll::Ready(Ok((pool::buffer(), 0))),
            Some(Held::Err(e)) => return Poll::Ready(Err(e)),
            None => {}
        }
        let mut buf = if cap > pool::BUF {
            pool::big_buffer()
        } else {
            pool::buffer()
        };
        let cap = cap.min(buf.len());
        let mut filled = 0;
        while filled < cap {
            let mut rb = ReadBuf::new(&mut buf[filled..cap]);
            match Pin::new(&mut *src).poll_read(cx, &mut rb) {
                Poll::Pending if filled == 0 => return Poll::Pending,
                Poll::Pending => break,
                Poll::Ready(Err(e)) if filled == 0 => return Poll::Ready(Err(e)),
                Poll::Ready(Err(e)) => {
                    *held = Some(Held::Err(e));
                    break;
                }
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    if n == 0 {
                        if filled > 0 {
                            *held = Some(Held::Eof);
                        }
                        break;
                    }
                    filled += n;
                }
            }
        }
        Poll::Ready(Ok((buf, filled)))
    })
    .await
}

/// What a gathering read met after its bytes, for the next read.
enum Held {
    Eof,
    Err(io::Error),
}

/// How many of `want` bytes a direction may move now: all of them unless
/// `limit-bandwidth` paces it. The pacer's wait (a timer) lives on the
/// heap, only for paced sessions, so every other session's state stays
/// small.
async fn granted(pace: Option<Pacer<'_>>, want: usize) -> usize {
    match pace {
        None => want,
        Some(p) => Box::pin(p.grant(want)).await,
    }
}

/// Copy any byte stream (TLS) until EOF, then shut down `dst`'s write side.
/// A TLS source ending without its close_notify alert ends as EOF too.
///
/// Each read takes up to `step` bytes (see [`Steps`]). The bytes are
/// flushed before the next read, so no record stays queued in the TLS
/// layer while the source is quiet. The buffer comes from the worker's
/// pool only while a read is tried or its bytes are written, so an idle
/// direction holds none. A paced direction moves at most [`pool::BUF`]
/// bytes per read, as the plain relay does.
async fn pump_io<R, W>(
    src: &mut R,
    dst: &mut W,
    step: usize,
    counters: Counters<'_>,
    act: &Activity,
    pace: Option<Pacer<'_>>,
) -> Result<(), PumpError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut held = None;
    loop {
        let cap = match pace {
            None => step,
            Some(_) => granted(pace, pool::BUF.min(step)).await,
        };
        let (buf, n) = match read_pooled_io(src, cap, &mut held).await {
            Ok(read) => read,
            // A TLS peer that closes its socket without a close_notify
            // alert (most clients do) has finished, as nginx reads it.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(PumpError::Read(e)),
        };
        if n == 0 {
            break;
        }
        dst.write_all(&buf[..n]).await.map_err(PumpError::Write)?;
        drop(buf);
        counters.add(n);
        act.touch();
        if let Some(p) = pace {
            p.spent(n);
        }
        dst.flush().await.map_err(PumpError::Write)?;
    }
    let _ = dst.shutdown().await;
    Ok(())
}

/// Make closing `s` send a reset rather than a FIN.
pub fn set_reset_on_close(s: &TcpStream) {
    let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
}

/// When a relay stops besides its sockets: the idle timeout, an operator's
/// close, and the server's drain.
pub struct Stops<'a> {
    /// Longest time without a byte moving.
    pub idle: Duration,
    /// Fires when an operator closes the session.
    pub closed: &'a mut oneshot::Receiver<()>,
    /// Cancelled when the server drains.
    pub drain: &'a CancellationToken,
    /// The session's `limit-bandwidth` pacing, if any.
    pub pace: Option<&'a Pacing>,
}

/// Run both directions until both finish, one fails, `idle` passes without
/// a byte moving, or the server drains after the upstream has finished.
///
/// The two directions are pinned by the caller and borrowed here, so the
/// session's state holds each of them once.
async fn drive(
    mut to_up: Pin<&mut impl Future<Output = Result<(), PumpError>>>,
    mut to_down: Pin<&mut impl Future<Output = Result<(), PumpError>>>,
    act: &Activity,
    stops: Stops<'_>,
) -> End {
    let Stops {
        idle,
        closed,
        drain,
        pace: _,
    } = stops;
    let (mut up_done, mut down_done) = (false, false);
    let mut close_armed = true;
    let idle_timer = tokio::time::sleep(idle);
    tokio::pin!(idle_timer);
    // Polled only once the upstream has finished (rare, and then only until
    // the client finishes too), so a busy session never touches the shared
    // token.
    let drained = drain.cancelled();
    tokio::pin!(drained);
    loop {
        tokio::select! {
            r = to_up.as_mut(), if !up_done => match r {
                Ok(()) => up_done = true,
                // Everything for the client has been delivered and its
                // write side shut: a client that now closes with bytes
                // unread (a TLS close_notify, say) answers with a reset.
                // It was served, as nginx reads it.
                Err(PumpError::Read(e))
                    if down_done && e.kind() == io::ErrorKind::ConnectionReset =>
                {
                    return End::ClientReset
                }
                Err(PumpError::Read(e)) => return End::Client(e),
                Err(PumpError::Write(e)) => return End::Upstream(e),
            },
            r = to_down.as_mut(), if !down_done => match r {
                Ok(()) => down_done = true,
                Err(PumpError::Read(e)) => return End::Upstream(e),
                Err(PumpError::Write(e)) => return End::Client(e),
            },
            () = &mut idle_timer => {
                let deadline = act.deadline(idle);
                if Instant::now() >= deadline {
                    return End::IdleTimeout;
                }
                idle_timer.as_mut().reset(deadline);
            }
            r = &mut *closed, if close_armed => match r {
                Ok(()) => return End::Closed,
                // A dropped sender is not a close request; stop polling it.
                Err(_) => close_armed = false,
            },
            () = &mut drained, if down_done && !up_done => return End::Drained,
        }
        if up_done && down_done {
            return End::Clean;
        }
    }
}

/// Relay between two plain TCP sockets (splice for bulk).
/// `up` counts client-to-upstream bytes, `down` upstream-to-client bytes.
/// The caller passes errors on as resets (see [`End::reset_target`]).
pub async fn relay_tcp(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    up: Counters<'_>,
    down: Counters<'_>,
    stops: Stops<'_>,
) -> End {
    let act = Activity::new();
    let pace = stops.pace;
    let (client_r, client_w) = client.split();
    let (up_r, up_w) = upstream.split();
    let mut to_up = Pump::new(client_r, up_w, up, &act, pace.map(|p| p.pacer(Dir::Up)));
    let mut to_down = Pump::new(up_r, client_w, down, &act, pace.map(|p| p.pacer(Dir::Down)));
    drive(Pin::new(&mut to_up), Pin::new(&mut to_down), &act, stops).await
}

/// Bytes one read of a TLS relay takes, per direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Steps {
    /// Client to upstream.
    pub up: usize,
    /// Upstream to client.
    pub down: usize,
}

impl Steps {
    /// Steps for a relay whose client and/or upstream side speaks TLS:
    /// [`pool::BIG`] from or towards a TLS side (records encrypted in a
    /// batch, or decrypted records gathered into one write), [`pool::BUF`]
    /// between two plain sides.
    pub fn tls(client_tls: bool, upstream_tls: bool) -> Steps {
        let step = if client_tls || upstream_tls {
            pool::BIG
        } else {
            pool::BUF
        };
        Steps {
            up: step,
            down: step,
        }
    }
}

/// Relay between any two byte streams (TLS on either side), reading at
/// most `steps` bytes at once per direction.
pub async fn relay_io<C, U>(
    client: &mut C,
    upstream: &mut U,
    up: Counters<'_>,
    down: Counters<'_>,
    stops: Stops<'_>,
    steps: Steps,
) -> End
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let act = Activity::new();
    let pace = stops.pace;
    let (mut client_r, mut client_w) = tokio::io::split(client);
    let (mut up_r, mut up_w) = tokio::io::split(upstream);
    let to_up = pump_io(
        &mut client_r,
        &mut up_w,
        steps.up,
        up,
        &act,
        pace.map(|p| p.pacer(Dir::Up)),
    );
    let to_down = pump_io(
        &mut up_r,
        &mut client_w,
        steps.down,
        down,
        &act,
        pace.map(|p| p.pacer(Dir::Down)),
    );
    tokio::pin!(to_up, to_down);
    drive(to_up, to_down, &act, stops).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use std::sync::Arc;
    use tokio::io::AsyncReadExt;

    /// A server and a client TLS configuration that trust one self-signed
    /// certificate for `relay.test`.
    fn tls_pair() -> (tokio_rustls::TlsAcceptor, tokio_rustls::TlsConnector) {
        let ck = rcgen::generate_simple_self_signed(vec!["relay.test".into()]).expect("rcgen");
        let cert = ck.cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der()));
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .expect("server config");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).expect("root");
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server).into(), Arc::new(client).into())
    }

    #[test]
    fn steps_are_large_from_and_towards_tls() {
        let terminated = Steps::tls(true, false);
        assert_eq!((terminated.up, terminated.down), (pool::BIG, pool::BIG));
        let originated = Steps::tls(false, true);
        assert_eq!((originated.up, originated.down), (pool::BIG, pool::BIG));
        let both = Steps::tls(true, true);
        assert_eq!((both.up, both.down), (pool::BIG, pool::BIG));
        let plain = Steps::tls(false, false);
        assert_eq!((plain.up, plain.down), (pool::BUF, pool::BUF));
    }

    /// What a test relay stops on: 30 s idle, and an operator close and a
    /// drain that never come.
    struct Unstopped {
        _close: oneshot::Sender<()>,
        closed: oneshot::Receiver<()>,
        drain: CancellationToken,
    }

    impl Unstopped {
        fn new() -> Self {
            let (_close, closed) = oneshot::channel();
            Unstopped {
                _close,
                closed,
                drain: CancellationToken::new(),
            }
        }

        fn stops(&mut self) -> Stops<'_> {
            Stops {
                idle: Duration::from_secs(30),
                closed: &mut self.closed,
                drain: &self.drain,
                pace: None,
            }
        }
    }

    /// A TLS session terminated over in-memory pipes: the proxy's TLS
    /// side, the client, the backend and the proxy's side towards it; the
    /// client's pipe holds `client_window` bytes, the backend's
    /// `backend_window`.
    async fn tls_session(
        client_window: usize,
        backend_window: usize,
    ) -> (
        tokio_rustls::server::TlsStream<tokio::io::DuplexStream>,
        tokio_rustls::client::TlsStream<tokio::io::DuplexStream>,
        tokio::io::DuplexStream,
        tokio::io::DuplexStream,
    ) {
        let (acceptor, connector) = tls_pair();
        let (client_end, proxy_end) = tokio::io::duplex(client_window);
        let (backend, upstream) = tokio::io::duplex(backend_window);
        let name = ServerName::try_from("relay.test").expect("name");
        let (server, client) = tokio::join!(
            acceptor.accept(proxy_end),
            connector.connect(name, client_end)
        );
        (
            server.expect("accept"),
            client.expect("connect"),
            backend,
            upstream,
        )
    }

    /// Relay a terminated TLS session (`server`) to a plain `upstream`
    /// until it ends, counting client-to-upstream bytes into `up_bytes`.
    async fn relay_terminated<S, U>(server: &mut S, upstream: &mut U, up_bytes: &AtomicU64) -> End
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
        U: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let down_bytes = AtomicU64::new(0);
        let (up, down) = ([up_bytes], [&down_bytes]);
        let mut stops = Unstopped::new();
        let steps = Steps::tls(true, false);
        relay_io(
            server,
            upstream,
            Counters(&up),
            Counters(&down),
            stops.stops(),
            steps,
        )
        .await
    }

    /// Connected pairs: (client, proxy's client side) and (proxy's
    /// upstream side, backend).
    async fn tcp_pairs() -> ((TcpStream, TcpStream), (TcpStream, TcpStream)) {
        async fn pair() -> (TcpStream, TcpStream) {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let a = TcpStream::connect(l.local_addr().expect("addr"))
                .await
                .expect("connect");
            let (b, _) = l.accept().await.expect("accept");
            (a, b)
        }
        let (client, proxy_client) = pair().await;
        let (proxy_upstream, backend) = pair().await;
        ((client, proxy_client), (proxy_upstream, backend))
    }

    /// Relay between the proxy's two sides until the session ends.
    async fn relay_pair(mut c: TcpStream, mut u: TcpStream) -> End {
        let (a, b, x, y) = (
            AtomicU64::new(0),
            AtomicU64::new(0),
            AtomicU64::new(0),
            AtomicU64::new(0),
        );
        let (up, down) = ([&a, &b], [&x, &y]);
        let mut stops = Unstopped::new();
        let end = relay_tcp(
            &mut c,
            &mut u,
            Counters(&up),
            Counters(&down),
            stops.stops(),
        )
        .await;
        if let Some(ResetTarget::Client) = end.reset_target() {
            set_reset_on_close(&c);
        }
        end
    }

    /// A relayed session whose client has sent `request` and whose backend
    /// has read it: (client, backend, the running relay).
    async fn relayed_request() -> (TcpStream, TcpStream, tokio::task::JoinHandle<End>) {
        let ((mut client, pc), (pu, mut backend)) = tcp_pairs().await;
        let relay = tokio::spawn(relay_pair(pc, pu));
        client.write_all(b"request").await.expect("request");
        let mut req = [0u8; 7];
        backend.read_exact(&mut req).await.expect("request arrives");
        assert_eq!(&req, b"request");
        (client, backend, relay)
    }

    /// The backend sends `reply` with its FIN; the client reads all of it
    /// and then a clean EOF.
    async fn reply_reaches_the_client(
        client: &mut TcpStream,
        backend: &mut TcpStream,
        reply: &[u8],
    ) {
        backend.write_all(reply).await.expect("reply");
        backend.shutdown().await.expect("fin");
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut got))
            .await
            .expect("EOF reaches the client")
            .expect("clean EOF");
        assert_eq!(got, reply);
    }

    /// How the relay ended (it must within 5 s).
    async fn ended(relay: tokio::task::JoinHandle<End>) -> End {
        tokio::time::timeout(Duration::from_secs(5), relay)
            .await
            .expect("the relay ends")
            .expect("join")
    }

    #[tokio::test]
    async fn a_reply_and_its_fin_in_one_segment_arrive_whole_then_eof() {
        let (mut client, mut backend, relay) = relayed_request().await;
        // The reply and the FIN leave together.
        reply_reaches_the_client(&mut client, &mut backend, b"the whole reply").await;
        drop(client);
        let end = ended(relay).await;
        assert!(matches!(end, End::Clean), "ended {end:?}");
    }

    #[tokio::test]
    async fn a_client_resetting_after_the_whole_reply_was_served() {
        let (mut client, mut backend, relay) = relayed_request().await;
        reply_reaches_the_client(&mut client, &mut backend, b"reply").await;
        // The client closes with a reset (as one does with bytes unread).
        set_reset_on_close(&client);
        drop(client);
        let end = ended(relay).await;
        assert!(matches!(end, End::ClientReset), "ended {end:?}");
        assert_eq!(end.reset_target(), Some(ResetTarget::Upstream));
    }

    #[tokio::test]
    async fn a_client_resetting_before_the_reply_is_a_client_error() {
        let (client, _backend, relay) = relayed_request().await;
        set_reset_on_close(&client);
        drop(client);
        let end = ended(relay).await;
        assert!(matches!(end, End::Client(_)), "ended {end:?}");
    }

    #[tokio::test]
    async fn a_reply_followed_by_a_reset_reaches_the_client_as_a_reset() {
        let (mut client, mut backend, relay) = relayed_request().await;
        backend.write_all(b"partial").await.expect("reply");
        // The backend dies: its close sends a reset.
        set_reset_on_close(&backend);
        drop(backend);
        let end = ended(relay).await;
        assert!(matches!(end, End::Upstream(_)), "ended {end:?}");
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut got))
            .await
            .expect("the client sees the end");
        assert!(read.is_err(), "a reset, not a clean EOF (got {got:?})");
    }

    #[tokio::test]
    async fn records_already_received_are_gathered_into_one_read() {
        let (mut server, mut client, _backend, _upstream) = tls_session(64 * 1024, 1024).await;
        // Three records, each flushed on its own.
        for part in [b"first ", b"secnd ", b"third "] {
            client.write_all(part).await.expect("write");
            client.flush().await.expect("flush");
        }
        // Wait until the first record can be read, then read once.
        let mut held = None;
        let (buf, n) = read_pooled_io(&mut server, pool::BIG, &mut held)
            .await
            .expect("read");
        assert_eq!(&buf[..n], b"first secnd third ");
        assert!(held.is_none());
    }

    /// A source that yields `data` once, then `end` on every later read
    /// (EOF when `None`, else that error), counting the reads tried.
    struct Scripted {
        data: Option<&'static [u8]>,
        end: Option<io::ErrorKind>,
        reads: usize,
    }

    impl Scripted {
        fn new(data: &'static [u8], end: Option<io::ErrorKind>) -> Self {
            Scripted {
                data: Some(data),
                end,
                reads: 0,
            }
        }
    }

    impl tokio::io::AsyncRead for Scripted {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            self.reads += 1;
            match (self.data.take(), self.end) {
                (Some(data), _) => buf.put_slice(data),
                (None, Some(kind)) => return Poll::Ready(Err(kind.into())),
                (None, None) => {}
            }
            Poll::Ready(Ok(()))
        }
    }

    /// Two gathering reads of `src`: the bytes, then what came after them.
    async fn two_reads(src: &mut Scripted) -> (Vec<u8>, io::Result<usize>) {
        let mut held = None;
        let (buf, n) = read_pooled_io(src, pool::BIG, &mut held)
            .await
            .expect("the bytes first");
        let first = buf[..n].to_vec();
        drop(buf);
        let next = read_pooled_io(src, pool::BIG, &mut held)
            .await
            .map(|(_, n)| n);
        (first, next)
    }

    #[tokio::test]
    async fn eof_after_some_bytes_is_reported_next_without_reading_again() {
        let mut src = Scripted::new(b"last reply", None);
        let (first, next) = two_reads(&mut src).await;
        assert_eq!(first, b"last reply");
        assert_eq!(next.expect("then EOF"), 0);
        assert_eq!(src.reads, 2, "one read for the bytes, one that met EOF");
    }

    #[tokio::test]
    async fn an_error_after_some_bytes_comes_with_the_next_read() {
        let reset = io::ErrorKind::ConnectionReset;
        let mut src = Scripted::new(b"bytes before the reset", Some(reset));
        let (first, next) = two_reads(&mut src).await;
        assert_eq!(first, b"bytes before the reset");
        assert_eq!(next.err().map(|e| e.kind()), Some(reset));
        assert_eq!(
            src.reads, 2,
            "one read for the bytes, one that met the error"
        );
    }

    #[tokio::test]
    async fn a_tls_client_closing_without_close_notify_ends_the_session_cleanly() {
        let (mut server, mut client, mut backend, mut upstream) =
            tls_session(64 * 1024, 64 * 1024).await;
        client.write_all(b"last words").await.expect("write");
        client.flush().await.expect("flush");
        // The client's socket closes with no close_notify sent.
        drop(client.into_inner().0);
        let up_bytes = AtomicU64::new(0);
        let relay = relay_terminated(&mut server, &mut upstream, &up_bytes);
        let backend_side = async {
            // The upstream gets the bytes, then a clean EOF, and finishes.
            let mut got = Vec::new();
            backend.read_to_end(&mut got).await.expect("clean EOF");
            assert_eq!(got, b"last words");
            drop(backend);
        };
        let (end, ()) = tokio::time::timeout(Duration::from_secs(5), async {
            tokio::join!(relay, backend_side)
        })
        .await
        .expect("the relay ends");
        assert!(matches!(end, End::Clean), "ended {end:?}");
        assert_eq!(up_bytes.load(Ordering::Relaxed), 10);
    }

    #[tokio::test]
    async fn records_queued_while_the_client_is_full_arrive_when_the_upstream_goes_quiet() {
        // The client's side holds 16 KiB, so most of a 48 KiB reply waits
        // encrypted in the proxy's TLS layer while the client is not reading.
        let (mut server, mut client, mut backend, mut upstream) =
            tls_session(16 * 1024, 256 * 1024).await;
        let reply: Vec<u8> = (0..48 * 1024u32).map(|i| (i % 251) as u8).collect();
        // The upstream sends its reply and then waits (keeps its side open).
        backend.write_all(&reply).await.expect("backend write");
        let up_bytes = AtomicU64::new(0);
        let relay = relay_terminated(&mut server, &mut upstream, &up_bytes);
        let client_reads = async {
            // A slow client: it reads only once the relay has taken the
            // whole reply from the upstream and waits for more.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let mut got = vec![0u8; reply.len()];
            tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut got))
                .await
                .expect("the whole reply arrives")
                .expect("read");
            assert_eq!(got, reply);
        };
        tokio::select! {
            end = relay => panic!("the relay ended early: {end:?}"),
            () = client_reads => {}
        }
    }
}
