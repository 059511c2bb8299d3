//! CIFAR-10 and CIFAR-100 binary batches.
//!
//! CIFAR-10 records are 3073 bytes: a label (0..10) then 3072 pixel bytes (1024 red, 1024 green,
//! 1024 blue, rows top to bottom). CIFAR-100 records are 3074 bytes: a coarse label (0..20), a
//! fine label (0..100), then the same 3072 pixels. The pixel planes are already in the layout a
//! `Split` stores, so reading is one copy per record, and only the records a limit asks for are
//! read.

use super::{read_error, DataFile, Split};
use crate::{Error, Result};
use std::io::Read;
use std::path::Path;

/// Pixel bytes of one CIFAR image (3 planes of 32x32).
pub const IMAGE_BYTES: usize = 3 * super::PLANE;
pub const CIFAR10_RECORD: usize = 1 + IMAGE_BYTES;
pub const CIFAR100_RECORD: usize = 2 + IMAGE_BYTES;

/// Checks that `len` bytes (the size of `path`) are a non-empty whole number of records.
fn check_records(path: &Path, len: u64, record: usize) -> Result<usize> {
    if len == 0 {
        return Err(Error::data(path, "empty file"));
    }
    let record = record as u64;
    if !len.is_multiple_of(record) {
        return Err(Error::data(
            path,
            format!(
                "size {} bytes is not a whole number of {record}-byte records \
                 ({} whole records and {} bytes left over; truncated or not a CIFAR file?)",
                len,
                len / record,
                len % record
            ),
        ));
    }
    // More records than memory can index cannot be read whole anyway; the limit caps them.
    Ok(usize::try_from(len / record).unwrap_or(usize::MAX))
}

fn check_label(path: &Path, index: usize, what: &str, label: u8, classes: usize) -> Result<()> {
    if label as usize >= classes {
        return Err(Error::data(
            path,
            format!(
                "record {index}: {what} {label} is out of range \
                 (expected 0..{classes}, {classes} classes)"
            ),
        ));
    }
    Ok(())
}

/// Appends the first `limit` CIFAR-10 records of `src` (the contents of `path`, `len` bytes) to
/// `split`; the file's size is checked whole, the labels of the records read.
pub(crate) fn parse_cifar10(split: &mut Split, path: &Path, len: u64, src: &mut impl Read, limit: usize) -> Result<()> {
    let n = check_records(path, len, CIFAR10_RECORD)?.min(limit);
    super::reserve_images(path, &mut split.images, n, IMAGE_BYTES)?;
    split.labels.reserve(n);
    let mut rec = [0u8; CIFAR10_RECORD];
    for i in 0..n {
        src.read_exact(&mut rec).map_err(|e| read_error(path, e, "cannot read"))?;
        check_label(path, i, "label", rec[0], 10)?;
        split.labels.push(rec[0]);
        split.images.extend_from_slice(&rec[1..]);
    }
    split.len += n;
    Ok(())
}

/// Reads and concatenates the first `limit` images of CIFAR-10 batch files, in the order given
/// (every file must be there and whole; the images past the limit are never read).
pub fn read_cifar10(paths: &[impl AsRef<Path>], limit: usize) -> Result<Split> {
    let mut split = Split::default();
    for p in paths {
        let file = DataFile::open(p.as_ref())?;
        let left = limit - split.len;
        parse_cifar10(&mut split, p.as_ref(), file.len, &mut file.buffered(), left)?;
    }
    Ok(split)
}

/// The first `limit` CIFAR-100 records of `src` (the contents of `path`, `len` bytes), keeping
/// the coarse (20-class) or fine (100-class) labels. Both labels are checked either way: a bad
/// one means a bad record.
pub(crate) fn parse_cifar100(path: &Path, len: u64, src: &mut impl Read, coarse: bool, limit: usize) -> Result<Split> {
    let n = check_records(path, len, CIFAR100_RECORD)?.min(limit);
    let mut split = Split { images: Vec::new(), labels: Vec::with_capacity(n), len: n };
    super::reserve_images(path, &mut split.images, n, IMAGE_BYTES)?;
    let mut rec = [0u8; CIFAR100_RECORD];
    for i in 0..n {
        src.read_exact(&mut rec).map_err(|e| read_error(path, e, "cannot read"))?;
        check_label(path, i, "coarse label", rec[0], 20)?;
        check_label(path, i, "fine label", rec[1], 100)?;
        split.labels.push(if coarse { rec[0] } else { rec[1] });
        split.images.extend_from_slice(&rec[2..]);
    }
    Ok(split)
}

