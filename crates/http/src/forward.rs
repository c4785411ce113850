//! Headers across a proxy (RFC 9110 §7.6): what is forwarded, what is not.
//!
//! A proxy forwards a message's *end-to-end* fields and drops the
//! *hop-by-hop* ones: `Connection`, every field it lists, and the fields
//! that are hop-by-hop by definition (`Keep-Alive`, `Proxy-Connection`,
//! `TE`, `Transfer-Encoding`, `Upgrade`, `Trailer`; and, behind a reverse
//! proxy that does the authenticating itself, `Proxy-Authenticate` and
//! `Proxy-Authorization`). Each hop adds itself to `Via` (§7.6.3).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// The fields that are hop-by-hop whatever `Connection` says.
pub const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "upgrade",
    "trailer",
    "proxy-authenticate",
    "proxy-authorization",
];

/// The most field names one message's `Connection` lines may list; more
/// are ignored (each would cost a removal).
pub const CONNECTION_TOKENS_MAX: usize = 64;

/// Whether `name` is hop-by-hop by definition.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(&name.as_str())
}

/// Removes the hop-by-hop fields of `headers`: those of [`HOP_BY_HOP`] and
/// every field named in a `Connection` line (RFC 9110 §7.6.1).
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .take(CONNECTION_TOKENS_MAX)
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// The `Via` entry of one hop: the protocol version the message was
/// received with and this hop's pseudonym, e.g. `1.1 shoal`.
pub fn via_entry(version: http::Version, pseudonym: &str) -> String {
    let protocol = match version {
        http::Version::HTTP_09 => "0.9",
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        _ => "1.1",
    };
    format!("{protocol} {pseudonym}")
}

/// Adds this hop to `Via`, after the entries of earlier hops.
pub fn append_via(headers: &mut HeaderMap, version: http::Version, pseudonym: &str) {
    if let Ok(value) = HeaderValue::from_str(&via_entry(version, pseudonym)) {
        headers.append(header::VIA, value);
    }
}

/// The most fields a stored response keeps of the origin's own.
pub const STORED_FIELDS_MAX: usize = 64;
/// The most bytes (names and values) a stored response keeps of them.
pub const STORED_FIELD_BYTES_MAX: usize = 16 * 1024;

/// The origin's end-to-end fields a cache stores with a response and
/// sends with every answer from its store, in order, less the hop-by-hop
/// ones and those in `computed` (which the cache writes itself: lengths,
/// ranges, validators, dates). `Set-Cookie` is never stored: one client's
/// cookie must not reach every other. Bounded by [`STORED_FIELDS_MAX`] and
/// [`STORED_FIELD_BYTES_MAX`]; fields past either are left out.
pub fn stored_fields(headers: &HeaderMap, computed: &[HeaderName]) -> Vec<(String, String)> {
    let mut end_to_end = headers.clone();
    remove_hop_by_hop(&mut end_to_end);
    let mut out = Vec::new();
    let mut bytes = 0;
    for (name, value) in &end_to_end {
        if computed.contains(name) || *name == header::SET_COOKIE {
            continue;
        }
        let Ok(value) = value.to_str() else { continue };
        bytes += name.as_str().len() + value.len();
        if out.len() == STORED_FIELDS_MAX || bytes > STORED_FIELD_BYTES_MAX {
            break;
        }
        out.push((name.as_str().to_string(), value.to_string()));
    }
    out
}

/// A `Location` or `Content-Location` that points into the upstream at
/// `base_url` (`scheme://authority[/prefix]`), as this hop's clients must
/// see it: a reference relative to their own host (`http://origin:8080/
/// prefix/x?q` → `/x?q`), so a redirect never sends them around the
/// cache, nor tells them where the origin is. `None` when it points
/// elsewhere (another host or scheme, outside the prefix) or is not an
/// absolute URL.
pub fn upstream_reference_as_local(value: &str, base_url: &str) -> Option<String> {
    let (base_scheme, base_rest) = base_url.split_once("://")?;
    let (scheme, rest) = value.split_once("://")?;
    if !scheme.eq_ignore_ascii_case(base_scheme) {
        return None;
    }
    let split = |text: &str| -> (String, String) {
        let end = text.find(['/', '?', '#']).unwrap_or(text.len());
        (text[..end].to_ascii_lowercase(), text[end..].to_string())
    };
    let default_port = if scheme.eq_ignore_ascii_case("https") {
        ":443"
    } else {
        ":80"
    };
    let (base_authority, base_path) = split(base_rest);
    let (authority, path) = split(rest);
    let strip_port = |a: &str| a.strip_suffix(default_port).unwrap_or(a).to_string();
    if strip_port(&authority) != strip_port(&base_authority) {
        return None;
    }
    let prefix = base_path.trim_end_matches('/');
    let local = path.strip_prefix(prefix)?;
    match local.chars().next() {
        None => Some("/".to_string()),
        Some('/') => Some(local.to_string()),
        Some('?' | '#') => Some(format!("/{local}")),
        // `/prefixed` is not under `/prefix`.
        Some(_) => None,
    }
}

