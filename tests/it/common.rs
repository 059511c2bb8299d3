//! What the integration tests share: the arguments of a small training run.

use sliceout::backend::DeviceChoice;
use sliceout::schedule::Options;
use sliceout::train::{LrSchedule, TrainArgs};
use std::path::Path;

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
        bn_recal: 0,
        verbose: false,
        stop_after: None,
        allow_changes: false,
    }
}
