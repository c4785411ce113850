//! The selector against a real mesh on loopback: `shoal cache` processes
//! gossiping on 127.0.0.1 in two regions, nginx as the origin, a `shoal
//! selector` observing the gossip, curl and aria2c as clients.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use support::*;

const MIB: u64 = 1 << 20;

/// Clients in 10.1/16 are near eu, in 10.2/16 near us; loopback clients
/// (the tests themselves) are equally near both.
const ZONES: &str = r#"
fallback = "local"

[[zone]]
name = "eu-clients"
cidrs = ["10.1.0.0/16"]
regions = { eu = { rtt_ms = 10, transit_usd_per_gb = 0.0 }, us = { rtt_ms = 90, transit_usd_per_gb = 0.01 } }

[[zone]]
name = "us-clients"
cidrs = ["10.2.0.0/16"]
regions = { us = { rtt_ms = 10, transit_usd_per_gb = 0.0 }, eu = { rtt_ms = 90, transit_usd_per_gb = 0.01 } }

[[zone]]
name = "local"
cidrs = ["127.0.0.0/8"]
regions = { eu = { rtt_ms = 1, transit_usd_per_gb = 0.0 }, us = { rtt_ms = 1, transit_usd_per_gb = 0.0 } }
"#;

fn selector_toml(dir: &Path, origin_url: &str, seed: &str) -> std::path::PathBuf {
    let zones = dir.join("zones.toml");
    std::fs::write(&zones, ZONES).unwrap();
    let config = dir.join("selector.toml");
    std::fs::write(
        &config,
        format!(
            r#"listen = "127.0.0.1:0"
zones_file = "{zones}"

[mesh]
gossip = "127.0.0.1:0"
seeds = ["{seed}"]
gossip_interval_ms = 200

[[service]]
name = "video"
path_prefix = "/video/"
origin = "{origin_url}"
bitrate_mbps = 100
headroom = 1.5
"#,
            zones = zones.display()
        ),
    )
    .unwrap();
    config
}

fn start_selector(config: &Path) -> Proc {
    let mut proc = start_shoal(
        &["selector", "--config", config.to_str().unwrap()],
        &[("SHOAL_SELECTOR_MESH__CLUSTER_SECRET", CLUSTER_SECRET)],
    );
    proc.name = "selector".into();
    proc
}

fn get_json(url: &str) -> (u16, serde_json::Value) {
    let result = curl(url, &[]);
    let value = serde_json::from_slice(&result.body).unwrap_or(serde_json::Value::Null);
    (result.status, value)
}

