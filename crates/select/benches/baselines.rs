//! A small deterministic simulation: shoal's planner against the baselines
//! a traditional CDN uses, on the same request stream and the same caches.
//! `cargo bench -p shoal-select --bench baselines`
//!
//! World: 4 regions × 6 caches (1 Gbit/s each, regional egress prices),
//! 8 client zones (2 per region, near their region, far from the others),
//! 400 objects of 1-8 GB with Zipf(0.9) popularity, sessions at 8 Mbit/s
//! (headroom 1.25) arriving so that the mesh runs at ~70 % of capacity.
//! Caches store pieces, not whole objects: each keeps 135 GB (about 30
//! average objects) of the objects it served most recently (LRU), and of
//! each object only the part it served. A source of a multi-source plan
//! serves its stripe of the pieces (clients stripe pieces over a plan's
//! sources by a stable rule, so the same caches get the same pieces), and
//! stores that stripe; bytes it lacks are filled at the sibling/origin
//! price when served.
//!
//! Policies: shoal (`plan()`: shares over at least 2 sources with standby
//! so one loss keeps the bitrate, a fill charged over 4 sessions, the
//! selector's default; `r=1` charges each fill to the session that causes
//! it; `k=1`, `k=3`: min_sources 1 and 3); nearest
//! (the least loaded cache of the zone's nearest region); hashing (the
//! object's rendezvous-first cache within the nearest region); random (any
//! cache). Reported: cost per GB delivered, share of sessions whose plan
//! carries the committed bitrate, byte hit ratio (bytes from caches that
//! already held the object), and share of sessions whose plan keeps the
//! bitrate after losing any one source (standby counted; the simulation
//! does not fail caches, so this is what the plans promise).

mod common;

use shoal_core::{rendezvous, ObjectId};
use shoal_select::{plan, Candidate, Request};
use std::collections::VecDeque;

const REGIONS: usize = 4;
const CACHES_PER_REGION: usize = 6;
const CACHE_MBPS: f64 = 1000.0;
const ZONES: usize = 8;
const OBJECTS: usize = 400;
const HELD_GB: f64 = 135.0;
const BITRATE: f64 = 8.0;
const HEADROOM: f64 = 1.25;
const SESSIONS: usize = 40_000;
const FILL_USD_PER_GB: f64 = 0.02;

use common::{lp_optimum, Rng};

#[derive(Clone, Copy, PartialEq)]
enum Policy {
    Shoal,
    Nearest,
    Hashing,
    Random,
}

struct Cache {
    name: String,
    region: usize,
    egress_usd_per_gb: f64,
    /// Sessions in progress: (end time, Mbit/s).
    active: Vec<(f64, f64)>,
    /// (object, fraction of it stored), most recently used first.
    held: VecDeque<(usize, f64)>,
}

impl Cache {
    fn held_fraction(&self, object: usize) -> f64 {
        self.held
            .iter()
            .find(|(o, _)| *o == object)
            .map_or(0.0, |(_, f)| *f)
    }

    /// Serving `fraction` of `object` leaves at least that much stored;
    /// the least recently used go when the disk is full.
    fn store(&mut self, object: usize, fraction: f64, sizes_gb: &[f64]) {
        let now_held = self.held_fraction(object).max(fraction).min(1.0);
        self.held.retain(|(o, _)| *o != object);
        self.held.push_front((object, now_held));
        let mut used: f64 = self.held.iter().map(|(o, f)| f * sizes_gb[*o]).sum();
        while used > HELD_GB {
            let Some((o, f)) = self.held.pop_back() else {
                break;
            };
            used -= f * sizes_gb[o];
        }
    }
}

impl Cache {
    fn spare(&self, now: f64) -> f64 {
        CACHE_MBPS
            - self
                .active
                .iter()
                .filter(|(end, _)| *end > now)
                .map(|(_, m)| m)
                .sum::<f64>()
    }
}

