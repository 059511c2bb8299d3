//! How an op sees memory while it runs: the program's tables (where each buffer lives, where
//! each persistent tensor lives, each block's slice geometry) plus the step's slice starts and
//! optimizer settings, and the two regions themselves: host slices on the CPU ([`HostView`] over
//! a [`HostArena`], each buffer typed as it is stored), device addresses on the GPU
//! ([`DeviceView`]). A backend builds one view per op; views allocate nothing.

use super::conv2d::Algo;
use super::sgd::SgdParams;
use super::StepCtx;
use crate::gpu::{f32_at, Launcher};
use crate::ir::{BufId, Buffer, Dtype, Elem, Precision, Sel, Slice, SliceSpec, TensorId, TensorSpec};

/// The program's tables and the step's values.
#[derive(Clone, Copy)]
pub struct Tables<'a> {
    /// `(offset, len)` of each buffer in the arena: the offset in 4-byte words (every buffer
    /// starts on a 256-byte boundary), the length in elements of the buffer's type.
    pub locs: &'a [(usize, usize)],
    pub tensors: &'a [TensorSpec],
    pub slices: &'a [SliceSpec],
    pub starts: &'a [usize],
    pub sgd: SgdParams,
    pub bn_momentum: f64,
}

impl<'a> Tables<'a> {
    pub fn new(
        locs: &'a [(usize, usize)],
        tensors: &'a [TensorSpec],
        slices: &'a [SliceSpec],
        ctx: &StepCtx<'a>,
    ) -> Tables<'a> {
        Tables { locs, tensors, slices, starts: ctx.starts, sgd: ctx.sgd, bn_momentum: ctx.bn_momentum }
    }

    /// The channels `sel` covers at this step.
    pub fn slice(&self, sel: Sel) -> Slice {
        sel.resolve(self.slices, self.starts)
    }

    /// Elements of buffer `b`.
    pub fn len(&self, b: BufId) -> usize {
        self.locs[b].1
    }
}

/// The CPU's arena: bytes on 64-byte lines (so every 256-byte-aligned buffer starts on a cache
/// line), each buffer viewed as its own element type.
#[derive(Default)]
pub struct HostArena {
    lines: Vec<Line>,
}

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

impl HostArena {
    pub fn bytes(&self) -> usize {
        self.lines.len() * 64
    }

    /// Grows the arena to at least `bytes` (zeroed), or says the host cannot allocate it.
    pub fn reserve(&mut self, bytes: usize) -> Result<(), std::collections::TryReserveError> {
        let lines = bytes.div_ceil(64);
        if self.lines.len() < lines {
            let mut grown = Vec::new();
            crate::oom::fallible(|| grown.try_reserve_exact(lines))?;
            grown.resize(lines, Line([0; 64]));
            self.lines = grown;
        }
        Ok(())
    }

    fn base(&mut self) -> *mut u8 {
        self.lines.as_mut_ptr().cast()
    }

    /// `len` elements of `T` from byte `at`.
    pub fn get<T: Elem>(&self, at: usize, len: usize) -> &[T] {
        check_span::<T>(at, len, self.bytes());
        // SAFETY: inside the allocation (checked), aligned (the base is 64-byte aligned and `at`
        // a multiple of the element size), and any bit pattern is a valid f32 or bf16.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast::<u8>().add(at).cast(), len) }
    }

    /// `len` elements of `T` from byte `at`, written.
    pub fn get_mut<T: Elem>(&mut self, at: usize, len: usize) -> &mut [T] {
        check_span::<T>(at, len, self.bytes());
        // SAFETY: as `get`, and `&mut self` makes it the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.base().add(at).cast(), len) }
    }

