//! A training step on the CPU, WRN-16-4, batch 32, at keep 1.0, 0.75 and 0.5, measured in one
//! run (the same measurement as `sliceout bench --device cpu`). The bar: keep 0.5 at
//! most 0.70 of keep 1.0, and keep 1.0 no slower than PyTorch on the same machine (its figures
//! are in BENCHMARKS.md).
//!
//! `cargo bench --bench step` (set RAYON_NUM_THREADS to pin the thread count).

use sliceout::backend::cpu::CpuBackend;
use sliceout::backend::Backend;
use sliceout::cmd::bench::table;
use sliceout::ir::{Precision, Target};
use sliceout::measure::bench;
use sliceout::measure::Timing;
use sliceout::model::ModelConfig;
use sliceout::schedule::{Lowering, Options};

fn main() {
    let steps = std::env::var("STEPS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let config = ModelConfig { depth: 16, widen: 4, classes: 10, in_channels: 3, keep: 1.0 };
    let mut make = || Ok(Box::new(CpuBackend::new()) as Box<dyn Backend>);
    let rows = bench::measure(
        &mut make,
        &config,
        32,
        &[(1.0, Precision::Fp32), (0.75, Precision::Fp32), (0.5, Precision::Fp32)],
        Timing { steps, seed: 0, align: 1 },
        Options::default(),
        Lowering { target: Target::Cpu, ..Lowering::default() },
    )
    .expect("bench runs");
    print!("{}", table(&config, 32, &CpuBackend::new().name(), &rows));
    let ratio = rows[2].median_ms / rows[0].median_ms;
    println!("keep 0.5 / keep 1.0 = {ratio:.2} (bar: <= 0.70)");
}
