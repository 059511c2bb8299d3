//! Outputs that parse and answers that are true: every `--format` of `plan` prints that format
//! alone; `--fit` names the largest batch that fits, however large, and says so where the sizes
//! a plan is made for end first; a flag the plan would not use is refused; and the messages of
//! refused model files name the real cause: an ONNX model named as one, a huge or sparse file
//! refused from its header without being read, a budget too small for one image answered with
//! what that image's step needs, and `--init` of a model for other data naming the data.

use crate::common::{self, sliceout, tmp};
use sliceout::io::checkpoint;
use sliceout::io::safetensors as st;
use sliceout::train;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Stdout of a command that must succeed.
fn ok(args: &[&str]) -> String {
    let (code, so, se) = sliceout(args);
    assert_eq!(code, 0, "{args:?}: {se}");
    so
}

/// The one-line error of a command that must fail, holding every one of `needles`.
fn refused(args: &[&str], needles: &[&str]) -> String {
    let (code, so, se) = sliceout(args);
    assert_ne!(code, 0, "{args:?} was accepted:\n{so}");
    // `train` says where it writes before it reads the model.
    assert!(so.is_empty() || args[0] == "train", "{args:?}: printed before refusing:\n{so}");
    assert_eq!(se.trim().lines().count(), 1, "{args:?}: {se}");
    for n in needles {
        assert!(se.contains(n), "{args:?}: lacks '{n}': {se}");
    }
    se
}

/// Whether `text` is one well-formed XML element (an optional `<?xml ...?>` first): every tag
/// closed in order, nothing but whitespace outside the root, attributes quoted.
fn one_xml_document(text: &str) -> Result<(), String> {
    let mut rest = text.trim();
    if rest.starts_with("<?xml") {
        rest = &rest[rest.find("?>").ok_or("unclosed <?xml")? + 2..];
    }
    let (mut open, mut roots) = (Vec::<String>::new(), 0);
    while let Some(at) = rest.find('<') {
        if open.is_empty() && !rest[..at].trim().is_empty() {
            return Err(format!("text outside the root: {:?}", &rest[..at.min(40)]));
        }
        rest = &rest[at..];
        if rest.starts_with("<!--") {
            rest = &rest[rest.find("-->").ok_or("unclosed comment")? + 3..];
            continue;
        }
        // A tag ends at the first '>' outside quotes.
        let mut quote = None;
        let end = rest
            .char_indices()
            .find(|&(_, c)| match (quote, c) {
                (None, '"' | '\'') => {
                    quote = Some(c);
                    false
                }
                (Some(q), c) if c == q => {
                    quote = None;
                    false
                }
                (None, '>') => true,
                _ => false,
            })
            .ok_or("unclosed tag")?
            .0;
        let tag = &rest[1..end];
        rest = &rest[end + 1..];
        if let Some(name) = tag.strip_prefix('/') {
            match open.pop() {
                Some(o) if o == name.trim() => {}
                other => return Err(format!("</{name}> closes {other:?}")),
            }
            continue;
        }
        if open.is_empty() {
            roots += 1;
        }
        let name = tag.split(|c: char| c.is_whitespace() || c == '/').next().unwrap_or("").to_string();
        if name.is_empty() {
            return Err(format!("a tag without a name: <{tag}>"));
        }
        if !tag.ends_with('/') {
            open.push(name);
        }
    }
    match (open.is_empty(), roots, rest.trim().is_empty()) {
        (true, 1, true) => Ok(()),
        _ => Err(format!("open at the end: {open:?}; {roots} root elements; trailing {:?}", rest.trim())),
    }
}

#[test]
fn the_xml_check_finds_what_is_not_one_document() {
    assert!(one_xml_document("<svg a=\"1>2\"><g><rect/></g><text>x</text></svg>\n").is_ok());
    for bad in ["text\n<svg></svg>", "<svg></svg><svg></svg>", "<svg><g></svg>", "<svg>", "<svg></svg> tail"] {
        assert!(one_xml_document(bad).is_err(), "{bad}");
    }
}

