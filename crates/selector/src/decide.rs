//! The decision for one request, as a pure function: from a snapshot of
//! the mesh, the client's zone, the delivery service and what is known of
//! the object, to a [`Decision`] with source URLs, shares, expected cost
//! and the reasons, in words, for every cache chosen or left out.
//!
//! The optimisation itself is `shoal_select::plan`: shares on the cheapest
//! caches that carry bitrate × headroom within their spare egress, and
//! unbilled standby so that losing any source leaves the committed
//! bitrate (rendezvous affinity within a cost band). This module turns
//! gossip into its candidates:
//!
//! - left out: caches the client asked to exclude (it reported them
//!   degraded), draining caches, caches in regions the client's zone does
//!   not reach, caches with no spare egress;
//! - degraded caches (they say so in gossip) are used only when the healthy
//!   ones cannot carry the target;
//! - a cache's fill price is what it would pay for the bytes it lacks: the
//!   cheapest sibling that holds the object, else the origin;
//! - a cache's spare egress is what it gossips, less what this selector
//!   planned on it in the last seconds (gossip shows new load ~2 s late, so
//!   a burst of requests would otherwise all land on the cheapest caches);
//!   standby planned there lately limits only other plans' standby.

use crate::config::DeliveryService;
use shoal_core::ObjectId;
use shoal_mesh::{Health, Member};
pub use shoal_proto::plan::{Decision, LeftOut, ObjectFacts, Source, StandbySource};
use shoal_select::zones::Reach;
use shoal_select::{plan, Candidate, Plan, Request, SelectError};
use std::collections::{HashMap, HashSet};

/// Most caches a client may exclude in one request.
pub const EXCLUDE_MAX: usize = 64;

/// Knobs of the decision that come from the selector's configuration.
#[derive(Clone, Debug)]
pub struct PlanSettings {
    pub latency_usd_per_gb_per_ms: f64,
    pub affinity_band: f64,
    pub uncapped_cache_mbps: f64,
    pub fill_reuse_sessions: f64,
}

/// Everything the decision depends on.
pub struct Inputs<'a> {
    pub service: &'a DeliveryService,
    /// The request path as it goes on the wire (percent-encoded), with the
    /// query string if any: appended to each cache's base URL.
    pub uri_path_and_query: &'a str,
    /// Rendezvous key for affinity: the object id when known, else a digest
    /// of the path.
    pub affinity_key: ObjectId,
    pub object: &'a ObjectFacts,
    pub members: &'a [Member],
    /// Share of the object each cache holds, 0..=1 (absent: none).
    pub held: &'a HashMap<String, f64>,
    pub zone: &'a str,
    /// How far the client's zone is from a region (`None`: unreachable).
    pub reach: &'a dyn Fn(&str) -> Option<Reach>,
    /// Node ids the client reported degraded.
    pub exclude: &'a [String],
    /// The client came over HTTPS: only caches with an HTTPS listener
    /// qualify, and their URLs are `https://`.
    pub https: bool,
    /// Rate this selector planned on each cache recently, Mbit/s, that the
    /// cache's gossiped load may not show yet (see `api::Reservations`).
    pub reserved_mbps: &'a HashMap<String, f64>,
    /// Standby this selector planned on each cache recently, Mbit/s.
    pub standby_reserved_mbps: &'a HashMap<String, f64>,
    /// Caches alive in gossip that failed the selector's own requests
    /// lately (HTTP down, gossip up): left out.
    pub unresponsive: &'a [String],
    pub settings: &'a PlanSettings,
}

const BYTES_PER_GB: f64 = 1e9;
/// Caches listed per reason for leaving them out (the rest are counted):
/// at 1,000 caches a plan must stay small and quick to write.
pub const LEFT_OUT_LISTED_PER_REASON: usize = 8;
/// Unused caches listed as runners-up, cheapest first.
pub const RUNNERS_UP_LISTED: usize = 3;
/// Most of a cache's gossiped spare egress that recent reservations may
/// take away.
pub const RESERVED_SHARE_OF_SPARE_MAX: f64 = 0.75;

