use rayon::prelude::*;

use crate::ops::min_rows;

fn check_dims(inp: usize, weight: usize, out: usize, c: usize, n: usize, o: usize) {
    assert_eq!(inp, c * n, "linear input length vs c * n");
    assert_eq!(weight, o * c, "linear weight length vs o * c");
    assert_eq!(out, n * o, "linear output length vs n * o");
}

/// `out[i, k] = bias[k] + sum_ch weight[k, ch] * inp[ch, i]`.
pub fn linear_forward(out: &mut [f32], inp: &[f32], weight: &[f32], bias: &[f32], c: usize, n: usize, o: usize) {
    check_dims(inp.len(), weight.len(), out.len(), c, n, o);
    assert_eq!(bias.len(), o, "linear bias length vs o");
    out.par_iter_mut().enumerate().with_min_len(min_rows(c)).for_each(|(idx, y)| {
        let (i, k) = (idx / o, idx % o);
        let w = &weight[k * c..(k + 1) * c];
        let dot: f64 = w.iter().enumerate().map(|(ch, &wv)| wv as f64 * inp[ch * n + i] as f64).sum();
        *y = (dot + bias[k] as f64) as f32;
    });
}

/// Gradients of the classifier: `d_inp[ch, i] = sum_k d_out[i, k] * weight[k, ch]`,
/// `d_weight[k, ch] = sum_i d_out[i, k] * inp[ch, i]`, `d_bias[k] = sum_i d_out[i, k]`.
/// All three are overwritten.
#[allow(clippy::too_many_arguments)]
pub fn linear_backward(
    d_inp: &mut [f32],
    d_weight: &mut [f32],
    d_bias: &mut [f32],
    d_out: &[f32],
    inp: &[f32],
    weight: &[f32],
    c: usize,
    n: usize,
    o: usize,
) {
    check_dims(inp.len(), weight.len(), d_out.len(), c, n, o);
    assert_eq!(d_inp.len(), c * n, "linear input gradient length vs c * n");
    assert_eq!(d_weight.len(), o * c, "linear weight gradient length vs o * c");
    assert_eq!(d_bias.len(), o, "linear bias gradient length vs o");
    d_inp.par_iter_mut().enumerate().with_min_len(min_rows(o)).for_each(|(idx, dx)| {
        let (ch, i) = (idx / n, idx % n);
        let dy = &d_out[i * o..(i + 1) * o];
        let dot: f64 = dy.iter().enumerate().map(|(k, &g)| g as f64 * weight[k * c + ch] as f64).sum();
        *dx = dot as f32;
    });
    d_weight.par_iter_mut().enumerate().with_min_len(min_rows(n)).for_each(|(idx, dw)| {
        let (k, ch) = (idx / c, idx % c);
        let x = &inp[ch * n..(ch + 1) * n];
        let dot: f64 = x.iter().enumerate().map(|(i, &xv)| d_out[i * o + k] as f64 * xv as f64).sum();
        *dw = dot as f32;
    });
    for (k, db) in d_bias.iter_mut().enumerate() {
        *db = (0..n).map(|i| d_out[i * o + k] as f64).sum::<f64>() as f32;
    }
}
