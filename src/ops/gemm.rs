//! The one matrix product of the CPU backend: `C = A * B` or `C += A * B` on strided 2-D views.
//!
//! Every convolution and linear layer reduces to this call. Operands are `Layout` views into
//! plain slices, so a channel slice of an activation, a column range of a weight (with the full
//! leading dimension) or a transpose (swapped strides) reaches the `gemm` crate without a copy.
//! The wrapper is the only place that goes unsafe: it checks shapes, that every view lies inside
//! its slice and that the destination view never names one element twice (rayon threads would
//! race on it), then hands raw pointers and strides to `gemm::gemm`.

use crate::tensor::Layout;
use gemm::Parallelism;

/// Products below this many multiply-adds run on the calling thread: rayon's fork/join costs
/// more than it saves there.
const PARALLEL_MACS: usize = 64 * 1024;

/// The crate reads its left operand in place (unpacked) unless the product is wider than
/// 8-16 micro-panels. Convolution products are exactly that case: `Y = W * col` reaches the
/// kernels as `col^T * W^T` with only `Cout` (often 16-128) columns, and reading `col` in place
/// walks `K*K*Cin` rows whose stride is a power of two (`N*Ho*Wo`), which thrashes the caches.
/// Measured here on the 64->64 3x3 layer: packing ran 1.4-2x faster. Packing pays off
/// as soon as a packed panel is reused once, so the thresholds go down to one panel. These are
/// process-wide settings of the crate; they change speed only, never results.
fn tune_crate() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        gemm::set_lhs_packing_threshold_single_thread(1);
        gemm::set_lhs_packing_threshold_multi_thread(1);
    });
}

/// `C = A * B` (or `C += A * B` when `accumulate`), with `A: [m, k]`, `B: [k, n]`, `C: [m, n]`
/// given as 2-D views of `a`, `b`, `c`.
///
/// Panics when the shapes disagree, a view reaches past its slice, or the `C` view overlaps
/// itself: these are planning bugs, never user input.
pub fn gemm(c: &mut [f32], c_l: Layout, a: &[f32], a_l: Layout, b: &[f32], b_l: Layout, accumulate: bool) {
    gemm_on(c, c_l, a, a_l, b, b_l, accumulate, true);
}

/// `gemm` on the calling thread only, for callers that already run many products in parallel
/// (the crate's own threading scales poorly on the thin products of a convolution).
pub fn gemm_serial(c: &mut [f32], c_l: Layout, a: &[f32], a_l: Layout, b: &[f32], b_l: Layout, accumulate: bool) {
    gemm_on(c, c_l, a, a_l, b, b_l, accumulate, false);
}

#[allow(clippy::too_many_arguments)]
fn gemm_on(
    c: &mut [f32],
    c_l: Layout,
    a: &[f32],
    a_l: Layout,
    b: &[f32],
    b_l: Layout,
    accumulate: bool,
    threads: bool,
) {
    assert!(c_l.ndim() == 2 && a_l.ndim() == 2 && b_l.ndim() == 2, "gemm takes 2-D views");
    let (m, k) = (a_l.dim(0), a_l.dim(1));
    let n = b_l.dim(1);
    assert_eq!(b_l.dim(0), k, "gemm: inner dimensions differ");
    assert_eq!(c_l.shape(), &[m, n], "gemm: output shape differs");
    assert!(c_l.end() <= c.len(), "gemm: C view past its slice");
    assert!(a_l.end() <= a.len(), "gemm: A view past its slice");
    assert!(b_l.end() <= b.len(), "gemm: B view past its slice");
    assert!(no_self_overlap(&c_l), "gemm: C view overlaps itself");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        // An empty sum: C stays as is, or becomes zero.
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    c[c_l.index(&[i, j])] = 0.0;
                }
            }
        }
        return;
    }
    tune_crate();
    let parallelism = if threads && m.saturating_mul(n).saturating_mul(k) > PARALLEL_MACS {
        Parallelism::Rayon(0)
    } else {
        Parallelism::None
    };
    // SAFETY: each view lies inside its slice (checked above), strides are non-negative and fit
    // isize (slice lengths do), the C view names distinct elements, and `c` is borrowed mutably
    // while `a` and `b` are shared borrows, so C cannot alias A or B. With `read_dst == false`
    // the crate never reads C, so stale or NaN contents do not leak in.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr().add(c_l.offset),
            c_l.stride(1) as isize,
            c_l.stride(0) as isize,
            accumulate,
            a.as_ptr().add(a_l.offset),
            a_l.stride(1) as isize,
            a_l.stride(0) as isize,
            b.as_ptr().add(b_l.offset),
            b_l.stride(1) as isize,
            b_l.stride(0) as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// A sufficient condition for a 2-D view to name each element once: one dimension steps past
