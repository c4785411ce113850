//! Viewers' swarms with real processes: `shoal get` peers on distinct
//! loopback addresses, caches filling the gap, the selector as tracker.

mod support;

use support::*;

const MIB: u64 = 1 << 20;

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
fn a_paced_swarm_asks_the_caches_for_contiguous_ranges() {
    let root = tempfile::tempdir().unwrap();
    // 256 KiB pieces, so a 1 MiB block is four of them.
    let size = 16 * MIB + 777;
    let data = content(size, 11);
    write_file(root.path(), "episode.bin", &data);
    publish(root.path());
    let origin = start_origin(root.path());
    let dir = tempfile::tempdir().unwrap();
    let caches = start_mesh(&origin.url, dir.path(), &[("c1", "eu")], &[]);
    let selector = start_selector(dir.path(), &gossip_addr(&caches[0]), 8, "");
    wait_for_selector(&selector, 1);
    let url = format!("{}/episode.bin", selector.url);
    // Held at 32 Mbit/s each: what peers do not bring by its deadline is
    // the caches' share.
    let peers: Vec<_> = (0..5)
        .map(|n| {
            let address = format!("127.0.0.{}", 60 + n);
            start_peer(
                &url,
                dir.path(),
                &address,
                &[
                    "--target-mbps",
                    "32",
                    "--seed-for",
                    "2s",
                    "--upload-mbps",
                    "16",
                ],
            )
        })
        .collect();
    let (mut pieces, mut requests) = (0, 0);
    for (child, out) in peers {
        let summary = finish_peer(child);
        assert!(std::fs::read(&out).unwrap() == data, "byte-exact");
        for source in summary["sources"].as_array().unwrap() {
            pieces += source["pieces"].as_u64().unwrap();
            requests += source["requests"].as_u64().unwrap();
        }
    }
    let per_request = pieces as f64 / requests.max(1) as f64;
    eprintln!("{pieces} pieces from the cache in {requests} requests");
    assert!(pieces > 0, "the cache filled some of the gap");
    // The gap goes to the cache in 1 MiB blocks, not a request per piece.
    assert!(
        per_request >= 2.5,
        "{per_request:.2} pieces per cache request"
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

/// A seed that serves every block with its first byte flipped (run in
/// this process: a poisoning peer, announced to the tracker like any
/// other).
struct Lying {
    data: Vec<u8>,
    piece_bytes: u64,
}

impl shoal_peer::driver::PieceStore for Lying {
    fn read(&self, piece: u32, begin: u32, length: u32) -> Option<bytes::Bytes> {
        let start = piece as u64 * self.piece_bytes + u64::from(begin);
        let end = start + u64::from(length);
        let mut block = self.data.get(start as usize..end as usize)?.to_vec();
        block[0] ^= 0xff;
        Some(bytes::Bytes::from(block))
    }
    fn store(&self, _piece: shoal_core::VerifiedPiece) -> std::io::Result<()> {
        Ok(())
    }
}

fn percent_all(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("%{b:02X}")).collect()
}

/// Starts a lying seed on `address`, announced to `tracker`; it runs on
/// its own thread until the test ends.
fn start_liar(data: &[u8], object_id: &str, tracker: &str, address: &str, n: u8) {
    let size = data.len() as u64;
    let piece_size = shoal_core::PieceSize::for_object_size(size);
    // The same layout as the published manifest (only the layout matters
    // to a seed that never downloads).
    let manifest =
        shoal_core::Manifest::from_data(data, piece_size, shoal_core::Validators::default())
            .unwrap();
    let key = shoal_peer::SwarmKey::for_object(&shoal_core::ObjectId::from_hex(object_id).unwrap());
    let listener = std::net::TcpListener::bind(format!("{address}:0")).unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let store = Lying {
        data: data.to_vec(),
        piece_bytes: piece_size.bytes(),
    };
    let mut all = shoal_core::bitfield::PieceSet::new(manifest.piece_count());
    for i in 0..manifest.piece_count() {
        all.insert(shoal_core::PieceIndex(i));
    }
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let mut config = shoal_peer::driver::DriverConfig::new(key, [0xee - n; 20]);
            config.seed_for = std::time::Duration::from_secs(120);
            config.run_for_max = std::time::Duration::from_secs(120);
            let swarm = shoal_peer::swarm::Swarm::new(
                manifest.clone(),
                all,
                shoal_peer::swarm::SwarmLimits::default(),
                0,
            );
            shoal_peer::driver::run(
                swarm,
                manifest.layout(),
                std::sync::Arc::new(store),
                Some(listener),
                config,
            )
            .await;
        });
    });
    let announce = format!(
        "{tracker}&info_hash={}&peer_id={}&port={port}&uploaded=0&downloaded=0&left=0&compact=1&event=started",
        percent_all(&key.wire_bytes()),
        percent_all(&[0xee - n; 20])
    );
    let answer = curl(&announce, &["--interface", address]);
    assert!(
        !String::from_utf8_lossy(&answer.body).contains("failure"),
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
}

