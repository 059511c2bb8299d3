//! Printouts of a memory plan: a text report (summary, buffer table, one chart row per step),
//! JSON for tools, and an SVG picture (step by offset, one rectangle per buffer). Sizes are
//! bytes of each buffer's element type; the summary puts the plan's totals in both precisions
//! side by side when the caller gives the other one.
//!
//! They all read one [`PlanReport`], a plain record filled by whoever built the plan (the
//! `plan` command), so the printouts depend on nothing but the planner's outputs. Nothing here
//! panics on inconsistent input (missing offsets, lives past the last step): such data is drawn
//! as well as it can be, because a printout is how such mistakes get found.

use std::fmt::{self, Write};

use serde::Serialize;

use super::Program;
use crate::ir::{live_bytes, mib, BufKind, Dtype, Lifetime, Precision, Role};
use crate::schedule::{Mode, Schedule};

/// One arena buffer as the printouts show it.
#[derive(Clone, Debug)]
pub struct BufferInfo {
    pub name: String,
    pub kind: BufKind,
    pub dtype: Dtype,
    pub bytes: usize,
    /// First and last live step (inclusive), indices into [`PlanReport::steps`].
    pub first: usize,
    pub last: usize,
    /// Sized to a SliceOut slice rather than the full layer.
    pub sliced: bool,
}

/// The keep-1.0 plan, shown beside a sliced one to state the saving.
#[derive(Clone, Copy, Debug)]
pub struct Baseline {
    pub keep: f64,
    pub arena_bytes: usize,
    pub naive_bytes: usize,
    pub persistent_bytes: usize,
}

/// A plan's arena and total (persistent + arena) in one precision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrecisionTotals {
    pub precision: Precision,
    pub arena_bytes: usize,
    pub total_bytes: usize,
}

/// Everything the printouts show about one plan.
#[derive(Clone, Debug)]
pub struct PlanReport {
    /// e.g. "WRN-28-10".
    pub model: String,
    pub batch: usize,
    pub keep: f64,
    /// "train" or "eval".
    pub mode: String,
    pub precision: Precision,
    pub alignment: usize,
    /// Op names in schedule order, e.g. "f12 g0.b0.conv1".
    pub steps: Vec<String>,
    pub buffers: Vec<BufferInfo>,
    /// One arena offset per buffer.
    pub offsets: Vec<usize>,
    pub arena_bytes: usize,
    pub naive_bytes: usize,
    pub persistent_bytes: usize,
    /// e.g. ("params", b), ("momentum", b), ("bn stats", b).
    pub persistent_parts: Vec<(String, usize)>,
    /// Planner options in force, e.g. ("recompute", "bn-relu").
    pub options: Vec<(String, String)>,
    pub baseline: Option<Baseline>,
    /// This plan's totals first, then the same step's in the other precision when the caller
    /// planned it ([`totals`]).
    pub precisions: Vec<PrecisionTotals>,
    /// For a GPU plan: kernel launches and cuBLAS GEMMs one training step queues.
    pub gpu_calls: Option<GpuCalls>,
}

/// What one step queues on a GPU, counted from the program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct GpuCalls {
    pub launches: usize,
    pub gemms: usize,
}

const MIB: f64 = 1024.0 * 1024.0;

/// `part / whole` in percent, 0 when the whole is 0.
fn pct(part: f64, whole: f64) -> f64 {
    if whole > 0.0 {
        100.0 * part / whole
    } else {
        0.0
    }
}

/// Persistent bytes by part. An eval step needs no momentum, so it is left out there.
fn persistent_parts(s: &Schedule) -> Vec<(String, usize)> {
    let bytes =
        |roles: &[Role]| s.tensors.iter().filter(|t| roles.contains(&t.role)).map(|t| t.len() * 4).sum::<usize>();
    let mut parts = vec![("params".to_string(), bytes(&[Role::Param]))];
    if s.mode == Mode::Train {
        parts.push(("momentum".to_string(), bytes(&[Role::Momentum])));
    }
    parts.push(("bn stats".to_string(), bytes(&[Role::RunningMean, Role::RunningVar])));
    parts
}

/// A program's arena and total, labelled with its precision.
pub fn totals(p: &Program) -> PrecisionTotals {
    let persistent: usize = persistent_parts(&p.schedule).iter().map(|(_, b)| b).sum();
    PrecisionTotals {
        precision: p.schedule.options.precision,
        arena_bytes: p.arena_bytes(),
        total_bytes: persistent + p.arena_bytes(),
    }
}

/// The report of a planned program, with an optional baseline program beside it.
pub fn report(p: &Program, baseline: Option<&Program>) -> PlanReport {
    let s = &p.schedule;
    let parts = persistent_parts(s);
    PlanReport {
        model: s.config.name(),
        batch: s.batch,
        keep: s.config.keep,
        mode: s.mode.as_str().to_string(),
        precision: s.options.precision,
        alignment: super::ALIGN,
        steps: s.steps.iter().map(|st| st.name()).collect(),
        buffers: s
            .buffers
            .iter()
            .zip(&p.lifetimes)
            .map(|(b, l)| BufferInfo {
                name: b.name.clone(),
                kind: b.kind,
                dtype: b.dtype,
                bytes: l.bytes,
                first: l.first,
                last: l.last,
                sliced: b.sliced,
            })
            .collect(),
        offsets: p.placement.offsets.clone(),
        arena_bytes: p.arena_bytes(),
        naive_bytes: super::naive_bytes(&p.lifetimes),
        persistent_bytes: parts.iter().map(|(_, b)| b).sum(),
        persistent_parts: parts,
        options: s.options.describe(),
        baseline: baseline.map(|b| Baseline {
            keep: b.schedule.config.keep,
            arena_bytes: b.arena_bytes(),
            naive_bytes: super::naive_bytes(&b.lifetimes),
            persistent_bytes: persistent_parts(&b.schedule).iter().map(|(_, x)| x).sum(),
        }),
        precisions: vec![totals(p)],
        gpu_calls: None,
    }
}

