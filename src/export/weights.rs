//! A trained model as a safetensors file, and back.
//!
//! The file holds every parameter and BN running statistic under sliceout's tensor names, which
//! are the state-dict keys of `scripts/torch/wrn.py`'s `WideResNet` (`conv0.weight`,
//! `block3.bn2.running_var`, `fc.bias`, ...), so `load_state_dict(strict=True)` takes it as it
//! is. PyTorch's BN layers also carry a `num_batches_tracked` buffer: it is written as an int64
//! scalar holding the training steps taken (every step updates every BN layer once), and
//! ignored on reading, since sliceout's BN uses a fixed momentum and never reads it.
//!
//! The metadata map says what the tensors alone do not: `format` (`sliceout-wrn`), `depth`,
//! `widen`, `classes`, `in_channels`, `keep` (what the model was trained with), `norm_mean` and
//! `norm_std` (JSON arrays, one float per input channel: the network sees
//! `(pixel / 255 - mean) / std`), `step`, `dataset` when known, and `input`, a line describing
//! the expected images.

use crate::data::loader::Normalization;
use crate::error::{Error, Result};
use crate::io::checkpoint::{self, Checkpoint};
use crate::io::safetensors::{Entry, TensorFile, Values};
use crate::ir::{ModelConfig, Role, TensorSpec};
use crate::model::wrn;
use crate::schedule::{Mode, Options};
use std::collections::BTreeMap;
use std::path::Path;

/// The `format` metadata value of sliceout's model files.
pub const FORMAT: &str = "sliceout-wrn";
/// The suffix of PyTorch's per-BN-layer step counters.
const BATCHES_TRACKED: &str = ".num_batches_tracked";

/// What a model file is made of: every persistent tensor of the network but the momentum.
pub fn model_tensors(config: &ModelConfig) -> Vec<TensorSpec> {
    let s = wrn::build(config, 1, Mode::Eval, Options::default());
    s.tensors.into_iter().filter(|t| t.role != Role::Momentum).collect()
}

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

