//! The selector's `GET /metrics` page (Prometheus text format): its
//! decisions per delivery service, the caches it sees, the swarms homed
//! here and their peer efficiency.

use crate::api::{Selector, SelectorStats};
use shoal_proto::plan::Decision;
use shoal_server::metrics::MetricsPage;
use std::sync::atomic::Ordering;

/// Decisions made for one delivery service.
#[derive(Clone, Debug, Default)]
pub struct ServiceTally {
    pub decisions: u64,
    /// Decisions whose chosen caches together hold the committed bitrate.
    pub bitrate_met: u64,
    /// Decisions that fell short of it.
    pub shortfalls: u64,
    /// Sum of the expected cost per GB of the decisions, USD.
    pub usd_per_gb_sum: f64,
    /// Sum of the committed bitrates asked, Mbit/s.
    pub committed_mbps_sum: f64,
    /// Sum of the predicted bitrates, Mbit/s.
    pub predicted_mbps_sum: f64,
}

/// Counts `decision` for its service.
pub(crate) fn tally(stats: &SelectorStats, decision: &Decision) {
    let mut services = stats.per_service.lock().unwrap_or_else(|p| p.into_inner());
    // Service names come from the configuration, not from requests.
    let tally = services.entry(decision.service.clone()).or_default();
    tally.decisions += 1;
    if decision.bitrate_met {
        tally.bitrate_met += 1;
    }
    if decision.shortfall_mbps > 0.0 {
        tally.shortfalls += 1;
    }
    tally.usd_per_gb_sum += decision.usd_per_gb;
    tally.committed_mbps_sum += decision.committed_mbps;
    tally.predicted_mbps_sum += decision.predicted_mbps;
}

