//! Checks of the im2col convolution against a direct nested-loop convolution in f64, for every
//! geometry the WRNs use, chunkings that do not divide the batch, accumulation, and sliced
//! (including wrapping) input and output channels; gradients against the reference backward,
//! central differences and the adjoint identity.

use super::cpu::*;
use super::*;
use crate::blas::gemm;
use crate::ir::{ConvShape, Layout, Slice, Target};
use crate::rng::Rng;
use std::time::Instant;

fn random(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed, 7);
    (0..len).map(|_| rng.normal()).collect()
}

/// Direct convolution, f64 accumulation: `x (cin, N, H, W)`, `wt (cout, cin, K, K)` ->
/// `(cout, N, Ho, Wo)`, using `p.cin` / `p.cout` as the dense widths.
pub(super) fn reference_forward(x: &[f32], wt: &[f32], p: &ConvShape) -> Vec<f64> {
    let (ho, wo, k) = (p.ho(), p.wo(), p.k);
    let mut y = vec![0f64; p.cout * p.n * ho * wo];
    for o in 0..p.cout {
        for n in 0..p.n {
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut s = 0f64;
                    for c in 0..p.cin {
                        for ky in 0..k {
                            for kx in 0..k {
                                let iy = (oy * p.stride + ky) as isize - p.pad as isize;
                                let ix = (ox * p.stride + kx) as isize - p.pad as isize;
                                if iy < 0 || ix < 0 || iy >= p.h as isize || ix >= p.w as isize {
                                    continue;
                                }
                                let xv = x[((c * p.n + n) * p.h + iy as usize) * p.w + ix as usize];
                                let wv = wt[((o * p.cin + c) * k + ky) * k + kx];
                                s += xv as f64 * wv as f64;
                            }
                        }
                    }
                    y[((o * p.n + n) * ho + oy) * wo + ox] = s;
                }
            }
        }
    }
    y
}

/// Direct gradients of `sum(r * conv(x, wt))`: `(d_x (cin, N, H, W), d_wt (cout, cin, K, K))`.
pub(super) fn reference_backward(r: &[f32], x: &[f32], wt: &[f32], p: &ConvShape) -> (Vec<f64>, Vec<f64>) {
    let (ho, wo, k) = (p.ho(), p.wo(), p.k);
    let mut dx = vec![0f64; p.cin * p.n * p.h * p.w];
    let mut dw = vec![0f64; p.cout * p.cin * k * k];
    for o in 0..p.cout {
        for n in 0..p.n {
            for oy in 0..ho {
                for ox in 0..wo {
                    let g = r[((o * p.n + n) * ho + oy) * wo + ox] as f64;
                    for c in 0..p.cin {
                        for ky in 0..k {
                            for kx in 0..k {
                                let iy = (oy * p.stride + ky) as isize - p.pad as isize;
                                let ix = (ox * p.stride + kx) as isize - p.pad as isize;
                                if iy < 0 || ix < 0 || iy >= p.h as isize || ix >= p.w as isize {
                                    continue;
                                }
                                let xi = ((c * p.n + n) * p.h + iy as usize) * p.w + ix as usize;
                                let wi = ((o * p.cin + c) * k + ky) * k + kx;
                                dx[xi] += g * wt[wi] as f64;
                                dw[wi] += g * x[xi] as f64;
                            }
                        }
                    }
                }
            }
        }
    }
    (dx, dw)
}

/// The layer channels of a slice, in slice order.
fn channels_of(s: &Slice) -> Vec<usize> {
    (0..s.width).map(|i| (s.start + i) % s.channels).collect()
}

/// The dense `(w_out, w_in, K, K)` weight a sliced call must behave as.
pub(super) fn gather_weight(wt: &[f32], p: &ConvShape, out_slice: &Slice, in_slice: &Slice) -> Vec<f32> {
    let kk = p.kk();
    let mut g = Vec::new();
    for &o in &channels_of(out_slice) {
        for &c in &channels_of(in_slice) {
            g.extend_from_slice(&wt[(o * p.cin + c) * kk..][..kk]);
        }
    }
    g
}

/// The shape of the dense problem equivalent to a sliced call.
pub(super) fn dense_shape(p: &ConvShape, out_slice: &Slice, in_slice: &Slice) -> ConvShape {
    ConvShape { cin: in_slice.width, cout: out_slice.width, ..*p }
}

fn assert_close(got: &[f32], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!((g as f64 - w).abs() <= tol * (1.0 + w.abs()), "{what}: element {i}: got {g}, want {w}");
    }
}

/// Winograd F(4x4, 3x3)'s tolerance relative to the rms of the outputs (`assert_close_to_scale`).
const WINOGRAD_TOL: f64 = 5e-5;

/// As [`assert_close`], the error held to `tol` of the element plus the root mean square of
/// `want`: Winograd's rounding follows the size of the terms it adds, not of their sum, so an
/// output that cancels to near zero keeps an error of its neighbours' size.
fn assert_close_to_scale(got: &[f32], want: &[f64], tol: f64, what: &str) {
    let rms = (want.iter().map(|w| w * w).sum::<f64>() / want.len().max(1) as f64).sqrt();
    // A NaN counts as the worst error.
    let err =
        |g: f32, w: f64| Some((g as f64 - w).abs() / (rms + w.abs())).filter(|e| !e.is_nan()).unwrap_or(f64::INFINITY);
    let worst = got.iter().zip(want).fold(0f64, |m, (&g, &w)| m.max(err(g, w)));
    assert!(worst <= tol, "{what}: worst error {worst:.2e} of the rms {rms:.2e} plus the element");
}

/// Geometries: (k, stride, pad), every combination the WRNs use plus unpadded 3x3 and a padded
/// 1x1 (which is not direct).
const GEOMETRIES: [(usize, usize, usize); 7] =
    [(1, 1, 0), (1, 2, 0), (3, 1, 1), (3, 2, 1), (3, 1, 0), (3, 2, 0), (1, 1, 1)];

fn shape(k: usize, stride: usize, pad: usize) -> ConvShape {
    // Non-square input so that swapped H and W would show.
    ConvShape { n: 3, cin: 5, h: 7, w: 9, cout: 6, k, stride, pad }
}

/// (out_slice, in_slice) pairs over cout = 6, cin = 5: full, non-wrapping and wrapping.
fn slice_cases() -> Vec<(Slice, Slice)> {
    vec![
        (Slice::full(6), Slice::full(5)),
        (Slice::new(1, 3, 6), Slice::full(5)),
        (Slice::new(4, 4, 6), Slice::full(5)),
        (Slice::full(6), Slice::new(1, 3, 5)),
        (Slice::full(6), Slice::new(3, 4, 5)),
        (Slice::new(5, 3, 6), Slice::new(4, 2, 5)),
    ]
}

/// A full weight whose entries outside the slice are NaN: any read of them poisons the result.
fn poisoned_weight(p: &ConvShape, out_slice: &Slice, in_slice: &Slice, seed: u64) -> Vec<f32> {
    let kk = p.kk();
    let mut wt = random(p.cout * p.cin * kk, seed);
    let (outs, ins) = (channels_of(out_slice), channels_of(in_slice));
    for o in 0..p.cout {
        for c in 0..p.cin {
            if !outs.contains(&o) || !ins.contains(&c) {
                wt[(o * p.cin + c) * kk..][..kk].fill(f32::NAN);
            }
        }
    }
    wt
}

