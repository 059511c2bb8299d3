//! Hostile input fuzzed in process: thousands of random command lines for every command
//! (awkward numbers, overflows, negative and non-numeric values, files where folders belong and
//! the reverse) and thousands of checkpoints whose configuration, metadata, counters and values
//! are random under a valid CRC, evaluated and resumed. Nothing may panic or hang; whatever is
//! accepted must run (training is stopped after one step) and say something sane.

use crate::common::{self, tmp};
use clap::Parser;
use sliceout::backend::DeviceChoice;
use sliceout::cmd;
use sliceout::cmd::flags::{Cli, Command, DataCommand, Format};
use sliceout::data::synth::write_synthetic;
use sliceout::io::checkpoint::{self, Checkpoint};
use sliceout::rng::Rng;
use sliceout::train::{self, TrainArgs};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// No single case may take longer than this: a hang fails the test instead of stalling it.
const CASE_LIMIT: Duration = Duration::from_secs(20);

fn pick<'a>(rng: &mut Rng, values: &[&'a str]) -> &'a str {
    values[rng.below(values.len())]
}

/// A command line: `words`, then each `(flag, values)` with probability `p` and a random value
/// (an empty value list makes a bare switch).
fn command_line(rng: &mut Rng, words: &[&str], flags: &[(&str, &[&str])], p: f64) -> Vec<String> {
    let mut argv: Vec<String> = std::iter::once("sliceout").chain(words.iter().copied()).map(String::from).collect();
    for (flag, values) in flags {
        if (rng.uniform_f64()) < p {
            argv.push(flag.to_string());
            if !values.is_empty() {
                argv.push(pick(rng, values).to_string());
            }
        }
    }
    argv
}

const HUGE: [&str; 5] = ["4294967295", "4294967296", "18446744073709551615", "18446744073709551616", "-1"];

/// What every fuzz loop shares: a small dataset, a finished run and its checkpoint, and folders
/// of each awkward kind.
struct World {
    root: PathBuf,
    data: String,
    checkpoint: String,
    /// A run stopped inside its first epoch, with flags off their defaults.
    mid_run: PathBuf,
    file: String,
}

impl World {
    fn new(name: &str) -> World {
        let root = tmp(name);
        let data = root.join("data");
        write_synthetic(&data, 40, 8, 1, false).unwrap();
        let file = root.join("a-file");
        std::fs::write(&file, b"not a folder").unwrap();
        let run = root.join("base");
        train::train(&base_args(&data, &run)).unwrap();
        let mid_run = root.join("mid");
        let mid = TrainArgs {
            lr: 0.02,
            seed: 5,
            augment: false,
            bn_recal: 1,
            stop_after: Some(3),
            ..base_args(&data, &mid_run)
        };
        train::train(&mid).unwrap();
        let s = |p: &Path| p.to_str().unwrap().to_string();
        World { data: s(&data), checkpoint: s(&run.join("last.ckpt")), mid_run, file: s(&file), root }
    }

    /// A copy of the stopped run in a fresh folder for case `i`: its checkpoint's path.
    fn mid_copy(&self, i: usize) -> String {
        let out = self.root.join(format!("out-{i}"));
        std::fs::create_dir_all(&out).unwrap();
        for f in ["last.ckpt", "metrics.jsonl"] {
            let _ = std::fs::copy(self.mid_run.join(f), out.join(f));
        }
        out.join("last.ckpt").to_str().unwrap().to_string()
    }

    /// A fresh folder for case `i`, or a folder holding a run, or the file.
    fn out(&self, rng: &mut Rng, i: usize) -> String {
        let fresh = self.root.join(format!("out-{i}"));
        match rng.below(8) {
            0 => {
                std::fs::create_dir_all(&fresh).unwrap();
                std::fs::write(fresh.join(pick(rng, &["best.ckpt", "curves.svg", "metrics.jsonl"])), b"x").unwrap();
            }
            1 => return self.file.clone(),
            _ => {}
        }
        fresh.to_str().unwrap().to_string()
    }
}

fn base_args(data: &Path, out: &Path) -> TrainArgs {
    TrainArgs { epochs: 2, batch: 8, ..common::args(data, out) }
}

