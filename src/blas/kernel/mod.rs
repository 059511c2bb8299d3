//! The serial blocked product: packing and the register tiles, one file per instruction set.
//!
//! BLIS layout: `k` is cut into blocks of at most `KC` (a packed `B` micro-panel, `KC x NR`,
//! stays in L1 while it meets every `A` micro-panel), `m` into blocks of `MC` rows (the packed
//! `A` block, `MC x KC`, stays in L2) and `n` into blocks of `NC` columns (the packed `B` block
//! lives in L3). Panels are zero-padded to whole tiles, so the tiles always compute a full
//! `MR x NR` block and only the write-back knows about edges. Everything here works on raw
//! pointers and strides; `super` checks the views before anything reaches this file.
//!
//! Each instruction set is a [`Tile`]: its register tile's shape, its block sizes and the tile
//! itself (`portable.rs`, `avx2.rs`, `avx512.rs`); the blocking and packing are written once,
//! generic over it. [`Kernel`] names the one a product runs, chosen at run time ([`Kernel::detect`])
//! or forced by `SLICEOUT_CPU_ISA`.
//!
//! `A` and `B` may hold any [`Elem`]: packing converts to f32 on the fly, so a bf16 operand is
//! never copied whole. The tiles accumulate and write f32; a `C` of another type goes through
//! `gemm_any`'s f32 stage and is rounded once, after the whole sum over `k`. Where the processor
//! has AVX-512 BF16 and both operands are bf16, `bf16dot.rs` packs them as bf16 pairs and its
//! tile multiplies two of them per lane and instruction (the sums stay f32).

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod bf16dot;
mod portable;
#[cfg(target_arch = "x86_64")]
mod transpose;

use crate::ir::{Bf16, Elem};
use std::any::TypeId;

/// A register tile and the block sizes that feed it from the caches.
pub trait Tile {
    /// Rows of the register tile (broadcast `A` values).
    const MR: usize;
    /// Columns of the register tile (vector lanes of `B`).
    const NR: usize;
    /// Depth of one packed block.
    const KC: usize;
    /// Rows of one packed `A` block (a multiple of `MR`).
    const MC: usize;
    /// Columns of one packed `B` block (a multiple of `NR`).
    const NC: usize;
    /// Whether packing may transpose f32 blocks with AVX (every x86 tile; the portable one
    /// stays plain Rust throughout).
    const AVX_PACK: bool;
    /// `C (+)= A*B` for one `MR x NR` tile over `kc` packed steps; writes the `mr x nr` corner.
    ///
    /// # Safety
    /// The processor runs the tile's instructions; `a`/`b` point at packed panels of `kc`
    /// steps; `c` covers `mr x nr` elements.
    unsafe fn tile(kc: usize, a: *const f32, b: *const f32, c: MatMut, mr: usize, nr: usize, load: bool);
}

/// A read-only strided matrix: element `(i, j)` lives at `ptr + i*rs + j*cs`, of any element
/// type: packing converts it to f32.
pub struct MatRef<T = f32> {
    pub ptr: *const T,
    pub rs: usize,
    pub cs: usize,
}

/// A writable strided matrix, as `MatRef`. The tiles write f32; `gemm_any` stages any other
/// element type.
pub struct MatMut<T = f32> {
    pub ptr: *mut T,
    pub rs: usize,
    pub cs: usize,
}

impl<T> Clone for MatRef<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for MatRef<T> {}
impl<T> Clone for MatMut<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for MatMut<T> {}

// SAFETY: the views are plain addresses; `super` hands disjoint `MatMut` blocks to threads and
// keeps the borrows they came from alive until every thread has joined.
unsafe impl<T> Send for MatRef<T> {}
unsafe impl<T> Sync for MatRef<T> {}
unsafe impl<T> Send for MatMut<T> {}
unsafe impl<T> Sync for MatMut<T> {}

impl<T: 'static> MatRef<T> {
    /// The view starting at element `(i, j)`.
    ///
    /// # Safety
    /// `(i, j)` must lie inside the viewed matrix.
    pub unsafe fn at(self, i: usize, j: usize) -> MatRef<T> {
        MatRef { ptr: unsafe { self.ptr.add(i * self.rs + j * self.cs) }, ..self }
    }
    /// The transpose: rows become columns.
    pub fn t(self) -> MatRef<T> {
        MatRef { ptr: self.ptr, rs: self.cs, cs: self.rs }
    }
    /// The same view typed as f32 when its elements are f32 (for the x86 packing).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    fn as_f32(self) -> Option<MatRef<f32>> {
        (TypeId::of::<T>() == TypeId::of::<f32>()).then(|| MatRef { ptr: self.ptr.cast(), rs: self.rs, cs: self.cs })
    }
    /// The same view typed as bf16 when its elements are bf16 (for the BF16 pair products).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    fn as_bf16(self) -> Option<MatRef<Bf16>> {
        (TypeId::of::<T>() == TypeId::of::<Bf16>()).then(|| MatRef { ptr: self.ptr.cast(), rs: self.rs, cs: self.cs })
    }
}

