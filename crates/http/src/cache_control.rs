//! Response caching for a **shared** cache (RFC 9111): the `Cache-Control`
//! response directives, whether a response may be stored, and for how long
//! it stays fresh.
//!
//! # Decisions
//!
//! - Unknown directives are ignored (RFC 9111 §5.2.3). Directive names are
//!   case-insensitive; arguments may be tokens or quoted strings, in either
//!   form for every directive (RFC 9111 §5.2).
//! - `max-age` / `s-maxage` with an argument that is not `1*DIGIT` are
//!   invalid, and a response with invalid freshness information is treated
//!   as stale (RFC 9111 §4.2.1): the directive counts as `0`. A value too
//!   large to represent counts as 2^31 s (RFC 9111 §1.2.2). When a directive
//!   appears more than once, the first occurrence is used (RFC 9111 §4.2.1),
//!   unless any occurrence is invalid, which makes it `0`.
//! - Restrictive directives win: `no-store`, `no-cache`, `private`,
//!   `must-revalidate` and `proxy-revalidate` count even with an argument or
//!   a syntax error around them. The qualified forms `no-cache="field"` and
//!   `private="field"` are treated as unqualified, which RFC 9111 §5.2.2.4
//!   and §5.2.2.7 allow. `public` and `immutable` count only when well
//!   formed.
//! - A `Cache-Control` field longer than [`CACHE_CONTROL_LEN_MAX_BYTES`] or
//!   with more than [`CACHE_CONTROL_DIRECTIVE_COUNT_MAX`] directives is not
//!   understood, and a response the cache does not understand is not stored:
//!   it parses as `no-store`.

use http::header::{CACHE_CONTROL, DATE, EXPIRES, LAST_MODIFIED};
use http::{HeaderMap, HeaderName, StatusCode};

use crate::date::parse_http_date_unix_s;
use crate::syntax::{eq_ignore_case, is_ows, is_tchar, parse_u64_digits, DigitsError};

/// The value a too-large `delta-seconds` counts as (RFC 9111 §1.2.2).
pub const DELTA_SECONDS_MAX_S: u64 = 1 << 31;

/// The cap on heuristic freshness, one day.
pub const HEURISTIC_FRESHNESS_MAX_S: u64 = 86_400;

/// The heuristic lifetime is `(Date - Last-Modified) / this`, i.e. 10%
/// (RFC 9111 §4.2.2).
pub const HEURISTIC_FRESHNESS_DIVISOR: u64 = 10;

/// The longest `Cache-Control` understood, in bytes, over all field lines.
pub const CACHE_CONTROL_LEN_MAX_BYTES: usize = 4 * 1024;

/// The most directives understood in one response's `Cache-Control`.
pub const CACHE_CONTROL_DIRECTIVE_COUNT_MAX: usize = 64;

/// The response directives a shared cache acts on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CacheControl {
    /// `max-age`; `Some(0)` when invalid.
    pub max_age_s: Option<u64>,
    /// `s-maxage`; `Some(0)` when invalid.
    pub s_maxage_s: Option<u64>,
    pub no_store: bool,
    pub no_cache: bool,
    pub private: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub immutable: bool,
    pub public: bool,
    /// `must-understand` (RFC 9111 §5.2.2.3): store only a status whose
    /// caching rules the cache knows, and then `no-store` does not apply.
    pub must_understand: bool,
    /// `stale-while-revalidate` (RFC 5861 §3); `Some(0)` when invalid.
    pub stale_while_revalidate_s: Option<u64>,
    /// `stale-if-error` (RFC 5861 §4); `Some(0)` when invalid.
    pub stale_if_error_s: Option<u64>,
}

/// The request directives a shared cache acts on (RFC 9111 §5.2.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RequestCacheControl {
    /// `max-age`: the client accepts nothing older; `Some(0)` when invalid.
    pub max_age_s: Option<u64>,
    /// `max-stale`: `Some(None)` without a value (any staleness),
    /// `Some(Some(n))` with one. An invalid value counts as absent.
    pub max_stale: Option<Option<u64>>,
    /// `min-fresh`: the answer must stay fresh this much longer; `Some(0)`
    /// when invalid.
    pub min_fresh_s: Option<u64>,
    pub no_cache: bool,
    pub no_store: bool,
    pub only_if_cached: bool,
    /// `stale-if-error` on a request (RFC 5861 §4).
    pub stale_if_error_s: Option<u64>,
}

/// The field a CDN reads instead of `Cache-Control` when present (RFC
/// 9213).
pub const CDN_CACHE_CONTROL: &str = "cdn-cache-control";

