//! safetensors files: named tensors and a map of string metadata, read and written with the
//! `safetensors` crate (the format's own implementation), so PyTorch, NumPy and every other
//! safetensors reader see exactly what we wrote.
//!
//! Only what a model needs is held: `F32` tensors (parameters, BN statistics, logits) and `I64`
//! ones (PyTorch's `num_batches_tracked` counters, labels). Values are copied through their
//! little-endian bytes, so every f32 comes back with the same bits (NaN payloads, -0.0).
//! A file holding another dtype is refused with its tensor's name: converting silently would
//! hide a precision change from the user.

use crate::error::{Error, Result};
use ::safetensors::tensor::{Metadata, TensorView};
use ::safetensors::{Dtype, SafeTensorError, SafeTensors};
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

/// A tensor's values, row-major.
#[derive(Clone, Debug, PartialEq)]
pub enum Values {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

impl Values {
    pub fn len(&self) -> usize {
        match self {
            Values::F32(v) => v.len(),
            Values::I64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The safetensors dtype name (`F32`, `I64`).
    pub fn dtype(&self) -> &'static str {
        match self {
            Values::F32(_) => "F32",
            Values::I64(_) => "I64",
        }
    }

    fn le_bytes(&self) -> Vec<u8> {
        match self {
            Values::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Values::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }
}

/// One named tensor of a file.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub name: String,
    /// `[]` for a scalar (one value).
    pub shape: Vec<usize>,
    pub values: Values,
}

/// A whole safetensors file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TensorFile {
    /// In the order of their bytes in the file (the writer orders them by dtype, then name).
    pub entries: Vec<Entry>,
    /// The header's `__metadata__` map.
    pub metadata: BTreeMap<String, String>,
}

impl TensorFile {
    pub fn entry(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.name == name)
    }
}

/// Writes `file` to `path` atomically.
pub fn save(path: &Path, file: &TensorFile) -> Result<()> {
    let bytes = encode(file).map_err(|msg| Error::checkpoint(path, format!("cannot write safetensors: {msg}")))?;
    super::write_atomic(path, &bytes)
}

/// Reads the safetensors file at `path`; every problem names the file.
pub fn load(path: &Path) -> Result<TensorFile> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode(&bytes).map_err(|msg| Error::checkpoint(path, format!("not a usable safetensors file: {msg}")))
}

/// The file's bytes.
pub fn encode(file: &TensorFile) -> std::result::Result<Vec<u8>, String> {
    let mut names = HashSet::new();
    for e in &file.entries {
        if !names.insert(e.name.as_str()) {
            return Err(format!("duplicate tensor name {:?}", e.name));
        }
    }
    let bytes: Vec<Vec<u8>> = file.entries.iter().map(|e| e.values.le_bytes()).collect();
    let mut views = Vec::with_capacity(bytes.len());
    for (e, b) in file.entries.iter().zip(&bytes) {
        let dtype = match e.values {
            Values::F32(_) => Dtype::F32,
            Values::I64(_) => Dtype::I64,
        };
        let view = TensorView::new(dtype, e.shape.clone(), b)
            .map_err(|err| format!("tensor {} (shape {:?}, {} values): {err}", e.name, e.shape, e.values.len()))?;
        views.push((e.name.as_str(), view));
    }
    let metadata: HashMap<String, String> = file.metadata.clone().into_iter().collect();
    let metadata = (!metadata.is_empty()).then_some(metadata);
    let bytes = ::safetensors::serialize(views, metadata).map_err(|e| e.to_string())?;
    sorted_header(bytes)
}

