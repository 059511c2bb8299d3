use gemm::{gemm, Parallelism};
use std::time::Instant;
#[derive(Clone, Copy)]
struct P(*mut f32);
unsafe impl Send for P {}
unsafe impl Sync for P {}
#[derive(Clone, Copy)]
struct Q(*const f32);
unsafe impl Send for Q {}
unsafe impl Sync for Q {}
impl P {
    fn at(self, o: usize) -> P {
        P(unsafe { self.0.add(o) })
    }
}
impl Q {
    fn at(self, o: usize) -> Q {
        Q(unsafe { self.0.add(o) })
    }
}
unsafe fn g(
    m: usize,
    n: usize,
    k: usize,
    c: P,
    crs: isize,
    ccs: isize,
    acc: bool,
    a: Q,
    ars: isize,
    acs: isize,
    b: Q,
    brs: isize,
    bcs: isize,
) {
    gemm(
        m,
        n,
        k,
        c.0,
        ccs,
        crs,
        acc,
        a.0,
        acs,
        ars,
        b.0,
        bcs,
        brs,
        1.0,
        1.0,
        false,
        false,
        false,
        Parallelism::None,
    );
}
fn time(label: &str, flop: f64, mut f: impl FnMut()) {
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!(
        "{label:50} {:.1} ms {:.1} GFLOP/s",
        best * 1e3,
        flop / best / 1e9
    );
}
fn main() {
    gemm::set_lhs_packing_threshold_single_thread(1);
    for (m, n, k) in [
        (64usize, 32768usize, 576usize),
        (128, 8192, 1152),
        (256, 2048, 2304),
    ] {
        let flop = 2.0 * (m * n * k) as f64;
        let big = (m * k).max(k * n).max(m * n);
        let a = vec![1.0f32; big];
        let b = vec![1.0f32; big];
        let mut c = vec![0.0f32; big];
        let (ap, bp, cp) = (Q(a.as_ptr()), Q(b.as_ptr()), P(c.as_mut_ptr()));
        let h = n / 2;
        println!("--- {m}x{n}x{k}");
        // fwd rowmajor split over n
        time("fwd rowmajor, 2 halves", flop, || unsafe {
            rayon::join(
                move || {
                    g(
                        m, h, k, cp, n as isize, 1, false, ap, k as isize, 1, bp, n as isize, 1,
                    )
                },
                move || {
                    g(
                        m,
                        h,
                        k,
                        cp.at(h),
                        n as isize,
                        1,
                        false,
                        ap,
                        k as isize,
                        1,
                        bp.at(h),
                        n as isize,
                        1,
                    )
                },
            );
        });
        // fwd colT storage: b = col^T stored [n,k] => B[k,n] has rs=1, cs=k
        time("fwd colT storage, 2 halves", flop, || unsafe {
            rayon::join(
                move || {
                    g(
                        m, h, k, cp, n as isize, 1, false, ap, k as isize, 1, bp, 1, k as isize,
                    )
                },
                move || {
                    g(
                        m,
                        h,
                        k,
                        cp.at(h),
                        n as isize,
                        1,
                        false,
                        ap,
                        k as isize,
                        1,
                        bp.at(h * k),
                        1,
                        k as isize,
                    )
                },
            );
        });
        // transposed formulation: C^T[n,m] = B^T[n,k] A^T[k,m], halves over n
        time("fwd transposed, 2 halves", flop, || unsafe {
            rayon::join(
                move || {
                    g(
                        h, m, k, cp, 1, n as isize, false, bp, 1, n as isize, ap, 1, k as isize,
                    )
                },
                move || {
                    g(
                        h,
                        m,
                        k,
                        cp.at(h),
                        1,
                        n as isize,
                        false,
                        bp.at(h),
                        1,
                        n as isize,
                        ap,
                        1,
                        k as isize,
                    )
                },
            );
        });
        // dW[m,k] = dY[m,n] col^T : split n (inner) into 2 partials
        let mut dw2 = vec![0.0f32; m * k];
        let d2 = P(dw2.as_mut_ptr());
        time("dW rowmajor col, 2 partial sums", flop, || unsafe {
            rayon::join(
                move || {
                    g(
                        m, k, h, cp, k as isize, 1, false, ap, /*dY [m,n]*/
                        n as isize, 1, bp, 1, n as isize,
                    )
                },
                move || {
                    g(
                        m,
                        k,
                        h,
                        d2,
                        k as isize,
                        1,
                        false,
                        ap.at(h),
                        n as isize,
                        1,
                        bp.at(h),
                        1,
                        n as isize,
                    )
                },
            );
        });
        // dW transposed: dW^T[k,m] = col[k,n] dY^T[n,m]
        time("dW^T = col dY^T, 2 partial sums", flop, || unsafe {
            rayon::join(
                move || {
                    g(
                        k, m, h, cp, 1, k as isize, false, bp, n as isize, 1, ap, 1, n as isize,
                    )
                },
                move || {
                    g(
                        k,
                        m,
                        h,
                        d2,
                        1,
                        k as isize,
                        false,
                        bp.at(h),
                        n as isize,
                        1,
                        ap.at(h),
                        1,
                        n as isize,
                    )
                },
            );
        });
        // dcol[k,n] = W^T dY, halves over n
        time("dcol = W^T dY, 2 halves", flop, || unsafe {
            rayon::join(
                move || {
                    g(
                        k, h, m, cp, n as isize, 1, false, ap, 1, k as isize, bp, n as isize, 1,
                    )
                },
                move || {
                    g(
                        k,
                        h,
                        m,
                        cp.at(h),
                        n as isize,
                        1,
                        false,
                        ap,
                        1,
                        k as isize,
                        bp.at(h),
                        n as isize,
                        1,
                    )
                },
            );
        });
    }
}
