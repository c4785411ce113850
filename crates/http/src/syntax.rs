//! Shared low-level syntax of RFC 9110 §5.6: tokens, whitespace, digits.
//!
//! Everything here works on bytes, takes no allocation and never panics.

/// `OWS` characters: space and horizontal tab (RFC 9110 §5.6.3).
pub(crate) fn is_ows(byte: u8) -> bool {
    byte == b' ' || byte == b'\t'
}

/// `tchar` (RFC 9110 §5.6.2).
pub(crate) fn is_tchar(byte: u8) -> bool {
    byte.is_ascii_alphanumeric()
        || matches!(
            byte,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

/// A non-empty `token` (RFC 9110 §5.6.2).
pub(crate) fn is_token(bytes: &[u8]) -> bool {
    !bytes.is_empty() && bytes.iter().all(|&b| is_tchar(b))
}

/// `bytes` without leading and trailing `OWS`.
pub(crate) fn trim_ows(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|&b| !is_ows(b))
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|&b| !is_ows(b))
        .map_or(start, |last| last + 1);
    bytes.get(start..end).unwrap_or_default()
}

/// Why a `1*DIGIT` field did not parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DigitsError {
    /// Empty, or a byte that is not an ASCII digit.
    NotDigits,
    /// The value does not fit in a `u64`.
    Overflow,
}

/// Parses `1*DIGIT` as a `u64`. Leading zeros are allowed, as the grammar
/// allows them; a sign, whitespace or an empty string is not.
pub(crate) fn parse_u64_digits(bytes: &[u8]) -> Result<u64, DigitsError> {
    if bytes.is_empty() {
        return Err(DigitsError::NotDigits);
    }
    let mut value: u64 = 0;
    let mut overflowed = false;
    for &byte in bytes {
        if !byte.is_ascii_digit() {
            return Err(DigitsError::NotDigits);
        }
        // Keep scanning after an overflow so that "99999999999999999999x"
        // reports the syntax error, which is the more useful diagnosis.
        match value
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(byte - b'0')))
        {
            Some(next) => value = next,
            None => overflowed = true,
        }
    }
    if overflowed {
        Err(DigitsError::Overflow)
    } else {
        Ok(value)
    }
}

/// Case-insensitive ASCII equality, for unit and directive names.
pub(crate) fn eq_ignore_case(a: &[u8], b: &[u8]) -> bool {
    a.eq_ignore_ascii_case(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_ows_only() {
        assert_eq!(trim_ows(b"  a b\t "), b"a b");
        assert_eq!(trim_ows(b" \t "), b"");
        assert_eq!(trim_ows(b""), b"");
        assert_eq!(trim_ows(b"\r\na\r\n"), b"\r\na\r\n");
    }

    #[test]
    fn digits() {
        assert_eq!(parse_u64_digits(b"0"), Ok(0));
        assert_eq!(parse_u64_digits(b"007"), Ok(7));
        assert_eq!(parse_u64_digits(b"18446744073709551615"), Ok(u64::MAX));
        assert_eq!(
            parse_u64_digits(b"18446744073709551616"),
            Err(DigitsError::Overflow)
        );
        assert_eq!(parse_u64_digits(b"000000000000000000000000000001"), Ok(1));
        assert_eq!(parse_u64_digits(b""), Err(DigitsError::NotDigits));
        assert_eq!(parse_u64_digits(b"+1"), Err(DigitsError::NotDigits));
        assert_eq!(parse_u64_digits(b"1 "), Err(DigitsError::NotDigits));
        assert_eq!(
            parse_u64_digits(b"99999999999999999999x"),
            Err(DigitsError::NotDigits)
        );
    }

    #[test]
    fn tokens() {
        assert!(is_token(b"bytes"));
        assert!(is_token(b"max-age"));
        assert!(!is_token(b""));
        assert!(!is_token(b"a b"));
        assert!(!is_token(b"a=b"));
        assert!(!is_token(b"\"a\""));
    }
}
