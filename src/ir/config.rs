//! What defines a run's network and arithmetic: the WRN-d-k with SliceOut, and the GEMM math.
//!
//! [`ModelConfig::check`] and [`ModelConfig::footprint`] are the one place where a
//! configuration's values and sizes are judged, whether they come from flags or from a
//! checkpoint; an [`Invalid`] says which value is wrong and becomes a flag error or a checkpoint
//! error depending on where the value came from.

use crate::Error;
use std::path::Path;

/// The deepest network accepted (n = 166 blocks per group): deeper schedules take long to
/// plan and nothing this trainer runs needs them.
pub const MAX_DEPTH: usize = 1000;

/// The most bytes the persistent region, or any one arena buffer, may need: more than any
/// one machine holds. Within it every size, offset and multiply-add count the planner and the
/// ops compute fits in 64 bits (at most about 20 buffers per block and 500 blocks).
pub const MAX_BYTES: u64 = 1 << 40;

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

/// A configuration value out of range: the field (`depth`, `widen`, `classes`, `in_channels`,
/// `keep` or `batch`), its value and what was expected.
#[derive(Clone, Debug, PartialEq)]
pub struct Invalid {
    pub field: &'static str,
    pub value: String,
    pub expected: String,
}

impl Invalid {
    fn new(field: &'static str, value: impl ToString, expected: impl Into<String>) -> Invalid {
        Invalid { field, value: value.to_string(), expected: expected.into() }
    }

    /// The error for a value given on the command line: `--depth`, `--in-channels`, ...
    pub fn flag(self) -> Error {
        Error::flag(&format!("--{}", self.field.replace('_', "-")), self.value, self.expected)
    }

    /// The error for a value stored in the checkpoint at `path`.
    pub fn in_checkpoint(self, path: &Path) -> Error {
        Error::checkpoint(path, self.stored())
    }

    /// `config.depth 0 is out of range: expected ...`, for a stored value.
    pub fn stored(&self) -> String {
        format!("config.{} {} is out of range: expected {}", self.field, self.value, self.expected)
    }
}

/// What a training or eval step of a configuration needs, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Footprint {
    /// Parameters, momentum and BN running statistics (exactly the persistent region).
    pub persistent_bytes: u64,
    /// The largest input, activation or logits buffer at the batch size; workspaces and the
    /// arena are small multiples of it.
    pub largest_buffer_bytes: u64,
}

impl ModelConfig {
    /// `--align`: slice starts are multiples of it, so it is at most the narrowest block's
    /// channels (16k).
    pub fn check_align(&self, align: usize) -> crate::Result<()> {
        let narrowest = self.widen.saturating_mul(16);
        if align == 0 || align > narrowest {
            let expected =
                format!("an integer from 1 to {narrowest}, the channels of the narrowest block of {}", self.name());
            return Err(Error::flag("--align", align, expected));
        }
        Ok(())
    }

    /// Values out of range, named by their flag.
    pub fn validate(&self) -> crate::Result<()> {
        self.check().map_err(Invalid::flag)
    }

    /// Values out of range, whatever their source.
    pub fn check(&self) -> Result<(), Invalid> {
        if self.depth < 10 || self.depth > MAX_DEPTH || !(self.depth - 4).is_multiple_of(6) {
            let expected = format!("6n+4 with n >= 1, at most {MAX_DEPTH} (10, 16, 22, 28, ...)");
            return Err(Invalid::new("depth", self.depth, expected));
        }
        if self.widen == 0 {
            return Err(Invalid::new("widen", self.widen, "an integer >= 1"));
        }
        if !(self.keep > 0.0 && self.keep <= 1.0) {
            return Err(Invalid::new("keep", self.keep, "a fraction in (0, 1]"));
        }
        if self.classes < 2 {
            return Err(Invalid::new("classes", self.classes, "an integer >= 2"));
        }
        if self.in_channels == 0 {
            return Err(Invalid::new("in_channels", self.in_channels, "an integer >= 1"));
        }
        Ok(())
    }