impl<T: 'static> MatMut<T> {
    /// The view starting at element `(i, j)`.
    ///
    /// # Safety
    /// `(i, j)` must lie inside the viewed matrix.
    pub unsafe fn at(self, i: usize, j: usize) -> MatMut<T> {
        MatMut { ptr: unsafe { self.ptr.add(i * self.rs + j * self.cs) }, ..self }
    }
    pub fn t(self) -> MatMut<T> {
        MatMut { ptr: self.ptr, rs: self.cs, cs: self.rs }
    }
    /// The same view typed as f32 when its elements are f32.
    pub fn as_f32(self) -> Option<MatMut<f32>> {
        (TypeId::of::<T>() == TypeId::of::<f32>()).then(|| MatMut { ptr: self.ptr.cast(), rs: self.rs, cs: self.cs })
    }
}

/// Which instruction set runs the tiles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// Plain Rust over arrays, auto-vectorised for whatever the target offers.
    Portable,
    /// `std::arch` AVX2 + FMA intrinsics.
    Avx2,
    /// AVX-512 F intrinsics: 32 registers, 16 lanes.
    Avx512,
    /// `Avx512`, with bf16 x bf16 products by AVX-512 BF16's pair dot product.
    Avx512Bf16,
}

impl Kernel {
    /// Every kernel, slowest first, with the name `SLICEOUT_CPU_ISA` takes.
    pub const ALL: [(Kernel, &'static str); 4] = [
        (Kernel::Portable, "portable"),
        (Kernel::Avx2, "avx2"),
        (Kernel::Avx512, "avx512"),
        (Kernel::Avx512Bf16, "avx512-bf16"),
    ];

    pub fn name(self) -> &'static str {
        Kernel::ALL.iter().find(|(k, _)| *k == self).map_or("?", |(_, n)| n)
    }

    /// Whether this processor runs the kernel's instructions.
    pub fn supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            // `blas::vectorized` compiles loops for F, BW, DQ and VL: every AVX-512 processor
            // since the first server ones has all four, and one without them runs AVX2.
            let avx512 = || {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512dq")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
            };
            match self {
                Kernel::Portable => true,
                Kernel::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
                Kernel::Avx512 => avx512(),
                Kernel::Avx512Bf16 => avx512() && is_x86_feature_detected!("avx512bf16"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Kernel::Portable
        }
    }

    /// The fastest kernel this processor runs.
    pub fn detect() -> Kernel {
        Kernel::ALL.iter().rev().map(|(k, _)| *k).find(|k| k.supported()).unwrap_or(Kernel::Portable)
    }

    /// Rows of the register tile: `super` cuts products along tile boundaries.
    pub fn mr(self) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => avx2::Avx2::MR,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 | Kernel::Avx512Bf16 => avx512::Avx512::MR,
            _ => portable::Portable::MR,
        }
    }

    /// Columns of the register tile.
    pub fn nr(self) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => avx2::Avx2::NR,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 | Kernel::Avx512Bf16 => avx512::Avx512::NR,
            _ => portable::Portable::NR,
        }
    }
}

const fn max(a: usize, b: usize) -> usize {
    if a > b {
        a
    } else {
        b
    }
}

/// The largest `A` and `B` blocks and `C` stage of any tile, so one buffer serves them all.
const A_LEN: usize = max(max(portable::Portable::A_LEN, X86_A_LEN.0), X86_A_LEN.1);
const B_LEN: usize = max(max(portable::Portable::B_LEN, X86_B_LEN.0), X86_B_LEN.1);
const STAGE_LEN: usize = max(max(portable::Portable::STAGE_LEN, X86_STAGE_LEN.0), X86_STAGE_LEN.1);
#[cfg(target_arch = "x86_64")]
const X86_A_LEN: (usize, usize) = (avx2::Avx2::A_LEN, avx512::Avx512::A_LEN);
#[cfg(target_arch = "x86_64")]
const X86_B_LEN: (usize, usize) = (avx2::Avx2::B_LEN, avx512::Avx512::B_LEN);
#[cfg(target_arch = "x86_64")]
const X86_STAGE_LEN: (usize, usize) = (avx2::Avx2::STAGE_LEN, avx512::Avx512::STAGE_LEN);
#[cfg(not(target_arch = "x86_64"))]
const X86_A_LEN: (usize, usize) = (0, 0);
#[cfg(not(target_arch = "x86_64"))]
const X86_B_LEN: (usize, usize) = (0, 0);
#[cfg(not(target_arch = "x86_64"))]
const X86_STAGE_LEN: (usize, usize) = (0, 0);

