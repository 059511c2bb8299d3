//! Evaluation: the test split through eval programs (full batches, then the remainder), and
//! `sliceout eval`'s whole run from a model file.

use super::Recalibrator;
use crate::backend::{self, Backend, DeviceChoice, Math, SplitId, StepCtx};
use crate::data::loader::Crop;
use crate::data::{self, DatasetKind, Limits};
use crate::error::{Error, Result};
use crate::ir::{Invalid, ModelConfig, Precision};
use crate::model::wrn;
use crate::model_file;
use crate::ops::SgdParams;
use crate::plan::Program;
use crate::schedule::{Lowering, Mode, Options};
use std::path::Path;

/// Runs the test split through eval programs (full batches, then the remainder).
pub struct Evaluator {
    programs: Vec<Program>,
    indices: Vec<usize>,
    crops: Vec<Crop>,
}

impl Evaluator {
    /// Eval programs for full batches and for the remainder of a `len`-image split, with
    /// the default memory options, lowered as `lowering` says (the backend's target, the run's
    /// precision).
    pub fn new(config: &ModelConfig, batch: usize, len: usize, lowering: Lowering) -> Evaluator {
        let batch = batch.min(len.max(1));
        let build = |n| Program::new(wrn::build(config, n, Mode::Eval, Options::default(), lowering));
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
        self.run_with_logits(backend, None)
    }

    /// As [`Evaluator::run`], appending each image's logits (`classes` values, in the split's
    /// order) to `logits` when given.
    pub fn run_with_logits(&mut self, backend: &mut dyn Backend, mut logits: Option<&mut Vec<f32>>) -> (f64, f64) {
        let batch = self.programs[0].schedule.batch;
        let sgd = SgdParams { lr: 0.0, momentum: 0.0, weight_decay: 0.0, nesterov: false };
        let (mut loss, mut correct) = (0f64, 0f64);
        for chunk in self.indices.chunks(batch) {
            let p = if chunk.len() == batch { &self.programs[0] } else { &self.programs[1] };
            backend.fill_batch(p, SplitId::Test, chunk, &self.crops[..chunk.len()]);
            backend.run(p, &StepCtx::new(&[], sgd));
            let mut out = [0f32; 2];
            backend.read(p, p.schedule.loss, &mut out);
            loss += out[0] as f64 * chunk.len() as f64;
            correct += out[1] as f64;
            if let Some(all) = logits.as_deref_mut() {
                let at = all.len();
                all.resize(at + p.schedule.buffers[p.schedule.logits].len, 0.0);
                backend.read(p, p.schedule.logits, &mut all[at..]);
            }
        }
        let len = self.indices.len().max(1) as f64;
        (loss / len, correct / len)
    }
}

/// What `sliceout eval` measured.
pub struct Evaluation {
    pub loss: f64,
    pub acc: f64,
    pub config: ModelConfig,
    /// `(images, classes)`, row-major, in the test split's order.
    pub logits: Vec<f32>,
    pub labels: Vec<u8>,
    /// With `bn_recal`: the test loss and accuracy once BN's running statistics were
    /// recalibrated for the full network, and over how many training batches.
    pub recalibrated: Option<(f64, f64, usize)>,
}

/// What to evaluate, and how.
pub struct EvalRequest<'a> {
    /// A checkpoint, or a safetensors file with sliceout's metadata.
    pub model: &'a Path,
    pub data: &'a Path,
    pub dataset: Option<DatasetKind>,
    pub coarse: bool,
    pub batch: usize,
    pub device: DeviceChoice,
    pub limit_test: Option<usize>,
    /// Also evaluate after recalibrating BN over this many training batches (0: no).
    pub bn_recal: usize,
    /// What activations are stored as (on the CPU; the GPU runs fp32 only).
    pub precision: Precision,
}

/// Test loss, accuracy and logits of a model (a checkpoint, or a safetensors file with
/// sliceout's metadata) on a dataset's test split; the model is rebuilt from the file alone.
/// Every check (flags, model file, data, tensors) comes before the arena is allocated.
pub fn evaluate(r: &EvalRequest) -> Result<Evaluation> {
    let (checkpoint_path, data_dir, batch) = (r.model, r.data, r.batch);
    if batch == 0 {
        return Err(Error::flag("--batch", batch, "an integer >= 1"));
    }
    if r.limit_test == Some(0) {
        return Err(Error::flag("--limit-test", 0, "an integer >= 1 (a number of images)"));
    }
    let mut backend = backend::open(r.device, Math::Tf32, false)?;
    let ck = model_file::load_model(checkpoint_path)?;
    // The training split is needed only to recalibrate: otherwise read none of it.
    let limits = Limits { train: if r.bn_recal > 0 { None } else { Some(0) }, test: r.limit_test };
    let mut ds = data::load_limited(data_dir, r.dataset, r.coarse, limits)?;
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
    let lowering = Lowering { target: backend.target(), precision: r.precision, ..Lowering::default() };
    let mut eval = Evaluator::new(&config, batch, ds.test.len, lowering);
    let recal = (r.bn_recal > 0).then(|| Recalibrator::new(&config, batch, lowering, r.bn_recal, ds.train.len, 0));
    let region = model_file::restore(&eval.program().schedule, checkpoint_path, &ck, false)?;
    let norm = model_file::normalization(checkpoint_path, &ck, ds.channels)?;
    backend.reserve_arena(eval.arena_bytes().max(recal.as_ref().map_or(0, |c| c.arena_bytes())))?;
    backend.set_persistent(&region)?;
    let (channels, labels) = (ds.channels, ds.test.labels.clone());
    backend.upload_split(SplitId::Test, std::mem::take(&mut ds.test), channels, &norm)?;
    let mut logits = Vec::with_capacity(labels.len() * config.classes);
    let (loss, acc) = eval.run_with_logits(&mut *backend, Some(&mut logits));
    let recalibrated = match recal {
        Some(recal) => {
            backend.upload_split(SplitId::Train, std::mem::take(&mut ds.train), channels, &norm)?;
            recal.run(&mut *backend);
            let (loss, acc) = eval.run(&mut *backend);
            Some((loss, acc, recal.batches()))
        }
        None => None,
    };
    Ok(Evaluation { loss, acc, config, logits, labels, recalibrated })
}
