//! The whole-response store: RFC 9111 caching of what the piece path does
//! not take — statuses other than `200` (negative caching of `404`/`410`,
//! redirects), bodies of unknown length, requests with a query string or
//! for a directory.
//!
//! A response is fetched with one GET, streamed to the client while it is
//! buffered (up to `response_bytes_max`), and stored once complete: its
//! body as pieces of an object whose manifest is built on ingest (so the
//! store verifies every byte on read and eviction counts it like any
//! object), its status, fields and times in a record under
//! [`RECORD_PREFIX`] + the cache key. A key keeps up to
//! [`VARIANTS_PER_KEY_MAX`] variants, one per secondary key of its `Vary`
//! fields; `Vary: *` is never stored.
//!
//! Whether a stored response may answer a request is
//! [`shoal_http::freshness::decide`]: fresh, stale but accepted, stale
//! while revalidating in the background (RFC 5861), or revalidated first —
//! with `If-None-Match` / `If-Modified-Since`, a `304` updating the stored
//! fields (RFC 9111 §4.3.4) — and served stale if the origin fails and
//! `stale-if-error` allows it. `CDN-Cache-Control` (RFC 9213) takes
//! precedence over `Cache-Control` for all of this.
//!
//! Not stored (passed through): a response to a request with `Range` or a
//! precondition on a miss, with `Authorization` unless the response allows
//! it (RFC 9111 §3.5), with `Set-Cookie` (one client's cookie must not
//! reach another), `no-store`/`private`, `206`, and bodies over the limit.
//! Concurrent misses for one key wait for the first (one origin fetch),
//! at most [`MISS_WAIT_MS`].

use crate::fault::Fault;
use crate::origin_client::{Forward, RangeBody};
use crate::proxy::{self, ForwardBody, PassReason};
use crate::serve::{error_response, CacheService, BODY_CHUNKS_MAX, CACHE_STATUS_HEADER};
use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use shoal_core::{Manifest, ObjectId, PieceHash, PieceIndex, PieceSize, VerifiedPiece};
use shoal_http::cache_control::{
    freshness_lifetime_s, is_storable, may_store_authorized, CacheControl, Expires,
    RequestCacheControl, CDN_CACHE_CONTROL,
};
use shoal_http::freshness::{current_age_s, decide, StoredTimes, Use};
use shoal_http::vary::{variant_key, Vary};
use shoal_proto::TIER_HEADER;
use shoal_server::Body;
use shoal_store::{PieceKey, Store};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

/// Records of stored responses are kept under this prefix + the cache key
/// (paths start with `/`, so they never meet the piece path's records).
pub const RECORD_PREFIX: &str = "r:";
/// Variants kept per cache key (one per secondary key of `Vary`).
pub const VARIANTS_PER_KEY_MAX: usize = 8;
/// Keys whose record is kept in memory too.
pub const KEYS_IN_MEMORY_MAX: usize = 100_000;
/// How long a request waits for another request's fetch of the same key
/// before it asks the origin itself.
pub const MISS_WAIT_MS: u64 = 10_000;
const RECORD_FORMAT: u32 = 1;
/// Per-key locks kept before the idle ones are dropped.
const FETCHING_TRACKED_MAX: usize = 1_024;
/// Chunks of a response being stored that may wait for a slow client:
/// the origin fetch (and the key's turn) does not go at its pace.
const STORING_CHUNKS_MAX: usize = 512;

/// One stored response.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredVariant {
    /// The secondary key (values of the `Vary` fields) it answers.
    pub selector: String,
    pub status: u16,
    /// The origin's end-to-end fields, as sent.
    pub headers: Vec<(String, String)>,
    /// The body: the object id of its built manifest, its size, pieces.
    pub id: String,
    pub size: u64,
    pub piece_size_log2: u8,
    pub hashes_hex: Vec<String>,
    pub request_unix_s: u64,
    pub response_unix_s: u64,
    pub date_unix_s: Option<u64>,
    pub age_s: Option<u64>,
    /// Freshness lifetime when stored (or last revalidated).
    pub lifetime_s: u64,
}

/// What is stored for one cache key.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyRecord {
    pub format: u32,
    /// The `Vary` fields of the newest response.
    pub vary: Vec<String>,
    pub variants: Vec<StoredVariant>,
}

impl StoredVariant {
    pub fn header_map(&self) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in &self.headers {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                map.append(name, value);
            }
        }
        map
    }

    fn times(&self) -> StoredTimes {
        StoredTimes {
            request_unix_s: self.request_unix_s,
            response_unix_s: self.response_unix_s,
            date_unix_s: self.date_unix_s,
            age_s: self.age_s,
        }
    }

    fn layout(&self) -> Option<(ObjectId, PieceSize, Vec<PieceHash>)> {
        let id = ObjectId::from_hex(&self.id)?;
        let piece_size = PieceSize::from_log2(self.piece_size_log2).ok()?;
        let hashes = self
            .hashes_hex
            .iter()
            .map(|h| PieceHash::from_hex(h))
            .collect::<Option<Vec<_>>>()?;
        Some((id, piece_size, hashes))
    }
}

/// The fields a stored response keeps: end-to-end, less what the cache
/// writes itself (`Content-Length`, `Date`, `Age`, `Via`), `Set-Cookie`
/// and `x-shoal-*`.
/// `None` when a field would have to be left out (too many, too long,
/// not text): the body must not be served without them.
fn kept_fields(headers: &HeaderMap) -> Option<Vec<(String, String)>> {
    let computed = [
        header::CONTENT_LENGTH,
        header::DATE,
        header::AGE,
        header::VIA,
    ];
    let mut wanted = headers.clone();
    shoal_http::forward::remove_hop_by_hop(&mut wanted);
    let expected = wanted
        .iter()
        .filter(|(name, _)| {
            !computed.contains(name)
                && **name != header::SET_COOKIE
                && !name.as_str().starts_with("x-shoal-")
        })
        .count();
    let kept: Vec<(String, String)> = shoal_http::forward::stored_fields(headers, &computed)
        .into_iter()
        .filter(|(name, _)| !name.starts_with("x-shoal-"))
        .collect();
    (kept.len() == expected).then_some(kept)
}