impl PlanReport {
    fn offset(&self, i: usize) -> usize {
        self.offsets.get(i).copied().unwrap_or(0)
    }

    /// Bytes live at each step (index = step), over `n` steps.
    fn live_per_step(&self, n: usize) -> Vec<usize> {
        let lives: Vec<Lifetime> =
            self.buffers.iter().map(|b| Lifetime { bytes: b.bytes, first: b.first, last: b.last }).collect();
        live_bytes(&lives, n)
    }
}

/// Chart characters in cycling order: digits, letters, then other printable symbols ('.', '|'
/// and ' ' are kept for free space and the chart frame).
const CHART_CHARS: &str = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ\
#@%&$*+=~^!?/\\<>()[]{}:;-_,'\"`";

/// One chart character per buffer. Buffer `i` gets the `i`-th character in the cycle unless
/// that character is already used by a buffer live at the same time; then the character whose
/// nearest such user is farthest away in memory, so neighbours on a chart row always differ.
fn chart_chars(r: &PlanReport) -> Vec<char> {
    let set: Vec<char> = CHART_CHARS.chars().collect();
    let n = set.len();
    let mut chosen: Vec<usize> = Vec::with_capacity(r.buffers.len());
    let mut nearest = vec![u64::MAX; n];
    for (i, b) in r.buffers.iter().enumerate() {
        if b.bytes == 0 {
            chosen.push(i % n);
            continue;
        }
        nearest.fill(u64::MAX);
        let (lo, hi) = (r.offset(i), r.offset(i).saturating_add(b.bytes));
        for (j, o) in r.buffers[..i].iter().enumerate() {
            if o.bytes == 0 || o.first > b.last || b.first > o.last {
                continue;
            }
            let (olo, ohi) = (r.offset(j), r.offset(j).saturating_add(o.bytes));
            let gap = olo.saturating_sub(hi).max(lo.saturating_sub(ohi)) as u64;
            let c = chosen[j];
            nearest[c] = nearest[c].min(gap);
        }
        // Farthest nearest user wins; ties go to the earliest in the cycle from i.
        let mut best = i % n;
        for k in 1..n {
            let c = (i + k) % n;
            if nearest[c] > nearest[best] {
                best = c;
            }
        }
        chosen.push(best);
    }
    chosen.into_iter().map(|c| set[c]).collect()
}

/// At most `max` characters of `s`, the last replaced by '~' when cut.
fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('~');
        t
    }
}

/// The text report: summary, buffer table (its `chr` column is the chart's legend), and a
/// chart with one row per schedule step and `width` columns across the arena's offsets.
pub fn text(r: &PlanReport, width: usize) -> String {
    let mut s = String::new();
    // Writing into a String cannot fail.
    let _ = write_text(&mut s, r, width.max(1));
    s
}

fn write_text(s: &mut String, r: &PlanReport, width: usize) -> fmt::Result {
    write_summary(s, r)?;
    // The table's chr column and the chart must use the same characters.
    let chars = chart_chars(r);
    write_buffer_table(s, r, &chars)?;
    write_chart(s, r, width, &chars)
}

/// The summary: model line, arena, naive, persistent and total sizes, baseline saving, options.
fn write_summary(s: &mut String, r: &PlanReport) -> fmt::Result {
    let total = r.persistent_bytes + r.arena_bytes;
    writeln!(
        s,
        "memory plan: {}  batch {}  keep {:.2}  mode {}  alignment {} B",
        r.model, r.batch, r.keep, r.mode, r.alignment
    )?;
    writeln!(
        s,
        "  arena       {:>10.2} MiB  ({} buffers over {} steps)",
        mib(r.arena_bytes),
        r.buffers.len(),
        r.steps.len()
    )?;
    writeln!(
        s,
        "  naive       {:>10.2} MiB  (no reuse; the plan saves {:.1}%)",
        mib(r.naive_bytes),
        pct(r.naive_bytes as f64 - r.arena_bytes as f64, r.naive_bytes as f64)
    )?;
    let parts: Vec<String> = r.persistent_parts.iter().map(|(name, b)| format!("{name} {:.2} MiB", mib(*b))).collect();
    writeln!(
        s,
        "  persistent  {:>10.2} MiB  ({})",
        mib(r.persistent_bytes),
        if parts.is_empty() { "no parts listed".to_string() } else { parts.join(", ") }
    )?;
    writeln!(s, "  total       {:>10.2} MiB  (persistent + arena)", mib(total))?;
    if let Some(b) = &r.baseline {
        let b_total = b.persistent_bytes + b.arena_bytes;
        let save_arena = b.arena_bytes as f64 - r.arena_bytes as f64;
        let save_total = b_total as f64 - total as f64;
        writeln!(
            s,
            "  baseline    keep {:.2}: arena {:.2} MiB, total {:.2} MiB",
            b.keep,
            mib(b.arena_bytes),
            mib(b_total)
        )?;
        writeln!(
            s,
            "  saving      {:>10.2} MiB  ({:.1}% of the baseline total; arena {:.2} MiB, {:.1}%)",
            save_total / MIB,
            pct(save_total, b_total as f64),
            save_arena / MIB,
            pct(save_arena, b.arena_bytes as f64)
        )?;
    }
    if r.precisions.len() > 1 {
        let each: Vec<String> = r
            .precisions
            .iter()
            .map(|t| {
                format!(
                    "{}: arena {:.2} MiB, total {:.2} MiB",
                    t.precision.as_str(),
                    mib(t.arena_bytes),
                    mib(t.total_bytes)
                )
            })
            .collect();
        writeln!(s, "  precision   {}", each.join("; "))?;
    }
    let opts: Vec<String> = r.options.iter().map(|(k, v)| format!("{k}={v}")).collect();
    writeln!(s, "  options     {}", if opts.is_empty() { "none".to_string() } else { opts.join(", ") })?;
    if let Some(g) = r.gpu_calls {
        writeln!(s, "  gpu step    {} kernel launches + {} cuBLAS GEMMs (batch gather included)", g.launches, g.gemms)?;
    }
    Ok(())
}

