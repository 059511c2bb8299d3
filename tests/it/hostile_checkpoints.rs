//! Forged model files that pass every format check (a valid CRC, a well-formed safetensors
//! header) but hold what sliceout never writes: metadata out of range, tensors of the wrong
//! shape or unknown to the model, impossible values, repeated header keys, extreme
//! normalisation, and epoch sums that do not fit the step. Every reader (`eval`, `export` to
//! either format, `train --init`, `train --resume`) refuses each one with one line naming the
//! file and the field, and never a flag the user did not give; only tensor values are left to
//! the readers that use them, since `export` converts them bit for bit.

use crate::common::{self, tmp};
use sliceout::backend::DeviceChoice;
use sliceout::export;
use sliceout::io::checkpoint::{self, Checkpoint, Tensor};
use sliceout::io::safetensors::{self as st, TensorFile, Values};
use sliceout::ir::Precision;
use sliceout::model_file;
use sliceout::train::{self, TrainArgs};
use std::path::{Path, PathBuf};

/// A small dataset, a finished run, its model as safetensors, and a checkpoint taken in the
/// middle of an epoch (2 of 4 steps of batch 4).
struct Files {
    dir: PathBuf,
    data: PathBuf,
    /// End of an epoch: its sums are zero.
    last: PathBuf,
    mid: PathBuf,
    model: PathBuf,
}

fn files(name: &str) -> Files {
    let dir = tmp(name);
    let data = dir.join("data");
    sliceout::data::synth::write_synthetic(&data, 16, 8, 1, false).unwrap();
    let run = dir.join("run");
    train::train(&args(&data, &run)).unwrap();
    let mid_run = dir.join("mid");
    let s = train::train(&TrainArgs { stop_after: Some(2), ..args(&data, &mid_run) }).unwrap();
    assert_eq!(s.stopped_at, Some(2));
    let (last, mid, model) = (run.join("last.ckpt"), mid_run.join("last.ckpt"), dir.join("model.safetensors"));
    export::save_safetensors(&model, &last, &model_file::load_model(&last).unwrap()).unwrap();
    Files { dir, data, last, mid, model }
}

/// WRN-10-1, 1 epoch of 4 steps of batch 4, no test-time recalibration.
fn args(data: &Path, out: &Path) -> TrainArgs {
    TrainArgs { epochs: 1, batch: 4, limit_train: Some(16), ..common::args(data, out) }
}

/// `ck` changed by `change`, saved under a valid CRC to `to`.
fn forge_ckpt(from: &Path, to: &Path, change: impl FnOnce(&mut Checkpoint)) {
    let mut ck = checkpoint::load(from).unwrap();
    change(&mut ck);
    checkpoint::save(to, &ck).unwrap();
}

/// The safetensors file `from` changed by `change`, written to `to`.
fn forge_st(from: &Path, to: &Path, change: impl FnOnce(&mut TensorFile)) {
    let mut f = st::load(from).unwrap();
    change(&mut f);
    st::save(to, &f).unwrap();
}

/// The safetensors file `from` with its header text passed through `edit`, padded to 8 bytes.
fn forge_header(from: &Path, to: &Path, edit: impl FnOnce(&str) -> String) {
    let b = std::fs::read(from).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let mut header = edit(std::str::from_utf8(&b[8..8 + n]).unwrap().trim_end()).into_bytes();
    header.resize(header.len().next_multiple_of(8), b' ');
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&header);
    out.extend_from_slice(&b[8 + n..]);
    std::fs::write(to, out).unwrap();
}

fn tensor<'a>(ck: &'a mut Checkpoint, name: &str) -> &'a mut Tensor {
    ck.tensors.iter_mut().find(|t| t.name == name).unwrap()
}

