//! Data-parallel training under `mpirun` (built with `--features mpi`; CI installs Open MPI).
//! Every launch has a time limit: a job that hangs fails its test instead of CI.
//!
//! Each rank runs one CPU thread (`RAYON_NUM_THREADS=1`), so two ranks fit two cores.

use crate::common::{self, checkpoint_bits, metrics_without_times, BIN};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The longest a launch may take here: a hang past it fails the test.
const LIMIT: Duration = Duration::from_secs(120);

/// The small run every test trains: WRN-10-1 keep 0.5 on 512 synthetic images, batch 16 unless
/// a test says otherwise.
const RUN: &[&str] = &["--depth", "10", "--widen", "1", "--keep", "0.5", "--device", "cpu", "--seed", "5"];

/// `mpirun` for `ranks` (each an argument list of its own, one rank each) in folder `cwd`.
fn mpirun_command(cwd: &Path, ranks: &[Vec<String>]) -> Command {
    let mut c = Command::new("mpirun");
    c.current_dir(cwd).env("RAYON_NUM_THREADS", "1");
    for (i, args) in ranks.iter().enumerate() {
        if i > 0 {
            c.arg(":");
        }
        c.args(["--oversubscribe", "--allow-run-as-root", "-np", "1", BIN]).args(args);
    }
    c
}

/// Waits for `child` at most `limit`: its status (-1 for a signal) or `None` when it ran past
/// the limit (it is then killed).
fn wait_for(child: &mut Child, limit: Duration) -> Option<i32> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status.code().unwrap_or(-1));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Runs the ranks to the end: status, stdout, stderr. A job past [`LIMIT`] fails the test.
fn mpirun(cwd: &Path, ranks: &[Vec<String>]) -> (i32, String, String) {
    let mut child =
        mpirun_command(cwd, ranks).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("mpirun starts");
    let (mut so, mut se) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let out = std::thread::spawn(move || std::io::read_to_string(&mut so).unwrap_or_default());
    let err = std::thread::spawn(move || std::io::read_to_string(&mut se).unwrap_or_default());
    let code = wait_for(&mut child, LIMIT);
    let (so, se) = (out.join().unwrap(), err.join().unwrap());
    let code = code.unwrap_or_else(|| panic!("mpirun ran past {LIMIT:?} for {ranks:?}: {so}\n{se}"));
    assert!(!se.contains("panicked") && !so.contains("panicked"), "panic: {se}");
    (code, so, se)
}

/// The same arguments for each of `n` ranks.
fn same(n: usize, args: &[&str]) -> Vec<Vec<String>> {
    vec![args.iter().map(|s| s.to_string()).collect(); n]
}

fn train_args(extra: &[&str]) -> Vec<String> {
    let batch: &[&str] = if extra.contains(&"--batch") { &[] } else { &["--batch", "16"] };
    ["train"].iter().chain(RUN).chain(batch).chain(extra).map(|s| s.to_string()).collect()
}

/// The binary alone (one rank, one thread as each rank has) with `args` in `cwd`.
fn one_rank(cwd: &Path, args: &[String]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).current_dir(cwd).env("RAYON_NUM_THREADS", "1").output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).to_string();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

/// Two checkpoints hold the same tensors bit for bit; the message names those that differ.
fn assert_same_state(a: &Path, b: &Path) {
    let (a, b) = (checkpoint_bits(a), checkpoint_bits(b));
    assert_eq!(a.iter().map(|t| &t.0).collect::<Vec<_>>(), b.iter().map(|t| &t.0).collect::<Vec<_>>());
    let differ: Vec<&str> = a.iter().zip(&b).filter(|(x, y)| x.1 != y.1).map(|(x, _)| x.0.as_str()).collect();
    assert!(differ.is_empty(), "tensors that differ: {differ:?}");
}

