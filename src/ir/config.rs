//! What defines a run's network and arithmetic: the WRN-d-k with SliceOut, and the GEMM math.

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

    /// `WRN-28-10` (the keep value is printed beside it where it matters).
    pub fn name(&self) -> String {
        format!("WRN-{}-{}", self.depth, self.widen)
    }
}

/// GEMM arithmetic: TF32 tensor cores (inputs rounded to 10-bit mantissas, f32 accumulation)
/// or full f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Math {
    Tf32,
    Fp32,
}

impl Math {
    /// Parses `--math`.
    pub fn parse(s: &str) -> crate::Result<Math> {
        match s {
            "tf32" => Ok(Math::Tf32),
            "fp32" => Ok(Math::Fp32),
            _ => Err(crate::Error::flag("--math", s, "tf32 or fp32")),
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Math::Tf32 => "tf32",
            Math::Fp32 => "fp32",
        }
    }
}

/// The backend a program is built for: it decides how convolution workspaces are sized (the
/// CPU's Winograd path needs more than im2col; the GPU runs im2col alone).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Target {
    #[default]
    Cpu,
    Cuda,
}

impl Target {
    pub fn as_str(&self) -> &'static str {
        match self {
            Target::Cpu => "cpu",
            Target::Cuda => "cuda",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn math_parses_the_flag_values() {
        assert_eq!(Math::parse("tf32").unwrap(), Math::Tf32);
        assert_eq!(Math::parse("fp32").unwrap(), Math::Fp32);
        assert!(matches!(Math::parse("fp16"), Err(crate::Error::Flag { .. })));
    }
}
