//! The ops of a WRN training step, one folder each. A folder holds the op's contract (a plain
//! struct naming the buffers it reads and writes, the persistent tensors it uses and its
//! dimensions, with [`Kernel`] implemented on it), its CPU kernel (`cpu.rs`, the numerical
//! reference, following PyTorch's semantics), its CUDA launch (`cuda.rs`) and kernel source
//! (`<op>.cu`), and its tests.
//!
//! [`Op`] is the closed set a schedule is made of; [`Op::run_cpu`] and [`Op::run_cuda`] are the
//! two backends' whole dispatch. Adding an op: a folder, a variant, and a line in `each_op!`.
//!
//! Activations are channel-major `(C, N, H, W)`: one channel is one contiguous row, which is
//! what the CPU kernels parallelise over (with rayon). No kernel allocates: they run inside a
//! training step over a static arena.
//!
//! A CPU kernel is written once, generic over the element type it loads and stores
//! (`ir::Elem`: f32, or bf16 in a bf16 program): loads widen to f32, arithmetic is f32 (f64
//! where the f32 kernels already sum in f64), and each stored value is rounded to nearest even
//! once. Parameters, momentum, BN statistics, weight gradients, the head after the pool and
//! the loss are f32 in every program.
//!
//! A CUDA kernel is written once in the same way: a C++ template over the storage type (`float`
//! or `common.cu`'s `bf16`, loads through `widen`, stores through `narrow<T>`, which rounds to
//! nearest even as `ir::elem` does), with one `extern "C"` entry point per type: `k` for f32
//! storage, `k_bf16` for bf16. An op's `cuda.rs` picks the entry point from its buffers' element
//! types (`DeviceView::storage`, then `StorageKernel::of` on its entry in [`kernels`], the
//! table of every kernel). The f32-only ops (linear, loss, SGD) have one entry point each.

pub mod add;
pub mod batchnorm;
pub mod conv2d;
pub mod gather;
pub mod kernels;
pub mod linear;
pub mod loss;
pub mod memory;
pub mod pool;
pub mod sgd;

pub use add::Add;
pub use batchnorm::{BnReluApply, BnReluBackward, BnReluEval, BnReluTrain};
pub use conv2d::{BnPrologue, Conv, ConvAlgo, ConvBackward, GemmWeight};
pub use linear::{Linear, LinearBackward};
pub use loss::CrossEntropy;
pub use memory::{DeviceView, HostArena, HostView, Tables};
pub use pool::{Pool, PoolBackward};
pub use sgd::{Sgd, SgdGroup, SgdParams};

use crate::gpu::KernelFile;
use crate::ir::{Bf16, BufId, Dtype, Elem, SliceSpec, TensorId};

/// Run-time values of one step: the slice starts drawn for it (one per block), the optimizer
/// settings (the learning rate follows its schedule) and the weight of this step's batch
/// statistics in BN's running statistics.
#[derive(Clone, Copy, Debug)]
pub struct StepCtx<'a> {
    pub starts: &'a [usize],
    pub sgd: SgdParams,
    /// PyTorch's BN momentum: 0.1 in training; `1/k` for the `k`-th batch of a recalibration,
    /// which makes the running statistics the plain average over the batches.
    pub bn_momentum: f64,
}

impl<'a> StepCtx<'a> {
    /// A training step's values (BN momentum 0.1).
    pub fn new(starts: &'a [usize], sgd: SgdParams) -> StepCtx<'a> {
        StepCtx { starts, sgd, bn_momentum: batchnorm::BN_MOMENTUM as f64 }
    }
}

/// What every op provides.
pub trait Kernel {
    /// (buffers read, buffers written). A buffer both read and written (accumulation) is listed
    /// as written only.
    fn buffers(&self) -> (Vec<BufId>, Vec<BufId>);
    /// Persistent tensors the op changes (parameters and momentum in SGD, BN running
    /// statistics in training); none for most ops.
    fn updates(&self) -> Vec<TensorId> {
        vec![]
    }
    /// Multiply-accumulates, given the slice widths (0 for element-wise ops).
    fn macs(&self, _slices: &[SliceSpec]) -> usize {
        0
    }
    /// Runs on the CPU, with `T` the program's storage type: what its activations, their
    /// gradients and workspaces hold (f32, or bf16 in a bf16 program). Every other buffer is
    /// f32, and every kernel computes in f32 whatever it stores.
    fn run_cpu<T: Elem>(&self, m: &HostView);
    /// Queues on the GPU.
    fn run_cuda(&self, d: &DeviceView);
}

/// One op of a schedule.
#[derive(Clone, Debug)]
pub enum Op {
    Conv(Conv),
    ConvBackward(ConvBackward),
    BnReluTrain(BnReluTrain),
    BnReluApply(BnReluApply),
    BnReluEval(BnReluEval),
    BnReluBackward(BnReluBackward),
    Add(Add),
    Pool(Pool),
    PoolBackward(PoolBackward),
    Linear(Linear),
    LinearBackward(LinearBackward),
    CrossEntropy(CrossEntropy),
    Sgd(Sgd),
    SgdGroup(SgdGroup),
}

/// `$body` with `$o` bound to the op inside whichever variant `$op` is.
macro_rules! each_op {
    ($op:expr, $o:ident => $body:expr) => {
        match $op {
            Op::Conv($o) => $body,
            Op::ConvBackward($o) => $body,
            Op::BnReluTrain($o) => $body,
            Op::BnReluApply($o) => $body,
            Op::BnReluEval($o) => $body,
            Op::BnReluBackward($o) => $body,
            Op::Add($o) => $body,
            Op::Pool($o) => $body,
            Op::PoolBackward($o) => $body,
            Op::Linear($o) => $body,
            Op::LinearBackward($o) => $body,
            Op::CrossEntropy($o) => $body,
            Op::Sgd($o) => $body,
            Op::SgdGroup($o) => $body,
        }
    };
}

impl Op {
    /// The op's kind, e.g. `Conv`.
    pub fn kind(&self) -> &'static str {
        each_op!(self, o => std::any::type_name_of_val(o).rsplit("::").next().unwrap_or("op"))
    }

