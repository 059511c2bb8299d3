//! `sliceout train`: flags -> `TrainArgs` (a resumed run's own model, step-count values,
//! settings and data folder where flags leave them out), the no-argument demo (CIFAR-10 when present, else a generated
//! synthetic set), the default `runs/<timestamp>` folder, Ctrl-C handling, and the closing lines.

use super::flags::{self, BatchFlag, TrainFlags};
use super::Done;
use crate::backend::{self, DeviceChoice};
use crate::data;
use crate::data::Limits;
use crate::dist::{self, Reducer, Sharding};
use crate::error::{Error, Result};
use crate::fit;
use crate::gpu::Math;
use crate::ir::{mib, Precision, Target};
use crate::model_file::{self, Stated};
use crate::schedule::{InputGrad, Lowering, Options};
use crate::train::recorded::{self, Recorded};
use crate::train::state::RunMeta;
use crate::train::{self, folder, LrSchedule, Resumed, TrainArgs};
use std::path::{Path, PathBuf};

pub fn command(f: TrainFlags) -> Result<Done> {
    match dist::launch()? {
        None if f.same_batch => Err(Error::Msg(
            "--same-batch is for a run launched by mpirun (every rank then trains the whole batch); this process is one rank alone"
                .into(),
        )),
        None => run(f, None),
        Some(mut reducer) => {
            let result = run(f, Some(&mut *reducer));
            match result {
                Ok(done) => Ok(done),
                Err(e) => end_job(&*reducer, &e),
            }
        }
    }
}

/// Ends a distributed job that failed on this rank: rank 0 says why and ends every rank; a
/// rank that alone failed says so, naming itself. Another rank first gives rank 0 time to end
/// the job when it failed too (as it does on flags or data every rank refuses), so that an
/// error is one line. No rank returns: one that finalised MPI alone would leave the others
/// waiting in a collective.
fn end_job(reducer: &dyn Reducer, e: &Error) -> ! {
    let rank = reducer.rank();
    if rank != 0 {
        std::thread::sleep(std::time::Duration::from_secs(5));
        errln!("error: rank {rank}: {e}");
    } else {
        errln!("error: {e}");
    }
    crate::say::flush_stdout();
    reducer.abort(1)
}

