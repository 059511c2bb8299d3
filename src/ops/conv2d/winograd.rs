//! Winograd F(2x2, 3x3) for the 3x3, stride 1, pad 1 convolutions on the CPU: the transforms,
//! and the kernel each command of the walk (`winograd_cmds.rs`, which the GPU runs too) runs
//! with on the CPU (`cpu.rs` dispatches them).
//!
//! Every 2x2 output tile reads a 4x4 input tile. With `V = B^T d B` (input), `U = G g G^T`
//! (weight) and `Y = A^T (U . V) A`, the sum over input channels of the elementwise products is
//! 16 independent products `M[xi] = U[xi] * V[xi]` (`xi` = one of the 16 tile values) of
//! `[out, in] x [in, tiles]`: 2.25x fewer multiply-adds than im2col. The data gradient is the
//! same forward pass over `d_out` with the flipped, transposed kernel. The weight gradient is
//! the adjoint of the forward in `g`: `dg = G^T (sum over tiles of (A dY A^T) . V) G`, i.e. 16
//! products `dU[xi] = M'[xi] V[xi]^T`.
//!
//! The workspace is laid out as the walk says: `[xi][c][t]` tiles, `[xi][o][i]` weights, one
//! matrix per `xi`. On the CPU the 16 products of a batch run on separate threads with the
//! serial GEMM (each on one core, better than one thin product split across cores), a
//! transform runs channels in parallel, each writing its 16 `[t]` rows ([`Rows`]), and the
//! walk's chunk is cut to a sub-chunk whose tiles stay in the caches ([`cpu_chunk`]).
//!
//! The transforms work on blocks of up to `TX_BLOCK` tiles that are contiguous in `t` (several
//! whole tile rows of a small image), so every pass is a loop over contiguous arrays. Each is
//! compiled for the selected instruction set (`blas::vectorized`: the crate is compiled for
//! baseline x86-64, where those loops get only SSE), and the input transform's row pass
//! deinterleaves even and odd columns in AVX2 registers, which measurably cut the transforms'
//! share of a step.
//!
//! Slices are handled while gathering the weight: `U` holds only the slice's channels, in slice
//! order, so a wrapping slice costs nothing extra.

use super::lowering::{RowGemm, View};
use super::winograd_f4 as f4;
use super::ConvShape;
use crate::blas::{gemm_serial, vectorized};
use crate::ir::{Slice, Target};
use rayon::prelude::*;

/// Values per transformed tile (4x4).
pub(super) const XI: usize = 16;
/// Tiles of one tile row transformed together (a stack buffer of `16 * TX_BLOCK` floats).
pub(super) const TX_BLOCK: usize = 64;

/// Fewest input channels (of the full layer) for which the CPU runs F(4x4, 3x3). Its rounding is
/// about twenty times F(2x2, 3x3)'s (2e-5 to 3e-5 of the outputs' rms against 1e-6), and on the thin
/// layers near a network's input the batch norms that follow magnify it: with F(4x4, 3x3) from
/// 32 channels, WRN-10-2's gradients drift up to 1e-2 from the PyTorch reference (tolerance
/// 1e-3); from 64 they stay within 3e-5. Those thin layers are also where it gains least.
const F4_MIN_CIN: usize = 64;

/// Which Winograd algorithm a walk runs: F(2x2, 3x3), the GPU's (`winograd.cu`), or F(4x4, 3x3),
/// the CPU's (`winograd_f4.rs`: fewer products and a smaller workspace per image, at the price
/// of larger transforms; there the products dominate).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wino {
    F2,
    F4,
}

impl Wino {
    /// The one each backend runs on layer `p`: the GPU F(2x2, 3x3); the CPU F(4x4, 3x3) from
    /// [`F4_MIN_CIN`] input channels.
    pub fn on(target: Target, p: &ConvShape) -> Wino {
        match target {
            Target::Cpu if p.cin >= F4_MIN_CIN => Wino::F4,
            _ => Wino::F2,
        }
    }

    /// Outputs along each side of a tile.
    pub fn side(self) -> usize {
        match self {
            Wino::F2 => 2,
            Wino::F4 => 4,
        }
    }

    /// Values per transformed tile: 16 or 36, the number of products.
    pub fn xi(self) -> usize {
        (self.side() + 2) * (self.side() + 2)
    }

    /// Tile rows and columns of one image.
    pub fn tiles(self, p: &ConvShape) -> (usize, usize) {
        (p.h.div_ceil(self.side()), p.w.div_ceil(self.side()))
    }
}
/// Floats of transformed tiles (input + output side) per sub-chunk: 8 MiB measured best among
/// 2, 4, 8 and 32 MiB.
const SUB_CHUNK_FLOATS: usize = 1 << 21;

/// Fewest input channels (of the full layer) for this path. Below it the products' inner
/// dimension is too short to pay for the transforms, and such a layer is the network's first
/// convolution (RGB or grey input), whose raw input has a large mean: Winograd's cancelling tile sums then carry an
/// absolute error that the following batch norm (which subtracts that mean) magnifies past the
/// PyTorch reference's 1e-3 (measured: conv0 3 -> 16 broke 20 reference tensors).
const MIN_CIN: usize = 4;

/// true for the layers this path handles.
pub(super) fn eligible(p: &ConvShape) -> bool {
    p.k == 3 && p.stride == 1 && p.pad == 1 && p.cin >= MIN_CIN
}

/// Floats of workspace for `in_width` input channels and `nb` images per chunk (an upper bound
/// over output slices: it counts the full `cout`).
pub(super) fn workspace_len(p: &ConvShape, in_width: usize, nb: usize, w: Wino) -> usize {
    let (th, tw) = w.tiles(p);
    let t = nb * th * tw;
    w.xi() * (2 * p.cout * in_width + t * (in_width + p.cout))
}

