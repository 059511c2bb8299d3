//! GEMM autotuning through cuBLASLt: experimental, off unless `SLICEOUT_GEMM_TUNE=1`, and not
//! yet measured on a card (`scripts/gpu-check.sh` benches it beside the default).
//!
//! Without it every product is `cublasGemmEx`, whose default heuristic picks one kernel per
//! shape. Our shapes are unusual (80 to 640 rows against 10^5 columns, or a 10^5-long inner
//! dimension for the weight gradients), and cuBLAS reaches a fraction of its square-product
//! rate on them (`scripts/torch/gemm_shapes.py`; figures in BENCHMARKS.md). With it, the first time a distinct product is queued
//! ([`GemmKey`]: transposes, sizes, strides, types, compute type, accumulation and the operands'
//! alignment) cuBLASLt's heuristic proposes up to [`CANDIDATES`] algorithms; each runs
//! [`TRIALS`] times on the product's own operands between two CUDA events, and the fastest is
//! kept for every later call with that key. A product that accumulates into its output has the
//! output's bytes copied aside before the trials and back after them (one that overwrites it is
//! overwritten again by the real call), so a step computes the same values tuned or not, up to
//! the chosen kernel's summation order, which the op checks' tolerances cover. Tuning happens on
//! the first step (a bench's or profile's warm-up step), and a product the heuristic has nothing
//! for falls back to `cublasGemmEx`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::c_void;

use cudarc::cublas::sys as cb;
use cudarc::cublaslt::{result as lt_result, sys as lt};

use super::{alloc, gemm_compute_type, ok, GemmCall, Gpu, CUBLAS_WORKSPACE};
use crate::ir::Dtype;

/// Algorithms asked of the heuristic for each product.
pub const CANDIDATES: usize = 8;
/// Timed runs of each candidate (after one untimed run).
pub const TRIALS: usize = 3;

/// What makes two calls the same problem for cuBLASLt: everything but the addresses, of which
/// only the alignment matters (an algorithm may need 16-byte operands).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GemmKey {
    pub transa: bool,
    pub transb: bool,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub lda: usize,
    pub ldb: usize,
    pub ldc: usize,
    pub ab_type: Dtype,
    pub c_type: Dtype,
    /// `cublasComputeType_t` as its number.
    pub compute: u32,
    pub accumulate: bool,
    /// Alignment in bytes (1 to 16) of `a`, `b` and `c`.
    pub align: [u32; 3],
}

impl GemmKey {
    pub fn new(g: &GemmCall, compute: cb::cublasComputeType_t) -> GemmKey {
        GemmKey {
            transa: g.transa,
            transb: g.transb,
            m: g.m,
            n: g.n,
            k: g.k,
            lda: g.lda,
            ldb: g.ldb,
            ldc: g.ldc,
            ab_type: g.ab_type,
            c_type: g.c_type,
            compute: compute as u32,
            accumulate: g.beta != 0.0,
            align: [alignment(g.a), alignment(g.b), alignment(g.c)],
        }
    }

    /// Bytes from `c` to the last element of the `m x n` output (leading dimension `ldc`):
    /// what a trial overwrites, and so what is copied aside.
    pub fn output_bytes(&self) -> usize {
        ((self.n - 1) * self.ldc + self.m) * self.c_type.size()
    }
}

/// The largest power of two, at most 16, that divides `addr`.
pub fn alignment(addr: u64) -> u32 {
    1 << (addr | 16).trailing_zeros()
}

/// Rows and columns of an operand as stored (column-major) when the product uses it as
/// `rows x cols`, transposed or not.
pub fn stored(trans: bool, rows: usize, cols: usize) -> (u64, u64) {
    if trans {
        (cols as u64, rows as u64)
    } else {
        (rows as u64, cols as u64)
    }
}

/// cuBLASLt's name for an element type.
fn lt_type(d: Dtype) -> lt::cudaDataType {
    match d {
        Dtype::F32 => lt::cudaDataType::CUDA_R_32F,
        Dtype::Bf16 => lt::cudaDataType::CUDA_R_16BF,
    }
}

/// cuBLASLt's name for the compute type `gemm_compute_type` gives cuBLAS.
fn lt_compute(c: cb::cublasComputeType_t) -> lt::cublasComputeType_t {
    match c {
        cb::cublasComputeType_t::CUBLAS_COMPUTE_32F => lt::cublasComputeType_t::CUBLAS_COMPUTE_32F,
        cb::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32 => lt::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32,
        other => unreachable!("no GEMM of ours computes in {other:?}"),
    }
}

