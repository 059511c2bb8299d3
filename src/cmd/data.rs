//! `sliceout data synth`: a learnable synthetic dataset in the exact CIFAR-10 binary format.

use crate::error::{Error, Result};
use std::path::Path;

pub fn synth(out: &Path, train: usize, test: usize, seed: u64, force: bool) -> Result<()> {
    // A folder there would keep every trainer out of the run folder it sits in.
    if out.file_name().is_some_and(|n| n == crate::train::folder::LOCK) {
        let expected = format!("a folder other than {}, the lock of a run folder", crate::train::folder::LOCK);
        return Err(Error::flag("--out", out.display(), expected));
    }
    crate::data::synth::write_synthetic(out, train, test, seed, force)?;
    outln!("wrote {train} training and {test} test images (CIFAR-10 binary format) to {}", out.display());
    Ok(())
}
