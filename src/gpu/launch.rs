//! What a kernel launch is made of: the kernel's handle ([`KernelId`]), launch geometries,
//! kernel arguments, the division the kernels do by multiply-and-shift, the multi-block
//! reductions' scratch, and the [`Launcher`] that queues launches and GEMMs.
//!
//! Kernels are named by handles from a table fixed when the crate is built (`ops::kernels`): a
//! [`Launcher`] resolves the whole table once when it is made ([`resolve`]; a name no kernel
//! file defines is an error there), and a launch indexes what it resolved. Arguments travel as
//! a stack array of pointers to their values ([`arg_pointers`]), the form the driver takes, so
//! a launch looks nothing up and allocates nothing.

use std::ffi::c_void;

use cudarc::driver::LaunchConfig;

use super::GemmCall;
use crate::error::{Error, Result};
use crate::ir::Dtype;

/// A kernel of the loaded kernel files, as a launch names it: its place in the table its
/// [`Launcher`] resolved when it was made, and its name (for messages, timings, recordings).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelId {
    index: u16,
    name: &'static str,
}

impl KernelId {
    /// Entry `index` of a table whose name there is `name` (the table's macro makes these).
    pub const fn new(index: u16, name: &'static str) -> KernelId {
        KernelId { index, name }
    }

    pub fn index(self) -> usize {
        self.index as usize
    }

    pub fn name(self) -> &'static str {
        self.name
    }
}

/// A kernel written once over the storage type: its f32 entry point `k` and its bf16 one
/// `k_bf16` (the convention of every `.cu` file).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StorageKernel {
    pub f32: KernelId,
    pub bf16: KernelId,
}

impl StorageKernel {
    /// The entry point over storage `dtype`.
    pub fn of(self, dtype: Dtype) -> KernelId {
        match dtype {
            Dtype::F32 => self.f32,
            Dtype::Bf16 => self.bf16,
        }
    }
}

/// Resolves every name of a kernel table, in order, with `find` (which looks a name up in the
/// loaded kernel files): what a [`Launcher`] does once when it is made. A name that `find`
/// does not know is an error naming it, before anything is launched.
pub fn resolve<F>(names: &[&'static str], mut find: impl FnMut(&str) -> Option<F>) -> Result<Vec<F>> {
    let resolved = names.iter().map(|&name| {
        find(name).ok_or_else(|| Error::Device(format!("kernel `{name}` of the kernel table is in no kernel file")))
    });
    resolved.collect()
}

/// Channels (per launch) and partial sums the multi-block reductions' scratch has room for:
/// partial sums `[channel][part]` (two f64 each), finished sums `[channel]` (two f64 each) and
/// a completion counter per channel (`common.cu`, `last_block_of`).
pub const REDUCTION_CHANNELS: usize = 1 << 15;
pub const REDUCTION_PARTS: usize = 1 << 15;

/// The reductions' scratch, allocated (zeroed) with the cuBLAS workspace.
pub const REDUCTION_SCRATCH: usize = REDUCTION_PARTS * 16 + REDUCTION_CHANNELS * (16 + 4);

/// The reduction scratch's regions as addresses: (partial sums, finished sums, counters).
pub fn reduction_regions(base: u64) -> (u64, u64, u64) {
    let parts = base;
    let sums = parts + 16 * REDUCTION_PARTS as u64;
    (parts, sums, sums + 16 * REDUCTION_CHANNELS as u64)
}

/// How many blocks share each of `channels` rows of `m` values in a multi-block reduction:
/// about 8,192 values a block (so a 128-image 32x32 channel takes 16 blocks and a layer fills
/// the GPU), at most 64, and never more than the scratch holds.
pub fn reduction_parts(channels: usize, m: usize) -> usize {
    assert!((1..=REDUCTION_CHANNELS).contains(&channels), "a reduction over {channels} channels");
    m.div_ceil(8192).clamp(1, 64).min(REDUCTION_PARTS / channels).max(1)
}

/// Unsigned division by a divisor fixed at launch, for dividends below 2^31: the kernel computes
/// `(umulhi(x, magic) + x) >> shift` (`div_by` in `common.cu`) instead of a division, which a
/// GPU does in about twenty instructions. `shift = ceil(log2 d)` and
/// `magic = floor(2^32 (2^shift - d) / d) + 1` (Granlund and Montgomery's round-up method).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FastDiv {
    pub magic: u32,
    pub shift: u32,
}

