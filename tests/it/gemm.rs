//! Our GEMM (`ops::gemm`, allocation-free, AVX2 micro-kernel) against the `gemm` crate on the
//! products a WRN-16-4 step at batch 32 runs: forward `W * col`, weight gradient `dY * col^T`,
//! data gradient `W^T * dY`, with strided and offset views.

use sliceout::blas::{gemm, gemm_serial};
use sliceout::ir::Layout;
use sliceout::rng::Rng;

/// `C = A * B` by the `gemm` crate, on row-major dense operands.
#[allow(clippy::too_many_arguments)]
fn crate_gemm(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    a_rs: usize,
    a_cs: usize,
    b: &[f32],
    b_rs: usize,
    b_cs: usize,
) -> Vec<f32> {
    let mut c = vec![0f32; m * n];
    // SAFETY: the views lie inside `a`, `b` and `c` (asserted by the callers' shapes).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
    c
}

fn rel(a: &[f32], b: &[f32]) -> f64 {
    let d: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum();
    let n: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (d / n).sqrt()
}

#[test]
fn matches_the_gemm_crate_on_conv_products() {
    let mut rng = Rng::new(11, 1);
    for (m, k, n) in [(64, 576, 4096), (128, 1152, 2048), (256, 2304, 512), (16, 27, 8192), (37, 301, 999)] {
        let w: Vec<f32> = (0..m * k).map(|_| rng.normal()).collect();
        let col: Vec<f32> = (0..k * n).map(|_| rng.normal()).collect();
        let dy: Vec<f32> = (0..m * n).map(|_| rng.normal()).collect();
        // Forward: Y[m, n] = W[m, k] * col[k, n].
        let want = crate_gemm(m, n, k, &w, k, 1, &col, n, 1);
        for serial in [false, true] {
            let mut c = vec![f32::NAN; m * n];
            let f = if serial { gemm_serial } else { gemm };
            f(
                &mut c,
                Layout::matrix(0, m, n, n, 1),
                &w,
                Layout::matrix(0, m, k, k, 1),
                &col,
                Layout::matrix(0, k, n, n, 1),
                false,
            );
            assert!(rel(&c, &want) < 1e-5, "forward {m}x{k}x{n} serial={serial}: {}", rel(&c, &want));
        }
        // Weight gradient: dW[m, k] = dY[m, n] * col^T (a transposed view, k-heavy).
        let want = crate_gemm(m, k, n, &dy, n, 1, &col, 1, n);
        let mut c = vec![0f32; m * k];
        gemm(
            &mut c,
            Layout::matrix(0, m, k, k, 1),
            &dy,
            Layout::matrix(0, m, n, n, 1),
            &col,
            Layout::matrix(0, n, k, 1, n),
            false,
        );
        assert!(rel(&c, &want) < 1e-5, "weight gradient {m}x{k}x{n}: {}", rel(&c, &want));
        // Data gradient through a column slice of W: dcol[h, n] = W[:, k0..k0+h]^T * dY.
        let (k0, h) = (k / 3, k / 2);
        let w_t = Layout::matrix(k0, h, m, 1, k);
        let want = crate_gemm(h, n, m, &w[k0..], 1, k, &dy, n, 1);
        let mut c = vec![0f32; h * n];
        gemm(&mut c, Layout::matrix(0, h, n, n, 1), &w, w_t, &dy, Layout::matrix(0, m, n, n, 1), false);
        assert!(rel(&c, &want) < 1e-5, "data gradient {m}x{k}x{n}: {}", rel(&c, &want));
    }
}
