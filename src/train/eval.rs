//! Evaluation: the test split through eval programs (full batches, then the remainder), and
//! `sliceout eval`'s whole run from a checkpoint.

use super::state;
use crate::backend::{self, Backend, DeviceChoice, Math, SplitId, StepCtx};
use crate::data::loader::Crop;
use crate::data::{self, DatasetKind, Limits};
use crate::error::{Error, Result};
use crate::io::checkpoint;
use crate::ir::{Invalid, ModelConfig};
use crate::model::wrn;
use crate::ops::SgdParams;
use crate::plan::Program;
use crate::schedule::{Mode, Options};
use std::path::Path;

/// Runs the test split through eval programs (full batches, then the remainder).
pub struct Evaluator {
    programs: Vec<Program>,
    indices: Vec<usize>,
    crops: Vec<Crop>,
}

impl Evaluator {
    /// Eval programs for full batches and for the remainder of a `len`-image split.
    pub fn new(config: &ModelConfig, batch: usize, len: usize) -> Evaluator {
        let batch = batch.min(len.max(1));
        let build = |n| Program::new(wrn::build(config, n, Mode::Eval, Options::default()));
        let mut programs = vec![build(batch)];
        if !len.is_multiple_of(batch) {
            programs.push(build(len % batch));
        }
        Evaluator { programs, indices: (0..len).collect(), crops: vec![Crop::IDENTITY; batch] }
    }

    pub fn arena_bytes(&self) -> usize {
        self.programs.iter().map(|p| p.arena_bytes()).max().unwrap_or(0)
    }

    /// The full-batch program (its schedule lays out the persistent region).
    pub fn program(&self) -> &Program {
        &self.programs[0]
    }

    /// (mean loss, accuracy) over the resident test split.
    pub fn run(&mut self, backend: &mut dyn Backend) -> (f64, f64) {
        let batch = self.programs[0].schedule.batch;
        let sgd = SgdParams { lr: 0.0, momentum: 0.0, weight_decay: 0.0, nesterov: false };
        let (mut loss, mut correct) = (0f64, 0f64);
        for chunk in self.indices.chunks(batch) {
            let p = if chunk.len() == batch { &self.programs[0] } else { &self.programs[1] };
            backend.fill_batch(p, SplitId::Test, chunk, &self.crops[..chunk.len()]);
            backend.run(p, &StepCtx { starts: &[], sgd });
            let mut out = [0f32; 2];
            backend.read(p, p.schedule.loss, &mut out);
            loss += out[0] as f64 * chunk.len() as f64;
            correct += out[1] as f64;
        }
        let len = self.indices.len().max(1) as f64;
        (loss / len, correct / len)
    }
}

/// Test loss and accuracy of a checkpoint on a dataset's test split; the model is rebuilt from
/// the checkpoint alone. Every check (flags, checkpoint, data, tensors) comes before the arena
/// is allocated.
pub fn evaluate(
    checkpoint_path: &Path,
    data_dir: &Path,
    dataset: Option<DatasetKind>,
    coarse: bool,
    batch: usize,
    device: DeviceChoice,
    limit_test: Option<usize>,
) -> Result<(f64, f64, ModelConfig)> {
    if batch == 0 {
        return Err(Error::flag("--batch", batch, "an integer >= 1"));
    }
    if limit_test == Some(0) {
        return Err(Error::flag("--limit-test", 0, "an integer >= 1 (a number of images)"));
    }
    let ck = checkpoint::load(checkpoint_path)?;
    // The training split is not needed: read none of it.
    let limits = Limits { train: Some(0), test: limit_test };
    let mut ds = data::load_limited(data_dir, dataset, coarse, limits)?;
    let config = ck.config;
    if ds.classes != config.classes || ds.channels != config.in_channels {
        return Err(Error::checkpoint(
            checkpoint_path,
            format!(
                "the model has {} classes and {} input channels, the data in {} has {} and {}",
                config.classes,
                config.in_channels,
                data_dir.display(),
                ds.classes,
                ds.channels
            ),
        ));
    }
    config.footprint(batch.min(ds.test.len)).map_err(Invalid::flag)?;
    let mut eval = Evaluator::new(&config, batch, ds.test.len);
    let region = state::restore(&eval.program().schedule, checkpoint_path, &ck, false)?;
    let norm = state::normalization(checkpoint_path, &ck, ds.channels)?;
    let mut backend = backend::open(device, Math::Tf32, false)?;
    backend.reserve_arena(eval.arena_bytes())?;
    backend.set_persistent(&region)?;
    let channels = ds.channels;
    backend.upload_split(SplitId::Test, std::mem::take(&mut ds.test), channels, &norm)?;
    let (loss, acc) = eval.run(&mut *backend);
    Ok((loss, acc, config))
}
