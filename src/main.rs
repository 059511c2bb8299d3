//! The `sliceout` binary: parses the command line, runs the command, prints any error on one
//! line and exits non-zero.

use clap::Parser;
use sliceout::backend::cuda::Math;
use sliceout::cli::{self, Cli, Command, DataCommand};
use sliceout::error::{Error, Result};
use sliceout::train::{self, TrainArgs};
use sliceout::{bench, checkpoint, data, plan, profile, reference};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help/version to stdout (exit 0) and usage errors to stderr (exit 2).
            let _ = e.print();
            return ExitCode::from(e.exit_code() as u8);
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        None => train_cmd(cli::TrainFlags::default_flags()),
        Some(Command::Train(f)) => train_cmd(f),
        Some(Command::Eval(f)) => {
            let (loss, acc, config) = train::evaluate(
                &f.checkpoint,
                &f.data,
                cli::dataset(&f.dataset)?,
                f.coarse,
                f.batch,
                f.device.into(),
                f.limit_test,
            )?;
            println!(
                "{} keep {:.2}: test loss {:.4}  test accuracy {:.2}%",
                config.name(),
                config.keep,
                loss,
                100.0 * acc
            );
            Ok(())
        }
        Some(Command::Plan(f)) => {
            print!("{}", plan::command(&f)?);
            Ok(())
        }
        Some(Command::Profile(f)) => profile::command(&f),
        Some(Command::Bench(f)) => bench::command(&f),
        Some(Command::Selftest(f)) => selftest(&f),
        Some(Command::Data(DataCommand::Synth { out, train, test, seed })) => {
            data::synth::write_synthetic(&out, train, test, seed)?;
            println!("wrote {train} training and {test} test images (CIFAR-10 binary format) to {}", out.display());
            Ok(())
        }
    }
}

/// Every op on the chosen backend against the CPU, then the PyTorch reference on it.
fn selftest(f: &cli::SelftestFlags) -> Result<()> {
    let math = Math::parse(&f.math)?;
    let mut backend = train::backend(f.device.into(), math, true)?;
    let tol = if math == Math::Tf32 { 5e-3 } else { 1e-5 };
    let mut cpu = sliceout::backend::cpu::CpuBackend::reference();
    println!("ops on {} against the CPU (max relative error, tolerance {tol:.0e})", backend.name());
    let checks = sliceout::selftest::op_checks(&mut cpu, &mut *backend, tol);
    for c in &checks {
        println!("{:60} {:10.2e}  {}", c.op, c.max_rel_err, if c.pass { "ok" } else { "FAIL" });
    }
    let op_failed = checks.iter().filter(|c| !c.pass).count();
    println!("\nPyTorch reference (WRN-10-2, batch 4) on {}: relative error per tensor", backend.name());
    let rows = reference::check(&mut *backend)?;
    let ref_failed = reference::print(&rows);
    let (total, failed) = (checks.len() + rows.len(), op_failed + ref_failed);
    println!("\nselftest: {} passed, {} failed", total - failed, failed);
    if failed > 0 {
        return Err(Error::Msg(format!("selftest: {op_failed} op checks and {ref_failed} reference tensors failed")));
    }
    Ok(())
}

fn train_cmd(f: cli::TrainFlags) -> Result<()> {
    let resumed = match &f.resume {
        Some(p) => Some(checkpoint::load(p)?),
        None => None,
    };
    let cifar = Path::new("data/cifar-10-batches-bin");
    let synthetic = Path::new("data/synthetic");
    let mut demo = false;
    let data_dir = match &f.data {
        Some(d) => d.clone(),
        None if cifar.join("data_batch_1.bin").exists() => {
            println!("using CIFAR-10 from {}", cifar.display());
            cifar.to_path_buf()
        }
        None => {
            demo = true;
            if !synthetic.join("test_batch.bin").exists() {
                println!(
                    "no --data and no {}: generating a synthetic CIFAR-format dataset in {}",
                    cifar.display(),
                    synthetic.display()
                );
                data::synth::write_synthetic(synthetic, 5000, 1000, 0)?;
            }
            println!(
                "training a small WRN on {} (a demo of a couple of minutes; see data/README.md for CIFAR)",
                synthetic.display()
            );
            synthetic.to_path_buf()
        }
    };
    let from_ck = |pick: fn(&sliceout::model::ModelConfig) -> f64| resumed.as_ref().map(|c| pick(&c.config));
    let depth = f.model.depth.or(from_ck(|c| c.depth as f64).map(|v| v as usize)).unwrap_or(if demo { 10 } else { 16 });
    let widen = f.model.widen.or(from_ck(|c| c.widen as f64).map(|v| v as usize)).unwrap_or(if demo { 2 } else { 4 });
    let keep = f.model.keep.or(from_ck(|c| c.keep)).unwrap_or(1.0);
    let out = match (&f.out, &f.resume) {
        (Some(o), _) => o.clone(),
        (None, Some(r)) => r.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(".")),
        (None, None) => PathBuf::from("runs").join(timestamp()),
    };
    let args = TrainArgs {
        data: data_dir,
        dataset: cli::dataset(&f.dataset)?,
        coarse: f.coarse,
        depth,
        widen,
        keep,
        align: f.align,
        epochs: f.epochs.unwrap_or(if demo { 4 } else { 200 }),
        batch: f.batch,
        lr: f.lr,
        momentum: f.momentum,
        wd: f.wd,
        nesterov: !f.no_nesterov,
        schedule: cli::lr_schedule(f.schedule),
        seed: f.seed,
        device: f.device.into(),
        math: Math::parse(&f.math)?,
        out,
        limit_train: f.limit_train,
        limit_test: f.limit_test,
        augment: !f.no_augment,
        checkpoint_every: f.checkpoint_every,
        resume: f.resume.clone(),
        options: f.memory.options(),
        verbose: true,
        stop_after: None,
    };
    println!("output: {}", args.out.display());
    train::catch_interrupt();
    let summary = train::train(&args)?;
    if let Some(step) = summary.stopped_at {
        let ck = args.out.join("last.ckpt");
        println!("stopped after step {step}; checkpoint {}", ck.display());
        println!("resume with: sliceout train --resume {} (plus the same --data and flags)", ck.display());
        return Ok(());
    }
    println!(
        "done: best test accuracy {:.2}%; metrics, curves.svg and checkpoints in {}",
        100.0 * summary.best_acc,
        summary.out.display()
    );
    Ok(())
}

/// `YYYYMMDD-HHMMSS` (UTC) for the default run folder.
fn timestamp() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = (secs / 86400, secs % 86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}{m:02}{d:02}-{:02}{:02}{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}
