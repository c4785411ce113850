//! The `Host` request header (RFC 9110 §7.2, RFC 9112 §3.2).
//!
//! A server must answer `400` to an HTTP/1.1 request without exactly one
//! valid `Host` line (RFC 9112 §3.2). [`check_host_lines`] says whether the
//! lines of a request pass; [`parse_host`] checks one value against
//! `uri-host [ ":" port ]` (RFC 3986 §3.2.2): an IP literal in brackets, an
//! IPv4 address or a registered name of unreserved, percent-encoded and
//! sub-delimiter characters. User information (`user@host`) is not part of
//! a `Host` and is refused.

/// The longest `Host` value accepted, in bytes (a DNS name is at most 253,
/// plus a port and brackets).
pub const HOST_LEN_MAX_BYTES: usize = 300;

/// Why a request's `Host` lines were refused. Each is the client's error
/// (`400`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("an HTTP/1.1 request must carry a Host header (RFC 9112 §3.2)")]
    Missing,
    #[error("the request carries {count} Host headers; exactly one is allowed")]
    Several { count: usize },
    #[error("the Host header is {len} bytes (at most {HOST_LEN_MAX_BYTES})")]
    TooLong { len: usize },
    #[error("the Host header is not `host[:port]` (RFC 3986 §3.2.2)")]
    Invalid,
}

/// A valid `Host` value: the host part (lowercased) and the port if given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    pub name: String,
    pub port: Option<u16>,
}

/// Parses one `Host` value. An empty value is valid (RFC 9110 §7.2: sent
/// when the target URI has no authority).
pub fn parse_host(value: &[u8]) -> Result<Host, HostError> {
    if value.len() > HOST_LEN_MAX_BYTES {
        return Err(HostError::TooLong { len: value.len() });
    }
    let (name, port) = if value.first() == Some(&b'[') {
        let close = value
            .iter()
            .position(|&b| b == b']')
            .ok_or(HostError::Invalid)?;
        let (literal, rest) = value.split_at(close + 1);
        let inner = literal.get(1..literal.len() - 1).unwrap_or_default();
        if inner.is_empty()
            || !inner
                .iter()
                .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return Err(HostError::Invalid);
        }
        let port = match rest {
            [] => None,
            [b':', digits @ ..] => parse_port(digits)?,
            _ => return Err(HostError::Invalid),
        };
        (literal, port)
    } else {
        let (name, port) = match value.iter().rposition(|&b| b == b':') {
            Some(colon) => (
                value.get(..colon).unwrap_or_default(),
                parse_port(value.get(colon + 1..).unwrap_or_default())?,
            ),
            None => (value, None),
        };
        if !reg_name_or_ipv4(name) {
            return Err(HostError::Invalid);
        }
        (name, port)
    };
    let name = std::str::from_utf8(name)
        .map_err(|_| HostError::Invalid)?
        .to_ascii_lowercase();
    Ok(Host { name, port })
}

/// Checks a request's `Host` lines: HTTP/1.1 needs exactly one valid
/// line; HTTP/1.0 (and HTTP/2, which carries `:authority`) may have none
/// but never several or an invalid one.
pub fn check_host_lines<'a>(
    lines: impl Iterator<Item = &'a [u8]>,
    required: bool,
) -> Result<Option<Host>, HostError> {
    let mut found = None;
    let mut count = 0;
    for line in lines {
        count += 1;
        if count == 1 {
            found = Some(parse_host(line)?);
        }
    }
    match count {
        0 if required => Err(HostError::Missing),
        0 | 1 => Ok(found),
        count => Err(HostError::Several { count }),
    }
}

/// `port = *DIGIT`; an empty port is allowed by RFC 3986 and means the
/// scheme's default.
fn parse_port(digits: &[u8]) -> Result<Option<u16>, HostError> {
    if digits.is_empty() {
        return Ok(None);
    }
    if !digits.iter().all(u8::is_ascii_digit) || digits.len() > 5 {
        return Err(HostError::Invalid);
    }
    std::str::from_utf8(digits)
        .ok()
        .and_then(|d| d.parse::<u16>().ok())
        .map(Some)
        .ok_or(HostError::Invalid)
}

/// `reg-name = *( unreserved / pct-encoded / sub-delims )`, which also
/// covers dotted IPv4 addresses.
fn reg_name_or_ipv4(name: &[u8]) -> bool {
    let mut bytes = name.iter();
    while let Some(&byte) = bytes.next() {
        let ok = match byte {
            b'%' => {
                let high = bytes.next().is_some_and(u8::is_ascii_hexdigit);
                let low = bytes.next().is_some_and(u8::is_ascii_hexdigit);
                high && low
            }
            b'-' | b'.' | b'_' | b'~' => true,
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' => true,
            _ => byte.is_ascii_alphanumeric(),
        };
        if !ok {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_hosts() {
        let host = |v: &str| parse_host(v.as_bytes()).unwrap_or_else(|e| panic!("{v}: {e}"));
        assert_eq!(
            host("Example.COM"),
            Host {
                name: "example.com".into(),
                port: None
            }
        );
        assert_eq!(host("127.0.0.1:8080").port, Some(8080));
        assert_eq!(host("[::1]:80").name, "[::1]");
        assert_eq!(host("[::1]").port, None);
        assert_eq!(host("").name, "");
        assert_eq!(host("a-b.c_d~e:").port, None);
        assert_eq!(host("xn--caf-dma.example").name, "xn--caf-dma.example");
    }

    #[test]
    fn invalid_hosts() {
        for bad in [
            "user@example.com",
            "exa mple.com",
            "example.com:port",
            "example.com:99999",
            "example.com:123456",
            "[::1",
            "[]",
            "[::1]x",
            "[zz::1]",
            "a/b",
            "a%zz",
            "a\r\nb",
            "caf\u{e9}.example",
        ] {
            assert_eq!(
                parse_host(bad.as_bytes()),
                Err(HostError::Invalid),
                "{bad:?}"
            );
        }
        let long = "a".repeat(HOST_LEN_MAX_BYTES + 1);
        assert!(matches!(
            parse_host(long.as_bytes()),
            Err(HostError::TooLong { .. })
        ));
    }

    #[test]
    fn host_lines() {
        let lines = |v: &[&'static str]| v.iter().map(|s| s.as_bytes()).collect::<Vec<_>>();
        assert_eq!(
            check_host_lines(lines(&[]).into_iter(), true),
            Err(HostError::Missing)
        );
        assert_eq!(check_host_lines(lines(&[]).into_iter(), false), Ok(None));
        assert_eq!(
            check_host_lines(lines(&["a", "b"]).into_iter(), false),
            Err(HostError::Several { count: 2 })
        );
        assert_eq!(
            check_host_lines(lines(&["a b"]).into_iter(), true),
            Err(HostError::Invalid)
        );
        assert!(check_host_lines(lines(&["a:1"]).into_iter(), true).is_ok());
    }
}
