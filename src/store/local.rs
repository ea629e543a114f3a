//! The embedded, crash-safe store (`config_provider: local`, the default).
//!
//! Layout in `data_dir`:
//! - `store.log`: an 8-byte magic followed by records
//!   `[len: u32 LE][crc32: u32 LE][payload: len bytes of JSON]`. Every write
//!   appends one record and `fsync`s it before the Admin API answers, so an
//!   acknowledged write survives `kill -9` and power loss. Writes that arrive
//!   while the log is busy are committed together, with one append and one
//!   `fsync` (group commit), each answered only once it is durable.
//! - `LOCK`: the process id of the `serve` holding the directory. The lock
//!   itself is an exclusive `flock` on the directory, held for the life of
//!   the store, so deleting or recreating `LOCK` never lets a second
//!   process in (`LOCK` is also locked, for older versions).
//!
//! Why this shape: appends make each write O(size of the object), and the
//! checksum tells a torn last record (a crash while writing a write that was
//! never acknowledged: it is dropped) from damage in the middle of the file
//! (start-up stops with an error instead of silently starting empty). When the
//! log grows well past the live data it is compacted by writing a new file,
//! `fsync`, `rename` over the old one and `fsync` of the directory, so at any
//! instant one complete log is on disk.
//!
//! The objects themselves are served from the shared [`Index`]; this module
//! keeps only the log, its lock and its compaction.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::dir_lock::{in_use, lock_dir, LOCK_NAME};
use super::index::{Index, Key, Objects};
use super::{format_generated_id, Dump, Entry, Expect, PutOutcome, Store, StoreError};
use crate::fsutil::{self, create_private_dir, private_file, sync_dir};
use crate::model::Kind;
use crate::store::IndexView;

const MAGIC: &[u8; 8] = b"APXSTRM1";
const LOG_NAME: &str = "store.log";
/// Largest record accepted when reading (bodies are limited far below this).
const MAX_RECORD: u32 = 64 << 20;
/// Compact once the log is past this size and mostly dead records.
const COMPACT_MIN_BYTES: u64 = 1 << 20;

/// One log record.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    rev: u64,
    #[serde(flatten)]
    op: Op,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Op {
    Put {
        kind: String,
        id: String,
        create_rev: u64,
        value: Value,
    },
    Delete {
        kind: String,
        id: String,
    },
    /// Advances the revision only (POST id minting; compaction's marker).
    Bump,
}

/// The log file and what is known of it; writers hold its lock from the
/// precondition check until the index is updated, so writes are serial.
struct Log {
    /// The log, open for appending; `None` while the data directory is
    /// read-only (reads are served from memory, writes fail until it is
    /// writable again).
    file: Option<File>,
    /// Held while writable: the directory's exclusive lock.
    lock: Option<File>,
    log_len: u64,
    /// Encoded size of each live object's record, to know when to compact.
    sizes: BTreeMap<Key, u64>,
    /// The sum of `sizes`.
    live: u64,
    /// A failed write could not be cut back (e.g. the file system turned
    /// read-only): the file may end in a partial record, and nothing may be
    /// appended behind it until it is cut back to `log_len`.
    torn: bool,
    /// The directory was handed to a new process (binary upgrade): writes
    /// are refused until it is taken back.
    handed_over: bool,
}

impl Log {
    fn live_bytes(&self) -> u64 {
        self.live
    }

    fn set_size(&mut self, key: Key, size: Option<u64>) {
        let old = match size {
            Some(n) => {
                self.live = self.live.saturating_add(n);
                self.sizes.insert(key, n)
            }
            None => self.sizes.remove(&key),
        };
        self.live = self.live.saturating_sub(old.unwrap_or(0));
    }
}

/// One write waiting to be committed.
enum Request {
    Put {
        kind: Kind,
        id: String,
        value: Value,
        expect: Expect,
    },
    Delete {
        kind: Kind,
        id: String,
    },
    Bump,
}

/// What a committed write did.
enum Done {
    Put(PutOutcome),
    Delete(Option<Entry>),
    Bump(u64),
}

/// A write and where its outcome goes.
struct Job {
    request: Request,
    done: mpsc::Sender<Result<Done, StoreError>>,
}

/// A write of a batch, appended and waiting for the batch's `fsync`.
struct Staged {
    done: mpsc::Sender<Result<Done, StoreError>>,
    key: Option<Key>,
    size: Option<u64>,
    change: Option<Result<Entry, Key>>,
    outcome: Done,
}

