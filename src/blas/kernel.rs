//! The serial blocked product: packing and the `MR x NR` micro-kernels.
//!
//! BLIS layout: `k` is cut into blocks of at most `KC` (a packed `B` micro-panel, `KC x NR`,
//! stays in L1 while it meets every `A` micro-panel), `m` into blocks of `MC` rows (the packed
//! `A` block, `MC x KC`, stays in L2) and `n` into blocks of `NC` columns (the packed `B` block
//! lives in L3). Panels are zero-padded to whole tiles, so the kernels always compute a full
//! `MR x NR` tile and only the write-back knows about edges. Everything here works on raw
//! pointers and strides; `super` checks the views before anything reaches this file.
//!
//! `A` and `B` may hold any [`Elem`]: packing converts to f32 on the fly, so a bf16 operand is
//! never copied whole. The tiles accumulate and write f32; a `C` of another type goes through
//! `gemm_any`'s f32 stage and is rounded once, after the whole sum over `k`.

use crate::ir::Elem;
use std::any::TypeId;

/// Rows of the register tile: 6 rows x 2 vectors of 8 = 12 accumulators, leaving registers for
/// the two `B` vectors and one broadcast `A` value (16 `ymm` registers in all).
pub const MR: usize = 6;
/// Columns of the register tile (two AVX vectors).
pub const NR: usize = 16;
/// Depth of one packed block: `KC x NR` floats of `B` = 16 KiB, a quarter of L1d.
pub const KC: usize = 256;
/// Rows of one packed `A` block: `MC x KC` floats = 144 KiB, well inside the 1 MiB L2.
pub const MC: usize = 144;
/// Columns of one packed `B` block: `KC x NC` floats = 2 MiB, a share of L3.
pub const NC: usize = 2048;

/// A read-only strided matrix: element `(i, j)` lives at `ptr + i*rs + j*cs`, of any element
/// type: packing converts it to f32.
pub struct MatRef<T = f32> {
    pub ptr: *const T,
    pub rs: usize,
    pub cs: usize,
}

/// A writable strided matrix, as `MatRef`. The micro-kernels write f32; `gemm_any` stages any
/// other element type.
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

impl<T> MatRef<T> {
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

/// Which micro-kernel runs the tiles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// `std::arch` AVX2 + FMA intrinsics; only chosen after run-time detection.
    Avx2Fma,
    /// Plain Rust over arrays, auto-vectorised for whatever the target offers.
    Portable,
}

impl Kernel {
    /// The fastest kernel this CPU runs.
    pub fn detect() -> Kernel {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Kernel::Avx2Fma;
            }
        }
        Kernel::Portable
    }
}

/// Floats in one packing buffer: an `A` block, a `B` block and slack to align both to 64 bytes.
const PACK_LEN: usize = MC * KC + KC * NC + 16;
/// Floats of the stage a non-f32 `C` is computed in: one `MC x NC` block.
const STAGE_LEN: usize = MC * NC;

/// One thread's packing space and stage, fixed in size so that no product ever grows them.
pub struct PackBuf {
    data: Vec<f32>,
    stage: Vec<f32>,
}

impl PackBuf {
    pub fn new() -> PackBuf {
        super::note_pack_alloc();
        PackBuf { data: vec![0.0; PACK_LEN], stage: vec![0.0; STAGE_LEN] }
    }

    /// The `A` and `B` areas, both starting on a cache line, and the stage.
    fn split(&mut self) -> (&mut [f32], &mut [f32], &mut [f32]) {
        let skip = self.data.as_ptr().align_offset(64).min(16);
        let (a, b) = self.data[skip..].split_at_mut(MC * KC);
        (a, &mut b[..KC * NC], &mut self.stage)
    }
}