/// Images per sub-chunk of the CPU's walk: at most `nb`, as many as keep the tiles near
/// `SUB_CHUNK_FLOATS`.
fn sub_chunk(p: &ConvShape, wi: usize, wo: usize, nb: usize) -> usize {
    let w = Wino::on(Target::Cpu, p);
    let (th, tw) = w.tiles(p);
    let per_image = w.xi() * th * tw * (wi + wo);
    let most = (SUB_CHUNK_FLOATS / per_image.max(1)).clamp(1, nb.max(1));
    // As many sub-chunks as needed, of equal size: a small last one would run thin products.
    nb.max(1).div_ceil(nb.max(1).div_ceil(most))
}

/// The `N` rows (16 or 36) a transform writes for one channel, one per tile value (`[t]` each):
/// apart in memory in the `[xi][c][t]` layout, so each channel's transform gets its own.
pub(super) type Rows<'a, const N: usize> = [&'a mut [f32]; N];

/// The rows of a `[xi][len]` block.
pub(super) fn rows<const N: usize>(block: &mut [f32], len: usize) -> Rows<'_, N> {
    let mut it = block[..N * len].chunks_exact_mut(len.max(1));
    std::array::from_fn(|_| it.next().unwrap_or_default())
}

/// A transform of one channel: [`input_transform`] or [`grad_transform`] (or F(4x4, 3x3)'s).
pub(super) type Transform<const N: usize> = fn(Rows<N>, &[f32], usize, usize, usize);

/// Layer channel of position `j` of a slice.
fn channel(s: &Slice, j: usize) -> usize {
    (s.start + j) % s.channels
}

#[allow(clippy::needless_range_loop)]
/// `G g G^T` of one 3x3 kernel (row-major), optionally flipped in both axes.
pub(super) fn weight_tile(g: &[f32], flip: bool) -> [f32; 16] {
    let at = |y: usize, x: usize| {
        if flip {
            g[(2 - y) * 3 + (2 - x)]
        } else {
            g[y * 3 + x]
        }
    };
    // Rows: G g (4x3).
    let mut gg = [[0f32; 3]; 4];
    for x in 0..3 {
        let (a, b, c) = (at(0, x), at(1, x), at(2, x));
        gg[0][x] = a;
        gg[1][x] = 0.5 * (a + b + c);
        gg[2][x] = 0.5 * (a - b + c);
        gg[3][x] = c;
    }
    let mut u = [0f32; 16];
    for (r, &[a, b, c]) in gg.iter().enumerate() {
        u[r * 4] = a;
        u[r * 4 + 1] = 0.5 * (a + b + c);
        u[r * 4 + 2] = 0.5 * (a - b + c);
        u[r * 4 + 3] = c;
    }
    u
}

/// `G^T du G` (4x4 -> 3x3), the adjoint of `weight_tile` (unflipped).
pub(super) fn weight_tile_adjoint(du: &[f32; 16]) -> [f32; 9] {
    let mut r = [[0f32; 4]; 3];
    for x in 0..4 {
        let (a, b, c, d) = (du[x], du[4 + x], du[8 + x], du[12 + x]);
        r[0][x] = a + 0.5 * (b + c);
        r[1][x] = 0.5 * (b - c);
        r[2][x] = 0.5 * (b + c) + d;
    }
    let mut g = [0f32; 9];
    for (y, &[a, b, c, d]) in r.iter().enumerate() {
        g[y * 3] = a + 0.5 * (b + c);
        g[y * 3 + 1] = 0.5 * (b - c);
        g[y * 3 + 2] = 0.5 * (b + c) + d;
    }
    g
}

/// A run of tiles transformed together: tile rows `row0..row0 + rows` (row index `i * th + ty`
/// over the sub-chunk), columns `tx0..tx0 + nt` of each. Its tiles are contiguous in `t` (whole
/// tile rows when several, so small images still fill a block), starting at `base`.
#[derive(Clone, Copy)]
pub(super) struct Block {
    pub row0: usize,
    pub rows: usize,
    pub tx0: usize,
    pub nt: usize,
    pub base: usize,
}

impl Block {
    /// Tiles in the block.
    pub fn len(&self) -> usize {
        self.rows * self.nt
    }
}

/// The blocks of at most `TX_BLOCK` tiles covering `nb` images of `th x tw` tiles, in `t`
/// order. (An iterator rather than a closure-taking helper: a closure would be compiled apart
/// from the vectorised caller, without its target features.)
pub(super) fn blocks(nb: usize, th: usize, tw: usize) -> impl Iterator<Item = Block> {
    let seg = tw.clamp(1, TX_BLOCK);
    let per = (TX_BLOCK / tw.max(1)).max(1);
    let total_rows = nb * th;
    (0..total_rows).step_by(per).flat_map(move |row0| {
        let rows = per.min(total_rows - row0);
        (0..tw).step_by(seg).map(move |tx0| Block { row0, rows, tx0, nt: seg.min(tw - tx0), base: row0 * tw + tx0 })
    })
}

/// Splits padded row `P` (`P[x]` = `row[x - 1]` inside the image, else 0) into
/// `e[j] = P[2 (tx0 + j)]` and `o[j] = P[2 (tx0 + j) + 1]` for `j` in `0..=nt`: tile `tx0 + j`
/// reads `e[j], o[j], e[j + 1], o[j + 1]`, so the arithmetic afterwards runs on contiguous
/// arrays.
#[inline(always)]
fn split_padded(e: &mut [f32], o: &mut [f32], row: &[f32], tx0: usize, nt: usize) {
    let w = row.len();
    let at = |x: usize| if x >= 1 && x <= w { row[x - 1] } else { 0.0 };
    for j in [0, nt] {
        let x = 2 * (tx0 + j);
        e[j] = at(x);
        o[j] = at(x + 1);
    }
    // Inside (1 <= j < nt) both values lie in the image: 2 <= x <= 2 (tw - 1) <= w - 1.
    if nt > 1 {
        let s = &row[2 * tx0 + 1..2 * (tx0 + nt) - 1];
        for ((pair, ej), oj) in s.chunks_exact(2).zip(&mut e[1..nt]).zip(&mut o[1..nt]) {
            *ej = pair[0];
            *oj = pair[1];
        }
    }
}

