//! A trained model leaving sliceout and coming back: the model as a safetensors file (tensor
//! names and shapes of `scripts/torch/wrn.py`'s PyTorch module, metadata for a loader), the
//! test-time network as an ONNX graph, and the reading side, where a safetensors file is checked
//! against the network it is meant for.
//!
//! - `weights.rs`: checkpoint -> safetensors and back, the metadata, the checks.
//! - `onnx.rs`: the eval schedule -> an ONNX graph; `proto.rs`: the ONNX messages for `prost`.
//!
//! Every command that reads a model (`eval`, `export`, `train --init`) takes either format: a
//! sliceout checkpoint is told apart by its magic bytes and an ONNX model is refused as one;
//! anything else is read as safetensors, its header judged before its data.

pub mod onnx;
pub mod proto;
pub mod weights;

pub use weights::{Stated, FORMAT};

use crate::error::{Error, Result};
use crate::io::checkpoint::{self, Checkpoint};
use crate::io::safetensors::{self, TensorFile};
use crate::ir::ModelConfig;
use prost::Message;
use std::io::Read;
use std::path::Path;

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
            weights::check_checkpoint(path, &ck, &ck.config)?;
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
            weights::check_checkpoint(path, &ck, config)?;
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
    let tensors = weights::weights(path, file, &config)?;
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

/// Writes `ck`'s model (read from `source`) as safetensors to `out`.
pub fn save_safetensors(out: &Path, source: &Path, ck: &Checkpoint) -> Result<()> {
    safetensors::save(out, &weights::to_tensor_file(source, ck)?)
}

/// Writes `ck`'s test-time network (read from `source`) as an ONNX model to `out`.
pub fn save_onnx(out: &Path, source: &Path, ck: &Checkpoint) -> Result<()> {
    let model = onnx::model(ck, &weights::metadata(ck)).map_err(|msg| Error::checkpoint(source, msg))?;
    crate::io::write_atomic(out, &model.encode_to_vec())
}
