//! Versions end to end: a file republished at the origin reaches every
//! cache of a mesh within its freshness (origin `Cache-Control`, else the
//! cache's default), pieces both versions share are not fetched again,
//! pinned URLs never mix two versions, and counters say where bytes came
//! from. Real processes on loopback: `shoal origin` and nginx as origins,
//! curl, aria2c and `shoal get` as clients.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};
use support::*;

const MIB: u64 = 1 << 20;
const OBJECT: &str = "/downloads/installer.exe";
/// [`OBJECT`] relative to the origin's root.
const OBJECT_FILE: &str = "downloads/installer.exe";

/// Which origin serves the files.
#[derive(Clone, Copy, Debug)]
enum OriginKind {
    Shoal,
    Nginx,
}

struct Origin {
    proc: Proc,
    _nginx_dir: Option<tempfile::TempDir>,
}

/// `cache_control`: sent by the origin on every object when set.
fn start_any_origin(kind: OriginKind, root: &Path, cache_control: Option<&str>) -> Origin {
    match kind {
        OriginKind::Shoal => {
            let env: Vec<(&str, &str)> = cache_control
                .map(|cc| ("SHOAL_ORIGIN_CACHE_CONTROL", cc))
                .into_iter()
                .collect();
            let proc = start_shoal(
                &[
                    "origin",
                    "--root",
                    root.to_str().unwrap(),
                    "--listen",
                    "127.0.0.1:0",
                ],
                &env,
            );
            Origin {
                proc,
                _nginx_dir: None,
            }
        }
        OriginKind::Nginx => {
            let extra = cache_control
                .map(|cc| format!("add_header Cache-Control \"{cc}\" always;"))
                .unwrap_or_default();
            let (proc, dir) = start_nginx(root, &extra);
            Origin {
                proc,
                _nginx_dir: Some(dir),
            }
        }
    }
}

fn start_three(origin_url: &str, dir: &Path, extra: &[&str]) -> Vec<Proc> {
    start_eu_mesh(origin_url, dir, &["c1", "c2", "c3"], extra)
}

/// A digest to compare bodies by (and print on failure).
fn sha(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex()[..16].to_string()
}

/// The id `shoal publish` gave the file at `rel`.
fn published_id(root: &Path, rel: &str) -> String {
    let bytes = std::fs::read(root.join(format!(".shoal/manifests{rel}.shoalmf"))).unwrap();
    shoal_core::Manifest::decode(&bytes).unwrap().id().to_hex()
}

/// `v1` with piece `piece` (of [`PIECE`] bytes) changed: same size.
fn with_piece_changed(v1: &[u8], piece: u64, seed: u8) -> Vec<u8> {
    let mut v2 = v1.to_vec();
    let start = (piece * PIECE) as usize;
    for (i, b) in v2[start..start + PIECE as usize].iter_mut().enumerate() {
        *b = b.wrapping_add(seed).wrapping_add(i as u8 | 1);
    }
    v2
}

fn total(caches: &[Proc], stat_name: &str) -> u64 {
    caches.iter().map(|c| stat(&c.url, stat_name)).sum()
}