/// Every `--format json` of `plan` parses as one JSON value, and every `--format svg` is one
/// SVG document, with `--fit` (with and without `--batch`) and `--sweep`; what `--fit` found is
/// in the JSON's `fit` and the SVG's `<desc>`.
#[test]
fn every_plan_format_prints_that_format_alone() {
    let model = ["plan", "--device", "cpu", "--depth", "10", "--widen", "1"];
    let cases: [&[&str]; 5] = [
        &["--batch", "8", "--keep", "0.5"],
        &["--fit", "512MiB"],
        &["--fit", "512MiB", "--batch", "64", "--keep", "0.5"],
        &["--fit", "512MiB", "--dataset", "fashion-mnist"],
        &["--mode", "eval", "--batch", "4"],
    ];
    for extra in cases {
        let args = |format: &'static str| [&model[..], extra, &["--format", format]].concat();
        let json = ok(&args("json"));
        let v: serde_json::Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{extra:?}: {e}\n{json}"));
        assert!(v["arena_bytes"].as_u64().unwrap() > 0, "{extra:?}");
        if extra.contains(&"--fit") {
            let fit = &v["fit"];
            assert_eq!(fit["batch"], v["batch"], "{extra:?}: {fit}");
            assert_eq!(fit["budget_bytes"], 512 << 20);
            assert!(fit["total_bytes"].as_u64().unwrap() <= 512 << 20, "{fit}");
            // With --batch the rungs end at the first that fits it; without, each has its batch.
            let rungs = fit["rungs"].as_array().unwrap();
            let want = if extra.contains(&"--batch") { rungs.len() } else { 4 };
            assert!(rungs.len() == want && rungs.last().unwrap()["fits"] == true, "{fit}");
        } else {
            assert!(v.get("fit").is_none(), "{extra:?}");
        }
        let svg = ok(&args("svg"));
        assert!(svg.starts_with("<svg") || svg.starts_with("<?xml"), "{extra:?}: {}", &svg[..svg.len().min(80)]);
        one_xml_document(&svg).unwrap_or_else(|e| panic!("{extra:?}: {e}"));
        assert_eq!(svg.contains("<desc>what fits in 512.0 MiB"), extra.contains(&"--fit"), "{extra:?}");
    }
    let sweep = ok(&[&model[..], &["--sweep", "keep", "--fit", "1GiB", "--format", "svg"]].concat());
    one_xml_document(&sweep).unwrap();
    refused(&[&model[..], &["--sweep", "batch", "--format", "json"]].concat(), &["--format", "text or svg"]);
}

/// `--fit` finds batches past 65,536 where the budget has room for them: the one named fits and
/// one more image does not, with the options it names. Where a buffer would pass what any
/// plan is made for first, the batch is marked and said to be that limit, not the budget's.
#[test]
fn fit_names_the_largest_batch_however_large() {
    use sliceout::data::DatasetKind;
    use sliceout::fit;
    use sliceout::ir::{ModelConfig, Target};
    use sliceout::schedule::Lowering;
    let model = ["plan", "--device", "cpu", "--depth", "10", "--widen", "1"];
    let v: serde_json::Value =
        serde_json::from_str(&ok(&[&model[..], &["--fit", "64GiB", "--format", "json"]].concat())).unwrap();
    let batch = v["fit"]["batch"].as_u64().unwrap() as usize;
    assert!(batch > 1 << 16, "{}", v["fit"]);
    assert_eq!((v["fit"]["limit"].as_str(), v["batch"].as_u64()), (Some("budget"), Some(batch as u64)));
    let config = ModelConfig { depth: 10, widen: 1, classes: 10, in_channels: 3, keep: 1.0 };
    let fixed: usize = fit::overheads(Target::Cpu, DatasetKind::Cifar10).iter().map(|t| t.bytes).sum();
    let name = v["fit"]["options"].as_str().unwrap();
    let (_, options) = fit::option_ladder().into_iter().find(|(n, _)| *n == name).unwrap();
    let cpu = Lowering::default();
    assert!(fit::step_bytes(&config, batch, options, cpu) + fixed <= 64 << 30);
    for (_, o) in fit::option_ladder() {
        assert!(fit::step_bytes(&config, batch + 1, o, cpu) + fixed > 64 << 30, "batch {} fits too", batch + 1);
    }
    let text = ok(&[&model[..], &["--fit", "100TiB"]].concat());
    let line = text.lines().find(|l| l.starts_with("largest batch:")).unwrap();
    let batch: usize = line.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert!(config.footprint(batch).is_ok() && config.footprint(batch + 1).is_err(), "{line}");
    assert!(
        text.contains(&format!("{batch}*")) && text.contains("the most a plan is made for, not the budget's"),
        "{text}"
    );
}

