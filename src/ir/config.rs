//! What defines a WRN-d-k with SliceOut, checked like a flag.

/// What defines a WRN-d-k with SliceOut: saved in checkpoints, printed in plans.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ModelConfig {
    /// Total depth `6n + 4` (n blocks per group).
    pub depth: usize,
    /// Widen factor k: group widths 16k, 32k, 64k.
    pub widen: usize,
    pub classes: usize,
    pub in_channels: usize,
    /// Fraction of each sliced layer's channels kept at a training step (1.0 = no SliceOut).
    pub keep: f64,
}

impl ModelConfig {
    /// Values out of range, named by their flag.
    pub fn validate(&self) -> crate::Result<()> {
        use crate::Error;
        if self.depth < 10 || !(self.depth - 4).is_multiple_of(6) {
            return Err(Error::flag("--depth", self.depth, "6n+4 with n >= 1 (10, 16, 22, 28, ...)"));
        }
        if self.widen == 0 {
            return Err(Error::flag("--widen", self.widen, "an integer >= 1"));
        }
        if !(self.keep > 0.0 && self.keep <= 1.0) {
            return Err(Error::flag("--keep", self.keep, "a fraction in (0, 1]"));
        }
        if self.classes < 2 {
            return Err(Error::flag("--classes", self.classes, "an integer >= 2"));
        }
        if self.in_channels == 0 {
            return Err(Error::flag("--in-channels", self.in_channels, "an integer >= 1"));
        }
        Ok(())
    }

    /// Blocks per group.
    pub fn blocks_per_group(&self) -> usize {
        (self.depth - 4) / 6
    }

    /// `WRN-28-10`, or `WRN-28-10 keep 0.50` when sliced.
    pub fn name(&self) -> String {
        format!("WRN-{}-{}", self.depth, self.widen)
    }
}
