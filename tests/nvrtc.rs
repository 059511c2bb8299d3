//! Every CUDA kernel source compiles with NVRTC (no GPU needed, only `libnvrtc.so.13`).
//!
//! Where NVRTC is looked for: `$SLICEOUT_NVRTC_LIB` (the library file or its folder), the
//! backend's own folders (`$SLICEOUT_CUDA_LIB_DIR`, `$CUDA_HOME/lib64`, `/usr/local/cuda/lib64`,
//! ...), pip's wheel (`pip install nvidia-cuda-nvrtc==13.0.88` puts it in
//! `<site-packages>/nvidia/cu13/lib`; site-packages are asked of `python3`), then the loader's
//! path (`LD_LIBRARY_PATH`). Without NVRTC the test fails when `CI` is set and is skipped (it
//! prints why and passes) otherwise.

use std::path::PathBuf;

use sliceout::gpu::{self, libs};
use sliceout::ops::KERNEL_FILES;

/// Folders that may hold pip's NVRTC wheel, from `$SLICEOUT_NVRTC_LIB` and `python3`.
fn extra_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![];
    if let Ok(v) = std::env::var("SLICEOUT_NVRTC_LIB") {
        let p = PathBuf::from(v);
        dirs.push(if p.is_file() { p.parent().map(PathBuf::from).unwrap_or_default() } else { p });
    }
    let script = "import site; print('\\n'.join(site.getsitepackages() + [site.getusersitepackages()]))";
    for python in ["python3", "python"] {
        if let Ok(out) = std::process::Command::new(python).args(["-c", script]).output() {
            if out.status.success() {
                for line in String::from_utf8_lossy(&out.stdout).lines() {
                    dirs.push(PathBuf::from(line.trim()).join("nvidia/cu13/lib"));
                }
                break;
            }
        }
    }
    dirs
}

#[test]
fn every_kernel_file_compiles_with_nvrtc() {
    let dirs = extra_dirs();
    if !libs::nvrtc_present(&dirs) {
        let msg = format!(
            "NVRTC (libnvrtc.so.13) not found in {:?}, {:?} or the loader path; \
             `pip install nvidia-cuda-nvrtc==13.0.88` or set SLICEOUT_NVRTC_LIB",
            libs::search_dirs(),
            dirs
        );
        if std::env::var_os("CI").is_some() {
            panic!("{msg}");
        }
        eprintln!("skipped: {msg}");
        return;
    }
    let ptx = gpu::compile_all("compute_90", KERNEL_FILES).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ptx.len(), KERNEL_FILES.len());
    // Every `extern "C" __global__ void name(` of a file is an entry of its PTX.
    for ((name, src), (ptx_name, ptx)) in KERNEL_FILES.iter().zip(&ptx) {
        assert_eq!(name, ptx_name);
        let kernels = gpu::kernel_names(src);
        assert!(!kernels.is_empty(), "{name} has no kernels");
        for k in kernels {
            assert!(ptx.contains(&format!(".entry {k}(")), "{name}: kernel {k} missing from the PTX");
        }
        assert!(ptx.contains(".target sm_90"), "{name}: not compiled for sm_90");
    }
}

/// A deliberately broken source is reported as an error carrying NVRTC's log, not a panic.
#[test]
fn compile_errors_come_back_with_the_log() {
    if !libs::nvrtc_present(&extra_dirs()) {
        return; // the test above reports the missing library
    }
    let src = gpu::kernel_source("extern \"C\" __global__ void broken(float* x) { x[0] = y; }");
    let r = cudarc::nvrtc::compile_ptx_with_opts(src, gpu::compile_options("compute_90", "b.cu"));
    match r {
        Err(cudarc::nvrtc::CompileError::CompileError { log, .. }) => {
            assert!(log.to_string_lossy().contains("y"), "{log:?}")
        }
        other => panic!("expected a compile error, got {other:?}"),
    }
}