/// 20 peers (4 of them poisoning), 2 caches, one cache killed mid-way:
/// every honest download byte-exact, only liars banned.
#[test]
fn twenty_peers_with_liars_and_a_peer_and_a_cache_killed_lose_nothing() {
    let root = tempfile::tempdir().unwrap();
    let size = 16 * MIB + 777;
    let data = content(size, 11);
    write_file(root.path(), "game.pak", &data);
    publish(root.path());
    let origin = start_origin(root.path());
    let dir = tempfile::tempdir().unwrap();
    let mut caches = start_mesh(
        &origin.url,
        dir.path(),
        &[("c1", "eu"), ("c2", "eu")],
        &["--egress-mbps", "60"],
    );
    let selector = start_selector(dir.path(), &gossip_addr(&caches[0]), 8, "");
    wait_for_selector(&selector, 2);
    let plan = curl(&format!("{}/plan?path=/game.pak", selector.url), &[]);
    let plan: serde_json::Value = serde_json::from_slice(&plan.body).unwrap();
    let object_id = plan["object"]["id"]
        .as_str()
        .expect("object id")
        .to_string();
    let tracker = plan["swarm"]["tracker"]
        .as_str()
        .expect("a swarm")
        .to_string();
    let liars: Vec<String> = (0..4).map(|k| format!("127.0.0.{}", 60 + k)).collect();
    for (k, address) in liars.iter().enumerate() {
        start_liar(&data, &object_id, &tracker, address, k as u8);
    }
    let url = format!("{}/game.pak", selector.url);
    let honest: Vec<_> = (0..16)
        .map(|n| {
            let address = format!("127.0.0.{}", 80 + n);
            start_peer(
                &url,
                dir.path(),
                &address,
                &["--seed-for", "6s", "--upload-mbps", "40"],
            )
        })
        .collect();
    // One more honest peer, which dies mid-transfer with a cache.
    let (mut victim, _) = start_peer(&url, dir.path(), "127.0.0.99", &["--upload-mbps", "40"]);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    caches[1].kill9();
    let _ = victim.kill();
    let _ = victim.wait();
    let (mut failed, mut banned_total) = (0, 0);
    for (child, out) in honest {
        let summary = finish_peer(child);
        assert!(
            std::fs::read(&out).unwrap() == data,
            "{} byte-exact",
            out.display()
        );
        let report = &summary["peers"];
        failed += report["pieces_failed"].as_u64().unwrap();
        for banned in report["banned"].as_array().unwrap() {
            let banned = banned.as_str().unwrap();
            assert!(
                liars.iter().any(|l| l == banned),
                "an honest peer banned {banned}"
            );
            banned_total += 1;
        }
    }
    eprintln!("pieces that failed verification: {failed}, bans: {banned_total}");
    assert!(
        failed + banned_total > 0,
        "the liars were never asked: the test proved nothing"
    );
}
