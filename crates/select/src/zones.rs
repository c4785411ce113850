//! Coverage zones: which zone a client address belongs to, and what each
//! zone's round-trip time and transit price to each cache region are.
//!
//! Read from TOML by the selector at start-up (an error names the zone and
//! the value at fault), then used as a pure lookup: longest-prefix match
//! over IPv4 and IPv6 CIDRs, falling back to a named zone.
//!
//! ```toml
//! fallback = "elsewhere"        # zone of addresses no CIDR covers
//!
//! [[zone]]
//! name = "eu-clients"
//! cidrs = ["10.1.0.0/16", "2001:db8:1::/48"]
//! regions = { eu-west = { rtt_ms = 8, transit_usd_per_gb = 0.0 },
//!             us-east = { rtt_ms = 85, transit_usd_per_gb = 0.01 } }
//!
//! [[zone]]
//! name = "elsewhere"
//! cidrs = []
//! regions = { eu-west = { rtt_ms = 60, transit_usd_per_gb = 0.02 } }
//! ```
//!
//! A region a zone does not list is unreachable from it (never planned).

use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

/// Largest coverage-zone file accepted.
pub const ZONE_FILE_BYTES_MAX: usize = 16 << 20;
/// Most CIDRs over all zones.
pub const CIDRS_MAX: usize = 1_000_000;

/// How far one zone is from one region.
#[derive(Clone, Copy, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reach {
    pub rtt_ms: f64,
    pub transit_usd_per_gb: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ZoneFile {
    fallback: String,
    #[serde(default, rename = "zone")]
    zones: Vec<ZoneSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ZoneSpec {
    name: String,
    #[serde(default)]
    cidrs: Vec<String>,
    regions: BTreeMap<String, Reach>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ZoneError {
    #[error("coverage-zone file is larger than {ZONE_FILE_BYTES_MAX} bytes")]
    TooLarge,
    #[error("coverage-zone file: {0}")]
    Syntax(String),
    #[error("zone `{zone}`: `{cidr}` is not a CIDR ({why})")]
    BadCidr {
        zone: String,
        cidr: String,
        why: &'static str,
    },
    #[error("`{cidr}` is in zone `{first}` and in zone `{second}`")]
    DuplicateCidr {
        cidr: String,
        first: String,
        second: String,
    },
    #[error("zone `{0}` is defined twice")]
    DuplicateZone(String),
    #[error("the fallback zone `{0}` is not defined")]
    UnknownFallback(String),
    #[error("zone `{0}` lists no region")]
    NoRegions(String),
    #[error(
        "zone `{zone}`, region `{region}`: rtt_ms and transit_usd_per_gb must be finite and >= 0"
    )]
    BadReach { zone: String, region: String },
    #[error("more than {CIDRS_MAX} CIDRs")]
    TooManyCidrs,
}

/// A parsed, validated coverage-zone map.
#[derive(Debug, Clone)]
pub struct Zones {
    names: Vec<String>,
    reach: Vec<BTreeMap<String, Reach>>,
    fallback: usize,
    /// Per prefix length (over 128-bit addresses, IPv4 mapped), the
    /// networks of that length and their zone.
    by_prefix: Vec<(u8, HashMap<u128, usize>)>,
}

/// An address as 128 bits (IPv4 as ::ffff:a.b.c.d).
fn bits(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn mask(prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(prefix))
    }
}

/// A parsed CIDR (IPv4 mapped into IPv6 space).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: u128,
    prefix: u8,
}

impl Cidr {
    /// `a.b.c.d/n` or `x::/n`; the reason on error.
    pub fn parse(text: &str) -> Result<Self, &'static str> {
        let (network, prefix) = parse_cidr(text)?;
        Ok(Self { network, prefix })
    }

    pub fn contains(&self, addr: IpAddr) -> bool {
        bits(addr) & mask(self.prefix) == self.network
    }
}

