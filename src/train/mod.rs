//! The training loop: data -> programs (train, eval) -> backend, epoch after epoch, with
//! progress, metrics, learning curves and checkpoints that resume exactly.
//!
//! - `step.rs`: one step, top to bottom (starts, batch, program, loss).
//! - `lr.rs`: the learning-rate schedules.
//! - `eval.rs`: the test split through eval programs; `sliceout eval`.
//! - `state.rs`: the run's state as a checkpoint and back.
//! - `folder.rs`: the run folder: its lock and what may be written there.
//! - `recal.rs`: BN statistics recalibrated for the full network (`--bn-recal`).
//! - `tb.rs`: the run's TensorBoard events.
//! - `recorded.rs`: the settings that change the numbers, recorded in checkpoints, compared on
//!   resume.
//!
//! A run: [`Run::start`] loads the data, builds and plans the programs, reserves the arena and
//! restores a checkpoint when resuming; [`Run::epoch`] steps through one shuffled epoch;
//! [`Run::end_epoch`] evaluates, logs and checkpoints. Every buffer a step touches was planned
//! and allocated before the first step.
//!
//! A distributed run ([`train_on`], docs/DISTRIBUTED.md) is the same loop on every rank, each
//! stepping through `crate::dist` on its share of the batch; rank 0 alone tests and writes.

pub mod eval;
pub mod folder;
pub mod lr;
pub mod recal;
pub mod recorded;
pub mod state;
pub mod step;
pub mod tb;

pub use eval::{evaluate, EvalRequest, Evaluation, Evaluator};
pub use lr::{learning_rate, LrSchedule};
pub use recal::Recalibrator;
pub use step::{StepRngs, Stepper};

use self::state::{EpochSums, RunMeta, RunState, Snapshot};
use crate::backend::{self, Backend, DeviceChoice, Math, SplitId};
use crate::data::loader::{self, Normalization};
use crate::data::{self, Dataset, DatasetKind, Limits};
use crate::dist::{Dist, Fnv, Reducer, Sharding};
use crate::error::{Error, Result};
use crate::io::atomic::folder_of;
use crate::io::checkpoint::{self, Checkpoint};
use crate::io::lock::FolderLock;
use crate::io::metrics::{self, Change, EpochMetrics};
use crate::io::output::same_file;
use crate::ir::{Invalid, ModelConfig, Role, Target};
use crate::model::wrn;
use crate::model_file;
use crate::ops::SgdParams;
use crate::plan::Program;
use crate::rng::{stream, Rng};
use crate::schedule::{Lowering, Mode, Options};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Everything a training run needs; the command line fills it.
#[derive(Clone, Debug)]
pub struct TrainArgs {
    pub data: PathBuf,
    pub dataset: Option<DatasetKind>,
    pub coarse: bool,
    pub depth: usize,
    pub widen: usize,
    pub keep: f64,
    /// Slice starts are multiples of this.
    pub align: usize,
    pub epochs: usize,
    pub batch: usize,
    pub lr: f64,
    pub momentum: f64,
    pub wd: f64,
    pub nesterov: bool,
    pub schedule: LrSchedule,
    pub seed: u64,
    pub device: DeviceChoice,
    /// GPU GEMM math (the CPU always computes in fp32).
    pub math: Math,
    pub out: PathBuf,
    pub limit_train: Option<usize>,
    pub limit_test: Option<usize>,
    pub augment: bool,
    pub checkpoint_every: usize,
    pub resume: Option<PathBuf>,
    /// Start from these weights (checkpoint or safetensors) instead of fresh ones.
    pub init: Option<PathBuf>,
    /// Replace another run's files in `out` instead of refusing (`--force`).
    pub force: bool,
    pub options: Options,
    /// How the step runs: the precision, input gradients and Winograd (the target is the
    /// backend's, set when the run opens it).
    pub lowering: Lowering,
    /// Recalibrate BN's running statistics over this many training batches before each
    /// epoch's test and report both accuracies (0: off).
    pub bn_recal: usize,
    /// Print per-epoch lines and progress bars.
    pub verbose: bool,
    /// Stop (checkpointed, as on Ctrl-C) once this many steps are done: lets tests interrupt a
    /// run at an exact step.
    pub stop_after: Option<usize>,
    /// Resuming: take settings that differ from the run's (`--change`), recording the change,
    /// instead of refusing them.
    pub allow_changes: bool,
    /// Said (on stderr) when the run is on the CPU: the GPU-only flags given, which change
    /// nothing there (`cmd::flags::gpu_only_note`).
    pub cpu_note: Option<String>,
}

