//! Data-parallel training: one model on N ranks (docs/DISTRIBUTED.md).
//!
//! Every rank draws the same slice starts from the shared seed, so a weight gradient is
//! nonzero in the same slice on every rank and its buffer already holds that slice alone: the
//! all-reduce moves the gradient buffers as they are, and its bytes fall with keep like the
//! step's memory and work. What this module owns:
//!
//! - [`Reducer`]: the transport, a sum across ranks and an agreement check. [`Single`] is one
//!   rank; `mpi.rs` (feature `mpi`) is Open MPI on the CPU. A GPU transport (NCCL) would be
//!   another implementation, reducing device buffers in place of the host copies of [`Dist`].
//! - [`Dist`]: the host side of a distributed step: the gradient buckets (each run of adjacent
//!   updates in the schedule is one all-reduce, made just before it: per layer with
//!   `--update early`, one bucket per step with `--update end`), the running statistics
//!   averaged before a test or a save, and the fingerprints the ranks compare.
//! - [`reduced_bytes`]: what one step all-reduces, for `plan`, `bench` and the run.

#[cfg(feature = "mpi")]
pub mod mpi;

use crate::backend::{Backend, StepCtx};
use crate::error::{Error, Result};
use crate::ir::{BufId, Role};
use crate::plan::Program;
use crate::schedule::Schedule;

/// The transport between ranks. Every rank calls the same methods in the same order. `Send`:
/// a run steps on a thread of the CPU pool.
pub trait Reducer: Send {
    /// This rank, `0..ranks()`.
    fn rank(&self) -> usize;
    /// Ranks in the job.
    fn ranks(&self) -> usize;
    /// Makes room for sums of up to `len` floats, so that no step allocates.
    fn reserve(&mut self, len: usize);
    /// Replaces `data` on every rank by its elementwise sum over the ranks.
    fn sum(&mut self, data: &mut [f32]);
    /// The smallest and largest of `value` over the ranks.
    fn spread(&mut self, value: u64) -> (u64, u64);
    /// Ends every rank of the job with status `code` at once (a rank alone leaving would leave
    /// the others waiting in a collective).
    fn abort(&self, code: i32) -> !;
}

/// One rank: sums are the data itself.
pub struct Single;

impl Reducer for Single {
    fn rank(&self) -> usize {
        0
    }
    fn ranks(&self) -> usize {
        1
    }
    fn reserve(&mut self, _len: usize) {}
    fn sum(&mut self, _data: &mut [f32]) {}
    fn spread(&mut self, value: u64) -> (u64, u64) {
        (value, value)
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

/// The environment variable Open MPI's launcher sets in every rank: its presence tells a
/// build without the feature that it was launched by `mpirun`.
pub const LAUNCHED_BY: &str = "OMPI_COMM_WORLD_SIZE";

/// The transport this process was launched with: MPI when `mpirun` started it (feature
/// `mpi`), else none (one rank). A build without the feature under `mpirun` is refused, so
/// that N copies never train N separate runs into one folder.
pub fn launch() -> Result<Option<Box<dyn Reducer>>> {
    let Ok(size) = std::env::var(LAUNCHED_BY) else { return Ok(None) };
    #[cfg(feature = "mpi")]
    {
        let _ = size;
        mpi::Mpi::start().map(|m| Some(Box::new(m) as Box<dyn Reducer>))
    }
    #[cfg(not(feature = "mpi"))]
    Err(Error::Msg(format!(
        "launched by mpirun ({LAUNCHED_BY}={size}) but built without MPI: build with cargo build --release --features mpi"
    )))
}

/// Bytes one training step of `s` all-reduces across ranks: every weight gradient buffer, as
/// f32, at its slice's size.
pub fn reduced_bytes(s: &Schedule) -> usize {
    s.gradients.iter().map(|g| 4 * s.buffers[g.grad].len).sum()
}

/// Bytes of the weight gradients of `s` that lie in sliced blocks (their updates read a slice).
pub fn sliced_bytes(s: &Schedule) -> usize {
    use crate::ir::GradSel;
    let sliced = |g: &&crate::schedule::Gradient| !matches!(g.map, GradSel::Full);
    s.gradients.iter().filter(sliced).map(|g| 4 * s.buffers[g.grad].len).sum()
}

/// A run of adjacent updates in the schedule, reduced as one bucket just before the first.
#[derive(Clone, Debug)]
struct Bucket {
    first: usize,
    end: usize,
    /// Gradient buffer, offset in the bucket, length (floats).
    grads: Vec<(BufId, usize, usize)>,
    len: usize,
}

/// Which part of every global batch a rank trains on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sharding {
    /// Images `rank * batch / N ..` of each global batch: the training of data parallelism.
    Shard,
    /// The whole global batch on every rank (`--same-batch`): N ranks then compute what one
    /// does, which checks the reduction.
    Same,
}

/// The host side of a distributed run on one rank.
pub struct Dist<'r> {
    pub reducer: &'r mut dyn Reducer,
    pub sharding: Sharding,
    buckets: Vec<Bucket>,
    host: Vec<f32>,
    /// Ranges of BN running statistics in the persistent region.
    stats: Vec<std::ops::Range<usize>>,
    region: Vec<f32>,
    /// Bytes reduced by the last step (gradients alone).
    pub last_step_bytes: usize,
    /// Seconds spent in the gradients' reduces (copies, sums and the wait for the slowest rank)
    /// and the steps they were spent in, since [`Dist::take_reduce_time`].
    reduce_seconds: f64,
    reduce_steps: usize,
}

