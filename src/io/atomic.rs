//! Writing a file so that a crash at any moment leaves either the old file or the new one, and
//! deciding what such a write may replace.
//!
//! A write renames a temporary file over its target, which replaces whatever entry has that
//! name. So only a missing target or a regular file is replaced; anything else is refused and
//! left as it is ([`obstacle`] says what it is):
//! - a folder, FIFO, socket or device (`/dev/null` must stay a device);
//! - a symbolic link, whatever it points to: the rename would replace the link itself with a
//!   file, silently cutting what the user linked. The message names the link's target, so
//!   writing to that file by its own name is one step away.
//!
//! The target is judged again right before the rename, so that a link or FIFO put there while
//! the temporary file was written is refused too. A file appended to in place is opened by
//! [`open_regular`], which never follows a link nor waits on a FIFO.

use crate::error::{Error, Result};
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
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
/// process is removed by [`remove_stale_temps`]. A target that is not a regular file is
/// refused before anything is written (see the module doc).
pub fn write_atomic_with(path: &Path, fill: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> Result<()> {
    check_replaceable(path)?;
    let tmp = temp_path(path)?;
    let dir = folder_of(path);
    let written = (|| -> io::Result<()> {
        // A new name only: whatever was put at the temporary name is not written through.
        let file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        let mut w = io::BufWriter::with_capacity(64 << 10, file);
        fill(&mut w)?;
        let file = w.into_inner().map_err(io::IntoInnerError::into_error)?;
        file.sync_all()?;
        drop(file);
        Ok(())
    })();
    // Something put at `path` while the file was written is refused, not replaced.
    let written = written.map_err(|e| write_error(path, &tmp, e)).and_then(|()| check_replaceable(path));
    let renamed = written.and_then(|()| fs::rename(&tmp, path).map_err(|e| write_error(path, &tmp, e)));
    if let Err(e) = renamed {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(dir).map_err(|e| {
        let msg = format!("syncing folder {} after the rename: {e}", dir.display());
        Error::io(path, io::Error::new(e.kind(), msg))
    })
}

/// An error writing `path` through its temporary file `tmp`.
fn write_error(path: &Path, tmp: &Path, e: io::Error) -> Error {
    let msg = format!("writing through temporary file {}: {e}", tmp.display());
    Error::io(path, io::Error::new(e.kind(), msg))
}

/// Opens `path` with `options` (reading, appending, creating) as a regular file and nothing
/// else: a symbolic link is not followed, a FIFO is not waited on, and either, or a folder,
/// socket or device, is refused naming what it is (see [`obstacle`]). With `one_name`, a file
/// with more than one name (hard links) is refused too: writing it would change the other names'
/// file. The checks are made on the opened file itself, so nothing swapped in between slips by.
pub fn open_regular(path: &Path, options: &mut OpenOptions, one_name: bool) -> Result<fs::File> {
    open_checked(path, options, one_name).map_err(|e| match e {
        NotOpened::Refused(NotRegular::Kind(what)) => refused(path, &what),
        NotOpened::Refused(NotRegular::Names(n)) => {
            refused(path, &format!("a file with {n} names (hard links): writing it would change them all"))
        }
        NotOpened::Io(e) => Error::io(path, e),
    })
}

/// What stands at a path where a regular file (with one name, where asked) had to be.
pub enum NotRegular {
    /// A link, folder, FIFO, socket or device, in words ("a symbolic link to x.bin").
    Kind(String),
    /// A regular file with this many names (hard links).
    Names(u64),
}

/// Why [`open_checked`] opened nothing.
pub enum NotOpened {
    Refused(NotRegular),
    Io(io::Error),
}

/// The one way a file that must be regular is opened ([`open_regular`], the folder lock):
/// judged by its name first (so a device is not even opened), opened without following a link
/// or waiting on a FIFO (judged again by name if that fails: something was swapped in), then
/// judged as the file opened.
pub fn open_checked(
    path: &Path,
    options: &mut OpenOptions,
    one_name: bool,
) -> std::result::Result<fs::File, NotOpened> {
    let judge = |meta: &fs::Metadata| judge_regular(path, meta, one_name);
    match fs::symlink_metadata(path) {
        Ok(meta) => judge(&meta).map_err(NotOpened::Refused)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(NotOpened::Io(e)),
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
    }
    let file = options.open(path).map_err(|e| match fs::symlink_metadata(path).map(|m| judge(&m)) {
        Ok(Err(what)) => NotOpened::Refused(what),
        _ => NotOpened::Io(e),
    })?;
    let meta = file.metadata().map_err(NotOpened::Io)?;
    judge(&meta).map_err(NotOpened::Refused)?;
    Ok(file)
}

/// `meta` (of `path`, not followed) judged: a regular file, with one name where `one_name`.
fn judge_regular(path: &Path, meta: &fs::Metadata, one_name: bool) -> std::result::Result<(), NotRegular> {
    if meta.file_type().is_symlink() {
        let target = fs::read_link(path).map(|t| format!(" to {}", t.display())).unwrap_or_default();
        return Err(NotRegular::Kind(format!("a symbolic link{target}")));
    }
    if let Some(kind) = kind_other_than_file(&meta.file_type()) {
        return Err(NotRegular::Kind(kind.to_string()));
    }
    match names(meta) {
        n if one_name && n > 1 => Err(NotRegular::Names(n)),
        _ => Ok(()),
    }
}

/// How many names (hard links) the file of `meta` has; 1 where that cannot be told.
pub fn names(meta: &fs::Metadata) -> u64 {
    #[cfg(unix)]
    {
        std::os::unix::fs::MetadataExt::nlink(meta)
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        1
    }
}

/// `path` is `what` where a regular file was expected, and was left as it is.
fn refused(path: &Path, what: &str) -> Error {
    let msg = format!("is {what}, expected a regular file; it was left as it is");
    Error::io(path, io::Error::new(io::ErrorKind::InvalidInput, msg))
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

/// Refuses, naming it, a `path` that a write must not replace (see [`obstacle`]).
pub fn check_replaceable(path: &Path) -> Result<()> {
    match obstacle(path).map_err(|e| Error::io(path, e))? {
        None => Ok(()),
        Some(what) => Err(refused(path, &what)),
    }
}

/// What stands at `path` when a write must not replace it, in words ("a FIFO", "a symbolic link
/// to x.bin ..."); `None` when nothing is there or a regular file is. A symbolic link is judged
/// by what it points to when that is not a regular file (a link to `/dev/stdout` is "a symbolic
/// link to a character device"), and refused as a link otherwise.
pub fn obstacle(path: &Path) -> io::Result<Option<String>> {
    let own = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if !own.file_type().is_symlink() {
        return Ok(kind_other_than_file(&own.file_type()).map(String::from));
    }
    let target = fs::read_link(path)?;
    let pointed = match fs::metadata(path) {
        Ok(m) => kind_other_than_file(&m.file_type()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    Ok(Some(match pointed {
        Some(kind) => format!("a symbolic link to {kind} ({})", target.display()),
        None => format!(
            "a symbolic link to {} (writing would replace the link, not that file: name the file itself)",
            target.display()
        ),
    }))
}

/// The kind of a non-regular file, in words; `None` for a regular file.
pub fn kind_other_than_file(t: &fs::FileType) -> Option<&'static str> {
    if t.is_file() {
        return None;
    }
    if t.is_dir() {
        return Some("a folder");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return Some("a FIFO");
        }
        if t.is_socket() {
            return Some("a socket");
        }
        if t.is_char_device() {
            return Some("a character device");
        }
        if t.is_block_device() {
            return Some("a block device");
        }
    }
    Some("not a regular file (a device, FIFO or socket)")
}

/// Says whether a file can be created in `path`'s folder by creating (then removing) the
/// temporary file a write of `path` would use: exact where permission bits are not (read-only
/// mounts, ACLs, root).
pub fn probe_folder(path: &Path) -> io::Result<()> {
    let tmp = temp_path(path).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "not a file path"))?;
    OpenOptions::new().write(true).create_new(true).open(&tmp)?;
    fs::remove_file(&tmp)
}

/// A temporary file name beside `path`, distinct per call so that two threads saving the same
/// path never share one.
fn temp_path(path: &Path) -> Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let Some(name) = path.file_name() else {
        return Err(Error::io(path, io::Error::new(io::ErrorKind::InvalidInput, "not a file path")));
    };
    Ok(folder_of(path).join(format!(
        "{}{}-{}",
        temp_prefix(&name.to_string_lossy()),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )))
}

