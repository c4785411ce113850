//! Filling pieces from the origin: coalesced, piece-aligned, verified.
//!
//! # Invariants
//!
//! - A piece is fetched by at most one task at a time: the in-flight map holds
//!   every piece being fetched, and claiming happens under its lock after
//!   checking the store. A fill task stores a piece *before* it removes it from
//!   the in-flight map, so a piece is always either stored, in flight, or
//!   absent — and only absent pieces are fetched. While an object stays cached
//!   the origin therefore sees each of its bytes at most once.
//! - Bytes reach waiters only as [`VerifiedPiece`]s. A piece that fails
//!   verification is counted, logged and reported as an error to every
//!   waiter; nothing of it is stored.
//!
//! Sources, in order: a sibling cache that holds the pieces (its piece set
//! says so, and we know the pieces' hashes), the shield of the path (a
//! higher-ranked cache that fills them itself), the origin. Only a cache
//! with no usable shield above it goes to the origin.
//!
//! A fill task fetches a run of consecutive missing pieces with one range
//! request, so a cold sequential read streams from the origin at the speed of
//! one plain download, with one piece of latency for verification.

use crate::object::ObjectEntry;
use crate::origin_client::{OriginClient, OriginError};
use crate::peer::{MeshLink, PeerError, PeerMode, PeerObject};
use crate::stats::CacheStats;
use bytes::{Bytes, BytesMut};
use shoal_core::{ByteSpan, PieceIndex, VerifiedPiece};
use shoal_mesh::Member;
use shoal_proto::{Cause, Chain};
use shoal_store::{PieceKey, Store};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// The outcome every waiter of a piece sees.
#[derive(Clone, Debug, thiserror::Error)]
pub enum FillError {
    /// The origin failed (directly, or as a shield reported it); a client
    /// gets `status`.
    #[error("fetching from the origin failed")]
    Origin {
        status: http::StatusCode,
        #[source]
        cause: Cause,
    },
    /// A sibling cache failed; the origin is not to blame.
    #[error("sibling cache {node} failed")]
    Peer {
        node: String,
        #[source]
        cause: Cause,
    },
    #[error("piece {0} failed verification")]
    Corrupt(PieceIndex),
    #[error("object changed at the origin while it was being fetched")]
    VersionChanged,
    #[error(
        "this version was replaced at the origin and piece {0} of it is no longer held in the mesh"
    )]
    Retired(PieceIndex),
    #[error("the fill task ended without delivering the piece")]
    Abandoned,
    #[error("the store failed")]
    Store(#[source] Cause),
}

impl FillError {
    /// A sibling's failure, naming it.
    pub fn peer(error: PeerError) -> Self {
        FillError::Peer {
            node: error.node().to_string(),
            cause: Arc::new(error),
        }
    }

    pub fn client_status(&self) -> http::StatusCode {
        match self {
            FillError::Origin { status, .. } => *status,
            FillError::Retired(_) => http::StatusCode::CONFLICT,
            _ => http::StatusCode::BAD_GATEWAY,
        }
    }
}

impl From<OriginError> for FillError {
    fn from(error: OriginError) -> Self {
        FillError::Origin {
            status: error.client_status(),
            cause: Arc::new(error),
        }
    }
}

/// What a waiter sees: nothing yet, then the piece or the error.
type SlotValue = Option<Result<VerifiedPiece, FillError>>;
type Slot = watch::Receiver<SlotValue>;

#[derive(Clone, Debug)]
pub struct FillConfig {
    /// Largest run of pieces fetched by one origin request.
    pub run_bytes_max: u64,
}

pub struct Filler {
    store: Arc<Store>,
    origin: Arc<OriginClient>,
    stats: Arc<CacheStats>,
    config: FillConfig,
    inflight: Mutex<HashMap<PieceKey, Slot>>,
    /// The sibling each piece in flight is streaming from (to refuse a
    /// request from that very sibling for it: a wait cycle).
    sources: Mutex<HashMap<PieceKey, String>>,
    /// The mesh, when this cache is part of one.
    mesh: Option<Arc<MeshLink>>,
    /// Runs in flight from each peer (to spread work across holders).
    peer_load: Mutex<HashMap<String, u32>>,
}

/// Round-trip times within this many milliseconds count as equal.
const RTT_BUCKET_MS: f64 = 2.0;
/// Siblings asked for their piece set per run, at most.
const HOLDERS_ASKED_MAX: usize = 3;
/// Longest run fetched from one sibling that holds it (shorter than origin
/// runs, so a large read spreads over several siblings at once).
const HAVE_RUN_BYTES_MAX: u64 = 4 << 20;
/// Blocks the shield admits or relays one at a time (see
/// [`crate::schedule`]).
pub const RELAY_BLOCK_BYTES: u64 = 4 << 20;
/// Caches a shield feeds one object to at once before it sends
/// requesters to relays.
pub const SHIELD_FANOUT_MAX: u32 = 1;
/// Times a shield may send one run elsewhere before it is asked as last
/// resort.
const REFUSALS_PER_RUN_MAX: u32 = 4;
/// How long a cache whose shield failed for an object neither uses nor
/// serves relays for it.
pub const RELAYS_OFF_MS: u64 = 30_000;
/// How often the hashes of an unpublished object are asked of its shield.
const HASH_REFRESH_MS: u64 = 300;
/// Sources tried for one run before its waiters get the error.
const PEER_ATTEMPTS_MAX: usize = 4;
/// How long a run waits for the shield's answer to a switch before it
/// carries on with its source.
const SWITCH_ANSWER_MS: u64 = 500;

/// Pieces claimed by one fill task; whatever it has not delivered when it
/// ends (error, panic, cancellation) is released and its waiters woken.
struct Claim {
    filler: Arc<Filler>,
    object: shoal_core::ObjectId,
    senders: Vec<(PieceIndex, watch::Sender<SlotValue>)>,
    /// Claimed to serve a sibling's relay request.
    relaying: bool,
}

