//! Checkpoints: the persistent state of a run (model configuration, optimizer step and epoch,
//! parameters, momentum and BN running statistics, RNG streams, data normalisation, free-form
//! metadata) to and from one file in our own little-endian format.
//!
//! Why it is shaped so:
//! - A resumed run must continue bit for bit, so every f32 is stored as its raw bits (NaN payloads
//!   and -0.0 survive) and RNG states are stored as the exact bytes of `Rng::state()`.
//! - `--resume` may point at anything, so `load` trusts nothing: it judges the header (magic,
//!   version, configuration, the file's length against the most that network's checkpoint
//!   holds), walks the records from the file without reading tensor values, then reads the
//!   file, checks a CRC-32 over it and parses, checking every count and length against the
//!   bytes left *before* allocating. Every problem is an `Error::Checkpoint` naming the file and saying
//!   precisely what is wrong (which field is truncated, both CRCs, both version numbers, ...).
//!   `load_meta` stops after that walk: what reads only a run's record (`compare`, the run
//!   folder's ownership check) reads the header and records and skips the values.
//! - A crash while saving must never cost the last good checkpoint: [`write_atomic`](super::atomic::write_atomic) writes a
//!   temporary file beside the target, syncs it, renames it over the target and syncs the folder.
//! - The encoding is canonical (one byte string per checkpoint): `save` checks what `load` checks,
//!   so anything saved loads, and anything loaded saves to the same bytes.
//! - The stored model configuration is judged like flags ([`ModelConfig::check`] and
//!   [`ModelConfig::footprint`]), so a forged or damaged file with a valid CRC is refused naming
//!   the checkpoint and the field, before anything is built from it.
//! - A trainer serialises into a buffer it reserved before the first step
//!   ([`encoded_len`], [`save_with`]): saving allocates nothing large.
//!
//! Layout (little-endian; `str` is `u32 length` + UTF-8 bytes):
//! ```text
//! magic  b"SLCKPT\0\0"            u32 version (1)
//! config u32 depth, u32 widen, u32 classes, u32 in_channels, f64 keep (all as ModelConfig::check)
//! u64 step, u64 epoch
//! u32 tensor count;  each: str name, u32 ndim, u64 dims[ndim], u64 numel, f32 data[numel]
//! u32 RNG count;     each: str name, u32 length, u8 state[length]
//! u32 n, f32 norm_mean[n];  u32 n, f32 norm_std[n]   (same n)
//! u32 meta count;    each: str key, str value
//! u32 CRC-32 (crc32fast / IEEE) of every byte before it
//! ```
//! Names are unique within tensors, within RNGs and within metadata keys.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::Path;

use byteorder::{ByteOrder, LittleEndian as LE, WriteBytesExt};

use crate::error::{Error, Result};
use crate::ir::config::size_text;
use crate::ir::ModelConfig;

/// The first 8 bytes of every checkpoint.
pub const MAGIC: [u8; 8] = *b"SLCKPT\0\0";
/// The format version this build writes and reads.
pub const VERSION: u32 = 1;
/// Magic + version.
const HEADER_LEN: usize = 12;
/// Four u32 and the f64 keep.
const CONFIG_LEN: usize = 24;
const CRC_LEN: usize = 4;

/// What a reader of models says of an ONNX file: sliceout writes them, and never reads them.
pub const ONNX_GIVEN: &str = "is an ONNX model (as `sliceout export` writes), which sliceout does not \
    read back: give the checkpoint or the safetensors file it was exported from";

