//! Binary upgrade on SIGUSR2: start the executable found at the path `serve`
//! was started from, hand it every listening socket, let it take the store
//! over, and step aside once it reports that it serves.
//!
//! The hand-over runs over a Unix socket whose path the new process finds in
//! [`ENV`]. The old process sends one fixed-size record per listening socket
//! (`tag` and bound address) with the descriptor attached (`SCM_RIGHTS`),
//! then an `end` record; before `end` it has released the store's
//! data-directory lock (in-flight writes finish first, later ones are
//! refused with 503). The new process adopts the sockets its config still
//! names, binds the others as usual, opens the store, starts serving and
//! answers `ready`. Sockets are shared, never closed in between, so no
//! connection attempt is refused during the switch.
//!
//! Why a path and not `/proc/self/exe`: that link names the running file,
//! which a package upgrade has replaced (or deleted); the path `serve` was
//! started from names the new one.

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

use crate::store::Store;

/// The environment variable naming the hand-over socket of an upgrade.
pub const ENV: &str = "APISIX_STREAM_UPGRADE_SOCKET";
/// How long the new process has to connect and report that it serves.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Size of every record on the hand-over socket.
const RECORD: usize = 128;

/// The executable `serve` was started from, resolved at start-up.
static EXE: OnceLock<Option<PathBuf>> = OnceLock::new();
/// Sockets received from the previous process, not yet adopted.
static INHERITED: Mutex<Vec<Inherited>> = Mutex::new(Vec::new());
/// The hand-over socket, kept until the new process reports ready.
static HANDOVER: Mutex<Option<UnixStream>> = Mutex::new(None);
/// Failed upgrades and the last reason, for `/v1/stream/stats`.
static FAILURES: Mutex<(u64, Option<String>)> = Mutex::new((0, None));

struct Inherited {
    tag: String,
    local: SocketAddr,
    fd: OwnedFd,
}

/// Resolve the path `serve` was started from (argv\[0\] against the current
/// directory, or `PATH` for a bare name); call once at start-up.
pub fn remember_exe() {
    EXE.get_or_init(|| {
        let arg0 = PathBuf::from(std::env::args_os().next()?);
        if arg0.components().count() > 1 {
            return Some(if arg0.is_absolute() {
                arg0
            } else {
                std::env::current_dir().ok()?.join(arg0)
            });
        }
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .map(|dir| dir.join(&arg0))
            .find(|p| p.is_file())
            .map(|p| {
                if p.is_absolute() {
                    p
                } else {
                    std::env::current_dir().map_or(p.clone(), |d| d.join(&p))
                }
            })
    });
}

/// Failed upgrades so far and the reason of the last one.
pub fn failures() -> (u64, Option<String>) {
    FAILURES.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

fn record(text: &str) -> [u8; RECORD] {
    let mut buf = [0u8; RECORD];
    let n = text.len().min(RECORD);
    buf[..n].copy_from_slice(&text.as_bytes()[..n]);
    buf
}

fn text(buf: &[u8]) -> String {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// A socket inherited under `tag`, if any (the first one left).
pub fn take(tag: &str) -> Option<OwnedFd> {
    let mut list = INHERITED.lock().unwrap_or_else(|p| p.into_inner());
    let i = list.iter().position(|s| s.tag == tag)?;
    Some(list.remove(i).fd)
}

/// Another socket inherited under `tag` bound to `local` (the further
/// sockets of one entry, one per worker).
pub fn take_at(tag: &str, local: SocketAddr) -> Option<OwnedFd> {
    let mut list = INHERITED.lock().unwrap_or_else(|p| p.into_inner());
    let i = list.iter().position(|s| s.tag == tag && s.local == local)?;
    Some(list.remove(i).fd)
}

/// Close the inherited sockets the config no longer names; returns how many.
pub fn drop_unadopted() -> usize {
    std::mem::take(&mut *INHERITED.lock().unwrap_or_else(|p| p.into_inner())).len()
}

/// In a process started by an upgrade: receive the previous process's
/// sockets (blocking until it has released the store). Nothing to do when
/// [`ENV`] is unset.
pub fn receive() -> Result<usize, String> {
    let Some(path) = std::env::var_os(ENV) else {
        return Ok(0);
    };
    let fail = |e: std::io::Error| format!("binary upgrade hand-over: {e}");
    let mut stream = UnixStream::connect(&path).map_err(fail)?;
    stream.set_read_timeout(Some(READY_TIMEOUT)).map_err(fail)?;
    let mut got = Vec::new();
    loop {
        let mut buf = [0u8; RECORD];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let n = recvmsg(
            &stream,
            &mut [IoSliceMut::new(&mut buf)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )
        .map_err(|e| fail(e.into()))?
        .bytes;
        let mut fd = None;
        for msg in control.drain() {
            if let RecvAncillaryMessage::ScmRights(fds) = msg {
                fd = fds.into_iter().next().or(fd);
            }
        }
        if n == 0 {
            return Err("binary upgrade hand-over: the previous process closed it".into());
        }
        if n < RECORD {
            stream.read_exact(&mut buf[n..]).map_err(fail)?;
        }
        let line = text(&buf);
        if line == "end" {
            break;
        }
        let (tag, local) = line.rsplit_once('\t').unwrap_or((&line, ""));
        match (local.parse(), fd) {
            (Ok(local), Some(fd)) => got.push(Inherited {
                tag: tag.to_string(),
                local,
                fd,
            }),
            _ => return Err(format!("binary upgrade hand-over: bad record {line:?}")),
        }
    }
    let n = got.len();
    *INHERITED.lock().unwrap_or_else(|p| p.into_inner()) = got;
    *HANDOVER.lock().unwrap_or_else(|p| p.into_inner()) = Some(stream);
    Ok(n)
}

/// In a process started by an upgrade: tell the previous one that this one
/// serves.
pub fn report_ready() {
    if let Some(mut stream) = HANDOVER.lock().unwrap_or_else(|p| p.into_inner()).take() {
        let msg = record(&format!("ready {}", std::process::id()));
        if let Err(e) = stream.write_all(&msg) {
            tracing::warn!(error = %e, "cannot report readiness to the previous process");
        }
    }
}

/// Under systemd (`Type=notify`, `NOTIFY_SOCKET` set): say that this
/// process serves and is the unit's main process (after an upgrade, the
/// new one; needs `NotifyAccess=all`).
pub fn notify_systemd() {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::UnixDatagram;
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let msg = format!("MAINPID={}\nREADY=1\n", std::process::id());
    let sent = UnixDatagram::unbound().and_then(|sock| {
        let bytes = path.as_bytes();
        match bytes.strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                sock.send_to_addr(msg.as_bytes(), &addr)
            }
            None => sock.send_to(msg.as_bytes(), &path),
        }
    });
    if let Err(e) = sent {
        tracing::warn!(error = %e, "cannot notify systemd (NOTIFY_SOCKET)");
    }
}

/// A listening socket to hand over: its tag, bound address and descriptor.
pub type Handed<'a> = (String, SocketAddr, BorrowedFd<'a>);

