//! bf16 x bf16 products by AVX-512 BF16's `vdpbf16ps`: each lane multiplies two bf16 pairs and
//! adds both products to its f32 sum, so one instruction does twice the products of an f32 FMA
//! and the packed operands are half the bytes.
//!
//! Packing keeps bf16 and pairs `k`: `A` micro-panels are `[q][i]` and `B` micro-panels `[q][j]`,
//! each element a 32-bit word holding rows `2q` (low half) and `2q + 1` (high half), an odd `k`
//! padded with a zero. The words live in the f32 packing buffers as raw bits. The tile is the
//! f32 AVX-512 tile's shape, so [`Kernel::mr`](super::Kernel::mr) and `nr` hold for both.
//!
//! Rounding: a bf16 product is exact in f32, so the only differences from the f32 tile on the
//! widened operands are the order of the two products of a pair and the instruction's
//! flushing of subnormal inputs and results to zero (it ignores MXCSR). The tests bound both.

use super::avx512::{self, Avx512};
use super::{staged, transpose, MatMut, MatRef, PackBuf, Tile};
use crate::ir::{Bf16, Elem};
use std::arch::x86_64::*;

const MR: usize = Avx512::MR;
const NR: usize = Avx512::NR;
const NV: usize = NR / 16;
/// Depth of one packed block in `k` (pairs are half that): the `B` micro-panel is as many
/// bytes as the f32 tile's, and both packed blocks fit the f32 tile's buffers.
const KC: usize = 2 * Avx512::KC;

/// `C (+)= A*B` for bf16 `A` and `B` and a `C` of any type, on the calling thread.
///
/// # Safety
/// As `gemm_blocked`; the processor has AVX-512 F and BF16.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_staged<C: Elem>(
    c: MatMut<C>,
    a: MatRef<Bf16>,
    b: MatRef<Bf16>,
    m: usize,
    n: usize,
    k: usize,
    accumulate: bool,
    buf: &mut PackBuf,
) {
    let (apack, bpack, stage) = buf.split();
    let blocked = |c: MatMut, a: MatRef<Bf16>, b: MatRef<Bf16>, m, n, acc| unsafe {
        gemm_blocked(c, a, b, m, n, k, acc, apack, bpack)
    };
    unsafe { staged(c, a, b, m, n, accumulate, Avx512::MC, Avx512::NC, stage, blocked) }
}

#[allow(clippy::too_many_arguments)]
unsafe fn gemm_blocked(
    c: MatMut,
    a: MatRef<Bf16>,
    b: MatRef<Bf16>,
    m: usize,
    n: usize,
    k: usize,
    accumulate: bool,
    apack: &mut [f32],
    bpack: &mut [f32],
) {
    if c.cs != 1 && c.rs == 1 && n > 1 {
        return unsafe { gemm_blocked(c.t(), b.t(), a.t(), n, m, k, accumulate, apack, bpack) };
    }
    // Even k blocks, each of an even length where it can be, so only the last pads.
    let kc_step = k.div_ceil(k.div_ceil(KC)).next_multiple_of(2).min(KC);
    for jc in (0..n).step_by(Avx512::NC) {
        let nc = Avx512::NC.min(n - jc);
        for (pi, pc) in (0..k).step_by(kc_step).enumerate() {
            let kc = kc_step.min(k - pc);
            let kq = kc.div_ceil(2);
            let load = accumulate || pi > 0;
            for ic in (0..m).step_by(Avx512::MC) {
                let mc = Avx512::MC.min(m - ic);
                unsafe { pack_a(apack, a.at(ic, pc), mc, kc) };
                for jr in (jc..jc + nc).step_by(NR) {
                    let nr = NR.min(jc + nc - jr);
                    unsafe { pack_b(bpack, b.at(pc, jr), kc, nr) };
                    for ir in (0..mc).step_by(MR) {
                        let ap = apack[ir * kq..].as_ptr();
                        unsafe { tile(kq, ap, bpack.as_ptr(), c.at(ic + ir, jr), MR.min(mc - ir), nr, load) };
                    }
                }
            }
        }
    }
}

/// The 32-bit word of a pair: `lo` in the low half.
fn pair(lo: Bf16, hi: Bf16) -> f32 {
    f32::from_bits(lo.0 as u32 | (hi.0 as u32) << 16)
}

