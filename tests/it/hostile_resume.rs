//! A resume continues the same run: the checkpoint records every flag that changes the numbers,
//! a bare resume line (the one Ctrl-C prints) takes them from it and ends bit-identical to an
//! uninterrupted run, a flag given with another value is refused naming it unless `--change`
//! says so (and the metrics then record the change), a resume without `--data` uses the run's
//! folder or asks for one, and values a 32-bit float cannot hold are refused.

use crate::common::{self, checkpoint_bits, metrics_without_times, sliceout_in, tmp, BIN};
use clap::Parser;
use sliceout::cmd::flags::{Cli, Command};
use sliceout::io::checkpoint;
use sliceout::schedule::{Options, UpdateAt};
use sliceout::train::{self, TrainArgs};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// Fails with one short message holding every one of `needles`.
fn fails_with(cwd: &Path, args: &[&str], needles: &[&str]) -> String {
    let (code, so, err) = sliceout_in(cwd, args);
    assert_ne!(code, 0, "{args:?} should fail:\n{so}\n{err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: message lacks '{n}':\n{err}");
    }
    assert_eq!(err.lines().filter(|l| !l.trim().is_empty()).count(), 1, "{args:?}: not one line:\n{err}");
    err
}

fn synth(dir: &Path, train: usize, test: usize) {
    let d = sliceout::data::synth::write_synthetic(dir, train, test, 1, false);
    d.unwrap_or_else(|e| panic!("{e}"));
}

/// Flags that change the numbers, none at its default.
const NON_DEFAULT: &[&str] = &[
    "--device",
    "cpu",
    "--depth",
    "10",
    "--widen",
    "1",
    "--keep",
    "0.5",
    "--batch",
    "8",
    "--epochs",
    "3",
    "--lr",
    "0.05",
    "--momentum",
    "0.8",
    "--wd",
    "0.001",
    "--no-nesterov",
    "--schedule",
    "step",
    "--seed",
    "7",
    "--align",
    "2",
    "--bn-recal",
    "2",
    "--limit-test",
    "12",
    "--math",
    "fp32",
    "--precision",
    "bf16",
    "--col-chunk",
    "3",
    "--no-in-place",
];

fn train_argv(data: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let base = ["train", "--data", data.to_str().unwrap(), "--out", out.to_str().unwrap()];
    base.iter().chain(NON_DEFAULT).chain(extra).map(|s| s.to_string()).collect()
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The run `argv` (without the program name) describes, as the binary would make it, quiet.
fn parsed(argv: &[String]) -> TrainArgs {
    let cli = Cli::try_parse_from(std::iter::once("sliceout".to_string()).chain(argv.iter().cloned()));
    let Some(Command::Train(f)) = cli.unwrap_or_else(|e| panic!("{e}")).command else { unreachable!() };
    let (mut args, demo) = sliceout::cmd::train::checked_args(&f).unwrap_or_else(|e| panic!("{e}"));
    assert!(!demo);
    args.verbose = false;
    args
}

/// Trains `argv` in process, stopped (checkpointed, as on Ctrl-C) after step `stop`.
fn train_until(argv: &[String], stop: usize) {
    let s = train::train(&TrainArgs { stop_after: Some(stop), ..parsed(argv) }).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.stopped_at, Some(stop));
}

fn meta(ck: &Path, key: &str) -> Option<String> {
    checkpoint::load(ck).unwrap().meta(key).map(str::to_string)
}

/// A tiny dataset and an uninterrupted run of the non-default flags, to compare with.
struct Scene {
    dir: PathBuf,
    data: PathBuf,
    full: PathBuf,
}

fn scene(name: &str) -> Scene {
    scene_of(name, 80)
}

/// A scene of `train` training images (10 steps an epoch at 80).
fn scene_of(name: &str, train: usize) -> Scene {
    let dir = tmp(name);
    let data = dir.join("data");
    synth(&data, train, 16);
    let full = dir.join("full");
    let (code, so, err) = sliceout_in(&dir, &refs(&train_argv(&data, &full, &[])));
    assert_eq!(code, 0, "{so}\n{err}");
    Scene { dir, data, full }
}

impl Scene {
    /// The run `name`, stopped after step `stop` of the non-default flags.
    fn stopped(&self, name: &str, stop: usize) -> PathBuf {
        let out = self.dir.join(name);
        train_until(&train_argv(&self.data, &out, &[]), stop);
        out
    }

