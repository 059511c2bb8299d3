//! The dataset layer: finds out which dataset a folder holds, reads it into memory and hands
//! out normalised, optionally augmented batches.
//!
//! Every dataset is stored the same way once loaded: per image, channel planes of 32x32 bytes
//! (CIFAR's own order), so the loader and the model see one format. Fashion-MNIST's 28x28 grey
//! images are zero-padded to 32x32 with one channel. Readers check every byte they depend on
//! and report bad files as `Error::Data` naming the file; nothing here panics on bad input.
//!
//! - `cifar`: CIFAR-10 / CIFAR-100 binary batches.
//! - `idx`: Fashion-MNIST / MNIST IDX files, raw or gzip.
//! - `loader`: normalisation statistics, epoch shuffles, batch filling with augmentation.
//! - `synth`: a small synthetic dataset written in the CIFAR-10 format, for tests and demos.

pub mod cifar;
pub mod idx;
pub mod loader;
pub mod synth;

use crate::io::NotAFile;
use crate::{Error, Result};
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Bytes in one 32x32 channel plane.
pub const PLANE: usize = 32 * 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatasetKind {
    Cifar10,
    Cifar100,
    FashionMnist,
}

impl FromStr for DatasetKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<DatasetKind> {
        match s {
            "cifar10" => Ok(DatasetKind::Cifar10),
            "cifar100" => Ok(DatasetKind::Cifar100),
            // MNIST uses the same IDX files as Fashion-MNIST; one reader serves both.
            "fashion-mnist" | "mnist" => Ok(DatasetKind::FashionMnist),
            _ => Err(Error::flag("--dataset", s, "cifar10, cifar100 or fashion-mnist")),
        }
    }
}

impl fmt::Display for DatasetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DatasetKind::Cifar10 => "cifar10",
            DatasetKind::Cifar100 => "cifar100",
            DatasetKind::FashionMnist => "fashion-mnist",
        })
    }
}

/// One split (train or test): `len` images of `C x 32 x 32` bytes each, channel planes in
/// order, and one label byte per image.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Split {
    pub images: Vec<u8>,
    pub labels: Vec<u8>,
    pub len: usize,
}

/// How many images of each split to read (`None`: all of them), as `--limit-train` and
/// `--limit-test` say.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    pub train: Option<usize>,
    pub test: Option<usize>,
}

#[derive(Clone, Debug)]
pub struct Dataset {
    pub kind: DatasetKind,
    pub classes: usize,
    pub channels: usize,
    pub train: Split,
    pub test: Split,
}

/// The five training batches, then the test batch.
pub(crate) const CIFAR10_FILES: [&str; 6] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
    "test_batch.bin",
];
const CIFAR100_FILES: [&str; 2] = ["train.bin", "test.bin"];

/// What each format needs, for error messages.
fn expected_files() -> String {
    format!(
        "expected CIFAR-10 ({}), CIFAR-100 ({}) or Fashion-MNIST/MNIST ({}, each optionally \
         .gz); if the files sit in a subfolder such as cifar-10-batches-bin, point at it",
        CIFAR10_FILES.join(", "),
        CIFAR100_FILES.join(", "),
        idx::FILES.join(", "),
    )
}

/// Every path in `dir` that some format reads (whether or not it exists): what a command
/// reading `dir` must never write over.
pub fn data_file_paths(dir: &Path) -> Vec<PathBuf> {
    let idx = idx::FILES.iter().flat_map(|f| [f.to_string(), format!("{f}.gz")]);
    let names = CIFAR10_FILES.iter().chain(&CIFAR100_FILES).map(|f| f.to_string()).chain(idx);
    names.map(|f| dir.join(f)).collect()
}