#[test]
fn shape_arithmetic() {
    let p = ConvShape { n: 32, cin: 64, h: 32, w: 32, cout: 128, k: 3, stride: 2, pad: 1 };
    assert_eq!((p.ho(), p.wo(), p.kk()), (16, 16, 9));
    assert!(!p.direct());
    assert_eq!(workspace_len(&p, 32, 4, Target::Cpu), 32 * 9 * 4 * 256);
    assert_eq!(workspace_len(&p, 32, 0, Target::Cpu), 32 * 9 * 32 * 256);
    assert_eq!(workspace_len(&p, 32, 100, Target::Cpu), workspace_len(&p, 32, 0, Target::Cpu));
    assert_eq!(p.macs(64, 32), 64 * 32 * 9 * 32 * 256);
    let q = ConvShape { k: 1, stride: 1, pad: 0, ..p };
    assert!(q.direct());
    assert_eq!(workspace_len(&q, 64, 4, Target::Cpu), 0);
    assert_eq!((q.ho(), q.wo()), (32, 32));
}

#[test]
fn im2col_matches_its_definition_and_col2im_is_its_adjoint() {
    for &(k, s, pad) in &GEOMETRIES {
        let p = shape(k, s, pad);
        let (ho, wo, kk) = (p.ho(), p.wo(), p.kk());
        let ch = 4;
        let x = random(ch * p.n * p.h * p.w, 1);
        let (n0, nb) = (1, 2);
        let mut col = vec![f32::NAN; ch * kk * nb * ho * wo + 5];
        im2col(&mut col, &x, &p, ch, n0, nb);
        assert!(col[ch * kk * nb * ho * wo..].iter().all(|v| v.is_nan()));
        for c in 0..ch {
            for t in 0..kk {
                for i in 0..nb {
                    for oy in 0..ho {
                        for ox in 0..wo {
                            let iy = (oy * s + t / k) as isize - pad as isize;
                            let ix = (ox * s + t % k) as isize - pad as isize;
                            let want = if iy < 0 || ix < 0 || iy >= p.h as isize || ix >= p.w as isize {
                                0.0
                            } else {
                                x[((c * p.n + n0 + i) * p.h + iy as usize) * p.w + ix as usize]
                            };
                            let got = col[(c * kk + t) * nb * ho * wo + (i * ho + oy) * wo + ox];
                            assert_eq!(got, want, "k{k} s{s} p{pad} c{c} t{t} i{i} {oy},{ox}");
                        }
                    }
                }
            }
        }
        // <col2im(g), x> == <g, im2col(x)> on the chunk's images; other images untouched.
        let g = random(ch * kk * nb * ho * wo, 2);
        let mut d = vec![3.0f32; x.len()];
        let image_of = |j: usize| (j / (p.h * p.w)) % p.n;
        col2im(&mut d, &g, &p, ch, n0, nb, false);
        let lhs: f64 = d
            .iter()
            .zip(&x)
            .enumerate()
            .filter(|(j, _)| (n0..n0 + nb).contains(&image_of(*j)))
            .map(|(_, (a, b))| *a as f64 * *b as f64)
            .sum();
        let rhs: f64 = g.iter().zip(&col).map(|(a, b)| *a as f64 * *b as f64).sum();
        assert!((lhs - rhs).abs() <= 1e-5 * (1.0 + rhs.abs()), "{lhs} vs {rhs}");
        for c in 0..ch {
            assert!(d[c * p.n * p.h * p.w..][..p.h * p.w].iter().all(|&v| v == 3.0));
        }
        // Accumulating adds the same scatter on top.
        let mut d2 = d.clone();
        col2im(&mut d2, &g, &p, ch, n0, nb, true);
        for (j, (a, b)) in d2.iter().zip(&d).enumerate() {
            let want = if !(n0..n0 + nb).contains(&image_of(j)) { *b } else { 2.0 * b };
            assert!((a - want).abs() <= 1e-5 * (1.0 + want.abs()));
        }
    }
}

#[test]
fn forward_matches_direct_convolution() {
    for &(k, s, pad) in &GEOMETRIES {
        let p = shape(k, s, pad);
        for (si, (out_slice, in_slice)) in slice_cases().into_iter().enumerate() {
            let dp = dense_shape(&p, &out_slice, &in_slice);
            let wt = poisoned_weight(&p, &out_slice, &in_slice, 10 + si as u64);
            let x = random(in_slice.width * p.n * p.h * p.w, 20 + si as u64);
            let want = reference_forward(&x, &gather_weight(&wt, &p, &out_slice, &in_slice), &dp);
            for chunk in [0, 1, 2] {
                let mut col = vec![f32::NAN; workspace_len(&p, in_slice.width, chunk, Target::Cpu)];
                for accumulate in [false, true] {
                    let base = random(want.len(), 30);
                    let mut out = if accumulate { base.clone() } else { vec![f32::NAN; want.len()] };
                    conv2d_forward(&mut out, &x, &wt, &mut col, &p, out_slice, in_slice, chunk, accumulate, Algo::Fast);
                    let expect: Vec<f64> = if accumulate {
                        want.iter().zip(&base).map(|(w, b)| w + *b as f64).collect()
                    } else {
                        want.clone()
                    };
                    assert_close(
                        &out,
                        &expect,
                        tol(&p),
                        &format!("forward k{k} s{s} p{pad} slices {si} chunk {chunk} acc {accumulate}"),
                    );
                }
            }
        }
    }
}

/// Tolerance of a CPU convolution against the direct one in f64 (relative to `1 + |want|`): 1e-5
/// for im2col; 1e-4 on the layers the CPU runs by Winograd F(4x4, 3x3) (3x3, stride 1, pad 1),
/// whose transforms have entries up to 8 (`A^T`) and 5 (`B^T`) and add up terms several times
/// larger than the direct products: its f32 rounding is about ten times F(2x2, 3x3)'s (the
/// worst error over the million outputs of `winograd_cut_into_smaller_chunks_matches_direct` is
/// 3.2e-5 of their rms), still far below the 1e-3 the PyTorch reference allows.
fn tol(p: &ConvShape) -> f64 {
    if p.k == 3 && p.stride == 1 && p.pad == 1 {
        1e-4
    } else {
        1e-5
    }
}