    fn same_as_full(&self, run: &Path) {
        for ck in ["last.ckpt", "best.ckpt"] {
            assert!(
                checkpoint_bits(&run.join(ck)) == checkpoint_bits(&self.full.join(ck)),
                "{}: {ck} differs",
                run.display()
            );
        }
        assert_eq!(metrics_without_times(run), metrics_without_times(&self.full), "{}: metrics differ", run.display());
    }
}

#[test]
fn a_bare_resume_continues_the_same_run_bit_for_bit() {
    let s = scene("bare");
    // Mid-epoch and at an epoch's end (10 steps an epoch).
    for stop in [13, 10] {
        let run = s.stopped(&format!("stop-{stop}"), stop);
        let ck = run.join("last.ckpt");
        // Nothing but the checkpoint (and the device, which is the machine's, not the run's).
        let (code, so, err) = sliceout_in(&s.dir, &["train", "--resume", ck.to_str().unwrap(), "--device", "cpu"]);
        assert_eq!(code, 0, "{so}\n{err}");
        assert!(so.contains(&format!("data: {}", s.data.display())), "{so}");
        assert!(!so.contains("--change"), "{so}");
        s.same_as_full(&run);
    }
    // The flags are in the checkpoint, as given.
    let ck = s.full.join("last.ckpt");
    let data = std::path::absolute(&s.data).unwrap();
    for (key, value) in [
        ("lr", "0.05"),
        ("momentum", "0.8"),
        ("wd", "0.001"),
        ("nesterov", "false"),
        ("seed", "7"),
        ("align", "2"),
        ("augment", "true"),
        ("precision", "bf16"),
        ("math", "fp32"),
        ("bn_recal", "2"),
        ("test_images", "12"),
        ("col_chunk", "3"),
        ("col_budget", "0"),
        ("in_place", "false"),
        ("input_grad", "conv"),
        ("winograd", "false"),
        ("schedule", "step"),
        ("data", data.to_str().unwrap()),
    ] {
        assert_eq!(meta(&ck, key).as_deref(), Some(value), "metadata {key}");
    }
}

/// The checkpoint resumed is read once, when the flags take their defaults from it, and that
/// reading is what the run restores: the file garbled after that changes nothing, and the run
/// ends as the uninterrupted one.
#[test]
fn the_checkpoint_resumed_is_read_once() {
    let s = scene("read-once");
    let run = s.stopped("run", 13);
    let ck = run.join("last.ckpt");
    let argv = ["sliceout", "train", "--resume", ck.to_str().unwrap(), "--device", "cpu"];
    let Some(Command::Train(f)) = Cli::try_parse_from(argv).unwrap().command else { unreachable!() };
    let (mut args, _, resumed) = sliceout::cmd::train::checked_run(&f).unwrap();
    args.verbose = false;
    assert!(resumed.is_some());
    std::fs::write(&ck, b"not a checkpoint any more").unwrap();
    assert!(train::train(&args).is_err_and(|e| e.to_string().contains("not a sliceout checkpoint")));
    train::train_on(&args, None, resumed).unwrap_or_else(|e| panic!("{e}"));
    s.same_as_full(&run);
}

#[test]
fn a_resume_with_the_runs_own_values_is_accepted_silently() {
    let s = scene("same");
    let run = s.stopped("run", 13);
    let ck = run.join("last.ckpt");
    let argv = [
        "train",
        "--resume",
        ck.to_str().unwrap(),
        "--data",
        s.data.to_str().unwrap(),
        "--device",
        "cpu",
        "--lr",
        "5e-2",
        "--momentum",
        "0.8",
        "--no-nesterov",
        "--seed",
        "7",
        "--precision",
        "bf16",
        "--limit-test",
        "12",
        "--no-in-place",
        "--col-chunk",
        "3",
    ];
    let (code, so, err) = sliceout_in(&s.dir, &argv);
    assert_eq!(code, 0, "{so}\n{err}");
    assert!(!so.contains("--change") && !so.contains("was "), "{so}");
    s.same_as_full(&run);
}

