//! Authentication of requests between members of one mesh.
//!
//! Every member knows the cluster secret. A request from one cache to
//! another carries a header
//!
//! ```text
//! x-shoal-auth: v1.<node>.<expires_unix_s>.<mac, 64 hex digits>
//! ```
//!
//! where the MAC is BLAKE3 in keyed mode (a PRF, so a sound MAC) over the
//! version, node name, expiry, method and path-and-query, keyed by a key
//! derived from the secret. The receiver recomputes it and compares in
//! constant time, refuses expired tokens and tokens that claim to live longer
//! than it allows (so a leaked token is short-lived). Anyone without the
//! secret cannot forge one; a token is bound to one method and one path.
//! Pure functions: the caller passes the time.
//!
//! **Operator requests** (set an egress cap, warm, purge) change state, so
//! a captured one must not work twice: their query carries a `nonce`
//! (covered by the MAC), and the receiving cache remembers each nonce in a
//! [`ReplayGuard`] until no token could still be valid. Error texts never
//! show the receiver's clock.

use std::fmt;

/// Name of the header that carries the token.
pub const AUTH_HEADER: &str = "x-shoal-auth";
/// Longest header value accepted (the parser looks at nothing longer).
pub const AUTH_HEADER_LEN_MAX_BYTES: usize = 256;
/// Longest node name.
pub const NODE_NAME_LEN_MAX_BYTES: usize = 64;
/// Shortest cluster secret accepted.
pub const CLUSTER_SECRET_LEN_MIN_BYTES: usize = 16;

/// The MAC key shared by a mesh, derived from its secret.
#[derive(Clone)]
pub struct ClusterKey([u8; 32]);

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterKey(…)")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("the cluster secret is shorter than {CLUSTER_SECRET_LEN_MIN_BYTES} bytes")]
    SecretTooShort,
    #[error("node name must be 1-{NODE_NAME_LEN_MAX_BYTES} characters of A-Z a-z 0-9 - _")]
    BadNodeName,
    #[error("no {AUTH_HEADER} header")]
    Missing,
    #[error("{AUTH_HEADER} is malformed")]
    Malformed,
    #[error("{AUTH_HEADER} version is not supported")]
    UnsupportedVersion,
    /// (The seconds stay out of the text: it would tell anyone the
    /// receiver's clock.)
    #[error("token expired (or the clocks of signer and receiver disagree: check NTP)")]
    Expired(u64),
    #[error("token lives longer than this receiver allows (or the clocks disagree: check NTP)")]
    TooLongLived(u64),
    #[error("token signature does not match")]
    BadSignature,
}

impl ClusterKey {
    pub fn from_secret(secret: &str) -> Result<Self, AuthError> {
        if secret.len() < CLUSTER_SECRET_LEN_MIN_BYTES {
            return Err(AuthError::SecretTooShort);
        }
        Ok(Self(blake3::derive_key(
            "shoal cluster request key v1",
            secret.as_bytes(),
        )))
    }

    fn mac(
        &self,
        node: &str,
        expires_unix_s: u64,
        method: &str,
        path_and_query: &str,
    ) -> blake3::Hash {
        let mut hasher = blake3::Hasher::new_keyed(&self.0);
        for field in [
            b"v1".as_slice(),
            node.as_bytes(),
            expires_unix_s.to_string().as_bytes(),
            method.as_bytes(),
        ] {
            // Length-prefixed, so fields cannot be shifted into each other.
            hasher.update(&(field.len() as u64).to_be_bytes());
            hasher.update(field);
        }
        hasher.update(&(path_and_query.len() as u64).to_be_bytes());
        hasher.update(path_and_query.as_bytes());
        hasher.finalize()
    }

    /// The header value authorising `method path_and_query` from `node`
    /// until `expires_unix_s`.
    pub fn sign(
        &self,
        node: &str,
        expires_unix_s: u64,
        method: &str,
        path_and_query: &str,
    ) -> Result<String, AuthError> {
        if !valid_node_name(node) {
            return Err(AuthError::BadNodeName);
        }
        let mac = self.mac(node, expires_unix_s, method, path_and_query);
        Ok(format!("v1.{node}.{expires_unix_s}.{}", mac.to_hex()))
    }

    /// Checks a header value; returns the authenticated node name.
    pub fn verify<'a>(
        &self,
        header: Option<&'a [u8]>,
        method: &str,
        path_and_query: &str,
        now_unix_s: u64,
        ttl_max_s: u64,
    ) -> Result<&'a str, AuthError> {
        let token = parse(header.ok_or(AuthError::Missing)?)?;
        if token.expires_unix_s < now_unix_s {
            return Err(AuthError::Expired(now_unix_s - token.expires_unix_s));
        }
        let lifetime_s = token.expires_unix_s - now_unix_s;
        if lifetime_s > ttl_max_s {
            return Err(AuthError::TooLongLived(lifetime_s));
        }
        let expected = self.mac(token.node, token.expires_unix_s, method, path_and_query);
        // blake3::Hash compares in constant time.
        if expected == blake3::Hash::from(token.mac) {
            Ok(token.node)
        } else {
            Err(AuthError::BadSignature)
        }
    }
}

