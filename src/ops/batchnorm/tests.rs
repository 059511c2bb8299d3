use super::cpu::*;
use super::*;
use crate::ops::testutil::{normals, rel_err, to_f64};
use crate::rng::Rng;

const C: usize = 6;
const M: usize = 24; // N = 2, H = 3, W = 4

fn slices() -> [Slice; 3] {
    [Slice::full(C), Slice::new(1, 3, C), Slice::new(4, 4, C)]
}

fn layer_channel(slice: Slice, j: usize) -> usize {
    (slice.start + j) % slice.channels
}

/// f64 re-implementation of the train-mode forward: the output and the pre-activations.
fn reference(inp: &[f64], gamma: &[f64], beta: &[f64], slice: Slice, m: usize, scale: f64) -> (Vec<f64>, Vec<f64>) {
    let mut out = vec![0.0; inp.len()];
    let mut pre = vec![0.0; inp.len()];
    for j in 0..slice.width {
        let ch = layer_channel(slice, j);
        let x = &inp[j * m..(j + 1) * m];
        let mean = x.iter().sum::<f64>() / m as f64;
        let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / m as f64;
        let invstd = 1.0 / (var + 1e-5).sqrt();
        for t in 0..m {
            let p = gamma[ch] * (x[t] - mean) * invstd + beta[ch];
            pre[j * m + t] = p;
            out[j * m + t] = p.max(0.0) * scale;
        }
    }
    (out, pre)
}

struct Case {
    inp: Vec<f32>,
    gamma: Vec<f32>,
    beta: Vec<f32>,
    rm: Vec<f32>,
    rv: Vec<f32>,
}

fn case(rng: &mut Rng, slice: Slice, m: usize) -> Case {
    // Non-zero mean and non-unit spread so normalisation has work to do.
    let inp = normals(rng, slice.width * m).into_iter().map(|v| 2.5 * v + 1.5).collect();
    let gamma = normals(rng, slice.channels).into_iter().map(|v| 1.0 + 0.3 * v).collect();
    let beta = normals(rng, slice.channels).into_iter().map(|v| 0.3 * v).collect();
    let rm = normals(rng, slice.channels);
    let rv = (0..slice.channels).map(|_| 0.5 + rng.uniform()).collect();
    Case { inp, gamma, beta, rm, rv }
}

fn run_train(cs: &mut Case, slice: Slice, m: usize, scale: f32) -> (Vec<f32>, Vec<f32>) {
    let mut out = vec![f32::NAN; slice.width * m];
    let mut stats = vec![f32::NAN; 2 * slice.width];
    bn_relu_train(
        &mut out,
        &mut stats,
        &cs.inp,
        &cs.gamma,
        &cs.beta,
        &mut cs.rm,
        &mut cs.rv,
        slice,
        m,
        scale,
        BN_MOMENTUM as f64,
    );
    (out, stats)
}

#[test]
fn train_matches_f64_formulas_and_updates_only_the_slice_running_stats() {
    let mut rng = Rng::new(11, 0);
    for slice in slices() {
        let mut cs = case(&mut rng, slice, M);
        let (rm0, rv0) = (cs.rm.clone(), cs.rv.clone());
        let scale = slice.scale();
        let (out, stats) = run_train(&mut cs, slice, M, scale);
        let (want, _) = reference(&to_f64(&cs.inp), &to_f64(&cs.gamma), &to_f64(&cs.beta), slice, M, scale as f64);
        for (t, (&o, &w)) in out.iter().zip(&want).enumerate() {
            assert!((o as f64 - w).abs() < 1e-5 * (1.0 + w.abs()), "out[{t}] {o} vs {w}");
        }
        let mut kept = [false; C];
        for j in 0..slice.width {
            let ch = layer_channel(slice, j);
            kept[ch] = true;
            let x = to_f64(&cs.inp[j * M..(j + 1) * M]);
            let mean = x.iter().sum::<f64>() / M as f64;
            let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / M as f64;
            assert!(rel_err(stats[j] as f64, mean, 1e-6) < 1e-6, "mean {j}");
            let invstd = 1.0 / (var + 1e-5).sqrt();
            assert!(rel_err(stats[slice.width + j] as f64, invstd, 1e-6) < 1e-6);
            let rm = 0.9 * rm0[ch] as f64 + 0.1 * mean;
            let rv = 0.9 * rv0[ch] as f64 + 0.1 * var * M as f64 / (M - 1) as f64;
            assert!(rel_err(cs.rm[ch] as f64, rm, 1e-6) < 1e-6, "running mean {ch}");
            assert!(rel_err(cs.rv[ch] as f64, rv, 1e-6) < 1e-6, "running var {ch}");
        }
        for ch in (0..C).filter(|&ch| !kept[ch]) {
            assert_eq!(cs.rm[ch].to_bits(), rm0[ch].to_bits(), "untouched mean {ch}");
            assert_eq!(cs.rv[ch].to_bits(), rv0[ch].to_bits(), "untouched var {ch}");
        }
        // Some outputs are clipped by ReLU and some are not: the test exercises both sides.
        assert!(out.contains(&0.0) && out.iter().any(|&v| v > 0.0));
    }
}