/// `ck`'s model as a safetensors file; `path` (where `ck` came from) names it in errors.
pub fn to_tensor_file(path: &Path, ck: &Checkpoint) -> Result<TensorFile> {
    let mut entries = Vec::new();
    for spec in model_tensors(&ck.config) {
        let t = ck.tensor(&spec.name).ok_or_else(|| Error::checkpoint(path, format!("has no tensor {}", spec.name)))?;
        if t.shape != spec.shape || t.data.len() != spec.len() {
            return Err(Error::checkpoint(path, shape_mismatch(&spec, &t.shape, &ck.config)));
        }
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

/// The model configuration and normalisation a file states: all of it for a checkpoint, what
/// its metadata holds for a safetensors file (one written elsewhere may hold none).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stated {
    pub depth: Option<usize>,
    pub widen: Option<usize>,
    pub classes: Option<usize>,
    pub in_channels: Option<usize>,
    pub keep: Option<f64>,
    pub norm: Option<Normalization>,
    pub step: Option<u64>,
}

impl Stated {
    /// What a checkpoint states (everything).
    pub fn of_checkpoint(ck: &Checkpoint) -> Stated {
        let c = ck.config;
        Stated {
            depth: Some(c.depth),
            widen: Some(c.widen),
            classes: Some(c.classes),
            in_channels: Some(c.in_channels),
            keep: Some(c.keep),
            norm: Some(Normalization { mean: ck.norm_mean.clone(), std: ck.norm_std.clone() }),
            step: Some(ck.step),
        }
    }

    /// What a safetensors file's metadata states; a value that does not parse is an error
    /// naming its key.
    pub fn of_metadata(path: &Path, meta: &BTreeMap<String, String>) -> Result<Stated> {
        fn parse<T: std::str::FromStr>(
            path: &Path,
            meta: &BTreeMap<String, String>,
            key: &str,
            what: &str,
        ) -> Result<Option<T>> {
            meta.get(key)
                .map(|v| {
                    v.trim()
                        .parse()
                        .map_err(|_| Error::checkpoint(path, format!("metadata {key} = {v:?}: expected {what}")))
                })
                .transpose()
        }
        let floats = |key: &str| -> Result<Option<Vec<f32>>> {
            meta.get(key)
                .map(|v| {
                    serde_json::from_str::<Vec<f32>>(v).map_err(|_| {
                        Error::checkpoint(path, format!("metadata {key} = {v:?}: expected a JSON array of numbers"))
                    })
                })
                .transpose()
        };
        let norm = match (floats("norm_mean")?, floats("norm_std")?) {
            (Some(mean), Some(std)) => Some(Normalization { mean, std }),
            (None, None) => None,
            _ => return Err(Error::checkpoint(path, "metadata has one of norm_mean and norm_std without the other")),
        };
        if let Some(n) = &norm {
            if n.mean.len() != n.std.len() || n.std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
                return Err(Error::checkpoint(
                    path,
                    "metadata norm_std must hold one positive number per norm_mean entry",
                ));
            }
        }
        Ok(Stated {
            depth: parse(path, meta, "depth", "an integer")?,
            widen: parse(path, meta, "widen", "an integer")?,
            classes: parse(path, meta, "classes", "an integer")?,
            in_channels: parse(path, meta, "in_channels", "an integer")?,
            keep: parse(path, meta, "keep", "a number")?,
            norm,
            step: parse(path, meta, "step", "an integer")?,
        })
    }

    /// The full model configuration, when the file states it (`keep` defaults to 1.0).
    pub fn config(&self, path: &Path) -> Result<ModelConfig> {
        let need = |v: Option<usize>, key: &str| {
            v.ok_or_else(|| {
                Error::checkpoint(
                    path,
                    format!("metadata has no {key}: a model file states depth, widen, classes, in_channels, norm_mean and norm_std"),
                )
            })
        };
        let config = ModelConfig {
            depth: need(self.depth, "depth")?,
            widen: need(self.widen, "widen")?,
            classes: need(self.classes, "classes")?,
            in_channels: need(self.in_channels, "in_channels")?,
            keep: self.keep.unwrap_or(1.0),
        };
        config.validate().map_err(|e| Error::checkpoint(path, format!("metadata states an invalid model: {e}")))?;
        Ok(config)
    }

    /// An error naming every stated field that differs from `config` (the flags and data);
    /// `keep` may differ (fine-tuning at another keep), and so may nothing else.
    pub fn check(&self, path: &Path, config: &ModelConfig) -> Result<()> {
        let stated = ModelConfig {
            depth: self.depth.unwrap_or(config.depth),
            widen: self.widen.unwrap_or(config.widen),
            classes: self.classes.unwrap_or(config.classes),
            in_channels: self.in_channels.unwrap_or(config.in_channels),
            keep: config.keep,
        };
        checkpoint::check_config(path, &stated, config)?;
        match &self.norm {
            Some(n) if n.mean.len() != config.in_channels => Err(Error::checkpoint(
                path,
                format!("normalisation for {} input channels, the model has {}", n.mean.len(), config.in_channels),
            )),
            _ => Ok(()),
        }
    }
}

/// The weights of `file` for the network `config`, checked: every tensor the network needs,
/// as F32 with its exact shape, and nothing else (BN step counters aside). The first problem,
/// in the network's order, is the error: which tensor, the shape expected, the shape found.
pub fn weights(path: &Path, file: &TensorFile, config: &ModelConfig) -> Result<Vec<checkpoint::Tensor>> {
    let specs = model_tensors(config);
    let mut tensors = Vec::with_capacity(specs.len());
    for spec in &specs {
        let Some(e) = file.entry(&spec.name) else {
            return Err(Error::checkpoint(
                path,
                format!("has no tensor {}, which {} needs (shape {:?})", spec.name, config.name(), spec.shape),
            ));
        };
        let Values::F32(data) = &e.values else {
            return Err(Error::checkpoint(path, format!("tensor {} is {}, expected F32", spec.name, e.values.dtype())));
        };
        if e.shape != spec.shape {
            return Err(Error::checkpoint(path, shape_mismatch(spec, &e.shape, config)));
        }
        tensors.push(checkpoint::Tensor { name: spec.name.clone(), shape: spec.shape.clone(), data: data.clone() });
    }
    let known = |name: &str| {
        specs.iter().any(|s| s.name == name)
            || name
                .strip_suffix(BATCHES_TRACKED)
                .is_some_and(|layer| specs.iter().any(|s| s.name.strip_suffix(".running_mean") == Some(layer)))
    };
    if let Some(extra) = file.entries.iter().find(|e| !known(&e.name)) {
        return Err(Error::checkpoint(
            path,
            format!("has tensor {} (shape {:?}), which {} does not have", extra.name, extra.shape, config.name()),
        ));
    }
    Ok(tensors)
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