/// `bytes` with the header's keys in sorted order, at every level. The crate writes the
/// metadata map as a `HashMap` iterates, which differs between processes; sorted, the same
/// model always makes the same file. The data offsets count from the end of the header, so
/// they hold whatever its length.
fn sorted_header(bytes: Vec<u8>) -> std::result::Result<Vec<u8>, String> {
    let bad = |what: &str| format!("the safetensors crate wrote a header we cannot read back: {what}");
    let len = bytes.get(..8).map(|b| u64::from_le_bytes(b.try_into().unwrap())).ok_or_else(|| bad("no length"))?;
    let end = usize::try_from(len).ok().and_then(|l| l.checked_add(8)).filter(|&e| e <= bytes.len());
    let end = end.ok_or_else(|| bad("length past the end"))?;
    // serde_json's Value keeps keys in a BTreeMap unless `preserve_order` is on; a BTreeMap
    // here sorts them whatever its features.
    let header: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..end]).map_err(|e| bad(&e.to_string()))?;
    let sorted = |v: serde_json::Value| match v {
        serde_json::Value::Object(m) => serde_json::to_value(m.into_iter().collect::<BTreeMap<_, _>>()),
        other => Ok(other),
    };
    let header = header
        .into_iter()
        .map(|(k, v)| Ok((k, sorted(v)?)))
        .collect::<std::result::Result<BTreeMap<_, _>, serde_json::Error>>()
        .map_err(|e| bad(&e.to_string()))?;
    let mut text = serde_json::to_vec(&header).map_err(|e| bad(&e.to_string()))?;
    // The format pads the header with spaces to a multiple of 8 bytes.
    text.resize(text.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + text.len() + bytes.len() - end);
    out.extend((text.len() as u64).to_le_bytes());
    out.extend(text);
    out.extend(&bytes[end..]);
    Ok(out)
}

/// Parses a file's bytes: the header and offsets are checked by the crate, repeated keys and
/// the dtypes here.
/// Errors say what is wrong without naming the file (the caller does).
pub fn decode(bytes: &[u8]) -> std::result::Result<TensorFile, String> {
    let (header_len, header) = SafeTensors::read_metadata(bytes).map_err(|e| header_problem(bytes, e))?;
    // The crate reads the header into maps, where a repeated key silently replaces the first:
    // two values for one key (a tensor, or a metadata entry) would leave which one counts to
    // whoever reads it next.
    serde_json::from_slice::<UniqueKeys>(&bytes[8..8 + header_len]).map_err(|e| format!("header: {e}"))?;
    // `read_metadata` checked that the offsets tile the data section exactly, up to the file's end.
    let data_section = &bytes[8 + header_len..];
    let mut entries = Vec::new();
    for name in header.offset_keys() {
        let info = header.info(&name).ok_or_else(|| format!("tensor {name} is listed but not described"))?;
        let data = &data_section[info.data_offsets.0..info.data_offsets.1];
        let values = match info.dtype {
            Dtype::F32 => {
                Values::F32(data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
            }
            Dtype::I64 => Values::I64(
                data.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().expect("8-byte chunk"))).collect(),
            ),
            other => return Err(format!("tensor {name} has dtype {other:?}; F32 tensors (and I64 counters) are read")),
        };
        entries.push(Entry { name, shape: info.shape.clone(), values });
    }
    let metadata = header.metadata().clone().unwrap_or_default().into_iter().collect();
    Ok(TensorFile { entries, metadata })
}

/// The format's largest header, as the crate reads it.
const MAX_HEADER_LEN: u64 = 100_000_000;

/// Reads the safetensors file at `path`, `len` bytes long, judging its header before the
/// data: the header's length against the file and the format's limit, then the tensor data
/// the header describes against the bytes that follow it. A file that cannot be safetensors
/// is refused having read at most its header; `Ok(Err(msg))` says why, without the file's
/// name (the caller names it), `Err` is a read that failed.
pub fn read_judged(path: &Path, len: u64) -> Result<std::result::Result<Vec<u8>, String>> {
    use std::io::Read;
    let io = |e| Error::io(path, e);
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut head = Vec::with_capacity(8);
    (&mut file).take(8).read_to_end(&mut head).map_err(io)?;
    let Ok(first) = <[u8; 8]>::try_from(head.as_slice()) else {
        return Ok(Err(format!("truncated: {} bytes, fewer than the 8 that give the header's length", head.len())));
    };
    let header_len = u64::from_le_bytes(first);
    if header_len > MAX_HEADER_LEN {
        return Ok(Err(format!(
            "the first 8 bytes announce a {header_len}-byte header, over the format's 100 MB limit"
        )));
    }
    if header_len > len.saturating_sub(8) {
        return Ok(Err(format!(
            "truncated, or not safetensors: the first 8 bytes announce a {header_len}-byte header, {} bytes follow",
            len.saturating_sub(8)
        )));
    }
    (&mut file).take(header_len).read_to_end(&mut head).map_err(io)?;
    if let Ok(m) = serde_json::from_slice::<Metadata>(&head[8..]) {
        let follow = len.saturating_sub(8 + header_len);
        if m.data_len() as u64 != follow {
            return Ok(Err(format!(
                "truncated or padded: the header describes {} bytes of tensor data, {follow} follow it",
                m.data_len()
            )));
        }
    } else if let Err(msg) = decode(&head) {
        // The header itself is refused: what the crate says of it.
        return Ok(Err(msg));
    }
    let mut bytes = Vec::new();
    if usize::try_from(len).ok().filter(|&n| crate::oom::fallible(|| bytes.try_reserve_exact(n)).is_ok()).is_none() {
        return Ok(Err(format!("{len} bytes do not fit in memory")));
    }
    bytes.extend_from_slice(&head);
    file.read_to_end(&mut bytes).map_err(io)?;
    Ok(Ok(bytes))
}