#[test]
fn backward_matches_direct_gradients() {
    for &(k, s, pad) in &GEOMETRIES {
        let p = shape(k, s, pad);
        for (si, (out_slice, in_slice)) in slice_cases().into_iter().enumerate() {
            let dp = dense_shape(&p, &out_slice, &in_slice);
            let wt = poisoned_weight(&p, &out_slice, &in_slice, 40 + si as u64);
            let x = random(in_slice.width * p.n * p.h * p.w, 50 + si as u64);
            let r = random(out_slice.width * p.n * p.ho() * p.wo(), 60 + si as u64);
            let (want_dx, want_dw) = reference_backward(&r, &x, &gather_weight(&wt, &p, &out_slice, &in_slice), &dp);
            for chunk in [0, 1, 2] {
                let mut col = vec![f32::NAN; workspace_len(&p, in_slice.width, chunk, Target::Cpu)];
                for accumulate in [false, true] {
                    let base = random(x.len(), 70);
                    let mut dx = if accumulate { base.clone() } else { vec![f32::NAN; x.len()] };
                    let mut dw = vec![f32::NAN; want_dw.len()];
                    conv2d_backward(
                        Some(&mut dx),
                        &mut dw,
                        &r,
                        &x,
                        &wt,
                        &mut col,
                        &p,
                        out_slice,
                        in_slice,
                        chunk,
                        accumulate,
                        Algo::Fast,
                    );
                    let what = format!("k{k} s{s} p{pad} slices {si} chunk {chunk} acc {accumulate}");
                    assert_close(&dw, &want_dw, tol(&p), &format!("d_weight {what}"));
                    let expect: Vec<f64> = if accumulate {
                        want_dx.iter().zip(&base).map(|(w, b)| w + *b as f64).collect()
                    } else {
                        want_dx.clone()
                    };
                    assert_close(&dx, &expect, tol(&p), &format!("d_inp {what}"));
                }
                // Without d_inp only the weight gradient is computed.
                let mut dw = vec![f32::NAN; want_dw.len()];
                conv2d_backward(
                    None,
                    &mut dw,
                    &r,
                    &x,
                    &wt,
                    &mut col,
                    &p,
                    out_slice,
                    in_slice,
                    chunk,
                    false,
                    Algo::Fast,
                );
                assert_close(&dw, &want_dw, tol(&p), "d_weight without d_inp");
            }
        }
    }
}

/// `sum(r * out)` in f64 for the conv of `x` with `wt` (f32 ops inside the convolution).
#[allow(clippy::too_many_arguments)]
fn loss(r: &[f32], x: &[f32], wt: &[f32], p: &ConvShape, out_slice: Slice, in_slice: Slice, chunk: usize) -> f64 {
    let mut out = vec![0f32; r.len()];
    let mut col = vec![0f32; workspace_len(p, in_slice.width, chunk, Target::Cpu)];
    conv2d_forward(&mut out, x, wt, &mut col, p, out_slice, in_slice, chunk, false, Algo::Fast);
    out.iter().zip(r).map(|(a, b)| *a as f64 * *b as f64).sum()
}

fn rel_err(got: &[f64], want: &[f64]) -> f64 {
    let diff: f64 = got.iter().zip(want).map(|(a, b)| (a - b) * (a - b)).sum();
    let norm: f64 = want.iter().map(|b| b * b).sum();
    (diff / norm.max(1e-30)).sqrt()
}

#[test]
fn gradients_match_central_differences_and_the_adjoint_identity() {
    let cases = [
        ((3, 1, 1), Slice::full(6), Slice::full(5), 0),
        ((3, 2, 1), Slice::new(4, 4, 6), Slice::new(3, 4, 5), 2),
        ((1, 2, 0), Slice::new(1, 3, 6), Slice::new(4, 2, 5), 1),
        ((1, 1, 0), Slice::new(5, 2, 6), Slice::new(2, 4, 5), 0),
    ];
    let eps = 1e-2f32;
    for (ci, &((k, s, pad), out_slice, in_slice, chunk)) in cases.iter().enumerate() {
        let p = shape(k, s, pad);
        let kk = p.kk();
        let mut wt = random(p.cout * p.cin * kk, 80 + ci as u64);
        let mut x = random(in_slice.width * p.n * p.h * p.w, 90 + ci as u64);
        let r = random(out_slice.width * p.n * p.ho() * p.wo(), 100 + ci as u64);
        let mut dx = vec![0f32; x.len()];
        let mut dw = vec![0f32; out_slice.width * in_slice.width * kk];
        let mut col = vec![0f32; workspace_len(&p, in_slice.width, chunk, Target::Cpu)];
        conv2d_backward(
            Some(&mut dx),
            &mut dw,
            &r,
            &x,
            &wt,
            &mut col,
            &p,
            out_slice,
            in_slice,
            chunk,
            false,
            Algo::Fast,
        );

        // Central differences over every input element.
        let mut fd_x = Vec::with_capacity(x.len());
        for j in 0..x.len() {
            let v = x[j];
            x[j] = v + eps;
            let up = loss(&r, &x, &wt, &p, out_slice, in_slice, chunk);
            x[j] = v - eps;
            let down = loss(&r, &x, &wt, &p, out_slice, in_slice, chunk);
            x[j] = v;
            fd_x.push((up - down) / (2.0 * eps as f64));
        }
        let dx64: Vec<f64> = dx.iter().map(|&v| v as f64).collect();
        let e = rel_err(&dx64, &fd_x);
        assert!(e < 1e-2, "case {ci}: d_inp vs central differences: {e}");

        // ... and over every weight of the slice, in d_weight's order.
        let mut fd_w = Vec::with_capacity(dw.len());
        for &o in &channels_of(&out_slice) {
            for &c in &channels_of(&in_slice) {
                for t in 0..kk {
                    let j = (o * p.cin + c) * kk + t;
                    let v = wt[j];
                    wt[j] = v + eps;
                    let up = loss(&r, &x, &wt, &p, out_slice, in_slice, chunk);
                    wt[j] = v - eps;
                    let down = loss(&r, &x, &wt, &p, out_slice, in_slice, chunk);
                    wt[j] = v;
                    fd_w.push((up - down) / (2.0 * eps as f64));
                }
            }
        }
        let dw64: Vec<f64> = dw.iter().map(|&v| v as f64).collect();
        let e = rel_err(&dw64, &fd_w);
        assert!(e < 1e-2, "case {ci}: d_weight vs central differences: {e}");

        // Conv is bilinear: <r, conv(x, W)> = <d_inp, x> = <d_weight, W_slice>.
        let l = loss(&r, &x, &wt, &p, out_slice, in_slice, chunk);
        let via_x: f64 = dx.iter().zip(&x).map(|(a, b)| *a as f64 * *b as f64).sum();
        let w_slice = gather_weight(&wt, &p, &out_slice, &in_slice);
        let via_w: f64 = dw.iter().zip(&w_slice).map(|(a, b)| *a as f64 * *b as f64).sum();
        let scale = l.abs().max(1.0);
        assert!((l - via_x).abs() < 1e-5 * scale, "case {ci}: {l} vs {via_x}");
        assert!((l - via_w).abs() < 1e-5 * scale, "case {ci}: {l} vs {via_w}");
    }
}

#[test]
fn output_runs_write_only_their_rows_and_other_images_stay() {
    // A wrapping output slice writes rows in slice order: run 2's rows come first in the
    // layer but after run 1's in the buffer. Check that a chunked call leaves no column
    // block unwritten by filling the buffer with NaN first (done in the forward test) and that
    // two calls on disjoint halves of the output slice equal one call on the whole slice.
    let p = shape(3, 1, 1);
    let wt = random(p.cout * p.cin * 9, 5);
    let x = random(p.cin * p.n * p.h * p.w, 6);
    let full = Slice::new(4, 4, 6);
    let ncols = p.n * p.ho() * p.wo();
    let mut col = vec![0f32; workspace_len(&p, 5, 2, Target::Cpu)];
    let mut whole = vec![0f32; 4 * ncols];
    conv2d_forward(&mut whole, &x, &wt, &mut col, &p, full, Slice::full(5), 2, false, Algo::Fast);
    let mut a = vec![0f32; 2 * ncols];
    let mut b = vec![0f32; 2 * ncols];
    conv2d_forward(&mut a, &x, &wt, &mut col, &p, Slice::new(4, 2, 6), Slice::full(5), 2, false, Algo::Fast);
    conv2d_forward(&mut b, &x, &wt, &mut col, &p, Slice::new(0, 2, 6), Slice::full(5), 2, false, Algo::Fast);
    assert_eq!(&whole[..2 * ncols], &a[..]);
    assert_eq!(&whole[2 * ncols..], &b[..]);
}

