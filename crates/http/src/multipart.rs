//! `multipart/byteranges` framing (RFC 9110 §14.6, RFC 2046 §5.1) for a
//! `206` answering several ranges, planned up front so the body can be
//! streamed with an exact `Content-Length`.
//!
//! A [`MultipartPlan`] is a list of [`Segment`]s: literal bytes (delimiters
//! and part headers) interleaved with spans of the object that the caller
//! copies in. The body is laid out as
//!
//! ```text
//! --BOUNDARY CRLF
//! Content-Type: TYPE CRLF            (when a type is given)
//! Content-Range: bytes A-B/SIZE CRLF
//! CRLF
//! <bytes A..=B>
//! CRLF --BOUNDARY CRLF
//! ...
//! CRLF --BOUNDARY-- CRLF
//! ```
//!
//! The CRLF before each `--BOUNDARY` belongs to the delimiter (RFC 2046), so
//! the data of a part is exactly its span. The body has no preamble and a
//! single CRLF as epilogue.
//!
//! The boundary must not occur in the data. [`boundary_from_seed`] makes a
//! 38-character boundary from a 64-bit seed; with a random seed per
//! response the chance that it occurs in the object is negligible, and a
//! client that reads the `Content-Range` lengths is not affected anyway.

use bytes::{BufMut, Bytes, BytesMut};
use shoal_core::ByteSpan;

use crate::content_range::ContentRange;
use crate::range::RANGE_COUNT_MAX;

/// The most parts a plan may have: as many as a `Range` header may ask.
pub const MULTIPART_PART_COUNT_MAX: usize = RANGE_COUNT_MAX;

/// The longest boundary RFC 2046 allows, in bytes.
pub const BOUNDARY_LEN_MAX_BYTES: usize = 70;

/// The longest part `Content-Type` accepted, in bytes.
pub const CONTENT_TYPE_LEN_MAX_BYTES: usize = 256;

/// A piece of a multipart body.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Segment {
    /// Bytes to send as they are: delimiters and part headers.
    Literal(Bytes),
    /// These bytes of the object (never empty).
    Data(ByteSpan),
}

impl Segment {
    /// The number of body bytes this segment stands for.
    pub fn len(&self) -> u64 {
        match self {
            // A `usize` always fits in a `u64` on supported targets.
            Segment::Literal(bytes) => u64::try_from(bytes.len()).unwrap_or(u64::MAX),
            Segment::Data(span) => span.len(),
        }
    }

    /// Whether the segment stands for no bytes (never true in a plan).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A complete `multipart/byteranges` body, ready to stream.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MultipartPlan {
    /// Alternating literals and data, starting and ending with a literal.
    pub parts: Vec<Segment>,
    /// The exact body length: the sum of all segment lengths.
    pub content_length: u64,
    /// The response's `Content-Type`:
    /// `multipart/byteranges; boundary=BOUNDARY`.
    pub content_type_header: String,
}

/// Why a multipart plan could not be made. All are caller bugs or bad
/// configuration, not client errors.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MultipartError {
    #[error("a multipart body needs at least one span")]
    NoSpans,
    #[error("{count} spans is more than {MULTIPART_PART_COUNT_MAX}")]
    TooManySpans { count: usize },
    #[error("span {start}..{end} is empty or ends past the object size {object_size}")]
    InvalidSpan {
        start: u64,
        end: u64,
        object_size: u64,
    },
    #[error("boundary must be 1 to {BOUNDARY_LEN_MAX_BYTES} of A-Z a-z 0-9 ' + _ - .")]
    InvalidBoundary,
    #[error(
        "content type must be 1 to {CONTENT_TYPE_LEN_MAX_BYTES} visible ASCII characters or spaces"
    )]
    InvalidContentType,
    #[error("multipart body length overflows 64 bits")]
    LengthOverflow,
}

/// Boundary characters: those of RFC 2046 `bchars` that are also `tchar`,
/// so the boundary needs no quoting in the `Content-Type` parameter.
fn is_boundary_char(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'\'' | b'+' | b'_' | b'-' | b'.')
}

