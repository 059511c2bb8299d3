//! A run's state and its checkpoint: the persistent region (parameters, momentum, BN
//! statistics) laid out by the schedule, the random streams, the step and epoch, and the
//! partial sums of an interrupted epoch.

use crate::backend::Backend;
use crate::data::loader::Normalization;
use crate::data::DatasetKind;
use crate::error::{Error, Result};
use crate::io::checkpoint::{self, Checkpoint};
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

/// Copies a checkpoint's tensors into the persistent region `region` laid out by `s` (momentum
/// too when resuming training; evaluation needs none).
pub fn restore(region: &mut [f32], s: &Schedule, path: &Path, ck: &Checkpoint, momentum: bool) -> Result<()> {
    for t in s.tensors.iter().filter(|t| momentum || t.role != Role::Momentum) {
        let src = ck.tensor(&t.name).ok_or_else(|| Error::checkpoint(path, format!("has no tensor {}", t.name)))?;
        if src.data.len() != t.len() {
            return Err(Error::checkpoint(
                path,
                format!("tensor {} has {} values, the model needs {}", t.name, src.data.len(), t.len()),
            ));
        }
        region[t.range()].copy_from_slice(&src.data);
    }
    Ok(())
}

/// A number from the checkpoint's metadata (0 when absent).
pub fn meta_f64(ck: &Checkpoint, key: &str) -> f64 {
    ck.meta(key).and_then(|v| v.parse().ok()).unwrap_or(0.0)
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
}

/// The run as a checkpoint, with the persistent region read back from the backend.
pub fn snapshot(backend: &mut dyn Backend, s: &Schedule, run: &RunState) -> Checkpoint {
    let mut region = vec![0f32; s.persistent_len()];
    backend.get_persistent(&mut region);
    Checkpoint {
        config: *run.config,
        step: run.step as u64,
        epoch: run.epoch as u64,
        tensors: s
            .tensors
            .iter()
            .map(|t| checkpoint::Tensor {
                name: t.name.clone(),
                shape: t.shape.clone(),
                data: region[t.range()].to_vec(),
            })
            .collect(),
        rngs: run.rngs.iter().map(|(n, r)| (n.to_string(), r.state())).collect(),
        norm_mean: run.norm.mean.clone(),
        norm_std: run.norm.std.clone(),
        meta: vec![
            ("dataset".into(), run.kind.to_string()),
            ("best_acc".into(), run.best_acc.to_string()),
            ("epoch_loss".into(), run.sums.loss.to_string()),
            ("epoch_correct".into(), run.sums.correct.to_string()),
            ("epoch_seen".into(), run.sums.seen.to_string()),
        ],
    }
}