impl TrainArgs {
    /// Flag values out of range, named; those that need the data are checked by [`Run::start`].
    pub fn validate(&self) -> Result<()> {
        self.config(2, 1).validate()?;
        if self.batch == 0 {
            return Err(Error::flag("--batch", self.batch, "an integer >= 1"));
        }
        // A step takes them as f32 (`Run::sgd_at`): what does not survive that is refused.
        if !recorded::rate_fits_f32(self.lr) {
            return Err(Error::flag(
                "--lr",
                format!("{:?}", self.lr),
                format!("a learning rate {}", recorded::RATE_RANGE),
            ));
        }
        if !recorded::momentum_fits_f32(self.momentum) {
            return Err(Error::flag("--momentum", format!("{:?}", self.momentum), recorded::MOMENTUM_RANGE));
        }
        if !recorded::rate_fits_f32(self.wd) {
            return Err(Error::flag(
                "--wd",
                format!("{:?}", self.wd),
                format!("a weight decay {}", recorded::RATE_RANGE),
            ));
        }
        if self.epochs == 0 {
            return Err(Error::flag("--epochs", self.epochs, "an integer >= 1"));
        }
        self.config(2, 1).check_align(self.align)?;
        for (flag, limit) in [("--limit-train", self.limit_train), ("--limit-test", self.limit_test)] {
            if limit == Some(0) {
                return Err(Error::flag(flag, 0, "an integer >= 1 (a number of images)"));
            }
        }
        Ok(())
    }

    pub fn config(&self, classes: usize, in_channels: usize) -> ModelConfig {
        ModelConfig { depth: self.depth, widen: self.widen, classes, in_channels, keep: self.keep }
    }

    /// Full batches per epoch of `train_len` images (the last partial batch is dropped): at
    /// least one, or an error naming the flag to change.
    fn steps_per_epoch(&self, train_len: usize) -> Result<usize> {
        if train_len >= self.batch {
            return Ok(train_len / self.batch);
        }
        let source = match self.limit_train {
            Some(n) if n == train_len => format!("--limit-train {n} leaves"),
            _ => format!("{} holds", self.data.display()),
        };
        Err(Error::flag("--batch", self.batch, format!("at most the {train_len} training images {source}")))
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Makes Ctrl-C (SIGINT) finish the current step, checkpoint and stop instead of killing the run.
pub fn catch_interrupt() {
    let _ = ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, Ordering::SeqCst) {
            // A second Ctrl-C: the user really wants out.
            std::process::exit(130);
        }
        errln!("\ninterrupted: finishing the current step and writing a checkpoint (Ctrl-C again to quit now)");
    });
}

fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// What a finished run reports.
#[derive(Clone, Debug)]
pub struct Summary {
    pub history: Vec<EpochMetrics>,
    pub out: PathBuf,
    pub best_acc: f64,
    /// The step after which the run stopped early (Ctrl-C or `stop_after`), checkpointed.
    pub stopped_at: Option<usize>,
}

/// Trains, writing `OUT/metrics.jsonl`, `OUT/curves.svg`, `OUT/last.ckpt` and `OUT/best.ckpt`.
///
/// The run happens inside the CPU thread pool: the ops' parallel work then goes on the pool's
/// own queues, which allocate nothing, instead of its global queue, which allocates now and then.
pub fn train(args: &TrainArgs) -> Result<Summary> {
    train_on(args, None, None)
}

/// [`train`] as one rank of a distributed run when `ranks` is given: the reducer to the other
/// ranks and how the global batch is shared out (docs/DISTRIBUTED.md). `resumed`: the
/// checkpoint of `args.resume` read already (by the command, for its defaults), so that it is
/// not read again.
pub fn train_on<'a>(
    args: &'a TrainArgs,
    ranks: Option<(&'a mut dyn Reducer, Sharding)>,
    resumed: Option<Resumed>,
) -> Result<Summary> {
    rayon::scope(|_| {
        let mut run = Run::start_on(args, ranks, resumed)?;
        for epoch in run.start_epoch..args.epochs {
            let (seconds, images) = match run.epoch(epoch)? {
                EpochEnd::Stopped { at_step } => return Ok(run.summary(Some(at_step))),
                EpochEnd::Finished { seconds, images } => (seconds, images),
            };
            run.end_epoch(epoch, seconds, images)?;
            if (interrupted() || args.stop_after == Some(run.step)) && epoch + 1 < args.epochs {
                return Ok(run.summary(Some(run.step)));
            }
        }
        Ok(run.summary(None))
    })
}

/// How an epoch's steps ended.
pub enum EpochEnd {
    /// Stopped early (Ctrl-C or `stop_after`) after step `at_step`, checkpointed.
    Stopped { at_step: usize },
    /// Every step ran: `images` trained in `seconds`.
    Finished { seconds: f64, images: usize },
}

/// A training run in progress.
pub struct Run<'a> {
    args: &'a TrainArgs,
    backend: Box<dyn Backend>,
    program: Program,
    eval: Evaluator,
    recal: Option<Recalibrator>,
    stepper: Stepper,
    config: ModelConfig,
    norm: Normalization,
    kind: DatasetKind,
    train_len: usize,
    /// Steps of the whole run (every epoch), for the learning-rate schedule.
    total_steps: usize,
    shuffle: Rng,
    rngs: StepRngs,
    /// Steps done (over all epochs).
    step: usize,
    start_epoch: usize,
    best_acc: f64,
    sums: EpochSums,
    history: Vec<EpochMetrics>,
    /// The settings every checkpoint records (`recorded::record`).
    recorded: Vec<(String, String)>,
    /// What resumes changed in the epoch in progress, for its metrics line.
    changes: Vec<Change>,
    /// The checkpoint's buffers, reserved before the first step.
    snapshot: Snapshot,
    /// The run's identity, kept in its checkpoints and pictures (see `folder::Owner`).
    run_id: String,
    /// The other ranks of a distributed run.
    dist: Option<Dist<'a>>,
    /// Held while the run writes its folder (by rank 0 alone in a distributed run).
    _lock: Option<FolderLock>,
}

