//! The path of a request target, checked once at the edge so it can be
//! mapped onto a file or an origin URL without a traversal.
//!
//! [`RequestPath::parse`] takes the raw, still percent-encoded path
//! component (the caller has already split off `?query`), decodes it
//! strictly and rejects anything that could name something other than a
//! plain file below the root: dot segments, empty segments, encoded slashes,
//! backslashes, control characters and invalid UTF-8. What is left is a
//! normalized path such as `/a/b c/d.mp4` whose segments are safe file
//! names on Unix.
//!
//! The checks run on the **decoded** bytes, so that `%2e%2e` is as much a
//! dot segment as `..`; decoding happens exactly once, so `%252e` stays the
//! literal three characters `%2e`.

use std::fmt;
use std::str::FromStr;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// The longest decoded path accepted, in bytes (Linux `PATH_MAX`).
pub const PATH_LEN_MAX_BYTES: usize = 4096;

/// The longest raw (percent-encoded) path accepted, in bytes: every decoded
/// byte written as `%XX`.
pub const PATH_ENCODED_LEN_MAX_BYTES: usize = 3 * PATH_LEN_MAX_BYTES;

/// The longest decoded segment accepted, in bytes (Linux `NAME_MAX`).
pub const SEGMENT_LEN_MAX_BYTES: usize = 255;

/// The most segments a path may have.
pub const SEGMENT_COUNT_MAX: usize = 64;

/// Bytes left as they are in [`RequestPath::to_uri_path`]: RFC 3986
/// `unreserved`. Everything else, sub-delimiters included, is
/// percent-encoded: an encoded octet means the same to every server,
/// whereas `+`, `;` or `=` mean something special to some.
const SEGMENT_ENCODE_SET: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Why a request path was rejected. All are client errors (`400`, or `404`
/// for a caller that prefers not to explain).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path does not start with `/`")]
    NotAbsolute,
    #[error("path names the root, not an object")]
    Root,
    #[error("path is {len} bytes (at most {PATH_LEN_MAX_BYTES} decoded, {PATH_ENCODED_LEN_MAX_BYTES} encoded)")]
    TooLong { len: usize },
    #[error("path has more than {SEGMENT_COUNT_MAX} segments")]
    TooManySegments,
    #[error("path segment is {len} bytes (at most {SEGMENT_LEN_MAX_BYTES})")]
    SegmentTooLong { len: usize },
    #[error("path has an empty segment (`//` or a trailing `/`)")]
    EmptySegment,
    #[error("path has a `.` or `..` segment")]
    DotSegment,
    #[error("path has an encoded `/` (%2F) inside a segment")]
    EncodedSlash,
    #[error("path has a backslash")]
    Backslash,
    #[error("path has a control character")]
    ControlCharacter,
    #[error("path has an invalid percent-encoding")]
    InvalidPercentEncoding,
    #[error("path is not valid UTF-8 once decoded")]
    InvalidUtf8,
    #[error("path contains `?` or `#`; pass the path component only")]
    QueryOrFragment,
}

/// A decoded, normalized object path: `/` followed by 1 to
/// [`SEGMENT_COUNT_MAX`] non-empty segments, none of them `.` or `..`, none
/// containing `/`, `\` or a control character.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestPath {
    /// Always starts with `/`; segments are separated by single `/`.
    decoded: String,
}

impl RequestPath {
    /// Parses the raw path component of a request target.
    pub fn parse(raw: &str) -> Result<Self, PathError> {
        if raw.len() > PATH_ENCODED_LEN_MAX_BYTES {
            return Err(PathError::TooLong { len: raw.len() });
        }
        let rest = raw.strip_prefix('/').ok_or(PathError::NotAbsolute)?;
        if rest.is_empty() {
            return Err(PathError::Root);
        }
        if raw.contains(['?', '#']) {
            return Err(PathError::QueryOrFragment);
        }

        let mut decoded = String::with_capacity(raw.len());
        for (count, raw_segment) in rest.split('/').enumerate() {
            if count == SEGMENT_COUNT_MAX {
                return Err(PathError::TooManySegments);
            }
            let segment = decode_segment(raw_segment)?;
            decoded.push('/');
            decoded.push_str(&segment);
            if decoded.len() > PATH_LEN_MAX_BYTES {
                return Err(PathError::TooLong { len: decoded.len() });
            }
        }
        Ok(Self { decoded })
    }

    /// The decoded path, e.g. `/a/b c/d.mp4`.
    pub fn as_str(&self) -> &str {
        &self.decoded
    }

