//! A run's state and its checkpoint: the persistent region (parameters, momentum, BN
//! statistics) laid out by the schedule, the random streams, the step and epoch, what fixes the
//! step count (batch, training images, epochs, schedule), the history of finished epochs, and
//! the partial sums of an interrupted epoch.
//!
//! Nothing read from a checkpoint is trusted: [`RunMeta::read`] checks every stored value and
//! [`restore`] checks every tensor (present, sized for the model, finite) before anything is
//! allocated for it. Nothing non-finite is written: [`Snapshot::capture`] refuses a region with
//! a NaN or an infinity. A [`Snapshot`] is reserved before the first step, so that saving
//! allocates nothing large.

use super::lr::LrSchedule;
use crate::backend::Backend;
use crate::data::loader::Normalization;
use crate::data::DatasetKind;
use crate::error::{Error, Result};
use crate::io::checkpoint::{self, Checkpoint, Tensor};
use crate::io::metrics::EpochMetrics;
use crate::ir::config::size_text;
use crate::ir::{ModelConfig, Role};
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
    pub best_acc: f64,
    pub sums: EpochSums,
}

impl RunMeta {
    /// The metadata of the checkpoint `ck` read from `path`; a value out of range is an error
    /// naming the checkpoint and the key.
    pub fn read(path: &Path, ck: &Checkpoint) -> Result<RunMeta> {
        let bad = |key: &str, expected: &str| {
            let value = ck.meta(key).unwrap_or_default();
            let shown =
                if value.len() > 40 { format!("{}...", &value[..value.floor_char_boundary(40)]) } else { value.into() };
            Error::checkpoint(path, format!("metadata {key} '{shown}' is invalid: expected {expected}"))
        };
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
        let number = |key: &str, max: f64| -> Result<f64> {
            let v = ck.meta(key).map_or(Some(0.0), |v| v.parse::<f64>().ok());
            v.filter(|x| (0.0..=max).contains(x)).ok_or_else(|| bad(key, &format!("a number in [0, {max}]")))
        };
        let sums = EpochSums {
            loss: number("epoch_loss", f64::MAX)?,
            correct: number("epoch_correct", f64::MAX)?,
            seen: number("epoch_seen", f64::MAX)?,
        };
        Ok(RunMeta { batch, train_images, epochs, schedule, history, best_acc: number("best_acc", 1.0)?, sums })
    }
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
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
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
        let region = zeroed(s.persistent_len()).ok_or_else(|| short(4 * s.persistent_len()))?;
        let mut tensors = Vec::with_capacity(s.tensors.len());
        for t in &s.tensors {
            let data = zeroed(t.len()).ok_or_else(|| short(4 * t.len()))?;
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
        bytes.try_reserve_exact(room).map_err(|_| short(room))?;
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

/// `len` zeros, or `None` when the allocator refuses.
fn zeroed(len: usize) -> Option<Vec<f32>> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).ok()?;
    v.resize(len, 0.0);
    Some(v)
}

/// The persistent region laid out by `s`, filled from a checkpoint (momentum too when resuming
/// training; evaluation needs none and gets zeros). Every tensor is checked first (present,
/// sized for the model, finite), so a checkpoint of another model costs no allocation.
pub fn restore(s: &Schedule, path: &Path, ck: &Checkpoint, momentum: bool) -> Result<Vec<f32>> {
    let mut sources = Vec::with_capacity(s.tensors.len());
    for t in s.tensors.iter().filter(|t| momentum || t.role != Role::Momentum) {
        let src = ck.tensor(&t.name).ok_or_else(|| Error::checkpoint(path, format!("has no tensor {}", t.name)))?;
        if src.data.len() != t.len() {
            return Err(Error::checkpoint(
                path,
                format!("tensor {} has {} values, the model needs {}", t.name, src.data.len(), t.len()),
            ));
        }
        if let Some(i) = src.data.iter().position(|x| !x.is_finite()) {
            return Err(Error::checkpoint(
                path,
                format!(
                    "tensor {} holds {} at index {i}: the run had diverged when this was saved; use an earlier checkpoint",
                    t.name, src.data[i]
                ),
            ));
        }
        sources.push((t.range(), &src.data));
    }
    let len = s.persistent_len();
    let mut region = zeroed(len).ok_or_else(|| {
        Error::checkpoint(path, format!("cannot allocate {} for its model", size_text(Some(4 * len as u64))))
    })?;
    for (range, data) in sources {
        region[range].copy_from_slice(data);
    }
    Ok(region)
}

/// The checkpoint's normalisation constants for `channels` data channels: one finite mean and
/// one finite, positive deviation per channel.
pub fn normalization(path: &Path, ck: &Checkpoint, channels: usize) -> Result<Normalization> {
    if ck.norm_mean.len() != channels || ck.norm_std.len() != channels {
        return Err(Error::checkpoint(
            path,
            format!("normalisation constants are for {} channels, the data has {channels}", ck.norm_mean.len()),
        ));
    }
    let fine = ck.norm_mean.iter().all(|m| m.is_finite()) && ck.norm_std.iter().all(|s| s.is_finite() && *s > 0.0);
    if !fine {
        return Err(Error::checkpoint(
            path,
            format!(
                "normalisation constants {:?} / {:?} are not finite means and positive deviations",
                ck.norm_mean, ck.norm_std
            ),
        ));
    }
    Ok(Normalization { mean: ck.norm_mean.clone(), std: ck.norm_std.clone() })
}
