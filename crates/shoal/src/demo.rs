//! `shoal demo`: an origin, a mesh of four caches in two regions and a
//! selector on loopback, with sample content.
//!
//! It opens with the selector's live dashboard URL, then generates a few files (a large "video", small and edge-sized files, one
//! left unpublished so both integrity modes show), publishes manifests,
//! starts the origin and four caches (different uplinks and prices, found
//! by gossip) in this process, downloads through them — one viewer, then
//! viewers everywhere at once, then a release warmed on every cache —
//! checks every byte against the source, shows how many bytes moved
//! between caches and how few came from the origin; then starts a selector
//! and shows which caches four viewers are sent to and why, a redirect with
//! its duplicate links, and a multi-source `shoal get` through it; then
//! republishes the video with a few bytes changed (`publish --notify`) and
//! shows every cache serving the new version at once, only the changed
//! piece fetched again; then a swarm of viewers downloading the video at
//! once, sharing pieces with each other while the caches fill only the
//! gap, with the peer efficiency reached; and keeps serving so a person
//! can try the URLs with curl, with a steady workload ([`workload`]) that
//! keeps the dashboard moving.

mod workload;

use anyhow::{ensure, Context};
use shoal_core::ByteSize;
use std::path::Path;
use std::time::Instant;

struct Sample {
    path: &'static str,
    size: u64,
    publish: bool,
}

/// Where the demo listens (0: a free port).
pub struct DemoPorts {
    pub cache: u16,
    pub selector: u16,
}

pub async fn run(video_size: ByteSize, once: bool, ports: DemoPorts) -> anyhow::Result<()> {
    let workdir = tempfile::Builder::new()
        .prefix("shoal-demo-")
        .tempdir()
        .context("creating a work directory")?;
    let root = workdir.path().join("origin");
    std::fs::create_dir_all(&root).context("creating the origin's directory")?;
    let samples = samples(video_size);

    let mut origin_config = shoal_origin::OriginConfig::new(root.clone(), "127.0.0.1:0".parse()?);
    quiet_and_quick(&mut origin_config.limits, &mut origin_config.access_log);
    let origin = shoal_origin::OriginServer::bind(origin_config)
        .await
        .context("starting the origin")?;
    let origin_url = format!("http://{}", origin.local_addr());
    let (stop_sender, stop) = tokio::sync::watch::channel(false);
    let origin_task = tokio::spawn(origin.serve(until_stopped(stop.clone())));

    let secret = format!("demo secret {:032x}", rand_u128());
    let (caches, seed) =
        start_caches(workdir.path(), &origin_url, &secret, ports.cache, &stop).await?;
    let selector_url = start_selector(
        workdir.path(),
        &origin_url,
        seed.as_deref(),
        &secret,
        ports.selector,
        &stop,
    )
    .await
    .context("starting the selector")?;
    println!("shoal demo\n");
    println!("  dashboard: {selector_url}/dashboard");
    println!("             open it now: everything below shows there live\n");
    generate_and_publish(&root, &samples)?;
    println!("  origin: {origin_url}");
    wait_for_mesh(&caches).await?;
    print_caches(&caches);
    let video = format!("/{}", samples[0].path);
    print_shield(&caches, &video);

    let client = reqwest::Client::builder().build()?;
    println!(
        "\n{:<36} {:>10} {:>8} {:>9}  verified",
        "download", "bytes", "seconds", "MiB/s"
    );
    download_everywhere(&client, &caches, &samples, &root).await?;
    let release = warm_release(&client, &caches, &root, &secret).await?;

    // 5. The selector: which caches each viewer is sent to, and why.
    show_selector_choices(
        &client,
        &selector_url,
        &video,
        &root,
        &samples[0],
        caches.len(),
    )
    .await?;

    let catalogue: u64 = samples.iter().map(|s| s.size).sum::<u64>() + release.size;
    print_piece_movement(&caches, catalogue)?;

    // 6. A new version: a few bytes of the video change and it is
    //    published again with a notice to the mesh.
    republish(&client, &caches, &root, &samples[0], &secret).await?;

    // 7. Viewers share pieces: a swarm downloads the video at once.
    show_swarm(&client, &selector_url, &root, &samples[5]).await?;

    print_things_to_try(&caches[0].url, &selector_url);
    let mut steady = None;
    if !once {
        println!(
            "\ndashboard: {selector_url}/dashboard\n  {}",
            workload::describe()
        );
        steady = Some(tokio::spawn(workload::run(
            workload::Workload {
                selector_url: selector_url.clone(),
                root: root.clone(),
                feature: (video.clone(), samples[0].size),
                episode: format!("/{}", samples[5].path),
            },
            stop.clone(),
        )));
        println!("\nserving until Ctrl-C");
        crate::shutdown_signal().await;
    }
    let _ = stop_sender.send(true);
    if let Some(steady) = steady {
        let _ = steady.await;
    }
    for c in caches {
        let _ = c.task.await;
    }
    let _ = origin_task.await;
    Ok(())
}

