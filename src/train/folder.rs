//! The run folder: the files a run writes there, the lock it holds while it runs, and the rules
//! that keep a run from replacing another's files.
//!
//! - One process at a time: a run takes the folder's lock ([`LOCK`], `flock`ed, released by the
//!   kernel however the process ends) before touching anything, so two trainers, or a sweep
//!   whose members land in one folder, are refused rather than interleaved.
//! - A fresh run refuses a folder holding any of [`RUN_FILES`] (even only `best.ckpt` or
//!   `curves.svg`) unless `--force`, which removes them first; so does a resumed run writing to a
//!   folder other than its checkpoint's. The refusal names what is there and what to do next
//!   (resume from the checkpoint that exists, `--force`, or another folder).
//! - Temporary files of saves killed mid-write are removed once the lock is held.
//! - A run file that a save would refuse to replace (a FIFO, a folder, a symbolic link; see
//!   [`crate::io::atomic`]) is refused before any training, not at the first save.
//! - Default folders are `runs/<timestamp>`, claimed with an atomic `mkdir` and a `-2`, `-3`, ...
//!   suffix when taken, so parallel runs never share one.

use crate::error::{Error, Result};
use crate::io::atomic::{check_replaceable, folder_of, remove_stale_temps};
use crate::io::lock::FolderLock;
use crate::io::output::same_file;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

/// Every file a run writes in its folder.
pub const RUN_FILES: [&str; 4] = ["last.ckpt", "best.ckpt", "metrics.jsonl", "curves.svg"];

/// The lock file held while a run writes its folder.
pub const LOCK: &str = ".sliceout.lock";

/// Makes `out` and takes its lock for a run, fresh or resumed from `resume`: removes what
/// killed saves left, then refuses (unless `force`, which removes them) another run's files.
pub fn claim(out: &Path, resume: Option<&Path>, force: bool) -> Result<FolderLock> {
    if out.exists() && !out.is_dir() {
        return Err(Error::flag("--out", out.display(), "a folder for the run (this is a file)"));
    }
    fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let lock = FolderLock::acquire(out, LOCK)?;
    remove_stale_temps(out, &RUN_FILES)?;
    let continuing = resume.is_some_and(|ck| same_file(folder_of(ck), out));
    // Going on from another checkpoint of the folder (say best.ckpt) would replace last.ckpt,
    // a point the run reached since, and the metrics of the epochs after it.
    let last = out.join("last.ckpt");
    if let Some(ck) = resume.filter(|ck| continuing && !force && last.exists() && !same_file(ck, &last)) {
        return Err(Error::Msg(format!(
            "resuming {} in its own folder would replace {} (where the run got to since) and the metrics              after it: pass --out for a new folder, or --force to go on from {} here",
            ck.display(),
            last.display(),
            ck.display()
        )));
    }
    let found: Vec<&str> = RUN_FILES.iter().copied().filter(|f| out.join(f).exists()).collect();
    if continuing || found.is_empty() {
        // A FIFO or a link where a save goes is refused now, not after the first epoch.
        for f in RUN_FILES {
            check_replaceable(&out.join(f))?;
        }
        return Ok(lock);
    }
    if force {
        for f in &found {
            fs::remove_file(out.join(f)).map_err(|e| Error::io(out.join(f), e))?;
        }
        return Ok(lock);
    }
    Err(Error::Msg(refusal(out, resume, &found)))
}

/// Why `out` (holding `found`) is refused, and the ways on.
fn refusal(out: &Path, resume: Option<&Path>, found: &[&str]) -> String {
    let listed = found.join(", ");
    if let Some(ck) = resume {
        return format!(
            "{} already holds another run ({listed}); resuming {} there would replace it: pick another --out, \
             or pass --force to replace it",
            out.display(),
            ck.display()
        );
    }
    match found.iter().find(|f| f.ends_with(".ckpt")) {
        Some(ck) => format!(
            "{} already holds a run ({listed}): continue it with --resume {}, pass --force to replace it, \
             or pick another --out",
            out.display(),
            out.join(ck).display()
        ),
        None => format!(
            "{} holds files of a run that saved no checkpoint ({listed}): pass --force to replace them, \
             or pick another --out",
            out.display()
        ),
    }
}

/// Whether `path` names one of a run's own files ([`RUN_FILES`]) in a run's folder: one a run
/// holds now (its [`LOCK`] file is there) or one a run left a checkpoint in. Another command must
/// not write it: the run may be writing it now, or be resumed from that folder later.
pub fn is_run_file(path: &Path) -> bool {
    let named = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| RUN_FILES.contains(&n));
    let folder = folder_of(path);
    named && [LOCK, "last.ckpt", "best.ckpt"].iter().any(|f| folder.join(f).exists())
}

/// A new, empty folder `base/<timestamp>` (UTC, `YYYYMMDD-HHMMSS`), or `<timestamp>-2`, `-3`, ...
/// when that is taken: made with one `mkdir` each, which fails if the name exists, so two runs
/// started in the same second never share a folder.
pub fn new_timestamped(base: &Path) -> Result<PathBuf> {
    if base.exists() && !base.is_dir() {
        return Err(Error::Msg(format!("{} is a file, not a folder for runs: pass --out", base.display())));
    }
    fs::create_dir_all(base).map_err(|e| Error::io(base, e))?;
    let stamp = timestamp();
    for i in 1..10_000 {
        let dir = if i == 1 { base.join(&stamp) } else { base.join(format!("{stamp}-{i}")) };
        match fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io(&dir, e)),
        }
    }
    Err(Error::Msg(format!("{}: no free folder name for {stamp}; pass --out", base.display())))
}

