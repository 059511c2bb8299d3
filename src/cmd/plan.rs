//! `sliceout plan`: builds the schedule for the flags and the backend it is for, plans it, and
//! prints the plan (text, JSON or SVG), with the keep-1.0 plan's figures beside a sliced one, the
//! same step's totals in the other precision and, for an fp32 GPU plan, the kernel launches and
//! GEMMs a step queues. `--fit` answers what fits in a memory budget; `--sweep` shows the memory
//! against keep or batch. Each format prints that format alone (what `--fit` found is in the
//! JSON's `fit` and the SVG's `<desc>`), and a flag the plan asked for would not use is refused.

use std::fmt::Write;

use serde::Serialize;

use super::flags::{self, Device, Format, PlanFlags, PlanMode, Sweep};
use crate::backend::cuda::record_step;
use crate::data::DatasetKind;
use crate::dist;
use crate::error::{Error, Result};
use crate::fit::{self, Bound, Largest, SweepPoint, Term};
use crate::io::svg;
use crate::ir::config::{size_text, MAX_BYTES};
use crate::ir::{mib, Invalid, ModelConfig, Precision, Target};
use crate::model::wrn;
use crate::plan::report::{self, GpuCalls, PlanReport};
use crate::plan::Program;
use crate::schedule::{Lowering, Mode, Options};

/// The batch when neither `--batch` nor `--fit` chooses one.
const DEFAULT_BATCH: usize = 128;
/// The text chart's width when `--width` does not say.
const DEFAULT_WIDTH: usize = 64;

pub fn command(f: &PlanFlags) -> Result<String> {
    let width = check_width(f)?;
    let dataset = f.dataset.as_deref().map(str::parse::<DatasetKind>).transpose()?;
    let (classes, in_channels) = model_shape(f, dataset)?;
    let config = flags::model_config(&f.model, classes, in_channels)?;
    let mode = match f.mode {
        PlanMode::Train => Mode::Train,
        PlanMode::Eval => Mode::Eval,
    };
    if let (Mode::Eval, Some(keep)) = (mode, f.model.keep) {
        return Err(Error::flag(
            "--keep",
            keep,
            "no --keep with --mode eval (a test-time step runs the whole network)",
        ));
    }
    let target = match f.device {
        Device::Cpu => Target::Cpu,
        Device::Cuda => Target::Cuda,
        Device::Auto if crate::gpu::available() => Target::Cuda,
        Device::Auto => Target::Cpu,
    };
    let (options, lowering) = f.memory.options()?;
    let lowering = Lowering { target, ..lowering };
    let budget = f.fit.as_deref().map(budget).transpose()?;
    if let Some(batch) = f.batch {
        flags::check_batch(batch)?;
        config.footprint(batch).map_err(Invalid::flag)?;
    }
    if let Some(sweep) = f.sweep {
        if mode == Mode::Eval {
            return Err(Error::flag("--mode", "eval", "train with --sweep (a sweep plans training steps)"));
        }
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
        let dataset = resident(dataset, classes, in_channels)?;
        let batch = f.batch.unwrap_or(DEFAULT_BATCH);
        return sweep_command(sweep, &config, batch, (options, lowering), budget, dataset, f.format);
    }
    if let Some(budget) = budget {
        if mode == Mode::Eval {
            return Err(Error::flag("--mode", "eval", "train with --fit (a training step is what must fit)"));
        }
        check_ladder_flags(f)?;
        let dataset = resident(dataset, classes, in_channels)?;
        let (answer, batch, options) = fit_answer(&config, f.batch, options, lowering, budget, dataset)?;
        let r = plan_report(&config, batch, mode, options, lowering)?;
        return Ok(match f.format {
            Format::Text => fit_text(&answer) + &report::text(&r, width),
            Format::Json => {
                let mut plan = report::json_value(&r);
                if let serde_json::Value::Object(fields) = &mut plan {
                    fields.insert("fit".into(), serde_json::to_value(&answer).unwrap_or_default());
                }
                serde_json::to_string_pretty(&plan).unwrap_or_default() + "\n"
            }
            Format::Svg => report::svg_described(&r, &fit_text(&answer)),
        });
    }
    let batch = f.batch.unwrap_or(DEFAULT_BATCH);
    let r = plan_report(&config, batch, mode, options, lowering)?;
    // A training step's all-reduce across data-parallel ranks (docs/DISTRIBUTED.md).
    let reduced = (mode == Mode::Train).then(|| reduced_bytes(&config, batch, options, lowering));
    Ok(match f.format {
        Format::Text => report::text(&r, width) + &reduced.map_or(String::new(), |b| reduced_line(b, config.keep)),
        Format::Json => match (report::json_value(&r), reduced) {
            (serde_json::Value::Object(mut fields), Some((bytes, _))) => {
                fields.insert("allreduce_bytes_per_step".into(), bytes.into());
                serde_json::to_string_pretty(&fields).unwrap_or_default() + "\n"
            }
            (plan, _) => serde_json::to_string_pretty(&plan).unwrap_or_default() + "\n",
        },
        Format::Svg => report::svg(&r),
    })
}

