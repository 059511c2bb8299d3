//! `sliceout selftest`: every op of the chosen backend against the plain CPU reference, then the
//! PyTorch reference on that backend; one row per check. `--precision bf16` checks the bf16
//! programs' ops against the CPU's bf16 ops instead (the PyTorch reference is fp32's).

use super::flags::SelftestFlags;
use crate::backend::{self, Backend, CpuBackend};
use crate::error::{Error, Result};
use crate::ir::{Math, Precision, Target};
use crate::schedule::{InputGrad, Lowering};
use crate::verify::{full, reference, selftest};

/// Every op on the chosen backend against the CPU, then the PyTorch reference on it; with
/// `--full`, one full-size training step against the CPU instead.
pub fn command(f: &SelftestFlags) -> Result<()> {
    let math = Math::parse(&f.math)?;
    let precision = Precision::parse(&f.precision)?;
    let input_grad = match (&f.input_grad, f.full) {
        (None, _) => InputGrad::default(),
        (Some(s), true) => InputGrad::parse(s)?,
        (Some(s), false) => {
            return Err(Error::flag("--input-grad", s, "no --input-grad without --full (the op checks check both)"))
        }
    };
    if f.winograd && !f.full {
        return Err(Error::flag("--winograd", "on", "no --winograd without --full (the op checks check it)"));
    }
    if f.fold_bn && !f.full {
        return Err(Error::flag("--fold-bn", "on", "no --fold-bn without --full (it changes which ops a step runs)"));
    }
    if f.winograd && precision != Precision::Fp32 {
        return Err(Error::flag("--winograd", "on", "--precision fp32 (Winograd runs in fp32 programs only)"));
    }
    if f.sgd_group && !f.full {
        return Err(Error::flag("--sgd-group", "on", "no --sgd-group without --full (the op checks check a group)"));
    }
    let mut backend = backend::open(f.device.into(), math, true)?;
    if f.full {
        let (winograd, sgd_group, fold_bn) = (f.winograd, f.sgd_group, f.fold_bn);
        let lowering = Lowering { precision, input_grad, winograd, sgd_group, fold_bn, ..Lowering::default() };
        return full(&mut *backend, math, lowering);
    }
    let tol = match (precision, math) {
        (Precision::Bf16, _) => selftest::BF16_OP_TOL,
        (Precision::Fp32, Math::Tf32) => 5e-3,
        (Precision::Fp32, Math::Fp32) => 1e-5,
    };
    let mut cpu = CpuBackend::reference();
    outln!(
        "{} ops on {} against the CPU (max relative error, tolerance {tol:.1e})",
        precision.as_str(),
        backend.name()
    );
    let checks = selftest::op_checks(&mut cpu, &mut *backend, tol, precision);
    for c in &checks {
        outln!("{:60} {:10.2e}  {}", c.op, c.max_rel_err, if c.pass { "ok" } else { "FAIL" });
    }
    let op_failed = checks.iter().filter(|c| !c.pass).count();
    if precision == Precision::Bf16 {
        outln!("\nselftest --precision bf16: {} passed, {op_failed} failed", checks.len() - op_failed);
        if op_failed > 0 {
            return Err(Error::Msg(format!("selftest --precision bf16: {op_failed} op checks failed")));
        }
        return Ok(());
    }
    // The reference is PyTorch's fp32 computation, so it checks the network's formulas in fp32
    // math; tf32 was checked op by op above. (Through ten layers whose BN statistics come from
    // 16 to 196 values a channel, tf32's rounding of every GEMM input, 2^-11, reaches several
    // percent in the gradients, far past the reference's 1e-3 tolerance.)
    let mut fp32;
    let on: &mut dyn Backend = if math == Math::Fp32 {
        &mut *backend
    } else {
        fp32 = backend::open(f.device.into(), Math::Fp32, false)?;
        &mut *fp32
    };
    outln!("\nPyTorch reference (WRN-10-2, batch 4) on {}: relative error per tensor", on.name());
    let rows = reference::check(on)?;
    let ref_failed = reference::print(&rows);
    let (total, failed) = (checks.len() + rows.len(), op_failed + ref_failed);
    outln!("\nselftest: {} passed, {} failed", total - failed, failed);
    if failed > 0 {
        return Err(Error::Msg(format!("selftest: {op_failed} op checks and {ref_failed} reference tensors failed")));
    }
    Ok(())
}

/// Tolerance of the full-step check (`||a - b|| / ||b||` per op, from the same inputs). fp32:
/// the GPU sums in another order than the CPU (and the CPU's Winograd rounds otherwise than its
/// im2col), about 1e-6 per op, well inside 1e-4. tf32 rounds every GEMM input to 10 mantissa
/// bits: each product is off by up to two units of 2^-11 = 4.9e-4, and a sum of them by about
/// that much relative to its norm; 5e-3 (ten units, as the op checks) leaves room for the
/// element-wise ops that follow a GEMM in the same comparison, never for a wrong index.
/// bf16: u = 2^-8, bf16's unit roundoff (four times the op checks' 2^-10): both backends round
/// at the same points, so an op's outputs differ where f32 sums in another order put a value on
/// the other side of a rounding boundary, one ulp there; the full step's long reductions (BN
/// over 32x32x32 values, weight gradients over a batch) and its ill-conditioned BN backward give
/// such flips more room than the tiny op checks, and u still fails any kernel that rounds
/// otherwise or reads a wrong element.
fn full_tolerance(math: Math, target: Target, precision: Precision) -> f64 {
    match (precision, target, math) {
        (Precision::Bf16, _, _) => 1.0 / 256.0,
        (Precision::Fp32, Target::Cuda, Math::Tf32) => 5e-3,
        _ => 1e-4,
    }
}

fn full(backend: &mut dyn Backend, math: Math, lowering: Lowering) -> Result<()> {
    let (config, batch) = full::config();
    let tol = full_tolerance(math, backend.target(), lowering.precision);
    let mut cpu = CpuBackend::reference();
    outln!(
        "{} batch {batch} keep {:.2} (every slice wrapping), one {} training step on {} against the CPU \
         (input gradients: {}{}{}; relative error per op, tolerance {tol:.1e})",
        config.name(),
        config.keep,
        lowering.precision.as_str(),
        backend.name(),
        lowering.input_grad.as_str(),
        if lowering.winograd { "; 3x3 stride-1 convolutions by Winograd" } else { "" },
        if lowering.sgd_group { "; SGD updates in groups" } else { "" }
    );
    if lowering.fold_bn {
        outln!("recomputed BN + ReLU outputs folded into the im2col of the convolutions that read them");
    }
    let rows = full::full_step(&mut cpu, backend, &config, batch, lowering)?;
    let failed: Vec<&full::FullRow> = rows.iter().filter(|r| r.max_rel_err.is_nan() || r.max_rel_err > tol).collect();
    for r in &rows {
        outln!(
            "{:44} {:10.2e}  {}",
            r.name,
            r.max_rel_err,
            if r.max_rel_err.is_nan() || r.max_rel_err > tol { "FAIL" } else { "ok" }
        );
    }
    let worst = rows.iter().map(|r| r.max_rel_err).fold(0f64, f64::max);
    outln!("\nselftest --full: {} passed, {} failed (worst {worst:.2e})", rows.len() - failed.len(), failed.len());
    if !failed.is_empty() {
        return Err(Error::Msg(format!(
            "selftest --full: {} of {} comparisons over {tol:.0e}",
            failed.len(),
            rows.len()
        )));
    }
    Ok(())
}
