//! Winograd F(4x4, 3x3), the CPU's: every 4x4 output tile reads a 6x6 input tile, and the 36
//! products `M[xi] = U[xi] * V[xi]` of the walk (`winograd_cmds.rs`) do 4x fewer multiply-adds
//! than im2col (F(2x2, 3x3) does 2.25x fewer), on 2.25 transformed values per output instead of
//! 4. The matrices, for interpolation points 0, 1, -1, 2, -2 and infinity:
//!
//! ```text
//! B^T = [4  0 -5  0 1 0]   G = [ 1/4     0    0 ]   A^T = [1 1  1 1  1 0]
//!       [0 -4 -4  1 1 0]       [-1/6 -1/6 -1/6 ]         [0 1 -1 2 -2 0]
//!       [0  4 -4 -1 1 0]       [-1/6  1/6 -1/6 ]         [0 1  1 4  4 0]
//!       [0 -2 -1  2 1 0]       [1/24 1/12  1/6 ]         [0 1 -1 8 -8 1]
//!       [0  2 -1 -2 1 0]       [1/24 -1/12 1/6 ]
//!       [0  4  0 -5 0 1]       [  0     0    1 ]
//! ```
//!
//! Value `xi = 6 * row + column` of a tile; the same layouts, blocks of tiles and threading as
//! F(2x2, 3x3) (`winograd.rs`). Each transform is one pass along rows and one along columns,
//! written as loops over the block's tiles so that they vectorise; their arithmetic is fixed
//! (no reassociation, no fused multiply-add), so every instruction set gives the same bits.

use super::winograd::{blocks, Rows, TX_BLOCK};

/// Values per transformed tile (6x6).
pub(super) const XI: usize = 36;

/// Values `0..C` of tiles `0..nt`, 4 columns apart from column `x0`, of image row `row` shifted
/// right by `shift` (1: the padded row, `P[x] = row[x - 1]`; 0: the row itself) with zeros
/// outside it: `d[c][j] = P[x0 + 4 j + c]`.
#[inline(always)]
fn gather<const C: usize>(d: &mut [[f32; TX_BLOCK]; C], at: usize, row: &[f32], x0: usize, nt: usize, shift: usize) {
    let w = row.len();
    let value = |x: usize| if x >= shift && x < w + shift { row[x - shift] } else { 0.0 };
    // Tiles whose C values all lie in the row: x0 + 4j >= shift and x0 + 4j + C <= w + shift.
    let lo = shift.saturating_sub(x0).div_ceil(4).min(nt);
    let hi = if w + shift >= x0 + C { ((w + shift - x0 - C) / 4 + 1).min(nt) } else { 0 }.max(lo);
    for j in (0..lo).chain(hi..nt) {
        for (c, dc) in d.iter_mut().enumerate() {
            dc[at + j] = value(x0 + 4 * j + c);
        }
    }
    if hi > lo {
        let inside = &row[x0 + 4 * lo - shift..][..4 * (hi - lo - 1) + C];
        let mut dst = d.each_mut().map(|dc| &mut dc[at + lo..at + hi]);
        for (j, window) in inside.windows(C).step_by(4).enumerate() {
            for (c, dc) in dst.iter_mut().enumerate() {
                dc[j] = window[c];
            }
        }
    }
}

/// `B^T d` of six rows into six: `out[b][j]` from `d[0..6][j]`, for `j < n`.
#[inline(always)]
fn b_transpose(out: [&mut [f32]; 6], d: [&[f32]; 6], n: usize) {
    let [o0, o1, o2, o3, o4, o5] = out;
    let (o0, o1, o2, o3, o4, o5) = (&mut o0[..n], &mut o1[..n], &mut o2[..n], &mut o3[..n], &mut o4[..n], &mut o5[..n]);
    let (d0, d1, d2, d3, d4, d5) = (&d[0][..n], &d[1][..n], &d[2][..n], &d[3][..n], &d[4][..n], &d[5][..n]);
    for j in 0..n {
        o0[j] = 4.0 * d0[j] - 5.0 * d2[j] + d4[j];
        o1[j] = (d3[j] + d4[j]) - 4.0 * (d1[j] + d2[j]);
        o2[j] = (d4[j] - d3[j]) + 4.0 * (d1[j] - d2[j]);
        o3[j] = (d4[j] - d2[j]) + 2.0 * (d3[j] - d1[j]);
        o4[j] = (d4[j] - d2[j]) + 2.0 * (d1[j] - d3[j]);
        o5[j] = 4.0 * d1[j] - 5.0 * d3[j] + d5[j];
    }
}