/// The buffer lengths a tile's blocks need.
trait BlockLens {
    const A_LEN: usize;
    const B_LEN: usize;
    const STAGE_LEN: usize;
}

impl<T: Tile> BlockLens for T {
    const A_LEN: usize = T::MC * T::KC;
    const B_LEN: usize = T::KC * T::NC;
    const STAGE_LEN: usize = T::MC * T::NC;
}

/// One thread's packing space and stage, fixed in size so that no product ever grows them.
pub struct PackBuf {
    data: Vec<f32>,
    stage: Vec<f32>,
}

impl PackBuf {
    pub fn new() -> PackBuf {
        super::note_pack_alloc();
        PackBuf { data: vec![0.0; A_LEN + B_LEN + 16], stage: vec![0.0; STAGE_LEN] }
    }

    /// The `A` and `B` areas, both starting on a cache line, and the stage.
    fn split(&mut self) -> (&mut [f32], &mut [f32], &mut [f32]) {
        let skip = self.data.as_ptr().align_offset(64).min(16);
        let (a, b) = self.data[skip..].split_at_mut(A_LEN);
        (a, &mut b[..B_LEN], &mut self.stage)
    }
}

/// `C (+)= A*B` for a `C` of any element type, on the calling thread, by `kern`'s tile.
///
/// # Safety
/// As [`gemm_blocked`]; the processor runs `kern`'s instructions.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_any<C: Elem, A: Elem, B: Elem>(
    kern: Kernel,
    c: MatMut<C>,
    a: MatRef<A>,
    b: MatRef<B>,
    m: usize,
    n: usize,
    k: usize,
    accumulate: bool,
    buf: &mut PackBuf,
) {
    unsafe {
        match kern {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Bf16 => match (a.as_bf16(), b.as_bf16()) {
                (Some(a), Some(b)) => bf16dot::gemm_staged(c, a, b, m, n, k, accumulate, buf),
                _ => gemm_staged::<avx512::Avx512, C, A, B>(c, a, b, m, n, k, accumulate, buf),
            },
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => gemm_staged::<avx512::Avx512, C, A, B>(c, a, b, m, n, k, accumulate, buf),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => gemm_staged::<avx2::Avx2, C, A, B>(c, a, b, m, n, k, accumulate, buf),
            _ => gemm_staged::<portable::Portable, C, A, B>(c, a, b, m, n, k, accumulate, buf),
        }
    }
}

/// The blocked product of `T` for a `C` of any element type. An f32 `C` is the tiles' own; any
/// other is computed in `MC x NC` blocks into the f32 stage over the whole of `k`, then each
/// element is rounded into `C` once (after adding `C`'s value when accumulating), as a GPU GEMM
/// with an f32 accumulator and a bf16 output does.
///
/// # Safety
/// As [`gemm_blocked`].
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_staged<T: Tile, C: Elem, A: Elem, B: Elem>(
    c: MatMut<C>,
    a: MatRef<A>,
    b: MatRef<B>,
    m: usize,
    n: usize,
    k: usize,
    accumulate: bool,
    buf: &mut PackBuf,
) {
    let (apack, bpack, stage) = buf.split();
    let blocked = |c: MatMut, a: MatRef<A>, b: MatRef<B>, m, n, acc| unsafe {
        gemm_blocked::<T, A, B>(c, a, b, m, n, k, acc, apack, bpack)
    };
    unsafe { staged(c, a, b, m, n, accumulate, T::MC, T::NC, stage, blocked) }
}

