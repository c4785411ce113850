//! Warming: fill a whole object into this cache ahead of demand
//! (`POST /_shoal/warm/<path>`, signed like inter-cache requests; `shoal
//! warm` sends it). A publisher pre-positions a release on every cache;
//! when several caches warm the same object together they swarm: the
//! [`crate::schedule::swarm`] schedule takes pieces from whichever peer holds them
//! and only pieces nobody holds from the shield, so the origin sends the
//! object about once and every cache uploads at the same time.

use crate::fill::{FillError, Preferred};
use crate::object::ObjectEntry;
use crate::schedule::swarm::{self, PeerPieces, Step, SwarmLimits};
use crate::serve::CacheService;
use serde::Serialize;
use shoal_core::bitfield::PieceSet;
use shoal_core::PieceIndex;
use shoal_mesh::Health;
use shoal_store::PieceKey;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Runs in flight at once for one warm-up.
const WARM_RUNS_MAX: usize = 8;
/// Most runs a fat peer carries relative to the thinnest.
const CAPACITY_WEIGHT_MAX: u32 = 8;
/// How stale a peer's piece set may be when planning.
const PIECE_SET_MAX_AGE_MS: u64 = 200;
/// Without progress for this long, pieces assigned to others are fetched
/// from the shield too (their cache may be slow or gone).
const IMPATIENT_AFTER_MS: u64 = 1_500;
/// The shield also relays while at least this fraction of its egress is
/// spare (gossiped load).
const SHIELD_RELAY_SPARE_MIN: f64 = 0.3;
/// Peers whose piece sets are followed, at most.
const PEERS_FOLLOWED_MAX: usize = 16;
const LIMITS: SwarmLimits = SwarmLimits {
    run_pieces_max: 8,
    runs_per_peer_max: 2,
    shield_runs_max: 3,
};

/// What a warm-up did.
#[derive(Debug, Serialize)]
pub struct WarmReport {
    pub path: String,
    pub object_id: String,
    pub object_bytes: u64,
    /// Bytes that were already here.
    pub bytes_present: u64,
    /// Bytes this cache received from siblings that held them, during the
    /// warm-up (all of this cache's traffic, not only the warm-up's).
    pub bytes_from_peers: u64,
    /// Bytes it received from the shield or, being the shield, the origin,
    /// during the warm-up.
    pub bytes_from_shield: u64,
    pub seconds: f64,
}

