//! [`MeshLink`]: one role's signed client for talking to caches — piece
//! sets, piece data, object metadata from the shield, purges — plus the
//! bookkeeping of peers that misbehave (quarantine) or do not answer
//! (suspects), and the JSON a cache answers with ([`PeerObject`]). Caches
//! use it with their siblings; selectors use it to ask a shield what a
//! path is.
//!
//! Whatever a peer sends is checked like origin bytes by the caller: piece
//! data against the manifest or the hashes learnt from the shield.

use crate::body::{check_range_response, RangeBody, RangeError};
use crate::peer_health::{PeerHealth, PeerHealthLimits};
use crate::record::ObjectRecord;
use crate::Cause;
use crate::{
    LAST_RESORT_HEADER, MODE_HEADER, PEER_DATA_PREFIX, PEER_OBJECT_PREFIX, PEER_PIECES_PREFIX,
    PEER_PURGES_PATH, PEER_PURGE_PATH, RECORD_MODE, STAY_HEADER, SWITCH_HEADER, TRY_HEADER,
};
use base64::Engine;
use http::{HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};
use shoal_core::auth::{AuthError, ClusterKey, AUTH_HEADER};
use shoal_core::bitfield::PieceSet;
use shoal_core::Manifest;
use shoal_core::{ByteSpan, ObjectId};
use shoal_mesh::{Member, MeshNode};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How an object-metadata request is made and read.
struct ObjectAsk {
    /// The `x-shoal-mode` value.
    mode: &'static str,
    timeout_ms: u64,
    bytes_max: u64,
    /// What the answer is, for errors.
    what: &'static str,
}

/// What the link counts of peers' misbehaviour (a cache reports them in
/// its stats).
#[derive(Debug, Default)]
pub struct PeerCounters {
    /// Pieces from peers that failed verification.
    pub corrupt_pieces: AtomicU64,
    /// Times a peer was quarantined for them.
    pub quarantines: AtomicU64,
}

/// Largest purge log answer read from a peer.
const PEER_PURGES_BYTES_MAX: u64 = 8 << 20;
/// Largest object-metadata answer accepted: compact JSON is ~67 bytes per
/// piece hash, so this covers 1 TiB objects in 4 MiB pieces (262,144).
pub const PEER_OBJECT_BYTES_MAX: u64 = 24 << 20;
/// Largest record-only answer accepted (a record is a few hundred bytes).
pub const PEER_RECORD_BYTES_MAX: u64 = 64 << 10;
/// Largest piece-set answer accepted.
pub const PIECE_SET_BYTES_MAX: u64 = 1 << 17;
/// How long a peer's piece set is reused before asking again.
const PIECE_SET_TTL_MS: u64 = 1_000;
/// Piece-set cache entries kept (oldest dropped beyond).
const PIECE_SET_CACHE_ENTRIES_MAX: usize = 4_096;
/// Weight of a new round-trip sample in the average.
const RTT_EWMA_WEIGHT: f64 = 0.3;
/// Peers whose round-trip time is remembered (all of them, in any sane mesh).
const RTT_ENTRIES_MAX: usize = 4096;
/// How long a peer that failed to answer is skipped (gossip usually
/// declares a dead one within this).
const SUSPECT_MS: u64 = 10_000;
/// Lifetime of the tokens this cache signs (receivers allow at least
/// [`AUTH_TTL_MIN_S`]).
pub const TOKEN_LIFETIME_S: u64 = 60;
/// Smallest `auth_ttl_max_s` that accepts our own tokens with clock skew.
pub const AUTH_TTL_MIN_S: u64 = TOKEN_LIFETIME_S + 30;

/// How a data request is to be served.
#[derive(Clone, Copy, Debug)]
pub struct DataAsk {
    pub mode: PeerMode,
    /// A `fill` the shield must serve rather than send to a relay.
    pub last_resort: bool,
    /// A switch ([`crate::SWITCH_HEADER`]): the pieces are coming from a
    /// relay or holder that would take this many more milliseconds.
    pub switch_from_eta_ms: Option<u64>,
}

/// Longest node id accepted in an `X-Shoal-Try` answer.
const NODE_ID_BYTES_MAX: usize = 256;

/// How a data request may be served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerMode {
    /// Only from pieces already held.
    Have,
    /// Fetch what is missing (the receiver acts as shield).
    Fill,
    /// Fetch what is missing from the receiver's shield (as last resort:
    /// never relayed further) and pass it on: a flash crowd's relay.
    Relay,
}