/// Who wants a piece, and how far a new claim may reach.
#[derive(Clone, Copy, Debug)]
pub struct Want {
    /// A sibling's relay request: its fill goes to the shield as last
    /// resort, never to another relay.
    pub relaying: bool,
    /// A new claim stops before this piece (a relay claims only the block
    /// it was asked for).
    pub end: u32,
}

impl Want {
    /// A client (or a shield's own fill) reading: claims reach a full run.
    pub const READER: Want = Want {
        relaying: false,
        end: u32::MAX,
    };
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut inflight = lock(&self.filler.inflight);
        for (index, sender) in self.senders.drain(..) {
            if sender.borrow().is_none() {
                sender.send_replace(Some(Err(FillError::Abandoned)));
            }
            inflight.remove(&PieceKey {
                object: self.object,
                index,
            });
        }
    }
}

enum Lookup {
    Stored,
    Waiting(Slot),
    Claimed(Slot),
}

impl Filler {
    pub fn new(
        store: Arc<Store>,
        origin: Arc<OriginClient>,
        stats: Arc<CacheStats>,
        config: FillConfig,
        mesh: Option<Arc<MeshLink>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            origin,
            stats,
            config,
            inflight: Mutex::new(HashMap::new()),
            sources: Mutex::default(),
            mesh,
            peer_load: Mutex::default(),
        })
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Returns piece `index` of `entry`, from the store or the origin.
    pub async fn piece(
        self: &Arc<Self>,
        entry: &Arc<ObjectEntry>,
        index: PieceIndex,
    ) -> Result<VerifiedPiece, FillError> {
        self.piece_for(entry, index, Want::READER).await
    }

    /// Returns piece `index` of `entry` for `want`.
    pub async fn piece_for(
        self: &Arc<Self>,
        entry: &Arc<ObjectEntry>,
        index: PieceIndex,
        want: Want,
    ) -> Result<VerifiedPiece, FillError> {
        let key = PieceKey {
            object: entry.id,
            index,
        };
        // A stored piece may vanish (evicted, or dropped as damaged) between
        // the check and the read; then we fetch it, a bounded number of times.
        for _ in 0..3 {
            if let Some(piece) = self
                .store
                .get(key)
                .await
                .map_err(|e| FillError::Store(Arc::new(e)))?
            {
                return Ok(piece);
            }
            let mut slot = match self.lookup_or_claim(entry, index, want) {
                Lookup::Stored => continue,
                Lookup::Waiting(slot) => {
                    self.stats.coalesced_waits.fetch_add(1, Ordering::Relaxed);
                    slot
                }
                Lookup::Claimed(slot) => slot,
            };
            let result = slot.wait_for(|v| v.is_some()).await;
            return match result {
                Ok(value) => value.clone().unwrap_or(Err(FillError::Abandoned)),
                Err(_) => Err(FillError::Abandoned),
            };
        }
        Err(FillError::Abandoned)
    }

    /// Starts fetching pieces ahead of a reader, without waiting.
    pub fn prefetch(self: &Arc<Self>, entry: &Arc<ObjectEntry>, index: PieceIndex, want: Want) {
        if index.0 >= entry.layout.piece_count() {
            return;
        }
        let _ = self.lookup_or_claim(entry, index, want);
    }

    fn lookup_or_claim(
        self: &Arc<Self>,
        entry: &Arc<ObjectEntry>,
        index: PieceIndex,
        want: Want,
    ) -> Lookup {
        let key = PieceKey {
            object: entry.id,
            index,
        };
        let mut inflight = lock(&self.inflight);
        if let Some(slot) = inflight.get(&key) {
            return Lookup::Waiting(slot.clone());
        }
        if self.store.contains(&key) {
            return Lookup::Stored;
        }
        // Claim a run of consecutive pieces that are neither stored nor in
        // flight, starting at `index`.
        let piece_bytes = entry.layout.piece_size().bytes();
        let run_pieces_max =
            (self.config.run_bytes_max / piece_bytes).clamp(1, u32::MAX as u64) as u32;
        let mut senders = Vec::new();
        let mut own = None;
        let mut next = index.0;
        let end = entry.layout.piece_count().min(want.end.max(index.0 + 1));
        while next < end && (next - index.0) < run_pieces_max {
            let k = PieceKey {
                object: entry.id,
                index: PieceIndex(next),
            };
            if next != index.0 && (inflight.contains_key(&k) || self.store.contains(&k)) {
                break;
            }
            let (sender, receiver) = watch::channel(None);
            if next == index.0 {
                own = Some(receiver.clone());
            }
            inflight.insert(k, receiver);
            senders.push((PieceIndex(next), sender));
            next += 1;
        }
        drop(inflight);
        let own = own.expect("the first piece of a run is always claimed");
        let claim = Claim {
            filler: self.clone(),
            object: entry.id,
            senders,
            relaying: want.relaying,
        };
        self.spawn_run(entry.clone(), claim);
        Lookup::Claimed(own)
    }
    /// Runs a claim to completion on its own task.
    fn spawn_run(self: &Arc<Self>, entry: Arc<ObjectEntry>, claim: Claim) {
        self.spawn_run_from(entry, claim, None);
    }

    fn spawn_run_from(
        self: &Arc<Self>,
        entry: Arc<ObjectEntry>,
        claim: Claim,
        first_source: Option<RunSource>,
    ) {
        let run: Pin<Box<dyn Future<Output = ()> + Send>> =
            Box::pin(self.clone().fill_run(entry, claim, first_source));
        tokio::spawn(run);
    }

    /// The path's shield above us (fill mode), or the origin when we are
    /// the shield.
    fn shield_source(&self, entry: &ObjectEntry, excluded: &[String]) -> Option<RunSource> {
        let mesh = self.mesh.as_ref()?;
        let view = mesh.node.view();
        let key = shoal_mesh::shield_key(&entry.path);
        let above = view.shields_above_self(&key);
        let source = match above
            .iter()
            .position(|m| !excluded.contains(&m.node_id) && mesh.usable(&m.node_id))
        {
            // A fallback shield (one above it failed) is asked as last
            // resort: only the path's first shield sends requesters to
            // relays, so a relay never waits on a cache below it in rank.
            Some(rank) => RunSource::Peer {
                member: above[rank].clone(),
                mode: PeerMode::Fill,
                last_resort: rank > 0,
            },
            None => RunSource::Origin,
        };
        Some(source)
    }

    /// Delivers every piece of `claim`: from siblings that hold them, else
    /// the shield, else (when this cache is the shield, or no shield
    /// answers) the origin. A sibling that fails or sends wrong bytes is
    /// left out and the rest of the run is fetched elsewhere.
    async fn fill_run(
        self: Arc<Self>,
        entry: Arc<ObjectEntry>,
        mut claim: Claim,
        mut first_source: Option<RunSource>,
    ) {
        let mut attempts = RunAttempts::default();
        while !claim.senders.is_empty() {
            if self.copy_carried(&entry, &mut claim).await {
                continue;
            }
            self.split_before_carried(&entry, &mut claim);
            let mut source = match first_source.take() {
                Some(source) => source,
                None => {
                    self.choose_source(
                        &entry,
                        &mut claim,
                        &attempts.excluded,
                        attempts.try_instead.as_deref(),
                    )
                    .await
                }
            };
            // A replaced version comes only from caches that hold it: the
            // shield and the origin serve the new one.
            let from_holder = matches!(
                source,
                RunSource::Peer {
                    mode: PeerMode::Have,
                    ..
                }
            );
            if entry.is_retired() && !from_holder {
                // Pieces the new version has too come through it.
                if self.copy_through_successor(&entry, &mut claim).await {
                    continue;
                }
                let first = claim.senders.first().map_or(PieceIndex(0), |s| s.0);
                fail_all(&mut claim, FillError::Retired(first));
                return;
            }
            // A run the shield took over comes back with the shield as its
            // source: a failure from then on is the shield's.
            if let Err(failure) = self.stream_run(&entry, &mut claim, &mut source).await {
                if let Err(error) =
                    self.after_failure(&entry, &mut claim, &source, failure, &mut attempts)
                {
                    fail_all(&mut claim, error);
                    return;
                }
            }
        }
        if entry.is_invalidated() {
            return;
        }
        if let Some(manifest) = entry.built_manifest() {
            if self.store.get_manifest(&entry.id).ok().flatten().is_none() {
                let _ = self.store.put_manifest(entry.id, manifest.encode());
            }
        }
    }

    /// What a failed stream from `source` changes for the rest of the run:
    /// a relay to try, a sibling left out (a failed shield also gives up
    /// relays for a while). `Err`: the run gives up with that error.
    fn after_failure(
        &self,
        entry: &ObjectEntry,
        claim: &mut Claim,
        source: &RunSource,
        failure: RunFailure,
        attempts: &mut RunAttempts,
    ) -> Result<(), FillError> {
        match failure {
            RunFailure::TryInstead(relay) => {
                self.stats.relay_redirects.fetch_add(1, Ordering::Relaxed);
                attempts.refusals += 1;
                tracing::debug!(path = %entry.path, %relay, "the shield sent this run to a relay");
                // Named again after it failed, or too often: the scheduler
                // asks as last resort.
                attempts.try_instead = Some(if attempts.refusals > REFUSALS_PER_RUN_MAX {
                    self.mesh
                        .as_ref()
                        .map_or(relay.clone(), |m| m.self_id().to_string())
                } else {
                    relay
                });
                Ok(())
            }
            RunFailure::Loop(error) => {
                // The sibling is fetching these pieces from us: someone
                // else, without giving up relays.
                attempts.try_instead = None;
                if let RunSource::Peer { member, .. } = source {
                    tracing::debug!(peer = %member.node_id, path = %entry.path, error = %Chain(&error), "a sibling fetches these pieces from us; trying elsewhere");
                    attempts.excluded.push(member.node_id.clone());
                }
                attempts.within_limit(error)
            }
            RunFailure::Retry(error) => {
                attempts.try_instead = None;
                self.stats.peer_errors.fetch_add(1, Ordering::Relaxed);
                if let RunSource::Peer { member, mode, .. } = source {
                    tracing::warn!(peer = %member.node_id, path = %entry.path, error = %Chain(&error), "peer fetch failed; trying elsewhere");
                    attempts.excluded.push(member.node_id.clone());
                    // A shield failed: the relay responses this cache
                    // serves end (their requesters ask their own shields)
                    // and it uses no relay for a while, so no wait can
                    // close a cycle through a fallback shield. A relay's
                    // own claim then carries on as an ordinary one for the
                    // readers waiting on it here.
                    if *mode == PeerMode::Fill {
                        if !entry.relays_off(RELAYS_OFF_MS) {
                            tracing::info!(path = %entry.path, shield = %member.node_id, "a shield failed: flash-crowd relays given up for this object for a while");
                            entry.lose_relays();
                        }
                        claim.relaying = false;
                    }
                }
                attempts.within_limit(error)
            }
            RunFailure::Fatal(error) => Err(error),
        }
    }

    /// Delivers the pieces at the front of `claim` that an earlier version
    /// of the path holds with the same hash: copied here, not fetched.
    /// True if any was.
    async fn copy_carried(self: &Arc<Self>, entry: &Arc<ObjectEntry>, claim: &mut Claim) -> bool {
        let mut copied = false;
        while let Some(&(index, _)) = claim.senders.first() {
            let Some(from) = entry.take_carried(index) else {
                break;
            };
            // Gone meanwhile (evicted): fetched like any piece.
            let Ok(Some(old)) = self.store.get(from).await else {
                break;
            };
            match entry.accept_piece(index, old.data().clone()) {
                Ok(piece) => {
                    self.stats
                        .pieces_carried_over
                        .fetch_add(1, Ordering::Relaxed);
                    self.deliver(entry, claim, piece);
                    copied = true;
                }
                Err(_) => break,
            }
        }
        copied
    }

    /// For a retired version: delivers the front pieces of `claim` that
    /// the version replacing it has too, fetched (or read) through it and
    /// verified against this version's manifest. True if any was.
    async fn copy_through_successor(
        self: &Arc<Self>,
        entry: &Arc<ObjectEntry>,
        claim: &mut Claim,
    ) -> bool {
        let mut copied = false;
        while let Some(&(index, _)) = claim.senders.first() {
            let Some((successor, there)) = entry.through_successor(index) else {
                break;
            };
            let Ok(piece) = Box::pin(self.piece(&successor, there)).await else {
                break;
            };
            match entry.accept_piece(index, piece.data().clone()) {
                Ok(piece) => {
                    self.deliver(entry, claim, piece);
                    copied = true;
                }
                Err(_) => break,
            }
        }
        copied
    }

    /// Ends `claim` before its first piece (after the front) that can be
    /// copied from an earlier version; the rest runs on its own task.
    fn split_before_carried(self: &Arc<Self>, entry: &Arc<ObjectEntry>, claim: &mut Claim) {
        let first_carried = claim
            .senders
            .iter()
            .skip(1)
            .position(|(index, _)| entry.is_carried(*index));
        if let Some(position) = first_carried {
            self.split_claim(entry, claim, position + 1);
        }
    }

    /// Picks where the first pieces of `claim` come from (the pure
    /// [`crate::schedule::choose_run`] decides); shortens the claim to what
    /// that source gives (the rest runs on its own task, so a large read
    /// spreads over several siblings and the shield is asked block by
    /// block).
    async fn choose_source(
        self: &Arc<Self>,
        entry: &Arc<ObjectEntry>,
        claim: &mut Claim,
        excluded: &[String],
        try_instead: Option<&str>,
    ) -> RunSource {
        let Some(mesh) = &self.mesh else {
            return RunSource::Origin;
        };
        let Some(&(first, _)) = claim.senders.first() else {
            return RunSource::Origin;
        };
        let view = mesh.node.view();
        let usable = |m: &&Member| !excluded.contains(&m.node_id) && mesh.usable(&m.node_id);
        // Bytes from a sibling are checked against a hash we got from the
        // manifest or the shield, never one the sibling could choose.
        let hash_known =
            |index: u32| entry.manifest.is_some() || entry.learnt_hash(PieceIndex(index)).is_some();
        if !hash_known(first.0) {
            self.refresh_hashes_from_shield(entry).await;
        }
        let own_region = view.member(&view.self_id).map(|m| m.region.clone());
        let shield = self.shield_source(entry, excluded);
        let shield_id = match &shield {
            Some(RunSource::Peer { member, .. }) => Some(member.node_id.clone()),
            _ => None,
        };
        let sets = if hash_known(first.0) {
            self.holder_piece_sets(mesh, &view, entry, &usable, shield_id.as_deref())
                .await
        } else {
            Vec::new()
        };
        let holders: Vec<crate::schedule::Holder> = sets
            .iter()
            .map(|(m, set)| crate::schedule::Holder {
                node_id: &m.node_id,
                stored: set,
                runs_in_flight: self.peer_load(&m.node_id),
                capacity_weight: 1,
                near: Some(&m.region) == own_region.as_ref(),
                rtt_bucket: mesh
                    .rtt_ms(&m.node_id)
                    .map(|ms| (ms / RTT_BUCKET_MS) as u64)
                    .unwrap_or(0),
                spare_fraction: m.spare_fraction(),
                cost_per_gb_microusd: m.cost_per_gb_microusd,
            })
            .collect();
        let has_shield = matches!(shield, Some(RunSource::Peer { .. }));
        let piece_bytes = entry.layout.piece_size().bytes();
        let limits = crate::schedule::FillLimits::for_piece_size(
            piece_bytes,
            RELAY_BLOCK_BYTES,
            HAVE_RUN_BYTES_MAX,
            SHIELD_FANOUT_MAX,
        );
        let context = crate::schedule::RunContext {
            object: &entry.id,
            piece_count: entry.layout.piece_count(),
            first: first.0,
            claimed: claim.senders.len() as u32,
            self_id: mesh.self_id(),
            has_shield,
            hash_known: &hash_known,
            holders: &holders,
            try_instead,
            relaying: claim.relaying,
            relays_off: entry.relays_off(RELAYS_OFF_MS),
            excluded,
        };
        let choice = crate::schedule::choose_run(&context, &limits);
        tracing::debug!(
            node = mesh.self_id(),
            path = %entry.path,
            first = first.0,
            count = choice.count,
            source = ?choice.source,
            relaying = claim.relaying,
            ?excluded,
            "run scheduled"
        );
        self.split_claim(entry, claim, choice.count as usize);
        self.run_source(choice.source, &view, shield)
    }

    /// The piece sets of up to [`HOLDERS_ASKED_MAX`] usable siblings that
    /// hold the object (not the shield: it is asked in `fill` mode only,
    /// where it can send a crowd to relays), least busy first.
    async fn holder_piece_sets(
        &self,
        mesh: &MeshLink,
        view: &shoal_mesh::MeshView,
        entry: &ObjectEntry,
        usable: &(dyn Fn(&&Member) -> bool + Sync),
        shield_id: Option<&str>,
    ) -> Vec<(Member, Arc<shoal_core::bitfield::PieceSet>)> {
        let mut holders: Vec<&Member> = view
            .holders(&entry.id)
            .into_iter()
            .filter(usable)
            .filter(|m| Some(m.node_id.as_str()) != shield_id)
            .collect();
        // Ask the least busy first (their piece sets are cached briefly).
        holders.sort_by_key(|m| self.peer_load(&m.node_id));
        let mut sets = Vec::new();
        for member in holders.into_iter().take(HOLDERS_ASKED_MAX) {
            if let Some(set) = mesh.piece_set(member, &entry.id).await {
                sets.push((member.clone(), set));
            }
        }
        sets
    }

    /// The scheduler's choice as a source to open: a member of the view
    /// in the mode the choice implies (a member gone from the view
    /// meanwhile: the shield, as last resort).
    fn run_source(
        &self,
        choice: crate::schedule::RunSource,
        view: &shoal_mesh::MeshView,
        shield: Option<RunSource>,
    ) -> RunSource {
        match choice {
            crate::schedule::RunSource::Origin => RunSource::Origin,
            crate::schedule::RunSource::Holder(node) => match view.member(&node) {
                Some(member) => RunSource::Peer {
                    member: member.clone(),
                    mode: PeerMode::Have,
                    last_resort: false,
                },
                None => shield.unwrap_or(RunSource::Origin),
            },
            crate::schedule::RunSource::Relay(node) => match view.member(&node) {
                Some(member) => {
                    self.stats
                        .peer_fetches_relay
                        .fetch_add(1, Ordering::Relaxed);
                    RunSource::Peer {
                        member: member.clone(),
                        mode: PeerMode::Relay,
                        last_resort: false,
                    }
                }
                // Gone from the view meanwhile: the shield, as last resort.
                None => match shield {
                    Some(RunSource::Peer { member, mode, .. }) => RunSource::Peer {
                        member,
                        mode,
                        last_resort: true,
                    },
                    other => other.unwrap_or(RunSource::Origin),
                },
            },
            crate::schedule::RunSource::Shield { last_resort } => match shield {
                Some(RunSource::Peer {
                    member,
                    mode,
                    last_resort: fallback,
                }) => RunSource::Peer {
                    member,
                    mode,
                    last_resort: last_resort || fallback,
                },
                other => other.unwrap_or(RunSource::Origin),
            },
        }
    }

    /// An object without a published manifest whose hashes we lack: ask
    /// the shield (and only the shield: it learnt them from the origin)
    /// what it knows so far, at most every [`HASH_REFRESH_MS`] per entry.
    /// Without a shield above us, the origin is the reference.
    pub async fn refresh_hashes_from_shield(&self, entry: &Arc<ObjectEntry>) {
        let Some(mesh) = &self.mesh else { return };
        if entry.manifest.is_some() || !entry.may_refresh_hashes(HASH_REFRESH_MS) {
            return;
        }
        let view = mesh.node.view();
        let key = shoal_mesh::shield_key(&entry.path);
        let Some(shield) = view
            .shields_above_self(&key)
            .into_iter()
            .find(|m| mesh.usable(&m.node_id))
            .cloned()
        else {
            return;
        };
        match mesh.object(&shield, &entry.uri_path, PeerMode::Have).await {
            Ok(PeerObject::Cached {
                record,
                manifest_b64,
                hashes_hex,
            }) if record.id == entry.record.id => {
                let built = crate::peer::decode_manifest(manifest_b64.as_deref())
                    .ok()
                    .flatten();
                crate::peer::learn_hashes(entry, built.as_ref(), &hashes_hex);
            }
            Ok(_) => {}
            Err(error) => {
                tracing::debug!(peer = %shield.node_id, error = %Chain(&error), "no hashes from the shield");
            }
        }
    }

    fn split_claim(self: &Arc<Self>, entry: &Arc<ObjectEntry>, claim: &mut Claim, keep: usize) {
        if keep == 0 || keep >= claim.senders.len() {
            return;
        }
        let rest = Claim {
            filler: self.clone(),
            object: claim.object,
            senders: claim.senders.split_off(keep),
            relaying: claim.relaying,
        };
        self.spawn_run(entry.clone(), rest);
    }

    fn peer_load(&self, node_id: &str) -> u32 {
        lock(&self.peer_load).get(node_id).copied().unwrap_or(0)
    }

    /// Streams the claim's pieces from one source, delivering each as it
    /// verifies. Delivered pieces leave the claim, so after a `Retry` the
    /// rest can be fetched elsewhere. A run from a relay or holder that
    /// turns out slow is taken over by the shield when the shield would be
    /// much sooner ([`crate::schedule::switch_eta_ms`]).
    async fn stream_run(
        self: &Arc<Self>,
        entry: &Arc<ObjectEntry>,
        claim: &mut Claim,
        source: &mut RunSource,
    ) -> Result<(), RunFailure> {
        let Some(mut open) = self.open_run(entry, claim, source.clone(), None).await? else {
            return Ok(());
        };
        // Body bytes past the last piece (a slice of the chunk they came
        // in: not copied until the next piece takes them).
        let mut carry = Bytes::new();
        // Delivered pieces leave `claim.senders`, so the next one is always first.
        while let Some(&(index, _)) = claim.senders.first() {
            let data = self.read_piece(entry, &mut open, &mut carry, index).await?;
            self.verify_and_deliver(entry, claim, &open.source, index, data)?;
            if let Some(shield) = self.switch_if_slow(entry, claim, &mut open).await {
                *source = shield.source.clone();
                open = shield;
                // Bytes of the old source's next piece: the shield's body
                // starts at that piece.
                carry = Bytes::new();
            }
        }
        Ok(())
    }

    /// Opens `source` for the claim's pieces (`switch_from_eta_ms`: as a
    /// switch the shield may decline, [`PeerError::Declined`]). `None`: an
    /// empty claim.
    async fn open_run(
        self: &Arc<Self>,
        entry: &Arc<ObjectEntry>,
        claim: &Claim,
        source: RunSource,
        switch_from_eta_ms: Option<u64>,
    ) -> Result<Option<OpenRun>, RunFailure> {
        let (Some(first), Some(last)) = (
            claim.senders.first().map(|s| s.0),
            claim.senders.last().map(|s| s.0),
        ) else {
            return Ok(None);
        };
        let span = match (
            entry.layout.piece_span(first),
            entry.layout.piece_span(last),
        ) {
            (Some(a), Some(b)) => ByteSpan::new(a.start(), b.end()),
            _ => None,
        };
        let Some(span) = span else {
            return Err(RunFailure::Fatal(FillError::Abandoned));
        };
        let load = match &source {
            RunSource::Peer { member, .. } => {
                Some(PeerLoadGuard::new(self.clone(), &member.node_id))
            }
            RunSource::Origin => None,
        };
        // While this run streams from a sibling, a request from that
        // sibling for these pieces would wait on itself. (A switch the
        // shield may decline is recorded once it is taken, so a declined
        // one leaves the current source's record alone.)
        let mut sources = match switch_from_eta_ms {
            None => self.record_sources(entry, claim, &source),
            Some(_) => None,
        };
        let asked = std::time::Instant::now();
        let body = match &source {
            RunSource::Origin => {
                let body = self.open_origin(entry, span).await?;
                self.stats
                    .fill_latency_origin
                    .observe(asked.elapsed().as_secs_f64());
                body
            }
            RunSource::Peer {
                member,
                mode,
                last_resort,
            } => {
                let mesh = self
                    .mesh
                    .as_ref()
                    .ok_or(RunFailure::Fatal(FillError::Abandoned))?;
                if switch_from_eta_ms.is_none() {
                    match mode {
                        PeerMode::Have => &self.stats.peer_fetches_have,
                        PeerMode::Fill | PeerMode::Relay => &self.stats.peer_fetches_shield,
                    }
                    .fetch_add(1, Ordering::Relaxed);
                }
                let opened = mesh
                    .data(
                        member,
                        &entry.id,
                        &entry.uri_path,
                        span,
                        entry.layout.object_size(),
                        crate::peer::DataAsk {
                            mode: *mode,
                            last_resort: *last_resort,
                            switch_from_eta_ms,
                        },
                    )
                    .await;
                match opened {
                    Ok(body) => {
                        self.stats
                            .fill_latency_peer
                            .observe(asked.elapsed().as_secs_f64());
                        body
                    }
                    // A switch that did not happen changes nothing: the
                    // run carries on with its source.
                    Err(error) if switch_from_eta_ms.is_some() => {
                        return Err(RunFailure::Retry(FillError::peer(error)));
                    }
                    Err(error) => {
                        mesh.forget_piece_set(&member.node_id, &entry.id);
                        return Err(peer_failure(entry, *mode, error));
                    }
                }
            }
        };
        if switch_from_eta_ms.is_some() {
            sources = self.record_sources(entry, claim, &source);
        }
        Ok(Some(OpenRun {
            source,
            body,
            _load: load,
            _sources: sources,
            first_byte_at: None,
            received_bytes: 0,
            last_switch_ask: std::time::Instant::now(),
        }))
    }

    /// Records `source` as the sibling the claim's pieces stream from, for
    /// as long as the guard lives (not for a holder: it only serves what
    /// it has, so it never asks us for them).
    fn record_sources(
        self: &Arc<Self>,
        entry: &ObjectEntry,
        claim: &Claim,
        source: &RunSource,
    ) -> Option<SourcesGuard> {
        let RunSource::Peer { member, mode, .. } = source else {
            return None;
        };
        if *mode == PeerMode::Have {
            return None;
        }
        let keys: Vec<PieceKey> = claim
            .senders
            .iter()
            .map(|(index, _)| PieceKey {
                object: entry.id,
                index: *index,
            })
            .collect();
        let mut sources = lock(&self.sources);
        for key in &keys {
            sources.insert(*key, member.node_id.clone());
        }
        Some(SourcesGuard {
            filler: self.clone(),
            keys,
            node_id: member.node_id.clone(),
        })
    }

    /// Reads piece `index` (the next one of the run) from the open body.
    async fn read_piece(
        &self,
        entry: &Arc<ObjectEntry>,
        open: &mut OpenRun,
        carry: &mut Bytes,
        index: PieceIndex,
    ) -> Result<Bytes, RunFailure> {
        let from_origin = matches!(open.source, RunSource::Origin);
        let want = entry.layout.piece_len(index) as usize;
        // One allocation of the piece's size and one copy of each byte
        // (a buffer grown chunk by chunk was reallocated and copied
        // about log2(piece / chunk) times per piece: 5 % of a cold
        // miss's CPU).
        let mut buffer = BytesMut::with_capacity(want);
        let taken = carry.len().min(want);
        buffer.extend_from_slice(&carry.split_to(taken));
        while buffer.len() < want {
            let chunk = match open.body.chunk().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => {
                    let error =
                        body_error(&open.source, shoal_proto::reason("the body ended early"));
                    return Err(self.body_failure(from_origin, error));
                }
                Err(error) => {
                    let error = if from_origin {
                        FillError::from(OriginError::from(error))
                    } else {
                        body_error(&open.source, Arc::new(error))
                    };
                    tracing::warn!(path = %entry.path, error = %Chain(&error), "body read failed");
                    return Err(self.body_failure(from_origin, error));
                }
            };
            open.first_byte_at
                .get_or_insert_with(std::time::Instant::now);
            open.received_bytes += chunk.len() as u64;
            let counter = if from_origin {
                &self.stats.origin_bytes
            } else {
                &self.stats.peer_bytes_received
            };
            counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            if let RunSource::Peer { mode, .. } = &open.source {
                match mode {
                    PeerMode::Have => &self.stats.peer_bytes_received_from_holders,
                    PeerMode::Relay => &self.stats.peer_bytes_received_from_relays,
                    PeerMode::Fill => &self.stats.peer_bytes_received_from_shields,
                }
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
            let mut chunk = chunk;
            let needed = want - buffer.len();
            if chunk.len() > needed {
                *carry = chunk.split_off(needed);
            }
            buffer.extend_from_slice(&chunk);
        }
        Ok(buffer.freeze())
    }

    /// Checks piece `index` from `source` against its reference hash and
    /// hands it to the claim's waiters; a mismatch is the source's fault.
    fn verify_and_deliver(
        self: &Arc<Self>,
        entry: &Arc<ObjectEntry>,
        claim: &mut Claim,
        source: &RunSource,
        index: PieceIndex,
        data: Bytes,
    ) -> Result<(), RunFailure> {
        // A sibling's bytes are checked against a hash that came from
        // the manifest, the origin or the shield; never learnt from
        // the sibling itself.
        if matches!(
            source,
            RunSource::Peer {
                mode: PeerMode::Have | PeerMode::Relay,
                ..
            }
        ) && entry.manifest.is_none()
            && entry.learnt_hash(index).is_none()
        {
            return Err(RunFailure::Retry(body_error(
                source,
                shoal_proto::reason(format!(
                    "no reference hash yet for piece {} it sent",
                    index.0
                )),
            )));
        }
        let error = match entry.accept_piece(index, data) {
            Ok(piece) => {
                self.deliver(entry, claim, piece);
                return Ok(());
            }
            Err(error) => error,
        };
        Err(match source {
            RunSource::Origin => {
                self.stats.corrupt_pieces.fetch_add(1, Ordering::Relaxed);
                if entry.manifest.is_none() {
                    // The reference hashes of this unpublished
                    // version are in doubt: start it afresh.
                    entry.mark_hash_conflict();
                    tracing::warn!(path = %entry.path, error = %Chain(&error), "piece from origin does not match what the origin sent before (the file changed in place): not stored, not served; ingesting it afresh");
                } else if entry.mark_bad_piece(index) {
                    tracing::warn!(path = %entry.path, error = %Chain(&error), "piece from origin does not match the published manifest (the file changed without `shoal publish`, or was damaged): not stored, not served; the path is resolved again");
                }
                entry.invalidate();
                RunFailure::Fatal(FillError::Corrupt(index))
            }
            RunSource::Peer { member, .. } => {
                tracing::error!(peer = %member.node_id, path = %entry.path, error = %Chain(&error), "piece from a peer failed verification; not stored, not served");
                if let Some(mesh) = &self.mesh {
                    mesh.report_corrupt(&member.node_id);
                    mesh.forget_piece_set(&member.node_id, &entry.id);
                }
                RunFailure::Retry(FillError::Peer {
                    node: member.node_id.clone(),
                    cause: Arc::new(error),
                })
            }
        })
    }

    /// For a run from a relay or holder: when the rest would take long at
    /// the rate it delivers, asks the path's first shield to take it over
    /// (the pure [`crate::schedule::switch_eta_ms`] and the shield's desk
    /// decide). The shield's body when it did; `None`: carry on as before.
    async fn switch_if_slow(
        self: &Arc<Self>,
        entry: &Arc<ObjectEntry>,
        claim: &Claim,
        open: &mut OpenRun,
    ) -> Option<OpenRun> {
        if !matches!(
            open.source,
            RunSource::Peer {
                mode: PeerMode::Have | PeerMode::Relay,
                ..
            }
        ) || claim.senders.is_empty()
            // A retired version comes only from holders: the shield serves
            // the new one.
            || entry.is_retired()
        {
            return None;
        }
        let now = std::time::Instant::now();
        if now.duration_since(open.last_switch_ask).as_millis()
            < u128::from(crate::schedule::SWITCH_ASK_EVERY_MS)
        {
            return None;
        }
        let receiving_ms = open
            .first_byte_at
            .map_or(0, |at| now.duration_since(at).as_millis() as u64);
        let remaining_bytes: u64 = claim
            .senders
            .iter()
            .map(|(index, _)| entry.layout.piece_len(*index))
            .sum();
        let eta_ms =
            crate::schedule::switch_eta_ms(open.received_bytes, remaining_bytes, receiving_ms)?;
        open.last_switch_ask = now;
        // Only the path's first shield (a fallback one is asked as last
        // resort, and we are not the shield).
        let shield = match self.shield_source(entry, &[])? {
            RunSource::Peer {
                last_resort: false,
                member,
                mode,
            } => RunSource::Peer {
                member,
                mode,
                last_resort: false,
            },
            _ => return None,
        };
        // The shield stores what it takes over, so it answers at once; the
        // slow run is not read meanwhile, so its wait is kept short.
        let asked = tokio::time::timeout(
            std::time::Duration::from_millis(SWITCH_ANSWER_MS),
            self.open_run(entry, claim, shield, Some(eta_ms)),
        )
        .await;
        let Ok(asked) = asked else {
            tracing::debug!(path = %entry.path, "the shield did not answer a switch in time");
            return None;
        };
        match asked {
            Ok(Some(taken_over)) => {
                self.stats
                    .switches_to_shield
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(path = %entry.path, eta_ms, "a slow run moved to the shield");
                Some(taken_over)
            }
            Ok(None) => None,
            Err(failure) => {
                if let RunFailure::Retry(error)
                | RunFailure::Fatal(error)
                | RunFailure::Loop(error) = &failure
                {
                    tracing::debug!(path = %entry.path, error = %Chain(error), "the shield did not take the run over");
                }
                None
            }
        }
    }

    async fn open_origin(
        &self,
        entry: &Arc<ObjectEntry>,
        span: ByteSpan,
    ) -> Result<crate::origin_client::RangeBody, RunFailure> {
        self.stats.origin_requests.fetch_add(1, Ordering::Relaxed);
        let body = match self
            .origin
            .get_range(&entry.uri_path, span, entry.layout.object_size())
            .await
        {
            Ok(body) => body,
            Err(error) => {
                tracing::warn!(path = %entry.path, error = %Chain(&error), "origin range fetch failed");
                // The version we hold may be gone: re-probe on the next request.
                let gone = matches!(&error, OriginError::Status(s) if *s == http::StatusCode::NOT_FOUND || *s == http::StatusCode::GONE);
                if gone || matches!(error, OriginError::Protocol(_)) {
                    entry.invalidate();
                }
                self.stats.origin_errors.fetch_add(1, Ordering::Relaxed);
                return Err(RunFailure::Fatal(FillError::from(error)));
            }
        };
        if !entry.matches_validators(&body.headers) {
            tracing::warn!(path = %entry.path, "origin validators changed during fill; invalidating");
            entry.invalidate();
            return Err(RunFailure::Fatal(FillError::VersionChanged));
        }
        Ok(body)
    }

    fn body_failure(&self, from_origin: bool, error: FillError) -> RunFailure {
        if from_origin {
            self.stats.origin_errors.fetch_add(1, Ordering::Relaxed);
            RunFailure::Fatal(error)
        } else {
            RunFailure::Retry(error)
        }
    }

    /// Whether some of `pieces` of `object` are in flight here from
    /// `node` (so `node` must not wait on us for them).
    pub fn fed_by(
        &self,
        object: &shoal_core::ObjectId,
        pieces: std::ops::RangeInclusive<u32>,
        node: &str,
    ) -> bool {
        let sources = lock(&self.sources);
        if sources.is_empty() {
            return false;
        }
        pieces.into_iter().any(|index| {
            sources
                .get(&PieceKey {
                    object: *object,
                    index: PieceIndex(index),
                })
                .is_some_and(|source| source == node)
        })
    }

    /// Hands a verified piece to its waiters and stores it.
    fn deliver(
        self: &Arc<Self>,
        entry: &Arc<ObjectEntry>,
        claim: &mut Claim,
        piece: VerifiedPiece,
    ) {
        let (index, sender) = claim.senders.remove(0);
        lock(&self.sources).remove(&PieceKey {
            object: entry.id,
            index,
        });
        sender.send_replace(Some(Ok(piece.clone())));
        // Writing to disk must not hold up reading the source: the slot
        // stays in flight (waiters already have the piece) until the store
        // has it, then is released.
        let filler = self.clone();
        let object = entry.id;
        let piece_size = entry.layout.piece_size();
        tokio::spawn(async move {
            // The store logs when it stops (and starts again) being able
            // to write; the waiters have the piece either way.
            if let Err(error) = filler.store.put(object, piece_size, piece).await {
                tracing::debug!(error = %Chain(&error), "could not store a verified piece");
            }
            lock(&filler.inflight).remove(&PieceKey { object, index });
            drop(sender);
        });
    }
}

