//! What a kernel launch is made of: launch geometries, kernel arguments, the division the
//! kernels do by multiply-and-shift, the multi-block reductions' scratch, and the [`Launcher`]
//! that queues launches and GEMMs.

use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::GemmCall;

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

/// The kernel `name` over storage `dtype`: `name` itself for f32, `name_bf16` for bf16 (the
/// convention of every `.cu` file: one template, one `extern "C"` entry point per type).
macro_rules! kernel {
    ($name:literal, $dtype:expr) => {
        match $dtype {
            $crate::ir::Dtype::F32 => $name,
            $crate::ir::Dtype::Bf16 => concat!($name, "_bf16"),
        }
    };
}
pub(crate) use kernel;

/// A dimension as the kernels' `int`.
pub fn int(v: usize) -> i32 {
    i32::try_from(v).expect("dimension fits in i32")
}

/// A kernel argument (device pointers are passed as their `u64` address).
pub trait Arg {
    fn push<'a>(&'a self, b: &mut cudarc::driver::LaunchArgs<'a>);
}

macro_rules! impl_arg {
    ($($t:ty),*) => {$(
        impl Arg for $t {
            fn push<'a>(&'a self, b: &mut cudarc::driver::LaunchArgs<'a>) {
                b.arg(self);
            }
        }
    )*};
}
impl_arg!(u64, i64, i32, u32, f32, f64);

/// What ops queue on a GPU: kernel launches (by kernel name) and GEMMs. [`Gpu`](super::Gpu) runs them;
/// [`Recorder`](super::Recorder) writes them down, so what a program queues is known, and tested, without a GPU.
pub trait Launcher {
    /// Queues kernel `kernel` of the loaded kernel files.
    fn launch(&self, kernel: &'static str, cfg: LaunchConfig, args: &[&dyn Arg]);
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
