//! The lock that keeps one process per local data directory: an exclusive
//! `flock` on the directory itself, held for the life of the store. Unlike a
//! lock on a file inside it, no deletion or re-creation of that file can
//! release it; it goes only when the holder closes it or exits. The `LOCK`
//! file beside it records the holder's process id, for the error a second
//! process gets.

use std::fs::File;
use std::path::Path;

use super::StoreError;

/// The file naming the holder (and locked too, for older versions).
pub(super) const LOCK_NAME: &str = "LOCK";

/// The error for a directory whose lock another process holds, naming it
/// by the process id `LOCK` records.
pub(super) fn in_use(dir: &Path) -> StoreError {
    let holder = std::fs::read_to_string(dir.join(LOCK_NAME))
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok())
        .map_or_else(|| "another process".to_string(), |pid| format!("pid {pid}"));
    StoreError::Unavailable(format!(
        "data directory {} is in use by another apisix-stream process ({holder} holds its lock)",
        dir.display()
    ))
}

/// Take the exclusive `flock` on `dir`, or say who holds it. A read-only
/// directory can be locked too.
pub(super) fn lock_dir(dir: &Path) -> Result<File, StoreError> {
    let fail = |what: &str, e: std::io::Error| {
        StoreError::Unavailable(format!("{what} {}: {e}", dir.display()))
    };
    let d = File::open(dir).map_err(|e| fail("cannot open data directory", e))?;
    match rustix::fs::flock(&d, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(d),
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => Err(in_use(dir)),
        Err(e) => Err(fail("cannot lock data directory", e.into())),
    }
}