/// One `max-age`-like directive while its occurrences are read.
#[derive(Clone, Copy, Default)]
struct DeltaDirective {
    first_s: Option<u64>,
    invalid: bool,
}

impl DeltaDirective {
    fn record(&mut self, argument: Argument<'_>) {
        let value = match argument {
            Argument::Token(bytes) => Some(bytes),
            Argument::Quoted(ref bytes) => Some(bytes.as_slice()),
            Argument::None | Argument::Malformed => None,
        };
        match value.map(parse_u64_digits) {
            Some(Ok(seconds)) => {
                self.first_s.get_or_insert(seconds.min(DELTA_SECONDS_MAX_S));
            }
            Some(Err(DigitsError::Overflow)) => {
                self.first_s.get_or_insert(DELTA_SECONDS_MAX_S);
            }
            Some(Err(DigitsError::NotDigits)) | None => self.invalid = true,
        }
    }

    fn finish(self) -> Option<u64> {
        if self.invalid {
            Some(0)
        } else {
            self.first_s
        }
    }
}

/// A directive's argument, as written.
#[derive(Debug, PartialEq, Eq)]
enum Argument<'a> {
    None,
    Token(&'a [u8]),
    /// Unescaped contents of a quoted string.
    Quoted(Vec<u8>),
    /// A syntax error in or after the argument.
    Malformed,
}

impl CacheControl {
    /// Parses every `Cache-Control` field line of a response.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        Self::parse_lines(headers.get_all(CACHE_CONTROL).iter().map(|v| v.as_bytes()))
    }

    /// Parses one `Cache-Control` field value.
    pub fn parse(value: impl AsRef<[u8]>) -> Self {
        Self::parse_lines([value.as_ref()])
    }

    /// Parses a `Cache-Control` field sent on several lines.
    pub fn parse_lines<'a, I>(lines: I) -> Self
    where
        I: IntoIterator<Item = &'a [u8]>,
    {
        let mut cc = CacheControl::default();
        let mut max_age = DeltaDirective::default();
        let mut s_maxage = DeltaDirective::default();
        let mut stale_while_revalidate = DeltaDirective::default();
        let mut stale_if_error = DeltaDirective::default();
        let understood = for_each_directive(lines, |name, argument| {
            let is = |known: &str| eq_ignore_case(name, known.as_bytes());
            let well_formed = argument == Argument::None;
            {
                if is("max-age") {
                    max_age.record(argument);
                } else if is("s-maxage") {
                    s_maxage.record(argument);
                } else if is("stale-while-revalidate") {
                    stale_while_revalidate.record(argument);
                } else if is("stale-if-error") {
                    stale_if_error.record(argument);
                } else if is("no-store") {
                    cc.no_store = true;
                } else if is("no-cache") {
                    cc.no_cache = true;
                } else if is("private") {
                    cc.private = true;
                } else if is("must-revalidate") {
                    cc.must_revalidate = true;
                } else if is("proxy-revalidate") {
                    cc.proxy_revalidate = true;
                } else if is("must-understand") {
                    cc.must_understand = true;
                } else if is("public") {
                    cc.public |= well_formed;
                } else if is("immutable") {
                    cc.immutable |= well_formed;
                }
            }
        });
        if !understood {
            return Self::not_understood();
        }
        cc.max_age_s = max_age.finish();
        cc.s_maxage_s = s_maxage.finish();
        cc.stale_while_revalidate_s = stale_while_revalidate.finish();
        cc.stale_if_error_s = stale_if_error.finish();
        cc
    }

    /// The directives a CDN follows (RFC 9213): `CDN-Cache-Control` when
    /// the response has it, else `Cache-Control`. (`Cache-Control` still
    /// goes to clients as it is.)
    pub fn for_cdn(headers: &HeaderMap) -> Self {
        let mut cdn = headers.get_all(CDN_CACHE_CONTROL).iter().peekable();
        if cdn.peek().is_some() {
            Self::parse_lines(cdn.map(|v| v.as_bytes()))
        } else {
            Self::from_headers(headers)
        }
    }

    /// What an unreadable field means: do not store.
    fn not_understood() -> Self {
        Self {
            no_store: true,
            ..Self::default()
        }
    }

    /// Whether a shared cache must not serve this response once stale
    /// without revalidating it: `must-revalidate`, `proxy-revalidate`, or
    /// `s-maxage`, which implies `proxy-revalidate` (RFC 9111 §5.2.2.10).
    pub fn revalidate_when_stale(&self) -> bool {
        self.must_revalidate || self.proxy_revalidate || self.s_maxage_s.is_some()
    }
}

