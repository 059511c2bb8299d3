//! Winograd F(2x2, 3x3) for the 3x3, stride 1, pad 1 convolutions: forward, data gradient and
//! weight gradient.
//!
//! Every 2x2 output tile reads a 4x4 input tile. With `V = B^T d B` (input), `U = G g G^T`
//! (weight) and `Y = A^T (U . V) A`, the sum over input channels of the elementwise products is
//! 16 independent products `M[xi] = U[xi] * V[xi]` (`xi` = one of the 16 tile values) of
//! `[out, in] x [in, tiles]`: 2.25x fewer multiply-adds than im2col, and 16 products that run
//! on separate threads (each on one core, where the GEMM crate does better than when it splits
//! one thin product) instead of one product split badly. The data gradient is the same forward
//! pass over `d_out` with the flipped, transposed kernel. The weight gradient is the adjoint of
//! the forward in `g`: `dg = G^T (sum over tiles of (A dY A^T) . V) G`, i.e. 16 products
//! `dU[xi] = M'[xi] V[xi]^T`.
//!
//! Layouts in the workspace (floats): buffers written by a transform are channel-major
//! `[c][xi][t]` (one contiguous block per channel, so channels run in parallel); buffers written
//! by the products are `[xi][c][t]` or `[xi][o][i]` (one block per `xi`). A batch chunk is cut
//! into sub-chunks small enough that the transformed tiles stay in the caches. (A tile-major
//! `[t][xi][c]` layout made the products themselves 1.3-1.6x faster but the scattered
//! transforms slower, and lost overall when measured.)
//!
//! Slices are handled while gathering the weight: `U` holds only the slice's channels, in slice
//! order, so a wrapping slice costs nothing extra.

use super::ConvShape;
use crate::ops::gemm::gemm_serial;
use crate::sliceout::Slice;
use crate::tensor::Layout;
use rayon::prelude::*;

/// Values per transformed tile (4x4).
const XI: usize = 16;
/// Tiles of one tile row transformed together (a stack buffer of `16 * TX_BLOCK` floats).
const TX_BLOCK: usize = 64;
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

/// Tile rows and columns of one image.
fn tiles(p: &ConvShape) -> (usize, usize) {
    (p.h.div_ceil(2), p.w.div_ceil(2))
}

/// Floats of workspace for `in_width` input channels and `nb` images per chunk (an upper bound
/// over output slices: it counts the full `cout`).
pub(super) fn workspace_len(p: &ConvShape, in_width: usize, nb: usize) -> usize {
    let (th, tw) = tiles(p);
    let t = nb * th * tw;
    2 * XI * p.cout * in_width + XI * t * (in_width + p.cout)
}

/// Images per sub-chunk: at most `nb`, as many as keep the tiles near `SUB_CHUNK_FLOATS`.
fn sub_chunk(p: &ConvShape, wi: usize, wo: usize, nb: usize) -> usize {
    let (th, tw) = tiles(p);
    let per_image = XI * th * tw * (wi + wo);
    (SUB_CHUNK_FLOATS / per_image.max(1)).clamp(1, nb.max(1))
}

/// Layer channel of position `j` of a slice.
fn channel(s: &Slice, j: usize) -> usize {
    (s.start + j) % s.channels
}

