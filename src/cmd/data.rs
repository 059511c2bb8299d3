//! `sliceout data synth`: a learnable synthetic dataset in the exact CIFAR-10 binary format.

use crate::error::Result;
use std::path::Path;

pub fn synth(out: &Path, train: usize, test: usize, seed: u64, force: bool) -> Result<()> {
    crate::data::synth::write_synthetic(out, train, test, seed, force)?;
    outln!("wrote {train} training and {test} test images (CIFAR-10 binary format) to {}", out.display());
    Ok(())
}
