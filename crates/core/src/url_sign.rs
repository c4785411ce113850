//! Signed URLs: a publisher's links to paid or private content that work
//! for a while, for one path (or everything under a prefix), optionally
//! for one client address.
//!
//! A signed URL carries, in its query,
//!
//! ```text
//! shoal-exp=<unix seconds>&shoal-kid=<key id>[&shoal-scope=<path prefix>][&shoal-ip=<client address>]&shoal-sig=<64 hex digits>
//! ```
//!
//! where the signature is HMAC-SHA256, keyed by the secret named by the key
//! id, over the version, the path (or the scope), the expiry, the key id and
//! the address. Several key ids can be valid at once, so a key is rotated
//! by adding the new one, signing with it, and removing the old one when
//! its last URLs have expired. Pure functions: the caller passes the time
//! and the client's address.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::BTreeMap;
use std::net::IpAddr;

pub const EXPIRES_PARAM: &str = "shoal-exp";
pub const KEY_ID_PARAM: &str = "shoal-kid";
pub const SCOPE_PARAM: &str = "shoal-scope";
pub const CLIENT_PARAM: &str = "shoal-ip";
pub const SIGNATURE_PARAM: &str = "shoal-sig";
/// Every parameter of a signature: none of them reaches the origin or a
/// cache key.
pub const PARAMS: [&str; 5] = [
    EXPIRES_PARAM,
    KEY_ID_PARAM,
    SCOPE_PARAM,
    CLIENT_PARAM,
    SIGNATURE_PARAM,
];
/// Shortest signing secret accepted.
pub const SECRET_LEN_MIN_BYTES: usize = 16;
/// Longest key id.
pub const KEY_ID_LEN_MAX: usize = 64;
/// Longest scope (a path prefix).
pub const SCOPE_LEN_MAX_BYTES: usize = 1024;

/// Why a request's signature was refused: always the client's fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlSignError {
    #[error("this path needs a signed URL (no {SIGNATURE_PARAM} in the query)")]
    Missing,
    #[error("signed URL: `{0}` is missing, repeated or malformed")]
    Malformed(&'static str),
    #[error("signed URL has expired")]
    Expired,
    #[error("signed URL names key id `{0}`, which this service does not accept (rotated out?)")]
    UnknownKey(String),
    #[error(
        "signed URL's signature does not match (tampered with, or signed with another secret)"
    )]
    BadSignature,
    #[error("signed URL is for paths under its scope; this path is not")]
    OutOfScope,
    #[error("signed URL is for another client address")]
    WrongClient,
}

/// A configuration error in a key set: names the key id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("key id `{0}` must be 1-{KEY_ID_LEN_MAX} characters of A-Z a-z 0-9 - _")]
    BadKeyId(String),
    #[error("the secret of key id `{0}` is shorter than {SECRET_LEN_MIN_BYTES} bytes")]
    ShortSecret(String),
}

/// `[service.signing]`: the key ids and secrets signed URLs may use.
#[derive(Clone, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct SigningSettings {
    /// Key id → secret (at least 16 bytes). Several at once for rotation.
    pub keys: std::collections::BTreeMap<String, String>,
}

impl std::fmt::Debug for SigningSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key ids only: never the secrets.
        f.debug_struct("SigningSettings")
            .field("key_ids", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl SigningSettings {
    /// The checked key set; the error names `service`.
    pub fn keys(&self, service: &str) -> Result<SigningKeys, String> {
        if self.keys.is_empty() {
            return Err(format!(
                "{service}: signing.keys is empty (name at least one key id and secret)"
            ));
        }
        SigningKeys::new(
            self.keys
                .iter()
                .map(|(id, secret)| (id.as_str(), secret.as_str())),
        )
        .map_err(|e| format!("{service}: signing.keys: {e}"))
    }
}

/// What a signature vouches for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub expires_unix_s: u64,
    pub key_id: String,
    /// A path prefix the URL is good for (instead of its own path only).
    pub scope: Option<String>,
    /// The only client address the URL is good for.
    pub client: Option<IpAddr>,
}

/// The accepted signing keys of one delivery service, by key id.
#[derive(Clone, Default)]
pub struct SigningKeys {
    keys: BTreeMap<String, Vec<u8>>,
}

impl std::fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.keys.keys()).finish()
    }
}

