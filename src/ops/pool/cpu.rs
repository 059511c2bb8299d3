use rayon::prelude::*;

use crate::ir::Elem;
use crate::ops::min_rows;

/// `out[c*n + i] = mean(inp[c, i, :, :])`, summed in f64.
pub fn avgpool_forward<T: Elem>(out: &mut [f32], inp: &[T], c: usize, n: usize, hw: usize) {
    assert!(hw > 0, "average pool over no positions");
    assert_eq!(out.len(), c * n, "pool output length vs c * n");
    assert_eq!(inp.len(), c * n * hw, "pool input length vs c * n * hw");
    let inv = 1.0 / hw as f64;
    out.par_iter_mut()
        .zip(inp.par_chunks(hw))
        .with_min_len(min_rows(hw))
        .for_each(|(o, x)| *o = (x.iter().map(|&v| v.to_f32() as f64).sum::<f64>() * inv) as f32);
}

/// Spreads each pooled gradient evenly over its `hw` positions (overwrites `d_inp`).
pub fn avgpool_backward<T: Elem>(d_inp: &mut [T], d_out: &[f32], c: usize, n: usize, hw: usize) {
    assert!(hw > 0, "average pool over no positions");
    assert_eq!(d_out.len(), c * n, "pool output gradient length vs c * n");
    assert_eq!(d_inp.len(), c * n * hw, "pool input gradient length vs c * n * hw");
    let hw_f = hw as f32;
    d_inp
        .par_chunks_mut(hw)
        .zip(d_out.par_iter())
        .with_min_len(min_rows(hw))
        .for_each(|(dx, &dy)| dx.fill(T::from_f32(dy / hw_f)));
}
