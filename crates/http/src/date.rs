//! HTTP-date (RFC 9110 §5.6.7) parsing and formatting, as `SystemTime` or
//! as whole seconds since the Unix epoch.
//!
//! A thin, panic-free layer over `httpdate`: `httpdate` panics when asked to
//! format a time before 1970 or after 9999, so formatting here clamps into
//! the representable range first. HTTP-dates have one-second resolution;
//! sub-second parts are truncated.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::syntax::trim_ows;

/// The last instant an HTTP-date can express, `Fri, 31 Dec 9999 23:59:59
/// GMT`, in seconds since the Unix epoch.
pub const HTTP_DATE_UNIX_S_MAX: u64 = 253_402_300_799;

/// The longest header value accepted as a date, in bytes. The longest valid
/// form (RFC 850, `Wednesday, 09-Nov-94 08:49:37 GMT`) is 37 bytes.
pub const HTTP_DATE_LEN_MAX_BYTES: usize = 64;

/// Why a value is not an HTTP-date.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DateError {
    #[error("HTTP-date is {len} bytes (at most {HTTP_DATE_LEN_MAX_BYTES})")]
    TooLong { len: usize },
    #[error("not a valid HTTP-date")]
    Invalid,
}

/// Parses an HTTP-date in any of the three formats a recipient must accept
/// (IMF-fixdate, RFC 850, asctime), ignoring surrounding whitespace.
pub fn parse_http_date(value: impl AsRef<[u8]>) -> Result<SystemTime, DateError> {
    parse_http_date_unix_s(value).map(system_time_from_unix_s)
}

/// Like [`parse_http_date`], in seconds since the Unix epoch.
/// The date in a response field sent on exactly one line (`Date`,
/// `Last-Modified`); `None` when absent, repeated or invalid.
pub fn header_date_unix_s(headers: &http::HeaderMap, name: http::HeaderName) -> Option<u64> {
    let mut lines = headers.get_all(name).iter();
    match (lines.next(), lines.next()) {
        (Some(value), None) => parse_http_date_unix_s(value).ok(),
        _ => None,
    }
}

pub fn parse_http_date_unix_s(value: impl AsRef<[u8]>) -> Result<u64, DateError> {
    let value = value.as_ref();
    if value.len() > HTTP_DATE_LEN_MAX_BYTES {
        return Err(DateError::TooLong { len: value.len() });
    }
    let value = trim_ows(value);
    // `httpdate` trims any Unicode whitespace (CR, LF, ...) itself; an
    // HTTP-date is visible ASCII and spaces only, so check that first.
    if !value.iter().all(|&b| b == b' ' || b.is_ascii_graphic()) {
        return Err(DateError::Invalid);
    }
    let text = std::str::from_utf8(value).map_err(|_| DateError::Invalid)?;
    let time = httpdate::parse_http_date(text).map_err(|_| DateError::Invalid)?;
    // `httpdate` only produces dates in 1970..=9999, so this cannot fail;
    // map it to an error anyway rather than trust that.
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .map_err(|_| DateError::Invalid)
}

/// Formats `time` as an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`).
/// Times before 1970 format as the epoch and times after 9999 as the last
/// second of 9999, instead of panicking.
pub fn format_http_date(time: SystemTime) -> String {
    let unix_s = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    format_http_date_unix_s(unix_s)
}

/// Formats seconds since the Unix epoch as an IMF-fixdate, clamping to
/// [`HTTP_DATE_UNIX_S_MAX`].
pub fn format_http_date_unix_s(unix_s: u64) -> String {
    httpdate::fmt_http_date(system_time_from_unix_s(unix_s.min(HTTP_DATE_UNIX_S_MAX)))
}

/// Whole seconds since the Unix epoch; `0` for times before it.
pub fn unix_s_from_system_time(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The `SystemTime` `unix_s` seconds after the epoch, saturating at the
/// latest time the platform can represent.
pub fn system_time_from_unix_s(unix_s: u64) -> SystemTime {
    UNIX_EPOCH
        .checked_add(Duration::from_secs(unix_s))
        .or_else(|| UNIX_EPOCH.checked_add(Duration::from_secs(HTTP_DATE_UNIX_S_MAX)))
        .unwrap_or(UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EXAMPLE_UNIX_S: u64 = 784_111_777; // Sun, 06 Nov 1994 08:49:37 GMT

    #[test]
    fn parses_all_three_formats() {
        for value in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            "  Sun, 06 Nov 1994 08:49:37 GMT\t",
        ] {
            assert_eq!(
                parse_http_date_unix_s(value.as_bytes()),
                Ok(EXAMPLE_UNIX_S),
                "{value:?}"
            );
        }
        assert_eq!(
            parse_http_date(b"Sun, 06 Nov 1994 08:49:37 GMT"),
            Ok(UNIX_EPOCH + Duration::from_secs(EXAMPLE_UNIX_S))
        );
    }

    #[test]
    fn rejects_invalid() {
        for value in [
            &b""[..],
            b"0",
            b"-1",
            b"Sun, 06 Nov 1994 08:49:37",
            b"Mon, 06 Nov 1994 08:49:37 GMT", // wrong weekday
            b"Sun, 32 Nov 1994 08:49:37 GMT",
            b"Sun, 06 Nov 1994 08:49:37 GMT\xff",
            b"Sun, 06 Nov 1994 08:49:37 GMT\r\n",
        ] {
            assert_eq!(
                parse_http_date_unix_s(value),
                Err(DateError::Invalid),
                "{value:?}"
            );
        }
        assert_eq!(
            parse_http_date_unix_s([b' '; HTTP_DATE_LEN_MAX_BYTES + 1]),
            Err(DateError::TooLong {
                len: HTTP_DATE_LEN_MAX_BYTES + 1
            })
        );
    }

    #[test]
    fn formats_and_clamps() {
        assert_eq!(
            format_http_date_unix_s(EXAMPLE_UNIX_S),
            "Sun, 06 Nov 1994 08:49:37 GMT"
        );
        assert_eq!(format_http_date_unix_s(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(
            format_http_date_unix_s(u64::MAX),
            "Fri, 31 Dec 9999 23:59:59 GMT"
        );
        let before_epoch = UNIX_EPOCH
            .checked_sub(Duration::from_secs(10))
            .expect("platform represents 1969");
        assert_eq!(
            format_http_date(before_epoch),
            "Thu, 01 Jan 1970 00:00:00 GMT"
        );
        assert_eq!(unix_s_from_system_time(before_epoch), 0);
        assert_eq!(
            format_http_date(UNIX_EPOCH + Duration::from_millis(1_999)),
            "Thu, 01 Jan 1970 00:00:01 GMT"
        );
    }

    proptest! {
        #[test]
        fn format_parse_round_trip(unix_s in 0..=HTTP_DATE_UNIX_S_MAX) {
            let text = format_http_date_unix_s(unix_s);
            prop_assert_eq!(parse_http_date_unix_s(text.as_bytes()), Ok(unix_s));
        }

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = parse_http_date(&bytes);
        }

        #[test]
        fn format_never_panics(unix_s in any::<u64>()) {
            let _ = format_http_date_unix_s(unix_s);
            let _ = format_http_date(system_time_from_unix_s(unix_s));
        }
    }
}