/// A budget too small for one image says what one image's step needs (the leanest plan at
/// batch 1 and the memory besides it), not the budget back.
#[test]
fn a_budget_below_one_image_says_what_one_image_needs() {
    use sliceout::data::DatasetKind;
    use sliceout::fit;
    use sliceout::ir::ModelConfig;
    use sliceout::schedule::Lowering;
    let config = ModelConfig { depth: 10, widen: 1, classes: 10, in_channels: 3, keep: 1.0 };
    let (_, leanest) = *fit::option_ladder().last().unwrap();
    let plan = fit::step_bytes(&config, 1, leanest, Lowering::default());
    let fixed = fit::resident_bytes(DatasetKind::Cifar10);
    let mib = |b: usize| format!("{:.1} MiB", b as f64 / (1 << 20) as f64);
    for budget in ["1B", "100MiB"] {
        refused(
            &["plan", "--device", "cpu", "--depth", "10", "--widen", "1", "--fit", budget],
            &[
                "does not fit: WRN-10-1 keep 1.00 batch 1",
                &format!("needs {}", mib(plan + fixed)),
                &format!("({} plan + {} besides it)", mib(plan), mib(fixed)),
            ],
        );
    }
    refused(&["plan", "--device", "cpu", "--depth", "10", "--widen", "1", "--fit", "1B"], &["have 1 B"]);
}

/// `--dataset` makes the model: its classes and channels, counted resident with `--fit`.
#[test]
fn the_dataset_makes_the_model_it_plans() {
    let json = |extra: &[&str]| -> serde_json::Value {
        let args =
            [&["plan", "--device", "cpu", "--depth", "10", "--widen", "1", "--format", "json"][..], extra].concat();
        serde_json::from_str(&ok(&args)).unwrap()
    };
    let bias_bytes = |v: &serde_json::Value| {
        v["buffers"].as_array().unwrap().iter().find(|b| b["name"] == "fc.d_bias").unwrap()["bytes"].as_u64().unwrap()
    };
    let stem_bytes = |v: &serde_json::Value| {
        v["buffers"].as_array().unwrap().iter().find(|b| b["name"] == "image").map(|b| b["bytes"].as_u64().unwrap())
    };
    let plain = json(&[]);
    assert_eq!(bias_bytes(&plain), 40);
    let cifar100 = json(&["--dataset", "cifar100", "--fit", "4GiB"]);
    assert_eq!(bias_bytes(&cifar100), 400);
    assert_eq!(cifar100["fit"]["besides_plan"][0]["what"], "cifar100 resident");
    assert_eq!(bias_bytes(&json(&["--dataset", "cifar100", "--classes", "20"])), 80);
    let mnist = json(&["--dataset", "fashion-mnist", "--batch", "128"]);
    let plain_batch = json(&["--batch", "128"]);
    if let (Some(a), Some(b)) = (stem_bytes(&mnist), stem_bytes(&plain_batch)) {
        assert_eq!(3 * a, b);
    }
    assert!(mnist["persistent_bytes"].as_u64() < plain_batch["persistent_bytes"].as_u64());
    let mnist_fit = json(&["--in-channels", "1", "--fit", "4GiB"]);
    assert_eq!(mnist_fit["fit"]["besides_plan"][0]["what"], "fashion-mnist resident");
}

