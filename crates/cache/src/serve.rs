//! The client-facing HTTP handler of the edge cache.
//!
//! Order of work for `GET /<path>`: parse the path (bad → 400), resolve the
//! object version (origin failure → 502/504), evaluate preconditions (304 /
//! 412), resolve ranges (416), fetch the first piece the response needs
//! *before* sending headers (so an origin failure can still be a clean 502),
//! then stream the rest piece by piece, prefetching ahead of the reader. A
//! failure after the headers are out aborts the body: the client sees a
//! truncated response, never wrong bytes.

use crate::fault::{Blame, Fault};
use crate::fill::{FillError, Filler, Want};
use crate::object::ObjectEntry;
use crate::origin_client::OriginClient;
use crate::peer::{
    MeshLink, PeerMode, PeerObject, MODE_HEADER, PEER_DATA_PREFIX, PEER_OBJECT_PREFIX,
    PEER_PIECES_PREFIX, PEER_PREFIX, RECORD_MODE,
};
use crate::proxy::{ForwardBody, PassReason};
use crate::resolve::{Resolved, Resolver};
use crate::stats::CacheStats;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use shoal_core::bitfield::PieceSet;
use shoal_core::{ByteSpan, ObjectId, PieceIndex, VerifiedPiece};
use shoal_http::cache_control::{CacheControl, RequestCacheControl};
use shoal_http::conditional::{
    evaluate_preconditions, ConditionalHeaders, EntityValidators, Precondition,
};
use shoal_http::freshness::{decide, Use};
use shoal_http::multipart::{MultipartPlan, Segment};
use shoal_http::path::RequestPath;
use shoal_http::range::{select_ranges, RangeResolution};
use shoal_server::Body;
use std::sync::atomic::Ordering;
use std::sync::Arc;

// The wire names (defined once in shoal-proto), where the cache's code
// and its users have always found them.
pub use shoal_proto::{
    CACHE_STATUS_HEADER, EGRESS_PATH, ERROR_HEADER, HASHES_PREFIX, INTERNAL_PREFIX,
    MANIFEST_KIND_HEADER, MANIFEST_PREFIX, OBJECT_ID_HEADER, PIN_PARAM, WARM_PREFIX,
};

/// Smallest egress cap a running cache accepts (1 Mbit/s): below it a
/// single write would wait longer than the idle timeout.
pub const EGRESS_BYTES_PER_S_MIN: u64 = 125_000;
/// How long before a member is asked again about a purge it announces.
const PURGE_ASK_AGAIN: std::time::Duration = std::time::Duration::from_secs(5);
/// How long a piece whose origin bytes failed the manifest is refused
/// without asking the origin again.
const BAD_PIECE_RETRY_MS: u64 = 2_000;
/// Chunks (pieces or parts of them) buffered between the piece reader and
/// the socket, per response: enough to keep the socket busy, little memory.
pub(crate) const BODY_CHUNKS_MAX: usize = 4;

pub struct CacheService {
    pub(crate) resolver: Resolver,
    /// Whole responses (what the piece path does not take).
    pub(crate) responses: crate::response::ResponseStore,
    pub(crate) filler: Arc<Filler>,
    pub(crate) origin: Arc<OriginClient>,
    pub(crate) stats: Arc<CacheStats>,
    /// How far ahead of a reader pieces are fetched.
    pub(crate) readahead_bytes: u64,
    /// Query parameters left out of the cache key, per delivery service.
    pub(crate) key_policy: crate::key_policy::KeyPolicy,
    /// The mesh, when this cache is part of one.
    pub(crate) mesh: Option<Arc<MeshLink>>,
    /// The server's egress cap, once it serves.
    pub(crate) egress: std::sync::OnceLock<Arc<shoal_server::Egress>>,
    /// The purge events applied here (kept in `data_dir`).
    pub(crate) purges: std::sync::Mutex<crate::purge::PurgeLog>,
    pub(crate) data_dir: std::path::PathBuf,
    /// As shield: who fetches what from us, for flash-crowd relaying.
    pub(crate) relays: RelayState,
    /// Large files the origin forbids storing: passed through for a while
    /// without a probe.
    pub(crate) pass_verdicts: crate::first_contact::PassVerdicts,
    /// Starting, ready or draining: what `/readyz` says.
    pub(crate) lifecycle: shoal_server::Lifecycle,
    /// The HTTP server's counters, once it serves.
    pub(crate) server_stats: Arc<std::sync::OnceLock<shoal_server::ServerStats>>,
    /// When this cache started (Unix seconds), for `/metrics`.
    pub(crate) started_unix_s: f64,
    /// The disk store's budget, for `/metrics`.
    pub(crate) store_capacity_bytes: u64,
    pub(crate) access_log: Option<Arc<shoal_server::AccessLog>>,
    /// Nonces of operator requests already taken (no replays).
    pub(crate) replays: std::sync::Mutex<shoal_core::auth::ReplayGuard>,
}

/// A shield's side of flash-crowd relaying: the relay desk (see
/// [`crate::schedule::RelayDesk`]) and its clock.
#[derive(Default)]
pub(crate) struct RelayState {
    desk: std::sync::Mutex<crate::schedule::RelayDesk>,
    started: std::sync::OnceLock<std::time::Instant>,
    /// Bytes of `fill` responses this shield admitted and has not finished
    /// sending: what its uplink has promised.
    promised_bytes: std::sync::atomic::AtomicU64,
    /// Client responses this cache is sending now: each takes a share of
    /// the uplink a sibling's request would get.
    client_bodies: std::sync::atomic::AtomicU64,
}

/// Counts a client response as being sent until its body ends.
struct ClientBody(Arc<CacheService>);

impl ClientBody {
    fn start(service: &Arc<CacheService>) -> Self {
        service.relays.client_bodies.fetch_add(1, Ordering::Relaxed);
        Self(service.clone())
    }
}

