use super::cpu::*;
use crate::ops::testutil::{check_grad, normals, to_f64};
use crate::rng::Rng;

/// f64 mean cross-entropy from the definition (no max shift: the test logits are small).
fn reference(logits: &[f64], labels: &[usize], o: usize) -> f64 {
    let n = labels.len();
    let total: f64 =
        logits.chunks(o).zip(labels).map(|(row, &y)| row.iter().map(|v| v.exp()).sum::<f64>().ln() - row[y]).sum();
    total / n as f64
}

#[test]
fn uniform_logits_give_ln_of_the_class_count() {
    let (n, o) = (3, 10);
    let logits = vec![0.7f32; n * o];
    let labels = [0.0, 0.0, 4.0];
    let mut stats = [f32::NAN; 2];
    let mut d = vec![f32::NAN; n * o];
    cross_entropy(&mut stats, Some(&mut d), &logits, &labels, n, o);
    assert!((stats[0] as f64 - (o as f64).ln()).abs() < 1e-6, "{}", stats[0]);
    // All ties: argmax picks class 0, so the first two images count as correct.
    assert_eq!(stats[1], 2.0);
    for i in 0..n {
        for k in 0..o {
            let onehot = if k as f32 == labels[i] { 1.0 } else { 0.0 };
            let want = (0.1 - onehot) / n as f64;
            assert!((d[i * o + k] as f64 - want).abs() < 1e-7);
        }
    }
}

#[test]
fn counts_correct_top1_predictions_with_first_index_winning_ties() {
    let o = 3;
    let logits = [
        1.0, 5.0, 2.0, // argmax 1
        3.0, 3.0, 0.0, // tie between 0 and 1: 0 wins
        0.0, 3.0, 3.0, // tie between 1 and 2: 1 wins
        -1.0, -2.0, -0.5, // argmax 2
    ];
    let labels = [1.0, 0.0, 1.0, 0.0];
    let mut stats = [f32::NAN; 2];
    cross_entropy(&mut stats, None, &logits, &labels, 4, o);
    assert_eq!(stats[1], 3.0);
    let want = reference(&to_f64(&logits), &[1, 0, 1, 0], o);
    assert!((stats[0] as f64 - want).abs() < 1e-6);
}

#[test]
fn gradient_matches_finite_differences() {
    let mut rng = Rng::new(41, 0);
    let (n, o) = (4, 5);
    let logits: Vec<f32> = normals(&mut rng, n * o).iter().map(|v| 2.0 * v).collect();
    let labels = [3usize, 0, 4, 1];
    let labels_f: Vec<f32> = labels.iter().map(|&y| y as f32).collect();
    let mut stats = [f32::NAN; 2];
    let mut d = vec![f32::NAN; n * o];
    cross_entropy(&mut stats, Some(&mut d), &logits, &labels_f, n, o);
    let x = to_f64(&logits);
    assert!((stats[0] as f64 - reference(&x, &labels, o)).abs() < 1e-6);
    check_grad("d_logits", |v| reference(v, &labels, o), &x, &d, 1e-5, 1e-5);
    // Each row of the gradient sums to zero (softmax minus one-hot).
    for row in d.chunks(o) {
        assert!(row.iter().map(|&v| v as f64).sum::<f64>().abs() < 1e-7);
    }
}

#[test]
fn huge_logits_stay_finite() {
    let o = 3;
    let logits = [1e30, -1e30, 0.0, f32::MAX, f32::MAX, -f32::MAX];
    let labels = [1.0, 0.0];
    let mut stats = [f32::NAN; 2];
    let mut d = vec![f32::NAN; 2 * o];
    cross_entropy(&mut stats, Some(&mut d), &logits, &labels, 2, o);
    assert!(stats[0].is_finite());
    // Image 0 misses by 2e30; image 1 hits one of two tied maxima: ln 2.
    let want = (2e30f64 + 2f64.ln()) / 2.0;
    assert!(((stats[0] as f64 - want) / want).abs() < 1e-6);
    assert_eq!(stats[1], 1.0);
    assert!(d.iter().all(|v| v.is_finite()));
    assert!((d[0] - 0.5).abs() < 1e-7 && (d[1] + 0.5).abs() < 1e-7 && d[2].abs() < 1e-7);
    assert!((d[3] + 0.25).abs() < 1e-7 && (d[4] - 0.25).abs() < 1e-7 && d[5] == 0.0);
}

#[test]
#[should_panic(expected = "not a class index")]
fn out_of_range_label_panics() {
    let mut stats = [0.0; 2];
    cross_entropy(&mut stats, None, &[0.0, 1.0], &[2.0], 1, 2);
}

#[test]
#[should_panic(expected = "not a class index")]
fn fractional_label_panics() {
    let mut stats = [0.0; 2];
    cross_entropy(&mut stats, None, &[0.0, 1.0], &[0.5], 1, 2);
}
