//! Fuzzes `Range` parsing and resolution.
//!
//! Input: 8 bytes of object size (little-endian), then the header value.
//! Every resolved span must lie inside the object and be non-empty; several
//! spans must be sorted, disjoint and non-adjacent; an accepted header must
//! re-format and re-parse to the same specs; a multipart plan over the
//! spans must have an exact length (or overflow only for objects near
//! 2^64 bytes).

#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_core::ByteSpan;
use shoal_http::multipart::{boundary_from_seed, MultipartError, MultipartPlan};
use shoal_http::range::{
    parse_range, resolve_ranges, select_ranges, RangeHeader, RangeResolution, RangeSpec,
    RANGE_COUNT_MAX,
};

fuzz_target!(|data: &[u8]| {
    let (size_bytes, header) = data.split_at(data.len().min(8));
    let mut size_le = [0u8; 8];
    size_le[..size_bytes.len()].copy_from_slice(size_bytes);
    let size = u64::from_le_bytes(size_le);

    let parsed = parse_range(header);
    let Ok(RangeHeader::Bytes(set)) = parsed else {
        // Unknown unit or malformed: the policy answers 200 or 416.
        let expected = if matches!(parsed, Ok(RangeHeader::OtherUnit)) {
            RangeResolution::Full
        } else {
            RangeResolution::Unsatisfiable
        };
        assert_eq!(select_ranges(Some(header), true, size), expected);
        return;
    };
    assert!(!set.is_empty() && set.len() <= RANGE_COUNT_MAX);

    // Format the specs back and parse them again.
    let text: Vec<String> = set
        .iter()
        .map(|spec| match *spec {
            RangeSpec::FromTo { first, last } => {
                assert!(first <= last);
                format!("{first}-{last}")
            }
            RangeSpec::From { first } => format!("{first}-"),
            RangeSpec::Suffix { len } => format!("-{len}"),
        })
        .collect();
    let reparsed = parse_range(format!("bytes={}", text.join(",")));
    assert_eq!(reparsed, Ok(RangeHeader::Bytes(set.clone())));

    for object_size in [size, size % 1024] {
        let resolution = resolve_ranges(&set, object_size);
        assert_eq!(select_ranges(Some(header), true, object_size), resolution);
        let spans: Vec<ByteSpan> = match resolution {
            RangeResolution::Full => panic!("resolve_ranges answered Full"),
            RangeResolution::Unsatisfiable => {
                assert!(set.iter().all(|spec| spec.resolve(object_size).is_none()));
                continue;
            }
            RangeResolution::Single(span) => vec![span],
            RangeResolution::Multi(spans) => {
                assert!(spans.len() >= 2);
                spans
            }
        };
        for span in &spans {
            assert!(!span.is_empty(), "empty span {span:?}");
            assert!(span.end() <= object_size, "{span:?} past {object_size}");
        }
        for pair in spans.windows(2) {
            assert!(
                pair[0].end() < pair[1].start(),
                "not sorted/disjoint: {pair:?}"
            );
        }
        // Every satisfiable spec is covered by exactly one resolved span.
        for spec_span in set.iter().filter_map(|spec| spec.resolve(object_size)) {
            let holders = spans
                .iter()
                .filter(|s| s.start() <= spec_span.start() && spec_span.end() <= s.end())
                .count();
            assert_eq!(holders, 1, "{spec_span:?} in {spans:?}");
        }
        if spans.len() >= 2 {
            let boundary = boundary_from_seed(size);
            match MultipartPlan::new(&spans, object_size, Some("video/mp4"), &boundary) {
                Ok(plan) => {
                    let sum: u128 = plan.parts.iter().map(|p| u128::from(p.len())).sum();
                    assert_eq!(sum, u128::from(plan.content_length));
                }
                // Only an object near 2^64 bytes can overflow the body length.
                Err(MultipartError::LengthOverflow) => {
                    let data: u128 = spans.iter().map(|s| u128::from(s.len())).sum();
                    assert!(data + (1 << 16) > u128::from(u64::MAX), "{spans:?}");
                }
                Err(error) => panic!("resolved spans made no plan: {error}"),
            }
        }
    }
});
