//! The selector's HTTP endpoints.
//!
//! - `GET /plan?path=P[&client=IP][&host=H][&exclude=NODE,…]`: the plan as
//!   JSON (a [`Decision`]): `sources` best first, each with the object's
//!   full `url` on that cache and its `share`; expected cost per GB,
//!   predicted bitrate, reasons, and what was left out and why.
//!   `exclude` (alias `degraded`) is how a client reports sources that
//!   went bad: the answer is a replacement plan without them.
//! - `GET /explain?…`: the same decision in sentences.
//! - `GET|HEAD /<path>`: a plain client is redirected (302) to the best
//!   cache; the other chosen caches follow as `Link: <url>; rel=duplicate;
//!   pri=N` (Metalink/HTTP, RFC 6249), which aria2c and other multi-source
//!   clients use as mirrors.
//! - `GET /_shoal/health`, `GET /_shoal/mesh`: liveness and the mesh as the
//!   selector sees it.
//!
//! A delivery service with `[service.signing]` needs a signed URL: its
//! `shoal-*` parameters come with the path (`/x?shoal-exp=…`, or beside
//! `path=` in `/plan`), are checked here and travel on in the cache URLs.
//!
//! Every parameter is parsed into a typed value first; anything malformed
//! is a 400 that says which parameter, an unknown service or object a 404.

use crate::config::{ConfigError, SelectorConfig};
use crate::decide::{decide, explain, Decision, Inputs, ObjectFacts, PlanSettings, EXCLUDE_MAX};
use crate::lookup::{Directory, Known, LookupError, LookupSettings};
use crate::services::ServiceTable;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use serde::Serialize;
use shoal_http::path::RequestPath;
use shoal_mesh::{shield_key, MeshConfig, MeshNode, MeshRole, ObserverState};
use shoal_proto::link::{MeshLink, PeerSettings};
use shoal_select::zones::{Reach, Zones};
use shoal_server::{Body, ConnInfo, ServerLimits};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Longest query string accepted.
pub const QUERY_LEN_MAX_BYTES: usize = 8_192;
/// Name of the zone every client is in without a coverage-zone file.
pub const DEFAULT_ZONE: &str = "everywhere";

#[derive(Debug, thiserror::Error)]
pub enum SelectorError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("coverage-zone file {path}: {error}")]
    Zones { path: String, error: String },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Mesh(#[from] shoal_mesh::MeshError),
    /// The access log or the TLS listener could not be set up.
    #[error("{0}")]
    AccessLog(String),
}

/// Counters shown by `/_shoal/health` and `/metrics`.
#[derive(Default, Debug)]
pub struct SelectorStats {
    pub plans: AtomicU64,
    pub redirects: AtomicU64,
    pub bad_requests: AtomicU64,
    pub shortfalls: AtomicU64,
    /// Tracker announces answered (refusals included).
    pub announces: AtomicU64,
    /// Requests refused for a missing or bad signed URL.
    pub signature_refusals: AtomicU64,
    /// Decisions per delivery service (configured names only: bounded).
    pub per_service:
        std::sync::Mutex<std::collections::BTreeMap<String, crate::metrics::ServiceTally>>,
}

/// What this selector planned on each cache recently, decaying as the
/// caches' own gossiped load catches up (egress is averaged over ~1 s and
/// published every second, so a new session shows in gossip ~2 s later).
/// Soft state: lost on restart, not shared between selectors; it only
/// keeps one selector's burst of requests from piling onto the same caches.
pub struct Reservations {
    decay_ms: f64,
    entries: std::sync::Mutex<std::collections::HashMap<String, (f64, std::time::Instant)>>,
}

/// Caches tracked at most (more than any mesh has).
const RESERVATIONS_MAX: usize = 100_000;

impl Reservations {
    /// `decay_ms` 0: off (nothing is reserved).
    pub fn new(decay_ms: u64) -> Self {
        Self {
            decay_ms: decay_ms as f64,
            entries: std::sync::Mutex::default(),
        }
    }

    fn decayed(&self, mbps: f64, at: std::time::Instant, now: std::time::Instant) -> f64 {
        let age_ms = now.saturating_duration_since(at).as_secs_f64() * 1e3;
        mbps * (-age_ms / self.decay_ms.max(1.0)).exp()
    }

    /// Planned Mbit/s per cache still in effect.
    pub fn current(&self, now: std::time::Instant) -> std::collections::HashMap<String, f64> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .iter()
            .map(|(node, (mbps, at))| (node.clone(), self.decayed(*mbps, *at, now)))
            .filter(|(_, mbps)| *mbps > 0.01)
            .collect()
    }

    pub fn add<'a>(&self, now: std::time::Instant, shares: impl Iterator<Item = (&'a str, f64)>) {
        if self.decay_ms <= 0.0 {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        for (node, mbps) in shares {
            if entries.len() >= RESERVATIONS_MAX && !entries.contains_key(node) {
                entries.retain(|_, (m, at)| self.decayed(*m, *at, now) > 0.01);
                if entries.len() >= RESERVATIONS_MAX {
                    continue;
                }
            }
            let entry = entries.entry(node.to_string()).or_insert((0.0, now));
            *entry = (self.decayed(entry.0, entry.1, now) + mbps, now);
        }
    }
}

/// What a decision about to be used counts against the caches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reserve {
    /// A look (explain, HEAD, monitoring).
    Nothing,
    /// A redirect: a plain client draws the shares and knows no standby.
    Shares,
    /// `/plan?reserve=1`: a client that uses the standby too.
    SharesAndStandby,
}

impl From<bool> for Reserve {
    fn from(plan_reserved: bool) -> Self {
        if plan_reserved {
            Reserve::SharesAndStandby
        } else {
            Reserve::Nothing
        }
    }
}

pub struct Selector {
    trusted_proxies: Vec<shoal_select::zones::Cidr>,
    lookup_timeout: std::time::Duration,
    reservations: Reservations,
    /// Standby planned lately (soft: limits only other plans' standby).
    standby_reservations: Reservations,
    affinity: crate::affinity::VersionAffinity,
    /// The purges the caches last announced (a digest): when it changes,
    /// what shields said about paths may be stale.
    purges_seen: std::sync::atomic::AtomicU64,
    services: ServiceTable,
    zones: Option<Zones>,
    pub(crate) node: Arc<MeshNode>,
    directory: Directory,
    settings: PlanSettings,
    pub stats: SelectorStats,
    /// The tracker viewers' peers announce to (`/announce`, `/scrape`).
    tracker: std::sync::Mutex<shoal_peer::tracker::Tracker>,
    /// Signed requests to other selectors (announces forwarded to a
    /// swarm's home).
    link: Arc<MeshLink>,
    /// The tracker's clock.
    started: std::time::Instant,
    /// Signing keys of the services that require signed URLs, by name.
    signing: HashMap<String, shoal_core::url_sign::SigningKeys>,
    /// Starting, ready or draining: what `/readyz` says.
    pub(crate) lifecycle: shoal_server::Lifecycle,
    /// The HTTP server's counters, once it serves.
    pub(crate) server_stats: std::sync::OnceLock<shoal_server::ServerStats>,
    /// When this selector started (Unix seconds), for `/metrics`.
    pub(crate) started_unix_s: f64,
    pub(crate) access_log: Option<Arc<shoal_server::AccessLog>>,
    dashboard_settings: crate::config::DashboardSettings,
    /// The fleet sampled for the dashboard's charts.
    dashboard: std::sync::Mutex<crate::dashboard::History>,
}

