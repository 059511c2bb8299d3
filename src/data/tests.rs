use super::testutil::TempDir;
use super::*;
use crate::rng::Rng;
use std::time::Instant;

#[test]
fn kind_parses_and_prints() {
    for (s, k) in [
        ("cifar10", DatasetKind::Cifar10),
        ("cifar100", DatasetKind::Cifar100),
        ("fashion-mnist", DatasetKind::FashionMnist),
    ] {
        assert_eq!(s.parse::<DatasetKind>().unwrap(), k);
        assert_eq!(k.to_string(), s);
    }
    assert_eq!("mnist".parse::<DatasetKind>().unwrap(), DatasetKind::FashionMnist);
    let msg = "imagenet".parse::<DatasetKind>().unwrap_err().to_string();
    assert!(msg.contains("--dataset") && msg.contains("imagenet"), "{msg}");
    assert!(msg.contains("cifar10, cifar100 or fashion-mnist"), "{msg}");
}

/// The first images of every format, across CIFAR-10's batch files too; the same bytes as
/// the start of a full read.
#[test]
fn limits_read_only_the_first_images() {
    let dirs = [TempDir::new("lim-c10"), TempDir::new("lim-c100"), TempDir::new("lim-idx"), TempDir::new("lim-gz")];
    cifar::tests::write_cifar10_dir(dirs[0].path(), 3, 4);
    cifar::tests::write_cifar100_dir(dirs[1].path(), 9, 4);
    idx::tests::write_idx_dir(dirs[2].path(), 9, 4, false);
    idx::tests::write_idx_dir(dirs[3].path(), 9, 4, true);
    for d in &dirs {
        let full = load(d.path(), None, false).unwrap();
        for (train, test) in [(1, 1), (4, 2), (7, 4), (100, 100)] {
            let limits = Limits { train: Some(train), test: Some(test) };
            let part = load_limited(d.path(), None, false, limits).unwrap();
            for (got, all, n) in [(&part.train, &full.train, train), (&part.test, &full.test, test)] {
                let n = n.min(all.len);
                let each = all.images.len() / all.len;
                assert_eq!(got.len, n);
                assert_eq!(got.labels, all.labels[..n]);
                assert_eq!(got.images, all.images[..n * each]);
            }
        }
    }
    // Past the limit nothing is read: a bad label there goes unnoticed, one within is named.
    let p = dirs[0].path().join("data_batch_3.bin");
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[cifar::CIFAR10_RECORD] = 99;
    std::fs::write(&p, bytes).unwrap();
    assert!(load_limited(dirs[0].path(), None, false, Limits { train: Some(7), test: None }).is_ok());
    let msg = load_limited(dirs[0].path(), None, false, Limits { train: Some(8), test: None }).unwrap_err();
    assert!(msg.to_string().contains("data_batch_3.bin") && msg.to_string().contains("label 99"), "{msg}");
}

#[test]
fn folders_fifos_and_devices_are_not_data_files() {
    let tmp = TempDir::new("kinds");
    let d = tmp.path();
    cifar::tests::write_cifar10_dir(d, 2, 2);
    let p = d.join("data_batch_2.bin");
    std::fs::remove_file(&p).unwrap();
    std::fs::create_dir(&p).unwrap();
    let msg = load(d, None, false).unwrap_err().to_string();
    assert!(msg.contains("data_batch_2.bin: is a folder, expected a data file"), "{msg}");
    std::fs::remove_dir(&p).unwrap();
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink("/dev/zero", &p).unwrap();
        let msg = load(d, None, false).unwrap_err().to_string();
        assert!(msg.contains("data_batch_2.bin: is not a regular file"), "{msg}");
        std::fs::remove_file(&p).unwrap();
        // A FIFO would block `open` until a writer came: it is refused without opening it.
        let made = std::process::Command::new("mkfifo").arg(&p).status();
        if made.is_ok_and(|s| s.success()) {
            let msg = load(d, None, false).unwrap_err().to_string();
            assert!(msg.contains("data_batch_2.bin: is not a regular file (a FIFO"), "{msg}");
        }
    }
    // Even when it is the only file of its format: detection finds it, loading names it.
    let tmp = TempDir::new("kinds-only");
    std::fs::create_dir(tmp.path().join("train.bin")).unwrap();
    let msg = load(tmp.path(), None, false).unwrap_err().to_string();
    assert!(msg.contains("train.bin: is a folder"), "{msg}");
}

