//! The settings that change a run's numbers, recorded in its checkpoint so that a resume
//! continues the same run: written with every checkpoint, read back and judged, offered as a
//! resumed run's defaults (`cmd::train`), and compared with what a resume asks for: another
//! value is refused naming its flag unless the resume says `--change`, and a change is then
//! recorded in the metrics of the epoch it happens in.
//!
//! Recorded: the optimiser (lr, momentum, wd, nesterov, schedule), seed, align, augment,
//! precision, math, bn_recal, the test images (`--limit-test`), coarse, and the memory options
//! that change results: col_chunk and col_budget (the weight gradient is summed image chunk by
//! image chunk, so other chunks round it differently), in_place (in bf16 the shortcut's
//! gradient is rounded once in place, twice through a fresh buffer and an add), input_grad and
//! winograd (other kernels on the GPU, other rounding). Not recorded: recompute (the recomputed
//! output is bit-identical by construction, `ops::batchnorm`) and update (an update reads its
//! own gradient alone, after the op that computed it has used the weight): a resume may change
//! those freely. Neither is the device: a run moves between machines. The data folder is
//! recorded (made absolute) so that a resume needs no `--data`, but not compared: the data may
//! move, and its image counts are what is compared.
//!
//! Checkpoints written before these keys were stored lack them: a resume then takes the values
//! from its flags, as it always did.

use super::TrainArgs;
use crate::error::{Error, Result};
use crate::io::checkpoint::Checkpoint;
use crate::io::metrics::Change;
use std::path::{Path, PathBuf};

/// Whether `x` holds as the f32 a step uses for a learning rate or weight decay: >= 0, finite
/// as an f32, and not rounded to 0 unless it is 0.
pub fn rate_fits_f32(x: f64) -> bool {
    x >= 0.0 && (x as f32).is_finite() && (x == 0.0 || x as f32 > 0.0)
}

/// Whether `x` is a momentum in [0, 1) that stays below 1 as an f32.
pub fn momentum_fits_f32(x: f64) -> bool {
    (0.0..1.0).contains(&x) && (x as f32) < 1.0
}

/// What `--lr` and `--wd` may be, after what they are.
pub const RATE_RANGE: &str = ">= 0 that a 32-bit float holds: 0, or 1.4e-45 to 3.4e38";
/// What `--momentum` may be.
pub const MOMENTUM_RANGE: &str = "a value in [0, 1) that stays below 1 as a 32-bit float: at most 0.99999994";

/// One recorded setting.
struct Setting {
    /// Its checkpoint metadata key.
    key: &'static str,
    /// What a stored value must be, for the message refusing another.
    expected: &'static str,
    /// The canonical text of a stored value; `None` when it is out of range.
    parse: fn(&str) -> Option<String>,
    /// Its value in a run of these args with this many test images, canonical.
    value: fn(&TrainArgs, usize) -> String,
    /// A canonical value as the command line says it.
    show: fn(&str) -> String,
}

fn rate(s: &str) -> Option<String> {
    s.parse::<f64>().ok().filter(|&x| rate_fits_f32(x)).map(|x| format!("{x:?}"))
}

fn boolean(s: &str) -> Option<String> {
    matches!(s, "true" | "false").then(|| s.to_string())
}

fn at_least(s: &str, min: usize) -> Option<String> {
    s.parse::<usize>().ok().filter(|&n| n >= min).map(|n| n.to_string())
}

