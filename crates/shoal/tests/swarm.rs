//! Viewers' swarms with real processes: `shoal get` peers on distinct
//! loopback addresses, caches filling the gap, the selector as tracker.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use support::*;

const MIB: u64 = 1 << 20;

/// Starts `shoal get` from `address` (`extra` flags added); returns the
/// child and where it writes.
fn start_peer(
    url: &str,
    dir: &Path,
    address: &str,
    extra: &[&str],
) -> (std::process::Child, std::path::PathBuf) {
    let out = dir.join(format!("peer-{address}.bin"));
    let mut args = vec![
        "get",
        url,
        "-o",
        out.to_str().unwrap(),
        "--json",
        "--quiet",
        "--local-address",
        address,
    ];
    args.extend_from_slice(extra);
    let child = Command::new(shoal_bin())
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn shoal get");
    (child, out)
}

/// Waits for a peer; its JSON summary (panics with its stderr if it failed).
fn finish_peer(child: std::process::Child) -> serde_json::Value {
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "shoal get failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("summary JSON")
}

#[test]
fn peers_download_from_each_other_and_the_caches_fill_the_gap() {
    let root = tempfile::tempdir().unwrap();
    let size = 24 * MIB + 12345;
    let data = content(size, 7);
    write_file(root.path(), "patch.bin", &data);
    publish(root.path());
    let origin = start_origin(root.path());
    let dir = tempfile::tempdir().unwrap();
    // Two caches at 40 Mbit/s each: eight peers wanting 24 MiB each would
    // need ~38 s from the caches alone.
    let caches = start_mesh(
        &origin.url,
        dir.path(),
        &[("c1", "eu"), ("c2", "eu")],
        &["--egress-mbps", "40"],
    );
    let selector = start_selector(dir.path(), &gossip_addr(&caches[0]), 8, "");
    wait_for_selector(&selector, 2);
    let url = format!("{}/patch.bin", selector.url);
    let peers: Vec<_> = (0..8)
        .map(|n| {
            let address = format!("127.0.0.{}", 20 + n);
            start_peer(
                &url,
                dir.path(),
                &address,
                &["--seed-for", "4s", "--upload-mbps", "80"],
            )
        })
        .collect();
    // A ninth peer is killed mid-transfer: the others carry on.
    let (mut victim, _) = start_peer(&url, dir.path(), "127.0.0.40", &["--upload-mbps", "80"]);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let _ = victim.kill();
    let _ = victim.wait();
    let mut from_peers = 0;
    let mut from_caches = 0;
    for (child, out) in peers {
        let summary = finish_peer(child);
        let got = std::fs::read(&out).unwrap();
        assert!(got == data, "{} is byte-exact", out.display());
        let report = &summary["peers"];
        assert!(report.is_object(), "in the swarm: {summary}");
        assert_eq!(report["pieces_failed"], 0);
        from_peers += report["bytes_from_peers"].as_u64().unwrap();
        from_caches += report["bytes_from_caches"].as_u64().unwrap();
        eprintln!(
            "{}: {:.1} s, {} from peers, {} from caches, {} uploaded",
            out.display(),
            summary["seconds"].as_f64().unwrap(),
            report["bytes_from_peers"],
            report["bytes_from_caches"],
            report["bytes_to_peers"]
        );
    }
    let efficiency = from_peers as f64 / (from_peers + from_caches) as f64;
    eprintln!("peer efficiency {efficiency:.2}");
    assert!(from_peers + from_caches >= 8 * size, "every byte counted");
    assert!(
        efficiency > 0.3,
        "peers carried a real share: {efficiency:.2}"
    );
}

#[test]
fn a_service_with_peer_to_peer_off_has_no_peer_traffic() {
    let root = tempfile::tempdir().unwrap();
    let data = content(3 * MIB + 5, 9);
    write_file(root.path(), "v.bin", &data);
    publish(root.path());
    let origin = start_origin(root.path());
    let dir = tempfile::tempdir().unwrap();
    let caches = start_mesh(&origin.url, dir.path(), &[("c1", "eu")], &[]);
    let selector =
        start_selector_service(dir.path(), &gossip_addr(&caches[0]), 8, "", "p2p = false");
    wait_for_selector(&selector, 1);
    let url = format!("{}/v.bin", selector.url);
    let peers: Vec<_> = (0..2)
        .map(|n| start_peer(&url, dir.path(), &format!("127.0.0.{}", 50 + n), &[]))
        .collect();
    for (child, out) in peers {
        let summary = finish_peer(child);
        assert!(std::fs::read(&out).unwrap() == data);
        assert!(summary["peers"].is_null(), "no swarm joined: {summary}");
    }
    let scrape = curl(&format!("{}/scrape", selector.url), &[]);
    assert!(
        !String::from_utf8_lossy(&scrape.body).contains("complete"),
        "nobody announced: {}",
        String::from_utf8_lossy(&scrape.body)
    );
}
