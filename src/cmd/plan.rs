//! `sliceout plan`: builds the schedule for the flags and the backend it is for, plans it, and
//! prints the plan (text, JSON or SVG), with the keep-1.0 plan's figures beside a sliced one, the
//! same step's totals in the other precision and, for an fp32 GPU plan, the kernel launches and
//! GEMMs a step queues. `--fit` answers what fits in a memory budget; `--sweep` shows the memory
//! against keep or batch.

use std::fmt::Write;

use super::flags::{self, Device, Format, PlanFlags, PlanMode, Sweep};
use crate::backend::cuda::record_step;
use crate::data::DatasetKind;
use crate::error::{Error, Result};
use crate::io::svg;
use crate::ir::{mib, Invalid, ModelConfig, Precision, Target};
use crate::model::fit::{self, SweepPoint, Term};
use crate::model::wrn;
use crate::plan::report::{self, GpuCalls};
use crate::plan::Program;
use crate::schedule::{Mode, Options};

/// The batch when neither `--batch` nor `--fit` chooses one.
const DEFAULT_BATCH: usize = 128;
/// The largest batch `--fit` looks at.
const MAX_BATCH: usize = 1 << 16;

pub fn command(f: &PlanFlags) -> Result<String> {
    if !(16..=400).contains(&f.width) {
        return Err(Error::flag("--width", f.width, "a chart width of 16 to 400 columns"));
    }
    let config = flags::model_config(&f.model, f.classes, f.in_channels)?;
    let mode = match f.mode {
        PlanMode::Train => Mode::Train,
        PlanMode::Eval => Mode::Eval,
    };
    let target = match f.device {
        Device::Cpu => Target::Cpu,
        Device::Cuda => Target::Cuda,
        Device::Auto if crate::gpu::available() => Target::Cuda,
        Device::Auto => Target::Cpu,
    };
    let options = Options { target, ..f.memory.options()? };
    let budget = f.fit.as_deref().map(budget).transpose()?;
    if let Some(batch) = f.batch {
        flags::check_batch(batch)?;
        config.footprint(batch).map_err(Invalid::flag)?;
    }
    if let Some(sweep) = f.sweep {
        // The swept value is every value: one given as well would be ignored.
        match (sweep, f.model.keep, f.batch) {
            (Sweep::Keep, Some(keep), _) => {
                return Err(Error::flag("--keep", keep, "no --keep with --sweep keep (the sweep covers every keep)"))
            }
            (Sweep::Batch, _, Some(batch)) => {
                return Err(Error::flag("--batch", batch, "no --batch with --sweep batch (the sweep covers batches)"))
            }
            _ => {}
        }
        let dataset: DatasetKind = f.dataset.parse()?;
        return sweep_command(sweep, &config, f.batch.unwrap_or(DEFAULT_BATCH), options, budget, dataset, f.format);
    }
    if let Some(budget) = budget {
        if mode == Mode::Eval {
            return Err(Error::flag("--mode", "eval", "train with --fit (a training step is what must fit)"));
        }
        let dataset: DatasetKind = f.dataset.parse()?;
        let (text, batch, options) = fit_command(&config, f.batch, options, budget, dataset)?;
        return Ok(text + &render(&config, batch, mode, options, f)?);
    }
    render(&config, f.batch.unwrap_or(DEFAULT_BATCH), mode, options, f)
}

/// `--fit`: a budget in bytes.
fn budget(text: &str) -> Result<usize> {
    fit::parse_size(text).ok_or_else(|| Error::flag("--fit", text, "a memory size such as 80GiB, 1536MiB or 512M"))
}

/// Where a step runs, as the `--fit` and `--sweep` headings say it, with its precision when that
/// is not the default fp32.
fn device_name(options: Options) -> String {
    let device = match options.target {
        Target::Cpu => "the CPU (host memory)",
        Target::Cuda => "the GPU",
    };
    match options.precision {
        Precision::Fp32 => device.to_string(),
        Precision::Bf16 => format!("{device} in bf16"),
    }
}

