//! Fuzzes request path parsing: an accepted path never has a dot, empty or
//! slash-bearing segment, and re-parsing its URI form gives the same path.

#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_http::path::{RequestPath, PATH_LEN_MAX_BYTES, SEGMENT_COUNT_MAX, SEGMENT_LEN_MAX_BYTES};

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(path) = RequestPath::parse(raw) else {
        return;
    };
    let decoded = path.as_str();
    assert!(decoded.starts_with('/'));
    assert!(decoded.len() <= PATH_LEN_MAX_BYTES);
    let segments: Vec<&str> = path.segments().collect();
    assert!(!segments.is_empty() && segments.len() <= SEGMENT_COUNT_MAX);
    for segment in &segments {
        assert!(!segment.is_empty());
        assert!(
            *segment != "." && *segment != "..",
            "dot segment in {decoded:?}"
        );
        assert!(segment.len() <= SEGMENT_LEN_MAX_BYTES);
        assert!(!segment.contains(['/', '\\']));
        assert!(!segment.chars().any(char::is_control));
    }
    assert_eq!(format!("/{}", segments.join("/")), decoded);

    let uri = path.to_uri_path();
    assert!(uri.bytes().all(|b| b.is_ascii_graphic()), "{uri:?}");
    assert_eq!(RequestPath::parse(&uri).as_ref(), Ok(&path), "{uri:?}");
});
