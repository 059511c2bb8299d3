//! Winograd as a walk of commands, the way `lowering.rs` walks im2col + GEMM, the one walk both
//! backends run: `cpu.rs` with F(4x4, 3x3) (`winograd_f4.rs`; 36 products on separate threads),
//! `cuda.rs` with F(2x2, 3x3) (`winograd.cu` and a strided batch of 16 cuBLAS products, the
//! GPU's `--winograd`). The walk is the same for both ([`Wino`] gives the tile and the number of
//! products). The tests here run it for both with a column-major GEMM that follows cuBLAS
//! against the direct convolution, so the batched products' strides as cuBLAS gets them are
//! checked on a machine without a GPU.
//!
//! Transformed tiles are `[xi][channel][t]` (one row-major matrix per tile value `xi`), so each
//! of the 16 (or 36) products is one matrix of a strided batch:
//! - forward: `M[xi] (wo x T) = U[xi] (wo x wi) V[xi] (wi x T)`, then `Y (+)= A^T M A`;
//! - input gradient: the forward with `d_out` and the flipped, transposed weight `U'[xi] (wi x wo)`;
//! - weight gradient: `dU[xi] (wo x wi) += G[xi] (wo x T) V[xi]^T`, `G = A dY A^T`, summed over the
//!   chunks, then `dW = G^T dU G`.
//!
//! Slices cost nothing extra: the weight transform gathers the slice's channels in slice order
//! (wrapping included) and the activations are already in slice order. The workspace holds, in
//! order, the transformed weight(s) and one chunk's transformed input and output tiles
//! (`winograd::workspace_len`, which the plan's chunk keeps within the budget; the CPU walks a
//! smaller chunk, `winograd::cpu_chunk`, which needs less).

use super::lowering::{chunks, Operand, RowGemm, View};
use super::winograd::Wino;
use crate::ir::{ConvShape, Slice};

/// One step of a Winograd convolution on the device. Offsets `at` are in elements of the
/// workspace (`Operand::Col`); tile counts are of images `[n0, n0 + nb)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WinoCmd {
    /// The weight slice's `G g G^T` at `at`: `[xi][o][i]`, or with `flipped` the kernel rotated
    /// by 180 degrees, `[xi][i][o]` (the input gradient's weight).
    Weight { at: usize, flipped: bool },
    /// `B^T d B` of the input tiles (4x4 or 6x6) of `src` (`Inp`, or `DOut` for the input gradient; `channels`
    /// rows), `[xi][c][t]` at `at`.
    Input { src: Operand, channels: usize, at: usize, n0: usize, nb: usize },
    /// `A dY A^T` of the output tiles (2x2 or 4x4) of `DOut` (`channels` rows), `[xi][c][t]` at `at`.
    Grad { channels: usize, at: usize, n0: usize, nb: usize },
    /// The 16 or 36 products: `gemm` is the first; operand `j` of product `xi` is `xi * strides[j]`
    /// elements further (strides of a, b, c). `label` says which product it is, as the
    /// lowering's GEMMs are labelled in a profile.
    Products { gemm: RowGemm, strides: [usize; 3], label: &'static str },
    /// `dst` (`Out` or `DInp`, `channels` rows) (+)= `A^T M A` of `M` at `at`.
    Output { dst: Operand, channels: usize, at: usize, n0: usize, nb: usize, accumulate: bool },
    /// `DWeight` = `G^T dU G` of `dU` at `at` (`[xi][o][i]`); zero when no image ran.
    WeightGrad { at: usize, any: bool },
}

fn col(offset: usize, ld: usize, trans: bool) -> View {
    View { operand: Operand::Col, offset, ld, trans }
}

