//! Warming: fill a whole object into this cache ahead of demand
//! (`POST /_shoal/warm/<path>`, signed like inter-cache requests; `shoal
//! warm` sends it). A publisher pre-positions a release on every cache.
//!
//! A warm-up reads the object the way a client's request does — in order,
//! a window ahead — through the one fill scheduler
//! ([`crate::schedule::choose_run`] and the shield's relay desk). So when
//! several caches warm an object together they are a flash crowd of their
//! own: the origin sends the object once (to the shield), the shield sends
//! each block into the mesh about once while its uplink is the tighter
//! one, and the caches pass blocks on to each other (relays), each uplink
//! carrying a share. No separate swarm policy to keep in step.

use crate::fill::{FillError, Want};
use crate::object::ObjectEntry;
use crate::serve::CacheService;
use serde::Serialize;
use shoal_core::PieceIndex;
use shoal_store::PieceKey;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Pieces asked for ahead of the one awaited. Twice a client's readahead:
/// measured (`scripts/bench-mesh --only 2`), 32 MiB left uplinks idle
/// between blocks and 128 MiB opened so many requests at once that
/// connects to the shield timed out on a 2-core machine.
const WARM_READAHEAD_BYTES: u64 = 64 << 20;

/// What a warm-up did.
#[derive(Debug, Serialize)]
pub struct WarmReport {
    pub path: String,
    pub object_id: String,
    pub object_bytes: u64,
    /// Bytes that were already here.
    pub bytes_present: u64,
    /// Bytes this cache received from siblings that held them or relayed
    /// them, during the warm-up (all of this cache's traffic, not only the
    /// warm-up's).
    pub bytes_from_peers: u64,
    /// Bytes it received from the shield or, being the shield, the origin,
    /// during the warm-up.
    pub bytes_from_shield: u64,
    pub seconds: f64,
}

/// Fills `entry` here: every piece not held is read in order, with the
/// next [`WARM_READAHEAD_BYTES`] asked for ahead.
pub async fn warm(
    service: &Arc<CacheService>,
    entry: Arc<ObjectEntry>,
) -> Result<WarmReport, FillError> {
    let started = Instant::now();
    let filler = &service.filler;
    let store = filler.store().clone();
    let count = entry.layout.piece_count();
    let held = |i: u32| {
        store.contains(&PieceKey {
            object: entry.id,
            index: PieceIndex(i),
        })
    };
    let bytes_present: u64 = (0..count)
        .filter(|i| held(*i))
        .map(|i| entry.layout.piece_len(PieceIndex(i)))
        .sum();
    let stats = &service.stats;
    let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let from_peers = || {
        read(&stats.peer_bytes_received_from_holders) + read(&stats.peer_bytes_received_from_relays)
    };
    let from_shield = || read(&stats.peer_bytes_received_from_shields) + read(&stats.origin_bytes);
    let (peers_before, shield_before) = (from_peers(), from_shield());
    let window = (WARM_READAHEAD_BYTES / entry.layout.piece_size().bytes()).max(1) as u32;
    for index in 0..count {
        for ahead in index + 1..=index.saturating_add(window).min(count - 1) {
            if !held(ahead) {
                filler.prefetch(&entry, PieceIndex(ahead), Want::READER);
            }
        }
        if !held(index) {
            filler.piece(&entry, PieceIndex(index)).await?;
        }
    }
    Ok(WarmReport {
        path: entry.path.clone(),
        object_id: entry.id.to_hex(),
        object_bytes: entry.layout.object_size(),
        bytes_present,
        bytes_from_peers: from_peers() - peers_before,
        bytes_from_shield: from_shield() - shield_before,
        seconds: started.elapsed().as_secs_f64(),
    })
}