impl<'a> Run<'a> {
    /// Everything before the first step, in this order: the flags, the backend, the checkpoint
    /// resumed, the data, the run's size, the training program, the state of the first step
    /// (restored, initial weights or fresh), the run folder (locked; refused when it holds
    /// another run), the test programs, the data and the arena on the backend, the checkpoint's
    /// buffers. Every check that can fail comes before the folder is touched, except those that
    /// need it.
    pub fn start(args: &'a TrainArgs) -> Result<Run<'a>> {
        Run::start_on(args, None, None)
    }

    /// [`Run::start`] as one rank of a distributed run when `ranks` is given: it trains a shard
    /// of each batch and rank 0 alone writes the folder; before anything is written the ranks
    /// compare their flags and data. `resumed`: the checkpoint of `args.resume`, read already
    /// ([`train_on`]); without it the checkpoint is read here.
    pub fn start_on(
        args: &'a TrainArgs,
        ranks: Option<(&'a mut dyn Reducer, Sharding)>,
        resumed: Option<Resumed>,
    ) -> Result<Run<'a>> {
        args.validate()?;
        let n = ranks.as_ref().map_or(1, |r| r.0.ranks());
        let sharding = ranks.as_ref().map_or(Sharding::Same, |r| r.1);
        if sharding == Sharding::Shard && !args.batch.is_multiple_of(n) {
            let expected = format!("a multiple of the {n} ranks (each trains an equal share of every batch)");
            return Err(Error::flag("--batch", args.batch, expected));
        }
        let writer = ranks.as_ref().is_none_or(|r| r.0.rank() == 0);
        let mut backend = backend::open(args.device, args.math, args.verbose)?;
        let resumed = match (resumed, args.resume.as_deref()) {
            (Some(r), Some(path)) if r.path == path => Some(r),
            (_, path) => path.map(Resumed::load).transpose()?,
        };
        if let Some(r) = &resumed {
            model_file::check_checkpoint(&r.path, &r.ck, &r.ck.config)?;
            r.check_ranks(n)?;
        }
        let limits = Limits { train: args.limit_train, test: args.limit_test };
        let mut ds = data::load_limited(&args.data, args.dataset, args.coarse, limits)?;
        let size = RunSize::of(args, &ds)?;
        let (config, kind) = (size.config, ds.kind);
        let lowering = Lowering { target: backend.target(), ..args.lowering };
        let local_batch = if sharding == Sharding::Shard { args.batch / n } else { args.batch };
        let program = Program::new(wrn::build(&config, local_batch, Mode::Train, args.options, lowering));
        let mut dist = ranks.map(|(reducer, sharding)| Dist::new(reducer, sharding, &program));
        if let Some(d) = &mut dist {
            d.agree("flags", flags_hash(args, d.sharding))?;
            d.agree("data (training or test images)", data_hash(&ds))?;
        }
        let (region, norm, changes) = first_state(args, &program, resumed.as_ref(), &ds, &size)?;

        let owner = resumed.as_ref().map(Resumed::owner);
        let lock = writer.then(|| folder::claim(&args.out, owner.as_ref(), args.force)).transpose()?;
        // A run keeps its identity through resumes; one from before run ids gets one now.
        let run_id = resumed.as_ref().and_then(|r| r.meta.run_id.clone()).unwrap_or_else(state::new_run_id);
        let history = match &resumed {
            Some(r) if writer => r.continue_history(args, &config, kind, &run_id)?,
            Some(r) => {
                r.check_epochs_left(args)?;
                r.history(&args.out)?
            }
            None => vec![],
        };

        let (eval, recal) = test_programs(args, &size, lowering);
        let arena_bytes = place_on_backend(&mut *backend, &mut ds, &norm, &program, &eval, recal.as_ref())?;
        let stepper = Stepper::for_batch(&program, args.align, args.augment, args.batch);
        let (shuffle, rngs) = (Rng::new(args.seed, stream::SHUFFLE), StepRngs::new(args.seed));
        let mut recorded = recorded::record(args, size.test_len);
        // Where the run last trained, for `compare`: not a setting, so a resume elsewhere is no change.
        recorded.push(("device".to_string(), backend.target().as_str().to_string()));
        if n > 1 {
            recorded.push((RANKS.to_string(), n.to_string()));
        }
        // The checkpoint's buffers, reserved for a run at its first step.
        let state = RunState {
            config: &config,
            norm: &norm,
            kind,
            step: 0,
            epoch: 0,
            rngs: [("shuffle", &shuffle), ("augment", &rngs.augment), ("slice", &rngs.slice)],
            best_acc: 0.0,
            sums: EpochSums::default(),
            batch: args.batch,
            train_images: size.train_len,
            epochs: args.epochs,
            schedule: args.schedule,
            history: &history,
            run_id: &run_id,
            recorded: &recorded,
            changes: &changes,
        };
        let snapshot = Snapshot::reserve(&program.schedule, &state)?;
        backend.set_persistent(&region)?;
        drop(region);
        let mut run = Run {
            args,
            backend,
            eval,
            recal,
            stepper,
            config,
            norm,
            kind,
            train_len: size.train_len,
            total_steps: size.total_steps,
            shuffle,
            rngs,
            step: 0,
            start_epoch: 0,
            best_acc: 0.0,
            sums: EpochSums::default(),
            history,
            recorded,
            changes,
            program,
            snapshot,
            run_id,
            dist,
            _lock: lock,
        };
        if let Some(r) = &resumed {
            run.resume_from(r)?;
        }
        if writer {
            let own_events = resumed.as_ref().is_some_and(|r| same_file(folder_of(&r.path), &args.out));
            tb::start(&args.out, &run.history, size.per_epoch, run.step, own_events, |t| run.sgd_at(t).lr as f64)?;
        }
        run.describe(size.test_len, arena_bytes);
        // Once every check has passed, so that a refusal stays one line.
        if let Some(note) = args.cpu_note.as_ref().filter(|_| args.verbose && run.backend.target() == Target::Cpu) {
            errln!("{note}");
        }
        Ok(run)
    }

    /// Continues the random streams, the counters and the sums of the checkpoint.
    fn resume_from(&mut self, r: &Resumed) -> Result<()> {
        let rng = |name: &str| {
            r.ck.rng(name)
                .and_then(Rng::from_state)
                .ok_or_else(|| Error::checkpoint(&r.path, format!("has no valid '{name}' random state")))
        };
        self.shuffle = rng("shuffle")?;
        self.rngs = StepRngs { augment: rng("augment")?, slice: rng("slice")? };
        self.step = r.ck.step as usize;
        self.start_epoch = r.ck.epoch as usize;
        self.best_acc = r.meta.best_acc;
        self.sums = r.meta.sums;
        if self.args.verbose {
            outln!("resumed from {} at epoch {}, step {}", r.path.display(), self.start_epoch, self.step);
            let new = &self.changes[r.meta.recorded.changed.len()..];
            if !new.is_empty() {
                outln!("--change: the run continues with {}", recorded::describe(new));
            }
        }
        Ok(())
    }

    /// The line saying what trains on what.
    fn describe(&self, test_len: usize, arena_bytes: usize) {
        if !self.args.verbose {
            return;
        }
        let (s, c) = (&self.program.schedule, &self.config);
        outln!(
            "{} keep {:.2} on {} ({} train / {} test images, {} classes); {:.1} M parameters; arena {:.1} MiB; {:.2} GFLOP per image per step",
            c.name(),
            c.keep,
            self.kind,
            self.train_len,
            test_len,
            c.classes,
            s.tensors.iter().filter(|t| t.role == Role::Param).map(|t| t.len()).sum::<usize>() as f64 / 1e6,
            crate::ir::mib(arena_bytes),
            2.0 * s.macs() as f64 / s.batch as f64 / 1e9,
        );
    }

    fn steps_per_epoch(&self) -> usize {
        self.train_len / self.args.batch
    }

    /// The optimizer settings at global step `t`.
    fn sgd_at(&self, t: usize) -> SgdParams {
        let a = self.args;
        let per_epoch = self.steps_per_epoch();
        SgdParams {
            lr: learning_rate(a.schedule, a.lr, a.epochs, t, self.total_steps, per_epoch) as f32,
            momentum: a.momentum as f32,
            weight_decay: a.wd as f32,
            nesterov: a.nesterov,
        }
    }

    /// The steps of one epoch (from a resumed position inside it, if any).
    pub fn epoch(&mut self, epoch: usize) -> Result<EpochEnd> {
        let (args, per_epoch) = (self.args, self.steps_per_epoch());
        // The shuffle state at the start of the epoch is what a mid-epoch checkpoint saves.
        let epoch_shuffle = self.shuffle.clone();
        let order = loader::epoch_order(self.train_len, &mut self.shuffle);
        // `Run::start` checked that a resumed step lies inside its epoch.
        let first = self.step - epoch * per_epoch;
        let bar = progress(args.verbose, epoch, args.epochs, per_epoch as u64);
        bar.set_position(first as u64);
        let t0 = Instant::now();
        let mut timed_images = 0usize;
        for b in first..per_epoch {
            let images = &order[b * args.batch..(b + 1) * args.batch];
            let sgd = self.sgd_at(self.step);
            let (backend, program, rngs) = (&mut *self.backend, &self.program, &mut self.rngs);
            let loss = match &mut self.dist {
                Some(d) => self.stepper.step_dist(backend, program, images, rngs, sgd, d),
                None => self.stepper.step(backend, program, images, rngs, sgd),
            };
            if !loss[0].is_finite() {
                bar.abandon();
                let what = format!("the loss is {}", loss[0]);
                return Err(Error::Diverged { epoch: epoch + 1, step: self.step + 1, what });
            }
            self.step += 1;
            timed_images += args.batch;
            self.sums.add(loss, args.batch);
            if self.step.is_multiple_of(tb::RUNNING_EVERY) && self.writes() {
                let running = [("train/loss_running", self.sums.loss / self.sums.seen)];
                tb::append(&args.out, self.step, &running, false)?;
            }
            bar.inc(1);
            bar.set_message(format!(
                "loss {:.3}  {:.0} img/s",
                self.sums.loss / self.sums.seen,
                timed_images as f64 / t0.elapsed().as_secs_f64()
            ));
            let stop = interrupted() || args.stop_after == Some(self.step);
            let periodic = args.checkpoint_every > 0 && self.step.is_multiple_of(args.checkpoint_every);
            if (periodic || stop) && b + 1 < per_epoch {
                self.average_running_stats()?;
                self.save(&epoch_shuffle, epoch, false)?;
            }
            if stop && b + 1 < per_epoch {
                bar.abandon();
                return Ok(EpochEnd::Stopped { at_step: self.step });
            }
        }
        let seconds = t0.elapsed().as_secs_f64();
        bar.finish_and_clear();
        Ok(EpochEnd::Finished { seconds, images: timed_images })
    }

    /// After an epoch's steps: test, print the line, checkpoint (`best.ckpt` first, then
    /// `last.ckpt`), then log the metrics and redraw the curves. In that order a crash at any
    /// point leaves a folder that resumes: a `best.ckpt` ahead of `last.ckpt` is redone
    /// identically, and the checkpoint holds the history that `metrics.jsonl` and `curves.svg`
    /// are rebuilt from.
    ///
    /// In a distributed run every rank first averages BN's running statistics and compares a
    /// hash of its state with the others'; rank 0 alone goes on to test, log and save.
    pub fn end_epoch(&mut self, epoch: usize, seconds: f64, images: usize) -> Result<()> {
        let args = self.args;
        self.average_running_stats()?;
        if let Some(d) = &mut self.dist {
            let slice = Fnv::hash(&self.rngs.slice.state());
            d.check_state(&mut *self.backend, &[slice], epoch + 1)?;
            let reduce_ms = 1e3 * d.take_reduce_time();
            if args.verbose {
                let (bytes, n) = (d.last_step_bytes, d.ranks());
                outln!("all-reduce: {bytes} bytes per step over {n} ranks, {reduce_ms:.1} ms per step on rank 0");
            }
            if d.rank() != 0 {
                self.sums = EpochSums::default();
                self.changes.clear();
                return Ok(());
            }
        }
        let (test_loss, test_acc) = self.eval.run(&mut *self.backend);
        let recalibrated = self.recalibrated_test()?;
        let m = EpochMetrics {
            epoch: epoch + 1,
            train_loss: self.sums.loss / self.sums.seen.max(1.0),
            train_acc: self.sums.correct / self.sums.seen.max(1.0),
            test_loss,
            test_acc,
            images_per_s: images as f64 / seconds.max(1e-9),
            seconds,
            keep: self.config.keep,
            test_loss_recal: recalibrated.map(|r| r.0),
            test_acc_recal: recalibrated.map(|r| r.1),
            changed: std::mem::take(&mut self.changes),
        };
        self.sums = EpochSums::default();
        if args.verbose {
            let recal = m.test_acc_recal.map_or(String::new(), |a| format!(" (BN recalibrated {:5.2}%)", 100.0 * a));
            outln!(
                "epoch {:>3}/{}  train loss {:.4} acc {:5.2}%  test loss {:.4} acc {:5.2}%{recal}  {:.0} img/s  {:.1} s",
                m.epoch,
                args.epochs,
                m.train_loss,
                100.0 * m.train_acc,
                m.test_loss,
                100.0 * m.test_acc,
                m.images_per_s,
                m.seconds
            );
        }
        self.history.push(m.clone());
        let improved = test_acc > self.best_acc || epoch == 0 && self.best_acc == 0.0;
        self.best_acc = self.best_acc.max(test_acc);
        let shuffle = self.shuffle.clone();
        self.save(&shuffle, epoch + 1, improved)?;
        metrics::append_jsonl(&args.out.join("metrics.jsonl"), &m)?;
        tb::append(&args.out, self.step, &tb::epoch_scalars(&m, self.sgd_at(self.step - 1).lr as f64), true)?;
        write_curves(&args.out, &self.history, &self.config, self.kind, &self.run_id)
    }

    /// With `--bn-recal`: the test loss and accuracy with BN's running statistics recalibrated
    /// for the full network; the training statistics are put back afterwards, so training and
    /// its checkpoints go on as without it.
    fn recalibrated_test(&mut self) -> Result<Option<(f64, f64)>> {
        let Some(recal) = self.recal.as_ref() else {
            return Ok(None);
        };
        let mut region = vec![0f32; self.program.schedule.persistent_len()];
        self.backend.get_persistent(&mut region);
        recal.run(&mut *self.backend);
        let result = self.eval.run(&mut *self.backend);
        self.backend.set_persistent(&region)?;
        Ok(Some(result))
    }

    /// Whether this process writes the run folder: always, but in a distributed run rank 0 alone.
    fn writes(&self) -> bool {
        self.dist.as_ref().is_none_or(|d| d.rank() == 0)
    }

    /// A distributed run's BN running statistics averaged over the ranks (before every test
    /// and save, so that all ranks hold what rank 0 saves).
    fn average_running_stats(&mut self) -> Result<()> {
        match &mut self.dist {
            Some(d) => d.average_running_stats(&mut *self.backend),
            None => Ok(()),
        }
    }

    /// Writes `best.ckpt` (when `best`), then `last.ckpt`, with the shuffle state `shuffle` and
    /// the epoch counter `epoch`. A non-finite parameter or statistic stops the run instead.
    /// Only the writing rank of a distributed run saves.
    fn save(&mut self, shuffle: &Rng, epoch: usize, best: bool) -> Result<()> {
        if !self.writes() {
            return Ok(());
        }
        let run = RunState {
            config: &self.config,
            norm: &self.norm,
            kind: self.kind,
            step: self.step,
            epoch,
            rngs: [("shuffle", shuffle), ("augment", &self.rngs.augment), ("slice", &self.rngs.slice)],
            best_acc: self.best_acc,
            sums: self.sums,
            batch: self.args.batch,
            train_images: self.train_len,
            epochs: self.args.epochs,
            schedule: self.args.schedule,
            history: &self.history,
            run_id: &self.run_id,
            recorded: &self.recorded,
            changes: &self.changes,
        };
        if let Err(what) = self.snapshot.capture(&mut *self.backend, &self.program.schedule, &run) {
            let in_epoch = (self.step.max(1) - 1) / (self.train_len / self.args.batch) + 1;
            return Err(Error::Diverged { epoch: in_epoch, step: self.step, what });
        }
        if best {
            self.snapshot.save(&self.args.out.join("best.ckpt"))?;
        }
        self.snapshot.save(&self.args.out.join("last.ckpt"))
    }

    fn summary(&mut self, stopped_at: Option<usize>) -> Summary {
        Summary {
            history: std::mem::take(&mut self.history),
            out: self.args.out.clone(),
            best_acc: self.best_acc,
            stopped_at,
        }
    }
}

/// A checkpoint to resume from, read and its metadata checked; its tensors are checked against
/// its network when the run starts ([`Run::start_on`]), in the order a run's checks are made.
pub struct Resumed {
    path: PathBuf,
    ck: Checkpoint,
    meta: RunMeta,
}

impl Resumed {
    /// Reads the checkpoint at `path`, whole, and judges its metadata.
    pub fn load(path: &Path) -> Result<Resumed> {
        let ck = checkpoint::load(path)?;
        let meta = RunMeta::read(path, &ck)?;
        Ok(Resumed { path: path.to_path_buf(), ck, meta })
    }

