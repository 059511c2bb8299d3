/// `stats[0]` = mean loss over the `n` images, `stats[1]` = number of images whose top-1
/// prediction (first maximum, like argmax) equals the label. With `d_logits`, also writes
/// `(softmax - onehot) / n`. Labels are class indices stored as f32; the data layer has
/// validated them, so one out of range is a bug and panics.
pub fn cross_entropy(
    stats: &mut [f32],
    d_logits: Option<&mut [f32]>,
    logits: &[f32],
    labels: &[f32],
    n: usize,
    o: usize,
) {
    assert!(o > 0, "cross-entropy over no classes");
    assert_eq!(logits.len(), n * o, "logits length vs n * o");
    assert_eq!(labels.len(), n, "labels length vs n");
    assert!(stats.len() >= 2, "cross-entropy stats need 2 entries");
    if let Some(d) = &d_logits {
        assert_eq!(d.len(), n * o, "logits gradient length vs n * o");
    }
    let mut d_logits = d_logits;
    let (mut total, mut correct) = (0.0f64, 0usize);
    for (i, (row, &label)) in logits.chunks_exact(o).zip(labels).enumerate() {
        let y = label as usize;
        assert!(
            label >= 0.0 && label == y as f32 && y < o,
            "label {label} of image {i} is not a class index below {o}"
        );
        // First maximum wins ties, as argmax does.
        let (mut best, mut max) = (0, row[0]);
        for (k, &v) in row.iter().enumerate().skip(1) {
            if v > max {
                best = k;
                max = v;
            }
        }
        let max = max as f64;
        let sum_exp: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
        let ln_sum = sum_exp.ln();
        // `(max - x_y) + ln(sum)`, in this order so that a huge max does not absorb ln(sum).
        total += (max - row[y] as f64) + ln_sum;
        correct += usize::from(best == y);
        if let Some(d) = d_logits.as_deref_mut() {
            let inv_n = 1.0 / n as f64;
            for (k, (dv, &v)) in d[i * o..(i + 1) * o].iter_mut().zip(row).enumerate() {
                let p = (v as f64 - max).exp() / sum_exp;
                let onehot = if k == y { 1.0 } else { 0.0 };
                *dv = ((p - onehot) * inv_n) as f32;
            }
        }
    }
    stats[0] = if n > 0 { (total / n as f64) as f32 } else { 0.0 };
    stats[1] = correct as f32;
}
