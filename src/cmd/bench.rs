//! `sliceout bench`: median training-step time, images/s and memory for several keep values
//! (and precisions), measured in one run on one backend (`crate::measure::bench`), with ratios
//! to the first row. `benches/step.rs` runs the same measurement.

use crate::backend;
use crate::cmd::flags::{self, BenchFlags};
use crate::error::{Error, Result};
use crate::ir::{mib, Invalid, Precision, Target};
use crate::measure::bench::{measure, Row};
use crate::measure::Timing;
use crate::model::ModelConfig;
use crate::schedule::{InputGrad, Lowering};

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
    let math = flags::math(f.math.as_deref())?;
    let (memory, lowering) = f.memory.options_at(precisions[0])?;
    let probe = backend::open(f.device.into(), math, true)?;
    let (name, target) = (probe.name(), probe.target());
    let overheads = probe.device_overheads();
    drop(probe);
    let mut make = || backend::open(f.device.into(), math, false);
    config.check_align(f.align)?;
    let timing = Timing { steps: f.steps, seed: f.seed, align: f.align };
    let runs: Vec<(f64, Precision)> =
        precisions.iter().flat_map(|&p| f.keep.iter().map(move |&keep| (keep, p))).collect();
    let rows = measure(&mut make, &config, batch, &runs, timing, memory, Lowering { target, ..lowering })?;
    out!("{}", table(&config, batch, &name, &rows));
    for &keep in &f.keep {
        let keep_config = ModelConfig { keep, ..config };
        let bytes = super::plan::reduced_bytes(&keep_config, batch, memory, Lowering { target, ..lowering });
        out!("{}", super::plan::reduced_line(bytes, keep));
    }
    if target == Target::Cuda {
        let how = match lowering.input_grad {
            InputGrad::Conv => "conv (--input-grad; on the layers that allow it, col2im elsewhere)",
            InputGrad::Col2im => "col2im (--input-grad)",
        };
        outln!("input gradients: {how}");
        if lowering.winograd {
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
    // After the work, so that a refusal stays one line.
    if let Some(note) = flags::gpu_only_note(f.math.is_some(), &f.memory).filter(|_| target == Target::Cpu) {
        errln!("{note}");
    }
    Ok(())
}