/// Bytes a data-parallel training step of `config` all-reduces, and those of the same step at
/// keep 1.0.
pub fn reduced_bytes(config: &ModelConfig, batch: usize, options: Options, lowering: Lowering) -> (usize, usize) {
    let at = |keep| {
        dist::reduced_bytes(&wrn::build(&ModelConfig { keep, ..*config }, batch, Mode::Train, options, lowering))
    };
    (at(config.keep), at(1.0))
}

/// The line saying what `reduced_bytes` found.
pub fn reduced_line((bytes, full): (usize, usize), keep: f64) -> String {
    format!(
        "data-parallel all-reduce per step: {bytes} bytes ({:.2} MiB) of weight gradients at keep {keep:.2}; {full} bytes at keep 1.00\n",
        crate::ir::mib(bytes)
    )
}

/// `--width`: 16 to 400 columns, for the text chart alone (JSON, SVG and a sweep have none).
fn check_width(f: &PlanFlags) -> Result<usize> {
    let Some(width) = f.width else { return Ok(DEFAULT_WIDTH) };
    if !(16..=400).contains(&width) {
        return Err(Error::flag("--width", width, "a chart width of 16 to 400 columns"));
    }
    if f.format != Format::Text || f.sweep.is_some() {
        let expected = "no --width with --format json or svg, or with --sweep (only the text plan has a chart)";
        return Err(Error::flag("--width", width, expected));
    }
    Ok(width)
}

/// The classes and input channels of the model: a `--dataset`'s, which `--classes` and
/// `--in-channels` may repeat but not contradict (CIFAR-100 has 100 classes, or 20 superclasses
/// as `train --coarse` uses); without one the flags', 10 and 3 by default.
fn model_shape(f: &PlanFlags, dataset: Option<DatasetKind>) -> Result<(usize, usize)> {
    let Some(d) = dataset else { return Ok((f.classes.unwrap_or(10), f.in_channels.unwrap_or(3))) };
    let (classes, channels): (&[usize], usize) = match d {
        DatasetKind::Cifar10 => (&[10], 3),
        DatasetKind::Cifar100 => (&[100, 20], 3),
        DatasetKind::FashionMnist => (&[10], 1),
    };
    if let Some(c) = f.classes.filter(|c| !classes.contains(c)) {
        let held = match d {
            DatasetKind::Cifar100 => "100 (or 20, its superclasses)".to_string(),
            _ => classes[0].to_string(),
        };
        return Err(Error::flag("--classes", c, format!("{held} with --dataset {d} (or no --classes)")));
    }
    if let Some(ch) = f.in_channels.filter(|&ch| ch != channels) {
        return Err(Error::flag("--in-channels", ch, format!("{channels} with --dataset {d} (or no --in-channels)")));
    }
    Ok((f.classes.unwrap_or(classes[0]), channels))
}