/// Runs one parsed command line in process, training at most one step.
fn run_case(argv: &[String]) -> Result<(), String> {
    let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
    let result = match cli.command {
        Some(Command::Train(f)) => {
            let (mut args, demo) = cmd::train::checked_args(&f).map_err(|e| e.to_string())?;
            assert!(!demo, "{argv:?}: every case names --data or resumes a run that records it");
            args.verbose = false;
            // One step past where the run starts.
            let start = args.resume.as_deref().and_then(|r| checkpoint::load(r).ok()).map_or(0, |c| c.step as usize);
            args.stop_after = Some(start + 1);
            train::train(&args).map(|s| {
                assert!(s.history.len() <= 1 && s.stopped_at.is_none_or(|at| at == start + 1), "{argv:?}: {s:?}")
            })
        }
        Some(Command::Plan(f)) => cmd::plan::command(&f).map(|text| {
            // Each format alone: JSON that parses, one SVG document, or text.
            match f.format {
                Format::Json => drop(serde_json::from_str::<serde_json::Value>(&text).expect("plan JSON parses")),
                Format::Svg => assert!(text.starts_with("<svg") && text.matches("<svg").count() == 1, "{text}"),
                Format::Text => assert!(!text.is_empty()),
            }
        }),
        Some(Command::Eval(f)) => cmd::eval::command(&f),
        Some(Command::Profile(f)) => cmd::profile::command(&f),
        Some(Command::Bench(f)) => cmd::bench::command(&f),
        Some(Command::Data(DataCommand::Synth { out, train, test, seed, force })) => {
            cmd::data::synth(&out, train, test, seed, force)
        }
        other => panic!("{argv:?}: unexpected command {other:?}"),
    };
    result.map_err(|e| e.to_string())
}

/// Runs `cases` command lines from `make`; every outcome is Ok or a one-line error, in time.
fn fuzz(name: &str, cases: usize, mut make: impl FnMut(&mut Rng, usize) -> Vec<String>) -> usize {
    let mut rng = Rng::new(7, name.len() as u64);
    let (t0, mut ok) = (Instant::now(), 0);
    for i in 0..cases {
        let argv = make(&mut rng, i);
        let start = Instant::now();
        match run_case(&argv) {
            Ok(()) => ok += 1,
            Err(msg) => assert!(!msg.trim().is_empty() && !msg.contains("panicked"), "{argv:?}: {msg}"),
        }
        assert!(start.elapsed() < CASE_LIMIT, "{argv:?} took {:?}", start.elapsed());
    }
    println!("{name}: {cases} command lines, {ok} ran, {:.1?}", t0.elapsed());
    ok
}

// Values for the flags, valid ones more likely than each awkward one.
const DEPTH: &[&str] = &["0", "4", "10", "10", "10", "10", "10", "16", "22", "1006", "4294967298", "-10", "x"];
const WIDEN: &[&str] = &["0", "1", "1", "1", "1", "1", "2", "20000000", "4294967296", "18446744073709551615"];
const KEEP: &[&str] = &["0", "-0.1", "-0", "0.5", "1", "1.5", "NaN", "inf", "1e-300", "0.01"];
const BATCH: &[&str] = &["0", "1", "8", "8", "8", "16", "16", "40", "41", "1000000000000000", "18446744073709551615"];
const COUNT: &[&str] = &["0", "1", "2", "3", "16", "40", "1000000", "18446744073709551615", "-1"];
const COL: &[&str] = &["0", "1", "32", "1048576", "1048577", "18446744073709551615"];