/// Caches left out, listed up to [`LEFT_OUT_LISTED_PER_REASON`] per reason
/// (excluded caches always), counted in full.
#[derive(Default)]
struct LeftOutList {
    listed: Vec<LeftOut>,
    counts: Vec<(&'static str, usize, usize)>,
}

impl LeftOutList {
    fn add(&mut self, kind: &'static str, node: &str, why: impl FnOnce() -> String) {
        let index = match self.counts.iter().position(|(k, _, _)| *k == kind) {
            Some(index) => index,
            None => {
                self.counts.push((kind, 0, 0));
                self.counts.len() - 1
            }
        };
        let entry = &mut self.counts[index];
        entry.1 += 1;
        let always = kind.starts_with("reported");
        if always || entry.2 < LEFT_OUT_LISTED_PER_REASON {
            entry.2 += 1;
            self.listed.push(LeftOut {
                node: node.to_string(),
                why: why(),
            });
        }
    }

    /// Counts `n` more caches left out for `kind` without listing them.
    fn count_only(&mut self, kind: &'static str, n: usize) {
        if n == 0 {
            return;
        }
        match self.counts.iter_mut().find(|(k, _, _)| *k == kind) {
            Some(entry) => entry.1 += n,
            None => self.counts.push((kind, n, 0)),
        }
    }