/// The dataset `--fit` and `--sweep` count as resident: `--dataset`, else the one whose images
/// the model takes (CIFAR for 3 channels, Fashion-MNIST for 1).
fn resident(dataset: Option<DatasetKind>, classes: usize, in_channels: usize) -> Result<DatasetKind> {
    match (dataset, in_channels) {
        (Some(d), _) => Ok(d),
        (None, 3) if classes == 100 || classes == 20 => Ok(DatasetKind::Cifar100),
        (None, 3) => Ok(DatasetKind::Cifar10),
        (None, 1) => Ok(DatasetKind::FashionMnist),
        (None, n) => Err(Error::flag(
            "--in-channels",
            n,
            "1 or 3 with --fit or --sweep (the dataset kept resident is counted, and none has other channels)",
        )),
    }
}

/// `--fit` tries its own rungs of `--no-recompute`, `--col-chunk` and `--col-budget`
/// ([`fit::option_ladder`]): one given as well would be ignored.
fn check_ladder_flags(f: &PlanFlags) -> Result<()> {
    let m = &f.memory;
    let given = [
        ("--no-recompute", m.no_recompute.then(String::new)),
        ("--col-chunk", m.col_chunk.map(|c| format!(" {c}"))),
        ("--col-budget", m.col_budget.map(|b| format!(" {b}"))),
    ];
    match given.into_iter().find_map(|(flag, value)| Some((flag, value?))) {
        Some((flag, value)) => Err(Error::Msg(format!(
            "{flag}{value} is not used with --fit, which tries its own rungs of BN recomputation and im2col \
             workspaces: leave {flag} out"
        ))),
        None => Ok(()),
    }
}

/// `--fit`: a budget in bytes.
fn budget(text: &str) -> Result<usize> {
    fit::parse_size(text).ok_or_else(|| Error::flag("--fit", text, "a memory size such as 80GiB, 1536MiB or 512M"))
}

/// A size as the `--fit` answers say it: GiB with two decimals from 1 GiB, smaller units below.
fn size(bytes: usize) -> String {
    const KIB: usize = 1 << 10;
    let b = bytes as f64;
    match bytes {
        0..KIB => format!("{bytes} B"),
        KIB..MIB => format!("{:.1} KiB", b / KIB as f64),
        MIB..GIB => format!("{:.1} MiB", b / MIB as f64),
        _ => format!("{:.2} GiB", b / GIB as f64),
    }
}

const MIB: usize = 1 << 20;
const GIB: usize = 1 << 30;

/// Where a step runs, as the `--fit` and `--sweep` headings say it, with its precision when that
/// is not the default fp32.
fn device_name(lowering: Lowering) -> String {
    let device = match lowering.target {
        Target::Cpu => "the CPU (host memory)",
        Target::Cuda => "the GPU",
    };
    match lowering.precision {
        Precision::Fp32 => device.to_string(),
        Precision::Bf16 => format!("{device} in bf16"),
    }
}

/// The plan of one step, as the printouts read it.
fn plan_report(
    config: &ModelConfig,
    batch: usize,
    mode: Mode,
    options: Options,
    lowering: Lowering,
) -> Result<PlanReport> {
    config.footprint(batch).map_err(Invalid::flag)?;
    let program = Program::new(wrn::build(config, batch, mode, options, lowering));
    let full = ModelConfig { keep: 1.0, ..*config };
    let baseline = (mode == Mode::Train && config.keep < 1.0)
        .then(|| Program::new(wrn::build(&full, batch, mode, options, lowering)));
    let mut r = report::report(&program, baseline.as_ref());
    for precision in Precision::ALL.into_iter().filter(|&p| p != lowering.precision) {
        let other = Program::new(wrn::build(config, batch, mode, options, Lowering { precision, ..lowering }));
        r.precisions.push(report::totals(&other));
    }
    // What a step queues is counted by running the CUDA code on a recorder.
    if lowering.target == Target::Cuda {
        let starts = vec![0; program.schedule.slices.len()];
        let rec = record_step(&program, &starts);
        r.gpu_calls = Some(GpuCalls { launches: rec.launches.borrow().len(), gemms: rec.gemms.borrow().len() });
    }
    Ok(r)
}

