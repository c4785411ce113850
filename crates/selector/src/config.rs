//! What `shoal selector` can be told (CLI, TOML or environment), and the
//! checks made at start-up: every error names the setting at fault.
//!
//! ```toml
//! listen = "127.0.0.1:8070"
//! zones_file = "zones.toml"            # optional; see shoal_select::zones
//!
//! [mesh]
//! gossip = "127.0.0.1:7950"
//! seeds = ["127.0.0.1:7946"]
//! cluster_secret = "at least sixteen bytes"
//!
//! [[service]]
//! name = "video"
//! hosts = ["video.example.com"]        # empty: any host
//! path_prefix = "/video/"
//! origin = "http://origin.example.com:8080"
//! bitrate_mbps = 8
//! headroom = 1.5
//! ```

use serde::{Deserialize, Serialize};
use shoal_select::{BITRATE_MBPS_MAX, HEADROOM_MAX, SOURCES_MAX};
use shoal_server::ServerLimits;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Most peer connections a service may let a viewer keep.
pub const P2P_PEERS_MAX: u32 = 200;
/// Most delivery services in one selector.
pub const SERVICES_MAX: usize = 10_000;
/// Most host names per service.
pub const HOSTS_PER_SERVICE_MAX: usize = 1_000;
/// Most trusted proxy CIDRs.
pub const TRUSTED_PROXIES_MAX: usize = 1_000;
/// Longest path prefix.
pub const PATH_PREFIX_LEN_MAX_BYTES: usize = 1_024;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SelectorConfig {
    /// Where clients and tools reach the selector.
    pub listen: SocketAddr,
    /// Coverage zones (client CIDR → zone → RTT and transit price per
    /// region). Without one, every client is in one zone that reaches every
    /// region at no transit cost and no latency.
    pub zones_file: Option<PathBuf>,
    /// Latency penalty: US dollars per GB for each millisecond of RTT.
    pub latency_usd_per_gb_per_ms: f64,
    /// Caches whose cost is within this fraction of each other are ordered
    /// by the object's rendezvous rank (keeps objects on the same caches).
    pub affinity_band: f64,
    /// Spare egress assumed for a cache that announces no cap, Mbit/s.
    pub uncapped_cache_mbps: f64,
    /// Proxies (CIDRs) whose `X-Forwarded-For` is believed: behind them,
    /// the client's zone comes from the header, not the connection.
    pub trusted_proxies: Vec<String>,
    /// How many sessions a cache's fill is expected to serve: each plan is
    /// charged 1/N of the fill price of bytes a cache lacks (1: the whole
    /// fill, which sends viewers to far caches that happen to hold the
    /// object; see docs/selector-design.md for how 4 was chosen).
    pub fill_reuse_sessions: f64,
    /// Rate planned on a cache counts against its spare egress (at most
    /// 3/4 of it) until its gossiped load shows it: decays with this time
    /// constant, ms (0: off).
    pub reservation_decay_ms: u64,
    /// How long what a shield said about a path is reused, ms.
    pub object_ttl_ms: u64,
    /// A client that asks again for a path within this many seconds of its
    /// last request is sent the same version (so the later connections of
    /// a multi-connection download never mix versions); 0: off.
    pub version_affinity_s: u64,
    /// How long "no such object" is remembered, ms.
    pub missing_ttl_ms: u64,
    /// Paths whose lookup is remembered (oldest dropped beyond).
    pub object_entries_max: usize,
    /// Longest wait for a shield to say what a path is (it may ask the
    /// origin), ms.
    pub lookup_timeout_ms: u64,
    /// Longest wait for a holder's piece set, ms (slower holders count as
    /// holding what their summary says).
    pub piece_probe_timeout_ms: u64,
    pub limits: ServerLimits,
    /// One line per request (`format` combined, json or off; `path`,
    /// standard output when unset).
    pub access_log: shoal_server::AccessLogConfig,
    /// An HTTPS listener beside the plain one (`[tls]`).
    pub tls: shoal_server::tls::TlsConfig,
    /// The live dashboard at `/dashboard` (`[dashboard]`).
    pub dashboard: DashboardSettings,
    pub mesh: SelectorMesh,
    /// Delivery services; none configured means one catch-all service
    /// (`default_service`).
    #[serde(rename = "service")]
    pub services: Vec<DeliveryService>,
}

