//! The memory plan of real schedules: the invariant holds, the sizes asked for are met
//! (WRN-28-10, batch 128, train: persistent + arena <= 2400 MiB at keep 1.0 and <= 1900 MiB at
//! keep 0.5, arena at keep 0.5 <= 0.80 of keep 1.0), each memory option shows its effect, and a
//! bf16 step is planned in bytes of each buffer's element type (and refused by the backends).

use crate::common::BIN;
use sliceout::ir::{BufKind, Dtype, Precision, Role};
use sliceout::model::{wrn, ModelConfig};
use sliceout::plan::Program;
use sliceout::plan::{self, report};
use sliceout::schedule::{Lowering, Mode, Options, UpdateAt};

const MIB: f64 = (1 << 20) as f64;

fn wrn(depth: usize, widen: usize, keep: f64) -> ModelConfig {
    ModelConfig { depth, widen, classes: 10, in_channels: 3, keep }
}

fn program(c: &ModelConfig, batch: usize, mode: Mode, o: Options, l: Lowering) -> Program {
    Program::new(wrn::build(c, batch, mode, o, l))
}

/// A program with the default memory options.
fn lowered(c: &ModelConfig, batch: usize, mode: Mode, l: Lowering) -> Program {
    program(c, batch, mode, Options::default(), l)
}

#[test]
fn wrn_28_10_needs_at_most_2400_mib_and_1900_at_keep_half() {
    let full = lowered(&wrn(28, 10, 1.0), 128, Mode::Train, Lowering::default());
    let half = lowered(&wrn(28, 10, 0.5), 128, Mode::Train, Lowering::default());
    let total = |p: &Program| (p.arena_bytes() + p.schedule.persistent_len() * 4) as f64 / MIB;
    println!("keep 1.0: arena {:.1} MiB, total {:.1} MiB", full.arena_bytes() as f64 / MIB, total(&full));
    println!("keep 0.5: arena {:.1} MiB, total {:.1} MiB", half.arena_bytes() as f64 / MIB, total(&half));
    assert!(total(&full) <= 2400.0, "keep 1.0 needs {:.1} MiB", total(&full));
    assert!(total(&half) <= 1900.0, "keep 0.5 needs {:.1} MiB", total(&half));
    let ratio = half.arena_bytes() as f64 / full.arena_bytes() as f64;
    assert!(ratio <= 0.80, "arena ratio {ratio:.3}");
    // Parameters of WRN-28-10: 36.5 M (the paper's figure), stored with momentum.
    let params = full.schedule.tensors.iter().filter(|t| t.role == Role::Param).map(|t| t.len()).sum::<usize>();
    assert!((36_400_000..36_600_000).contains(&params), "{params} parameters");
}

#[test]
fn plans_of_real_schedules_pass_the_checker_and_beat_the_naive_sum() {
    let runs = [(wrn(10, 2, 1.0), 4), (wrn(16, 4, 0.5), 32), (wrn(22, 3, 0.75), 7), (wrn(28, 10, 0.5), 128)];
    for (c, batch) in runs {
        for (mode, precision) in [Mode::Train, Mode::Eval].into_iter().flat_map(|m| Precision::ALL.map(|p| (m, p))) {
            let p = lowered(&c, batch, mode, Lowering { precision, ..Lowering::default() });
            plan::check(&p.lifetimes, &p.placement, plan::ALIGN).unwrap();
            assert!(p.arena_bytes() <= plan::naive_bytes(&p.lifetimes) + p.lifetimes.len() * plan::ALIGN);
            assert!(p.arena_bytes() <= plan::plan_linear(&p.lifetimes, plan::ALIGN).arena_bytes);
            // Every buffer is used by some op, and the arena is at least the busiest step.
            let peak = (0..p.schedule.steps.len())
                .map(|i| p.lifetimes.iter().filter(|l| l.first <= i && i <= l.last).map(|l| l.bytes).sum::<usize>())
                .max()
                .unwrap();
            assert!(p.arena_bytes() >= peak);
        }
    }
}

#[test]
fn sliced_buffers_are_sized_to_the_slice() {
    let (full, half) = (wrn(16, 4, 1.0), wrn(16, 4, 0.5));
    let a = lowered(&full, 8, Mode::Train, Lowering::default());
    let b = lowered(&half, 8, Mode::Train, Lowering::default());
    assert_eq!(a.schedule.buffers.len(), b.schedule.buffers.len());
    let mut sliced = 0;
    for (x, y) in a.schedule.buffers.iter().zip(&b.schedule.buffers) {
        assert_eq!(x.name, y.name);
        if y.sliced {
            sliced += 1;
            assert!(y.len * 2 == x.len || y.kind == BufKind::Workspace, "{}: {} vs {}", y.name, y.len, x.len);
            assert!(!x.sliced);
        } else {
            assert_eq!(x.len, y.len, "{}", x.name);
        }
    }
    // conv1.out, bn2.out, bn2.stats, bn2.out_re, the gradients and weight gradients of each block.
    assert!(sliced >= 6 * 10, "{sliced} sliced buffers");
    assert!(b.arena_bytes() < a.arena_bytes());
}

#[test]
fn train_and_eval_share_the_persistent_layout() {
    // The trainer evaluates with the training run's persistent region.
    let c = wrn(16, 2, 0.5);
    let t = wrn::build(&c, 16, Mode::Train, Options::default(), Lowering::default());
    let e = wrn::build(&c, 5, Mode::Eval, Options::default(), Lowering::default());
    assert_eq!(t.tensors.len(), e.tensors.len());
    for (a, b) in t.tensors.iter().zip(&e.tensors) {
        assert_eq!((&a.name, &a.shape, a.offset), (&b.name, &b.shape, b.offset));
    }
}

#[test]
fn each_memory_option_moves_the_arena_the_way_it_says() {
    let c = wrn(16, 4, 1.0);
    let arena = |o: Options| program(&c, 32, Mode::Train, o, Lowering::default()).arena_bytes();
    let base = arena(Options::default());
    let stored = arena(Options { recompute: false, ..Options::default() });
    let fresh = arena(Options { in_place: false, ..Options::default() });
    let late = arena(Options { update: UpdateAt::End, ..Options::default() });
    let whole = arena(Options { col_chunk: 32, ..Options::default() });
    let tiny = arena(Options { col_chunk: 1, ..Options::default() });
    println!("default {base}, no recompute {stored}, no in-place {fresh}, update at end {late}, whole-batch im2col {whole}, 1-image im2col {tiny}");
    assert!(stored > base, "keeping BN outputs costs memory");
    assert!(fresh >= base);
    assert!(late > base, "all weight gradients live at once");
    assert!(whole > base && tiny <= base, "im2col chunking bounds the workspace");
}