/// The buffer table: one row per buffer with its kind, element type, size, offset, live steps
/// and chart character.
fn write_buffer_table(s: &mut String, r: &PlanReport, chars: &[char]) -> fmt::Result {
    let id_w = r.buffers.len().saturating_sub(1).to_string().len().max(2);
    let name_w = r.buffers.iter().map(|b| b.name.chars().count()).max().unwrap_or(0).clamp(4, 48);
    writeln!(s)?;
    writeln!(s, "buffers ({}):", r.buffers.len())?;
    writeln!(
        s,
        "{:>id_w$}  {:<name_w$}  {:<15}  {:<4}  {:>10}  {:>10}  {:>11}  {:<6}  chr",
        "id", "name", "kind", "type", "MiB", "offset MiB", "steps", "sliced"
    )?;
    for (i, b) in r.buffers.iter().enumerate() {
        writeln!(
            s,
            "{:>id_w$}  {:<name_w$}  {:<15}  {:<4}  {:>10.2}  {:>10.2}  {:>11}  {:<6}  {}",
            i,
            b.name,
            b.kind.as_str(),
            b.dtype.as_str(),
            mib(b.bytes),
            mib(r.offset(i)),
            format!("{}..{}", b.first, b.last),
            if b.sliced { "yes" } else { "no" },
            chars[i]
        )?;
    }
    Ok(())
}

/// The chart: its heading and ruler, then one row per step of `width` columns and live MiB.
fn write_chart(s: &mut String, r: &PlanReport, width: usize, chars: &[char]) -> fmt::Result {
    writeln!(s)?;
    writeln!(
        s,
        "chart: one row per step; {} columns cover arena offsets 0..{:.2} MiB ({:.3} MiB each); \
         characters as in the chr column, '.' free; live MiB at the right",
        width,
        mib(r.arena_bytes),
        mib(r.arena_bytes) / width as f64
    )?;
    let right = format!("{:.0} MiB", mib(r.arena_bytes));
    let ruler = if width >= right.len() + 3 {
        format!("0{}{}", "-".repeat(width - 1 - right.len()), right)
    } else {
        "-".repeat(width)
    };
    writeln!(s, "{:>5}  {:<24} +{}+ {:>9}", "step", "op", ruler, "live MiB")?;
    let live = r.live_per_step(r.steps.len());
    let mut row = vec!['.'; width];
    let mut cover = vec![0u128; width];
    for (step, op) in r.steps.iter().enumerate() {
        fill_chart_row(&mut row, &mut cover, r, step, chars);
        let bar: String = row.iter().collect();
        writeln!(s, "{:>5}  {:<24} |{}| {:>9.2}", step, truncate(op, 24), bar, mib(live[step]))?;
    }
    Ok(())
}

/// Fills `row` for `step`: column c covers arena bytes [c*A/width, (c+1)*A/width) and shows the
/// character of the live buffer covering most of it, '.' if none; `cover` holds that overlap.
fn fill_chart_row(row: &mut [char], cover: &mut [u128], r: &PlanReport, step: usize, chars: &[char]) {
    let arena = r.arena_bytes as u128;
    let wd = row.len() as u128;
    row.fill('.');
    cover.fill(0);
    if arena == 0 {
        return;
    }
    for (i, b) in r.buffers.iter().enumerate() {
        if b.bytes == 0 || step < b.first || step > b.last {
            continue;
        }
        let lo = (r.offset(i) as u128).min(arena);
        let hi = (r.offset(i) as u128 + b.bytes as u128).min(arena);
        if lo >= hi {
            continue;
        }
        let c0 = (lo * wd / arena) as usize;
        let c1 = (hi * wd).div_ceil(arena).min(wd) as usize;
        for c in c0..c1 {
            let (clo, chi) = (c as u128 * arena / wd, (c as u128 + 1) * arena / wd);
            let got = hi.min(chi).saturating_sub(lo.max(clo));
            if got > cover[c] {
                cover[c] = got;
                row[c] = chars[i];
            }
        }
    }
}

#[derive(Serialize)]
struct JsonBuffer<'a> {
    name: &'a str,
    kind: BufKind,
    dtype: Dtype,
    bytes: usize,
    offset: usize,
    first: usize,
    last: usize,
    sliced: bool,
}

#[derive(Serialize)]
struct JsonBaseline {
    keep: f64,
    arena_bytes: usize,
    naive_bytes: usize,
    persistent_bytes: usize,
}

#[derive(Serialize)]
struct JsonTotals {
    precision: &'static str,
    arena_bytes: usize,
    total_bytes: usize,
}

#[derive(Serialize)]
struct JsonPlan<'a> {
    model: &'a str,
    batch: usize,
    keep: f64,
    mode: &'a str,
    precision: &'static str,
    alignment: usize,
    arena_bytes: usize,
    naive_bytes: usize,
    persistent_bytes: usize,
    steps: &'a [String],
    buffers: Vec<JsonBuffer<'a>>,
    options: serde_json::Map<String, serde_json::Value>,
    baseline: Option<JsonBaseline>,
    precisions: Vec<JsonTotals>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gpu_calls: Option<GpuCalls>,
}

/// The plan as JSON: model, batch, keep, mode, precision, alignment, the byte totals, `steps`
/// (op names), `buffers` (with `dtype`; `first`/`last` index `steps`), `options` (an object),
/// `baseline` (or null), `precisions` (`precision`, `arena_bytes`, `total_bytes` of this plan and
/// of the other precision when given) and, for a GPU plan, `gpu_calls` (`launches`, `gemms`).
pub fn json(r: &PlanReport) -> String {
    // A Value always prints.
    serde_json::to_string_pretty(&json_value(r)).unwrap_or_default()
}