/// Which dataset `dir` holds, from its file names. Any one file of a format is enough to pick
/// it, so that a folder missing some files gets "missing file X" from `load` rather than a vague
/// "unrecognised folder".
pub fn detect(dir: &Path) -> Result<DatasetKind> {
    check_folder(dir)?;
    // Anything at a data file's path counts: a folder or FIFO there is then named by `load`.
    let has = |name: &str| dir.join(name).exists();
    let found: Vec<DatasetKind> = [
        (DatasetKind::Cifar10, CIFAR10_FILES.iter().any(|f| has(f))),
        (DatasetKind::Cifar100, CIFAR100_FILES.iter().any(|f| has(f))),
        (DatasetKind::FashionMnist, idx::FILES.iter().any(|f| has(f) || has(&format!("{f}.gz")))),
    ]
    .into_iter()
    .filter_map(|(kind, present)| present.then_some(kind))
    .collect();
    match found[..] {
        [kind] => Ok(kind),
        [] => Err(Error::data(dir, format!("no recognised dataset files; {}", expected_files()))),
        _ => {
            // Picking one would train on data the user may not have meant.
            let names: Vec<String> = found.iter().map(|k| k.to_string()).collect();
            let msg = format!("holds files of {}: say which with --dataset", names.join(" and "));
            Err(Error::data(dir, msg))
        }
    }
}

/// `dir` is a folder that can be listed; otherwise what it is instead.
fn check_folder(dir: &Path) -> Result<()> {
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(Error::data(dir, format!("dataset folder not found; {}", expected_files())))
        }
        Err(e) => Err(Error::data(dir, format!("cannot read the dataset folder: {e}"))),
        Ok(m) if !m.is_dir() => Err(Error::data(dir, "not a folder: --data names the folder holding the data files")),
        Ok(_) => std::fs::read_dir(dir)
            .map(|_| ())
            .map_err(|e| Error::data(dir, format!("cannot read the dataset folder: {e}"))),
    }
}

/// Loads the dataset in `dir` (detected from its file names when `kind` is `None`). `coarse`
/// selects CIFAR-100's 20 superclass labels instead of the 100 fine ones.
pub fn load(dir: &Path, kind: Option<DatasetKind>, coarse: bool) -> Result<Dataset> {
    load_limited(dir, kind, coarse, Limits::default())
}

/// [`load`], reading only the first images of each split that `limits` allows: the rest of a
/// file is never read, so a limit makes any file size usable.
pub fn load_limited(dir: &Path, kind: Option<DatasetKind>, coarse: bool, limits: Limits) -> Result<Dataset> {
    let (train_limit, test_limit) = (limits.train.unwrap_or(usize::MAX), limits.test.unwrap_or(usize::MAX));
    check_folder(dir)?;
    let kind = match kind {
        Some(k) => k,
        None => detect(dir)?,
    };
    if coarse && kind != DatasetKind::Cifar100 {
        return Err(Error::Msg(format!(
            "coarse (superclass) labels exist only for cifar100, but {} holds {kind}",
            dir.display()
        )));
    }
    // A limit of 0 (evaluation without BN recalibration) needs no training files at all.
    let read = |limit: usize, split: &dyn Fn(usize) -> Result<Split>| match limit {
        0 => Ok(Split::default()),
        _ => split(limit),
    };
    match kind {
        DatasetKind::Cifar10 => {
            let train_paths: Vec<_> = CIFAR10_FILES[..5].iter().map(|f| dir.join(f)).collect();
            let train = read(train_limit, &|l| cifar::read_cifar10(&train_paths, l))?;
            let test = read(test_limit, &|l| cifar::read_cifar10(&[dir.join(CIFAR10_FILES[5])], l))?;
            Ok(Dataset { kind, classes: 10, channels: 3, train, test })
        }
        DatasetKind::Cifar100 => {
            let train = read(train_limit, &|l| cifar::read_cifar100(&dir.join("train.bin"), coarse, l))?;
            let test = read(test_limit, &|l| cifar::read_cifar100(&dir.join("test.bin"), coarse, l))?;
            Ok(Dataset { kind, classes: if coarse { 20 } else { 100 }, channels: 3, train, test })
        }
        DatasetKind::FashionMnist => {
            let train = read(train_limit, &|l| idx::read_split(dir, "train", l))?;
            let test = read(test_limit, &|l| idx::read_split(dir, "t10k", l))?;
            Ok(Dataset { kind, classes: 10, channels: 1, train, test })
        }
    }
}

