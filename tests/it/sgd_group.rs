//! `--sgd-group` (`Lowering::sgd_group`): adjacent SGD updates as one op. What a GPU step queues
//! with and without it, recorded without a GPU, and a CPU step's numbers with and without it.

use sliceout::backend::cuda::record_step;
use sliceout::backend::{Batches, CpuBackend, Execute, Memory, SplitId, StepCtx};
use sliceout::data::loader::{Crop, Normalization};
use sliceout::data::Split;
use sliceout::ir::{Precision, Target};
use sliceout::model::{wrn, ModelConfig};
use sliceout::ops::sgd::SgdParams;
use sliceout::ops::Op;
use sliceout::plan::Program;
use sliceout::rng::Rng;
use sliceout::schedule::{Lowering, Mode, Options, UpdateAt};

fn program(update: UpdateAt, lowering: Lowering) -> Program {
    let config = ModelConfig { depth: 16, widen: 4, classes: 10, in_channels: 3, keep: 0.5 };
    Program::new(wrn::build(&config, 8, Mode::Train, Options { update, ..Options::default() }, lowering))
}

/// Without the switch a GPU step queues one `sgd` launch a parameter and no `sgd_multi`. With
/// it, `--update end` queues one `sgd_multi` whose grid has a row per parameter, and `--update
/// early` one `sgd_multi` per run of adjacent updates (a lone update keeps its `sgd`), their
/// rows adding up to the parameters and their tables following one another; every other launch
/// and GEMM is the same, in fp32 and bf16.
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
            let count = |l: &[(&str, _)], k: &str| l.iter().filter(|(n, _)| *n == k).count();
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
                assert!(g.updates.len() >= 2, "a group of one");
                assert_eq!(g.first, next, "tables follow one another");
                next += g.updates.len();
            }
            if update == UpdateAt::End {
                assert_eq!((multi, lone), (1, 0), "{precision:?}: one launch for the whole update");
            } else {
                assert!(multi > 0 && multi + lone < params, "{precision:?}: {multi} groups, {lone} lone updates");
            }
            let others = |l: &[(&'static str, cudarc::driver::LaunchConfig)]| -> Vec<&'static str> {
                l.iter().map(|x| x.0).filter(|n| !n.starts_with("sgd")).collect()
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
