//! shoal-select: which caches serve a request, and how much each.
//!
//! A pure, deterministic function (no I/O, no clock): given the candidate
//! caches (spare egress, prices, how much of the object each holds, distance
//! to the client's zone) and the delivery's committed bitrate, return a plan
//! in two parts:
//!
//! - **shares**, the rates the client draws: they carry `bitrate ×
//!   headroom` (the target) when capacity allows, from at least
//!   `min_sources` caches (no share above `target / min_sources`), never
//!   more than a cache's spare egress, at the lowest expected cost. Cost is
//!   per byte delivered: per GB, egress price + the price of filling bytes
//!   the cache lacks + transit to the client's zone + a latency penalty,
//!   all linear in the share, so a cost-ordered greedy fill is the optimum
//!   of that linear program;
//! - **standby**, capacity held in reserve and not billed: with
//!   `survive_one_loss`, for every source the others' shares plus their
//!   standby carry the committed bitrate if it fails. Standby comes first
//!   from the sources already in the plan (the others raise their output),
//!   then from the cheapest caches not in it (brought on stream when a
//!   source fails). A dearer cache is only ever added as standby for
//!   resilience, never as a paid share.
//!
//! Objects stay on the same caches: candidates whose cost is within
//! `affinity_band` of each other are ordered by the object's rendezvous
//! rank, which costs at most that band over the optimum (the hit ratio it
//! buys is worth more). When the target cannot be met, the plan uses what
//! there is and reports the shortfall. See docs/selector-design.md.

pub mod zones;

use shoal_core::{rendezvous, ObjectId};

/// One cache that could serve the request.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub node_id: String,
    /// Egress capacity not in use, Mbit/s.
    pub spare_mbps: f64,
    /// Price of a GB sent from this cache, US dollars.
    pub egress_usd_per_gb: f64,
    /// Price of a GB this cache has to fetch first (from a sibling or,
    /// through the shield, the origin).
    pub fill_usd_per_gb: f64,
    /// Share of the object's bytes already held, 0..=1.
    pub held_fraction: f64,
    /// Transit price from this cache's region to the client's zone.
    pub transit_usd_per_gb: f64,
    /// Round-trip time from the client's zone to this cache's region.
    pub rtt_ms: f64,
    /// Standby other plans already count on here, Mbit/s (soft: it limits
    /// only the standby this plan may count on, never a share).
    pub standby_held_mbps: f64,
}

/// What the delivery needs.
#[derive(Clone, Debug)]
pub struct Request {
    /// The object (for rendezvous affinity).
    pub object: ObjectId,
    /// Committed bitrate, Mbit/s.
    pub bitrate_mbps: f64,
    /// Target = bitrate × headroom (≥ 1).
    pub headroom: f64,
    /// The fewest sources the shares are spread over (1..=8): no share
    /// carries more than `target / min_sources`.
    pub min_sources: u32,
    /// Hold standby so that losing any one source leaves the committed
    /// bitrate.
    pub survive_one_loss: bool,
    /// Latency penalty, US dollars per GB per millisecond of RTT.
    pub latency_usd_per_gb_per_ms: f64,
    /// Relative cost band within which affinity orders candidates (0.02).
    pub affinity_band: f64,
    /// How many sessions a fill is expected to serve (≥ 1): bytes a cache
    /// fetches now are served again from its disk later, so each session
    /// is charged this fraction of the fill price. 1 charges the whole
    /// fill to the session that causes it.
    pub fill_reuse_sessions: f64,
}

/// One source of a plan.
#[derive(Clone, Debug, PartialEq)]
pub struct Share {
    pub node_id: String,
    /// Rate the client draws from it (billed).
    pub mbps: f64,
    /// More it holds ready should another source fail (not billed).
    pub standby_mbps: f64,
    /// The candidate's total price per GB (see [`unit_cost_usd_per_gb`]).
    pub usd_per_gb: f64,
}

/// A cache held in reserve: the client brings it on stream when a source
/// fails.
#[derive(Clone, Debug, PartialEq)]
pub struct Standby {
    pub node_id: String,
    pub mbps: f64,
    /// Its price per GB, paid only while it stands in.
    pub usd_per_gb: f64,
}

