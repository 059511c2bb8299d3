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
use crate::ir::{BufId, Elem, GradSel, SliceSpec, TensorId};

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
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SgdGroup {
    pub updates: Vec<Sgd>,
    /// The group's first entry in its program's table ([`table_len`]): groups follow one another.
    pub first: usize,
}

/// Entries of the table a program's groups read: the sum of their sizes.
pub fn table_len<'a>(groups: impl IntoIterator<Item = &'a SgdGroup>) -> usize {
    groups.into_iter().map(|g| g.first + g.updates.len()).max().unwrap_or(0)
}

impl Kernel for SgdGroup {
    fn buffers(&self) -> (Vec<BufId>, Vec<BufId>) {
        (self.updates.iter().map(|u| u.grad).collect(), vec![])
    }
    fn updates(&self) -> Vec<TensorId> {
        self.updates.iter().flat_map(|u| [u.param, u.momentum]).collect()
    }
    fn run_cpu<T: Elem>(&self, m: &HostView) {
        for u in &self.updates {
            u.run_cpu::<T>(m);
        }
    }
    fn run_cuda(&self, d: &DeviceView) {
        cuda::update_group(self, d)
    }
}
