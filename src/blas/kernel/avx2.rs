//! The AVX2 + FMA tile: 6 rows x 2 vectors of 8 = 12 accumulators, leaving registers for the
//! two `B` vectors and one broadcast `A` value (16 `ymm` registers in all).

use super::{store_edge, MatMut, Tile};
use std::arch::x86_64::*;

pub struct Avx2;

const MR: usize = 6;
const NR: usize = 16;

impl Tile for Avx2 {
    const MR: usize = MR;
    const NR: usize = NR;
    /// A packed `KC x NR` `B` micro-panel is 16 KiB, a share of L1d.
    const KC: usize = 256;
    /// A packed `MC x KC` `A` block is 144 KiB, well inside L2.
    const MC: usize = 144;
    /// A packed `KC x NC` `B` block is 2 MiB, a share of L3.
    const NC: usize = 2048;

    const AVX_PACK: bool = true;

    unsafe fn tile(kc: usize, a: *const f32, b: *const f32, c: MatMut, mr: usize, nr: usize, load: bool) {
        unsafe { tile(kc, a, b, c, mr, nr, load) }
    }
}

/// One `MR x NR` tile over `kc` packed steps: two `B` loads and six broadcasts per step.
///
/// # Safety
/// As [`Tile::tile`], on a processor with AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
unsafe fn tile(kc: usize, a: *const f32, b: *const f32, c: MatMut, mr: usize, nr: usize, load: bool) {
    let mut acc = [[_mm256_setzero_ps(); 2]; MR];
    let (mut a, mut b) = (a, b);
    // One packed step: two B vectors, six broadcasts, twelve FMAs.
    let mut step = |a: *const f32, b: *const f32| unsafe {
        let b0 = _mm256_loadu_ps(b);
        let b1 = _mm256_loadu_ps(b.add(8));
        for (i, r) in acc.iter_mut().enumerate() {
            let av = _mm256_broadcast_ss(&*a.add(i));
            r[0] = _mm256_fmadd_ps(av, b0, r[0]);
            r[1] = _mm256_fmadd_ps(av, b1, r[1]);
        }
    };
    // Unrolled by four so loop overhead and address updates hide behind the FMAs.
    for _ in 0..kc / 4 {
        unsafe {
            step(a, b);
            step(a.add(MR), b.add(NR));
            step(a.add(2 * MR), b.add(2 * NR));
            step(a.add(3 * MR), b.add(3 * NR));
            a = a.add(4 * MR);
            b = b.add(4 * NR);
        }
    }
    for _ in 0..kc % 4 {
        unsafe {
            step(a, b);
            a = a.add(MR);
            b = b.add(NR);
        }
    }
    if nr == NR && c.cs == 1 {
        // Full-width rows (edge tiles included: m = 16 leaves a 4-row tile in every column
        // block) store as vectors.
        for (i, r) in acc.iter().enumerate().take(mr) {
            unsafe {
                let p = c.ptr.add(i * c.rs);
                let (mut v0, mut v1) = (r[0], r[1]);
                if load {
                    v0 = _mm256_add_ps(v0, _mm256_loadu_ps(p));
                    v1 = _mm256_add_ps(v1, _mm256_loadu_ps(p.add(8)));
                }
                _mm256_storeu_ps(p, v0);
                _mm256_storeu_ps(p.add(8), v1);
            }
        }
    } else {
        let mut tmp = [[0f32; NR]; MR];
        for (t, r) in tmp.iter_mut().zip(&acc) {
            unsafe {
                _mm256_storeu_ps(t.as_mut_ptr(), r[0]);
                _mm256_storeu_ps(t.as_mut_ptr().add(8), r[1]);
            }
        }
        unsafe { store_edge(tmp.as_flattened(), NR, c, mr, nr, load) };
    }
}
