//! The run's TensorBoard events read back by TensorBoard's own reader (the `tensorboard`
//! package's `EventAccumulator`): every scalar equals `metrics.jsonl`'s, a resumed run shows
//! each step once, and a file cut inside its last record still reads up to it. Where `python3`
//! (or `$SLICEOUT_PYTHON`) lacks the package these tests are skipped with a message, and fail
//! when `CI` is set (`.ci/run` installs it).

use crate::common::{args, tmp};
use sliceout::data::synth::write_synthetic;
use sliceout::io::events;
use sliceout::io::metrics::{self, EpochMetrics};
use sliceout::train::{self, tb, TrainArgs};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// Prints every scalar of the run folder's events as JSON: {tag: [[step, value], ...]}.
const READER: &str = r#"
import json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
acc = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0})
acc.Reload()
print(json.dumps({t: [[e.step, e.value] for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}))
"#;

type Scalars = BTreeMap<String, Vec<(u64, f64)>>;

/// `$SLICEOUT_PYTHON`, else `python3`, when it imports `tensorboard`; `None` (after saying so)
/// when it does not and `CI` is unset.
fn python() -> Option<String> {
    let python = std::env::var("SLICEOUT_PYTHON").ok().filter(|p| !p.is_empty()).unwrap_or_else(|| "python3".into());
    let why = match Command::new(&python).args(["-c", "import tensorboard"]).output() {
        Ok(o) if o.status.success() => return Some(python),
        Ok(o) => format!(
            "{python} lacks tensorboard ({})",
            String::from_utf8_lossy(&o.stderr).trim().lines().last().unwrap_or("")
        ),
        Err(e) => format!("{python} does not run ({e})"),
    };
    let msg =
        format!("{why}: `python3 -m pip install tensorboard` (or set SLICEOUT_PYTHON) to read the events with it");
    assert!(std::env::var_os("CI").is_none(), "{msg}");
    eprintln!("skipped: {msg}");
    None
}

/// The scalars TensorBoard reads in `run/tb`.
fn read(python: &str, run: &Path) -> Scalars {
    let out = Command::new(python).args(["-c", READER]).arg(run.join(tb::FOLDER)).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A WRN-10-1 run of 3 epochs of 40 steps (batch 10 of 400 images), BN recalibrated, in `d/run`.
fn run_args(d: &Path) -> TrainArgs {
    write_synthetic(&d.join("data"), 400, 100, 1, false).unwrap();
    TrainArgs { batch: 10, bn_recal: 2, ..args(&d.join("data"), &d.join("run")) }
}

/// The steps of `tag`.
fn steps(s: &Scalars, tag: &str) -> Vec<u64> {
    s.get(tag).map_or(vec![], |v| v.iter().map(|p| p.0).collect())
}

/// Every epoch scalar of `s` equals `history`'s (as the f32 an event holds), at step epoch * 40.
fn agree(s: &Scalars, history: &[EpochMetrics]) {
    let per_epoch = 40;
    for (tag, f) in [
        ("train/loss", (|m: &EpochMetrics| m.train_loss) as fn(&EpochMetrics) -> f64),
        ("train/acc", |m| m.train_acc),
        ("test/loss", |m| m.test_loss),
        ("test/acc", |m| m.test_acc),
        ("test/loss_recal", |m| m.test_loss_recal.unwrap()),
        ("test/acc_recal", |m| m.test_acc_recal.unwrap()),
        ("images_per_s", |m| m.images_per_s),
    ] {
        let want: Vec<(u64, f64)> =
            history.iter().map(|m| ((m.epoch * per_epoch) as u64, f(m) as f32 as f64)).collect();
        assert_eq!(s[tag], want, "{tag}");
    }
    assert_eq!(steps(s, "lr"), steps(s, "test/acc"));
}

#[test]
fn tensorboard_reads_every_scalar_of_metrics_jsonl() {
    let Some(python) = python() else { return };
    let d = tmp("scalars");
    let a = run_args(&d);
    train::train(&a).unwrap();
    let s = read(&python, &a.out);
    let history = metrics::read_jsonl(&a.out.join("metrics.jsonl")).unwrap();
    assert_eq!(history.len(), 3);
    agree(&s, &history);
    // The cosine schedule falls from the base rate.
    let lr: Vec<f64> = s["lr"].iter().map(|p| p.1).collect();
    assert!(lr[0] < 0.05 && lr.windows(2).all(|w| w[1] < w[0]), "{lr:?}");
    assert_eq!(steps(&s, "train/loss_running"), [50, 100]);

    // Killed inside its last record (the third epoch's): the reader stops there.
    let path = tb::path(&a.out);
    let bytes = std::fs::read(&path).unwrap();
    let last = events::records(&bytes).last().unwrap().len() + 16;
    std::fs::write(&path, &bytes[..bytes.len() - last / 2]).unwrap();
    let cut = read(&python, &a.out);
    agree(&cut, &history[..2]);
    assert_eq!(steps(&cut, "train/loss_running"), [50, 100]);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_resumed_run_shows_each_step_once() {
    let Some(python) = python() else { return };
    let d = tmp("resume");
    let a = run_args(&d);
    // Stopped at step 70, inside the second epoch.
    let s = train::train(&TrainArgs { stop_after: Some(70), ..a.clone() }).unwrap();
    assert_eq!(s.stopped_at, Some(70));
    // Events a crash left after the checkpoint (here at step 100, which the run will redo), and a
    // record cut short: neither is read as the run's.
    let at70 = d.join("at70.ckpt");
    std::fs::copy(a.out.join("last.ckpt"), &at70).unwrap();
    let path = tb::path(&a.out);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend(events::scalars_record(0.0, 100, &[("train/loss_running", 999.0)]));
    bytes.extend(&events::scalars_record(0.0, 110, &[("train/loss_running", 999.0)])[..20]);
    std::fs::write(&path, bytes).unwrap();
    let resumed = TrainArgs { resume: Some(a.out.join("last.ckpt")), ..a.clone() };
    train::train(&resumed).unwrap();
    let s = read(&python, &a.out);
    let history = metrics::read_jsonl(&a.out.join("metrics.jsonl")).unwrap();
    assert_eq!(history.len(), 3);
    agree(&s, &history);
    assert_eq!(steps(&s, "train/loss_running"), [50, 100]);
    assert!(s["train/loss_running"].iter().all(|p| p.1 < 100.0), "{s:?}");

    // Resumed from step 70 again, in a new folder: the events are rebuilt from the checkpoint's
    // history (the first epoch's) and go on from there.
    let d2 = tmp("resume-elsewhere");
    let elsewhere = TrainArgs { resume: Some(at70), out: d2.join("run"), ..a.clone() };
    train::train(&elsewhere).unwrap();
    let s2 = read(&python, &elsewhere.out);
    let h2 = metrics::read_jsonl(&elsewhere.out.join("metrics.jsonl")).unwrap();
    agree(&s2, &h2);
    assert_eq!(steps(&s2, "train/loss_running"), [100]);
    for tag in s2.keys() {
        let st = steps(&s2, tag);
        assert!(st.windows(2).all(|w| w[0] < w[1]), "{tag}: {st:?}");
    }
    std::fs::remove_dir_all(&d).unwrap();
    std::fs::remove_dir_all(&d2).unwrap();
}

/// A link where the events go is refused before any training and left as it is.
#[cfg(unix)]
#[test]
fn a_link_in_place_of_the_events_is_refused() {
    let d = tmp("link");
    let a = run_args(&d);
    let target = d.join("elsewhere");
    std::fs::write(&target, "theirs").unwrap();
    std::fs::create_dir_all(a.out.join(tb::FOLDER)).unwrap();
    std::os::unix::fs::symlink(&target, tb::path(&a.out)).unwrap();
    let msg = train::train(&a).unwrap_err().to_string();
    assert!(msg.contains(tb::FILE) && msg.contains("symbolic link"), "{msg}");
    assert!(std::fs::symlink_metadata(tb::path(&a.out)).unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "theirs");
    assert!(!a.out.join("last.ckpt").exists());
    std::fs::remove_dir_all(&d).unwrap();
}

/// Another run's events alone in a folder are a run's files like the others: a fresh run there
/// is refused, naming them, and leaves them as they are; `--force` replaces them.
#[test]
fn another_runs_events_are_not_replaced_without_force() {
    let d = tmp("events-kept");
    let a = run_args(&d);
    let theirs = [events::file_version_record(0.0), events::scalars_record(0.0, 7, &[("test/acc", 0.75)])].concat();
    std::fs::create_dir_all(a.out.join(tb::FOLDER)).unwrap();
    std::fs::write(tb::path(&a.out), &theirs).unwrap();
    let msg = train::train(&a).unwrap_err().to_string();
    assert!(msg.contains("tb/events.out.tfevents.sliceout") && msg.contains("--force"), "{msg}");
    assert_eq!(std::fs::read(tb::path(&a.out)).unwrap(), theirs);
    assert!(!a.out.join("last.ckpt").exists());
    train::train(&TrainArgs { force: true, epochs: 1, ..a.clone() }).unwrap();
    let ours = std::fs::read(tb::path(&a.out)).unwrap();
    assert!(ours != theirs && events::events(&ours).iter().all(|e| e.step != 7), "the old events stayed");
    std::fs::remove_dir_all(&d).unwrap();
}