impl Default for SelectorConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8070)),
            zones_file: None,
            latency_usd_per_gb_per_ms: 0.000_1,
            affinity_band: 0.02,
            uncapped_cache_mbps: 10_000.0,
            trusted_proxies: Vec::new(),
            fill_reuse_sessions: 4.0,
            reservation_decay_ms: 2_000,
            object_ttl_ms: 10_000,
            version_affinity_s: 60,
            missing_ttl_ms: 2_000,
            object_entries_max: 100_000,
            lookup_timeout_ms: 5_000,
            piece_probe_timeout_ms: 250,
            limits: ServerLimits::default(),
            access_log: Default::default(),
            tls: Default::default(),
            dashboard: DashboardSettings::default(),
            mesh: SelectorMesh::default(),
            services: Vec::new(),
        }
    }
}

/// The live dashboard (`[dashboard]` in TOML).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DashboardSettings {
    /// Serve `/dashboard` and `/_shoal/dashboard` (false: both answer 404).
    pub enabled: bool,
    /// How often the fleet is sampled for the charts, ms.
    pub sample_ms: u64,
    /// How far back the charts reach, s.
    pub history_s: u64,
}

impl Default for DashboardSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            sample_ms: 2_000,
            history_s: 600,
        }
    }
}

/// Fastest dashboard sampling, ms.
pub const DASHBOARD_SAMPLE_MS_MIN: u64 = 250;

impl DashboardSettings {
    /// Samples kept for `history_s`.
    pub fn points_max(&self) -> usize {
        usize::try_from(self.history_s.saturating_mul(1_000) / self.sample_ms.max(1))
            .unwrap_or(usize::MAX)
            .clamp(1, crate::dashboard::HISTORY_POINTS_MAX)
    }
}

/// Joining the mesh as an observer (`[mesh]` in TOML).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SelectorMesh {
    /// UDP address to gossip on (required).
    pub gossip: Option<SocketAddr>,
    pub gossip_advertise: Option<SocketAddr>,
    pub seeds: Vec<String>,
    pub cluster_secret: String,
    /// Name in the gossip (default: `selector-<host name>-<port>`, unique
    /// across hosts: it also homes swarms in the tracker).
    pub node_id: Option<String>,
    /// HTTP address announced in the gossip (default: the listen address).
    pub http_advertise: Option<SocketAddr>,
    pub gossip_interval_ms: u64,
    pub phi_threshold: f64,
    pub peer_connect_timeout_ms: u64,
}

impl Default for SelectorMesh {
    fn default() -> Self {
        Self {
            gossip: None,
            gossip_advertise: None,
            seeds: Vec::new(),
            cluster_secret: String::new(),
            node_id: None,
            http_advertise: None,
            gossip_interval_ms: 500,
            phi_threshold: 8.0,
            peer_connect_timeout_ms: 2_000,
        }
    }
}