#[test]
fn random_train_command_lines_never_panic_or_hang() {
    let w = World::new("train-flags");
    let (depth, widen, keep, batch, count, col) = (DEPTH, WIDEN, KEEP, BATCH, COUNT, COL);
    let train_runs = fuzz("train", 1500, |rng, i| {
        if rng.below(6) == 0 {
            return resume_line(rng, &w, i);
        }
        let data = pick(rng, &[&w.data, &w.data, &w.data, &w.data, &w.data, &w.file, "/nonexistent/data"]).to_string();
        let out = w.out(rng, i);
        let resume = pick(rng, &[&w.checkpoint, "/nonexistent/last.ckpt", &w.data]).to_string();
        let (depth, widen, batch) = (pick(rng, depth), pick(rng, widen), pick(rng, batch));
        let epochs = pick(rng, &["0", "1", "1", "1", "2", "18446744073709551615"]);
        let words = [
            "train", "--data", &data, "--out", &out, "--device", "cpu", "--depth", depth, "--widen", widen, "--batch",
            batch, "--epochs", epochs,
        ];
        let mut argv = command_line(
            rng,
            &words,
            &[
                ("--keep", keep),
                ("--align", &["0", "1", "2", "16", "17", "18446744073709551615"]),
                ("--lr", &["0", "0.05", "-0.1", "NaN", "inf", "1e30"]),
                ("--momentum", &["0", "0.9", "1", "-0.5", "NaN"]),
                ("--wd", &["0", "5e-4", "-1", "inf"]),
                ("--schedule", &["cosine", "step", "linear"]),
                ("--limit-train", count),
                ("--limit-test", count),
                ("--checkpoint-every", count),
                ("--col-chunk", count),
                ("--col-budget", col),
                ("--update", &["early", "end", "late"]),
                ("--math", &["tf32", "fp32", "fp16"]),
                ("--precision", &["fp32", "bf16", "fp16"]),
                ("--dataset", &["cifar10", "cifar100", "fashion-mnist", "imagenet"]),
                ("--seed", &["0", "18446744073709551615", "-1"]),
                ("--resume", &[&resume]),
                ("--coarse", &[]),
                ("--force", &[]),
                ("--no-augment", &[]),
            ],
            0.12,
        );
        if rng.below(20) == 0 {
            argv.extend(["--device".into(), "tpu".into()]);
        }
        argv
    });
    assert!(train_runs > 20, "only {train_runs} training runs were accepted");
    std::fs::remove_dir_all(&w.root).unwrap();
}

/// A resume of a run stopped mid-epoch, with its own values, others, and values out of range,
/// with or without `--change`, `--data` and `--out`.
fn resume_line(rng: &mut Rng, w: &World, i: usize) -> Vec<String> {
    let ck = w.mid_copy(i);
    let mut argv = command_line(
        rng,
        &["train", "--resume", &ck, "--device", "cpu"],
        &[
            ("--data", &[&w.data, &w.file, "/nonexistent/data"]),
            ("--lr", &["0.02", "0.02", "0.1", "2e-2", "1e39", "1e-50", "-0"]),
            ("--momentum", &["0.9", "0.5", "0.99999999999", "0.99999994"]),
            ("--wd", &["5e-4", "0.0005", "0", "1e-46"]),
            ("--seed", &["5", "5", "6", "18446744073709551615"]),
            ("--align", &["1", "2", "16", "17"]),
            ("--bn-recal", &["1", "0", "3", "18446744073709551615"]),
            ("--limit-test", &["8", "4", "9"]),
            ("--math", &["fp32", "tf32"]),
            ("--precision", &["fp32", "bf16"]),
            ("--input-grad", &["conv", "col2im"]),
            ("--col-chunk", &["0", "3", "18446744073709551615"]),
            ("--col-budget", &["0", "8", "1048577"]),
            ("--schedule", &["cosine", "step"]),
            ("--epochs", &["1", "2", "3"]),
            ("--batch", &["8", "4", "auto"]),
            ("--out", &[&w.file, w.root.join(format!("elsewhere-{i}")).to_str().unwrap()]),
            ("--no-augment", &[]),
            ("--augment", &[]),
            ("--nesterov", &[]),
            ("--no-nesterov", &[]),
            ("--winograd", &[]),
            ("--no-in-place", &[]),
            ("--no-recompute", &[]),
            ("--coarse", &[]),
            ("--force", &[]),
        ],
        0.1,
    );
    if rng.below(3) == 0 {
        argv.push("--change".into());
    }
    argv
}