/// The decision.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// In order of preference (cheapest first, affinity within the band).
    pub sources: Vec<Share>,
    /// Caches held in reserve, cheapest first.
    pub standby: Vec<Standby>,
    pub target_mbps: f64,
    pub planned_mbps: f64,
    /// Target not covered (0 when met).
    pub shortfall_mbps: f64,
    /// Expected price per GB delivered (share-weighted).
    pub usd_per_gb: f64,
    /// Whether losing any one source still leaves the committed bitrate
    /// (counting the others' standby).
    pub survives_one_loss: bool,
    /// Standby held in all, Mbit/s.
    pub standby_mbps: f64,
    /// Why the plan looks the way it does, for people.
    pub notes: Vec<String>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum SelectError {
    /// Bitrate, headroom or prices that make no sense.
    BadRequest(&'static str),
}

impl std::fmt::Display for SelectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SelectError::BadRequest(what) => write!(f, "bad request: {what}"),
        }
    }
}

impl std::error::Error for SelectError {}

/// Largest bitrate a plan is made for (anything above is a mistake).
pub const BITRATE_MBPS_MAX: f64 = 1_000_000.0;
/// Largest `fill_reuse_sessions`.
pub const FILL_REUSE_SESSIONS_MAX: f64 = 1_000_000.0;
/// Largest headroom.
pub const HEADROOM_MAX: f64 = 10.0;
/// Most caches a plan names (shares and standby together).
pub const SOURCES_MAX: u32 = 8;
/// Smallest share worth a connection, as a fraction of the target (a
/// smaller one is used only to complete the target).
pub const SHARE_MIN_FRACTION: f64 = 0.02;

/// The part of an object one source of a plan serves, and so needs to
/// hold: clients stripe pieces over a plan's sources by a stable rule
/// (rendezvous of object and piece), so a source carries at most
/// `share cap / target` of the pieces — a cache holding that stripe needs
/// no fill. 1 for single-source plans.
pub fn stripe_fraction(request: &Request) -> f64 {
    let target = request.bitrate_mbps * request.headroom;
    if target.is_nan() || target <= 0.0 {
        return 1.0;
    }
    (share_cap_mbps(request) / target).clamp(0.0, 1.0)
}

/// The price per GB of serving from `c`: egress + filling what it lacks of
/// its stripe + transit + latency penalty.
pub fn unit_cost_usd_per_gb(c: &Candidate, request: &Request) -> f64 {
    let stripe = stripe_fraction(request).max(f64::EPSILON);
    let held = (c.held_fraction.clamp(0.0, 1.0) / stripe).min(1.0);
    c.egress_usd_per_gb
        + (1.0 - held) * c.fill_usd_per_gb / request.fill_reuse_sessions.max(1.0)
        + c.transit_usd_per_gb
        + request.latency_usd_per_gb_per_ms * c.rtt_ms
}

fn usable(c: &Candidate) -> bool {
    let finite_non_negative = |v: f64| v.is_finite() && v >= 0.0;
    c.spare_mbps.is_finite()
        && c.spare_mbps > 0.0
        && finite_non_negative(c.egress_usd_per_gb)
        && finite_non_negative(c.fill_usd_per_gb)
        && finite_non_negative(c.transit_usd_per_gb)
        && finite_non_negative(c.rtt_ms)
        && finite_non_negative(c.standby_held_mbps)
        && c.held_fraction.is_finite()
}

/// The largest share one source may carry, Mbit/s: `target /
/// min_sources`, so the shares need at least `min_sources` caches.
pub fn share_cap_mbps(request: &Request) -> f64 {
    request.bitrate_mbps * request.headroom / f64::from(request.min_sources.max(1))
}

/// Chooses the sources for `request` among `candidates`.
pub fn plan(request: &Request, candidates: &[Candidate]) -> Result<Plan, SelectError> {
    check_request(request)?;
    let bitrate = request.bitrate_mbps;
    let target = bitrate * request.headroom;
    let mut notes = Vec::new();
    let ordered = rank_candidates(request, candidates, &mut notes);

    // Part one, the shares.
    let (shares, planned) = choose_shares(request, &ordered, target, &mut notes);

    // Part two, the standby.
    let standby = if request.survive_one_loss {
        hold_standby(&ordered, &shares, bitrate, SOURCES_MAX as usize)
    } else {
        vec![0.0; ordered.len()]
    };
    let survives_one_loss = survives(&shares, &standby, bitrate);
    if request.survive_one_loss && !survives_one_loss && !shares.is_empty() {
        notes.push(why_a_loss_is_not_covered(
            &ordered, &shares, &standby, bitrate,
        ));
    }
    if shares.len() < request.min_sources as usize && !shares.is_empty() {
        notes.push(format!(
            "only {} cache(s) can serve: fewer than min_sources = {}",
            shares.len(),
            request.min_sources
        ));
    }

    let sources = named_shares(&ordered, &shares, &standby);
    let standby_only = standby_only(&ordered, &shares, &standby);
    let cost_rate: f64 = sources.iter().map(|s| s.mbps * s.usd_per_gb).sum();
    let usd_per_gb = if planned > 0.0 {
        cost_rate / planned
    } else {
        0.0
    };
    let shortfall = (target - planned).max(0.0);
    if shortfall > 0.0 {
        notes.push(format!(
            "target {target:.1} Mbit/s not met: {shortfall:.1} Mbit/s short (best effort)"
        ));
    }
    Ok(Plan {
        sources,
        standby: standby_only,
        target_mbps: target,
        planned_mbps: planned,
        shortfall_mbps: shortfall,
        usd_per_gb,
        survives_one_loss,
        standby_mbps: standby.iter().sum(),
        notes,
    })
}

