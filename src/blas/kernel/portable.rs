//! The portable tile: plain Rust over arrays, the same shape as the AVX2 tile, for processors
//! without the x86 paths (and as their reference in the tests).

use super::{store_edge, MatMut, Tile};

pub struct Portable;

const MR: usize = 6;
const NR: usize = 16;

impl Tile for Portable {
    const MR: usize = MR;
    const NR: usize = NR;
    const KC: usize = 256;
    const MC: usize = 144;
    const NC: usize = 2048;

    const AVX_PACK: bool = false;

    unsafe fn tile(kc: usize, a: *const f32, b: *const f32, c: MatMut, mr: usize, nr: usize, load: bool) {
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
        unsafe { store_edge(acc.as_flattened(), NR, c, mr, nr, load) };
    }
}