/// Whether `head`, the first bytes of a file, opens an ONNX `ModelProto` as exporters write
/// it (`sliceout export` among them): field 1, `ir_version`, as a varint from 1 to 100, then
/// the key of another `ModelProto` field with its wire type. A safetensors file (its JSON
/// header starting at byte 8) is never taken for one.
pub fn looks_like_onnx(head: &[u8]) -> bool {
    if head.get(8) == Some(&b'{') {
        return false;
    }
    let [0x08, rest @ ..] = head else { return false };
    let Some(len) = rest.iter().position(|b| b & 0x80 == 0).filter(|&i| i < 10) else { return false };
    let version = rest[..=len].iter().rev().fold(0u64, |v, b| (v << 7) | u64::from(b & 0x7f));
    // The keys of `producer_name` .. `doc_string`, `model_version`, `graph`, `opset_import`
    // and `metadata_props`: strings and messages are length-delimited (2), model_version a
    // varint (0).
    let next_key = rest.get(len + 1).copied();
    (1..=100).contains(&version) && matches!(next_key, Some(0x12 | 0x1a | 0x22 | 0x28 | 0x32 | 0x3a | 0x42 | 0x72))
}

/// One named array: a parameter, a momentum buffer or a BN running statistic.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<usize>,
    /// Row-major, `shape.iter().product()` values (1 for a scalar with shape `[]`).
    pub data: Vec<f32>,
}

/// Everything a run needs to continue exactly where it stopped.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    pub config: ModelConfig,
    pub step: u64,
    pub epoch: u64,
    /// Parameters, momentum, BN running stats.
    pub tensors: Vec<Tensor>,
    /// `"shuffle"`, `"augment"`, `"slice"` -> `Rng::state()` bytes.
    pub rngs: Vec<(String, Vec<u8>)>,
    pub norm_mean: Vec<f32>,
    pub norm_std: Vec<f32>,
    /// Free-form: dataset, best_acc, lr, schedule, ...
    pub meta: Vec<(String, String)>,
}

impl Checkpoint {
    pub fn tensor(&self, name: &str) -> Option<&Tensor> {
        self.tensors.iter().find(|t| t.name == name)
    }

