//! What the integration tests share: the binary run with arguments, a fresh folder per test,
//! and the arguments of a small training run.

use sliceout::backend::DeviceChoice;
use sliceout::schedule::{Lowering, Options};
use sliceout::train::{LrSchedule, TrainArgs};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_sliceout");

/// Runs the binary with `args` in this process's folder: exit status (-1 for a signal), stdout
/// and stderr. Fails the test on panic text in either stream.
pub fn sliceout(args: &[&str]) -> (i32, String, String) {
    run(Command::new(BIN).args(args), args)
}

/// [`sliceout`] run in the folder `cwd` (the tests share one process, so none changes its own).
pub fn sliceout_in(cwd: &Path, args: &[&str]) -> (i32, String, String) {
    run(Command::new(BIN).args(args).current_dir(cwd), args)
}

fn run(cmd: &mut Command, args: &[&str]) -> (i32, String, String) {
    let out = cmd.output().expect("binary runs");
    let (so, se) = (String::from_utf8_lossy(&out.stdout).to_string(), String::from_utf8_lossy(&out.stderr).to_string());
    assert!(!se.contains("panicked") && !so.contains("panicked"), "panic for {args:?}: {se}");
    (out.status.code().unwrap_or(-1), so, se)
}

/// A fresh, empty folder for one test. Named after the calling file as well as `name` and the
/// process: every module's tests run in this one process, and two modules may pick one name.
#[track_caller]
pub fn tmp(name: &str) -> PathBuf {
    let file = Path::new(std::panic::Location::caller().file());
    let module = file.file_stem().unwrap_or_default().to_string_lossy();
    let d = std::env::temp_dir().join(format!("sliceout-{module}-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A WRN-10-1 with SliceOut keep 0.5 on the CPU: 3 epochs of batch 20, quiet.
pub fn args(data: &Path, out: &Path) -> TrainArgs {
    TrainArgs {
        data: data.to_path_buf(),
        dataset: None,
        coarse: false,
        depth: 10,
        widen: 1,
        keep: 0.5,
        align: 1,
        epochs: 3,
        batch: 20,
        lr: 0.05,
        momentum: 0.9,
        wd: 5e-4,
        nesterov: true,
        schedule: LrSchedule::Cosine,
        seed: 3,
        device: DeviceChoice::Cpu,
        math: sliceout::gpu::Math::Fp32,
        out: out.to_path_buf(),
        limit_train: None,
        limit_test: None,
        augment: true,
        checkpoint_every: 0,
        resume: None,
        init: None,
        force: false,
        options: Options::default(),
        lowering: Lowering::default(),
        bn_recal: 0,
        verbose: false,
        stop_after: None,
        allow_changes: false,
        cpu_note: None,
    }
}

/// The tensors of a checkpoint (parameters, momentum, statistics), bit for bit.
pub fn checkpoint_bits(path: &Path) -> Vec<(String, Vec<u32>)> {
    let ck = sliceout::io::checkpoint::load(path).unwrap_or_else(|e| panic!("{e}"));
    ck.tensors.iter().map(|t| (t.name.clone(), t.data.iter().map(|x| x.to_bits()).collect())).collect()
}

/// The lines of a run's `metrics.jsonl` without the wall-clock fields.
pub fn metrics_without_times(run: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let o = v.as_object_mut().unwrap();
            o.remove("seconds");
            o.remove("images_per_s");
            v
        })
        .collect()
}

/// The first C++ compiler that runs, for the tests that build CUDA kernels for the host
/// (`cuda_host.h`). Without one such a test fails when `CI` is set (CI installs one) and is
/// skipped with a note otherwise; `what` names the kernels in that message.
pub fn host_cxx(what: &str) -> Option<&'static str> {
    let found = ["c++", "g++", "clang++"]
        .into_iter()
        .find(|c| Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success()));
    if found.is_none() {
        let msg = format!("no C++ compiler (c++, g++, clang++) to run {what} on the host");
        assert!(std::env::var_os("CI").is_none(), "{msg}");
        eprintln!("skipped: {msg}");
    }
    found
}