/// The demo's servers write no access log (standard output is the demo's
/// story) and stop at once when it ends (nobody balances load over them).
fn quiet_and_quick(
    limits: &mut shoal_server::ServerLimits,
    access_log: &mut shoal_server::AccessLogConfig,
) {
    limits.drain_delay_ms = 0;
    access_log.format = shoal_server::AccessLogFormat::Off;
}

/// The sample content: a large "video" of `video_size`, a download left
/// unpublished (so both integrity modes show), and edge-sized files.
fn samples(video_size: ByteSize) -> [Sample; 6] {
    [
        Sample {
            path: "videos/feature.mp4",
            size: video_size.0,
            publish: true,
        },
        Sample {
            path: "downloads/installer.bin",
            size: 24 << 20,
            publish: false,
        },
        Sample {
            path: "hello.txt",
            size: 0,
            publish: true,
        },
        Sample {
            path: "edge/one-byte.bin",
            size: 1,
            publish: true,
        },
        Sample {
            path: "edge/piece-plus-one.bin",
            size: (256 << 10) + 1,
            publish: true,
        },
        // What the swarm of viewers downloads.
        Sample {
            path: "videos/episode.mp4",
            size: 64 << 20,
            publish: true,
        },
    ]
}

/// Writes the samples under `root` and publishes manifests for those
/// marked `publish` (the others are written after, so they stay
/// unpublished).
fn generate_and_publish(root: &Path, samples: &[Sample]) -> anyhow::Result<()> {
    println!("  generating sample content in {}", root.display());
    for sample in samples.iter().filter(|s| s.publish) {
        write_sample(root, sample)?;
    }
    let report = shoal_origin::publish(root, &shoal_origin::PublishOptions::default())
        .context("publishing samples")?;
    println!("  published: {report}");
    for sample in samples.iter().filter(|s| !s.publish) {
        write_sample(root, sample)?;
    }
    Ok(())
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn until_stopped(mut stop: tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Starts the demo's four caches in this process, each seeded with the
/// first one's gossip address. Returns them and that seed.
async fn start_caches(
    workdir: &Path,
    origin_url: &str,
    secret: &str,
    cache_port: u16,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<(Vec<DemoCache>, Option<String>)> {
    // A mesh of four caches in two regions, with different uplinks and
    // prices: the first is the one a person can try with curl.
    let specs = [
        ("eu-1", "eu-west", 1600u64, 0.010f64),
        ("eu-2", "eu-west", 800, 0.010),
        ("us-1", "us-east", 800, 0.004),
        ("us-2", "us-east", 400, 0.004),
    ];
    let mut caches = Vec::new();
    let mut seed: Option<String> = None;
    for (i, (name, region, mbps, cost)) in specs.iter().enumerate() {
        let mut config = shoal_cache::CacheConfig {
            listen: ([127, 0, 0, 1], if i == 0 { cache_port } else { 0 }).into(),
            origin: origin_url.to_string(),
            data_dir: workdir.join(name),
            capacity: ByteSize(4 << 30),
            ..Default::default()
        };
        config.limits.egress_bytes_per_s = mbps * 125_000;
        quiet_and_quick(&mut config.limits, &mut config.access_log);
        config.mesh = shoal_cache::MeshSettings {
            gossip: Some("127.0.0.1:0".parse()?),
            seeds: seed.iter().cloned().collect(),
            cluster_secret: secret.to_string(),
            node_id: Some(name.to_string()),
            region: region.to_string(),
            cost_per_gb: *cost,
            gossip_interval_ms: 250,
            ..Default::default()
        };
        let cache = shoal_cache::BoundCache::bind(config)
            .await
            .with_context(|| format!("starting cache {name}"))?;
        let mesh = cache.service.mesh().context("mesh")?.clone();
        seed.get_or_insert_with(|| mesh.node.gossip_addr().to_string());
        let url = format!("http://{}", cache.local_addr);
        let service = cache.service.clone();
        let task = tokio::spawn(cache.run(until_stopped(stop.clone())));
        caches.push(DemoCache {
            name,
            region,
            mbps: *mbps,
            cost: *cost,
            url,
            service,
            task,
        });
    }
    Ok((caches, seed))
}

/// Waits (20 s at most) until every cache sees all the others in gossip.
async fn wait_for_mesh(caches: &[DemoCache]) -> anyhow::Result<()> {
    let started = Instant::now();
    while caches
        .iter()
        .any(|c| c.service.stats_snapshot().mesh_members < caches.len() as u64)
    {
        ensure!(
            started.elapsed().as_secs() < 20,
            "the demo mesh did not form within 20 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    println!(
        "  mesh:   {} caches found each other by gossip in {:.1} s\n",
        caches.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The table of caches: region, uplink, price and URL.
fn print_caches(caches: &[DemoCache]) {
    println!(
        "  {:<6} {:<8} {:>10} {:>7}  url",
        "cache", "region", "uplink", "$/GB"
    );
    for c in caches {
        println!(
            "  {:<6} {:<8} {:>5} Mb/s {:>7.3}  {}",
            c.name, c.region, c.mbps, c.cost, c.url
        );
    }
}

/// Names the cache that goes to the origin for `video`.
fn print_shield(caches: &[DemoCache], video: &str) {
    let shield = caches[0]
        .service
        .mesh()
        .and_then(|m| {
            m.node
                .view()
                .shield(&shoal_mesh::shield_key(video))
                .map(|s| s.node_id.clone())
        })
        .unwrap_or_default();
    println!("\n  {video}: its shield (the one cache that goes to the origin) is {shield}");
}

/// Downloads the video through one cache, then through all the others at
/// once, then the rest of the catalogue through every cache, checking
/// every byte.
async fn download_everywhere(
    client: &reqwest::Client,
    caches: &[DemoCache],
    samples: &[Sample],
    root: &Path,
) -> anyhow::Result<()> {
    // 1. One viewer in Europe: the miss goes to the shield, which goes to
    //    the origin once.
    download(client, &caches[0].url, &samples[0], root, "cold, eu-1").await?;
    // 2. Viewers everywhere at once: pieces move between caches, the
    //    origin is not asked again.
    let mut all = Vec::new();
    for c in &caches[1..] {
        let (client, url, root) = (client.clone(), c.url.clone(), root.to_path_buf());
        let label = format!("cold, {}", c.name);
        let sample = &samples[0];
        let (path, size) = (sample.path, sample.size);
        all.push(tokio::spawn(async move {
            let sample = Sample {
                path,
                size,
                publish: true,
            };
            download(&client, &url, &sample, &root, &label).await
        }));
    }
    for task in all {
        task.await??;
    }
    // 3. The rest of the catalogue, through every cache.
    for sample in &samples[1..] {
        for c in caches {
            download(client, &c.url, sample, root, c.name).await?;
        }
    }
    Ok(())
}

/// Pre-positioning (step 4 of the demo): a release warmed on every cache
/// at once; they relay blocks to each other, so the origin sends it once.
/// Returns the release.
async fn warm_release(
    client: &reqwest::Client,
    caches: &[DemoCache],
    root: &Path,
    secret: &str,
) -> anyhow::Result<Sample> {
    let release = Sample {
        path: "downloads/release-2.0.bin",
        size: 64 << 20,
        publish: false,
    };
    write_sample(root, &release)?;
    let warm_started = Instant::now();
    let key = shoal_core::auth::ClusterKey::from_secret(secret)?;
    let warms = caches.iter().map(|c| {
        let target =
            crate::warm::operator_target(&format!("/_shoal/warm/{}", release.path), c.name);
        let token = key.sign(
            "demo",
            shoal_cache::resolve::now_unix_s() + 60,
            "POST",
            &target,
        );
        let request = client.post(format!("{}{target}", c.url));
        async move {
            let response = request
                .header(shoal_core::auth::AUTH_HEADER, token?)
                .send()
                .await?;
            anyhow::Ok(response.error_for_status()?.text().await?)
        }
    });
    for result in futures_util::future::join_all(warms).await {
        result.context("warm-up")?;
    }
    println!(
        "{:<36} {:>10} {:>8.3}            warmed on all {} caches",
        format!("warm /{}", release.path),
        release.size,
        warm_started.elapsed().as_secs_f64(),
        caches.len()
    );
    Ok(release)
}

/// The bytes each cache took from the origin and its peers and gave to
/// peers and viewers; fails if the origin sent more than the `catalogue`
/// (bytes), which would mean the mesh fetched something twice. (The
/// first-GET probes, a byte per file, are counted apart.)
fn print_piece_movement(caches: &[DemoCache], catalogue: u64) -> anyhow::Result<()> {
    println!("\npieces moving between caches (MiB)");
    println!(
        "  {:<6} {:>11} {:>11} {:>11} {:>11} {:>9}",
        "cache", "from origin", "from peers", "to peers", "to clients", "hit ratio"
    );
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    let mut origin_total = 0;
    let mut probe_total = 0;
    let mut clients_total = 0;
    for c in caches {
        let s = c.service.stats_snapshot();
        origin_total += s.origin_bytes;
        probe_total += s.probe_bytes;
        clients_total += s.bytes_served;
        println!(
            "  {:<6} {:>11.1} {:>11.1} {:>11.1} {:>11.1} {:>9.3}",
            c.name,
            mib(s.origin_bytes),
            mib(s.peer_bytes_received),
            mib(s.peer_bytes_served),
            mib(s.bytes_served),
            s.byte_hit_ratio
        );
    }
    println!(
        "\n  the origin sent {:.1} MiB for a catalogue of {:.1} MiB; viewers received {:.1} MiB",
        mib(origin_total),
        mib(catalogue),
        mib(clients_total)
    );
    if probe_total > 0 {
        println!("  and {probe_total} B answering first-GET probes");
    }
    ensure!(
        origin_total <= catalogue,
        "the origin sent more than the catalogue: {origin_total} > {catalogue}"
    );
    let corrupt: u64 = caches
        .iter()
        .map(|c| c.service.stats_snapshot().peer_corrupt_pieces)
        .sum();
    println!("  pieces refused as corrupt: {corrupt}");
    Ok(())
}

/// Commands a person can try against the running demo.
fn print_things_to_try(first: &str, selector_url: &str) {
    println!("\ntry:");
    println!("  curl -o /dev/null {first}/videos/feature.mp4");
    println!("  curl -r 0-99 {first}/videos/feature.mp4 | xxd | head");
    println!("  curl {first}/_shoal/mesh");
    println!("  curl {first}/_shoal/stats");
    println!("  aria2c -x4 -s4 -k1M -d /tmp {first}/videos/feature.mp4");
    println!("  curl '{selector_url}/plan?path=/videos/feature.mp4&client=10.2.0.9'");
    println!("  curl '{selector_url}/explain?path=/videos/feature.mp4&client=10.1.0.7'");
    println!("  curl -sI {selector_url}/videos/feature.mp4   # 302 + Link: rel=duplicate");
    println!("  cargo run --release -- get {selector_url}/videos/feature.mp4 -o /tmp/feature.mp4");
}

/// Coverage zones of the demo: viewers in 10.1/16 are near eu-west, in
/// 10.2/16 near us-east; so are the steady workload's viewers on
/// 127.1/16 and 127.2/16; the rest of loopback (a person trying curl) is
/// near both.
const DEMO_ZONES: &str = r#"
fallback = "loopback"

[[zone]]
name = "eu-viewers"
cidrs = ["10.1.0.0/16", "127.1.0.0/16"]
regions = { eu-west = { rtt_ms = 12, transit_usd_per_gb = 0.0 }, us-east = { rtt_ms = 85, transit_usd_per_gb = 0.01 } }

[[zone]]
name = "us-viewers"
cidrs = ["10.2.0.0/16", "127.2.0.0/16"]
regions = { us-east = { rtt_ms = 10, transit_usd_per_gb = 0.0 }, eu-west = { rtt_ms = 85, transit_usd_per_gb = 0.01 } }

[[zone]]
name = "loopback"
cidrs = ["127.0.0.0/8"]
regions = { eu-west = { rtt_ms = 1, transit_usd_per_gb = 0.0 }, us-east = { rtt_ms = 1, transit_usd_per_gb = 0.0 } }
"#;

/// Starts a selector in this process, observing the demo mesh.
async fn start_selector(
    workdir: &Path,
    origin_url: &str,
    seed: Option<&str>,
    secret: &str,
    port: u16,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<String> {
    let zones = workdir.join("zones.toml");
    std::fs::write(&zones, DEMO_ZONES)?;
    let service =
        |name: &str, prefix: &str, mbps: f64, headroom: f64| shoal_selector::DeliveryService {
            name: name.into(),
            path_prefix: prefix.into(),
            origin: Some(origin_url.to_string()),
            bitrate_mbps: mbps,
            headroom,
            ..Default::default()
        };
    let config = shoal_selector::SelectorConfig {
        listen: ([127, 0, 0, 1], port).into(),
        zones_file: Some(zones),
        mesh: shoal_selector::SelectorMesh {
            gossip: Some("127.0.0.1:0".parse()?),
            seeds: seed.iter().map(|s| s.to_string()).collect(),
            cluster_secret: secret.to_string(),
            node_id: Some("selector".into()),
            gossip_interval_ms: 250,
            ..Default::default()
        },
        services: vec![
            service("videos", "/videos/", 40.0, 1.5),
            service("downloads", "/downloads/", 400.0, 1.25),
        ],
        ..Default::default()
    };
    let mut config = config;
    quiet_and_quick(&mut config.limits, &mut config.access_log);
    let selector = shoal_selector::BoundSelector::bind(config).await?;
    let url = format!("http://{}", selector.local_addr);
    let mut stop = stop.clone();
    tokio::spawn(selector.run(async move {
        let _ = stop.wait_for(|s| *s).await;
    }));
    Ok(url)
}

/// Asks the selector about a few viewers and prints what it chose and why.
async fn show_selector_choices(
    client: &reqwest::Client,
    selector_url: &str,
    video: &str,
    root: &Path,
    video_sample: &Sample,
    caches: usize,
) -> anyhow::Result<()> {
    wait_for_selector_view(client, selector_url, caches).await?;
    println!("\nselector {selector_url}: videos 40 Mbit/s x1.5, downloads 400 Mbit/s x1.25, at least 2 sources");
    let asks = [
        ("viewer in eu", video, "10.1.0.7", ""),
        ("viewer in us", video, "10.2.0.9", ""),
        ("eu viewer, eu-1 degraded", video, "10.1.0.7", "eu-1"),
        (
            "eu download of a release",
            "/downloads/release-2.0.bin",
            "10.1.0.7",
            "",
        ),
    ];
    for (who, path, ip, exclude) in asks {
        let plan: serde_json::Value = serde_json::from_slice(
            &client
                .get(format!(
                    "{selector_url}/plan?path={path}&client={ip}&exclude={exclude}"
                ))
                .send()
                .await?
                .error_for_status()?
                .bytes()
                .await?,
        )?;
        print_plan(who, path, &plan);
    }
    show_redirect(selector_url, video).await?;
    download(client, selector_url, video_sample, root, "via selector").await?;
    show_multi_source_get(selector_url, video, root, video_sample).await
}

/// Waits (20 s at most) until the selector's gossip view holds all
/// `caches`.
async fn wait_for_selector_view(
    client: &reqwest::Client,
    selector_url: &str,
    caches: usize,
) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let mesh: serde_json::Value = serde_json::from_slice(
            &client
                .get(format!("{selector_url}/_shoal/mesh"))
                .send()
                .await?
                .bytes()
                .await?,
        )?;
        if mesh["caches"].as_array().map_or(0, Vec::len) == caches {
            return Ok(());
        }
        ensure!(
            started.elapsed().as_secs() < 20,
            "the selector did not see the mesh within 20 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// One plan as the selector answered it for `who`: the summary, each
/// source and standby cache, the planner's remarks and what was left out
/// (runners-up that were merely not needed are not shown).
fn print_plan(who: &str, path: &str, plan: &serde_json::Value) {
    println!(
        "  {who} ({}) {path}: {:.0} of {:.0} Mbit/s planned, ${:.4}/GB{}",
        plan["zone"].as_str().unwrap_or("?"),
        plan["predicted_mbps"].as_f64().unwrap_or(0.0),
        plan["target_mbps"].as_f64().unwrap_or(0.0),
        plan["usd_per_gb"].as_f64().unwrap_or(0.0),
        if plan["survives_one_loss"] == true {
            ", survives losing a source"
        } else {
            ""
        }
    );
    for source in plan["sources"].as_array().into_iter().flatten() {
        let standby = source["standby_mbps"].as_f64().unwrap_or(0.0);
        println!(
            "    {:<5} {:>3.0} % {:>6.1} Mbit/s{}  {}",
            source["node"].as_str().unwrap_or("?"),
            source["share"].as_f64().unwrap_or(0.0) * 100.0,
            source["mbps"].as_f64().unwrap_or(0.0),
            if standby > 0.0 {
                format!(" (+{standby:.1} standby)")
            } else {
                String::new()
            },
            source["why"].as_str().unwrap_or("")
        );
    }
    // Capacity held in reserve on other caches, not billed.
    for reserve in plan["standby"].as_array().into_iter().flatten() {
        println!(
            "    {:<5} standby {:.1} Mbit/s, brought on stream if a source fails (not billed unless used)",
            reserve["node"].as_str().unwrap_or("?"),
            reserve["mbps"].as_f64().unwrap_or(0.0)
        );
    }
    // The planner's own remarks (shortfalls, caps), past the standard
    // lines on the service and the zone.
    for reason in plan["reasons"].as_array().into_iter().flatten().skip(2) {
        let reason = reason.as_str().unwrap_or("");
        if !reason.starts_with("losing any one source") {
            println!("    note: {reason}");
        }
    }
    for left in plan["left_out"].as_array().into_iter().flatten() {
        let why = left["why"].as_str().unwrap_or("");
        if !why.starts_with("not needed") {
            println!(
                "    {:<5} left out: {why}",
                left["node"].as_str().unwrap_or("?")
            );
        }
    }
}

/// A plain client asks the selector itself and is redirected: prints where
/// to and how many mirrors the `Link` headers name.
async fn show_redirect(selector_url: &str, video: &str) -> anyhow::Result<()> {
    let redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?
        .get(format!("{selector_url}{video}"))
        .send()
        .await?;
    let location = redirect
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let duplicates = redirect
        .headers()
        .get_all(reqwest::header::LINK)
        .iter()
        .count();
    println!(
        "  GET {selector_url}{video} -> {} to {location} with {duplicates} Link: rel=duplicate mirror(s)",
        redirect.status().as_u16()
    );
    Ok(())
}

/// The multi-source client: the same plan, blended, every piece verified;
/// the file is checked against the origin's and then removed.
async fn show_multi_source_get(
    selector_url: &str,
    video: &str,
    root: &Path,
    video_sample: &Sample,
) -> anyhow::Result<()> {
    let out = root.with_file_name("feature-get.mp4");
    let options = shoal_client::GetOptions::new(format!("{selector_url}{video}"), &out);
    let summary = shoal_client::get(options, |_| {}).await?;
    let expected = blake3::Hasher::new()
        .update_mmap(root.join(video_sample.path))?
        .finalize();
    let got = blake3::Hasher::new().update_mmap(&out)?.finalize();
    ensure!(
        got == expected,
        "shoal get: bytes differ from the origin's file"
    );
    let parts: Vec<String> = summary
        .sources
        .iter()
        .map(|s| format!("{} {:.1} MiB", s.name, s.bytes as f64 / (1u64 << 20) as f64))
        .collect();
    println!(
        "  shoal get {selector_url}{video}: {:.2} s, {:.0} Mbit/s, verified, from {}",
        summary.seconds,
        summary.mbps,
        parts.join(", ")
    );
    let _ = std::fs::remove_file(&out);
    Ok(())
}

/// Viewers in a swarm: 8 downloads of `video` through the selector at once
/// (each from its own loopback address, uploading at most 40 Mbit/s and
/// holding 40 Mbit/s, so the caches fill only what peers leave),
/// every byte checked; prints what came from peers and from caches, and
/// the selector's per-service figures.
async fn show_swarm(
    client: &reqwest::Client,
    selector_url: &str,
    root: &Path,
    video_sample: &Sample,
) -> anyhow::Result<()> {
    let video = format!("/{}", video_sample.path);
    const VIEWERS: u8 = 8;
    // Each viewer's pace and upload cap, Mbit/s.
    const PACE_MBPS: f64 = 40.0;
    const UPLOAD_MBPS: f64 = 40.0;
    println!(
        "
a swarm: {VIEWERS} viewers download {video} at once at 40 Mbit/s, sharing pieces (BitTorrent peer protocol, tracker at the selector, 40 Mbit/s up each); the caches fill the gap"
    );
    let expected = blake3::Hasher::new()
        .update_mmap(root.join(video_sample.path))?
        .finalize();
    let mut viewers = Vec::new();
    for n in 0..VIEWERS {
        let out = root.with_file_name(format!("viewer-{n}.mp4"));
        let mut options = shoal_client::GetOptions::new(format!("{selector_url}{video}"), &out);
        options.local_address = Some(format!("127.0.0.{}", 100 + n).parse()?);
        options.peers.upload_mbps = Some(UPLOAD_MBPS);
        options.peers.target_mbps = Some(PACE_MBPS);
        options.peers.seed_for = std::time::Duration::from_secs(3);
        viewers.push(tokio::spawn(async move {
            let summary = shoal_client::get(options, |_| {}).await;
            (out, summary)
        }));
    }
    let (mut from_peers, mut from_caches) = (0u64, 0u64);
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    for (n, viewer) in viewers.into_iter().enumerate() {
        let (out, summary) = viewer.await?;
        let summary = summary.with_context(|| format!("viewer {n}"))?;
        let got = blake3::Hasher::new().update_mmap(&out)?.finalize();
        ensure!(
            got == expected,
            "viewer {n}: bytes differ from the origin's file"
        );
        let _ = std::fs::remove_file(&out);
        let Some(peers) = summary.peers else {
            anyhow::bail!("viewer {n} did not join the swarm");
        };
        from_peers += peers.bytes_from_peers;
        from_caches += peers.bytes_from_caches;
        println!(
            "  viewer {n} (127.0.0.{}): {:.2} s, {:5.1} MiB from peers, {:5.1} MiB from caches, {:5.1} MiB uploaded, verified",
            100 + n,
            summary.seconds,
            mib(peers.bytes_from_peers),
            mib(peers.bytes_from_caches),
            mib(peers.bytes_to_peers)
        );
    }
    let efficiency = from_peers as f64 / (from_peers + from_caches).max(1) as f64;
    println!(
        "  peer efficiency {:.0} %: the caches sent {:.1} MiB for {VIEWERS} copies of {:.1} MiB (fluid bound: min(1 - 1/{VIEWERS}, upload/pace) = {:.0} %)",
        efficiency * 100.0,
        mib(from_caches),
        mib(video_sample.size),
        (1.0 - 1.0 / f64::from(VIEWERS)).min(UPLOAD_MBPS / PACE_MBPS) * 100.0
    );
    let swarms: serde_json::Value = serde_json::from_slice(
        &client
            .get(format!("{selector_url}/_shoal/swarms"))
            .send()
            .await?
            .bytes()
            .await?,
    )?;
    if let Some(videos) = swarms["services"].get("videos") {
        println!(
            "  the selector's figures for service `videos` ({selector_url}/_shoal/swarms): {} swarm(s), peer efficiency {:.0} %, {:.1} MiB saved",
            videos["swarms"],
            videos["peer_efficiency"].as_f64().unwrap_or(0.0) * 100.0,
            mib(videos["bytes_saved"].as_u64().unwrap_or(0))
        );
    }
    Ok(())
}

/// Changes 4 KiB in the middle of `video`, publishes it again and tells the
/// mesh (`publish --notify`), then waits until every cache names the new
/// version and checks its bytes: only the changed piece crosses from the
/// origin, the rest is copied from the version the caches held.
async fn republish(
    client: &reqwest::Client,
    caches: &[DemoCache],
    root: &Path,
    video: &Sample,
    secret: &str,
) -> anyhow::Result<()> {
    use std::io::{Seek, Write};
    let path = root.join(video.path);
    let mut file = std::fs::OpenOptions::new().write(true).open(&path)?;
    file.seek(std::io::SeekFrom::Start(video.size / 2))?;
    file.write_all(&[0xA5; 4096])?;
    drop(file);
    let origin_bytes = || -> u64 {
        caches
            .iter()
            .map(|c| c.service.stats_snapshot().origin_bytes)
            .sum()
    };
    let before = origin_bytes();
    let started = Instant::now();
    let report = shoal_origin::publish(root, &Default::default())?;
    // The demo keeps its other files unpublished (both integrity modes).
    let video_path = format!("/{}", video.path);
    for other in report.published_paths.iter().filter(|p| **p != video_path) {
        let _ = std::fs::remove_file(root.join(format!(".shoal/manifests{other}.shoalmf")));
    }
    println!("\nrepublish {video_path} (4 KiB changed):");
    crate::warm::notify_published(
        &[caches[0].url.clone()],
        secret,
        std::slice::from_ref(&video_path),
    )
    .await?;
    let manifest_file = root.join(format!(".shoal/manifests/{}.shoalmf", video.path));
    let id = shoal_core::Manifest::decode(&std::fs::read(manifest_file)?)?
        .id()
        .to_hex();
    for cache in caches {
        loop {
            let head = client
                .head(format!("{}/{}", cache.url, video.path))
                .send()
                .await?;
            let named = head
                .headers()
                .get("x-shoal-object-id")
                .and_then(|v| v.to_str().ok());
            if named == Some(id.as_str()) {
                break;
            }
            ensure!(
                started.elapsed().as_secs() < 20,
                "{} did not serve the new version within 20 s",
                cache.name
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    println!(
        "  every cache serves the new version {} after {:.2} s",
        &id[..16],
        started.elapsed().as_secs_f64(),
    );
    download(client, &caches[1].url, video, root, "new version,").await?;
    println!(
        "  the origin sent {:.2} MiB for the new version: the rest was copied from the old one",
        (origin_bytes() - before) as f64 / (1u64 << 20) as f64
    );
    Ok(())
}

struct DemoCache {
    name: &'static str,
    region: &'static str,
    mbps: u64,
    cost: f64,
    url: String,
    service: std::sync::Arc<shoal_cache::CacheService>,
    task: tokio::task::JoinHandle<()>,
}

fn rand_u128() -> u128 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    u128::from_le_bytes(
        *blake3::hash(&nanos.to_le_bytes())
            .as_bytes()
            .first_chunk()
            .unwrap_or(&[0; 16]),
    )
}

/// Downloads `sample` through `cache_url`, hashing as it streams, and
/// checks it against the origin's file.
async fn download(
    client: &reqwest::Client,
    cache_url: &str,
    sample: &Sample,
    root: &Path,
    label: &str,
) -> anyhow::Result<()> {
    let url = format!("{cache_url}/{}", sample.path);
    let started = Instant::now();
    let mut response = client.get(&url).send().await?.error_for_status()?;
    let mut hasher = blake3::Hasher::new();
    let mut received = 0u64;
    while let Some(chunk) = response.chunk().await? {
        received += chunk.len() as u64;
        hasher.update(&chunk);
    }
    let seconds = started.elapsed().as_secs_f64();
    let expected = blake3::Hasher::new()
        .update_mmap(root.join(sample.path))?
        .finalize();
    ensure!(
        hasher.finalize() == expected && received == sample.size,
        "{url}: bytes differ from the origin's file"
    );
    println!(
        "{:<36} {:>10} {:>8.3} {:>9.1}  yes",
        format!("{label} /{}", sample.path),
        received,
        seconds,
        received as f64 / (1 << 20) as f64 / seconds.max(1e-9)
    );
    Ok(())
}

/// Deterministic pseudo-random bytes (xorshift), fast to generate.
fn write_sample(root: &Path, sample: &Sample) -> anyhow::Result<()> {
    let path = root.join(sample.path);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15 ^ sample.size;
    let mut remaining = sample.size;
    let mut chunk = vec![0u8; 1 << 20];
    while remaining > 0 {
        for word in chunk.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        let n = remaining.min(chunk.len() as u64) as usize;
        std::io::Write::write_all(&mut file, &chunk[..n])?;
        remaining -= n as u64;
    }
    std::io::Write::flush(&mut file)?;
    Ok(())
}
