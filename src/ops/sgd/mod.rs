//! PyTorch's SGD (momentum, Nesterov, weight decay, no dampening) that reads only the sliced
//! gradient. A SliceOut step produces gradients for the slice's rows or columns alone; the
//! weights outside the slice still get weight decay and momentum, exactly as if the gradient
//! were a dense one with zeros outside the slice, but no full-size gradient is ever built.

mod cpu;
pub mod cuda;
#[cfg(test)]
mod tests;

pub use cpu::{sgd_update, GradMap, SgdParams};

use super::{DeviceView, HostView, Kernel};
use crate::ir::{Bf16, BufId, Elem, GradSel, SliceSpec, TensorId};

/// One parameter's SGD update from its (possibly sliced) gradient.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sgd {
    pub param: TensorId,
    pub momentum: TensorId,
    pub grad: BufId,
    pub map: GradSel,
}

/// Where a gradient lies in its parameter at a step with slice starts `starts`.
pub fn grad_map(map: GradSel, slices: &[SliceSpec], starts: &[usize]) -> GradMap {
    match map {
        GradSel::Full => GradMap::Full,
        GradSel::Rows { sel, row_len } => GradMap::Rows { slice: sel.resolve(slices, starts), row_len },
        GradSel::Cols { sel, rows, group } => GradMap::Cols { slice: sel.resolve(slices, starts), rows, group },
    }
}

impl Kernel for Sgd {
    fn buffers(&self) -> (Vec<BufId>, Vec<BufId>) {
        (vec![self.grad], vec![])
    }
    fn updates(&self) -> Vec<TensorId> {
        vec![self.param, self.momentum]
    }
    fn run_cpu<T: Elem>(&self, m: &HostView) {
        let map = grad_map(self.map, m.t.slices, m.t.starts);
        // SAFETY: see `HostView`; a parameter and its momentum are distinct tensors.
        let (w, b) = unsafe { (m.tensor_mut(self.param), m.tensor_mut(self.momentum)) };
        sgd_update(w, b, m.buf(self.grad), map, &m.t.sgd)
    }
    fn run_cuda(&self, d: &DeviceView) {
        cuda::update(self, d)
    }
}

/// Adjacent updates run as one: on the GPU one launch of `sgd_multi` over a table of the
/// group's tensors (`--sgd-group`, experimental), on the CPU each update in turn. Every element
/// is computed as by [`Sgd`], so the numbers are the same either way.
///
/// It also writes, for each update that has one in `copies`, the bf16 copy of the updated
/// weight that the next step's convolution reads (`GemmWeight::Kept`, GPU plans): the weight
/// rounded once, as the forward op's `weight_slice_bf16` would round it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SgdGroup {
    pub updates: Vec<Sgd>,
    /// Per update, the kept bf16 copy of its weight the launch writes (none for most).
    pub copies: Vec<Option<BufId>>,
    /// The group's first entry in its program's table ([`table_len`]): groups follow one another.
    pub first: usize,
}

/// Entries of the table a program's groups read: the sum of their sizes.
pub fn table_len<'a>(groups: impl IntoIterator<Item = &'a SgdGroup>) -> usize {
    groups.into_iter().map(|g| g.first + g.updates.len()).max().unwrap_or(0)
}

impl Kernel for SgdGroup {
    fn buffers(&self) -> (Vec<BufId>, Vec<BufId>) {
        (self.updates.iter().map(|u| u.grad).collect(), self.copies.iter().flatten().copied().collect())
    }
    fn updates(&self) -> Vec<TensorId> {
        self.updates.iter().flat_map(|u| [u.param, u.momentum]).collect()
    }
    fn run_cpu<T: Elem>(&self, m: &HostView) {
        assert_eq!(self.copies.len(), self.updates.len(), "one weight copy, or none, per update");
        for (u, copy) in self.updates.iter().zip(&self.copies) {
            u.run_cpu::<T>(m);
            if let Some(&c) = copy.as_ref() {
                // SAFETY: see `HostView`; the copy is a buffer of its own.
                crate::ir::elem::convert(unsafe { m.buf_mut::<Bf16>(c) }, m.tensor(u.param));
            }
        }
    }
    fn run_cuda(&self, d: &DeviceView) {
        cuda::update_group(self, d)
    }
}
