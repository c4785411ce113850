//! The decision on hand-made meshes: who is left out and why, degraded
//! caches only as a last resort, holders preferred, origin fallback.

use super::*;
use shoal_mesh::{MeshView, ObjectSummary};

fn member(id: &str, port: u16, region: &str, cost_microusd: u64) -> Member {
    Member {
        node_id: id.into(),
        http_addr: format!("127.0.0.1:{port}").parse().unwrap(),
        https_authority: None,
        region: region.into(),
        egress_cap_bps: 1_000_000_000,
        egress_bps: 0,
        cost_per_gb_microusd: cost_microusd,
        health: Health::Ok,
        summary: None::<std::sync::Arc<ObjectSummary>>,
        purge_head: None,
        generation: 0,
        traffic: None,
    }
}

fn service() -> DeliveryService {
    DeliveryService {
        name: "video".into(),
        bitrate_mbps: 100.0,
        headroom: 1.5,
        min_sources: 2,
        origin: Some("http://127.0.0.1:9999".into()),
        ..DeliveryService::default()
    }
}

fn settings() -> PlanSettings {
    PlanSettings {
        latency_usd_per_gb_per_ms: 0.0001,
        affinity_band: 0.02,
        fill_reuse_sessions: 4.0,
        uncapped_cache_mbps: 10_000.0,
    }
}

fn near_and_far(region: &str) -> Option<Reach> {
    match region {
        "eu" => Some(Reach {
            rtt_ms: 10.0,
            transit_usd_per_gb: 0.0,
        }),
        "us" => Some(Reach {
            rtt_ms: 90.0,
            transit_usd_per_gb: 0.01,
        }),
        _ => None,
    }
}

fn run(
    members: &[Member],
    held: &HashMap<String, f64>,
    exclude: &[String],
    service: &DeliveryService,
) -> Decision {
    run_reserved(members, held, exclude, service, &HashMap::new())
}

fn run_reserved(
    members: &[Member],
    held: &HashMap<String, f64>,
    exclude: &[String],
    service: &DeliveryService,
    reserved: &HashMap<String, f64>,
) -> Decision {
    run_over(members, held, exclude, service, reserved, false)
}

/// A decision for a client that asked over HTTPS (`https`) or not.
fn run_over(
    members: &[Member],
    held: &HashMap<String, f64>,
    exclude: &[String],
    service: &DeliveryService,
    reserved: &HashMap<String, f64>,
    https: bool,
) -> Decision {
    let object = ObjectFacts {
        id: Some("ab".repeat(32)),
        size_bytes: Some(2_000_000_000),
        cacheable: true,
    };
    let settings = settings();
    decide(&Inputs {
        service,
        uri_path_and_query: "/video/a.mp4",
        affinity_key: ObjectId([7; 32]),
        object: &object,
        members,
        held,
        zone: "eu-clients",
        reach: &near_and_far,
        exclude,
        https,
        reserved_mbps: reserved,
        standby_reserved_mbps: &HashMap::new(),
        unresponsive: &[],
        settings: &settings,
    })
    .unwrap()
}

#[test]
fn a_client_over_https_is_sent_only_to_caches_that_serve_https() {
    let mut members = vec![
        member("plain", 1001, "eu", 1_000),
        member("secure", 1002, "eu", 20_000),
        member("secure2", 1003, "eu", 30_000),
    ];
    members[1].https_authority = Some("127.0.0.9:8443".into());
    members[2].https_authority = Some("cache-2.example.com:443".into());
    let service = service();
    let none = HashMap::new();
    let plain = run_over(&members, &none, &[], &service, &none, false);
    assert!(plain.sources.iter().all(|s| s.url.starts_with("http://")));
    assert!(
        plain.sources.iter().any(|s| s.node == "plain"),
        "the cheaper one"
    );
    let secure = run_over(&members, &none, &[], &service, &none, true);
    let urls: Vec<&str> = secure.sources.iter().map(|s| s.url.as_str()).collect();
    assert_eq!(urls.len(), 2, "{urls:?}");
    assert!(
        urls.contains(
            &format!(
                "https://127.0.0.9:8443/video/a.mp4?shoal-object={}",
                "ab".repeat(32)
            )
            .as_str()
        ),
        "{urls:?}"
    );
    assert!(urls.iter().all(|u| u.starts_with("https://")), "{urls:?}");
    assert!(
        secure
            .left_out
            .iter()
            .any(|l| l.node == "plain" && l.why.contains("HTTPS")),
        "{:?}",
        secure.left_out
    );
    // With no HTTPS cache left, a plain-HTTP origin is no fallback.
    let plain_only = &members[..1];
    let stranded = run_over(plain_only, &none, &[], &service, &none, true);
    assert!(stranded.sources.is_empty());
    assert_eq!(stranded.origin_fallback, None, "{stranded:?}");
    assert!(stranded.reasons.iter().any(|r| r.contains("plain HTTP")));
    let over_http = run_over(plain_only, &none, &[], &service, &none, false);
    assert!(!over_http.sources.is_empty());
}

