//! The command line: `train`, `eval`, `export`, `plan`, `profile`, `bench`, `selftest`, `data synth`.
//! Parsing only; each command calls into the library and returns its error for `main` to print.

use crate::backend::DeviceChoice;
use crate::data::DatasetKind;
use crate::ir::{Precision, Target};
use crate::schedule::{InputGrad, Lowering, Options, UpdateAt};
use crate::train::LrSchedule;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(name = "sliceout", version, about = "Train Wide ResNets with SliceOut from a static memory plan", long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

// One value per process: the train variant's size costs nothing, a box would cost every match.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train a WRN (no flags: CIFAR-10 from data/cifar-10-batches-bin, or a synthetic demo).
    Train(TrainFlags),
    /// Test loss and accuracy of a checkpoint (or a safetensors model).
    Eval(EvalFlags),
    /// Write a model as safetensors (PyTorch's tensor names) or its test-time network as ONNX.
    Export(ExportFlags),
    /// Print the memory plan of a step.
    Plan(PlanFlags),
    /// Time each op of a step and show what it allocates.
    Profile(ProfileFlags),
    /// Median step time and memory for several keep values, in one run.
    Bench(BenchFlags),
    /// Check every op and the PyTorch reference on a backend.
    Selftest(SelftestFlags),
    /// Compare finished or running runs: one row each, and their test accuracy as a picture.
    Compare(CompareFlags),
    /// Dataset tools.
    #[command(subcommand)]
    Data(DataCommand),
}

