//! The text report: summary, buffer table and a chart of the arena, one row per step.

use std::fmt::{self, Write};

use super::{pct, PlanReport, MIB};
use crate::ir::mib;

/// Chart characters in cycling order: digits, letters, then other printable symbols ('.', '|'
/// and ' ' are kept for free space and the chart frame).
const CHART_CHARS: &str = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ\
#@%&$*+=~^!?/\\<>()[]{}:;-_,'\"`";

/// One chart character per buffer. Buffer `i` gets the `i`-th character in the cycle unless
/// that character is already used by a buffer live at the same time; then the character whose
/// nearest such user is farthest away in memory, so neighbours on a chart row always differ.
pub(super) fn chart_chars(r: &PlanReport) -> Vec<char> {
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
