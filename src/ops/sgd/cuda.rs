//! Launch of `sgd.cu` (f32 in every program: master weights, momentum, weight gradients): one
//! parameter a launch ([`Sgd`]), or a group of them in one launch ([`SgdGroup`]) reading a table
//! of [`Entry`]s the backend writes once into a region made before the first step.

use super::{grad_map, GradMap, Sgd, SgdGroup};
use crate::gpu::{grid, int, Arg, FastDiv};
use crate::ir::{BufId, Dtype, GradSel, Sel, SliceSpec};
use crate::ops::kernels::{SGD, SGD_MULTI};
use crate::ops::DeviceView;

/// Slice starts a multi-tensor launch carries (`SGD_MAX_BLOCKS` in `sgd.cu`): blocks beyond it
/// are refused when the group is made.
pub const MAX_BLOCKS: usize = 64;

/// How a gradient maps onto its parameter, as the kernel's integers: what [`GradMap`] says,
/// with the slice's start left out (it changes every step).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Geometry {
    mode: i32,
    width: usize,
    channels: usize,
    group: usize,
    row_len: usize,
    grad_len: usize,
}

/// The geometry of a parameter of `len` elements whose gradient is read through `map`.
fn geometry(map: GradMap, len: usize) -> Geometry {
    let (mode, width, channels, group, grad_len) = match map {
        GradMap::Full => (0, 1, 1, 1, len),
        GradMap::Rows { slice, row_len } => (1, slice.width, slice.channels, row_len, slice.width * row_len),
        GradMap::Cols { slice, group, rows } => (2, slice.width, slice.channels, group, rows * slice.width * group),
    };
    // Mode 1 reads rows of the whole parameter: one "row" per channel.
    let row_len = if mode == 2 { channels * group } else { len.max(1) };
    Geometry { mode, width, channels, group, row_len, grad_len }
}

pub(super) fn update(op: &Sgd, d: &DeviceView) {
    let (w, mb, g) = (d.tensor(op.param), d.tensor(op.momentum), d.buf(op.grad));
    let len = d.t.tensors[op.param].len();
    assert_eq!(d.t.tensors[op.momentum].len(), len, "sgd momentum length");
    let map = grad_map(op.map, d.t.slices, d.t.starts);
    let start = match map {
        GradMap::Full => 0,
        GradMap::Rows { slice, .. } | GradMap::Cols { slice, .. } => slice.start,
    };
    let geo = geometry(map, len);
    d.check_len(op.grad, geo.grad_len, "sgd gradient");
    d.f32_only(&[op.grad], "sgd");
    let sp = &d.t.sgd;
    let (by_group, by_row) = (FastDiv::new(geo.group), FastDiv::new(geo.row_len));
    let (l, row_len, mode) = (int(len), int(geo.row_len), geo.mode);
    let (start, width, channels, group) = (int(start), int(geo.width), int(geo.channels), int(geo.group));
    let nesterov = sp.nesterov as i32;
    #[rustfmt::skip]
    let args: [&dyn Arg; 18] = [&w, &mb, &g, &l, &mode, &start, &width, &channels, &group,
        &by_group.magic, &by_group.shift, &row_len, &by_row.magic, &by_row.shift,
        &sp.lr, &sp.momentum, &sp.weight_decay, &nesterov];
    // Four elements a thread where the kernel can take them four at a time.
    d.gpu.launch(SGD, grid(len.div_ceil(4)), &args);
}

/// One tensor of a multi-tensor update (`SgdEntry` in `sgd.cu`): addresses and geometry, which
/// stay the same from step to step while the regions do not move.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    pub param: u64,
    pub buf: u64,
    pub grad: u64,
    /// A bf16 copy of the updated weight, element for element (0: none).
    pub copy: u64,
    pub len: i32,
    pub mode: i32,
    /// The block whose start the slice takes, or -1 (the gradient covers every channel).
    pub block: i32,
    pub width: i32,
    pub channels: i32,
    pub group: i32,
    pub row_len: i32,
    pub group_magic: u32,
    pub group_shift: u32,
    pub row_magic: u32,
    pub row_shift: u32,
    pub unused: u32,
}

