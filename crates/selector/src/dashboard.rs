//! The selector's live dashboard: `GET /dashboard` is one self-contained
//! page (no outside scripts, fonts or images) that polls
//! `GET /_shoal/dashboard` for JSON every couple of seconds and draws it.
//!
//! A sampler task records the fleet every `dashboard.sample_ms` into a
//! bounded [`History`]. Rates are differences between consecutive
//! samples, computed here by pure functions of the samples (no clock, no
//! I/O), so tests drive the same code the page shows. Polling rather than
//! a stream: it passes any proxy, and an open dashboard never holds a
//! drain open.

use serde::Serialize;
use shoal_mesh::{Health, Member, Traffic};
use std::collections::{BTreeMap, VecDeque};

/// The page, served as is.
pub const PAGE_HTML: &str = include_str!("dashboard.html");

/// The page's `Content-Security-Policy`: nothing from elsewhere, requests
/// only to this selector, and of scripts only the page's own (allowed by
/// its SHA-256, so an injected one would not run).
pub fn page_policy() -> &'static str {
    static POLICY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    POLICY.get_or_init(|| {
        use base64::Engine as _;
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(inline_script(PAGE_HTML).as_bytes());
        format!(
            "default-src 'none'; script-src 'sha256-{}'; style-src 'unsafe-inline'; \
             connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            base64::engine::general_purpose::STANDARD.encode(digest)
        )
    })
}

/// The text of the page's one `<script>` element.
fn inline_script(page: &str) -> &str {
    page.split_once("<script>")
        .and_then(|(_, rest)| rest.split_once("</script>"))
        .map_or("", |(script, _)| script)
}

/// Most samples kept (a day at one a second; bounded whatever the
/// settings say).
pub const HISTORY_POINTS_MAX: usize = 86_400;

/// One cache as the gossip showed it at a sample.
#[derive(Clone, Debug, PartialEq)]
pub struct CacheSample {
    pub node_id: String,
    /// Its process's generation: counters start again when it changes.
    pub generation: u64,
    pub region: String,
    pub egress_bps: u64,
    pub egress_cap_bps: u64,
    pub traffic: Option<Traffic>,
}

impl CacheSample {
    pub fn of(member: &Member) -> Self {
        CacheSample {
            node_id: member.node_id.clone(),
            generation: member.generation,
            region: member.region.clone(),
            egress_bps: member.egress_bps,
            egress_cap_bps: member.egress_cap_bps,
            traffic: member.traffic,
        }
    }
}

/// The fleet at one instant, as this selector sees it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FleetSample {
    /// Unix time, ms, on a clock that never steps back (the selector's
    /// start plus its monotonic uptime).
    pub at_ms: u64,
    pub caches: Vec<CacheSample>,
    /// What the viewers of the swarms homed here reported receiving from
    /// each other, summed (falls when a swarm ends).
    pub swarm_bytes_from_peers: u64,
    /// Viewers in those swarms still downloading.
    pub swarm_downloaders: u64,
    /// This selector's decisions so far, and those that met the
    /// committed bitrate.
    pub decisions: u64,
    pub decisions_bitrate_met: u64,
}

/// What happened between two samples, as the charts draw it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Point {
    /// End of the interval, Unix ms.
    pub at_ms: u64,
    /// Bytes viewers received from other viewers, Mbit/s.
    pub peers_mbps: f64,
    /// Bytes caches sent to clients that they did not fetch from the
    /// origin for it (stored pieces or sibling caches), Mbit/s.
    pub caches_mbps: f64,
    /// Bytes caches fetched from the origin, Mbit/s.
    pub origin_mbps: f64,
    /// Egress each region's caches gossip (about a second old), Mbit/s.
    pub region_egress_mbps: BTreeMap<String, f64>,
    /// Share of the interval's client bytes served from stored pieces
    /// (`None`: no client bytes).
    pub hit_ratio: Option<f64>,
    /// Share of the interval's decisions that met the committed bitrate
    /// (`None`: no decision).
    pub bitrate_met_ratio: Option<f64>,
    /// Requests in flight at the caches plus viewers still downloading.
    pub active_downloads: u64,
}

