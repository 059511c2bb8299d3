//! The multi-tensor SGD kernel (`sgd_multi` in `src/ops/sgd/sgd.cu`) runs on the host:
//! `sgd_kernels.cpp` includes the CUDA source under stand-in definitions and runs each launch's
//! every thread in turn. Each launch updates six tensors of odd and even lengths through every
//! gradient map (full, by fours and one at a time; rows and columns of wrapping slices; a block
//! at full width), its table entries made by the GPU backend's own `entry`, two steps for each
//! of three optimizer settings (Nesterov with weight decay, momentum alone, weight decay
//! alone). Parameters and momentum must equal the CPU's `sgd_update` bit for bit, and where a
//! bf16 copy is asked for it must be what a forward op's copy of the whole updated weight holds
//! (the CPU's `copy_weight` over full slices), which a kept copy (`GemmWeight::Kept`) replaces. Needs a C++17 compiler,
//! as `winograd_kernels.rs` (skipped without one, failing when `CI` is set).

use crate::common::host_cxx;
use std::path::Path;
use std::process::{Command, Stdio};

use sliceout::gpu::Recorder;
use sliceout::ir::{Bf16, BufKind, Buffer, Dtype, GradSel, Init, Role, Sel, SliceSpec, TensorSpec};
use sliceout::ir::{ConvShape, Slice};
use sliceout::ops::conv2d::copy_weight;
use sliceout::ops::sgd::cuda::entry;
use sliceout::ops::sgd::{grad_map, sgd_update};
use sliceout::ops::{DeviceView, Sgd, SgdParams, StepCtx, Tables};
use sliceout::rng::Rng;

/// A tensor of the test: its shape's length, how its gradient maps, whether a copy is asked.
struct Case {
    len: usize,
    map: GradSel,
    copy: bool,
}