/// Reads the first `limit` images of one CIFAR-100 file (`train.bin` or `test.bin`).
pub fn read_cifar100(path: &Path, coarse: bool, limit: usize) -> Result<Split> {
    let file = DataFile::open(path)?;
    parse_cifar100(path, file.len, &mut file.buffered(), coarse, limit)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::testutil::{pixel, TempDir};
    use super::super::{load, DatasetKind, PLANE};
    use super::*;

    /// A CIFAR-10 record: label then the known pixel pattern of image `seed`.
    fn record10(label: u8, seed: usize) -> Vec<u8> {
        let mut r = vec![label];
        for c in 0..3 {
            for y in 0..32 {
                for x in 0..32 {
                    r.push(pixel(seed, c, y, x));
                }
            }
        }
        r
    }

    /// Five train batches with `per_batch` images each and a test batch with `test` images;
    /// train image k has label k % 10 and pattern seed k, test image k label (k+3) % 10 and
    /// seed 1000 + k.
    pub fn write_cifar10_dir(dir: &Path, per_batch: usize, test: usize) {
        for b in 0..5 {
            let mut bytes = Vec::new();
            for j in 0..per_batch {
                let k = b * per_batch + j;
                bytes.extend(record10((k % 10) as u8, k));
            }
            std::fs::write(dir.join(format!("data_batch_{}.bin", b + 1)), bytes).unwrap();
        }
        let mut bytes = Vec::new();
        for k in 0..test {
            bytes.extend(record10(((k + 3) % 10) as u8, 1000 + k));
        }
        std::fs::write(dir.join("test_batch.bin"), bytes).unwrap();
    }

    /// Train image k: coarse k % 20, fine (k * 7) % 100, seed k; test likewise with seed 500 + k.
    pub fn write_cifar100_dir(dir: &Path, train: usize, test: usize) {
        for (name, n, base) in [("train.bin", train, 0), ("test.bin", test, 500)] {
            let mut bytes = Vec::new();
            for k in 0..n {
                bytes.push((k % 20) as u8);
                bytes.extend(&record10(((k * 7) % 100) as u8, base + k));
            }
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }

    fn assert_image(split: &Split, i: usize, seed: usize) {
        let img = &split.images[i * IMAGE_BYTES..(i + 1) * IMAGE_BYTES];
        for c in 0..3 {
            for y in 0..32 {
                for x in 0..32 {
                    assert_eq!(img[c * PLANE + y * 32 + x], pixel(seed, c, y, x), "image {i} c{c} y{y} x{x}");
                }
            }
        }
    }

    #[test]
    fn cifar10_round_trip() {
        let tmp = TempDir::new("c10");
        write_cifar10_dir(tmp.path(), 3, 4);
        let ds = load(tmp.path(), None, false).unwrap();
        assert_eq!(ds.kind, DatasetKind::Cifar10);
        assert_eq!((ds.classes, ds.channels), (10, 3));
        assert_eq!(ds.train.len, 15);
        assert_eq!(ds.train.images.len(), 15 * IMAGE_BYTES);
        let want: Vec<u8> = (0..15).map(|k| (k % 10) as u8).collect();
        assert_eq!(ds.train.labels, want);
        for k in 0..15 {
            assert_image(&ds.train, k, k);
        }
        assert_eq!(ds.test.len, 4);
        assert_eq!(ds.test.labels, vec![3, 4, 5, 6]);
        for k in 0..4 {
            assert_image(&ds.test, k, 1000 + k);
        }
    }

    #[test]
    fn cifar100_round_trip_fine_and_coarse() {
        let tmp = TempDir::new("c100");
        write_cifar100_dir(tmp.path(), 25, 3);
        let fine = load(tmp.path(), None, false).unwrap();
        assert_eq!(fine.kind, DatasetKind::Cifar100);
        assert_eq!((fine.classes, fine.channels), (100, 3));
        let want: Vec<u8> = (0..25).map(|k| ((k * 7) % 100) as u8).collect();
        assert_eq!(fine.train.labels, want);
        let coarse = load(tmp.path(), Some(DatasetKind::Cifar100), true).unwrap();
        assert_eq!(coarse.classes, 20);
        let want: Vec<u8> = (0..25).map(|k| (k % 20) as u8).collect();
        assert_eq!(coarse.train.labels, want);
        assert_eq!(coarse.test.labels, vec![0, 1, 2]);
        assert_eq!(coarse.train.images, fine.train.images);
        for k in 0..25 {
            assert_image(&fine.train, k, k);
        }
        assert_image(&fine.test, 2, 502);
    }

    #[test]
    fn size_not_whole_records_is_reported() {
        let tmp = TempDir::new("c10-trunc");
        write_cifar10_dir(tmp.path(), 2, 2);
        let p = tmp.path().join("data_batch_4.bin");
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 100]).unwrap();
        let msg = load(tmp.path(), None, false).unwrap_err().to_string();
        assert!(msg.contains("data_batch_4.bin"), "{msg}");
        assert!(msg.contains(&format!("size {} bytes", 2 * 3073 - 100)), "{msg}");
        assert!(msg.contains("3073-byte records"), "{msg}");

        let tmp = TempDir::new("c100-trunc");
        write_cifar100_dir(tmp.path(), 2, 2);
        let p = tmp.path().join("test.bin");
        let mut bytes = std::fs::read(&p).unwrap();
        bytes.push(0);
        std::fs::write(&p, bytes).unwrap();
        let msg = load(tmp.path(), None, false).unwrap_err().to_string();
        assert!(msg.contains("test.bin") && msg.contains("3074-byte records"), "{msg}");
    }

    #[test]
    fn empty_and_missing_files_are_reported() {
        let tmp = TempDir::new("c10-empty");
        write_cifar10_dir(tmp.path(), 2, 2);
        std::fs::write(tmp.path().join("test_batch.bin"), b"").unwrap();
        let msg = load(tmp.path(), None, false).unwrap_err().to_string();
        assert!(msg.contains("test_batch.bin") && msg.contains("empty file"), "{msg}");
        std::fs::remove_file(tmp.path().join("data_batch_2.bin")).unwrap();
        let msg = load(tmp.path(), None, false).unwrap_err().to_string();
        assert!(msg.contains("data_batch_2.bin") && msg.contains("missing file"), "{msg}");
    }

    #[test]
    fn label_out_of_range_is_reported() {
        let tmp = TempDir::new("c10-label");
        write_cifar10_dir(tmp.path(), 3, 2);
        let p = tmp.path().join("data_batch_2.bin");
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[2 * CIFAR10_RECORD] = 10;
        std::fs::write(&p, bytes).unwrap();
        let msg = load(tmp.path(), None, false).unwrap_err().to_string();
        assert!(msg.contains("data_batch_2.bin"), "{msg}");
        assert!(msg.contains("record 2") && msg.contains("label 10"), "{msg}");
        assert!(msg.contains("10 classes"), "{msg}");

        let tmp = TempDir::new("c100-label");
        write_cifar100_dir(tmp.path(), 3, 2);
        let p = tmp.path().join("train.bin");
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[CIFAR100_RECORD + 1] = 100;
        std::fs::write(&p, &bytes).unwrap();
        let msg = load(tmp.path(), None, true).unwrap_err().to_string();
        assert!(msg.contains("train.bin") && msg.contains("record 1"), "{msg}");
        assert!(msg.contains("fine label 100") && msg.contains("100 classes"), "{msg}");
        bytes[CIFAR100_RECORD + 1] = 0;
        bytes[0] = 20;
        std::fs::write(&p, &bytes).unwrap();
        let msg = load(tmp.path(), None, false).unwrap_err().to_string();
        assert!(msg.contains("record 0") && msg.contains("coarse label 20"), "{msg}");
        assert!(msg.contains("20 classes"), "{msg}");
    }
}