/// Where a run of pieces is fetched from.
// One per run of pieces in flight, never stored in bulk: boxing the
// member would cost an allocation per run for no memory saved.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
enum RunSource {
    Origin,
    Peer {
        member: Member,
        mode: PeerMode,
        /// A `fill` request the shield must not send to a relay.
        last_resort: bool,
    },
}

/// What a run has tried so far.
#[derive(Default)]
struct RunAttempts {
    /// Sources that failed for it.
    excluded: Vec<String>,
    /// The relay the shield named for it, and how often it did.
    try_instead: Option<String>,
    refusals: u32,
}

impl RunAttempts {
    /// `Err(error)` once more than [`PEER_ATTEMPTS_MAX`] sources failed.
    fn within_limit(&self, error: FillError) -> Result<(), FillError> {
        if self.excluded.len() > PEER_ATTEMPTS_MAX {
            Err(error)
        } else {
            Ok(())
        }
    }
}

/// A run's source while it is being read.
struct OpenRun {
    source: RunSource,
    body: crate::origin_client::RangeBody,
    _load: Option<PeerLoadGuard>,
    _sources: Option<SourcesGuard>,
    /// When the body's first bytes came, and how many since (the run's
    /// rate, for a switch).
    first_byte_at: Option<std::time::Instant>,
    received_bytes: u64,
    last_switch_ask: std::time::Instant,
}

