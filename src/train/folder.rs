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
//! - A run resumed in its own folder (the checkpoint's) goes on only over its own files: each
//!   other file of [`RUN_FILES`] there must be the run's ([`Owner`] says how that is told),
//!   else the resume is refused, naming each and why, unless `--force`, which removes them.
//! - The lock file is never followed nor replaced: a link, a FIFO or a file with other names
//!   there is refused ([`FolderLock`]), and no command's output may be named [`LOCK`].
//! - Temporary files of saves killed mid-write are removed once the lock is held.
//! - A run file that a save would refuse to replace (a FIFO, a folder, a symbolic link; see
//!   [`crate::io::atomic`]) is refused before any training, not at the first save, `--force`
//!   or not.
//! - Default folders are `runs/<timestamp>`, claimed with an atomic `mkdir` and a `-2`, `-3`, ...
//!   suffix when taken, so parallel runs never share one. A `runs` (or `--out`) that is a
//!   symbolic link to nothing is named as such.

use super::state::RunMeta;
use super::tb;
use crate::error::{Error, Result};
use crate::io::atomic::{check_replaceable, folder_of, open_regular, remove_stale_temps};
use crate::io::checkpoint;
use crate::io::lock::FolderLock;
use crate::io::metrics::{self, EpochMetrics};
use crate::io::output::same_file;
use crate::ir::ModelConfig;
use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};

/// Every file a run writes in its folder, by its path there: the last is its TensorBoard
/// events ([`super::tb`]), in a folder of their own for `tensorboard --logdir runs`.
pub const RUN_FILES: [&str; 5] = ["last.ckpt", "best.ckpt", "metrics.jsonl", "curves.svg", TB_EVENTS];

/// The run's TensorBoard events file, `tb::FOLDER/tb::FILE` (a test checks they agree).
const TB_EVENTS: &str = "tb/events.out.tfevents.sliceout";

/// The lock file held while a run writes its folder.
pub const LOCK: &str = ".sliceout.lock";

/// The run a resumed checkpoint holds, to tell its files from another run's. A file beside the
/// checkpoint is the run's when:
/// - a checkpoint: it names the same run id; where either names none (written before run ids
///   were stored), it is of the same model. Either way its history and the checkpoint's agree
///   (one a prefix of the other).
/// - `metrics.jsonl`: its records are a prefix of the checkpoint's history (a torn last line
///   aside): the file is appended after each checkpoint, so it is never ahead of the run's.
/// - `curves.svg`: it names the checkpoint's run id in its `<desc>`. A checkpoint written
///   before run ids takes any picture: it is redrawn from the history.
/// - the TensorBoard events: each epoch's `test/acc` in them is the history's at that epoch's
///   last step (the file is appended after each checkpoint, so it is never ahead of the run's).
///
/// Without a stored history (older checkpoints still), histories are not compared.
pub struct Owner<'a> {
    /// The checkpoint resumed.
    pub checkpoint: &'a Path,
    pub config: &'a ModelConfig,
    pub meta: &'a RunMeta,
}

