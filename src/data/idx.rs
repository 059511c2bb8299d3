//! Fashion-MNIST / MNIST in the IDX format, raw or gzip-compressed.
//!
//! Images: big-endian header `0x00000803, n, rows, cols`, then `n*rows*cols` bytes. Labels:
//! `0x00000801, n`, then `n` bytes. Only 28x28 images are accepted; each is zero-padded by 2
//! pixels on every side to 32x32 with one channel, so the rest of the crate sees the CIFAR
//! geometry. Files are read as streams (never memory-mapped); gzip is recognised by its magic bytes (whatever the
//! name) and decompressed as a stream, image by image, never past what the header announces.
//! Only the images a limit asks for are kept (and their labels checked).

use super::{read_error, DataFile, Split, PLANE};
use crate::{Error, Result};
use byteorder::{BigEndian, ByteOrder};
use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};

/// The four files, without the optional `.gz`.
pub const FILES: [&str; 4] =
    ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"];

const IMAGES_MAGIC: u32 = 0x0000_0803;
const LABELS_MAGIC: u32 = 0x0000_0801;
const SIDE: usize = 28;
/// Zero border added on each side to reach 32x32.
const PAD: usize = (32 - SIDE) / 2;

/// `dir/name`, else `dir/name.gz`; missing if neither exists. Anything at the path counts, so
/// that a folder or a FIFO of that name is reported as such by [`DataFile::open`].
fn find(dir: &Path, name: &str) -> Result<PathBuf> {
    let raw = dir.join(name);
    if raw.exists() {
        return Ok(raw);
    }
    let gz = dir.join(format!("{name}.gz"));
    if gz.exists() {
        return Ok(gz);
    }
    Err(Error::data(raw, format!("missing file (also looked for {name}.gz)")))
}

/// Bytes past the announced data read to say how many there are (when there are more, the
/// message says "at least").
const EXTRA_PROBE: u64 = 1 << 20;

/// A file's contents as a stream: the bytes themselves, or their decompression when they are
/// gzip (recognised by the magic bytes, whatever the name). Reading stops at what the header
/// announces, so a small file that inflates to gigabytes costs no more than its header says.
/// A gzip file may hold several members one after another (`gzip -c a >> f` makes one): the
/// stream is all of them, as `zcat` reads it, and bytes after the last that are not another
/// member are refused rather than ignored.
struct Body<'a> {
    path: &'a Path,
    reader: Box<dyn Read + 'a>,
    /// The file's length when it is not compressed: its size checks need no reading.
    raw_len: Option<u64>,
}

