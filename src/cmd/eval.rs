//! `sliceout eval`: test loss and accuracy of a checkpoint or a safetensors model; the model is
//! rebuilt from the file alone. `--logits FILE` also writes every test image's logits.

use super::flags::{self, EvalFlags};
use crate::error::Result;
use crate::io::safetensors::{self, Entry, TensorFile, Values};
use crate::ir::Precision;
use crate::train::{evaluate, EvalRequest};
use std::path::Path;

pub fn command(f: &EvalFlags) -> Result<()> {
    let dataset = flags::dataset(&f.dataset)?;
    if let Some(path) = &f.logits {
        let data_files = crate::data::data_file_paths(&f.data);
        let reads: Vec<&Path> =
            std::iter::once(f.checkpoint.as_path()).chain(data_files.iter().map(|p| p.as_path())).collect();
        super::check_output("--logits", path, &reads)?;
    }
    let e = evaluate(&EvalRequest {
        model: &f.checkpoint,
        data: &f.data,
        dataset,
        coarse: f.coarse,
        batch: f.batch,
        device: f.device.into(),
        limit_test: f.limit_test,
        bn_recal: f.bn_recal,
        precision: Precision::parse(&f.precision)?,
    })?;
    let config = e.config;
    outln!("{} keep {:.2}: test loss {:.4}  test accuracy {:.2}%", config.name(), config.keep, e.loss, 100.0 * e.acc);
    if let Some((loss, acc, batches)) = e.recalibrated {
        outln!(
            "with BN recalibrated over {batches} training batches: test loss {loss:.4}  test accuracy {:.2}%",
            100.0 * acc
        );
    }
    if let Some(path) = &f.logits {
        let images = e.labels.len();
        let file = TensorFile {
            entries: vec![
                Entry { name: "logits".into(), shape: vec![images, config.classes], values: Values::F32(e.logits) },
                Entry {
                    name: "labels".into(),
                    shape: vec![images],
                    values: Values::I64(e.labels.iter().map(|&l| l as i64).collect()),
                },
            ],
            metadata: Default::default(),
        };
        safetensors::save(path, &file)?;
        outln!("logits of {images} test images written to {}", path.display());
    }
    Ok(())
}
