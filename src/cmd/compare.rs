//! `sliceout compare RUN_DIR...`: one row per run folder (model, keep, precision, device, epochs,
//! accuracies, training time, speed, the plan's memory), and with `--out FILE.svg` test accuracy
//! against epoch and against training seconds, one line per run.
//!
//! The epochs come from `metrics.jsonl` (a run still training is read as far as it has gone; a
//! torn last line is skipped), the run's settings from `last.ckpt`'s metadata; a key a run
//! predates shows "-". Times are training time as the metrics count it (the sum of the epochs'
//! `seconds`), not testing or start-up. A folder that is no run, or holds no epoch yet, gets one
//! line on stderr naming it; the others still print, and the command then fails, so a script
//! notices.

use super::flags::{CompareFlags, TableFormat, TrainFlags};
use super::train::memory_options;
use crate::error::{Error, Result};
use crate::fit;
use crate::io::checkpoint;
use crate::io::metrics::{self, EpochMetrics};
use crate::io::svg;
use crate::ir::{mib, ModelConfig, Target};
use crate::train::state::RunMeta;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// What a run folder says about its run.
pub struct RunRow {
    pub dir: PathBuf,
    pub config: ModelConfig,
    pub dataset: Option<String>,
    pub seed: Option<String>,
    pub precision: Option<String>,
    pub device: Option<String>,
    pub planned: Option<usize>,
    pub plan_mib: Option<f64>,
    pub history: Vec<EpochMetrics>,
}

impl RunRow {
    /// The first epoch with the highest test accuracy.
    fn best(&self) -> &EpochMetrics {
        let mut best = &self.history[0];
        for m in &self.history {
            if m.test_acc > best.test_acc || best.test_acc.is_nan() {
                best = m;
            }
        }
        best
    }

    /// Training seconds of the epochs up to and including `epoch`.
    fn seconds_to(&self, epoch: usize) -> f64 {
        self.history.iter().filter(|m| m.epoch <= epoch).map(|m| m.seconds).sum()
    }

    fn last(&self) -> &EpochMetrics {
        self.history.last().expect("a row has an epoch")
    }

    fn images_per_s(&self) -> f64 {
        self.history.iter().map(|m| m.images_per_s).sum::<f64>() / self.history.len() as f64
    }

    /// The run's line label in the picture.
    fn label(&self) -> String {
        format!("keep {:.2} seed {}", self.config.keep, self.seed.as_deref().unwrap_or("-"))
    }
}

/// Reads the run in `dir`; `Err` says in one line why it is none.
pub fn read_run(dir: &Path) -> std::result::Result<RunRow, String> {
    let name = dir.display();
    if std::fs::symlink_metadata(dir).is_err() {
        return Err(format!("{name}: no such folder"));
    }
    if !dir.is_dir() {
        return Err(format!("{name}: not a folder"));
    }
    let ck_path = dir.join("last.ckpt");
    let metrics_path = dir.join("metrics.jsonl");
    if !ck_path.exists() && !metrics_path.exists() {
        return Err(format!("{name}: not a run folder (no last.ckpt, no metrics.jsonl)"));
    }
    let history = metrics::read_for_resume(&metrics_path).map_err(|e| e.to_string())?;
    if history.is_empty() {
        return Err(format!("{name}: holds no finished epoch yet"));
    }
    if !ck_path.exists() {
        return Err(format!("{name}: has metrics.jsonl but no last.ckpt"));
    }
    // Only its record is wanted: the weights, most of the file, are never read.
    let ck = checkpoint::load_meta(&ck_path).map_err(|e| e.to_string())?;
    let meta = RunMeta::read(&ck_path, &ck).map_err(|e| e.to_string())?;
    let r = &meta.recorded;
    let device = ck.meta("device").map(str::to_string);
    // The run's memory options and lowering as a resume with no flags would take them.
    let (options, mut lowering) = memory_options(&TrainFlags::default_flags(), r).map_err(|e| e.to_string())?;
    lowering.target = if device.as_deref() == Some("cuda") { Target::Cuda } else { Target::Cpu };
    let plan_mib = meta.batch.and_then(|batch| {
        let bytes = fit::step_bytes(&ck.config, batch, options, lowering);
        (bytes != usize::MAX).then(|| mib(bytes))
    });
    Ok(RunRow {
        dir: dir.to_path_buf(),
        config: ck.config,
        dataset: ck.meta("dataset").map(str::to_string),
        seed: r.text("seed").map(str::to_string),
        precision: r.text("precision").map(str::to_string),
        device,
        planned: meta.epochs,
        plan_mib,
        history,
    })
}

