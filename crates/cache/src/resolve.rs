//! Resolving a path to the object version to serve: memory, the store's
//! records, or the origin (HEAD + manifest), with freshness and revalidation.
//!
//! Concurrent requests for one path share one resolution (a per-path lock), so
//! a burst of cold clients sends the origin one HEAD and one manifest request.

use crate::object::{unpublished_id, ObjectEntry, ObjectRecord, RECORD_FORMAT};
use crate::origin_client::{OriginClient, OriginError, OriginHead, SmallDocument};
use crate::peer::{MeshLink, PeerMode, PeerObject};
use crate::stats::CacheStats;
use crate::transition::{
    kept_record, manifest_describes_file, transition, Known, Learnt, Transition,
};
use http::{header, HeaderMap, HeaderValue, StatusCode};
use shoal_core::{Manifest, ObjectId, PieceIndex, PieceSize};
use shoal_http::cache_control::CacheControl;
use shoal_http::path::RequestPath;
use shoal_proto::{Cause, Chain};
use shoal_store::{PieceKey, Store};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::UNIX_EPOCH;

/// What to do with a request for a path.
pub enum Resolved {
    /// Serve from pieces of this object version.
    Cached(Arc<ObjectEntry>),
    /// The origin forbids storing this response: proxy it.
    PassThrough,
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error(transparent)]
    Origin(#[from] OriginError),
    #[error("the origin's manifest for this object is invalid: {0}")]
    BadManifest(String),
    #[error("the store failed")]
    Store(#[source] Cause),
    /// The shield cache (or this cache, answering a sibling) could not say
    /// what the path is; a client gets `status`.
    #[error("the shield cache could not describe this path")]
    Peer {
        status: StatusCode,
        #[source]
        cause: Cause,
    },
}

impl ResolveError {
    /// The error status the origin answered (or, for it, the shield
    /// reported): a client's request then goes to the origin for the
    /// origin's own answer and body.
    pub fn origin_answered(&self) -> Option<StatusCode> {
        match self {
            ResolveError::Origin(OriginError::Status(status)) => Some(*status),
            ResolveError::Peer { status, .. } if status.is_client_error() => Some(*status),
            // A shield reports an origin's 5xx as 502: it may be the
            // shield's own trouble, but the origin is still asked.
            ResolveError::Peer { status, .. } if *status == StatusCode::BAD_GATEWAY => {
                Some(*status)
            }
            _ => None,
        }
    }

    pub fn client_status(&self) -> StatusCode {
        match self {
            ResolveError::Origin(e) => e.client_status(),
            ResolveError::BadManifest(_) => StatusCode::BAD_GATEWAY,
            ResolveError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ResolveError::Peer { status, .. } => *status,
        }
    }
}

pub struct Resolver {
    store: Arc<Store>,
    origin: Arc<OriginClient>,
    stats: Arc<CacheStats>,
    objects: Mutex<HashMap<String, Arc<ObjectEntry>>>,
    path_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Versions replaced at their path, still servable to pinned requests.
    retired: Mutex<Retired>,
    /// When each path was last resolved again for a pinned request.
    pin_rechecks: Mutex<HashMap<String, std::time::Instant>>,
    /// Upper bound on entries kept in memory (records stay in the store).
    entries_max: usize,
    /// Larger objects are passed through, not stored.
    object_bytes_max: u64,
    /// Smaller objects take the whole-response path (`response`), not the
    /// piece path. 0: every object with a length takes the piece path.
    pub small_object_bytes_max: u64,
    /// How many paths' records name each object id.
    id_users: Mutex<HashMap<ObjectId, usize>>,
    /// The mesh, when this cache is part of one: non-shields ask the shield.
    mesh: Option<Arc<MeshLink>>,
    /// How long a path's version is fresh when the origin says nothing.
    freshness_default_s: u64,
}

/// Shields asked about a path before this cache asks the origin itself.
const SHIELDS_ASKED_MAX: usize = 2;
/// Shortest time between two re-checks of a path for pinned requests.
pub const PIN_RECHECK_MS: u64 = 1_000;
/// Replaced versions remembered for requests pinned to them.
const RETIRED_VERSIONS_MAX: usize = 1_024;
/// Paths whose last pin re-check time is remembered.
const PIN_RECHECKS_TRACKED_MAX: usize = 4_096;

pub use shoal_core::now_unix_s;

impl Resolver {
    pub fn new(
        store: Arc<Store>,
        origin: Arc<OriginClient>,
        stats: Arc<CacheStats>,
        object_bytes_max: u64,
        freshness_default_s: u64,
        mesh: Option<Arc<MeshLink>>,
    ) -> Self {
        // Several paths can name one published object (same content): its
        // pieces go only when the last path lets go of it.
        let mut id_users: HashMap<ObjectId, usize> = HashMap::new();
        for (_, bytes) in store.all_records().unwrap_or_default() {
            let id = serde_json::from_slice::<ObjectRecord>(&bytes)
                .ok()
                .and_then(|r| ObjectId::from_hex(&r.id));
            if let Some(id) = id {
                *id_users.entry(id).or_default() += 1;
            }
        }
        Self {
            id_users: Mutex::new(id_users),
            object_bytes_max,
            small_object_bytes_max: 0,
            store,
            origin,
            stats,
            objects: Mutex::new(HashMap::new()),
            path_locks: Mutex::new(HashMap::new()),
            pin_rechecks: Mutex::new(HashMap::new()),
            retired: Mutex::default(),
            entries_max: 100_000,
            mesh,
            freshness_default_s,
        }
    }

    fn fresh_entry(&self, path: &str, now: u64) -> Option<Arc<ObjectEntry>> {
        let objects = lock(&self.objects);
        let entry = objects.get(path)?;
        (!entry.is_invalidated() && now < entry.record.fresh_until_unix_s).then(|| entry.clone())
    }

    pub async fn resolve(&self, path: &RequestPath) -> Result<Resolved, ResolveError> {
        let key = path.as_str().to_string();
        let now = now_unix_s();
        if let Some(entry) = self.fresh_entry(&key, now) {
            return Ok(Resolved::Cached(entry));
        }
        let _guard = self.lock_path(&key).await;
        match self.fresh_entry(&key, now_unix_s()) {
            Some(entry) => Ok(Resolved::Cached(entry)),
            None => self.resolve_locked(path).await,
        }
    }

    /// Resolves `path` asking the origin (or the shield) even when the
    /// version known here is fresh: a client's `no-cache` or `max-age=0`
    /// (RFC 9111 §5.2.1). One at a time per path (the path lock).
    pub async fn revalidate(&self, path: &RequestPath) -> Result<Resolved, ResolveError> {
        let _guard = self.lock_path(path.as_str()).await;
        self.resolve_locked(path).await
    }

    /// Takes on `path` from the head of the whole file the origin described
    /// when it answered a client's first GET (`first_contact`): the HEAD a
    /// cold resolution sends is saved. A version another request resolved
    /// meanwhile stands.
    pub async fn install_probed(
        &self,
        path: &RequestPath,
        head: OriginHead,
        client: &HeaderMap,
    ) -> Result<Resolved, ResolveError> {
        let _guard = self.lock_path(path.as_str()).await;
        if let Some(entry) = self.fresh_entry(path.as_str(), now_unix_s()) {
            return Ok(Resolved::Cached(entry));
        }
        if lock(&self.objects).contains_key(path.as_str()) || self.load_entry(path)?.is_some() {
            return self.resolve_locked(path).await;
        }
        match self.probe(path, head).await? {
            Probe::Storable(mut record, manifest) => {
                // The fields came with the client's request: its variant.
                let vary = shoal_http::vary::Vary::from_headers(&record_fields(&record));
                record.variant_key = shoal_http::vary::variant_key(vary.fields(), client)
                    .filter(|_| !vary.fields().is_empty());
                self.install(path, record, manifest.map(|m| *m))
            }
            Probe::NotStorable => Ok(Resolved::PassThrough),
        }
    }

    /// Resolves `path` again for a request pinned to `pin`, a version this
    /// cache does not serve: someone (a selector, from the shield) knows a
    /// newer one. At most once per [`PIN_RECHECK_MS`] per path, so pinned
    /// requests cannot make the cache hammer its shield or the origin.
    pub async fn resolve_for_pin(
        &self,
        path: &RequestPath,
        pin: ObjectId,
    ) -> Result<Resolved, ResolveError> {
        let key = path.as_str().to_string();
        let _guard = self.lock_path(&key).await;
        let fresh = self.fresh_entry(&key, now_unix_s());
        match fresh {
            Some(entry) if entry.id == pin => Ok(Resolved::Cached(entry)),
            Some(entry) if !self.may_recheck(&key) => Ok(Resolved::Cached(entry)),
            _ => self.resolve_locked(path).await,
        }
    }

    /// True if `key` was not re-checked for a pin in the last
    /// [`PIN_RECHECK_MS`]; records the time when it returns true.
    fn may_recheck(&self, key: &str) -> bool {
        let now = std::time::Instant::now();
        let interval = std::time::Duration::from_millis(PIN_RECHECK_MS);
        let mut rechecked = lock(&self.pin_rechecks);
        if rechecked.len() >= PIN_RECHECKS_TRACKED_MAX {
            rechecked.retain(|_, at| now.duration_since(*at) < interval);
        }
        match rechecked.get(key) {
            Some(at) if now.duration_since(*at) < interval => false,
            _ => {
                if rechecked.len() < PIN_RECHECKS_TRACKED_MAX {
                    rechecked.insert(key.to_string(), now);
                }
                true
            }
        }
    }

    /// Waits for the per-path lock: one resolution of a path at a time.
    async fn lock_path(&self, key: &str) -> PathGuard<'_> {
        let path_lock = lock(&self.path_locks)
            .entry(key.to_string())
            .or_default()
            .clone();
        // The guard cleans up even if the client goes away mid-resolve.
        PathGuard {
            guard: Some(path_lock.lock_owned().await),
            locks: &self.path_locks,
            key: key.to_string(),
        }
    }

    async fn resolve_locked(&self, path: &RequestPath) -> Result<Resolved, ResolveError> {
        let key = path.as_str().to_string();
        // (The lock guard must end before load_entry, which takes it again.)
        let in_memory = lock(&self.objects).get(&key).cloned();
        let known = match in_memory {
            Some(entry) => Some(entry),
            None => self.load_entry(path)?,
        };
        if let Some(mesh) = &self.mesh {
            if let Some(answer) = self.resolve_via_shield(mesh, path, known.clone()).await {
                return answer;
            }
            // We are the shield, or no shield answered: ask the origin.
        }
        if let Some(old) = known {
            self.stats.revalidations.fetch_add(1, Ordering::Relaxed);
            // An invalidated version is probed afresh (a 304 would prove
            // nothing); its pieces are dropped only if the id changed.
            let conditional = if old.is_invalidated() {
                HeaderMap::new()
            } else {
                conditional_headers(&old.record)
            };
            let uri_path = path.to_uri_path();
            let mut head = self.origin.head(&uri_path, &conditional).await?;
            if head.status == StatusCode::NOT_MODIFIED {
                // The file kept its validators; a republish can still have
                // changed its manifest (same size and mtime, new bytes).
                match self.manifest_check(path, &old).await? {
                    ManifestCheck::Unchanged(validators) => {
                        return Ok(self.refresh(old, &head.headers, validators));
                    }
                    ManifestCheck::Changed => {
                        head = self.origin.head(&uri_path, &HeaderMap::new()).await?;
                    }
                }
            }
            if head.status.is_client_error() {
                // Gone or refused (404, 410, 403, a HEAD it does not
                // allow): an error to whoever resolves (a sibling, a
                // selector); a client's request is passed to the origin
                // for its own answer. The pieces stay for eviction to
                // take: a file that comes back unchanged reuses them.
                return Err(OriginError::Status(head.status).into());
            }
            if head.status.is_server_error() {
                // The origin is failing now: an error to siblings (who
                // keep their versions too), the origin's own answer to a
                // client; the stored version stays (stale, so the next
                // request asks again).
                tracing::warn!(path = %path.as_str(), status = %head.status, "the origin answered an error on revalidation: keeping the stored version");
                return Err(OriginError::Status(head.status).into());
            }
            if !head.is_whole_file() {
                // Moved, or no longer a plain file: the path is passed
                // through from now on. The pieces stay for eviction to
                // take: a file that comes back unchanged reuses them.
                tracing::info!(path = %path.as_str(), status = %head.status, "the origin no longer serves this path as a file: passing it through");
                self.forget_keeping_pieces(&old, true);
                return Ok(Resolved::PassThrough);
            }
            let fresh = self.probe(path, head).await?;
            let learnt = match &fresh {
                Probe::Storable(record, _) => learnt_version(record)?,
                Probe::NotStorable => Learnt::NotStorable,
            };
            return match (transition(Some(known_of(&old)), learnt), fresh) {
                (Transition::Keep, Probe::Storable(record, _)) => {
                    let kept = kept_record(&old.record, &record);
                    Ok(self.replace_record(old, kept))
                }
                (Transition::Replace, Probe::Storable(record, manifest)) => {
                    tracing::info!(path = %path.as_str(), old = %short(&old.record.id), new = %short(&record.id), "the origin serves a new version");
                    self.stats.versions_replaced.fetch_add(1, Ordering::Relaxed);
                    self.replace_version(path, &old, record, manifest.map(|m| *m))
                }
                _ => {
                    self.forget(&old);
                    Ok(Resolved::PassThrough)
                }
            };
        }
        let head = self
            .origin
            .head(&path.to_uri_path(), &HeaderMap::new())
            .await?;
        if head.status.is_client_error() {
            return Err(OriginError::Status(head.status).into());
        }
        match self.probe(path, head).await? {
            Probe::Storable(record, manifest) => self.install(path, record, manifest.map(|m| *m)),
            Probe::NotStorable => Ok(Resolved::PassThrough),
        }
    }

    /// After the origin confirmed the file's validators: is the manifest
    /// still the one `old` was resolved with? A published object asks
    /// conditionally (one small 304 when nothing changed); an unpublished
    /// one asks whether a manifest has appeared since.
    async fn manifest_check(
        &self,
        path: &RequestPath,
        old: &ObjectEntry,
    ) -> Result<ManifestCheck, ResolveError> {
        let manifest_path = shoal_origin_manifest_path(path);
        let conditional = if old.record.published && old.record.manifest_validators_strong {
            manifest_conditional_headers(&old.record)
        } else {
            HeaderMap::new()
        };
        let unchanged = |headers: Option<&HeaderMap>| {
            ManifestCheck::Unchanged(match headers {
                Some(headers) => ManifestValidators::from_response(headers),
                None => ManifestValidators::of(&old.record),
            })
        };
        Ok(
            match self.origin.get_small(&manifest_path, &conditional).await? {
                SmallDocument::NotModified if old.record.published => unchanged(None),
                SmallDocument::Missing if !old.record.published => unchanged(None),
                SmallDocument::Found(bytes, headers) if old.record.published => {
                    match Manifest::decode(&bytes) {
                        Ok(manifest) if manifest.id() == old.id => unchanged(Some(&headers)),
                        _ => ManifestCheck::Changed,
                    }
                }
                _ => ManifestCheck::Changed,
            },
        )
    }

    /// Asks the shields above this cache what `path` is, best first.
    /// `None` when there is none (we are the shield) or none answered.
    async fn resolve_via_shield(
        &self,
        mesh: &MeshLink,
        path: &RequestPath,
        known: Option<Arc<ObjectEntry>>,
    ) -> Option<Result<Resolved, ResolveError>> {
        let view = mesh.node.view();
        let key = shoal_mesh::shield_key(path.as_str());
        let shields = view
            .shields_above_self(&key)
            .into_iter()
            .filter(|m| mesh.usable(&m.node_id))
            .take(SHIELDS_ASKED_MAX);
        for shield in shields {
            match mesh
                .object(shield, &path.to_uri_path(), PeerMode::Fill)
                .await
            {
                Ok(PeerObject::PassThrough) => {
                    if let Some(old) = &known {
                        self.forget(old);
                    }
                    return Some(Ok(Resolved::PassThrough));
                }
                Ok(PeerObject::Cached {
                    record,
                    manifest_b64,
                    hashes_hex,
                }) => {
                    if known.is_some() {
                        self.stats.revalidations.fetch_add(1, Ordering::Relaxed);
                    }
                    return Some(self.adopt(path, known, record, manifest_b64, hashes_hex));
                }
                Err(error) if error.is_definitive() => {
                    let status = error.status().unwrap_or(StatusCode::BAD_GATEWAY);
                    if let Some(old) = &known {
                        if status == StatusCode::NOT_FOUND || status == StatusCode::GONE {
                            self.forget(old);
                        }
                    }
                    return Some(Err(ResolveError::Peer {
                        status,
                        cause: Arc::new(error),
                    }));
                }
                Err(error) => {
                    tracing::warn!(path = %path.as_str(), error = %Chain(&error), "shield did not answer; trying the next");
                    self.stats.peer_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        None
    }

    /// Takes on the version a shield described.
    fn adopt(
        &self,
        path: &RequestPath,
        known: Option<Arc<ObjectEntry>>,
        record: ObjectRecord,
        manifest_b64: Option<String>,
        hashes_hex: Vec<String>,
    ) -> Result<Resolved, ResolveError> {
        if record.size > self.object_bytes_max {
            // Our own limit applies whatever the shield stores.
            if let Some(old) = &known {
                self.forget(old);
            }
            return Ok(Resolved::PassThrough);
        }
        let bad = |what: String| ResolveError::Peer {
            status: StatusCode::BAD_GATEWAY,
            cause: shoal_proto::reason(format!("it sent {what}")),
        };
        let id = ObjectId::from_hex(&record.id).ok_or_else(|| bad("a bad object id".into()))?;
        let manifest = crate::peer::decode_manifest(manifest_b64.as_deref()).map_err(bad)?;
        let (published_manifest, built_manifest) = match manifest {
            Some(m) if record.published => {
                if m.id() != id {
                    return Err(bad("a manifest that does not match the object id".into()));
                }
                (Some(m), None)
            }
            Some(m) => (None, Some(m)),
            None if record.published => {
                return Err(bad("a published object without its manifest".into()))
            }
            None => (None, None),
        };
        let step = transition(known.as_deref().map(known_of), Learnt::Version(id));
        let resolved = match (step, known) {
            // The shield's record is the mesh's: taken whole.
            (Transition::Keep, Some(old)) => self.replace_record(old, record),
            (Transition::Replace, Some(old)) => {
                tracing::info!(path = %path.as_str(), old = %short(&old.record.id), new = %short(&record.id), "the shield serves a new version");
                self.stats.versions_replaced.fetch_add(1, Ordering::Relaxed);
                self.replace_version(path, &old, record, published_manifest)?
            }
            _ => self.install(path, record, published_manifest)?,
        };
        if let Resolved::Cached(entry) = &resolved {
            crate::peer::learn_hashes(entry, built_manifest.as_ref(), &hashes_hex);
        }
        Ok(resolved)
    }

    /// The version of `path` this cache knows, without asking anyone.
    pub fn local_entry(&self, path: &RequestPath) -> Option<Arc<ObjectEntry>> {
        let in_memory = lock(&self.objects).get(path.as_str()).cloned();
        in_memory.or_else(|| self.load_entry(path).ok().flatten())
    }

    /// What this cache, as shield, tells a selector about `path`: the
    /// record only (`None`: pass-through), without building hash lists.
    pub async fn record_for_selector(
        &self,
        path: &RequestPath,
    ) -> Result<Option<crate::object::ObjectRecord>, ResolveError> {
        Ok(match self.resolve(path).await? {
            Resolved::PassThrough => None,
            Resolved::Cached(entry) => Some(entry.record.clone()),
        })
    }

    /// What this cache tells a sibling about `path` (as its shield).
    /// With `local_only`, nothing is fetched: 404 unless it is known here.
    pub async fn describe_for_peer(
        &self,
        path: &RequestPath,
        local_only: bool,
    ) -> Result<PeerObject, ResolveError> {
        let entry = if local_only {
            self.local_entry(path).ok_or_else(|| ResolveError::Peer {
                status: StatusCode::NOT_FOUND,
                cause: shoal_proto::reason("not known here"),
            })?
        } else {
            match self.resolve(path).await? {
                Resolved::PassThrough => return Ok(PeerObject::PassThrough),
                Resolved::Cached(entry) => entry,
            }
        };
        let manifest = entry.manifest.clone().or_else(|| entry.built_manifest());
        let hashes_hex = if manifest.is_some() {
            Vec::new()
        } else {
            (0..entry.layout.piece_count())
                .map(|i| {
                    entry
                        .learnt_hash(PieceIndex(i))
                        .map(|h| h.to_hex())
                        .unwrap_or_default()
                })
                .collect()
        };
        Ok(PeerObject::Cached {
            record: entry.record.clone(),
            manifest_b64: manifest.map(|m| crate::peer::encode_manifest(&m)),
            hashes_hex,
        })
    }

    /// Reads a record left by an earlier run of the cache.
    fn load_entry(&self, path: &RequestPath) -> Result<Option<Arc<ObjectEntry>>, ResolveError> {
        let Some(bytes) = self
            .store
            .get_record(path.as_str())
            .map_err(|e| ResolveError::Store(Arc::new(e)))?
        else {
            return Ok(None);
        };
        let Ok(record) = serde_json::from_slice::<ObjectRecord>(&bytes) else {
            tracing::warn!(path = %path.as_str(), "unreadable object record; ignoring it");
            return Ok(None);
        };
        if record.format != RECORD_FORMAT {
            return Ok(None);
        }
        let manifest = if record.published {
            let id = shoal_core::ObjectId::from_hex(&record.id);
            let bytes = id.and_then(|id| self.store.get_manifest(&id).ok().flatten());
            match bytes.and_then(|b| Manifest::decode(&b).ok()) {
                Some(m) if Some(m.id()) == id => Some(m),
                _ => return Ok(None),
            }
        } else {
            None
        };
        let entry = match ObjectEntry::new(
            path.as_str().to_string(),
            path.to_uri_path(),
            record,
            manifest,
        ) {
            Ok(entry) => Arc::new(entry),
            Err(error) => {
                tracing::warn!(path = %path.as_str(), %error, "inconsistent object record; ignoring it");
                return Ok(None);
            }
        };
        if entry.manifest.is_none() {
            // The manifest built while ingesting, once complete, keeps every
            // reference hash across restarts, evicted pieces included.
            let built = self.store.get_manifest(&entry.id).ok().flatten();
            if let Some(built) = built.and_then(|b| Manifest::decode(&b).ok()) {
                if built.layout() == entry.layout {
                    for (index, hash) in built.piece_hashes().iter().enumerate() {
                        entry.learn_hash(PieceIndex(index as u32), *hash);
                    }
                }
            }
            for index in self.store.pieces_of(&entry.id) {
                if let Some(hash) = self.store.piece_hash(&PieceKey {
                    object: entry.id,
                    index,
                }) {
                    entry.learn_hash(index, hash);
                }
            }
        }
        self.remember(entry.clone());
        Ok(Some(entry))
    }

    /// Builds the record of the version the origin serves now.
    async fn probe(&self, path: &RequestPath, head: OriginHead) -> Result<Probe, ResolveError> {
        let headers = &head.headers;
        // Anything but a `200` with a length (a redirect, an error, a
        // length the origin does not know, a HEAD it refuses) is passed
        // through as the origin answers it.
        let Some(size) = head.size.filter(|_| head.is_whole_file()) else {
            return Ok(Probe::NotStorable);
        };
        // RFC 9213: `CDN-Cache-Control`, when present, decides for us.
        let cache_control = CacheControl::for_cdn(headers);
        if !shoal_http::cache_control::is_storable(StatusCode::OK, &cache_control, false) {
            return Ok(Probe::NotStorable);
        }
        if size < self.small_object_bytes_max {
            return Ok(Probe::NotStorable);
        }
        // RFC 9111 §4.1: `Vary: *` never answers from a store.
        if shoal_http::vary::Vary::from_headers(headers) == shoal_http::vary::Vary::Anything {
            return Ok(Probe::NotStorable);
        }
        if size > self.object_bytes_max {
            tracing::warn!(path = %path.as_str(), size, limit = self.object_bytes_max, "object larger than object_bytes_max: passed through, not stored");
            return Ok(Probe::NotStorable);
        }
        let text = |name| text_header(headers, name);
        let origin_etag = text(header::ETAG);
        let origin_last_modified = text(header::LAST_MODIFIED);
        let now = now_unix_s();
        let lifetime_s = self.lifetime_s(headers, now);

        let (manifest, manifest_validators) = self.fetch_manifest(path).await?;
        let manifest = manifest.filter(|m| {
            let describes = manifest_describes_file(
                m.object_size(),
                m.validators().last_modified_unix_s,
                size,
                header_unix_s(headers, header::LAST_MODIFIED),
            );
            if !describes {
                tracing::warn!(path = %path.as_str(), manifest_size = m.object_size(), file_size = size, "published manifest is stale (size or mtime differ): republish; treating the object as unpublished");
            }
            describes
        });
        let (id, piece_size, published) = match &manifest {
            Some(m) => (m.id(), m.piece_size(), true),
            None => (
                unpublished_id(
                    path.as_str(),
                    size,
                    origin_etag.as_deref(),
                    origin_last_modified.as_deref(),
                ),
                PieceSize::for_object_size(size),
                false,
            ),
        };
        // What is immutable is the content id, not the path: the mapping
        // path -> version follows HTTP freshness like any response.
        let fresh_until_unix_s = now.saturating_add(lifetime_s);
        let record = ObjectRecord {
            format: RECORD_FORMAT,
            id: id.to_hex(),
            size,
            piece_size_log2: piece_size.log2(),
            published,
            origin_etag,
            origin_last_modified,
            content_type: text(header::CONTENT_TYPE),
            cache_control: text(header::CACHE_CONTROL),
            fresh_until_unix_s,
            manifest_etag: None,
            manifest_last_modified: None,
            manifest_validators_strong: false,
            origin_validators_strong: validators_strong(headers),
            validated_unix_s: now,
            variant_key: None,
            headers: shoal_http::forward::stored_fields(
                headers,
                &shoal_proto::record::computed_fields(),
            )
            .into_iter()
            .filter(|(name, _)| !name.starts_with("x-shoal-"))
            .collect(),
        };
        let mut record = record;
        if published {
            manifest_validators.apply(&mut record);
        }
        Ok(Probe::Storable(record, manifest.map(Box::new)))
    }

    /// The publisher's manifest for `path`, with its validators.
    async fn fetch_manifest(&self, path: &RequestPath) -> Result<FetchedManifest, ResolveError> {
        let manifest_path = shoal_origin_manifest_path(path);
        match self
            .origin
            .get_small(&manifest_path, &HeaderMap::new())
            .await?
        {
            SmallDocument::Missing | SmallDocument::NotModified => {
                Ok((None, ManifestValidators::default()))
            }
            SmallDocument::Found(bytes, headers) => {
                let manifest = Manifest::decode(&bytes)
                    .map_err(|e| ResolveError::BadManifest(e.to_string()))?;
                Ok((Some(manifest), ManifestValidators::from_response(&headers)))
            }
        }
    }

    /// How long a response with these headers stays fresh here: what the
    /// origin says (`Cache-Control`, `Expires`), else the configured default.
    fn lifetime_s(&self, headers: &HeaderMap, now_unix_s: u64) -> u64 {
        let cache_control = CacheControl::for_cdn(headers);
        let explicit = cache_control.max_age_s.is_some()
            || cache_control.s_maxage_s.is_some()
            || cache_control.no_cache
            || (headers.contains_key(header::EXPIRES)
                && !headers.contains_key(shoal_http::cache_control::CDN_CACHE_CONTROL));
        if explicit {
            freshness_lifetime_s(headers, now_unix_s)
        } else {
            self.freshness_default_s
        }
    }

    /// Installs the version the origin serves now in place of `old`.
    /// Pieces of `old` that the new manifest has too (same hash) are kept
    /// and copied over when first needed, never fetched again: a patch
    /// that changes a few pieces of a large file costs those pieces.
    fn replace_version(
        &self,
        path: &RequestPath,
        old: &Arc<ObjectEntry>,
        record: ObjectRecord,
        manifest: Option<Manifest>,
    ) -> Result<Resolved, ResolveError> {
        let carried = match (&old.manifest, &manifest) {
            (Some(old_manifest), Some(new_manifest)) if old.id != new_manifest.id() => {
                self.carry_over(old.id, old_manifest, new_manifest)
            }
            _ => HashMap::new(),
        };
        // The old version stays servable to requests pinned to it (a
        // download that began before the change finishes with the version
        // it began with), from the pieces held, until they are evicted.
        // Not when its own bytes were in doubt, nor under the same id.
        let new_id = ObjectId::from_hex(&record.id);
        let retire = !(old.has_hash_conflict() || new_id == Some(old.id));
        if retire {
            self.retire(old);
        } else {
            self.forget(old);
        }
        let resolved = self.install_carrying(path, record, manifest, carried)?;
        // What the old version lacks can still come through the new one
        // where both have the same piece (same hash at some index).
        if let (true, Resolved::Cached(new), Some(old_manifest)) =
            (retire, &resolved, &old.manifest)
        {
            if let Some(new_manifest) = &new.manifest {
                let by_hash: HashMap<&shoal_core::PieceHash, u32> = new_manifest
                    .piece_hashes()
                    .iter()
                    .enumerate()
                    .map(|(index, hash)| (hash, index as u32))
                    .collect();
                let same: HashMap<u32, u32> = old_manifest
                    .piece_hashes()
                    .iter()
                    .enumerate()
                    .filter_map(|(index, hash)| Some((index as u32, *by_hash.get(hash)?)))
                    .collect();
                old.set_successor(new.clone(), same);
            }
        }
        Ok(resolved)
    }

    /// For each piece of `new` whose hash a held piece of `old` has: where
    /// to copy it from.
    fn carry_over(
        &self,
        old_id: ObjectId,
        old: &Manifest,
        new: &Manifest,
    ) -> HashMap<u32, PieceKey> {
        let old_hashes = old.piece_hashes();
        let held: HashMap<shoal_core::PieceHash, PieceIndex> = self
            .store
            .held_pieces(&old_id)
            .into_iter()
            .filter_map(|index| Some((*old_hashes.get(index.0 as usize)?, index)))
            .collect();
        new.piece_hashes()
            .iter()
            .enumerate()
            .filter_map(|(index, hash)| {
                let from = *held.get(hash)?;
                Some((
                    index as u32,
                    PieceKey {
                        object: old_id,
                        index: from,
                    },
                ))
            })
            .collect()
    }

    fn install(
        &self,
        path: &RequestPath,
        record: ObjectRecord,
        manifest: Option<Manifest>,
    ) -> Result<Resolved, ResolveError> {
        self.install_carrying(path, record, manifest, HashMap::new())
    }

    fn install_carrying(
        &self,
        path: &RequestPath,
        record: ObjectRecord,
        manifest: Option<Manifest>,
        carried: HashMap<u32, PieceKey>,
    ) -> Result<Resolved, ResolveError> {
        // Validate before anything is persisted.
        let bytes = serde_json::to_vec(&record).map_err(|e| ResolveError::Store(Arc::new(e)))?;
        let entry = ObjectEntry::new(
            path.as_str().to_string(),
            path.to_uri_path(),
            record,
            manifest,
        )
        .map_err(ResolveError::BadManifest)?
        .carrying(carried);
        if let Some(m) = &entry.manifest {
            self.store
                .put_manifest(m.id(), m.encode())
                .map_err(|e| ResolveError::Store(Arc::new(e)))?;
        }
        self.store
            .put_record(path.as_str(), bytes)
            .map_err(|e| ResolveError::Store(Arc::new(e)))?;
        let entry = Arc::new(entry);
        *lock(&self.id_users).entry(entry.id).or_default() += 1;
        self.remember(entry.clone());
        Ok(Resolved::Cached(entry))
    }

    /// Keeps an entry in memory, bounded.
    fn remember(&self, entry: Arc<ObjectEntry>) {
        let mut objects = lock(&self.objects);
        if objects.len() >= self.entries_max {
            // Entries are cheap to reload from the store; drop an arbitrary half.
            let drop_keys: Vec<String> = objects.keys().step_by(2).cloned().collect();
            for k in drop_keys {
                objects.remove(&k);
            }
        }
        objects.insert(entry.path.clone(), entry);
    }

    /// Drops a version that the origin no longer serves, with its pieces.
    fn forget(&self, entry: &Arc<ObjectEntry>) {
        self.forget_keeping_pieces(entry, false)
    }

    /// Drops a replaced version from the path, keeping its pieces (for
    /// requests pinned to it, and to copy into the new version) until
    /// eviction takes them; remembers it for pinned requests, bounded.
    fn retire(&self, entry: &Arc<ObjectEntry>) {
        self.forget_keeping_pieces(entry, true);
        entry.retire();
        let mut retired = lock(&self.retired);
        if retired.order.len() >= RETIRED_VERSIONS_MAX {
            if let Some(oldest) = retired.order.pop_front() {
                retired.by_id.remove(&oldest);
            }
        }
        if retired.by_id.insert(entry.id, entry.clone()).is_none() {
            retired.order.push_back(entry.id);
        }
    }

    /// A version of `path` that was replaced, if requests pinned to `id`
    /// may still be served from what is held of it.
    pub fn retired(&self, path: &RequestPath, id: ObjectId) -> Option<Arc<ObjectEntry>> {
        lock(&self.retired)
            .by_id
            .get(&id)
            .filter(|e| e.path == path.as_str())
            .cloned()
    }

    /// Applies a purge to what this cache holds; returns the paths it
    /// touched. Hard: every version of each matching path is dropped with
    /// its pieces (unless another path uses them). Soft: each matching
    /// path's version becomes stale (revalidated on the next request).
    /// Marks the stored version of `path` stale (RFC 9111 §4.4, after an
    /// unsafe request): the next request revalidates it. False when
    /// nothing fresh is stored for the path.
    pub async fn invalidate(&self, path: &RequestPath) -> bool {
        let key = path.as_str();
        let _guard = self.lock_path(key).await;
        let (entry, record) = self.known_record(key);
        // Already stale: nothing to do (and nothing to tell the mesh,
        // however many unsafe requests come).
        let Some(record) = record.filter(|r| r.fresh_until_unix_s > now_unix_s()) else {
            return false;
        };
        self.mark_stale(key, entry, record);
        true
    }

    /// The entry of `key` in memory, and its record (from memory, else
    /// from the store).
    fn known_record(&self, key: &str) -> (Option<Arc<ObjectEntry>>, Option<ObjectRecord>) {
        let entry = lock(&self.objects).get(key).cloned();
        let record = match &entry {
            Some(entry) => Some(entry.record.clone()),
            None => self
                .store
                .get_record(key)
                .ok()
                .flatten()
                .and_then(|bytes| serde_json::from_slice::<ObjectRecord>(&bytes).ok()),
        };
        (entry, record)
    }

    /// Stores `record` of `key` as stale, in memory too when `entry` is
    /// there: the next request revalidates.
    fn mark_stale(&self, key: &str, entry: Option<Arc<ObjectEntry>>, mut record: ObjectRecord) {
        record.fresh_until_unix_s = 0;
        if let Ok(bytes) = serde_json::to_vec(&record) {
            let _ = self.store.put_record(key, bytes);
        }
        if let Some(entry) = entry {
            self.replace_record(entry, record);
        }
    }

    pub async fn apply_purge(&self, event: &crate::purge::PurgeEvent) -> usize {
        let mut paths: Vec<String> = self
            .store
            .all_records()
            .unwrap_or_default()
            .into_iter()
            .map(|(path, _)| path)
            .filter(|path| event.target.matches(path))
            .collect();
        for path in lock(&self.objects).keys() {
            if event.target.matches(path) && !paths.contains(path) {
                paths.push(path.clone());
            }
        }
        for path in &paths {
            // No resolution of the path runs while it is purged.
            let _guard = self.lock_path(path).await;
            let (entry, record) = self.known_record(path);
            let Some(record) = record else {
                let _ = self.store.remove_record(path);
                continue;
            };
            if event.soft {
                self.mark_stale(path, entry, record);
                continue;
            }
            if let Some(entry) = &entry {
                entry.invalidate();
            }
            if let Some(id) = ObjectId::from_hex(&record.id) {
                self.drop_version(path, id, false);
            }
        }
        if !event.soft {
            let mut retired = lock(&self.retired);
            let gone: Vec<ObjectId> = retired
                .by_id
                .values()
                .filter(|e| event.target.matches(&e.path))
                .map(|e| e.id)
                .collect();
            for id in gone {
                retired.by_id.remove(&id);
                retired.order.retain(|i| *i != id);
                if !lock(&self.id_users).contains_key(&id) {
                    let _ = self.store.remove_object(&id);
                }
            }
        }
        // The index is written by its own thread: until these removals are
        // committed, a read of the path would still find the old record.
        if let Err(error) = self.store.flush().await {
            tracing::warn!(error = %Chain(&error), "could not commit a purge to the index");
        }
        paths.len()
    }

    /// Drops a version; its pieces too unless `keep_pieces` (another
    /// version copies some of them; eviction takes the rest in time).
    fn forget_keeping_pieces(&self, entry: &Arc<ObjectEntry>, keep_pieces: bool) {
        self.drop_version(&entry.path, entry.id, keep_pieces)
    }

    /// Drops the record of `path` (version `id`), and the version's pieces
    /// when no other path uses them and not `keep_pieces`.
    fn drop_version(&self, path: &str, id: ObjectId, keep_pieces: bool) {
        lock(&self.objects).remove(path);
        let last_user = {
            let mut users = lock(&self.id_users);
            let count = users.entry(id).or_insert(1);
            *count = count.saturating_sub(1);
            let last = *count == 0;
            if last {
                users.remove(&id);
            }
            last
        };
        if last_user && !keep_pieces {
            if let Err(error) = self.store.remove_object(&id) {
                tracing::warn!(error = %Chain(&error), "could not remove an old object version");
            }
        }
        let _ = self.store.remove_record(path);
    }

    /// The version is still current: extend its freshness.
    fn refresh(
        &self,
        old: Arc<ObjectEntry>,
        not_modified_headers: &HeaderMap,
        manifest_validators: ManifestValidators,
    ) -> Resolved {
        let now = now_unix_s();
        let mut record = old.record.clone();
        manifest_validators.apply(&mut record);
        let mut headers = HeaderMap::new();
        // The stored fields (`CDN-Cache-Control` among them), then what
        // the record keeps apart, then the 304's.
        for (name, value) in &record.headers {
            if let (Ok(name), Ok(value)) = (
                header::HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                headers.append(name, value);
            }
        }
        if let Some(cc) = &record.cache_control {
            if let Ok(v) = HeaderValue::from_str(cc) {
                headers.insert(header::CACHE_CONTROL, v);
            }
        }
        if let Some(lm) = &record.origin_last_modified {
            if let Ok(v) = HeaderValue::from_str(lm) {
                headers.insert(header::LAST_MODIFIED, v);
            }
        }
        for (name, value) in not_modified_headers {
            headers.insert(name.clone(), value.clone());
        }
        if let Some(cc) = not_modified_headers
            .get(header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
        {
            record.cache_control = Some(cc.to_string());
        }
        record.headers = shoal_http::forward::update_stored_fields(
            &record.headers,
            not_modified_headers,
            &shoal_proto::record::computed_fields(),
        );
        record.validated_unix_s = now;
        let lifetime_s = self.lifetime_s(&headers, now);
        record.fresh_until_unix_s = now.saturating_add(lifetime_s);
        // A second on, the origin's validators may have become strong.
        record.origin_validators_strong |= validators_strong(&headers);
        self.replace_record(old, record)
    }

    fn replace_record(&self, old: Arc<ObjectEntry>, record: ObjectRecord) -> Resolved {
        match old.with_record(record.clone()) {
            Ok(entry) => {
                let entry = Arc::new(entry);
                if let Ok(bytes) = serde_json::to_vec(&record) {
                    let _ = self.store.put_record(&entry.path, bytes);
                }
                self.remember(entry.clone());
                Resolved::Cached(entry)
            }
            Err(_) => Resolved::Cached(old),
        }
    }
}

/// Holds a path's resolution lock; on drop, removes the lock from the map
/// when nobody else holds or waits for it.
struct PathGuard<'a> {
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
    locks: &'a Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    key: String,
}

impl Drop for PathGuard<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut locks = lock(self.locks);
        // Only the map's own reference left: nobody waits.
        if locks
            .get(&self.key)
            .is_some_and(|l| Arc::strong_count(l) <= 1)
        {
            locks.remove(&self.key);
        }
    }
}

/// Replaced versions by id, oldest first.
#[derive(Default)]
struct Retired {
    by_id: HashMap<ObjectId, Arc<ObjectEntry>>,
    order: std::collections::VecDeque<ObjectId>,
}

// Built once per origin probe: its size does not matter.
#[allow(clippy::large_enum_variant)]
enum Probe {
    Storable(ObjectRecord, Option<Box<Manifest>>),
    NotStorable,
}

/// A manifest from the origin with its validators.
type FetchedManifest = (Option<Manifest>, ManifestValidators);

/// A published manifest's `ETag` and `Last-Modified` as the origin sent
/// them, and whether they are strong enough for a conditional request.
#[derive(Default)]
struct ManifestValidators {
    etag: Option<String>,
    last_modified: Option<String>,
    strong: bool,
}

impl ManifestValidators {
    fn from_response(headers: &HeaderMap) -> Self {
        Self {
            etag: text_header(headers, header::ETAG),
            last_modified: text_header(headers, header::LAST_MODIFIED),
            strong: validators_strong(headers),
        }
    }

    fn of(record: &ObjectRecord) -> Self {
        Self {
            etag: record.manifest_etag.clone(),
            last_modified: record.manifest_last_modified.clone(),
            strong: record.manifest_validators_strong,
        }
    }

    fn apply(self, record: &mut ObjectRecord) {
        record.manifest_etag = self.etag;
        record.manifest_last_modified = self.last_modified;
        record.manifest_validators_strong = self.strong;
    }
}

/// Whether the manifest still names the version a cache holds.
enum ManifestCheck {
    /// Yes, with the manifest's validators (possibly updated).
    Unchanged(ManifestValidators),
    Changed,
}

/// What the transition rules need of a known version.
fn known_of(entry: &ObjectEntry) -> Known {
    Known {
        id: entry.id,
        hash_conflict: entry.has_hash_conflict(),
    }
}

/// The version a probed record names.
fn learnt_version(record: &ObjectRecord) -> Result<Learnt, ResolveError> {
    ObjectId::from_hex(&record.id)
        .map(Learnt::Version)
        .ok_or_else(|| {
            ResolveError::Store(shoal_proto::reason(format!(
                "a record with a bad id `{}`",
                record.id
            )))
        })
}

/// The first 16 hex digits of an id, for logs.
fn short(id: &str) -> &str {
    id.get(..16).unwrap_or(id)
}

/// RFC 9110 §8.8.2.2: a modification time is a strong validator only once
/// a second has passed since it (the response's `Date` says so); entity
/// tags made from the mtime (nginx's) are no better.
fn validators_strong(headers: &HeaderMap) -> bool {
    match (
        header_unix_s(headers, header::DATE),
        header_unix_s(headers, header::LAST_MODIFIED),
    ) {
        (Some(date), Some(modified)) => date > modified,
        _ => false,
    }
}

fn text_header(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// `If-None-Match` (else `If-Modified-Since`) for the published manifest.
fn manifest_conditional_headers(record: &ObjectRecord) -> HeaderMap {
    conditional_on(&record.manifest_etag, &record.manifest_last_modified)
}

/// `If-None-Match` (else `If-Modified-Since`) for the object.
fn conditional_headers(record: &ObjectRecord) -> HeaderMap {
    conditional_on(&record.origin_etag, &record.origin_last_modified)
}

fn conditional_on(etag: &Option<String>, last_modified: &Option<String>) -> HeaderMap {
    let value = |v: &Option<String>| v.as_deref().and_then(|v| HeaderValue::from_str(v).ok());
    let mut headers = HeaderMap::new();
    if let Some(etag) = value(etag) {
        headers.insert(header::IF_NONE_MATCH, etag);
    } else if let Some(lm) = value(last_modified) {
        headers.insert(header::IF_MODIFIED_SINCE, lm);
    }
    headers
}

/// Where a publisher's manifest for `path` lives on the origin (see
/// `shoal publish`): `/.shoal/manifests/<path>.shoalmf`.
pub fn shoal_origin_manifest_path(path: &RequestPath) -> String {
    format!("/.shoal/manifests{}.shoalmf", path.to_uri_path())
}

/// How long a response with these headers stays fresh in a shared cache.
fn freshness_lifetime_s(headers: &HeaderMap, now_unix_s: u64) -> u64 {
    // RFC 9213: `CDN-Cache-Control` replaces `Cache-Control` and `Expires`.
    let cache_control = CacheControl::for_cdn(headers);
    let expires = if headers.contains_key(shoal_http::cache_control::CDN_CACHE_CONTROL) {
        None
    } else {
        shoal_http::cache_control::Expires::from_headers(headers)
    };
    let date = header_unix_s(headers, header::DATE);
    let last_modified = header_unix_s(headers, header::LAST_MODIFIED);
    shoal_http::cache_control::freshness_lifetime_s(
        &cache_control,
        expires,
        date,
        last_modified,
        now_unix_s,
    )
}

fn header_unix_s(headers: &HeaderMap, name: header::HeaderName) -> Option<u64> {
    let text = headers.get(name)?.to_str().ok()?;
    let time = httpdate::parse_http_date(text).ok()?;
    time.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// A record's stored end-to-end fields as a header map.
pub fn record_fields(record: &ObjectRecord) -> HeaderMap {
    let mut fields = HeaderMap::new();
    for (name, value) in &record.headers {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            fields.append(name, value);
        }
    }
    fields
}
