//! Swarm scheduling for filling a whole object (a warm-up): which run of
//! pieces to fetch next, and from whom. A pure function of what we hold,
//! what is in flight, and what each peer holds, so tests and benchmarks
//! drive the same code.
//!
//! The aim is the Kumar–Ross schedule: the origin (through the shield)
//! sends each piece into the mesh once, and caches pass pieces on to each
//! other, so all of them upload at once. The rules:
//!
//! 1. A piece a peer (not the shield) holds is fetched from the least busy
//!    such peer, at most [`SwarmLimits::runs_per_peer_max`] runs per peer.
//! 2. The object is cut into blocks of [`SwarmLimits::run_pieces_max`]
//!    pieces, striped over the caches warming it ([`assigned_to`]): a cache
//!    fetches from the shield only the blocks assigned to it, then relays
//!    them; the shield sends each piece out about once.
//! 3. A piece nobody relays in time (its cache is slow or gone: the caller
//!    sets `impatient`) is fetched from the shield anyway, so a warm-up
//!    never hangs on one peer.
//! 4. A run extends over consecutive needed pieces the same source can
//!    give, up to [`SwarmLimits::run_pieces_max`].

use super::{best_holder, block_owner, Holder};
use shoal_core::{ObjectId, PieceIndex};

/// What one peer holds and how busy we keep it: the fill scheduler's
/// [`Holder`].
pub type PeerPieces<'a> = Holder<'a>;

#[derive(Clone, Copy, Debug)]
pub struct SwarmLimits {
    pub run_pieces_max: u32,
    pub runs_per_peer_max: u32,
    /// Runs in flight from the shield (pieces nobody else holds).
    pub shield_runs_max: u32,
}

/// The next thing to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Fetch `count` pieces from `first` from this peer (it holds them).
    FromPeer {
        node_id: String,
        first: PieceIndex,
        count: u32,
    },
    /// Fetch `count` pieces from `first` from the shield (it fills them).
    FromShield { first: PieceIndex, count: u32 },
    /// Nothing can start now: wait for a run to finish or for news.
    Wait,
    /// Every piece is held.
    Done,
}

