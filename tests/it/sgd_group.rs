//! `--sgd-group` (`Lowering::sgd_group`): adjacent SGD updates as one op. What a GPU step queues
//! with and without it, recorded without a GPU (the bf16 weight copies the grouped update
//! writes included), and a CPU step's numbers with and without it.

use sliceout::backend::cuda::{record_first_step, record_step};
use sliceout::backend::{Batches, CpuBackend, Execute, Memory, SplitId, StepCtx};
use sliceout::data::loader::{Crop, Normalization};
use sliceout::data::Split;
use sliceout::ir::{BufKind, Dtype, Precision, Target};
use sliceout::model::{wrn, ModelConfig};
use sliceout::ops::sgd::SgdParams;
use sliceout::ops::Op;
use sliceout::plan::Program;
use sliceout::rng::Rng;
use sliceout::schedule::{Lowering, Mode, Options, UpdateAt};

fn program(update: UpdateAt, lowering: Lowering) -> Program {
    program_at(0.5, update, lowering)
}

fn program_at(keep: f64, update: UpdateAt, lowering: Lowering) -> Program {
    let config = ModelConfig { depth: 16, widen: 4, classes: 10, in_channels: 3, keep };
    Program::new(wrn::build(&config, 8, Mode::Train, Options { update, ..Options::default() }, lowering))
}

/// How many launches of `kernel` a recording holds.
fn count(l: &[(&str, cudarc::driver::LaunchConfig)], kernel: &str) -> usize {
    l.iter().filter(|(n, _)| *n == kernel).count()
}