struct Shared {
    dir: PathBuf,
    /// The directory's exclusive `flock`, held while the store lives
    /// (released only to hand the directory to a new process).
    dir_lock: Mutex<Option<File>>,
    log: Mutex<Log>,
    /// Writes waiting for the log; whoever holds the log next commits them
    /// all with one `fsync` (group commit).
    queue: Mutex<Vec<Job>>,
    index: Index,
}

/// The embedded store; cheap to clone.
#[derive(Clone)]
pub struct LocalStore {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for LocalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalStore")
            .field("dir", &self.shared.dir)
            .finish_non_exhaustive()
    }
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Unavailable(format!("{what} {}: {e}", path.display()))
}

fn corrupt(path: &Path, offset: u64, why: &str) -> StoreError {
    StoreError::Corrupt(format!(
        "store {} is damaged at byte {offset}: {why}; refusing to start with missing data \
         (restore the data directory from a backup or move it away to start empty)",
        path.display()
    ))
}

fn encode(rec: &Record) -> Result<Vec<u8>, StoreError> {
    let payload = serde_json::to_vec(rec)
        .map_err(|e| StoreError::Unavailable(format!("cannot encode record: {e}")))?;
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|l| *l <= MAX_RECORD)
        .ok_or_else(|| StoreError::Unavailable("object too large to store".into()))?;
    let mut buf = Vec::with_capacity(payload.len() + 8);
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    buf.extend_from_slice(&payload);
    Ok(buf)
}

/// Result of scanning a log file.
struct Loaded {
    entries: Objects,
    revision: u64,
    /// Length of the valid prefix (a torn tail after it is cut off).
    valid_len: u64,
    sizes: BTreeMap<Key, u64>,
}