impl<'a> Body<'a> {
    /// The stream of `src`, the `len` bytes of `path`.
    fn new(path: &'a Path, mut src: impl BufRead + 'a, len: u64) -> Result<Body<'a>> {
        let head = src.fill_buf().map_err(|e| read_error(path, e, "cannot read"))?;
        if head.starts_with(&[0x1f, 0x8b]) {
            Ok(Body { path, reader: Box::new(flate2::bufread::MultiGzDecoder::new(src)), raw_len: None })
        } else {
            Ok(Body { path, reader: Box::new(src), raw_len: Some(len) })
        }
    }

    /// The error for a failed read of the stream.
    fn error(&self, e: std::io::Error) -> Error {
        read_error(self.path, e, if self.raw_len.is_some() { "cannot read" } else { "cannot decompress gzip data" })
    }

    /// Fills as much of `buf` as the stream holds; returns how much that was.
    fn fill(&mut self, buf: &mut [u8]) -> Result<usize> {
        let mut got = 0;
        while got < buf.len() {
            match self.reader.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(k) => got += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.error(e)),
            }
        }
        Ok(got)
    }

    /// Reads and discards up to `n` bytes; returns how many there were.
    fn skip(&mut self, n: u64) -> Result<u64> {
        std::io::copy(&mut (&mut self.reader).take(n), &mut std::io::sink()).map_err(|e| self.error(e))
    }

    /// The error for a stream that ended after `read` of the `expected` data bytes.
    fn truncated(&self, header: u64, read: u64, expected: u64, what: &str) -> Error {
        truncated(self.path, self.raw_len.map_or(read, |len| len - header), expected, what)
    }

    /// Checks that `expected` data bytes follow a `header`-byte header, of which `read` have
    /// been read. With `whole`, every byte is checked (reading what is left of a compressed
    /// stream); without it, only an uncompressed file's size is, so that a limited read of a
    /// compressed file stops at what it needs.
    fn check_rest(&mut self, header: u64, read: u64, expected: u64, what: &str, whole: bool) -> Result<()> {
        if let Some(len) = self.raw_len {
            return check_length(self.path, len - header, expected, what);
        }
        if !whole {
            return Ok(());
        }
        let data = read + self.skip(expected - read)?;
        check_length(self.path, data, expected, what)?;
        match self.skip(EXTRA_PROBE)? {
            0 => Ok(()),
            extra => {
                let at_least = if extra == EXTRA_PROBE { "at least " } else { "" };
                Err(Error::data(
                    self.path,
                    format!(
                        "{at_least}{extra} unexpected bytes after the {what} the header announces ({expected} bytes)"
                    ),
                ))
            }
        }
    }
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
fn check_length(path: &Path, data: u64, expected: u64, what: &str) -> Result<()> {
    if data < expected {
        return Err(truncated(path, data, expected, what));
    }
    if data > expected {
        return Err(Error::data(
            path,
            format!("{} unexpected bytes after the {what} the header announces ({expected} bytes)", data - expected),
        ));
    }
    Ok(())
}

fn truncated(path: &Path, data: u64, expected: u64, what: &str) -> Error {
    Error::data(path, format!("truncated: the header announces {what} ({expected} bytes) but only {data} bytes follow"))
}

