//! Per-epoch metrics: one JSON object per line in a `.jsonl` file (appended and synced after each
//! epoch, so a crash loses at most the epoch in progress and the file is readable by any tool),
//! and the learning-curves picture drawn from them as a self-contained SVG (no plotting
//! dependency; two panels, loss and accuracy, train and test).
//!
//! Accuracies are fractions in [0, 1] in the record and percentages in the picture. A non-finite
//! value (a diverged epoch) is written as JSON `null`, read back as NaN, and left out of the
//! picture (a gap in the line), so neither the file nor the SVG ever holds "NaN".

use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize};

use super::svg;
use crate::error::{Error, Result};

/// What one epoch did. Exactly these keys, one object per line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EpochMetrics {
    pub epoch: usize,
    #[serde(deserialize_with = "nan_if_null")]
    pub train_loss: f64,
    /// Fraction in [0, 1].
    #[serde(deserialize_with = "nan_if_null")]
    pub train_acc: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub test_loss: f64,
    /// Fraction in [0, 1].
    #[serde(deserialize_with = "nan_if_null")]
    pub test_acc: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub images_per_s: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub seconds: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub keep: f64,
    /// Test loss and accuracy with BN's running statistics recalibrated for the full network
    /// (`--bn-recal`); absent without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_loss_recal: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_acc_recal: Option<f64>,
    /// The settings a resume changed in this epoch (`train --resume ... --change`); absent when
    /// none did.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed: Vec<Change>,
}

/// A setting a resumed run changed: its checkpoint metadata key, the run's value and the new
/// one, as the checkpoint writes them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Change {
    pub setting: String,
    pub from: String,
    pub to: String,
}

