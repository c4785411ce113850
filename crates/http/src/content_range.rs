//! The `Content-Range` header (RFC 9110 §14.4): parsed when a cache reads a
//! `206` or `416` from upstream, formatted when a server answers one.
//!
//! [`parse_content_range`] reads both forms with a known length: the
//! satisfied range a `206` carries and the `bytes */LEN` of a `416`. Since
//! shoal always needs an object's size (a cache builds a manifest from it),
//! an unknown complete length (`bytes 0-99/*`) is the typed error
//! [`ContentRangeError::UnknownCompleteLength`] rather than a value.

use std::fmt;

use shoal_core::ByteSpan;

use crate::syntax::{eq_ignore_case, is_token, parse_u64_digits, trim_ows, DigitsError};

/// The longest `Content-Range` value accepted, in bytes:
/// `bytes ` plus three 20-digit numbers and separators is 70.
pub const CONTENT_RANGE_LEN_MAX_BYTES: usize = 128;

/// A satisfied byte range of a representation of known length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ContentRange {
    /// Non-empty and within `0..complete_length`.
    span: ByteSpan,
    complete_length: u64,
}

/// A parsed `Content-Range` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ContentRangeHeader {
    /// `bytes FIRST-LAST/LENGTH`, as sent with `206`.
    Range(ContentRange),
    /// `bytes */LENGTH`, as sent with `416`.
    Unsatisfied { complete_length: u64 },
}

/// Why a `Content-Range` was rejected or cannot be formatted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ContentRangeError {
    #[error("Content-Range is {len} bytes (at most {CONTENT_RANGE_LEN_MAX_BYTES})")]
    TooLong { len: usize },
    #[error("Content-Range is not in the `bytes` unit")]
    NotBytes,
    #[error("Content-Range is malformed")]
    Malformed,
    #[error("Content-Range has a number that does not fit in 64 bits")]
    NumberOverflow,
    #[error("Content-Range has an unknown complete length (`/*`)")]
    UnknownCompleteLength,
    #[error(
        "Content-Range {first}-{last}/{complete_length} is not a range within the representation"
    )]
    InvalidRange {
        first: u64,
        last: u64,
        complete_length: u64,
    },
    #[error("span {start}..{end} is empty or ends past the complete length {complete_length}")]
    InvalidSpan {
        start: u64,
        end: u64,
        complete_length: u64,
    },
}

impl ContentRange {
    /// A range `span` of a representation of `complete_length` bytes;
    /// the span must be non-empty and end at or before `complete_length`.
    pub fn new(span: ByteSpan, complete_length: u64) -> Result<Self, ContentRangeError> {
        if span.is_empty() || span.end() > complete_length {
            return Err(ContentRangeError::InvalidSpan {
                start: span.start(),
                end: span.end(),
                complete_length,
            });
        }
        Ok(Self {
            span,
            complete_length,
        })
    }

    /// The bytes this part holds (never empty).
    pub fn span(&self) -> ByteSpan {
        self.span
    }

    /// The size of the whole representation.
    pub fn complete_length(&self) -> u64 {
        self.complete_length
    }
}

impl fmt::Display for ContentRange {
    /// `bytes FIRST-LAST/LENGTH`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `span` is non-empty by construction, so `end() >= 1`.
        let last = self.span.end().saturating_sub(1);
        write!(
            f,
            "bytes {}-{}/{}",
            self.span.start(),
            last,
            self.complete_length
        )
    }
}

/// Parses a `Content-Range` value: `bytes FIRST-LAST/LENGTH` or
/// `bytes */LENGTH`. The unit is case-insensitive; one or more spaces may
/// follow it.
pub fn parse_content_range(
    value: impl AsRef<[u8]>,
) -> Result<ContentRangeHeader, ContentRangeError> {
    parse_content_range_bytes(value.as_ref())
}

fn parse_content_range_bytes(value: &[u8]) -> Result<ContentRangeHeader, ContentRangeError> {
    if value.len() > CONTENT_RANGE_LEN_MAX_BYTES {
        return Err(ContentRangeError::TooLong { len: value.len() });
    }
    let value = trim_ows(value);
    let space = value
        .iter()
        .position(|&b| b == b' ')
        .ok_or(ContentRangeError::Malformed)?;
    let (unit, rest) = value.split_at(space);
    if !is_token(unit) {
        return Err(ContentRangeError::Malformed);
    }
    if !eq_ignore_case(unit, b"bytes") {
        return Err(ContentRangeError::NotBytes);
    }
    let rest = trim_ows(rest);
    let slash = rest
        .iter()
        .position(|&b| b == b'/')
        .ok_or(ContentRangeError::Malformed)?;
    let (range, length) = rest.split_at(slash);
    let length = length.get(1..).unwrap_or_default();
    if length == b"*" {
        return Err(ContentRangeError::UnknownCompleteLength);
    }
    let complete_length = number(length)?;
    if range == b"*" {
        return Ok(ContentRangeHeader::Unsatisfied { complete_length });
    }
    let dash = range
        .iter()
        .position(|&b| b == b'-')
        .ok_or(ContentRangeError::Malformed)?;
    let (first, last) = range.split_at(dash);
    let first = number(first)?;
    let last = number(last.get(1..).unwrap_or_default())?;
    // `last < complete_length` makes `last + 1` safe.
    if first > last || last >= complete_length {
        return Err(ContentRangeError::InvalidRange {
            first,
            last,
            complete_length,
        });
    }
    let span = ByteSpan::new(first, last + 1).ok_or(ContentRangeError::InvalidRange {
        first,
        last,
        complete_length,
    })?;
    Ok(ContentRangeHeader::Range(ContentRange {
        span,
        complete_length,
    }))
}