/// The plan as a JSON value, for a caller that adds to it (`plan --fit` adds `fit`).
pub fn json_value(r: &PlanReport) -> serde_json::Value {
    let plan = JsonPlan {
        model: &r.model,
        batch: r.batch,
        keep: r.keep,
        mode: &r.mode,
        precision: r.precision.as_str(),
        alignment: r.alignment,
        arena_bytes: r.arena_bytes,
        naive_bytes: r.naive_bytes,
        persistent_bytes: r.persistent_bytes,
        steps: &r.steps,
        buffers: r
            .buffers
            .iter()
            .enumerate()
            .map(|(i, b)| JsonBuffer {
                name: &b.name,
                kind: b.kind,
                dtype: b.dtype,
                bytes: b.bytes,
                offset: r.offset(i),
                first: b.first,
                last: b.last,
                sliced: b.sliced,
            })
            .collect(),
        options: r.options.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect(),
        baseline: r.baseline.map(|b| JsonBaseline {
            keep: b.keep,
            arena_bytes: b.arena_bytes,
            naive_bytes: b.naive_bytes,
            persistent_bytes: b.persistent_bytes,
        }),
        precisions: r
            .precisions
            .iter()
            .map(|t| JsonTotals {
                precision: t.precision.as_str(),
                arena_bytes: t.arena_bytes,
                total_bytes: t.total_bytes,
            })
            .collect(),
        gpu_calls: r.gpu_calls,
    };
    // Plain structs with string keys always serialise (a NaN keep becomes null).
    serde_json::to_value(&plan).unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }))
}

const KINDS: [(BufKind, &str); 5] = [
    (BufKind::Activation, "#4e79a7"),
    (BufKind::Gradient, "#e15759"),
    (BufKind::WeightGradient, "#f28e2b"),
    (BufKind::Workspace, "#59a14f"),
    (BufKind::WeightCopy, "#b07aa1"),
];

fn kind_colour(k: BufKind) -> &'static str {
    KINDS.iter().find(|(kk, _)| *kk == k).map(|(_, c)| *c).unwrap_or("#888888")
}

/// The plan as an SVG picture: x = schedule step, y = arena offset (0 at the bottom), one
/// `<rect>` per non-empty buffer coloured by kind, sliced buffers hatched, a hover `<title>`
/// per buffer, and the live bytes per step as a dashed line (the lower bound any plan needs).
/// Only buffers are drawn as `<rect>`; frames and swatches are paths.
pub fn svg(r: &PlanReport) -> String {
    svg_described(r, "")
}

/// [`svg`] with `desc` (say, what `plan --fit` found) in the picture's `<desc>` element, unless
/// it is empty.
pub fn svg_described(r: &PlanReport, desc: &str) -> String {
    let mut s = String::new();
    let _ = write_svg(&mut s, r, desc);
    s
}

/// The SVG picture's width and height.
const SVG_W: f64 = 1400.0;
const SVG_H: f64 = 800.0;

/// The SVG's plot area (top-left corner `x0`, `y0`, size `pw` by `ph`) and its scales: `nsteps`
/// steps across, `arena` bytes from bottom to top. The scales reach past the last step and the
/// arena's end when buffers do, so inconsistent input still stays inside the plot.
struct Plot {
    x0: f64,
    y0: f64,
    pw: f64,
    ph: f64,
    nsteps: f64,
    arena: f64,
}

impl Plot {
    /// The plot area with scales that fit every step and buffer of `r`.
    fn new(r: &PlanReport) -> Plot {
        let (x0, y0) = (80.0, 64.0);
        let (pw, ph) = (SVG_W - x0 - 300.0, SVG_H - y0 - 60.0);
        let max_last = r.buffers.iter().map(|b| b.last + 1).max().unwrap_or(0);
        let nsteps = r.steps.len().max(max_last).max(1) as f64;
        let max_end = (0..r.buffers.len()).map(|i| r.offset(i).saturating_add(r.buffers[i].bytes)).max().unwrap_or(0);
        let arena = r.arena_bytes.max(max_end).max(1) as f64;
        Plot { x0, y0, pw, ph, nsteps, arena }
    }

    /// x of the start of `step`.
    fn xs(&self, step: f64) -> f64 {
        self.x0 + step * self.pw / self.nsteps
    }

    /// y of arena offset `bytes` (0 at the bottom).
    fn ys(&self, bytes: f64) -> f64 {
        self.y0 + self.ph - bytes * self.ph / self.arena
    }
}

fn write_svg(s: &mut String, r: &PlanReport, desc: &str) -> fmt::Result {
    let g = Plot::new(r);
    // Drawing order is stacking order: grid under the buffers, the live line and frame over them.
    write_svg_head(s)?;
    if !desc.is_empty() {
        writeln!(s, "<desc>{}</desc>", crate::io::svg::escape(desc))?;
    }
    write_svg_titles(s, r, &g)?;
    write_svg_grid(s, &g)?;
    write_svg_buffers(s, r, &g)?;
    write_svg_live(s, r, &g)?;
    write_svg_frame(s, &g)?;
    write_svg_legend(s, r, &g)?;
    writeln!(s, "</svg>")
}

/// The `<svg>` opening tag, styles, the hatch patterns of sliced buffers and a white background.
fn write_svg_head(s: &mut String) -> fmt::Result {
    let (w, h) = (SVG_W, SVG_H);
    writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {w} {h}\" width=\"{w}\" \
         height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">"
    )?;
    writeln!(
        s,
        "<style>.e{{stroke:#fff;stroke-width:0.5}}.alt{{fill-opacity:0.82}}\
         .buf:hover{{stroke:#000;stroke-width:1.5;stroke-opacity:1}}\
         .title{{font-size:16px;font-weight:bold}}.grid{{stroke:#ddd;stroke-width:0.6}}\
         .live{{fill:none;stroke:#000;stroke-width:1;stroke-dasharray:4 3}}</style>"
    )?;
    writeln!(s, "<defs>")?;
    for (k, c) in KINDS.iter().map(|(k, c)| (k.as_str(), *c)).chain([("legend", "#bbbbbb")]) {
        writeln!(
            s,
            "<pattern id=\"sliced-{k}\" width=\"6\" height=\"6\" patternUnits=\"userSpaceOnUse\" \
             patternTransform=\"rotate(45)\"><path d=\"M0 0H6V6H0Z\" fill=\"{c}\"/>\
             <path d=\"M1.5 0V6\" stroke=\"#000\" stroke-opacity=\"0.5\" stroke-width=\"2.5\"/>\
             </pattern>"
        )?;
    }
    writeln!(s, "</defs>")?;
    writeln!(s, "<path d=\"M0 0H{w}V{h}H0Z\" fill=\"#fff\"/>")
}

