//! A run's state and its checkpoint: the persistent region (parameters, momentum, BN
//! statistics) laid out by the schedule, the random streams, the step and epoch, what fixes the
//! step count (batch, training images, epochs, schedule), the history of finished epochs, and
//! the partial sums of an interrupted epoch.
//!
//! Nothing read from a checkpoint is trusted: [`RunMeta::read`] checks every stored value (and
//! [`RunMeta::check_sums`] the epoch's sums against its step), the tensors' names and shapes
//! are checked as the file is read and their values judged before anything is allocated
//! ([`crate::model_file`]). Nothing non-finite is written: [`Snapshot::capture`] refuses a region with a NaN or an
//! infinity. A [`Snapshot`] is reserved before the first step, so that saving allocates
//! nothing large.

use super::lr::LrSchedule;
use super::recorded::Recorded;
use crate::backend::Backend;
use crate::data::loader::Normalization;
use crate::data::DatasetKind;
use crate::error::{Error, Result};
use crate::io::checkpoint::{self, Checkpoint, Tensor};
use crate::io::metrics::{Change, EpochMetrics};
use crate::ir::config::size_text;
use crate::ir::ModelConfig;
use crate::rng::Rng;
use crate::schedule::Schedule;
use std::path::Path;

/// Partial-epoch sums kept across a mid-epoch checkpoint so a resumed run prints the same line.
#[derive(Clone, Copy, Debug, Default)]
pub struct EpochSums {
    pub loss: f64,
    pub correct: f64,
    pub seen: f64,
}

impl EpochSums {
    /// Adds one step's `[mean loss, correct]` over `batch` images.
    pub fn add(&mut self, loss: [f32; 2], batch: usize) {
        self.loss += loss[0] as f64 * batch as f64;
        self.correct += loss[1] as f64;
        self.seen += batch as f64;
    }
}

/// What a checkpoint says about the run that wrote it, besides its tensors and random streams,
/// each value checked. The step-count fields and the history are `None` in checkpoints written
/// before they were stored.
#[derive(Clone, Debug, Default)]
pub struct RunMeta {
    pub batch: Option<usize>,
    /// Training images the run used (after `--limit-train`).
    pub train_images: Option<usize>,
    pub epochs: Option<usize>,
    pub schedule: Option<LrSchedule>,
    /// The metrics of every finished epoch: `metrics.jsonl` and `curves.svg` are rebuilt from it.
    pub history: Option<Vec<EpochMetrics>>,
    /// The run's identity ([`new_run_id`]), drawn at its fresh start and kept through resumes:
    /// tells its files from another run's (`super::folder`). `None` before run ids were stored.
    pub run_id: Option<String>,
    pub best_acc: f64,
    pub sums: EpochSums,
    /// The settings that change the run's numbers (`recorded.rs`).
    pub recorded: Recorded,
}

impl RunMeta {
    /// The metadata of the checkpoint `ck` read from `path`; a value out of range is an error
    /// naming the checkpoint and the key. The epoch's sums are judged alone here, and against
    /// the step by [`RunMeta::check_sums`] once the steps per epoch are known.
    pub fn read(path: &Path, ck: &Checkpoint) -> Result<RunMeta> {
        let bad = |key: &str, expected: &str| bad_meta(path, ck, key, expected);
        let count = |key: &str, min: usize| -> Result<Option<usize>> {
            ck.meta(key)
                .map(|v| {
                    v.parse::<usize>()
                        .ok()
                        .filter(|&n| n >= min)
                        .ok_or_else(|| bad(key, &format!("an integer >= {min}")))
                })
                .transpose()
        };
        let batch = count("batch", 1)?;
        if let Some(b) = batch {
            ck.config.footprint(b).map_err(|e| bad("batch", &e.expected))?;
        }
        let train_images = count("train_images", batch.unwrap_or(1))?;
        let epochs = count("epochs", 1)?;
        // The run's step count must fit, as its flags' had to: else `--epochs` would be blamed.
        if let (Some(e), Some(b), Some(n)) = (epochs, batch, train_images) {
            let per_epoch = n / b;
            if per_epoch.checked_mul(e).is_none() {
                return Err(bad("epochs", &format!("at most {} epochs of {per_epoch} steps", usize::MAX / per_epoch)));
            }
        }
        let schedule = ck
            .meta("schedule")
            .map(|v| LrSchedule::parse(v).ok_or_else(|| bad("schedule", "cosine or step")))
            .transpose()?;
        let history = ck.meta("history").map(|v| serde_json::from_str::<Vec<EpochMetrics>>(v).ok());
        let history = match history {
            Some(Some(h)) if h.len() as u64 == ck.epoch && h.iter().enumerate().all(|(i, m)| m.epoch == i + 1) => {
                Some(h)
            }
            Some(_) => return Err(bad("history", &format!("the metrics of epochs 1 to {}", ck.epoch))),
            None => None,
        };
        let run_id = ck
            .meta("run_id")
            .map(|v| {
                is_run_id(v).then(|| v.to_string()).ok_or_else(|| bad("run_id", "16 lowercase hexadecimal digits"))
            })
            .transpose()?;
        // An absent value reads as 0, as in a checkpoint written at the end of an epoch.
        let number = |key: &str, fits: fn(f64) -> bool, expected: &str| -> Result<f64> {
            let v = ck.meta(key).map_or(Some(0.0), |v| v.parse::<f64>().ok());
            v.filter(|&x| fits(x)).ok_or_else(|| bad(key, expected))
        };
        // Counts of images are sums of whole numbers, exact in f64.
        let whole = |x: f64| x >= 0.0 && x.fract() == 0.0;
        let sums = EpochSums {
            loss: number("epoch_loss", |x| x.is_finite() && x >= 0.0, "a finite number >= 0")?,
            correct: number("epoch_correct", whole, "a whole number >= 0")?,
            seen: number("epoch_seen", whole, "a whole number >= 0")?,
        };
        let best_acc = number("best_acc", |x| (0.0..=1.0).contains(&x), "a number in [0, 1]")?;
        let recorded = Recorded::read(path, ck)?;
        Ok(RunMeta { batch, train_images, epochs, schedule, history, run_id, best_acc, sums, recorded })
    }