#[test]
fn random_plan_and_eval_command_lines_never_panic_or_hang() {
    let w = World::new("plan-flags");
    let (depth, widen, keep, batch, count, col) = (DEPTH, WIDEN, KEEP, BATCH, COUNT, COL);
    fuzz("plan", 800, |rng, _| {
        command_line(
            rng,
            &["plan"],
            &[
                ("--depth", depth),
                ("--widen", widen),
                ("--keep", keep),
                ("--batch", batch),
                ("--classes", &["0", "1", "2", "10", "1099511627776", "18446744073709551615"]),
                ("--in-channels", &["0", "1", "3", "1099511627776", "18446744073709551615"]),
                ("--mode", &["train", "eval", "test"]),
                ("--format", &["text", "json", "svg", "pdf"]),
                ("--width", &["0", "16", "18446744073709551615"]),
                ("--col-chunk", count),
                ("--col-budget", col),
                ("--no-recompute", &[]),
                ("--no-in-place", &[]),
                ("--precision", &["fp32", "bf16", "bf8"]),
                ("--fit", &["1B", "64M", "4GiB", "1T", "0", "lots", "18446744073709551615"]),
                ("--sweep", &["keep", "batch", "width"]),
                ("--dataset", &["cifar10", "cifar100", "fashion-mnist", "imagenet"]),
                ("--device", &["cpu", "cuda"]),
            ],
            0.5,
        )
    });

    // The combinations of what --fit, --sweep and --dataset answer, with mostly valid values.
    let ran = fuzz("plan answers", 400, |rng, _| {
        command_line(
            rng,
            &["plan", "--device", "cpu", "--depth", "10", "--widen", "1"],
            &[
                ("--fit", &["1B", "64M", "512M", "4GiB", "64GiB", "1T"]),
                ("--sweep", &["keep", "batch"]),
                ("--dataset", &["cifar10", "cifar100", "fashion-mnist"]),
                ("--classes", &["10", "20", "100"]),
                ("--in-channels", &["1", "3", "5"]),
                ("--mode", &["train", "train", "eval"]),
                ("--format", &["text", "json", "svg"]),
                ("--width", &["16", "80"]),
                ("--batch", &["1", "64", "100000"]),
                ("--keep", &["0.5", "1"]),
                ("--col-chunk", &["0", "4"]),
                ("--no-recompute", &[]),
                ("--precision", &["fp32", "bf16"]),
            ],
            0.25,
        )
    });
    assert!(ran > 40, "only {ran} plan command lines ran");

    fuzz("eval", 400, |rng, _| {
        let ck = pick(rng, &[&w.checkpoint, &w.checkpoint, &w.data, &w.file, "/nonexistent.ckpt"]).to_string();
        let data = pick(rng, &[&w.data, &w.data, &w.file, "/nonexistent"]).to_string();
        command_line(
            rng,
            &["eval", "--checkpoint", &ck, "--data", &data, "--device", "cpu"],
            &[
                ("--batch", batch),
                ("--limit-test", count),
                ("--dataset", &["cifar10", "cifar100", "mnist"]),
                ("--coarse", &[]),
                ("--precision", &["fp32", "bf16", "f32"]),
            ],
            0.4,
        )
    });

    std::fs::remove_dir_all(&w.root).unwrap();
}

