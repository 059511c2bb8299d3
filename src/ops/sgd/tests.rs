use super::cpu::*;
use crate::ir::Slice;
use crate::ops::testutil::normals;
use crate::rng::Rng;

/// The textbook dense update: scatter the sliced gradient into a zero full-size one, then
/// PyTorch's SGD with the momentum buffer set to the first gradient on the first step.
fn dense_step(param: &mut [f32], buf: &mut Option<Vec<f32>>, grad: &[f32], map: GradMap, p: &SgdParams) {
    let mut full = vec![0.0f32; param.len()];
    match map {
        GradMap::Full => full.copy_from_slice(grad),
        GradMap::Rows { slice, row_len } => {
            for j in 0..slice.width {
                let ch = (slice.start + j) % slice.channels;
                full[ch * row_len..(ch + 1) * row_len].copy_from_slice(&grad[j * row_len..(j + 1) * row_len]);
            }
        }
        GradMap::Cols { slice, rows, group } => {
            for r in 0..rows {
                for j in 0..slice.width {
                    let ch = (slice.start + j) % slice.channels;
                    for q in 0..group {
                        full[r * slice.channels * group + ch * group + q] =
                            grad[r * slice.width * group + j * group + q];
                    }
                }
            }
        }
    }
    let d_p: Vec<f32> = full.iter().zip(param.iter()).map(|(g, w)| g + p.weight_decay * w).collect();
    let b = match buf {
        None => buf.insert(d_p.clone()),
        Some(b) => {
            for (b, d) in b.iter_mut().zip(&d_p) {
                *b = p.momentum * *b + d;
            }
            b
        }
    };
    for ((w, d), b) in param.iter_mut().zip(&d_p).zip(b.iter()) {
        let step = if p.nesterov { d + p.momentum * b } else { *b };
        *w -= p.lr * step;
    }
}

/// The SliceOut starts of successive steps; `None` entries are full (unsliced) steps.
fn check(map_of: impl Fn(Option<usize>) -> (GradMap, usize), starts: &[Option<usize>], len: usize) {
    let mut rng = Rng::new(51, 0);
    for nesterov in [false, true] {
        let p = SgdParams { lr: 0.1, momentum: 0.9, weight_decay: 5e-4, nesterov };
        let mut param = normals(&mut rng, len);
        let mut want = param.clone();
        let mut buf = vec![0.0f32; len];
        let mut dense_buf = None;
        for &start in starts {
            let (map, grad_len) = map_of(start);
            let grad = normals(&mut rng, grad_len);
            let before = param.clone();
            sgd_update(&mut param, &mut buf, &grad, map, &p);
            dense_step(&mut want, &mut dense_buf, &grad, map, &p);
            for (t, (&a, &b)) in param.iter().zip(&want).enumerate() {
                assert!((a - b).abs() <= 1e-6 * (1.0 + b.abs()), "{map:?} nesterov {nesterov} [{t}]: {a} vs dense {b}");
            }
            // Every weight moves: the ones outside the slice through decay and momentum.
            assert!(param.iter().zip(&before).all(|(a, b)| a != b));
        }
    }
}

#[test]
fn full_gradient_matches_dense_sgd() {
    // Longer than one parallel chunk, so several rayon tasks run.
    let len = 3 * crate::ops::PAR_MIN_ELEMS + 17;
    check(|_| (GradMap::Full, len), &[None; 3], len);
}

#[test]
fn row_slices_match_dense_sgd_with_and_without_wrap() {
    let (c, w, row_len) = (10, 4, 27);
    let map_of = |start: Option<usize>| {
        let slice = start.map_or(Slice::full(c), |s| Slice::new(s, w, c));
        (GradMap::Rows { slice, row_len }, slice.width * row_len)
    };
    // Non-wrapping, wrapping, full, then wrapping again.
    check(map_of, &[Some(2), Some(8), None, Some(9)], c * row_len);
    // bn2's gamma/beta: one value per row, many rows (parallel path).
    let (c, w) = (40_000, 20_000);
    let map_of = |start: Option<usize>| {
        let slice = Slice::new(start.unwrap(), w, c);
        (GradMap::Rows { slice, row_len: 1 }, w)
    };
    check(map_of, &[Some(5), Some(30_000), Some(0)], c);
}

#[test]
fn column_slices_match_dense_sgd_with_and_without_wrap() {
    let (rows, c, w, group) = (6, 10, 4, 9);
    let map_of = |start: Option<usize>| {
        let slice = start.map_or(Slice::full(c), |s| Slice::new(s, w, c));
        (GradMap::Cols { slice, rows, group }, rows * slice.width * group)
    };
    check(map_of, &[Some(7), Some(1), None, Some(9)], rows * c * group);
    // A wide conv2 weight, so the rows are split over rayon workers.
    let (rows, c, w) = (64, 64, 32);
    let map_of = |start: Option<usize>| {
        let slice = Slice::new(start.unwrap(), w, c);
        (GradMap::Cols { slice, rows, group }, rows * w * group)
    };
    check(map_of, &[Some(48), Some(3)], rows * c * group);
}

#[test]
fn zero_momentum_is_plain_sgd_with_decay() {
    let p = SgdParams { lr: 0.5, momentum: 0.0, weight_decay: 0.1, nesterov: false };
    let (mut w, mut buf) = (vec![2.0f32, -4.0], vec![0.0f32; 2]);
    for _ in 0..2 {
        sgd_update(&mut w, &mut buf, &[1.0, 0.0], GradMap::Full, &p);
    }
    // w <- w - 0.5 * (g + 0.1 w), twice.
    let (mut a, mut b) = (2.0f32, -4.0f32);
    for _ in 0..2 {
        a -= 0.5 * (1.0 + 0.1 * a);
        b -= 0.5 * (0.1 * b);
    }
    assert_eq!(w, [a, b]);
}
