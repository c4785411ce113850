//! Which pieces the caches fetch while peers share the object: the gap
//! the peers leave, and only that. A pure function of the time, what is
//! done, what peers hold and fetch, and the rates seen.
//!
//! Every piece has a deadline:
//!
//! - **Stream** (committed bitrate r): piece i plays at `play_from_ms + i
//!   × piece / r`; it is due then.
//! - **Download with a target rate** R: the k-th piece to arrive (whichever
//!   it is) is due at `start + k × piece / R`.
//! - **Download as fast as possible**: nothing is due; the caches are kept
//!   busy with what peers are not fetching (their free request slots are
//!   filled), so the download takes every source it can get.
//!
//! Peers come first. A cache is given a piece when:
//!
//! 1. its deadline is within the cache's lead time (what a cache needs to
//!    deliver it) and no peer is on track to deliver it in time — a piece a
//!    slow peer is fetching is taken over (the caller cancels the peer's
//!    requests);
//! 2. it is the turn of the download's pace (target rate) and peers are
//!    not expected to cover it: the shortfall `due − done − expected from
//!    peers − at the caches` is released, rarest pieces first;
//! 3. no connected peer holds it, and this node is the one of its
//!    neighbourhood *designated* for it (rendezvous over the peer ids it
//!    knows), while it is still far from due: each such piece is fetched
//!    over HTTP about once per swarm and then spreads between peers, not
//!    once per peer.
//!
//! Pieces for the caches go out rarest first for downloads (a cache
//! should bring what peers cannot trade) and in deadline order for
//! streams. Consecutive pieces a source takes become one contiguous range
//! request in the driver.

use shoal_core::bitfield::PieceSet;
use shoal_core::PieceIndex;
use std::collections::BTreeMap;

/// What is being delivered, and at what pace.
#[derive(Clone, Debug, PartialEq)]
pub enum Pace {
    /// Playback at `bytes_per_s`; piece 0 plays at `play_from_ms`.
    Stream { bytes_per_s: f64, play_from_ms: u64 },
    /// A download held at `bytes_per_s` from `start_ms` on (with
    /// `done_at_start` pieces already there then).
    Target {
        bytes_per_s: f64,
        start_ms: u64,
        done_at_start: u32,
    },
    /// A download taking every source it can.
    AsFastAsPossible,
}

#[derive(Clone, Debug)]
pub struct GapConfig {
    pub piece_count: u32,
    pub piece_bytes: u64,
    pub pace: Pace,
    /// A cache is asked this long before a piece is due, at least (its
    /// time to first byte and transfer, plus a margin).
    pub lead_min_ms: u64,
    /// Designated pieces no peer holds are fetched from a cache up to
    /// this long before they are due (streams and target downloads).
    pub prefetch_ms: u64,
    /// A peer is on track for a piece if it would finish it this long
    /// before its deadline.
    pub margin_ms: u64,
    /// Pieces per block ([`designation_block_pieces`]): pieces nobody holds
    /// are designated a block at a time, and a stream gives the caches a
    /// block at once when its first piece nears its deadline, so what a
    /// cache is asked for is one contiguous range.
    pub block_pieces: u32,
}

impl GapConfig {
    pub fn new(piece_count: u32, piece_bytes: u64, pace: Pace) -> Self {
        Self {
            piece_count,
            piece_bytes: piece_bytes.max(1),
            pace,
            lead_min_ms: 1_500,
            prefetch_ms: 10_000,
            margin_ms: 500,
            block_pieces: designation_block_pieces(piece_bytes),
        }
    }
}

