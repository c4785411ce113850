//! What this cache tells the mesh about itself: recent egress (an EWMA of
//! bytes sent to clients and peers), the objects it holds, its health, and
//! its traffic totals (for the selector's dashboard).

use crate::stats::CacheStats;
use shoal_core::ObjectId;
use shoal_mesh::{Health, LocalState, Traffic};
use shoal_store::Store;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Time constant of the egress average.
const EGRESS_EWMA_TAU_S: f64 = 1.0;

pub struct CacheLocalState {
    store: Arc<Store>,
    stats: Arc<CacheStats>,
    /// The HTTP server's counters, once it runs (requests in flight).
    server_stats: Arc<std::sync::OnceLock<shoal_server::ServerStats>>,
    egress: Mutex<EgressAverage>,
}

struct EgressAverage {
    at: Instant,
    bytes: u64,
    bits_per_s: f64,
}

impl CacheLocalState {
    pub fn new(
        store: Arc<Store>,
        stats: Arc<CacheStats>,
        server_stats: Arc<std::sync::OnceLock<shoal_server::ServerStats>>,
    ) -> Self {
        Self {
            store,
            stats,
            server_stats,
            egress: Mutex::new(EgressAverage {
                at: Instant::now(),
                bytes: 0,
                bits_per_s: 0.0,
            }),
        }
    }
}

impl LocalState for CacheLocalState {
    fn egress_bps(&self) -> u64 {
        let sent = self.stats.bytes_served.load(Ordering::Relaxed)
            + self.stats.peer_bytes_served.load(Ordering::Relaxed);
        let mut average = self.egress.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let elapsed_s = now.duration_since(average.at).as_secs_f64();
        if elapsed_s > 0.0 {
            let rate = sent.saturating_sub(average.bytes) as f64 * 8.0 / elapsed_s;
            let weight = 1.0 - (-elapsed_s / EGRESS_EWMA_TAU_S).exp();
            average.bits_per_s += weight * (rate - average.bits_per_s);
            average.at = now;
            average.bytes = sent;
        }
        average.bits_per_s.max(0.0) as u64
    }

    fn held_objects(&self, max: usize) -> Vec<ObjectId> {
        self.store
            .objects_by_bytes(max)
            .into_iter()
            .map(|(id, _)| id)
            .collect()
    }

    fn traffic(&self) -> Option<Traffic> {
        let get = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
        let stats = &self.stats;
        Some(Traffic {
            client_bytes: get(&stats.bytes_served),
            client_store_bytes: get(&stats.bytes_served_from_store),
            peer_cache_bytes: get(&stats.peer_bytes_served),
            origin_bytes: get(&stats.origin_bytes),
            sibling_bytes: get(&stats.peer_bytes_received),
            requests_in_flight: self
                .server_stats
                .get()
                .map_or(0, |s| s.requests_in_flight()),
        })
    }

    /// Degraded while the store cannot write (a full disk): the cache
    /// still serves, through, but selectors prefer the others.
    fn health(&self) -> Health {
        if self.store.write_failure().is_some() {
            Health::Degraded
        } else {
            Health::Ok
        }
    }
}