/// The shortest span a point's rates are taken over, ms. Caches publish
/// their totals every second or so and gossip adds its own delay, so the
/// difference between two samples taken closer than that swings between
/// nothing and double; over a few seconds it settles.
pub const RATE_WINDOW_MS: u64 = 5_000;

/// The last samples turned into points, oldest first.
#[derive(Debug)]
pub struct History {
    /// The samples since the newest one at least `window_ms` old.
    recent: VecDeque<FleetSample>,
    window_ms: u64,
    points: VecDeque<Point>,
    points_max: usize,
}

impl History {
    /// Keeps `points_max` points, each over the last `window_ms` (or the
    /// samples there are, at first).
    pub fn new(points_max: usize, window_ms: u64) -> Self {
        History {
            recent: VecDeque::new(),
            window_ms,
            points: VecDeque::new(),
            points_max: points_max.clamp(1, HISTORY_POINTS_MAX),
        }
    }

    /// Adds `sample`: what changed since the newest sample at least a
    /// window older becomes a point. A sample not later than the last one
    /// is ignored (the clock stepped back).
    pub fn record(&mut self, sample: FleetSample) {
        if self
            .recent
            .back()
            .is_some_and(|last| sample.at_ms <= last.at_ms)
        {
            return;
        }
        let window_start = sample.at_ms.saturating_sub(self.window_ms);
        // Drop samples older than needed: keep one at or before the start.
        while self
            .recent
            .get(1)
            .is_some_and(|second| second.at_ms <= window_start)
        {
            self.recent.pop_front();
        }
        if !self.recent.is_empty() {
            let earlier: Vec<&FleetSample> = self.recent.iter().collect();
            let point = interval(&earlier, &sample);
            if self.points.len() == self.points_max {
                self.points.pop_front();
            }
            self.points.push_back(point);
        }
        self.recent.push_back(sample);
    }

    pub fn points(&self) -> impl Iterator<Item = &Point> {
        self.points.iter()
    }
}

fn mbps(bytes: u64, elapsed_ms: u64) -> f64 {
    bytes as f64 * 8.0 / 1e6 / (elapsed_ms.max(1) as f64 / 1e3)
}

fn share(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| (part.min(whole)) as f64 / whole as f64)
}

/// Where a cache's counting starts within the window: the oldest earlier
/// sample with its totals from this same process; for a cache that
/// restarted within the window, zero at the last sample of its previous
/// process. `None` for a cache first seen now (its totals span an unknown
/// time, so it adds nothing yet).
fn baseline(earlier: &[&FleetSample], cache: &CacheSample) -> Option<(u64, Traffic)> {
    let mut restarted_after = None;
    for sample in earlier {
        let Some(seen) = sample.caches.iter().find(|c| c.node_id == cache.node_id) else {
            continue;
        };
        let Some(traffic) = seen.traffic else {
            continue;
        };
        if seen.generation == cache.generation {
            return Some((sample.at_ms, traffic));
        }
        restarted_after = Some((sample.at_ms, Traffic::default()));
    }
    restarted_after
}

/// The point for `now` over the window `earlier` (oldest first, not
/// empty): each cache's rates from its own baseline (see [`baseline`]),
/// the swarms' and decisions from the oldest sample. Counters that went
/// down (a swarm ended) count nothing, never a negative rate.
pub fn interval(earlier: &[&FleetSample], now: &FleetSample) -> Point {
    let oldest_ms = earlier.first().map_or(now.at_ms, |s| s.at_ms);
    let (mut client_mbps, mut origin_mbps) = (0.0, 0.0);
    let (mut client, mut stored, mut in_flight) = (0u64, 0u64, 0u64);
    let mut region_egress_mbps = BTreeMap::new();
    for cache in &now.caches {
        *region_egress_mbps
            .entry(cache.region.clone())
            .or_insert(0.0) += cache.egress_bps as f64 / 1e6;
        let Some(traffic) = cache.traffic else {
            continue;
        };
        in_flight = in_flight.saturating_add(traffic.requests_in_flight);
        let Some((from_ms, base)) = baseline(earlier, cache) else {
            continue;
        };
        let elapsed_ms = now.at_ms.saturating_sub(from_ms);
        let grown = |field: fn(&Traffic) -> u64| field(&traffic).saturating_sub(field(&base));
        client_mbps += mbps(grown(|t| t.client_bytes), elapsed_ms);
        origin_mbps += mbps(grown(|t| t.origin_bytes), elapsed_ms);
        // Saturating: these are what members claim.
        client = client.saturating_add(grown(|t| t.client_bytes));
        stored = stored.saturating_add(grown(|t| t.client_store_bytes));
    }
    let elapsed_ms = now.at_ms.saturating_sub(oldest_ms);
    let (peers, decisions, met) = match earlier.first() {
        Some(oldest) => (
            now.swarm_bytes_from_peers
                .saturating_sub(oldest.swarm_bytes_from_peers),
            now.decisions.saturating_sub(oldest.decisions),
            now.decisions_bitrate_met
                .saturating_sub(oldest.decisions_bitrate_met),
        ),
        None => (0, 0, 0),
    };
    Point {
        at_ms: now.at_ms,
        peers_mbps: mbps(peers, elapsed_ms),
        // The origin's bytes reach clients through the caches: the part
        // the caches carried themselves is what is left.
        caches_mbps: (client_mbps - origin_mbps).max(0.0),
        origin_mbps,
        region_egress_mbps,
        hit_ratio: share(stored, client),
        bitrate_met_ratio: share(met, decisions),
        active_downloads: in_flight.saturating_add(now.swarm_downloaders),
    }
}

