//! Configuration: defaults < TOML file (`--config`) < environment < flags.
//!
//! Environment variables are `SHOAL_CACHE_<KEY>` / `SHOAL_ORIGIN_<KEY>`, with
//! `__` for nesting (`SHOAL_CACHE_LIMITS__IDLE_TIMEOUT_MS=30000`).

use anyhow::Context;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::Serialize;

use shoal_core::ByteSize;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(clap::Args, Serialize)]
pub struct CacheArgs {
    /// TOML file with any of the settings below (and more: see docs/config.md).
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address to serve clients on, e.g. 127.0.0.1:8081.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Origin base URL, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// Directory for pieces and the index.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// Disk budget, e.g. 2GiB.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity: Option<ByteSize>,
    /// Memory budget for hot pieces, e.g. 512MiB.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_capacity: Option<ByteSize>,
    /// Eviction policy: s3fifo (default) or lru.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eviction: Option<String>,
    /// Seconds a path keeps its version without asking the origin when
    /// the origin sends no Cache-Control/Expires (default 60): the longest
    /// a republished file can go unseen.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub freshness_default_s: Option<u64>,
    /// Egress cap of this cache in megabits per second (all clients
    /// together); sets limits.egress_bytes_per_s.
    #[arg(long)]
    #[serde(skip)]
    pub egress_mbps: Option<u64>,
    #[command(flatten)]
    pub mesh: MeshArgs,
}

/// Joining a mesh of caches (`[mesh]` in TOML).
#[derive(clap::Args, Serialize)]
pub struct MeshArgs {
    /// UDP address to gossip on, e.g. 127.0.0.1:7946; joins a mesh.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gossip: Option<SocketAddr>,
    /// Gossip address of a member to contact first (repeat for several).
    #[arg(long = "seed")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub seeds: Vec<String>,
    /// Secret shared by every member of the mesh (at least 16 bytes);
    /// prefer SHOAL_CACHE_MESH__CLUSTER_SECRET or the config file.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_secret: Option<String>,
    /// Unique name of this cache in the mesh.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// Region this cache is in, e.g. eu-west.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Cost of one GB sent from this cache, in US dollars, e.g. 0.02.
    #[arg(long, allow_negative_numbers = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_per_gb: Option<f64>,
    /// HTTP address peers should use (when listening on 0.0.0.0).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_advertise: Option<SocketAddr>,
    /// Gossip address peers should use (when gossiping on 0.0.0.0).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gossip_advertise: Option<SocketAddr>,
}

/// `shoal selector` (delivery services and most knobs live in the TOML
/// file: see docs/config.md).
#[derive(clap::Args, Serialize)]
pub struct SelectorArgs {
    /// TOML file: delivery services (`[[service]]`), zones, mesh, limits.
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address to answer clients on, e.g. 127.0.0.1:8070.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Coverage-zone file (client CIDR -> zone -> RTT and transit per region).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zones_file: Option<PathBuf>,
    #[command(flatten)]
    pub mesh: SelectorMeshArgs,
}

/// The selector's place in the gossip (`[mesh]` in TOML).
#[derive(clap::Args, Serialize)]
pub struct SelectorMeshArgs {
    /// UDP address to gossip on, e.g. 127.0.0.1:7950.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gossip: Option<SocketAddr>,
    /// Gossip address of a cache to contact first (repeat for several).
    #[arg(long = "seed")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub seeds: Vec<String>,
    /// The mesh's shared secret; prefer SHOAL_SELECTOR_MESH__CLUSTER_SECRET
    /// or the config file.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_secret: Option<String>,
    /// Name of this selector in the gossip (default: selector-<port>).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// Gossip address peers should use (when gossiping on 0.0.0.0).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gossip_advertise: Option<SocketAddr>,
}

pub fn selector_config(args: SelectorArgs) -> anyhow::Result<shoal_selector::SelectorConfig> {
    let config: shoal_selector::SelectorConfig = layered(
        shoal_selector::SelectorConfig::default(),
        args.config.as_ref(),
        "SHOAL_SELECTOR_",
        &args,
    )?
    .extract()
    .context("selector configuration")?;
    config.validate()?;
    Ok(config)
}

#[derive(clap::Args, Serialize)]
pub struct OriginArgs {
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Directory to serve.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root: Option<PathBuf>,
    /// Address to listen on, e.g. 127.0.0.1:8080.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Egress cap of this origin in megabits per second (all clients
    /// together); sets limits.egress_bytes_per_s.
    #[arg(long)]
    #[serde(skip)]
    pub egress_mbps: Option<u64>,
}

fn layered<T: Serialize, A: Serialize>(
    defaults: T,
    file: Option<&PathBuf>,
    env_prefix: &str,
    args: &A,
) -> anyhow::Result<Figment> {
    let mut figment = Figment::from(Serialized::defaults(defaults));
    if let Some(path) = file {
        anyhow::ensure!(
            path.is_file(),
            "config file {} does not exist",
            path.display()
        );
        figment = figment.merge(Toml::file(path));
    }
    Ok(figment
        .merge(Env::prefixed(env_prefix).split("__"))
        .merge(Serialized::defaults(args)))
}

pub fn cache_config(args: CacheArgs) -> anyhow::Result<shoal_cache::CacheConfig> {
    let config: shoal_cache::CacheConfig = layered(
        shoal_cache::CacheConfig::default(),
        args.config.as_ref(),
        "SHOAL_CACHE_",
        &args,
    )?
    .extract()
    .context("cache configuration")?;
    let mut config = config;
    if let Some(mbps) = args.egress_mbps {
        config.limits.egress_bytes_per_s = mbps_to_bytes_per_s(mbps)?;
    }
    config.validate()?;
    Ok(config)
}

fn mbps_to_bytes_per_s(mbps: u64) -> anyhow::Result<u64> {
    anyhow::ensure!(
        mbps > 0,
        "--egress-mbps must be positive (omit it for no cap)"
    );
    mbps.checked_mul(125_000)
        .context("--egress-mbps is too large")
}

pub fn origin_config(args: OriginArgs) -> anyhow::Result<shoal_origin::OriginConfig> {
    let defaults = shoal_origin::OriginConfig::new("", SocketAddr::from(([127, 0, 0, 1], 8080)));
    let mut config: shoal_origin::OriginConfig =
        layered(defaults, args.config.as_ref(), "SHOAL_ORIGIN_", &args)?
            .extract()
            .context("origin configuration")?;
    if let Some(mbps) = args.egress_mbps {
        config.limits.egress_bytes_per_s = mbps_to_bytes_per_s(mbps)?;
    }
    anyhow::ensure!(
        !config.root.as_os_str().is_empty(),
        "an origin needs a root directory (--root DIR)"
    );
    Ok(config)
}