#[test]
fn report_json_lists_every_buffer_and_step() {
    let p = lowered(&wrn(10, 2, 0.5), 8, Mode::Train, Lowering::default());
    let r = plan::report::report(&p, None);
    let v: serde_json::Value = serde_json::from_str(&report::json(&r)).unwrap();
    assert_eq!(v["model"], "WRN-10-2");
    assert_eq!(v["mode"], "train");
    assert_eq!(v["arena_bytes"].as_u64().unwrap() as usize, p.arena_bytes());
    assert_eq!(v["steps"].as_array().unwrap().len(), p.schedule.steps.len());
    let bufs = v["buffers"].as_array().unwrap();
    assert_eq!(bufs.len(), p.schedule.buffers.len());
    assert!(bufs.iter().any(|b| b["sliced"] == true && b["kind"] == "weight_gradient"));
    for b in bufs {
        assert!(b["first"].as_u64().unwrap() <= b["last"].as_u64().unwrap());
    }
}

/// Each convolution's workspace and chunk, from the schedule: (workspace floats, in width,
/// shape, chunk).
fn conv_workspaces(p: &Program) -> Vec<(usize, usize, sliceout::ir::ConvShape, usize)> {
    use sliceout::ops::Op;
    let s = &p.schedule;
    let mut out = vec![];
    for step in &s.steps {
        let (col, shape, in_sel, chunk) = match &step.op {
            Op::Conv(c) => (c.col, c.shape, c.in_sel, c.chunk),
            Op::ConvBackward(c) => (c.col, c.shape, c.in_sel, c.chunk),
            _ => continue,
        };
        if let Some(b) = col {
            out.push((s.buffers[b].len, in_sel.width(&s.slices), shape, chunk));
        }
    }
    out
}

/// A plan is made for the backend that runs it: on the GPU the workspaces hold im2col columns
/// alone and each chunk is the largest whose columns fit the GPU's budget; the CPU's plan makes
/// room for Winograd on the 3x3 stride-1 layers. Both keep the invariant.
#[test]
fn the_gpu_plan_sizes_workspaces_and_chunks_for_im2col_alone() {
    use sliceout::ir::Target;
    for keep in [1.0, 0.5] {
        let c = wrn(28, 10, keep);
        let gpu_lowering = Lowering { target: Target::Cuda, ..Lowering::default() };
        let gpu = lowered(&c, 128, Mode::Train, gpu_lowering);
        let cpu = lowered(&c, 128, Mode::Train, Lowering::default());
        plan::check(&gpu.lifetimes, &gpu.placement, plan::ALIGN).unwrap();
        let budget = Options::default().col_budget(Target::Cuda) * (1 << 20);
        assert_eq!(budget, 512 << 20);
        for (len, width, shape, chunk) in conv_workspaces(&gpu) {
            assert_eq!(len, shape.im2col_len(width, chunk), "{shape:?}");
            assert!(len * 4 <= budget || chunk == 1, "{shape:?} chunk {chunk}");
            assert!(chunk == shape.n || shape.im2col_len(width, chunk + 1) * 4 > budget, "{shape:?} chunk {chunk}");
        }
        let larger = conv_workspaces(&cpu).iter().filter(|(len, w, s, ch)| *len > s.im2col_len(*w, *ch)).count();
        assert!(larger > 0, "the CPU plan sizes some workspaces for Winograd");
        println!(
            "keep {keep}: arena {:.1} MiB on the GPU, {:.1} MiB on the CPU",
            gpu.arena_bytes() as f64 / MIB,
            cpu.arena_bytes() as f64 / MIB
        );
    }
}

/// The GPU plan of a WRN-28-10 step at batch 128 queues at most 1,000 kernel launches and cuBLAS
/// calls, counted from the program, at keep 1.0 and at keep 0.5 with every slice wrapping; a
/// sliced convolution runs on its weight slice's copy, so wrapping costs no GEMM and a sliced
/// step no more GEMMs than the full one.
#[test]
fn a_gpu_step_of_wrn_28_10_queues_under_a_thousand_calls() {
    use sliceout::ir::Target;
    let options = Lowering { target: Target::Cuda, ..Lowering::default() };
    let count = |keep: f64, wrap: bool| {
        let p = lowered(&wrn(28, 10, keep), 128, Mode::Train, options);
        let starts: Vec<usize> = p.schedule.slices.iter().map(|s| if wrap { s.channels - 1 } else { 0 }).collect();
        let rec = sliceout::backend::cuda::record_step(&p, &starts);
        let (launches, gemms) = (rec.launches.borrow().len(), rec.gemms.borrow().len());
        let count = |name: &str| rec.launches.borrow().iter().filter(|(k, _)| *k == name).count();
        let (slices, flips) = (count("weight_slice"), count("weight_flip"));
        println!("keep {keep} wrapping {wrap}: {launches} launches ({slices} weight slices, {flips} flipped) + {gemms} GEMMs");
        (launches, gemms, slices, flips)
    };
    let (full_launches, full_gemms, full_slices, _) = count(1.0, false);
    assert!(full_launches + full_gemms <= 1000, "{full_launches} + {full_gemms}");
    assert_eq!(full_slices, 0, "an unsliced step copies no weight slice");
    let (launches, gemms, slices, flips) = count(0.5, true);
    assert!(launches + gemms <= 1000, "{launches} + {gemms}");
    // conv1 and conv2 of 12 blocks, each copied by its forward and its backward op (sliced, or
    // flipped where the input gradient is a convolution).
    assert_eq!(slices + flips, 4 * 12);
    assert_eq!(gemms, count(0.5, false).1, "wrapping slices cost no GEMM");
    assert!(gemms <= full_gemms);
}

