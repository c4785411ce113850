//! The `Range` request header (RFC 9110 §14.1–§14.2) and its resolution
//! against an object's size.
//!
//! Two steps, so that parsing needs no knowledge of the object:
//!
//! 1. [`parse_range`] turns the header value into a [`RangeHeader`]: either a
//!    bounded, syntactically valid [`RangeSet`] of `bytes` specs, or
//!    [`RangeHeader::OtherUnit`].
//! 2. [`resolve_ranges`] turns the specs into concrete [`ByteSpan`]s for an
//!    object of known size: one span, several sorted disjoint spans, or
//!    "unsatisfiable".
//!
//! [`select_ranges`] does both and applies the policy below, so a server
//! only has to act on the [`RangeResolution`].
//!
//! # Policy
//!
//! - **Unknown range unit → ignore the header** and answer `200` with the
//!   whole object, as RFC 9110 §14.2 requires of an origin server.
//! - **Malformed `bytes` range → `416`** with `Content-Range: bytes */LEN`.
//!   RFC 9110 §14.2 lets a server either ignore or reject an invalid
//!   ranges-specifier; we reject so that a client mistake gets a clear 4xx
//!   instead of silently receiving (possibly gigabytes of) the whole object.
//!   Too many specs ([`RANGE_COUNT_MAX`]) and over-long headers
//!   ([`RANGE_HEADER_LEN_MAX_BYTES`]) are rejected the same way.
//! - **No satisfiable spec → `416`** (RFC 9110 §14.1.2, §15.5.17). For an
//!   empty object every spec is unsatisfiable.
//! - **Several specs → sorted and coalesced.** Overlapping or adjacent spans
//!   are merged and the result is sorted by offset. RFC 9110 §14.2 asks
//!   (SHOULD) for the request order to be kept, but also allows coalescing;
//!   sorting is what makes coalescing total and bounds the response to at
//!   most the object's size, whatever overlap a client asks for. Each part
//!   carries its own `Content-Range`, so clients can place it. If the spans
//!   collapse into one, the answer is a single-part `206`.
//! - **Empty list elements** (`bytes=0-1,,5-6`) are skipped, as RFC 9110
//!   §5.6.1.2 requires of recipients; a set with no spec at all is malformed.

use std::ops::Deref;

use shoal_core::ByteSpan;

use crate::syntax::{eq_ignore_case, is_ows, is_token, parse_u64_digits, trim_ows, DigitsError};

/// The most range specs one header may hold. More is an error (`416`): a
/// long list of small ranges is a classic amplification attack (RFC 9110
/// §17.15).
pub const RANGE_COUNT_MAX: usize = 16;

/// The longest `Range` header value accepted, in bytes. Sixteen specs with
/// two 20-digit numbers each fit in well under this.
pub const RANGE_HEADER_LEN_MAX_BYTES: usize = 1024;

/// One `range-spec` of the `bytes` unit, as written by the client
/// (positions are inclusive, as in HTTP).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RangeSpec {
    /// `first-last`, both inclusive. Parsing guarantees `first <= last`.
    FromTo { first: u64, last: u64 },
    /// `first-`: from `first` to the end.
    From { first: u64 },
    /// `-len`: the last `len` bytes.
    Suffix { len: u64 },
}

impl RangeSpec {
    /// The span this spec selects in an object of `object_size` bytes, or
    /// `None` if the spec is unsatisfiable there (RFC 9110 §14.1.2).
    ///
    /// Never returns an empty span and never a span past `object_size`.
    pub fn resolve(&self, object_size: u64) -> Option<ByteSpan> {
        // `object_size - 1` below cannot underflow: every arm returns early
        // for an empty object, where no spec is satisfiable.
        if object_size == 0 {
            return None;
        }
        match *self {
            RangeSpec::FromTo { first, last } => {
                if first > last || first >= object_size {
                    return None;
                }
                let last = last.min(object_size - 1);
                ByteSpan::new(first, last + 1)
            }
            RangeSpec::From { first } => {
                if first >= object_size {
                    return None;
                }
                ByteSpan::new(first, object_size)
            }
            RangeSpec::Suffix { len } => {
                if len == 0 {
                    return None;
                }
                ByteSpan::new(object_size.saturating_sub(len), object_size)
            }
        }
    }
}