/// A delivery service: a family of objects with one committed bitrate.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DeliveryService {
    pub name: String,
    /// Host names (without port) this service answers; empty: any host.
    pub hosts: Vec<String>,
    /// Paths under this prefix belong to the service (the longest matching
    /// prefix wins; a host match beats a wildcard).
    pub path_prefix: String,
    /// The origin the caches fill this service from. When no cache can
    /// serve, clients are sent there rather than left without an answer
    /// (unless `origin_fallback = false`).
    pub origin: Option<String>,
    pub origin_fallback: bool,
    /// What each viewer must receive, Mbit/s.
    pub bitrate_mbps: f64,
    /// Plans carry `bitrate × headroom`: the slack that lets a player
    /// refill its buffer and ride out a slow source.
    pub headroom: f64,
    /// The fewest caches a viewer's shares are spread over (1..=8): no
    /// share carries more than `bitrate × headroom / min_sources`.
    pub min_sources: u32,
    /// Hold standby capacity (not billed) on the plan's caches, or on the
    /// cheapest others, so that losing any one source leaves the
    /// committed bitrate: the others raise their output, or a standby
    /// cache is brought on stream.
    pub survive_one_loss: bool,
    /// What a GB fetched from the origin costs (a cache that lacks the
    /// object and has no sibling holding it pays this to fill).
    pub origin_usd_per_gb: f64,
    /// When every cache that could serve is at its egress cap:
    /// `best_effort` (default) sends the client to the cheapest of them
    /// anyway (the rate is what they can give; the shortfall is
    /// reported); `refuse` answers 503 (or the origin, with
    /// `origin_fallback`).
    pub when_saturated: WhenSaturated,
    /// Viewers' clients share pieces with each other (plans name the
    /// object's swarm and this selector's tracker). On by default; off for
    /// a service whose viewers must not upload.
    pub p2p: bool,
    /// Viewers' default upload cap, Mbit/s (their `--upload-mbps` wins;
    /// unset: no cap).
    pub p2p_upload_mbps: Option<f64>,
    /// Peer connections a viewer keeps at most.
    pub p2p_peers_max: u32,
    /// Downloads: the pace viewers hold, Mbit/s, the caches filling only
    /// what peers leave (their `--target-mbps` wins; unset: as fast as
    /// every source allows).
    pub p2p_target_mbps: Option<f64>,
    /// Signed URLs required (`[service.signing]`, as at the caches): the
    /// selector refuses an unsigned or badly signed request itself, and
    /// its redirects and plans carry the signature on to the caches.
    pub signing: Option<shoal_core::url_sign::SigningSettings>,
}

/// See [`DeliveryService::when_saturated`].
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WhenSaturated {
    #[default]
    BestEffort,
    Refuse,
}

impl Default for DeliveryService {
    fn default() -> Self {
        Self {
            name: String::new(),
            hosts: Vec::new(),
            path_prefix: "/".into(),
            origin: None,
            origin_fallback: true,
            bitrate_mbps: 8.0,
            headroom: 1.5,
            min_sources: 2,
            survive_one_loss: true,
            origin_usd_per_gb: 0.05,
            when_saturated: WhenSaturated::BestEffort,
            p2p: true,
            p2p_upload_mbps: None,
            p2p_peers_max: 50,
            p2p_target_mbps: None,
            signing: None,
        }
    }
}