/// What the caller knows now.
pub struct GapInput<'a> {
    pub now_ms: u64,
    /// Verified pieces.
    pub done: &'a PieceSet,
    /// Given to the caches and not done (fetching or queued there).
    pub at_caches: &'a PieceSet,
    /// How many connected peers hold each piece.
    pub availability: &'a [u32],
    /// Pieces peers are fetching for us, with the bytes of each here.
    pub from_peers: &'a BTreeMap<u32, u64>,
    /// When peers were first asked for each of those pieces.
    pub from_peers_since_ms: &'a BTreeMap<u32, u64>,
    /// When a block of each of those last arrived.
    pub from_peers_last_ms: &'a BTreeMap<u32, u64>,
    /// Recent goodput from peers and from the caches, bytes per second.
    pub peer_bytes_per_s: f64,
    pub cache_bytes_per_s: f64,
    /// Request slots the caches have free (as fast as possible: so many
    /// pieces are given to them).
    pub cache_slots_free: u32,
    /// Whether this node is the one to fetch `piece` when no peer holds it.
    pub designated: &'a dyn Fn(u32) -> bool,
    /// Peers are connected (designation means something; alone, every
    /// piece is "ours" and nothing is fetched early on that account).
    pub peers_known: bool,
    /// How many pieces the connected peers hold, on average.
    pub peer_done_mean: f64,
    /// Streams: the reader's position (pieces before it are not wanted
    /// first).
    pub playhead: u32,
    /// No cache is usable: nothing is released.
    pub caches_usable: bool,
}

/// Pieces to give the caches now, most urgent first; among them
/// `take_over` are being fetched from peers (the caller cancels those
/// requests).
#[derive(Debug, Default, PartialEq)]
pub struct GapDecision {
    pub release: Vec<u32>,
    pub take_over: Vec<u32>,
}

/// How long a cache needs for one piece, ms: transfer at the rate caches
/// give now (one piece's share of it when several are out) plus the
/// configured floor.
fn cache_lead_ms(config: &GapConfig, input: &GapInput<'_>) -> u64 {
    let per_piece_ms = if input.cache_bytes_per_s > 1.0 {
        config.piece_bytes as f64 / input.cache_bytes_per_s * 1000.0
    } else {
        0.0
    };
    config.lead_min_ms + per_piece_ms.min(30_000.0) as u64
}

/// Peers delivering less than this do not hold the caches back.
const HOLD_BACK_PEER_BYTES_PER_S_MIN: f64 = 64.0 * 1024.0;

/// Below this age a piece's own progress says little.
const PIECE_RATE_AFTER_MS: u64 = 300;
/// A piece asked of peers this long ago with nothing here, or with no
/// block for this long, is stuck.
const PIECE_STUCK_MS: u64 = 2_000;

/// How long peers need for what is left of `piece`, ms: from the piece's
/// own progress once it has some history, else from the peers' rate
/// shared over the pieces they are fetching.
fn peer_eta_ms(config: &GapConfig, input: &GapInput<'_>, piece: u32) -> Option<u64> {
    let here = *input.from_peers.get(&piece)?;
    let left = config.piece_bytes.saturating_sub(here) as f64;
    // Half here and silent since: stuck (its average rate would still
    // call it on track).
    if let Some(last) = input.from_peers_last_ms.get(&piece) {
        if input.now_ms.saturating_sub(*last) >= PIECE_STUCK_MS {
            return Some(u64::MAX);
        }
    }
    if let Some(since) = input.from_peers_since_ms.get(&piece) {
        let age = input.now_ms.saturating_sub(*since);
        if age >= PIECE_RATE_AFTER_MS && here > 0 {
            let rate = here as f64 / age as f64; // bytes per ms
            return Some((left / rate) as u64);
        }
        if age >= PIECE_STUCK_MS {
            return Some(u64::MAX);
        }
    }
    let sharing = input.from_peers.len().max(1) as f64;
    let rate = input.peer_bytes_per_s / sharing;
    if rate < 1.0 {
        return Some(u64::MAX);
    }
    Some((left / rate * 1000.0) as u64)
}

fn wanted(input: &GapInput<'_>, piece: u32) -> bool {
    !input.done.contains(PieceIndex(piece)) && !input.at_caches.contains(PieceIndex(piece))
}