#[allow(clippy::needless_range_loop)]
/// `G g G^T` of one 3x3 kernel (row-major), optionally flipped in both axes.
fn weight_tile(g: &[f32], flip: bool) -> [f32; 16] {
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
fn weight_tile_adjoint(du: &[f32; 16]) -> [f32; 9] {
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

/// `B^T d B` of every tile of images `0..nb` of one channel `plane` (`nb` images of `h x w`),
/// into `v` laid out `[xi][t]`.
fn input_transform(v: &mut [f32], plane: &[f32], nb: usize, h: usize, w: usize) {
    let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
    let t_total = nb * th * tw;
    let mut hb = [[[0f32; TX_BLOCK]; 4]; 4];
    for i in 0..nb {
        let img = &plane[i * h * w..][..h * w];
        for ty in 0..th {
            for tx0 in (0..tw).step_by(TX_BLOCK) {
                let nt = TX_BLOCK.min(tw - tx0);
                // Row pass: each of the 4 input rows of the tile row, transformed along x.
                for (r, hr) in hb.iter_mut().enumerate() {
                    // Padded row 2*ty + r holds image row 2*ty + r - 1.
                    let y = 2 * ty + r;
                    if y == 0 || y > h {
                        for b in hr.iter_mut() {
                            b[..nt].fill(0.0);
                        }
                        continue;
                    }
                    let row = &img[(y - 1) * w..][..w];
                    let at = |x: usize| {
                        if x >= 1 && x <= w {
                            row[x - 1]
                        } else {
                            0.0
                        }
                    };
                    let [h0, h1, h2, h3] = hr;
                    for j in 0..nt {
                        // Padded column x0 = 2*tx holds image column 2*tx - 1.
                        let x0 = 2 * (tx0 + j);
                        let (d0, d1, d2, d3) = if x0 >= 1 && x0 + 3 <= w {
                            let s = &row[x0 - 1..x0 + 3];
                            (s[0], s[1], s[2], s[3])
                        } else {
                            (at(x0), at(x0 + 1), at(x0 + 2), at(x0 + 3))
                        };
                        h0[j] = d0 - d2;
                        h1[j] = d1 + d2;
                        h2[j] = d2 - d1;
                        h3[j] = d1 - d3;
                    }
                }
                // Column pass, contiguous across the tiles of the row.
                let base = (i * th + ty) * tw + tx0;
                for b in 0..4 {
                    let (r0, r1, r2, r3) = (&hb[0][b][..nt], &hb[1][b][..nt], &hb[2][b][..nt], &hb[3][b][..nt]);
                    let d = &mut v[b * t_total + base..][..nt];
                    for j in 0..nt {
                        d[j] = r0[j] - r2[j];
                    }
                    let d = &mut v[(4 + b) * t_total + base..][..nt];
                    for j in 0..nt {
                        d[j] = r1[j] + r2[j];
                    }
                    let d = &mut v[(8 + b) * t_total + base..][..nt];
                    for j in 0..nt {
                        d[j] = r2[j] - r1[j];
                    }
                    let d = &mut v[(12 + b) * t_total + base..][..nt];
                    for j in 0..nt {
                        d[j] = r1[j] - r3[j];
                    }
                }
            }
        }
    }
}

/// `A dY A^T` of every 2x2 tile of one channel of `d_out` (`nb` images of `h x w`; outputs past
/// the edge of an odd image count as 0), into `v` laid out `[xi][t]`.
fn grad_transform(v: &mut [f32], plane: &[f32], nb: usize, h: usize, w: usize) {
    let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
    let t_total = nb * th * tw;
    for i in 0..nb {
        let img = &plane[i * h * w..][..h * w];
        for ty in 0..th {
            let y0 = 2 * ty;
            let row0 = &img[y0 * w..][..w];
            let row1 = (y0 + 1 < h).then(|| &img[(y0 + 1) * w..][..w]);
            let base = (i * th + ty) * tw;
            for tx in 0..tw {
                let x0 = 2 * tx;
                let get = |row: &[f32], x: usize| if x < w { row[x] } else { 0.0 };
                let (a, b) = (get(row0, x0), get(row0, x0 + 1));
                let (c, d) = row1.map_or((0.0, 0.0), |r| (get(r, x0), get(r, x0 + 1)));
                // Rows of A [y0; y1]: (y0, y0 + y1, y0 - y1, -y1); the same on columns.
                let rows = [[a, b], [a + c, b + d], [a - c, b - d], [-c, -d]];
                let t = base + tx;
                for (r, [p, q]) in rows.into_iter().enumerate() {
                    v[(r * 4) * t_total + t] = p;
                    v[(r * 4 + 1) * t_total + t] = p + q;
                    v[(r * 4 + 2) * t_total + t] = p - q;
                    v[(r * 4 + 3) * t_total + t] = -q;
                }
            }
        }
    }
}

#[allow(clippy::needless_range_loop)]
/// `Y = A^T M A` for every tile of one output channel: `m(xi)` is that channel's `[t]` row of
/// value `xi`; writes (or adds to, when `accumulate`) `nb` images of `h x w` in `plane`.
fn output_transform<'a>(
    plane: &mut [f32],
    m: impl Fn(usize) -> &'a [f32],
    nb: usize,
    h: usize,
    w: usize,
    accumulate: bool,
) {
    let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
    let mut s = [[[0f32; TX_BLOCK]; 4]; 2];
    let ms: [&[f32]; 16] = std::array::from_fn(&m);
    for i in 0..nb {
        for ty in 0..th {
            for tx0 in (0..tw).step_by(TX_BLOCK) {
                let nt = TX_BLOCK.min(tw - tx0);
                let base = (i * th + ty) * tw + tx0;
                // Columns first: s0 = m0 + m1 + m2, s1 = m1 - m2 - m3 (per column b).
                for b in 0..4 {
                    let (m0, m1, m2, m3) = (
                        &ms[b][base..base + nt],
                        &ms[4 + b][base..base + nt],
                        &ms[8 + b][base..base + nt],
                        &ms[12 + b][base..base + nt],
                    );
                    let [s0, s1] = &mut s;
                    for j in 0..nt {
                        s0[b][j] = m0[j] + m1[j] + m2[j];
                        s1[b][j] = m1[j] - m2[j] - m3[j];
                    }
                }
                for (dy, sr) in s.iter().enumerate() {
                    let y = 2 * ty + dy;
                    if y >= h {
                        continue;
                    }
                    let row = &mut plane[(i * h + y) * w..][..w];
                    for j in 0..nt {
                        let x = 2 * (tx0 + j);
                        let v0 = sr[0][j] + sr[1][j] + sr[2][j];
                        let v1 = sr[1][j] - sr[2][j] - sr[3][j];
                        if accumulate {
                            row[x] += v0;
                            if x + 1 < w {
                                row[x + 1] += v1;
                            }
                        } else {
                            row[x] = v0;
                            if x + 1 < w {
                                row[x + 1] = v1;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `M[xi] = K[xi] * X[xi]` for the 16 values, one per task: `kern` is `[o][xi][k]` (`odim` rows,
/// `kdim` wide), `x` is `[k][xi][t]`, `m` gets `[xi][o][t]`.
fn products(m: &mut [f32], kern: &[f32], x: &[f32], t: usize, kdim: usize, odim: usize) {
    m[..XI * odim * t].par_chunks_mut(odim * t).enumerate().for_each(|(xi, mx)| {
        gemm_serial(
            mx,
            Layout::matrix(0, odim, t, t, 1),
            kern,
            Layout::matrix(xi * kdim, odim, kdim, XI * kdim, 1),
            x,
            Layout::matrix(xi * t, kdim, t, XI * t, 1),
            false,
        )
    });
}

/// Inverse transform of `m` (`[xi][o][t]`, `odim` channels) into images `n0..n0+nb` of `dst`
/// (`(odim, N, H, W)`), one channel per task.
#[allow(clippy::too_many_arguments)]
fn untransform(
    dst: &mut [f32],
    m: &[f32],
    p: &ConvShape,
    odim: usize,
    t: usize,
    n0: usize,
    nb: usize,
    accumulate: bool,
) {
    let hw = p.h * p.w;
    dst[..odim * p.n * hw].par_chunks_mut(p.n * hw).enumerate().for_each(|(o, plane)| {
        output_transform(
            &mut plane[n0 * hw..][..nb * hw],
            |xi| &m[(xi * odim + o) * t..][..t],
            nb,
            p.h,
            p.w,
            accumulate,
        )
    });
}

/// Transforms images `n0..n0+nb` of the `(channels, N, H, W)` tensor `src` into `v`
/// (`[c][xi][t]`), one channel per task.
#[allow(clippy::too_many_arguments)]
fn transform(
    v: &mut [f32],
    src: &[f32],
    p: &ConvShape,
    channels: usize,
    t: usize,
    n0: usize,
    nb: usize,
    f: fn(&mut [f32], &[f32], usize, usize, usize),
) {
    let hw = p.h * p.w;
    v[..channels * XI * t]
        .par_chunks_mut(XI * t)
        .enumerate()
        .for_each(|(c, vc)| f(vc, &src[(c * p.n + n0) * hw..][..nb * hw], nb, p.h, p.w));
}

/// `out = conv(inp)` (or `+=`) for an eligible layer; same contract as `conv2d_forward`.
#[allow(clippy::too_many_arguments)]
pub(super) fn forward(
    out: &mut [f32],
    inp: &[f32],
    weight: &[f32],
    col: &mut [f32],
    p: &ConvShape,
    out_slice: Slice,
    in_slice: Slice,
    chunk: usize,
    accumulate: bool,
) {
    let (wo, wi) = (out_slice.width, in_slice.width);
    let (th, tw) = tiles(p);
    let nb_max = sub_chunk(p, wi, wo, p.chunk_images(chunk));
    let ld = p.cin * 9;
    let (u, rest) = col.split_at_mut(XI * wo * wi);
    // U laid out [o][xi][i].
    u.par_chunks_mut(XI * wi).enumerate().for_each(|(o, uo)| {
        let co = channel(&out_slice, o);
        for i in 0..wi {
            let ci = channel(&in_slice, i);
            let t = weight_tile(&weight[co * ld + ci * 9..][..9], false);
            for (xi, &v) in t.iter().enumerate() {
                uo[xi * wi + i] = v;
            }
        }
    });
    let u = &*u;
    for n0 in (0..p.n).step_by(nb_max) {
        let nb = nb_max.min(p.n - n0);
        let t = nb * th * tw;
        let (v, m) = rest.split_at_mut(XI * wi * t);
        transform(v, inp, p, wi, t, n0, nb, input_transform);
        products(m, u, v, t, wi, wo);
        untransform(out, m, p, wo, t, n0, nb, accumulate);
    }
}

/// Gradients for an eligible layer; same contract as `conv2d_backward`.
#[allow(clippy::too_many_arguments)]
pub(super) fn backward(
    d_inp: Option<&mut [f32]>,
    d_weight: &mut [f32],
    d_out: &[f32],
    inp: &[f32],
    weight: &[f32],
    col: &mut [f32],
    p: &ConvShape,
    out_slice: Slice,
    in_slice: Slice,
    chunk: usize,
    accumulate_d_inp: bool,
) {
    let (wo, wi) = (out_slice.width, in_slice.width);
    let (th, tw) = tiles(p);
    let nb_max = sub_chunk(p, wi, wo, p.chunk_images(chunk));
    let ld = p.cin * 9;
    let (ut, rest) = col.split_at_mut(XI * wo * wi);
    let (du, rest) = rest.split_at_mut(XI * wo * wi);
    let mut d_inp = d_inp;
    if d_inp.is_some() {
        // U' laid out [i][xi][o]: the flipped kernel, from output to input channels.
        ut.par_chunks_mut(XI * wo).enumerate().for_each(|(i, ui)| {
            let ci = channel(&in_slice, i);
            for o in 0..wo {
                let co = channel(&out_slice, o);
                let t = weight_tile(&weight[co * ld + ci * 9..][..9], true);
                for (xi, &v) in t.iter().enumerate() {
                    ui[xi * wo + o] = v;
                }
            }
        });
    }
    let ut = &*ut;
    for n0 in (0..p.n).step_by(nb_max) {
        let nb = nb_max.min(p.n - n0);
        let t = nb * th * tw;
        let (v, rest2) = rest.split_at_mut(XI * wi * t);
        let g = &mut rest2[..XI * wo * t];
        transform(v, inp, p, wi, t, n0, nb, input_transform);
        transform(g, d_out, p, wo, t, n0, nb, grad_transform);
        {
            // dU[xi][o][i] += sum over tiles of G[o][xi][t] V[i][xi][t].
            let (v, g) = (&*v, &*g);
            du.par_chunks_mut(wo * wi).enumerate().for_each(|(xi, dux)| {
                gemm_serial(
                    dux,
                    Layout::matrix(0, wo, wi, wi, 1),
                    g,
                    Layout::matrix(xi * t, wo, t, XI * t, 1),
                    v,
                    Layout::matrix(xi * t, t, wi, 1, XI * t),
                    n0 > 0,
                )
            });
        }
        if let Some(d_inp) = d_inp.as_deref_mut() {
            // d_out's input transform replaces A dY A^T; the products land where V was.
            transform(g, d_out, p, wo, t, n0, nb, input_transform);
            products(v, ut, g, t, wo, wi);
            untransform(d_inp, v, p, wi, t, n0, nb, accumulate_d_inp);
        }
    }
    let du = &*du;
    d_weight[..wo * wi * 9].par_chunks_mut(wi * 9).enumerate().for_each(|(o, row)| {
        for i in 0..wi {
            let dt: [f32; 16] = std::array::from_fn(|xi| {
                // No chunk ran for an empty batch: the gradient is zero.
                if p.n == 0 {
                    0.0
                } else {
                    du[(xi * wo + o) * wi + i]
                }
            });
            row[i * 9..][..9].copy_from_slice(&weight_tile_adjoint(&dt));
        }
    });
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
        input_transform(&mut v, &img2, 1, 2, 2);
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
            let mut col = vec![0f32; (c * 9 * hw * hw * chunk).max(p.col_len(c, 0))];
            let flop = 2.0 * p.macs(c, c) as f64;
            let (mut bw, mut bi) = (f64::INFINITY, f64::INFINITY);
            for _ in 0..5 {
                let t = Instant::now();
                forward(&mut out, &x, &wt, &mut col, &p, s, s, 0, false);
                bw = bw.min(t.elapsed().as_secs_f64());
                let t = Instant::now();
                super::super::forward_im2col(&mut out, &x, &wt, &mut col, &p, s, s, chunk, false);
                bi = bi.min(t.elapsed().as_secs_f64());
            }
            let mut dx = vec![0f32; x.len()];
            let mut dw = vec![0f32; wt.len()];
            let (mut cw, mut ci) = (f64::INFINITY, f64::INFINITY);
            for _ in 0..3 {
                let t = Instant::now();
                backward(Some(&mut dx), &mut dw, &out, &x, &wt, &mut col, &p, s, s, 0, false);
                cw = cw.min(t.elapsed().as_secs_f64());
                let t = Instant::now();
                super::super::backward_im2col(Some(&mut dx), &mut dw, &out, &x, &wt, &mut col, &p, s, s, chunk, false);
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
