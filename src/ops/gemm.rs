#![allow(unused)]
use crate::tensor::Layout;
pub fn gemm(
    c: &mut [f32],
    c_l: Layout,
    a: &[f32],
    a_l: Layout,
    b: &[f32],
    b_l: Layout,
    accumulate: bool,
) {
    todo!()
}