/// Decides which pieces the caches take now.
pub fn decide(config: &GapConfig, input: &GapInput<'_>) -> GapDecision {
    let mut decision = GapDecision::default();
    if !input.caches_usable {
        return decision;
    }
    match &config.pace {
        Pace::Stream {
            bytes_per_s,
            play_from_ms,
        } => stream(config, input, *bytes_per_s, *play_from_ms, &mut decision),
        Pace::Target {
            bytes_per_s,
            start_ms,
            done_at_start,
        } => {
            let lead = cache_lead_ms(config, input);
            let elapsed_ms = (input.now_ms + lead).saturating_sub(*start_ms);
            let due = u64::from(*done_at_start)
                + (elapsed_ms as f64 / 1000.0 * bytes_per_s / config.piece_bytes as f64).ceil()
                    as u64;
            let expected_from_peers = ((input.peer_bytes_per_s * lead as f64 / 1000.0)
                / config.piece_bytes as f64)
                .floor()
                .min(input.from_peers.len() as f64) as u64;
            let covered = u64::from(input.done.len())
                + u64::from(input.at_caches.len())
                + expected_from_peers;
            // Whole blocks: the shortfall goes to a cache as ranges (at
            // most a block ahead of the pace).
            let block = u64::from(config.block_pieces.max(1));
            let short = due.saturating_sub(covered).div_ceil(block) * block;
            fill(config, input, short, false, &mut decision);
            prefetch_designated(config, input, &mut decision);
        }
        Pace::AsFastAsPossible => {
            fill(
                config,
                input,
                u64::from(input.cache_slots_free),
                true,
                &mut decision,
            );
        }
    }
    decision
}

/// Streams: pieces in deadline order from the playhead; within the lead
/// time whatever peers will not finish in time, and designated pieces no
/// peer holds within the prefetch window.
fn stream(
    config: &GapConfig,
    input: &GapInput<'_>,
    bytes_per_s: f64,
    play_from_ms: u64,
    decision: &mut GapDecision,
) {
    let lead = cache_lead_ms(config, input);
    let piece_ms = config.piece_bytes as f64 / bytes_per_s.max(1.0) * 1000.0;
    let from = input.playhead.min(config.piece_count);
    // From the playhead on, in deadline order, until pieces are beyond the
    // prefetch window; then whatever lies behind the playhead (the reader
    // seeked past it, and the download still needs it): due already.
    let behind = (0..from).filter(|p| wanted(input, *p) && !input.from_peers.contains_key(p));
    decision.release.extend(behind);
    for piece in from..config.piece_count {
        let due_ms = play_from_ms as f64 + f64::from(piece) * piece_ms;
        let slack_ms = due_ms - input.now_ms as f64;
        if slack_ms > (lead + config.prefetch_ms) as f64 {
            break;
        }
        if !wanted(input, piece) {
            continue;
        }
        let availability = input.availability.get(piece as usize).copied().unwrap_or(0);
        // Near when the first piece of its block is (from the playhead):
        // the block goes to a cache as one range.
        let block_first = (piece - piece % config.block_pieces.max(1)).max(from);
        let block_due_ms = play_from_ms as f64 + f64::from(block_first) * piece_ms;
        let near = block_due_ms - input.now_ms as f64 <= lead as f64;
        let fetching = peer_eta_ms(config, input, piece);
        let on_track = fetching
            .is_some_and(|eta| (eta.saturating_add(config.margin_ms)) as f64 <= slack_ms.max(0.0));
        let nobody_has = availability == 0 && fetching.is_none();
        let prefetch = nobody_has && input.peers_known && (input.designated)(piece);
        if (near && !on_track) || prefetch {
            decision.release.push(piece);
            if fetching.is_some() {
                decision.take_over.push(piece);
            }
        }
    }
}

