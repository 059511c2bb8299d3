//! NVRTC: the kernel sources (each op folder's `.cu` after [`COMMON`]), what they declare, and
//! their compilation to a cubin or PTX, once per process and device architecture.

use std::sync::Mutex;

use super::libs;
use crate::error::{Error, Result};

/// Helpers prepended to every kernel file.
pub const COMMON: &str = include_str!("common.cu");

/// A kernel file: its name (for messages) and its source, without [`COMMON`].
pub type KernelFile = (&'static str, &'static str);

/// The full source NVRTC compiles for one kernel file.
pub fn kernel_source(file: &str) -> String {
    format!("{COMMON}\n{file}")
}

/// The names of the `extern "C" __global__` kernels a source defines.
pub fn kernel_names(source: &str) -> Vec<&str> {
    source.split("extern \"C\" __global__ void ").skip(1).filter_map(|s| s.split('(').next()).map(str::trim).collect()
}

/// How many parameters the `extern "C" __global__` kernel `name` of `source` declares (`None`
/// when the source has no such kernel): what a launch of it must pass.
pub fn kernel_params(source: &str, name: &str) -> Option<usize> {
    let head = format!("extern \"C\" __global__ void {name}(");
    let params = source.split(&head).nth(1)?.split(')').next()?;
    Some(if params.trim().is_empty() { 0 } else { params.split(',').count() })
}

/// NVRTC options for `arch`: `sm_90` compiles to a cubin for that chip, `compute_90` to PTX the
/// driver compiles when loading; no FMA contraction, so the kernels' f32 expressions round as
/// the CPU's do.
pub fn nvrtc_options(arch: &str) -> Vec<String> {
    vec![format!("--gpu-architecture={arch}"), "--fmad=false".into()]
}

/// A compiled kernel file: machine code for one chip, or PTX for the driver to compile.
#[derive(Clone, Debug)]
pub enum Image {
    Cubin(Vec<u8>),
    Ptx(String),
}

impl Image {
    pub fn kind(&self) -> &'static str {
        match self {
            Image::Cubin(_) => "cubin",
            Image::Ptx(_) => "ptx",
        }
    }
}

/// Compiles one kernel file (after [`COMMON`]) for `arch`: `sm_XY` gives a cubin, `compute_XY`
/// PTX. A compile error comes back with NVRTC's log. Call after [`libs::nvrtc_present`].
pub fn compile(name: &str, src: &str, arch: &str) -> Result<Image> {
    use cudarc::nvrtc::{result, sys};
    let fail = |what: &str, e: &dyn std::fmt::Debug| Error::Device(format!("NVRTC {what} {name} for {arch}: {e:?}"));
    let (source, cname) = match (std::ffi::CString::new(kernel_source(src)), std::ffi::CString::new(name)) {
        (Ok(s), Ok(n)) => (s, n),
        _ => return Err(Error::Device(format!("kernel file {name} holds a NUL byte"))),
    };
    let prog = result::create_program(&source, Some(&cname)).map_err(|e| fail("could not start on", &e))?;
    // SAFETY: `prog` is live until destroyed below; `source` and `cname` outlive it.
    let image = unsafe {
        let compiled = match result::compile_program(prog, &nvrtc_options(arch)) {
            Ok(()) => Ok(()),
            Err(_) => {
                let log = result::get_program_log(prog).unwrap_or_default();
                let log = std::ffi::CStr::from_ptr(log.as_ptr()).to_string_lossy().into_owned();
                Err(Error::Device(format!("NVRTC could not compile {name} for {arch}:\n{log}")))
            }
        };
        let image = compiled.and_then(|()| {
            if arch.starts_with("sm_") {
                let mut size = 0usize;
                sys::nvrtcGetCUBINSize(prog, &mut size).result().map_err(|e| fail("gave no cubin size for", &e))?;
                let mut bytes = vec![0u8; size];
                sys::nvrtcGetCUBIN(prog, bytes.as_mut_ptr().cast())
                    .result()
                    .map_err(|e| fail("gave no cubin for", &e))?;
                Ok(Image::Cubin(bytes))
            } else {
                let ptx = result::get_ptx(prog).map_err(|e| fail("gave no PTX for", &e))?;
                Ok(Image::Ptx(std::ffi::CStr::from_ptr(ptx.as_ptr()).to_string_lossy().into_owned()))
            }
        });
        let _ = result::destroy_program(prog);
        image
    };
    image
}

/// `(file name, image)` of every kernel file.
pub type Images = Vec<(String, Image)>;

/// Compiles every kernel file for `arch`.
pub fn compile_all(arch: &str, files: &[KernelFile]) -> Result<Images> {
    files.iter().map(|(name, src)| Ok((name.to_string(), compile(name, src, arch)?))).collect()
}

/// Images per device architecture (`XY` of compute capability X.Y), compiled once per process:
/// cubins for `sm_XY`, or PTX for `compute_XY` where this NVRTC cannot target the chip itself.
static IMAGE_CACHE: Mutex<Vec<(String, Images)>> = Mutex::new(Vec::new());

pub(super) fn cached_images(cc: &str, files: &[KernelFile]) -> Result<Images> {
    let mut cache = IMAGE_CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, images)) = cache.iter().find(|(c, _)| c == cc) {
        return Ok(images.clone());
    }
    if !libs::nvrtc_present(&[]) {
        return Err(Error::Device(format!(
            "cannot load NVRTC (libnvrtc.so.13); searched the loader path and {} \
             (set SLICEOUT_CUDA_LIB_DIR or LD_LIBRARY_PATH to the folder holding it)",
            libs::describe_search()
        )));
    }
    let panicked = || Error::Device("NVRTC panicked while compiling the kernels".into());
    let images = match libs::catch(|| compile_all(&format!("sm_{cc}"), files)).ok_or_else(panicked)? {
        Ok(cubins) => cubins,
        Err(_) => libs::catch(|| compile_all(&format!("compute_{cc}"), files)).ok_or_else(panicked)??,
    };
    cache.push((cc.to_string(), images.clone()));
    Ok(images)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_parameters_are_counted_from_the_source() {
        let src = "extern \"C\" __global__ void a(float* x, int n) {}\nextern \"C\" __global__ void b() {}";
        assert_eq!(kernel_params(src, "a"), Some(2));
        assert_eq!(kernel_params(src, "b"), Some(0));
        assert_eq!(kernel_params(src, "c"), None);
    }

    #[test]
    fn kernel_names_are_read_from_the_source() {
        let src = "extern \"C\" __global__ void a(int x) {}\n__device__ int h() {}\nextern \"C\" __global__ void b_2 (float* y) {}";
        assert_eq!(kernel_names(src), ["a", "b_2"]);
    }
}