/// The error of every reader of the model file `model`: `eval`, `train --init`, `train
/// --resume` when `model` is a checkpoint, and with `export` (which reads names, shapes and
/// metadata, and converts values bit for bit, whatever they are) also `export`.
fn refusals(f: &Files, model: &Path, export: bool) -> Vec<String> {
    let request = train::EvalRequest {
        model,
        data: &f.data,
        dataset: None,
        coarse: false,
        batch: 4,
        device: DeviceChoice::Cpu,
        limit_test: None,
        bn_recal: 0,
        precision: Precision::Fp32,
    };
    let mut errors = vec![train::evaluate(&request).map(drop)];
    if export {
        errors.push(model_file::load_model(model).map(drop));
    }
    let out = f.dir.join("out");
    let _ = std::fs::remove_dir_all(&out);
    let init = TrainArgs { init: Some(model.to_path_buf()), ..args(&f.data, &out) };
    errors.push(train::train(&init).map(drop));
    if checkpoint::load(model).is_ok() {
        let resume = TrainArgs { resume: Some(model.to_path_buf()), epochs: 2, ..args(&f.data, &out) };
        errors.push(train::train(&resume).map(drop));
    }
    assert!(!out.join("last.ckpt").exists(), "{}: a refused run wrote a checkpoint", model.display());
    errors.into_iter().map(|r| r.expect_err(&format!("{} was accepted", model.display())).to_string()).collect()
}

/// Every reader refuses `model` (`export` too with `export`), naming it, with every one of
/// `needles`, and no flag.
fn refused_by(f: &Files, model: &Path, export: bool, needles: &[&str]) {
    let name = model.file_name().unwrap().to_str().unwrap();
    for msg in refusals(f, model, export) {
        assert!(msg.contains(name) && !msg.contains("--"), "{msg}");
        for n in needles {
            assert!(msg.contains(n), "lacks '{n}': {msg}");
        }
    }
}

/// Every reader, `export` included, refuses `model`.
fn refused(f: &Files, model: &Path, needles: &[&str]) {
    refused_by(f, model, true, needles);
}