fn parse_log(path: &Path, data: &[u8]) -> Result<Loaded, StoreError> {
    let mut loaded = Loaded {
        entries: Objects::new(),
        revision: 0,
        valid_len: MAGIC.len() as u64,
        sizes: BTreeMap::new(),
    };
    if data.len() < MAGIC.len() {
        if MAGIC.starts_with(data) {
            // A crash while the file was being created: nothing was acknowledged.
            loaded.valid_len = 0;
            return Ok(loaded);
        }
        return Err(corrupt(path, 0, "not an apisix-stream store file"));
    }
    if &data[..MAGIC.len()] != MAGIC {
        return Err(corrupt(path, 0, "not an apisix-stream store file"));
    }
    let mut pos = MAGIC.len();
    while pos < data.len() {
        let rest = &data[pos..];
        let torn_tail = |needed: usize| needed >= rest.len();
        if rest.len() < 8 {
            break; // torn header of the last, unacknowledged write
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        let end = 8 + len;
        if end > rest.len() {
            break; // torn body
        }
        let payload = &rest[8..end];
        let bad = |why: &str| {
            if torn_tail(end) {
                None
            } else {
                Some(corrupt(path, pos as u64, why))
            }
        };
        if len as u32 > MAX_RECORD || crc32fast::hash(payload) != crc {
            match bad("checksum mismatch") {
                None => break,
                Some(e) => return Err(e),
            }
        }
        let rec: Record = match serde_json::from_slice(payload) {
            Ok(r) => r,
            Err(e) => match bad(&format!("unreadable record: {e}")) {
                None => break,
                Some(err) => return Err(err),
            },
        };
        if rec.rev < loaded.revision {
            return Err(corrupt(path, pos as u64, "revision went backwards"));
        }
        loaded.revision = rec.rev;
        match rec.op {
            Op::Put {
                kind,
                id,
                create_rev,
                value,
            } => {
                let kind = Kind::from_segment(&kind)
                    .ok_or_else(|| corrupt(path, pos as u64, "unknown resource type"))?;
                loaded.sizes.insert((kind, id.clone()), len as u64 + 8);
                loaded.entries.insert(
                    (kind, id.clone()),
                    Entry {
                        kind,
                        id,
                        value: super::shared_value(value),
                        create_rev,
                        mod_rev: rec.rev,
                    },
                );
            }
            Op::Delete { kind, id } => {
                let kind = Kind::from_segment(&kind)
                    .ok_or_else(|| corrupt(path, pos as u64, "unknown resource type"))?;
                loaded.sizes.remove(&(kind, id.clone()));
                loaded.entries.remove(&(kind, id));
            }
            Op::Bump => {}
        }
        pos += end;
        loaded.valid_len = pos as u64;
    }
    Ok(loaded)
}

/// Why the store cannot be opened for writing.
enum Writable {
    /// Another process holds the directory lock.
    InUse,
    /// The file system refused (read-only, full, permissions).
    Io(std::io::Error),
}

fn is_read_only(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(rustix::io::Errno::ROFS.raw_os_error())
        || e.kind() == std::io::ErrorKind::PermissionDenied
}

/// Take the directory lock and open the log for appending, cut back to
/// `valid_len` (a torn tail dropped; a new log gets its magic header).
fn open_writable(dir: &Path, valid_len: u64) -> Result<(File, File), Writable> {
    let lock_path = dir.join(LOCK_NAME);
    let lock = private_file()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(Writable::Io)?;
    if lock.try_lock().is_err() {
        return Err(Writable::InUse);
    }
    // Name the holder for a second process refused by the directory lock.
    let mut pid = &lock;
    pid.set_len(0)
        .and_then(|()| writeln!(pid, "{}", std::process::id()))
        .map_err(Writable::Io)?;
    let path = dir.join(LOG_NAME);
    // A compaction that crashed before its rename left only a temp file.
    let _ = fsutil::remove_stale_temps(&path);
    let mut file = private_file()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(Writable::Io)?;
    let len = file.metadata().map_err(Writable::Io)?.len();
    if len == 0 || valid_len == 0 {
        file.set_len(0).map_err(Writable::Io)?;
        file.write_all(MAGIC).map_err(Writable::Io)?;
    } else if len != valid_len {
        file.set_len(valid_len).map_err(Writable::Io)?;
    }
    if len != valid_len || len == 0 {
        file.sync_all().map_err(Writable::Io)?;
        sync_dir(dir).map_err(Writable::Io)?;
    }
    Ok((lock, file))
}

impl LocalStore {
    /// Open (or create) the store in `dir`. A damaged log is an error, never
    /// an empty store; a torn last record (a write that was not acknowledged)
    /// is cut off.
    pub fn open(dir: &Path) -> Result<LocalStore, StoreError> {
        create_private_dir(dir).map_err(|e| io_err("cannot create data directory", dir, e))?;
        let dir_lock = lock_dir(dir)?;
        let path = dir.join(LOG_NAME);
        let mut data = Vec::new();
        match File::open(&path) {
            Ok(mut f) => {
                f.read_to_end(&mut data).map_err(|e| {
                    StoreError::Corrupt(format!("cannot read {}: {e}", path.display()))
                })?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(StoreError::Corrupt(format!(
                    "cannot read {}: {e}",
                    path.display()
                )))
            }
        }
        let loaded = parse_log(&path, &data)?;
        if loaded.valid_len < data.len() as u64 {
            tracing::warn!(
                path = %path.display(),
                dropped_bytes = data.len() as u64 - loaded.valid_len,
                "dropping a torn last record left by an interrupted write"
            );
        }
        let (lock, file) = match open_writable(dir, loaded.valid_len) {
            Ok((lock, file)) => (Some(lock), Some(file)),
            Err(Writable::InUse) => return Err(in_use(dir)),
            Err(Writable::Io(e)) if is_read_only(&e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "data directory is read-only: serving the stored objects, writes fail until it is writable");
                (None, None)
            }
            Err(Writable::Io(e)) => return Err(io_err("cannot open", &path, e)),
        };
        let log_len = loaded.valid_len.max(MAGIC.len() as u64);
        tracing::info!(
            path = %path.display(),
            objects = loaded.entries.len(),
            revision = loaded.revision,
            "opened local store"
        );
        Ok(LocalStore {
            shared: Arc::new(Shared {
                dir: dir.to_path_buf(),
                dir_lock: Mutex::new(Some(dir_lock)),
                log: Mutex::new(Log {
                    file,
                    lock,
                    log_len,
                    live: loaded.sizes.values().sum(),
                    sizes: loaded.sizes,
                    torn: false,
                    handed_over: false,
                }),
                queue: Mutex::default(),
                index: Index::new(loaded.entries, loaded.revision, ()),
            }),
        })
    }

    /// Binary upgrade: wait for the write in progress, refuse later ones
    /// and release the directory's locks so a new process can open it.
    pub fn hand_over(&self) {
        let mut log = self.shared.log();
        log.handed_over = true;
        log.file = None;
        log.lock = None;
        *self
            .shared
            .dir_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Take the directory back after a binary upgrade that failed. When the
    /// new process changed the log meanwhile, writes stay refused (a restart
    /// reads its changes) rather than cutting them off.
    pub fn take_back(&self) -> Result<(), StoreError> {
        let dir = &self.shared.dir;
        let mut log = self.shared.log();
        if !log.handed_over {
            return Ok(());
        }
        let held = lock_dir(dir)?;
        *self
            .shared
            .dir_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(held);
        let on_disk = std::fs::metadata(dir.join(LOG_NAME)).map_or(0, |m| m.len());
        if on_disk != log.log_len {
            return Err(StoreError::Unavailable(format!(
                "{} changed while handed over; writes stay refused until a restart",
                dir.display()
            )));
        }
        match open_writable(dir, log.log_len) {
            Ok((lock, file)) => {
                log.lock = Some(lock);
                log.file = Some(file);
                log.handed_over = false;
                Ok(())
            }
            Err(Writable::InUse) => Err(in_use(dir)),
            Err(Writable::Io(e)) => Err(io_err("cannot reopen", &dir.join(LOG_NAME), e)),
        }
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Shared) -> Result<T, StoreError> + Send + 'static,
    {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || f(&shared))
            .await
            .map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))?
    }
}