impl Owner<'_> {
    /// Why the file `name` in `out` is not the run's; `None` when it is (or is absent).
    fn disowns(&self, out: &Path, name: &str) -> Result<Option<String>> {
        let path = out.join(name);
        if fs::symlink_metadata(&path).is_err() || same_file(&path, self.checkpoint) {
            return Ok(None);
        }
        if name.ends_with(".ckpt") {
            return Ok(self.disowns_checkpoint(&path));
        }
        if name == TB_EVENTS {
            return Ok(self.disowns_events(&path));
        }
        if name == "metrics.jsonl" {
            let lines = match metrics::read_for_resume(&path) {
                Ok(lines) => lines,
                Err(e) => return Ok(Some(format!("unreadable: {e}"))),
            };
            let ours = self.meta.history.as_deref().is_none_or(|h| prefix_of(&lines, h));
            return Ok((!ours).then(|| "its epochs are not the checkpoint's".to_string()));
        }
        let Some(id) = &self.meta.run_id else {
            return Ok(None);
        };
        // The run's `<desc>` is near the top; the rest of a large picture need not be read.
        let mut head = Vec::new();
        let file = open_regular(&path, OpenOptions::new().read(true), false)?;
        file.take(4096).read_to_end(&mut head).map_err(|e| Error::io(&path, e))?;
        Ok(match metrics::drawn_by(&String::from_utf8_lossy(&head)) {
            Some(by) if by == id => None,
            Some(by) => Some(format!("drawn by run {by}, not {id}")),
            None => Some(format!("names no run, so not run {id}")),
        })
    }

    /// Why the events file `path` is not the run's; `None` when it is, or when the checkpoint
    /// cannot tell (no history, batch or image count: it predates them).
    fn disowns_events(&self, path: &Path) -> Option<String> {
        let meta = self.meta;
        let (Some(history), Some(batch), Some(images)) = (&meta.history, meta.batch, meta.train_images) else {
            return None;
        };
        // `RunMeta::read` holds a run to at least one batch of images.
        let per_epoch = (images / batch).max(1);
        let events = match tb::read(path) {
            Ok(events) => events,
            Err(e) => return Some(format!("unreadable: {e}")),
        };
        // Scalars are stored as f32, and so compared.
        let epoch_of = |step: i64| usize::try_from(step).ok().filter(|s| s % per_epoch == 0).map(|s| s / per_epoch);
        let ours = events.iter().all(|e| {
            let mut accs = e.summary.iter().flat_map(|s| &s.value).filter(|v| v.tag == "test/acc");
            accs.all(|v| {
                let recorded = epoch_of(e.step).filter(|&n| n >= 1).and_then(|n| history.get(n - 1));
                recorded.is_some_and(|m| v.simple_value.map(f32::to_bits) == Some((m.test_acc as f32).to_bits()))
            })
        });
        (!ours).then(|| "its epochs are not the checkpoint's".to_string())
    }

    /// Why the checkpoint `path` is not the run's; `None` when it is.
    fn disowns_checkpoint(&self, path: &Path) -> Option<String> {
        // Its run id, model and history tell it; its weights are not read.
        let ck = match checkpoint::load_meta(path) {
            Ok(ck) => ck,
            Err(e) => return Some(format!("unreadable: {e}")),
        };
        let meta = match RunMeta::read(path, &ck) {
            Ok(meta) => meta,
            Err(e) => return Some(format!("unreadable: {e}")),
        };
        match (&meta.run_id, &self.meta.run_id) {
            (Some(theirs), Some(ours)) if theirs != ours => return Some(format!("of run {theirs}, not {ours}")),
            (Some(_), Some(_)) => {}
            _ if ck.config != *self.config => {
                return Some(format!("of a {} model, not {}", ck.config.name(), self.config.name()))
            }
            _ => {}
        }
        match (&meta.history, &self.meta.history) {
            (Some(a), Some(b)) if !prefix_of(a, b) && !prefix_of(b, a) => {
                Some("its epochs are not the checkpoint's".to_string())
            }
            _ => None,
        }
    }
}

/// Whether `a` is `b` or the start of it (records compared as written, so NaNs match).
fn prefix_of(a: &[EpochMetrics], b: &[EpochMetrics]) -> bool {
    let text = |m: &EpochMetrics| serde_json::to_string(m).expect("metrics serialise");
    a.len() <= b.len() && a.iter().zip(b).all(|(x, y)| text(x) == text(y))
}

/// Refuses, naming it, a folder `path` (the value of `flag`) that is a file, or a symbolic link
/// to nothing (which no `mkdir` can make).
fn check_folder(flag: &str, path: &Path) -> Result<()> {
    if path.exists() && !path.is_dir() {
        return Err(Error::flag(flag, path.display(), "a folder for the run (this is a file)"));
    }
    if !path.exists() && fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        let target = fs::read_link(path).map(|t| t.display().to_string()).unwrap_or_default();
        let expected = format!(
            "a folder for the run (this is a symbolic link to {target}, which does not exist: make that folder, or \
             remove the link)"
        );
        return Err(Error::flag(flag, path.display(), expected));
    }
    Ok(())
}

