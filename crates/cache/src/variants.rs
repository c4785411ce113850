//! `Vary` on the piece path (RFC 9111 §4.1): one body, a field set per
//! variant.
//!
//! A large file's bytes are the same for every request it varies on when
//! its validators, length, type and coding are: what differs between such
//! variants is fields — `Access-Control-Allow-Origin` echoing the request's
//! `Origin`, a label. The record keeps the fields of the request that
//! installed the version (its `variant_key`). Another request's variant is
//! asked of the origin with a HEAD carrying that request's `Vary`ed fields
//! and kept in memory with the version (at most
//! [`VARIANTS_PER_OBJECT_MAX`]). A variant that is another representation
//! (other validators, length, `Content-Type` or `Content-Encoding`) is not
//! served from these pieces: its requests are passed through.

use crate::object::ObjectEntry;
use crate::serve::CacheService;
use http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use shoal_http::vary::{variant_key, Vary};
use shoal_proto::record::ObjectRecord;
use std::sync::Arc;

/// Variants' field sets kept per version, besides the record's.
pub const VARIANTS_PER_OBJECT_MAX: usize = 8;

/// Which fields a request's variant is served with.
pub enum Variant {
    /// The record's (no `Vary`, or the request that installed it).
    Record,
    /// These, instead of the record's.
    Own(Arc<Vec<(String, String)>>),
    /// Another representation: not from these pieces.
    Other,
}

/// Replaces the record's stored fields in `headers` by the variant's.
pub fn apply(headers: &mut HeaderMap, record: &[(String, String)], variant: &[(String, String)]) {
    for (name, _) in record {
        if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
            headers.remove(name);
        }
    }
    for (name, value) in variant {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.append(name, value);
        }
    }
}

/// Whether a HEAD's answer for another variant describes the bytes
/// `record` stores: a `200` with the same length, validators, type and
/// content coding.
pub fn same_representation(record: &ObjectRecord, status: StatusCode, head: &HeaderMap) -> bool {
    let text = |headers: &HeaderMap, name: HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_string())
    };
    let coding = |headers: &HeaderMap| {
        text(headers, header::CONTENT_ENCODING).filter(|c| !c.eq_ignore_ascii_case("identity"))
    };
    let stored = crate::resolve::record_fields(record);
    status == StatusCode::OK
        && shoal_proto::body::content_length(head) == Some(record.size)
        && text(head, header::ETAG) == record.origin_etag
        && text(head, header::LAST_MODIFIED) == record.origin_last_modified
        && text(head, header::CONTENT_TYPE) == record.content_type
        && coding(head) == coding(&stored)
}

impl CacheService {
    /// The fields `request`'s variant of `entry` is served with; asks the
    /// origin (a HEAD) the first time a variant is seen, if `may_ask`
    /// (else an unknown variant is `Other`).
    pub(crate) async fn variant_for(
        &self,
        entry: &ObjectEntry,
        request: &HeaderMap,
        may_ask: bool,
    ) -> Variant {
        let stored = crate::resolve::record_fields(&entry.record);
        let fields = match Vary::from_headers(&stored) {
            Vary::Nothing => return Variant::Record,
            Vary::Anything => return Variant::Other,
            Vary::Fields(fields) => fields,
        };
        let Some(key) = variant_key(&fields, request) else {
            return Variant::Other;
        };
        let record_key = entry
            .record
            .variant_key
            .clone()
            .or_else(|| variant_key(&fields, &HeaderMap::new()));
        if record_key.as_deref() == Some(key.as_str()) {
            return Variant::Record;
        }
        if let Some(known) = entry.variant(&key) {
            return Variant::Own(known);
        }
        if !may_ask {
            return Variant::Other;
        }
        let mut ask = HeaderMap::new();
        for name in &fields {
            let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
                continue;
            };
            for value in request.get_all(&name) {
                ask.append(name.clone(), value.clone());
            }
        }
        match self.origin.head(&entry.uri_path, &ask).await {
            Ok(head) if same_representation(&entry.record, head.status, &head.headers) => {
                let kept: Vec<(String, String)> = shoal_http::forward::stored_fields(
                    &head.headers,
                    &shoal_proto::record::computed_fields(),
                )
                .into_iter()
                .filter(|(name, _)| !name.starts_with("x-shoal-"))
                .collect();
                let kept = Arc::new(kept);
                entry.remember_variant(key, kept.clone());
                Variant::Own(kept)
            }
            Ok(head) => {
                tracing::debug!(path = %entry.path, status = %head.status, "another representation for this variant: passed through");
                Variant::Other
            }
            Err(error) => {
                tracing::warn!(path = %entry.path, error = %shoal_proto::Chain(&error), "could not ask the origin about a variant: passing the request through");
                Variant::Other
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> ObjectRecord {
        serde_json::from_value(serde_json::json!({
            "format": shoal_proto::record::RECORD_FORMAT,
            "id": "00",
            "size": 1000,
            "piece_size_log2": 16,
            "published": false,
            "origin_etag": "\"v1\"",
            "origin_last_modified": null,
            "content_type": "video/mp4",
            "cache_control": null,
            "fresh_until_unix_s": 0,
            "manifest_etag": null,
            "manifest_last_modified": null,
            "manifest_validators_strong": false,
            "origin_validators_strong": true,
            "headers": [["vary", "Origin"], ["access-control-allow-origin", "https://a.example"]],
        }))
        .unwrap()
    }

    fn head(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn a_variant_is_the_same_bytes_only_with_the_same_validators_and_coding() {
        let record = record();
        let same = [
            ("content-length", "1000"),
            ("etag", "\"v1\""),
            ("content-type", "video/mp4"),
        ];
        assert!(same_representation(&record, StatusCode::OK, &head(&same)));
        assert!(!same_representation(
            &record,
            StatusCode::NOT_FOUND,
            &head(&same)
        ));
        let gzip = [same[0], same[1], same[2], ("content-encoding", "gzip")];
        assert!(!same_representation(&record, StatusCode::OK, &head(&gzip)));
        let other_tag = [same[0], ("etag", "\"v1-gzip\""), same[2]];
        assert!(!same_representation(
            &record,
            StatusCode::OK,
            &head(&other_tag)
        ));
        let other_length = [("content-length", "999"), same[1], same[2]];
        assert!(!same_representation(
            &record,
            StatusCode::OK,
            &head(&other_length)
        ));
    }

    #[test]
    fn the_variants_fields_replace_the_records() {
        let mut headers = head(&[
            ("access-control-allow-origin", "https://a.example"),
            ("vary", "Origin"),
            ("content-length", "1000"),
        ]);
        let record = vec![
            ("vary".to_string(), "Origin".to_string()),
            (
                "access-control-allow-origin".to_string(),
                "https://a.example".to_string(),
            ),
        ];
        let variant = vec![
            ("vary".to_string(), "Origin".to_string()),
            (
                "access-control-allow-origin".to_string(),
                "https://b.example".to_string(),
            ),
        ];
        apply(&mut headers, &record, &variant);
        assert_eq!(headers["access-control-allow-origin"], "https://b.example");
        assert_eq!(headers.get_all("vary").iter().count(), 1);
        assert_eq!(headers["content-length"], "1000");
    }
}