fn zone_region(zone: usize) -> usize {
    zone / 2
}

/// (rtt ms, transit $/GB) from a zone to a region.
fn reach(zone: usize, region: usize) -> (f64, f64) {
    if zone_region(zone) == region {
        (10.0 + 5.0 * (zone % 2) as f64, 0.0)
    } else {
        (
            80.0 + 40.0 * ((zone + region) % 3) as f64,
            0.01 + 0.005 * ((zone + region) % 2) as f64,
        )
    }
}

struct Outcome {
    cost_usd: f64,
    gb: f64,
    met: usize,
    hit_gb: f64,
    egress_usd: f64,
    distance_usd: f64,
    fill_usd: f64,
    sources: usize,
    /// Sessions whose plan keeps the bitrate after losing any one source
    /// (other policies: one cache, so none).
    survived: usize,
}

fn run(policy: Policy, fill_reuse: f64, min_sources: u32) -> Outcome {
    let mut rng = Rng(0xba5e11e5);
    let prices = [0.008, 0.010, 0.006, 0.020];
    let mut caches: Vec<Cache> = (0..REGIONS * CACHES_PER_REGION)
        .map(|i| Cache {
            name: format!("r{}c{}", i / CACHES_PER_REGION, i % CACHES_PER_REGION),
            region: i / CACHES_PER_REGION,
            egress_usd_per_gb: prices[i / CACHES_PER_REGION],
            active: Vec::new(),
            held: VecDeque::new(),
        })
        .collect();
    // Zipf(0.9) popularity.
    let weights: Vec<f64> = (1..=OBJECTS).map(|k| 1.0 / (k as f64).powf(0.9)).collect();
    let total_weight: f64 = weights.iter().sum();
    let sizes_gb: Vec<f64> = (0..OBJECTS)
        .map(|i| 1.0 + 7.0 * ((i * 7919) % 100) as f64 / 100.0)
        .collect();
    // Arrivals keep ~70 % of the mesh busy with sessions of ~mean length.
    let session_s = 600.0;
    let capacity = (REGIONS * CACHES_PER_REGION) as f64 * CACHE_MBPS;
    let rate_per_s = 0.7 * capacity / (BITRATE * HEADROOM) / session_s;
    let mut now = 0.0;
    let mut out = Outcome {
        cost_usd: 0.0,
        gb: 0.0,
        met: 0,
        hit_gb: 0.0,
        egress_usd: 0.0,
        distance_usd: 0.0,
        fill_usd: 0.0,
        sources: 0,
        survived: 0,
    };
    for _ in 0..SESSIONS {
        now += -rng.unit().max(1e-12).ln() / rate_per_s;
        for cache in &mut caches {
            cache.active.retain(|(end, _)| *end > now);
        }
        let zone = (rng.next() % ZONES as u64) as usize;
        let mut pick = rng.unit() * total_weight;
        let mut object = 0;
        while object + 1 < OBJECTS && pick > weights[object] {
            pick -= weights[object];
            object += 1;
        }
        let duration = session_s * (0.2 + 1.6 * rng.unit());
        let id = ObjectId(*blake3_like(object));
        let near = zone_region(zone);
        let request = Request {
            object: id,
            bitrate_mbps: BITRATE,
            headroom: HEADROOM,
            min_sources,
            survive_one_loss: true,
            latency_usd_per_gb_per_ms: 0.00005,
            affinity_band: 0.02,
            fill_reuse_sessions: fill_reuse,
        };
        let candidate = |c: &Cache| {
            let (rtt, transit) = reach(zone, c.region);
            Candidate {
                node_id: c.name.clone(),
                spare_mbps: c.spare(now),
                egress_usd_per_gb: c.egress_usd_per_gb,
                fill_usd_per_gb: FILL_USD_PER_GB,
                held_fraction: c.held_fraction(object),
                transit_usd_per_gb: transit,
                rtt_ms: rtt,
                standby_held_mbps: 0.0,
            }
        };
        let target = BITRATE * HEADROOM;
        let shares: Vec<(usize, f64)> = match policy {
            Policy::Shoal => {
                let candidates: Vec<Candidate> = caches.iter().map(candidate).collect();
                let p = plan(&request, &candidates).expect("valid");
                if p.survives_one_loss {
                    out.survived += 1;
                }
                p.sources
                    .iter()
                    .map(|s| {
                        (
                            caches.iter().position(|c| c.name == s.node_id).unwrap_or(0),
                            s.mbps,
                        )
                    })
                    .collect()
            }
            Policy::Nearest => {
                let best = (0..caches.len())
                    .filter(|&i| caches[i].region == near)
                    .max_by(|&a, &b| caches[a].spare(now).total_cmp(&caches[b].spare(now)));
                best.map(|i| vec![(i, caches[i].spare(now).clamp(0.0, target))])
                    .unwrap_or_default()
            }
            Policy::Hashing => {
                let names: Vec<&str> = caches
                    .iter()
                    .filter(|c| c.region == near)
                    .map(|c| c.name.as_str())
                    .collect();
                let first = rendezvous::first(&id, &names).map(|n| n.to_string());
                let i = caches
                    .iter()
                    .position(|c| Some(&c.name) == first.as_ref())
                    .unwrap_or(0);
                vec![(i, caches[i].spare(now).clamp(0.0, target))]
            }
            Policy::Random => {
                let i = (rng.next() % caches.len() as u64) as usize;
                vec![(i, caches[i].spare(now).clamp(0.0, target))]
            }
        };
        let planned: f64 = shares.iter().map(|(_, m)| m).sum();
        if planned >= BITRATE - 1e-9 {
            out.met += 1;
        }
        // Bytes delivered: the object's size, split by share (what is not
        // carried is not delivered).
        let delivered_gb = sizes_gb[object] * (planned.min(BITRATE) / BITRATE);
        for (i, mbps) in &shares {
            if *mbps <= 0.0 || planned <= 0.0 {
                continue;
            }
            // This source's stripe: its share of the object's bytes.
            let stripe = mbps / planned;
            let part = delivered_gb * stripe;
            let c = candidate(&caches[*i]);
            // Of its stripe, what it already stores is a hit; the rest is
            // filled (sibling/origin price) as it is served.
            let hit_share = (c.held_fraction / stripe).min(1.0);
            let egress = part * c.egress_usd_per_gb;
            let distance =
                part * (c.transit_usd_per_gb + request.latency_usd_per_gb_per_ms * c.rtt_ms);
            let fill = part * (1.0 - hit_share) * c.fill_usd_per_gb;
            out.cost_usd += egress + distance + fill;
            out.egress_usd += egress;
            out.distance_usd += distance;
            out.fill_usd += fill;
            out.sources += 1;
            out.gb += part;
            out.hit_gb += part * hit_share;
            let cache = &mut caches[*i];
            cache.active.push((now + duration, *mbps));
            cache.store(object, stripe, &sizes_gb);
        }
    }
    out
}