#[test]
fn random_profile_bench_and_synth_command_lines_never_panic_or_hang() {
    let w = World::new("other-flags");
    let (keep, col) = (KEEP, COL);
    fuzz("profile and bench", 300, |rng, i| {
        let trace = w.root.join(format!("trace-{i}.json"));
        let trace = [pick(rng, &[trace.to_str().unwrap(), &w.data, "/nonexistent/t.json"])];
        let steps: &[&str] = &["0", "1", "2", "-1", "x", "10001", "18446744073709551615"];
        let command = pick(rng, &["profile", "bench"]);
        let words = [
            command,
            "--device",
            "cpu",
            "--depth",
            pick(rng, &["10", "10", "12", "4294967296"]),
            "--widen",
            pick(rng, &["1", "1", "0", "20000000"]),
            "--batch",
            pick(rng, &["0", "1", "2", "2", "1000000000000000", "18446744073709551615"]),
        ];
        let bench_keeps: &[&str] = &["1.0,0.5", "-0.1,0.5", "0", "", "1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1"];
        let flags: Vec<(&str, &[&str])> = match command {
            "profile" => vec![
                ("--steps", steps),
                ("--keep", keep),
                ("--compare", keep),
                ("--format", &["text", "json", "svg"]),
                ("--trace", &trace),
                ("--col-budget", col),
                ("--precision", &["fp32", "bf16", "fp16"]),
            ],
            _ => {
                vec![("--steps", steps), ("--keep", bench_keeps), ("--precision", &["bf16", "fp32,bf16", "bf16,x", ""])]
            }
        };
        command_line(rng, &words, &flags, 0.4)
    });

    fuzz("data synth", 300, |rng, i| {
        let fresh = w.root.join(format!("synth-{i}"));
        let out = pick(rng, &[fresh.to_str().unwrap(), &w.data, &w.file]).to_string();
        let train = pick(rng, &["0", "4", "5", "7", "1000001", "1000000000", HUGE[2], HUGE[4]]);
        let test = pick(rng, &["0", "1", "2", "1000001", HUGE[2]]);
        command_line(
            rng,
            &["data", "synth", "--out", &out, "--train", train, "--test", test],
            &[("--seed", &["0", HUGE[2]]), ("--force", &[])],
            0.5,
        )
    });
    // The shared dataset survived every `data synth --out` aimed at it without --force... or was
    // regenerated whole with it: either way it still loads.
    sliceout::data::load(Path::new(&w.data), None, false).unwrap();
    std::fs::remove_dir_all(&w.root).unwrap();
}

/// One random change to a good checkpoint: its configuration (written straight into the bytes,
/// since `save` refuses an invalid one), a metadata value, the counters, a parameter or
/// statistic value, or the normalisation.
fn mutate(ck: &mut Checkpoint, rng: &mut Rng) -> Option<(usize, u32)> {
    let numbers = ["0", "1", "8", "9", "40", "41", "-1", "NaN", "inf", "1e400", "", "x", HUGE[2], HUGE[3]];
    match rng.below(6) {
        0 => {
            let at = [12, 16, 20, 24][rng.below(4)];
            let v = match rng.below(6) {
                0 => 0,
                1 => 1 + rng.below(20) as u32,
                2 => 10 + 6 * rng.below(170) as u32,
                3 => u32::MAX,
                4 => 1 << (10 + rng.below(22)),
                _ => rng.next_u64() as u32,
            };
            return Some((at, v));
        }
        1 => {
            let keys = [
                "batch",
                "train_images",
                "epochs",
                "schedule",
                "best_acc",
                "epoch_loss",
                "epoch_seen",
                "history",
                "run_id",
                "lr",
                "momentum",
                "seed",
                "precision",
                "test_images",
                "col_budget",
                "data",
                "changed",
            ];
            let key = keys[rng.below(keys.len())];
            let value = match (key, rng.below(3)) {
                ("schedule", 0) => "step".to_string(),
                ("history", 0) => "[]".to_string(),
                ("history", 1) => "[{\"epoch\":1}]".to_string(),
                ("changed", 0) => "[{\"setting\":\"lr\",\"from\":\"1\",\"to\":\"2\"}]".to_string(),
                ("data", 0) => "relative/folder".to_string(),
                _ => numbers[rng.below(numbers.len())].to_string(),
            };
            match rng.below(4) {
                0 => ck.meta.retain(|(k, _)| k != key),
                _ => ck.meta.iter_mut().filter(|(k, _)| k == key).for_each(|(_, v)| *v = value.clone()),
            }
        }
        2 => {
            let v = [0u64, 1, 2, 3, 5, 6, 10, u32::MAX as u64, u64::MAX][rng.below(9)];
            if rng.below(2) == 0 {
                ck.step = v;
            } else {
                ck.epoch = v;
            }
        }
        3 => {
            let t = rng.below(ck.tensors.len());
            let data = &mut ck.tensors[t].data;
            if !data.is_empty() {
                let i = rng.below(data.len());
                data[i] = [f32::NAN, f32::INFINITY, -f32::INFINITY, 1e30, 0.0][rng.below(5)];
            }
        }
        4 => {
            let i = rng.below(ck.norm_std.len());
            ck.norm_std[i] = [0.0, -1.0, f32::NAN, 1e-30, 2.0][rng.below(5)];
            if rng.below(2) == 0 {
                ck.norm_mean.pop();
                ck.norm_std.pop();
            }
        }
        _ => {
            let t = rng.below(ck.tensors.len());
            if rng.below(2) == 0 {
                ck.tensors.remove(t);
            } else {
                ck.tensors[t].data.push(0.0);
                let n = ck.tensors[t].data.len();
                ck.tensors[t].shape = vec![n];
            }
        }
    }
    None
}

