//! How an op sees memory while it runs: the program's tables (where each buffer lives, where
//! each persistent tensor lives, each block's slice geometry) plus the step's slice starts and
//! optimizer settings, and the two regions themselves: host slices on the CPU ([`HostView`]),
//! device addresses on the GPU ([`DeviceView`]). A backend builds one view per op; views
//! allocate nothing.

use super::conv2d::Algo;
use super::sgd::SgdParams;
use super::StepCtx;
use crate::gpu::{f32_at, Launcher};
use crate::ir::{BufId, Sel, Slice, SliceSpec, TensorId, TensorSpec};

/// The program's tables and the step's values.
#[derive(Clone, Copy)]
pub struct Tables<'a> {
    /// `(offset, len)` of each buffer in the arena, in floats.
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

    /// Floats of buffer `b`.
    pub fn len(&self, b: BufId) -> usize {
        self.locs[b].1
    }
}

/// The CPU's view: raw pointers into the arena and the persistent region.
///
/// An op reads some buffers and writes others, all in the same arena allocation; Rust cannot see
/// that they are disjoint, the plan can: buffers live at the same step never overlap (checked by
/// `plan::check` when a program is built), an op lists a buffer it accumulates into as written
/// only (`Schedule::validate`), and persistent tensors are laid end to end. So handing out one
/// `&mut` per written buffer and `&` per read buffer, all live at this step, never aliases.
pub struct HostView<'a> {
    pub t: Tables<'a>,
    /// The CPU convolution algorithm.
    pub algo: Algo,
    arena: *mut f32,
    arena_len: usize,
    persistent: *mut f32,
    persistent_len: usize,
}

impl<'a> HostView<'a> {
    /// # Safety
    /// `arena` and `persistent` must stay valid, and untouched by anyone else, while the view is
    /// used; the tables must come from a program whose plan passed `plan::check`.
    pub unsafe fn new(t: Tables<'a>, algo: Algo, arena: &mut [f32], persistent: &mut [f32]) -> HostView<'a> {
        HostView {
            t,
            algo,
            arena: arena.as_mut_ptr(),
            arena_len: arena.len(),
            persistent: persistent.as_mut_ptr(),
            persistent_len: persistent.len(),
        }
    }

    /// Buffer `b`, read.
    pub fn buf(&self, b: BufId) -> &'a [f32] {
        let (off, len) = self.t.locs[b];
        assert!(off + len <= self.arena_len, "buffer outside the arena");
        // SAFETY: in bounds (asserted); no live &mut overlaps it (see the type's comment).
        unsafe { std::slice::from_raw_parts(self.arena.add(off), len) }
    }

    /// Buffer `b`, written.
    ///
    /// # Safety
    /// No other reference to the buffer's memory may be live (see the type's comment).
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn buf_mut(&self, b: BufId) -> &'a mut [f32] {
        let (off, len) = self.t.locs[b];
        assert!(off + len <= self.arena_len, "buffer outside the arena");
        unsafe { std::slice::from_raw_parts_mut(self.arena.add(off), len) }
    }

    /// An optional workspace, written (empty when absent).
    ///
    /// # Safety
    /// As [`HostView::buf_mut`].
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn opt_mut(&self, b: Option<BufId>) -> &'a mut [f32] {
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
pub struct DeviceView<'a> {
    pub t: Tables<'a>,
    /// The GPU (or a recorder of what would run on it).
    pub gpu: &'a dyn Launcher,
    arena: u64,
    arena_len: usize,
    persistent: u64,
    persistent_len: usize,
}

impl<'a> DeviceView<'a> {
    /// `arena` and `persistent` are base addresses with their lengths in floats.
    pub fn new(t: Tables<'a>, gpu: &'a dyn Launcher, arena: (u64, usize), persistent: (u64, usize)) -> DeviceView<'a> {
        DeviceView {
            t,
            gpu,
            arena: arena.0,
            arena_len: arena.1,
            persistent: persistent.0,
            persistent_len: persistent.1,
        }
    }

    /// Address of buffer `b`.
    pub fn buf(&self, b: BufId) -> u64 {
        let (off, len) = self.t.locs[b];
        assert!(off + len <= self.arena_len, "buffer outside the arena");
        f32_at(self.arena, off)
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

    /// Panics unless buffer `b` holds `expected` floats (`what` names it).
    pub fn check_len(&self, b: BufId, expected: usize, what: &str) {
        assert_eq!(self.t.len(b), expected, "{what}: buffer length");
    }
}