/// A tuned product: its descriptors and the algorithm chosen.
struct Plan {
    desc: lt::cublasLtMatmulDesc_t,
    /// Layouts of `a`, `b` and `c` (also the output `d`, which is `c`).
    layouts: [lt::cublasLtMatrixLayout_t; 3],
    algo: lt::cublasLtMatmulAlgo_t,
}

impl Plan {
    /// Destroys the descriptors.
    ///
    /// # Safety
    /// Once, and with no product queued that still needs them.
    unsafe fn destroy(&self) {
        let _ = lt_result::destroy_matmul_desc(self.desc);
        for &l in &self.layouts {
            let _ = lt_result::destroy_matrix_layout(l);
        }
    }
}

/// The tuner: a cuBLASLt handle and the plan of every key seen (`None`: use `cublasGemmEx`).
pub struct Tuner {
    handle: lt::cublasLtHandle_t,
    plans: RefCell<HashMap<GemmKey, Option<Plan>>>,
}

impl Drop for Tuner {
    fn drop(&mut self) {
        // One line on stderr saying what tuning did, for the logs of an experiment.
        let plans = self.plans.get_mut();
        if !plans.is_empty() {
            let tuned = plans.values().filter(|p| p.is_some()).count();
            errln!(
                "GEMM tuner: {tuned} distinct products ran through cuBLASLt, {} through cublasGemmEx",
                plans.len() - tuned
            );
        }
        // SAFETY: every descriptor and the handle were made by us and are destroyed once.
        unsafe {
            for plan in self.plans.get_mut().drain().filter_map(|(_, p)| p) {
                plan.destroy();
            }
            let _ = lt_result::destroy_handle(self.handle);
        }
    }
}

impl Tuner {
    /// A tuner when `SLICEOUT_GEMM_TUNE=1` and cuBLASLt starts; `None` otherwise.
    pub fn from_env() -> Option<Tuner> {
        if !std::env::var("SLICEOUT_GEMM_TUNE").is_ok_and(|v| v == "1") {
            return None;
        }
        let handle = super::libs::catch(lt_result::create_handle)?.ok()?;
        Some(Tuner { handle, plans: RefCell::new(HashMap::new()) })
    }

    /// Queues `g` through cuBLASLt with its tuned algorithm (tuning it first if it is new) and
    /// returns true, or returns false for a product to run through `cublasGemmEx`.
    pub fn gemm(&self, gpu: &Gpu, g: &GemmCall) -> bool {
        let compute = gemm_compute_type(g.ab_type, gpu.math);
        let key = GemmKey::new(g, compute);
        if !self.plans.borrow().contains_key(&key) {
            let plan = self.tune(gpu, g, &key, compute);
            self.plans.borrow_mut().insert(key, plan);
        }
        let plans = self.plans.borrow();
        let Some(plan) = plans.get(&key).and_then(|p| p.as_ref()) else { return false };
        gpu.queue(g.label, || ok(self.matmul(gpu, plan, &plan.algo, g), "cublasLtMatmul"));
        true
    }

    fn matmul(
        &self,
        gpu: &Gpu,
        plan: &Plan,
        algo: &lt::cublasLtMatmulAlgo_t,
        g: &GemmCall,
    ) -> std::result::Result<(), lt_result::CublasError> {
        let alpha = 1.0f32;
        let p = |a: u64| a as *mut c_void;
        let [la, lb, lc] = plan.layouts;
        // SAFETY: the descriptors are alive (owned by `self`), the views lie inside the
        // operands (as for cublasGemmEx), the workspace is the cuBLAS workspace, used on the
        // same stream, one product at a time.
        unsafe {
            lt_result::matmul(
                self.handle,
                plan.desc,
                &alpha as *const f32 as *const c_void,
                &g.beta as *const f32 as *const c_void,
                p(g.a),
                la,
                p(g.b),
                lb,
                p(g.c),
                lc,
                p(g.c),
                lc,
                algo,
                p(gpu.workspace.ptr),
                CUBLAS_WORKSPACE,
                gpu.stream.cu_stream() as lt::cudaStream_t,
            )
        }
    }

