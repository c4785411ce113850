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
//! 3. The shield, one block at a time. When it refuses (a flash crowd) it
//!    names the cache to ask instead, and that cache is asked to *relay*
//!    the block: it fetches the block from the shield once and passes it
//!    on, so the shield sends each piece into the region about once and
//!    every cache's uplink carries a share of the copies.
//! 4. The shield as *last resort* (never refused): when the relay failed,
//!    when the run is itself a relay's fill, or when the pieces could not
//!    be checked at a relay yet. (A relay request can still join a relay's
//!    own claim that comes from another relay: blocks may pass along a
//!    chain of caches; the desk keeps the chain free of cycles.)
//!
//! The shield side ([`RelayDesk::admit`]): a shield feeds one object to at most
//! [`FillLimits::shield_fanout_max`] caches at once, or more while its uplink
//! has room (what it promised to send is under half a second of its egress
//! cap). Beyond that it sends a
//! request for a block to the cache that fetched that block from it first,
//! or, for a block nobody fetched yet, to the block's owner
//! ([`block_owner`], an even deal of blocks over the region's caches);
//! the fetcher, the owner of an unfetched block and last-resort requests
//! are served. A warm-up of a whole object reads it like a client does, so
//! warm-ups and client fills are scheduled by this same code.

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
    /// Caches a shield feeds one object to at once before it sends
    /// requesters to relays.
    pub shield_fanout_max: u32,
    /// Requesters one cache is given to relay one block to.
    pub relay_fanout_max: u32,
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
            relay_fanout_max: 2,
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
    /// The shield refused this run and named the cache to relay it.
    pub try_instead: Option<&'a str>,
    /// The run serves another cache's relay request.
    pub relaying: bool,
    /// This cache gave up relays for the object (its shield failed): no
    /// relay, and whichever shield is asked must serve.
    pub relays_off: bool,
    /// Sources that failed for this run.
    pub excluded: &'a [String],
}

/// Picks the source of a claimed run and how many of its pieces to take
/// from there (the rest of the claim is scheduled on its own).
pub fn choose_run(ctx: &RunContext<'_>, limits: &FillLimits) -> RunChoice {
    let first = ctx.first;
    let claimed = ctx.claimed.max(1);
    let claim_end = first
        .saturating_add(claimed)
        .min(ctx.piece_count.max(first + 1));
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
    // The shield is asked block by block, so a crowd arriving mid-run
    // turns the rest of the run into relays.
    if ctx.relays_off {
        return RunChoice {
            source: RunSource::Shield { last_resort: true },
            count: block_run(false),
        };
    }
    match ctx.try_instead {
        Some(relay)
            if !ctx.relaying
                && relay != ctx.self_id
                && !ctx.excluded.iter().any(|e| e == relay)
                && hash_known(first) =>
        {
            RunChoice {
                source: RunSource::Relay(relay.to_string()),
                count: block_run(true),
            }
        }
        // A relay's own fill is never relayed again (chains stay two hops
        // long); a refused run that cannot be relayed, or whose relay
        // failed, is served anyway.
        try_instead => RunChoice {
            source: RunSource::Shield {
                last_resort: ctx.relaying || try_instead.is_some(),
            },
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
    /// The caches of the requester's region that may relay (alive and
    /// usable; not this shield).
    pub relays: &'a [&'a str],
    /// Those of other regions: a block not yet in the requester's region
    /// is relayed from one (it crosses regions once either way, and the
    /// shield's uplink is spared).
    pub far_relays: &'a [&'a str],
    /// A cache's uplink relative to the thinnest relay's (≥ 1): a cache
    /// with twice the uplink is given twice the requesters.
    pub uplink_weight: &'a dyn Fn(&str) -> u64,
    /// This shield's uplink can take the request now (what it has
    /// promised to send directly is under a fraction of a second of its
    /// cap): served directly, crowd or not.
    pub shield_has_uplink: bool,
    /// When this shield would have sent the block if it served it now
    /// (what it promised, then the block, at its egress cap), ms from
    /// now; `None` when its uplink is not capped (then unknown).
    pub shield_eta_ms: Option<u64>,
    /// A cache's uplink in bytes per second, as gossiped (0: not capped).
    pub uplink_bytes_per_s: &'a dyn Fn(&str) -> u64,
    /// Bytes a relay takes on by relaying this request (the block).
    pub block_bytes: u64,
    /// A switch: the requester is already getting these pieces from a
    /// relay or holder, which would take this long (ms) at the rate it
    /// delivers ([`switch_eta_ms`]). Served only when this shield would
    /// deliver in well under that time; otherwise [`Admission::Stay`].
    pub switch_from_eta_ms: Option<u64>,
    /// This shield stores every piece asked for now (a switch is taken
    /// only then: pieces it still waits for from the origin would come no
    /// sooner, and a second copy would cost the uplink the origin-bound
    /// fill needs).
    pub held_here: bool,
}

