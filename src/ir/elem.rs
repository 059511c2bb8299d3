//! The element types a CPU kernel stores: `f32` and [`Bf16`], behind one small trait
//! ([`Elem`]) so that each kernel is written once, generic over what it loads and stores, and
//! computes in f32 whatever it stores.
//!
//! bf16 is f32's upper half: sign, the same 8-bit exponent, 7 mantissa bits. Widening is exact
//! (`bf16_to_f32`); narrowing rounds to nearest, ties to even (`f32_to_bf16`), the rounding of
//! `__float2bfloat16_rn` on a GPU, so the CPU's bf16 path rounds as the GPU's will. With 8
//! significant bits (7 stored, one implicit) neighbouring bf16 values are 2^-7 apart relative
//! to their binade, so one rounding errs by at most half of that: the unit roundoff is
//! u = 2^-8 = 3.9e-3 (f32: 2^-24).

use super::Dtype;

/// A bfloat16 value, stored as its 16 bits.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
#[repr(transparent)]
pub struct Bf16(pub u16);

impl std::fmt::Debug for Bf16 {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "{}bf16", self.to_f32())
    }
}

/// `x` rounded to the nearest bf16, ties to the even one; a NaN stays a NaN (quiet, same sign).
/// Values past bf16's largest finite one (which f32 shares up to its last 16 mantissa bits)
/// round to infinity exactly when they are past the halfway point, as IEEE 754 says.
#[inline(always)]
pub fn f32_to_bf16(x: f32) -> Bf16 {
    let bits = x.to_bits();
    // Adding 0x7fff plus the lowest kept bit carries into the kept bits exactly when the
    // dropped half is above 0x8000, or equal to it with an odd kept half.
    let rounded = (bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16) as u16;
    // A NaN whose payload lives in the dropped bits would truncate to infinity: set the quiet bit.
    let nan = ((bits >> 16) as u16) | 0x0040;
    Bf16(if x.is_nan() { nan } else { rounded })
}

/// The f32 with the same value (exact).
#[inline(always)]
pub fn bf16_to_f32(x: Bf16) -> f32 {
    f32::from_bits((x.0 as u32) << 16)
}

impl Bf16 {
    pub fn to_f32(self) -> f32 {
        bf16_to_f32(self)
    }
}

/// What a kernel may store: converted from f32 on every store, to f32 on every load.
pub trait Elem: Copy + Default + Send + Sync + std::fmt::Debug + 'static {
    const DTYPE: Dtype;
    fn from_f32(x: f32) -> Self;
    fn to_f32(self) -> f32;
    /// The slice itself when the elements are f32 (for the f32-only algorithms), else `None`.
    fn as_f32(x: &[Self]) -> Option<&[f32]>;
    fn as_f32_mut(x: &mut [Self]) -> Option<&mut [f32]>;
}

