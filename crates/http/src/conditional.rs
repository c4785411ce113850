//! Entity tags and conditional requests (RFC 9110 §8.8.3, §13).
//!
//! [`ConditionalHeaders::from_headers`] reads `If-Match`, `If-None-Match`,
//! `If-Modified-Since`, `If-Unmodified-Since` and `If-Range` once, at the
//! edge; [`evaluate_preconditions`] then applies RFC 9110 §13.2.2 to the
//! selected representation's [`EntityValidators`] and says whether to
//! answer `412`, `304`, or go on (and whether a `Range` may be honoured).
//!
//! # Malformed fields
//!
//! - Malformed dates in `If-Modified-Since` / `If-Unmodified-Since` are
//!   ignored, as RFC 9110 §13.1.3–§13.1.4 require; so is a date field sent on
//!   more than one line.
//! - A malformed `If-None-Match` list is kept as an empty list: it matches
//!   nothing, so the request proceeds normally (the full answer is always a
//!   correct one). Being present, it still disables `If-Modified-Since`.
//! - A malformed `If-Match` list is kept as an empty list too, which matches
//!   nothing, so the request fails with `412`: a client that asked for a
//!   guarantee the server cannot read gets no response it did not ask for.
//! - A malformed `If-Range` never matches: the `Range` is ignored and the
//!   whole representation is sent, which is always correct.
//!
//! Entity tags accept the visible-ASCII `etagc` characters only; the
//! obsolete `obs-text` bytes (0x80–0xFF) are rejected, which matches what
//! `shoal-core` manifests can store.

use std::fmt;
use std::str::FromStr;

use http::header::{IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE};
use http::{HeaderMap, HeaderName};

use crate::date::parse_http_date_unix_s;
use crate::syntax::{is_ows, trim_ows};

/// The longest entity tag accepted, in bytes, counting the `W/` prefix and
/// the quotes. Equal to `shoal_core::manifest::ETAG_LEN_MAX_BYTES`, so every
/// tag a manifest can hold parses here.
pub const ENTITY_TAG_LEN_MAX_BYTES: usize = 256;

/// The most entity tags one `If-Match` / `If-None-Match` may list.
pub const ETAG_LIST_COUNT_MAX: usize = 64;

/// The longest `If-Match` / `If-None-Match` accepted, in bytes, summed over
/// all field lines.
pub const ETAG_LIST_LEN_MAX_BYTES: usize = 8 * 1024;

/// An entity tag (RFC 9110 §8.8.3): an opaque string, strong or weak.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EntityTag {
    weak: bool,
    /// Between the quotes; only `etagc` characters (visible ASCII but `"`).
    opaque: String,
}

/// Why an entity tag or a list of them did not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EntityTagError {
    #[error("entity tag is {len} bytes (at most {ENTITY_TAG_LEN_MAX_BYTES})")]
    TooLong { len: usize },
    #[error("entity tag is malformed")]
    Malformed,
    #[error("entity tag list is {len} bytes (at most {ETAG_LIST_LEN_MAX_BYTES})")]
    ListTooLong { len: usize },
    #[error("entity tag list has more than {ETAG_LIST_COUNT_MAX} tags")]
    TooManyTags,
    #[error("`*` must be the whole entity tag list")]
    MisplacedWildcard,
}

/// `etagc` without `obs-text`: `%x21 / %x23-7E`.
fn is_etagc(byte: u8) -> bool {
    byte == 0x21 || (0x23..=0x7e).contains(&byte)
}

impl EntityTag {
    /// A strong tag with the given opaque value (without quotes).
    pub fn strong(opaque: &str) -> Result<Self, EntityTagError> {
        Self::with_weakness(false, opaque)
    }

    /// A weak tag with the given opaque value (without quotes).
    pub fn weak(opaque: &str) -> Result<Self, EntityTagError> {
        Self::with_weakness(true, opaque)
    }

    fn with_weakness(weak: bool, opaque: &str) -> Result<Self, EntityTagError> {
        let len = opaque.len() + if weak { 4 } else { 2 };
        if len > ENTITY_TAG_LEN_MAX_BYTES {
            return Err(EntityTagError::TooLong { len });
        }
        if !opaque.bytes().all(is_etagc) {
            return Err(EntityTagError::Malformed);
        }
        Ok(Self {
            weak,
            opaque: opaque.to_owned(),
        })
    }

    /// Parses one entity tag, `"xyz"` or `W/"xyz"`, ignoring surrounding
    /// whitespace. The `W/` prefix is case-sensitive.
    pub fn parse(value: impl AsRef<[u8]>) -> Result<Self, EntityTagError> {
        let value = trim_ows(value.as_ref());
        if value.len() > ENTITY_TAG_LEN_MAX_BYTES {
            return Err(EntityTagError::TooLong { len: value.len() });
        }
        match parse_tag_prefix(value)? {
            (tag, []) => Ok(tag),
            _ => Err(EntityTagError::Malformed),
        }
    }

