//! SliceOut's rules (docs/DESIGN.md): the slice width of a layer, the draw of slice starts, and the
//! one or two contiguous channel ranges a slice covers when it wraps past the last channel.

use crate::rng::Rng;

/// Kept width `w = max(1, round(keep * c))`, rounding half to even as the reference does.
pub fn width(keep: f64, channels: usize) -> usize {
    ((keep * channels as f64).round_ties_even() as usize).clamp(1, channels)
}

/// One contiguous run of a slice: channels `[channel, channel + len)` of the full layer, stored
/// at `[at, at + len)` of the sliced buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    pub channel: usize,
    pub at: usize,
    pub len: usize,
}

/// The `width` channels `start, start + 1, ...` of a `channels`-wide layer, modulo `channels`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slice {
    pub start: usize,
    pub width: usize,
    pub channels: usize,
}

impl Slice {
    pub fn new(start: usize, width: usize, channels: usize) -> Slice {
        assert!(start < channels && width >= 1 && width <= channels);
        Slice { start, width, channels }
    }

    /// The whole layer (no slicing).
    pub fn full(channels: usize) -> Slice {
        Slice { start: 0, width: channels, channels }
    }

    pub fn is_full(&self) -> bool {
        self.width == self.channels
    }

    /// The one or two runs, in slice order. The second is empty when the slice does not wrap.
    pub fn runs(&self) -> [Run; 2] {
        let first = self.width.min(self.channels - self.start);
        [Run { channel: self.start, at: 0, len: first }, Run { channel: 0, at: first, len: self.width - first }]
    }

    /// Iterates the non-empty runs.
    pub fn each_run(&self) -> impl Iterator<Item = Run> {
        self.runs().into_iter().filter(|r| r.len > 0)
    }

    /// `c / w`: inverted-dropout scaling of the kept channels.
    pub fn scale(&self) -> f32 {
        (self.channels as f64 / self.width as f64) as f32
    }
}

/// Draws a start uniformly from `{0, a, 2a, ...} < channels`.
pub fn sample_start(rng: &mut Rng, channels: usize, align: usize) -> usize {
    let align = align.max(1);
    rng.below(channels.div_ceil(align)) * align
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn width_rounds_half_to_even_and_is_at_least_one() {
        assert_eq!(width(0.5, 32), 16);
        assert_eq!(width(0.5, 5), 2); // 2.5 -> 2
        assert_eq!(width(0.5, 7), 4); // 3.5 -> 4
        assert_eq!(width(0.01, 10), 1);
        assert_eq!(width(1.0, 10), 10);
    }

    #[test]
    fn runs_wrap_past_the_last_channel() {
        let s = Slice::new(25, 16, 32);
        let r = s.runs();
        assert_eq!(r[0], Run { channel: 25, at: 0, len: 7 });
        assert_eq!(r[1], Run { channel: 0, at: 7, len: 9 });
        let s = Slice::new(5, 16, 32);
        assert_eq!(s.each_run().count(), 1);
        assert_eq!(s.runs()[0], Run { channel: 5, at: 0, len: 16 });
    }

    #[test]
    fn every_channel_is_kept_equally_often() {
        // With the wrap and all starts equally likely, each channel is kept in exactly w of
        // the c sub-networks.
        let (c, w) = (12, 5);
        let mut kept = vec![0; c];
        for start in 0..c {
            for r in Slice::new(start, w, c).each_run() {
                for k in kept.iter_mut().skip(r.channel).take(r.len) {
                    *k += 1;
                }
            }
        }
        assert!(kept.iter().all(|&k| k == w));
    }

    #[test]
    fn starts_respect_alignment() {
        let mut rng = Rng::new(3, 4);
        for _ in 0..200 {
            let s = sample_start(&mut rng, 20, 8);
            assert!(s.is_multiple_of(8) && s < 20);
        }
    }
}