fn number(digits: &[u8]) -> Result<u64, ContentRangeError> {
    parse_u64_digits(digits).map_err(|e| match e {
        DigitsError::NotDigits => ContentRangeError::Malformed,
        DigitsError::Overflow => ContentRangeError::NumberOverflow,
    })
}

/// `bytes FIRST-LAST/SIZE` for a `206`; fails for an empty span or one
/// past `object_size`.
pub fn format_content_range(span: ByteSpan, object_size: u64) -> Result<String, ContentRangeError> {
    ContentRange::new(span, object_size).map(|range| range.to_string())
}

/// `bytes */SIZE`, for a `416`.
pub fn format_unsatisfied(object_size: u64) -> String {
    format!("bytes */{object_size}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn span(start: u64, end: u64) -> ByteSpan {
        ByteSpan::new(start, end).expect("test span")
    }

    fn range(start: u64, end: u64, len: u64) -> ContentRangeHeader {
        ContentRangeHeader::Range(ContentRange::new(span(start, end), len).expect("test range"))
    }

    #[test]
    fn parses() {
        assert_eq!(
            parse_content_range(b"bytes 0-99/1000"),
            Ok(range(0, 100, 1000))
        );
        assert_eq!(
            parse_content_range(b"bytes 999-999/1000"),
            Ok(range(999, 1000, 1000))
        );
        assert_eq!(parse_content_range(b" Bytes  0-0/1 "), Ok(range(0, 1, 1)));
        assert_eq!(
            parse_content_range(b"bytes */1000"),
            Ok(ContentRangeHeader::Unsatisfied {
                complete_length: 1000
            })
        );
        assert_eq!(
            parse_content_range(b"bytes */0"),
            Ok(ContentRangeHeader::Unsatisfied { complete_length: 0 })
        );
        assert_eq!(
            parse_content_range(
                b"bytes 18446744073709551613-18446744073709551614/18446744073709551615"
            ),
            Ok(range(u64::MAX - 2, u64::MAX, u64::MAX))
        );
    }

    #[test]
    fn rejects() {
        let cases: &[(&[u8], ContentRangeError)] = &[
            (b"", ContentRangeError::Malformed),
            (b"bytes", ContentRangeError::Malformed),
            (b"bytes=0-99/1000", ContentRangeError::Malformed),
            (b"items 0-99/1000", ContentRangeError::NotBytes),
            (b"bytes 0-99", ContentRangeError::Malformed),
            (b"bytes 0-99/", ContentRangeError::Malformed),
            (b"bytes 0-/1000", ContentRangeError::Malformed),
            (b"bytes -99/1000", ContentRangeError::Malformed),
            (b"bytes 0 - 99/1000", ContentRangeError::Malformed),
            (b"bytes 0-99 /1000", ContentRangeError::Malformed),
            (b"bytes 0-99/1000/1", ContentRangeError::Malformed),
            (b"bytes */*", ContentRangeError::UnknownCompleteLength),
            (b"bytes 0-99/*", ContentRangeError::UnknownCompleteLength),
            (
                b"bytes 0-99/18446744073709551616",
                ContentRangeError::NumberOverflow,
            ),
            (
                b"bytes 100-99/1000",
                ContentRangeError::InvalidRange {
                    first: 100,
                    last: 99,
                    complete_length: 1000,
                },
            ),
            (
                b"bytes 0-1000/1000",
                ContentRangeError::InvalidRange {
                    first: 0,
                    last: 1000,
                    complete_length: 1000,
                },
            ),
            (
                b"bytes 0-0/0",
                ContentRangeError::InvalidRange {
                    first: 0,
                    last: 0,
                    complete_length: 0,
                },
            ),
        ];
        for (value, expected) in cases {
            assert_eq!(
                parse_content_range(value).as_ref(),
                Err(expected),
                "{:?}",
                String::from_utf8_lossy(value)
            );
        }
        let long = vec![b' '; CONTENT_RANGE_LEN_MAX_BYTES + 1];
        assert!(matches!(
            parse_content_range(&long),
            Err(ContentRangeError::TooLong { .. })
        ));
    }

    #[test]
    fn formats() {
        assert_eq!(
            format_content_range(span(0, 100), 1000).as_deref(),
            Ok("bytes 0-99/1000")
        );
        assert_eq!(
            format_content_range(span(999, 1000), 1000).as_deref(),
            Ok("bytes 999-999/1000")
        );
        assert!(format_content_range(span(5, 5), 1000).is_err());
        assert!(format_content_range(span(0, 1001), 1000).is_err());
        assert!(format_content_range(span(0, 1), 0).is_err());
        assert_eq!(format_unsatisfied(1000), "bytes */1000");
        assert_eq!(format_unsatisfied(0), "bytes */0");
    }

    proptest! {
        #[test]
        fn format_parse_round_trip(a in any::<u64>(), b in any::<u64>(), c in any::<u64>()) {
            let mut v = [a, b, c];
            v.sort_unstable();
            let [start, end, size] = v;
            if start < end {
                let text = format_content_range(span(start, end), size).expect("valid");
                prop_assert_eq!(
                    parse_content_range(text.as_bytes()),
                    Ok(range(start, end, size))
                );
            }
            prop_assert_eq!(
                parse_content_range(format_unsatisfied(size).as_bytes()),
                Ok(ContentRangeHeader::Unsatisfied { complete_length: size })
            );
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..150)) {
            if let Ok(ContentRangeHeader::Range(r)) = parse_content_range(&bytes) {
                prop_assert!(!r.span().is_empty());
                prop_assert!(r.span().end() <= r.complete_length());
            }
        }
    }
}
