//! The cache mesh on loopback: real `shoal cache` processes gossiping on
//! 127.0.0.1, nginx or `shoal origin` behind them, curl and aria2c in front.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use support::*;

const MIB: u64 = 1 << 20;

fn total_stat(caches: &[Proc], name: &str) -> u64 {
    caches.iter().map(|c| stat(&c.url, name)).sum()
}

#[test]
fn a_cold_burst_across_the_mesh_reaches_the_origin_once() {
    let root = tempfile::tempdir().unwrap();
    let size = 24 * MIB + 12_345;
    let data = content(size, 31);
    write_file(root.path(), "video/launch.mp4", &data);
    // nginx: no published manifest, so the shield builds the hashes and
    // hands them to siblings.
    let (nginx, _nginx_dir) = start_nginx(root.path(), "");
    let dir = tempfile::tempdir().unwrap();
    let names = [("c1", "eu"), ("c2", "eu"), ("c3", "us"), ("c4", "us")];
    let caches = start_mesh(&nginx.url, dir.path(), &names, &[]);

    // 12 clients at once, spread over the 4 caches, curl and aria2c.
    let handles: Vec<_> = (0..12)
        .map(|i| {
            let url = format!("{}/video/launch.mp4", caches[i % caches.len()].url);
            std::thread::spawn(move || {
                if i % 3 == 0 {
                    aria2c(&url)
                } else {
                    let result = curl(&url, &[]);
                    assert_eq!(result.status, 200, "{url}");
                    result.body
                }
            })
        })
        .collect();
    for handle in handles {
        let body = handle.join().unwrap();
        assert!(body == data, "a client got wrong bytes");
    }
    let origin_bytes: Vec<u64> = caches
        .iter()
        .map(|c| stat(&c.url, "origin_bytes"))
        .collect();
    assert_eq!(
        origin_bytes.iter().sum::<u64>(),
        size,
        "origin bytes per cache: {origin_bytes:?}"
    );
    let names_only: Vec<&str> = names.iter().map(|n| n.0).collect();
    let shield = shield_of("/video/launch.mp4", &names_only);
    for (cache, bytes) in caches.iter().zip(&origin_bytes) {
        if cache.name != shield {
            assert_eq!(
                *bytes, 0,
                "{} is not the shield but went to the origin",
                cache.name
            );
            assert!(stat(&cache.url, "peer_bytes_received") >= size);
        }
    }
    assert_eq!(total_stat(&caches, "peer_corrupt_pieces"), 0);
}

#[test]
fn a_new_member_fills_from_siblings_not_the_origin() {
    let root = tempfile::tempdir().unwrap();
    let size = 20 * MIB;
    let data = content(size, 32);
    write_file(root.path(), "game.pak", &data);
    publish(root.path());
    let origin = start_origin(root.path());
    let dir = tempfile::tempdir().unwrap();
    let mut caches = start_mesh(&origin.url, dir.path(), &[("a", "eu"), ("b", "eu")], &[]);
    for cache in &caches {
        assert!(curl(&format!("{}/game.pak", cache.url), &[]).body == data);
    }
    assert_eq!(total_stat(&caches, "origin_bytes"), size);
    // The newcomer may even become the path's shield: either way its
    // pieces come from the siblings that hold them.
    let seeds = vec![gossip_addr(&caches[0])];
    caches.push(start_mesh_cache(
        &origin.url,
        &dir.path().join("c"),
        "c",
        "eu",
        &seeds,
        None,
        &[],
    ));
    let urls: Vec<&str> = caches.iter().map(|c| c.url.as_str()).collect();
    wait_for_mesh(&urls, 3);
    // Summaries are republished every 2 s.
    wait_until("summaries of a and b at c", Duration::from_secs(10), || {
        let report = mesh_report(&caches[2].url);
        report["members"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["has_summary"] == true)
            .count()
            >= 2
    });
    let result = curl(&format!("{}/game.pak", caches[2].url), &[]);
    assert!(result.body == data);
    assert_eq!(
        total_stat(&caches, "origin_bytes"),
        size,
        "the origin saw the object once"
    );
    assert!(stat(&caches[2].url, "peer_fetches_have") > 0);
}

