//! Byte hit ratio of S3-FIFO against LRU on seeded Zipf traces of video
//! sessions over large objects, plus a rough operations-per-second figure.
//!
//! `cargo bench -p shoal-store --bench byte_hit_ratio`
//!
//! The hit ratios are deterministic (seeded traces, deterministic policies):
//! the same code gives the same table on every machine. Only the timings
//! vary. The traces come from `shoal_store::eviction::sim`, the same
//! generator the unit tests use.

use shoal_store::eviction::sim::{simulate, simulate_requests, Request, Trace, TraceConfig};
use shoal_store::eviction::{EvictionPolicy, PolicyKind};
use std::time::Instant;

/// Cache sizes, in percent of the catalog's bytes.
const CACHE_PERCENTS: [u64; 4] = [1, 5, 10, 20];

/// Popularity churn of the last trace: a new release every this many sessions.
const RELEASE_EVERY_SESSIONS: u64 = 100;

/// Reads replayed for the operations-per-second measurement.
const THROUGHPUT_REQUESTS: usize = 2_000_000;

fn main() {
    // `cargo bench` passes `--bench`; this harness takes no options.
    let started = Instant::now();
    let base = TraceConfig::default();
    let traces: Vec<(String, TraceConfig)> = [0.8, 0.9, 1.0]
        .into_iter()
        .map(|s| {
            let config = TraceConfig {
                zipf_exponent: s,
                ..base.clone()
            };
            (format!("zipf {s:.1}"), config)
        })
        .chain(std::iter::once((
            "zipf 0.9 churn".to_string(),
            TraceConfig {
                release_every_sessions: RELEASE_EVERY_SESSIONS,
                ..base.clone()
            },
        )))
        .collect();

    println!("shoal eviction: byte hit ratio by policy (piece granularity, byte budget)");
    println!();
    println!("trace parameters: {base}");
    println!(
        "\"churn\": every {RELEASE_EVERY_SESSIONS} sessions an object drawn uniformly from the \
         catalog becomes the most popular (a new release)"
    );
    let catalog = Trace::new(base.clone()).expect("default trace config is valid");
    let pieces: u64 = catalog
        .catalog()
        .iter()
        .map(|l| u64::from(l.piece_count()))
        .sum();
    println!(
        "catalog: {} objects, {:.1} GB, {} pieces; cache sizes in percent of catalog bytes",
        catalog.catalog().len(),
        catalog.catalog_bytes() as f64 / 1e9,
        pieces
    );
    println!("byte hit ratio counts reads after warm-up; start = first piece of a session hit");
    println!();
    println!(
        "{:<16} {:>6} {:>9} | {:>8} {:>8} {:>8} | {:>9} {:>9}",
        "trace", "cache", "cache GB", "LRU", "S3-FIFO", "S3/LRU", "start LRU", "start S3"
    );
    println!("{}", "-".repeat(86));

    for (name, config) in &traces {
        let trace = Trace::new(config.clone()).expect("bench trace configs are valid");
        for percent in CACHE_PERCENTS {
            let capacity = trace.catalog_bytes() * percent / 100;
            let lru = simulate(PolicyKind::Lru.build(capacity).as_mut(), &trace);
            let s3 = simulate(PolicyKind::S3Fifo.build(capacity).as_mut(), &trace);
            println!(
                "{:<16} {:>5}% {:>9.1} | {:>8.4} {:>8.4} {:>7.2}x | {:>9.4} {:>9.4}",
                name,
                percent,
                capacity as f64 / 1e9,
                lru.byte_hit_ratio(),
                s3.byte_hit_ratio(),
                s3.byte_hit_ratio() / lru.byte_hit_ratio(),
                lru.session_start_hit_ratio(),
                s3.session_start_hit_ratio(),
            );
        }
    }

    println!();
    throughput(&Trace::new(base).expect("default trace config is valid"));
    println!();
    println!("total time {:.1} s", started.elapsed().as_secs_f64());
}

/// Rough policy speed: replays pre-generated reads (so trace generation is
/// not timed) against a cache of 10% of the catalog. Each read is a lookup
/// plus, on a miss, an insert with its evictions.
fn throughput(trace: &Trace) {
    let requests: Vec<Request> = trace.requests().take(THROUGHPUT_REQUESTS).collect();
    let capacity = trace.catalog_bytes() / 10;
    println!(
        "operations per second ({} reads, cache 10%, one core, informational):",
        requests.len()
    );
    for kind in PolicyKind::ALL {
        let mut policy: Box<dyn EvictionPolicy<_> + Send> = kind.build(capacity);
        let start = Instant::now();
        let stats = simulate_requests(policy.as_mut(), requests.iter().copied(), 0);
        let seconds = start.elapsed().as_secs_f64();
        println!(
            "  {:<8} {:>6.2} M reads/s  ({:.0} ns per read, {:.1}% misses)",
            kind.name(),
            requests.len() as f64 / seconds / 1e6,
            seconds * 1e9 / requests.len() as f64,
            100.0 * (1.0 - stats.hit_ratio()),
        );
    }
}
