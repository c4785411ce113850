//! The fill scheduler: where the pieces a cache is missing come from. Pure
//! functions of what the caller knows (pieces held here and at siblings,
//! who is fetching, which sources failed, whether the shield is refusing),
//! so the async filler, the warm-up and the simulation in this module's
//! tests all run the very same decisions.
//!
//! Sources, in order, for a run of pieces a reader or a relay wants
//! ([`choose_run`]):
//!
//! 1. This cache is the path's shield: the origin.
//! 2. A sibling that stores the first piece (and whose bytes we can check:
//!    the piece's hash is known here), least loaded first, then nearest,
//!    then with the most spare uplink, then cheapest ([`best_holder`]).
//! 3. While the shield refuses relays (a flash crowd): the cache that owns
//!    the piece's block ([`block_owner`]), asked to *relay* it. The owner
//!    fetches the block from the shield once and passes it on, so the
//!    shield sends each piece into the region about once and every cache's
//!    uplink carries a share of the copies.
//! 4. The shield. Marked *last resort* (never refused) when the relay
//!    failed, when the run is itself a relay (chains stay two hops long),
//!    or when the pieces cannot be checked at a relay yet.
//!
//! The shield side ([`admit_relay`]): a shield feeds one object to at most
//! [`FillLimits::shield_fanout_max`] caches at once. Beyond that it
//! refuses a request for a block another cache owns and names that cache
//! (`X-Shoal-Try`); the block's owner and last-resort requests are always
//! served. Warm-ups of whole objects use the same blocks and holder
//! ranking ([`swarm`]).

pub mod swarm;

#[cfg(test)]
mod sim;

use shoal_core::bitfield::PieceSet;
use shoal_core::{ObjectId, PieceIndex};

/// The scheduler's limits.
#[derive(Clone, Copy, Debug)]
pub struct FillLimits {
    /// Pieces per block: blocks are dealt over the caches of a region
    /// that relay for each other.
    pub block_pieces: u32,
    /// Longest run fetched from a sibling that stores it.
    pub holder_run_pieces_max: u32,
    /// Runs in flight from one sibling, at most (per unit of its weight).
    pub runs_per_holder_max: u32,
    /// Caches a shield feeds one object to at once before it refuses
    /// requests for blocks others own.
    pub shield_fanout_max: u32,
}

impl FillLimits {
    /// Limits for pieces of `piece_bytes`: blocks of about
    /// `block_bytes`, holder runs of about `holder_run_bytes`.
    pub fn for_piece_size(
        piece_bytes: u64,
        block_bytes: u64,
        holder_run_bytes: u64,
        shield_fanout_max: u32,
    ) -> Self {
        let pieces = |bytes: u64| (bytes / piece_bytes.max(1)).clamp(1, u32::MAX as u64) as u32;
        Self {
            block_pieces: pieces(block_bytes),
            holder_run_pieces_max: pieces(holder_run_bytes),
            runs_per_holder_max: 2,
            shield_fanout_max: shield_fanout_max.max(1),
        }
    }
}

/// The block piece `index` belongs to.
pub fn block_of(index: u32, limits: &FillLimits) -> u32 {
    index / limits.block_pieces.max(1)
}

/// One past the last piece of `index`'s block (within the object).
pub fn block_end(index: u32, limits: &FillLimits, piece_count: u32) -> u32 {
    let pieces = limits.block_pieces.max(1);
    (block_of(index, limits).saturating_add(1))
        .saturating_mul(pieces)
        .min(piece_count)
}

/// Where `object`'s blocks start being dealt: a hash of the object, so
/// different objects start at different caches.
pub fn deal_offset(object: &ObjectId) -> u32 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"shoal block owners v1\0");
    hasher.update(&object.0);
    let mut bytes = [0u8; 4];
    bytes.copy_from_slice(&hasher.finalize().as_bytes()[..4]);
    u32::from_le_bytes(bytes)
}

/// The cache among `relays` that owns `block` of `object`: blocks are
/// dealt round-robin over the relays in name order (an even deal, unlike
/// hashing each block), from [`deal_offset`]. `relays` need not be sorted.
pub fn block_owner<'a>(object: &ObjectId, block: u32, relays: &[&'a str]) -> Option<&'a str> {
    if relays.is_empty() {
        return None;
    }
    let mut sorted: Vec<&'a str> = relays.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let slot = (u64::from(block) + u64::from(deal_offset(object))) % sorted.len() as u64;
    Some(sorted[slot as usize])
}

