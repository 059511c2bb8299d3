//! A hostile environment rather than hostile input: standard output or error full, closed or a
//! pipe nobody reads; a memory limit (`ulimit -v`); a file-size limit (`ulimit -f`); a data file
//! truncated while it is read; a broken CUDA driver; an absurd `RAYON_NUM_THREADS`. Whatever
//! happens, the binary never dies by a signal and never panics: it finishes its work (and saves
//! it) or stops with one line saying why. Every run has a time limit, so a hang fails the test.

#![cfg(unix)]

use crate::common::{tmp, BIN};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A small synthetic dataset in `dir/data`, made by the binary itself.
fn synth(dir: &Path) -> PathBuf {
    let data = dir.join("data");
    let out = Command::new(BIN).args(["data", "synth", "--out", s(&data), "--train", "60", "--test", "20"]).output();
    assert!(out.unwrap().status.success());
    data
}

/// A tiny CPU training run's arguments: WRN-10-1, batch 20, `epochs` epochs.
fn train_args(data: &Path, out: &Path, epochs: usize) -> Vec<String> {
    let epochs = epochs.to_string();
    let a = ["train", "--data", s(data), "--out", s(out), "--device", "cpu", "--depth", "10", "--widen", "1"];
    let b = ["--batch", "20", "--epochs", &epochs];
    a.iter().chain(&b).map(|x| x.to_string()).collect()
}

/// What a finished child left: its status and whatever of stdout and stderr was captured.
struct Ended {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Ended {
    /// Neither killed by a signal nor panicked, nor exited with a panic's status.
    fn assert_no_crash(&self, what: &str) {
        assert_eq!(self.status.signal(), None, "{what}: killed by a signal; stderr:\n{}", self.stderr);
        assert_ne!(self.status.code(), Some(101), "{what}: exit 101 (a panic); stderr:\n{}", self.stderr);
        for text in [&self.stdout, &self.stderr] {
            assert!(!text.contains("panicked") && !text.contains("stack backtrace"), "{what}: panic text:\n{text}");
        }
    }
}

/// Waits for `child` at most `secs`, reading its piped outputs (those not taken already);
/// a child still running then is killed and the test fails.
fn wait(mut child: Child, secs: u64, what: &str) -> Ended {
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut r) = r {
                let mut bytes = vec![];
                let _ = r.read_to_end(&mut bytes);
                text = String::from_utf8_lossy(&bytes).into_owned();
            }
            text
        })
    };
    let so = drain(child.stdout.take().map(|r| Box::new(r) as Box<dyn Read + Send>));
    let se = drain(child.stderr.take().map(|r| Box::new(r) as Box<dyn Read + Send>));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(secs) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {secs} s (a hang)");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ended { status, stdout: so.join().unwrap(), stderr: se.join().unwrap() }
}

/// Runs `BIN args` with stdout and stderr piped and read.
fn run(args: &[String], envs: &[(&str, &str)], secs: u64) -> Ended {
    let mut cmd = Command::new(BIN);
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).stdin(Stdio::null());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    wait(cmd.spawn().expect("binary runs"), secs, &format!("{args:?}"))
}

/// Runs `script` with `sh -c`, `$BIN` set to the binary, stderr read.
fn shell(script: &str, secs: u64) -> Ended {
    let child = Command::new("sh")
        .args(["-c", script])
        .env("BIN", BIN)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sh runs");
    wait(child, secs, script)
}

/// The write end of a pipe whose read end is closed already: every write fails (EPIPE).
fn pipe_without_reader() -> std::io::PipeWriter {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    writer
}

/// The non-empty lines of `text`.
fn lines(text: &str) -> Vec<&str> {
    text.lines().filter(|l| !l.trim().is_empty()).collect()
}

/// A run folder that finished `epochs` epochs: both checkpoints and one metrics line each.
fn assert_trained(out: &Path, epochs: usize) {
    for f in ["last.ckpt", "best.ckpt", "curves.svg"] {
        assert!(out.join(f).is_file(), "{} missing", out.join(f).display());
    }
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), epochs, "{metrics}");
}