/// Every recorded setting but the data folder.
fn settings() -> [Setting; 18] {
    use crate::backend::Math;
    use crate::ir::Precision;
    use crate::schedule::InputGrad;
    use crate::train::LrSchedule;
    [
        Setting {
            key: "lr",
            expected: "a learning rate that a 32-bit float holds",
            parse: rate,
            value: |a, _| format!("{:?}", a.lr),
            show: |v| format!("--lr {v}"),
        },
        Setting {
            key: "momentum",
            expected: "a momentum in [0, 1) as a 32-bit float",
            parse: |s| s.parse::<f64>().ok().filter(|&x| momentum_fits_f32(x)).map(|x| format!("{x:?}")),
            value: |a, _| format!("{:?}", a.momentum),
            show: |v| format!("--momentum {v}"),
        },
        Setting {
            key: "wd",
            expected: "a weight decay that a 32-bit float holds",
            parse: rate,
            value: |a, _| format!("{:?}", a.wd),
            show: |v| format!("--wd {v}"),
        },
        Setting {
            key: "nesterov",
            expected: "true or false",
            parse: boolean,
            value: |a, _| a.nesterov.to_string(),
            show: |v| if v == "true" { "--nesterov" } else { "--no-nesterov" }.to_string(),
        },
        Setting {
            key: "schedule",
            expected: "cosine or step",
            parse: |s| LrSchedule::parse(s).map(|s| s.as_str().to_string()),
            value: |a, _| a.schedule.as_str().to_string(),
            show: |v| format!("--schedule {v}"),
        },
        Setting {
            key: "seed",
            expected: "an integer from 0 to 2^64-1",
            parse: |s| s.parse::<u64>().ok().map(|n| n.to_string()),
            value: |a, _| a.seed.to_string(),
            show: |v| format!("--seed {v}"),
        },
        Setting {
            key: "align",
            expected: "an integer >= 1",
            parse: |s| at_least(s, 1),
            value: |a, _| a.align.to_string(),
            show: |v| format!("--align {v}"),
        },
        Setting {
            key: "augment",
            expected: "true or false",
            parse: boolean,
            value: |a, _| a.augment.to_string(),
            show: |v| if v == "true" { "--augment" } else { "--no-augment" }.to_string(),
        },
        Setting {
            key: "precision",
            expected: "fp32 or bf16",
            parse: |s| Precision::parse(s).ok().map(|p| p.as_str().to_string()),
            value: |a, _| a.lowering.precision.as_str().to_string(),
            show: |v| format!("--precision {v}"),
        },
        Setting {
            key: "math",
            expected: "tf32 or fp32",
            parse: |s| Math::parse(s).ok().map(|m| m.as_str().to_string()),
            value: |a, _| a.math.as_str().to_string(),
            show: |v| format!("--math {v}"),
        },
        Setting {
            key: "bn_recal",
            expected: "an integer >= 0",
            parse: |s| at_least(s, 0),
            value: |a, _| a.bn_recal.to_string(),
            show: |v| format!("--bn-recal {v}"),
        },
        Setting {
            key: "test_images",
            expected: "an integer >= 1",
            parse: |s| at_least(s, 1),
            value: |_, test_images| test_images.to_string(),
            show: |v| format!("--limit-test {v}"),
        },
        Setting {
            key: "coarse",
            expected: "true or false",
            parse: boolean,
            value: |a, _| a.coarse.to_string(),
            show: |v| if v == "true" { "--coarse" } else { "no --coarse" }.to_string(),
        },
        Setting {
            key: "col_chunk",
            expected: "an integer >= 0",
            parse: |s| at_least(s, 0),
            value: |a, _| a.options.col_chunk.to_string(),
            show: |v| format!("--col-chunk {v}"),
        },
        Setting {
            key: "col_budget",
            expected: "a number of MiB from 0 (the device's default) to 1048576",
            parse: |s| at_least(s, 0).filter(|n| n.parse::<usize>().is_ok_and(|n| n <= 1 << 20)),
            value: |a, _| a.options.col_budget_mib.to_string(),
            show: |v| if v == "0" { "no --col-budget".to_string() } else { format!("--col-budget {v}") },
        },
        Setting {
            key: "in_place",
            expected: "true or false",
            parse: boolean,
            value: |a, _| a.options.in_place.to_string(),
            show: |v| if v == "true" { "--in-place" } else { "--no-in-place" }.to_string(),
        },
        Setting {
            key: "input_grad",
            expected: "conv or col2im",
            parse: |s| InputGrad::parse(s).ok().map(|g| g.as_str().to_string()),
            value: |a, _| a.lowering.input_grad.as_str().to_string(),
            show: |v| format!("--input-grad {v}"),
        },
        Setting {
            key: "winograd",
            expected: "true or false",
            parse: boolean,
            value: |a, _| a.lowering.winograd.to_string(),
            show: |v| if v == "true" { "--winograd" } else { "--no-winograd" }.to_string(),
        },
    ]
}