/// A non-empty, bounded list of `bytes` range specs (at most
/// [`RANGE_COUNT_MAX`]), in request order.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RangeSet {
    specs: Vec<RangeSpec>,
}

impl RangeSet {
    /// Checks the invariants a parsed header has: 1 to [`RANGE_COUNT_MAX`]
    /// specs, and `first <= last` in every [`RangeSpec::FromTo`].
    pub fn new(specs: Vec<RangeSpec>) -> Result<Self, RangeError> {
        if specs.is_empty() {
            return Err(RangeError::NoRanges);
        }
        if specs.len() > RANGE_COUNT_MAX {
            return Err(RangeError::TooManyRanges { count: specs.len() });
        }
        for (index, spec) in specs.iter().enumerate() {
            if let RangeSpec::FromTo { first, last } = *spec {
                if first > last {
                    return Err(RangeError::FirstAfterLast { index, first, last });
                }
            }
        }
        Ok(Self { specs })
    }

    /// The specs, in request order.
    pub fn specs(&self) -> &[RangeSpec] {
        &self.specs
    }

    /// Shorthand for [`resolve_ranges`] on these specs.
    pub fn resolve(&self, object_size: u64) -> RangeResolution {
        resolve_ranges(&self.specs, object_size)
    }
}

impl Deref for RangeSet {
    type Target = [RangeSpec];

    fn deref(&self) -> &[RangeSpec] {
        &self.specs
    }
}

/// A parsed `Range` header.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RangeHeader {
    /// A valid `bytes=` range set.
    Bytes(RangeSet),
    /// A syntactically plausible header in a unit other than `bytes`. The
    /// caller ignores the header and serves the whole object (`200`).
    OtherUnit,
}

/// Why a `Range` header was rejected. Every variant is a client mistake:
/// the caller answers `416` with `Content-Range: bytes */LEN`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error("Range header is {len} bytes (at most {RANGE_HEADER_LEN_MAX_BYTES})")]
    TooLong { len: usize },
    #[error("Range header has no `unit=` prefix")]
    MissingUnit,
    #[error("Range header unit is not a valid token")]
    InvalidUnit,
    #[error("Range header has no range spec")]
    NoRanges,
    #[error("Range header has more than {RANGE_COUNT_MAX} range specs (at least {count})")]
    TooManyRanges { count: usize },
    /// `index` counts list elements from 0, empty ones included.
    #[error("range spec #{index} is malformed")]
    MalformedSpec { index: usize },
    #[error("range spec #{index} has first position {first} after last position {last}")]
    FirstAfterLast { index: usize, first: u64, last: u64 },
}

/// Parses a `Range` request header value (RFC 9110 §14.2):
/// `range-unit "=" range-set`, where the `bytes` unit is understood.
///
/// The unit is case-insensitive. Optional whitespace is accepted around
/// commas, after `=` and around the whole value, as the list rule allows;
/// not inside a spec nor before `=`.
pub fn parse_range(value: impl AsRef<[u8]>) -> Result<RangeHeader, RangeError> {
    parse_range_bytes(value.as_ref())
}

fn parse_range_bytes(value: &[u8]) -> Result<RangeHeader, RangeError> {
    if value.len() > RANGE_HEADER_LEN_MAX_BYTES {
        return Err(RangeError::TooLong { len: value.len() });
    }
    let value = trim_ows(value);
    let equals = value
        .iter()
        .position(|&b| b == b'=')
        .ok_or(RangeError::MissingUnit)?;
    let (unit, rest) = value.split_at(equals);
    let range_set = rest.get(1..).unwrap_or_default();
    if !is_token(unit) {
        return Err(RangeError::InvalidUnit);
    }
    if !eq_ignore_case(unit, b"bytes") {
        return Ok(RangeHeader::OtherUnit);
    }

    let mut specs = Vec::new();
    for (index, element) in range_set.split(|&b| b == b',').enumerate() {
        let element = trim_ows(element);
        if element.is_empty() {
            continue;
        }
        if specs.len() == RANGE_COUNT_MAX {
            return Err(RangeError::TooManyRanges {
                count: RANGE_COUNT_MAX + 1,
            });
        }
        specs.push(parse_spec(element, index)?);
    }
    RangeSet::new(specs).map(RangeHeader::Bytes)
}