    /// The sizes a step at `batch` images needs, computed with checked arithmetic before any
    /// schedule is built: a size over [`MAX_BYTES`] (or past 64 bits) is refused, naming the
    /// value that makes it so (`batch` when one image would fit).
    pub fn footprint(&self, batch: usize) -> Result<Footprint, Invalid> {
        self.check()?;
        if batch == 0 {
            return Err(Invalid::new("batch", batch, "an integer >= 1"));
        }
        let fits = |bytes: Option<u64>| bytes.is_some_and(|b| b <= MAX_BYTES);
        let refuse = |field: &'static str, what: &str, subject: String, needs: Option<u64>| {
            let limit = size_text(Some(MAX_BYTES));
            let expected = format!("{what} fit in {limit} ({subject} needs {})", size_text(needs));
            Err(Invalid::new(field, self.value_of(field, batch), expected))
        };
        let persistent = self.persistent_bytes();
        if !fits(persistent) {
            let field = self.culprit(&["widen", "depth", "classes", "in_channels"], |c| fits(c.persistent_bytes()));
            let what = "a network whose parameters, momentum and BN statistics";
            return refuse(field, what, self.name(), persistent);
        }
        let largest = self.largest_buffer_bytes(batch);
        if !fits(largest) {
            let field = match fits(self.largest_buffer_bytes(1)) {
                true => "batch",
                false => self.culprit(&["widen", "in_channels", "classes"], |c| fits(c.largest_buffer_bytes(1))),
            };
            let what = "sizes whose largest activation would";
            return refuse(field, what, format!("{} at batch {batch}", self.name()), largest);
        }
        let (persistent_bytes, largest_buffer_bytes) = (persistent.unwrap_or(0), largest.unwrap_or(0));
        Ok(Footprint { persistent_bytes, largest_buffer_bytes })
    }

    /// The first of `fields` whose smallest usual value (widen 1, depth 10, 10 classes, 3 input
    /// channels) alone makes `fits` true; the first field when none does.
    fn culprit(&self, fields: &[&'static str], fits: impl Fn(&ModelConfig) -> bool) -> &'static str {
        let with = |field: &str| match field {
            "widen" => ModelConfig { widen: 1, ..*self },
            "depth" => ModelConfig { depth: 10, ..*self },
            "classes" => ModelConfig { classes: 10, ..*self },
            _ => ModelConfig { in_channels: 3, ..*self },
        };
        fields.iter().copied().find(|f| fits(&with(f))).unwrap_or(fields[0])
    }

    fn value_of(&self, field: &str, batch: usize) -> usize {
        match field {
            "widen" => self.widen,
            "depth" => self.depth,
            "classes" => self.classes,
            "in_channels" => self.in_channels,
            _ => batch,
        }
    }

    /// Bytes of the persistent region: every parameter and its momentum, and the running mean
    /// and variance of every BN channel. `None` past 64 bits.
    fn persistent_bytes(&self) -> Option<u64> {
        let m = u64::checked_mul;
        let k = self.widen as u64;
        let mut params = m(16 * 9, self.in_channels as u64)?;
        let mut bn_channels = 0u64;
        let mut cin = 16u64;
        for g in 0..3u32 {
            let c = m(16 << g, k)?;
            for j in 0..self.blocks_per_group() {
                let shortcut = if cin != c || (j == 0 && g > 0) { m(cin, c)? } else { 0 };
                let convs = m(m(cin, c)?.checked_add(m(c, c)?)?, 9)?;
                params = params.checked_add(convs)?.checked_add(shortcut)?;
                bn_channels = bn_channels.checked_add(cin)?.checked_add(c)?;
                cin = c;
            }
        }
        let classes = self.classes as u64;
        params = params.checked_add(m(cin, classes)?)?.checked_add(classes)?;
        bn_channels = bn_channels.checked_add(cin)?;
        // Each BN channel has a weight and a bias (parameters) and two running statistics.
        params = params.checked_add(m(2, bn_channels)?)?;
        let floats = m(2, params)?.checked_add(m(2, bn_channels)?)?;
        m(4, floats)
    }

    /// Bytes of the largest input, activation or logits buffer at `batch` images: the input,
    /// the first group's `16k` channels at 32x32, or the logits. `None` past 64 bits.
    fn largest_buffer_bytes(&self, batch: usize) -> Option<u64> {
        let m = u64::checked_mul;
        let per_image = m(self.in_channels.max(16) as u64, 1024)?.max(m(16 * 1024, self.widen as u64)?);
        let floats = m(per_image, batch as u64)?.max(m(self.classes as u64, batch as u64)?);
        m(4, floats)
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

/// `1.5 TiB`, `340.0 MiB`, ...; `None` (past 64 bits) as "more than 16 EiB".
pub fn size_text(bytes: Option<u64>) -> String {
    let Some(b) = bytes else {
        return "more than 16 EiB".to_string();
    };
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut value = b as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{b} B")
    } else {
        format!("{value:.1} {}", units[unit])
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

    fn wrn(depth: usize, widen: usize) -> ModelConfig {
        ModelConfig { depth, widen, classes: 10, in_channels: 3, keep: 1.0 }
    }

    #[test]
    fn check_names_each_field() {
        assert!(wrn(28, 10).check().is_ok());
        assert!(wrn(MAX_DEPTH, 1).check().is_ok());
        for (c, field) in [
            (wrn(0, 4), "depth"),
            (wrn(12, 4), "depth"),
            (wrn(MAX_DEPTH + 6, 1), "depth"),
            (wrn(usize::MAX, 1), "depth"),
            (wrn(16, 0), "widen"),
            (ModelConfig { keep: f64::NAN, ..wrn(16, 1) }, "keep"),
            (ModelConfig { classes: 1, ..wrn(16, 1) }, "classes"),
            (ModelConfig { in_channels: 0, ..wrn(16, 1) }, "in_channels"),
        ] {
            assert_eq!(c.check().unwrap_err().field, field, "{c:?}");
        }
        let e = wrn(16, 1).footprint(0).unwrap_err();
        assert_eq!((e.field, e.value.as_str()), ("batch", "0"));
        let msg = ModelConfig { in_channels: 0, ..wrn(16, 1) }.validate().unwrap_err().to_string();
        assert!(msg.contains("--in-channels") && msg.contains("'0'"), "{msg}");
        let msg = wrn(0, 4).check().unwrap_err().in_checkpoint(Path::new("a/b.ckpt")).to_string();
        assert!(msg.contains("a/b.ckpt") && msg.contains("config.depth 0") && !msg.contains("--depth"), "{msg}");
    }

    #[test]
    fn footprint_of_wrn_28_10() {
        // 36.5 M parameters (as PyTorch counts them), each with momentum, and 8976 BN channels
        // with a running mean and variance each.
        let f = wrn(28, 10).footprint(128).unwrap();
        let params = (f.persistent_bytes / 4 - 2 * 8_976) / 2;
        assert_eq!(params, 36_479_194);
        // The first group's activation: 160 channels x 128 images x 32 x 32 floats.
        assert_eq!(f.largest_buffer_bytes, 160 * 128 * 1024 * 4);
    }

    #[test]
    fn sizes_past_the_limit_name_the_value_that_causes_them() {
        let case = |c: ModelConfig, batch: usize, field: &str, value: &str| {
            let e = c.footprint(batch).unwrap_err();
            assert_eq!((e.field, e.value.as_str()), (field, value), "{c:?} batch {batch}: {}", e.expected);
            assert!(e.expected.contains("1.0 TiB"), "{}", e.expected);
        };
        case(wrn(16, 20_000_000), 128, "widen", "20000000");
        case(wrn(16, 1 << 32), 128, "widen", "4294967296");
        case(wrn(16, usize::MAX), 1, "widen", &usize::MAX.to_string());
        case(wrn(16, 4), 1_000_000_000_000_000, "batch", "1000000000000000");
        case(wrn(16, 4), usize::MAX, "batch", &usize::MAX.to_string());
        case(ModelConfig { classes: 1 << 40, ..wrn(16, 1) }, 1, "classes", "1099511627776");
        case(ModelConfig { in_channels: 1 << 40, ..wrn(16, 1) }, 1, "in_channels", "1099511627776");
        case(wrn(MAX_DEPTH, 200), 1, "widen", "200");
        let e = wrn(16, usize::MAX).footprint(1).unwrap_err();
        assert!(e.expected.contains("more than 16 EiB"), "{}", e.expected);
        // Just inside: a 1 TiB activation.
        assert!(wrn(10, 1).footprint(1 << 24).is_ok());
        assert!(wrn(10, 1).footprint((1 << 24) + 1).is_err());
    }

    #[test]
    fn sizes_read_in_binary_units() {
        assert_eq!(size_text(Some(0)), "0 B");
        assert_eq!(size_text(Some(1023)), "1023 B");
        assert_eq!(size_text(Some(3 << 19)), "1.5 MiB");
        assert_eq!(size_text(Some(MAX_BYTES)), "1.0 TiB");
        assert_eq!(size_text(Some(u64::MAX)), "16.0 EiB");
        assert_eq!(size_text(None), "more than 16 EiB");
    }
}