impl Shared {
    fn log(&self) -> MutexGuard<'_, Log> {
        // A panic while holding the lock cannot leave the log half-updated:
        // its length moves only once a record is durable.
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Append encoded records durably; on failure the file is cut back so
    /// the log never keeps a partial record in the middle.
    fn append(&self, log: &mut Log, buf: &[u8]) -> Result<(), StoreError> {
        let path = self.dir.join(LOG_NAME);
        if log.handed_over {
            return Err(StoreError::Unavailable(
                "the data directory was handed to a new process (binary upgrade)".into(),
            ));
        }
        if log.file.is_none() {
            match open_writable(&self.dir, log.log_len) {
                Ok((lock, file)) => {
                    tracing::info!(dir = %self.dir.display(), "data directory writable again");
                    log.lock = Some(lock);
                    log.file = Some(file);
                    log.torn = false;
                }
                Err(Writable::InUse) => return Err(in_use(&self.dir)),
                Err(Writable::Io(e)) => return Err(io_err("cannot write", &path, e)),
            }
        }
        let log_len = log.log_len;
        let Some(file) = log.file.as_mut() else {
            return Err(StoreError::Unavailable("store is not writable".into()));
        };
        if log.torn {
            file.set_len(log_len)
                .and_then(|()| file.sync_data())
                .map_err(|e| io_err("cannot repair", &path, e))?;
            log.torn = false;
            tracing::info!(path = %path.display(), "store writable again");
        }
        let res = file.write_all(buf).and_then(|()| file.sync_data());
        if let Err(e) = res {
            // Cut the partial record off so the log stays valid; if even that
            // fails, remember it and refuse appends until it succeeds.
            let cut = file.set_len(log_len).and_then(|()| file.sync_data());
            log.torn = cut.is_err();
            tracing::warn!(path = %path.display(), error = %e, "store write failed; nothing was changed");
            return Err(io_err("cannot write", &path, e));
        }
        log.log_len += buf.len() as u64;
        Ok(())
    }

    /// Queue `request`, then commit every queued write (this one, and those
    /// that came while the log was busy) with one append and one `fsync`.
    /// Each write is answered only once it is durable.
    fn submit(&self, request: Request) -> Result<Done, StoreError> {
        let (done, outcome) = mpsc::channel();
        self.queue().push(Job { request, done });
        {
            let mut log = self.log();
            let jobs = std::mem::take(&mut *self.queue());
            if !jobs.is_empty() {
                self.commit(&mut log, jobs);
            }
        }
        // Whoever held the log before us answered our job before letting go.
        outcome
            .recv()
            .unwrap_or_else(|_| Err(StoreError::Unavailable("store write was lost".into())))
    }