/// `--input-grad conv` (the default) on the GPU's WRN-28-10 step (batch 128), fp32 and bf16:
/// every backward conv that may (stride 1, 3x3, output no wider than its input) computes its
/// input gradient by convolution through its own flipped weight (in the storage type), and only
/// the others queue col2im; the step stays under 1,000 launches and GEMMs with as many GEMMs as
/// with `--input-grad col2im`; the arena grows by less than 16 MiB. Measured (fp32): keep 1.0,
/// 21 layers, col2im launches 83 -> 6, launches 470 -> 491 (a `weight_flip` each), arena +14.1
/// MiB (a 640-channel layer's flipped copy, alive through its op, at the peak); keep 0.5, 9
/// layers (the conv1s after each group's first: a conv2's output is twice its sliced input),
/// col2im 63 -> 30, launches and arena unchanged. The CPU's and eval programs are unchanged.
#[test]
fn an_input_gradient_by_convolution_replaces_col2im_where_it_may() {
    use sliceout::ir::Target;
    use sliceout::ops::conv2d::lowering::input_grad_by_conv_fits;
    use sliceout::ops::{ConvAlgo, Op};
    use sliceout::schedule::InputGrad;
    let gpu = Lowering { target: Target::Cuda, input_grad: InputGrad::Col2im, ..Lowering::default() };
    let conv = Lowering { input_grad: InputGrad::Conv, ..gpu };
    assert_eq!(Lowering { target: Target::Cuda, ..Lowering::default() }, conv, "the default");
    let runs = [(1.0, false, Precision::Fp32), (0.5, false, Precision::Fp32), (0.5, true, Precision::Fp32)];
    for (keep, wrap, precision) in runs.into_iter().chain([(0.5, true, Precision::Bf16), (1.0, false, Precision::Bf16)])
    {
        let c = wrn(28, 10, keep);
        let (gpu, conv) = (Lowering { precision, ..gpu }, Lowering { precision, ..conv });
        let (before, after) = (lowered(&c, 128, Mode::Train, gpu), lowered(&c, 128, Mode::Train, conv));
        plan::check(&after.lifetimes, &after.placement, plan::ALIGN).unwrap();
        let s = &after.schedule;
        let starts: Vec<usize> = s.slices.iter().map(|s| if wrap { s.channels - 1 } else { 0 }).collect();
        // Which backward ops compute d_inp by convolution, and how many col2im the others queue.
        let (mut by_conv, mut col2ims) = (0, 0);
        for step in &s.steps {
            let Op::ConvBackward(b) = &step.op else { continue };
            let (ow, iw) = (b.out_sel.width(&s.slices), b.in_sel.width(&s.slices));
            let may = b.d_inp.is_some() && input_grad_by_conv_fits(&b.shape, ow, iw);
            assert_eq!(b.algo.input_grad_by_conv(), may, "{}", step.name());
            if let ConvAlgo::InputGradByConv { flipped } = b.algo {
                by_conv += 1;
                let copy = &s.buffers[flipped];
                assert!(copy.name.ends_with(".weight_flip"), "{}", copy.name);
                assert_eq!((copy.kind, copy.dtype, copy.len), (BufKind::WeightCopy, precision.storage(), ow * iw * 9));
            } else if b.d_inp.is_some() && !b.shape.direct() {
                col2ims += b.shape.n.div_ceil(b.shape.chunk_images(b.chunk));
            }
        }
        let record = |p: &Program| {
            let rec = sliceout::backend::cuda::record_step(p, &starts);
            let launches = rec.launches.borrow();
            let count = |k: &str| launches.iter().filter(|(n, _)| *n == k).count();
            let gemms = rec.gemms.borrow().len();
            let name = |k: &'static str| if precision == Precision::Bf16 { format!("{k}_bf16") } else { k.into() };
            (launches.len(), gemms, count(&name("col2im")), count(&name("weight_flip")))
        };
        let (l0, g0, c0, f0) = record(&before);
        let (l1, g1, c1, f1) = record(&after);
        let grow = (after.arena_bytes() as f64 - before.arena_bytes() as f64) / MIB;
        println!(
            "{precision:?} keep {keep} wrapping {wrap}: {by_conv} layers by convolution; launches {l0} -> {l1}, GEMMs {g0} -> {g1}, \
             col2im {c0} -> {c1}, weight_flip {f1}; arena {:.1} -> {:.1} MiB ({grow:+.1})",
            before.arena_bytes() as f64 / MIB,
            after.arena_bytes() as f64 / MIB
        );
        assert!(by_conv > 0 && f0 == 0 && f1 == by_conv);
        assert_eq!(c1, col2ims, "only the layers that may not queue col2im");
        assert!(c1 < c0);
        assert!(l1 + g1 <= 1000, "{l1} + {g1}");
        assert_eq!(g1, g0, "one GEMM per chunk either way");
        assert!(grow < 16.0, "the arena grows by {grow:.1} MiB");
    }
    // Only the GPU's training programs change.
    let c = wrn(16, 4, 0.5);
    for (o, mode) in [
        (Lowering { input_grad: InputGrad::Conv, ..Lowering::default() }, Mode::Train),
        (bf16(Lowering { input_grad: InputGrad::Conv, ..Lowering::default() }), Mode::Train),
        (conv, Mode::Eval),
    ] {
        let off = Lowering { input_grad: InputGrad::Col2im, ..o };
        let (a, b) = (lowered(&c, 32, mode, o), lowered(&c, 32, mode, off));
        assert_eq!(a.arena_bytes(), b.arena_bytes(), "{o:?}");
        let listing = |p: &Program| -> Vec<String> {
            let buffers = p.schedule.buffers.iter().map(|b| format!("{b:?}"));
            buffers.chain(p.schedule.steps.iter().map(|s| format!("{:?}", s.op))).collect()
        };
        assert_eq!(listing(&a), listing(&b), "{o:?}");
    }
}

/// `plan --fit` through the command line: the batch it reports fits the budget with everything
/// counted, one more image does not, and a batch that cannot fit is a clear error.
#[test]
fn plan_fit_reports_the_largest_batch_and_refuses_what_cannot_fit() {
    use clap::Parser;
    use sliceout::cmd::flags::{Cli, Command};
    use sliceout::data::DatasetKind;
    use sliceout::fit;
    use sliceout::ir::Target;
    let run = |args: &[&str]| {
        let cli = Cli::parse_from([&["sliceout", "plan"], args].concat());
        let Some(Command::Plan(f)) = cli.command else { unreachable!() };
        sliceout::cmd::plan::command(&f)
    };
    let text = run(&["--fit", "3GiB", "--depth", "16", "--widen", "4", "--keep", "0.5", "--device", "cuda"]).unwrap();
    let line = text.lines().find(|l| l.starts_with("largest batch:")).expect("a largest batch line");
    let batch: usize = line.split_whitespace().nth(2).unwrap().parse().unwrap();
    let c = wrn(16, 4, 0.5);
    let fixed: usize = fit::overheads(Target::Cuda, DatasetKind::Cifar10).iter().map(|t| t.bytes).sum();
    let gpu = Lowering { target: Target::Cuda, ..Lowering::default() };
    let best = fit::option_ladder().iter().map(|(_, o)| fit::step_bytes(&c, batch, *o, gpu)).min().unwrap();
    assert!(best + fixed <= 3 << 30, "{line}");
    for (_, o) in fit::option_ladder() {
        assert!(fit::step_bytes(&c, batch + 1, o, gpu) + fixed > 3 << 30, "{line}: batch + 1 fits");
    }
    assert!(text.contains(&format!("memory plan: WRN-16-4  batch {batch}")), "the plan follows");
    let err =
        run(&["--fit", "1GiB", "--batch", "100000", "--depth", "16", "--widen", "4", "--device", "cuda"]).unwrap_err();
    assert!(err.to_string().starts_with("does not fit:") && err.to_string().contains("have 1.00 GiB"), "{err}");
    let err = run(&["--fit", "lots"]).unwrap_err();
    assert!(err.to_string().contains("--fit"), "{err}");
}

fn bf16(o: Lowering) -> Lowering {
    Lowering { precision: Precision::Bf16, ..o }
}

/// What a bf16 step keeps in f32 besides weight gradients (model/wrn.rs says why): BN batch
/// statistics, the labels, and the head after the pool.
fn stays_f32(name: &str) -> bool {
    name.ends_with(".stats") || ["labels", "pool.out", "logits", "loss", "d_logits", "pool.d_out"].contains(&name)
}

