//! A model leaving sliceout and coming back: `export` to safetensors and ONNX, `eval` and
//! `train --init` from safetensors. The model is the PyTorch reference's WRN-10-2 (its initial
//! weights with the running statistics after one step, so BN is not the identity).
//!
//! The last test hands the files to real consumers (`scripts/check_export.py`: ONNX Runtime,
//! the safetensors library, NumPy). Where `python3` (or `$SLICEOUT_PYTHON`) lacks those wheels
//! it is skipped with a message, and fails when `CI` is set (`.ci/run` installs them).

use crate::common::{sliceout, tmp};
use prost::Message;
use sliceout::export::{self, onnx, proto};
use sliceout::io::checkpoint::{self, Checkpoint, Tensor};
use sliceout::io::safetensors::{self as st, Entry, TensorFile, Values};
use sliceout::ir::{ModelConfig, Role};
use sliceout::model_file;
use sliceout::rng::Rng;
use sliceout::verify::reference;
use std::path::{Path, PathBuf};
use std::process::Command;

fn succeeds(args: &[&str]) -> String {
    let (code, out, err) = sliceout(args);
    assert_eq!(code, 0, "{args:?}: {err}");
    out
}

/// Fails with one line on stderr holding every one of `needles`.
fn fails_with(args: &[&str], needles: &[&str]) {
    let (code, _, err) = sliceout(args);
    assert_ne!(code, 0, "{args:?} should fail");
    assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: not one line:\n{err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: message lacks '{n}':\n{err}");
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The reference WRN-10-2 as a checkpoint.
fn reference_checkpoint() -> Checkpoint {
    let r = reference::parse(reference::REFERENCE).unwrap();
    let config = reference::config();
    let tensors = model_file::model_tensors(&config)
        .into_iter()
        .map(|t| {
            let key =
                if t.role == Role::Param { format!("init.{}", t.name) } else { format!("full.after1.{}", t.name) };
            Tensor { name: t.name.clone(), shape: t.shape.clone(), data: r[&key].data.clone() }
        })
        .collect();
    Checkpoint {
        config,
        step: 1,
        epoch: 1,
        tensors,
        rngs: vec![],
        norm_mean: vec![0.4914, 0.4822, 0.4465],
        norm_std: vec![0.247, 0.2435, 0.2616],
        meta: vec![("dataset".into(), "cifar10".into())],
    }
}

/// A scratch folder holding `data/` (synthetic, `train` + `test` images), the reference model's
/// checkpoint and its safetensors export: (folder, checkpoint, safetensors file).
fn setup(name: &str, train: usize, test: usize) -> (PathBuf, PathBuf, PathBuf) {
    let dir = tmp(name);
    sliceout::data::synth::write_synthetic(&dir.join("data"), train, test, 3, false).unwrap();
    let (ck, model) = (dir.join("ref.ckpt"), dir.join("model.safetensors"));
    checkpoint::save(&ck, &reference_checkpoint()).unwrap();
    succeeds(&["export", "--checkpoint", s(&ck), "--out", s(&model)]);
    (dir, ck, model)
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn export_then_import_round_trips_every_tensor_bit_for_bit() {
    let dir = tmp("roundtrip");
    // Every tensor filled with arbitrary bit patterns: NaN payloads, -0.0, subnormals, infinities.
    let mut ck = reference_checkpoint();
    ck.config = ModelConfig { keep: 0.625, ..ck.config };
    ck.step = 123_456;
    let mut rng = Rng::new(7, 0);
    for t in &mut ck.tensors {
        t.data.iter_mut().for_each(|x| *x = f32::from_bits(rng.next_u64() as u32));
    }
    ck.tensors[0].data[..4].copy_from_slice(&[f32::from_bits(0x7fc0_0001), -0.0, f32::from_bits(1), f32::NEG_INFINITY]);
    let source = dir.join("ck");
    let out = dir.join("model.safetensors");
    export::save_safetensors(&out, &source, &ck).unwrap();

    let back = model_file::load_model(&out).unwrap();
    assert_eq!(back.config, ck.config);
    assert_eq!(back.step, ck.step);
    assert_eq!((bits(&back.norm_mean), bits(&back.norm_std)), (bits(&ck.norm_mean), bits(&ck.norm_std)));
    assert_eq!(back.tensors.len(), ck.tensors.len());
    for t in &ck.tensors {
        let b = back.tensor(&t.name).unwrap_or_else(|| panic!("{} lost", t.name));
        assert_eq!((&b.shape, bits(&b.data)), (&t.shape, bits(&t.data)), "{}", t.name);
    }
    // PyTorch's BN counters: one int64 scalar per BN layer, holding the steps.
    let file = st::load(&out).unwrap();
    let counters: Vec<&Entry> = file.entries.iter().filter(|e| e.name.ends_with(".num_batches_tracked")).collect();
    assert_eq!(counters.len(), ck.tensors.iter().filter(|t| t.name.ends_with(".running_mean")).count());
    assert!(counters.iter().all(|e| e.shape.is_empty() && e.values == Values::I64(vec![123_456])));
    // Exporting what was imported writes the same file, byte for byte (the header's keys are
    // sorted: the crate alone writes its metadata in HashMap order).
    let again = dir.join("again.safetensors");
    export::save_safetensors(&again, &out, &back).unwrap();
    assert!(std::fs::read(&again).unwrap() == std::fs::read(&out).unwrap(), "a second export differs in its bytes");
    let second = st::load(&again).unwrap();
    assert_eq!(second.metadata, file.metadata);
    let entry_bits = |f: &TensorFile| -> Vec<(String, Vec<usize>, Vec<u64>)> {
        let values = |v: &Values| match v {
            Values::F32(x) => x.iter().map(|x| x.to_bits() as u64).collect(),
            Values::I64(x) => x.iter().map(|&x| x as u64).collect(),
        };
        f.entries.iter().map(|e| (e.name.clone(), e.shape.clone(), values(&e.values))).collect()
    };
    assert!(entry_bits(&second) == entry_bits(&file), "a second export differs");
    // As initial weights, too, every tensor comes back.
    let init = model_file::load_init(&out, &ModelConfig { keep: 1.0, ..ck.config }, Path::new("data")).unwrap();
    for t in &ck.tensors {
        assert_eq!(bits(&init.tensor(&t.name).unwrap().data), bits(&t.data), "{}", t.name);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn eval_of_the_exported_file_equals_eval_of_the_checkpoint() {
    let (dir, ck, model) = setup("eval", 5, 37);
    let data = dir.join("data");
    let run = |m: &Path, logits: &Path| {
        succeeds(&[
            "eval",
            "--checkpoint",
            s(m),
            "--data",
            s(&data),
            "--batch",
            "16",
            "--device",
            "cpu",
            "--logits",
            s(logits),
        ])
    };
    let (a, b) = (dir.join("a.safetensors"), dir.join("b.safetensors"));
    let line = run(&ck, &a);
    assert!(line.starts_with("WRN-10-2 keep 1.00: test loss"), "{line}");
    assert_eq!(run(&model, &b), line.replace(s(&a), s(&b)));
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap(), "logits differ");
    let logits = st::load(&a).unwrap();
    let e = logits.entry("logits").unwrap();
    assert_eq!(e.shape, [37, 10]);
    let Values::F32(v) = &e.values else { panic!("logits are not F32") };
    assert!(v.iter().all(|x| x.is_finite()) && v.iter().any(|&x| x != v[0]));
    assert_eq!(logits.entry("labels").unwrap().shape, [37]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Rewrites a safetensors file through `edit`.
fn edited(from: &Path, to: &Path, edit: impl FnOnce(&mut TensorFile)) {
    let mut f = st::load(from).unwrap();
    edit(&mut f);
    st::save(to, &f).unwrap();
}

#[test]
fn truncated_or_mismatched_files_get_one_clear_line() {
    let (dir, ck, model) = setup("bad", 40, 8);
    let data = dir.join("data");
    let eval = |m: &Path| strings(&["eval", "--checkpoint", s(m), "--data", s(&data), "--device", "cpu"]);

    // Truncated anywhere: the header, the tensor data, the last byte.
    let bytes = std::fs::read(&model).unwrap();
    for cut in [0, 5, 8, 100, bytes.len() / 2, bytes.len() - 1] {
        let p = dir.join("cut.safetensors");
        std::fs::write(&p, &bytes[..cut]).unwrap();
        fails_with(&strs(&eval(&p)), &["cut.safetensors", "not a usable safetensors file: truncated"]);
    }
    // A tensor of the wrong shape, a missing one, an extra one, a wrong dtype.
    let p = dir.join("shape.safetensors");
    edited(&model, &p, |f| {
        let e = f.entries.iter_mut().find(|e| e.name == "block1.conv2.weight").unwrap();
        e.shape = vec![64, 16, 3, 12];
    });
    fails_with(&strs(&eval(&p)), &["shape.safetensors", "block1.conv2.weight", "[64, 64, 3, 3]", "[64, 16, 3, 12]"]);
    let p = dir.join("missing.safetensors");
    edited(&model, &p, |f| f.entries.retain(|e| e.name != "fc.bias"));
    fails_with(&strs(&eval(&p)), &["has no tensor fc.bias"]);
    let p = dir.join("extra.safetensors");
    edited(&model, &p, |f| {
        f.entries.push(Entry { name: "head.weight".into(), shape: vec![2], values: Values::F32(vec![0.0; 2]) })
    });
    fails_with(&strs(&eval(&p)), &["head.weight", "does not have"]);
    let p = dir.join("dtype.safetensors");
    edited(&model, &p, |f| {
        let e = f.entries.iter_mut().find(|e| e.name == "fc.bias").unwrap();
        e.values = Values::I64(vec![0; 10]);
    });
    fails_with(&strs(&eval(&p)), &["fc.bias", "I64", "F32"]);
    // Metadata: unreadable, absent.
    let p = dir.join("meta.safetensors");
    edited(&model, &p, |f| _ = f.metadata.insert("depth".into(), "ten".into()));
    fails_with(&strs(&eval(&p)), &["metadata depth", "\"ten\"", "integer"]);
    let bare = dir.join("bare.safetensors");
    edited(&model, &bare, |f| f.metadata.clear());
    fails_with(&strs(&eval(&bare)), &["metadata has no depth"]);
    // Not a model file at all.
    let p = dir.join("junk.bin");
    std::fs::write(&p, b"definitely not a model").unwrap();
    fails_with(&strs(&eval(&p)), &["junk.bin", "not a sliceout checkpoint, and not a usable safetensors file"]);

    // train --init checks the weights against the model flags.
    let run_dir = dir.join("run");
    let train = |init: &Path, extra: &[&str]| {
        let _ = std::fs::remove_dir_all(&run_dir);
        let mut a = strings(&["train", "--data", s(&data), "--out", s(&run_dir), "--init", s(init)]);
        a.extend(strings(&["--epochs", "1", "--batch", "20", "--device", "cpu"]));
        a.extend(strings(extra));
        a
    };
    let a = train(&model, &["--widen", "1"]);
    fails_with(&strs(&a), &["model.safetensors", "widen 2", "1 from the flags"]);
    // Without metadata the flags say what the model is, and the shapes say it is another one.
    let a = train(&bare, &["--depth", "10", "--widen", "1"]);
    fails_with(
        &strs(&a),
        &["bare.safetensors", "block0.conv1.weight", "expected shape [16, 16, 3, 3]", "found [32, 16, 3, 3]"],
    );
    let a = train(&ck, &["--depth", "16"]);
    fails_with(&strs(&a), &["ref.ckpt", "depth 10"]);
    assert!(!run_dir.join("last.ckpt").exists(), "a refused run wrote a checkpoint");
    let (code, _, err) = sliceout(&["train", "--init", s(&model), "--resume", s(&ck)]);
    assert!(code != 0 && err.lines().next().unwrap().contains("cannot be used with"), "{err}");

    // export: the format from the extension, never over its own input.
    fails_with(
        &["export", "--checkpoint", s(&ck), "--out", s(&dir.join("model.bin"))],
        &["--out", "model.bin", ".onnx"],
    );
    // A file named for one format is not written in the other.
    let named = dir.join("named.safetensors");
    fails_with(
        &["export", "--checkpoint", s(&ck), "--out", s(&named), "--format", "onnx"],
        &["--out", "named.safetensors", "--format onnx"],
    );
    assert!(!named.exists());
    let before = std::fs::read(&ck).unwrap();
    fails_with(
        &["export", "--checkpoint", s(&ck), "--out", s(&ck), "--format", "onnx"],
        &["--out", "a file other than", "ref.ckpt"],
    );
    let mut a = eval(&ck);
    a.extend(strings(&["--logits", s(&ck)]));
    fails_with(&strs(&a), &["--logits", "a file other than"]);
    assert_eq!(std::fs::read(&ck).unwrap(), before);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn train_init_starts_from_the_given_weights() {
    let (dir, ck, model) = setup("init", 40, 8);
    let want = reference_checkpoint();
    let bare = dir.join("bare.safetensors");
    edited(&model, &bare, |f| f.metadata.clear());
    // With a learning rate of 0 the parameters stay the initial ones, bit for bit (the BN
    // statistics move: training updates them). Model flags come from the file when it states
    // them; keep may differ (fine-tuning with SliceOut).
    for (init, extra) in
        [(&model, vec!["--keep", "0.5"]), (&ck, vec![]), (&bare, vec!["--depth", "10", "--widen", "2"])]
    {
        let out = dir.join("run");
        let _ = std::fs::remove_dir_all(&out);
        let data = dir.join("data");
        let mut args = vec!["train", "--data", s(&data), "--out", s(&out), "--init", s(init)];
        args.extend(["--epochs", "1", "--batch", "20", "--lr", "0", "--device", "cpu"]);
        args.extend(extra.iter().copied());
        let stdout = succeeds(&args);
        assert!(stdout.contains("WRN-10-2"), "{stdout}");
        let last = checkpoint::load(&out.join("last.ckpt")).unwrap();
        for t in want.tensors.iter().filter(|t| !t.name.contains("running")) {
            assert_eq!(bits(&last.tensor(&t.name).unwrap().data), bits(&t.data), "{init:?}: {}", t.name);
        }
        // The file's normalisation is kept when it states one.
        if init != &bare {
            assert_eq!(bits(&last.norm_mean), bits(&want.norm_mean), "{init:?}");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn onnx_graph_is_standard_complete_and_in_order() {
    let (dir, ck, _) = setup("onnx", 5, 1);
    let out = dir.join("model.onnx");
    let line = succeeds(&["export", "--checkpoint", s(&ck), "--out", s(&out)]);
    assert!(line.contains("ONNX opset 17"), "{line}");
    let m = proto::ModelProto::decode(std::fs::read(&out).unwrap().as_slice()).unwrap();
    assert_eq!(m.ir_version, Some(onnx::IR_VERSION));
    assert_eq!(m.opset_import.len(), 1);
    assert_eq!((m.opset_import[0].domain.as_deref(), m.opset_import[0].version), (Some(""), Some(17)));
    let meta: Vec<(&str, &str)> =
        m.metadata_props.iter().map(|p| (p.key.as_deref().unwrap(), p.value.as_deref().unwrap())).collect();
    assert!(meta.contains(&("depth", "10")) && meta.contains(&("widen", "2")), "{meta:?}");
    let g = m.graph.unwrap();
    let dims = |v: &proto::ValueInfoProto| -> Vec<String> {
        let Some(proto::type_proto::Value::TensorType(t)) = &v.r#type.as_ref().unwrap().value else { panic!() };
        t.shape.as_ref().unwrap().dim.iter().map(|d| format!("{:?}", d.value.as_ref().unwrap())).collect()
    };
    assert_eq!(g.input.len(), 1);
    assert_eq!(g.input[0].name.as_deref(), Some("image"));
    assert_eq!(dims(&g.input[0]), ["DimParam(\"batch\")", "DimValue(3)", "DimValue(32)", "DimValue(32)"]);
    assert_eq!(dims(&g.output[0]), ["DimParam(\"batch\")", "DimValue(10)"]);
    // Every model tensor is an initializer with the checkpoint's exact bits.
    let want = reference_checkpoint();
    for t in &want.tensors {
        let init = g.initializer.iter().find(|i| i.name.as_deref() == Some(&t.name)).unwrap();
        assert_eq!(init.dims, t.shape.iter().map(|&d| d as i64).collect::<Vec<_>>(), "{}", t.name);
        let raw: Vec<u8> = t.data.iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(init.raw_data.as_deref(), Some(raw.as_slice()), "{}", t.name);
    }
    // Standard ops only, each input defined before use, and the counts of a WRN-10-2.
    let mut defined: std::collections::HashSet<String> =
        g.initializer.iter().map(|i| i.name.clone().unwrap()).chain(["image".to_string()]).collect();
    let mut count = std::collections::BTreeMap::<&str, usize>::new();
    for n in &g.node {
        let op = n.op_type.as_deref().unwrap();
        let allowed =
            ["Sub", "Div", "Conv", "BatchNormalization", "Relu", "Add", "GlobalAveragePool", "Flatten", "Gemm"];
        assert!(allowed.contains(&op), "{op}");
        for i in &n.input {
            assert!(defined.contains(i), "{:?} reads {i} before it is defined", n.name);
        }
        for o in &n.output {
            assert!(defined.insert(o.clone()), "{o} defined twice");
        }
        *count.entry(op).or_default() += 1;
    }
    assert!(defined.contains("logits"));
    // conv0 + 3 blocks x (conv1, conv2, shortcut); 3 x (bn1, bn2) + bn; 3 shortcut sums.
    assert_eq!(count["Conv"], 10);
    assert_eq!(count["BatchNormalization"], 7);
    assert_eq!(count["Relu"], 7);
    assert_eq!(count["Add"], 3);
    assert_eq!((count["GlobalAveragePool"], count["Flatten"], count["Gemm"]), (1, 1, 1));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `$SLICEOUT_PYTHON`, else `python3`, when it imports `onnxruntime`, `safetensors` and `numpy`.
fn python_with_wheels() -> Result<String, String> {
    let python = std::env::var("SLICEOUT_PYTHON").ok().filter(|p| !p.is_empty()).unwrap_or_else(|| "python3".into());
    match Command::new(&python).args(["-c", "import onnxruntime, safetensors, numpy"]).output() {
        Ok(o) if o.status.success() => Ok(python),
        Ok(o) => Err(format!(
            "{python} lacks the wheels ({})",
            String::from_utf8_lossy(&o.stderr).trim().lines().last().unwrap_or("")
        )),
        Err(e) => Err(format!("{python} does not run ({e})")),
    }
}

/// Exports `ck` to ONNX beside `model` (its safetensors export) in `dir`, evaluates `model` on
/// `data` with `--logits`, and has `scripts/check_export.py` run ONNX Runtime on the same test
/// images and read `model` with the safetensors library (into `dir/python_tensors.json`).
fn consumers_agree(python: &str, data: &Path, dir: &Path, ck: &Path, model: &Path) {
    std::fs::copy(data.join("test_batch.bin"), dir.join("test_batch.bin")).unwrap();
    succeeds(&["export", "--checkpoint", s(ck), "--out", s(&dir.join("model.onnx"))]);
    let logits = dir.join("logits.safetensors");
    succeeds(&["eval", "--checkpoint", s(model), "--data", s(data), "--device", "cpu", "--logits", s(&logits)]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/check_export.py");
    let out = Command::new(python).arg(&script).arg(dir).output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    eprintln!("{report}");
    assert!(out.status.success(), "{report}{}", String::from_utf8_lossy(&out.stderr));
    assert!(report.contains("onnxruntime") && report.contains("max abs diff"), "{report}");
}

#[test]
fn onnx_runtime_and_the_safetensors_library_agree_with_sliceout() {
    let python = match python_with_wheels() {
        Ok(p) => p,
        Err(why) => {
            let msg = format!(
                "{why}: `python3 -m pip install onnxruntime safetensors numpy` (or set SLICEOUT_PYTHON) to check the exports with them"
            );
            if std::env::var_os("CI").is_some() {
                panic!("{msg}");
            }
            eprintln!("skipped: {msg}");
            return;
        }
    };
    let (dir, ck, model) = setup("consumers", 400, 50);
    let data = dir.join("data");
    consumers_agree(&python, &data, &dir, &ck, &model);
    // A trained model too: BN statistics and logits of realistic sizes.
    let run = dir.join("trained");
    let mut train = vec!["train", "--data", s(&data), "--out", s(&run), "--depth", "10", "--widen", "2"];
    train.extend(["--epochs", "2", "--batch", "50", "--device", "cpu"]);
    succeeds(&train);
    let trained = run.join("model.safetensors");
    succeeds(&["export", "--checkpoint", s(&run.join("last.ckpt")), "--out", s(&trained)]);
    consumers_agree(&python, &data, &run, &run.join("last.ckpt"), &trained);

    // What the safetensors library read is what we wrote, bit for bit.
    let read: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("python_tensors.json")).unwrap()).unwrap();
    let tensors = read["tensors"].as_object().unwrap();
    let want = reference_checkpoint();
    for t in &want.tensors {
        let got = &tensors[&t.name];
        assert_eq!(got["dtype"], "float32", "{}", t.name);
        assert_eq!(got["shape"], serde_json::json!(t.shape), "{}", t.name);
        let values: Vec<u32> = got["values"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(values, bits(&t.data), "{}", t.name);
    }
    let counters: Vec<_> = tensors.iter().filter(|(k, _)| k.ends_with(".num_batches_tracked")).collect();
    assert_eq!(counters.len(), 7);
    assert!(counters.iter().all(|(_, v)| v["dtype"] == "int64" && v["values"] == serde_json::json!([1])));
    assert_eq!(tensors.len(), want.tensors.len() + 7);
    let meta = &read["metadata"];
    assert_eq!(
        (&meta["depth"], &meta["widen"], &meta["classes"], &meta["in_channels"]),
        (&"10".into(), &"2".into(), &"10".into(), &"3".into())
    );
    let mean: Vec<f32> = serde_json::from_str(meta["norm_mean"].as_str().unwrap()).unwrap();
    assert_eq!(bits(&mean), bits(&want.norm_mean));
    std::fs::remove_dir_all(&dir).unwrap();
}