impl Drop for ClientBody {
    fn drop(&mut self) {
        self.0.relays.client_bodies.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts an admitted `fill` response's bytes as promised until its body
/// is sent (or dropped).
pub(crate) struct PromisedBytes {
    service: Arc<CacheService>,
    bytes: u64,
}

impl Drop for PromisedBytes {
    fn drop(&mut self) {
        self.service
            .relays
            .promised_bytes
            .fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// What a sibling's `fill` request says about how to admit it.
#[derive(Clone, Copy)]
struct FillHeaders {
    /// `x-shoal-last-resort: 1`: serve, never send to a relay.
    last_resort: bool,
    /// `x-shoal-switch-eta-ms`: a switch from a slow source.
    switch_from_eta_ms: Option<u64>,
}

impl FillHeaders {
    /// Parses the headers; a malformed switch time is the sender's error.
    #[allow(clippy::result_large_err)]
    fn parse<B>(request: &Request<B>) -> Result<Self, Response<Body>> {
        let last_resort = request
            .headers()
            .get(crate::peer::LAST_RESORT_HEADER)
            .is_some_and(|v| v.as_bytes() == b"1");
        let switch_from_eta_ms = match request.headers().get(crate::peer::SWITCH_HEADER) {
            None => None,
            Some(value) => match value.to_str().ok().and_then(|v| v.parse::<u64>().ok()) {
                Some(eta_ms) => Some(eta_ms),
                None => {
                    return Err(text_response(
                        StatusCode::BAD_REQUEST,
                        &format!(
                            "bad {}: expected milliseconds as a whole number\n",
                            crate::peer::SWITCH_HEADER
                        ),
                    ))
                }
            },
        };
        Ok(Self {
            last_resort,
            switch_from_eta_ms,
        })
    }
}

/// Liveness for load balancers and supervisors: `200` while the process
/// answers.
pub const LIVEZ_PATH: &str = "/livez";
/// Readiness: `503` while starting or draining.
pub const READYZ_PATH: &str = "/readyz";
/// Prometheus metrics.
pub const METRICS_PATH: &str = "/metrics";

/// A shield serves a crowd directly while what it promised to send is
/// under this many milliseconds of its egress cap.
const DIRECT_HORIZON_MS: u64 = 500;

/// Who a response is for, for accounting.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Audience {
    Client,
    /// A sibling cache.
    Peer,
    /// A sibling cache we relay a flash crowd's block to.
    Relay,
}

impl CacheService {
    /// The cache's counters, as `/_shoal/stats` shows them.
    pub fn stats_snapshot(&self) -> crate::stats::StatsSnapshot {
        let mut snapshot = self.stats.snapshot(self.filler.store());
        if let Some(mesh) = &self.mesh {
            snapshot.gossip_dropped_datagrams = mesh.node.dropped_datagrams();
            snapshot.mesh_members = mesh.node.view().members.len() as u64;
        }
        snapshot
    }

    pub fn mesh(&self) -> Option<&Arc<MeshLink>> {
        self.mesh.as_ref()
    }

    /// Starting, ready or draining (shared with the server).
    pub fn lifecycle(&self) -> &shoal_server::Lifecycle {
        &self.lifecycle
    }

    /// The access log, when one is configured (reopened on SIGHUP).
    pub fn access_log(&self) -> Option<&Arc<shoal_server::AccessLog>> {
        self.access_log.as_ref()
    }

    /// A request of a service that requires signed URLs (for the object
    /// at `object_path`: the request's own path, or the path its manifest
    /// or hashes are asked for): refused (403, saying why) unless its
    /// signature holds; then its signature parameters are taken off the
    /// request, so that neither the cache key nor the origin sees them. A
    /// sibling's tiered request (signed with the cluster key) was checked
    /// by that sibling.
    #[allow(clippy::result_large_err)]
    fn check_signed_url<B>(
        &self,
        request: &mut Request<B>,
        object_path: &str,
        client_ip: Option<std::net::IpAddr>,
    ) -> Result<(), Response<Body>> {
        let host = request_host(request);
        let raw_path = request.uri().path().to_string();
        let Some((service, keys)) = self
            .key_policy
            .signing(host.as_ref().and_then(|h| h.to_str().ok()), object_path)
        else {
            return Ok(());
        };
        if self.asked_by_sibling(request) {
            return Ok(());
        }
        let Ok(path) = RequestPath::parse(object_path) else {
            return Err(text_response(StatusCode::BAD_REQUEST, "bad request path\n"));
        };
        let client = client_ip.unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        let verdict = keys.verify(
            path.as_str(),
            request.uri().query(),
            client,
            crate::resolve::now_unix_s(),
        );
        if let Err(refusal) = verdict {
            self.stats
                .signature_refusals
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%service, path = %path.as_str(), %client, "signed URL refused: {refusal}");
            return Err(error_response(
                StatusCode::FORBIDDEN,
                Fault::Client,
                &format!("forbidden: {refusal}\n"),
            ));
        }
        let stripped = match shoal_core::url_sign::strip(request.uri().query()) {
            Some(query) => format!("{raw_path}?{query}"),
            None => raw_path,
        };
        let mut parts = request.uri().clone().into_parts();
        parts.path_and_query = stripped.parse().ok();
        if let Ok(uri) = http::Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
        Ok(())
    }

    /// Whether `request` is a sibling cache's tiered request: the tier
    /// header with a valid cluster token for this very request.
    fn asked_by_sibling<B>(&self, request: &Request<B>) -> bool {
        request.headers().contains_key(shoal_proto::TIER_HEADER)
            && self.mesh.as_ref().is_some_and(|mesh| {
                let target = request
                    .uri()
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/");
                mesh.authenticate(
                    request.headers().get(shoal_core::auth::AUTH_HEADER),
                    request.method().as_str(),
                    target,
                )
                .is_ok()
            })
    }

    /// Marks the cache ready: at once, or in a mesh joined through seeds
    /// once another member is heard (at most [`crate::MESH_JOIN_WAIT_MS`]).
    pub(crate) async fn become_ready(self: Arc<Self>, seeded: bool) {
        if let (Some(mesh), true) = (&self.mesh, seeded) {
            let started = std::time::Instant::now();
            let wait = std::time::Duration::from_millis(crate::MESH_JOIN_WAIT_MS);
            loop {
                let others = mesh
                    .node
                    .view()
                    .members
                    .iter()
                    .filter(|m| m.node_id != mesh.self_id())
                    .count();
                if others > 0 {
                    tracing::info!(others, "joined the mesh: ready");
                    break;
                }
                if started.elapsed() >= wait {
                    tracing::warn!(
                        "no other mesh member heard within {} ms (are the seeds right, and the cluster secret?): ready, serving as the only cache",
                        crate::MESH_JOIN_WAIT_MS
                    );
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
        self.lifecycle.set_ready();
    }

    /// `/readyz`: ready once serving (and, in a mesh, once it has heard
    /// from another member or waited long enough); never while draining.
    fn readyz(&self) -> Response<Body> {
        let refusal = match self.lifecycle.phase() {
            shoal_server::Phase::Starting => Some(match &self.mesh {
                Some(_) => "joining the mesh: no other member heard yet".to_string(),
                None => "not serving yet".to_string(),
            }),
            _ => None,
        };
        self.lifecycle.readyz(refusal)
    }

    /// Answers one request; `client_ip` is the address it came from (for
    /// `X-Forwarded-For` on what is passed to the origin).
    pub async fn handle<B: ForwardBody>(
        self: Arc<Self>,
        request: Request<B>,
        client_ip: Option<std::net::IpAddr>,
    ) -> Response<Body> {
        // Client counters leave out what siblings and operators ask.
        let path = request.uri().path();
        let from_client = !(path.starts_with(PEER_PREFIX)
            || path == LIVEZ_PATH
            || path == READYZ_PATH
            || path == METRICS_PATH
            || path.starts_with(WARM_PREFIX)
            || path == EGRESS_PATH
            || path == crate::purge::PURGE_PATH);
        if from_client {
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
        }
        let mut response = self.route(request, client_ip).await;
        if from_client && response.status().is_client_error() {
            self.stats.client_errors.fetch_add(1, Ordering::Relaxed);
        }
        // The access log's `note`: how the cache answered.
        let note = match response
            .headers()
            .get(CACHE_STATUS_HEADER)
            .map(|v| v.as_bytes())
        {
            Some(b"HIT") => Some("hit"),
            Some(b"MISS") => Some("miss"),
            Some(b"STALE") => Some("stale"),
            Some(b"PASS") => Some("pass"),
            _ => None,
        };
        if let Some(note) = note {
            response
                .extensions_mut()
                .insert(shoal_server::ExchangeNote(note));
        }
        response
    }

    async fn route<B: ForwardBody>(
        self: &Arc<Self>,
        mut request: Request<B>,
        client_ip: Option<std::net::IpAddr>,
    ) -> Response<Body> {
        // For load balancers and Prometheus: these three paths are the
        // cache's own, never passed to the origin.
        if matches!(*request.method(), Method::GET | Method::HEAD) {
            match request.uri().path() {
                LIVEZ_PATH => return shoal_server::livez(),
                READYZ_PATH => return self.readyz(),
                METRICS_PATH => return crate::metrics::page(self).into_response(),
                _ => {}
            }
        }
        // The tier header says "a sibling asks" (skip the shield, trust its
        // forwarded host): believed only with the cluster token.
        if request.headers().contains_key(shoal_proto::TIER_HEADER)
            && !self.asked_by_sibling(&request)
        {
            request.headers_mut().remove(shoal_proto::TIER_HEADER);
        }
        // An object's manifest and hashes are guarded like the object.
        let path = request.uri().path();
        let object_path = match [MANIFEST_PREFIX, HASHES_PREFIX]
            .iter()
            .find_map(|prefix| path.strip_prefix(prefix))
        {
            Some(rest) => Some(format!("/{rest}")),
            None if path.starts_with(INTERNAL_PREFIX) => None,
            None => Some(path.to_string()),
        };
        if let Some(object_path) = object_path {
            if let Err(refusal) = self.check_signed_url(&mut request, &object_path, client_ip) {
                return refusal;
            }
        }
        if request.uri().path() == EGRESS_PATH {
            return self.set_egress(&request);
        }
        if request.uri().path() == crate::purge::PURGE_PATH {
            return self.purge(&request).await;
        }
        if let Some(rest) = request.uri().path().strip_prefix(WARM_PREFIX) {
            let rest = format!("/{rest}");
            return self.warm(&request, &rest).await;
        }
        let head_only = match *request.method() {
            Method::GET => false,
            Method::HEAD => true,
            // The cache's own namespace answers GET and HEAD only.
            _ if request.uri().path().starts_with(INTERNAL_PREFIX) => {
                let mut response = text_response(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "this endpoint of the cache answers GET and HEAD only\n",
                );
                response
                    .headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
                return response;
            }
            // A tunnel or a loop-back of the request (cross-site tracing)
            // is never the origin's business through a cache.
            Method::CONNECT | Method::TRACE => {
                let mut response = text_response(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "CONNECT and TRACE are not passed on by this cache\n",
                );
                response.headers_mut().insert(
                    header::ALLOW,
                    HeaderValue::from_static("GET, HEAD, OPTIONS, POST, PUT, PATCH, DELETE"),
                );
                return response;
            }
            // RFC 9110 §7.6.2: `Max-Forwards: 0` on OPTIONS is for this hop.
            Method::OPTIONS
                if request
                    .headers()
                    .get(header::MAX_FORWARDS)
                    .is_some_and(|v| v.as_bytes() == b"0") =>
            {
                let mut response = Response::new(shoal_server::empty());
                response.headers_mut().insert(
                    header::ALLOW,
                    HeaderValue::from_static("GET, HEAD, OPTIONS, POST, PUT, PATCH, DELETE"),
                );
                return response;
            }
            // Every other method is the origin's to answer.
            _ => {
                let target = origin_target(request.uri());
                return self
                    .forward(request, target, client_ip, PassReason::Method)
                    .await;
            }
        };
        let raw_path = request.uri().path();
        if raw_path.starts_with(PEER_PREFIX) {
            return self.peer(&request).await;
        }
        let pin = match pinned_version(request.uri().query()) {
            Ok(pin) => pin,
            Err(response) => return response,
        };
        if let Some(object_path) = raw_path.strip_prefix(MANIFEST_PREFIX) {
            return self.manifest(&format!("/{object_path}"), pin).await;
        }
        if let Some(object_path) = raw_path.strip_prefix(HASHES_PREFIX) {
            return self.hashes(&format!("/{object_path}"), pin).await;
        }
        if let Some(endpoint) = raw_path.strip_prefix(INTERNAL_PREFIX) {
            return self.internal(endpoint, request.uri().query());
        }
        // A query the store does not key, or a directory (`/`, `/docs/`):
        // the origin answers it.
        // (A pinned request is the selector's: always the stored version.)
        // The origin gets the query as sent; the key leaves out the
        // parameters the operator listed (a query of only those keys like
        // the bare path, and takes the piece path).
        let target = origin_target(request.uri());
        let host = request_host(&request);
        let ignored = self.key_policy.ignored(
            host.as_ref().and_then(|h| h.to_str().ok()),
            request.uri().path(),
        );
        let keyed = key_target(&target, ignored);
        let key = crate::response::cache_key(&keyed, host.as_ref());
        if pin.is_none()
            && (keyed.contains('?') || is_directory_path(raw_path) || self.responses.has(&key))
        {
            return self
                .respond_whole(request, key, target, client_ip, PassReason::Target)
                .await;
        }
        // A client's `no-cache` / `max-age=0` (RFC 9111 §5.2.1): the piece
        // path asks the origin (or the shield) before answering.
        let request_cc =
            shoal_http::cache_control::RequestCacheControl::from_headers(request.headers());
        if pin.is_none() && request_cc.only_if_cached {
            // (What a known version may answer is `freshness::decide`'s,
            // below; a path known nowhere here has nothing to answer.)
            let known = RequestPath::parse(raw_path).is_ok_and(|p| {
                self.resolver
                    .local_entry(&p)
                    .is_some_and(|e| !e.is_invalidated())
            });
            if !known {
                return error_response(
                    StatusCode::GATEWAY_TIMEOUT,
                    Fault::Client,
                    "only-if-cached: nothing stored answers this request\n",
                );
            }
        }
        // The first GET of a path known nowhere here: one origin request
        // answers it and tells whether the path takes the piece path.
        let mut just_probed = false;
        let request = match RequestPath::parse(raw_path) {
            Ok(path)
                if pin.is_none()
                    && !head_only
                    && !crate::response::asks_for_part_or_condition(request.headers())
                    // Below a shield the path is the shield's to describe.
                    && self.tier_shield(&target).is_none()
                    && self.resolver.local_entry(&path).is_none() =>
            {
                match self
                    .first_contact(request, &path, key.clone(), target.clone(), client_ip)
                    .await
                {
                    crate::first_contact::FirstContact::Answered(response) => return response,
                    crate::first_contact::FirstContact::PiecePath(request) => {
                        just_probed = true;
                        request
                    }
                }
            }
            _ => request,
        };
        let raw_path = request.uri().path();
        // RFC 9111 §5.2.1 and RFC 5861 on the piece path: what the client's
        // directives and the stored version's allow (`freshness::decide`,
        // as for whole responses).
        // (A version made stale by an unsafe request or a purge, whose
        // freshness is 0, is asked about before anything: never served
        // stale.)
        let known = RequestPath::parse(raw_path).ok().and_then(|path| {
            let entry = self.resolver.local_entry(&path)?;
            let usable = !entry.is_invalidated() && entry.record.fresh_until_unix_s > 0;
            (pin.is_none() && !just_probed && usable).then_some((path, entry))
        });
        let only_if_cached = request_cc.only_if_cached;
        let mut decided = None;
        if let Some((path, known)) = known {
            match piece_path_use(&known, &request_cc, shoal_core::now_unix_s()) {
                Use::Fresh => {}
                stale @ (Use::StaleAccepted | Use::StaleWhileRevalidate) => {
                    if stale == Use::StaleWhileRevalidate {
                        let service = self.clone();
                        let stale_path = path.clone();
                        tokio::spawn(async move {
                            let _ = service.resolver.resolve(&stale_path).await;
                        });
                    }
                    return match self
                        .serve_client(known, head_only, &request, true, only_if_cached)
                        .await
                    {
                        Some(response) => response,
                        None => {
                            self.forward(request, target, client_ip, PassReason::Response)
                                .await
                        }
                    };
                }
                Use::GatewayTimeout => {
                    return error_response(
                        StatusCode::GATEWAY_TIMEOUT,
                        Fault::Client,
                        "only-if-cached: the stored version would need the origin\n",
                    );
                }
                Use::Revalidate { stale_if_error } => {
                    // A fresh version the client wants checked is asked
                    // about now; a stale one as any stale path is (one
                    // revalidation for all who wait).
                    let fresh = shoal_core::now_unix_s() < known.record.fresh_until_unix_s;
                    let answer = if fresh {
                        self.resolver.revalidate(&path).await
                    } else {
                        self.resolver.resolve(&path).await
                    };
                    let error = match answer {
                        // Served below without resolving a second time.
                        Ok(resolved) => {
                            decided = Some((path.clone(), resolved));
                            None
                        }
                        Err(error) => Some(error),
                    };
                    if let Some(error) = error {
                        // RFC 5861 §4: an error is a 5xx or no answer; a
                        // 404 says the file is gone.
                        let origin_failed = error
                            .origin_answered()
                            .is_none_or(|status| status.is_server_error());
                        if stale_if_error && origin_failed {
                            tracing::warn!(path = %path.as_str(), "the origin failed: serving the stored version stale (stale-if-error)");
                            if let Some(response) = self
                                .serve_client(known, head_only, &request, true, only_if_cached)
                                .await
                            {
                                return response;
                            }
                        }
                        // Answered now, not resolved a second time below.
                        if error.origin_answered().is_some() {
                            return self
                                .respond_whole(
                                    request,
                                    key,
                                    target,
                                    client_ip,
                                    PassReason::Response,
                                )
                                .await;
                        }
                        return blamed(error.client_status(), &error);
                    }
                }
            }
        }
        let (path, resolved) = match decided {
            Some(found) => found,
            None => match self.parse_and_resolve_pinned(raw_path, pin, true).await {
                Ok(found) => found,
                Err(response) => return response,
            },
        };
        let entry = match resolved {
            Resolved::Cached(entry) => entry,
            Resolved::PassThrough => {
                return self
                    .respond_whole(request, key, target, client_ip, PassReason::Response)
                    .await;
            }
        };
        let Some(response) = self
            .serve_client(entry.clone(), head_only, &request, false, only_if_cached)
            .await
        else {
            return self
                .forward(request, target, client_ip, PassReason::Response)
                .await;
        };
        // The first piece showed the version is gone at the origin (it
        // changed there, or stopped matching its manifest): before any
        // header went out, resolve the path again, once, and serve what
        // the origin has now. A pinned request wants that version only.
        if !(response.status().is_server_error() && entry.is_invalidated() && pin.is_none()) {
            return response;
        }
        match self.resolver.resolve(&path).await {
            Ok(Resolved::Cached(now)) if now.id != entry.id => {
                tracing::info!(path = %path.as_str(), "serving the version the origin has now");
                match self
                    .serve_client(now, head_only, &request, false, only_if_cached)
                    .await
                {
                    Some(response) => response,
                    None => {
                        self.forward(request, target, client_ip, PassReason::Response)
                            .await
                    }
                }
            }
            Ok(Resolved::PassThrough) => {
                self.respond_whole(request, key, target, client_ip, PassReason::Response)
                    .await
            }
            Err(error) if error.origin_answered().is_some() => {
                self.respond_whole(request, key, target, client_ip, PassReason::Response)
                    .await
            }
            _ => response,
        }
    }

    /// Serves a stored version to a client with the fields of the client's
    /// `Vary` variant (RFC 9111 §4.1; see [`crate::variants`]); `stale`:
    /// past its freshness, as the directives allowed (`x-shoal-cache:
    /// STALE`). `None`: the client's variant is another representation
    /// (another encoding, another length): its request is to be passed
    /// through.
    async fn serve_client<B>(
        self: &Arc<Self>,
        entry: Arc<ObjectEntry>,
        head_only: bool,
        request: &Request<B>,
        stale: bool,
        only_if_cached: bool,
    ) -> Option<Response<Body>> {
        // A pinned request wants these bytes: it gets them with the
        // record's fields rather than another version passed through.
        let pinned = pinned_version(request.uri().query())
            .ok()
            .flatten()
            .is_some();
        let variant = match self
            .variant_for(&entry, request.headers(), !only_if_cached)
            .await
        {
            crate::variants::Variant::Record => None,
            crate::variants::Variant::Own(fields) => Some(fields),
            crate::variants::Variant::Other if pinned => None,
            crate::variants::Variant::Other if only_if_cached => {
                return Some(error_response(
                    StatusCode::GATEWAY_TIMEOUT,
                    Fault::Client,
                    "only-if-cached: this variant is not stored\n",
                ));
            }
            crate::variants::Variant::Other => return None,
        };
        let mut response = self
            .serve_entry(entry.clone(), head_only, request, Audience::Client, None)
            .await;
        let served =
            response.status().is_success() || response.status() == StatusCode::NOT_MODIFIED;
        if let Some(fields) = variant.filter(|_| served) {
            crate::variants::apply(response.headers_mut(), &entry.record.headers, &fields);
        }
        if stale && served {
            response
                .headers_mut()
                .insert(CACHE_STATUS_HEADER, HeaderValue::from_static("STALE"));
        }
        Some(response)
    }

    /// `POST /_shoal/warm/<path>`: fills the whole object here (caches
    /// warming it together relay blocks to each other, as in a flash
    /// crowd) and answers a JSON report when done.
    async fn warm<B>(self: &Arc<Self>, request: &Request<B>, raw_path: &str) -> Response<Body> {
        if request.method() != Method::POST {
            return post_only("warm-up is a POST\n");
        }
        if let Err(response) = self.authorize_operator(request) {
            return response;
        }
        let entry = match self.parse_and_resolve(raw_path).await {
            Ok((_, Resolved::Cached(entry))) => entry,
            Ok((_, Resolved::PassThrough)) => {
                return text_response(
                    StatusCode::CONFLICT,
                    "the origin forbids storing this object: nothing to warm\n",
                )
            }
            Err(response) => return response,
        };
        match crate::warm::warm(self, entry).await {
            Ok(report) => json_response(&report),
            Err(error) => text_response(
                error.client_status(),
                &format!("warm-up failed: {}\n", shoal_proto::Chain(&error)),
            ),
        }
    }

    /// `POST /_shoal/egress?bytes_per_s=N`.
    fn set_egress<B>(&self, request: &Request<B>) -> Response<Body> {
        if request.method() != Method::POST {
            return post_only("setting the egress cap is a POST\n");
        }
        if let Err(response) = self.authorize_operator(request) {
            return response;
        }
        let Some(bytes_per_s) = request
            .uri()
            .query()
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("bytes_per_s=")))
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|b| *b == 0 || *b >= EGRESS_BYTES_PER_S_MIN)
        else {
            return text_response(
                StatusCode::BAD_REQUEST,
                &format!(
                    "expected ?bytes_per_s=N: 0 (no cap) or at least {EGRESS_BYTES_PER_S_MIN}\n"
                ),
            );
        };
        let Some(egress) = self.egress.get() else {
            return text_response(StatusCode::SERVICE_UNAVAILABLE, "not serving yet\n");
        };
        let old = egress.bytes_per_s();
        egress.set_bytes_per_s(bytes_per_s);
        // Selectors plan with the cap the mesh hears about.
        if let Some(mesh) = &self.mesh {
            mesh.node.set_egress_cap_bps(bytes_per_s.saturating_mul(8));
        }
        tracing::info!(
            old_bytes_per_s = old,
            new_bytes_per_s = bytes_per_s,
            "egress cap changed to {} Mbit/s by an operator (runtime only: a restart takes the configured cap again)",
            bytes_per_s as f64 / 125_000.0
        );
        json_response(&serde_json::json!({ "old_bytes_per_s": old, "bytes_per_s": bytes_per_s }))
    }

    /// `POST /_shoal/purge?path=/p` (or `prefix=/dir/`, `&soft=1`): applies
    /// a purge here and passes it to every live member; answers what each
    /// did. Members that do not answer catch up from the others' logs
    /// before they serve again.
    async fn purge<B>(self: &Arc<Self>, request: &Request<B>) -> Response<Body> {
        if request.method() != Method::POST {
            return post_only("a purge is a POST\n");
        }
        if let Err(response) = self.authorize_operator(request) {
            return response;
        }
        let (target, soft) =
            match crate::purge::parse_request(request.uri().query().unwrap_or("")) {
                Ok(parsed) => parsed,
                Err(error) => {
                    return text_response(
                        StatusCode::BAD_REQUEST,
                        &format!("bad purge: {error} (e.g. ?path=/video/a.mp4 or ?prefix=/video/, &soft=1 to revalidate instead of drop)\n"),
                    )
                }
            };
        let self_id = self.mesh.as_ref().map(|m| m.self_id().to_string());
        let event = crate::purge::PurgeEvent::new_now(
            target,
            soft,
            self_id.as_deref().unwrap_or("standalone"),
        );
        let mut caches = serde_json::Map::new();
        let said = |answer: Result<(), crate::peer::PeerError>| -> serde_json::Value {
            match answer {
                Ok(()) => "purged".into(),
                Err(error) => format!(
                    "not reached ({}); it catches up from the others",
                    shoal_proto::Chain(&error)
                )
                .into(),
            }
        };
        // A path's shield goes first: a cache purged before its shield
        // could fetch the old version right back from it.
        let view = self.mesh.as_ref().map(|mesh| mesh.node.view());
        let shield = match (&event.target, &view) {
            (crate::purge::PurgeTarget::Path(path), Some(view)) => view
                .shield(&shoal_mesh::shield_key(path))
                .filter(|m| Some(&m.node_id) != self_id.as_ref())
                .cloned(),
            _ => None,
        };
        if let (Some(mesh), Some(shield)) = (&self.mesh, &shield) {
            caches.insert(
                shield.node_id.clone(),
                said(mesh.purge(shield, &event).await),
            );
        }
        let paths_here = self.apply_purge(&event).await;
        if let (Some(mesh), Some(self_id), Some(view)) = (&self.mesh, &self_id, &view) {
            caches.insert(
                self_id.clone(),
                format!("purged {paths_here} path(s)").into(),
            );
            let mut sends = tokio::task::JoinSet::new();
            for member in view
                .members
                .iter()
                .filter(|m| &m.node_id != self_id && !caches.contains_key(&m.node_id))
            {
                let mesh = mesh.clone();
                let member = member.clone();
                let event = event.clone();
                sends.spawn(async move {
                    let answer = mesh.purge(&member, &event).await;
                    (member.node_id, answer)
                });
            }
            while let Some(Ok((node, answer))) = sends.join_next().await {
                caches.insert(node, said(answer));
            }
        }
        tracing::info!(id = %format!("{:016x}", event.id), target = ?event.target, soft, paths = paths_here, "purge");
        json_response(&serde_json::json!({
            "id": format!("{:016x}", event.id),
            "target": event.target,
            "soft": soft,
            "caches": caches,
        }))
    }

    /// Applies a purge event here (once) and keeps it in the log.
    pub async fn apply_purge(&self, event: &crate::purge::PurgeEvent) -> usize {
        let new = lock(&self.purges).insert(event.clone());
        if !new {
            return 0;
        }
        self.pass_verdicts.clear();
        let paths = self.resolver.apply_purge(event).await + self.responses.apply_purge(event);
        self.stats.purges.fetch_add(1, Ordering::Relaxed);
        let log = lock(&self.purges).clone();
        if let (Some(mesh), Some(head)) = (&self.mesh, log.newest_id()) {
            mesh.node.set_purge_head(head);
        }
        if let Err(error) = log.save(&self.data_dir) {
            tracing::warn!(error = %shoal_proto::Chain(&error), "could not save the purge log");
        }
        paths
    }

    /// Before a restarted cache serves what it stored earlier: the purge
    /// events it missed while down, from live members (waits up to
    /// `wait` for one to show up in gossip).
    pub async fn catch_up_purges(&self, wait: std::time::Duration) {
        let Some(mesh) = &self.mesh else { return };
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let view = mesh.node.view();
            for member in view
                .members
                .iter()
                .filter(|m| m.node_id != view.self_id)
                .take(2)
            {
                if self.catch_up_from(mesh, member).await.is_ok() {
                    return;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    "no member answered for purges missed while down: serving what is stored"
                );
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Applies the purge events `member` knows and this cache does not.
    async fn catch_up_from(
        &self,
        mesh: &MeshLink,
        member: &shoal_mesh::Member,
    ) -> Result<(), crate::peer::PeerError> {
        let since = lock(&self.purges)
            .newest_at_ms()
            .saturating_sub(crate::purge::CATCH_UP_SLACK_MS);
        let answer = mesh
            .purges_since(member, since)
            .await
            .inspect_err(|error| {
                tracing::warn!(peer = %member.node_id, error = %shoal_proto::Chain(&error), "could not read a peer's purge log");
            })?;
        let mut applied = 0;
        for event in &answer.events {
            if !lock(&self.purges).contains(event.id) {
                self.apply_purge(event).await;
                applied += 1;
            }
        }
        let newest_known = lock(&self.purges).newest_at_ms();
        if answer.trimmed_before_ms.is_some_and(|t| t > newest_known) {
            // It forgot events we may have missed: every stored path is
            // revalidated.
            tracing::warn!(peer = %member.node_id, "purge log of the peer is shorter than our absence: revalidating every stored path");
            let event = crate::purge::PurgeEvent {
                id: u64::from(newest_known as u32) ^ 0x5eed_0000_0000_0000,
                at_unix_ms: newest_known,
                target: crate::purge::PurgeTarget::Prefix("/".into()),
                soft: true,
            };
            self.resolver.apply_purge(&event).await;
        }
        tracing::info!(peer = %member.node_id, applied, "purge log caught up");
        Ok(())
    }

    /// Follows the gossip: a member announcing a purge this cache has not
    /// applied (its fan-out missed us: a network blip, a restart) is asked
    /// for its log. Each (member, purge) is asked about at most every few
    /// seconds.
    pub async fn follow_purges(self: Arc<Self>) {
        let Some(mesh) = self.mesh.clone() else {
            return;
        };
        let mut views = mesh.node.watch();
        let mut asked: std::collections::HashMap<(String, u64), std::time::Instant> =
            Default::default();
        loop {
            let view = views.borrow_and_update().clone();
            for member in view.members.iter().filter(|m| m.node_id != view.self_id) {
                let Some(head) = member.purge_head else {
                    continue;
                };
                if lock(&self.purges).contains(head) {
                    continue;
                }
                let key = (member.node_id.clone(), head);
                if asked
                    .get(&key)
                    .is_some_and(|at| at.elapsed() < PURGE_ASK_AGAIN)
                {
                    continue;
                }
                asked.insert(key, std::time::Instant::now());
                let _ = self.catch_up_from(&mesh, member).await;
            }
            asked.retain(|_, at| at.elapsed() < PURGE_ASK_AGAIN);
            if views.changed().await.is_err() {
                return;
            }
        }
    }

    /// Checks an inter-cache (or operator) request's token.
    #[allow(clippy::result_large_err)]
    fn authorize<B>(&self, request: &Request<B>) -> Result<String, Response<Body>> {
        let Some(mesh) = &self.mesh else {
            return Err(text_response(
                StatusCode::NOT_FOUND,
                "this cache is not part of a mesh (no cluster secret)\n",
            ));
        };
        let path_and_query = request
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let node = mesh
            .authenticate(
                request.headers().get(shoal_core::auth::AUTH_HEADER),
                request.method().as_str(),
                path_and_query,
            )
            .map_err(|error| {
                self.stats.auth_failures.fetch_add(1, Ordering::Relaxed);
                text_response(StatusCode::FORBIDDEN, &format!("forbidden: {error}\n"))
            })?;
        if mesh.misdirected(request.uri().query()) {
            return Err(text_response(
                StatusCode::MISDIRECTED_REQUEST,
                "this request was signed for another cache\n",
            ));
        }
        Ok(node)
    }

    /// Checks an operator request (set-egress, warm, purge): a valid token,
    /// and a nonce never seen while such a token could verify, so a
    /// captured request cannot be sent again.
    #[allow(clippy::result_large_err)]
    fn authorize_operator<B>(&self, request: &Request<B>) -> Result<String, Response<Body>> {
        let node = self.authorize(request)?;
        // Addressed to this cache by name (`authorize` refused another's),
        // so a request captured on its way to one cache does nothing at
        // the others.
        let addressed = request
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|kv| kv.starts_with("to=")));
        if !addressed {
            self.stats.auth_failures.fetch_add(1, Ordering::Relaxed);
            return Err(text_response(
                StatusCode::FORBIDDEN,
                "forbidden: an operator request must name its cache (`to=<node id>` in its signed query)\n",
            ));
        }
        let ttl_max_s = self.mesh.as_ref().map_or(0, |m| m.auth_ttl_max_s());
        let now = crate::resolve::now_unix_s();
        let admitted = self
            .replays
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .admit(
                shoal_core::auth::nonce_of(request.uri().query()),
                // (+1: a token expiring this second still verifies.)
                now.saturating_add(ttl_max_s).saturating_add(1),
                now,
            );
        match admitted {
            Ok(()) => Ok(node),
            Err(refusal) => {
                self.stats.auth_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%node, "operator request refused: {refusal}");
                let status = match refusal {
                    shoal_core::auth::ReplayError::Full => StatusCode::SERVICE_UNAVAILABLE,
                    _ => StatusCode::FORBIDDEN,
                };
                Err(text_response(status, &format!("forbidden: {refusal}\n")))
            }
        }
    }

    /// The inter-cache endpoints (see [`crate::peer`]): 403 without a
    /// valid token, whatever the path.
    async fn peer<B>(self: &Arc<Self>, request: &Request<B>) -> Response<Body> {
        let requester = match self.authorize(request) {
            Ok(node) => node,
            Err(response) => return response,
        };
        self.stats
            .peer_requests_served
            .fetch_add(1, Ordering::Relaxed);
        let raw_path = request.uri().path();
        if raw_path == crate::peer::PEER_PURGE_PATH {
            return self.peer_purge(request).await;
        }
        if raw_path == crate::peer::PEER_PURGES_PATH {
            return self.peer_purges_since(request);
        }
        if let Some(rest) = raw_path.strip_prefix(PEER_OBJECT_PREFIX) {
            return self.peer_object(rest, request).await;
        }
        if let Some(hex) = raw_path.strip_prefix(PEER_PIECES_PREFIX) {
            return self.peer_pieces(hex);
        }
        if let Some(rest) = raw_path.strip_prefix(PEER_DATA_PREFIX) {
            return self.peer_data(rest, request, &requester).await;
        }
        text_response(StatusCode::NOT_FOUND, "unknown peer endpoint\n")
    }

    /// `/_shoal/peer/purge?…`: a sibling passes on a purge event.
    async fn peer_purge<B>(self: &Arc<Self>, request: &Request<B>) -> Response<Body> {
        let query = request.uri().query().unwrap_or("");
        match crate::purge::PurgeEvent::from_query(query) {
            Ok(event) => {
                let paths = self.apply_purge(&event).await;
                json_response(&serde_json::json!({ "paths_purged": paths }))
            }
            Err(error) => text_response(
                StatusCode::BAD_REQUEST,
                &format!("bad purge event: {error}\n"),
            ),
        }
    }

    /// `GET /_shoal/peer/purges?since=N`: the purge events after `N`, for
    /// a sibling catching up.
    fn peer_purges_since<B>(&self, request: &Request<B>) -> Response<Body> {
        let since = request
            .uri()
            .query()
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("since=")))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        let log = lock(&self.purges);
        compact_json_response(&crate::purge::PurgesSince {
            events: log.since(since, crate::purge::PURGE_LOG_EVENTS_MAX),
            trimmed_before_ms: log.trimmed_before_ms(),
        })
    }

    /// `GET /_shoal/peer/object/<path>`: what the path is. `have`: only
    /// what is known here (a sibling after our hashes); otherwise we act
    /// as the path's shield. `record` (a selector): as shield, but only
    /// the record, not the piece hashes.
    async fn peer_object<B>(self: &Arc<Self>, rest: &str, request: &Request<B>) -> Response<Body> {
        let path = match RequestPath::parse(&format!("/{rest}")) {
            Ok(path) => path,
            Err(error) => {
                return text_response(StatusCode::BAD_REQUEST, &format!("bad path: {error}\n"))
            }
        };
        let mode = request.headers().get(MODE_HEADER).map(|v| v.as_bytes());
        if mode == Some(RECORD_MODE.as_bytes()) {
            return match self.resolver.record_for_selector(&path).await {
                Ok(Some(record)) => compact_json_response(&PeerObject::Cached {
                    record,
                    manifest_b64: None,
                    hashes_hex: Vec::new(),
                }),
                Ok(None) => compact_json_response(&PeerObject::PassThrough),
                Err(error) => blamed(error.client_status(), &error),
            };
        }
        let local_only = mode.and_then(PeerMode::parse) == Some(PeerMode::Have);
        match self.resolver.describe_for_peer(&path, local_only).await {
            Ok(answer) => compact_json_response(&answer),
            Err(error) => blamed(error.client_status(), &error),
        }
    }

    /// `GET /_shoal/peer/pieces/<id>`: the pieces of an object stored here.
    fn peer_pieces(&self, hex: &str) -> Response<Body> {
        let Some(id) = ObjectId::from_hex(hex) else {
            return text_response(StatusCode::BAD_REQUEST, "bad object id\n");
        };
        let held = self.filler.store().held_pieces(&id);
        let Some(last) = held.iter().map(|i| i.0).max() else {
            return text_response(StatusCode::NOT_FOUND, "no pieces of this object here\n");
        };
        let mut set = PieceSet::new(last + 1);
        for index in held {
            set.insert(index);
        }
        Response::builder()
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(header::CACHE_CONTROL, "no-store")
            .body(shoal_server::full(Bytes::from(set.encode())))
            .unwrap_or_else(|_| internal_error())
    }

    /// `GET /_shoal/peer/data/<id><path>` with a range: pieces for a
    /// sibling, in the mode it asks (`have`, `fill` or `relay`).
    async fn peer_data<B>(
        self: &Arc<Self>,
        rest: &str,
        request: &Request<B>,
        requester: &str,
    ) -> Response<Body> {
        let (Some(hex), Some(object_path)) = (rest.get(..64), rest.get(64..)) else {
            return text_response(StatusCode::BAD_REQUEST, "expected <id hex>/<path>\n");
        };
        let Some(id) = ObjectId::from_hex(hex) else {
            return text_response(StatusCode::BAD_REQUEST, "bad object id\n");
        };
        let mode = request
            .headers()
            .get(MODE_HEADER)
            .and_then(|v| PeerMode::parse(v.as_bytes()));
        match mode {
            Some(PeerMode::Fill) => {
                self.peer_fill(id, object_path, request, requester, Audience::Peer)
                    .await
            }
            Some(PeerMode::Relay) => {
                self.peer_fill(id, object_path, request, requester, Audience::Relay)
                    .await
            }
            Some(PeerMode::Have) => self.peer_have(id, object_path, request).await,
            None => text_response(
                StatusCode::BAD_REQUEST,
                "x-shoal-mode must be `have`, `fill` or `relay`\n",
            ),
        }
    }

    /// Serves a range of `id` as its shield (`fill`), or as a relay
    /// (`relay`: what is missing comes from our shield, as last resort):
    /// what is missing is fetched. A shield in a flash crowd may answer 503
    /// naming the cache to ask instead.
    async fn peer_fill<B>(
        self: &Arc<Self>,
        id: ObjectId,
        object_path: &str,
        request: &Request<B>,
        requester: &str,
        audience: Audience,
    ) -> Response<Body> {
        let entry = match self.parse_and_resolve(object_path).await {
            Ok((_, Resolved::Cached(entry))) if entry.id == id => entry,
            Ok(_) => {
                return text_response(
                    StatusCode::CONFLICT,
                    "this cache serves another version of that path\n",
                )
            }
            Err(response) => return response,
        };
        // Relays given up here (our shield failed): the requester asks its
        // own shields rather than wait on our fallback.
        if audience == Audience::Relay && entry.relays_off(crate::fill::RELAYS_OFF_MS) {
            return text_response(
                StatusCode::LOOP_DETECTED,
                "this cache gave up relaying this object: its shield failed\n",
            );
        }
        // Pieces we are fetching from the requester itself: serving them
        // would wait on the requester (a cycle, after a shield failed).
        let range_header = request.headers().get(header::RANGE).map(|v| v.as_bytes());
        if let RangeResolution::Single(span) =
            select_ranges(range_header, true, entry.layout.object_size())
        {
            if let Some(pieces) = entry.layout.pieces_covering(span) {
                if self.filler.fed_by(&entry.id, pieces, requester) {
                    return text_response(
                        StatusCode::LOOP_DETECTED,
                        "this cache is fetching those pieces from you\n",
                    );
                }
            }
        }
        let mut promised = None;
        if audience == Audience::Peer {
            match self.admit_fill(&entry, request, requester) {
                Ok(admitted) => promised = admitted,
                Err(response) => return response,
            }
        }
        self.serve_entry(entry, false, request, audience, promised)
            .await
    }

    /// As shield, during a flash crowd: serve this `fill` request, or send
    /// the requester to a relay (the pure [`crate::schedule::RelayDesk`]
    /// decides).
    #[allow(clippy::result_large_err)]
    fn admit_fill<B>(
        self: &Arc<Self>,
        entry: &Arc<ObjectEntry>,
        request: &Request<B>,
        requester: &str,
    ) -> Result<Option<PromisedBytes>, Response<Body>> {
        let Some(mesh) = &self.mesh else {
            return Ok(None);
        };
        let size = entry.layout.object_size();
        let range_header = request.headers().get(header::RANGE).map(|v| v.as_bytes());
        let (span, span_bytes) = match select_ranges(range_header, true, size) {
            RangeResolution::Single(span) => (Some(span), span.len()),
            _ => (None, size),
        };
        let headers = FillHeaders::parse(request)?;
        let admission =
            span.and_then(|span| self.consult_desk(mesh, entry, requester, span, headers));
        // Only the desk may take a switch (it checks that the pieces are
        // here and that this shield is sooner): one it did not consider is
        // declined.
        let admission = match admission {
            None if headers.switch_from_eta_ms.is_some() => Some(crate::schedule::Admission::Stay),
            other => other,
        };
        match admission {
            Some(crate::schedule::Admission::Stay) => {
                self.stats.switches_declined.fetch_add(1, Ordering::Relaxed);
                let mut response = text_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not sooner than the source you have: keep it\n",
                );
                response
                    .headers_mut()
                    .insert(crate::peer::STAY_HEADER, HeaderValue::from_static("1"));
                return Err(response);
            }
            Some(crate::schedule::Admission::TryInstead(relay)) => {
                self.stats
                    .relay_refusals_sent
                    .fetch_add(1, Ordering::Relaxed);
                let mut response = text_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("flash crowd: ask {relay} to relay this block\n"),
                );
                if let Ok(value) = HeaderValue::from_str(&relay) {
                    response
                        .headers_mut()
                        .insert(crate::peer::TRY_HEADER, value);
                }
                return Err(response);
            }
            Some(crate::schedule::Admission::Serve) | None => {}
        }
        self.relays
            .promised_bytes
            .fetch_add(span_bytes, Ordering::Relaxed);
        Ok(Some(PromisedBytes {
            service: self.clone(),
            bytes: span_bytes,
        }))
    }

    /// Asks the relay desk about a `fill` request for `span`, with what
    /// this shield's uplink has queued and the mesh's relays. `None`: the
    /// desk is not consulted (this is not the path's first shield, or the
    /// requester is not in our view) and the request is served.
    fn consult_desk(
        &self,
        mesh: &MeshLink,
        entry: &ObjectEntry,
        requester: &str,
        span: ByteSpan,
        headers: FillHeaders,
    ) -> Option<crate::schedule::Admission> {
        let first = entry.layout.piece_of(span.start())?.0;
        let span_bytes = span.len();
        let view = mesh.node.view();
        // Only the path's first shield sends requesters to relays; a cache
        // asked because the shields above it failed serves (its own fills
        // go up the ranking, which cannot loop).
        let first_shield = !view
            .shields_above_self(&shoal_mesh::shield_key(&entry.path))
            .iter()
            .any(|m| mesh.usable(&m.node_id));
        // Only members of our view are counted by the desk (its state is
        // bounded by the mesh).
        let region = view.member(requester)?.region.clone();
        if !first_shield {
            return None;
        }
        let cap_bytes_per_s = self.egress.get().map_or(0, |e| e.bytes_per_s());
        // What the uplink has to send before this response is through:
        // what it promised to siblings, this response, and as much again
        // for each client response it is sending (they share the uplink).
        let clients = self.relays.client_bodies.load(Ordering::Relaxed);
        let queued = self
            .relays
            .promised_bytes
            .load(Ordering::Relaxed)
            .saturating_add(span_bytes.saturating_mul(clients.saturating_add(1)));
        let shield_has_uplink = cap_bytes_per_s > 0
            && queued <= cap_bytes_per_s.saturating_mul(DIRECT_HORIZON_MS) / 1000;
        // Caches that may relay: healthy, answering, not us; those of the
        // requester's region first.
        let (near, far): (Vec<&shoal_mesh::Member>, Vec<&shoal_mesh::Member>) = view
            .members
            .iter()
            .filter(|m| {
                m.node_id != view.self_id
                    && m.health == shoal_mesh::Health::Ok
                    && mesh.usable(&m.node_id)
            })
            .partition(|m| m.region == region);
        let relays: Vec<&str> = near.iter().map(|m| m.node_id.as_str()).collect();
        let far_relays: Vec<&str> = far.iter().map(|m| m.node_id.as_str()).collect();
        // Uplinks relative to the thinnest capped one (uncapped: 8).
        let caps: std::collections::HashMap<&str, u64> = near
            .iter()
            .chain(far.iter())
            .map(|m| (m.node_id.as_str(), m.egress_cap_bps))
            .collect();
        let thinnest = caps.values().copied().filter(|c| *c > 0).min().unwrap_or(1);
        let uplink_weight = |node: &str| match caps.get(node).copied() {
            Some(0) | None => 8,
            Some(cap) => (cap / thinnest.max(1)).clamp(1, 8),
        };
        let limits = crate::schedule::FillLimits::for_piece_size(
            entry.layout.piece_size().bytes(),
            crate::fill::RELAY_BLOCK_BYTES,
            crate::fill::RELAY_BLOCK_BYTES,
            crate::fill::SHIELD_FANOUT_MAX,
        );
        let ask = crate::schedule::RelayAsk {
            object: &entry.id,
            first,
            requester,
            last_resort: headers.last_resort,
            relays: &relays,
            far_relays: &far_relays,
            uplink_weight: &uplink_weight,
            shield_has_uplink,
            shield_eta_ms: (cap_bytes_per_s > 0)
                .then(|| queued.saturating_mul(1000) / cap_bytes_per_s),
            uplink_bytes_per_s: &|node: &str| caps.get(node).copied().unwrap_or(0) / 8,
            block_bytes: span_bytes.min(crate::fill::RELAY_BLOCK_BYTES),
            switch_from_eta_ms: headers.switch_from_eta_ms,
            held_here: headers.switch_from_eta_ms.is_some() && self.holds_span(entry, span),
        };
        let now_ms = self
            .relays
            .started
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_millis() as u64;
        let admission = lock(&self.relays.desk).admit(&ask, &limits, now_ms);
        tracing::debug!(node = mesh.self_id(), %requester, first, last_resort = headers.last_resort, ?admission, "fill request");
        Some(admission)
    }

    /// Serves a range of `id` only from pieces held here.
    async fn peer_have<B>(
        self: &Arc<Self>,
        id: ObjectId,
        object_path: &str,
        request: &Request<B>,
    ) -> Response<Body> {
        let entry = match RequestPath::parse(object_path) {
            Ok(path) => self.resolver.local_entry(&path),
            Err(error) => {
                return text_response(StatusCode::BAD_REQUEST, &format!("bad path: {error}\n"))
            }
        };
        let entry = entry.filter(|e| e.id == id).or_else(|| {
            let path = RequestPath::parse(object_path).ok()?;
            self.resolver.retired(&path, id)
        });
        let Some(entry) = entry else {
            return text_response(StatusCode::NOT_FOUND, "this object is not held here\n");
        };
        let size = entry.layout.object_size();
        let range_header = request.headers().get(header::RANGE).map(|v| v.as_bytes());
        let RangeResolution::Single(span) = select_ranges(range_header, true, size) else {
            return text_response(
                StatusCode::BAD_REQUEST,
                "one satisfiable range is required\n",
            );
        };
        let Some(pieces) = entry.layout.pieces_covering(span) else {
            return text_response(StatusCode::BAD_REQUEST, "empty range\n");
        };
        let store = self.filler.store();
        let first_key = shoal_store::PieceKey {
            object: id,
            index: PieceIndex(*pieces.start()),
        };
        let first = match store.get(first_key).await {
            Ok(Some(piece)) => piece,
            _ => return text_response(StatusCode::NOT_FOUND, "piece not held here\n"),
        };
        let Ok(content_range) = shoal_http::content_range::format_content_range(span, size) else {
            return internal_error();
        };
        let (sender, body) = shoal_server::channel_body(BODY_CHUNKS_MAX);
        let service = self.clone();
        tokio::spawn(async move {
            let mut first = Some(first);
            for index in pieces {
                let piece = match first.take() {
                    Some(piece) => piece,
                    None => {
                        let key = shoal_store::PieceKey {
                            object: id,
                            index: PieceIndex(index),
                        };
                        match service.filler.store().get(key).await {
                            Ok(Some(piece)) => piece,
                            // Evicted meanwhile: cut the body; the peer
                            // fetches the rest elsewhere.
                            _ => {
                                let _ = sender
                                    .send(Err(std::io::Error::other("piece no longer held")))
                                    .await;
                                return;
                            }
                        }
                    }
                };
                let Some(bytes) = part_in_span(&entry, &piece, span) else {
                    continue;
                };
                let len = bytes.len() as u64;
                if sender.send(Ok(bytes)).await.is_err() {
                    return;
                }
                service
                    .stats
                    .peer_bytes_served
                    .fetch_add(len, Ordering::Relaxed);
            }
        });
        Response::builder()
            .status(StatusCode::PARTIAL_CONTENT)
            .header(header::CONTENT_RANGE, content_range)
            .header(header::CONTENT_LENGTH, span.len())
            .header(OBJECT_ID_HEADER, id.to_hex())
            .body(body)
            .unwrap_or_else(|_| internal_error())
    }

    /// The path (400 if malformed) and what to do with it (the origin's
    /// failure as 502/504/404).
    async fn parse_and_resolve(
        &self,
        raw_path: &str,
    ) -> Result<(RequestPath, Resolved), Response<Body>> {
        self.parse_and_resolve_as(raw_path, false).await
    }

    /// [`Self::parse_and_resolve`]; with `pass_refusals`, a 4xx from the
    /// origin (a path it does not have, or refuses) resolves to a pass
    /// through, so a client gets the origin's own answer and body.
    async fn parse_and_resolve_as(
        &self,
        raw_path: &str,
        pass_refusals: bool,
    ) -> Result<(RequestPath, Resolved), Response<Body>> {
        let path = RequestPath::parse(raw_path).map_err(|error| {
            text_response(StatusCode::BAD_REQUEST, &format!("bad path: {error}\n"))
        })?;
        match self.resolver.resolve(&path).await {
            Ok(resolved) => Ok((path, resolved)),
            Err(error) if pass_refusals && error.origin_answered().is_some() => {
                Ok((path, Resolved::PassThrough))
            }
            Err(error) => {
                let status = error.client_status();
                if status.is_server_error() {
                    tracing::warn!(path = %path.as_str(), error = %shoal_proto::Chain(&error), fault = error.fault().as_str(), retryable = error.retryable(), "could not resolve object");
                }
                Err(blamed(status, &error))
            }
        }
    }

    /// [`Self::parse_and_resolve`] for a request that may be pinned to
    /// one version: when the version known here is another, someone (a
    /// selector, from the shield) knows a newer one, so the path is
    /// resolved again now (rate-limited per path). Still another version:
    /// 409, never a different version's bytes.
    async fn parse_and_resolve_pinned(
        &self,
        raw_path: &str,
        pin: Option<ObjectId>,
        pass_refusals: bool,
    ) -> Result<(RequestPath, Resolved), Response<Body>> {
        let (path, resolved) = self
            .parse_and_resolve_as(raw_path, pass_refusals && pin.is_none())
            .await?;
        let Some(pin) = pin else {
            return Ok((path, resolved));
        };
        let matches = |r: &Resolved| matches!(r, Resolved::Cached(e) if e.id == pin);
        if matches(&resolved) {
            return Ok((path, resolved));
        }
        // A download that began before the version changed finishes with
        // the version it began with.
        if let Some(old) = self.resolver.retired(&path, pin) {
            return Ok((path, Resolved::Cached(old)));
        }
        let resolved = match self.resolver.resolve_for_pin(&path, pin).await {
            Ok(resolved) => resolved,
            Err(error) => {
                let status = error.client_status();
                return Err(blamed(status, &error));
            }
        };
        if matches(&resolved) {
            return Ok((path, resolved));
        }
        self.stats.pin_refusals.fetch_add(1, Ordering::Relaxed);
        let current = match &resolved {
            Resolved::Cached(entry) => Some(entry.id),
            Resolved::PassThrough => None,
        };
        let mut response = text_response(
            StatusCode::CONFLICT,
            &format!(
                "{}: this request is pinned to version {} but this cache serves {}; ask the selector again\n",
                path.as_str(),
                &pin.to_hex()[..16],
                current.map_or("no stored version (the origin forbids storing it)".to_string(), |id| format!("version {}", &id.to_hex()[..16])),
            ),
        );
        if let Some(id) = current.and_then(|id| HeaderValue::from_str(&id.to_hex()).ok()) {
            response.headers_mut().insert(OBJECT_ID_HEADER, id);
        }
        Err(response)
    }

    async fn serve_entry<B>(
        self: &Arc<Self>,
        entry: Arc<ObjectEntry>,
        head_only: bool,
        request: &Request<B>,
        audience: Audience,
        promised: Option<PromisedBytes>,
    ) -> Response<Body> {
        let range_allowed = match self.check_preconditions(&entry, request) {
            Ok(range_allowed) => range_allowed,
            Err(response) => return response,
        };
        let (builder, segments, content_length) =
            match self.shape_response(&entry, request, range_allowed) {
                Ok(shaped) => shaped,
                Err(response) => return response,
            };
        if let Some(refusal) = refuse_known_bad_pieces(&entry, &segments) {
            return refusal;
        }
        // Whether the response begins from the store: what an operator's
        // logs and a client's debugging want to see (HEAD included).
        let held_at_start = self.held_pieces(&entry, &segments);
        let first_piece = segments.iter().find_map(|s| match s {
            Segment::Data(span) => entry.layout.piece_of(span.start()),
            Segment::Literal(_) => None,
        });
        let cache_status = match first_piece {
            Some(index) if !held_at_start.contains(index) => "MISS",
            _ => "HIT",
        };
        let builder = builder.header(CACHE_STATUS_HEADER, cache_status);
        if head_only || content_length == 0 {
            return builder
                .body(shoal_server::empty())
                .unwrap_or_else(|_| internal_error());
        }
        // A relay response ends when this cache gives up relays (its
        // shield failed): the requester then asks its own shields.
        let mut relay_epoch = (audience == Audience::Relay).then(|| entry.relay_epoch());
        // Fetch the first piece before committing to a status, so that an
        // origin failure is reported as such.
        let first = match first_piece {
            Some(index) => {
                let want = relay_want(&entry, &segments, audience);
                match self
                    .first_piece(&entry, index, want, audience, relay_epoch.as_mut())
                    .await
                {
                    Ok(piece) => Some(piece),
                    Err(response) => return response,
                }
            }
            None => None,
        };
        let (sender, body) = shoal_server::channel_body(BODY_CHUNKS_MAX);
        let service = self.clone();
        let client_body = (audience == Audience::Client).then(|| ClientBody::start(self));
        tokio::spawn(async move {
            service
                .stream_body(
                    entry,
                    segments,
                    first,
                    held_at_start,
                    sender,
                    audience,
                    relay_epoch,
                )
                .await;
            drop(promised);
            drop(client_body);
        });
        builder.body(body).unwrap_or_else(|_| internal_error())
    }

    /// Evaluates the request's conditional headers against the version
    /// (RFC 9110 §13.2.2): `Ok(range_allowed)` to go on, or the `304` /
    /// `412` to answer.
    #[allow(clippy::result_large_err)]
    fn check_preconditions<B>(
        &self,
        entry: &ObjectEntry,
        request: &Request<B>,
    ) -> Result<bool, Response<Body>> {
        let validators = EntityValidators {
            etag: shoal_http::conditional::EntityTag::parse(entry.etag.as_bytes()).ok(),
            last_modified_unix_s: entry
                .record
                .origin_last_modified
                .as_deref()
                .and_then(|t| httpdate::parse_http_date(t).ok())
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs()),
        };
        let conditional = ConditionalHeaders::from_headers(request.headers());
        // A client may hold the version's id-based tag from before its
        // origin tag became strong: that names the same bytes.
        let id_tag_matches = request
            .headers()
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|tag| tag.trim().trim_start_matches("W/"))
            .any(|tag| tag == id_etag(entry));
        let precondition = match evaluate_preconditions(true, &conditional, &validators) {
            Precondition::Proceed { .. } if id_tag_matches => Precondition::NotModified,
            other => other,
        };
        match precondition {
            Precondition::NotModified => {
                let mut response = Response::builder().status(StatusCode::NOT_MODIFIED);
                for (name, value) in self.entity_headers(entry) {
                    if name != header::CONTENT_TYPE {
                        response = response.header(name, value);
                    }
                }
                Err(response
                    .body(shoal_server::empty())
                    .unwrap_or_else(|_| internal_error()))
            }
            Precondition::Failed => Err(text_response(
                StatusCode::PRECONDITION_FAILED,
                "precondition failed\n",
            )),
            Precondition::Proceed { range_allowed } => Ok(range_allowed),
        }
    }

    /// The response's status and headers, the segments of its body and
    /// its length, from the request's `Range` (or the `416` to answer).
    #[allow(clippy::result_large_err)]
    fn shape_response<B>(
        &self,
        entry: &ObjectEntry,
        request: &Request<B>,
        range_allowed: bool,
    ) -> Result<(http::response::Builder, Vec<Segment>, u64), Response<Body>> {
        let size = entry.layout.object_size();
        // RFC 9110 §14.2: a Range on a HEAD is ignored.
        let range_allowed = range_allowed && request.method() != Method::HEAD;
        let range_header = request.headers().get(header::RANGE).map(|v| v.as_bytes());
        let resolution = select_ranges(range_header, range_allowed, size);
        let multipart = matches!(resolution, RangeResolution::Multi(_));
        let mut builder = Response::builder();
        for (name, value) in self.entity_headers(entry) {
            // A multipart response's own type replaces the object's.
            if !(multipart && name == header::CONTENT_TYPE) {
                builder = builder.header(name, value);
            }
        }
        builder = builder
            .header(header::ACCEPT_RANGES, "bytes")
            .header(OBJECT_ID_HEADER, entry.id.to_hex());
        let (status, segments, content_length) = match resolution {
            RangeResolution::Full => (StatusCode::OK, data_segments(ByteSpan::new(0, size)), size),
            RangeResolution::Single(span) => {
                let Ok(content_range) = shoal_http::content_range::format_content_range(span, size)
                else {
                    return Err(internal_error());
                };
                builder = builder.header(header::CONTENT_RANGE, content_range);
                (
                    StatusCode::PARTIAL_CONTENT,
                    vec![Segment::Data(span)],
                    span.len(),
                )
            }
            RangeResolution::Multi(spans) => {
                let seed =
                    u64::from_be_bytes(entry.id.0[..8].try_into().unwrap_or_default()) ^ size;
                let boundary = shoal_http::multipart::boundary_from_seed(seed);
                let Ok(plan) = MultipartPlan::new(
                    &spans,
                    size,
                    entry.record.content_type.as_deref(),
                    &boundary,
                ) else {
                    return Err(internal_error());
                };
                // The parts carry the object's type; the response is multipart.
                builder = builder.header(header::CONTENT_TYPE, plan.content_type_header.clone());
                (StatusCode::PARTIAL_CONTENT, plan.parts, plan.content_length)
            }
            RangeResolution::Unsatisfiable => {
                let mut response =
                    text_response(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable\n");
                if let Ok(v) =
                    HeaderValue::from_str(&shoal_http::content_range::format_unsatisfied(size))
                {
                    response.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                return Err(response);
            }
        };
        let builder = builder
            .status(status)
            .header(header::CONTENT_LENGTH, content_length);
        Ok((builder, segments, content_length))
    }

    /// The response's first piece, or the error response to answer
    /// instead (before any header is committed).
    async fn first_piece(
        &self,
        entry: &Arc<ObjectEntry>,
        index: PieceIndex,
        want: crate::fill::Want,
        audience: Audience,
        relay_epoch: Option<&mut tokio::sync::watch::Receiver<u64>>,
    ) -> Result<VerifiedPiece, Response<Body>> {
        match relay_wait(self.filler.piece_for(entry, index, want), relay_epoch).await {
            Ok(piece) => Ok(piece),
            // A relay given up is not this cache failing: 508 keeps the
            // requester from suspecting us (it asks its shields).
            Err(error)
                if audience == Audience::Relay && entry.relays_off(crate::fill::RELAYS_OFF_MS) =>
            {
                Err(text_response(
                    StatusCode::LOOP_DETECTED,
                    &format!("{}\n", shoal_proto::Chain(&error)),
                ))
            }
            Err(error) => {
                let status = error.client_status();
                Err(blamed(status, &error))
            }
        }
    }

    /// Resolves the path of `entry` again (after the origin showed its
    /// version changed), so that `entry` is retired with a successor.
    async fn re_resolve(&self, entry: &ObjectEntry) {
        let Ok(path) = RequestPath::parse(&entry.uri_path) else {
            return;
        };
        if let Err(error) = self.resolver.resolve(&path).await {
            tracing::debug!(path = %entry.path, error = %shoal_proto::Chain(&error), "could not resolve the path again");
        }
    }

    /// This cache stores every piece `span` touches now (false for a span
    /// outside the object).
    fn holds_span(&self, entry: &ObjectEntry, span: ByteSpan) -> bool {
        let store = self.filler.store();
        let Some(pieces) = entry.layout.pieces_covering(span) else {
            return false;
        };
        pieces.into_iter().all(|index| {
            store.contains(&shoal_store::PieceKey {
                object: entry.id,
                index: PieceIndex(index),
            })
        })
    }

    /// Which of the pieces `segments` need are held now.
    fn held_pieces(&self, entry: &ObjectEntry, segments: &[Segment]) -> PieceSet {
        let mut held = PieceSet::new(entry.layout.piece_count());
        let store = self.filler.store();
        for segment in segments {
            let Segment::Data(span) = segment else {
                continue;
            };
            for index in entry.layout.pieces_covering(*span).into_iter().flatten() {
                let key = shoal_store::PieceKey {
                    object: entry.id,
                    index: PieceIndex(index),
                };
                if store.contains(&key) {
                    held.insert(PieceIndex(index));
                }
            }
        }
        held
    }

    // The response's parts, each used once; a struct would only rename them.
    #[allow(clippy::too_many_arguments)]
    async fn stream_body(
        self: Arc<Self>,
        entry: Arc<ObjectEntry>,
        segments: Vec<Segment>,
        mut first: Option<VerifiedPiece>,
        held_at_start: PieceSet,
        sender: shoal_server::BodySender,
        audience: Audience,
        mut relay_epoch: Option<tokio::sync::watch::Receiver<u64>>,
    ) {
        let piece_bytes = entry.layout.piece_size().bytes();
        let readahead_pieces = (self.readahead_bytes / piece_bytes).max(1) as u32;
        let want = relay_want(&entry, &segments, audience);
        for segment in segments {
            let span = match segment {
                Segment::Literal(bytes) => {
                    if sender.send(Ok(bytes)).await.is_err() {
                        return;
                    }
                    continue;
                }
                Segment::Data(span) => span,
            };
            let Some(pieces) = entry.layout.pieces_covering(span) else {
                continue;
            };
            let last_needed = *pieces.end();
            for index in pieces {
                for ahead in index.saturating_add(1)
                    ..=index.saturating_add(readahead_pieces).min(last_needed)
                {
                    self.filler.prefetch(&entry, PieceIndex(ahead), want);
                }
                let got = match first.take() {
                    Some(piece) if piece.index() == PieceIndex(index) => Ok(piece),
                    _ => {
                        relay_wait(
                            self.filler.piece_for(&entry, PieceIndex(index), want),
                            relay_epoch.as_mut(),
                        )
                        .await
                    }
                };
                let got = match got {
                    // The origin moved to another version mid-response:
                    // once the path is resolved again, this version is
                    // retired and what it shares with the new one comes
                    // through it.
                    Err(FillError::VersionChanged) => {
                        self.re_resolve(&entry).await;
                        self.filler.piece(&entry, PieceIndex(index)).await
                    }
                    got => got,
                };
                let piece = match got {
                    Ok(piece) => piece,
                    Err(error) => {
                        tracing::warn!(path = %entry.path, error = %shoal_proto::Chain(&error), fault = error.fault().as_str(), "aborting response body");
                        let _ = sender
                            .send(Err(std::io::Error::other(error.to_string())))
                            .await;
                        return;
                    }
                };
                let Some(bytes) = part_in_span(&entry, &piece, span) else {
                    continue;
                };
                let len = bytes.len() as u64;
                if sender.send(Ok(bytes)).await.is_err() {
                    return;
                }
                if audience != Audience::Client {
                    self.stats
                        .peer_bytes_served
                        .fetch_add(len, Ordering::Relaxed);
                    continue;
                }
                self.stats.bytes_served.fetch_add(len, Ordering::Relaxed);
                // Read-ahead stores pieces before the reader gets there:
                // only what was held when the response began is a hit.
                if held_at_start.contains(PieceIndex(index)) {
                    self.stats
                        .bytes_served_from_store
                        .fetch_add(len, Ordering::Relaxed);
                } else {
                    self.stats
                        .bytes_served_filled
                        .fetch_add(len, Ordering::Relaxed);
                }
            }
        }
    }

    fn entity_headers(&self, entry: &ObjectEntry) -> Vec<(header::HeaderName, HeaderValue)> {
        let mut headers = Vec::new();
        if let Ok(v) = HeaderValue::from_str(&entry.etag) {
            headers.push((header::ETAG, v));
        }
        let optional = [
            (header::LAST_MODIFIED, &entry.record.origin_last_modified),
            (header::CONTENT_TYPE, &entry.record.content_type),
            (header::CACHE_CONTROL, &entry.record.cache_control),
        ];
        for (name, value) in optional {
            if let Some(v) = value.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
                headers.push((name, v));
            }
        }
        for (name, value) in &entry.record.headers {
            if let (Ok(name), Ok(value)) = (
                header::HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                headers.push((name, value));
            }
        }
        headers.push((
            header::VIA,
            // This hop (the origin spoke HTTP/1.1 to the mesh).
            HeaderValue::from_static("1.1 shoal"),
        ));
        if entry.record.validated_unix_s > 0 {
            // `Date` is when the origin last vouched for this version, and
            // `Age` how long ago that was (RFC 9110 §6.6.1, RFC 9111 §5.1).
            let validated = entry.record.validated_unix_s;
            let age_s = shoal_core::now_unix_s().saturating_sub(validated);
            if let Ok(date) =
                HeaderValue::from_str(&shoal_http::date::format_http_date_unix_s(validated))
            {
                headers.push((header::DATE, date));
            }
            headers.push((header::AGE, HeaderValue::from(age_s)));
        }
        headers
    }

    /// The stored object at `raw_path`, or the answer to give instead
    /// (404 for one the origin forbids storing).
    #[allow(clippy::result_large_err)]
    async fn cached_entry(
        &self,
        raw_path: &str,
        pin: Option<ObjectId>,
    ) -> Result<Arc<ObjectEntry>, Response<Body>> {
        match self.parse_and_resolve_pinned(raw_path, pin, false).await {
            Ok((_, Resolved::Cached(entry))) => Ok(entry),
            Ok((_, Resolved::PassThrough)) => Err(text_response(
                StatusCode::NOT_FOUND,
                "this object is not cached (the origin forbids it)\n",
            )),
            Err(response) => Err(response),
        }
    }

    async fn manifest(&self, raw_path: &str, pin: Option<ObjectId>) -> Response<Body> {
        let entry = match self.cached_entry(raw_path, pin).await {
            Ok(entry) => entry,
            Err(response) => return response,
        };
        let manifest = entry.manifest.clone().or_else(|| entry.built_manifest());
        let Some(manifest) = manifest else {
            return text_response(
                StatusCode::NOT_FOUND,
                "no manifest yet: this object was not published and has not been fully ingested\n",
            );
        };
        let kind = if entry.manifest.is_some() {
            "published"
        } else {
            "built"
        };
        Response::builder()
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(OBJECT_ID_HEADER, entry.id.to_hex())
            .header(MANIFEST_KIND_HEADER, kind)
            .header(header::CACHE_CONTROL, "no-cache")
            .body(shoal_server::full(Bytes::from(manifest.encode())))
            .unwrap_or_else(|_| internal_error())
    }

    async fn hashes(&self, raw_path: &str, pin: Option<ObjectId>) -> Response<Body> {
        let entry = match self.cached_entry(raw_path, pin).await {
            Ok(entry) => entry,
            Err(response) => return response,
        };
        let manifest = entry.manifest.clone().or_else(|| entry.built_manifest());
        let hashes_hex: Vec<String> = match &manifest {
            Some(manifest) => manifest.piece_hashes().iter().map(|h| h.to_hex()).collect(),
            None => (0..entry.layout.piece_count())
                .map(|i| {
                    entry
                        .learnt_hash(PieceIndex(i))
                        .map(|h| h.to_hex())
                        .unwrap_or_default()
                })
                .collect(),
        };
        let answer = shoal_proto::HashList {
            id: entry.id.to_hex(),
            size: entry.layout.object_size(),
            piece_size_log2: entry.layout.piece_size().log2(),
            published: entry.manifest.is_some(),
            complete: hashes_hex.iter().all(|h| !h.is_empty()),
            hashes_hex,
        };
        compact_json_response(&answer)
    }

    fn internal(&self, endpoint: &str, query: Option<&str>) -> Response<Body> {
        match endpoint {
            "stats" => json_response(&self.stats_snapshot()),
            "mesh" => match &self.mesh {
                Some(mesh) => {
                    // `?path=/p`: also say which cache is that path's shield.
                    let path = query
                        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("path=")))
                        .and_then(|p| RequestPath::parse(p).ok());
                    json_response(&crate::peer::MeshReport::new(mesh, path.as_ref()))
                }
                None => text_response(StatusCode::NOT_FOUND, "this cache is not part of a mesh\n"),
            },
            // Still serving (through, without storing) while the store
            // cannot write, but an operator must see it.
            "health" => match self.filler.store().write_failure() {
                None => text_response(StatusCode::OK, "ok\n"),
                Some(why) => text_response(
                    StatusCode::OK,
                    &format!("degraded: the store {why}; serving without storing\n"),
                ),
            },
            _ => text_response(StatusCode::NOT_FOUND, "unknown internal endpoint\n"),
        }
    }
}

