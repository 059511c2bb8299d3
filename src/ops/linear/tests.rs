use super::cpu::*;
use crate::ops::testutil::{check_grad, normals, to_f64};
use crate::rng::Rng;

const C: usize = 5;
const N: usize = 3;
const O: usize = 4;

/// f64 forward from the definition, indexing the channel-major input `[C, N]` directly.
fn reference(inp: &[f64], weight: &[f64], bias: &[f64]) -> Vec<f64> {
    let mut out = vec![0.0; N * O];
    for i in 0..N {
        for k in 0..O {
            out[i * O + k] = bias[k] + (0..C).map(|c| weight[k * C + c] * inp[c * N + i]).sum::<f64>();
        }
    }
    out
}

struct Case {
    inp: Vec<f32>,
    weight: Vec<f32>,
    bias: Vec<f32>,
}

fn case(rng: &mut Rng) -> Case {
    Case { inp: normals(rng, C * N), weight: normals(rng, O * C), bias: normals(rng, O) }
}

#[test]
fn forward_matches_the_definition() {
    let mut rng = Rng::new(31, 0);
    let cs = case(&mut rng);
    let mut out = vec![f32::NAN; N * O];
    linear_forward(&mut out, &cs.inp, &cs.weight, &cs.bias, C, N, O);
    let want = reference(&to_f64(&cs.inp), &to_f64(&cs.weight), &to_f64(&cs.bias));
    for (t, (&o, &w)) in out.iter().zip(&want).enumerate() {
        assert!((o as f64 - w).abs() < 1e-5 * (1.0 + w.abs()), "out[{t}] {o} vs {w}");
    }
}

#[test]
fn forward_is_right_on_the_parallel_path() {
    // WRN-28-10's classifier shape on a batch of 64: spread over rayon workers.
    let (c, n, o) = (640, 64, 10);
    let inp: Vec<f32> = (0..c * n).map(|t| ((t % 7) as f32 - 3.0) * 0.5).collect();
    let weight: Vec<f32> = (0..o * c).map(|t| ((t % 5) as f32 - 2.0) * 0.25).collect();
    let bias: Vec<f32> = (0..o).map(|k| k as f32).collect();
    let mut out = vec![f32::NAN; n * o];
    linear_forward(&mut out, &inp, &weight, &bias, c, n, o);
    for i in 0..n {
        for k in 0..o {
            let mut want = bias[k] as f64;
            for ch in 0..c {
                want += weight[k * c + ch] as f64 * inp[ch * n + i] as f64;
            }
            assert_eq!(out[i * o + k] as f64, want, "({i}, {k})");
        }
    }
}

#[test]
fn backward_matches_finite_differences() {
    let mut rng = Rng::new(32, 0);
    let cs = case(&mut rng);
    let r = normals(&mut rng, N * O);
    let mut d_inp = vec![f32::NAN; C * N];
    let mut d_weight = vec![f32::NAN; O * C];
    let mut d_bias = vec![f32::NAN; O];
    linear_backward(&mut d_inp, &mut d_weight, &mut d_bias, &r, &cs.inp, &cs.weight, C, N, O);
    let (x, w, b, r64) = (to_f64(&cs.inp), to_f64(&cs.weight), to_f64(&cs.bias), to_f64(&r));
    let loss = |out: Vec<f64>| out.iter().zip(&r64).map(|(o, r)| o * r).sum::<f64>();
    let (eps, tol) = (1e-4, 1e-5);
    check_grad("d_inp", |v| loss(reference(v, &w, &b)), &x, &d_inp, eps, tol);
    check_grad("d_weight", |v| loss(reference(&x, v, &b)), &w, &d_weight, eps, tol);
    check_grad("d_bias", |v| loss(reference(&x, &w, v)), &b, &d_bias, eps, tol);
}
