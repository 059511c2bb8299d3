//! A trained model as a safetensors file, and back.
//!
//! The file holds every parameter and BN running statistic under sliceout's tensor names, which
//! are the state-dict keys of `scripts/torch/wrn.py`'s `WideResNet` (`conv0.weight`,
//! `block3.bn2.running_var`, `fc.bias`, ...), so `load_state_dict(strict=True)` takes it as it
//! is. PyTorch's BN layers also carry a `num_batches_tracked` buffer: it is written as an int64
//! scalar holding the training steps taken (every step updates every BN layer once); on reading
//! it must be such a scalar, never negative, and is then ignored, since sliceout's BN uses a
//! fixed momentum and never reads it.
//!
//! Every reader of a model file, checkpoint or safetensors, checks its tensors with
//! [`check_tensors`] and what it states with [`Stated`], so `eval`, `export` and `train` refuse
//! the same files with the same words, naming the file and the tensor or metadata key.
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
use std::collections::{BTreeMap, HashMap};
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

/// `ck`'s model as a safetensors file; `path` (where `ck` came from) names it in errors. `ck` is
/// as [`crate::export::load_model`] returns it: its tensors were checked by [`check_tensors`].
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
    /// What the checkpoint `ck` (read from `path`) states: everything; its configuration was
    /// judged as it was read, its normalisation is judged here.
    pub fn of_checkpoint(path: &Path, ck: &Checkpoint) -> Result<Stated> {
        let c = ck.config;
        let norm = Normalization { mean: ck.norm_mean.clone(), std: ck.norm_std.clone() };
        norm.check().map_err(|msg| Error::checkpoint(path, msg))?;
        Ok(Stated {
            depth: Some(c.depth),
            widen: Some(c.widen),
            classes: Some(c.classes),
            in_channels: Some(c.in_channels),
            keep: Some(c.keep),
            norm: Some(norm),
            step: Some(ck.step),
        })
    }

    /// What a safetensors file's metadata states, judged as a checkpoint's configuration and
    /// normalisation are; a value that does not parse, or is out of range, is an error naming
    /// the file and its key (never a flag: the user gave none).
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
                .map(|v| f32_array(v).map_err(|msg| Error::checkpoint(path, format!("metadata {key} {msg}"))))
                .transpose()
        };
        let norm = match (floats("norm_mean")?, floats("norm_std")?) {
            (Some(mean), Some(std)) => Some(Normalization { mean, std }),
            (None, None) => None,
            _ => return Err(Error::checkpoint(path, "metadata has one of norm_mean and norm_std without the other")),
        };
        if let Some(n) = &norm {
            n.check().map_err(|msg| Error::checkpoint(path, format!("metadata {msg}")))?;
        }
        let stated = Stated {
            depth: parse(path, meta, "depth", "an integer")?,
            widen: parse(path, meta, "widen", "an integer")?,
            classes: parse(path, meta, "classes", "an integer")?,
            in_channels: parse(path, meta, "in_channels", "an integer")?,
            keep: parse(path, meta, "keep", "a number")?,
            norm,
            step: parse(path, meta, "step", "an integer")?,
        };
        // The stated values are judged by `footprint` as a checkpoint's configuration is; those
        // the file leaves out are taken as the smallest model's, which is never the one at fault.
        let smallest = ModelConfig { depth: 10, widen: 1, classes: 2, in_channels: 1, keep: 1.0 };
        let judged = ModelConfig {
            depth: stated.depth.unwrap_or(smallest.depth),
            widen: stated.widen.unwrap_or(smallest.widen),
            classes: stated.classes.unwrap_or(smallest.classes),
            in_channels: stated.in_channels.unwrap_or(smallest.in_channels),
            keep: stated.keep.unwrap_or(smallest.keep),
        };
        judged.footprint(1).map_err(|e| {
            let msg = match meta.get(e.field) {
                Some(v) => format!("metadata {} = {v:?}: expected {}", e.field, e.expected),
                None => format!("metadata states a model out of range: expected {}", e.expected),
            };
            Error::checkpoint(path, msg)
        })?;
        Ok(stated)
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
        // Judged as they were read (by `of_metadata`, or by the checkpoint reader).
        Ok(ModelConfig {
            depth: need(self.depth, "depth")?,
            widen: need(self.widen, "widen")?,
            classes: need(self.classes, "classes")?,
            in_channels: need(self.in_channels, "in_channels")?,
            keep: self.keep.unwrap_or(1.0),
        })
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