    pub fn is_weak(&self) -> bool {
        self.weak
    }

    /// The opaque value, without `W/` and quotes.
    pub fn opaque(&self) -> &str {
        &self.opaque
    }

    /// Strong comparison (RFC 9110 §8.8.3.2): neither is weak and the opaque
    /// values are equal.
    pub fn strong_eq(&self, other: &EntityTag) -> bool {
        !self.weak && !other.weak && self.opaque == other.opaque
    }

    /// Weak comparison (RFC 9110 §8.8.3.2): the opaque values are equal,
    /// whatever the weakness.
    pub fn weak_eq(&self, other: &EntityTag) -> bool {
        self.opaque == other.opaque
    }
}

/// Parses an entity tag at the start of `input`; returns it and the rest.
fn parse_tag_prefix(input: &[u8]) -> Result<(EntityTag, &[u8]), EntityTagError> {
    let (weak, quoted) = match input.strip_prefix(b"W/") {
        Some(rest) => (true, rest),
        None => (false, input),
    };
    let body = quoted
        .strip_prefix(b"\"")
        .ok_or(EntityTagError::Malformed)?;
    let close = body
        .iter()
        .position(|&b| b == b'"')
        .ok_or(EntityTagError::Malformed)?;
    let (opaque, after) = body.split_at(close);
    let rest = after.get(1..).unwrap_or_default();
    let len = input.len().saturating_sub(rest.len());
    if len > ENTITY_TAG_LEN_MAX_BYTES {
        return Err(EntityTagError::TooLong { len });
    }
    if !opaque.iter().all(|&b| is_etagc(b)) {
        return Err(EntityTagError::Malformed);
    }
    // All bytes are ASCII, so this cannot fail; stay total anyway.
    let opaque = std::str::from_utf8(opaque).map_err(|_| EntityTagError::Malformed)?;
    Ok((
        EntityTag {
            weak,
            opaque: opaque.to_owned(),
        },
        rest,
    ))
}

impl fmt::Display for EntityTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.weak {
            f.write_str("W/")?;
        }
        write!(f, "\"{}\"", self.opaque)
    }
}

impl FromStr for EntityTag {
    type Err = EntityTagError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// The value of `If-Match` or `If-None-Match`: `*` or a list of tags.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum EtagList {
    /// `*`: any current representation.
    Any,
    /// The listed tags (possibly none, which matches nothing).
    Tags(Vec<EntityTag>),
}

impl EtagList {
    /// Does the list match `current` by strong comparison (`If-Match`,
    /// RFC 9110 §13.1.1)? `*` matches any existing representation, even one
    /// without an entity tag.
    pub fn matches_strong(&self, current: Option<&EntityTag>) -> bool {
        match self {
            EtagList::Any => true,
            EtagList::Tags(tags) => {
                current.is_some_and(|cur| tags.iter().any(|tag| tag.strong_eq(cur)))
            }
        }
    }

    /// Does the list match `current` by weak comparison (`If-None-Match`,
    /// RFC 9110 §13.1.2)? `*` matches any existing representation.
    pub fn matches_weak(&self, current: Option<&EntityTag>) -> bool {
        match self {
            EtagList::Any => true,
            EtagList::Tags(tags) => {
                current.is_some_and(|cur| tags.iter().any(|tag| tag.weak_eq(cur)))
            }
        }
    }
}

/// Parses one `If-Match` / `If-None-Match` field value:
/// `"*" / #entity-tag`, with optional whitespace and empty elements around
/// commas. Commas inside quotes belong to the tag.
pub fn parse_etag_list(value: impl AsRef<[u8]>) -> Result<EtagList, EntityTagError> {
    parse_etag_lines([value.as_ref()])
}