/// A data file that shrinks after it is opened (another process truncating it while it is
/// read) is an error naming it, for CIFAR, raw IDX and gzip IDX files alike: read through a
/// memory map, this died by SIGBUS.
#[test]
fn a_file_shrinking_while_read_is_named() {
    let shrink = |p: &Path, len: u64| std::fs::OpenOptions::new().write(true).open(p).unwrap().set_len(len).unwrap();
    let tmp = TempDir::new("shrink-c10");
    cifar::tests::write_cifar10_dir(tmp.path(), 3, 2);
    let p = tmp.path().join("data_batch_1.bin");
    let file = DataFile::open(&p).unwrap();
    let len = file.len;
    shrink(&p, cifar::CIFAR10_RECORD as u64 + 10);
    let mut split = Split::default();
    let msg = cifar::parse_cifar10(&mut split, &p, len, &mut file.buffered(), usize::MAX).unwrap_err().to_string();
    assert!(msg.starts_with(&p.display().to_string()) && msg.contains("shrank"), "{msg}");
    assert!(msg.contains(&format!("{len} bytes when opened, it ended after {}", cifar::CIFAR10_RECORD + 10)), "{msg}");

    for gz in [false, true] {
        let tmp = TempDir::new("shrink-idx");
        idx::tests::write_idx_dir(tmp.path(), 40, 2, gz);
        let ext = if gz { ".gz" } else { "" };
        let images = tmp.path().join(format!("{}{ext}", idx::FILES[0]));
        let labels = tmp.path().join(format!("{}{ext}", idx::FILES[1]));
        let (fi, fl) = (DataFile::open(&images).unwrap(), DataFile::open(&labels).unwrap());
        let (li, ll) = (fi.len, fl.len);
        shrink(&images, li / 2);
        let got = idx::parse_split((&images, li, fi.buffered()), (&labels, ll, fl.buffered()), usize::MAX);
        let msg = got.unwrap_err().to_string();
        assert!(msg.starts_with(&images.display().to_string()) && msg.contains("shrank"), "{msg}");
    }
}

/// A file that grows after it is opened is read to its length when opened.
#[test]
fn a_file_growing_while_read_is_read_as_opened() {
    let tmp = TempDir::new("grow");
    cifar::tests::write_cifar10_dir(tmp.path(), 3, 2);
    let p = tmp.path().join("test_batch.bin");
    let file = DataFile::open(&p).unwrap();
    let len = file.len;
    let mut bytes = std::fs::read(&p).unwrap();
    bytes.extend(bytes.clone());
    std::fs::write(&p, &bytes).unwrap();
    let mut split = Split::default();
    cifar::parse_cifar10(&mut split, &p, len, &mut file.buffered(), usize::MAX).unwrap();
    assert_eq!(split.len, 2);
}

#[test]
fn missing_folder_is_named_with_expected_files() {
    let dir = std::env::temp_dir().join("sliceout-data-surely-not-here-3141");
    for msg in [detect(&dir).unwrap_err().to_string(), load(&dir, None, false).unwrap_err().to_string()] {
        assert!(msg.contains("sliceout-data-surely-not-here-3141"), "{msg}");
        assert!(msg.contains("not found"), "{msg}");
        assert!(msg.contains("data_batch_1.bin"), "{msg}");
        assert!(msg.contains("train.bin"), "{msg}");
        assert!(msg.contains("train-images-idx3-ubyte"), "{msg}");
    }
}

#[test]
fn folder_without_dataset_files_is_reported() {
    let tmp = TempDir::new("empty");
    std::fs::write(tmp.path().join("readme.txt"), b"hello").unwrap();
    let msg = load(tmp.path(), None, false).unwrap_err().to_string();
    assert!(msg.contains(&tmp.path().display().to_string()), "{msg}");
    assert!(msg.contains("no recognised dataset files"), "{msg}");
    assert!(msg.contains("test_batch.bin"), "{msg}");
    assert!(msg.contains("test.bin"), "{msg}");
    assert!(msg.contains("t10k-labels-idx1-ubyte"), "{msg}");
}

