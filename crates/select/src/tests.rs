//! Properties of the planner: capacity, coverage, shares and standby that
//! survive a loss, cost within the affinity band of the optimum,
//! determinism, clear errors.

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
        standby_held_mbps: 0.0,
    }
}

fn request(bitrate: f64, headroom: f64, min_sources: u32) -> Request {
    Request {
        object: ObjectId([1; 32]),
        bitrate_mbps: bitrate,
        headroom,
        min_sources,
        survive_one_loss: true,
        latency_usd_per_gb_per_ms: 0.0,
        affinity_band: 0.02,
        fill_reuse_sessions: 1.0,
    }
}

fn ids(plan: &Plan) -> Vec<&str> {
    plan.sources.iter().map(|s| s.node_id.as_str()).collect()
}

fn standby_ids(plan: &Plan) -> Vec<&str> {
    plan.standby.iter().map(|s| s.node_id.as_str()).collect()
}

#[test]
fn cheapest_caches_carry_the_target_and_raise_their_output_if_one_fails() {
    let caches = [
        candidate("a", 100.0, 0.010),
        candidate("b", 100.0, 0.002),
        candidate("c", 100.0, 0.005),
    ];
    let plan = plan(&request(40.0, 1.5, 2), &caches).unwrap();
    // Target 60 from at least 2 sources: b and c, 30 each. Losing either
    // leaves 30 + the other's 10 of standby = the committed 40.
    assert_eq!(ids(&plan), ["b", "c"]);
    assert!(plan.sources.iter().all(|s| (s.mbps - 30.0).abs() < 1e-9));
    assert!(plan
        .sources
        .iter()
        .all(|s| (s.standby_mbps - 10.0).abs() < 1e-9));
    assert!(plan.standby.is_empty());
    assert!((plan.planned_mbps - 60.0).abs() < 1e-9);
    assert_eq!(plan.shortfall_mbps, 0.0);
    assert!(plan.survives_one_loss);
    assert!((plan.usd_per_gb - 0.0035).abs() < 1e-12);
}

#[test]
fn resilience_is_bought_with_standby_not_with_dear_shares() {
    // Issue 11: two caches at $0.01/GB, two at $0.20/GB, 4,000 Mbit/s
    // spare each; 8 Mbit/s x 1.5, at least 2 sources.
    let caches = [
        candidate("dear1", 4000.0, 0.20),
        candidate("cheap1", 4000.0, 0.01),
        candidate("dear2", 4000.0, 0.20),
        candidate("cheap2", 4000.0, 0.01),
    ];
    let plan = plan(&request(8.0, 1.5, 2), &caches).unwrap();
    let mut chosen = ids(&plan);
    chosen.sort();
    assert_eq!(chosen, ["cheap1", "cheap2"]);
    assert!(plan.sources.iter().all(|s| (s.mbps - 6.0).abs() < 1e-9));
    assert!(plan.standby.is_empty(), "{:?}", plan.standby);
    assert!(plan.survives_one_loss);
    assert!((plan.usd_per_gb - 0.01).abs() < 1e-12);

    // The cheap caches have no room beyond their shares: the cheapest
    // other cache is brought in, as standby only (never billed).
    let tight = [
        candidate("dear1", 4000.0, 0.20),
        candidate("cheap1", 6.5, 0.01),
        candidate("dear2", 4000.0, 0.30),
        candidate("cheap2", 6.5, 0.01),
    ];
    let plan = super::plan(&request(8.0, 1.5, 2), &tight).unwrap();
    let mut chosen = ids(&plan);
    chosen.sort();
    assert_eq!(chosen, ["cheap1", "cheap2"]);
    assert_eq!(standby_ids(&plan), ["dear1"]);
    assert!(plan.survives_one_loss);
    assert!((plan.usd_per_gb - 0.01).abs() < 1e-12);
    // Each cheap cache raises its output by its 0.5 of room; dear1 the
    // other 1.5 that losing either leaves.
    assert!(plan
        .sources
        .iter()
        .all(|s| (s.standby_mbps - 0.5).abs() < 1e-9));
    assert!((plan.standby[0].mbps - 1.5).abs() < 1e-9, "{plan:?}");
}