/// The longest file name most file systems take, in bytes.
const NAME_MAX: usize = 255;
/// Room a temporary name needs besides the target's name: `.`, `.tmp-`, a u32 process id, `-`
/// and a u64 counter.
const TEMP_EXTRA: usize = 1 + 5 + 10 + 1 + 20;

/// The start of every temporary file name a save of `name` uses. A long `name` is cut (on a
/// character boundary) so that the temporary name stays within [`NAME_MAX`] bytes: any name the
/// file system takes can be written.
fn temp_prefix(name: &str) -> String {
    let mut end = name.len().min(NAME_MAX - TEMP_EXTRA);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!(".{}.tmp-", &name[..end])
}

/// The folder holding `path` (`.` for a bare file name).
pub fn folder_of(path: &Path) -> &Path {
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
        // The target is a folder: refused before a temporary file is made.
        let sub = dir.join("sub");
        fs::create_dir(&sub).unwrap();
        let err = write_atomic(&sub, b"x").unwrap_err();
        assert!(err.to_string().contains("sub: is a folder, expected a regular file"), "{err}");
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

    /// A rename over a FIFO, a device or a link would replace it with a file: each is refused,
    /// nothing is written, and it stays what it was.
    #[cfg(unix)]
    #[test]
    fn only_regular_files_are_replaced() {
        use std::os::unix::fs::{symlink, FileTypeExt};
        let dir = scratch("atomic-kinds");
        let made =
            |args: &[&str]| std::process::Command::new(args[0]).args(&args[1..]).status().is_ok_and(|s| s.success());
        let (fifo, dev, regular) = (dir.join("fifo"), dir.join("null"), dir.join("regular"));
        assert!(made(&["mkfifo", fifo.to_str().unwrap()]));
        let has_dev = made(&["mknod", "-m", "666", dev.to_str().unwrap(), "c", "1", "3"]);
        fs::write(&regular, b"mine").unwrap();
        symlink(&regular, dir.join("to-regular")).unwrap();
        symlink(&fifo, dir.join("to-fifo")).unwrap();
        symlink(dir.join("nothing"), dir.join("dangling")).unwrap();
        let mut cases = vec![
            ("fifo", "is a FIFO, expected a regular file"),
            ("to-fifo", "is a symbolic link to a FIFO ("),
            ("to-regular", "is a symbolic link to "),
            ("dangling", "is a symbolic link to "),
        ];
        if has_dev {
            symlink(&dev, dir.join("to-dev")).unwrap();
            cases.push(("null", "is a character device, expected a regular file"));
            cases.push(("to-dev", "is a symbolic link to a character device"));
        }
        for (name, want) in cases {
            let err = write_atomic(&dir.join(name), b"x").unwrap_err().to_string();
            assert!(err.contains(&format!("{name}: {want}")) && err.contains("left as it is"), "{err}");
        }
        assert!(fs::metadata(&fifo).unwrap().file_type().is_fifo());
        if has_dev {
            assert!(fs::metadata(&dev).unwrap().file_type().is_char_device());
        }
        for link in ["to-regular", "to-fifo", "dangling"] {
            assert!(fs::symlink_metadata(dir.join(link)).unwrap().file_type().is_symlink());
        }
        assert_eq!(fs::read(&regular).unwrap(), b"mine");
        assert!(fs::read_dir(&dir).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().contains(".tmp-")));
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A link or FIFO put at the target while its new contents were written is refused and
    /// stays; the temporary file goes.
    #[cfg(unix)]
    #[test]
    fn what_is_put_in_place_mid_write_is_refused() {
        use std::os::unix::fs::symlink;
        let dir = scratch("atomic-midway");
        let (path, victim) = (dir.join("f.bin"), dir.join("victim"));
        fs::write(&victim, b"precious").unwrap();
        write_atomic(&path, b"old").unwrap();
        let err = write_atomic_with(&path, |w| {
            fs::remove_file(&path)?;
            symlink(&victim, &path)?;
            w.write_all(b"new")
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("f.bin: is a symbolic link to") && err.contains("left as it is"), "{err}");
        assert!(fs::symlink_metadata(&path).unwrap().file_type().is_symlink());
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        fs::remove_file(&path).unwrap();
        let err = write_atomic_with(&path, |w| {
            std::process::Command::new("mkfifo").arg(&path).status()?;
            w.write_all(b"new")
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("f.bin: is a FIFO"), "{err}");
        let mut names: Vec<_> =
            fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        assert_eq!(names, ["f.bin", "victim"]);
        fs::remove_dir_all(&dir).unwrap();
    }

    /// Puts something at a path (the second argument), maybe naming a file (the first).
    type Tamper = fn(&Path, &Path);

    /// `open_regular` opens a regular file (creating it when asked) and refuses, at once and
    /// without writing through it, a link, a FIFO, a folder, and with `one_name` a hard link.
    #[cfg(unix)]
    #[test]
    fn open_regular_takes_only_regular_files() {
        use std::os::unix::fs::symlink;
        let dir = scratch("atomic-open");
        let victim = dir.join("victim");
        fs::write(&victim, b"precious").unwrap();
        let append = || {
            let mut o = OpenOptions::new();
            o.create(true).append(true);
            o
        };
        let path = dir.join("m.jsonl");
        open_regular(&path, &mut append(), true).unwrap().write_all(b"line\n").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"line\n");
        fs::remove_file(&path).unwrap();
        let cases: [(&str, Tamper); 4] = [
            ("is a symbolic link to ", |v, p| symlink(v, p).unwrap()),
            ("is a FIFO", |_, p| assert!(std::process::Command::new("mkfifo").arg(p).status().unwrap().success())),
            ("is a folder", |_, p| fs::create_dir(p).unwrap()),
            ("is a file with 2 names (hard links)", |v, p| fs::hard_link(v, p).unwrap()),
        ];
        for (what, make) in cases {
            make(&victim, &path);
            let t0 = std::time::Instant::now();
            let err = open_regular(&path, &mut append(), true).unwrap_err().to_string();
            assert!(t0.elapsed().as_secs() < 5);
            assert!(err.contains(&format!("m.jsonl: {what}")) && err.contains("left as it is"), "{err}");
            assert_eq!(fs::read(&victim).unwrap(), b"precious");
            if path.is_dir() {
                fs::remove_dir(&path).unwrap();
            } else {
                fs::remove_file(&path).unwrap();
            }
        }
        // A second name is no obstacle to reading.
        fs::hard_link(&victim, &path).unwrap();
        open_regular(&path, OpenOptions::new().read(true), false).unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }

    /// Any name the file system takes is writable: the temporary name is cut to fit, on a
    /// character boundary, and a stale one of a long name is still found.
    #[test]
    fn long_names_get_temporary_names_within_the_limit() {
        // The widest process id and counter fill the name exactly.
        assert_eq!(temp_prefix(&"x".repeat(NAME_MAX)).len() + format!("{}-{}", u32::MAX, u64::MAX).len(), NAME_MAX);
        let accented = "é".repeat(200);
        let cut = temp_prefix(&accented);
        assert!(cut.len() + 31 <= NAME_MAX && cut.starts_with(".éé") && cut.ends_with("é.tmp-"), "{cut}");
        assert_eq!(temp_prefix("last.ckpt"), ".last.ckpt.tmp-");
        let dir = scratch("atomic-long");
        for name in ["l".repeat(NAME_MAX), format!("{}.bin", "é".repeat(125))] {
            write_atomic(&dir.join(&name), b"x").unwrap();
            assert_eq!(fs::read(dir.join(&name)).unwrap(), b"x");
            fs::write(dir.join(format!("{}{}-{}", temp_prefix(&name), u32::MAX, u64::MAX)), b"stale").unwrap();
            remove_stale_temps(&dir, &[&name]).unwrap();
            assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
            fs::remove_file(dir.join(&name)).unwrap();
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn probing_a_folder_leaves_nothing() {
        let dir = scratch("atomic-probe");
        probe_folder(&dir.join("f.bin")).unwrap();
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
        assert!(probe_folder(&dir.join("missing").join("f.bin")).is_err());
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