/// Refuses requests whose figures make no sense, naming the figure.
fn check_request(request: &Request) -> Result<(), SelectError> {
    let bitrate = request.bitrate_mbps;
    if !(bitrate.is_finite() && bitrate > 0.0 && bitrate <= BITRATE_MBPS_MAX) {
        return Err(SelectError::BadRequest(
            "bitrate must be within (0, 1e6] Mbit/s",
        ));
    }
    if !(request.headroom.is_finite() && (1.0..=HEADROOM_MAX).contains(&request.headroom)) {
        return Err(SelectError::BadRequest("headroom must be within [1, 10]"));
    }
    if !(request.latency_usd_per_gb_per_ms.is_finite() && request.latency_usd_per_gb_per_ms >= 0.0)
    {
        return Err(SelectError::BadRequest(
            "latency penalty must be a non-negative number",
        ));
    }
    if !(request.fill_reuse_sessions.is_finite()
        && (1.0..=FILL_REUSE_SESSIONS_MAX).contains(&request.fill_reuse_sessions))
    {
        return Err(SelectError::BadRequest(
            "fill reuse must be within [1, 1e6] sessions",
        ));
    }
    if !(request.affinity_band.is_finite() && (0.0..=1.0).contains(&request.affinity_band)) {
        return Err(SelectError::BadRequest(
            "affinity band must be within [0, 1]",
        ));
    }
    if !(1..=SOURCES_MAX).contains(&request.min_sources) {
        return Err(SelectError::BadRequest("min_sources must be within 1..=8"));
    }
    Ok(())
}

/// The usable candidates with their unit cost, in cost order; within a
/// band of cost, the object's rendezvous order. Notes how many were left
/// out as unusable.
fn rank_candidates<'a>(
    request: &Request,
    candidates: &'a [Candidate],
    notes: &mut Vec<String>,
) -> Vec<(f64, &'a Candidate)> {
    let mut ranked: Vec<(f64, u64, &Candidate)> = candidates
        .iter()
        .filter(|c| usable(c))
        .map(|c| {
            (
                unit_cost_usd_per_gb(c, request),
                rendezvous::score(&request.object, &c.node_id),
                c,
            )
        })
        .collect();
    let skipped = candidates.len() - ranked.len();
    if skipped > 0 {
        notes.push(format!(
            "{skipped} candidate(s) without spare capacity or with invalid figures left out"
        ));
    }
    ranked.sort_by(|a, b| {
        a.0.total_cmp(&b.0)
            .then(b.1.cmp(&a.1))
            .then_with(|| a.2.node_id.cmp(&b.2.node_id))
    });
    affinity_order(ranked, request.affinity_band)
}

/// The shares (index into `ordered`, Mbit/s), in `ordered` order, and the
/// rate they carry in all: under the share cap first, then beyond it when
/// capacity is short (noted).
fn choose_shares(
    request: &Request,
    ordered: &[(f64, &Candidate)],
    target: f64,
    notes: &mut Vec<String>,
) -> (Vec<(usize, f64)>, f64) {
    let cap = share_cap_mbps(request);
    let share_min = target * SHARE_MIN_FRACTION;
    let (mut shares, mut planned) = shares_under_cap(ordered, target, cap, share_min);
    if planned < target {
        // Not enough under the cap: use the rest of the chosen sources'
        // capacity, then of further ones, cheapest first, and say so.
        let before = planned;
        planned = raise_shares_beyond_cap(ordered, &mut shares, planned, target, share_min);
        if planned > before && request.min_sources >= 2 {
            notes.push(format!(
                "capacity is short: shares exceed target/{} to come closer to the target",
                request.min_sources
            ));
        }
    }
    shares.sort_by_key(|(i, _)| *i);
    (shares, planned)
}

