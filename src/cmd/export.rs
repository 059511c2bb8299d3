//! `sliceout export`: a model as safetensors (for PyTorch and other loaders) or its test-time
//! network as ONNX (for ONNX Runtime and other servers).

use super::flags::{ExportFlags, ExportFormat};
use crate::error::{Error, Result};
use crate::export::{self, onnx};
use crate::ir::Role;
use crate::model_file;

pub fn command(f: &ExportFlags) -> Result<()> {
    let named = match f.out.extension().and_then(|e| e.to_str()) {
        Some("safetensors") => Some(ExportFormat::Safetensors),
        Some("onnx") => Some(ExportFormat::Onnx),
        _ => None,
    };
    let format = match (f.format, named) {
        // A file named for one format holding the other would mislead whoever loads it.
        (Some(format), Some(name)) if format != name => {
            return Err(Error::flag(
                "--out",
                f.out.display(),
                format!("a file name that agrees with --format {} (or no --format)", format.as_str()),
            ))
        }
        (Some(format), _) | (None, Some(format)) => format,
        (None, None) => {
            return Err(Error::flag(
                "--out",
                f.out.display(),
                "a .safetensors or .onnx file name (or say which with --format)",
            ))
        }
    };
    super::check_output("--out", &f.out, &[&f.checkpoint])?;
    let ck = model_file::load_model(&f.checkpoint)?;
    let c = ck.config;
    match format {
        ExportFormat::Safetensors => {
            export::save_safetensors(&f.out, &f.checkpoint, &ck)?;
            let params: usize =
                model_file::model_tensors(&c).iter().filter(|t| t.role == Role::Param).map(|t| t.len()).sum();
            outln!(
                "wrote {}: {} ({:.2} M parameters, BN running statistics, metadata), keep {:.2}",
                f.out.display(),
                c.name(),
                params as f64 / 1e6,
                c.keep
            );
        }
        ExportFormat::Onnx => {
            export::save_onnx(&f.out, &f.checkpoint, &ck)?;
            outln!(
                "wrote {}: {} test-time network, ONNX opset {}; input {} float32 (N, {}, 32, 32) in 0..1, output {} (N, {})",
                f.out.display(),
                c.name(),
                onnx::OPSET,
                onnx::INPUT,
                c.in_channels,
                onnx::OUTPUT,
                c.classes
            );
        }
    }
    Ok(())
}
