//! The selector's live dashboard, used as an operator uses it: an origin,
//! three caches in two regions and a selector; traffic through the
//! selector (curl following its redirect, a swarm of `shoal get` viewers);
//! then headless Chromium (Debian's `chromium`) loads `/dashboard`. The
//! test reads what the page shows after its scripts ran, checks that it
//! follows the fleet (a cache killed disappears from it), and saves a
//! screenshot to `target/tmp/dashboard.png`.

mod support;

use std::time::Duration;
use support::*;

const MIB: u64 = 1 << 20;

/// A region name with markup in it: the page must show it as text.
const MARKUP_REGION: &str = "<i id=\"injected\">us</i>";

fn dashboard_json(selector: &str) -> serde_json::Value {
    let answer = curl(&format!("{selector}/_shoal/dashboard"), &[]);
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    serde_json::from_slice(&answer.body).expect("dashboard JSON")
}

/// The text of the element with `id` in a dumped DOM.
fn text_of(dom: &str, id: &str) -> String {
    let start = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in the page"));
    let rest = &dom[start..];
    let open_end = rest.find('>').unwrap() + 1;
    let close = rest[open_end..].find('<').unwrap();
    rest[open_end..open_end + close].to_string()
}

/// A `data-NAME="VALUE"` attribute on the element with `id`.
fn data_of(dom: &str, id: &str, name: &str) -> String {
    let start = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in the page"));
    // Attributes of one element: up to its `>`, searched both ways.
    let tag_start = dom[..start].rfind('<').unwrap();
    let tag_end = start + dom[start..].find('>').unwrap();
    let tag = &dom[tag_start..tag_end];
    let key = format!("data-{name}=\"");
    let at = tag
        .find(&key)
        .unwrap_or_else(|| panic!("no data-{name} on #{id}: {tag}"));
    let value = &tag[at + key.len()..];
    value[..value.find('"').unwrap()].to_string()
}