pub fn command(f: &CompareFlags) -> Result<()> {
    if let Some(out) = &f.out {
        if out.extension().is_none_or(|e| e != "svg") {
            return Err(Error::flag("--out", out.display(), "an .svg file name"));
        }
        let reads: Vec<PathBuf> = f.runs.iter().flat_map(|d| [d.join("metrics.jsonl"), d.join("last.ckpt")]).collect();
        let reads: Vec<&Path> = reads.iter().map(PathBuf::as_path).collect();
        super::check_output("--out", out, &reads)?;
    }
    let mut rows = Vec::new();
    let mut bad = 0;
    for dir in &f.runs {
        match read_run(dir) {
            Ok(row) => rows.push(row),
            Err(why) => {
                errln!("{why}");
                bad += 1;
            }
        }
    }
    if !f.force {
        same_kind(&rows)?;
    }
    match f.format {
        TableFormat::Text => out!("{}", table(&rows)),
        TableFormat::Json => outln!("{}", json(&rows)),
    }
    if let Some(out) = &f.out {
        crate::io::write_atomic(out, picture(&rows).as_bytes())?;
    }
    if bad > 0 {
        return Err(Error::Msg(format!("{bad} of {} folders hold no run with a finished epoch", f.runs.len())));
    }
    Ok(())
}

/// Refuses runs of different models or datasets, naming two that differ.
fn same_kind(rows: &[RunRow]) -> Result<()> {
    let Some(first) = rows.first() else { return Ok(()) };
    let model = |r: &RunRow| format!("{} ({} classes)", r.config.name(), r.config.classes);
    for r in &rows[1..] {
        let (a, b, what) = if model(r) != model(first) {
            (model(first), model(r), "models")
        } else if first.dataset.is_some() && r.dataset.is_some() && r.dataset != first.dataset {
            (first.dataset.clone().unwrap_or_default(), r.dataset.clone().unwrap_or_default(), "datasets")
        } else {
            continue;
        };
        return Err(Error::Msg(format!(
            "the runs are of different {what}: {} is {a}, {} is {b}; pass --force to compare them anyway",
            first.dir.display(),
            r.dir.display()
        )));
    }
    Ok(())
}

fn dash(v: Option<String>) -> String {
    v.unwrap_or_else(|| "-".to_string())
}

fn pct(v: f64) -> String {
    format!("{:.2}", 100.0 * v)
}

/// The text table: a header and one line per run.
pub fn table(rows: &[RunRow]) -> String {
    let header = [
        "run",
        "model",
        "keep",
        "precision",
        "device",
        "epochs",
        "best%",
        "final%",
        "recal%",
        "s to best",
        "s total",
        "img/s",
        "plan MiB",
    ];
    let mut cells: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for r in rows {
        let (best, last) = (r.best(), r.last());
        cells.push(vec![
            r.dir.display().to_string(),
            r.config.name(),
            format!("{:.2}", r.config.keep),
            dash(r.precision.clone()),
            dash(r.device.clone()),
            format!("{}/{}", r.history.len(), dash(r.planned.map(|p| p.to_string()))),
            pct(best.test_acc),
            pct(last.test_acc),
            dash(last.test_acc_recal.map(pct)),
            format!("{:.1}", r.seconds_to(best.epoch)),
            format!("{:.1}", r.seconds_to(last.epoch)),
            format!("{:.0}", r.images_per_s()),
            dash(r.plan_mib.map(|m| format!("{m:.1}"))),
        ]);
    }
    let widths: Vec<usize> =
        (0..header.len()).map(|c| cells.iter().map(|row| row[c].chars().count()).max().unwrap_or(0)).collect();
    let mut s = String::new();
    for row in &cells {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(c, (v, &w))| if c == 0 { format!("{v:<w$}") } else { format!("{v:>w$}") })
            .collect();
        let _ = writeln!(s, "{}", line.join("  ").trim_end());
    }
    s
}

/// The rows as one JSON array: accuracies as fractions, absent values as `null`.
pub fn json(rows: &[RunRow]) -> String {
    let each: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            let (best, last) = (r.best(), r.last());
            serde_json::json!({
                "run": r.dir.display().to_string(),
                "model": r.config.name(),
                "dataset": r.dataset,
                "keep": r.config.keep,
                "seed": r.seed,
                "precision": r.precision,
                "device": r.device,
                "epochs_done": r.history.len(),
                "epochs_planned": r.planned,
                "best_test_acc": best.test_acc,
                "best_epoch": best.epoch,
                "final_test_acc": last.test_acc,
                "final_test_acc_recal": last.test_acc_recal,
                "seconds_to_best": r.seconds_to(best.epoch),
                "seconds_total": r.seconds_to(last.epoch),
                "images_per_s": r.images_per_s(),
                "plan_mib": r.plan_mib,
            })
        })
        .collect();
    serde_json::Value::Array(each).to_string()
}

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 440.0;
const COLORS: [&str; 8] = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];