/// Without the switch a GPU step queues one `sgd` launch a parameter and no `sgd_multi`. With
/// it, `--update end` queues one `sgd_multi` whose grid has a row per parameter, and `--update
/// early` one `sgd_multi` per run of adjacent updates (a lone update keeps its `sgd`, unless it
/// writes a weight copy), their rows adding up to the parameters and their tables following one
/// another; every other launch and GEMM is the same, in fp32 and bf16, but the bf16 weight
/// copies the grouped updates write (the next test).
#[test]
fn grouped_updates_queue_one_launch_a_group_instead_of_one_a_parameter() {
    for precision in Precision::ALL {
        for update in [UpdateAt::Early, UpdateAt::End] {
            let plain = Lowering { target: Target::Cuda, precision, ..Lowering::default() };
            let (before, after) = (program(update, plain), program(update, Lowering { sgd_group: true, ..plain }));
            let params = before.schedule.gradients.len();
            let starts: Vec<usize> = before.schedule.slices.iter().map(|s| s.channels - s.width / 2).collect();
            let (r0, r1) = (record_step(&before, &starts), record_step(&after, &starts));
            let (l0, l1) = (r0.launches.borrow(), r1.launches.borrow());
            assert_eq!((count(&l0, "sgd"), count(&l0, "sgd_multi")), (params, 0), "{precision:?} {update:?}");
            let rows: usize = l1.iter().filter(|(n, _)| *n == "sgd_multi").map(|(_, c)| c.grid_dim.1 as usize).sum();
            let (lone, multi) = (count(&l1, "sgd"), count(&l1, "sgd_multi"));
            assert_eq!(rows + lone, params, "{precision:?} {update:?}: every parameter updated once");
            let groups: Vec<_> = after
                .schedule
                .steps
                .iter()
                .filter_map(|s| if let Op::SgdGroup(g) = &s.op { Some(g) } else { None })
                .collect();
            assert_eq!(groups.len(), multi);
            let mut next = 0;
            for g in &groups {
                assert!(g.updates.len() >= 2 || g.copies[0].is_some(), "a group of one writing no copy");
                assert_eq!(g.first, next, "tables follow one another");
                next += g.updates.len();
            }
            if update == UpdateAt::End {
                assert_eq!((multi, lone), (1, 0), "{precision:?}: one launch for the whole update");
            } else {
                assert!(multi > 0 && multi + lone < params, "{precision:?}: {multi} groups, {lone} lone updates");
            }
            let others = |l: &[(&'static str, cudarc::driver::LaunchConfig)]| -> Vec<&'static str> {
                l.iter().map(|x| x.0).filter(|n| !n.starts_with("sgd") && *n != "weight_slice_bf16").collect()
            };
            assert_eq!(others(&l0), others(&l1), "{precision:?} {update:?}: the other launches");
            assert_eq!(r0.gemms.borrow().len(), r1.gemms.borrow().len());
            let args = r1.arg_counts.borrow();
            for ((name, _), n) in l1.iter().zip(args.iter()).filter(|((n, _), _)| *n == "sgd_multi") {
                assert_eq!(*n, 2, "{name}: the table and the step's values");
            }
            println!(
                "{precision:?} update {update:?}: {} launches -> {} ({params} sgd -> {multi} sgd_multi + {lone} sgd)",
                l0.len(),
                l1.len()
            );
        }
    }
}

/// A bf16 GPU step's grouped update also writes, for the next step, the bf16 copy of each
/// unsliced convolution's weight (`GemmWeight::Kept`: conv0 and the three shortcuts at keep
/// 0.5, every convolution at keep 1.0), so those convolutions' `weight_slice_bf16` launches
/// leave the step: its group entry names the copy, the whole weight long, and the copy is kept
/// through the step. A program's first step makes the copies once, as the forward ops did.
/// Sliced convolutions, fp32 steps and steps without the switch keep their launches.
#[test]
fn a_bf16_grouped_update_writes_the_next_steps_weight_copies() {
    for keep in [0.5, 1.0] {
        for update in [UpdateAt::Early, UpdateAt::End] {
            let plain = Lowering { target: Target::Cuda, precision: Precision::Bf16, ..Lowering::default() };
            let grouped = Lowering { sgd_group: true, ..plain };
            let (before, after) = (program_at(keep, update, plain), program_at(keep, update, grouped));
            let s = &after.schedule;
            let unsliced: Vec<_> = s
                .steps
                .iter()
                .filter_map(|st| match &st.op {
                    Op::Conv(c)
                        if c.out_sel.width(&s.slices) == c.shape.cout && c.in_sel.width(&s.slices) == c.shape.cin =>
                    {
                        Some(c)
                    }
                    _ => None,
                })
                .collect();
            let kept: Vec<usize> = s.kept_copies().collect();
            assert_eq!(kept.len(), unsliced.len(), "keep {keep}: every unsliced convolution's copy is kept");
            assert_eq!(before.schedule.kept_copies().count(), 0);
            // Each kept copy is written by the update of its own weight, and lives through the step.
            let written: Vec<(usize, usize)> = s
                .steps
                .iter()
                .filter_map(|st| if let Op::SgdGroup(g) = &st.op { Some(g) } else { None })
                .flat_map(|g| g.updates.iter().zip(&g.copies).filter_map(|(u, c)| c.map(|c| (u.param, c))))
                .collect();
            let mut want: Vec<(usize, usize)> =
                unsliced.iter().map(|c| (c.weight, c.algo.kept_copy().expect("a kept copy"))).collect();
            let mut got = written.clone();
            want.sort();
            got.sort();
            assert_eq!(got, want, "keep {keep} {update:?}");
            let last = s.steps.len() - 1;
            for &b in &kept {
                let buf = &s.buffers[b];
                assert_eq!((buf.kind, buf.dtype), (BufKind::WeightCopy, Dtype::Bf16), "{}", buf.name);
                let life = &after.lifetimes[b];
                assert_eq!((life.first, life.last), (0, last), "{} is kept through the step", buf.name);
            }
            let starts: Vec<usize> = s.slices.iter().map(|x| x.channels - x.width / 2).collect();
            let (r0, r1) = (record_step(&before, &starts), record_step(&after, &starts));
            let (l0, l1) = (r0.launches.borrow(), r1.launches.borrow());
            let (c0, c1) = (count(&l0, "weight_slice_bf16"), count(&l1, "weight_slice_bf16"));
            assert_eq!(c0 - c1, kept.len(), "keep {keep} {update:?}");
            let first = record_first_step(&after, &starts);
            let lf = first.launches.borrow();
            assert_eq!(count(&lf, "weight_slice_bf16"), c0, "a first step makes every copy once");
            assert_eq!(lf.len(), l1.len() + kept.len());
            let fp32 = program_at(keep, update, Lowering { precision: Precision::Fp32, ..grouped });
            assert_eq!(fp32.schedule.kept_copies().count(), 0);
            println!(
                "keep {keep} update {update:?}: {} launches -> {} ({} sgd -> {} sgd_multi + {} sgd; \
                 weight_slice_bf16 {c0} -> {c1}); a first step {}",
                l0.len(),
                l1.len(),
                count(&l0, "sgd"),
                count(&l1, "sgd_multi"),
                count(&l1, "sgd"),
                lf.len()
            );
        }
    }
}

/// Two CPU training steps leave the same persistent region, bit for bit, with and without the
/// switch, updates early and at the end: grouping changes when nothing is computed, only how
/// the GPU launches it.
#[test]
fn grouped_updates_leave_the_same_weights_on_the_cpu() {
    for update in [UpdateAt::Early, UpdateAt::End] {
        let run = |sgd_group: bool| {
            let p = program(update, Lowering { sgd_group, ..Lowering::default() });
            let s = &p.schedule;
            let mut cpu = CpuBackend::new();
            cpu.reserve_arena(p.arena_bytes()).unwrap();
            cpu.set_persistent(&wrn::init_persistent(s, 5)).unwrap();
            let mut rng = Rng::new(9, 4);
            let split = Split {
                images: (0..8 * 3 * 1024).map(|_| rng.below(256) as u8).collect(),
                labels: (0..8).map(|i| i as u8).collect(),
                len: 8,
            };
            let norm = Normalization::from_split(&split, 3);
            cpu.upload_split(SplitId::Train, split, 3, &norm).unwrap();
            let sgd = SgdParams { lr: 0.1, momentum: 0.9, weight_decay: 5e-4, nesterov: true };
            for starts in [s.slices.iter().map(|x| x.channels - 1).collect::<Vec<_>>(), vec![0; s.slices.len()]] {
                // The batch's buffers are reused by the step, so each step gathers it again.
                cpu.fill_batch(&p, SplitId::Train, &(0..8).collect::<Vec<_>>(), &[Crop::IDENTITY; 8]);
                cpu.run(&p, &StepCtx::new(&starts, sgd));
            }
            let mut persistent = vec![0f32; s.persistent_len()];
            cpu.get_persistent(&mut persistent);
            persistent.iter().map(|x| x.to_bits()).collect::<Vec<u32>>()
        };
        let (a, b) = (run(false), run(true));
        assert!(a.iter().zip(&b).all(|(x, y)| x == y), "{update:?}: the weights differ");
        assert_eq!(a.len(), b.len());
    }
}
