//! Global average pooling over the spatial positions of channel-major `(C, N, H, W)` input,
//! giving pooled features `[C, N]` (still channel-major, which the classifier reads as is).
//! Every `(c, n)` pair is one contiguous run of `hw` inputs.

mod cpu;
mod cuda;
#[cfg(test)]
mod tests;

pub use cpu::{avgpool_backward, avgpool_forward};

use super::{DeviceView, HostView, Kernel};
use crate::ir::{BufId, Elem};

/// `out[C, N]` = the mean of each `(c, n)` plane of `inp` (`hw` positions).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool {
    pub out: BufId,
    pub inp: BufId,
    pub c: usize,
    pub n: usize,
    pub hw: usize,
}

/// `d_inp` = `d_out` spread evenly over each plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolBackward {
    pub d_inp: BufId,
    pub d_out: BufId,
    pub c: usize,
    pub n: usize,
    pub hw: usize,
}

impl Kernel for Pool {
    fn buffers(&self) -> (Vec<BufId>, Vec<BufId>) {
        (vec![self.inp], vec![self.out])
    }
    fn run_cpu<T: Elem>(&self, m: &HostView) {
        // SAFETY: see `HostView`.
        avgpool_forward::<T>(unsafe { m.buf_mut(self.out) }, m.buf(self.inp), self.c, self.n, self.hw)
    }
    fn run_cuda(&self, d: &DeviceView) {
        cuda::forward(self, d)
    }
}

impl Kernel for PoolBackward {
    fn buffers(&self) -> (Vec<BufId>, Vec<BufId>) {
        (vec![self.d_out], vec![self.d_inp])
    }
    fn run_cpu<T: Elem>(&self, m: &HostView) {
        // SAFETY: see `HostView`.
        avgpool_backward::<T>(unsafe { m.buf_mut(self.d_inp) }, m.buf(self.d_out), self.c, self.n, self.hw)
    }
    fn run_cuda(&self, d: &DeviceView) {
        cuda::backward(self, d)
    }
}
