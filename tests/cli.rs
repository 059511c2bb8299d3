//! The binary as a user meets it: every bad input gets one clear line naming the file or value
//! and what was expected, a non-zero exit, no panic, and nothing in the output folder is lost.

use std::path::{Path, PathBuf};
use std::process::Command;

fn sliceout(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sliceout")).args(args).output().expect("binary runs");
    let (so, se) = (String::from_utf8_lossy(&out.stdout).to_string(), String::from_utf8_lossy(&out.stderr).to_string());
    assert!(!se.contains("panicked") && !so.contains("panicked"), "panic for {args:?}: {se}");
    (out.status.code().unwrap_or(-1), so, se)
}

/// Fails with a message containing every one of `needles`.
fn fails_with(args: &[&str], needles: &[&str]) {
    let (code, _, err) = sliceout(args);
    assert_ne!(code, 0, "{args:?} should fail");
    for n in needles {
        assert!(err.contains(n), "{args:?}: message lacks '{n}':\n{err}");
    }
    assert!(err.lines().filter(|l| !l.trim().is_empty()).count() <= 4, "{args:?}: message too long:\n{err}");
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sliceout-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
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
    let d = tmp("flags");
    synth(&d, 40, 10);
    let data = d.to_str().unwrap();
    let out = d.join("run");
    let out = out.to_str().unwrap();
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
}

#[test]
fn missing_and_corrupt_data_files_are_named() {
    let missing = std::env::temp_dir().join("sliceout-no-such-folder");
    fails_with(&refs(&train_args(missing.to_str().unwrap(), "/tmp/x", &[])), &["sliceout-no-such-folder"]);

    let d = tmp("data");
    synth(&d, 40, 10);
    let data = d.to_str().unwrap();
    let out = d.join("run");
    let out = out.to_str().unwrap();
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
    let d = tmp("ckpt");
    synth(&d, 48, 16);
    let data = d.to_str().unwrap();
    let run = d.join("run");
    let out = run.to_str().unwrap();
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
    let d = tmp("nan");
    synth(&d, 64, 16);
    let data = d.to_str().unwrap();
    let run = d.join("run");
    let out = run.to_str().unwrap();
    let (code, _, err) = sliceout(&refs(&train_args(data, out, &[])));
    assert_eq!(code, 0, "{err}");
    let good = std::fs::read(run.join("last.ckpt")).unwrap();
    let ck = run.join("last.ckpt");
    let resume = train_args(data, out, &[("--resume", ck.to_str().unwrap()), ("--epochs", "3"), ("--lr", "1e30")]);
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
    let child = Command::new(env!("CARGO_BIN_EXE_sliceout"))
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

#[test]
fn a_trainer_killed_at_random_moments_always_leaves_a_loadable_checkpoint() {
    // Checkpoints every step, so kills land in the middle of writes too.
    let d = tmp("kill");
    synth(&d, 160, 16);
    let mut rng = sliceout::rng::Rng::new(42, 1);
    let mut loaded = 0;
    for round in 0..8 {
        let run = d.join(format!("run{round}"));
        let args = train_args(
            d.to_str().unwrap(),
            run.to_str().unwrap(),
            &[("--epochs", "20"), ("--checkpoint-every", "1"), ("--batch", "8")],
        );
        let mut child = Command::new(env!("CARGO_BIN_EXE_sliceout"))
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300 + rng.below(1200) as u64));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let ck = run.join("last.ckpt");
        if ck.exists() {
            let c = sliceout::io::checkpoint::load(&ck).unwrap_or_else(|e| panic!("round {round}: {e}"));
            assert!(c.step > 0);
            loaded += 1;
        }
    }
    assert!(loaded >= 4, "only {loaded} of 8 runs got as far as a checkpoint");
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
