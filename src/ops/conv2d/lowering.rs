//! The one lowering of a (sliced) convolution into commands: im2col of a chunk of images, a
//! GEMM on offset, strided views, col2im. Both backends run it: the CPU with its own im2col,
//! col2im and GEMM (`cpu.rs`; Winograd is a walk of its own, `winograd_cmds.rs`), the GPU with
//! kernels and cuBLAS (`cuda.rs`). The tests here run the very commands through the CPU's im2col and col2im and a
//! column-major GEMM that follows cuBLAS's conventions, against a naive convolution, so the
//! whole mapping (slices as offset views with the full leading dimension, wrapping slices as two
//! GEMMs, chunks, the row-major -> column-major swap) is tested on a machine without a GPU.
//!
//! Weights are row-major `[cout, cin*k*k]` (OIHW); activations channel-major `(C, N, H, W)`,
//! so a convolution over images `[n0, n0+nc)` is `Y[:, n0*HoWo..] = W * col` with `Y`'s leading
//! dimension `N*Ho*Wo`. An output-channel run is a row range of `W`; an input-channel run is
//! the column range `[ch*kk, (ch+len)*kk)` of `W` with the full leading dimension `cin*kk`.

use crate::ir::{ConvShape, Layout, Slice};

/// The memory a GEMM operand lives in; the backend turns it into a device pointer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operand {
    Weight,
    Inp,
    Out,
    Col,
    DOut,
    DInp,
    DWeight,
}

/// A row-major matrix view: element `(r, c)` at `offset + r*ld + c` of `operand`. With
/// `trans`, the GEMM uses the transpose of the stored matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct View {
    pub operand: Operand,
    pub offset: usize,
    pub ld: usize,
    pub trans: bool,
}

/// Row-major `C[m, n] = op(A)[m, k] * op(B)[k, n] + beta * C`, `beta` 0 or 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowGemm {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: View,
    pub b: View,
    pub c: View,
    pub accumulate: bool,
}

/// The arguments of one column-major `cublasGemmEx`: `C = op(A) op(B) + beta C` with
/// `C` `m x n`, in BLAS's own terms (offsets are in elements of the named operand).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CublasGemm {
    pub transa: bool,
    pub transb: bool,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: (Operand, usize),
    pub lda: usize,
    pub b: (Operand, usize),
    pub ldb: usize,
    pub c: (Operand, usize),
    pub ldc: usize,
    pub beta: f32,
}

impl RowGemm {
    /// cuBLAS is column-major: a row-major `[r, c]` matrix with row stride `ld` is a
    /// column-major `[c, r]` matrix with leading dimension `ld`, i.e. its transpose. So
    /// `C = op(A) op(B)` is computed as `C^T = op(B)^T op(A)^T`: B first, A second, dimensions
    /// `(n, m, k)`, and each operand keeps its own transpose flag.
    pub fn to_cublas(&self) -> CublasGemm {
        CublasGemm {
            transa: self.b.trans,
            transb: self.a.trans,
            m: self.n,
            n: self.m,
            k: self.k,
            a: (self.b.operand, self.b.offset),
            lda: self.b.ld,
            b: (self.a.operand, self.a.offset),
            ldb: self.a.ld,
            c: (self.c.operand, self.c.offset),
            ldc: self.c.ld,
            beta: if self.accumulate { 1.0 } else { 0.0 },
        }
    }
}

/// One step of a convolution on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvCmd {
    /// `Col` = im2col of images `[n0, n0+nc)` of `src`, all of its `channels` channels: `Inp`
    /// (the input's width), or `DOut` (the output's width) for an input gradient by convolution.
    Im2col {
        src: Operand,
        channels: usize,
        n0: usize,
        nc: usize,
    },
    Gemm(RowGemm),
    /// `DInp` images `[n0, n0+nc)` (+)= col2im of `Col`.
    Col2im {
        n0: usize,
        nc: usize,
        accumulate: bool,
    },
}

