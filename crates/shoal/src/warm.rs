//! Signed operator requests to caches: `shoal warm` asks caches to fill
//! objects ahead of demand and prints what each did; `shoal set-egress`
//! changes their egress caps while they run.

use anyhow::Context;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct WarmArgs {
    /// Base URL of a cache (repeat for several; they warm together).
    #[arg(long = "cache", required = true)]
    pub caches: Vec<String>,
    /// The mesh's cluster secret.
    #[arg(long, env = "SHOAL_CACHE_MESH__CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: String,
    /// Print one JSON report per cache and object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Give up on a warm-up after this many seconds.
    #[arg(long, default_value_t = 3600)]
    pub timeout_s: u64,
    /// Object paths, e.g. /videos/launch.mp4.
    #[arg(required = true)]
    pub paths: Vec<String>,
}

pub async fn run(args: WarmArgs) -> anyhow::Result<()> {
    let key = shoal_core::auth::ClusterKey::from_secret(&args.cluster_secret)
        .context("--cluster-secret")?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(args.timeout_s))
        .build()
        .context("building the HTTP client")?;
    for path in &args.paths {
        anyhow::ensure!(path.starts_with('/'), "path `{path}` must start with /");
        let started = Instant::now();
        // Each cache learns who warms with it, so they split the work.
        let partners: Vec<String> = args
            .caches
            .iter()
            .filter_map(|c| reqwest::Url::parse(c).ok())
            .filter_map(|u| Some(format!("{}:{}", u.host_str()?, u.port_or_known_default()?)))
            .collect();
        let with = partners.join(",");
        let requests = args.caches.iter().map(|cache| {
            let base = cache.trim_end_matches('/');
            let target = format!("/_shoal/warm{path}?with={with}");
            let (client, key) = (client.clone(), key.clone());
            async move {
                let body = signed_post(&client, &key, base, &target).await?;
                Ok::<(String, String, f64), anyhow::Error>((
                    base.to_string(),
                    body,
                    started.elapsed().as_secs_f64(),
                ))
            }
        });
        let results = futures_util::future::join_all(requests).await;
        let mut failed = 0;
        for result in results {
            match result {
                Ok((cache, body, _)) if args.json => {
                    let value: serde_json::Value =
                        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
                    println!("{}", serde_json::json!({"cache": cache, "report": value}));
                }
                Ok((cache, body, seconds)) => {
                    let value: serde_json::Value =
                        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
                    let mib = |k: &str| value[k].as_f64().unwrap_or(0.0) / 1048576.0;
                    println!(
                        "{cache} {path}: {:.1} MiB in {seconds:.2} s ({:.1} present, {:.1} from peers, {:.1} from shield/origin)",
                        mib("object_bytes"),
                        mib("bytes_present"),
                        mib("bytes_from_peers"),
                        mib("bytes_from_shield"),
                    );
                }
                Err(error) => {
                    failed += 1;
                    eprintln!("shoal warm: {error:#}");
                }
            }
        }
        anyhow::ensure!(failed == 0, "{failed} warm-up(s) of {path} failed");
        if !args.json {
            println!(
                "{path}: on {} cache(s) in {:.2} s",
                args.caches.len(),
                started.elapsed().as_secs_f64()
            );
        }
    }
    Ok(())
}

/// `shoal set-egress`: changes running caches' egress caps.
#[derive(clap::Args)]
pub struct SetEgressArgs {
    /// Base URL of a cache (repeat for several).
    #[arg(long = "cache", required = true)]
    pub caches: Vec<String>,
    /// The new cap, Mbit/s (0: no cap).
    #[arg(long)]
    pub mbps: u64,
    /// The mesh's cluster secret.
    #[arg(long, env = "SHOAL_CACHE_MESH__CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: String,
}

pub async fn set_egress(args: SetEgressArgs) -> anyhow::Result<()> {
    let key = shoal_core::auth::ClusterKey::from_secret(&args.cluster_secret)
        .context("--cluster-secret")?;
    let bytes_per_s = args
        .mbps
        .checked_mul(125_000)
        .context("--mbps is too large")?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .context("building the HTTP client")?;
    for cache in &args.caches {
        let base = cache.trim_end_matches('/');
        let target = format!("/_shoal/egress?bytes_per_s={bytes_per_s}");
        signed_post(&client, &key, base, &target).await?;
        println!("{base}: egress cap {} Mbit/s", args.mbps);
    }
    Ok(())
}

/// POSTs `target` to the cache at `base` with an operator token signed by
/// the cluster key; the answer's body, or an error naming the URL.
async fn signed_post(
    client: &reqwest::Client,
    key: &shoal_core::auth::ClusterKey,
    base: &str,
    target: &str,
) -> anyhow::Result<String> {
    let expires = shoal_cache::resolve::now_unix_s() + 60;
    let token = key
        .sign("operator", expires, "POST", target)
        .context("signing")?;
    let url = format!("{base}{target}");
    let response = client
        .post(&url)
        .header(shoal_core::auth::AUTH_HEADER, token)
        .send()
        .await
        .with_context(|| url.clone())?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    anyhow::ensure!(status.is_success(), "{url}: {status}: {}", body.trim());
    Ok(body)
}
