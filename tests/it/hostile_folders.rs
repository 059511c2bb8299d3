//! A run's folder and its lock are the run's alone, and a failed write never destroys what was
//! there: another run's files beside a resumed checkpoint are refused without --force; the
//! lock is never followed, replaced or named as any command's output; a link, FIFO or second
//! name put in place of a run file mid-run is refused in one line, never written through nor
//! waited on; `data synth --force` that runs out of room keeps the old dataset whole; a `runs`
//! link to nothing is named as such.

use crate::common::{self, sliceout, sliceout_in, tmp, BIN};
use sliceout::data::synth::write_synthetic;
use sliceout::io::checkpoint;
use sliceout::train::{EpochEnd, Run, TrainArgs};
use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

const LOCK: &str = ".sliceout.lock";

/// Longer than any case here takes: a run waiting on a FIFO fails the test instead of hanging.
const LIMIT: Duration = Duration::from_secs(60);

/// Fails in one line holding every one of `needles`.
fn refused(args: &[&str], needles: &[&str]) -> String {
    let (code, _, err) = sliceout(args);
    assert_ne!(code, 0, "{args:?} should fail");
    assert_eq!(err.trim().lines().count(), 1, "{args:?}: one line expected:\n{err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: message lacks '{n}':\n{err}");
    }
    err
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `train` of a WRN-10-`widen` on `data` into `out` for `epochs`, then `extra`.
fn train(data: &Path, out: &Path, widen: &str, epochs: &str, extra: &[&str]) -> Vec<String> {
    let base = ["train", "--data", s(data), "--out", s(out), "--depth", "10", "--widen", widen, "--batch", "8"];
    base.iter().chain(&["--epochs", epochs, "--device", "cpu"]).chain(extra).map(|a| a.to_string()).collect()
}