#[test]
fn variance_is_exact_for_a_large_mean() {
    // A one-pass f32 sum of squares would lose the variance entirely here.
    let slice = Slice::full(1);
    let inp: Vec<f32> = (0..M).map(|t| 1000.0 + (t % 2) as f32 * 0.01).collect();
    let (gamma, beta) = (vec![1.0], vec![0.0]);
    let (mut rm, mut rv) = (vec![0.0], vec![1.0]);
    let (mut out, mut stats) = (vec![0.0; M], vec![0.0; 2]);
    bn_relu_train(&mut out, &mut stats, &inp, &gamma, &beta, &mut rm, &mut rv, slice, M, 1.0, BN_MOMENTUM as f64);
    let x = to_f64(&inp);
    let mean = x.iter().sum::<f64>() / M as f64;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / M as f64;
    assert!(rel_err(stats[1] as f64, 1.0 / (var + 1e-5).sqrt(), 0.0) < 1e-5);
}

#[test]
fn apply_reproduces_the_train_output_bitwise() {
    let mut rng = Rng::new(12, 0);
    // A large m as well, so the channels are spread over rayon workers.
    for (slice, m) in [(Slice::new(4, 4, C), M), (Slice::new(5, 5, 8), 4096)] {
        let mut cs = case(&mut rng, slice, m);
        let scale = slice.scale();
        let (out, stats) = run_train(&mut cs, slice, m, scale);
        let mut again = vec![f32::NAN; out.len()];
        bn_relu_apply(&mut again, &cs.inp, &stats, &cs.gamma, &cs.beta, slice, m, scale);
        assert!(out.iter().zip(&again).all(|(a, b)| a.to_bits() == b.to_bits()));
    }
}

#[test]
fn eval_uses_running_stats_without_scaling() {
    let mut rng = Rng::new(13, 0);
    for slice in slices() {
        let cs = case(&mut rng, slice, M);
        let mut out = vec![f32::NAN; slice.width * M];
        bn_relu_eval(&mut out, &cs.inp, &cs.gamma, &cs.beta, &cs.rm, &cs.rv, slice, M);
        for j in 0..slice.width {
            let ch = layer_channel(slice, j);
            let invstd = 1.0 / (cs.rv[ch] as f64 + 1e-5).sqrt();
            for t in 0..M {
                let x = cs.inp[j * M + t] as f64;
                let want = (cs.gamma[ch] as f64 * (x - cs.rm[ch] as f64) * invstd + cs.beta[ch] as f64).max(0.0);
                let got = out[j * M + t] as f64;
                assert!((got - want).abs() < 1e-5 * (1.0 + want.abs()), "{got} vs {want}");
            }
        }
    }
}