/// Any JSON value in which no object repeats a key; deserialising it is the check.
struct UniqueKeys;

impl<'de> Deserialize<'de> for UniqueKeys {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_any(UniqueKeys)
    }
}

impl<'de> Visitor<'de> for UniqueKeys {
    type Value = UniqueKeys;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("JSON")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Self, A::Error> {
        let mut keys = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !keys.insert(key.clone()) {
                return Err(serde::de::Error::custom(format!("the key {key:?} appears twice")));
            }
            map.next_value::<UniqueKeys>()?;
        }
        Ok(UniqueKeys)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Self, A::Error> {
        while seq.next_element::<UniqueKeys>()?.is_some() {}
        Ok(UniqueKeys)
    }

    fn visit_bool<E>(self, _: bool) -> std::result::Result<Self, E> {
        Ok(UniqueKeys)
    }

    fn visit_i64<E>(self, _: i64) -> std::result::Result<Self, E> {
        Ok(UniqueKeys)
    }

    fn visit_u64<E>(self, _: u64) -> std::result::Result<Self, E> {
        Ok(UniqueKeys)
    }

    fn visit_f64<E>(self, _: f64) -> std::result::Result<Self, E> {
        Ok(UniqueKeys)
    }

    fn visit_str<E>(self, _: &str) -> std::result::Result<Self, E> {
        Ok(UniqueKeys)
    }

    fn visit_unit<E>(self) -> std::result::Result<Self, E> {
        Ok(UniqueKeys)
    }
}