/// Runs `blocked` straight into an f32 `C`, or block by block into `stage` for any other `C`,
/// rounding each element once.
///
/// # Safety
/// As [`gemm_blocked`]; `stage` holds `mc * nc` floats.
#[allow(clippy::too_many_arguments)]
unsafe fn staged<C: Elem, A: 'static, B: 'static>(
    c: MatMut<C>,
    a: MatRef<A>,
    b: MatRef<B>,
    m: usize,
    n: usize,
    accumulate: bool,
    mc_max: usize,
    nc_max: usize,
    stage: &mut [f32],
    mut blocked: impl FnMut(MatMut, MatRef<A>, MatRef<B>, usize, usize, bool),
) {
    if let Some(c) = c.as_f32() {
        return blocked(c, a, b, m, n, accumulate);
    }
    for ic in (0..m).step_by(mc_max) {
        let mc = mc_max.min(m - ic);
        for jc in (0..n).step_by(nc_max) {
            let nc = nc_max.min(n - jc);
            let st = MatMut { ptr: stage.as_mut_ptr(), rs: nc, cs: 1 };
            blocked(st, unsafe { a.at(ic, 0) }, unsafe { b.at(0, jc) }, mc, nc, false);
            for (i, row) in stage.chunks_exact(nc).take(mc).enumerate() {
                if c.cs == 1 {
                    // SAFETY: row ic + i of C, columns jc..jc + nc, lies inside the view.
                    let dst = unsafe { std::slice::from_raw_parts_mut(c.ptr.add((ic + i) * c.rs + jc), nc) };
                    super::vectorized(
                        #[inline(always)]
                        || round_into(dst, row, accumulate),
                    );
                    continue;
                }
                for (j, &v) in row.iter().enumerate() {
                    let p = unsafe { c.ptr.add((ic + i) * c.rs + (jc + j) * c.cs) };
                    unsafe { *p = C::from_f32(if accumulate { (*p).to_f32() + v } else { v }) };
                }
            }
        }
    }
}

/// `dst = sums` (or `dst += sums`), each element rounded once into `C`'s type.
#[inline(always)]
fn round_into<C: Elem>(dst: &mut [C], sums: &[f32], accumulate: bool) {
    if accumulate {
        dst.iter_mut().zip(sums).for_each(|(d, &v)| *d = C::from_f32(d.to_f32() + v));
    } else {
        dst.iter_mut().zip(sums).for_each(|(d, &v)| *d = C::from_f32(v));
    }
}

/// `C = A*B` or `C += A*B` for an `m x k` `A` and a `k x n` `B`, on the calling thread.
///
/// # Safety
/// The views must cover `m x k`, `k x n` and `m x n` valid elements, `C` must name each element
/// once and must not overlap `A` or `B`, and `k > 0`; `apack` and `bpack` are a [`PackBuf`]'s;
/// the processor runs `T`'s instructions.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_blocked<T: Tile, A: Elem, B: Elem>(
    c: MatMut,
    a: MatRef<A>,
    b: MatRef<B>,
    m: usize,
    n: usize,
    k: usize,
    accumulate: bool,
    apack: &mut [f32],
    bpack: &mut [f32],
) {
    // Row-contiguous writes are the fast write-back; a column-major C is the same product
    // transposed (C^T = B^T A^T).
    if c.cs != 1 && c.rs == 1 && n > 1 {
        return unsafe { gemm_blocked::<T, B, A>(c.t(), b.t(), a.t(), n, m, k, accumulate, apack, bpack) };
    }
    // Even k blocks: 300 splits as 150 + 150, not 256 + 44.
    let kc_step = k.div_ceil(k.div_ceil(T::KC));
    for jc in (0..n).step_by(T::NC) {
        let nc = T::NC.min(n - jc);
        for (pi, pc) in (0..k).step_by(kc_step).enumerate() {
            let kc = kc_step.min(k - pc);
            // The first k block overwrites C unless the caller accumulates.
            let load = accumulate || pi > 0;
            if m <= T::MC {
                // One A block: pack it once, then pack each B micro-panel right before its
                // tiles use it, so the panel is written to and read from L1 only (packing the
                // whole B block first costs a round trip through L2/L3 per element, which
                // dominates when few A rows reuse it).
                unsafe { pack_a::<A>(apack, a.at(0, pc), m, kc, T::MR, T::AVX_PACK) };
                for jr in (jc..jc + nc).step_by(T::NR) {
                    let nr = T::NR.min(jc + nc - jr);
                    unsafe { pack_b::<B>(bpack, b.at(pc, jr), kc, nr, T::NR, T::AVX_PACK) };
                    unsafe { run_tiles::<T>(c.at(0, jr), apack, bpack, m, nr, kc, load) };
                }
                continue;
            }
            unsafe { pack_b::<B>(bpack, b.at(pc, jc), kc, nc, T::NR, T::AVX_PACK) };
            for ic in (0..m).step_by(T::MC) {
                let mc = T::MC.min(m - ic);
                unsafe { pack_a::<A>(apack, a.at(ic, pc), mc, kc, T::MR, T::AVX_PACK) };
                unsafe { run_tiles::<T>(c.at(ic, jc), apack, bpack, mc, nc, kc, load) };
            }
        }
    }
}