/// The title line (model, batch, keep, mode, arena) and the line of totals under it.
fn write_svg_titles(s: &mut String, r: &PlanReport, g: &Plot) -> fmt::Result {
    let x0 = g.x0;
    let total = r.persistent_bytes + r.arena_bytes;
    writeln!(
        s,
        "<text class=\"title\" x=\"{x0}\" y=\"26\">{}, batch {}, keep {:.2}, {}: arena {:.2} MiB</text>",
        crate::io::svg::escape(&r.model),
        r.batch,
        r.keep,
        crate::io::svg::escape(&r.mode),
        mib(r.arena_bytes)
    )?;
    let mut sub = format!(
        "naive {:.2} MiB, persistent {:.2} MiB, total {:.2} MiB, {} buffers, {} steps, alignment {} B",
        mib(r.naive_bytes),
        mib(r.persistent_bytes),
        mib(total),
        r.buffers.len(),
        r.steps.len(),
        r.alignment
    );
    if let Some(b) = &r.baseline {
        let b_total = b.persistent_bytes + b.arena_bytes;
        let save = b_total as f64 - total as f64;
        write!(
            sub,
            "; keep {:.2} total {:.2} MiB, saving {:.2} MiB ({:.1}%)",
            b.keep,
            mib(b_total),
            save / MIB,
            pct(save, b_total as f64)
        )?;
    }
    writeln!(s, "<text x=\"{x0}\" y=\"46\">{}</text>", crate::io::svg::escape(&sub))
}

/// The horizontal grid with its y ticks (MiB), and the x ticks (steps).
fn write_svg_grid(s: &mut String, g: &Plot) -> fmt::Result {
    let (x0, y0, pw, ph) = (g.x0, g.y0, g.pw, g.ph);
    let arena_mib = g.arena / MIB;
    let ystep = crate::io::svg::nice_step(arena_mib, 6.0);
    let ydec = if ystep >= 1.0 { 0 } else { 2 };
    let mut t = 0.0;
    while t <= arena_mib + 1e-9 {
        let y = g.ys(t * MIB);
        writeln!(
            s,
            "<path class=\"grid\" d=\"M{x0} {y:.2}H{:.2}\"/><text x=\"{:.2}\" y=\"{:.2}\" \
             text-anchor=\"end\">{t:.ydec$}</text>",
            x0 + pw,
            x0 - 6.0,
            y + 4.0
        )?;
        t += ystep;
    }
    let xstep = crate::io::svg::nice_step(g.nsteps, 10.0).max(1.0);
    let mut t = 0.0;
    while t <= g.nsteps + 1e-9 {
        let x = g.xs(t);
        writeln!(
            s,
            "<path d=\"M{x:.2} {:.2}v5\" stroke=\"#222\"/><text x=\"{x:.2}\" y=\"{:.2}\" \
             text-anchor=\"middle\">{t:.0}</text>",
            y0 + ph,
            y0 + ph + 18.0
        )?;
        t += xstep;
    }
    Ok(())
}

/// One `<rect>` per non-empty buffer, coloured by kind (hatched if sliced), with a hover title.
fn write_svg_buffers(s: &mut String, r: &PlanReport, g: &Plot) -> fmt::Result {
    for (i, b) in r.buffers.iter().enumerate() {
        if b.bytes == 0 {
            continue;
        }
        let off = r.offset(i) as f64;
        let x = g.xs(b.first as f64);
        let w = (g.xs(b.last as f64 + 1.0) - x).max(0.5);
        let y = g.ys(off + b.bytes as f64);
        let h = (g.ys(off) - y).max(0.5);
        let fill = if b.sliced { format!("url(#sliced-{})", b.kind.as_str()) } else { kind_colour(b.kind).to_string() };
        // Outlines only where they fit; otherwise neighbours are told apart by alternating
        // shade, so thousands of thin buffers do not wash out into the outline colour.
        let class = match (w >= 4.0 && h >= 4.0, i % 2 == 1) {
            (true, _) => "buf e",
            (false, true) => "buf alt",
            (false, false) => "buf",
        };
        writeln!(
            s,
            "<rect class=\"{class}\" x=\"{x:.2}\" y=\"{y:.2}\" width=\"{w:.2}\" height=\"{h:.2}\" \
             fill=\"{fill}\"><title>{} ({}{}): {:.2} MiB at {:.2} MiB, steps {}..{}</title></rect>",
            crate::io::svg::escape(&b.name),
            b.kind.as_str(),
            if b.sliced { ", sliced" } else { "" },
            mib(b.bytes),
            mib(r.offset(i)),
            b.first,
            b.last
        )?;
    }
    Ok(())
}

/// Live bytes per step as a dashed staircase: the lower bound on any arena.
fn write_svg_live(s: &mut String, r: &PlanReport, g: &Plot) -> fmt::Result {
    let live = r.live_per_step(g.nsteps as usize);
    if live.is_empty() {
        return Ok(());
    }
    let mut d = String::new();
    for (step, &l) in live.iter().enumerate() {
        let y = g.ys(l as f64);
        if step == 0 {
            write!(d, "M{:.2} {y:.2}", g.xs(0.0))?;
        } else {
            write!(d, "V{y:.2}")?;
        }
        write!(d, "H{:.2}", g.xs(step as f64 + 1.0))?;
    }
    writeln!(s, "<path class=\"live\" d=\"{d}\"/>")
}

