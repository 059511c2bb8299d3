//! `sliceout compare` on runs made here: its rows equal the runs' metrics and checkpoints, its
//! picture holds a line per run and panel, a run in progress is read as far as it has gone,
//! folders that hold no run are named and fail the command without hiding the others, and runs
//! of different models are refused unless `--force`. Only a checkpoint's record is read, never
//! its weights.

use crate::common::{args, sliceout, tmp, BIN};
use sliceout::data::synth::write_synthetic;
use sliceout::io::metrics::{self, EpochMetrics};
use sliceout::train::{self, TrainArgs};
use std::path::Path;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Two runs of 2 epochs (keep 0.5 seed 3, keep 0.75 seed 4) on 200 synthetic images in `d`.
fn two_runs(d: &Path) -> [TrainArgs; 2] {
    write_synthetic(&d.join("data"), 200, 60, 2, false).unwrap();
    let base = TrainArgs { epochs: 2, ..args(&d.join("data"), &d.join("a")) };
    let b = TrainArgs { keep: 0.75, seed: 4, out: d.join("b"), ..base.clone() };
    for a in [&base, &b] {
        train::train(a).unwrap();
    }
    [base, b]
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs().max(1.0)
}

/// The row of `row` (compare's JSON) against the run `a`'s files.
fn row_agrees(row: &serde_json::Value, a: &TrainArgs, history: &[EpochMetrics]) {
    let f = |k: &str| row[k].as_f64().unwrap_or_else(|| panic!("{k} in {row}"));
    let best = history.iter().map(|m| m.test_acc).fold(f64::NEG_INFINITY, f64::max);
    let best_epoch = history.iter().find(|m| m.test_acc == best).unwrap().epoch;
    let last = history.last().unwrap();
    assert!(close(f("best_test_acc"), best) && f("best_epoch") as usize == best_epoch, "{row}");
    assert!(close(f("final_test_acc"), last.test_acc), "{row}");
    assert_eq!(row["final_test_acc_recal"].as_f64(), last.test_acc_recal);
    let to_best: f64 = history.iter().take(best_epoch).map(|m| m.seconds).sum();
    let total: f64 = history.iter().map(|m| m.seconds).sum();
    assert!(close(f("seconds_to_best"), to_best) && close(f("seconds_total"), total), "{row}");
    let speed = history.iter().map(|m| m.images_per_s).sum::<f64>() / history.len() as f64;
    assert!(close(f("images_per_s"), speed), "{row}");
    assert!(close(f("keep"), a.keep), "{row}");
    assert_eq!(row["seed"], a.seed.to_string());
    assert_eq!((row["model"].as_str(), row["precision"].as_str()), (Some("WRN-10-1"), Some("fp32")));
    assert_eq!((row["device"].as_str(), row["dataset"].as_str()), (Some("cpu"), Some("cifar10")));
    assert_eq!((row["epochs_done"].as_u64(), row["epochs_planned"].as_u64()), (Some(history.len() as u64), Some(2)));
    let config = a.config(10, 3);
    let plan = sliceout::ir::mib(sliceout::fit::step_bytes(&config, a.batch, a.options, a.lowering));
    assert!(close(f("plan_mib"), plan), "{row}: plan {plan}");
}