/// `out (+)= conv(inp)` for a 3x3, stride 1, pad 1 layer: `out` holds `os`'s channels and `inp`
/// `is`'s, in slice order, `chunk` images at a time.
pub fn forward(
    p: &ConvShape,
    w: Wino,
    os: Slice,
    is: Slice,
    chunk: usize,
    accumulate: bool,
    mut emit: impl FnMut(WinoCmd),
) {
    let (wo, wi, xi) = (os.width, is.width, w.xi());
    let (th, tw) = w.tiles(p);
    let v = xi * wo * wi;
    emit(WinoCmd::Weight { at: 0, flipped: false });
    for (n0, nb) in chunks(p, chunk) {
        let t = nb * th * tw;
        let m = v + xi * wi * t;
        emit(WinoCmd::Input { src: Operand::Inp, channels: wi, at: v, n0, nb });
        let gemm = RowGemm {
            m: wo,
            n: t,
            k: wi,
            a: col(0, wi, false),
            b: col(v, t, false),
            c: col(m, t, false),
            accumulate: false,
        };
        emit(WinoCmd::Products { gemm, strides: [wo * wi, wi * t, wo * t], label: "gemm: forward" });
        emit(WinoCmd::Output { dst: Operand::Out, channels: wo, at: m, n0, nb, accumulate });
    }
}

/// Gradients of [`forward`]: `DWeight` (the slice's block, overwritten) and, with `d_inp`,
/// `DInp` (overwritten, or added to with `accumulate_d_inp`).
#[allow(clippy::too_many_arguments)]
pub fn backward(
    p: &ConvShape,
    w: Wino,
    os: Slice,
    is: Slice,
    chunk: usize,
    d_inp: bool,
    accumulate_d_inp: bool,
    mut emit: impl FnMut(WinoCmd),
) {
    let (wo, wi, xi) = (os.width, is.width, w.xi());
    let (th, tw) = w.tiles(p);
    let (flipped, du, v) = (0, xi * wo * wi, 2 * xi * wo * wi);
    if d_inp {
        emit(WinoCmd::Weight { at: flipped, flipped: true });
    }
    for (n0, nb) in chunks(p, chunk) {
        let t = nb * th * tw;
        let g = v + xi * wi * t;
        emit(WinoCmd::Input { src: Operand::Inp, channels: wi, at: v, n0, nb });
        emit(WinoCmd::Grad { channels: wo, at: g, n0, nb });
        // dU[xi] (+)= G[xi] V[xi]^T over this chunk's tiles.
        let gemm = RowGemm {
            m: wo,
            n: wi,
            k: t,
            a: col(g, t, false),
            b: col(v, t, true),
            c: col(du, wi, false),
            accumulate: n0 > 0,
        };
        emit(WinoCmd::Products { gemm, strides: [wo * t, wi * t, wo * wi], label: "gemm: weight gradient" });
        if d_inp {
            // d_out's input transform replaces G; the products land where V was.
            emit(WinoCmd::Input { src: Operand::DOut, channels: wo, at: g, n0, nb });
            let gemm = RowGemm {
                m: wi,
                n: t,
                k: wo,
                a: col(flipped, wo, false),
                b: col(g, t, false),
                c: col(v, t, false),
                accumulate: false,
            };
            emit(WinoCmd::Products { gemm, strides: [wi * wo, wo * t, wi * t], label: "gemm: input gradient" });
            emit(WinoCmd::Output { dst: Operand::DInp, channels: wi, at: v, n0, nb, accumulate: accumulate_d_inp });
        }
    }
    emit(WinoCmd::WeightGrad { at: du, any: p.n > 0 });
}