/// `B^T d B` of every tile of images `0..nb` of one channel `plane` (`nb` images of `h x w`):
/// value `xi` of tile `t` into `v[xi][t]`.
pub(super) fn input_transform(v: Rows<XI>, plane: &[f32], nb: usize, h: usize, w: usize) {
    #[cfg(target_arch = "x86_64")]
    if simd() {
        return vectorized(
            #[inline(always)]
            || input_transform_body::<true>(v, plane, nb, h, w),
        );
    }
    input_transform_body::<false>(v, plane, nb, h, w)
}

/// Masked load of `row[first..first + 8]`, lanes outside the row read as 0 (the padding).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn load_padded(row: &[f32], first: isize) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let idx = _mm256_add_epi32(_mm256_set1_epi32(first as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    let inside = _mm256_and_si256(
        _mm256_cmpgt_epi32(idx, _mm256_set1_epi32(-1)),
        _mm256_cmpgt_epi32(_mm256_set1_epi32(row.len() as i32), idx),
    );
    // Masked-off lanes are not read, so the pointer may point outside the row.
    _mm256_maskload_ps(row.as_ptr().wrapping_offset(first), inside)
}

/// Row pass of one padded image row for tiles `tx0..tx0 + nt`, 8 tiles per step: the 18 padded
/// values of 8 tiles are deinterleaved into even/odd columns in registers. Writes up to 7
/// values past `nt` in each `hx` (room the caller leaves).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn row_pass_avx2(hx: [&mut [f32]; 4], row: &[f32], tx0: usize, nt: usize) {
    use std::arch::x86_64::*;
    let [h0, h1, h2, h3] = hx;
    let n8 = nt.div_ceil(8) * 8;
    assert!(h0.len() >= n8 && h1.len() >= n8 && h2.len() >= n8 && h3.len() >= n8);
    // shuffle 0x88 / 0xDD picks even / odd lanes per 128-bit half; the permute joins the halves.
    macro_rules! split {
        ($a:expr, $b:expr, $imm:literal) => {
            _mm256_castpd_ps(_mm256_permute4x64_pd::<0xD8>(_mm256_castps_pd(_mm256_shuffle_ps::<$imm>($a, $b))))
        };
    }
    for j in (0..nt).step_by(8) {
        // Padded column 2(tx0 + j) + c is row[2(tx0 + j) + c - 1].
        let first = 2 * (tx0 + j) as isize - 1;
        let (l0, l1) = (load_padded(row, first), load_padded(row, first + 8));
        let (l2, l3) = (load_padded(row, first + 2), load_padded(row, first + 10));
        let (e0, o0) = (split!(l0, l1, 0x88), split!(l0, l1, 0xDD));
        let (e1, o1) = (split!(l2, l3, 0x88), split!(l2, l3, 0xDD));
        _mm256_storeu_ps(h0.as_mut_ptr().add(j), _mm256_sub_ps(e0, e1));
        _mm256_storeu_ps(h1.as_mut_ptr().add(j), _mm256_add_ps(o0, e1));
        _mm256_storeu_ps(h2.as_mut_ptr().add(j), _mm256_sub_ps(e1, o0));
        _mm256_storeu_ps(h3.as_mut_ptr().add(j), _mm256_sub_ps(o0, o1));
    }
}

#[inline(always)]
fn input_transform_body<const AVX2: bool>(v: Rows<XI>, plane: &[f32], nb: usize, h: usize, w: usize) {
    let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
    // hb[r][b][k]: row pass of padded tile row r, value b, tile k of the block (plus room for
    // the vector row pass's overhang).
    let mut hb = [[[0f32; TX_BLOCK + 8]; 4]; 4];
    let mut e = [0f32; TX_BLOCK + 1];
    let mut o = [0f32; TX_BLOCK + 1];
    for blk in blocks(nb, th, tw) {
        let nt = blk.nt;
        for k in 0..blk.rows {
            let (i, ty) = ((blk.row0 + k) / th, (blk.row0 + k) % th);
            let img = &plane[i * h * w..][..h * w];
            for (r, hr) in hb.iter_mut().enumerate() {
                let [h0, h1, h2, h3] = hr;
                let (h0, h1, h2, h3) = (&mut h0[k * nt..], &mut h1[k * nt..], &mut h2[k * nt..], &mut h3[k * nt..]);
                // Padded row 2*ty + r holds image row 2*ty + r - 1.
                let y = 2 * ty + r;
                if y == 0 || y > h {
                    for hx in [h0, h1, h2, h3] {
                        hx[..nt].fill(0.0);
                    }
                    continue;
                }
                #[cfg(target_arch = "x86_64")]
                if AVX2 {
                    // SAFETY: AVX2 was checked by the caller (`AVX2` is only true there).
                    unsafe { row_pass_avx2([h0, h1, h2, h3], &img[(y - 1) * w..][..w], blk.tx0, nt) };
                    continue;
                }
                let (h0, h1, h2, h3) = (&mut h0[..nt], &mut h1[..nt], &mut h2[..nt], &mut h3[..nt]);
                split_padded(&mut e, &mut o, &img[(y - 1) * w..][..w], blk.tx0, nt);
                let (e0, e1, o0, o1) = (&e[..nt], &e[1..nt + 1], &o[..nt], &o[1..nt + 1]);
                for j in 0..nt {
                    // (d0, d1, d2, d3) = (e0, o0, e1, o1).
                    h0[j] = e0[j] - e1[j];
                    h1[j] = o0[j] + e1[j];
                    h2[j] = e1[j] - o0[j];
                    h3[j] = o0[j] - o1[j];
                }
            }
        }
        // Column pass, contiguous across the block's tiles.
        let n = blk.len();
        for b in 0..4 {
            let (r0, r1, r2, r3) = (&hb[0][b][..n], &hb[1][b][..n], &hb[2][b][..n], &hb[3][b][..n]);
            let d = &mut v[b][blk.base..][..n];
            for j in 0..n {
                d[j] = r0[j] - r2[j];
            }
            let d = &mut v[4 + b][blk.base..][..n];
            for j in 0..n {
                d[j] = r1[j] + r2[j];
            }
            let d = &mut v[8 + b][blk.base..][..n];
            for j in 0..n {
                d[j] = r2[j] - r1[j];
            }
            let d = &mut v[12 + b][blk.base..][..n];
            for j in 0..n {
                d[j] = r1[j] - r3[j];
            }
        }
    }
}

