//! Configuration: defaults < TOML file (`--config`) < environment < flags.
//!
//! Environment variables are `SHOAL_CACHE_<KEY>` / `SHOAL_SELECTOR_<KEY>` /
//! `SHOAL_ORIGIN_<KEY>`, with `__` for nesting
//! (`SHOAL_CACHE_LIMITS__IDLE_TIMEOUT_MS=30000`). A list takes plain commas
//! (`SHOAL_CACHE_MESH__SEEDS=10.0.0.5:7946,10.0.0.6:7946`) or TOML syntax.
//! Errors name where the bad value came from: the file and key, the
//! variable, or the flag. `--print-config` shows the merged result (the
//! secret hidden) and exits.

/// How much the runtime's egress flags may say: Mbit/s with decimals, to
/// bytes per second (the unit of `limits.egress_bytes_per_s`).
pub fn mbps_to_bytes_per_s(mbps: f64, flag: &str) -> anyhow::Result<u64> {
    anyhow::ensure!(
        mbps.is_finite() && mbps >= 0.0,
        "{flag} {mbps}: expected Mbit/s, a number ≥ 0 (decimals allowed, e.g. 12.5)"
    );
    let bytes = (mbps * 125_000.0).round();
    anyhow::ensure!(bytes < 1e18, "{flag} {mbps}: too large");
    Ok(bytes as u64)
}

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
    /// Egress cap of this cache in Mbit/s, decimals allowed (all clients
    /// together); sets limits.egress_bytes_per_s (= Mbit/s × 125,000).
    #[arg(long)]
    #[serde(skip)]
    pub egress_mbps: Option<f64>,
    /// Print the configuration as merged from defaults, the file, the
    /// environment and the flags (as TOML, the secret hidden), and exit.
    #[arg(long)]
    #[serde(skip)]
    pub print_config: bool,
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
    /// Print the merged configuration (as TOML, the secret hidden) and exit.
    #[arg(long)]
    #[serde(skip)]
    pub print_config: bool,
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

/// Settings that are lists: plain commas are accepted for them in the
/// environment.
const CACHE_LISTS: &[&str] = &["mesh.seeds", "ignored_query_params"];
const SELECTOR_LISTS: &[&str] = &["mesh.seeds", "trusted_proxies"];

pub fn selector_config(args: SelectorArgs) -> anyhow::Result<shoal_selector::SelectorConfig> {
    let prefix = "SHOAL_SELECTOR_";
    let config: shoal_selector::SelectorConfig = layered(
        shoal_selector::SelectorConfig::default(),
        args.config.as_ref(),
        prefix,
        SELECTOR_LISTS,
        &args,
    )?
    .extract()
    .map_err(|error| config_error::<SelectorArgs>(error, prefix, "selector"))?;
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
    /// Egress cap of this origin in Mbit/s, decimals allowed (all clients
    /// together); sets limits.egress_bytes_per_s (= Mbit/s × 125,000).
    #[arg(long)]
    #[serde(skip)]
    pub egress_mbps: Option<f64>,
    /// Print the merged configuration (as TOML) and exit.
    #[arg(long)]
    #[serde(skip)]
    pub print_config: bool,
}

fn layered<T: Serialize, A: Serialize>(
    defaults: T,
    file: Option<&PathBuf>,
    env_prefix: &str,
    lists: &[&str],
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
    // Lists given with plain commas are read here; the rest (and lists in
    // TOML syntax, `[...]`) by figment.
    let mut comma_lists = Vec::new();
    for key in lists {
        let variable = env_variable(env_prefix, key);
        if let Ok(value) = std::env::var(&variable) {
            if !value.trim_start().starts_with('[') {
                let items: Vec<String> = value
                    .split(',')
                    .map(|item| item.trim().to_string())
                    .filter(|item| !item.is_empty())
                    .collect();
                comma_lists.push((key.to_string(), items));
            }
        }
    }
    let skipped: Vec<String> = comma_lists
        .iter()
        .map(|(key, _)| key.replace('.', "__"))
        .collect();
    figment = figment.merge(
        Env::prefixed(env_prefix)
            .filter(move |name| {
                !skipped
                    .iter()
                    .any(|s| name.as_str().eq_ignore_ascii_case(s))
            })
            .split("__"),
    );
    for (key, items) in comma_lists {
        figment = figment.merge(Serialized::default(&key, items));
    }
    Ok(figment.merge(Serialized::defaults(args)))
}

/// The environment variable of a dotted key: `mesh.seeds` →
/// `SHOAL_CACHE_MESH__SEEDS`.
fn env_variable(prefix: &str, key: &str) -> String {
    format!("{prefix}{}", key.replace('.', "__").to_ascii_uppercase())
}