/// `a.b.c.d/n` or `x::/n` → (network bits, prefix length over 128 bits).
fn parse_cidr(text: &str) -> Result<(u128, u8), &'static str> {
    let (addr, len) = text.split_once('/').ok_or("missing /prefix")?;
    let addr: IpAddr = addr.trim().parse().map_err(|_| "bad address")?;
    let len: u8 = len.trim().parse().map_err(|_| "bad prefix length")?;
    let (len, max) = match addr {
        IpAddr::V4(_) => (len.saturating_add(96), 32 + 96),
        IpAddr::V6(_) => (len, 128),
    };
    if len > max {
        return Err("prefix length too long");
    }
    let network = bits(addr);
    if network & !mask(len) != 0 {
        return Err("host bits set");
    }
    Ok((network, len))
}

impl Zones {
    pub fn parse(text: &str) -> Result<Self, ZoneError> {
        if text.len() > ZONE_FILE_BYTES_MAX {
            return Err(ZoneError::TooLarge);
        }
        let file: ZoneFile = toml::from_str(text).map_err(|e| ZoneError::Syntax(e.to_string()))?;
        let mut names: Vec<String> = Vec::new();
        let mut reach = Vec::new();
        let mut seen: HashMap<(u128, u8), usize> = HashMap::new();
        let mut total_cidrs = 0usize;
        for spec in &file.zones {
            if names.contains(&spec.name) {
                return Err(ZoneError::DuplicateZone(spec.name.clone()));
            }
            if spec.regions.is_empty() {
                return Err(ZoneError::NoRegions(spec.name.clone()));
            }
            for (region, r) in &spec.regions {
                let ok = |v: f64| v.is_finite() && v >= 0.0;
                if !(ok(r.rtt_ms) && ok(r.transit_usd_per_gb)) {
                    return Err(ZoneError::BadReach {
                        zone: spec.name.clone(),
                        region: region.clone(),
                    });
                }
            }
            let index = names.len();
            total_cidrs += spec.cidrs.len();
            if total_cidrs > CIDRS_MAX {
                return Err(ZoneError::TooManyCidrs);
            }
            for cidr in &spec.cidrs {
                let key = parse_cidr(cidr).map_err(|why| ZoneError::BadCidr {
                    zone: spec.name.clone(),
                    cidr: cidr.clone(),
                    why,
                })?;
                if let Some(first) = seen.insert(key, index) {
                    return Err(ZoneError::DuplicateCidr {
                        cidr: cidr.clone(),
                        first: names[first].clone(),
                        second: spec.name.clone(),
                    });
                }
            }
            names.push(spec.name.clone());
            reach.push(spec.regions.clone());
        }
        let fallback = names
            .iter()
            .position(|n| *n == file.fallback)
            .ok_or_else(|| ZoneError::UnknownFallback(file.fallback.clone()))?;
        let mut by_length: BTreeMap<u8, HashMap<u128, usize>> = BTreeMap::new();
        for ((network, len), zone) in seen {
            by_length.entry(len).or_default().insert(network, zone);
        }
        // Longest prefixes first.
        let by_prefix = by_length.into_iter().rev().collect();
        Ok(Self {
            names,
            reach,
            fallback,
            by_prefix,
        })
    }

    /// The zone of a client address: the longest matching CIDR, else the
    /// fallback.
    pub fn zone_of(&self, addr: IpAddr) -> &str {
        let addr = bits(addr);
        let index = self
            .by_prefix
            .iter()
            .find_map(|(len, networks)| networks.get(&(addr & mask(*len))).copied())
            .unwrap_or(self.fallback);
        &self.names[index]
    }

    /// How far `zone` is from `region`; `None` if the zone does not list it
    /// (or there is no such zone).
    pub fn reach(&self, zone: &str, region: &str) -> Option<Reach> {
        let index = self.names.iter().position(|n| n == zone)?;
        self.reach[index].get(region).copied()
    }

    /// The region nearest `zone` (least round-trip time; ties by name):
    /// where a client of the zone is, for grouping viewers' peers.
    pub fn nearest_region(&self, zone: &str) -> Option<&str> {
        let index = self.names.iter().position(|n| n == zone)?;
        self.reach[index]
            .iter()
            .min_by(|a, b| a.1.rtt_ms.total_cmp(&b.1.rtt_ms).then(a.0.cmp(b.0)))
            .map(|(region, _)| region.as_str())
    }