/// A bf16 step has the fp32 step's ops and persistent region; each activation and gradient has
/// the same length and half the bytes; weight gradients, statistics and the head stay f32; the
/// planner places bytes of each buffer's element type.
#[test]
fn a_bf16_step_stores_activations_and_their_gradients_in_half_the_bytes() {
    use sliceout::ir::Target;
    use std::collections::HashMap;
    for target in [Target::Cpu, Target::Cuda] {
        let o = Lowering { target, ..Lowering::default() };
        let f = lowered(&wrn(16, 4, 0.5), 8, Mode::Train, o);
        let h = lowered(&wrn(16, 4, 0.5), 8, Mode::Train, bf16(o));
        let names = |p: &Program| p.schedule.steps.iter().map(|s| s.name()).collect::<Vec<_>>();
        assert_eq!(names(&f), names(&h));
        for (a, b) in f.schedule.tensors.iter().zip(&h.schedule.tensors) {
            assert_eq!((&a.name, &a.shape, a.offset), (&b.name, &b.shape, b.offset));
        }
        assert_eq!(f.schedule.tensors.len(), h.schedule.tensors.len());
        // An fp32 step copies weight slices (some flipped) in f32 on the GPU only (`ops::conv2d`).
        assert!(f.schedule.buffers.iter().all(|b| b.dtype == Dtype::F32
            && (b.kind != BufKind::WeightCopy
                || (target == Target::Cuda && (b.name.contains(".weight_slice") || b.name.contains(".weight_flip"))))));
        let fp32: HashMap<&str, usize> =
            f.schedule.buffers.iter().zip(&f.lifetimes).map(|(b, l)| (b.name.as_str(), l.bytes)).collect();
        let (mut halved, mut kept) = (0, 0);
        for (b, l) in h.schedule.buffers.iter().zip(&h.lifetimes) {
            assert_eq!(l.bytes, b.len * b.dtype.size(), "{}", b.name);
            match b.kind {
                // bf16 copies replace the GPU's f32 ones; workspaces are sized by their own
                // chunks (below).
                BufKind::WeightCopy | BufKind::Workspace => {
                    assert_eq!(b.dtype, Dtype::Bf16, "{}", b.name);
                    continue;
                }
                BufKind::WeightGradient => assert_eq!(b.dtype, Dtype::F32, "{}", b.name),
                _ if stays_f32(&b.name) => assert_eq!(b.dtype, Dtype::F32, "{}", b.name),
                _ => assert_eq!(b.dtype, Dtype::Bf16, "{}", b.name),
            }
            let before = fp32[b.name.as_str()];
            if b.dtype == Dtype::Bf16 {
                assert_eq!(2 * l.bytes, before, "{}", b.name);
                halved += 1;
            } else {
                assert_eq!(l.bytes, before, "{}", b.name);
                kept += 1;
            }
        }
        assert!(halved > 50 && kept > 50, "{halved} halved, {kept} kept");
        assert!(h.arena_bytes() < f.arena_bytes() * 6 / 10, "{} vs {}", h.arena_bytes(), f.arena_bytes());
    }
}

/// Each convolution's forward op of a bf16 step writes a bf16 copy of the weight's slice; it
/// lives until the backward op that computes the input's gradient (the last GEMM reading it),
/// which comes before the weight's update, or ends with the forward op when there is none.
#[test]
fn each_conv_of_a_bf16_step_reads_a_sliced_bf16_weight_copy_until_its_last_gemm() {
    use sliceout::ops::Op;
    let c = wrn(16, 4, 0.5);
    for mode in [Mode::Train, Mode::Eval] {
        let fp32 = lowered(&c, 8, mode, Lowering::default());
        assert!(fp32.schedule.steps.iter().all(|s| match &s.op {
            Op::Conv(v) => v.algo.weight_copy().is_none(),
            Op::ConvBackward(v) => v.algo.weight_copy().is_none(),
            _ => true,
        }));
        let p = lowered(&c, 8, mode, bf16(Lowering::default()));
        let s = &p.schedule;
        let mut copies = 0;
        for (i, step) in s.steps.iter().enumerate() {
            let Op::Conv(conv) = &step.op else { continue };
            let copy = conv.algo.weight_copy().expect("a bf16 conv writes a weight copy");
            let (b, l) = (&s.buffers[copy], p.lifetimes[copy]);
            let (ow, iw) = (conv.out_sel.width(&s.slices), conv.in_sel.width(&s.slices));
            assert_eq!(
                (b.kind, b.dtype, b.len),
                (BufKind::WeightCopy, Dtype::Bf16, ow * iw * conv.shape.kk()),
                "{}",
                b.name
            );
            assert_eq!(b.sliced, ow < conv.shape.cout || iw < conv.shape.cin, "{}", b.name);
            assert_eq!(b.name, format!("{}.weight_bf16", step.layer));
            assert_eq!(l.first, i, "{}: made by the forward op", b.name);
            let readers: Vec<usize> = s
                .steps
                .iter()
                .enumerate()
                .filter(|(_, st)| matches!(&st.op, Op::ConvBackward(v) if v.algo.weight_copy() == Some(copy)))
                .map(|(j, _)| j)
                .collect();
            let backward =
                s.steps.iter().position(|st| matches!(&st.op, Op::ConvBackward(v) if v.weight == conv.weight));
            match backward.map(|j| (j, &s.steps[j].op)) {
                Some((j, Op::ConvBackward(v))) if v.d_inp.is_some() => {
                    assert_eq!((readers.as_slice(), l.last), (&[j][..], j), "{}", b.name);
                    let update = s.steps.iter().position(|st| matches!(&st.op, Op::Sgd(g) if g.param == conv.weight));
                    assert!(update.is_some_and(|u| u > j), "{}: read after its weight's update", b.name);
                }
                _ => assert_eq!((readers.len(), l.last), (0, i), "{}: no backward GEMM reads it", b.name),
            }
            copies += 1;
        }
        assert_eq!(copies, s.buffers.iter().filter(|b| b.kind == BufKind::WeightCopy).count());
        assert!(copies >= 13, "{copies}");
    }
}

/// A bf16 step holds im2col columns alone in its workspaces on both backends (the CPU's
/// Winograd path is f32 only), each chunk the largest whose bf16 columns fit the byte budget.
#[test]
fn bf16_workspaces_hold_im2col_columns_in_the_byte_budget() {
    use sliceout::ir::Target;
    for target in [Target::Cpu, Target::Cuda] {
        let o = bf16(Lowering { target, ..Lowering::default() });
        let p = lowered(&wrn(28, 10, 0.5), 128, Mode::Train, o);
        let budget = Options::default().col_budget(target) << 20;
        for (len, width, shape, chunk) in conv_workspaces(&p) {
            assert_eq!(len, shape.im2col_len(width, chunk), "{shape:?}");
            assert!(len * 2 <= budget || chunk == 1, "{shape:?} chunk {chunk}");
            assert!(chunk == shape.n || shape.im2col_len(width, chunk + 1) * 2 > budget, "{shape:?} chunk {chunk}");
        }
        let ws = p.schedule.buffers.iter().filter(|b| b.kind == BufKind::Workspace);
        assert!(ws.clone().count() > 20 && ws.into_iter().all(|b| b.dtype == Dtype::Bf16));
    }
}