/// A selector with its port bound and the gossip joined, ready to serve.
pub struct BoundSelector {
    pub local_addr: SocketAddr,
    pub selector: Arc<Selector>,
    listener: tokio::net::TcpListener,
    limits: ServerLimits,
    force_stop: Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>,
    /// The HTTPS listener, when `[tls]` sets one.
    tls: Option<shoal_server::tls::BoundTls>,
}

impl BoundSelector {
    /// Checks `config`, reads the coverage zones, binds the port and joins
    /// the gossip as an observer.
    pub async fn bind(config: SelectorConfig) -> Result<Self, SelectorError> {
        config.validate()?;
        let zones = load_zones(&config)?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| SelectorError::Bind {
                addr: config.listen,
                source,
            })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| SelectorError::Bind {
                addr: config.listen,
                source,
            })?;
        let access_log = shoal_server::AccessLog::start(&config.access_log)
            .map_err(|e| SelectorError::AccessLog(e.to_string()))?;
        let tls = shoal_server::tls::BoundTls::bind(&config.tls)
            .await
            .map_err(|e| SelectorError::AccessLog(e.to_string()))?;
        let (node, directory, link) = join_mesh(&config, local_addr).await?;
        let mut selector = Selector::new(&config, zones, node, directory, link);
        selector.access_log = access_log;
        Ok(Self {
            local_addr,
            selector: Arc::new(selector),
            listener,
            limits: config.limits,
            force_stop: None,
            tls,
        })
    }

    /// The HTTPS address, when `[tls]` sets one.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls.as_ref().map(|t| t.local_addr)
    }

    /// The TLS identity (reloaded on SIGHUP), when `[tls]` sets one.
    pub fn tls_identity(&self) -> Option<Arc<shoal_server::tls::TlsIdentity>> {
        self.tls.as_ref().map(|t| t.identity.clone())
    }

    /// Ends a drain at once when `stop` resolves (a second SIGTERM).
    pub fn with_force_stop(
        mut self,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Self {
        self.force_stop = Some(Box::pin(stop));
        self
    }

    pub fn gossip_addr(&self) -> SocketAddr {
        self.selector.node.gossip_addr()
    }

    /// Serves until `shutdown` resolves, then drains (`/readyz` turns
    /// 503; see [`shoal_server::Server::serve`]) and leaves the gossip.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()> + Send + 'static) {
        let selector = self.selector.clone();
        let server = shoal_server::Server::new(self.listener, self.limits).with_role(
            self.selector.lifecycle.clone(),
            self.force_stop,
            self.selector.access_log.as_ref(),
            self.tls,
        );
        let _ = self.selector.server_stats.set(server.stats());
        let sampler = self
            .selector
            .dashboard_settings
            .enabled
            .then(|| tokio::spawn(sample_dashboard(Arc::downgrade(&self.selector))));
        self.selector.lifecycle.set_ready();
        server
            .serve(
                move |request, conn| {
                    let selector = selector.clone();
                    async move { selector.handle(request, conn).await }
                },
                shutdown,
            )
            .await;
        if let Some(sampler) = sampler {
            sampler.abort();
        }
        self.selector.node.leave().await;
    }
}

/// Records the fleet for the dashboard every `dashboard.sample_ms`, for
/// as long as the selector exists (it holds no strong reference).
async fn sample_dashboard(selector: std::sync::Weak<Selector>) {
    let Some(sample_ms) = selector.upgrade().map(|s| s.dashboard_settings.sample_ms) else {
        return;
    };
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(sample_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(selector) = selector.upgrade() else {
            return;
        };
        let sample = selector.fleet_sample(selector.dashboard_clock_ms());
        lock(&selector.dashboard).record(sample);
    }
}

fn saturating_sum(values: impl Iterator<Item = u64>) -> u64 {
    values.fold(0, u64::saturating_add)
}

/// The coverage zones from `config.zones_file` (`None`: no file, every
/// client in [`DEFAULT_ZONE`]).
fn load_zones(config: &SelectorConfig) -> Result<Option<Zones>, SelectorError> {
    let Some(path) = &config.zones_file else {
        return Ok(None);
    };
    let shown = path.display().to_string();
    let text = read_bounded(path).map_err(|error| SelectorError::Zones {
        path: shown.clone(),
        error,
    })?;
    Ok(Some(Zones::parse(&text).map_err(|e| {
        SelectorError::Zones {
            path: shown,
            error: e.to_string(),
        }
    })?))
}

/// This machine's host name (Linux), for a default node id that differs
/// between hosts; `localhost` if it cannot be read.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_string())
        .filter(|name| {
            !name.is_empty()
                && name.len() <= 64
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        })
        .unwrap_or_else(|| "localhost".into())
}

/// Joins the gossip as an observer (a selector serves no bytes) and sets
/// up the directory that asks the caches about objects.
async fn join_mesh(
    config: &SelectorConfig,
    local_addr: SocketAddr,
) -> Result<(Arc<MeshNode>, Directory, Arc<MeshLink>), SelectorError> {
    let mesh = &config.mesh;
    let node_id = mesh
        .node_id
        .clone()
        .unwrap_or_else(|| format!("selector-{}-{}", host_name(), local_addr.port()));
    let key = shoal_core::auth::ClusterKey::from_secret(&mesh.cluster_secret)
        .map_err(|e| ConfigError(format!("mesh.cluster_secret: {e}")))?;
    let gossip = mesh
        .gossip
        .ok_or_else(|| ConfigError("mesh.gossip is required".into()))?;
    let node = MeshNode::start(
        MeshConfig {
            role: MeshRole::Selector,
            node_id: node_id.clone(),
            gossip_listen: gossip,
            gossip_advertise: mesh.gossip_advertise,
            seeds: mesh.seeds.clone(),
            cluster_secret: mesh.cluster_secret.clone(),
            region: String::new(),
            http_advertise: mesh.http_advertise.unwrap_or(local_addr),
            https_advertise: None,
            egress_cap_bps: 0,
            cost_per_gb_microusd: 0,
            gossip_interval_ms: mesh.gossip_interval_ms,
            phi_threshold: mesh.phi_threshold,
        },
        Arc::new(ObserverState),
    )
    .await?;
    let link = MeshLink::new(
        node.clone(),
        key,
        node_id,
        PeerSettings {
            connect_timeout_ms: mesh.peer_connect_timeout_ms,
            read_timeout_ms: config.piece_probe_timeout_ms.max(1_000),
            shield_read_timeout_ms: config.lookup_timeout_ms,
            corrupt_pieces_max: 3,
            quarantine_ms: 60_000,
            auth_ttl_max_s: shoal_proto::link::AUTH_TTL_MIN_S,
        },
        Arc::default(),
    )
    .map_err(ConfigError)?;
    let link = Arc::new(link);
    let directory = Directory::new(
        link.clone(),
        LookupSettings {
            object_ttl_ms: config.object_ttl_ms,
            missing_ttl_ms: config.missing_ttl_ms,
            entries_max: config.object_entries_max,
            piece_probe_timeout_ms: config.piece_probe_timeout_ms,
        },
    );
    Ok((node, directory, link))
}

fn read_bounded(path: &std::path::Path) -> Result<String, String> {
    let metadata = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if metadata.len() > shoal_select::zones::ZONE_FILE_BYTES_MAX as u64 {
        return Err(format!(
            "larger than {} bytes",
            shoal_select::zones::ZONE_FILE_BYTES_MAX
        ));
    }
    std::fs::read_to_string(path).map_err(|e| e.to_string())
}

