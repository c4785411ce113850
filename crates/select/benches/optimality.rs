//! The planner against an LP solver on the same problem, and its decision
//! latency. `cargo bench -p shoal-select --bench optimality`
//!
//! Deterministic random instances with 2 to 1,000 caches, until 1,000 have
//! an LP optimum (spare 1-10,000 Mbit/s, one in ten starved to 1 %) and
//! one viewer's session (1-100 Mbit/s streams, 100-2,000 Mbit/s
//! downloads), at least 2 sources, surviving one loss. The LP
//! (`common::lp_optimum`: shares and unbilled standby, the same survival
//! constraint) has no limit on the number of caches (that needs integers),
//! so it is a lower bound on the planner's problem (at most 8 caches, no
//! slivers): the planner must cost at most 1.02 × it (its rendezvous
//! affinity is allowed the band), survive whenever the LP can, and never
//! plan a cache over its spare capacity. Then `plan()` is timed at 1,000
//! caches, side by side with one LP solve.

mod common;

use shoal_core::ObjectId;
use shoal_select::{plan, Candidate, Request, SOURCES_MAX};
use std::time::Instant;

use common::{lp_optimum, Rng};

fn instance(rng: &mut Rng, n: usize) -> (Request, Vec<Candidate>) {
    // One in ten instances is starved of capacity (spare ÷ 100), so best
    // effort is exercised too.
    let scale = if rng.unit() < 0.1 { 0.01 } else { 1.0 };
    let candidates: Vec<Candidate> = (0..n)
        .map(|i| Candidate {
            node_id: format!("c{i}"),
            spare_mbps: scale * rng.range(1.0, 10_000.0),
            egress_usd_per_gb: rng.range(0.001, 0.05),
            fill_usd_per_gb: rng.range(0.0, 0.03),
            held_fraction: if rng.unit() < 0.5 { 1.0 } else { rng.unit() },
            transit_usd_per_gb: rng.range(0.0, 0.02),
            rtt_ms: rng.range(1.0, 200.0),
            standby_held_mbps: 0.0,
        })
        .collect();
    let headroom = rng.range(1.15, 2.0);
    // One viewer's session: a video stream (1-100 Mbit/s) or a download
    // (100-2,000 Mbit/s), log-uniform.
    let bitrate = if rng.unit() < 0.7 {
        10f64.powf(rng.range(0.0, 2.0))
    } else {
        10f64.powf(rng.range(2.0, 3.3))
    };
    let mut object = [0u8; 32];
    object[..8].copy_from_slice(&rng.next().to_le_bytes());
    let request = Request {
        object: ObjectId(object),
        bitrate_mbps: bitrate,
        headroom,
        min_sources: 2,
        survive_one_loss: true,
        latency_usd_per_gb_per_ms: 0.0001,
        affinity_band: 0.02,
        fill_reuse_sessions: 4.0,
    };
    (request, candidates)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let started = Instant::now();
    let mut rng = Rng(0x5e1ec7);
    let (mut compared, mut short, mut over_capacity, mut over_band) = (0, 0, 0, 0);
    let mut short_by_slots = 0;
    let mut worst_ratio: f64 = 0.0;
    let mut ratios = Vec::new();
    let (mut survivable, mut lost_survival) = (0, 0);
    let (mut standby_mbps, mut caches_used) = (Vec::new(), Vec::new());
    // Until 1,000 instances have an LP optimum to compare with.
    let mut i = 0;
    while compared < 1000 {
        i += 1;
        // Sizes spread from 2 to 1,000 caches, more of the small ones.
        let n = (2.0 * (500.0f64).powf(rng.unit())).round() as usize;
        let n = if i % 100 == 0 { 1000 } else { n.clamp(2, 1000) };
        let (request, candidates) = instance(&mut rng, n);
        let p = plan(&request, &candidates).expect("valid instance");
        for s in &p.sources {
            let c = candidates
                .iter()
                .find(|c| c.node_id == s.node_id)
                .expect("known");
            if s.mbps > c.spare_mbps * (1.0 + 1e-12) {
                over_capacity += 1;
            }
        }
        let plan_cost = p.usd_per_gb * p.planned_mbps;
        // The LP with survival; when no plan at all can survive, the LP
        // without it (the planner then keeps the cheapest shares too).
        let (best, lp_survives) = match lp_optimum(&request, &candidates, true) {
            Some(best) => (Some(best), true),
            None => (lp_optimum(&request, &candidates, false), false),
        };
        match best {
            Some(best) if p.shortfall_mbps == 0.0 => {
                let ratio = if best > 0.0 { plan_cost / best } else { 1.0 };
                worst_ratio = worst_ratio.max(ratio);
                ratios.push(ratio);
                if ratio > 1.02 + 1e-9 {
                    over_band += 1;
                }
                if lp_survives {
                    survivable += 1;
                    if !p.survives_one_loss {
                        lost_survival += 1;
                    }
                }
                standby_mbps.push(p.standby_mbps / p.planned_mbps.max(1e-9));
                caches_used.push((p.sources.len() + p.standby.len()) as f64);
                compared += 1;
            }
            Some(_) => short_by_slots += 1,
            None => short += 1,
        }
    }
    ratios.sort_by(f64::total_cmp);
    println!("shoal-select vs LP (good_lp + microlp), {i} instances of 2-1000 caches");
    println!(
        "  compared {compared}; capacity short for both (best effort) {short}; short only under the {SOURCES_MAX}-source limit the LP lacks {short_by_slots}"
    );
    println!(
        "  plan cost / LP optimum: median {:.4}x, p99 {:.4}x, worst {:.4}x; over 1.02x: {over_band}",
        percentile(&ratios, 0.5),
        percentile(&ratios, 0.99),
        worst_ratio
    );
    println!("  plans with a cache over its spare capacity: {over_capacity}");
    standby_mbps.sort_by(f64::total_cmp);
    caches_used.sort_by(f64::total_cmp);
    println!(
        "  survival: the LP can survive one loss in {survivable}; the plan does not in {lost_survival} of them; standby / shares median {:.2}, caches per plan median {:.0} (max {:.0})",
        percentile(&standby_mbps, 0.5),
        percentile(&caches_used, 0.5),
        caches_used.last().copied().unwrap_or(0.0)
    );

    // Decision latency at 1,000 caches, side by side with the LP.
    let mut plan_us = Vec::new();
    let mut lp_us = Vec::new();
    for k in 0..400 {
        let (request, candidates) = instance(&mut rng, 1000);
        let t = Instant::now();
        let p = plan(&request, &candidates).expect("valid");
        plan_us.push(t.elapsed().as_secs_f64() * 1e6);
        std::hint::black_box(p);
        if k % 20 == 0 {
            let t = Instant::now();
            std::hint::black_box(lp_optimum(&request, &candidates, true));
            lp_us.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    plan_us.sort_by(f64::total_cmp);
    lp_us.sort_by(f64::total_cmp);
    println!(
        "decision latency at 1000 caches: plan() p50 {:.0} us, p99 {:.0} us (target p99 < 1000 us); LP solve p50 {:.0} us",
        percentile(&plan_us, 0.5),
        percentile(&plan_us, 0.99),
        percentile(&lp_us, 0.5)
    );
    println!("total time {:.1} s", started.elapsed().as_secs_f64());
}
