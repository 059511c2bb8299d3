//! Fashion-MNIST / MNIST in the IDX format, raw or gzip-compressed.
//!
//! Images: big-endian header `0x00000803, n, rows, cols`, then `n*rows*cols` bytes. Labels:
//! `0x00000801, n`, then `n` bytes. Only 28x28 images are accepted; each is zero-padded by 2
//! pixels on every side to 32x32 with one channel, so the rest of the crate sees the CIFAR
//! geometry. Raw files are memory-mapped; gzip is recognised by its magic bytes (whatever the
//! name) and decompressed into memory.

use super::{map_file, Split, PLANE};
use crate::{Error, Result};
use byteorder::{BigEndian, ByteOrder};
use std::borrow::Cow;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The four files, without the optional `.gz`.
pub const FILES: [&str; 4] =
    ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"];

const IMAGES_MAGIC: u32 = 0x0000_0803;
const LABELS_MAGIC: u32 = 0x0000_0801;
const SIDE: usize = 28;
/// Zero border added on each side to reach 32x32.
const PAD: usize = (32 - SIDE) / 2;

/// `dir/name`, else `dir/name.gz`; missing if neither exists.
fn find(dir: &Path, name: &str) -> Result<PathBuf> {
    let raw = dir.join(name);
    if raw.is_file() {
        return Ok(raw);
    }
    let gz = dir.join(format!("{name}.gz"));
    if gz.is_file() {
        return Ok(gz);
    }
    Err(Error::data(raw, format!("missing file (also looked for {name}.gz)")))
}

/// The file's contents: `raw` itself, or its decompression when it is gzip (recognised by
/// its magic bytes, whatever the name).
fn decode<'a>(path: &Path, raw: &'a [u8]) -> Result<Cow<'a, [u8]>> {
    if !raw.starts_with(&[0x1f, 0x8b]) {
        return Ok(Cow::Borrowed(raw));
    }
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(raw)
        .read_to_end(&mut out)
        .map_err(|e| Error::data(path, format!("cannot decompress gzip data: {e}")))?;
    Ok(Cow::Owned(out))
}

fn check_magic(path: &Path, bytes: &[u8], header: usize, magic: u32, what: &str) -> Result<()> {
    // The magic first, when there is one: it says best what the file is.
    if bytes.len() >= 4 {
        let found = BigEndian::read_u32(bytes);
        if found != magic {
            return Err(Error::data(
                path,
                format!("magic number 0x{found:08x}, expected 0x{magic:08x} (IDX {what} file)"),
            ));
        }
    }
    if bytes.len() < header {
        return Err(Error::data(
            path,
            format!("{} bytes is too short for an IDX {what} header ({header} bytes)", bytes.len()),
        ));
    }
    Ok(())
}

/// Checks that exactly `expected` data bytes follow the header.
fn check_length(path: &Path, data: usize, expected: u64, what: &str) -> Result<()> {
    let data = data as u64;
    if data < expected {
        return Err(Error::data(
            path,
            format!("truncated: the header announces {what} ({expected} bytes) but only {data} bytes follow"),
        ));
    }
    if data > expected {
        return Err(Error::data(
            path,
            format!("{} unexpected bytes after the {what} the header announces ({expected} bytes)", data - expected),
        ));
    }
    Ok(())
}

