//! The training loop: data -> programs (train, eval) -> backend, epoch after epoch, with
//! progress, metrics, learning curves and checkpoints that resume exactly.
//!
//! - `step.rs`: one step, top to bottom (starts, batch, program, loss).
//! - `lr.rs`: the learning-rate schedules.
//! - `eval.rs`: the test split through eval programs; `sliceout eval`.
//! - `state.rs`: the run's state as a checkpoint and back.
//! - `recal.rs`: BN statistics recalibrated for the full network (`--bn-recal`).
//!
//! A run: [`Run::start`] loads the data, builds and plans the programs, reserves the arena and
//! restores a checkpoint when resuming; [`Run::epoch`] steps through one shuffled epoch;
//! [`Run::end_epoch`] evaluates, logs and checkpoints. Every buffer a step touches was planned
//! and allocated before the first step.

pub mod eval;
pub mod lr;
pub mod recal;
pub mod state;
pub mod step;

pub use eval::{evaluate, EvalRequest, Evaluation, Evaluator};
pub use lr::{learning_rate, LrSchedule};
pub use recal::Recalibrator;
pub use step::{StepRngs, Stepper};

use self::state::{EpochSums, RunState};
use crate::backend::{self, Backend, DeviceChoice, Math, SplitId};
use crate::data::loader::{self, Normalization};
use crate::data::{self, DatasetKind};
use crate::error::{Error, Result};
use crate::io::checkpoint::{self, Checkpoint};
use crate::io::metrics::{self, EpochMetrics};
use crate::ir::{ModelConfig, Role};
use crate::model::wrn;
use crate::ops::SgdParams;
use crate::plan::Program;
use crate::rng::{stream, Rng};
use crate::schedule::{Mode, Options};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
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
    pub options: Options,
    /// Recalibrate BN's running statistics over this many training batches before each
    /// epoch's test and report both accuracies (0: off).
    pub bn_recal: usize,
    /// Print per-epoch lines and progress bars.
    pub verbose: bool,
    /// Stop (checkpointed, as on Ctrl-C) once this many steps are done: lets tests interrupt a
    /// run at an exact step.
    pub stop_after: Option<usize>,
}

impl TrainArgs {
    /// Flag values out of range, named.
    pub fn validate(&self) -> Result<()> {
        self.config(2, 1).validate()?;
        if self.batch == 0 {
            return Err(Error::flag("--batch", self.batch, "an integer >= 1"));
        }
        if !(self.lr.is_finite() && self.lr >= 0.0) {
            return Err(Error::flag("--lr", self.lr, "a learning rate >= 0"));
        }
        if !(self.momentum.is_finite() && (0.0..1.0).contains(&self.momentum)) {
            return Err(Error::flag("--momentum", self.momentum, "a value in [0, 1)"));
        }
        if !(self.wd.is_finite() && self.wd >= 0.0) {
            return Err(Error::flag("--wd", self.wd, "a weight decay >= 0"));
        }
        if self.epochs == 0 {
            return Err(Error::flag("--epochs", self.epochs, "an integer >= 1"));
        }
        if self.align == 0 {
            return Err(Error::flag("--align", self.align, "an integer >= 1"));
        }
        crate::backend::check_precision(self.options.precision)
    }