impl MultipartPlan {
    /// Plans the body for `spans` of an object of `object_size` bytes, in
    /// the order given. Each part gets a `Content-Type: content_type`
    /// header when one is given, and its `Content-Range`.
    pub fn new(
        spans: &[ByteSpan],
        object_size: u64,
        content_type: Option<&str>,
        boundary: &str,
    ) -> Result<Self, MultipartError> {
        if spans.is_empty() {
            return Err(MultipartError::NoSpans);
        }
        if spans.len() > MULTIPART_PART_COUNT_MAX {
            return Err(MultipartError::TooManySpans { count: spans.len() });
        }
        if boundary.is_empty()
            || boundary.len() > BOUNDARY_LEN_MAX_BYTES
            || !boundary.bytes().all(is_boundary_char)
        {
            return Err(MultipartError::InvalidBoundary);
        }
        if let Some(content_type) = content_type {
            // No CR, LF or other control: a content type must not be able
            // to inject headers into the part.
            if content_type.is_empty()
                || content_type.len() > CONTENT_TYPE_LEN_MAX_BYTES
                || !content_type
                    .bytes()
                    .all(|b| b == b' ' || b.is_ascii_graphic())
            {
                return Err(MultipartError::InvalidContentType);
            }
        }

        let mut parts = Vec::with_capacity(spans.len() * 2 + 1);
        let mut literal = BytesMut::new();
        for (index, &span) in spans.iter().enumerate() {
            let range =
                ContentRange::new(span, object_size).map_err(|_| MultipartError::InvalidSpan {
                    start: span.start(),
                    end: span.end(),
                    object_size,
                })?;
            if index > 0 {
                literal.put_slice(b"\r\n");
            }
            literal.put_slice(b"--");
            literal.put_slice(boundary.as_bytes());
            literal.put_slice(b"\r\n");
            if let Some(content_type) = content_type {
                literal.put_slice(b"Content-Type: ");
                literal.put_slice(content_type.as_bytes());
                literal.put_slice(b"\r\n");
            }
            literal.put_slice(b"Content-Range: ");
            literal.put_slice(range.to_string().as_bytes());
            literal.put_slice(b"\r\n\r\n");
            parts.push(Segment::Literal(literal.split().freeze()));
            parts.push(Segment::Data(span));
        }
        literal.put_slice(b"\r\n--");
        literal.put_slice(boundary.as_bytes());
        literal.put_slice(b"--\r\n");
        parts.push(Segment::Literal(literal.freeze()));

        let content_length = parts
            .iter()
            .try_fold(0u64, |sum, part| sum.checked_add(part.len()))
            .ok_or(MultipartError::LengthOverflow)?;
        Ok(Self {
            parts,
            content_length,
            content_type_header: format!("multipart/byteranges; boundary={boundary}"),
        })
    }
}

/// A boundary made from `seed`: `shoal_` and 32 hex digits. Feed it a random
/// seed per response (the function itself is deterministic, for tests).
pub fn boundary_from_seed(seed: u64) -> String {
    let first = splitmix64(seed);
    let second = splitmix64(first);
    format!("shoal_{first:016x}{second:016x}")
}

