//! Our GEMM, by every instruction set this processor runs, beside the `gemm` crate on the
//! products of a WRN-16-4 step at batch 32, all on every thread, in one run:
//! `cargo bench --bench gemm`. The bf16 rows multiply bf16 operands into an f32 product, as a
//! bf16 step's convolutions do.

use sliceout::blas::{gemm_by, Kernel};
use sliceout::ir::{Bf16, Elem, Layout};
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
    let kernels: Vec<(Kernel, &str)> = Kernel::ALL.iter().copied().filter(|(k, _)| k.supported()).collect();
    let lacking: Vec<&str> = Kernel::ALL.iter().filter(|(k, _)| !k.supported()).map(|(_, n)| *n).collect();
    println!("processor: {}", processor_name());
    if !lacking.is_empty() {
        println!("this processor lacks: {}", lacking.join(", "));
    }
    print!("{:26} {:>5} {:>6} {:>6}", "product (GFLOP/s)", "m", "k", "n");
    for (_, name) in &kernels {
        print!(" {name:>11}");
    }
    println!(" {:>11}", "gemm crate");
    for (what, m, k, n) in [
        ("forward 64@32", 64, 576, 32768),
        ("forward 128@16", 128, 1152, 8192),
        ("forward 256@8", 256, 2304, 2048),
        ("weight grad 64@32", 64, 32768, 576),
        ("data grad 64@32", 576, 64, 32768),
    ] {
        let gf = |ms: f64| 2.0 * (m * n * k) as f64 / ms / 1e6;
        let (al, bl, cl) =
            (Layout::matrix(0, m, k, k, 1), Layout::matrix(0, k, n, n, 1), Layout::matrix(0, m, n, n, 1));
        let a = vec![1.0f32; m * k];
        let b = vec![1.0f32; k * n];
        let mut c = vec![0f32; m * n];
        print!("{:26} {m:>5} {k:>6} {n:>6}", format!("{what} f32"));
        for &(kern, _) in &kernels {
            print!(" {:>11.1}", gf(best_ms(|| gemm_by(kern, &mut c, cl, &a, al, &b, bl, false))));
        }
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
        println!(" {:>11.1}", gf(theirs));
        let (a16, b16) = (vec![Bf16::from_f32(1.0); m * k], vec![Bf16::from_f32(1.0); k * n]);
        print!("{:26} {m:>5} {k:>6} {n:>6}", format!("{what} bf16"));
        for &(kern, _) in &kernels {
            print!(" {:>11.1}", gf(best_ms(|| gemm_by(kern, &mut c, cl, &a16, al, &b16, bl, false))));
        }
        println!(" {:>11}", "-");
    }
}

/// The processor's name as the kernel reports it (`/proc/cpuinfo`), or "unknown".
fn processor_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}
