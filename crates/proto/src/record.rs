//! [`ObjectRecord`]: what a cache knows of one version of a path — the
//! JSON a shield sends its siblings and selectors, and what each cache
//! keeps in its store — and the ETag every role serves for it.

use serde::{Deserialize, Serialize};

pub const RECORD_FORMAT: u32 = 1;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ObjectRecord {
    pub format: u32,
    /// Manifest id for published objects; a digest of path and validators
    /// otherwise.
    pub id: String,
    pub size: u64,
    pub piece_size_log2: u8,
    pub published: bool,
    /// The origin's validators, as it sent them.
    pub origin_etag: Option<String>,
    pub origin_last_modified: Option<String>,
    pub content_type: Option<String>,
    /// The origin's Cache-Control, passed on to clients.
    pub cache_control: Option<String>,
    /// Until when the cache may serve without asking the origin.
    pub fresh_until_unix_s: u64,
    /// The validators of the published manifest as the origin sent them:
    /// a republished object can keep the file's validators (same size and
    /// mtime), so revalidation asks about the manifest too.
    #[serde(default)]
    pub manifest_etag: Option<String>,
    #[serde(default)]
    pub manifest_last_modified: Option<String>,
    /// Whether those validators are strong (RFC 9110 §8.8.2.2: sent at
    /// least a second after the manifest's Last-Modified). A manifest
    /// rewritten within the second it was fetched in can keep an mtime-
    /// based ETag (nginx's), so until then it is fetched whole.
    #[serde(default)]
    pub manifest_validators_strong: bool,
    /// Whether the origin's validators were strong when the shield saw
    /// them (its `Date` a second or more after `Last-Modified`).
    #[serde(default)]
    pub origin_validators_strong: bool,
    /// The origin's other end-to-end fields (CORS, `Content-Disposition`,
    /// `Vary`, `Link`, `X-…`), sent with every answer from the store; see
    /// [`shoal_http::forward::stored_fields`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(String, String)>,
    /// When the shield last heard from the origin that this version is
    /// current (Unix seconds; 0: unknown, from an older record): `Age` on
    /// answers from the store is counted from it (RFC 9111 §4.2.3).
    #[serde(default)]
    pub validated_unix_s: u64,
    /// When `headers` hold a `Vary`: the secondary key (RFC 9111 §4.1) of
    /// the request they answered (`shoal_http::vary::variant_key`). `None`:
    /// a request without any of the fields (the cache's own HEAD).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant_key: Option<String>,
}

/// The fields a cache writes itself on an answer from its store, so a
/// record never stores the origin's: lengths and ranges, the validators
/// and policy kept in their own record fields, dates and ages, this hop's
/// `Via`.
pub fn computed_fields() -> [http::HeaderName; 12] {
    use http::header;
    [
        header::CONTENT_LENGTH,
        header::CONTENT_RANGE,
        header::ACCEPT_RANGES,
        header::ETAG,
        header::LAST_MODIFIED,
        header::CONTENT_TYPE,
        header::CACHE_CONTROL,
        header::DATE,
        header::AGE,
        header::VIA,
        header::WARNING,
        header::SERVER,
    ]
}

/// The ETag every cache of a mesh (and its selectors) sends for this
/// version, so a client can revalidate anywhere, the origin included:
/// the origin's own ETag when it is strong (not `W/`) and was at least a
/// second older than the origin's `Date` when the shield saw it (RFC 9110
/// §8.8.2.2: an mtime-based tag, like nginx's, can otherwise name two
/// contents written within one second); else `"<first 32 hex digits of
/// the object id>"`. Caches adopt their shield's record, so they agree.
pub fn served_etag(record: &ObjectRecord) -> String {
    match &record.origin_etag {
        Some(etag)
            if !etag.starts_with("W/")
                && (record.origin_validators_strong || record.origin_last_modified.is_none()) =>
        {
            etag.clone()
        }
        _ => format!("\"{}\"", &record.id[..32.min(record.id.len())]),
    }
}
