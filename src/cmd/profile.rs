//! `sliceout profile`: times a training step op by op (`crate::measure::profile`) and shows
//! what each op's outputs take in the arena and how much of the arena is live at that op: one
//! row per op, summed per layer, optionally beside the same network at another keep value, as
//! text, JSON or a Chrome trace (one event per op plus a counter track of live arena bytes).

use crate::backend;
use crate::cmd::flags::{self, Format, ProfileFlags};
use crate::error::{Error, Result};
use crate::ir::{mib, Invalid, Target};
use crate::measure::profile::{profile_keeps, Profile};
use crate::measure::Timing;
use crate::schedule::Lowering;

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
    let (options, lowering) = f.memory.options()?;
    let mut backend = backend::open(f.device.into(), flags::math(f.math.as_deref())?, f.format == Format::Text)?;
    let lowering = Lowering { target: backend.target(), ..lowering };
    let timing = Timing { steps: f.steps, seed: f.seed, align: f.align };
    let (main, other) = profile_keeps(&mut *backend, &config, batch, options, lowering, f.compare, timing)?;
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
    // After the work, so that a refusal stays one line.
    if let Some(note) = flags::gpu_only_note(f.math.is_some(), &f.memory).filter(|_| lowering.target == Target::Cpu) {
        errln!("{note}");
    }
    Ok(())
}
