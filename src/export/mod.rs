//! A trained model leaving sliceout: the model as a safetensors file (tensor names and shapes
//! of `scripts/torch/wrn.py`'s PyTorch module, metadata for a loader) and its test-time network
//! as an ONNX graph. Reading a model file back, either format, is `crate::model_file`'s.
//!
//! - `weights.rs`: checkpoint -> safetensors, the metadata.
//! - `onnx.rs`: the eval schedule -> an ONNX graph; `proto.rs`: the ONNX messages for `prost`.

pub mod onnx;
pub mod proto;
pub mod weights;

pub use weights::FORMAT;

use crate::error::{Error, Result};
use crate::io::checkpoint::Checkpoint;
use crate::io::safetensors;
use prost::Message;
use std::path::Path;

/// Writes `ck`'s model (read from `source`) as safetensors to `out`.
pub fn save_safetensors(out: &Path, source: &Path, ck: &Checkpoint) -> Result<()> {
    safetensors::save(out, &weights::to_tensor_file(source, ck)?)
}

/// Writes `ck`'s test-time network (read from `source`) as an ONNX model to `out`.
pub fn save_onnx(out: &Path, source: &Path, ck: &Checkpoint) -> Result<()> {
    let model = onnx::model(ck, &weights::metadata(ck)).map_err(|msg| Error::checkpoint(source, msg))?;
    crate::io::write_atomic(out, &model.encode_to_vec())
}