/// `YYYYMMDD-HHMMSS` (UTC) now.
fn timestamp() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = (secs / 86400, secs % 86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}{m:02}{d:02}-{:02}{:02}{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::scratch;

    /// A run file's name is a run's in a folder a run holds (while it trains, with only its
    /// lock there) or left a checkpoint in; elsewhere it is a name like any other.
    #[test]
    fn run_files_are_told_by_the_folder_they_are_in() {
        let dir = scratch("folder-run-files");
        let metrics = dir.join("metrics.jsonl");
        assert!(!is_run_file(&metrics));
        let lock = FolderLock::acquire(&dir, LOCK).unwrap();
        assert!(is_run_file(&metrics) && is_run_file(&dir.join("curves.svg")));
        assert!(!is_run_file(&dir.join("model.safetensors")));
        drop(lock);
        assert!(!is_run_file(&metrics));
        fs::write(dir.join("best.ckpt"), b"x").unwrap();
        assert!(is_run_file(&metrics));
        fs::remove_dir_all(&dir).unwrap();
    }

    /// Resuming the folder's best.ckpt there would replace its later last.ckpt: refused unless
    /// --force; resuming last.ckpt itself, or best.ckpt into another folder, goes on.
    #[test]
    fn resuming_an_earlier_checkpoint_in_place_needs_force() {
        let dir = scratch("folder-resume-best");
        let (best, last) = (dir.join("best.ckpt"), dir.join("last.ckpt"));
        fs::write(&best, b"epoch 1").unwrap();
        fs::write(&last, b"epoch 4").unwrap();
        let msg = claim(&dir, Some(&best), false).unwrap_err().to_string();
        assert!(msg.contains("last.ckpt") && msg.contains("--out") && msg.contains("--force"), "{msg}");
        drop(claim(&dir, Some(&last), false).unwrap());
        drop(claim(&dir, Some(&best), true).unwrap());
        drop(claim(&dir.join("elsewhere"), Some(&best), false).unwrap());
        assert_eq!(fs::read(&last).unwrap(), b"epoch 4");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn any_run_file_is_protected_and_force_replaces() {
        let dir = scratch("folder-protect");
        for f in RUN_FILES {
            let out = dir.join(f.replace('.', "-"));
            fs::create_dir_all(&out).unwrap();
            fs::write(out.join(f), b"keep me").unwrap();
            let msg = claim(&out, None, false).unwrap_err().to_string();
            assert!(msg.contains(f) && msg.contains("--force"), "{msg}");
            if f.ends_with(".ckpt") {
                assert!(msg.contains(&format!("--resume {}", out.join(f).display())), "{msg}");
            } else {
                assert!(msg.contains("saved no checkpoint") && !msg.contains("--resume"), "{msg}");
            }
            assert_eq!(fs::read(out.join(f)).unwrap(), b"keep me");
            // Resuming from elsewhere into it is refused too.
            let other = dir.join("elsewhere").join("last.ckpt");
            let msg = claim(&out, Some(&other), false).unwrap_err().to_string();
            assert!(msg.contains("another run") && msg.contains("elsewhere"), "{msg}");
            let lock = claim(&out, None, true).unwrap();
            assert!(!out.join(f).exists());
            drop(lock);
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_run_continues_in_its_own_folder_after_its_stale_temps_are_removed() {
        let dir = scratch("folder-continue");
        fs::write(dir.join("last.ckpt"), b"ck").unwrap();
        fs::write(dir.join(".last.ckpt.tmp-77-0"), b"torn").unwrap();
        fs::write(dir.join("notes.txt"), b"mine").unwrap();
        let lock = claim(&dir, Some(&dir.join("last.ckpt")), false).unwrap();
        assert!(!dir.join(".last.ckpt.tmp-77-0").exists());
        assert!(dir.join(LOCK).exists() && dir.join("notes.txt").exists());
        // A second process (or a second claim) is refused while the lock is held.
        let msg = claim(&dir, Some(&dir.join("last.ckpt")), false).unwrap_err().to_string();
        assert!(msg.contains("in use by another sliceout process"), "{msg}");
        drop(lock);
        assert!(!dir.join(LOCK).exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_as_out_is_named_as_such() {
        let dir = scratch("folder-file");
        let file = dir.join("a-file");
        fs::write(&file, b"x").unwrap();
        let msg = claim(&file, None, false).unwrap_err().to_string();
        assert!(msg.contains("--out") && msg.contains("a-file") && msg.contains("this is a file"), "{msg}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn timestamped_folders_never_collide() {
        let dir = scratch("folder-stamps");
        let made: Vec<PathBuf> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8).map(|_| s.spawn(|| new_timestamped(&dir).unwrap())).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut names: Vec<_> = made.iter().map(|p| p.file_name().unwrap().to_owned()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 8);
        assert!(made.iter().all(|p| p.is_dir() && fs::read_dir(p).unwrap().count() == 0));
        let stamp = timestamp();
        assert_eq!(stamp.len(), 15);
        assert_eq!(&stamp[8..9], "-");
        let file = dir.join("runs-file");
        fs::write(&file, b"x").unwrap();
        let msg = new_timestamped(&file).unwrap_err().to_string();
        assert!(msg.contains("runs-file is a file") && msg.contains("--out"), "{msg}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