/// What we know of a sibling that stores pieces of the object.
#[derive(Clone, Debug)]
pub struct Holder<'a> {
    pub node_id: &'a str,
    pub stored: &'a PieceSet,
    /// Runs we have in flight from it.
    pub runs_in_flight: u32,
    /// Its uplink relative to the thinnest sibling's (≥ 1): a sibling
    /// twice as fat may carry twice the runs.
    pub capacity_weight: u32,
    /// In this cache's region.
    pub near: bool,
    /// Measured round-trip time, in buckets of a few milliseconds (equal
    /// buckets count as equal).
    pub rtt_bucket: u64,
    /// Spare fraction of its egress cap, as gossiped (0..=1).
    pub spare_fraction: f64,
    pub cost_per_gb_microusd: u64,
}

/// The best sibling to fetch `piece` from: it stores it, is not excluded,
/// and has a free run slot; least loaded for its uplink first, then near,
/// then by round-trip time, spare uplink and cost.
pub fn best_holder<'h, 'a>(
    holders: &'h [Holder<'a>],
    piece: PieceIndex,
    excluded: &[String],
    runs_per_holder_max: u32,
) -> Option<&'h Holder<'a>> {
    holders
        .iter()
        .filter(|h| {
            h.stored.contains(piece)
                && h.runs_in_flight < runs_per_holder_max.max(1) * h.capacity_weight.max(1)
                && !excluded.iter().any(|e| e == h.node_id)
        })
        .min_by(|a, b| {
            // runs / weight, compared exactly.
            let left = u64::from(a.runs_in_flight) * u64::from(b.capacity_weight.max(1));
            let right = u64::from(b.runs_in_flight) * u64::from(a.capacity_weight.max(1));
            left.cmp(&right)
                .then(b.near.cmp(&a.near))
                .then(a.rtt_bucket.cmp(&b.rtt_bucket))
                .then(b.spare_fraction.total_cmp(&a.spare_fraction))
                .then(a.cost_per_gb_microusd.cmp(&b.cost_per_gb_microusd))
                .then(a.node_id.cmp(b.node_id))
        })
}

/// Where a run comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunSource {
    /// This cache is the shield.
    Origin,
    /// A sibling that stores the pieces (`have` mode).
    Holder(String),
    /// The cache owning the block, asked to relay it (`relay` mode).
    Relay(String),
    /// The path's shield (`fill` mode); a last-resort request is never
    /// refused.
    Shield { last_resort: bool },
}

/// A run: `count` pieces from the claim's first, from `source`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunChoice {
    pub source: RunSource,
    pub count: u32,
}

/// What a cache knows when it picks the source of a claimed run.
pub struct RunContext<'a> {
    pub object: &'a ObjectId,
    pub piece_count: u32,
    /// The claim: `claimed` consecutive pieces from `first`.
    pub first: u32,
    pub claimed: u32,
    pub self_id: &'a str,
    /// False when this cache is the path's shield.
    pub has_shield: bool,
    /// Piece `i`'s hash is known here (from the manifest or the shield),
    /// so bytes from a sibling can be checked.
    pub hash_known: &'a dyn Fn(u32) -> bool,
    pub holders: &'a [Holder<'a>],
    /// The shield refused a request of ours for this object recently.
    pub shield_refusing: bool,
    /// The run serves another cache's relay request.
    pub relaying: bool,
    /// The caches of this region that relay for each other (this one
    /// included, the shield not).
    pub relays: &'a [&'a str],
    /// Sources that failed for this run.
    pub excluded: &'a [String],
}