    /// The epoch's sums against the position in it: `steps` of `batch` images taken since the
    /// epoch began (what the run adds up is exactly that many images), no more correct
    /// answers than images, and no loss over no images. `ck` and `path` as for [`RunMeta::read`].
    pub fn check_sums(&self, path: &Path, ck: &Checkpoint, steps: u64, batch: usize) -> Result<()> {
        let s = &self.sums;
        let images = steps as f64 * batch as f64;
        if s.seen != images {
            let expected = format!(
                "{images}, the images of the {steps} steps of batch {batch} taken in epoch {}",
                ck.epoch.saturating_add(1)
            );
            return Err(bad_meta(path, ck, "epoch_seen", &expected));
        }
        if s.correct > s.seen {
            let expected = format!("at most epoch_seen, {} (the images classified correctly among them)", s.seen);
            return Err(bad_meta(path, ck, "epoch_correct", &expected));
        }
        if s.seen == 0.0 && s.loss != 0.0 {
            return Err(bad_meta(path, ck, "epoch_loss", "0, since epoch_seen is 0"));
        }
        Ok(())
    }
}

/// A new run identity: 16 hexadecimal digits from the OS's randomness (through the standard
/// library's hasher keys) and the clock, so that two runs never share one by chance.
pub fn new_run_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    h.write_u128(now.as_nanos());
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

/// Whether `v` is a run identity as [`new_run_id`] makes them.
pub fn is_run_id(v: &str) -> bool {
    v.len() == 16 && v.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `metadata KEY 'VALUE' is invalid: expected ...`, naming the checkpoint; a long value is cut.
pub(super) fn bad_meta(path: &Path, ck: &Checkpoint, key: &str, expected: &str) -> Error {
    let value = ck.meta(key).unwrap_or_default();
    let shown = if value.len() > 40 { format!("{}...", &value[..value.floor_char_boundary(40)]) } else { value.into() };
    Error::checkpoint(path, format!("metadata {key} '{shown}' is invalid: expected {expected}"))
}

/// What a snapshot records besides the backend's persistent region.
pub struct RunState<'a> {
    pub config: &'a ModelConfig,
    pub norm: &'a Normalization,
    pub kind: DatasetKind,
    pub step: usize,
    pub epoch: usize,
    pub rngs: [(&'a str, &'a Rng); 3],
    pub best_acc: f64,
    pub sums: EpochSums,
    pub batch: usize,
    pub train_images: usize,
    pub epochs: usize,
    pub schedule: LrSchedule,
    pub history: &'a [EpochMetrics],
    /// The run's identity ([`new_run_id`]).
    pub run_id: &'a str,
    /// The settings that change the numbers, as `recorded::record` writes them.
    pub recorded: &'a [(String, String)],
    /// What a resume changed in the epoch in progress (empty at an epoch's end).
    pub changes: &'a [Change],
}