/// `state.rs` writes the schedule with what fixes the step count; it is compared here.
const WRITTEN_BY_STATE: &str = "schedule";

/// The metadata pairs that record a run of `args` with `test_images` test images: every setting
/// and the data folder (absolute; left out when it is no UTF-8 text, so a resume then asks for
/// `--data`).
pub fn record(args: &TrainArgs, test_images: usize) -> Vec<(String, String)> {
    let settings = settings().into_iter().filter(|s| s.key != WRITTEN_BY_STATE);
    let mut pairs: Vec<_> = settings.map(|s| (s.key.to_string(), (s.value)(args, test_images))).collect();
    if let Some(data) = data_text(&args.data) {
        pairs.push(("data".to_string(), data));
    }
    pairs
}

/// `data` made absolute, as text; `None` when it cannot be.
pub fn data_text(data: &Path) -> Option<String> {
    std::path::absolute(data).ok()?.to_str().map(str::to_string)
}

/// What a checkpoint records of its run's settings: canonical values (absent keys are absent),
/// the data folder, and the changes a resume made in the epoch in progress (which its metrics
/// line will list).
#[derive(Clone, Debug, Default)]
pub struct Recorded {
    values: Vec<(&'static str, String)>,
    pub data: Option<PathBuf>,
    pub changed: Vec<Change>,
}

impl Recorded {
    /// The settings recorded in `ck` (read from `path`), each judged: a value out of range is an
    /// error naming the checkpoint and the key.
    pub fn read(path: &Path, ck: &Checkpoint) -> Result<Recorded> {
        let bad = |key: &str, expected: &str| super::state::bad_meta(path, ck, key, expected);
        let mut values = Vec::new();
        for s in settings() {
            if let Some(v) = ck.meta(s.key) {
                values.push((s.key, (s.parse)(v).ok_or_else(|| bad(s.key, s.expected))?));
            }
        }
        let data = match ck.meta("data") {
            Some(d) if Path::new(d).is_absolute() && !d.contains('\0') => Some(PathBuf::from(d)),
            Some(_) => return Err(bad("data", "an absolute path")),
            None => None,
        };
        let changed = match ck.meta("changed") {
            Some(c) => serde_json::from_str(c).map_err(|_| bad("changed", "a JSON list of changes"))?,
            None => vec![],
        };
        Ok(Recorded { values, data, changed })
    }

    /// The recorded value of `key`, parsed; `None` when absent.
    pub fn get<T: std::str::FromStr>(&self, key: &str) -> Option<T> {
        self.text(key).and_then(|v| v.parse().ok())
    }

    /// The recorded text of `key`.
    pub fn text(&self, key: &str) -> Option<&str> {
        self.values.iter().find(|(k, _)| *k == key).map(|(_, v)| v.as_str())
    }