#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Write a learnable synthetic dataset in the exact CIFAR-10 binary format.
    Synth {
        #[arg(long)]
        out: PathBuf,
        /// Training images (at most 1,000,000)
        #[arg(long, default_value_t = 5000, allow_negative_numbers = true)]
        train: usize,
        /// Test images (at most 1,000,000)
        #[arg(long, default_value_t = 1000, allow_negative_numbers = true)]
        test: usize,
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        seed: u64,
        /// Replace the dataset files already in --out
        #[arg(long)]
        force: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Device {
    Auto,
    Cpu,
    Cuda,
}

impl From<Device> for DeviceChoice {
    fn from(d: Device) -> DeviceChoice {
        match d {
            Device::Auto => DeviceChoice::Auto,
            Device::Cpu => DeviceChoice::Cpu,
            Device::Cuda => DeviceChoice::Cuda,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Sched {
    Cosine,
    Step,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Update {
    Early,
    End,
}

/// The model's shape.
#[derive(Args, Debug, Clone)]
pub struct ModelFlags {
    /// WRN depth, 6n+4 [default: 16]
    #[arg(long, allow_negative_numbers = true)]
    pub depth: Option<usize>,
    /// Widen factor k [default: 4]
    #[arg(long, allow_negative_numbers = true)]
    pub widen: Option<usize>,
    /// Fraction of each sliced layer's channels kept per step, in (0, 1]; 1.0 = no SliceOut [default: 1.0]
    #[arg(long, allow_negative_numbers = true)]
    pub keep: Option<f64>,
}

/// Memory choices of the training schedule (see `sliceout plan`).
#[derive(Args, Debug, Clone)]
pub struct MemoryFlags {
    /// Keep BN+ReLU outputs from forward instead of recomputing them in backward
    #[arg(long)]
    pub no_recompute: bool,
    /// Use a fresh buffer and an add for the identity shortcut's gradient
    #[arg(long)]
    pub no_in_place: bool,
    /// The identity shortcut's gradient accumulated in place (the default; with `train --resume
    /// --change`, turns a run's --no-in-place off)
    #[arg(long, conflicts_with = "no_in_place")]
    pub in_place: bool,
    /// Images per im2col chunk (0 = auto, within --col-budget) [default: 0]
    #[arg(long, allow_negative_numbers = true)]
    pub col_chunk: Option<usize>,
    /// MiB a workspace's im2col columns (or Winograd's tiles) may take when --col-chunk is auto;
    /// Winograd's transformed weights come on top. 1 to 1048576 [default: 32 on the CPU, 512 on the
    /// GPU]
    #[arg(long, allow_negative_numbers = true)]
    pub col_budget: Option<usize>,
    /// Where SGD updates go: right after each gradient, or after the whole backward pass
    #[arg(long, value_enum, default_value_t = Update::Early)]
    pub update: Update,
    /// Element type of activations, their gradients and im2col workspaces: fp32 or bf16
    /// (parameters, momentum, BN statistics, weight gradients and the loss stay f32; bf16 GEMMs
    /// accumulate in f32); `bench` takes fp32,bf16 to measure both in one run [default: fp32]
    #[arg(long, value_delimiter = ',')]
    pub precision: Option<Vec<String>>,
    /// How a convolution's backward computes its input gradient on the GPU: conv (its stride-1
    /// 3x3 layers whose output is no wider than their input: a convolution of dY with the
    /// flipped weight, no col2im; other layers keep col2im), or col2im everywhere (W^T dY, then
    /// col2im). The CPU always uses col2im [default: conv]
    #[arg(long)]
    pub input_grad: Option<String>,
    /// Experimental, not yet measured on a card: the GPU's fp32 programs run their 3x3 stride-1
    /// convolutions (4 or more input channels) by Winograd F(2x2, 3x3), 16 batched products
    /// with 2.25x fewer multiply-adds than im2col, forward and both gradients. bf16 programs
    /// keep im2col; the CPU always uses Winograd on those layers
    #[arg(long)]
    pub winograd: bool,
    /// im2col on the GPU (the default; with `train --resume --change`, turns a run's --winograd
    /// off)
    #[arg(long, conflicts_with = "winograd")]
    pub no_winograd: bool,
    /// Experimental, not yet run on a card: with BN outputs recomputed in backward, apply each
    /// BN + ReLU in the im2col of the convolutions that read its output, so that output is not
    /// written again (a smaller arena where it was at the peak). Where a reader cannot fold (a
    /// Winograd layer, a 1x1 stride-1 layer) the output is recomputed as before
    #[arg(long)]
    pub fold_bn: bool,
    /// Experimental, not yet measured on a card: adjacent SGD updates (all of them with
    /// --update end) run as one multi-tensor launch instead of one launch a parameter; the
    /// same numbers. The CPU runs them in turn either way
    #[arg(long)]
    pub sgd_group: bool,
}

/// Each flag that only chooses how the GPU runs a step, and what the CPU does whatever it says.
const GPU_ONLY: [(&str, &str); 4] = [
    ("--math", "computes in fp32"),
    ("--input-grad", "takes input gradients by col2im"),
    ("--winograd", "runs Winograd on the layers it fits"),
    ("--sgd-group", "runs the SGD updates one by one"),
];

/// The GPU's math as given (`None`: the default, tf32).
pub fn math(given: Option<&str>) -> crate::Result<crate::gpu::Math> {
    crate::gpu::Math::parse(given.unwrap_or("tf32"))
}

/// The line `train`, `profile` and `bench` say on stderr when they run on the CPU with flags
/// that only choose how the GPU runs a step (`math`: `--math` given; the rest from `memory`):
/// taken, since a run records them for a resume on a GPU, but naming each and what the CPU does
/// instead, so that a measurement is not read as theirs. `None` when none was given.
pub fn gpu_only_note(math: bool, memory: &MemoryFlags) -> Option<String> {
    let given = [math, memory.input_grad.is_some(), memory.winograd, memory.sgd_group];
    let named: Vec<String> = GPU_ONLY
        .iter()
        .zip(given)
        .filter(|(_, on)| *on)
        .map(|((flag, cpu), _)| format!("{flag} (the CPU {cpu})"))
        .collect();
    (!named.is_empty()).then(|| format!("note: on the CPU these GPU flags change nothing: {}", named.join(", ")))
}

/// The most timed steps `bench` and `profile` take: a median needs no more, and a typo of a
/// few digits should be refused, not run for days.
pub const MAX_TIMED_STEPS: usize = 10_000;

/// Checks `bench` / `profile --steps`: 1 to [`MAX_TIMED_STEPS`].
pub fn check_timed_steps(steps: usize) -> crate::Result<()> {
    if !(1..=MAX_TIMED_STEPS).contains(&steps) {
        return Err(crate::Error::flag("--steps", steps, format!("an integer from 1 to {MAX_TIMED_STEPS}")));
    }
    Ok(())
}

/// The largest `--col-budget`: 1 TiB in MiB, so that the budget in bytes fits any `usize`.
const MAX_COL_BUDGET_MIB: usize = 1 << 20;

impl MemoryFlags {
    /// The memory options and the lowering, with the one precision given.
    pub fn options(&self) -> crate::Result<(Options, Lowering)> {
        match self.precisions()?[..] {
            [one] => self.options_at(one),
            _ => Err(crate::Error::flag("--precision", self.precision_text(), "fp32 or bf16")),
        }
    }

    /// The memory options and the lowering with `precision` (one of [`MemoryFlags::precisions`]).
    pub fn options_at(&self, precision: Precision) -> crate::Result<(Options, Lowering)> {
        if let Some(mib) = self.col_budget.filter(|mib| !(1..=MAX_COL_BUDGET_MIB).contains(mib)) {
            let expected = format!("a number of MiB from 1 to {MAX_COL_BUDGET_MIB}");
            return Err(crate::Error::flag("--col-budget", mib, expected));
        }
        let options = Options {
            recompute: !self.no_recompute,
            in_place: !self.no_in_place,
            col_chunk: self.col_chunk.unwrap_or(0),
            col_budget_mib: self.col_budget.unwrap_or(0),
            update: match self.update {
                Update::Early => UpdateAt::Early,
                Update::End => UpdateAt::End,
            },
        };
        let lowering = Lowering {
            // The command sets the backend it builds for.
            target: Target::Cpu,
            precision,
            input_grad: self.input_grad.as_deref().map_or(Ok(InputGrad::Conv), InputGrad::parse)?,
            winograd: self.winograd,
            fold_bn: self.fold_bn,
            sgd_group: self.sgd_group,
        };
        Ok((options, lowering))
    }

    /// Every precision given (`bench` measures each); one or two, no repeats.
    pub fn precisions(&self) -> crate::Result<Vec<Precision>> {
        let Some(given) = &self.precision else {
            return Ok(vec![Precision::Fp32]);
        };
        let all = given.iter().map(|p| Precision::parse(p)).collect::<crate::Result<Vec<_>>>()?;
        if all.is_empty() || all.len() > 2 || all.windows(2).any(|w| w[0] == w[1]) {
            return Err(crate::Error::flag("--precision", self.precision_text(), "fp32, bf16 or fp32,bf16"));
        }
        Ok(all)
    }

    /// `--precision` as given.
    fn precision_text(&self) -> String {
        self.precision.as_deref().unwrap_or_default().join(",")
    }
}

/// `train --batch`: a number of images, or the largest power of two that fits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchFlag {
    Images(usize),
    /// `auto` or `auto:CAP`.
    Auto {
        cap: Option<usize>,
    },
}

impl std::str::FromStr for BatchFlag {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<BatchFlag, String> {
        let expected = "a number of images >= 1, auto, or auto:CAP";
        match s.strip_prefix("auto") {
            Some("") => Ok(BatchFlag::Auto { cap: None }),
            Some(rest) => match rest.strip_prefix(':').and_then(|c| c.parse::<usize>().ok()) {
                Some(cap) if cap >= 1 => Ok(BatchFlag::Auto { cap: Some(cap) }),
                _ => Err(expected.into()),
            },
            None => s.parse().map(BatchFlag::Images).map_err(|_| expected.into()),
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct TrainFlags {
    /// Dataset folder (CIFAR-10/100 binary or Fashion-MNIST IDX files)
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Dataset format; detected from the file names when absent
    #[arg(long)]
    pub dataset: Option<String>,
    /// CIFAR-100: train on the 20 superclasses
    #[arg(long)]
    pub coarse: bool,
    #[command(flatten)]
    pub model: ModelFlags,
    /// Slice starts are multiples of this (at most the narrowest block's 16k channels) [default:
    /// 1; the run's when resuming]
    #[arg(long, allow_negative_numbers = true)]
    pub align: Option<usize>,
    /// Epochs [default: 200; 4 for the synthetic demo; the run's when resuming]
    #[arg(long, allow_negative_numbers = true)]
    pub epochs: Option<usize>,
    /// Images per step, or `auto` (`auto:CAP`): the largest power of two (up to CAP) whose plan
    /// fits the free memory of the device with a margin; the last partial batch of an epoch is
    /// dropped [default: 128; the run's when resuming]
    #[arg(long, allow_negative_numbers = true)]
    pub batch: Option<BatchFlag>,
    /// Peak learning rate [default: 0.1; the run's when resuming]
    #[arg(long, allow_negative_numbers = true)]
    pub lr: Option<f64>,
    /// SGD momentum [default: 0.9; the run's when resuming]
    #[arg(long, allow_negative_numbers = true)]
    pub momentum: Option<f64>,
    /// Weight decay [default: 5e-4; the run's when resuming]
    #[arg(long, allow_negative_numbers = true)]
    pub wd: Option<f64>,
    /// Plain momentum instead of Nesterov's [default: Nesterov; the run's when resuming]
    #[arg(long)]
    pub no_nesterov: bool,
    /// Nesterov momentum (the default; with --resume --change, turns it back on)
    #[arg(long, conflicts_with = "no_nesterov")]
    pub nesterov: bool,
    /// Learning-rate schedule: cosine per step, or x0.2 at 30%, 60%, 80% of the epochs [default: cosine; the run's when resuming]
    #[arg(long, value_enum)]
    pub schedule: Option<Sched>,
    /// Seeds weights, shuffling, augmentation and slice starts [default: 0; the run's when resuming]
    #[arg(long, allow_negative_numbers = true)]
    pub seed: Option<u64>,
    /// auto picks CUDA when a GPU is usable, else the CPU
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    pub device: Device,
    /// GPU GEMM math: tf32 or fp32 (the CPU always computes in fp32) [default: tf32; the run's
    /// when resuming]
    #[arg(long)]
    pub math: Option<String>,
    /// Output folder [default: runs/<timestamp>; the checkpoint's folder when resuming]
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Replace the files of another run in --out instead of refusing
    #[arg(long)]
    pub force: bool,
    /// Use only the first N training images [default: all; the run's when resuming]
    #[arg(long, allow_negative_numbers = true)]
    pub limit_train: Option<usize>,
    /// Use only the first N test images [default: all; the run's when resuming]
    #[arg(long, allow_negative_numbers = true)]
    pub limit_test: Option<usize>,
    /// No random crop and flip [default: augment; the run's when resuming]
    #[arg(long)]
    pub no_augment: bool,
    /// Random crop and flip (the default; with --resume --change, turns them back on)
    #[arg(long, conflicts_with = "no_augment")]
    pub augment: bool,
    /// Also checkpoint every N steps (0 = only at the end of each epoch)
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub checkpoint_every: usize,
    /// Continue a run from a checkpoint (in its folder unless --out says otherwise), with the
    /// settings it records (learning rate, seed, precision, data folder, ...) where flags leave
    /// them out; a flag given with another value is refused unless --change
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// With --resume: continue with the flags given where they differ from the run's; the
    /// change is printed and listed in the next metrics.jsonl line ("changed")
    #[arg(long, requires = "resume")]
    pub change: bool,
    /// Before each epoch's test, also test with BN's running statistics recalibrated for the full
    /// network over N training batches (0 = off); the metrics get test_acc_recal [default: 50
    /// with SliceOut (keep < 1), 0 at keep 1.0; the run's when resuming]
    #[arg(long)]
    pub bn_recal: Option<usize>,
    /// Start from these weights (a checkpoint or a safetensors file) with fresh optimizer state
    #[arg(long, conflicts_with = "resume")]
    pub init: Option<PathBuf>,
    /// Under mpirun: every rank trains on the whole global batch instead of its share (N ranks
    /// then compute what one does: a check of the reduction, docs/DISTRIBUTED.md)
    #[arg(long)]
    pub same_batch: bool,
    #[command(flatten)]
    pub memory: MemoryFlags,
}

#[derive(Args, Debug, Clone)]
pub struct EvalFlags {
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long)]
    pub dataset: Option<String>,
    #[arg(long)]
    pub coarse: bool,
    #[arg(long, default_value_t = 128, allow_negative_numbers = true)]
    pub batch: usize,
    #[arg(long, allow_negative_numbers = true)]
    pub limit_test: Option<usize>,
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    pub device: Device,
    /// Also write each test image's logits and label to this safetensors file
    #[arg(long)]
    pub logits: Option<PathBuf>,
    /// Also test with BN's running statistics recalibrated for the full network over N
    /// training batches of --data (0 = off)
    #[arg(long, default_value_t = 0)]
    pub bn_recal: usize,
    /// Element type of activations: fp32 or bf16 (bf16 on the CPU only, as for train)
    #[arg(long, default_value = "fp32")]
    pub precision: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    Safetensors,
    Onnx,
}

impl ExportFormat {
    pub fn as_str(&self) -> &'static str {
        match self {
            ExportFormat::Safetensors => "safetensors",
            ExportFormat::Onnx => "onnx",
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct ExportFlags {
    /// The model: a sliceout checkpoint, or a safetensors file with sliceout's metadata
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// The file to write
    #[arg(long)]
    pub out: PathBuf,
    /// safetensors (parameters, BN statistics, metadata) or onnx (the test-time network) [default: from --out's extension]
    #[arg(long, value_enum)]
    pub format: Option<ExportFormat>,
}

#[derive(Args, Debug, Clone)]
pub struct CompareFlags {
    /// Run folders (each holding metrics.jsonl and last.ckpt)
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// Draw test accuracy against epoch and against training seconds in this SVG file
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = TableFormat::Text)]
    pub format: TableFormat,
    /// Compare runs of different models or datasets too
    #[arg(long)]
    pub force: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TableFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
    Svg,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PlanMode {
    Train,
    Eval,
}

#[derive(Args, Debug, Clone)]
pub struct PlanFlags {
    #[command(flatten)]
    pub model: ModelFlags,
    /// Classes [default: --dataset's, else 10]
    #[arg(long, allow_negative_numbers = true)]
    pub classes: Option<usize>,
    /// Input channels (3 for CIFAR, 1 for Fashion-MNIST) [default: --dataset's, else 3]
    #[arg(long, allow_negative_numbers = true)]
    pub in_channels: Option<usize>,
    /// Images per step [default: 128; with --fit: the largest that fits]
    #[arg(long, allow_negative_numbers = true)]
    pub batch: Option<usize>,
    #[arg(long, value_enum, default_value_t = PlanMode::Train)]
    pub mode: PlanMode,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Chart width in columns (the text plan alone), 16 to 400 [default: 64]
    #[arg(long, allow_negative_numbers = true)]
    pub width: Option<usize>,
    /// The backend to plan for (workspace sizes differ): auto follows `--device auto` of train
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    pub device: Device,
    /// A memory budget (e.g. 80GiB, 1536M): the largest batch that fits, or with --batch the
    /// options that fit; the dataset, CUDA context and cuBLAS workspace count too
    #[arg(long)]
    pub fit: Option<String>,
    /// The dataset: cifar10, cifar100 or fashion-mnist; its classes and channels make the model,
    /// and --fit and --sweep count it resident [default: the one the model's channels take]
    #[arg(long)]
    pub dataset: Option<String>,
    /// Memory against keep (1.0 to 0.25) or against batch (16 to 1024), as a table or (--format
    /// svg) a chart, with the largest batch within --fit (default 80GiB)
    #[arg(long, value_enum)]
    pub sweep: Option<Sweep>,
    #[command(flatten)]
    pub memory: MemoryFlags,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Sweep {
    Keep,
    Batch,
}

#[derive(Args, Debug, Clone)]
pub struct ProfileFlags {
    #[command(flatten)]
    pub model: ModelFlags,
    #[arg(long, default_value_t = 10, allow_negative_numbers = true)]
    pub classes: usize,
    #[arg(long, default_value_t = 128, allow_negative_numbers = true)]
    pub batch: usize,
    /// Timed steps (after one warm-up step)
    #[arg(long, default_value_t = 3, allow_negative_numbers = true)]
    pub steps: usize,
    /// Put the network at this keep beside the profiled one (e.g. --compare 1.0)
    #[arg(long, allow_negative_numbers = true)]
    pub compare: Option<f64>,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Write a Chrome trace-event JSON file (opens in Perfetto or chrome://tracing)
    #[arg(long)]
    pub trace: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    pub device: Device,
    /// GPU GEMM math: tf32 or fp32 (the CPU always computes in fp32) [default: tf32]
    #[arg(long)]
    pub math: Option<String>,
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub seed: u64,
    /// Slice starts are multiples of this, as `train --align`
    #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
    pub align: usize,
    #[command(flatten)]
    pub memory: MemoryFlags,
}

#[derive(Args, Debug, Clone)]
pub struct BenchFlags {
    /// WRN depth [default: 16]
    #[arg(long, allow_negative_numbers = true)]
    pub depth: Option<usize>,
    /// Widen factor [default: 4]
    #[arg(long, allow_negative_numbers = true)]
    pub widen: Option<usize>,
    #[arg(long, default_value_t = 10, allow_negative_numbers = true)]
    pub classes: usize,
    #[arg(long, default_value_t = 32, allow_negative_numbers = true)]
    pub batch: usize,
    /// Comma-separated keep values (at most 16), all measured in this one run
    #[arg(long, default_value = "1.0,0.75,0.5", value_delimiter = ',', allow_hyphen_values = true)]
    pub keep: Vec<f64>,
    /// Timed steps per keep value (after one warm-up step)
    #[arg(long, default_value_t = 5, allow_negative_numbers = true)]
    pub steps: usize,
    /// GPU math: tf32 or fp32 (the CPU always computes in fp32) [default: tf32]
    #[arg(long)]
    pub math: Option<String>,
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    pub device: Device,
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub seed: u64,
    /// Slice starts are multiples of this, as `train --align`
    #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
    pub align: usize,
    #[command(flatten)]
    pub memory: MemoryFlags,
}

#[derive(Args, Debug, Clone)]
pub struct SelftestFlags {
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    pub device: Device,
    /// GPU GEMM math: tf32 or fp32 (op checks: tolerance 5e-3 or 1e-5 against the CPU)
    #[arg(long, default_value = "fp32")]
    pub math: String,
    /// Instead of the op checks: one WRN-16-4 training step (batch 32, keep 0.5, wrapping
    /// slices) against the CPU, op by op from the same inputs (tolerance 1e-4 fp32, 5e-3 tf32,
    /// 2^-8 bf16)
    #[arg(long)]
    pub full: bool,
    /// With --full: how the step's convolutions compute their input gradient, conv or col2im
    /// (`train --input-grad`, default conv; the op checks always check both)
    #[arg(long)]
    pub input_grad: Option<String>,
    /// With --full: the step's convolutions of recomputed BN outputs apply the BN in their
    /// im2col (`train --fold-bn`, experimental)
    #[arg(long)]
    pub fold_bn: bool,
    /// With --full: the step's 3x3 stride-1 convolutions by Winograd (`train --winograd`,
    /// experimental; fp32 only: the op checks always check it in fp32)
    #[arg(long)]
    pub winograd: bool,
    /// With --full: adjacent SGD updates as one launch a group (`train --sgd-group`,
    /// experimental; the op checks always check a group)
    #[arg(long)]
    pub sgd_group: bool,
    /// Element type of activations in the checked programs: fp32, or bf16 (each op's bf16
    /// kernels against the CPU's bf16 ops, tolerance 2^-10, with --full 2^-8)
    #[arg(long, default_value = "fp32")]
    pub precision: String,
}

pub fn dataset(flag: &Option<String>) -> crate::Result<Option<DatasetKind>> {
    flag.as_deref().map(str::parse).transpose()
}

pub fn lr_schedule(s: Sched) -> LrSchedule {
    match s {
        Sched::Cosine => LrSchedule::Cosine,
        Sched::Step => LrSchedule::Step,
    }
}

impl TrainFlags {
    /// The flags of a bare `sliceout train`.
    pub fn default_flags() -> TrainFlags {
        match Cli::parse_from(["sliceout", "train"]).command {
            Some(Command::Train(f)) => f,
            _ => unreachable!("`train` parses to the train command"),
        }
    }
}

/// The model flags with their defaults applied, checked.
pub fn model_config(m: &ModelFlags, classes: usize, in_channels: usize) -> crate::Result<crate::model::ModelConfig> {
    let config = crate::model::ModelConfig {
        depth: m.depth.unwrap_or(16),
        widen: m.widen.unwrap_or(4),
        classes,
        in_channels,
        keep: m.keep.unwrap_or(1.0),
    };
    config.validate()?;
    Ok(config)
}

pub fn check_batch(batch: usize) -> crate::Result<usize> {
    if batch == 0 {
        return Err(crate::Error::flag("--batch", batch, "an integer >= 1"));
    }
    Ok(batch)
}