/// Analytic gradients of `sum(r * out)` from the f32 op: `d_inp`, and `d_gamma`, `d_beta`
/// scattered to full layer size (zero outside the slice).
fn analytic(cs: &Case, r: &[f32], slice: Slice, scale: f32) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut cs2 = Case {
        inp: cs.inp.clone(),
        gamma: cs.gamma.clone(),
        beta: cs.beta.clone(),
        rm: cs.rm.clone(),
        rv: cs.rv.clone(),
    };
    let (_, stats) = run_train(&mut cs2, slice, M, scale);
    let mut d_inp = vec![f32::NAN; cs.inp.len()];
    let (mut dg, mut db) = (vec![f32::NAN; slice.width], vec![f32::NAN; slice.width]);
    bn_relu_backward(&mut d_inp, &mut dg, &mut db, r, &cs.inp, &stats, &cs.gamma, &cs.beta, slice, M, scale, false);
    let (mut d_gamma, mut d_beta) = (vec![0.0; C], vec![0.0; C]);
    for j in 0..slice.width {
        d_gamma[layer_channel(slice, j)] = dg[j];
        d_beta[layer_channel(slice, j)] = db[j];
    }
    (d_inp, d_gamma, d_beta)
}

/// Central differences of an f64 function that also reports its pre-activations; coordinates
/// where some pre-activation changes sign between `x - eps` and `x + eps` straddle the ReLU
/// kink and are skipped (as Caffe's checker does). Errors are relative, with `floor` as the
/// smallest magnitude divided by (the f32 evaluation's rounding noise). Returns how many were
/// checked.
fn check_kinked(
    what: &str,
    f: impl Fn(&[f64]) -> (f64, Vec<f64>),
    x: &[f64],
    analytic: &[f32],
    eps: f64,
    tol: f64,
    floor: f64,
) -> usize {
    let mut checked = 0;
    for i in 0..x.len() {
        let mut xp = x.to_vec();
        xp[i] += eps;
        let (lp, pp) = f(&xp);
        xp[i] = x[i] - eps;
        let (lm, pm) = f(&xp);
        if pp.iter().zip(&pm).any(|(a, b)| (*a > 0.0) != (*b > 0.0)) {
            continue;
        }
        let fd = (lp - lm) / (2.0 * eps);
        let err = rel_err(fd, analytic[i] as f64, floor);
        assert!(err < tol, "{what}[{i}]: analytic {} vs fd {fd} (rel err {err})", analytic[i]);
        checked += 1;
    }
    checked
}

#[test]
fn backward_matches_finite_differences_of_an_f64_reimplementation() {
    let mut rng = Rng::new(14, 0);
    for slice in slices() {
        let cs = case(&mut rng, slice, M);
        let r = normals(&mut rng, slice.width * M);
        let scale = if slice.is_full() { 1.0 } else { slice.scale() };
        let (d_inp, d_gamma, d_beta) = analytic(&cs, &r, slice, scale);
        let (x, g, b, r64) = (to_f64(&cs.inp), to_f64(&cs.gamma), to_f64(&cs.beta), to_f64(&r));
        let loss = |out: &[f64]| out.iter().zip(&r64).map(|(o, r)| o * r).sum::<f64>();
        let f_x = |v: &[f64]| {
            let (out, pre) = reference(v, &g, &b, slice, M, scale as f64);
            (loss(&out), pre)
        };
        let f_g = |v: &[f64]| {
            let (out, pre) = reference(&x, v, &b, slice, M, scale as f64);
            (loss(&out), pre)
        };
        let f_b = |v: &[f64]| {
            let (out, pre) = reference(&x, &g, v, slice, M, scale as f64);
            (loss(&out), pre)
        };
        let eps = 1e-6;
        let n = check_kinked("d_inp", f_x, &x, &d_inp, eps, 1e-3, 1e-3);
        assert!(n > x.len() * 9 / 10, "only {n} of {} checked", x.len());
        assert_eq!(check_kinked("d_gamma", f_g, &g, &d_gamma, eps, 1e-3, 1e-3), C);
        assert_eq!(check_kinked("d_beta", f_b, &b, &d_beta, eps, 1e-3, 1e-3), C);
        // The gradient is not trivially zero anywhere it should not be.
        assert!(d_inp.iter().filter(|v| v.abs() > 1e-3).count() > d_inp.len() / 3);
    }
}