/// `A dY A^T` of every 2x2 tile of one channel of `d_out` (`nb` images of `h x w`; outputs past
/// the edge of an odd image count as 0): value `xi` of tile `t` into `v[xi][t]`.
pub(super) fn grad_transform(v: Rows<XI>, plane: &[f32], nb: usize, h: usize, w: usize) {
    vectorized(
        #[inline(always)]
        || grad_transform_body(v, plane, nb, h, w),
    )
}

#[inline(always)]
fn grad_transform_body(v: Rows<XI>, plane: &[f32], nb: usize, h: usize, w: usize) {
    let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
    // lr[dy][0][j] / lr[dy][1][j + 1]: left / right value of output row dy of tile j.
    let mut lr = [[[0f32; TX_BLOCK + 1]; 2]; 2];
    // pq[r]: row r of A dY (two values per tile), before the column pass.
    let mut pq = [[[0f32; TX_BLOCK]; 2]; 4];
    for blk in blocks(nb, th, tw) {
        let nt = blk.nt;
        for k in 0..blk.rows {
            let (i, ty) = ((blk.row0 + k) / th, (blk.row0 + k) % th);
            let img = &plane[i * h * w..][..h * w];
            for (dy, [l, r]) in lr.iter_mut().enumerate() {
                let y = 2 * ty + dy;
                if y >= h {
                    l[..nt + 1].fill(0.0);
                    r[..nt + 1].fill(0.0);
                    continue;
                }
                // With P[x] = row[x - 1]: o[j] = row[2(tx0 + j)] (left) and e[j + 1] =
                // row[2(tx0 + j) + 1] (right, 0 past the edge of an odd image).
                split_padded(r, l, &img[y * w..][..w], blk.tx0, nt);
            }
            let [[a, b], [c, d]] = &lr;
            let (a, b, c, d) = (&a[..nt], &b[1..nt + 1], &c[..nt], &d[1..nt + 1]);
            // Rows of A [y0; y1]: (y0, y0 + y1, y0 - y1, -y1).
            {
                let [[p0, q0], [p1, q1], [p2, q2], [p3, q3]] = &mut pq;
                for j in 0..nt {
                    p0[j] = a[j];
                    q0[j] = b[j];
                    p1[j] = a[j] + c[j];
                    q1[j] = b[j] + d[j];
                    p2[j] = a[j] - c[j];
                    q2[j] = b[j] - d[j];
                    p3[j] = -c[j];
                    q3[j] = -d[j];
                }
            }
            // The same on columns, written contiguously per value.
            let t0 = blk.base + k * nt;
            for (r, [p, q]) in pq.iter().enumerate() {
                let (p, q) = (&p[..nt], &q[..nt]);
                v[4 * r][t0..][..nt].copy_from_slice(p);
                let dst = &mut v[4 * r + 1][t0..][..nt];
                for j in 0..nt {
                    dst[j] = p[j] + q[j];
                }
                let dst = &mut v[4 * r + 2][t0..][..nt];
                for j in 0..nt {
                    dst[j] = p[j] - q[j];
                }
                let dst = &mut v[4 * r + 3][t0..][..nt];
                for j in 0..nt {
                    dst[j] = -q[j];
                }
            }
        }
    }
}

#[allow(clippy::needless_range_loop)]
/// `Y = A^T M A` for every tile of one output channel: `m(xi)` is that channel's `[t]` row of
/// value `xi`; writes (or adds to, when `accumulate`) `nb` images of `h x w` in `plane`.
pub(super) fn output_transform<'a>(
    plane: &mut [f32],
    m: impl Fn(usize) -> &'a [f32],
    nb: usize,
    h: usize,
    w: usize,
    accumulate: bool,
) {
    let ms: [&[f32]; 16] = std::array::from_fn(&m);
    vectorized(
        #[inline(always)]
        || output_transform_body(plane, &ms, nb, h, w, accumulate),
    )
}

