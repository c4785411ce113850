//! Properties of the planner: capacity, coverage, resilience, cost within
//! the affinity band of the optimum, determinism, clear errors.

use super::*;
use proptest::prelude::*;

fn candidate(id: &str, spare: f64, egress: f64) -> Candidate {
    Candidate {
        node_id: id.into(),
        spare_mbps: spare,
        egress_usd_per_gb: egress,
        fill_usd_per_gb: 0.0,
        held_fraction: 1.0,
        transit_usd_per_gb: 0.0,
        rtt_ms: 0.0,
    }
}

fn request(bitrate: f64, headroom: f64, min_sources: u32) -> Request {
    Request {
        object: ObjectId([1; 32]),
        bitrate_mbps: bitrate,
        headroom,
        min_sources,
        latency_usd_per_gb_per_ms: 0.0,
        affinity_band: 0.02,
        fill_reuse_sessions: 1.0,
    }
}

#[test]
fn cheapest_caches_carry_the_target_and_one_loss_is_survivable() {
    let caches = [
        candidate("a", 100.0, 0.010),
        candidate("b", 100.0, 0.002),
        candidate("c", 100.0, 0.005),
    ];
    let plan = plan(&request(40.0, 1.5, 2), &caches).unwrap();
    // Target 60, cap per source 60 - 40 = 20: b, c and a each 20.
    let ids: Vec<&str> = plan.sources.iter().map(|s| s.node_id.as_str()).collect();
    assert_eq!(ids, ["b", "c", "a"]);
    assert!((plan.planned_mbps - 60.0).abs() < 1e-9);
    assert_eq!(plan.shortfall_mbps, 0.0);
    assert!(plan.survives_one_loss);
    // With headroom 2, two sources of 40 each suffice: the cheapest two.
    let plan2 = super::plan(&request(40.0, 2.0, 2), &caches).unwrap();
    let ids: Vec<&str> = plan2.sources.iter().map(|s| s.node_id.as_str()).collect();
    assert_eq!(ids, ["b", "c"]);
}

#[test]
fn missing_bytes_distance_and_latency_cost_money() {
    let mut far = candidate("far", 100.0, 0.001);
    far.transit_usd_per_gb = 0.01;
    let mut cold = candidate("cold", 100.0, 0.001);
    cold.held_fraction = 0.0;
    cold.fill_usd_per_gb = 0.02;
    let mut slow = candidate("slow", 100.0, 0.001);
    slow.rtt_ms = 100.0;
    let near = candidate("near", 100.0, 0.004);
    let mut r = request(10.0, 1.0, 1);
    r.latency_usd_per_gb_per_ms = 0.0001;
    let plan = plan(&r, &[far, cold, slow, near]).unwrap();
    assert_eq!(plan.sources.len(), 1);
    assert_eq!(plan.sources[0].node_id, "near");
}

#[test]
fn short_capacity_is_best_effort_with_the_shortfall() {
    let caches = [candidate("a", 10.0, 0.01), candidate("b", 5.0, 0.01)];
    let plan = plan(&request(20.0, 1.25, 2), &caches).unwrap();
    assert!((plan.planned_mbps - 15.0).abs() < 1e-9);
    assert!((plan.shortfall_mbps - 10.0).abs() < 1e-9);
    assert!(!plan.survives_one_loss);
    assert!(plan.notes.iter().any(|n| n.contains("not met")));
    // Nothing at all: an empty plan, all short.
    let empty = super::plan(&request(20.0, 1.0, 1), &[]).unwrap();
    assert!(empty.sources.is_empty());
    assert_eq!(empty.shortfall_mbps, 20.0);
}

#[test]
fn absurd_requests_and_candidates_are_refused_or_left_out() {
    let c = [candidate("a", 10.0, 0.01)];
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 2e6] {
        assert!(plan(&request(bad, 1.0, 1), &c).is_err(), "bitrate {bad}");
    }
    for bad in [0.5, 11.0, f64::NAN] {
        assert!(plan(&request(1.0, bad, 1), &c).is_err(), "headroom {bad}");
    }
    let weird = [
        candidate("nan", f64::NAN, 0.01),
        candidate("neg", 10.0, -1.0),
        candidate("zero", 0.0, 0.01),
        candidate("ok", 10.0, 0.01),
    ];
    let plan = plan(&request(5.0, 1.0, 1), &weird).unwrap();
    assert_eq!(plan.sources.len(), 1);
    assert_eq!(plan.sources[0].node_id, "ok");
    assert!(plan.notes.iter().any(|n| n.contains("3 candidate(s)")));
}