/// The strides of a [`WinoCmd::Products`] batch in cuBLAS's operand order (`[a, b, c]` of
/// [`RowGemm::to_cublas`], whose first operand is the row-major product's `b`).
pub fn cublas_strides(strides: [usize; 3]) -> [usize; 3] {
    [strides[1], strides[0], strides[2]]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::conv2d::lowering::host::{gemm_colmajor, max_abs_diff, naive, Mem};
    use crate::ops::conv2d::winograd::{
        grad_transform, input_transform, output_transform, rows, weight_tile, weight_tile_adjoint, workspace_len,
    };
    use crate::ops::conv2d::winograd_f4 as f4;
    use crate::rng::Rng;

    /// Layer channel of slice position `j`.
    fn channel(s: Slice, j: usize) -> usize {
        (s.start + j) % s.channels
    }

    /// A one-channel transform of images into tiles: `(v, plane, nb, h, w)`.
    type Tiles = Box<dyn Fn(&mut [f32], &[f32], usize, usize, usize)>;
    /// A one-channel transform of tiles into images: `(plane, m, nb, h, w, accumulate)`.
    type Images = Box<dyn Fn(&mut [f32], &[f32], usize, usize, usize, bool)>;
    /// A kernel's transform `(g, flipped)`, and the weight gradient's adjoint of one tile.
    type Kernel = Box<dyn Fn(&[f32], bool) -> Vec<f32>>;
    type Adjoint = Box<dyn Fn(&[f32]) -> [f32; 9]>;

    /// The one-channel transforms of `w` (`[xi][t]` of `t` tiles), as vectors.
    struct Transforms {
        input: Tiles,
        grad: Tiles,
        output: Images,
        weight: Kernel,
        adjoint: Adjoint,
    }

    fn transforms(w: Wino) -> Transforms {
        let t = |v: &[f32], w: Wino| v.len() / w.xi();
        match w {
            Wino::F2 => Transforms {
                input: Box::new(move |v, src, nb, h, wd| input_transform(rows(v, t(v, w)), src, nb, h, wd)),
                grad: Box::new(move |v, src, nb, h, wd| grad_transform(rows(v, t(v, w)), src, nb, h, wd)),
                output: Box::new(move |plane, m, nb, h, wd, acc| {
                    let n = t(m, w);
                    output_transform(plane, |xi| &m[xi * n..][..n], nb, h, wd, acc)
                }),
                weight: Box::new(|g, flip| weight_tile(g, flip).to_vec()),
                adjoint: Box::new(|du| weight_tile_adjoint(&du.try_into().expect("16 values"))),
            },
            Wino::F4 => Transforms {
                input: Box::new(move |v, src, nb, h, wd| f4::input_transform(rows(v, t(v, w)), src, nb, h, wd)),
                grad: Box::new(move |v, src, nb, h, wd| f4::grad_transform(rows(v, t(v, w)), src, nb, h, wd)),
                output: Box::new(move |plane, m, nb, h, wd, acc| {
                    let n = t(m, w);
                    f4::output_transform(plane, &std::array::from_fn(|xi| &m[xi * n..][..n]), nb, h, wd, acc)
                }),
                weight: Box::new(|g, flip| {
                    let taps: [[f32; 1]; 9] = std::array::from_fn(|k| [g[if flip { 8 - k } else { k }]]);
                    let mut u = [[0f32; 1]; f4::XI];
                    f4::weight_tiles(&taps, &mut u);
                    u.iter().map(|v| v[0]).collect()
                }),
                adjoint: Box::new(|du| {
                    let du: [[f32; 1]; f4::XI] = std::array::from_fn(|xi| [du[xi]]);
                    let mut g = [[0f32; 1]; 9];
                    f4::weight_tiles_adjoint(&du, &mut g);
                    g.map(|v| v[0])
                }),
            },
        }
    }

    /// Runs one command the way `cuda.rs` and `winograd.cu` do, with the CPU's transforms of one
    /// channel (`[xi][t]`) scattered into (or gathered from) the `[xi][c][t]` layout.
    fn run(m: &mut Mem, cmd: WinoCmd, p: &ConvShape, w: Wino, os: Slice, is: Slice) {
        let (th, tw) = w.tiles(p);
        let (hw, xis, f) = (p.h * p.w, w.xi(), transforms(w));
        type One<'a> = &'a dyn Fn(&mut [f32], &[f32], usize, usize, usize);
        let transform = |m: &mut Mem, src: Operand, channels: usize, at: usize, n0: usize, nb: usize, f: One| {
            let t = nb * th * tw;
            let mut one = vec![0f32; xis * t];
            for c in 0..channels {
                f(&mut one, &m.get(src)[(c * p.n + n0) * hw..][..nb * hw], nb, p.h, p.w);
                for xi in 0..xis {
                    m.col[at + (xi * channels + c) * t..][..t].copy_from_slice(&one[xi * t..][..t]);
                }
            }
        };
        match cmd {
            WinoCmd::Weight { at, flipped } => {
                let (wo, wi) = (os.width, is.width);
                for o in 0..wo {
                    for i in 0..wi {
                        let (co, ci) = (channel(os, o), channel(is, i));
                        let u = (f.weight)(&m.weight[(co * p.cin + ci) * 9..][..9], flipped);
                        let at = at + if flipped { i * wo + o } else { o * wi + i };
                        for (xi, v) in u.into_iter().enumerate() {
                            m.col[at + xi * wo * wi] = v;
                        }
                    }
                }
            }
            WinoCmd::Input { src, channels, at, n0, nb } => transform(m, src, channels, at, n0, nb, &f.input),
            WinoCmd::Grad { channels, at, n0, nb } => transform(m, Operand::DOut, channels, at, n0, nb, &f.grad),
            WinoCmd::Products { gemm, strides, .. } => {
                for xi in 0..xis {
                    let mut g = gemm;
                    g.a.offset += xi * strides[0];
                    g.b.offset += xi * strides[1];
                    g.c.offset += xi * strides[2];
                    let cb = g.to_cublas();
                    assert_eq!([cb.a.1, cb.b.1, cb.c.1], {
                        let c0 = gemm.to_cublas();
                        let s = cublas_strides(strides);
                        [c0.a.1 + xi * s[0], c0.b.1 + xi * s[1], c0.c.1 + xi * s[2]]
                    });
                    let operands = m.col.clone();
                    gemm_colmajor(&cb, &operands, &operands, &mut m.col);
                }
            }
            WinoCmd::Output { dst, channels, at, n0, nb, accumulate } => {
                let t = nb * th * tw;
                let mut out = std::mem::take(m.get_mut(dst));
                let mut one = vec![0f32; xis * t];
                for c in 0..channels {
                    for xi in 0..xis {
                        one[xi * t..][..t].copy_from_slice(&m.col[at + (xi * channels + c) * t..][..t]);
                    }
                    (f.output)(&mut out[(c * p.n + n0) * hw..][..nb * hw], &one, nb, p.h, p.w, accumulate);
                }
                *m.get_mut(dst) = out;
            }
            WinoCmd::WeightGrad { at, any } => {
                let plane = os.width * is.width;
                for x in 0..plane {
                    let du: Vec<f32> = (0..xis).map(|xi| if any { m.col[at + xi * plane + x] } else { 0.0 }).collect();
                    m.d_weight[x * 9..][..9].copy_from_slice(&(f.adjoint)(&du));
                }
            }
        }
    }

    fn randn(rng: &mut Rng, len: usize) -> Vec<f32> {
        (0..len).map(|_| rng.normal()).collect()
    }

    /// Odd and even images, a 1x1 image (one tile, all but one tap in the padding), and
    /// output slices wider and narrower than the input.
    fn cases() -> Vec<(ConvShape, Slice, Slice)> {
        let base = ConvShape { n: 3, cin: 5, h: 7, w: 6, cout: 7, k: 3, stride: 1, pad: 1 };
        let mut v = vec![];
        let more = [(8, 8), (1, 1), (5, 11), (2, 261)].map(|(h, w)| ConvShape { h, w, ..base });
        for p in [base].into_iter().chain(more) {
            let (fo, fi) = (Slice::full(p.cout), Slice::full(p.cin));
            v.extend([
                (p, fo, fi),
                (p, Slice::new(5, 4, p.cout), fi),
                (p, fo, Slice::new(4, 3, p.cin)),
                (p, Slice::new(6, 3, p.cout), Slice::new(3, 4, p.cin)),
            ]);
        }
        v
    }

    fn setup(rng: &mut Rng, p: &ConvShape, w: Wino, os: Slice, is: Slice, chunk: usize) -> Mem {
        let hw = p.h * p.w;
        Mem {
            weight: randn(rng, p.cout * p.cin * 9),
            inp: randn(rng, is.width * p.n * hw),
            out: randn(rng, os.width * p.n * hw),
            col: vec![f32::NAN; workspace_len(p, is.width, p.chunk_images(chunk), w)],
            d_out: randn(rng, os.width * p.n * hw),
            d_inp: randn(rng, is.width * p.n * hw),
            d_weight: vec![f32::NAN; os.width * is.width * 9],
        }
    }

    /// The forward commands of both algorithms, in chunks of 1, 2 and all 3 images, overwriting
    /// and accumulating, compute the sliced convolution within the workspace the plan gives
    /// them: one weight transform, then per chunk one input transform, one batch of products,
    /// one output transform. Images narrower than a tile, not a multiple of it and wider than a
    /// block of tiles are among them.
    #[test]
    fn forward_commands_compute_the_sliced_convolution() {
        let mut rng = Rng::new(11, 0);
        for ((p, os, is), w) in cases().into_iter().flat_map(|c| [(c, Wino::F2), (c, Wino::F4)]) {
            for chunk in [1, 2, 0] {
                for accumulate in [false, true] {
                    let mut m = setup(&mut rng, &p, w, os, is, chunk);
                    let before = m.out.clone();
                    let mut want = naive(&m, &p, os, is).0;
                    if accumulate {
                        want.iter_mut().zip(&before).for_each(|(w, b)| *w += b);
                    }
                    let mut cmds = vec![];
                    forward(&p, w, os, is, chunk, accumulate, |c| cmds.push(c));
                    let chunks = p.n.div_ceil(p.chunk_images(chunk));
                    assert_eq!(cmds.len(), 1 + 3 * chunks);
                    assert!(matches!(cmds[0], WinoCmd::Weight { flipped: false, .. }));
                    for c in cmds {
                        run(&mut m, c, &p, w, os, is);
                    }
                    let err = max_abs_diff(&m.out, &want);
                    assert!(err < 1e-4, "{w:?} {p:?} {os:?} {is:?} chunk {chunk}: {err}");
                }
            }
        }
    }

    /// The backward commands give the direct weight gradient and (when asked, overwriting or
    /// accumulating) input gradient; without `d_inp` the input gradient is untouched and no
    /// flipped weight is made.
    #[test]
    fn backward_commands_compute_the_sliced_gradients() {
        let mut rng = Rng::new(12, 0);
        for ((p, os, is), w) in cases().into_iter().flat_map(|c| [(c, Wino::F2), (c, Wino::F4)]) {
            for chunk in [1, 2, 0] {
                for (d_inp, acc) in [(true, false), (true, true), (false, false)] {
                    let mut m = setup(&mut rng, &p, w, os, is, chunk);
                    let before = m.d_inp.clone();
                    let (_, mut want_dx, want_dw) = naive(&m, &p, os, is);
                    if acc {
                        want_dx.iter_mut().zip(&before).for_each(|(w, b)| *w += b);
                    }
                    let mut cmds = vec![];
                    backward(&p, w, os, is, chunk, d_inp, acc, |c| cmds.push(c));
                    let flips = cmds.iter().filter(|c| matches!(c, WinoCmd::Weight { flipped: true, .. })).count();
                    assert_eq!(flips, d_inp as usize);
                    for c in cmds {
                        run(&mut m, c, &p, w, os, is);
                    }
                    let what = format!("{w:?} {p:?} {os:?} {is:?} chunk {chunk} acc {acc}");
                    let err = max_abs_diff(&m.d_weight, &want_dw);
                    assert!(err < 1e-4, "d_weight {what}: {err}");
                    if d_inp {
                        let err = max_abs_diff(&m.d_inp, &want_dx);
                        assert!(err < 1e-4, "d_inp {what}: {err}");
                    } else {
                        assert_eq!(m.d_inp, before, "d_inp untouched {what}");
                    }
                }
            }
        }
    }

    /// With no images the weight gradient is zero, not whatever the workspace held.
    #[test]
    fn an_empty_batch_has_a_zero_weight_gradient() {
        let p = ConvShape { n: 0, cin: 5, h: 4, w: 4, cout: 6, k: 3, stride: 1, pad: 1 };
        let (os, is) = (Slice::full(6), Slice::full(5));
        for w in [Wino::F2, Wino::F4] {
            let mut m = setup(&mut Rng::new(13, 0), &p, w, os, is, 0);
            m.col.fill(f32::NAN);
            let mut cmds = vec![];
            backward(&p, w, os, is, 0, true, false, |c| cmds.push(c));
            assert_eq!(cmds.len(), 2, "{cmds:?}");
            for c in cmds {
                run(&mut m, c, &p, w, os, is);
            }
            assert!(m.d_weight.iter().all(|&v| v == 0.0), "{w:?}");
        }
    }
}
