//! `sliceout bench`: median training-step time, images/s and memory for several keep values
//! (and precisions), measured in one run on one backend, with ratios to the first row.
//! `benches/step.rs` runs the same measurement.

use crate::backend::{self, Backend};
use crate::cmd::flags::{self, BenchFlags};
use crate::error::{Error, Result};
use crate::ir::{mib, Invalid, Precision, Target};
use crate::model::{wrn, ModelConfig};
use crate::ops::SgdParams;
use crate::plan::Program;
use crate::schedule::{InputGrad, Mode, Options};
use crate::train::step::upload_synthetic_batch;
use crate::train::{StepRngs, Stepper};
use std::time::Instant;

pub struct Row {
    pub keep: f64,
    pub precision: Precision,
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub images_per_s: f64,
    pub arena_bytes: usize,
    pub persistent_bytes: usize,
    pub gflop: f64,
    /// Device memory the process uses after the steps (GPU backends).
    pub device_bytes: Option<usize>,
}

impl Row {
    /// What the device uses beyond the plan (context, library workspaces).
    pub fn overhead_bytes(&self) -> Option<usize> {
        self.device_bytes.map(|d| d.saturating_sub(self.arena_bytes + self.persistent_bytes))
    }
}

/// How the steps of a measurement are drawn: `steps` timed after one warm-up, from `seed`, with
/// slice starts on multiples of `align` (`--align`, as in training).
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub steps: usize,
    pub seed: u64,
    pub align: usize,
}

/// Times `steps` training steps (after one warm-up step) of `config` at each (keep value,
/// precision) of `runs`.
///
/// On the CPU (shared and noisy) every run has its own backend and the steps go round-robin
/// across them, so a slow spell of the machine hits all of them alike. On a GPU each run goes
/// alone on a fresh backend, so that the device memory in use is that run's plan alone. `make`
/// opens a backend for `target`.
pub fn measure(
    make: &mut dyn FnMut() -> Result<Box<dyn Backend>>,
    config: &ModelConfig,
    batch: usize,
    runs: &[(f64, Precision)],
    timing: Timing,
    options: Options,
) -> Result<Vec<Row>> {
    let Timing { steps, seed, align } = timing;
    let interleave = options.target == Target::Cpu;
    let programs: Vec<Program> = runs
        .iter()
        .map(|&(keep, precision)| {
            let options = Options { precision, ..options };
            Program::new(wrn::build(&ModelConfig { keep, ..*config }, batch, Mode::Train, options))
        })
        .collect();
    let mut ready = |p: &Program| -> Result<Timed> {
        let mut backend = make()?;
        backend.reserve_arena(p.arena_bytes())?;
        backend.set_persistent(&wrn::init_persistent(&p.schedule, seed))?;
        let images = upload_synthetic_batch(&mut *backend, config.classes, batch, seed)?;
        Ok(Timed { backend, stepper: Stepper::new(p, align, true), rngs: StepRngs::new(seed), images })
    };
    let mut times = vec![vec![]; runs.len()];
    let mut device = vec![None; runs.len()];
    if interleave {
        let mut all = programs.iter().map(&mut ready).collect::<Result<Vec<_>>>()?;
        for i in 0..=steps {
            for (k, t) in all.iter_mut().enumerate() {
                let ms = t.step(&programs[k]);
                if i > 0 {
                    times[k].push(ms);
                }
            }
        }
    } else {
        for (k, p) in programs.iter().enumerate() {
            let mut t = ready(p)?;
            for i in 0..=steps {
                let ms = t.step(p);
                if i > 0 {
                    times[k].push(ms);
                }
            }
            device[k] = t.backend.memory_in_use();
        }
    }
    let rows = programs
        .iter()
        .zip(runs)
        .zip(times.iter_mut().zip(device))
        .map(|((p, &(keep, precision)), (t, device_bytes))| {
            t.sort_by(f64::total_cmp);
            let median = t[t.len() / 2];
            Row {
                keep,
                precision,
                median_ms: median,
                min_ms: t[0],
                max_ms: t[t.len() - 1],
                images_per_s: batch as f64 / (median / 1e3),
                arena_bytes: p.arena_bytes(),
                persistent_bytes: p.schedule.persistent_len() * 4,
                gflop: 2.0 * p.schedule.macs() as f64 / 1e9,
                device_bytes,
            }
        })
        .collect();
    Ok(rows)
}

/// One run's backend and step state.
struct Timed {
    backend: Box<dyn Backend>,
    stepper: Stepper,
    rngs: StepRngs,
    images: Vec<usize>,
}

