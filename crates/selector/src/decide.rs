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
use std::collections::HashMap;

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
    let held_of = |node: &str| {
        inputs
            .held
            .get(node)
            .copied()
            .unwrap_or(0.0)
            .clamp(0.0, 1.0)
    };

    // What a byte costs a cache that lacks it: the cheapest healthy
    // sibling holding the object, else the origin. The two cheapest
    // holders, found once, answer for every cache (a holder's own sibling
    // price is the other one's).
    let mut cheapest: [Option<(f64, &str)>; 2] = [None, None];
    for m in inputs.members {
        if m.health != Health::Ok || held_of(&m.node_id) <= 0.0 {
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
    let cheapest_holder = |except: &str| {
        cheapest
            .iter()
            .flatten()
            .find(|(_, node)| *node != except)
            .map(|(price, _)| *price)
    };

    let mut left_out = LeftOutList::default();
    let mut healthy = Vec::new();
    let mut degraded = Vec::new();
    // Reachable caches at their egress cap.
    let mut full: Vec<Candidate> = Vec::new();
    for member in inputs.members {
        let node = &member.node_id;
        if inputs.exclude.iter().any(|e| e == node) {
            left_out.add("reported degraded by the client", node, || {
                "reported degraded by the client".into()
            });
            continue;
        }
        if member.health == Health::Draining {
            left_out.add("draining", node, || "draining".into());
            continue;
        }
        if inputs.unresponsive.iter().any(|u| u == node) {
            left_out.add("not answering", node, || {
                "alive in gossip but not answering the selector's requests".into()
            });
            continue;
        }
        let Some(reach) = (inputs.reach)(&member.region) else {
            left_out.add("unreachable from the client's zone", node, || {
                format!(
                    "region {} is not reachable from zone {}",
                    member.region, inputs.zone
                )
            });
            continue;
        };
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
        let candidate = Candidate {
            node_id: node.clone(),
            spare_mbps: spare,
            egress_usd_per_gb: usd(member.cost_per_gb_microusd),
            fill_usd_per_gb: cheapest_holder(node).unwrap_or(service.origin_usd_per_gb),
            held_fraction: held_of(node),
            transit_usd_per_gb: reach.transit_usd_per_gb,
            rtt_ms: reach.rtt_ms,
            standby_held_mbps: standby_held,
        };
        if spare <= 0.0 {
            full.push(candidate);
        } else if member.health == Health::Degraded {
            degraded.push(candidate);
        } else {
            healthy.push(candidate);
        }
    }

    let request = Request {
        object: inputs.affinity_key,
        bitrate_mbps: service.bitrate_mbps,
        headroom: service.headroom,
        min_sources: service.min_sources,
        survive_one_loss: service.survive_one_loss,
        latency_usd_per_gb_per_ms: inputs.settings.latency_usd_per_gb_per_ms,
        affinity_band: inputs.settings.affinity_band,
        fill_reuse_sessions: inputs.settings.fill_reuse_sessions,
    };
    let mut chosen: Plan = plan(&request, &healthy)?;
    if chosen.shortfall_mbps > 0.0 && !degraded.is_empty() {
        let with_degraded: Vec<Candidate> = healthy.iter().chain(&degraded).cloned().collect();
        let wider = plan(&request, &with_degraded)?;
        if wider.planned_mbps > chosen.planned_mbps {
            reasons.push(format!(
                "healthy caches fall short; {} degraded cache(s) considered too",
                degraded.len()
            ));
            chosen = wider;
        }
    }

    // Every cache that could serve is at its cap: unless the service says
    // to refuse, the cheapest of them serve what they can (the rate is
    // theirs to give; the shortfall is reported), rather than nobody.
    let saturated = chosen.sources.is_empty()
        && !full.is_empty()
        && service.when_saturated == crate::config::WhenSaturated::BestEffort;
    let mut best_effort: Vec<Candidate> = Vec::new();
    if saturated {
        let nominal = chosen.target_mbps / f64::from(service.min_sources.max(1));
        best_effort = full
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
        chosen = plan(&no_standby, &best_effort)?;
        reasons.push(format!(
            "every cache that could serve is at its egress cap: best effort from the cheapest {} (the rate is what they can give; {:.1} Mbit/s not assured)",
            chosen.sources.len(),
            chosen.target_mbps
        ));
    } else {
        for c in &full {
            left_out.add("no spare egress", &c.node_id, || "no spare egress".into());
        }
    }
    let find_candidate = |node: &str| {
        healthy
            .iter()
            .chain(&degraded)
            .chain(&best_effort)
            .find(|c| c.node_id == node)
    };
    let mut sources = Vec::with_capacity(chosen.sources.len());
    // Every cache URL names the exact version, so a client blending
    // several caches gets one version or a refusal, never a mix.
    let pin = match &inputs.object.id {
        Some(id) => {
            let joiner = if inputs.uri_path_and_query.contains('?') {
                '&'
            } else {
                '?'
            };
            format!("{joiner}{}={id}", shoal_proto::PIN_PARAM)
        }
        None => String::new(),
    };
    // Why a cache is in the plan, in words, and its URL.
    let describe = |node: &str, usd_per_gb: f64| {
        let (member, candidate) = (
            inputs.members.iter().find(|m| m.node_id == node)?,
            find_candidate(node)?,
        );
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
            if saturated {
                "at its egress cap (best effort)".to_string()
            } else {
                format!("{:.0} Mbit/s spare", candidate.spare_mbps)
            },
        );
        let url = format!("{}{}{pin}", member.base_url(), inputs.uri_path_and_query);
        Some((url, member.region.clone(), held, why))
    };
    for share in &chosen.sources {
        let Some((url, region, held, why)) = describe(&share.node_id, share.usd_per_gb) else {
            continue;
        };
        sources.push(Source {
            node: share.node_id.clone(),
            url,
            share: if chosen.planned_mbps > 0.0 {
                share.mbps / chosen.planned_mbps
            } else {
                0.0
            },
            mbps: share.mbps,
            standby_mbps: share.standby_mbps,
            region,
            usd_per_gb: share.usd_per_gb,
            held,
            why,
        });
    }
    let mut standby = Vec::with_capacity(chosen.standby.len());
    for reserve in &chosen.standby {
        let Some((url, region, held, why)) = describe(&reserve.node_id, reserve.usd_per_gb) else {
            continue;
        };
        standby.push(StandbySource {
            node: reserve.node_id.clone(),
            url,
            mbps: reserve.mbps,
            region,
            usd_per_gb: reserve.usd_per_gb,
            held,
            why: format!(
                "stands by with {:.1} Mbit/s should a source fail (not billed unless used): {why}",
                reserve.mbps
            ),
        });
    }
    // Usable caches the plan did not need: degraded ones, then the
    // cheapest of the rest (the runners-up a replacement plan would use).
    let chosen_nodes: std::collections::HashSet<&str> = sources
        .iter()
        .map(|s| s.node.as_str())
        .chain(standby.iter().map(|s| s.node.as_str()))
        .collect();
    for candidate in &degraded {
        if !chosen_nodes.contains(candidate.node_id.as_str()) {
            left_out.add("degraded", &candidate.node_id, || {
                "degraded (used only when healthy caches fall short)".into()
            });
        }
    }
    let mut spare_ones: Vec<(f64, &Candidate)> = healthy
        .iter()
        .filter(|c| !chosen_nodes.contains(c.node_id.as_str()))
        .map(|c| (shoal_select::unit_cost_usd_per_gb(c, &request), c))
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
    let (left_out, left_out_counts) = left_out.finish();
    for (kind, count, listed) in left_out_counts {
        if count > listed {
            reasons.push(format!("{count} caches left out: {kind} ({listed} listed)"));
        }
    }

    reasons.push(format!(
        "delivery service {}: {:.1} Mbit/s committed x {:.2} headroom = {:.1} Mbit/s target, at least {} source(s)",
        service.name, service.bitrate_mbps, service.headroom, chosen.target_mbps, service.min_sources
    ));
    reasons.push(format!("client zone {}", inputs.zone));
    if !inputs.object.cacheable {
        reasons.push("the origin forbids caching this object: caches pass it through".into());
    }
    reasons.extend(chosen.notes.iter().cloned());
    let origin_fallback = if sources.is_empty() {
        let url = service.origin_url(inputs.uri_path_and_query);
        reasons.push(match &url {
            Some(_) => "no cache can serve: sending the client to the origin".into(),
            None => "no cache can serve and the origin fallback is off".into(),
        });
        url
    } else {
        None
    };
    if chosen.survives_one_loss && !saturated {
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
        reasons.push(format!(
            "losing any one source still leaves the committed bitrate{standby_note}"
        ));
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
    })
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