    /// Two disjoint spans `(byte, len)`, written (e.g. the batch and its labels).
    pub fn get_two_mut<A: Elem, B: Elem>(&mut self, a: (usize, usize), b: (usize, usize)) -> (&mut [A], &mut [B]) {
        let (bytes, (a_end, b_end)) = (self.bytes(), (a.0 + a.1 * A::DTYPE.size(), b.0 + b.1 * B::DTYPE.size()));
        assert!(a_end <= b.0 || b_end <= a.0, "two spans of the arena overlap");
        check_span::<A>(a.0, a.1, bytes);
        check_span::<B>(b.0, b.1, bytes);
        let base = self.base();
        // SAFETY: each as `get_mut`, and the spans are disjoint (asserted).
        unsafe {
            (
                std::slice::from_raw_parts_mut(base.add(a.0).cast(), a.1),
                std::slice::from_raw_parts_mut(base.add(b.0).cast(), b.1),
            )
        }
    }
}

/// Panics unless `len` elements of `T` from byte `at` lie inside `bytes` and are aligned.
fn check_span<T: Elem>(at: usize, len: usize, bytes: usize) {
    let end = len.checked_mul(T::DTYPE.size()).and_then(|l| l.checked_add(at));
    assert!(end.is_some_and(|e| e <= bytes), "buffer outside the arena");
    assert_eq!(at % std::mem::align_of::<T>(), 0, "misaligned buffer");
}

/// The CPU's view: raw pointers into the arena and the persistent region.
///
/// An op reads some buffers and writes others, all in the same arena allocation; Rust cannot see
/// that they are disjoint, the plan can: buffers live at the same step never overlap (checked by
/// `plan::check` when a program is built), an op lists a buffer it accumulates into as written
/// only (`Schedule::validate`), and persistent tensors are laid end to end. So handing out one
/// `&mut` per written buffer and `&` per read buffer, all live at this step, never aliases.
///
/// Each buffer is viewed as its element type, which the caller names and the view checks against
/// the schedule's: a bf16 buffer is never read as f32.
pub struct HostView<'a> {
    pub t: Tables<'a>,
    /// The CPU convolution algorithm.
    pub algo: Algo,
    /// The schedule's buffers (their element types).
    buffers: &'a [Buffer],
    storage: Dtype,
    arena: *mut u8,
    arena_bytes: usize,
    persistent: *mut f32,
    persistent_len: usize,
}

impl<'a> HostView<'a> {
    /// # Safety
    /// `arena` and `persistent` must stay valid, and untouched by anyone else, while the view is
    /// used; the tables and buffers must come from a program whose plan passed `plan::check`.
    pub unsafe fn new(
        t: Tables<'a>,
        algo: Algo,
        buffers: &'a [Buffer],
        precision: Precision,
        arena: &mut HostArena,
        persistent: &mut [f32],
    ) -> HostView<'a> {
        HostView {
            t,
            algo,
            buffers,
            storage: precision.storage(),
            arena: arena.base(),
            arena_bytes: arena.bytes(),
            persistent: persistent.as_mut_ptr(),
            persistent_len: persistent.len(),
        }
    }

    /// What the program's activations, their gradients and workspaces hold.
    pub fn storage(&self) -> Dtype {
        self.storage
    }

    /// Byte offset and length of buffer `b`, checked against the arena and its type against `T`.
    fn span<T: Elem>(&self, b: BufId) -> (usize, usize) {
        let buf = &self.buffers[b];
        assert_eq!(buf.dtype, T::DTYPE, "buffer {} holds {}", buf.name, buf.dtype.as_str());
        let (words, len) = self.t.locs[b];
        let at = words * 4;
        check_span::<T>(at, len, self.arena_bytes);
        (at, len)
    }

    /// Buffer `b`, read.
    pub fn buf<T: Elem>(&self, b: BufId) -> &'a [T] {
        let (at, len) = self.span::<T>(b);
        // SAFETY: in bounds and aligned (checked); no live &mut overlaps it (see the type's comment).
        unsafe { std::slice::from_raw_parts(self.arena.add(at).cast(), len) }
    }

    /// Buffer `b`, written.
    ///
    /// # Safety
    /// No other reference to the buffer's memory may be live (see the type's comment).
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn buf_mut<T: Elem>(&self, b: BufId) -> &'a mut [T] {
        let (at, len) = self.span::<T>(b);
        unsafe { std::slice::from_raw_parts_mut(self.arena.add(at).cast(), len) }
    }

    /// An optional workspace, written (empty when absent).
    ///
    /// # Safety
    /// As [`HostView::buf_mut`].
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn opt_mut<T: Elem>(&self, b: Option<BufId>) -> &'a mut [T] {
        match b {
            Some(b) => unsafe { self.buf_mut(b) },
            None => &mut [],
        }
    }

    /// Persistent tensor `t`, read.
    pub fn tensor(&self, t: TensorId) -> &'a [f32] {
        let r = self.t.tensors[t].range();
        assert!(r.end <= self.persistent_len, "tensor outside the persistent region");
        // SAFETY: in bounds; persistent tensors never overlap each other.
        unsafe { std::slice::from_raw_parts(self.persistent.add(r.start), r.len()) }
    }

    /// Persistent tensor `t`, written.
    ///
    /// # Safety
    /// No other reference to the tensor may be live.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn tensor_mut(&self, t: TensorId) -> &'a mut [f32] {
        let r = self.t.tensors[t].range();
        assert!(r.end <= self.persistent_len, "tensor outside the persistent region");
        unsafe { std::slice::from_raw_parts_mut(self.persistent.add(r.start), r.len()) }
    }
}