/// Cheapest first, each share at most `cap`, up to [`SOURCES_MAX`]
/// sources. A share too small to be worth a connection (below
/// `share_min`) is skipped unless it completes the target. Returns the
/// shares and the rate they carry.
fn shares_under_cap(
    ordered: &[(f64, &Candidate)],
    target: f64,
    cap: f64,
    share_min: f64,
) -> (Vec<(usize, f64)>, f64) {
    let sources_max = SOURCES_MAX as usize;
    let mut shares: Vec<(usize, f64)> = Vec::new();
    let mut planned = 0.0;
    for (i, (_, c)) in ordered.iter().enumerate() {
        if planned >= target || shares.len() == sources_max {
            break;
        }
        let remaining = target - planned;
        let take = c.spare_mbps.min(cap).min(remaining);
        if take > 0.0 && (take >= share_min || take >= remaining) {
            shares.push((i, take));
            planned += take;
        }
    }
    (shares, planned)
}

/// Raises `shares` towards `target` beyond the share cap: the rest of each
/// source's spare, then further caches (still up to [`SOURCES_MAX`], none
/// new below `share_min` unless it completes the target), cheapest first.
/// Returns the rate planned now.
fn raise_shares_beyond_cap(
    ordered: &[(f64, &Candidate)],
    shares: &mut Vec<(usize, f64)>,
    mut planned: f64,
    target: f64,
    share_min: f64,
) -> f64 {
    let sources_max = SOURCES_MAX as usize;
    for (i, (_, c)) in ordered.iter().enumerate() {
        if planned >= target {
            break;
        }
        let position = shares.iter().position(|(j, _)| *j == i);
        if position.is_none() && shares.len() == sources_max {
            continue;
        }
        let already = position.map_or(0.0, |p| shares[p].1);
        let remaining = target - planned;
        let more = (c.spare_mbps - already).min(remaining);
        if more <= 0.0 || (position.is_none() && more < share_min && more < remaining) {
            continue;
        }
        match position {
            Some(p) => shares[p].1 += more,
            None => shares.push((i, more)),
        }
        planned += more;
    }
    planned
}

/// The note for a plan asked to survive a loss that does not: why not.
fn why_a_loss_is_not_covered(
    ordered: &[(f64, &Candidate)],
    shares: &[(usize, f64)],
    standby: &[f64],
    bitrate: f64,
) -> String {
    let named = shares.len() + standby_count(shares, standby);
    if ordered.len() == shares.len() && shares.len() == 1 {
        format!(
            "losing the one source would leave nothing: no other cache can serve (committed {bitrate:.1} Mbit/s)"
        )
    } else if named >= SOURCES_MAX as usize {
        format!(
            "losing a source would leave less than the committed {bitrate:.1} Mbit/s: the plan names the {SOURCES_MAX} caches a client blends at most"
        )
    } else {
        format!(
            "losing a source would leave less than the committed {bitrate:.1} Mbit/s: the other caches lack the spare egress (what other plans hold as standby counts)"
        )
    }
}

/// The shares as the plan's sources, with their standby and price.
fn named_shares(
    ordered: &[(f64, &Candidate)],
    shares: &[(usize, f64)],
    standby: &[f64],
) -> Vec<Share> {
    shares
        .iter()
        .map(|&(i, mbps)| Share {
            node_id: ordered[i].1.node_id.clone(),
            mbps,
            standby_mbps: standby[i],
            usd_per_gb: ordered[i].0,
        })
        .collect()
}

/// The caches that hold standby without a share, cheapest first.
fn standby_only(
    ordered: &[(f64, &Candidate)],
    shares: &[(usize, f64)],
    standby: &[f64],
) -> Vec<Standby> {
    standby
        .iter()
        .enumerate()
        .filter(|&(i, &mbps)| mbps > 0.0 && !shares.iter().any(|(j, _)| *j == i))
        .map(|(i, &mbps)| Standby {
            node_id: ordered[i].1.node_id.clone(),
            mbps,
            usd_per_gb: ordered[i].0,
        })
        .collect()
}

/// Caches that hold standby without a share.
fn standby_count(shares: &[(usize, f64)], standby: &[f64]) -> usize {
    standby
        .iter()
        .enumerate()
        .filter(|&(i, &mbps)| mbps > 0.0 && !shares.iter().any(|(j, _)| *j == i))
        .count()
}

/// Whether, for every source, the others' shares and standby carry
/// `bitrate` without it. `standby` is indexed like the ranked candidates.
fn survives(shares: &[(usize, f64)], standby: &[f64], bitrate: f64) -> bool {
    let delivered: f64 = shares.iter().map(|(_, mbps)| mbps).sum();
    let held: f64 = standby.iter().sum();
    !shares.is_empty()
        && shares
            .iter()
            .all(|&(i, mbps)| delivered - mbps + held - standby[i] >= bitrate * (1.0 - 1e-9))
}