/// The train command on this process, one rank of a distributed run when `reducer` is given.
fn run(f: TrainFlags, reducer: Option<&mut (dyn Reducer + 'static)>) -> Result<Done> {
    let rank = reducer.as_ref().map_or(0, |r| r.rank());
    let ranks = reducer.as_ref().map_or(1, |r| r.ranks());
    if reducer.is_some() {
        check_distributed(&f)?;
    }
    let (mut args, demo, resumed) = checked_run(&f)?;
    // Rank 0 alone prints, as it alone writes.
    args.verbose = rank == 0;
    if demo {
        prepare_demo_data(&args.data)?;
    }
    if let Some(BatchFlag::Auto { cap }) = f.batch {
        if args.resume.is_some() {
            return Err(Error::flag("--batch", "auto", "a number with --resume: a resumed run keeps its batch"));
        }
        args.batch = auto_batch(&args, cap)?;
        args.validate()?;
    }
    // The default folder is claimed (made, never shared) once the flags are known to be sane,
    // and removed again if the run stops before writing anything into it.
    let fresh_folder = f.out.is_none() && f.resume.is_none();
    if fresh_folder {
        args.out = folder::new_timestamped(Path::new("runs"))?;
    }
    if args.verbose {
        outln!("output: {}", args.out.display());
        if let Some(init) = &args.init {
            outln!("initial weights: {}", init.display());
        }
    }
    let sharding = if f.same_batch { Sharding::Same } else { Sharding::Shard };
    // A distributed run is ended by a signal as a whole (mpirun passes it on to every rank):
    // one rank stopping alone between steps would leave the others waiting.
    if reducer.is_none() {
        train::catch_interrupt();
    }
    let summary = match train::train_on(&args, reducer.map(|r| (r as &mut dyn Reducer, sharding)), resumed) {
        Ok(s) => s,
        Err(e) => {
            if fresh_folder {
                let _ = std::fs::remove_dir(&args.out);
            }
            return Err(e);
        }
    };
    if let Some(step) = summary.stopped_at {
        let ck = args.out.join("last.ckpt");
        if args.verbose {
            outln!("stopped after step {step}; checkpoint {}", ck.display());
            let launcher = if ranks > 1 { format!("mpirun -np {ranks} ") } else { String::new() };
            outln!("resume with: {launcher}{}", resume_command(&args));
        }
        return Ok(Done::Interrupted);
    }
    if !args.verbose {
        return Ok(Done::Finished);
    }
    outln!(
        "done: best test accuracy {:.2}%; metrics, curves.svg and checkpoints in {}",
        100.0 * summary.best_acc,
        summary.out.display()
    );
    Ok(Done::Finished)
}

/// What a distributed launch must say that one rank may leave out: the folder and the data,
/// which a rank cannot make up alone (every rank would claim its own timestamped folder or
/// write the demo set), and a batch that is a number.
fn check_distributed(f: &TrainFlags) -> Result<()> {
    if f.out.is_none() && f.resume.is_none() {
        return Err(Error::flag("--out", "(none)", "a run folder under mpirun (every rank must name the same one)"));
    }
    if f.data.is_none() && f.resume.is_none() {
        return Err(Error::flag(
            "--data",
            "(none)",
            "a dataset folder under mpirun (the demo set is made by one process)",
        ));
    }
    if let Some(BatchFlag::Auto { .. }) = f.batch {
        return Err(Error::flag(
            "--batch",
            "auto",
            "a number under mpirun (the global batch; each rank trains its share)",
        ));
    }
    Ok(())
}

const CIFAR: &str = "data/cifar-10-batches-bin";
const SYNTHETIC: &str = "data/synthetic";

/// The command that resumes the run of `args` from its `last.ckpt`: the checkpoint records its
/// settings and data folder, so only `--data` where it could not record it (a path that is no
/// UTF-8 text) and the device asked for are added. Each path is one POSIX shell word.
pub fn resume_command(args: &TrainArgs) -> String {
    let ck = args.out.join("last.ckpt");
    let mut words = vec!["sliceout".to_string(), "train".into(), "--resume".into(), shell_word(&ck.to_string_lossy())];
    if recorded::data_text(&args.data).is_none() {
        words.extend(["--data".into(), shell_word(&args.data.to_string_lossy())]);
    }
    match args.device {
        DeviceChoice::Auto => {}
        DeviceChoice::Cpu => words.extend(["--device".into(), "cpu".into()]),
        DeviceChoice::Cuda => words.extend(["--device".into(), "cuda".into()]),
    }
    words.join(" ")
}

/// `s` as one POSIX shell word: as it is when it holds nothing a shell treats specially, else
/// in single quotes, each `'` written `'\''`.
pub fn shell_word(s: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_-+=.,:/@%".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// `--data`, else resuming, the folder the run recorded (said in one line, or an error asking
/// for `--data` when it recorded none); else CIFAR-10 in `data/cifar-10-batches-bin`, else the
/// synthetic demo set. And whether it is the demo.
fn data_folder(f: &TrainFlags, resumed: Option<&RunMeta>) -> Result<(PathBuf, bool)> {
    Ok(match (&f.data, resumed, &f.resume) {
        (Some(d), _, _) => (d.clone(), false),
        (None, Some(meta), Some(ck)) => match &meta.recorded.data {
            Some(d) => {
                outln!("data: {} (the run's, recorded in {})", d.display(), ck.display());
                (d.clone(), false)
            }
            None => {
                let msg =
                    "records no dataset folder (an older checkpoint): resume with --data FOLDER, the run's dataset";
                return Err(Error::checkpoint(ck, msg));
            }
        },
        (None, ..) if Path::new(CIFAR).join("data_batch_1.bin").exists() => {
            outln!("using CIFAR-10 from {CIFAR}");
            (PathBuf::from(CIFAR), false)
        }
        (None, ..) => (PathBuf::from(SYNTHETIC), true),
    })
}

/// Generates the demo's synthetic set in `dir` unless it is complete.
fn prepare_demo_data(dir: &Path) -> Result<()> {
    if !dir.join("test_batch.bin").exists() {
        outln!("no --data and no {CIFAR}: generating a synthetic CIFAR-format dataset in {}", dir.display());
        // The demo's own folder: what an interrupted generation left is replaced.
        data::synth::write_synthetic(dir, 5000, 1000, 0, true)?;
    }
    outln!("training a small WRN on {} (a demo of a couple of minutes; see data/README.md for CIFAR)", dir.display());
    Ok(())
}

/// The run the flags describe, its flags checked (what needs the data is checked as the run
/// starts), and whether it is the demo. Nothing is generated or created yet.
pub fn checked_args(f: &TrainFlags) -> Result<(TrainArgs, bool)> {
    checked_run(f).map(|(args, demo, _)| (args, demo))
}

/// [`checked_args`], and the checkpoint resumed, read once here for the run's defaults and
/// handed to the run ([`train::train_on`]) rather than read again.
pub fn checked_run(f: &TrainFlags) -> Result<(TrainArgs, bool, Option<Resumed>)> {
    let resumed = f.resume.as_deref().map(Resumed::load).transpose()?;
    let (data_dir, demo) = data_folder(f, resumed.as_ref().map(Resumed::meta))?;
    let args = train_args(f, data_dir, demo, resumed.as_ref())?;
    args.validate()?;
    Ok((args, demo, resumed))
}

/// The run the flags describe. Resuming, the model, what fixes the step count (batch, epochs,
/// training images) and the recorded settings (`train::recorded`) default to the checkpoint's;
/// the output folder to the checkpoint's folder. Starting from given weights (`--init`), the
/// model defaults to what the file states.
fn train_args(f: &TrainFlags, data: PathBuf, demo: bool, resumed: Option<&Resumed>) -> Result<TrainArgs> {
    let fresh = RunMeta::default();
    let (config, meta) = (resumed.map(|r| *r.config()), resumed.map_or(&fresh, Resumed::meta));
    let run = &meta.recorded;
    let stated = match (&f.init, config) {
        (Some(p), _) => model_file::read(p)?.stated(p)?,
        (None, Some(c)) => {
            Stated { depth: Some(c.depth), widen: Some(c.widen), keep: Some(c.keep), ..Stated::default() }
        }
        (None, None) => Stated::default(),
    };
    let out = match (&f.out, &f.resume) {
        (Some(o), _) => o.clone(),
        (None, Some(r)) => {
            r.parent().filter(|p| !p.as_os_str().is_empty()).map_or_else(|| PathBuf::from("."), Path::to_path_buf)
        }
        // Claimed by `command` once the flags check out.
        (None, None) => PathBuf::new(),
    };
    let keep = f.model.keep.or(stated.keep).unwrap_or(1.0);
    // A switch left out takes the run's value; given, its own.
    let switch = |on: bool, off: bool, key: &str, default: bool| {
        if on {
            true
        } else if off {
            false
        } else {
            run.get(key).unwrap_or(default)
        }
    };
    // The fallible fields first, in the order their errors have always been reported.
    let dataset = flags::dataset(&f.dataset)?;
    let math = match (f.math.as_deref(), run.text("math")) {
        (Some(m), _) | (None, Some(m)) => Math::parse(m)?,
        (None, None) => Math::Tf32,
    };
    let (options, lowering) = memory_options(f, run)?;
    Ok(TrainArgs {
        data,
        dataset,
        coarse: switch(f.coarse, false, "coarse", false),
        depth: f.model.depth.or(stated.depth).unwrap_or(if demo { 10 } else { 16 }),
        widen: f.model.widen.or(stated.widen).unwrap_or(if demo { 2 } else { 4 }),
        keep,
        align: f.align.or(run.get("align")).unwrap_or(1),
        epochs: f.epochs.or(meta.epochs).unwrap_or(if demo { 4 } else { 200 }),
        // `auto` is resolved once the flags check out (`command`).
        batch: match f.batch {
            Some(BatchFlag::Images(n)) => Some(n),
            _ => None,
        }
        .or(meta.batch)
        .unwrap_or(128),
        lr: f.lr.or(run.get("lr")).unwrap_or(0.1),
        momentum: f.momentum.or(run.get("momentum")).unwrap_or(0.9),
        wd: f.wd.or(run.get("wd")).unwrap_or(5e-4),
        nesterov: switch(f.nesterov, f.no_nesterov, "nesterov", true),
        schedule: f.schedule.map(flags::lr_schedule).or(meta.schedule).unwrap_or(LrSchedule::Cosine),
        seed: f.seed.or(run.get("seed")).unwrap_or(0),
        device: f.device.into(),
        math,
        out,
        limit_train: f.limit_train.or(meta.train_images),
        limit_test: f.limit_test.or(run.get("test_images")),
        augment: switch(f.augment, f.no_augment, "augment", true),
        checkpoint_every: f.checkpoint_every,
        resume: f.resume.clone(),
        init: f.init.clone(),
        force: f.force,
        options,
        lowering,
        bn_recal: f.bn_recal.or(run.get("bn_recal")).unwrap_or(default_bn_recal(keep)),
        verbose: true,
        stop_after: None,
        allow_changes: f.change,
        cpu_note: flags::gpu_only_note(f.math.is_some(), &f.memory),
    })
}

/// The memory flags' options and lowering, those that change the numbers taken from the run
/// where the flags leave them out.
pub(super) fn memory_options(f: &TrainFlags, run: &Recorded) -> Result<(Options, Lowering)> {
    let m = &f.memory;
    let (mut o, mut l) = m.options()?;
    if m.precision.is_none() {
        l.precision = run.text("precision").map_or(Ok(l.precision), Precision::parse)?;
    }
    if m.input_grad.is_none() {
        l.input_grad = run.text("input_grad").map_or(Ok(l.input_grad), InputGrad::parse)?;
    }
    o.col_chunk = m.col_chunk.or(run.get("col_chunk")).unwrap_or(o.col_chunk);
    o.col_budget_mib = m.col_budget.or(run.get("col_budget")).unwrap_or(o.col_budget_mib);
    o.in_place = match (m.in_place, m.no_in_place) {
        (true, _) => true,
        (_, true) => false,
        _ => run.get("in_place").unwrap_or(true),
    };
    l.winograd = match (m.winograd, m.no_winograd) {
        (true, _) => true,
        (_, true) => false,
        _ => run.get("winograd").unwrap_or(false),
    };
    Ok((o, l))
}

/// Batches BN is recalibrated over when `--bn-recal` is not given: 50 with SliceOut, where it
/// raised test accuracy by 1.0 (keep 0.75) and 4.4 points (keep 0.5) on Fashion-MNIST, none at
/// keep 1.0, where it changed nothing (BENCHMARKS.md).
fn default_bn_recal(keep: f64) -> usize {
    if keep < 1.0 {
        50
    } else {
        0
    }
}

/// `--batch auto`: the largest power of two (at most `cap` and the training images) whose plan
/// fits what the device has free now, less the resident dataset, cuBLAS's workspace on a GPU,
/// and a margin of a tenth plus 256 MiB for what the plan does not count. Said in one line.
fn auto_batch(args: &TrainArgs, cap: Option<usize>) -> Result<usize> {
    let limits = Limits { train: args.limit_train, test: args.limit_test };
    let ds = data::load_limited(&args.data, args.dataset, args.coarse, limits)?;
    let config = args.config(ds.classes, ds.channels);
    let resident = [&ds.train, &ds.test].iter().map(|s| s.images.len() + s.labels.len()).sum::<usize>();
    let train_len = ds.train.len;
    drop(ds);
    let (target, free) = backend::free_memory(args.device)?;
    let lowering = Lowering { target, ..args.lowering };
    let margin = free / 10 + (256 << 20);
    let workspace = if target == Target::Cuda { crate::gpu::WORKSPACES + fit::CUBLAS_LOADED } else { 0 };
    let cap = cap.unwrap_or(usize::MAX).min(train_len).min(1 << 16);
    let place = if target == Target::Cuda { "free on the GPU" } else { "available in host memory" };
    match fit::largest_power_of_two(&config, args.options, lowering, free, resident + workspace + margin, cap) {
        Some((batch, bytes)) => {
            outln!(
                "batch auto: {batch}, the largest power of two up to {cap} whose step ({:.0} MiB planned) fits the \
                 {:.0} MiB {place} less the dataset ({:.0} MiB) and a margin ({:.0} MiB)",
                mib(bytes),
                mib(free),
                mib(resident),
                mib(margin + workspace)
            );
            Ok(batch)
        }
        None => Err(Error::flag(
            "--batch",
            "auto",
            format!(
                "a number: not even one image's step fits the {:.0} MiB {place} less the dataset and a margin",
                mib(free)
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each word, read back by `sh`, is the string itself.
    #[test]
    fn shell_words_come_back_unchanged_through_sh() {
        let awkward = [
            "runs/2024-01-01_12-00-00/last.ckpt",
            "a b",
            "it's",
            "'",
            "''",
            "$HOME",
            "${x}",
            "`id`",
            "$(id)",
            "a\"b",
            "back\\slash",
            "semi;colon&amp|pipe",
            "new\nline",
            "tab\there",
            "*?[a]",
            "~user",
            "-n",
            "é ü",
            "",
        ];
        assert_eq!(shell_word("runs/a-b_c.d/last.ckpt"), "runs/a-b_c.d/last.ckpt");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
        assert_eq!(shell_word(""), "''");
        for s in awkward {
            // printf '%s\0' prints each argument as sh read it.
            let script = format!("printf '%s\\0' {}", shell_word(s));
            let out = std::process::Command::new("sh").arg("-c").arg(&script).output().unwrap();
            assert!(out.status.success(), "{script}");
            assert_eq!(String::from_utf8(out.stdout).unwrap(), format!("{s}\0"), "{script}");
        }
    }

    #[test]
    fn the_resume_command_adds_only_what_the_checkpoint_cannot_say() {
        let flags = TrainFlags { data: Some("d".into()), ..TrainFlags::default_flags() };
        let mut args = train_args(&flags, "data dir".into(), false, None).unwrap();
        args.out = "runs/my run".into();
        assert_eq!(resume_command(&args), "sliceout train --resume 'runs/my run/last.ckpt'");
        args.device = DeviceChoice::Cpu;
        assert_eq!(resume_command(&args), "sliceout train --resume 'runs/my run/last.ckpt' --device cpu");
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStrExt;
            args.data = std::ffi::OsStr::from_bytes(b"/data/\xff").into();
            assert!(
                resume_command(&args).ends_with("--data '/data/\u{fffd}' --device cpu"),
                "{}",
                resume_command(&args)
            );
        }
    }
}