/// Picks the source of a claimed run and how many of its pieces to take
/// from there (the rest of the claim is scheduled on its own).
pub fn choose_run(ctx: &RunContext<'_>, limits: &FillLimits) -> RunChoice {
    let first = ctx.first;
    let claimed = ctx.claimed.max(1);
    let claim_end = first.saturating_add(claimed).min(ctx.piece_count.max(first + 1));
    if !ctx.has_shield {
        return RunChoice {
            source: RunSource::Origin,
            count: claimed,
        };
    }
    let hash_known = ctx.hash_known;
    if hash_known(first) {
        if let Some(holder) = best_holder(
            ctx.holders,
            PieceIndex(first),
            ctx.excluded,
            limits.runs_per_holder_max,
        ) {
            let end = claim_end.min(first.saturating_add(limits.holder_run_pieces_max.max(1)));
            let count = (first..end)
                .take_while(|&i| holder.stored.contains(PieceIndex(i)) && hash_known(i))
                .count() as u32;
            return RunChoice {
                source: RunSource::Holder(holder.node_id.to_string()),
                count: count.max(1),
            };
        }
    }
    // Within one block: the shield admits or refuses per block.
    let block_run = |checked: bool| {
        let end = claim_end.min(block_end(first, limits, ctx.piece_count));
        let count = (first..end)
            .take_while(|&i| !checked || hash_known(i))
            .count() as u32;
        count.max(1)
    };
    if !ctx.shield_refusing {
        return RunChoice {
            source: RunSource::Shield { last_resort: false },
            count: claimed,
        };
    }
    let owner = block_owner(ctx.object, block_of(first, limits), ctx.relays);
    let relay_usable = |owner: &str| {
        owner != ctx.self_id && !ctx.excluded.iter().any(|e| e == owner) && hash_known(first)
    };
    match owner {
        Some(owner) if !ctx.relaying && relay_usable(owner) => RunChoice {
            source: RunSource::Relay(owner.to_string()),
            count: block_run(true),
        },
        // We own the block: the shield serves its owner.
        Some(owner) if owner == ctx.self_id && !ctx.relaying => RunChoice {
            source: RunSource::Shield { last_resort: false },
            count: block_run(false),
        },
        _ => RunChoice {
            source: RunSource::Shield { last_resort: true },
            count: block_run(false),
        },
    }
}

/// A sibling's request to this shield for pieces from `first`.
pub struct RelayAsk<'a> {
    pub object: &'a ObjectId,
    pub first: u32,
    pub requester: &'a str,
    pub last_resort: bool,
    /// The caches fetching this object from us right now (any order; the
    /// requester may be among them).
    pub fetching: &'a [&'a str],
    /// The caches of the requester's region that relay for each other
    /// (not this shield).
    pub relays: &'a [&'a str],
}

/// The shield's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    Serve,
    /// Refused: ask this cache (the block's owner) to relay it.
    TryInstead(String),
}

