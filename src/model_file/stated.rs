//! What a model file states about the model: its configuration and normalisation, read from a
//! checkpoint's header or a safetensors file's metadata and judged as flags are.

use crate::data::loader::Normalization;
use crate::error::{Error, Result};
use crate::io::checkpoint::{self, Checkpoint};
use crate::ir::ModelConfig;
use std::collections::BTreeMap;
use std::path::Path;

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