/// `plan | head -1`: the reader stopped, nothing was lost that anyone wanted; the command ends
/// quietly with status 0, as other command-line tools do, not by SIGPIPE.
#[test]
fn plan_into_a_pipe_nobody_reads_exits_quietly() {
    let child = Command::new(BIN).arg("plan").stdout(pipe_without_reader()).stderr(Stdio::piped()).spawn().unwrap();
    let end = wait(child, 60, "plan into a closed pipe");
    end.assert_no_crash("plan into a closed pipe");
    assert_eq!(end.status.code(), Some(0), "{}", end.stderr);
    assert_eq!(end.stderr, "");
}

/// `plan >/dev/full`: the output is lost, so the command fails, saying so on stderr in one line.
#[test]
fn plan_into_a_full_device_fails_in_one_line() {
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let child = Command::new(BIN).arg("plan").stdout(full).stderr(Stdio::piped()).spawn().unwrap();
    let end = wait(child, 60, "plan >/dev/full");
    end.assert_no_crash("plan >/dev/full");
    assert_eq!(end.status.code(), Some(1), "{}", end.stderr);
    let err = lines(&end.stderr);
    assert_eq!(err.len(), 1, "{}", end.stderr);
    assert!(err[0].starts_with("error: ") && err[0].contains("standard output"), "{}", err[0]);
    assert!(err[0].contains("No space left on device"), "{}", err[0]);
}

