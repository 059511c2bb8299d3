//! The PyTorch reference (WRN-10-2, batch 4; see `src/reference.rs` and `gen_golden.py`'s record
//! in DESIGN.md): logits and loss within 1e-4, every gradient and BN running statistic within
//! 1e-3, in the full network and both SliceOut cases; five SGD steps and eval logits within 1e-3.

use sliceout::backend::cpu::CpuBackend;
use sliceout::verify::reference;

#[test]
fn cpu_matches_pytorch_reference() {
    let mut cpu = CpuBackend::new();
    let rows = reference::check(&mut cpu).expect("reference check runs");
    let failed = reference::print(&rows);
    // Every case and every parameter is present: 3 cases x (2 + 24 grads + 14 stats) + sgd.
    assert!(rows.len() > 100, "only {} rows", rows.len());
    for case in ["full", "slice", "wrap", "sgd"] {
        assert!(rows.iter().any(|r| r.case == case));
    }
    assert_eq!(failed, 0, "{failed} tensors differ from the PyTorch reference");
}
