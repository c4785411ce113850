//! Counters of the edge cache, shown by `/_shoal/stats` and the demo.

use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct CacheStats {
    pub requests: AtomicU64,
    pub client_errors: AtomicU64,
    pub origin_requests: AtomicU64,
    pub origin_bytes: AtomicU64,
    /// Besides `origin_bytes` (what was fetched to store or serve): the
    /// parts of first-GET probes the origin sent and the cache dropped
    /// because the file took the piece path (at most
    /// `small_object_bytes_max`, or one byte, per file).
    pub probe_bytes: AtomicU64,
    pub origin_errors: AtomicU64,
    /// Pieces refused because they did not match their hash.
    pub corrupt_pieces: AtomicU64,
    /// Piece reads that joined a fetch already under way.
    pub coalesced_waits: AtomicU64,
    pub bytes_served: AtomicU64,
    /// Of `bytes_served`, those of pieces already held when the response
    /// began (not those fetched meanwhile, by this response's read-ahead
    /// or anyone else, from a sibling or the origin).
    pub bytes_served_from_store: AtomicU64,
    /// The rest of `bytes_served`: pieces fetched while the response ran
    /// (its own counter, so that `/metrics` never sees it go down).
    pub bytes_served_filled: AtomicU64,
    pub revalidations: AtomicU64,
    pub pass_through_requests: AtomicU64,
    /// Stored paths made stale by an unsafe request's answer (RFC 9111
    /// §4.4).
    pub invalidations: AtomicU64,
    /// Whole responses stored (statuses other than 200, unknown lengths,
    /// queries; see `response`).
    pub responses_stored: AtomicU64,
    /// Requests from sibling caches served (`/_shoal/peer/...`).
    pub peer_requests_served: AtomicU64,
    /// Bytes of piece data sent to sibling caches.
    pub peer_bytes_served: AtomicU64,
    /// Bytes of piece data received from sibling caches.
    pub peer_bytes_received: AtomicU64,
    /// Of those, bytes from siblings that held the pieces (not the shield).
    pub peer_bytes_received_from_holders: AtomicU64,
    /// Of those, bytes relays passed on (flash crowds, warm-ups).
    pub peer_bytes_received_from_relays: AtomicU64,
    /// Of those, bytes from a shield filling them (`fill` mode).
    pub peer_bytes_received_from_shields: AtomicU64,
    /// Piece runs fetched from a sibling that held them.
    pub peer_fetches_have: AtomicU64,
    /// Piece runs fetched from the shield (which fills them).
    pub peer_fetches_shield: AtomicU64,
    /// Piece runs fetched from a relay the shield named (flash crowds).
    pub peer_fetches_relay: AtomicU64,
    /// Times the shield sent one of our runs to a relay.
    pub relay_redirects: AtomicU64,
    /// Fill requests this cache, as shield, sent to a relay.
    pub relay_refusals_sent: AtomicU64,
    /// Runs from a slow relay or holder that the shield took over.
    pub switches_to_shield: AtomicU64,
    /// Switches this cache, as shield, declined (it would not be sooner).
    pub switches_declined: AtomicU64,
    /// Failed exchanges with siblings (each retried elsewhere).
    pub peer_errors: AtomicU64,
    /// Pieces from siblings that failed verification (never stored).
    /// Pieces from peers that failed verification, and quarantines for
    /// them (counted by the mesh link).
    pub peer_counters: std::sync::Arc<shoal_proto::link::PeerCounters>,
    /// Inter-cache requests refused for a missing or bad token.
    pub auth_failures: AtomicU64,
    /// Requests pinned to a version this cache could not serve (409).
    pub pin_refusals: AtomicU64,
    /// Paths whose version changed at the origin (republished, replaced).
    pub versions_replaced: AtomicU64,
    /// Pieces of a new version copied from the version it replaced (same
    /// hash) instead of fetched.
    pub pieces_carried_over: AtomicU64,
    /// Purge events applied here.
    pub purges: AtomicU64,
    /// Requests refused for a missing, expired or bad signed URL.
    pub signature_refusals: AtomicU64,
    /// Time from asking the origin for a run of pieces to its response head.
    pub fill_latency_origin: shoal_server::metrics::Histogram,
    /// The same for sibling caches.
    pub fill_latency_peer: shoal_server::metrics::Histogram,
}