/// Every tile of one packed `A` block times one packed `B` block.
unsafe fn run_tiles<T: Tile>(c: MatMut, apack: &[f32], bpack: &[f32], mc: usize, nc: usize, kc: usize, load: bool) {
    for jr in (0..nc).step_by(T::NR) {
        let nr = T::NR.min(nc - jr);
        let bp = bpack[jr * kc..].as_ptr();
        for ir in (0..mc).step_by(T::MR) {
            let mr = T::MR.min(mc - ir);
            let ap = apack[ir * kc..].as_ptr();
            unsafe { T::tile(kc, ap, bp, c.at(ir, jr), mr, nr, load) };
        }
    }
}

/// Packs `mc x kc` of `A` into micro-panels of `mr_t` rows, `[panel][p][i]`, zero-padding the
/// last: the panels [`pack_b`] makes of `A^T` (an f32 `A` with contiguous rows goes through its
/// 8 x 8 transposes when `avx`).
unsafe fn pack_a<T: Elem>(dst: &mut [f32], a: MatRef<T>, mc: usize, kc: usize, mr_t: usize, avx: bool) {
    unsafe { pack_b(dst, a.t(), kc, mc, mr_t, avx) }
}

/// Packs `kc x nc` of `B` into micro-panels of `nr_t` columns, `[panel][p][j]`, zero-padding;
/// `avx` lets an f32 `B` with contiguous columns go through 8 x 8 transposes.
// The fast paths are x86 only; elsewhere `avx` and their counters go unused.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut, unused_variables))]
unsafe fn pack_b<T: Elem>(dst: &mut [f32], b: MatRef<T>, kc: usize, nc: usize, nr_t: usize, avx: bool) {
    for (q, c0) in (0..nc).step_by(nr_t).enumerate() {
        let nr = nr_t.min(nc - c0);
        let panel = &mut dst[q * nr_t * kc..(q + 1) * nr_t * kc];
        if nr < nr_t {
            panel.fill(0.0);
        }
        if b.cs == 1 {
            // Row-major B: each k step is one contiguous run of nr floats.
            for p in 0..kc {
                let src = unsafe { std::slice::from_raw_parts(b.ptr.add(p * b.rs + c0), nr) };
                panel[p * nr_t..p * nr_t + nr].iter_mut().zip(src).for_each(|(d, s)| *d = s.to_f32());
            }
        } else if b.rs == 1 {
            // Column-major B: read each column in order, write with stride nr_t (the panel is
            // small enough to stay in L1 while it fills).
            let (mut cols, mut depth) = (0, 0);
            #[cfg(target_arch = "x86_64")]
            if let (true, Some(b32)) = (avx && nr_t.is_multiple_of(8), b.as_f32()) {
                (cols, depth) = (nr / 8 * 8, kc / 8 * 8);
                for j0 in (0..cols).step_by(8) {
                    for p0 in (0..depth).step_by(8) {
                        // SAFETY: columns c0+j0..+8 and rows p0..p0+8 lie inside the view;
                        // the panel holds nr_t * kc floats.
                        let src = unsafe { b32.ptr.add((c0 + j0) * b.cs + p0) };
                        unsafe { transpose::t8x8(src.cast(), 4 * b.cs, panel.as_mut_ptr().add(p0 * nr_t + j0), nr_t) };
                    }
                }
            }
            for j in 0..nr {
                let src = unsafe { std::slice::from_raw_parts(b.ptr.add((c0 + j) * b.cs), kc) };
                let skip = if j < cols { depth } else { 0 };
                for (p, &v) in src.iter().enumerate().skip(skip) {
                    panel[p * nr_t + j] = v.to_f32();
                }
            }
        } else {
            for p in 0..kc {
                for j in 0..nr {
                    panel[p * nr_t + j] = unsafe { *b.ptr.add(p * b.rs + (c0 + j) * b.cs) }.to_f32();
                }
            }
        }
    }
}

/// Writes the valid `mr x nr` corner of a finished tile held row-major in `acc` (rows of
/// `nr_t`), adding to C when `load`.
unsafe fn store_edge(acc: &[f32], nr_t: usize, c: MatMut, mr: usize, nr: usize, load: bool) {
    for (i, row) in acc.chunks_exact(nr_t).enumerate().take(mr) {
        for (j, &v) in row.iter().enumerate().take(nr) {
            let p = unsafe { c.ptr.add(i * c.rs + j * c.cs) };
            unsafe { *p = if load { *p + v } else { v } };
        }
    }
}