/// The standby (Mbit/s per ranked candidate) that lets the plan lose any
/// one source and keep `bitrate`, taken first from the other sources'
/// spare beyond their shares (they raise their output), then from the
/// cheapest caches not in the plan, up to `sources_max` caches in all.
/// Stops short when there is not enough.
///
/// Each step takes the source whose loss leaves the least, and adds the
/// gap to the first other cache with room: standby on cache `i` helps
/// every loss but its own, so a loss once covered stays covered, and each
/// step either covers a loss or fills a cache: at most `sources +
/// candidates` steps.
fn hold_standby(
    ordered: &[(f64, &Candidate)],
    shares: &[(usize, f64)],
    bitrate: f64,
    sources_max: usize,
) -> Vec<f64> {
    let mut standby = vec![0.0; ordered.len()];
    if shares.is_empty() {
        return standby;
    }
    let share_of = |i: usize| {
        shares
            .iter()
            .find(|(j, _)| *j == i)
            .map_or(0.0, |(_, mbps)| *mbps)
    };
    // Room below this is rounding residue, not capacity.
    let residue = bitrate * 1e-9;
    let room = |i: usize, standby: &[f64]| {
        let c = ordered[i].1;
        let room = c.spare_mbps - c.standby_held_mbps - share_of(i) - standby[i];
        if room > residue {
            room
        } else {
            0.0
        }
    };
    let delivered: f64 = shares.iter().map(|(_, mbps)| mbps).sum();
    let mut held = 0.0;
    let mut caches = shares.len();
    // Sources first (in cost order), then the rest in cost order.
    let order: Vec<usize> = shares
        .iter()
        .map(|(i, _)| *i)
        .chain((0..ordered.len()).filter(|i| !shares.iter().any(|(j, _)| j == i)))
        .collect();
    let step_limit = shares.len() + ordered.len() + 1;
    for _ in 0..step_limit {
        let (worst, gap) = shares
            .iter()
            .map(|&(j, mbps)| (j, bitrate - (delivered - mbps + held - standby[j])))
            .fold(
                (usize::MAX, 0.0),
                |acc, (j, gap)| if gap > acc.1 { (j, gap) } else { acc },
            );
        if worst == usize::MAX || gap <= residue {
            break;
        }
        // The other sources first, then caches already standing by; a
        // new cache only with a slot left: the cheapest that covers the
        // whole gap, else the one with the most room (slivers would use up
        // the slots).
        let in_plan = |i: usize, standby: &[f64]| share_of(i) > 0.0 || standby[i] > 0.0;
        let helper = order
            .iter()
            .copied()
            .find(|&i| i != worst && in_plan(i, &standby) && room(i, &standby) > 0.0)
            .or_else(|| {
                if caches >= sources_max {
                    return None;
                }
                let fresh = || order.iter().copied().filter(|&i| !in_plan(i, &standby));
                fresh().find(|&i| room(i, &standby) >= gap).or_else(|| {
                    fresh()
                        .filter(|&i| room(i, &standby) > 0.0)
                        .max_by(|&a, &b| room(a, &standby).total_cmp(&room(b, &standby)))
                })
            });
        let Some(helper) = helper else {
            break;
        };
        if !in_plan(helper, &standby) {
            caches += 1;
        }
        let add = room(helper, &standby).min(gap);
        standby[helper] += add;
        held += add;
    }
    standby
}

/// Reorders cost-sorted candidates so that, within runs whose cost is at
/// most `(1 + band)` × the run's first, the object's rendezvous order wins.
fn affinity_order(ranked: Vec<(f64, u64, &Candidate)>, band: f64) -> Vec<(f64, &Candidate)> {
    let mut out = Vec::with_capacity(ranked.len());
    let mut start = 0;
    while start < ranked.len() {
        // The run of candidates within the band of this one's cost.
        let limit = ranked[start].0 * (1.0 + band) + f64::EPSILON;
        let end = ranked[start..]
            .iter()
            .position(|item| item.0 > limit)
            .map_or(ranked.len(), |n| start + n);
        let mut group: Vec<&(f64, u64, &Candidate)> = ranked[start..end].iter().collect();
        group.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.2.node_id.cmp(&b.2.node_id)));
        out.extend(group.into_iter().map(|(k, _, c)| (*k, *c)));
        start = end;
    }
    out
}

#[cfg(test)]
mod tests;