/// The plan of one step, in the chosen format.
fn render(config: &ModelConfig, batch: usize, mode: Mode, options: Options, f: &PlanFlags) -> Result<String> {
    config.footprint(batch).map_err(Invalid::flag)?;
    let program = Program::new(wrn::build(config, batch, mode, options));
    let baseline = (mode == Mode::Train && config.keep < 1.0)
        .then(|| Program::new(wrn::build(&ModelConfig { keep: 1.0, ..*config }, batch, mode, options)));
    let mut r = report::report(&program, baseline.as_ref());
    for precision in Precision::ALL.into_iter().filter(|&p| p != options.precision) {
        let other = Program::new(wrn::build(config, batch, mode, Options { precision, ..options }));
        r.precisions.push(report::totals(&other));
    }
    // What a step queues is counted by running the CUDA code on a recorder.
    if options.target == Target::Cuda {
        let starts = vec![0; program.schedule.slices.len()];
        let rec = record_step(&program, &starts);
        r.gpu_calls = Some(GpuCalls { launches: rec.launches.borrow().len(), gemms: rec.gemms.borrow().len() });
    }
    Ok(match f.format {
        Format::Text => report::text(&r, f.width),
        Format::Json => report::json(&r) + "\n",
        Format::Svg => report::svg(&r),
    })
}

/// The lines saying what counts besides the plan.
fn describe_terms(terms: &[Term]) -> String {
    let mut s = String::from("  besides the plan:\n");
    for t in terms {
        let _ = writeln!(s, "    {:<20} {:>9.1} MiB  ({})", t.what, mib(t.bytes), t.source);
    }
    s
}

/// `--fit`: with a batch, the fastest options that fit it; without, the largest batch per rung
/// of options (for the target and precision of `options`). Returns the text, and the batch and
/// options whose plan follows it.
fn fit_command(
    config: &ModelConfig,
    batch: Option<usize>,
    options: Options,
    budget: usize,
    dataset: DatasetKind,
) -> Result<(String, usize, Options)> {
    let target = options.target;
    let terms = fit::overheads(target, dataset);
    let fixed: usize = terms.iter().map(|t| t.bytes).sum();
    let ladder = fit::option_ladder(target, options.precision);
    let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
    let mut s = format!(
        "what fits in {:.2} GiB on {}: {} keep {:.2}\n",
        gib(budget),
        device_name(options),
        config.name(),
        config.keep
    );
    s += &describe_terms(&terms);
    if let Some(batch) = batch {
        for (name, options) in &ladder {
            let bytes = fit::step_bytes(config, batch, *options);
            if bytes.saturating_add(fixed) <= budget {
                let _ = writeln!(
                    s,
                    "batch {batch} fits with the options \"{name}\" (the fastest that fit): {:.2} GiB in all, \
                     {:.2} GiB of it the plan\n",
                    gib(bytes + fixed),
                    gib(bytes)
                );
                return Ok((s, batch, *options));
            }
        }
        let (name, leanest) = ladder[ladder.len() - 1];
        let needs = fit::step_bytes(config, batch, leanest) + fixed;
        return Err(Error::Msg(format!(
            "does not fit: {} keep {:.2} batch {batch} on {} needs {:.2} GiB even with the options \"{name}\" \
             ({:.2} GiB plan + {:.2} GiB besides), have {:.2} GiB",
            config.name(),
            config.keep,
            device_name(options),
            gib(needs),
            gib(needs - fixed),
            gib(fixed),
            gib(budget)
        )));
    }
    let _ = writeln!(s, "  {:<44} {:>13} {:>13}", "options", "largest batch", "GiB in all");
    let mut best: Option<(usize, &str, Options)> = None;
    for (name, options) in &ladder {
        match fit::largest_batch(config, *options, budget, fixed, MAX_BATCH) {
            Some((b, bytes)) => {
                let _ = writeln!(s, "  {name:<44} {b:>13} {:>13.2}", gib(bytes + fixed));
                if best.is_none_or(|(bb, _, _)| b > bb) {
                    best = Some((b, name, *options));
                }
            }
            None => {
                let _ = writeln!(s, "  {name:<44} {:>13} {:>13}", "none", "-");
            }
        }
    }
    let Some((b, name, options)) = best else {
        return Err(Error::Msg(format!(
            "does not fit: {} keep {:.2} needs more than {:.2} GiB on {} even at batch 1",
            config.name(),
            config.keep,
            gib(budget),
            device_name(options)
        )));
    };
    let _ = writeln!(s, "largest batch: {b} with the options \"{name}\"; its plan:\n");
    Ok((s, b, options))
}