    pub fn meta(&self, key: &str) -> Option<&str> {
        self.meta.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    pub fn rng(&self, name: &str) -> Option<&[u8]> {
        self.rngs.iter().find(|(n, _)| n == name).map(|(_, s)| s.as_slice())
    }
}

/// Serialises `ck` and writes it atomically to `path`.
pub fn save(path: &Path, ck: &Checkpoint) -> Result<()> {
    save_with(path, ck, &mut Vec::new())
}

/// Like [`save`], serialising into `scratch` (cleared first; with [`encoded_len`] bytes
/// reserved, nothing is allocated).
pub fn save_with(path: &Path, ck: &Checkpoint, scratch: &mut Vec<u8>) -> Result<()> {
    encode_into(ck, scratch).map_err(|msg| Error::checkpoint(path, format!("cannot save: {msg}")))?;
    super::atomic::write_atomic(path, scratch)
}

/// The size of `ck`'s file in bytes.
pub fn encoded_len(ck: &Checkpoint) -> usize {
    let tensors: usize =
        ck.tensors.iter().map(|t| 4 + t.name.len() + 4 + 8 * t.shape.len() + 8 + 4 * t.data.len()).sum();
    let rngs: usize = ck.rngs.iter().map(|(n, s)| 8 + n.len() + s.len()).sum();
    let meta: usize = ck.meta.iter().map(|(k, v)| 8 + k.len() + v.len()).sum();
    let norm = 8 + 4 * (ck.norm_mean.len() + ck.norm_std.len());
    HEADER_LEN + CONFIG_LEN + 16 + 4 + tensors + 4 + rngs + norm + 4 + meta + CRC_LEN
}

/// Reads and fully validates the checkpoint at `path`: a regular file (a FIFO or a device is
/// refused before it is opened). The header (magic, version, configuration) is judged first,
/// with the file's length against the most a checkpoint of that network can hold; then the
/// record structure is walked from the file, every count and length against the bytes left,
/// reading no tensor values; only then is the whole file read (if the memory can be had),
/// CRC-checked and parsed. So a huge or sparse file that is no checkpoint is refused at once.
pub fn load(path: &Path) -> Result<Checkpoint> {
    let (mut file, len) = open(path)?;
    walk(&mut file, len).map_err(|fail| walk_error(path, fail))?;
    let end = len as usize;
    let mut bytes = Vec::new();
    if crate::oom::fallible(|| bytes.try_reserve_exact(end)).is_err() {
        let msg = format!("cannot allocate {} to read it", crate::ir::config::size_text(Some(len)));
        return Err(Error::checkpoint(path, msg));
    }
    let read = io::Seek::rewind(&mut file).and_then(|()| io::Read::read_to_end(&mut file, &mut bytes));
    read.map_err(|e| walk_error(path, Fail::Io(e)))?;
    decode(&bytes).map_err(|msg| Error::checkpoint(path, msg))
}

/// The checkpoint at `path` without its tensors and normalisation: the configuration, step,
/// epoch, RNG states and metadata, for what reads only a run's record (`compare`, telling a
/// run's files from another's). The file is judged as [`load`] judges it before reading it
/// whole (the header, then every record's count and length against the bytes left, with the
/// same messages for a file cut short or a count past its end), but the values are skipped,
/// never read: the bytes read are the header and records', however large the network. The CRC
/// covers the values too, so it is not checked: damage inside them goes unseen here.
pub fn load_meta(path: &Path) -> Result<Checkpoint> {
    let (mut file, len) = open(path)?;
    let ck = walk(&mut file, len).map_err(|fail| walk_error(path, fail))?;
    Ok(Checkpoint { tensors: vec![], norm_mean: vec![], norm_std: vec![], ..ck })
}

/// The regular file at `path`, opened, and its length.
fn open(path: &Path) -> Result<(fs::File, u64)> {
    let len = super::regular_file_len(path, "checkpoint file").map_err(|e| match e {
        super::NotAFile::Missing => Error::checkpoint(path, "no such file"),
        super::NotAFile::Other(msg) => Error::checkpoint(path, msg),
    })?;
    let file = fs::File::open(path).map_err(|e| walk_error(path, Fail::Io(e)))?;
    Ok((file, len))
}

/// The checkpoint in `file` (`len` bytes) as far as its header and records say, each tensor's
/// values and the normalisation's skipped (left empty) and the CRC unchecked: the header judged
/// ([`judge_head`]), then every record read from the file, a declared size past its end found
/// without reading on.
fn walk<R: io::Read + io::Seek>(file: &mut R, len: u64) -> Parse<Checkpoint> {
    let mut head = Vec::with_capacity(HEAD_LEN);
    io::Read::read_to_end(&mut io::Read::take(&mut *file, HEAD_LEN as u64), &mut head).map_err(Fail::Io)?;
    judge_head(&head, len).map_err(Fail::Bad)?;
    let end = usize::try_from(len).map_err(|_| Fail::Bad("too large for this machine's addresses".into()))?;
    let input = FileInput { file: io::BufReader::new(file), at: head.len() };
    parse(&mut Reader { input, pos: MAGIC.len(), end: end - CRC_LEN })
}

/// What [`walk`] found wrong with the file at `path`, as the error naming it.
fn walk_error(path: &Path, fail: Fail) -> Error {
    match fail {
        Fail::Short(msg) => Error::checkpoint(path, format!("the file is truncated or corrupt: {msg}")),
        Fail::Bad(msg) => Error::checkpoint(path, msg),
        Fail::Io(e) => Error::checkpoint(path, format!("cannot read: {e}")),
    }
}

/// The bytes [`judge_head`] reads: magic, version and configuration.
const HEAD_LEN: usize = HEADER_LEN + CONFIG_LEN;

/// What a checkpoint may hold besides its network's tensor values: tensor names and shapes,
/// RNG states, metadata (a run's history grows by one line an epoch). Generous: only a file
/// that cannot be a checkpoint of its network is past it.
pub const MAX_EXTRA_BYTES: u64 = 1 << 30;

/// The most bytes a checkpoint of `c` holds: its parameters, momentum and BN statistics, the
/// normalisation, and [`MAX_EXTRA_BYTES`]. `None` when `c` is out of range.
pub fn max_len(c: &ModelConfig) -> Option<u64> {
    let tensors = c.footprint(1).ok()?.persistent_bytes;
    let norm = 8 * c.in_channels as u64;
    Some(tensors.saturating_add(norm).saturating_add(MAX_EXTRA_BYTES))
}

/// The first [`HEAD_LEN`] bytes of a `len`-byte file (fewer if it is shorter), judged before
/// anything else is read: the magic (an ONNX model is named as one), the version, the stored
/// configuration, and the file's length against [`max_len`] of that network.
fn judge_head(head: &[u8], len: u64) -> std::result::Result<(), String> {
    let magic = &head[..head.len().min(MAGIC.len())];
    if !MAGIC.starts_with(magic) {
        if looks_like_onnx(head) {
            return Err(ONNX_GIVEN.to_string());
        }
        return Err(format!(
            "not a sliceout checkpoint: it starts with \"{}\", expected \"{}\"",
            magic.escape_ascii(),
            MAGIC.escape_ascii()
        ));
    }
    if len == 0 {
        return Err("truncated at the magic: the file is empty".to_string());
    }
    if len < (HEADER_LEN + CRC_LEN) as u64 || head.len() < HEADER_LEN {
        return Err(format!(
            "truncated at the header: the file is {len} bytes, a checkpoint has at least {}",
            HEADER_LEN + CRC_LEN
        ));
    }
    // The version decides the layout (a later one may place its CRC differently): check it first.
    let version = LE::read_u32(&head[MAGIC.len()..]);
    if version != VERSION {
        return Err(format!("unknown format version {version}; this build reads version {VERSION}"));
    }
    let mut r = Reader { input: head, pos: HEADER_LEN, end: head.len() };
    let config = read_config(&mut r).map_err(Fail::msg)?;
    let most = max_len(&config).unwrap_or(u64::MAX);
    if len > most {
        return Err(format!(
            "the file is {} ({len} bytes), more than a checkpoint of {} ({} classes, {} input channels) \
             holds: at most {} ({most} bytes), its parameters, momentum and BN statistics and {} of \
             names, RNG states and metadata",
            size_text(Some(len)),
            config.name(),
            config.classes,
            config.in_channels,
            size_text(Some(most)),
            size_text(Some(MAX_EXTRA_BYTES))
        ));
    }
    Ok(())
}

/// An error naming the checkpoint and every field where `found` (read from it) differs from
/// `expected` (from the flags). A caller that allows a field to change (say `keep` when
/// fine-tuning) copies it from `found` into `expected` first.
pub fn check_config(path: &Path, found: &ModelConfig, expected: &ModelConfig) -> Result<()> {
    let mut diffs = Vec::new();
    let mut field = |name: &str, differs: bool, a: &dyn fmt::Display, b: &dyn fmt::Display| {
        if differs {
            diffs.push(format!("{name} {a} in the checkpoint, {b} from the flags"));
        }
    };
    let (f, e) = (found, expected);
    field("depth", f.depth != e.depth, &f.depth, &e.depth);
    field("widen", f.widen != e.widen, &f.widen, &e.widen);
    field("classes", f.classes != e.classes, &f.classes, &e.classes);
    field("in_channels", f.in_channels != e.in_channels, &f.in_channels, &e.in_channels);
    field("keep", f.keep != e.keep, &f.keep, &e.keep);
    if diffs.is_empty() {
        return Ok(());
    }
    Err(Error::checkpoint(path, format!("model configuration does not match the flags: {}", diffs.join("; "))))
}

// ---------------------------------------------------------------------------------------------
// Encoding

/// The checks `decode` makes on content, made before writing, so every saved file loads.
fn validate(ck: &Checkpoint) -> std::result::Result<(), String> {
    let c = &ck.config;
    for (name, v) in [("depth", c.depth), ("widen", c.widen), ("classes", c.classes), ("in_channels", c.in_channels)] {
        if u32::try_from(v).is_err() {
            return Err(format!("config.{name} {v} does not fit in 32 bits"));
        }
    }
    check_model(c)?;
    // What `load` refuses from the header alone.
    let (len, most) = (encoded_len(ck) as u64, max_len(c).unwrap_or(u64::MAX));
    if len > most {
        return Err(format!("{len} bytes, more than a checkpoint of {} holds ({most} bytes)", c.name()));
    }
    let fits = |what: &dyn fmt::Display, n: usize| {
        u32::try_from(n).map(|_| ()).map_err(|_| format!("{what}: {n} does not fit in 32 bits"))
    };
    fits(&"tensor count", ck.tensors.len())?;
    let mut names = HashSet::new();
    for t in &ck.tensors {
        fits(&format_args!("tensor {:?} name length", t.name), t.name.len())?;
        fits(&format_args!("tensor {:?} rank", t.name), t.shape.len())?;
        if !names.insert(t.name.as_str()) {
            return Err(format!("duplicate tensor name {:?}", t.name));
        }
        let numel = t.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if numel != Some(t.data.len()) {
            return Err(format!(
                "tensor {:?} holds {} values but its shape {:?} needs {}",
                t.name,
                t.data.len(),
                t.shape,
                numel.map_or("more than usize::MAX".to_string(), |n| n.to_string())
            ));
        }
    }
    fits(&"RNG count", ck.rngs.len())?;
    let mut names = HashSet::new();
    for (name, state) in &ck.rngs {
        fits(&format_args!("RNG {name:?} name length"), name.len())?;
        fits(&format_args!("RNG {name:?} state length"), state.len())?;
        if !names.insert(name.as_str()) {
            return Err(format!("duplicate RNG name {name:?}"));
        }
    }
    fits(&"norm_mean length", ck.norm_mean.len())?;
    if ck.norm_mean.len() != ck.norm_std.len() {
        return Err(format!("norm_mean has {} values but norm_std has {}", ck.norm_mean.len(), ck.norm_std.len()));
    }
    fits(&"metadata count", ck.meta.len())?;
    let mut keys = HashSet::new();
    for (k, v) in &ck.meta {
        fits(&format_args!("metadata key {k:?} length"), k.len())?;
        fits(&format_args!("metadata {k:?} value length"), v.len())?;
        if !keys.insert(k.as_str()) {
            return Err(format!("duplicate metadata key {k:?}"));
        }
    }
    Ok(())
}

/// A stored configuration judged as flags are: any value out of range, or sizes past
/// [`crate::ir::config::MAX_BYTES`] for one image.
fn check_model(c: &ModelConfig) -> std::result::Result<(), String> {
    c.footprint(1).map(|_| ()).map_err(|e| e.stored())
}

/// The file's bytes, CRC included.
#[cfg(test)]
fn encode(ck: &Checkpoint) -> std::result::Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(encoded_len(ck));
    encode_into(ck, &mut out)?;
    Ok(out)
}