/// A folder with a synthetic dataset in `syn`.
#[track_caller]
fn with_data(name: &str) -> std::path::PathBuf {
    let dir = common::tmp(name);
    let (code, _, se) =
        common::sliceout_in(&dir, &["data", "synth", "--out", "syn", "--train", "512", "--test", "128"]);
    assert_eq!(code, 0, "{se}");
    dir
}

/// The bytes the run says it all-reduced per step (every epoch's line the same).
fn run_bytes(stdout: &str) -> usize {
    let bytes: Vec<usize> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("all-reduce: "))
        .map(|l| l.split(' ').next().unwrap().parse().unwrap())
        .collect();
    assert!(!bytes.is_empty(), "{stdout}");
    assert!(bytes.iter().all(|&b| b == bytes[0]), "{stdout}");
    bytes[0]
}

/// The bytes `plan` says a step all-reduces at `keep`.
fn plan_bytes(keep: &str) -> usize {
    let (code, so, se) = common::sliceout(&[
        "plan", "--depth", "10", "--widen", "1", "--keep", keep, "--batch", "16", "--format", "json",
    ]);
    assert_eq!(code, 0, "{se}");
    let v: serde_json::Value = serde_json::from_str(&so).unwrap();
    v["allreduce_bytes_per_step"].as_u64().unwrap() as usize
}

/// Two ranks each given the whole batch average two equal gradients: exactly the one-rank
/// run, every parameter, momentum and statistic, and every metric.
#[test]
fn two_ranks_on_the_same_batches_reproduce_one_rank_bit_for_bit() {
    let dir = with_data("same");
    let one = train_args(&["--data", "syn", "--out", "one", "--epochs", "2"]);
    let (code, _, se) = one_rank(&dir, &one);
    assert_eq!(code, 0, "{se}");
    let two = train_args(&["--data", "syn", "--out", "two", "--epochs", "2", "--same-batch"]);
    let (code, so, se) = mpirun(&dir, &[two.clone(), two]);
    assert_eq!(code, 0, "{so}\n{se}");
    assert_same_state(&dir.join("one/last.ckpt"), &dir.join("two/last.ckpt"));
    assert_eq!(metrics_without_times(&dir.join("one")), metrics_without_times(&dir.join("two")));
}

/// Two ranks on shards: the ranks' states agree at every epoch's end (the run compares their
/// hashes and stops on a difference), the all-reduce moves what `plan` says, rank 0 alone
/// writes, and the run learns the synthetic data as the one-rank run does.
#[test]
fn two_ranks_on_shards_agree_and_learn_like_one() {
    let dir = with_data("shards");
    let epochs = ["--epochs", "4", "--no-augment"];
    let one = train_args(&[&["--data", "syn", "--out", "one"][..], &epochs].concat());
    let (code, _, se) = one_rank(&dir, &one);
    assert_eq!(code, 0, "{se}");
    let two = train_args(&[&["--data", "syn", "--out", "two"][..], &epochs].concat());
    let (code, so, se) = mpirun(&dir, &[two.clone(), two]);
    assert_eq!(code, 0, "{so}\n{se}");
    // Rank 0 alone prints: one line per epoch, one closing line.
    assert_eq!(so.lines().filter(|l| l.starts_with("epoch ")).count(), 4, "{so}");
    assert_eq!(so.lines().filter(|l| l.starts_with("done: ")).count(), 1, "{so}");
    assert_eq!(run_bytes(&so), plan_bytes("0.5"));
    let (m1, m2) = (metrics_without_times(&dir.join("one")), metrics_without_times(&dir.join("two")));
    assert_eq!(m2.len(), 4);
    let acc = |m: &[serde_json::Value]| m.last().unwrap()["test_acc"].as_f64().unwrap();
    let loss = |m: &[serde_json::Value], i: usize| m[i]["train_loss"].as_f64().unwrap();
    // Sharded batches differ from whole ones only in BN's per-rank statistics.
    assert!(loss(&m2, 3) < loss(&m2, 0) - 0.5, "{m2:?}");
    assert!(acc(&m1) > 0.4 && acc(&m2) > 0.4, "one rank {} two ranks {}", acc(&m1), acc(&m2));
    assert!((acc(&m2) - acc(&m1)).abs() < 0.15, "one rank {} two ranks {}", acc(&m1), acc(&m2));
}

