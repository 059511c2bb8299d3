//! The run's TensorBoard events, `OUT/tb/events.out.tfevents.sliceout` (`tensorboard --logdir
//! runs` shows each run folder as a run). The step of every scalar is the global training step:
//! each epoch's end writes, at its last step, `train/loss`, `train/acc`, `test/loss`,
//! `test/acc`, `test/loss_recal` and `test/acc_recal` (with `--bn-recal`), `lr` (its last
//! step's) and `images_per_s`; every [`RUNNING_EVERY`] steps `train/loss_running`, the mean loss
//! of the epoch so far. Accuracies are fractions, as in `metrics.jsonl`.
//!
//! One file a run, appended to as it goes (made by its first event). A run that starts (fresh or
//! resumed) writes it anew:
//! the events of the file it resumes in up to the checkpoint's step (never the steps it will
//! redo), and those of each epoch of the checkpoint's history that the file lacks (an epoch whose
//! events a crash cut off), so that TensorBoard sees each step once.

use crate::error::{Error, Result};
use crate::io::atomic::{check_replaceable, open_regular, remove_stale_temps};
use crate::io::events::{self, Event};
use crate::io::metrics::EpochMetrics;
use prost::Message;
use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The events file's folder in a run folder.
pub const FOLDER: &str = "tb";
/// The events file's name ("tfevents" in it is what TensorBoard looks for).
pub const FILE: &str = "events.out.tfevents.sliceout";
/// Steps between two `train/loss_running` scalars.
pub const RUNNING_EVERY: usize = 50;

/// The events file of the run folder `out`.
pub fn path(out: &Path) -> PathBuf {
    out.join(FOLDER).join(FILE)
}

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// The scalars written at the end of epoch `m`, trained at learning rate `lr` last.
pub fn epoch_scalars(m: &EpochMetrics, lr: f64) -> Vec<(&'static str, f64)> {
    let mut s = vec![
        ("train/loss", m.train_loss),
        ("train/acc", m.train_acc),
        ("test/loss", m.test_loss),
        ("test/acc", m.test_acc),
    ];
    s.extend(m.test_loss_recal.map(|v| ("test/loss_recal", v)));
    s.extend(m.test_acc_recal.map(|v| ("test/acc_recal", v)));
    s.extend([("lr", lr), ("images_per_s", m.images_per_s)]);
    s
}

/// Writes the events file of `out` anew for a run starting at step `done` with `history` done
/// (`per_epoch` steps an epoch; `lr_at(t)` the rate of step `t`). `keep_old`: the file there is
/// the run's own (a resume in its folder), whose events up to `done` are kept.
pub fn start(
    out: &Path,
    history: &[EpochMetrics],
    per_epoch: usize,
    done: usize,
    keep_old: bool,
    lr_at: impl Fn(usize) -> f64,
) -> Result<()> {
    let folder = out.join(FOLDER);
    if folder.is_dir() {
        remove_stale_temps(&folder, &[FILE])?;
    }
    let path = path(out);
    // A link or FIFO there is refused before any training, not removed nor written through.
    check_replaceable(&path)?;
    let old = if keep_old && fs::symlink_metadata(&path).is_ok() { read(&path)? } else { vec![] };
    let kept: Vec<Event> =
        old.into_iter().filter(|e| e.file_version.is_none() && e.step >= 0 && e.step as usize <= done).collect();
    let has_epoch = |step: usize| kept.iter().any(|e| e.step as usize == step && e.tags().any(|t| t == "test/acc"));
    // (step, order at that step, record): an epoch's scalars after the running loss of its step.
    let mut recs: Vec<(usize, u8, Vec<u8>)> =
        kept.iter().map(|e| (e.step as usize, 0, events::record(&e.encode_to_vec()))).collect();
    for m in history {
        let step = m.epoch * per_epoch;
        if step <= done && !has_epoch(step) {
            recs.push((step, 1, events::scalars_record(now(), step as u64, &epoch_scalars(m, lr_at(step - 1)))));
        }
    }
    recs.sort_by_key(|r| (r.0, r.1));
    if recs.is_empty() {
        // Nothing to show yet: no file, as no other file of a run before its first checkpoint
        // ([`append`] starts one).
        return match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(&path, e)),
            _ => Ok(()),
        };
    }
    fs::create_dir_all(&folder).map_err(|e| Error::io(&folder, e))?;
    let mut bytes = events::file_version_record(now());
    for (_, _, r) in recs {
        bytes.extend(r);
    }
    crate::io::write_atomic(&path, &bytes)
}

/// The events of the file at `path`, up to a torn or corrupt record.
pub fn read(path: &Path) -> Result<Vec<Event>> {
    let mut bytes = Vec::new();
    let mut file = open_regular(path, OpenOptions::new().read(true), false)?;
    file.read_to_end(&mut bytes).map_err(|e| Error::io(path, e))?;
    Ok(events::events(&bytes))
}

/// Appends one event of `scalars` at `step` to the events file of `out`, in one write; `sync`
/// makes it durable (an epoch's end), else it is left to the OS (the running loss).
pub fn append(out: &Path, step: usize, scalars: &[(&str, f64)], sync: bool) -> Result<()> {
    let path = path(out);
    let folder = out.join(FOLDER);
    fs::create_dir_all(&folder).map_err(|e| Error::io(&folder, e))?;
    let mut file = open_regular(&path, OpenOptions::new().create(true).append(true), true)?;
    let len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
    // A new file starts with its version; one write, so a kill leaves whole records or a torn last.
    let mut rec = if len == 0 { events::file_version_record(now()) } else { vec![] };
    rec.extend(events::scalars_record(now(), step as u64, scalars));
    file.write_all(&rec)
        .and_then(|_| file.flush())
        .and_then(|_| if sync { file.sync_data() } else { Ok(()) })
        .map_err(|e| Error::io(&path, e))
}