/// serde_json writes non-finite floats as `null`; read them back as NaN rather than failing.
fn nan_if_null<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// Appends `m` as one line to `path` (created if missing), then flushes and syncs it. Only a
/// regular file with one name is appended to: a link or FIFO put in its place is refused in
/// one line, never written through nor waited on ([`super::atomic::open_regular`]).
pub fn append_jsonl(path: &Path, m: &EpochMetrics) -> Result<()> {
    let mut line = serde_json::to_string(m)
        .map_err(|e| Error::io(path, std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
    line.push('\n');
    let mut file = super::atomic::open_regular(path, OpenOptions::new().create(true).append(true), true)?;
    // One write of the whole line, so the file never holds half of it unless the OS crashes.
    file.write_all(line.as_bytes())
        .and_then(|_| file.flush())
        .and_then(|_| file.sync_all())
        .map_err(|e| Error::io(path, e))
}

/// Every record of `path`, in file order; blank lines are skipped. A bad line is an error
/// naming the file and the (1-based) line number.
pub fn read_jsonl(path: &Path) -> Result<Vec<EpochMetrics>> {
    parse_lines(path, false)
}

/// The lines a resumed run keeps: like [`read_jsonl`], but a missing file is no line at all and
/// a torn last line (a crash while appending it, so after the last checkpoint) is dropped. The
/// file is a run's own: a link or FIFO there is refused, not followed nor waited on.
pub fn read_for_resume(path: &Path) -> Result<Vec<EpochMetrics>> {
    if fs::symlink_metadata(path).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound) {
        return Ok(vec![]);
    }
    let mut text = String::new();
    let mut file = super::atomic::open_regular(path, OpenOptions::new().read(true), false)?;
    std::io::Read::read_to_string(&mut file, &mut text).map_err(|e| Error::io(path, e))?;
    parse_text(path, &text, true)
}

fn parse_lines(path: &Path, allow_torn_last: bool) -> Result<Vec<EpochMetrics>> {
    if let Err(super::NotAFile::Other(msg)) = super::regular_file_len(path, "metrics file") {
        return Err(Error::data(path, msg));
    }
    let text = fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse_text(path, &text, allow_torn_last)
}

/// The records of `text`, read from `path`.
fn parse_text(path: &Path, text: &str, allow_torn_last: bool) -> Result<Vec<EpochMetrics>> {
    let lines: Vec<(usize, &str)> = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()).collect();
    let mut out = Vec::new();
    for (k, &(i, line)) in lines.iter().enumerate() {
        match serde_json::from_str(line) {
            Ok(m) => out.push(m),
            Err(_) if allow_torn_last && k + 1 == lines.len() => break,
            Err(e) => return Err(Error::data(path, format!("line {}: {e}", i + 1))),
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// The learning-curves picture

const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 400.0;
const TRAIN_COLOR: &str = "#1f77b4";
const TEST_COLOR: &str = "#d62728";
/// Values beyond this (a diverging loss) would squash every other point flat; they are skipped
/// like non-finite ones.
const PLOTTABLE: f64 = 1e12;

/// A self-contained 900x400 SVG: loss per epoch (left) and accuracy per epoch in % (right),
/// train and test lines, ticks at round numbers, a legend and `title` (XML-escaped). With one
/// epoch, or points isolated by skipped values, markers show the points.
pub fn curves_svg(history: &[EpochMetrics], title: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{}", svg::open(&format!("{} {}", svg::size(WIDTH, HEIGHT), svg::view_box(WIDTH, HEIGHT))));
    let _ = writeln!(s, "{}", svg::background(WIDTH, HEIGHT));
    let _ = writeln!(s, r#"<text x="16" y="26" font-size="16" font-weight="bold">{}</text>"#, svg::escape(title));
    for (i, (name, color)) in [("train", TRAIN_COLOR), ("test", TEST_COLOR)].iter().enumerate() {
        let x = 760.0 + 70.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{x}" y1="21" x2="{}" y2="21" stroke="{color}" stroke-width="2"/><text x="{}" y="25">{name}</text>"#,
            x + 22.0,
            x + 27.0
        );
    }

    let epochs: Vec<f64> = history.iter().map(|m| m.epoch as f64).collect();
    let series = |f: fn(&EpochMetrics) -> f64| -> Vec<f64> { history.iter().map(f).collect() };
    panel(
        &mut s,
        Panel { id: "loss-panel", x0: 0.0, heading: "loss", percent: false },
        &epochs,
        &series(|m| m.train_loss),
        &series(|m| m.test_loss),
    );
    panel(
        &mut s,
        Panel { id: "accuracy-panel", x0: WIDTH / 2.0, heading: "accuracy (%)", percent: true },
        &epochs,
        &series(|m| 100.0 * m.train_acc),
        &series(|m| 100.0 * m.test_acc),
    );
    s.push_str(svg::CLOSE);
    s
}

/// What the `<desc>` naming the run that drew a picture says before the run id.
const RUN_DESC: &str = "sliceout run ";

/// `picture` (drawn by [`curves_svg`]) with a `<desc>` element naming the run that drew it, so
/// that a later run can tell its own picture from another's.
pub fn with_run(picture: &str, run_id: &str) -> String {
    let at = picture.find('\n').map_or(picture.len(), |i| i + 1);
    format!("{}{}\n{}", &picture[..at], svg::desc(&format!("{RUN_DESC}{run_id}")), &picture[at..])
}

/// The run named in a picture's `<desc>` ([`with_run`]), if any.
pub fn drawn_by(picture: &str) -> Option<&str> {
    let start = format!("<desc>{RUN_DESC}");
    let rest = &picture[picture.find(&start)? + start.len()..];
    rest.find("</desc>").map(|end| &rest[..end])
}

struct Panel {
    id: &'static str,
    /// Left edge of the panel in the picture.
    x0: f64,
    heading: &'static str,
    /// Accuracy: the axis stays within [0, 100] when the data does.
    percent: bool,
}

/// A value the picture can show: finite and not so large it would squash the others flat.
fn plottable(v: &f64) -> bool {
    v.is_finite() && v.abs() < PLOTTABLE
}

/// The plot area of a panel in picture coordinates, and its axes.
struct PlotArea {
    left: f64,
    right: f64,
    top: f64,
    bottom: f64,
    x: Axis,
    y: Axis,
}

impl PlotArea {
    /// Picture x of epoch `v`.
    fn sx(&self, v: f64) -> f64 {
        self.left + (v - self.x.lo) / (self.x.hi - self.x.lo) * (self.right - self.left)
    }

    /// Picture y of value `v`.
    fn sy(&self, v: f64) -> f64 {
        self.bottom - (v - self.y.lo) / (self.y.hi - self.y.lo) * (self.bottom - self.top)
    }
}

/// One panel: frame, grid, ticks, labels, then a path and markers per series.
fn panel(s: &mut String, p: Panel, epochs: &[f64], train: &[f64], test: &[f64]) {
    let values: Vec<f64> = train.iter().chain(test).copied().filter(plottable).collect();
    let area = PlotArea {
        left: p.x0 + 62.0,
        right: p.x0 + WIDTH / 2.0 - 18.0,
        top: 58.0,
        bottom: 340.0,
        x: epoch_axis(epochs),
        y: value_axis(&values, p.percent),
    };
    let _ = writeln!(s, r#"<g id="{}">"#, p.id);
    panel_frame(s, &p, &area, values.is_empty());
    // Few points: mark each one; many: mark only those a line does not reach.
    let mark_all = epochs.len() <= 40;
    for (values, color) in [(train, TRAIN_COLOR), (test, TEST_COLOR)] {
        draw_series(s, &area, epochs, values, color, mark_all);
    }
    s.push_str("</g>\n");
}

/// The x axis: whole epochs; a single epoch gets a window around it.
fn epoch_axis(epochs: &[f64]) -> Axis {
    let (mut xlo, mut xhi) = epochs.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &e| (a.min(e), b.max(e)));
    if epochs.is_empty() {
        (xlo, xhi) = (0.0, 1.0);
    } else if xlo == xhi {
        xlo = (xlo - 1.0).max(0.0);
        xhi = xlo + 2.0;
    }
    Axis::new(xlo, xhi, 6, true)
}

/// The y axis over the plottable `values`: losses from 0 (or below if negative), percentages
/// kept within [0, 100] when the data is.
fn value_axis(values: &[f64], percent: bool) -> Axis {
    let (mut ylo, mut yhi) = values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    if values.is_empty() {
        (ylo, yhi) = if percent { (0.0, 100.0) } else { (0.0, 1.0) };
    }
    if !percent {
        ylo = ylo.min(0.0);
    }
    if ylo == yhi {
        let pad = if ylo == 0.0 { 1.0 } else { 0.1 * ylo.abs() };
        (ylo, yhi) = (ylo - pad, yhi + pad);
        if !percent && ylo < 0.0 && yhi > 0.0 {
            ylo = 0.0;
        }
    }
    let mut yaxis = Axis::new(ylo, yhi, 5, false);
    if percent {
        yaxis.clamp(0.0, 100.0, ylo, yhi);
    }
    yaxis
}

/// A panel's heading, grid lines with y ticks, x ticks, frame and axis labels, and "no data"
/// when nothing is plottable.
fn panel_frame(s: &mut String, p: &Panel, a: &PlotArea, no_data: bool) {
    let (left, right, top, bottom) = (a.left, a.right, a.top, a.bottom);
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{}" text-anchor="middle" font-weight="bold">{}</text>"#,
        (left + right) / 2.0,
        top - 8.0,
        p.heading
    );
    for &v in &a.y.ticks {
        let y = a.sy(v);
        let _ = writeln!(
            s,
            r##"<line x1="{left:.1}" y1="{y:.1}" x2="{right:.1}" y2="{y:.1}" stroke="#e4e4e4"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            left - 6.0,
            y + 4.0,
            a.y.label(v)
        );
    }
    for &v in &a.x.ticks {
        let x = a.sx(v);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{bottom:.1}" x2="{x:.1}" y2="{:.1}" stroke="#333"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            bottom + 5.0,
            bottom + 19.0,
            a.x.label(v)
        );
    }
    let _ = writeln!(
        s,
        r##"<rect x="{left:.1}" y="{top:.1}" width="{:.1}" height="{:.1}" fill="none" stroke="#333"/>"##,
        right - left,
        bottom - top
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">epoch</text>"#,
        (left + right) / 2.0,
        bottom + 38.0
    );
    let (lx, ly) = (p.x0 + 16.0, (top + bottom) / 2.0);
    let _ = writeln!(
        s,
        r#"<text x="{lx:.1}" y="{ly:.1}" text-anchor="middle" transform="rotate(-90 {lx:.1} {ly:.1})">{}</text>"#,
        p.heading
    );
    if no_data {
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#888">no data</text>"##,
            (left + right) / 2.0,
            ly
        );
    }
}