#[test]
fn a_resume_with_a_different_value_is_refused_naming_the_flag() {
    let s = scene("differ");
    let run = s.stopped("run", 13);
    let ck = run.join("last.ckpt");
    let before: Vec<_> = ["last.ckpt", "metrics.jsonl"].iter().map(|f| std::fs::read(run.join(f)).ok()).collect();
    for (given, runs) in [
        (&["--lr", "0.5"][..], "--lr 0.05"),
        (&["--momentum", "0"], "--momentum 0.8"),
        (&["--wd", "0"], "--wd 0.001"),
        (&["--nesterov"], "--no-nesterov"),
        (&["--schedule", "cosine"], "--schedule step"),
        (&["--seed", "8"], "--seed 7"),
        (&["--align", "1"], "--align 2"),
        (&["--no-augment"], "--augment"),
        (&["--precision", "fp32"], "--precision bf16"),
        (&["--math", "tf32"], "--math fp32"),
        (&["--bn-recal", "0"], "--bn-recal 2"),
        (&["--limit-test", "16"], "--limit-test 12"),
        (&["--col-chunk", "0"], "--col-chunk 3"),
        (&["--col-budget", "8"], "no --col-budget"),
        (&["--input-grad", "col2im"], "--input-grad conv"),
        (&["--winograd"], "--no-winograd"),
        (&["--in-place"], "--no-in-place"),
    ] {
        let base = ["train", "--resume", ck.to_str().unwrap(), "--device", "cpu"];
        let argv = [&base[..], given].concat();
        let msg = fails_with(&s.dir, &argv, &[given[0], runs, "--change", ck.to_str().unwrap()]);
        assert!(msg.contains(&given.join(" ")), "{msg}");
    }
    let after: Vec<_> = ["last.ckpt", "metrics.jsonl"].iter().map(|f| std::fs::read(run.join(f)).ok()).collect();
    assert!(before == after, "a refused resume changed the run's files");
    // The run still resumes to the uninterrupted one.
    let (code, so, err) = sliceout_in(&s.dir, &["train", "--resume", ck.to_str().unwrap(), "--device", "cpu"]);
    assert_eq!(code, 0, "{so}\n{err}");
    s.same_as_full(&run);
}