/// Names the peer's address on an announce one selector forwards to the
/// swarm's home: a query parameter, so the cluster signature covers it
/// (only a cluster member may set it, and a captured forward cannot be
/// replayed for another address).
pub const ANNOUNCE_FROM_PARAM: &str = "shoal_announce_from";
/// What a home selector answers a forward it cannot verify.
const FORWARD_REFUSED: &str = "forwarded announce (not signed by a cluster member)";

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A forwarded announce waits this long for the home selector.
const ANNOUNCE_FORWARD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Longest `X-Forwarded-For` read.
pub const FORWARDED_FOR_LEN_MAX_BYTES: usize = 2_048;

/// The client's address: the connection's, or, when that is a trusted
/// proxy, the rightmost `X-Forwarded-For` entry that is not one (entries
/// further left were written by whoever the client is and prove nothing).
pub fn client_address(
    peer: IpAddr,
    forwarded_for: Option<&HeaderValue>,
    trusted: &[shoal_select::zones::Cidr],
) -> IpAddr {
    let is_trusted = |addr: IpAddr| trusted.iter().any(|c| c.contains(addr));
    if !is_trusted(peer) {
        return peer;
    }
    let Some(value) = forwarded_for
        .filter(|v| v.len() <= FORWARDED_FOR_LEN_MAX_BYTES)
        .and_then(|v| v.to_str().ok())
    else {
        return peer;
    };
    let mut client = peer;
    for entry in value.rsplit(',') {
        match entry.trim().parse::<IpAddr>() {
            Ok(addr) => {
                client = addr;
                if !is_trusted(addr) {
                    break;
                }
            }
            // Garbage: stop at the last address we could read.
            Err(_) => break,
        }
    }
    client
}

/// Whether the client asked over HTTPS: on our HTTPS listener, or (from a
/// trusted proxy that terminated TLS) with `X-Forwarded-Proto: https` —
/// the last value, the one that proxy set.
pub fn client_used_https(
    conn_tls: bool,
    peer: IpAddr,
    forwarded_proto: Option<&HeaderValue>,
    trusted: &[shoal_select::zones::Cidr],
) -> bool {
    if conn_tls {
        return true;
    }
    if !trusted.iter().any(|c| c.contains(peer)) {
        return false;
    }
    forwarded_proto
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https"))
}

/// A request's parameters, parsed.
#[derive(Debug)]
pub struct Ask {
    pub path: RequestPath,
    /// Appended to the cache URLs (`?…`), empty if none.
    pub query_suffix: String,
    pub host: Option<String>,
    pub client: IpAddr,
    pub exclude: Vec<String>,
    /// `/plan?…&reserve=1`: a client about to download, whose shares
    /// count against the caches until gossip shows them. Plans made for
    /// anything else (monitoring, a look) reserve nothing.
    pub reserve: bool,
    /// Asked over HTTPS: sent only to caches that serve HTTPS, at their
    /// HTTPS address (never downgraded to plain HTTP).
    pub https: bool,
}

/// A refusal: status and one line for the person who sent it.
#[derive(Debug)]
pub struct Refusal(pub StatusCode, pub String);

fn bad(text: impl Into<String>) -> Refusal {
    Refusal(StatusCode::BAD_REQUEST, text.into())
}

/// Parses `/plan` and `/explain` parameters (`conn_client` and `host`
/// are the defaults the query may override).
pub fn parse_query(query: &str, conn_client: IpAddr, host: Option<&str>) -> Result<Ask, Refusal> {
    if query.len() > QUERY_LEN_MAX_BYTES {
        return Err(bad(format!(
            "query is longer than {QUERY_LEN_MAX_BYTES} bytes"
        )));
    }
    let mut path = None;
    let mut client = conn_client;
    let mut host = host.map(str::to_string);
    let mut exclude = Vec::new();
    let mut reserve = false;
    // A signed URL's parameters, given beside `path` (they belong to the
    // object's URL; inside `path=` their `&` would split the plan's query).
    let mut signature: Vec<&str> = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let name = pair.split('=').next().unwrap_or("");
        if shoal_core::url_sign::PARAMS.contains(&name) {
            if !pair.bytes().all(|b| b.is_ascii_graphic() && b != b'#') {
                return Err(bad(format!("{name}: characters a URL cannot carry")));
            }
            signature.push(pair);
            continue;
        }
        // `path` is taken as it would appear in a URL and decoded once,
        // by `RequestPath::parse`; the other values are form-decoded.
        if let Some(raw) = pair.strip_prefix("path=") {
            path = Some(raw.to_string());
            continue;
        }
        let Some((name, value)) = form_urlencoded::parse(pair.as_bytes()).next() else {
            continue;
        };
        match &*name {
            "path" => path = Some(value.into_owned()),
            "client" => {
                client = value
                    .parse()
                    .map_err(|_| bad(format!("client `{value}` is not an IPv4 or IPv6 address")))?
            }
            "host" => host = Some(value.into_owned()),
            "reserve" => {
                reserve = match &*value {
                    "1" | "true" => true,
                    "0" | "false" => false,
                    other => return Err(bad(format!("reserve: `{other}` is not 1 or 0"))),
                }
            }
            "exclude" | "degraded" => {
                for node in value.split(',').filter(|n| !n.is_empty()) {
                    if !shoal_core::auth::valid_node_name(node) {
                        return Err(bad(format!("{name}: `{node}` is not a cache name")));
                    }
                    exclude.push(node.to_string());
                }
                if exclude.len() > EXCLUDE_MAX {
                    return Err(bad(format!("{name}: more than {EXCLUDE_MAX} caches")));
                }
            }
            other => return Err(bad(format!("unknown parameter `{other}`"))),
        }
    }
    let path = path.ok_or_else(|| bad("missing parameter `path` (e.g. ?path=/video/a.mp4)"))?;
    let (raw_path, raw_query) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path.as_str(), None),
    };
    let path = RequestPath::parse(raw_path).map_err(|e| bad(format!("path: {e}")))?;
    // The query travels into URLs and headers as it came: it must be
    // plain URI characters.
    if let Some(q) = raw_query {
        if !q.bytes().all(|b| b.is_ascii_graphic() && b != b'#') {
            return Err(bad(
                "path: the query part has characters a URL cannot carry",
            ));
        }
    }
    // A version pin is the selector's to set.
    let kept: Vec<&str> = raw_query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter(|pair| !pair.is_empty() && !is_pin(pair))
        .chain(signature)
        .collect();
    Ok(Ask {
        path,
        query_suffix: if kept.is_empty() {
            String::new()
        } else {
            format!("?{}", kept.join("&"))
        },
        host,
        client,
        exclude,
        reserve,
        https: false,
    })
}

/// Whether a query pair is a version pin (`shoal-object=…`).
fn is_pin(pair: &str) -> bool {
    pair.strip_prefix(shoal_proto::PIN_PARAM)
        .is_some_and(|rest| rest.starts_with('='))
}

/// Info-hashes one scrape may ask about, at most.
const SCRAPE_HASHES_MAX: usize = 64;

/// A tracker's answer (bencoded, `200`; refusals say so inside).
fn bencoded(body: Vec<u8>) -> Response<Body> {
    Response::builder()
        .header(header::CONTENT_TYPE, "text/plain")
        .header(header::CACHE_CONTROL, "no-store")
        .body(shoal_server::full(Bytes::from(body)))
        .unwrap_or_else(|_| internal_error())
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-store")
        .body(shoal_server::full(Bytes::from(format!("{body}\n"))))
        .unwrap_or_else(|_| internal_error())
}