/// A metadata value holding a JSON array of f32 values; `Err` says what is wrong after the key
/// (`= "[1e39]": norm value 0 (1e39) is out of f32 range ...`).
fn f32_array(text: &str) -> std::result::Result<Vec<f32>, String> {
    let out_of_range = |what: &str| {
        format!("= {text:?}: {what} is out of f32 range (f32 holds 0 and magnitudes from 1.4e-45 to 3.4e38)")
    };
    let values =
        serde_json::from_str::<Vec<f64>>(text).map_err(|e| match e.to_string().contains("number out of range") {
            true => out_of_range("a number"),
            false => format!("= {text:?}: expected a JSON array of numbers"),
        })?;
    values
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            let f = x as f32;
            // Not an f32: too large (infinite as one) or too small (zero as one).
            match f.is_infinite() || (x != 0.0 && f == 0.0) {
                true => Err(out_of_range(&format!("value {i} ({x:?})"))),
                false => Ok(f),
            }
        })
        .collect()
}

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
/// The network's values are judged where they are used (`train::state::restore`):
/// `export` converts a file bit for bit, whatever it holds.
pub fn check_tensors<'a>(
    path: &Path,
    config: &ModelConfig,
    held: impl IntoIterator<Item = (&'a str, &'a [usize], Data<'a>)>,
    extras: Extras,
) -> Result<()> {
    let held: Vec<(&str, &[usize], Data)> = held.into_iter().collect();
    let by_name: HashMap<&str, usize> = held.iter().enumerate().map(|(i, h)| (h.0, i)).collect();
    let specs: Vec<TensorSpec> = wrn::build(config, 1, Mode::Eval, Options::default())
        .tensors
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

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|&(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// Normalisation constants that JSON and f64 hold but f32 does not are said to be out of f32
    /// range, naming the key and the value.
    #[test]
    fn metadata_numbers_out_of_f32_range_say_so() {
        let path = Path::new("m.safetensors");
        let norm = |mean: &str| metadata(&[("norm_mean", mean), ("norm_std", "[0.25]")]);
        for (mean, value) in [
            ("[1e39]", "value 0 (1e39)"),
            ("[-4e38]", "value 0 (-4e38)"),
            ("[1e-50]", "value 0 (1e-50)"),
            ("[1e400]", "a number"),
        ] {
            let msg = Stated::of_metadata(path, &norm(mean)).unwrap_err().to_string();
            let want =
                format!("checkpoint m.safetensors: metadata norm_mean = \"{mean}\": {value} is out of f32 range");
            assert!(msg.starts_with(&want), "{msg}");
        }
        let stated = Stated::of_metadata(path, &norm("[0.5]")).unwrap();
        assert_eq!(stated.norm.unwrap().mean, vec![0.5]);
        let msg = Stated::of_metadata(path, &norm("[\"x\"]")).unwrap_err().to_string();
        assert!(msg.ends_with("expected a JSON array of numbers"), "{msg}");
    }

    /// A stated value out of range names the file and its metadata key, never a flag; a file
    /// stating only some values is judged on those.
    #[test]
    fn stated_values_are_judged_by_key() {
        let path = Path::new("m.safetensors");
        let full = [("depth", "16"), ("widen", "2"), ("classes", "10"), ("in_channels", "3"), ("keep", "0.5")];
        let stated = Stated::of_metadata(path, &metadata(&full)).unwrap();
        assert_eq!(
            stated.config(path).unwrap(),
            ModelConfig { depth: 16, widen: 2, classes: 10, in_channels: 3, keep: 0.5 }
        );
        assert!(Stated::of_metadata(path, &metadata(&[("keep", "0.25")])).is_ok());
        assert!(Stated::of_metadata(path, &metadata(&[])).is_ok());
        for (key, value, expected) in [
            ("keep", "0", "a fraction in (0, 1]"),
            ("keep", "inf", "a fraction in (0, 1]"),
            ("in_channels", "0", "an integer >= 1"),
            ("depth", "1006", "6n+4 with n >= 1, at most 1000"),
            ("widen", "0", "an integer >= 1"),
            ("classes", "1", "an integer >= 2"),
            ("widen", "4000000000", "a network whose parameters, momentum and BN statistics fit in 1.0 TiB"),
        ] {
            let msg = Stated::of_metadata(path, &metadata(&[(key, value)])).unwrap_err().to_string();
            let want = format!("checkpoint m.safetensors: metadata {key} = \"{value}\": expected {expected}");
            assert!(msg.starts_with(&want) && !msg.contains("--"), "{msg}");
        }
        // Two values each too large (`footprint` then blames widen, the first of its suspects,
        // whichever is stated): said of the model, not of a key the file leaves out.
        let huge = [("classes", "10000000000"), ("in_channels", "10000000000")];
        let msg = Stated::of_metadata(path, &metadata(&huge)).unwrap_err().to_string();
        assert!(msg.contains("metadata states a model out of range: expected a network whose"), "{msg}");
    }
}
