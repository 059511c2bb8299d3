//! `sliceout eval`: test loss and accuracy of a checkpoint; the model is rebuilt from it alone.

use super::flags::{self, EvalFlags};
use crate::error::Result;

pub fn command(f: &EvalFlags) -> Result<()> {
    let dataset = flags::dataset(&f.dataset)?;
    let (loss, acc, config) =
        crate::train::evaluate(&f.checkpoint, &f.data, dataset, f.coarse, f.batch, f.device.into(), f.limit_test)?;
    println!("{} keep {:.2}: test loss {:.4}  test accuracy {:.2}%", config.name(), config.keep, loss, 100.0 * acc);
    Ok(())
}