/// The file's bytes, CRC included, into `out` (cleared first).
fn encode_into(ck: &Checkpoint, out: &mut Vec<u8>) -> std::result::Result<(), String> {
    validate(ck)?;
    out.clear();
    write_body(out, ck).map_err(|e| format!("cannot serialise: {e}"))?;
    let crc = crc32fast::hash(out);
    out.write_u32::<LE>(crc).map_err(|e| format!("cannot serialise: {e}"))?;
    Ok(())
}

/// Everything before the CRC. Lengths were checked by `validate`, so the `as u32` casts are exact.
fn write_body(w: &mut Vec<u8>, ck: &Checkpoint) -> io::Result<()> {
    w.write_all(&MAGIC)?;
    w.write_u32::<LE>(VERSION)?;
    let c = &ck.config;
    for v in [c.depth, c.widen, c.classes, c.in_channels] {
        w.write_u32::<LE>(v as u32)?;
    }
    w.write_f64::<LE>(c.keep)?;
    w.write_u64::<LE>(ck.step)?;
    w.write_u64::<LE>(ck.epoch)?;

    w.write_u32::<LE>(ck.tensors.len() as u32)?;
    for t in &ck.tensors {
        write_bytes(w, t.name.as_bytes())?;
        w.write_u32::<LE>(t.shape.len() as u32)?;
        for &d in &t.shape {
            w.write_u64::<LE>(d as u64)?;
        }
        w.write_u64::<LE>(t.data.len() as u64)?;
        write_f32s(w, &t.data);
    }

    w.write_u32::<LE>(ck.rngs.len() as u32)?;
    for (name, state) in &ck.rngs {
        write_bytes(w, name.as_bytes())?;
        write_bytes(w, state)?;
    }

    for values in [&ck.norm_mean, &ck.norm_std] {
        w.write_u32::<LE>(values.len() as u32)?;
        write_f32s(w, values);
    }

    w.write_u32::<LE>(ck.meta.len() as u32)?;
    for (k, v) in &ck.meta {
        write_bytes(w, k.as_bytes())?;
        write_bytes(w, v.as_bytes())?;
    }
    Ok(())
}

