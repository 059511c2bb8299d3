//! `sliceout profile`: times a training step op by op and shows what each op's outputs take in
//! the arena and how much of the arena is live at that op. The schedule is the table: one row
//! per op, summed per layer, optionally beside the same network at another keep value, as text,
//! JSON or a Chrome trace (one event per op plus a counter track of live arena bytes).

use super::bench::Timing;
use crate::backend::{self, Backend, StepCtx};
use crate::cmd::flags::{self, Format, ProfileFlags};
use crate::error::{Error, Result};
use crate::ir::{live_bytes, mib, Invalid};
use crate::model::{wrn, ModelConfig};
use crate::ops::SgdParams;
use crate::plan::Program;
use crate::schedule::{Mode, Options, Phase};
use crate::train::step::upload_synthetic_batch;
use crate::train::{StepRngs, Stepper};
use serde::Serialize;
use std::time::Instant;

#[derive(Clone, Debug, Serialize)]
pub struct OpRow {
    pub index: usize,
    pub name: String,
    pub layer: String,
    pub phase: String,
    /// Mean over the timed steps.
    pub ms: f64,
    /// Bytes of the buffers the op writes.
    pub out_bytes: usize,
    /// Bytes of all buffers live at this op.
    pub live_bytes: usize,
    pub macs: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct LayerRow {
    pub layer: String,
    pub forward_ms: f64,
    pub backward_ms: f64,
    pub update_ms: f64,
    pub out_bytes: usize,
}

/// Device time per kernel name, per step (GPU only).
#[derive(Clone, Debug, Serialize)]
pub struct KernelRow {
    pub kernel: String,
    pub calls: usize,
    pub ms: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Profile {
    pub model: String,
    pub keep: f64,
    pub batch: usize,
    /// `fp32` or `bf16`: the element type of activations (`--precision`).
    pub precision: String,
    pub device: String,
    pub steps: usize,
    /// How op times were taken.
    pub timer: String,
    pub step_ms: f64,
    pub arena_bytes: usize,
    pub ops: Vec<OpRow>,
    pub layers: Vec<LayerRow>,
    pub kernels: Vec<KernelRow>,
}

/// Profiles `steps` training steps (after one warm-up step).
pub fn profile(backend: &mut dyn Backend, p: &Program, timing: Timing) -> Result<Profile> {
    let Timing { steps, seed, align } = timing;
    let s = &p.schedule;
    backend.set_persistent(&wrn::init_persistent(s, seed))?;
    let images = upload_synthetic_batch(backend, s.config.classes, s.batch, seed)?;
    let sgd = SgdParams { lr: 0.01, momentum: 0.9, weight_decay: 5e-4, nesterov: true };
    let (mut stepper, mut rngs) = (Stepper::new(p, align, true), StepRngs::new(seed));
    let mut total = vec![0f64; s.steps.len()];
    let mut kernels: Vec<KernelRow> = vec![];
    let mut timer = "host clock, synchronised after each op";
    for step in 0..=steps {
        stepper.prepare(backend, p, &images, &mut rngs);
        let ctx = StepCtx::new(stepper.starts(), sgd);
        let on_device = backend.start_timing();
        for (i, t) in total.iter_mut().enumerate() {
            let t0 = Instant::now();
            backend.run_op(p, i, &ctx);
            if !on_device {
                backend.synchronize();
                if step > 0 {
                    *t += t0.elapsed().as_secs_f64() * 1e3;
                }
            }
        }
        if on_device {
            timer = "CUDA events around each kernel and GEMM, summed per op";
            for k in backend.take_timings().into_iter().filter(|_| step > 0) {
                total[k.op] += k.ms;
                match kernels.iter_mut().find(|r| r.kernel == k.kernel) {
                    Some(r) => (r.calls, r.ms) = (r.calls + 1, r.ms + k.ms),
                    None => kernels.push(KernelRow { kernel: k.kernel.to_string(), calls: 1, ms: k.ms }),
                }
            }
        }
    }
    let per_step = steps.max(1) as f64;
    for r in &mut kernels {
        (r.calls, r.ms) = (r.calls / steps.max(1), r.ms / per_step);
    }
    kernels.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    let live = live_bytes(&p.lifetimes, s.steps.len());
    let ops: Vec<OpRow> = s
        .steps
        .iter()
        .enumerate()
        .map(|(i, st)| OpRow {
            index: i,
            name: st.name(),
            layer: st.layer.clone(),
            phase: format!("{:?}", st.phase).to_lowercase(),
            ms: total[i] / per_step,
            out_bytes: st.op.buffers().1.iter().map(|&b| s.buffers[b].bytes()).sum(),
            live_bytes: live[i],
            macs: st.op.macs(&s.slices),
        })
        .collect();
    let mut layers: Vec<LayerRow> = vec![];
    for (st, row) in s.steps.iter().zip(&ops) {
        // Updates are named after their tensor (`block0.conv1.weight`): sum them into the layer.
        let layer = match st.phase {
            Phase::Update => st.layer.rsplit_once('.').map_or(st.layer.as_str(), |(l, _)| l).to_string(),
            _ => st.layer.clone(),
        };
        let i = match layers.iter().position(|l| l.layer == layer) {
            Some(i) => i,
            None => {
                layers.push(LayerRow { layer, forward_ms: 0.0, backward_ms: 0.0, update_ms: 0.0, out_bytes: 0 });
                layers.len() - 1
            }
        };
        let l = &mut layers[i];
        match st.phase {
            Phase::Forward => {
                l.forward_ms += row.ms;
                l.out_bytes += row.out_bytes;
            }
            Phase::Backward => l.backward_ms += row.ms,
            Phase::Update => l.update_ms += row.ms,
        }
    }
    Ok(Profile {
        model: s.config.name(),
        keep: s.config.keep,
        batch: s.batch,
        precision: s.options.precision.as_str().to_string(),
        device: backend.name(),
        steps,
        timer: timer.to_string(),
        step_ms: ops.iter().map(|o| o.ms).sum(),
        arena_bytes: p.arena_bytes(),
        ops,
        layers,
        kernels,
    })
}

/// Text: per-layer table (with the comparison beside), then per-op table.
pub fn text(main: &Profile, other: Option<&Profile>) -> String {
    let mut t = format!(
        "{} keep {:.2}, batch {}, {}, on {}: {:.1} ms per step (mean of {}; {}), arena {:.1} MiB\n",
        main.model,
        main.keep,
        main.batch,
        main.precision,
        main.device,
        main.step_ms,
        main.steps,
        main.timer,
        mib(main.arena_bytes)
    );
    if let Some(o) = other {
        t += &format!(
            "compared with keep {:.2}: {:.1} ms per step ({:.2}x), arena {:.1} MiB ({:.2}x)\n",
            o.keep,
            o.step_ms,
            main.step_ms / o.step_ms,
            mib(o.arena_bytes),
            main.arena_bytes as f64 / o.arena_bytes as f64
        );
    }
    t += "\nper layer                     fwd ms    bwd ms    upd ms   out MiB";
    if let Some(o) = other {
        t += &format!("  | keep {:.2}: fwd ms    bwd ms   out MiB", o.keep);
    }
    t += "\n";
    for l in &main.layers {
        t += &format!(
            "{:<28} {:>8.2}  {:>8.2}  {:>8.2}  {:>8.2}",
            l.layer,
            l.forward_ms,
            l.backward_ms,
            l.update_ms,
            mib(l.out_bytes)
        );
        if let Some(ol) = other.and_then(|o| o.layers.iter().find(|x| x.layer == l.layer)) {
            t += &format!("  |            {:>8.2}  {:>8.2}  {:>8.2}", ol.forward_ms, ol.backward_ms, mib(ol.out_bytes));
        }
        t += "\n";
    }
    if !main.kernels.is_empty() {
        t += "\nper kernel (device time per step)   calls        ms   share\n";
        for k in &main.kernels {
            t += &format!("{:<34} {:>6}  {:>8.3}  {:>5.1}%\n", k.kernel, k.calls, k.ms, 100.0 * k.ms / main.step_ms);
        }
    }
    t += "\nper op   op                              ms    out MiB   live MiB   GFLOP/s\n";
    for o in &main.ops {
        let rate = if o.macs > 0 && o.ms > 0.0 {
            format!("{:>8.1}", 2.0 * o.macs as f64 / (o.ms * 1e6))
        } else {
            String::new()
        };
        t += &format!(
            "{:>6}   {:<30} {:>7.3}  {:>9.2}  {:>9.1}  {}\n",
            o.index,
            o.name,
            o.ms,
            mib(o.out_bytes),
            mib(o.live_bytes),
            rate
        );
    }
    t
}

/// Chrome trace-event JSON: one complete event per op (one step, timed as the mean), a counter
/// track of live arena MiB.
pub fn trace(profiles: &[&Profile]) -> String {
    let mut events = vec![];
    for (pid, p) in profiles.iter().enumerate() {
        events.push(serde_json::json!({"name": "process_name", "ph": "M", "pid": pid + 1, "args": {"name": format!("{} keep {:.2}", p.model, p.keep)}}));
        let mut ts = 0.0;
        for o in &p.ops {
            let dur = o.ms * 1e3;
            events.push(serde_json::json!({"name": o.name, "cat": o.phase, "ph": "X", "ts": ts, "dur": dur, "pid": pid + 1, "tid": 1,
                "args": {"out_MiB": mib(o.out_bytes), "live_MiB": mib(o.live_bytes), "macs": o.macs}}));
            events.push(serde_json::json!({"name": "live arena", "ph": "C", "ts": ts, "pid": pid + 1, "args": {"MiB": mib(o.live_bytes)}}));
            ts += dur;
        }
    }
    serde_json::json!({"traceEvents": events, "displayTimeUnit": "ms"}).to_string()
}

/// Every flag checked before any step is timed: a bad `--format` or `--trace` should not cost
/// the profile.
pub fn command(f: &ProfileFlags) -> Result<()> {
    let config = flags::model_config(&f.model, f.classes, 3)?;
    config.check_align(f.align)?;
    let batch = flags::check_batch(f.batch)?;
    config.footprint(batch).map_err(Invalid::flag)?;
    super::flags::check_timed_steps(f.steps)?;
    if let Some(k) = f.compare {
        if !(k > 0.0 && k <= 1.0) {
            return Err(Error::flag("--compare", k, "a keep fraction in (0, 1]"));
        }
    }
    if f.format == Format::Svg {
        return Err(Error::flag("--format", "svg", "text or json for profile (svg is for plan)"));
    }
    if let Some(path) = &f.trace {
        super::check_output("--trace", path, &[])?;
    }
    let memory = f.memory.options()?;
    let mut backend = backend::open(f.device.into(), crate::gpu::Math::parse(&f.math)?, f.format == Format::Text)?;
    let options = Options { target: backend.target(), ..memory };
    let build = |c: &ModelConfig| Program::new(wrn::build(c, batch, Mode::Train, options));
    let main_p = build(&config);
    let other_p = f.compare.map(|keep| build(&ModelConfig { keep, ..config }));
    backend.reserve_arena(main_p.arena_bytes().max(other_p.as_ref().map_or(0, |p| p.arena_bytes())))?;
    let timing = Timing { steps: f.steps, seed: f.seed, align: f.align };
    let main = profile(&mut *backend, &main_p, timing)?;
    let other = other_p.as_ref().map(|p| profile(&mut *backend, p, timing)).transpose()?;
    if let Some(path) = &f.trace {
        let mut all = vec![&main];
        all.extend(other.as_ref());
        crate::io::write_atomic(path, trace(&all).as_bytes())?;
    }
    match f.format {
        Format::Json => outln!("{}", serde_json::json!({"profile": main, "compare": other})),
        Format::Text | Format::Svg => out!("{}", text(&main, other.as_ref())),
    }
    if let Some(path) = &f.trace {
        if f.format == Format::Text {
            outln!("trace written to {} (open in https://ui.perfetto.dev or chrome://tracing)", path.display());
        }
    }
    Ok(())
}
