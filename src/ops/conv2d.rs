#![allow(unused)]
use crate::sliceout::Slice;
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    pub n: usize,
    pub cin: usize,
    pub h: usize,
    pub w: usize,
    pub cout: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
}
impl ConvShape {
    pub fn ho(&self) -> usize {
        (self.h + 2 * self.pad - self.k) / self.stride + 1
    }
    pub fn wo(&self) -> usize {
        (self.w + 2 * self.pad - self.k) / self.stride + 1
    }
    pub fn kk(&self) -> usize {
        self.k * self.k
    }
    pub fn direct(&self) -> bool {
        self.k == 1 && self.stride == 1 && self.pad == 0
    }
    pub fn col_len(&self, in_width: usize, chunk: usize) -> usize {
        if self.direct() {
            0
        } else {
            in_width * self.kk() * chunk * self.ho() * self.wo()
        }
    }
    pub fn macs(&self, out_width: usize, in_width: usize) -> usize {
        out_width * in_width * self.kk() * self.n * self.ho() * self.wo()
    }
}
pub fn conv2d_forward(
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
    todo!()
}
pub fn conv2d_backward(
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
    todo!()
}
