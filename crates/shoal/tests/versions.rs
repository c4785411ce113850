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
    let mut caches: Vec<Proc> = Vec::new();
    for name in ["c1", "c2", "c3"] {
        let seeds: Vec<String> = caches.first().map(gossip_addr).into_iter().collect();
        caches.push(start_mesh_cache(
            origin_url,
            &dir.join(name),
            name,
            "eu",
            &seeds,
            None,
            extra,
        ));
    }
    let urls: Vec<&str> = caches.iter().map(|c| c.url.as_str()).collect();
    wait_for_mesh(&urls, 3);
    caches
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
