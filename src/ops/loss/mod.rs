//! Mean softmax cross-entropy over a batch of logits `[N, O]`, plus the top-1 correct count
//! the training loop reports, and optionally the logits' gradient in the same pass. The
//! log-sum-exp is taken around the row maximum in f64, so huge logits stay finite.

mod cpu;
mod cuda;
#[cfg(test)]
mod tests;

pub use cpu::cross_entropy;

use super::{DeviceView, HostView, Kernel};
use crate::ir::{BufId, Elem};

/// Mean softmax cross-entropy of `logits[N, O]` against `labels[N]`: `stats = [loss, correct]`,
/// and the logits' gradient when training.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrossEntropy {
    pub stats: BufId,
    pub d_logits: Option<BufId>,
    pub logits: BufId,
    pub labels: BufId,
    pub n: usize,
    pub o: usize,
}

impl Kernel for CrossEntropy {
    fn buffers(&self) -> (Vec<BufId>, Vec<BufId>) {
        (vec![self.logits, self.labels], [vec![self.stats], self.d_logits.into_iter().collect()].concat())
    }
    fn run_cpu<T: Elem>(&self, m: &HostView) {
        // SAFETY: see `HostView`.
        let (stats, d_logits) = unsafe { (m.buf_mut(self.stats), self.d_logits.map(|b| m.buf_mut(b))) };
        cross_entropy(stats, d_logits, m.buf(self.logits), m.buf(self.labels), self.n, self.o)
    }
    fn run_cuda(&self, d: &DeviceView) {
        cuda::cross_entropy(self, d)
    }
}
