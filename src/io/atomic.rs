//! Writing a file so that a crash at any moment leaves either the old file or the new one.

use crate::error::{Error, Result};
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Replaces `path` with `bytes` so that a crash at any moment leaves either the old file or the
/// new one (see [`write_atomic_with`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |w| w.write_all(bytes))
}

/// Replaces `path` with what `fill` writes, so that a crash at any moment leaves either the old
/// file or the new one: write a temporary file in the same folder (same file system, so the
/// rename is atomic), flush and `sync_all` it, rename it over `path`, then sync the folder so
/// the rename itself is durable. On failure the temporary file is removed; one left by a killed
/// process is removed by [`remove_stale_temps`].
pub fn write_atomic_with(path: &Path, fill: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> Result<()> {
    // Distinct temp names per call, so two threads saving the same path never share one.
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let Some(name) = path.file_name() else {
        return Err(Error::io(path, io::Error::new(io::ErrorKind::InvalidInput, "not a file path")));
    };
    let dir = folder_of(path);
    let tmp = dir.join(format!(
        "{}{}-{}",
        temp_prefix(&name.to_string_lossy()),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| -> io::Result<()> {
        let file = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
        let mut w = io::BufWriter::with_capacity(64 << 10, file);
        fill(&mut w)?;
        let file = w.into_inner().map_err(io::IntoInnerError::into_error)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        let msg = format!("writing through temporary file {}: {e}", tmp.display());
        return Err(Error::io(path, io::Error::new(e.kind(), msg)));
    }
    sync_dir(dir).map_err(|e| {
        let msg = format!("syncing folder {} after the rename: {e}", dir.display());
        Error::io(path, io::Error::new(e.kind(), msg))
    })
}

/// Removes the temporary files that saves of `names` in `dir` left when their process was
/// killed mid-write. Only for a folder no other process is writing (its lock is held).
pub fn remove_stale_temps(dir: &Path, names: &[&str]) -> Result<()> {
    let entries = fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let file = entry.file_name();
        let file = file.to_string_lossy();
        if names.iter().any(|n| file.starts_with(&temp_prefix(n))) {
            fs::remove_file(entry.path()).map_err(|e| Error::io(entry.path(), e))?;
        }
    }
    Ok(())
}

/// The start of every temporary file name a save of `name` uses.
fn temp_prefix(name: &str) -> String {
    format!(".{name}.tmp-")
}

/// The folder holding `path` (`.` for a bare file name).
fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    // Folders cannot be opened for syncing here; the rename is as durable as the OS makes it.
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::scratch;

    #[test]
    fn write_atomic_replaces_and_cleans_up() {
        let dir = scratch("atomic-atomic");
        let path = dir.join("f.bin");
        write_atomic(&path, b"old").unwrap();
        write_atomic(&path, b"new contents").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new contents");
        // A missing folder: an I/O error naming the path.
        let bad = dir.join("no-such-dir").join("f.bin");
        let err = write_atomic(&bad, b"x").unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("no-such-dir"), "{err}");
        // The target is a folder: the rename fails and the temp file is removed.
        let sub = dir.join("sub");
        fs::create_dir(&sub).unwrap();
        let err = write_atomic(&sub, b"x").unwrap_err();
        assert!(err.to_string().contains("sub"), "{err}");
        let mut names: Vec<_> =
            fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        assert_eq!(names, ["f.bin", "sub"]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failing_writer_leaves_the_old_file() {
        let dir = scratch("atomic-fill");
        let path = dir.join("f.bin");
        write_atomic(&path, b"old").unwrap();
        let err = write_atomic_with(&path, |w| {
            w.write_all(b"half")?;
            Err(io::Error::other("disk full"))
        })
        .unwrap_err();
        assert!(err.to_string().contains("disk full") && err.to_string().contains("f.bin"), "{err}");
        assert_eq!(fs::read(&path).unwrap(), b"old");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn stale_temps_of_the_named_files_are_removed() {
        let dir = scratch("atomic-stale");
        for f in [".last.ckpt.tmp-123-0", ".curves.svg.tmp-9-4", ".other.tmp-1-1", "last.ckpt", "notes.txt"] {
            fs::write(dir.join(f), b"x").unwrap();
        }
        remove_stale_temps(&dir, &["last.ckpt", "curves.svg"]).unwrap();
        let mut names: Vec<_> =
            fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        assert_eq!(names, [".other.tmp-1-1", "last.ckpt", "notes.txt"]);
        fs::remove_dir_all(&dir).unwrap();
    }
}