/// Parses one non-empty, trimmed `range-spec`: `first-[last]` or `-len`.
fn parse_spec(element: &[u8], index: usize) -> Result<RangeSpec, RangeError> {
    // A position past 2^64 - 1 is past the end of any object: it saturates
    // (RFC 9110 §14.1.1: a last position at or past the length means "to
    // the end"; a first position there is unsatisfiable; a longer suffix
    // than the object is the whole object).
    let number = |digits: &[u8]| match parse_u64_digits(digits) {
        Ok(value) => Ok(value),
        Err(DigitsError::Overflow) => Ok(u64::MAX),
        Err(DigitsError::NotDigits) => Err(RangeError::MalformedSpec { index }),
    };
    if element.iter().any(|&b| is_ows(b)) {
        return Err(RangeError::MalformedSpec { index });
    }
    let dash = element
        .iter()
        .position(|&b| b == b'-')
        .ok_or(RangeError::MalformedSpec { index })?;
    let (first, rest) = element.split_at(dash);
    let last = rest.get(1..).unwrap_or_default();
    if first.is_empty() {
        return Ok(RangeSpec::Suffix { len: number(last)? });
    }
    let first = number(first)?;
    if last.is_empty() {
        return Ok(RangeSpec::From { first });
    }
    let last = number(last)?;
    if first > last {
        return Err(RangeError::FirstAfterLast { index, first, last });
    }
    Ok(RangeSpec::FromTo { first, last })
}

/// What to send for a GET: the whole object, some ranges of it, or `416`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RangeResolution {
    /// Send the whole representation with `200`: there is no `Range`, it is
    /// in another unit, or an `If-Range` did not match. Only
    /// [`select_ranges`] returns this; [`resolve_ranges`] never does.
    Full,
    /// One span: answer `206` with a single `Content-Range`. It may cover the
    /// whole object (`bytes=0-`); that is still a `206`.
    Single(ByteSpan),
    /// Two or more non-empty spans, sorted by offset, pairwise disjoint and
    /// non-adjacent: answer `206` with `multipart/byteranges`.
    Multi(Vec<ByteSpan>),
    /// No spec is satisfiable: answer `416` with `Content-Range: bytes */LEN`.
    Unsatisfiable,
}

/// Decides how to answer a GET for an object of `object_size` bytes, given
/// its `Range` header value (if any) and whether ranges are allowed (false
/// when an `If-Range` did not match, see
/// [`Precondition::Proceed`](crate::conditional::Precondition::Proceed)).
///
/// Applies the [module policy](self): no header, not allowed, or another
/// unit → [`RangeResolution::Full`]; a malformed header →
/// [`RangeResolution::Unsatisfiable`]; otherwise [`resolve_ranges`].
pub fn select_ranges(
    range_header: Option<&[u8]>,
    range_allowed: bool,
    object_size: u64,
) -> RangeResolution {
    match range_header {
        Some(value) if range_allowed => match parse_range(value) {
            Ok(RangeHeader::Bytes(set)) => set.resolve(object_size),
            Ok(RangeHeader::OtherUnit) => RangeResolution::Full,
            Err(_) => RangeResolution::Unsatisfiable,
        },
        _ => RangeResolution::Full,
    }
}

