//! Measuring a training step: the profiler (`profile.rs`: one step op by op, with what each op
//! writes and how much of the arena is live) and the bench (`bench.rs`: whole steps at several
//! keep values and precisions, in one run). Both build their programs, step them through
//! `train::Stepper` on synthetic batches and hand back numbers; `cmd/` prints them.

pub mod bench;
pub mod profile;

/// How the steps of a measurement are drawn: `steps` timed after one warm-up, from `seed`, with
/// slice starts on multiples of `align` (`--align`, as in training).
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub steps: usize,
    pub seed: u64,
    pub align: usize,
}
