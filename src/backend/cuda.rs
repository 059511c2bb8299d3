//! The CUDA backend: the same ops as the CPU reference, on one GPU through the `gpu` runtime.
//!
//! Memory follows docs/DESIGN.md, principle 2, one device allocation each: the arena (checked against the
//! device's free memory first), the persistent region, and each resident dataset split
//! (normalisation table, image bytes and labels together). Besides those: a small index buffer
//! for batch gathers and cuBLAS's workspace, both made before the first step.
//!
//! A bf16 program's bf16 buffers hold 2-byte elements: `write` rounds the host's f32 values to
//! bf16 (as the CPU backend does) before copying them up, `read` widens what it copies down,
//! and the ops launch the kernels' `_bf16` entry points on them (checked against the CPU's bf16
//! ops by `selftest --precision bf16`, which passed on an H200).

use super::{Backend, Batches, DeviceOverheads, Execute, Memory, SplitId, StepCtx};
use crate::data::loader::{Crop, Normalization, MAX_CHANNELS};
use crate::data::Split;
use crate::error::{Error, Result};
use crate::gpu::{DevMem, Gpu, Math, Recorder};
use crate::ir::{elem, mib, Bf16, Dtype, Target};
use crate::ops::sgd::cuda::{entry, Entry};
use crate::ops::{gather, kernels, DeviceView, Op, SgdParams, Tables, KERNEL_FILES};
use crate::plan::Program;

/// A resident split: `[table: channels*256 f32][images: len*channels*1024 u8][labels: len u8]`.
struct DevSplit {
    mem: DevMem<u8>,
    len: usize,
    channels: usize,
}

impl DevSplit {
    fn addrs(&self) -> gather::SplitAddrs {
        let table = self.mem.ptr;
        let images = table + (self.channels * 256 * 4) as u64;
        let labels = images + (self.len * self.channels * 1024) as u64;
        gather::SplitAddrs { table, images, labels, channels: self.channels }
    }
}

pub struct CudaBackend {
    arena: Option<DevMem<f32>>,
    persistent: Option<DevMem<f32>>,
    splits: [Option<DevSplit>; 2],
    /// Image indices and packed crops of the batch being gathered.
    selection: Option<DevMem<u32>>,
    selection_host: Vec<u32>,
    /// The grouped SGD updates' table (`ops::SgdGroup`) and a copy of what it holds.
    sgd_table: DevMem<u8>,
    sgd_table_host: Vec<Entry>,
    /// Whose kept weight copies (`GemmWeight::Kept`) the arena holds up to date.
    kept: KeptCopies,
    /// Dropped last: the allocations above are freed while the context lives.
    gpu: Gpu,
}

impl CudaBackend {
    /// Opens device 0 with every op's kernels. `Error::Device` when there is no usable GPU.
    pub fn new(math: Math) -> Result<CudaBackend> {
        let gpu = Gpu::new(math, KERNEL_FILES, kernels::NAMES)?;
        let sgd_table = gpu.alloc(SGD_TABLE_BYTES, "the grouped SGD table")?;
        Ok(CudaBackend {
            arena: None,
            persistent: None,
            splits: [None, None],
            selection: None,
            selection_host: vec![],
            sgd_table,
            sgd_table_host: vec![Entry::default(); SGD_TABLE_ENTRIES],
            kept: KeptCopies::default(),
            gpu,
        })
    }

    pub fn math(&self) -> Math {
        self.gpu.math()
    }

    /// Bytes of the arena allocation (0 before `reserve_arena`).
    pub fn arena_bytes(&self) -> usize {
        self.arena.as_ref().map_or(0, |a| a.len() * 4)
    }

    /// Address of buffer `b` (offsets are in 4-byte words, lengths in the buffer's elements).
    fn arena_ptr(&self, p: &Program, b: usize) -> u64 {
        let a = self.arena.as_ref().expect("arena reserved before use");
        let (words, len) = p.locs[b];
        assert!(words * 4 + len * p.schedule.buffers[b].dtype.size() <= a.len() * 4, "buffer outside the arena");
        crate::gpu::f32_at(a.ptr, words)
    }
}

impl Memory for CudaBackend {
    fn memory_in_use(&self) -> Option<usize> {
        self.gpu.memory().ok().map(|(free, total)| total - free)
    }

    fn device_overheads(&self) -> Option<DeviceOverheads> {
        Some(DeviceOverheads { context: self.gpu.context_bytes(), workspaces: crate::gpu::WORKSPACES })
    }

