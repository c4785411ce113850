//! Bencoding (BEP 3), strict and bounded: what BEP 10's extension
//! handshake and the tracker speak.
//!
//! Only the canonical form is accepted — integers without leading zeros
//! or `-0`, dictionary keys sorted and unique — so every value has one
//! encoding and re-encoding a decoded value gives the same bytes. Nesting
//! is limited to [`DEPTH_MAX`] and the input to what the caller passes
//! (each message's own length limit), so a hostile peer cannot make the
//! decoder recurse or allocate without bound.

use std::collections::BTreeMap;

/// Deepest nesting of lists and dictionaries accepted.
pub const DEPTH_MAX: usize = 16;

/// A bencoded value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Int(i64),
    Bytes(Vec<u8>),
    List(Vec<Value>),
    Dict(BTreeMap<Vec<u8>, Value>),
}

/// Why bytes are not canonical bencoding (the sender's fault).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BencodeError {
    #[error("bencoding ends early")]
    Truncated,
    #[error("bencoding has {0} bytes after the value")]
    Trailing(usize),
    #[error("bencoding nests deeper than {DEPTH_MAX}")]
    TooDeep,
    #[error("bad bencoded integer")]
    BadInt,
    #[error("bad bencoded string length")]
    BadLength,
    #[error("bencoded dictionary keys are not sorted and unique")]
    UnsortedKeys,
    #[error("unexpected byte {0:#04x} in bencoding")]
    Unexpected(u8),
}

impl Value {
    /// Decodes one value that spans all of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Value, BencodeError> {
        let mut at = 0;
        let value = parse(bytes, &mut at, 0)?;
        if at != bytes.len() {
            return Err(BencodeError::Trailing(bytes.len() - at));
        }
        Ok(value)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Value::Int(n) => {
                out.push(b'i');
                out.extend_from_slice(n.to_string().as_bytes());
                out.push(b'e');
            }
            Value::Bytes(bytes) => {
                out.extend_from_slice(bytes.len().to_string().as_bytes());
                out.push(b':');
                out.extend_from_slice(bytes);
            }
            Value::List(items) => {
                out.push(b'l');
                for item in items {
                    item.encode_into(out);
                }
                out.push(b'e');
            }
            Value::Dict(entries) => {
                out.push(b'd');
                for (key, value) in entries {
                    Value::Bytes(key.clone()).encode_into(out);
                    value.encode_into(out);
                }
                out.push(b'e');
            }
        }
    }

    /// The value under `key`, if this is a dictionary that has one.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(entries) => entries.get(key.as_bytes()),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(n) => Some(*n),
            _ => None,
        }
    }

    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bytes(bytes) => Some(bytes),
            _ => None,
        }
    }
}

fn parse(bytes: &[u8], at: &mut usize, depth: usize) -> Result<Value, BencodeError> {
    let first = *bytes.get(*at).ok_or(BencodeError::Truncated)?;
    match first {
        b'i' => {
            *at += 1;
            let end = find(bytes, *at, b'e')?;
            let digits = &bytes[*at..end];
            *at = end + 1;
            parse_int(digits).map(Value::Int)
        }
        b'0'..=b'9' => parse_bytes(bytes, at).map(Value::Bytes),
        b'l' | b'd' => {
            if depth >= DEPTH_MAX {
                return Err(BencodeError::TooDeep);
            }
            *at += 1;
            let mut list = Vec::new();
            let mut dict = BTreeMap::new();
            loop {
                match bytes.get(*at) {
                    None => return Err(BencodeError::Truncated),
                    Some(b'e') => {
                        *at += 1;
                        break;
                    }
                    Some(_) if first == b'l' => list.push(parse(bytes, at, depth + 1)?),
                    Some(_) => {
                        let key = parse_bytes(bytes, at)?;
                        if dict.last_key_value().is_some_and(|(last, _)| *last >= key) {
                            return Err(BencodeError::UnsortedKeys);
                        }
                        let value = parse(bytes, at, depth + 1)?;
                        dict.insert(key, value);
                    }
                }
            }
            Ok(if first == b'l' {
                Value::List(list)
            } else {
                Value::Dict(dict)
            })
        }
        other => Err(BencodeError::Unexpected(other)),
    }
}

