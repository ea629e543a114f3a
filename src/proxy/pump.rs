//! One direction of a plain TCP relay as a small hand-written state
//! machine.
//!
//! A session's two directions live in its task for as long as it is open,
//! idle or not, so their size is memory per held connection. Written as
//! `async` functions, each direction kept a slot for every future it might
//! await (readiness, splice, pacing timers, write-all, shutdown): about
//! half a kilobyte each. This one keeps only what the current step needs:
//! the bytes waiting to be written (a pooled buffer or a pooled pipe) and
//! where they stand.
//!
//! Each step is what the `async` version did: read what is there (a
//! pooled buffer taken only for the read, given back when nothing came),
//! write it all out, count it as it moves, repeat; once a direction has
//! carried [`SPLICE_AFTER`] bytes, each burst goes through a pooled pipe
//! with `splice(2)`; EOF passes a half-close on unless the other direction
//! has finished (then closing the sockets ends the session). Reads and
//! writes go through tokio's `poll_read`/`poll_write`, so a short read
//! still counts as "socket drained" and no read is spent on `EAGAIN`, and
//! tokio's cooperative budget still makes a busy direction yield. When a
//! direction's first read is short and the peer's FIN was already reported
//! (a peer that answers once and closes), the direction ends once those
//! bytes are out, without a last `recv` to read the EOF.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{ReadHalf, WriteHalf};

use super::copy::{Activity, Counters, PumpError};
use super::pool;
use crate::plugins::limit_bandwidth::Pacer;

/// Most bytes one splice burst moves (a pooled pipe's capacity; a pipe
/// left at the default 64 KiB simply moves less per burst).
#[cfg(target_os = "linux")]
const CHUNK: usize = pool::PIPE_SIZE;
/// Bytes a direction moves in user space before it switches to splice.
pub const SPLICE_AFTER: u64 = 256 * 1024;

/// A pacing wait in progress (only sessions under `limit-bandwidth`).
type Grant<'a> = Pin<Box<dyn Future<Output = usize> + Send + 'a>>;

/// Where a direction stands.
enum Step<'a> {
    /// Waiting for bytes to read.
    Read,
    /// Waiting for the pacer to allow a read.
    Paced(Grant<'a>),
    /// Bytes `at..end` of `buf` still to be written.
    Write {
        buf: pool::Buffer,
        at: usize,
        end: usize,
    },
    /// `left` bytes in `pipe` still to be spliced out.
    #[cfg(target_os = "linux")]
    Drain { pipe: pool::Pipe, left: usize },
    /// Finished.
    Done,
}

/// One direction: `src` to `dst` until EOF on `src`.
pub(super) struct Pump<'a> {
    src: ReadHalf<'a>,
    dst: WriteHalf<'a>,
    counters: Counters<'a>,
    act: &'a Activity,
    pace: Option<Pacer<'a>>,
    /// Bytes the pacer allowed for the next read.
    allowed: Option<usize>,
    moved: u64,
    /// The last read drained the socket after the peer's FIN had been
    /// reported: EOF follows once its bytes are written, without another
    /// read to see it.
    eof_seen: bool,
    step: Step<'a>,
}

impl<'a> Pump<'a> {
    /// A direction from `src` to `dst`, counted into `counters`.
    pub(super) fn new(
        src: ReadHalf<'a>,
        dst: WriteHalf<'a>,
        counters: Counters<'a>,
        act: &'a Activity,
        pace: Option<Pacer<'a>>,
    ) -> Self {
        Pump {
            src,
            dst,
            counters,
            act,
            pace,
            allowed: None,
            moved: 0,
            eof_seen: false,
            step: Step::Read,
        }
    }

    /// Bytes moved out, counted as they go.
    fn wrote(&mut self, n: usize) {
        self.counters.add(n);
        self.act.touch();
        self.moved += n as u64;
    }