impl View {
    /// The CPU layout of `op(X)` as a `rows x cols` matrix.
    pub fn layout(&self, rows: usize, cols: usize) -> Layout {
        if self.trans {
            Layout::matrix(self.offset, cols, rows, self.ld, 1).transpose(0, 1)
        } else {
            Layout::matrix(self.offset, rows, cols, self.ld, 1)
        }
    }
}

fn view(operand: Operand, offset: usize, ld: usize) -> View {
    View { operand, offset, ld, trans: false }
}

fn transposed(operand: Operand, offset: usize, ld: usize) -> View {
    View { operand, offset, ld, trans: true }
}

/// Image chunks `(n0, nc)`; a direct (1x1, stride 1, unpadded) convolution needs no columns,
/// so it runs as one chunk over the whole batch.
pub(super) fn chunks(p: &ConvShape, chunk: usize) -> impl Iterator<Item = (usize, usize)> {
    let step = if p.direct() { p.n } else { p.chunk_images(chunk) };
    let n = p.n;
    (0..n).step_by(step.max(1)).map(move |n0| (n0, step.min(n - n0)))
}

/// Where the columns of a chunk are read from: `Col` (after im2col), or `Inp` itself for a
/// direct convolution. Returns (operand, offset of buffer row 0, leading dimension).
fn columns(p: &ConvShape, n0: usize, nc: usize) -> (Operand, usize, usize) {
    let hw = p.ho() * p.wo();
    if p.direct() {
        (Operand::Inp, n0 * hw, p.n * hw)
    } else {
        (Operand::Col, 0, nc * hw)
    }
}

/// Forward: `out (+)= conv(inp)` with `out` holding `out_slice`'s channels and `inp`
/// `in_slice`'s, both in slice order. One GEMM per (output run, input run) per chunk; the
/// second input run accumulates onto the first.
pub fn conv_forward(
    p: &ConvShape,
    out_slice: Slice,
    in_slice: Slice,
    chunk: usize,
    accumulate: bool,
    mut emit: impl FnMut(ConvCmd),
) {
    let (kk, hw) = (p.kk(), p.ho() * p.wo());
    let (ldw, ldy) = (p.cin * kk, p.n * hw);
    for (n0, nc) in chunks(p, chunk) {
        if !p.direct() {
            emit(ConvCmd::Im2col { src: Operand::Inp, channels: in_slice.width, n0, nc });
        }
        let (src, base, ldb) = columns(p, n0, nc);
        for ro in out_slice.each_run() {
            for (j, ri) in in_slice.each_run().enumerate() {
                emit(ConvCmd::Gemm(RowGemm {
                    m: ro.len,
                    n: nc * hw,
                    k: ri.len * kk,
                    a: view(Operand::Weight, ro.channel * ldw + ri.channel * kk, ldw),
                    b: view(src, base + ri.at * kk * ldb, ldb),
                    c: view(Operand::Out, ro.at * ldy + n0 * hw, ldy),
                    accumulate: accumulate || j > 0,
                }));
            }
        }
    }
}

/// Whether the input gradient of `p` may be computed as a convolution of `d_out` with the
/// flipped weight ([`conv_backward`]'s `by_conv`): stride 1, an odd kernel wider than 1 with
/// "same" padding (so `Ho = H`), and an output no wider than the input, so that the im2col of
/// `d_out` fits the workspace sized for the input's.
pub fn input_grad_by_conv_fits(p: &ConvShape, out_width: usize, in_width: usize) -> bool {
    p.stride == 1 && p.k > 1 && 2 * p.pad + 1 == p.k && out_width <= in_width
}