    /// The listed caches and (reason, count, listed) per reason.
    fn finish(self) -> (Vec<LeftOut>, Vec<(&'static str, usize, usize)>) {
        (self.listed, self.counts)
    }
}

fn spare_mbps(member: &Member, uncapped_mbps: f64) -> f64 {
    if member.egress_cap_bps == 0 {
        return uncapped_mbps;
    }
    let used = member.egress_bps.min(member.egress_cap_bps);
    (member.egress_cap_bps - used) as f64 / 1e6
}

fn usd(microusd: u64) -> f64 {
    microusd as f64 / 1e6
}

/// Plans one request. Errors only for requests the planner refuses
/// (e.g. an absurd bitrate, which validated configuration never has).
pub fn decide(inputs: &Inputs) -> Result<Decision, SelectError> {
    let service = inputs.service;
    let mut reasons = Vec::new();
    let mut left_out = LeftOutList::default();
    let pool = Pool::sort(inputs, &mut left_out);
    let request = plan_request(inputs);
    let mut chosen = plan_healthy_first(&request, &pool, &mut reasons)?;

    // Every cache that could serve is at its cap: unless the service says
    // to refuse, the cheapest of them serve what they can (the rate is
    // theirs to give; the shortfall is reported), rather than nobody.
    let saturated = chosen.sources.is_empty()
        && !pool.full.is_empty()
        && service.when_saturated == crate::config::WhenSaturated::BestEffort;
    let mut best_effort: Vec<Candidate> = Vec::new();
    if saturated {
        (chosen, best_effort) =
            plan_best_effort(service, &request, &chosen, &pool.full, &mut reasons)?;
    } else {
        for c in &pool.full {
            left_out.add("no spare egress", &c.node_id, || "no spare egress".into());
        }
    }

    let describer = SourceDescriber {
        inputs,
        candidates: [&pool.healthy, &pool.degraded, &best_effort],
        saturated,
        pin: pin_suffix(inputs),
    };
    let sources = describer.sources(&chosen);
    let standby = describer.standby(&chosen);
    leave_out_unused(&pool, &request, &chosen, &sources, &standby, &mut left_out);
    let (left_out, left_out_counts) = left_out.finish();
    for (kind, count, listed) in left_out_counts {
        if count > listed {
            reasons.push(format!("{count} caches left out: {kind} ({listed} listed)"));
        }
    }
    push_plan_reasons(inputs, &chosen, &mut reasons);
    let origin_fallback = origin_fallback(inputs, &sources, &mut reasons);
    if chosen.survives_one_loss && !saturated {
        reasons.push(survival_reason(&chosen, &standby));
    }

    let expected_usd = inputs
        .object
        .size_bytes
        .map(|size| chosen.usd_per_gb * size as f64 / BYTES_PER_GB);
    Ok(Decision {
        service: service.name.clone(),
        zone: inputs.zone.to_string(),
        object: inputs.object.clone(),
        committed_mbps: service.bitrate_mbps,
        target_mbps: chosen.target_mbps,
        // Best effort from saturated caches promises nothing.
        predicted_mbps: if saturated { 0.0 } else { chosen.planned_mbps },
        shortfall_mbps: if saturated {
            chosen.target_mbps
        } else {
            chosen.shortfall_mbps
        },
        bitrate_met: !saturated && chosen.planned_mbps + 1e-9 >= service.bitrate_mbps,
        survives_one_loss: !saturated && chosen.survives_one_loss,
        standby_mbps: if saturated { 0.0 } else { chosen.standby_mbps },
        usd_per_gb: chosen.usd_per_gb,
        expected_usd,
        sources,
        standby,
        origin_fallback,
        left_out,
        reasons,
        swarm: None,
    })
}

/// The share of the object `node` holds, 0..=1 (none when not known).
fn held_share(inputs: &Inputs, node: &str) -> f64 {
    inputs
        .held
        .get(node)
        .copied()
        .unwrap_or(0.0)
        .clamp(0.0, 1.0)
}

/// What a byte costs a cache that lacks it: the cheapest healthy sibling
/// holding the object, else the origin. The two cheapest holders, found
/// once, answer for every cache (a holder's own sibling price is the other
/// one's).
struct FillPrices<'a> {
    cheapest: [Option<(f64, &'a str)>; 2],
}

impl<'a> FillPrices<'a> {
    /// Finds the two cheapest healthy holders among `inputs.members`.
    fn find(inputs: &Inputs<'a>) -> Self {
        let mut cheapest: [Option<(f64, &str)>; 2] = [None, None];
        for m in inputs.members {
            if m.health != Health::Ok || held_share(inputs, &m.node_id) <= 0.0 {
                continue;
            }
            let price = usd(m.cost_per_gb_microusd);
            if cheapest[0].is_none_or(|(p, _)| price < p) {
                cheapest[1] = cheapest[0];
                cheapest[0] = Some((price, m.node_id.as_str()));
            } else if cheapest[1].is_none_or(|(p, _)| price < p) {
                cheapest[1] = Some((price, m.node_id.as_str()));
            }
        }
        Self { cheapest }
    }

    /// The price of the cheapest holder other than `except` (`None`: no
    /// sibling holds the object, so it comes from the origin).
    fn cheapest_holder(&self, except: &str) -> Option<f64> {
        self.cheapest
            .iter()
            .flatten()
            .find(|(_, node)| *node != except)
            .map(|(price, _)| *price)
    }
}

/// The caches that may serve the client, as candidates, by state.
struct Pool {
    healthy: Vec<Candidate>,
    degraded: Vec<Candidate>,
    /// Reachable caches at their egress cap.
    full: Vec<Candidate>,
}

impl Pool {
    /// Turns every member into a candidate, in member order, or into an
    /// entry of `left_out` when it may not serve this client at all.
    fn sort(inputs: &Inputs, left_out: &mut LeftOutList) -> Self {
        let fill = FillPrices::find(inputs);
        let mut pool = Pool {
            healthy: Vec::new(),
            degraded: Vec::new(),
            full: Vec::new(),
        };
        for member in inputs.members {
            let Some(reach) = eligible_reach(inputs, member, left_out) else {
                continue;
            };
            let candidate = candidate(inputs, member, reach, &fill);
            if candidate.spare_mbps <= 0.0 {
                pool.full.push(candidate);
            } else if member.health == Health::Degraded {
                pool.degraded.push(candidate);
            } else {
                pool.healthy.push(candidate);
            }
        }
        pool
    }
}

/// How far the client is from `member`, or `None` (with the reason added
/// to `left_out`) when the cache is excluded by the client, draining, not
/// answering or out of the client's reach.
fn eligible_reach(inputs: &Inputs, member: &Member, left_out: &mut LeftOutList) -> Option<Reach> {
    let node = &member.node_id;
    if inputs.exclude.iter().any(|e| e == node) {
        left_out.add("reported degraded by the client", node, || {
            "reported degraded by the client".into()
        });
        return None;
    }
    if member.health == Health::Draining {
        left_out.add("draining", node, || "draining".into());
        return None;
    }
    if inputs.https && member.https_authority.is_none() {
        left_out.add("no HTTPS listener", node, || {
            "serves plain HTTP only and the client asked over HTTPS".into()
        });
        return None;
    }
    if inputs.unresponsive.iter().any(|u| u == node) {
        left_out.add("not answering", node, || {
            "alive in gossip but not answering the selector's requests".into()
        });
        return None;
    }
    let reach = (inputs.reach)(&member.region);
    if reach.is_none() {
        left_out.add("unreachable from the client's zone", node, || {
            format!(
                "region {} is not reachable from zone {}",
                member.region, inputs.zone
            )
        });
    }
    reach
}

/// `member` as the planner sees it: spare egress net of recent
/// reservations, its prices, what it holds and how far it is.
fn candidate(inputs: &Inputs, member: &Member, reach: Reach, fill: &FillPrices) -> Candidate {
    let node = &member.node_id;
    // Recent reservations count, but never for more than most of the
    // gossiped spare: a client hammering `/plan` cannot make every
    // cache look full.
    let gossiped = spare_mbps(member, inputs.settings.uncapped_cache_mbps);
    let reserved = inputs.reserved_mbps.get(node).copied().unwrap_or(0.0);
    let spare = gossiped - reserved.min(gossiped.max(0.0) * RESERVED_SHARE_OF_SPARE_MAX);
    let standby_held = inputs
        .standby_reserved_mbps
        .get(node)
        .copied()
        .unwrap_or(0.0)
        .clamp(0.0, spare.max(0.0) * RESERVED_SHARE_OF_SPARE_MAX);
    Candidate {
        node_id: node.clone(),
        spare_mbps: spare,
        egress_usd_per_gb: usd(member.cost_per_gb_microusd),
        fill_usd_per_gb: fill
            .cheapest_holder(node)
            .unwrap_or(inputs.service.origin_usd_per_gb),
        held_fraction: held_share(inputs, node),
        transit_usd_per_gb: reach.transit_usd_per_gb,
        rtt_ms: reach.rtt_ms,
        standby_held_mbps: standby_held,
    }
}

/// The planner's request: the delivery service's needs and the
/// selector's knobs.
fn plan_request(inputs: &Inputs) -> Request {
    let service = inputs.service;
    Request {
        object: inputs.affinity_key,
        bitrate_mbps: service.bitrate_mbps,
        headroom: service.headroom,
        min_sources: service.min_sources,
        survive_one_loss: service.survive_one_loss,
        latency_usd_per_gb_per_ms: inputs.settings.latency_usd_per_gb_per_ms,
        affinity_band: inputs.settings.affinity_band,
        fill_reuse_sessions: inputs.settings.fill_reuse_sessions,
    }
}

/// Plans on the healthy caches; when they fall short, on the degraded ones
/// too, if that plans more (and says so in `reasons`).
fn plan_healthy_first(
    request: &Request,
    pool: &Pool,
    reasons: &mut Vec<String>,
) -> Result<Plan, SelectError> {
    let mut chosen: Plan = plan(request, &pool.healthy)?;
    if chosen.shortfall_mbps > 0.0 && !pool.degraded.is_empty() {
        let with_degraded: Vec<Candidate> =
            pool.healthy.iter().chain(&pool.degraded).cloned().collect();
        let wider = plan(request, &with_degraded)?;
        if wider.planned_mbps > chosen.planned_mbps {
            reasons.push(format!(
                "healthy caches fall short; {} degraded cache(s) considered too",
                pool.degraded.len()
            ));
            chosen = wider;
        }
    }
    Ok(chosen)
}

/// Plans on the caches at their cap (`full`) as if each had an equal part
/// of the target spare, without standby, and says so in `reasons`.
/// Returns the plan and the candidates it was made from.
fn plan_best_effort(
    service: &DeliveryService,
    request: &Request,
    unplanned: &Plan,
    full: &[Candidate],
    reasons: &mut Vec<String>,
) -> Result<(Plan, Vec<Candidate>), SelectError> {
    let nominal = unplanned.target_mbps / f64::from(service.min_sources.max(1));
    let best_effort: Vec<Candidate> = full
        .iter()
        .cloned()
        .map(|mut c| {
            c.spare_mbps = nominal;
            c
        })
        .collect();
    // Standby among caches at their cap would be a promise nobody
    // keeps.
    let no_standby = Request {
        survive_one_loss: false,
        ..request.clone()
    };
    let chosen = plan(&no_standby, &best_effort)?;
    reasons.push(format!(
        "every cache that could serve is at its egress cap: best effort from the cheapest {} (the rate is what they can give; {:.1} Mbit/s not assured)",
        chosen.sources.len(),
        chosen.target_mbps
    ));
    Ok((chosen, best_effort))
}

/// Every cache URL names the exact version, so a client blending several
/// caches gets one version or a refusal, never a mix: the pin to append to
/// the path and query (empty when the object is not known).
fn pin_suffix(inputs: &Inputs) -> String {
    match &inputs.object.id {
        Some(id) => {
            let joiner = if inputs.uri_path_and_query.contains('?') {
                '&'
            } else {
                '?'
            };
            format!("{joiner}{}={id}", shoal_proto::PIN_PARAM)
        }
        None => String::new(),
    }
}

/// A cache of the plan as the client sees it.
struct Described {
    url: String,
    region: String,
    held: f64,
    /// Why the cache is in the plan, in words.
    why: String,
}

/// Writes the plan's caches out as sources and standby, with URLs and
/// reasons.
struct SourceDescriber<'a> {
    inputs: &'a Inputs<'a>,
    /// Where the plan's caches came from: healthy, degraded, best effort.
    candidates: [&'a [Candidate]; 3],
    saturated: bool,
    pin: String,
}

impl SourceDescriber<'_> {
    /// The cache `node` of the plan, at `usd_per_gb` in all (`None`: not a
    /// member or not a candidate, which a plan never names).
    fn describe(&self, node: &str, usd_per_gb: f64) -> Option<Described> {
        let member = self.inputs.members.iter().find(|m| m.node_id == node)?;
        let candidate = self
            .candidates
            .iter()
            .flat_map(|candidates| candidates.iter())
            .find(|c| c.node_id == node)?;
        let held = candidate.held_fraction;
        let fill_note = if held >= 1.0 {
            "holds the whole object".to_string()
        } else {
            format!(
                "holds {:.0} % of the object, fills the rest at ${:.4}/GB",
                held * 100.0,
                candidate.fill_usd_per_gb
            )
        };
        let why = format!(
            "{fill_note}; egress ${:.4}/GB; region {} at {:.0} ms, transit ${:.4}/GB; {}; ${usd_per_gb:.4}/GB in all",
            candidate.egress_usd_per_gb,
            member.region,
            candidate.rtt_ms,
            candidate.transit_usd_per_gb,
            if self.saturated {
                "at its egress cap (best effort)".to_string()
            } else {
                format!("{:.0} Mbit/s spare", candidate.spare_mbps)
            },
        );
        let base = match (self.inputs.https, member.https_base_url()) {
            (true, Some(https)) => https,
            _ => member.base_url(),
        };
        let url = format!("{base}{}{}", self.inputs.uri_path_and_query, self.pin);
        Some(Described {
            url,
            region: member.region.clone(),
            held,
            why,
        })
    }

    /// The plan's shares, best first.
    fn sources(&self, chosen: &Plan) -> Vec<Source> {
        let mut sources = Vec::with_capacity(chosen.sources.len());
        for share in &chosen.sources {
            let Some(described) = self.describe(&share.node_id, share.usd_per_gb) else {
                continue;
            };
            sources.push(Source {
                node: share.node_id.clone(),
                url: described.url,
                share: if chosen.planned_mbps > 0.0 {
                    share.mbps / chosen.planned_mbps
                } else {
                    0.0
                },
                mbps: share.mbps,
                standby_mbps: share.standby_mbps,
                region: described.region,
                usd_per_gb: share.usd_per_gb,
                held: described.held,
                why: described.why,
            });
        }
        sources
    }

    /// The caches the plan holds in reserve.
    fn standby(&self, chosen: &Plan) -> Vec<StandbySource> {
        let mut standby = Vec::with_capacity(chosen.standby.len());
        for reserve in &chosen.standby {
            let Some(described) = self.describe(&reserve.node_id, reserve.usd_per_gb) else {
                continue;
            };
            standby.push(StandbySource {
                node: reserve.node_id.clone(),
                url: described.url,
                mbps: reserve.mbps,
                region: described.region,
                usd_per_gb: reserve.usd_per_gb,
                held: described.held,
                why: format!(
                    "stands by with {:.1} Mbit/s should a source fail (not billed unless used): {}",
                    reserve.mbps, described.why
                ),
            });
        }
        standby
    }
}

/// Usable caches the plan did not need go to `left_out`: degraded ones,
/// then the cheapest of the rest (the runners-up a replacement plan would
/// use).
fn leave_out_unused(
    pool: &Pool,
    request: &Request,
    chosen: &Plan,
    sources: &[Source],
    standby: &[StandbySource],
    left_out: &mut LeftOutList,
) {
    let chosen_nodes: HashSet<&str> = sources
        .iter()
        .map(|s| s.node.as_str())
        .chain(standby.iter().map(|s| s.node.as_str()))
        .collect();
    for candidate in &pool.degraded {
        if !chosen_nodes.contains(candidate.node_id.as_str()) {
            left_out.add("degraded", &candidate.node_id, || {
                "degraded (used only when healthy caches fall short)".into()
            });
        }
    }
    leave_out_runners_up(&pool.healthy, request, chosen, &chosen_nodes, left_out);
}

/// Lists the [`RUNNERS_UP_LISTED`] cheapest healthy caches not in the plan,
/// saying why each was not used, and counts the rest.
fn leave_out_runners_up(
    healthy: &[Candidate],
    request: &Request,
    chosen: &Plan,
    chosen_nodes: &HashSet<&str>,
    left_out: &mut LeftOutList,
) {
    let mut spare_ones: Vec<(f64, &Candidate)> = healthy
        .iter()
        .filter(|c| !chosen_nodes.contains(c.node_id.as_str()))
        .map(|c| (shoal_select::unit_cost_usd_per_gb(c, request), c))
        .collect();
    let cut = RUNNERS_UP_LISTED.min(spare_ones.len());
    if cut > 0 {
        spare_ones.select_nth_unstable_by(cut - 1, |a, b| a.0.total_cmp(&b.0));
        spare_ones[..cut].sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    // Short of capacity, a usable cache was left out for another reason
    // than price: say which.
    let short = chosen.shortfall_mbps > 0.0;
    let sources_full = chosen.sources.len() >= shoal_select::SOURCES_MAX as usize;
    let kind = if short { "not used" } else { "not needed" };
    left_out.count_only(kind, spare_ones.len() - cut);
    for (rank, (cost, candidate)) in spare_ones[..cut].iter().enumerate() {
        left_out.add(kind, &candidate.node_id, || {
            let rank = rank + 1;
            if !short {
                format!("not needed (runner-up {rank}): ${cost:.4}/GB, cheaper caches carry the target")
            } else if sources_full {
                format!(
                    "not used (runner-up {rank}): ${cost:.4}/GB; the plan already has the {} sources a client blends at most",
                    shoal_select::SOURCES_MAX
                )
            } else {
                format!(
                    "not used (runner-up {rank}): its {:.1} Mbit/s of spare egress is below the smallest share worth a connection ({:.1} Mbit/s)",
                    candidate.spare_mbps,
                    chosen.target_mbps * shoal_select::SHARE_MIN_FRACTION
                )
            }
        });
    }
}

/// The standard reasons: the service's target, the client's zone,
/// whether the object may be cached, then the planner's own notes.
fn push_plan_reasons(inputs: &Inputs, chosen: &Plan, reasons: &mut Vec<String>) {
    let service = inputs.service;
    reasons.push(format!(
        "delivery service {}: {:.1} Mbit/s committed x {:.2} headroom = {:.1} Mbit/s target, at least {} source(s)",
        service.name, service.bitrate_mbps, service.headroom, chosen.target_mbps, service.min_sources
    ));
    reasons.push(format!("client zone {}", inputs.zone));
    if !inputs.object.cacheable {
        reasons.push("the origin forbids caching this object: caches pass it through".into());
    }
    reasons.extend(chosen.notes.iter().cloned());
}

/// The origin URL to send the client to when no cache can serve (`None`
/// when some can, or the fallback is off), saying which in `reasons`.
fn origin_fallback(
    inputs: &Inputs,
    sources: &[Source],
    reasons: &mut Vec<String>,
) -> Option<String> {
    if !sources.is_empty() {
        return None;
    }
    let url = inputs.service.origin_url(inputs.uri_path_and_query);
    // Never from HTTPS down to a plain origin.
    if inputs.https && url.as_deref().is_some_and(|u| !u.starts_with("https://")) {
        reasons.push(
            "no cache can serve over HTTPS and the origin is plain HTTP: no fallback for a client that asked over HTTPS"
                .into(),
        );
        return None;
    }
    reasons.push(match &url {
        Some(_) => "no cache can serve: sending the client to the origin".into(),
        None => "no cache can serve and the origin fallback is off".into(),
    });
    url
}

/// The reason saying the plan survives losing a source, and which standby
/// makes it so.
fn survival_reason(chosen: &Plan, standby: &[StandbySource]) -> String {
    let standby_note = if chosen.standby_mbps > 0.0 {
        format!(
            " ({:.1} Mbit/s of standby: {})",
            chosen.standby_mbps,
            if standby.is_empty() {
                "the other sources raise their output".to_string()
            } else {
                format!(
                    "{} brought on stream if needed",
                    standby
                        .iter()
                        .map(|s| s.node.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        )
    } else {
        String::new()
    };
    format!("losing any one source still leaves the committed bitrate{standby_note}")
}

/// The decision in words, for `/explain`.
pub fn explain(decision: &Decision, path: &str) -> String {
    use std::fmt::Write;
    let mut text = String::new();
    let _ = writeln!(
        text,
        "{path} (delivery service {}, client zone {})",
        decision.service, decision.zone
    );
    match (&decision.object.id, decision.object.size_bytes) {
        (Some(id), Some(size)) => {
            let _ = writeln!(
                text,
                "object {}… of {} bytes",
                &id[..16.min(id.len())],
                size
            );
        }
        _ => {
            let _ = writeln!(text, "object not known to the mesh yet");
        }
    }
    let _ = writeln!(
        text,
        "target {:.1} Mbit/s ({:.1} committed); planned {:.1} Mbit/s{}; expected ${:.4}/GB{}",
        decision.target_mbps,
        decision.committed_mbps,
        decision.predicted_mbps,
        if decision.shortfall_mbps > 0.0 {
            format!(", {:.1} Mbit/s short", decision.shortfall_mbps)
        } else {
            String::new()
        },
        decision.usd_per_gb,
        decision
            .expected_usd
            .map(|usd| format!(" (${usd:.4} for the whole object)"))
            .unwrap_or_default()
    );
    let _ = writeln!(text, "\nchosen, best first:");
    if decision.sources.is_empty() {
        let _ = writeln!(text, "  (none)");
    }
    for (rank, source) in decision.sources.iter().enumerate() {
        let _ = writeln!(
            text,
            "  {}. {} ({:.0} %, {:.1} Mbit/s) {}\n     because it {}",
            rank + 1,
            source.node,
            source.share * 100.0,
            source.mbps,
            source.url,
            source.why
        );
    }
    if let Some(origin) = &decision.origin_fallback {
        let _ = writeln!(text, "  origin: {origin}");
    }
    if decision.sources.iter().any(|s| s.standby_mbps > 0.0) || !decision.standby.is_empty() {
        let _ = writeln!(text, "\nstandby, should a source fail:");
        for source in decision.sources.iter().filter(|s| s.standby_mbps > 0.0) {
            let _ = writeln!(
                text,
                "  {} raises its output by up to {:.1} Mbit/s",
                source.node, source.standby_mbps
            );
        }
        for reserve in &decision.standby {
            let _ = writeln!(
                text,
                "  {} ({:.1} Mbit/s) {}\n     because it {}",
                reserve.node, reserve.mbps, reserve.url, reserve.why
            );
        }
    }
    if !decision.left_out.is_empty() {
        let _ = writeln!(text, "\nnot chosen:");
        for left in &decision.left_out {
            let _ = writeln!(text, "  {}: {}", left.node, left.why);
        }
    }
    let _ = writeln!(text, "\nreasons:");
    for reason in &decision.reasons {
        let _ = writeln!(text, "  - {reason}");
    }
    text
}

#[cfg(test)]
mod tests;