    fn queue(&self) -> MutexGuard<'_, Vec<Job>> {
        // Jobs are pushed and taken whole: a panic cannot leave half of one.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Check, append and `fsync` a batch of writes in order, then apply
    /// them to the index and answer each.
    fn commit(&self, log: &mut Log, jobs: Vec<Job>) {
        let mut rev = self.index.read(|t| t.revision());
        let mut overlay: HashMap<Key, Option<Entry>> = HashMap::new();
        let mut buf = Vec::new();
        let mut staged: Vec<Staged> = Vec::new();
        let mut answered = Vec::new();
        for Job { request, done } in jobs {
            let current = |key: &Key, overlay: &HashMap<Key, Option<Entry>>| match overlay.get(key)
            {
                Some(e) => e.clone(),
                None => self.index.read(|t| t.get(key).cloned()),
            };
            match request {
                Request::Put {
                    kind,
                    id,
                    value,
                    expect,
                } => {
                    let key = (kind, id.clone());
                    let prev = current(&key, &overlay);
                    if let Expect::ModRev(m) = expect {
                        if prev.as_ref().map(|p| p.mod_rev) != Some(m) {
                            answered.push((done, Err(StoreError::Conflict)));
                            continue;
                        }
                    }
                    let next = rev + 1;
                    let create_rev = prev.as_ref().map_or(next, |p| p.create_rev);
                    let rec = Record {
                        rev: next,
                        op: Op::Put {
                            kind: kind.segment().to_string(),
                            id: id.clone(),
                            create_rev,
                            value,
                        },
                    };
                    let bytes = match encode(&rec) {
                        Ok(b) => b,
                        Err(e) => {
                            answered.push((done, Err(e)));
                            continue;
                        }
                    };
                    let Op::Put { value, .. } = rec.op else {
                        answered.push((
                            done,
                            Err(StoreError::Unavailable("internal error: bad record".into())),
                        ));
                        continue;
                    };
                    rev = next;
                    buf.extend_from_slice(&bytes);
                    let entry = Entry {
                        kind,
                        id,
                        value: super::shared_value(value),
                        create_rev,
                        mod_rev: rev,
                    };
                    overlay.insert(key.clone(), Some(entry.clone()));
                    staged.push(Staged {
                        done,
                        key: Some(key),
                        size: Some(bytes.len() as u64),
                        change: Some(Ok(entry.clone())),
                        outcome: Done::Put(PutOutcome {
                            created: prev.is_none(),
                            entry,
                        }),
                    });
                }
                Request::Delete { kind, id } => {
                    let key = (kind, id.clone());
                    let Some(prev) = current(&key, &overlay) else {
                        answered.push((done, Ok(Done::Delete(None))));
                        continue;
                    };
                    let rec = Record {
                        rev: rev + 1,
                        op: Op::Delete {
                            kind: kind.segment().to_string(),
                            id,
                        },
                    };
                    match encode(&rec) {
                        Ok(b) => buf.extend_from_slice(&b),
                        Err(e) => {
                            answered.push((done, Err(e)));
                            continue;
                        }
                    }
                    rev += 1;
                    overlay.insert(key.clone(), None);
                    staged.push(Staged {
                        done,
                        key: Some(key.clone()),
                        size: None,
                        change: Some(Err(key)),
                        outcome: Done::Delete(Some(prev)),
                    });
                }
                Request::Bump => {
                    let rec = Record {
                        rev: rev + 1,
                        op: Op::Bump,
                    };
                    match encode(&rec) {
                        Ok(b) => buf.extend_from_slice(&b),
                        Err(e) => {
                            answered.push((done, Err(e)));
                            continue;
                        }
                    }
                    rev += 1;
                    staged.push(Staged {
                        done,
                        key: None,
                        size: None,
                        change: None,
                        outcome: Done::Bump(rev),
                    });
                }
            }
        }
        let written = if buf.is_empty() {
            Ok(())
        } else {
            self.append(log, &buf)
        };
        match written {
            Ok(()) => {
                let changed = staged.iter().any(|s| s.change.is_some());
                self.index.update(|t| {
                    for s in &staged {
                        match &s.change {
                            Some(Ok(entry)) => {
                                t.insert(entry.clone());
                            }
                            Some(Err(key)) => {
                                t.remove(key);
                            }
                            None => {}
                        }
                    }
                    if changed {
                        t.commit(rev);
                    } else {
                        t.advance(rev);
                    }
                });
                for s in staged {
                    if let Some(key) = s.key {
                        log.set_size(key, s.size);
                    }
                    answered.push((s.done, Ok(s.outcome)));
                }
                self.maybe_compact(log);
            }
            Err(e) => {
                for s in staged {
                    answered.push((s.done, Err(StoreError::Unavailable(e.to_string()))));
                }
            }
        }
        for (done, outcome) in answered {
            // A caller that went away needs no answer.
            let _ = done.send(outcome);
        }
    }

    fn maybe_compact(&self, log: &mut Log) {
        if log.log_len < COMPACT_MIN_BYTES || log.log_len < log.live_bytes() * 4 {
            return;
        }
        match self.compact(log) {
            Ok(()) => tracing::debug!(bytes = log.log_len, "compacted local store"),
            Err(e) => tracing::warn!(error = %e, "store compaction failed; keeping the old log"),
        }
    }

