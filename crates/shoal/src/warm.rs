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
        // All at once: the shield's relay desk has them pass blocks to
        // each other.
        let requests = args.caches.iter().map(|cache| {
            let base = cache.trim_end_matches('/');
            let target = format!("/_shoal/warm{path}");
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
    /// The new cap in Mbit/s, decimals allowed (0: no cap).
    #[arg(long)]
    pub mbps: f64,
    /// The mesh's cluster secret.
    #[arg(long, env = "SHOAL_CACHE_MESH__CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: String,
}

pub async fn set_egress(args: SetEgressArgs) -> anyhow::Result<()> {
    let key = shoal_core::auth::ClusterKey::from_secret(&args.cluster_secret)
        .context("--cluster-secret")?;
    let bytes_per_s = crate::config::mbps_to_bytes_per_s(args.mbps, "--mbps")?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .context("building the HTTP client")?;
    // Every cache is tried: one that does not answer must not keep the
    // others at their old cap.
    let target = format!("/_shoal/egress?bytes_per_s={bytes_per_s}");
    let mut failed = Vec::new();
    for cache in &args.caches {
        let base = cache.trim_end_matches('/');
        match signed_post(&client, &key, base, &target).await {
            Ok(answer) => {
                let old = serde_json::from_str::<serde_json::Value>(&answer)
                    .ok()
                    .and_then(|v| v["old_bytes_per_s"].as_u64());
                let was = match old {
                    Some(0) => " (was: no cap)".to_string(),
                    Some(old) => format!(" (was {} Mbit/s)", old as f64 / 125_000.0),
                    None => String::new(),
                };
                let now = if bytes_per_s == 0 {
                    "no cap".to_string()
                } else {
                    format!("{} Mbit/s", bytes_per_s as f64 / 125_000.0)
                };
                println!("{base}: egress cap {now}{was}");
            }
            Err(error) => {
                eprintln!("shoal set-egress: {error:#}");
                failed.push(base.to_string());
            }
        }
    }
    println!(
        "runtime only: a restarted cache takes its configured cap again (set --egress-mbps or limits.egress_bytes_per_s to keep this one)"
    );
    anyhow::ensure!(
        failed.is_empty(),
        "{} of {} cache(s) not changed: {}",
        failed.len(),
        args.caches.len(),
        failed.join(", ")
    );
    Ok(())
}

/// `shoal purge`: drops a path (or a prefix) from the whole mesh.
#[derive(clap::Args)]
pub struct PurgeArgs {
    /// Base URL of a cache of the mesh; it passes the purge to every live
    /// member (repeat: the next is tried if one does not answer).
    #[arg(long = "cache", required = true)]
    pub caches: Vec<String>,
    /// The path to purge, e.g. /video/a.mp4.
    #[arg(long, conflicts_with = "prefix", required_unless_present = "prefix")]
    pub path: Option<String>,
    /// Purge every path under this prefix, e.g. /video/.
    #[arg(long)]
    pub prefix: Option<String>,
    /// Revalidate instead of drop: pieces are kept, only what changed is
    /// fetched again.
    #[arg(long)]
    pub soft: bool,
    /// The mesh's cluster secret.
    #[arg(long, env = "SHOAL_CACHE_MESH__CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: String,
}

pub async fn purge(args: PurgeArgs) -> anyhow::Result<()> {
    let key = shoal_core::auth::ClusterKey::from_secret(&args.cluster_secret)
        .context("--cluster-secret")?;
    let mut query = form_urlencoded::Serializer::new(String::new());
    match (&args.path, &args.prefix) {
        (Some(path), None) => query.append_pair("path", path),
        (None, Some(prefix)) => query.append_pair("prefix", prefix),
        _ => anyhow::bail!("name exactly one of --path or --prefix"),
    };
    if args.soft {
        query.append_pair("soft", "1");
    }
    let answer = purge_via(&args.caches, &key, &query.finish()).await?;
    println!("{}", answer.trim());
    Ok(())
}

/// Sends one purge to the first of `caches` that takes it.
async fn purge_via(
    caches: &[String],
    key: &shoal_core::auth::ClusterKey,
    query: &str,
) -> anyhow::Result<String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .context("building the HTTP client")?;
    let target = format!("{}?{query}", shoal_cache::purge::PURGE_PATH);
    let mut errors = Vec::new();
    for cache in caches {
        match signed_post(&client, key, cache.trim_end_matches('/'), &target).await {
            Ok(answer) => return Ok(answer),
            Err(error) => errors.push(format!("{error:#}")),
        }
    }
    anyhow::bail!("no cache took the purge: {}", errors.join("; "))
}

