//! The training loop: data -> programs (train, eval) -> backend, epoch after epoch, with
//! progress, metrics, learning curves and checkpoints that resume exactly.
//!
//! A step: fill the batch on the host (shuffle order, crop/flip draws), draw one slice start per
//! block, run the training program, read back `[loss, correct]`. Every buffer the step touches
//! was planned and allocated before the first step.

use crate::backend::cuda::{self, CudaBackend, Math};
use crate::backend::{cpu::CpuBackend, Backend, SplitId, StepCtx};
use crate::checkpoint::{self, Checkpoint};
use crate::data::loader::{self, Crop};
use crate::data::{self, Dataset, DatasetKind};
use crate::error::{Error, Result};
use crate::exec::Program;
use crate::metrics::{self, EpochMetrics};
use crate::model::{wrn, ModelConfig};
use crate::ops::sgd::SgdParams;
use crate::rng::{stream, Rng};
use crate::schedule::{Mode, Options, Role, Schedule};
use crate::sliceout;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LrSchedule {
    /// `lr * (1 + cos(pi * t / T)) / 2` per step.
    Cosine,
    /// `lr * 0.2^k` after 30%, 60% and 80% of the epochs (the WRN paper's steps).
    Step,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceChoice {
    Auto,
    Cpu,
    Cuda,
}

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
    pub options: Options,
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
        Ok(())
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

/// Picks the backend and says which on one line: `auto` takes CUDA when the driver loads and a
/// device exists, else the CPU; `cuda` without a usable GPU is an error.
pub fn backend(choice: DeviceChoice, math: Math, verbose: bool) -> Result<Box<dyn Backend>> {
    let (b, why): (Box<dyn Backend>, &str) = match choice {
        DeviceChoice::Cuda => (Box::new(CudaBackend::new(math)?), ""),
        DeviceChoice::Cpu => (Box::new(CpuBackend::new()), ""),
        DeviceChoice::Auto if cuda::available() => (Box::new(CudaBackend::new(math)?), " (auto: GPU found)"),
        DeviceChoice::Auto => (Box::new(CpuBackend::new()), " (auto: no usable CUDA driver or GPU)"),
    };
    if verbose {
        println!("device: {}{why}", b.name());
    }
    Ok(b)
}

/// Learning rate at global step `t` of `total`.
pub fn learning_rate(args: &TrainArgs, t: usize, total: usize, steps_per_epoch: usize) -> f64 {
    match args.schedule {
        LrSchedule::Cosine => args.lr * 0.5 * (1.0 + (std::f64::consts::PI * t as f64 / total.max(1) as f64).cos()),
        LrSchedule::Step => {
            let epoch = t / steps_per_epoch.max(1);
            let passed = [0.3, 0.6, 0.8].iter().filter(|&&f| epoch as f64 >= (f * args.epochs as f64).round()).count();
            args.lr * 0.2f64.powi(passed as i32)
        }
    }
}

/// Runs the test split through eval programs (full batches, then the remainder).
pub struct Evaluator {
    programs: Vec<Program>,
    indices: Vec<usize>,
    crops: Vec<Crop>,
}

impl Evaluator {
    /// Eval programs for full batches and for the remainder of a `len`-image split.
    pub fn new(config: &ModelConfig, batch: usize, len: usize) -> Evaluator {
        let batch = batch.min(len.max(1));
        let build = |n| Program::new(wrn::build(config, n, Mode::Eval, Options::default()));
        let mut programs = vec![build(batch)];
        if !len.is_multiple_of(batch) {
            programs.push(build(len % batch));
        }
        Evaluator { programs, indices: (0..len).collect(), crops: vec![Crop::IDENTITY; batch] }
    }

    pub fn arena_bytes(&self) -> usize {
        self.programs.iter().map(|p| p.arena_bytes()).max().unwrap_or(0)
    }

    /// (mean loss, accuracy) over the resident test split.
    pub fn run(&mut self, backend: &mut dyn Backend) -> (f64, f64) {
        let batch = self.programs[0].schedule.batch;
        let sgd = SgdParams { lr: 0.0, momentum: 0.0, weight_decay: 0.0, nesterov: false };
        let (mut loss, mut correct) = (0f64, 0f64);
        for chunk in self.indices.chunks(batch) {
            let p = if chunk.len() == batch { &self.programs[0] } else { &self.programs[1] };
            backend.fill_batch(p, SplitId::Test, chunk, &self.crops[..chunk.len()]);
            backend.run(p, &StepCtx { starts: &[], sgd });
            let mut out = [0f32; 2];
            backend.read(p, p.schedule.loss, &mut out);
            loss += out[0] as f64 * chunk.len() as f64;
            correct += out[1] as f64;
        }
        let len = self.indices.len().max(1) as f64;
        (loss / len, correct / len)
    }
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

/// Partial-epoch sums kept across a mid-epoch checkpoint so a resumed run prints the same line.
#[derive(Clone, Copy, Debug, Default)]
struct EpochSums {
    loss: f64,
    correct: f64,
    seen: f64,
}

fn meta_f64(ck: &Checkpoint, key: &str) -> f64 {
    ck.meta(key).and_then(|v| v.parse().ok()).unwrap_or(0.0)
}

/// Trains, writing `OUT/metrics.jsonl`, `OUT/curves.svg`, `OUT/last.ckpt` and `OUT/best.ckpt`.
///
/// The run happens inside the CPU thread pool: the ops' parallel work then goes on the pool's
/// own queues, which allocate nothing, instead of its global queue, which allocates now and then.
pub fn train(args: &TrainArgs) -> Result<Summary> {
    rayon::scope(|_| train_in_pool(args))
}

fn train_in_pool(args: &TrainArgs) -> Result<Summary> {
    args.validate()?;
    let mut backend = backend(args.device, args.math, args.verbose)?;
    let resume = match &args.resume {
        Some(path) => Some((path.clone(), checkpoint::load(path)?)),
        None => None,
    };
    let mut ds: Dataset = data::load(&args.data, args.dataset, args.coarse)?;
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
    let norm = match &resume {
        Some((_, ck)) => loader::Normalization { mean: ck.norm_mean.clone(), std: ck.norm_std.clone() },
        None => loader::Normalization::from_split(&ds.train, ds.channels),
    };
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

    let train_p = Program::new(wrn::build(&config, args.batch, Mode::Train, args.options));
    let mut eval = Evaluator::new(&config, args.batch, test_len);
    backend.upload_split(SplitId::Train, std::mem::take(&mut ds.train), ds.channels, &norm)?;
    backend.upload_split(SplitId::Test, std::mem::take(&mut ds.test), ds.channels, &norm)?;
    let arena_bytes = train_p.arena_bytes().max(eval.arena_bytes());
    backend.reserve_arena(arena_bytes)?;
    let s = &train_p.schedule;
    let mut state = wrn::init_persistent(s, args.seed);
    let mut shuffle = Rng::new(args.seed, stream::SHUFFLE);
    let mut augment = Rng::new(args.seed, stream::AUGMENT);
    let mut slicer = Rng::new(args.seed, stream::SLICE);
    let (mut step, mut start_epoch, mut best_acc, mut sums) = (0usize, 0usize, 0f64, EpochSums::default());
    let mut history =
        if args.resume.is_some() { metrics::read_for_resume(&args.out.join("metrics.jsonl"))? } else { vec![] };
    if let Some((path, ck)) = &resume {
        checkpoint::check_config(path, &ck.config, &config)?;
        restore_state(&mut state, s, path, ck, true)?;
        let rng = |name: &str| {
            ck.rng(name)
                .and_then(Rng::from_state)
                .ok_or_else(|| Error::checkpoint(path, format!("has no valid '{name}' random state")))
        };
        shuffle = rng("shuffle")?;
        augment = rng("augment")?;
        slicer = rng("slice")?;
        step = ck.step as usize;
        start_epoch = ck.epoch as usize;
        best_acc = meta_f64(ck, "best_acc");
        sums = EpochSums {
            loss: meta_f64(ck, "epoch_loss"),
            correct: meta_f64(ck, "epoch_correct"),
            seen: meta_f64(ck, "epoch_seen"),
        };
        // Lines written after the checkpoint (a crash between the two) are redone: drop them.
        history.retain(|m| m.epoch <= start_epoch);
        let lines: String =
            history.iter().map(|m| serde_json::to_string(m).expect("metrics serialise") + "\n").collect();
        checkpoint::write_atomic(&args.out.join("metrics.jsonl"), lines.as_bytes())?;
        if args.verbose {
            println!("resumed from {} at epoch {}, step {}", path.display(), start_epoch, step);
        }
    }
    backend.set_persistent(&state)?;
    if args.verbose {
        let macs = s.macs() as f64 / args.batch as f64;
        println!(
            "{} keep {:.2} on {} ({} train / {} test images, {} classes); {:.1} M parameters; arena {:.1} MiB; {:.2} GFLOP per image per step",
            config.name(),
            config.keep,
            kind,
            train_len,
            test_len,
            ds.classes,
            s.tensors.iter().filter(|t| t.role == Role::Param).map(|t| t.len()).sum::<usize>() as f64 / 1e6,
            arena_bytes as f64 / (1 << 20) as f64,
            2.0 * macs / 1e9,
        );
    }

    let steps_per_epoch = train_len / args.batch;
    let total = steps_per_epoch * args.epochs;
    let mut crops = vec![Crop::IDENTITY; args.batch];
    let mut starts = vec![0usize; s.slices.len()];
    let sgd_at = |t: usize| SgdParams {
        lr: learning_rate(args, t, total, steps_per_epoch) as f32,
        momentum: args.momentum as f32,
        weight_decay: args.wd as f32,
        nesterov: args.nesterov,
    };

    for epoch in start_epoch..args.epochs {
        // The shuffle state at the start of the epoch is what a mid-epoch checkpoint saves.
        let epoch_shuffle = shuffle.clone();
        let order = loader::epoch_order(train_len, &mut shuffle);
        let first = step - epoch * steps_per_epoch;
        let bar = progress(args.verbose, epoch, args.epochs, steps_per_epoch as u64);
        bar.set_position(first as u64);
        let t0 = Instant::now();
        let mut timed_images = 0usize;
        for b in first..steps_per_epoch {
            let idx = &order[b * args.batch..(b + 1) * args.batch];
            if args.augment {
                crops.iter_mut().for_each(|c| *c = Crop::draw(&mut augment));
            }
            backend.fill_batch(&train_p, SplitId::Train, idx, &crops);
            for (start, spec) in starts.iter_mut().zip(&s.slices) {
                *start = if spec.width < spec.channels {
                    sliceout::sample_start(&mut slicer, spec.channels, args.align)
                } else {
                    0
                };
            }
            backend.run(&train_p, &StepCtx { starts: &starts, sgd: sgd_at(step) });
            let mut out = [0f32; 2];
            backend.read(&train_p, s.loss, &mut out);
            if !out[0].is_finite() {
                bar.abandon();
                return Err(Error::Diverged { epoch: epoch + 1, step: step + 1, loss: out[0] });
            }
            step += 1;
            timed_images += args.batch;
            sums.loss += out[0] as f64 * args.batch as f64;
            sums.correct += out[1] as f64;
            sums.seen += args.batch as f64;
            bar.inc(1);
            bar.set_message(format!(
                "loss {:.3}  {:.0} img/s",
                sums.loss / sums.seen,
                timed_images as f64 / t0.elapsed().as_secs_f64()
            ));
            let stop = interrupted() || args.stop_after == Some(step);
            let periodic = args.checkpoint_every > 0 && step % args.checkpoint_every == 0;
            if (periodic || stop) && b + 1 < steps_per_epoch {
                let rngs = [("shuffle", &epoch_shuffle), ("augment", &augment), ("slice", &slicer)];
                let ck = snapshot(&mut *backend, s, &config, &norm, kind, step, epoch, &rngs, best_acc, sums);
                checkpoint::save(&args.out.join("last.ckpt"), &ck)?;
            }
            if stop && b + 1 < steps_per_epoch {
                bar.abandon();
                return Ok(Summary { history, out: args.out.clone(), best_acc, stopped_at: Some(step) });
            }
        }
        let seconds = t0.elapsed().as_secs_f64();
        bar.finish_and_clear();
        let (test_loss, test_acc) = eval.run(&mut *backend);
        let m = EpochMetrics {
            epoch: epoch + 1,
            train_loss: sums.loss / sums.seen.max(1.0),
            train_acc: sums.correct / sums.seen.max(1.0),
            test_loss,
            test_acc,
            images_per_s: timed_images as f64 / seconds.max(1e-9),
            seconds,
            keep: config.keep,
        };
        sums = EpochSums::default();
        if args.verbose {
            println!(
                "epoch {:>3}/{}  train loss {:.4} acc {:5.2}%  test loss {:.4} acc {:5.2}%  {:.0} img/s  {:.1} s",
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
        history.push(m.clone());
        let title = format!("{} keep {:.2} on {}", config.name(), config.keep, kind);
        checkpoint::write_atomic(&args.out.join("curves.svg"), metrics::curves_svg(&history, &title).as_bytes())?;
        let improved = test_acc > best_acc || epoch == 0 && best_acc == 0.0;
        best_acc = best_acc.max(test_acc);
        let ck = snapshot(
            &mut *backend,
            s,
            &config,
            &norm,
            kind,
            step,
            epoch + 1,
            &[("shuffle", &shuffle), ("augment", &augment), ("slice", &slicer)],
            best_acc,
            sums,
        );
        checkpoint::save(&args.out.join("last.ckpt"), &ck)?;
        if improved {
            checkpoint::save(&args.out.join("best.ckpt"), &ck)?;
        }
        if (interrupted() || args.stop_after == Some(step)) && epoch + 1 < args.epochs {
            return Ok(Summary { history, out: args.out.clone(), best_acc, stopped_at: Some(step) });
        }
    }
    Ok(Summary { history, out: args.out.clone(), best_acc, stopped_at: None })
}

/// Copies a checkpoint's tensors into the persistent region `state` laid out by `s` (momentum
/// too when resuming training; evaluation needs none).
fn restore_state(state: &mut [f32], s: &Schedule, path: &Path, ck: &Checkpoint, momentum: bool) -> Result<()> {
    for t in s.tensors.iter().filter(|t| momentum || t.role != Role::Momentum) {
        let src = ck.tensor(&t.name).ok_or_else(|| Error::checkpoint(path, format!("has no tensor {}", t.name)))?;
        if src.data.len() != t.len() {
            return Err(Error::checkpoint(
                path,
                format!("tensor {} has {} values, the model needs {}", t.name, src.data.len(), t.len()),
            ));
        }
        state[t.range()].copy_from_slice(&src.data);
    }
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

#[allow(clippy::too_many_arguments)]
fn snapshot(
    backend: &mut dyn Backend,
    s: &crate::schedule::Schedule,
    config: &ModelConfig,
    norm: &loader::Normalization,
    kind: DatasetKind,
    step: usize,
    epoch: usize,
    rngs: &[(&str, &Rng)],
    best_acc: f64,
    sums: EpochSums,
) -> Checkpoint {
    let mut state = vec![0f32; s.persistent_len()];
    backend.get_persistent(&mut state);
    Checkpoint {
        config: *config,
        step: step as u64,
        epoch: epoch as u64,
        tensors: s
            .tensors
            .iter()
            .map(|t| checkpoint::Tensor {
                name: t.name.clone(),
                shape: t.shape.clone(),
                data: state[t.range()].to_vec(),
            })
            .collect(),
        rngs: rngs.iter().map(|(n, r)| (n.to_string(), r.state())).collect(),
        norm_mean: norm.mean.clone(),
        norm_std: norm.std.clone(),
        meta: vec![
            ("dataset".into(), kind.to_string()),
            ("best_acc".into(), best_acc.to_string()),
            ("epoch_loss".into(), sums.loss.to_string()),
            ("epoch_correct".into(), sums.correct.to_string()),
            ("epoch_seen".into(), sums.seen.to_string()),
        ],
    }
}

/// Test loss and accuracy of a checkpoint on a dataset's test split; the model is rebuilt from
/// the checkpoint alone.
pub fn evaluate(
    checkpoint_path: &Path,
    data_dir: &Path,
    dataset: Option<DatasetKind>,
    coarse: bool,
    batch: usize,
    device: DeviceChoice,
    limit_test: Option<usize>,
) -> Result<(f64, f64, ModelConfig)> {
    if batch == 0 {
        return Err(Error::flag("--batch", batch, "an integer >= 1"));
    }
    let ck = checkpoint::load(checkpoint_path)?;
    let mut ds = data::load(data_dir, dataset, coarse)?;
    if let Some(n) = limit_test {
        ds.test.truncate(n);
    }
    let config = ck.config;
    if ds.classes != config.classes || ds.channels != config.in_channels {
        return Err(Error::checkpoint(
            checkpoint_path,
            format!(
                "the model has {} classes and {} input channels, the data in {} has {} and {}",
                config.classes,
                config.in_channels,
                data_dir.display(),
                ds.classes,
                ds.channels
            ),
        ));
    }
    let mut backend = backend(device, Math::Tf32, false)?;
    let mut eval = Evaluator::new(&config, batch, ds.test.len);
    backend.reserve_arena(eval.arena_bytes())?;
    let s = &eval.programs[0].schedule;
    let mut state = vec![0f32; s.persistent_len()];
    restore_state(&mut state, s, checkpoint_path, &ck, false)?;
    backend.set_persistent(&state)?;
    let norm = loader::Normalization { mean: ck.norm_mean.clone(), std: ck.norm_std.clone() };
    if norm.mean.len() != ds.channels || norm.std.len() != ds.channels {
        return Err(Error::checkpoint(checkpoint_path, "normalisation constants do not match the data's channels"));
    }
    let channels = ds.channels;
    backend.upload_split(SplitId::Test, std::mem::take(&mut ds.test), channels, &norm)?;
    let (loss, acc) = eval.run(&mut *backend);
    Ok((loss, acc, config))
}