/// Flags the plan asked for would not use, or that contradict another, are refused by name.
#[test]
fn flags_a_plan_would_not_use_are_refused() {
    let model = ["plan", "--device", "cpu", "--depth", "10", "--widen", "1"];
    for (extra, needles) in [
        (&["--sweep", "keep", "--mode", "eval"][..], &["--mode", "eval", "--sweep"][..]),
        (&["--mode", "eval", "--keep", "0.5"], &["--keep", "0.5", "--mode eval"]),
        (&["--dataset", "cifar100", "--classes", "10"], &["--classes", "'10'", "100 (or 20", "--dataset cifar100"]),
        (
            &["--dataset", "fashion-mnist", "--in-channels", "3"],
            &["--in-channels", "'3'", "1 with --dataset fashion-mnist"],
        ),
        (&["--dataset", "cifar10", "--fit", "1GiB", "--classes", "100"], &["--classes", "10 with --dataset cifar10"]),
        (&["--fit", "1GiB", "--in-channels", "5"], &["--in-channels", "'5'", "1 or 3 with --fit"]),
        (&["--format", "json", "--width", "80"], &["--width", "'80'", "--format json"]),
        (&["--format", "svg", "--width", "80"], &["--width", "--format json or svg"]),
        (&["--sweep", "keep", "--width", "80"], &["--width", "--sweep"]),
        (&["--fit", "1GiB", "--col-chunk", "4"], &["--col-chunk 4 is not used with --fit"]),
        (&["--fit", "1GiB", "--col-budget", "64"], &["--col-budget 64 is not used with --fit"]),
        (&["--fit", "1GiB", "--no-recompute"], &["--no-recompute is not used with --fit"]),
        (&["--fit", "1GiB", "--mode", "eval"], &["--mode", "--fit"]),
        (&["--dataset", "imagenet"], &["--dataset", "imagenet"]),
    ] {
        refused(&[&model[..], extra].concat(), needles);
    }
    // What each of them may be given with still runs.
    ok(&[&model[..], &["--dataset", "cifar100", "--classes", "100", "--in-channels", "3"]].concat());
    ok(&[&model[..], &["--width", "80"]].concat());
    ok(&[&model[..], &["--fit", "1GiB", "--width", "80", "--winograd", "--update", "end"]].concat());
    ok(&[&model[..], &["--mode", "eval", "--batch", "4"]].concat());
}

/// A small dataset and a finished WRN-10-1 run on it.
fn trained(dir: &Path) -> (PathBuf, PathBuf) {
    let data = dir.join("data");
    sliceout::data::synth::write_synthetic(&data, 16, 8, 1, false).unwrap();
    let run = dir.join("run");
    let args = train::TrainArgs { epochs: 1, batch: 4, ..common::args(&data, &run) };
    train::train(&args).unwrap();
    (data, run.join("last.ckpt"))
}