/// After `shoal publish --notify`: the published paths are revalidated
/// across the mesh now (soft purges; one for everything past
/// [`NOTIFY_PATHS_MAX`] paths).
pub async fn notify_published(
    caches: &[String],
    cluster_secret: &str,
    paths: &[String],
) -> anyhow::Result<()> {
    let key =
        shoal_core::auth::ClusterKey::from_secret(cluster_secret).context("--cluster-secret")?;
    if paths.is_empty() {
        println!("nothing published: no cache to tell");
        return Ok(());
    }
    let targets: Vec<(&str, &str)> = if paths.len() > NOTIFY_PATHS_MAX {
        vec![("prefix", "/")]
    } else {
        paths.iter().map(|p| ("path", p.as_str())).collect()
    };
    for (kind, target) in &targets {
        let decoded = percent_decode(target);
        let mut query = form_urlencoded::Serializer::new(String::new());
        query.append_pair(kind, &decoded);
        query.append_pair("soft", "1");
        purge_via(caches, &key, &query.finish())
            .await
            .context("published, but the mesh could not be told (caches take the new versions when their freshness runs out, or run `shoal purge --soft`)")?;
    }
    println!(
        "told the mesh: {} path(s) revalidate now",
        if paths.len() > NOTIFY_PATHS_MAX {
            "every".to_string()
        } else {
            paths.len().to_string()
        }
    );
    Ok(())
}

/// Most paths `publish --notify` names one by one; past it, everything
/// stored is revalidated.
const NOTIFY_PATHS_MAX: usize = 256;

fn percent_decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

/// `target` for the cache named `node`, with a fresh `nonce`: a cache
/// takes each signed operator request once, and only when it is for it.
pub fn operator_target(target: &str, node: &str) -> String {
    let separator = if target.contains('?') { '&' } else { '?' };
    format!(
        "{target}{separator}to={node}&{}={}",
        shoal_core::auth::NONCE_PARAM,
        fresh_nonce()
    )
}

/// The node id of the cache at `base` (its `/_shoal/mesh` report).
async fn node_id_of(client: &reqwest::Client, base: &str) -> anyhow::Result<String> {
    let url = format!("{base}/_shoal/mesh");
    let response = client.get(&url).send().await.with_context(|| url.clone())?;
    let status = response.status();
    anyhow::ensure!(
        status.is_success(),
        "{url}: {status}: is it a cache in a mesh (with a cluster secret)?"
    );
    let body = response.bytes().await.with_context(|| url.clone())?;
    let report: serde_json::Value =
        serde_json::from_slice(&body).with_context(|| format!("{url}: not JSON"))?;
    let id = report["self_id"]
        .as_str()
        .filter(|id| shoal_core::auth::valid_node_name(id))
        .with_context(|| format!("{url}: no valid self_id in the answer"))?;
    Ok(id.to_string())
}

/// 32 hex digits, unique per call (the time, the process, a counter):
/// a nonce need not be secret, the MAC covers it.
fn fresh_nonce() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut hasher = blake3::Hasher::new();
    hasher.update(&nanos.to_le_bytes());
    hasher.update(&std::process::id().to_le_bytes());
    hasher.update(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    hasher.finalize().to_hex()[..32].to_string()
}

/// POSTs `target` to the cache at `base` with an operator token signed by
/// the cluster key; the answer's body, or an error naming the URL.
async fn signed_post(
    client: &reqwest::Client,
    key: &shoal_core::auth::ClusterKey,
    base: &str,
    target: &str,
) -> anyhow::Result<String> {
    let node = node_id_of(client, base).await?;
    let target = &operator_target(target, &node);
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