/// Calls `directive` with each directive of `lines`, in order; false if
/// the field is too long or has too many directives to be understood
/// ([`CACHE_CONTROL_LEN_MAX_BYTES`], [`CACHE_CONTROL_DIRECTIVE_COUNT_MAX`]).
fn for_each_directive<'a, I>(lines: I, mut directive: impl FnMut(&[u8], Argument<'_>)) -> bool
where
    I: IntoIterator<Item = &'a [u8]>,
{
    let mut total_len: usize = 0;
    let mut count: usize = 0;
    for line in lines {
        total_len = total_len.saturating_add(line.len());
        if total_len > CACHE_CONTROL_LEN_MAX_BYTES {
            return false;
        }
        let mut rest = line;
        while let Some((name, argument, after)) = next_directive(rest) {
            rest = after;
            count += 1;
            if count > CACHE_CONTROL_DIRECTIVE_COUNT_MAX {
                return false;
            }
            directive(name, argument);
        }
    }
    true
}

impl RequestCacheControl {
    /// Parses every `Cache-Control` line of a request. A field too long to
    /// be understood is ignored whole (the request is served as if it had
    /// none).
    pub fn from_headers(headers: &HeaderMap) -> Self {
        Self::parse_lines(headers.get_all(CACHE_CONTROL).iter().map(|v| v.as_bytes()))
    }

    /// Parses one request `Cache-Control` value.
    pub fn parse(value: impl AsRef<[u8]>) -> Self {
        Self::parse_lines([value.as_ref()])
    }

    fn parse_lines<'a, I>(lines: I) -> Self
    where
        I: IntoIterator<Item = &'a [u8]>,
    {
        let mut cc = RequestCacheControl::default();
        let mut max_age = DeltaDirective::default();
        let mut min_fresh = DeltaDirective::default();
        let mut stale_if_error = DeltaDirective::default();
        let mut max_stale = DeltaDirective::default();
        let mut max_stale_any = false;
        let understood = for_each_directive(lines, |name, argument| {
            let is = |known: &str| eq_ignore_case(name, known.as_bytes());
            if is("max-age") {
                max_age.record(argument);
            } else if is("min-fresh") {
                min_fresh.record(argument);
            } else if is("stale-if-error") {
                stale_if_error.record(argument);
            } else if is("max-stale") {
                if argument == Argument::None {
                    max_stale_any = true;
                } else {
                    max_stale.record(argument);
                }
            } else if is("no-cache") {
                cc.no_cache = true;
            } else if is("no-store") {
                cc.no_store = true;
            } else if is("only-if-cached") {
                cc.only_if_cached = true;
            }
        });
        if !understood {
            return Self::default();
        }
        cc.max_age_s = max_age.finish();
        cc.min_fresh_s = min_fresh.finish();
        cc.stale_if_error_s = stale_if_error.finish();
        cc.max_stale = if max_stale_any {
            Some(None)
        } else if max_stale.invalid {
            None
        } else {
            max_stale.first_s.map(Some)
        };
        cc
    }
}

/// Finds the next directive in `input`: its name, argument and the input
/// after it. `None` at the end. Malformed elements without a name are
/// skipped; any other syntax error makes the argument [`Argument::Malformed`].
fn next_directive(mut input: &[u8]) -> Option<(&[u8], Argument<'_>, &[u8])> {
    loop {
        input = skip_while(input, |b| is_ows(b) || b == b',');
        if input.is_empty() {
            return None;
        }
        let name_len = input
            .iter()
            .position(|&b| !is_tchar(b))
            .unwrap_or(input.len());
        if name_len == 0 {
            // Not a directive at all: skip this element.
            input = skip_element(input);
            continue;
        }
        let (name, mut rest) = input.split_at(name_len);
        rest = skip_while(rest, is_ows);
        let mut argument = Argument::None;
        if let Some(after_equals) = rest.strip_prefix(b"=") {
            let value = skip_while(after_equals, is_ows);
            (argument, rest) = parse_argument(value);
        }
        rest = skip_while(rest, is_ows);
        if !rest.is_empty() && !rest.starts_with(b",") {
            argument = Argument::Malformed;
            rest = skip_element(rest);
        }
        return Some((name, argument, rest));
    }
}