/// The shield's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    Serve,
    /// Refused: ask this cache to relay the block.
    TryInstead(String),
    /// A switch refused: keep the source you have.
    Stay,
}

/// A run from a relay or holder is moved to the shield only when the
/// shield would deliver in under this fraction of the run's own time
/// left (so a run does not flap between sources on noise).
pub const SWITCH_GAIN: u64 = 2;
/// A run's rate is judged only after it has been receiving this long.
pub const SWITCH_JUDGE_AFTER_MS: u64 = 1_000;
/// Runs with less than this left are not worth a switch.
pub const SWITCH_ETA_MIN_MS: u64 = 1_000;
/// A run asks the shield to take it over at most this often.
pub const SWITCH_ASK_EVERY_MS: u64 = 1_000;

/// For a run from a relay or holder that has delivered `received_bytes`
/// in the `receiving_ms` since its first byte and has `remaining_bytes`
/// to go: how long it would still take at that rate (ms), when that is
/// long enough to ask the shield whether it can do better (the shield's
/// uplink may have emptied while a thin relay still has a queue,
/// typically at the end of a warm-up or crowd). `None`: keep the run as
/// it is.
///
/// The rate is taken from the first byte on: a relay's first byte waits
/// on its own fill, which says nothing of how fast it passes the block on
/// (and a source that never sends is left out by the read timeout).
pub fn switch_eta_ms(received_bytes: u64, remaining_bytes: u64, receiving_ms: u64) -> Option<u64> {
    if receiving_ms < SWITCH_JUDGE_AFTER_MS || remaining_bytes == 0 || received_bytes == 0 {
        return None;
    }
    let eta_ms = remaining_bytes.saturating_mul(receiving_ms) / received_bytes;
    (eta_ms >= SWITCH_ETA_MIN_MS).then_some(eta_ms)
}

/// Who received one block from this shield, directly or by relay.
#[derive(Debug, Default)]
struct BlockReceivers {
    /// Receivers in order.
    receivers: Vec<Receiver>,
    last_used_ms: u64,
}

#[derive(Debug)]
struct Receiver {
    node: String,
    /// Requesters we sent to it for this block.
    relays_given: u32,
    /// We served it ourselves (rather than sending it to a relay).
    direct: bool,
    /// The relay we sent it to.
    parent: Option<String>,
}

impl RelayAsk<'_> {
    /// `node` may relay for this requester: alive and usable, in its
    /// region or another, and not the requester itself.
    fn may_relay(&self, node: &str) -> bool {
        node != self.requester && (self.relays.contains(&node) || self.far_relays.contains(&node))
    }
}

impl BlockReceivers {
    fn receiver(&self, node: &str) -> Option<&Receiver> {
        self.receivers.iter().find(|r| r.node == node)
    }

    /// Records that this shield serves `requester` the block itself.
    fn serve(&mut self, requester: &str) -> Admission {
        match self.receivers.iter_mut().find(|r| r.node == requester) {
            Some(known) => known.direct = true,
            None => self.receivers.push(Receiver {
                node: requester.to_string(),
                relays_given: 0,
                direct: true,
                parent: None,
            }),
        }
        Admission::Serve
    }

    /// Records that `requester` gets the block through `parent`.
    fn add_relayed(&mut self, requester: &str, parent: &str) {
        match self.receivers.iter_mut().find(|r| r.node == requester) {
            Some(known) => known.parent = Some(parent.to_string()),
            None => self.receivers.push(Receiver {
                node: requester.to_string(),
                relays_given: 0,
                direct: false,
                parent: Some(parent.to_string()),
            }),
        }
    }

    /// `node` gets the block through `ask`'s requester (sending the
    /// requester to it would close a cycle and stall both).
    fn descends_from(&self, node: &str, requester: &str) -> bool {
        let mut at = node.to_string();
        for _ in 0..=self.receivers.len() {
            if at == requester {
                return true;
            }
            match self.receiver(&at).and_then(|r| r.parent.clone()) {
                Some(parent) => at = parent,
                None => return false,
            }
        }
        true
    }