/// Packs `mc x kc` of `A` into micro-panels of `MR` rows of pairs, `[panel][q][i]`.
unsafe fn pack_a(dst: &mut [f32], a: MatRef<Bf16>, mc: usize, kc: usize) {
    let kq = kc.div_ceil(2);
    let zero = Bf16::default();
    for (q0, r0) in (0..mc).step_by(MR).enumerate() {
        let mr = MR.min(mc - r0);
        let panel = &mut dst[q0 * MR * kq..(q0 + 1) * MR * kq];
        // Whole pairs of a whole panel by vector moves: contiguous rows hold pair words
        // already (transposed 8 x 8), contiguous columns hold a pair's two halves in two
        // rows of memory (interleaved).
        let mut done = 0;
        if mr == MR && a.cs == 1 {
            done = kc / 16 * 8;
            for q in (0..done).step_by(8) {
                // SAFETY: rows r0..r0+8, columns 2q..2q+16 lie inside the view.
                let src = unsafe { a.ptr.add(r0 * a.rs + 2 * q) };
                unsafe { transpose::t8x8(src.cast(), 2 * a.rs, panel.as_mut_ptr().add(q * MR), MR) };
            }
        } else if mr == MR && a.rs == 1 {
            done = kc / 2;
            for q in 0..done {
                // SAFETY: rows r0..r0+8 of columns 2q and 2q + 1 lie inside the view.
                let (lo, hi) = unsafe { (a.ptr.add(r0 + 2 * q * a.cs), a.ptr.add(r0 + (2 * q + 1) * a.cs)) };
                unsafe { transpose::interleave8(lo.cast(), hi.cast(), panel.as_mut_ptr().add(q * MR)) };
            }
        }
        if mr < MR {
            panel.fill(0.0);
        }
        for i in 0..mr {
            let at = |p: usize| if p < kc { unsafe { *a.ptr.add((r0 + i) * a.rs + p * a.cs) } } else { zero };
            for q in done..kq {
                panel[q * MR + i] = pair(at(2 * q), at(2 * q + 1));
            }
        }
    }
}

/// Packs `kc x nr` of `B` (one micro-panel) into pairs, `[q][j]`, zero-padding.
unsafe fn pack_b(dst: &mut [f32], b: MatRef<Bf16>, kc: usize, nr: usize) {
    let kq = kc.div_ceil(2);
    let zero = Bf16::default();
    let panel = &mut dst[..NR * kq];
    if nr < NR {
        panel.fill(0.0);
    }
    // Whole pairs of whole groups of columns by vector moves, as `pack_a`.
    let (mut cols, mut depth) = (0, 0);
    if b.cs == 1 {
        (cols, depth) = (nr / 16 * 16, kc / 2);
        for q in 0..depth {
            for j in (0..cols).step_by(16) {
                // SAFETY: rows 2q, 2q + 1 and columns j..j+16 lie inside the view.
                let (lo, hi) = unsafe { (b.ptr.add(2 * q * b.rs + j), b.ptr.add((2 * q + 1) * b.rs + j)) };
                unsafe { transpose::interleave16(lo.cast(), hi.cast(), panel.as_mut_ptr().add(q * NR + j)) };
            }
        }
    } else if b.rs == 1 {
        (cols, depth) = (nr / 8 * 8, kc / 16 * 8);
        for j in (0..cols).step_by(8) {
            for q in (0..depth).step_by(8) {
                // SAFETY: columns j..j+8 and rows 2q..2q+16 lie inside the view.
                let src = unsafe { b.ptr.add(j * b.cs + 2 * q) };
                unsafe { transpose::t8x8(src.cast(), 2 * b.cs, panel.as_mut_ptr().add(q * NR + j), NR) };
            }
        }
    }
    let at = |p: usize, j: usize| if p < kc { unsafe { *b.ptr.add(p * b.rs + j * b.cs) } } else { zero };
    for q in 0..kq {
        let first = if q < depth { cols } else { 0 };
        for j in first..nr {
            panel[q * NR + j] = pair(at(2 * q, j), at(2 * q + 1, j));
        }
    }
}

/// One tile over `kq` packed pairs: `NV` `B` loads, `MR` broadcasts and `MR x NV` pair dot
/// products per step.
///
/// # Safety
/// The processor has AVX-512 F and BF16; `a`/`b` point at packed pair panels of `kq` steps;
/// `c` covers `mr x nr` elements.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn tile(kq: usize, a: *const f32, b: *const f32, c: MatMut, mr: usize, nr: usize, load: bool) {
    let mut acc = [[_mm512_setzero_ps(); NV]; MR];
    let (mut a, mut b) = (a.cast::<i32>(), b);
    for _ in 0..kq {
        unsafe {
            let mut bv = [_mm512_setzero_ps(); NV];
            for (v, x) in bv.iter_mut().enumerate() {
                *x = _mm512_loadu_ps(b.add(16 * v));
            }
            for (i, row) in acc.iter_mut().enumerate() {
                let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a.add(i)));
                for (x, &bx) in row.iter_mut().zip(&bv) {
                    *x = _mm512_dpbf16_ps(*x, av, std::mem::transmute::<__m512, __m512bh>(bx));
                }
            }
            a = a.add(MR);
            b = b.add(NR);
        }
    }
    unsafe { avx512::store(&acc, c, mr, nr, load) };
}
