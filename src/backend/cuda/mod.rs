//! The CUDA backend: the same op set as the CPU reference, on one GPU, through `cudarc`
//! (driver API, cuBLAS, NVRTC), with every CUDA library opened at run time so the binary builds
//! and runs where no CUDA is installed (every entry point then returns `Error::Device`).
//!
//! Memory follows DESIGN.md principle 2, one device allocation each: the arena (checked against
//! the device's free memory first), the persistent region, and each resident dataset split
//! (normalisation table, image bytes and labels together). Besides those: a small index buffer
//! for batch gathers and cuBLAS's workspace, both made before the first step.
//!
//! Ops are queued on one stream and never wait for the device; only `read`, `get_persistent`
//! and `synchronize` do. Convolutions are im2col (per chunk of images, as the schedule says)
//! plus `cublasGemmEx` on offset, strided views of the weight (no weight copies; a wrapping
//! slice is two GEMMs); the mapping lives in [`gemm`], pure host code tested without a GPU.
//! The other ops are NVRTC kernels (`kernels/*.cu`, compiled once per process for the device's
//! compute capability, with `--fmad=false` so their f32 expressions round as the CPU's do).
//! A failing CUDA call inside a step cannot be reported through the `Backend` trait: it panics
//! with the call and the driver's error.

pub mod gemm;
pub mod libs;

use std::sync::{Arc, Mutex};

use cudarc::cublas::sys as cb;
use cudarc::driver::{
    result as dr, CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::{CompileOptions, Ptx};

use self::gemm::{ConvCmd, CublasGemm, Operand};
use super::{Backend, SplitId, StepCtx};
use crate::data::loader::{Crop, Normalization, MAX_CHANNELS};
use crate::data::Split;
use crate::error::{Error, Result};
use crate::exec::Program;
use crate::ops::batchnorm::BN_MOMENTUM;
use crate::ops::sgd::GradMap;
use crate::schedule::{BufId, Op, TensorId};
use crate::sliceout::Slice;

/// GEMM arithmetic: TF32 tensor cores (inputs rounded to 10-bit mantissas, f32 accumulation)
/// or full f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Math {
    Tf32,
    Fp32,
}

impl Math {
    /// Parses `--math`.
    pub fn parse(s: &str) -> Result<Math> {
        match s {
            "tf32" => Ok(Math::Tf32),
            "fp32" => Ok(Math::Fp32),
            _ => Err(Error::flag("--math", s, "tf32 or fp32")),
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Math::Tf32 => "tf32",
            Math::Fp32 => "fp32",
        }
    }

    fn compute_type(&self) -> cb::cublasComputeType_t {
        match self {
            Math::Tf32 => cb::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32,
            Math::Fp32 => cb::cublasComputeType_t::CUBLAS_COMPUTE_32F,
        }
    }
}

/// Helpers prepended to every kernel file.
pub const KERNEL_COMMON: &str = include_str!("kernels/common.cu");

/// The kernel files, `(name, source)`; each compiles on its own after [`KERNEL_COMMON`].
pub const KERNEL_FILES: &[(&str, &str)] = &[
    ("conv.cu", include_str!("kernels/conv.cu")),
    ("bn.cu", include_str!("kernels/bn.cu")),
    ("misc.cu", include_str!("kernels/misc.cu")),
    ("data.cu", include_str!("kernels/data.cu")),
];

/// The full source NVRTC compiles for one kernel file.
pub fn kernel_source(file: &str) -> String {
    format!("{KERNEL_COMMON}\n{file}")
}

/// NVRTC options: the virtual architecture (e.g. `compute_90`) and no FMA contraction.
pub fn compile_options(arch: &str, name: &str) -> CompileOptions {
    CompileOptions {
        fmad: Some(false),
        options: vec![format!("--gpu-architecture={arch}")],
        name: Some(name.to_string()),
        ..Default::default()
    }
}

/// Compiles every kernel file for `arch` (e.g. `compute_90`) to PTX. Call after
/// [`libs::nvrtc_present`]; a compile error comes back with NVRTC's log.
pub fn compile_all(arch: &str) -> Result<Ptxs> {
    KERNEL_FILES
        .iter()
        .map(|(name, src)| {
            let ptx =
                cudarc::nvrtc::compile_ptx_with_opts(kernel_source(src), compile_options(arch, name)).map_err(|e| {
                    match e {
                        cudarc::nvrtc::CompileError::CompileError { log, .. } => Error::Device(format!(
                            "NVRTC could not compile {name} for {arch}:\n{}",
                            log.to_string_lossy()
                        )),
                        e => Error::Device(format!("NVRTC failed on {name}: {e:?}")),
                    }
                })?;
            Ok((name.to_string(), ptx.to_src()))
        })
        .collect()
}

/// PTX per architecture, compiled once per process.
/// `(file name, PTX)` of every kernel file.
type Ptxs = Vec<(String, String)>;

