//! The CUDA runtime the ops launch on: one device, one stream, one cuBLAS handle, and the NVRTC
//! kernels of every op folder, all through `cudarc` with every CUDA library opened at run time,
//! so the binary builds and runs where no CUDA is installed (every entry point then returns
//! `Error::Device`; nothing here panics for want of a driver).
//!
//! This layer knows nothing of schedules or ops: it compiles the kernel sources it is handed
//! (each op folder ships its own `.cu`, after [`COMMON`]), resolves the table of kernel names it
//! is handed once, launches kernels by their handle in that table ([`KernelId`]), runs
//! `cublasGemmEx` on raw device addresses and moves bytes. The ops (`ops/<op>/cuda.rs`) turn
//! their buffers into addresses and call it; `backend::cuda` owns the memory regions.
//!
//! Work is queued on one stream and never waits for the device; only `dtoh` and `synchronize`
//! do. With `SLICEOUT_CUDA_SYNC=1` every launch and GEMM is followed by a synchronisation, so an
//! asynchronous fault is reported against the kernel that caused it. A failing CUDA call inside
//! a step cannot be returned through the `Backend` trait: it panics with the call and the
//! driver's error.
//!
//! By job: `nvrtc` compiles the kernel sources, `launch` holds kernel handles and their
//! resolution, launch geometries, arguments and the [`Launcher`] the ops queue work through, `gemm` the cuBLAS products, `recorder` the
//! launcher that only writes work down, `libs` finds the CUDA libraries and `tune` autotunes
//! GEMMs; this file is the device itself ([`Gpu`]).

mod gemm;
mod launch;
pub mod libs;
mod nvrtc;
mod recorder;
pub mod tune;

use std::sync::Arc;

use cudarc::cublas::sys as cb;
use cudarc::driver::{
    result as dr, CudaContext, CudaEvent, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, LaunchConfig,
};
use cudarc::nvrtc::Ptx;

use crate::error::{Error, Result};
use crate::ir::mib;
pub use crate::ir::Math;

pub use gemm::{data_type, gemm_compute_type, GemmCall};
pub use launch::{
    arg_pointers, elementwise_rows, f32_at, grid, int, one_block, reduction, reduction_parts, reduction_regions,
    resolve, rows, Arg, FastDiv, KernelId, Launcher, StorageKernel, MAX_ARGS, REDUCTION_CHANNELS, REDUCTION_PARTS,
    REDUCTION_SCRATCH,
};
use nvrtc::cached_images;
pub use nvrtc::{
    compile, compile_all, kernel_names, kernel_params, kernel_source, nvrtc_options, Image, Images, KernelFile, COMMON,
};
pub use recorder::Recorder;

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

/// Device memory the runtime takes besides the plan and the context: the cuBLAS workspace and
/// the reductions' scratch.
pub const WORKSPACES: usize = CUBLAS_WORKSPACE + REDUCTION_SCRATCH;

fn ok<T>(r: std::result::Result<T, impl std::fmt::Debug>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("CUDA: {what} failed: {e:?}"),
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

/// One GPU: context, stream, cuBLAS handle with its workspace, and the loaded kernels.
pub struct Gpu {
    math: Math,
    device_name: String,
    arch: String,
    /// The kernel table's functions, by [`KernelId`] index (each holds its module).
    kernels: Vec<CudaFunction>,
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
    /// Opens device 0, compiles `files` (once per process), loads them and resolves the kernel
    /// table `names` (the [`KernelId`]s launches pass index it), makes a cuBLAS handle with its
    /// workspace. `Error::Device` when there is no usable GPU, or a name of the table is in no
    /// file.
    pub fn new(math: Math, files: &[KernelFile], names: &[&'static str]) -> Result<Gpu> {
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
        let images = cached_images(&cc, files)?;
        let arch = format!("sm_{cc} {}", images.first().map_or("", |(_, i)| i.kind()));
        let mut modules: Vec<(&str, Vec<&str>, Arc<CudaModule>)> = vec![];
        for ((name, src), (_, image)) in files.iter().zip(images) {
            let what = format!("loading the {} of {name}", image.kind());
            let module = match image {
                Image::Cubin(bytes) => ctx.load_module(Ptx::from_binary(bytes)),
                Image::Ptx(text) => ctx.load_module(Ptx::from_src(text)),
            }
            .map_err(|e| dev_err(&what, e))?;
            modules.push((name, kernel_names(src), module));
        }
        let found = resolve(names, |k| {
            let (file, _, module) = modules.iter().find(|(_, ks, _)| ks.contains(&k))?;
            Some(module.load_function(k).map_err(|e| dev_err(&format!("loading kernel {k} of {file}"), e)))
        })?;
        let kernels = found.into_iter().collect::<Result<Vec<_>>>()?;
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
    /// Indexes the table resolved by [`Gpu::new`] and hands the driver a stack array of pointers
    /// to the arguments: no lookup, no allocation. The context is bound by whoever queues the
    /// op (`backend::cuda`), once per op rather than per launch.
    fn launch(&self, kernel: KernelId, cfg: LaunchConfig, args: &[&dyn Arg]) {
        let f = self.kernels[kernel.index()].cu_function();
        let mut slots = [std::ptr::null_mut(); MAX_ARGS];
        let params = arg_pointers(args, &mut slots);
        let (grid, block, shared) = (cfg.grid_dim, cfg.block_dim, cfg.shared_mem_bytes);
        self.queue(kernel.name(), || {
            // SAFETY: argument lists match the kernels' signatures (ops/*/*.cu, checked by the
            // recorded steps' tests); device pointers are inside our allocations (the ops check
            // lengths against the plan before launching); `args` outlives the call.
            let launched = unsafe { dr::launch_kernel(f, grid, block, shared, self.stream.cu_stream(), params) };
            if let Err(e) = launched {
                panic!("CUDA: launching kernel {} failed: {e:?}", kernel.name());
            }
        });
    }

    fn gemm(&self, g: &GemmCall) {
        self.cublas_gemm(g);
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
        match Gpu::new(Math::Tf32, &[], &[]) {
            Err(Error::Device(msg)) => assert!(!msg.is_empty()),
            Err(e) => panic!("wrong error kind: {e}"),
            Ok(_) => panic!("a GPU without a device"),
        }
        assert!(matches!(device_memory(), Err(Error::Device(_))));
    }
}
