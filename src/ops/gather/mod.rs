//! The batch gather: images of a resident dataset split, each cropped/flipped by its [`Crop`],
//! normalised, written into the program's `(C, N, 32, 32)` input buffer, and their labels into
//! the label buffer. Not an op of the schedule (the host starts each step with it), but a
//! kernel on each backend all the same: the CPU runs the loader's `fill_batch_with`, the GPU
//! `gather.cu` over the split kept in device memory, so no image crosses the bus per step.

mod cuda;

pub use crate::data::loader::fill_batch_with as gather_cpu;
pub use cuda::{gather as gather_cuda, SplitAddrs};

use crate::data::loader::Crop;

/// A crop packed for the kernel: `dx | dy << 8 | flip << 16`.
pub fn pack(c: &Crop) -> u32 {
    assert!(c.dx <= 8 && c.dy <= 8, "crop offsets are at most 8");
    c.dx as u32 | (c.dy as u32) << 8 | (c.flip as u32) << 16
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fields sit where `gather.cu` reads them: `crop & 255`, `(crop >> 8) & 255`,
    /// `(crop >> 16) & 1`.
    #[test]
    fn crops_pack_as_the_kernel_unpacks_them() {
        for (dx, dy, flip) in [(0, 0, false), (8, 3, true), (4, 8, false)] {
            let c = pack(&Crop { dx, dy, flip });
            assert_eq!(((c & 255) as usize, ((c >> 8) & 255) as usize, (c >> 16) & 1 == 1), (dx, dy, flip));
        }
    }
}