#[inline(always)]
#[allow(clippy::needless_range_loop)]
fn output_transform_body(plane: &mut [f32], ms: &[&[f32]; 16], nb: usize, h: usize, w: usize, accumulate: bool) {
    let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
    // s[dy][b]: column pass; y[dy][c]: output value (dy, c) of each tile of the block.
    let mut s = [[[0f32; TX_BLOCK]; 4]; 2];
    let mut y = [[[0f32; TX_BLOCK]; 2]; 2];
    for blk in blocks(nb, th, tw) {
        let (n, base, nt) = (blk.len(), blk.base, blk.nt);
        // Columns first: s0 = m0 + m1 + m2, s1 = m1 - m2 - m3 (per column b).
        for b in 0..4 {
            let (m0, m1, m2, m3) =
                (&ms[b][base..][..n], &ms[4 + b][base..][..n], &ms[8 + b][base..][..n], &ms[12 + b][base..][..n]);
            let [s0, s1] = &mut s;
            let (s0, s1) = (&mut s0[b][..n], &mut s1[b][..n]);
            for j in 0..n {
                s0[j] = m0[j] + m1[j] + m2[j];
                s1[j] = m1[j] - m2[j] - m3[j];
            }
        }
        for (sr, [y0, y1]) in s.iter().zip(&mut y) {
            let (a, b, c, d) = (&sr[0][..n], &sr[1][..n], &sr[2][..n], &sr[3][..n]);
            let (y0, y1) = (&mut y0[..n], &mut y1[..n]);
            for j in 0..n {
                y0[j] = a[j] + b[j] + c[j];
                y1[j] = b[j] - c[j] - d[j];
            }
        }
        for k in 0..blk.rows {
            let (i, ty) = ((blk.row0 + k) / th, (blk.row0 + k) % th);
            for (dy, [y0, y1]) in y.iter().enumerate() {
                let yy = 2 * ty + dy;
                if yy >= h {
                    continue;
                }
                let (y0, y1) = (&y0[k * nt..][..nt], &y1[k * nt..][..nt]);
                let row = &mut plane[(i * h + yy) * w..][..w];
                // Whole pairs inside the image, then a lone last column of an odd image.
                let x0 = 2 * blk.tx0;
                let pairs = nt.min((w - x0) / 2);
                let dst = &mut row[x0..x0 + 2 * pairs];
                if accumulate {
                    for ((pair, &v0), &v1) in dst.chunks_exact_mut(2).zip(y0).zip(y1) {
                        pair[0] += v0;
                        pair[1] += v1;
                    }
                } else {
                    for ((pair, &v0), &v1) in dst.chunks_exact_mut(2).zip(y0).zip(y1) {
                        pair[0] = v0;
                        pair[1] = v1;
                    }
                }
                if pairs < nt {
                    let x = x0 + 2 * pairs;
                    if accumulate {
                        row[x] += y0[pairs];
                    } else {
                        row[x] = y0[pairs];
                    }
                }
            }
        }
    }
}

/// true where the input transform's AVX2 row pass may run: the selected instruction set
/// (`SLICEOUT_CPU_ISA`, else the widest) has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
fn simd() -> bool {
    crate::blas::kernel() != crate::blas::Kernel::Portable
}

/// Images per chunk of the CPU's walk of the commands: the plan's chunk (`chunk`, 0 for all),
/// cut to a sub-chunk whose transformed tiles stay in the caches. A smaller chunk needs less
/// workspace, so the walk stays within the plan's.
pub(super) fn cpu_chunk(p: &ConvShape, in_width: usize, out_width: usize, chunk: usize) -> usize {
    sub_chunk(p, in_width, out_width, p.chunk_images(chunk))
}

/// Runs `f(c, rows)` for each channel `c` of a `[xi][channels][len]` block, `rows[xi]` being
/// the `len` values of `(xi, c)`, channels in parallel (a few runs of channels per thread, as
/// rayon cuts a parallel loop).
fn for_each_channel<const N: usize>(block: &mut [f32], channels: usize, len: usize, f: impl Fn(usize, Rows<N>) + Sync) {
    let grain = channels.div_ceil(4 * rayon::current_num_threads()).max(1);
    split_channels(rows(block, channels * len), 0, channels, len, grain, &f)
}

/// Halves the channels `c0..c0 + channels` (rayon's join on each half) down to `grain`, which
/// run one after the other.
fn split_channels<const N: usize, F: Fn(usize, Rows<N>) + Sync>(
    rows: Rows<N>,
    c0: usize,
    channels: usize,
    len: usize,
    grain: usize,
    f: &F,
) {
    fn split<const N: usize>(rows: Rows<N>, at: usize) -> (Rows<N>, Rows<N>) {
        let mut lo: Rows<N> = std::array::from_fn(|_| Default::default());
        let mut hi: Rows<N> = std::array::from_fn(|_| Default::default());
        for (xi, r) in rows.into_iter().enumerate() {
            (lo[xi], hi[xi]) = r.split_at_mut(at);
        }
        (lo, hi)
    }
    if channels <= grain {
        let mut rest = rows;
        for c in c0..c0 + channels {
            let (one, more) = split(rest, len);
            f(c, one);
            rest = more;
        }
        return;
    }
    let half = channels / 2;
    let (lo, hi) = split(rows, half * len);
    rayon::join(
        || split_channels(lo, c0, half, len, grain, f),
        || split_channels(hi, c0 + half, channels - half, len, grain, f),
    );
}

/// Kernels transformed together by [`weight_transform`], one per vector lane.
const LANES: usize = 16;
/// Kernels of one row whose transforms [`weight_transform`] gathers before writing them.
const RUN: usize = 64;

/// `G g G^T` of `L` kernels at once under F(2x2, 3x3): `g[tap][lane]` into `u[xi][lane]` (the
/// lane-wise [`weight_tile`]).
#[inline(always)]
fn weight_tiles<const L: usize>(g: &[[f32; L]; 9], u: &mut [[f32; L]; XI]) {
    for l in 0..L {
        let one = weight_tile(&std::array::from_fn::<f32, 9, _>(|k| g[k][l]), false);
        for (xi, v) in one.into_iter().enumerate() {
            u[xi][l] = v;
        }
    }
}

