//! An exclusive lock on a folder, held by one process at a time: the lock file is created if
//! missing and locked with `flock` (through `File::try_lock`), so the kernel releases it when the
//! holder exits, however it exits. A lock left by a killed process never blocks a later one;
//! the file it leaves behind is reused. The holder's pid is written into the file so that a
//! refused process can say who holds it.
//!
//! The lock file is opened without following a symbolic link and without waiting on a FIFO, and
//! it must be a regular file with one name: a link, a file with other names (hard links), a FIFO
//! or a folder there is refused and left as it is, so the pid is never written into another
//! file and two runs never lock two different files under one name.

use super::atomic::{self, NotOpened, NotRegular};
use crate::error::{Error, Result};
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// A held lock; dropping it removes the lock file and releases the lock.
#[derive(Debug)]
pub struct FolderLock {
    file: File,
    path: PathBuf,
}

impl FolderLock {
    /// Takes the lock `dir/name`, or says which process holds it.
    pub fn acquire(dir: &Path, name: &str) -> Result<FolderLock> {
        let path = dir.join(name);
        // A holder that exits removes the file after we opened it: our lock is then on a file
        // no longer at `path`, while a newcomer may lock a fresh one there. Retry until the lock
        // is on the file `path` names.
        for _ in 0..100 {
            let mut file = open_lock_file(&path)?;
            match file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => {
                    let mut text = String::new();
                    let _ = file.read_to_string(&mut text);
                    let holder = match text.trim().parse::<u32>() {
                        Ok(pid) => format!("sliceout process (pid {pid})"),
                        Err(_) => "sliceout process".to_string(),
                    };
                    return Err(Error::Msg(format!(
                        "{} is in use by another {holder}: wait for it to finish, or pick another folder",
                        dir.display()
                    )));
                }
                Err(TryLockError::Error(e)) => return Err(Error::io(&path, e)),
            }
            if same_file(&file, &path) {
                let written = file.set_len(0).and_then(|_| writeln!(file, "{}", std::process::id()));
                written.map_err(|e| Error::io(&path, e))?;
                return Ok(FolderLock { file, path });
            }
        }
        Err(Error::io(&path, io::Error::other("the lock file keeps being replaced; is another process looping on it?")))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for FolderLock {
    fn drop(&mut self) {
        // Remove first, then release (when `file` closes): a process that opened the file
        // meanwhile locks a removed file, sees it, and retries. Whatever was put in its place
        // is not ours to remove.
        if same_file(&self.file, &self.path) {
            let _ = fs::remove_file(&self.path);
        }
        let _ = self.file.unlock();
    }
}

/// Opens (creating it if missing) the lock file `path`: a regular file with one name, never
/// through a link, never waiting on a FIFO ([`atomic::open_checked`]); anything else is refused
/// and left as it is.
fn open_lock_file(path: &Path) -> Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    atomic::open_checked(path, &mut options, true).map_err(|e| {
        let what = match e {
            NotOpened::Io(e) => return Error::io(path, e),
            NotOpened::Refused(NotRegular::Kind(what)) => what,
            NotOpened::Refused(NotRegular::Names(n)) => format!("a file with {n} names (hard links)"),
        };
        let dir = atomic::folder_of(path).display();
        Error::Msg(format!(
            "{}: is {what}, expected the lock file of {dir} (a regular file with one name); it was left as it is: \
             remove it if no sliceout process runs in {dir}, or pick another folder",
            path.display()
        ))
    })
}

#[cfg(unix)]
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_file: &File, path: &Path) -> bool {
    path.exists()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::scratch;

    #[test]
    fn one_holder_at_a_time_and_released_on_drop() {
        let dir = scratch("lock-held");
        let lock = FolderLock::acquire(&dir, ".lock").unwrap();
        assert_eq!(fs::read_to_string(lock.path()).unwrap().trim(), std::process::id().to_string());
        // A second open file description conflicts even within one process.
        let msg = FolderLock::acquire(&dir, ".lock").unwrap_err().to_string();
        assert!(msg.contains("in use by another sliceout process") && msg.contains("pid"), "{msg}");
        assert!(msg.contains(&dir.display().to_string()), "{msg}");
        drop(lock);
        assert!(!dir.join(".lock").exists());
        drop(FolderLock::acquire(&dir, ".lock").unwrap());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_stale_lock_file_is_taken_over() {
        // What a killed holder leaves: the file with its pid, no lock on it.
        let dir = scratch("lock-stale");
        fs::write(dir.join(".lock"), "4000000000\n").unwrap();
        let lock = FolderLock::acquire(&dir, ".lock").unwrap();
        assert_eq!(fs::read_to_string(lock.path()).unwrap().trim(), std::process::id().to_string());
        drop(lock);
        fs::remove_dir_all(&dir).unwrap();
    }

    /// Puts something at a path (the second argument), maybe naming a file (the first).
    type Tamper = fn(&Path, &Path);

    /// A symbolic link (to a file, to nothing), a file with a second name, a FIFO and a folder
    /// at the lock's name are refused in one line, at once, and left as they are: the pid is
    /// never written through them.
    #[cfg(unix)]
    #[test]
    fn only_a_regular_file_with_one_name_is_a_lock() {
        use std::os::unix::fs::symlink;
        let dir = scratch("lock-kinds");
        let victim = dir.join("victim.txt");
        fs::write(&victim, b"precious").unwrap();
        let lock = dir.join(".lock");
        let cases: [(&str, Tamper); 5] = [
            ("a symbolic link to ", |v, l| symlink(v, l).unwrap()),
            ("a symbolic link to ", |v, l| symlink(v.with_file_name("nothing"), l).unwrap()),
            ("a file with 2 names (hard links)", |v, l| fs::hard_link(v, l).unwrap()),
            ("a FIFO", |_, l| assert!(std::process::Command::new("mkfifo").arg(l).status().unwrap().success())),
            ("a folder", |_, l| fs::create_dir(l).unwrap()),
        ];
        for (what, make) in cases {
            make(&victim, &lock);
            let t0 = std::time::Instant::now();
            let msg = FolderLock::acquire(&dir, ".lock").unwrap_err().to_string();
            assert!(t0.elapsed().as_secs() < 5);
            assert!(msg.contains(&format!(".lock: is {what}")) && msg.contains("left as it is"), "{msg}");
            assert_eq!(msg.lines().count(), 1, "{msg}");
            assert_eq!(fs::read(&victim).unwrap(), b"precious");
            assert!(!dir.join("nothing").exists());
            if fs::symlink_metadata(&lock).unwrap().is_dir() {
                fs::remove_dir(&lock).unwrap();
            } else {
                fs::remove_file(&lock).unwrap();
            }
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    /// What a holder finds at the lock's name when it lets go and is not its file stays.
    #[cfg(unix)]
    #[test]
    fn a_holder_removes_only_its_own_lock_file() {
        let dir = scratch("lock-swapped");
        let lock = FolderLock::acquire(&dir, ".lock").unwrap();
        fs::remove_file(dir.join(".lock")).unwrap();
        std::os::unix::fs::symlink(dir.join("elsewhere"), dir.join(".lock")).unwrap();
        drop(lock);
        assert!(fs::symlink_metadata(dir.join(".lock")).unwrap().file_type().is_symlink());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unwritable_place_is_named() {
        let dir = scratch("lock-nowhere");
        let missing = dir.join("no-such-folder");
        let msg = FolderLock::acquire(&missing, ".lock").unwrap_err().to_string();
        assert!(msg.contains("no-such-folder"), "{msg}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