    /// Among the receivers with a free relay slot, one in the requester's
    /// region first, then the one that relayed least so far (every uplink
    /// carries a share), the earliest on a tie. A fresh receiver has
    /// relayed least, so in a crowd a block tends to pass along a chain of
    /// caches, piece by piece (measured and simulated: this spreads the
    /// copies evenly; the earliest-first tree of the first design
    /// overloaded the caches that asked first).
    fn least_relaying_receiver(
        &self,
        ask: &RelayAsk<'_>,
        limits: &FillLimits,
        relay_load: &std::collections::HashMap<String, u64>,
    ) -> Option<String> {
        self.receivers
            .iter()
            .filter(|r| {
                ask.may_relay(&r.node)
                    && r.relays_given < limits.relay_fanout_max.max(1)
                    && !self.descends_from(&r.node, ask.requester)
            })
            .min_by_key(|r| {
                let relayed = relay_load.get(&r.node).copied().unwrap_or(0);
                let weight = (ask.uplink_weight)(&r.node).max(1);
                (
                    !ask.relays.contains(&r.node.as_str()),
                    relayed.saturating_mul(1024) / weight,
                )
            })
            .map(|r| r.node.clone())
    }
}

/// The owner of `block` among the requester's region's relays (or, with
/// none there, the others'): blocks are dealt in proportion to uplinks,
/// so a cache with twice the uplink owns twice the blocks.
fn weighted_owner<'a>(ask: &RelayAsk<'a>, block: u32) -> Option<&'a str> {
    let owners = if ask.relays.is_empty() {
        ask.far_relays
    } else {
        ask.relays
    };
    let weighted: Vec<String> = owners
        .iter()
        .flat_map(|node| {
            let weight = (ask.uplink_weight)(node).clamp(1, 8);
            (0..weight).map(move |k| format!("{node}\u{0}{k}"))
        })
        .collect();
    let weighted: Vec<&str> = weighted.iter().map(String::as_str).collect();
    block_owner(ask.object, block, &weighted)
        .and_then(|slot| slot.split('\u{0}').next())
        .and_then(|name| owners.iter().copied().find(|o| *o == name))
}

/// The shield's side of relaying, as a state machine (`now` passed in):
/// which caches received which block, and how many requesters each was
/// given to relay to.
///
/// While more than [`FillLimits::shield_fanout_max`] caches fetch an
/// object at once, a request for a block is sent to the receiver of that
/// block that relays least (at most [`FillLimits::relay_fanout_max`]
/// each, so the copies form a tree and every uplink carries some); a
/// block nobody received yet goes to its owner ([`block_owner`]), so the
/// shield sends each block into the region about once. The shield serves
/// the rest: last-resort requests, the owner, requests while the object is
/// not crowded.
#[derive(Debug, Default)]
pub struct RelayDesk {
    blocks: std::collections::HashMap<(ObjectId, u32), BlockReceivers>,
    /// Per object, who asked for it lately and when (ms).
    askers: std::collections::HashMap<ObjectId, Vec<(String, u64)>>,
    /// Requesters sent to each cache so far (to spread the relaying).
    relay_load: std::collections::HashMap<String, u64>,
    /// Bytes each cache was given to relay and has not sent yet, by the
    /// desk's estimate (drained at its uplink), and when last updated.
    relay_backlog: Backlogs,
}

/// How long `bytes` take at `bytes_per_s` (0: not capped, so no time), ms.
fn eta_ms(bytes: u64, bytes_per_s: u64) -> u64 {
    match bytes_per_s {
        0 => 0,
        rate => bytes.saturating_mul(1000) / rate,
    }
}

/// Per cache, the bytes the desk gave it to relay and has not seen sent
/// (by its estimate), and when that was last updated (ms).
type Backlogs = std::collections::HashMap<String, (u64, u64)>;

/// What `node` still has to relay by the desk's estimate: what it was
/// given, drained at its uplink since.
fn backlog_bytes(backlogs: &mut Backlogs, node: &str, ask: &RelayAsk<'_>, now_ms: u64) -> u64 {
    let Some((bytes, at_ms)) = backlogs.get_mut(node) else {
        return 0;
    };
    let uplink = (ask.uplink_bytes_per_s)(node);
    let drained = if uplink == 0 {
        u64::MAX
    } else {
        uplink.saturating_mul(now_ms.saturating_sub(*at_ms)) / 1000
    };
    *bytes = bytes.saturating_sub(drained);
    *at_ms = now_ms;
    *bytes
}

fn add_backlog(backlogs: &mut Backlogs, node: &str, ask: &RelayAsk<'_>, now_ms: u64) {
    let backlog = backlog_bytes(backlogs, node, ask, now_ms);
    if backlogs.len() >= RELAY_LOAD_NODES_MAX && !backlogs.contains_key(node) {
        backlogs.clear();
    }
    backlogs.insert(
        node.to_string(),
        (backlog.saturating_add(ask.block_bytes), now_ms),
    );
}

/// Caches whose relay load the desk counts, at most.
const RELAY_LOAD_NODES_MAX: usize = 4_096;

