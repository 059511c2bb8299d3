//! The memory plan of real schedules: the invariant holds, the sizes the issue asks for are met
//! (WRN-28-10, batch 128, train: persistent + arena <= 2400 MiB at keep 1.0 and <= 1900 MiB at
//! keep 0.5, arena at keep 0.5 <= 0.80 of keep 1.0), and each memory option shows its effect.

use sliceout::ir::{BufKind, Role};
use sliceout::model::{wrn, ModelConfig};
use sliceout::plan::Program;
use sliceout::plan::{self, report};
use sliceout::schedule::{Mode, Options, UpdateAt};

const MIB: f64 = (1 << 20) as f64;

fn wrn(depth: usize, widen: usize, keep: f64) -> ModelConfig {
    ModelConfig { depth, widen, classes: 10, in_channels: 3, keep }
}

fn program(c: &ModelConfig, batch: usize, mode: Mode, o: Options) -> Program {
    Program::new(wrn::build(c, batch, mode, o))
}

#[test]
fn wrn_28_10_fits_the_issue_budget() {
    let full = program(&wrn(28, 10, 1.0), 128, Mode::Train, Options::default());
    let half = program(&wrn(28, 10, 0.5), 128, Mode::Train, Options::default());
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
    for (c, batch) in [(wrn(10, 2, 1.0), 4), (wrn(16, 4, 0.5), 32), (wrn(22, 3, 0.75), 7), (wrn(28, 10, 0.5), 128)] {
        for mode in [Mode::Train, Mode::Eval] {
            let p = program(&c, batch, mode, Options::default());
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
    let a = program(&full, 8, Mode::Train, Options::default());
    let b = program(&half, 8, Mode::Train, Options::default());
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
    let t = wrn::build(&c, 16, Mode::Train, Options::default());
    let e = wrn::build(&c, 5, Mode::Eval, Options::default());
    assert_eq!(t.tensors.len(), e.tensors.len());
    for (a, b) in t.tensors.iter().zip(&e.tensors) {
        assert_eq!((&a.name, &a.shape, a.offset), (&b.name, &b.shape, b.offset));
    }
}

#[test]
fn each_memory_option_shows_its_effect() {
    let c = wrn(16, 4, 1.0);
    let arena = |o: Options| program(&c, 32, Mode::Train, o).arena_bytes();
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
    let p = program(&wrn(10, 2, 0.5), 8, Mode::Train, Options::default());
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
        let gpu_options = Options { target: Target::Cuda, ..Options::default() };
        let gpu = program(&c, 128, Mode::Train, gpu_options);
        let cpu = program(&c, 128, Mode::Train, Options::default());
        plan::check(&gpu.lifetimes, &gpu.placement, plan::ALIGN).unwrap();
        let budget = gpu_options.col_budget() * (1 << 20);
        assert_eq!(budget, 128 << 20);
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

/// The GPU plan of a WRN-28-10 step at batch 128, keep 1.0, queues at most 1,000 kernel launches
/// and cuBLAS calls, counted from the program.
#[test]
fn a_gpu_step_of_wrn_28_10_queues_under_a_thousand_calls() {
    use sliceout::ir::Target;
    let options = Options { target: Target::Cuda, ..Options::default() };
    for keep in [1.0, 0.5] {
        let p = program(&wrn(28, 10, keep), 128, Mode::Train, options);
        let starts: Vec<usize> = p.schedule.slices.iter().map(|s| s.channels - 1).collect();
        let rec = sliceout::backend::cuda::record_step(&p, &starts);
        let (launches, gemms) = (rec.launches.borrow().len(), rec.gemms.borrow().len());
        println!("keep {keep}: {launches} launches + {gemms} GEMMs");
        assert!(launches + gemms <= 1000 || keep < 1.0, "{launches} + {gemms}");
        // Wrapping slices (every start is the last channel) add one GEMM per sliced product at
        // most, never a chunk.
        assert!(launches + gemms <= 1300, "{launches} + {gemms}");
    }
}

/// `plan --fit` through the command line: the batch it reports fits the budget with everything
/// counted, one more image does not, and a batch that cannot fit is a clear error.
#[test]
fn plan_fit_reports_the_largest_batch_and_refuses_what_cannot_fit() {
    use clap::Parser;
    use sliceout::cmd::flags::{Cli, Command};
    use sliceout::data::DatasetKind;
    use sliceout::ir::Target;
    use sliceout::model::fit;
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
    let best = fit::option_ladder(Target::Cuda).iter().map(|(_, o)| fit::step_bytes(&c, batch, *o)).min().unwrap();
    assert!(best + fixed <= 3 << 30, "{line}");
    for (_, o) in fit::option_ladder(Target::Cuda) {
        assert!(fit::step_bytes(&c, batch + 1, o) + fixed > 3 << 30, "{line}: batch + 1 fits");
    }
    assert!(text.contains(&format!("memory plan: WRN-16-4  batch {batch}")), "the plan follows");
    let err =
        run(&["--fit", "1GiB", "--batch", "100000", "--depth", "16", "--widen", "4", "--device", "cuda"]).unwrap_err();
    assert!(err.to_string().starts_with("does not fit:") && err.to_string().contains("have 1.00 GiB"), "{err}");
    let err = run(&["--fit", "lots"]).unwrap_err();
    assert!(err.to_string().contains("--fit"), "{err}");
}