/// The directives the cache follows: `CDN-Cache-Control` if present
/// (RFC 9213), else `Cache-Control`.
fn directives(headers: &HeaderMap) -> CacheControl {
    CacheControl::for_cdn(headers)
}

use shoal_http::date::header_date_unix_s as header_unix_s;

/// How long a response stays fresh here: its explicit lifetime
/// (`CDN-Cache-Control`, else `Cache-Control`, else `Expires`), else the
/// heuristic — 10 % of its age since `Last-Modified`, or, without one,
/// `default_s` (the operator's `freshness_default_s`; RFC 9111 §4.2.2
/// leaves the heuristic to the cache) for a negative answer or a
/// permanent redirect, 0 for anything else (a page that says nothing
/// about itself is asked about again every time).
pub fn lifetime_s(status: StatusCode, headers: &HeaderMap, now_unix_s: u64, default_s: u64) -> u64 {
    let negative_or_redirect = matches!(
        status.as_u16(),
        300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    );
    let default_s = if negative_or_redirect { default_s } else { 0 };
    let cc = directives(headers);
    let expires = if headers.contains_key(CDN_CACHE_CONTROL) {
        None
    } else {
        Expires::from_headers(headers)
    };
    let explicit = cc.max_age_s.is_some() || cc.s_maxage_s.is_some() || cc.no_cache;
    let last_modified = header_unix_s(headers, header::LAST_MODIFIED);
    if !explicit && expires.is_none() && last_modified.is_none() {
        return default_s;
    }
    freshness_lifetime_s(
        &cc,
        expires,
        header_unix_s(headers, header::DATE),
        last_modified,
        now_unix_s,
    )
}

/// Whether `Expires` counts for the cache: not when `CDN-Cache-Control`
/// speaks for it (RFC 9213).
fn has_expires(headers: &HeaderMap) -> bool {
    headers.contains_key(header::EXPIRES) && !headers.contains_key(CDN_CACHE_CONTROL)
}

/// Why a response is not stored (for the logs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotStored {
    /// The response's directives (or its status) forbid it.
    Directives,
    /// The request's `no-store`.
    RequestNoStore,
    Authorization,
    /// The request carried `Cookie` and the response has no explicit
    /// freshness nor `public`: it may be one user's page.
    Cookie,
    SetCookie,
    VaryAnything,
    Partial,
    TooLarge,
    /// Fields the record cannot keep whole (too many, too long, not text).
    Fields,
}

impl NotStored {
    /// Whether the answer says something about the stored response (which
    /// it then replaces), rather than about this one request.
    pub fn replaces_stored(self) -> bool {
        matches!(
            self,
            NotStored::Directives
                | NotStored::SetCookie
                | NotStored::VaryAnything
                | NotStored::TooLarge
                | NotStored::Fields
        )
    }
}

/// May the answer to a GET with `request` headers be stored (RFC 9111 §3)?
/// `Ok` with its `Vary` fields when it may.
pub fn storable(
    request: &HeaderMap,
    status: StatusCode,
    response: &HeaderMap,
    bytes_max: u64,
) -> Result<Vary, NotStored> {
    let cc = directives(response);
    if status == StatusCode::PARTIAL_CONTENT {
        return Err(NotStored::Partial);
    }
    if !is_storable(status, &cc, has_expires(response)) {
        return Err(NotStored::Directives);
    }
    if RequestCacheControl::from_headers(request).no_store {
        return Err(NotStored::RequestNoStore);
    }
    if request.contains_key(header::AUTHORIZATION) && !may_store_authorized(&cc) {
        return Err(NotStored::Authorization);
    }
    let explicit = cc.public
        || cc.max_age_s.is_some()
        || cc.s_maxage_s.is_some()
        || response.contains_key(header::EXPIRES);
    if request.contains_key(header::COOKIE) && !explicit {
        return Err(NotStored::Cookie);
    }
    if kept_fields(response).is_none() {
        return Err(NotStored::Fields);
    }
    if response.contains_key(header::SET_COOKIE) {
        return Err(NotStored::SetCookie);
    }
    if shoal_proto::body::content_length(response).is_some_and(|len| len > bytes_max) {
        return Err(NotStored::TooLarge);
    }
    match Vary::from_headers(response) {
        Vary::Anything => Err(NotStored::VaryAnything),
        vary => Ok(vary),
    }
}

