//! A synthetic dataset written in the exact CIFAR-10 binary format, so every reader, the
//! trainer and the tests can run without downloading anything.
//!
//! Ten classes, each a shape (disc, square, ring, cross, horizontal stripes, vertical stripes,
//! diagonal bar, checker, triangle, two blobs) drawn in a class-dependent hue, with jittered
//! position, size, hue, saturation and brightness, a random background colour and per-pixel
//! noise. Neighbouring hues overlap, so colour alone does not decide the class: a small network
//! picks up colour within an epoch and needs the shape for the rest. Everything comes from one
//! seeded stream, in a fixed order, so the bytes depend only on (train, test, seed).

use super::cifar::CIFAR10_RECORD;
use super::{Split, CIFAR10_FILES, PLANE};
use crate::io::atomic::{check_replaceable, remove_stale_temps};
use crate::io::output::holds_checkpoint;
use crate::io::{write_atomic, write_atomic_with};
use crate::rng::{stream, Rng};
use crate::{Error, Result};
use std::io::Write;
use std::path::Path;

pub const CLASS_NAMES: [&str; 10] = [
    "disc",
    "square",
    "ring",
    "cross",
    "horizontal-stripes",
    "vertical-stripes",
    "diagonal",
    "checker",
    "triangle",
    "two-blobs",
];

/// Parameters of one drawn image.
struct Shape {
    class: usize,
    cx: f32,
    cy: f32,
    r: f32,
    phase: usize,
}

impl Shape {
    /// Whether pixel (x, y) lies on the shape.
    fn covers(&self, x: usize, y: usize) -> bool {
        let dx = x as f32 - self.cx;
        let dy = y as f32 - self.cy;
        let r = self.r;
        let in_box = dx.abs() <= r && dy.abs() <= r;
        let d2 = dx * dx + dy * dy;
        match self.class {
            0 => d2 <= r * r,
            1 => dx.abs() <= 0.8 * r && dy.abs() <= 0.8 * r,
            2 => d2 <= r * r && d2 >= (r - 2.5) * (r - 2.5),
            3 => (dx.abs() <= 1.5 && dy.abs() <= r) || (dy.abs() <= 1.5 && dx.abs() <= r),
            4 => in_box && ((y + self.phase) / 3).is_multiple_of(2),
            5 => in_box && ((x + self.phase) / 3).is_multiple_of(2),
            6 => in_box && (dx - dy).abs() <= 2.0,
            7 => in_box && ((x + self.phase) / 3 + (y + self.phase) / 3).is_multiple_of(2),
            8 => dy >= -r && dy <= r && dx.abs() <= (dy + r) * 0.5,
            _ => {
                let (ox, oy, br) = (0.55 * r, 0.3 * r, 0.45 * r);
                let a = (dx + ox).powi(2) + (dy + oy).powi(2);
                let b = (dx - ox).powi(2) + (dy - oy).powi(2);
                a <= br * br || b <= br * br
            }
        }
    }
}