    fn reserve_arena(&mut self, bytes: usize) -> Result<()> {
        let len = bytes.div_ceil(4);
        if self.arena.as_ref().is_some_and(|a| a.len() >= len) {
            return Ok(());
        }
        self.gpu.bind();
        // The old arena (if any) is freed before the new one is made, so it counts as free.
        let old = self.arena_bytes();
        self.gpu.synchronize();
        let (free, total) = self.gpu.memory()?;
        if bytes > free + old {
            return Err(Error::Device(format!(
                "the memory plan needs a {:.0} MiB arena but the GPU has {:.0} MiB free of {:.0} MiB; \
                 lower --batch (or --keep)",
                mib(bytes),
                mib(free + old),
                mib(total)
            )));
        }
        self.arena = None;
        self.kept.forget();
        self.gpu.synchronize();
        self.arena = Some(self.gpu.alloc(len, "the arena")?);
        Ok(())
    }

    fn set_persistent(&mut self, data: &[f32]) -> Result<()> {
        self.kept.forget();
        if self.persistent.as_ref().is_none_or(|p| p.len() != data.len()) {
            self.persistent = None;
            self.persistent = Some(self.gpu.alloc(data.len(), "the persistent region")?);
        }
        let ptr = self.persistent.as_ref().map_or(0, |p| p.ptr);
        if !data.is_empty() {
            self.gpu.htod(ptr, data);
        }
        Ok(())
    }

    fn get_persistent(&mut self, out: &mut [f32]) {
        let p = self.persistent.as_ref().expect("persistent region set");
        assert!(out.len() <= p.len(), "more floats asked than persistent");
        if !out.is_empty() {
            self.gpu.dtoh(out, p.ptr);
        }
    }

    /// Rounds `data` to the buffer's element type on the host (as the CPU backend's `write`).
    fn write(&mut self, p: &Program, buf: usize, data: &[f32]) {
        assert_eq!(data.len(), p.locs[buf].1, "write length vs buffer");
        self.kept.arena_used_by(p.id);
        let dst = self.arena_ptr(p, buf);
        if data.is_empty() {
            return;
        }
        match p.schedule.buffers[buf].dtype {
            Dtype::F32 => self.gpu.htod(dst, data),
            Dtype::Bf16 => {
                let mut bits = vec![Bf16::default(); data.len()];
                elem::convert(&mut bits, data);
                self.gpu.htod(dst, &bits);
                // `htod` only queues the copy: keep the host bits alive until it is done.
                self.gpu.synchronize();
            }
        }
    }

    /// Widens the buffer's elements to f32.
    fn read(&mut self, p: &Program, buf: usize, out: &mut [f32]) {
        assert_eq!(out.len(), p.locs[buf].1, "read length vs buffer");
        let src = self.arena_ptr(p, buf);
        if out.is_empty() {
            return;
        }
        match p.schedule.buffers[buf].dtype {
            Dtype::F32 => self.gpu.dtoh(out, src),
            Dtype::Bf16 => {
                let mut bits = vec![Bf16::default(); out.len()];
                self.gpu.dtoh(&mut bits, src);
                elem::convert(out, &bits);
            }
        }
    }
}

impl Batches for CudaBackend {
    fn upload_split(&mut self, id: SplitId, split: Split, channels: usize, norm: &Normalization) -> Result<()> {
        if channels == 0 || channels > MAX_CHANNELS {
            return Err(Error::Device(format!(
                "splits of {channels} channels are not supported (1 to {MAX_CHANNELS})"
            )));
        }
        if split.images.len() != split.len * channels * 1024 || split.labels.len() != split.len {
            return Err(Error::Device("split images/labels do not match its length".into()));
        }
        let table: Vec<u8> = (0..channels).flat_map(|c| norm.table(c)).flat_map(f32::to_le_bytes).collect();
        let bytes = table.len() + split.images.len() + split.labels.len();
        self.splits[id as usize] = None;
        let mem = self.gpu.alloc::<u8>(bytes, "a resident split")?;
        let s = DevSplit { mem, len: split.len, channels };
        let a = s.addrs();
        self.gpu.htod(a.table, &table);
        if split.len > 0 {
            self.gpu.htod(a.images, &split.images);
            self.gpu.htod(a.labels, &split.labels);
        }
        self.gpu.synchronize();
        self.splits[id as usize] = Some(s);
        Ok(())
    }

    fn split_len(&self, id: SplitId) -> usize {
        self.splits[id as usize].as_ref().map_or(0, |s| s.len)
    }