/// `A^T m` of six rows into four, for `j < n`.
#[inline(always)]
fn a_transpose(out: [&mut [f32]; 4], m: [&[f32]; 6], n: usize) {
    let [y0, y1, y2, y3] = out;
    let (y0, y1, y2, y3) = (&mut y0[..n], &mut y1[..n], &mut y2[..n], &mut y3[..n]);
    let (m0, m1, m2, m3, m4, m5) = (&m[0][..n], &m[1][..n], &m[2][..n], &m[3][..n], &m[4][..n], &m[5][..n]);
    for j in 0..n {
        let (p12, d12, p34, d34) = (m1[j] + m2[j], m1[j] - m2[j], m3[j] + m4[j], m3[j] - m4[j]);
        y0[j] = m0[j] + p12 + p34;
        y1[j] = d12 + 2.0 * d34;
        y2[j] = p12 + 4.0 * p34;
        y3[j] = d12 + 8.0 * d34 + m5[j];
    }
}

/// `A y` of four rows into six (the adjoint of [`a_transpose`]), for `j < n`.
#[inline(always)]
fn a_times(out: [&mut [f32]; 6], y: [&[f32]; 4], n: usize) {
    let [z0, z1, z2, z3, z4, z5] = out;
    let (z0, z1, z2, z3, z4, z5) = (&mut z0[..n], &mut z1[..n], &mut z2[..n], &mut z3[..n], &mut z4[..n], &mut z5[..n]);
    let (y0, y1, y2, y3) = (&y[0][..n], &y[1][..n], &y[2][..n], &y[3][..n]);
    for j in 0..n {
        let (p02, p13) = (y0[j] + y2[j], y1[j] + y3[j]);
        let (q02, q13) = (y0[j] + 4.0 * y2[j], 2.0 * y1[j] + 8.0 * y3[j]);
        z0[j] = y0[j];
        z1[j] = p02 + p13;
        z2[j] = p02 - p13;
        z3[j] = q02 + q13;
        z4[j] = q02 - q13;
        z5[j] = y3[j];
    }
}

/// `B^T d B` of every tile of images `0..nb` of one channel `plane` (`nb` images of `h x w`):
/// value `xi` of tile `t` into `v[xi][t]`.
#[allow(clippy::redundant_closure)] // Inlined, as `winograd::weight_transform` says.
pub(super) fn input_transform(v: Rows<XI>, plane: &[f32], nb: usize, h: usize, w: usize) {
    crate::blas::vectorized(
        #[inline(always)]
        || {
            tile_transform::<6>(
                v,
                plane,
                nb,
                h,
                w,
                1,
                #[inline(always)]
                |o, d, n| b_transpose(o, d, n),
            )
        },
    )
}

/// `A dY A^T` of every 4x4 tile of one channel of `d_out` (`nb` images of `h x w`; values past
/// the edge of the image count as 0): value `xi` of tile `t` into `v[xi][t]`.
#[allow(clippy::redundant_closure)] // Inlined, as `winograd::weight_transform` says.
pub(super) fn grad_transform(v: Rows<XI>, plane: &[f32], nb: usize, h: usize, w: usize) {
    crate::blas::vectorized(
        #[inline(always)]
        || {
            tile_transform::<4>(
                v,
                plane,
                nb,
                h,
                w,
                0,
                #[inline(always)]
                |o, y, n| a_times(o, y, n),
            )
        },
    )
}