/// The query parameter that carries an operator request's nonce.
pub const NONCE_PARAM: &str = "nonce";
/// Shortest nonce accepted (hex digits: 64 bits).
pub const NONCE_LEN_MIN: usize = 16;
/// Longest nonce accepted.
pub const NONCE_LEN_MAX: usize = 64;
/// Nonces a [`ReplayGuard`] holds at most by default.
pub const REPLAY_ENTRIES_MAX: usize = 100_000;

/// Why an operator request was refused before its effect.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReplayError {
    #[error("an operator request needs a `nonce` ({NONCE_LEN_MIN}-{NONCE_LEN_MAX} hex digits) in its signed query")]
    MissingNonce,
    #[error("this signed request was already used (a replay): sign a new one")]
    Replayed,
    #[error("too many operator requests in the token lifetime: try again shortly")]
    Full,
}

/// The nonce in `query`, if it has exactly one well-formed one.
pub fn nonce_of(query: Option<&str>) -> Option<&str> {
    let mut found = query?
        .split('&')
        .filter_map(|kv| kv.strip_prefix(NONCE_PARAM)?.strip_prefix('='));
    let nonce = found.next()?;
    let well_formed = (NONCE_LEN_MIN..=NONCE_LEN_MAX).contains(&nonce.len())
        && nonce.bytes().all(|b| b.is_ascii_hexdigit());
    (well_formed && found.next().is_none()).then_some(nonce)
}

/// The nonces seen recently, each until `forget_at_unix_s` (when no token
/// carrying it can still verify). Pure: the caller passes the time.
#[derive(Debug)]
pub struct ReplayGuard {
    seen: std::collections::HashMap<String, u64>,
    entries_max: usize,
}

impl Default for ReplayGuard {
    fn default() -> Self {
        Self::new(REPLAY_ENTRIES_MAX)
    }
}

impl ReplayGuard {
    pub fn new(entries_max: usize) -> Self {
        Self {
            seen: std::collections::HashMap::new(),
            entries_max,
        }
    }

    /// Takes `nonce` once: `Ok` the first time, `Replayed` after that
    /// until `forget_at_unix_s`; `Full` when too many live nonces are held
    /// (refusing is safer than forgetting one that may come back).
    pub fn admit(
        &mut self,
        nonce: Option<&str>,
        forget_at_unix_s: u64,
        now_unix_s: u64,
    ) -> Result<(), ReplayError> {
        let nonce = nonce.ok_or(ReplayError::MissingNonce)?.to_ascii_lowercase();
        if self
            .seen
            .get(&nonce)
            .is_some_and(|until| *until >= now_unix_s)
        {
            return Err(ReplayError::Replayed);
        }
        if self.seen.len() >= self.entries_max {
            self.seen.retain(|_, until| *until >= now_unix_s);
            if self.seen.len() >= self.entries_max {
                return Err(ReplayError::Full);
            }
        }
        self.seen.insert(nonce, forget_at_unix_s);
        Ok(())
    }
}

/// A parsed (not yet verified) token.
#[derive(Debug, PartialEq, Eq)]
pub struct Token<'a> {
    pub node: &'a str,
    pub expires_unix_s: u64,
    pub mac: [u8; 32],
}

/// Parses `v1.<node>.<expires>.<hex mac>`, strictly.
pub fn parse(value: &[u8]) -> Result<Token<'_>, AuthError> {
    if value.len() > AUTH_HEADER_LEN_MAX_BYTES {
        return Err(AuthError::Malformed);
    }
    let text = std::str::from_utf8(value).map_err(|_| AuthError::Malformed)?;
    let mut fields = text.split('.');
    let (Some(version), Some(node), Some(expires), Some(mac), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(AuthError::Malformed);
    };
    if version != "v1" {
        return Err(AuthError::UnsupportedVersion);
    }
    if !valid_node_name(node) {
        return Err(AuthError::BadNodeName);
    }
    if expires.is_empty() || expires.len() > 20 || !expires.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AuthError::Malformed);
    }
    let expires_unix_s = expires.parse().map_err(|_| AuthError::Malformed)?;
    let mac = crate::manifest::hex32(mac).ok_or(AuthError::Malformed)?;
    Ok(Token {
        node,
        expires_unix_s,
        mac,
    })
}