/// `WinoCmd::Weight`: `G g G^T` of the slices' kernels into `u`, `[xi][o][i]`, or with
/// `flipped` of the kernels rotated by 180 degrees, `[xi][i][o]`.
// The kernels are passed as inlined closures: a function item is called through `Fn::call`,
// outside the vectorised caller, without its target features.
#[allow(clippy::redundant_closure)]
pub(super) fn weight_transform(
    u: &mut [f32],
    weight: &[f32],
    p: &ConvShape,
    os: Slice,
    is: Slice,
    flipped: bool,
    w: Wino,
) {
    match w {
        Wino::F2 => weight_transform_by::<XI>(
            u,
            weight,
            p,
            os,
            is,
            flipped,
            #[inline(always)]
            |g, t| weight_tiles(g, t),
        ),
        Wino::F4 => weight_transform_by::<{ f4::XI }>(
            u,
            weight,
            p,
            os,
            is,
            flipped,
            #[inline(always)]
            |g, t| f4::weight_tiles(g, t),
        ),
    }
}

/// [`weight_transform`] with `tiles`, [`LANES`] kernels at a time: one row of the output matrix
/// (an output channel, or an input channel when `flipped`) per task, the lanes along it.
fn weight_transform_by<const N: usize>(
    u: &mut [f32],
    weight: &[f32],
    p: &ConvShape,
    os: Slice,
    is: Slice,
    flipped: bool,
    tiles: impl Fn(&[[f32; LANES]; 9], &mut [[f32; LANES]; N]) + Sync,
) {
    let (wo, wi, ld) = (os.width, is.width, p.cin * 9);
    let (outer, inner) = if flipped { (wi, wo) } else { (wo, wi) };
    for_each_channel::<N>(u, outer, inner, |a, mut r| {
        vectorized(
            #[inline(always)]
            || {
                // Layer channels: `fixed` of this row, `c` of each lane in turn (wrapping with
                // the slice).
                let (fixed, along) = if flipped { (channel(&is, a), os) } else { (channel(&os, a), is) };
                let mut c = channel(&along, 0);
                let (mut g, mut t) = ([[0f32; LANES]; 9], [[0f32; LANES]; N]);
                // A run of groups is gathered before its rows are written: the N rows lie far
                // apart (one matrix each), and short writes to each would evict one another.
                let mut run = [[0f32; RUN]; N];
                for r0 in (0..inner).step_by(RUN) {
                    let len = RUN.min(inner - r0);
                    for b0 in (0..len).step_by(LANES) {
                        let n = LANES.min(len - b0);
                        for l in 0..n {
                            let (o, i) = if flipped { (c, fixed) } else { (fixed, c) };
                            let kernel = &weight[o * ld + i * 9..][..9];
                            for (k, gk) in g.iter_mut().enumerate() {
                                gk[l] = kernel[if flipped { 8 - k } else { k }];
                            }
                            c = if c + 1 == along.channels { 0 } else { c + 1 };
                        }
                        tiles(&g, &mut t);
                        for (dst, tx) in run.iter_mut().zip(&t) {
                            dst[b0..][..LANES].copy_from_slice(tx);
                        }
                    }
                    for (row, src) in r.iter_mut().zip(&run) {
                        row[r0..r0 + len].copy_from_slice(&src[..len]);
                    }
                }
            },
        )
    })
}

/// `WinoCmd::Input` / `WinoCmd::Grad`: `f` of images `n0..n0 + nb` of each of the `channels`
/// rows of `src` (`(channels, N, H, W)`) into `v`, `[xi][c][t]` (`N` values a tile, of `w`).
#[allow(clippy::too_many_arguments)]
pub(super) fn transform_tiles<const N: usize>(
    v: &mut [f32],
    src: &[f32],
    p: &ConvShape,
    w: Wino,
    channels: usize,
    n0: usize,
    nb: usize,
    f: Transform<N>,
) {
    assert_eq!(N, w.xi(), "a transform of {w:?} writes {} values a tile", w.xi());
    let (th, tw) = w.tiles(p);
    let hw = p.h * p.w;
    for_each_channel(v, channels, nb * th * tw, |c, r| f(r, &src[(c * p.n + n0) * hw..][..nb * hw], nb, p.h, p.w));
}

/// `WinoCmd::Products`: the `count` (16 or 36) products of the batch in the workspace `col`,
/// one per task with the serial GEMM. Their outputs lie between or beside their inputs, never
/// across them.
pub(super) fn batched_products(col: &mut [f32], g: &RowGemm, strides: [usize; 3], count: usize) {
    let (c0, sc) = (g.c.offset, strides[2]);
    if sc == 0 {
        return;
    }
    let (before, rest) = col.split_at_mut(c0);
    let (outs, after) = rest.split_at_mut(count * sc);
    let end = c0 + count * sc;
    // An input view as (memory, offset there): wholly before the outputs, or wholly after.
    let side = |v: View| -> (&[f32], usize) {
        if v.offset < c0 {
            (&*before, v.offset)
        } else {
            assert!(v.offset >= end, "a product's input {v:?} starts among its outputs at {c0}..{end}");
            (&*after, v.offset - end)
        }
    };
    let ((a, a0), (b, b0)) = (side(g.a), side(g.b));
    outs.par_chunks_mut(sc).enumerate().for_each(|(xi, c)| {
        let av = View { offset: a0 + xi * strides[0], ..g.a };
        let bv = View { offset: b0 + xi * strides[1], ..g.b };
        let cv = View { offset: 0, ..g.c };
        gemm_serial(c, cv.layout(g.m, g.n), a, av.layout(g.m, g.k), b, bv.layout(g.k, g.n), g.accumulate)
    });
}