#[test]
fn change_applies_the_flags_and_the_metrics_record_it() {
    let s = scene("change");
    let run = s.stopped("run", 13);
    let ck = run.join("last.ckpt");
    let ck_s = ck.to_str().unwrap();
    // Changed mid-epoch 2, then stopped again before that epoch ends: the change must survive
    // into the epoch's line all the same.
    let argv: Vec<String> = ["train", "--resume", ck_s, "--device", "cpu", "--lr", "0.02", "--nesterov", "--change"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let args = parsed(&argv);
    assert_eq!((args.lr, args.nesterov, args.momentum), (0.02, true, 0.8));
    assert!(args.allow_changes);
    let stopped = train::train(&TrainArgs { stop_after: Some(16), ..args }).unwrap();
    assert_eq!(stopped.stopped_at, Some(16));
    assert_eq!(meta(&ck, "lr").as_deref(), Some("0.02"));
    assert!(meta(&ck, "changed").is_some_and(|c| c.contains("\"lr\"")), "{:?}", meta(&ck, "changed"));
    // The rest needs no flag: the run now is at lr 0.02 with Nesterov.
    let (code, so, err) = sliceout_in(&s.dir, &["train", "--resume", ck_s, "--device", "cpu"]);
    assert_eq!(code, 0, "{so}\n{err}");
    let lines = metrics_without_times(&run);
    assert_eq!(lines.len(), 3);
    let changed = serde_json::json!([
        {"setting": "lr", "from": "0.05", "to": "0.02"},
        {"setting": "nesterov", "from": "false", "to": "true"},
    ]);
    assert_eq!(lines[1]["changed"], changed, "{:?}", lines[1]);
    assert!(lines[0].get("changed").is_none() && lines[2].get("changed").is_none(), "{lines:?}");
    assert!(lines[2]["train_loss"] != metrics_without_times(&s.full)[2]["train_loss"], "the change changed nothing");
    // The metrics, old lines and new, read back.
    let read = sliceout::io::metrics::read_jsonl(&run.join("metrics.jsonl")).unwrap();
    assert_eq!(read[1].changed.len(), 2);
    // The printed line says what changed.
    let other = s.stopped("printed", 13);
    let ck = other.join("last.ckpt");
    let argv = ["train", "--resume", ck.to_str().unwrap(), "--device", "cpu", "--seed", "9", "--change"];
    let (code, so, err) = sliceout_in(&s.dir, &argv);
    assert_eq!(code, 0, "{so}\n{err}");
    assert!(so.lines().any(|l| l.contains("--change") && l.contains("--seed 9") && l.contains("--seed 7")), "{so}");
    // Without --resume there is nothing to change.
    let (code, _, err) = sliceout_in(&s.dir, &refs(&train_argv(&s.data, &s.dir.join("x"), &["--change"])));
    assert!(code != 0 && err.contains("--change") && err.contains("--resume"), "{err}");
}

/// Every switch a run can be started with can be turned back with `--change`: the run of
/// `--no-in-place` (and one of `--winograd`) takes `--in-place` (and `--no-winograd`), refused
/// without `--change`, and the metrics list the change.
#[test]
fn switches_a_run_was_started_with_can_be_turned_back_with_change() {
    let s = scene("switch-back");
    let out = s.dir.join("run");
    train_until(&train_argv(&s.data, &out, &["--winograd"]), 13);
    let ck = out.join("last.ckpt");
    let ck_s = ck.to_str().unwrap();
    let resume = |extra: &[&str]| -> Vec<String> {
        ["train", "--resume", ck_s, "--device", "cpu"].iter().chain(extra).map(|s| s.to_string()).collect()
    };
    let kept = parsed(&resume(&[]));
    assert!(!kept.options.in_place && kept.lowering.winograd);
    fails_with(&s.dir, &refs(&resume(&["--in-place"])), &["--in-place", "--change"]);
    fails_with(&s.dir, &refs(&resume(&["--no-winograd"])), &["--no-winograd", "--change"]);
    let back = parsed(&resume(&["--in-place", "--no-winograd", "--change"]));
    assert!(back.options.in_place && !back.lowering.winograd);
    train::train(&back).unwrap_or_else(|e| panic!("{e}"));
    let changed = &metrics_without_times(&out)[1]["changed"];
    let settings: Vec<&str> = changed.as_array().unwrap().iter().map(|c| c["setting"].as_str().unwrap()).collect();
    assert!(settings.contains(&"in_place") && settings.contains(&"winograd"), "{changed}");
}

#[test]
fn a_resume_without_data_uses_the_runs_folder_or_asks_for_one() {
    let s = scene("no-data");
    let run = s.stopped("run", 13);
    let ck = run.join("last.ckpt");
    // An older checkpoint records no folder: refused, asking for --data; neither the demo's
    // synthetic set nor CIFAR-10 is used, nothing is generated.
    let mut c = checkpoint::load(&ck).unwrap();
    c.meta.retain(|(k, _)| k != "data");
    checkpoint::save(&ck, &c).unwrap();
    let old = ck.clone();
    let cwd = s.dir.join("elsewhere");
    std::fs::create_dir_all(&cwd).unwrap();
    fails_with(&cwd, &["train", "--resume", old.to_str().unwrap(), "--device", "cpu"], &["last.ckpt", "--data"]);
    assert!(std::fs::read_dir(&cwd).unwrap().next().is_none(), "a refused resume wrote into the working folder");
    // With --data it resumes as before.
    let (code, so, err) = sliceout_in(
        &cwd,
        &["train", "--resume", old.to_str().unwrap(), "--data", s.data.to_str().unwrap(), "--device", "cpu"],
    );
    assert_eq!(code, 0, "{so}\n{err}");
    s.same_as_full(&run);
    // A recorded folder that is gone is named.
    let moved = s.dir.join("moved");
    std::fs::rename(&s.data, &moved).unwrap();
    let run2 = s.stopped_at_data(&moved, "run2", 13);
    std::fs::rename(&moved, s.dir.join("gone")).unwrap();
    let (code, _, err) = sliceout_in(&cwd, &["train", "--resume", run2.join("last.ckpt").to_str().unwrap()]);
    assert!(code != 0 && err.contains(moved.to_str().unwrap()), "{err}");
}

impl Scene {
    fn stopped_at_data(&self, data: &Path, name: &str, stop: usize) -> PathBuf {
        let out = self.dir.join(name);
        train_until(&train_argv(data, &out, &[]), stop);
        out
    }
}

/// Waits for the line starting with `prefix` on `reader`, returning it; `None` at the end.
fn line_starting(reader: &mut impl BufRead, prefix: &str, seen: &mut String) -> Option<String> {
    let mut line = String::new();
    while reader.read_line(&mut line).ok()? > 0 {
        seen.push_str(&line);
        if line.starts_with(prefix) {
            return Some(line.trim_end().to_string());
        }
        line.clear();
    }
    None
}

#[test]
fn the_line_ctrl_c_prints_is_a_shell_command_that_resumes_the_run() {
    // 50 steps an epoch: the interrupt lands long before the run's end.
    let s = scene_of("ctrl-c", 400);
    // Paths a shell would split, expand or choke on.
    let data = s.dir.join("data 'q' \"d\" $HOME `x` \\ ;&");
    std::fs::rename(&s.data, &data).unwrap();
    let out = s.dir.join("run $PATH 'a' b");
    let mut child = std::process::Command::new(BIN)
        .args(train_argv(&data, &out, &[]))
        .current_dir(&s.dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    assert!(line_starting(&mut stdout, "output:", &mut seen).is_some(), "{seen}");
    // The handler is installed right after that line: interrupt as a terminal's Ctrl-C would.
    std::thread::sleep(std::time::Duration::from_millis(100));
    let kill = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let line = line_starting(&mut stdout, "resume with: ", &mut seen).unwrap_or_else(|| panic!("{seen}"));
    assert_eq!(child.wait().unwrap().code(), Some(130), "{seen}");
    let command = line.strip_prefix("resume with: ").unwrap();
    assert!(command.starts_with("sliceout train --resume "), "{command}");
    // `sliceout` as a shell function running the binary under test.
    let script = format!("sliceout() {{ \"$0\" \"$@\"; }}; {command}");
    let resumed =
        std::process::Command::new("sh").arg("-c").arg(&script).arg(BIN).current_dir(&s.dir).output().unwrap();
    let (so, se) = (String::from_utf8_lossy(&resumed.stdout), String::from_utf8_lossy(&resumed.stderr));
    assert_eq!(resumed.status.code(), Some(0), "{script}\n{so}\n{se}");
    s.same_as_full(&out);
}

#[test]
fn values_a_32_bit_float_cannot_hold_are_refused() {
    let d = tmp("f32");
    let data = d.join("data");
    synth(&data, 40, 8);
    let out = d.join("run");
    let fresh = |flag: &[&str]| -> Vec<String> {
        let base = ["train", "--data", data.to_str().unwrap(), "--out", out.to_str().unwrap(), "--device", "cpu"];
        base.iter().chain(flag).map(|s| s.to_string()).collect()
    };
    for (flag, value, expected) in [
        ("--momentum", "0.99999999999", "0.99999994"),
        ("--momentum", "0.99999998", "0.99999994"),
        ("--lr", "1e39", "3.4e38"),
        ("--lr", "1e-50", "3.4e38"),
        ("--wd", "1e39", "3.4e38"),
        ("--wd", "1e-46", "3.4e38"),
    ] {
        let argv = fresh(&[flag, value]);
        let msg = fails_with(&d, &refs(&argv), &[flag, value, expected]);
        assert!(msg.contains("32-bit"), "{msg}");
        assert!(!out.exists(), "a refused run made {}", out.display());
    }
    // The largest that hold are taken.
    for (flag, value) in [("--momentum", "0.99999994"), ("--lr", "3.4e38"), ("--wd", "1e-45"), ("--lr", "0")] {
        let a = parsed(&fresh(&[flag, value]));
        a.validate().unwrap_or_else(|e| panic!("{flag} {value}: {e}"));
    }
}

/// The memory options a checkpoint does not record change no number: a run resumed with
/// another value of them continues bit-identically.
#[test]
fn memory_options_left_unrecorded_change_no_number() {
    let d = tmp("unrecorded");
    let data = d.join("data");
    synth(&data, 80, 16);
    let run = |name: &str, options: Options| {
        let out = d.join(name);
        let args = TrainArgs { options, epochs: 1, batch: 16, ..common::args(&data, &out) };
        train::train(&args).unwrap();
        checkpoint_bits(&out.join("last.ckpt"))
    };
    let base = run("base", Options::default());
    assert!(run("no-recompute", Options { recompute: false, ..Options::default() }) == base, "--no-recompute");
    assert!(run("update-end", Options { update: UpdateAt::End, ..Options::default() }) == base, "--update end");
    // One the checkpoint records does change them.
    assert!(run("col-chunk", Options { col_chunk: 3, ..Options::default() }) != base, "--col-chunk");
}
