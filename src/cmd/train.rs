//! `sliceout train`: flags -> `TrainArgs`, the no-argument demo (CIFAR-10 when present, else a
//! generated synthetic set), Ctrl-C handling, and the closing lines.

use super::flags::{self, TrainFlags};
use crate::data;
use crate::error::Result;
use crate::export::{self, Stated};
use crate::gpu::Math;
use crate::io::checkpoint;
use crate::train::{self, TrainArgs};
use std::path::{Path, PathBuf};

pub fn command(f: TrainFlags) -> Result<()> {
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
    // Model flags default to what the resumed checkpoint or the initial weights state.
    let stated = match (&f.init, &resumed) {
        (Some(p), _) => export::read(p)?.stated(p)?,
        (None, Some(ck)) => Stated::of_checkpoint(ck),
        (None, None) => Stated::default(),
    };
    let depth = f.model.depth.or(stated.depth).unwrap_or(if demo { 10 } else { 16 });
    let widen = f.model.widen.or(stated.widen).unwrap_or(if demo { 2 } else { 4 });
    let keep = f.model.keep.or(stated.keep).unwrap_or(1.0);
    let out = match (&f.out, &f.resume) {
        (Some(o), _) => o.clone(),
        (None, Some(r)) => r.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(".")),
        (None, None) => PathBuf::from("runs").join(timestamp()),
    };
    let args = TrainArgs {
        data: data_dir,
        dataset: flags::dataset(&f.dataset)?,
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
        schedule: flags::lr_schedule(f.schedule),
        seed: f.seed,
        device: f.device.into(),
        math: Math::parse(&f.math)?,
        out,
        limit_train: f.limit_train,
        limit_test: f.limit_test,
        augment: !f.no_augment,
        checkpoint_every: f.checkpoint_every,
        resume: f.resume.clone(),
        init: f.init.clone(),
        options: f.memory.options(),
        bn_recal: f.bn_recal,
        verbose: true,
        stop_after: None,
    };
    println!("output: {}", args.out.display());
    if let Some(init) = &args.init {
        println!("initial weights: {}", init.display());
    }
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