/// Checkpoints changed at random under a valid CRC, then evaluated and resumed (one step).
#[test]
fn random_checkpoints_with_a_valid_crc_never_panic_or_hang() {
    let w = World::new("ckpt");
    let good = checkpoint::load(Path::new(&w.checkpoint)).unwrap();
    let data = PathBuf::from(&w.data);
    let mut rng = Rng::new(5, 55);
    let t0 = Instant::now();
    let (cases, mut evaluated, mut resumed) = (1500, 0, 0);
    for i in 0..cases {
        let mut ck = good.clone();
        let mut config_patch = None;
        for _ in 0..1 + rng.below(2) {
            config_patch = mutate(&mut ck, &mut rng).or(config_patch);
        }
        let path = w.root.join("case.ckpt");
        if checkpoint::save(&path, &ck).is_err() {
            continue;
        }
        if let Some((at, v)) = config_patch {
            let mut b = std::fs::read(&path).unwrap();
            b[at..at + 4].copy_from_slice(&v.to_le_bytes());
            let n = b.len() - 4;
            let crc = crc32fast::hash(&b[..n]);
            b[n..].copy_from_slice(&crc.to_le_bytes());
            std::fs::write(&path, b).unwrap();
        }
        let start = Instant::now();
        let batch = [3, 8, 64][rng.below(3)];
        let request = train::EvalRequest {
            model: &path,
            data: &data,
            dataset: None,
            coarse: false,
            batch,
            device: DeviceChoice::Cpu,
            limit_test: None,
            bn_recal: 0,
            precision: sliceout::ir::Precision::Fp32,
        };
        if let Ok(e) = train::evaluate(&request) {
            let (loss, acc) = (e.loss, e.acc);
            assert!(loss.is_finite() && (0.0..=1.0).contains(&acc), "case {i}: loss {loss} acc {acc}");
            evaluated += 1;
        }
        let out = w.root.join(format!("resume-{i}"));
        // One step past the checkpoint, then stop (checkpointed, as on Ctrl-C).
        let stop_after = Some(ck.step.min(100) as usize + 1);
        let args = TrainArgs { resume: Some(path.clone()), epochs: 3, stop_after, ..base_args(&data, &out) };
        match train::train(&args) {
            Ok(s) => {
                resumed += 1;
                assert!(s.history.len() <= 3, "case {i}");
            }
            Err(e) => assert!(!e.to_string().is_empty()),
        }
        let _ = std::fs::remove_dir_all(&out);
        assert!(start.elapsed() < CASE_LIMIT, "case {i} took {:?}", start.elapsed());
    }
    println!("checkpoint fuzz: {cases} checkpoints, {evaluated} evaluated, {resumed} resumed, {:.1?}", t0.elapsed());
    assert!(evaluated > cases / 10 && resumed > cases / 20 && evaluated < cases && resumed < cases);
    std::fs::remove_dir_all(&w.root).unwrap();
}

/// One way to tamper with the entry `path` in a run folder mid-run, given an outside file
/// `victim`: a symbolic link to it or to nothing, a second name of it, a FIFO or a folder.
fn tamper(path: &Path, victim: &Path, kind: usize) {
    use std::os::unix::fs::symlink;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path).unwrap(),
        Ok(_) => std::fs::remove_file(path).unwrap(),
        Err(_) => {}
    }
    match kind {
        0 => symlink(victim, path).unwrap(),
        1 => symlink(victim.with_file_name("nothing"), path).unwrap(),
        2 => std::fs::hard_link(victim, path).unwrap(),
        3 => assert!(std::process::Command::new("mkfifo").arg(path).status().unwrap().success()),
        _ => std::fs::create_dir(path).unwrap(),
    }
}