/// The GPU's view: device addresses of the arena and the persistent region. Device code cannot
/// bounds-check, so every address handed out is checked against its region here, and the ops
/// check buffer lengths against their dimensions before launching.
///
/// Each buffer's element type is the schedule's, as on the CPU: a bf16 buffer's elements step 2
/// bytes ([`DeviceView::at`]), and an op picks its kernels' variant from its buffers' types
/// ([`DeviceView::storage`]).
pub struct DeviceView<'a> {
    pub t: Tables<'a>,
    /// The GPU (or a recorder of what would run on it).
    pub gpu: &'a dyn Launcher,
    /// The schedule's buffers (their element types).
    buffers: &'a [Buffer],
    arena: u64,
    arena_bytes: usize,
    persistent: u64,
    persistent_len: usize,
    /// The grouped SGD updates' table: base address and capacity in entries.
    sgd_table: (u64, usize),
}

impl<'a> DeviceView<'a> {
    /// `arena` is a base address with its length in bytes, `persistent` one with its length in
    /// floats; `buffers` are the program's.
    pub fn new(
        t: Tables<'a>,
        gpu: &'a dyn Launcher,
        buffers: &'a [Buffer],
        arena: (u64, usize),
        persistent: (u64, usize),
    ) -> DeviceView<'a> {
        assert_eq!(buffers.len(), t.locs.len(), "one location per buffer");
        DeviceView {
            t,
            gpu,
            buffers,
            arena: arena.0,
            arena_bytes: arena.1,
            persistent: persistent.0,
            persistent_len: persistent.1,
            sgd_table: (0, 0),
        }
    }

    /// The view with the grouped SGD updates' table at `base`, `entries` long.
    pub fn with_sgd_table(self, base: u64, entries: usize) -> DeviceView<'a> {
        DeviceView { sgd_table: (base, entries), ..self }
    }

    /// The grouped SGD updates' table: base address and capacity in entries.
    pub fn sgd_table(&self) -> (u64, usize) {
        self.sgd_table
    }

    /// What buffer `b` stores.
    pub fn dtype(&self, b: BufId) -> Dtype {
        self.buffers[b].dtype
    }

    /// The one element type of `bufs` (an op's activations, their gradients and workspaces,
    /// at least one), which picks its kernels' variant; panics when they differ.
    pub fn storage<'b>(&self, bufs: impl IntoIterator<Item = &'b BufId>) -> Dtype {
        let mut bufs = bufs.into_iter().peekable();
        let dtype = self.dtype(**bufs.peek().expect("an op's storage buffers"));
        for &b in bufs {
            let buf = &self.buffers[b];
            assert_eq!(buf.dtype, dtype, "buffer {} holds {}, not {}", buf.name, buf.dtype.as_str(), dtype.as_str());
        }
        dtype
    }

    /// Panics unless every buffer of `bufs` is f32: the ops whose kernels have no bf16 variant
    /// (the head after the pool, the loss, SGD) read and write f32 in every program.
    pub fn f32_only(&self, bufs: &[BufId], what: &str) {
        for &b in bufs {
            let buf = &self.buffers[b];
            assert_eq!(
                buf.dtype,
                Dtype::F32,
                "{what}: buffer {} holds {}; its kernel reads f32",
                buf.name,
                buf.dtype.as_str()
            );
        }
    }

    /// Address of buffer `b`.
    pub fn buf(&self, b: BufId) -> u64 {
        self.at(b, 0)
    }

    /// Address of element `elems` of buffer `b` (in its element type).
    pub fn at(&self, b: BufId, elems: usize) -> u64 {
        let (words, len) = self.t.locs[b];
        let size = self.dtype(b).size();
        assert!(words * 4 + len * size <= self.arena_bytes, "buffer outside the arena");
        assert!(elems <= len, "element {elems} of a buffer of {len}");
        self.arena + (words * 4 + elems * size) as u64
    }

    /// Address of an optional buffer, 0 (a null pointer for the kernel) when absent.
    pub fn opt(&self, b: Option<BufId>) -> u64 {
        b.map_or(0, |b| self.buf(b))
    }

    /// Address of persistent tensor `t`.
    pub fn tensor(&self, t: TensorId) -> u64 {
        let r = self.t.tensors[t].range();
        assert!(r.end <= self.persistent_len, "tensor outside the persistent region");
        f32_at(self.persistent, r.start)
    }

    /// Panics unless buffer `b` holds `expected` elements (`what` names it).
    pub fn check_len(&self, b: BufId, expected: usize, what: &str) {
        assert_eq!(self.t.len(b), expected, "{what}: buffer length");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::Recorder;
    use crate::ir::BufKind;

    fn buffer(name: &str, dtype: Dtype, len: usize) -> Buffer {
        Buffer { name: name.into(), kind: BufKind::Activation, dtype, len, sliced: false }
    }

    /// A bf16 buffer's elements are 2 bytes apart and an f32 one's 4, from the buffer's offset
    /// in words; a buffer reaching past the arena's bytes, or an op mixing storage types, panics.
    #[test]
    fn device_addresses_step_by_each_buffers_element_size() {
        let buffers = [buffer("a", Dtype::Bf16, 10), buffer("b", Dtype::F32, 3), buffer("c", Dtype::Bf16, 7)];
        let locs = [(0, 10), (5, 3), (8, 7)];
        let sgd = SgdParams { lr: 0.0, momentum: 0.0, weight_decay: 0.0, nesterov: false };
        let ctx = StepCtx::new(&[], sgd);
        let t = Tables::new(&locs, &[], &[], &ctx);
        let rec = Recorder::default();
        let base = 1u64 << 40;
        // "c" ends at byte 8*4 + 7*2 = 46.
        let view = DeviceView::new(t, &rec, &buffers, (base, 46), (0, 0));
        assert_eq!(view.at(0, 3), base + 6);
        assert_eq!(view.at(1, 2), base + 20 + 8);
        assert_eq!(view.at(2, 7), base + 46);
        assert_eq!(view.storage(&[0, 2]), Dtype::Bf16);
        let short = DeviceView::new(t, &rec, &buffers, (base, 45), (0, 0));
        let caught = |f: &dyn Fn()| std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err();
        assert!(!caught(&|| {
            short.buf(1);
        }));
        assert!(
            caught(&|| {
                short.buf(2);
            }),
            "past the arena"
        );
        assert!(
            caught(&|| {
                view.storage(&[0, 1]);
            }),
            "bf16 and f32 in one kernel"
        );
        assert!(caught(&|| view.f32_only(&[1, 2], "test")), "an f32 kernel on bf16");
    }
}