/// The whole page for `selector` as it is now.
pub(crate) fn page(selector: &Selector) -> MetricsPage {
    let mut page = shoal_server::metrics::role_page(
        "selector",
        selector.lifecycle.phase(),
        selector.started_unix_s,
        selector.server_stats.get(),
    );
    let stats = &selector.stats;
    let services = stats
        .per_service
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let per_service = |value: &dyn Fn(&ServiceTally) -> f64| -> Vec<(String, f64)> {
        services
            .iter()
            .map(|(name, t)| (name.clone(), value(t)))
            .collect()
    };
    labelled_counter(
        &mut page,
        "shoal_selector_decisions_total",
        "Plans made (each /plan, redirect or explain), by delivery service.",
        "service",
        &per_service(&|t| t.decisions as f64),
    );
    labelled_counter(
        &mut page,
        "shoal_selector_bitrate_met_total",
        "Plans whose caches together hold the committed bitrate, by delivery service.",
        "service",
        &per_service(&|t| t.bitrate_met as f64),
    );
    labelled_counter(
        &mut page,
        "shoal_selector_shortfalls_total",
        "Plans that fell short of the committed bitrate, by delivery service.",
        "service",
        &per_service(&|t| t.shortfalls as f64),
    );
    labelled_counter(
        &mut page,
        "shoal_selector_plan_price_total",
        "Sum over plans of their expected price in USD per GB delivered (divide by decisions for the mean).",
        "service",
        &per_service(&|t| t.usd_per_gb_sum),
    );
    labelled_counter(
        &mut page,
        "shoal_selector_plan_committed_bytes_per_second_total",
        "Sum over plans of the committed rate asked, bytes/s (divide by decisions for the mean).",
        "service",
        &per_service(&|t| t.committed_mbps_sum * 125_000.0),
    );
    labelled_counter(
        &mut page,
        "shoal_selector_plan_predicted_bytes_per_second_total",
        "Sum over plans of the rate the chosen caches are predicted to give, bytes/s.",
        "service",
        &per_service(&|t| t.predicted_mbps_sum * 125_000.0),
    );
    page.counter1(
        "shoal_selector_redirects_total",
        "Plain clients redirected to a cache.",
        stats.redirects.load(Ordering::Relaxed),
    );
    page.counter1(
        "shoal_selector_bad_requests_total",
        "Requests refused as malformed or for an unknown service.",
        stats.bad_requests.load(Ordering::Relaxed),
    );
    page.counter1(
        "shoal_selector_signed_url_refusals_total",
        "Requests refused for a missing, expired or bad signed URL.",
        stats.signature_refusals.load(Ordering::Relaxed),
    );
    page.counter1(
        "shoal_selector_announces_total",
        "Tracker announces answered (refusals included).",
        stats.announces.load(Ordering::Relaxed),
    );

    // The caches as gossip shows them: bounded by the fleet's size.
    let view = selector.node.view();
    let mut caches_up = Vec::new();
    let mut egress = Vec::new();
    let mut caps = Vec::new();
    for member in &view.members {
        let labels = (member.node_id.clone(), member.region.clone());
        caches_up.push((labels.clone(), member.health.as_str(), 1.0));
        egress.push((labels.clone(), member.egress_bps as f64 / 8.0));
        caps.push((labels, member.egress_cap_bps as f64 / 8.0));
    }
    let rows: Vec<[(&str, &str); 3]> = caches_up
        .iter()
        .map(|((node, region), health, _)| {
            [
                ("cache", node.as_str()),
                ("region", region.as_str()),
                ("health", *health),
            ]
        })
        .collect();
    page.gauge(
        "shoal_selector_cache_up",
        "Caches in this selector's view (1 each), with their region and health.",
        &rows.iter().map(|r| (&r[..], 1.0)).collect::<Vec<_>>(),
    );
    let egress_rows = cache_rows(&egress);

    page.gauge(
        "shoal_selector_cache_egress_bytes_per_second",
        "Each cache's recent egress as it gossips it (about a second old).",
        &egress_rows
            .iter()
            .map(|(l, v)| (&l[..], *v))
            .collect::<Vec<_>>(),
    );
    let cap_rows = cache_rows(&caps);
    page.gauge(
        "shoal_selector_cache_egress_cap_bytes_per_second",
        "Each cache's egress cap as it gossips it (0: none).",
        &cap_rows
            .iter()
            .map(|(l, v)| (&l[..], *v))
            .collect::<Vec<_>>(),
    );

    let swarms = selector.service_swarms();
    let swarm_rows = |value: &dyn Fn(&crate::api::ServiceSwarms) -> f64| -> Vec<(String, f64)> {
        swarms
            .iter()
            .map(|(name, s)| (name.clone(), value(s)))
            .collect()
    };
    let labels: Vec<(String, &str)> = swarms
        .keys()
        .flat_map(|name| [(name.clone(), "peers"), (name.clone(), "caches")])
        .collect();
    let bytes: Vec<([(&str, &str); 2], f64)> = labels
        .iter()
        .map(|(name, source)| {
            let s = &swarms[name];
            let value = if *source == "peers" {
                s.bytes_from_peers
            } else {
                s.bytes_from_caches
            };
            (
                [("service", name.as_str()), ("source", *source)],
                value as f64,
            )
        })
        .collect();
    page.gauge(
        "shoal_swarm_viewer_bytes",
        "Bytes the viewers of the swarms homed here report having received, by source (peers or caches), per delivery service; falls when swarms end.",
        &bytes.iter().map(|(l, v)| (&l[..], *v)).collect::<Vec<_>>(),
    );
    labelled_gauge(
        &mut page,
        "shoal_swarm_peer_efficiency_ratio",
        "Share of the swarms' bytes that came from other viewers rather than caches, per delivery service.",
        "service",
        &swarm_rows(&|s| s.peer_efficiency),
    );
    labelled_gauge(
        &mut page,
        "shoal_swarm_peers",
        "Viewers in the swarms homed here, per delivery service.",
        "service",
        &swarm_rows(&|s| s.peers as f64),
    );
    if let Some(log) = &selector.access_log {
        shoal_server::metrics::write_access_log(&mut page, log);
    }
    page
}

fn cache_rows(values: &[((String, String), f64)]) -> Vec<([(&str, &str); 2], f64)> {
    values
        .iter()
        .map(|((node, region), v)| ([("cache", node.as_str()), ("region", region.as_str())], *v))
        .collect()
}

fn labelled_counter(
    page: &mut MetricsPage,
    name: &str,
    help: &str,
    key: &str,
    rows: &[(String, f64)],
) {
    labelled(page, true, name, help, key, rows);
}

fn labelled_gauge(
    page: &mut MetricsPage,
    name: &str,
    help: &str,
    key: &str,
    rows: &[(String, f64)],
) {
    labelled(page, false, name, help, key, rows);
}

/// A family with one label, `key`, a sample per row.
fn labelled(
    page: &mut MetricsPage,
    counter: bool,
    name: &str,
    help: &str,
    key: &str,
    rows: &[(String, f64)],
) {
    let labels: Vec<[(&str, &str); 1]> = rows.iter().map(|(v, _)| [(key, v.as_str())]).collect();
    let samples: Vec<_> = labels
        .iter()
        .zip(rows)
        .map(|(l, (_, v))| (&l[..], *v))
        .collect();
    if counter {
        page.counter(name, help, &samples);
    } else {
        page.gauge(name, help, &samples);
    }
}