#[test]
fn affinity_keeps_each_object_on_its_own_caches() {
    // Equal costs: who serves depends on the object, stably.
    let caches: Vec<Candidate> = (0..8)
        .map(|i| candidate(&format!("c{i}"), 100.0, 0.01))
        .collect();
    let mut firsts = std::collections::HashSet::new();
    for n in 0..64u8 {
        let mut r = request(10.0, 1.0, 1);
        r.object = ObjectId([n; 32]);
        let a = plan(&r, &caches).unwrap();
        let b = plan(&r, &caches).unwrap();
        assert_eq!(a, b, "deterministic");
        firsts.insert(a.sources[0].node_id.clone());
    }
    assert!(
        firsts.len() >= 6,
        "objects spread over the caches: {firsts:?}"
    );
}

prop_compose! {
    fn arb_candidates()(specs in proptest::collection::vec(
        (0.0f64..500.0, 0.0f64..0.05, 0.0f64..0.05, 0.0f64..=1.0, 0.0f64..0.02, 0.0f64..200.0), 0..40))
        -> Vec<Candidate> {
        specs.into_iter().enumerate().map(|(i, (spare, egress, fill, held, transit, rtt))| Candidate {
            node_id: format!("n{i}"),
            spare_mbps: spare,
            egress_usd_per_gb: egress,
            fill_usd_per_gb: fill,
            held_fraction: held,
            transit_usd_per_gb: transit,
            rtt_ms: rtt,
        }).collect()
    }
}

proptest! {
    #[test]
    fn plans_respect_capacity_cover_the_target_and_stay_near_the_optimum(
        caches in arb_candidates(),
        bitrate in 0.1f64..400.0,
        headroom in 1.0f64..3.0,
        min_sources in 1u32..4,
        object in any::<[u8; 32]>(),
    ) {
        let mut r = request(bitrate, headroom, min_sources);
        r.object = ObjectId(object);
        r.latency_usd_per_gb_per_ms = 0.0001;
        let p = plan(&r, &caches).unwrap();
        let target = bitrate * headroom;
        for s in &p.sources {
            let c = caches.iter().find(|c| c.node_id == s.node_id).unwrap();
            prop_assert!(s.mbps > 0.0 && s.mbps <= c.spare_mbps + 1e-9, "over capacity");
        }
        prop_assert!(p.sources.len() <= SOURCES_MAX as usize, "{} sources", p.sources.len());
        let share_min = target * SHARE_MIN_FRACTION;
        let small = p.sources.iter().filter(|s| s.mbps < share_min - 1e-9).count();
        prop_assert!(small <= 1, "{small} slivers below the minimum share");
        let total_spare: f64 = caches.iter().filter(|c| c.spare_mbps > 0.0).map(|c| c.spare_mbps).sum();
        let no_slivers = caches.iter().all(|c| c.spare_mbps <= 0.0 || c.spare_mbps >= share_min);
        if total_spare >= target && no_slivers && p.sources.len() < SOURCES_MAX as usize {
            prop_assert!(p.shortfall_mbps < 1e-6, "target not covered although capacity exists");
        }
        prop_assert!((p.planned_mbps + p.shortfall_mbps - target).abs() < 1e-6);
        // Affinity costs at most its band over the optimum (band 0).
        let mut exact = r.clone();
        exact.affinity_band = 0.0;
        let best = plan(&exact, &caches).unwrap();
        if (best.planned_mbps - p.planned_mbps).abs() < 1e-9 && best.planned_mbps > 0.0 {
            let cost = p.usd_per_gb * p.planned_mbps;
            let best_cost = best.usd_per_gb * best.planned_mbps;
            prop_assert!(cost <= best_cost * (1.0 + r.affinity_band) + 1e-12,
                "cost {cost} vs optimum {best_cost}");
        }
        // Resilience when the headroom allows it and capacity is ample.
        if min_sources >= 2 && headroom >= 1.5 && p.shortfall_mbps == 0.0
            && p.sources.iter().all(|s| s.mbps <= target - bitrate + 1e-9) {
            prop_assert!(p.survives_one_loss);
        }
    }
}

#[test]
fn many_thin_caches_make_at_most_eight_sources_and_no_slivers() {
    let mut caches: Vec<Candidate> = (0..40)
        .map(|i| candidate(&format!("thin{i}"), 5.0, 0.001 + i as f64 * 1e-5))
        .collect();
    caches.push(candidate("sliver", 1e-6, 0.0));
    let plan = plan(&request(100.0, 1.5, 2), &caches).unwrap();
    assert_eq!(plan.sources.len(), SOURCES_MAX as usize);
    assert!(plan.sources.iter().all(|s| s.node_id != "sliver"));
    assert!((plan.planned_mbps - 40.0).abs() < 1e-9);
    assert!(plan.shortfall_mbps > 100.0);
}