impl<'r> Dist<'r> {
    /// Sized for `program` (its buckets, its persistent region) before the first step.
    pub fn new(reducer: &'r mut dyn Reducer, sharding: Sharding, program: &Program) -> Dist<'r> {
        let s = &program.schedule;
        let mut buckets: Vec<Bucket> = Vec::new();
        for (i, step) in s.steps.iter().enumerate() {
            // A bucket runs on while the steps update: the previous step's (end == i) or this
            // group's own (end == i + 1).
            for sgd in step.op.sgd_updates() {
                let len = program.locs[sgd.grad].1;
                match buckets.last_mut() {
                    Some(b) if b.end >= i => {
                        b.grads.push((sgd.grad, b.len, len));
                        b.len += len;
                        b.end = i + 1;
                    }
                    _ => buckets.push(Bucket { first: i, end: i + 1, grads: vec![(sgd.grad, 0, len)], len }),
                }
            }
        }
        let stats: Vec<_> = s
            .tensors
            .iter()
            .filter(|t| matches!(t.role, Role::RunningMean | Role::RunningVar))
            .map(|t| t.range())
            .collect();
        let largest = buckets.iter().map(|b| b.len).max().unwrap_or(0);
        let stat_len = stats.iter().map(|r| r.len()).sum::<usize>();
        reducer.reserve(largest.max(stat_len).max(2));
        Dist {
            reducer,
            sharding,
            host: vec![0.0; largest],
            buckets,
            stats,
            region: vec![0.0; s.persistent_len()],
            last_step_bytes: 0,
            reduce_seconds: 0.0,
            reduce_steps: 0,
        }
    }

    pub fn rank(&self) -> usize {
        self.reducer.rank()
    }

    pub fn ranks(&self) -> usize {
        self.reducer.ranks()
    }

    /// The images of global batch `images` this rank trains on.
    pub fn shard(&self, images: &[usize]) -> std::ops::Range<usize> {
        match self.sharding {
            Sharding::Same => 0..images.len(),
            Sharding::Shard => {
                let per = images.len() / self.ranks();
                self.rank() * per..(self.rank() + 1) * per
            }
        }
    }

    /// Runs every op of `program`, each bucket of updates after its gradients were averaged
    /// over the ranks.
    pub fn run(&mut self, backend: &mut dyn Backend, program: &Program, ctx: &StepCtx) {
        let inv = 1.0 / self.ranks() as f32;
        let mut next = 0;
        let mut bytes = 0;
        for b in &self.buckets {
            for i in next..b.first {
                backend.run_op(program, i, ctx);
            }
            let t0 = std::time::Instant::now();
            let host = &mut self.host[..b.len];
            for &(buf, at, len) in &b.grads {
                backend.read(program, buf, &mut host[at..at + len]);
            }
            self.reducer.sum(host);
            host.iter_mut().for_each(|x| *x *= inv);
            for &(buf, at, len) in &b.grads {
                backend.write(program, buf, &host[at..at + len]);
            }
            bytes += 4 * b.len;
            self.reduce_seconds += t0.elapsed().as_secs_f64();
            for i in b.first..b.end {
                backend.run_op(program, i, ctx);
            }
            next = b.end;
        }
        for i in next..program.schedule.steps.len() {
            backend.run_op(program, i, ctx);
        }
        self.last_step_bytes = bytes;
        self.reduce_steps += 1;
    }

    /// Mean seconds a step spent reducing gradients since the last call (0 before any step).
    pub fn take_reduce_time(&mut self) -> f64 {
        let mean = self.reduce_seconds / self.reduce_steps.max(1) as f64;
        (self.reduce_seconds, self.reduce_steps) = (0.0, 0);
        mean
    }

    /// `[mean loss, correct]` of this rank's images made the global batch's.
    pub fn reduce_loss(&mut self, loss: &mut [f32; 2]) {
        self.reducer.sum(loss);
        let inv = 1.0 / self.ranks() as f32;
        loss[0] *= inv;
        if self.sharding == Sharding::Same {
            loss[1] *= inv;
        }
    }

    /// Averages BN's running statistics over the ranks, so that every rank tests and saves
    /// the same state.
    pub fn average_running_stats(&mut self, backend: &mut dyn Backend) -> Result<()> {
        backend.get_persistent(&mut self.region);
        let inv = 1.0 / self.ranks() as f32;
        for r in &self.stats {
            let part = &mut self.region[r.clone()];
            self.reducer.sum(part);
            part.iter_mut().for_each(|x| *x *= inv);
        }
        backend.set_persistent(&self.region)
    }

    /// Refuses a run whose ranks hold different parameters or drew different starts: `extra`
    /// (the slice stream's state) and the persistent region hashed, compared over the ranks.
    pub fn check_state(&mut self, backend: &mut dyn Backend, extra: &[u64], epoch: usize) -> Result<()> {
        backend.get_persistent(&mut self.region);
        let mut h = Fnv::new();
        extra.iter().for_each(|&x| h.u64(x));
        self.region.iter().for_each(|&x| h.u32(x.to_bits()));
        let (lo, hi) = self.reducer.spread(h.0);
        if lo != hi {
            return Err(Error::Msg(format!(
                "after epoch {epoch} the {} ranks hold different parameters or drew different slice starts: stopped",
                self.ranks()
            )));
        }
        Ok(())
    }

    /// Refuses a launch whose ranks were given different `what` (its hash `hash`), naming it.
    pub fn agree(&mut self, what: &str, hash: u64) -> Result<()> {
        let (lo, hi) = self.reducer.spread(hash);
        if lo != hi {
            return Err(Error::Msg(format!(
                "the {} ranks were launched with different {what}: launch every rank with the same command line and data",
                self.ranks()
            )));
        }
        Ok(())
    }
}

/// FNV-1a, 64 bits: a hash that is the same on every rank and every build.
pub struct Fnv(pub u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv::new()
    }
}