/// `WinoCmd::Output`: `A^T M A` of `m` (`[xi][c][t]`) into images `n0..n0 + nb` of `dst`
/// (`(channels, N, H, W)`, written or added to), one channel per task.
#[allow(clippy::too_many_arguments)]
pub(super) fn output_tiles(
    dst: &mut [f32],
    m: &[f32],
    p: &ConvShape,
    w: Wino,
    channels: usize,
    n0: usize,
    nb: usize,
    accumulate: bool,
) {
    let (th, tw) = w.tiles(p);
    let (hw, t) = (p.h * p.w, nb * th * tw);
    let row = |xi: usize, c: usize| &m[(xi * channels + c) * t..][..t];
    dst[..channels * p.n * hw].par_chunks_mut(p.n * hw).enumerate().for_each(|(c, plane)| {
        let plane = &mut plane[n0 * hw..][..nb * hw];
        match w {
            Wino::F2 => output_transform(plane, |xi| row(xi, c), nb, p.h, p.w, accumulate),
            Wino::F4 => {
                let ms: [&[f32]; f4::XI] = std::array::from_fn(|xi| row(xi, c));
                f4::output_transform(plane, &ms, nb, p.h, p.w, accumulate)
            }
        }
    });
}

/// `WinoCmd::WeightGrad`: `d_weight` (`[wo, wi*9]`) = `G^T dU G` of `du` (`[xi][o][i]`), or 0
/// when no image ran (`any` false: `du` was never written).
#[allow(clippy::redundant_closure)] // As in `weight_transform`.
pub(super) fn weight_grad(d_weight: &mut [f32], du: &[f32], wo: usize, wi: usize, any: bool, w: Wino) {
    match w {
        Wino::F2 => weight_grad_by::<XI>(
            d_weight,
            du,
            wo * wi,
            any,
            #[inline(always)]
            |t, g| weight_tiles_adjoint(t, g),
        ),
        Wino::F4 => weight_grad_by::<{ f4::XI }>(
            d_weight,
            du,
            wo * wi,
            any,
            #[inline(always)]
            |t, g| f4::weight_tiles_adjoint(t, g),
        ),
    }
}

/// [`weight_grad`] with `adjoint`, [`LANES`] kernels (consecutive in `[o][i]`) at a time.
fn weight_grad_by<const N: usize>(
    d_weight: &mut [f32],
    du: &[f32],
    plane: usize,
    any: bool,
    adjoint: impl Fn(&[[f32; LANES]; N], &mut [[f32; LANES]; 9]) + Sync,
) {
    d_weight[..plane * 9].par_chunks_mut(9 * LANES).enumerate().for_each(|(group, out)| {
        vectorized(
            #[inline(always)]
            || {
                let (x0, n) = (group * LANES, out.len() / 9);
                let mut t = [[0f32; LANES]; N];
                if any {
                    for (xi, tx) in t.iter_mut().enumerate() {
                        match du[xi * plane + x0..].first_chunk::<LANES>() {
                            Some(src) if n == LANES => *tx = *src,
                            _ => tx[..n].copy_from_slice(&du[xi * plane + x0..][..n]),
                        }
                    }
                }
                let mut g = [[0f32; LANES]; 9];
                adjoint(&t, &mut g);
                for (l, kernel) in out.chunks_exact_mut(9).enumerate() {
                    for (k, v) in kernel.iter_mut().enumerate() {
                        *v = g[k][l];
                    }
                }
            },
        )
    });
}

/// `G^T du G` of `L` tiles at once under F(2x2, 3x3) (the lane-wise [`weight_tile_adjoint`]).
#[inline(always)]
fn weight_tiles_adjoint<const L: usize>(du: &[[f32; L]; XI], g: &mut [[f32; L]; 9]) {
    for l in 0..L {
        let one = weight_tile_adjoint(&std::array::from_fn(|xi| du[xi][l]));
        for (k, v) in one.into_iter().enumerate() {
            g[k][l] = v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The transforms alone: `A^T ((G g G^T) . (B^T d B)) A` on one 4x4 tile equals the 2x2
    /// valid correlation of `d` with `g`, and `weight_tile_adjoint` is `weight_tile`'s adjoint.
    #[test]
    fn one_tile_identities() {
        let d: Vec<f32> = (0..16).map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.3).collect();
        let g: Vec<f32> = (0..9).map(|i| ((i * 5 % 7) as f32 - 3.0) * 0.2).collect();
        let mut v = vec![0f32; 16];
        // A 4x4 image at padded position (1,1): a 2x2 tile grid at h = w = 4 has 4 tiles; use
        // a 2x2 image and its single tile instead, where padding adds the zero border.
        let img2: Vec<f32> = vec![d[5], d[6], d[9], d[10]];
        input_transform(rows(&mut v, 1), &img2, 1, 2, 2);
        let u = weight_tile(&g, false);
        let prod: Vec<f32> = (0..16).map(|xi| u[xi] * v[xi]).collect();
        let mut out = vec![0f32; 4];
        output_transform(&mut out, |xi| &prod[xi..xi + 1], 1, 2, 2, false);
        for oy in 0..2 {
            for ox in 0..2 {
                let mut want = 0f32;
                for ky in 0..3 {
                    for kx in 0..3 {
                        let (y, x) = (oy + ky, ox + kx);
                        // Padded 4x4 around the 2x2 image.
                        let val =
                            if (1..3).contains(&y) && (1..3).contains(&x) { img2[(y - 1) * 2 + (x - 1)] } else { 0.0 };
                        want += val * g[ky * 3 + kx];
                    }
                }
                assert!((out[oy * 2 + ox] - want).abs() < 1e-5, "{oy},{ox}");
            }
        }
        // <weight_tile(g), du> == <g, weight_tile_adjoint(du)>
        let du: [f32; 16] = std::array::from_fn(|i| (i as f32 * 0.37).sin());
        let lhs: f32 = weight_tile(&g, false).iter().zip(&du).map(|(a, b)| a * b).sum();
        let rhs: f32 = g.iter().zip(&weight_tile_adjoint(&du)).map(|(a, b)| a * b).sum();
        assert!((lhs - rhs).abs() < 1e-5, "{lhs} vs {rhs}");
    }

    /// The CPU's choice follows the layer's input channels (the plan's workspace and the run use
    /// the same one); the GPU always runs F(2x2, 3x3).
    #[test]
    fn each_backend_runs_its_algorithm() {
        let p = |cin| ConvShape { n: 2, cin, h: 8, w: 8, cout: 8, k: 3, stride: 1, pad: 1 };
        assert_eq!(Wino::on(Target::Cpu, &p(F4_MIN_CIN)), Wino::F4);
        assert_eq!(Wino::on(Target::Cpu, &p(F4_MIN_CIN - 1)), Wino::F2);
        assert_eq!(Wino::on(Target::Cuda, &p(640)), Wino::F2);
        assert_eq!((Wino::F2.xi(), Wino::F4.xi(), Wino::F4.tiles(&ConvShape { h: 9, w: 8, ..p(4) })), (16, 36, (3, 2)));
    }

    /// The portable transforms and the dispatched (AVX2 where the CPU has it) ones agree
    /// exactly, on images narrower and wider than a block and of odd sizes.
    #[test]
    fn portable_and_dispatched_transforms_agree() {
        for (nb, h, w) in [(3usize, 7usize, 9usize), (2, 4, 150), (1, 1, 1), (5, 8, 8), (2, 3, 33)] {
            let plane: Vec<f32> = (0..nb * h * w).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.01).collect();
            let t = nb * h.div_ceil(2) * w.div_ceil(2);
            let (mut a, mut b) = (vec![f32::NAN; XI * t], vec![f32::NAN; XI * t]);
            input_transform(rows(&mut a, t), &plane, nb, h, w);
            input_transform_body::<false>(rows(&mut b, t), &plane, nb, h, w);
            assert_eq!(a, b, "input {nb}x{h}x{w}");
            let (mut a, mut b) = (vec![f32::NAN; XI * t], vec![f32::NAN; XI * t]);
            grad_transform(rows(&mut a, t), &plane, nb, h, w);
            grad_transform_body(rows(&mut b, t), &plane, nb, h, w);
            assert_eq!(a, b, "grad {nb}x{h}x{w}");
            let m: Vec<f32> = (0..XI * t).map(|i| ((i * 13 % 29) as f32 - 14.0) * 0.1).collect();
            let ms: [&[f32]; 16] = std::array::from_fn(|xi| &m[xi * t..][..t]);
            let (mut a, mut b) = (plane.clone(), plane.clone());
            output_transform(&mut a, |xi| ms[xi], nb, h, w, true);
            output_transform_body(&mut b, &ms, nb, h, w, true);
            assert_eq!(a, b, "output {nb}x{h}x{w}");
            assert!(a.iter().zip(&plane).any(|(x, y)| x != y));
        }
    }
}
#[cfg(test)]
mod ab {
    use super::*;
    use std::time::Instant;