/// Why the crate refused a header, with the sizes involved where the file is cut short (or
/// has bytes past its end).
fn header_problem(bytes: &[u8], e: SafeTensorError) -> String {
    let header_len = bytes.get(..8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
    let after = |n: u64| bytes.len().saturating_sub(8).saturating_sub(n as usize);
    match (e, header_len) {
        (SafeTensorError::HeaderTooSmall, _) => {
            format!("truncated: {} bytes, fewer than the 8 that give the header's length", bytes.len())
        }
        (SafeTensorError::HeaderTooLarge, Some(n)) => {
            format!("the first 8 bytes announce a {n}-byte header, over the format's 100 MB limit")
        }
        (SafeTensorError::InvalidHeaderLength, Some(n)) => {
            format!(
                "truncated, or not safetensors: the first 8 bytes announce a {n}-byte header, {} bytes follow",
                after(0)
            )
        }
        (SafeTensorError::MetadataIncompleteBuffer, Some(n)) => {
            let described = bytes
                .get(8..8 + n as usize)
                .and_then(|h| serde_json::from_slice::<Metadata>(h).ok())
                .map_or("other".to_string(), |m| m.data_len().to_string());
            format!(
                "truncated or padded: the header describes {described} bytes of tensor data, {} follow it",
                after(n)
            )
        }
        (e, _) => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> TensorFile {
        let odd = [f32::from_bits(0x7fc0_1234), -0.0, f32::MIN_POSITIVE / 8.0, f32::INFINITY, 1.5];
        TensorFile {
            entries: vec![
                Entry { name: "w".into(), shape: vec![5], values: Values::F32(odd.to_vec()) },
                Entry { name: "count".into(), shape: vec![], values: Values::I64(vec![-7]) },
                Entry { name: "empty".into(), shape: vec![0, 3], values: Values::F32(vec![]) },
            ],
            metadata: [("depth".to_string(), "10".to_string())].into_iter().collect(),
        }
    }

    fn bits(f: &TensorFile, name: &str) -> Vec<u64> {
        match &f.entry(name).unwrap().values {
            Values::F32(v) => v.iter().map(|x| x.to_bits() as u64).collect(),
            Values::I64(v) => v.iter().map(|&x| x as u64).collect(),
        }
    }

    #[test]
    fn round_trip_keeps_every_bit_shape_and_metadata() {
        let f = sample();
        let back = decode(&encode(&f).unwrap()).unwrap();
        assert_eq!(back.metadata, f.metadata);
        for e in &f.entries {
            let b = back.entry(&e.name).unwrap();
            assert_eq!(b.shape, e.shape, "{}", e.name);
            assert_eq!(bits(&back, &e.name), bits(&f, &e.name), "{}", e.name);
        }
        assert_eq!(back.entries.len(), 3);
    }

    #[test]
    fn bad_inputs_are_errors_not_panics() {
        let bytes = encode(&sample()).unwrap();
        // Every truncation is refused, saying so.
        for cut in 0..bytes.len() {
            let err = decode(&bytes[..cut]).unwrap_err();
            assert!(err.starts_with("truncated"), "cut at {cut}: {err}");
        }
        let data_len = 5 * 4 + 8;
        let err = decode(&bytes[..bytes.len() - 3]).unwrap_err();
        assert!(err.contains(&format!("describes {data_len} bytes of tensor data, {} follow", data_len - 3)), "{err}");
        let mut padded = bytes.clone();
        padded.push(0);
        assert!(decode(&padded).unwrap_err().contains("padded"));
        // Every single-byte change either decodes or errors; none panics.
        for at in 0..bytes.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut b = bytes.clone();
                b[at] ^= flip;
                let _ = decode(&b);
            }
        }
        // A shape that disagrees with the values, and duplicate names, are refused on writing.
        let mut f = sample();
        f.entries[0].shape = vec![4];
        assert!(encode(&f).unwrap_err().contains("tensor w"));
        let mut f = sample();
        f.entries[1].name = "w".into();
        assert!(encode(&f).unwrap_err().contains("duplicate"));
    }

    /// A header naming one key twice (a metadata entry, a tensor) is refused, though the crate
    /// would read it, keeping the second.
    #[test]
    fn repeated_header_keys_are_refused() {
        let bytes = encode(&sample()).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header = std::str::from_utf8(&bytes[8..8 + n]).unwrap().trim_end().to_string();
        let with = |header: String| {
            let mut h = header.into_bytes();
            h.resize(h.len().next_multiple_of(8), b' ');
            let mut b = (h.len() as u64).to_le_bytes().to_vec();
            b.extend_from_slice(&h);
            b.extend_from_slice(&bytes[8 + n..]);
            b
        };
        assert!(decode(&with(header.clone())).is_ok());
        let meta = header.replace("\"depth\":\"10\"", "\"depth\":\"10\",\"depth\":\"16\"");
        assert!(SafeTensors::read_metadata(&with(meta.clone())).is_ok(), "the crate takes it");
        assert!(decode(&with(meta)).unwrap_err().contains("header: the key \"depth\" appears twice"));
        let at = header.find("\"w\":").unwrap();
        let end = at + header[at..].find('}').unwrap() + 1;
        let tensor = format!("{},{}{}", &header[..end], &header[at..end], &header[end..]);
        assert!(decode(&with(tensor)).unwrap_err().contains("the key \"w\" appears twice"));
        // The crate refuses this one itself.
        let map = header.replacen('{', "{\"__metadata__\":{},", 1);
        let e = decode(&with(map)).unwrap_err();
        assert!(e.contains("duplicate field `__metadata__`"), "{e}");
    }

    #[test]
    fn other_dtypes_are_refused_by_name() {
        let half = [0u8; 4];
        let view = TensorView::new(Dtype::F16, vec![2], &half).unwrap();
        let bytes = ::safetensors::serialize([("half", view)], None).unwrap();
        let err = decode(&bytes).unwrap_err();
        assert!(err.contains("half") && err.contains("F16"), "{err}");
    }

    #[test]
    fn save_and_load_name_the_file() {
        let dir = std::env::temp_dir().join(format!("sliceout-st-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.safetensors");
        save(&path, &sample()).unwrap();
        assert_eq!(bits(&load(&path).unwrap(), "w"), bits(&sample(), "w"));
        std::fs::write(&path, b"not a safetensors file").unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(err.contains("t.safetensors") && err.contains("not a usable safetensors file"), "{err}");
        let err = load(&dir.join("missing.safetensors")).unwrap_err().to_string();
        assert!(err.contains("missing.safetensors"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