fn json<T: Serialize>(value: &T) -> Response<Body> {
    let body = serde_json::to_string_pretty(value).unwrap_or_default();
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-store")
        .body(shoal_server::full(Bytes::from(body)))
        .unwrap_or_else(|_| internal_error())
}

/// `GET /dashboard`: the page; its script only talks to this selector and
/// puts gossiped names in the page as text, never as markup.
fn dashboard_page() -> Response<Body> {
    Response::builder()
        .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-store")
        .header(
            header::CONTENT_SECURITY_POLICY,
            crate::dashboard::page_policy(),
        )
        .body(shoal_server::full(crate::dashboard::PAGE_HTML))
        .unwrap_or_else(|_| internal_error())
}

/// 405 for anything but GET and HEAD, naming those.
fn method_not_allowed() -> Response<Body> {
    let mut response = text(
        StatusCode::METHOD_NOT_ALLOWED,
        "the selector answers GET and HEAD only",
    );
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    response
}

fn internal_error() -> Response<Body> {
    let mut response = Response::new(shoal_server::empty());
    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    response
}

#[derive(Serialize)]
struct PlanAnswer<'a> {
    path: &'a str,
    #[serde(flatten)]
    decision: &'a Decision,
}

/// The swarms of one delivery service homed at this selector.
#[derive(serde::Serialize, Default)]
pub(crate) struct ServiceSwarms {
    pub swarms: u64,
    pub peers: u64,
    pub seeds: u64,
    pub completed: u64,
    pub bytes_from_peers: u64,
    pub bytes_from_caches: u64,
    /// Bytes from peers / all bytes reported.
    pub peer_efficiency: f64,
    /// What the caches did not have to send: the bytes from peers.
    pub bytes_saved: u64,
}

#[derive(Serialize)]
struct MeshMember {
    node: String,
    url: String,
    region: String,
    health: &'static str,
    spare_mbps: Option<f64>,
    usd_per_gb: f64,
}

impl Selector {
    /// The selector's state from its validated configuration, its zones
    /// and its place in the mesh.
    fn new(
        config: &SelectorConfig,
        zones: Option<Zones>,
        node: Arc<MeshNode>,
        directory: Directory,
        link: Arc<MeshLink>,
    ) -> Self {
        Selector {
            link,
            trusted_proxies: config
                .trusted_proxies
                .iter()
                .filter_map(|c| shoal_select::zones::Cidr::parse(c).ok())
                .collect(),
            lookup_timeout: std::time::Duration::from_millis(config.lookup_timeout_ms),
            reservations: Reservations::new(config.reservation_decay_ms),
            standby_reservations: Reservations::new(config.reservation_decay_ms),
            affinity: crate::affinity::VersionAffinity::new(std::time::Duration::from_secs(
                config.version_affinity_s,
            )),
            purges_seen: Default::default(),
            services: ServiceTable::new(config.effective_services()),
            zones,
            node,
            directory,
            settings: PlanSettings {
                latency_usd_per_gb_per_ms: config.latency_usd_per_gb_per_ms,
                affinity_band: config.affinity_band,
                fill_reuse_sessions: config.fill_reuse_sessions,
                uncapped_cache_mbps: config.uncapped_cache_mbps,
            },
            stats: SelectorStats::default(),
            tracker: std::sync::Mutex::new(shoal_peer::tracker::Tracker::new(
                shoal_peer::tracker::TrackerLimits::default(),
            )),
            started: std::time::Instant::now(),
            // (Checked by `validate` at start-up.)
            signing: config
                .effective_services()
                .iter()
                .filter_map(|s| {
                    let keys = s.signing.as_ref()?.keys(&s.name).ok()?;
                    Some((s.name.clone(), keys))
                })
                .collect(),
            lifecycle: shoal_server::Lifecycle::new(),
            server_stats: std::sync::OnceLock::new(),
            started_unix_s: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            access_log: None,
            dashboard_settings: config.dashboard.clone(),
            dashboard: std::sync::Mutex::new(crate::dashboard::History::new(
                config.dashboard.points_max(),
                crate::dashboard::RATE_WINDOW_MS.max(2 * config.dashboard.sample_ms),
            )),
        }
    }

    /// `GET /announce?…` (BEP 3, compact peers per BEP 23): records the
    /// peer at the connection's address and answers peers nearest it
    /// first. A refusal is a bencoded `failure reason` with `200`, as
    /// trackers answer.
    ///
    /// Several selectors act as one tracker: each swarm is homed at one of
    /// the live selectors (rendezvous of its info-hash over their node ids
    /// in the gossip view); another selector forwards the announce there,
    /// signed, naming the peer's address, and relays the answer. If the
    /// home does not answer, the announce is served here (the swarm
    /// re-forms at its new home within one re-announce).
    async fn announce(
        &self,
        query: &str,
        client: std::net::IpAddr,
        headers: &hyper::HeaderMap,
    ) -> Response<Body> {
        use shoal_peer::tracker::{failure, Announce, TrackerError};
        // An IPv4 client of a dual-stack listener is an IPv4 peer.
        let mut client = client.to_canonical();
        self.stats.announces.fetch_add(1, Ordering::Relaxed);
        let announce = match Announce::parse(query) {
            Ok(announce) => announce,
            Err(error) => return bencoded(failure(&error)),
        };
        let forwarded_from = query.split('&').find_map(|kv| {
            kv.strip_prefix(ANNOUNCE_FROM_PARAM)
                .and_then(|v| v.strip_prefix('='))
        });
        if let Some(from) = forwarded_from {
            // Forwarded by another selector: only a cluster member may
            // name the peer's address (it is in the signed query).
            let signed = self
                .link
                .authenticate(
                    headers.get(shoal_core::auth::AUTH_HEADER),
                    "GET",
                    &format!("/announce?{query}"),
                )
                .is_ok()
                && !self.link.misdirected(Some(query));
            match (signed, from.parse().ok()) {
                (true, Some(addr)) => client = addr,
                _ => return bencoded(failure(&TrackerError::Bad(FORWARD_REFUSED))),
            }
        } else if let Some(home) = self.tracker_home(&announce.info_hash) {
            let forwarded = self
                .link
                .signed_get_small(
                    &home.node_id,
                    &format!("http://{}", home.http_addr),
                    &format!("/announce?{query}&{ANNOUNCE_FROM_PARAM}={client}"),
                    ANNOUNCE_FORWARD_TIMEOUT,
                    shoal_peer::tracker::ANSWER_BYTES_MAX,
                )
                .await;
            match forwarded {
                // The home refusing our signature (clocks apart, a query
                // re-encoded on the way) is no answer for the viewer.
                Ok((status, body))
                    if status == StatusCode::OK && !contains(&body, FORWARD_REFUSED.as_bytes()) =>
                {
                    return bencoded(body)
                }
                Ok((status, _)) => {
                    tracing::warn!(home = %home.node_id, %status, "the swarm's home selector refused a forwarded announce; answering here")
                }
                Err(error) => {
                    tracing::warn!(home = %home.node_id, %error, "the swarm's home selector did not answer; answering here")
                }
            }
        }
        bencoded(self.announce_here(&announce, query, client))
    }

