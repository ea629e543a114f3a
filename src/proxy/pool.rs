//! Per-worker pools of relay buffers and splice pipes, so a connection holds
//! neither while it is idle.
//!
//! A direction takes a buffer when its socket is readable and gives it back
//! once the bytes are written out; a buffer is allocated (zeroed) once and
//! reused as it is, never cleared again. TLS relays use larger buffers
//! ([`big_buffer`], a pool of their own) so that one read or write carries
//! several TLS records. A bulk direction borrows a pipe for
//! one burst (read from the socket into the pipe, written out until the pipe
//! is empty) and gives it back empty. Both pools are bounded: at most
//! [`BUFFERS_KEPT`] idle buffers stay allocated per worker (more may be in
//! use under a burst; they are freed when returned), and at most
//! [`PIPES_PER_WORKER`] pipes exist per worker, in use or free. A direction
//! that finds no pipe copies that burst in user space instead.
//!
//! The pools are thread-local: each data-plane worker runs one
//! single-threaded runtime, so its connections share its pools without a
//! lock.

use std::cell::{Cell, RefCell};
use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

/// Size of one relay buffer.
pub const BUF: usize = 16 * 1024;
/// Idle buffers a worker keeps for reuse.
pub const BUFFERS_KEPT: usize = 64;
/// Size of one large relay buffer: four full TLS records.
pub const BIG: usize = 64 * 1024;
/// Idle large buffers a worker keeps for reuse.
pub const BIG_KEPT: usize = 16;
/// Splice pipes a worker may hold at once (two descriptors each).
pub const PIPES_PER_WORKER: usize = 16;
/// Capacity asked for each splice pipe (the kernel default is 64 KiB).
pub const PIPE_SIZE: usize = 256 * 1024;
/// How long a worker stays in user space after it failed to open a pipe
/// (out of descriptors), so it does not retry on every burst.
const PIPE_RETRY: Duration = Duration::from_secs(1);

thread_local! {
    static BUFFERS: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
    static BIG_BUFFERS: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
    static PIPES: RefCell<Pipes> = const {
        RefCell::new(Pipes { free: Vec::new(), open: 0, failed_at: None })
    };
}

/// A relay buffer from this worker's pool; goes back when dropped.
pub struct Buffer(Option<Box<[u8]>>);

type Pool = std::thread::LocalKey<RefCell<Vec<Box<[u8]>>>>;

/// Take a buffer: a reused one as it was left, or a new zeroed one.
pub fn buffer() -> Buffer {
    take(&BUFFERS, BUF)
}

/// Take a large ([`BIG`]) buffer, reused or new.
pub fn big_buffer() -> Buffer {
    take(&BIG_BUFFERS, BIG)
}

fn take(pool: &'static Pool, size: usize) -> Buffer {
    let reused = pool
        .try_with(|b| b.try_borrow_mut().ok().and_then(|mut b| b.pop()))
        .ok()
        .flatten();
    Buffer(Some(
        reused.unwrap_or_else(|| vec![0u8; size].into_boxed_slice()),
    ))
}

impl Deref for Buffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.0.as_deref().unwrap_or_default()
    }
}

impl DerefMut for Buffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.0.as_deref_mut().unwrap_or_default()
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        if let Some(b) = self.0.take() {
            let (pool, kept) = if b.len() == BIG {
                (&BIG_BUFFERS, BIG_KEPT)
            } else {
                (&BUFFERS, BUFFERS_KEPT)
            };
            let _ = pool.try_with(|pool| {
                if let Ok(mut pool) = pool.try_borrow_mut() {
                    if pool.len() < kept {
                        pool.push(b);
                    }
                }
            });
        }
    }
}

/// Idle buffers this worker keeps now.
pub fn buffers_kept() -> usize {
    kept(&BUFFERS)
}

/// Idle large buffers this worker keeps now.
pub fn big_buffers_kept() -> usize {
    kept(&BIG_BUFFERS)
}

fn kept(pool: &'static Pool) -> usize {
    pool.try_with(|b| b.try_borrow().map_or(0, |b| b.len()))
        .unwrap_or(0)
}

/// A pipe's two ends.
#[cfg(target_os = "linux")]
#[derive(Debug)]
pub struct PipeFds {
    /// Read end.
    pub r: std::os::fd::OwnedFd,
    /// Write end.
    pub w: std::os::fd::OwnedFd,
}

#[cfg(not(target_os = "linux"))]
#[derive(Debug)]
struct PipeFds;

struct Pipes {
    free: Vec<PipeFds>,
    /// Pipes open, free or in use.
    open: usize,
    failed_at: Option<Instant>,
}