#[test]
fn backward_matches_finite_differences_of_the_f32_op() {
    let mut rng = Rng::new(15, 0);
    let slice = Slice::new(4, 4, C);
    let scale = slice.scale();
    let cs = case(&mut rng, slice, M);
    let r = normals(&mut rng, slice.width * M);
    let (d_inp, _, _) = analytic(&cs, &r, slice, scale);
    // The f32 op itself, evaluated at a perturbed input; returns loss and pre-activations.
    let f = |v: &[f64]| {
        let mut c2 = case(&mut Rng::new(0, 0), slice, M);
        c2.inp = v.iter().map(|&x| x as f32).collect();
        c2.gamma.clone_from(&cs.gamma);
        c2.beta.clone_from(&cs.beta);
        let (out, stats) = run_train(&mut c2, slice, M, scale);
        let loss = out.iter().zip(&r).map(|(&o, &r)| o as f64 * r as f64).sum();
        let mut pre = vec![0.0; out.len()];
        for j in 0..slice.width {
            let ch = layer_channel(slice, j);
            for t in 0..M {
                pre[j * M + t] =
                    pre_activation(c2.inp[j * M + t], stats[j], stats[slice.width + j], cs.gamma[ch], cs.beta[ch])
                        as f64;
            }
        }
        (loss, pre)
    };
    let n = check_kinked("d_inp (f32)", f, &to_f64(&cs.inp), &d_inp, 1e-2, 1e-2, 1e-2);
    assert!(n > d_inp.len() / 3, "only {n} of {} checked", d_inp.len());
}

#[test]
fn accumulate_adds_to_the_existing_gradient() {
    let mut rng = Rng::new(16, 0);
    let slice = Slice::new(4, 4, C);
    let mut cs = case(&mut rng, slice, M);
    let (_, stats) = run_train(&mut cs, slice, M, 1.5);
    let d_out = normals(&mut rng, slice.width * M);
    let prior = normals(&mut rng, slice.width * M);
    let run = |d_inp: &mut [f32], accumulate: bool| {
        let (mut dg, mut db) = (vec![0.0; 4], vec![0.0; 4]);
        bn_relu_backward(
            d_inp, &mut dg, &mut db, &d_out, &cs.inp, &stats, &cs.gamma, &cs.beta, slice, M, 1.5, accumulate,
        );
        (dg, db)
    };
    let mut fresh = vec![f32::NAN; prior.len()];
    let mut summed = prior.clone();
    let params_fresh = run(&mut fresh, false);
    let params_summed = run(&mut summed, true);
    for t in 0..prior.len() {
        let want = prior[t] + fresh[t];
        assert!((summed[t] - want).abs() < 1e-6, "{t}: {} vs {want}", summed[t]);
    }
    assert!(fresh.iter().any(|v| v.abs() > 1e-2));
    // The parameter gradients are overwritten either way.
    assert_eq!(params_fresh, params_summed);
}

/// With momentum `1/k` for the `k`-th batch (recalibration), the running statistics become the
/// plain average of the batches' means and unbiased variances, whatever they held before.
#[test]
fn momentum_one_over_k_averages_the_batches() {
    let mut rng = Rng::new(31, 0);
    let slice = Slice::new(3, 2, 5);
    let (gamma, beta) = (vec![1.0; 5], vec![0.0; 5]);
    let (mut rm, mut rv) = (vec![7.0; 5], vec![9.0; 5]);
    let (mut want_mean, mut want_var) = (vec![0f64; 2], vec![0f64; 2]);
    let batches = 4;
    for k in 1..=batches {
        let inp: Vec<f32> = normals(&mut rng, 2 * M).iter().map(|v| v * k as f32 + 0.5).collect();
        for j in 0..2 {
            let x = to_f64(&inp[j * M..(j + 1) * M]);
            let mean = x.iter().sum::<f64>() / M as f64;
            let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (M - 1) as f64;
            want_mean[j] += mean / batches as f64;
            want_var[j] += var / batches as f64;
        }
        let (mut out, mut stats) = (vec![0.0; 2 * M], vec![0.0; 4]);
        bn_relu_train(&mut out, &mut stats, &inp, &gamma, &beta, &mut rm, &mut rv, slice, M, 1.0, 1.0 / k as f64);
    }
    for (j, ch) in [3, 4].into_iter().enumerate() {
        assert!(rel_err(rm[ch] as f64, want_mean[j], 1e-6) < 1e-5, "mean {} vs {}", rm[ch], want_mean[j]);
        assert!(rel_err(rv[ch] as f64, want_var[j], 1e-6) < 1e-5, "var {} vs {}", rv[ch], want_var[j]);
    }
    // Channels outside the slice are untouched.
    assert_eq!((rm[0], rv[0]), (7.0, 9.0));
}

