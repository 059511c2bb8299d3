//! The Winograd kernels (`src/ops/conv2d/winograd.cu`) run on the host: `winograd_kernels.cpp`
//! includes the CUDA source under a few stand-in definitions, runs every thread of each grid in
//! turn through the command sequence of `winograd_cmds.rs`, and compares the forward pass and
//! both gradients with a direct convolution (relative error 1e-5). So the kernels' index
//! arithmetic and transforms are checked on a machine without a GPU; `selftest` checks them on
//! one. Needs a C++17 compiler (`c++`, `g++` or `clang++`): without one the test fails when `CI`
//! is set (`.ci/run` installs g++ where it is missing) and is skipped (it prints why and passes)
//! otherwise.

use crate::common::host_cxx;
use std::path::Path;
use std::process::Command;

#[test]
fn the_winograd_kernels_compute_the_convolution_and_its_gradients_on_the_host() {
    let Some(cxx) = host_cxx("the Winograd kernels") else {
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let exe = Path::new(env!("CARGO_TARGET_TMPDIR")).join("winograd_kernels");
    let built = Command::new(cxx)
        .args(["-std=c++17", "-O2", "-Wno-unknown-pragmas", "-I"])
        .arg(root.join("src/ops/conv2d"))
        .arg(root.join("tests/it/winograd_kernels.cpp"))
        .arg("-o")
        .arg(&exe)
        .output()
        .expect("running the C++ compiler");
    assert!(built.status.success(), "{cxx} failed:\n{}", String::from_utf8_lossy(&built.stderr));
    let run = Command::new(&exe).output().expect("running the host build of the Winograd kernels");
    let out = String::from_utf8_lossy(&run.stdout);
    println!("{out}");
    assert!(run.status.success() && out.trim_end().ends_with("all passed"), "{out}");
    // Every case printed a line: nothing was skipped.
    assert_eq!(out.lines().filter(|l| l.ends_with(" ok")).count(), 5, "{out}");
}
