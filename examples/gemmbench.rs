use gemm::{gemm, Parallelism};
use std::time::Instant;
fn run(
    m: usize,
    n: usize,
    k: usize,
    dst_rs: isize,
    dst_cs: isize,
    a_rs: isize,
    a_cs: isize,
    b_rs: isize,
    b_cs: isize,
    par: Parallelism,
    label: &str,
) {
    let a = vec![1.0f32; m * k];
    let b = vec![1.0f32; k * n];
    let mut c = vec![0.0f32; m * n];
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        unsafe {
            gemm(
                m,
                n,
                k,
                c.as_mut_ptr(),
                dst_cs,
                dst_rs,
                false,
                a.as_ptr(),
                a_cs,
                a_rs,
                b.as_ptr(),
                b_cs,
                b_rs,
                0.0,
                1.0,
                false,
                false,
                false,
                par,
            );
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!(
        "{label:40} {m}x{n}x{k}: {:.1} ms {:.1} GFLOP/s",
        best * 1e3,
        2.0 * (m * n * k) as f64 / best / 1e9
    );
}
fn main() {
    for (lbl, t) in [("default thresholds", 0), ("packing threshold 1", 1)] {
        if t == 1 {
            gemm::set_lhs_packing_threshold_single_thread(1);
            gemm::set_lhs_packing_threshold_multi_thread(1);
        }
        println!("--- {lbl}");
        let (m, n, k) = (64, 32768, 576);
        let p = Parallelism::Rayon(0);
        // Y[m,n] row-major = W[m,k] row-major * col[k,n] row-major
        run(
            m,
            n,
            k,
            n as isize,
            1,
            k as isize,
            1,
            n as isize,
            1,
            p,
            "fwd rowmajor",
        );
        // Y^T: [n, m] = col^T [n,k] * W^T [k,m]  (same memory)
        run(
            n,
            m,
            k,
            1,
            n as isize,
            1,
            n as isize,
            1,
            k as isize,
            p,
            "fwd as transposed",
        );
        // col stored transposed: col^T [n, k] row-major (k contiguous)
        run(
            m,
            n,
            k,
            n as isize,
            1,
            k as isize,
            1,
            1,
            k as isize,
            p,
            "fwd with colT storage",
        );
        // dst col-major
        run(
            m,
            n,
            k,
            1,
            m as isize,
            k as isize,
            1,
            1,
            k as isize,
            p,
            "fwd colT storage, dst [n,m]",
        );
        run(
            m,
            n,
            k,
            n as isize,
            1,
            k as isize,
            1,
            n as isize,
            1,
            Parallelism::None,
            "fwd rowmajor 1 thread",
        );
        run(
            m,
            n,
            k,
            1,
            m as isize,
            k as isize,
            1,
            1,
            k as isize,
            Parallelism::None,
            "fwd colT dst[n,m] 1 thread",
        );
        // weight grad: dW[m,k] = dY[m,n] * col^T [n,k]
        run(
            m,
            k,
            n,
            k as isize,
            1,
            n as isize,
            1,
            1,
            n as isize,
            p,
            "dW = dY col^T (col row-major)",
        );
        run(
            m,
            k,
            n,
            k as isize,
            1,
            n as isize,
            1,
            k as isize,
            1,
            p,
            "dW = dY colT (colT storage)",
        );
        // dcol[k,n] = W^T[k,m] * dY[m,n]
        run(
            k,
            n,
            m,
            n as isize,
            1,
            1,
            k as isize,
            n as isize,
            1,
            p,
            "dcol = W^T dY",
        );
        run(
            1024,
            1024,
            1024,
            1024,
            1,
            1024,
            1,
            1024,
            1,
            p,
            "square 1024",
        );
    }
}