    /// The model the checkpoint holds.
    pub fn config(&self) -> &ModelConfig {
        &self.ck.config
    }

    /// What the checkpoint says of its run.
    pub fn meta(&self) -> &RunMeta {
        &self.meta
    }

    /// The run in the checkpoint against the flags: the same model, and what fixes the step
    /// count (batch, training images) unchanged, so that its step and epoch mean what they
    /// meant; a mismatch names the flag to fix. The recorded settings the same too, or changed
    /// with `allow_changes`: those changes are returned.
    fn check(
        &self,
        args: &TrainArgs,
        config: &ModelConfig,
        train_len: usize,
        test_len: usize,
        per_epoch: usize,
    ) -> Result<Vec<Change>> {
        let (path, meta) = (self.path.display(), &self.meta);
        checkpoint::check_config(&self.path, &self.ck.config, config)?;
        if let Some(b) = meta.batch.filter(|&b| b != args.batch) {
            let expected = format!("{b}, the batch of the run in {path} (leave --batch out to use it)");
            return Err(Error::flag("--batch", args.batch, expected));
        }
        if let Some(n) = meta.train_images.filter(|&n| n != train_len) {
            let data = args.data.display();
            // The run's own count was asked for (by default, or by the flag): the folder holds
            // fewer, and the limit is not what to change.
            if args.limit_train == Some(n) {
                let expected = format!(
                    "the dataset of the run in {path}, with its {n} training images ({data} holds {train_len})"
                );
                return Err(Error::flag("--data", data, expected));
            }
            let value = args.limit_train.map_or("(none)".to_string(), |l| l.to_string());
            let expected = format!(
                "a limit that keeps the {n} training images of the run in {path} ({data} gives {train_len}; leave --limit-train out to use the run's)"
            );
            return Err(Error::flag("--limit-train", value, expected));
        }
        let changes = meta.recorded.compare(args, test_len, &self.path)?;
        let (step, epoch) = (self.ck.step, self.ck.epoch);
        let start = epoch.checked_mul(per_epoch as u64).filter(|&s| s <= step && step - s < per_epoch as u64);
        let Some(start) = start else {
            return Err(Error::checkpoint(
                &self.path,
                format!(
                    "its step {step} and epoch {epoch} do not fit {per_epoch} steps per epoch (--batch {}, {train_len} training \
                     images): resume with the --batch and --limit-train of the run that wrote it",
                    args.batch
                ),
            ));
        };
        meta.check_sums(&self.path, &self.ck, step - start, args.batch)?;
        Ok(changes)
    }