    pub fn buffers(&self) -> (Vec<BufId>, Vec<BufId>) {
        each_op!(self, o => o.buffers())
    }

    pub fn updates(&self) -> Vec<TensorId> {
        each_op!(self, o => o.updates())
    }

    pub fn macs(&self, slices: &[SliceSpec]) -> usize {
        each_op!(self, o => o.macs(slices))
    }

    pub fn run_cpu(&self, m: &HostView) {
        match m.storage() {
            Dtype::F32 => each_op!(self, o => o.run_cpu::<f32>(m)),
            Dtype::Bf16 => each_op!(self, o => o.run_cpu::<Bf16>(m)),
        }
    }

    pub fn run_cuda(&self, d: &DeviceView) {
        each_op!(self, o => o.run_cuda(d))
    }

    /// The weight copy the op reads that is kept between steps (`GemmWeight::Kept`), if any.
    pub fn kept_copy(&self) -> Option<BufId> {
        match self {
            Op::Conv(c) => c.algo.kept_copy(),
            _ => None,
        }
    }

    /// The SGD updates the op makes: one for `Sgd`, the group's for `SgdGroup`, none otherwise.
    pub fn sgd_updates(&self) -> &[Sgd] {
        match self {
            Op::Sgd(u) => std::slice::from_ref(u),
            Op::SgdGroup(g) => &g.updates,
            _ => &[],
        }
    }
}

/// Every op folder's CUDA source, compiled together when a GPU backend starts.
pub const KERNEL_FILES: &[KernelFile] = &[
    ("conv2d.cu", include_str!("conv2d/conv2d.cu")),
    ("winograd.cu", include_str!("conv2d/winograd.cu")),
    ("batchnorm.cu", include_str!("batchnorm/batchnorm.cu")),
    ("add.cu", include_str!("add/add.cu")),
    ("pool.cu", include_str!("pool/pool.cu")),
    ("linear.cu", include_str!("linear/linear.cu")),
    ("loss.cu", include_str!("loss/loss.cu")),
    ("sgd.cu", include_str!("sgd/sgd.cu")),
    ("gather.cu", include_str!("gather/gather.cu")),
];

/// Smallest amount of element work worth handing to another rayon worker; below it the
/// fork/join overhead costs more than it saves.
pub(crate) const PAR_MIN_ELEMS: usize = 1 << 14;

/// Minimum number of `row_len`-long rows one rayon task should take.
pub(crate) fn min_rows(row_len: usize) -> usize {
    (PAR_MIN_ELEMS / row_len.max(1)).max(1)
}

/// Shared helpers of the ops' tests: random data and gradient comparison.
#[cfg(test)]
pub(crate) mod testutil {
    use crate::ir::{Bf16, Elem};
    use crate::rng::Rng;

    pub fn normals(rng: &mut Rng, len: usize) -> Vec<f32> {
        (0..len).map(|_| rng.normal()).collect()
    }

    /// Normals rounded to bf16, as f32: values both precisions hold exactly, so a bf16 kernel
    /// and its f32 twin start from the same inputs.
    pub fn bf16_normals(rng: &mut Rng, len: usize) -> Vec<f32> {
        normals(rng, len).into_iter().map(|x| Bf16::from_f32(x).to_f32()).collect()
    }