/// What `--fit` found: the JSON's `fit` object, and the lines the text and SVG show.
#[derive(Clone, Debug, Serialize)]
struct FitAnswer {
    budget_bytes: usize,
    /// Where the step runs, e.g. "the GPU".
    device: String,
    model: String,
    keep: f64,
    /// The memory besides the plan, each term with where its size comes from.
    besides_plan: Vec<Term>,
    besides_plan_bytes: usize,
    /// `--batch`, when it was given: then each rung says whether that batch fits.
    batch_asked: Option<usize>,
    /// One per rung of memory options, fastest first.
    rungs: Vec<FitRung>,
    /// The batch and options whose plan follows.
    batch: usize,
    options: String,
    total_bytes: usize,
    /// What stops one more image than `batch` (without `--batch`): `budget`, or `sizes` where
    /// a buffer would pass what any plan is made for and the budget has room for more.
    limit: Option<&'static str>,
}

/// One rung of options: the batch it takes (the largest that fits, or `--batch`), its whole
/// step's bytes, whether it fits.
#[derive(Clone, Debug, Serialize)]
struct FitRung {
    options: String,
    batch: Option<usize>,
    total_bytes: Option<usize>,
    fits: bool,
    limit: Option<&'static str>,
}

fn limit_name(bound: Bound) -> &'static str {
    match bound {
        Bound::Budget => "budget",
        Bound::Sizes => "sizes",
    }
}

/// `--fit`: with a batch, the fastest options that fit it; without, the largest batch per rung
/// of options (lowered as `lowering` says, with the other choices of `options`). Returns the
/// answer, and the batch and options whose plan follows it.
fn fit_answer(
    config: &ModelConfig,
    batch: Option<usize>,
    options: Options,
    lowering: Lowering,
    budget: usize,
    dataset: DatasetKind,
) -> Result<(FitAnswer, usize, Options)> {
    let terms = fit::overheads(lowering.target, dataset);
    let fixed: usize = terms.iter().map(|t| t.bytes).sum();
    // The ladder sets what it tries; the other choices are the flags'.
    let ladder: Vec<(&str, Options)> = fit::option_ladder()
        .into_iter()
        .map(|(name, o)| {
            let o =
                Options { recompute: o.recompute, col_chunk: o.col_chunk, col_budget_mib: o.col_budget_mib, ..options };
            (name, o)
        })
        .collect();
    let mut answer = FitAnswer {
        budget_bytes: budget,
        device: device_name(lowering),
        model: config.name(),
        keep: config.keep,
        besides_plan: terms,
        besides_plan_bytes: fixed,
        batch_asked: batch,
        rungs: vec![],
        batch: 0,
        options: String::new(),
        total_bytes: 0,
        limit: None,
    };
    let (leanest_name, leanest) = ladder[ladder.len() - 1];
    let does_not_fit = |batch: usize| {
        let plan = fit::step_bytes(config, batch, leanest, lowering);
        Error::Msg(format!(
            "does not fit: {} keep {:.2} batch {batch} on {} needs {} even with the options \"{leanest_name}\" \
             ({} plan + {} besides it), have {}",
            config.name(),
            config.keep,
            device_name(lowering),
            size(plan.saturating_add(fixed)),
            size(plan),
            size(fixed),
            size(budget)
        ))
    };
    if let Some(batch) = batch {
        for (name, options) in &ladder {
            let total = fit::step_bytes(config, batch, *options, lowering).saturating_add(fixed);
            let fits = total <= budget;
            answer.rungs.push(FitRung {
                options: name.to_string(),
                batch: Some(batch),
                total_bytes: Some(total),
                fits,
                limit: None,
            });
            if fits {
                (answer.batch, answer.options, answer.total_bytes) = (batch, name.to_string(), total);
                return Ok((answer, batch, *options));
            }
        }
        return Err(does_not_fit(batch));
    }
    let mut best: Option<(Largest, &str, Options)> = None;
    for (name, options) in &ladder {
        let largest = fit::largest_batch(config, *options, lowering, budget, fixed);
        answer.rungs.push(FitRung {
            options: name.to_string(),
            batch: largest.map(|l| l.batch),
            total_bytes: largest.map(|l| l.bytes + fixed),
            fits: largest.is_some(),
            limit: largest.map(|l| limit_name(l.bound)),
        });
        if let Some(l) = largest.filter(|l| best.is_none_or(|(b, _, _)| l.batch > b.batch)) {
            best = Some((l, name, *options));
        }
    }
    let Some((l, name, options)) = best else { return Err(does_not_fit(1)) };
    (answer.batch, answer.options, answer.total_bytes) = (l.batch, name.to_string(), l.bytes + fixed);
    answer.limit = Some(limit_name(l.bound));
    Ok((answer, l.batch, options))
}

