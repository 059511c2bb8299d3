//! The CPU backend: rayon-parallel ops over two `Vec<f32>` regions. It is the reference.

use super::{Backend, Batches, Execute, Memory, SplitId, StepCtx};
use crate::data::loader::{Crop, Normalization};
use crate::data::Split;
use crate::error::{Error, Result};
use crate::ir::{mib, Target};
use crate::ops::{conv2d, gather, HostView, Tables};
use crate::plan::Program;

#[derive(Default)]
pub struct CpuBackend {
    /// `Im2col` for the reference other backends are checked against.
    pub conv_algo: conv2d::Algo,
    arena: Vec<f32>,
    persistent: Vec<f32>,
    /// Resident splits (train, test) with their channel count and normalisation.
    splits: [Option<(Split, usize, Normalization)>; 2],
}

impl CpuBackend {
    pub fn new() -> CpuBackend {
        CpuBackend::default()
    }

    /// The plainest CPU backend (im2col everywhere): the reference for `selftest`.
    pub fn reference() -> CpuBackend {
        CpuBackend { conv_algo: conv2d::Algo::Im2col, ..CpuBackend::default() }
    }
}

impl Memory for CpuBackend {
    fn reserve_arena(&mut self, bytes: usize) -> Result<()> {
        // The GEMM's per-thread packing buffers, made now rather than inside the first step.
        crate::blas::prepare();
        let len = bytes.div_ceil(4);
        if self.arena.len() < len {
            let mut arena = Vec::new();
            arena.try_reserve_exact(len).map_err(|_| {
                Error::Device(format!(
                    "the memory plan needs a {:.1} MiB arena and the host cannot allocate it; lower --batch (or --keep)",
                    mib(bytes)
                ))
            })?;
            arena.resize(len, 0.0);
            self.arena = arena;
        }
        Ok(())
    }

    fn set_persistent(&mut self, data: &[f32]) -> Result<()> {
        self.persistent = data.to_vec();
        Ok(())
    }

    fn get_persistent(&mut self, out: &mut [f32]) {
        out.copy_from_slice(&self.persistent[..out.len()]);
    }

    fn write(&mut self, p: &Program, buf: usize, data: &[f32]) {
        let (off, len) = p.locs[buf];
        self.arena[off..off + len].copy_from_slice(data);
    }

    fn read(&mut self, p: &Program, buf: usize, out: &mut [f32]) {
        let (off, len) = p.locs[buf];
        out.copy_from_slice(&self.arena[off..off + len]);
    }
}

impl Batches for CpuBackend {
    fn upload_split(&mut self, id: SplitId, split: Split, channels: usize, norm: &Normalization) -> Result<()> {
        self.splits[id as usize] = Some((split, channels, norm.clone()));
        Ok(())
    }

    fn split_len(&self, id: SplitId) -> usize {
        self.splits[id as usize].as_ref().map_or(0, |s| s.0.len)
    }

    fn fill_batch(&mut self, p: &Program, id: SplitId, indices: &[usize], crops: &[Crop]) {
        let (split, channels, norm) = self.splits[id as usize].as_ref().expect("split uploaded before fill_batch");
        let s = &p.schedule;
        let ((xo, xl), (yo, yl)) = (p.locs[s.input], p.locs[s.labels]);
        assert!(xo + xl <= yo || yo + yl <= xo, "input and labels overlap");
        assert_eq!(crops.len(), indices.len());
        // Input and labels are disjoint ranges of the arena (asserted): split it once.
        let (x, y) = if xo < yo {
            let (a, b) = self.arena.split_at_mut(yo);
            (&mut a[xo..xo + xl], &mut b[..yl])
        } else {
            let (a, b) = self.arena.split_at_mut(xo);
            (&mut b[..xl], &mut a[yo..yo + yl])
        };
        gather::gather_cpu(x, y, split, indices, *channels, norm, |i| crops[i]);
    }
}

impl Execute for CpuBackend {
    fn run_op(&mut self, p: &Program, step: usize, ctx: &StepCtx) {
        super::assert_runnable(p);
        assert!(p.arena_bytes() <= self.arena.len() * 4, "arena smaller than the plan");
        assert!(p.schedule.persistent_len() <= self.persistent.len(), "persistent region not set");
        let s = &p.schedule;
        let tables = Tables::new(&p.locs, &s.tensors, &s.slices, ctx);
        // SAFETY: both regions are ours and untouched while the op runs; the program's plan
        // passed the checker when it was built.
        let view = unsafe { HostView::new(tables, self.conv_algo, &mut self.arena, &mut self.persistent) };
        s.steps[step].op.run_cpu(&view);
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }

    fn target(&self) -> Target {
        Target::Cpu
    }
}