/// The table of stored responses (records in the store, hot ones in
/// memory too) and the per-key locks that collapse concurrent misses.
pub struct ResponseStore {
    store: Arc<Store>,
    /// `None`: removed (the store's index may not have committed it yet,
    /// so the disk is not asked again).
    records: Mutex<HashMap<String, Option<Arc<KeyRecord>>>>,
    fetching: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Largest body stored.
    pub bytes_max: u64,
    /// Heuristic lifetime when a response says nothing.
    pub freshness_default_s: u64,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl ResponseStore {
    pub fn new(store: Arc<Store>, bytes_max: u64, freshness_default_s: u64) -> Self {
        Self {
            store,
            records: Mutex::default(),
            fetching: Mutex::default(),
            bytes_max,
            freshness_default_s,
        }
    }

    fn record(&self, key: &str) -> Option<Arc<KeyRecord>> {
        if let Some(known) = lock(&self.records).get(key) {
            return known.clone();
        }
        let bytes = self
            .store
            .get_record(&format!("{RECORD_PREFIX}{key}"))
            .ok()
            .flatten()?;
        let record: KeyRecord = serde_json::from_slice(&bytes).ok()?;
        if record.format != RECORD_FORMAT {
            return None;
        }
        let record = Arc::new(record);
        self.remember(key, Some(record.clone()));
        Some(record)
    }

    fn remember(&self, key: &str, record: Option<Arc<KeyRecord>>) {
        let mut records = lock(&self.records);
        if records.len() >= KEYS_IN_MEMORY_MAX && !records.contains_key(key) {
            // The store keeps them all; memory keeps what fits (a removal
            // is committed long before 100,000 other keys come by).
            if let Some(victim) = records.keys().next().cloned() {
                records.remove(&victim);
            }
        }
        records.insert(key.to_string(), record);
    }

    fn save(&self, key: &str, record: KeyRecord) {
        if let Ok(bytes) = serde_json::to_vec(&record) {
            let _ = self
                .store
                .put_record(&format!("{RECORD_PREFIX}{key}"), bytes);
        }
        self.remember(key, Some(Arc::new(record)));
    }

    /// Whether anything is stored for `key`.
    pub fn has(&self, key: &str) -> bool {
        self.record(key).is_some()
    }

    /// Forgets what is stored for `key` (its pieces go with eviction).
    pub fn remove(&self, key: &str) {
        if self.record(key).is_none() {
            return;
        }
        self.remember(key, None);
        let _ = self.store.remove_record(&format!("{RECORD_PREFIX}{key}"));
    }

    /// The stored variant that answers a request with these headers.
    pub fn lookup(&self, key: &str, request: &HeaderMap) -> Option<StoredVariant> {
        let record = self.record(key)?;
        let selector = variant_key(&record.vary, request)?;
        record
            .variants
            .iter()
            .find(|v| v.selector == selector)
            .cloned()
    }

    /// The body of a stored variant, every piece verified by the store;
    /// `None` if a piece is gone (evicted): the caller fetches again.
    pub async fn body(&self, variant: &StoredVariant) -> Option<Bytes> {
        let (id, _, hashes) = variant.layout()?;
        let mut body = BytesMut::with_capacity(variant.size as usize);
        for (index, expected) in hashes.iter().enumerate() {
            let key = PieceKey {
                object: id,
                index: PieceIndex(index as u32),
            };
            let piece = self.store.get(key).await.ok().flatten()?;
            if piece.hash() != *expected {
                return None;
            }
            body.extend_from_slice(piece.data());
        }
        (body.len() as u64 == variant.size).then(|| body.freeze())
    }

    /// Stores a complete response for `key` (its body verified against the
    /// hashes built here and now).
    pub async fn put(&self, key: &str, vary: Vec<String>, mut variant: StoredVariant, body: Bytes) {
        let piece_size = PieceSize::for_object_size(body.len() as u64);
        let Ok(manifest) = Manifest::from_data(&body, piece_size, Default::default()) else {
            return;
        };
        let id = manifest.id();
        for (index, hash) in manifest.piece_hashes().iter().enumerate() {
            let index = PieceIndex(index as u32);
            let Some(span) = manifest.layout().piece_span(index) else {
                return;
            };
            let data = body.slice(span.start() as usize..span.end() as usize);
            let Ok(piece) = VerifiedPiece::verify_against(index, *hash, data) else {
                return;
            };
            if self.store.put(id, piece_size, piece).await.is_err() {
                return;
            }
        }
        variant.id = id.to_hex();
        variant.size = body.len() as u64;
        variant.piece_size_log2 = piece_size.log2();
        variant.hashes_hex = manifest.piece_hashes().iter().map(|h| h.to_hex()).collect();
        self.set_variant(key, vary, variant);
    }

    /// Puts `variant` in `key`'s record in place of the one with its
    /// selector; other variants stay while `vary` is unchanged.
    pub fn set_variant(&self, key: &str, vary: Vec<String>, variant: StoredVariant) {
        let mut record = self.record(key).map(|r| (*r).clone()).unwrap_or_default();
        if record.vary != vary {
            record.variants.clear();
            record.vary = vary;
        }
        record.format = RECORD_FORMAT;
        record.variants.retain(|v| v.selector != variant.selector);
        record.variants.insert(0, variant);
        record.variants.truncate(VARIANTS_PER_KEY_MAX);
        self.save(key, record);
    }

    /// Drops every stored response whose key's path a purge names.
    pub fn apply_purge(&self, event: &crate::purge::PurgeEvent) -> usize {
        let mut keys: Vec<String> = self
            .store
            .all_records()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(key, _)| key.strip_prefix(RECORD_PREFIX).map(str::to_string))
            .collect();
        // Saved moments ago, maybe not committed yet.
        keys.extend(
            lock(&self.records)
                .iter()
                .filter(|(_, record)| record.is_some())
                .map(|(key, _)| key.clone()),
        );
        keys.sort();
        keys.dedup();
        keys.retain(|key| event.target.matches(&purge_path(key)));
        for key in &keys {
            self.remove(key);
        }
        keys.len()
    }

    /// Waits for the key's fetch by another request, if any, and takes the
    /// key's turn (released when the guard drops).
    pub(crate) async fn turn(&self, key: &str) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        let key_lock = lock(&self.fetching)
            .entry(key.to_string())
            .or_default()
            .clone();
        let guard = tokio::time::timeout(
            std::time::Duration::from_millis(MISS_WAIT_MS),
            key_lock.lock_owned(),
        )
        .await
        .ok();
        let mut fetching = lock(&self.fetching);
        if fetching.len() > FETCHING_TRACKED_MAX {
            fetching.retain(|_, l| Arc::strong_count(l) > 1);
        }
        guard
    }
}

/// The decoded path of a key (as purges name paths): `/a%20b?x#host` →
/// `/a b`.
fn purge_path(key: &str) -> String {
    let path = key.split(['?', '#']).next().unwrap_or(key);
    percent_encoding::percent_decode_str(path)
        .decode_utf8_lossy()
        .into_owned()
}