/// Seconds this process's threads have spent on a CPU (Linux schedstat; 0 elsewhere). On a
/// shared machine wall time says little; CPU time says what the code costs.
fn cpu_seconds() -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    let mut ns = 0u64;
    for t in tasks.flatten() {
        if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
            ns += s.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0);
        }
    }
    ns as f64 * 1e-9
}

/// Best-of-`reps` (wall, CPU) seconds of `f`.
fn best_time(reps: usize, mut f: impl FnMut()) -> (f64, f64) {
    f();
    let mut best = (f64::INFINITY, f64::INFINITY);
    for _ in 0..reps {
        let (t, c) = (Instant::now(), cpu_seconds());
        f();
        let (wall, cpu) = (t.elapsed().as_secs_f64(), cpu_seconds() - c);
        best = (best.0.min(wall), best.1.min(cpu));
    }
    best
}

/// The layer the timing test measures, its tensors, and the figures every timing line needs.
struct TimedLayer {
    p: ConvShape,
    wt: Vec<f32>,
    x: Vec<f32>,
    dy: Vec<f32>,
    out: Vec<f32>,
    dx: Vec<f32>,
    dw: Vec<f32>,
    /// FLOPs of one full-width product (forward, dW or dcol).
    flop: f64,
    threads: f64,
}

impl TimedLayer {
    /// The 64 -> 64, 32x32, 3x3 convolution of WRN-16-4's first group at batch 32.
    fn wrn16_4() -> TimedLayer {
        let p = ConvShape { n: 32, cin: 64, h: 32, w: 32, cout: 64, k: 3, stride: 1, pad: 1 };
        let (wt, x, dy) = (random(64 * 64 * 9, 1), random(64 * p.n * 32 * 32, 2), random(64 * p.n * 32 * 32, 3));
        TimedLayer {
            out: vec![0f32; dy.len()],
            dx: vec![0f32; x.len()],
            dw: vec![0f32; wt.len()],
            flop: 2.0 * p.macs(64, 64) as f64,
            threads: rayon::current_num_threads() as f64,
            p,
            wt,
            x,
            dy,
        }
    }

    /// A (wall, CPU) time in ms: best wall / CPU time per thread.
    fn ms(&self, t: (f64, f64)) -> String {
        format!("{:7.2} / {:7.2} ms", t.0 * 1e3, t.1 / self.threads * 1e3)
    }

    /// `f` FLOPs over a (wall, CPU) time, as GFLOP/s both ways.
    fn rate(&self, f: f64, t: (f64, f64)) -> String {
        format!("{:6.1} / {:6.1} GFLOP/s", f / t.0 * 1e-9, f / (t.1 / self.threads) * 1e-9)
    }
}

#[test]
#[ignore]
fn timing_wrn16_4_layer() {
    let mut l = TimedLayer::wrn16_4();
    let p = &l.p;
    println!(
        "WRN-16-4 layer: N={} {}->{} {}x{} k{}: {:.2} GFLOP per GEMM, {} threads",
        p.n,
        p.cin,
        p.cout,
        p.h,
        p.w,
        p.k,
        l.flop * 1e-9,
        l.threads
    );
    println!("  (ms: best wall / best CPU-time divided by the thread count, i.e. the wall time on idle cores)");
    time_bare_gemms(&mut l);
    for chunk in [0, 8, 4, 2, 1] {
        time_chunked_conv(&mut l, chunk);
    }
    time_sliced_input(&mut l);
}

/// The bare products at the crate's best, whole batch: forward, dW and dcol shapes.
fn time_bare_gemms(l: &mut TimedLayer) {
    let p = l.p;
    // im2col columns of the whole batch (more than col_len, which sizes Winograd's workspace).
    let mut col = vec![0f32; 576 * p.n * 1024];
    im2col(&mut col, &l.x, &p, 64, 0, p.n);
    let ncols = p.n * 1024;
    let t = best_time(3, || {
        gemm(
            &mut l.out,
            Layout::contiguous(&[64, ncols]),
            &l.wt,
            Layout::contiguous(&[64, 576]),
            &col,
            Layout::contiguous(&[576, ncols]),
            false,
        )
    });
    println!("  bare GEMM Y = W col   : {} {}", l.ms(t), l.rate(l.flop, t));
    let t = best_time(3, || {
        gemm(
            &mut l.dw,
            Layout::contiguous(&[64, 576]),
            &l.dy,
            Layout::contiguous(&[64, ncols]),
            &col,
            Layout::contiguous(&[576, ncols]).transpose(0, 1),
            false,
        )
    });
    println!("  bare GEMM dW = dY col^T: {} {}", l.ms(t), l.rate(l.flop, t));
    let t = best_time(3, || {
        gemm(
            &mut col,
            Layout::contiguous(&[576, ncols]),
            &l.wt,
            Layout::contiguous(&[64, 576]).transpose(0, 1),
            &l.dy,
            Layout::contiguous(&[64, ncols]),
            false,
        )
    });
    println!("  bare GEMM dcol = W^T dY: {} {}", l.ms(t), l.rate(l.flop, t));
}

/// im2col, col2im, forward and backward of the whole layer with `chunk` images per product.
fn time_chunked_conv(l: &mut TimedLayer, chunk: usize) {
    let p = l.p;
    let (full_in, full_out) = (Slice::full(64), Slice::full(64));
    let nb = p.chunk_images(chunk);
    let chunks = (p.n / nb) as f64;
    let mut col = vec![0f32; workspace_len(&p, 64, chunk, Target::Cpu).max(576 * nb * 1024)];
    let t = best_time(3, || im2col(&mut col, &l.x, &p, 64, 0, nb));
    let t_i2c = (t.0 * chunks, t.1 * chunks);
    let t = best_time(3, || col2im(&mut l.dx, &col, &p, 64, 0, nb, false));
    let t_c2i = (t.0 * chunks, t.1 * chunks);
    let t_f = best_time(3, || {
        conv2d_forward(&mut l.out, &l.x, &l.wt, &mut col, &p, full_out, full_in, chunk, false, Algo::Fast)
    });
    let t_b = best_time(3, || {
        conv2d_backward(
            Some(&mut l.dx),
            &mut l.dw,
            &l.dy,
            &l.x,
            &l.wt,
            &mut col,
            &p,
            full_out,
            full_in,
            chunk,
            false,
            Algo::Fast,
        )
    });
    let t_fb = (t_f.0 + t_b.0, t_f.1 + t_b.1);
    println!("  chunk {nb:2}: im2col {}, col2im {}", l.ms(t_i2c), l.ms(t_c2i));
    println!("            forward  {} {}", l.ms(t_f), l.rate(l.flop, t_f));
    println!("            backward {} {}", l.ms(t_b), l.rate(2.0 * l.flop, t_b));
    println!("            fwd+bwd  {} {}", l.ms(t_fb), l.rate(3.0 * l.flop, t_fb));
}