#[test]
fn detect_picks_format_from_names() {
    let tmp = TempDir::new("detect");
    let d = tmp.path();
    std::fs::write(d.join("t10k-images-idx3-ubyte.gz"), b"x").unwrap();
    assert_eq!(detect(d).unwrap(), DatasetKind::FashionMnist);
    std::fs::remove_file(d.join("t10k-images-idx3-ubyte.gz")).unwrap();
    std::fs::write(d.join("train.bin"), b"x").unwrap();
    assert_eq!(detect(d).unwrap(), DatasetKind::Cifar100);
    std::fs::remove_file(d.join("train.bin")).unwrap();
    std::fs::write(d.join("data_batch_3.bin"), b"x").unwrap();
    assert_eq!(detect(d).unwrap(), DatasetKind::Cifar10);
    // A partial CIFAR-10 folder is detected, then load names the missing file.
    let msg = load(d, None, false).unwrap_err().to_string();
    assert!(msg.contains("data_batch_1.bin") && msg.contains("missing"), "{msg}");
}

/// A folder holding the files of two formats is refused (--dataset says which), and with
/// --dataset the named format is read.
#[test]
fn a_folder_of_two_formats_asks_for_dataset() {
    let tmp = TempDir::new("detect-two");
    let d = tmp.path();
    std::fs::write(d.join("data_batch_1.bin"), b"x").unwrap();
    std::fs::write(d.join("t10k-labels-idx1-ubyte"), b"x").unwrap();
    let msg = detect(d).unwrap_err().to_string();
    assert!(msg.contains("cifar10 and fashion-mnist") && msg.contains("--dataset"), "{msg}");
    let msg = load(d, Some(DatasetKind::FashionMnist), false).unwrap_err().to_string();
    assert!(msg.contains("train-images-idx3-ubyte") && msg.contains("missing"), "{msg}");
}

/// A file where the folder should be, and a missing folder, are told apart.
#[test]
fn a_file_given_as_the_data_folder_is_named_as_such() {
    let tmp = TempDir::new("data-file");
    let file = tmp.path().join("data_batch_1.bin");
    std::fs::write(&file, b"x").unwrap();
    let msg = load(&file, None, false).unwrap_err().to_string();
    assert!(msg.contains("not a folder"), "{msg}");
    let msg = load(&tmp.path().join("nope"), None, false).unwrap_err().to_string();
    assert!(msg.contains("dataset folder not found"), "{msg}");
}

#[test]
fn coarse_only_for_cifar100() {
    let tmp = TempDir::new("coarse");
    cifar::tests::write_cifar10_dir(tmp.path(), 5, 2);
    let msg = load(tmp.path(), None, true).unwrap_err().to_string();
    assert!(msg.contains("cifar100") && msg.contains("cifar10"), "{msg}");
}

/// One random mutation of `bytes`: bit flips (biased to the first bytes, where headers and
/// labels live), a truncation, or random bytes appended.
fn mutate(bytes: &mut Vec<u8>, rng: &mut Rng) {
    match rng.below(4) {
        0 | 1 => {
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(bytes.len());
                let at = if rng.below(2) == 0 { at % 20 } else { at };
                bytes[at] ^= 1 << rng.below(8);
            }
        }
        2 => bytes.truncate(rng.below(bytes.len() + 1)),
        _ => {
            for _ in 0..1 + rng.below(3100) {
                bytes.push(rng.below(256) as u8);
            }
        }
    }
}

/// A file's path, length and contents as the IDX parser takes them.
fn mem(file: &(std::path::PathBuf, Vec<u8>)) -> (&Path, u64, &[u8]) {
    (&file.0, file.1.len() as u64, &file.1[..])
}

