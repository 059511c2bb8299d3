use super::cpu::*;
use crate::ops::testutil::{check_grad, normals, to_f64};
use crate::rng::Rng;

const C: usize = 3;
const N: usize = 2;
const HW: usize = 5;

fn reference(inp: &[f64]) -> Vec<f64> {
    inp.chunks(HW).map(|x| x.iter().sum::<f64>() / HW as f64).collect()
}

#[test]
fn forward_averages_each_channel_image_pair() {
    let mut rng = Rng::new(21, 0);
    let inp = normals(&mut rng, C * N * HW);
    let mut out = vec![f32::NAN; C * N];
    avgpool_forward(&mut out, &inp, C, N, HW);
    // out[c*N + i] is the mean of inp[c, i, :], written out by index.
    for c in 0..C {
        for i in 0..N {
            let base = (c * N + i) * HW;
            let want = (0..HW).map(|t| inp[base + t] as f64).sum::<f64>() / HW as f64;
            assert!((out[c * N + i] as f64 - want).abs() < 1e-6);
        }
    }
}

#[test]
fn forward_is_right_on_the_parallel_path() {
    let (c, n, hw) = (64, 16, 64);
    let inp: Vec<f32> = (0..c * n * hw).map(|t| (t / hw) as f32 + 0.25).collect();
    let mut out = vec![f32::NAN; c * n];
    avgpool_forward(&mut out, &inp, c, n, hw);
    assert!(out.iter().enumerate().all(|(k, &v)| v == k as f32 + 0.25));
}

#[test]
fn backward_matches_finite_differences() {
    let mut rng = Rng::new(22, 0);
    let inp = normals(&mut rng, C * N * HW);
    let r = normals(&mut rng, C * N);
    let mut d_inp = vec![f32::NAN; inp.len()];
    avgpool_backward(&mut d_inp, &r, C, N, HW);
    let r64 = to_f64(&r);
    let loss = |v: &[f64]| reference(v).iter().zip(&r64).map(|(o, r)| o * r).sum();
    check_grad("d_inp", loss, &to_f64(&inp), &d_inp, 1e-3, 1e-6);
}