/// In the running process (SIGUSR2): start the new executable, hand it
/// `sockets` and the store, and wait until it serves. Returns its pid; on
/// failure the store is taken back and the reason returned (and counted).
pub fn hand_over(sockets: &[Handed<'_>], store: &dyn Store) -> Result<u32, String> {
    let res = attempt(sockets, store);
    if let Err(why) = &res {
        let mut f = FAILURES.lock().unwrap_or_else(|p| p.into_inner());
        f.0 += 1;
        f.1 = Some(why.clone());
    }
    res
}

fn attempt(sockets: &[Handed<'_>], store: &dyn Store) -> Result<u32, String> {
    let exe = EXE
        .get()
        .cloned()
        .flatten()
        .ok_or("the path serve was started from is unknown")?;
    // A directory only this user can enter keeps others off the socket.
    let dir = std::env::temp_dir().join(format!(
        "apisix-stream-upgrade-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let cleanup = Unlink(dir.clone());
    let path = dir.join("handover.sock");
    let listener = UnixListener::bind(&path)
        .map_err(|e| format!("cannot create the hand-over socket {}: {e}", path.display()))?;
    let mut child = Command::new(&exe)
        .args(std::env::args_os().skip(1))
        .env(ENV, &path)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    let pid = child.id();
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut handed = false;
    let res = talk(&listener, &mut child, sockets, store, deadline, &mut handed);
    drop(cleanup);
    if res.is_err() {
        let _ = child.kill();
        let _ = child.wait();
        if handed {
            if let Err(e) = store.take_back() {
                tracing::error!(error = %e, "cannot take the store back after a failed binary upgrade");
            }
        }
    }
    res.map(|()| pid)
        .map_err(|why| format!("{} (pid {pid}): {why}", exe.display()))
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Removes the hand-over socket's directory when dropped.
struct Unlink(PathBuf);

impl Drop for Unlink {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn exited(child: &mut Child) -> Option<String> {
    match child.try_wait() {
        Ok(Some(status)) => Some(format!("the new process exited ({status})")),
        _ => None,
    }
}

fn talk(
    listener: &UnixListener,
    child: &mut Child,
    sockets: &[Handed<'_>],
    store: &dyn Store,
    deadline: Instant,
    handed: &mut bool,
) -> Result<(), String> {
    let io = |e: std::io::Error| format!("hand-over socket: {e}");
    listener.set_nonblocking(true).map_err(io)?;
    let mut stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(io(e)),
        }
        if let Some(why) = exited(child) {
            return Err(why);
        }
        if Instant::now() >= deadline {
            return Err(format!("not connected within {READY_TIMEOUT:?}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    stream.set_nonblocking(false).map_err(io)?;
    *handed = store.hand_over();
    for (tag, local, fd) in sockets {
        send(&stream, &record(&format!("{tag}\t{local}")), Some(*fd)).map_err(io)?;
    }
    send(&stream, &record("end"), None).map_err(io)?;
    // Wait for `ready`, checking now and then that the child still runs.
    let mut buf = [0u8; RECORD];
    let mut filled = 0;
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(io)?;
    while filled < RECORD {
        match stream.read(&mut buf[filled..]) {
            Ok(0) => {
                return Err(
                    exited(child).unwrap_or_else(|| "it closed the hand-over socket".to_string())
                )
            }
            Ok(n) => filled += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(io(e)),
        }
        if Instant::now() >= deadline {
            return Err(format!("not serving within {READY_TIMEOUT:?}"));
        }
    }
    let line = text(&buf);
    if line.starts_with("ready") {
        Ok(())
    } else {
        Err(format!("unexpected answer {line:?}"))
    }
}

fn send(stream: &UnixStream, rec: &[u8], fd: Option<BorrowedFd<'_>>) -> std::io::Result<()> {
    let fds: Vec<BorrowedFd<'_>> = fd.into_iter().collect();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        control.push(SendAncillaryMessage::ScmRights(&fds));
    }
    let n = sendmsg(
        stream.as_fd(),
        &[IoSlice::new(rec)],
        &mut control,
        SendFlags::empty(),
    )?;
    if n < rec.len() {
        (&*stream).write_all(&rec[n..])?;
    }
    Ok(())
}
