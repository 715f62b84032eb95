//! Feature value codec: the [`Dtype`] of a feature, the in-memory [`FeatureValue`], and the one
//! byte encoding used both for Redis hash fields and for the bundle's embedded feature file.
//!
//! Scalars are readable text so `redis-cli HGETALL` is useful when debugging; vectors, lists and
//! maps are compact binary. Decoding never panics: any byte string either decodes to a value of
//! the requested dtype or yields a [`CodecError`].

use std::collections::BTreeMap;
use std::fmt;

use thiserror::Error;

/// The type of a feature, as declared by `dtype` (and `dim`) in `feature-defs/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dtype {
    Bool,
    I64,
    F32,
    String,
    /// Unix time in seconds.
    Timestamp,
    /// Fixed-length f32 vector; every value must have exactly `dim` elements.
    F32Vec {
        dim: usize,
    },
    I64List,
    StringList,
    /// String → f32.
    F32Map,
}

impl Dtype {
    /// Every dtype name accepted in `feature-defs/` (for error messages).
    pub const NAMES: &'static [&'static str] = &[
        "bool",
        "i64",
        "f32",
        "string",
        "timestamp",
        "f32_vec",
        "i64_list",
        "string_list",
        "f32_map",
    ];

    /// The name used in `feature-defs/` (`f32_vec` without its dim).
    pub fn name(&self) -> &'static str {
        match self {
            Dtype::Bool => "bool",
            Dtype::I64 => "i64",
            Dtype::F32 => "f32",
            Dtype::String => "string",
            Dtype::Timestamp => "timestamp",
            Dtype::F32Vec { .. } => "f32_vec",
            Dtype::I64List => "i64_list",
            Dtype::StringList => "string_list",
            Dtype::F32Map => "f32_map",
        }
    }

    /// The `dim` of an `f32_vec`, `None` for every other dtype.
    pub fn dim(&self) -> Option<usize> {
        match self {
            Dtype::F32Vec { dim } => Some(*dim),
            _ => None,
        }
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dtype::F32Vec { dim } => write!(f, "f32_vec[{dim}]"),
            other => f.write_str(other.name()),
        }
    }
}

/// One feature value; one variant per [`Dtype`].
#[derive(Debug, Clone, PartialEq)]
pub enum FeatureValue {
    Bool(bool),
    I64(i64),
    F32(f32),
    String(String),
    /// Unix time in seconds.
    Timestamp(i64),
    F32Vec(Vec<f32>),
    I64List(Vec<i64>),
    StringList(Vec<String>),
    /// Ordered so that encoding is deterministic.
    F32Map(BTreeMap<String, f32>),
}