impl PeerMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PeerMode::Have => "have",
            PeerMode::Fill => "fill",
            PeerMode::Relay => "relay",
        }
    }

    pub fn parse(text: &[u8]) -> Option<Self> {
        match text {
            b"have" => Some(PeerMode::Have),
            b"fill" => Some(PeerMode::Fill),
            b"relay" => Some(PeerMode::Relay),
            _ => None,
        }
    }
}

/// What the shield tells a sibling about a path.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
// A wire answer made once per lookup: its size does not matter.
#[allow(clippy::large_enum_variant)]
pub enum PeerObject {
    /// A cacheable version.
    Cached {
        record: ObjectRecord,
        /// The manifest (published, or built once ingested), base64.
        manifest_b64: Option<String>,
        /// Without a manifest: the hash of each piece the shield has seen
        /// from the origin, hex, `""` where unknown.
        hashes_hex: Vec<String>,
    },
    /// The origin forbids storing it: fetch it straight from the origin.
    PassThrough,
}

/// Why a request to a peer failed; every variant names the peer.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("peer {node} unreachable")]
    Unreachable {
        node: String,
        #[source]
        cause: Cause,
    },
    #[error("peer {0} timed out")]
    Timeout(String),
    #[error("peer {0} answered {1}")]
    Status(String, StatusCode),
    #[error("peer {0} sent an unusable answer: {1}")]
    Protocol(String, String),
    #[error("peer {node} sent unusable {what}")]
    Malformed {
        node: String,
        what: &'static str,
        #[source]
        cause: serde_json::Error,
    },
    /// A shield in a flash crowd sent us to another cache.
    #[error("shield {0} is relaying through {1}")]
    TryInstead(String, String),
    /// The peer is fetching those pieces from us (508 Loop Detected).
    #[error("peer {0} is fetching those pieces from us")]
    Loop(String),
    /// A shield declined to take over a run (it would not be sooner).
    #[error("shield {0} would not deliver sooner than the current source")]
    Declined(String),
}

impl PeerError {
    /// The peer that failed.
    pub fn node(&self) -> &str {
        match self {
            PeerError::Unreachable { node, .. } | PeerError::Malformed { node, .. } => node,
            PeerError::Timeout(node)
            | PeerError::Status(node, _)
            | PeerError::Protocol(node, _)
            | PeerError::TryInstead(node, _)
            | PeerError::Loop(node)
            | PeerError::Declined(node) => node,
        }
    }

    /// An answer about the object itself (not about the peer's health):
    /// asking another peer would get the same.
    /// (403 is not: it may be our token that was refused.)
    pub fn is_definitive(&self) -> bool {
        matches!(self, PeerError::Status(_, s) if *s == StatusCode::NOT_FOUND || *s == StatusCode::GONE)
    }

    pub fn status(&self) -> Option<StatusCode> {
        match self {
            PeerError::Status(_, s) => Some(*s),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct PeerSettings {
    pub connect_timeout_ms: u64,
    pub read_timeout_ms: u64,
    /// For requests the shield fills (it may wait on the origin first).
    pub shield_read_timeout_ms: u64,
    /// Wrong pieces a peer may send before it is quarantined.
    pub corrupt_pieces_max: u32,
    pub quarantine_ms: u64,
    /// Longest lifetime a received token may claim.
    pub auth_ttl_max_s: u64,
}

/// Piece sets of (peer, object), with when they were fetched.
type PieceSetCache = HashMap<(String, ObjectId), (Instant, Option<Arc<PieceSet>>)>;

/// This cache's side of the mesh: gossip view plus peer HTTP.
pub struct MeshLink {
    pub node: Arc<MeshNode>,
    key: ClusterKey,
    self_id: String,
    client: reqwest::Client,
    settings: PeerSettings,
    counters: Arc<PeerCounters>,
    piece_sets: Mutex<PieceSetCache>,
    /// Which peers may be asked (pure state machine, fed this link's
    /// clock: ms since `started`).
    health: Mutex<PeerHealth>,
    started: Instant,
    /// Round-trip time to each peer (EWMA of piece-set request latency,
    /// small requests that never wait on an origin), milliseconds.
    rtt_ms: Mutex<HashMap<String, f64>>,
}

use shoal_core::now_unix_s;

impl MeshLink {
    pub fn new(
        node: Arc<MeshNode>,
        key: ClusterKey,
        self_id: String,
        settings: PeerSettings,
        counters: Arc<PeerCounters>,
    ) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(settings.connect_timeout_ms))
            .tcp_nodelay(true)
            .pool_max_idle_per_host(32)
            .pool_idle_timeout(Duration::from_millis(crate::POOL_IDLE_MS))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| e.to_string())?;
        let limits = PeerHealthLimits {
            corrupt_pieces_max: settings.corrupt_pieces_max,
            quarantine_ms: settings.quarantine_ms,
            suspect_ms: SUSPECT_MS,
        };
        Ok(Self {
            node,
            key,
            self_id,
            client,
            settings,
            counters,
            piece_sets: Mutex::default(),
            health: Mutex::new(PeerHealth::new(limits)),
            started: Instant::now(),
            rtt_ms: Mutex::default(),
        })
    }