/// One cache's row.
#[derive(Debug, Serialize)]
pub struct CacheRow {
    pub node: String,
    pub region: String,
    pub health: &'static str,
    pub url: String,
    pub https_url: Option<String>,
    pub egress_mbps: f64,
    /// 0: uncapped.
    pub egress_cap_mbps: f64,
    pub usd_per_gb: f64,
    /// Share of its client bytes served from stored pieces, since it
    /// started (`None`: none sent, or it gossips no totals).
    pub hit_ratio: Option<f64>,
    pub client_gb: Option<f64>,
    pub origin_gb: Option<f64>,
    pub requests_in_flight: Option<u64>,
}

impl CacheRow {
    pub fn of(member: &Member) -> Self {
        let traffic = member.traffic;
        CacheRow {
            node: member.node_id.clone(),
            region: member.region.clone(),
            health: member.health.as_str(),
            url: member.base_url(),
            https_url: member.https_base_url(),
            egress_mbps: member.egress_bps as f64 / 1e6,
            egress_cap_mbps: member.egress_cap_bps as f64 / 1e6,
            usd_per_gb: member.cost_per_gb_microusd as f64 / 1e6,
            hit_ratio: traffic.and_then(|t| share(t.client_store_bytes, t.client_bytes)),
            client_gb: traffic.map(|t| t.client_bytes as f64 / 1e9),
            origin_gb: traffic.map(|t| t.origin_bytes as f64 / 1e9),
            requests_in_flight: traffic.map(|t| t.requests_in_flight),
        }
    }
}

/// A region's caches summed.
#[derive(Debug, Default, Serialize)]
pub struct RegionRow {
    pub region: String,
    pub caches: usize,
    pub serving: usize,
    pub egress_mbps: f64,
    /// Of that, the egress of its capped caches (to set against the caps).
    pub egress_capped_mbps: f64,
    /// Sum of the caps of its capped caches (`uncapped` counts the rest).
    pub egress_cap_mbps: f64,
    pub uncapped: usize,
    /// Cheapest and dearest cost among its caches, USD per GB.
    pub usd_per_gb_min: f64,
    pub usd_per_gb_max: f64,
}

/// Caches by region, regions by name.
pub fn regions(members: &[Member]) -> Vec<RegionRow> {
    let mut rows: BTreeMap<&str, RegionRow> = BTreeMap::new();
    for member in members {
        let cost = member.cost_per_gb_microusd as f64 / 1e6;
        let row = rows.entry(&member.region).or_insert_with(|| RegionRow {
            region: member.region.clone(),
            usd_per_gb_min: cost,
            usd_per_gb_max: cost,
            ..Default::default()
        });
        row.caches += 1;
        if member.health != Health::Draining {
            row.serving += 1;
        }
        row.egress_mbps += member.egress_bps as f64 / 1e6;
        if member.egress_cap_bps == 0 {
            row.uncapped += 1;
        } else {
            row.egress_capped_mbps += member.egress_bps as f64 / 1e6;
            row.egress_cap_mbps += member.egress_cap_bps as f64 / 1e6;
        }
        row.usd_per_gb_min = row.usd_per_gb_min.min(cost);
        row.usd_per_gb_max = row.usd_per_gb_max.max(cost);
    }
    rows.into_values().collect()
}