/// WRN-28-10, batch 128, keep 0.5 in bf16: arena <= 520 MiB and total <= 800 MiB on the CPU's
/// plan, and on the GPU's with a 32 MiB im2col budget. The GPU's default 128 MiB budget keeps
/// its workspaces (and so the peak) larger: that plan is printed and held to 0.6 of fp32's.
#[test]
fn wrn_28_10_bf16_meets_the_memory_targets() {
    use sliceout::ir::Target;
    let c = wrn(28, 10, 0.5);
    let mib = |b: usize| b as f64 / MIB;
    let figures = |o: Options, l: Lowering| {
        let p = program(&c, 128, Mode::Train, o, l);
        let arena = p.arena_bytes();
        // The tensors' bytes (the region's 16-byte alignment gaps, a few floats, aside).
        let persistent: usize = p.schedule.tensors.iter().map(|t| t.len() * 4).sum();
        assert!(p.schedule.persistent_len() * 4 - persistent < 16 * p.schedule.tensors.len());
        (arena, arena + persistent)
    };
    let (cpu, gpu) = (Lowering::default(), Lowering { target: Target::Cuda, ..Lowering::default() });
    let (default, budget_32) = (Options::default(), Options { col_budget_mib: 32, ..Options::default() });
    for (what, o, l) in [("cpu", default, cpu), ("gpu", default, gpu), ("gpu, --col-budget 32", budget_32, gpu)] {
        let ((a16, t16), (a32, t32)) = (figures(o, bf16(l)), figures(o, l));
        println!(
            "{what}: bf16 arena {:.2} MiB, total {:.2} MiB; fp32 arena {:.2} MiB, total {:.2} MiB",
            mib(a16),
            mib(t16),
            mib(a32),
            mib(t32)
        );
        assert!(a16 * 10 <= a32 * 6, "{what}: bf16 arena {:.2} MiB against fp32 {:.2}", mib(a16), mib(a32));
        if what != "gpu" {
            assert!(mib(a16) <= 520.0 && mib(t16) <= 800.0, "{what}: arena {:.2}, total {:.2} MiB", mib(a16), mib(t16));
        }
    }
}

/// `sliceout plan --precision`: the element type of each buffer, both precisions' totals on one
/// line (equal to the programs'), the same in JSON, and no GPU call count for a bf16 step.
#[test]
fn plan_prints_element_types_and_both_precisions_totals() {
    use clap::Parser;
    use sliceout::cmd::flags::{Cli, Command};
    use sliceout::ir::Target;
    let run = |args: &[&str]| {
        let cli =
            Cli::parse_from([&["sliceout", "plan", "--depth", "16", "--widen", "4", "--batch", "32"], args].concat());
        let Some(Command::Plan(f)) = cli.command else { unreachable!() };
        sliceout::cmd::plan::command(&f).unwrap()
    };
    let totals = |o: Lowering| {
        let p = lowered(&wrn(16, 4, 0.5), 32, Mode::Train, o);
        let arena = p.arena_bytes();
        // The tensors' bytes (the region's 16-byte alignment gaps, a few floats, aside).
        let persistent: usize = p.schedule.tensors.iter().map(|t| t.len() * 4).sum();
        assert!(p.schedule.persistent_len() * 4 - persistent < 16 * p.schedule.tensors.len());
        (arena, arena + persistent)
    };
    let cuda = Lowering { target: Target::Cuda, ..Lowering::default() };
    let ((a16, t16), (a32, t32)) = (totals(bf16(cuda)), totals(cuda));
    let show = |a: usize, t: usize| format!("arena {:.2} MiB, total {:.2} MiB", a as f64 / MIB, t as f64 / MIB);
    let text = run(&["--keep", "0.5", "--device", "cuda", "--precision", "bf16"]);
    let line = text.lines().find(|l| l.starts_with("  precision")).expect("a precision line");
    assert_eq!(line, format!("  precision   bf16: {}; fp32: {}", show(a16, t16), show(a32, t32)));
    // What a bf16 step queues is counted from the CUDA code's recording, as for fp32.
    let p16 = lowered(&wrn(16, 4, 0.5), 32, Mode::Train, bf16(cuda));
    let calls = sliceout::backend::cuda::record_step(&p16, &vec![0; p16.schedule.slices.len()]);
    let (launches, gemms) = (calls.launches.borrow().len(), calls.gemms.borrow().len());
    assert!(
        text.lines().any(|l| l.contains("gpu step")
            && l.contains(&format!("{launches} kernel launches"))
            && l.contains(&format!("{gemms} cuBLAS GEMMs"))),
        "{text}"
    );
    let row = |name: &str| text.lines().find(|l| l.split_whitespace().nth(1) == Some(name)).unwrap().to_string();
    assert_eq!(row("block0.conv1.out").split_whitespace().nth(3), Some("bf16"));
    assert_eq!(row("block0.bn1.stats").split_whitespace().nth(3), Some("f32"));
    assert_eq!(row("block0.conv1.weight_bf16").split_whitespace().nth(2), Some("weight_copy"));
    let fp32 = run(&["--keep", "0.5", "--device", "cuda"]);
    let line = fp32.lines().find(|l| l.starts_with("  precision")).unwrap();
    assert_eq!(line, format!("  precision   fp32: {}; bf16: {}", show(a32, t32), show(a16, t16)));
    assert!(fp32.contains("gpu step") && !fp32.contains(" bf16 "));

    let v: serde_json::Value =
        serde_json::from_str(&run(&["--keep", "0.5", "--device", "cuda", "--precision", "bf16", "--format", "json"]))
            .unwrap();
    assert_eq!(v["precision"], "bf16");
    assert_eq!(v["arena_bytes"].as_u64(), Some(a16 as u64));
    let p = &v["precisions"];
    assert_eq!((&p[0]["precision"], p[0]["total_bytes"].as_u64()), (&"bf16".into(), Some(t16 as u64)));
    assert_eq!((&p[1]["precision"], p[1]["arena_bytes"].as_u64()), (&"fp32".into(), Some(a32 as u64)));
    let bufs = v["buffers"].as_array().unwrap();
    let dtype = |name: &str| bufs.iter().find(|b| b["name"] == name).unwrap()["dtype"].clone();
    assert_eq!((dtype("input"), dtype("labels"), dtype("fc.d_weight")), ("bf16".into(), "f32".into(), "f32".into()));
    assert!(bufs.iter().all(|b| b["dtype"] == "bf16" || b["dtype"] == "f32"));
}

