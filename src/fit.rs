//! What fits, before anything runs: the whole memory of a training step on a device (the plan's
//! persistent region and arena, the resident dataset, and on a GPU the CUDA context and cuBLAS
//! workspace), the largest batch within a budget, the leanest memory options a fixed batch
//! needs, and sweeps of the memory against keep or batch.
//!
//! The plan is exact; the other terms are stated with where they come from. The search for the
//! largest batch is a binary search over the plan's total, which grows with the batch (the
//! activations are linear in it, the workspaces are capped); the answer is checked at its edge:
//! the batch found fits and the next one does not.

use crate::data::DatasetKind;
use crate::ir::{ModelConfig, Target};
use crate::model::wrn;
use crate::plan::Program;
use crate::schedule::{Lowering, Mode, Options};

const MIB: usize = 1 << 20;

/// One term of a device's memory besides the plan, with where its size comes from.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Term {
    pub what: String,
    pub bytes: usize,
    pub source: String,
}

/// The CUDA context with our kernels loaded (cubins, lazy module loading), as `bench` measured
/// it ("in use before our first allocation") on an H200 with driver 580 and CUDA 13, rounded up
/// (BENCHMARKS.md, the GPU's first session). Other cards and drivers differ by some MiB.
pub const CUDA_CONTEXT: usize = 527 * MIB;

/// cuBLAS's handle and the GEMM kernels it loads when a shape first needs them: what `bench`
/// found in use beyond the context, the plan and our workspaces on an H200 for WRN-28-10 and
/// WRN-16-4, rounded up (BENCHMARKS.md, the GPU's first session).
pub const CUBLAS_LOADED: usize = 100 * MIB;

/// The memory outside the plan on `target` with `dataset` resident.
pub fn overheads(target: Target, dataset: DatasetKind) -> Vec<Term> {
    let mut terms = vec![Term {
        what: format!("{dataset} resident"),
        bytes: resident_bytes(dataset),
        source: "train and test images (1 byte per pixel) and labels, as kept by the backend".into(),
    }];
    if target == Target::Cuda {
        terms.push(Term {
            what: "CUDA context".into(),
            bytes: CUDA_CONTEXT,
            source: "measured on an H200 (driver 580, CUDA 13) with our kernels loaded".into(),
        });
        terms.push(Term {
            what: "cuBLAS kernels".into(),
            bytes: CUBLAS_LOADED,
            source: "cuBLAS's handle and the GEMM kernels it loads on first use (measured 81-99 MiB)".into(),
        });
        terms.push(Term {
            what: "cuBLAS workspace".into(),
            bytes: crate::gpu::CUBLAS_WORKSPACE,
            source: "allocated by sliceout up front (cuBLAS's size for Hopper)".into(),
        });
        terms.push(Term {
            what: "reduction scratch".into(),
            bytes: crate::gpu::REDUCTION_SCRATCH,
            source: "partial sums of the multi-block BN reductions, allocated up front".into(),
        });
    }
    terms
}

/// Bytes of a dataset's splits as a backend keeps them: images, labels, normalisation tables.
pub fn resident_bytes(dataset: DatasetKind) -> usize {
    let (images, channels) = match dataset {
        DatasetKind::Cifar10 | DatasetKind::Cifar100 => (60_000, 3),
        DatasetKind::FashionMnist => (70_000, 1),
    };
    images * (channels * 1024 + 1) + 2 * channels * 256 * 4
}

/// Named rungs of memory options, from the fastest (most memory) to the leanest, whatever the
/// lowering.
pub fn option_ladder() -> Vec<(&'static str, Options)> {
    let base = Options::default();
    vec![
        ("fastest: keep BN outputs, 512 MiB im2col", Options { recompute: false, col_budget_mib: 512, ..base }),
        ("default", base),
        ("lean: 8 MiB im2col", Options { col_budget_mib: 8, ..base }),
        ("leanest: one image per im2col", Options { col_chunk: 1, ..base }),
    ]
}

/// Persistent region plus arena of a training step (no allocation of the sizes is made);
/// `usize::MAX` for a batch whose sizes cannot even be counted (past what any machine holds).
pub fn step_bytes(config: &ModelConfig, batch: usize, options: Options, lowering: Lowering) -> usize {
    if config.footprint(batch).is_err() {
        return usize::MAX;
    }
    let p = Program::new(wrn::build(config, batch, Mode::Train, options, lowering));
    p.arena_bytes() + p.schedule.persistent_len() * 4
}

/// What stopped a search for the largest batch one image short of the next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bound {
    /// One more image's step does not fit the budget.
    Budget,
    /// One more image would make a buffer past [`crate::ir::config::MAX_BYTES`], which no
    /// plan is made for: the budget has room for more.
    Sizes,
}