fn source_nodes(plan: &serde_json::Value) -> Vec<String> {
    plan["sources"]
        .as_array()
        .map(|sources| {
            sources
                .iter()
                .map(|s| s["node"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Bytes a cache sent to clients (`bytes_served` leaves out what went
/// to sibling caches).
fn client_bytes(cache: &Proc) -> u64 {
    stat(&cache.url, "bytes_served")
}

/// Four caches: c1, c2 in eu at $0.010/GB, c3, c4 in us at $0.005/GB,
/// 400 Mbit/s each.
fn start_two_region_mesh(origin_url: &str, dir: &Path) -> Vec<Proc> {
    let mut caches: Vec<Proc> = Vec::new();
    for (name, region, cost) in [
        ("c1", "eu", "0.010"),
        ("c2", "eu", "0.010"),
        ("c3", "us", "0.005"),
        ("c4", "us", "0.005"),
    ] {
        let seeds: Vec<String> = caches.first().map(gossip_addr).into_iter().collect();
        caches.push(start_mesh_cache(
            origin_url,
            &dir.join(name),
            name,
            region,
            &seeds,
            None,
            &["--cost-per-gb", cost, "--egress-mbps", "400"],
        ));
    }
    let urls: Vec<&str> = caches.iter().map(|c| c.url.as_str()).collect();
    wait_for_mesh(&urls, 4);
    caches
}

/// aria2c as a multi-source client (`-x4 -s4`), with its debug log: the
/// file's bytes and the log's lines.
fn aria2c_logged(url: &str) -> (Vec<u8>, String) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("aria2c.log");
    let status = Command::new("aria2c")
        .args([
            "-x4",
            "-s4",
            "-k1M",
            "-q",
            "--allow-overwrite=true",
            "--auto-file-renaming=false",
            "--file-allocation=none",
            "--log-level=debug",
        ])
        .arg(format!("--log={}", log.display()))
        .args(["-d", dir.path().to_str().unwrap(), "-o", "out", url])
        .status()
        .expect("run aria2c");
    assert!(status.success(), "aria2c failed for {url}");
    (
        std::fs::read(dir.path().join("out")).unwrap_or_default(),
        std::fs::read_to_string(&log).unwrap_or_default(),
    )
}

fn wait_for_selector_view(selector: &Proc, caches: usize) {
    wait_until(
        "the selector sees the mesh",
        Duration::from_secs(20),
        || {
            let (_, mesh) = get_json(&format!("{}/_shoal/mesh", selector.url));
            mesh["caches"].as_array().map_or(0, Vec::len) == caches
        },
    );
}

#[test]
fn plans_explain_and_redirects_follow_cost_zone_and_holdings() {
    let root = tempfile::tempdir().unwrap();
    let size = 24 * MIB + 777;
    let data = content(size, 41);
    write_file(root.path(), "video/film.mp4", &data);
    let (nginx, _nginx_dir) = start_nginx(root.path(), "");
    let dir = tempfile::tempdir().unwrap();
    let caches = start_two_region_mesh(&nginx.url, dir.path());
    let config = selector_toml(dir.path(), &nginx.url, &gossip_addr(&caches[0]));
    let selector = start_selector(&config);
    wait_for_selector_view(&selector, 4);
    let url_of = |node: &str| {
        caches
            .iter()
            .find(|c| c.name == node)
            .map(|c| c.url.clone())
            .unwrap()
    };

    // A client near eu: target 150 Mbit/s from at least 2 sources: both
    // eu caches at 75 each, either able to raise its output to the
    // committed 100 should the other fail (standby, not billed); the
    // cheaper far region is not paid for resilience.
    let (status, plan) = get_json(&format!(
        "{}/plan?path=/video/film.mp4&client=10.1.0.5",
        selector.url
    ));
    assert_eq!(status, 200, "{plan}");
    let nodes = source_nodes(&plan);
    let mut near: Vec<&str> = nodes.iter().map(String::as_str).collect();
    near.sort();
    assert_eq!(near, ["c1", "c2"], "{plan}");
    for source in plan["sources"].as_array().unwrap() {
        assert!(
            (source["mbps"].as_f64().unwrap() - 75.0).abs() < 1e-6,
            "{plan}"
        );
        assert!(
            (source["standby_mbps"].as_f64().unwrap() - 25.0).abs() < 1e-6,
            "{plan}"
        );
    }
    assert_eq!(plan["standby"].as_array().map(Vec::len), Some(0), "{plan}");
    assert_eq!(plan["zone"], "eu-clients");
    assert_eq!(plan["object"]["size_bytes"], size);
    assert!(plan["predicted_mbps"].as_f64().unwrap() >= 150.0 - 1e-6);
    assert_eq!(plan["bitrate_met"], true);
    assert_eq!(plan["survives_one_loss"], true);
    assert!(plan["usd_per_gb"].as_f64().unwrap() > 0.0);
    let shares: f64 = plan["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["share"].as_f64().unwrap())
        .sum();
    assert!((shares - 1.0).abs() < 1e-6);
    for source in plan["sources"].as_array().unwrap() {
        let node = source["node"].as_str().unwrap();
        // Every URL names the version the shield reported.
        assert_eq!(
            source["url"].as_str().unwrap(),
            format!(
                "{}/video/film.mp4?shoal-object={}",
                url_of(node),
                plan["object"]["id"].as_str().unwrap()
            )
        );
    }
    // A client near us gets the us caches first.
    let (_, plan_us) = get_json(&format!(
        "{}/plan?path=/video/film.mp4&client=10.2.0.9",
        selector.url
    ));
    let mut near: Vec<String> = source_nodes(&plan_us);
    near.sort();
    assert_eq!(near, ["c3", "c4"], "{plan_us}");

    // Once c2 holds the object, it costs less (no fill) and leads.
    assert!(curl(&format!("{}/video/film.mp4", url_of("c2")), &[]).body == data);
    wait_until(
        "the selector sees c2 hold the film",
        Duration::from_secs(15),
        || {
            let (_, plan) = get_json(&format!(
                "{}/plan?path=/video/film.mp4&client=10.1.0.5",
                selector.url
            ));
            plan["sources"][0]["node"] == "c2" && plan["sources"][0]["held"].as_f64() == Some(1.0)
        },
    );

    // A client reports c2 degraded: the replacement plan leaves it out.
    let (status, replan) = get_json(&format!(
        "{}/plan?path=/video/film.mp4&client=10.1.0.5&exclude=c2",
        selector.url
    ));
    assert_eq!(status, 200);
    let nodes = source_nodes(&replan);
    assert!(!nodes.contains(&"c2".to_string()), "{replan}");
    assert_eq!(nodes.len(), 2, "{replan}");
    assert!(replan["left_out"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["node"] == "c2" && l["why"].as_str().unwrap().contains("degraded")));

    // The same reasoning in words.
    let explained = curl(
        &format!(
            "{}/explain?path=/video/film.mp4&client=10.1.0.5",
            selector.url
        ),
        &[],
    );
    assert_eq!(explained.status, 200);
    let text = String::from_utf8_lossy(&explained.body);
    assert!(
        text.contains("chosen, best first")
            && text.contains("1. c2")
            && text.contains("delivery service video")
            && text.contains("eu-clients"),
        "{text}"
    );

    // A plain client is redirected to the best cache, with the others as
    // RFC 6249 duplicates; curl -L gets the exact bytes.
    let redirect = curl(&format!("{}/video/film.mp4", selector.url), &[]);
    assert_eq!(redirect.status, 302);
    let location = redirect.header("location").unwrap().to_string();
    let links: Vec<&str> = redirect
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("link"))
        .map(|(_, v)| v.as_str())
        .collect();
    // The two-source plan (earlier plans still count against the caches'
    // spare egress, which may call for more).
    assert!(!links.is_empty(), "{:?}", redirect.headers);
    for link in &links {
        assert!(link.contains("rel=duplicate") && link.contains("/video/film.mp4"));
        assert!(!link.contains(&location), "the Location is not repeated");
    }
    let followed = curl(&format!("{}/video/film.mp4", selector.url), &["-L"]);
    assert_eq!(followed.status, 200);
    assert!(followed.body == data);

    // aria2c follows the redirect and takes the duplicates as mirrors
    // (Metalink/HTTP): the file arrives exact. (aria2c spreads connections
    // over distinct host names; on one loopback address it may keep to one
    // cache, so scripts/netns-mesh shows the blend across hosts.)
    let before: u64 = caches.iter().map(client_bytes).sum();
    let (got, log) = aria2c_logged(&format!("{}/video/film.mp4", selector.url));
    assert!(got == data, "aria2c got wrong bytes");
    // (Each redirect is planned afresh, so compare with the caches, not
    // with the links curl saw.)
    let added: Vec<&str> = log
        .lines()
        .filter_map(|line| line.split("Adding URI=").nth(1))
        .map(str::trim)
        .collect();
    // (The Location, plus the plan's other source as a duplicate.)
    assert!(!added.is_empty(), "aria2c took no duplicate");
    let (_, plan) = get_json(&format!("{}/plan?path=/video/film.mp4", selector.url));
    let pin = format!("?shoal-object={}", plan["object"]["id"].as_str().unwrap());
    for url in &added {
        assert!(
            caches
                .iter()
                .any(|c| *url == format!("{}/video/film.mp4{pin}", c.url)),
            "aria2c took {url}, not a cache's URL pinned to the version"
        );
    }
    let after: u64 = caches.iter().map(client_bytes).sum();
    assert!(after - before >= size, "the bytes came from the caches");

    // Bad requests: a clear 4xx each, never a panic.
    for (query, status) in [
        ("/plan", 400),
        ("/plan?path=/video/film.mp4&client=not-an-ip", 400),
        ("/plan?path=/video/film.mp4&exclude=bad%20name", 400),
        ("/plan?path=/video/film.mp4&bitrate=9e99", 400),
        ("/plan?path=/music/song.mp3", 404),
        ("/plan?path=/video/no-such-film.mp4", 404),
        ("/video/a%00b.mp4", 400),
        ("/music/song.mp3", 404),
        ("/_shoal/nothing", 404),
    ] {
        let result = curl(&format!("{}{query}", selector.url), &[]);
        assert_eq!(
            result.status,
            status,
            "{query}: {:?}",
            String::from_utf8_lossy(&result.body)
        );
        assert!(!result.body.is_empty(), "{query}: an error says why");
    }
    let post = curl(&format!("{}/video/film.mp4", selector.url), &["-X", "POST"]);
    assert_eq!(post.status, 405);
    assert!(curl(&format!("{}/_shoal/health", selector.url), &[]).status == 200);
}

#[test]
fn a_cache_that_leaves_the_gossip_is_never_planned_and_no_cache_means_the_origin() {
    let root = tempfile::tempdir().unwrap();
    let data = content(3 * MIB, 42);
    write_file(root.path(), "video/clip.mp4", &data);
    let (nginx, _nginx_dir) = start_nginx(root.path(), "");
    let dir = tempfile::tempdir().unwrap();
    let mut caches = start_two_region_mesh(&nginx.url, dir.path());
    let config = selector_toml(dir.path(), &nginx.url, &gossip_addr(&caches[0]));
    let selector = start_selector(&config);
    wait_for_selector_view(&selector, 4);
    // A second selector side by side (as behind DNS): no shared state, the
    // same gossip, the same answer.
    let twin = start_selector(&config);
    wait_for_selector_view(&twin, 4);
    let plan_url = format!("{}/plan?path=/video/clip.mp4&client=10.1.0.5", selector.url);
    let (_, plan) = get_json(&plan_url);
    assert!(source_nodes(&plan).contains(&"c1".to_string()), "{plan}");
    let (_, twin_plan) = get_json(&format!(
        "{}/plan?path=/video/clip.mp4&client=10.1.0.5",
        twin.url
    ));
    assert_eq!(source_nodes(&plan), source_nodes(&twin_plan));
    assert_eq!(
        plan["sources"][0]["share"],
        twin_plan["sources"][0]["share"]
    );
    drop(twin);

    // c1 dies without a word: once gossip notices, it is never planned.
    caches[0].kill9();
    wait_until("c1 out of every plan", Duration::from_secs(15), || {
        let (status, plan) = get_json(&plan_url);
        status == 200
            && !source_nodes(&plan).contains(&"c1".to_string())
            && source_nodes(&plan).len() >= 2
    });
    for _ in 0..5 {
        let (_, plan) = get_json(&plan_url);
        assert!(!source_nodes(&plan).contains(&"c1".to_string()));
    }
    // The others still serve through the selector's redirect.
    assert!(curl(&format!("{}/video/clip.mp4", selector.url), &["-L"]).body == data);

    // With no cache left, clients are sent to the origin rather than
    // left without an answer (the service allows it).
    for cache in &mut caches {
        cache.kill9();
    }
    wait_for_selector_view(&selector, 0);
    let redirect = curl(&format!("{}/video/clip.mp4", selector.url), &[]);
    assert_eq!(redirect.status, 302);
    assert_eq!(
        redirect.header("location").unwrap(),
        format!("{}/video/clip.mp4", nginx.url)
    );
    let (_, plan) = get_json(&plan_url);
    assert_eq!(plan["bitrate_met"], false);
    assert!(plan["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r.as_str().unwrap().contains("origin")));
}

fn selector_fails_with(config: &str, zones: Option<&str>, expected: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut text = config.to_string();
    if let Some(zones) = zones {
        let path = dir.path().join("zones.toml");
        std::fs::write(&path, zones).unwrap();
        text = format!("zones_file = \"{}\"\n{text}", path.display());
    }
    let path = dir.path().join("selector.toml");
    std::fs::write(&path, text).unwrap();
    let output = Command::new(shoal_bin())
        .args(["selector", "--config", path.to_str().unwrap()])
        .env("SHOAL_SELECTOR_MESH__CLUSTER_SECRET", CLUSTER_SECRET)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success(), "should fail: {config}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(expected),
        "expected `{expected}` in:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn bad_selector_configuration_is_refused_at_start_up() {
    let mesh =
        "listen = \"127.0.0.1:0\"\n[mesh]\ngossip = \"127.0.0.1:0\"\nseeds = [\"127.0.0.1:9\"]\n";
    selector_fails_with(
        &format!("{mesh}[[service]]\nname = \"v\"\nbitrate_mbps = 1e12\n"),
        None,
        "bitrate_mbps",
    );
    selector_fails_with(
        &format!("{mesh}[[service]]\nname = \"v\"\nheadroom = 0.2\n"),
        None,
        "headroom",
    );
    selector_fails_with(
        &format!("{mesh}[[service]]\nname = \"v\"\npath_prefix = \"video\"\n"),
        None,
        "path_prefix",
    );
    selector_fails_with(
        &format!("{mesh}[[service]]\nname = \"v\"\ncolour = \"blue\"\n"),
        None,
        "colour",
    );
    selector_fails_with(
        mesh,
        Some("fallback = \"x\"\n[[zone]]\nname = \"x\"\ncidrs = [\"10.0.0.0/33\"]\nregions = { eu = { rtt_ms = 1, transit_usd_per_gb = 0 } }\n"),
        "10.0.0.0/33",
    );
    selector_fails_with(
        mesh,
        Some("fallback = \"nowhere\"\n[[zone]]\nname = \"x\"\nregions = { eu = { rtt_ms = 1, transit_usd_per_gb = 0 } }\n"),
        "nowhere",
    );
    selector_fails_with("listen = \"127.0.0.1:0\"\n", None, "mesh.gossip");
}

#[test]
fn plans_reserve_capacity_only_for_a_client_about_to_download() {
    let root = tempfile::tempdir().unwrap();
    write_file(root.path(), "video/clip.mp4", &content(MIB, 61));
    publish(root.path());
    let origin = start_origin(root.path());
    let dir = tempfile::tempdir().unwrap();
    let caches = start_eu_mesh(
        &origin.url,
        dir.path(),
        &["r1", "r2"],
        &["--egress-mbps", "20"],
    );
    // 8 Mbit/s x 1.5 = 12 Mbit/s a plan, on 2 x 20 Mbit/s of caches.
    let selector = support::start_selector(dir.path(), &gossip_addr(&caches[0]), 8, "");
    wait_for_selector_view(&selector, 2);
    let plan_url = format!("{}/plan?path=/video/clip.mp4", selector.url);
    // A monitoring loop: however often it asks, the caches stay free.
    for _ in 0..30 {
        let (status, plan) = get_json(&plan_url);
        assert_eq!(status, 200);
        assert_eq!(plan["shortfall_mbps"], 0.0, "{plan}");
    }
    // Clients about to download: their shares count until gossip shows
    // them, so a burst soon runs the caches short.
    let mut short = false;
    for _ in 0..10 {
        let (status, plan) = get_json(&format!("{plan_url}&reserve=1"));
        assert_eq!(status, 200);
        short |= plan["shortfall_mbps"].as_f64().unwrap() > 0.0;
    }
    assert!(
        short,
        "ten reserved plans of 12 Mbit/s fit in 2 x 20 Mbit/s"
    );
    let (status, _) = get_json(&format!("{plan_url}&reserve=maybe"));
    assert_eq!(status, 400);
}

/// Percent-encodes every byte (as BitTorrent clients send binary values).
fn percent_all(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("%{b:02X}")).collect()
}

#[test]
fn the_selector_tracks_viewers_swarms_and_answers_compact_peer_lists() {
    let root = tempfile::tempdir().unwrap();
    write_file(root.path(), "a.bin", &content(1024, 1));
    let origin = start_origin(root.path());
    let dir = tempfile::tempdir().unwrap();
    let caches = start_mesh(&origin.url, dir.path(), &[("t1", "eu")], &[]);
    let selector = support::start_selector(dir.path(), &gossip_addr(&caches[0]), 10, "");
    let info_hash = percent_all(&[0x5a; 20]);
    let announce = |peer: u8, port: u16, left: u64, from: &str, event: &str| {
        let url = format!(
            "{}/announce?info_hash={info_hash}&peer_id={}&port={port}&uploaded=0&downloaded=0&left={left}&compact=1{event}",
            selector.url,
            percent_all(&[peer; 20])
        );
        curl(&url, &["--interface", from])
    };
    let first = announce(1, 6001, 100, "127.0.0.1", "&event=started");
    assert_eq!(first.status, 200);
    assert!(
        first.body.starts_with(b"d8:complete"),
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    // The second peer, from another address, is told of the first: its
    // address as the selector saw it and the port it announced, 6 bytes.
    let second = announce(2, 6002, 0, "127.0.0.2", "&event=started");
    assert_eq!(second.status, 200);
    let expected: &[u8] = b"5:peers6:\x7f\x00\x00\x01\x17\x71";
    assert!(
        second.body.windows(expected.len()).any(|w| w == expected),
        "{:?}",
        String::from_utf8_lossy(&second.body)
    );
    // A malformed announce: a tracker's refusal, with the reason.
    let bad = curl(
        &format!("{}/announce?info_hash=%AB&port=1", selector.url),
        &[],
    );
    assert_eq!(bad.status, 200);
    assert!(String::from_utf8_lossy(&bad.body).contains("failure reason"));
    // Announcing again at once (no event) is refused; scrape counts one
    // seed and one peer still downloading.
    let again = announce(1, 6001, 100, "127.0.0.1", "");
    assert!(String::from_utf8_lossy(&again.body).contains("too often"));
    // A plan names the object's swarm and this selector as its tracker.
    support::wait_for_selector(&selector, 1);
    let (status, plan) = get_json(&format!("{}/plan?path=/a.bin", selector.url));
    assert_eq!(status, 200, "{plan}");
    let id = plan["object"]["id"]
        .as_str()
        .expect("the shield knows the object");
    let key = shoal_peer::SwarmKey::for_object(&shoal_core::ObjectId::from_hex(id).unwrap());
    assert_eq!(plan["swarm"]["key"], key.to_hex());
    let tracker = plan["swarm"]["tracker"].as_str().unwrap();
    assert_eq!(tracker, format!("{}/announce?service=all", selector.url));
    // A service with peer-to-peer off names no swarm.
    let dir_off = tempfile::tempdir().unwrap();
    let off = support::start_selector_service(
        dir_off.path(),
        &gossip_addr(&caches[0]),
        10,
        "",
        "p2p = false",
    );
    support::wait_for_selector(&off, 1);
    let (status, plan) = get_json(&format!("{}/plan?path=/a.bin", off.url));
    assert_eq!(status, 200, "{plan}");
    assert!(plan["swarm"].is_null(), "{plan}");
    let scrape = curl(
        &format!("{}/scrape?info_hash={info_hash}", selector.url),
        &[],
    );
    let text = String::from_utf8_lossy(&scrape.body).to_string();
    assert!(
        text.contains("8:completei1e") && text.contains("10:incompletei1e"),
        "{text}"
    );
}

/// Two selectors act as one tracker: a peer that announced to one is
/// found by a peer that asks the other (each swarm is homed at one of
/// them, the other forwards), and when the home dies the survivor serves
/// the swarm from the next announces on.
#[test]
fn two_selectors_act_as_one_tracker() {
    let root = tempfile::tempdir().unwrap();
    write_file(root.path(), "a.bin", &content(1024, 1));
    let origin = start_origin(root.path());
    let dir = tempfile::tempdir().unwrap();
    let caches = start_mesh(&origin.url, dir.path(), &[("t1", "eu")], &[]);
    let (dir1, dir2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut selectors = vec![
        support::start_selector(dir1.path(), &gossip_addr(&caches[0]), 10, ""),
        support::start_selector(dir2.path(), &gossip_addr(&caches[0]), 10, ""),
    ];
    for selector in &selectors {
        wait_until(
            "the selectors see each other",
            Duration::from_secs(20),
            || {
                let (_, mesh) = get_json(&format!("{}/_shoal/mesh", selector.url));
                mesh["selectors"].as_array().map(Vec::len) == Some(2)
            },
        );
    }
    let announce = |selector: &Proc, info_hash: &str, peer: u8, port: u16, from: &str| {
        let url = format!(
            "{}/announce?info_hash={info_hash}&peer_id={}&port={port}&uploaded=0&downloaded=0&left=100&compact=1&event=started&service=all",
            selector.url,
            percent_all(&[peer; 20])
        );
        let answer = curl(&url, &["--interface", from]);
        assert_eq!(answer.status, 200);
        shoal_peer::tracker::AnnounceAnswer::decode(&answer.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&answer.body)))
    };
    // Several swarms, so some are homed at each selector.
    for n in 0..6u8 {
        let info_hash = percent_all(&[0x40 + n; 20]);
        let first = announce(&selectors[0], &info_hash, 1, 6001, "127.0.0.1");
        assert!(first.peers.is_empty());
        let second = announce(&selectors[1], &info_hash, 2, 6002, "127.0.0.2");
        let expected: std::net::SocketAddr = "127.0.0.1:6001".parse().unwrap();
        assert_eq!(
            second.peers,
            vec![expected],
            "swarm {n}: the peer announced at the other selector, at its own address"
        );
    }
    // A forged forward (no cluster signature) is refused.
    let forged = curl(
        &format!(
            "{}/announce?info_hash={}&peer_id={}&port=1&uploaded=0&downloaded=0&left=1&shoal_announce_from=10.9.9.9",
            selectors[0].url,
            percent_all(&[0x40; 20]),
            percent_all(&[9; 20])
        ),
        &[],
    );
    assert!(String::from_utf8_lossy(&forged.body).contains("failure reason"));
    // Per-service figures at the homes: every swarm is counted once.
    let homed: u64 = selectors
        .iter()
        .map(|s| {
            let (_, swarms) = get_json(&format!("{}/_shoal/swarms", s.url));
            swarms["services"]["all"]["swarms"].as_u64().unwrap_or(0)
        })
        .sum();
    assert_eq!(homed, 6);
    // The first selector dies: the survivor serves every swarm once the
    // peers announce again.
    selectors[0].kill9();
    let survivor = &selectors[1];
    wait_until(
        "the survivor sees it alone",
        Duration::from_secs(20),
        || {
            let (_, mesh) = get_json(&format!("{}/_shoal/mesh", survivor.url));
            mesh["selectors"].as_array().map(Vec::len) == Some(1)
        },
    );
    for n in 0..6u8 {
        let info_hash = percent_all(&[0x40 + n; 20]);
        announce(survivor, &info_hash, 3, 6003, "127.0.0.3");
        let again = announce(survivor, &info_hash, 4, 6004, "127.0.0.4");
        assert!(
            again.peers.contains(&"127.0.0.3:6003".parse().unwrap()),
            "swarm {n} re-formed at the survivor: {:?}",
            again.peers
        );
    }
}
