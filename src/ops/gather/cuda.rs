//! Launch of `gather.cu` (`gather_batch` writes an f32 batch, `gather_batch_bf16` a bf16 one;
//! the labels are f32 either way).

use crate::gpu::{grid, int, Launcher};
use crate::ir::Dtype;
use crate::ops::kernels::GATHER_BATCH;

/// Addresses of one resident split: the per-channel normalisation tables (`channels * 256`
/// f32), the image bytes and the label bytes.
#[derive(Clone, Copy, Debug)]
pub struct SplitAddrs {
    pub table: u64,
    pub images: u64,
    pub labels: u64,
    pub channels: usize,
}

/// Gathers `n` images into `x` (elements of `x_type`) and their labels into `y`; `sel` holds
/// the `n` image indices then the `n` packed crops, already on the device.
pub fn gather(gpu: &dyn Launcher, x: (u64, Dtype), y: u64, split: SplitAddrs, sel: u64, n: usize) {
    let (kernel, x) = (GATHER_BATCH.of(x.1), x.0);
    let (images, labels, table) = (split.images, split.labels, split.table);
    let (c, ni) = (int(split.channels), int(n));
    gpu.launch(kernel, grid(split.channels * n * 1024), &[&x, &y, &images, &labels, &table, &sel, &c, &ni]);
}
