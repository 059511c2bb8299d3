//! The folded im2col kernel (`im2col_bn_relu` in `src/ops/conv2d/conv2d.cu`) runs on the host:
//! `fold_kernels.cpp` includes the CUDA sources under a few stand-in definitions and checks its
//! columns, bit for bit, against `bn_relu_apply` (`batchnorm.cu`) followed by `im2col`, the two
//! launches it replaces, in f32 and bf16. So its channel mapping, padding and arithmetic are
//! checked without a GPU; a card is still to run it. Needs a C++17 compiler, as
//! `winograd_kernels.rs` does (skipped with a note without one, failed in CI).

use std::path::Path;
use std::process::Command;

use crate::common::host_cxx;

#[test]
fn the_folded_im2col_kernel_gathers_what_bn_apply_then_im2col_gather_on_the_host() {
    let Some(cxx) = host_cxx("the folded im2col kernel") else {
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let exe = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fold_kernels");
    // No contraction into FMAs: the kernels are compiled with --fmad=false.
    let built = Command::new(cxx)
        .args(["-std=c++17", "-O2", "-ffp-contract=off", "-Wno-unknown-pragmas"])
        .arg(root.join("tests/it/fold_kernels.cpp"))
        .arg("-o")
        .arg(&exe)
        .output()
        .expect("running the C++ compiler");
    assert!(built.status.success(), "{cxx} failed:\n{}", String::from_utf8_lossy(&built.stderr));
    let run = Command::new(&exe).output().expect("running the host build of the folded im2col");
    let out = String::from_utf8_lossy(&run.stdout);
    println!("{out}");
    assert!(run.status.success() && out.trim_end().ends_with("all passed"), "{out}");
    // Every case printed a line: nothing was skipped.
    assert_eq!(out.lines().filter(|l| l.ends_with(": ok")).count(), 12, "{out}");
}