/// The largest batch whose step plus `fixed` bytes fits `budget`, with the step's bytes and
/// what stops the next batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Largest {
    pub batch: usize,
    pub bytes: usize,
    pub bound: Bound,
}

/// The largest batch whose step plus `fixed` bytes fits `budget` (no cap but the sizes a plan
/// can be made for); `None` when not even batch 1 fits. The batch doubles until a step does not
/// fit, then a binary search finds the edge.
pub fn largest_batch(
    config: &ModelConfig,
    options: Options,
    lowering: Lowering,
    budget: usize,
    fixed: usize,
) -> Option<Largest> {
    let fits = |b: usize| fitting_step(config, options, lowering, budget, fixed, b);
    let mut best = (1, fits(1)?);
    // fits(lo); !fits(hi) once found.
    let (mut lo, mut hi) = (1usize, None);
    while hi.is_none() {
        match lo.checked_mul(2) {
            Some(next) => match fits(next) {
                Some(bytes) => (lo, best) = (next, (next, bytes)),
                None => hi = Some(next),
            },
            None => hi = Some(usize::MAX),
        }
    }
    let mut hi = hi.unwrap_or(usize::MAX);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        match fits(mid) {
            Some(bytes) => (lo, best) = (mid, (mid, bytes)),
            None => hi = mid,
        }
    }
    let (batch, bytes) = best;
    let bound = match batch.checked_add(1).is_some_and(|next| config.footprint(next).is_ok()) {
        true => Bound::Budget,
        false => Bound::Sizes,
    };
    Some(Largest { batch, bytes, bound })
}

/// The bytes of a step at batch `b` when they and `fixed` bytes fit `budget`.
fn fitting_step(
    config: &ModelConfig,
    options: Options,
    lowering: Lowering,
    budget: usize,
    fixed: usize,
    b: usize,
) -> Option<usize> {
    let bytes = step_bytes(config, b, options, lowering);
    // `usize::MAX`: a step no plan is made for, whatever the budget.
    (bytes != usize::MAX && bytes.saturating_add(fixed) <= budget).then_some(bytes)
}

/// The largest power of two in `1..=cap` whose step plus `fixed` bytes fits `budget`.
pub fn largest_power_of_two(
    config: &ModelConfig,
    options: Options,
    lowering: Lowering,
    budget: usize,
    fixed: usize,
    cap: usize,
) -> Option<(usize, usize)> {
    let mut best = None;
    let mut b = 1usize;
    while b <= cap.max(1) {
        let Some(bytes) = fitting_step(config, options, lowering, budget, fixed, b) else { break };
        best = Some((b, bytes));
        b = match b.checked_mul(2) {
            Some(next) => next,
            None => break,
        };
    }
    best
}

/// One point of a sweep: the swept value, the plan's arena and total (persistent + arena).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SweepPoint {
    pub x: f64,
    pub arena: usize,
    pub total: usize,
}

/// Keep values of a keep sweep: 1.0 down to 0.25 in eighths.
pub const SWEEP_KEEPS: [f64; 7] = [1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25];

/// Batches of a batch sweep: powers of two from 16 to 1024.
pub const SWEEP_BATCHES: [usize; 7] = [16, 32, 64, 128, 256, 512, 1024];

/// The plan's memory at each keep of [`SWEEP_KEEPS`] (batch fixed).
pub fn sweep_keep(config: &ModelConfig, batch: usize, options: Options, lowering: Lowering) -> Vec<SweepPoint> {
    SWEEP_KEEPS.iter().map(|&keep| point(keep, &ModelConfig { keep, ..*config }, batch, options, lowering)).collect()
}

/// The plan's memory at each batch of [`SWEEP_BATCHES`] (keep fixed).
pub fn sweep_batch(config: &ModelConfig, options: Options, lowering: Lowering) -> Vec<SweepPoint> {
    SWEEP_BATCHES.iter().map(|&b| point(b as f64, config, b, options, lowering)).collect()
}

fn point(x: f64, config: &ModelConfig, batch: usize, options: Options, lowering: Lowering) -> SweepPoint {
    let p = Program::new(wrn::build(config, batch, Mode::Train, options, lowering));
    SweepPoint { x, arena: p.arena_bytes(), total: p.arena_bytes() + p.schedule.persistent_len() * 4 }
}