    pub fn zone_names(&self) -> &[String] {
        &self.names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
fallback = "elsewhere"

[[zone]]
name = "eu"
cidrs = ["10.1.0.0/16", "2001:db8:1::/48"]
regions = { eu-west = { rtt_ms = 8, transit_usd_per_gb = 0.0 }, us-east = { rtt_ms = 85, transit_usd_per_gb = 0.01 } }

[[zone]]
name = "eu-office"
cidrs = ["10.1.2.0/24"]
regions = { eu-west = { rtt_ms = 2, transit_usd_per_gb = 0.0 } }

[[zone]]
name = "elsewhere"
regions = { eu-west = { rtt_ms = 60, transit_usd_per_gb = 0.02 } }
"#;

    #[test]
    fn longest_prefix_wins_and_the_fallback_catches_the_rest() {
        let zones = Zones::parse(SAMPLE).unwrap();
        let zone = |a: &str| zones.zone_of(a.parse().unwrap()).to_string();
        assert_eq!(zone("10.1.9.9"), "eu");
        assert_eq!(zone("10.1.2.77"), "eu-office");
        assert_eq!(zone("2001:db8:1:ffff::1"), "eu");
        assert_eq!(zone("192.0.2.1"), "elsewhere");
        assert_eq!(zone("::ffff:10.1.2.3"), "eu-office");
        assert_eq!(
            zones.reach("eu", "us-east"),
            Some(Reach {
                rtt_ms: 85.0,
                transit_usd_per_gb: 0.01
            })
        );
        assert_eq!(zones.reach("eu-office", "us-east"), None);
        // A zone's clients are placed in its nearest region.
        assert_eq!(zones.nearest_region("eu"), Some("eu-west"));
        assert_eq!(zones.nearest_region("no such zone"), None);
    }

    #[test]
    fn mistakes_are_named() {
        let cases = [
            ("fallback = \"x\"", "the fallback zone `x` is not defined"),
            (
                "fallback = \"a\"\n[[zone]]\nname = \"a\"\ncidrs = [\"10.0.0.1/8\"]\nregions = { r = { rtt_ms = 1, transit_usd_per_gb = 0 } }",
                "host bits set",
            ),
            (
                "fallback = \"a\"\n[[zone]]\nname = \"a\"\ncidrs = [\"10.0.0.0/33\"]\nregions = { r = { rtt_ms = 1, transit_usd_per_gb = 0 } }",
                "prefix length too long",
            ),
            (
                "fallback = \"a\"\n[[zone]]\nname = \"a\"\ncidrs = [\"10.0.0.0/8\"]\nregions = { r = { rtt_ms = 1, transit_usd_per_gb = 0 } }\n[[zone]]\nname = \"b\"\ncidrs = [\"10.0.0.0/8\"]\nregions = { r = { rtt_ms = 1, transit_usd_per_gb = 0 } }",
                "is in zone `a` and in zone `b`",
            ),
            (
                "fallback = \"a\"\n[[zone]]\nname = \"a\"\nregions = {}",
                "lists no region",
            ),
            (
                "fallback = \"a\"\n[[zone]]\nname = \"a\"\nregions = { r = { rtt_ms = -1, transit_usd_per_gb = 0 } }",
                "must be finite and >= 0",
            ),
            (
                "fallback = \"a\"\n[[zone]]\nname = \"a\"\nregions = { r = { rtt_ms = 1, transit_usd_per_gb = 0 } }\n[[zone]]\nname = \"a\"\nregions = { r = { rtt_ms = 1, transit_usd_per_gb = 0 } }",
                "defined twice",
            ),
            ("fallback = 3", "coverage-zone file"),
            (
                "fallback = \"a\"\nsurprise = 1",
                "unknown field",
            ),
        ];
        for (text, expected) in cases {
            let error = Zones::parse(text).unwrap_err().to_string();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }
}