    /// Refuses to resume on `ranks` ranks a run trained on another number of them: its batches
    /// were shared out otherwise, so it would not continue the same run.
    fn check_ranks(&self, ranks: usize) -> Result<()> {
        let text = self.ck.meta(RANKS).unwrap_or("1");
        let recorded: usize = text
            .parse()
            .ok()
            .filter(|&n| n >= 1)
            .ok_or_else(|| state::bad_meta(&self.path, &self.ck, RANKS, "a number of ranks >= 1"))?;
        if recorded == ranks {
            return Ok(());
        }
        let how = if recorded == 1 { "without mpirun".to_string() } else { format!("with mpirun -np {recorded}") };
        Err(Error::checkpoint(
            &self.path,
            format!("was trained on {recorded} rank(s) and this launch has {ranks}: resume it {how}"),
        ))
    }

    /// The run in the checkpoint, as the owner of the files in its folder.
    fn owner(&self) -> folder::Owner<'_> {
        folder::Owner { checkpoint: &self.path, config: &self.ck.config, meta: &self.meta }
    }

    /// The history of the run so far, its files in `args.out` rebuilt from it, once `--epochs`
    /// is found to leave something to train.
    fn continue_history(
        &self,
        args: &TrainArgs,
        config: &ModelConfig,
        kind: DatasetKind,
        run_id: &str,
    ) -> Result<Vec<EpochMetrics>> {
        let history = self.rebuild_files(&args.out, config, kind, run_id)?;
        self.check_epochs_left(args)?;
        Ok(history)
    }

