//! `sliceout plan`: builds the schedule for the flags and the backend it is for, plans it, and
//! prints the plan (text, JSON or SVG), with the keep-1.0 plan's figures beside a sliced one and,
//! for the GPU, the kernel launches and GEMMs a step queues.

use super::flags::{self, Device, Format, PlanFlags, PlanMode};
use crate::backend::cuda::record_step;
use crate::error::Result;
use crate::ir::Target;
use crate::model::{wrn, ModelConfig};
use crate::plan::report::{self, GpuCalls};
use crate::plan::Program;
use crate::schedule::{Mode, Options};

pub fn command(f: &PlanFlags) -> Result<String> {
    let config = flags::model_config(&f.model, f.classes, f.in_channels)?;
    let batch = flags::check_batch(f.batch)?;
    let mode = match f.mode {
        PlanMode::Train => Mode::Train,
        PlanMode::Eval => Mode::Eval,
    };
    let target = match f.device {
        Device::Cpu => Target::Cpu,
        Device::Cuda => Target::Cuda,
        Device::Auto if crate::gpu::available() => Target::Cuda,
        Device::Auto => Target::Cpu,
    };
    let options = Options { target, ..f.memory.options() };
    let program = Program::new(wrn::build(&config, batch, mode, options));
    let baseline = (mode == Mode::Train && config.keep < 1.0)
        .then(|| Program::new(wrn::build(&ModelConfig { keep: 1.0, ..config }, batch, mode, options)));
    let mut r = report::report(&program, baseline.as_ref());
    if target == Target::Cuda {
        let starts = vec![0; program.schedule.slices.len()];
        let rec = record_step(&program, &starts);
        r.gpu_calls = Some(GpuCalls { launches: rec.launches.borrow().len(), gemms: rec.gemms.borrow().len() });
    }
    Ok(match f.format {
        Format::Text => report::text(&r, f.width.clamp(16, 400)),
        Format::Json => report::json(&r) + "\n",
        Format::Svg => report::svg(&r),
    })
}
