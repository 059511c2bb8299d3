//! The CPU backend: rayon-parallel ops over two host regions, the persistent one (f32) and the
//! arena (bytes, each buffer viewed as its element type: a bf16 program's arena is the size its
//! plan says). It is the reference, in fp32 and in bf16.

use super::{Backend, Batches, Execute, Memory, SplitId, StepCtx};
use crate::data::loader::{Crop, Normalization};
use crate::data::Split;
use crate::error::{Error, Result};
use crate::ir::{elem, mib, Bf16, Dtype, Target};
use crate::ops::{conv2d, gather, HostArena, HostView, Tables};
use crate::plan::Program;

#[derive(Default)]
pub struct CpuBackend {
    /// `Im2col` for the reference other backends are checked against.
    pub conv_algo: conv2d::Algo,
    arena: HostArena,
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
        self.arena.reserve(bytes).map_err(|_| {
            Error::Device(format!(
                "the memory plan needs a {:.1} MiB arena and the host cannot allocate it; lower --batch (or --keep)",
                mib(bytes)
            ))
        })
    }

    fn set_persistent(&mut self, data: &[f32]) -> Result<()> {
        self.persistent = data.to_vec();
        Ok(())
    }

    fn get_persistent(&mut self, out: &mut [f32]) {
        out.copy_from_slice(&self.persistent[..out.len()]);
    }

    /// Rounds `data` to the buffer's element type.
    fn write(&mut self, p: &Program, buf: usize, data: &[f32]) {
        let (at, len) = span(p, buf);
        match p.schedule.buffers[buf].dtype {
            Dtype::F32 => elem::convert(self.arena.get_mut::<f32>(at, len), data),
            Dtype::Bf16 => elem::convert(self.arena.get_mut::<Bf16>(at, len), data),
        }
    }

    /// Widens the buffer's elements to f32.
    fn read(&mut self, p: &Program, buf: usize, out: &mut [f32]) {
        let (at, len) = span(p, buf);
        match p.schedule.buffers[buf].dtype {
            Dtype::F32 => elem::convert(out, self.arena.get::<f32>(at, len)),
            Dtype::Bf16 => elem::convert(out, self.arena.get::<Bf16>(at, len)),
        }
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
        let (x, y) = (span(p, s.input), span(p, s.labels));
        assert_eq!(crops.len(), indices.len());
        let crop = |i| crops[i];
        match s.buffers[s.input].dtype {
            Dtype::F32 => {
                let (x, y) = self.arena.get_two_mut::<f32, f32>(x, y);
                gather::gather_cpu(x, y, split, indices, *channels, norm, crop)
            }
            Dtype::Bf16 => {
                let (x, y) = self.arena.get_two_mut::<Bf16, f32>(x, y);
                gather::gather_cpu(x, y, split, indices, *channels, norm, crop)
            }
        }
    }
}

impl Execute for CpuBackend {
    fn run_op(&mut self, p: &Program, step: usize, ctx: &StepCtx) {
        assert!(p.arena_bytes() <= self.arena.bytes(), "arena smaller than the plan");
        assert!(p.schedule.persistent_len() <= self.persistent.len(), "persistent region not set");
        let s = &p.schedule;
        let tables = Tables::new(&p.locs, &s.tensors, &s.slices, ctx);
        let (algo, precision) = (self.conv_algo, s.lowering.precision);
        // SAFETY: both regions are ours and untouched while the op runs; the program's plan
        // passed the checker when it was built.
        let view = unsafe { HostView::new(tables, algo, &s.buffers, precision, &mut self.arena, &mut self.persistent) };
        s.steps[step].op.run_cpu(&view);
    }
}

/// Stack of each worker thread: Rust's default for spawned threads, set here so that a failure
/// to start them can name it.
const WORKER_STACK: usize = 2 << 20;

/// Starts the CPU thread pool (rayon's global pool) with `RAYON_NUM_THREADS` threads, at most
/// one per CPU thread available: more only slows every parallel op down, each waiting on
/// threads that share a core, so a larger value is capped, saying so on stderr. A value that is
/// no number is refused; 0 or none means one per CPU thread. Failing to start the threads (a
/// memory limit such as `ulimit -v` leaves no room for their stacks) is an error, not a panic.
/// It fixes the GEMM's instruction set first (`SLICEOUT_CPU_ISA`, refused when unknown or not
/// run by this processor).
pub fn start_threads() -> Result<()> {
    crate::blas::select_kernel()?;
    let available = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = match std::env::var("RAYON_NUM_THREADS") {
        Err(_) => available,
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(0) => available,
            Ok(n) if n > available => {
                errln!("RAYON_NUM_THREADS={n} is more than the {available} CPU threads available: using {available} threads");
                available
            }
            Ok(n) => n,
            Err(_) => {
                return Err(Error::flag("RAYON_NUM_THREADS", v, "a number of threads (0 or unset: one per CPU thread)"))
            }
        },
    };
    rayon::ThreadPoolBuilder::new().num_threads(threads).stack_size(WORKER_STACK).build_global().map_err(|e| {
        Error::Msg(format!(
            "cannot start {threads} CPU worker threads ({:.0} MiB of stack each): {e} (a process memory limit such as \
             ulimit -v may be the cause; RAYON_NUM_THREADS sets fewer)",
            mib(WORKER_STACK)
        ))
    })
}

/// Byte offset and length (in elements of its type) of buffer `buf`.
fn span(p: &Program, buf: usize) -> (usize, usize) {
    let (words, len) = p.locs[buf];
    (words * 4, len)
}

impl Backend for CpuBackend {
    fn name(&self) -> String {
        format!("cpu ({} threads, {})", rayon::current_num_threads(), crate::blas::kernel().name())
    }

    fn target(&self) -> Target {
        Target::Cpu
    }
}
