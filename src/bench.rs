//! `sliceout bench`: median training-step time, images/s and memory for several keep values,
//! measured in one run on one backend, with ratios to the first keep value. `benches/step.rs`
//! runs the same measurement.

use crate::backend::{Backend, StepCtx};
use crate::cli::{self, BenchFlags};
use crate::error::{Error, Result};
use crate::exec::Program;
use crate::model::{wrn, ModelConfig};
use crate::ops::sgd::SgdParams;
use crate::rng::{stream, Rng};
use crate::schedule::{Mode, Options};
use crate::sliceout;
use crate::train;
use std::time::Instant;

pub struct Row {
    pub keep: f64,
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

/// Times `steps` training steps (after one warm-up step) of `config` at each keep value, each on
/// a fresh backend from `make` so that device memory in use is that keep value's plan alone.
pub fn measure(
    make: &mut dyn FnMut() -> Result<Box<dyn Backend>>,
    config: &ModelConfig,
    batch: usize,
    keeps: &[f64],
    steps: usize,
    seed: u64,
) -> Result<Vec<Row>> {
    let mut rng = Rng::new(seed, stream::SYNTH);
    let sgd = SgdParams { lr: 0.01, momentum: 0.9, weight_decay: 5e-4, nesterov: true };
    let mut slicer = Rng::new(seed, stream::SLICE);
    let mut rows = vec![];
    for &keep in keeps {
        let p = Program::new(wrn::build(&ModelConfig { keep, ..*config }, batch, Mode::Train, Options::default()));
        let s = &p.schedule;
        let mut backend = make()?;
        backend.reserve_arena(p.arena_bytes())?;
        backend.set_persistent(&wrn::init_persistent(s, seed))?;
        let x: Vec<f32> = (0..s.buffers[s.input].len).map(|_| rng.normal()).collect();
        let y: Vec<f32> = (0..batch).map(|_| rng.below(config.classes) as f32).collect();
        let mut times = vec![];
        let mut starts = vec![0; s.slices.len()];
        for i in 0..=steps {
            for (st, spec) in starts.iter_mut().zip(&s.slices) {
                *st = sliceout::sample_start(&mut slicer, spec.channels, 1);
            }
            let t0 = Instant::now();
            backend.write(&p, s.input, &x);
            backend.write(&p, s.labels, &y);
            backend.run(&p, &StepCtx { starts: &starts, sgd });
            let mut loss = [0f32; 2];
            backend.read(&p, s.loss, &mut loss);
            if i > 0 {
                times.push(t0.elapsed().as_secs_f64() * 1e3);
            }
        }
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        rows.push(Row {
            keep,
            median_ms: median,
            min_ms: times[0],
            max_ms: times[times.len() - 1],
            images_per_s: batch as f64 / (median / 1e3),
            arena_bytes: p.arena_bytes(),
            persistent_bytes: s.persistent_len() * 4,
            gflop: 2.0 * s.macs() as f64 / 1e9,
            device_bytes: backend.memory_in_use(),
        });
    }
    Ok(rows)
}

pub fn table(config: &ModelConfig, batch: usize, device: &str, rows: &[Row]) -> String {
    let mib = |b: usize| b as f64 / (1 << 20) as f64;
    let mut t = format!("{} batch {batch} on {device}\n", config.name());
    t += "keep   median ms   (min..max)        img/s  GFLOP/step  GFLOP/s  arena MiB  persist MiB  device MiB  overhead MiB  time ratio  arena ratio\n";
    for r in rows {
        let dev = |v: Option<usize>| v.map_or("-".to_string(), |b| format!("{:.1}", mib(b)));
        t += &format!(
            "{:<5.2}  {:>9.1}   ({:>6.1}..{:<6.1})  {:>7.1}  {:>10.1}  {:>7.1}  {:>9.1}  {:>11.1}  {:>10}  {:>12}  {:>10.2}  {:>11.2}\n",
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
            r.arena_bytes as f64 / rows[0].arena_bytes as f64
        );
    }
    t
}

pub fn command(f: &BenchFlags) -> Result<()> {
    let model = cli::ModelFlags { depth: f.depth, widen: f.widen, keep: None };
    let config = cli::model_config(&model, f.classes, 3)?;
    let batch = cli::check_batch(f.batch)?;
    if f.keep.is_empty() || f.keep.iter().any(|&k| !(k > 0.0 && k <= 1.0)) {
        return Err(Error::flag("--keep", format!("{:?}", f.keep), "comma-separated fractions in (0, 1]"));
    }
    if f.steps == 0 {
        return Err(Error::flag("--steps", f.steps, "an integer >= 1"));
    }
    let math = crate::backend::cuda::Math::parse(&f.math)?;
    let name = train::backend(f.device.into(), math, true)?.name();
    let mut make = || train::backend(f.device.into(), math, false);
    let rows = measure(&mut make, &config, batch, &f.keep, f.steps, f.seed)?;
    print!("{}", table(&config, batch, &name, &rows));
    Ok(())
}