/// Parses a memory size: a number with an optional binary unit (`B`, `K`/`KiB`, `M`/`MiB`,
/// `G`/`GiB`, `T`/`TiB`; a bare number is MiB), e.g. `80GiB`, `1536M`, `0.5G`.
pub fn parse_size(text: &str) -> Option<usize> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number.parse().ok()?;
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "b" => 1.0,
        "k" | "kib" => 1024.0,
        "" | "m" | "mib" => MIB as f64,
        "g" | "gib" => (1u64 << 30) as f64,
        "t" | "tib" => (1u64 << 40) as f64,
        _ => return None,
    };
    let bytes = value * scale;
    (bytes.is_finite() && bytes >= 1.0 && bytes < usize::MAX as f64).then_some(bytes as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::Precision;

    fn wrn(depth: usize, widen: usize, keep: f64) -> ModelConfig {
        ModelConfig { depth, widen, classes: 10, in_channels: 3, keep }
    }

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("80GiB"), Some(80 << 30));
        assert_eq!(parse_size("80G"), Some(80 << 30));
        assert_eq!(parse_size("1536"), Some(1536 << 20));
        assert_eq!(parse_size("0.5 gib"), Some(512 << 20));
        assert_eq!(parse_size("2T"), Some(2 << 40));
        for bad in ["", "GiB", "-1G", "1.2.3G", "5 parsecs", "0", "1e400G"] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }

    /// The batch found fits and the next one does not, on both targets.
    #[test]
    fn the_largest_batch_fits_and_one_more_does_not() {
        for (target, budget) in [(Target::Cpu, 900 * MIB), (Target::Cuda, 2048 * MIB)] {
            let c = wrn(16, 4, 0.5);
            let (o, l) = (Options::default(), Lowering { target, ..Lowering::default() });
            let fixed: usize = overheads(target, DatasetKind::Cifar10).iter().map(|t| t.bytes).sum();
            let Largest { batch: b, bytes, bound } = largest_batch(&c, o, l, budget, fixed).unwrap();
            assert!(b > 1 && b < 1 << 16 && bound == Bound::Budget, "{b}");
            assert_eq!(bytes, step_bytes(&c, b, o, l));
            assert!(bytes + fixed <= budget);
            assert!(step_bytes(&c, b + 1, o, l) + fixed > budget, "batch {} fits too", b + 1);
            let (p, pbytes) = largest_power_of_two(&c, o, l, budget, fixed, 1 << 16).unwrap();
            assert!(p.is_power_of_two() && p <= b && pbytes + fixed <= budget);
            assert!(step_bytes(&c, 2 * p, o, l) + fixed > budget);
        }
    }

    #[test]
    fn nothing_fits_a_budget_below_the_fixed_terms() {
        let c = wrn(10, 2, 1.0);
        let (o, l) = (Options::default(), Lowering::default());
        assert_eq!(largest_batch(&c, o, l, 10 * MIB, 20 * MIB), None);
        assert_eq!(largest_power_of_two(&c, o, l, 10 * MIB, 20 * MIB, 64), None);
    }

    /// Past 65,536 images: the search goes on as long as the budget does, and where the sizes
    /// end first, says so.
    #[test]
    fn the_largest_batch_has_no_cap_but_the_sizes() {
        let c = wrn(10, 1, 1.0);
        let (o, l) = (Options { col_chunk: 1, ..Options::default() }, Lowering::default());
        let budget = 2 * step_bytes(&c, 1 << 16, o, l);
        let Largest { batch, bytes, bound } = largest_batch(&c, o, l, budget, 0).unwrap();
        assert!(batch > 1 << 17 && bound == Bound::Budget, "{batch}");
        assert!(bytes <= budget && step_bytes(&c, batch + 1, o, l) > budget);
        let Largest { batch, bound, .. } = largest_batch(&c, o, l, usize::MAX, 0).unwrap();
        assert_eq!(bound, Bound::Sizes);
        assert!(c.footprint(batch).is_ok() && c.footprint(batch + 1).is_err(), "{batch}");
    }

    /// Leaner rungs never need more memory than the ones before them.
    #[test]
    fn the_ladder_goes_down() {
        let c = wrn(16, 4, 1.0);
        for target in [Target::Cpu, Target::Cuda] {
            for precision in Precision::ALL {
                let l = Lowering { target, precision, ..Lowering::default() };
                let bytes: Vec<usize> = option_ladder().iter().map(|(_, o)| step_bytes(&c, 64, *o, l)).collect();
                assert!(bytes.windows(2).all(|w| w[0] >= w[1]), "{target:?} {precision:?}: {bytes:?}");
                assert!(bytes[0] > bytes[3]);
            }
        }
    }

    /// Less keep never needs more memory; more batch never needs less.
    #[test]
    fn sweeps_are_monotone() {
        let c = wrn(16, 4, 0.5);
        let keep = sweep_keep(&c, 64, Options::default(), Lowering::default());
        assert!(keep.windows(2).all(|w| w[0].arena >= w[1].arena && w[0].total >= w[1].total), "{keep:?}");
        assert!(keep[0].arena > keep[6].arena);
        let batch = sweep_batch(&c, Options::default(), Lowering::default());
        assert!(batch.windows(2).all(|w| w[0].arena < w[1].arena && w[0].total < w[1].total), "{batch:?}");
    }
}