    /// The settings of `args` (with `test_images` test images) against the recorded ones of the
    /// checkpoint at `path`: what differs is refused, one line naming the flag, unless
    /// `args.allow_changes`; then it is returned, as changes.
    pub fn compare(&self, args: &TrainArgs, test_images: usize, path: &Path) -> Result<Vec<Change>> {
        let mut changes = Vec::new();
        for s in settings() {
            let (Some(run), now) = (self.text(s.key), (s.value)(args, test_images)) else { continue };
            if run == now {
                continue;
            }
            if args.allow_changes {
                changes.push(Change { setting: s.key.to_string(), from: run.to_string(), to: now });
                continue;
            }
            if s.key == "test_images" && args.limit_test.is_some_and(|n| n.to_string() == run) {
                // The run's own count was asked for: the folder holds fewer.
                let data = args.data.display();
                let expected = format!(
                    "the dataset of the run in {}, with its {run} test images ({data} holds {test_images})",
                    path.display()
                );
                return Err(Error::flag("--data", data, expected));
            }
            let (given, recorded) = ((s.show)(&now), (s.show)(run));
            let flag = given.split(' ').find(|w| w.starts_with("--")).unwrap_or(s.key);
            return Err(Error::Msg(format!(
                "{given} differs from the run in {}, which has {recorded}: leave {flag} out to continue the run as \
                 it was, or add --change to change it",
                path.display()
            )));
        }
        Ok(changes)
    }
}

/// `changes` as the command line says them: `--lr 0.05 (was --lr 0.1), ...`.
pub fn describe(changes: &[Change]) -> String {
    let show = |key: &str, v: &str| {
        settings().into_iter().find(|s| s.key == key).map_or_else(|| format!("{key} {v}"), |s| (s.show)(v))
    };
    let each: Vec<String> =
        changes.iter().map(|c| format!("{} (was {})", show(&c.setting, &c.to), show(&c.setting, &c.from))).collect();
    each.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_a_step_cannot_hold_as_f32_do_not_fit() {
        for x in [0.0, 1e-45, 0.1, 5e-4, 3.4e38] {
            assert!(rate_fits_f32(x), "{x}");
        }
        for x in [-0.1, 1e-46, 3.5e38, 1e39, f64::INFINITY, f64::NAN] {
            assert!(!rate_fits_f32(x), "{x}");
        }
        for x in [0.0, 0.9, 0.99999994, 0.99999997] {
            assert!(momentum_fits_f32(x), "{x}");
        }
        for x in [0.99999998, 0.99999999999, 1.0, -0.5, f64::NAN] {
            assert!(!momentum_fits_f32(x), "{x}");
        }
    }

    /// A checkpoint holding `meta` alone.
    fn with_meta(meta: &[(&str, &str)]) -> Checkpoint {
        Checkpoint {
            config: crate::ir::ModelConfig { depth: 10, widen: 1, classes: 10, in_channels: 3, keep: 1.0 },
            step: 0,
            epoch: 0,
            tensors: vec![],
            rngs: vec![],
            norm_mean: vec![],
            norm_std: vec![],
            meta: meta.iter().map(|&(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    #[test]
    fn recorded_values_are_judged_as_flags_are() {
        let path = Path::new("runs/a.ckpt");
        let good = [("lr", "5e-2"), ("momentum", "0.9"), ("precision", "bf16"), ("data", "/d"), ("winograd", "true")];
        let r = Recorded::read(path, &with_meta(&good)).unwrap();
        assert_eq!((r.text("lr"), r.get::<f64>("momentum")), (Some("0.05"), Some(0.9)));
        assert_eq!((r.text("precision"), r.get::<bool>("winograd")), (Some("bf16"), Some(true)));
        assert_eq!((r.data.as_deref(), r.text("seed")), (Some(Path::new("/d")), None));
        // Older checkpoints record nothing, which is no error.
        assert!(Recorded::read(path, &with_meta(&[])).unwrap().values.is_empty());
        for (key, value, expected) in [
            ("lr", "1e39", "a learning rate that a 32-bit float holds"),
            ("lr", "-1", "a learning rate that a 32-bit float holds"),
            ("momentum", "0.99999999999", "a momentum in [0, 1)"),
            ("wd", "NaN", "a weight decay"),
            ("seed", "-1", "an integer from 0 to 2^64-1"),
            ("align", "0", "an integer >= 1"),
            ("precision", "fp16", "fp32 or bf16"),
            ("nesterov", "yes", "true or false"),
            ("col_budget", "1048577", "1048576"),
            ("test_images", "0", "an integer >= 1"),
            ("data", "relative/data", "an absolute path"),
            ("changed", "[{\"setting\":\"lr\"}]", "a JSON list of changes"),
        ] {
            let msg = Recorded::read(path, &with_meta(&[(key, value)])).unwrap_err().to_string();
            assert!(msg.starts_with(&format!("checkpoint runs/a.ckpt: metadata {key} ")), "{msg}");
            assert!(msg.contains(expected), "{key} {value}: {msg}");
        }
    }

    #[test]
    fn changes_are_said_as_flags() {
        let c = |s: &str, from: &str, to: &str| Change { setting: s.into(), from: from.into(), to: to.into() };
        let said = describe(&[c("lr", "0.1", "0.05"), c("nesterov", "true", "false"), c("winograd", "false", "true")]);
        assert_eq!(said, "--lr 0.05 (was --lr 0.1), --no-nesterov (was --nesterov), --winograd (was --no-winograd)");
    }
}