/// Makes `out` and takes its lock for a run, fresh or resumed (`owner`: the checkpoint's run):
/// removes what killed saves left, then refuses (unless `force`, which removes them) another
/// run's files.
pub fn claim(out: &Path, owner: Option<&Owner>, force: bool) -> Result<FolderLock> {
    check_folder("--out", out)?;
    fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let lock = FolderLock::acquire(out, LOCK)?;
    // Those of the files in `out` itself; the events' (in `tb/`) are `tb::start`'s.
    let here: Vec<&str> = RUN_FILES.iter().copied().filter(|f| !f.contains('/')).collect();
    remove_stale_temps(out, &here)?;
    let resume = owner.map(|o| o.checkpoint);
    let continuing = resume.is_some_and(|ck| same_file(folder_of(ck), out));
    // Going on from another checkpoint of the folder (say best.ckpt) would replace last.ckpt,
    // a point the run reached since, and the metrics of the epochs after it.
    let last = out.join("last.ckpt");
    if let Some(ck) = resume.filter(|ck| continuing && !force && last.exists() && !same_file(ck, &last)) {
        return Err(Error::Msg(format!(
            "resuming {} in its own folder would replace {} (where the run got to since) and the metrics \
             after it: pass --out for a new folder, or --force to go on from {} here",
            ck.display(),
            last.display(),
            ck.display()
        )));
    }
    // A FIFO or a link where a save goes is refused now, not after the first epoch, and named as
    // what it is rather than as a run's file: `--force` replaces files, never those.
    for f in RUN_FILES {
        check_replaceable(&out.join(f))?;
    }
    let found: Vec<&str> = RUN_FILES.iter().copied().filter(|f| out.join(f).exists()).collect();
    if continuing || found.is_empty() {
        if let Some(owner) = owner.filter(|_| continuing) {
            disown_others(out, owner, force)?;
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

/// Refuses (unless `force`, which removes them) the files in `out`, the folder of the
/// checkpoint resumed, that are not its run's.
fn disown_others(out: &Path, owner: &Owner, force: bool) -> Result<()> {
    let mut others = Vec::new();
    for f in RUN_FILES {
        if let Some(why) = owner.disowns(out, f)? {
            others.push((f, why));
        }
    }
    if others.is_empty() {
        return Ok(());
    }
    if force {
        for (f, _) in &others {
            fs::remove_file(out.join(f)).map_err(|e| Error::io(out.join(f), e))?;
        }
        return Ok(());
    }
    let listed: Vec<String> = others.iter().map(|(f, why)| format!("{f} ({why})")).collect();
    Err(Error::Msg(format!(
        "{} holds files of another run beside {}: {}; resuming there would replace them: move them away, pick \
         another --out, or pass --force to replace them",
        out.display(),
        owner.checkpoint.display(),
        listed.join(", ")
    )))
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
    RUN_FILES.iter().any(|f| {
        // The run's folder is what is left of `path` once `f`'s components are taken off.
        let f = Path::new(f);
        let folder = f.components().try_fold(path, |p, _| p.parent());
        let folder = match folder {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        path.ends_with(f) && [LOCK, "last.ckpt", "best.ckpt"].iter().any(|n| folder.join(n).exists())
    })
}

/// A new, empty folder `base/<timestamp>` (UTC, `YYYYMMDD-HHMMSS`), or `<timestamp>-2`, `-3`, ...
/// when that is taken: made with one `mkdir` each, which fails if the name exists, so two runs
/// started in the same second never share a folder.
pub fn new_timestamped(base: &Path) -> Result<PathBuf> {
    if base.exists() && !base.is_dir() {
        return Err(Error::Msg(format!("{} is a file, not a folder for runs: pass --out", base.display())));
    }
    if !base.exists() && fs::symlink_metadata(base).is_ok_and(|m| m.file_type().is_symlink()) {
        let target = fs::read_link(base).map(|t| t.display().to_string()).unwrap_or_default();
        return Err(Error::Msg(format!(
            "{} is a symbolic link to {target}, which does not exist: make that folder, remove the link, or pass --out",
            base.display()
        )));
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

    fn model(widen: usize) -> ModelConfig {
        ModelConfig { depth: 10, widen, classes: 10, in_channels: 3, keep: 1.0 }
    }

    /// What epoch `epoch` of a run timed `seconds` recorded.
    fn record(epoch: usize, seconds: f64) -> EpochMetrics {
        EpochMetrics {
            epoch,
            train_loss: 2.0 / epoch as f64,
            train_acc: 0.1 * epoch as f64,
            test_loss: f64::NAN,
            test_acc: 0.1,
            images_per_s: 100.0,
            seconds,
            keep: 1.0,
            test_loss_recal: None,
            test_acc_recal: None,
            changed: vec![],
        }
    }

    /// A checkpoint at `path` of a WRN-10-`widen` run `id` (`None`: before run ids) after
    /// `epochs` epochs each timed `seconds`; its metadata as read back.
    fn save_checkpoint(path: &Path, id: Option<&str>, epochs: usize, seconds: f64, widen: usize) -> RunMeta {
        let history: Vec<EpochMetrics> = (1..=epochs).map(|e| record(e, seconds)).collect();
        let mut meta = vec![("history".to_string(), serde_json::to_string(&history).unwrap())];
        meta.extend(id.map(|id| ("run_id".to_string(), id.to_string())));
        let ck = checkpoint::Checkpoint {
            config: model(widen),
            step: 4 * epochs as u64,
            epoch: epochs as u64,
            tensors: vec![],
            rngs: vec![],
            norm_mean: vec![],
            norm_std: vec![],
            meta,
        };
        checkpoint::save(path, &ck).unwrap();
        RunMeta::read(path, &checkpoint::load(path).unwrap()).unwrap()
    }

    fn write_metrics(path: &Path, epochs: usize, seconds: f64) {
        let _ = fs::remove_file(path);
        (1..=epochs).for_each(|e| metrics::append_jsonl(path, &record(e, seconds)).unwrap());
    }

    fn write_curves(path: &Path, id: Option<&str>) {
        let svg = metrics::curves_svg(&[], "t");
        fs::write(path, id.map_or(svg.clone(), |id| metrics::with_run(&svg, id))).unwrap();
    }

    /// Writes another run's file at a path.
    type Write = fn(&Path);

    const A: &str = "00000000000000aa";
    const B: &str = "00000000000000bb";

    /// Resuming the folder's best.ckpt there would replace its later last.ckpt: refused unless
    /// --force; resuming last.ckpt itself, or best.ckpt into another folder, goes on.
    #[test]
    fn resuming_an_earlier_checkpoint_in_place_needs_force() {
        let dir = scratch("folder-resume-best");
        let (best, last) = (dir.join("best.ckpt"), dir.join("last.ckpt"));
        let best_meta = save_checkpoint(&best, Some(A), 1, 1.0, 1);
        let last_meta = save_checkpoint(&last, Some(A), 4, 1.0, 1);
        let kept = fs::read(&last).unwrap();
        let config = model(1);
        let from_best = Owner { checkpoint: &best, config: &config, meta: &best_meta };
        let from_last = Owner { checkpoint: &last, config: &config, meta: &last_meta };
        let msg = claim(&dir, Some(&from_best), false).unwrap_err().to_string();
        assert!(msg.contains("last.ckpt") && msg.contains("--out") && msg.contains("--force"), "{msg}");
        drop(claim(&dir, Some(&from_last), false).unwrap());
        drop(claim(&dir, Some(&from_best), true).unwrap());
        drop(claim(&dir.join("elsewhere"), Some(&from_best), false).unwrap());
        assert_eq!(fs::read(&last).unwrap(), kept);
        fs::remove_dir_all(&dir).unwrap();
    }

    /// Beside the checkpoint resumed, another run's best.ckpt, metrics.jsonl and curves.svg
    /// are each refused, named with why, and left as they are; --force removes them. The run's
    /// own go on.
    #[test]
    fn another_runs_files_beside_the_checkpoint_are_refused_unless_forced() {
        let dir = scratch("folder-others");
        let last = dir.join("last.ckpt");
        let meta = save_checkpoint(&last, Some(A), 3, 1.0, 1);
        let config = model(1);
        let owner = Owner { checkpoint: &last, config: &config, meta: &meta };
        let (best, jsonl, svg) = (dir.join("best.ckpt"), dir.join("metrics.jsonl"), dir.join("curves.svg"));
        // Its own: an earlier best.ckpt, metrics a checkpoint behind, its picture.
        save_checkpoint(&best, Some(A), 2, 1.0, 1);
        write_metrics(&jsonl, 2, 1.0);
        write_curves(&svg, Some(A));
        drop(claim(&dir, Some(&owner), false).unwrap());
        // Another run's, each alone and all together.
        let others: [(&Path, &str, Write); 5] = [
            (&best, "best.ckpt (of run 00000000000000bb, not 00000000000000aa)", |p| {
                save_checkpoint(p, Some(B), 2, 1.0, 1);
            }),
            (&best, "best.ckpt (its epochs are not the checkpoint's)", |p| {
                save_checkpoint(p, Some(A), 2, 7.0, 1);
            }),
            (&jsonl, "metrics.jsonl (its epochs are not the checkpoint's)", |p| write_metrics(p, 2, 5.0)),
            (&jsonl, "metrics.jsonl (its epochs are not the checkpoint's)", |p| write_metrics(p, 4, 1.0)),
            (&svg, "curves.svg (drawn by run 00000000000000bb, not 00000000000000aa)", |p| write_curves(p, Some(B))),
        ];
        for (path, why, make) in others {
            let own = fs::read(path).unwrap();
            make(path);
            let theirs = fs::read(path).unwrap();
            let msg = claim(&dir, Some(&owner), false).unwrap_err().to_string();
            assert!(
                msg.contains("holds files of another run") && msg.contains(why) && msg.contains("--force"),
                "{msg}"
            );
            assert_eq!(msg.lines().count(), 1, "{msg}");
            assert_eq!(fs::read(path).unwrap(), theirs);
            fs::write(path, own).unwrap();
        }
        write_curves(&svg, None);
        let msg = claim(&dir, Some(&owner), false).unwrap_err().to_string();
        assert!(msg.contains("curves.svg (names no run, so not run 00000000000000aa)"), "{msg}");
        fs::write(&jsonl, b"not metrics\n{}\n").unwrap();
        let msg = claim(&dir, Some(&owner), false).unwrap_err().to_string();
        assert!(msg.contains("metrics.jsonl (unreadable: ") && msg.contains("curves.svg ("), "{msg}");
        save_checkpoint(&best, Some(B), 1, 1.0, 1);
        drop(claim(&dir, Some(&owner), true).unwrap());
        assert!(!best.exists() && !jsonl.exists() && !svg.exists() && last.exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A checkpoint beside the one resumed is told by its record alone: one of the run whose
    /// weights are damaged (its CRC fails) is the run's, one cut short is refused as before,
    /// naming where it ends.
    #[test]
    fn a_checkpoint_beside_is_told_by_its_record() {
        let dir = scratch("folder-record");
        let last = dir.join("last.ckpt");
        let meta = save_checkpoint(&last, Some(A), 3, 1.0, 1);
        let config = model(1);
        let owner = Owner { checkpoint: &last, config: &config, meta: &meta };
        let best = dir.join("best.ckpt");
        let tensor = checkpoint::Tensor { name: "w".into(), shape: vec![64], data: vec![0.25; 64] };
        let mut ck = checkpoint::load(&last).unwrap();
        ck.tensors.push(tensor);
        checkpoint::save(&best, &ck).unwrap();
        let mut bytes = fs::read(&best).unwrap();
        bytes[120] ^= 1;
        fs::write(&best, &bytes).unwrap();
        assert!(checkpoint::load(&best).unwrap_err().to_string().contains("CRC mismatch"));
        assert_eq!(owner.disowns(&dir, "best.ckpt").unwrap(), None);
        fs::write(&best, &bytes[..bytes.len() - 9]).unwrap();
        let why = owner.disowns(&dir, "best.ckpt").unwrap().unwrap();
        assert!(why.starts_with("unreadable: ") && why.contains("truncated or corrupt"), "{why}");
        fs::remove_dir_all(&dir).unwrap();
    }

    /// The events file's path among the run files is the one `tb` writes; another command's
    /// output there is refused as for any run file.
    #[test]
    fn the_events_file_is_a_run_file() {
        assert_eq!(Path::new(TB_EVENTS), Path::new(tb::FOLDER).join(tb::FILE));
        let dir = scratch("folder-events-name");
        let events = tb::path(&dir);
        assert!(!is_run_file(&events));
        fs::write(dir.join("last.ckpt"), b"x").unwrap();
        assert!(is_run_file(&events) && is_run_file(&dir.join("metrics.jsonl")));
        assert!(!is_run_file(&dir.join(tb::FILE)) && !is_run_file(&dir.join("other").join(tb::FILE)));
        fs::remove_dir_all(&dir).unwrap();
    }

    /// Beside the checkpoint resumed, events whose epochs are the run's go on; an epoch's
    /// accuracy that is not the history's, at a step no epoch ends on, or of an epoch the run
    /// has not reached, is another run's: refused, named, left as it is; --force removes it.
    #[test]
    fn another_runs_events_beside_the_checkpoint_are_refused_unless_forced() {
        let dir = scratch("folder-events");
        let last = dir.join("last.ckpt");
        let history: Vec<EpochMetrics> = (1..=3).map(|e| record(e, 1.0)).collect();
        let meta = [
            ("history", serde_json::to_string(&history).unwrap()),
            ("run_id", A.to_string()),
            ("batch", "4".to_string()),
            ("train_images", "16".to_string()),
        ];
        let ck = checkpoint::Checkpoint {
            config: model(1),
            step: 12,
            epoch: 3,
            tensors: vec![],
            rngs: vec![],
            norm_mean: vec![],
            norm_std: vec![],
            meta: meta.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
        };
        checkpoint::save(&last, &ck).unwrap();
        let meta = RunMeta::read(&last, &ck).unwrap();
        let config = model(1);
        let owner = Owner { checkpoint: &last, config: &config, meta: &meta };
        // The run's own: epochs 1 and 2 (4 steps each), a running loss between.
        let own = || {
            let _ = fs::remove_file(tb::path(&dir));
            tb::append(&dir, 4, &tb::epoch_scalars(&history[0], 0.1), false).unwrap();
            tb::append(&dir, 6, &[("train/loss_running", 1.5)], false).unwrap();
            tb::append(&dir, 8, &tb::epoch_scalars(&history[1], 0.1), false).unwrap();
        };
        own();
        drop(claim(&dir, Some(&owner), false).unwrap());
        for (step, acc) in [(8, 0.5), (6, 0.1), (16, 0.1)] {
            own();
            tb::append(&dir, step, &[("test/acc", acc)], false).unwrap();
            let theirs = fs::read(tb::path(&dir)).unwrap();
            let msg = claim(&dir, Some(&owner), false).unwrap_err().to_string();
            let why = "tb/events.out.tfevents.sliceout (its epochs are not the checkpoint's)";
            assert!(msg.contains("holds files of another run") && msg.contains(why), "step {step}: {msg}");
            assert_eq!(fs::read(tb::path(&dir)).unwrap(), theirs);
        }
        drop(claim(&dir, Some(&owner), true).unwrap());
        assert!(!tb::path(&dir).exists() && last.exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    /// Checkpoints, metrics and pictures written before run ids resume in their own folder; a
    /// checkpoint of another model there is still told apart.
    #[test]
    fn runs_from_before_run_ids_resume_in_their_own_folder() {
        let dir = scratch("folder-old-runs");
        let last = dir.join("last.ckpt");
        let meta = save_checkpoint(&last, None, 3, 1.0, 1);
        let config = model(1);
        let owner = Owner { checkpoint: &last, config: &config, meta: &meta };
        save_checkpoint(&dir.join("best.ckpt"), None, 3, 1.0, 1);
        write_metrics(&dir.join("metrics.jsonl"), 3, 1.0);
        write_curves(&dir.join("curves.svg"), None);
        drop(claim(&dir, Some(&owner), false).unwrap());
        // best.ckpt written by the run since it got an id is the run's too.
        save_checkpoint(&dir.join("best.ckpt"), Some(A), 2, 1.0, 1);
        drop(claim(&dir, Some(&owner), false).unwrap());
        save_checkpoint(&dir.join("best.ckpt"), None, 3, 1.0, 2);
        let msg = claim(&dir, Some(&owner), false).unwrap_err().to_string();
        assert!(msg.contains("best.ckpt (of a WRN-10-2 model, not WRN-10-1)"), "{msg}");
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A symbolic link to nothing as the runs folder or --out is named as such, not "File exists".
    #[cfg(unix)]
    #[test]
    fn a_dangling_link_as_a_folder_is_named_as_such() {
        let dir = scratch("folder-dangling");
        let link = dir.join("runs");
        std::os::unix::fs::symlink(dir.join("gone"), &link).unwrap();
        let msg = new_timestamped(&link).unwrap_err().to_string();
        assert!(msg.contains("runs is a symbolic link to") && msg.contains("gone, which does not exist"), "{msg}");
        let msg = claim(&link, None, false).unwrap_err().to_string();
        assert!(msg.contains("--out") && msg.contains("symbolic link to") && msg.contains("does not exist"), "{msg}");
        assert!(!dir.join("gone").exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn any_run_file_is_protected_and_force_replaces() {
        let dir = scratch("folder-protect");
        for f in RUN_FILES {
            let out = dir.join(f.replace(['.', '/'], "-"));
            fs::create_dir_all(out.join(f).parent().unwrap()).unwrap();
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
            let (config, meta) = (model(1), RunMeta::default());
            let owner = Owner { checkpoint: &other, config: &config, meta: &meta };
            let msg = claim(&out, Some(&owner), false).unwrap_err().to_string();
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
        let (last, config, meta) = (dir.join("last.ckpt"), model(1), RunMeta::default());
        let owner = Owner { checkpoint: &last, config: &config, meta: &meta };
        let lock = claim(&dir, Some(&owner), false).unwrap();
        assert!(!dir.join(".last.ckpt.tmp-77-0").exists());
        assert!(dir.join(LOCK).exists() && dir.join("notes.txt").exists());
        // A second process (or a second claim) is refused while the lock is held.
        let msg = claim(&dir, Some(&owner), false).unwrap_err().to_string();
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