/// the whole extent of the other (row-major, column-major and their padded variants).
fn no_self_overlap(l: &Layout) -> bool {
    let (m, n) = (l.dim(0), l.dim(1));
    let (rs, cs) = (l.stride(0), l.stride(1));
    if m <= 1 && n <= 1 {
        return true;
    }
    if m <= 1 {
        return cs >= 1;
    }
    if n <= 1 {
        return rs >= 1;
    }
    (cs >= 1 && rs >= n * cs) || (rs >= 1 && cs >= m * rs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn random(len: usize, seed: u64) -> Vec<f32> {
        let mut rng = Rng::new(seed, 0);
        (0..len).map(|_| rng.normal()).collect()
    }

    /// Naive triple loop in f64 on the same views.
    #[allow(clippy::too_many_arguments)]
    fn naive(c: &mut [f32], c_l: Layout, a: &[f32], a_l: Layout, b: &[f32], b_l: Layout, accumulate: bool) {
        let (m, k, n) = (a_l.dim(0), a_l.dim(1), b_l.dim(1));
        for i in 0..m {
            for j in 0..n {
                let mut s = 0f64;
                for p in 0..k {
                    s += a[a_l.index(&[i, p])] as f64 * b[b_l.index(&[p, j])] as f64;
                }
                let ci = c_l.index(&[i, j]);
                if accumulate {
                    s += c[ci] as f64;
                }
                c[ci] = s as f32;
            }
        }
    }

    fn assert_close(got: &[f32], want: &[f32], tol: f32) {
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= tol * (1.0 + w.abs()), "element {i}: got {g}, want {w}");
        }
    }

    /// Runs both implementations on the same views and compares the whole C buffer, so
    /// elements outside the C view must stay untouched too.
    #[allow(clippy::too_many_arguments)]
    fn check(c_len: usize, c_l: Layout, a: &[f32], a_l: Layout, b: &[f32], b_l: Layout, acc: bool) {
        let c0 = random(c_len, 99);
        let mut got = c0.clone();
        let mut want = c0;
        gemm(&mut got, c_l, a, a_l, b, b_l, acc);
        naive(&mut want, c_l, a, a_l, b, b_l, acc);
        assert_close(&got, &want, 1e-4);
    }

    #[test]
    fn contiguous_products_small_and_large() {
        for &(m, k, n) in &[(3, 5, 4), (1, 7, 9), (9, 1, 3), (37, 41, 53), (64, 96, 80)] {
            let a = random(m * k, 1);
            let b = random(k * n, 2);
            for acc in [false, true] {
                check(
                    m * n,
                    Layout::contiguous(&[m, n]),
                    &a,
                    Layout::contiguous(&[m, k]),
                    &b,
                    Layout::contiguous(&[k, n]),
                    acc,
                );
            }
        }
    }

    #[test]
    fn strided_transposed_and_offset_views() {
        let (m, k, n) = (23, 31, 45);
        // A: a column range of a wider matrix (full leading dimension 50), starting at row 2.
        let a = random(30 * 50, 3);
        let a_l = Layout::contiguous(&[30, 50]).narrow(0, 2, m).narrow(1, 7, k);
        // B: stored transposed ([n, k] row-major, offset 11), read as [k, n].
        let b = random(11 + n * k, 4);
        let b_l = Layout::matrix(11, n, k, k, 1).transpose(0, 1);
        // C: a block of a wider output (row stride 60), offset.
        let c_l = Layout::matrix(5, m, n, 60, 1);
        for acc in [false, true] {
            check(5 + m * 60, c_l, &a, a_l, &b, b_l, acc);
        }
        // Column-major C and a transposed A.
        let at = random(k * m, 5);
        let at_l = Layout::contiguous(&[k, m]).transpose(0, 1);
        let c_cm = Layout::matrix(3, m, n, 1, m + 2);
        for acc in [false, true] {
            check(3 + n * (m + 2), c_cm, &at, at_l, &b, b_l, acc);
        }
    }

    #[test]
    fn overwrite_ignores_stale_contents_and_empty_k_zeroes() {
        let (m, k, n) = (40, 50, 60);
        let a = random(m * k, 6);
        let b = random(k * n, 7);
        let mut c = vec![f32::NAN; m * n];
        let l = Layout::contiguous(&[m, n]);
        gemm(&mut c, l, &a, Layout::contiguous(&[m, k]), &b, Layout::contiguous(&[k, n]), false);
        assert!(c.iter().all(|v| v.is_finite()));
        let mut z = vec![5.0f32; 6];
        gemm(
            &mut z,
            Layout::contiguous(&[2, 3]),
            &[],
            Layout::contiguous(&[2, 0]),
            &[],
            Layout::contiguous(&[0, 3]),
            false,
        );
        assert_eq!(z, vec![0.0; 6]);
    }

    #[test]
    #[should_panic(expected = "past its slice")]
    fn rejects_a_view_past_the_slice() {
        let a = vec![0.0; 12];
        let mut c = vec![0.0; 9];
        gemm(
            &mut c,
            Layout::contiguous(&[3, 3]),
            &a,
            Layout::matrix(1, 3, 4, 4, 1),
            &a,
            Layout::contiguous(&[4, 3]),
            false,
        );
    }

    #[test]
    #[should_panic(expected = "overlaps itself")]
    fn rejects_an_overlapping_destination() {
        let a = vec![0.0; 4];
        let mut c = vec![0.0; 9];
        gemm(
            &mut c,
            Layout::matrix(0, 2, 2, 1, 1),
            &a,
            Layout::contiguous(&[2, 2]),
            &a,
            Layout::contiguous(&[2, 2]),
            false,
        );
    }
}
