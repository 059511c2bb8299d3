//! `sliceout plan`: builds the schedule for the flags, plans it, and prints the plan (text, JSON
//! or SVG), with the keep-1.0 plan's figures beside a sliced one.

use super::flags::{self, Format, PlanFlags, PlanMode};
use crate::error::Result;
use crate::model::{wrn, ModelConfig};
use crate::plan::{report, Program};
use crate::schedule::Mode;

pub fn command(f: &PlanFlags) -> Result<String> {
    let config = flags::model_config(&f.model, f.classes, f.in_channels)?;
    let batch = flags::check_batch(f.batch)?;
    config.footprint(batch).map_err(crate::ir::Invalid::flag)?;
    let mode = match f.mode {
        PlanMode::Train => Mode::Train,
        PlanMode::Eval => Mode::Eval,
    };
    let options = f.memory.options()?;
    let program = Program::new(wrn::build(&config, batch, mode, options));
    let baseline = (mode == Mode::Train && config.keep < 1.0)
        .then(|| Program::new(wrn::build(&ModelConfig { keep: 1.0, ..config }, batch, mode, options)));
    let r = report::report(&program, baseline.as_ref());
    Ok(match f.format {
        Format::Text => report::text(&r, f.width.clamp(16, 400)),
        Format::Json => report::json(&r) + "\n",
        Format::Svg => report::svg(&r),
    })
}