impl SigningKeys {
    /// Checks every key id and secret.
    pub fn new<'a>(keys: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self, KeyError> {
        let mut out = BTreeMap::new();
        for (id, secret) in keys {
            if !valid_key_id(id) {
                return Err(KeyError::BadKeyId(id.chars().take(80).collect()));
            }
            if secret.len() < SECRET_LEN_MIN_BYTES {
                return Err(KeyError::ShortSecret(id.to_string()));
            }
            out.insert(id.to_string(), secret.as_bytes().to_vec());
        }
        Ok(Self { keys: out })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks the signature of a request for `path` (decoded, as the
    /// cache keys it) with `query`, from `client`, at `now_unix_s`.
    pub fn verify(
        &self,
        path: &str,
        query: Option<&str>,
        client: IpAddr,
        now_unix_s: u64,
    ) -> Result<Claims, UrlSignError> {
        let (claims, signature) = parse(query)?;
        if claims.expires_unix_s < now_unix_s {
            return Err(UrlSignError::Expired);
        }
        let secret = self
            .keys
            .get(&claims.key_id)
            .ok_or_else(|| UrlSignError::UnknownKey(claims.key_id.clone()))?;
        let signed_path = claims.scope.as_deref().unwrap_or(path);
        let mut mac = keyed(secret);
        mac.update(&message(signed_path, &claims));
        // `verify_slice` compares in constant time.
        mac.verify_slice(&signature)
            .map_err(|_| UrlSignError::BadSignature)?;
        if let Some(scope) = &claims.scope {
            if !path.starts_with(scope.as_str()) {
                return Err(UrlSignError::OutOfScope);
            }
        }
        if let Some(bound) = claims.client {
            if !same_client(bound, client) {
                return Err(UrlSignError::WrongClient);
            }
        }
        Ok(claims)
    }
}

/// The query parameters that sign `path` (or `claims.scope`) with
/// `secret`, in the order the parser expects nothing of (any order works).
pub fn signed_query(path: &str, claims: &Claims, secret: &[u8]) -> String {
    let signed_path = claims.scope.as_deref().unwrap_or(path);
    let mut mac = keyed(secret);
    mac.update(&message(signed_path, claims));
    let signature = mac.finalize().into_bytes();
    let mut query = format!(
        "{EXPIRES_PARAM}={}&{KEY_ID_PARAM}={}",
        claims.expires_unix_s, claims.key_id
    );
    if let Some(scope) = &claims.scope {
        query.push_str(&format!("&{SCOPE_PARAM}={}", encode(scope)));
    }
    if let Some(client) = claims.client {
        query.push_str(&format!("&{CLIENT_PARAM}={client}"));
    }
    query.push_str(&format!("&{SIGNATURE_PARAM}={}", hex(&signature)));
    query
}

/// `query` without the signature's parameters (`None` when nothing is
/// left): what the origin and the cache key see.
pub fn strip(query: Option<&str>) -> Option<String> {
    let kept: Vec<&str> = query?
        .split('&')
        .filter(|pair| {
            let name = pair.split('=').next().unwrap_or("");
            !pair.is_empty() && !PARAMS.contains(&name)
        })
        .collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

/// Just the signature's parameters of `query`, for a redirect to carry.
pub fn signature_params(query: Option<&str>) -> Option<String> {
    let kept: Vec<&str> = query?
        .split('&')
        .filter(|pair| PARAMS.contains(&pair.split('=').next().unwrap_or("")))
        .collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

fn valid_key_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= KEY_ID_LEN_MAX
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn keyed(secret: &[u8]) -> Hmac<Sha256> {
    // HMAC takes a key of any length: this cannot fail.
    <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!())
}

/// What is signed: unambiguous (one field a line, none may hold a line
/// break), versioned.
fn message(path: &str, claims: &Claims) -> Vec<u8> {
    format!(
        "shoal-url-v1\n{}\n{}\n{}\n{}\n{}",
        if claims.scope.is_some() {
            "scope"
        } else {
            "path"
        },
        path,
        claims.expires_unix_s,
        claims.key_id,
        claims.client.map(|c| c.to_string()).unwrap_or_default()
    )
    .into_bytes()
}

/// An IPv4 client may arrive as an IPv4-mapped IPv6 address.
fn same_client(bound: IpAddr, client: IpAddr) -> bool {
    let canonical = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    canonical(bound) == canonical(client)
}

/// The claims and signature bytes in `query`; every parameter at most once.
fn parse(query: Option<&str>) -> Result<(Claims, Vec<u8>), UrlSignError> {
    let mut values: [Option<&str>; 5] = [None; 5];
    for pair in query.unwrap_or("").split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if let Some(i) = PARAMS.iter().position(|p| *p == name) {
            if values[i].replace(value).is_some() {
                return Err(UrlSignError::Malformed(PARAMS[i]));
            }
        }
    }
    let [expires, key_id, scope, client, signature] = values;
    let signature = signature.ok_or(UrlSignError::Missing)?;
    let signature = unhex(signature).ok_or(UrlSignError::Malformed(SIGNATURE_PARAM))?;
    let expires_unix_s = expires
        .filter(|e| !e.is_empty() && e.len() <= 20 && e.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|e| e.parse().ok())
        .ok_or(UrlSignError::Malformed(EXPIRES_PARAM))?;
    let key_id = key_id
        .filter(|k| valid_key_id(k))
        .ok_or(UrlSignError::Malformed(KEY_ID_PARAM))?
        .to_string();
    let scope = match scope {
        None => None,
        Some(raw) => {
            let decoded = decode(raw).ok_or(UrlSignError::Malformed(SCOPE_PARAM))?;
            let fine = decoded.starts_with('/')
                && decoded.len() <= SCOPE_LEN_MAX_BYTES
                && !decoded.chars().any(char::is_control);
            if !fine {
                return Err(UrlSignError::Malformed(SCOPE_PARAM));
            }
            Some(decoded)
        }
    };
    let client = match client {
        None => None,
        Some(raw) => Some(
            decode(raw)
                .and_then(|c| c.parse().ok())
                .ok_or(UrlSignError::Malformed(CLIENT_PARAM))?,
        ),
    };
    Ok((
        Claims {
            expires_unix_s,
            key_id,
            scope,
            client,
        },
        signature,
    ))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// 64 hex digits (a SHA-256 MAC), either case.
fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..32)
        .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok())
        .collect()
}

