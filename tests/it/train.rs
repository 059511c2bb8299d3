//! Training end to end on generated CIFAR-format data: a small WRN learns (far above chance),
//! and an interrupted run resumed from its checkpoint ends bit-identical to an uninterrupted one.

use crate::common::{self, checkpoint_bits, tmp};
use common::args;
use sliceout::backend::DeviceChoice;
use sliceout::data::synth::write_synthetic;
use sliceout::io::checkpoint;
use sliceout::io::metrics::{self, EpochMetrics};
use sliceout::train::{self, LrSchedule, TrainArgs};

#[test]
fn a_small_wrn_learns_the_synthetic_classes() {
    // WRN-10-2 with SliceOut keep 0.5, 1500 images, 3 epochs.
    let d = tmp("learn");
    write_synthetic(&d.join("data"), 1500, 300, 0, false).unwrap();
    let a = TrainArgs { widen: 2, batch: 50, lr: 0.1, bn_recal: 4, ..args(&d.join("data"), &d.join("run")) };
    let t0 = std::time::Instant::now();
    let s = train::train(&a).unwrap();
    let last = s.history.last().unwrap();
    println!("{:?} in {:.1} s", last, t0.elapsed().as_secs_f64());
    assert_eq!(s.history.len(), 3);
    assert!(last.test_acc > 0.5, "test accuracy {:.3} (chance is 0.1)", last.test_acc);
    assert!(last.train_loss < s.history[0].train_loss);
    // --bn-recal: every epoch is also tested with BN recalibrated for the full network.
    for m in &s.history {
        assert!(m.test_acc_recal.is_some_and(|a| (0.0..=1.0).contains(&a)), "{m:?}");
    }
    assert!(last.test_acc_recal.unwrap() > 0.5, "{last:?}");
    // What the run leaves behind.
    let lines = metrics::read_jsonl(&d.join("run/metrics.jsonl")).unwrap();
    assert_eq!(lines, s.history);
    let svg = std::fs::read_to_string(d.join("run/curves.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("</svg>"));
    let ck = checkpoint::load(&d.join("run/last.ckpt")).unwrap();
    assert_eq!((ck.epoch, ck.step), (3, 3 * 30));
    assert!(d.join("run/best.ckpt").exists());
    // eval rebuilds the model from the checkpoint and agrees with the last epoch's test figures.
    let e = train::evaluate(&train::EvalRequest {
        model: &d.join("run/last.ckpt"),
        data: &d.join("data"),
        dataset: None,
        coarse: false,
        batch: 64,
        device: DeviceChoice::Cpu,
        limit_test: None,
        bn_recal: 4,
        precision: sliceout::ir::Precision::Fp32,
    })
    .unwrap();
    let (loss, acc, config) = (e.loss, e.acc, e.config);
    assert_eq!(config.widen, 2);
    assert!((acc - last.test_acc).abs() < 1e-9, "{acc} vs {}", last.test_acc);
    assert!((loss - last.test_loss).abs() < 1e-4 * last.test_loss.max(1.0), "{loss} vs {}", last.test_loss);
    let (_, recal_acc, batches) = e.recalibrated.expect("eval --bn-recal reports both");
    assert_eq!(batches, 4);
    assert!(recal_acc > 0.5, "recalibrated test accuracy {recal_acc}");
}

/// Metrics without the wall-clock fields.
fn comparable(m: &[EpochMetrics]) -> Vec<(usize, u64, u64, u64, u64)> {
    m.iter()
        .map(|m| (m.epoch, m.train_loss.to_bits(), m.train_acc.to_bits(), m.test_loss.to_bits(), m.test_acc.to_bits()))
        .collect()
}

#[test]
fn resumed_runs_end_bit_identical() {
    let d = tmp("resume");
    let data = d.join("data");
    write_synthetic(&data, 200, 40, 1, false).unwrap();
    // Uninterrupted: 3 epochs of 10 steps.
    let full = train::train(&args(&data, &d.join("full"))).unwrap();
    assert_eq!(full.stopped_at, None);

    for (name, stop) in [("after-epoch-1", 10), ("after-step-13", 13)] {
        let out = d.join(name);
        let first = train::train(&TrainArgs { stop_after: Some(stop), ..args(&data, &out) }).unwrap();
        assert_eq!(first.stopped_at, Some(stop), "{name}");
        let ck = out.join("last.ckpt");
        assert_eq!(checkpoint::load(&ck).unwrap().step, stop as u64);
        let resumed = train::train(&TrainArgs { resume: Some(ck), ..args(&data, &out) }).unwrap();
        assert_eq!(resumed.stopped_at, None);
        assert_eq!(
            checkpoint_bits(&out.join("last.ckpt")),
            checkpoint_bits(&d.join("full/last.ckpt")),
            "{name}: parameters differ"
        );
        let lines = metrics::read_jsonl(&out.join("metrics.jsonl")).unwrap();
        assert_eq!(comparable(&lines), comparable(&full.history), "{name}: metrics differ");
    }
}

/// A run resumed with nothing but `--resume`, `--data` and the optimiser's flags takes its
/// model, batch, epochs, schedule and training images from the checkpoint and ends exactly
/// where the uninterrupted run ends.
#[test]
fn a_run_resumed_from_the_checkpoint_alone_ends_bit_identical() {
    use clap::Parser;
    use sliceout::cmd::flags::{Cli, Command};
    let d = tmp("resume-defaults");
    let data = d.join("data");
    write_synthetic(&data, 200, 40, 1, false).unwrap();
    let a = |out: &str| TrainArgs {
        limit_train: Some(100),
        schedule: LrSchedule::Step,
        batch: 10,
        ..args(&data, &d.join(out))
    };
    let full = train::train(&a("full")).unwrap();
    let first = train::train(&TrainArgs { stop_after: Some(17), ..a("split") }).unwrap();
    assert_eq!(first.stopped_at, Some(17));
    let ck = d.join("split/last.ckpt");
    let argv = ["sliceout", "train", "--resume", ck.to_str().unwrap(), "--data", data.to_str().unwrap()];
    let argv = [&argv[..], &["--device", "cpu", "--lr", "0.05", "--seed", "3"]].concat();
    let Some(Command::Train(f)) = Cli::try_parse_from(argv).unwrap().command else { unreachable!() };
    let (mut resumed, demo) = sliceout::cmd::train::checked_args(&f).unwrap();
    assert!(!demo);
    assert_eq!((resumed.batch, resumed.epochs, resumed.limit_train), (10, 3, Some(100)));
    assert_eq!((resumed.schedule, resumed.depth, resumed.keep), (LrSchedule::Step, 10, 0.5));
    resumed.verbose = false;
    resumed.math = sliceout::gpu::Math::Fp32;
    train::train(&resumed).unwrap();
    assert_eq!(checkpoint_bits(&d.join("split/last.ckpt")), checkpoint_bits(&d.join("full/last.ckpt")));
    let lines = metrics::read_jsonl(&d.join("split/metrics.jsonl")).unwrap();
    assert_eq!(comparable(&lines), comparable(&full.history));
}

/// Folding BN + ReLU into the backward's im2col (`--fold-bn`) changes where values are
/// computed, not what they are: fixed-seed runs with and without it, fp32 (where the strided
/// blocks fold) and bf16 (where every im2col layer folds), end with the same parameters,
/// momentum and statistics to the bit and the same metrics.
#[test]
fn runs_with_and_without_the_bn_fold_end_bit_identical() {
    use sliceout::ir::Precision;
    use sliceout::schedule::Lowering;
    let d = tmp("fold-bn");
    let data = d.join("data");
    write_synthetic(&data, 120, 40, 1, false).unwrap();
    for precision in [Precision::Fp32, Precision::Bf16] {
        let run = |fold_bn: bool| {
            let out = d.join(format!("{precision:?}-{fold_bn}"));
            let lowering = Lowering { precision, fold_bn, ..Lowering::default() };
            let r = train::train(&TrainArgs { epochs: 2, lowering, ..args(&data, &out) }).unwrap();
            (comparable(&r.history), checkpoint_bits(&out.join("last.ckpt")))
        };
        let (on, off) = (run(true), run(false));
        assert_eq!(on.0, off.0, "{precision:?}: metrics differ");
        assert!(on.1 == off.1, "{precision:?}: parameters differ");
    }
}
