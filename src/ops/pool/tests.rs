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

/// bf16 input: the pool sums in f64 what the f32 pool sums, so its f32 output is the same bits;
/// backward stores each f32 share rounded once.
#[test]
fn bf16_pools_like_f32_from_the_same_values() {
    use crate::ops::testutil::{assert_rounded, bf16_normals, to_bf16};
    let mut rng = Rng::new(23, 0);
    let inp = bf16_normals(&mut rng, C * N * HW);
    let (mut out16, mut out32) = (vec![f32::NAN; C * N], vec![0f32; C * N]);
    avgpool_forward(&mut out16, &to_bf16(&inp), C, N, HW);
    avgpool_forward(&mut out32, &inp, C, N, HW);
    assert!(out16.iter().zip(&out32).all(|(a, b)| a.to_bits() == b.to_bits()));
    let d_out = normals(&mut rng, C * N);
    let (mut d16, mut d32) = (to_bf16(&[f32::NAN; C * N * HW]), vec![0f32; C * N * HW]);
    avgpool_backward(&mut d16, &d_out, C, N, HW);
    avgpool_backward(&mut d32, &d_out, C, N, HW);
    assert_rounded("pool d_inp", &d16, &d32);
}