    /// How many bytes the next read may take (`want` unless paced), or
    /// `None` while the pacer makes the direction wait.
    fn allowance(&mut self, want: usize, cx: &mut Context<'_>) -> Poll<usize> {
        let Some(pace) = self.pace else {
            return Poll::Ready(want);
        };
        if let Some(n) = self.allowed {
            return Poll::Ready(n.min(want));
        }
        let mut grant: Grant<'a> = match std::mem::replace(&mut self.step, Step::Read) {
            Step::Paced(g) => g,
            _ => Box::pin(async move { pace.grant(want).await }),
        };
        match grant.as_mut().poll(cx) {
            Poll::Ready(n) => {
                self.allowed = Some(n);
                Poll::Ready(n.min(want))
            }
            Poll::Pending => {
                self.step = Step::Paced(grant);
                Poll::Pending
            }
        }
    }

    /// The pacer's allowance is used by `n` bytes just read.
    fn spent(&mut self, n: usize) {
        if let Some(p) = self.pace {
            p.spent(n);
            self.allowed = None;
        }
    }

    /// EOF on `src`: pass the half-close on, unless the other direction has
    /// finished already (the session ends now and closing sends the FIN).
    fn finish(&mut self) {
        self.step = Step::Done;
        if !self.act.finish_one() {
            let s: &tokio::net::TcpStream = self.dst.as_ref();
            let _ = socket2::SockRef::from(s).shutdown(std::net::Shutdown::Write);
        }
    }

    /// Try one splice burst from `src` into a pooled pipe. `None` when no
    /// pipe is free (copy in user space), otherwise whether a burst started
    /// (`Ok(false)` at EOF).
    #[cfg(target_os = "linux")]
    fn poll_splice_in(&mut self, cx: &mut Context<'_>) -> Option<Poll<Result<bool, PumpError>>> {
        match self.src.as_ref().poll_read_ready(cx) {
            Poll::Pending => return Some(Poll::Pending),
            Poll::Ready(Err(e)) => return Some(Poll::Ready(Err(PumpError::Read(e)))),
            Poll::Ready(Ok(())) => {}
        }
        let pipe = pool::pipe()?;
        let chunk = match self.allowance(CHUNK, cx) {
            Poll::Ready(n) => n,
            Poll::Pending => return Some(Poll::Pending),
        };
        let p = pipe.fds()?;
        let s: &tokio::net::TcpStream = self.src.as_ref();
        // The pipe is empty, so WouldBlock can only mean the socket has
        // nothing to read (try_io then clears readiness).
        let got = s.try_io(tokio::io::Interest::READABLE, || {
            rustix::pipe::splice(s, None, &p.w, None, chunk, splice_flags())
                .map_err(io::Error::from)
        });
        Some(match got {
            Ok(0) => Poll::Ready(Ok(false)),
            Ok(n) => {
                pipe.filled();
                self.spent(n);
                self.step = Step::Drain { pipe, left: n };
                Poll::Ready(Ok(true))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // Readiness was cleared: wait for the next edge.
                match s.poll_read_ready(cx) {
                    Poll::Ready(Err(e)) => Poll::Ready(Err(PumpError::Read(e))),
                    Poll::Ready(Ok(())) => Poll::Ready(Ok(true)),
                    Poll::Pending => Poll::Pending,
                }
            }
            Err(e) => Poll::Ready(Err(PumpError::Read(e))),
        })
    }

    /// Read into a pooled buffer; the buffer goes back when nothing came.
    /// `Ok(false)` at EOF.
    fn poll_read_in(&mut self, cx: &mut Context<'_>) -> Poll<Result<bool, PumpError>> {
        let cap = ready!(self.allowance(pool::BUF, cx));
        let mut buf = pool::buffer();
        let cap = cap.min(buf.len());
        let mut rb = ReadBuf::new(&mut buf[..cap]);
        ready!(Pin::new(&mut self.src).poll_read(cx, &mut rb)).map_err(PumpError::Read)?;
        let n = rb.filled().len();
        if n == 0 {
            return Poll::Ready(Ok(false));
        }
        self.spent(n);
        // Only a direction's first read asks: that is where a peer that
        // answers once and closes (HTTP/1.0, a banner, a one-shot reply)
        // sends its FIN; a long session pays for one last read instead.
        if self.moved == 0 && n < cap {
            self.eof_seen = peer_finished(self.src.as_ref());
        }
        self.step = Step::Write { buf, at: 0, end: n };
        Poll::Ready(Ok(true))
    }
}