/// SliceOut at keep 0.5 on conv2's input (wrapping): half the work.
fn time_sliced_input(l: &mut TimedLayer) {
    let p = l.p;
    let full_out = Slice::full(64);
    let in_half = Slice::new(48, 32, 64);
    let xs = random(32 * p.n * 1024, 4);
    let mut dxs = vec![0f32; xs.len()];
    let mut dws = vec![0f32; 64 * 32 * 9];
    let mut col = vec![0f32; workspace_len(&p, 32, 8, Target::Cpu)];
    let t_f =
        best_time(3, || conv2d_forward(&mut l.out, &xs, &l.wt, &mut col, &p, full_out, in_half, 8, false, Algo::Fast));
    let t_b = best_time(3, || {
        conv2d_backward(
            Some(&mut dxs),
            &mut dws,
            &l.dy,
            &xs,
            &l.wt,
            &mut col,
            &p,
            full_out,
            in_half,
            8,
            false,
            Algo::Fast,
        )
    });
    let t_fb = (t_f.0 + t_b.0, t_f.1 + t_b.1);
    println!("  keep 0.5 wrapping input slice, chunk 8: fwd+bwd {} {}", l.ms(t_fb), l.rate(1.5 * l.flop, t_fb));
}

#[test]
fn winograd_large_layer_matches_direct() {
    // A WRN-10-2 first-group layer (32x32, 16 -> 32 channels): many tiles per row and chunked
    // products, where only the Winograd path's precision is at stake.
    let p = ConvShape { n: 2, cin: 16, h: 32, w: 32, cout: 32, k: 3, stride: 1, pad: 1 };
    let wt = random(p.cout * p.cin * 9, 81);
    let x = random(p.cin * p.n * 1024, 82);
    let r = random(p.cout * p.n * 1024, 83);
    let (want_dx, want_dw) = reference_backward(&r, &x, &wt, &p);
    let want_y = reference_forward(&x, &wt, &p);
    let mut col = vec![f32::NAN; workspace_len(&p, 16, 0, Target::Cpu)];
    let mut y = vec![f32::NAN; want_y.len()];
    let (so, si) = (Slice::full(32), Slice::full(16));
    conv2d_forward(&mut y, &x, &wt, &mut col, &p, so, si, 0, false, Algo::Fast);
    let mut dx = vec![f32::NAN; x.len()];
    let mut dw = vec![f32::NAN; wt.len()];
    conv2d_backward(Some(&mut dx), &mut dw, &r, &x, &wt, &mut col, &p, so, si, 0, false, Algo::Fast);
    let err = |g: &[f32], w: &[f64]| {
        let m = w.iter().fold(0f64, |a, b| a.max(b.abs()));
        g.iter().zip(w).fold(0f64, |a, (g, w)| a.max((*g as f64 - w).abs())) / m
    };
    let (ey, edx, edw) = (err(&y, &want_y), err(&dx, &want_dx), err(&dw, &want_dw));
    println!("winograd rel err: y {ey:.2e} dx {edx:.2e} dw {edw:.2e}");
    let mut col2 = vec![0f32; workspace_len(&p, si.width, 0, Target::Cpu)];
    let mut y2 = vec![f32::NAN; want_y.len()];
    conv2d_forward(&mut y2, &x, &wt, &mut col2, &p, so, si, 0, false, Algo::Im2col);
    println!("im2col rel err: y {:.2e}", err(&y2, &want_y));
    let rms =
        |g: &[f32]| (g.iter().zip(&want_y).map(|(a, b)| (*a as f64 - b).powi(2)).sum::<f64>() / g.len() as f64).sqrt();
    println!("rms err winograd {:.2e} im2col {:.2e}", rms(&y), rms(&y2));
    assert!(ey < 1e-5 && edx < 1e-5 && edw < 1e-5);
}

/// On a layer where Winograd applies, both algorithms match the direct f64 convolution, and
/// `Algo::Im2col` really takes the other path (the two differ in rounding).
#[test]
fn both_algorithms_match_the_direct_convolution() {
    let mut rng = Rng::new(17, 1);
    let p = ConvShape { n: 2, cin: 6, h: 8, w: 8, cout: 5, k: 3, stride: 1, pad: 1 };
    let x: Vec<f32> = (0..6 * 2 * 64).map(|_| rng.normal()).collect();
    let wt: Vec<f32> = (0..5 * 6 * 9).map(|_| rng.normal()).collect();
    let want = reference_forward(&x, &wt, &p);
    let mut col = vec![0f32; workspace_len(&p, 6, 0, Target::Cpu)];
    let mut outs = vec![];
    for algo in [Algo::Fast, Algo::Im2col] {
        let mut out = vec![0f32; 5 * 2 * 64];
        conv2d_forward(&mut out, &x, &wt, &mut col, &p, Slice::full(5), Slice::full(6), 0, false, algo);
        let err = out.iter().zip(&want).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max);
        assert!(err < 1e-4, "{algo:?}: {err}");
        outs.push(out);
    }
    assert_ne!(outs[0], outs[1], "Im2col took the Winograd path");
}

/// Winograd on shapes that exercise the transforms' blocking: a row of more tiles than one
/// block (w = 131, odd, so its last tile is half outside) and odd heights, forward (written and
/// accumulated) and both gradients against the direct f64 convolution.
#[test]
fn winograd_wide_and_odd_images_match_direct() {
    for (h, w) in [(5usize, 131usize), (3, 5), (9, 2)] {
        let p = ConvShape { n: 2, cin: 4, h, w, cout: 3, k: 3, stride: 1, pad: 1 };
        let hw = h * w;
        let wt = random(p.cout * p.cin * 9, 91);
        let x = random(p.cin * p.n * hw, 92);
        let r = random(p.cout * p.n * hw, 93);
        let want_y = reference_forward(&x, &wt, &p);
        let (want_dx, want_dw) = reference_backward(&r, &x, &wt, &p);
        let mut col = vec![f32::NAN; workspace_len(&p, 4, 0, Target::Cpu)];
        let (so, si) = (Slice::full(3), Slice::full(4));
        let close = |got: &[f32], want: &[f64], what: &str| {
            assert_eq!(got.len(), want.len());
            for (k, (g, w)) in got.iter().zip(want).enumerate() {
                assert!((*g as f64 - w).abs() < 1e-4 * (1.0 + w.abs()), "{h}x{w} {what}[{k}]: {g} vs {w}");
            }
        };
        let mut y = vec![f32::NAN; want_y.len()];
        conv2d_forward(&mut y, &x, &wt, &mut col, &p, so, si, 0, false, Algo::Fast);
        close(&y, &want_y, "y");
        let mut y2 = vec![1f32; want_y.len()];
        conv2d_forward(&mut y2, &x, &wt, &mut col, &p, so, si, 0, true, Algo::Fast);
        let want_y2: Vec<f64> = want_y.iter().map(|v| v + 1.0).collect();
        close(&y2, &want_y2, "y+=");
        let mut dx = vec![f32::NAN; x.len()];
        let mut dw = vec![f32::NAN; wt.len()];
        conv2d_backward(Some(&mut dx), &mut dw, &r, &x, &wt, &mut col, &p, so, si, 0, false, Algo::Fast);
        close(&dx, &want_dx, "dx");
        close(&dw, &want_dw, "dw");
    }
}

