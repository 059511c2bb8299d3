//! The CPU backend against PyTorch: `sliceout::verify::reference` runs a WRN-10-2 on a batch of 4
//! and compares it with PyTorch's float64 results in `tests/data/wrn10_2_reference.bin` (written
//! by `scripts/torch/gen_reference.py`; docs/DESIGN.md, "The reference numbers"). One training
//! step of the full network and of SliceOut keep 0.5 with starts 5, 17, 40 and with the wrapping
//! starts 25, 50, 100: logits and loss within 1e-4, every gradient and the BN running statistics
//! after the step within 1e-3. Then five SGD steps: the losses, every parameter and the eval
//! logits within 1e-3.

use sliceout::backend::cpu::CpuBackend;
use sliceout::verify::reference;

#[test]
fn the_cpu_backend_matches_pytorch_on_every_reference_tensor() {
    let mut cpu = CpuBackend::new();
    let rows = reference::check(&mut cpu).expect("reference check runs");
    let failed = reference::print(&rows);
    // Every case is present, each with a row per compared tensor.
    assert!(rows.len() > 100, "only {} rows", rows.len());
    for case in ["full", "slice", "wrap", "sgd"] {
        assert!(rows.iter().any(|r| r.case == case));
    }
    assert_eq!(failed, 0, "{failed} tensors differ from the PyTorch reference");
}
