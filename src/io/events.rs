//! TensorBoard event files, written by us: TFRecord framing (length, masked CRC-32C of the
//! length, data, masked CRC-32C of the data) around `Event` protobuf messages holding scalar
//! summaries. The messages are declared for `prost` with the field numbers of TensorFlow's
//! `event.proto` and `summary.proto`; fields we never set are left out.
//!
//! A reader stops at the first record that is cut short or fails its checksum, so a file whose
//! writer was killed mid-record still reads up to it: [`records`] does the same.

use prost::Message;

/// What the first event of a file says: the format version TensorBoard reads.
pub const FILE_VERSION: &str = "brain.Event:2";

/// `Event`: the `what` oneof's members we use are plain optional fields on the wire.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    #[prost(int64, tag = "2")]
    pub step: i64,
    #[prost(string, optional, tag = "3")]
    pub file_version: Option<String>,
    #[prost(message, optional, tag = "5")]
    pub summary: Option<Summary>,
}

/// `Summary`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Summary {
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<Value>,
}

/// `Summary.Value` with a scalar. `simple_value` is optional so that 0 is still written: a
/// value without it is no scalar to a reader.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Value {
    #[prost(string, tag = "1")]
    pub tag: String,
    #[prost(float, optional, tag = "2")]
    pub simple_value: Option<f32>,
}

impl Event {
    /// The tags of the scalars this event holds.
    pub fn tags(&self) -> impl Iterator<Item = &str> {
        self.summary.iter().flat_map(|s| s.value.iter().map(|v| v.tag.as_str()))
    }
}

/// The reflected Castagnoli polynomial.
const CASTAGNOLI: u32 = 0x82f6_3b78;

const fn crc_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ CASTAGNOLI } else { c >> 1 };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

static CRC_TABLE: [u32; 256] = crc_table();

/// CRC-32C (Castagnoli) of `data`, a byte at a time: event files are small.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc = CRC_TABLE[((crc ^ b as u32) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

/// The masked CRC TFRecord stores, so that a CRC of data holding CRCs stays well spread.
pub fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c(data);
    (crc.rotate_right(15)).wrapping_add(0xa282_ead8)
}

/// `data` framed as one TFRecord.
pub fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

/// The record of the event every file starts with.
pub fn file_version_record(wall_time: f64) -> Vec<u8> {
    let e = Event { wall_time, step: 0, file_version: Some(FILE_VERSION.to_string()), summary: None };
    record(&e.encode_to_vec())
}

/// The record of one event holding `scalars` (tag, value) at `step`.
pub fn scalars_record(wall_time: f64, step: u64, scalars: &[(&str, f64)]) -> Vec<u8> {
    let value = scalars.iter().map(|&(tag, v)| Value { tag: tag.to_string(), simple_value: Some(v as f32) }).collect();
    let e = Event { wall_time, step: step as i64, file_version: None, summary: Some(Summary { value }) };
    record(&e.encode_to_vec())
}

/// The whole records at the start of `bytes`, in order, up to the first one cut short or
/// failing a checksum.
pub fn records(bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 12 {
        let (len_bytes, crc) = (&rest[..8], u32::from_le_bytes(rest[8..12].try_into().expect("4 bytes")));
        if masked_crc(len_bytes) != crc {
            break;
        }
        let len = u64::from_le_bytes(len_bytes.try_into().expect("8 bytes"));
        let Some(end) = usize::try_from(len).ok().and_then(|l| l.checked_add(16)).filter(|&e| e <= rest.len()) else {
            break;
        };
        let data = &rest[12..end - 4];
        if masked_crc(data) != u32::from_le_bytes(rest[end - 4..end].try_into().expect("4 bytes")) {
            break;
        }
        out.push(data);
        rest = &rest[end..];
    }
    out
}

/// The events of the whole records at the start of `bytes` (see [`records`]), up to the first
/// that is no `Event`.
pub fn events(bytes: &[u8]) -> Vec<Event> {
    records(bytes).into_iter().map_while(|r| Event::decode(r).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_of_the_check_string() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn records_read_back_and_stop_at_a_torn_or_corrupt_one() {
        let mut file = file_version_record(1.5);
        file.extend(scalars_record(2.0, 7, &[("train/loss", 0.0), ("lr", 0.1)]));
        let whole = file.len();
        file.extend(scalars_record(3.0, 9, &[("test/acc", 0.5)]));
        let got = events(&file);
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].file_version.as_deref(), Some(FILE_VERSION));
        assert_eq!((got[1].step, got[1].tags().collect::<Vec<_>>()), (7, vec!["train/loss", "lr"]));
        assert_eq!(got[1].summary.as_ref().unwrap().value[0].simple_value, Some(0.0));
        for cut in whole + 1..file.len() {
            assert_eq!(events(&file[..cut]).len(), 2, "cut at {cut}");
        }
        let mut bad = file.clone();
        bad[whole + 14] ^= 1;
        assert_eq!(events(&bad).len(), 2);
    }
}
