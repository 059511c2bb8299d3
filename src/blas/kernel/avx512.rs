//! The AVX-512 tile: 8 rows x 3 vectors of 16 = 24 accumulators of the 32 `zmm` registers,
//! with three `B` vectors and one broadcast `A` value beside them. Eight rows divide every
//! channel count of the networks' layers and their slices, so `m` rarely leaves a part tile.

use super::{store_edge, MatMut, Tile};
use std::arch::x86_64::*;

pub struct Avx512;

const MR: usize = 8;
/// Vectors of 16 lanes across the tile.
const NV: usize = 3;
const NR: usize = 16 * NV;

impl Tile for Avx512 {
    const MR: usize = MR;
    const NR: usize = NR;
    /// A packed `KC x NR` `B` micro-panel is 24 KiB, half of L1d.
    const KC: usize = 128;
    /// A packed `MC x KC` `A` block is 128 KiB, inside L2.
    const MC: usize = 256;
    /// A packed `KC x NC` `B` block is 1.5 MiB, a share of L3.
    const NC: usize = 3072;

    const AVX_PACK: bool = true;

    unsafe fn tile(kc: usize, a: *const f32, b: *const f32, c: MatMut, mr: usize, nr: usize, load: bool) {
        unsafe { tile(kc, a, b, c, mr, nr, load) }
    }
}

/// One `MR x NR` tile over `kc` packed steps: `NV` `B` loads and `MR` broadcasts per step.
///
/// # Safety
/// As [`Tile::tile`], on a processor with AVX-512 F.
#[target_feature(enable = "avx512f")]
unsafe fn tile(kc: usize, a: *const f32, b: *const f32, c: MatMut, mr: usize, nr: usize, load: bool) {
    let mut acc = [[_mm512_setzero_ps(); NV]; MR];
    let (mut a, mut b) = (a, b);
    for _ in 0..kc {
        unsafe {
            let mut bv = [_mm512_setzero_ps(); NV];
            for (v, x) in bv.iter_mut().enumerate() {
                *x = _mm512_loadu_ps(b.add(16 * v));
            }
            for (i, row) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*a.add(i));
                for (x, &bx) in row.iter_mut().zip(&bv) {
                    *x = _mm512_fmadd_ps(av, bx, *x);
                }
            }
            a = a.add(MR);
            b = b.add(NR);
        }
    }
    unsafe { store(&acc, c, mr, nr, load) };
}

/// Writes the `mr x nr` corner of a tile: row-contiguous rows as (masked) vectors, any other
/// `C` through a staging copy.
///
/// # Safety
/// As [`Tile::tile`], on a processor with AVX-512 F. Always inlined into the tiles (which
/// enable AVX-512 F), so their accumulators stay in registers rather than going through memory
/// for this call.
#[inline(always)]
pub(super) unsafe fn store(acc: &[[__m512; NV]; MR], c: MatMut, mr: usize, nr: usize, load: bool) {
    if c.cs == 1 {
        for (i, row) in acc.iter().enumerate().take(mr) {
            for (v, &x) in row.iter().enumerate() {
                let lanes = nr.saturating_sub(16 * v).min(16);
                if lanes == 0 {
                    break;
                }
                let mask: __mmask16 = if lanes == 16 { 0xffff } else { (1u16 << lanes) - 1 };
                unsafe {
                    let p = c.ptr.add(i * c.rs + 16 * v);
                    let x = if load { _mm512_add_ps(x, _mm512_maskz_loadu_ps(mask, p)) } else { x };
                    _mm512_mask_storeu_ps(p, mask, x);
                }
            }
        }
        return;
    }
    let mut tmp = [[0f32; NR]; MR];
    for (t, row) in tmp.iter_mut().zip(acc) {
        for (v, &x) in row.iter().enumerate() {
            unsafe { _mm512_storeu_ps(t.as_mut_ptr().add(16 * v), x) };
        }
    }
    unsafe { store_edge(tmp.as_flattened(), NR, c, mr, nr, load) };
}
