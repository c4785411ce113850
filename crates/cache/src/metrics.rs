//! The cache's `GET /metrics` page (Prometheus text format): its HTTP
//! server, where its bytes came from and went to, its store, its mesh.
//!
//! Names and units are documented in docs/operations.md; every counter
//! here also appears (under its JSON name) in `/_shoal/stats`.

use crate::serve::CacheService;
use shoal_server::metrics::MetricsPage;
use std::sync::atomic::Ordering;

/// The whole page for `service` as it is now.
pub(crate) fn page(service: &CacheService) -> MetricsPage {
    let mut page = shoal_server::metrics::role_page(
        "cache",
        service.lifecycle.phase(),
        service.started_unix_s,
        service.server_stats.get(),
    );
    let s = service.stats_snapshot();
    let stats = &service.stats;
    let peer_hits = s.peer_bytes_received;

    page.counter(
        "shoal_cache_fill_bytes_total",
        "Object bytes this cache received to store or pass on, by source: the origin, or a sibling cache that held them (holder), relayed them (relay) or filled them as shield (shield).",
        &[
            (&[("source", "origin")], s.origin_bytes as f64),
            (&[("source", "holder")], s.peer_bytes_received_from_holders as f64),
            (&[("source", "relay")], s.peer_bytes_received_from_relays as f64),
            (&[("source", "shield")], s.peer_bytes_received_from_shields as f64),
        ],
    );
    page.counter1(
        "shoal_cache_origin_probe_bytes_total",
        "Bytes of first-contact probe ranges the origin sent and the cache dropped (the file took the piece path).",
        s.probe_bytes,
    );
    page.counter(
        "shoal_cache_sent_bytes_total",
        "Object bytes sent, by destination: viewers and other clients, or sibling caches.",
        &[
            (&[("destination", "client")], s.bytes_served as f64),
            (&[("destination", "peer_cache")], s.peer_bytes_served as f64),
        ],
    );
    page.counter(
        "shoal_cache_client_bytes_total",
        "Bytes sent to clients, by whether their pieces were already stored when the response began (store) or were fetched for it (fill).",
        &[
            (&[("from", "store")], s.bytes_served_from_store as f64),
            (
                &[("from", "fill")],
                stats.bytes_served_filled.load(Ordering::Relaxed) as f64,
            ),
        ],
    );
    page.gauge1(
        "shoal_cache_byte_hit_ratio",
        "Share of client bytes served from pieces already stored, since start (0 before any byte).",
        s.byte_hit_ratio,
    );
    page.gauge1(
        "shoal_cache_origin_offload_ratio",
        "Share of fill bytes that came from sibling caches rather than the origin, since start.",
        ratio(peer_hits, peer_hits + s.origin_bytes),
    );
    page.histogram(
        "shoal_cache_fill_latency_seconds",
        "Time from asking for a run of pieces to its response head, by source.",
        &[
            (
                &[("source", "origin")],
                stats.fill_latency_origin.snapshot(),
            ),
            (
                &[("source", "peer_cache")],
                stats.fill_latency_peer.snapshot(),
            ),
        ],
    );
    page.counter(
        "shoal_cache_verification_failures_total",
        "Pieces that did not match their hash, by where they came from (never stored or served).",
        &[
            (&[("source", "origin")], s.corrupt_pieces as f64),
            (&[("source", "peer_cache")], s.peer_corrupt_pieces as f64),
            (&[("source", "disk")], s.store_corrupt_pieces as f64),
        ],
    );
    page.counter1(
        "shoal_cache_peers_quarantined_total",
        "Times a sibling cache was left out for sending pieces that failed verification.",
        s.peers_quarantined,
    );
    page.counter1(
        "shoal_cache_origin_requests_total",
        "Requests sent to the origin (fills, revalidations, pass-through).",
        s.origin_requests,
    );
    page.counter1(
        "shoal_cache_origin_errors_total",
        "Origin requests that failed (no answer, 5xx, a broken body).",
        s.origin_errors,
    );
    page.counter1(
        "shoal_cache_peer_errors_total",
        "Failed exchanges with sibling caches (each retried elsewhere).",
        s.peer_errors,
    );
    page.counter1(
        "shoal_cache_peer_requests_served_total",
        "Requests from sibling caches answered.",
        s.peer_requests_served,
    );
    page.counter1(
        "shoal_cache_signed_url_refusals_total",
        "Client requests refused for a missing, expired, tampered or foreign signed URL.",
        stats.signature_refusals.load(Ordering::Relaxed),
    );
    page.counter1(
        "shoal_cache_auth_failures_total",
        "Inter-cache or operator requests refused for a missing or bad token.",
        s.auth_failures,
    );
    page.counter(
        "shoal_cache_events_total",
        "Cache events, by kind.",
        &[
            (&[("event", "revalidation")], s.revalidations as f64),
            (&[("event", "pass_through")], s.pass_through_requests as f64),
            (&[("event", "invalidation")], s.invalidations as f64),
            (&[("event", "response_stored")], s.responses_stored as f64),
            (&[("event", "coalesced_wait")], s.coalesced_waits as f64),
            (&[("event", "version_replaced")], s.versions_replaced as f64),
            (
                &[("event", "piece_carried_over")],
                s.pieces_carried_over as f64,
            ),
            (&[("event", "purge")], s.purges as f64),
            (&[("event", "pin_refusal")], s.pin_refusals as f64),
            (&[("event", "relay_redirect")], s.relay_redirects as f64),
            (
                &[("event", "switch_to_shield")],
                s.switches_to_shield as f64,
            ),
        ],
    );
    page.counter(
        "shoal_cache_evictions_total",
        "Pieces evicted from the disk store to stay within its capacity.",
        &[(&[], s.store_pieces_evicted as f64)],
    );
    page.counter1(
        "shoal_cache_evicted_bytes_total",
        "Bytes of pieces evicted from the disk store.",
        service
            .filler
            .store()
            .stats()
            .bytes_evicted
            .load(Ordering::Relaxed),
    );
    page.gauge1(
        "shoal_cache_store_bytes",
        "Bytes of piece data on disk.",
        s.store_resident_bytes as f64,
    );
    page.gauge1(
        "shoal_cache_store_capacity_bytes",
        "The disk store's budget (`capacity`).",
        service.store_capacity_bytes as f64,
    );
    page.gauge1(
        "shoal_cache_store_pieces",
        "Pieces on disk.",
        s.store_pieces as f64,
    );
    page.counter(
        "shoal_cache_store_hits_total",
        "Piece reads answered by the store, by tier.",
        &[
            (&[("tier", "memory")], s.store_memory_hits as f64),
            (&[("tier", "disk")], s.store_disk_hits as f64),
        ],
    );
    page.gauge1(
        "shoal_cache_store_write_failing",
        "1 while the store cannot write (a full or failed disk): the cache serves through without storing.",
        f64::from(u8::from(service.filler.store().write_failure().is_some())),
    );
    page.gauge1(
        "shoal_cache_egress_cap_bytes_per_second",
        "The egress cap of the whole cache (0: none).",
        service
            .egress
            .get()
            .map_or(0.0, |egress| egress.bytes_per_s() as f64),
    );
    if let Some(mesh) = &service.mesh {
        let view = mesh.node.view();
        let count = |health: shoal_mesh::Health| {
            view.members.iter().filter(|m| m.health == health).count() as f64
        };
        page.gauge(
            "shoal_mesh_members",
            "Caches of the mesh in this cache's view (itself included), by health.",
            &[
                (&[("health", "ok")], count(shoal_mesh::Health::Ok)),
                (
                    &[("health", "degraded")],
                    count(shoal_mesh::Health::Degraded),
                ),
                (
                    &[("health", "draining")],
                    count(shoal_mesh::Health::Draining),
                ),
            ],
        );
        page.counter1(
            "shoal_mesh_gossip_dropped_datagrams_total",
            "Gossip datagrams dropped as unauthentic or malformed (a wrong cluster secret shows here).",
            s.gossip_dropped_datagrams,
        );
    }
    if let Some(log) = &service.access_log {
        shoal_server::metrics::write_access_log(&mut page, log);
    }
    page
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}