/// Mid-run tampering: before a random epoch, a random file of the run folder (its lock too)
/// becomes a link to an outside file or to nothing, a second name of it, a FIFO or a folder;
/// then the run is resumed from what is left. Every outcome is Ok or one line, in time; the
/// outside file is never written, and nothing is made where the dangling link points.
#[test]
fn run_folders_tampered_mid_run_are_never_written_through_nor_waited_on() {
    use std::os::unix::fs::FileTypeExt;
    let root = tmp("tamper");
    let data = root.join("data");
    write_synthetic(&data, 40, 8, 1, false).unwrap();
    let victim = root.join("victim");
    let names = ["metrics.jsonl", "curves.svg", "last.ckpt", "best.ckpt", ".sliceout.lock"];
    let mut rng = Rng::new(13, 1);
    let (t0, cases, mut refused) = (Instant::now(), 20, 0);
    for i in 0..cases {
        std::fs::write(&victim, b"precious").unwrap();
        let out = root.join(format!("run-{i}"));
        let (name, kind, before) = (names[i % names.len()], rng.below(5), 1 + rng.below(2));
        let checkpoint_every = [0, 2][rng.below(2)];
        let args = TrainArgs { epochs: 3, checkpoint_every, ..base_args(&data, &out) };
        let (tx, rx) = std::sync::mpsc::channel();
        let (entry, outside) = (out.join(name), victim.clone());
        std::thread::spawn(move || {
            let trained = (|| -> sliceout::Result<()> {
                let mut run = train::Run::start(&args)?;
                for epoch in 0..args.epochs {
                    if epoch == before {
                        tamper(&entry, &outside, kind);
                    }
                    if let train::EpochEnd::Finished { seconds, images } = run.epoch(epoch)? {
                        run.end_epoch(epoch, seconds, images)?;
                    }
                }
                Ok(())
            })();
            let _ = tx.send(trained.map_err(|e| e.to_string()));
        });
        let case = format!("case {i}: {name} made kind {kind} before epoch {before}");
        let outcome = rx.recv_timeout(CASE_LIMIT).unwrap_or_else(|_| panic!("{case}: the run hung"));
        if let Err(msg) = &outcome {
            refused += 1;
            assert!(msg.contains(name) && msg.lines().count() == 1, "{case}: {msg}");
        }
        // A resume from what is left ends in time too, without writing through anything.
        let last = out.join("last.ckpt");
        if std::fs::symlink_metadata(&last).is_ok_and(|m| m.is_file()) {
            let start = Instant::now();
            let args = TrainArgs { resume: Some(last), epochs: 4, stop_after: None, ..base_args(&data, &out) };
            if let Err(e) = train::train(&args) {
                assert_eq!(e.to_string().lines().count(), 1, "{case}: resumed: {e}");
            }
            assert!(start.elapsed() < CASE_LIMIT, "{case}: the resume took {:?}", start.elapsed());
        }
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious", "{case}: written through");
        assert!(!root.join("nothing").exists(), "{case}: made where a dangling link points");
        let kind_now = std::fs::symlink_metadata(out.join(name)).map(|m| m.file_type());
        match kind {
            0 | 1 => assert!(kind_now.is_ok_and(|t| t.is_symlink() || t.is_file()), "{case}"),
            3 => assert!(kind_now.is_ok_and(|t| t.is_fifo() || t.is_file()), "{case}"),
            _ => {}
        }
        std::fs::remove_dir_all(&out).unwrap();
    }
    println!("tampering: {cases} runs, {refused} refused mid-run, {:.1?}", t0.elapsed());
    // The lock is not written mid-run, best.ckpt only when the run improves, and a second name
    // of a file replaced by a rename costs the other name nothing: those may go on.
    assert!(refused >= cases / 4, "only {refused} of {cases} tampered runs were refused");
    std::fs::remove_dir_all(&root).unwrap();
}