#[test]
fn min_sources_means_what_it_says() {
    let caches: Vec<Candidate> = (0..6)
        .map(|i| candidate(&format!("c{i}"), 1000.0, 0.01 + 0.001 * i as f64))
        .collect();
    for k in 1..=4u32 {
        let plan = plan(&request(8.0, 1.5, k), &caches).unwrap();
        assert_eq!(plan.sources.len(), k as usize, "min_sources {k}: {plan:?}");
        assert!(plan.survives_one_loss, "min_sources {k}");
        // One source: the next cache stands by with the committed bitrate.
        if k == 1 {
            assert_eq!(standby_ids(&plan), ["c1"]);
            assert!((plan.standby[0].mbps - 8.0).abs() < 1e-9);
        } else {
            assert!(plan.standby.is_empty(), "min_sources {k}: {plan:?}");
        }
    }
    // Without survival, no standby at all.
    let mut r = request(8.0, 1.5, 1);
    r.survive_one_loss = false;
    let plan = plan(&r, &caches).unwrap();
    assert_eq!(ids(&plan), ["c0"]);
    assert!(plan.standby.is_empty() && plan.standby_mbps == 0.0);
    assert!(!plan.survives_one_loss);
}

#[test]
fn a_loss_that_cannot_be_covered_is_said_so() {
    let plan = plan(&request(8.0, 1.5, 1), &[candidate("only", 100.0, 0.01)]).unwrap();
    assert_eq!(ids(&plan), ["only"]);
    assert!(!plan.survives_one_loss);
    assert!(plan.notes.iter().any(|n| n.contains("no other cache")));
    let two = super::plan(&request(8.0, 1.5, 2), &[candidate("only", 100.0, 0.01)]).unwrap();
    assert!(two
        .notes
        .iter()
        .any(|n| n.contains("only 1 cache(s) can serve: fewer than min_sources = 2")));
    // Standby other plans count on limits this plan's standby only.
    let mut busy = candidate("busy", 100.0, 0.01);
    busy.standby_held_mbps = 95.0;
    let plan = super::plan(
        &request(8.0, 1.5, 1),
        &[candidate("only", 100.0, 0.005), busy],
    )
    .unwrap();
    assert_eq!(ids(&plan), ["only"]);
    assert!((plan.standby[0].mbps - 5.0).abs() < 1e-9);
    assert!(!plan.survives_one_loss);
    assert!(
        plan.notes
            .iter()
            .any(|n| n.contains("lack the spare egress")),
        "{plan:?}"
    );
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
            standby_held_mbps: 0.0,
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
        // Shares and standby together stay within each cache's spare, in
        // at most eight caches, at most target / min_sources each unless
        // the plan says capacity is short.
        for s in &p.sources {
            let c = caches.iter().find(|c| c.node_id == s.node_id).unwrap();
            prop_assert!(s.standby_mbps >= 0.0);
            prop_assert!(s.mbps + s.standby_mbps <= c.spare_mbps + 1e-9);
            prop_assert!(s.mbps <= target / f64::from(min_sources) + 1e-9
                || p.notes.iter().any(|n| n.contains("capacity is short")));
        }
        for s in &p.standby {
            let c = caches.iter().find(|c| c.node_id == s.node_id).unwrap();
            prop_assert!(s.mbps > 0.0 && s.mbps <= c.spare_mbps + 1e-9);
            prop_assert!(!p.sources.iter().any(|x| x.node_id == s.node_id));
        }
        prop_assert!(p.sources.len() + p.standby.len() <= SOURCES_MAX as usize);
        // "Survives one loss" is true exactly when it holds: for every
        // source, the others' shares and standby carry the bitrate.
        let all: f64 = p.sources.iter().map(|s| s.mbps + s.standby_mbps).sum::<f64>()
            + p.standby.iter().map(|s| s.mbps).sum::<f64>();
        let holds = !p.sources.is_empty() && p.sources.iter()
            .all(|s| all - s.mbps - s.standby_mbps >= bitrate * (1.0 - 1e-6));
        prop_assert_eq!(p.survives_one_loss, holds);
        // Two caches that could each carry the target and the bitrate, and
        // room in the plan for two more: it survives a loss.
        let big = caches.iter().filter(|c| c.spare_mbps >= target + bitrate).count();
        if big >= 2 && p.shortfall_mbps == 0.0 && p.sources.len() <= SOURCES_MAX as usize - 2 {
            prop_assert!(p.survives_one_loss, "{:?}", p);
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