/// Fills `entry` here. `partners` are the HTTP addresses of other caches
/// warming it at the same time (the blocks fetched from the shield are
/// dealt among them); without them this cache takes every block nobody
/// else holds.
pub async fn warm(
    service: &Arc<CacheService>,
    entry: Arc<ObjectEntry>,
    partners: &[std::net::SocketAddr],
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
    let start = match &service.mesh {
        Some(mesh) => swarm::start_offset(mesh.self_id(), &entry.id, count),
        None => 0,
    };
    let mut in_flight: HashSet<u32> = HashSet::new();
    // Pieces delivered by our runs (they may still be on their way to disk).
    let mut done: HashSet<u32> = HashSet::new();
    let mut last_progress = Instant::now();
    let mut last_remaining = usize::MAX;
    let mut peer_runs: HashMap<String, u32> = HashMap::new();
    let mut shield_runs = 0u32;
    let mut runs = tokio::task::JoinSet::new();
    let stats = &service.stats;
    let counter = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    let holders_before = counter(&stats.peer_bytes_received_from_holders);
    let peers_before = counter(&stats.peer_bytes_received);
    let origin_before = counter(&stats.origin_bytes);
    let mut report = WarmReport {
        path: entry.path.clone(),
        object_id: entry.id.to_hex(),
        object_bytes: entry.layout.object_size(),
        bytes_present,
        bytes_from_peers: 0,
        bytes_from_shield: 0,
        seconds: 0.0,
    };
    let empty = PieceSet::new(count);
    loop {
        let (shield_id, warmers) = warm_partners(service, &entry, partners);
        let self_id = service
            .mesh
            .as_ref()
            .map(|m| m.self_id().to_string())
            .unwrap_or_default();
        let warmer_names: Vec<&str> = warmers.iter().map(String::as_str).collect();
        // The shield gets every piece anyway while it serves the others'
        // blocks, so when others warm with it, it pulls on its own with one
        // run only: more would compete with them for the origin's uplink;
        // one keeps a fast origin busy when they are slow to ask.
        let shield_with_partners = shield_id.is_none() && warmers.len() > 1;
        let limits = if shield_with_partners {
            SwarmLimits {
                shield_runs_max: 1,
                ..LIMITS
            }
        } else {
            LIMITS
        };
        let assigned = |i: u32| {
            shield_id.is_none()
                || swarm::assigned_to(&entry.id, i, LIMITS.run_pieces_max, &warmer_names, &self_id)
        };
        // Progress is any piece arriving, by our runs or anyone's.
        let remaining = (0..count)
            .filter(|i| !done.contains(i) && !held(*i))
            .count();
        if remaining < last_remaining {
            last_remaining = remaining;
            last_progress = Instant::now();
        }
        let impatient = last_progress.elapsed() > Duration::from_millis(IMPATIENT_AFTER_MS);
        if entry.manifest.is_none() {
            filler.refresh_hashes_from_shield(&entry).await;
        }
        let mut peer_sets = peer_piece_sets(service, &entry).await;
        // Pieces are taken from siblings only where we can check them: a
        // hash from the manifest, or one the shield learnt from the origin.
        if entry.manifest.is_none() {
            for (_, set) in peer_sets.iter_mut() {
                if let Some(pieces) = set {
                    let mut verifiable = PieceSet::new(pieces.piece_count());
                    for index in pieces.iter() {
                        if entry.learnt_hash(index).is_some() {
                            verifiable.insert(index);
                        }
                    }
                    *set = Some(Arc::new(verifiable));
                }
            }
        }
        // The shield serves what is ours (rule 2), and relays like any
        // holder while gossip shows spare egress: measured, extra copies
        // from an idle shield (waiting on the origin, or with a fatter
        // uplink) shorten warm-ups; a busy one is left to first copies.
        peer_sets.retain(|(m, _)| {
            Some(&m.node_id) != shield_id.as_ref() || m.spare_fraction() > SHIELD_RELAY_SPARE_MIN
        });
        let thinnest_cap = peer_sets
            .iter()
            .map(|(m, _)| m.egress_cap_bps)
            .filter(|c| *c > 0)
            .min()
            .unwrap_or(0);
        loop {
            if runs.len() >= WARM_RUNS_MAX {
                break;
            }
            let peers: Vec<PeerPieces> = peer_sets
                .iter()
                .map(|(member, set)| PeerPieces {
                    node_id: &member.node_id,
                    stored: set.as_deref().unwrap_or(&empty),
                    runs_in_flight: peer_runs.get(&member.node_id).copied().unwrap_or(0),
                    capacity_weight: capacity_weight(member.egress_cap_bps, thinnest_cap),
                    near: true,
                    rtt_bucket: 0,
                    spare_fraction: member.spare_fraction(),
                    cost_per_gb_microusd: member.cost_per_gb_microusd,
                })
                .collect();
            let needed = |i: u32| !in_flight.contains(&i) && !done.contains(&i) && !held(i);
            let step = swarm::next_step(
                count,
                &needed,
                &assigned,
                in_flight.len() as u32,
                &peers,
                shield_runs,
                impatient,
                start,
                limits,
            );
            let (first, n, preferred, peer) = match step {
                Step::Done => {
                    report.seconds = started.elapsed().as_secs_f64();
                    let holders = counter(&stats.peer_bytes_received_from_holders) - holders_before;
                    let peers = counter(&stats.peer_bytes_received) - peers_before;
                    let origin = counter(&stats.origin_bytes) - origin_before;
                    report.bytes_from_peers = holders;
                    report.bytes_from_shield = peers.saturating_sub(holders) + origin;
                    return Ok(report);
                }
                Step::Wait => break,
                Step::FromPeer {
                    node_id,
                    first,
                    count,
                } => {
                    let Some(member) = peer_sets
                        .iter()
                        .find(|(m, _)| m.node_id == node_id)
                        .map(|(m, _)| m.clone())
                    else {
                        break;
                    };
                    *peer_runs.entry(node_id.clone()).or_default() += 1;
                    (first, count, Preferred::Holder(member), Some(node_id))
                }
                Step::FromShield { first, count } => {
                    shield_runs += 1;
                    (first, count, Preferred::Shield, None)
                }
            };
            for i in first.0..first.0 + n {
                in_flight.insert(i);
            }
            let filler = filler.clone();
            let entry = entry.clone();
            runs.spawn(async move {
                let result = filler.fill_range(&entry, first, n, preferred).await;
                (first.0, n, peer, result)
            });
        }
        if runs.is_empty() {
            // Nothing can start and nothing runs: every needed piece is
            // held only by saturated peers, which cannot be with no runs.
            tokio::time::sleep(Duration::from_millis(PIECE_SET_MAX_AGE_MS)).await;
            continue;
        }
        // Wake on the next finished run, or to re-plan with fresher news.
        let finished = tokio::select! {
            done = runs.join_next() => done,
            _ = tokio::time::sleep(Duration::from_millis(PIECE_SET_MAX_AGE_MS)) => None,
        };
        let Some(finished) = finished else { continue };
        let (first, n, peer, result) = finished.map_err(|_| FillError::Abandoned)?;
        for i in first..first + n {
            in_flight.remove(&i);
        }
        if result.is_ok() {
            done.extend(first..first + n);
            last_progress = Instant::now();
        }
        match &peer {
            Some(node) => {
                if let Some(c) = peer_runs.get_mut(node) {
                    *c = c.saturating_sub(1);
                }
            }
            None => shield_runs = shield_runs.saturating_sub(1),
        }
        result?;
    }
}