impl Timed {
    /// One training step (the loss read back, so the device has finished), in milliseconds.
    fn step(&mut self, p: &Program) -> f64 {
        let sgd = SgdParams { lr: 0.01, momentum: 0.9, weight_decay: 5e-4, nesterov: true };
        let t0 = Instant::now();
        self.stepper.step(&mut *self.backend, p, &self.images, &mut self.rngs, sgd);
        t0.elapsed().as_secs_f64() * 1e3
    }
}

pub fn table(config: &ModelConfig, batch: usize, device: &str, rows: &[Row]) -> String {
    let mut t = format!("{} batch {batch} on {device}\n", config.name());
    // The precision goes last: scripts/gpu-check.sh reads the other columns by position.
    t += "keep   median ms   (min..max)        img/s  GFLOP/step  GFLOP/s  arena MiB  persist MiB  device MiB  overhead MiB  time ratio  arena ratio  precision\n";
    for r in rows {
        let dev = |v: Option<usize>| v.map_or("-".to_string(), |b| format!("{:.1}", mib(b)));
        t += &format!(
            "{:<5.2}  {:>9.1}   ({:>6.1}..{:<6.1})  {:>7.1}  {:>10.1}  {:>7.1}  {:>9.1}  {:>11.1}  {:>10}  {:>12}  {:>10.2}  {:>11.2}  {}\n",
            r.keep,
            r.median_ms,
            r.min_ms,
            r.max_ms,
            r.images_per_s,
            r.gflop,
            r.gflop / (r.median_ms / 1e3),
            mib(r.arena_bytes),
            mib(r.persistent_bytes),
            dev(r.device_bytes),
            dev(r.overhead_bytes()),
            r.median_ms / rows[0].median_ms,
            r.arena_bytes as f64 / rows[0].arena_bytes as f64,
            r.precision.as_str()
        );
    }
    t
}

pub fn command(f: &BenchFlags) -> Result<()> {
    let model = flags::ModelFlags { depth: f.depth, widen: f.widen, keep: None };
    let config = flags::model_config(&model, f.classes, 3)?;
    let batch = flags::check_batch(f.batch)?;
    config.footprint(batch).map_err(Invalid::flag)?;
    if f.keep.is_empty() || f.keep.len() > 16 || f.keep.iter().any(|&k| !(k > 0.0 && k <= 1.0)) {
        let keeps: Vec<String> = f.keep.iter().map(|k| k.to_string()).collect();
        return Err(Error::flag("--keep", keeps.join(","), "1 to 16 comma-separated fractions in (0, 1]"));
    }
    super::flags::check_timed_steps(f.steps)?;
    let precisions = f.memory.precisions()?;
    let math = crate::gpu::Math::parse(&f.math)?;
    let memory = f.memory.options_at(precisions[0])?;
    let probe = backend::open(f.device.into(), math, true)?;
    let (name, target) = (probe.name(), probe.target());
    let overheads = probe.device_overheads();
    drop(probe);
    let mut make = || backend::open(f.device.into(), math, false);
    config.check_align(f.align)?;
    let timing = Timing { steps: f.steps, seed: f.seed, align: f.align };
    let runs: Vec<(f64, Precision)> =
        precisions.iter().flat_map(|&p| f.keep.iter().map(move |&keep| (keep, p))).collect();
    let rows = measure(&mut make, &config, batch, &runs, timing, Options { target, ..memory })?;
    out!("{}", table(&config, batch, &name, &rows));
    if target == Target::Cuda {
        let how = match memory.input_grad {
            InputGrad::Conv => "conv (--input-grad; on the layers that allow it, col2im elsewhere)",
            InputGrad::Col2im => "col2im (--input-grad)",
        };
        outln!("input gradients: {how}");
        if memory.winograd {
            outln!("3x3 stride-1 convolutions: Winograd F(2x2, 3x3) in the fp32 runs (--winograd), im2col in bf16");
        }
    }
    if let Some(o) = overheads {
        // What is left once the context and our workspaces are counted: cuBLAS's handle and the
        // GEMM kernels it loads when a shape first needs them (CUDA loads modules lazily), and
        // the resident batch.
        let rest: Vec<f64> =
            rows.iter().filter_map(|r| r.overhead_bytes()).map(|b| mib(b) - mib(o.context + o.workspaces)).collect();
        let (lo, hi) = rest.iter().fold((f64::MAX, f64::MIN), |(lo, hi), &r| (lo.min(r), hi.max(r)));
        outln!(
            "device MiB = plan (arena + persistent) + overhead; overhead = CUDA context with our kernels \
             ({:.1} MiB in use before our first allocation) + cuBLAS workspace and reduction scratch ({:.1} MiB) \
             + cuBLAS's handle and the GEMM kernels it loads on first use, with the resident batch ({:.1} to {:.1} MiB)",
            mib(o.context),
            mib(o.workspaces),
            lo,
            hi
        );
    }
    Ok(())
}