/// Resolves range specs against an object of `object_size` bytes
/// (RFC 9110 §14.1.2): unsatisfiable specs are dropped, positions are
/// clamped to the object, the remaining spans are sorted and coalesced.
///
/// Accepts any slice, including one no parser produced: an empty slice or an
/// inverted [`RangeSpec::FromTo`] simply contributes nothing.
pub fn resolve_ranges(specs: &[RangeSpec], object_size: u64) -> RangeResolution {
    let mut spans: Vec<ByteSpan> = specs
        .iter()
        .filter_map(|spec| spec.resolve(object_size))
        .collect();
    spans.sort_unstable();

    let mut merged: Vec<ByteSpan> = Vec::with_capacity(spans.len());
    for span in spans {
        match merged.last_mut() {
            // Sorted by start, so `span.start() >= last.start()`; it overlaps
            // or touches `last` exactly when it starts at or before its end.
            Some(last) if span.start() <= last.end() => {
                if let Some(joined) = ByteSpan::new(last.start(), last.end().max(span.end())) {
                    *last = joined;
                }
            }
            _ => merged.push(span),
        }
    }

    match merged.len() {
        0 => RangeResolution::Unsatisfiable,
        1 => merged
            .first()
            .copied()
            .map_or(RangeResolution::Unsatisfiable, RangeResolution::Single),
        _ => RangeResolution::Multi(merged),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn span(start: u64, end: u64) -> ByteSpan {
        ByteSpan::new(start, end).expect("test span")
    }

    fn specs(value: &str) -> Vec<RangeSpec> {
        match parse_range(value.as_bytes()) {
            Ok(RangeHeader::Bytes(set)) => set.specs().to_vec(),
            other => panic!("{value:?} parsed to {other:?}"),
        }
    }

    #[test]
    fn parses_the_three_forms() {
        assert_eq!(
            specs("bytes=0-499"),
            [RangeSpec::FromTo {
                first: 0,
                last: 499
            }]
        );
        assert_eq!(specs("bytes=9500-"), [RangeSpec::From { first: 9500 }]);
        assert_eq!(specs("bytes=-500"), [RangeSpec::Suffix { len: 500 }]);
        assert_eq!(specs("bytes=-0"), [RangeSpec::Suffix { len: 0 }]);
        assert_eq!(
            specs("bytes=0-0,-1"),
            [
                RangeSpec::FromTo { first: 0, last: 0 },
                RangeSpec::Suffix { len: 1 }
            ]
        );
    }

    #[test]
    fn unit_is_case_insensitive_and_other_units_are_ignored() {
        assert_eq!(
            specs("BYTES=1-2"),
            [RangeSpec::FromTo { first: 1, last: 2 }]
        );
        assert_eq!(specs("Bytes=1-"), [RangeSpec::From { first: 1 }]);
        assert_eq!(parse_range(b"items=0-5"), Ok(RangeHeader::OtherUnit));
        assert_eq!(parse_range(b"none=whatever"), Ok(RangeHeader::OtherUnit));
    }

    #[test]
    fn whitespace_around_commas_and_empty_elements() {
        assert_eq!(
            specs(" bytes=0-1 ,\t2-3,  ,4-, -5 "),
            [
                RangeSpec::FromTo { first: 0, last: 1 },
                RangeSpec::FromTo { first: 2, last: 3 },
                RangeSpec::From { first: 4 },
                RangeSpec::Suffix { len: 5 },
            ]
        );
        assert_eq!(
            specs("bytes=,0-1,"),
            [RangeSpec::FromTo { first: 0, last: 1 }]
        );
        // The list rule's OWS is also tolerated right after `=`.
        assert_eq!(
            specs("bytes= 0-1"),
            [RangeSpec::FromTo { first: 0, last: 1 }]
        );
    }

    #[test]
    fn rejects_malformed() {
        let cases: &[(&[u8], RangeError)] = &[
            (b"", RangeError::MissingUnit),
            (b"bytes", RangeError::MissingUnit),
            (b"0-5", RangeError::MissingUnit),
            (b"=0-5", RangeError::InvalidUnit),
            (b"by tes=0-5", RangeError::InvalidUnit),
            (b"bytes =0-5", RangeError::InvalidUnit),
            (b"bytes=", RangeError::NoRanges),
            (b"bytes= , ,", RangeError::NoRanges),
            (b"bytes=-", RangeError::MalformedSpec { index: 0 }),
            (b"bytes=5", RangeError::MalformedSpec { index: 0 }),
            (b"bytes=a-5", RangeError::MalformedSpec { index: 0 }),
            (b"bytes=0-5,x", RangeError::MalformedSpec { index: 1 }),
            (b"bytes=0 -5", RangeError::MalformedSpec { index: 0 }),
            (b"bytes=0- 5", RangeError::MalformedSpec { index: 0 }),
            (b"bytes=0-5-6", RangeError::MalformedSpec { index: 0 }),
            (b"bytes=--5", RangeError::MalformedSpec { index: 0 }),
            (b"bytes=+1-2", RangeError::MalformedSpec { index: 0 }),
            (b"bytes=0x10-", RangeError::MalformedSpec { index: 0 }),
            (b"bytes=0-5;q=1", RangeError::MalformedSpec { index: 0 }),
            (b"bytes=0-5\r\n", RangeError::MalformedSpec { index: 0 }),
            (b"bytes=\xff-1", RangeError::MalformedSpec { index: 0 }),
            (
                b"bytes=5-4",
                RangeError::FirstAfterLast {
                    index: 0,
                    first: 5,
                    last: 4,
                },
            ),
        ];
        for (value, expected) in cases {
            assert_eq!(
                parse_range(value).as_ref(),
                Err(expected),
                "{:?}",
                String::from_utf8_lossy(value)
            );
        }
    }

    #[test]
    fn accepts_u64_max_and_leading_zeros() {
        assert_eq!(
            specs("bytes=0-18446744073709551615"),
            [RangeSpec::FromTo {
                first: 0,
                last: u64::MAX
            }]
        );
        assert_eq!(
            specs("bytes=0007-0008"),
            [RangeSpec::FromTo { first: 7, last: 8 }]
        );
    }

    #[test]
    fn bounds_count_and_length() {
        let sixteen = vec!["0-0"; RANGE_COUNT_MAX].join(",");
        assert_eq!(specs(&format!("bytes={sixteen}")).len(), RANGE_COUNT_MAX);
        let seventeen = vec!["0-0"; RANGE_COUNT_MAX + 1].join(",");
        assert_eq!(
            parse_range(format!("bytes={seventeen}").as_bytes()),
            Err(RangeError::TooManyRanges {
                count: RANGE_COUNT_MAX + 1
            })
        );
        let long = format!("bytes=0-1{}", " ".repeat(RANGE_HEADER_LEN_MAX_BYTES));
        assert_eq!(
            parse_range(long.as_bytes()),
            Err(RangeError::TooLong {
                len: RANGE_HEADER_LEN_MAX_BYTES + 9
            })
        );
        // Length is checked before the unit: a huge header in any unit fails.
        let other = format!("x={}", "a".repeat(RANGE_HEADER_LEN_MAX_BYTES));
        assert!(matches!(
            parse_range(other.as_bytes()),
            Err(RangeError::TooLong { .. })
        ));
    }

    #[test]
    fn range_set_constructor_checks_invariants() {
        assert_eq!(RangeSet::new(vec![]), Err(RangeError::NoRanges));
        assert_eq!(
            RangeSet::new(vec![RangeSpec::FromTo { first: 2, last: 1 }]),
            Err(RangeError::FirstAfterLast {
                index: 0,
                first: 2,
                last: 1
            })
        );
        assert!(RangeSet::new(vec![RangeSpec::From { first: 0 }; RANGE_COUNT_MAX + 1]).is_err());
    }

    #[test]
    fn resolves_rfc_examples() {
        // RFC 9110 §14.1.2, a 10000-byte representation.
        let size = 10_000;
        let resolve = |v: &str| resolve_ranges(&specs(v), size);
        assert_eq!(
            resolve("bytes=0-499"),
            RangeResolution::Single(span(0, 500))
        );
        assert_eq!(
            resolve("bytes=500-999"),
            RangeResolution::Single(span(500, 1000))
        );
        assert_eq!(
            resolve("bytes=-500"),
            RangeResolution::Single(span(9500, 10_000))
        );
        assert_eq!(
            resolve("bytes=9500-"),
            RangeResolution::Single(span(9500, 10_000))
        );
        assert_eq!(
            resolve("bytes=0-0,-1"),
            RangeResolution::Multi(vec![span(0, 1), span(9999, 10_000)])
        );
        assert_eq!(
            resolve("bytes=500-600,601-999"),
            RangeResolution::Single(span(500, 1000))
        );
        assert_eq!(
            resolve("bytes=500-700,601-999"),
            RangeResolution::Single(span(500, 1000))
        );
    }

    #[test]
    fn clamps_and_drops() {
        assert_eq!(
            resolve_ranges(&specs("bytes=5-1000"), 10),
            RangeResolution::Single(span(5, 10))
        );
        assert_eq!(
            resolve_ranges(&specs("bytes=0-18446744073709551615"), 10),
            RangeResolution::Single(span(0, 10))
        );
        assert_eq!(
            resolve_ranges(&specs("bytes=-1000"), 10),
            RangeResolution::Single(span(0, 10))
        );
        assert_eq!(
            resolve_ranges(&specs("bytes=10-,-0,20-30"), 10),
            RangeResolution::Unsatisfiable
        );
        assert_eq!(
            resolve_ranges(&specs("bytes=10-,9-"), 10),
            RangeResolution::Single(span(9, 10))
        );
        assert_eq!(
            resolve_ranges(&specs("bytes=0-"), u64::MAX),
            RangeResolution::Single(span(0, u64::MAX))
        );
        assert_eq!(
            resolve_ranges(&specs("bytes=18446744073709551614-"), u64::MAX),
            RangeResolution::Single(span(u64::MAX - 1, u64::MAX))
        );
    }

    #[test]
    fn empty_object_is_always_unsatisfiable() {
        for value in [
            "bytes=0-",
            "bytes=0-0",
            "bytes=-1",
            "bytes=-0",
            "bytes=0-5,-3",
        ] {
            assert_eq!(
                resolve_ranges(&specs(value), 0),
                RangeResolution::Unsatisfiable,
                "{value}"
            );
        }
    }

    #[test]
    fn coalesces_sorts_and_keeps_gaps() {
        assert_eq!(
            resolve_ranges(&specs("bytes=50-59,0-9,20-29"), 100),
            RangeResolution::Multi(vec![span(0, 10), span(20, 30), span(50, 60)])
        );
        // Adjacent (9 then 10) merge; a gap of one byte does not.
        assert_eq!(
            resolve_ranges(&specs("bytes=0-9,10-19,21-30"), 100),
            RangeResolution::Multi(vec![span(0, 20), span(21, 31)])
        );
        // Contained and duplicated ranges collapse.
        assert_eq!(
            resolve_ranges(&specs("bytes=0-99,10-20,10-20,-5"), 100),
            RangeResolution::Single(span(0, 100))
        );
    }

    #[test]
    fn select_applies_the_policy() {
        let size = 100;
        assert_eq!(select_ranges(None, true, size), RangeResolution::Full);
        assert_eq!(
            select_ranges(Some(b"bytes=0-9"), false, size),
            RangeResolution::Full
        );
        assert_eq!(
            select_ranges(Some(b"items=0-9"), true, size),
            RangeResolution::Full
        );
        assert_eq!(
            select_ranges(Some(b"bytes=9-0"), true, size),
            RangeResolution::Unsatisfiable
        );
        assert_eq!(
            select_ranges(Some(b"bytes=100-"), true, size),
            RangeResolution::Unsatisfiable
        );
        assert_eq!(
            select_ranges(Some(b"bytes=0-9"), true, size),
            RangeResolution::Single(span(0, 10))
        );
        assert_eq!(
            select_ranges(Some(b"bytes=0-9"), true, 0),
            RangeResolution::Unsatisfiable
        );
    }

    /// RFC 9110 §14.1.1: a last position past the end, even one past 2^64,
    /// means "to the end"; a first position there is unsatisfiable.
    #[test]
    fn positions_past_64_bits_saturate() {
        let size = 100;
        assert_eq!(
            select_ranges(Some(b"bytes=0-99999999999999999999999"), true, size),
            RangeResolution::Single(span(0, 100))
        );
        assert_eq!(
            select_ranges(Some(b"bytes=10-18446744073709551616"), true, size),
            RangeResolution::Single(span(10, 100))
        );
        assert_eq!(
            select_ranges(Some(b"bytes=-99999999999999999999999"), true, size),
            RangeResolution::Single(span(0, 100))
        );
        assert_eq!(
            select_ranges(Some(b"bytes=99999999999999999999999-"), true, size),
            RangeResolution::Unsatisfiable
        );
    }

    #[test]
    fn accepts_str_bytes_and_header_values() {
        let expected = Ok(RangeHeader::Bytes(
            RangeSet::new(vec![RangeSpec::From { first: 1 }]).expect("valid"),
        ));
        assert_eq!(parse_range("bytes=1-"), expected);
        assert_eq!(parse_range(b"bytes=1-"), expected);
        assert_eq!(
            parse_range(http::HeaderValue::from_static("bytes=1-")),
            expected
        );
        // A RangeSet is a slice of specs.
        if let Ok(RangeHeader::Bytes(set)) = expected {
            assert_eq!(
                resolve_ranges(&set, 10),
                RangeResolution::Single(span(1, 10))
            );
        }
    }

    #[test]
    fn resolve_tolerates_foreign_input() {
        assert_eq!(resolve_ranges(&[], 10), RangeResolution::Unsatisfiable);
        assert_eq!(
            resolve_ranges(&[RangeSpec::FromTo { first: 5, last: 1 }], 10),
            RangeResolution::Unsatisfiable
        );
    }

    fn arb_spec() -> impl Strategy<Value = RangeSpec> {
        let pos = prop_oneof![0u64..200, any::<u64>()];
        prop_oneof![
            (pos.clone(), pos.clone()).prop_map(|(a, b)| RangeSpec::FromTo {
                first: a.min(b),
                last: a.max(b)
            }),
            pos.clone().prop_map(|first| RangeSpec::From { first }),
            pos.prop_map(|len| RangeSpec::Suffix { len }),
        ]
    }

    fn spec_text(spec: &RangeSpec) -> String {
        match *spec {
            RangeSpec::FromTo { first, last } => format!("{first}-{last}"),
            RangeSpec::From { first } => format!("{first}-"),
            RangeSpec::Suffix { len } => format!("-{len}"),
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_range(&bytes);
        }

        #[test]
        fn parse_never_panics_on_plausible_text(s in "[bB][yY][tT][eE][sS]=[0-9, \t,-]{0,60}") {
            let _ = parse_range(s.as_bytes());
        }

        #[test]
        fn format_then_parse_round_trips(
            list in proptest::collection::vec(arb_spec(), 1..=RANGE_COUNT_MAX),
            sep in prop_oneof![Just(","), Just(", "), Just(" ,\t")],
        ) {
            let text = format!(
                "bytes={}",
                list.iter().map(spec_text).collect::<Vec<_>>().join(sep)
            );
            prop_assert_eq!(specs(&text), list);
        }

        #[test]
        fn resolution_invariants(
            list in proptest::collection::vec(arb_spec(), 0..=RANGE_COUNT_MAX),
            size in prop_oneof![0u64..300, any::<u64>()],
        ) {
            let expected: Vec<ByteSpan> =
                list.iter().filter_map(|s| s.resolve(size)).collect();
            let covered = |offset: u64| expected.iter().any(|s| s.start() <= offset && offset < s.end());
            let spans = match resolve_ranges(&list, size) {
                RangeResolution::Full => {
                    prop_assert!(false, "resolve_ranges never answers Full");
                    return Ok(());
                }
                RangeResolution::Unsatisfiable => {
                    prop_assert!(expected.is_empty());
                    return Ok(());
                }
                RangeResolution::Single(span) => vec![span],
                RangeResolution::Multi(spans) => {
                    prop_assert!(spans.len() >= 2);
                    spans
                }
            };
            for span in &spans {
                prop_assert!(!span.is_empty());
                prop_assert!(span.end() <= size);
                // Each resolved span's endpoints are covered by requested bytes.
                prop_assert!(covered(span.start()));
                prop_assert!(covered(span.end() - 1));
            }
            for pair in spans.windows(2) {
                // Sorted, disjoint and not adjacent (else they would merge).
                prop_assert!(pair[0].end() < pair[1].start());
            }
            // Every requested byte is in exactly one resolved span.
            for req in &expected {
                for offset in [req.start(), req.end() - 1] {
                    let holders = spans.iter().filter(|s| s.start() <= offset && offset < s.end()).count();
                    prop_assert_eq!(holders, 1);
                }
            }
        }
    }
}