/// `C (+)= A*B` for a `C` of any element type, on the calling thread. An f32 `C` is the tiles'
/// own; any other is computed in `MC x NC` blocks into the f32 stage over the whole of `k`,
/// then each element is rounded into `C` once (after adding `C`'s value when accumulating), as
/// a GPU GEMM with an f32 accumulator and a bf16 output does.
///
/// # Safety
/// As [`gemm_blocked`].
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
    let (apack, bpack, stage) = buf.split();
    if let Some(c) = c.as_f32() {
        return unsafe { gemm_blocked(kern, c, a, b, m, n, k, accumulate, apack, bpack) };
    }
    for ic in (0..m).step_by(MC) {
        let mc = MC.min(m - ic);
        for jc in (0..n).step_by(NC) {
            let nc = NC.min(n - jc);
            let st = MatMut { ptr: stage.as_mut_ptr(), rs: nc, cs: 1 };
            unsafe { gemm_blocked(kern, st, a.at(ic, 0), b.at(0, jc), mc, nc, k, false, apack, bpack) };
            for (i, row) in stage.chunks_exact(nc).take(mc).enumerate() {
                for (j, &v) in row.iter().enumerate() {
                    let p = unsafe { c.ptr.add((ic + i) * c.rs + (jc + j) * c.cs) };
                    unsafe { *p = C::from_f32(if accumulate { (*p).to_f32() + v } else { v }) };
                }
            }
        }
    }
}

/// `C = A*B` or `C += A*B` for an `m x k` `A` and a `k x n` `B`, on the calling thread.
///
/// # Safety
/// The views must cover `m x k`, `k x n` and `m x n` valid elements, `C` must name each element
/// once and must not overlap `A` or `B`, and `k > 0`; `apack` and `bpack` are a [`PackBuf`]'s.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_blocked<A: Elem, B: Elem>(
    kern: Kernel,
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
        return unsafe { gemm_blocked(kern, c.t(), b.t(), a.t(), n, m, k, accumulate, apack, bpack) };
    }
    // Even k blocks: 300 splits as 150 + 150, not 256 + 44.
    let kc_step = k.div_ceil(k.div_ceil(KC));
    for jc in (0..n).step_by(NC) {
        let nc = NC.min(n - jc);
        for (pi, pc) in (0..k).step_by(kc_step).enumerate() {
            let kc = kc_step.min(k - pc);
            // The first k block overwrites C unless the caller accumulates.
            let load = accumulate || pi > 0;
            if m <= MC {
                // One A block: pack it once, then pack each B micro-panel right before its
                // tiles use it, so the panel is written to and read from L1 only (packing the
                // whole B block first costs a round trip through L2/L3 per element, which
                // dominates when few A rows reuse it).
                unsafe { pack_a(apack, a.at(0, pc), m, kc) };
                for jr in (jc..jc + nc).step_by(NR) {
                    let nr = NR.min(jc + nc - jr);
                    unsafe { pack_b(bpack, b.at(pc, jr), kc, nr) };
                    unsafe { run_tiles(kern, c.at(0, jr), apack, bpack, m, nr, kc, load) };
                }
                continue;
            }
            unsafe { pack_b(bpack, b.at(pc, jc), kc, nc) };
            for ic in (0..m).step_by(MC) {
                let mc = MC.min(m - ic);
                unsafe { pack_a(apack, a.at(ic, pc), mc, kc) };
                unsafe { run_tiles(kern, c.at(ic, jc), apack, bpack, mc, nc, kc, load) };
            }
        }
    }
}

/// Every tile of one packed `A` block times one packed `B` block.
#[allow(clippy::too_many_arguments)]
unsafe fn run_tiles(
    kern: Kernel,
    c: MatMut,
    apack: &[f32],
    bpack: &[f32],
    mc: usize,
    nc: usize,
    kc: usize,
    load: bool,
) {
    for jr in (0..nc).step_by(NR) {
        let nr = NR.min(nc - jr);
        let bp = bpack[jr * kc..].as_ptr();
        for ir in (0..mc).step_by(MR) {
            let mr = MR.min(mc - ir);
            let ap = apack[ir * kc..].as_ptr();
            let ct = unsafe { c.at(ir, jr) };
            match kern {
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx2Fma => unsafe { avx2::tile(kc, ap, bp, ct, mr, nr, load) },
                _ => unsafe { tile_portable(kc, ap, bp, ct, mr, nr, load) },
            }
        }
    }
}