/// bf16 storage from the same (bf16) inputs: every BN kernel reduces and normalises in the f32
/// or f64 arithmetic of its f32 twin, so the f32 results (batch and running statistics, the
/// parameter gradients) are the same bits and each stored activation or gradient is the f32
/// value rounded once (error at most u = 2^-8 relative): the tolerance is exact equality with
/// that rounding. Wrapping and plain slices, with SliceOut's scale and an accumulated gradient.
#[test]
fn bf16_kernels_round_their_f32_twins_results_once() {
    use crate::ir::Bf16;
    use crate::ops::testutil::{assert_rounded, to_bf16, widen};
    let mut rng = Rng::new(17, 0);
    let bf = |v: Vec<f32>| widen(&to_bf16(&v));
    for slice in slices() {
        let mut cs = case(&mut rng, slice, M);
        cs.inp = bf(cs.inp.clone());
        let scale = slice.scale();
        let (mut rm, mut rv) = (cs.rm.clone(), cs.rv.clone());
        let (out32, stats32) = run_train(&mut cs, slice, M, scale);
        let mut out16 = vec![Bf16::default(); out32.len()];
        let mut stats16 = vec![f32::NAN; stats32.len()];
        let x16 = to_bf16(&cs.inp);
        let (g, b) = (&cs.gamma, &cs.beta);
        bn_relu_train(&mut out16, &mut stats16, &x16, g, b, &mut rm, &mut rv, slice, M, scale, BN_MOMENTUM as f64);
        assert_rounded("train out", &out16, &out32);
        assert_eq!((&stats16, &rm, &rv), (&stats32, &cs.rm, &cs.rv), "statistics");

        let mut again = vec![Bf16::default(); out16.len()];
        bn_relu_apply(&mut again, &x16, &stats16, g, b, slice, M, scale);
        assert_eq!(again, out16, "apply recomputes train's bits");

        let (mut e32, mut e16) = (vec![0f32; out32.len()], vec![Bf16::default(); out32.len()]);
        bn_relu_eval(&mut e32, &cs.inp, g, b, &cs.rm, &cs.rv, slice, M);
        bn_relu_eval(&mut e16, &x16, g, b, &cs.rm, &cs.rv, slice, M);
        assert_rounded("eval out", &e16, &e32);

        let d_out = bf(normals(&mut rng, slice.width * M));
        let prior = bf(normals(&mut rng, slice.width * M));
        for accumulate in [false, true] {
            let w = slice.width;
            let (mut dx32, mut dg32, mut db32) = (prior.clone(), vec![0f32; w], vec![0f32; w]);
            let (mut dx16, mut dg16, mut db16) = (to_bf16(&prior), vec![0f32; w], vec![0f32; w]);
            let (dy32, dy16) = (&d_out, &to_bf16(&d_out));
            let st = &stats32;
            bn_relu_backward(&mut dx32, &mut dg32, &mut db32, dy32, &cs.inp, st, g, b, slice, M, scale, accumulate);
            bn_relu_backward(&mut dx16, &mut dg16, &mut db16, dy16, &x16, st, g, b, slice, M, scale, accumulate);
            assert_rounded("d_inp", &dx16, &dx32);
            assert_eq!((dg16, db16), (dg32, db32), "parameter gradients");
        }
    }
}