/// Parses a field sent on several lines, as if they were joined with commas
/// (RFC 9110 §5.3). `*` must then be the only element of all lines.
pub fn parse_etag_lines<'a, I>(lines: I) -> Result<EtagList, EntityTagError>
where
    I: IntoIterator<Item = &'a [u8]>,
{
    let mut total_len: usize = 0;
    let mut wildcards: usize = 0;
    let mut tags = Vec::new();
    for line in lines {
        total_len = total_len.saturating_add(line.len());
        if total_len > ETAG_LIST_LEN_MAX_BYTES {
            return Err(EntityTagError::ListTooLong { len: total_len });
        }
        let mut rest = line;
        loop {
            // Skip whitespace and empty list elements.
            let start = rest
                .iter()
                .position(|&b| !is_ows(b) && b != b',')
                .unwrap_or(rest.len());
            rest = rest.get(start..).unwrap_or_default();
            if rest.is_empty() {
                break;
            }
            if let Some(after) = rest.strip_prefix(b"*") {
                wildcards += 1;
                rest = after;
            } else {
                if tags.len() == ETAG_LIST_COUNT_MAX {
                    return Err(EntityTagError::TooManyTags);
                }
                let (tag, after) = parse_tag_prefix(rest)?;
                tags.push(tag);
                rest = after;
            }
            // After an element: whitespace, then a comma or the end.
            let after_ows = rest.iter().position(|&b| !is_ows(b)).unwrap_or(rest.len());
            rest = rest.get(after_ows..).unwrap_or_default();
            match rest.first() {
                None | Some(b',') => {}
                Some(_) => return Err(EntityTagError::Malformed),
            }
        }
    }
    match (wildcards, tags.is_empty()) {
        (0, _) => Ok(EtagList::Tags(tags)),
        (1, true) => Ok(EtagList::Any),
        _ => Err(EntityTagError::MisplacedWildcard),
    }
}

/// The value of `If-Range` (RFC 9110 §13.1.5).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum IfRange {
    /// An entity tag; matches only by strong comparison.
    Tag(EntityTag),
    /// An HTTP-date, in seconds since the Unix epoch; matches only a
    /// `Last-Modified` of exactly that second.
    DateUnixS(u64),
    /// Neither: never matches, so the `Range` is ignored.
    Invalid,
}

impl IfRange {
    /// Parses an `If-Range` value; anything unreadable is [`IfRange::Invalid`].
    pub fn parse(value: impl AsRef<[u8]>) -> IfRange {
        let value = trim_ows(value.as_ref());
        if value.starts_with(b"\"") || value.starts_with(b"W/") {
            return EntityTag::parse(value).map_or(IfRange::Invalid, IfRange::Tag);
        }
        parse_http_date_unix_s(value).map_or(IfRange::Invalid, IfRange::DateUnixS)
    }

    /// Does this `If-Range` hold for the current representation?
    pub fn matches(&self, current: &EntityValidators) -> bool {
        match self {
            // A weak tag, on either side, never matches (strong comparison).
            IfRange::Tag(tag) => current.etag.as_ref().is_some_and(|cur| tag.strong_eq(cur)),
            // RFC 9110 §13.1.5 also asks that the date be a strong validator;
            // shoal's Last-Modified comes from the object's metadata and an
            // exact match is what every deployed server checks.
            IfRange::DateUnixS(date) => current.last_modified_unix_s == Some(*date),
            IfRange::Invalid => false,
        }
    }
}

/// The conditional request headers, parsed once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConditionalHeaders {
    /// `If-Match`; a malformed list is an empty list (matches nothing).
    pub if_match: Option<EtagList>,
    /// `If-None-Match`; a malformed list is an empty list (matches nothing).
    pub if_none_match: Option<EtagList>,
    /// `If-Modified-Since`, when present on one line and valid.
    pub if_modified_since_unix_s: Option<u64>,
    /// `If-Unmodified-Since`, when present on one line and valid.
    pub if_unmodified_since_unix_s: Option<u64>,
    /// `If-Range`; sent on more than one line it is [`IfRange::Invalid`].
    pub if_range: Option<IfRange>,
}

impl ConditionalHeaders {
    /// Reads the five conditional headers, following the rules for
    /// malformed values in the [module docs](self).
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let etags = |name: &HeaderName| {
            let mut lines = headers.get_all(name).iter().peekable();
            lines.peek()?;
            Some(
                parse_etag_lines(lines.map(|v| v.as_bytes())).unwrap_or(EtagList::Tags(Vec::new())),
            )
        };
        let date = |name: &HeaderName| {
            single_line(headers, name)
                .flatten()
                .and_then(|v| parse_http_date_unix_s(v).ok())
        };
        Self {
            if_match: etags(&IF_MATCH),
            if_none_match: etags(&IF_NONE_MATCH),
            if_modified_since_unix_s: date(&IF_MODIFIED_SINCE),
            if_unmodified_since_unix_s: date(&IF_UNMODIFIED_SINCE),
            if_range: single_line(headers, &IF_RANGE)
                .map(|line| line.map_or(IfRange::Invalid, IfRange::parse)),
        }
    }

    /// True when the request has none of the five conditional headers.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// `None` if absent, `Some(None)` if sent on several lines, else the value.
fn single_line<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Option<Option<&'h [u8]>> {
    let mut lines = headers.get_all(name).iter();
    let first = lines.next()?;
    Some(lines.next().is_none().then(|| first.as_bytes()))
}