/// Images large enough that the CPU walks the plan's chunk in smaller ones (`cpu_chunk`), with
/// wrapping slices: forward (written and accumulated) and both gradients, the weight gradient
/// summed across the smaller chunks, against the direct f64 convolution, within the workspace
/// the plan gives the whole chunk.
#[test]
fn winograd_cut_into_smaller_chunks_matches_direct() {
    // Both algorithms: F(2x2, 3x3) below 64 input channels, F(4x4, 3x3) from there.
    let small = ConvShape { n: 3, cin: 20, h: 130, w: 127, cout: 18, k: 3, stride: 1, pad: 1 };
    let cases = [
        (small, Slice::new(9, 16, 18), Slice::new(11, 14, 20)),
        (ConvShape { cin: 64, ..small }, Slice::new(9, 16, 18), Slice::new(40, 50, 64)),
    ];
    for ((p, so, si), chunk) in cases.into_iter().flat_map(|c| [(c, 0), (c, 2)]) {
        let sub = super::winograd::cpu_chunk(&p, si.width, so.width, chunk);
        assert!(sub < p.chunk_images(chunk), "chunk {chunk} is walked whole ({sub} images)");
        let hw = p.h * p.w;
        let dp = dense_shape(&p, &so, &si);
        let wt = poisoned_weight(&p, &so, &si, 95);
        let gathered = gather_weight(&wt, &p, &so, &si);
        let x = random(si.width * p.n * hw, 96);
        let r = random(so.width * p.n * hw, 97);
        let want_y = reference_forward(&x, &gathered, &dp);
        let (want_dx, want_dw) = reference_backward(&r, &x, &gathered, &dp);
        let mut col = vec![f32::NAN; workspace_len(&p, si.width, chunk, Target::Cpu)];
        let mut y = vec![f32::NAN; want_y.len()];
        conv2d_forward(&mut y, &x, &wt, &mut col, &p, so, si, chunk, false, Algo::Fast);
        assert_close_to_scale(&y, &want_y, WINOGRAD_TOL, &format!("y, chunk {chunk}"));
        let mut y2 = vec![1f32; want_y.len()];
        conv2d_forward(&mut y2, &x, &wt, &mut col, &p, so, si, chunk, true, Algo::Fast);
        let want_y2: Vec<f64> = want_y.iter().map(|v| v + 1.0).collect();
        assert_close_to_scale(&y2, &want_y2, WINOGRAD_TOL, &format!("y+=, chunk {chunk}"));
        let mut dx = vec![f32::NAN; x.len()];
        let mut dw = vec![f32::NAN; want_dw.len()];
        conv2d_backward(Some(&mut dx), &mut dw, &r, &x, &wt, &mut col, &p, so, si, chunk, false, Algo::Fast);
        assert_close_to_scale(&dx, &want_dx, WINOGRAD_TOL, &format!("dx, chunk {chunk}"));
        assert_close_to_scale(&dw, &want_dw, WINOGRAD_TOL, &format!("dw, chunk {chunk}"));
    }
}

/// bf16 convolutions against the f32 ones from the same inputs (activations and gradients
/// bf16-exact, the weight f32 as stored). The bf16 op rounds the slice of its weight once
/// (`copy_weight`) and runs the dense twin with bf16 columns; the f32 op reads the weight
/// through strided views. With u = 2^-8, per element (the sums `S` are the f32 ops on |x|, |w|
/// and |dy|, so each bound is the element's own):
///
/// - forward: the rounded weight errs by at most u S(|w||x|), the stored output by u of
///   itself, so |y16 - y32| <= 2.01 u (S(|w||x|) + |prior|) when accumulating onto `prior`;
/// - d_inp: the rounded weight u S(|w||dy|), the bf16 columns of W^T dY u each (col2im adds up
///   at most S(|w||dy|) of them), the stored result u: 3.01 u (S(|w||dy|) + |prior|);
/// - d_weight: exact products of the same values summed in f32 in other orders (dense twin vs
///   views): 2 n 2^-24 S(|dy||x|) for sums of n = N*Ho*Wo terms.
///
/// The 0.01 covers the f32 sums' own roundoff. The bf16 path is asked for Winograd (`Fast`),
/// which it must not take. Without a copy (a layer whose backward makes no input gradient) the
/// weight gradient is the f32 one's bits: packing widens bf16 values exactly.
#[test]
fn bf16_convolution_is_within_its_rounding_bounds_of_f32() {
    use crate::ir::Bf16;
    use crate::ops::testutil::{to_bf16, widen};
    let u = 2f64.powi(-8);
    let bf = |v: Vec<f32>| widen(&to_bf16(&v));
    let abs = |v: &[f32]| v.iter().map(|x| x.abs()).collect::<Vec<f32>>();
    let mut seed = 500;
    for (k, stride, pad) in GEOMETRIES {
        let p = shape(k, stride, pad);
        for (os, is) in slice_cases() {
            seed += 1;
            let (ow, iw, kk) = (os.width, is.width, p.kk());
            let (in_len, out_len) = (iw * p.n * p.h * p.w, ow * p.n * p.ho() * p.wo());
            let (x, w) = (bf(random(in_len, seed)), random(p.cout * p.cin * kk, seed + 1000));
            let (dy, prior_y, prior_x) =
                (bf(random(out_len, seed + 2000)), bf(random(out_len, seed + 3000)), bf(random(in_len, seed + 4000)));
            let (x16, dy16) = (to_bf16(&x), to_bf16(&dy));
            let chunk = 2;
            let mut col = vec![0f32; p.im2col_len(iw, chunk).max(1)];
            let mut col16 = vec![Bf16::default(); col.len()];
            let mut copy = vec![Bf16::default(); ow * iw * kk];
            copy_weight(&mut copy, &w, &p, os, is);
            assert_eq!(copy, to_bf16(&gather_weight(&w, &p, &os, &is)), "the copy is the rounded slice");
            let (dense, fo, fi) = dense_twin(&p, os, is);
            let what = format!("{p:?} {os:?} {is:?}");

            let mut s_y = vec![0f32; out_len];
            conv2d_forward(&mut s_y, &abs(&x), &abs(&w), &mut col, &p, os, is, chunk, false, Algo::Im2col);
            let mut s_dx = vec![0f32; in_len];
            let mut s_dw = vec![0f32; ow * iw * kk];
            let (ax, aw, ady) = (abs(&x), abs(&w), abs(&dy));
            conv2d_backward(
                Some(&mut s_dx),
                &mut s_dw,
                &ady,
                &ax,
                &aw,
                &mut col,
                &p,
                os,
                is,
                chunk,
                false,
                Algo::Im2col,
            );

            for accumulate in [false, true] {
                let (mut y32, mut y16) = (prior_y.clone(), to_bf16(&prior_y));
                conv2d_forward(&mut y32, &x, &w, &mut col, &p, os, is, chunk, accumulate, Algo::Im2col);
                conv2d_forward(&mut y16, &x16, &copy, &mut col16, &dense, fo, fi, chunk, accumulate, Algo::Fast);
                for i in 0..out_len {
                    let prior = if accumulate { prior_y[i].abs() as f64 } else { 0.0 };
                    let bound = 2.01 * u * (s_y[i] as f64 + prior);
                    let err = (y16[i].to_f32() as f64 - y32[i] as f64).abs();
                    assert!(err <= bound, "forward {what} acc {accumulate} [{i}]: {err} > {bound}");
                }

                let (mut dx32, mut dx16) = (prior_x.clone(), to_bf16(&prior_x));
                let (mut dw32, mut dw16) = (vec![0f32; ow * iw * kk], vec![0f32; ow * iw * kk]);
                let acc = accumulate;
                conv2d_backward(
                    Some(&mut dx32),
                    &mut dw32,
                    &dy,
                    &x,
                    &w,
                    &mut col,
                    &p,
                    os,
                    is,
                    chunk,
                    acc,
                    Algo::Im2col,
                );
                let dx = Some(&mut dx16[..]);
                conv2d_backward(dx, &mut dw16, &dy16, &x16, &copy, &mut col16, &dense, fo, fi, chunk, acc, Algo::Fast);
                for i in 0..in_len {
                    let prior = if accumulate { prior_x[i].abs() as f64 } else { 0.0 };
                    let bound = 3.01 * u * (s_dx[i] as f64 + prior);
                    let err = (dx16[i].to_f32() as f64 - dx32[i] as f64).abs();
                    assert!(err <= bound, "d_inp {what} acc {accumulate} [{i}]: {err} > {bound}");
                }
                let n_terms = (p.n * p.ho() * p.wo()) as f64;
                for i in 0..dw32.len() {
                    let bound = 2.0 * n_terms * 2f64.powi(-24) * s_dw[i] as f64;
                    let err = (dw16[i] as f64 - dw32[i] as f64).abs();
                    assert!(err <= bound, "d_weight {what} [{i}]: {err} > {bound}");
                }
            }

            let mut dw_views = vec![0f32; ow * iw * kk];
            conv2d_backward(None, &mut dw_views, &dy16, &x16, &w, &mut col16, &p, os, is, chunk, false, Algo::Fast);
            let mut dw32 = vec![0f32; ow * iw * kk];
            conv2d_backward(None, &mut dw32, &dy, &x, &w, &mut col, &p, os, is, chunk, false, Algo::Im2col);
            if crate::blas::kernel() == crate::blas::Kernel::Avx512Bf16 {
                // The pair dot product adds a pair's two exact products in its own order: the
                // f32 sums differ by roundings, within the bound above.
                let n_terms = (p.n * p.ho() * p.wo()) as f64;
                for i in 0..dw32.len() {
                    let bound = 2.0 * n_terms * 2f64.powi(-24) * s_dw[i] as f64;
                    let err = (dw_views[i] as f64 - dw32[i] as f64).abs();
                    assert!(err <= bound, "{what}: dW without a copy [{i}]: {err} > {bound}");
                }
            } else {
                assert!(
                    dw_views.iter().zip(&dw32).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{what}: dW without a copy"
                );
            }
        }
    }
}