/// 405 for an operator endpoint asked with another method than POST.
/// Waits for a piece; for a relay response, only until this cache gives up
/// relays (`epoch` changes).
async fn relay_wait(
    fetch: impl std::future::Future<Output = Result<VerifiedPiece, FillError>>,
    epoch: Option<&mut tokio::sync::watch::Receiver<u64>>,
) -> Result<VerifiedPiece, FillError> {
    match epoch {
        Some(epoch) => tokio::select! {
            got = fetch => got,
            _ = epoch.changed() => Err(FillError::Peer {
                node: "(this cache's shield)".into(),
                cause: shoal_proto::reason("relays given up: this cache's shield failed"),
            }),
        },
        None => fetch.await,
    }
}

/// Pieces the origin just sent wrong bytes for: a clean `502` before any
/// header, instead of a body cut at that piece.
fn refuse_known_bad_pieces(entry: &ObjectEntry, segments: &[Segment]) -> Option<Response<Body>> {
    let needed = segments.iter().flat_map(|s| match s {
        Segment::Data(span) => entry.layout.pieces_covering(*span).into_iter().flatten(),
        Segment::Literal(_) => None.into_iter().flatten(),
    });
    let bad =
        entry.known_bad_piece(needed, std::time::Duration::from_millis(BAD_PIECE_RETRY_MS))?;
    Some(text_response(
        StatusCode::BAD_GATEWAY,
        &format!(
            "{}: the origin's bytes for piece {} do not match the published manifest (changed without `shoal publish`, or damaged): not served; publish it again\n",
            entry.path, bad.0
        ),
    ))
}

