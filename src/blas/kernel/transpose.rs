//! The moves packing uses where it turns rows into columns (an `A` with contiguous rows, a `B`
//! with contiguous columns): an 8 x 8 transpose of 32-bit words (f32, or bf16 pairs) in eight
//! vector loads, 24 shuffles and eight vector stores instead of 64 scalar moves with strided
//! writes; and the interleave of two bf16 rows into pair words.

use std::arch::x86_64::*;

/// `dst[c * ds + r] = src[r][c]` for `r, c < 8`, 32-bit words, source row `r` starting
/// `r * ss_bytes` bytes after `src` (a bf16 matrix's rows may start at any even address).
///
/// # Safety
/// The processor has AVX; the eight source rows and eight destination rows of 8 words are
/// valid, and they do not overlap.
#[target_feature(enable = "avx")]
pub unsafe fn t8x8(src: *const u8, ss_bytes: usize, dst: *mut f32, ds: usize) {
    unsafe {
        let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(src.add(i * ss_bytes).cast()));
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

/// `dst[j] = lo[j] | hi[j] << 16` for `j < 16`: two rows of 16 bf16 into 16 pair words.
///
/// # Safety
/// The processor has AVX2; both rows of 16 bf16 and the 16 destination words are valid.
#[target_feature(enable = "avx2")]
pub unsafe fn interleave16(lo: *const u16, hi: *const u16, dst: *mut f32) {
    unsafe {
        let (a, b) = (_mm256_loadu_si256(lo.cast()), _mm256_loadu_si256(hi.cast()));
        // Within each 128-bit half: columns 0-3 (and 8-11) paired, then 4-7 (and 12-15).
        let (l, h) = (_mm256_unpacklo_epi16(a, b), _mm256_unpackhi_epi16(a, b));
        _mm256_storeu_si256(dst.cast(), _mm256_permute2x128_si256::<0x20>(l, h));
        _mm256_storeu_si256(dst.add(8).cast(), _mm256_permute2x128_si256::<0x31>(l, h));
    }
}

/// `dst[i] = lo[i] | hi[i] << 16` for `i < 8`: two rows of 8 bf16 into 8 pair words.
///
/// # Safety
/// The processor has SSE2; both rows of 8 bf16 and the 8 destination words are valid.
#[target_feature(enable = "sse2")]
pub unsafe fn interleave8(lo: *const u16, hi: *const u16, dst: *mut f32) {
    unsafe {
        let (a, b) = (_mm_loadu_si128(lo.cast()), _mm_loadu_si128(hi.cast()));
        _mm_storeu_si128(dst.cast(), _mm_unpacklo_epi16(a, b));
        _mm_storeu_si128(dst.add(4).cast(), _mm_unpackhi_epi16(a, b));
    }
}
