use super::*;
use crate::io::scratch;
use crate::rng::{stream, Rng};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn config() -> ModelConfig {
    ModelConfig { depth: 16, widen: 4, classes: 10, in_channels: 3, keep: 0.5 }
}

/// A small checkpoint with awkward values: NaN payloads, -0.0, infinities, a subnormal, a
/// scalar, an empty tensor, real RNG states and non-ASCII metadata.
fn sample() -> Checkpoint {
    let mut rng = Rng::new(3, stream::INIT);
    let mut w: Vec<f32> = (0..4 * 3 * 3 * 3).map(|_| rng.normal()).collect();
    w[0] = f32::from_bits(0x7fc0_1234); // quiet NaN with payload
    w[1] = f32::from_bits(0xffa0_0001); // negative signalling NaN with payload
    w[2] = -0.0;
    w[3] = f32::INFINITY;
    w[4] = f32::NEG_INFINITY;
    w[5] = f32::from_bits(1); // smallest subnormal
    let mut states = Vec::new();
    for (name, s) in [("shuffle", stream::SHUFFLE), ("augment", stream::AUGMENT), ("slice", stream::SLICE)] {
        let mut r = Rng::new(42, s);
        r.next_u64();
        states.push((name.to_string(), r.state()));
    }
    Checkpoint {
        config: config(),
        step: 123_456_789_012,
        epoch: 17,
        tensors: vec![
            Tensor { name: "conv1.w".into(), shape: vec![4, 3, 3, 3], data: w },
            Tensor { name: "bn1.running_var".into(), shape: vec![4], data: vec![1.0, 0.5, -0.0, 2.0] },
            Tensor { name: "scalar".into(), shape: vec![], data: vec![7.25] },
            Tensor { name: "empty".into(), shape: vec![0, 5], data: vec![] },
        ],
        rngs: states,
        norm_mean: vec![0.4914, 0.4822, 0.4465],
        norm_std: vec![0.2470, 0.2435, 0.2616],
        meta: vec![
            ("dataset".into(), "cifar10".into()),
            ("best_acc".into(), "0.9321".into()),
            ("note".into(), "µ ünïcode ✓".into()),
        ],
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn assert_same(a: &Checkpoint, b: &Checkpoint) {
    assert_eq!(a.config, b.config);
    assert_eq!((a.step, a.epoch), (b.step, b.epoch));
    assert_eq!(a.tensors.len(), b.tensors.len());
    for (x, y) in a.tensors.iter().zip(&b.tensors) {
        assert_eq!(x.name, y.name);
        assert_eq!(x.shape, y.shape);
        assert_eq!(bits(&x.data), bits(&y.data), "tensor {}", x.name);
    }
    assert_eq!(a.rngs, b.rngs);
    assert_eq!(bits(&a.norm_mean), bits(&b.norm_mean));
    assert_eq!(bits(&a.norm_std), bits(&b.norm_std));
    assert_eq!(a.meta, b.meta);
}

/// Recomputes the trailing CRC so a corrupted body reaches the parser.
fn fix_crc(bytes: &mut [u8]) {
    let n = bytes.len() - CRC_LEN;
    let crc = crc32fast::hash(&bytes[..n]);
    LE::write_u32(&mut bytes[n..], crc);
}

/// Offsets of every count and length field of an encoded checkpoint, found by an
/// independent walk of the documented layout: (label, offset, width in bytes).
fn length_fields(b: &[u8]) -> Vec<(String, usize, usize)> {
    let mut out = Vec::new();
    let mut p = HEADER_LEN + 4 * 4 + 8 + 8 + 8;
    let u32_at = |out: &mut Vec<_>, p: &mut usize, label: String| {
        let v = LE::read_u32(&b[*p..]) as usize;
        out.push((label, *p, 4));
        *p += 4;
        v
    };
    let n = u32_at(&mut out, &mut p, "tensor count".into());
    for i in 0..n {
        let len = u32_at(&mut out, &mut p, format!("tensor {i} name length"));
        p += len;
        let ndim = u32_at(&mut out, &mut p, format!("tensor {i} rank"));
        for d in 0..ndim {
            out.push((format!("tensor {i} dim {d}"), p, 8));
            p += 8;
        }
        let numel = LE::read_u64(&b[p..]) as usize;
        out.push((format!("tensor {i} numel"), p, 8));
        p += 8 + 4 * numel;
    }
    let n = u32_at(&mut out, &mut p, "RNG count".into());
    for i in 0..n {
        let len = u32_at(&mut out, &mut p, format!("RNG {i} name length"));
        p += len;
        let len = u32_at(&mut out, &mut p, format!("RNG {i} state length"));
        p += len;
    }
    for label in ["norm_mean length", "norm_std length"] {
        let len = u32_at(&mut out, &mut p, label.into());
        p += 4 * len;
    }
    let n = u32_at(&mut out, &mut p, "metadata count".into());
    for i in 0..n {
        let len = u32_at(&mut out, &mut p, format!("metadata {i} key length"));
        p += len;
        let len = u32_at(&mut out, &mut p, format!("metadata {i} value length"));
        p += len;
    }
    assert_eq!(p + CRC_LEN, b.len(), "layout walk must end at the CRC");
    out
}

fn field_at(fields: &[(String, usize, usize)], label: &str) -> usize {
    fields.iter().find(|f| f.0 == label).unwrap().1
}

/// Writes `bytes` to a file in `dir`, loads it and returns the error message.
fn load_err(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    fs::write(&path, bytes).unwrap();
    let err = load(&path).expect_err("corrupt checkpoint must not load");
    assert!(matches!(err, Error::Checkpoint { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    msg
}

#[test]
fn round_trip_is_bit_exact() {
    let dir = scratch("ckpt-roundtrip");
    let path = dir.join("a.ckpt");
    let ck = sample();
    save(&path, &ck).unwrap();
    let back = load(&path).unwrap();
    assert_same(&ck, &back);
    assert_eq!(back.tensor("conv1.w").unwrap().data[0].to_bits(), 0x7fc0_1234);
    assert_eq!(back.tensor("conv1.w").unwrap().data[1].to_bits(), 0xffa0_0001);
    assert_eq!(back.tensor("conv1.w").unwrap().data[2].to_bits(), 0x8000_0000);
    assert!(back.tensor("nope").is_none());
    assert_eq!(back.meta("best_acc"), Some("0.9321"));
    assert_eq!(back.meta("missing"), None);
    // The restored RNG continues the saved stream exactly.
    let mut original = Rng::from_state(ck.rng("slice").unwrap()).unwrap();
    let mut restored = Rng::from_state(back.rng("slice").unwrap()).unwrap();
    assert_eq!(original.next_u64(), restored.next_u64());
    assert!(back.rng("dropout").is_none());
    // Canonical: saving what was loaded gives the same bytes; no temp file is left behind.
    assert_eq!(encode(&back).unwrap(), fs::read(&path).unwrap());
    assert_eq!(encoded_len(&ck), fs::read(&path).unwrap().len());
    // Saving through a reserved buffer writes the same bytes without growing it.
    let mut scratch = Vec::with_capacity(encoded_len(&ck));
    let at = scratch.as_ptr();
    save_with(&path, &ck, &mut scratch).unwrap();
    assert_eq!((scratch.as_ptr(), &scratch), (at, &fs::read(&path).unwrap()));
    let names: Vec<_> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("a.ckpt")]);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn layout_matches_the_documentation() {
    let b = encode(&sample()).unwrap();
    assert_eq!(&b[..8], b"SLCKPT\0\0");
    assert_eq!(LE::read_u32(&b[8..]), 1);
    assert_eq!([12, 16, 20, 24].map(|o| LE::read_u32(&b[o..])), [16, 4, 10, 3]);
    assert_eq!(LE::read_f64(&b[28..]), 0.5);
    assert_eq!(LE::read_u64(&b[36..]), 123_456_789_012);
    assert_eq!(LE::read_u64(&b[44..]), 17);
    let n = b.len() - 4;
    assert_eq!(LE::read_u32(&b[n..]), crc32fast::hash(&b[..n]));
    let fields = length_fields(&b); // panics if the walk does not end at the CRC
    assert_eq!(fields[0], ("tensor count".to_string(), 52, 4));
}

#[test]
fn missing_file_is_named() {
    let dir = scratch("ckpt-missing");
    let path = dir.join("nothing-here.ckpt");
    let msg = load(&path).unwrap_err().to_string();
    assert!(msg.contains("nothing-here.ckpt") && msg.contains("no such file"), "{msg}");
    // A folder, or a device that never ends, is refused before it is read.
    let msg = load(&dir).unwrap_err().to_string();
    assert!(msg.contains("is a folder, expected a checkpoint file"), "{msg}");
    #[cfg(unix)]
    {
        let msg = load(Path::new("/dev/zero")).unwrap_err().to_string();
        assert!(msg.contains("/dev/zero") && msg.contains("not a regular file"), "{msg}");
    }
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_magic_and_tiny_files() {
    let dir = scratch("ckpt-magic");
    let good = encode(&sample()).unwrap();
    let mut b = good.clone();
    b[..8].copy_from_slice(b"PK\x03\x04abcd");
    let msg = load_err(&dir, "zip.ckpt", &b);
    assert!(msg.contains("not a sliceout checkpoint"), "{msg}");
    let msg = load_err(&dir, "text.ckpt", b"hi");
    assert!(msg.contains("not a sliceout checkpoint"), "{msg}");
    let msg = load_err(&dir, "empty.ckpt", b"");
    assert!(msg.contains("truncated") && msg.contains("empty"), "{msg}");
    let msg = load_err(&dir, "head.ckpt", &good[..10]);
    assert!(msg.contains("truncated at the header"), "{msg}");
    fs::remove_dir_all(&dir).unwrap();
}

/// A file far larger than its header's network can fill is refused from the header; a
/// zero-filled (sparse) body is refused by the walk, which reads no tensor values; both
/// without reading the file, and the same from bytes in memory.
#[test]
fn the_header_is_judged_before_the_file_is_read() {
    let dir = scratch("ckpt-head");
    let good = encode(&sample()).unwrap();
    let most = max_len(&config()).unwrap();
    assert!(good.len() as u64 <= most && most < (1 << 30) + (1 << 26), "{most}");
    let path = dir.join("huge.ckpt");
    fs::write(&path, &good).unwrap();
    fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(most + 1).unwrap();
    let start = Instant::now();
    let msg = load(&path).unwrap_err().to_string();
    assert!(
        msg.contains(&format!(
            "more than a checkpoint of WRN-16-4 (10 classes, 3 input channels) holds: at most 1.0 GiB ({most} bytes)"
        )),
        "{msg}"
    );
    let path = dir.join("zeros.ckpt");
    fs::write(&path, &good[..HEAD_LEN]).unwrap();
    fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(most).unwrap();
    let msg = load(&path).unwrap_err().to_string();
    assert!(msg.contains("unexpected bytes after the metadata, at offset 72"), "{msg}");
    assert!(start.elapsed() < Duration::from_secs(1), "{:?}", start.elapsed());
    let mut zeros = good[..HEAD_LEN].to_vec();
    zeros.resize(100, 0);
    fix_crc(&mut zeros);
    assert!(decode(&zeros).unwrap_err().contains("unexpected bytes after the metadata"));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn truncation_names_the_field() {
    let dir = scratch("ckpt-trunc");
    let good = encode(&sample()).unwrap();
    let fields = length_fields(&good);
    // Cut inside the data of the first tensor: the walk over the file says where, before the
    // file is read.
    let cut = field_at(&fields, "tensor 0 numel") + 8 + 40;
    let msg = load_err(&dir, "cut.ckpt", &good[..cut]);
    assert!(msg.contains("truncated or corrupt: truncated at tensor \"conv1.w\" data"), "{msg}");
    // In memory, the CRC is checked first, and the message says both.
    let msg = decode(&good[..cut]).unwrap_err();
    assert!(msg.contains("truncated at tensor \"conv1.w\" data") && msg.contains("CRC mismatch"), "{msg}");
    // Cut in the config.
    let msg = load_err(&dir, "cut2.ckpt", &good[..22]);
    assert!(msg.contains("truncated at config.classes"), "{msg}");
    // A shorter body with a valid CRC (as if written short by a buggy writer).
    let cut = field_at(&fields, "metadata 1 value length") + 2;
    let mut b = good[..cut].to_vec();
    b.extend_from_slice(&[0; 4]);
    fix_crc(&mut b);
    let msg = load_err(&dir, "cut3.ckpt", &b);
    assert!(msg.contains("truncated at metadata \"best_acc\" value length") && !msg.contains("CRC"), "{msg}");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn version_crc_and_bad_fields() {
    let dir = scratch("ckpt-fields");
    let good = encode(&sample()).unwrap();
    let fields = length_fields(&good);

    let mut b = good.clone();
    LE::write_u32(&mut b[8..], 7);
    fix_crc(&mut b);
    let msg = load_err(&dir, "v7.ckpt", &b);
    assert!(msg.contains("unknown format version 7") && msg.contains("reads version 1"), "{msg}");

    let mut b = good.clone();
    let at = field_at(&fields, "tensor 1 numel") + 8 + 3;
    b[at] ^= 0x10;
    let n = b.len() - 4;
    let (stored, computed) = (LE::read_u32(&b[n..]), crc32fast::hash(&b[..n]));
    let msg = load_err(&dir, "flip.ckpt", &b);
    assert!(
        msg.contains("CRC mismatch")
            && msg.contains(&format!("{stored:#010x}"))
            && msg.contains(&format!("{computed:#010x}")),
        "{msg}"
    );

    let mut b = good.clone();
    LE::write_u32(&mut b[field_at(&fields, "tensor count")..], u32::MAX);
    fix_crc(&mut b);
    let msg = load_err(&dir, "count.ckpt", &b);
    assert!(msg.contains("tensor count 4294967295") && msg.contains("impossible"), "{msg}");

    let mut b = good.clone();
    LE::write_u32(&mut b[field_at(&fields, "RNG 1 state length")..], 0xffff_fff0);
    fix_crc(&mut b);
    let msg = load_err(&dir, "len.ckpt", &b);
    assert!(msg.contains("truncated at RNG \"augment\" state: needs 4294967280 bytes"), "{msg}");

    let mut b = good.clone();
    LE::write_u64(&mut b[field_at(&fields, "tensor 1 numel")..], 5);
    fix_crc(&mut b);
    let msg = load_err(&dir, "numel.ckpt", &b);
    assert!(msg.contains("tensor \"bn1.running_var\" holds 5 values but its shape [4] needs 4"), "{msg}");

    let mut b = good.clone();
    LE::write_u64(&mut b[field_at(&fields, "tensor 0 dim 0")..], u64::MAX / 2);
    fix_crc(&mut b);
    let msg = load_err(&dir, "dims.ckpt", &b);
    assert!(msg.contains("holds 108 values"), "{msg}");

    let mut b = good.clone();
    let at = field_at(&fields, "tensor 2 name length") + 4;
    b[at] = 0xff;
    fix_crc(&mut b);
    let msg = load_err(&dir, "utf8.ckpt", &b);
    assert!(msg.contains("tensor 2 name") && msg.contains("not valid UTF-8"), "{msg}");

    let mut b = good.clone();
    LE::write_f64(&mut b[28..], f64::NAN);
    fix_crc(&mut b);
    let msg = load_err(&dir, "keep.ckpt", &b);
    assert!(msg.contains("config.keep NaN is out of range: expected a fraction in (0, 1]"), "{msg}");

    // A valid CRC over a configuration nothing could build: refused, naming the field.
    for (at, value, expect) in [
        (12, 0u32, "config.depth 0 is out of range"),
        (12, 1006, "config.depth 1006 is out of range"),
        (16, 0, "config.widen 0 is out of range"),
        (16, u32::MAX, "config.widen 4294967295 is out of range"),
        (20, 1, "config.classes 1 is out of range"),
        (24, u32::MAX, "config.in_channels 4294967295 is out of range"),
    ] {
        let mut b = good.clone();
        LE::write_u32(&mut b[at..], value);
        fix_crc(&mut b);
        let msg = load_err(&dir, "config.ckpt", &b);
        assert!(msg.contains(expect) && !msg.contains("--"), "{msg}");
    }

    let mut b = good[..good.len() - 4].to_vec();
    b.extend_from_slice(&[1, 2, 3, 0, 0, 0, 0]);
    fix_crc(&mut b);
    let msg = load_err(&dir, "trailing.ckpt", &b);
    assert!(msg.contains("3 unexpected bytes after the metadata"), "{msg}");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn save_refuses_what_load_would_refuse() {
    let dir = scratch("ckpt-refuse");
    let path = dir.join("x.ckpt");
    type Break = fn(&mut Checkpoint);
    let cases: Vec<(Break, &str)> = vec![
        (|c| c.tensors[1].data.push(1.0), "holds 5 values"),
        (|c| c.tensors[2].name = "conv1.w".into(), "duplicate tensor name"),
        (|c| c.rngs[1].0 = "shuffle".into(), "duplicate RNG name"),
        (|c| c.meta[1].0 = "dataset".into(), "duplicate metadata key"),
        (|c| c.config.keep = 0.0, "config.keep 0 is out of range"),
        (|c| c.config.depth = 0, "config.depth 0 is out of range"),
        (|c| c.config.widen = 1 << 31, "config.widen 2147483648 is out of range"),
        (|c| c.norm_std.pop().map(drop).unwrap_or(()), "norm_std has 2"),
    ];
    for (break_it, expect) in cases {
        let mut ck = sample();
        break_it(&mut ck);
        let msg = save(&path, &ck).unwrap_err().to_string();
        assert!(msg.contains(expect) && msg.contains("x.ckpt"), "{msg}");
        assert!(!path.exists());
    }
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn check_config_names_each_difference() {
    let path = Path::new("runs/wrn.ckpt");
    let found = config();
    assert!(check_config(path, &found, &found).is_ok());
    let expected = ModelConfig { depth: 28, keep: 0.75, ..found };
    let msg = check_config(path, &found, &expected).unwrap_err().to_string();
    assert!(msg.contains("runs/wrn.ckpt"), "{msg}");
    assert!(msg.contains("depth 16 in the checkpoint, 28 from the flags"), "{msg}");
    assert!(msg.contains("keep 0.5 in the checkpoint, 0.75 from the flags"), "{msg}");
    assert!(!msg.contains("widen") && !msg.contains("classes"), "{msg}");
}

/// Mutations of a valid file: byte flips, truncations, extensions, with and without the CRC
/// recomputed, and count/length fields set to awkward values with the CRC recomputed (so the
/// parser sees them). Nothing may panic; what loads must re-encode to the same bytes.
#[test]
fn fuzz_never_panics() {
    let good = encode(&sample()).unwrap();
    let fields = length_fields(&good);
    let mut rng = Rng::new(99, 1234);
    let start = Instant::now();
    let inputs = 6000;
    let (mut accepted, mut kinds) = (0, [0usize; 7]);
    for _ in 0..inputs {
        let kind = rng.below(7);
        kinds[kind] += 1;
        let mut b = good.clone();
        match kind {
            0 | 1 => {
                for _ in 0..1 + rng.below(4) {
                    let at = rng.below(b.len());
                    b[at] ^= 1 + rng.below(255) as u8;
                }
            }
            2 | 3 => b.truncate(rng.below(b.len())),
            4 => (0..1 + rng.below(64)).for_each(|_| b.push(rng.below(256) as u8)),
            5 => {
                let at = HEADER_LEN + rng.below(b.len() - HEADER_LEN - CRC_LEN + 1);
                let extra: Vec<u8> = (0..1 + rng.below(32)).map(|_| rng.below(256) as u8).collect();
                b.splice(at..at, extra);
            }
            _ => {
                let (_, at, width) = &fields[rng.below(fields.len())];
                let old = if *width == 4 { LE::read_u32(&b[*at..]) as u64 } else { LE::read_u64(&b[*at..]) };
                let v = match rng.below(8) {
                    0 => 0,
                    1 => old + 1,
                    2 => old.saturating_sub(1),
                    3 => u32::MAX as u64,
                    4 => u64::MAX,
                    5 => 1 << 62,
                    6 => rng.below(good.len()) as u64,
                    _ => rng.next_u64(),
                };
                if *width == 4 {
                    LE::write_u32(&mut b[*at..], v as u32);
                } else {
                    LE::write_u64(&mut b[*at..], v);
                }
            }
        }
        let crc_fixed = matches!(kind, 1 | 3 | 5 | 6);
        if crc_fixed && b.len() >= HEADER_LEN + CRC_LEN {
            fix_crc(&mut b);
        }
        match decode(&b) {
            Ok(ck) => {
                accepted += 1;
                assert!(crc_fixed, "kind {kind}: an unfixed CRC must not pass");
                assert_eq!(encode(&ck).unwrap(), b, "kind {kind}: not canonical");
            }
            Err(msg) => assert!(!msg.is_empty()),
        }
    }
    println!("checkpoint fuzz: {inputs} inputs (per kind {kinds:?}), {accepted} accepted, {:?}", start.elapsed());
    assert!(kinds.iter().all(|&k| k > 500));
}

/// Random model configurations under a valid CRC: every field drawn from awkward values
/// (0, 1, boundaries, 6n+4 and not, huge, random; NaN and signed zeros for keep). Nothing
/// may panic; exactly the configurations `ModelConfig::footprint(1)` accepts load.
#[test]
fn random_configs_under_a_valid_crc_load_only_when_valid() {
    let good = encode(&sample()).unwrap();
    let mut rng = Rng::new(11, 4321);
    let start = Instant::now();
    let inputs = 5000;
    let mut accepted = 0;
    let field = |rng: &mut Rng| -> u32 {
        match rng.below(8) {
            0 => 0,
            1 => 1 + rng.below(3) as u32,
            2 => 10 + 6 * rng.below(200) as u32,
            3 => rng.below(2000) as u32,
            4 => u32::MAX - rng.below(2) as u32,
            5 => 1 << (16 + rng.below(16)),
            6 => rng.below(64) as u32,
            _ => rng.next_u64() as u32,
        }
    };
    for _ in 0..inputs {
        let mut b = good.clone();
        for (i, at) in [12, 16, 20, 24].into_iter().enumerate() {
            if rng.below(2) == 0 || i < 2 {
                LE::write_u32(&mut b[at..], field(&mut rng));
            }
        }
        let keep = match rng.below(8) {
            0 => f64::NAN,
            1 => -0.0,
            2 => 1.0 + f64::EPSILON,
            3 => f64::MIN_POSITIVE,
            4 => f64::from_bits(rng.next_u64()),
            _ => 1.0 - rng.uniform() as f64,
        };
        LE::write_f64(&mut b[28..], keep);
        fix_crc(&mut b);
        let c = ModelConfig {
            depth: LE::read_u32(&b[12..]) as usize,
            widen: LE::read_u32(&b[16..]) as usize,
            classes: LE::read_u32(&b[20..]) as usize,
            in_channels: LE::read_u32(&b[24..]) as usize,
            keep,
        };
        match decode(&b) {
            Ok(ck) => {
                accepted += 1;
                assert!(c.footprint(1).is_ok(), "{c:?} loaded");
                assert_eq!(encode(&ck).unwrap(), b);
            }
            Err(msg) => {
                let why = c.footprint(1).expect_err(&msg);
                assert!(msg.contains(&format!("config.{}", why.field)), "{c:?}: {msg}");
            }
        }
    }
    println!("config fuzz: {inputs} configurations, {accepted} accepted, {:?}", start.elapsed());
    assert!(accepted > inputs / 100 && accepted < inputs / 2, "{accepted}");
}

const CRASH_ENV: &str = "SLICEOUT_CKPT_CRASH_CHILD";

/// Only runs when re-executed by `crash_during_save_keeps_a_valid_file`: saves ~4 MB
/// checkpoints with varying contents to one path, over and over, until killed (or 20 s
/// pass, so an orphan never lingers), printing a line after each save.
#[test]
fn crash_child() {
    let Some(path) = std::env::var_os(CRASH_ENV) else {
        return;
    };
    let path = PathBuf::from(path);
    let mut ck = sample();
    ck.tensors[0] = Tensor { name: "big".into(), shape: vec![1 << 20], data: vec![0.0; 1 << 20] };
    let mut rng = Rng::new(std::process::id() as u64, 5);
    let deadline = Instant::now() + Duration::from_secs(20);
    for step in 0.. {
        let base = rng.next_u64() as u32;
        fill_big(&mut ck.tensors[0].data, base);
        ck.step = step;
        ck.meta[2] = ("base".into(), base.to_string());
        save(&path, &ck).unwrap();
        println!("saved {step}");
        if Instant::now() > deadline {
            break;
        }
    }
}

fn fill_big(data: &mut [f32], base: u32) {
    for (i, x) in data.iter_mut().enumerate() {
        *x = f32::from_bits(base.wrapping_add((i as u32).wrapping_mul(2_654_435_761)));
    }
}

/// Kills the child on drop, so a failing assertion never leaves it running.
struct KillOnDrop(std::process::Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// SIGKILLs a process that is saving in a loop at a random moment, 30 times; the file must
/// then be absent (killed before the first save finished) or a complete, valid checkpoint.
#[test]
fn crash_during_save_keeps_a_valid_file() {
    if std::env::var_os(CRASH_ENV).is_some() {
        return;
    }
    let dir = scratch("ckpt-crash");
    let path = dir.join("run.ckpt");
    let module = module_path!();
    let test = format!("{}::crash_child", &module[module.find("::").unwrap() + 2..]);
    let exe = std::env::current_exe().unwrap();
    let mut rng = Rng::new(2024, 77);
    let start = Instant::now();
    let (trials, mut valid) = (30, 0);
    for trial in 0..trials {
        let mut child = KillOnDrop(
            Command::new(&exe)
                .args(["--exact", &test, "--nocapture"])
                .env(CRASH_ENV, &path)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        // Every other trial waits for one finished save first, so most kills land while an
        // existing file is being replaced; the others kill blind from the spawn.
        if trial % 2 == 1 {
            use std::io::BufRead;
            let out = child.0.stdout.take().unwrap();
            let mut lines = io::BufReader::new(out).lines();
            let saved = lines.any(|l| l.is_ok_and(|l| l.starts_with("saved")));
            assert!(saved, "child exited without saving");
        }
        std::thread::sleep(Duration::from_millis(3 + rng.below(98) as u64));
        child.0.kill().unwrap();
        child.0.wait().unwrap();
        drop(child);
        match load(&path) {
            Ok(ck) => {
                valid += 1;
                let big = ck.tensor("big").unwrap();
                let base: u32 = ck.meta("base").unwrap().parse().unwrap();
                let mut expect = vec![0.0; 1 << 20];
                fill_big(&mut expect, base);
                assert_eq!(bits(&big.data), bits(&expect), "trial {trial}");
            }
            Err(e) => {
                assert!(!path.exists(), "trial {trial}: file exists but {e}");
                assert_eq!(valid, 0, "trial {trial}: a saved file disappeared");
            }
        }
    }
    // Each leftover temp file is a kill that landed in the middle of a save.
    let torn = fs::read_dir(&dir).unwrap().filter(|e| e.as_ref().unwrap().file_name() != "run.ckpt").count();
    println!("crash test: {trials} kills ({torn} during a write), {valid} left a valid file, {:?}", start.elapsed());
    assert!(valid >= trials / 2);
    fs::remove_dir_all(&dir).unwrap();
}

/// A reader that counts the bytes read through it.
struct Counting<R> {
    inner: R,
    read: usize,
}

impl<R: io::Read> io::Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n;
        Ok(n)
    }
}

impl<R: io::Seek> io::Seek for Counting<R> {
    fn seek(&mut self, to: io::SeekFrom) -> io::Result<u64> {
        self.inner.seek(to)
    }
}

/// The metadata of a checkpoint whose values take 64 MiB is had by reading a few KiB: the
/// header and records, never the values. What it returns is the checkpoint less its tensors
/// and normalisation.
#[test]
fn the_metadata_is_read_without_the_values() {
    let mut ck = sample();
    ck.tensors.push(Tensor { name: "big".into(), shape: vec![1 << 24], data: vec![0.5; 1 << 24] });
    let bytes = encode(&ck).unwrap();
    let mut file = Counting { inner: io::Cursor::new(&bytes), read: 0 };
    let got = walk(&mut file, bytes.len() as u64).map_err(Fail::msg).unwrap();
    assert!(file.read < 64 << 10, "{} bytes read of {}", file.read, bytes.len());
    assert_eq!((got.config, got.step, got.epoch), (ck.config, ck.step, ck.epoch));
    assert_eq!((&got.rngs, &got.meta), (&ck.rngs, &ck.meta));

    let dir = scratch("ckpt-meta");
    let path = dir.join("big.ckpt");
    fs::write(&path, &bytes).unwrap();
    let meta = load_meta(&path).unwrap();
    assert_eq!(meta, Checkpoint { tensors: vec![], norm_mean: vec![], norm_std: vec![], ..ck });
    fs::remove_dir_all(&dir).unwrap();
}

/// A file cut short, one whose counts or lengths are wrong, or one that is no checkpoint gets
/// from `load_meta` the very message `load` gives. Damage inside the values alone is seen by
/// `load`'s CRC only: `load_meta` never reads them.
#[test]
fn the_metadata_reader_refuses_what_load_refuses() {
    let dir = scratch("ckpt-meta-bad");
    let good = encode(&sample()).unwrap();
    let fields = length_fields(&good);
    let same = |name: &str, bytes: &[u8]| {
        let msg = load_err(&dir, name, bytes);
        let path = dir.join(name);
        assert_eq!(load_meta(&path).unwrap_err().to_string(), msg);
        msg
    };
    for cut in [0, 5, 22, 60, field_at(&fields, "RNG count") + 2, good.len() - 9, good.len() - CRC_LEN, good.len() - 1]
    {
        let msg = same("cut.ckpt", &good[..cut]);
        assert!(msg.contains("truncated") || msg.contains("empty"), "cut at {cut}: {msg}");
    }
    for (label, value) in [("tensor count", 9u32), ("RNG 1 state length", 1 << 20), ("norm_std length", 2)] {
        let mut b = good.clone();
        LE::write_u32(&mut b[field_at(&fields, label)..], value);
        fix_crc(&mut b);
        same("bad.ckpt", &b);
    }
    let msg = same("onnx.ckpt", b"\x08\x07\x12\x08sliceout");
    assert!(msg.contains("ONNX"), "{msg}");
    let mut b = good.clone();
    b[field_at(&fields, "tensor 0 numel") + 8 + 20] ^= 0x40;
    let msg = load_err(&dir, "values.ckpt", &b);
    assert!(msg.contains("CRC mismatch"), "{msg}");
    assert_eq!(load_meta(&dir.join("values.ckpt")).unwrap().meta, sample().meta);
    fs::remove_dir_all(&dir).unwrap();
}
