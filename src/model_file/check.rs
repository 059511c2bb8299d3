//! The judging of a model file's tensors: names, shapes and dtypes against the network's
//! parameter listing ([`check_tensors`]) as the file is read, and their values ([`restore`])
//! where they are copied into a persistent region.

use super::{model_tensors, BATCHES_TRACKED};
use crate::data::loader::Normalization;
use crate::error::{Error, Result};
use crate::io::checkpoint::{self, Checkpoint};
use crate::io::safetensors::{Entry, TensorFile, Values};
use crate::ir::config::size_text;
use crate::ir::{ModelConfig, Role, TensorSpec};
use crate::model::params;
use crate::schedule::Schedule;
use std::collections::HashMap;
use std::path::Path;

/// The weights of `file` for the network `config`, checked by [`check_tensors`] (BN step
/// counters allowed), as a checkpoint's tensors.
pub fn weights(path: &Path, file: &TensorFile, config: &ModelConfig) -> Result<Vec<checkpoint::Tensor>> {
    let held = file.entries.iter().map(|e| {
        let data = match &e.values {
            Values::F32(_) => Data::F32,
            Values::I64(v) => Data::I64(v),
        };
        (e.name.as_str(), e.shape.as_slice(), data)
    });
    check_tensors(path, config, held, Extras::BatchesTracked)?;
    let mut tensors = Vec::new();
    for spec in model_tensors(config) {
        if let Some(Entry { values: Values::F32(data), .. }) = file.entry(&spec.name) {
            tensors.push(checkpoint::Tensor { name: spec.name, shape: spec.shape, data: data.clone() });
        }
    }
    Ok(tensors)
}

/// The tensors of the checkpoint `ck` (read from `path`) for the network `config`, checked by
/// [`check_tensors`] (momentum allowed).
pub fn check_checkpoint(path: &Path, ck: &Checkpoint, config: &ModelConfig) -> Result<()> {
    let held = ck.tensors.iter().map(|t| (t.name.as_str(), t.shape.as_slice(), Data::F32));
    check_tensors(path, config, held, Extras::Momentum)
}

/// What a model file may hold besides the network's parameters and BN running statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extras {
    /// A checkpoint: the optimizer's momentum, one per parameter (only resuming needs it).
    Momentum,
    /// A safetensors file: PyTorch's `num_batches_tracked`, one per BN layer.
    BatchesTracked,
}

/// A tensor's dtype as a file holds it, with the values of an I64 one (a step counter, which
/// the check reads).
#[derive(Clone, Copy, Debug)]
pub enum Data<'a> {
    F32,
    I64(&'a [i64]),
}

/// The one check of a model file's tensors `(name, shape, values)` against the network
/// `config`, whatever the format and the command (`eval`, `export`, `train --init`, `train
/// --resume`): every parameter and BN statistic present, F32, of its exact shape; besides them
/// only `extras`, each as sliceout writes it (a momentum as its parameter; a step counter an
/// I64 scalar, shape `[]`, never negative); nothing else. The first problem, in the network's
/// order, is the error: which tensor, what was expected, what was found.
///
/// The network's values are judged where they are used ([`restore`]):
/// `export` converts a file bit for bit, whatever it holds.
pub fn check_tensors<'a>(
    path: &Path,
    config: &ModelConfig,
    held: impl IntoIterator<Item = (&'a str, &'a [usize], Data<'a>)>,
    extras: Extras,
) -> Result<()> {
    let held: Vec<(&str, &[usize], Data)> = held.into_iter().collect();
    let by_name: HashMap<&str, usize> = held.iter().enumerate().map(|(i, h)| (h.0, i)).collect();
    let specs: Vec<TensorSpec> = params::tensors(config)
        .into_iter()
        .filter(|t| t.role != Role::Momentum || extras == Extras::Momentum)
        .collect();
    let fail = |msg: String| Err(Error::checkpoint(path, msg));
    for spec in &specs {
        let Some(&(_, shape, data)) = by_name.get(spec.name.as_str()).map(|&i| &held[i]) else {
            // `state::restore` asks for the momentum when resuming, which alone needs it.
            if spec.role == Role::Momentum {
                continue;
            }
            return fail(format!(
                "has no tensor {}, which {} needs (shape {:?})",
                spec.name,
                config.name(),
                spec.shape
            ));
        };
        if let Data::I64(_) = data {
            return fail(format!("tensor {} is I64, expected F32", spec.name));
        }
        if shape != spec.shape.as_slice() {
            return fail(shape_mismatch(spec, shape, config));
        }
    }
    let is_counter = |name: &str| {
        extras == Extras::BatchesTracked
            && name.strip_suffix(BATCHES_TRACKED).is_some_and(|layer| {
                specs.iter().any(|s| s.role == Role::RunningMean && s.name.strip_suffix(".running_mean") == Some(layer))
            })
    };
    for &(name, shape, data) in &held {
        if specs.iter().any(|s| s.name == name) {
            continue;
        }
        if !is_counter(name) {
            return fail(format!("has tensor {name} (shape {shape:?}), which {} does not have", config.name()));
        }
        let count = match data {
            Data::I64(&[n]) if shape.is_empty() => n,
            Data::I64(_) => {
                return fail(format!("tensor {name}: expected shape [] (a scalar step counter), found {shape:?}"))
            }
            Data::F32 => return fail(format!("tensor {name} is F32, expected I64 (a step counter)")),
        };
        if count < 0 {
            return fail(format!("tensor {name} holds {count}: expected a step counter >= 0"));
        }
    }
    Ok(())
}

/// `tensor NAME: expected shape [..] (the model), found [..]`.
fn shape_mismatch(spec: &TensorSpec, found: &[usize], config: &ModelConfig) -> String {
    format!(
        "tensor {}: expected shape {:?} ({}, {} classes, {} input channels), found {:?}",
        spec.name,
        spec.shape,
        config.name(),
        config.classes,
        config.in_channels,
        found
    )
}

/// The persistent region laid out by `s`, filled from a checkpoint (momentum too when resuming
/// training; evaluation needs none and gets zeros). Names and shapes were checked as the file
/// was read ([`check_tensors`]); here, before anything is allocated,
/// each tensor copied is found, its length compared, and its values judged: finite, and a
/// running variance never negative.
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
        if t.role == Role::RunningVar {
            if let Some(i) = src.data.iter().position(|&x| x < 0.0) {
                return Err(Error::checkpoint(
                    path,
                    format!(
                        "tensor {} holds {} at index {i}: expected a running variance, never negative",
                        t.name, src.data[i]
                    ),
                ));
            }
        }
        sources.push((t.range(), &src.data));
    }
    let len = s.persistent_len();
    let mut region = crate::oom::zeroed(len).ok_or_else(|| {
        Error::checkpoint(path, format!("cannot allocate {} for its model", size_text(Some(4 * len as u64))))
    })?;
    for (range, data) in sources {
        region[range].copy_from_slice(data);
    }
    Ok(region)
}

/// The checkpoint's normalisation constants for `channels` data channels, judged by
/// [`Normalization::check`].
pub fn normalization(path: &Path, ck: &Checkpoint, channels: usize) -> Result<Normalization> {
    if ck.norm_mean.len() != channels || ck.norm_std.len() != channels {
        return Err(Error::checkpoint(
            path,
            format!("normalisation constants are for {} channels, the data has {channels}", ck.norm_mean.len()),
        ));
    }
    let norm = Normalization { mean: ck.norm_mean.clone(), std: ck.norm_std.clone() };
    norm.check().map_err(|msg| Error::checkpoint(path, msg))?;
    Ok(norm)
}
