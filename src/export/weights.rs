//! A trained model as a safetensors file.
//!
//! The file holds every parameter and BN running statistic under sliceout's tensor names, which
//! are the state-dict keys of `scripts/torch/wrn.py`'s `WideResNet` (`conv0.weight`,
//! `block3.bn2.running_var`, `fc.bias`, ...), so `load_state_dict(strict=True)` takes it as it
//! is. PyTorch's BN layers also carry a `num_batches_tracked` buffer: it is written as an int64
//! scalar holding the training steps taken (every step updates every BN layer once); on reading
//! it must be such a scalar, never negative, and is then ignored, since sliceout's BN uses a
//! fixed momentum and never reads it (`crate::model_file` reads such files back).
//!
//! The metadata map says what the tensors alone do not: `format` (`sliceout-wrn`), `depth`,
//! `widen`, `classes`, `in_channels`, `keep` (what the model was trained with), `norm_mean` and
//! `norm_std` (JSON arrays, one float per input channel: the network sees
//! `(pixel / 255 - mean) / std`), `step`, `dataset` when known, and `input`, a line describing
//! the expected images.

use crate::error::{Error, Result};
use crate::io::checkpoint::Checkpoint;
use crate::io::safetensors::{Entry, TensorFile, Values};
use crate::model_file::{model_tensors, BATCHES_TRACKED};
use std::collections::BTreeMap;
use std::path::Path;

/// The `format` metadata value of sliceout's model files.
pub const FORMAT: &str = "sliceout-wrn";

/// The metadata of `ck`'s model (also the ONNX file's metadata properties).
pub fn metadata(ck: &Checkpoint) -> BTreeMap<String, String> {
    let c = &ck.config;
    let json = |v: &[f32]| serde_json::to_string(v).expect("floats serialise");
    let mut m: BTreeMap<String, String> = [
        ("format", FORMAT.to_string()),
        ("depth", c.depth.to_string()),
        ("widen", c.widen.to_string()),
        ("classes", c.classes.to_string()),
        ("in_channels", c.in_channels.to_string()),
        ("keep", c.keep.to_string()),
        ("norm_mean", json(&ck.norm_mean)),
        ("norm_std", json(&ck.norm_std)),
        ("step", ck.step.to_string()),
        (
            "input",
            format!(
                "float32 (N, {}, 32, 32) NCHW images, pixel / 255 in 0..1 (28x28 images zero-padded by 2), normalised as (x - norm_mean) / norm_std",
                c.in_channels
            ),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    if let Some(d) = ck.meta("dataset") {
        m.insert("dataset".into(), d.to_string());
    }
    m
}

/// `ck`'s model as a safetensors file; `path` (where `ck` came from) names it in errors. `ck` is
/// as [`crate::model_file::load_model`] returns it: its tensors were checked by
/// [`crate::model_file::check_tensors`].
pub fn to_tensor_file(path: &Path, ck: &Checkpoint) -> Result<TensorFile> {
    let mut entries = Vec::new();
    for spec in model_tensors(&ck.config) {
        let t = ck.tensor(&spec.name).ok_or_else(|| Error::checkpoint(path, format!("has no tensor {}", spec.name)))?;
        entries.push(Entry { name: spec.name.clone(), shape: spec.shape.clone(), values: Values::F32(t.data.clone()) });
        if let Some(layer) = spec.name.strip_suffix(".running_mean") {
            let steps = i64::try_from(ck.step).unwrap_or(i64::MAX);
            entries.push(Entry {
                name: format!("{layer}{BATCHES_TRACKED}"),
                shape: vec![],
                values: Values::I64(vec![steps]),
            });
        }
    }
    Ok(TensorFile { entries, metadata: metadata(ck) })
}