/// Signs `GET path` as the test's own node, like a cache would.
fn token(secret: &str, path: &str, expires_in_s: i64) -> String {
    let key = shoal_core::auth::ClusterKey::from_secret(secret).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    key.sign("tester", (now + expires_in_s) as u64, "GET", path)
        .unwrap()
}

#[test]
fn inter_cache_endpoints_and_gossip_refuse_strangers() {
    let root = tempfile::tempdir().unwrap();
    let data = content(3 * MIB, 33);
    write_file(root.path(), "f.bin", &data);
    let origin = start_origin(root.path());
    let dir = tempfile::tempdir().unwrap();
    let caches = start_mesh(&origin.url, dir.path(), &[("a", "eu"), ("b", "eu")], &[]);
    let cache = &caches[0].url;
    let response = curl(&format!("{cache}/f.bin"), &[]);
    let id = response.header("x-shoal-object-id").unwrap().to_string();

    let paths = [
        "/_shoal/peer/object/f.bin".to_string(),
        format!("/_shoal/peer/pieces/{id}"),
        format!("/_shoal/peer/data/{id}/f.bin"),
    ];
    for path in &paths {
        let url = format!("{cache}{path}");
        let mode = ["-H", "x-shoal-mode: have", "-H", "range: bytes=0-1023"];
        let none = curl(&url, &mode);
        assert_eq!(none.status, 403, "{path} without a token");
        let other_secret = token("another secret that is long", path, 60);
        let header = format!("x-shoal-auth: {other_secret}");
        let forged = curl(&url, &[&mode[..], &["-H", &header]].concat());
        assert_eq!(forged.status, 403, "{path} with another cluster's token");
        let expired = format!("x-shoal-auth: {}", token(CLUSTER_SECRET, path, -5));
        assert_eq!(
            curl(&url, &[&mode[..], &["-H", &expired]].concat()).status,
            403
        );
        let other_path = format!(
            "x-shoal-auth: {}",
            token(CLUSTER_SECRET, "/_shoal/peer/x", 60)
        );
        assert_eq!(
            curl(&url, &[&mode[..], &["-H", &other_path]].concat()).status,
            403
        );
        let good = format!("x-shoal-auth: {}", token(CLUSTER_SECRET, path, 60));
        let ok = curl(&url, &[&mode[..], &["-H", &good]].concat());
        assert!(
            ok.status == 200 || ok.status == 206,
            "{path}: {}",
            ok.status
        );
    }
    assert!(stat(cache, "auth_failures") >= 12);

    // Garbage, oversized and replayed-looking datagrams at the gossip port.
    let gossip = gossip_addr(&caches[0]);
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let before = stat(cache, "gossip_dropped_datagrams");
    for size in [0usize, 1, 24, 25, 1000, 65_507] {
        let junk: Vec<u8> = content(size as u64, size as u64);
        let _ = socket.send_to(&junk, &gossip);
    }
    wait_until("junk datagrams counted", Duration::from_secs(5), || {
        stat(cache, "gossip_dropped_datagrams") >= before + 5
    });
    // The node is unharmed: still meshed, still serving.
    std::thread::sleep(Duration::from_secs(1));
    wait_for_mesh(&[cache, &caches[1].url], 2);
    assert!(curl(&format!("{}/f.bin", caches[1].url), &[]).body == data);
}

/// Signs `GET path` as cache `node` (the test knows the cluster secret).
fn token_as(node: &str, path: &str) -> String {
    let key = shoal_core::auth::ClusterKey::from_secret(CLUSTER_SECRET).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    key.sign(node, now + 60, "GET", path).unwrap()
}