/// A point-in-time copy, serialisable.
#[derive(Debug, Clone, Serialize, serde::Deserialize, Default)]
pub struct StatsSnapshot {
    pub requests: u64,
    pub client_errors: u64,
    pub origin_requests: u64,
    pub origin_bytes: u64,
    pub probe_bytes: u64,
    pub origin_errors: u64,
    pub corrupt_pieces: u64,
    pub coalesced_waits: u64,
    pub bytes_served: u64,
    pub bytes_served_from_store: u64,
    pub byte_hit_ratio: f64,
    pub revalidations: u64,
    pub pass_through_requests: u64,
    pub invalidations: u64,
    pub responses_stored: u64,
    pub peer_requests_served: u64,
    pub peer_bytes_served: u64,
    pub peer_bytes_received: u64,
    pub peer_bytes_received_from_holders: u64,
    pub peer_bytes_received_from_relays: u64,
    pub peer_bytes_received_from_shields: u64,
    pub peer_fetches_have: u64,
    pub peer_fetches_shield: u64,
    pub peer_fetches_relay: u64,
    pub relay_redirects: u64,
    pub relay_refusals_sent: u64,
    pub switches_to_shield: u64,
    pub switches_declined: u64,
    pub peer_errors: u64,
    pub peer_corrupt_pieces: u64,
    pub peers_quarantined: u64,
    pub auth_failures: u64,
    pub pin_refusals: u64,
    pub versions_replaced: u64,
    pub pieces_carried_over: u64,
    pub purges: u64,
    /// Gossip datagrams dropped as unauthentic or malformed.
    pub gossip_dropped_datagrams: u64,
    /// Live mesh members in this cache's view (self included; 0 without a mesh).
    pub mesh_members: u64,
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
            probe_bytes: get(&self.probe_bytes),
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
            invalidations: get(&self.invalidations),
            responses_stored: get(&self.responses_stored),
            peer_requests_served: get(&self.peer_requests_served),
            peer_bytes_served: get(&self.peer_bytes_served),
            peer_bytes_received: get(&self.peer_bytes_received),
            peer_bytes_received_from_holders: get(&self.peer_bytes_received_from_holders),
            peer_bytes_received_from_relays: get(&self.peer_bytes_received_from_relays),
            peer_bytes_received_from_shields: get(&self.peer_bytes_received_from_shields),
            peer_fetches_have: get(&self.peer_fetches_have),
            peer_fetches_shield: get(&self.peer_fetches_shield),
            peer_fetches_relay: get(&self.peer_fetches_relay),
            relay_redirects: get(&self.relay_redirects),
            relay_refusals_sent: get(&self.relay_refusals_sent),
            switches_to_shield: get(&self.switches_to_shield),
            switches_declined: get(&self.switches_declined),
            peer_errors: get(&self.peer_errors),
            peer_corrupt_pieces: get(&self.peer_counters.corrupt_pieces),
            peers_quarantined: get(&self.peer_counters.quarantines),
            auth_failures: get(&self.auth_failures),
            pin_refusals: get(&self.pin_refusals),
            versions_replaced: get(&self.versions_replaced),
            pieces_carried_over: get(&self.pieces_carried_over),
            purges: get(&self.purges),
            gossip_dropped_datagrams: 0,
            mesh_members: 0,
            store_resident_bytes: store.resident_bytes(),
            store_pieces: store.piece_count() as u64,
            store_corrupt_pieces: get(&store_stats.corrupt_pieces),
            store_pieces_evicted: get(&store_stats.pieces_evicted),
            store_memory_hits: get(&store_stats.memory_hits),
            store_disk_hits: get(&store_stats.disk_hits),
        }
    }
}