#[test]
fn the_dashboard_shows_the_fleet_live_in_a_browser() {
    let root = tempfile::tempdir().unwrap();
    let size = 24 * MIB + 4321;
    let data = content(size, 11);
    write_file(root.path(), "video/film.bin", &data);
    publish(root.path());
    let origin = start_origin(root.path());
    let dir = tempfile::tempdir().unwrap();
    let mut caches = start_mesh(
        &origin.url,
        dir.path(),
        &[("eu-1", "eu"), ("eu-2", "eu"), ("us-1", MARKUP_REGION)],
        &["--egress-mbps", "400", "--cost-per-gb", "0.02"],
    );
    let selector = start_selector(
        dir.path(),
        &gossip_addr(&caches[0]),
        8,
        "[dashboard]\nsample_ms = 500\n",
    );
    wait_for_selector(&selector, 3);

    // The page is served with a policy that keeps it talking only to the
    // selector.
    let page = curl(&format!("{}/dashboard", selector.url), &[]);
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    let policy = page.header("content-security-policy").unwrap_or_default();
    assert!(policy.contains("connect-src 'self'"), "{policy}");

    // Traffic: three plain clients through the redirect, then a swarm.
    let url = format!("{}/video/film.bin", selector.url);
    for _ in 0..3 {
        let got = curl(&url, &["-L"]);
        assert_eq!(got.status, 200);
        assert!(got.body == data, "byte-exact through the redirect");
    }
    let peers: Vec<_> = (0..4)
        .map(|n| {
            start_peer(
                &url,
                dir.path(),
                &format!("127.0.0.{}", 60 + n),
                &["--seed-for", "2s", "--upload-mbps", "200"],
            )
        })
        .collect();
    for (child, out) in peers {
        finish_peer(child);
        assert!(std::fs::read(&out).unwrap() == data, "{}", out.display());
    }

    // The JSON the page draws: the fleet, the traffic and the selector's
    // figures, as the caches themselves count them.
    let served: u64 = caches.iter().map(|c| stat(&c.url, "bytes_served")).sum();
    wait_until(
        "the caches' traffic reaches the dashboard",
        Duration::from_secs(20),
        || {
            let d = dashboard_json(&selector.url);
            let gossiped: f64 = d["caches"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["client_gb"].as_f64().unwrap_or(0.0))
                .sum();
            (gossiped * 1e9).round() as u64 == served
        },
    );
    let d = dashboard_json(&selector.url);
    assert_eq!(d["totals"]["caches"], 3);
    let regions: Vec<&str> = d["regions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["region"].as_str().unwrap())
        .collect();
    assert_eq!(regions, [MARKUP_REGION, "eu"]);
    let eu = &d["regions"][1];
    assert_eq!(eu["caches"], 2);
    assert_eq!(eu["egress_cap_mbps"], 800.0);
    assert_eq!(eu["usd_per_gb_min"], 0.02);
    let points = d["points"].as_array().unwrap();
    let most = |key: &str| {
        points
            .iter()
            .map(|p| p[key].as_f64().unwrap_or(0.0))
            .fold(0.0, f64::max)
    };
    assert!(most("caches_mbps") > 0.0, "cache bytes charted");
    assert!(
        most("origin_mbps") > 0.0,
        "the first fill came from the origin"
    );
    let service = &d["services"][0];
    assert_eq!(service["name"], "all");
    assert!(service["decisions"].as_u64().unwrap() >= 7, "{service}");
    assert_eq!(service["bitrate_met_ratio"], 1.0, "{service}");
    let efficiency = d["totals"]["peer_efficiency"].as_f64().unwrap();
    assert!(efficiency > 0.0, "the swarm shared pieces: {efficiency}");
    let origin_gb: f64 = d["caches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["origin_gb"].as_f64().unwrap())
        .sum();
    let from_origin: u64 = caches.iter().map(|c| stat(&c.url, "origin_bytes")).sum();
    assert_eq!((origin_gb * 1e9).round() as u64, from_origin);

    // The page in a browser: it polled more than once and drew what the
    // JSON says.
    let dashboard = format!("{}/dashboard", selector.url);
    let (dom, log) = chromium(&dashboard, 8_000, &["--dump-dom"]);
    assert!(dom.contains("data-polls="), "the page ran: {log}");
    let polls: u32 = data_of(&dom, "dashboard", "polls").parse().unwrap();
    assert!(polls >= 2, "the page polls: {polls}");
    assert_eq!(text_of(&dom, "t-caches"), "3");
    assert!(text_of(&dom, "t-met").starts_with("100.0"), "bitrate met");
    assert_ne!(text_of(&dom, "t-peers"), "–", "peer efficiency shown");
    for cache in ["eu-1", "eu-2", "us-1"] {
        assert!(
            dom.contains(&format!("data-cache=\"{cache}\"")),
            "{cache} is listed"
        );
    }
    assert!(dom.contains("data-service=\"all\""));
    let charted: u32 = data_of(&dom, "c-split", "points").parse().unwrap();
    assert!(charted >= 2, "the delivery chart has points: {charted}");
    let scale: f64 = data_of(&dom, "c-split", "max").parse().unwrap();
    assert!(scale > 0.0, "the delivery chart has traffic on it");
    // The region's markup arrived as text, not as an element.
    assert!(!dom.contains("<i id=\"injected\">"), "markup was escaped");
    assert!(dom.contains("&lt;i id=\"injected\"&gt;us&lt;/i&gt;"));

    // A screenshot for a person to look at.
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    let (_, log) = chromium(
        &dashboard,
        8_000,
        &[
            "--window-size=1400,1300",
            &format!("--screenshot={}", shot.display()),
        ],
    );
    let png = std::fs::read(&shot).unwrap_or_else(|_| panic!("no screenshot: {log}"));
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "a real picture"
    );
    eprintln!("dashboard screenshot: {}", shot.display());

    // It follows the fleet: a cache killed leaves the page.
    caches.pop().unwrap().kill9();
    wait_for_selector(&selector, 2);
    let (dom, _) = chromium(&dashboard, 4_000, &["--dump-dom"]);
    assert_eq!(text_of(&dom, "t-caches"), "2");
    assert!(!dom.contains("data-cache=\"us-1\""), "us-1 left the page");
}

#[test]
fn an_operator_can_turn_the_dashboard_off() {
    let root = tempfile::tempdir().unwrap();
    write_file(root.path(), "a.bin", &content(1000, 1));
    let origin = start_origin(root.path());
    let dir = tempfile::tempdir().unwrap();
    let caches = start_mesh(&origin.url, dir.path(), &[("c1", "eu")], &[]);
    let selector = start_selector(
        dir.path(),
        &gossip_addr(&caches[0]),
        8,
        "[dashboard]\nenabled = false\n",
    );
    for path in ["/dashboard", "/_shoal/dashboard"] {
        let answer = curl(&format!("{}{path}", selector.url), &[]);
        assert_eq!(answer.status, 404, "{path}");
        assert!(
            String::from_utf8_lossy(&answer.body).contains("dashboard.enabled = false"),
            "the 404 says why"
        );
    }
}