/// A data file opened for reading, with its length when opened. Missing, empty and non-regular
/// files are reported here: "missing" should read as such, not as an OS error; opening a FIFO
/// would wait forever for a writer, and a folder or a device (say `/dev/zero`) is not a data
/// file whatever its size reads as.
///
/// It is read, not memory-mapped: a mapped file that shrinks under the reader (another process
/// truncating it) kills the process with SIGBUS, while a read just ends early. Reading stops at
/// the length taken when opened, and ending before it is an error naming the file.
pub(crate) struct DataFile {
    pub len: u64,
    file: File,
    read: u64,
}

/// Why a [`DataFile`] read failed when the file shrank (carried inside an `io::Error`).
#[derive(Debug)]
struct Shrank {
    len: u64,
    read: u64,
}

impl fmt::Display for Shrank {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the file shrank while it was read ({} bytes when opened, it ended after {}): another process changed it",
            self.len, self.read
        )
    }
}

impl std::error::Error for Shrank {}

impl DataFile {
    pub fn open(path: &Path) -> Result<DataFile> {
        match crate::io::regular_file_len(path, "data file") {
            Ok(_) => {}
            Err(NotAFile::Missing) => return Err(Error::data(path, "missing file")),
            Err(NotAFile::Other(msg)) => return Err(Error::data(path, msg)),
        }
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        if len == 0 {
            return Err(Error::data(path, "empty file"));
        }
        Ok(DataFile { len, file, read: 0 })
    }

    /// The file behind a buffer of `READ_BUFFER` bytes, for readers that take small pieces.
    pub fn buffered(self) -> std::io::BufReader<DataFile> {
        std::io::BufReader::with_capacity(READ_BUFFER, self)
    }
}

/// Bytes read from a data file at a time.
const READ_BUFFER: usize = 1 << 20;

impl Read for DataFile {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.len - self.read;
        if left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let got = self.file.read(&mut buf[..want])?;
        if got == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                Shrank { len: self.len, read: self.read },
            ));
        }
        self.read += got as u64;
        Ok(got)
    }
}

/// The error for a failed read of `path`: a shrunken file said as such, anything else after
/// `what` (e.g. "cannot read").
pub(crate) fn read_error(path: &Path, e: std::io::Error, what: &str) -> Error {
    match e.get_ref().and_then(|inner| inner.downcast_ref::<Shrank>()) {
        Some(shrank) => Error::data(path, shrank.to_string()),
        None => Error::data(path, format!("{what}: {e}")),
    }
}

/// Reserves room in `images` for `count` more images of `each` bytes, or says that memory is
/// short, naming the file and the flags that read fewer.
pub(crate) fn reserve_images(path: &Path, images: &mut Vec<u8>, count: usize, each: usize) -> Result<()> {
    let bytes = count.checked_mul(each);
    let reserved = bytes.map(|b| crate::oom::fallible(|| images.try_reserve_exact(b)));
    if matches!(reserved, Some(Ok(()))) {
        return Ok(());
    }
    let size = crate::ir::config::size_text(bytes.map(|b| b as u64));
    Err(Error::data(
        path,
        format!("cannot allocate {size} for its {count} images; read fewer with --limit-train or --limit-test"),
    ))
}

#[cfg(test)]
pub(crate) mod testutil {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh folder under the system temp dir, removed when dropped.
    pub struct TempDir(pub PathBuf);

    impl TempDir {
        pub fn new(tag: &str) -> TempDir {
            static COUNT: AtomicUsize = AtomicUsize::new(0);
            let nanos =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
            let dir = std::env::temp_dir().join(format!(
                "sliceout-data-{tag}-{}-{}-{nanos}",
                std::process::id(),
                COUNT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A CIFAR image whose pixel (c, y, x) is a known function of (seed, c, y, x).
    pub fn pixel(seed: usize, c: usize, y: usize, x: usize) -> u8 {
        ((seed * 31 + c * 101 + y * 7 + x * 3) % 256) as u8
    }
}

#[cfg(test)]
mod tests;