/// Parses `token / quoted-string` at the start of `input`.
fn parse_argument(input: &[u8]) -> (Argument<'_>, &[u8]) {
    let Some(mut rest) = input.strip_prefix(b"\"") else {
        let len = input
            .iter()
            .position(|&b| !is_tchar(b))
            .unwrap_or(input.len());
        let (token, rest) = input.split_at(len);
        let argument = if token.is_empty() {
            Argument::Malformed
        } else {
            Argument::Token(token)
        };
        return (argument, rest);
    };
    // On a byte that may not appear in a quoted string, keep scanning to
    // the closing quote anyway, so that a comma inside the string is never
    // taken for the end of the directive.
    let mut unescaped = Vec::new();
    let mut malformed = false;
    loop {
        match rest.split_first() {
            None => return (Argument::Malformed, rest),
            Some((b'"', after)) => {
                let argument = if malformed {
                    Argument::Malformed
                } else {
                    Argument::Quoted(unescaped)
                };
                return (argument, after);
            }
            Some((b'\\', after)) => match after.split_first() {
                Some((&escaped, after)) => {
                    malformed |= !is_quoted_text(escaped);
                    unescaped.push(escaped);
                    rest = after;
                }
                None => return (Argument::Malformed, after),
            },
            Some((&byte, after)) => {
                malformed |= !is_quoted_text(byte);
                unescaped.push(byte);
                rest = after;
            }
        }
    }
}

/// `qdtext` and the characters a `quoted-pair` may escape: HTAB, SP,
/// visible ASCII and `obs-text`.
fn is_quoted_text(byte: u8) -> bool {
    byte == b'\t' || byte == b' ' || (0x21..=0x7e).contains(&byte) || byte >= 0x80
}

fn skip_while(input: &[u8], pred: impl Fn(u8) -> bool) -> &[u8] {
    let start = input.iter().position(|&b| !pred(b)).unwrap_or(input.len());
    input.get(start..).unwrap_or_default()
}

/// Skips to the next comma that is not inside a quoted string.
fn skip_element(input: &[u8]) -> &[u8] {
    let mut in_quotes = false;
    let mut escaped = false;
    for (index, &byte) in input.iter().enumerate() {
        if escaped {
            escaped = false;
        } else if in_quotes && byte == b'\\' {
            escaped = true;
        } else if byte == b'"' {
            in_quotes = !in_quotes;
        } else if byte == b',' && !in_quotes {
            return input.get(index..).unwrap_or_default();
        }
    }
    &[]
}

/// The `Expires` header of a response (RFC 9111 §5.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Expires {
    /// A valid HTTP-date, in seconds since the Unix epoch.
    AtUnixS(u64),
    /// Not a valid HTTP-date (`0` is the classic): already expired.
    Invalid,
}

impl Expires {
    /// Parses an `Expires` value; invalid dates mean "in the past".
    pub fn parse(value: impl AsRef<[u8]>) -> Expires {
        parse_http_date_unix_s(value).map_or(Expires::Invalid, Expires::AtUnixS)
    }

    /// The response's `Expires`, if any. Sent on more than one line it is
    /// [`Expires::Invalid`]: RFC 9111 §4.2.1 allows treating such a
    /// response as stale.
    pub fn from_headers(headers: &HeaderMap) -> Option<Expires> {
        let mut lines = headers.get_all(EXPIRES).iter();
        let first = lines.next()?;
        Some(match lines.next() {
            None => Expires::parse(first.as_bytes()),
            Some(_) => Expires::Invalid,
        })
    }
}

/// The freshness lifetime of a response in a **shared** cache, in seconds
/// (RFC 9111 §4.2.1), first rule that applies:
///
/// 1. `no-cache`: 0 (every reuse must be validated).
/// 2. `s-maxage`.
/// 3. `max-age`.
/// 4. `Expires - Date` (0 if `Expires` is invalid or before `Date`).
/// 5. Heuristic: 10% of `Date - Last-Modified`, at most
///    [`HEURISTIC_FRESHNESS_MAX_S`].
/// 6. 0.
///
/// A missing `Date` counts as `now_unix_s`, the time the response was
/// received (RFC 9110 §6.6.1). Call this only for responses
/// [`is_storable`] accepts: that is what restricts the heuristic to
/// heuristically cacheable status codes or `public` (RFC 9111 §4.2.2).
pub fn freshness_lifetime_s(
    cc: &CacheControl,
    expires: Option<Expires>,
    date_unix_s: Option<u64>,
    last_modified_unix_s: Option<u64>,
    now_unix_s: u64,
) -> u64 {
    if cc.no_cache {
        return 0;
    }
    if let Some(s_maxage) = cc.s_maxage_s {
        return s_maxage;
    }
    if let Some(max_age) = cc.max_age_s {
        return max_age;
    }
    let date = date_unix_s.unwrap_or(now_unix_s);
    match expires {
        Some(Expires::AtUnixS(expires)) => expires.saturating_sub(date),
        Some(Expires::Invalid) => 0,
        None => last_modified_unix_s.map_or(0, |modified| {
            (date.saturating_sub(modified) / HEURISTIC_FRESHNESS_DIVISOR)
                .min(HEURISTIC_FRESHNESS_MAX_S)
        }),
    }
}