static PTX_CACHE: Mutex<Vec<(String, Ptxs)>> = Mutex::new(Vec::new());

fn cached_ptx(arch: &str) -> Result<Ptxs> {
    let mut cache = PTX_CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, ptx)) = cache.iter().find(|(a, _)| a == arch) {
        return Ok(ptx.clone());
    }
    if !libs::nvrtc_present(&[]) {
        return Err(Error::Device(format!(
            "cannot load NVRTC (libnvrtc.so.13); searched the loader path and {:?} \
             (set SLICEOUT_CUDA_LIB_DIR or LD_LIBRARY_PATH to the folder holding it)",
            libs::search_dirs()
        )));
    }
    let ptx = libs::catch(|| compile_all(arch))
        .ok_or_else(|| Error::Device("NVRTC panicked while compiling the kernels".into()))??;
    cache.push((arch.to_string(), ptx.clone()));
    Ok(ptx)
}

fn dev_err(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::Device(format!("{what}: {e:?}"))
}

/// Checks that the driver library loads and that a device exists, without panicking.
fn probe() -> Result<()> {
    libs::preload(&[]);
    if !libs::driver_present() {
        return Err(Error::Device("no NVIDIA driver: libcuda.so could not be loaded (use --device cpu)".into()));
    }
    match libs::catch(CudaContext::device_count) {
        None => Err(Error::Device("the NVIDIA driver library is missing functions this build needs (CUDA 13)".into())),
        Some(Err(e)) => Err(Error::Device(format!("the NVIDIA driver did not initialise: {e:?}"))),
        Some(Ok(0)) => Err(Error::Device("no CUDA device found".into())),
        Some(Ok(_)) => Ok(()),
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

/// The compiled functions, one per kernel.
struct Kernels {
    im2col: CudaFunction,
    col2im: CudaFunction,
    bn_relu_train: CudaFunction,
    bn_relu_apply: CudaFunction,
    bn_relu_eval: CudaFunction,
    bn_relu_backward: CudaFunction,
    add: CudaFunction,
    avgpool_forward: CudaFunction,
    avgpool_backward: CudaFunction,
    linear_forward: CudaFunction,
    linear_backward: CudaFunction,
    cross_entropy: CudaFunction,
    sgd: CudaFunction,
    gather_batch: CudaFunction,
}

impl Kernels {
    fn load(ctx: &Arc<CudaContext>, arch: &str) -> Result<Kernels> {
        let mut modules = vec![];
        for (name, ptx) in cached_ptx(arch)? {
            let m =
                ctx.load_module(Ptx::from_src(ptx)).map_err(|e| dev_err(&format!("loading the PTX of {name}"), e))?;
            modules.push(m);
        }
        let f = |name: &str| -> Result<CudaFunction> {
            modules
                .iter()
                .find_map(|m| m.load_function(name).ok())
                .ok_or_else(|| Error::Device(format!("kernel {name} missing from the modules")))
        };
        Ok(Kernels {
            im2col: f("im2col")?,
            col2im: f("col2im")?,
            bn_relu_train: f("bn_relu_train")?,
            bn_relu_apply: f("bn_relu_apply")?,
            bn_relu_eval: f("bn_relu_eval")?,
            bn_relu_backward: f("bn_relu_backward")?,
            add: f("add")?,
            avgpool_forward: f("avgpool_forward")?,
            avgpool_backward: f("avgpool_backward")?,
            linear_forward: f("linear_forward")?,
            linear_backward: f("linear_backward")?,
            cross_entropy: f("cross_entropy")?,
            sgd: f("sgd")?,
            gather_batch: f("gather_batch")?,
        })
    }
}

/// A device allocation with its base address (event tracking is off, so raw addresses are
/// safe to hold for as long as the slice lives).
struct DevMem<T> {
    slice: CudaSlice<T>,
    ptr: u64,
}

impl<T: cudarc::driver::DeviceRepr> DevMem<T> {
    fn new(stream: &Arc<CudaStream>, len: usize, what: &str) -> Result<DevMem<T>> {
        // SAFETY: every byte is written before it is read (uploads, or ops of a valid plan).
        let slice = unsafe { stream.alloc::<T>(len.max(1)) }
            .map_err(|e| dev_err(&format!("allocating {what} ({} MiB)", mib(len * 4)), e))?;
        let ptr = {
            let (ptr, _sync) = slice.device_ptr(stream);
            ptr
        };
        Ok(DevMem { slice, ptr })
    }

    fn len(&self) -> usize {
        self.slice.len()
    }
}

/// A resident split: `[table: channels*256 f32][images: len*channels*1024 u8][labels: len u8]`.
struct DevSplit {
    mem: DevMem<u8>,
    len: usize,
    channels: usize,
}

impl DevSplit {
    fn table(&self) -> u64 {
        self.mem.ptr
    }
    fn images(&self) -> u64 {
        self.mem.ptr + (self.channels * 256 * 4) as u64
    }
    fn labels(&self) -> u64 {
        self.images() + (self.len * self.channels * 1024) as u64
    }
}

fn mib(bytes: usize) -> usize {
    bytes.div_ceil(1 << 20)
}

/// cuBLAS's workspace (its recommendation for Hopper), given to it up front so it never
/// allocates inside a step.
const CUBLAS_WORKSPACE: usize = 32 << 20;

pub struct CudaBackend {
    math: Math,
    device_name: String,
    arch: String,
    kernels: Kernels,
    arena: Option<DevMem<f32>>,
    persistent: Option<DevMem<f32>>,
    splits: [Option<DevSplit>; 2],
    /// Image indices and packed crops of the batch being gathered.
    selection: Option<DevMem<u32>>,
    selection_host: Vec<u32>,
    _workspace: DevMem<u8>,
    blas: cb::cublasHandle_t,
    stream: Arc<CudaStream>,
    ctx: Arc<CudaContext>,
}

impl Drop for CudaBackend {
    fn drop(&mut self) {
        // SAFETY: the handle was created by us and is destroyed once; errors are moot here.
        unsafe {
            let _ = self.stream.synchronize();
            let _ = cudarc::cublas::result::destroy_handle(self.blas);
        }
    }
}

/// Launch geometry of a grid-stride loop over `total` elements.
fn grid(total: usize) -> LaunchConfig {
    let blocks = total.div_ceil(256).clamp(1, 1 << 16) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

/// One block per channel (reductions), `channels` blocks of 512 threads.
fn per_channel(channels: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (channels as u32, 1, 1), block_dim: (512, 1, 1), shared_mem_bytes: 0 }
}

/// Element-wise over `channels` rows of `m`: y = channel.
fn rows(channels: usize, m: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (m.div_ceil(256).clamp(1, 1024) as u32, channels as u32, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn ok<T>(r: std::result::Result<T, impl std::fmt::Debug>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("CUDA backend: {what} failed: {e:?}"),
    }
}

fn f32_at(base: u64, floats: usize) -> u64 {
    base + 4 * floats as u64
}

fn int(v: usize) -> i32 {
    i32::try_from(v).expect("dimension fits in i32")
}

impl CudaBackend {
    /// Opens device 0, compiles (once per process) and loads the kernels, makes a cuBLAS
    /// handle with its workspace. `Error::Device` when there is no usable GPU.
    pub fn new(math: Math) -> Result<CudaBackend> {
        let ctx = context()?;
        if !libs::cublas_present() {
            return Err(Error::Device(format!(
                "cannot load cuBLAS (libcublas.so.13); searched the loader path and {:?} \
                 (set SLICEOUT_CUDA_LIB_DIR or LD_LIBRARY_PATH to the folder holding it)",
                libs::search_dirs()
            )));
        }
        // One stream, no cross-stream events: ops are ordered by the stream alone.
        // SAFETY: nothing was allocated on this context by us before this call.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(|e| dev_err("creating a stream", e))?;
        let (major, minor) = ctx.compute_capability().map_err(|e| dev_err("reading the compute capability", e))?;
        let arch = format!("compute_{major}{minor}");
        let device_name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let kernels = Kernels::load(&ctx, &arch)?;
        let blas = libs::catch(cudarc::cublas::result::create_handle)
            .ok_or_else(|| Error::Device("cuBLAS panicked while starting".into()))?
            .map_err(|e| dev_err("creating a cuBLAS handle", e))?;
        let workspace = DevMem::<u8>::new(&stream, CUBLAS_WORKSPACE, "the cuBLAS workspace");
        let workspace = match workspace {
            Ok(w) => w,
            Err(e) => {
                // SAFETY: created just above, not used yet.
                unsafe {
                    let _ = cudarc::cublas::result::destroy_handle(blas);
                }
                return Err(e);
            }
        };
        let backend = CudaBackend {
            math,
            device_name,
            arch,
            kernels,
            arena: None,
            persistent: None,
            splits: [None, None],
            selection: None,
            selection_host: vec![],
            _workspace: workspace,
            blas,
            stream,
            ctx,
        };
        // SAFETY: valid handle, stream and workspace (kept alive by `backend`).
        unsafe {
            cudarc::cublas::result::set_stream(backend.blas, backend.stream.cu_stream() as _)
                .map_err(|e| dev_err("binding cuBLAS to the stream", e))?;
            cb::cublasSetWorkspace_v2(backend.blas, backend._workspace.ptr as *mut std::ffi::c_void, CUBLAS_WORKSPACE)
                .result()
                .map_err(|e| dev_err("giving cuBLAS its workspace", e))?;
        }
        Ok(backend)
    }

    pub fn math(&self) -> Math {
        self.math
    }

    /// `(free, total)` device memory now.
    pub fn memory(&self) -> Result<(usize, usize)> {
        self.ctx.mem_get_info().map_err(|e| dev_err("reading device memory", e))
    }

    /// Bytes of the arena allocation (0 before `reserve_arena`).
    pub fn arena_bytes(&self) -> usize {
        self.arena.as_ref().map_or(0, |a| a.len() * 4)
    }

    fn arena_ptr(&self, p: &Program, b: BufId) -> u64 {
        let a = self.arena.as_ref().expect("arena reserved before use");
        let (off, len) = p.locs[b];
        assert!(off + len <= a.len(), "buffer outside the arena");
        f32_at(a.ptr, off)
    }

    /// Device code cannot bounds-check: BN buffers against the slice width and `m`.
    fn bn_check(p: &Program, slice: Slice, m: usize, acts: &[BufId], vecs: &[(BufId, usize)]) {
        for &b in acts {
            assert_eq!(p.locs[b].1, slice.width * m, "bn activation length");
        }
        for &(b, per) in vecs {
            assert_eq!(p.locs[b].1, per * slice.width, "bn per-channel length");
        }
    }

    fn tensor_ptr(&self, p: &Program, t: TensorId) -> u64 {
        let m = self.persistent.as_ref().expect("persistent region set");
        let r = p.schedule.tensors[t].range();
        assert!(r.end <= m.len(), "tensor outside the persistent region");
        f32_at(m.ptr, r.start)
    }

    /// Makes our context current on the calling thread (raw driver and cuBLAS calls need it;
    /// the backend may be driven from a thread other than the one that made it).
    fn bind(&self) {
        ok(self.ctx.bind_to_thread(), "binding the CUDA context");
    }

    fn htod<T>(&self, dst: u64, src: &[T]) {
        self.bind();
        // SAFETY: callers pass a destination inside one of our allocations, sized for `src`.
        ok(unsafe { dr::memcpy_htod_async(dst, src, self.stream.cu_stream()) }, "host-to-device copy");
    }

    fn dtoh<T>(&self, dst: &mut [T], src: u64) {
        self.bind();
        // SAFETY: as `htod`; the stream is synchronised before `dst` is used.
        ok(unsafe { dr::memcpy_dtoh_async(dst, src, self.stream.cu_stream()) }, "device-to-host copy");
        ok(self.stream.synchronize(), "stream synchronise");
    }

    fn launch(&self, f: &CudaFunction, cfg: LaunchConfig, args: &[&dyn Arg]) {
        let mut b = self.stream.launch_builder(f);
        for a in args {
            a.push(&mut b);
        }
        // SAFETY: argument lists match the kernels' signatures (kernels/*.cu); pointers are
        // inside our allocations (checked by `arena_ptr` / `tensor_ptr`).
        ok(unsafe { b.launch(cfg) }, "kernel launch");
    }

    fn gemm(&self, g: &CublasGemm, ptr: impl Fn(Operand) -> u64) {
        let (alpha, beta) = (1.0f32, g.beta);
        let op = |t: bool| {
            if t {
                cb::cublasOperation_t::CUBLAS_OP_T
            } else {
                cb::cublasOperation_t::CUBLAS_OP_N
            }
        };
        let at = |(o, off): (Operand, usize)| f32_at(ptr(o), off) as *mut std::ffi::c_void;
        // SAFETY: the views lie inside the operands (by construction of the conv plan, which
        // the tests in `gemm` check against a host GEMM); scalars are host pointers.
        ok(
            unsafe {
                cudarc::cublas::result::gemm_ex(
                    self.blas,
                    op(g.transa),
                    op(g.transb),
                    int(g.m),
                    int(g.n),
                    int(g.k),
                    &alpha as *const f32 as *const _,
                    at(g.a),
                    cb::cudaDataType::CUDA_R_32F,
                    int(g.lda),
                    at(g.b),
                    cb::cudaDataType::CUDA_R_32F,
                    int(g.ldb),
                    &beta as *const f32 as *const _,
                    at(g.c),
                    cb::cudaDataType::CUDA_R_32F,
                    int(g.ldc),
                    self.math.compute_type(),
                    cb::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                )
            },
            "cublasGemmEx",
        );
    }

    /// Runs a conv command list; `ptr` maps operands to device addresses.
    fn conv_cmds(
        &self,
        cmds: &[ConvCmd],
        shape: &crate::ops::conv2d::ConvShape,
        in_width: usize,
        ptr: impl Fn(Operand) -> u64,
    ) {
        let (c, n, h, w) = (int(in_width), int(shape.n), int(shape.h), int(shape.w));
        let (k, s, pad) = (int(shape.k), int(shape.stride), int(shape.pad));
        let (ho, wo) = (int(shape.ho()), int(shape.wo()));
        for cmd in cmds {
            match *cmd {
                ConvCmd::Im2col { n0, nc } => {
                    let (col, inp) = (ptr(Operand::Col), ptr(Operand::Inp));
                    let (n0, nc) = (int(n0), int(nc));
                    let total = shape.col_len(in_width, nc as usize);
                    self.launch(
                        &self.kernels.im2col,
                        grid(total),
                        &[&col, &inp, &c, &n, &h, &w, &k, &s, &pad, &ho, &wo, &n0, &nc],
                    );
                }
                ConvCmd::Col2im { n0, nc, accumulate } => {
                    let (d_inp, col) = (ptr(Operand::DInp), ptr(Operand::Col));
                    let total = in_width * nc * shape.h * shape.w;
                    let (n0, nc, acc) = (int(n0), int(nc), accumulate as i32);
                    self.launch(
                        &self.kernels.col2im,
                        grid(total),
                        &[&d_inp, &col, &c, &n, &h, &w, &k, &s, &pad, &ho, &wo, &n0, &nc, &acc],
                    );
                }
                ConvCmd::Gemm(g) => self.gemm(&g.to_cublas(), &ptr),
            }
        }
    }

    /// Queues `f(run)` for each run of `slice` (pointers offset by the caller per run).
    fn bn_runs(slice: Slice, mut f: impl FnMut(crate::sliceout::Run)) {
        for run in slice.each_run() {
            f(run);
        }
    }
}

/// A kernel argument (device pointers are passed as their `u64` address).
trait Arg {
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
impl_arg!(u64, i64, i32, f32, f64);

impl Backend for CudaBackend {
    fn memory_in_use(&self) -> Option<usize> {
        self.memory().ok().map(|(free, total)| total - free)
    }

    fn name(&self) -> String {
        format!("cuda ({}, {}, {})", self.device_name, self.arch.replace("compute_", "sm_"), self.math.as_str())
    }

    fn reserve_arena(&mut self, bytes: usize) -> Result<()> {
        let len = bytes.div_ceil(4);
        if self.arena.as_ref().is_some_and(|a| a.len() >= len) {
            return Ok(());
        }
        self.bind();
        // The old arena (if any) is freed before the new one is made, so it counts as free.
        let old = self.arena_bytes();
        ok(self.stream.synchronize(), "stream synchronise");
        let (free, total) = self.memory()?;
        if bytes > free + old {
            return Err(Error::Device(format!(
                "the memory plan needs a {} MiB arena but the GPU has {} MiB free of {} MiB; \
                 lower --batch (or --keep)",
                mib(bytes),
                mib(free + old),
                mib(total)
            )));
        }
        self.arena = None;
        ok(self.stream.synchronize(), "stream synchronise");
        self.arena = Some(DevMem::new(&self.stream, len, "the arena")?);
        Ok(())
    }

    fn set_persistent(&mut self, data: &[f32]) -> Result<()> {
        if self.persistent.as_ref().is_none_or(|p| p.len() != data.len()) {
            self.persistent = None;
            self.persistent = Some(DevMem::new(&self.stream, data.len(), "the persistent region")?);
        }
        let ptr = self.persistent.as_ref().map_or(0, |p| p.ptr);
        if !data.is_empty() {
            self.htod(ptr, data);
        }
        Ok(())
    }

    fn get_persistent(&mut self, out: &mut [f32]) {
        let p = self.persistent.as_ref().expect("persistent region set");
        assert!(out.len() <= p.len(), "more floats asked than persistent");
        if !out.is_empty() {
            self.dtoh(out, p.ptr);
        }
    }

    fn upload_split(&mut self, id: SplitId, split: Split, channels: usize, norm: &Normalization) -> Result<()> {
        if channels == 0 || channels > MAX_CHANNELS {
            return Err(Error::Device(format!(
                "splits of {channels} channels are not supported (1 to {MAX_CHANNELS})"
            )));
        }
        if split.images.len() != split.len * channels * 1024 || split.labels.len() != split.len {
            return Err(Error::Device("split images/labels do not match its length".into()));
        }
        let table: Vec<u8> = (0..channels).flat_map(|c| norm.table(c)).flat_map(f32::to_le_bytes).collect();
        let bytes = table.len() + split.images.len() + split.labels.len();
        self.splits[id as usize] = None;
        let mem = DevMem::<u8>::new(&self.stream, bytes, "a resident split")?;
        let s = DevSplit { mem, len: split.len, channels };
        self.htod(s.table(), &table);
        if split.len > 0 {
            self.htod(s.images(), &split.images);
            self.htod(s.labels(), &split.labels);
        }
        ok(self.stream.synchronize(), "stream synchronise");
        self.splits[id as usize] = Some(s);
        Ok(())
    }

    fn split_len(&self, id: SplitId) -> usize {
        self.splits[id as usize].as_ref().map_or(0, |s| s.len)
    }

    fn fill_batch(&mut self, p: &Program, id: SplitId, indices: &[usize], crops: &[Crop]) {
        let s = self.splits[id as usize].as_ref().expect("split uploaded before fill_batch");
        let n = indices.len();
        assert_eq!(crops.len(), n);
        let sched = &p.schedule;
        assert_eq!(p.locs[sched.input].1, s.channels * n * 1024, "input buffer size");
        assert_eq!(p.locs[sched.labels].1, n, "label buffer size");
        let mut sel = std::mem::take(&mut self.selection_host);
        sel.clear();
        for &i in indices {
            assert!(i < s.len, "index {i} out of split of {}", s.len);
            sel.push(i as u32);
        }
        for c in crops {
            assert!(c.dx <= 8 && c.dy <= 8);
            sel.push(c.dx as u32 | (c.dy as u32) << 8 | (c.flip as u32) << 16);
        }
        if self.selection.as_ref().is_none_or(|m| m.len() < sel.len()) {
            self.selection = None;
            self.selection =
                Some(ok(DevMem::new(&self.stream, sel.len(), "the batch indices"), "allocating the batch indices"));
        }
        let dsel = self.selection.as_ref().map_or(0, |m| m.ptr);
        if n > 0 {
            self.htod(dsel, &sel);
            let (x, y) = (self.arena_ptr(p, sched.input), self.arena_ptr(p, sched.labels));
            let (images, labels, table) = (s.images(), s.labels(), s.table());
            let (c, ni) = (int(s.channels), int(n));
            self.launch(
                &self.kernels.gather_batch,
                grid(s.channels * n * 1024),
                &[&x, &y, &images, &labels, &table, &dsel, &c, &ni],
            );
        }
        self.selection_host = sel;
    }

    fn write(&mut self, p: &Program, buf: usize, data: &[f32]) {
        assert_eq!(data.len(), p.locs[buf].1, "write length vs buffer");
        let dst = self.arena_ptr(p, buf);
        if !data.is_empty() {
            self.htod(dst, data);
        }
    }

    fn read(&mut self, p: &Program, buf: usize, out: &mut [f32]) {
        assert_eq!(out.len(), p.locs[buf].1, "read length vs buffer");
        let src = self.arena_ptr(p, buf);
        if !out.is_empty() {
            self.dtoh(out, src);
        }
    }

    fn synchronize(&mut self) {
        ok(self.stream.synchronize(), "stream synchronise");
    }

    fn run_op(&mut self, p: &Program, step: usize, ctx: &StepCtx) {
        self.bind();
        assert!(p.arena_bytes() <= self.arena_bytes(), "arena smaller than the plan");
        assert!(
            self.persistent.as_ref().is_some_and(|m| p.schedule.persistent_len() <= m.len()),
            "persistent region not set"
        );
        let s = &p.schedule;
        let sl = |sel| s.slice(sel, ctx.starts);
        let buf = |b: BufId| self.arena_ptr(p, b);
        let ten = |t: TensorId| self.tensor_ptr(p, t);
        let k = &self.kernels;
        match s.steps[step].op {
            Op::Conv { out, inp, col, weight, ref shape, out_sel, in_sel, chunk, accumulate } => {
                let (os, is) = (sl(out_sel), sl(in_sel));
                // Device code cannot bounds-check: check the buffers against the shape here.
                let len = |b: BufId| p.locs[b].1;
                let hw_out = shape.ho() * shape.wo();
                assert_eq!(len(out), os.width * shape.n * hw_out, "conv out length");
                assert_eq!(len(inp), is.width * shape.n * shape.h * shape.w, "conv inp length");
                assert!(col.map_or(shape.direct(), |c| len(c) >= shape.col_len(is.width, chunk)));
                let mut cmds = Vec::with_capacity(16);
                gemm::conv_forward(shape, os, is, chunk, accumulate, |c| cmds.push(c));
                let (o, i, w) = (buf(out), buf(inp), ten(weight));
                let c = col.map_or(0, buf);
                self.conv_cmds(&cmds, shape, is.width, |op| match op {
                    Operand::Weight => w,
                    Operand::Inp => i,
                    Operand::Out => o,
                    Operand::Col => c,
                    _ => unreachable!("forward uses no gradients"),
                });
            }
            Op::ConvBackward {
                d_inp,
                d_weight,
                d_out,
                inp,
                col,
                weight,
                ref shape,
                out_sel,
                in_sel,
                chunk,
                accumulate_d_inp,
            } => {
                let (os, is) = (sl(out_sel), sl(in_sel));
                let len = |b: BufId| p.locs[b].1;
                let (hw_in, hw_out) = (shape.h * shape.w, shape.ho() * shape.wo());
                assert_eq!(len(d_out), os.width * shape.n * hw_out, "conv d_out length");
                assert_eq!(len(inp), is.width * shape.n * hw_in, "conv inp length");
                assert!(d_inp.is_none_or(|d| len(d) == is.width * shape.n * hw_in));
                assert_eq!(len(d_weight), os.width * is.width * shape.kk(), "d_weight length");
                assert!(col.map_or(shape.direct(), |c| len(c) >= shape.col_len(is.width, chunk)));
                let mut cmds = Vec::with_capacity(32);
                gemm::conv_backward(shape, os, is, chunk, d_inp.is_some(), accumulate_d_inp, |c| cmds.push(c));
                let (dw, dy, i, w) = (buf(d_weight), buf(d_out), buf(inp), ten(weight));
                let (dx, c) = (d_inp.map_or(0, buf), col.map_or(0, buf));
                self.conv_cmds(&cmds, shape, is.width, |op| match op {
                    Operand::Weight => w,
                    Operand::Inp => i,
                    Operand::Col => c,
                    Operand::DOut => dy,
                    Operand::DInp => dx,
                    Operand::DWeight => dw,
                    Operand::Out => unreachable!("backward writes no output"),
                });
            }
            Op::BnReluTrain { out, stats, inp, bn, sel, m } => {
                let slice = sl(sel);
                let (o, st, x) = (buf(out), buf(stats), buf(inp));
                let (g, b, rm, rv) = (ten(bn.gamma), ten(bn.beta), ten(bn.mean), ten(bn.var));
                assert!(m > 1, "training batch norm needs more than one value per channel");
                Self::bn_check(p, slice, m, &[out, inp], &[(stats, 2)]);
                let (mi, scale) = (m as i64, slice.scale());
                // eps as the exact double PyTorch (and the CPU op) add, not the widened f32.
                let (mom, unbias, eps) = (BN_MOMENTUM as f64, m as f64 / (m - 1) as f64, 1e-5);
                Self::bn_runs(slice, |r| {
                    let (o, x) = (f32_at(o, r.at * m), f32_at(x, r.at * m));
                    let (mu, is) = (f32_at(st, r.at), f32_at(st, slice.width + r.at));
                    let (g, b) = (f32_at(g, r.channel), f32_at(b, r.channel));
                    let (rm, rv) = (f32_at(rm, r.channel), f32_at(rv, r.channel));
                    self.launch(
                        &k.bn_relu_train,
                        per_channel(r.len),
                        &[&o, &mu, &is, &x, &g, &b, &rm, &rv, &mi, &scale, &mom, &unbias, &eps],
                    );
                });
            }
            Op::BnReluApply { out, inp, stats, bn, sel, m } => {
                let slice = sl(sel);
                let (o, st, x) = (buf(out), buf(stats), buf(inp));
                let (g, b) = (ten(bn.gamma), ten(bn.beta));
                Self::bn_check(p, slice, m, &[out, inp], &[(stats, 2)]);
                let (mi, scale) = (m as i64, slice.scale());
                Self::bn_runs(slice, |r| {
                    let (o, x) = (f32_at(o, r.at * m), f32_at(x, r.at * m));
                    let (mu, is) = (f32_at(st, r.at), f32_at(st, slice.width + r.at));
                    let (g, b) = (f32_at(g, r.channel), f32_at(b, r.channel));
                    self.launch(&k.bn_relu_apply, rows(r.len, m), &[&o, &x, &mu, &is, &g, &b, &mi, &scale]);
                });
            }
            Op::BnReluEval { out, inp, bn, channels, m } => {
                let (o, x) = (buf(out), buf(inp));
                let (g, b, rm, rv) = (ten(bn.gamma), ten(bn.beta), ten(bn.mean), ten(bn.var));
                Self::bn_check(p, Slice::full(channels), m, &[out, inp], &[]);
                let (mi, eps) = (m as i64, 1e-5f64);
                self.launch(&k.bn_relu_eval, rows(channels, m), &[&o, &x, &g, &b, &rm, &rv, &mi, &eps]);
            }
            Op::BnReluBackward { d_inp, d_gamma, d_beta, d_out, inp, stats, bn, sel, m, accumulate } => {
                let slice = sl(sel);
                let (dx, dg, db, dy) = (buf(d_inp), buf(d_gamma), buf(d_beta), buf(d_out));
                let (x, st) = (buf(inp), buf(stats));
                let (g, b) = (ten(bn.gamma), ten(bn.beta));
                let vecs = [(stats, 2), (d_gamma, 1), (d_beta, 1)];
                Self::bn_check(p, slice, m, &[d_inp, d_out, inp], &vecs);
                let (mi, scale, acc) = (m as i64, slice.scale(), accumulate as i32);
                Self::bn_runs(slice, |r| {
                    let (dx, dy, x) = (f32_at(dx, r.at * m), f32_at(dy, r.at * m), f32_at(x, r.at * m));
                    let (dg, db) = (f32_at(dg, r.at), f32_at(db, r.at));
                    let (mu, is) = (f32_at(st, r.at), f32_at(st, slice.width + r.at));
                    let (g, b) = (f32_at(g, r.channel), f32_at(b, r.channel));
                    self.launch(
                        &k.bn_relu_backward,
                        per_channel(r.len),
                        &[&dx, &dg, &db, &dy, &x, &mu, &is, &g, &b, &mi, &scale, &acc],
                    );
                });
            }
            Op::Add { out, inp } => {
                let len = p.locs[out].1;
                assert_eq!(len, p.locs[inp].1, "add lengths");
                let (o, i, l) = (buf(out), buf(inp), len as i64);
                self.launch(&k.add, grid(len), &[&o, &i, &l]);
            }
            Op::Pool { out, inp, c, n, hw } => {
                let (o, i, r, h) = (buf(out), buf(inp), (c * n) as i64, int(hw));
                self.launch(&k.avgpool_forward, grid(c * n * 32), &[&o, &i, &r, &h]);
            }
            Op::PoolBackward { d_inp, d_out, c, n, hw } => {
                let (dx, dy, r, h) = (buf(d_inp), buf(d_out), (c * n) as i64, int(hw));
                self.launch(&k.avgpool_backward, grid(c * n * hw), &[&dx, &dy, &r, &h]);
            }
            Op::Linear { out, inp, weight, bias, c, n, o } => {
                let (y, x, w, b) = (buf(out), buf(inp), ten(weight), ten(bias));
                let (ci, ni, oi) = (int(c), int(n), int(o));
                self.launch(&k.linear_forward, grid(n * o), &[&y, &x, &w, &b, &ci, &ni, &oi]);
            }
            Op::LinearBackward { d_inp, d_weight, d_bias, d_out, inp, weight, c, n, o } => {
                let (dx, dw, db, dy) = (buf(d_inp), buf(d_weight), buf(d_bias), buf(d_out));
                let (x, w) = (buf(inp), ten(weight));
                let (ci, ni, oi) = (int(c), int(n), int(o));
                self.launch(&k.linear_backward, grid(c * n + o * c + o), &[&dx, &dw, &db, &dy, &x, &w, &ci, &ni, &oi]);
            }
            Op::CrossEntropy { stats, d_logits, logits, labels, n, o } => {
                let (st, dl, l, y) = (buf(stats), d_logits.map_or(0, buf), buf(logits), buf(labels));
                let (ni, oi) = (int(n), int(o));
                let cfg = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
                self.launch(&k.cross_entropy, cfg, &[&st, &dl, &l, &y, &ni, &oi]);
            }
            Op::Sgd { param, momentum, grad, map } => {
                let (w, mb, g) = (ten(param), ten(momentum), buf(grad));
                let len = s.tensors[param].len();
                let (mode, start, width, channels, group) = match s.grad_map(map, ctx.starts) {
                    GradMap::Full => (0, 0, 1, 1, 1),
                    GradMap::Rows { slice, row_len } => (1, slice.start, slice.width, slice.channels, row_len),
                    GradMap::Cols { slice, group, .. } => (2, slice.start, slice.width, slice.channels, group),
                };
                let sp = &ctx.sgd;
                let l = len as i64;
                let (start, width, channels, group) = (int(start), int(width), int(channels), int(group));
                let nesterov = sp.nesterov as i32;
                self.launch(
                    &k.sgd,
                    grid(len),
                    &[
                        &w,
                        &mb,
                        &g,
                        &l,
                        &mode,
                        &start,
                        &width,
                        &channels,
                        &group,
                        &sp.lr,
                        &sp.momentum,
                        &sp.weight_decay,
                        &nesterov,
                    ],
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn math_parses_the_flag_values() {
        assert_eq!(Math::parse("tf32").unwrap(), Math::Tf32);
        assert_eq!(Math::parse("fp32").unwrap(), Math::Fp32);
        assert!(matches!(Math::parse("fp16"), Err(Error::Flag { .. })));
    }

    /// On a machine without the driver (this one while developing) every entry point says so
    /// with `Error::Device` instead of panicking; with a GPU, they succeed.
    #[test]
    fn entry_points_fail_cleanly_without_a_gpu() {
        if available() {
            assert!(device_memory().is_ok());
            return;
        }
        match CudaBackend::new(Math::Tf32) {
            Err(Error::Device(msg)) => assert!(!msg.is_empty()),
            Err(e) => panic!("wrong error kind: {e}"),
            Ok(_) => panic!("a backend without a device"),
        }
        assert!(matches!(device_memory(), Err(Error::Device(_))));
    }

    #[test]
    fn every_kernel_file_is_listed_and_has_kernels() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/backend/cuda/kernels");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".cu") && n != "common.cu")
            .collect();
        on_disk.sort();
        let mut listed: Vec<String> = KERNEL_FILES.iter().map(|(n, _)| n.to_string()).collect();
        listed.sort();
        assert_eq!(on_disk, listed);
        for (name, src) in KERNEL_FILES {
            assert!(src.contains("extern \"C\" __global__"), "{name}");
        }
    }
}