    /// Rebuilds `metrics.jsonl` and `curves.svg` in `out` from the checkpoint's history, which
    /// repairs a crash between the checkpoint and them (or fills a new folder). Returns the
    /// history.
    fn rebuild_files(
        &self,
        out: &Path,
        config: &ModelConfig,
        kind: DatasetKind,
        run_id: &str,
    ) -> Result<Vec<EpochMetrics>> {
        let metrics_path = out.join("metrics.jsonl");
        let history = self.history(out)?;
        let lines: String =
            history.iter().map(|m| serde_json::to_string(m).expect("metrics serialise") + "\n").collect();
        crate::io::write_atomic(&metrics_path, lines.as_bytes())?;
        write_curves(out, &history, config, kind, run_id)?;
        Ok(history)
    }

    /// The history of the run up to the checkpoint: the checkpoint's, or for one from before
    /// histories were stored, the lines of `out/metrics.jsonl` up to it.
    fn history(&self, out: &Path) -> Result<Vec<EpochMetrics>> {
        Ok(match &self.meta.history {
            Some(h) => h.clone(),
            None => {
                let mut h = metrics::read_for_resume(&out.join("metrics.jsonl"))?;
                h.retain(|m| m.epoch as u64 <= self.ck.epoch);
                h
            }
        })
    }

