//! File-system steps for writes that must survive a crash: owner-only files and
//! directories, `fsync` of a directory, and replacing a file atomically.
//!
//! [`write_atomic`] is the one way a file is replaced (the admin key write-back into
//! `config.yaml`, the local store's compaction): at every instant the path names either the
//! complete old contents or the complete new ones, never a mix.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Open options that create files readable and writable by their owner only (0600).
pub fn private_file() -> OpenOptions {
    let mut o = OpenOptions::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o
}

/// Create `dir` and any missing parents, each new one owner-only (0700).
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir)
}

/// `fsync` the directory itself, so a file created or renamed in it stays after a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The directory holding `path` (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// The hidden file name prefix of `path`'s temporary copies: `.<name>.`.
fn temp_prefix(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!(".{name}.")
}

/// Where this process writes the next contents of `path`: `.<name>.<pid>.tmp` beside it,
/// so two processes replacing the same file never share a temporary file.
fn temp_path(path: &Path) -> PathBuf {
    parent_dir(path).join(format!("{}{}.tmp", temp_prefix(path), std::process::id()))
}

/// Replace `path` with `bytes`; a crash leaves either the old or the new contents.
///
/// The bytes go to a temporary file in the same directory, created owner-only and given the
/// old file's permissions if there was one; it is `fsync`ed, renamed over `path`, and the
/// directory is `fsync`ed. On an error before the rename the temporary file is removed and
/// `path` is untouched; an error from the directory `fsync` comes after the rename, when
/// `path` already holds the new bytes but may lose them in a crash.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = temp_path(path);
    let old_permissions = fs::metadata(path).map(|m| m.permissions()).ok();
    let written = (|| {
        let mut f = private_file()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        if let Some(p) = old_permissions {
            f.set_permissions(p)?;
        }
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(parent_dir(path))
}

/// Remove the temporary files that [`write_atomic`] calls on `path` left behind when a
/// crash stopped them before their rename.
///
/// Only for a caller that alone writes `path` (it holds a lock on it): another process's
/// replacement in progress would lose its temporary file.
pub fn remove_stale_temps(path: &Path) -> io::Result<()> {
    let prefix = temp_prefix(path);
    for entry in fs::read_dir(parent_dir(path))? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|rest| rest.strip_suffix(".tmp"))
        else {
            continue;
        };
        if !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) {
            fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut n: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        n.sort();
        n
    }

    #[cfg(unix)]
    fn mode(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn write_atomic_creates_and_replaces_leaving_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.yaml");
        write_atomic(&path, b"one").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"one");
        #[cfg(unix)]
        assert_eq!(mode(&path), 0o600, "a new file is owner-only");
        write_atomic(&path, b"two, longer").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two, longer");
        assert_eq!(names(dir.path()), ["a.yaml"]);
    }

    #[cfg(unix)]
    #[test]
    fn write_atomic_keeps_the_mode_of_the_file_it_replaces() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        fs::write(&path, "old").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        write_atomic(&path, b"new").unwrap();
        assert_eq!(mode(&path), 0o640);
        assert_eq!(fs::read_to_string(&path).unwrap(), "new");
    }

    #[test]
    fn failed_write_atomic_leaves_the_target_and_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        // A non-empty directory cannot be renamed over.
        let path = dir.path().join("busy");
        fs::create_dir(&path).unwrap();
        fs::write(path.join("inside"), "x").unwrap();
        assert!(write_atomic(&path, b"new").is_err());
        assert!(path.is_dir());
        assert_eq!(names(dir.path()), ["busy"]);
        // A missing directory is an error, not a panic.
        assert!(write_atomic(&dir.path().join("no/such/file"), b"x").is_err());
    }

    #[test]
    fn stale_temporary_files_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.log");
        for n in [
            "store.log",
            ".store.log.123.tmp",
            ".store.log.9.tmp",
            ".store.log.x.tmp",
            ".store.log..tmp",
            ".other.log.123.tmp",
            "store.log.tmp",
        ] {
            fs::write(dir.path().join(n), "x").unwrap();
        }
        remove_stale_temps(&path).unwrap();
        assert_eq!(
            names(dir.path()),
            [
                ".other.log.123.tmp",
                ".store.log..tmp",
                ".store.log.x.tmp",
                "store.log",
                "store.log.tmp"
            ]
        );
    }

    #[cfg(unix)]
    #[test]
    fn private_file_and_dir_are_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("a/b");
        create_private_dir(&sub).unwrap();
        assert_eq!(mode(&sub), 0o700);
        assert_eq!(mode(&dir.path().join("a")), 0o700);
        let f = sub.join("f");
        private_file().create(true).write(true).open(&f).unwrap();
        assert_eq!(mode(&f), 0o600);
        sync_dir(&sub).unwrap();
    }
}
