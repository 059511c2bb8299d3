//! The plan as JSON, for tools.

use serde::Serialize;

use super::{GpuCalls, PlanReport};
use crate::ir::{BufKind, Dtype};

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