#[test]
fn near_cheap_holders_are_chosen_with_urls_and_shares() {
    let members = vec![
        member("eu1", 1001, "eu", 10_000),
        member("eu2", 1002, "eu", 10_000),
        member("eu3", 1003, "eu", 10_000),
        member("us1", 2001, "us", 5_000),
        member("ap1", 3001, "ap", 1_000),
    ];
    let held: HashMap<String, f64> = [("eu2".to_string(), 1.0), ("eu3".to_string(), 1.0)].into();
    let decision = run(&members, &held, &[], &service());
    let nodes: Vec<&str> = decision.sources.iter().map(|s| s.node.as_str()).collect();
    // 150 Mbit/s target from at least 2 sources: the two eu holders at 75
    // each; either raises its output by 25 should the other fail.
    assert_eq!(nodes.len(), 2, "{decision:?}");
    assert!(nodes.contains(&"eu2") && nodes.contains(&"eu3"));
    assert!(decision
        .sources
        .iter()
        .all(|s| (s.mbps - 75.0).abs() < 1e-9 && (s.standby_mbps - 25.0).abs() < 1e-9));
    assert!(decision.standby.is_empty());
    assert!(decision.bitrate_met && decision.survives_one_loss);
    assert!((decision.predicted_mbps - 150.0).abs() < 1e-6);
    let total: f64 = decision.sources.iter().map(|s| s.share).sum();
    assert!((total - 1.0).abs() < 1e-9);
    assert_eq!(decision.sources[0].url.split(':').count(), 3);
    // Every source names the version it must serve.
    assert!(
        decision.sources.iter().all(|s| s
            .url
            .ends_with(&format!("/video/a.mp4?shoal-object={}", "ab".repeat(32)))),
        "{decision:?}"
    );
    // ap is not reachable from the zone: never planned, and said why.
    assert!(decision
        .left_out
        .iter()
        .any(|l| l.node == "ap1" && l.why.contains("not reachable")));
    assert!(decision.expected_usd.unwrap() > 0.0);
    let text = explain(&decision, "/video/a.mp4");
    assert!(text.contains("eu2") && text.contains("not chosen") && text.contains("ap1"));
}

#[test]
fn excluded_draining_and_full_caches_are_left_out_with_a_reason() {
    let mut members = vec![
        member("a", 1, "eu", 10_000),
        member("b", 2, "eu", 10_000),
        member("c", 3, "eu", 10_000),
        member("d", 4, "eu", 10_000),
        member("e", 5, "eu", 10_000),
    ];
    members[1].health = Health::Draining;
    members[2].egress_bps = members[2].egress_cap_bps;
    let decision = run(&members, &HashMap::new(), &["a".to_string()], &service());
    let why = |node: &str| {
        decision
            .left_out
            .iter()
            .find(|l| l.node == node)
            .map(|l| l.why.clone())
            .unwrap_or_default()
    };
    assert!(why("a").contains("reported degraded"));
    assert_eq!(why("b"), "draining");
    assert!(why("c").contains("no spare"));
    let nodes: Vec<&str> = decision.sources.iter().map(|s| s.node.as_str()).collect();
    assert_eq!(nodes.len(), 2);
    assert!(nodes.contains(&"d") && nodes.contains(&"e"));
    assert!(decision.bitrate_met && decision.survives_one_loss);
}