/// One delivery service's row.
#[derive(Debug, Default, Serialize)]
pub struct ServiceRow {
    pub name: String,
    pub decisions: u64,
    pub bitrate_met_ratio: Option<f64>,
    pub shortfalls: u64,
    /// Mean expected price of its plans, USD per GB.
    pub usd_per_gb_mean: Option<f64>,
    pub committed_mbps_mean: Option<f64>,
    pub swarms: u64,
    pub viewers: u64,
    pub seeds: u64,
    pub peer_efficiency: Option<f64>,
    /// What its swarms' viewers reported receiving, by source.
    pub bytes_from_peers: u64,
    pub bytes_from_caches: u64,
}

/// The headline figures.
#[derive(Debug, Default, Serialize)]
pub struct Totals {
    pub caches: usize,
    pub caches_ok: usize,
    pub caches_degraded: usize,
    pub caches_draining: usize,
    pub egress_mbps: f64,
    /// Of that, the egress of capped caches, and the sum of their caps.
    pub egress_capped_mbps: f64,
    pub egress_cap_mbps: f64,
    /// Viewers' bytes per second in the last interval, by source.
    pub peers_mbps: f64,
    pub caches_mbps: f64,
    pub origin_mbps: f64,
    /// Share of the last intervals' viewer bytes not fetched from the
    /// origin (`None`: nothing delivered lately).
    pub offload_ratio: Option<f64>,
    /// Share of all swarm bytes that came from peers since the swarms began.
    pub peer_efficiency: Option<f64>,
    /// Share of this selector's decisions, since it started, that met the
    /// committed bitrate.
    pub bitrate_met_ratio: Option<f64>,
    pub decisions: u64,
    pub active_downloads: u64,
}

/// The whole `/_shoal/dashboard` answer.
#[derive(Debug, Serialize)]
pub struct Dashboard {
    pub selector: String,
    pub now_ms: u64,
    pub sample_ms: u64,
    pub totals: Totals,
    pub regions: Vec<RegionRow>,
    pub caches: Vec<CacheRow>,
    pub services: Vec<ServiceRow>,
    pub points: Vec<Point>,
}

/// How many of the newest points the headline rates average over (a
/// single interval jumps as pieces land).
const HEADLINE_POINTS: usize = 3;

/// Builds the answer from what the selector sees now.
pub fn dashboard(
    selector: String,
    now_ms: u64,
    sample_ms: u64,
    members: &[Member],
    services: Vec<ServiceRow>,
    history: &History,
) -> Dashboard {
    let mut totals = Totals {
        caches: members.len(),
        ..Default::default()
    };
    for member in members {
        match member.health {
            Health::Ok => totals.caches_ok += 1,
            Health::Degraded => totals.caches_degraded += 1,
            Health::Draining => totals.caches_draining += 1,
        }
        totals.egress_mbps += member.egress_bps as f64 / 1e6;
        if member.egress_cap_bps > 0 {
            totals.egress_capped_mbps += member.egress_bps as f64 / 1e6;
            totals.egress_cap_mbps += member.egress_cap_bps as f64 / 1e6;
        }
    }
    let all: Vec<&Point> = history.points().collect();
    let recent: Vec<Point> = all[all.len().saturating_sub(HEADLINE_POINTS)..]
        .iter()
        .map(|p| (*p).clone())
        .collect();
    if !recent.is_empty() {
        let mean =
            |value: fn(&Point) -> f64| recent.iter().map(value).sum::<f64>() / recent.len() as f64;
        totals.peers_mbps = mean(|p| p.peers_mbps);
        totals.caches_mbps = mean(|p| p.caches_mbps);
        totals.origin_mbps = mean(|p| p.origin_mbps);
        let delivered = totals.peers_mbps + totals.caches_mbps + totals.origin_mbps;
        totals.offload_ratio =
            (delivered > 0.0).then(|| (totals.peers_mbps + totals.caches_mbps) / delivered);
    }
    totals.active_downloads = recent.last().map_or(0, |p| p.active_downloads);
    // From the service rows (now), not the last sample, so the headline
    // and the table agree.
    let peer_bytes: f64 = services.iter().map(|s| s.bytes_from_peers as f64).sum();
    let cache_bytes: f64 = services.iter().map(|s| s.bytes_from_caches as f64).sum();
    totals.peer_efficiency =
        (peer_bytes + cache_bytes > 0.0).then(|| peer_bytes / (peer_bytes + cache_bytes));
    totals.decisions = services.iter().map(|s| s.decisions).sum();
    let met: f64 = services
        .iter()
        .map(|s| s.bitrate_met_ratio.unwrap_or(0.0) * s.decisions as f64)
        .sum();
    totals.bitrate_met_ratio = (totals.decisions > 0).then(|| met / totals.decisions as f64);
    Dashboard {
        selector,
        now_ms,
        sample_ms,
        totals,
        regions: regions(members),
        caches: members.iter().map(CacheRow::of).collect(),
        services,
        points: thinned(&all, POINTS_SENT_MAX),
    }
}

