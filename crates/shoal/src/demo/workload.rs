//! The demo's steady workload, run after the story until Ctrl-C so the
//! selector's dashboard has something to show: a live channel whose new
//! segments the shields fetch from the origin, plain HTTP viewers watching
//! the feature through the selector's redirect at a steady pace, and a
//! small swarm of viewers sharing the episode every minute.
//!
//! Viewers alternate between 127.1.x.x (the demo's zones put it near
//! eu-west) and 127.2.x.x (near us-east), so both regions carry traffic.
//!
//! Failures are printed and the workload goes on: it is scenery, not a
//! check (the story before it checked every byte).

use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::watch;

/// A new live segment this often, s.
const SEGMENT_EVERY_S: u64 = 6;
const SEGMENT_BYTES: usize = 4 << 20;
/// Segments kept at the origin (older ones are deleted, as a live
/// packager does).
const SEGMENTS_KEPT: u64 = 10;
/// Viewers of the live channel: each fetches every new segment.
const LIVE_VIEWERS: u8 = 3;
/// Viewers of the feature, each pulling 8 MiB ranges at this pace.
const VOD_VIEWERS: u8 = 4;
const VOD_PACE_MBPS: f64 = 24.0;
const VOD_RANGE_BYTES: u64 = 8 << 20;
/// A swarm of this many viewers starts this often.
const SWARM_VIEWERS: u8 = 4;
const SWARM_EVERY_S: u64 = 60;
const SWARM_PACE_MBPS: f64 = 40.0;

pub struct Workload {
    pub selector_url: String,
    /// The origin's document root (live segments are written here).
    pub root: PathBuf,
    /// Path of the feature video and its size.
    pub feature: (String, u64),
    /// Path of the episode the swarms share.
    pub episode: String,
}

/// One line on what runs, for the demo's output.
pub fn describe() -> String {
    format!(
        "a steady workload keeps it moving: a live channel (a new {} MiB segment every {SEGMENT_EVERY_S} s, \
         fetched once from the origin by its shield, watched by {LIVE_VIEWERS} viewers), \
         {VOD_VIEWERS} viewers watching the feature through the selector at {VOD_PACE_MBPS} Mbit/s each, \
         and every {SWARM_EVERY_S} s a swarm of {SWARM_VIEWERS} viewers sharing the episode",
        SEGMENT_BYTES >> 20
    )
}

/// The address viewer `n` connects from: alternately in the demo's eu
/// and us viewer zones.
fn viewer_address(n: u8) -> std::net::IpAddr {
    std::net::IpAddr::from([127, 1 + n % 2, 0, 10 + n])
}

/// An HTTP client for viewer `n` (reqwest binds per client).
fn viewer_client(n: u8) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .local_address(viewer_address(n))
        .build()
        .unwrap_or_default()
}

/// Runs until `stop` turns true.
pub async fn run(workload: Workload, stop: watch::Receiver<bool>) {
    let workload = std::sync::Arc::new(workload);
    let mut tasks = vec![tokio::spawn(live_channel(workload.clone(), stop.clone()))];
    for viewer in 0..VOD_VIEWERS {
        tasks.push(tokio::spawn(vod_viewer(
            workload.clone(),
            viewer_client(viewer),
            viewer,
            stop.clone(),
        )));
    }
    tasks.push(tokio::spawn(swarms(workload.clone(), stop.clone())));
    for task in tasks {
        let _ = task.await;
    }
}

/// Sleeps `duration` or until `stop`; false when stopped.
async fn pause(stop: &mut watch::Receiver<bool>, duration: Duration) -> bool {
    let stopped = tokio::select! {
        _ = stop.wait_for(|s| *s) => true,
        () = tokio::time::sleep(duration) => false,
    };
    !stopped && !*stop.borrow()
}

/// Writes a new segment every few seconds; the live viewers fetch it
/// through the selector (the first request goes through its shield to the
/// origin, the others are hits).
async fn live_channel(workload: std::sync::Arc<Workload>, mut stop: watch::Receiver<bool>) {
    // After the feature's viewers in the address plan.
    let clients: Vec<reqwest::Client> = (0..LIVE_VIEWERS)
        .map(|n| viewer_client(VOD_VIEWERS + n))
        .collect();
    let dir = workload.root.join("videos/live");
    if let Err(error) = std::fs::create_dir_all(&dir) {
        eprintln!("workload: cannot create {}: {error}", dir.display());
        return;
    }
    let mut segment: u64 = 0;
    loop {
        let name = format!("seg-{segment:06}.bin");
        if let Err(error) = write_segment(&dir.join(&name), segment) {
            eprintln!("workload: writing live segment {name}: {error}");
        }
        if segment >= SEGMENTS_KEPT {
            let old = dir.join(format!("seg-{:06}.bin", segment - SEGMENTS_KEPT));
            let _ = std::fs::remove_file(old);
        }
        let url = format!("{}/videos/live/{name}", workload.selector_url);
        let fetches = clients.iter().map(|client| fetch_all(client, &url));
        let results = tokio::select! {
            results = futures_util::future::join_all(fetches) => results,
            _ = stop.wait_for(|s| *s) => return,
        };
        for result in results {
            if let Err(error) = result {
                eprintln!("workload: live viewer: {error:#}");
            }
        }
        segment += 1;
        if !pause(&mut stop, Duration::from_secs(SEGMENT_EVERY_S)).await {
            return;
        }
    }
}