/// What a response's fills are for: a relay claims only the pieces it was
/// asked for, and fills them from the shield as last resort.
fn relay_want(entry: &ObjectEntry, segments: &[Segment], audience: Audience) -> Want {
    if audience != Audience::Relay {
        return Want::READER;
    }
    let end = segments
        .iter()
        .filter_map(|s| match s {
            Segment::Data(span) => entry.layout.pieces_covering(*span).map(|p| *p.end() + 1),
            Segment::Literal(_) => None,
        })
        .max()
        .unwrap_or(0);
    Want {
        relaying: true,
        end,
    }
}

/// How a stored piece-path version may answer a request now: its
/// lifetime and age run from when the origin last vouched for it, its
/// directives are the origin's (`CDN-Cache-Control` first).
fn piece_path_use(entry: &ObjectEntry, request: &RequestCacheControl, now_unix_s: u64) -> Use {
    let record = &entry.record;
    let lifetime_s = record
        .fresh_until_unix_s
        .saturating_sub(record.validated_unix_s);
    let age_s = now_unix_s.saturating_sub(record.validated_unix_s);
    let mut fields = crate::resolve::record_fields(record);
    if let Some(value) = record
        .cache_control
        .as_deref()
        .and_then(|v| HeaderValue::from_str(v).ok())
    {
        fields.append(header::CACHE_CONTROL, value);
    }
    decide(lifetime_s, age_s, &CacheControl::for_cdn(&fields), request)
}