/// `--sweep`: the table (text) or chart (SVG) of memory against keep or batch, with the largest
/// batch within the budget (80 GiB unless `--fit` says otherwise).
fn sweep_command(
    sweep: Sweep,
    config: &ModelConfig,
    batch: usize,
    options: Options,
    budget: Option<usize>,
    dataset: DatasetKind,
    format: Format,
) -> Result<String> {
    let budget = budget.unwrap_or(80 << 30);
    let fixed: usize = fit::overheads(options.target, dataset).iter().map(|t| t.bytes).sum();
    let largest = |c: &ModelConfig| fit::largest_batch(c, options, budget, fixed, MAX_BATCH).map_or(0, |(b, _)| b);
    let (points, fits, what) = match sweep {
        Sweep::Keep => {
            let points = fit::sweep_keep(config, batch, options);
            let fits: Vec<usize> = points.iter().map(|p| largest(&ModelConfig { keep: p.x, ..*config })).collect();
            (points, fits, format!("{} batch {batch}", config.name()))
        }
        Sweep::Batch => {
            let points = fit::sweep_batch(config, options);
            let fits = vec![largest(config); points.len()];
            (points, fits, format!("{} keep {:.2}", config.name(), config.keep))
        }
    };
    let title = format!(
        "memory against {} on {}: {what}; largest batch within {}",
        if sweep == Sweep::Keep { "keep" } else { "batch" },
        device_name(options),
        crate::ir::config::size_text(Some(budget as u64))
    );
    match format {
        Format::Svg => Ok(sweep_svg(&title, sweep, &points, &fits)),
        Format::Json => Err(Error::flag("--format", "json", "text or svg with --sweep")),
        Format::Text => Ok(sweep_text(&title, sweep, &points, &fits)),
    }
}

fn sweep_text(title: &str, sweep: Sweep, points: &[SweepPoint], fits: &[usize]) -> String {
    let mut s = format!("{title}\n");
    let keep = sweep == Sweep::Keep;
    let (x_name, last) = if keep { ("keep", "largest batch") } else { ("batch", "") };
    let _ = writeln!(s, "{x_name:>6} {:>11} {:>11} {:>12} {last:>14}", "arena MiB", "total MiB", "total ratio");
    for (p, b) in points.iter().zip(fits) {
        let x = if keep { format!("{:.3}", p.x) } else { format!("{}", p.x) };
        let ratio = p.total as f64 / points[0].total as f64;
        let b = if keep { batch_text(*b) } else { String::new() };
        let _ = writeln!(s, "{x:>6} {:>11.1} {:>11.1} {ratio:>12.2} {b:>14}", mib(p.arena), mib(p.total));
    }
    if !keep {
        let _ = writeln!(s, "largest batch: {}", batch_text(fits.first().copied().unwrap_or(0)));
    }
    s
}

/// A largest batch as shown: `none` where not even one image fits (`largest_batch` gave 0).
fn batch_text(batch: usize) -> String {
    match batch {
        0 => "none".to_string(),
        b => b.to_string(),
    }
}