fn resume(data: &Path, ck: &Path, extra: &[&str]) -> Vec<String> {
    let base = ["train", "--resume", s(ck), "--data", s(data), "--device", "cpu", "--epochs", "2"];
    base.iter().chain(extra).map(|a| a.to_string()).collect()
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn ok(args: &[String]) -> String {
    let (code, so, err) = sliceout(&refs(args));
    assert_eq!(code, 0, "{args:?}: {err}");
    so
}

fn read(dir: &Path, names: &[&str]) -> Vec<Vec<u8>> {
    names.iter().map(|n| std::fs::read(dir.join(n)).unwrap()).collect()
}

fn run_id(ck: &Path) -> Option<String> {
    checkpoint::load(ck).unwrap().meta("run_id").map(String::from)
}

fn run_id_of_bytes(bytes: &[u8]) -> Option<String> {
    let path = std::env::temp_dir().join(format!("sliceout-folders-{}-ck", std::process::id()));
    std::fs::write(&path, bytes).unwrap();
    let id = run_id(&path);
    std::fs::remove_file(&path).unwrap();
    id
}

#[test]
fn resuming_beside_another_runs_files_is_refused_unless_forced() {
    let d = tmp("others");
    let data = d.join("data");
    write_synthetic(&data, 40, 8, 1, false).unwrap();
    let (a, b) = (d.join("a"), d.join("b"));
    ok(&train(&data, &a, "1", "1", &["--seed", "1"]));
    ok(&train(&data, &b, "1", "1", &["--seed", "2"]));
    let b_last = std::fs::read(b.join("last.ckpt")).unwrap();
    // A's checkpoint put in B's folder, beside B's other files.
    std::fs::copy(a.join("last.ckpt"), b.join("last.ckpt")).unwrap();
    let others = ["best.ckpt", "metrics.jsonl", "curves.svg"];
    let before = read(&b, &others);
    let args = resume(&data, &b.join("last.ckpt"), &[]);
    let err = refused(&refs(&args), &["holds files of another run", "--force"]);
    for f in others {
        assert!(err.contains(&format!("{f} (")), "{f} not named: {err}");
    }
    assert_eq!(read(&b, &others), before);
    let id_a = run_id(&a.join("last.ckpt")).unwrap();
    let id_b = run_id(&b.join("best.ckpt")).unwrap();
    assert!(id_a != id_b && run_id_of_bytes(&b_last) == Some(id_b.clone()));
    assert!(err.contains(&format!("of run {id_b}, not {id_a}")), "{err}");
    assert!(std::fs::read_to_string(a.join("curves.svg")).unwrap().contains(&id_a));
    // --force replaces them: B's folder now holds A's run, two epochs of it.
    let mut forced = args.clone();
    forced.push("--force".into());
    ok(&forced);
    let lines = std::fs::read_to_string(b.join("metrics.jsonl")).unwrap();
    let first_of_a = std::fs::read_to_string(a.join("metrics.jsonl")).unwrap();
    assert!(lines.lines().count() == 2 && lines.starts_with(&first_of_a), "{lines}");
    assert_eq!(run_id(&b.join("last.ckpt")), Some(id_a.clone()));
    // A resumes in its own folder, keeping its id.
    ok(&resume(&data, &a.join("last.ckpt"), &[]));
    assert_eq!(run_id(&a.join("last.ckpt")), Some(id_a));
    std::fs::remove_dir_all(&d).unwrap();
}

/// A run written before run ids (no id in its checkpoints, none in its picture) resumes in its
/// own folder and takes an id from then on.
#[test]
fn runs_from_before_run_ids_still_resume_in_their_own_folder() {
    let d = tmp("old");
    let data = d.join("data");
    write_synthetic(&data, 40, 8, 1, false).unwrap();
    let run = d.join("run");
    ok(&train(&data, &run, "1", "1", &[]));
    for ck in ["last.ckpt", "best.ckpt"] {
        let mut c = checkpoint::load(&run.join(ck)).unwrap();
        c.meta.retain(|(k, _)| k != "run_id");
        checkpoint::save(&run.join(ck), &c).unwrap();
    }
    let svg = std::fs::read_to_string(run.join("curves.svg")).unwrap();
    let old: String = svg.lines().filter(|l| !l.starts_with("<desc>")).collect::<Vec<_>>().join("\n");
    std::fs::write(run.join("curves.svg"), old).unwrap();
    ok(&resume(&data, &run.join("last.ckpt"), &[]));
    let id = run_id(&run.join("last.ckpt")).expect("an id from the resume on");
    assert!(std::fs::read_to_string(run.join("curves.svg")).unwrap().contains(&format!("sliceout run {id}")));
    assert_eq!(std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines().count(), 2);
    std::fs::remove_dir_all(&d).unwrap();
}

/// Puts something at, or in, a path (the first argument), maybe naming an outside file (the
/// second).
type Tamper = fn(&Path, &Path);

fn fifo(path: &Path) {
    assert!(Command::new("mkfifo").arg(path).status().unwrap().success());
}

#[test]
fn the_lock_is_never_followed_replaced_or_an_output() {
    let d = tmp("lock");
    let data = d.join("data");
    write_synthetic(&data, 40, 8, 1, false).unwrap();
    let run = d.join("run");
    ok(&train(&data, &run, "1", "1", &[]));
    let victim = d.join("victim.txt");
    std::fs::write(&victim, b"precious").unwrap();
    let lock = run.join(LOCK);
    // A link (to a file, to nothing) or a second name at the lock: refused, never written.
    let makes: [(&str, Tamper); 4] = [
        ("is a symbolic link to", |l, v| symlink(v, l).unwrap()),
        ("is a symbolic link to", |l, v| symlink(v.with_file_name("nothing"), l).unwrap()),
        ("is a file with 2 names (hard links)", |l, v| std::fs::hard_link(v, l).unwrap()),
        ("is a FIFO", |l, _| fifo(l)),
    ];
    for (what, make) in makes {
        make(&lock, &victim);
        let args = resume(&data, &run.join("last.ckpt"), &[]);
        refused(&refs(&args), &[s(&lock), what, "left as it is"]);
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(!d.join("nothing").exists());
        std::fs::remove_file(&lock).unwrap();
    }
    // No output flag writes a lock, wherever it is, held or not.
    let ck = run.join("last.ckpt");
    let writers = |target: &Path| -> Vec<Vec<String>> {
        let t = s(target);
        [
            vec!["export", "--checkpoint", s(&ck), "--out", t, "--format", "safetensors"],
            vec!["eval", "--checkpoint", s(&ck), "--data", s(&data), "--device", "cpu", "--batch", "4", "--logits", t],
            vec!["profile", "--device", "cpu", "--depth", "10", "--widen", "1", "--batch", "4", "--steps", "1"]
                .into_iter()
                .chain(["--trace", t])
                .collect(),
        ]
        .map(|v| v.iter().map(|a| a.to_string()).collect())
        .to_vec()
    };
    for target in [lock.clone(), d.join(LOCK)] {
        for args in writers(&target) {
            refused(&refs(&args), &[s(&target), "a file other than .sliceout.lock"]);
            assert!(!target.exists(), "{args:?} wrote {}", target.display());
        }
    }
    refused(&["data", "synth", "--out", s(&lock), "--train", "5", "--test", "1"], &[s(&lock), ".sliceout.lock"]);
    assert!(!lock.exists());
    // A trainer holds the folder: exporting over its lock is refused and the lock stays its,
    // so a second trainer is still kept out.
    let long = train(&data, &d.join("busy"), "2", "100000", &[]);
    let mut first = Command::new(BIN)
        .args(&long)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let held = d.join("busy").join(LOCK);
    let t0 = std::time::Instant::now();
    while std::fs::read_to_string(&held).map_or(true, |t| t.trim().is_empty()) && t0.elapsed() < LIMIT {
        std::thread::sleep(Duration::from_millis(20));
    }
    let inode = std::fs::metadata(&held).unwrap().ino();
    for args in writers(&held) {
        refused(&refs(&args), &[s(&held), "a file other than .sliceout.lock"]);
    }
    assert_eq!(std::fs::metadata(&held).unwrap().ino(), inode);
    refused(&refs(&long), &["in use by another sliceout process", &format!("pid {}", first.id())]);
    first.kill().unwrap();
    first.wait().unwrap();
    std::fs::remove_dir_all(&d).unwrap();
}

/// Trains one epoch of `args` in process, lets `tamper` change the run folder, then trains the
/// second epoch: its outcome (an error's text), or a failed test if it takes over [`LIMIT`].
fn tampered_mid_run(args: TrainArgs, tamper: Tamper, victim: PathBuf) -> Result<(), String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let trained = (|| -> sliceout::Result<()> {
            let mut run = Run::start(&args)?;
            for epoch in 0..2 {
                if epoch == 1 {
                    tamper(&args.out, &victim);
                }
                match run.epoch(epoch)? {
                    EpochEnd::Finished { seconds, images } => run.end_epoch(epoch, seconds, images)?,
                    EpochEnd::Stopped { .. } => unreachable!("no stop was asked for"),
                }
            }
            Ok(())
        })();
        let _ = tx.send(trained.map_err(|e| e.to_string()));
    });
    rx.recv_timeout(LIMIT).expect("the run hung on what was put in its folder")
}

