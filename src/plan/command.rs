//! `sliceout plan`: builds the schedule for the flags, plans it, and prints the plan (text, JSON
//! or SVG), with the keep-1.0 plan's figures beside a sliced one.

use super::report::{self, Baseline, BufferInfo, PlanReport};
use crate::cli::{self, Format, PlanFlags, PlanMode};
use crate::error::Result;
use crate::exec::Program;
use crate::model::{wrn, ModelConfig};
use crate::schedule::{Mode, Role, Schedule};

/// Persistent bytes by part. An eval step needs no momentum, so it is left out there.
fn persistent_parts(s: &Schedule) -> Vec<(String, usize)> {
    let bytes =
        |roles: &[Role]| s.tensors.iter().filter(|t| roles.contains(&t.role)).map(|t| t.len() * 4).sum::<usize>();
    let mut parts = vec![("params".to_string(), bytes(&[Role::Param]))];
    if s.mode == Mode::Train {
        parts.push(("momentum".to_string(), bytes(&[Role::Momentum])));
    }
    parts.push(("bn stats".to_string(), bytes(&[Role::RunningMean, Role::RunningVar])));
    parts
}

/// The report of a planned program, with an optional baseline program beside it.
pub fn report(p: &Program, baseline: Option<&Program>) -> PlanReport {
    let s = &p.schedule;
    let parts = persistent_parts(s);
    PlanReport {
        model: s.config.name(),
        batch: s.batch,
        keep: s.config.keep,
        mode: s.mode.as_str().to_string(),
        alignment: super::ALIGN,
        steps: s.steps.iter().map(|st| st.name()).collect(),
        buffers: s
            .buffers
            .iter()
            .zip(&p.lifetimes)
            .map(|(b, l)| BufferInfo {
                name: b.name.clone(),
                kind: b.kind,
                bytes: l.bytes,
                first: l.first,
                last: l.last,
                sliced: b.sliced,
            })
            .collect(),
        offsets: p.placement.offsets.clone(),
        arena_bytes: p.arena_bytes(),
        naive_bytes: super::naive_bytes(&p.lifetimes),
        persistent_bytes: parts.iter().map(|(_, b)| b).sum(),
        persistent_parts: parts,
        options: s.options.describe(),
        baseline: baseline.map(|b| Baseline {
            keep: b.schedule.config.keep,
            arena_bytes: b.arena_bytes(),
            naive_bytes: super::naive_bytes(&b.lifetimes),
            persistent_bytes: persistent_parts(&b.schedule).iter().map(|(_, x)| x).sum(),
        }),
    }
}

pub fn command(f: &PlanFlags) -> Result<String> {
    let config = cli::model_config(&f.model, f.classes, f.in_channels)?;
    let batch = cli::check_batch(f.batch)?;
    let mode = match f.mode {
        PlanMode::Train => Mode::Train,
        PlanMode::Eval => Mode::Eval,
    };
    let options = f.memory.options();
    let program = Program::new(wrn::build(&config, batch, mode, options));
    let baseline = (mode == Mode::Train && config.keep < 1.0)
        .then(|| Program::new(wrn::build(&ModelConfig { keep: 1.0, ..config }, batch, mode, options)));
    let r = report(&program, baseline.as_ref());
    Ok(match f.format {
        Format::Text => report::text(&r, f.width.clamp(16, 400)),
        Format::Json => report::json(&r) + "\n",
        Format::Svg => report::svg(&r),
    })
}