fn write_bytes(w: &mut Vec<u8>, bytes: &[u8]) -> io::Result<()> {
    w.write_u32::<LE>(bytes.len() as u32)?;
    w.write_all(bytes)
}

/// Raw bits, bulk: bit-exact for every value, NaN payloads included.
fn write_f32s(w: &mut Vec<u8>, values: &[f32]) {
    let at = w.len();
    w.resize(at + 4 * values.len(), 0);
    LE::write_f32_into(values, &mut w[at..]);
}

// ---------------------------------------------------------------------------------------------
// Decoding

/// Why parsing stopped. `Short`: the file has fewer bytes than a field needs (cut short, or a
/// corrupt count or length); `Bad`: anything else; `Io`: the file could not be read. On a CRC
/// mismatch only `Short` is worth reporting, since it says where a truncated file ends.
enum Fail {
    Short(String),
    Bad(String),
    Io(io::Error),
}

impl Fail {
    fn msg(self) -> String {
        match self {
            Fail::Short(m) | Fail::Bad(m) => m,
            Fail::Io(e) => format!("cannot read: {e}"),
        }
    }
}

type Parse<T> = std::result::Result<T, Fail>;

/// Where a [`Reader`] gets its bytes: the whole file in memory, or the open file itself (the
/// walk before the file is read, which skips tensor values).
trait Input {
    /// The `n` bytes at file offset `at`; the reader has checked they are within the end.
    fn bytes_at(&mut self, at: usize, n: usize) -> Parse<Cow<'_, [u8]>>;
    /// Whether tensor values are read; when not, they are skipped.
    fn values(&self) -> bool;
}