    pub fn self_id(&self) -> &str {
        &self.self_id
    }

    /// A token for a request this node sends (`x-shoal-auth`).
    pub fn token_for(&self, method: &str, path_and_query: &str) -> Result<String, AuthError> {
        self.key.sign(
            &self.self_id,
            now_unix_s() + TOKEN_LIFETIME_S,
            method,
            path_and_query,
        )
    }

    /// The longest lifetime a token may claim here.
    pub fn auth_ttl_max_s(&self) -> u64 {
        self.settings.auth_ttl_max_s
    }

    /// Checks the token of an inter-cache request; the caller answers 403
    /// on error.
    pub fn authenticate(
        &self,
        header: Option<&HeaderValue>,
        method: &str,
        path_and_query: &str,
    ) -> Result<String, AuthError> {
        self.key
            .verify(
                header.map(|h| h.as_bytes()),
                method,
                path_and_query,
                now_unix_s(),
                self.settings.auth_ttl_max_s,
            )
            .map(str::to_string)
    }

    /// Whether a signed request was meant for another node (`to=` in its
    /// query names someone else).
    pub fn misdirected(&self, query: Option<&str>) -> bool {
        query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .filter_map(|kv| kv.strip_prefix("to="))
            .any(|to| to != self.self_id)
    }

    /// This link's clock for the health machine.
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Whether a peer may be asked now (not quarantined, not suspect).
    pub fn usable(&self, node_id: &str) -> bool {
        let generation = self.generation_of(node_id);
        lock(&self.health).usable(node_id, self.now_ms(), generation)
    }

    /// A peer did not answer usefully: skip it for a while (until gossip
    /// tells everyone, or shows it restarted).
    pub fn suspect(&self, node_id: &str) {
        let now_ms = self.now_ms();
        let generation = self.generation_of(node_id);
        lock(&self.health).on_no_answer(node_id, now_ms, generation);
    }

    /// The peer's process generation as gossip shows it now (0: unknown).
    fn generation_of(&self, node_id: &str) -> u64 {
        self.node
            .view()
            .member(node_id)
            .map_or(0, |member| member.generation)
    }