/// The left and bottom axis lines and the axis labels.
fn write_svg_frame(s: &mut String, g: &Plot) -> fmt::Result {
    let (x0, y0, pw, ph) = (g.x0, g.y0, g.pw, g.ph);
    writeln!(s, "<path d=\"M{x0} {y0}V{:.2}H{:.2}\" fill=\"none\" stroke=\"#222\"/>", y0 + ph, x0 + pw)?;
    writeln!(
        s,
        "<text x=\"{:.2}\" y=\"{:.2}\" text-anchor=\"middle\">schedule step</text>",
        x0 + pw / 2.0,
        y0 + ph + 40.0
    )?;
    writeln!(
        s,
        "<text transform=\"translate(24 {:.2}) rotate(-90)\" text-anchor=\"middle\">arena offset (MiB)</text>",
        y0 + ph / 2.0
    )
}

/// Number and bytes of the non-empty buffers of each kind (in [`KINDS`] order), and how many
/// of them are sliced.
fn kind_totals(r: &PlanReport) -> ([(usize, usize); KINDS.len()], usize) {
    let mut per_kind = [(0usize, 0usize); KINDS.len()];
    let mut sliced_count = 0usize;
    for b in r.buffers.iter().filter(|b| b.bytes > 0) {
        let k = KINDS.iter().position(|(kk, _)| *kk == b.kind).unwrap_or(0);
        per_kind[k].0 += 1;
        per_kind[k].1 += b.bytes;
        sliced_count += b.sliced as usize;
    }
    (per_kind, sliced_count)
}