impl Input for &[u8] {
    fn bytes_at(&mut self, at: usize, n: usize) -> Parse<Cow<'_, [u8]>> {
        Ok(Cow::Borrowed(&self[at..at + n]))
    }

    fn values(&self) -> bool {
        true
    }
}

/// The file, read where the reader asks: records are read, tensor values skipped.
struct FileInput<R> {
    file: io::BufReader<R>,
    /// The file offset the next read starts at.
    at: usize,
}

impl<R: io::Read + io::Seek> Input for FileInput<R> {
    fn bytes_at(&mut self, at: usize, n: usize) -> Parse<Cow<'_, [u8]>> {
        if at != self.at {
            // Offsets are below the file's length, which fits an i64.
            self.file.seek_relative(at as i64 - self.at as i64).map_err(Fail::Io)?;
            self.at = at;
        }
        let mut out = vec![0; n];
        io::Read::read_exact(&mut self.file, &mut out).map_err(Fail::Io)?;
        self.at += n;
        Ok(Cow::Owned(out))
    }

    fn values(&self) -> bool {
        false
    }
}

/// A cursor over `input` up to `end`; positions are file offsets, for messages.
struct Reader<I> {
    input: I,
    pos: usize,
    end: usize,
}

impl<I: Input> Reader<I> {
    fn left(&self) -> usize {
        self.end - self.pos
    }

    /// Fails with `Short`, naming the field, unless `n` bytes are left. Every read and every
    /// allocation is checked here first, so nothing larger than the file is ever allocated.
    fn need(&self, n: usize, what: &dyn fmt::Display) -> Parse<()> {
        if n > self.left() {
            return Err(Fail::Short(format!(
                "truncated at {what}: needs {n} bytes at offset {}, only {} left",
                self.pos,
                self.left()
            )));
        }
        Ok(())
    }

