//! Nothing is allocated inside a training step: every buffer comes from the arena planned and
//! allocated before the first step. Saving a checkpoint allocates nothing of the model's size:
//! its buffers were reserved before the first step too. A counting global allocator watches every
//! thread (rayon's workers included) while steps run.
//!
//! A test crate of its own, not a module of `tests/it`: the allocator counts every thread of the
//! process, so the other tests, running in parallel threads beside these, would be counted too.

use sliceout::backend::{Batches, CpuBackend, Execute, Memory, SplitId, StepCtx};
use sliceout::data::loader::{Crop, Normalization};
use sliceout::data::Split;
use sliceout::ir::slice::sample_start;
use sliceout::ir::Precision;
use sliceout::model::{wrn, ModelConfig};
use sliceout::ops::sgd::SgdParams;
use sliceout::plan::Program;
use sliceout::rng::Rng;
use sliceout::schedule::{Lowering, Mode, Options};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

struct Counting;
static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);
static BYTES: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
            BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
            BYTES.fetch_add(new_size, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The tests here share the counter: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

#[test]
fn training_steps_allocate_nothing() {
    steps_allocate_nothing(Precision::Fp32, false);
}

/// bf16 too: the GEMM's stage for a bf16 output and col2im's row sums are made before the
/// first step (the stage with the packing buffers, the sums on the stack).
#[test]
fn bf16_training_steps_allocate_nothing() {
    steps_allocate_nothing(Precision::Bf16, false);
}

/// With BN folded into im2col (`--fold-bn`): the normalised planes are on the stack.
#[test]
fn folded_training_steps_allocate_nothing() {
    steps_allocate_nothing(Precision::Fp32, true);
    steps_allocate_nothing(Precision::Bf16, true);
}

fn steps_allocate_nothing(precision: Precision, fold_bn: bool) {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    ALLOCS.store(0, Ordering::SeqCst);
    BYTES.store(0, Ordering::SeqCst);
    let config = ModelConfig { depth: 10, widen: 2, classes: 10, in_channels: 3, keep: 0.5 };
    let batch = 16;
    let p = Program::new(wrn::build(
        &config,
        batch,
        Mode::Train,
        Options::default(),
        Lowering { precision, fold_bn, ..Lowering::default() },
    ));
    let s = &p.schedule;
    let mut cpu = CpuBackend::new();
    cpu.reserve_arena(p.arena_bytes()).unwrap();
    cpu.set_persistent(&wrn::init_persistent(s, 1)).unwrap();
    let mut rng = Rng::new(5, 9);
    let n = 64;
    let split = Split {
        images: (0..n * 3 * 1024).map(|_| rng.below(256) as u8).collect(),
        labels: (0..n).map(|_| rng.below(10) as u8).collect(),
        len: n,
    };
    let norm = Normalization::from_split(&split, 3);
    cpu.upload_split(SplitId::Train, split, 3, &norm).unwrap();
    let sgd = SgdParams { lr: 0.05, momentum: 0.9, weight_decay: 5e-4, nesterov: true };
    let indices: Vec<usize> = (0..batch).collect();
    let mut crops = vec![Crop::IDENTITY; batch];
    let mut starts = vec![0; s.slices.len()];
    let mut loss = [0f32; 2];
    let mut step = |count: bool, cpu: &mut CpuBackend, rng: &mut Rng| {
        COUNTING.store(count, Ordering::SeqCst);
        crops.iter_mut().for_each(|c| *c = Crop::draw(rng));
        for (st, spec) in starts.iter_mut().zip(&s.slices) {
            *st = sample_start(rng, spec.channels, 1);
        }
        cpu.fill_batch(&p, SplitId::Train, &indices, &crops);
        cpu.run(&p, &StepCtx::new(&starts, sgd));
        cpu.read(&p, s.loss, &mut loss);
        COUNTING.store(false, Ordering::SeqCst);
    };
    // The trainer runs inside the thread pool (`train::train`), so an op's parallel work is
    // pushed on its worker's own queue; from outside, rayon's global queue allocates a block
    // every few dozen jobs. Warm-up: nothing of ours is allocated there either, but the first
    // steps touch every code path once.
    rayon::scope(|_| {
        for _ in 0..2 {
            step(false, &mut cpu, &mut rng);
        }
        for _ in 0..3 {
            step(true, &mut cpu, &mut rng);
        }
    });
    let (allocs, bytes) = (ALLOCS.load(Ordering::SeqCst), BYTES.load(Ordering::SeqCst));
    println!("{precision:?}: {allocs} allocations, {bytes} bytes in 3 steps; loss {}", loss[0]);
    assert!(loss[0].is_finite());
    assert_eq!(allocs, 0, "{precision:?}: {allocs} allocations ({bytes} bytes) inside 3 training steps");
}

/// A GPU step's launch path, recorded without a GPU: every op turns its buffers into
/// arguments, packs them as the GPU's launch does (a stack array of pointers) and hands them on
/// with its kernel's handle, and none of it allocates once the recorder has room for the step,
/// in fp32 and bf16, with and without grouped updates and the BN fold.
#[test]
fn recorded_gpu_launches_allocate_nothing() {
    use sliceout::backend::cuda::record;
    use sliceout::gpu::Recorder;
    use sliceout::ir::Target;
    use sliceout::ops::{kernels, KERNEL_FILES};
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let config = ModelConfig { depth: 16, widen: 2, classes: 10, in_channels: 3, keep: 0.5 };
    for precision in Precision::ALL {
        for (sgd_group, fold_bn) in [(false, false), (true, true)] {
            let lowering = Lowering { target: Target::Cuda, precision, sgd_group, fold_bn, ..Lowering::default() };
            let p = Program::new(wrn::build(&config, 8, Mode::Train, Options::default(), lowering));
            let starts: Vec<usize> = p.schedule.slices.iter().map(|s| s.channels - 1).collect();
            let rec = Recorder::new(KERNEL_FILES, kernels::NAMES).unwrap();
            record(&rec, &p, &starts);
            let launches = rec.launches.borrow().len();
            rec.clear();
            ALLOCS.store(0, Ordering::SeqCst);
            BYTES.store(0, Ordering::SeqCst);
            COUNTING.store(true, Ordering::SeqCst);
            record(&rec, &p, &starts);
            COUNTING.store(false, Ordering::SeqCst);
            let (allocs, bytes) = (ALLOCS.load(Ordering::SeqCst), BYTES.load(Ordering::SeqCst));
            assert_eq!(rec.launches.borrow().len(), launches);
            assert_eq!(allocs, 0, "{lowering:?}: {allocs} allocations ({bytes} bytes) in {launches} launches");
        }
    }
}

#[test]
fn saving_a_checkpoint_allocates_nothing_large() {
    use sliceout::train::state::{EpochSums, RunState, Snapshot};
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let config = ModelConfig { depth: 10, widen: 2, classes: 10, in_channels: 3, keep: 0.5 };
    let p = Program::new(wrn::build(&config, 4, Mode::Train, Options::default(), Lowering::default()));
    let s = &p.schedule;
    let mut cpu = CpuBackend::new();
    cpu.reserve_arena(p.arena_bytes()).unwrap();
    cpu.set_persistent(&wrn::init_persistent(s, 1)).unwrap();
    let norm = Normalization { mean: vec![0.5; 3], std: vec![0.25; 3] };
    let (shuffle, rngs) = (Rng::new(1, 2), sliceout::train::StepRngs::new(1));
    let state = RunState {
        config: &config,
        norm: &norm,
        kind: sliceout::data::DatasetKind::Cifar10,
        step: 7,
        epoch: 0,
        rngs: [("shuffle", &shuffle), ("augment", &rngs.augment), ("slice", &rngs.slice)],
        best_acc: 0.0,
        sums: EpochSums::default(),
        batch: 4,
        train_images: 64,
        epochs: 200,
        schedule: sliceout::train::LrSchedule::Cosine,
        history: &[],
        run_id: "0123456789abcdef",
        recorded: &[("lr".into(), "0.1".into()), ("data".into(), "/data".into())],
        changes: &[],
    };
    let mut snapshot = Snapshot::reserve(s, &state).unwrap();
    let dir = std::env::temp_dir().join(format!("sliceout-noalloc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("last.ckpt");
    let mut save = |count: bool| {
        COUNTING.store(count, Ordering::SeqCst);
        snapshot.capture(&mut cpu, s, &state).unwrap();
        snapshot.save(&path).unwrap();
        COUNTING.store(false, Ordering::SeqCst);
    };
    save(false);
    ALLOCS.store(0, Ordering::SeqCst);
    BYTES.store(0, Ordering::SeqCst);
    save(true);
    let (allocs, bytes) = (ALLOCS.load(Ordering::SeqCst), BYTES.load(Ordering::SeqCst));
    let size = std::fs::metadata(&path).unwrap().len() as usize;
    println!("{allocs} allocations, {bytes} bytes to save a {size}-byte checkpoint");
    assert!(size > 2 << 20, "{size}");
    assert!(bytes < 256 << 10, "{bytes} bytes allocated to save a {size}-byte checkpoint");
    let ck = sliceout::io::checkpoint::load(&path).unwrap();
    assert_eq!(ck.step, 7);
    assert_eq!(ck.tensors.len(), s.tensors.len());
    std::fs::remove_dir_all(&dir).unwrap();
}
