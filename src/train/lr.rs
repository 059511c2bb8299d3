//! The learning-rate schedules.

/// `--schedule`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LrSchedule {
    /// `lr * (1 + cos(pi * t / T)) / 2` per step.
    Cosine,
    /// `lr * 0.2^k` after 30%, 60% and 80% of the epochs (the WRN paper's steps).
    Step,
}

impl LrSchedule {
    /// The name `--schedule` takes and checkpoints store.
    pub fn as_str(&self) -> &'static str {
        match self {
            LrSchedule::Cosine => "cosine",
            LrSchedule::Step => "step",
        }
    }

    pub fn parse(s: &str) -> Option<LrSchedule> {
        [LrSchedule::Cosine, LrSchedule::Step].into_iter().find(|l| l.as_str() == s)
    }
}

/// Learning rate at global step `t` of `total` for a peak `lr` over `epochs` epochs.
pub fn learning_rate(
    schedule: LrSchedule,
    lr: f64,
    epochs: usize,
    t: usize,
    total: usize,
    steps_per_epoch: usize,
) -> f64 {
    match schedule {
        LrSchedule::Cosine => lr * 0.5 * (1.0 + (std::f64::consts::PI * t as f64 / total.max(1) as f64).cos()),
        LrSchedule::Step => {
            let epoch = t / steps_per_epoch.max(1);
            let passed = [0.3, 0.6, 0.8].iter().filter(|&&f| epoch as f64 >= (f * epochs as f64).round()).count();
            lr * 0.2f64.powi(passed as i32)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_falls_from_the_peak_to_zero() {
        assert_eq!(learning_rate(LrSchedule::Cosine, 0.1, 10, 0, 100, 10), 0.1);
        assert!((learning_rate(LrSchedule::Cosine, 0.1, 10, 50, 100, 10) - 0.05).abs() < 1e-12);
        assert!(learning_rate(LrSchedule::Cosine, 0.1, 10, 100, 100, 10).abs() < 1e-12);
    }

    #[test]
    fn steps_divide_by_five_at_30_60_80_percent() {
        let at = |epoch: usize| learning_rate(LrSchedule::Step, 1.0, 10, epoch * 10, 100, 10);
        assert_eq!(at(2), 1.0);
        assert!((at(3) - 0.2).abs() < 1e-12);
        assert!((at(6) - 0.04).abs() < 1e-12);
        assert!((at(8) - 0.008).abs() < 1e-12);
    }
}
