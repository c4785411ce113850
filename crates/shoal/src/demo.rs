//! `shoal demo`: an origin and an edge cache on loopback with sample content.
//!
//! It generates a few files (a large "video", small and edge-sized files, one
//! left unpublished so both integrity modes show), publishes manifests,
//! starts both servers in this process, downloads through the cache cold and
//! then warm, checks every byte against the source, prints what happened and
//! keeps serving so a person can try the URLs with curl.

use anyhow::{ensure, Context};
use shoal_core::ByteSize;
use std::path::Path;
use std::time::Instant;

struct Sample {
    path: &'static str,
    size: u64,
    publish: bool,
}

pub async fn run(video_size: ByteSize, once: bool, cache_port: u16) -> anyhow::Result<()> {
    let workdir = tempfile::Builder::new()
        .prefix("shoal-demo-")
        .tempdir()
        .context("creating a work directory")?;
    let root = workdir.path().join("origin");
    let samples = [
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
    ];
    println!(
        "shoal demo: generating sample content in {}",
        root.display()
    );
    for sample in samples.iter().filter(|s| s.publish) {
        write_sample(&root, sample)?;
    }
    let report = shoal_origin::publish(&root, &shoal_origin::PublishOptions::default())
        .context("publishing samples")?;
    println!("  published: {report}");
    for sample in samples.iter().filter(|s| !s.publish) {
        write_sample(&root, sample)?;
    }

    let origin = shoal_origin::OriginServer::bind(shoal_origin::OriginConfig::new(
        root.clone(),
        "127.0.0.1:0".parse()?,
    ))
    .await
    .context("starting the origin")?;
    let origin_url = format!("http://{}", origin.local_addr());
    let (stop_sender, stop) = tokio::sync::watch::channel(false);
    let wait_stop = |mut stop: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    let origin_task = tokio::spawn(origin.serve(wait_stop(stop.clone())));

    let cache = shoal_cache::BoundCache::bind(shoal_cache::CacheConfig {
        listen: ([127, 0, 0, 1], cache_port).into(),
        origin: origin_url.clone(),
        data_dir: workdir.path().join("cache"),
        capacity: ByteSize(4 << 30),
        ..Default::default()
    })
    .await
    .context("starting the cache")?;
    let cache_url = format!("http://{}", cache.local_addr);
    let service = cache.service.clone();
    let cache_task = tokio::spawn(cache.run(wait_stop(stop.clone())));
    println!("  origin: {origin_url}\n  cache:  {cache_url}\n");

    let client = reqwest::Client::builder().build()?;
    println!(
        "{:<28} {:>10} {:>8} {:>12}  verified",
        "download through the cache", "bytes", "seconds", "MiB/s"
    );
    for round in ["cold", "warm"] {
        for sample in &samples {
            let url = format!("{cache_url}/{}", sample.path);
            let started = Instant::now();
            // Streamed and hashed as it arrives, like a real client; the
            // whole body is never held in memory.
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
                "{:<28} {:>10} {:>8.3} {:>12.1}  yes",
                format!("{round} /{}", sample.path),
                received,
                seconds,
                received as f64 / (1 << 20) as f64 / seconds.max(1e-9)
            );
        }
    }
    // One ranged read: the middle MiB of the video.
    let middle = video_size.0 / 2;
    let range = format!("bytes={}-{}", middle, middle + (1 << 20) - 1);
    let response = client
        .get(format!("{cache_url}/videos/feature.mp4"))
        .header("range", &range)
        .send()
        .await?;
    println!(
        "\nrange {range} of /videos/feature.mp4 → {}",
        response.status()
    );

    let stats = service.stats_snapshot();
    println!("\nsummary");
    println!(
        "  bytes served to clients   {:>14}  ({})",
        stats.bytes_served,
        ByteSize(stats.bytes_served)
    );
    println!(
        "  bytes fetched from origin {:>14}  ({})",
        stats.origin_bytes,
        ByteSize(stats.origin_bytes)
    );
    println!(
        "  bytes served from cache   {:>14}",
        stats.bytes_served_from_store
    );
    println!("  byte hit ratio            {:>14.3}", stats.byte_hit_ratio);
    println!("  origin requests           {:>14}", stats.origin_requests);
    println!("  pieces stored             {:>14}", stats.store_pieces);
    println!("  corrupt pieces refused    {:>14}", stats.corrupt_pieces);
    println!("\ntry:");
    println!("  curl -o /dev/null {cache_url}/videos/feature.mp4");
    println!("  curl -r 0-99 {cache_url}/videos/feature.mp4 | xxd | head");
    println!("  curl -I {cache_url}/downloads/installer.bin");
    println!("  curl {cache_url}/_shoal/stats");
    println!("  aria2c -x4 -s4 -k1M -d /tmp {cache_url}/videos/feature.mp4");

    if !once {
        println!("\nserving until Ctrl-C");
        crate::shutdown_signal().await;
    }
    let _ = stop_sender.send(true);
    let _ = cache_task.await;
    let _ = origin_task.await;
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