fn find(bytes: &[u8], from: usize, byte: u8) -> Result<usize, BencodeError> {
    bytes
        .get(from..)
        .and_then(|rest| rest.iter().position(|b| *b == byte))
        .map(|offset| from + offset)
        .ok_or(BencodeError::Truncated)
}

fn parse_int(digits: &[u8]) -> Result<i64, BencodeError> {
    let (negative, magnitude) = match digits.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, digits),
    };
    let canonical = !magnitude.is_empty()
        && magnitude.iter().all(u8::is_ascii_digit)
        && (magnitude == b"0" || magnitude[0] != b'0')
        && !(negative && magnitude == b"0");
    if !canonical {
        return Err(BencodeError::BadInt);
    }
    std::str::from_utf8(digits)
        .ok()
        .and_then(|text| text.parse::<i64>().ok())
        .ok_or(BencodeError::BadInt)
}

fn parse_bytes(bytes: &[u8], at: &mut usize) -> Result<Vec<u8>, BencodeError> {
    let colon = find(bytes, *at, b':')?;
    let digits = &bytes[*at..colon];
    let canonical = !digits.is_empty()
        && digits.len() <= 10
        && digits.iter().all(u8::is_ascii_digit)
        && (digits == b"0" || digits[0] != b'0');
    if !canonical {
        return Err(BencodeError::BadLength);
    }
    let length: usize = std::str::from_utf8(digits)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or(BencodeError::BadLength)?;
    // The length is checked against what is there before anything is
    // copied.
    let start = colon + 1;
    let end = start.checked_add(length).ok_or(BencodeError::BadLength)?;
    let body = bytes.get(start..end).ok_or(BencodeError::Truncated)?;
    *at = end;
    Ok(body.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn canonical_values_round_trip() {
        let text = b"d1:md11:ut_metadatai3e6:ut_pexi1ee1:pi6881e1:v9:shoal 0.1e";
        let value = Value::decode(text).unwrap();
        assert_eq!(value.get("p").and_then(Value::as_int), Some(6881));
        assert_eq!(
            value
                .get("m")
                .and_then(|m| m.get("ut_pex"))
                .and_then(Value::as_int),
            Some(1)
        );
        assert_eq!(value.encode(), text);
        assert_eq!(
            Value::decode(b"li-42e0:lee").unwrap(),
            Value::List(vec![
                Value::Int(-42),
                Value::Bytes(vec![]),
                Value::List(vec![])
            ])
        );
    }

    #[test]
    fn anything_not_canonical_is_refused() {
        for (bad, why) in [
            (&b"i03e"[..], BencodeError::BadInt),
            (b"i-0e", BencodeError::BadInt),
            (b"ie", BencodeError::BadInt),
            (b"i99999999999999999999e", BencodeError::BadInt),
            (b"03:abc", BencodeError::BadLength),
            (b"5:abc", BencodeError::Truncated),
            (b"99999999999:x", BencodeError::BadLength),
            (b"d1:bi1e1:ai2ee", BencodeError::UnsortedKeys),
            (b"d1:ai1e1:ai2ee", BencodeError::UnsortedKeys),
            (b"i1ei2e", BencodeError::Trailing(3)),
            (b"l", BencodeError::Truncated),
            (b"x", BencodeError::Unexpected(b'x')),
        ] {
            assert_eq!(
                Value::decode(bad),
                Err(why),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let deep = [vec![b'l'; DEPTH_MAX + 1], vec![b'e'; DEPTH_MAX + 1]].concat();
        assert_eq!(Value::decode(&deep), Err(BencodeError::TooDeep));
        let ok = [vec![b'l'; DEPTH_MAX], vec![b'e'; DEPTH_MAX]].concat();
        assert!(Value::decode(&ok).is_ok());
    }

    proptest! {
        /// Whatever is accepted re-encodes to the very same bytes.
        #[test]
        fn accepted_bytes_are_canonical(bytes in proptest::collection::vec(
            prop_oneof![Just(b'i'), Just(b'e'), Just(b'l'), Just(b'd'), Just(b':'), Just(b'-'), 0x30u8..0x3a, any::<u8>()],
            0..40,
        )) {
            if let Ok(value) = Value::decode(&bytes) {
                prop_assert_eq!(value.encode(), bytes);
            }
        }
    }
}