/// The validators of the selected representation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct EntityValidators {
    pub etag: Option<EntityTag>,
    /// `Last-Modified`, in seconds since the Unix epoch.
    pub last_modified_unix_s: Option<u64>,
}

impl From<&shoal_core::Validators> for EntityValidators {
    /// A manifest's validators; an entity tag that does not parse is
    /// dropped (conditions on it then fail safe, see [`evaluate_preconditions`]).
    fn from(validators: &shoal_core::Validators) -> Self {
        Self {
            etag: validators
                .etag
                .as_deref()
                .and_then(|etag| EntityTag::parse(etag.as_bytes()).ok()),
            last_modified_unix_s: validators.last_modified_unix_s,
        }
    }
}

/// What to do with a request once its preconditions are evaluated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Precondition {
    /// Answer `412 Precondition Failed`.
    Failed,
    /// Answer `304 Not Modified` (only for GET and HEAD).
    NotModified,
    /// Perform the method. `range_allowed` is false when an `If-Range` did
    /// not match: a `Range` must then be ignored and the whole
    /// representation sent with `200` (pass it to
    /// [`select_ranges`](crate::range::select_ranges)). It is true when
    /// there is no `If-Range` or it matched. (Only GET has range semantics;
    /// `If-Range` without `Range` has no effect.)
    Proceed { range_allowed: bool },
}

