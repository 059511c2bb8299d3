//! The binary as a user meets it: every bad input gets one clear line naming the file or value
//! and what was expected, a non-zero exit, no panic, and nothing in the output folder is lost.

use crate::common::{checkpoint_bits, metrics_without_times, sliceout, tmp, BIN};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Fails with a message containing every one of `needles`.
fn fails_with(args: &[&str], needles: &[&str]) {
    let (code, _, err) = sliceout(args);
    assert_ne!(code, 0, "{args:?} should fail");
    for n in needles {
        assert!(err.contains(n), "{args:?}: message lacks '{n}':\n{err}");
    }
    assert!(err.lines().filter(|l| !l.trim().is_empty()).count() <= 4, "{args:?}: message too long:\n{err}");
}

fn synth(dir: &Path, train: usize, test: usize) {
    let (code, _, err) = sliceout(&[
        "data",
        "synth",
        "--out",
        dir.to_str().unwrap(),
        "--train",
        &train.to_string(),
        "--test",
        &test.to_string(),
    ]);
    assert_eq!(code, 0, "{err}");
}

/// A fresh folder holding a synthetic dataset, and the path of a run folder inside it.
struct Scene {
    dir: PathBuf,
    data: String,
    out: String,
}

fn scene(name: &str, train: usize, test: usize) -> Scene {
    let dir = tmp(name);
    synth(&dir, train, test);
    let s = |p: &Path| p.to_str().unwrap().to_string();
    Scene { data: s(&dir), out: s(&dir.join("run")), dir }
}

/// `train --resume CK --data DATA --device cpu`, then `extra`: a resume that needs no other flag.
fn resume_args(ck: &Path, data: &str, extra: &[&str]) -> Vec<String> {
    let base = ["train", "--resume", ck.to_str().unwrap(), "--data", data, "--device", "cpu"];
    base.iter().chain(extra).map(|s| s.to_string()).collect()
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// `train` on a tiny WRN, with `extra` flags replacing or adding to the defaults.
fn train_args(data: &str, out: &str, extra: &[(&str, &str)]) -> Vec<String> {
    let mut flags: Vec<(String, String)> = [
        ("--data", data),
        ("--out", out),
        ("--depth", "10"),
        ("--widen", "1"),
        ("--batch", "16"),
        ("--epochs", "1"),
        ("--device", "cpu"),
    ]
    .iter()
    .map(|(f, v)| (f.to_string(), v.to_string()))
    .collect();
    for (f, v) in extra {
        match flags.iter_mut().find(|(g, _)| g == f) {
            Some(slot) => slot.1 = v.to_string(),
            None => flags.push((f.to_string(), v.to_string())),
        }
    }
    std::iter::once("train".to_string()).chain(flags.into_iter().flat_map(|(f, v)| [f, v])).collect()
}

#[test]
fn bad_flag_values_are_named() {
    let s = scene("flags", 40, 10);
    let (data, out) = (s.data.as_str(), s.out.as_str());
    let case = |flag: &str, value: &str, expected: &str| {
        fails_with(&refs(&train_args(data, out, &[(flag, value)])), &[flag, value, expected]);
    };
    case("--depth", "12", "6n+4");
    case("--keep", "0", "(0, 1]");
    case("--keep", "1.5", "(0, 1]");
    case("--batch", "0", ">= 1");
    case("--lr", "-0.1", ">= 0");
    case("--dataset", "imagenet", "cifar10");
    fails_with(&["train", "--device", "tpu"], &["tpu", "--device"]);
    fails_with(&["plan", "--depth", "11"], &["--depth", "11", "6n+4"]);
    fails_with(&["bench", "--keep", "0.5,2"], &["--keep"]);
    case("--input-grad", "dx", "col2im or conv");
    fails_with(&["plan", "--input-grad", "winograd"], &["--input-grad", "winograd", "col2im or conv"]);
    fails_with(&["selftest", "--input-grad", "conv"], &["--input-grad", "--full"]);
    // Without mpirun there is no other rank to give the batch to.
    fails_with(&["train", "--same-batch"], &["--same-batch", "mpirun", "one rank alone"]);
}

#[test]
fn missing_and_corrupt_data_files_are_named() {
    let missing = std::env::temp_dir().join("sliceout-no-such-folder");
    fails_with(&refs(&train_args(missing.to_str().unwrap(), "/tmp/x", &[])), &["sliceout-no-such-folder"]);

    let s = scene("data", 40, 10);
    let (d, data, out) = (&s.dir, s.data.as_str(), s.out.as_str());
    // A truncated file: not a whole number of 3073-byte records.
    let f = d.join("data_batch_2.bin");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() - 100]).unwrap();
    fails_with(&refs(&train_args(data, out, &[])), &["data_batch_2.bin", "3073"]);
    std::fs::write(&f, &bytes).unwrap();
    // A label out of range.
    let t = d.join("test_batch.bin");
    let mut tb = std::fs::read(&t).unwrap();
    tb[3073] = 10;
    std::fs::write(&t, &tb).unwrap();
    fails_with(&refs(&train_args(data, out, &[])), &["test_batch.bin", "10"]);
    // A missing file of a recognised set.
    std::fs::remove_file(&t).unwrap();
    fails_with(&refs(&train_args(data, out, &[])), &["test_batch.bin"]);

    // IDX with a wrong magic number.
    let m = tmp("idx");
    for name in
        ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    {
        std::fs::write(m.join(name), [0u8, 0, 8, 1, 0, 0, 0, 0]).unwrap();
    }
    fails_with(&refs(&train_args(m.to_str().unwrap(), out, &[])), &["idx", "magic"]);
}

