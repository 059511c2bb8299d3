//! Printouts of a memory plan: a text report (summary, buffer table, one chart row per step),
//! JSON for tools, and an SVG picture (step by offset, one rectangle per buffer). Sizes are
//! bytes of each buffer's element type; the summary puts the plan's totals in both precisions
//! side by side when the caller gives the other one.
//!
//! They all read one [`PlanReport`], a plain record filled by whoever built the plan (the
//! `plan` command), so the printouts depend on nothing but the planner's outputs. Nothing here
//! panics on inconsistent input (missing offsets, lives past the last step): such data is drawn
//! as well as it can be, because a printout is how such mistakes get found.
//!
//! One file a format: `text.rs`, `json.rs`, `svg.rs`; this file holds the record and how it is
//! filled from a program.

mod json;
mod svg;
mod text;

use serde::Serialize;

use super::Program;
use crate::ir::{live_bytes, BufKind, Dtype, Lifetime, Precision, Role};
use crate::schedule::{Mode, Schedule};

pub use json::{json, json_value};
pub use svg::{svg, svg_described};
pub use text::text;

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
        precision: p.schedule.lowering.precision,
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
        precision: s.lowering.precision,
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
        options: s.describe(),
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

#[cfg(test)]
mod tests;