/// bf16 runs on the CPU (a step gives a finite loss); a bad `--precision` is one line before any
/// work, on every command that takes the flag.
#[test]
fn bf16_runs_on_the_cpu_and_a_bad_precision_is_one_clear_line() {
    use sliceout::backend::{CpuBackend, Execute, Memory, StepCtx};
    use sliceout::ops::sgd::SgdParams;
    let p = lowered(&wrn(10, 1, 0.5), 2, Mode::Train, bf16(Lowering::default()));
    let sgd = SgdParams { lr: 0.1, momentum: 0.9, weight_decay: 0.0, nesterov: false };
    let starts = vec![0; p.schedule.slices.len()];
    let mut cpu = CpuBackend::new();
    cpu.reserve_arena(p.arena_bytes()).unwrap();
    cpu.set_persistent(&wrn::init_persistent(&p.schedule, 1)).unwrap();
    cpu.run(&p, &StepCtx::new(&starts, sgd));
    let mut loss = [0f32; 2];
    cpu.read(&p, p.schedule.loss, &mut loss);
    assert!(loss[0].is_finite(), "a bf16 step on the CPU gives a loss");

    let out = std::env::temp_dir().join(format!("sliceout-plan-bf16-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let bin = BIN;
    let model = ["--depth", "10", "--widen", "1", "--batch", "2"];
    for args in [
        vec!["train", "--precision", "fp16", "--data", "/nonexistent", "--out", out.to_str().unwrap()],
        [&["profile", "--precision", "fp16"], &model[..]].concat(),
        [&["plan", "--precision", "fp16"], &model[..]].concat(),
        vec!["eval", "--precision", "fp16", "--checkpoint", "/nonexistent", "--data", "/nonexistent"],
        vec!["bench", "--precision", "fp32,fp16", "--depth", "10", "--widen", "1", "--batch", "2"],
    ] {
        let r = std::process::Command::new(bin).args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert_eq!(err.trim_end(), "error: invalid value 'fp16' for --precision: expected fp32 or bf16", "{args:?}");
    }
    assert!(!out.exists(), "a refused run leaves no folder");
}

/// `[start, end)` bytes of a column-major operand `rows x cols` with leading dimension `ld`
/// (`trans`: stored as `cols x rows`) at `addr`, elements of `size` bytes.
fn operand_bytes(addr: u64, trans: bool, rows: usize, cols: usize, ld: usize, size: usize) -> (u64, u64) {
    let (r, c) = if trans { (cols, rows) } else { (rows, cols) };
    (addr, addr + (((c - 1) * ld + r) * size) as u64)
}

/// What a bf16 step of WRN-16-4 (keep 0.5, every slice wrapping) queues on a GPU, recorded
/// without one: the `_bf16` variant of every kernel that touches a bf16 buffer and never its f32
/// twin; f32 kernels for the f32 head, loss and SGD; every GEMM on `CUDA_R_16BF` operands
/// writing bf16, but the weight gradients f32. And every GEMM operand lies inside one buffer of
/// its type with elements 2 bytes apart for bf16 (4 for f32): with 4-byte steps a bf16 GEMM's
/// last chunk would run past its buffer. The fp32 step queues the f32 kernels, as before.
#[test]
fn a_bf16_gpu_step_queues_bf16_kernels_and_gemms_inside_their_buffers() {
    use sliceout::backend::cuda::{record_step, RECORD_ARENA};
    use sliceout::ir::Target;
    for precision in Precision::ALL {
        let options = Lowering { target: Target::Cuda, precision, ..Lowering::default() };
        let p = lowered(&wrn(16, 4, 0.5), 8, Mode::Train, options);
        let starts: Vec<usize> = p.schedule.slices.iter().map(|s| s.channels - s.width / 2).collect();
        let rec = record_step(&p, &starts);
        let mut names: Vec<&str> = rec.launches.borrow().iter().map(|l| l.0).collect();
        names.sort();
        names.dedup();
        let storage = [
            "add",
            "avgpool_backward",
            "avgpool_forward",
            "bn_backward_sums",
            "bn_relu_backward",
            "bn_relu_apply",
            "bn_stats",
            "col2im",
            "gather_batch",
            "im2col",
            "weight_flip",
            "weight_slice",
        ];
        let f32_only = ["cross_entropy", "linear_backward", "linear_forward", "sgd"];
        let mut want: Vec<String> = f32_only.iter().map(|k| k.to_string()).collect();
        want.extend(storage.iter().map(|k| match precision {
            Precision::Fp32 => k.to_string(),
            Precision::Bf16 => format!("{k}_bf16"),
        }));
        want.sort();
        assert_eq!(names, want, "{precision:?}");

        let s = &p.schedule;
        let dtype = precision.storage();
        let gemms = rec.gemms.borrow();
        assert!(!gemms.is_empty());
        for g in gemms.iter() {
            let grad = g.label == "gemm: weight gradient";
            assert_eq!(g.ab_type, dtype, "{g:?}");
            assert_eq!(g.c_type, if grad { Dtype::F32 } else { dtype }, "{g:?}");
            let ab = g.ab_type.size();
            let spans = [
                (operand_bytes(g.a, g.transa, g.m, g.k, g.lda, ab), g.ab_type),
                (operand_bytes(g.b, g.transb, g.k, g.n, g.ldb, ab), g.ab_type),
                (operand_bytes(g.c, false, g.m, g.n, g.ldc, g.c_type.size()), g.c_type),
            ];
            for ((start, end), t) in spans {
                if start >= 1 << 44 {
                    // The f32 parameter itself (an unsliced conv of an fp32 step).
                    assert_eq!((precision, t), (Precision::Fp32, Dtype::F32), "{g:?}");
                    continue;
                }
                let inside = s.buffers.iter().zip(&p.locs).any(|(b, &(words, len))| {
                    let base = RECORD_ARENA + 4 * words as u64;
                    b.dtype == t
                        && base <= start
                        && end <= base + (len * t.size()) as u64
                        && (start - base).is_multiple_of(t.size() as u64)
                });
                assert!(
                    inside,
                    "{precision:?}: {g:?} operand [{start:#x}, {end:#x}) is not inside one {} buffer",
                    t.as_str()
                );
            }
        }
    }
}

/// `plan --sweep keep`: every keep gets a largest batch, and one larger than the budget allows
/// none says so ("none") rather than showing a batch of 0; the budget is printed as given.
#[test]
fn a_keep_sweep_names_the_largest_batch_or_none() {
    use clap::Parser;
    use sliceout::cmd::flags::{Cli, Command};
    let run = |args: &[&str]| {
        let cli = Cli::parse_from([&["sliceout", "plan", "--sweep", "keep", "--device", "cpu"], args].concat());
        let Some(Command::Plan(f)) = cli.command else { unreachable!() };
        sliceout::cmd::plan::command(&f).unwrap()
    };
    let rows = |text: &str| -> Vec<String> {
        text.lines().skip(2).map(|l| l.split_whitespace().last().unwrap().to_string()).collect()
    };
    let roomy = run(&["--fit", "4GiB"]);
    assert!(roomy.lines().next().unwrap().ends_with("within 4.0 GiB"), "{roomy}");
    let batches: Vec<usize> = rows(&roomy).iter().map(|b| b.parse().unwrap()).collect();
    assert!(batches.len() > 3 && batches.iter().all(|&b| b > 0), "{roomy}");
    // Less keep, less memory: never a smaller largest batch.
    assert!(batches.windows(2).all(|w| w[0] <= w[1]), "{roomy}");
    // The value swept is not also given.
    for (sweep, flag) in [("keep", "--keep"), ("batch", "--batch")] {
        let cli = Cli::parse_from(["sliceout", "plan", "--sweep", sweep, flag, "1", "--device", "cpu"]);
        let Some(Command::Plan(f)) = cli.command else { unreachable!() };
        let msg = sliceout::cmd::plan::command(&f).unwrap_err().to_string();
        assert!(msg.contains(flag) && msg.contains("--sweep"), "{msg}");
    }
    let tight = run(&["--fit", "1KiB"]);
    assert!(tight.lines().next().unwrap().ends_with("within 1.0 KiB"), "{tight}");
    assert!(rows(&tight).iter().all(|b| b == "none"), "{tight}");
}

/// `--winograd` on the GPU's fp32 WRN-28-10 plan, as a recorder sees the step (no GPU needed):
/// the eligible layers (3x3, stride 1, 4 or more input channels) queue the Winograd kernels and
/// one 16-product batch per product and chunk (the forward one; the weight gradient's and,
/// with `d_inp`, the input gradient's), with every product of each batch inside the arena; they
/// make no weight copy; the other layers are as before. bf16 and CPU plans ignore the option.
#[test]
fn a_winograd_step_queues_batched_products_inside_the_arena() {
    use sliceout::backend::cuda::{record_step, RECORD_ARENA};
    use sliceout::ir::Target;
    use sliceout::ops::Op;
    let gpu = Lowering { target: Target::Cuda, ..Lowering::default() };
    let wino = Lowering { winograd: true, ..gpu };
    for (keep, wrap) in [(1.0, false), (0.5, true)] {
        let c = wrn(28, 10, keep);
        let (before, after) = (lowered(&c, 128, Mode::Train, gpu), lowered(&c, 128, Mode::Train, wino));
        plan::check(&after.lifetimes, &after.placement, plan::ALIGN).unwrap();
        let s = &after.schedule;
        let starts: Vec<usize> = s.slices.iter().map(|s| if wrap { s.channels - 1 } else { 0 }).collect();
        // What the plan says: forward and backward ops by Winograd, chunks, input gradients.
        let (mut forward, mut backward, mut with_d_inp, mut batches) = (0, 0, 0, 0);
        for step in &s.steps {
            let chunks = |n: usize, chunk: usize| n.div_ceil(chunk.clamp(1, n));
            match &step.op {
                Op::Conv(o) if o.algo.is_winograd() => {
                    forward += 1;
                    batches += chunks(o.shape.n, o.chunk);
                }
                Op::ConvBackward(o) if o.algo.is_winograd() => {
                    backward += 1;
                    with_d_inp += o.d_inp.is_some() as usize;
                    batches += chunks(o.shape.n, o.chunk) * (1 + o.d_inp.is_some() as usize);
                }
                Op::Conv(o) => assert!(o.shape.k != 3 || o.shape.stride != 1 || o.shape.cin < 4, "{}", step.name()),
                _ => {}
            }
        }
        // WRN-28-10: 22 of the 28 convolutions (not the first, the two stride-2 ones or the three
        // 1x1 shortcuts).
        assert_eq!((forward, backward), (22, 22), "keep {keep}");
        let rec = record_step(&after, &starts);
        let launches = rec.launches.borrow();
        let count = |k: &str| launches.iter().filter(|(n, _)| *n == k).count();
        assert_eq!(count("winograd_weight"), forward + with_d_inp);
        assert_eq!(count("winograd_weight_grad"), backward);
        let gemms = rec.gemms.borrow();
        let batched: Vec<_> = gemms.iter().filter(|g| g.batch > 1).collect();
        assert_eq!(batched.len(), batches, "keep {keep}");
        let end = RECORD_ARENA + after.arena_bytes() as u64;
        for g in &batched {
            assert_eq!((g.batch, g.ab_type, g.c_type), (16, sliceout::ir::Dtype::F32, sliceout::ir::Dtype::F32));
            // The last product's operands, as cuBLAS reads them (column-major, leading dimensions).
            let extent = |base: u64, stride: usize, rows: usize, cols: usize, ld: usize| {
                base + 4 * (15 * stride + (cols - 1) * ld + rows) as u64
            };
            let (ar, ac) = if g.transa { (g.k, g.m) } else { (g.m, g.k) };
            let (br, bc) = if g.transb { (g.n, g.k) } else { (g.k, g.n) };
            for (base, last) in [
                (g.a, extent(g.a, g.strides[0], ar, ac, g.lda)),
                (g.b, extent(g.b, g.strides[1], br, bc, g.ldb)),
                (g.c, extent(g.c, g.strides[2], g.m, g.n, g.ldc)),
            ] {
                assert!(base >= RECORD_ARENA && last <= end, "{g:?}");
            }
        }
        let (old, new) = (record_step(&before, &starts), rec.launches.borrow().len());
        let copies = |r: &[(&str, _)]| r.iter().filter(|(n, _)| *n == "weight_slice" || *n == "weight_flip").count();
        assert!(copies(&launches) < copies(&old.launches.borrow()), "keep {keep}");
        println!(
            "keep {keep}: {forward} forward and {backward} backward ops by Winograd; launches {} -> {new}, \
             GEMMs {} -> {}; arena {:.1} -> {:.1} MiB",
            old.launches.borrow().len(),
            old.gemms.borrow().len(),
            gemms.len(),
            before.arena_bytes() as f64 / MIB,
            after.arena_bytes() as f64 / MIB
        );
    }
    // bf16 and CPU plans are the same with the option as without.
    let c = wrn(16, 4, 0.5);
    for o in [bf16(gpu), Lowering::default()] {
        let (a, b) = (lowered(&c, 32, Mode::Train, o), lowered(&c, 32, Mode::Train, Lowering { winograd: true, ..o }));
        let listing = |p: &Program| -> Vec<String> {
            let buffers = p.schedule.buffers.iter().map(|b| format!("{b:?}"));
            buffers.chain(p.schedule.steps.iter().map(|s| format!("{:?}", s.op))).collect()
        };
        assert_eq!(listing(&a), listing(&b), "{o:?}");
    }
}

/// Every kernel launch of a recorded step passes as many arguments as its kernel declares in
/// its `.cu` file (a missing or extra argument would only show on a GPU, as garbage or a
/// fault), across the programs a GPU runs: fp32 with each input-gradient route, with Winograd,
/// bf16, evaluation and BN recalibration, sliced and wrapping.
#[test]
fn every_recorded_launch_passes_the_parameters_its_kernel_declares() {
    use sliceout::backend::cuda::record_step;
    use sliceout::gpu::kernel_params;
    use sliceout::ir::Target;
    use sliceout::ops::KERNEL_FILES;
    use sliceout::schedule::InputGrad;
    let gpu = Lowering { target: Target::Cuda, ..Lowering::default() };
    let programs = [
        (0.5, Mode::Train, gpu),
        (0.5, Mode::Train, Lowering { input_grad: InputGrad::Col2im, ..gpu }),
        (0.5, Mode::Train, Lowering { winograd: true, ..gpu }),
        (1.0, Mode::Train, Lowering { winograd: true, ..gpu }),
        (0.5, Mode::Train, Lowering { sgd_group: true, ..gpu }),
        (0.5, Mode::Train, bf16(gpu)),
        (0.5, Mode::Train, Lowering { fold_bn: true, ..gpu }),
        (0.5, Mode::Train, bf16(Lowering { fold_bn: true, ..gpu })),
        (1.0, Mode::Eval, gpu),
        (0.5, Mode::Calibrate, gpu),
    ];
    let mut seen = std::collections::BTreeSet::new();
    for (keep, mode, o) in programs {
        let p = lowered(&wrn(16, 4, keep), 32, mode, o);
        let starts: Vec<usize> = p.schedule.slices.iter().map(|s| s.channels - 1).collect();
        let rec = record_step(&p, &starts);
        let (launches, counts) = (rec.launches.borrow(), rec.arg_counts.borrow());
        assert_eq!(launches.len(), counts.len());
        for ((name, _), &passed) in launches.iter().zip(counts.iter()) {
            let declared = KERNEL_FILES.iter().find_map(|(_, src)| kernel_params(src, name));
            assert_eq!(declared, Some(passed), "{name} in {mode:?} {o:?}");
            seen.insert(*name);
        }
    }
    let folded = ["im2col_bn_relu", "im2col_bn_relu_bf16"];
    for k in
        ["im2col", "col2im", "weight_flip", "winograd_input", "winograd_output", "bn_stats_bf16", "sgd", "sgd_multi"]
            .iter()
            .chain(&folded)
    {
        assert!(seen.contains(k), "{k} was never launched: {seen:?}");
    }
}

/// Kernels are resolved once, when a launcher is made, never at a launch: a recorder resolving
/// the kernel table as a GPU does looks each name up once, and two recorded steps of a grouped
/// bf16 program add their launches and no lookup. A name no kernel file defines is refused when
/// the table is resolved, naming it.
#[test]
fn kernels_are_resolved_once_and_launches_look_nothing_up() {
    use sliceout::backend::cuda::record;
    use sliceout::gpu::Recorder;
    use sliceout::ir::Target;
    use sliceout::ops::{kernels, KERNEL_FILES};
    let rec = Recorder::new(KERNEL_FILES, kernels::NAMES).unwrap();
    let names = kernels::NAMES.len();
    assert_eq!(rec.lookups(), names);
    let gpu = Lowering { target: Target::Cuda, sgd_group: true, ..Lowering::default() };
    let p = lowered(&wrn(16, 4, 0.5), 8, Mode::Train, bf16(gpu));
    let wrapping: Vec<usize> = p.schedule.slices.iter().map(|s| s.channels - 1).collect();
    record(&rec, &p, &wrapping);
    let first = rec.launches.borrow().len();
    assert!(first > 100, "{first} launches");
    assert_eq!(rec.lookups(), names, "the first step looked nothing up");
    record(&rec, &p, &wrapping);
    assert_eq!(rec.launches.borrow().len(), 2 * first);
    assert_eq!(rec.lookups(), names, "nor did the second");
    let err = Recorder::new(KERNEL_FILES, &["im2col", "im2col_f16"]).err().expect("an unknown kernel").to_string();
    assert!(err.contains("`im2col_f16`") && err.contains("no kernel file"), "{err}");
}

/// `--fold-bn`: where every convolution that reads a recomputed BN + ReLU output gathers it by
/// im2col (not Winograd's transforms, not a direct 1x1 stride-1 layer), its backward reads the
/// BN's input and statistics instead, and the output is neither recomputed nor planned. Off
/// unless asked for; on WRN-28-10 (batch 128) the plans where
/// a folded buffer was at the peak shrink (the GPU's at keep 0.5 by a 40 MiB `bn1.out_re`, the
/// CPU's bf16 ones), and none grows.
#[test]
fn folding_bn_into_im2col_drops_the_recomputed_outputs_and_shrinks_the_arena() {
    use sliceout::ir::Target;
    use sliceout::ops::{ConvAlgo, Op};
    let (cpu, gpu) = (Lowering::default(), Lowering { target: Target::Cuda, ..Lowering::default() });
    assert!(!cpu.fold_bn && !gpu.fold_bn, "off by default");
    let recomputed = |p: &Program| p.schedule.steps.iter().filter(|s| matches!(s.op, Op::BnReluApply(_))).count();
    let mut shrunk = vec![];
    for (keep, l) in [(0.5, gpu), (1.0, gpu), (0.5, bf16(gpu)), (0.5, cpu), (0.5, bf16(cpu)), (1.0, bf16(cpu))] {
        let (on, off) = (Lowering { fold_bn: true, ..l }, l);
        let (on, off) =
            (lowered(&wrn(28, 10, keep), 128, Mode::Train, on), lowered(&wrn(28, 10, keep), 128, Mode::Train, off));
        let s = &on.schedule;
        let mut folded = 0;
        for step in &s.steps {
            let Op::ConvBackward(c) = &step.op else { continue };
            let Some(b) = c.prologue else { continue };
            folded += 1;
            assert!(!c.algo.is_winograd() && !c.shape.direct(), "{} folds by im2col", step.name());
            // The BN's input and saved statistics, both written in forward.
            let bn_input = s.steps.iter().find_map(|f| match &f.op {
                Op::BnReluTrain(t) if t.stats == b.stats => Some(t.inp),
                _ => None,
            });
            assert_eq!(bn_input, Some(c.inp), "{} reads the BN's input", step.name());
        }
        let readers = |p: &Program| {
            p.schedule
                .steps
                .iter()
                .filter(|s| matches!(&s.op, Op::ConvBackward(c) if c.algo != ConvAlgo::Winograd && !c.shape.direct()))
                .count()
        };
        assert_eq!(readers(&on), readers(&off));
        // Each folded output was one recompute op and one buffer fewer.
        let dropped = recomputed(&off) - recomputed(&on);
        assert!(dropped > 0 && folded >= dropped, "keep {keep} {l:?}: {folded} folded, {dropped} dropped");
        assert_eq!(off.schedule.buffers.len() - s.buffers.len(), dropped);
        // What is still recomputed has a reader that cannot fold (Winograd, a direct 1x1 layer).
        let cannot = |c: &sliceout::ops::ConvBackward| c.algo.is_winograd() || c.shape.direct();
        for (id, b) in s.buffers.iter().enumerate().filter(|(_, b)| b.name.ends_with(".out_re")) {
            let unfolded = s.steps.iter().any(|st| matches!(&st.op, Op::ConvBackward(c) if c.inp == id && cannot(c)));
            assert!(unfolded, "keep {keep} {l:?}: {} is recomputed, yet every reader folds", b.name);
        }
        let mib = |p: &Program| p.arena_bytes() as f64 / MIB;
        println!(
            "keep {keep} {:?} {:?}: arena {:.2} -> {:.2} MiB, {dropped} recomputes dropped",
            l.target,
            l.precision,
            mib(&off),
            mib(&on)
        );
        assert!(on.arena_bytes() <= off.arena_bytes(), "keep {keep} {l:?}: the arena grew");
        shrunk.push(off.arena_bytes() - on.arena_bytes());
    }
    // The GPU's keep-0.5 peak held block7.bn1.out_re (320 channels x 128 x 16 x 16 floats).
    assert!(shrunk[0] >= 40 << 20, "GPU keep 0.5 saved {} bytes", shrunk[0]);
    assert!(shrunk[4] > 0 && shrunk[5] > 0, "the CPU's bf16 plans shrink: {shrunk:?}");
}