    fn fill_batch(&mut self, p: &Program, id: SplitId, indices: &[usize], crops: &[Crop]) {
        self.kept.arena_used_by(p.id);
        let s = self.splits[id as usize].as_ref().expect("split uploaded before fill_batch");
        let n = indices.len();
        assert_eq!(crops.len(), n);
        let sched = &p.schedule;
        assert_eq!(p.locs[sched.input].1, s.channels * n * 1024, "input buffer size");
        assert_eq!(p.locs[sched.labels].1, n, "label buffer size");
        let mut sel = std::mem::take(&mut self.selection_host);
        sel.clear();
        for &i in indices {
            assert!(i < s.len, "index {i} out of split of {}", s.len);
            sel.push(i as u32);
        }
        sel.extend(crops.iter().map(gather::pack));
        if self.selection.as_ref().is_none_or(|m| m.len() < sel.len()) {
            self.selection = None;
            self.selection = Some(match self.gpu.alloc(sel.len(), "the batch indices") {
                Ok(m) => m,
                Err(e) => panic!("{e}"),
            });
        }
        let dsel = self.selection.as_ref().map_or(0, |m| m.ptr);
        if n > 0 {
            self.gpu.htod(dsel, &sel);
            let (x, y) = (self.arena_ptr(p, sched.input), self.arena_ptr(p, sched.labels));
            assert_eq!(sched.buffers[sched.labels].dtype, Dtype::F32, "labels are f32");
            let x = (x, sched.buffers[sched.input].dtype);
            gather::gather_cuda(&self.gpu, x, y, s.addrs(), dsel, n);
        }
        self.selection_host = sel;
    }
}

impl Execute for CudaBackend {
    fn synchronize(&mut self) {
        self.gpu.synchronize();
    }

    fn start_timing(&mut self) -> bool {
        self.gpu.start_timing();
        true
    }

    fn take_timings(&mut self) -> Vec<crate::gpu::KernelTime> {
        self.gpu.take_timings()
    }

    fn run_op(&mut self, p: &Program, step: usize, ctx: &StepCtx) {
        self.gpu.bind();
        assert!(p.arena_bytes() <= self.arena_bytes(), "arena smaller than the plan");
        let arena = self.arena.as_ref().map_or((0, 0), |a| (a.ptr, a.len() * 4));
        let persistent = match &self.persistent {
            Some(m) if p.schedule.persistent_len() <= m.len() => (m.ptr, m.len()),
            _ => panic!("persistent region not set"),
        };
        let s = &p.schedule;
        self.gpu.set_op(step, || s.steps[step].name());
        let tables = Tables::new(&p.locs, &s.tensors, &s.slices, ctx);
        let view = DeviceView::new(tables, &self.gpu, &s.buffers, arena, persistent)
            .with_sgd_table(self.sgd_table.ptr, SGD_TABLE_ENTRIES);
        if self.kept.run(p.id) {
            make_kept_copies(p, &view);
        }
        if let Op::SgdGroup(g) = &s.steps[step].op {
            let slots = g.first..g.first + g.updates.len();
            assert!(
                slots.end <= SGD_TABLE_ENTRIES,
                "{} grouped SGD updates: the table holds {SGD_TABLE_ENTRIES}",
                slots.end
            );
            let mut changed = false;
            let updates = g.updates.iter().zip(&g.copies);
            for ((u, &copy), held) in updates.zip(&mut self.sgd_table_host[slots.clone()]) {
                let e = entry(u, copy, &view);
                changed |= e != *held;
                *held = e;
            }
            if changed {
                let at = self.sgd_table.ptr + (slots.start * std::mem::size_of::<Entry>()) as u64;
                self.gpu.htod(at, &self.sgd_table_host[slots]);
                // `htod` only queues the copy; the host copy may change before a later write.
                self.gpu.synchronize();
            }
        }
        s.steps[step].op.run_cuda(&view);
    }
}

/// The program (`Program::id`) whose kept weight copies (`GemmWeight::Kept`) the arena holds
/// up to date with the weights: the copies live in that program's arena, where any other
/// program's buffers may lie, and are made from the weights, which a new persistent region
/// replaces.
#[derive(Default, Debug, PartialEq, Eq)]
struct KeptCopies {
    up_to_date: Option<u64>,
}

impl KeptCopies {
    /// Before an op of `program` runs: whether its copies must be made first. Afterwards they
    /// are its, kept up to date by its grouped updates.
    fn run(&mut self, program: u64) -> bool {
        self.up_to_date.replace(program) != Some(program)
    }

    /// Before the buffers of `program` are written: another program's overwrite the copies.
    fn arena_used_by(&mut self, program: u64) {
        if self.up_to_date != Some(program) {
            self.up_to_date = None;
        }
    }

    /// The weights were replaced, or the arena made again.
    fn forget(&mut self) {
        self.up_to_date = None;
    }
}

