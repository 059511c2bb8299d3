//! Element types: what an arena buffer stores ([`Dtype`]), and the run's precision
//! ([`Precision`], the `--precision` value) that decides which buffers store what.

use serde::Serialize;

/// The element type of an arena buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Dtype {
    F32,
    /// bfloat16: f32's sign and 8-bit exponent with a 7-bit mantissa, so f32's range in 2 bytes.
    Bf16,
}

impl Dtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::Bf16 => 2,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::Bf16 => "bf16",
        }
    }
}

/// How a step stores its tensors. In both, parameters, momentum, BN statistics, weight
/// gradients and the loss are f32; `Bf16` stores activations, their gradients and the im2col
/// workspaces as bf16 and gives each convolution a bf16 copy of its weight for the GEMMs
/// (`model/wrn.rs` says buffer by buffer).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    Fp32,
    Bf16,
}

impl Precision {
    pub const ALL: [Precision; 2] = [Precision::Fp32, Precision::Bf16];

    /// What activations, their gradients and the im2col workspaces are stored as.
    pub fn storage(self) -> Dtype {
        match self {
            Precision::Fp32 => Dtype::F32,
            Precision::Bf16 => Dtype::Bf16,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
        }
    }

    /// Parses `--precision`.
    pub fn parse(s: &str) -> crate::Result<Precision> {
        Precision::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| crate::Error::flag("--precision", s, "fp32 or bf16"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bf16_element_is_half_an_f32_one() {
        assert_eq!(Dtype::F32.size(), 4);
        assert_eq!(Dtype::Bf16.size(), 2);
        assert_eq!(Precision::Fp32.storage(), Dtype::F32);
        assert_eq!(Precision::Bf16.storage(), Dtype::Bf16);
        assert_eq!(Precision::default(), Precision::Fp32);
        assert_eq!(serde_json::to_string(&Dtype::Bf16).unwrap(), "\"bf16\"");
        assert_eq!(serde_json::to_string(&Dtype::F32).unwrap(), "\"f32\"");
    }

    #[test]
    fn precision_parses_its_two_names_and_refuses_others_in_one_line() {
        for p in Precision::ALL {
            assert_eq!(Precision::parse(p.as_str()).unwrap(), p);
        }
        for bad in ["fp16", "BF16", "", "bf16 "] {
            let e = Precision::parse(bad).unwrap_err().to_string();
            assert_eq!(e, format!("invalid value '{bad}' for --precision: expected fp32 or bf16"));
        }
    }
}