    /// Refuses an `--epochs` that leaves nothing to train (no epoch is ever logged that did
    /// not run); says so when it changes the run's schedule length.
    fn check_epochs_left(&self, args: &TrainArgs) -> Result<()> {
        if self.ck.epoch >= args.epochs as u64 {
            let expected = format!(
                "more than the {} epochs {} has finished (nothing is left to train)",
                self.ck.epoch,
                self.path.display()
            );
            return Err(Error::flag("--epochs", args.epochs, expected));
        }
        if let Some(e) = self.meta.epochs.filter(|&e| e != args.epochs && args.verbose) {
            outln!(
                "--epochs {} instead of the run's {e}: the learning-rate schedule now spans {0} epochs",
                args.epochs
            );
        }
        Ok(())
    }
}

/// The checkpoint key of a distributed run's rank count (absent: one rank).
const RANKS: &str = "ranks";

/// A hash of everything the flags set, the same on every rank given the same command line.
/// Not the data folder, which may lie elsewhere on each machine: its images are compared.
fn flags_hash(args: &TrainArgs, sharding: Sharding) -> u64 {
    // Only rank 0 prints, so the printing switch is no difference between ranks.
    let mut h = Fnv::new();
    let same = TrainArgs { verbose: true, data: PathBuf::new(), ..args.clone() };
    h.bytes(format!("{same:?} {sharding:?}").as_bytes());
    h.0
}

/// A hash of both splits, images and labels.
fn data_hash(ds: &Dataset) -> u64 {
    let mut h = Fnv::new();
    for split in [&ds.train, &ds.test] {
        h.u64(split.len as u64);
        h.bytes(&split.images);
        h.bytes(&split.labels);
    }
    h.0
}