/// Whose fault a broken body is: the origin's or the sibling's.
fn body_error(source: &RunSource, cause: Cause) -> FillError {
    match source {
        RunSource::Origin => FillError::Origin {
            status: http::StatusCode::BAD_GATEWAY,
            cause,
        },
        RunSource::Peer { member, .. } => FillError::Peer {
            node: member.node_id.clone(),
            cause,
        },
    }
}

/// Why a run stopped before delivering everything.
enum RunFailure {
    /// The shield sent the run to this relay (a flash crowd).
    TryInstead(String),
    /// The sibling is fetching these pieces from us (508).
    Loop(FillError),
    /// The source failed; the rest may come from elsewhere.
    Retry(FillError),
    /// Every source would fail the same way (the object changed, the origin
    /// sent wrong bytes, the object is gone).
    Fatal(FillError),
}

/// Classifies a failed peer request.
fn peer_failure(entry: &ObjectEntry, mode: PeerMode, error: PeerError) -> RunFailure {
    match &error {
        // Only a shield (asked in `fill` mode) may send us elsewhere.
        PeerError::TryInstead(_, relay) if mode == PeerMode::Fill => {
            return RunFailure::TryInstead(relay.clone())
        }
        PeerError::Loop(_) => return RunFailure::Loop(FillError::peer(error)),
        _ => {}
    }
    match (mode, error.status()) {
        // The shield says the object is gone, or holds another version.
        (PeerMode::Fill, Some(status)) if error.is_definitive() => {
            entry.invalidate();
            RunFailure::Fatal(FillError::Origin {
                status,
                cause: Arc::new(error),
            })
        }
        (PeerMode::Fill, Some(http::StatusCode::CONFLICT)) => {
            entry.invalidate();
            RunFailure::Fatal(FillError::VersionChanged)
        }
        _ => RunFailure::Retry(FillError::peer(error)),
    }
}

