//! shoal-select: which caches serve a request, and how much each.
//!
//! A pure, deterministic function (no I/O, no clock): given the candidate
//! caches (spare egress, prices, how much of the object each holds, distance
//! to the client's zone) and the delivery's committed bitrate, return an
//! ordered plan of rate shares that
//!
//! - carries `bitrate × headroom` (the target) when capacity allows;
//! - never gives a cache more than its spare egress;
//! - survives the loss of any one source with `min_sources ≥ 2`: every share
//!   is at most `target − bitrate`, so the others still carry the bitrate
//!   (when the headroom is too small for that, shares are capped at
//!   `target / min_sources` instead, and the plan says so);
//! - has the lowest expected cost: per GB, egress price + the price of
//!   filling bytes the cache lacks + transit to the client's zone + a
//!   latency penalty, all linear in the share, so the problem is a linear
//!   program whose optimum a cost-ordered greedy fill reaches exactly;
//! - keeps an object on the same caches: candidates whose cost is within
//!   `affinity_band` of each other are ordered by the object's rendezvous
//!   rank, which costs at most that band over the optimum (the hit ratio it
//!   buys is worth more).
//!
//! When the target cannot be met, the plan uses what there is and reports
//! the shortfall. See docs/selector-design.md.

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
    /// 1: a single source is fine; ≥ 2: survive the loss of one source.
    pub min_sources: u32,
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
    pub mbps: f64,
    /// The candidate's total price per GB (see [`unit_cost_usd_per_gb`]).
    pub usd_per_gb: f64,
}

/// The decision.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// In order of preference (cheapest first, affinity within the band).
    pub sources: Vec<Share>,
    pub target_mbps: f64,
    pub planned_mbps: f64,
    /// Target not covered (0 when met).
    pub shortfall_mbps: f64,
    /// Expected price per GB delivered (share-weighted).
    pub usd_per_gb: f64,
    /// Whether losing any one source still leaves the committed bitrate.
    pub survives_one_loss: bool,
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
/// Most sources a plan asks a client to blend.
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
    (share_cap_mbps(request).0 / target).clamp(0.0, 1.0)
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
        && c.held_fraction.is_finite()
}

/// The largest share one source may carry (Mbit/s), and whether that cap
/// lets the plan survive losing any one source. With `min_sources ≥ 2`:
/// at most target − bitrate (the rest still carry the bitrate) and at most
/// target / min_sources. The first needs target / (target − bitrate)
/// sources; when that is more than [`SOURCES_MAX`] (headroom too close to
/// 1), only the second applies.
pub fn share_cap_mbps(request: &Request) -> (f64, bool) {
    let target = request.bitrate_mbps * request.headroom;
    let min_sources = request.min_sources.max(1);
    if min_sources < 2 {
        return (target, false);
    }
    let even = target / f64::from(min_sources);
    let one_loss = target - request.bitrate_mbps;
    if one_loss > 0.0 && target / one_loss <= f64::from(SOURCES_MAX) + 1e-9 {
        (one_loss.min(even), true)
    } else {
        (even, false)
    }
}

/// Chooses the sources for `request` among `candidates`.
pub fn plan(request: &Request, candidates: &[Candidate]) -> Result<Plan, SelectError> {
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
    let target = bitrate * request.headroom;
    let mut notes = Vec::new();

    // Cost order; within a band of cost, the object's rendezvous order.
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
    let ordered = affinity_order(ranked, request.affinity_band);

    let min_sources = request.min_sources.max(1);
    let (cap, one_loss_possible) = share_cap_mbps(request);
    if min_sources >= 2 && !one_loss_possible {
        notes.push(format!(
            "headroom {:.2} is too small to survive losing a source with at most {SOURCES_MAX} sources; shares capped at target/{min_sources}",
            request.headroom
        ));
    }

    // A share too small to be worth a connection is skipped unless it
    // completes the target.
    let share_min = target * SHARE_MIN_FRACTION;
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
    if planned < target {
        // Not enough under the resilience cap: use the rest of the chosen
        // sources' capacity, then of further ones, cheapest first, and say
        // so.
        let before = planned;
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
        if planned > before && min_sources >= 2 {
            notes.push("capacity is short: shares exceed the one-loss cap".into());
        }
    }
    shares.sort_by_key(|(i, _)| *i);
    let sources: Vec<Share> = shares
        .iter()
        .map(|(i, mbps)| Share {
            node_id: ordered[*i].1.node_id.clone(),
            mbps: *mbps,
            usd_per_gb: ordered[*i].0,
        })
        .collect();
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
    let largest = sources.iter().map(|s| s.mbps).fold(0.0, f64::max);
    let survives_one_loss = sources.len() >= 2 && planned - largest >= bitrate * (1.0 - 1e-9);
    Ok(Plan {
        sources,
        target_mbps: target,
        planned_mbps: planned,
        shortfall_mbps: shortfall,
        usd_per_gb,
        survives_one_loss,
        notes,
    })
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