/// Whether this shield serves a fill request or sends it to the block's
/// owner.
pub fn admit_relay(ask: &RelayAsk<'_>, limits: &FillLimits) -> Admission {
    if ask.last_resort {
        return Admission::Serve;
    }
    let mut others: Vec<&str> = ask
        .fetching
        .iter()
        .copied()
        .filter(|f| *f != ask.requester)
        .collect();
    others.sort_unstable();
    others.dedup();
    if (others.len() as u32) < limits.shield_fanout_max {
        return Admission::Serve;
    }
    match block_owner(ask.object, block_of(ask.first, limits), ask.relays) {
        Some(owner) if owner != ask.requester => Admission::TryInstead(owner.to_string()),
        _ => Admission::Serve,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: FillLimits = FillLimits {
        block_pieces: 4,
        holder_run_pieces_max: 8,
        runs_per_holder_max: 2,
        shield_fanout_max: 2,
    };
    const OBJECT: ObjectId = ObjectId([3; 32]);

    fn set(count: u32, held: impl IntoIterator<Item = u32>) -> PieceSet {
        let mut s = PieceSet::new(count);
        for i in held {
            s.insert(PieceIndex(i));
        }
        s
    }

    fn holder<'a>(node_id: &'a str, stored: &'a PieceSet, runs: u32) -> Holder<'a> {
        Holder {
            node_id,
            stored,
            runs_in_flight: runs,
            capacity_weight: 1,
            near: true,
            rtt_bucket: 0,
            spare_fraction: 0.5,
            cost_per_gb_microusd: 0,
        }
    }

    fn context<'a>(
        holders: &'a [Holder<'a>],
        refusing: bool,
        relaying: bool,
        excluded: &'a [String],
        known: &'a dyn Fn(u32) -> bool,
    ) -> RunContext<'a> {
        RunContext {
            object: &OBJECT,
            piece_count: 32,
            first: 5,
            claimed: 10,
            self_id: "c1",
            has_shield: true,
            hash_known: known,
            holders,
            shield_refusing: refusing,
            relaying,
            relays: &["c1", "c2", "c3"],
            excluded,
        }
    }

    #[test]
    fn blocks_are_dealt_evenly_and_every_cache_agrees() {
        let relays = ["c3", "c1", "c2"];
        let mut counts = std::collections::HashMap::new();
        for block in 0..30 {
            let owner = block_owner(&OBJECT, block, &relays).unwrap();
            // Order of the list does not matter.
            assert_eq!(Some(owner), block_owner(&OBJECT, block, &["c1", "c2", "c3"]));
            *counts.entry(owner).or_insert(0) += 1;
        }
        assert_eq!(counts.values().copied().collect::<Vec<_>>(), vec![10; 3]);
        assert_eq!(block_owner(&OBJECT, 0, &[]), None);
        assert_eq!(block_end(5, &LIMITS, 32), 8);
        assert_eq!(block_end(30, &LIMITS, 31), 31);
    }

    #[test]
    fn the_shield_fills_from_the_origin() {
        let all = |_| true;
        let mut ctx = context(&[], false, false, &[], &all);
        ctx.has_shield = false;
        assert_eq!(
            choose_run(&ctx, &LIMITS),
            RunChoice {
                source: RunSource::Origin,
                count: 10
            }
        );
    }

    #[test]
    fn a_stored_piece_comes_from_the_least_loaded_holder_while_checkable() {
        let a = set(32, 0..32);
        let b = set(32, 5..9);
        let holders = [holder("a", &a, 1), holder("b", &b, 0)];
        let all = |_| true;
        let ctx = context(&holders, false, false, &[], &all);
        // b is idle; its run ends where its pieces end.
        assert_eq!(
            choose_run(&ctx, &LIMITS),
            RunChoice {
                source: RunSource::Holder("b".into()),
                count: 4
            }
        );
        // b failed: a, up to the longest holder run.
        let failed = vec!["b".to_string()];
        let ctx = context(&holders, false, false, &failed, &all);
        assert_eq!(
            choose_run(&ctx, &LIMITS),
            RunChoice {
                source: RunSource::Holder("a".into()),
                count: 8
            }
        );
        // Without the hashes nothing comes from a sibling.
        let none = |_| false;
        let ctx = context(&holders, false, false, &[], &none);
        assert_eq!(
            choose_run(&ctx, &LIMITS).source,
            RunSource::Shield { last_resort: false }
        );
        // Hashes known up to piece 6 only: the run stops there.
        let some = |i| i < 7;
        let ctx = context(&holders, false, false, &failed, &some);
        assert_eq!(choose_run(&ctx, &LIMITS).count, 2);
    }

    #[test]
    fn a_refusing_shield_sends_runs_to_the_block_owner_within_the_block() {
        let all = |_| true;
        let owner = block_owner(&OBJECT, block_of(5, &LIMITS), &["c1", "c2", "c3"]).unwrap();
        let ctx = context(&[], true, false, &[], &all);
        let choice = choose_run(&ctx, &LIMITS);
        assert_eq!(choice.count, 3, "pieces 5..8 are one block");
        if owner == "c1" {
            assert_eq!(choice.source, RunSource::Shield { last_resort: false });
        } else {
            assert_eq!(choice.source, RunSource::Relay(owner.to_string()));
            // The owner failed: the shield, never refused.
            let failed = vec![owner.to_string()];
            let ctx = context(&[], true, false, &failed, &all);
            assert_eq!(
                choose_run(&ctx, &LIMITS).source,
                RunSource::Shield { last_resort: true }
            );
        }
        // A relay's own fill is never relayed again.
        let ctx = context(&[], true, true, &[], &all);
        assert_eq!(
            choose_run(&ctx, &LIMITS).source,
            RunSource::Shield { last_resort: true }
        );
        // Pieces a relay's bytes could not be checked for: the shield.
        let none = |_| false;
        let ctx = context(&[], true, false, &[], &none);
        let source = choose_run(&ctx, &LIMITS).source;
        assert!(matches!(source, RunSource::Shield { .. }), "{source:?}");
        // Not refusing: the whole claim from the shield.
        let ctx = context(&[], false, false, &[], &all);
        assert_eq!(
            choose_run(&ctx, &LIMITS),
            RunChoice {
                source: RunSource::Shield { last_resort: false },
                count: 10
            }
        );
    }

    #[test]
    fn the_shield_refuses_beyond_its_fanout_and_names_the_owner() {
        let relays = ["c1", "c2", "c3", "c4"];
        let ask = |requester: &str, fetching: &[&str], last_resort: bool| {
            let ask = RelayAsk {
                object: &OBJECT,
                first: 0,
                requester,
                last_resort,
                fetching,
                relays: &relays,
            };
            admit_relay(&ask, &LIMITS)
        };
        let owner = block_owner(&OBJECT, 0, &relays).unwrap();
        let other = relays.iter().find(|r| **r != owner).unwrap();
        // Two others fetching, plus this one again: within the fanout.
        assert_eq!(ask(other, &["x", other], false), Admission::Serve);
        assert_eq!(ask(other, &["x", "y"], false), Admission::TryInstead(owner.into()));
        assert_eq!(ask(other, &["x", "y"], true), Admission::Serve);
        assert_eq!(ask(owner, &["x", "y", "z"], false), Admission::Serve);
    }
}
