//! The planner against an LP solver on the same problem, and its decision
//! latency. `cargo bench -p shoal-select --bench optimality`
//!
//! Deterministic random instances with 2 to 1,000 caches, until 1,000 have
//! an LP optimum (spare
//! 1-10,000 Mbit/s, one in ten starved to 1 %) and one viewer's session
//! (1-100 Mbit/s streams, 100-2,000 Mbit/s downloads): the LP (good_lp +
//! microlp, in Mbit/s and $/GB: microlp needs sane scales) minimises
//! Σ k_i·x_i subject to Σ x_i ≥ target and 0 ≤ x_i ≤ min(spare_i, share
//! cap). It has no limit on the number of sources (that needs integers),
//! so it is a lower bound on the planner's problem (at most 8 sources, no
//! slivers): the planner must cost at most 1.02 × it (its rendezvous
//! affinity is allowed the band) and never plan a cache over its spare
//! capacity. Then `plan()` is timed at 1,000 caches, side by side
//! with one LP solve.

mod common;

use good_lp::{constraint, microlp, variable, Expression, ProblemVariables, Solution, SolverModel};
use shoal_core::ObjectId;
use shoal_select::{plan, share_cap_mbps, unit_cost_usd_per_gb, Candidate, Request, SOURCES_MAX};
use std::time::Instant;

use common::Rng;

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
        latency_usd_per_gb_per_ms: 0.0001,
        affinity_band: 0.02,
        fill_reuse_sessions: 4.0,
    };
    (request, candidates)
}

/// The LP optimum of the same problem (None if infeasible).
fn lp_cost(request: &Request, candidates: &[Candidate]) -> Option<f64> {
    let (cap, _) = share_cap_mbps(request);
    let target = request.bitrate_mbps * request.headroom;
    let mut vars = ProblemVariables::new();
    let xs: Vec<_> = candidates
        .iter()
        .map(|c| vars.add(variable().min(0.0).max(c.spare_mbps.min(cap))))
        .collect();
    let objective: Expression = xs
        .iter()
        .zip(candidates)
        .map(|(&x, c)| unit_cost_usd_per_gb(c, request) * x)
        .sum();
    let total: Expression = xs.iter().sum();
    let solution = vars
        .minimise(objective.clone())
        .using(microlp)
        .with(constraint!(total >= target))
        .solve()
        .ok()?;
    Some(solution.eval(&objective))
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
        match lp_cost(&request, &candidates) {
            Some(best) if p.shortfall_mbps == 0.0 => {
                let ratio = if best > 0.0 { plan_cost / best } else { 1.0 };
                worst_ratio = worst_ratio.max(ratio);
                ratios.push(ratio);
                if ratio > 1.02 + 1e-9 {
                    over_band += 1;
                }
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
            std::hint::black_box(lp_cost(&request, &candidates));
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
