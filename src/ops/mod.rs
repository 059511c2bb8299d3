//! CPU reference ops of the WRN trainer: convolution as im2col + GEMM, batch norm fused with
//! ReLU and SliceOut's scale, global average pooling, the linear classifier, softmax cross-entropy
//! and the slice-aware SGD update. They are the numerical reference the CUDA ops are checked
//! against, so they follow PyTorch's semantics exactly. Activations are channel-major
//! `(C, N, H, W)`: one channel is one contiguous row, which is what the ops parallelise over
//! (with rayon). None of them allocates: they run inside a training step over a static arena.

pub mod batchnorm;
pub mod conv2d;
pub mod gemm;
pub mod linear;
pub mod loss;
pub mod pool;
pub mod sgd;

/// Smallest amount of element work worth handing to another rayon worker; below it the
/// fork/join overhead costs more than it saves.
pub(crate) const PAR_MIN_ELEMS: usize = 1 << 14;

/// Minimum number of `row_len`-long rows one rayon task should take.
pub(crate) fn min_rows(row_len: usize) -> usize {
    (PAR_MIN_ELEMS / row_len.max(1)).max(1)
}

/// `out += inp`, element-wise (the identity shortcut).
pub fn add(out: &mut [f32], inp: &[f32]) {
    use rayon::prelude::*;
    assert_eq!(out.len(), inp.len());
    out.par_chunks_mut(PAR_MIN_ELEMS)
        .zip(inp.par_chunks(PAR_MIN_ELEMS))
        .for_each(|(o, i)| o.iter_mut().zip(i).for_each(|(o, i)| *o += i));
}

/// Shared helpers of the ops' tests: random data and gradient comparison.
#[cfg(test)]
pub(crate) mod testutil {
    use crate::rng::Rng;

    pub fn normals(rng: &mut Rng, len: usize) -> Vec<f32> {
        (0..len).map(|_| rng.normal()).collect()
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
