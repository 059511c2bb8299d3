//! The PyTorch reference check: a WRN-10-2 on a batch of 4 images, computed by PyTorch in
//! float64 (`tests/data/wrn10_2_reference.bin`, embedded in the binary so `selftest` can run it
//! on any backend). Four cases: the full network, SliceOut keep 0.5 with starts 5, 17, 40, the
//! same with starts 25, 50, 100 (all wrapping past the last channel), and five SGD steps then
//! eval-mode logits. Each compared tensor gives one row: name, relative error
//! `||ours - ref|| / ||ref||`, tolerance.
//!
//! File format (little-endian): `b"SOREF\0\0\0"`, u32 version 1, u32 count, then `count`
//! records `u32 name_len, name, u32 ndim, u32 dims[ndim], f32 data[...]` (row-major).

use super::rel_err;
use crate::backend::{Backend, StepCtx};
use crate::error::{Error, Result};
use crate::ir::Role;
use crate::model::{wrn, ModelConfig};
use crate::ops::sgd::{GradMap, SgdParams};
use crate::plan::Program;
use crate::schedule::{Lowering, Mode, Options, UpdateAt};
use byteorder::{LittleEndian, ReadBytesExt};
use std::collections::HashMap;
use std::io::Read;

pub const REFERENCE: &[u8] = include_bytes!("../../tests/data/wrn10_2_reference.bin");

pub struct RefTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Parses a reference file.
pub fn parse(bytes: &[u8]) -> Result<HashMap<String, RefTensor>> {
    let bad = |m: &str| Error::Msg(format!("reference file: {m}"));
    let mut r = bytes;
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic).map_err(|_| bad("truncated header"))?;
    if &magic != b"SOREF\0\0\0" {
        return Err(bad("bad magic"));
    }
    let version = r.read_u32::<LittleEndian>().map_err(|_| bad("truncated header"))?;
    if version != 1 {
        return Err(bad(&format!("version {version}, expected 1")));
    }
    let count = r.read_u32::<LittleEndian>().map_err(|_| bad("truncated header"))?;
    let mut out = HashMap::new();
    for _ in 0..count {
        let mut rd = || r.read_u32::<LittleEndian>().map_err(|_| bad("truncated record"));
        let name_len = rd()? as usize;
        let _ = rd;
        if name_len > r.len() {
            return Err(bad("truncated name"));
        }
        let name = String::from_utf8(r[..name_len].to_vec()).map_err(|_| bad("name is not utf-8"))?;
        r = &r[name_len..];
        let ndim = r.read_u32::<LittleEndian>().map_err(|_| bad("truncated record"))? as usize;
        let mut shape = vec![];
        for _ in 0..ndim {
            shape.push(r.read_u32::<LittleEndian>().map_err(|_| bad("truncated dims"))? as usize);
        }
        let n: usize = shape.iter().product();
        if n * 4 > r.len() {
            return Err(bad(&format!("{name}: truncated data")));
        }
        let mut data = vec![0f32; n];
        r.read_f32_into::<LittleEndian>(&mut data).map_err(|_| bad("truncated data"))?;
        out.insert(name, RefTensor { shape, data });
    }
    Ok(out)
}

/// One compared tensor.
pub struct Row {
    pub case: &'static str,
    pub name: String,
    pub rel_err: f64,
    pub tol: f64,
}

impl Row {
    pub fn pass(&self) -> bool {
        self.rel_err <= self.tol
    }
}

pub fn config() -> ModelConfig {
    ModelConfig { depth: 10, widen: 2, classes: 10, in_channels: 3, keep: 1.0 }
}

/// NCHW (PyTorch) -> CNHW (ours).
pub fn nchw_to_cnhw(x: &[f32], n: usize, c: usize, hw: usize) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    for i in 0..n {
        for j in 0..c {
            out[(j * n + i) * hw..][..hw].copy_from_slice(&x[(i * c + j) * hw..][..hw]);
        }
    }
    out
}

/// Persistent region with the reference's initial weights (running mean 0, var 1, momentum 0).
fn initial_state(p: &Program, r: &HashMap<String, RefTensor>) -> Result<Vec<f32>> {
    let mut state = wrn::init_persistent(&p.schedule, 0);
    for t in &p.schedule.tensors {
        if t.role == Role::Param {
            let src = r
                .get(&format!("init.{}", t.name))
                .ok_or_else(|| Error::Msg(format!("reference file lacks init.{}", t.name)))?;
            if src.data.len() != t.len() {
                return Err(Error::Msg(format!(
                    "reference init.{}: {} values, expected {}",
                    t.name,
                    src.data.len(),
                    t.len()
                )));
            }
            state[t.range()].copy_from_slice(&src.data);
        }
    }
    Ok(state)
}