/// A stable id per object index (no hashing crate needed here).
fn blake3_like(object: usize) -> &'static [u8; 32] {
    let mut bytes = [0u8; 32];
    let mut x = (object as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for chunk in bytes.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes());
    }
    Box::leak(Box::new(bytes))
}

/// The named case of issue 11: four caches with 4,000 Mbit/s spare, two
/// at $0.01/GB egress and two at $0.20/GB, none holding the object (each
/// fills from the origin at $0.05/GB, charged over 4 sessions); the
/// default service (8 Mbit/s committed × 1.5, at least 2 sources).
fn cheap_and_dear() {
    let candidates: Vec<Candidate> = [
        ("cheap1", 0.01),
        ("cheap2", 0.01),
        ("dear1", 0.20),
        ("dear2", 0.20),
    ]
    .iter()
    .map(|(name, egress)| Candidate {
        node_id: name.to_string(),
        spare_mbps: 4000.0,
        egress_usd_per_gb: *egress,
        fill_usd_per_gb: 0.05,
        held_fraction: 0.0,
        transit_usd_per_gb: 0.0,
        rtt_ms: 0.0,
        standby_held_mbps: 0.0,
    })
    .collect();
    let request = Request {
        object: ObjectId([7; 32]),
        bitrate_mbps: 8.0,
        headroom: 1.5,
        min_sources: 2,
        survive_one_loss: true,
        latency_usd_per_gb_per_ms: 0.0001,
        affinity_band: 0.02,
        fill_reuse_sessions: 4.0,
    };
    let p = plan(&request, &candidates).expect("valid");
    let shares: Vec<String> = p
        .sources
        .iter()
        .map(|s| {
            format!(
                "{} {:.1} Mbit/s (+{:.1} standby)",
                s.node_id, s.mbps, s.standby_mbps
            )
        })
        .chain(
            p.standby
                .iter()
                .map(|s| format!("{} standby {:.1} Mbit/s", s.node_id, s.mbps)),
        )
        .collect();
    let optimum = lp_optimum(&request, &candidates, true).expect("feasible") / p.planned_mbps;
    println!(
        "named case: 2 caches at $0.01/GB + 2 at $0.20/GB, 4000 Mbit/s spare each, none holding the object, 8 Mbit/s x1.5, min 2 sources"
    );
    println!(
        "  plan ${:.4}/GB from {}; survives one loss: {}; LP optimum ${optimum:.4}/GB ({:.3}x)",
        p.usd_per_gb,
        shares.join(", "),
        p.survives_one_loss,
        p.usd_per_gb / optimum
    );
}