/// Training whose stdout, stderr or both go to a pipe nobody reads, or to closed descriptors,
/// trains every epoch and saves every file; a reader that stopped is no failure (status 0).
#[test]
fn training_whose_output_nobody_reads_finishes_and_saves() {
    let dir = tmp("nobody-reads");
    let data = synth(&dir);
    for (i, (stdout, stderr)) in [(true, false), (false, true), (true, true)].into_iter().enumerate() {
        let out = dir.join(format!("run{i}"));
        let mut cmd = Command::new(BIN);
        cmd.args(train_args(&data, &out, 2)).stdin(Stdio::null());
        cmd.stdout(if stdout { Stdio::from(pipe_without_reader()) } else { Stdio::piped() });
        cmd.stderr(if stderr { Stdio::from(pipe_without_reader()) } else { Stdio::piped() });
        let what = format!("training with closed pipes (stdout {stdout}, stderr {stderr})");
        let end = wait(cmd.spawn().unwrap(), 300, &what);
        end.assert_no_crash(&what);
        assert_eq!(end.status.code(), Some(0), "{what}: {}", end.stderr);
        assert_trained(&out, 2);
    }
    // A reader that takes the first line and goes away.
    let out = dir.join("run-head");
    let mut child = Command::new(BIN)
        .args(train_args(&data, &out, 2))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    assert!(first.starts_with("output: "), "{first}");
    let end = wait(child, 300, "training | head -1");
    end.assert_no_crash("training | head -1");
    assert_eq!(end.status.code(), Some(0), "{}", end.stderr);
    assert_trained(&out, 2);
    // Descriptors closed outright (`>&- 2>&-`).
    let out = dir.join("run-closed");
    let script = format!("exec \"$BIN\" {} >&- 2>&-", train_args(&data, &out, 1).join(" "));
    let end = shell(&script, 300);
    end.assert_no_crash("training >&- 2>&-");
    assert_eq!(end.status.code(), Some(0));
    assert_trained(&out, 1);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Training with stdout on a full device trains and saves everything, then says on stderr, in
/// one line, that its output was lost, and exits 1; stderr on a full device changes nothing.
#[test]
fn training_into_a_full_device_saves_then_says_so() {
    let dir = tmp("full");
    let data = synth(&dir);
    let out = dir.join("run");
    let script = format!("exec \"$BIN\" {} >/dev/full", train_args(&data, &out, 2).join(" "));
    let end = shell(&script, 300);
    end.assert_no_crash("training >/dev/full");
    assert_eq!(end.status.code(), Some(1), "{}", end.stderr);
    assert_trained(&out, 2);
    let err = lines(&end.stderr);
    assert_eq!(err.len(), 1, "{}", end.stderr);
    assert!(err[0].starts_with("error: ") && err[0].contains("standard output"), "{}", err[0]);
    let out = dir.join("run2");
    let script = format!("exec \"$BIN\" {} 2>/dev/full", train_args(&data, &out, 2).join(" "));
    let end = shell(&script, 300);
    end.assert_no_crash("training 2>/dev/full");
    assert_eq!(end.status.code(), Some(0));
    assert!(end.stdout.contains("done: best test accuracy"), "{}", end.stdout);
    assert_trained(&out, 2);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Ctrl-C while stdout is on a full device: the run checkpoints, says on stderr that its output
/// was lost, and exits 130 all the same (the interrupt decides the status, so `train && eval`
/// stops there), not 1.
#[test]
fn ctrl_c_with_stdout_on_a_full_device_exits_130() {
    let dir = tmp("full-sigint");
    let data = synth(&dir);
    let out = dir.join("run");
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let child = Command::new(BIN)
        .args(train_args(&data, &out, 100_000))
        .stdin(Stdio::null())
        .stdout(full)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The lock is taken after the interrupt handler is set, before the first step.
    let lock = out.join(sliceout::train::folder::LOCK);
    let start = Instant::now();
    while !lock.exists() && start.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(lock.exists(), "the run never took its folder");
    // SAFETY: a signal to the child this test spawned.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let end = wait(child, 120, "training >/dev/full, then Ctrl-C");
    end.assert_no_crash("training >/dev/full, then Ctrl-C");
    assert_eq!(end.status.code(), Some(130), "{}", end.stderr);
    assert!(end.stderr.lines().any(|l| l.starts_with("error: ") && l.contains("standard output")), "{}", end.stderr);
    let ck = sliceout::io::checkpoint::load(&out.join("last.ckpt")).unwrap();
    assert!(ck.step > 0, "step {}", ck.step);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Under `ulimit -v` limits from the smallest the binary starts under up to one that trains,
/// every run either trains or fails with one line (the size it could not get, or the arena
/// it needs): never SIGABRT, SIGSEGV or a panic.
#[test]
fn memory_limits_fail_in_one_line_never_by_a_signal() {
    let dir = tmp("ulimit-v");
    let data = synth(&dir);
    // Below what `exec` needs to map the binary the kernel kills it before it runs (SIGSEGV
    // from `execve`): no code of ours can act there, so the search starts where `--version` runs.
    let mut kib = 4096u64;
    loop {
        let end = shell(&format!("ulimit -v {kib}; exec \"$BIN\" --version"), 60);
        if end.status.success() {
            break;
        }
        kib += 1024;
        assert!(kib < 1 << 22, "the binary never started under a memory limit");
    }
    let (mut failed, mut trained) = (0, 0);
    for step in 0..40u64 {
        let limit = kib + step * 2048;
        let out = dir.join(format!("run{limit}"));
        let script = format!("ulimit -v {limit}; exec \"$BIN\" {}", train_args(&data, &out, 1).join(" "));
        let end = shell(&script, 300);
        end.assert_no_crash(&format!("ulimit -v {limit}"));
        if end.status.success() {
            trained += 1;
            if trained == 2 {
                break;
            }
            continue;
        }
        failed += 1;
        assert_eq!(end.status.code(), Some(1), "ulimit -v {limit}: {}", end.stderr);
        let err = lines(&end.stderr);
        assert_eq!(err.len(), 1, "ulimit -v {limit}: one line expected:\n{}", end.stderr);
        assert!(err[0].starts_with("error: "), "ulimit -v {limit}: {}", err[0]);
        let named = ["bytes", "KiB", "MiB", "GiB"].iter().any(|unit| err[0].contains(unit));
        assert!(named, "ulimit -v {limit}: no size named: {}", err[0]);
    }
    assert!(failed > 0 && trained > 0, "limits tried: {failed} failed, {trained} trained");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Under `ulimit -f` smaller than a checkpoint, SIGXFSZ does not kill the run: the write fails
/// with "File too large" named in one line, no temporary file is left, and the same command
/// without the limit then trains in that folder.
#[test]
fn a_file_size_limit_is_reported_and_the_folder_trains_afterwards() {
    let dir = tmp("ulimit-f");
    let data = synth(&dir);
    let out = dir.join("run");
    let args = train_args(&data, &out, 2).join(" ");
    let end = shell(&format!("ulimit -f 64; exec \"$BIN\" {args}"), 300);
    end.assert_no_crash("ulimit -f 64");
    assert_eq!(end.status.code(), Some(1), "{}", end.stderr);
    let err = lines(&end.stderr);
    assert_eq!(err.len(), 1, "{}", end.stderr);
    assert!(err[0].contains("File too large") && err[0].contains(".ckpt"), "{}", err[0]);
    assert!(err[0].contains(s(&out)), "{}", err[0]);
    let left: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
    let end = shell(&format!("exec \"$BIN\" {args}"), 300);
    end.assert_no_crash("after ulimit -f");
    assert!(end.status.success(), "{}", end.stderr);
    assert_trained(&out, 2);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Whether the process `pid` has `path` open or mapped (Linux's /proc).
#[cfg(target_os = "linux")]
fn holds(pid: u32, path: &Path) -> bool {
    let name = path.to_string_lossy();
    if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|t| t == path) {
                return true;
            }
        }
    }
    std::fs::read_to_string(format!("/proc/{pid}/maps")).is_ok_and(|m| m.contains(&*name))
}

/// A data file truncated while the binary reads it (the test watches /proc for the moment it
/// is open, then cuts it to a few records) is an error naming the file, never SIGBUS. A
/// truncation that comes too late is no failure (the run then trains on what it read); at
/// least one of the tries must land.
#[cfg(target_os = "linux")]
#[test]
fn a_data_file_truncated_while_read_is_named_not_a_crash() {
    let dir = tmp("truncated");
    let data = synth(&dir);
    let big = data.join("data_batch_1.bin");
    // Enough records that reading them takes a while: 12000 CIFAR-10 records (36 MiB).
    let record: Vec<u8> = std::fs::read(&big).unwrap()[..3073].to_vec();
    let bytes: Vec<u8> = record.iter().copied().cycle().take(3073 * 12000).collect();
    let (mut landed, mut tries) = (0, 0);
    while landed == 0 && tries < 6 {
        tries += 1;
        std::fs::write(&big, &bytes).unwrap();
        let out = dir.join(format!("run{tries}"));
        let mut args = train_args(&data, &out, 1);
        args.extend(["--limit-test".to_string(), "10".to_string()]);
        let mut child = Command::new(BIN)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while !holds(child.id(), &big) && start.elapsed() < Duration::from_secs(30) {
            if child.try_wait().unwrap().is_some() {
                break;
            }
        }
        std::fs::OpenOptions::new().write(true).open(&big).unwrap().set_len(3073 * 5).unwrap();
        let read_it_all = Instant::now();
        // A run that read the whole file before the cut trains 12000 images: stop it once it
        // says what it trains on, which comes after the data are read.
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        let mut trains = false;
        while stdout.read_line(&mut line).unwrap_or(0) > 0 {
            if line.contains("train / ") {
                trains = true;
                let _ = child.kill();
                break;
            }
            line.clear();
        }
        let end = wait(child, 120, "training on a truncated file");
        if trains {
            assert!(read_it_all.elapsed() < Duration::from_secs(120));
            continue;
        }
        end.assert_no_crash("training on a file truncated while read");
        assert_eq!(end.status.code(), Some(1), "{}", end.stderr);
        let err = lines(&end.stderr);
        assert_eq!(err.len(), 1, "{}", end.stderr);
        assert!(err[0].contains(s(&big)) && err[0].contains("shrank"), "{}", err[0]);
        landed += 1;
    }
    assert!(landed > 0, "no truncation in {tries} tries came while the file was read");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A `libcuda.so.1` without `cuInit` (built here with `cc`): the automatic device falls back
/// to the CPU saying why in its one device line, `--device cuda` fails in one line; no panic
/// text either way. Without a C compiler the test fails when `CI` is set and is skipped
/// otherwise.
#[test]
fn a_broken_cuda_driver_is_one_line_not_a_panic() {
    let dir = tmp("fake-cuda");
    let lib = dir.join("lib");
    std::fs::create_dir_all(&lib).unwrap();
    std::fs::write(dir.join("fake.c"), "int sliceout_fake_cuda(void) { return 0; }\n").unwrap();
    let so = lib.join("libcuda.so.1");
    let built = Command::new("cc")
        .args(["-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", s(&so), s(&dir.join("fake.c"))])
        .status();
    if !built.is_ok_and(|s| s.success()) {
        let msg = "no C compiler (cc) to build a fake libcuda.so.1";
        if std::env::var_os("CI").is_some() {
            panic!("{msg}");
        }
        eprintln!("skipped: {msg}");
        return;
    }
    std::os::unix::fs::symlink("libcuda.so.1", lib.join("libcuda.so")).unwrap();
    let data = synth(&dir);
    let envs = [("SLICEOUT_CUDA_LIB_DIR", s(&lib)), ("LD_LIBRARY_PATH", s(&lib)), ("RUST_BACKTRACE", "1")];
    let mut args = train_args(&data, &dir.join("run"), 1);
    let at = args.iter().position(|a| a == "cpu").unwrap();
    args[at] = "auto".into();
    let end = run(&args, &envs, 300);
    end.assert_no_crash("auto device, broken driver");
    assert!(end.status.success(), "{}", end.stderr);
    assert_eq!(end.stderr.trim(), "", "nothing on stderr expected");
    let device: Vec<&str> = end.stdout.lines().filter(|l| l.starts_with("device: ")).collect();
    assert_eq!(device.len(), 1, "{}", end.stdout);
    assert!(device[0].starts_with("device: cpu") && device[0].contains("cuInit"), "{}", device[0]);
    args[at] = "cuda".into();
    let end = run(&args, &envs, 300);
    end.assert_no_crash("--device cuda, broken driver");
    assert_eq!(end.status.code(), Some(1), "{}", end.stderr);
    let err = lines(&end.stderr);
    assert_eq!(err.len(), 1, "{}", end.stderr);
    assert!(err[0].starts_with("error: device: ") && err[0].contains("cuInit"), "{}", err[0]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `RAYON_NUM_THREADS` far above the cores is capped at them, said in one line on stderr; the
/// run goes at its normal pace. A value that is no number is refused in one line.
#[test]
fn rayon_threads_far_above_the_cores_are_capped() {
    let dir = tmp("rayon");
    let data = synth(&dir);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let end = run(&train_args(&data, &dir.join("run"), 1), &[("RAYON_NUM_THREADS", "100000")], 120);
    end.assert_no_crash("RAYON_NUM_THREADS=100000");
    assert!(end.status.success(), "{}", end.stderr);
    let err = lines(&end.stderr);
    assert_eq!(err.len(), 1, "{}", end.stderr);
    assert!(err[0].contains("RAYON_NUM_THREADS=100000") && err[0].contains(&format!("{cores} threads")), "{}", err[0]);
    assert!(end.stdout.contains(&format!("device: cpu ({cores} threads, ")), "{}", end.stdout);
    let end = run(&train_args(&data, &dir.join("run2"), 1), &[("RAYON_NUM_THREADS", "many")], 120);
    end.assert_no_crash("RAYON_NUM_THREADS=many");
    assert_eq!(end.status.code(), Some(1), "{}", end.stderr);
    let err = lines(&end.stderr);
    assert_eq!(err.len(), 1, "{}", end.stderr);
    assert!(err[0].contains("RAYON_NUM_THREADS") && err[0].contains("'many'"), "{}", err[0]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `SLICEOUT_CPU_ISA`: each instruction set this processor runs is named in the device line
/// and trains to the same losses as the others within f32 rounding (the sets differ only in how
/// a product is blocked and in the order bf16 pairs are added); an unknown name, and any set
/// the processor lacks, is refused in one line naming the sets it runs, never a signal.
#[test]
fn cpu_instruction_sets_are_named_agree_and_refuse_what_the_processor_lacks() {
    use sliceout::blas::Kernel;
    let dir = tmp("isa");
    let data = synth(&dir);
    let runs: Vec<&str> = Kernel::ALL.iter().filter(|(k, _)| k.supported()).map(|(_, n)| *n).collect();
    let mut losses = Vec::new();
    for name in &runs {
        let out = dir.join(format!("run-{name}"));
        let end = run(&train_args(&data, &out, 1), &[("SLICEOUT_CPU_ISA", name)], 300);
        end.assert_no_crash(name);
        assert!(end.status.success(), "{name}: {}", end.stderr);
        assert!(end.stdout.contains(&format!("threads, {name})")), "{name}: {}", end.stdout);
        let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
        let line: serde_json::Value = serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
        losses.push((name, line["train_loss"].as_f64().unwrap(), line["test_loss"].as_f64().unwrap()));
    }
    let (_, train0, test0) = losses[0];
    for &(name, train, test) in &losses {
        assert!((train - train0).abs() <= 1e-4 * train0.abs().max(1.0), "{name}: train loss {train} vs {train0}");
        assert!((test - test0).abs() <= 1e-4 * test0.abs().max(1.0), "{name}: test loss {test} vs {test0}");
    }
    let lacking = Kernel::ALL.iter().filter(|(k, _)| !k.supported()).map(|(_, n)| *n);
    for name in lacking.chain(["avx9000"]) {
        let end = run(&train_args(&data, &dir.join("refused"), 1), &[("SLICEOUT_CPU_ISA", name)], 60);
        end.assert_no_crash(name);
        assert_eq!(end.status.code(), Some(1), "{name}: {}", end.stderr);
        let err = lines(&end.stderr);
        assert_eq!(err.len(), 1, "{}", end.stderr);
        assert!(err[0].contains("SLICEOUT_CPU_ISA") && err[0].contains(name), "{}", err[0]);
        assert!(runs.iter().all(|r| err[0].contains(r)), "names the sets it runs: {}", err[0]);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Printing goes through the crate's never-panicking macros (`outln!`, `out!`, `errln!`):
/// `println!`, `print!`, `eprintln!` and `eprint!` panic when the write fails, so none may
/// appear in the library or binary code of `src/` (tests excepted).
#[test]
fn no_panicking_print_macros_in_src() {
    let mut found = vec![];
    let mut stack = vec![PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/src"))];
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        if p.extension().is_none_or(|e| e != "rs") || p.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            // A test module ends what is scanned of the file.
            let next = lines.get(i + 1).map_or("", |l| l.trim_start());
            if line.trim() == "#[cfg(test)]" && (next.starts_with("mod ") || next.starts_with("pub(crate) mod ")) {
                break;
            }
            let code = line.split("//").next().unwrap_or("");
            for m in ["println!", "print!", "eprintln!", "eprint!"] {
                let hit = code.match_indices(m).any(|(at, _)| {
                    at == 0 || !code[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == 'e')
                });
                if hit {
                    found.push(format!("{}:{}: {}", p.display(), i + 1, line.trim()));
                }
            }
        }
    }
    assert!(found.is_empty(), "printing that panics on a failed write:\n{}", found.join("\n"));
}
