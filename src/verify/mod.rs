//! Checks a user can run on any backend: every op against the CPU reference (`selftest`) and the
//! network against PyTorch's numbers (`reference`).

pub mod full;
pub mod reference;
pub mod selftest;

/// `||a - b|| / ||b||` in f64 (absolute when `b` is zero); NaN when either holds a NaN or the
/// lengths differ, so that no comparison with a tolerance passes.
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() {
        return f64::NAN;
    }
    let (mut d, mut n) = (0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x as f64, y as f64);
        d += (x - y) * (x - y);
        n += y * y;
    }
    if d.is_nan() || n.is_nan() {
        return f64::NAN;
    }
    if n > 0.0 {
        (d / n).sqrt()
    } else {
        d.sqrt()
    }
}

/// A CPU backend whose reads are tampered with, for tests that must see a wrong backend caught.
#[cfg(test)]
pub(crate) mod tampered {
    use crate::backend::{Backend, Batches, CpuBackend, Execute, Memory, SplitId, StepCtx};
    use crate::data::loader::{Crop, Normalization};
    use crate::data::Split;
    use crate::ir::Target;
    use crate::plan::Program;

    /// The CPU backend, with `on_read` applied to every buffer read back (with the buffer's
    /// name) and `on_persistent` to every read of the persistent region.
    pub struct Tampered {
        pub inner: CpuBackend,
        pub on_read: fn(&str, &mut [f32]),
        pub on_persistent: fn(&mut [f32]),
        /// What it says its programs are planned for (the CPU runs a GPU's plan too).
        pub target: Target,
    }

    impl Tampered {
        pub fn new(on_read: fn(&str, &mut [f32]), on_persistent: fn(&mut [f32])) -> Tampered {
            Tampered { inner: CpuBackend::new(), on_read, on_persistent, target: Target::Cpu }
        }
    }

    impl Memory for Tampered {
        fn reserve_arena(&mut self, bytes: usize) -> crate::Result<()> {
            self.inner.reserve_arena(bytes)
        }
        fn set_persistent(&mut self, data: &[f32]) -> crate::Result<()> {
            self.inner.set_persistent(data)
        }
        fn get_persistent(&mut self, out: &mut [f32]) {
            self.inner.get_persistent(out);
            (self.on_persistent)(out);
        }
        fn write(&mut self, p: &Program, buf: usize, data: &[f32]) {
            self.inner.write(p, buf, data)
        }
        fn read(&mut self, p: &Program, buf: usize, out: &mut [f32]) {
            self.inner.read(p, buf, out);
            (self.on_read)(&p.schedule.buffers[buf].name, out);
        }
    }

    impl Batches for Tampered {
        fn upload_split(
            &mut self,
            id: SplitId,
            split: Split,
            channels: usize,
            norm: &Normalization,
        ) -> crate::Result<()> {
            self.inner.upload_split(id, split, channels, norm)
        }
        fn split_len(&self, id: SplitId) -> usize {
            self.inner.split_len(id)
        }
        fn fill_batch(&mut self, p: &Program, id: SplitId, indices: &[usize], crops: &[Crop]) {
            self.inner.fill_batch(p, id, indices, crops)
        }
    }

    impl Execute for Tampered {
        fn run_op(&mut self, p: &Program, step: usize, ctx: &StepCtx) {
            self.inner.run_op(p, step, ctx)
        }
    }

    impl Backend for Tampered {
        fn name(&self) -> String {
            "tampered".into()
        }
        fn target(&self) -> Target {
            self.target
        }
    }
}