/// Most points one answer carries: a long history is averaged down to
/// this many, so a poll stays small whatever `history_s` says.
pub const POINTS_SENT_MAX: usize = 600;

/// `points` averaged in consecutive groups down to at most `max` (each
/// group ends at its last point's time; ratios are averaged over the
/// points that had one).
pub fn thinned(points: &[&Point], max: usize) -> Vec<Point> {
    let max = max.max(1);
    if points.len() <= max {
        return points.iter().map(|p| (*p).clone()).collect();
    }
    let group = points.len().div_ceil(max);
    points
        .chunks(group)
        .map(|chunk| {
            let n = chunk.len() as f64;
            let mean = |value: fn(&Point) -> f64| chunk.iter().map(|p| value(p)).sum::<f64>() / n;
            let mean_of = |value: fn(&Point) -> Option<f64>| {
                let known: Vec<f64> = chunk.iter().filter_map(|p| value(p)).collect();
                (!known.is_empty()).then(|| known.iter().sum::<f64>() / known.len() as f64)
            };
            let mut regions: BTreeMap<String, f64> = BTreeMap::new();
            for point in chunk {
                for (region, mbps) in &point.region_egress_mbps {
                    *regions.entry(region.clone()).or_insert(0.0) += mbps / n;
                }
            }
            let last = chunk[chunk.len() - 1];
            Point {
                at_ms: last.at_ms,
                peers_mbps: mean(|p| p.peers_mbps),
                caches_mbps: mean(|p| p.caches_mbps),
                origin_mbps: mean(|p| p.origin_mbps),
                region_egress_mbps: regions,
                hit_ratio: mean_of(|p| p.hit_ratio),
                bitrate_met_ratio: mean_of(|p| p.bitrate_met_ratio),
                active_downloads: last.active_downloads,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn traffic(client: u64, stored: u64, origin: u64, in_flight: u64) -> Option<Traffic> {
        Some(Traffic {
            client_bytes: client,
            client_store_bytes: stored,
            origin_bytes: origin,
            requests_in_flight: in_flight,
            ..Default::default()
        })
    }

    fn cache(node: &str, generation: u64, traffic: Option<Traffic>) -> CacheSample {
        CacheSample {
            node_id: node.into(),
            generation,
            region: if node.starts_with('e') { "eu" } else { "us" }.into(),
            egress_bps: 8_000_000,
            egress_cap_bps: 100_000_000,
            traffic,
        }
    }

    fn sample(at_ms: u64, caches: Vec<CacheSample>, peers: u64) -> FleetSample {
        FleetSample {
            at_ms,
            caches,
            swarm_bytes_from_peers: peers,
            ..Default::default()
        }
    }

    #[test]
    fn rates_are_differences_over_the_interval() {
        let before = sample(1_000, vec![cache("eu1", 1, traffic(0, 0, 0, 0))], 0);
        let mut now = sample(
            3_000,
            vec![cache("eu1", 1, traffic(2_000_000, 500_000, 500_000, 3))],
            1_000_000,
        );
        now.swarm_downloaders = 2;
        now.decisions = 4;
        now.decisions_bitrate_met = 3;
        let point = interval(&[&before], &now);
        // 2 MB in 2 s = 8 Mbit/s from the caches, of which 2 Mbit/s came
        // from the origin; 1 MB from peers = 4 Mbit/s.
        assert_eq!(point.caches_mbps, 6.0);
        assert_eq!(point.origin_mbps, 2.0);
        assert_eq!(point.peers_mbps, 4.0);
        assert_eq!(point.hit_ratio, Some(0.25));
        assert_eq!(point.bitrate_met_ratio, Some(0.75));
        assert_eq!(point.active_downloads, 5);
        assert_eq!(point.region_egress_mbps["eu"], 8.0);
    }

    #[test]
    fn restarts_new_caches_and_ended_swarms_never_count_backwards() {
        let before = sample(
            0,
            vec![cache("eu1", 1, traffic(9_000_000, 0, 0, 0))],
            5_000_000,
        );
        let now = sample(
            1_000,
            vec![
                // Restarted: its 1 MB since then counts.
                cache("eu1", 2, traffic(1_000_000, 0, 0, 0)),
                // New to this selector: its totals span an unknown time.
                cache("us1", 1, traffic(7_000_000, 0, 0, 0)),
            ],
            // A swarm ended: its bytes left the sum.
            1_000_000,
        );
        let point = interval(&[&before], &now);
        assert_eq!(point.caches_mbps, 8.0);
        assert_eq!(point.peers_mbps, 0.0);
        assert_eq!(point.bitrate_met_ratio, None);
    }

    #[test]
    fn a_cache_first_seen_inside_the_window_counts_from_its_first_sample() {
        // The selector's first sample came before the cache's totals did
        // (gossip lag); the burst after them must still show.
        let mut history = History::new(100, 5_000);
        history.record(sample(0, vec![cache("eu1", 1, None)], 0));
        history.record(sample(1_000, vec![cache("eu1", 1, traffic(0, 0, 0, 0))], 0));
        history.record(sample(
            2_000,
            vec![cache("eu1", 1, traffic(2_000_000, 0, 0, 0))],
            0,
        ));
        let last = history.points().last().unwrap();
        // 2 MB over the 1 s since its first totals: 16 Mbit/s.
        assert_eq!(last.caches_mbps, 16.0);
    }

    #[test]
    fn history_is_bounded_and_ignores_a_clock_stepping_back() {
        let mut history = History::new(3, 0);
        for at in [0, 1_000, 2_000, 1_500, 3_000, 4_000] {
            history.record(sample(at, Vec::new(), 0));
        }
        let ends: Vec<u64> = history.points().map(|p| p.at_ms).collect();
        assert_eq!(ends, [2_000, 3_000, 4_000]);
        assert_eq!(History::new(usize::MAX, 0).points_max, HISTORY_POINTS_MAX);
    }

    #[test]
    fn the_policy_allows_exactly_the_pages_one_script() {
        assert_eq!(PAGE_HTML.matches("<script").count(), 1);
        let script = inline_script(PAGE_HTML);
        assert!(script.contains("function poll()"));
        let policy = page_policy();
        assert!(policy.contains("script-src 'sha256-"), "{policy}");
        let scripts = policy
            .split(';')
            .find(|d| d.trim().starts_with("script-src"))
            .unwrap();
        assert!(!scripts.contains("unsafe"), "{scripts}");
    }

    #[test]
    fn a_long_history_is_averaged_down_for_the_page() {
        let points: Vec<Point> = (0..1_000u64)
            .map(|i| Point {
                at_ms: i * 1_000,
                caches_mbps: (i % 2) as f64 * 10.0,
                hit_ratio: (i % 4 == 0).then_some(1.0),
                region_egress_mbps: [("eu".to_string(), 4.0)].into(),
                ..Default::default()
            })
            .collect();
        let refs: Vec<&Point> = points.iter().collect();
        let thin = thinned(&refs, 300);
        assert!(thin.len() <= 300, "{}", thin.len());
        assert_eq!(thin.last().unwrap().at_ms, 999_000);
        assert!(thin.iter().all(|p| (p.caches_mbps - 5.0).abs() < 1e-9));
        assert!(thin.iter().all(|p| p.hit_ratio == Some(1.0)));
        assert!(thin
            .iter()
            .all(|p| (p.region_egress_mbps["eu"] - 4.0).abs() < 1e-9));
        assert_eq!(thinned(&refs[..5], 300).len(), 5);
    }

    #[test]
    fn rates_are_taken_over_the_window_so_bursty_gossip_reads_steady() {
        // A cache sending 1 MB/s whose totals reach the selector every
        // other sample (1 s apart): consecutive differences would read
        // 16, 0, 16, 0 Mbit/s; over a 4 s window every point reads 8.
        let mut history = History::new(100, 4_000);
        for at_s in 0..12u64 {
            let published_s = at_s - at_s % 2;
            let bytes = published_s * 1_000_000;
            history.record(sample(
                at_s * 1_000,
                vec![cache("eu1", 1, traffic(bytes, 0, 0, 0))],
                0,
            ));
        }
        let rates: Vec<f64> = history.points().map(|p| p.caches_mbps).collect();
        // The first points span less than the window (and read high or
        // low); once the window is full they settle.
        assert!(
            rates[4..].iter().all(|r| (6.0..=10.0).contains(r)),
            "{rates:?}"
        );
        assert_eq!(history.recent.len(), 5, "only the window is kept");
    }

    #[test]
    fn regions_sum_their_caches_and_headlines_average_the_newest_points() {
        let member = |id: &str, region: &str, health, cap, cost| Member {
            node_id: id.into(),
            http_addr: "127.0.0.1:1".parse().unwrap(),
            https_authority: None,
            region: region.into(),
            egress_cap_bps: cap,
            egress_bps: 10_000_000,
            cost_per_gb_microusd: cost,
            health,
            summary: None,
            purge_head: None,
            generation: 1,
            traffic: traffic(100, 25, 0, 1),
        };
        let members = [
            member("a", "eu", Health::Ok, 100_000_000, 10_000),
            member("b", "eu", Health::Draining, 0, 30_000),
            member("c", "us", Health::Degraded, 50_000_000, 20_000),
        ];
        let rows = regions(&members);
        assert_eq!(rows.len(), 2);
        let eu = &rows[0];
        assert_eq!((eu.caches, eu.serving, eu.uncapped), (2, 1, 1));
        assert_eq!((eu.egress_mbps, eu.egress_cap_mbps), (20.0, 100.0));
        assert_eq!((eu.usd_per_gb_min, eu.usd_per_gb_max), (0.01, 0.03));

        let mut history = History::new(10, 0);
        for (at, client, origin) in [
            (0, 0, 0),
            (1_000, 1_000_000, 0),
            (2_000, 2_000_000, 1_000_000),
        ] {
            history.record(sample(
                at,
                vec![cache("eu1", 1, traffic(client, 0, origin, 0))],
                0,
            ));
        }
        let service = |name: &str, decisions, met, peers, caches| ServiceRow {
            name: name.into(),
            decisions,
            bitrate_met_ratio: Some(met),
            bytes_from_peers: peers,
            bytes_from_caches: caches,
            ..Default::default()
        };
        let services = vec![
            service("video", 3, 1.0, 300, 100),
            service("dl", 1, 0.0, 0, 600),
        ];
        let answer = dashboard("s".into(), 2_000, 1_000, &members, services, &history);
        let totals = &answer.totals;
        assert_eq!(
            (
                totals.caches_ok,
                totals.caches_degraded,
                totals.caches_draining
            ),
            (1, 1, 1)
        );
        // Two points: 8 Mbit/s from the caches, then 8 from the origin.
        assert_eq!((totals.caches_mbps, totals.origin_mbps), (4.0, 4.0));
        assert_eq!(totals.offload_ratio, Some(0.5));
        assert_eq!(totals.peer_efficiency, Some(0.3));
        assert_eq!(
            (totals.decisions, totals.bitrate_met_ratio),
            (4, Some(0.75))
        );
        assert_eq!(answer.caches[0].hit_ratio, Some(0.25));
        let json = serde_json::to_value(&answer).unwrap();
        assert_eq!(json["points"].as_array().unwrap().len(), 2);
        // Capped egress is set against the caps (b is uncapped).
        assert_eq!(
            (totals.egress_capped_mbps, totals.egress_cap_mbps),
            (20.0, 150.0)
        );
        assert_eq!(rows[0].egress_capped_mbps, 10.0);
        assert_eq!(json["caches"][1]["health"], "draining");
    }
}