/// Percent-encodes what a query value must not hold raw.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"/-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Percent-decodes a query value (UTF-8 only; `+` is a plus).
fn decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn keys() -> SigningKeys {
        SigningKeys::new([
            ("k1", "first secret, long enough"),
            ("k2", "second secret, long enough"),
        ])
        .unwrap()
    }

    fn claims(key_id: &str) -> Claims {
        Claims {
            expires_unix_s: NOW + 60,
            key_id: key_id.into(),
            scope: None,
            client: None,
        }
    }

    fn client() -> IpAddr {
        "192.0.2.7".parse().unwrap()
    }

    #[test]
    fn a_signed_path_verifies_and_its_tampered_forms_do_not() {
        let query = signed_query("/v/a.mp4", &claims("k1"), b"first secret, long enough");
        let keys = keys();
        assert_eq!(
            keys.verify("/v/a.mp4", Some(&query), client(), NOW),
            Ok(claims("k1"))
        );
        // Another path, another expiry, another key id, no signature.
        assert_eq!(
            keys.verify("/v/b.mp4", Some(&query), client(), NOW),
            Err(UrlSignError::BadSignature)
        );
        let later = query.replace(&format!("{}", NOW + 60), &format!("{}", NOW + 6000));
        assert_eq!(
            keys.verify("/v/a.mp4", Some(&later), client(), NOW),
            Err(UrlSignError::BadSignature)
        );
        let other_key = query.replace("shoal-kid=k1", "shoal-kid=k2");
        assert_eq!(
            keys.verify("/v/a.mp4", Some(&other_key), client(), NOW),
            Err(UrlSignError::BadSignature)
        );
        assert_eq!(
            keys.verify("/v/a.mp4", None, client(), NOW),
            Err(UrlSignError::Missing)
        );
        assert_eq!(
            keys.verify("/v/a.mp4", Some(&query), client(), NOW + 61),
            Err(UrlSignError::Expired)
        );
        let unknown = signed_query("/v/a.mp4", &claims("k9"), b"first secret, long enough");
        assert_eq!(
            keys.verify("/v/a.mp4", Some(&unknown), client(), NOW),
            Err(UrlSignError::UnknownKey("k9".into()))
        );
        let twice = format!("{query}&shoal-exp=1");
        assert_eq!(
            keys.verify("/v/a.mp4", Some(&twice), client(), NOW),
            Err(UrlSignError::Malformed(EXPIRES_PARAM))
        );
    }

    #[test]
    fn scopes_and_client_binding() {
        let mut scoped = claims("k2");
        scoped.scope = Some("/live/show 1/".into());
        scoped.client = Some(client());
        let query = signed_query("/ignored", &scoped, b"second secret, long enough");
        let keys = keys();
        assert!(keys
            .verify("/live/show 1/seg-001.ts", Some(&query), client(), NOW)
            .is_ok());
        assert_eq!(
            keys.verify("/live/other/seg.ts", Some(&query), client(), NOW),
            Err(UrlSignError::OutOfScope)
        );
        assert_eq!(
            keys.verify(
                "/live/show 1/seg.ts",
                Some(&query),
                "192.0.2.8".parse().unwrap(),
                NOW
            ),
            Err(UrlSignError::WrongClient)
        );
        // IPv4 arriving as IPv4-mapped IPv6 is the same client.
        assert!(keys
            .verify(
                "/live/show 1/a.ts",
                Some(&query),
                "::ffff:192.0.2.7".parse().unwrap(),
                NOW
            )
            .is_ok());
    }

    #[test]
    fn stripping_leaves_the_rest_of_the_query() {
        let query = format!(
            "a=1&{}&b=2",
            signed_query("/x", &claims("k1"), b"first secret, long enough")
        );
        assert_eq!(strip(Some(&query)).as_deref(), Some("a=1&b=2"));
        assert_eq!(strip(Some("shoal-sig=00")), None);
        let params = signature_params(Some(&query)).unwrap();
        assert!(params.starts_with("shoal-exp=") && !params.contains("a=1"));
    }

    #[test]
    fn key_sets_are_checked() {
        assert!(matches!(
            SigningKeys::new([("bad id", "long enough secret!")]),
            Err(KeyError::BadKeyId(_))
        ));
        assert!(matches!(
            SigningKeys::new([("k", "short")]),
            Err(KeyError::ShortSecret(_))
        ));
    }
}