/// Two panels, test accuracy (%) against epoch and against training seconds, one line per run
/// (`<polyline class="run">`), a legend naming each by its keep and seed.
pub fn picture(rows: &[RunRow]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{}", svg::open(&format!("{} {}", svg::size(WIDTH, HEIGHT), svg::view_box(WIDTH, HEIGHT))));
    let _ = writeln!(s, "{}", svg::background(WIDTH, HEIGHT));
    let _ = writeln!(s, r#"<text x="16" y="26" font-size="18" font-weight="bold">test accuracy (%)</text>"#);
    for (i, r) in rows.iter().enumerate() {
        let (x, y) = (16.0 + 235.0 * (i % 4) as f64, HEIGHT - 44.0 + 20.0 * (i / 4) as f64);
        let color = COLORS[i % COLORS.len()];
        let _ = writeln!(
            s,
            r#"<line x1="{x}" y1="{}" x2="{}" y2="{}" stroke="{color}" stroke-width="3"/><text x="{}" y="{y}" font-size="15">{}</text>"#,
            y - 5.0,
            x + 24.0,
            y - 5.0,
            x + 30.0,
            svg::escape(&r.label())
        );
    }
    let epoch = |r: &RunRow| r.history.iter().map(|m| m.epoch as f64).collect::<Vec<_>>();
    let seconds = |r: &RunRow| {
        let mut t = 0.0;
        r.history
            .iter()
            .map(|m| {
                t += m.seconds;
                t
            })
            .collect::<Vec<_>>()
    };
    panel(&mut s, rows, 0.0, "epoch", &epoch);
    panel(&mut s, rows, WIDTH / 2.0, "training seconds", &seconds);
    s.push_str(svg::CLOSE);
    s
}

/// One panel at `x0`: frame, ticks, and each run's test accuracy against `xs`.
fn panel(s: &mut String, rows: &[RunRow], x0: f64, x_name: &str, xs: &dyn Fn(&RunRow) -> Vec<f64>) {
    let (left, right, top, bottom) = (x0 + 64.0, x0 + WIDTH / 2.0 - 20.0, 48.0, HEIGHT - 110.0);
    let finite = |v: &f64| v.is_finite();
    let all_x: Vec<f64> = rows.iter().flat_map(xs).filter(finite).collect();
    let all_y: Vec<f64> =
        rows.iter().flat_map(|r| r.history.iter().map(|m| 100.0 * m.test_acc)).filter(finite).collect();
    // From 0, so that runs read against the same floor.
    let range = |v: &[f64]| {
        let lo = v.iter().copied().fold(0.0, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if hi > lo {
            (lo, hi)
        } else {
            (lo, lo + 1.0)
        }
    };
    let (xlo, xhi) = range(&all_x);
    let (ylo, yhi) = range(&all_y);
    let (xstep, ystep) = (svg::nice_step(xhi - xlo, 5.0), svg::nice_step(yhi - ylo, 5.0));
    let xhi = (xhi / xstep).ceil() * xstep;
    let yhi = ((yhi / ystep).ceil() * ystep).min(100.0).max(yhi);
    let sx = |v: f64| left + (v - xlo) / (xhi - xlo) * (right - left);
    let sy = |v: f64| bottom - (v - ylo) / (yhi - ylo) * (bottom - top);
    let _ = writeln!(s, r#"<g class="panel">"#);
    let mut v = ylo;
    while v <= yhi + 1e-9 {
        let y = sy(v);
        let _ = writeln!(
            s,
            r##"<line x1="{left:.1}" y1="{y:.1}" x2="{right:.1}" y2="{y:.1}" stroke="#e4e4e4"/><text x="{:.1}" y="{:.1}" text-anchor="end" font-size="14">{}</text>"##,
            left - 6.0,
            y + 5.0,
            round(v)
        );
        v += ystep;
    }
    let mut v = xlo;
    while v <= xhi + 1e-9 {
        let x = sx(v);
        let _ = writeln!(
            s,
            r##"<text x="{x:.1}" y="{:.1}" text-anchor="middle" font-size="14">{}</text>"##,
            bottom + 20.0,
            round(v)
        );
        v += xstep;
    }
    let _ = writeln!(
        s,
        r##"<rect x="{left:.1}" y="{top:.1}" width="{:.1}" height="{:.1}" fill="none" stroke="#333"/>"##,
        right - left,
        bottom - top
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="15">{x_name}</text>"#,
        (left + right) / 2.0,
        bottom + 42.0
    );
    for (i, r) in rows.iter().enumerate() {
        let pts: Vec<String> = xs(r)
            .iter()
            .zip(&r.history)
            .filter(|(x, m)| x.is_finite() && m.test_acc.is_finite())
            .map(|(&x, m)| svg::point(sx(x), sy(100.0 * m.test_acc)))
            .collect();
        let color = COLORS[i % COLORS.len()];
        let _ = writeln!(
            s,
            r#"<polyline class="run" points="{}" fill="none" stroke="{color}" stroke-width="2.5"/>"#,
            pts.join(" ")
        );
    }
    s.push_str("</g>\n");
}

/// A tick label: whole numbers without decimals.
fn round(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{}", v.round())
    } else {
        format!("{v:.1}")
    }
}