/// A pipe borrowed from this worker's pool. Dropped empty (after
/// [`Pipe::emptied`]) it goes back to the pool; otherwise it is closed,
/// since bytes left in it belong to a session that ended.
#[derive(Debug)]
pub struct Pipe {
    fds: Option<PipeFds>,
    empty: Cell<bool>,
}

impl Pipe {
    /// The pipe's ends.
    #[cfg(target_os = "linux")]
    pub fn fds(&self) -> Option<&PipeFds> {
        self.fds.as_ref()
    }

    /// Mark the pipe empty: it may be reused.
    pub fn emptied(&self) {
        self.empty.set(true);
    }

    /// Mark the pipe as holding bytes.
    pub fn filled(&self) {
        self.empty.set(false);
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        let Some(fds) = self.fds.take() else { return };
        let empty = self.empty.get();
        let _ = PIPES.try_with(|p| {
            if let Ok(mut p) = p.try_borrow_mut() {
                if empty {
                    p.free.push(fds);
                } else {
                    p.open = p.open.saturating_sub(1);
                    drop(fds);
                }
            }
        });
    }
}

#[cfg(target_os = "linux")]
fn open_pipe() -> std::io::Result<PipeFds> {
    use rustix::pipe::{pipe_with, PipeFlags};
    let (r, w) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
    // A larger pipe moves a bulk burst in fewer splices; where the system
    // refuses (pipe-max-size, per-user pipe limits) the default is kept.
    let _ = rustix::pipe::fcntl_setpipe_size(&w, PIPE_SIZE);
    Ok(PipeFds { r, w })
}

#[cfg(not(target_os = "linux"))]
fn open_pipe() -> std::io::Result<PipeFds> {
    Err(std::io::ErrorKind::Unsupported.into())
}

/// Borrow a pipe: a free one, a new one while the worker holds fewer than
/// [`PIPES_PER_WORKER`], or `None` (copy in user space).
pub fn pipe() -> Option<Pipe> {
    PIPES
        .try_with(|p| {
            let mut p = p.try_borrow_mut().ok()?;
            if let Some(fds) = p.free.pop() {
                return Some(Pipe {
                    fds: Some(fds),
                    empty: Cell::new(true),
                });
            }
            if p.open >= PIPES_PER_WORKER {
                return None;
            }
            if p.failed_at.is_some_and(|t| t.elapsed() < PIPE_RETRY) {
                return None;
            }
            match open_pipe() {
                Ok(fds) => {
                    p.open += 1;
                    p.failed_at = None;
                    Some(Pipe {
                        fds: Some(fds),
                        empty: Cell::new(true),
                    })
                }
                Err(e) => {
                    p.failed_at = Some(Instant::now());
                    tracing::debug!(error = %e, "no pipe for splice; copying in user space");
                    None
                }
            }
        })
        .ok()
        .flatten()
}

/// Pipes this worker holds open now (free or in use).
pub fn pipes_open() -> usize {
    PIPES
        .try_with(|p| p.try_borrow().map_or(0, |p| p.open))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_as_left_and_the_pool_is_bounded() {
        std::thread::spawn(|| {
            let mut a = buffer();
            assert_eq!(a.len(), BUF);
            a[0] = 7;
            drop(a);
            assert_eq!(buffers_kept(), 1);
            let b = buffer();
            assert_eq!(b[0], 7, "reused without clearing");
            assert_eq!(buffers_kept(), 0);
            drop(b);
            let many: Vec<Buffer> = (0..BUFFERS_KEPT + 10).map(|_| buffer()).collect();
            drop(many);
            assert_eq!(buffers_kept(), BUFFERS_KEPT, "extra buffers are freed");
            let big = big_buffer();
            assert_eq!(big.len(), BIG);
            drop(big);
            assert_eq!(big_buffers_kept(), 1, "a large buffer goes to its own pool");
            assert_eq!(buffers_kept(), BUFFERS_KEPT);
        })
        .join()
        .expect("thread");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn pipes_are_bounded_and_only_empty_ones_return() {
        std::thread::spawn(|| {
            let all: Vec<Pipe> = (0..PIPES_PER_WORKER)
                .map(|_| pipe().expect("a pipe"))
                .collect();
            assert_eq!(pipes_open(), PIPES_PER_WORKER);
            assert!(pipe().is_none(), "no more than the bound");
            drop(all);
            assert_eq!(pipes_open(), PIPES_PER_WORKER, "empty pipes are kept");
            let p = pipe().expect("a free one");
            p.filled();
            drop(p);
            assert_eq!(pipes_open(), PIPES_PER_WORKER - 1, "a full pipe is closed");
        })
        .join()
        .expect("thread");
    }
}