/// Decides the next step. `needed(i)`: piece `i` is neither held nor in
/// flight; `assigned(i)`: piece `i` is ours to fetch from the shield;
/// `peers` excludes the shield.
#[allow(clippy::too_many_arguments)]
pub fn next_step(
    piece_count: u32,
    needed: &dyn Fn(u32) -> bool,
    assigned: &dyn Fn(u32) -> bool,
    in_flight_count: u32,
    peers: &[PeerPieces<'_>],
    shield_runs_in_flight: u32,
    impatient: bool,
    start: u32,
    limits: SwarmLimits,
) -> Step {
    if piece_count == 0 {
        return Step::Done;
    }
    let run_max = limits.run_pieces_max.max(1);
    let held_by_peer = |i: u32| peers.iter().any(|p| p.stored.contains(PieceIndex(i)));
    let order = (0..piece_count).map(|k| (start % piece_count + k) % piece_count);
    let mut any_needed = false;
    let mut from_shield = None;
    for index in order {
        if !needed(index) {
            continue;
        }
        any_needed = true;
        let piece = PieceIndex(index);
        if let Some(peer) = best_holder(peers, piece, &[], limits.runs_per_peer_max) {
            let mut count = 1;
            while count < run_max
                && index + count < piece_count
                && needed(index + count)
                && peer.stored.contains(PieceIndex(index + count))
            {
                count += 1;
            }
            return Step::FromPeer {
                node_id: peer.node_id.to_string(),
                first: piece,
                count,
            };
        }
        if from_shield.is_none() && !held_by_peer(index) && (impatient || assigned(index)) {
            from_shield = Some(index);
        }
    }
    if !any_needed {
        return if in_flight_count == 0 {
            Step::Done
        } else {
            Step::Wait
        };
    }
    match from_shield {
        Some(index) if shield_runs_in_flight < limits.shield_runs_max => {
            let mut count = 1;
            while count < run_max
                && index + count < piece_count
                && needed(index + count)
                && !held_by_peer(index + count)
                && (impatient || assigned(index + count))
            {
                count += 1;
            }
            Step::FromShield {
                first: PieceIndex(index),
                count,
            }
        }
        _ => Step::Wait,
    }
}

/// Whether piece `index` of `object` is `self_id`'s to fetch from the
/// shield, when `warmers` (self included, shield excluded) warm it
/// together: blocks of `block_pieces` pieces, dealt as a flash crowd's
/// relays deal them ([`block_owner`]).
pub fn assigned_to(
    object: &ObjectId,
    index: u32,
    block_pieces: u32,
    warmers: &[&str],
    self_id: &str,
) -> bool {
    if warmers.is_empty() {
        return true;
    }
    let block = index / block_pieces.max(1);
    block_owner(object, block, warmers) == Some(self_id)
}

/// Where a cache starts in an object of `piece_count` pieces: spread
/// evenly by a hash of its name, so caches begin at different pieces.
pub fn start_offset(node_id: &str, object: &ObjectId, piece_count: u32) -> u32 {
    if piece_count == 0 {
        return 0;
    }
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"shoal swarm start v1\0");
    hasher.update(&object.0);
    hasher.update(node_id.as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&hasher.finalize().as_bytes()[..8]);
    (u64::from_le_bytes(bytes) % piece_count as u64) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_core::bitfield::PieceSet;
    use std::collections::{BTreeSet, HashMap};

    const LIMITS: SwarmLimits = SwarmLimits {
        run_pieces_max: 4,
        runs_per_peer_max: 2,
        shield_runs_max: 2,
    };

    fn peer<'a>(node_id: &'a str, pieces: &'a PieceSet, runs: u32, weight: u32) -> PeerPieces<'a> {
        Holder {
            node_id,
            stored: pieces,
            runs_in_flight: runs,
            capacity_weight: weight,
            near: true,
            rtt_bucket: 0,
            spare_fraction: 0.0,
            cost_per_gb_microusd: 0,
        }
    }

    fn set(count: u32, held: impl IntoIterator<Item = u32>) -> PieceSet {
        let mut s = PieceSet::new(count);
        for i in held {
            s.insert(PieceIndex(i));
        }
        s
    }

    #[test]
    fn pieces_a_peer_holds_come_from_the_least_busy_peer() {
        let a = set(10, 0..10);
        let b = set(10, 0..10);
        let peers = [peer("a", &a, 1, 1), peer("b", &b, 0, 1)];
        let step = next_step(10, &|i| i >= 3, &|_| true, 0, &peers, 0, false, 0, LIMITS);
        assert_eq!(
            step,
            Step::FromPeer {
                node_id: "b".into(),
                first: PieceIndex(3),
                count: 4
            }
        );
    }

    #[test]
    fn only_assigned_pieces_nobody_holds_go_to_the_shield() {
        let a = set(10, [5, 6]);
        let peers = [peer("a", &a, 2, 1)];
        let all = |_| true;
        // Start at 4: piece 4 nobody holds; 5 and 6 a holds (saturated).
        let step = next_step(10, &all, &all, 0, &peers, 0, false, 4, LIMITS);
        assert_eq!(
            step,
            Step::FromShield {
                first: PieceIndex(4),
                count: 1
            }
        );
        // Only 8 and 9 are ours.
        let ours = |i| i >= 8;
        let step = next_step(10, &all, &ours, 0, &peers, 0, false, 4, LIMITS);
        assert_eq!(
            step,
            Step::FromShield {
                first: PieceIndex(8),
                count: 2
            }
        );
        // Nothing ours is needed: wait for the others to relay, unless
        // impatient.
        let none = |_| false;
        assert_eq!(
            next_step(10, &all, &none, 0, &peers, 0, false, 4, LIMITS),
            Step::Wait
        );
        assert!(matches!(
            next_step(10, &all, &none, 0, &peers, 0, true, 4, LIMITS),
            Step::FromShield { .. }
        ));
        // The shield is saturated too: wait.
        assert_eq!(
            next_step(10, &all, &all, 0, &peers, 3, false, 4, LIMITS),
            Step::Wait
        );
        // All held, something in flight: wait; nothing in flight: done.
        assert_eq!(
            next_step(10, &none, &all, 1, &peers, 0, false, 0, LIMITS),
            Step::Wait
        );
        assert_eq!(
            next_step(10, &none, &all, 0, &peers, 0, false, 0, LIMITS),
            Step::Done
        );
    }

    #[test]
    fn a_fatter_peer_carries_more_runs() {
        let all = set(10, 0..10);
        let peers = [peer("thin", &all, 1, 1), peer("fat", &all, 3, 4)];
        // 3/4 < 1/1: the fat one is less loaded for its uplink.
        let every = |_| true;
        match next_step(10, &every, &every, 0, &peers, 0, false, 0, LIMITS) {
            Step::FromPeer { node_id, .. } => assert_eq!(node_id, "fat"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn blocks_are_dealt_round_robin() {
        let warmers = ["a", "b", "c"];
        let object = ObjectId([1; 32]);
        let owners: Vec<bool> = (0..12)
            .map(|i| assigned_to(&object, i, 2, &warmers, "b"))
            .collect();
        // Blocks of two, every third one b's.
        assert_eq!(owners.iter().filter(|o| **o).count(), 4);
        for pair in owners.chunks(2) {
            assert_eq!(pair[0], pair[1]);
        }
        let b_blocks: Vec<usize> = (0..6).filter(|k| owners[2 * k]).collect();
        assert_eq!(b_blocks[1] - b_blocks[0], 3);
        assert!(assigned_to(&object, 5, 2, &[], "x"));
    }

    /// A round-based simulation of N caches warming one object together:
    /// each round every cache may take one piece from one source, and a
    /// source serves at most `upload` pieces per round. Cache 0 is the
    /// shield: it takes what it serves from the origin (`origin_upload`
    /// pieces per round).
    fn simulate(caches: usize, pieces: u32, upload: u32, origin_upload: u32) -> (u32, u32) {
        let names: Vec<String> = (0..caches).map(|i| format!("c{i}")).collect();
        let warmers: Vec<&str> = names[1..].iter().map(String::as_str).collect();
        let mut held: Vec<BTreeSet<u32>> = vec![BTreeSet::new(); caches];
        let shield = 0usize;
        let mut origin_pieces = 0;
        let limits = SwarmLimits {
            run_pieces_max: 1,
            runs_per_peer_max: 1,
            shield_runs_max: 1,
        };
        for round in 1..10_000u32 {
            let sets: Vec<PieceSet> = held
                .iter()
                .map(|h| set(pieces, h.iter().copied()))
                .collect();
            let mut served: HashMap<usize, u32> = HashMap::new();
            let mut gains: Vec<(usize, u32)> = Vec::new();
            let mut origin_this_round = 0;
            // Sources share their upload fairly: who asks first rotates.
            // Downloads are unconstrained (as in Kumar–Ross): a cache keeps
            // taking steps until nothing more can start this round.
            for k in 0..caches {
                let c = (k + round as usize) % caches;
                let id = shoal_core::ObjectId([7; 32]);
                let start = start_offset(&names[c], &id, pieces);
                let mut taken: BTreeSet<u32> = BTreeSet::new();
                loop {
                    let peers: Vec<PeerPieces> = (1..caches)
                        .filter(|&p| p != c)
                        .map(|p| {
                            let busy = served.get(&p).copied().unwrap_or(0) >= upload;
                            peer(&names[p], &sets[p], u32::from(busy), 1)
                        })
                        .collect();
                    let needed = |i: u32| !held[c].contains(&i) && !taken.contains(&i);
                    let assigned =
                        |i: u32| c == shield || assigned_to(&id, i, 1, &warmers, &names[c]);
                    let shield_busy = if c == shield {
                        u32::from(origin_this_round >= origin_upload)
                    } else {
                        u32::from(served.get(&shield).copied().unwrap_or(0) >= upload)
                    };
                    let step = next_step(
                        pieces,
                        &needed,
                        &assigned,
                        0,
                        &peers,
                        shield_busy,
                        false,
                        start,
                        limits,
                    );
                    match step {
                        Step::FromPeer { node_id, first, .. } => {
                            let p = names.iter().position(|n| *n == node_id).unwrap();
                            *served.entry(p).or_default() += 1;
                            taken.insert(first.0);
                            gains.push((c, first.0));
                        }
                        Step::FromShield { first, .. } if c == shield => {
                            origin_this_round += 1;
                            origin_pieces += 1;
                            taken.insert(first.0);
                            gains.push((c, first.0));
                        }
                        Step::FromShield { first, .. } => {
                            let have = held[shield].contains(&first.0);
                            if !have && origin_this_round >= origin_upload {
                                break;
                            }
                            *served.entry(shield).or_default() += 1;
                            if !have {
                                origin_this_round += 1;
                                origin_pieces += 1;
                                gains.push((shield, first.0));
                            }
                            taken.insert(first.0);
                            gains.push((c, first.0));
                        }
                        Step::Wait | Step::Done => break,
                    }
                }
            }
            for (c, piece) in gains {
                held[c].insert(piece);
            }
            if held.iter().all(|h| h.len() as u32 == pieces) {
                return (round, origin_pieces);
            }
        }
        panic!("did not finish");
    }

    #[test]
    fn a_simulated_swarm_finishes_near_the_kumar_ross_bound() {
        // 8 caches, 256 pieces, every cache and the origin upload 1 piece
        // per round: the bound is max(F/u_s, N·F/(u_s + Σu_i)) = 256 rounds.
        let (rounds, origin_pieces) = simulate(8, 256, 1, 1);
        eprintln!("8 caches, 256 pieces, equal uploads: {rounds} rounds (bound 256)");
        assert!(rounds <= (256.0 * 1.3) as u32, "{rounds} rounds");
        assert_eq!(origin_pieces, 256, "the origin sent each piece once");
        // Caches faster than the origin: still bound by the origin.
        let (rounds, origin_pieces) = simulate(8, 128, 2, 1);
        assert!(rounds <= (128.0 * 1.3) as u32, "{rounds} rounds");
        assert_eq!(origin_pieces, 128);
    }
}
