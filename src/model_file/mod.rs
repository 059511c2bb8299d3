//! One way in for a model file: a sliceout checkpoint or a safetensors model, read into the
//! network's parameter table ([`crate::model::params`], no schedule built) and judged, for
//! `eval`, `export`, `train --init` and `train --resume` alike, so that each refuses the same
//! files with the same words, naming the file and the tensor or metadata key.
//!
//! - `mod.rs`: telling the formats apart, and what each command takes from a file.
//! - `stated.rs`: what a file states about the model (configuration, normalisation).
//! - `check.rs`: its tensors' names, shapes and dtypes against the network, and their values.
//!
//! A sliceout checkpoint is told apart by its magic bytes and an ONNX model is refused as one;
//! anything else is read as safetensors, its header judged before its data.

mod check;
mod stated;

pub use check::{check_checkpoint, check_tensors, normalization, restore, weights, Data, Extras};
pub use stated::Stated;

use crate::error::{Error, Result};
use crate::io::checkpoint::{self, Checkpoint};
use crate::io::safetensors::{self, TensorFile};
use crate::ir::{ModelConfig, Role, TensorSpec};
use crate::model::params;
use std::io::Read;
use std::path::Path;

/// The suffix of PyTorch's per-BN-layer step counters.
pub const BATCHES_TRACKED: &str = ".num_batches_tracked";

/// What a model file is made of: every persistent tensor of the network but the momentum.
pub fn model_tensors(config: &ModelConfig) -> Vec<TensorSpec> {
    params::tensors(config).into_iter().filter(|t| t.role != Role::Momentum).collect()
}

/// A file holding a model.
pub enum ModelFile {
    Checkpoint(Checkpoint),
    SafeTensors(TensorFile),
}

/// Reads a sliceout checkpoint or a safetensors file.
pub fn read(path: &Path) -> Result<ModelFile> {
    // Anything but a regular file (missing, a folder, a FIFO that would block the read, an
    // endless device) gets the checkpoint reader's message without being opened.
    let Ok(len) = crate::io::regular_file_len(path, "model file") else {
        return checkpoint::load(path).map(ModelFile::Checkpoint);
    };
    let mut head = Vec::with_capacity(16);
    let opened = std::fs::File::open(path).and_then(|f| f.take(16).read_to_end(&mut head));
    opened.map_err(|e| Error::io(path, e))?;
    if head.starts_with(&checkpoint::MAGIC) {
        return checkpoint::load(path).map(ModelFile::Checkpoint);
    }
    if checkpoint::looks_like_onnx(&head) {
        return Err(Error::checkpoint(path, checkpoint::ONNX_GIVEN));
    }
    let not_safetensors = |msg: String| {
        Error::checkpoint(path, format!("not a sliceout checkpoint, and not a usable safetensors file: {msg}"))
    };
    let bytes = safetensors::read_judged(path, len)?.map_err(not_safetensors)?;
    safetensors::decode(&bytes).map(ModelFile::SafeTensors).map_err(not_safetensors)
}

impl ModelFile {
    /// The model configuration and normalisation the file states.
    pub fn stated(&self, path: &Path) -> Result<Stated> {
        match self {
            ModelFile::Checkpoint(ck) => Stated::of_checkpoint(path, ck),
            ModelFile::SafeTensors(f) => Stated::of_metadata(path, &f.metadata),
        }
    }
}

/// A model that describes itself, as `eval` and `export` need it: a checkpoint, or a
/// safetensors file whose metadata states the model and its normalisation and whose tensors
/// are exactly that model's.
pub fn load_model(path: &Path) -> Result<Checkpoint> {
    let file = read(path)?;
    let stated = file.stated(path)?;
    match file {
        ModelFile::Checkpoint(ck) => {
            check_checkpoint(path, &ck, &ck.config)?;
            Ok(ck)
        }
        ModelFile::SafeTensors(f) => {
            let config = stated.config(path)?;
            stated.check(path, &config)?;
            if stated.norm.is_none() {
                return Err(Error::checkpoint(
                    path,
                    "metadata has no norm_mean and norm_std: the normalisation the model was trained with is needed",
                ));
            }
            weights_checkpoint(path, &f, config, stated)
        }
    }
}

/// Weights to start training the network `config` from (`train --init`), whose classes and
/// input channels are those of the dataset in `data`: every tensor is checked against it, and
/// so is what the file states about the model, `keep` aside. The momentum is not taken; the
/// normalisation is, when the file states it (else it is empty).
pub fn load_init(path: &Path, config: &ModelConfig, data: &Path) -> Result<Checkpoint> {
    let file = read(path)?;
    let stated = file.stated(path)?;
    check_data_shape(path, &file, &stated, config, data)?;
    stated.check(path, config)?;
    match file {
        // Its momentum stays behind: `state::restore` copies it only when resuming.
        ModelFile::Checkpoint(ck) => {
            check_checkpoint(path, &ck, config)?;
            Ok(Checkpoint { config: *config, ..ck })
        }
        ModelFile::SafeTensors(f) => weights_checkpoint(path, &f, *config, stated),
    }
}

/// The classes and input channels of the model in `path` against those of the data in `data`
/// (`config`'s): a model for other data is no broken file, so the message names the data. A
/// file that does not state them (a safetensors file from elsewhere) is read by its shapes:
/// the head's bias, the first convolution's weight, the normalisation.
fn check_data_shape(path: &Path, file: &ModelFile, stated: &Stated, config: &ModelConfig, data: &Path) -> Result<()> {
    let shape = |name: &str| -> Option<&[usize]> {
        match file {
            ModelFile::Checkpoint(ck) => ck.tensor(name).map(|t| t.shape.as_slice()),
            ModelFile::SafeTensors(f) => f.entry(name).map(|e| e.shape.as_slice()),
        }
    };
    let classes = stated.classes.or_else(|| match shape("fc.bias") {
        Some(&[c]) => Some(c),
        _ => None,
    });
    let channels = stated.in_channels.or_else(|| match shape("conv0.weight") {
        Some(&[_, c, _, _]) => Some(c),
        _ => stated.norm.as_ref().map(|n| n.mean.len()),
    });
    let differs = |held: Option<usize>, data: usize| held.is_some_and(|h| h != data);
    if !differs(classes, config.classes) && !differs(channels, config.in_channels) {
        return Ok(());
    }
    let known = |n: Option<usize>| n.map_or("unknown".to_string(), |n| n.to_string());
    Err(Error::Msg(format!(
        "--data {} holds {} classes of {} input channel(s), the model in --init {} has {} classes of {} input \
         channel(s): give the --data (and --dataset, --coarse) it was trained on, or a model trained for this data",
        data.display(),
        config.classes,
        config.in_channels,
        path.display(),
        known(classes),
        known(channels)
    )))
}

/// The weights of a safetensors file as a checkpoint of `config` (no optimizer state).
fn weights_checkpoint(path: &Path, file: &TensorFile, config: ModelConfig, stated: Stated) -> Result<Checkpoint> {
    let tensors = weights(path, file, &config)?;
    let norm = stated.norm.unwrap_or(crate::data::loader::Normalization { mean: vec![], std: vec![] });
    let meta = file.metadata.get("dataset").map(|d| vec![("dataset".to_string(), d.clone())]).unwrap_or_default();
    Ok(Checkpoint {
        config,
        step: stated.step.unwrap_or(0),
        epoch: 0,
        tensors,
        rngs: vec![],
        norm_mean: norm.mean,
        norm_std: norm.std,
        meta,
    })
}