/// One series: a path through each run of consecutive plottable points, and markers on every
/// point when `mark_all`, else only on isolated ones.
fn draw_series(s: &mut String, a: &PlotArea, epochs: &[f64], values: &[f64], color: &str, mark_all: bool) {
    let points: Vec<Option<(f64, f64)>> =
        epochs.iter().zip(values).map(|(&e, v)| plottable(v).then(|| (a.sx(e), a.sy(*v)))).collect();
    // A skipped value breaks the line.
    let runs: Vec<&[Option<(f64, f64)>]> = points.split(|p| p.is_none()).filter(|r| !r.is_empty()).collect();
    let mut d = String::new();
    for run in runs.iter().filter(|r| r.len() >= 2) {
        for (i, (x, y)) in run.iter().flatten().enumerate() {
            let _ = write!(d, "{}{} ", if i == 0 { "M" } else { "L" }, svg::point(*x, *y));
        }
    }
    if !d.is_empty() {
        let _ = writeln!(
            s,
            r#"<path d="{}" fill="none" stroke="{color}" stroke-width="2" stroke-linejoin="round"/>"#,
            d.trim_end()
        );
    }
    for run in &runs {
        if mark_all || run.len() == 1 {
            for (x, y) in run.iter().flatten() {
                let _ = writeln!(s, r#"<circle cx="{x:.1}" cy="{y:.1}" r="3" fill="{color}"/>"#);
            }
        }
    }
}

/// An axis range expanded to round numbers, and its ticks.
struct Axis {
    lo: f64,
    hi: f64,
    step: f64,
    ticks: Vec<f64>,
}

impl Axis {
    /// About `target` intervals of 1, 2 or 5 times a power of ten covering `[lo, hi]` (lo < hi);
    /// `integer` forces a step of at least 1.
    fn new(lo: f64, hi: f64, target: usize, integer: bool) -> Axis {
        let mut step = svg::nice_step(hi - lo, target as f64);
        if integer {
            step = step.max(1.0);
        }
        let mut axis = Axis { lo: (lo / step).floor() * step, hi: (hi / step).ceil() * step, step, ticks: Vec::new() };
        axis.fill_ticks();
        axis
    }

    fn fill_ticks(&mut self) {
        let (a, b) = ((self.lo / self.step).round() as i64, (self.hi / self.step).round() as i64);
        self.ticks = (a..=b).map(|k| k as f64 * self.step).collect();
    }

    /// Keeps the axis within `[min, max]` when the data `[lo, hi]` is (accuracy in %).
    fn clamp(&mut self, min: f64, max: f64, lo: f64, hi: f64) {
        if lo >= min {
            self.lo = self.lo.max(min);
        }
        if hi <= max {
            self.hi = self.hi.min(max);
        }
        self.fill_ticks();
    }

    /// As many decimals as the step needs, no more.
    fn label(&self, v: f64) -> String {
        let decimals = (-self.step.log10().floor()).max(0.0) as usize;
        format!("{v:.decimals$}")
    }
}

#[cfg(test)]
mod resume_tests {
    use super::*;
    use crate::io::scratch;

    #[test]
    fn resume_drops_only_a_torn_last_line() {
        let dir = scratch("metrics-resume");
        let path = dir.join("metrics.jsonl");
        assert!(read_for_resume(&path).unwrap().is_empty());
        let m = EpochMetrics {
            epoch: 1,
            train_loss: 1.0,
            train_acc: 0.5,
            test_loss: 1.0,
            test_acc: 0.5,
            images_per_s: 9.0,
            seconds: 1.0,
            keep: 1.0,
            test_loss_recal: None,
            test_acc_recal: None,
            changed: vec![],
        };
        append_jsonl(&path, &m).unwrap();
        let good = fs::read_to_string(&path).unwrap();
        fs::write(&path, format!("{good}{{\"epoch\": 2, \"train_lo")).unwrap();
        assert_eq!(read_for_resume(&path).unwrap(), vec![m.clone()]);
        assert!(read_jsonl(&path).is_err());
        fs::write(&path, format!("garbage\n{good}")).unwrap();
        let e = read_for_resume(&path).unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("metrics.jsonl"), "{e}");
        let _ = fs::remove_dir_all(&dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::scratch;

    fn record(epoch: usize, f: f64) -> EpochMetrics {
        EpochMetrics {
            epoch,
            train_loss: 2.0 / f,
            train_acc: 1.0 - 0.5 / f,
            test_loss: 2.2 / f,
            test_acc: 1.0 - 0.6 / f,
            images_per_s: 1234.5,
            seconds: 41.25,
            keep: 0.5,
            test_loss_recal: None,
            test_acc_recal: None,
            changed: vec![],
        }
    }

    fn history(n: usize) -> Vec<EpochMetrics> {
        (1..=n).map(|e| record(e, e as f64 + 1.0)).collect()
    }

    #[test]
    fn jsonl_round_trip_and_keys() {
        let dir = scratch("metrics-roundtrip");
        let path = dir.join("metrics.jsonl");
        let h = history(3);
        for m in &h {
            append_jsonl(&path, m).unwrap();
        }
        assert_eq!(read_jsonl(&path).unwrap(), h);
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 3);
        assert!(text.ends_with('\n'));
        let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        let mut keys: Vec<&str> = first.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        keys.sort();
        assert_eq!(
            keys,
            ["epoch", "images_per_s", "keep", "seconds", "test_acc", "test_loss", "train_acc", "train_loss"]
        );
        assert_eq!(first["epoch"], 1);
        assert_eq!(first["train_acc"], 0.75);
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A resume's changes are one more key of that epoch's line; lines without it (every line
    /// of older runs) read as no change.
    #[test]
    fn changes_of_a_resume_are_an_optional_key() {
        let mut m = record(2, 2.0);
        m.changed = vec![Change { setting: "lr".into(), from: "0.1".into(), to: "0.05".into() }];
        let line = serde_json::to_string(&m).unwrap();
        assert!(line.contains(r#""changed":[{"setting":"lr","from":"0.1","to":"0.05"}]"#), "{line}");
        assert_eq!(serde_json::from_str::<EpochMetrics>(&line).unwrap(), m);
        let old = serde_json::to_string(&record(1, 2.0)).unwrap();
        assert!(!old.contains("changed"));
        assert!(serde_json::from_str::<EpochMetrics>(&old).unwrap().changed.is_empty());
        let odd = line.replace(r#""to":"0.05""#, r#""to":"0.05","why":"x""#);
        assert!(serde_json::from_str::<EpochMetrics>(&odd).is_err());
    }

    #[test]
    fn non_finite_values_survive_as_nan() {
        let dir = scratch("metrics-nan");
        let path = dir.join("m.jsonl");
        let mut m = record(1, 2.0);
        m.train_loss = f64::NAN;
        m.test_loss = f64::INFINITY;
        append_jsonl(&path, &m).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(!text.contains("NaN") && text.contains("\"train_loss\":null"), "{text}");
        let back = read_jsonl(&path).unwrap();
        assert!(back[0].train_loss.is_nan() && back[0].test_loss.is_nan());
        assert_eq!(back[0].test_acc, m.test_acc);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_line_names_file_and_line() {
        let dir = scratch("metrics-bad");
        let path = dir.join("broken.jsonl");
        append_jsonl(&path, &record(1, 2.0)).unwrap();
        append_jsonl(&path, &record(2, 3.0)).unwrap();
        let mut text = fs::read_to_string(&path).unwrap();
        text.push('\n'); // a blank line is fine
        text.push_str("{\"epoch\": 3, \"train_loss\": 1.0\n"); // torn last line
        fs::write(&path, &text).unwrap();
        let err = read_jsonl(&path).unwrap_err();
        assert!(matches!(err, Error::Data { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("broken.jsonl") && msg.contains("line 4"), "{msg}");

        // An unknown key and a missing key are errors too.
        fs::write(&path, text.lines().next().unwrap().replace("\"keep\"", "\"kept\"")).unwrap();
        let msg = read_jsonl(&path).unwrap_err().to_string();
        assert!(msg.contains("line 1") && msg.contains("kept"), "{msg}");
        let msg = read_jsonl(&dir.join("absent.jsonl")).unwrap_err().to_string();
        assert!(msg.contains("absent.jsonl"), "{msg}");
        fs::remove_dir_all(&dir).unwrap();
    }

    /// The two `<g>` panels of a picture.
    fn panels(svg: &str) -> (&str, &str) {
        let a = svg.find(r#"<g id="loss-panel">"#).unwrap();
        let b = svg.find(r#"<g id="accuracy-panel">"#).unwrap();
        (&svg[a..b], &svg[b..])
    }

    fn assert_clean(svg: &str) {
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert_eq!(svg.matches("<svg").count(), 1);
        assert_eq!(svg.matches("<g ").count(), svg.matches("</g>").count());
        let lower = svg.to_lowercase();
        assert!(!lower.contains("nan") && !lower.contains("inf"), "{svg}");
    }

    #[test]
    fn svg_has_two_lines_per_panel_and_escapes_the_title() {
        let svg = curves_svg(&history(30), "WRN-16-4 <keep 0.5> & \"wrap\"");
        assert_clean(&svg);
        assert!(svg.contains("WRN-16-4 &lt;keep 0.5&gt; &amp; &quot;wrap&quot;"));
        assert!(!svg.contains("<keep"));
        let (loss, acc) = panels(&svg);
        for p in [loss, acc] {
            assert_eq!(p.matches("<path").count(), 2, "{p}");
            assert!(p.contains(TRAIN_COLOR) && p.contains(TEST_COLOR));
        }
        // Round tick labels: the x axis of 30 epochs has 0, 5, ..., 30.
        for t in ["0", "10", "30"] {
            assert!(loss.contains(&format!(r#"text-anchor="middle">{t}</text>"#)), "{t}");
        }
        // Accuracy is drawn in percent: 1 - 0.5/2 = 75% is the first train value, so 70 is a tick.
        assert!(acc.contains(">70</text>") && acc.contains(">accuracy (%)</text>"));
        assert!(svg.contains(">train</text>") && svg.contains(">test</text>"));
    }

    #[test]
    fn a_picture_names_the_run_that_drew_it() {
        let svg = curves_svg(&history(3), "t");
        assert_eq!(drawn_by(&svg), None);
        let marked = with_run(&svg, "0123456789abcdef");
        assert_eq!(drawn_by(&marked), Some("0123456789abcdef"));
        assert!(marked.starts_with("<svg ") && marked.lines().nth(1).unwrap().starts_with("<desc>"), "{marked}");
        assert_eq!(marked.replace("<desc>sliceout run 0123456789abcdef</desc>\n", ""), svg);
        assert_clean(&marked);
    }

    #[test]
    fn svg_with_one_epoch_draws_markers() {
        let svg = curves_svg(&history(1), "one");
        assert_clean(&svg);
        let (loss, acc) = panels(&svg);
        for p in [loss, acc] {
            assert_eq!(p.matches("<path").count(), 0);
            assert_eq!(p.matches("<circle").count(), 2);
        }
        let svg = curves_svg(&[], "empty");
        assert_clean(&svg);
        assert!(svg.contains("no data"));
    }

    #[test]
    fn svg_skips_non_finite_values() {
        let mut h = history(6);
        h[2].train_loss = f64::NAN;
        h[3].test_loss = f64::INFINITY;
        h[4].train_acc = f64::NEG_INFINITY;
        h[5].test_loss = 1e300; // a diverged loss: skipped, and it does not flatten the rest
        let svg = curves_svg(&h, "diverged");
        assert_clean(&svg);
        let (loss, acc) = panels(&svg);
        assert_eq!(loss.matches("<path").count(), 2);
        assert_eq!(acc.matches("<path").count(), 2);
        // The train loss line breaks at epoch 3: two moves in one path.
        let train_path = loss.lines().find(|l| l.starts_with("<path") && l.contains(TRAIN_COLOR)).unwrap();
        assert_eq!(train_path.matches('M').count(), 2, "{train_path}");
        // All values non-finite: nothing drawn, still a valid picture.
        let mut bad = history(3);
        for m in &mut bad {
            m.train_loss = f64::NAN;
            m.test_loss = f64::NAN;
        }
        let svg = curves_svg(&bad, "all bad");
        assert_clean(&svg);
        assert_eq!(panels(&svg).0.matches("<path").count(), 0);
    }

    #[test]
    fn axis_ticks_are_round() {
        let a = Axis::new(0.0, 2.31, 5, false);
        assert_eq!((a.lo, a.hi, a.step), (0.0, 2.5, 0.5));
        assert_eq!(a.label(1.5), "1.5");
        let a = Axis::new(1.0, 200.0, 6, true);
        assert_eq!((a.lo, a.step), (0.0, 50.0));
        assert_eq!(a.ticks, [0.0, 50.0, 100.0, 150.0, 200.0]);
        let mut a = Axis::new(62.0, 99.5, 5, false);
        a.clamp(0.0, 100.0, 62.0, 99.5);
        assert_eq!((a.lo, a.hi, a.label(a.ticks[0])), (60.0, 100.0, "60".to_string()));
        let a = Axis::new(0.0, 0.03, 5, false);
        assert_eq!(a.label(a.ticks[1]), "0.01");
    }
}