// The kernel reads both by their C layout: 80 and 272 bytes (`sgd_kernels.cpp` asserts the same
// of `SgdEntry` and `SgdStepArgs`).
const _: () = assert!(std::mem::size_of::<Entry>() == 80 && std::mem::offset_of!(Entry, len) == 32);
const _: () = assert!(std::mem::size_of::<StepArgs>() == 16 + 4 * MAX_BLOCKS);

/// The block whose drawn start a gradient's slice takes, if any: a block at full width always
/// starts at 0, as `Sel::resolve` says.
fn sliced_block(map: GradSel, slices: &[SliceSpec]) -> Option<usize> {
    match map {
        GradSel::Full => None,
        GradSel::Rows { sel, .. } | GradSel::Cols { sel, .. } => match sel {
            Sel::Block(b) if slices[b].width < slices[b].channels => Some(b),
            _ => None,
        },
    }
}

/// The table entry of `op` in `d`'s regions (any step's starts give the same geometry), with
/// `copy` the bf16 buffer the update also writes the updated weight to, if any.
pub fn entry(op: &Sgd, copy: Option<BufId>, d: &DeviceView) -> Entry {
    let len = d.t.tensors[op.param].len();
    assert_eq!(d.t.tensors[op.momentum].len(), len, "sgd momentum length");
    let geo = geometry(grad_map(op.map, d.t.slices, d.t.starts), len);
    d.check_len(op.grad, geo.grad_len, "sgd gradient");
    d.f32_only(&[op.grad], "sgd");
    let block = sliced_block(op.map, d.t.slices);
    assert!(block.is_none_or(|b| b < MAX_BLOCKS), "a slice of block {block:?}: the grouped update takes {MAX_BLOCKS}");
    if let Some(c) = copy {
        d.check_len(c, len, "sgd weight copy");
        assert_eq!(d.dtype(c), Dtype::Bf16, "the grouped update writes bf16 weight copies");
    }
    let (by_group, by_row) = (FastDiv::new(geo.group), FastDiv::new(geo.row_len));
    Entry {
        param: d.tensor(op.param),
        buf: d.tensor(op.momentum),
        grad: d.buf(op.grad),
        copy: d.opt(copy),
        len: int(len),
        mode: geo.mode,
        block: block.map_or(-1, int),
        width: int(geo.width),
        channels: int(geo.channels),
        group: int(geo.group),
        row_len: int(geo.row_len),
        group_magic: by_group.magic,
        group_shift: by_group.shift,
        row_magic: by_row.magic,
        row_shift: by_row.shift,
        unused: 0,
    }
}

/// What changes between steps (`SgdStepArgs` in `sgd.cu`), passed by value with the launch.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StepArgs {
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    pub nesterov: i32,
    pub starts: [i32; MAX_BLOCKS],
}

// SAFETY: plain old data laid out as `SgdStepArgs` (repr(C), 4-byte fields, no padding).
unsafe impl Arg for StepArgs {}

/// Queues one launch of `sgd_multi` over the group's table, which the backend has written at
/// `d.sgd_table()` + the group's first entry.
pub(super) fn update_group(op: &SgdGroup, d: &DeviceView) {
    assert_eq!(op.copies.len(), op.updates.len(), "one weight copy, or none, per update");
    let (table, capacity) = d.sgd_table();
    assert!(op.first + op.updates.len() <= capacity, "sgd table of {capacity} entries: group past its end");
    let table = table + (op.first * std::mem::size_of::<Entry>()) as u64;
    let sp = &d.t.sgd;
    let mut a = StepArgs {
        lr: sp.lr,
        momentum: sp.momentum,
        weight_decay: sp.weight_decay,
        nesterov: sp.nesterov as i32,
        starts: [0; MAX_BLOCKS],
    };
    for (s, &start) in a.starts.iter_mut().zip(d.t.starts) {
        *s = int(start);
    }
    let longest = op.updates.iter().map(|u| d.t.tensors[u.param].len()).max().unwrap_or(0);
    let mut cfg = grid(longest.div_ceil(4));
    cfg.grid_dim.1 = u32::try_from(op.updates.len()).expect("group size fits a grid");
    d.gpu.launch(SGD_MULTI, cfg, &[&table, &a]);
}