#[test]
fn unwritable_output_folder_is_named() {
    let d = tmp("out");
    synth(&d, 40, 10);
    let file = d.join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let bad = file.join("run");
    fails_with(&refs(&train_args(d.to_str().unwrap(), bad.to_str().unwrap(), &[])), &["a-file"]);
}

#[test]
fn corrupt_checkpoints_are_refused_and_nothing_is_lost() {
    let s = scene("ckpt", 48, 16);
    let (d, data, out) = (&s.dir, s.data.as_str(), s.out.as_str());
    let run = d.join("run");
    let (code, _, err) = sliceout(&refs(&train_args(data, out, &[])));
    assert_eq!(code, 0, "{err}");
    let last = run.join("last.ckpt");
    let good = std::fs::read(&last).unwrap();
    let metrics = std::fs::read(run.join("metrics.jsonl")).unwrap();
    assert!(run.join("best.ckpt").exists() && run.join("curves.svg").exists());

    let bad = d.join("bad.ckpt");
    let bad_s = bad.to_str().unwrap();
    let resume = |extra: &[(&str, &str)]| -> Vec<String> {
        let mut flags = vec![("--resume", bad_s), ("--epochs", "2")];
        flags.extend_from_slice(extra);
        train_args(data, out, &flags)
    };
    std::fs::write(&bad, &good[..good.len() / 2]).unwrap();
    fails_with(&refs(&resume(&[])), &["bad.ckpt"]);
    let mut b = good.clone();
    b[0] = b'X';
    std::fs::write(&bad, &b).unwrap();
    fails_with(&refs(&resume(&[])), &["bad.ckpt", "not a sliceout checkpoint"]);
    let mut b = good.clone();
    b[8] = 9;
    std::fs::write(&bad, &b).unwrap();
    fails_with(&refs(&resume(&[])), &["bad.ckpt", "version"]);
    let mut b = good.clone();
    let mid = b.len() / 2;
    b[mid] ^= 0x55;
    std::fs::write(&bad, &b).unwrap();
    fails_with(&refs(&resume(&[])), &["bad.ckpt", "CRC"]);
    std::fs::write(&bad, &good).unwrap();
    fails_with(&refs(&resume(&[("--depth", "16")])), &["bad.ckpt", "depth"]);
    fails_with(&["eval", "--checkpoint", d.join("none.ckpt").to_str().unwrap(), "--data", data], &["none.ckpt"]);

    // A fresh run into the same folder is refused rather than overwriting it.
    fails_with(&refs(&train_args(data, out, &[])), &["already holds a run", "--resume"]);

    // Nothing in the run folder changed.
    assert_eq!(std::fs::read(&last).unwrap(), good);
    assert_eq!(std::fs::read(run.join("metrics.jsonl")).unwrap(), metrics);

    // And the good checkpoint evaluates, rebuilt from the checkpoint alone.
    let (code, so, err) =
        sliceout(&["eval", "--checkpoint", last.to_str().unwrap(), "--data", data, "--device", "cpu"]);
    assert_eq!(code, 0, "{err}");
    assert!(so.contains("WRN-10-1") && so.contains("test accuracy"), "{so}");
}

#[test]
fn help_lists_the_commands() {
    let (code, so, _) = sliceout(&["--help"]);
    assert_eq!(code, 0);
    for c in ["train", "eval", "plan", "profile", "bench", "selftest", "data"] {
        assert!(so.contains(c), "{c} missing from --help");
    }
}

#[test]
fn a_diverging_run_stops_naming_epoch_and_step_and_keeps_the_last_checkpoint() {
    let s = scene("nan", 64, 16);
    let (d, data, out) = (&s.dir, s.data.as_str(), s.out.as_str());
    let run = d.join("run");
    let (code, _, err) = sliceout(&refs(&train_args(data, out, &[])));
    assert_eq!(code, 0, "{err}");
    let good = std::fs::read(run.join("last.ckpt")).unwrap();
    let ck = run.join("last.ckpt");
    let resume = train_args(data, out, &[("--resume", ck.to_str().unwrap()), ("--epochs", "3"), ("--lr", "1e30")]);
    // The run's learning rate is 0.1: another is a change, said as such.
    let (code, _, err) = sliceout(&refs(&resume));
    assert!(code != 0 && err.contains("--lr 1e30 differs") && err.contains("--change"), "{err}");
    let resume = [resume, vec!["--change".to_string()]].concat();
    let (code, _, err) = sliceout(&refs(&resume));
    assert_ne!(code, 0);
    assert!(err.contains("diverged") && err.contains("epoch 2") && err.contains("step"), "{err}");
    assert_eq!(std::fs::read(run.join("last.ckpt")).unwrap(), good, "the last good checkpoint changed");
}