impl Elem for f32 {
    const DTYPE: Dtype = Dtype::F32;
    #[inline(always)]
    fn from_f32(x: f32) -> f32 {
        x
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    fn as_f32(x: &[f32]) -> Option<&[f32]> {
        Some(x)
    }
    fn as_f32_mut(x: &mut [f32]) -> Option<&mut [f32]> {
        Some(x)
    }
}

impl Elem for Bf16 {
    const DTYPE: Dtype = Dtype::Bf16;
    #[inline(always)]
    fn from_f32(x: f32) -> Bf16 {
        f32_to_bf16(x)
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        bf16_to_f32(self)
    }
    fn as_f32(_: &[Bf16]) -> Option<&[f32]> {
        None
    }
    fn as_f32_mut(_: &mut [Bf16]) -> Option<&mut [f32]> {
        None
    }
}

/// `dst[i] = src[i]` converted (rounded when narrowing); the lengths must agree.
pub fn convert<D: Elem, S: Elem>(dst: &mut [D], src: &[S]) {
    assert_eq!(dst.len(), src.len(), "convert: lengths");
    dst.iter_mut().zip(src).for_each(|(d, s)| *d = D::from_f32(s.to_f32()));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(x: f32) -> u16 {
        f32_to_bf16(x).0
    }

    fn bits(b: u32) -> f32 {
        f32::from_bits(b)
    }

    #[test]
    fn exact_values_pass_through() {
        for x in [0.0f32, 1.0, -2.5, 0.15625, 65280.0, f32::MIN_POSITIVE] {
            assert_eq!(bf16_to_f32(f32_to_bf16(x)), x, "{x}");
        }
        assert_eq!(round(-0.0), 0x8000);
        assert_eq!(round(1.0), 0x3f80);
    }

    #[test]
    fn ties_go_to_the_even_neighbour() {
        // 1 + 2^-8 lies halfway between 1 (0x3f80, even) and 1 + 2^-7 (0x3f81): down.
        assert_eq!(round(bits(0x3f80_8000)), 0x3f80);
        // 1 + 3*2^-8 lies halfway between 0x3f81 (odd) and 0x3f82 (even): up.
        assert_eq!(round(bits(0x3f81_8000)), 0x3f82);
        // Just off the halfway point the nearer neighbour wins, whatever its parity.
        assert_eq!(round(bits(0x3f80_8001)), 0x3f81);
        assert_eq!(round(bits(0x3f81_7fff)), 0x3f81);
        // Negative ties mirror the positive ones.
        assert_eq!(round(bits(0xbf80_8000)), 0xbf80);
        assert_eq!(round(bits(0xbf81_8000)), 0xbf82);
        // A tie that carries into the exponent: 2 - 2^-8 is halfway between 0x3fff (odd) and 2.
        assert_eq!(round(bits(0x3fff_8000)), 0x4000);
    }

    #[test]
    fn nan_stays_nan_and_infinities_stay_infinite() {
        for b in [0x7fc0_0000u32, 0xffc0_0000, 0x7f80_0001, 0xff80_0001, 0x7fff_ffff, 0x7f80_ffff] {
            let r = f32_to_bf16(bits(b));
            assert!(r.to_f32().is_nan(), "{b:#x} -> {:#x}", r.0);
            assert_eq!(r.0 & 0x8000, (b >> 16) as u16 & 0x8000, "sign of {b:#x}");
        }
        assert_eq!(round(f32::INFINITY), 0x7f80);
        assert_eq!(round(f32::NEG_INFINITY), 0xff80);
        // f32's largest finite value is past the halfway point above bf16's (0x7f7f): infinity.
        assert_eq!(round(f32::MAX), 0x7f80);
        assert_eq!(round(-f32::MAX), 0xff80);
        // Below the halfway point it stays finite; at it, 0x7f7f is odd, so it goes up.
        assert_eq!(round(bits(0x7f7f_7fff)), 0x7f7f);
        assert_eq!(round(bits(0x7f7f_8000)), 0x7f80);
    }

    #[test]
    fn subnormals_round_like_any_other_value() {
        // bf16 keeps f32's exponent, so it has subnormals too, with 7 mantissa bits.
        assert_eq!(round(bits(0x0000_0001)), 0x0000);
        assert_eq!(round(bits(0x0000_8000)), 0x0000); // tie, to even 0
        assert_eq!(round(bits(0x0001_8000)), 0x0002); // tie, to even 2
        assert_eq!(round(bits(0x0001_0000)), 0x0001);
        assert_eq!(round(bits(0x8000_c000)), 0x8001);
        // The largest subnormal rounds up into the smallest normal.
        assert_eq!(round(bits(0x007f_ffff)), 0x0080);
        assert!(bf16_to_f32(Bf16(0x0001)) > 0.0 && bf16_to_f32(Bf16(0x0001)) < f32::MIN_POSITIVE);
    }

    #[test]
    fn every_bf16_widens_and_narrows_back_to_itself() {
        for b in 0..=u16::MAX {
            let x = bf16_to_f32(Bf16(b));
            assert_eq!(x.to_bits(), (b as u32) << 16);
            if !x.is_nan() {
                assert_eq!(round(x), b);
            }
        }
    }

    /// Against the definition: the result is a neighbour of `x` no farther than the other one,
    /// and on a tie the even one; relative error at most u = 2^-8 for normal values.
    #[test]
    fn rounds_to_the_nearest_neighbour() {
        let mut rng = crate::rng::Rng::new(7, 0);
        for _ in 0..200_000 {
            let x = bits(rng.next_u64() as u32);
            if !x.is_finite() || x.abs() >= bits(0x7f7f_0000) {
                continue;
            }
            let r = round(x);
            let lo = bits(x.to_bits() & 0xffff_0000);
            let hi = bits((x.to_bits() & 0xffff_0000) + 0x1_0000);
            let (dl, dh) = ((x as f64 - lo as f64).abs(), (hi as f64 - x as f64).abs());
            let want = if dl < dh || (dl == dh && (lo.to_bits() >> 16) & 1 == 0) { lo } else { hi };
            assert_eq!(r, (want.to_bits() >> 16) as u16, "{x:e}");
            if x.abs() >= f32::MIN_POSITIVE {
                let rel = (bf16_to_f32(Bf16(r)) as f64 - x as f64).abs() / x.abs() as f64;
                assert!(rel <= 1.0 / 256.0, "{x:e}: {rel}");
            }
        }
    }

    #[test]
    fn convert_rounds_each_element() {
        let src = [1.0f32, bits(0x3f80_8001), -3.0];
        let mut dst = [Bf16::default(); 3];
        convert(&mut dst, &src);
        assert_eq!(dst.map(|b| b.0), [0x3f80, 0x3f81, 0xc040]);
        let mut back = [0f32; 3];
        convert(&mut back, &dst);
        assert_eq!(back, [1.0, 1.0078125, -3.0]);
        assert_eq!(<f32 as Elem>::as_f32(&src).map(|s| s.len()), Some(3));
        assert!(<Bf16 as Elem>::as_f32(&dst).is_none());
    }
}