/// Queues the making of every kept weight copy of `p` (`GemmWeight::Kept`) from the weights as
/// they are: before its first step, and whenever the arena or the weights changed under them;
/// later steps' grouped updates keep them up to date.
pub fn make_kept_copies(p: &Program, view: &DeviceView) {
    for step in &p.schedule.steps {
        if let Op::Conv(c) = &step.op {
            c.make_kept_copy_cuda(view);
        }
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> String {
        format!("cuda ({})", self.gpu.name())
    }

    fn target(&self) -> Target {
        Target::Cuda
    }
}

/// Entries of the grouped SGD updates' table: more than a WRN's parameters (three per block
/// and BN, two for the classifier).
pub const SGD_TABLE_ENTRIES: usize = 1024;
const SGD_TABLE_BYTES: usize = SGD_TABLE_ENTRIES * std::mem::size_of::<Entry>();

/// The arena's base address in [`record_step`]'s recording (the persistent region's is 2^44).
pub const RECORD_ARENA: u64 = 1 << 40;
/// The grouped SGD table's base address in [`record_step`]'s recording.
pub const RECORD_SGD_TABLE: u64 = 1 << 45;

/// What one training step of `program` queues on a GPU with slice starts `starts`: the batch
/// gather, then every kernel launch and GEMM of its ops, recorded without a GPU (addresses are
/// placeholders inside regions of the program's sizes), in the program's precision. The
/// recorder resolves the kernel table as a GPU does, so each launch's arguments are checked
/// against its kernel's parameters. A step after the program's first: its kept weight copies
/// are up to date ([`record_first_step`] makes them).
pub fn record_step(program: &Program, starts: &[usize]) -> Recorder {
    let rec = recorder();
    record_into(&rec, program, starts, false);
    rec
}

/// As [`record_step`], for the program's first step (or one after another program ran, or the
/// weights were replaced): its kept weight copies are made after the gather.
pub fn record_first_step(program: &Program, starts: &[usize]) -> Recorder {
    let rec = recorder();
    record_into(&rec, program, starts, true);
    rec
}

/// Records one step of `program` into `rec`, after what it holds (as [`record_step`]).
pub fn record(rec: &Recorder, program: &Program, starts: &[usize]) {
    record_into(rec, program, starts, false)
}

fn recorder() -> Recorder {
    match Recorder::new(KERNEL_FILES, kernels::NAMES) {
        Ok(rec) => rec,
        Err(e) => panic!("{e}"),
    }
}

fn record_into(rec: &Recorder, program: &Program, starts: &[usize], first: bool) {
    let s = &program.schedule;
    let sgd = SgdParams { lr: 0.0, momentum: 0.0, weight_decay: 0.0, nesterov: false };
    let ctx = StepCtx::new(starts, sgd);
    let tables = Tables::new(&program.locs, &s.tensors, &s.slices, &ctx);
    let (arena, persistent) = (RECORD_ARENA, 1u64 << 44);
    let input = crate::gpu::f32_at(arena, program.locs[s.input].0);
    let labels = crate::gpu::f32_at(arena, program.locs[s.labels].0);
    let split = gather::SplitAddrs { table: 1 << 46, images: 1 << 46, labels: 1 << 46, channels: s.config.in_channels };
    let input = (input, s.buffers[s.input].dtype);
    gather::gather_cuda(rec, input, labels, split, 1 << 47, s.batch);
    let regions = ((arena, program.arena_bytes()), (persistent, s.persistent_len()));
    let groups = s.steps.iter().filter_map(|st| if let Op::SgdGroup(g) = &st.op { Some(g) } else { None });
    let view = DeviceView::new(tables, rec, &s.buffers, regions.0, regions.1)
        .with_sgd_table(RECORD_SGD_TABLE, crate::ops::sgd::table_len(groups));
    if first {
        make_kept_copies(program, &view);
    }
    for step in &s.steps {
        step.op.run_cuda(&view);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A program's first op makes its copies, its later ops and steps do not; another program's
    /// buffers or ops, or new weights, mean the next op makes them again.
    #[test]
    fn kept_copies_are_made_when_the_arena_or_the_weights_changed_under_them() {
        let (train, eval) = (1, 2);
        let mut k = KeptCopies::default();
        assert!(k.run(train));
        assert!(!k.run(train) && !k.run(train));
        k.arena_used_by(train);
        assert!(!k.run(train), "its own batch");
        k.arena_used_by(eval);
        assert!(k.run(eval) && !k.run(eval));
        assert!(k.run(train), "after the evaluation");
        assert!(k.run(eval) && k.run(train), "an op of each in turn");
        k.forget();
        assert!(k.run(train), "new weights");
        assert!(!k.run(train));
    }

    #[test]
    fn without_a_gpu_the_backend_is_a_clear_error() {
        if crate::gpu::available() {
            return;
        }
        match CudaBackend::new(Math::Tf32) {
            Err(Error::Device(msg)) => assert!(!msg.is_empty()),
            Err(e) => panic!("wrong error kind: {e}"),
            Ok(_) => panic!("a backend without a device"),
        }
    }
}