fn post_only(text: &str) -> Response<Body> {
    let mut response = text_response(StatusCode::METHOD_NOT_ALLOWED, text);
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("POST"));
    response
}

/// `"<first 32 hex digits of the id>"`: the tag a version has when its
/// origin's is not strong.
fn id_etag(entry: &ObjectEntry) -> String {
    format!("\"{}\"", &entry.record.id[..32.min(entry.record.id.len())])
}

/// The version a request is pinned to (`?shoal-object=<id hex>`), if
/// any; a malformed pin is the client's mistake (400).
#[allow(clippy::result_large_err)]
fn pinned_version(query: Option<&str>) -> Result<Option<ObjectId>, Response<Body>> {
    let Some(query) = query else {
        return Ok(None);
    };
    let mut pins = query
        .split('&')
        .filter_map(|pair| pair.strip_prefix(PIN_PARAM)?.strip_prefix('='));
    let Some(hex) = pins.next() else {
        return Ok(None);
    };
    match ObjectId::from_hex(hex) {
        Some(id) if pins.next().is_none() => Ok(Some(id)),
        _ => Err(text_response(
            StatusCode::BAD_REQUEST,
            &format!("`{PIN_PARAM}` must appear once, as 64 hex digits (an object id)\n"),
        )),
    }
}