/// The cache key of a request: its target (path and query as sent, less
/// the pin) and its host, which the origin sees in `X-Forwarded-Host` and
/// may build links from.
pub fn cache_key(target: &str, host: Option<&HeaderValue>) -> String {
    let host = host
        .and_then(|h| h.to_str().ok())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    format!("{target}#{host}")
}

/// The request fields that ask for part of a representation or set a
/// precondition: the client's own, never the cache's when it asks for its
/// copy.
const PART_AND_CONDITION_FIELDS: [HeaderName; 6] = [
    header::RANGE,
    header::IF_MATCH,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_UNMODIFIED_SINCE,
    header::IF_RANGE,
];

/// Request fields that make a miss unfit for storing: a cache asks for
/// the whole representation on its own behalf.
pub(crate) fn asks_for_part_or_condition(headers: &HeaderMap) -> bool {
    PART_AND_CONDITION_FIELDS
        .iter()
        .any(|name| headers.contains_key(name))
}

/// Whether the stored variant may answer a request carrying
/// `Authorization` (RFC 9111 §3.5).
fn serves_authorized(variant: &StoredVariant) -> bool {
    may_store_authorized(&directives(&variant.header_map()))
}

impl CacheService {
    /// A GET or HEAD the piece path does not take: from the response store
    /// when a stored response may answer it, else from the origin (and
    /// stored when it may be).
    pub(crate) async fn respond_whole<B: ForwardBody>(
        self: &Arc<Self>,
        request: Request<B>,
        key: String,
        target: String,
        client_ip: Option<std::net::IpAddr>,
        reason: PassReason,
    ) -> Response<Body> {
        let responses = &self.responses;
        let request_cc = RequestCacheControl::from_headers(request.headers());
        let authorized = request.headers().contains_key(header::AUTHORIZATION);
        let mut turn = None;
        loop {
            let stored = responses
                .lookup(&key, request.headers())
                .filter(|v| !authorized || serves_authorized(v));
            if let Some(variant) = stored {
                let now = shoal_core::now_unix_s();
                let age = current_age_s(&variant.times(), now);
                let cc = directives(&variant.header_map());
                let use_now = decide(variant.lifetime_s, age, &cc, &request_cc);
                match use_now {
                    Use::Fresh | Use::StaleAccepted | Use::StaleWhileRevalidate => {
                        if let Some(body) = responses.body(&variant).await {
                            if use_now == Use::StaleWhileRevalidate {
                                self.revalidate_in_background(
                                    &key,
                                    &target,
                                    &variant,
                                    request.headers(),
                                );
                            }
                            let status = if use_now == Use::Fresh {
                                "HIT"
                            } else {
                                "STALE"
                            };
                            return answer_stored(&variant, body, &request, age, status);
                        }
                        responses.remove(&key);
                    }
                    Use::GatewayTimeout => return only_if_cached(),
                    Use::Revalidate { .. } if turn.is_none() => {
                        // One revalidation per key at a time; look again
                        // once it is this request's turn.
                        turn = responses.turn(&key).await;
                        if turn.is_some() {
                            continue;
                        }
                        return self.forward(request, target, client_ip, reason).await;
                    }
                    Use::Revalidate { stale_if_error } => {
                        return self
                            .revalidate(request, key, target, client_ip, variant, stale_if_error)
                            .await;
                    }
                }
            }
            if request_cc.only_if_cached {
                return only_if_cached();
            }
            if turn.is_some() || asks_for_part_or_condition(request.headers()) {
                break;
            }
            // One fetch per key at a time: wait for another request's,
            // then look again.
            turn = responses.turn(&key).await;
            if turn.is_none() {
                break;
            }
        }
        if asks_for_part_or_condition(request.headers()) || *request.method() == Method::HEAD {
            return self.forward(request, target, client_ip, reason).await;
        }
        self.fetch_and_store(request, key, target, client_ip, turn)
            .await
    }

    /// A miss: GET from the origin, answer the client as it streams, store
    /// it once complete when it may be stored.
    async fn fetch_and_store<B: ForwardBody>(
        self: &Arc<Self>,
        request: Request<B>,
        key: String,
        target: String,
        client_ip: Option<std::net::IpAddr>,
        turn: Option<tokio::sync::OwnedMutexGuard<()>>,
    ) -> Response<Body> {
        let request_unix_s = shoal_core::now_unix_s();
        let client_headers = request.headers().clone();
        let headers = proxy::request_headers(&client_headers, request.version(), client_ip);
        let (status, origin_headers, body) =
            match self.get_upstream(&target, headers, &client_headers).await {
                Ok(parts) => parts,
                Err(response) => return response,
            };
        self.stats
            .pass_through_requests
            .fetch_add(1, Ordering::Relaxed);
        self.store_and_answer(
            Some(&request),
            &client_headers,
            key,
            request_unix_s,
            status,
            origin_headers,
            body,
            turn,
        )
    }

