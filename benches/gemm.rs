//! Our GEMM beside the `gemm` crate on the products of a WRN-16-4 step at batch 32, both on
//! all threads, in one run: `cargo bench --bench gemm`.

use sliceout::blas::gemm;
use sliceout::ir::Layout;
use std::time::Instant;

fn best_ms(mut f: impl FnMut()) -> f64 {
    f();
    (0..5)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    sliceout::blas::prepare();
    println!("product              m      k      n   ours ms  GFLOP/s   crate ms  GFLOP/s");
    for (what, m, k, n) in [
        ("forward 64@32", 64, 576, 32768),
        ("forward 128@16", 128, 1152, 8192),
        ("forward 256@8", 256, 2304, 2048),
        ("weight grad 64@32", 64, 32768, 576),
        ("data grad 64@32", 576, 64, 32768),
    ] {
        let a = vec![1.0f32; m * k];
        let b = vec![1.0f32; k * n];
        let mut c = vec![0f32; m * n];
        let ours = best_ms(|| {
            gemm(
                &mut c,
                Layout::matrix(0, m, n, n, 1),
                &a,
                Layout::matrix(0, m, k, k, 1),
                &b,
                Layout::matrix(0, k, n, n, 1),
                false,
            )
        });
        let theirs = best_ms(|| unsafe {
            gemm::gemm(
                m,
                n,
                k,
                c.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr(),
                1,
                k as isize,
                b.as_ptr(),
                1,
                n as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(0),
            )
        });
        let gf = |ms: f64| 2.0 * (m * n * k) as f64 / ms / 1e6;
        println!("{what:18} {m:>6} {k:>6} {n:>6} {ours:>9.1} {:>8.1} {theirs:>10.1} {:>8.1}", gf(ours), gf(theirs));
    }
}
