//! GEMMs on the GPU: the call ops describe, cuBLAS's names for its types and math, and the
//! `cublasGemmEx` (or strided batch) that runs it unless the tuner takes it.

use cudarc::cublas::sys as cb;

use super::{int, ok, Gpu, Math};
use crate::ir::Dtype;

/// cuBLAS's compute type for the GEMM math.
fn compute_type(math: Math) -> cb::cublasComputeType_t {
    match math {
        Math::Tf32 => cb::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32,
        Math::Fp32 => cb::cublasComputeType_t::CUBLAS_COMPUTE_32F,
    }
}

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

impl Gpu {
    /// Queues `g` ([`Launcher::gemm`](super::Launcher::gemm)): through the tuner where it has
    /// tuned a single product, else through cuBLAS, in the GPU's math (f32 operands) or plain f32
    /// accumulation (bf16 operands); the scalars are f32 either way, as `CUBLAS_COMPUTE_32F*`
    /// wants.
    pub(super) fn cublas_gemm(&self, g: &GemmCall) {
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
}