/// The binary's exit code and stderr.
fn sliceout(args: &[&str]) -> (i32, String) {
    let (code, _, err) = common::sliceout(args);
    (code, err)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn metadata_out_of_range_names_the_file_and_key_never_a_flag() {
    let f = files("meta");
    for (key, value, expect) in [
        ("keep", "0", "metadata keep = \"0\": expected a fraction in (0, 1]"),
        ("keep", "NaN", "metadata keep = \"NaN\": expected a fraction in (0, 1]"),
        ("in_channels", "0", "metadata in_channels = \"0\": expected an integer >= 1"),
        ("depth", "12", "metadata depth = \"12\": expected 6n+4"),
        ("classes", "1", "metadata classes = \"1\": expected an integer >= 2"),
        ("widen", "100000000", "metadata widen = \"100000000\": expected a network whose parameters"),
        ("norm_mean", "[3e38,0.5,0.5]", "metadata norm_mean[0] = 3e38 is out of range"),
        ("norm_std", "[0.2,1e-45,0.2]", "metadata norm_std[1] = 1e-45 is out of range"),
    ] {
        let p = f.dir.join(format!("{key}-{value}.safetensors"));
        forge_st(&f.model, &p, |t| _ = t.metadata.insert(key.into(), value.into()));
        refused(&f, &p, &[expect]);
    }
    // Through the binary: one line, exit 1, no flag named (the user gave none).
    let p = f.dir.join("keep-0.safetensors");
    let (code, err) = sliceout(&["eval", "--checkpoint", s(&p), "--data", s(&f.data), "--device", "cpu"]);
    assert_eq!((code, err.trim_end().lines().count()), (1, 1), "{err}");
    assert!(err.contains("keep-0.safetensors: metadata keep = \"0\"") && !err.contains("--"), "{err}");
    let out = f.dir.join("init-run");
    let args = ["train", "--init", s(&p), "--data", s(&f.data), "--device", "cpu", "--out", s(&out)];
    let (code, err) = sliceout(&args);
    assert!(code == 1 && err.contains("metadata keep = \"0\"") && !err.contains("--keep"), "{err}");
    std::fs::remove_dir_all(&f.dir).unwrap();
}

#[test]
fn wrong_shapes_and_unknown_tensors_are_refused_by_every_reader() {
    let f = files("shapes");
    let transposed = f.dir.join("transposed.ckpt");
    forge_ckpt(&f.last, &transposed, |ck| tensor(ck, "conv0.weight").shape = vec![3, 16, 3, 3]);
    refused(&f, &transposed, &["tensor conv0.weight: expected shape [16, 3, 3, 3]", "found [3, 16, 3, 3]"]);
    let rank16 = f.dir.join("rank16.ckpt");
    let mut shape = vec![1; 15];
    shape.push(16);
    forge_ckpt(&f.last, &rank16, |ck| tensor(ck, "block0.bn1.weight").shape = shape);
    refused(&f, &rank16, &["block0.bn1.weight: expected shape [16]", "found [1, 1, 1"]);
    let momentum = f.dir.join("momentum.ckpt");
    forge_ckpt(&f.last, &momentum, |ck| tensor(ck, "fc.weight.momentum").shape.reverse());
    refused(&f, &momentum, &["fc.weight.momentum: expected shape [10, 64]", "found [64, 10]"]);
    let extra = f.dir.join("extra.ckpt");
    forge_ckpt(&f.last, &extra, |ck| {
        ck.tensors.push(Tensor { name: "head.w".into(), shape: vec![2], data: vec![0.0; 2] })
    });
    refused(&f, &extra, &["has tensor head.w (shape [2]), which WRN-10-1 does not have"]);
    // A checkpoint holds no step counters: only safetensors files do, as PyTorch does.
    let counter = f.dir.join("counter.ckpt");
    forge_ckpt(&f.last, &counter, |ck| {
        ck.tensors.push(Tensor { name: "bn.num_batches_tracked".into(), shape: vec![], data: vec![4.0] })
    });
    refused(&f, &counter, &["has tensor bn.num_batches_tracked"]);

    let st_transposed = f.dir.join("transposed.safetensors");
    forge_st(&f.model, &st_transposed, |t| {
        t.entries.iter_mut().find(|e| e.name == "conv0.weight").unwrap().shape = vec![3, 16, 3, 3]
    });
    refused(&f, &st_transposed, &["tensor conv0.weight: expected shape [16, 3, 3, 3]", "found [3, 16, 3, 3]"]);

    // export to ONNX refused the transposed weights as well (it used to write them).
    let onnx = f.dir.join("x.onnx");
    let (code, err) = sliceout(&["export", "--checkpoint", s(&transposed), "--out", s(&onnx)]);
    assert!(code == 1 && err.contains("transposed.ckpt: tensor conv0.weight: expected shape"), "{err}");
    assert!(!onnx.exists());
    std::fs::remove_dir_all(&f.dir).unwrap();
}

#[test]
fn impossible_values_and_repeated_keys_are_refused() {
    let f = files("values");
    // A negative running variance, refused by every reader that uses the values; `export`
    // converts it as it is, as it does every bit pattern.
    let var = f.dir.join("var.ckpt");
    forge_ckpt(&f.last, &var, |ck| tensor(ck, "block1.bn2.running_var").data[3] = -0.5);
    let needle = "tensor block1.bn2.running_var holds -0.5 at index 3: expected a running variance, never negative";
    refused_by(&f, &var, false, &[needle]);
    assert!(model_file::load_model(&var).is_ok());
    let st_var = f.dir.join("var.safetensors");
    forge_st(&f.model, &st_var, |t| {
        let e = t.entries.iter_mut().find(|e| e.name == "bn.running_var").unwrap();
        let Values::F32(v) = &mut e.values else { panic!() };
        v[0] = -1.0;
    });
    refused_by(&f, &st_var, false, &["tensor bn.running_var holds -1 at index 0"]);

    // PyTorch's counter, as sliceout writes it: an I64 scalar (shape []), never negative.
    let counter = |name: &str, change: fn(&mut st::Entry), needles: &[&str]| {
        let p = f.dir.join(name);
        forge_st(&f.model, &p, |t| {
            change(t.entries.iter_mut().find(|e| e.name == "block1.bn1.num_batches_tracked").unwrap())
        });
        refused(&f, &p, needles);
    };
    counter(
        "negative.safetensors",
        |e| e.values = Values::I64(vec![-3]),
        &["block1.bn1.num_batches_tracked holds -3: expected a step counter >= 0"],
    );
    counter(
        "shape1.safetensors",
        |e| e.shape = vec![1],
        &["block1.bn1.num_batches_tracked: expected shape [] (a scalar step counter), found [1]"],
    );
    counter(
        "f32.safetensors",
        |e| e.values = Values::F32(vec![4.0]),
        &["block1.bn1.num_batches_tracked is F32, expected I64"],
    );
    let stray = f.dir.join("stray.safetensors");
    forge_st(&f.model, &stray, |t| {
        let e = t.entries.iter_mut().find(|e| e.name == "block1.bn1.num_batches_tracked").unwrap();
        e.name = "block9.bn1.num_batches_tracked".into();
    });
    refused(&f, &stray, &["has tensor block9.bn1.num_batches_tracked"]);

    // A key twice in the header: the crate would keep the second silently.
    let twice = f.dir.join("twice.safetensors");
    forge_header(&f.model, &twice, |h| h.replacen("\"keep\":\"0.5\"", "\"keep\":\"0.5\",\"keep\":\"1\"", 1));
    refused(&f, &twice, &["the key \"keep\" appears twice"]);
    let twice = f.dir.join("twice-tensor.safetensors");
    forge_header(&f.model, &twice, |h| {
        let at = h.find("\"fc.bias\":").unwrap();
        let end = at + h[at..].find('}').unwrap() + 1;
        format!("{},{}{}", &h[..end], &h[at..end], &h[end..])
    });
    refused(&f, &twice, &["the key \"fc.bias\" appears twice"]);

    // Finite but extreme normalisation: the normalised pixels would not be (eval said "test
    // loss NaN" and succeeded).
    for (name, mean, std, needle) in [
        ("mean.ckpt", 3e38, 0.25, "norm_mean[1] = 3e38 is out of range: expected a normalisation mean within +-1000.0"),
        (
            "std.ckpt",
            0.5,
            1e-45,
            "norm_std[1] = 1e-45 is out of range: expected a finite normalisation deviation >= 1e-12",
        ),
    ] {
        let p = f.dir.join(name);
        forge_ckpt(&f.last, &p, |ck| (ck.norm_mean[1], ck.norm_std[1]) = (mean, std));
        refused(&f, &p, &[needle]);
        let (code, err) = sliceout(&["eval", "--checkpoint", s(&p), "--data", s(&f.data), "--device", "cpu"]);
        assert!(code == 1 && err.contains(needle) && !err.contains("NaN"), "{err}");
    }
    std::fs::remove_dir_all(&f.dir).unwrap();
}

#[test]
fn epoch_sums_that_do_not_fit_the_step_are_refused() {
    let f = files("sums");
    let resume = |ck: &Path| {
        let out = f.dir.join("resumed");
        let _ = std::fs::remove_dir_all(&out);
        let r = train::train(&TrainArgs { resume: Some(ck.to_path_buf()), ..args(&f.data, &out) });
        let _ = std::fs::remove_dir_all(&out);
        r
    };
    // The genuine one resumes: 2 steps of 4 images seen.
    let good = checkpoint::load(&f.mid).unwrap();
    assert_eq!((good.step, good.epoch, good.meta("epoch_seen")), (2, 0, Some("8")));
    resume(&f.mid).unwrap();
    let set = |ck: &mut Checkpoint, key: &str, value: &str| {
        ck.meta.iter_mut().find(|(k, _)| k == key).unwrap().1 = value.to_string();
    };
    for (from, key, value, expect) in [
        (
            &f.mid,
            "epoch_seen",
            "12",
            "metadata epoch_seen '12' is invalid: expected 8, the images of the 2 steps of batch 4 taken in epoch 1",
        ),
        (&f.mid, "epoch_seen", "1e300", "metadata epoch_seen '1e300' is invalid: expected 8"),
        (&f.mid, "epoch_correct", "9", "metadata epoch_correct '9' is invalid: expected at most epoch_seen, 8"),
        (&f.mid, "epoch_correct", "1e-300", "metadata epoch_correct '1e-300' is invalid: expected a whole number >= 0"),
        (&f.mid, "epoch_loss", "-1", "metadata epoch_loss '-1' is invalid: expected a finite number >= 0"),
        (&f.mid, "epoch_loss", "inf", "metadata epoch_loss 'inf' is invalid: expected a finite number >= 0"),
        (&f.mid, "epoch_loss", "1e400", "metadata epoch_loss '1e400' is invalid: expected a finite number >= 0"),
        (&f.last, "epoch_loss", "3.5", "metadata epoch_loss '3.5' is invalid: expected 0, since epoch_seen is 0"),
        (&f.last, "epoch_seen", "4", "metadata epoch_seen '4' is invalid: expected 0, the images of the 0 steps"),
    ] {
        let p = f.dir.join("sums.ckpt");
        forge_ckpt(from, &p, |ck| set(ck, key, value));
        let msg = resume(&p).expect_err(&format!("{key} {value} was accepted")).to_string();
        assert!(msg.contains("sums.ckpt") && msg.contains(expect), "{key} {value}: {msg}");
        // No bound is printed as a 309-digit number.
        assert!(!msg.contains("1797693"), "{msg}");
    }
    std::fs::remove_dir_all(&f.dir).unwrap();
}
