//! The op set behind one trait. A backend owns two memory regions (DESIGN.md principle 2): the
//! persistent region (parameters, momentum, BN statistics) and the arena, one allocation sized
//! before the first step to the largest plan it will run. It runs a [`Program`]'s ops one at a
//! time; the CPU backend is the numerical reference every other backend is checked against.

pub mod cpu;
pub mod cuda;

use crate::data::loader::{Crop, Normalization};
use crate::data::Split;
use crate::error::Result;
use crate::exec::Program;
use crate::ops::sgd::SgdParams;

/// A dataset split kept resident by the backend (on a GPU: in device memory, so batches are
/// gathered, cropped and normalised there).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplitId {
    Train,
    Test,
}

/// Run-time values of one step: the slice starts drawn for it (one per block) and the optimizer
/// settings (the learning rate follows its schedule).
#[derive(Clone, Copy, Debug)]
pub struct StepCtx<'a> {
    pub starts: &'a [usize],
    pub sgd: SgdParams,
}

pub trait Backend {
    /// E.g. `cpu (2 threads)`.
    fn name(&self) -> String;
    /// Makes the arena at least `bytes` long. The only arena allocation; done before any step.
    fn reserve_arena(&mut self, bytes: usize) -> Result<()>;
    /// Replaces the persistent region.
    fn set_persistent(&mut self, data: &[f32]) -> Result<()>;
    /// Copies the persistent region out.
    fn get_persistent(&mut self, out: &mut [f32]);
    /// Takes a split to keep resident, normalised with `norm` when batches are gathered.
    fn upload_split(&mut self, id: SplitId, split: Split, channels: usize, norm: &Normalization) -> Result<()>;
    /// Images in a resident split.
    fn split_len(&self, id: SplitId) -> usize;
    /// Gathers images `indices` of split `id`, each cropped/flipped by `crops[i]`, normalised,
    /// into `program`'s input buffer `(C, N, 32, 32)` and their labels into its label buffer.
    fn fill_batch(&mut self, program: &Program, id: SplitId, indices: &[usize], crops: &[Crop]);
    /// Writes `data` into buffer `buf` of `program` (the batch and its labels).
    fn write(&mut self, program: &Program, buf: usize, data: &[f32]);
    /// Reads buffer `buf` of `program` into `out`.
    fn read(&mut self, program: &Program, buf: usize, out: &mut [f32]);
    /// Runs op `step` of `program`.
    fn run_op(&mut self, program: &Program, step: usize, ctx: &StepCtx);
    /// Waits for queued work (a no-op on the CPU).
    fn synchronize(&mut self) {}
    /// Device memory in use by the whole process (GPU backends), for comparison with the plan.
    fn memory_in_use(&self) -> Option<usize> {
        None
    }

    /// Runs every op of `program` in order.
    fn run(&mut self, program: &Program, ctx: &StepCtx) {
        for i in 0..program.schedule.steps.len() {
            self.run_op(program, i, ctx);
        }
    }
}