/// Scatters a sliced gradient into a zero tensor of the parameter's full size.
pub fn scatter_grad(grad: &[f32], full_len: usize, map: GradMap) -> Vec<f32> {
    let mut out = vec![0f32; full_len];
    match map {
        GradMap::Full => out.copy_from_slice(grad),
        GradMap::Rows { slice, row_len } => {
            for run in slice.each_run() {
                out[run.channel * row_len..][..run.len * row_len]
                    .copy_from_slice(&grad[run.at * row_len..][..run.len * row_len]);
            }
        }
        GradMap::Cols { slice, rows, group } => {
            for row in 0..rows {
                for run in slice.each_run() {
                    let dst = row * slice.channels * group + run.channel * group;
                    let src = row * slice.width * group + run.at * group;
                    out[dst..dst + run.len * group].copy_from_slice(&grad[src..src + run.len * group]);
                }
            }
        }
    }
    out
}

/// The reference's SGD settings (the one-step cases pass them too, but run no update).
const SGD: SgdParams = SgdParams { lr: 0.1, momentum: 0.9, weight_decay: 5e-4, nesterov: true };

/// The reference batch: images in our CNHW layout, labels, and the number of images.
struct Batch<'a> {
    x: Vec<f32>,
    y: &'a [f32],
    n: usize,
}

/// The reference tensor `k`, or an error naming it.
fn lookup<'a>(r: &'a HashMap<String, RefTensor>, k: &str) -> Result<&'a RefTensor> {
    r.get(k).ok_or_else(|| Error::Msg(format!("reference file lacks {k}")))
}

/// Runs every reference case on `backend` (which it reserves and overwrites).
pub fn check(backend: &mut dyn Backend) -> Result<Vec<Row>> {
    let r = parse(REFERENCE)?;
    let x = lookup(&r, "x")?;
    let (n, c_in, hw) = (x.shape[0], x.shape[1], x.shape[2] * x.shape[3]);
    let x = nchw_to_cnhw(&x.data, n, c_in, hw);
    let batch = Batch { x, y: &lookup(&r, "y")?.data, n };
    let mut rows = vec![];
    for (case, keep) in [("full", 1.0), ("slice", 0.5), ("wrap", 0.5)] {
        rows.extend(one_step_case(backend, &r, &batch, case, keep)?);
    }
    rows.extend(sgd_case(backend, &r, &batch)?);
    Ok(rows)
}

/// One training step without an update at `keep` (SliceOut starts from the file, all 0 for
/// "full"): rows for the logits, the loss, every gradient and the running statistics after it.
fn one_step_case(
    backend: &mut dyn Backend,
    r: &HashMap<String, RefTensor>,
    batch: &Batch,
    case: &'static str,
    keep: f64,
) -> Result<Vec<Row>> {
    let starts: Vec<usize> = match case {
        "full" => vec![0; 3],
        _ => lookup(r, &format!("{case}.starts"))?.data.iter().map(|&s| s as usize).collect(),
    };
    let cfg = ModelConfig { keep, ..config() };
    let grads_only = Options { update: UpdateAt::None, ..Options::default() };
    let lowering = Lowering { target: backend.target(), ..Lowering::default() };
    let p = Program::new(wrn::build(&cfg, batch.n, Mode::Train, grads_only, lowering));
    backend.reserve_arena(p.arena_bytes())?;
    let init = initial_state(&p, r)?;
    backend.set_persistent(&init)?;
    backend.write(&p, p.schedule.input, &batch.x);
    backend.write(&p, p.schedule.labels, batch.y);
    let ctx = StepCtx::new(&starts, SGD);
    backend.run(&p, &ctx);
    backend.synchronize();
    let s = &p.schedule;
    let mut rows = vec![];
    let mut logits = vec![0f32; batch.n * cfg.classes];
    backend.read(&p, s.logits, &mut logits);
    rows.push(Row {
        case,
        name: "logits".into(),
        rel_err: rel_err(&logits, &lookup(r, &format!("{case}.logits"))?.data),
        tol: 1e-4,
    });
    let mut loss = [0f32; 2];
    backend.read(&p, s.loss, &mut loss);
    rows.push(Row {
        case,
        name: "loss".into(),
        rel_err: rel_err(&loss[..1], &lookup(r, &format!("{case}.loss"))?.data),
        tol: 1e-4,
    });
    // Gradients: each parameter's gradient buffer is the one its (absent) update would read.
    for g in &s.gradients {
        rows.push(grad_row(backend, &p, case, g.param, g.grad, s.grad_map(g.map, &starts), r)?);
    }
    let mut state = vec![0f32; s.persistent_len()];
    backend.get_persistent(&mut state);
    for t in s.tensors.iter().filter(|t| matches!(t.role, Role::RunningMean | Role::RunningVar)) {
        let want = &lookup(r, &format!("{case}.after1.{}", t.name))?.data;
        rows.push(Row {
            case,
            name: format!("after1.{}", t.name),
            rel_err: rel_err(&state[t.range()], want),
            tol: 1e-3,
        });
    }
    Ok(rows)
}