/// A line chart of the total and the arena (MiB) against the swept value (keep falling from
/// left to right; batch on a log2 axis), each point of a keep sweep marked with the largest
/// batch that fits at that keep.
fn sweep_svg(title: &str, sweep: Sweep, points: &[SweepPoint], fits: &[usize]) -> String {
    let (w, h, left, right, top, bottom) = (720.0, 420.0, 70.0, 150.0, 50.0, 50.0);
    let xs: Vec<f64> = points.iter().map(|p| if sweep == Sweep::Batch { p.x.log2() } else { -p.x }).collect();
    let (x_lo, x_hi) = xs.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
    let y_hi = points.iter().map(|p| mib(p.total)).fold(0.0, f64::max) * 1.05;
    let step = svg::nice_step(y_hi, 5.0);
    let y_top = (y_hi / step).ceil() * step;
    let sx = |x: f64| left + (x - x_lo) / (x_hi - x_lo).max(1e-9) * (w - left - right);
    let sy = |y: f64| h - bottom - y / y_top.max(1e-9) * (h - top - bottom);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"{w}\" height=\"{h}\" fill=\"white\"/>\n<text x=\"{left}\" y=\"24\" font-size=\"14\">{}</text>\n",
        svg::escape(title)
    );
    let mut tick = 0.0;
    while tick <= y_top + 1e-9 {
        let y = sy(tick);
        let _ = writeln!(
            s,
            "<line x1=\"{left}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{tick}</text>",
            w - right,
            left - 6.0,
            y + 4.0
        );
        tick += step;
    }
    for ((p, &x), b) in points.iter().zip(&xs).zip(fits) {
        let label = if sweep == Sweep::Keep { format!("{:.3}", p.x) } else { format!("{}", p.x) };
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{label}</text>",
            sx(x),
            h - bottom + 18.0
        );
        if sweep == Sweep::Keep {
            let (px, py) = (sx(x), sy(mib(p.total)) - 10.0);
            let b = batch_text(*b);
            let _ = writeln!(s, "<text x=\"{px:.1}\" y=\"{py:.1}\" text-anchor=\"middle\" font-size=\"10\">{b}</text>");
        }
    }
    let note = match (sweep, fits.first()) {
        (Sweep::Keep, _) => "numbers above the total: the largest batch that fits".to_string(),
        (Sweep::Batch, Some(b)) => format!("largest batch that fits: {}", batch_text(*b)),
        (Sweep::Batch, None) => String::new(),
    };
    let _ = writeln!(s, "<text x=\"{left}\" y=\"40\" font-size=\"11\" fill=\"#555\">{}</text>", svg::escape(&note));
    let axis = if sweep == Sweep::Keep { "keep" } else { "batch" };
    let _ = writeln!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{axis}</text>",
        (left + w - right) / 2.0,
        h - 10.0
    );
    let _ = writeln!(s, "<text x=\"16\" y=\"{:.1}\" transform=\"rotate(-90 16 {:.1})\">MiB</text>", h / 2.0, h / 2.0);
    for (name, colour, value) in [
        ("total", "#4e79a7", &(|p: &SweepPoint| p.total) as &dyn Fn(&SweepPoint) -> usize),
        ("arena", "#e15759", &|p| p.arena),
    ] {
        let d: Vec<String> =
            points.iter().zip(&xs).map(|(p, &x)| format!("{:.1},{:.1}", sx(x), sy(mib(value(p))))).collect();
        let _ =
            writeln!(s, "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>", d.join(" "));
        if let (Some(p), Some(&x)) = (points.last(), xs.last()) {
            let _ = writeln!(
                s,
                "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"{colour}\">{name} {:.0} MiB</text>",
                sx(x) + 8.0,
                sy(mib(value(p))) + 4.0,
                mib(value(p))
            );
        }
    }
    s.push_str("</svg>\n");
    s
}