    /// The descriptors of `g` and the fastest of the heuristic's algorithms, timed on `g`'s
    /// operands with its output copied aside and back; `None` when cuBLASLt has none.
    fn tune(&self, gpu: &Gpu, g: &GemmCall, key: &GemmKey, compute: cb::cublasComputeType_t) -> Option<Plan> {
        let plan = self.describe(g, key, compute)?;
        // SAFETY: plain C structs, all-zero a valid value (state 0 is CUBLAS_STATUS_SUCCESS).
        let mut found: [lt::cublasLtMatmulHeuristicResult_t; CANDIDATES] = unsafe { std::mem::zeroed() };
        let mut count = 0;
        // SAFETY: the descriptors were just made; `found` holds CANDIDATES results.
        let status = unsafe {
            let pref = lt_result::create_matmul_pref().ok()?;
            // The workspace limit is a uint64_t, the alignments uint32_t (cuBLASLt checks sizes).
            use lt::cublasLtMatmulPreferenceAttributes_t as P;
            let ws = CUBLAS_WORKSPACE as u64;
            let ws = lt_result::set_matmul_pref_attribute(
                pref,
                P::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                &ws as *const u64 as *const c_void,
                8,
            );
            let set = |attr, value: u32| {
                lt_result::set_matmul_pref_attribute(pref, attr, &value as *const u32 as *const c_void, 4)
            };
            let [a, b, c] = key.align;
            let aligned = [
                set(P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, a),
                set(P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, b),
                set(P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, c),
                set(P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, c),
            ];
            let [la, lb, lc] = plan.layouts;
            let status = lt::cublasLtMatmulAlgoGetHeuristic(
                self.handle,
                plan.desc,
                la,
                lb,
                lc,
                lc,
                pref,
                CANDIDATES as i32,
                found.as_mut_ptr(),
                &mut count,
            );
            let _ = lt_result::destroy_matmul_pref(pref);
            (ws.is_ok() && aligned.iter().all(|r| r.is_ok())).then_some(status)
        };
        let usable: Vec<lt::cublasLtMatmulAlgo_t> = match status {
            Some(lt::cublasStatus_t::CUBLAS_STATUS_SUCCESS) => found[..count.max(0) as usize]
                .iter()
                .filter(|r| r.state == lt::cublasStatus_t::CUBLAS_STATUS_SUCCESS && r.workspaceSize <= CUBLAS_WORKSPACE)
                .map(|r| r.algo)
                .collect(),
            _ => vec![],
        };
        let best = match usable.len() {
            0 => None,
            1 => Some(usable[0]),
            _ => self.fastest(gpu, g, key, &plan, &usable),
        };
        match best {
            Some(algo) => Some(Plan { algo, ..plan }),
            None => {
                // SAFETY: made by `describe`, and the trials that used it have finished.
                unsafe { plan.destroy() };
                None
            }
        }
    }

    /// The matmul descriptor (compute type, f32 scalars, transposes) and the three layouts of
    /// `g`, with a placeholder algorithm.
    fn describe(&self, g: &GemmCall, key: &GemmKey, compute: cb::cublasComputeType_t) -> Option<Plan> {
        let desc = lt_result::create_matmul_desc(lt_compute(compute), lt::cudaDataType::CUDA_R_32F).ok()?;
        let op = |t: bool| if t { 1i32 } else { 0i32 }; // CUBLAS_OP_T, CUBLAS_OP_N
        use lt::cublasLtMatmulDescAttributes_t as D;
        // SAFETY: `desc` was just made; the values are i32, as the attributes want.
        unsafe {
            for (attr, t) in [(D::CUBLASLT_MATMUL_DESC_TRANSA, g.transa), (D::CUBLASLT_MATMUL_DESC_TRANSB, g.transb)] {
                let v = op(t);
                lt_result::set_matmul_desc_attribute(desc, attr, &v as *const i32 as *const c_void, 4).ok()?;
            }
        }
        let (ar, ac) = stored(g.transa, g.m, g.k);
        let (br, bc) = stored(g.transb, g.k, g.n);
        let layout =
            |d: Dtype, r: u64, c: u64, ld: usize| lt_result::create_matrix_layout(lt_type(d), r, c, ld as i64).ok();
        let layouts = [
            layout(key.ab_type, ar, ac, g.lda)?,
            layout(key.ab_type, br, bc, g.ldb)?,
            layout(key.c_type, g.m as u64, g.n as u64, g.ldc)?,
        ];
        // SAFETY: a plain C struct (opaque words), replaced before any use.
        let algo = unsafe { std::mem::zeroed() };
        Some(Plan { desc, layouts, algo })
    }