impl RunState<'_> {
    fn meta(&self) -> Vec<(String, String)> {
        let history = serde_json::to_string(self.history).expect("metrics serialise");
        [
            ("dataset", self.kind.to_string()),
            ("best_acc", self.best_acc.to_string()),
            ("epoch_loss", self.sums.loss.to_string()),
            ("epoch_correct", self.sums.correct.to_string()),
            ("epoch_seen", self.sums.seen.to_string()),
            ("batch", self.batch.to_string()),
            ("train_images", self.train_images.to_string()),
            ("epochs", self.epochs.to_string()),
            ("schedule", self.schedule.as_str().to_string()),
            ("history", history),
            ("run_id", self.run_id.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .chain(self.recorded.iter().cloned())
        .chain(
            (!self.changes.is_empty())
                .then(|| ("changed".to_string(), serde_json::to_string(self.changes).expect("changes serialise"))),
        )
        .collect()
    }

    fn rng_states(&self) -> Vec<(String, Vec<u8>)> {
        self.rngs.iter().map(|(n, r)| (n.to_string(), r.state())).collect()
    }
}

/// A checkpoint's buffers, reserved before the first step: the persistent region read back
/// from the backend, the checkpoint with its tensors, and the bytes of its file (with room for
/// the history to grow).
pub struct Snapshot {
    region: Vec<f32>,
    ck: Checkpoint,
    bytes: Vec<u8>,
}

/// Room reserved for the history's growth: about 200 bytes an epoch, up to this much.
const HISTORY_ROOM: usize = 16 << 20;

impl Snapshot {
    /// Everything a save of a run of `s` needs, or an error saying how much memory is missing.
    pub fn reserve(s: &Schedule, run: &RunState) -> Result<Snapshot> {
        let short = |bytes: usize| {
            Error::Msg(format!(
                "cannot reserve {} of memory for the checkpoints of {}; this machine is short of memory for the model",
                size_text(Some(bytes as u64)),
                run.config.name()
            ))
        };
        let region = crate::oom::zeroed(s.persistent_len()).ok_or_else(|| short(4 * s.persistent_len()))?;
        let mut tensors = Vec::with_capacity(s.tensors.len());
        for t in &s.tensors {
            let data = crate::oom::zeroed(t.len()).ok_or_else(|| short(4 * t.len()))?;
            tensors.push(Tensor { name: t.name.clone(), shape: t.shape.clone(), data });
        }
        let ck = Checkpoint {
            config: *run.config,
            step: run.step as u64,
            epoch: run.epoch as u64,
            tensors,
            rngs: run.rng_states(),
            norm_mean: run.norm.mean.clone(),
            norm_std: run.norm.std.clone(),
            meta: run.meta(),
        };
        let room = checkpoint::encoded_len(&ck) + HISTORY_ROOM.min(run.epochs.saturating_add(64).saturating_mul(256));
        let mut bytes = Vec::new();
        crate::oom::fallible(|| bytes.try_reserve_exact(room)).map_err(|_| short(room))?;
        Ok(Snapshot { region, ck, bytes })
    }

    /// Reads the backend's persistent region and `run` into the checkpoint. A non-finite value
    /// is refused (`Err` says which tensor holds what): a diverged run saves nothing.
    pub fn capture(
        &mut self,
        backend: &mut dyn Backend,
        s: &Schedule,
        run: &RunState,
    ) -> std::result::Result<(), String> {
        backend.get_persistent(&mut self.region);
        if let Some(i) = self.region.iter().position(|x| !x.is_finite()) {
            let name = s.tensors.iter().find(|t| t.range().contains(&i)).map_or("?", |t| t.name.as_str());
            return Err(format!("{name} holds {}", self.region[i]));
        }
        for (t, dst) in s.tensors.iter().zip(&mut self.ck.tensors) {
            dst.data.copy_from_slice(&self.region[t.range()]);
        }
        self.ck.step = run.step as u64;
        self.ck.epoch = run.epoch as u64;
        self.ck.rngs = run.rng_states();
        self.ck.meta = run.meta();
        Ok(())
    }

    /// Writes the captured checkpoint to `path`, atomically.
    pub fn save(&mut self, path: &Path) -> Result<()> {
        checkpoint::save_with(path, &self.ck, &mut self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A checkpoint 2 steps into epoch 3 (batch 4) with `meta`.
    fn checkpoint(meta: &[(&str, &str)]) -> Checkpoint {
        Checkpoint {
            config: ModelConfig { depth: 10, widen: 1, classes: 10, in_channels: 3, keep: 1.0 },
            step: 10,
            epoch: 2,
            tensors: vec![],
            rngs: vec![],
            norm_mean: vec![],
            norm_std: vec![],
            meta: meta.iter().map(|&(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    /// `RunMeta::read`, then `check_sums` for 2 steps of batch 4; the error's text.
    fn refusal(meta: &[(&str, &str)]) -> String {
        let path = Path::new("runs/a.ckpt");
        let ck = checkpoint(meta);
        let read = RunMeta::read(path, &ck).and_then(|m| m.check_sums(path, &ck, 2, 4));
        let msg = read.expect_err(&format!("{meta:?} accepted")).to_string();
        assert!(msg.starts_with("checkpoint runs/a.ckpt: metadata "), "{msg}");
        msg
    }

    #[test]
    fn epoch_sums_must_fit_the_step() {
        let path = Path::new("runs/a.ckpt");
        let sums = [("epoch_loss", "17.5"), ("epoch_correct", "3"), ("epoch_seen", "8")];
        let ck = checkpoint(&sums);
        let meta = RunMeta::read(path, &ck).unwrap();
        meta.check_sums(path, &ck, 2, 4).unwrap();
        assert_eq!((meta.sums.loss, meta.sums.correct, meta.sums.seen), (17.5, 3.0, 8.0));
        // At the start of an epoch everything is zero (or absent, which reads as zero).
        let start = checkpoint(&[("epoch_loss", "0"), ("epoch_correct", "0"), ("epoch_seen", "0")]);
        RunMeta::read(path, &start).unwrap().check_sums(path, &start, 0, 4).unwrap();
        RunMeta::read(path, &checkpoint(&[])).unwrap().check_sums(path, &start, 0, 4).unwrap();

        let with = |key: &str, value: &str| {
            let mut m = sums.to_vec();
            m.retain(|(k, _)| *k != key);
            m.push((key, value));
            refusal(&m)
        };
        let seen = "epoch_seen '12' is invalid: expected 8, the images of the 2 steps of batch 4 taken in epoch 3";
        assert!(with("epoch_seen", "12").contains(seen));
        assert!(with("epoch_seen", "7").contains("expected 8"));
        assert!(with("epoch_correct", "9").contains("epoch_correct '9' is invalid: expected at most epoch_seen, 8"));
        assert!(with("epoch_correct", "2.5").contains("epoch_correct '2.5' is invalid: expected a whole number >= 0"));
        assert!(with("epoch_seen", "-8").contains("epoch_seen '-8' is invalid: expected a whole number >= 0"));
        for loss in ["-1", "NaN", "inf", "1e400", "x"] {
            let msg = with("epoch_loss", loss);
            assert!(msg.contains(&format!("epoch_loss '{loss}' is invalid: expected a finite number >= 0")), "{msg}");
        }
        let msg = refusal(&[("epoch_loss", "2")]);
        assert!(msg.contains("epoch_seen '' is invalid: expected 8"), "{msg}");
        let ck = checkpoint(&[("epoch_loss", "2")]);
        let msg = RunMeta::read(path, &ck).unwrap().check_sums(path, &ck, 0, 4).unwrap_err().to_string();
        assert!(msg.contains("epoch_loss '2' is invalid: expected 0, since epoch_seen is 0"), "{msg}");
    }

    /// A step count past 64 bits is the checkpoint's, not a flag's.
    #[test]
    fn the_runs_step_count_must_fit() {
        let meta = [("batch", "4"), ("train_images", "16"), ("epochs", "18446744073709551615")];
        let msg = refusal(&meta);
        assert!(msg.contains("metadata epochs '18446744073709551615' is invalid: expected at most 4611686018427387903 epochs of 4 steps"), "{msg}");
    }

    /// Run ids are drawn fresh each time and read back as written.
    #[test]
    fn run_ids_are_new_each_time_and_kept() {
        let ids: std::collections::HashSet<String> = (0..100).map(|_| new_run_id()).collect();
        assert_eq!(ids.len(), 100);
        assert!(ids.iter().all(|id| is_run_id(id)));
        let id = new_run_id();
        let meta = RunMeta::read(Path::new("a.ckpt"), &checkpoint(&[("run_id", &id)])).unwrap();
        assert_eq!(meta.run_id, Some(id));
        assert_eq!(RunMeta::read(Path::new("a.ckpt"), &checkpoint(&[])).unwrap().run_id, None);
    }

    /// Bounds are said in words, not as `f64::MAX`'s 309 digits.
    #[test]
    fn refusals_print_their_bounds_readably() {
        for (key, value, expected) in [
            ("epoch_loss", "1e309", "a finite number >= 0"),
            ("epoch_correct", "-1", "a whole number >= 0"),
            ("epoch_seen", "inf", "a whole number >= 0"),
            ("best_acc", "1.5", "a number in [0, 1]"),
            ("run_id", "0123456789ABCDEF", "16 lowercase hexadecimal digits"),
            ("run_id", "", "16 lowercase hexadecimal digits"),
        ] {
            let msg = refusal(&[(key, value)]);
            assert!(msg.ends_with(&format!("metadata {key} '{value}' is invalid: expected {expected}")), "{msg}");
        }
    }
}
