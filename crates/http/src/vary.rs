//! `Vary` (RFC 9110 §12.5.5, RFC 9111 §4.1): which request fields select
//! a stored response, and the secondary key a request makes of them.

use http::header::{self, HeaderMap, HeaderName};

/// The most field names one `Vary` may list; more is treated as `*`.
pub const VARY_FIELDS_MAX: usize = 16;
/// The longest secondary key kept, in bytes; a longer one is not stored.
pub const VARIANT_KEY_LEN_MAX_BYTES: usize = 2048;

/// What a response's `Vary` says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Vary {
    /// Every request selects it (no `Vary`, or an empty one).
    Nothing,
    /// `Vary: *`: no stored copy may ever answer a request (RFC 9111 §4.1).
    Anything,
    /// These request fields (lowercased, sorted, without duplicates).
    Fields(Vec<String>),
}

impl Vary {
    /// Reads every `Vary` line of a response.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let mut fields = Vec::new();
        for value in headers.get_all(header::VARY) {
            let Ok(text) = value.to_str() else {
                return Vary::Anything;
            };
            for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                if name == "*" || HeaderName::from_bytes(name.as_bytes()).is_err() {
                    return Vary::Anything;
                }
                fields.push(name.to_ascii_lowercase());
            }
        }
        fields.sort();
        fields.dedup();
        match fields.len() {
            0 => Vary::Nothing,
            n if n > VARY_FIELDS_MAX => Vary::Anything,
            _ => Vary::Fields(fields),
        }
    }

    /// The fields, empty for [`Vary::Nothing`].
    pub fn fields(&self) -> &[String] {
        match self {
            Vary::Fields(fields) => fields,
            _ => &[],
        }
    }
}

/// The secondary key of a request for responses that vary on `fields`:
/// each field's value lines joined with `, `, whitespace around them
/// trimmed (RFC 9111 §4.1 lets a cache normalise so), one per field in
/// order. `None` when the key would be longer than
/// [`VARIANT_KEY_LEN_MAX_BYTES`] or a value is not visible ASCII.
pub fn variant_key(fields: &[String], request: &HeaderMap) -> Option<String> {
    let mut key = String::new();
    for name in fields {
        let mut values = Vec::new();
        for value in request.get_all(name.as_str()) {
            values.push(value.to_str().ok()?.trim());
        }
        key.push_str(name);
        key.push('=');
        key.push_str(&values.join(", "));
        key.push('\n');
        if key.len() > VARIANT_KEY_LEN_MAX_BYTES {
            return None;
        }
    }
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn vary_fields() {
        assert_eq!(Vary::from_headers(&headers(&[])), Vary::Nothing);
        assert_eq!(
            Vary::from_headers(&headers(&[
                ("vary", "Origin, accept-encoding"),
                ("vary", "ORIGIN")
            ])),
            Vary::Fields(vec!["accept-encoding".into(), "origin".into()])
        );
        assert_eq!(
            Vary::from_headers(&headers(&[("vary", "Origin, *")])),
            Vary::Anything
        );
        assert_eq!(
            Vary::from_headers(&headers(&[("vary", "bad field")])),
            Vary::Anything
        );
    }

    #[test]
    fn variant_keys_follow_the_request_values() {
        let fields = vec!["accept-encoding".to_string(), "origin".to_string()];
        let a = variant_key(&fields, &headers(&[("origin", "https://a.example")]));
        let b = variant_key(&fields, &headers(&[("origin", " https://a.example ")]));
        let c = variant_key(&fields, &headers(&[("origin", "https://b.example")]));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            variant_key(
                &fields,
                &headers(&[("accept-encoding", "gzip"), ("accept-encoding", "br")])
            ),
            Some("accept-encoding=gzip, br\norigin=\n".into())
        );
        assert_eq!(
            variant_key(&[], &headers(&[("origin", "x")])),
            Some(String::new())
        );
    }
}