/// HSV (hue in degrees) to RGB bytes.
fn hsv(h: f32, s: f32, v: f32) -> [f32; 3] {
    let h = h.rem_euclid(360.0) / 60.0;
    let c = v * s;
    let x = c * (1.0 - ((h % 2.0) - 1.0).abs());
    let (r, g, b) = match h as usize {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let m = v - c;
    [(r + m) * 255.0, (g + m) * 255.0, (b + m) * 255.0]
}

/// Draws one image of class `class` into `out` (3 planes of 32x32).
fn draw_image(out: &mut [u8], class: usize, rng: &mut Rng) {
    // Hues 36 degrees apart, jittered by up to 22 either way: neighbours overlap.
    let hue = class as f32 * 36.0 + (rng.uniform() - 0.5) * 44.0;
    let sat = 0.55 + 0.45 * rng.uniform();
    let val = 0.65 + 0.35 * rng.uniform();
    let fg = hsv(hue, sat, val);
    // A greyish background of random brightness and a mild random cast, so the tinted shape
    // stands out but its colour is not the only bright thing in the image.
    let grey = rng.below(151) as f32;
    let bg =
        [grey + rng.below(61) as f32 - 30.0, grey + rng.below(61) as f32 - 30.0, grey + rng.below(61) as f32 - 30.0];
    let shape = Shape {
        class,
        cx: 16.0 + rng.below(9) as f32 - 4.0,
        cy: 16.0 + rng.below(9) as f32 - 4.0,
        r: 6.0 + rng.below(5) as f32,
        phase: rng.below(6),
    };
    for y in 0..32 {
        for x in 0..32 {
            let colour = if shape.covers(x, y) { fg } else { bg };
            // Triangular noise in about +-32 per channel, three channels from one draw.
            let bits = rng.next_u64();
            for (c, &base) in colour.iter().enumerate() {
                let a = (bits >> (16 * c)) & 0xff;
                let b = (bits >> (16 * c + 8)) & 0xff;
                let noise = (a as f32 + b as f32 - 255.0) / 8.0;
                out[c * PLANE + y * 32 + x] = (base + noise).round().clamp(0.0, 255.0) as u8;
            }
        }
    }
}

/// `n` balanced labels (`i mod 10`), shuffled.
fn labels(n: usize, rng: &mut Rng) -> Vec<u8> {
    let mut l: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
    rng.shuffle(&mut l);
    l
}

/// Writes the CIFAR-10 records for `labels` to `w`, images drawn in order, one at a time.
fn write_records(w: &mut dyn Write, labels: &[u8], rng: &mut Rng) -> std::io::Result<()> {
    let mut rec = [0u8; CIFAR10_RECORD];
    for &l in labels {
        rec[0] = l;
        draw_image(&mut rec[1..], l as usize, rng);
        w.write_all(&rec)?;
    }
    Ok(())
}

/// `len` images of the synthetic classes (three channels) kept in memory, labels `i mod 10`
/// shuffled: the batch source of `bench` and `profile`, which time steps, not learning.
pub fn split(len: usize, seed: u64) -> Split {
    let mut rng = Rng::new(seed, stream::SYNTH);
    let labels = labels(len, &mut rng);
    let mut bytes = Vec::with_capacity(len * CIFAR10_RECORD);
    write_records(&mut bytes, &labels, &mut rng).expect("writing to memory cannot fail");
    let images = bytes.chunks_exact(CIFAR10_RECORD).flat_map(|r| &r[1..]).copied().collect();
    Split { images, labels, len }
}

/// The most images of either split `write_synthetic` makes (CIFAR-10 has 50,000): 3 GB of
/// files.
pub const MAX_IMAGES: usize = 1_000_000;

/// The class names file written beside CIFAR-10's batches.
const META: &str = "batches.meta.txt";

/// Writes a synthetic dataset of `train` + `test` images into `dir` in the CIFAR-10 binary
/// format: `data_batch_1.bin`..`data_batch_5.bin` (the training images split as evenly as
/// possible, in order), `test_batch.bin` and `batches.meta.txt`. Same bytes for the same
/// arguments. Each batch file needs at least one image, so `train >= 5` and `test >= 1`; each
/// split is at most [`MAX_IMAGES`]. A folder already holding any of these files is refused
/// unless `replace`. The new set is written whole into a staging folder inside `dir` (same file
/// system) and only then renamed into place, file by file, each old file kept under a second
/// name until the swap is done: a failure at any point (a full disk, say) leaves the old set
/// whole and no new file in its place.
pub fn write_synthetic(dir: &Path, train: usize, test: usize, seed: u64, replace: bool) -> Result<()> {
    if !(5..=MAX_IMAGES).contains(&train) {
        return Err(Error::flag("--train", train, format!("5 to {MAX_IMAGES} images (one or more per batch file)")));
    }
    if !(1..=MAX_IMAGES).contains(&test) {
        return Err(Error::flag("--test", test, format!("1 to {MAX_IMAGES} images")));
    }
    if dir.exists() && !dir.is_dir() {
        return Err(Error::flag("--out", dir.display(), "a folder for the dataset (this is a file)"));
    }
    let files: Vec<&str> = CIFAR10_FILES.iter().chain(&[META]).copied().collect();
    // A checkpoint under a data file's name is no dataset file, and --force does not cover it.
    if let Some(f) = files.iter().find(|f| holds_checkpoint(&dir.join(f))) {
        return Err(Error::data(
            dir.join(f),
            "holds a sliceout checkpoint, not dataset files; it is left as it is: move it, or pick another --out",
        ));
    }
    let found: Vec<&str> = files.iter().copied().filter(|f| dir.join(f).exists()).collect();
    if !found.is_empty() && !replace {
        return Err(Error::Msg(format!(
            "{} already holds dataset files ({}): pass --force to replace them, or pick another --out",
            dir.display(),
            found.join(", ")
        )));
    }
    // Before anything is drawn: a FIFO or a link in the way is refused now.
    for f in &files {
        check_replaceable(&dir.join(f))?;
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    // What a generation killed mid-write left.
    remove_stale_temps(dir, &CIFAR10_FILES)?;
    remove_stale_staging(dir)?;
    let staging = dir.join(format!("{STAGING}{}", std::process::id()));
    // A folder of this name is a dead process's with our pid.
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir(&staging).map_err(|e| Error::io(&staging, e))?;
    let result = write_files(&staging, train, test, seed).and_then(|()| swap_in(dir, &staging, &files));
    let _ = std::fs::remove_dir_all(&staging);
    result
}

/// The start of the name of the staging folder of [`write_synthetic`]; the process id follows.
const STAGING: &str = ".sliceout-synth-";

/// Removes the staging folders in `dir` left by generations whose process is gone.
fn remove_stale_staging(dir: &Path) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name();
        let pid = name.to_str().and_then(|n| n.strip_prefix(STAGING)).and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|p| !process_alive(p)) && entry.file_type().is_ok_and(|t| t.is_dir()) {
            std::fs::remove_dir_all(entry.path()).map_err(|e| Error::io(entry.path(), e))?;
        }
    }
    Ok(())
}