/// `copy_weight_flipped`: entry `[i][o*kk + t]` is the sliced weight's `[o][i][kk-1-t]` (kh and kw
/// both reversed), channels in slice order, wrapping slices included, k = 1, 3, 5; a bf16 copy
/// is those values each rounded once.
#[test]
fn the_flipped_weight_copy_is_the_transposed_slice_with_taps_reversed() {
    use crate::ir::Bf16;
    for (k, cout, cin) in [(3, 5, 7), (5, 4, 6), (1, 6, 3)] {
        let p = ConvShape { n: 1, cin, h: 5, w: 5, cout, k, stride: 1, pad: k / 2 };
        let w = random(cout * cin * k * k, 40 + k as u64);
        let kk = p.kk();
        let picks = [
            (Slice::full(cout), Slice::full(cin)),
            (Slice::new(cout - 1, 3, cout), Slice::full(cin)),
            (Slice::full(cout), Slice::new(cin - 2, 3, cin)),
            (Slice::new(2, cout - 1, cout), Slice::new(1, 2, cin)),
        ];
        for (os, is) in picks {
            let (ow, iw) = (os.width, is.width);
            let mut copy = vec![f32::NAN; iw * ow * kk];
            copy_weight_flipped(&mut copy, &w, &p, os, is);
            let (outs, ins) = (channels_of(&os), channels_of(&is));
            for (i, &ci) in ins.iter().enumerate() {
                for (o, &co) in outs.iter().enumerate() {
                    for kh in 0..k {
                        for kw in 0..k {
                            let want = w[((co * cin + ci) * k + kh) * k + kw];
                            let got = copy[(i * ow + o) * kk + (k - 1 - kh) * k + (k - 1 - kw)];
                            assert_eq!(got, want, "k {k} {os:?} {is:?} ({ci}, {co}, {kh}, {kw})");
                        }
                    }
                }
            }
            let mut copy16 = vec![Bf16::default(); copy.len()];
            copy_weight_flipped(&mut copy16, &w, &p, os, is);
            assert!(copy16.iter().zip(&copy).all(|(a, &b)| *a == Bf16::from_f32(b)), "bf16 rounds once");
        }
    }
}

/// A BN whose statistics and affine parameters make ReLU cut about half of the values, over
/// `slice`'s channels: `(mean, invstd, gamma, beta)`, the first two in slice order (`w`
/// entries), the last two over the layer's channels.
fn bn_params(slice: &Slice, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
    let w = slice.width;
    let mean = random(w, seed);
    let invstd = random(w, seed + 1).iter().map(|v| 0.5 + v.abs()).collect();
    (mean, invstd, random(slice.channels, seed + 2), random(slice.channels, seed + 3))
}

/// The folded convolutions' cases: 3x3 stride 1 and 2, 1x1 stride 2 (direct layers cannot
/// fold), over the whole input, a slice and a wrapping slice (its scale `c/w` applied).
fn fold_cases() -> Vec<(ConvShape, Slice, Slice)> {
    let mut v = vec![];
    for (k, stride, pad) in [(3, 1, 1), (3, 2, 1), (1, 2, 0)] {
        let p = ConvShape { n: 3, cin: 6, h: 7, w: 6, cout: 5, k, stride, pad };
        v.extend([
            (p, Slice::full(5), Slice::full(6)),
            (p, Slice::full(5), Slice::new(1, 3, 6)),
            (p, Slice::new(3, 4, 5), Slice::new(4, 4, 6)),
        ]);
    }
    v
}

/// The BN + ReLU output `bn_relu_apply` writes (what a backward pass recomputes), and the fold
/// that gathers the same from `x`.
fn applied<'a, T: crate::ir::Elem>(
    x: &[T],
    bn: &'a (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>),
    stats: &'a [f32],
    is: Slice,
    m: usize,
) -> (Vec<T>, BnReluFold<'a>) {
    let mut out = vec![T::default(); x.len()];
    crate::ops::batchnorm::bn_relu_apply(&mut out, x, stats, &bn.2, &bn.3, is, m, is.scale());
    let (mean, invstd) = stats.split_at(is.width);
    (out, BnReluFold { mean, invstd, gamma: &bn.2, beta: &bn.3, slice: is, scale: is.scale() })
}