    /// The selector that is `info_hash`'s tracker home, unless it is this
    /// one (or no other selector is live).
    fn tracker_home(&self, info_hash: &[u8; 20]) -> Option<shoal_mesh::SelectorNode> {
        let view = self.node.view();
        let me = self.link.self_id();
        let mut names: Vec<&str> = view.selectors.iter().map(|s| s.node_id.as_str()).collect();
        if !names.contains(&me) {
            names.push(me);
        }
        let mut key = [0u8; 32];
        key[..20].copy_from_slice(info_hash);
        let home = shoal_core::rendezvous::first(&shoal_core::ObjectId(key), &names)?;
        if *home == me {
            return None;
        }
        view.selectors.iter().find(|s| s.node_id == *home).cloned()
    }

    /// Records the announce in this selector's table and answers it.
    fn announce_here(
        &self,
        announce: &shoal_peer::tracker::Announce,
        query: &str,
        client: std::net::IpAddr,
    ) -> Vec<u8> {
        use shoal_peer::tracker::{failure, Locality};
        let locality = match &self.zones {
            Some(zones) => {
                let zone = zones.zone_of(client);
                Locality {
                    zone: Some(zone.to_string()),
                    region: zones.nearest_region(zone).map(str::to_string),
                }
            }
            None => Locality::default(),
        };
        let now_s = self.started.elapsed().as_secs();
        let mut tracker = lock(&self.tracker);
        match tracker.announce(announce, client, locality, now_s) {
            Ok(answer) => {
                // The delivery service the plan named in the tracker URL,
                // if it is one of ours.
                let service = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("service="))
                    .filter(|name| self.services.all().iter().any(|s| s.name == *name));
                if let Some(service) = service {
                    tracker.label(&announce.info_hash, service);
                }
                answer.encode()
            }
            Err(error) => failure(&error),
        }
    }

    /// `GET /_shoal/swarms`: per delivery service, the swarms homed here
    /// and what their peers reported — bytes from peers and from caches,
    /// peer efficiency, bytes the caches were spared.
    fn swarms(&self) -> Response<Body> {
        #[derive(serde::Serialize)]
        struct Answer<'a> {
            /// This selector's node id (each swarm is homed at one).
            selector: &'a str,
            services: std::collections::BTreeMap<String, ServiceSwarms>,
        }
        json(&Answer {
            selector: self.link.self_id(),
            services: self.service_swarms(),
        })
    }

    /// The swarms homed here, summed per delivery service.
    pub(crate) fn service_swarms(&self) -> std::collections::BTreeMap<String, ServiceSwarms> {
        let mut services: std::collections::BTreeMap<String, ServiceSwarms> = Default::default();
        for report in lock(&self.tracker).reports() {
            let name = report.label.unwrap_or_else(|| "(unnamed)".to_string());
            let entry = services.entry(name).or_default();
            // Saturating: the byte counts are what viewers claimed.
            entry.swarms += 1;
            entry.peers += report.counts.complete + report.counts.incomplete;
            entry.seeds += report.counts.complete;
            entry.completed += report.counts.downloaded;
            entry.bytes_from_peers = entry
                .bytes_from_peers
                .saturating_add(report.bytes_from_peers);
            entry.bytes_from_caches = entry
                .bytes_from_caches
                .saturating_add(report.bytes_from_caches);
        }
        for entry in services.values_mut() {
            let total = entry.bytes_from_peers as f64 + entry.bytes_from_caches as f64;
            entry.peer_efficiency = if total > 0.0 {
                entry.bytes_from_peers as f64 / total
            } else {
                0.0
            };
            entry.bytes_saved = entry.bytes_from_peers;
        }
        services
    }

    /// `GET /scrape?info_hash=…`: the swarms' counts.
    fn scrape(&self, query: &str) -> Response<Body> {
        use shoal_peer::tracker::{failure, parse_scrape};
        let body = match parse_scrape(query, SCRAPE_HASHES_MAX) {
            Ok(hashes) => lock(&self.tracker).scrape(&hashes),
            Err(error) => failure(&error),
        };
        bencoded(body)
    }

    async fn handle(
        self: Arc<Self>,
        request: Request<hyper::body::Incoming>,
        conn: ConnInfo,
    ) -> Response<Body> {
        let method = request.method().clone();
        if method != Method::GET && method != Method::HEAD {
            return method_not_allowed();
        }
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| request.uri().host())
            .map(str::to_string);
        let query = request.uri().query().unwrap_or("");
        let path = request.uri().path();
        let client = client_address(
            conn.peer_addr.ip(),
            request.headers().get("x-forwarded-for"),
            &self.trusted_proxies,
        );
        let https = client_used_https(
            conn.tls,
            conn.peer_addr.ip(),
            request.headers().get("x-forwarded-proto"),
            &self.trusted_proxies,
        );
        let response = match path {
            "/plan" | "/explain" => {
                self.plan_or_explain(path, query, client, host.as_deref(), https)
                    .await
            }
            // The tracker (these two paths are not objects here;
            // libtorrent accepts a loopback tracker only at /announce).
            "/announce" => self.announce(query, client, request.headers()).await,
            "/scrape" => self.scrape(query),
            "/_shoal/health" => self.health(),
            "/livez" => shoal_server::livez(),
            "/readyz" => self.readyz(),
            "/metrics" => crate::metrics::page(&self).into_response(),
            "/_shoal/mesh" => self.mesh(),
            "/_shoal/swarms" => self.swarms(),
            "/dashboard" | "/_shoal/dashboard" if !self.dashboard_settings.enabled => text(
                StatusCode::NOT_FOUND,
                "the dashboard is off here (dashboard.enabled = false)",
            ),
            "/dashboard" => dashboard_page(),
            "/_shoal/dashboard" => self.dashboard(),
            "/" => text(
                StatusCode::OK,
                "shoal selector: GET /plan?path=/x (JSON), GET /explain?path=/x (text), \
                 GET /x (302 to the best cache, Link: rel=duplicate for the others); \
                 parameters: client=IP, host=H, exclude=NODE,...; \
                 GET /announce and /scrape: the tracker of viewers' swarms (BEP 3, compact peers)",
            ),
            p if p.starts_with("/_shoal/") => text(StatusCode::NOT_FOUND, "unknown endpoint"),
            _ => {
                let reserve = method == Method::GET;
                match self.not_modified(path, request.headers()).await {
                    Some(response) => response,
                    None => {
                        self.redirect(path, query, host.as_deref(), client, reserve, https)
                            .await
                    }
                }
            }
        };
        if method == Method::HEAD {
            let (parts, _) = response.into_parts();
            return Response::from_parts(parts, shoal_server::empty());
        }
        response
    }

    /// `/plan` (the decision as JSON) or `/explain` (in sentences) for the
    /// request in `query`.
    async fn plan_or_explain(
        &self,
        path: &str,
        query: &str,
        client: IpAddr,
        host: Option<&str>,
        https: bool,
    ) -> Response<Body> {
        match parse_query(query, client, host).map(|ask| Ask { https, ..ask }) {
            Ok(ask) => match self
                .decide(&ask, (path == "/plan" && ask.reserve).into())
                .await
            {
                Ok(mut decision) if path == "/plan" => {
                    // The tracker is this selector, at the address the
                    // client used; without a Host header no swarm is named.
                    let host = host.filter(|h| {
                        h.len() <= 255
                            && h.bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
                    });
                    match (decision.swarm.as_mut(), host) {
                        (Some(swarm), Some(host)) => {
                            // The service rides along so the swarm's home
                            // selector can count peer efficiency per service.
                            let scheme = if https { "https" } else { "http" };
                            swarm.tracker =
                                format!("{scheme}://{host}/announce?service={}", decision.service);
                        }
                        _ => decision.swarm = None,
                    }
                    json(&PlanAnswer {
                        path: ask.path.as_str(),
                        decision: &decision,
                    })
                }
                Ok(decision) => text(StatusCode::OK, &explain(&decision, ask.path.as_str())),
                Err(refusal) => self.refuse(refusal),
            },
            Err(refusal) => self.refuse(refusal),
        }
    }

    /// Starting, ready or draining (what `/readyz` says).
    pub fn lifecycle(&self) -> &shoal_server::Lifecycle {
        &self.lifecycle
    }

    /// The access log, when one is configured (reopened on SIGHUP).
    pub fn access_log(&self) -> Option<&Arc<shoal_server::AccessLog>> {
        self.access_log.as_ref()
    }

    /// `/readyz`: `503` while draining or with no cache in view (every
    /// plan would be refused).
    fn readyz(&self) -> Response<Body> {
        let in_view = self
            .node
            .view()
            .members
            .iter()
            .filter(|m| m.health != shoal_mesh::Health::Draining)
            .count();
        let refusal = (in_view == 0)
            .then(|| "no cache in view (check the seeds and the cluster secret)".to_string());
        self.lifecycle.readyz(refusal)
    }

    /// `/_shoal/health`: alive, with the caches in view and the counters.
    fn health(&self) -> Response<Body> {
        let view = self.node.view();
        text(
            StatusCode::OK,
            &format!(
                "ok: {} cache(s) in view, {} plan(s), {} redirect(s)",
                view.members.len(),
                self.stats.plans.load(Ordering::Relaxed),
                self.stats.redirects.load(Ordering::Relaxed)
            ),
        )
    }

    /// Unix ms that never step back: the start time plus monotonic uptime
    /// (a wall clock stepped back would freeze the dashboard's history).
    fn dashboard_clock_ms(&self) -> u64 {
        let uptime_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        ((self.started_unix_s * 1e3) as u64).saturating_add(uptime_ms)
    }

    /// The fleet now, for the dashboard's history.
    fn fleet_sample(&self, at_ms: u64) -> crate::dashboard::FleetSample {
        let view = self.node.view();
        let swarms = self.service_swarms();
        let services = lock(&self.stats.per_service);
        crate::dashboard::FleetSample {
            at_ms,
            caches: view
                .members
                .iter()
                .map(crate::dashboard::CacheSample::of)
                .collect(),
            // Saturating: viewers' byte counts are what they claimed.
            swarm_bytes_from_peers: saturating_sum(swarms.values().map(|s| s.bytes_from_peers)),
            swarm_downloaders: saturating_sum(
                swarms.values().map(|s| s.peers.saturating_sub(s.seeds)),
            ),
            decisions: saturating_sum(services.values().map(|t| t.decisions)),
            decisions_bitrate_met: saturating_sum(services.values().map(|t| t.bitrate_met)),
        }
    }

    /// `GET /_shoal/dashboard`: what the dashboard page draws, as JSON.
    fn dashboard(&self) -> Response<Body> {
        let view = self.node.view();
        let swarms = self.service_swarms();
        let tallies = lock(&self.stats.per_service).clone();
        // Every configured service, then any other name decided or swarmed.
        let mut names: Vec<String> = self.services.all().iter().map(|s| s.name.clone()).collect();
        for name in tallies.keys().chain(swarms.keys()) {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
        let services = names
            .into_iter()
            .map(|name| {
                let tally = tallies.get(&name).cloned().unwrap_or_default();
                let swarm = swarms.get(&name);
                let mean = |sum: f64| (tally.decisions > 0).then(|| sum / tally.decisions as f64);
                crate::dashboard::ServiceRow {
                    decisions: tally.decisions,
                    bitrate_met_ratio: mean(tally.bitrate_met as f64),
                    shortfalls: tally.shortfalls,
                    usd_per_gb_mean: mean(tally.usd_per_gb_sum),
                    committed_mbps_mean: mean(tally.committed_mbps_sum),
                    swarms: swarm.map_or(0, |s| s.swarms),
                    viewers: swarm.map_or(0, |s| s.peers),
                    seeds: swarm.map_or(0, |s| s.seeds),
                    peer_efficiency: swarm
                        .filter(|s| s.bytes_from_peers.saturating_add(s.bytes_from_caches) > 0)
                        .map(|s| s.peer_efficiency),
                    bytes_from_peers: swarm.map_or(0, |s| s.bytes_from_peers),
                    bytes_from_caches: swarm.map_or(0, |s| s.bytes_from_caches),
                    name,
                }
            })
            .collect();
        let answer = crate::dashboard::dashboard(
            view.self_id.clone(),
            self.dashboard_clock_ms(),
            self.dashboard_settings.sample_ms,
            &view.members,
            services,
            &lock(&self.dashboard),
        );
        // Compact: the page polls it every couple of seconds.
        let body = serde_json::to_vec(&answer).unwrap_or_default();
        Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CACHE_CONTROL, "no-store")
            .body(shoal_server::full(body))
            .unwrap_or_else(|_| internal_error())
    }

    /// `/_shoal/mesh`: the mesh as this selector sees it, as JSON.
    fn mesh(&self) -> Response<Body> {
        let view = self.node.view();
        let members: Vec<MeshMember> = view
            .members
            .iter()
            .map(|m| MeshMember {
                node: m.node_id.clone(),
                url: m.base_url(),
                region: m.region.clone(),
                health: m.health.as_str(),
                spare_mbps: (m.egress_cap_bps > 0)
                    .then(|| (m.egress_cap_bps - m.egress_bps.min(m.egress_cap_bps)) as f64 / 1e6),
                usd_per_gb: m.cost_per_gb_microusd as f64 / 1e6,
            })
            .collect();
        json(&serde_json::json!({
            "self": view.self_id,
            "caches": members,
            "observers": view.observers,
            "selectors": view.selectors.iter().map(|s| serde_json::json!({
                "node": s.node_id,
                "url": format!("http://{}", s.http_addr),
            })).collect::<Vec<_>>(),
            "malformed_members": view.malformed_members,
        }))
    }

    /// A purge anywhere in the mesh (a cache announces a new newest purge
    /// in gossip) drops every remembered lookup: the next request asks the
    /// shield again.
    fn forget_lookups_after_purges(&self, view: &shoal_mesh::MeshView) {
        let digest = view
            .members
            .iter()
            .filter_map(|m| m.purge_head)
            .fold(0u64, |acc, head| {
                acc.wrapping_add(head.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (head >> 29))
            });
        let seen = self.purges_seen.swap(digest, Ordering::Relaxed);
        if seen != digest {
            self.directory.forget_all();
        }
    }

    /// A client revalidating with the ETag of the version the mesh serves
    /// (every cache sends the same one) gets its 304 here, without a
    /// redirect. `None`: no `If-None-Match`, or another version.
    async fn not_modified(
        &self,
        raw_path: &str,
        headers: &http::HeaderMap,
    ) -> Option<Response<Body>> {
        let tags: Vec<String> = headers
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|tag| tag.trim().trim_start_matches("W/").to_string())
            .take(64)
            .collect();
        if tags.is_empty() {
            return None;
        }
        let path = RequestPath::parse(raw_path).ok()?;
        let view = self.node.view();
        self.forget_lookups_after_purges(&view);
        let known = tokio::time::timeout(
            self.lookup_timeout,
            self.directory
                .object(&view, path.as_str(), &path.to_uri_path()),
        )
        .await
        .ok()?
        .ok()?;
        let Known::Object { etag, .. } = known else {
            return None;
        };
        if !tags.iter().any(|t| t == &etag || t == "*") {
            return None;
        }
        Response::builder()
            .status(StatusCode::NOT_MODIFIED)
            .header(header::ETAG, etag)
            .body(shoal_server::empty())
            .ok()
    }

    fn refuse(&self, Refusal(status, reason): Refusal) -> Response<Body> {
        if status.is_client_error() {
            self.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
        }
        let mut response = text(status, &reason);
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
        }
        response
    }

    async fn redirect(
        &self,
        raw_path: &str,
        query: &str,
        host: Option<&str>,
        client: IpAddr,
        reserve: bool,
        https: bool,
    ) -> Response<Body> {
        let path = match RequestPath::parse(raw_path) {
            Ok(path) => path,
            Err(error) => return self.refuse(bad(format!("bad path: {error}"))),
        };
        if query.len() > QUERY_LEN_MAX_BYTES {
            return self.refuse(bad(format!(
                "query is longer than {QUERY_LEN_MAX_BYTES} bytes"
            )));
        }
        // A pin the client sent is the selector's to set, not to pass on.
        let kept: Vec<&str> = query
            .split('&')
            .filter(|pair| !pair.is_empty() && !is_pin(pair))
            .collect();
        let ask = Ask {
            path,
            query_suffix: if kept.is_empty() {
                String::new()
            } else {
                format!("?{}", kept.join("&"))
            },
            host: host.map(str::to_string),
            client,
            exclude: Vec::new(),
            reserve,
            https,
        };
        // A plain client never sees the standby: only its shares count.
        let reserve = if reserve {
            Reserve::Shares
        } else {
            Reserve::Nothing
        };
        let decision = match self.decide(&ask, reserve).await {
            Ok(decision) => decision,
            Err(refusal) => return self.refuse(refusal),
        };
        let urls = decision.urls();
        let Some(first) = urls.first() else {
            return self.refuse(Refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                "no cache can serve this now".into(),
            ));
        };
        let mut builder = Response::builder()
            .status(StatusCode::FOUND)
            .header(header::LOCATION, *first)
            .header(header::CACHE_CONTROL, "no-store");
        for (rank, url) in urls.iter().enumerate().skip(1) {
            builder = builder.header(
                header::LINK,
                format!("<{url}>; rel=duplicate; pri={}", rank + 1),
            );
        }
        self.stats.redirects.fetch_add(1, Ordering::Relaxed);
        builder
            .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(shoal_server::full(Bytes::from(format!("see {first}\n"))))
            .unwrap_or_else(|_| internal_error())
    }

    /// The decision for one parsed request; `reserve`: a client will use
    /// it (a plan or a redirect, not an explanation), so its shares (and,
    /// for a plan, its standby) count against the caches until gossip
    /// shows them.
    async fn decide(&self, ask: &Ask, reserve: Reserve) -> Result<Decision, Refusal> {
        let service = self.service_for(ask)?;
        if let Some(keys) = self.signing.get(&service.name) {
            let query = ask.query_suffix.strip_prefix('?');
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            if let Err(refusal) = keys.verify(ask.path.as_str(), query, ask.client, now) {
                self.stats
                    .signature_refusals
                    .fetch_add(1, Ordering::Relaxed);
                return Err(Refusal(
                    StatusCode::FORBIDDEN,
                    format!("forbidden: {refusal}"),
                ));
            }
        }
        let view = self.node.view();
        self.forget_lookups_after_purges(&view);
        let uri_path = ask.path.to_uri_path();
        let object = self.look_up(&view, ask, &uri_path, reserve).await?;
        let zone = match &self.zones {
            Some(zones) => zones.zone_of(ask.client).to_string(),
            None => DEFAULT_ZONE.to_string(),
        };
        let reach = |region: &str| -> Option<Reach> {
            match &self.zones {
                Some(zones) => zones.reach(&zone, region),
                None => Some(Reach::default()),
            }
        };
        let path_and_query = format!("{uri_path}{}", ask.query_suffix);
        let now = std::time::Instant::now();
        let reserved = self.reservations.current(now);
        let standby_reserved = self.standby_reservations.current(now);
        // Caches gossip says are alive but that failed this selector's
        // own requests lately.
        let unresponsive: Vec<String> = view
            .members
            .iter()
            .filter(|m| !self.directory.answering(&m.node_id))
            .map(|m| m.node_id.clone())
            .collect();
        let mut decision = decide(&Inputs {
            service,
            uri_path_and_query: &path_and_query,
            affinity_key: object.affinity_key,
            object: &object.facts,
            members: &view.members,
            held: &object.held,
            zone: &zone,
            reach: &reach,
            exclude: &ask.exclude,
            https: ask.https,
            reserved_mbps: &reserved,
            standby_reserved_mbps: &standby_reserved,
            unresponsive: &unresponsive,
            settings: &self.settings,
        })
        .map_err(|e| Refusal(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        if let Some(note) = object.note {
            decision.reasons.push(note);
        }
        // The swarm of this version (its tracker URL is filled in from the
        // address the client reached us at).
        if service.p2p {
            let id = decision
                .object
                .id
                .as_deref()
                .and_then(shoal_core::ObjectId::from_hex);
            decision.swarm = id.map(|id| shoal_proto::plan::SwarmInfo {
                key: shoal_peer::SwarmKey::for_object(&id).to_hex(),
                tracker: String::new(),
                upload_mbps: service.p2p_upload_mbps,
                target_mbps: service.p2p_target_mbps,
                peers_max: Some(service.p2p_peers_max),
            });
        }
        self.reserve(now, &decision, reserve);
        self.stats.plans.fetch_add(1, Ordering::Relaxed);
        if decision.shortfall_mbps > 0.0 {
            self.stats.shortfalls.fetch_add(1, Ordering::Relaxed);
        }
        crate::metrics::tally(&self.stats, &decision);
        Ok(decision)
    }

    /// The delivery service for the request's host and path, or a 404.
    fn service_for(&self, ask: &Ask) -> Result<&crate::config::DeliveryService, Refusal> {
        let path = ask.path.as_str();
        self.services
            .find(ask.host.as_deref(), path)
            .ok_or_else(|| {
                Refusal(
                    StatusCode::NOT_FOUND,
                    format!(
                        "no delivery service for {}{path}",
                        ask.host.as_deref().unwrap_or("")
                    ),
                )
            })
    }

    /// What the mesh knows of the object at `ask.path`: its version, size
    /// and holders, or that it passes through, or nothing (the plan is
    /// made without, and says why). An object the mesh says is missing is
    /// refused with the mesh's status.
    async fn look_up(
        &self,
        view: &shoal_mesh::MeshView,
        ask: &Ask,
        uri_path: &str,
        reserve: Reserve,
    ) -> Result<ObjectKnowledge, Refusal> {
        let path = ask.path.as_str();
        // One deadline for the whole lookup, however many shields it asks.
        let lookup = tokio::time::timeout(
            self.lookup_timeout,
            self.directory.object(view, path, uri_path),
        )
        .await
        .unwrap_or_else(|_| {
            Err(LookupError::Unavailable(format!(
                "no answer within {} ms",
                self.lookup_timeout.as_millis()
            )))
        });
        let unknown = |note: String| ObjectKnowledge {
            facts: ObjectFacts {
                cacheable: true,
                ..ObjectFacts::default()
            },
            affinity_key: shield_key(path),
            held: HashMap::new(),
            note: Some(format!("planned without knowing the object: {note}")),
        };
        Ok(match lookup {
            Ok(Known::Object {
                id,
                size_bytes,
                piece_count,
                ..
            }) => {
                // A client still downloading keeps the version it began
                // with (only for answers a client acts on).
                let id = if reserve != Reserve::Nothing {
                    self.affinity
                        .version_for(ask.client, path, id, std::time::Instant::now())
                } else {
                    id
                };
                let held = self.directory.held(view, &id, piece_count).await;
                let facts = ObjectFacts {
                    id: Some(id.to_hex()),
                    size_bytes: Some(size_bytes),
                    cacheable: true,
                };
                ObjectKnowledge {
                    facts,
                    affinity_key: id,
                    held,
                    note: None,
                }
            }
            Ok(Known::PassThrough) => ObjectKnowledge {
                facts: ObjectFacts {
                    cacheable: false,
                    ..ObjectFacts::default()
                },
                affinity_key: shield_key(path),
                held: HashMap::new(),
                note: None,
            },
            Ok(Known::Missing(status)) => return Err(missing(path, status)),
            Ok(Known::Unknown(why)) => unknown(why),
            Err(error) => unknown(error.to_string()),
        })
    }

    /// Counts the decision's shares (and, for [`Reserve::SharesAndStandby`],
    /// its standby) against the caches until gossip shows them.
    fn reserve(&self, now: std::time::Instant, decision: &Decision, reserve: Reserve) {
        if reserve != Reserve::Nothing {
            self.reservations.add(
                now,
                decision.sources.iter().map(|s| (s.node.as_str(), s.mbps)),
            );
        }
        if reserve == Reserve::SharesAndStandby {
            self.standby_reservations.add(
                now,
                decision
                    .sources
                    .iter()
                    .map(|s| (s.node.as_str(), s.standby_mbps))
                    .chain(decision.standby.iter().map(|s| (s.node.as_str(), s.mbps)))
                    .filter(|(_, mbps)| *mbps > 0.0),
            );
        }
    }
}

/// What the selector knows of the object a request names, as the decision
/// needs it.
struct ObjectKnowledge {
    facts: ObjectFacts,
    /// The object's id, else a digest of its path.
    affinity_key: shoal_core::ObjectId,
    /// Share of the object each cache holds.
    held: HashMap<String, f64>,
    /// Why the plan was made without knowing the object, for the reasons.
    note: Option<String>,
}

/// The refusal for an object the mesh answered `status` for: that status
/// when it is a client error, else 404.
fn missing(path: &str, status: u16) -> Refusal {
    let status = StatusCode::from_u16(status)
        .ok()
        .filter(StatusCode::is_client_error)
        .unwrap_or(StatusCode::NOT_FOUND);
    let hint = if status == StatusCode::FORBIDDEN {
        " (the origin refused it, or the caches refused this selector's token: is the cluster secret the caches'?)"
    } else {
        ""
    };
    Refusal(
        status,
        format!("{path}: the mesh answered {status} for this object{hint}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const HERE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted = [shoal_select::zones::Cidr::parse("10.0.0.0/8").unwrap()];
        let header = HeaderValue::from_static("203.0.113.9, 198.51.100.7, 10.1.1.1");
        let proxy: IpAddr = "10.9.9.9".parse().unwrap();
        let stranger: IpAddr = "192.0.2.1".parse().unwrap();
        // Through our proxies: the first address they did not add.
        assert_eq!(
            client_address(proxy, Some(&header), &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        // From anyone else, the header is ignored.
        assert_eq!(client_address(stranger, Some(&header), &trusted), stranger);
        // Garbage stops the walk.
        let junk = HeaderValue::from_static("nonsense, 10.2.2.2");
        assert_eq!(
            client_address(proxy, Some(&junk), &trusted),
            "10.2.2.2".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_address(proxy, None, &trusted), proxy);
    }

    #[test]
    fn https_is_believed_from_the_connection_or_a_trusted_proxy_only() {
        let trusted = [shoal_select::zones::Cidr::parse("10.0.0.0/8").unwrap()];
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let stranger: IpAddr = "192.0.2.7".parse().unwrap();
        let https = HeaderValue::from_static("https");
        assert!(client_used_https(true, stranger, None, &trusted));
        assert!(client_used_https(false, proxy, Some(&https), &trusted));
        assert!(!client_used_https(false, stranger, Some(&https), &trusted));
        assert!(!client_used_https(false, proxy, None, &trusted));
        // The proxy's own value is the last one.
        let chained = HeaderValue::from_static("https, http");
        assert!(!client_used_https(false, proxy, Some(&chained), &trusted));
    }

    #[test]
    fn reservations_add_up_and_decay() {
        let ledger = Reservations::new(2_000);
        let t0 = std::time::Instant::now();
        ledger.add(t0, [("a", 50.0), ("b", 25.0)].into_iter());
        ledger.add(t0, [("a", 50.0)].into_iter());
        let now = ledger.current(t0);
        assert!((now["a"] - 100.0).abs() < 1e-9 && (now["b"] - 25.0).abs() < 1e-9);
        // One time constant later: e^-1 of it.
        let later = ledger.current(t0 + std::time::Duration::from_secs(2));
        assert!((later["a"] - 100.0 / std::f64::consts::E).abs() < 1e-6);
        let gone = ledger.current(t0 + std::time::Duration::from_secs(60));
        assert!(gone.is_empty());
    }

    #[test]
    fn parameters_are_parsed_or_named_in_the_error() {
        let ask = parse_query(
            "path=/video/a%20b.mp4&client=10.1.2.3&exclude=c1,c2",
            HERE,
            None,
        )
        .ok()
        .unwrap();
        assert_eq!(ask.path.as_str(), "/video/a b.mp4");
        assert_eq!(ask.client, "10.1.2.3".parse::<IpAddr>().unwrap());
        assert_eq!(ask.exclude, ["c1", "c2"]);
        let ask = parse_query("path=/a?x=1", HERE, Some("h")).ok().unwrap();
        assert_eq!(ask.query_suffix, "?x=1");
        // The path is decoded once: `%25` is a literal `%`, `+` a plus.
        let ask = parse_query("path=/50%25+off.mp4", HERE, None).ok().unwrap();
        assert_eq!(ask.path.as_str(), "/50%+off.mp4");
        assert!(parse_query("path=/a?x=%0D%0A", HERE, None).is_ok());
        assert!(parse_query("path=/a?x y", HERE, None).is_err());
        for (query, needle) in [
            ("", "missing parameter `path`"),
            ("path=relative", "path"),
            ("path=/a/../b", "path"),
            ("path=/a&client=999.1.1.1", "client"),
            ("path=/a&exclude=not%20a%20name", "exclude"),
            ("path=/a&colour=blue", "unknown parameter"),
        ] {
            let Err(Refusal(status, text)) = parse_query(query, HERE, None) else {
                panic!("{query} accepted");
            };
            assert_eq!(status, StatusCode::BAD_REQUEST);
            assert!(text.contains(needle), "{query}: {text}");
        }
        let many = format!(
            "path=/a&exclude={}",
            (0..=EXCLUDE_MAX)
                .map(|i| format!("c{i}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        assert!(parse_query(&many, HERE, None).is_err());
    }
}