/// What `load_limited` does after reading the files, on in-memory contents (sorted by name).
fn load_mem(kind: DatasetKind, files: &[(std::path::PathBuf, Vec<u8>)], coarse: bool, limit: usize) -> Result<Dataset> {
    let (train, test, classes, channels) = match kind {
        DatasetKind::Cifar10 => {
            // data_batch_1..5, then test_batch: the sorted order.
            let mut train = Split::default();
            for (p, b) in &files[..5] {
                let left = limit - train.len;
                cifar::parse_cifar10(&mut train, p, b.len() as u64, &mut &b[..], left)?;
            }
            let mut test = Split::default();
            cifar::parse_cifar10(&mut test, &files[5].0, files[5].1.len() as u64, &mut &files[5].1[..], limit)?;
            (train, test, 10, 3)
        }
        DatasetKind::Cifar100 => {
            // test.bin, train.bin
            let test =
                cifar::parse_cifar100(&files[0].0, files[0].1.len() as u64, &mut &files[0].1[..], coarse, limit)?;
            let train =
                cifar::parse_cifar100(&files[1].0, files[1].1.len() as u64, &mut &files[1].1[..], coarse, limit)?;
            (train, test, if coarse { 20 } else { 100 }, 3)
        }
        DatasetKind::FashionMnist => {
            // t10k-images, t10k-labels, train-images, train-labels
            let test = idx::parse_split(mem(&files[0]), mem(&files[1]), limit)?;
            let train = idx::parse_split(mem(&files[2]), mem(&files[3]), limit)?;
            (train, test, 10, 1)
        }
    };
    Ok(Dataset { kind, classes, channels, train, test })
}

fn check_ok(ds: &Dataset) {
    for s in [&ds.train, &ds.test] {
        assert_eq!(s.labels.len(), s.len);
        assert_eq!(s.images.len(), s.len * ds.channels * PLANE);
        assert!(s.labels.iter().all(|&l| (l as usize) < ds.classes));
    }
}

/// Random flips, truncations and extensions of small valid files: every outcome must be
/// `Ok` (with consistent sizes and labels in range) or a clean `Error`, never a panic. Most
/// inputs go through the parsers in memory; some through files and `load`, so the file
/// handling (reads, empty and missing files, detection) is fuzzed too.
#[test]
fn mutation_fuzz_never_panics() {
    let start = Instant::now();
    let mut rng = Rng::new(2024, 77);
    let (mut runs, mut errors) = (0usize, 0usize);
    let sets = [
        ("c10", DatasetKind::Cifar10),
        ("c100", DatasetKind::Cifar100),
        ("idx", DatasetKind::FashionMnist),
        ("idxgz", DatasetKind::FashionMnist),
    ];
    for (tag, kind) in sets {
        let tmp = TempDir::new(&format!("fuzz-{tag}"));
        let d = tmp.path();
        match tag {
            "c10" => cifar::tests::write_cifar10_dir(d, 2, 2),
            "c100" => cifar::tests::write_cifar100_dir(d, 3, 2),
            "idx" => idx::tests::write_idx_dir(d, 3, 2, false),
            _ => idx::tests::write_idx_dir(d, 3, 2, true),
        }
        let mut files: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| {
                let p = e.unwrap().path();
                let b = std::fs::read(&p).unwrap();
                (p, b)
            })
            .collect();
        files.sort();
        let is100 = kind == DatasetKind::Cifar100;
        check_ok(&load_mem(kind, &files, is100, usize::MAX).unwrap());
        check_ok(&load(d, None, is100).unwrap());
        for round in 0..1000 {
            let which = rng.below(files.len());
            let original = files[which].1.clone();
            mutate(&mut files[which].1, &mut rng);
            let coarse = is100 && rng.below(2) == 0;
            // Every 20th input goes through the file system and `load`.
            let result = if round % 20 == 0 {
                std::fs::write(&files[which].0, &files[which].1).unwrap();
                let kind_arg = if rng.below(2) == 0 { Some(kind) } else { None };
                let r = load(d, kind_arg, coarse);
                std::fs::write(&files[which].0, &original).unwrap();
                r
            } else {
                // A quarter of the inputs read only the first images, as a limit does.
                let limit = if rng.below(4) == 0 { rng.below(4) } else { usize::MAX };
                load_mem(kind, &files, coarse, limit)
            };
            match result {
                Ok(ds) => check_ok(&ds),
                Err(e) => {
                    errors += 1;
                    assert!(!e.to_string().is_empty());
                }
            }
            runs += 1;
            files[which].1 = original;
        }
    }
    println!("fuzz: {runs} mutated inputs, {errors} rejected, in {:.2?}", start.elapsed());
    assert!(errors > runs / 4, "most mutations should be caught: {errors}/{runs}");
}