/// The bytes of `piece` that fall in `span` (None if none do).
fn part_in_span(entry: &ObjectEntry, piece: &VerifiedPiece, span: ByteSpan) -> Option<Bytes> {
    let piece_span = entry.layout.piece_span(piece.index())?;
    let wanted = piece_span.intersect(&span)?;
    let from = (wanted.start() - piece_span.start()) as usize;
    let to = (wanted.end() - piece_span.start()) as usize;
    Some(piece.data().slice(from..to))
}

fn data_segments(span: Option<ByteSpan>) -> Vec<Segment> {
    span.map(Segment::Data).into_iter().collect()
}

/// JSON without whitespace (answers to machines, some large).
fn compact_json_response<T: serde::Serialize>(value: &T) -> Response<Body> {
    let json = serde_json::to_vec(value).unwrap_or_default();
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-store")
        .body(shoal_server::full(Bytes::from(json)))
        .unwrap_or_else(|_| internal_error())
}

fn json_response<T: serde::Serialize>(value: &T) -> Response<Body> {
    let json = serde_json::to_string_pretty(value).unwrap_or_default();
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-store")
        .body(shoal_server::full(Bytes::from(json)))
        .unwrap_or_else(|_| internal_error())
}

/// A response the cache makes up itself. An error (4xx, 5xx) says so in
/// `x-shoal-error`, naming whose fault it is: the client's for a 4xx, this
/// cache's for a 5xx (see [`error_response`] to name the origin or a peer).
fn text_response(status: StatusCode, text: &str) -> Response<Body> {
    let fault = if status.is_client_error() {
        Fault::Client
    } else {
        Fault::Local
    };
    error_response(status, fault, text)
}