/// Whether the I/O driver has reported the peer's FIN on `s` (and no
/// error). Never waits: the readiness is polled once with a no-op waker.
///
/// Called right after a read that returned less than it asked for, it
/// tells that the socket is at EOF without another `recv` returning 0:
/// readiness changes only when the driver runs, which on a single-threaded
/// runtime happens between task polls, never within one, so a FIN seen
/// here had arrived before that read, and a short read took every byte
/// before it. (On a multi-threaded runtime this does not hold, and the
/// answer is always false.)
fn peer_finished(s: &tokio::net::TcpStream) -> bool {
    use tokio::io::Interest;
    use tokio::runtime::{Handle, RuntimeFlavor};
    let single =
        Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::CurrentThread);
    if !single {
        return false;
    }
    let ready = std::pin::pin!(s.ready(Interest::READABLE | Interest::ERROR));
    let mut cx = Context::from_waker(std::task::Waker::noop());
    matches!(ready.poll(&mut cx), Poll::Ready(Ok(r)) if r.is_read_closed() && !r.is_error())
}

#[cfg(target_os = "linux")]
fn splice_flags() -> rustix::pipe::SpliceFlags {
    rustix::pipe::SpliceFlags::MOVE | rustix::pipe::SpliceFlags::NONBLOCK
}

impl Future for Pump<'_> {
    type Output = Result<(), PumpError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            match &mut this.step {
                Step::Read | Step::Paced(_) => {
                    #[cfg(target_os = "linux")]
                    if this.moved >= SPLICE_AFTER {
                        if let Some(r) = this.poll_splice_in(cx) {
                            match ready!(r)? {
                                true => continue,
                                false => {
                                    this.finish();
                                    return Poll::Ready(Ok(()));
                                }
                            }
                        }
                    }
                    if !ready!(this.poll_read_in(cx))? {
                        this.finish();
                        return Poll::Ready(Ok(()));
                    }
                }
                Step::Write { buf, at, end } => {
                    let n = ready!(Pin::new(&mut this.dst).poll_write(cx, &buf[*at..*end]))
                        .map_err(PumpError::Write)?;
                    if n == 0 {
                        return Poll::Ready(Err(PumpError::Write(io::ErrorKind::WriteZero.into())));
                    }
                    *at += n;
                    let drained = *at == *end;
                    if drained {
                        // The buffer goes back to the pool here.
                        this.step = Step::Read;
                    }
                    this.wrote(n);
                    if drained && this.eof_seen {
                        this.finish();
                        return Poll::Ready(Ok(()));
                    }
                }
                #[cfg(target_os = "linux")]
                Step::Drain { pipe, left } => {
                    let d: &tokio::net::TcpStream = this.dst.as_ref();
                    ready!(d.poll_write_ready(cx)).map_err(PumpError::Write)?;
                    let Some(p) = pipe.fds() else {
                        return Poll::Ready(Err(PumpError::Write(
                            io::ErrorKind::BrokenPipe.into(),
                        )));
                    };
                    let out = d.try_io(tokio::io::Interest::WRITABLE, || {
                        rustix::pipe::splice(&p.r, None, d, None, *left, splice_flags())
                            .map_err(io::Error::from)
                    });
                    match out {
                        Ok(0) => {
                            return Poll::Ready(Err(PumpError::Write(
                                io::ErrorKind::WriteZero.into(),
                            )))
                        }
                        Ok(n) => {
                            *left -= n;
                            if *left == 0 {
                                pipe.emptied();
                                // The pipe goes back to the pool here.
                                this.step = Step::Read;
                            }
                            this.wrote(n);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Poll::Ready(Err(PumpError::Write(e))),
                    }
                }
                Step::Done => return Poll::Ready(Ok(())),
            }
        }
    }
}
