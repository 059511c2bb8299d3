//! `sliceout selftest`: every op of the chosen backend against the plain CPU reference, then the
//! PyTorch reference on that backend; one row per check.

use super::flags::SelftestFlags;
use crate::backend::{self, CpuBackend};
use crate::error::{Error, Result};
use crate::gpu::Math;
use crate::verify::{reference, selftest};

/// Every op on the chosen backend against the CPU, then the PyTorch reference on it.
pub fn command(f: &SelftestFlags) -> Result<()> {
    let math = Math::parse(&f.math)?;
    let mut backend = backend::open(f.device.into(), math, true)?;
    let tol = if math == Math::Tf32 { 5e-3 } else { 1e-5 };
    let mut cpu = CpuBackend::reference();
    println!("ops on {} against the CPU (max relative error, tolerance {tol:.0e})", backend.name());
    let checks = selftest::op_checks(&mut cpu, &mut *backend, tol);
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