    /// Streams an origin answer to the client (when there is one) and
    /// stores it once complete if it may be stored.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn store_and_answer<B>(
        self: &Arc<Self>,
        request: Option<&Request<B>>,
        client_headers: &HeaderMap,
        key: String,
        request_unix_s: u64,
        status: StatusCode,
        origin_headers: HeaderMap,
        mut body: RangeBody,
        turn: Option<tokio::sync::OwnedMutexGuard<()>>,
    ) -> Response<Body> {
        let may_store = storable(
            client_headers,
            status,
            &origin_headers,
            self.responses.bytes_max,
        );
        if let Err(why) = may_store {
            tracing::debug!(key = %key, ?why, "response not stored");
            // A final answer the stored response may not be kept beside
            // replaces it; one about this request alone (its Range, its
            // preconditions, its credentials) does not.
            let final_answer = !matches!(
                status,
                StatusCode::PARTIAL_CONTENT
                    | StatusCode::NOT_MODIFIED
                    | StatusCode::PRECONDITION_FAILED
                    | StatusCode::RANGE_NOT_SATISFIABLE
            );
            if why.replaces_stored() && final_answer {
                self.responses.remove(&key);
            }
        }
        let vary = may_store.ok().and_then(|vary| {
            let selector = variant_key(vary.fields(), client_headers)?;
            Some((vary.fields().to_vec(), selector))
        });
        let mut response = Response::new(shoal_server::empty());
        *response.status_mut() = status;
        *response.headers_mut() = proxy::response_headers(&origin_headers);
        response.headers_mut().insert(
            CACHE_STATUS_HEADER,
            HeaderValue::from_static(if vary.is_some() { "MISS" } else { proxy::PASS }),
        );
        let with_body = status != StatusCode::NO_CONTENT && status != StatusCode::NOT_MODIFIED;
        let sender = match request {
            Some(_) if with_body => {
                let chunks = if vary.is_some() {
                    STORING_CHUNKS_MAX
                } else {
                    BODY_CHUNKS_MAX
                };
                let (sender, response_body) = shoal_server::channel_body(chunks);
                *response.body_mut() = response_body;
                Some(sender)
            }
            _ => None,
        };
        let Some((vary_fields, selector)) = vary else {
            drop(turn);
            if let Some(sender) = sender {
                tokio::spawn(async move {
                    while let Ok(Some(chunk)) = body.chunk().await {
                        if sender.send(Ok(chunk)).await.is_err() {
                            return;
                        }
                    }
                });
            }
            return response;
        };
        let service = self.clone();
        tokio::spawn(async move {
            let mut turn = turn;
            let mut sender = sender;
            let mut buffer = BytesMut::new();
            let mut complete = true;
            let limit = service.responses.bytes_max;
            loop {
                match body.chunk().await {
                    Ok(Some(chunk)) => {
                        service
                            .stats
                            .origin_bytes
                            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                        if (buffer.len() + chunk.len()) as u64 > limit {
                            // Not stored after all: the others need not wait.
                            complete = false;
                            turn = None;
                        } else if complete {
                            buffer.extend_from_slice(&chunk);
                        }
                        if let Some(out) = &sender {
                            if out.send(Ok(chunk)).await.is_err() {
                                // The client left; the store still gets it
                                // (bounded by the limit).
                                sender = None;
                            }
                        }
                        if !complete && sender.is_none() {
                            return;
                        }
                    }
                    Ok(None) => break,
                    Err(error) => {
                        if let Some(out) = &sender {
                            let _ = out
                                .send(Err(std::io::Error::other(error.to_string())))
                                .await;
                        }
                        return;
                    }
                }
            }
            if !complete {
                return;
            }
            let body = buffer.freeze();
            if shoal_proto::body::content_length(&origin_headers)
                .is_some_and(|len| len != body.len() as u64)
            {
                return;
            }
            let now = shoal_core::now_unix_s();
            let variant = StoredVariant {
                selector,
                status: status.as_u16(),
                headers: kept_fields(&origin_headers).unwrap_or_default(),
                id: String::new(),
                size: 0,
                piece_size_log2: 0,
                hashes_hex: Vec::new(),
                request_unix_s,
                response_unix_s: now,
                date_unix_s: header_unix_s(&origin_headers, header::DATE),
                age_s: shoal_http::freshness::age_field_s(&origin_headers),
                lifetime_s: lifetime_s(
                    status,
                    &origin_headers,
                    now,
                    service.responses.freshness_default_s,
                ),
            };
            service
                .responses
                .put(&key, vary_fields, variant, body)
                .await;
            service
                .stats
                .responses_stored
                .fetch_add(1, Ordering::Relaxed);
            drop(turn);
        });
        response
    }

    /// Asks the origin whether a stored response still holds (conditional
    /// GET); a 304 refreshes it, a new answer replaces it, a failure serves
    /// it stale if `stale-if-error` allows.
    async fn revalidate<B: ForwardBody>(
        self: &Arc<Self>,
        request: Request<B>,
        key: String,
        target: String,
        client_ip: Option<std::net::IpAddr>,
        variant: StoredVariant,
        stale_if_error: bool,
    ) -> Response<Body> {
        self.stats.revalidations.fetch_add(1, Ordering::Relaxed);
        let request_unix_s = shoal_core::now_unix_s();
        let client_headers = request.headers().clone();
        let answer = self
            .conditional_fetch(
                &target,
                &variant,
                &client_headers,
                client_ip,
                request.version(),
            )
            .await;
        match answer {
            Ok((StatusCode::NOT_MODIFIED, headers, _))
                if headers
                    .get(header::ETAG)
                    .is_some_and(|tag| variant.header_map().get(header::ETAG) != Some(tag)) =>
            {
                // A 304 about another representation than ours (RFC 9111
                // §4.3.4): ours is not it; fetch it whole.
                self.responses.remove(&key);
                self.fetch_and_store(request, key, target, client_ip, None)
                    .await
            }
            Ok((StatusCode::NOT_MODIFIED, headers, _)) => {
                let refreshed = self.refreshed(&key, &variant, &headers, request_unix_s);
                match self.responses.body(&refreshed).await {
                    Some(body) => {
                        let age = current_age_s(&refreshed.times(), shoal_core::now_unix_s());
                        answer_stored(&refreshed, body, &request, age, "REVALIDATED")
                    }
                    None => {
                        self.responses.remove(&key);
                        self.forward(request, target, client_ip, PassReason::Response)
                            .await
                    }
                }
            }
            Ok((status, _, _)) if status.is_server_error() && stale_if_error => {
                match self.stale_answer(&variant, &request).await {
                    Some(response) => response,
                    None => {
                        self.forward(request, target, client_ip, PassReason::Response)
                            .await
                    }
                }
            }
            Ok((status, headers, body)) => self.store_and_answer(
                Some(&request),
                &client_headers,
                key,
                request_unix_s,
                status,
                headers,
                body,
                None,
            ),
            Err(error) => {
                if stale_if_error {
                    if let Some(response) = self.stale_answer(&variant, &request).await {
                        return response;
                    }
                }
                error_response(
                    error.client_status(),
                    Fault::Origin,
                    &format!("{}\n", shoal_proto::Chain(&error)),
                )
            }
        }
    }

    /// The stored variant served stale (RFC 5861 `stale-if-error`), if its
    /// body is still here.
    async fn stale_answer<B>(
        &self,
        variant: &StoredVariant,
        request: &Request<B>,
    ) -> Option<Response<Body>> {
        let body = self.responses.body(variant).await?;
        let age = current_age_s(&variant.times(), shoal_core::now_unix_s());
        tracing::warn!(
            status = variant.status,
            "the origin failed: serving a stale stored response (stale-if-error)"
        );
        Some(answer_stored(variant, body, request, age, "STALE"))
    }

    /// `stale-while-revalidate`: the client has its answer; the origin is
    /// asked meanwhile (once per key at a time).
    fn revalidate_in_background(
        self: &Arc<Self>,
        key: &str,
        target: &str,
        variant: &StoredVariant,
        client_headers: &HeaderMap,
    ) {
        let service = self.clone();
        let key = key.to_string();
        let target = target.to_string();
        let variant = variant.clone();
        let client_headers = client_headers.clone();
        tokio::spawn(async move {
            let Some(turn) = service.responses.turn(&key).await else {
                return;
            };
            // Someone else refreshed it meanwhile.
            if service.responses.lookup(&key, &client_headers).as_ref() != Some(&variant) {
                return;
            }
            let request_unix_s = shoal_core::now_unix_s();
            let answer = service
                .conditional_fetch(
                    &target,
                    &variant,
                    &client_headers,
                    None,
                    http::Version::HTTP_11,
                )
                .await;
            match answer {
                Ok((StatusCode::NOT_MODIFIED, headers, _)) => {
                    service.refreshed(&key, &variant, &headers, request_unix_s);
                }
                Ok((status, headers, body)) if !status.is_server_error() => {
                    let _ = service.store_and_answer::<()>(
                        None,
                        &client_headers,
                        key,
                        request_unix_s,
                        status,
                        headers,
                        body,
                        Some(turn),
                    );
                }
                _ => {}
            }
        });
    }

    /// A GET of `target` conditional on the stored variant's validators.
    async fn conditional_fetch(
        &self,
        target: &str,
        variant: &StoredVariant,
        client_headers: &HeaderMap,
        client_ip: Option<std::net::IpAddr>,
        version: http::Version,
    ) -> Result<(StatusCode, HeaderMap, RangeBody), crate::origin_client::OriginError> {
        let mut headers = proxy::request_headers(client_headers, version, client_ip);
        // The cache asks about its own copy, whole.
        for name in PART_AND_CONDITION_FIELDS {
            headers.remove(name);
        }
        let stored = variant.header_map();
        if let Some(etag) = stored.get(header::ETAG) {
            headers.insert(header::IF_NONE_MATCH, etag.clone());
        }
        if let Some(modified) = stored.get(header::LAST_MODIFIED) {
            headers.insert(header::IF_MODIFIED_SINCE, modified.clone());
        }
        self.upstream(
            Forward {
                method: Method::GET,
                path_and_query: target.to_string(),
                headers,
                body: None,
            },
            target,
            client_headers,
        )
        .await
    }

    /// Where a whole response comes from: in a mesh, the path's shield
    /// when that is another cache (so one cache per path asks the
    /// origin), asked like an origin with [`TIER_HEADER`]; the origin when
    /// this cache is the shield, when the request came from a cache, or
    /// when the shield cannot be reached.
    /// GETs `target` upstream (see [`Self::upstream`]) with `headers`; the
    /// cache's own error answer (logged) when nothing answered.
    pub(crate) async fn get_upstream(
        &self,
        target: &str,
        headers: HeaderMap,
        client_headers: &HeaderMap,
    ) -> Result<(StatusCode, HeaderMap, RangeBody), Response<Body>> {
        let forward = Forward {
            method: Method::GET,
            path_and_query: target.to_string(),
            headers,
            body: None,
        };
        self.upstream(forward, target, client_headers)
            .await
            .map_err(|error| {
                tracing::warn!(target = %target, error = %shoal_proto::Chain(&error), "the origin did not answer");
                error_response(
                    error.client_status(),
                    Fault::Origin,
                    &format!("{}\n", shoal_proto::Chain(&error)),
                )
            })
    }

    /// The cache `target`'s whole responses come through: the path's
    /// shield when it is another (usable) member of the mesh.
    pub(crate) fn tier_shield(
        &self,
        target: &str,
    ) -> Option<(&Arc<crate::peer::MeshLink>, shoal_mesh::Member)> {
        let mesh = self.mesh.as_ref()?;
        let view = mesh.node.view();
        view.shield(&shoal_mesh::shield_key(&purge_path(target)))
            .filter(|m| m.node_id != view.self_id && mesh.usable(&m.node_id))
            .cloned()
            .map(|member| (mesh, member))
    }

    pub(crate) async fn upstream(
        &self,
        mut forward: Forward,
        target: &str,
        client_headers: &HeaderMap,
    ) -> Result<(StatusCode, HeaderMap, RangeBody), crate::origin_client::OriginError> {
        let from_a_cache = client_headers.contains_key(TIER_HEADER);
        let shield = self.tier_shield(target).filter(|_| !from_a_cache);
        if let Some((mesh, shield)) = shield {
            let mut tiered = Forward {
                method: forward.method.clone(),
                path_and_query: forward.path_and_query.clone(),
                headers: forward.headers.clone(),
                body: None,
            };
            tiered
                .headers
                .insert(TIER_HEADER, HeaderValue::from_static("1"));
            // Signed: the shield then knows a sibling asks (one that has
            // checked the client's signed URL, if the path needs one).
            if let Some(token) = mesh
                .token_for(forward.method.as_str(), &forward.path_and_query)
                .ok()
                .and_then(|t| HeaderValue::from_str(&t).ok())
            {
                tiered.headers.insert(shoal_core::auth::AUTH_HEADER, token);
            }
            // The shield may wait for another request's fetch, then for
            // the origin: it gets both waits.
            let wait = std::time::Duration::from_millis(
                self.origin
                    .config()
                    .read_timeout_ms
                    .saturating_add(MISS_WAIT_MS),
            );
            match self
                .origin
                .forward_within(&shield.base_url(), tiered, wait)
                .await
            {
                // Only a shield that cannot be reached is passed over: a
                // slow one is slow because the origin is.
                Err(crate::origin_client::OriginError::Unreachable(cause)) => {
                    tracing::warn!(shield = %shield.node_id, target = %target, error = %shoal_proto::Chain(&*cause), "the shield cannot be reached: asking the origin");
                    mesh.suspect(&shield.node_id);
                }
                answer => return answer,
            }
        }
        forward.headers.remove(TIER_HEADER);
        self.origin.forward(forward).await
    }

    /// The stored variant refreshed by a 304 (RFC 9111 §4.3.4): its fields
    /// updated, its clock restarted, its lifetime recomputed; saved.
    fn refreshed(
        &self,
        key: &str,
        variant: &StoredVariant,
        not_modified: &HeaderMap,
        request_unix_s: u64,
    ) -> StoredVariant {
        let now = shoal_core::now_unix_s();
        let computed = [
            header::CONTENT_LENGTH,
            header::DATE,
            header::AGE,
            header::VIA,
            // What the stored body is: a 304 does not change it.
            header::CONTENT_ENCODING,
            header::CONTENT_RANGE,
            HeaderName::from_static("content-md5"),
        ];
        let mut refreshed = variant.clone();
        refreshed.headers =
            shoal_http::forward::update_stored_fields(&variant.headers, not_modified, &computed)
                .into_iter()
                .filter(|(name, _)| !name.starts_with("x-shoal-"))
                .collect();
        refreshed.request_unix_s = request_unix_s;
        refreshed.response_unix_s = now;
        refreshed.date_unix_s = header_unix_s(not_modified, header::DATE);
        refreshed.age_s = shoal_http::freshness::age_field_s(not_modified);
        refreshed.lifetime_s = lifetime_s(
            StatusCode::from_u16(refreshed.status).unwrap_or(StatusCode::OK),
            &refreshed.header_map(),
            now,
            self.responses.freshness_default_s,
        );
        let vary = self
            .responses
            .record(key)
            .map(|r| r.vary.clone())
            .unwrap_or_default();
        let status = StatusCode::from_u16(refreshed.status).unwrap_or(StatusCode::OK);
        let fields = refreshed.header_map();
        if is_storable(status, &directives(&fields), has_expires(&fields)) {
            self.responses.set_variant(key, vary, refreshed.clone());
        } else {
            // The 304 says it may no longer be stored: it answers this
            // request and goes.
            self.responses.remove(key);
        }
        refreshed
    }
}