    /// The next `n` bytes.
    fn take(&mut self, n: usize, what: &dyn fmt::Display) -> Parse<Cow<'_, [u8]>> {
        self.need(n, what)?;
        let at = self.pos;
        self.pos += n;
        self.input.bytes_at(at, n)
    }

    fn u32(&mut self, what: &dyn fmt::Display) -> Parse<u32> {
        Ok(LE::read_u32(&self.take(4, what)?))
    }

    fn u64(&mut self, what: &dyn fmt::Display) -> Parse<u64> {
        Ok(LE::read_u64(&self.take(8, what)?))
    }

    fn f64(&mut self, what: &dyn fmt::Display) -> Parse<f64> {
        Ok(LE::read_f64(&self.take(8, what)?))
    }

    /// A u32 count of records each at least `min_each` bytes long, checked against the bytes
    /// left so that `Vec::with_capacity(count)` stays bounded by the file size.
    fn count(&mut self, what: &dyn fmt::Display, min_each: usize) -> Parse<usize> {
        let at = self.pos;
        let n = self.u32(what)? as usize;
        let need = n.saturating_mul(min_each);
        if need > self.left() {
            return Err(Fail::Short(format!(
                "{what} {n} at offset {at} is impossible: it needs at least {need} bytes, \
                 only {} left",
                self.left()
            )));
        }
        Ok(n)
    }

    /// A u32 length then that many bytes.
    fn bytes(&mut self, what: &dyn fmt::Display) -> Parse<Vec<u8>> {
        let n = self.u32(&format_args!("{what} length"))? as usize;
        Ok(self.take(n, what)?.into_owned())
    }

    fn string(&mut self, what: &dyn fmt::Display) -> Parse<String> {
        let at = self.pos + 4;
        let raw = self.bytes(what)?;
        String::from_utf8(raw).map_err(|_| Fail::Bad(format!("{what} at offset {at} is not valid UTF-8")))
    }

    /// `n` f32 values; none (skipped, their size checked) where the input reads no values.
    fn f32s(&mut self, n: usize, what: &dyn fmt::Display) -> Parse<Vec<f32>> {
        if !self.input.values() {
            self.need(n.saturating_mul(4), what)?;
            self.pos += n * 4;
            return Ok(Vec::new());
        }
        let raw = self.take(n.saturating_mul(4), what)?;
        let mut out = vec![0f32; n];
        LE::read_f32_into(&raw, &mut out);
        Ok(out)
    }
}

/// Magic and size, then the CRC, then the structure; the message says what is wrong.
fn decode(bytes: &[u8]) -> std::result::Result<Checkpoint, String> {
    let len = bytes.len();
    judge_head(&bytes[..len.min(HEAD_LEN)], len as u64)?;
    let body_end = len - CRC_LEN;
    let stored = LE::read_u32(&bytes[body_end..]);
    let computed = crc32fast::hash(&bytes[..body_end]);
    if stored != computed {
        // The mismatch alone does not say where the damage is. If the bytes, read as far as they
        // go (no CRC), run out inside a field, the file was most likely cut short: say where.
        if let Err(Fail::Short(msg)) = parse(&mut Reader { input: bytes, pos: MAGIC.len(), end: len }) {
            return Err(format!(
                "the file is truncated or corrupt: {msg} (CRC mismatch: stored {stored:#010x}, \
                 computed {computed:#010x})"
            ));
        }
        return Err(format!(
            "CRC mismatch: stored {stored:#010x}, computed {computed:#010x} over the first \
             {body_end} bytes; the file is corrupt"
        ));
    }
    parse(&mut Reader { input: bytes, pos: MAGIC.len(), end: body_end }).map_err(Fail::msg)
}