/// The legend right of the plot: a swatch per kind present with its totals, the sliced hatch,
/// the live line.
fn write_svg_legend(s: &mut String, r: &PlanReport, g: &Plot) -> fmt::Result {
    let (per_kind, sliced_count) = kind_totals(r);
    let lx = g.x0 + g.pw + 24.0;
    let mut ly = g.y0 + 10.0;
    writeln!(s, "<text x=\"{lx}\" y=\"{ly}\" font-weight=\"bold\">buffers</text>")?;
    ly += 22.0;
    let swatch = |s: &mut String, y: f64, fill: &str, label: &str| {
        writeln!(
            s,
            "<path d=\"M{lx} {:.2}h14v14h-14Z\" fill=\"{fill}\"/><text x=\"{:.2}\" y=\"{y:.2}\">{}</text>",
            y - 11.0,
            lx + 20.0,
            crate::io::svg::escape(label)
        )
    };
    // Kinds a plan lacks (weight copies outside bf16 plans) are left out.
    for (k, (kind, colour)) in KINDS.iter().enumerate().filter(|(k, _)| per_kind[*k].0 > 0) {
        let label = format!("{}: {} buffers, {:.1} MiB", kind.as_str(), per_kind[k].0, mib(per_kind[k].1));
        swatch(s, ly, colour, &label)?;
        ly += 22.0;
    }
    swatch(s, ly, "url(#sliced-legend)", &format!("sliced, hatched ({sliced_count})"))?;
    ly += 22.0;
    writeln!(
        s,
        "<path class=\"live\" d=\"M{lx} {:.2}h14\"/><text x=\"{:.2}\" y=\"{ly:.2}\">live bytes per step</text>",
        ly - 4.0,
        lx + 20.0
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{check, naive_bytes, plan_greedy, Lifetime, ALIGN};

    const MB: usize = 1 << 20;

    /// A small training-like bf16 plan (f32 weight gradient), planned for real, with its fp32
    /// totals beside it.
    fn sample() -> PlanReport {
        let steps: Vec<String> = [
            "f0 stem.conv",
            "f1 g0.b0.conv1 with a very long operator name",
            "f2 g0.b0.conv2",
            "b3 g0.b0.conv2",
            "b4 g0.b0.conv1",
            "u5 sgd",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mk = |name: &str, kind, bytes, first, last, sliced| BufferInfo {
            name: name.to_string(),
            kind,
            dtype: if kind == BufKind::WeightGradient { Dtype::F32 } else { Dtype::Bf16 },
            bytes,
            first,
            last,
            sliced,
        };
        let buffers = vec![
            mk("x0", BufKind::Activation, 4 * MB, 0, 4, false),
            mk("h1 <sliced> & co", BufKind::Activation, 2 * MB, 1, 3, true),
            mk("col", BufKind::Workspace, 3 * MB, 1, 1, false),
            mk("dh1", BufKind::Gradient, 2 * MB + 1000, 3, 4, true),
            mk("dw conv1", BufKind::WeightGradient, MB / 2, 4, 5, false),
            mk("empty", BufKind::Workspace, 0, 2, 2, false),
        ];
        let lts: Vec<Lifetime> =
            buffers.iter().map(|b| Lifetime { bytes: b.bytes, first: b.first, last: b.last }).collect();
        let p = plan_greedy(&lts, ALIGN);
        check(&lts, &p, ALIGN).unwrap();
        PlanReport {
            model: "WRN-10-2".into(),
            batch: 4,
            keep: 0.5,
            mode: "train".into(),
            precision: Precision::Bf16,
            alignment: ALIGN,
            steps,
            buffers,
            offsets: p.offsets,
            arena_bytes: p.arena_bytes,
            naive_bytes: naive_bytes(&lts),
            persistent_bytes: 3 * MB,
            persistent_parts: vec![
                ("params".into(), MB + MB / 2),
                ("momentum".into(), MB + MB / 2 - 4096),
                ("bn stats".into(), 4096),
            ],
            options: vec![("recompute".into(), "bn-relu".into())],
            baseline: Some(Baseline {
                keep: 1.0,
                arena_bytes: 16 * MB,
                naive_bytes: 20 * MB,
                persistent_bytes: 3 * MB,
            }),
            precisions: vec![
                PrecisionTotals {
                    precision: Precision::Bf16,
                    arena_bytes: p.arena_bytes,
                    total_bytes: p.arena_bytes + 3 * MB,
                },
                PrecisionTotals { precision: Precision::Fp32, arena_bytes: 17 * MB, total_bytes: 20 * MB },
            ],
            gpu_calls: None,
        }
    }

    #[test]
    fn json_round_trips() {
        let r = sample();
        let v: serde_json::Value = serde_json::from_str(&json(&r)).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        for k in [
            "model",
            "batch",
            "keep",
            "mode",
            "precision",
            "alignment",
            "arena_bytes",
            "naive_bytes",
            "persistent_bytes",
            "steps",
            "buffers",
            "options",
            "baseline",
            "precisions",
        ] {
            assert!(keys.contains(&k), "missing {k}");
        }
        assert_eq!(keys.len(), 14);
        assert_eq!(v["precision"], "bf16");
        assert_eq!(v["precisions"][0]["precision"], "bf16");
        assert_eq!(v["precisions"][0]["arena_bytes"], r.arena_bytes as u64);
        assert_eq!(v["precisions"][0]["total_bytes"], (r.arena_bytes + 3 * MB) as u64);
        assert_eq!(v["precisions"][1]["precision"], "fp32");
        assert_eq!(v["precisions"][1]["total_bytes"], 20 * MB as u64);
        assert_eq!(v["model"], "WRN-10-2");
        assert_eq!(v["batch"], 4);
        assert_eq!(v["keep"], 0.5);
        assert_eq!(v["mode"], "train");
        assert_eq!(v["alignment"], 256);
        assert_eq!(v["arena_bytes"], r.arena_bytes as u64);
        assert_eq!(v["naive_bytes"], r.naive_bytes as u64);
        assert_eq!(v["persistent_bytes"], 3 * MB as u64);
        assert_eq!(v["steps"].as_array().unwrap().len(), 6);
        assert_eq!(v["steps"][2], "f2 g0.b0.conv2");
        let bufs = v["buffers"].as_array().unwrap();
        assert_eq!(bufs.len(), r.buffers.len());
        for (i, b) in bufs.iter().enumerate() {
            assert_eq!(b.as_object().unwrap().len(), 8);
            assert_eq!(b["name"], r.buffers[i].name.as_str());
            assert_eq!(b["kind"], r.buffers[i].kind.as_str());
            assert_eq!(b["dtype"], r.buffers[i].dtype.as_str());
            assert_eq!(b["bytes"], r.buffers[i].bytes as u64);
            assert_eq!(b["offset"], r.offsets[i] as u64);
            assert_eq!(b["first"], r.buffers[i].first as u64);
            assert_eq!(b["last"], r.buffers[i].last as u64);
            assert_eq!(b["sliced"], r.buffers[i].sliced);
        }
        assert_eq!(bufs[3]["kind"], "gradient");
        assert_eq!(
            (&bufs[3]["dtype"], &bufs[4]["kind"], &bufs[4]["dtype"]),
            (&"bf16".into(), &"weight_gradient".into(), &"f32".into())
        );
        assert_eq!(v["options"]["recompute"], "bn-relu");
        assert_eq!(v["baseline"]["keep"], 1.0);
        assert_eq!(v["baseline"]["arena_bytes"], 16 * MB as u64);
        let mut r2 = r.clone();
        r2.baseline = None;
        let v2: serde_json::Value = serde_json::from_str(&json(&r2)).unwrap();
        assert!(v2["baseline"].is_null());
    }

    #[test]
    fn text_has_summary_table_and_chart() {
        let r = sample();
        let t = text(&r, 40);
        let total = mib(r.persistent_bytes + r.arena_bytes);
        assert!(t.contains("WRN-10-2") && t.contains("batch 4") && t.contains("keep 0.50"));
        assert!(t.contains("mode train"));
        assert!(t.contains(&format!("{:.2} MiB", mib(r.arena_bytes))), "{t}");
        assert!(t.contains(&format!("{:.2} MiB", mib(r.naive_bytes))));
        assert!(t.contains(&format!("{total:.2} MiB")));
        assert!(t.contains("params 1.50 MiB") && t.contains("bn stats 0.00 MiB"));
        assert!(t.contains("recompute=bn-relu"));
        // Baseline total 19 MiB against ours.
        let save = 19.0 - total;
        assert!(t.contains("total 19.00 MiB"), "{t}");
        assert!(t.contains(&format!("{save:.2} MiB")), "{t}");
        assert!(t.contains(&format!("{:.1}%", 100.0 * save / 19.0)));
        // Both precisions' totals on one line, this plan's first.
        let line = t.lines().find(|l| l.trim_start().starts_with("precision")).expect("a precision line");
        let want = format!(
            "bf16: arena {:.2} MiB, total {total:.2} MiB; fp32: arena 17.00 MiB, total 20.00 MiB",
            mib(r.arena_bytes)
        );
        assert!(line.ends_with(&want), "{line}");
        let mut one = r.clone();
        one.precisions.truncate(1);
        assert!(!text(&one, 40).contains("  precision "), "a lone precision is not repeated");
        // Table rows for buffers 3 and 4: kind, element type, steps, sliced.
        let row = |name: &str| t.lines().find(|l| l.split_whitespace().nth(1) == Some(name)).unwrap().to_string();
        let row3 = row("dh1");
        assert_eq!(row3.split_whitespace().take(4).collect::<Vec<_>>(), ["3", "dh1", "gradient", "bf16"]);
        assert_eq!(
            row("dw").split_whitespace().take(5).collect::<Vec<_>>(),
            ["4", "dw", "conv1", "weight_gradient", "f32"]
        );
        assert!(row3.contains("gradient") && row3.contains("3..4") && row3.contains("yes"));
        assert!(row3.contains(&format!("{:.2}", mib(2 * MB + 1000))));

        // Chart rows: one per step, framed by '|', 40 columns, live MiB at the end.
        let rows: Vec<&str> = t.lines().filter(|l| l.matches('|').count() == 2).collect();
        assert_eq!(rows.len(), r.steps.len());
        let chars = chart_chars(&r);
        for (step, row) in rows.iter().enumerate() {
            assert_eq!(row.split_whitespace().next().unwrap(), step.to_string());
            let bar = row.split('|').nth(1).unwrap();
            assert_eq!(bar.chars().count(), 40);
            let live: usize = r.buffers.iter().filter(|b| b.first <= step && step <= b.last).map(|b| b.bytes).sum();
            let shown: f64 = row.split_whitespace().last().unwrap().parse().unwrap();
            assert!((shown - mib(live)).abs() < 0.006, "step {step}: {row}");
            // Every live non-empty buffer's character appears on its rows, others do not
            // unless a live buffer shares it.
            for (i, b) in r.buffers.iter().enumerate() {
                let is_live = b.bytes > 0 && b.first <= step && step <= b.last;
                if is_live {
                    assert!(bar.contains(chars[i]), "step {step} buffer {i}: {row}");
                }
            }
        }
        // Step 1: x0 (4 MiB) + h1 (2 MiB) + col (3 MiB) = 9 MiB.
        assert!(rows[1].trim_end().ends_with("9.00"), "{}", rows[1]);
        // Long op names are cut to 24 characters.
        assert!(rows[1].contains("f1 g0.b0.conv1 with a v~"));
        // Concurrently live buffers get distinct characters.
        assert_eq!(chars.len(), r.buffers.len());
        assert_ne!(chars[0], chars[1]);
        assert_ne!(chars[1], chars[2]);
        // Free space shows as '.': at step 5 only 0.5 MiB of the arena is live.
        assert!(rows[5].split('|').nth(1).unwrap().contains('.'));
    }

    #[test]
    fn chart_characters_cycle_and_avoid_live_clashes() {
        let mut r = sample();
        // 200 buffers all live together, each in its own slice of the arena.
        r.buffers = (0..200)
            .map(|i| BufferInfo {
                name: format!("b{i}"),
                kind: BufKind::Activation,
                dtype: Dtype::F32,
                bytes: 1024,
                first: 0,
                last: 5,
                sliced: false,
            })
            .collect();
        r.offsets = (0..200).map(|i| i * 1024).collect();
        r.arena_bytes = 200 * 1024;
        let c = chart_chars(&r);
        assert_eq!(&c[..12], &['0', '1', '2', '3', '4', '5', '6', '7', '8', '9', 'a', 'b']);
        assert_eq!(c[36], 'A');
        assert!(c.iter().all(|&ch| ch != '.' && ch != '|' && ch != ' '));
        // Memory neighbours always differ, even once characters must repeat.
        for w in c.windows(2) {
            assert_ne!(w[0], w[1]);
        }
        // A big plan's text stays one row per step.
        let t = text(&r, 100);
        assert_eq!(t.lines().filter(|l| l.matches('|').count() == 2).count(), 6);
    }

    #[test]
    fn svg_draws_every_buffer_and_escapes_names() {
        let r = sample();
        let g = svg(&r);
        assert!(g.starts_with("<svg"));
        assert!(g.trim_end().ends_with("</svg>"));
        let nonempty = r.buffers.iter().filter(|b| b.bytes > 0).count();
        assert_eq!(g.matches("<rect").count(), nonempty);
        assert_eq!(g.matches("<title>").count(), nonempty);
        assert!(g.contains("h1 &lt;sliced&gt; &amp; co"));
        assert!(!g.contains("<sliced>"));
        // Sliced buffers are hatched, and the legend says so.
        assert_eq!(g.matches("fill=\"url(#sliced-activation)\"").count(), 1);
        assert_eq!(g.matches("fill=\"url(#sliced-gradient)\"").count(), 1);
        assert!(g.contains("sliced, hatched (2)"));
        for k in ["activation", "gradient", "weight_gradient", "workspace"] {
            assert!(g.contains(&format!(">{k}: ")), "legend lacks {k}");
        }
        // A kind the plan lacks is left out of the legend; once present it is drawn in.
        assert!(!g.contains(">weight_copy: "));
        let mut with_copy = r.clone();
        with_copy.buffers[0].kind = BufKind::WeightCopy;
        let g3 = svg(&with_copy);
        assert!(g3.contains(">weight_copy: 1 buffers, 4.0 MiB") && g3.contains("fill=\"#b07aa1\""), "{g3}");
        assert!(g.contains("schedule step") && g.contains("arena offset (MiB)"));
        assert!(g.contains(&format!("arena {:.2} MiB", mib(r.arena_bytes))));
        // Rects stay inside the plot: the buffer at offset 0 reaches the bottom axis.
        let mut model = r.clone();
        model.model = "W<R>N & co".into();
        let g2 = svg(&model);
        assert!(g2.contains("W&lt;R&gt;N &amp; co") && !g2.contains("W<R>N"));
    }

    #[test]
    fn large_report_is_quick() {
        let mut rng = crate::rng::Rng::new(3, 77);
        let steps = 2000;
        let lts: Vec<Lifetime> = (0..3000)
            .map(|_| {
                let first = rng.below(steps);
                let len = rng.below(40).min(steps - 1 - first);
                Lifetime { bytes: 256 * (1 + rng.below(8192)), first, last: first + len }
            })
            .collect();
        let p = plan_greedy(&lts, ALIGN);
        let mut r = sample();
        r.steps = (0..steps).map(|i| format!("op{i}")).collect();
        r.buffers = lts
            .iter()
            .enumerate()
            .map(|(i, l)| BufferInfo {
                name: format!("buf{i}"),
                kind: KINDS[i % KINDS.len()].0,
                dtype: if i % 2 == 0 { Dtype::F32 } else { Dtype::Bf16 },
                bytes: l.bytes,
                first: l.first,
                last: l.last,
                sliced: i % 3 == 0,
            })
            .collect();
        r.offsets = p.offsets;
        r.arena_bytes = p.arena_bytes;
        let t0 = std::time::Instant::now();
        let t = text(&r, 120);
        let g = svg(&r);
        let j = json(&r);
        assert!(t0.elapsed().as_secs_f64() < 10.0, "{:?}", t0.elapsed());
        assert_eq!(t.lines().filter(|l| l.matches('|').count() == 2).count(), steps);
        assert_eq!(g.matches("<rect").count(), 3000);
        assert!(serde_json::from_str::<serde_json::Value>(&j).is_ok());
    }
}