fn main() {
    cheap_and_dear();
    println!("selection policies, {SESSIONS} sessions at {BITRATE} Mbit/s x{HEADROOM} over {} caches, load ~70 %", REGIONS * CACHES_PER_REGION);
    println!(
        "{:<10} {:>9} {:>12} {:>14} {:>7} {:>7} {:>7} {:>8} {:>9}",
        "policy",
        "$ per GB",
        "bitrate met",
        "byte hit ratio",
        "egress",
        "dist.",
        "fill",
        "sources",
        "survives"
    );
    let mut shoal_cost = 0.0;
    for (name, policy, fill_reuse, min_sources) in [
        ("shoal", Policy::Shoal, 4.0, 2),
        ("shoal r=1", Policy::Shoal, 1.0, 2),
        ("shoal k=1", Policy::Shoal, 4.0, 1),
        ("shoal k=3", Policy::Shoal, 4.0, 3),
        ("nearest", Policy::Nearest, 1.0, 1),
        ("hashing", Policy::Hashing, 1.0, 1),
        ("random", Policy::Random, 1.0, 1),
    ] {
        let o = run(policy, fill_reuse, min_sources);
        let cost = o.cost_usd / o.gb.max(1e-9);
        if name == "shoal" {
            shoal_cost = cost;
        }
        let per_gb = |usd: f64| usd / o.gb.max(1e-9);
        println!(
            "{name:<10} {cost:>9.5} {:>11.2}% {:>14.3} {:>7.4} {:>7.4} {:>7.4} {:>8.2} {:>8.2}%   (cost {:.2}x shoal's)",
            100.0 * o.met as f64 / SESSIONS as f64,
            o.hit_gb / o.gb.max(1e-9),
            per_gb(o.egress_usd),
            per_gb(o.distance_usd),
            per_gb(o.fill_usd),
            o.sources as f64 / SESSIONS as f64,
            100.0 * o.survived as f64 / SESSIONS as f64,
            cost / shoal_cost.max(1e-12)
        );
    }
}