/// What a step reduces is each weight gradient at its slice's size: at keep 0.5 the sliced
/// layers' gradients are half their keep-1.0 size and the unsliced layers' whole, so `plan` at
/// keep 0.5 says keep 1.0's bytes less the sliced layers' half.
#[test]
fn keep_half_reduces_the_full_bytes_less_the_sliced_half() {
    use sliceout::ir::{ModelConfig, Target};
    use sliceout::schedule::{Lowering, Mode, Options};
    let config = ModelConfig { depth: 10, widen: 1, classes: 10, in_channels: 3, keep: 0.5 };
    let lowering = Lowering { target: Target::Cpu, ..Lowering::default() };
    let half = sliceout::model::wrn::build(&config, 16, Mode::Train, Options::default(), lowering);
    // The sliced layers' gradients at keep 0.5: the half that keep 0.5 leaves out of them.
    let sliced_half = sliceout::dist::sliced_bytes(&half);
    assert!(sliced_half > 0 && sliced_half < sliceout::dist::reduced_bytes(&half));
    assert_eq!(plan_bytes("0.5"), sliceout::dist::reduced_bytes(&half));
    assert_eq!(plan_bytes("0.5"), plan_bytes("1.0") - sliced_half);
}

/// Ranks launched with other flags or other data are refused before anything is written, in
/// one line and with a non-zero status, not a hang; so is a resume on another rank count.
#[test]
fn bad_launches_are_refused_in_one_line() {
    let dir = with_data("bad");
    let (code, _, se) = common::sliceout_in(
        &dir,
        &["data", "synth", "--out", "other", "--train", "512", "--test", "128", "--seed", "9"],
    );
    assert_eq!(code, 0, "{se}");
    let base = train_args(&["--data", "syn", "--out", "r", "--epochs", "1"]);
    let cases = [
        (train_args(&["--data", "syn", "--out", "r", "--epochs", "1", "--lr", "0.06"]), "different flags"),
        (train_args(&["--data", "other", "--out", "r", "--epochs", "1"]), "different data"),
    ];
    for (other, what) in cases {
        let (code, so, se) = mpirun(&dir, &[base.clone(), other]);
        assert_ne!(code, 0, "{so}\n{se}");
        assert_eq!(se.lines().filter(|l| l.starts_with("error: ")).count(), 1, "{se}");
        let line = se.lines().find(|l| l.starts_with("error: ")).unwrap();
        assert!(line.contains(what) && line.contains("2 ranks"), "{line}");
        assert!(!dir.join("r/last.ckpt").exists());
    }
    // No folder, no data, or an automatic batch: what one rank cannot decide for all.
    for (args, needle) in [
        (vec!["train", "--data", "syn"], "--out"),
        (vec!["train", "--out", "r"], "--data"),
        (vec!["train", "--data", "syn", "--out", "r", "--batch", "auto"], "--batch"),
    ] {
        let (code, _, se) = mpirun(&dir, &same(2, &args));
        assert_ne!(code, 0);
        assert!(se.contains(needle) && se.contains("under mpirun"), "{se}");
        assert_eq!(se.lines().filter(|l| l.starts_with("error: ")).count(), 1, "{se}");
    }
    // A batch the ranks cannot share evenly, named.
    let (code, _, se) = mpirun(
        &dir,
        &same(
            2,
            &train_args(&["--data", "syn", "--out", "r", "--batch", "33"])
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        ),
    );
    assert_ne!(code, 0);
    assert!(se.contains("--batch") && se.contains("33") && se.contains("multiple of the 2 ranks"), "{se}");
    // A one-rank run resumed on two ranks, and a two-rank run resumed on one.
    let (code, _, se) = one_rank(&dir, &base);
    assert_eq!(code, 0, "{se}");
    let resume = ["train", "--resume", "r/last.ckpt", "--epochs", "2"];
    let (code, _, se) = mpirun(&dir, &same(2, &resume));
    assert_ne!(code, 0);
    assert!(se.contains("was trained on 1 rank(s) and this launch has 2: resume it without mpirun"), "{se}");
    let two = train_args(&["--data", "syn", "--out", "r2", "--epochs", "1"]);
    let (code, so, se) = mpirun(&dir, &[two.clone(), two]);
    assert_eq!(code, 0, "{so}\n{se}");
    let resume: Vec<String> = ["train", "--resume", "r2/last.ckpt", "--epochs", "2"].map(String::from).to_vec();
    let (code, _, se) = one_rank(&dir, &resume);
    assert_ne!(code, 0);
    assert!(se.contains("was trained on 2 rank(s) and this launch has 1: resume it with mpirun -np 2"), "{se}");
}