#[test]
fn cheap_caches_without_room_bring_in_a_standby_that_is_not_billed() {
    let mut members = vec![
        member("eu1", 1001, "eu", 10_000),
        member("eu2", 1002, "eu", 10_000),
        member("eu3", 1003, "eu", 10_000),
        member("us1", 2001, "us", 5_000),
    ];
    // The eu caches have 80 Mbit/s left: 75 of share and 5 to spare.
    for m in &mut members[..3] {
        m.egress_bps = m.egress_cap_bps - 80_000_000;
    }
    let held: HashMap<String, f64> = [("eu2".to_string(), 1.0), ("eu3".to_string(), 1.0)].into();
    let decision = run(&members, &held, &[], &service());
    let mut nodes: Vec<&str> = decision.sources.iter().map(|s| s.node.as_str()).collect();
    nodes.sort();
    assert_eq!(nodes, ["eu2", "eu3"], "{decision:?}");
    // Losing either leaves 75 + the other's 5: eu1, the cheapest other,
    // stands by with the missing 20, not billed.
    let standby: Vec<(&str, f64)> = decision
        .standby
        .iter()
        .map(|s| (s.node.as_str(), s.mbps))
        .collect();
    assert_eq!(standby.len(), 1, "{decision:?}");
    assert_eq!(standby[0].0, "eu1");
    assert!((standby[0].1 - 20.0).abs() < 1e-9, "{standby:?}");
    assert!(decision.standby[0].url.contains("shoal-object="));
    assert!(decision.survives_one_loss);
    assert!((decision.usd_per_gb - 0.011).abs() < 1e-9, "{decision:?}");
    assert!(decision.left_out.iter().all(|l| l.node != "eu1"));
    assert!(decision
        .reasons
        .iter()
        .any(|r| r.contains("eu1 brought on stream")));
    let text = explain(&decision, "/video/a.mp4");
    assert!(text.contains("standby, should a source fail"), "{text}");
    // Without survival asked for, no standby.
    let fragile = DeliveryService {
        survive_one_loss: false,
        ..service()
    };
    let decision = run(&members, &held, &[], &fragile);
    assert!(decision.standby.is_empty() && decision.standby_mbps == 0.0);
    assert!(!decision.survives_one_loss);
}

#[test]
fn degraded_caches_only_when_the_healthy_ones_fall_short() {
    let mut members = vec![
        member("ok1", 1, "eu", 10_000),
        member("ok2", 2, "eu", 10_000),
        member("ok3", 3, "eu", 10_000),
        member("sick", 4, "eu", 1_000),
    ];
    members[3].health = Health::Degraded;
    let decision = run(&members, &HashMap::new(), &[], &service());
    assert!(decision.sources.iter().all(|s| s.node != "sick"));
    assert!(decision
        .left_out
        .iter()
        .any(|l| l.node == "sick" && l.why.contains("degraded")));
    // Now the healthy ones are nearly full.
    for m in &mut members[..3] {
        m.egress_bps = m.egress_cap_bps - 20_000_000;
    }
    let decision = run(&members, &HashMap::new(), &[], &service());
    assert!(decision.sources.iter().any(|s| s.node == "sick"));
    assert!(decision.reasons.iter().any(|r| r.contains("degraded")));
}

#[test]
fn no_cache_sends_the_client_to_the_origin_or_says_it_cannot() {
    let decision = run(&[], &HashMap::new(), &[], &service());
    assert!(decision.sources.is_empty());
    assert_eq!(
        decision.origin_fallback.as_deref(),
        Some("http://127.0.0.1:9999/video/a.mp4")
    );
    assert_eq!(decision.urls(), ["http://127.0.0.1:9999/video/a.mp4"]);
    assert!(!decision.bitrate_met);
    let strict = DeliveryService {
        origin_fallback: false,
        ..service()
    };
    let decision = run(&[], &HashMap::new(), &[], &strict);
    assert!(decision.urls().is_empty());
    assert!(decision
        .reasons
        .iter()
        .any(|r| r.contains("fallback is off")));
}

#[test]
fn a_far_cheap_holder_loses_to_near_caches_when_transit_and_latency_cost_more() {
    let members = vec![
        member("eu1", 1, "eu", 10_000),
        member("eu2", 2, "eu", 10_000),
        member("eu3", 3, "eu", 10_000),
        member("us1", 4, "us", 9_000),
    ];
    // Everyone holds it: us1 is cheaper at egress but pays 0.01 transit
    // and 90 ms x 0.0001.
    let held: HashMap<String, f64> = members.iter().map(|m| (m.node_id.clone(), 1.0)).collect();
    let decision = run(&members, &held, &[], &service());
    assert!(
        decision.sources.iter().all(|s| s.region == "eu"),
        "{decision:?}"
    );
}