/// An ONNX model given where a checkpoint or safetensors model goes is named as one, with the
/// file to give instead: `eval`, `export`, `train --init` and `train --resume`.
#[test]
fn an_onnx_model_given_as_a_checkpoint_is_named_as_one() {
    let dir = tmp("onnx");
    let (data, ck) = trained(&dir);
    let onnx = dir.join("model.onnx");
    ok(&["export", "--checkpoint", ck.to_str().unwrap(), "--out", onnx.to_str().unwrap()]);
    let (o, d, out) = (onnx.to_str().unwrap(), data.to_str().unwrap(), dir.join("out"));
    let out = out.to_str().unwrap();
    for args in [
        &["eval", "--checkpoint", o, "--data", d, "--device", "cpu"][..],
        &["export", "--checkpoint", o, "--out", dir.join("back.safetensors").to_str().unwrap()],
        &["train", "--init", o, "--data", d, "--out", out, "--device", "cpu", "--epochs", "1"],
        &["train", "--resume", o, "--data", d, "--out", out, "--device", "cpu"],
    ] {
        refused(
            args,
            &["model.onnx", "is an ONNX model", "give the checkpoint or the safetensors file it was exported from"],
        );
    }
    assert!(!dir.join("out").join("last.ckpt").exists() && !dir.join("back.safetensors").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A 6 GB sparse file is refused in well under a second, whatever its first bytes: a valid
/// checkpoint's header (then zeros, or a whole checkpoint then a hole), zeros, or a safetensors
/// model with a hole after it. Nothing is read past the header and the record structure.
#[test]
fn huge_sparse_files_are_refused_from_their_header() {
    let dir = tmp("sparse");
    let (data, ck) = trained(&dir);
    let model = dir.join("model.safetensors");
    ok(&["export", "--checkpoint", ck.to_str().unwrap(), "--out", model.to_str().unwrap()]);
    let good = std::fs::read(&ck).unwrap();
    const SIX_GB: u64 = 6_000_000_000;
    let sparse = |name: &str, start: &[u8], len: u64| {
        let path = dir.join(name);
        std::fs::write(&path, start).unwrap();
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(len).unwrap();
        path
    };
    let cases = [
        (sparse("header-then-hole.ckpt", &good[..36], SIX_GB), "more than a checkpoint of WRN-10-1"),
        (sparse("whole-then-hole.ckpt", &good, SIX_GB), "more than a checkpoint of WRN-10-1"),
        // Within what a WRN-10-1 checkpoint may hold: the records, walked, end long before it.
        (sparse("header-then-zeros.ckpt", &good[..36], 1 << 30), "unexpected bytes after the metadata"),
        (sparse("zeros.ckpt", &[], SIX_GB), "not a sliceout checkpoint"),
        (sparse("model-then-hole.safetensors", &std::fs::read(&model).unwrap(), SIX_GB), "truncated or padded"),
        (sparse("huge-header.safetensors", &u64::MAX.to_le_bytes(), SIX_GB), "over the format's 100 MB limit"),
    ];
    for (path, needle) in &cases {
        let p = path.to_str().unwrap();
        let start = Instant::now();
        let by_load = match checkpoint::load(path) {
            Err(e) if p.ends_with(".ckpt") => e.to_string(),
            _ => sliceout::model_file::load_model(path).map(drop).unwrap_err().to_string(),
        };
        assert!(by_load.contains(needle) && by_load.contains(p), "{by_load}");
        assert!(start.elapsed() < Duration::from_millis(500), "{p}: {:?}", start.elapsed());
        let start = Instant::now();
        refused(&["eval", "--checkpoint", p, "--data", data.to_str().unwrap(), "--device", "cpu"], &[p, needle]);
        assert!(start.elapsed() < Duration::from_secs(2), "{p}: {:?}", start.elapsed());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `train --init` of a model for other classes or channels than `--data` holds names the data
/// as the cause: from what a checkpoint states, and from the shapes of a safetensors file that
/// states nothing.
#[test]
fn init_of_a_model_for_other_data_names_the_data() {
    let dir = tmp("init");
    let (data, ck) = trained(&dir);
    let d = data.to_str().unwrap();
    let out = dir.join("out");
    let (out, epochs) =
        (out.to_str().unwrap(), ["--device", "cpu", "--epochs", "1", "--depth", "10", "--widen", "1", "--batch", "4"]);
    let init = |model: &Path| -> Vec<&str> {
        let model: &'static str = Box::leak(model.to_str().unwrap().to_string().into_boxed_str());
        ["train", "--init", model, "--data", d, "--out", out].into_iter().chain(epochs).collect()
    };
    let twenty = dir.join("twenty.ckpt");
    let mut c = checkpoint::load(&ck).unwrap();
    c.config.classes = 20;
    checkpoint::save(&twenty, &c).unwrap();
    let msg = refused(
        &init(&twenty),
        &[&format!("--data {d} holds 10 classes of 3 input channel(s)"), "twenty.ckpt has 20 classes of 3"],
    );
    assert!(!msg.contains("from the flags"), "{msg}");
    let gray = dir.join("gray.ckpt");
    let mut c = checkpoint::load(&ck).unwrap();
    c.config.in_channels = 1;
    (c.norm_mean, c.norm_std) = (vec![0.5], vec![0.25]);
    checkpoint::save(&gray, &c).unwrap();
    refused(&init(&gray), &[&format!("--data {d} holds 10 classes of 3"), "gray.ckpt has 10 classes of 1 input"]);
    // A safetensors file stating no model: its head says 20 classes.
    let bare = dir.join("bare.safetensors");
    let mut f = st::load(&{
        let m = dir.join("model.safetensors");
        ok(&["export", "--checkpoint", ck.to_str().unwrap(), "--out", m.to_str().unwrap()]);
        m
    })
    .unwrap();
    f.metadata.clear();
    for e in &mut f.entries {
        if e.name == "fc.bias" {
            (e.shape, e.values) = (vec![20], st::Values::F32(vec![0.0; 20]));
        }
    }
    st::save(&bare, &f).unwrap();
    refused(&init(&bare), &[&format!("--data {d} holds 10 classes"), "bare.safetensors has 20 classes of 3"]);
    assert!(!Path::new(out).join("last.ckpt").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}
