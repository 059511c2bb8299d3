use super::*;
use crate::ir::Bf16;
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

/// Relative closeness; `scale` is the typical magnitude of a sum (about sqrt(k) for normals).
fn assert_close(got: &[f32], want: &[f32], tol: f32, scale: f32) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol * (scale + w.abs()), "element {i}: got {g}, want {w}");
    }
}

/// Every kernel this processor runs, the portable one first. Which ran and which the processor
/// lacks is said once on stderr (shown with `--nocapture`, and in a failing test's output).
fn kernels() -> Vec<Kernel> {
    static SAID: std::sync::Once = std::sync::Once::new();
    let (ks, lacking): (Vec<_>, Vec<_>) = Kernel::ALL.iter().partition(|(k, _)| k.supported());
    SAID.call_once(|| {
        let names = |v: &[&(Kernel, &str)]| v.iter().map(|(_, n)| *n).collect::<Vec<_>>().join(", ");
        let lacks = if lacking.is_empty() { "nothing".to_string() } else { names(&lacking) };
        eprintln!("blas tests: checking the kernels {}; this processor lacks {lacks}", names(&ks));
    });
    ks.into_iter().map(|(k, _)| *k).collect()
}

/// Runs the product (serial and parallel, every kernel) and the naive loop on the same views
/// and compares the whole C buffer, so elements outside the C view must stay untouched too.
#[allow(clippy::too_many_arguments)]
fn check(c_len: usize, c_l: Layout, a: &[f32], a_l: Layout, b: &[f32], b_l: Layout, acc: bool) {
    let c0 = random(c_len, 99);
    let mut want = c0.clone();
    naive(&mut want, c_l, a, a_l, b, b_l, acc);
    let scale = (a_l.dim(1) as f32).sqrt().max(1.0);
    for kern in kernels() {
        for threads in [false, true] {
            let mut got = c0.clone();
            gemm_on(&mut got, c_l, a, a_l, b, b_l, acc, threads, kern);
            assert_close(&got, &want, 1e-5, scale);
        }
    }
}

fn check_contiguous(m: usize, k: usize, n: usize) {
    let a = random(m * k, 1 + m as u64);
    let b = random(k * n, 2 + n as u64);
    for acc in [false, true] {
        let (cl, al, bl) = (Layout::contiguous(&[m, n]), Layout::contiguous(&[m, k]), Layout::contiguous(&[k, n]));
        check(m * n, cl, &a, al, &b, bl, acc);
    }
}

#[test]
fn contiguous_products_small_and_at_tile_edges() {
    for &(m, k, n) in &[
        (1, 1, 1),
        (3, 5, 4),
        (1, 7, 9),
        (9, 1, 3),
        (6, 8, 16),
        (7, 9, 17),
        (5, 3, 15),
        (12, 33, 32),
        (37, 41, 53),
        (64, 96, 80),
        (8, 8, 48),
        (9, 10, 49),
        (17, 5, 95),
    ] {
        check_contiguous(m, k, n);
    }
}

#[test]
fn products_crossing_every_block_size() {
    // k past KC (two k blocks), m past MC, n past NC, for every tile's block sizes; and
    // thin-wide shapes that go parallel.
    for &(m, k, n) in
        &[(7, 300, 2100), (150, 300, 20), (16, 27, 3000), (3000, 20, 10), (13, 520, 40), (8, 40, 3200), (270, 70, 50)]
    {
        check_contiguous(m, k, n);
    }
}