#[test]
fn members_of_a_view_are_the_only_candidates() {
    // A cache that left the gossip is not in the view, so never planned.
    let view = MeshView::new(
        "sel".into(),
        vec![member("x", 1, "eu", 1), member("y", 2, "eu", 1)],
        0,
    );
    let decision = run(&view.members, &HashMap::new(), &[], &service());
    assert!(decision
        .sources
        .iter()
        .all(|s| s.node == "x" || s.node == "y"));
}

#[test]
fn rate_planned_recently_counts_against_a_cache_until_gossip_shows_it() {
    let members = vec![
        member("cheap1", 1, "eu", 1_000),
        member("cheap2", 2, "eu", 1_000),
        member("cheap3", 3, "eu", 1_000),
        member("dear1", 4, "eu", 9_000),
        member("dear2", 5, "eu", 9_000),
        member("dear3", 6, "eu", 9_000),
    ];
    let mut members = members;
    for m in &mut members[..3] {
        // 60 Mbit/s spare each, as gossiped.
        m.egress_bps = m.egress_cap_bps - 60_000_000;
    }
    let first = run(&members, &HashMap::new(), &[], &service());
    assert!(first.sources.iter().all(|s| s.node.starts_with("cheap")));
    // This selector just planned a burst on them; gossip does not show it
    // yet. Reservations count for at most 3/4 of the gossiped spare.
    let reserved: HashMap<String, f64> = ["cheap1", "cheap2", "cheap3"]
        .iter()
        .map(|n| (n.to_string(), 1_000.0))
        .collect();
    let next = run_reserved(&members, &HashMap::new(), &[], &service(), &reserved);
    assert!(
        next.sources.iter().any(|s| s.node.starts_with("dear")),
        "{next:?}"
    );
    for source in next.sources.iter().filter(|s| s.node.starts_with("cheap")) {
        assert!(source.mbps <= 15.0 + 1e-9, "{source:?}");
    }
    assert!(next.bitrate_met);
}

#[test]
fn caches_left_out_while_capacity_is_short_are_not_called_unneeded() {
    // Ten caches with 10 Mbit/s spare each for a 150 Mbit/s target: eight
    // sources (the most a client blends) carry 80, two are left out.
    let members: Vec<Member> = (0..10)
        .map(|i| {
            let mut m = member(&format!("c{i}"), 3000 + i, "eu", 10_000);
            m.egress_cap_bps = 10_000_000;
            m
        })
        .collect();
    let decision = run(&members, &HashMap::new(), &[], &service());
    assert_eq!(decision.sources.len(), 8, "{decision:?}");
    assert!(decision.shortfall_mbps > 0.0);
    let unused: Vec<&LeftOut> = decision
        .left_out
        .iter()
        .filter(|l| l.why.starts_with("not"))
        .collect();
    assert_eq!(unused.len(), 2, "{decision:?}");
    for left in unused {
        assert!(
            left.why.starts_with("not used") && left.why.contains("8 sources"),
            "{}",
            left.why
        );
    }
}

#[test]
fn saturated_caches_serve_best_effort_unless_the_service_refuses() {
    // Every cache at its cap.
    let members: Vec<Member> = [
        ("eu1", 3001, 10_000),
        ("eu2", 3002, 20_000),
        ("eu3", 3003, 5_000),
    ]
    .iter()
    .map(|(id, port, cost)| {
        let mut m = member(id, *port, "eu", *cost);
        m.egress_bps = m.egress_cap_bps;
        m
    })
    .collect();
    let decision = run(&members, &HashMap::new(), &[], &service());
    assert!(!decision.sources.is_empty(), "{decision:?}");
    assert_eq!(decision.sources[0].node, "eu3", "the cheapest first");
    assert_eq!(decision.predicted_mbps, 0.0);
    assert_eq!(decision.shortfall_mbps, decision.target_mbps);
    assert!(!decision.bitrate_met);
    assert!(decision.origin_fallback.is_none());
    assert!(decision.reasons.iter().any(|r| r.contains("best effort")));
    assert!(decision
        .sources
        .iter()
        .all(|s| s.why.contains("egress cap")));
    // A service that would rather refuse (or send clients to its origin).
    let refusing = DeliveryService {
        when_saturated: crate::config::WhenSaturated::Refuse,
        ..service()
    };
    let decision = run(&members, &HashMap::new(), &[], &refusing);
    assert!(decision.sources.is_empty());
    assert!(decision.origin_fallback.is_some());
    assert_eq!(decision.left_out.len(), 3);
}