/// RFC 9111 §4.3.4: the fields of a `304` replace every stored field of
/// the same name; the others stay.
pub fn update_stored_fields(
    stored: &[(String, String)],
    not_modified: &HeaderMap,
    computed: &[HeaderName],
) -> Vec<(String, String)> {
    let fresh = stored_fields(not_modified, computed);
    let mut out: Vec<(String, String)> = stored
        .iter()
        .filter(|(name, _)| !fresh.iter().any(|(n, _)| n == name))
        .cloned()
        .collect();
    out.extend(fresh);
    out.truncate(STORED_FIELDS_MAX);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_references_become_local() {
        let local = |value, base| upstream_reference_as_local(value, base);
        let base = "http://127.0.0.1:8080";
        assert_eq!(
            local("http://127.0.0.1:8080/docs/", base).as_deref(),
            Some("/docs/")
        );
        assert_eq!(local("HTTP://127.0.0.1:8080", base).as_deref(), Some("/"));
        assert_eq!(
            local("http://127.0.0.1:8080?a=1", base).as_deref(),
            Some("/?a=1")
        );
        assert_eq!(local("http://127.0.0.1:8081/docs/", base), None);
        assert_eq!(local("https://127.0.0.1:8080/docs/", base), None);
        assert_eq!(local("http://elsewhere.example/x", base), None);
        assert_eq!(local("/docs/", base), None);
        // Default ports and case in the host.
        assert_eq!(
            local("http://Origin.example/a", "http://origin.example:80").as_deref(),
            Some("/a")
        );
        assert_eq!(
            local("https://origin.example:443/a", "https://origin.example").as_deref(),
            Some("/a")
        );
        // A base with a path prefix: only what is under it.
        let prefixed = "http://origin.example/media/";
        assert_eq!(
            local("http://origin.example/media/a/b?x", prefixed).as_deref(),
            Some("/a/b?x")
        );
        assert_eq!(
            local("http://origin.example/media", prefixed).as_deref(),
            Some("/")
        );
        assert_eq!(local("http://origin.example/mediathek", prefixed), None);
        assert_eq!(local("http://origin.example/other", prefixed), None);
    }

    #[test]
    fn hop_by_hop_fields_and_connection_listed_ones_are_removed() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, X-Secret , close"),
            ("connection", "x-other"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("proxy-authorization", "Basic abc"),
            ("x-secret", "1"),
            ("x-other", "2"),
            ("x-kept", "3"),
            ("access-control-allow-origin", "*"),
            ("content-disposition", "attachment"),
            ("vary", "Accept-Encoding"),
        ] {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        remove_hop_by_hop(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(|n| n.as_str()).collect();
        left.sort_unstable();
        assert_eq!(
            left,
            [
                "access-control-allow-origin",
                "content-disposition",
                "vary",
                "x-kept"
            ]
        );
    }

    #[test]
    fn stored_fields_leave_out_hop_by_hop_computed_and_cookies() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("content-length", "10"),
            ("etag", "\"x\""),
            ("set-cookie", "session=1"),
            ("connection", "close"),
            ("access-control-allow-origin", "*"),
            ("vary", "Origin"),
            ("x-custom", "a"),
            ("x-custom", "b"),
        ] {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        let computed = [header::CONTENT_LENGTH, header::ETAG];
        let mut stored = stored_fields(&headers, &computed);
        stored.sort();
        let pair = |n: &str, v: &str| (n.to_string(), v.to_string());
        assert_eq!(
            stored,
            [
                pair("access-control-allow-origin", "*"),
                pair("vary", "Origin"),
                pair("x-custom", "a"),
                pair("x-custom", "b"),
            ]
        );
        let mut not_modified = HeaderMap::new();
        not_modified.append("x-custom", HeaderValue::from_static("c"));
        not_modified.append("x-new", HeaderValue::from_static("d"));
        let mut updated = update_stored_fields(&stored, &not_modified, &computed);
        updated.sort();
        assert_eq!(
            updated,
            [
                pair("access-control-allow-origin", "*"),
                pair("vary", "Origin"),
                pair("x-custom", "c"),
                pair("x-new", "d"),
            ]
        );
        let mut many = HeaderMap::new();
        for i in 0..(STORED_FIELDS_MAX + 10) {
            many.append(
                HeaderName::from_bytes(format!("x-{i}").as_bytes()).unwrap(),
                HeaderValue::from_static("v"),
            );
        }
        assert_eq!(stored_fields(&many, &[]).len(), STORED_FIELDS_MAX);
    }

    #[test]
    fn via_is_appended() {
        let mut headers = HeaderMap::new();
        headers.insert(header::VIA, HeaderValue::from_static("1.0 fred"));
        append_via(&mut headers, http::Version::HTTP_11, "shoal");
        let via: Vec<&str> = headers
            .get_all(header::VIA)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        assert_eq!(via, ["1.0 fred", "1.1 shoal"]);
        assert_eq!(via_entry(http::Version::HTTP_2, "x"), "2 x");
    }
}