#[test]
fn the_shield_takes_over_a_slow_run_only_for_pieces_it_holds_and_when_much_sooner() {
    let root = tempfile::tempdir().unwrap();
    let held = content(2 * MIB, 71);
    write_file(root.path(), "held.bin", &held);
    for k in 0..8 {
        write_file(root.path(), &format!("cold-{k}.bin"), &content(MIB, 72 + k));
    }
    publish(root.path());
    let origin = start_origin(root.path());
    let dir = tempfile::tempdir().unwrap();
    let caches = start_mesh(
        &origin.url,
        dir.path(),
        &[("s1", "eu"), ("s2", "eu")],
        // A capped uplink: the shield knows how long its queue takes.
        &["--egress-mbps", "200"],
    );
    let shield_of = |path: &str| {
        let mesh = curl(&format!("{}/_shoal/mesh?path={path}", caches[0].url), &[]);
        let report: serde_json::Value = serde_json::from_slice(&mesh.body).unwrap();
        report["shield"].as_str().unwrap().to_string()
    };
    let held_shield = shield_of("/held.bin");
    let shield = caches.iter().find(|c| c.name == held_shield).unwrap();
    let other = caches.iter().find(|c| c.name != held_shield).unwrap();
    // The shield stores held.bin (a client fetched it there).
    let fetched = curl(&format!("{}/held.bin", shield.url), &[]);
    assert!(fetched.body == held);
    let id = fetched.header("x-shoal-object-id").unwrap().to_string();

    let ask = |as_node: &str, object: &str, path: &str, switch: &str| {
        let data = format!("/_shoal/peer/data/{object}{path}");
        let auth = format!("x-shoal-auth: {}", token_as(as_node, &data));
        let switch = format!("x-shoal-switch-eta-ms: {switch}");
        curl(
            &format!("{}{data}", shield.url),
            &[
                "-H",
                &auth,
                "-H",
                "x-shoal-mode: fill",
                "-H",
                "range: bytes=0-1048575",
                "-H",
                &switch,
            ],
        )
    };
    // A run that would take a minute more: the shield is far sooner.
    let taken = ask(&other.name, &id, "/held.bin", "60000");
    assert_eq!(taken.status, 206);
    assert!(taken.body == held[..MIB as usize]);
    // A run about to finish: 1 MiB at 25 MB/s is ~40 ms here, not under
    // half of 1 ms.
    let soon = ask(&other.name, &id, "/held.bin", "1");
    assert_eq!(soon.status, 503);
    assert_eq!(soon.header("x-shoal-stay"), Some("1"));
    assert_eq!(soon.header("x-shoal-try"), None);
    // Malformed: the sender's error.
    assert_eq!(ask(&other.name, &id, "/held.bin", "soon").status, 400);
    // A cache the shield does not know: the desk is not asked, so no.
    let stranger = ask("tester", &id, "/held.bin", "60000");
    assert_eq!(stranger.status, 503);
    assert_eq!(stranger.header("x-shoal-stay"), Some("1"));
    // Pieces the shield does not store would come no sooner from it (a
    // path it is the shield of; HEAD resolves it without a fill).
    let cold = (0..8)
        .map(|k| format!("/cold-{k}.bin"))
        .find(|path| shield_of(path) == held_shield)
        .expect("one of 8 paths has this shield");
    let head = curl(&format!("{}{cold}", shield.url), &["-I"]);
    let cold_id = head.header("x-shoal-object-id").unwrap().to_string();
    let refused = ask(&other.name, &cold_id, &cold, "60000");
    assert_eq!(refused.status, 503, "the shield does not hold {cold} yet");
    assert_eq!(refused.header("x-shoal-stay"), Some("1"));
    assert!(stat(&shield.url, "switches_declined") >= 2);
    // A declined switch is no failure: the shield is still everyone's.
    let again = curl(&format!("{}/held.bin", other.url), &[]);
    assert!(again.body == held);
    assert_eq!(stat(&other.url, "peer_errors"), 0);
}

/// A mesh member that claims to hold an object and sends wrong bytes.
struct EvilPeer {
    _runtime: tokio::runtime::Runtime,
    _node: Arc<shoal_mesh::MeshNode>,
}

struct Holds(Vec<shoal_core::ObjectId>);