/// Reads `{prefix}-images-idx3-ubyte` and `{prefix}-labels-idx1-ubyte` (each optionally .gz)
/// from `dir`, at most `limit` images; `prefix` is `train` or `t10k`.
pub fn read_split(dir: &Path, prefix: &str, limit: usize) -> Result<Split> {
    let images_path = find(dir, &format!("{prefix}-images-idx3-ubyte"))?;
    let labels_path = find(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
    let images = DataFile::open(&images_path)?;
    let labels = DataFile::open(&labels_path)?;
    let (images_len, labels_len) = (images.len, labels.len);
    parse_split((&images_path, images_len, images.buffered()), (&labels_path, labels_len, labels.buffered()), limit)
}

/// The first `limit` images of the split held by an images file and a labels file (each its
/// path, its length in bytes and its raw or gzip contents), padded to 32x32: checks headers,
/// sizes and the labels read.
pub(crate) fn parse_split(
    (images_path, images_len, images_src): (&Path, u64, impl BufRead),
    (labels_path, labels_len, labels_src): (&Path, u64, impl BufRead),
    limit: usize,
) -> Result<Split> {
    let mut body = Body::new(images_path, images_src, images_len)?;
    let mut head = [0u8; 16];
    let got = body.fill(&mut head)?;
    check_magic(images_path, &head[..got], 16, IMAGES_MAGIC, "images")?;
    let n = BigEndian::read_u32(&head[4..]) as usize;
    let rows = BigEndian::read_u32(&head[8..]) as usize;
    let cols = BigEndian::read_u32(&head[12..]) as usize;
    if rows != SIDE || cols != SIDE {
        return Err(Error::data(images_path, format!("images are {rows}x{cols}, expected {SIDE}x{SIDE}")));
    }
    if n == 0 {
        return Err(Error::data(images_path, "the header announces no images (expected at least one)"));
    }
    let what = format!("{n} images of {SIDE}x{SIDE}");
    let expected = n as u64 * (SIDE * SIDE) as u64;
    let keep = n.min(limit);
    let mut out = Vec::new();
    // An uncompressed file's size is known: check it before reserving for its images. A
    // compressed one's is not: memory then grows with the images actually read.
    if let Some(len) = body.raw_len {
        check_length(images_path, len - 16, expected, &what)?;
        super::reserve_images(images_path, &mut out, keep, PLANE)?;
    }
    let mut image = [0u8; SIDE * SIDE];
    for i in 0..keep {
        let got = body.fill(&mut image)?;
        if got < image.len() {
            return Err(body.truncated(16, (i * image.len() + got) as u64, expected, &what));
        }
        if crate::oom::fallible(|| out.try_reserve(PLANE)).is_err() {
            super::reserve_images(images_path, &mut out, keep, PLANE)?;
        }
        // Zero-pad the 28x28 image into the middle of a 32x32 plane.
        let at = out.len();
        out.resize(at + PLANE, 0);
        for (y, row) in image.chunks_exact(SIDE).enumerate() {
            let to = at + (y + PAD) * 32 + PAD;
            out[to..to + SIDE].copy_from_slice(row);
        }
    }
    body.check_rest(16, (keep * SIDE * SIDE) as u64, expected, &what, keep == n)?;

    let mut body = Body::new(labels_path, labels_src, labels_len)?;
    let mut head = [0u8; 8];
    let got = body.fill(&mut head)?;
    check_magic(labels_path, &head[..got], 8, LABELS_MAGIC, "labels")?;
    let nl = BigEndian::read_u32(&head[4..]) as usize;
    let what = format!("{nl} labels");
    let mut labels = vec![0u8; nl.min(keep)];
    let got = body.fill(&mut labels)?;
    if got < labels.len() {
        return Err(body.truncated(8, got as u64, nl as u64, &what));
    }
    body.check_rest(8, got as u64, nl as u64, &what, nl <= keep)?;
    if nl != n {
        return Err(Error::data(
            labels_path,
            format!("{nl} labels, but {} holds {n} images (expected one label per image)", images_path.display()),
        ));
    }
    if let Some(i) = labels.iter().position(|&l| l >= 10) {
        return Err(Error::data(
            labels_path,
            format!("record {i}: label {} is out of range (expected 0..10, 10 classes)", labels[i]),
        ));
    }
    Ok(Split { images: out, labels, len: keep })
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

    /// A labels file gzipped in two members (as `gzip >>` appends) reads as their
    /// concatenation; a third member with more bytes than the header announces, or bytes after
    /// the last member that are not gzip, are refused naming the file.
    #[test]
    fn gzip_files_of_several_members_are_read_whole() {
        let gzip = |bytes: &[u8]| {
            let mut e = flate2::write::GzEncoder::new(vec![], flate2::Compression::fast());
            e.write_all(bytes).unwrap();
            e.finish().unwrap()
        };
        let tmp = TempDir::new("idx-members");
        write_idx_dir(tmp.path(), 3, 5, true);
        let labels = idx_labels(&[1, 2, 3, 4, 5]);
        let path = tmp.path().join(format!("{}.gz", FILES[3]));
        std::fs::write(&path, [gzip(&labels[..6]), gzip(&labels[6..])].concat()).unwrap();
        assert_eq!(load(tmp.path(), None, false).unwrap().test.labels, [1, 2, 3, 4, 5]);
        std::fs::write(&path, [gzip(&labels[..6]), gzip(&labels[6..]), gzip(b"EXTRA")].concat()).unwrap();
        let msg = load(tmp.path(), None, false).unwrap_err().to_string();
        assert!(msg.contains(FILES[3]) && msg.contains("5 unexpected bytes"), "{msg}");
        std::fs::write(&path, [gzip(&labels), b"trailing".to_vec()].concat()).unwrap();
        let msg = load(tmp.path(), None, false).unwrap_err().to_string();
        assert!(msg.contains(FILES[3]) && msg.contains("gzip"), "{msg}");
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

    /// A small gzip file that inflates far past what its header announces is read only up to
    /// that: the message says so without inflating the rest.
    #[test]
    fn a_gzip_bomb_stops_at_the_announced_size() {
        let tmp = TempDir::new("idx-bomb");
        write_idx_dir(tmp.path(), 2, 2, true);
        let mut bytes = idx_images(2, 0, 28, 28);
        bytes.resize(bytes.len() + (128 << 20), 0);
        write(tmp.path(), FILES[0], &bytes, true);
        let size = std::fs::metadata(tmp.path().join(format!("{}.gz", FILES[0]))).unwrap().len();
        assert!(size < 1 << 20, "{size}");
        let t0 = std::time::Instant::now();
        let msg = load(tmp.path(), None, false).unwrap_err().to_string();
        assert!(msg.contains("at least 1048576 unexpected bytes after the 2 images"), "{msg}");
        assert!(t0.elapsed().as_secs_f64() < 0.2, "{:?}", t0.elapsed());
    }

    /// A header announcing billions of images: memory grows only with the images actually
    /// there (a raw file's size is checked first), so the file is reported as truncated; with a
    /// limit it is read only as far as the limit.
    #[test]
    fn an_absurd_image_count_costs_no_memory() {
        for gz in [true, false] {
            let tmp = TempDir::new("idx-huge");
            write_idx_dir(tmp.path(), 2, 2, gz);
            let mut bytes = idx_images(2, 0, 28, 28);
            bytes[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
            write(tmp.path(), FILES[0], &bytes, gz);
            let msg = load(tmp.path(), None, false).unwrap_err().to_string();
            assert!(msg.contains("truncated") && msg.contains("4294967295 images"), "{msg}");
            let limits = super::super::Limits { train: Some(3), test: None };
            let msg = super::super::load_limited(tmp.path(), None, false, limits).unwrap_err().to_string();
            assert!(msg.contains("truncated") && msg.contains("4294967295 images"), "{msg}");
        }
        // Within the limit a compressed file is fine as far as it is read.
        let tmp = TempDir::new("idx-huge-limit");
        write_idx_dir(tmp.path(), 2, 2, true);
        let mut bytes = idx_images(2, 0, 28, 28);
        bytes[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
        write(tmp.path(), FILES[0], &bytes, true);
        let limits = super::super::Limits { train: Some(2), test: None };
        let msg = super::super::load_limited(tmp.path(), None, false, limits).unwrap_err().to_string();
        assert!(msg.contains("2 labels, but") && msg.contains("4294967295 images"), "{msg}");
    }

    #[test]
    fn memory_refused_is_named_with_the_limit_flags() {
        let mut v = Vec::new();
        let msg = super::super::reserve_images(Path::new("big.bin"), &mut v, 1 << 40, 3072).unwrap_err().to_string();
        assert!(msg.contains("big.bin") && msg.contains("cannot allocate 3.0 PiB"), "{msg}");
        assert!(msg.contains("--limit-train or --limit-test"), "{msg}");
        let msg = super::super::reserve_images(Path::new("big.bin"), &mut v, usize::MAX, 2).unwrap_err().to_string();
        assert!(msg.contains("more than 16 EiB"), "{msg}");
    }

    #[test]
    fn a_split_without_images_is_refused() {
        let tmp = TempDir::new("idx-none");
        write_idx_dir(tmp.path(), 2, 2, false);
        write(tmp.path(), FILES[2], &idx_images(0, 0, 28, 28), false);
        write(tmp.path(), FILES[3], &idx_labels(&[]), false);
        let msg = load(tmp.path(), None, false).unwrap_err().to_string();
        assert!(msg.contains("t10k-images-idx3-ubyte") && msg.contains("no images"), "{msg}");
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