/// Streams: the first piece worth asking peers for (from the playhead):
/// one whose deadline leaves room for a cache's lead, the margin and a
/// fresh piece's transfer from peers at the rate they give each piece now.
/// Closer pieces go to the caches when near; started on peers, most would
/// be taken over half-sent, and the blocks peers uploaded for them wasted.
pub fn stream_peers_from(
    config: &GapConfig,
    now_ms: u64,
    playhead: u32,
    peer_bytes_per_s: f64,
    pieces_from_peers: usize,
) -> u32 {
    let Pace::Stream {
        bytes_per_s,
        play_from_ms,
    } = config.pace
    else {
        return playhead;
    };
    let per_piece = peer_bytes_per_s / pieces_from_peers.max(1) as f64;
    let fresh_ms = if per_piece >= 1.0 {
        (config.piece_bytes as f64 / per_piece * 1000.0).clamp(0.0, PEER_FRESH_PIECE_MS_MAX)
    } else {
        PEER_FRESH_PIECE_MS_MAX
    };
    let horizon_ms = (config.lead_min_ms + config.margin_ms) as f64 + fresh_ms;
    let piece_ms = config.piece_bytes as f64 / bytes_per_s.max(1.0) * 1000.0;
    // Piece p is due at play_from + p × piece_ms: the first with more
    // than the horizon left.
    let first = (now_ms as f64 + horizon_ms - play_from_ms as f64) / piece_ms;
    let first = if first.is_finite() && first > 0.0 {
        (first.floor() as u64 + 1).min(u64::from(config.piece_count)) as u32
    } else {
        0
    };
    first.max(playhead)
}

/// A fresh piece is assumed to take peers at most this long (the first
/// seconds, before any rate is known).
const PEER_FRESH_PIECE_MS_MAX: f64 = 3_000.0;

/// Downloads: `count` more pieces for the caches, from those no peer is
/// fetching: first the pieces nobody holds that this node is designated
/// for; then pieces peers hold but cannot take more requests for (they
/// choke us or their pipelines are full — a piece a peer could send is
/// asked of it at once), rarest first; then pieces nobody holds that
/// another node is designated for (it may be slow or gone). When none is
/// left, pieces peers are slowest on are taken over.
///
/// `hold_back` (as fast as possible, nothing due): while pieces nobody
/// holds are still to come from the nodes designated for them, the caches
/// bring nothing twice — their uplink is what gets every piece into the
/// swarm once (the `F/C` of the fluid bound); and pieces designated to
/// others are left to them while peers deliver anything at all. A node
/// ahead of its peers (more than a block above their mean) while peers
/// deliver asks the caches only for the pieces it is designated for: the
/// caches' uplink goes to those behind, and the swarm finishes together
/// rather than the last ones late.
fn fill(
    config: &GapConfig,
    input: &GapInput<'_>,
    count: u64,
    hold_back: bool,
    decision: &mut GapDecision,
) {
    if count == 0 {
        return;
    }
    let mut candidates: Vec<(u8, u32, u32)> = (0..config.piece_count)
        .filter(|p| wanted(input, *p) && !input.from_peers.contains_key(p))
        .filter(|p| !decision.release.contains(p))
        .map(|p| {
            let availability = input.availability.get(p as usize).copied().unwrap_or(0);
            let tier = match (availability, (input.designated)(p)) {
                (0, true) => 0,
                (0, false) => 2,
                _ => 1,
            };
            (tier, availability, p)
        })
        .collect();
    let before = candidates.len();
    if hold_back {
        let unheld_elsewhere = candidates.iter().any(|(tier, _, _)| *tier == 2);
        // Holding the caches back pays only while peers bring at least
        // half what the caches would (so a download never crawls at a slow
        // designated node's pace while cache slots sit idle).
        let peers_deliver = input.peer_bytes_per_s >= HOLD_BACK_PEER_BYTES_PER_S_MIN
            && input.peer_bytes_per_s >= 0.5 * input.cache_bytes_per_s;
        let ahead = peers_deliver
            && input.peers_known
            && f64::from(input.done.len())
                > input.peer_done_mean + f64::from(config.block_pieces.max(1));
        candidates.retain(|(tier, _, _)| match tier {
            1 => !unheld_elsewhere && !ahead,
            2 => !peers_deliver,
            _ => true,
        });
    }
    let held_back = candidates.len() < before;
    candidates.sort_unstable();
    let eligible: std::collections::BTreeSet<u32> = candidates.iter().map(|c| c.2).collect();
    let block = config.block_pieces.max(1);
    let mut left = count;
    for (_, _, piece) in candidates {
        if left == 0 {
            return;
        }
        if decision.release.contains(&piece) {
            continue;
        }
        decision.release.push(piece);
        left -= 1;
        // The eligible pieces after it in its block, while they run on:
        // one contiguous range for a cache.
        let block_end = (piece - piece % block).saturating_add(block);
        for next in piece + 1..block_end.min(config.piece_count) {
            if left == 0 || !eligible.contains(&next) || decision.release.contains(&next) {
                break;
            }
            decision.release.push(next);
            left -= 1;
        }
    }
    if held_back {
        return;
    }
    // Everything missing is with peers: take over the least advanced.
    let mut slow: Vec<(u64, u32)> = input
        .from_peers
        .iter()
        .filter(|(p, _)| wanted(input, **p) && !decision.release.contains(p))
        .map(|(p, here)| (*here, *p))
        .collect();
    slow.sort_unstable();
    for (_, piece) in slow.into_iter().take(left as usize) {
        decision.release.push(piece);
        decision.take_over.push(piece);
    }
}