impl shoal_mesh::LocalState for Holds {
    fn egress_bps(&self) -> u64 {
        0
    }
    fn held_objects(&self, _max: usize) -> Vec<shoal_core::ObjectId> {
        self.0.clone()
    }
    fn health(&self) -> shoal_mesh::Health {
        shoal_mesh::Health::Ok
    }
}

/// `objects` must all be `object_size` bytes long.
fn start_evil_peer(seed: &str, objects: Vec<shoal_core::ObjectId>, object_size: u64) -> EvilPeer {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let node = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = listener.local_addr().unwrap();
        let layout = shoal_core::PieceLayout::new(
            object_size,
            shoal_core::PieceSize::for_object_size(object_size),
        )
        .unwrap();
        tokio::spawn(shoal_server::serve(
            listener,
            shoal_server::ServerLimits::default(),
            move |request: http::Request<_>, _conn| async move {
                evil_answer(request.uri().path(), request.headers(), layout)
            },
            std::future::pending::<()>(),
        ));
        shoal_mesh::MeshNode::start(
            shoal_mesh::MeshConfig {
                role: shoal_mesh::MeshRole::Cache,
                node_id: "evil".into(),
                gossip_listen: "127.0.0.1:0".parse().unwrap(),
                gossip_advertise: None,
                seeds: vec![seed.to_string()],
                cluster_secret: CLUSTER_SECRET.into(),
                region: "near".into(),
                http_advertise: http,
                https_advertise: None,
                egress_cap_bps: 0,
                cost_per_gb_microusd: 0,
                gossip_interval_ms: 200,
                phi_threshold: 8.0,
            },
            Arc::new(Holds(objects)),
        )
        .await
        .unwrap()
    });
    EvilPeer {
        _runtime: runtime,
        _node: node,
    }
}

fn evil_answer(
    path: &str,
    headers: &http::HeaderMap,
    layout: shoal_core::PieceLayout,
) -> http::Response<shoal_server::Body> {
    let builder = http::Response::builder();
    if path.starts_with("/_shoal/peer/pieces/") {
        let mut set = shoal_core::bitfield::PieceSet::new(layout.piece_count());
        for i in 0..layout.piece_count() {
            set.insert(shoal_core::PieceIndex(i));
        }
        return builder
            .body(shoal_server::full(bytes::Bytes::from(set.encode())))
            .unwrap();
    }
    if path.starts_with("/_shoal/peer/data/") {
        let range = headers.get("range").and_then(|v| v.to_str().ok()).unwrap();
        let (a, b) = range.trim_start_matches("bytes=").split_once('-').unwrap();
        let (a, b): (u64, u64) = (a.parse().unwrap(), b.parse().unwrap());
        let junk = vec![0x5a; (b - a + 1) as usize];
        return builder
            .status(206)
            .header(
                "content-range",
                format!("bytes {a}-{b}/{}", layout.object_size()),
            )
            .body(shoal_server::full(bytes::Bytes::from(junk)))
            .unwrap();
    }
    builder.status(404).body(shoal_server::empty()).unwrap()
}