impl FeatureValue {
    /// The dtype name of this value's variant (`f32_vec` without a dim).
    pub fn dtype_name(&self) -> &'static str {
        match self {
            FeatureValue::Bool(_) => "bool",
            FeatureValue::I64(_) => "i64",
            FeatureValue::F32(_) => "f32",
            FeatureValue::String(_) => "string",
            FeatureValue::Timestamp(_) => "timestamp",
            FeatureValue::F32Vec(_) => "f32_vec",
            FeatureValue::I64List(_) => "i64_list",
            FeatureValue::StringList(_) => "string_list",
            FeatureValue::F32Map(_) => "f32_map",
        }
    }

    /// Whether this value is a valid value of `dtype` (variant matches; vector length == dim).
    pub fn conforms_to(&self, dtype: &Dtype) -> bool {
        match (self, dtype) {
            (FeatureValue::F32Vec(v), Dtype::F32Vec { dim }) => v.len() == *dim,
            (FeatureValue::Bool(_), Dtype::Bool)
            | (FeatureValue::I64(_), Dtype::I64)
            | (FeatureValue::F32(_), Dtype::F32)
            | (FeatureValue::String(_), Dtype::String)
            | (FeatureValue::Timestamp(_), Dtype::Timestamp)
            | (FeatureValue::I64List(_), Dtype::I64List)
            | (FeatureValue::StringList(_), Dtype::StringList)
            | (FeatureValue::F32Map(_), Dtype::F32Map) => true,
            _ => false,
        }
    }

    /// Equality that treats every NaN as equal to every NaN (the text encoding of an `f32` does
    /// not keep NaN payloads), used to check round trips and read-after-write verification.
    pub fn same_as(&self, other: &FeatureValue) -> bool {
        fn f(a: f32, b: f32) -> bool {
            a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
        }
        match (self, other) {
            (FeatureValue::F32(a), FeatureValue::F32(b)) => f(*a, *b),
            (FeatureValue::F32Vec(a), FeatureValue::F32Vec(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| f(*x, *y))
            }
            (FeatureValue::F32Map(a), FeatureValue::F32Map(b)) => {
                a.len() == b.len()
                    && a.iter()
                        .zip(b)
                        .all(|((ka, va), (kb, vb))| ka == kb && f(*va, *vb))
            }
            (a, b) => a == b,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            FeatureValue::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The integer of an `i64` or `timestamp` value.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            FeatureValue::I64(v) | FeatureValue::Timestamp(v) => Some(*v),
            _ => None,
        }
    }

    pub fn as_f32(&self) -> Option<f32> {
        match self {
            FeatureValue::F32(v) => Some(*v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            FeatureValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_f32_slice(&self) -> Option<&[f32]> {
        match self {
            FeatureValue::F32Vec(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_i64_slice(&self) -> Option<&[i64]> {
        match self {
            FeatureValue::I64List(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_string_list(&self) -> Option<&[String]> {
        match self {
            FeatureValue::StringList(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_f32_map(&self) -> Option<&BTreeMap<String, f32>> {
        match self {
            FeatureValue::F32Map(m) => Some(m),
            _ => None,
        }
    }
}

/// Why a byte string is not a valid encoding of the requested dtype.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CodecError {
    #[error("{dtype}: bytes are not valid UTF-8")]
    Utf8 { dtype: &'static str },
    #[error("{dtype}: cannot parse {text:?}")]
    Scalar { dtype: &'static str, text: String },
    #[error("{dtype}: {len} bytes is not a multiple of {width}")]
    Width {
        dtype: &'static str,
        len: usize,
        width: usize,
    },
    #[error("f32_vec: expected {expected} elements, got {got}")]
    Dim { expected: usize, got: usize },
    #[error("{dtype}: truncated at byte {offset}")]
    Truncated { dtype: &'static str, offset: usize },
    #[error("{dtype}: length prefix at byte {offset} overflows")]
    LengthOverflow { dtype: &'static str, offset: usize },
    #[error("f32_map: duplicate key {key:?}")]
    DuplicateKey { key: String },
}

/// Encodes `value` (the value carries its own dtype; see the module docs for the format).
pub fn encode(value: &FeatureValue) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(value, &mut out);
    out
}

/// Appends the encoding of `value` to `out`.
pub fn encode_into(value: &FeatureValue, out: &mut Vec<u8>) {
    match value {
        FeatureValue::Bool(b) => out.push(if *b { b'1' } else { b'0' }),
        FeatureValue::I64(v) | FeatureValue::Timestamp(v) => {
            out.extend_from_slice(v.to_string().as_bytes())
        }
        // Display prints the shortest text that parses back to the same f32 (NaN/inf included).
        FeatureValue::F32(v) => out.extend_from_slice(v.to_string().as_bytes()),
        FeatureValue::String(s) => out.extend_from_slice(s.as_bytes()),
        FeatureValue::F32Vec(v) => {
            out.reserve(v.len() * 4);
            for x in v {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
        FeatureValue::I64List(v) => {
            out.reserve(v.len() * 8);
            for x in v {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
        FeatureValue::StringList(v) => {
            for s in v {
                put_varint(out, s.len() as u64);
                out.extend_from_slice(s.as_bytes());
            }
        }
        FeatureValue::F32Map(m) => {
            for (k, x) in m {
                put_varint(out, k.len() as u64);
                out.extend_from_slice(k.as_bytes());
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
    }
}

/// Decodes `bytes` as a value of `dtype`; checks the dim of `f32_vec`.
pub fn decode(dtype: &Dtype, bytes: &[u8]) -> Result<FeatureValue, CodecError> {
    let name = dtype.name();
    match dtype {
        Dtype::Bool => match bytes {
            b"1" => Ok(FeatureValue::Bool(true)),
            b"0" => Ok(FeatureValue::Bool(false)),
            _ => Err(scalar_err(name, bytes)),
        },
        Dtype::I64 => parse_text::<i64>(name, bytes).map(FeatureValue::I64),
        Dtype::Timestamp => parse_text::<i64>(name, bytes).map(FeatureValue::Timestamp),
        Dtype::F32 => parse_text::<f32>(name, bytes).map(FeatureValue::F32),
        Dtype::String => std::str::from_utf8(bytes)
            .map(|s| FeatureValue::String(s.to_owned()))
            .map_err(|_| CodecError::Utf8 { dtype: name }),
        Dtype::F32Vec { dim } => {
            let v = fixed_width(name, bytes, 4, |c| {
                f32::from_le_bytes([c[0], c[1], c[2], c[3]])
            })?;
            if v.len() != *dim {
                return Err(CodecError::Dim {
                    expected: *dim,
                    got: v.len(),
                });
            }
            Ok(FeatureValue::F32Vec(v))
        }
        Dtype::I64List => fixed_width(name, bytes, 8, |c| {
            i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])
        })
        .map(FeatureValue::I64List),
        Dtype::StringList => {
            let mut r = Reader::new(name, bytes);
            let mut out = Vec::new();
            while !r.is_done() {
                out.push(r.string()?);
            }
            Ok(FeatureValue::StringList(out))
        }
        Dtype::F32Map => {
            let mut r = Reader::new(name, bytes);
            let mut out = BTreeMap::new();
            while !r.is_done() {
                let key = r.string()?;
                let c = r.take(4)?;
                let x = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                if out.contains_key(&key) {
                    return Err(CodecError::DuplicateKey { key });
                }
                out.insert(key, x);
            }
            Ok(FeatureValue::F32Map(out))
        }
    }
}

fn scalar_err(dtype: &'static str, bytes: &[u8]) -> CodecError {
    // Cap the echoed text: a garbage value may be megabytes long.
    let text: String = String::from_utf8_lossy(bytes).chars().take(64).collect();
    CodecError::Scalar { dtype, text }
}

fn parse_text<T: std::str::FromStr>(dtype: &'static str, bytes: &[u8]) -> Result<T, CodecError> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse::<T>().ok())
        .ok_or_else(|| scalar_err(dtype, bytes))
}

fn fixed_width<T>(
    dtype: &'static str,
    bytes: &[u8],
    width: usize,
    f: impl Fn(&[u8]) -> T,
) -> Result<Vec<T>, CodecError> {
    if !bytes.len().is_multiple_of(width) {
        return Err(CodecError::Width {
            dtype,
            len: bytes.len(),
            width,
        });
    }
    // chunks_exact yields slices of exactly `width` bytes, so the indexing in `f` is in bounds.
    Ok(bytes.chunks_exact(width).map(f).collect())
}

/// LEB128: 1 byte for lengths < 128, so short strings cost one byte of framing.
fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Bounds-checked cursor over untrusted bytes.
struct Reader<'a> {
    dtype: &'static str,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(dtype: &'static str, bytes: &'a [u8]) -> Self {
        Reader {
            dtype,
            bytes,
            pos: 0,
        }
    }

    fn is_done(&self) -> bool {
        self.pos >= self.bytes.len()
    }

    fn truncated(&self) -> CodecError {
        CodecError::Truncated {
            dtype: self.dtype,
            offset: self.pos,
        }
    }

    fn varint(&mut self) -> Result<u64, CodecError> {
        let start = self.pos;
        let mut v = 0u64;
        for i in 0..10 {
            let b = *self.bytes.get(self.pos).ok_or_else(|| self.truncated())?;
            self.pos += 1;
            // The 10th byte may only carry the top bit of a u64.
            if i == 9 && b > 1 {
                break;
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(CodecError::LengthOverflow {
            dtype: self.dtype,
            offset: start,
        })
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], CodecError> {
        let end = self
            .pos
            .checked_add(len)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| self.truncated())?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn string(&mut self) -> Result<String, CodecError> {
        let len = self.varint()?;
        // A length beyond the remaining bytes is truncation; checked before any allocation.
        let len = usize::try_from(len).map_err(|_| self.truncated())?;
        let s = self.take(len)?;
        std::str::from_utf8(s)
            .map(str::to_owned)
            .map_err(|_| CodecError::Utf8 { dtype: self.dtype })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_are_readable_text() {
        assert_eq!(encode(&FeatureValue::Bool(true)), b"1");
        assert_eq!(encode(&FeatureValue::I64(-42)), b"-42");
        assert_eq!(encode(&FeatureValue::F32(0.1)), b"0.1");
        assert_eq!(
            encode(&FeatureValue::Timestamp(1_700_000_000)),
            b"1700000000"
        );
    }

    #[test]
    fn varint_overflow_is_an_error() {
        let bytes = [0xffu8; 11];
        assert!(matches!(
            decode(&Dtype::StringList, &bytes),
            Err(CodecError::LengthOverflow { .. })
        ));
        // A huge but well-formed length must not allocate; it is truncation.
        let mut huge = Vec::new();
        put_varint(&mut huge, u64::MAX);
        assert!(matches!(
            decode(&Dtype::StringList, &huge),
            Err(CodecError::Truncated { .. })
        ));
    }
}
