//! The 8 x 8 transpose that packing uses where it turns rows into columns (an `A` with
//! contiguous rows, a `B` with contiguous columns): eight vector loads, 24 shuffles and eight
//! vector stores instead of 64 scalar moves with strided writes.

use std::arch::x86_64::*;

/// `dst[c * ds + r] = src[r * ss + c]` for `r, c < 8`.
///
/// # Safety
/// The processor has AVX; the eight source rows and eight destination rows of 8 floats are
/// valid, and they do not overlap.
#[target_feature(enable = "avx")]
pub unsafe fn t8x8(src: *const f32, ss: usize, dst: *mut f32, ds: usize) {
    unsafe {
        let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(src.add(i * ss)));
        // Pairs of rows interleaved, then pairs of pairs: lane halves hold columns c and c + 4.
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        let cols = [
            _mm256_permute2f128_ps::<0x20>(s0, s4),
            _mm256_permute2f128_ps::<0x20>(s1, s5),
            _mm256_permute2f128_ps::<0x20>(s2, s6),
            _mm256_permute2f128_ps::<0x20>(s3, s7),
            _mm256_permute2f128_ps::<0x31>(s0, s4),
            _mm256_permute2f128_ps::<0x31>(s1, s5),
            _mm256_permute2f128_ps::<0x31>(s2, s6),
            _mm256_permute2f128_ps::<0x31>(s3, s7),
        ];
        for (c, v) in cols.iter().enumerate() {
            _mm256_storeu_ps(dst.add(c * ds), *v);
        }
    }
}