/// The answer to `error`: its chain of causes as text, its fault in
/// `x-shoal-error`.
fn blamed<E: Blame + std::error::Error>(status: StatusCode, error: &E) -> Response<Body> {
    error_response(
        status,
        error.fault(),
        &format!("{}\n", shoal_proto::Chain(error)),
    )
}

/// [`text_response`] naming whose fault an error is.
pub(crate) fn error_response(status: StatusCode, fault: Fault, text: &str) -> Response<Body> {
    let mut builder = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-store");
    if status.is_client_error() || status.is_server_error() {
        builder = builder.header(ERROR_HEADER, fault.as_str());
    }
    builder
        .body(shoal_server::full(Bytes::from(text.to_string())))
        .unwrap_or_else(|_| internal_error())
}

/// What to ask the origin for: the path as the client sent it, and its
/// query less the version pin (which is shoal's, not the origin's).
fn origin_target(uri: &http::Uri) -> String {
    let path = uri.path();
    let Some(query) = uri.query() else {
        return path.to_string();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|kv| !kv.is_empty() && kv.split('=').next() != Some(PIN_PARAM))
        .collect();
    if kept.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", kept.join("&"))
    }
}

/// The host a request names: `Host`, or the authority of an HTTP/2
/// request.
pub(crate) fn request_host<B>(request: &Request<B>) -> Option<HeaderValue> {
    // A cache asking its shield names its client's host (the key must be
    // the host the origin is told, see `proxy::request_headers`).
    if request.headers().contains_key(shoal_proto::TIER_HEADER) {
        if let Some(host) = request.headers().get("x-forwarded-host") {
            return Some(host.clone());
        }
    }
    request.headers().get(header::HOST).cloned().or_else(|| {
        request
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    })
}

