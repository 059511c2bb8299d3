//! An exclusive lock on a folder, held by one process at a time: the lock file is created if
//! missing and locked with `flock` (through `File::try_lock`), so the kernel releases it when the
//! holder exits, however it exits. A lock left by a killed process never blocks a later one;
//! the file it leaves behind is reused. The holder's pid is written into the file so that a
//! refused process can say who holds it.

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
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| Error::io(&path, e))?;
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
        // meanwhile locks a removed file, sees it, and retries.
        let _ = fs::remove_file(&self.path);
        let _ = self.file.unlock();
    }
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

    #[test]
    fn an_unwritable_place_is_named() {
        let dir = scratch("lock-nowhere");
        let missing = dir.join("no-such-folder");
        let msg = FolderLock::acquire(&missing, ".lock").unwrap_err().to_string();
        assert!(msg.contains("no-such-folder"), "{msg}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