/// `P pass P^T` of the `R x R` tiles of one channel (4 apart, from row and column `-shift`,
/// zeros outside the image), `pass` taking `R` rows to 6: the input transform (`R` 6, `shift` 1,
/// `B^T`) or the gradient's (`R` 4, `shift` 0, `A`). Rows first, each into `rp`, then columns,
/// both over the whole block's tiles.
#[inline(always)]
fn tile_transform<const R: usize>(
    mut v: Rows<XI>,
    plane: &[f32],
    nb: usize,
    h: usize,
    w: usize,
    shift: usize,
    pass: impl Fn([&mut [f32]; 6], [&[f32]; R], usize),
) {
    let (th, tw) = (h.div_ceil(4), w.div_ceil(4));
    // rp[r][b][t]: row pass of row r of the block's tiles, value b.
    let mut rp = [[[0f32; TX_BLOCK]; 6]; R];
    // d[c][t]: value c of each tile in the row.
    let mut d = [[0f32; TX_BLOCK]; R];
    for blk in blocks(nb, th, tw) {
        let (nt, n) = (blk.nt, blk.len());
        for (r, rows) in rp.iter_mut().enumerate() {
            for k in 0..blk.rows {
                let (i, ty) = ((blk.row0 + k) / th, (blk.row0 + k) % th);
                // Row r of tile row ty is image row 4 ty + r - shift.
                match (4 * ty + r).checked_sub(shift) {
                    Some(y) if y < h => gather(&mut d, k * nt, &plane[(i * h + y) * w..][..w], 4 * blk.tx0, nt, shift),
                    _ => d.iter_mut().for_each(|dc| dc[k * nt..][..nt].fill(0.0)),
                }
            }
            pass(rows.each_mut().map(|x| &mut x[..]), d.each_ref().map(|x| &x[..]), n);
        }
        // Columns, contiguous across the block's tiles.
        for b in 0..6 {
            let col = rp.each_ref().map(|r| &r[b][..n]);
            pass(v_rows(&mut v, b, blk.base, n), col, n);
        }
    }
}

/// Rows `xi = 6 a + b` (`a` in `0..6`) of `v`, `n` values from tile `t0`.
#[inline(always)]
fn v_rows<'a>(v: &'a mut Rows<XI>, b: usize, t0: usize, n: usize) -> [&'a mut [f32]; 6] {
    let mut picked = v.iter_mut().skip(b).step_by(6).map(|r| &mut r[t0..][..n]);
    std::array::from_fn(|_| picked.next().expect("six rows"))
}

/// `Y = A^T M A` for every tile of one output channel: `ms[xi]` is that channel's `[t]` row of
/// value `xi`; writes (or adds to, when `accumulate`) `nb` images of `h x w` in `plane`.
pub(super) fn output_transform(plane: &mut [f32], ms: &[&[f32]; XI], nb: usize, h: usize, w: usize, accumulate: bool) {
    crate::blas::vectorized(
        #[inline(always)]
        || output_transform_body(plane, ms, nb, h, w, accumulate),
    )
}

#[inline(always)]
fn output_transform_body(plane: &mut [f32], ms: &[&[f32]; XI], nb: usize, h: usize, w: usize, accumulate: bool) {
    let (th, tw) = (h.div_ceil(4), w.div_ceil(4));
    // s[r][b]: column pass (row r of A^T M, column b); y[r][c]: output value (r, c) of each tile.
    let mut s = [[[0f32; TX_BLOCK]; 6]; 4];
    let mut y = [[[0f32; TX_BLOCK]; 4]; 4];
    let mut seg = [0f32; 4 * TX_BLOCK];
    for blk in blocks(nb, th, tw) {
        let (n, base, nt) = (blk.len(), blk.base, blk.nt);
        for b in 0..6 {
            let m = std::array::from_fn(|a| &ms[6 * a + b][base..][..n]);
            let [s0, s1, s2, s3] = &mut s;
            a_transpose([&mut s0[b][..], &mut s1[b][..], &mut s2[b][..], &mut s3[b][..]], m, n);
        }
        for (sr, yr) in s.iter().zip(&mut y) {
            let m = std::array::from_fn(|b| &sr[b][..n]);
            a_transpose(yr.each_mut().map(|x| &mut x[..]), m, n);
        }
        let x0 = 4 * blk.tx0;
        let cols = (w - x0).min(4 * nt);
        for k in 0..blk.rows {
            let (i, ty) = ((blk.row0 + k) / th, (blk.row0 + k) % th);
            for (r, yr) in y.iter().enumerate() {
                let yy = 4 * ty + r;
                if yy >= h {
                    continue;
                }
                // Interleave the four values of each tile, then write the columns inside the image.
                let [y0, y1, y2, y3] = yr.each_ref().map(|x| &x[k * nt..][..nt]);
                for ((q, (&a, &b)), (&c, &e)) in seg.chunks_exact_mut(4).zip(y0.iter().zip(y1)).zip(y2.iter().zip(y3)) {
                    q.copy_from_slice(&[a, b, c, e]);
                }
                let dst = &mut plane[(i * h + yy) * w + x0..][..cols];
                if accumulate {
                    dst.iter_mut().zip(&seg[..cols]).for_each(|(d, &x)| *d += x);
                } else {
                    dst.copy_from_slice(&seg[..cols]);
                }
            }
        }
    }
}