    #[test]
    #[ignore]
    fn timing_winograd_vs_im2col_forward() {
        for (c, hw) in [(64usize, 32usize), (128, 16), (256, 8)] {
            let p = ConvShape { n: 32, cin: c, h: hw, w: hw, cout: c, k: 3, stride: 1, pad: 1 };
            let s = Slice::full(c);
            let x: Vec<f32> = (0..c * 32 * hw * hw).map(|i| (i % 7) as f32 - 3.0).collect();
            let wt: Vec<f32> = (0..c * c * 9).map(|i| (i % 5) as f32 - 2.0).collect();
            let mut out = vec![0f32; x.len()];
            let chunk = (8 << 20) / (c * 9 * hw * hw);
            let mut col =
                vec![
                    0f32;
                    (c * 9 * hw * hw * chunk).max(super::super::workspace_len(&p, c, 0, crate::ir::Target::Cpu))
                ];
            let flop = 2.0 * p.macs(c, c) as f64;
            let (mut bw, mut bi) = (f64::INFINITY, f64::INFINITY);
            for _ in 0..5 {
                let t = Instant::now();
                super::super::conv2d_forward(&mut out, &x, &wt, &mut col, &p, s, s, 0, false, super::super::Algo::Fast);
                bw = bw.min(t.elapsed().as_secs_f64());
                let t = Instant::now();
                super::super::conv2d_forward(
                    &mut out,
                    &x,
                    &wt,
                    &mut col,
                    &p,
                    s,
                    s,
                    chunk,
                    false,
                    super::super::Algo::Im2col,
                );
                bi = bi.min(t.elapsed().as_secs_f64());
            }
            let mut dx = vec![0f32; x.len()];
            let mut dw = vec![0f32; wt.len()];
            let (mut cw, mut ci) = (f64::INFINITY, f64::INFINITY);
            for _ in 0..3 {
                let t = Instant::now();
                super::super::conv2d_backward(
                    Some(&mut dx),
                    &mut dw,
                    &out,
                    &x,
                    &wt,
                    &mut col,
                    &p,
                    s,
                    s,
                    0,
                    false,
                    super::super::Algo::Fast,
                );
                cw = cw.min(t.elapsed().as_secs_f64());
                let t = Instant::now();
                super::super::conv2d_backward(
                    Some(&mut dx),
                    &mut dw,
                    &out,
                    &x,
                    &wt,
                    &mut col,
                    &p,
                    s,
                    s,
                    chunk,
                    false,
                    super::super::Algo::Im2col,
                );
                ci = ci.min(t.elapsed().as_secs_f64());
            }
            println!(
                "{c}@{hw} backward: winograd {:.2} ms ({:.0}), im2col {:.2} ms ({:.0})",
                cw * 1e3,
                2.0 * flop / cw * 1e-9,
                ci * 1e3,
                2.0 * flop / ci * 1e-9
            );
            println!(
                "{c}@{hw}: winograd {:.2} ms ({:.0}), im2col chunk {chunk} {:.2} ms ({:.0})",
                bw * 1e3,
                flop / bw * 1e-9,
                bi * 1e3,
                flop / bi * 1e-9
            );
        }
    }
}