/// Evaluates preconditions in the order of RFC 9110 §13.2.2 against an
/// existing representation with validators `current`:
///
/// 1. `If-Match`, strong comparison: false → `412`.
/// 2. Else `If-Unmodified-Since`: modified after the date → `412`.
/// 3. `If-None-Match`, weak comparison: a match → `304` for GET/HEAD,
///    `412` otherwise.
/// 4. Else, GET/HEAD only, `If-Modified-Since`: not modified since → `304`.
/// 5. `If-Range` decides whether a `Range` is honoured.
///
/// Missing validators fail safe: `If-Match` with tags fails without a
/// current tag; `If-None-Match` with tags, `If-Unmodified-Since` and
/// `If-Modified-Since` are ignored without the validator they need, so the
/// full representation is served.
pub fn evaluate_preconditions(
    method_is_get_or_head: bool,
    request: &ConditionalHeaders,
    current: &EntityValidators,
) -> Precondition {
    let current_etag = current.etag.as_ref();

    // Steps 1 and 2.
    if let Some(if_match) = &request.if_match {
        if !if_match.matches_strong(current_etag) {
            return Precondition::Failed;
        }
    } else if let (Some(since), Some(modified)) = (
        request.if_unmodified_since_unix_s,
        current.last_modified_unix_s,
    ) {
        if modified > since {
            return Precondition::Failed;
        }
    }

    // Steps 3 and 4.
    if let Some(if_none_match) = &request.if_none_match {
        if if_none_match.matches_weak(current_etag) {
            return if method_is_get_or_head {
                Precondition::NotModified
            } else {
                Precondition::Failed
            };
        }
    } else if method_is_get_or_head {
        if let (Some(since), Some(modified)) = (
            request.if_modified_since_unix_s,
            current.last_modified_unix_s,
        ) {
            if modified <= since {
                return Precondition::NotModified;
            }
        }
    }

    // Step 5.
    let range_allowed = request
        .if_range
        .as_ref()
        .is_none_or(|if_range| if_range.matches(current));
    Precondition::Proceed { range_allowed }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

    fn tag(s: &str) -> EntityTag {
        EntityTag::parse(s.as_bytes()).expect("test tag")
    }

    fn tags(list: &[&str]) -> EtagList {
        EtagList::Tags(list.iter().map(|s| tag(s)).collect())
    }

    #[test]
    fn core_and_http_agree_on_tag_length() {
        assert_eq!(
            ENTITY_TAG_LEN_MAX_BYTES,
            shoal_core::manifest::ETAG_LEN_MAX_BYTES
        );
    }

    #[test]
    fn parses_tags() {
        let strong = tag("\"xyzzy\"");
        assert!(!strong.is_weak());
        assert_eq!(strong.opaque(), "xyzzy");
        assert_eq!(strong.to_string(), "\"xyzzy\"");
        let weak = tag(" W/\"xyzzy\" ");
        assert!(weak.is_weak());
        assert_eq!(weak.to_string(), "W/\"xyzzy\"");
        assert_eq!(tag("\"\"").opaque(), "");
        assert_eq!(tag("\"a,b\"").opaque(), "a,b");
        assert_eq!(tag("\"a\\\"").opaque(), "a\\");
        assert_eq!("W/\"1\"".parse::<EntityTag>(), EntityTag::weak("1"));
    }

    #[test]
    fn rejects_bad_tags() {
        for value in [
            &b""[..],
            b"xyzzy",
            b"\"xyzzy",
            b"xyzzy\"",
            b"w/\"xyzzy\"",
            b"W/xyzzy",
            b"W/ \"x\"",
            b"\"x\"y",
            b"\"x\" \"y\"",
            b"\"a b\"",
            b"\"a\\\"b\"", // no escapes in entity tags: `"a\"` then `b"`
            b"\"\xc3\xa9\"",
            b"\"\x7f\"",
            b"*",
        ] {
            assert_eq!(
                EntityTag::parse(value),
                Err(EntityTagError::Malformed),
                "{:?}",
                String::from_utf8_lossy(value)
            );
        }
        let long = format!("\"{}\"", "a".repeat(ENTITY_TAG_LEN_MAX_BYTES - 1));
        assert_eq!(
            EntityTag::parse(long.as_bytes()),
            Err(EntityTagError::TooLong {
                len: ENTITY_TAG_LEN_MAX_BYTES + 1
            })
        );
        let max = format!("W/\"{}\"", "a".repeat(ENTITY_TAG_LEN_MAX_BYTES - 4));
        assert!(EntityTag::parse(max.as_bytes()).is_ok());
        assert!(EntityTag::strong("a b").is_err());
        assert!(EntityTag::weak(&"a".repeat(ENTITY_TAG_LEN_MAX_BYTES)).is_err());
    }

    #[test]
    fn comparison_table() {
        // RFC 9110 §8.8.3.2.
        let cases = [
            ("W/\"1\"", "W/\"1\"", false, true),
            ("W/\"1\"", "W/\"2\"", false, false),
            ("W/\"1\"", "\"1\"", false, true),
            ("\"1\"", "\"1\"", true, true),
        ];
        for (a, b, strong, weak) in cases {
            assert_eq!(tag(a).strong_eq(&tag(b)), strong, "{a} {b}");
            assert_eq!(tag(b).strong_eq(&tag(a)), strong, "{b} {a}");
            assert_eq!(tag(a).weak_eq(&tag(b)), weak, "{a} {b}");
        }
    }

    #[test]
    fn parses_lists() {
        assert_eq!(parse_etag_list(b"*"), Ok(EtagList::Any));
        assert_eq!(parse_etag_list(b" * "), Ok(EtagList::Any));
        assert_eq!(
            parse_etag_list(b"\"xyzzy\", \"r2d2xxxx\",\t\"c3piozzzz\""),
            Ok(tags(&["\"xyzzy\"", "\"r2d2xxxx\"", "\"c3piozzzz\""]))
        );
        assert_eq!(
            parse_etag_list(b"W/\"a,b\",\"c\""),
            Ok(tags(&["W/\"a,b\"", "\"c\""]))
        );
        assert_eq!(parse_etag_list(b", ,\"a\",,"), Ok(tags(&["\"a\""])));
        assert_eq!(parse_etag_list(b""), Ok(EtagList::Tags(vec![])));
        assert_eq!(
            parse_etag_lines([&b"\"a\""[..], b"W/\"b\""]),
            Ok(tags(&["\"a\"", "W/\"b\""]))
        );
    }

    #[test]
    fn rejects_bad_lists() {
        assert_eq!(
            parse_etag_list(b"*, \"a\""),
            Err(EntityTagError::MisplacedWildcard)
        );
        assert_eq!(
            parse_etag_list(b"*,*"),
            Err(EntityTagError::MisplacedWildcard)
        );
        assert_eq!(
            parse_etag_lines([&b"*"[..], b"\"a\""]),
            Err(EntityTagError::MisplacedWildcard)
        );
        assert_eq!(parse_etag_list(b"**"), Err(EntityTagError::Malformed));
        assert_eq!(
            parse_etag_list(b"\"a\" \"b\""),
            Err(EntityTagError::Malformed)
        );
        assert_eq!(parse_etag_list(b"\"a\";x"), Err(EntityTagError::Malformed));
        assert_eq!(parse_etag_list(b"a"), Err(EntityTagError::Malformed));
        assert_eq!(parse_etag_list(b"\"a"), Err(EntityTagError::Malformed));
        let many = vec!["\"x\""; ETAG_LIST_COUNT_MAX + 1].join(",");
        assert_eq!(
            parse_etag_list(many.as_bytes()),
            Err(EntityTagError::TooManyTags)
        );
        let ok = vec!["\"x\""; ETAG_LIST_COUNT_MAX].join(",");
        assert!(parse_etag_list(ok.as_bytes()).is_ok());
        let long = " ".repeat(ETAG_LIST_LEN_MAX_BYTES + 1);
        assert!(matches!(
            parse_etag_list(long.as_bytes()),
            Err(EntityTagError::ListTooLong { .. })
        ));
    }

    #[test]
    fn list_matching() {
        let cur = tag("\"v1\"");
        let weak_cur = tag("W/\"v1\"");
        assert!(EtagList::Any.matches_strong(None));
        assert!(EtagList::Any.matches_weak(None));
        assert!(tags(&["\"v0\"", "\"v1\""]).matches_strong(Some(&cur)));
        assert!(!tags(&["W/\"v1\""]).matches_strong(Some(&cur)));
        assert!(!tags(&["\"v1\""]).matches_strong(Some(&weak_cur)));
        assert!(tags(&["W/\"v1\""]).matches_weak(Some(&cur)));
        assert!(!tags(&["\"v1\""]).matches_strong(None));
        assert!(!tags(&["\"v1\""]).matches_weak(None));
        assert!(!EtagList::Tags(vec![]).matches_weak(Some(&cur)));
    }

    const LM: u64 = 784_111_777; // Sun, 06 Nov 1994 08:49:37 GMT
    const LM_TEXT: &str = "Sun, 06 Nov 1994 08:49:37 GMT";
    const EARLIER_TEXT: &str = "Sun, 06 Nov 1994 08:49:36 GMT";
    const LATER_TEXT: &str = "Sun, 06 Nov 1994 08:49:38 GMT";

    fn current() -> EntityValidators {
        EntityValidators {
            etag: Some(tag("\"v1\"")),
            last_modified_unix_s: Some(LM),
        }
    }

    fn headers(pairs: &[(HeaderName, &str)]) -> ConditionalHeaders {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                name.clone(),
                HeaderValue::from_str(value).expect("test header"),
            );
        }
        ConditionalHeaders::from_headers(&map)
    }

    fn eval(get: bool, pairs: &[(HeaderName, &str)]) -> Precondition {
        evaluate_preconditions(get, &headers(pairs), &current())
    }

    const PROCEED: Precondition = Precondition::Proceed {
        range_allowed: true,
    };
    const NO_RANGE: Precondition = Precondition::Proceed {
        range_allowed: false,
    };

    #[test]
    fn from_headers() {
        let parsed = headers(&[
            (IF_MATCH, "\"a\""),
            (IF_MATCH, "W/\"b\""),
            (IF_NONE_MATCH, "*"),
            (IF_MODIFIED_SINCE, LM_TEXT),
            (IF_UNMODIFIED_SINCE, "yesterday"),
            (IF_RANGE, "\"v1\""),
        ]);
        assert_eq!(parsed.if_match, Some(tags(&["\"a\"", "W/\"b\""])));
        assert_eq!(parsed.if_none_match, Some(EtagList::Any));
        assert_eq!(parsed.if_modified_since_unix_s, Some(LM));
        assert_eq!(parsed.if_unmodified_since_unix_s, None);
        assert_eq!(parsed.if_range, Some(IfRange::Tag(tag("\"v1\""))));
        assert!(!parsed.is_empty());
        assert!(headers(&[]).is_empty());

        let odd = headers(&[
            (IF_NONE_MATCH, "garbage"),
            (IF_MODIFIED_SINCE, LM_TEXT),
            (IF_MODIFIED_SINCE, LM_TEXT),
            (IF_RANGE, LM_TEXT),
            (IF_RANGE, LM_TEXT),
        ]);
        assert_eq!(odd.if_none_match, Some(EtagList::Tags(vec![])));
        assert_eq!(odd.if_modified_since_unix_s, None);
        assert_eq!(odd.if_range, Some(IfRange::Invalid));
    }

    #[test]
    fn if_range_parse() {
        assert_eq!(IfRange::parse(b"\"a\""), IfRange::Tag(tag("\"a\"")));
        assert_eq!(IfRange::parse(b"W/\"a\""), IfRange::Tag(tag("W/\"a\"")));
        assert_eq!(IfRange::parse(LM_TEXT.as_bytes()), IfRange::DateUnixS(LM));
        assert_eq!(IfRange::parse(b"\"a"), IfRange::Invalid);
        assert_eq!(IfRange::parse(b"tomorrow"), IfRange::Invalid);
        assert_eq!(IfRange::parse(b""), IfRange::Invalid);
    }

    #[test]
    fn no_conditions_proceed() {
        assert_eq!(eval(true, &[]), PROCEED);
        assert_eq!(eval(false, &[]), PROCEED);
    }

    #[test]
    fn if_match() {
        assert_eq!(eval(true, &[(IF_MATCH, "\"v1\"")]), PROCEED);
        assert_eq!(eval(true, &[(IF_MATCH, "\"v0\", \"v1\"")]), PROCEED);
        assert_eq!(eval(true, &[(IF_MATCH, "*")]), PROCEED);
        assert_eq!(eval(true, &[(IF_MATCH, "\"v0\"")]), Precondition::Failed);
        // Strong comparison: a weak tag never satisfies If-Match.
        assert_eq!(eval(true, &[(IF_MATCH, "W/\"v1\"")]), Precondition::Failed);
        // Malformed If-Match fails safe.
        assert_eq!(eval(true, &[(IF_MATCH, "v1")]), Precondition::Failed);
        let no_tag = EntityValidators {
            etag: None,
            last_modified_unix_s: Some(LM),
        };
        let h = headers(&[(IF_MATCH, "\"v1\"")]);
        assert_eq!(
            evaluate_preconditions(true, &h, &no_tag),
            Precondition::Failed
        );
        let h = headers(&[(IF_MATCH, "*")]);
        assert_eq!(evaluate_preconditions(true, &h, &no_tag), PROCEED);
    }

    #[test]
    fn if_unmodified_since() {
        assert_eq!(eval(true, &[(IF_UNMODIFIED_SINCE, LM_TEXT)]), PROCEED);
        assert_eq!(eval(true, &[(IF_UNMODIFIED_SINCE, LATER_TEXT)]), PROCEED);
        assert_eq!(
            eval(true, &[(IF_UNMODIFIED_SINCE, EARLIER_TEXT)]),
            Precondition::Failed
        );
        // Ignored when If-Match is present (and matches).
        assert_eq!(
            eval(
                true,
                &[(IF_MATCH, "\"v1\""), (IF_UNMODIFIED_SINCE, EARLIER_TEXT)]
            ),
            PROCEED
        );
        // Ignored when malformed.
        assert_eq!(eval(true, &[(IF_UNMODIFIED_SINCE, "0")]), PROCEED);
        // Ignored when the representation has no Last-Modified.
        let h = headers(&[(IF_UNMODIFIED_SINCE, EARLIER_TEXT)]);
        let v = EntityValidators {
            etag: None,
            last_modified_unix_s: None,
        };
        assert_eq!(evaluate_preconditions(true, &h, &v), PROCEED);
    }

    #[test]
    fn if_none_match() {
        assert_eq!(
            eval(true, &[(IF_NONE_MATCH, "\"v1\"")]),
            Precondition::NotModified
        );
        assert_eq!(
            eval(true, &[(IF_NONE_MATCH, "W/\"v1\"")]),
            Precondition::NotModified
        );
        assert_eq!(
            eval(true, &[(IF_NONE_MATCH, "*")]),
            Precondition::NotModified
        );
        assert_eq!(
            eval(false, &[(IF_NONE_MATCH, "\"v1\"")]),
            Precondition::Failed
        );
        assert_eq!(eval(true, &[(IF_NONE_MATCH, "\"v0\"")]), PROCEED);
        // Malformed: no match, and If-Modified-Since stays disabled.
        assert_eq!(
            eval(true, &[(IF_NONE_MATCH, "v1"), (IF_MODIFIED_SINCE, LM_TEXT)]),
            PROCEED
        );
        // If-None-Match wins over If-Modified-Since, both ways.
        assert_eq!(
            eval(
                true,
                &[(IF_NONE_MATCH, "\"v0\""), (IF_MODIFIED_SINCE, LATER_TEXT)]
            ),
            PROCEED
        );
        assert_eq!(
            eval(
                true,
                &[(IF_NONE_MATCH, "\"v1\""), (IF_MODIFIED_SINCE, EARLIER_TEXT)]
            ),
            Precondition::NotModified
        );
    }

    #[test]
    fn if_modified_since() {
        assert_eq!(
            eval(true, &[(IF_MODIFIED_SINCE, LM_TEXT)]),
            Precondition::NotModified
        );
        assert_eq!(
            eval(true, &[(IF_MODIFIED_SINCE, LATER_TEXT)]),
            Precondition::NotModified
        );
        assert_eq!(eval(true, &[(IF_MODIFIED_SINCE, EARLIER_TEXT)]), PROCEED);
        // Only GET and HEAD.
        assert_eq!(eval(false, &[(IF_MODIFIED_SINCE, LM_TEXT)]), PROCEED);
        assert_eq!(eval(true, &[(IF_MODIFIED_SINCE, "garbage")]), PROCEED);
    }

    #[test]
    fn order_412_before_304() {
        assert_eq!(
            eval(true, &[(IF_MATCH, "\"v0\""), (IF_NONE_MATCH, "\"v1\"")]),
            Precondition::Failed
        );
        assert_eq!(
            eval(
                true,
                &[
                    (IF_UNMODIFIED_SINCE, EARLIER_TEXT),
                    (IF_MODIFIED_SINCE, LM_TEXT)
                ]
            ),
            Precondition::Failed
        );
        assert_eq!(
            eval(true, &[(IF_MATCH, "\"v1\""), (IF_NONE_MATCH, "\"v1\"")]),
            Precondition::NotModified
        );
        // 304 comes before If-Range.
        assert_eq!(
            eval(true, &[(IF_NONE_MATCH, "\"v1\""), (IF_RANGE, "\"v0\"")]),
            Precondition::NotModified
        );
    }

    #[test]
    fn if_range() {
        assert_eq!(eval(true, &[(IF_RANGE, "\"v1\"")]), PROCEED);
        assert_eq!(eval(true, &[(IF_RANGE, "\"v0\"")]), NO_RANGE);
        assert_eq!(eval(true, &[(IF_RANGE, "W/\"v1\"")]), NO_RANGE);
        assert_eq!(eval(true, &[(IF_RANGE, LM_TEXT)]), PROCEED);
        assert_eq!(eval(true, &[(IF_RANGE, LATER_TEXT)]), NO_RANGE);
        assert_eq!(eval(true, &[(IF_RANGE, EARLIER_TEXT)]), NO_RANGE);
        assert_eq!(eval(true, &[(IF_RANGE, "nonsense")]), NO_RANGE);
        // A weak current tag never matches If-Range.
        let weak = EntityValidators {
            etag: Some(tag("W/\"v1\"")),
            last_modified_unix_s: None,
        };
        let h = headers(&[(IF_RANGE, "\"v1\"")]);
        assert_eq!(evaluate_preconditions(true, &h, &weak), NO_RANGE);
        let h = headers(&[(IF_RANGE, LM_TEXT)]);
        assert_eq!(evaluate_preconditions(true, &h, &weak), NO_RANGE);
    }

    #[test]
    fn from_core_validators() {
        let v = shoal_core::Validators {
            etag: Some("\"abc\"".to_owned()),
            last_modified_unix_s: Some(7),
        };
        assert_eq!(
            EntityValidators::from(&v),
            EntityValidators {
                etag: Some(tag("\"abc\"")),
                last_modified_unix_s: Some(7),
            }
        );
        let bad = shoal_core::Validators {
            etag: Some("abc".to_owned()),
            last_modified_unix_s: None,
        };
        assert_eq!(EntityValidators::from(&bad).etag, None);
    }

    fn arb_tag() -> impl Strategy<Value = EntityTag> {
        (any::<bool>(), "[!#-~]{0,20}").prop_map(|(weak, opaque)| {
            if weak {
                EntityTag::weak(&opaque)
            } else {
                EntityTag::strong(&opaque)
            }
            .expect("valid by construction")
        })
    }

    proptest! {
        #[test]
        fn tag_display_round_trips(t in arb_tag()) {
            prop_assert_eq!(EntityTag::parse(t.to_string().as_bytes()), Ok(t));
        }

        #[test]
        fn list_round_trips(
            list in proptest::collection::vec(arb_tag(), 0..ETAG_LIST_COUNT_MAX),
            sep in prop_oneof![Just(","), Just(", "), Just(" ,\t, ")],
        ) {
            let text = list.iter().map(ToString::to_string).collect::<Vec<_>>().join(sep);
            prop_assert_eq!(parse_etag_list(text.as_bytes()), Ok(EtagList::Tags(list)));
        }

        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = EntityTag::parse(&bytes);
            let _ = parse_etag_list(&bytes);
            let _ = IfRange::parse(&bytes);
        }

        #[test]
        fn strong_implies_weak(a in arb_tag(), b in arb_tag()) {
            if a.strong_eq(&b) {
                prop_assert!(a.weak_eq(&b));
            }
            prop_assert_eq!(a.weak_eq(&b), b.weak_eq(&a));
            prop_assert_eq!(a.strong_eq(&b), b.strong_eq(&a));
        }

        /// The outcome never depends on which order the rules "happen" to
        /// be checked in: a failed If-Match always wins.
        #[test]
        fn failed_if_match_always_412(
            get in any::<bool>(),
            inm in proptest::option::of(Just(EtagList::Any)),
            ims in proptest::option::of(any::<u64>()),
        ) {
            let request = ConditionalHeaders {
                if_match: Some(EtagList::Tags(vec![])),
                if_none_match: inm,
                if_modified_since_unix_s: ims,
                ..ConditionalHeaders::default()
            };
            prop_assert_eq!(
                evaluate_preconditions(get, &request, &current()),
                Precondition::Failed
            );
        }
    }
}