#[test]
fn k_heavy_products_split_k_and_match() {
    // Small C, long k: the parallel path cuts k into partial sums.
    for &(m, k, n) in &[(16, 4096, 32), (10, 3000, 21)] {
        check_contiguous(m, k, n);
    }
    // Weight-gradient layout: rows of dY times a column-major col^T.
    let (m, k, n) = (24, 2600, 40);
    let a = random(m * k, 8);
    let b = random(n * k, 9);
    let bl = Layout::matrix(0, k, n, 1, k);
    for acc in [false, true] {
        check(m * n, Layout::contiguous(&[m, n]), &a, Layout::contiguous(&[m, k]), &b, bl, acc);
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
    // Neither stride 1 anywhere: every operand takes the general gather path.
    let a2 = random(2 * m * 3 * k, 6);
    let a2_l = Layout::matrix(1, m, k, 3 * k * 2, 2);
    let b2 = random(3 * k * 2 * n, 7);
    let b2_l = Layout::matrix(0, k, n, 2 * n * 3, 3);
    let c2_l = Layout::matrix(0, m, n, 2 * n, 2);
    for acc in [false, true] {
        check(2 * m * n, c2_l, &a2, a2_l, &b2, b2_l, acc);
    }
}

#[test]
fn serial_and_parallel_agree() {
    for &(m, k, n) in &[(32, 288, 2048), (600, 64, 48), (64, 4096, 96)] {
        let a = random(m * k, 11);
        let b = random(k * n, 12);
        let (cl, al, bl) = (Layout::contiguous(&[m, n]), Layout::contiguous(&[m, k]), Layout::contiguous(&[k, n]));
        let mut s = vec![0.0; m * n];
        let mut p = vec![0.0; m * n];
        gemm_serial(&mut s, cl, &a, al, &b, bl, false);
        gemm(&mut p, cl, &a, al, &b, bl, false);
        // A k-split sums in another order: the difference scales with the terms (sqrt(k)).
        assert_close(&p, &s, 1e-5, (k as f32).sqrt());
    }
}

#[test]
fn overwrite_ignores_stale_contents_and_empty_k_zeroes() {
    let (m, k, n) = (40, 50, 60);
    let a = random(m * k, 6);
    let b = random(k * n, 7);
    for kern in kernels() {
        let mut c = vec![f32::NAN; m * n];
        let l = Layout::contiguous(&[m, n]);
        gemm_on(&mut c, l, &a, Layout::contiguous(&[m, k]), &b, Layout::contiguous(&[k, n]), false, true, kern);
        assert!(c.iter().all(|v| v.is_finite()));
    }
    let empty: &[f32] = &[];
    let (cl, al, bl) = (Layout::contiguous(&[2, 3]), Layout::contiguous(&[2, 0]), Layout::contiguous(&[0, 3]));
    let mut z = vec![5.0f32; 6];
    gemm(&mut z, cl, empty, al, empty, bl, false);
    assert_eq!(z, vec![0.0; 6]);
    let mut z = vec![5.0f32; 6];
    gemm(&mut z, cl, empty, al, empty, bl, true);
    assert_eq!(z, vec![5.0; 6]);
    let mut z = vec![Bf16::from_f32(5.0); 6];
    gemm(&mut z, cl, empty, al, empty, bl, false);
    assert_eq!(z, vec![Bf16::default(); 6]);
}

/// Packing buffers made so far on every pool thread and this one.
fn pack_allocs() -> usize {
    rayon::broadcast(|_| PACK_ALLOCS.with(|n| n.get())).iter().sum::<usize>() + PACK_ALLOCS.with(|n| n.get())
}

#[test]
fn prepared_threads_make_no_packing_buffers() {
    prepare();
    let before = pack_allocs();
    for &(m, k, n) in &[(16, 27, 4096), (700, 64, 30), (32, 5000, 40), (5, 3, 7)] {
        let a = random(m * k, 1);
        let b = random(k * n, 2);
        let mut c = vec![0.0; m * n];
        let (cl, al, bl) = (Layout::contiguous(&[m, n]), Layout::contiguous(&[m, k]), Layout::contiguous(&[k, n]));
        gemm(&mut c, cl, &a, al, &b, bl, false);
        gemm_serial(&mut c, cl, &a, al, &b, bl, true);
    }
    assert_eq!(pack_allocs(), before);
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

/// A k-split product started while this thread's partial-sum buffer is in use (as when a
/// worker waiting inside one product picks up another: two runs sharing the pool) cuts and
/// sums exactly as one started alone: its bits never depend on scheduling.
#[test]
fn a_product_started_inside_another_gives_the_same_bits() {
    let (m, k, n) = (16, 4096, 32);
    let a = random(m * k, 21);
    let b = random(k * n, 22);
    let (cl, al, bl) = (Layout::contiguous(&[m, n]), Layout::contiguous(&[m, k]), Layout::contiguous(&[k, n]));
    let mut alone = vec![0.0; m * n];
    gemm(&mut alone, cl, &a, al, &b, bl, false);
    let mut nested = vec![0.0; m * n];
    PARTIAL.with(|p| {
        let _in_use = p.borrow_mut();
        gemm(&mut nested, cl, &a, al, &b, bl, false);
    });
    let same = nested.iter().zip(&alone).all(|(x, y)| x.to_bits() == y.to_bits());
    assert!(same, "a product started inside another differs in its bits");
}

fn to_bf16(v: &[f32]) -> Vec<Bf16> {
    v.iter().map(|&x| Bf16::from_f32(x)).collect()
}

fn widen(v: &[Bf16]) -> Vec<f32> {
    v.iter().map(|x| x.to_f32()).collect()
}

/// bf16 operands are widened as they are packed, so a product on them gives the very bits of
/// the f32 product on their widened values; a bf16 `C` is that f32 sum (plus `C`'s old value
/// when accumulating) rounded once. Shapes cross every block size and force a k-split in f32,
/// which a bf16 `C` must not take; views are offset, strided and transposed.
#[test]
fn bf16_operands_convert_while_packing_and_a_bf16_c_rounds_once() {
    for &(m, k, n) in &[(7, 9, 17), (150, 300, 2100), (16, 4096, 32), (700, 64, 30), (5, 3, 4), (260, 521, 3100)] {
        let a32 = random(1 + (m + 2) * (k + 2), 41);
        let b32 = random(2 + n * k, 42);
        let (a16, b16) = (to_bf16(&a32), to_bf16(&b32));
        let (aw, bw) = (widen(&a16), widen(&b16));
        // A row-major with padded rows and B stored transposed, then the other way round
        // (packing moves pairs differently for each).
        for flip in [false, true] {
            let (al, bl) = if flip {
                (Layout::matrix(1, k, m, m + 2, 1).transpose(0, 1), Layout::matrix(2, k, n, n, 1))
            } else {
                (Layout::matrix(1, m, k, k + 2, 1), Layout::matrix(2, n, k, k, 1).transpose(0, 1))
            };
            let cl = Layout::matrix(3, m, n, n + 1, 1);
            let c_len = 3 + m * (n + 1);
            let c0 = to_bf16(&random(c_len, 43));
            for kern in kernels() {
                // The f32 reference, on one thread (no k-split): the order of the sums the bf16
                // products keep.
                let mut sum = vec![0f32; c_len];
                gemm_on(&mut sum, cl, &aw, al, &bw, bl, false, false, kern);
                for threads in [false, true] {
                    let mut mixed = vec![0f32; c_len];
                    gemm_on(&mut mixed, cl, &a16, al, &b32, bl, false, threads, kern);
                    if !threads {
                        let mut want = vec![0f32; c_len];
                        gemm_on(&mut want, cl, &aw, al, &b32, bl, false, false, kern);
                        assert!(mixed.iter().zip(&want).all(|(x, y)| x.to_bits() == y.to_bits()), "{m}x{k}x{n}");
                    }
                    for acc in [false, true] {
                        let mut c = c0.clone();
                        gemm_on(&mut c, cl, &a16, al, &b16, bl, acc, threads, kern);
                        for i in 0..c_len {
                            let inside = i >= 3 && (i - 3) % (n + 1) < n;
                            let want = match (inside, acc) {
                                (false, _) => c0[i],
                                (true, false) => Bf16::from_f32(sum[i]),
                                (true, true) => Bf16::from_f32(c0[i].to_f32() + sum[i]),
                            };
                            if kern == Kernel::Avx512Bf16 && inside {
                                // The pair dot product adds a pair's two (exact) products in its own
                                // order, so its f32 sum may differ from the tile's by a few f32
                                // roundings, and the bf16 it rounds to by one step where the sum
                                // lies near a rounding boundary: within a bf16 step of `want`, and
                                // within f32 rounding of the sum before `C` is rounded.
                                let (g, w) = (c[i].to_f32(), want.to_f32());
                                let step = w.abs() * 2f32.powi(-7) + 1e-5 * (k as f32).sqrt();
                                assert!(
                                    (g - w).abs() <= step,
                                    "{m}x{k}x{n} threads {threads} acc {acc} element {i}: {g} vs {w}"
                                );
                            } else {
                                assert_eq!(c[i], want, "{m}x{k}x{n} threads {threads} acc {acc} element {i}");
                            }
                        }
                    }
                }
            }
        }
    }
}
