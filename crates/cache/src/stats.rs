//! Counters of the edge cache, shown by `/_shoal/stats` and the demo.

use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct CacheStats {
    pub requests: AtomicU64,
    pub client_errors: AtomicU64,
    pub origin_requests: AtomicU64,
    pub origin_bytes: AtomicU64,
    pub origin_errors: AtomicU64,
    /// Pieces refused because they did not match their hash.
    pub corrupt_pieces: AtomicU64,
    /// Piece reads that joined a fetch already under way.
    pub coalesced_waits: AtomicU64,
    pub bytes_served: AtomicU64,
    /// Of `bytes_served`, those that came from the store without waiting for
    /// the origin.
    pub bytes_served_from_store: AtomicU64,
    pub revalidations: AtomicU64,
    pub pass_through_requests: AtomicU64,
}

/// A point-in-time copy, serialisable.
#[derive(Debug, Clone, Serialize, serde::Deserialize, Default)]
pub struct StatsSnapshot {
    pub requests: u64,
    pub client_errors: u64,
    pub origin_requests: u64,
    pub origin_bytes: u64,
    pub origin_errors: u64,
    pub corrupt_pieces: u64,
    pub coalesced_waits: u64,
    pub bytes_served: u64,
    pub bytes_served_from_store: u64,
    pub byte_hit_ratio: f64,
    pub revalidations: u64,
    pub pass_through_requests: u64,
    pub store_resident_bytes: u64,
    pub store_pieces: u64,
    pub store_corrupt_pieces: u64,
    pub store_pieces_evicted: u64,
    pub store_memory_hits: u64,
    pub store_disk_hits: u64,
}

impl CacheStats {
    pub fn snapshot(&self, store: &shoal_store::Store) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let served = get(&self.bytes_served);
        let from_store = get(&self.bytes_served_from_store);
        let store_stats = store.stats();
        StatsSnapshot {
            requests: get(&self.requests),
            client_errors: get(&self.client_errors),
            origin_requests: get(&self.origin_requests),
            origin_bytes: get(&self.origin_bytes),
            origin_errors: get(&self.origin_errors),
            corrupt_pieces: get(&self.corrupt_pieces),
            coalesced_waits: get(&self.coalesced_waits),
            bytes_served: served,
            bytes_served_from_store: from_store,
            byte_hit_ratio: if served == 0 {
                0.0
            } else {
                from_store as f64 / served as f64
            },
            revalidations: get(&self.revalidations),
            pass_through_requests: get(&self.pass_through_requests),
            store_resident_bytes: store.resident_bytes(),
            store_pieces: store.piece_count() as u64,
            store_corrupt_pieces: get(&store_stats.corrupt_pieces),
            store_pieces_evicted: get(&store_stats.pieces_evicted),
            store_memory_hits: get(&store_stats.memory_hits),
            store_disk_hits: get(&store_stats.disk_hits),
        }
    }
}