    fn compact(&self, log: &mut Log) -> Result<(), StoreError> {
        let path = self.dir.join(LOG_NAME);
        // Records must stay in revision order for the reader's checks.
        let Dump {
            revision,
            entries: mut live_entries,
        } = self.index.dump();
        live_entries.sort_by_key(|e| e.mod_rev);
        let mut buf = MAGIC.to_vec();
        for e in &live_entries {
            buf.extend_from_slice(&encode(&Record {
                rev: e.mod_rev,
                op: Op::Put {
                    kind: e.kind.segment().to_string(),
                    id: e.id.clone(),
                    create_rev: e.create_rev,
                    value: (*e.value).clone(),
                },
            })?);
        }
        buf.extend_from_slice(&encode(&Record {
            rev: revision,
            op: Op::Bump,
        })?);
        let write = || -> std::io::Result<File> {
            fsutil::write_atomic(&path, &buf)?;
            OpenOptions::new().append(true).open(&path)
        };
        match write() {
            Ok(file) => {
                log.file = Some(file);
                log.log_len = buf.len() as u64;
                Ok(())
            }
            Err(e) => Err(io_err("cannot compact", &path, e)),
        }
    }
}

#[async_trait]
impl Store for LocalStore {
    fn index(&self) -> &dyn IndexView {
        &self.shared.index
    }

    async fn put(
        &self,
        kind: Kind,
        id: &str,
        value: Value,
        expect: Expect,
    ) -> Result<PutOutcome, StoreError> {
        let request = Request::Put {
            kind,
            id: id.to_string(),
            value,
            expect,
        };
        match self.blocking(move |shared| shared.submit(request)).await? {
            Done::Put(outcome) => Ok(outcome),
            _ => Err(StoreError::Unavailable("internal error: bad answer".into())),
        }
    }

    async fn delete(&self, kind: Kind, id: &str) -> Result<Option<Entry>, StoreError> {
        let request = Request::Delete {
            kind,
            id: id.to_string(),
        };
        match self.blocking(move |shared| shared.submit(request)).await? {
            Done::Delete(old) => Ok(old),
            _ => Err(StoreError::Unavailable("internal error: bad answer".into())),
        }
    }

    async fn next_id(&self) -> Result<String, StoreError> {
        match self.blocking(|shared| shared.submit(Request::Bump)).await? {
            Done::Bump(rev) => Ok(format_generated_id(rev)),
            _ => Err(StoreError::Unavailable("internal error: bad answer".into())),
        }
    }

    fn describe(&self) -> String {
        format!("local:{}", self.shared.dir.display())
    }

    fn hand_over(&self) -> bool {
        LocalStore::hand_over(self);
        true
    }

    fn take_back(&self) -> Result<(), StoreError> {
        LocalStore::take_back(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::fs;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    #[test]
    fn put_get_delete_and_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        rt().block_on(async {
            let s = LocalStore::open(dir.path()).expect("open");
            let out = s
                .put(Kind::StreamRoute, "1", json!({"id": "1"}), Expect::Any)
                .await
                .expect("put");
            assert!(out.created);
            assert_eq!(out.entry.create_rev, 1);
            let out = s
                .put(
                    Kind::StreamRoute,
                    "1",
                    json!({"id": "1", "x": 1}),
                    Expect::Any,
                )
                .await
                .expect("put");
            assert!(!out.created);
            assert_eq!((out.entry.create_rev, out.entry.mod_rev), (1, 2));
            s.put(Kind::Upstream, "u", json!({"nodes": {}}), Expect::Any)
                .await
                .expect("put");
            s.put(Kind::StreamRoute, "10", json!({}), Expect::Any)
                .await
                .expect("put");
            s.put(Kind::StreamRoute, "2", json!({}), Expect::Any)
                .await
                .expect("put");
            assert!(s
                .delete(Kind::StreamRoute, "2")
                .await
                .expect("del")
                .is_some());
            assert!(s
                .delete(Kind::StreamRoute, "2")
                .await
                .expect("del")
                .is_none());
            assert_eq!(s.next_id().await.expect("id"), "00000000000000000007");
        });
        let s = LocalStore::open(dir.path()).expect("reopen");
        rt().block_on(async {
            let ids: Vec<_> = s
                .list(Kind::StreamRoute)
                .await
                .expect("list")
                .into_iter()
                .map(|e| e.id)
                .collect();
            assert_eq!(ids, ["1", "10"]);
            let e = s
                .get(Kind::StreamRoute, "1")
                .await
                .expect("get")
                .expect("present");
            assert_eq!(*e.value, json!({"id": "1", "x": 1}));
            assert_eq!((e.create_rev, e.mod_rev), (1, 2));
            assert_eq!(s.revision(), 7);
            assert_eq!(s.list(Kind::Upstream).await.expect("list").len(), 1);
        });
    }

    #[test]
    fn second_open_of_same_dir_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _a = LocalStore::open(dir.path()).expect("open");
        let err = LocalStore::open(dir.path()).expect_err("locked");
        let pid = format!("pid {} holds its lock", std::process::id());
        assert!(err.to_string().contains(&pid), "{err}");
        // Deleting (or recreating) LOCK does not release the directory.
        std::fs::remove_file(dir.path().join(LOCK_NAME)).expect("rm LOCK");
        let err = LocalStore::open(dir.path()).expect_err("still locked");
        assert!(err.to_string().contains("in use"), "{err}");
        std::fs::write(dir.path().join(LOCK_NAME), "").expect("new LOCK");
        let err = LocalStore::open(dir.path()).expect_err("still locked");
        assert!(err.to_string().contains("in use"), "{err}");
        drop(_a);
        LocalStore::open(dir.path()).expect("free once the holder is gone");
    }

