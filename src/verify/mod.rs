//! Checks a user can run on any backend: every op against the CPU reference (`selftest`) and the
//! network against PyTorch's numbers (`reference`).

pub mod full;
pub mod reference;
pub mod selftest;

/// `||a - b|| / ||b||` in f64 (absolute when `b` is zero); NaN when either holds a NaN or the
/// lengths differ, so that no comparison with a tolerance passes.
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() {
        return f64::NAN;
    }
    let (mut d, mut n) = (0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x as f64, y as f64);
        d += (x - y) * (x - y);
        n += y * y;
    }
    if d.is_nan() || n.is_nan() {
        return f64::NAN;
    }
    if n > 0.0 {
        (d / n).sqrt()
    } else {
        d.sqrt()
    }
}