/// Forgets the sources of a run's pieces when it ends.
struct SourcesGuard {
    filler: Arc<Filler>,
    keys: Vec<PieceKey>,
    node_id: String,
}

impl Drop for SourcesGuard {
    fn drop(&mut self) {
        let mut sources = lock(&self.filler.sources);
        for key in &self.keys {
            // Only our own entries: a run that moved to the shield has
            // recorded the shield for the same pieces.
            if sources.get(key) == Some(&self.node_id) {
                sources.remove(key);
            }
        }
    }
}

/// Counts runs in flight from one peer while alive.
struct PeerLoadGuard {
    filler: Arc<Filler>,
    node_id: String,
}

impl PeerLoadGuard {
    fn new(filler: Arc<Filler>, node_id: &str) -> Self {
        *lock(&filler.peer_load)
            .entry(node_id.to_string())
            .or_default() += 1;
        Self {
            filler,
            node_id: node_id.to_string(),
        }
    }
}

impl Drop for PeerLoadGuard {
    fn drop(&mut self) {
        let mut load = lock(&self.filler.peer_load);
        if let Some(count) = load.get_mut(&self.node_id) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                load.remove(&self.node_id);
            }
        }
    }
}

fn fail_all(claim: &mut Claim, error: FillError) {
    for (_, sender) in &claim.senders {
        sender.send_replace(Some(Err(error.clone())));
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
