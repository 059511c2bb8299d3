//! The CUDA runtime the ops launch on: one device, one stream, one cuBLAS handle, and the NVRTC
//! kernels of every op folder, all through `cudarc` with every CUDA library opened at run time,
//! so the binary builds and runs where no CUDA is installed (every entry point then returns
//! `Error::Device`; nothing here panics for want of a driver).
//!
//! This layer knows nothing of schedules or ops: it compiles the kernel sources it is handed
//! (each op folder ships its own `.cu`, after [`COMMON`]), launches kernels by name, runs
//! `cublasGemmEx` on raw device addresses and moves bytes. The ops (`ops/<op>/cuda.rs`) turn
//! their buffers into addresses and call it; `backend::cuda` owns the memory regions.
//!
//! Work is queued on one stream and never waits for the device; only `dtoh` and `synchronize`
//! do. With `SLICEOUT_CUDA_SYNC=1` every launch and GEMM is followed by a synchronisation, so an
//! asynchronous fault is reported against the kernel that caused it. A failing CUDA call inside
//! a step cannot be returned through the `Backend` trait: it panics with the call and the
//! driver's error.

pub mod libs;
pub mod tune;

use std::sync::{Arc, Mutex};

use cudarc::cublas::sys as cb;
use cudarc::driver::{
    result as dr, CudaContext, CudaEvent, CudaFunction, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;

use crate::error::{Error, Result};
pub use crate::ir::Math;
use crate::ir::{mib, Dtype};

/// cuBLAS's compute type for the GEMM math.
fn compute_type(math: Math) -> cb::cublasComputeType_t {
    match math {
        Math::Tf32 => cb::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32,
        Math::Fp32 => cb::cublasComputeType_t::CUBLAS_COMPUTE_32F,
    }
}

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

fn cached_images(cc: &str, files: &[KernelFile]) -> Result<Images> {
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

fn dev_err(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::Device(format!("{what}: {e:?}"))
}

/// Checks that the driver library loads and that a device exists, without panicking.
fn probe() -> Result<()> {
    let loaded = libs::preload(&[]);
    if !libs::driver_present() {
        return Err(Error::Device(format!(
            "no NVIDIA driver: libcuda.so.1 could not be loaded from the loader path or {} (use --device cpu)",
            libs::describe_search()
        )));
    }
    match libs::catch_message(CudaContext::device_count) {
        Err(why) => {
            let path = loaded.iter().find(|(name, _)| name == "libcuda.so.1").map(|(_, p)| p.display().to_string());
            Err(Error::Device(format!(
                "{BROKEN_DRIVER} {} lacks functions this build needs (CUDA 13): {why}",
                path.as_deref().unwrap_or("libcuda.so.1 (on the loader path)")
            )))
        }
        Ok(Err(e)) => Err(Error::Device(format!("the NVIDIA driver did not initialise: {e:?}"))),
        Ok(Ok(0)) => Err(Error::Device("no CUDA device found".into())),
        Ok(Ok(_)) => Ok(()),
    }
}

/// How [`probe`]'s message for a driver library that loads but cannot be used begins.
const BROKEN_DRIVER: &str = "the NVIDIA driver library";

/// For `--device auto`: `Ok` when a CUDA device can be used, else why the CPU is used instead,
/// for its one line: a driver library that loads but lacks what this build needs is named with
/// what it lacks; no driver or no device is said in general words.
pub fn auto_fallback() -> std::result::Result<(), String> {
    match probe() {
        Ok(()) => Ok(()),
        Err(Error::Device(msg)) if msg.starts_with(BROKEN_DRIVER) => Err(msg),
        Err(_) => Err("no usable CUDA driver or GPU".into()),
    }
}

fn context() -> Result<Arc<CudaContext>> {
    probe()?;
    libs::catch(|| CudaContext::new(0))
        .ok_or_else(|| Error::Device("creating a CUDA context panicked".into()))?
        .map_err(|e| dev_err("creating a CUDA context on device 0", e))
}

/// Whether a CUDA device can be used: the driver loads and reports at least one device.
/// Never panics.
pub fn available() -> bool {
    probe().is_ok()
}

/// `(free, total)` bytes of device 0's memory.
pub fn device_memory() -> Result<(usize, usize)> {
    let ctx = context()?;
    ctx.mem_get_info().map_err(|e| dev_err("reading device memory", e))
}

/// A device allocation with its base address (event tracking is off, so raw addresses are
/// safe to hold for as long as the slice lives).
pub struct DevMem<T> {
    slice: CudaSlice<T>,
    pub ptr: u64,
}

impl<T: cudarc::driver::DeviceRepr> DevMem<T> {
    pub fn len(&self) -> usize {
        self.slice.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slice.len() == 0
    }
}

/// cuBLAS's workspace (its recommendation for Hopper), given to it up front so it never
/// allocates inside a step.
pub const CUBLAS_WORKSPACE: usize = 32 << 20;

/// Channels (per launch) and partial sums the multi-block reductions' scratch has room for:
/// partial sums `[channel][part]` (two f64 each), finished sums `[channel]` (two f64 each) and
/// a completion counter per channel (`common.cu`, `last_block_of`).
pub const REDUCTION_CHANNELS: usize = 1 << 15;
pub const REDUCTION_PARTS: usize = 1 << 15;

/// The reductions' scratch, allocated (zeroed) with the cuBLAS workspace.
pub const REDUCTION_SCRATCH: usize = REDUCTION_PARTS * 16 + REDUCTION_CHANNELS * (16 + 4);

/// Device memory the runtime takes besides the plan and the context: the cuBLAS workspace and
/// the reductions' scratch.
pub const WORKSPACES: usize = CUBLAS_WORKSPACE + REDUCTION_SCRATCH;

/// The reduction scratch's regions as addresses: (partial sums, finished sums, counters).
pub fn reduction_regions(base: u64) -> (u64, u64, u64) {
    let parts = base;
    let sums = parts + 16 * REDUCTION_PARTS as u64;
    (parts, sums, sums + 16 * REDUCTION_CHANNELS as u64)
}

/// How many blocks share each of `channels` rows of `m` values in a multi-block reduction:
/// about 8,192 values a block (so a 128-image 32x32 channel takes 16 blocks and a layer fills
/// the GPU), at most 64, and never more than the scratch holds.
pub fn reduction_parts(channels: usize, m: usize) -> usize {
    assert!((1..=REDUCTION_CHANNELS).contains(&channels), "a reduction over {channels} channels");
    m.div_ceil(8192).clamp(1, 64).min(REDUCTION_PARTS / channels).max(1)
}

/// Unsigned division by a divisor fixed at launch, for dividends below 2^31: the kernel computes
/// `(umulhi(x, magic) + x) >> shift` (`div_by` in `common.cu`) instead of a division, which a
/// GPU does in about twenty instructions. `shift = ceil(log2 d)` and
/// `magic = floor(2^32 (2^shift - d) / d) + 1` (Granlund and Montgomery's round-up method).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FastDiv {
    pub magic: u32,
    pub shift: u32,
}

impl FastDiv {
    pub fn new(d: usize) -> FastDiv {
        assert!((1..1 << 31).contains(&d), "divisor {d} out of range");
        let d = d as u64;
        let shift = 64 - (d - 1).leading_zeros();
        let magic = ((1u64 << 32) * ((1u64 << shift) - d) / d + 1) as u32;
        FastDiv { magic, shift }
    }

    /// What the kernel computes: `x / d` for `x < 2^31`.
    pub fn div(&self, x: u32) -> u32 {
        let hi = ((x as u64 * self.magic as u64) >> 32) as u32;
        (hi + x) >> self.shift
    }
}

/// Launch geometry of a grid-stride loop over `total` elements: one thread per element up to
/// 65,536 blocks of 256, so no block is launched without work.
pub fn grid(total: usize) -> LaunchConfig {
    let blocks = total.div_ceil(256).clamp(1, 1 << 16) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

/// Element-wise over `channels` rows of `m`: y = channel.
pub fn rows(channels: usize, m: usize) -> LaunchConfig {
    assert!(channels <= 65_535, "{channels} rows exceed a grid's y dimension");
    LaunchConfig {
        grid_dim: (m.div_ceil(256).clamp(1, 1024) as u32, channels as u32, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Element-wise work over `channels` rows of `m` (y = channel), four elements a thread in a
/// grid-stride loop: the per-channel parameters a thread loads once serve four elements.
pub fn elementwise_rows(channels: usize, m: usize) -> LaunchConfig {
    rows(channels, m.div_ceil(4))
}

/// A multi-block reduction over `channels` rows of `m`: x = part of the row, y = channel.
pub fn reduction(channels: usize, m: usize) -> LaunchConfig {
    assert!(channels <= 65_535, "{channels} rows exceed a grid's y dimension");
    LaunchConfig {
        grid_dim: (reduction_parts(channels, m) as u32, channels as u32, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One block of 256 threads.
pub fn one_block() -> LaunchConfig {
    LaunchConfig { grid_dim: (1, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

fn ok<T>(r: std::result::Result<T, impl std::fmt::Debug>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("CUDA: {what} failed: {e:?}"),
    }
}

/// The address `floats` f32 elements past `base`.
pub fn f32_at(base: u64, floats: usize) -> u64 {
    base + 4 * floats as u64
}

/// The kernel `name` over storage `dtype`: `name` itself for f32, `name_bf16` for bf16 (the
/// convention of every `.cu` file: one template, one `extern "C"` entry point per type).
macro_rules! kernel {
    ($name:literal, $dtype:expr) => {
        match $dtype {
            $crate::ir::Dtype::F32 => $name,
            $crate::ir::Dtype::Bf16 => concat!($name, "_bf16"),
        }
    };
}
pub(crate) use kernel;

/// A dimension as the kernels' `int`.
pub fn int(v: usize) -> i32 {
    i32::try_from(v).expect("dimension fits in i32")
}

/// A kernel argument (device pointers are passed as their `u64` address).
pub trait Arg {
    fn push<'a>(&'a self, b: &mut cudarc::driver::LaunchArgs<'a>);
}

macro_rules! impl_arg {
    ($($t:ty),*) => {$(
        impl Arg for $t {
            fn push<'a>(&'a self, b: &mut cudarc::driver::LaunchArgs<'a>) {
                b.arg(self);
            }
        }
    )*};
}
impl_arg!(u64, i64, i32, u32, f32, f64);

/// One row-major-agnostic `cublasGemmEx` in BLAS's own column-major terms:
/// `C = op(A) op(B) + beta C`, `C` `m x n`, operands at device addresses, of the types it names.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GemmCall {
    /// What the product computes (kernel timings are grouped by it).
    pub label: &'static str,
    pub transa: bool,
    pub transb: bool,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: u64,
    pub lda: usize,
    pub b: u64,
    pub ldb: usize,
    pub c: u64,
    pub ldc: usize,
    pub beta: f32,
    /// Element types of the operands `a`, `b` (the same: cuBLAS multiplies f32 by f32 or bf16
    /// by bf16) and of the output `c` (f32 or bf16; a bf16 product's weight gradient is f32).
    pub ab_type: Dtype,
    pub c_type: Dtype,
    /// Products in a strided batch (1: one `cublasGemmEx`); product `j` reads and writes
    /// `j * stride` elements past `a`, `b` and `c` (`cublasGemmStridedBatchedEx`).
    pub batch: usize,
    /// Elements between consecutive products' `a`, `b` and `c` (unused when `batch` is 1).
    pub strides: [usize; 3],
}

/// cuBLAS's name for an element type.
pub fn data_type(d: Dtype) -> cb::cudaDataType {
    match d {
        Dtype::F32 => cb::cudaDataType::CUDA_R_32F,
        Dtype::Bf16 => cb::cudaDataType::CUDA_R_16BF,
    }
}

/// cuBLAS's compute type for a product of `ab` operands in the GPU's `math`: bf16 operands
/// always accumulate in plain f32 (`CUBLAS_COMPUTE_32F`; tf32 would change nothing, bf16's 8
/// significant bits are exact in tf32's 11), f32 ones follow `--math`.
pub fn gemm_compute_type(ab: Dtype, math: Math) -> cb::cublasComputeType_t {
    match ab {
        Dtype::Bf16 => cb::cublasComputeType_t::CUBLAS_COMPUTE_32F,
        Dtype::F32 => compute_type(math),
    }
}

/// The device time of one kernel or GEMM queued while timing (`Gpu::start_timing`), with the
/// op (its index in the schedule) that queued it.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelTime {
    pub op: usize,
    pub kernel: &'static str,
    pub ms: f64,
}

/// Event pairs around each launch and GEMM while timing; the events are kept between steps.
#[derive(Default)]
struct Timing {
    on: bool,
    pairs: Vec<(CudaEvent, CudaEvent)>,
    queued: Vec<(usize, &'static str)>,
}

/// What ops queue on a GPU: kernel launches (by kernel name) and GEMMs. [`Gpu`] runs them;
/// [`Recorder`] writes them down, so what a program queues is known, and tested, without a GPU.
pub trait Launcher {
    /// Queues kernel `kernel` of the loaded kernel files.
    fn launch(&self, kernel: &'static str, cfg: LaunchConfig, args: &[&dyn Arg]);
    /// Queues one `cublasGemmEx`.
    fn gemm(&self, g: &GemmCall);
    /// Base address of the multi-block reductions' scratch ([`REDUCTION_SCRATCH`] bytes).
    fn reduction_scratch(&self) -> u64;
}

/// Records launches and GEMMs instead of running them.
#[derive(Default)]
pub struct Recorder {
    pub launches: std::cell::RefCell<Vec<(&'static str, LaunchConfig)>>,
    /// The number of arguments each launch passed (against [`kernel_params`]).
    pub arg_counts: std::cell::RefCell<Vec<usize>>,
    pub gemms: std::cell::RefCell<Vec<GemmCall>>,
}

impl Launcher for Recorder {
    fn launch(&self, kernel: &'static str, cfg: LaunchConfig, args: &[&dyn Arg]) {
        self.launches.borrow_mut().push((kernel, cfg));
        self.arg_counts.borrow_mut().push(args.len());
    }
    fn gemm(&self, g: &GemmCall) {
        self.gemms.borrow_mut().push(*g);
    }
    fn reduction_scratch(&self) -> u64 {
        1 << 48
    }
}

/// One GPU: context, stream, cuBLAS handle with its workspace, and the loaded kernels.
pub struct Gpu {
    math: Math,
    device_name: String,
    arch: String,
    /// Every kernel of every file, by name.
    kernels: Vec<(String, CudaFunction)>,
    /// Synchronise after every launch (`SLICEOUT_CUDA_SYNC=1`).
    sync_each: bool,
    /// Device memory in use once the context existed and the kernels were loaded.
    context_bytes: usize,
    /// The op being queued (index, name): named in a synchronised launch's failure, and the op
    /// a timed kernel is counted to.
    op: std::cell::RefCell<(usize, String)>,
    timing: std::cell::RefCell<Timing>,
    workspace: DevMem<u8>,
    /// The multi-block reductions' partial sums and counters (zeroed once; each reduction
    /// leaves its counters at zero).
    scratch: DevMem<u8>,
    blas: cb::cublasHandle_t,
    /// cuBLASLt autotuning of the GEMMs (`SLICEOUT_GEMM_TUNE=1`, experimental; [`tune`]).
    tuner: Option<tune::Tuner>,
    stream: Arc<CudaStream>,
    ctx: Arc<CudaContext>,
}

impl Drop for Gpu {
    fn drop(&mut self) {
        // SAFETY: the handle was created by us and is destroyed once; errors are moot here.
        unsafe {
            let _ = self.stream.synchronize();
            let _ = cudarc::cublas::result::destroy_handle(self.blas);
        }
    }
}

impl Gpu {
    /// Opens device 0, compiles `files` (once per process) and loads their kernels, makes a
    /// cuBLAS handle with its workspace. `Error::Device` when there is no usable GPU.
    pub fn new(math: Math, files: &[KernelFile]) -> Result<Gpu> {
        let ctx = context()?;
        if !libs::cublas_present() {
            return Err(Error::Device(format!(
                "cannot load cuBLAS (libcublas.so.13); searched the loader path and {} \
                 (set SLICEOUT_CUDA_LIB_DIR or LD_LIBRARY_PATH to the folder holding it)",
                libs::describe_search()
            )));
        }
        // One stream, no cross-stream events: work is ordered by the stream alone.
        // SAFETY: nothing was allocated on this context by us before this call.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(|e| dev_err("creating a stream", e))?;
        let (major, minor) = ctx.compute_capability().map_err(|e| dev_err("reading the compute capability", e))?;
        let cc = format!("{major}{minor}");
        let device_name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let mut kernels = vec![];
        let images = cached_images(&cc, files)?;
        let arch = format!("sm_{cc} {}", images.first().map_or("", |(_, i)| i.kind()));
        for ((name, src), (_, image)) in files.iter().zip(images) {
            let what = format!("loading the {} of {name}", image.kind());
            let module = match image {
                Image::Cubin(bytes) => ctx.load_module(Ptx::from_binary(bytes)),
                Image::Ptx(text) => ctx.load_module(Ptx::from_src(text)),
            }
            .map_err(|e| dev_err(&what, e))?;
            for k in kernel_names(src) {
                let f = module.load_function(k).map_err(|e| dev_err(&format!("loading kernel {k} of {name}"), e))?;
                kernels.push((k.to_string(), f));
            }
        }
        let context_bytes = ctx.mem_get_info().map(|(free, total)| total - free).unwrap_or(0);
        let workspace = alloc::<u8>(&stream, CUBLAS_WORKSPACE, "the cuBLAS workspace")?;
        let scratch = alloc::<u8>(&stream, REDUCTION_SCRATCH, "the reductions' scratch")?;
        // SAFETY: the scratch was just allocated with exactly this many bytes.
        unsafe { dr::memset_d8_async(scratch.ptr, 0, REDUCTION_SCRATCH, stream.cu_stream()) }
            .map_err(|e| dev_err("zeroing the reductions' scratch", e))?;
        let blas = libs::catch(cudarc::cublas::result::create_handle)
            .ok_or_else(|| Error::Device("cuBLAS panicked while starting".into()))?
            .map_err(|e| dev_err("creating a cuBLAS handle", e))?;
        let sync_each = std::env::var("SLICEOUT_CUDA_SYNC").is_ok_and(|v| v == "1");
        let op = std::cell::RefCell::new((0, String::new()));
        let timing = std::cell::RefCell::new(Timing::default());
        let gpu = Gpu {
            math,
            device_name,
            arch,
            kernels,
            sync_each,
            context_bytes,
            op,
            timing,
            workspace,
            scratch,
            blas,
            tuner: tune::Tuner::from_env(),
            stream,
            ctx,
        };
        // SAFETY: valid handle, stream and workspace (kept alive by `gpu`).
        unsafe {
            cudarc::cublas::result::set_stream(gpu.blas, gpu.stream.cu_stream() as _)
                .map_err(|e| dev_err("binding cuBLAS to the stream", e))?;
            cb::cublasSetWorkspace_v2(gpu.blas, gpu.workspace.ptr as *mut std::ffi::c_void, CUBLAS_WORKSPACE)
                .result()
                .map_err(|e| dev_err("giving cuBLAS its workspace", e))?;
        }
        Ok(gpu)
    }

    /// E.g. `NVIDIA H100 80GB HBM3, sm_90 cubin, tf32` (and `, GEMMs tuned` with the tuner).
    pub fn name(&self) -> String {
        let tuned = if self.tuner.is_some() { ", GEMMs tuned" } else { "" };
        format!("{}, {}, {}{tuned}", self.device_name, self.arch, self.math.as_str())
    }

    pub fn math(&self) -> Math {
        self.math
    }

    /// Device memory the process used once the context existed and the kernels were loaded,
    /// before any allocation of ours (the whole device's use, so other processes count too).
    pub fn context_bytes(&self) -> usize {
        self.context_bytes
    }

    /// `(free, total)` device memory now.
    pub fn memory(&self) -> Result<(usize, usize)> {
        self.ctx.mem_get_info().map_err(|e| dev_err("reading device memory", e))
    }

    /// A device allocation of `len` elements (`what` names it in the error).
    pub fn alloc<T: cudarc::driver::DeviceRepr>(&self, len: usize, what: &str) -> Result<DevMem<T>> {
        self.bind();
        alloc(&self.stream, len, what)
    }

    /// Makes our context current on the calling thread (raw driver and cuBLAS calls need it;
    /// the backend may be driven from a thread other than the one that made it).
    pub fn bind(&self) {
        ok(self.ctx.bind_to_thread(), "binding the CUDA context");
    }

    /// Queues a copy of `src` to device address `dst`.
    pub fn htod<T>(&self, dst: u64, src: &[T]) {
        self.bind();
        // SAFETY: callers pass a destination inside one of our allocations, sized for `src`.
        ok(unsafe { dr::memcpy_htod_async(dst, src, self.stream.cu_stream()) }, "host-to-device copy");
    }

    /// Copies device address `src` into `dst` and waits for it.
    pub fn dtoh<T>(&self, dst: &mut [T], src: u64) {
        self.bind();
        // SAFETY: as `htod`; the stream is synchronised before `dst` is used.
        ok(unsafe { dr::memcpy_dtoh_async(dst, src, self.stream.cu_stream()) }, "device-to-host copy");
        self.synchronize();
    }

    pub fn synchronize(&self) {
        ok(self.stream.synchronize(), "stream synchronise");
    }

    /// Whether every launch is synchronised (`SLICEOUT_CUDA_SYNC=1`), so a fault is reported
    /// against the op and kernel that caused it.
    pub fn sync_each(&self) -> bool {
        self.sync_each
    }

    /// Names the op whose work is queued next (shown when a synchronised launch fails, and the
    /// op timed kernels are counted to).
    pub fn set_op(&self, index: usize, name: impl FnOnce() -> String) {
        if self.sync_each || self.timing.borrow().on {
            *self.op.borrow_mut() = (index, name());
        }
    }

    /// Starts timing every launch and GEMM with a pair of CUDA events (no synchronisation, so
    /// the work runs as it would untimed, less the cost of recording two events).
    pub fn start_timing(&self) {
        let mut t = self.timing.borrow_mut();
        t.on = true;
        t.queued.clear();
    }

    /// Waits for the device and returns the time of everything queued since `start_timing`,
    /// in queue order; timing stops.
    pub fn take_timings(&self) -> Vec<KernelTime> {
        self.synchronize();
        let mut t = self.timing.borrow_mut();
        t.on = false;
        let queued = std::mem::take(&mut t.queued);
        let times = queued.iter().zip(&t.pairs).map(|(&(op, kernel), (start, end))| {
            let ms = ok(start.elapsed_ms(end), "reading a CUDA event") as f64;
            KernelTime { op, kernel, ms }
        });
        times.collect()
    }

    /// Queues `work` (one launch or GEMM named `what`), between two events when timing, then
    /// checks it with `SLICEOUT_CUDA_SYNC=1`.
    fn queue(&self, what: &'static str, work: impl FnOnce()) {
        let mut t = self.timing.borrow_mut();
        if t.on {
            let i = t.queued.len();
            if i == t.pairs.len() {
                let event = || {
                    ok(
                        self.ctx.new_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT)),
                        "creating a CUDA event",
                    )
                };
                t.pairs.push((event(), event()));
            }
            t.queued.push((self.op.borrow().0, what));
            ok(t.pairs[i].0.record(&self.stream), "recording a CUDA event");
            work();
            ok(t.pairs[i].1.record(&self.stream), "recording a CUDA event");
        } else {
            work();
        }
        if self.sync_each {
            let op = &self.op.borrow().1;
            ok(self.stream.synchronize(), &format!("{what} of op `{op}` (SLICEOUT_CUDA_SYNC)"));
        }
    }
}

impl Launcher for Gpu {
    fn launch(&self, name: &'static str, cfg: LaunchConfig, args: &[&dyn Arg]) {
        let f = match self.kernels.iter().find(|(n, _)| n == name) {
            Some((_, f)) => f,
            None => panic!("CUDA: kernel {name} is not in any kernel file"),
        };
        self.queue(name, || {
            let mut b = self.stream.launch_builder(f);
            for a in args {
                a.push(&mut b);
            }
            // SAFETY: argument lists match the kernels' signatures (ops/*/*.cu); pointers are
            // inside our allocations (the ops check lengths against the plan before launching).
            if let Err(e) = unsafe { b.launch(cfg) } {
                panic!("CUDA: launching kernel {name} failed: {e:?}");
            }
        });
    }

    /// In the GPU's math (f32 operands) or plain f32 accumulation (bf16 operands); the scalars
    /// are f32 either way, as `CUBLAS_COMPUTE_32F*` wants.
    fn gemm(&self, g: &GemmCall) {
        // The tuner knows single products only; a batch goes to cuBLAS as it is.
        if g.batch == 1 && self.tuner.as_ref().is_some_and(|t| t.gemm(self, g)) {
            return;
        }
        let alpha = 1.0f32;
        let op = |t: bool| if t { cb::cublasOperation_t::CUBLAS_OP_T } else { cb::cublasOperation_t::CUBLAS_OP_N };
        let p = |a: u64| a as *mut std::ffi::c_void;
        let (ab, c_type, compute) =
            (data_type(g.ab_type), data_type(g.c_type), gemm_compute_type(g.ab_type, self.math));
        let (alpha, beta) = (&alpha as *const f32 as *const _, &g.beta as *const f32 as *const _);
        let (m, n, k, lda, ldb, ldc) = (int(g.m), int(g.n), int(g.k), int(g.lda), int(g.ldb), int(g.ldc));
        let algo = cb::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT;
        let (ta, tb) = (op(g.transa), op(g.transb));
        // SAFETY: the views lie inside the operands (by construction of the conv lowering and
        // the Winograd walk, which their tests check against a host GEMM); scalars are host
        // pointers.
        self.queue(g.label, || match g.batch {
            1 => ok(
                unsafe {
                    cudarc::cublas::result::gemm_ex(
                        self.blas,
                        ta,
                        tb,
                        m,
                        n,
                        k,
                        alpha,
                        p(g.a),
                        ab,
                        lda,
                        p(g.b),
                        ab,
                        ldb,
                        beta,
                        p(g.c),
                        c_type,
                        ldc,
                        compute,
                        algo,
                    )
                },
                "cublasGemmEx",
            ),
            batch => {
                let [sa, sb, sc] = g.strides.map(|s| i64::try_from(s).expect("a stride fits in 64 bits"));
                ok(
                    unsafe {
                        cudarc::cublas::result::gemm_strided_batched_ex(
                            self.blas,
                            ta,
                            tb,
                            m,
                            n,
                            k,
                            alpha,
                            p(g.a),
                            ab,
                            lda,
                            sa,
                            p(g.b),
                            ab,
                            ldb,
                            sb,
                            beta,
                            p(g.c),
                            c_type,
                            ldc,
                            sc,
                            int(batch),
                            compute,
                            algo,
                        )
                    },
                    "cublasGemmStridedBatchedEx",
                )
            }
        });
    }

    fn reduction_scratch(&self) -> u64 {
        self.scratch.ptr
    }
}

fn alloc<T: cudarc::driver::DeviceRepr>(stream: &Arc<CudaStream>, len: usize, what: &str) -> Result<DevMem<T>> {
    // SAFETY: every byte is written before it is read (uploads, or ops of a valid plan).
    let slice = unsafe { stream.alloc::<T>(len.max(1)) }
        .map_err(|e| dev_err(&format!("allocating {what} ({:.0} MiB)", mib(len * std::mem::size_of::<T>())), e))?;
    let ptr = {
        let (ptr, _sync) = slice.device_ptr(stream);
        ptr
    };
    Ok(DevMem { slice, ptr })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a machine without the driver (this one while developing) every entry point says so
    /// with `Error::Device` instead of panicking; with a GPU, they succeed.
    #[test]
    fn entry_points_fail_cleanly_without_a_gpu() {
        if available() {
            assert!(device_memory().is_ok());
            return;
        }
        match Gpu::new(Math::Tf32, &[]) {
            Err(Error::Device(msg)) => assert!(!msg.is_empty()),
            Err(e) => panic!("wrong error kind: {e}"),
            Ok(_) => panic!("a GPU without a device"),
        }
        assert!(matches!(device_memory(), Err(Error::Device(_))));
    }

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

    /// The kernels' division by multiply-and-shift against `/`, for every divisor the models
    /// use and random ones, at dividends around multiples of the divisor and near 2^31.
    #[test]
    fn fast_division_is_exact_below_two_to_the_31() {
        let mut rng = crate::rng::Rng::new(7, 0);
        let mut divisors: Vec<usize> = (1..=2048).collect();
        divisors.extend((0..2000).map(|_| 1 + rng.below((1 << 31) - 1)));
        divisors.extend([(1 << 31) - 1, 1 << 30, 3 << 29]);
        for d in divisors {
            let f = FastDiv::new(d);
            let mut xs: Vec<u32> = vec![0, 1, (1 << 31) - 1, (1 << 31) - 2];
            for q in [1usize, 2, 3, 1000, (1 << 31) / d] {
                let x = q * d;
                xs.extend([x.saturating_sub(1), x, x + 1].iter().filter(|&&x| x < 1 << 31).map(|&x| x as u32));
            }
            xs.extend((0..64).map(|_| rng.below(1 << 31) as u32));
            for x in xs {
                assert_eq!(f.div(x), x / d as u32, "{x} / {d}");
            }
        }
    }

    #[test]
    fn reductions_fill_the_gpu_within_the_scratch() {
        assert_eq!(reduction_parts(80, 128 * 32 * 32), 16);
        assert_eq!(reduction_parts(320, 128 * 8 * 8), 1);
        assert_eq!(reduction_parts(1, 1 << 30), 64);
        assert_eq!(reduction_parts(REDUCTION_CHANNELS, 1 << 30), 1);
        for (c, m) in [(640, 1 << 24), (3000, 1 << 20), (17, 5)] {
            assert!(c * reduction_parts(c, m) <= REDUCTION_PARTS);
        }
        let (p, s, n) = reduction_regions(0);
        assert_eq!((p, s, n as usize + 4 * REDUCTION_CHANNELS), (0, 16 * REDUCTION_PARTS as u64, REDUCTION_SCRATCH));
    }

    #[test]
    fn grids_never_launch_more_blocks_than_the_work_needs() {
        for total in [1, 255, 256, 257, 1 << 20] {
            let g = grid(total);
            assert_eq!(g.grid_dim.0 as usize, total.div_ceil(256));
        }
        assert_eq!(grid(usize::MAX / 2).grid_dim.0, 1 << 16);
        assert_eq!(grid(0).grid_dim.0, 1);
    }
}