/// Whether a process `pid` runs (where that cannot be told: yes, so nothing of it is removed).
fn process_alive(pid: u32) -> bool {
    #[cfg(unix)]
    {
        let Ok(pid) = libc::pid_t::try_from(pid) else {
            return true;
        };
        // SAFETY: signal 0 sends nothing; it only asks whether the process exists.
        let sent = unsafe { libc::kill(pid, 0) };
        sent == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

/// Renames each of `files` from `staging` into `dir`. Each file it replaces is first given a
/// second name in `staging` (a hard link, so the dataset never lacks it); if a rename fails,
/// the files already swapped are put back, so `dir` holds the old set whole.
fn swap_in(dir: &Path, staging: &Path, files: &[&str]) -> Result<()> {
    // Each file swapped in, and whether it replaced an old one.
    let mut swapped: Vec<(&str, bool)> = Vec::new();
    let mut result = Ok(());
    for f in files {
        let (new, target, old) = (staging.join(f), dir.join(f), staging.join(format!("old-{f}")));
        let had_old = target.exists();
        // A file system without hard links keeps no second name; the old file is still only
        // replaced once its new one is whole.
        if had_old {
            let _ = std::fs::hard_link(&target, &old);
        }
        let renamed =
            check_replaceable(&target).and_then(|()| std::fs::rename(&new, &target).map_err(|e| Error::io(&target, e)));
        if let Err(e) = renamed {
            result = Err(e);
            break;
        }
        swapped.push((f, had_old));
    }
    if result.is_err() {
        for (f, had_old) in swapped.into_iter().rev() {
            let (target, old) = (dir.join(f), staging.join(format!("old-{f}")));
            let _ = match (had_old, old.exists()) {
                (true, true) => std::fs::rename(&old, &target),
                (false, _) => std::fs::remove_file(&target),
                // Kept under no second name: the new file stays rather than none.
                (true, false) => Ok(()),
            };
        }
        return result;
    }
    sync_dir(dir)
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir).and_then(|f| f.sync_all()).map_err(|e| Error::io(dir, e))
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> Result<()> {
    Ok(())
}

/// The files of [`write_synthetic`], written into `dir`.
fn write_files(dir: &Path, train: usize, test: usize, seed: u64) -> Result<()> {
    let mut rng = Rng::new(seed, stream::SYNTH);
    // Draw order: train labels, test labels, train images, test images.
    let train_labels = labels(train, &mut rng);
    let test_labels = labels(test, &mut rng);
    let mut start = 0;
    for (b, name) in CIFAR10_FILES[..5].iter().enumerate() {
        let count = train / 5 + usize::from(b < train % 5);
        write_atomic_with(&dir.join(name), |w| write_records(w, &train_labels[start..start + count], &mut rng))?;
        start += count;
    }
    write_atomic_with(&dir.join(CIFAR10_FILES[5]), |w| write_records(w, &test_labels, &mut rng))?;
    let mut meta = CLASS_NAMES.join("\n");
    meta.push('\n');
    write_atomic(&dir.join(META), meta.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::super::cifar::IMAGE_BYTES;
    use super::super::testutil::TempDir;
    use super::super::{load, DatasetKind};
    use super::*;
    use std::time::Instant;

    fn read_all(dir: &Path) -> Vec<Vec<u8>> {
        let mut names: Vec<String> = (1..=5).map(|b| format!("data_batch_{b}.bin")).collect();
        names.push("test_batch.bin".into());
        names.push("batches.meta.txt".into());
        names.iter().map(|n| std::fs::read(dir.join(n)).unwrap()).collect()
    }

    #[test]
    fn deterministic_per_seed_and_loadable() {
        let (a, b, c) = (TempDir::new("syn-a"), TempDir::new("syn-b"), TempDir::new("syn-c"));
        let start = Instant::now();
        write_synthetic(a.path(), 5000, 1000, 7, false).unwrap();
        println!("synth 5000+1000 images in {:.2?}", start.elapsed());
        write_synthetic(b.path(), 5000, 1000, 7, false).unwrap();
        write_synthetic(c.path(), 5000, 1000, 8, false).unwrap();
        let (fa, fb, fc) = (read_all(a.path()), read_all(b.path()), read_all(c.path()));
        assert_eq!(fa, fb);
        assert_ne!(fa[0], fc[0]);
        assert_ne!(fa[5], fc[5]);
        assert_eq!(fa[6], fc[6]);
        let meta = String::from_utf8(fa[6].clone()).unwrap();
        assert_eq!(meta.lines().count(), 10);
        assert!(meta.lines().all(|l| !l.is_empty()));

        let ds = load(a.path(), None, false).unwrap();
        assert_eq!(ds.kind, DatasetKind::Cifar10);
        assert_eq!((ds.train.len, ds.test.len), (5000, 1000));
        for split in [&ds.train, &ds.test] {
            let mut counts = [0usize; 10];
            for &l in &split.labels {
                counts[l as usize] += 1;
            }
            assert!(counts.iter().all(|&k| k == split.len / 10), "{counts:?}");
        }
        // Labels are shuffled, not in i mod 10 order.
        assert!(ds.train.labels.iter().enumerate().any(|(i, &l)| l as usize != i % 10));
    }

    #[test]
    fn uneven_split_over_batches_and_bad_sizes() {
        let tmp = TempDir::new("syn-uneven");
        let d = tmp.path().join("nested").join("synthetic");
        write_synthetic(&d, 13, 3, 1, false).unwrap();
        let sizes: Vec<u64> =
            (1..=5).map(|b| std::fs::metadata(d.join(format!("data_batch_{b}.bin"))).unwrap().len()).collect();
        let r = CIFAR10_RECORD as u64;
        assert_eq!(sizes, vec![3 * r, 3 * r, 3 * r, 2 * r, 2 * r]);
        let ds = load(&d, None, false).unwrap();
        assert_eq!((ds.train.len, ds.test.len), (13, 3));
        let msg = write_synthetic(&d, 4, 1, 1, true).unwrap_err().to_string();
        assert!(msg.contains("--train") && msg.contains("'4'") && msg.contains("5 to 1000000"), "{msg}");
        for (train, test, flag) in
            [(MAX_IMAGES + 1, 1, "--train"), (usize::MAX, 1, "--train"), (5, 0, "--test"), (5, 1 << 40, "--test")]
        {
            let msg = write_synthetic(&d, train, test, 1, true).unwrap_err().to_string();
            assert!(msg.contains(flag), "{msg}");
        }

        // A folder that cannot be created is named.
        let blocker = tmp.path().join("file");
        std::fs::write(&blocker, b"x").unwrap();
        let msg = write_synthetic(&blocker.join("sub"), 10, 2, 1, false).unwrap_err().to_string();
        assert!(msg.contains("file") && msg.contains("sub"), "{msg}");
        let msg = write_synthetic(&blocker, 10, 2, 1, false).unwrap_err().to_string();
        assert!(msg.contains("--out") && msg.contains("this is a file"), "{msg}");
    }

    /// A checkpoint under a data file's name is refused as what it is, even with --force, and
    /// nothing in the folder changes.
    #[test]
    fn a_checkpoint_under_a_data_file_name_is_never_replaced() {
        let tmp = TempDir::new("syn-ckpt");
        let d = tmp.path();
        let ck = d.join("test_batch.bin");
        let bytes = [&crate::io::checkpoint::MAGIC[..], b"rest of a checkpoint"].concat();
        std::fs::write(&ck, &bytes).unwrap();
        for force in [false, true] {
            let msg = write_synthetic(d, 10, 2, 1, force).unwrap_err().to_string();
            assert!(msg.contains("test_batch.bin") && msg.contains("checkpoint"), "{msg}");
            assert_eq!(std::fs::read(&ck).unwrap(), bytes);
            assert!(!d.join("data_batch_1.bin").exists());
        }
    }

    #[test]
    fn an_existing_dataset_is_kept_unless_replaced() {
        let tmp = TempDir::new("syn-keep");
        let d = tmp.path();
        write_synthetic(d, 10, 2, 1, false).unwrap();
        let before = read_all(d);
        // Any one of its files is enough to refuse.
        for keep in ["data_batch_3.bin", "batches.meta.txt"] {
            let only = d.join("only");
            std::fs::create_dir_all(&only).unwrap();
            std::fs::copy(d.join(keep), only.join(keep)).unwrap();
            let msg = write_synthetic(&only, 10, 2, 2, false).unwrap_err().to_string();
            assert!(msg.contains(keep) && msg.contains("--force"), "{msg}");
            std::fs::remove_dir_all(&only).unwrap();
        }
        let msg = write_synthetic(d, 20, 4, 2, false).unwrap_err().to_string();
        assert!(msg.contains("already holds dataset files") && msg.contains("--force"), "{msg}");
        assert_eq!(read_all(d), before);
        // What a killed generation left goes too.
        std::fs::write(d.join(".test_batch.bin.tmp-1-0"), b"torn").unwrap();
        write_synthetic(d, 20, 4, 2, true).unwrap();
        assert_ne!(read_all(d), before);
        // No temporary file is left.
        assert_eq!(std::fs::read_dir(d).unwrap().count(), 7);
    }

    /// A swap that fails partway puts back every old file it had replaced.
    #[test]
    fn a_failed_swap_puts_the_old_files_back() {
        let tmp = TempDir::new("syn-swap");
        let d = tmp.path();
        write_synthetic(d, 10, 2, 1, false).unwrap();
        let before = read_all(d);
        let staging = d.join("staging");
        std::fs::create_dir(&staging).unwrap();
        write_files(&staging, 20, 4, 2).unwrap();
        // The fourth file is missing from the new set: its rename fails after three swapped.
        std::fs::remove_file(staging.join("data_batch_4.bin")).unwrap();
        let files: Vec<&str> = CIFAR10_FILES.iter().chain(&[META]).copied().collect();
        let msg = swap_in(d, &staging, &files).unwrap_err().to_string();
        assert!(msg.contains("data_batch_4.bin"), "{msg}");
        assert_eq!(read_all(d), before);
    }

    /// A staging folder of a process that is gone is removed; one of a live process is not.
    #[cfg(unix)]
    #[test]
    fn only_dead_generations_staging_is_removed() {
        let tmp = TempDir::new("syn-stale");
        let d = tmp.path();
        let mine = d.join(format!("{STAGING}{}", std::process::id()));
        let dead = d.join(format!("{STAGING}{}", u32::MAX / 2));
        for f in [&mine, &dead] {
            std::fs::create_dir(f).unwrap();
            std::fs::write(f.join("data_batch_1.bin"), b"x").unwrap();
        }
        remove_stale_staging(d).unwrap();
        assert!(mine.exists() && !dead.exists());
    }

    fn pixels(split: &Split, i: usize) -> &[u8] {
        &split.images[i * IMAGE_BYTES..(i + 1) * IMAGE_BYTES]
    }

    /// Nearest class centroid on raw pixels: far above chance (10%), below perfect.
    #[test]
    fn learnable_by_nearest_centroid() {
        let tmp = TempDir::new("syn-learn");
        write_synthetic(tmp.path(), 2000, 500, 3, false).unwrap();
        let ds = load(tmp.path(), None, false).unwrap();
        let mut centroids = vec![[0f64; IMAGE_BYTES]; 10];
        let mut counts = [0f64; 10];
        for i in 0..ds.train.len {
            let l = ds.train.labels[i] as usize;
            counts[l] += 1.0;
            for (c, &p) in centroids[l].iter_mut().zip(pixels(&ds.train, i)) {
                *c += p as f64;
            }
        }
        for (cent, n) in centroids.iter_mut().zip(counts) {
            cent.iter_mut().for_each(|c| *c /= n);
        }
        let mut correct = 0;
        for i in 0..ds.test.len {
            let img = pixels(&ds.test, i);
            let best = (0..10)
                .map(|k| {
                    let d: f64 = centroids[k].iter().zip(img).map(|(c, &p)| (c - p as f64).powi(2)).sum();
                    (d, k)
                })
                .min_by(|a, b| a.0.total_cmp(&b.0))
                .unwrap()
                .1;
            correct += (best == ds.test.labels[i] as usize) as usize;
        }
        let acc = correct as f64 / ds.test.len as f64;
        println!("nearest-centroid test accuracy {:.1}%", 100.0 * acc);
        assert!(acc > 0.30, "accuracy {acc}");
        assert!(acc < 0.99, "too easy: {acc}");
    }

    #[test]
    fn the_in_memory_split_is_seeded_balanced_and_varied() {
        let s = split(20, 3);
        assert_eq!((s.len, s.labels.len(), s.images.len()), (20, 20, 20 * IMAGE_BYTES));
        assert_eq!(s, split(20, 3));
        assert_ne!(s, split(20, 4));
        let mut counts = [0; 10];
        s.labels.iter().for_each(|&l| counts[l as usize] += 1);
        assert_eq!(counts, [2; 10]);
        assert!(s.images.iter().any(|&b| b != s.images[0]));
    }
}