/// A peer's uplink relative to the thinnest followed peer's, 1..=8 (an
/// uncapped peer counts as the fattest).
fn capacity_weight(cap_bps: u64, thinnest_bps: u64) -> u32 {
    if cap_bps == 0 || thinnest_bps == 0 {
        return if cap_bps == 0 { CAPACITY_WEIGHT_MAX } else { 1 };
    }
    (cap_bps / thinnest_bps).clamp(1, CAPACITY_WEIGHT_MAX as u64) as u32
}

/// The shield above us (None when we are the shield) and the caches
/// warming with us (self included, shield excluded), sorted.
fn warm_partners(
    service: &Arc<CacheService>,
    entry: &ObjectEntry,
    partners: &[std::net::SocketAddr],
) -> (Option<String>, Vec<String>) {
    let Some(mesh) = &service.mesh else {
        return (None, Vec::new());
    };
    let view = mesh.node.view();
    let shield = view
        .shields_above_self(&shoal_mesh::shield_key(&entry.path))
        .first()
        .map(|m| m.node_id.clone());
    let mut warmers: Vec<String> = view
        .members
        .iter()
        .filter(|m| m.node_id == view.self_id || partners.contains(&m.http_addr))
        .filter(|m| Some(&m.node_id) != shield.as_ref())
        .map(|m| m.node_id.clone())
        .collect();
    warmers.sort();
    (shield, warmers)
}

/// Fresh piece sets of the live peers worth following: same region first.
async fn peer_piece_sets(
    service: &Arc<CacheService>,
    entry: &ObjectEntry,
) -> Vec<(shoal_mesh::Member, Option<Arc<PieceSet>>)> {
    let Some(mesh) = &service.mesh else {
        return Vec::new();
    };
    let view = mesh.node.view();
    let own_region = view.member(&view.self_id).map(|m| m.region.clone());
    let mut members: Vec<shoal_mesh::Member> = view
        .members
        .iter()
        .filter(|m| m.node_id != view.self_id && m.health == Health::Ok)
        .filter(|m| mesh.usable(&m.node_id))
        .cloned()
        .collect();
    members.sort_by_key(|m| Some(&m.region) != own_region.as_ref());
    members.truncate(PEERS_FOLLOWED_MAX);
    let max_age = Duration::from_millis(PIECE_SET_MAX_AGE_MS);
    let fetches = members.into_iter().map(|member| async move {
        let set = mesh.piece_set_within(&member, &entry.id, max_age).await;
        (member, set)
    });
    futures_util::future::join_all(fetches).await
}