    pub fn to_bf16(v: &[f32]) -> Vec<Bf16> {
        v.iter().map(|&x| Bf16::from_f32(x)).collect()
    }

    pub fn widen(v: &[Bf16]) -> Vec<f32> {
        v.iter().map(|x| x.to_f32()).collect()
    }

    /// Panics unless `got` is `want` rounded to bf16 once, element by element: a bf16 kernel
    /// whose f32 arithmetic is its twin's, from the same inputs, differs by its stores alone
    /// (at most u = 2^-8 relative each).
    pub fn assert_rounded(what: &str, got: &[Bf16], want: &[f32]) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (g, &w)) in got.iter().zip(want).enumerate() {
            assert_eq!(*g, Bf16::from_f32(w), "{what}[{i}]: bf16 {g:?} is not f32 {w} rounded");
        }
    }

    pub fn to_f64(v: &[f32]) -> Vec<f64> {
        v.iter().map(|&x| x as f64).collect()
    }

    /// Relative error with a floor, so that entries near zero are compared absolutely.
    pub fn rel_err(a: f64, b: f64, floor: f64) -> f64 {
        (a - b).abs() / a.abs().max(b.abs()).max(floor)
    }

    /// Central-difference gradient of `f` at `x` in coordinate `i`.
    pub fn central_diff(f: &mut impl FnMut(&[f64]) -> f64, x: &[f64], i: usize, eps: f64) -> f64 {
        let mut xp = x.to_vec();
        xp[i] += eps;
        let fp = f(&xp);
        xp[i] = x[i] - eps;
        let fm = f(&xp);
        (fp - fm) / (2.0 * eps)
    }

    /// Checks `analytic` against central differences of the f64 function `f` in every
    /// coordinate, panicking with the worst entry when one is off by more than `tol`.
    pub fn check_grad(what: &str, mut f: impl FnMut(&[f64]) -> f64, x: &[f64], analytic: &[f32], eps: f64, tol: f64) {
        assert_eq!(x.len(), analytic.len(), "{what}: length");
        for (i, &a) in analytic.iter().enumerate() {
            let fd = central_diff(&mut f, x, i, eps);
            let err = rel_err(fd, a as f64, 1e-3);
            assert!(err < tol, "{what}[{i}]: analytic {a} vs finite difference {fd} (rel err {err})");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `.cu` file in an op folder is compiled, and each holds at least one kernel.
    #[test]
    fn every_kernel_file_is_listed_and_has_kernels() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/ops");
        let mut on_disk = vec![];
        for op in std::fs::read_dir(&dir).unwrap() {
            let op = op.unwrap().path();
            if op.is_dir() {
                for f in std::fs::read_dir(&op).unwrap() {
                    let name = f.unwrap().file_name().to_string_lossy().into_owned();
                    if name.ends_with(".cu") {
                        on_disk.push(name);
                    }
                }
            }
        }
        on_disk.sort();
        let mut listed: Vec<String> = KERNEL_FILES.iter().map(|(n, _)| n.to_string()).collect();
        listed.sort();
        assert_eq!(on_disk, listed);
        for (name, src) in KERNEL_FILES {
            assert!(!crate::gpu::kernel_names(src).is_empty(), "{name}");
        }
    }

    /// The kernels' naming convention: every kernel that touches a buffer a bf16 program stores
    /// as bf16 has an f32 entry point `k` and a bf16 one `k_bf16` in the same file, and the
    /// kernels of the f32-only ops (the head, the loss, SGD) have none.
    #[test]
    fn every_storage_kernel_has_a_bf16_twin_beside_it() {
        let mut bf16 = vec![];
        for (file, src) in KERNEL_FILES {
            let names = crate::gpu::kernel_names(src);
            for k in &names {
                if let Some(base) = k.strip_suffix("_bf16") {
                    assert!(names.contains(&base), "{file}: {k} without {base}");
                    bf16.push(base);
                }
            }
        }
        bf16.sort();
        let want = [
            "add",
            "avgpool_backward",
            "avgpool_forward",
            "bn_backward_sums",
            "bn_relu_apply",
            "bn_relu_backward",
            "bn_relu_eval",
            "bn_stats",
            "col2im",
            "gather_batch",
            "im2col",
            "im2col_bn_relu",
            "weight_flip",
            "weight_slice",
        ];
        assert_eq!(bf16, want);
        assert_eq!(kernels::IM2COL.of(Dtype::Bf16).name(), "im2col_bf16");
        assert_eq!(kernels::IM2COL.of(Dtype::F32).name(), "im2col");
    }

    #[test]
    fn op_kind_names_the_variant() {
        let op = Op::Add(Add { out: 1, inp: 0 });
        assert_eq!(op.kind(), "Add");
    }
}