/// The stored model configuration, judged as flags are.
fn read_config<I: Input>(r: &mut Reader<I>) -> Parse<ModelConfig> {
    let depth = r.u32(&"config.depth")? as usize;
    let widen = r.u32(&"config.widen")? as usize;
    let classes = r.u32(&"config.classes")? as usize;
    let in_channels = r.u32(&"config.in_channels")? as usize;
    let keep = r.f64(&"config.keep")?;
    let config = ModelConfig { depth, widen, classes, in_channels, keep };
    check_model(&config).map_err(Fail::Bad)?;
    Ok(config)
}

/// Parses from the reader's position (just after the magic) up to its end (the CRC).
fn parse<I: Input>(r: &mut Reader<I>) -> Parse<Checkpoint> {
    let version = r.u32(&"format version")?;
    if version != VERSION {
        return Err(Fail::Bad(format!("unknown format version {version}; this build reads version {VERSION}")));
    }
    let config = read_config(r)?;
    let step = r.u64(&"step")?;
    let epoch = r.u64(&"epoch")?;

    // Smallest tensor record: name length, rank, numel.
    let n = r.count(&"tensor count", 4 + 4 + 8)?;
    let mut tensors = Vec::with_capacity(n);
    let mut seen = HashSet::new();
    for i in 0..n {
        let name = r.string(&format_args!("tensor {i} name"))?;
        if !seen.insert(name.clone()) {
            return Err(Fail::Bad(format!("duplicate tensor name {name:?}")));
        }
        let ndim = r.count(&format_args!("tensor {name:?} rank"), 8)?;
        let mut shape = Vec::with_capacity(ndim);
        for d in 0..ndim {
            let v = r.u64(&format_args!("tensor {name:?} dimension {d}"))?;
            let v = usize::try_from(v)
                .map_err(|_| Fail::Bad(format!("tensor {name:?} dimension {d} is {v}, too large")))?;
            shape.push(v);
        }
        let numel = r.u64(&format_args!("tensor {name:?} value count"))?;
        let need = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if need.map(|k| k as u64) != Some(numel) {
            return Err(Fail::Bad(format!(
                "tensor {name:?} holds {numel} values but its shape {shape:?} needs {}",
                need.map_or("more than usize::MAX".to_string(), |k| k.to_string())
            )));
        }
        let data = r.f32s(numel as usize, &format_args!("tensor {name:?} data"))?;
        tensors.push(Tensor { name, shape, data });
    }

    let n = r.count(&"RNG count", 4 + 4)?;
    let mut rngs = Vec::with_capacity(n);
    let mut seen = HashSet::new();
    for i in 0..n {
        let name = r.string(&format_args!("RNG {i} name"))?;
        if !seen.insert(name.clone()) {
            return Err(Fail::Bad(format!("duplicate RNG name {name:?}")));
        }
        let state = r.bytes(&format_args!("RNG {name:?} state"))?;
        rngs.push((name, state));
    }

    let means = r.count(&"norm_mean length", 4)?;
    let norm_mean = r.f32s(means, &"norm_mean values")?;
    let stds = r.count(&"norm_std length", 4)?;
    let norm_std = r.f32s(stds, &"norm_std values")?;
    // The counts, not the values read: a walk that skips the values checks this too.
    if means != stds {
        return Err(Fail::Bad(format!("norm_mean has {means} values but norm_std has {stds}")));
    }

    let n = r.count(&"metadata count", 4 + 4)?;
    let mut meta = Vec::with_capacity(n);
    let mut seen = HashSet::new();
    for i in 0..n {
        let key = r.string(&format_args!("metadata key {i}"))?;
        if !seen.insert(key.clone()) {
            return Err(Fail::Bad(format!("duplicate metadata key {key:?}")));
        }
        let value = r.string(&format_args!("metadata {key:?} value"))?;
        meta.push((key, value));
    }

    if r.pos != r.end {
        return Err(Fail::Bad(format!("{} unexpected bytes after the metadata, at offset {}", r.end - r.pos, r.pos)));
    }
    Ok(Checkpoint { config, step, epoch, tensors, rngs, norm_mean, norm_std, meta })
}

#[cfg(test)]
mod tests;
