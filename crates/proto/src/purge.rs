//! Purge events on the wire: the operator's query (`path=`/`prefix=`,
//! `soft=1`), the form a cache passes an event on in
//! (`/_shoal/peer/purge?…`) and the answer to `/_shoal/peer/purges`.
//! The log a cache keeps of them lives in `shoal-cache`.

use serde::{Deserialize, Serialize};

/// Longest path or prefix a purge may name.
pub const PURGE_TARGET_LEN_MAX_BYTES: usize = 4_096;
/// What a purge drops.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PurgeTarget {
    /// One path (decoded, as the cache keys it).
    Path(String),
    /// Every path that starts with this (decoded).
    Prefix(String),
}

impl PurgeTarget {
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PurgeTarget::Path(p) => p == path,
            PurgeTarget::Prefix(prefix) => path.starts_with(prefix.as_str()),
        }
    }
}

/// One purge, as every cache applies and logs it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgeEvent {
    /// Random; names the event across the mesh.
    pub id: u64,
    /// When the first cache accepted it (its clock), ms since the epoch.
    pub at_unix_ms: u64,
    pub target: PurgeTarget,
    /// Mark stale (revalidate) instead of dropping.
    pub soft: bool,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PurgeParseError {
    #[error("name exactly one of `path` or `prefix`")]
    NoTarget,
    #[error("`{0}` must start with `/`, hold no control character and be at most {PURGE_TARGET_LEN_MAX_BYTES} bytes")]
    BadTarget(&'static str),
    #[error("bad `path`: {0}")]
    BadPath(String),
    #[error("`{0}` is not a valid {1}")]
    BadNumber(&'static str, &'static str),
    #[error("unknown parameter `{0}`")]
    Unknown(String),
}

/// The operator's request: `path=` or `prefix=` (percent-encoded), `soft=1`.
pub fn parse_request(query: &str) -> Result<(PurgeTarget, bool), PurgeParseError> {
    let mut target = None;
    let mut soft = false;
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        match name.as_ref() {
            "path" | "prefix" if target.is_some() => return Err(PurgeParseError::NoTarget),
            "path" => {
                // A directory (`/docs/`, `/`) is a path too: its whole
                // responses are stored under it.
                let directory = value.strip_suffix('/').filter(|d| !d.ends_with('/'));
                let path = match directory {
                    Some("") => "/".to_string(),
                    Some(parent) => {
                        let parent = shoal_http::path::RequestPath::parse(parent)
                            .map_err(|e| PurgeParseError::BadPath(e.to_string()))?;
                        format!("{}/", parent.as_str())
                    }
                    None => shoal_http::path::RequestPath::parse(&value)
                        .map_err(|e| PurgeParseError::BadPath(e.to_string()))?
                        .as_str()
                        .to_string(),
                };
                target = Some(PurgeTarget::Path(path));
            }
            "prefix" => {
                let ok = value.starts_with('/')
                    && value.len() <= PURGE_TARGET_LEN_MAX_BYTES
                    && !value.chars().any(char::is_control);
                if !ok {
                    return Err(PurgeParseError::BadTarget("prefix"));
                }
                target = Some(PurgeTarget::Prefix(value.into_owned()));
            }
            "soft" => soft = value == "1" || value == "true",
            // Signed-request bookkeeping, not ours.
            "to" | shoal_core::auth::NONCE_PARAM => {}
            other => return Err(PurgeParseError::Unknown(other.chars().take(64).collect())),
        }
    }
    Ok((target.ok_or(PurgeParseError::NoTarget)?, soft))
}

impl PurgeEvent {
    /// A new event accepted now by `node`: its id is drawn from the node,
    /// the time and a monotonic instant, so two caches never mint one id.
    pub fn new_now(target: PurgeTarget, soft: bool, node: &str) -> Self {
        let at_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let seed = format!("{node} {at_unix_ms} {:?}", std::time::Instant::now());
        let digest = blake3::hash(seed.as_bytes());
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest.as_bytes()[..8]);
        Self {
            id: u64::from_le_bytes(id),
            at_unix_ms,
            target,
            soft,
        }
    }

    /// The query a cache passes an event on with (`/_shoal/peer/purge?…`).
    pub fn to_query(&self) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        query.append_pair("id", &format!("{:016x}", self.id));
        query.append_pair("at", &self.at_unix_ms.to_string());
        match &self.target {
            PurgeTarget::Path(p) => query.append_pair("path", p),
            PurgeTarget::Prefix(p) => query.append_pair("prefix", p),
        };
        if self.soft {
            query.append_pair("soft", "1");
        }
        query.finish()
    }

    /// Parses [`Self::to_query`]'s form (from a peer: signed, but checked
    /// like anything else that crosses the network).
    pub fn from_query(query: &str) -> Result<Self, PurgeParseError> {
        let mut id = None;
        let mut at = None;
        let mut rest = form_urlencoded::Serializer::new(String::new());
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            match name.as_ref() {
                "id" => {
                    id = Some(
                        u64::from_str_radix(&value, 16)
                            .map_err(|_| PurgeParseError::BadNumber("id", "16-digit hex id"))?,
                    )
                }
                "at" => {
                    at = Some(
                        value
                            .parse::<u64>()
                            .map_err(|_| PurgeParseError::BadNumber("at", "time in ms"))?,
                    )
                }
                _ => {
                    rest.append_pair(&name, &value);
                }
            }
        }
        let (target, soft) = parse_request(&rest.finish())?;
        Ok(Self {
            id: id.ok_or(PurgeParseError::BadNumber("id", "16-digit hex id"))?,
            at_unix_ms: at.ok_or(PurgeParseError::BadNumber("at", "time in ms"))?,
            target,
            soft,
        })
    }
}

/// Answer to `/_shoal/peer/purges?since=MS`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PurgesSince {
    pub events: Vec<PurgeEvent>,
    /// Set when the answering cache dropped events older than this: a
    /// cache that knew nothing that recent may have missed some.
    pub trimmed_before_ms: Option<u64>,
}
