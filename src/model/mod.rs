//! The model family: Wide ResNets (WRN-d-k) with SliceOut.

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
    /// Blocks per group.
    pub fn blocks_per_group(&self) -> usize {
        (self.depth - 4) / 6
    }

    /// `WRN-28-10`, or `WRN-28-10 keep 0.50` when sliced.
    pub fn name(&self) -> String {
        format!("WRN-{}-{}", self.depth, self.widen)
    }
}

pub mod wrn;