#[test]
fn the_multi_tensor_sgd_kernel_matches_the_cpu_bit_for_bit_on_the_host() {
    let Some(cxx) = host_cxx("the SGD kernel") else {
        return;
    };
    // Block 0 wraps (7 channels, 4 kept), block 1 too (6, 3), block 2 is at full width.
    let slices =
        [SliceSpec { channels: 7, width: 4 }, SliceSpec { channels: 6, width: 3 }, SliceSpec { channels: 5, width: 5 }];
    let cases = [
        Case { len: 1001, map: GradSel::Full, copy: false },
        Case { len: 1028, map: GradSel::Full, copy: true },
        Case { len: 7 * 9, map: GradSel::Rows { sel: Sel::Block(0), row_len: 9 }, copy: true },
        Case { len: 5 * 6 * 9, map: GradSel::Cols { sel: Sel::Block(1), rows: 5, group: 9 }, copy: true },
        Case { len: 5 * 3, map: GradSel::Rows { sel: Sel::Block(2), row_len: 3 }, copy: false },
        Case { len: 7, map: GradSel::Rows { sel: Sel::Block(0), row_len: 1 }, copy: false },
    ];
    // Parameter i is tensor 2i, its momentum 2i + 1, its gradient buffer i.
    let mut tensors = vec![];
    let mut offset = 0;
    for (i, c) in cases.iter().enumerate() {
        for role in [Role::Param, Role::Momentum] {
            tensors.push(TensorSpec { name: format!("t{i}"), shape: vec![c.len], role, init: Init::Zeros, offset });
            offset += c.len.next_multiple_of(4);
        }
    }
    let settings = [
        SgdParams { lr: 0.1, momentum: 0.9, weight_decay: 5e-4, nesterov: true },
        SgdParams { lr: 0.05, momentum: 0.9, weight_decay: 0.0, nesterov: false },
        SgdParams { lr: 0.2, momentum: 0.0, weight_decay: 1e-2, nesterov: false },
    ];
    let step_starts = [[5usize, 4, 0], [1, 0, 3]];
    let mut rng = Rng::new(11, 0);
    let mut params: Vec<Vec<f32>> = cases.iter().map(|c| (0..c.len).map(|_| rng.normal()).collect()).collect();
    let mut bufs: Vec<Vec<f32>> = cases.iter().map(|c| vec![0.0; c.len]).collect();
    let mut input = format!("{}\n", settings.len() * step_starts.len());
    // What the CPU makes of each launch: per tensor, its parameter, momentum and copy.
    let mut want: Vec<[Vec<f32>; 3]> = vec![];
    let hex = |v: &[f32]| v.iter().map(|x| format!("{:08x}", x.to_bits())).collect::<Vec<_>>().join(" ");
    for p in &settings {
        for starts in &step_starts {
            let ctx = StepCtx::new(starts, *p);
            let grad_lens: Vec<usize> = cases
                .iter()
                .map(|c| grad_map(c.map, &slices, starts))
                .zip(&cases)
                .map(|(m, c)| match m {
                    sliceout::ops::sgd::GradMap::Full => c.len,
                    sliceout::ops::sgd::GradMap::Rows { slice, row_len } => slice.width * row_len,
                    sliceout::ops::sgd::GradMap::Cols { slice, rows, group } => rows * slice.width * group,
                })
                .collect();
            let mut locs = vec![];
            let mut words = 0;
            for &l in &grad_lens {
                locs.push((words, l));
                words += l.next_multiple_of(64);
            }
            let buffers: Vec<Buffer> = grad_lens
                .iter()
                .map(|&len| Buffer {
                    name: "g".into(),
                    kind: BufKind::WeightGradient,
                    dtype: Dtype::F32,
                    len,
                    sliced: false,
                })
                .collect();
            let rec = Recorder::default();
            let view = DeviceView::new(
                Tables::new(&locs, &tensors, &slices, &ctx),
                &rec,
                &buffers,
                (1 << 40, 4 * words),
                (1 << 44, offset),
            );
            input += &format!(
                "{} {} {} {} {} {} {}\n",
                hex(&[p.lr]),
                hex(&[p.momentum]),
                hex(&[p.weight_decay]),
                p.nesterov as i32,
                starts.len(),
                starts.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(" "),
                cases.len()
            );
            for (i, c) in cases.iter().enumerate() {
                let grad: Vec<f32> = (0..grad_lens[i]).map(|_| rng.normal()).collect();
                let e = entry(&Sgd { param: 2 * i, momentum: 2 * i + 1, grad: i, map: c.map }, None, &view);
                input += &format!(
                    "{} {} {} {} {} {} {} {:x} {:x} {:x} {:x} {} {}\n{}\n{}\n{}\n",
                    e.len,
                    e.mode,
                    e.block,
                    e.width,
                    e.channels,
                    e.group,
                    e.row_len,
                    e.group_magic,
                    e.group_shift,
                    e.row_magic,
                    e.row_shift,
                    c.copy as i32,
                    grad.len(),
                    hex(&params[i]),
                    hex(&bufs[i]),
                    hex(&grad)
                );
                sgd_update(&mut params[i], &mut bufs[i], &grad, grad_map(c.map, &slices, starts), p);
                let copy = if c.copy { forward_copy(&params[i]) } else { vec![] };
                want.push([params[i].clone(), bufs[i].clone(), copy]);
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let exe = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sgd_kernels");
    let built = Command::new(cxx)
        .args(["-std=c++17", "-O2", "-ffp-contract=off", "-Wno-unknown-pragmas", "-I"])
        .arg(root.join("src/ops/sgd"))
        .arg(root.join("tests/it/sgd_kernels.cpp"))
        .arg("-o")
        .arg(&exe)
        .output()
        .expect("running the C++ compiler");
    assert!(built.status.success(), "{cxx} failed:\n{}", String::from_utf8_lossy(&built.stderr));
    // Through a file: a pipe written whole before the output is read would fill both ways.
    let launches = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sgd_kernels.in");
    std::fs::write(&launches, &input).expect("writing the launches");
    let stdin = std::fs::File::open(&launches).expect("the launches");
    let out = Command::new(&exe).stdin(Stdio::from(stdin)).output().expect("running the host build");
    assert!(out.status.success(), "the host build failed");
    let text = String::from_utf8(out.stdout).expect("text");
    let lines: Vec<Vec<f32>> = text
        .lines()
        .map(|l| l.split_whitespace().map(|w| f32::from_bits(u32::from_str_radix(w, 16).expect("hex"))).collect())
        .collect();
    assert_eq!(lines.len(), 3 * want.len(), "three lines a tensor a launch");
    let mut copies = 0;
    for (k, w) in want.iter().enumerate() {
        let (launch, tensor) = (k / cases.len(), k % cases.len());
        for (j, what) in ["parameter", "momentum", "bf16 copy"].iter().enumerate() {
            let got = &lines[3 * k + j];
            assert_eq!(got.len(), w[j].len(), "launch {launch} tensor {tensor}: {what} length");
            for (i, (g, e)) in got.iter().zip(&w[j]).enumerate() {
                assert_eq!(
                    g.to_bits(),
                    e.to_bits(),
                    "launch {launch} tensor {tensor}: {what}[{i}] {g} against the CPU's {e}"
                );
            }
        }
        copies += !w[2].is_empty() as usize;
    }
    assert_eq!(copies, 3 * settings.len() * step_starts.len(), "every asked copy was checked");
    println!("{} launches of {} tensors: bit-identical to the CPU", settings.len() * step_starts.len(), cases.len());
}

/// The bf16 copy a forward op makes of a whole (unsliced) weight of `w.len()` elements, widened.
fn forward_copy(w: &[f32]) -> Vec<f32> {
    let shape = ConvShape { n: 1, cin: w.len(), h: 1, w: 1, cout: 1, k: 1, stride: 1, pad: 0 };
    let mut copy = vec![Bf16::default(); w.len()];
    copy_weight(&mut copy, w, &shape, Slice::full(1), Slice::full(w.len()));
    copy.iter().map(|x| x.to_f32()).collect()
}