/// [`freshness_lifetime_s`] with its inputs read from a response's
/// headers: every `Cache-Control` line, `Expires`, `Date` and
/// `Last-Modified`. A `Date` or `Last-Modified` that is invalid or sent on
/// more than one line counts as absent.
pub fn freshness_lifetime_for_headers(headers: &HeaderMap, now_unix_s: u64) -> u64 {
    let date = |name: HeaderName| crate::date::header_date_unix_s(headers, name);
    freshness_lifetime_s(
        &CacheControl::from_headers(headers),
        Expires::from_headers(headers),
        date(DATE),
        date(LAST_MODIFIED),
        now_unix_s,
    )
}

/// Status codes a cache may give a heuristic lifetime (RFC 9110 §15.1).
pub fn is_heuristically_cacheable(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 206 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// Status codes whose caching rules this cache implements, for
/// `must-understand` (RFC 9111 §5.2.2.3): the heuristically cacheable
/// ones, the other redirects, and the errors RFC 9110 defines.
pub fn understands_status(status: StatusCode) -> bool {
    is_heuristically_cacheable(status)
        || matches!(
            status.as_u16(),
            302 | 303 | 307 | 400 | 401 | 403 | 406..=409 | 411..=413 | 415..=418 | 421..=426
                | 428 | 429 | 431 | 451 | 500 | 502..=505
        )
}

/// May a **shared** cache store this response (RFC 9111 §3)?
///
/// Not when `no-store` (unless `must-understand` and a status this cache
/// understands) or `private` is present, nor with `must-understand` and a
/// status it does not understand, nor for an interim (1xx)
/// or `304` response (which only refreshes what is stored). Otherwise yes
/// for heuristically cacheable status codes (`206` included: shoal caches
/// understand partial content), and for other final codes only with
/// explicit freshness (`max-age`, `s-maxage`, or `Expires` when
/// `has_expires`: the caller knows whether it counts) or `public`.
///
/// The request side (method, `Authorization`) is the caller's: see
/// [`may_store_authorized`].
pub fn is_storable(status: StatusCode, cc: &CacheControl, has_expires: bool) -> bool {
    if cc.must_understand {
        if !understands_status(status) {
            return false;
        }
    } else if cc.no_store {
        return false;
    }
    if cc.private {
        return false;
    }
    if status.is_informational() || status == StatusCode::NOT_MODIFIED {
        return false;
    }
    is_heuristically_cacheable(status)
        || has_expires
        || cc.public
        || cc.max_age_s.is_some()
        || cc.s_maxage_s.is_some()
}

/// May a shared cache store a response to a request that carried
/// `Authorization`? Only if the response says so with `public`,
/// `must-revalidate` or `s-maxage` (RFC 9111 §3.5).
pub fn may_store_authorized(cc: &CacheControl) -> bool {
    cc.public || cc.must_revalidate || cc.s_maxage_s.is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

    fn cc(value: &str) -> CacheControl {
        CacheControl::parse(value.as_bytes())
    }

    #[test]
    fn parses_common_values() {
        assert_eq!(
            cc("public, max-age=31536000, immutable"),
            CacheControl {
                public: true,
                max_age_s: Some(31_536_000),
                immutable: true,
                ..CacheControl::default()
            }
        );
        assert_eq!(
            cc("private, no-cache, no-store, must-revalidate"),
            CacheControl {
                private: true,
                no_cache: true,
                no_store: true,
                must_revalidate: true,
                ..CacheControl::default()
            }
        );
        assert_eq!(
            cc("max-age=60, s-maxage=600, proxy-revalidate"),
            CacheControl {
                max_age_s: Some(60),
                s_maxage_s: Some(600),
                proxy_revalidate: true,
                ..CacheControl::default()
            }
        );
        assert_eq!(cc(""), CacheControl::default());
        assert_eq!(cc(" , ,"), CacheControl::default());
    }

    #[test]
    fn case_whitespace_and_quotes() {
        assert_eq!(cc("MAX-AGE=5").max_age_s, Some(5));
        assert_eq!(cc("max-age=\"5\"").max_age_s, Some(5));
        assert_eq!(cc("max-age = 5").max_age_s, Some(5));
        assert_eq!(cc("\tmax-age=5\t,\tpublic ").max_age_s, Some(5));
        assert_eq!(cc("max-age=005").max_age_s, Some(5));
        // A quoted argument may hold commas and escaped quotes.
        let parsed = cc("community=\"a, \\\"b\\\", c\", max-age=7, public");
        assert_eq!(parsed.max_age_s, Some(7));
        assert!(parsed.public);
        let parsed = cc("no-cache=\"Set-Cookie, X-Foo\", max-age=9");
        assert!(parsed.no_cache);
        assert_eq!(parsed.max_age_s, Some(9));
        assert!(cc("private=\"Set-Cookie\"").private);
    }

    #[test]
    fn rfc_5861_and_request_directives() {
        let parsed = cc("max-age=60, stale-while-revalidate=30, stale-if-error=\"600\"");
        assert_eq!(parsed.stale_while_revalidate_s, Some(30));
        assert_eq!(parsed.stale_if_error_s, Some(600));
        let request = RequestCacheControl::parse("max-age=5, min-fresh=2, max-stale, no-cache");
        assert_eq!(request.max_age_s, Some(5));
        assert_eq!(request.min_fresh_s, Some(2));
        assert_eq!(request.max_stale, Some(None));
        assert!(request.no_cache && !request.only_if_cached);
        assert_eq!(
            RequestCacheControl::parse("max-stale=30").max_stale,
            Some(Some(30))
        );
        assert_eq!(RequestCacheControl::parse("max-stale=x").max_stale, None);
        assert!(RequestCacheControl::parse("only-if-cached, no-store").only_if_cached);
        assert!(RequestCacheControl::parse("only-if-cached, no-store").no_store);
        let long = "a, ".repeat(CACHE_CONTROL_LEN_MAX_BYTES);
        assert_eq!(
            RequestCacheControl::parse(format!("no-cache, {long}")),
            RequestCacheControl::default()
        );
    }

    /// RFC 9213: `CDN-Cache-Control` replaces `Cache-Control` for the CDN.
    #[test]
    fn cdn_cache_control_takes_precedence() {
        let mut headers = HeaderMap::new();
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        assert!(CacheControl::for_cdn(&headers).no_store);
        headers.insert(
            CDN_CACHE_CONTROL,
            HeaderValue::from_static("max-age=600, stale-if-error=60"),
        );
        let cdn = CacheControl::for_cdn(&headers);
        assert!(!cdn.no_store);
        assert_eq!(cdn.max_age_s, Some(600));
        assert_eq!(cdn.stale_if_error_s, Some(60));
    }

    #[test]
    fn unknown_directives_are_ignored() {
        assert_eq!(
            cc("stale-while-revalidate=30, foo, bar=\"baz\", max-age=3"),
            CacheControl {
                max_age_s: Some(3),
                stale_while_revalidate_s: Some(30),
                ..CacheControl::default()
            }
        );
        // A name-less element is skipped, the rest is still read.
        assert_eq!(cc("=5, \"x\", max-age=4").max_age_s, Some(4));
    }

    #[test]
    fn invalid_max_age_means_stale() {
        for value in [
            "max-age=abc",
            "max-age=-1",
            "max-age=1.5",
            "max-age=",
            "max-age",
            "max-age=\"\"",
            "max-age=\"5",
            "max-age=5 6",
            "max-age=5, max-age=x",
            "max-age=x, max-age=5",
        ] {
            assert_eq!(cc(value).max_age_s, Some(0), "{value:?}");
        }
        assert_eq!(cc("s-maxage=soon").s_maxage_s, Some(0));
    }

    #[test]
    fn huge_and_duplicate_values() {
        assert_eq!(
            cc("max-age=99999999999999999999999").max_age_s,
            Some(DELTA_SECONDS_MAX_S)
        );
        assert_eq!(
            cc("max-age=4294967296").max_age_s,
            Some(DELTA_SECONDS_MAX_S)
        );
        assert_eq!(cc("max-age=10, max-age=5").max_age_s, Some(10));
        assert_eq!(
            CacheControl::parse_lines([&b"max-age=10"[..], b"max-age=20, no-store"]),
            CacheControl {
                max_age_s: Some(10),
                no_store: true,
                ..CacheControl::default()
            }
        );
    }

    #[test]
    fn restrictive_directives_survive_errors() {
        assert!(cc("no-store garbage").no_store);
        assert!(cc("no-store=1").no_store);
        assert!(cc("must-revalidate=\"x").must_revalidate);
        assert!(!cc("public=\"x\"").public);
        assert!(!cc("public garbage").public);
        assert!(!cc("immutable=yes").immutable);
        // A bad byte inside quotes does not end the string early.
        let parsed = CacheControl::parse(b"x=\"a\x01, b\", no-store, max-age=\"\x01\"");
        assert!(parsed.no_store);
        assert_eq!(parsed.max_age_s, Some(0));
    }

    #[test]
    fn oversized_fields_are_not_stored() {
        let long = format!("max-age=60,{}", " ".repeat(CACHE_CONTROL_LEN_MAX_BYTES));
        assert!(cc(&long).no_store);
        let many = vec!["x"; CACHE_CONTROL_DIRECTIVE_COUNT_MAX + 1].join(",");
        assert!(cc(&many).no_store);
        let ok = vec!["x"; CACHE_CONTROL_DIRECTIVE_COUNT_MAX].join(",");
        assert!(!cc(&ok).no_store);
    }

    #[test]
    fn from_headers_reads_all_lines() {
        let mut headers = HeaderMap::new();
        headers.append(CACHE_CONTROL, HeaderValue::from_static("public"));
        headers.append(CACHE_CONTROL, HeaderValue::from_static("max-age=30"));
        headers.append(
            EXPIRES,
            HeaderValue::from_static("Thu, 01 Jan 1970 00:01:00 GMT"),
        );
        let parsed = CacheControl::from_headers(&headers);
        assert!(parsed.public);
        assert_eq!(parsed.max_age_s, Some(30));
        assert_eq!(Expires::from_headers(&headers), Some(Expires::AtUnixS(60)));
        headers.append(
            EXPIRES,
            HeaderValue::from_static("Thu, 01 Jan 1970 00:01:00 GMT"),
        );
        assert_eq!(Expires::from_headers(&headers), Some(Expires::Invalid));
        assert_eq!(Expires::from_headers(&HeaderMap::new()), None);
        assert_eq!(Expires::parse(b"0"), Expires::Invalid);
    }

    #[test]
    fn freshness_order() {
        let now = 1_000_000;
        let lifetime = |c: &str, e: Option<Expires>, d: Option<u64>, lm: Option<u64>| {
            freshness_lifetime_s(&cc(c), e, d, lm, now)
        };
        let exp = Some(Expires::AtUnixS(now + 500));
        assert_eq!(lifetime("s-maxage=10, max-age=20", exp, None, Some(0)), 10);
        assert_eq!(lifetime("max-age=20", exp, None, Some(0)), 20);
        assert_eq!(lifetime("max-age=bad", exp, None, Some(0)), 0);
        assert_eq!(lifetime("max-age=bad, s-maxage=30", exp, None, None), 30);
        assert_eq!(lifetime("max-age=20, no-cache", exp, None, None), 0);
        assert_eq!(lifetime("", exp, None, Some(0)), 500);
        assert_eq!(lifetime("", exp, Some(now - 100), Some(0)), 600);
        assert_eq!(lifetime("", Some(Expires::AtUnixS(now - 1)), None, None), 0);
        assert_eq!(lifetime("", Some(Expires::Invalid), None, Some(0)), 0);
        // Heuristic: 10% of Date - Last-Modified, capped at one day.
        assert_eq!(lifetime("", None, Some(now), Some(now - 1000)), 100);
        assert_eq!(lifetime("", None, None, Some(now - 1000)), 100);
        assert_eq!(
            lifetime("", None, Some(now), Some(0)),
            HEURISTIC_FRESHNESS_MAX_S
        );
        assert_eq!(lifetime("", None, Some(now), Some(now + 50)), 0);
        assert_eq!(lifetime("", None, Some(now), None), 0);
        assert_eq!(lifetime("public", None, Some(now), None), 0);
    }

    #[test]
    fn freshness_from_headers() {
        let now = 1_000_000;
        let mut headers = HeaderMap::new();
        assert_eq!(freshness_lifetime_for_headers(&headers, now), 0);
        // Date 1970-01-12T13:46:40Z = 1_000_000; Last-Modified 1000 s earlier.
        headers.insert(
            DATE,
            HeaderValue::from_static("Mon, 12 Jan 1970 13:46:40 GMT"),
        );
        headers.insert(
            LAST_MODIFIED,
            HeaderValue::from_static("Mon, 12 Jan 1970 13:30:00 GMT"),
        );
        assert_eq!(freshness_lifetime_for_headers(&headers, now), 100);
        headers.insert(
            EXPIRES,
            HeaderValue::from_static("Mon, 12 Jan 1970 13:47:40 GMT"),
        );
        assert_eq!(freshness_lifetime_for_headers(&headers, now), 60);
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("max-age=5"));
        assert_eq!(freshness_lifetime_for_headers(&headers, now), 5);
        headers.append(CACHE_CONTROL, HeaderValue::from_static("s-maxage=7"));
        assert_eq!(freshness_lifetime_for_headers(&headers, now), 7);
        // A repeated Date is ignored: `now` stands in for it.
        headers.remove(CACHE_CONTROL);
        headers.append(
            DATE,
            HeaderValue::from_static("Mon, 12 Jan 1970 13:46:00 GMT"),
        );
        assert_eq!(freshness_lifetime_for_headers(&headers, now), 60);
        assert_eq!(freshness_lifetime_for_headers(&headers, now + 30), 30);
    }

    #[test]
    fn storability() {
        assert!(is_storable(StatusCode::OK, &cc(""), false));
        assert!(is_storable(
            StatusCode::PARTIAL_CONTENT,
            &cc("max-age=5"),
            false
        ));
        assert!(is_storable(StatusCode::NOT_FOUND, &cc(""), false));
        assert!(!is_storable(StatusCode::FOUND, &cc(""), false));
        assert!(is_storable(StatusCode::FOUND, &cc(""), true));
        assert!(is_storable(StatusCode::FOUND, &cc("max-age=5"), false));
        assert!(is_storable(StatusCode::OK, &cc("no-cache"), false));
        assert!(!is_storable(StatusCode::OK, &cc("no-store"), false));
        assert!(!is_storable(StatusCode::OK, &cc("private"), false));
        assert!(!is_storable(StatusCode::OK, &cc("public, private"), false));
        assert!(!is_storable(
            StatusCode::NOT_MODIFIED,
            &cc("max-age=5"),
            false
        ));
        assert!(!is_storable(StatusCode::CONTINUE, &cc("max-age=5"), false));
        assert!(!is_storable(StatusCode::FOUND, &cc(""), false));
        assert!(is_storable(StatusCode::FOUND, &cc("max-age=5"), false));
        assert!(is_storable(
            StatusCode::INTERNAL_SERVER_ERROR,
            &cc("public"),
            false
        ));
        assert!(!is_storable(
            StatusCode::INTERNAL_SERVER_ERROR,
            &cc(""),
            false
        ));
        // RFC 9111 §5.2.2.3.
        let status_599 = StatusCode::from_u16(599).unwrap();
        assert!(is_storable(status_599, &cc("max-age=60"), false));
        assert!(!is_storable(
            status_599,
            &cc("max-age=60, must-understand"),
            false
        ));
        assert!(is_storable(
            StatusCode::OK,
            &cc("no-store, must-understand"),
            false
        ));
        assert!(!is_storable(StatusCode::OK, &cc("no-store"), false));
        assert!(may_store_authorized(&cc("s-maxage=1")));
        assert!(may_store_authorized(&cc("must-revalidate")));
        assert!(!may_store_authorized(&cc("max-age=100")));
        assert!(cc("s-maxage=1").revalidate_when_stale());
        assert!(!cc("max-age=1").revalidate_when_stale());
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = CacheControl::parse(&bytes);
            let _ = Expires::parse(&bytes);
        }

        #[test]
        fn plausible_text_never_panics(s in "[a-z=\", \\\\0-9-]{0,80}") {
            let _ = CacheControl::parse(s.as_bytes());
        }

        #[test]
        fn directives_are_found_in_any_position(
            max_age in 0u64..DELTA_SECONDS_MAX_S,
            noise in proptest::collection::vec("[a-z]{1,8}(=[a-z0-9]{1,5}|=\"[a-z ,]{0,8}\")?", 0..5),
            position in any::<prop::sample::Index>(),
        ) {
            let mut parts = noise;
            let at = position.index(parts.len() + 1);
            parts.insert(at, format!("max-age={max_age}"));
            parts.push("no-store".to_owned());
            let parsed = cc(&parts.join(", "));
            prop_assert_eq!(parsed.max_age_s, Some(max_age));
            prop_assert!(parsed.no_store);
        }

        #[test]
        fn lifetime_never_exceeds_explicit_or_cap(
            max_age in proptest::option::of(0u64..1_000_000),
            date in proptest::option::of(any::<u64>()),
            lm in proptest::option::of(any::<u64>()),
            now in any::<u64>(),
        ) {
            let c = CacheControl { max_age_s: max_age, ..CacheControl::default() };
            let life = freshness_lifetime_s(&c, None, date, lm, now);
            match max_age {
                Some(m) => prop_assert_eq!(life, m),
                None => prop_assert!(life <= HEURISTIC_FRESHNESS_MAX_S),
            }
        }
    }
}
