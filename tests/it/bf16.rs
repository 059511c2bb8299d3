//! A whole bf16 training step on the CPU against the fp32 step from the same weights, batch and
//! slice starts (every slice wrapping): the loss, the logits, and every parameter's update,
//! momentum and BN running statistic afterwards.
//!
//! The ops are held to their rounding bounds one by one in their own tests; here the roundings
//! compound, so the tolerances are about what a step does with them (u = 2^-8 = 3.9e-3):
//!
//! - forward, each stored activation adds at most u relative error, so after the ~12 stores on
//!   the way to the logits they may differ by about 12u = 5% at worst (measured: 0.3% in norm);
//!   the loss averages them: 1e-3 relative (measured 1e-4);
//! - the head's weight gradients (`fc.*`) are f32 products of pooled features (0.3% off) with
//!   f32 logit gradients: 2% (measured 0.6%);
//! - below the head, a gradient crosses ReLU masks computed from activations that differ by
//!   ~1% (bf16) from fp32's: where a pre-activation lies that close to zero (a few % of them)
//!   one step passes the gradient and the other blocks it, so those elements differ by their
//!   whole size, and the updates differ by about the square root of that fraction in norm
//!   (measured 8-29%). A relative error of 0.4 in norm still means the same direction (cosine
//!   above 0.9); a wrong gradient (a stale or transposed weight copy, a wrong slice) is off by
//!   1 or more.

use sliceout::backend::{Batches, CpuBackend, Execute, Memory, SplitId, StepCtx};
use sliceout::data::loader::{Crop, Normalization};
use sliceout::data::Split;
use sliceout::ir::{Precision, Role};
use sliceout::model::{wrn, ModelConfig};
use sliceout::ops::sgd::SgdParams;
use sliceout::plan::Program;
use sliceout::rng::Rng;
use sliceout::schedule::{Lowering, Mode, Options};

/// What one step left: the loss, the logits and the persistent region.
struct After {
    loss: f32,
    logits: Vec<f32>,
    persistent: Vec<f32>,
    arena_bytes: usize,
}

fn step(precision: Precision, config: &ModelConfig, batch: usize, starts: &[usize], init: &[f32]) -> After {
    let p = Program::new(wrn::build(
        config,
        batch,
        Mode::Train,
        Options::default(),
        Lowering { precision, ..Lowering::default() },
    ));
    let s = &p.schedule;
    let mut cpu = CpuBackend::new();
    cpu.reserve_arena(p.arena_bytes()).unwrap();
    cpu.set_persistent(init).unwrap();
    let mut rng = Rng::new(9, 4);
    let split = Split {
        images: (0..batch * 3 * 1024).map(|_| rng.below(256) as u8).collect(),
        labels: (0..batch).map(|i| (i % config.classes) as u8).collect(),
        len: batch,
    };
    let norm = Normalization::from_split(&split, 3);
    cpu.upload_split(SplitId::Train, split, 3, &norm).unwrap();
    let indices: Vec<usize> = (0..batch).collect();
    cpu.fill_batch(&p, SplitId::Train, &indices, &vec![Crop::IDENTITY; batch]);
    let sgd = SgdParams { lr: 0.1, momentum: 0.9, weight_decay: 5e-4, nesterov: true };
    cpu.run(&p, &StepCtx::new(starts, sgd));
    let mut loss = [0f32; 2];
    cpu.read(&p, s.loss, &mut loss);
    let mut logits = vec![0f32; s.buffers[s.logits].len];
    cpu.read(&p, s.logits, &mut logits);
    let mut persistent = vec![0f32; s.persistent_len()];
    cpu.get_persistent(&mut persistent);
    After { loss: loss[0], logits, persistent, arena_bytes: p.arena_bytes() }
}

/// `|a - b| / |a|` in the 2-norm.
fn rel(a: impl Iterator<Item = f64> + Clone, b: impl Iterator<Item = f64>) -> f64 {
    let diff = a.clone().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>().sqrt();
    diff / a.map(|x| x * x).sum::<f64>().sqrt().max(1e-30)
}

#[test]
fn a_bf16_step_stays_within_its_bounds_of_the_fp32_step() {
    let config = ModelConfig { depth: 10, widen: 2, classes: 10, in_channels: 3, keep: 0.5 };
    let batch = 16;
    let p = Program::new(wrn::build(&config, batch, Mode::Train, Options::default(), Lowering::default()));
    let s = &p.schedule;
    let init = wrn::init_persistent(s, 3);
    let starts: Vec<usize> = s.slices.iter().map(|sl| sl.channels - sl.width / 2).collect();
    assert!(s.slices.iter().zip(&starts).all(|(sl, &st)| st + sl.width > sl.channels), "every slice wraps");
    let (a, b) =
        (step(Precision::Fp32, &config, batch, &starts, &init), step(Precision::Bf16, &config, batch, &starts, &init));
    assert!(b.arena_bytes < a.arena_bytes * 2 / 3, "bf16 arena {} vs fp32 {}", b.arena_bytes, a.arena_bytes);

    let loss_err = ((a.loss - b.loss) / a.loss).abs();
    assert!(loss_err < 1e-3, "loss fp32 {} bf16 {}", a.loss, b.loss);
    let f64s = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
    let logits_err = rel(f64s(&a.logits).into_iter(), f64s(&b.logits).into_iter());
    assert!(logits_err < 2e-2, "logits differ by {logits_err:.2e}");

    let mut worst = (0.0, String::new());
    for t in &s.tensors {
        // The update (and the momentum, which is the update's own history), or the new running
        // statistic, against fp32's.
        let r = t.range();
        let d32 = r.clone().map(|i| (a.persistent[i] - init[i]) as f64);
        let d16 = r.clone().map(|i| (b.persistent[i] - init[i]) as f64);
        let err = match t.role {
            Role::Param | Role::Momentum => rel(d32, d16),
            Role::RunningMean | Role::RunningVar => {
                rel(r.clone().map(|i| a.persistent[i] as f64), r.map(|i| b.persistent[i] as f64))
            }
        };
        let bar = match t.role {
            Role::RunningMean | Role::RunningVar => 5e-2,
            _ if t.name.starts_with("fc.") => 2e-2,
            _ => 0.4,
        };
        assert!(err < bar, "{}: relative difference {err:.2e} (bar {bar})", t.name);
        if err > worst.0 {
            worst = (err, t.name.clone());
        }
    }
    println!("loss {loss_err:.1e}, logits {logits_err:.1e}, worst update {:.2} ({})", worst.0, worst.1);
}