/// Reads `{prefix}-images-idx3-ubyte` and `{prefix}-labels-idx1-ubyte` (each optionally .gz)
/// from `dir`; `prefix` is `train` or `t10k`.
pub fn read_split(dir: &Path, prefix: &str) -> Result<Split> {
    let images_path = find(dir, &format!("{prefix}-images-idx3-ubyte"))?;
    let labels_path = find(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
    let images = map_file(&images_path)?;
    let labels = map_file(&labels_path)?;
    parse_split(&images_path, &images, &labels_path, &labels)
}

/// The split held by an images file and a labels file (raw or gzip contents, with their paths
/// for messages): checks headers, sizes and labels, and pads the images to 32x32.
pub(crate) fn parse_split(
    images_path: &Path,
    images_raw: &[u8],
    labels_path: &Path,
    labels_raw: &[u8],
) -> Result<Split> {
    let images = decode(images_path, images_raw)?;
    check_magic(images_path, &images, 16, IMAGES_MAGIC, "images")?;
    let n = BigEndian::read_u32(&images[4..]) as usize;
    let rows = BigEndian::read_u32(&images[8..]) as usize;
    let cols = BigEndian::read_u32(&images[12..]) as usize;
    if rows != SIDE || cols != SIDE {
        return Err(Error::data(images_path, format!("images are {rows}x{cols}, expected {SIDE}x{SIDE}")));
    }
    let what = format!("{n} images of {SIDE}x{SIDE}");
    check_length(images_path, images.len() - 16, n as u64 * (SIDE * SIDE) as u64, &what)?;

    let labels = decode(labels_path, labels_raw)?;
    check_magic(labels_path, &labels, 8, LABELS_MAGIC, "labels")?;
    let nl = BigEndian::read_u32(&labels[4..]) as usize;
    check_length(labels_path, labels.len() - 8, nl as u64, &format!("{nl} labels"))?;
    if nl != n {
        return Err(Error::data(
            labels_path,
            format!("{nl} labels, but {} holds {n} images (expected one label per image)", images_path.display()),
        ));
    }
    let labels = &labels[8..];
    if let Some(i) = labels.iter().position(|&l| l >= 10) {
        return Err(Error::data(
            labels_path,
            format!("record {i}: label {} is out of range (expected 0..10, 10 classes)", labels[i]),
        ));
    }

    // Zero-pad each 28x28 image into the middle of a 32x32 plane.
    let mut out = vec![0u8; n * PLANE];
    for (dst, src) in out.chunks_exact_mut(PLANE).zip(images[16..].chunks_exact(SIDE * SIDE)) {
        for (y, row) in src.chunks_exact(SIDE).enumerate() {
            let at = (y + PAD) * 32 + PAD;
            dst[at..at + SIDE].copy_from_slice(row);
        }
    }
    Ok(Split { images: out, labels: labels.to_vec(), len: n })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::testutil::TempDir;
    use super::super::{load, DatasetKind};
    use super::*;
    use std::io::Write;

    fn grey(seed: usize, y: usize, x: usize) -> u8 {
        // Never 0, so padding (0) is told apart from image pixels.
        (1 + (seed * 13 + y * 28 + x) % 255) as u8
    }

    pub fn idx_images(n: usize, seed: usize, rows: u32, cols: u32) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend(IMAGES_MAGIC.to_be_bytes());
        b.extend((n as u32).to_be_bytes());
        b.extend(rows.to_be_bytes());
        b.extend(cols.to_be_bytes());
        for k in 0..n {
            for y in 0..rows as usize {
                for x in 0..cols as usize {
                    b.push(grey(seed + k, y, x));
                }
            }
        }
        b
    }

    pub fn idx_labels(labels: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend(LABELS_MAGIC.to_be_bytes());
        b.extend((labels.len() as u32).to_be_bytes());
        b.extend(labels);
        b
    }

    fn write(dir: &Path, name: &str, bytes: &[u8], gz: bool) {
        if gz {
            let f = std::fs::File::create(dir.join(format!("{name}.gz"))).unwrap();
            let mut e = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
            e.write_all(bytes).unwrap();
            e.finish().unwrap();
        } else {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }

    /// Train image k has pattern seed k and label k % 10; test image k seed 100 + k and label
    /// (k + 5) % 10.
    pub fn write_idx_dir(dir: &Path, train: usize, test: usize, gz: bool) {
        let tl: Vec<u8> = (0..train).map(|k| (k % 10) as u8).collect();
        let sl: Vec<u8> = (0..test).map(|k| ((k + 5) % 10) as u8).collect();
        write(dir, FILES[0], &idx_images(train, 0, 28, 28), gz);
        write(dir, FILES[1], &idx_labels(&tl), gz);
        write(dir, FILES[2], &idx_images(test, 100, 28, 28), gz);
        write(dir, FILES[3], &idx_labels(&sl), gz);
    }

    fn check_padded(split: &Split, i: usize, seed: usize) {
        let img = &split.images[i * PLANE..(i + 1) * PLANE];
        for y in 0..32 {
            for x in 0..32 {
                let inside = (2..30).contains(&y) && (2..30).contains(&x);
                let want = if inside { grey(seed, y - 2, x - 2) } else { 0 };
                assert_eq!(img[y * 32 + x], want, "image {i} y{y} x{x}");
            }
        }
    }

    #[test]
    fn raw_and_gz_round_trip_with_padding() {
        for gz in [false, true] {
            let tmp = TempDir::new("idx");
            write_idx_dir(tmp.path(), 12, 3, gz);
            let ds = load(tmp.path(), None, false).unwrap();
            assert_eq!(ds.kind, DatasetKind::FashionMnist);
            assert_eq!((ds.classes, ds.channels), (10, 1));
            assert_eq!(ds.train.len, 12);
            assert_eq!(ds.train.images.len(), 12 * PLANE);
            let want: Vec<u8> = (0..12).map(|k| (k % 10) as u8).collect();
            assert_eq!(ds.train.labels, want);
            for k in 0..12 {
                check_padded(&ds.train, k, k);
            }
            assert_eq!(ds.test.labels, vec![5, 6, 7]);
            for k in 0..3 {
                check_padded(&ds.test, k, 100 + k);
            }
        }
    }

    #[test]
    fn wrong_magic_is_reported() {
        let tmp = TempDir::new("idx-magic");
        write_idx_dir(tmp.path(), 2, 2, false);
        // Labels where images are expected.
        write(tmp.path(), FILES[0], &idx_labels(&[1, 2]), false);
        let msg = load(tmp.path(), None, false).unwrap_err().to_string();
        assert!(msg.contains("train-images-idx3-ubyte"), "{msg}");
        assert!(msg.contains("magic number 0x00000801, expected 0x00000803"), "{msg}");
        // Same through gzip.
        let tmp = TempDir::new("idx-magic-gz");
        write_idx_dir(tmp.path(), 2, 2, true);
        write(tmp.path(), FILES[3], &idx_images(2, 0, 28, 28), true);
        let msg = load(tmp.path(), None, false).unwrap_err().to_string();
        assert!(msg.contains("t10k-labels-idx1-ubyte.gz"), "{msg}");
        assert!(msg.contains("expected 0x00000801"), "{msg}");
    }

    #[test]
    fn wrong_dims_are_reported() {
        let tmp = TempDir::new("idx-dims");
        write_idx_dir(tmp.path(), 2, 2, false);
        write(tmp.path(), FILES[2], &idx_images(2, 0, 32, 28), false);
        let msg = load(tmp.path(), None, false).unwrap_err().to_string();
        assert!(msg.contains("t10k-images-idx3-ubyte"), "{msg}");
        assert!(msg.contains("32x28") && msg.contains("expected 28x28"), "{msg}");
    }

    #[test]
    fn truncated_files_are_reported() {
        let tmp = TempDir::new("idx-trunc");
        write_idx_dir(tmp.path(), 3, 2, false);
        let bytes = idx_images(3, 0, 28, 28);
        write(tmp.path(), FILES[0], &bytes[..bytes.len() - 5], false);
        let msg = load(tmp.path(), None, false).unwrap_err().to_string();
        assert!(msg.contains("train-images-idx3-ubyte"), "{msg}");
        assert!(msg.contains("truncated"), "{msg}");
        assert!(msg.contains("3 images of 28x28 (2352 bytes)"), "{msg}");
        assert!(msg.contains("2347 bytes follow"), "{msg}");

        write(tmp.path(), FILES[0], &bytes[..10], false);
        let msg = load(tmp.path(), None, false).unwrap_err().to_string();
        assert!(msg.contains("too short") && msg.contains("16 bytes"), "{msg}");

        write_idx_dir(tmp.path(), 3, 2, false);
        let labels = idx_labels(&[1, 2, 3]);
        write(tmp.path(), FILES[1], &labels[..9], false);
        let msg = load(tmp.path(), None, false).unwrap_err().to_string();
        assert!(msg.contains("train-labels-idx1-ubyte") && msg.contains("truncated"), "{msg}");
        assert!(msg.contains("3 labels (3 bytes)"), "{msg}");

        // A cut gzip stream is reported as such.
        let tmp = TempDir::new("idx-trunc-gz");
        write_idx_dir(tmp.path(), 3, 2, true);
        let p = tmp.path().join(format!("{}.gz", FILES[0]));
        let gz = std::fs::read(&p).unwrap();
        std::fs::write(&p, &gz[..gz.len() / 2]).unwrap();
        let msg = load(tmp.path(), None, false).unwrap_err().to_string();
        assert!(msg.contains("train-images-idx3-ubyte.gz"), "{msg}");
        assert!(msg.contains("gzip") || msg.contains("truncated"), "{msg}");
    }

    #[test]
    fn count_mismatch_and_bad_labels_are_reported() {
        let tmp = TempDir::new("idx-count");
        write_idx_dir(tmp.path(), 3, 2, false);
        write(tmp.path(), FILES[1], &idx_labels(&[1, 2]), false);
        let msg = load(tmp.path(), None, false).unwrap_err().to_string();
        assert!(msg.contains("train-labels-idx1-ubyte"), "{msg}");
        assert!(msg.contains("2 labels") && msg.contains("holds 3 images"), "{msg}");
        assert!(msg.contains("train-images-idx3-ubyte"), "{msg}");

        write(tmp.path(), FILES[1], &idx_labels(&[1, 12, 3]), false);
        let msg = load(tmp.path(), None, false).unwrap_err().to_string();
        assert!(msg.contains("record 1") && msg.contains("label 12"), "{msg}");
        assert!(msg.contains("10 classes"), "{msg}");
    }

    #[test]
    fn missing_file_names_both_spellings() {
        let tmp = TempDir::new("idx-missing");
        write_idx_dir(tmp.path(), 3, 2, false);
        std::fs::remove_file(tmp.path().join(FILES[3])).unwrap();
        let msg = load(tmp.path(), None, false).unwrap_err().to_string();
        assert!(msg.contains("t10k-labels-idx1-ubyte") && msg.contains(".gz"), "{msg}");
        assert!(msg.contains("missing"), "{msg}");
    }
}