/// What the data and the flags make of a run: its network, its splits and its step counts.
struct RunSize {
    config: ModelConfig,
    train_len: usize,
    test_len: usize,
    per_epoch: usize,
    /// Steps of the whole run (every epoch).
    total_steps: usize,
}

impl RunSize {
    /// The network for `ds` judged as flags are, and the steps of `args.epochs` epochs counted.
    fn of(args: &TrainArgs, ds: &Dataset) -> Result<RunSize> {
        let (train_len, test_len) = (ds.train.len, ds.test.len);
        let config = args.config(ds.classes, ds.channels);
        config.footprint(args.batch).map_err(Invalid::flag)?;
        let per_epoch = args.steps_per_epoch(train_len)?;
        let total_steps = per_epoch.checked_mul(args.epochs).ok_or_else(|| {
            Error::flag(
                "--epochs",
                args.epochs,
                format!("at most {} epochs of {per_epoch} steps", usize::MAX / per_epoch),
            )
        })?;
        Ok(RunSize { config, train_len, test_len, per_epoch, total_steps })
    }
}

/// The persistent region and normalisation of the first step, and the settings changed in the
/// epoch in progress: restored from the checkpoint resumed (its changes checked against the
/// flags), else from the initial weights (`--init`), else fresh. A resumed run, and initial
/// weights that state theirs, keep the normalisation they were trained with; initial weights
/// start with fresh momentum.
fn first_state(
    args: &TrainArgs,
    program: &Program,
    resumed: Option<&Resumed>,
    ds: &Dataset,
    size: &RunSize,
) -> Result<(Vec<f32>, Normalization, Vec<Change>)> {
    let init = match &args.init {
        Some(path) => Some((path, model_file::load_init(path, &size.config, &args.data)?)),
        None => None,
    };
    let s = &program.schedule;
    match (resumed, &init) {
        (Some(r), _) => {
            let changes = r.check(args, &size.config, size.train_len, size.test_len, size.per_epoch)?;
            let region = model_file::restore(s, &r.path, &r.ck, true)?;
            let norm = model_file::normalization(&r.path, &r.ck, ds.channels)?;
            // Changes a resume made earlier in this epoch, then this resume's.
            Ok((region, norm, r.meta.recorded.changed.iter().cloned().chain(changes).collect()))
        }
        (None, Some((path, ck))) => {
            let norm = if ck.norm_mean.is_empty() {
                Normalization::from_split(&ds.train, ds.channels)
            } else {
                model_file::normalization(path, ck, ds.channels)?
            };
            Ok((model_file::restore(s, path, ck, false)?, norm, vec![]))
        }
        (None, None) => {
            Ok((wrn::init_persistent(s, args.seed), Normalization::from_split(&ds.train, ds.channels), vec![]))
        }
    }
}

/// The programs that test the network (and recalibrate BN with `--bn-recal`), storing what
/// training stores.
fn test_programs(args: &TrainArgs, size: &RunSize, lowering: Lowering) -> (Evaluator, Option<Recalibrator>) {
    let eval_lowering = Lowering { target: lowering.target, precision: lowering.precision, ..Lowering::default() };
    let eval = Evaluator::new(&size.config, args.batch, size.test_len, eval_lowering);
    let recal = (args.bn_recal > 0)
        .then(|| Recalibrator::new(&size.config, args.batch, eval_lowering, args.bn_recal, size.train_len, args.seed));
    (eval, recal)
}

/// Moves both splits of `ds`, normalised by `norm`, to the backend and reserves an arena that
/// fits every program; returns its size.
fn place_on_backend(
    backend: &mut dyn Backend,
    ds: &mut Dataset,
    norm: &Normalization,
    program: &Program,
    eval: &Evaluator,
    recal: Option<&Recalibrator>,
) -> Result<usize> {
    backend.upload_split(SplitId::Train, std::mem::take(&mut ds.train), ds.channels, norm)?;
    backend.upload_split(SplitId::Test, std::mem::take(&mut ds.test), ds.channels, norm)?;
    let arena_bytes = program.arena_bytes().max(eval.arena_bytes()).max(recal.map_or(0, |r| r.arena_bytes()));
    backend.reserve_arena(arena_bytes)?;
    Ok(arena_bytes)
}

/// Draws `curves.svg` in `out` from `history`, naming the run `run_id` that drew it.
fn write_curves(
    out: &Path,
    history: &[EpochMetrics],
    config: &ModelConfig,
    kind: DatasetKind,
    run_id: &str,
) -> Result<()> {
    let title = format!("{} keep {:.2} on {}", config.name(), config.keep, kind);
    let svg = metrics::with_run(&metrics::curves_svg(history, &title), run_id);
    crate::io::write_atomic(&out.join("curves.svg"), svg.as_bytes())
}

fn progress(verbose: bool, epoch: usize, epochs: usize, len: u64) -> ProgressBar {
    if !verbose {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg} ({eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("{}/{}", epoch + 1, epochs));
    bar
}