/// `target` less the query parameters `ignored` names (a name, or a
/// prefix ending in `*`), as the cache keys it.
pub fn key_target(target: &str, ignored: &[String]) -> String {
    let Some((path, query)) = target.split_once('?') else {
        return target.to_string();
    };
    if ignored.is_empty() {
        return target.to_string();
    }
    let is_ignored = |name: &str| {
        ignored.iter().any(|rule| match rule.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => name == rule,
        })
    };
    // A pair holding `;` is never ignored: origins that split on `;` would
    // see a parameter the key does not (parameter cloaking).
    let kept: Vec<&str> = query
        .split('&')
        .filter(|kv| {
            !kv.is_empty() && (kv.contains(';') || !is_ignored(kv.split('=').next().unwrap_or(kv)))
        })
        .collect();
    if kept.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", kept.join("&"))
    }
}

/// `/` or a path ending in `/` whose segments are otherwise valid: an
/// index the origin answers (the store keys files only).
fn is_directory_path(raw_path: &str) -> bool {
    raw_path == "/"
        || raw_path
            .strip_suffix('/')
            .is_some_and(|dir| RequestPath::parse(dir).is_ok())
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn internal_error() -> Response<Body> {
    let mut response = Response::new(shoal_server::empty());
    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignored_query_parameters_leave_the_key() {
        let ignored = vec!["token".to_string(), "utm_*".to_string()];
        assert_eq!(key_target("/a?token=1&v=2", &ignored), "/a?v=2");
        assert_eq!(key_target("/a?utm_source=x&utm_medium=y", &ignored), "/a");
        assert_eq!(key_target("/a?tokens=1", &ignored), "/a?tokens=1");
        assert_eq!(key_target("/a", &ignored), "/a");
        assert_eq!(key_target("/a?token=1", &[]), "/a?token=1");
        assert_eq!(
            key_target("/a?token=1;v=evil", &ignored),
            "/a?token=1;v=evil"
        );
    }

    #[test]
    fn a_pin_is_one_object_id_or_a_400() {
        let id = "cd".repeat(32);
        assert_eq!(pinned_version(None).unwrap(), None);
        assert_eq!(pinned_version(Some("a=1")).unwrap(), None);
        assert_eq!(
            pinned_version(Some(&format!("a=1&shoal-object={id}"))).unwrap(),
            Some(ObjectId([0xcd; 32]))
        );
        for bad in [
            "shoal-object=zz".to_string(),
            "shoal-object=".to_string(),
            format!("shoal-object={id}&shoal-object={id}"),
        ] {
            let refused = pinned_version(Some(&bad)).unwrap_err();
            assert_eq!(refused.status(), StatusCode::BAD_REQUEST, "{bad}");
        }
    }
}