fn swap(path: &Path, with: impl FnOnce(&Path)) {
    std::fs::remove_file(path).unwrap();
    with(path);
}

#[test]
fn run_files_swapped_mid_run_are_refused_never_written_through_nor_waited_on() {
    let d = tmp("mid-run");
    let data = d.join("data");
    write_synthetic(&data, 40, 8, 1, false).unwrap();
    let victim = d.join("victim.txt");
    let cases: [(&str, &str, Tamper); 6] = [
        ("metrics.jsonl", "is a symbolic link to", |o, v| swap(&o.join("metrics.jsonl"), |p| symlink(v, p).unwrap())),
        ("metrics.jsonl", "is a FIFO", |o, _| swap(&o.join("metrics.jsonl"), fifo)),
        ("metrics.jsonl", "is a file with 2 names", |o, v| {
            swap(&o.join("metrics.jsonl"), |p| std::fs::hard_link(v, p).unwrap())
        }),
        ("curves.svg", "is a symbolic link to", |o, v| swap(&o.join("curves.svg"), |p| symlink(v, p).unwrap())),
        ("curves.svg", "is a FIFO", |o, _| swap(&o.join("curves.svg"), fifo)),
        ("last.ckpt", "is a FIFO", |o, _| swap(&o.join("last.ckpt"), fifo)),
    ];
    for (i, (name, what, tamper)) in cases.into_iter().enumerate() {
        std::fs::write(&victim, b"precious").unwrap();
        let out = d.join(format!("run-{i}"));
        let args = TrainArgs { epochs: 2, batch: 8, ..common::args(&data, &out) };
        let err = tampered_mid_run(args, tamper, victim.clone()).expect_err(name);
        assert!(err.contains(&format!("{name}: {what}")) && err.contains("left as it is"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious", "{name} was written through");
        let kind = std::fs::symlink_metadata(out.join(name)).unwrap().file_type();
        assert!(kind.is_symlink() || kind.is_fifo() || kind.is_file(), "{name} was replaced");
        if what.contains("FIFO") {
            assert!(kind.is_fifo(), "the FIFO at {name} was replaced");
        }
    }
    std::fs::remove_dir_all(&d).unwrap();
}

const DATA_FILES: [&str; 7] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
    "test_batch.bin",
    "batches.meta.txt",
];

/// `data synth --force` that runs out of room partway (a file-size limit plays the full disk:
/// with SIGXFSZ ignored a write past it fails with EFBIG, as one past a full disk fails with
/// ENOSPC) keeps the old set whole and leaves nothing of the new one.
#[test]
fn a_synth_that_runs_out_of_room_keeps_the_old_dataset_whole() {
    let d = tmp("synth-full");
    let data = d.join("data");
    write_synthetic(&data, 25, 4, 1, false).unwrap();
    std::fs::write(data.join("notes.txt"), b"mine").unwrap();
    let before = read(&data, &DATA_FILES);
    // The training files fit under the limit, the test file does not: it fails after the
    // training files were drawn.
    let line = "trap '' XFSZ; ulimit -f 64; exec \"$0\" \"$@\"";
    let out = Command::new("sh")
        .arg("-c")
        .arg(line)
        .arg(BIN)
        .args(["data", "synth", "--out", s(&data), "--train", "25", "--test", "5000", "--seed", "2", "--force"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("test_batch.bin") && !err.contains("panicked"), "{err}");
    assert_eq!(read(&data, &DATA_FILES), before, "the old dataset was not kept whole");
    let mut names: Vec<String> =
        std::fs::read_dir(&data).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    let mut expected: Vec<String> = DATA_FILES.iter().chain(&["notes.txt"]).map(|n| n.to_string()).collect();
    expected.sort();
    assert_eq!(names, expected, "something of the failed generation was left");
    // Without the limit the new set replaces the old one whole.
    let args = ["data", "synth", "--out", s(&data), "--train", "25", "--test", "6", "--seed", "2", "--force"];
    let (code, _, err) = sliceout(&args);
    assert_eq!(code, 0, "{err}");
    let after = read(&data, &DATA_FILES);
    assert!((0..6).all(|i| after[i] != before[i]));
    assert_eq!(sliceout::data::load(&data, None, false).unwrap().test.len, 6);
    assert_eq!(std::fs::read_dir(&data).unwrap().count(), 8);
    std::fs::remove_dir_all(&d).unwrap();
}

/// The default folder `runs` as a symbolic link to nothing: one line naming the link.
#[test]
fn a_dangling_runs_link_is_named_as_such() {
    let d = tmp("dangling");
    let data = d.join("data");
    write_synthetic(&data, 40, 8, 1, false).unwrap();
    let cwd = d.join("here");
    std::fs::create_dir(&cwd).unwrap();
    symlink(d.join("gone"), cwd.join("runs")).unwrap();
    let args = ["train", "--data", s(&data), "--depth", "10", "--widen", "1", "--batch", "8", "--device", "cpu"];
    let (code, _, err) = sliceout_in(&cwd, &args);
    assert_ne!(code, 0);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("runs is a symbolic link to") && err.contains("gone, which does not exist"), "{err}");
    assert!(!d.join("gone").exists());
    std::fs::remove_dir_all(&d).unwrap();
}