fn write_segment(path: &Path, segment: u64) -> std::io::Result<()> {
    let mut state = 0x2545_F491_4F6C_DD1D ^ segment.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut bytes = vec![0u8; SEGMENT_BYTES];
    for word in bytes.chunks_exact_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        word.copy_from_slice(&state.to_le_bytes());
    }
    // Written aside and renamed: the origin never serves half a segment.
    let partial = path.with_extension("partial");
    std::fs::write(&partial, &bytes)?;
    std::fs::rename(partial, path)
}

async fn fetch_all(client: &reqwest::Client, url: &str) -> anyhow::Result<u64> {
    let mut response = client.get(url).send().await?.error_for_status()?;
    let mut received = 0;
    while let Some(chunk) = response.chunk().await? {
        received += chunk.len() as u64;
    }
    Ok(received)
}

/// One viewer watching the feature: an 8 MiB range at a time through the
/// selector (302 to a cache), read at a steady pace.
async fn vod_viewer(
    workload: std::sync::Arc<Workload>,
    client: reqwest::Client,
    viewer: u8,
    mut stop: watch::Receiver<bool>,
) {
    let (path, size) = &workload.feature;
    if *size == 0 {
        return;
    }
    let url = format!("{}{path}", workload.selector_url);
    let ranges = (size / VOD_RANGE_BYTES).max(1);
    // Viewers start at different places and move on through the file.
    let mut range = u64::from(viewer) * ranges / u64::from(VOD_VIEWERS);
    let bytes_per_s = VOD_PACE_MBPS * 125_000.0;
    loop {
        let first = (range % ranges) * VOD_RANGE_BYTES;
        let last = (first + VOD_RANGE_BYTES).min(*size) - 1;
        let started = tokio::time::Instant::now();
        let result = async {
            let mut response = client
                .get(&url)
                .header(reqwest::header::RANGE, format!("bytes={first}-{last}"))
                .send()
                .await?
                .error_for_status()?;
            let mut received = 0u64;
            while let Some(chunk) = response.chunk().await? {
                received += chunk.len() as u64;
                // Hold the pace: a player reads no faster than it plays.
                let due = started + Duration::from_secs_f64(received as f64 / bytes_per_s);
                tokio::time::sleep_until(due).await;
                if *stop.borrow() {
                    break;
                }
            }
            anyhow::Ok(())
        }
        .await;
        if *stop.borrow() {
            // The caches stop too: a cut transfer is no error then.
            return;
        }
        if let Err(error) = result {
            eprintln!("workload: viewer {viewer}: {error:#}");
            if !pause(&mut stop, Duration::from_secs(2)).await {
                return;
            }
        }
        range += 1;
    }
}

/// Every minute, a few viewers download the episode at once with the
/// multi-source client, sharing pieces with each other.
async fn swarms(workload: std::sync::Arc<Workload>, mut stop: watch::Receiver<bool>) {
    loop {
        let mut viewers = Vec::new();
        for n in 0..SWARM_VIEWERS {
            let out = workload
                .root
                .with_file_name(format!("swarm-viewer-{n}.mp4"));
            let mut options = shoal_client::GetOptions::new(
                format!("{}{}", workload.selector_url, workload.episode),
                &out,
            );
            options.local_address = Some(viewer_address(VOD_VIEWERS + LIVE_VIEWERS + n));
            options.peers.upload_mbps = Some(SWARM_PACE_MBPS);
            options.peers.target_mbps = Some(SWARM_PACE_MBPS);
            options.peers.seed_for = Duration::from_secs(5);
            let mut stop = stop.clone();
            viewers.push(tokio::spawn(async move {
                let result = tokio::select! {
                    result = shoal_client::get(options, |_| {}) => Some(result),
                    _ = stop.wait_for(|s| *s) => None,
                };
                // Cut short by the demo stopping is no error.
                if let (Some(Err(error)), false) = (result, *stop.borrow()) {
                    eprintln!("workload: swarm viewer {n}: {error:#}");
                }
                let _ = std::fs::remove_file(out);
            }));
        }
        for viewer in viewers {
            let _ = viewer.await;
        }
        if !pause(&mut stop, Duration::from_secs(SWARM_EVERY_S)).await {
            return;
        }
    }
}