/// What `--fit` found, as lines of text; its plan follows.
fn fit_text(a: &FitAnswer) -> String {
    let mut s = format!("what fits in {} on {}: {} keep {:.2}\n", size(a.budget_bytes), a.device, a.model, a.keep);
    s += "  besides the plan:\n";
    for t in &a.besides_plan {
        let _ = writeln!(s, "    {:<20} {:>9.1} MiB  ({})", t.what, mib(t.bytes), t.source);
    }
    let gib = |b: usize| b as f64 / GIB as f64;
    if a.batch_asked.is_some() {
        let _ = writeln!(
            s,
            "batch {} fits with the options \"{}\" (the fastest that fit): {:.2} GiB in all, {:.2} GiB of it the plan\n",
            a.batch,
            a.options,
            gib(a.total_bytes),
            gib(a.total_bytes - a.besides_plan_bytes)
        );
        return s;
    }
    let _ = writeln!(s, "  {:<44} {:>13} {:>13}", "options", "largest batch", "GiB in all");
    for r in &a.rungs {
        let (batch, total) = match (r.batch, r.total_bytes) {
            (Some(b), Some(t)) => {
                (format!("{b}{}", if r.limit == Some("sizes") { "*" } else { "" }), format!("{:.2}", gib(t)))
            }
            _ => ("none".to_string(), "-".to_string()),
        };
        let _ = writeln!(s, "  {:<44} {batch:>13} {total:>13}", r.options);
    }
    if a.rungs.iter().any(|r| r.limit == Some("sizes")) {
        let _ = writeln!(s, "  * {}", sizes_note());
    }
    let _ = writeln!(s, "largest batch: {} with the options \"{}\"; its plan:\n", a.batch, a.options);
    s
}

/// Why a largest batch marked `*` is not larger.
fn sizes_note() -> String {
    format!(
        "the most a plan is made for, not the budget's limit: one more image makes a buffer larger than {}",
        size_text(Some(MAX_BYTES))
    )
}

/// `--sweep`: the table (text) or chart (SVG) of memory against keep or batch, with the largest
/// batch within the budget (80 GiB unless `--fit` says otherwise).
fn sweep_command(
    sweep: Sweep,
    config: &ModelConfig,
    batch: usize,
    (options, lowering): (Options, Lowering),
    budget: Option<usize>,
    dataset: DatasetKind,
    format: Format,
) -> Result<String> {
    let budget = budget.unwrap_or(80 << 30);
    let fixed: usize = fit::overheads(lowering.target, dataset).iter().map(|t| t.bytes).sum();
    let largest = |c: &ModelConfig| batch_text(fit::largest_batch(c, options, lowering, budget, fixed));
    let (points, fits, what) = match sweep {
        Sweep::Keep => {
            let points = fit::sweep_keep(config, batch, options, lowering);
            let fits: Vec<String> = points.iter().map(|p| largest(&ModelConfig { keep: p.x, ..*config })).collect();
            (points, fits, format!("{} batch {batch}", config.name()))
        }
        Sweep::Batch => {
            let points = fit::sweep_batch(config, options, lowering);
            let fits = vec![largest(config); points.len()];
            (points, fits, format!("{} keep {:.2}", config.name(), config.keep))
        }
    };
    let title = format!(
        "memory against {} on {}: {what}; largest batch within {}",
        if sweep == Sweep::Keep { "keep" } else { "batch" },
        device_name(lowering),
        crate::ir::config::size_text(Some(budget as u64))
    );
    match format {
        Format::Svg => Ok(sweep_svg(&title, sweep, &points, &fits)),
        Format::Json => Err(Error::flag("--format", "json", "text or svg with --sweep")),
        Format::Text => {
            let mut s = sweep_text(&title, sweep, &points, &fits);
            if fits.iter().any(|b| b.ends_with('*')) {
                let _ = writeln!(s, "* {}", sizes_note());
            }
            Ok(s)
        }
    }
}