/// The catch-all service used when the configuration lists none.
pub fn default_service() -> DeliveryService {
    DeliveryService {
        name: "default".into(),
        ..DeliveryService::default()
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("invalid selector configuration: {0}")]
pub struct ConfigError(pub String);

fn finite_in(value: f64, low: f64, high: f64) -> bool {
    value.is_finite() && value >= low && value <= high
}

impl SelectorConfig {
    /// Checks what the types cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |what: String| Err(ConfigError(what));
        self.validate_mesh()?;
        self.validate_plan_settings()?;
        for (name, value, low, high) in [
            ("object_ttl_ms", self.object_ttl_ms, 0, 3_600_000),
            ("version_affinity_s", self.version_affinity_s, 0, 3_600),
            ("missing_ttl_ms", self.missing_ttl_ms, 0, 3_600_000),
            ("reservation_decay_ms", self.reservation_decay_ms, 0, 60_000),
            ("lookup_timeout_ms", self.lookup_timeout_ms, 100, 60_000),
            (
                "mesh.peer_connect_timeout_ms",
                self.mesh.peer_connect_timeout_ms,
                50,
                60_000,
            ),
            (
                "piece_probe_timeout_ms",
                self.piece_probe_timeout_ms,
                10,
                60_000,
            ),
            (
                "dashboard.sample_ms",
                self.dashboard.sample_ms,
                DASHBOARD_SAMPLE_MS_MIN,
                60_000,
            ),
            ("dashboard.history_s", self.dashboard.history_s, 10, 86_400),
        ] {
            if !(low..=high).contains(&value) {
                return bad(format!("{name} must be within {low}..={high}"));
            }
        }
        if self.trusted_proxies.len() > TRUSTED_PROXIES_MAX {
            return bad(format!("more than {TRUSTED_PROXIES_MAX} trusted_proxies"));
        }
        for cidr in &self.trusted_proxies {
            if let Err(why) = shoal_select::zones::Cidr::parse(cidr) {
                return bad(format!("trusted_proxies: `{cidr}` is not a CIDR ({why})"));
            }
        }
        if !(1..=1_000_000).contains(&self.object_entries_max) {
            return bad("object_entries_max must be within 1..=1000000".into());
        }
        if self.lookup_timeout_ms >= self.limits.idle_timeout_ms {
            return bad(format!(
                "lookup_timeout_ms ({}) must be below limits.idle_timeout_ms ({}), or clients are cut off before their plan",
                self.lookup_timeout_ms, self.limits.idle_timeout_ms
            ));
        }
        self.validate_services()
    }

    /// The mesh settings a selector cannot plan without: its gossip
    /// address and at least one seed.
    fn validate_mesh(&self) -> Result<(), ConfigError> {
        let bad = |what: String| Err(ConfigError(what));
        if self.mesh.gossip.is_none() {
            return bad(
                "a selector plans from the mesh's gossip: set mesh.gossip (--gossip ADDR) and mesh.seeds (--seed ADDR)".into(),
            );
        }
        if self.mesh.seeds.is_empty() {
            return bad(
                "mesh.seeds is empty: name at least one cache's gossip address (--seed ADDR)"
                    .into(),
            );
        }
        if self.mesh.cluster_secret.len() < shoal_core::auth::CLUSTER_SECRET_LEN_MIN_BYTES {
            return bad(format!(
                "mesh.cluster_secret is {}: set the mesh's secret (at least {} bytes) in SHOAL_SELECTOR_MESH__CLUSTER_SECRET, --cluster-secret or [mesh] cluster_secret",
                if self.mesh.cluster_secret.is_empty() { "not set" } else { "too short" },
                shoal_core::auth::CLUSTER_SECRET_LEN_MIN_BYTES
            ));
        }
        Ok(())
    }

    /// The planner's knobs (latency penalty, affinity band, uncapped
    /// caches' egress, fill reuse), each within its range.
    fn validate_plan_settings(&self) -> Result<(), ConfigError> {
        let bad = |what: String| Err(ConfigError(what));
        if !finite_in(self.latency_usd_per_gb_per_ms, 0.0, 1.0) {
            return bad("latency_usd_per_gb_per_ms must be within 0..=1".into());
        }
        if !finite_in(self.affinity_band, 0.0, 0.5) {
            return bad("affinity_band must be within 0..=0.5".into());
        }
        if !finite_in(self.uncapped_cache_mbps, 1.0, BITRATE_MBPS_MAX) {
            return bad(format!(
                "uncapped_cache_mbps must be within 1..={BITRATE_MBPS_MAX}"
            ));
        }
        if !finite_in(
            self.fill_reuse_sessions,
            1.0,
            shoal_select::FILL_REUSE_SESSIONS_MAX,
        ) {
            return bad(format!(
                "fill_reuse_sessions must be within 1..={}",
                shoal_select::FILL_REUSE_SESSIONS_MAX
            ));
        }
        Ok(())
    }

    /// The delivery services, each on its own and as a set: no name twice,
    /// no two claiming the same host and path prefix.
    fn validate_services(&self) -> Result<(), ConfigError> {
        let bad = |what: String| Err(ConfigError(what));
        if self.services.len() > SERVICES_MAX {
            return bad(format!("more than {SERVICES_MAX} delivery services"));
        }
        for service in &self.services {
            service.validate()?;
        }
        // Two services answering the same host and prefix are a mistake
        // the operator should hear about now, not a coin toss later.
        let mut names = std::collections::HashSet::new();
        let mut claims: std::collections::HashMap<(&str, &str), &str> =
            std::collections::HashMap::new();
        for service in &self.services {
            if !names.insert(service.name.as_str()) {
                return bad(format!(
                    "delivery service `{}` is defined twice",
                    service.name
                ));
            }
            // "" stands for "any host".
            let hosts: Vec<&str> = if service.hosts.is_empty() {
                vec![""]
            } else {
                service.hosts.iter().map(String::as_str).collect()
            };
            for host in hosts {
                if let Some(other) =
                    claims.insert((host, service.path_prefix.as_str()), &service.name)
                {
                    return bad(format!(
                        "delivery services `{other}` and `{}` both claim path prefix `{}` on the same host",
                        service.name, service.path_prefix
                    ));
                }
            }
        }
        Ok(())
    }

    /// The services to serve: the configured ones, or the catch-all.
    pub fn effective_services(&self) -> Vec<DeliveryService> {
        if self.services.is_empty() {
            vec![default_service()]
        } else {
            self.services.clone()
        }
    }
}

