//! Every CUDA kernel source compiles with NVRTC (no GPU needed, only `libnvrtc.so.13`).
//!
//! Where NVRTC is looked for: `$SLICEOUT_NVRTC_LIB` (the library file or its folder), the
//! backend's own folders (`$SLICEOUT_CUDA_LIB_DIR`, `$CUDA_HOME/lib64`, `/usr/local/cuda/lib64`,
//! ...), pip's wheel (`pip install nvidia-cuda-nvrtc==13.0.88` puts it in
//! `<site-packages>/nvidia/cu13/lib`; site-packages are asked of `python3`), then the loader's
//! path (`LD_LIBRARY_PATH`). Without NVRTC the test fails when `CI` is set and is skipped (it
//! prints why and passes) otherwise.

use std::path::PathBuf;

use sliceout::gpu::{self, libs, Image};
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

/// Whether NVRTC can be used here; without it the tests pass after saying why (and fail in CI).
fn nvrtc_or_skip() -> bool {
    let dirs = extra_dirs();
    if libs::nvrtc_present(&dirs) {
        return true;
    }
    let msg = format!(
        "NVRTC (libnvrtc.so.13) not found in {}, {:?} or the loader path; \
         `pip install nvidia-cuda-nvrtc==13.0.88` or set SLICEOUT_NVRTC_LIB",
        libs::describe_search(),
        dirs
    );
    if std::env::var_os("CI").is_some() {
        panic!("{msg}");
    }
    eprintln!("skipped: {msg}");
    false
}

/// Every kernel file compiles to a cubin for the H100 (sm_90), the form the backend loads,
/// and every `extern "C" __global__` kernel of the file is a symbol of it.
#[test]
fn every_kernel_file_compiles_to_a_cubin() {
    if !nvrtc_or_skip() {
        return;
    }
    let images = gpu::compile_all("sm_90", KERNEL_FILES).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(images.len(), KERNEL_FILES.len());
    for ((name, src), (image_name, image)) in KERNEL_FILES.iter().zip(&images) {
        assert_eq!(name, image_name);
        let Image::Cubin(bytes) = image else { panic!("{name}: not a cubin") };
        assert_eq!(&bytes[..4], b"\x7fELF", "{name}: not an ELF image");
        let kernels = gpu::kernel_names(src);
        assert!(!kernels.is_empty(), "{name} has no kernels");
        for k in kernels {
            let symbol = [k.as_bytes(), b"\0"].concat();
            assert!(bytes.windows(symbol.len()).any(|w| w == symbol), "{name}: kernel {k} missing from the cubin");
        }
    }
}

/// The fallback: PTX for the virtual architecture, which the driver compiles when loading.
#[test]
fn every_kernel_file_compiles_to_ptx() {
    if !nvrtc_or_skip() {
        return;
    }
    let images = gpu::compile_all("compute_90", KERNEL_FILES).unwrap_or_else(|e| panic!("{e}"));
    for ((name, src), (_, image)) in KERNEL_FILES.iter().zip(&images) {
        let Image::Ptx(ptx) = image else { panic!("{name}: not PTX") };
        for k in gpu::kernel_names(src) {
            assert!(ptx.contains(&format!(".entry {k}(")), "{name}: kernel {k} missing from the PTX");
        }
        assert!(ptx.contains(".target sm_90"), "{name}: not compiled for sm_90");
    }
}

/// A deliberately broken source is reported as an error carrying NVRTC's log, not a panic.
#[test]
fn compile_errors_come_back_with_the_log() {
    if !nvrtc_or_skip() {
        return;
    }
    let err = gpu::compile("broken.cu", "extern \"C\" __global__ void broken(float* x) { x[0] = y; }", "sm_90");
    match err {
        Err(sliceout::Error::Device(msg)) => {
            assert!(msg.contains("broken.cu") && msg.contains("\"y\""), "{msg}")
        }
        other => panic!("expected a compile error, got {other:?}"),
    }
}