impl FastDiv {
    pub fn new(d: usize) -> FastDiv {
        assert!((1..1 << 31).contains(&d), "divisor {d} out of range");
        let d = d as u64;
        let shift = 64 - (d - 1).leading_zeros();
        let magic = ((1u64 << 32) * ((1u64 << shift) - d) / d + 1) as u32;
        FastDiv { magic, shift }
    }

    /// What the kernel computes: `x / d` for `x < 2^31`.
    pub fn div(&self, x: u32) -> u32 {
        let hi = ((x as u64 * self.magic as u64) >> 32) as u32;
        (hi + x) >> self.shift
    }
}

/// Launch geometry of a grid-stride loop over `total` elements: one thread per element up to
/// 65,536 blocks of 256, so no block is launched without work.
pub fn grid(total: usize) -> LaunchConfig {
    let blocks = total.div_ceil(256).clamp(1, 1 << 16) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

/// Element-wise over `channels` rows of `m`: y = channel.
pub fn rows(channels: usize, m: usize) -> LaunchConfig {
    assert!(channels <= 65_535, "{channels} rows exceed a grid's y dimension");
    LaunchConfig {
        grid_dim: (m.div_ceil(256).clamp(1, 1024) as u32, channels as u32, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Element-wise work over `channels` rows of `m` (y = channel), four elements a thread in a
/// grid-stride loop: the per-channel parameters a thread loads once serve four elements.
pub fn elementwise_rows(channels: usize, m: usize) -> LaunchConfig {
    rows(channels, m.div_ceil(4))
}

/// A multi-block reduction over `channels` rows of `m`: x = part of the row, y = channel.
pub fn reduction(channels: usize, m: usize) -> LaunchConfig {
    assert!(channels <= 65_535, "{channels} rows exceed a grid's y dimension");
    LaunchConfig {
        grid_dim: (reduction_parts(channels, m) as u32, channels as u32, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One block of 256 threads.
pub fn one_block() -> LaunchConfig {
    LaunchConfig { grid_dim: (1, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

/// The address `floats` f32 elements past `base`.
pub fn f32_at(base: u64, floats: usize) -> u64 {
    base + 4 * floats as u64
}

/// A dimension as the kernels' `int`.
pub fn int(v: usize) -> i32 {
    i32::try_from(v).expect("dimension fits in i32")
}

/// A kernel argument: the driver copies `size_of::<Self>()` bytes from the value's address
/// (device pointers are passed as their `u64` address).
///
/// # Safety
/// The type's bytes must be exactly the kernel parameter's: plain old data in the C layout the
/// kernel declares.
pub unsafe trait Arg {}

// SAFETY: the kernels' scalar parameters, and pointers as 64-bit addresses.
unsafe impl Arg for u64 {}
unsafe impl Arg for i64 {}
unsafe impl Arg for i32 {}
unsafe impl Arg for u32 {}
unsafe impl Arg for f32 {}
unsafe impl Arg for f64 {}

/// The most arguments a kernel takes (`im2col_bn_relu`'s): the length of a launch's array of
/// argument pointers, which lives on the stack.
pub const MAX_ARGS: usize = 24;

/// Points the first `args.len()` of `slots` at the arguments' values, as the driver's launch
/// takes them, and returns that part. The pointers are valid while `args` is borrowed.
pub fn arg_pointers<'s>(args: &[&dyn Arg], slots: &'s mut [*mut c_void; MAX_ARGS]) -> &'s mut [*mut c_void] {
    assert!(args.len() <= MAX_ARGS, "{} kernel arguments: a launch passes at most {MAX_ARGS}", args.len());
    for (slot, &arg) in slots.iter_mut().zip(args) {
        *slot = arg as *const dyn Arg as *const c_void as *mut c_void;
    }
    &mut slots[..args.len()]
}

/// What ops queue on a GPU: kernel launches (by handle) and GEMMs. [`Gpu`](super::Gpu) runs them;
/// [`Recorder`](super::Recorder) writes them down, so what a program queues is known, and tested, without a GPU.
pub trait Launcher {
    /// Queues kernel `kernel` of the table the launcher resolved.
    fn launch(&self, kernel: KernelId, cfg: LaunchConfig, args: &[&dyn Arg]);
    /// Queues one `cublasGemmEx`.
    fn gemm(&self, g: &GemmCall);
    /// Base address of the multi-block reductions' scratch ([`REDUCTION_SCRATCH`] bytes).
    fn reduction_scratch(&self) -> u64;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernels' division by multiply-and-shift against `/`, for every divisor the models
    /// use and random ones, at dividends around multiples of the divisor and near 2^31.
    #[test]
    fn fast_division_is_exact_below_two_to_the_31() {
        let mut rng = crate::rng::Rng::new(7, 0);
        let mut divisors: Vec<usize> = (1..=2048).collect();
        divisors.extend((0..2000).map(|_| 1 + rng.below((1 << 31) - 1)));
        divisors.extend([(1 << 31) - 1, 1 << 30, 3 << 29]);
        for d in divisors {
            let f = FastDiv::new(d);
            let mut xs: Vec<u32> = vec![0, 1, (1 << 31) - 1, (1 << 31) - 2];
            for q in [1usize, 2, 3, 1000, (1 << 31) / d] {
                let x = q * d;
                xs.extend([x.saturating_sub(1), x, x + 1].iter().filter(|&&x| x < 1 << 31).map(|&x| x as u32));
            }
            xs.extend((0..64).map(|_| rng.below(1 << 31) as u32));
            for x in xs {
                assert_eq!(f.div(x), x / d as u32, "{x} / {d}");
            }
        }
    }

    #[test]
    fn reductions_fill_the_gpu_within_the_scratch() {
        assert_eq!(reduction_parts(80, 128 * 32 * 32), 16);
        assert_eq!(reduction_parts(320, 128 * 8 * 8), 1);
        assert_eq!(reduction_parts(1, 1 << 30), 64);
        assert_eq!(reduction_parts(REDUCTION_CHANNELS, 1 << 30), 1);
        for (c, m) in [(640, 1 << 24), (3000, 1 << 20), (17, 5)] {
            assert!(c * reduction_parts(c, m) <= REDUCTION_PARTS);
        }
        let (p, s, n) = reduction_regions(0);
        assert_eq!((p, s, n as usize + 4 * REDUCTION_CHANNELS), (0, 16 * REDUCTION_PARTS as u64, REDUCTION_SCRATCH));
    }

    /// Each slot points at its argument's bytes, whatever its type; the rest stay as they were.
    #[test]
    fn argument_pointers_point_at_the_values() {
        let (a, b, c, d) = (0x1234_5678_9abc_def0u64, -7i32, 2.5f32, 0.125f64);
        let mut slots = [std::ptr::null_mut(); MAX_ARGS];
        let used = arg_pointers(&[&a, &b, &c, &d], &mut slots);
        assert_eq!(used.len(), 4);
        // SAFETY: each pointer was taken from the value of that type, still borrowed here.
        unsafe {
            assert_eq!(*(used[0] as *const u64), a);
            assert_eq!(*(used[1] as *const i32), b);
            assert_eq!(*(used[2] as *const f32), c);
            assert_eq!(*(used[3] as *const f64), d);
        }
        assert!(slots[4..].iter().all(|p| p.is_null()));
    }

    /// A table resolves in order, once per name; a name no file defines is named in the error.
    #[test]
    fn resolving_a_table_names_what_is_missing() {
        let files = ["a", "b", "c"];
        let mut lookups = 0;
        let found = resolve(&["c", "a"], |k| {
            lookups += 1;
            files.iter().position(|f| *f == k)
        });
        assert_eq!((found.unwrap(), lookups), (vec![2, 0], 2));
        let err = resolve(&["a", "nope"], |k| files.iter().position(|f| *f == k)).unwrap_err().to_string();
        assert!(err.contains("`nope`") && err.contains("no kernel file"), "{err}");
    }

    #[test]
    fn grids_never_launch_more_blocks_than_the_work_needs() {
        for total in [1, 255, 256, 257, 1 << 20] {
            let g = grid(total);
            assert_eq!(g.grid_dim.0 as usize, total.div_ceil(256));
        }
        assert_eq!(grid(usize::MAX / 2).grid_dim.0, 1 << 16);
        assert_eq!(grid(0).grid_dim.0, 1);
    }
}