/// Blocks the desk remembers, at most.
pub const RELAY_DESK_BLOCKS_MAX: usize = 16_384;
/// A block not asked for this long is forgotten.
pub const RELAY_DESK_MEMORY_MS: u64 = 60_000;
/// Caches that asked for an object within this window count as its
/// crowd.
pub const CROWD_WINDOW_MS: u64 = 5_000;
/// Askers remembered per object, at most.
const ASKERS_PER_OBJECT_MAX: usize = 1_024;
/// Receivers recorded per block, at most.
const RECEIVERS_PER_BLOCK_MAX: usize = 256;

impl RelayDesk {
    /// Serves `ask` or names the cache to ask instead (see the type's
    /// doc): a switch is served only when clearly sooner; last-resort
    /// requests and caches already served are served; an uncrowded object
    /// or a shield with uplink to spare serves; otherwise the block goes
    /// to a receiver that would deliver sooner, or to its owner.
    pub fn admit(&mut self, ask: &RelayAsk<'_>, limits: &FillLimits, now_ms: u64) -> Admission {
        if self.blocks.len() >= RELAY_DESK_BLOCKS_MAX {
            self.forget_old(now_ms);
        }
        let others = self.note_asker(ask.object, ask.requester, now_ms);
        if let Some(current_eta_ms) = ask.switch_from_eta_ms {
            // Taken over only by a shield that is clearly sooner (an
            // uncapped shield's time is unknown: it takes over while its
            // uplink has room).
            let sooner = match ask.shield_eta_ms {
                Some(eta) => eta.saturating_mul(SWITCH_GAIN) < current_eta_ms,
                None => ask.shield_has_uplink,
            };
            if !sooner || !ask.held_here {
                return Admission::Stay;
            }
        }
        let block_index = block_of(ask.first, limits);
        let block = self.blocks.entry((*ask.object, block_index)).or_default();
        if now_ms.saturating_sub(block.last_used_ms) >= RELAY_DESK_MEMORY_MS {
            block.receivers.clear();
        }
        block.last_used_ms = now_ms;
        let requester = ask.requester;
        // A block's receivers are the caches of a mesh; past this many the
        // desk stops recording (and simply serves).
        if block.receivers.len() >= RECEIVERS_PER_BLOCK_MAX && block.receiver(requester).is_none() {
            return Admission::Serve;
        }
        let served_before = block.receiver(requester).is_some_and(|r| r.direct);
        // A switch the shield takes is served like a last resort.
        if ask.last_resort || served_before || ask.switch_from_eta_ms.is_some() {
            return block.serve(requester);
        }
        if others < limits.shield_fanout_max || ask.shield_has_uplink {
            return block.serve(requester);
        }
        // Sent away before (asking for more of the block, or again after
        // its relay failed): the same relay while it lives; the requester
        // itself falls back to us if that one failed.
        let parent = block.receiver(requester).and_then(|r| r.parent.clone());
        if let Some(parent) = parent.filter(|p| ask.may_relay(p)) {
            return Admission::TryInstead(parent);
        }
        if let Some(relay) = block.least_relaying_receiver(ask, limits, &self.relay_load) {
            // The shield itself when it would deliver sooner than the
            // relay, with what each already has to send (a thin relay
            // must not hold requesters the shield's uplink could take).
            if let Some(shield_eta) = ask.shield_eta_ms {
                let backlog = backlog_bytes(&mut self.relay_backlog, &relay, ask, now_ms);
                let relay_eta = eta_ms(backlog + ask.block_bytes, (ask.uplink_bytes_per_s)(&relay));
                if shield_eta <= relay_eta {
                    return block.serve(requester);
                }
            }
            if let Some(receiver) = block.receivers.iter_mut().find(|r| r.node == relay) {
                receiver.relays_given += 1;
            }
            block.add_relayed(requester, &relay);
            self.count_relay(&relay);
            add_backlog(&mut self.relay_backlog, &relay, ask, now_ms);
            return Admission::TryInstead(relay);
        }
        let anyone_alive = block.receivers.iter().any(|r| ask.may_relay(&r.node));
        // A busy owner would hold the requester longer than the shield:
        // the requester takes the block first instead (it is one copy
        // either way, and the owner is then sent to the requester).
        let backlogs = &mut self.relay_backlog;
        let owner = weighted_owner(ask, block_index).filter(|owner| {
            let busy = ask.shield_eta_ms.is_some_and(|shield_eta| {
                let backlog = backlog_bytes(backlogs, owner, ask, now_ms);
                shield_eta < eta_ms(backlog, (ask.uplink_bytes_per_s)(owner))
            });
            !busy
        });
        match owner {
            Some(owner) if !anyone_alive && owner != requester => {
                // The owner fetches the block from us: served when it asks.
                block.receivers.push(Receiver {
                    node: owner.to_string(),
                    relays_given: 1,
                    direct: true,
                    parent: None,
                });
                block.add_relayed(requester, owner);
                self.count_relay(owner);
                add_backlog(&mut self.relay_backlog, owner, ask, now_ms);
                Admission::TryInstead(owner.to_string())
            }
            _ => block.serve(requester),
        }
    }

