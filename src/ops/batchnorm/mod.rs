//! Batch norm fused with ReLU and an optional scale. In a WRN every BN is followed by ReLU,
//! and SliceOut's `c / w` scale follows `bn2`-ReLU, so one pass does all three each way.
//!
//! A buffer holding a SliceOut slice holds only the slice's `w` channels, in slice order; the
//! persistent per-channel vectors (`gamma`, `beta`, running stats) are full size and are read
//! through the slice's runs (buffer channel `run.at + j` is layer channel `run.channel + j`).
//! Per-step vectors (`stats`, `d_gamma`, `d_beta`) have `w` entries in slice order.
//!
//! The backward pass recomputes the ReLU mask from the input and the saved stats, so the BN
//! output need not be kept alive until backward. Forward and backward build the pre-activation
//! with the same expression (`pre_activation`), so the recomputed mask is bit-identical.

mod cpu;
mod cuda;
#[cfg(test)]
mod tests;

pub use cpu::{bn_relu_apply, bn_relu_backward, bn_relu_eval, bn_relu_train, bn_relu_value, BN_EPS, BN_MOMENTUM};

use super::{DeviceView, HostView, Kernel};
use crate::ir::{BnRef, BufId, Elem, Sel, Slice, TensorId};

/// Train-mode BN (batch statistics, running-stat update) + ReLU + SliceOut's scale `c / w`
/// over the channels `sel` covers; `stats` keeps `[mean; w, invstd; w]` for backward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BnReluTrain {
    pub out: BufId,
    pub stats: BufId,
    pub inp: BufId,
    pub bn: BnRef,
    pub sel: Sel,
    /// Values per channel, `N*H*W`.
    pub m: usize,
}

/// Recomputes a train-mode BN + ReLU output from its input and saved statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BnReluApply {
    pub out: BufId,
    pub inp: BufId,
    pub stats: BufId,
    pub bn: BnRef,
    pub sel: Sel,
    pub m: usize,
}

/// Eval-mode BN (running statistics) + ReLU over all `channels`, unscaled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BnReluEval {
    pub out: BufId,
    pub inp: BufId,
    pub bn: BnRef,
    pub channels: usize,
    pub m: usize,
}

/// Gradients of `BnReluTrain`: `d_inp` (overwritten, or added to when `accumulate`), and the
/// slice's `d_gamma`, `d_beta`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BnReluBackward {
    pub d_inp: BufId,
    pub d_gamma: BufId,
    pub d_beta: BufId,
    pub d_out: BufId,
    pub inp: BufId,
    pub stats: BufId,
    pub bn: BnRef,
    pub sel: Sel,
    pub m: usize,
    pub accumulate: bool,
}

impl Kernel for BnReluTrain {
    fn buffers(&self) -> (Vec<BufId>, Vec<BufId>) {
        (vec![self.inp], vec![self.out, self.stats])
    }
    fn updates(&self) -> Vec<TensorId> {
        vec![self.bn.mean, self.bn.var]
    }
    fn run_cpu<T: Elem>(&self, m: &HostView) {
        let (slice, bn) = (m.t.slice(self.sel), self.bn);
        // SAFETY: see `HostView`; the running mean and variance are distinct tensors.
        let (out, stats, rm, rv) =
            unsafe { (m.buf_mut::<T>(self.out), m.buf_mut(self.stats), m.tensor_mut(bn.mean), m.tensor_mut(bn.var)) };
        let (g, b) = (m.tensor(bn.gamma), m.tensor(bn.beta));
        bn_relu_train(out, stats, m.buf(self.inp), g, b, rm, rv, slice, self.m, slice.scale(), m.t.bn_momentum)
    }
    fn run_cuda(&self, d: &DeviceView) {
        cuda::train(self, d)
    }
}

impl Kernel for BnReluApply {
    fn buffers(&self) -> (Vec<BufId>, Vec<BufId>) {
        (vec![self.inp, self.stats], vec![self.out])
    }
    fn run_cpu<T: Elem>(&self, m: &HostView) {
        let slice = m.t.slice(self.sel);
        let (g, b) = (m.tensor(self.bn.gamma), m.tensor(self.bn.beta));
        // SAFETY: see `HostView`.
        let out = unsafe { m.buf_mut::<T>(self.out) };
        bn_relu_apply(out, m.buf(self.inp), m.buf(self.stats), g, b, slice, self.m, slice.scale())
    }
    fn run_cuda(&self, d: &DeviceView) {
        cuda::apply(self, d)
    }
}

impl Kernel for BnReluEval {
    fn buffers(&self) -> (Vec<BufId>, Vec<BufId>) {
        (vec![self.inp], vec![self.out])
    }
    fn run_cpu<T: Elem>(&self, m: &HostView) {
        let bn = self.bn;
        let (g, b, rm, rv) = (m.tensor(bn.gamma), m.tensor(bn.beta), m.tensor(bn.mean), m.tensor(bn.var));
        // SAFETY: see `HostView`.
        let out = unsafe { m.buf_mut::<T>(self.out) };
        bn_relu_eval(out, m.buf(self.inp), g, b, rm, rv, Slice::full(self.channels), self.m)
    }
    fn run_cuda(&self, d: &DeviceView) {
        cuda::eval(self, d)
    }
}

impl Kernel for BnReluBackward {
    fn buffers(&self) -> (Vec<BufId>, Vec<BufId>) {
        (vec![self.d_out, self.inp, self.stats], vec![self.d_inp, self.d_gamma, self.d_beta])
    }
    fn run_cpu<T: Elem>(&self, m: &HostView) {
        let slice = m.t.slice(self.sel);
        // SAFETY: see `HostView`.
        let (dx, dg, db) = unsafe { (m.buf_mut::<T>(self.d_inp), m.buf_mut(self.d_gamma), m.buf_mut(self.d_beta)) };
        let (dy, x, st) = (m.buf(self.d_out), m.buf(self.inp), m.buf(self.stats));
        let (g, b) = (m.tensor(self.bn.gamma), m.tensor(self.bn.beta));
        bn_relu_backward(dx, dg, db, dy, x, st, g, b, slice, self.m, slice.scale(), self.accumulate)
    }
    fn run_cuda(&self, d: &DeviceView) {
        cuda::backward(self, d)
    }
}