    /// The decoded segments, e.g. `["a", "b c", "d.mp4"]`.
    pub fn segments(&self) -> impl Iterator<Item = &str> + '_ {
        // `decoded` starts with `/`, so the first split piece is empty.
        self.decoded.split('/').skip(1)
    }

    /// The last segment, the object's file name.
    pub fn file_name(&self) -> &str {
        self.decoded
            .rsplit('/')
            .next()
            .unwrap_or(self.decoded.as_str())
    }

    /// Whether a segment starts with `.` (like `.git` or `.env`). Allowed by
    /// [`RequestPath::parse`]; a static origin may want to refuse them.
    pub fn has_hidden_segment(&self) -> bool {
        self.segments().any(|segment| segment.starts_with('.'))
    }

    /// The path percent-encoded for a URL (`/a/b%20c/d.mp4`): every byte
    /// but RFC 3986 `unreserved` is encoded. Parsing the result gives back
    /// an equal path.
    pub fn to_uri_path(&self) -> String {
        let mut out = String::with_capacity(self.decoded.len());
        for segment in self.segments() {
            out.push('/');
            out.extend(utf8_percent_encode(segment, SEGMENT_ENCODE_SET));
        }
        out
    }
}

/// Decodes and checks one raw segment.
fn decode_segment(raw: &str) -> Result<String, PathError> {
    let bytes = percent_decode_strict(raw.as_bytes())?;
    if bytes.is_empty() {
        return Err(PathError::EmptySegment);
    }
    if bytes == b"." || bytes == b".." {
        return Err(PathError::DotSegment);
    }
    if bytes.len() > SEGMENT_LEN_MAX_BYTES {
        return Err(PathError::SegmentTooLong { len: bytes.len() });
    }
    // An encoded slash is rejected rather than kept as part of the name:
    // the segment could not be stored as a file name, the origin behind a
    // cache may well decode it into a separator (and so see a different,
    // possibly `..`-bearing path than the one checked here), and two
    // spellings of one object would get two cache keys.
    if bytes.contains(&b'/') {
        return Err(PathError::EncodedSlash);
    }
    // A backslash is a separator on Windows and on some origins.
    if bytes.contains(&b'\\') {
        return Err(PathError::Backslash);
    }
    let text = String::from_utf8(bytes).map_err(|_| PathError::InvalidUtf8)?;
    // C0, DEL and C1 controls: NUL truncates C strings, CR/LF split headers
    // and logs, the rest confuse terminals.
    if text.chars().any(char::is_control) {
        return Err(PathError::ControlCharacter);
    }
    Ok(text)
}

/// Percent-decodes `raw`, rejecting a `%` not followed by two hex digits
/// (the `percent-encoding` crate would pass it through unchanged).
fn percent_decode_strict(raw: &[u8]) -> Result<Vec<u8>, PathError> {
    let mut out = Vec::with_capacity(raw.len());
    let mut bytes = raw.iter();
    while let Some(&byte) = bytes.next() {
        if byte != b'%' {
            out.push(byte);
            continue;
        }
        let high = bytes.next().and_then(|&b| hex_value(b));
        let low = bytes.next().and_then(|&b| hex_value(b));
        match (high, low) {
            (Some(high), Some(low)) => out.push(high << 4 | low),
            _ => return Err(PathError::InvalidPercentEncoding),
        }
    }
    Ok(out)
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

impl fmt::Display for RequestPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.decoded)
    }
}

impl AsRef<str> for RequestPath {
    fn as_ref(&self) -> &str {
        &self.decoded
    }
}

impl FromStr for RequestPath {
    type Err = PathError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ok(raw: &str) -> RequestPath {
        RequestPath::parse(raw).unwrap_or_else(|e| panic!("{raw:?}: {e}"))
    }

    #[test]
    fn accepts_and_normalizes() {
        let p = ok("/a/b%20c/d.mp4");
        assert_eq!(p.as_str(), "/a/b c/d.mp4");
        assert_eq!(p.segments().collect::<Vec<_>>(), ["a", "b c", "d.mp4"]);
        assert_eq!(p.file_name(), "d.mp4");
        assert_eq!(p.to_uri_path(), "/a/b%20c/d.mp4");
        assert_eq!(p.to_string(), "/a/b c/d.mp4");
        assert_eq!(ok("/x").segments().count(), 1);
        assert_eq!(ok("/%41%62").as_str(), "/Ab");
        assert_eq!(ok("/caf%C3%A9").as_str(), "/café");
        assert_eq!(ok("/café").to_uri_path(), "/caf%C3%A9");
        // Decoding happens once: `%252e%252e` is the name `%2e%2e`.
        assert_eq!(ok("/%252e%252e").as_str(), "/%2e%2e");
        assert_eq!(ok("/%252e%252e").to_uri_path(), "/%252e%252e");
        // Dots are fine when not a whole segment.
        assert_eq!(ok("/a/.../b..c/.hidden").as_str(), "/a/.../b..c/.hidden");
        assert!(ok("/a/.hidden").has_hidden_segment());
        assert!(!ok("/a/b.c").has_hidden_segment());
        // Sub-delimiters are decoded and re-encoded.
        assert_eq!(ok("/a+b;c=d").to_uri_path(), "/a%2Bb%3Bc%3Dd");
    }