/// Backward: `d_weight = d_out * col^T` (sliced shape `[ow, iw*kk]`, overwritten) and, when
/// `d_inp` is wanted, `d_inp (+)= col2im(W^T d_out)`. Per chunk the column buffer first holds
/// im2col(inp) for the weight gradient, then the input gradient's columns.
///
/// With `by_conv` (a dense convolution, full slices, that [`input_grad_by_conv_fits`]) the
/// input gradient is instead the convolution of `d_out` with `W'[cin, cout*kk]`,
/// `W'[ci][co*kk + t] = W[co][ci*kk + kk-1-t]` (the transposed weight with its taps reversed,
/// [`copy_weight_flipped`](super::copy_weight_flipped)), under the same padding: per
/// chunk, im2col of `d_out` into the workspace, then one GEMM `d_inp (+)= W' * col` straight
/// into `d_inp`. The `Weight` operand is then `W'`, which only that GEMM reads.
#[allow(clippy::too_many_arguments)]
pub fn conv_backward(
    p: &ConvShape,
    out_slice: Slice,
    in_slice: Slice,
    chunk: usize,
    d_inp: bool,
    accumulate_d_inp: bool,
    by_conv: bool,
    mut emit: impl FnMut(ConvCmd),
) {
    let (kk, hw) = (p.kk(), p.ho() * p.wo());
    let (ldw, ldy, lddw) = (p.cin * kk, p.n * hw, in_slice.width * kk);
    if by_conv {
        assert!(
            out_slice == Slice::full(p.cout) && in_slice == Slice::full(p.cin),
            "conv backward by convolution runs the dense twin: full slices"
        );
        assert!(input_grad_by_conv_fits(p, p.cout, p.cin), "no input gradient by convolution for {p:?}");
    }
    for (ci, (n0, nc)) in chunks(p, chunk).enumerate() {
        if !p.direct() {
            emit(ConvCmd::Im2col { src: Operand::Inp, channels: in_slice.width, n0, nc });
        }
        let (src, base, ldb) = columns(p, n0, nc);
        for ro in out_slice.each_run() {
            for ri in in_slice.each_run() {
                emit(ConvCmd::Gemm(RowGemm {
                    m: ro.len,
                    n: ri.len * kk,
                    k: nc * hw,
                    a: view(Operand::DOut, ro.at * ldy + n0 * hw, ldy),
                    b: transposed(src, base + ri.at * kk * ldb, ldb),
                    c: view(Operand::DWeight, ro.at * lddw + ri.at * kk, lddw),
                    accumulate: ci > 0,
                }));
            }
        }
        if !d_inp {
            continue;
        }
        if by_conv {
            emit(ConvCmd::Im2col { src: Operand::DOut, channels: p.cout, n0, nc });
            emit(ConvCmd::Gemm(RowGemm {
                m: p.cin,
                n: nc * hw,
                k: p.cout * kk,
                a: view(Operand::Weight, 0, p.cout * kk),
                b: view(Operand::Col, 0, nc * hw),
                c: view(Operand::DInp, n0 * hw, ldy),
                accumulate: accumulate_d_inp,
            }));
            continue;
        }
        // Direct: the input gradient is written in place of the columns.
        let (dst, dbase, lddst, acc0) = if p.direct() {
            (Operand::DInp, n0 * hw, ldy, accumulate_d_inp)
        } else {
            (Operand::Col, 0, nc * hw, false)
        };
        for ri in in_slice.each_run() {
            for (j, ro) in out_slice.each_run().enumerate() {
                emit(ConvCmd::Gemm(RowGemm {
                    m: ri.len * kk,
                    n: nc * hw,
                    k: ro.len,
                    a: transposed(Operand::Weight, ro.channel * ldw + ri.channel * kk, ldw),
                    b: view(Operand::DOut, ro.at * ldy + n0 * hw, ldy),
                    c: view(dst, dbase + ri.at * kk * lddst, lddst),
                    accumulate: acc0 || j > 0,
                }));
            }
        }
        if !p.direct() {
            emit(ConvCmd::Col2im { n0, nc, accumulate: accumulate_d_inp });
        }
    }
}

/// The host memory behind the operands and a column-major GEMM with cuBLAS's conventions: the
/// tests run the command lists (these, and `winograd_cmds`'s) through them.
#[cfg(test)]
pub(crate) mod host {
    use super::*;