/// Republishes at the origin and measures how long until every cache
/// serves the new version; returns the seconds taken.
fn republish_round(kind: OriginKind, origin_cache_control: Option<&str>, default_s: &str) -> f64 {
    let root = tempfile::tempdir().unwrap();
    let v1 = content(4 * MIB, 71);
    write_file(root.path(), OBJECT_FILE, &v1);
    publish(root.path());
    let origin = start_any_origin(kind, root.path(), origin_cache_control);
    let dir = tempfile::tempdir().unwrap();
    let caches = start_three(
        &origin.proc.url,
        dir.path(),
        &["--freshness-default-s", default_s],
    );
    for cache in &caches {
        let got = curl(&format!("{}{OBJECT}", cache.url), &[]);
        assert_eq!(got.status, 200);
        assert_eq!(sha(&got.body), sha(&v1), "{kind:?}: first version");
    }
    let origin_bytes_before = total(&caches, "origin_bytes");
    assert_eq!(origin_bytes_before, 4 * MIB, "{kind:?}: fetched once");

    // Same size, one piece changed, written in place (nginx's ETag, from
    // mtime seconds and size, may well not change: the manifest must).
    let v2 = with_piece_changed(&v1, 5, 3);
    write_file(root.path(), OBJECT_FILE, &v2);
    publish(root.path());
    let v2_id = published_id(root.path(), OBJECT);
    let republished = Instant::now();
    let mut switched = vec![None; caches.len()];
    while switched.iter().any(Option::is_none) {
        assert!(
            republished.elapsed() < Duration::from_secs(30),
            "{kind:?}: not every cache serves the new version after 30 s: {switched:?}"
        );
        for (i, cache) in caches.iter().enumerate() {
            if switched[i].is_some() {
                continue;
            }
            let head = curl(&format!("{}{OBJECT}", cache.url), &["-I"]);
            if head.header("x-shoal-object-id") == Some(v2_id.as_str()) {
                switched[i] = Some(republished.elapsed().as_secs_f64());
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for cache in &caches {
        let got = curl(&format!("{}{OBJECT}", cache.url), &[]);
        assert_eq!(got.status, 200);
        assert_eq!(sha(&got.body), sha(&v2), "{kind:?}: new version's bytes");
        assert_eq!(got.header("x-shoal-object-id"), Some(v2_id.as_str()));
    }
    // Only the changed piece crossed from the origin again; the mesh's
    // caches copied the other 15 from the version they held.
    let origin_bytes_after = total(&caches, "origin_bytes");
    assert_eq!(
        origin_bytes_after - origin_bytes_before,
        PIECE,
        "{kind:?}: only the changed piece is fetched again"
    );
    assert!(total(&caches, "pieces_carried_over") >= 3 * 15);
    assert!(total(&caches, "versions_replaced") >= 3);
    switched.iter().flatten().cloned().fold(0.0, f64::max)
}

#[test]
fn a_republished_file_reaches_every_cache_within_the_default_freshness() {
    for kind in [OriginKind::Shoal, OriginKind::Nginx] {
        let took = republish_round(kind, None, "2");
        // 2 s of freshness, then one revalidation (plus polling slack).
        assert!(took < 4.5, "{kind:?}: took {took:.1} s");
        eprintln!("{kind:?}, no Cache-Control, 2 s default: every cache in {took:.2} s");
    }
}

#[test]
fn a_republished_file_reaches_every_cache_within_the_origins_max_age() {
    for kind in [OriginKind::Shoal, OriginKind::Nginx] {
        // The origin's word wins over the cache's (long) default.
        let took = republish_round(kind, Some("max-age=2"), "600");
        assert!(took < 4.5, "{kind:?}: took {took:.1} s");
        eprintln!("{kind:?}, max-age=2: every cache in {took:.2} s");
    }
}

/// aria2c through the selector: it follows the redirect and blends the
/// `Link: rel=duplicate` mirrors (`-x8 -s8 -k1M`); `None` if it gave up.
fn aria2c_via(url: &str, from: &str) -> Option<Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(find_tool("aria2c"))
        .args([
            "-x8",
            "-s8",
            "-k1M",
            "-q",
            "--max-tries=2",
            "--retry-wait=1",
            "--connect-timeout=2",
            "--timeout=10",
            "--allow-overwrite=true",
            "--auto-file-renaming=false",
            "--file-allocation=none",
        ])
        .arg(format!("--interface={from}"))
        .args(["-d", dir.path().to_str().unwrap(), "-o", "out", url])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run aria2c");
    status
        .success()
        .then(|| std::fs::read(dir.path().join("out")).unwrap_or_default())
}

/// `shoal get` through the selector; `None` if it failed.
fn shoal_get_via(url: &str, from: &str) -> Option<Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let output = std::process::Command::new(shoal_bin())
        .args(["get", url, "-o", out.to_str().unwrap(), "--quiet"])
        .args(["--local-address", from])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run shoal get");
    if !output.status.success() {
        eprintln!(
            "shoal get failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    output
        .status
        .success()
        .then(|| std::fs::read(&out).unwrap_or_default())
}

/// A client's name and what it downloaded (`None`: it failed).
type Download = std::thread::JoinHandle<(&'static str, Option<Vec<u8>>)>;

#[test]
fn republishing_while_caches_restart_never_hands_a_client_two_versions() {
    // nginx, which sends no Cache-Control: the caches' 1 s default.
    torture(OriginKind::Nginx, None, 20, 90);
}

#[test]
fn republishing_behind_an_origin_with_max_age_never_mixes_either() {
    torture(OriginKind::Shoal, Some("max-age=1"), 10, 95);
}

/// `rounds` of: clients start through the selector (curl, two aria2c,
/// `shoal get`), the file changes and is published again, one cache is
/// killed and restarted; every completed download must be one version.
fn torture(kind: OriginKind, cache_control: Option<&str>, rounds: usize, seed: u64) {
    let root = tempfile::tempdir().unwrap();
    let mut current = content(8 * MIB, seed);
    write_file(root.path(), OBJECT_FILE, &current);
    publish(root.path());
    let mut versions = std::collections::HashSet::new();
    versions.insert(sha(&current));
    let origin = start_any_origin(kind, root.path(), cache_control);
    let origin = &origin.proc;
    let dir = tempfile::tempdir().unwrap();
    // Capped caches with a 1 s freshness: downloads overlap version changes.
    let extra = ["--freshness-default-s", "1", "--egress-mbps", "200"];
    let mut caches = start_three(&origin.url, dir.path(), &extra);
    let names = ["c1", "c2", "c3"];
    let gossips: Vec<String> = caches.iter().map(gossip_addr).collect();
    // Each round's clients come from their own address: the selector
    // keeps a client's version while it keeps asking (aria2c opens later
    // connections on the selector's URL), and moves the next round on.
    let selector = start_selector(dir.path(), &gossips[0], 40, "version_affinity_s = 2");
    wait_for_selector(&selector, 3);
    let url = format!("{}{OBJECT}", selector.url);

    let (mut completed, mut mixed) = (0, 0);
    let mut failed: std::collections::BTreeMap<&str, usize> = Default::default();
    for round in 0..rounds {
        let clients: Vec<Download> = ["curl", "aria2c", "aria2c", "shoal get"]
            .into_iter()
            .map(|client| {
                let url = url.clone();
                let from = format!("127.0.1.{}", round + 1);
                std::thread::spawn(move || {
                    let body = match client {
                        "curl" => {
                            let got = curl(&url, &["-L", "--interface", &from]);
                            if !(got.exit_code == 0 && got.status == 200) {
                                eprintln!(
                                    "curl: exit {} status {} {}",
                                    got.exit_code,
                                    got.status,
                                    String::from_utf8_lossy(&got.body[..got.body.len().min(300)])
                                );
                            }
                            (got.exit_code == 0 && got.status == 200).then_some(got.body)
                        }
                        "aria2c" => aria2c_via(&url, &from),
                        _ => shoal_get_via(&url, &from),
                    };
                    (client, body)
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(100 + 97 * (round as u64 % 4)));
        // A new version: a different piece changes each round.
        current = with_piece_changed(&current, (round as u64 * 7) % 32, round as u8 + 1);
        write_file(root.path(), OBJECT_FILE, &current);
        publish(root.path());
        versions.insert(sha(&current));
        // Restart one cache (kill -9, same ports and store).
        let i = (round * 5 + 1) % 3;
        let port = caches[i].url.rsplit(':').next().unwrap().to_string();
        let listen = format!("127.0.0.1:{port}");
        caches[i].kill9();
        let seeds = vec![gossips[(i + 1) % 3].clone()];
        let mut args = extra.to_vec();
        args.extend(["--listen", &listen]);
        caches[i] = start_mesh_cache(
            &origin.url,
            &dir.path().join(names[i]),
            names[i],
            "eu",
            &seeds,
            Some(&gossips[i]),
            &args,
        );
        for client in clients {
            let (who, body) = client.join().unwrap();
            match body {
                Some(body) if versions.contains(&sha(&body)) => completed += 1,
                Some(body) => {
                    mixed += 1;
                    eprintln!(
                        "round {round}: {who} got {} bytes matching no version",
                        body.len()
                    );
                    // What the mesh says now, for whoever reads the log.
                    let plan = curl(&format!("{}/plan?path={OBJECT}", selector.url), &[]);
                    eprintln!("  plan now: {}", String::from_utf8_lossy(&plan.body));
                    for cache in &caches {
                        let head = curl(&format!("{}{OBJECT}", cache.url), &["-I"]);
                        eprintln!("  {} now: {} {:?}", cache.name, head.status, head.headers);
                    }
                }
                None => *failed.entry(who).or_default() += 1,
            }
        }
    }
    eprintln!(
        "{kind:?}: {rounds} rounds: {completed} downloads whole, failed {failed:?}, {mixed} mixed ({} versions)",
        versions.len()
    );
    assert_eq!(mixed, 0, "downloads that match no single version");
    // Most complete even on a loaded machine (the rest are cut by the
    // killed cache or refused cleanly): the rounds did exercise the mix.
    assert!(
        completed >= rounds * 4 / 2,
        "{completed} of {} downloads completed",
        rounds * 4
    );
}

/// Runs `shoal ARGS` to completion with the test mesh's secret; its stdout.
fn shoal_command(args: &[&str]) -> String {
    let output = std::process::Command::new(shoal_bin())
        .args(args)
        .env("SHOAL_CACHE_MESH__CLUSTER_SECRET", CLUSTER_SECRET)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run shoal");
    assert!(
        output.status.success(),
        "shoal {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn a_purge_reaches_every_cache_and_one_that_was_down_does_not_serve_the_purged_version() {
    let root = tempfile::tempdir().unwrap();
    let v1 = content(3 * MIB, 91);
    let file = write_file(root.path(), OBJECT_FILE, &v1);
    // Unpublished, behind nginx: a change that keeps size and mtime keeps
    // nginx's validators too, so no revalidation can see it; only a purge.
    let (nginx, _nginx_dir) = start_nginx(root.path(), "");
    let dir = tempfile::tempdir().unwrap();
    let mut caches = start_three(&nginx.url, dir.path(), &["--freshness-default-s", "600"]);
    for cache in &caches {
        assert_eq!(
            sha(&curl(&format!("{}{OBJECT}", cache.url), &[]).body),
            sha(&v1)
        );
    }
    let mtime = std::fs::metadata(&file).unwrap().modified().unwrap();
    let v2 = with_piece_changed(&v1, 2, 9);
    std::fs::write(&file, &v2).unwrap();
    set_mtime(&file, mtime);
    for cache in &caches {
        assert_eq!(
            sha(&curl(&format!("{}{OBJECT}", cache.url), &[]).body),
            sha(&v1),
            "nothing could have told the cache"
        );
    }
    // c3 is down while the operator purges.
    let gossip3 = gossip_addr(&caches[2]);
    let port3 = caches[2].url.rsplit(':').next().unwrap().to_string();
    caches[2].kill9();
    wait_for_mesh(&[&caches[0].url, &caches[1].url], 2);
    let answer = shoal_command(&["purge", "--cache", &caches[0].url, "--path", OBJECT]);
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["caches"].as_object().unwrap().len(), 2, "{answer}");
    for cache in &caches[..2] {
        let got = curl(&format!("{}{OBJECT}", cache.url), &[]);
        assert_eq!(
            sha(&got.body),
            sha(&v2),
            "{}: purged, fetched afresh",
            cache.name
        );
        assert_eq!(stat(&cache.url, "purges"), 1);
    }
    // c3 comes back with its store: it learns the purge before it serves.
    let listen = format!("127.0.0.1:{port3}");
    caches[2] = start_mesh_cache(
        &nginx.url,
        &dir.path().join("c3"),
        "c3",
        "eu",
        &[gossip_addr(&caches[0])],
        Some(&gossip3),
        &["--freshness-default-s", "600", "--listen", &listen],
    );
    let got = curl(&format!("{}{OBJECT}", caches[2].url), &[]);
    assert_eq!(sha(&got.body), sha(&v2), "c3 served the purged version");
    assert_eq!(stat(&caches[2].url, "purges"), 1);

    // A prefix purge, soft: every cache revalidates, nothing is refetched.
    let origin_before = total(&caches, "origin_bytes");
    shoal_command(&[
        "purge",
        "--cache",
        &caches[1].url,
        "--prefix",
        "/downloads/",
        "--soft",
    ]);
    for cache in &caches {
        assert_eq!(
            sha(&curl(&format!("{}{OBJECT}", cache.url), &[]).body),
            sha(&v2)
        );
    }
    assert_eq!(total(&caches, "origin_bytes"), origin_before);
    // Operators get clear refusals.
    let unsigned = curl(
        &format!(
            "{}/_shoal/purge?path=/downloads/installer.exe",
            caches[0].url
        ),
        &["-X", "POST"],
    );
    assert_eq!(unsigned.status, 403);
    let output = std::process::Command::new(shoal_bin())
        .args(["purge", "--cache", &caches[0].url, "--prefix", "downloads"])
        .env("SHOAL_CACHE_MESH__CLUSTER_SECRET", CLUSTER_SECRET)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("prefix"));
}

#[test]
fn publish_notify_makes_the_mesh_serve_a_republished_file_at_once() {
    let root = tempfile::tempdir().unwrap();
    let v1 = content(4 * MIB, 92);
    write_file(root.path(), OBJECT_FILE, &v1);
    publish(root.path());
    let origin = start_origin(root.path());
    let dir = tempfile::tempdir().unwrap();
    // A long freshness: without the notice, 10 minutes of the old version.
    let caches = start_three(&origin.url, dir.path(), &["--freshness-default-s", "600"]);
    for cache in &caches {
        assert_eq!(
            sha(&curl(&format!("{}{OBJECT}", cache.url), &[]).body),
            sha(&v1)
        );
    }
    let origin_before = total(&caches, "origin_bytes");
    let v2 = with_piece_changed(&v1, 7, 5);
    write_file(root.path(), OBJECT_FILE, &v2);
    let said = shoal_command(&[
        "publish",
        root.path().to_str().unwrap(),
        "--notify",
        &caches[2].url,
    ]);
    assert!(said.contains("1 path(s) revalidate now"), "{said}");
    for cache in &caches {
        let got = curl(&format!("{}{OBJECT}", cache.url), &[]);
        assert_eq!(sha(&got.body), sha(&v2), "{}", cache.name);
    }
    assert_eq!(total(&caches, "origin_bytes") - origin_before, PIECE);
}

#[test]
fn a_file_changed_without_republishing_is_refused_cleanly_until_published_again() {
    let root = tempfile::tempdir().unwrap();
    let v1 = content(4 * MIB, 93);
    let file = write_file(root.path(), OBJECT_FILE, &v1);
    publish(root.path());
    let (nginx, _nginx_dir) = start_nginx(root.path(), "");
    let dir = tempfile::tempdir().unwrap();
    let cache = start_cache(
        &nginx.url,
        &dir.path().join("cache"),
        "1GiB",
        &[
            ("SHOAL_CACHE_FRESHNESS_DEFAULT_S", "600"),
            // Runs of 1 MiB, so a 1 MiB read leaves the rest uncached.
            ("SHOAL_CACHE_FILL_RUN_BYTES_MAX", "1048576"),
        ],
    );
    let url = format!("{}{OBJECT}", cache.url);
    // Part of it cached.
    let first = curl(&url, &["-r", "0-1048575"]);
    assert_eq!(first.status, 206);
    assert!(first.body == v1[..MIB as usize]);
    // Changed in place, same size and mtime, no `shoal publish`: the
    // manifest no longer describes the file, and nothing else says so.
    let mtime = std::fs::metadata(&file).unwrap().modified().unwrap();
    let v2 = with_piece_changed(&v1, 9, 4);
    std::fs::write(&file, &v2).unwrap();
    set_mtime(&file, mtime);
    // A range whose first piece fails the manifest: a clean 502 before any
    // header (never the unverified bytes), and again without asking the
    // origin while the failure is fresh.
    let (from, to) = (9 * PIECE as usize, 11 * PIECE as usize);
    let range = format!("{from}-{}", to - 1);
    let refused = curl(&url, &["-r", &range]);
    assert_eq!(refused.status, 502);
    let origin_requests = stat(&cache.url, "origin_requests");
    let again = curl(&url, &["-r", &range]);
    assert_eq!(again.status, 502);
    assert!(
        String::from_utf8_lossy(&again.body).contains("publish it again"),
        "{}",
        String::from_utf8_lossy(&again.body)
    );
    assert_eq!(stat(&cache.url, "origin_requests"), origin_requests);
    // What the manifest still describes is served.
    assert!(curl(&url, &["-r", "0-1048575"]).body == v1[..MIB as usize]);
    // Published again (forced: size and mtime did not change): the cache
    // resolves the path again on the next failure and serves the new
    // version, long before its freshness (600 s) runs out.
    shoal_command(&["publish", root.path().to_str().unwrap(), "--force"]);
    let republished = published_id(root.path(), OBJECT);
    wait_until("the republished version", Duration::from_secs(10), || {
        let got = curl(&url, &["-r", &range]);
        got.status == 206 && got.body == v2[from..to]
    });
    let whole = curl(&url, &[]);
    assert_eq!(sha(&whole.body), sha(&v2));
    assert_eq!(
        whole.header("x-shoal-object-id"),
        Some(republished.as_str())
    );
}

#[test]
fn an_etag_from_the_origin_or_any_cache_revalidates_anywhere_in_the_mesh() {
    let root = tempfile::tempdir().unwrap();
    let v1 = content(2 * MIB, 94);
    let file = write_file(root.path(), OBJECT_FILE, &v1);
    // Written a while ago: its validators are strong (RFC 9110 8.8.2.2).
    let past = std::time::SystemTime::now() - Duration::from_secs(30);
    set_mtime(&file, past);
    publish(root.path());
    let origin = start_origin(root.path());
    let dir = tempfile::tempdir().unwrap();
    let caches = start_three(&origin.url, dir.path(), &["--freshness-default-s", "600"]);
    let selector = start_selector(
        dir.path(),
        &gossip_addr(&caches[0]),
        8,
        "version_affinity_s = 0",
    );
    wait_for_selector(&selector, 3);
    let origin_etag = curl(&format!("{}{OBJECT}", origin.url), &["-I"])
        .header("etag")
        .unwrap()
        .to_string();
    let if_none_match = format!("If-None-Match: {origin_etag}");
    for cache in &caches {
        let got = curl(&format!("{}{OBJECT}", cache.url), &[]);
        assert_eq!(
            got.header("etag"),
            Some(origin_etag.as_str()),
            "{}",
            cache.name
        );
        let again = curl(&format!("{}{OBJECT}", cache.url), &["-H", &if_none_match]);
        assert_eq!(again.status, 304, "{}", cache.name);
        assert!(again.body.is_empty());
    }
    // The selector agrees, and answers the revalidation itself.
    let via = curl(
        &format!("{}{OBJECT}", selector.url),
        &["-H", &if_none_match],
    );
    assert_eq!(via.status, 304);
    assert_eq!(via.header("etag"), Some(origin_etag.as_str()));
    // A new version: the old tag no longer matches anywhere.
    let v2 = with_piece_changed(&v1, 1, 6);
    write_file(root.path(), OBJECT_FILE, &v2);
    shoal_command(&[
        "publish",
        root.path().to_str().unwrap(),
        "--notify",
        &caches[0].url,
    ]);
    for cache in &caches {
        let got = curl(&format!("{}{OBJECT}", cache.url), &["-H", &if_none_match]);
        assert_eq!(got.status, 200, "{}", cache.name);
        assert_eq!(sha(&got.body), sha(&v2));
        assert_ne!(got.header("etag"), Some(origin_etag.as_str()));
    }
}

#[test]
fn a_cache_the_purge_did_not_reach_catches_up_from_the_gossip() {
    let root = tempfile::tempdir().unwrap();
    let v1 = content(2 * MIB, 96);
    let file = write_file(root.path(), OBJECT_FILE, &v1);
    let (nginx, _nginx_dir) = start_nginx(root.path(), "");
    let dir = tempfile::tempdir().unwrap();
    let caches = start_three(&nginx.url, dir.path(), &["--freshness-default-s", "600"]);
    for cache in &caches {
        assert_eq!(
            sha(&curl(&format!("{}{OBJECT}", cache.url), &[]).body),
            sha(&v1)
        );
    }
    // Changed in place with the same validators: only a purge can tell.
    let mtime = std::fs::metadata(&file).unwrap().modified().unwrap();
    let v2 = with_piece_changed(&v1, 1, 8);
    std::fs::write(&file, &v2).unwrap();
    set_mtime(&file, mtime);
    // The event reaches c1 alone, as a peer would pass it on (c1 does not
    // pass it further): c2 and c3 learn it from c1's gossip.
    let event = "id=00000000c0ffee01&at=1700000000000&path=/downloads/installer.exe";
    let target = format!("/_shoal/peer/purge?{event}");
    let key = shoal_core::auth::ClusterKey::from_secret(CLUSTER_SECRET).unwrap();
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 60;
    let token = key.sign("tester", expires, "GET", &target).unwrap();
    let applied = curl(
        &format!("{}{target}", caches[0].url),
        &["-H", &format!("x-shoal-auth: {token}")],
    );
    assert_eq!(
        applied.status,
        200,
        "{}",
        String::from_utf8_lossy(&applied.body)
    );
    wait_until(
        "every cache applied the purge",
        Duration::from_secs(15),
        || caches.iter().all(|c| stat(&c.url, "purges") == 1),
    );
    for cache in &caches {
        let got = curl(&format!("{}{OBJECT}", cache.url), &[]);
        assert_eq!(sha(&got.body), sha(&v2), "{}", cache.name);
    }
}

/// A publisher rewriting a file in place leaves it empty for an instant;
/// a cache that saw it then serves that (empty) version only while the
/// origin's freshness allows, and every cache moves on after.
#[test]
fn an_origin_file_caught_empty_mid_rewrite_is_not_served_past_its_freshness() {
    let root = tempfile::tempdir().unwrap();
    let first = content(8 * MIB, 3);
    write_file(root.path(), OBJECT_FILE, &first);
    publish(root.path());
    let origin = start_any_origin(OriginKind::Shoal, root.path(), Some("max-age=1"));
    let dir = tempfile::tempdir().unwrap();
    let caches = start_three(
        &origin.proc.url,
        dir.path(),
        &["--freshness-default-s", "1"],
    );
    let gossips: Vec<String> = caches.iter().map(gossip_addr).collect();
    let selector = start_selector(dir.path(), &gossips[0], 40, "version_affinity_s = 2");
    wait_for_selector(&selector, 3);
    let url = format!("{}{OBJECT}", selector.url);
    assert!(curl(&url, &["-L"]).body == first);
    // The file is empty for a moment (truncated, not yet written) and a
    // client asks then.
    std::thread::sleep(Duration::from_millis(2_100));
    write_file(root.path(), OBJECT_FILE, b"");
    let during = curl(&url, &["-L"]);
    assert_eq!(during.status, 200);
    // The rewrite completes and is published.
    let second = content(8 * MIB, 4);
    write_file(root.path(), OBJECT_FILE, &second);
    publish(root.path());
    std::thread::sleep(Duration::from_millis(2_100));
    for cache in &caches {
        let got = curl(&format!("{}{OBJECT}", cache.url), &[]);
        assert!(
            got.body == second,
            "{} serves {} bytes",
            cache.name,
            got.body.len()
        );
    }
    for from in ["127.0.2.1", "127.0.2.2"] {
        let got = curl(&url, &["-L", "--interface", from]);
        assert!(
            got.body == second,
            "via the selector: {} bytes",
            got.body.len()
        );
    }
}

/// A purge through one cache drops the path's whole responses (a page, a
/// directory index) on every cache of the mesh, not only its pieces: each
/// serves the origin's new answer at once, long before the old one would
/// have gone stale.
#[test]
fn a_purge_drops_whole_responses_on_every_cache() {
    let origin = support::any_origin::AnyOrigin::start();
    let dir = tempfile::tempdir().unwrap();
    let caches = start_three(&origin.url, dir.path(), &[]);
    let path = "/site/";
    origin.set(path, "body=before&h=Cache-Control:max-age%3D600");
    for round in ["first", "stored"] {
        for cache in &caches {
            let got = curl(&format!("{}{path}", cache.url), &[]);
            assert_eq!(got.body, b"before", "{round} at {}", cache.name);
        }
    }
    let asked_before = origin.count("GET", path);
    assert!(asked_before <= 3, "stored: {asked_before} origin requests");
    origin.set(path, "body=after&h=Cache-Control:max-age%3D600");
    let answer = shoal_command(&["purge", "--cache", &caches[0].url, "--path", path]);
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["caches"].as_object().unwrap().len(), 3, "{answer}");
    for cache in &caches {
        let got = curl(&format!("{}{path}", cache.url), &[]);
        assert_eq!(got.body, b"after", "purged at {}", cache.name);
    }
}