/// SplitMix64's output function: a bijection that spreads every seed bit.
fn splitmix64(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content_range::{parse_content_range, ContentRangeHeader};
    use proptest::prelude::*;

    fn span(start: u64, end: u64) -> ByteSpan {
        ByteSpan::new(start, end).expect("test span")
    }

    /// Writes the body a server would send for `plan` over `object`.
    fn assemble(plan: &MultipartPlan, object: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        for part in &plan.parts {
            match part {
                Segment::Literal(bytes) => body.extend_from_slice(bytes),
                Segment::Data(span) => {
                    let start = usize::try_from(span.start()).expect("test size");
                    let end = usize::try_from(span.end()).expect("test size");
                    body.extend_from_slice(&object[start..end]);
                }
            }
        }
        body
    }

    fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
        haystack
            .windows(needle.len())
            .position(|window| window == needle)
    }

    /// One parsed part: its headers (lowercased names) and its body.
    type Part = (Vec<(String, String)>, Vec<u8>);

    /// A strict, independent multipart parser (RFC 2046 §5.1.1), using the
    /// boundary from the `Content-Type` header only.
    fn parse_multipart(content_type: &str, body: &[u8]) -> Vec<Part> {
        let boundary = content_type
            .strip_prefix("multipart/byteranges; boundary=")
            .expect("content type");
        let first = format!("--{boundary}\r\n");
        let delimiter = format!("\r\n--{boundary}");
        assert!(body.starts_with(first.as_bytes()), "no preamble expected");
        let mut rest = &body[first.len() - 2..]; // keep the CRLF of the line
        let mut parts = Vec::new();
        loop {
            // `rest` starts with the CRLF that ends the boundary line.
            rest = rest.strip_prefix(b"\r\n").expect("CRLF after boundary");
            let header_end = find(rest, b"\r\n\r\n").expect("end of part headers");
            let headers = std::str::from_utf8(&rest[..header_end])
                .expect("ASCII headers")
                .split("\r\n")
                .map(|line| {
                    let (name, value) = line.split_once(": ").expect("header line");
                    (name.to_ascii_lowercase(), value.to_owned())
                })
                .collect();
            rest = &rest[header_end + 4..];
            let data_end = find(rest, delimiter.as_bytes()).expect("delimiter");
            parts.push((headers, rest[..data_end].to_vec()));
            rest = &rest[data_end + delimiter.len()..];
            if let Some(after_close) = rest.strip_prefix(b"--") {
                assert_eq!(after_close, b"\r\n", "epilogue is one CRLF");
                return parts;
            }
        }
    }

    fn check_round_trip(object: &[u8], spans: &[ByteSpan], content_type: Option<&str>, seed: u64) {
        let size = object.len() as u64;
        let boundary = boundary_from_seed(seed);
        let plan = MultipartPlan::new(spans, size, content_type, &boundary).expect("plan");
        let body = assemble(&plan, object);
        assert_eq!(body.len() as u64, plan.content_length);

        let parts = parse_multipart(&plan.content_type_header, &body);
        assert_eq!(parts.len(), spans.len());
        for ((headers, data), span) in parts.iter().zip(spans) {
            let get = |name: &str| {
                headers
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.as_str())
            };
            assert_eq!(get("content-type"), content_type);
            let range = parse_content_range(get("content-range").expect("has range").as_bytes());
            assert_eq!(
                range,
                ContentRange::new(*span, size).map(ContentRangeHeader::Range)
            );
            let start = span.start() as usize;
            assert_eq!(data.as_slice(), &object[start..start + span.len() as usize]);
            assert_eq!(headers.len(), 1 + usize::from(content_type.is_some()));
        }
    }

    #[test]
    fn exact_bytes_for_rfc_example() {
        let plan = MultipartPlan::new(
            &[span(500, 1000), span(7000, 8000)],
            8000,
            Some("application/pdf"),
            "THIS_STRING_SEPARATES",
        )
        .expect("plan");
        assert_eq!(
            plan.content_type_header,
            "multipart/byteranges; boundary=THIS_STRING_SEPARATES"
        );
        assert_eq!(
            plan.parts,
            vec![
                Segment::Literal(Bytes::from_static(
                    b"--THIS_STRING_SEPARATES\r\n\
                      Content-Type: application/pdf\r\n\
                      Content-Range: bytes 500-999/8000\r\n\r\n"
                )),
                Segment::Data(span(500, 1000)),
                Segment::Literal(Bytes::from_static(
                    b"\r\n--THIS_STRING_SEPARATES\r\n\
                      Content-Type: application/pdf\r\n\
                      Content-Range: bytes 7000-7999/8000\r\n\r\n"
                )),
                Segment::Data(span(7000, 8000)),
                Segment::Literal(Bytes::from_static(b"\r\n--THIS_STRING_SEPARATES--\r\n")),
            ]
        );
        let literal_len: u64 = plan
            .parts
            .iter()
            .filter(|p| matches!(p, Segment::Literal(_)))
            .map(Segment::len)
            .sum();
        assert_eq!(plan.content_length, literal_len + 1500);
    }

    #[test]
    fn round_trips_through_a_parser() {
        let object: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
        check_round_trip(&object, &[span(0, 1), span(9999, 10_000)], None, 1);
        check_round_trip(
            &object,
            &[span(0, 100), span(200, 300), span(5000, 10_000)],
            Some("video/mp4"),
            2,
        );
        // Data that looks like part syntax does not confuse the framing.
        let tricky = b"\r\n\r\n--x\r\nContent-Range: bytes 0-0/1\r\n\r\n--".repeat(10);
        check_round_trip(&tricky, &[span(0, 7), span(50, 200)], Some("text/plain"), 3);
    }

    #[test]
    fn rejects_bad_input() {
        let ok = [span(0, 1), span(2, 3)];
        assert_eq!(
            MultipartPlan::new(&[], 10, None, "b"),
            Err(MultipartError::NoSpans)
        );
        assert_eq!(
            MultipartPlan::new(
                &vec![span(0, 1); MULTIPART_PART_COUNT_MAX + 1],
                10,
                None,
                "b"
            ),
            Err(MultipartError::TooManySpans {
                count: MULTIPART_PART_COUNT_MAX + 1
            })
        );
        assert_eq!(
            MultipartPlan::new(&[span(0, 1), span(5, 5)], 10, None, "b"),
            Err(MultipartError::InvalidSpan {
                start: 5,
                end: 5,
                object_size: 10
            })
        );
        assert!(MultipartPlan::new(&[span(0, 11)], 10, None, "b").is_err());
        for boundary in ["", "a b", "a\r\nb", "a;b", "\"a\"", &"a".repeat(71)] {
            assert_eq!(
                MultipartPlan::new(&ok, 10, None, boundary),
                Err(MultipartError::InvalidBoundary),
                "{boundary:?}"
            );
        }
        assert!(MultipartPlan::new(&ok, 10, None, &"a".repeat(70)).is_ok());
        for content_type in ["", "text/plain\r\nX-Evil: 1", "a\tb", "caf\u{e9}"] {
            assert_eq!(
                MultipartPlan::new(&ok, 10, Some(content_type), "b"),
                Err(MultipartError::InvalidContentType),
                "{content_type:?}"
            );
        }
    }

    #[test]
    fn boundaries_are_valid_and_distinct() {
        let a = boundary_from_seed(0);
        let b = boundary_from_seed(1);
        assert_ne!(a, b);
        assert_eq!(a, boundary_from_seed(0));
        assert_eq!(a.len(), 38);
        assert!(a.bytes().all(is_boundary_char));
        assert!(MultipartPlan::new(&[span(0, 1)], 1, None, &a).is_ok());
    }

    fn arb_spans() -> impl Strategy<Value = (u64, Vec<ByteSpan>)> {
        (1u64..2000).prop_flat_map(|size| {
            let one = (0..size).prop_flat_map(move |start| {
                (start + 1..=size).prop_map(move |end| ByteSpan::new(start, end).expect("ordered"))
            });
            (
                Just(size),
                proptest::collection::vec(one, 1..=MULTIPART_PART_COUNT_MAX),
            )
        })
    }

    proptest! {
        #[test]
        fn any_plan_round_trips(
            (size, spans) in arb_spans(),
            content_type in proptest::option::of("[a-z]{1,8}/[a-z0-9.+-]{1,12}"),
            seed in any::<u64>(),
        ) {
            let object: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
            check_round_trip(&object, &spans, content_type.as_deref(), seed);
        }

        #[test]
        fn content_length_is_exact_for_huge_objects(
            starts in proptest::collection::vec(any::<u64>(), 1..=MULTIPART_PART_COUNT_MAX),
        ) {
            let spans: Vec<ByteSpan> = starts
                .iter()
                .map(|&s| ByteSpan::new(s.min(u64::MAX - 1), u64::MAX).expect("ordered"))
                .collect();
            match MultipartPlan::new(&spans, u64::MAX, None, "b") {
                Ok(plan) => {
                    let sum = plan.parts.iter().map(|p| u128::from(p.len())).sum::<u128>();
                    prop_assert_eq!(sum, u128::from(plan.content_length));
                }
                Err(e) => prop_assert_eq!(e, MultipartError::LengthOverflow),
            }
        }
    }
}