#[test]
fn compare_rows_equal_the_runs_and_the_picture_draws_each() {
    let d = tmp("rows");
    let runs = two_runs(&d);
    let svg = d.join("cmp.svg");
    let (code, out, err) =
        sliceout(&["compare", s(&runs[0].out), s(&runs[1].out), "--format", "json", "--out", s(&svg)]);
    assert_eq!(code, 0, "{err}");
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    for (row, a) in rows.as_array().unwrap().iter().zip(&runs) {
        row_agrees(row, a, &metrics::read_jsonl(&a.out.join("metrics.jsonl")).unwrap());
    }
    let picture = std::fs::read_to_string(&svg).unwrap();
    assert!(picture.starts_with("<svg") && picture.trim_end().ends_with("</svg>"));
    assert_eq!(picture.matches(r#"<polyline class="run""#).count(), 4, "two panels, a line per run");
    assert!(picture.contains("keep 0.50 seed 3") && picture.contains("keep 0.75 seed 4"));
    // Every element opened is closed: a rough well-formedness check without an XML parser.
    assert_eq!(picture.matches("<g ").count(), picture.matches("</g>").count());

    // The text table: a header and a line per run.
    let (code, out, _) = sliceout(&["compare", s(&runs[0].out), s(&runs[1].out)]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].contains("plan MiB") && lines[1].contains("WRN-10-1") && lines[2].contains("2/2"), "{out}");

    // A run in progress: one epoch of two, then a line torn mid-write.
    let going = d.join("going");
    std::fs::create_dir(&going).unwrap();
    std::fs::copy(runs[0].out.join("last.ckpt"), going.join("last.ckpt")).unwrap();
    let text = std::fs::read_to_string(runs[0].out.join("metrics.jsonl")).unwrap();
    let first = text.lines().next().unwrap();
    std::fs::write(going.join("metrics.jsonl"), format!("{first}\n{}", &first[..first.len() / 2])).unwrap();
    let (code, out, err) = sliceout(&["compare", s(&going), "--format", "json"]);
    assert_eq!(code, 0, "{err}");
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    let history = metrics::read_jsonl(&runs[0].out.join("metrics.jsonl")).unwrap();
    row_agrees(&rows[0], &runs[0], &history[..1]);

    // Folders that hold no run: each named on one line, the runs still printed, the command fails.
    let empty = d.join("empty");
    std::fs::create_dir(&empty).unwrap();
    let file = d.join("a-file");
    std::fs::write(&file, "x").unwrap();
    let fresh = d.join("fresh");
    std::fs::create_dir(&fresh).unwrap();
    std::fs::write(fresh.join("metrics.jsonl"), "").unwrap();
    let missing = d.join("missing");
    let (code, out, err) = sliceout(&["compare", s(&runs[0].out), s(&empty), s(&file), s(&fresh), s(&missing)]);
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(out.lines().count(), 2, "{out}");
    for (bad, why) in [
        (&empty, "not a run folder"),
        (&file, "not a folder"),
        (&fresh, "no finished epoch"),
        (&missing, "no such folder"),
    ] {
        assert!(err.lines().any(|l| l.starts_with(s(bad)) && l.contains(why)), "{bad:?}: {err}");
    }
    assert!(err.contains("4 of 5 folders"), "{err}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn runs_of_different_models_are_refused_unless_forced() {
    let d = tmp("models");
    write_synthetic(&d.join("data"), 100, 40, 2, false).unwrap();
    let a = TrainArgs { epochs: 1, ..args(&d.join("data"), &d.join("a")) };
    let b = TrainArgs { widen: 2, out: d.join("b"), ..a.clone() };
    train::train(&a).unwrap();
    train::train(&b).unwrap();
    let (code, _, err) = sliceout(&["compare", s(&a.out), s(&b.out)]);
    assert_eq!(code, 1);
    assert!(err.contains("different models") && err.contains("WRN-10-2") && err.contains("--force"), "{err}");
    let (code, out, err) = sliceout(&["compare", s(&a.out), s(&b.out), "--force"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("WRN-10-1") && out.contains("WRN-10-2"), "{out}");
    // An output that is one of the runs' own files is refused before anything is read.
    let (code, _, err) = sliceout(&["compare", s(&a.out), "--out", s(&a.out.join("curves.svg"))]);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("--out"), "{err}");
    std::fs::remove_dir_all(&d).unwrap();
}

/// `run`'s files copied to `to`, its last.ckpt given one more tensor of `values` floats, a hole
/// in the file (sparse: no disk taken), with a CRC of zeros (the weights are never read, so
/// never checked): the header (52 bytes, to the tensor count) as the layout documents it.
fn with_sparse_weights(run: &Path, to: &Path, values: u64) {
    use std::io::{Seek, SeekFrom, Write};
    std::fs::create_dir_all(to).unwrap();
    std::fs::copy(run.join("metrics.jsonl"), to.join("metrics.jsonl")).unwrap();
    let b = std::fs::read(run.join("last.ckpt")).unwrap();
    let count = u32::from_le_bytes(b[52..56].try_into().unwrap());
    let mut f = std::fs::File::create(to.join("last.ckpt")).unwrap();
    let name = b"zz.sparse";
    f.write_all(&b[..52]).unwrap();
    f.write_all(&(count + 1).to_le_bytes()).unwrap();
    f.write_all(&(name.len() as u32).to_le_bytes()).unwrap();
    f.write_all(name).unwrap();
    f.write_all(&1u32.to_le_bytes()).unwrap();
    f.write_all(&values.to_le_bytes()).unwrap();
    f.write_all(&values.to_le_bytes()).unwrap();
    f.seek(SeekFrom::Current(4 * values as i64)).unwrap();
    f.write_all(&b[56..b.len() - 4]).unwrap();
    f.write_all(&[0; 4]).unwrap();
}

/// A run whose last.ckpt holds 768 MiB of weights is compared under a 600 MB address-space
/// limit, where reading the checkpoint whole cannot be (as `eval` shows): its row is the
/// run's. A last.ckpt cut short is named in one line, as before.
#[cfg(unix)]
#[test]
fn compare_reads_a_checkpoints_record_not_its_weights() {
    let d = tmp("record");
    write_synthetic(&d.join("data"), 100, 40, 2, false).unwrap();
    let a = TrainArgs { epochs: 2, ..args(&d.join("data"), &d.join("a")) };
    train::train(&a).unwrap();
    let big = d.join("big");
    with_sparse_weights(&a.out, &big, 192 << 20);
    let limited = |cmd: &str| {
        let script = format!("ulimit -v 600000; exec \"$BIN\" {cmd}");
        let out = std::process::Command::new("sh").args(["-c", &script]).env("BIN", BIN).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = limited(&format!("compare {} {} --format json", s(&big), s(&a.out)));
    assert_eq!(code, Some(0), "{err}");
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    let history = metrics::read_jsonl(&a.out.join("metrics.jsonl")).unwrap();
    for row in rows.as_array().unwrap() {
        row_agrees(row, &a, &history);
    }
    let (code, _, err) = limited(&format!("eval --checkpoint {} --data {}", s(&big.join("last.ckpt")), s(&a.data)));
    assert!(code == Some(1) && err.contains("cannot allocate"), "{err}");

    let cut = d.join("cut");
    std::fs::create_dir(&cut).unwrap();
    std::fs::copy(a.out.join("metrics.jsonl"), cut.join("metrics.jsonl")).unwrap();
    let bytes = std::fs::read(a.out.join("last.ckpt")).unwrap();
    std::fs::write(cut.join("last.ckpt"), &bytes[..bytes.len() - 9]).unwrap();
    let (code, out, err) = sliceout(&["compare", s(&cut)]);
    assert_eq!(code, 1, "{out}");
    let line = err.lines().next().unwrap_or_default();
    assert!(line.contains(s(&cut.join("last.ckpt"))) && line.contains("truncated or corrupt"), "{err}");
    std::fs::remove_dir_all(&d).unwrap();
}