    /// Forgets blocks not asked for within [`RELAY_DESK_MEMORY_MS`] (or,
    /// if that is not enough, the older half) and askers outside the
    /// crowd window.
    fn forget_old(&mut self, now_ms: u64) {
        self.blocks
            .retain(|_, b| now_ms.saturating_sub(b.last_used_ms) < RELAY_DESK_MEMORY_MS);
        if self.blocks.len() >= RELAY_DESK_BLOCKS_MAX {
            // Drop the older half (not everything: the parent links of
            // blocks in use keep relays from forming cycles).
            let mut ages: Vec<u64> = self.blocks.values().map(|b| b.last_used_ms).collect();
            ages.sort_unstable();
            let cutoff = ages[ages.len() / 2];
            self.blocks.retain(|_, b| b.last_used_ms > cutoff);
        }
        self.askers.retain(|_, askers| {
            askers.retain(|(_, at)| now_ms.saturating_sub(*at) < CROWD_WINDOW_MS);
            !askers.is_empty()
        });
    }

    /// Records that `requester` asked for `object` now; returns how many
    /// other caches asked for it within [`CROWD_WINDOW_MS`].
    fn note_asker(&mut self, object: &ObjectId, requester: &str, now_ms: u64) -> u32 {
        let askers = self.askers.entry(*object).or_default();
        askers.retain(|(_, at)| now_ms.saturating_sub(*at) < CROWD_WINDOW_MS);
        let room = askers.len() < ASKERS_PER_OBJECT_MAX;
        match askers.iter_mut().find(|(node, _)| node == requester) {
            Some(known) => known.1 = now_ms,
            None if room => askers.push((requester.to_string(), now_ms)),
            None => {}
        }
        askers.iter().filter(|(node, _)| node != requester).count() as u32
    }