/// Target downloads: designated pieces no peer holds or fetches, due
/// within the prefetch window, go to the caches early so the swarm gets
/// them once.
fn prefetch_designated(config: &GapConfig, input: &GapInput<'_>, decision: &mut GapDecision) {
    let Pace::Target { bytes_per_s, .. } = config.pace else {
        return;
    };
    if !input.peers_known {
        return;
    }
    let window_pieces = (config.prefetch_ms as f64 / 1000.0 * bytes_per_s
        / config.piece_bytes as f64)
        .ceil() as usize;
    let in_window = input.at_caches.len() as usize + decision.release.len();
    if in_window >= window_pieces {
        return;
    }
    // No more than the caches can start now: a designation made while
    // peers are still connecting may change.
    let mut room = (window_pieces - in_window).min(input.cache_slots_free as usize);
    for piece in 0..config.piece_count {
        if room == 0 {
            break;
        }
        let nobody_has = input.availability.get(piece as usize).copied().unwrap_or(0) == 0
            && !input.from_peers.contains_key(&piece);
        if nobody_has
            && wanted(input, piece)
            && !decision.release.contains(&piece)
            && (input.designated)(piece)
        {
            decision.release.push(piece);
            room -= 1;
        }
    }
}

/// Pieces nobody holds are designated in blocks of about this many bytes,
/// so that what one node fetches for the swarm is a contiguous range.
pub const DESIGNATION_BLOCK_BYTES: u64 = 1 << 20;

/// How many pieces one designation block holds.
pub fn designation_block_pieces(piece_bytes: u64) -> u32 {
    DESIGNATION_BLOCK_BYTES.div_ceil(piece_bytes.max(1)).max(1) as u32
}

/// Rendezvous: whether `me` beats every id in `others` for `piece`'s block
/// of `block_pieces` (the one of a neighbourhood that fetches pieces
/// nobody holds there).
pub fn designated(me: u64, others: &[u64], piece: u32, block_pieces: u32) -> bool {
    let block = piece / block_pieces.max(1);
    let score = |id: u64| mix(id ^ u64::from(block).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mine = score(me);
    others.iter().all(|o| *o == me || score(*o) < mine)
}

/// A 64-bit number for a 20-byte peer id.
pub fn peer_number(peer_id: &[u8; 20]) -> u64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&blake3::hash(peer_id).as_bytes()[..8]);
    u64::from_le_bytes(first)
}

fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests;