/// `G` applied along lanes: six rows from three, each `L` lanes.
#[inline(always)]
fn g_rows<const L: usize>(out: [&mut [f32; L]; 6], a: &[f32; L], b: &[f32; L], c: &[f32; L]) {
    let [u0, u1, u2, u3, u4, u5] = out;
    for l in 0..L {
        let (s, t) = (a[l] + c[l], a[l] * (1.0 / 24.0) + c[l] * (1.0 / 6.0));
        u0[l] = a[l] * 0.25;
        u1[l] = (s + b[l]) * (-1.0 / 6.0);
        u2[l] = (s - b[l]) * (-1.0 / 6.0);
        u3[l] = t + b[l] * (1.0 / 12.0);
        u4[l] = t - b[l] * (1.0 / 12.0);
        u5[l] = c[l];
    }
}

/// `G g G^T` of `L` 3x3 kernels at once: `g[tap][lane]` (taps row-major) into `u[xi][lane]`.
#[inline(always)]
pub(super) fn weight_tiles<const L: usize>(g: &[[f32; L]; 9], u: &mut [[f32; L]; XI]) {
    // gg[3 r + x] = row r of G g, column x.
    let mut gg = [[0f32; L]; 18];
    for x in 0..3 {
        let mut rows = gg.iter_mut().skip(x).step_by(3);
        let out = std::array::from_fn(|_| rows.next().expect("six rows"));
        g_rows(out, &g[x], &g[3 + x], &g[6 + x]);
    }
    for r in 0..6 {
        let [u0, u1, u2, u3, u4, u5, ..] = &mut u[6 * r..] else { unreachable!("36 rows") };
        g_rows([u0, u1, u2, u3, u4, u5], &gg[3 * r], &gg[3 * r + 1], &gg[3 * r + 2]);
    }
}

/// `G^T` applied along lanes: three rows from six.
#[inline(always)]
fn gt_rows<const L: usize>(out: [&mut [f32; L]; 3], d: [&[f32; L]; 6]) {
    let [g0, g1, g2] = out;
    for l in 0..L {
        let (p12, d21, p34, d34) = (d[1][l] + d[2][l], d[2][l] - d[1][l], d[3][l] + d[4][l], d[3][l] - d[4][l]);
        g0[l] = d[0][l] * 0.25 + p12 * (-1.0 / 6.0) + p34 * (1.0 / 24.0);
        g1[l] = d21 * (1.0 / 6.0) + d34 * (1.0 / 12.0);
        g2[l] = p12 * (-1.0 / 6.0) + p34 * (1.0 / 6.0) + d[5][l];
    }
}

/// `G^T du G` (6x6 -> 3x3) of `L` tiles at once, the adjoint of [`weight_tiles`]: `du[xi][lane]`
/// into `g[tap][lane]`.
#[inline(always)]
pub(super) fn weight_tiles_adjoint<const L: usize>(du: &[[f32; L]; XI], g: &mut [[f32; L]; 9]) {
    // cols[3 x + y] = row y of G^T du, column x.
    let mut cols = [[0f32; L]; 18];
    for x in 0..6 {
        let [c0, c1, c2, ..] = &mut cols[3 * x..] else { unreachable!("18 rows") };
        gt_rows([c0, c1, c2], std::array::from_fn(|r| &du[6 * r + x]));
    }
    for y in 0..3 {
        let [g0, g1, g2, ..] = &mut g[3 * y..] else { unreachable!("9 taps") };
        let rows: [[f32; L]; 6] = std::array::from_fn(|x| cols[3 * x + y]);
        gt_rows([g0, g1, g2], rows.each_ref());
    }
}