/// A figment error as an operator reads it: for each bad value, where it
/// came from (the file and key, the environment variable, or the flag)
/// and what is wrong, with the nearest known key for a misspelt one.
fn config_error<A>(error: figment::Error, env_prefix: &str, role: &str) -> anyhow::Error {
    // Figment names a serialized provider by its type: the flags' struct.
    let flags = std::any::type_name::<A>();
    let lines: Vec<String> = error
        .into_iter()
        .map(|error| {
            let key = error.path.join(".");
            let wrong = match &error.kind {
                figment::error::Kind::UnknownField(found, expected) => {
                    let near = nearest(found, expected)
                        .map(|n| format!(" (did you mean `{n}`?)"))
                        .unwrap_or_default();
                    format!("unknown setting `{found}`{near}")
                }
                kind => kind.to_string(),
            };
            let unknown = matches!(error.kind, figment::error::Kind::UnknownField(..));
            // For an unknown field the path already ends in its name.
            let key = if unknown {
                error.path[..error.path.len().saturating_sub(1)].join(".")
            } else {
                key
            };
            let place = match (
                error.metadata.as_ref(),
                error.metadata.as_ref().and_then(|m| m.source.as_ref()),
            ) {
                (_, Some(figment::Source::File(path))) => match key.as_str() {
                    "" => format!("{}", path.display()),
                    key => format!("{}, key `{key}`", path.display()),
                },
                (Some(meta), _) if meta.name.contains("environment") => {
                    let full = if unknown {
                        error.path.join(".")
                    } else {
                        key.clone()
                    };
                    format!("environment variable {}", env_variable(env_prefix, &full))
                }
                (Some(meta), _) if meta.name.contains(flags) && !key.is_empty() => {
                    let last = error.path.last().map(String::as_str).unwrap_or("");
                    format!("flag --{}", last.replace('_', "-"))
                }
                _ if key.is_empty() => "the configuration".to_string(),
                _ => format!("setting `{key}`"),
            };
            format!("{place}: {wrong}")
        })
        .collect();
    anyhow::anyhow!("{role} configuration: {}", lines.join("; "))
}

/// The expected name closest to `found` (at most two edits away).
fn nearest<'a>(found: &str, expected: &'a [&'a str]) -> Option<&'a str> {
    expected
        .iter()
        .map(|candidate| (edit_distance(found, candidate), *candidate))
        .filter(|(distance, _)| *distance <= 2)
        .min()
        .map(|(_, candidate)| candidate)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

pub fn cache_config(args: CacheArgs) -> anyhow::Result<shoal_cache::CacheConfig> {
    let prefix = "SHOAL_CACHE_";
    let config: shoal_cache::CacheConfig = layered(
        shoal_cache::CacheConfig::default(),
        args.config.as_ref(),
        prefix,
        CACHE_LISTS,
        &args,
    )?
    .extract()
    .map_err(|error| config_error::<CacheArgs>(error, prefix, "cache"))?;
    let mut config = config;
    if let Some(mbps) = args.egress_mbps {
        config.limits.egress_bytes_per_s = positive_cap(mbps, "--egress-mbps")?;
    }
    config.validate()?;
    Ok(config)
}

/// A flag's egress cap: positive (no flag at all means no cap).
fn positive_cap(mbps: f64, flag: &str) -> anyhow::Result<u64> {
    let bytes = mbps_to_bytes_per_s(mbps, flag)?;
    anyhow::ensure!(bytes > 0, "{flag} must be positive (omit it for no cap)");
    Ok(bytes)
}

/// The merged configuration as TOML, with `secret` keys hidden.
pub fn printable<T: Serialize>(config: &T) -> anyhow::Result<String> {
    let mut value = toml::Value::try_from(config).context("configuration as TOML")?;
    hide_secrets(&mut value);
    toml::to_string_pretty(&value).context("configuration as TOML")
}

fn hide_secrets(value: &mut toml::Value) {
    if let toml::Value::Table(table) = value {
        for (key, item) in table.iter_mut() {
            match item {
                // `[service.signing] keys`: key id → secret.
                toml::Value::Table(keys) if key == "keys" => {
                    for (_, secret) in keys.iter_mut() {
                        *secret = toml::Value::String("(set, hidden)".into());
                    }
                }
                toml::Value::String(text) if key.contains("secret") => {
                    *text = if text.is_empty() {
                        "(not set)".into()
                    } else {
                        "(set, hidden)".into()
                    };
                }
                toml::Value::Array(items) => items.iter_mut().for_each(hide_secrets),
                other => hide_secrets(other),
            }
        }
    }
}

pub fn origin_config(args: OriginArgs) -> anyhow::Result<shoal_origin::OriginConfig> {
    let defaults = shoal_origin::OriginConfig::new("", SocketAddr::from(([127, 0, 0, 1], 8080)));
    let prefix = "SHOAL_ORIGIN_";
    let mut config: shoal_origin::OriginConfig =
        layered(defaults, args.config.as_ref(), prefix, &[], &args)?
            .extract()
            .map_err(|error| config_error::<OriginArgs>(error, prefix, "origin"))?;
    if let Some(mbps) = args.egress_mbps {
        config.limits.egress_bytes_per_s = positive_cap(mbps, "--egress-mbps")?;
    }
    anyhow::ensure!(
        !config.root.as_os_str().is_empty(),
        "an origin needs a root directory (--root DIR)"
    );
    Ok(config)
}