/// The folded im2col gathers, bit for bit, what im2col gathers from the recomputed BN output,
/// in f32 and bf16, for every chunk of images; the padding stays 0. Planes up to `FOLD_PLANE`
/// values are normalised on the stack first, a larger one (130x130) value by value.
#[test]
fn im2col_bn_relu_gathers_exactly_the_recomputed_bn_output() {
    use crate::ops::testutil::to_bf16;
    let large = ConvShape { n: 3, cin: 2, h: 130, w: 130, cout: 2, k: 3, stride: 2, pad: 1 };
    let cases = fold_cases().into_iter().chain([(large, Slice::full(2), Slice::new(1, 2, 2))]);
    for (i, (p, _, is)) in cases.enumerate() {
        let m = p.n * p.h * p.w;
        let bn = bn_params(&is, 10 + i as u64);
        let stats = [bn.0.clone(), bn.1.clone()].concat();
        let x = random(is.width * m, 20 + i as u64);
        let (out, fold) = applied(&x, &bn, &stats, is, m);
        let (x16, out16) = (to_bf16(&x), applied(&to_bf16(&x), &bn, &stats, is, m).0);
        for (n0, nb) in [(0, p.n), (1, 2)] {
            let len = p.im2col_len(is.width, nb);
            let (mut want, mut got) = (vec![f32::NAN; len], vec![f32::NAN; len]);
            im2col(&mut want, &out, &p, is.width, n0, nb);
            im2col_bn_relu(&mut got, &x, &p, is.width, n0, nb, &fold);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "f32 {p:?} {is:?} images {n0}+{nb}");
            assert!(got.contains(&0.0) && got.iter().any(|&v| v > 0.0), "ReLU cut some, not all");
            let (mut want16, mut got16) = (to_bf16(&want), to_bf16(&got));
            im2col(&mut want16, &out16, &p, is.width, n0, nb);
            im2col_bn_relu(&mut got16, &x16, &p, is.width, n0, nb, &fold);
            assert_eq!(got16, want16, "bf16 {p:?} {is:?} images {n0}+{nb}");
        }
    }
}

/// The backward of a convolution of the BN output, folded (reading the BN's input), gives the
/// same weight and input gradients, to the bit, as the backward of the recomputed output: by
/// col2im for every case and chunk, and by convolution (the dense twin of a stride-1 layer with
/// its flipped weight), overwriting and accumulating.
#[test]
fn a_folded_backward_is_bit_identical_to_the_backward_of_the_recomputed_output() {
    for (i, (p, os, is)) in fold_cases().into_iter().enumerate() {
        let m = p.n * p.h * p.w;
        let bn = bn_params(&is, 30 + i as u64);
        let stats = [bn.0.clone(), bn.1.clone()].concat();
        let x = random(is.width * m, 40 + i as u64);
        let (out, fold) = applied(&x, &bn, &stats, is, m);
        let wt = random(p.cout * p.cin * p.kk(), 50 + i as u64);
        let dy = random(os.width * p.n * p.ho() * p.wo(), 60 + i as u64);
        let d0 = random(x.len(), 70 + i as u64);
        let dw_len = os.width * is.width * p.kk();
        for (chunk, acc) in [(0, false), (2, true), (1, false)] {
            let what = format!("{p:?} {os:?} {is:?} chunk {chunk} acc {acc}");
            let mut col = vec![f32::NAN; p.im2col_len(is.width, chunk)];
            let (mut dx, mut dw) = (d0.clone(), vec![f32::NAN; dw_len]);
            conv2d_backward(Some(&mut dx), &mut dw, &dy, &out, &wt, &mut col, &p, os, is, chunk, acc, Algo::Im2col);
            let (mut fdx, mut fdw) = (d0.clone(), vec![f32::NAN; dw_len]);
            conv2d_backward_with(
                Some(&mut fdx),
                &mut fdw,
                &dy,
                &x,
                &wt,
                &mut col,
                &p,
                os,
                is,
                chunk,
                acc,
                Algo::Fast,
                Some(fold),
            );
            assert_eq!(fdw, dw, "d_weight {what}");
            assert_eq!(fdx, dx, "d_inp {what}");
            if !lowering::input_grad_by_conv_fits(&p, os.width, is.width) {
                continue;
            }
            let mut flipped = vec![0f32; dw_len];
            copy_weight_flipped(&mut flipped, &wt, &p, os, is);
            let (dense, ..) = dense_twin(&p, os, is);
            let mut by_conv = |inp: &[f32], fold| {
                let (mut dx, mut dw) = (d0.clone(), vec![f32::NAN; dw_len]);
                conv2d_backward_by_conv(&mut dx, &mut dw, &dy, inp, &flipped, &mut col, &dense, chunk, acc, fold);
                (dx, dw)
            };
            assert_eq!(by_conv(&x, Some(fold)), by_conv(&out, None), "by convolution {what}");
        }
    }
}

/// A direct (1x1, stride-1) layer's GEMM reads its input in place: it cannot fold the BN.
#[test]
#[should_panic(expected = "no BN fold")]
fn a_direct_convolution_refuses_a_bn_fold() {
    let p = ConvShape { n: 2, cin: 4, h: 3, w: 3, cout: 2, k: 1, stride: 1, pad: 0 };
    let is = Slice::full(4);
    let bn = bn_params(&is, 1);
    let stats = [bn.0.clone(), bn.1.clone()].concat();
    let x = random(4 * 18, 2);
    let (_, fold) = applied(&x, &bn, &stats, is, 18);
    let (mut dw, dy) = (vec![0f32; 8], random(2 * 18, 3));
    conv2d_backward_with(
        None,
        &mut dw,
        &dy,
        &x,
        &random(8, 4),
        &mut [],
        &p,
        Slice::full(2),
        is,
        0,
        false,
        Algo::Fast,
        Some(fold),
    );
}

/// Times, in bf16 on a WRN-16-4 block1 layer's shape (32 images, 64 channels, 32x32), the
/// folded im2col of a 27-image chunk against the two ops it replaces: BN apply over the batch
/// and im2col of the chunk (`cargo test --release timing_folded_im2col -- --ignored --nocapture`).
#[test]
#[ignore]
fn timing_folded_im2col() {
    use crate::ir::Bf16;
    use crate::ops::testutil::to_bf16;
    let p = ConvShape { n: 32, cin: 64, h: 32, w: 32, cout: 64, k: 3, stride: 1, pad: 1 };
    let (is, m, nb) = (Slice::full(64), 32 * 1024, 27);
    let bn = bn_params(&is, 1);
    let stats = [bn.0.clone(), bn.1.clone()].concat();
    let x = to_bf16(&random(64 * m, 2));
    let (mut out, fold) = applied(&x, &bn, &stats, is, m);
    let mut col = vec![Bf16::default(); p.im2col_len(64, nb)];
    let ms = |f: &mut dyn FnMut()| best_time(20, f).0 * 1e3;
    for _ in 0..3 {
        let apply = ms(&mut || crate::ops::batchnorm::bn_relu_apply(&mut out, &x, &stats, &bn.2, &bn.3, is, m, 1.0));
        let gather = ms(&mut || im2col(&mut col, &out, &p, 64, 0, nb));
        let folded = ms(&mut || im2col_bn_relu(&mut col, &x, &p, 64, 0, nb, &fold));
        println!(
            "BN apply (32 images) {apply:.3} ms, im2col {gather:.3} ms, folded im2col {folded:.3} ms ({nb} images)"
        );
    }
}