    fn count_relay(&mut self, node: &str) {
        if self.relay_load.len() >= RELAY_LOAD_NODES_MAX && !self.relay_load.contains_key(node) {
            self.relay_load.clear();
        }
        *self.relay_load.entry(node.to_string()).or_default() += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: FillLimits = FillLimits {
        block_pieces: 4,
        holder_run_pieces_max: 8,
        runs_per_holder_max: 2,
        shield_fanout_max: 1,
        relay_fanout_max: 2,
    };
    const OBJECT: ObjectId = ObjectId([3; 32]);

    /// An ask with every field at its plain value (no crowd facts, equal
    /// uplinks, no queue known); tests set what they are about.
    fn plain_ask() -> RelayAsk<'static> {
        RelayAsk {
            object: &OBJECT,
            first: 0,
            requester: "",
            last_resort: false,
            relays: &[],
            far_relays: &[],
            uplink_weight: &|_| 1,
            shield_has_uplink: false,
            shield_eta_ms: None,
            uplink_bytes_per_s: &|_| 0,
            block_bytes: 4 << 20,
            switch_from_eta_ms: None,
            held_here: true,
        }
    }

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
        try_instead: Option<&'a str>,
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
            try_instead,
            relaying,
            relays_off: false,
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
            assert_eq!(
                Some(owner),
                block_owner(&OBJECT, block, &["c1", "c2", "c3"])
            );
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
        let mut ctx = context(&[], None, false, &[], &all);
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
        let ctx = context(&holders, None, false, &[], &all);
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
        let ctx = context(&holders, None, false, &failed, &all);
        assert_eq!(
            choose_run(&ctx, &LIMITS),
            RunChoice {
                source: RunSource::Holder("a".into()),
                count: 8
            }
        );
        // Without the hashes nothing comes from a sibling.
        let none = |_| false;
        let ctx = context(&holders, None, false, &[], &none);
        assert_eq!(
            choose_run(&ctx, &LIMITS).source,
            RunSource::Shield { last_resort: false }
        );
        // Hashes known up to piece 6 only: the run stops there.
        let some = |i| i < 7;
        let ctx = context(&holders, None, false, &failed, &some);
        assert_eq!(choose_run(&ctx, &LIMITS).count, 2);
    }

    #[test]
    fn a_refused_run_goes_to_the_named_relay_within_the_block() {
        let all = |_| true;
        let ctx = context(&[], Some("c2"), false, &[], &all);
        assert_eq!(
            choose_run(&ctx, &LIMITS),
            RunChoice {
                source: RunSource::Relay("c2".into()),
                count: 3
            },
            "pieces 5..8 are one block"
        );
        // The relay failed (the shield named it again): the shield, never
        // refused.
        let failed = vec!["c2".to_string()];
        let ctx = context(&[], Some("c2"), false, &failed, &all);
        assert_eq!(
            choose_run(&ctx, &LIMITS).source,
            RunSource::Shield { last_resort: true }
        );
        // A relay's own fill is never relayed again.
        let ctx = context(&[], Some("c2"), true, &[], &all);
        assert_eq!(
            choose_run(&ctx, &LIMITS).source,
            RunSource::Shield { last_resort: true }
        );
        let ctx = context(&[], None, true, &[], &all);
        assert_eq!(
            choose_run(&ctx, &LIMITS).source,
            RunSource::Shield { last_resort: true }
        );
        // Pieces a relay's bytes could not be checked for: the shield.
        let none = |_| false;
        let ctx = context(&[], Some("c2"), false, &[], &none);
        assert_eq!(
            choose_run(&ctx, &LIMITS).source,
            RunSource::Shield { last_resort: true }
        );
        // Relays given up (the shield failed): the shield, must serve.
        let mut ctx = context(&[], Some("c2"), false, &[], &all);
        ctx.relays_off = true;
        assert_eq!(
            choose_run(&ctx, &LIMITS).source,
            RunSource::Shield { last_resort: true }
        );
        // Not refused: the shield, a block at a time.
        let ctx = context(&[], None, false, &[], &all);
        assert_eq!(
            choose_run(&ctx, &LIMITS),
            RunChoice {
                source: RunSource::Shield { last_resort: false },
                count: 3
            }
        );
    }

    #[test]
    fn a_crowded_shield_passes_each_block_on_through_the_caches_that_relayed_least() {
        let relays = ["c1", "c2", "c3", "c4", "c5", "c6", "c7"];
        let mut desk = RelayDesk::default();
        let ask = |desk: &mut RelayDesk, requester: &str, last: bool| {
            let ask = RelayAsk {
                requester,
                last_resort: last,
                relays: &relays,
                ..plain_ask()
            };
            desk.admit(&ask, &LIMITS, 1_000)
        };
        // The first to ask: no crowd, served.
        assert_eq!(ask(&mut desk, "c1", false), Admission::Serve);
        // A second cache makes a crowd: c1 received the block, so it
        // relays; then those who relayed least so far pass it on. c4 asks
        // again last (more of the block, or its relay failed): its relay
        // again.
        for (requester, relay) in [
            ("c4", "c1"),
            ("c5", "c4"),
            ("c6", "c5"),
            ("c7", "c6"),
            ("c2", "c7"),
            ("c4", "c1"),
        ] {
            assert_eq!(
                ask(&mut desk, requester, false),
                Admission::TryInstead(relay.into()),
                "{requester}"
            );
        }
        // As last resort: served, and from then on a direct receiver.
        assert_eq!(ask(&mut desk, "c3", true), Admission::Serve);
        assert_eq!(ask(&mut desk, "c3", false), Admission::Serve);
    }

    #[test]
    fn a_requester_is_never_sent_to_a_relay_that_gets_the_block_through_it() {
        let all = ["c1", "c2", "c3", "c4"];
        let mut desk = RelayDesk::default();
        let ask = |desk: &mut RelayDesk, requester: &str, relays: &[&str]| {
            let ask = RelayAsk {
                requester,
                relays,
                ..plain_ask()
            };
            desk.admit(&ask, &LIMITS, 0)
        };
        assert_eq!(ask(&mut desk, "c1", &all), Admission::Serve);
        assert_eq!(
            ask(&mut desk, "c2", &all),
            Admission::TryInstead("c1".into())
        );
        assert_eq!(
            ask(&mut desk, "c3", &all),
            Admission::TryInstead("c2".into())
        );
        // c1 dies; c2 asks again: not c3, which gets the block from c2.
        let without_c1 = ["c2", "c3", "c4"];
        assert_eq!(ask(&mut desk, "c2", &without_c1), Admission::Serve);
        // c3 asks again: c2 still relays it.
        assert_eq!(
            ask(&mut desk, "c3", &without_c1),
            Admission::TryInstead("c2".into())
        );
    }

    #[test]
    fn blocks_and_relays_go_to_caches_in_proportion_to_their_uplinks() {
        let relays = ["fat", "thin"];
        let weight = |node: &str| if node == "fat" { 3 } else { 1 };
        let mut desk = RelayDesk::default();
        let mut owners = std::collections::HashMap::new();
        for block in 0..40u32 {
            // "x" makes it a crowd; "asker" is neither relay.
            for requester in ["x", "asker"] {
                let ask = RelayAsk {
                    first: block * LIMITS.block_pieces,
                    requester,
                    relays: &relays,
                    uplink_weight: &weight,
                    ..plain_ask()
                };
                if let Admission::TryInstead(owner) = desk.admit(&ask, &LIMITS, 0) {
                    if requester == "asker" {
                        *owners.entry(owner).or_insert(0) += 1;
                    }
                }
            }
        }
        // "x" asked first each time and was sent to the owner; "asker" is
        // then sent to whichever relayed least for its uplink.
        let fat = owners.get("fat").copied().unwrap_or(0);
        let thin = owners.get("thin").copied().unwrap_or(0);
        assert!(fat >= 2 * thin, "fat {fat}, thin {thin}");
    }

    #[test]
    fn a_shield_with_uplink_to_spare_serves_a_crowd_itself() {
        let relays = ["c1", "c2", "c3"];
        let mut desk = RelayDesk::default();
        let mut ask = |requester: &str, has_uplink: bool| {
            let ask = RelayAsk {
                requester,
                relays: &relays,
                shield_has_uplink: has_uplink,
                ..plain_ask()
            };
            desk.admit(&ask, &LIMITS, 0)
        };
        assert_eq!(ask("c1", false), Admission::Serve);
        assert_eq!(ask("c2", true), Admission::Serve, "uplink to spare");
        assert_eq!(ask("c3", false), Admission::TryInstead("c1".into()));
    }

    #[test]
    fn a_relay_is_used_only_while_it_would_deliver_sooner_than_the_shield() {
        let relays = ["c1", "c2", "c3", "c4"];
        let mut desk = RelayDesk::default();
        // 100 Mbit/s relays: a 4 MiB block takes them 335 ms.
        let mut ask = |requester: &str, shield_eta_ms: u64, now_ms: u64| {
            let ask = RelayAsk {
                requester,
                relays: &relays,
                shield_eta_ms: Some(shield_eta_ms),
                uplink_bytes_per_s: &|_| 12_500_000,
                ..plain_ask()
            };
            desk.admit(&ask, &LIMITS, now_ms)
        };
        assert_eq!(ask("c1", 400, 0), Admission::Serve, "the first asker");
        assert_eq!(
            ask("c2", 400, 0),
            Admission::TryInstead("c1".into()),
            "c1 delivers in 335 ms, the shield in 400"
        );
        assert_eq!(
            ask("c3", 400, 0),
            Admission::TryInstead("c2".into()),
            "c2 has relayed least; c1 now has a block to relay"
        );
        assert_eq!(
            ask("c4", 200, 0),
            Admission::Serve,
            "every relay needs 335 ms or more; the shield 200"
        );
        // A backlog drains at the relay's uplink: with only c1 left to
        // relay, it is busy for 671 ms at first, free a second later.
        let mut desk = RelayDesk::default();
        let mut ask = |requester: &str, relays: &[&str], shield_eta_ms: u64, now_ms: u64| {
            let ask = RelayAsk {
                requester,
                relays,
                shield_eta_ms: Some(shield_eta_ms),
                uplink_bytes_per_s: &|_| 12_500_000,
                ..plain_ask()
            };
            desk.admit(&ask, &LIMITS, now_ms)
        };
        assert_eq!(ask("c1", &["c1", "c2"], 400, 0), Admission::Serve);
        assert_eq!(
            ask("c2", &["c1", "c2"], 400, 0),
            Admission::TryInstead("c1".into())
        );
        assert_eq!(
            ask("c3", &["c1", "c3"], 500, 0),
            Admission::Serve,
            "c1 has 4 MiB to relay first: 671 ms > 500"
        );
        assert_eq!(
            ask("c4", &["c1", "c4"], 500, 1_000),
            Admission::TryInstead("c1".into()),
            "a second later c1's backlog is sent"
        );
    }

    #[test]
    fn a_slow_run_asks_for_a_switch_only_when_its_rate_is_known_and_its_rest_is_long() {
        // Not judged in its first second of receiving, nor before any byte.
        assert_eq!(switch_eta_ms(1 << 20, 8 << 20, 900), None);
        assert_eq!(switch_eta_ms(0, 8 << 20, 5_000), None);
        // 1 MiB in 2 s, 8 MiB left: 16 s to go.
        assert_eq!(switch_eta_ms(1 << 20, 8 << 20, 2_000), Some(16_000));
        // 4 MiB in 1 s, 2 MiB left: half a second, not worth a switch.
        assert_eq!(switch_eta_ms(4 << 20, 2 << 20, 1_000), None);
        assert_eq!(switch_eta_ms(4 << 20, 0, 1_000), None);
    }

    #[test]
    fn the_shield_takes_a_run_over_only_when_clearly_sooner() {
        let relays = ["c1", "c2"];
        let mut desk = RelayDesk::default();
        let mut ask = |shield_eta_ms: Option<u64>, has_uplink: bool, from_eta_ms: u64| {
            let ask = RelayAsk {
                requester: "c2",
                relays: &relays,
                shield_eta_ms,
                shield_has_uplink: has_uplink,
                switch_from_eta_ms: Some(from_eta_ms),
                ..plain_ask()
            };
            desk.admit(&ask, &LIMITS, 0)
        };
        assert_eq!(ask(Some(400), false, 2_000), Admission::Serve);
        assert_eq!(
            ask(Some(1_500), false, 2_000),
            Admission::Stay,
            "sooner, but not by the margin"
        );
        assert_eq!(ask(Some(999), false, 2_000), Admission::Serve);
        // An uncapped shield takes over while its uplink has room.
        assert_eq!(ask(None, true, 2_000), Admission::Serve);
        assert_eq!(ask(None, false, 2_000), Admission::Stay);
        // Pieces the shield still waits for would come no sooner.
        let waiting = RelayAsk {
            requester: "c2",
            relays: &relays,
            shield_eta_ms: Some(10),
            switch_from_eta_ms: Some(5_000),
            held_here: false,
            ..plain_ask()
        };
        assert_eq!(desk.admit(&waiting, &LIMITS, 0), Admission::Stay);
        // A switch is never sent on to a relay, even in a crowd.
        let mut desk = RelayDesk::default();
        let plain = |requester| RelayAsk {
            requester,
            relays: &relays,
            ..plain_ask()
        };
        assert_eq!(desk.admit(&plain("c1"), &LIMITS, 0), Admission::Serve);
        let switch = RelayAsk {
            shield_eta_ms: Some(10),
            switch_from_eta_ms: Some(5_000),
            ..plain("c2")
        };
        assert_eq!(desk.admit(&switch, &LIMITS, 0), Admission::Serve);
    }

    #[test]
    fn a_block_crosses_into_a_region_from_a_far_receiver_not_the_shield() {
        let east = ["e1", "e2"];
        let west = ["w1", "w2"];
        let mut desk = RelayDesk::default();
        let mut ask = |requester: &str, relays: &[&str], far: &[&str]| {
            let ask = RelayAsk {
                requester,
                relays,
                far_relays: far,
                ..plain_ask()
            };
            desk.admit(&ask, &LIMITS, 0)
        };
        let owner = block_owner(&OBJECT, 0, &east).unwrap();
        assert_eq!(ask(owner, &east, &west), Admission::Serve);
        // The west's first requester gets it from the east...
        assert_eq!(ask("w1", &west, &east), Admission::TryInstead(owner.into()));
        // ...and the west's second from w1, in its own region.
        assert_eq!(ask("w2", &west, &east), Admission::TryInstead("w1".into()));
    }

    #[test]
    fn a_block_nobody_received_goes_to_its_owner_once() {
        let relays = ["c1", "c2", "c3", "c4"];
        let owner = block_owner(&OBJECT, 0, &relays).unwrap();
        let others: Vec<&str> = relays.iter().copied().filter(|r| *r != owner).collect();
        let mut desk = RelayDesk::default();
        let ask_for = |desk: &mut RelayDesk, requester: &str, first: u32, now_ms| {
            let ask = RelayAsk {
                first,
                requester,
                relays: &relays,
                ..plain_ask()
            };
            desk.admit(&ask, &LIMITS, now_ms)
        };
        // A crowd: x asked for a far block a moment ago.
        let ask = |desk: &mut RelayDesk, requester: &str, now_ms| {
            ask_for(desk, "x", 1_000, now_ms);
            ask_for(desk, requester, 1, now_ms)
        };
        assert_eq!(
            ask(&mut desk, others[0], 0),
            Admission::TryInstead(owner.into())
        );
        assert_eq!(ask(&mut desk, owner, 0), Admission::Serve);
        // The next one is sent to whoever relayed least: others[0].
        assert_eq!(
            ask(&mut desk, others[1], 0),
            Admission::TryInstead(others[0].into())
        );
        // The owner asking first is served.
        let mut desk = RelayDesk::default();
        assert_eq!(ask(&mut desk, owner, 0), Admission::Serve);
        // No crowd once the others have been quiet for a while.
        assert_eq!(
            ask_for(&mut desk, others[2], 1, CROWD_WINDOW_MS + 1),
            Admission::Serve
        );
        // Forgotten after a minute of silence.
        assert_eq!(
            ask(&mut desk, others[0], RELAY_DESK_MEMORY_MS + 1),
            Admission::TryInstead(owner.into())
        );
    }
}