/// The rank processes `mpirun` (pid `parent`) started, with their ranks.
fn ranks_of(parent: u32) -> Vec<(i32, usize)> {
    let mut found = vec![];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // The parent pid is the second field after the command name in parentheses.
        let after = stat.rsplit_once(')').map_or("", |s| s.1);
        if after.split_whitespace().nth(1) != Some(&parent.to_string()) {
            continue;
        }
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let rank = env.split(|&b| b == 0).find_map(|v| v.strip_prefix(b"OMPI_COMM_WORLD_RANK="));
        if let Some(rank) = rank.and_then(|r| std::str::from_utf8(r).ok()?.parse().ok()) {
            found.push((pid, rank));
        }
    }
    found
}

/// SIGKILL of rank 1 ends the whole job within seconds with a non-zero status; resuming the
/// folder on two ranks then finishes the run exactly as a run never killed does.
#[test]
fn a_killed_rank_ends_the_job_and_the_folder_resumes_exactly() {
    let dir = with_data("kill");
    let run = |out: &str| train_args(&["--data", "syn", "--out", out, "--epochs", "3", "--checkpoint-every", "4"]);
    let (code, so, se) = mpirun(&dir, &same(2, &run("whole").iter().map(String::as_str).collect::<Vec<_>>()));
    assert_eq!(code, 0, "{so}\n{se}");

    let killed = run("killed");
    let mut child =
        mpirun_command(&dir, &[killed.clone(), killed]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let t0 = Instant::now();
    while !dir.join("killed/last.ckpt").exists() {
        assert!(t0.elapsed() < LIMIT, "no checkpoint within {LIMIT:?}");
        assert!(child.try_wait().unwrap().is_none(), "the job ended before a checkpoint");
        std::thread::sleep(Duration::from_millis(20));
    }
    let ranks = ranks_of(child.id());
    let &(pid, _) = ranks.iter().find(|r| r.1 == 1).unwrap_or_else(|| panic!("no rank 1 among {ranks:?}"));
    // SAFETY: signalling a process this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let killed_at = Instant::now();
    let code = wait_for(&mut child, Duration::from_secs(30)).expect("the job ends after a rank is killed");
    assert_ne!(code, 0);
    assert!(killed_at.elapsed() < Duration::from_secs(15), "took {:?}", killed_at.elapsed());

    let resume = ["train", "--resume", "killed/last.ckpt", "--checkpoint-every", "4"];
    let (code, so, se) = mpirun(&dir, &same(2, &resume));
    assert_eq!(code, 0, "{so}\n{se}");
    assert_same_state(&dir.join("whole/last.ckpt"), &dir.join("killed/last.ckpt"));
    assert_eq!(metrics_without_times(&dir.join("whole")), metrics_without_times(&dir.join("killed")));
}