/// Node names appear in tokens, logs and gossip keys: keep them plain.
pub fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= NODE_NAME_LEN_MAX_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key() -> ClusterKey {
        ClusterKey::from_secret("correct horse battery staple").unwrap()
    }

    #[test]
    fn round_trip_and_binding() {
        let token = key()
            .sign("cache-1", 1_000, "GET", "/_shoal/piece/abc/3")
            .unwrap();
        fn verify(t: &str, method: &str, path: &str, now: u64) -> Result<String, AuthError> {
            key()
                .verify(Some(t.as_bytes()), method, path, now, 60)
                .map(str::to_string)
        }
        assert_eq!(
            verify(&token, "GET", "/_shoal/piece/abc/3", 990),
            Ok("cache-1".to_string())
        );
        assert_eq!(
            verify(&token, "GET", "/_shoal/piece/abc/4", 990),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            verify(&token, "HEAD", "/_shoal/piece/abc/3", 990),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            verify(&token, "GET", "/_shoal/piece/abc/3", 1_001),
            Err(AuthError::Expired(1))
        );
        assert_eq!(
            verify(&token, "GET", "/_shoal/piece/abc/3", 100),
            Err(AuthError::TooLongLived(900))
        );
        let other = ClusterKey::from_secret("another secret of some length").unwrap();
        assert_eq!(
            other.verify(
                Some(token.as_bytes()),
                "GET",
                "/_shoal/piece/abc/3",
                990,
                60
            ),
            Err(AuthError::BadSignature)
        );
        // Claiming to be another node breaks the MAC.
        let forged = token.replacen("cache-1", "cache-2", 1);
        assert_eq!(
            verify(&forged, "GET", "/_shoal/piece/abc/3", 990),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn refuses_bad_input() {
        assert_eq!(
            ClusterKey::from_secret("short").unwrap_err(),
            AuthError::SecretTooShort
        );
        assert_eq!(
            key().sign("bad.name", 1, "GET", "/").unwrap_err(),
            AuthError::BadNodeName
        );
        assert_eq!(
            key().verify(None, "GET", "/", 0, 60),
            Err(AuthError::Missing)
        );
        for bad in [
            "",
            "v1",
            "v1.a.1",
            "v2.a.1.00",
            "v1.a.x.00",
            "v1.a.1.zz",
            "v1..1.00",
            "v1.a.1.00.extra",
        ] {
            assert!(parse(bad.as_bytes()).is_err(), "{bad}");
        }
        assert!(parse(&[b'v'; 300]).is_err());
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse(&bytes);
            let _ = key().verify(Some(&bytes), "GET", "/", 0, 60);
        }

        #[test]
        fn any_flipped_character_fails(at in 0usize..90, replacement in "[0-9a-z]") {
            let token = key().sign("node-7", 500, "GET", "/p").unwrap();
            let at = at % token.len();
            let mut changed = token.clone().into_bytes();
            changed[at] = replacement.as_bytes()[0];
            if changed != token.as_bytes() {
                prop_assert!(key().verify(Some(&changed), "GET", "/p", 400, 3600).is_err());
            }
        }
    }

    #[test]
    fn a_nonce_is_taken_once_until_it_is_forgotten() {
        let mut guard = ReplayGuard::new(2);
        let a = "0123456789abcdef0123456789abcdef";
        let b = "fedcba9876543210fedcba9876543210";
        assert_eq!(guard.admit(None, 100, 10), Err(ReplayError::MissingNonce));
        assert_eq!(guard.admit(Some(a), 100, 10), Ok(()));
        assert_eq!(guard.admit(Some(a), 100, 50), Err(ReplayError::Replayed));
        assert_eq!(
            guard.admit(Some(&a.to_uppercase()), 100, 50),
            Err(ReplayError::Replayed)
        );
        assert_eq!(guard.admit(Some(b), 20, 10), Ok(()));
        // Full with two live nonces; once b is forgotten there is room.
        assert_eq!(
            guard.admit(Some("1111111111111111"), 100, 15),
            Err(ReplayError::Full)
        );
        assert_eq!(guard.admit(Some("1111111111111111"), 100, 21), Ok(()));
        // a's time is over: taken again (its token cannot verify anyway).
        assert_eq!(guard.admit(Some(a), 200, 101), Ok(()));
    }

    #[test]
    fn nonces_are_read_strictly_from_the_query() {
        let good = "0123456789abcdef0123456789abcdef";
        assert_eq!(nonce_of(Some(&format!("x=1&nonce={good}"))), Some(good));
        assert_eq!(nonce_of(Some("nonce=short")), None);
        assert_eq!(nonce_of(Some("nonce=zzzzzzzzzzzzzzzzzzzz")), None);
        assert_eq!(nonce_of(Some(&format!("nonce={good}&nonce={good}"))), None);
        assert_eq!(nonce_of(None), None);
    }

    #[test]
    fn refusals_do_not_show_the_clock() {
        assert!(!AuthError::Expired(1234).to_string().contains("1234"));
        assert!(!AuthError::TooLongLived(9876).to_string().contains("9876"));
    }
}
