//! Where a program runs. A backend owns two memory regions (docs/DESIGN.md, principle 2): the
//! persistent region (parameters, momentum, BN statistics) and the arena, one allocation sized
//! before the first step to the largest plan it will run. It keeps the dataset splits it is
//! given resident and gathers batches from them, and it runs a [`Program`]'s ops one at a time
//! through `Op::run_cpu` / `Op::run_cuda`.
//!
//! The trait is three: [`Memory`] (the regions), [`Batches`] (the data pipeline) and [`Execute`]
//! (ops); a [`Backend`] is all three. [`open`] picks one for `--device`.
//!
//! - `cpu.rs`: the reference, rayon over host memory.
//! - `cuda.rs`: one GPU through the `gpu` runtime; a clear `Error::Device` where there is none.
//!
//! Both run fp32 and bf16 programs (`ir::Precision`).

pub mod cpu;
pub mod cuda;

pub use self::cpu::CpuBackend;
pub use self::cuda::CudaBackend;
pub use crate::gpu::Math;
pub use crate::ops::StepCtx;

use crate::data::loader::{Crop, Normalization};
use crate::data::Split;
use crate::error::Result;
use crate::gpu::KernelTime;
use crate::ir::Target;
use crate::plan::Program;

/// A dataset split kept resident by the backend (on a GPU: in device memory, so batches are
/// gathered, cropped and normalised there).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplitId {
    Train,
    Test,
}

/// The two memory regions.
pub trait Memory {
    /// Makes the arena at least `bytes` long. The only arena allocation; done before any step.
    fn reserve_arena(&mut self, bytes: usize) -> Result<()>;
    /// Replaces the persistent region.
    fn set_persistent(&mut self, data: &[f32]) -> Result<()>;
    /// Copies the persistent region out.
    fn get_persistent(&mut self, out: &mut [f32]);
    /// Writes `data` into buffer `buf` of `program`.
    fn write(&mut self, program: &Program, buf: usize, data: &[f32]);
    /// Reads buffer `buf` of `program` into `out`.
    fn read(&mut self, program: &Program, buf: usize, out: &mut [f32]);
    /// Device memory in use by the whole process (GPU backends), for comparison with the plan.
    fn memory_in_use(&self) -> Option<usize> {
        None
    }
    /// What the device holds besides the plan (GPU backends): the CUDA context with the loaded
    /// kernels, and the GEMM library's workspace, in bytes.
    fn device_overheads(&self) -> Option<DeviceOverheads> {
        None
    }
}

/// Device memory a GPU backend uses outside its plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceOverheads {
    /// In use once the context exists and the kernels are loaded, before our first allocation.
    pub context: usize,
    /// cuBLAS's workspace and the reductions' scratch, allocated by us up front.
    pub workspaces: usize,
}

/// The data pipeline: resident splits and batch gathers.
pub trait Batches {
    /// Takes a split to keep resident, normalised with `norm` when batches are gathered.
    fn upload_split(&mut self, id: SplitId, split: Split, channels: usize, norm: &Normalization) -> Result<()>;
    /// Images in a resident split.
    fn split_len(&self, id: SplitId) -> usize;
    /// Gathers images `indices` of split `id`, each cropped/flipped by `crops[i]`, normalised,
    /// into `program`'s input buffer `(C, N, 32, 32)` and their labels into its label buffer.
    fn fill_batch(&mut self, program: &Program, id: SplitId, indices: &[usize], crops: &[Crop]);
}

/// Running ops.
pub trait Execute {
    /// Runs op `step` of `program`.
    fn run_op(&mut self, program: &Program, step: usize, ctx: &StepCtx);
    /// Waits for queued work (a no-op on the CPU).
    fn synchronize(&mut self) {}
    /// Starts timing each kernel and GEMM on the device (CUDA events, no synchronisation);
    /// false where the backend has no device timer (the caller then times ops on the host).
    fn start_timing(&mut self) -> bool {
        false
    }
    /// The device time of each kernel and GEMM queued since `start_timing`, in queue order
    /// (waits for the device; timing stops).
    fn take_timings(&mut self) -> Vec<KernelTime> {
        vec![]
    }
    /// Runs every op of `program` in order.
    fn run(&mut self, program: &Program, ctx: &StepCtx) {
        for i in 0..program.schedule.steps.len() {
            self.run_op(program, i, ctx);
        }
    }
}