    /// Times each of `algos` on `g`'s operands and returns the fastest; the output is restored
    /// afterwards. `None` when no trial ran.
    fn fastest(
        &self,
        gpu: &Gpu,
        g: &GemmCall,
        key: &GemmKey,
        plan: &Plan,
        algos: &[lt::cublasLtMatmulAlgo_t],
    ) -> Option<lt::cublasLtMatmulAlgo_t> {
        // A product that overwrites its output needs no copy: the real call writes every element
        // a trial did. One that accumulates gets its output's extent copied aside and back.
        let bytes = key.output_bytes();
        let saved = match key.accumulate {
            true => Some(alloc::<u8>(&gpu.stream, bytes, "the GEMM tuner's copy of an output").ok()?),
            false => None,
        };
        let stream = gpu.stream.cu_stream();
        // SAFETY: both ranges lie in live allocations of at least `bytes` (the output view's
        // extent; the copy made for it); same stream as every other piece of work.
        let copy = |dst: u64, src: u64| unsafe { cudarc::driver::result::memcpy_dtod_async(dst, src, bytes, stream) };
        if let Some(s) = &saved {
            copy(s.ptr, g.c).ok()?;
        }
        let event = || gpu.ctx.new_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT)).ok();
        let (start, end) = (event()?, event()?);
        let mut best: Option<(f32, lt::cublasLtMatmulAlgo_t)> = None;
        for algo in algos {
            if self.matmul(gpu, plan, algo, g).is_err() {
                continue;
            }
            let timed = start.record(&gpu.stream).is_ok()
                && (0..TRIALS).all(|_| self.matmul(gpu, plan, algo, g).is_ok())
                && end.record(&gpu.stream).is_ok();
            if let (true, Ok(ms)) = (timed, start.elapsed_ms(&end)) {
                if best.is_none_or(|(b, _)| ms < b) {
                    best = Some((ms, *algo));
                }
            }
        }
        if let Some(s) = &saved {
            ok(copy(g.c, s.ptr), "restoring a GEMM's output after tuning");
        }
        ok(gpu.stream.synchronize(), "tuning a GEMM");
        best.map(|(_, algo)| algo)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(a: u64, b: u64, c: u64, beta: f32) -> GemmCall {
        GemmCall {
            label: "gemm: forward",
            transa: true,
            transb: false,
            m: 81,
            n: 24,
            k: 180,
            a,
            lda: 180,
            b,
            ldb: 180,
            c,
            ldc: 13 * 81,
            beta,
            ab_type: Dtype::F32,
            c_type: Dtype::Bf16,
            batch: 1,
            strides: [0; 3],
        }
    }

    #[test]
    fn alignment_is_the_largest_power_of_two_up_to_16_dividing_the_address() {
        assert_eq!(alignment(1 << 40), 16);
        assert_eq!(alignment((1 << 40) + 4), 4);
        assert_eq!(alignment((1 << 40) + 2), 2);
        assert_eq!(alignment((1 << 40) + 24), 8);
        assert_eq!(alignment(3), 1);
    }

    /// Calls differing only in where their operands are (same alignment) share a key; a
    /// different alignment, accumulation or compute type makes another.
    #[test]
    fn keys_ignore_addresses_but_not_alignment_accumulation_or_math() {
        let tf32 = cb::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32;
        let base = GemmKey::new(&call(1 << 40, 1 << 41, 1 << 42, 0.0), tf32);
        assert_eq!(base, GemmKey::new(&call((1 << 40) + 4096, 1 << 41, (1 << 42) + 256, 0.0), tf32));
        assert_ne!(base, GemmKey::new(&call((1 << 40) + 4, 1 << 41, 1 << 42, 0.0), tf32));
        assert_ne!(base, GemmKey::new(&call(1 << 40, 1 << 41, 1 << 42, 1.0), tf32));
        assert_ne!(
            base,
            GemmKey::new(&call(1 << 40, 1 << 41, 1 << 42, 0.0), cb::cublasComputeType_t::CUBLAS_COMPUTE_32F)
        );
        assert_eq!(base.align, [16, 16, 16]);
    }

    /// The output's extent: the last column starts (n-1)*ldc elements in and holds m; the
    /// stored shapes of transposed operands swap.
    #[test]
    fn output_extent_and_stored_shapes() {
        let k = GemmKey::new(&call(0, 0, 0, 0.0), cb::cublasComputeType_t::CUBLAS_COMPUTE_32F);
        assert_eq!(k.output_bytes(), (23 * 13 * 81 + 81) * 2);
        assert_eq!(stored(true, 81, 180), (180, 81));
        assert_eq!(stored(false, 180, 24), (180, 24));
    }

    /// Off unless asked for, and without a GPU it never gets as far as a handle.
    #[test]
    fn the_tuner_is_off_by_default() {
        if std::env::var("SLICEOUT_GEMM_TUNE").is_err() {
            assert!(Tuner::from_env().is_none());
        }
    }
}