    /// A peer sent a piece that did not verify; quarantines it after
    /// `corrupt_pieces_max`. Returns true if it is now quarantined.
    pub fn report_corrupt(&self, node_id: &str) -> bool {
        self.counters.corrupt_pieces.fetch_add(1, Ordering::Relaxed);
        let now_ms = self.now_ms();
        if lock(&self.health).on_corrupt_piece(node_id, now_ms) {
            self.counters.quarantines.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                peer = node_id,
                "peer quarantined: it sent pieces that failed verification"
            );
            return true;
        }
        false
    }

    fn record_rtt(&self, node_id: &str, elapsed: Duration) {
        let sample = elapsed.as_secs_f64() * 1000.0;
        let mut rtts = lock(&self.rtt_ms);
        if rtts.len() >= RTT_ENTRIES_MAX && !rtts.contains_key(node_id) {
            rtts.clear();
        }
        let rtt = rtts.entry(node_id.to_string()).or_insert(sample);
        *rtt += RTT_EWMA_WEIGHT * (sample - *rtt);
    }

    /// Measured round-trip time to a peer, if any request went there yet.
    pub fn rtt_ms(&self, node_id: &str) -> Option<f64> {
        lock(&self.rtt_ms).get(node_id).copied()
    }

    /// Peers currently quarantined.
    pub fn quarantined(&self) -> Vec<String> {
        lock(&self.health).quarantined(self.now_ms())
    }

    /// A signed `GET path_and_query` to another control-plane node (a
    /// selector) at `base_url`: its status and a body of
    /// at most `limit` bytes, within `timeout`. The target's node id is
    /// signed in (`to=`), as for caches.
    pub async fn signed_get_small(
        &self,
        node_id: &str,
        base_url: &str,
        path_and_query: &str,
        timeout: Duration,
        limit: usize,
    ) -> Result<(StatusCode, Vec<u8>), String> {
        let request = self
            .signed_to(node_id, base_url, path_and_query)
            .map_err(|e| e.to_string())?;
        let exchange = async {
            let mut response = request.send().await.map_err(|e| crate::error_chain(&e))?;
            let status = response.status();
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(|e| crate::error_chain(&e))? {
                if body.len() + chunk.len() > limit {
                    return Err(format!("answer larger than {limit} bytes"));
                }
                body.extend_from_slice(&chunk);
            }
            Ok((status, body))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| format!("no answer within {} ms", timeout.as_millis()))?
    }

    fn signed(
        &self,
        member: &Member,
        path_and_query: &str,
    ) -> Result<reqwest::RequestBuilder, PeerError> {
        self.signed_to(&member.node_id, &member.base_url(), path_and_query)
            .map_err(|e| PeerError::Protocol(member.node_id.clone(), e.to_string()))
    }

    /// A `GET base_url path_and_query` signed for `node_id`. The target is
    /// signed too (`to=`): a node that now sits at a dead member's address
    /// answers 421 instead of acting on it (forwarding must only go up the
    /// ranking, to the member we scored).
    fn signed_to(
        &self,
        node_id: &str,
        base_url: &str,
        path_and_query: &str,
    ) -> Result<reqwest::RequestBuilder, AuthError> {
        let separator = if path_and_query.contains('?') {
            '&'
        } else {
            '?'
        };
        let path_and_query = format!("{path_and_query}{separator}to={node_id}");
        let token = self.key.sign(
            &self.self_id,
            now_unix_s() + TOKEN_LIFETIME_S,
            "GET",
            &path_and_query,
        )?;
        Ok(self
            .client
            .get(format!("{base_url}{path_and_query}"))
            .header(AUTH_HEADER, token))
    }

    /// A shield may wait on the origin before it answers.
    fn read_timeout_ms(&self, mode: PeerMode) -> u64 {
        match mode {
            PeerMode::Have => self.settings.read_timeout_ms,
            PeerMode::Fill | PeerMode::Relay => self.settings.shield_read_timeout_ms,
        }
    }

    async fn send(
        &self,
        member: &Member,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, PeerError> {
        self.send_within(member, request, self.settings.read_timeout_ms)
            .await
    }

    async fn send_within(
        &self,
        member: &Member,
        request: reqwest::RequestBuilder,
        timeout_ms: u64,
    ) -> Result<reqwest::Response, PeerError> {
        let timeout = Duration::from_millis(timeout_ms);
        match tokio::time::timeout(timeout, request.send()).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(error)) => {
                self.suspect(&member.node_id);
                Err(PeerError::Unreachable {
                    node: member.node_id.clone(),
                    cause: Arc::new(error),
                })
            }
            Err(_) => {
                self.suspect(&member.node_id);
                Err(PeerError::Timeout(member.node_id.clone()))
            }
        }
    }

    async fn small_body(
        &self,
        member: &Member,
        response: reqwest::Response,
        limit: u64,
    ) -> Result<Vec<u8>, PeerError> {
        let peer = member.node_id.clone();
        let mut body = RangeBody::new(
            response,
            Duration::from_millis(self.settings.read_timeout_ms),
        );
        let mut out = Vec::new();
        loop {
            match body.chunk().await {
                Ok(Some(chunk)) => {
                    if out.len() as u64 + chunk.len() as u64 > limit {
                        return Err(PeerError::Protocol(
                            peer,
                            format!("answer exceeds {limit} bytes"),
                        ));
                    }
                    out.extend_from_slice(&chunk);
                }
                Ok(None) => return Ok(out),
                Err(error) => {
                    self.suspect(&member.node_id);
                    return Err(PeerError::Unreachable {
                        node: peer,
                        cause: Arc::new(error),
                    });
                }
            }
        }
    }

    /// Asks `member` what `path` is: as its shield (`Fill`: it resolves the
    /// path, from the origin if need be) or from what it knows (`Have`).
    pub async fn object(
        &self,
        member: &Member,
        uri_path: &str,
        mode: PeerMode,
    ) -> Result<PeerObject, PeerError> {
        let ask = ObjectAsk {
            mode: mode.as_str(),
            timeout_ms: self.read_timeout_ms(mode),
            bytes_max: PEER_OBJECT_BYTES_MAX,
            what: "object metadata",
        };
        self.peer_object(member, uri_path, ask).await
    }

    /// Asks `member`, as the shield of `uri_path`, for the object's record
    /// only (a selector's question: its id and size, not its hashes).
    /// `None`: the origin forbids storing it (caches pass it through).
    pub async fn object_record(
        &self,
        member: &Member,
        uri_path: &str,
    ) -> Result<Option<ObjectRecord>, PeerError> {
        let ask = ObjectAsk {
            mode: RECORD_MODE,
            timeout_ms: self.settings.shield_read_timeout_ms,
            bytes_max: PEER_RECORD_BYTES_MAX,
            what: "an object record",
        };
        Ok(match self.peer_object(member, uri_path, ask).await? {
            PeerObject::Cached { record, .. } => Some(record),
            PeerObject::PassThrough => None,
        })
    }

    /// `GET /_shoal/peer/object/<path>` in `ask.mode`, its answer parsed.
    async fn peer_object(
        &self,
        member: &Member,
        uri_path: &str,
        ask: ObjectAsk,
    ) -> Result<PeerObject, PeerError> {
        let path_and_query = format!("{}{}", PEER_OBJECT_PREFIX.trim_end_matches('/'), uri_path);
        let request = self
            .signed(member, &path_and_query)?
            .header(MODE_HEADER, ask.mode);
        let response = self.send_within(member, request, ask.timeout_ms).await?;
        let status = response.status();
        if status != StatusCode::OK {
            if status.is_server_error() {
                self.suspect(&member.node_id);
            }
            return Err(PeerError::Status(member.node_id.clone(), status));
        }
        let bytes = self.small_body(member, response, ask.bytes_max).await?;
        serde_json::from_slice(&bytes).map_err(|cause| PeerError::Malformed {
            node: member.node_id.clone(),
            what: ask.what,
            cause,
        })
    }

    /// Passes a purge event to `member`.
    pub async fn purge(
        &self,
        member: &Member,
        event: &crate::purge::PurgeEvent,
    ) -> Result<(), PeerError> {
        let path_and_query = format!("{PEER_PURGE_PATH}?{}", event.to_query());
        let request = self.signed(member, &path_and_query)?;
        let response = self.send(member, request).await?;
        let status = response.status();
        if !status.is_success() {
            return Err(PeerError::Status(member.node_id.clone(), status));
        }
        Ok(())
    }

    /// The purge events `member` knows from `since_ms` on.
    pub async fn purges_since(
        &self,
        member: &Member,
        since_ms: u64,
    ) -> Result<crate::purge::PurgesSince, PeerError> {
        let path_and_query = format!("{PEER_PURGES_PATH}?since={since_ms}");
        let request = self.signed(member, &path_and_query)?;
        let response = self.send(member, request).await?;
        let status = response.status();
        if status != StatusCode::OK {
            return Err(PeerError::Status(member.node_id.clone(), status));
        }
        let bytes = self
            .small_body(member, response, PEER_PURGES_BYTES_MAX)
            .await?;
        serde_json::from_slice(&bytes).map_err(|cause| PeerError::Malformed {
            node: member.node_id.clone(),
            what: "a purge log",
            cause,
        })
    }

    /// Which pieces of `object` `member` holds (cached for a second;
    /// `None` when it holds none or did not answer).
    pub async fn piece_set(&self, member: &Member, object: &ObjectId) -> Option<Arc<PieceSet>> {
        self.piece_set_within(member, object, Duration::from_millis(PIECE_SET_TTL_MS))
            .await
    }

    /// Like [`Self::piece_set`], reusing an answer at most `max_age` old.
    pub async fn piece_set_within(
        &self,
        member: &Member,
        object: &ObjectId,
        max_age: Duration,
    ) -> Option<Arc<PieceSet>> {
        let key = (member.node_id.clone(), *object);
        if let Some((at, set)) = lock(&self.piece_sets).get(&key) {
            if at.elapsed() < max_age {
                return set.clone();
            }
        }
        let set = self.fetch_piece_set(member, object).await;
        let mut sets = lock(&self.piece_sets);
        if sets.len() >= PIECE_SET_CACHE_ENTRIES_MAX {
            let ttl = Duration::from_millis(PIECE_SET_TTL_MS);
            sets.retain(|_, (at, _)| at.elapsed() < ttl);
            if sets.len() >= PIECE_SET_CACHE_ENTRIES_MAX {
                sets.clear();
            }
        }
        sets.insert(key, (Instant::now(), set.clone()));
        set
    }

    /// Forgets a cached piece set (after the peer failed to deliver).
    pub fn forget_piece_set(&self, node_id: &str, object: &ObjectId) {
        lock(&self.piece_sets).remove(&(node_id.to_string(), *object));
    }

    async fn fetch_piece_set(&self, member: &Member, object: &ObjectId) -> Option<Arc<PieceSet>> {
        let path = format!("{PEER_PIECES_PREFIX}{}", object.to_hex());
        let sent = Instant::now();
        let response = self
            .send(member, self.signed(member, &path).ok()?)
            .await
            .ok()?;
        self.record_rtt(&member.node_id, sent.elapsed());
        if response.status() != StatusCode::OK {
            return None;
        }
        let bytes = self
            .small_body(member, response, PIECE_SET_BYTES_MAX)
            .await
            .ok()?;
        match PieceSet::decode(&bytes) {
            Ok(set) => Some(Arc::new(set)),
            Err(error) => {
                tracing::warn!(peer = %member.node_id, error = %crate::Chain(&error), "bad piece set from peer");
                None
            }
        }
    }

    /// Starts fetching `span` (piece-aligned) of `object` at `uri_path`
    /// from `member`.
    pub async fn data(
        &self,
        member: &Member,
        object: &ObjectId,
        uri_path: &str,
        span: ByteSpan,
        object_size: u64,
        ask: DataAsk,
    ) -> Result<RangeBody, PeerError> {
        let DataAsk {
            mode,
            last_resort,
            switch_from_eta_ms,
        } = ask;
        let peer = member.node_id.clone();
        let last = span
            .last()
            .ok_or_else(|| PeerError::Protocol(peer.clone(), "empty range".into()))?;
        let path = format!("{PEER_DATA_PREFIX}{}{}", object.to_hex(), uri_path);
        let request = self
            .signed(member, &path)?
            .header(
                http::header::RANGE,
                format!("bytes={}-{}", span.start(), last),
            )
            .header(MODE_HEADER, mode.as_str());
        let request = if last_resort {
            request.header(LAST_RESORT_HEADER, "1")
        } else {
            request
        };
        let request = match switch_from_eta_ms {
            Some(eta_ms) => request.header(SWITCH_HEADER, eta_ms.to_string()),
            None => request,
        };
        let timeout_ms = self.read_timeout_ms(mode);
        let response = self.send_within(member, request, timeout_ms).await?;
        let status = response.status();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            let named = response
                .headers()
                .get(TRY_HEADER)
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty() && v.len() <= NODE_ID_BYTES_MAX);
            if let Some(relay) = named {
                return Err(PeerError::TryInstead(peer, relay.to_string()));
            }
            if response.headers().get(STAY_HEADER).is_some() {
                return Err(PeerError::Declined(peer));
            }
        }
        if status == StatusCode::LOOP_DETECTED {
            return Err(PeerError::Loop(peer));
        }
        if status != StatusCode::PARTIAL_CONTENT && status != StatusCode::OK {
            if status.is_server_error() {
                self.suspect(&member.node_id);
            }
            return Err(PeerError::Status(peer, status));
        }
        check_range_response(
            response,
            span,
            object_size,
            Duration::from_millis(timeout_ms),
        )
        .map_err(|e| match e {
            RangeError::Status(s) => PeerError::Status(peer, s),
            RangeError::Mismatch(why) => PeerError::Protocol(peer, why),
        })
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Decodes the manifest in a [`PeerObject`].
pub fn decode_manifest(manifest_b64: Option<&str>) -> Result<Option<Manifest>, String> {
    let Some(text) = manifest_b64 else {
        return Ok(None);
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|_| "a manifest that is not base64".to_string())?;
    Manifest::decode(&bytes)
        .map(Some)
        .map_err(|e| format!("a bad manifest: {e}"))
}

/// The manifest as a [`PeerObject`] carries it.
pub fn encode_manifest(manifest: &Manifest) -> String {
    base64::engine::general_purpose::STANDARD.encode(manifest.encode())
}