/// Packs `mc x kc` of `A` into micro-panels of `MR` rows, `[panel][p][i]`, zero-padding the last.
unsafe fn pack_a<T: Elem>(dst: &mut [f32], a: MatRef<T>, mc: usize, kc: usize) {
    for (q, r0) in (0..mc).step_by(MR).enumerate() {
        let mr = MR.min(mc - r0);
        let panel = &mut dst[q * MR * kc..(q + 1) * MR * kc];
        if mr < MR {
            panel.fill(0.0);
        }
        if a.cs == 1 {
            // Rows are contiguous: read each row in order, write with stride MR.
            for i in 0..mr {
                let src = unsafe { std::slice::from_raw_parts(a.ptr.add((r0 + i) * a.rs), kc) };
                for (p, &v) in src.iter().enumerate() {
                    panel[p * MR + i] = v.to_f32();
                }
            }
        } else {
            for p in 0..kc {
                let col = unsafe { a.ptr.add(r0 * a.rs + p * a.cs) };
                let out = &mut panel[p * MR..p * MR + mr];
                for (i, o) in out.iter_mut().enumerate() {
                    *o = unsafe { *col.add(i * a.rs) }.to_f32();
                }
            }
        }
    }
}

/// Packs `kc x nc` of `B` into micro-panels of `NR` columns, `[panel][p][j]`, zero-padding.
unsafe fn pack_b<T: Elem>(dst: &mut [f32], b: MatRef<T>, kc: usize, nc: usize) {
    for (q, c0) in (0..nc).step_by(NR).enumerate() {
        let nr = NR.min(nc - c0);
        let panel = &mut dst[q * NR * kc..(q + 1) * NR * kc];
        if nr < NR {
            panel.fill(0.0);
        }
        if b.cs == 1 {
            // Row-major B: each k step is one contiguous run of nr floats.
            for p in 0..kc {
                let src = unsafe { std::slice::from_raw_parts(b.ptr.add(p * b.rs + c0), nr) };
                panel[p * NR..p * NR + nr].iter_mut().zip(src).for_each(|(d, s)| *d = s.to_f32());
            }
        } else if b.rs == 1 {
            // Column-major B: read each column in order, write with stride NR (the panel is
            // small enough to stay in L1 while it fills).
            for j in 0..nr {
                let src = unsafe { std::slice::from_raw_parts(b.ptr.add((c0 + j) * b.cs), kc) };
                for (p, &v) in src.iter().enumerate() {
                    panel[p * NR + j] = v.to_f32();
                }
            }
        } else {
            for p in 0..kc {
                for j in 0..nr {
                    panel[p * NR + j] = unsafe { *b.ptr.add(p * b.rs + (c0 + j) * b.cs) }.to_f32();
                }
            }
        }
    }
}

/// Writes the valid `mr x nr` corner of a finished tile, adding to C when `load`.
unsafe fn store_edge(acc: &[[f32; NR]; MR], c: MatMut, mr: usize, nr: usize, load: bool) {
    for (i, row) in acc.iter().enumerate().take(mr) {
        for (j, &v) in row.iter().enumerate().take(nr) {
            let p = unsafe { c.ptr.add(i * c.rs + j * c.cs) };
            unsafe { *p = if load { *p + v } else { v } };
        }
    }
}

/// The portable micro-kernel: the same tile as the AVX2 one, in plain Rust.
unsafe fn tile_portable(kc: usize, a: *const f32, b: *const f32, c: MatMut, mr: usize, nr: usize, load: bool) {
    let a = unsafe { std::slice::from_raw_parts(a, kc * MR) };
    let b = unsafe { std::slice::from_raw_parts(b, kc * NR) };
    let mut acc = [[0f32; NR]; MR];
    for (ap, bp) in a.chunks_exact(MR).zip(b.chunks_exact(NR)) {
        for (row, &av) in acc.iter_mut().zip(ap) {
            for (x, &bv) in row.iter_mut().zip(bp) {
                *x += av * bv;
            }
        }
    }
    unsafe { store_edge(&acc, c, mr, nr, load) };
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{store_edge, MatMut, MR, NR};
    use std::arch::x86_64::*;

    /// One `MR x NR` tile over `kc` packed steps: 12 accumulators, two `B` loads and six
    /// broadcasts per step.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA; `a`/`b` point at packed panels of `kc` steps; `c` covers
    /// `mr x nr` elements.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn tile(kc: usize, a: *const f32, b: *const f32, c: MatMut, mr: usize, nr: usize, load: bool) {
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
            // Full-width rows (edge tiles included: m = 16 leaves a 4-row tile in every
            // column block) store as vectors.
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
            unsafe { store_edge(&tmp, c, mr, nr, load) };
        }
    }
}