    /// The host memory behind each operand.
    #[derive(Default, Clone)]
    pub struct Mem {
        pub weight: Vec<f32>,
        pub inp: Vec<f32>,
        pub out: Vec<f32>,
        pub col: Vec<f32>,
        pub d_out: Vec<f32>,
        pub d_inp: Vec<f32>,
        pub d_weight: Vec<f32>,
    }

    impl Mem {
        pub fn get(&self, o: Operand) -> &[f32] {
            match o {
                Operand::Weight => &self.weight,
                Operand::Inp => &self.inp,
                Operand::Out => &self.out,
                Operand::Col => &self.col,
                Operand::DOut => &self.d_out,
                Operand::DInp => &self.d_inp,
                Operand::DWeight => &self.d_weight,
            }
        }
        pub fn get_mut(&mut self, o: Operand) -> &mut Vec<f32> {
            match o {
                Operand::Weight => &mut self.weight,
                Operand::Inp => &mut self.inp,
                Operand::Out => &mut self.out,
                Operand::Col => &mut self.col,
                Operand::DOut => &mut self.d_out,
                Operand::DInp => &mut self.d_inp,
                Operand::DWeight => &mut self.d_weight,
            }
        }
    }

    /// The sliced convolution through its dense twin: the slice's weight gathered, then the
    /// direct f64 convolution of the conv tests. Returns `(out, d_inp, d_weight)`.
    pub fn naive(m: &Mem, p: &ConvShape, os: Slice, is: Slice) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        use crate::ops::conv2d::tests::{dense_shape, gather_weight, reference_backward, reference_forward};
        let (wt, dense) = (gather_weight(&m.weight, p, &os, &is), dense_shape(p, &os, &is));
        let f = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect();
        let (dx, dw) = reference_backward(&m.d_out, &m.inp, &wt, &dense);
        (f(reference_forward(&m.inp, &wt, &dense)), f(dx), f(dw))
    }

    /// The largest difference, NaN when any element differs by NaN (`f32::max` would drop it).
    pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, |m, d| {
            if m.is_nan() || d.is_nan() {
                f32::NAN
            } else {
                m.max(d)
            }
        })
    }

    /// Column-major BLAS semantics: `A` is `lda`-strided columns, op by the flags.
    pub fn gemm_colmajor(g: &CublasGemm, a: &[f32], b: &[f32], c: &mut [f32]) {
        let at = |i: usize, l: usize| {
            // op(A)(i, l)
            if g.transa {
                a[g.a.1 + i * g.lda + l]
            } else {
                a[g.a.1 + l * g.lda + i]
            }
        };
        let bt = |l: usize, j: usize| {
            if g.transb {
                b[g.b.1 + l * g.ldb + j]
            } else {
                b[g.b.1 + j * g.ldb + l]
            }
        };
        for j in 0..g.n {
            for i in 0..g.m {
                let s: f64 = (0..g.k).map(|l| at(i, l) as f64 * bt(l, j) as f64).sum();
                let dst = &mut c[g.c.1 + j * g.ldc + i];
                // As BLAS: with beta 0, C is not read (NaN there does not propagate).
                let old = if g.beta == 0.0 { 0.0 } else { g.beta as f64 * *dst as f64 };
                *dst = (s + old) as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::host::*;
    use super::*;
    use crate::ops::conv2d::{col2im, im2col};
    use crate::rng::Rng;

    impl Mem {
        /// Runs one command the way the backend does.
        fn run(&mut self, cmd: ConvCmd, p: &ConvShape, in_width: usize) {
            match cmd {
                ConvCmd::Im2col { src, channels, n0, nc } => {
                    let mut col = std::mem::take(&mut self.col);
                    im2col(&mut col, self.get(src), p, channels, n0, nc);
                    self.col = col;
                }
                ConvCmd::Col2im { n0, nc, accumulate } => {
                    let mut d = std::mem::take(&mut self.d_inp);
                    col2im(&mut d, &self.col, p, in_width, n0, nc, accumulate);
                    self.d_inp = d;
                }
                ConvCmd::Gemm(g) => {
                    let cb = g.to_cublas();
                    // The output operand never doubles as an input of the same GEMM.
                    assert!(cb.c.0 != cb.a.0 && cb.c.0 != cb.b.0);
                    let mut c = std::mem::take(self.get_mut(cb.c.0));
                    gemm_colmajor(&cb, self.get(cb.a.0), self.get(cb.b.0), &mut c);
                    *self.get_mut(cb.c.0) = c;
                }
            }
        }
    }

    fn randn(rng: &mut Rng, len: usize) -> Vec<f32> {
        (0..len).map(|_| rng.normal()).collect()
    }

    fn shapes() -> Vec<ConvShape> {
        let base = ConvShape { n: 3, cin: 5, h: 7, w: 7, cout: 7, k: 3, stride: 1, pad: 1 };
        vec![
            base,
            ConvShape { stride: 2, ..base },
            ConvShape { k: 1, pad: 0, ..base },
            ConvShape { k: 1, pad: 0, stride: 2, ..base },
        ]
    }

    /// (out slice, in slice) cases: full, output slice, wrapping output slice, input slice,
    /// wrapping input slice, both.
    fn slices(p: &ConvShape) -> Vec<(Slice, Slice)> {
        let (fo, fi) = (Slice::full(p.cout), Slice::full(p.cin));
        vec![
            (fo, fi),
            (Slice::new(2, 4, p.cout), fi),
            (Slice::new(5, 4, p.cout), fi),
            (fo, Slice::new(1, 3, p.cin)),
            (fo, Slice::new(4, 3, p.cin)),
            (Slice::new(6, 3, p.cout), Slice::new(3, 4, p.cin)),
        ]
    }

    fn setup(rng: &mut Rng, p: &ConvShape, os: Slice, is: Slice, chunk: usize) -> Mem {
        let hw = p.ho() * p.wo();
        Mem {
            weight: randn(rng, p.cout * p.cin * p.kk()),
            inp: randn(rng, is.width * p.n * p.h * p.w),
            out: randn(rng, os.width * p.n * hw),
            col: vec![f32::NAN; p.im2col_len(is.width, chunk)],
            d_out: randn(rng, os.width * p.n * hw),
            d_inp: randn(rng, is.width * p.n * p.h * p.w),
            d_weight: vec![f32::NAN; os.width * is.width * p.kk()],
        }
    }

    #[test]
    fn to_cublas_swaps_operands_for_column_major() {
        let g = RowGemm {
            m: 2,
            n: 3,
            k: 4,
            a: transposed(Operand::Weight, 5, 9),
            b: view(Operand::Col, 7, 11),
            c: view(Operand::Out, 1, 13),
            accumulate: true,
        };
        let c = g.to_cublas();
        assert_eq!((c.m, c.n, c.k), (3, 2, 4));
        assert_eq!((c.transa, c.transb), (false, true));
        assert_eq!((c.a, c.lda), ((Operand::Col, 7), 11));
        assert_eq!((c.b, c.ldb), ((Operand::Weight, 5), 9));
        assert_eq!((c.c, c.ldc, c.beta), ((Operand::Out, 1), 13, 1.0));
    }

    /// A tiny row-major product with every transpose combination, through the column-major
    /// interpretation, against the definition.
    #[test]
    fn row_major_gemm_through_column_major_matches_definition() {
        let mut rng = Rng::new(1, 0);
        let (m, n, k) = (3, 4, 5);
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            // A stored [m, k] (or [k, m] when transposed) inside a wider matrix (ld + 2).
            let (ar, ac) = if ta { (k, m) } else { (m, k) };
            let (br, bc) = if tb { (n, k) } else { (k, n) };
            let (lda, ldb, ldc) = (ac + 2, bc + 1, n + 3);
            let a = randn(&mut rng, 1 + ar * lda);
            let b = randn(&mut rng, 2 + br * ldb);
            let mut c = randn(&mut rng, 3 + m * ldc);
            let c0 = c.clone();
            let g = RowGemm {
                m,
                n,
                k,
                a: View { operand: Operand::Weight, offset: 1, ld: lda, trans: ta },
                b: View { operand: Operand::Col, offset: 2, ld: ldb, trans: tb },
                c: view(Operand::Out, 3, ldc),
                accumulate: true,
            };
            // cuBLAS's first operand is the row-major B (operand Col here), its second A.
            let cb = g.to_cublas();
            assert_eq!((cb.a.0, cb.b.0), (Operand::Col, Operand::Weight));
            gemm_colmajor(&cb, &b, &a, &mut c);
            for i in 0..m {
                for j in 0..n {
                    let mut s = c0[3 + i * ldc + j] as f64;
                    for l in 0..k {
                        let av = if ta { a[1 + l * lda + i] } else { a[1 + i * lda + l] };
                        let bv = if tb { b[2 + j * ldb + l] } else { b[2 + l * ldb + j] };
                        s += av as f64 * bv as f64;
                    }
                    assert!((c[3 + i * ldc + j] as f64 - s).abs() < 1e-5, "{ta} {tb}");
                }
            }
            // Padding columns of C are untouched.
            for i in 0..m {
                for j in n..ldc.min(c.len() - 3 - i * ldc) {
                    assert_eq!(c[3 + i * ldc + j], c0[3 + i * ldc + j]);
                }
            }
        }
    }

    #[test]
    fn forward_commands_compute_the_sliced_convolution() {
        let mut rng = Rng::new(2, 0);
        for p in shapes() {
            for (os, is) in slices(&p) {
                for chunk in [1, 2, 3] {
                    for accumulate in [false, true] {
                        let mut m = setup(&mut rng, &p, os, is, chunk);
                        let before = m.out.clone();
                        let mut want = naive(&m, &p, os, is).0;
                        if accumulate {
                            want.iter_mut().zip(&before).for_each(|(w, b)| *w += b);
                        }
                        let mut cmds = vec![];
                        conv_forward(&p, os, is, chunk, accumulate, |c| cmds.push(c));
                        let gemms = cmds.iter().filter(|c| matches!(c, ConvCmd::Gemm(_)));
                        let chunks = if p.direct() { 1 } else { p.n.div_ceil(chunk) };
                        let runs = os.each_run().count() * is.each_run().count();
                        assert_eq!(gemms.count(), chunks * runs, "{p:?} {os:?} {is:?}");
                        for c in cmds {
                            m.run(c, &p, is.width);
                        }
                        let err = max_abs_diff(&m.out, &want);
                        assert!(err < 1e-4, "{p:?} {os:?} {is:?} chunk {chunk}: {err}");
                    }
                }
            }
        }
    }

    #[test]
    fn backward_commands_compute_the_sliced_gradients() {
        let mut rng = Rng::new(3, 0);
        for p in shapes() {
            for (os, is) in slices(&p) {
                for chunk in [1, 2, 3] {
                    for (d_inp, acc) in [(true, false), (true, true), (false, false)] {
                        let mut m = setup(&mut rng, &p, os, is, chunk);
                        let before = m.d_inp.clone();
                        let (_, mut want_dx, want_dw) = naive(&m, &p, os, is);
                        if acc {
                            want_dx.iter_mut().zip(&before).for_each(|(w, b)| *w += b);
                        }
                        let mut cmds = vec![];
                        conv_backward(&p, os, is, chunk, d_inp, acc, false, |c| cmds.push(c));
                        for c in cmds {
                            m.run(c, &p, is.width);
                        }
                        let what = format!("{p:?} {os:?} {is:?} chunk {chunk} acc {acc}");
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
    }

    /// Stride-1 "same" layers whose output is no wider than their input (h != w, so a swapped
    /// axis shows), k = 3 and k = 5, and sliced, wrapping pairs of slices of them.
    fn by_conv_cases() -> Vec<(ConvShape, Slice, Slice)> {
        let k3 = ConvShape { n: 3, cin: 7, h: 7, w: 6, cout: 5, k: 3, stride: 1, pad: 1 };
        let k5 = ConvShape { k: 5, pad: 2, h: 6, w: 8, ..k3 };
        let square = ConvShape { cout: 7, ..k3 };
        let mut v = vec![];
        for p in [k3, k5, square] {
            let (fo, fi) = (Slice::full(p.cout), Slice::full(p.cin));
            v.extend([
                (p, fo, fi),
                (p, Slice::new(p.cout - 2, 4, p.cout), fi),
                (p, Slice::new(1, 3, p.cout), Slice::new(5, 4, p.cin)),
                (p, Slice::new(p.cout - 1, 5, p.cout), Slice::new(p.cin - 2, 5, p.cin)),
            ]);
        }
        v
    }

    /// The input gradient as a convolution of `d_out` with the flipped weight: the sliced
    /// layer's weight copied out flipped (`copy_weight_flipped`), its dense twin lowered with
    /// `by_conv`, against the direct f64 gradients and against the col2im lowering of the same
    /// sliced layer from the same memory, for chunks of 1, 2 and 3 images, overwriting and
    /// accumulating. The columns hold the input's im2col, so the workspace is the usual one.
    #[test]
    fn input_gradient_by_convolution_matches_col2im_and_the_direct_gradient() {
        use crate::ops::conv2d::{copy_weight_flipped, dense_twin};
        let mut rng = Rng::new(4, 0);
        for (p, os, is) in by_conv_cases() {
            assert!(input_grad_by_conv_fits(&p, os.width, is.width));
            for chunk in [1, 2, 3] {
                for acc in [false, true] {
                    let mut m = setup(&mut rng, &p, os, is, chunk);
                    let before = m.d_inp.clone();
                    let (_, mut want_dx, want_dw) = naive(&m, &p, os, is);
                    if acc {
                        want_dx.iter_mut().zip(&before).for_each(|(w, b)| *w += b);
                    }
                    let mut by_col2im = m.clone();
                    let mut cmds = vec![];
                    conv_backward(&p, os, is, chunk, true, acc, false, |c| cmds.push(c));
                    cmds.into_iter().for_each(|c| by_col2im.run(c, &p, is.width));
                    let mut flipped = vec![f32::NAN; is.width * os.width * p.kk()];
                    copy_weight_flipped(&mut flipped, &m.weight, &p, os, is);
                    m.weight = flipped;
                    let (dense, fo, fi) = dense_twin(&p, os, is);
                    let mut cmds = vec![];
                    conv_backward(&dense, fo, fi, chunk, true, acc, true, |c| cmds.push(c));
                    assert!(!cmds.iter().any(|c| matches!(c, ConvCmd::Col2im { .. })), "no col2im");
                    cmds.into_iter().for_each(|c| m.run(c, &dense, is.width));
                    let what = format!("{p:?} {os:?} {is:?} chunk {chunk} acc {acc}");
                    for (name, got, want) in [
                        ("d_inp vs direct", &m.d_inp, &want_dx),
                        ("d_inp vs col2im", &m.d_inp, &by_col2im.d_inp),
                        ("d_weight vs direct", &m.d_weight, &want_dw),
                    ] {
                        let err = max_abs_diff(got, want);
                        assert!(err < 1e-4, "{name} {what}: {err}");
                    }
                    // The weight gradient's products are the col2im path's, command for command.
                    assert_eq!(m.d_weight, by_col2im.d_weight, "{what}");
                }
            }
        }
    }

    /// Per chunk: im2col of the input, the weight gradient's GEMM, im2col of `d_out` (its
    /// channels), then one GEMM `d_inp[cin, nc*hw] (+)= W'[cin, cout*kk] * col` with `d_inp`'s
    /// full leading dimension, and no col2im anywhere.
    #[test]
    fn input_gradient_by_convolution_is_one_forward_shaped_gemm_per_chunk() {
        let p = ConvShape { n: 5, cin: 6, h: 4, w: 3, cout: 4, k: 3, stride: 1, pad: 1 };
        let mut cmds = vec![];
        conv_backward(&p, Slice::full(4), Slice::full(6), 2, true, true, true, |c| cmds.push(c));
        let hw = 12;
        let mut want = vec![];
        for (n0, nc) in [(0, 2), (2, 2), (4, 1)] {
            want.push(ConvCmd::Im2col { src: Operand::Inp, channels: 6, n0, nc });
            want.push(ConvCmd::Gemm(RowGemm {
                m: 4,
                n: 6 * 9,
                k: nc * hw,
                a: view(Operand::DOut, n0 * hw, 5 * hw),
                b: transposed(Operand::Col, 0, nc * hw),
                c: view(Operand::DWeight, 0, 6 * 9),
                accumulate: n0 > 0,
            }));
            want.push(ConvCmd::Im2col { src: Operand::DOut, channels: 4, n0, nc });
            want.push(ConvCmd::Gemm(RowGemm {
                m: 6,
                n: nc * hw,
                k: 4 * 9,
                a: view(Operand::Weight, 0, 4 * 9),
                b: view(Operand::Col, 0, nc * hw),
                c: view(Operand::DInp, n0 * hw, 5 * hw),
                accumulate: true,
            }));
        }
        assert_eq!(cmds, want);
    }

    /// Only stride-1 "same" layers wider than 1x1 whose output is no wider than their input.
    #[test]
    fn input_gradient_by_convolution_fits_only_same_stride_one_layers() {
        let p = ConvShape { n: 2, cin: 8, h: 8, w: 8, cout: 8, k: 3, stride: 1, pad: 1 };
        assert!(input_grad_by_conv_fits(&p, 8, 8));
        assert!(input_grad_by_conv_fits(&p, 4, 8));
        assert!(!input_grad_by_conv_fits(&p, 8, 4), "the output's columns would overflow the workspace");
        assert!(!input_grad_by_conv_fits(&ConvShape { stride: 2, ..p }, 8, 8));
        assert!(!input_grad_by_conv_fits(&ConvShape { k: 1, pad: 0, ..p }, 8, 8));
        assert!(!input_grad_by_conv_fits(&ConvShape { pad: 0, ..p }, 8, 8));
        assert!(input_grad_by_conv_fits(&ConvShape { k: 5, pad: 2, ..p }, 8, 8));
    }

    /// The lowering refuses a sliced layer: by convolution runs on the dense twin.
    #[test]
    #[should_panic(expected = "full slices")]
    fn input_gradient_by_convolution_needs_the_dense_twin() {
        let p = ConvShape { n: 2, cin: 8, h: 8, w: 8, cout: 8, k: 3, stride: 1, pad: 1 };
        conv_backward(&p, Slice::new(6, 4, 8), Slice::full(8), 1, true, false, true, |_| {});
    }

    #[test]
    fn wrapping_slices_read_weight_in_place_with_full_leading_dimension() {
        // conv2's input slice [4, 0, 1] of 5 channels, 3x3: two GEMMs over column ranges
        // [36, 45) and [0, 18) of the [7, 45] weight, ld 45; the second accumulates.
        let p = shapes()[0];
        let mut g = vec![];
        conv_forward(&p, Slice::full(7), Slice::new(4, 3, 5), 3, false, |c| {
            if let ConvCmd::Gemm(x) = c {
                g.push(x)
            }
        });
        assert_eq!(g.len(), 2);
        assert_eq!((g[0].a.offset, g[0].a.ld, g[0].k), (36, 45, 9));
        assert_eq!((g[1].a.offset, g[1].a.ld, g[1].k), (0, 45, 18));
        assert!(!g[0].accumulate && g[1].accumulate);
        // Column rows: run 1 starts at buffer channel 1 (row 9 of the columns).
        assert_eq!(g[1].b.offset, 9 * g[1].b.ld);
    }
}