impl Fnv {
    pub fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    pub fn bytes(&mut self, data: &[u8]) {
        for &b in data {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
    }
    pub fn u32(&mut self, x: u32) {
        self.bytes(&x.to_le_bytes());
    }
    pub fn u64(&mut self, x: u64) {
        self.bytes(&x.to_le_bytes());
    }
    /// The hash of `data` alone.
    pub fn hash(data: &[u8]) -> u64 {
        let mut h = Fnv::new();
        h.bytes(data);
        h.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{ModelConfig, Target};
    use crate::model::wrn;
    use crate::schedule::{Lowering, Mode, Options, UpdateAt};

    fn program(keep: f64, update: UpdateAt) -> Program {
        grouped(keep, update, false)
    }

    fn grouped(keep: f64, update: UpdateAt, sgd_group: bool) -> Program {
        let config = ModelConfig { depth: 10, widen: 2, classes: 10, in_channels: 3, keep };
        let options = Options { update, ..Options::default() };
        let lowering = Lowering { target: Target::Cpu, sgd_group, ..Lowering::default() };
        Program::new(wrn::build(&config, 4, Mode::Train, options, lowering))
    }

    /// With grouped updates (`--sgd-group`) a bucket is the group's step: the same gradients in
    /// the same order as the updates one a step, reduced before the group runs.
    #[test]
    fn grouped_updates_make_the_same_buckets() {
        for update in [UpdateAt::Early, UpdateAt::End] {
            let (plain, grouped) = (program(0.5, update), grouped(0.5, update, true));
            let (mut a, mut b) = (Single, Single);
            let (da, db) = (Dist::new(&mut a, Sharding::Shard, &plain), Dist::new(&mut b, Sharding::Shard, &grouped));
            let grads = |d: &Dist| d.buckets.iter().map(|b| b.grads.clone()).collect::<Vec<_>>();
            assert_eq!(grads(&da), grads(&db), "{update:?}");
            for b in &db.buckets {
                let ops = &grouped.schedule.steps[b.first..b.end];
                let updates: usize = ops.iter().map(|s| s.op.sgd_updates().len()).sum();
                assert_eq!(updates, b.grads.len(), "{update:?}: a bucket is its steps' updates");
            }
        }
    }

    /// Halving the slice halves the sliced gradients and leaves the others (keep 1.0 slices
    /// nothing).
    #[test]
    fn keep_half_reduces_the_full_bytes_less_half_the_sliced_ones() {
        let (full, half) = (program(1.0, UpdateAt::Early), program(0.5, UpdateAt::Early));
        let (f, h) = (&full.schedule, &half.schedule);
        assert_eq!(sliced_bytes(f), 0);
        assert!(sliced_bytes(h) > 0 && sliced_bytes(h) < reduced_bytes(h));
        assert_eq!(reduced_bytes(h), reduced_bytes(f) - sliced_bytes(h));
    }

    /// Early updates make one bucket per run of adjacent updates; end updates one bucket; both
    /// cover every gradient once.
    #[test]
    fn buckets_cover_every_gradient_once() {
        for (update, one) in [(UpdateAt::Early, false), (UpdateAt::End, true)] {
            let p = program(0.5, update);
            let mut single = Single;
            let d = Dist::new(&mut single, Sharding::Shard, &p);
            assert_eq!(d.buckets.len() == 1, one, "{update:?}");
            let total: usize = d.buckets.iter().map(|b| b.len).sum();
            assert_eq!(4 * total, reduced_bytes(&p.schedule));
            let grads: usize = d.buckets.iter().map(|b| b.grads.len()).sum();
            assert_eq!(grads, p.schedule.gradients.len());
        }
    }

    /// Two ranks. `Two(0)`: the other rank holds what this one does. `Two(1)`: the other rank's
    /// values are this one's plus 1, and its hashes differ.
    struct Two(usize);
    impl Reducer for Two {
        fn rank(&self) -> usize {
            self.0
        }
        fn ranks(&self) -> usize {
            2
        }
        fn reserve(&mut self, _: usize) {}
        fn sum(&mut self, data: &mut [f32]) {
            data.iter_mut().for_each(|x| *x = 2.0 * *x + self.0 as f32);
        }
        fn spread(&mut self, v: u64) -> (u64, u64) {
            (v, v ^ self.0 as u64)
        }
        fn abort(&self, _: i32) -> ! {
            unreachable!()
        }
    }

    /// A state that differs between ranks stops the run naming the epoch; the running
    /// statistics are averaged and nothing else in the region changes.
    #[test]
    fn differing_states_are_refused_and_statistics_averaged() {
        use crate::backend::{CpuBackend, Memory};
        let p = program(0.5, UpdateAt::Early);
        let s = &p.schedule;
        let mut backend = CpuBackend::new();
        let region: Vec<f32> = (0..s.persistent_len()).map(|i| i as f32).collect();
        backend.set_persistent(&region).unwrap();
        let mut one = Two(1);
        let mut d = Dist::new(&mut one, Sharding::Shard, &p);
        let e = d.check_state(&mut backend, &[7], 3).unwrap_err().to_string();
        assert!(e.contains("after epoch 3") && e.contains("2 ranks hold different parameters"), "{e}");
        // The other rank's statistics are these plus 1: the average is these plus 0.5; the
        // parameters and momentum are left as they are.
        d.average_running_stats(&mut backend).unwrap();
        let mut after = vec![0f32; region.len()];
        backend.get_persistent(&mut after);
        let stat = |i: usize| d.stats.iter().any(|r| r.contains(&i));
        assert!(!d.stats.is_empty());
        for (i, (a, r)) in after.iter().zip(&region).enumerate() {
            assert_eq!(*a, if stat(i) { r + 0.5 } else { *r }, "float {i}");
        }
        let mut same = Two(0);
        let mut d = Dist::new(&mut same, Sharding::Shard, &p);
        assert!(d.check_state(&mut backend, &[7], 3).is_ok());
    }

    #[test]
    fn shards_split_the_global_batch_and_same_takes_it_whole() {
        let p = program(0.5, UpdateAt::Early);
        let images: Vec<usize> = (0..8).collect();
        let (mut one, mut zero) = (Two(1), Two(0));
        let mut d = Dist::new(&mut one, Sharding::Shard, &p);
        assert_eq!(d.shard(&images), 4..8);
        // A rank whose hash differs from another's is refused, naming what differs.
        let e = d.agree("flags", 7).unwrap_err().to_string();
        assert!(e.contains("different flags") && e.contains("2 ranks"), "{e}");
        // The other rank's loss 2.5 and 4 correct: the mean loss, the images correct in all.
        let mut loss = [1.5, 3.0];
        d.reduce_loss(&mut loss);
        assert_eq!(loss, [2.0, 7.0]);
        let mut same = Dist::new(&mut zero, Sharding::Same, &p);
        assert_eq!(same.shard(&images), 0..8);
        assert!(same.agree("flags", 7).is_ok());
        let mut loss = [1.5, 3.0];
        same.reduce_loss(&mut loss);
        assert_eq!(loss, [1.5, 3.0]);
    }
}
