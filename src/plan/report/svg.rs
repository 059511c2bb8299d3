//! The plan as an SVG picture: step by offset, one rectangle per buffer.

use std::fmt::{self, Write};

use super::{pct, PlanReport, MIB};
use crate::io::svg;
use crate::ir::{mib, BufKind};

pub(super) const KINDS: [(BufKind, &str); 5] = [
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

/// [`svg()`] with `desc` (say, what `plan --fit` found) in the picture's `<desc>` element, unless
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
        writeln!(s, "{}", svg::desc(desc))?;
    }
    write_svg_titles(s, r, &g)?;
    write_svg_grid(s, &g)?;
    write_svg_buffers(s, r, &g)?;
    write_svg_live(s, r, &g)?;
    write_svg_frame(s, &g)?;
    write_svg_legend(s, r, &g)?;
    writeln!(s, "{}", svg::CLOSE)
}

/// The `<svg>` opening tag, styles, the hatch patterns of sliced buffers and a white background.
fn write_svg_head(s: &mut String) -> fmt::Result {
    let (w, h) = (SVG_W, SVG_H);
    writeln!(s, "{}", svg::open(&format!("{} {}", svg::view_box(w, h), svg::size(w, h))))?;
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
        svg::escape(&r.model),
        r.batch,
        r.keep,
        svg::escape(&r.mode),
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
    writeln!(s, "<text x=\"{x0}\" y=\"46\">{}</text>", svg::escape(&sub))
}

/// The horizontal grid with its y ticks (MiB), and the x ticks (steps).
fn write_svg_grid(s: &mut String, g: &Plot) -> fmt::Result {
    let (x0, y0, pw, ph) = (g.x0, g.y0, g.pw, g.ph);
    let arena_mib = g.arena / MIB;
    let ystep = svg::nice_step(arena_mib, 6.0);
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
    let xstep = svg::nice_step(g.nsteps, 10.0).max(1.0);
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
            svg::escape(&b.name),
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
            svg::escape(label)
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