impl DeliveryService {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let name = &self.name;
        let bad = |what: String| Err(ConfigError(format!("delivery service `{name}`: {what}")));
        if let Some(signing) = &self.signing {
            signing
                .keys(&format!("delivery service `{name}`"))
                .map_err(ConfigError)?;
        }
        if !shoal_core::auth::valid_node_name(name) {
            return Err(ConfigError(format!(
                "delivery service name `{name}` must be 1-64 characters of A-Z a-z 0-9 - _"
            )));
        }
        if !(self.bitrate_mbps.is_finite()
            && self.bitrate_mbps > 0.0
            && self.bitrate_mbps <= BITRATE_MBPS_MAX)
        {
            return bad(format!(
                "bitrate_mbps = {} is not within (0, {BITRATE_MBPS_MAX}]",
                self.bitrate_mbps
            ));
        }
        if !finite_in(self.headroom, 1.0, HEADROOM_MAX) {
            return bad(format!(
                "headroom = {} is not within 1..={HEADROOM_MAX}",
                self.headroom
            ));
        }
        if !(1..=SOURCES_MAX).contains(&self.min_sources) {
            return bad(format!("min_sources must be within 1..={SOURCES_MAX}"));
        }
        if !finite_in(self.origin_usd_per_gb, 0.0, 100.0) {
            return bad("origin_usd_per_gb must be within 0..=100".into());
        }
        for (key, value) in [
            ("p2p_upload_mbps", self.p2p_upload_mbps),
            ("p2p_target_mbps", self.p2p_target_mbps),
        ] {
            if let Some(mbps) = value {
                if !(mbps.is_finite() && mbps > 0.0 && mbps <= BITRATE_MBPS_MAX) {
                    return bad(format!(
                        "{key} = {mbps} is not within (0, {BITRATE_MBPS_MAX}] Mbit/s"
                    ));
                }
            }
        }
        if !(1..=P2P_PEERS_MAX).contains(&self.p2p_peers_max) {
            return bad(format!("p2p_peers_max must be within 1..={P2P_PEERS_MAX}"));
        }
        if !self.path_prefix.starts_with('/') || self.path_prefix.len() > PATH_PREFIX_LEN_MAX_BYTES
        {
            return bad(format!(
                "path_prefix `{}` must start with / and be at most {PATH_PREFIX_LEN_MAX_BYTES} bytes",
                self.path_prefix
            ));
        }
        if self.hosts.len() > HOSTS_PER_SERVICE_MAX {
            return bad(format!("more than {HOSTS_PER_SERVICE_MAX} hosts"));
        }
        for host in &self.hosts {
            let valid = !host.is_empty()
                && host.len() <= 253
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
                && !host.bytes().any(|b| b.is_ascii_uppercase());
            if !valid {
                return bad(format!(
                    "host `{host}` must be a lower-case DNS name without port"
                ));
            }
        }
        if let Some(origin) = &self.origin {
            let ok = origin
                .strip_prefix("http://")
                .is_some_and(|rest| !rest.is_empty() && !rest.contains(['?', '#', ' ']));
            if !ok {
                return bad(format!(
                    "origin `{origin}` must be an http:// base URL, e.g. http://origin:8080"
                ));
            }
        }
        Ok(())
    }

    /// Where a client goes when no cache can serve: `origin` + path.
    pub fn origin_url(&self, uri_path: &str) -> Option<String> {
        let origin = self.origin.as_ref().filter(|_| self.origin_fallback)?;
        Some(format!("{}{uri_path}", origin.trim_end_matches('/')))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_with(services: Vec<DeliveryService>) -> SelectorConfig {
        SelectorConfig {
            mesh: SelectorMesh {
                gossip: Some("127.0.0.1:0".parse().unwrap()),
                seeds: vec!["127.0.0.1:1".into()],
                cluster_secret: "0123456789abcdef".into(),
                ..SelectorMesh::default()
            },
            services,
            ..SelectorConfig::default()
        }
    }

    fn service(name: &str) -> DeliveryService {
        DeliveryService {
            name: name.into(),
            ..DeliveryService::default()
        }
    }

    #[test]
    fn errors_name_the_setting() {
        let cases: Vec<(DeliveryService, &str)> = vec![
            (
                DeliveryService {
                    bitrate_mbps: 0.0,
                    ..service("v")
                },
                "bitrate_mbps",
            ),
            (
                DeliveryService {
                    bitrate_mbps: f64::NAN,
                    ..service("v")
                },
                "bitrate_mbps",
            ),
            (
                DeliveryService {
                    bitrate_mbps: 5e6,
                    ..service("v")
                },
                "bitrate_mbps",
            ),
            (
                DeliveryService {
                    headroom: 0.5,
                    ..service("v")
                },
                "headroom",
            ),
            (
                DeliveryService {
                    min_sources: 0,
                    ..service("v")
                },
                "min_sources",
            ),
            (
                DeliveryService {
                    path_prefix: "video".into(),
                    ..service("v")
                },
                "path_prefix",
            ),
            (
                DeliveryService {
                    hosts: vec!["Video.example.com:80".into()],
                    ..service("v")
                },
                "host",
            ),
            (
                DeliveryService {
                    origin: Some("ftp://x".into()),
                    ..service("v")
                },
                "origin",
            ),
            (service("bad name"), "name"),
        ];
        for (service, needle) in cases {
            let error = config_with(vec![service.clone()]).validate().unwrap_err();
            assert!(error.0.contains(needle), "{service:?}: {error}");
        }
        let twice = config_with(vec![service("a"), service("a")]).validate();
        assert!(twice.unwrap_err().0.contains("defined twice"));
        let clash = config_with(vec![service("a"), service("b")]).validate();
        assert!(clash.unwrap_err().0.contains("both claim"));
        let mut proxies = config_with(vec![]);
        proxies.trusted_proxies = vec!["10.0.0.0/33".into()];
        assert!(proxies
            .validate()
            .unwrap_err()
            .0
            .contains("trusted_proxies"));
        let mut no_gossip = config_with(vec![]);
        no_gossip.mesh.gossip = None;
        assert!(no_gossip.validate().unwrap_err().0.contains("mesh.gossip"));
        assert!(config_with(vec![]).validate().is_ok());
        assert_eq!(
            config_with(vec![]).effective_services(),
            vec![default_service()]
        );
    }
}