    #[test]
    fn torn_tail_is_dropped_but_middle_damage_stops_startup() {
        let dir = tempfile::tempdir().expect("tempdir");
        rt().block_on(async {
            let s = LocalStore::open(dir.path()).expect("open");
            for i in 0..3 {
                s.put(Kind::Upstream, &i.to_string(), json!({"n": i}), Expect::Any)
                    .await
                    .expect("put");
            }
        });
        let path = dir.path().join(LOG_NAME);
        let good = fs::read(&path).expect("read");
        // A torn final record: half of it written.
        let mut torn = good.clone();
        torn.extend_from_slice(&[200, 0, 0, 0, 1, 2, 3]);
        fs::write(&path, &torn).expect("write");
        {
            let s = LocalStore::open(dir.path()).expect("torn tail is repaired");
            rt().block_on(async {
                assert_eq!(s.list(Kind::Upstream).await.expect("list").len(), 3);
            });
        }
        assert_eq!(fs::read(&path).expect("read"), good);
        // A flipped byte inside the first record: not a tail, must refuse.
        let mut bad = good.clone();
        bad[MAGIC.len() + 12] ^= 0xff;
        fs::write(&path, &bad).expect("write");
        let err = LocalStore::open(dir.path()).expect_err("corrupt");
        assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
        // Not a store file at all.
        fs::write(&path, b"hello world, not a store").expect("write");
        assert!(matches!(
            LocalStore::open(dir.path()),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[test]
    fn expect_mod_rev_detects_concurrent_change() {
        let dir = tempfile::tempdir().expect("tempdir");
        rt().block_on(async {
            let s = LocalStore::open(dir.path()).expect("open");
            let e = s
                .put(Kind::Ssl, "1", json!({}), Expect::Any)
                .await
                .expect("put")
                .entry;
            s.put(Kind::Ssl, "1", json!({"a": 1}), Expect::ModRev(e.mod_rev))
                .await
                .expect("first patch wins");
            let err = s
                .put(Kind::Ssl, "1", json!({"a": 2}), Expect::ModRev(e.mod_rev))
                .await
                .expect_err("stale");
            assert!(matches!(err, StoreError::Conflict));
        });
    }

    #[test]
    fn compaction_keeps_data_and_revisions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let big = "x".repeat(4096);
        rt().block_on(async {
            let s = LocalStore::open(dir.path()).expect("open");
            for i in 0..600u32 {
                s.put(
                    Kind::Upstream,
                    "same",
                    json!({"i": i, "pad": big}),
                    Expect::Any,
                )
                .await
                .expect("put");
            }
            s.put(Kind::StreamRoute, "r", json!({"k": 1}), Expect::Any)
                .await
                .expect("put");
        });
        let len = fs::metadata(dir.path().join(LOG_NAME)).expect("meta").len();
        assert!(len < 1 << 20, "log was not compacted: {len} bytes");
        let s = LocalStore::open(dir.path()).expect("reopen");
        rt().block_on(async {
            let e = s
                .get(Kind::Upstream, "same")
                .await
                .expect("get")
                .expect("present");
            assert_eq!(e.value["i"], 599);
            assert_eq!((e.create_rev, e.mod_rev), (1, 600));
            assert_eq!(s.revision(), 601);
            let r = s
                .get(Kind::StreamRoute, "r")
                .await
                .expect("get")
                .expect("present");
            assert_eq!(r.mod_rev, 601);
        });
    }

    #[test]
    fn change_feed_reports_new_revisions() {
        let dir = tempfile::tempdir().expect("tempdir");
        rt().block_on(async {
            let s = LocalStore::open(dir.path()).expect("open");
            let mut rx = s.subscribe();
            assert_eq!(*rx.borrow_and_update(), 0);
            s.put(Kind::StreamRoute, "1", json!({}), Expect::Any)
                .await
                .expect("put");
            rx.changed().await.expect("changed");
            assert_eq!(*rx.borrow(), 1);
        });
    }

    #[test]
    fn one_batch_commits_writes_in_order_with_one_append() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = LocalStore::open(dir.path()).expect("open");
        let mut outcomes = Vec::new();
        let jobs: Vec<Job> = [
            Request::Put {
                kind: Kind::Upstream,
                id: "a".into(),
                value: json!({"v": 1}),
                expect: Expect::Any,
            },
            Request::Put {
                kind: Kind::Upstream,
                id: "a".into(),
                value: json!({"v": 2}),
                expect: Expect::ModRev(1),
            },
            Request::Put {
                kind: Kind::Upstream,
                id: "a".into(),
                value: json!({"v": 3}),
                expect: Expect::ModRev(1),
            },
            Request::Bump,
            Request::Delete {
                kind: Kind::Upstream,
                id: "b".into(),
            },
            Request::Put {
                kind: Kind::Upstream,
                id: "b".into(),
                value: json!({"v": 4}),
                expect: Expect::Any,
            },
            Request::Delete {
                kind: Kind::Upstream,
                id: "b".into(),
            },
        ]
        .into_iter()
        .map(|request| {
            let (done, rx) = mpsc::channel();
            outcomes.push(rx);
            Job { request, done }
        })
        .collect();
        let before = s.shared.log().log_len;
        let mut log = s.shared.log();
        s.shared.commit(&mut log, jobs);
        assert!(log.log_len > before);
        drop(log);
        let got: Vec<String> = outcomes
            .iter()
            .map(|rx| match rx.recv().expect("answered") {
                Ok(Done::Put(p)) => format!("put {} {}", p.entry.mod_rev, p.created),
                Ok(Done::Delete(d)) => format!("delete {:?}", d.map(|e| e.mod_rev)),
                Ok(Done::Bump(r)) => format!("bump {r}"),
                Err(e) => format!("error {e}"),
            })
            .collect();
        assert_eq!(
            got,
            [
                "put 1 true",
                "put 2 false",
                "error value changed before overwritten",
                "bump 3",
                "delete None",
                "put 4 true",
                "delete Some(4)",
            ]
        );
        assert_eq!(s.revision(), 5);
        drop(s);
        let s = LocalStore::open(dir.path()).expect("reopen");
        assert_eq!(s.revision(), 5);
        let a = s.index().get(Kind::Upstream, "a").expect("a");
        assert_eq!((*a.value).clone(), json!({"v": 2}));
        assert!(s.index().get(Kind::Upstream, "b").is_none());
    }

    #[test]
    fn concurrent_writes_are_all_durable_with_distinct_revisions() {
        let dir = tempfile::tempdir().expect("tempdir");
        rt().block_on(async {
            let s = LocalStore::open(dir.path()).expect("open");
            let tasks: Vec<_> = (0..48)
                .map(|i| {
                    let s = s.clone();
                    tokio::spawn(async move {
                        s.put(
                            Kind::StreamRoute,
                            &format!("r{i}"),
                            json!({"i": i}),
                            Expect::Any,
                        )
                        .await
                        .expect("put")
                        .entry
                        .mod_rev
                    })
                })
                .collect();
            let mut revs = Vec::new();
            for t in tasks {
                revs.push(t.await.expect("task"));
            }
            revs.sort_unstable();
            assert_eq!(revs, (1..=48).collect::<Vec<u64>>());
        });
        let s = LocalStore::open(dir.path()).expect("reopen");
        assert_eq!(s.index().list(Kind::StreamRoute).len(), 48);
        assert_eq!(s.revision(), 48);
    }
}