/// `504` for `only-if-cached` without a usable stored response (RFC 9111
/// §5.2.1.7).
fn only_if_cached() -> Response<Body> {
    error_response(
        StatusCode::GATEWAY_TIMEOUT,
        Fault::Client,
        "only-if-cached: nothing stored answers this request\n",
    )
}

/// The largest `Age` sent (RFC 9111 §5.1: 2^31 stands for any larger age).
pub const AGE_SENT_MAX_S: u64 = 2_147_483_648;

/// An answer from a stored response: its status and fields, `Date`, `Age`,
/// `Via`;
/// for a `200`, the request's preconditions and a single range are
/// honoured (several ranges get the whole body, which RFC 9110 §14.2
/// allows).
fn answer_stored<B>(
    variant: &StoredVariant,
    body: Bytes,
    request: &Request<B>,
    age_s: u64,
    cache_status: &'static str,
) -> Response<Body> {
    use shoal_http::conditional::{
        evaluate_preconditions, ConditionalHeaders, EntityTag, EntityValidators, Precondition,
    };
    use shoal_http::range::{select_ranges, RangeResolution};
    let stored = variant.header_map();
    let mut headers = proxy::response_headers(&stored);
    headers.insert(header::AGE, HeaderValue::from(age_s.min(AGE_SENT_MAX_S)));
    // The origin's `Date` stays: `Age` says how old it is (RFC 9110 §6.6.1).
    if let Some(date) = variant.date_unix_s {
        if let Ok(value) = HeaderValue::from_str(&shoal_http::date::format_http_date_unix_s(date)) {
            headers.insert(header::DATE, value);
        }
    }
    headers.insert(CACHE_STATUS_HEADER, HeaderValue::from_static(cache_status));
    let head = *request.method() == Method::HEAD;
    let status = StatusCode::from_u16(variant.status).unwrap_or(StatusCode::OK);
    let mut response = Response::new(shoal_server::empty());
    let mut slice = body.clone();
    let mut out_status = status;
    if status == StatusCode::OK {
        let validators = EntityValidators {
            etag: stored
                .get(header::ETAG)
                .and_then(|v| EntityTag::parse(v.as_bytes()).ok()),
            last_modified_unix_s: header_unix_s(&stored, header::LAST_MODIFIED),
        };
        let conditions = ConditionalHeaders::from_headers(request.headers());
        let range_allowed = match evaluate_preconditions(true, &conditions, &validators) {
            Precondition::Failed => {
                *response.status_mut() = StatusCode::PRECONDITION_FAILED;
                *response.headers_mut() = headers;
                return response;
            }
            Precondition::NotModified => {
                *response.status_mut() = StatusCode::NOT_MODIFIED;
                headers.remove(header::CONTENT_LENGTH);
                *response.headers_mut() = headers;
                return response;
            }
            Precondition::Proceed { range_allowed } => range_allowed && !head,
        };
        headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        let range = request.headers().get(header::RANGE).map(|v| v.as_bytes());
        match select_ranges(range, range_allowed, body.len() as u64) {
            RangeResolution::Single(span) => {
                if let Ok(value) =
                    shoal_http::content_range::format_content_range(span, body.len() as u64)
                {
                    if let Ok(value) = HeaderValue::from_str(&value) {
                        headers.insert(header::CONTENT_RANGE, value);
                        slice = body.slice(span.start() as usize..span.end() as usize);
                        out_status = StatusCode::PARTIAL_CONTENT;
                    }
                }
            }
            RangeResolution::Unsatisfiable => {
                let value = shoal_http::content_range::format_unsatisfied(body.len() as u64);
                if let Ok(value) = HeaderValue::from_str(&value) {
                    headers.insert(header::CONTENT_RANGE, value);
                }
                *response.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
                *response.headers_mut() = headers;
                return response;
            }
            _ => {}
        }
    }
    let no_content = status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    if !no_content {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(slice.len()));
    }
    *response.status_mut() = out_status;
    *response.headers_mut() = headers;
    let bodiless = head || no_content;
    if !bodiless {
        *response.body_mut() = shoal_server::full(slice);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn what_is_stored() {
        let none = map(&[]);
        let ok = |status: u16, response: &HeaderMap| {
            storable(&none, StatusCode::from_u16(status).unwrap(), response, 1000)
        };
        assert_eq!(ok(200, &none), Ok(Vary::Nothing));
        assert_eq!(ok(404, &none), Ok(Vary::Nothing));
        assert_eq!(ok(301, &none), Ok(Vary::Nothing));
        // Not heuristically cacheable without explicit freshness.
        assert_eq!(ok(302, &none), Err(NotStored::Directives));
        assert!(ok(302, &map(&[("cache-control", "max-age=60")])).is_ok());
        assert_eq!(ok(500, &none), Err(NotStored::Directives));
        assert_eq!(ok(206, &none), Err(NotStored::Partial));
        assert_eq!(
            ok(200, &map(&[("cache-control", "private")])),
            Err(NotStored::Directives)
        );
        // RFC 9213: CDN-Cache-Control decides for the CDN.
        assert!(ok(
            200,
            &map(&[
                ("cache-control", "no-store"),
                ("cdn-cache-control", "max-age=60")
            ])
        )
        .is_ok());
        assert_eq!(
            ok(200, &map(&[("set-cookie", "a=1")])),
            Err(NotStored::SetCookie)
        );
        assert_eq!(
            ok(200, &map(&[("vary", "*")])),
            Err(NotStored::VaryAnything)
        );
        assert_eq!(
            ok(200, &map(&[("content-length", "1001")])),
            Err(NotStored::TooLarge)
        );
        let authorized = map(&[("authorization", "Bearer x")]);
        assert_eq!(
            storable(&authorized, StatusCode::OK, &none, 1000),
            Err(NotStored::Authorization)
        );
        assert!(storable(
            &authorized,
            StatusCode::OK,
            &map(&[("cache-control", "public, max-age=5")]),
            1000
        )
        .is_ok());
        assert_eq!(
            storable(
                &map(&[("cache-control", "no-store")]),
                StatusCode::OK,
                &none,
                1000
            ),
            Err(NotStored::RequestNoStore)
        );
    }

    #[test]
    fn cookies_and_incomplete_fields() {
        let cookie = map(&[("cookie", "session=1")]);
        assert_eq!(
            storable(&cookie, StatusCode::OK, &map(&[]), 1000),
            Err(NotStored::Cookie)
        );
        let explicit = map(&[("cache-control", "max-age=60")]);
        assert!(storable(&cookie, StatusCode::OK, &explicit, 1000).is_ok());
        let mut many = HeaderMap::new();
        for i in 0..100 {
            many.append(
                HeaderName::from_bytes(format!("x-f{i}").as_bytes()).unwrap(),
                HeaderValue::from_static("v"),
            );
        }
        assert_eq!(
            storable(&map(&[]), StatusCode::OK, &many, 1000),
            Err(NotStored::Fields)
        );
        assert!(NotStored::Directives.replaces_stored());
        assert!(!NotStored::Authorization.replaces_stored());
        assert!(!NotStored::RequestNoStore.replaces_stored());
    }

    #[test]
    fn purge_paths_and_keys() {
        assert_eq!(purge_path("/a%20b?x=1#host"), "/a b");
        assert_eq!(purge_path("/docs/#h"), "/docs/");
        let host = HeaderValue::from_static("Video.Example");
        assert_eq!(cache_key("/a?x", Some(&host)), "/a?x#video.example");
        assert_eq!(cache_key("/a", None), "/a#");
    }

    #[test]
    fn lifetimes() {
        let now = 1_000_000;
        let ok = StatusCode::OK;
        assert_eq!(lifetime_s(StatusCode::NOT_FOUND, &map(&[]), now, 60), 60);
        assert_eq!(lifetime_s(ok, &map(&[]), now, 60), 0);
        let max_age = map(&[("cache-control", "max-age=5")]);
        assert_eq!(lifetime_s(ok, &max_age, now, 60), 5);
        let cdn = map(&[
            ("cache-control", "max-age=5"),
            ("cdn-cache-control", "max-age=500"),
        ]);
        assert_eq!(lifetime_s(ok, &cdn, now, 60), 500);
        let no_cache = map(&[("cache-control", "no-cache")]);
        assert_eq!(lifetime_s(ok, &no_cache, now, 60), 0);
    }
}