    #[test]
    fn rejects_tricks() {
        let cases = [
            ("", PathError::NotAbsolute),
            ("a/b", PathError::NotAbsolute),
            ("%2fa", PathError::NotAbsolute),
            ("/", PathError::Root),
            ("/..", PathError::DotSegment),
            ("/a/../b", PathError::DotSegment),
            ("/a/./b", PathError::DotSegment),
            ("/a/.", PathError::DotSegment),
            ("/%2e%2e/etc/passwd", PathError::DotSegment),
            ("/%2E%2E/etc/passwd", PathError::DotSegment),
            ("/a/%2E./b", PathError::DotSegment),
            ("/a/.%2e/b", PathError::DotSegment),
            ("/a/%2e/b", PathError::DotSegment),
            ("/a//b", PathError::EmptySegment),
            ("//a", PathError::EmptySegment),
            ("/a/", PathError::EmptySegment),
            ("/a%00b", PathError::ControlCharacter),
            ("/a%0d%0aSet-Cookie:x", PathError::ControlCharacter),
            ("/a\tb", PathError::ControlCharacter),
            ("/a%7f", PathError::ControlCharacter),
            ("/a%C2%85", PathError::ControlCharacter), // U+0085, a C1 control
            ("/a%2fb", PathError::EncodedSlash),
            ("/a%2F..%2Fb", PathError::EncodedSlash),
            ("/a\\b", PathError::Backslash),
            ("/a%5cb", PathError::Backslash),
            ("/..%5c..%5cwindows", PathError::Backslash),
            ("/a%", PathError::InvalidPercentEncoding),
            ("/a%2", PathError::InvalidPercentEncoding),
            ("/a%zz", PathError::InvalidPercentEncoding),
            ("/a%%32%65", PathError::InvalidPercentEncoding),
            ("/a%ff", PathError::InvalidUtf8),
            ("/a%c0%ae", PathError::InvalidUtf8), // overlong `.`
            ("/a?b", PathError::QueryOrFragment),
            ("/a#b", PathError::QueryOrFragment),
        ];
        for (raw, expected) in cases {
            assert_eq!(RequestPath::parse(raw), Err(expected), "{raw:?}");
        }
    }

    #[test]
    fn bounds() {
        let segment = "a".repeat(SEGMENT_LEN_MAX_BYTES);
        assert!(RequestPath::parse(&format!("/{segment}")).is_ok());
        assert_eq!(
            RequestPath::parse(&format!("/{segment}a")),
            Err(PathError::SegmentTooLong {
                len: SEGMENT_LEN_MAX_BYTES + 1
            })
        );
        // The segment limit is on decoded bytes: 255 × `%41` is fine.
        assert!(RequestPath::parse(&format!("/{}", "%41".repeat(SEGMENT_LEN_MAX_BYTES))).is_ok());

        let many = "/a".repeat(SEGMENT_COUNT_MAX);
        assert_eq!(ok(&many).segments().count(), SEGMENT_COUNT_MAX);
        assert_eq!(
            RequestPath::parse(&format!("{many}/a")),
            Err(PathError::TooManySegments)
        );

        // 16 segments of 255 bytes plus slashes: 16 × 256 = 4096 bytes.
        let at_limit = format!("/{segment}").repeat(16);
        assert_eq!(at_limit.len(), PATH_LEN_MAX_BYTES);
        assert!(RequestPath::parse(&at_limit).is_ok());
        assert_eq!(
            RequestPath::parse(&format!("{at_limit}/b")),
            Err(PathError::TooLong {
                len: PATH_LEN_MAX_BYTES + 2
            })
        );
        let huge = format!("/{}", "a".repeat(PATH_ENCODED_LEN_MAX_BYTES));
        assert_eq!(
            RequestPath::parse(&huge),
            Err(PathError::TooLong {
                len: PATH_ENCODED_LEN_MAX_BYTES + 1
            })
        );
    }

    fn arb_segment() -> impl Strategy<Value = String> {
        "[^/\\\\%?#\\p{Cc}]{1,12}".prop_filter("dot segment", |s| s != "." && s != "..")
    }

    proptest! {
        #[test]
        fn encode_parse_round_trips(segments in proptest::collection::vec(arb_segment(), 1..8)) {
            let decoded = format!("/{}", segments.join("/"));
            let path = RequestPath::parse(&decoded).expect("raw form parses");
            prop_assert_eq!(path.as_str(), decoded.as_str());
            let uri = path.to_uri_path();
            prop_assert!(uri.bytes().all(|b| b.is_ascii_graphic()));
            prop_assert_eq!(RequestPath::parse(&uri), Ok(path.clone()));
            prop_assert_eq!(path.segments().collect::<Vec<_>>(), segments);
        }

        #[test]
        fn accepted_paths_are_safe(raw in "/[a-z%./\\\\0-9A-F]{0,40}") {
            if let Ok(path) = RequestPath::parse(&raw) {
                for segment in path.segments() {
                    prop_assert!(!segment.is_empty());
                    prop_assert!(segment != "." && segment != "..");
                    prop_assert!(!segment.contains(['/', '\\', '\0']));
                }
                prop_assert_eq!(RequestPath::parse(&path.to_uri_path()), Ok(path));
            }
        }

        #[test]
        fn never_panics(raw in any::<String>()) {
            let _ = RequestPath::parse(&raw);
            let _ = RequestPath::parse(&format!("/{raw}"));
        }
    }
}