#[test]
fn ctrl_c_checkpoints_and_says_how_to_resume() {
    let d = tmp("sigint");
    synth(&d, 400, 16);
    let run = d.join("run");
    let args = train_args(d.to_str().unwrap(), run.to_str().unwrap(), &[("--epochs", "50"), ("--widen", "2")]);
    let child = Command::new(BIN)
        .args(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Let it start stepping, then interrupt it like a terminal's Ctrl-C.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let status = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let (so, se) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // 130, as for any program Ctrl-C stops: `train && eval` does not go on.
    assert_eq!(out.status.code(), Some(130), "{so}\n{se}");
    assert!(so.contains("resume with: sliceout train --resume"), "{so}\n{se}");
    assert!(!se.contains("panicked"));
    let ck = sliceout::io::checkpoint::load(&run.join("last.ckpt")).unwrap();
    assert!(ck.step > 0 && ck.epoch < 50, "step {} epoch {}", ck.step, ck.epoch);
}

#[test]
fn plan_and_profile_print_parseable_output() {
    let (code, so, err) =
        sliceout(&["plan", "--depth", "10", "--widen", "2", "--batch", "8", "--keep", "0.5", "--format", "json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&so).unwrap();
    assert_eq!(v["keep"], 0.5);
    assert!(v["arena_bytes"].as_u64().unwrap() < v["naive_bytes"].as_u64().unwrap());
    let (code, so, _) = sliceout(&["plan", "--depth", "10", "--widen", "2", "--batch", "8", "--keep", "0.5"]);
    assert_eq!(code, 0);
    assert!(so.contains("baseline    keep 1.00") && so.contains("live MiB"), "{so}");
    let (code, so, _) = sliceout(&["plan", "--depth", "10", "--batch", "8", "--format", "svg"]);
    assert_eq!(code, 0);
    assert!(so.starts_with("<svg") && so.trim_end().ends_with("</svg>"));
    // A chart width outside what the chart draws is refused, not quietly changed.
    for width in ["0", "15", "401"] {
        fails_with(&["plan", "--depth", "10", "--width", width], &["--width", "16 to 400"]);
    }
    // The options line names the input gradient's algorithm, and whether Winograd, the BN fold
    // and grouped SGD updates are on.
    let gpu = ["plan", "--depth", "16", "--widen", "2", "--batch", "8", "--device", "cuda"];
    for (extra, want) in [
        (&[][..], "input gradient=conv, winograd=off, bn-relu fold=off, sgd group=off"),
        (&["--fold-bn"][..], "bn-relu fold=on"),
        (&["--input-grad", "col2im"][..], "input gradient=col2im"),
        (&["--winograd"][..], "winograd=on"),
        (&["--sgd-group"][..], "sgd group=on"),
    ] {
        let (code, so, err) = sliceout(&[&gpu[..], extra].concat());
        assert_eq!(code, 0, "{err}");
        let line = so.lines().find(|l| l.trim_start().starts_with("options")).expect("an options line");
        assert!(line.contains(want), "{line}");
    }

    let d = tmp("profile");
    let trace = d.join("trace.json");
    let (code, so, err) = sliceout(&[
        "profile",
        "--depth",
        "10",
        "--widen",
        "1",
        "--batch",
        "4",
        "--steps",
        "1",
        "--keep",
        "0.5",
        "--compare",
        "1.0",
        "--device",
        "cpu",
        "--format",
        "json",
        "--trace",
        trace.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&so).unwrap();
    let ops = v["profile"]["ops"].as_array().unwrap();
    assert!(ops.len() > 50 && ops.iter().all(|o| o["ms"].as_f64().unwrap() >= 0.0));
    assert_eq!(v["compare"]["keep"], 1.0);
    let t: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&trace).unwrap()).unwrap();
    let events = t["traceEvents"].as_array().unwrap();
    assert_eq!(events.iter().filter(|e| e["ph"] == "X").count(), 2 * ops.len());
    assert!(events.iter().any(|e| e["ph"] == "C" && e["args"]["MiB"].as_f64().unwrap() > 0.0));
}

/// The steps of each scalar tag in the TensorBoard events of `run`, in file order.
fn event_steps(run: &Path) -> std::collections::BTreeMap<String, Vec<i64>> {
    let bytes = std::fs::read(sliceout::train::tb::path(run)).unwrap();
    let mut steps = std::collections::BTreeMap::<String, Vec<i64>>::new();
    for e in sliceout::io::events::events(&bytes) {
        for tag in e.tags() {
            steps.entry(tag.to_string()).or_default().push(e.step);
        }
    }
    steps
}

#[test]
fn a_trainer_killed_at_random_moments_always_resumes_to_the_same_run() {
    // Checkpoints every step, so kills land in the middle of writes too, and between the
    // checkpoints and the metrics of an epoch's end.
    let d = tmp("kill");
    synth(&d, 64, 16);
    let data = d.to_str().unwrap();
    let flags = [("--epochs", "2"), ("--checkpoint-every", "1"), ("--batch", "8")];
    let reference = d.join("reference");
    let t0 = std::time::Instant::now();
    let (code, _, err) = sliceout(&refs(&train_args(data, reference.to_str().unwrap(), &flags)));
    assert_eq!(code, 0, "{err}");
    // Kills spread over the run's own duration.
    let ms = (t0.elapsed().as_millis() as usize * 9 / 10).max(100);
    let mut rng = sliceout::rng::Rng::new(42, 1);
    for round in 0..10 {
        let run = d.join(format!("run{round}"));
        let out = run.to_str().unwrap();
        let mut child = Command::new(BIN)
            .args(train_args(data, out, &flags))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis((20 + rng.below(ms)) as u64));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // Whatever the kill left: continue from the checkpoint there is, or start afresh when
        // there is none; never a dead end. Resuming needs no flag but the data's.
        let (last, best) = (run.join("last.ckpt"), run.join("best.ckpt"));
        let args: Vec<String> = match [&last, &best].into_iter().find(|p| p.exists()) {
            Some(ck) => resume_args(ck, data, &["--checkpoint-every", "1"]),
            None => train_args(data, out, &flags),
        };
        let (code, so, err) = sliceout(&refs(&args));
        if code != 0 {
            // Killed after its last epoch's checkpoint: the run is complete.
            assert!(err.contains("nothing is left to train"), "round {round}: {so}\n{err}");
        }
        assert_eq!(
            checkpoint_bits(&last),
            checkpoint_bits(&reference.join("last.ckpt")),
            "round {round}: last.ckpt differs"
        );
        assert_eq!(
            checkpoint_bits(&best),
            checkpoint_bits(&reference.join("best.ckpt")),
            "round {round}: best.ckpt differs"
        );
        assert_eq!(metrics_without_times(&run), metrics_without_times(&reference), "round {round}: metrics differ");
        assert_eq!(event_steps(&run), event_steps(&reference), "round {round}: TensorBoard steps differ");
        let mut left: Vec<_> =
            std::fs::read_dir(&run).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        assert_eq!(left, ["best.ckpt", "curves.svg", "last.ckpt", "metrics.jsonl", "tb"], "round {round}");
    }
}

#[test]
fn a_plan_too_large_for_memory_is_a_clear_error() {
    // WRN-28-10 at batch 1,000,000 plans an arena of terabytes.
    fails_with(
        &[
            "bench", "--device", "cpu", "--depth", "28", "--widen", "10", "--batch", "1000000", "--steps", "1",
            "--keep", "1.0",
        ],
        &["arena", "MiB", "--batch"],
    );
}

#[test]
fn sizes_that_overflow_are_refused_naming_the_flag() {
    let s = scene("sizes", 40, 10);
    let (data, out) = (s.data.as_str(), s.out.as_str());
    fails_with(&["plan", "--widen", "20000000"], &["--widen", "'20000000'", "1.0 TiB"]);
    fails_with(&["plan", "--widen", "4294967296"], &["--widen", "'4294967296'"]);
    fails_with(&["plan", "--batch", "1000000000000000"], &["--batch", "'1000000000000000'", "1.0 TiB"]);
    fails_with(&["plan", "--depth", "1006"], &["--depth", "at most 1000"]);
    fails_with(&["plan", "--classes", "4000000000000"], &["--classes"]);
    fails_with(&["plan", "--col-budget", "18446744073709551615"], &["--col-budget"]);
    fails_with(&["profile", "--depth", "10", "--batch", "1000000000000000"], &["--batch"]);
    fails_with(&["bench", "--widen", "18446744073709551615"], &["--widen"]);
    fails_with(&refs(&train_args(data, out, &[("--widen", "18446744073709551615")])), &["--widen"]);
    fails_with(&refs(&train_args(data, out, &[("--epochs", "18446744073709551615")])), &["--epochs"]);
    fails_with(&refs(&train_args(data, out, &[("--batch", "18446744073709551615")])), &["--batch"]);
    assert!(!Path::new(out).join("last.ckpt").exists());
}

/// A copy of the checkpoint at `good` with `change` applied to it, saved under a valid CRC; with
/// `config`, that u32 of the stored configuration (at its byte offset) is overwritten too.
fn forge(
    good: &Path,
    to: &Path,
    change: impl FnOnce(&mut sliceout::io::checkpoint::Checkpoint),
    config: Option<(usize, u32)>,
) {
    let mut ck = sliceout::io::checkpoint::load(good).unwrap();
    change(&mut ck);
    sliceout::io::checkpoint::save(to, &ck).unwrap();
    if let Some((at, v)) = config {
        let mut b = std::fs::read(to).unwrap();
        b[at..at + 4].copy_from_slice(&v.to_le_bytes());
        let n = b.len() - 4;
        let crc = crc32fast::hash(&b[..n]);
        b[n..].copy_from_slice(&crc.to_le_bytes());
        std::fs::write(to, b).unwrap();
    }
}

#[test]
fn forged_checkpoints_are_refused_naming_the_checkpoint() {
    let s = scene("forged", 48, 16);
    let (d, data, run) = (&s.dir, s.data.as_str(), Path::new(&s.out));
    let (code, _, err) = sliceout(&refs(&train_args(data, &s.out, &[])));
    assert_eq!(code, 0, "{err}");
    let good = run.join("last.ckpt");
    let forged = d.join("forged.ckpt");
    let (f, elsewhere) = (forged.to_str().unwrap(), d.join("b"));
    let check = |needles: &[&str]| {
        let eval = ["eval", "--checkpoint", f, "--data", data, "--device", "cpu"].map(String::from).to_vec();
        let resume = resume_args(&forged, data, &["--epochs", "3", "--out", elsewhere.to_str().unwrap()]);
        for args in [refs(&eval), refs(&resume)] {
            fails_with(&args, needles);
            let (_, _, err) = sliceout(&args);
            assert!(!err.contains("--depth") && !err.contains("--widen"), "{args:?} blames a flag never given: {err}");
        }
    };
    forge(&good, &forged, |_| {}, Some((12, 0)));
    check(&["forged.ckpt", "config.depth 0"]);
    forge(&good, &forged, |_| {}, Some((16, u32::MAX)));
    check(&["forged.ckpt", "config.widen 4294967295"]);
    forge(&good, &forged, |ck| ck.tensors[3].data[1] = f32::NAN, None);
    check(&["forged.ckpt", "NaN", "diverged"]);
    forge(&good, &forged, |ck| ck.norm_std[0] = 0.0, None);
    check(&["forged.ckpt", "normalisation"]);
    forge(
        &good,
        &forged,
        |ck| ck.meta.iter_mut().filter(|(k, _)| k == "batch").for_each(|(_, v)| *v = "0".into()),
        None,
    );
    fails_with(&refs(&resume_args(&forged, data, &["--epochs", "3"])), &["forged.ckpt", "batch"]);
}

#[test]
fn a_resumed_run_keeps_the_step_count_it_was_made_with() {
    let s = scene("steps", 40, 8);
    let (d, data, out) = (&s.dir, s.data.as_str(), s.out.as_str());
    let run = d.join("run");
    let (code, _, err) = sliceout(&refs(&train_args(data, out, &[("--limit-train", "24"), ("--batch", "8")])));
    assert_eq!(code, 0, "{err}");
    let ck = run.join("last.ckpt");
    let resume = |extra: &[&str]| resume_args(&ck, data, extra);
    fails_with(&refs(&resume(&["--epochs", "2", "--batch", "16"])), &["--batch", "'16'", "8, the batch of the run"]);
    fails_with(
        &refs(&resume(&["--epochs", "2", "--limit-train", "32"])),
        &["--limit-train", "'32'", "24 training images"],
    );
    // Evaluation reads the test split alone: a folder with only test_batch.bin will do, unless
    // BN is recalibrated (over training batches), which then names the missing file.
    let test_only = d.join("test-only");
    std::fs::create_dir_all(&test_only).unwrap();
    std::fs::copy(d.join("test_batch.bin"), test_only.join("test_batch.bin")).unwrap();
    let test_only = test_only.to_str().unwrap();
    let evaluate = |extra: &[&str]| {
        let base = ["eval", "--checkpoint", ck.to_str().unwrap(), "--data", test_only, "--device", "cpu"];
        sliceout(&[&base[..], extra].concat())
    };
    let (code, so, err) = evaluate(&[]);
    assert!(code == 0 && so.contains("test accuracy"), "{so}\n{err}");
    let (code, _, err) = evaluate(&["--bn-recal", "2"]);
    assert!(code != 0 && err.contains("data_batch_1.bin") && err.contains("missing"), "{err}");
    // A folder holding fewer images than the run trained on is what is named, not a limit the
    // user never gave.
    let small = d.join("small");
    let small = small.to_str().unwrap();
    let (code, _, err) = sliceout(&["data", "synth", "--out", small, "--train", "16", "--test", "8"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = sliceout(&refs(&resume_args(&ck, small, &["--epochs", "2"])));
    assert!(
        code != 0 && err.contains("for --data") && err.contains("24 training images") && err.contains("holds 16"),
        "{err}"
    );
    assert!(!err.contains("--limit-train"), "{err}");
    fails_with(&refs(&resume(&["--epochs", "2", "--schedule", "step"])), &["--schedule", "cosine"]);
    // A finished run resumed with its own --epochs: nothing to train, nothing logged.
    fails_with(&refs(&resume(&[])), &["--epochs", "nothing is left to train"]);
    assert_eq!(metrics_without_times(&run).len(), 1);
    // Without the flags, the run's own batch and images: epoch 2 really trains.
    let (code, so, err) = sliceout(&refs(&resume(&["--epochs", "2"])));
    assert_eq!(code, 0, "{so}\n{err}");
    let line = so.lines().find(|l| l.starts_with("epoch   2/2")).unwrap_or_else(|| panic!("{so}"));
    assert!(!line.contains("loss 0.0000") && !line.contains(" 0 img/s"), "{line}");
    assert!(so.contains("24 train"), "{so}");
    assert_eq!(metrics_without_times(&run).len(), 2);
    // A checkpoint without the stored values (from an older build) still cannot be resumed
    // with a batch that makes its step and epoch meaningless.
    let old = d.join("old.ckpt");
    forge(
        &ck,
        &old,
        |c| c.meta.retain(|(k, _)| !["batch", "train_images", "epochs", "schedule", "history"].contains(&k.as_str())),
        None,
    );
    let args = resume_args(&old, data, &["--epochs", "3", "--batch", "16"]);
    fails_with(&refs(&args), &["old.ckpt", "do not fit", "--batch"]);
}

#[test]
fn run_folders_are_never_overwritten_or_shared() {
    let d = tmp("folders");
    synth(&d, 400, 16);
    let data = d.to_str().unwrap();
    let (a, b) = (d.join("a"), d.join("b"));
    for run in [&a, &b] {
        let (code, _, err) = sliceout(&refs(&train_args(data, run.to_str().unwrap(), &[])));
        assert_eq!(code, 0, "{err}");
    }
    let b_before = std::fs::read(b.join("last.ckpt")).unwrap();
    // Resuming A into B would replace B's run.
    let args = train_args(
        data,
        b.to_str().unwrap(),
        &[("--resume", a.join("last.ckpt").to_str().unwrap()), ("--epochs", "2")],
    );
    fails_with(&refs(&args), &["already holds another run", "--force"]);
    assert_eq!(std::fs::read(b.join("last.ckpt")).unwrap(), b_before);
    // A folder holding only the curves (or only best.ckpt) is a run's too; --force replaces it.
    let c = d.join("c");
    std::fs::create_dir_all(&c).unwrap();
    std::fs::write(c.join("curves.svg"), b"<svg/>").unwrap();
    fails_with(&refs(&train_args(data, c.to_str().unwrap(), &[])), &["curves.svg", "--force"]);
    assert_eq!(std::fs::read(c.join("curves.svg")).unwrap(), b"<svg/>");
    std::fs::write(c.join("best.ckpt"), b"mine").unwrap();
    fails_with(&refs(&train_args(data, c.to_str().unwrap(), &[])), &["best.ckpt", "--resume"]);
    let mut forced = train_args(data, c.to_str().unwrap(), &[]);
    forced.push("--force".into());
    let (code, _, err) = sliceout(&refs(&forced));
    assert_eq!(code, 0, "{err}");
    assert_eq!(metrics_without_times(&c).len(), 1);

    // Two trainers into one folder: the second is refused while the first runs.
    let shared = d.join("shared");
    let args = train_args(data, shared.to_str().unwrap(), &[("--epochs", "50"), ("--widen", "2")]);
    let first = Command::new(BIN)
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let lock = shared.join(".sliceout.lock");
    let t0 = std::time::Instant::now();
    while !lock.exists() && t0.elapsed().as_secs() < 20 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    fails_with(&refs(&args), &["in use by another sliceout process", &format!("pid {}", first.id())]);
    let _ = Command::new("kill").args(["-INT", &first.id().to_string()]).status();
    let out = first.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    assert!(!lock.exists());

    // Runs started together without --out get folders of their own.
    let cwd = d.join("sweep");
    std::fs::create_dir_all(&cwd).unwrap();
    let children: Vec<_> = (0..3)
        .map(|_| {
            let mut args = train_args(data, "unused", &[("--limit-train", "32"), ("--batch", "16")]);
            let at = args.iter().position(|a| a == "--out").unwrap();
            args.drain(at..at + 2);
            Command::new(BIN)
                .args(&args)
                .current_dir(&cwd)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let runs: Vec<_> = std::fs::read_dir(cwd.join("runs")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(runs.len(), 3, "{runs:?}");
    assert!(runs.iter().all(|r| r.join("last.ckpt").exists() && metrics_without_times(r).len() == 1));

    // `data synth` keeps an existing dataset unless --force.
    let before = std::fs::read(d.join("data_batch_1.bin")).unwrap();
    fails_with(
        &["data", "synth", "--out", data, "--train", "10", "--test", "2"],
        &["already holds dataset files", "--force"],
    );
    assert_eq!(std::fs::read(d.join("data_batch_1.bin")).unwrap(), before);
}

#[cfg(unix)]
#[test]
fn a_failed_first_checkpoint_leaves_no_dead_end() {
    // A disk that fills at the first checkpoint, played by a file-size limit (with SIGXFSZ
    // ignored, a write past it fails with EFBIG, as one past a full disk fails with ENOSPC).
    let d = tmp("full");
    synth(&d, 40, 8);
    let run = d.join("run");
    let args = train_args(d.to_str().unwrap(), run.to_str().unwrap(), &[]);
    let line = "trap '' XFSZ; ulimit -f 64; exec \"$0\" \"$@\"";
    let out = Command::new("sh").arg("-c").arg(line).arg(BIN).args(&args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(err.contains("best.ckpt") && !err.contains("panicked"), "{err}");
    // Nothing claims to be a run: no checkpoint, no metrics pointing at one, no temporary file.
    assert_eq!(std::fs::read_dir(&run).unwrap().count(), 0);
    let (code, _, err) = sliceout(&refs(&args));
    assert_eq!(code, 0, "{err}");
}

#[test]
fn non_finite_parameters_are_never_saved() {
    let s = scene("nonfinite", 64, 16);
    let (data, run) = (s.data.as_str(), Path::new(&s.out));
    let (code, _, err) = sliceout(&refs(&train_args(data, &s.out, &[("--lr", "1000"), ("--epochs", "4")])));
    assert_ne!(code, 0);
    assert!(err.contains("training diverged") && err.contains("nothing non-finite was saved"), "{err}");
    // What was saved before is whole and finite, and evaluates.
    for name in ["last.ckpt", "best.ckpt"] {
        let path = run.join(name);
        if path.exists() {
            let ck = sliceout::io::checkpoint::load(&path).unwrap();
            assert!(ck.tensors.iter().all(|t| t.data.iter().all(|x| x.is_finite())), "{name} holds a non-finite value");
            let (code, _, err) =
                sliceout(&["eval", "--checkpoint", path.to_str().unwrap(), "--data", data, "--device", "cpu"]);
            assert_eq!(code, 0, "{err}");
        }
    }
}

/// Runs the binary, failing the test (after killing it) if it takes more than `limit` seconds.
fn sliceout_within(args: &[&str], limit: u64) -> (i32, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed().as_secs() >= limit {
            child.kill().unwrap();
            panic!("{args:?} still running after {limit} s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).to_string())
}

#[test]
fn empty_and_unbounded_inputs_are_refused() {
    let s = scene("unbounded", 40, 8);
    let (d, data, out) = (&s.dir, s.data.as_str(), s.out.as_str());
    fails_with(&refs(&train_args(data, out, &[("--limit-test", "0")])), &["--limit-test", "'0'", ">= 1"]);
    fails_with(&["eval", "--checkpoint", "x.ckpt", "--data", data, "--limit-test", "0"], &["--limit-test", "'0'"]);
    fails_with(
        &["data", "synth", "--out", d.join("big").to_str().unwrap(), "--train", "1000000000"],
        &["--train", "1000000"],
    );
    #[cfg(unix)]
    {
        // A FIFO where a data file should be would block a reader forever.
        let f = d.join("data_batch_2.bin");
        std::fs::remove_file(&f).unwrap();
        assert!(Command::new("mkfifo").arg(&f).status().unwrap().success());
        let (code, err) = sliceout_within(&refs(&train_args(data, out, &[])), 20);
        assert_ne!(code, 0);
        assert!(err.contains("data_batch_2.bin") && err.contains("not a regular file"), "{err}");
        // Nor is a FIFO or an endless device read as a checkpoint.
        for ck in [f.to_str().unwrap(), "/dev/zero"] {
            let (code, err) = sliceout_within(&["eval", "--checkpoint", ck, "--data", data], 20);
            assert!(code != 0 && err.contains("not a regular file"), "{err}");
            let (code, err) = sliceout_within(&refs(&train_args(data, out, &[("--resume", ck)])), 20);
            assert!(code != 0 && err.contains("not a regular file"), "{err}");
        }
    }
}

#[test]
fn bad_limits_paths_and_late_flags_are_refused_before_any_work() {
    let s = scene("messages", 40, 8);
    let (d, data, out) = (&s.dir, s.data.as_str(), s.out.as_str());
    let (code, _, err) = sliceout(&refs(&train_args(data, out, &[("--limit-train", "0")])));
    assert!(code != 0 && err.contains("--limit-train") && !err.contains("--batch"), "{err}");
    fails_with(&refs(&train_args(data, out, &[("--limit-train", "8")])), &["--batch", "'16'", "--limit-train 8"]);
    fails_with(&refs(&train_args(data, out, &[("--keep", "-0.1")])), &["--keep", "'-0.1'"]);
    fails_with(&refs(&train_args(data, out, &[("--align", "17")])), &["--align", "'17'", "1 to 16"]);
    fails_with(&refs(&train_args(data, out, &[("--batch", "-1")])), &["--batch", "'-1'"]);
    fails_with(
        &refs(&train_args(data, d.join("data_batch_1.bin").to_str().unwrap(), &[])),
        &["--out", "this is a file"],
    );
    // A folder, and a device, where a data file should be.
    let f = d.join("data_batch_3.bin");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::remove_file(&f).unwrap();
    std::fs::create_dir(&f).unwrap();
    fails_with(&refs(&train_args(data, out, &[])), &["data_batch_3.bin", "is a folder, expected a data file"]);
    std::fs::remove_dir(&f).unwrap();
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink("/dev/zero", &f).unwrap();
        fails_with(&refs(&train_args(data, out, &[])), &["data_batch_3.bin", "not a regular file"]);
        std::fs::remove_file(&f).unwrap();
    }
    std::fs::write(&f, bytes).unwrap();
    // Flags that only matter after the work are checked before it (a WRN-28-10 profile on the
    // CPU runs far past the time limit).
    let big = ["profile", "--device", "cpu", "--depth", "28", "--widen", "10", "--batch", "128"];
    let (code, err) = sliceout_within(&[&big[..], &["--format", "svg"]].concat(), 5);
    assert!(code != 0 && err.contains("--format"), "{err}");
    let (code, err) = sliceout_within(&[&big[..], &["--trace", "/nonexistent/t.json"]].concat(), 5);
    assert!(code != 0 && err.contains("--trace") && err.contains("/nonexistent"), "{err}");
}

/// `--batch auto` picks the largest power of two that fits (capped here, and by the training
/// images), says so in one line, and trains with it; a resumed run keeps its own batch.
#[test]
fn batch_auto_picks_a_power_of_two_and_says_which() {
    let s = scene("batch-auto", 40, 8);
    let (data, out) = (s.data.as_str(), s.out.as_str());
    let (code, so, err) = sliceout(&refs(&train_args(data, out, &[("--batch", "auto:32"), ("--epochs", "1")])));
    assert_eq!(code, 0, "{err}");
    let line = so.lines().find(|l| l.starts_with("batch auto:")).expect("a line saying the batch");
    assert!(line.starts_with("batch auto: 32,"), "{line}");
    let ck = sliceout::io::checkpoint::load(&s.dir.join("run/last.ckpt")).unwrap();
    assert_eq!(ck.step, 1, "40 images at batch 32: one step");
    let last = s.dir.join("run/last.ckpt");
    let resume = [("--batch", "auto"), ("--resume", last.to_str().unwrap())];
    fails_with(&refs(&train_args(data, out, &resume)), &["--batch", "'auto'", "--resume"]);
    fails_with(&refs(&train_args(data, out, &[("--batch", "auto:0")])), &["--batch", "auto:CAP"]);
}

/// `train`, `profile` and `bench` on the CPU take the flags that only choose how the GPU runs
/// a step alike: they run, and say in one line on stderr which of them change nothing there and
/// what the CPU does instead. Flags that act on the CPU too (`--fold-bn`), or none, say nothing.
#[test]
fn gpu_only_flags_on_the_cpu_are_named_alike_by_train_profile_and_bench() {
    let d = tmp("gpu-only");
    synth(&d, 32, 16);
    let tiny = ["--depth", "10", "--widen", "1", "--batch", "4", "--steps", "1", "--device", "cpu"];
    let mut runs = 0;
    let commands = |n: usize| -> [Vec<String>; 3] {
        let out = d.join(format!("run{n}"));
        let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<String>>();
        [
            train_args(d.to_str().unwrap(), out.to_str().unwrap(), &[]),
            owned(&[&["profile", "--format", "json"][..], &tiny].concat()),
            owned(&[&["bench", "--keep", "1"][..], &tiny].concat()),
        ]
    };
    for (given, named) in [
        (&["--math", "fp32"][..], &["--math (the CPU computes in fp32)"][..]),
        (
            &["--input-grad", "col2im", "--sgd-group"],
            &["--input-grad", "--sgd-group (the CPU runs the SGD updates one by one)"],
        ),
        (&["--winograd"], &["--winograd (the CPU runs Winograd"]),
        (&["--fold-bn"], &[]),
        (&[], &[]),
    ] {
        for argv in commands(runs) {
            runs += 1;
            let argv: Vec<&str> = argv.iter().map(String::as_str).chain(given.iter().copied()).collect();
            let (code, so, err) = sliceout(&argv);
            assert_eq!(code, 0, "{argv:?}: {err}");
            let notes: Vec<&str> = err.lines().filter(|l| l.starts_with("note: ")).collect();
            if named.is_empty() {
                assert!(notes.is_empty(), "{argv:?}: {err}");
                continue;
            }
            assert_eq!(notes.len(), 1, "{argv:?}: {err}");
            assert!(notes[0].contains("on the CPU these GPU flags change nothing"), "{}", notes[0]);
            assert!(named.iter().all(|n| notes[0].contains(n)), "{argv:?}: {}", notes[0]);
            // The JSON profile is still one document on stdout.
            if argv[0] == "profile" {
                serde_json::from_str::<serde_json::Value>(&so).unwrap();
            }
        }
    }
    // A refusal is still one line: the note comes only once the work has run.
    let [_, profile, bench] = commands(runs);
    let out = d.join("refused");
    let train = train_args(d.to_str().unwrap(), out.to_str().unwrap(), &[("--batch", "64")]);
    for (argv, bad) in [(train, &[][..]), (profile, &["--align", "999"]), (bench, &["--align", "999"])] {
        let argv: Vec<&str> =
            argv.iter().map(String::as_str).chain(["--winograd"]).chain(bad.iter().copied()).collect();
        let (code, _, err) = sliceout(&argv);
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(code == 1 && lines.len() == 1 && lines[0].starts_with("error: "), "{argv:?}: {err}");
    }
    std::fs::remove_dir_all(&d).unwrap();
}
