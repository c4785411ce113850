//! How long the selector's whole decision takes at 1,000 caches: building
//! candidates from a gossip snapshot (zones, health, holders, fill prices),
//! planning, and writing the reasons — everything a `/plan` does besides
//! the (cached) object lookup. Side by side with `plan()` alone.
//! `cargo bench -p shoal-selector --bench decide`

use shoal_core::ObjectId;
use shoal_mesh::{Health, Member};
use shoal_select::zones::Reach;
use shoal_selector::decide::{decide, Inputs, ObjectFacts, PlanSettings};
use shoal_selector::DeliveryService;
use std::collections::HashMap;
use std::time::Instant;

const CACHES: usize = 1_000;
const REGIONS: usize = 8;
const CALLS: usize = 2_000;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let mut x: u64 = 0x5e1ec7;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let members: Vec<Member> = (0..CACHES)
        .map(|i| Member {
            node_id: format!("cache-{i}"),
            http_addr: format!("127.0.0.1:{}", 10_000 + i).parse().unwrap(),
            https_authority: None,
            region: format!("r{}", i % REGIONS),
            egress_cap_bps: 10_000_000_000,
            egress_bps: next() % 9_000_000_000,
            cost_per_gb_microusd: 2_000 + next() % 20_000,
            health: if i % 50 == 0 {
                Health::Degraded
            } else {
                Health::Ok
            },
            summary: None,
            purge_head: None,
            generation: 0,
            traffic: None,
        })
        .collect();
    let service = DeliveryService {
        name: "video".into(),
        bitrate_mbps: 25.0,
        headroom: 1.5,
        ..DeliveryService::default()
    };
    let settings = PlanSettings {
        latency_usd_per_gb_per_ms: 0.0001,
        affinity_band: 0.02,
        uncapped_cache_mbps: 10_000.0,
        fill_reuse_sessions: 4.0,
    };
    let reach = |region: &str| {
        let r: usize = region[1..].parse().unwrap_or(0);
        (r != 7).then_some(Reach {
            rtt_ms: 5.0 + 20.0 * r as f64,
            transit_usd_per_gb: 0.002 * r as f64,
        })
    };
    let object = ObjectFacts {
        id: Some("ab".repeat(32)),
        size_bytes: Some(4_000_000_000),
        cacheable: true,
    };
    let mut times_us = Vec::with_capacity(CALLS);
    for call in 0..CALLS {
        let held: HashMap<String, f64> = (0..16)
            .map(|k| (format!("cache-{}", (call * 7 + k * 61) % CACHES), 1.0))
            .collect();
        let mut id = [0u8; 32];
        id[..8].copy_from_slice(&(call as u64).to_le_bytes());
        let started = Instant::now();
        let decision = decide(&Inputs {
            service: &service,
            uri_path_and_query: "/video/film.mp4",
            affinity_key: ObjectId(id),
            object: &object,
            members: &members,
            held: &held,
            zone: "z",
            reach: &reach,
            exclude: &[],
            https: false,
            reserved_mbps: &HashMap::new(),
            standby_reserved_mbps: &HashMap::new(),
            unresponsive: &[],
            settings: &settings,
        })
        .expect("valid");
        times_us.push(started.elapsed().as_secs_f64() * 1e6);
        assert!(decision.bitrate_met);
    }
    times_us.sort_by(f64::total_cmp);
    println!(
        "selector decision at {CACHES} caches ({CALLS} calls): p50 {:.0} us, p99 {:.0} us, max {:.0} us (target p99 < 1000 us)",
        percentile(&times_us, 0.5),
        percentile(&times_us, 0.99),
        times_us[times_us.len() - 1]
    );
}