/// Five SGD steps on the full network, then eval-mode logits: rows for the five losses, every
/// parameter after them, and the logits.
fn sgd_case(backend: &mut dyn Backend, r: &HashMap<String, RefTensor>, batch: &Batch) -> Result<Vec<Row>> {
    let (x, y, n) = (&batch.x, batch.y, batch.n);
    let cfg = config();
    let (options, lowering) = (Options::default(), Lowering { target: backend.target(), ..Lowering::default() });
    let train = Program::new(wrn::build(&cfg, n, Mode::Train, options, lowering));
    let eval = Program::new(wrn::build(&cfg, n, Mode::Eval, options, lowering));
    backend.reserve_arena(train.arena_bytes().max(eval.arena_bytes()))?;
    backend.set_persistent(&initial_state(&train, r)?)?;
    let starts = [0usize; 3];
    let ctx = StepCtx::new(&starts, SGD);
    let mut losses = vec![];
    for _ in 0..5 {
        backend.write(&train, train.schedule.input, x);
        backend.write(&train, train.schedule.labels, y);
        backend.run(&train, &ctx);
        let mut loss = [0f32; 2];
        backend.read(&train, train.schedule.loss, &mut loss);
        losses.push(loss[0]);
    }
    let mut rows = vec![Row {
        case: "sgd",
        name: "losses".into(),
        rel_err: rel_err(&losses, &lookup(r, "sgd.losses")?.data),
        tol: 1e-3,
    }];
    let mut state = vec![0f32; train.schedule.persistent_len()];
    backend.get_persistent(&mut state);
    for t in train.schedule.tensors.iter().filter(|t| t.role == Role::Param) {
        let want = &lookup(r, &format!("sgd.after5.{}", t.name))?.data;
        rows.push(Row {
            case: "sgd",
            name: format!("after5.{}", t.name),
            rel_err: rel_err(&state[t.range()], want),
            tol: 1e-3,
        });
    }
    backend.write(&eval, eval.schedule.input, x);
    backend.write(&eval, eval.schedule.labels, y);
    backend.run(&eval, &ctx);
    backend.synchronize();
    let mut logits = vec![0f32; n * cfg.classes];
    backend.read(&eval, eval.schedule.logits, &mut logits);
    rows.push(Row {
        case: "sgd",
        name: "eval_logits".into(),
        rel_err: rel_err(&logits, &lookup(r, "sgd.eval_logits")?.data),
        tol: 1e-3,
    });
    Ok(rows)
}

fn grad_row(
    backend: &mut dyn Backend,
    p: &Program,
    case: &'static str,
    param: usize,
    grad: usize,
    map: GradMap,
    r: &HashMap<String, RefTensor>,
) -> Result<Row> {
    let t = &p.schedule.tensors[param];
    let mut g = vec![0f32; p.schedule.buffers[grad].len];
    backend.read(p, grad, &mut g);
    let full = scatter_grad(&g, t.len(), map);
    let want = lookup(r, &format!("{case}.grad.{}", t.name))?;
    Ok(Row { case, name: format!("grad.{}", t.name), rel_err: rel_err(&full, &want.data), tol: 1e-3 })
}

/// Prints rows as a table; returns the number of failures.
pub fn print(rows: &[Row]) -> usize {
    let mut failed = 0;
    for row in rows {
        let ok = row.pass();
        failed += usize::from(!ok);
        outln!(
            "{:6} {:44} {:10.2e} {:8.0e}  {}",
            row.case,
            row.name,
            row.rel_err,
            row.tol,
            if ok { "ok" } else { "FAIL" }
        );
    }
    failed
}