#[test]
fn a_sibling_sending_wrong_bytes_is_refused_and_quarantined() {
    let root = tempfile::tempdir().unwrap();
    let names = ["far", "near", "evil"];
    // Paths whose shield is `far`, so the requester `near` goes to its
    // region-mate `evil` first for pieces `evil` claims to hold.
    let paths: Vec<String> = (0..200)
        .map(|i| format!("/obj{i}.bin"))
        .filter(|p| shield_of(p, &names) == "far")
        .take(3)
        .collect();
    let size = 8 * MIB;
    let files: Vec<Vec<u8>> = (0..3).map(|i| content(size, 40 + i)).collect();
    for (path, data) in paths.iter().zip(&files) {
        write_file(root.path(), &path[1..], data);
    }
    let (nginx, _nginx_dir) = start_nginx(root.path(), "");
    let dir = tempfile::tempdir().unwrap();
    let caches = start_mesh(
        &nginx.url,
        dir.path(),
        &[("far", "far-away"), ("near", "near")],
        &[],
    );
    let (far, near) = (&caches[0].url, &caches[1].url);
    let mut ids = Vec::new();
    for (path, data) in paths.iter().zip(&files) {
        let first = curl(&format!("{far}{path}"), &[]);
        assert!(first.body == *data);
        let hex = first.header("x-shoal-object-id").unwrap();
        ids.push(shoal_core::ObjectId::from_hex(hex).unwrap());
    }

    let _evil = start_evil_peer(&gossip_addr(&caches[0]), ids, size);
    for holder in ["evil", "far"] {
        wait_until(
            &format!("{holder}'s summary at near"),
            Duration::from_secs(15),
            || {
                mesh_report(near)["members"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|m| m["node_id"] == holder && m["has_summary"] == true)
            },
        );
    }

    // Each download tries `evil` first (same region), gets wrong bytes,
    // refuses them and takes the pieces from `far` instead.
    for (path, data) in paths.iter().zip(&files) {
        let result = curl(&format!("{near}{path}"), &[]);
        assert_eq!(result.status, 200);
        assert!(result.body == *data, "wrong bytes reached the client");
    }
    assert!(stat(near, "peer_corrupt_pieces") >= 3);
    assert_eq!(stat(near, "peers_quarantined"), 1);
    let quarantined: HashSet<String> = mesh_report(near)["quarantined"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(quarantined, HashSet::from(["evil".to_string()]));
    // Nothing wrong was stored: a second read (from near's store) is exact.
    for (path, data) in paths.iter().zip(&files) {
        let again = curl(&format!("{near}{path}"), &[]);
        assert!(again.body == *data);
        assert_eq!(again.header("x-shoal-cache"), Some("HIT"));
    }
}

#[test]
fn a_flash_crowd_is_relayed_by_siblings_and_a_relay_dying_costs_no_other_download() {
    flash_crowd_losing_a_cache(false);
}

#[test]
fn the_shield_dying_mid_crowd_costs_no_download_of_another_cache() {
    flash_crowd_losing_a_cache(true);
}

/// 5 caches, 2 clients each, a cold object; one cache (the shield, or a
/// relay) is killed mid-crowd. Every download from another cache must
/// finish, whole and right.
fn flash_crowd_losing_a_cache(kill_the_shield: bool) {
    let root = tempfile::tempdir().unwrap();
    let size = 24 * MIB;
    let data = content(size, 41);
    write_file(root.path(), "premiere.mp4", &data);
    publish(root.path());
    let origin = start_capped_origin(root.path(), "200");
    let dir = tempfile::tempdir().unwrap();
    let names = ["f1", "f2", "f3", "f4", "f5"];
    let named: Vec<(&str, &str)> = names.iter().map(|n| (*n, "eu")).collect();
    // Caches capped at 100 Mbit/s: the crowd lasts seconds.
    let mut caches = start_mesh(&origin.url, dir.path(), &named, &["--egress-mbps", "100"]);
    let shield = shield_of("/premiere.mp4", &names);
    let victim = if kill_the_shield {
        shield.clone()
    } else {
        names.iter().find(|n| **n != shield).unwrap().to_string()
    };
    // Two clients on every cache at once.
    let clients: Vec<_> = caches
        .iter()
        .flat_map(|c| {
            [
                (c.name.clone(), c.url.clone()),
                (c.name.clone(), c.url.clone()),
            ]
        })
        .map(|(name, url)| {
            let handle = std::thread::spawn(move || curl(&format!("{url}/premiere.mp4"), &[]));
            (name, handle)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let victim_index = caches.iter().position(|c| c.name == victim).unwrap();
    caches[victim_index].kill9();
    for (name, client) in clients {
        let result = client.join().unwrap();
        if name == victim {
            continue; // its own clients were connected to it
        }
        assert_eq!(result.status, 200, "a client of {name}");
        assert_eq!(result.exit_code, 0, "a download from {name} was cut");
        assert!(result.body == data, "a client of {name} got wrong bytes");
    }
    let survivors: Vec<Proc> = caches.drain(..).filter(|c| c.name != victim).collect();
    assert_eq!(total_stat(&survivors, "peer_corrupt_pieces"), 0);
    if kill_the_shield {
        // The next shield fetches what the mesh had not received yet.
        let relayed = total_stat(&survivors, "peer_fetches_relay");
        eprintln!("{relayed} runs relayed before the shield died");
        return;
    }
    let shield_url = &survivors.iter().find(|c| c.name == shield).unwrap().url;
    assert_eq!(
        total_stat(&survivors, "origin_bytes"),
        size,
        "the origin sent it once"
    );
    assert_eq!(total_stat(&survivors, "peer_corrupt_pieces"), 0);
    let refused = stat(shield_url, "relay_refusals_sent");
    let relayed = total_stat(&survivors, "peer_fetches_relay");
    let shield_to_caches = stat(shield_url, "peer_bytes_served");
    eprintln!(
        "shield sent {refused} requests to relays; {relayed} runs relayed; the shield sent {} MiB to caches",
        shield_to_caches / MIB
    );
    assert!(refused > 0 && relayed > 0, "the crowd was not relayed");
    // Without relays the shield sends every sibling its copy (4 x 24 MiB);
    // with them, each block about once, plus what the victim's death cost.
    assert!(
        shield_to_caches <= 2 * size,
        "the shield sent {} MiB to caches",
        shield_to_caches / MIB
    );
}

#[test]
fn killing_the_shield_mid_transfer_fails_no_download_and_the_role_moves() {
    let root = tempfile::tempdir().unwrap();
    let names = ["k1", "k2", "k3"];
    let size = 48 * MIB;
    let data = content(size, 35);
    write_file(root.path(), "big.bin", &data);
    let data2 = content(8 * MIB, 36);
    write_file(root.path(), "after.bin", &data2);
    publish(root.path());
    // A slow origin (200 Mbit/s) so the transfer is still running when the
    // shield dies.
    let origin = start_capped_origin(root.path(), "200");
    let dir = tempfile::tempdir().unwrap();
    let mut caches = start_mesh(
        &origin.url,
        dir.path(),
        &[("k1", "eu"), ("k2", "eu"), ("k3", "eu")],
        &[],
    );
    let shield = shield_of("/big.bin", &names);
    let shield_index = caches.iter().position(|c| c.name == shield).unwrap();
    let clients: Vec<_> = caches
        .iter()
        .filter(|c| c.name != shield)
        .flat_map(|c| [c.url.clone(), c.url.clone()])
        .map(|cache| std::thread::spawn(move || curl(&format!("{cache}/big.bin"), &[])))
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    caches[shield_index].kill9();
    for client in clients {
        let result = client.join().unwrap();
        assert_eq!(result.status, 200);
        assert_eq!(result.exit_code, 0, "a download was cut");
        assert!(result.body == data, "a download got wrong bytes");
    }
    let survivors: Vec<Proc> = caches.drain(..).filter(|c| c.name != shield).collect();
    let urls: Vec<&str> = survivors.iter().map(|c| c.url.as_str()).collect();
    wait_for_mesh(&urls, 2);
    // The shield role of a new path is taken by the survivors: the origin
    // sees that object once.
    let before = total_stat(&survivors, "origin_bytes");
    let handles: Vec<_> = survivors
        .iter()
        .map(|c| {
            let url = format!("{}/after.bin", c.url);
            std::thread::spawn(move || curl(&url, &[]).body)
        })
        .collect();
    for handle in handles {
        assert!(handle.join().unwrap() == data2);
    }
    assert_eq!(total_stat(&survivors, "origin_bytes") - before, 8 * MIB);
}

#[test]
fn a_restarted_cache_rejoins_with_its_store() {
    let root = tempfile::tempdir().unwrap();
    let size = 12 * MIB;
    let data = content(size, 37);
    write_file(root.path(), "keep.bin", &data);
    publish(root.path());
    let origin = start_origin(root.path());
    let dir = tempfile::tempdir().unwrap();
    let mut caches = start_mesh(&origin.url, dir.path(), &[("r1", "eu"), ("r2", "us")], &[]);
    for cache in &caches {
        assert!(curl(&format!("{}/keep.bin", cache.url), &[]).body == data);
    }
    let gossip = gossip_addr(&caches[1]);
    caches[1].kill9();
    wait_for_mesh(&[&caches[0].url], 1);
    let seeds = vec![gossip_addr(&caches[0])];
    caches[1] = start_mesh_cache(
        &origin.url,
        &dir.path().join("r2"),
        "r2",
        "us",
        &seeds,
        Some(&gossip),
        &[],
    );
    wait_for_mesh(&[&caches[0].url, &caches[1].url], 2);
    let result = curl(&format!("{}/keep.bin", caches[1].url), &[]);
    assert!(result.body == data);
    assert_eq!(result.header("x-shoal-cache"), Some("HIT"));
    assert_eq!(stat(&caches[1].url, "origin_bytes"), 0);
    assert_eq!(stat(&caches[1].url, "peer_bytes_received"), 0);
}

#[test]
fn rolling_cache_failures_lose_no_download_and_corrupt_no_byte() {
    let root = tempfile::tempdir().unwrap();
    let size = 16 * MIB;
    let data = content(size, 38);
    write_file(root.path(), "rolling.bin", &data);
    publish(root.path());
    let origin = start_origin(root.path());
    let dir = tempfile::tempdir().unwrap();
    let names = [
        ("f1", "eu"),
        ("f2", "eu"),
        ("f3", "us"),
        ("f4", "us"),
        ("f5", "us"),
    ];
    // Capped caches, so the downloads are still running while caches die.
    let mut caches = start_mesh(&origin.url, dir.path(), &names, &["--egress-mbps", "200"]);
    let urls: Vec<String> = caches
        .iter()
        .map(|c| format!("{}/rolling.bin", c.url))
        .collect();
    let gossips: Vec<String> = caches.iter().map(gossip_addr).collect();
    let downloads: Vec<_> = (0..20)
        .map(|k| {
            // Every client knows all five caches, in its own order.
            let mirrors: Vec<String> = (0..5).map(|j| urls[(k + j) % 5].clone()).collect();
            std::thread::spawn(move || aria2c_mirrors(&mirrors))
        })
        .collect();
    // Kill one cache every 1.5 s; bring the previous victim back.
    let mut victim: Option<usize> = None;
    for round in 0..3 {
        std::thread::sleep(Duration::from_millis(1500));
        if let Some(i) = victim {
            let (name, region) = names[i];
            let port = caches[i].url.rsplit(':').next().unwrap().to_string();
            let listen = format!("127.0.0.1:{port}");
            let seeds = vec![gossips[(i + 1) % 5].clone()];
            caches[i] = start_mesh_cache(
                &origin.url,
                &dir.path().join(name),
                name,
                region,
                &seeds,
                Some(&gossips[i]),
                &["--egress-mbps", "200", "--listen", &listen],
            );
        }
        let i = (round * 2 + 1) % 5;
        caches[i].kill9();
        victim = Some(i);
    }
    let mut completed = 0;
    for download in downloads {
        if let Some(body) = download.join().unwrap() {
            assert!(body == data, "a completed download has wrong bytes");
            completed += 1;
        }
    }
    assert_eq!(completed, 20, "completed/started");
}

#[test]
fn warming_several_caches_together_fetches_the_object_once_and_they_relay() {
    warm_together(true);
}

#[test]
fn warming_an_unpublished_object_together_fetches_it_once() {
    // The siblings can check pieces only against the hashes the shield
    // learnt from the origin, so most come from the shield itself.
    warm_together(false);
}

fn warm_together(published: bool) {
    let root = tempfile::tempdir().unwrap();
    let size = 24 * MIB + 5;
    let data = content(size, 39);
    write_file(root.path(), "release.bin", &data);
    if published {
        publish(root.path());
    }
    let (nginx, _nginx_dir) = start_nginx(root.path(), "");
    let dir = tempfile::tempdir().unwrap();
    let caches = start_mesh(
        &nginx.url,
        dir.path(),
        &[("w1", "eu"), ("w2", "eu"), ("w3", "us"), ("w4", "us")],
        // Thin enough that the shield's uplink is the bottleneck: it then
        // has the others relay (with room to spare it serves them itself).
        &["--egress-mbps", "100"],
    );
    // Not without the secret, not with GET.
    let target = "/_shoal/warm/release.bin";
    assert_eq!(
        curl(&format!("{}{target}", caches[0].url), &["-X", "POST"]).status,
        403
    );
    assert_eq!(curl(&format!("{}{target}", caches[0].url), &[]).status, 405);

    let mut command = std::process::Command::new(shoal_bin());
    command.arg("warm").arg("--json");
    for cache in &caches {
        command.args(["--cache", &cache.url]);
    }
    let output = command
        .arg("/release.bin")
        .env("SHOAL_CACHE_MESH__CLUSTER_SECRET", CLUSTER_SECRET)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "shoal warm: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let reports: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(reports.len(), 4);
    let from_peers: u64 = reports
        .iter()
        .map(|r| r["report"]["bytes_from_peers"].as_u64().unwrap())
        .sum();
    if published {
        assert!(from_peers > 0, "the caches relayed pieces to each other");
    }
    assert_eq!(
        total_stat(&caches, "origin_bytes"),
        size,
        "the origin sent it once"
    );
    for cache in &caches {
        let result = curl(&format!("{}/release.bin", cache.url), &[]);
        assert!(result.body == data);
        assert_eq!(
            result.header("x-shoal-cache"),
            Some("HIT"),
            "{}",
            cache.name
        );
    }
    assert_eq!(total_stat(&caches, "peer_corrupt_pieces"), 0);
}

#[test]
fn hit_ratio_counts_only_bytes_held_when_the_response_began() {
    let root = tempfile::tempdir().unwrap();
    let size = 24 * MIB;
    let data = content(size, 39);
    write_file(root.path(), "ratio.bin", &data);
    publish(root.path());
    let origin = start_origin(root.path());
    let dir = tempfile::tempdir().unwrap();
    let caches = start_mesh(&origin.url, dir.path(), &[("h1", "eu"), ("h2", "eu")], &[]);
    let shield = shield_of("/ratio.bin", &["h1", "h2"]);
    let (shield, other) = if shield == "h1" {
        (&caches[0], &caches[1])
    } else {
        (&caches[1], &caches[0])
    };
    assert_eq!(curl(&format!("{}/ratio.bin", shield.url), &[]).body, data);
    // HEAD says whether a GET would begin from the store.
    let head = curl(&format!("{}/ratio.bin", other.url), &["-I"]);
    assert_eq!(head.header("x-shoal-cache"), Some("MISS"));
    // A miss the sibling serves (read-ahead stores pieces before the
    // reader gets to them: they are not hits), then a hit.
    let miss = curl(&format!("{}/ratio.bin", other.url), &[]);
    assert_eq!(miss.header("x-shoal-cache"), Some("MISS"));
    assert!(miss.body == data);
    assert_eq!(stat(&other.url, "bytes_served_from_store"), 0);
    let head = curl(&format!("{}/ratio.bin", other.url), &["-I"]);
    assert_eq!(head.header("x-shoal-cache"), Some("HIT"));
    let hit = curl(&format!("{}/ratio.bin", other.url), &[]);
    assert_eq!(hit.header("x-shoal-cache"), Some("HIT"));
    assert!(hit.body == data);
    let stats = stats(&other.url);
    let ratio = stats["byte_hit_ratio"].as_f64().unwrap();
    assert!((ratio - 0.5).abs() < 1e-9, "byte_hit_ratio {ratio}");
    assert_eq!(stats["bytes_served"], 2 * size);
}