    pub fn config(&self, classes: usize, in_channels: usize) -> ModelConfig {
        ModelConfig { depth: self.depth, widen: self.widen, classes, in_channels, keep: self.keep }
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
        eprintln!("\ninterrupted: finishing the current step and writing a checkpoint (Ctrl-C again to quit now)");
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
    rayon::scope(|_| {
        let mut run = Run::start(args)?;
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
    shuffle: Rng,
    rngs: StepRngs,
    /// Steps done (over all epochs).
    step: usize,
    start_epoch: usize,
    best_acc: f64,
    sums: EpochSums,
    history: Vec<EpochMetrics>,
}

impl<'a> Run<'a> {
    /// Everything before the first step: backend, data, programs, arena, initial or restored
    /// state, and the run folder (refused when it already holds another run).
    pub fn start(args: &'a TrainArgs) -> Result<Run<'a>> {
        args.validate()?;
        let mut backend = backend::open(args.device, args.math, args.verbose)?;
        let resume = match &args.resume {
            Some(path) => Some((path.clone(), checkpoint::load(path)?)),
            None => None,
        };
        let mut ds = data::load(&args.data, args.dataset, args.coarse)?;
        if let Some(n) = args.limit_train {
            ds.train.truncate(n);
        }
        if let Some(n) = args.limit_test {
            ds.test.truncate(n);
        }
        let (train_len, test_len, kind) = (ds.train.len, ds.test.len, ds.kind);
        if train_len < args.batch {
            return Err(Error::flag("--batch", args.batch, format!("at most the {} training images", train_len)));
        }
        let config = args.config(ds.classes, ds.channels);
        let init = match &args.init {
            Some(path) => Some((path, crate::export::load_init(path, &config)?)),
            None => None,
        };
        // A resumed run, and initial weights that state theirs, keep the normalisation they
        // were trained with.
        let norm = match (&resume, &init) {
            (Some((_, ck)), _) => Normalization { mean: ck.norm_mean.clone(), std: ck.norm_std.clone() },
            (None, Some((_, ck))) if !ck.norm_mean.is_empty() => {
                Normalization { mean: ck.norm_mean.clone(), std: ck.norm_std.clone() }
            }
            _ => Normalization::from_split(&ds.train, ds.channels),
        };
        prepare_out_folder(args)?;

        let options = Options { target: backend.target(), ..args.options };
        let program = Program::new(wrn::build(&config, args.batch, Mode::Train, options));
        let eval = Evaluator::new(&config, args.batch, test_len, backend.target());
        let recal = (args.bn_recal > 0)
            .then(|| Recalibrator::new(&config, args.batch, backend.target(), args.bn_recal, train_len, args.seed));
        backend.upload_split(SplitId::Train, std::mem::take(&mut ds.train), ds.channels, &norm)?;
        backend.upload_split(SplitId::Test, std::mem::take(&mut ds.test), ds.channels, &norm)?;
        let arena_bytes =
            program.arena_bytes().max(eval.arena_bytes()).max(recal.as_ref().map_or(0, |r| r.arena_bytes()));
        backend.reserve_arena(arena_bytes)?;
        let stepper = Stepper::new(&program, args.align, args.augment);
        let mut run = Run {
            args,
            backend,
            eval,
            recal,
            stepper,
            config,
            norm,
            kind,
            train_len,
            shuffle: Rng::new(args.seed, stream::SHUFFLE),
            rngs: StepRngs::new(args.seed),
            step: 0,
            start_epoch: 0,
            best_acc: 0.0,
            sums: EpochSums::default(),
            history: vec![],
            program,
        };
        let s = &run.program.schedule;
        let mut region = wrn::init_persistent(s, args.seed);
        if let Some((path, ck)) = &init {
            state::restore(&mut region, s, path, ck, false)?;
        }
        if let Some((path, ck)) = &resume {
            run.resume_from(&mut region, path, ck)?;
        }
        run.backend.set_persistent(&region)?;
        if args.verbose {
            let s = &run.program.schedule;
            println!(
                "{} keep {:.2} on {} ({} train / {} test images, {} classes); {:.1} M parameters; arena {:.1} MiB; {:.2} GFLOP per image per step",
                config.name(),
                config.keep,
                kind,
                train_len,
                test_len,
                config.classes,
                s.tensors.iter().filter(|t| t.role == Role::Param).map(|t| t.len()).sum::<usize>() as f64 / 1e6,
                crate::ir::mib(arena_bytes),
                2.0 * s.macs() as f64 / args.batch as f64 / 1e9,
            );
        }
        Ok(run)
    }

    /// Restores the persistent region, the random streams, the counters and the metrics file
    /// from a checkpoint of this run.
    fn resume_from(&mut self, region: &mut [f32], path: &std::path::Path, ck: &Checkpoint) -> Result<()> {
        checkpoint::check_config(path, &ck.config, &self.config)?;
        state::restore(region, &self.program.schedule, path, ck, true)?;
        let rng = |name: &str| {
            ck.rng(name)
                .and_then(Rng::from_state)
                .ok_or_else(|| Error::checkpoint(path, format!("has no valid '{name}' random state")))
        };
        self.shuffle = rng("shuffle")?;
        self.rngs = StepRngs { augment: rng("augment")?, slice: rng("slice")? };
        self.step = ck.step as usize;
        self.start_epoch = ck.epoch as usize;
        self.best_acc = state::meta_f64(ck, "best_acc");
        self.sums = EpochSums {
            loss: state::meta_f64(ck, "epoch_loss"),
            correct: state::meta_f64(ck, "epoch_correct"),
            seen: state::meta_f64(ck, "epoch_seen"),
        };
        // Lines written after the checkpoint (a crash between the two) are redone: drop them.
        let metrics_path = self.args.out.join("metrics.jsonl");
        self.history = metrics::read_for_resume(&metrics_path)?;
        self.history.retain(|m| m.epoch <= self.start_epoch);
        let lines: String =
            self.history.iter().map(|m| serde_json::to_string(m).expect("metrics serialise") + "\n").collect();
        crate::io::write_atomic(&metrics_path, lines.as_bytes())?;
        if self.args.verbose {
            println!("resumed from {} at epoch {}, step {}", path.display(), self.start_epoch, self.step);
        }
        Ok(())
    }

    fn steps_per_epoch(&self) -> usize {
        self.train_len / self.args.batch
    }

    /// The optimizer settings at global step `t`.
    fn sgd_at(&self, t: usize) -> SgdParams {
        let a = self.args;
        let per_epoch = self.steps_per_epoch();
        SgdParams {
            lr: learning_rate(a.schedule, a.lr, a.epochs, t, per_epoch * a.epochs, per_epoch) as f32,
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
        let first = self.step - epoch * per_epoch;
        let bar = progress(args.verbose, epoch, args.epochs, per_epoch as u64);
        bar.set_position(first as u64);
        let t0 = Instant::now();
        let mut timed_images = 0usize;
        for b in first..per_epoch {
            let images = &order[b * args.batch..(b + 1) * args.batch];
            let sgd = self.sgd_at(self.step);
            let loss = self.stepper.step(&mut *self.backend, &self.program, images, &mut self.rngs, sgd);
            if !loss[0].is_finite() {
                bar.abandon();
                return Err(Error::Diverged { epoch: epoch + 1, step: self.step + 1, loss: loss[0] });
            }
            self.step += 1;
            timed_images += args.batch;
            self.sums.add(loss, args.batch);
            bar.inc(1);
            bar.set_message(format!(
                "loss {:.3}  {:.0} img/s",
                self.sums.loss / self.sums.seen,
                timed_images as f64 / t0.elapsed().as_secs_f64()
            ));
            let stop = interrupted() || args.stop_after == Some(self.step);
            let periodic = args.checkpoint_every > 0 && self.step.is_multiple_of(args.checkpoint_every);
            if (periodic || stop) && b + 1 < per_epoch {
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

    /// After an epoch's steps: test, log the line and the curves, checkpoint (and keep the best).
    pub fn end_epoch(&mut self, epoch: usize, seconds: f64, images: usize) -> Result<()> {
        let args = self.args;
        let (test_loss, test_acc) = self.eval.run(&mut *self.backend);
        let recalibrated = self.recalibrated_test();
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
        };
        self.sums = EpochSums::default();
        if args.verbose {
            let recal = m.test_acc_recal.map_or(String::new(), |a| format!(" (BN recalibrated {:5.2}%)", 100.0 * a));
            println!(
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
        metrics::append_jsonl(&args.out.join("metrics.jsonl"), &m)?;
        self.history.push(m);
        let title = format!("{} keep {:.2} on {}", self.config.name(), self.config.keep, self.kind);
        crate::io::write_atomic(&args.out.join("curves.svg"), metrics::curves_svg(&self.history, &title).as_bytes())?;
        let improved = test_acc > self.best_acc || epoch == 0 && self.best_acc == 0.0;
        self.best_acc = self.best_acc.max(test_acc);
        let shuffle = self.shuffle.clone();
        self.save(&shuffle, epoch + 1, improved)
    }

    /// With `--bn-recal`: the test loss and accuracy with BN's running statistics recalibrated
    /// for the full network; the training statistics are put back afterwards, so training and
    /// its checkpoints go on as without it.
    fn recalibrated_test(&mut self) -> Option<(f64, f64)> {
        let recal = self.recal.as_ref()?;
        let mut region = vec![0f32; self.program.schedule.persistent_len()];
        self.backend.get_persistent(&mut region);
        recal.run(&mut *self.backend);
        let result = self.eval.run(&mut *self.backend);
        self.backend.set_persistent(&region).ok()?;
        Some(result)
    }

    /// Writes `last.ckpt` (and `best.ckpt` when `best`) with the shuffle state `shuffle` and the
    /// epoch counter `epoch`.
    fn save(&mut self, shuffle: &Rng, epoch: usize, best: bool) -> Result<()> {
        let run = RunState {
            config: &self.config,
            norm: &self.norm,
            kind: self.kind,
            step: self.step,
            epoch,
            rngs: [("shuffle", shuffle), ("augment", &self.rngs.augment), ("slice", &self.rngs.slice)],
            best_acc: self.best_acc,
            sums: self.sums,
        };
        let ck = state::snapshot(&mut *self.backend, &self.program.schedule, &run);
        checkpoint::save(&self.args.out.join("last.ckpt"), &ck)?;
        if best {
            checkpoint::save(&self.args.out.join("best.ckpt"), &ck)?;
        }
        Ok(())
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

/// Refuses a folder that already holds a run (unless resuming), then makes it and checks that
/// it can be written.
fn prepare_out_folder(args: &TrainArgs) -> Result<()> {
    if args.resume.is_none() && ["last.ckpt", "metrics.jsonl"].iter().any(|f| args.out.join(f).exists()) {
        return Err(Error::Msg(format!(
            "{} already holds a run (last.ckpt or metrics.jsonl): continue it with --resume {}, or pick another --out",
            args.out.display(),
            args.out.join("last.ckpt").display()
        )));
    }
    std::fs::create_dir_all(&args.out).map_err(|e| Error::io(&args.out, e))?;
    let probe = args.out.join(".write-test");
    std::fs::write(&probe, b"").map_err(|e| Error::io(&args.out, e))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
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
