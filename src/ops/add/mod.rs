//! The identity shortcut: `out += inp`, element-wise (forward, and the gradient's add when it
//! is not accumulated in place).

mod cuda;

use rayon::prelude::*;

use super::{DeviceView, HostView, Kernel, PAR_MIN_ELEMS};
use crate::ir::{BufId, Elem};

/// `out += inp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Add {
    pub out: BufId,
    pub inp: BufId,
}

impl Kernel for Add {
    fn buffers(&self) -> (Vec<BufId>, Vec<BufId>) {
        (vec![self.inp], vec![self.out])
    }
    fn run_cpu<T: Elem>(&self, m: &HostView) {
        // SAFETY: see `HostView`.
        add::<T>(unsafe { m.buf_mut(self.out) }, m.buf(self.inp))
    }
    fn run_cuda(&self, d: &DeviceView) {
        cuda::add(self, d)
    }
}

/// `out += inp`, element-wise.
pub fn add<T: Elem>(out: &mut [T], inp: &[T]) {
    assert_eq!(out.len(), inp.len(), "add: lengths");
    out.par_chunks_mut(PAR_MIN_ELEMS)
        .zip(inp.par_chunks(PAR_MIN_ELEMS))
        .for_each(|(o, i)| o.iter_mut().zip(i).for_each(|(o, i)| *o = T::from_f32(o.to_f32() + i.to_f32())));
}

#[cfg(test)]
mod tests {
    #[test]
    fn adds_element_wise() {
        let mut out: Vec<f32> = (0..40_000).map(|i| i as f32).collect();
        let inp: Vec<f32> = (0..40_000).map(|i| 0.5 * i as f32).collect();
        super::add(&mut out, &inp);
        assert!(out.iter().enumerate().all(|(i, &v)| v == 1.5 * i as f32));
    }

    /// bf16: the f32 sum of the same (bf16) values, rounded once.
    #[test]
    fn bf16_adds_in_f32_and_rounds_once() {
        use crate::ops::testutil::{assert_rounded, bf16_normals, to_bf16, widen};
        let mut rng = crate::rng::Rng::new(3, 0);
        let (a, b) = (bf16_normals(&mut rng, 40_000), bf16_normals(&mut rng, 40_000));
        let (mut out16, mut out32) = (to_bf16(&a), a.clone());
        super::add(&mut out16, &to_bf16(&b));
        super::add(&mut out32, &b);
        assert_rounded("add", &out16, &out32);
        assert_ne!(widen(&out16), out32, "some sums need rounding");
    }
}