fn sweep_text(title: &str, sweep: Sweep, points: &[SweepPoint], fits: &[String]) -> String {
    let mut s = format!("{title}\n");
    let keep = sweep == Sweep::Keep;
    let (x_name, last) = if keep { ("keep", "largest batch") } else { ("batch", "") };
    let _ = writeln!(s, "{x_name:>6} {:>11} {:>11} {:>12} {last:>14}", "arena MiB", "total MiB", "total ratio");
    for (p, b) in points.iter().zip(fits) {
        let x = if keep { format!("{:.3}", p.x) } else { format!("{}", p.x) };
        let ratio = p.total as f64 / points[0].total as f64;
        let b = if keep { b.as_str() } else { "" };
        let _ = writeln!(s, "{x:>6} {:>11.1} {:>11.1} {ratio:>12.2} {b:>14}", mib(p.arena), mib(p.total));
    }
    if !keep {
        let _ = writeln!(s, "largest batch: {}", fits.first().map_or("none", String::as_str));
    }
    s
}

/// A largest batch as shown: `none` where not even one image fits, marked `*` where the sizes
/// a plan is made for end before the budget ([`sizes_note`]).
fn batch_text(largest: Option<Largest>) -> String {
    match largest {
        None => "none".to_string(),
        Some(Largest { batch, bound: Bound::Sizes, .. }) => format!("{batch}*"),
        Some(Largest { batch, .. }) => batch.to_string(),
    }
}

/// A line chart of the total and the arena (MiB) against the swept value (keep falling from
/// left to right; batch on a log2 axis), each point of a keep sweep marked with the largest
/// batch that fits at that keep.
fn sweep_svg(title: &str, sweep: Sweep, points: &[SweepPoint], fits: &[String]) -> String {
    let (w, h, left, right, top, bottom) = (720.0, 420.0, 70.0, 150.0, 50.0, 50.0);
    let xs: Vec<f64> = points.iter().map(|p| if sweep == Sweep::Batch { p.x.log2() } else { -p.x }).collect();
    let (x_lo, x_hi) = xs.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
    let y_hi = points.iter().map(|p| mib(p.total)).fold(0.0, f64::max) * 1.05;
    let step = svg::nice_step(y_hi, 5.0);
    let y_top = (y_hi / step).ceil() * step;
    let sx = |x: f64| left + (x - x_lo) / (x_hi - x_lo).max(1e-9) * (w - left - right);
    let sy = |y: f64| h - bottom - y / y_top.max(1e-9) * (h - top - bottom);
    let mut s = format!(
        "{}\n{}\n<text x=\"{left}\" y=\"24\" font-size=\"14\">{}</text>\n",
        svg::open(&svg::size(w, h)),
        svg::background(w, h),
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
            let _ = writeln!(s, "<text x=\"{px:.1}\" y=\"{py:.1}\" text-anchor=\"middle\" font-size=\"10\">{b}</text>");
        }
    }
    let mut note = match (sweep, fits.first()) {
        (Sweep::Keep, _) => "numbers above the total: the largest batch that fits".to_string(),
        (Sweep::Batch, Some(b)) => format!("largest batch that fits: {b}"),
        (Sweep::Batch, None) => String::new(),
    };
    if fits.iter().any(|b| b.ends_with('*')) {
        note += &format!("; * {}", sizes_note());
    }
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
        let d: Vec<String> = points.iter().zip(&xs).map(|(p, &x)| svg::point(sx(x), sy(mib(value(p))))).collect();
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
    s.push_str(svg::CLOSE);
    s.push('\n');
    s
}
