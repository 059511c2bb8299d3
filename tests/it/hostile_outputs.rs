//! Output paths a user may name (`eval --logits`, `export --out`, `profile --trace`, the files
//! of `data synth` and of a run folder) pointed at things a write must never replace: device
//! nodes, FIFOs, symbolic links, folders, the command's own inputs, checkpoints. Each is refused
//! in one line naming the path and what was expected, before any work, and left as it was.
//! Device nodes and FIFOs are made in a temp folder (never the system's own).

use crate::common::{self, sliceout, tmp};
use sliceout::data::synth::write_synthetic;
use sliceout::train::{self, TrainArgs};
use std::os::unix::fs::{symlink, FileTypeExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Fails in one line holding every one of `needles`, having printed nothing (no work was done).
fn refused_before_work(args: &[&str], needles: &[&str]) {
    let (code, so, err) = sliceout(args);
    assert_ne!(code, 0, "{args:?} should fail");
    assert!(so.trim().is_empty(), "{args:?}: work was done before the refusal:\n{so}");
    assert_eq!(err.trim().lines().count(), 1, "{args:?}: one line expected:\n{err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: message lacks '{n}':\n{err}");
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A fresh folder holding a synthetic dataset `data` and a tiny trained run `run`.
fn world(name: &str) -> PathBuf {
    let dir = tmp(name);
    write_synthetic(&dir.join("data"), 20, 8, 1, false).unwrap();
    let args = TrainArgs { epochs: 1, batch: 4, ..common::args(&dir.join("data"), &dir.join("run")) };
    train::train(&args).unwrap();
    dir
}

fn eval_logits(dir: &Path, logits: &Path) -> Vec<String> {
    let (ck, data) = (dir.join("run/last.ckpt"), dir.join("data"));
    ["eval", "--checkpoint", s(&ck), "--data", s(&data), "--device", "cpu", "--batch", "4", "--logits", s(logits)]
        .map(String::from)
        .to_vec()
}

fn export_to(dir: &Path, out: &Path, format: &str) -> Vec<String> {
    let ck = dir.join("run/last.ckpt");
    ["export", "--checkpoint", s(&ck), "--out", s(out), "--format", format].map(String::from).to_vec()
}

fn profile_trace(trace: &Path) -> Vec<String> {
    let args = ["profile", "--device", "cpu", "--depth", "10", "--widen", "1", "--batch", "4", "--steps", "1"];
    args.iter().map(|a| a.to_string()).chain(["--trace".into(), s(trace).into()]).collect()
}

/// Every command that writes a user-named file, aimed at `target`.
fn writers(dir: &Path, target: &Path) -> [Vec<String>; 3] {
    [eval_logits(dir, target), export_to(dir, target, "safetensors"), profile_trace(target)]
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// A character device like `/dev/null` (1, 3) made in `dir`, or `None` where mknod is not
/// allowed.
fn null_device(dir: &Path) -> Option<PathBuf> {
    let p = dir.join("null");
    let made = Command::new("mknod").args(["-m", "666", s(&p), "c", "1", "3"]).status();
    made.is_ok_and(|st| st.success()).then_some(p)
}

fn fifo(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    assert!(Command::new("mkfifo").arg(&p).status().unwrap().success());
    p
}

#[test]
fn devices_fifos_links_and_folders_are_refused_and_left_as_they_are() {
    let dir = world("kinds");
    let dev = null_device(&dir);
    let fifo = fifo(&dir, "fifo");
    let folder = dir.join("folder");
    std::fs::create_dir(&folder).unwrap();
    let regular = dir.join("regular.json");
    std::fs::write(&regular, b"mine").unwrap();
    let to_regular = dir.join("to-regular");
    symlink(&regular, &to_regular).unwrap();
    let to_fifo = dir.join("to-fifo");
    symlink(&fifo, &to_fifo).unwrap();
    let dangling = dir.join("dangling");
    symlink(dir.join("nothing-here"), &dangling).unwrap();

    let mut cases = vec![
        (fifo.clone(), "is a FIFO"),
        (folder.clone(), "is a folder"),
        (to_fifo.clone(), "is a symbolic link to a FIFO"),
        (to_regular.clone(), "name the file itself"),
        (dangling.clone(), "is a symbolic link to"),
    ];
    if let Some(dev) = &dev {
        cases.push((dev.clone(), "is a character device"));
        let to_dev = dir.join("to-dev");
        symlink(dev, &to_dev).unwrap();
        cases.push((to_dev, "is a symbolic link to a character device"));
    }
    for (target, what) in &cases {
        for args in writers(&dir, target) {
            refused_before_work(&refs(&args), &[s(target), what, "expected a regular file"]);
        }
    }
    if let Some(dev) = &dev {
        assert!(std::fs::metadata(dev).unwrap().file_type().is_char_device());
    }
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
    assert!(folder.is_dir());
    for link in [&to_regular, &to_fifo, &dangling] {
        assert!(std::fs::symlink_metadata(link).unwrap().file_type().is_symlink(), "{}", link.display());
    }
    assert_eq!(std::fs::read(&regular).unwrap(), b"mine");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn inputs_and_checkpoints_are_never_written_over() {
    let dir = world("inputs");
    let (data, run) = (dir.join("data"), dir.join("run"));
    let test_batch = data.join("test_batch.bin");
    let train_batch = data.join("data_batch_2.bin");
    let before: Vec<Vec<u8>> = [&test_batch, &train_batch].iter().map(|p| std::fs::read(p).unwrap()).collect();
    // The data files read, by their own names, by another spelling and through a hard link.
    let hard = dir.join("hard-link.bin");
    std::fs::hard_link(&train_batch, &hard).unwrap();
    for out in [test_batch.clone(), data.join(".").join("data_batch_2.bin"), hard] {
        let args = eval_logits(&dir, &out);
        refused_before_work(&refs(&args), &[s(&out), "a file other than", "which this command reads"]);
    }
    assert_eq!(std::fs::read(&test_batch).unwrap(), before[0]);
    assert_eq!(std::fs::read(&train_batch).unwrap(), before[1]);
    // The checkpoint read, and another checkpoint, for every writer.
    let best = std::fs::read(run.join("best.ckpt")).unwrap();
    let last = run.join("last.ckpt");
    for args in writers(&dir, &last) {
        let needle = if args[0] == "profile" { "sliceout checkpoint" } else { "which this command reads" };
        refused_before_work(&refs(&args), &[s(&last), needle]);
    }
    for format in ["safetensors", "onnx"] {
        let args = export_to(&dir, &run.join("best.ckpt"), format);
        refused_before_work(&refs(&args), &["best.ckpt", "a file other than a sliceout checkpoint"]);
    }
    let args = eval_logits(&dir, &run.join("best.ckpt"));
    refused_before_work(&refs(&args), &["best.ckpt", "a file other than a sliceout checkpoint"]);
    assert_eq!(std::fs::read(run.join("best.ckpt")).unwrap(), best);
    // A run's own files in its folder are the run's: its metrics and curves too, for every
    // writer; another name in the same folder is fine.
    for name in ["metrics.jsonl", "curves.svg"] {
        let target = run.join(name);
        let kept = std::fs::read(&target).unwrap();
        for args in writers(&dir, &target) {
            refused_before_work(&refs(&args), &[s(&target), "the training run's own files"]);
        }
        assert_eq!(std::fs::read(&target).unwrap(), kept);
    }
    let beside = run.join("model.safetensors");
    let (code, _, err) = sliceout(&refs(&export_to(&dir, &beside, "safetensors")));
    assert!(code == 0 && beside.exists(), "{err}");
    // Any other regular file is replaced, as before.
    let other = dir.join("old.safetensors");
    std::fs::write(&other, b"old").unwrap();
    let (code, _, err) = sliceout(&refs(&eval_logits(&dir, &other)));
    assert_eq!(code, 0, "{err}");
    assert_ne!(std::fs::read(&other).unwrap(), b"old");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn folders_that_cannot_take_the_file_are_refused_before_any_work() {
    let dir = world("folders");
    let file = dir.join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let cases = [(dir.join("missing").join("out.bin"), "does not exist"), (file.join("out.bin"), "is not a folder")];
    for (target, why) in &cases {
        for args in writers(&dir, target) {
            refused_before_work(&refs(&args), &[s(target), "a file in an existing folder", why]);
        }
    }
    // Permission bits do not stop root: the case is checked only where they stop this process.
    let read_only = dir.join("read-only");
    std::fs::create_dir(&read_only).unwrap();
    let mut perms = std::fs::metadata(&read_only).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o555);
    std::fs::set_permissions(&read_only, perms).unwrap();
    if std::fs::write(read_only.join("probe"), b"").is_err() {
        let target = read_only.join("out.bin");
        for args in writers(&dir, &target) {
            refused_before_work(&refs(&args), &[s(&target), "a file in a folder this process can write"]);
        }
    } else {
        eprintln!("skipping the read-only folder case: this process writes there anyway (root)");
        std::fs::remove_file(read_only.join("probe")).unwrap();
    }
    assert_eq!(std::fs::read_dir(&read_only).unwrap().count(), 0, "a probe file was left behind");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_longest_legal_file_names_can_be_written() {
    let dir = world("long");
    for (name, args) in [
        ("l".repeat(250), eval_logits as fn(&Path, &Path) -> Vec<String>),
        (format!("{}.onnx", "é".repeat(125)), |d: &Path, o: &Path| export_to(d, o, "onnx")),
        ("t".repeat(255), |_: &Path, o: &Path| profile_trace(o)),
    ] {
        let out = dir.join(&name);
        let (code, _, err) = sliceout(&refs(&args(&dir, &out)));
        assert_eq!(code, 0, "{} bytes: {err}", name.len());
        assert!(out.is_file());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn data_and_run_files_that_are_not_regular_files_stop_before_anything_is_replaced() {
    let dir = world("synth-run");
    // data synth --force: a FIFO where the last file goes costs none of the files before it.
    let data = dir.join("data");
    let first = std::fs::read(data.join("data_batch_1.bin")).unwrap();
    std::fs::remove_file(data.join("test_batch.bin")).unwrap();
    fifo(&data, "test_batch.bin");
    let (code, _, err) = sliceout(&["data", "synth", "--out", s(&data), "--train", "25", "--test", "4", "--force"]);
    assert_ne!(code, 0);
    assert!(err.contains("test_batch.bin: is a FIFO, expected a regular file"), "{err}");
    assert_eq!(std::fs::read(data.join("data_batch_1.bin")).unwrap(), first);
    // A resumed run whose curves.svg is a symbolic link: refused before it trains.
    let run = dir.join("run");
    let elsewhere = dir.join("my-curves.svg");
    std::fs::rename(run.join("curves.svg"), &elsewhere).unwrap();
    symlink(&elsewhere, run.join("curves.svg")).unwrap();
    let last = std::fs::read(run.join("last.ckpt")).unwrap();
    std::fs::remove_file(data.join("test_batch.bin")).unwrap();
    write_synthetic(&data, 20, 8, 1, true).unwrap();
    let ck = run.join("last.ckpt");
    let resume = ["train", "--resume", s(&ck), "--data", s(&data), "--device", "cpu", "--epochs", "2"];
    let (code, _, err) = sliceout(&resume);
    assert_ne!(code, 0);
    assert!(err.contains("curves.svg: is a symbolic link to") && err.contains("name the file itself"), "{err}");
    assert!(std::fs::symlink_metadata(run.join("curves.svg")).unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read(&ck).unwrap(), last);
    std::fs::remove_dir_all(&dir).unwrap();
}