/// A place to train: memory, batches and ops together.
pub trait Backend: Memory + Batches + Execute {
    /// E.g. `cpu (2 threads, avx512-bf16)`: the CPU names its threads and instruction set.
    fn name(&self) -> String;
    /// What its programs' workspaces are sized for.
    fn target(&self) -> Target;
}

/// `--device`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceChoice {
    Auto,
    Cpu,
    Cuda,
}

/// The memory a run on `choice` can take now, and the backend it is for: the free memory of
/// device 0 for a GPU, the kernel's estimate of available memory (`MemAvailable`) on the CPU.
pub fn free_memory(choice: DeviceChoice) -> Result<(Target, usize)> {
    let gpu = match choice {
        DeviceChoice::Cuda => true,
        DeviceChoice::Cpu => false,
        DeviceChoice::Auto => crate::gpu::available(),
    };
    if gpu {
        return crate::gpu::device_memory().map(|(free, _)| (Target::Cuda, free));
    }
    let meminfo = std::fs::read_to_string("/proc/meminfo").map_err(|e| crate::Error::io("/proc/meminfo", e))?;
    let kib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .ok_or_else(|| crate::Error::data("/proc/meminfo", "has no MemAvailable line"))?;
    let available = kib.saturating_mul(1024);
    // A process limit (`ulimit -v`) caps what this process can map whatever the system has.
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    Ok((Target::Cpu, address_space_left(&limits, &status).map_or(available, |left| left.min(available))))
}

/// Bytes this process may still map under its address-space limit (`Max address space` of
/// `/proc/self/limits`, less `VmSize` of `/proc/self/status`); `None` when there is no limit or
/// the files do not say.
fn address_space_left(limits: &str, status: &str) -> Option<usize> {
    let limit = limits.lines().find_map(|l| l.strip_prefix("Max address space"))?.split_whitespace().next()?;
    let limit: usize = limit.parse().ok()?; // "unlimited" does not parse
    let kib = |v: &str| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok();
    let used = status.lines().find_map(|l| l.strip_prefix("VmSize:")).and_then(kib)?;
    Some(limit.saturating_sub(used.saturating_mul(1024)))
}

/// Picks the backend and says which on one line: `auto` takes CUDA when the driver loads and a
/// device exists, else the CPU (a broken driver named in that line); `cuda` without a usable GPU
/// is an error.
pub fn open(choice: DeviceChoice, math: Math, verbose: bool) -> Result<Box<dyn Backend>> {
    let (b, why): (Box<dyn Backend>, String) = match choice {
        DeviceChoice::Cuda => (Box::new(CudaBackend::new(math)?), String::new()),
        DeviceChoice::Cpu => (Box::new(CpuBackend::new()), String::new()),
        DeviceChoice::Auto => match crate::gpu::auto_fallback() {
            Ok(()) => (Box::new(CudaBackend::new(math)?), " (auto: GPU found)".into()),
            Err(why) => (Box::new(CpuBackend::new()), format!(" (auto: {why})")),
        },
    };
    if verbose {
        outln!("device: {}{why}", b.name());
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Under `ulimit -v` the room left is the limit less what is mapped already; without a
    /// limit, or without the lines, there is none to count.
    #[test]
    fn the_address_space_limit_is_read_from_proc() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max address space         1024000000           unlimited            bytes\n";
        let status = "Name:\tsliceout\nVmSize:\t  100000 kB\n";
        assert_eq!(address_space_left(limits, status), Some(1_024_000_000 - 100_000 * 1024));
        let unlimited = limits.replace("1024000000", "unlimited ");
        assert_eq!(address_space_left(&unlimited, status), None);
        assert_eq!(address_space_left(limits, "Name:\tx\n"), None);
        assert_eq!(address_space_left("", status), None);
        // This process: whatever it reads, never more than the limit.
        let (target, free) = free_memory(DeviceChoice::Cpu).unwrap();
        assert!(target == Target::Cpu && free > 0);
    }
}
