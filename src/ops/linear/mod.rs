//! The classifier: a fully connected layer on pooled features. The features come from the
//! pool channel-major, `[C, N]`, and are read in that layout (no transpose buffer); the weight
//! is PyTorch's `[O, C]`; the logits are `[N, O]`, one row per image, as the loss wants them.
//! The layer is small (`C*N*O` is about a million MACs for WRN-28-10 at batch 128), so plain
//! f64 dot products parallelised over output entries are fast enough and exact.

mod cpu;
mod cuda;
#[cfg(test)]
mod tests;

pub use cpu::{linear_backward, linear_forward};

use super::{DeviceView, HostView, Kernel};
use crate::ir::{BufId, Elem, SliceSpec, TensorId};

/// `out[N, O] = inp[C, N]^T weight[O, C]^T + bias[O]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Linear {
    pub out: BufId,
    pub inp: BufId,
    pub weight: TensorId,
    pub bias: TensorId,
    pub c: usize,
    pub n: usize,
    pub o: usize,
}

/// The classifier's three gradients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearBackward {
    pub d_inp: BufId,
    pub d_weight: BufId,
    pub d_bias: BufId,
    pub d_out: BufId,
    pub inp: BufId,
    pub weight: TensorId,
    pub c: usize,
    pub n: usize,
    pub o: usize,
}

impl Kernel for Linear {
    fn buffers(&self) -> (Vec<BufId>, Vec<BufId>) {
        (vec![self.inp], vec![self.out])
    }
    fn macs(&self, _: &[SliceSpec]) -> usize {
        self.c * self.n * self.o
    }
    fn run_cpu<T: Elem>(&self, m: &HostView) {
        let (w, b) = (m.tensor(self.weight), m.tensor(self.bias));
        // SAFETY: see `HostView`.
        linear_forward(unsafe { m.buf_mut(self.out) }, m.buf(self.inp), w, b, self.c, self.n, self.o)
    }
    fn run_cuda(&self, d: &DeviceView) {
        cuda::forward(self, d)
    }
}

impl Kernel for LinearBackward {
    fn buffers(&self) -> (Vec<BufId>, Vec<BufId>) {
        (vec![self.d_out, self.inp], vec![self.d_inp, self.d_weight, self.d_bias])
    }
    fn macs(&self, _: &[SliceSpec]) -> usize {
        2 * self.c * self.n * self.o
    }
    fn run_cpu<T: Elem>(&self, m: &HostView) {
        // SAFETY: see `HostView`.
        let (dx, dw, db) = unsafe { (m.buf_mut(self.d_inp), m.buf_mut(self.d_weight), m.buf_mut(self.d_bias)) };
        let (dy, x, w) = (m.buf(self.d_out), m.buf(self.inp), m.tensor(self.weight));
        linear_backward(dx, dw, db, dy, x, w, self.c, self.n, self.o)
    }
    fn run_cuda(&self, d: &DeviceView) {
        cuda::backward(self, d)
    }
}
