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
//! A fill task fetches a run of consecutive missing pieces with one range
//! request, so a cold sequential read streams from the origin at the speed of
//! one plain download, with one piece of latency for verification.

use crate::object::ObjectEntry;
use crate::origin_client::{OriginClient, OriginError};
use crate::stats::CacheStats;
use bytes::BytesMut;
use shoal_core::{ByteSpan, PieceIndex, VerifiedPiece};
use shoal_store::{PieceKey, Store};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// The outcome every waiter of a piece sees.
#[derive(Clone, Debug, thiserror::Error)]
pub enum FillError {
    #[error("origin: {0}")]
    Origin(String, http::StatusCode),
    #[error("piece {0} failed verification")]
    Corrupt(PieceIndex),
    #[error("object changed at the origin while it was being fetched")]
    VersionChanged,
    #[error("the fill task ended without delivering the piece")]
    Abandoned,
    #[error("store: {0}")]
    Store(String),
}

impl FillError {
    pub fn client_status(&self) -> http::StatusCode {
        match self {
            FillError::Origin(_, status) => *status,
            _ => http::StatusCode::BAD_GATEWAY,
        }
    }
}

impl From<OriginError> for FillError {
    fn from(error: OriginError) -> Self {
        let status = error.client_status();
        FillError::Origin(error.to_string(), status)
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
}

/// Pieces claimed by one fill task; whatever it has not delivered when it
/// ends (error, panic, cancellation) is released and its waiters woken.
struct Claim {
    filler: Arc<Filler>,
    object: shoal_core::ObjectId,
    senders: Vec<(PieceIndex, watch::Sender<SlotValue>)>,
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
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            origin,
            stats,
            config,
            inflight: Mutex::new(HashMap::new()),
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
                .map_err(|e| FillError::Store(e.to_string()))?
            {
                return Ok(piece);
            }
            let mut slot = match self.lookup_or_claim(entry, index) {
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
    pub fn prefetch(self: &Arc<Self>, entry: &Arc<ObjectEntry>, index: PieceIndex) {
        if index.0 >= entry.layout.piece_count() {
            return;
        }
        let _ = self.lookup_or_claim(entry, index);
    }

    fn lookup_or_claim(self: &Arc<Self>, entry: &Arc<ObjectEntry>, index: PieceIndex) -> Lookup {
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
        while next < entry.layout.piece_count() && (next - index.0) < run_pieces_max {
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
        };
        let filler = self.clone();
        let entry = entry.clone();
        tokio::spawn(async move { filler.fill_run(entry, claim).await });
        Lookup::Claimed(own)
    }

    async fn fill_run(self: Arc<Self>, entry: Arc<ObjectEntry>, mut claim: Claim) {
        let (Some(first), Some(last)) = (
            claim.senders.first().map(|s| s.0),
            claim.senders.last().map(|s| s.0),
        ) else {
            return;
        };
        let span = match (
            entry.layout.piece_span(first),
            entry.layout.piece_span(last),
        ) {
            (Some(a), Some(b)) => ByteSpan::new(a.start(), b.end()),
            _ => None,
        };
        let Some(span) = span else { return };
        self.stats.origin_requests.fetch_add(1, Ordering::Relaxed);
        let uri = entry.uri_path.clone();
        let mut body = match self
            .origin
            .get_range(&uri, span, entry.layout.object_size())
            .await
        {
            Ok(body) => body,
            Err(error) => {
                tracing::warn!(path = %entry.path, %error, "origin range fetch failed");
                // The version we hold may be gone: re-probe on the next request.
                let gone = matches!(&error, OriginError::Status(s) if *s == http::StatusCode::NOT_FOUND || *s == http::StatusCode::GONE);
                if gone || matches!(error, OriginError::Protocol(_)) {
                    entry.invalidate();
                }
                self.stats.origin_errors.fetch_add(1, Ordering::Relaxed);
                fail_all(&mut claim, FillError::from(error));
                return;
            }
        };
        if !entry.matches_validators(&body.headers) {
            tracing::warn!(path = %entry.path, "origin validators changed during fill; invalidating");
            entry.invalidate();
            fail_all(&mut claim, FillError::VersionChanged);
            return;
        }
        let mut buffer = BytesMut::new();
        // Delivered pieces leave `claim.senders`, so the next one is always first.
        while let Some(&(index, _)) = claim.senders.first() {
            let want = entry.layout.piece_len(index) as usize;
            while buffer.len() < want {
                match body.chunk().await {
                    Ok(Some(chunk)) => {
                        self.stats
                            .origin_bytes
                            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                        buffer.extend_from_slice(&chunk);
                    }
                    Ok(None) => {
                        self.stats.origin_errors.fetch_add(1, Ordering::Relaxed);
                        fail_all(
                            &mut claim,
                            FillError::Origin(
                                "origin closed the body early".into(),
                                http::StatusCode::BAD_GATEWAY,
                            ),
                        );
                        return;
                    }
                    Err(error) => {
                        tracing::warn!(path = %entry.path, %error, "origin body failed");
                        self.stats.origin_errors.fetch_add(1, Ordering::Relaxed);
                        fail_all(&mut claim, FillError::from(error));
                        return;
                    }
                }
            }
            let data = buffer.split_to(want).freeze();
            match entry.accept_piece(index, data) {
                Ok(piece) => {
                    let (index, sender) = claim.senders.remove(0);
                    sender.send_replace(Some(Ok(piece.clone())));
                    // Writing to disk must not hold up reading the origin:
                    // the slot stays in flight (waiters already have the
                    // piece) until the store has it, then is released.
                    let filler = self.clone();
                    let object = entry.id;
                    let piece_size = entry.layout.piece_size();
                    tokio::spawn(async move {
                        if let Err(error) = filler.store.put(object, piece_size, piece).await {
                            tracing::error!(%error, "could not store a verified piece");
                        }
                        lock(&filler.inflight).remove(&PieceKey { object, index });
                        drop(sender);
                    });
                }
                Err(error) => {
                    self.stats.corrupt_pieces.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(path = %entry.path, %error, "piece from origin failed verification; not stored, not served");
                    entry.invalidate();
                    fail_all(&mut claim, FillError::Corrupt(index));
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
}

fn fail_all(claim: &mut Claim, error: FillError) {
    for (_, sender) in &claim.senders {
        sender.send_replace(Some(Err(error.clone())));
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
