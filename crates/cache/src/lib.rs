//! shoal-cache: the edge cache service.
//!
//! `GET http://CACHE/<path>` serves `<origin>/<path>` from verified pieces:
//! a miss fetches piece-aligned ranges from the origin (one fetch per piece,
//! however many clients want it) and streams them on as they verify; a hit
//! comes from memory or disk. See ARCHITECTURE.md for the invariants.

pub mod fault;
pub mod fill;
pub mod first_contact;
pub mod key_policy;
pub mod local_state;
pub(crate) mod metrics;
pub mod object;
pub mod origin_client;
pub mod peer;
pub mod proxy;
pub use shoal_proto::peer_health;
pub mod purge;
pub mod resolve;
pub mod response;
pub mod schedule;
pub mod serve;
pub mod stats;
pub mod transition;
pub mod variants;
pub mod warm;

use serde::{Deserialize, Serialize};
use shoal_core::ByteSize;
use shoal_server::ServerLimits;
use shoal_store::eviction::PolicyKind;
use shoal_store::{Store, StoreConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

pub use serve::CacheService;
pub use stats::StatsSnapshot;

/// Everything `shoal cache` can be told (CLI, TOML or environment).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    pub listen: SocketAddr,
    /// Base URL of the origin, e.g. `http://127.0.0.1:8080`.
    pub origin: String,
    pub data_dir: PathBuf,
    /// Disk budget for piece data.
    pub capacity: ByteSize,
    /// Budget of the in-memory tier of hot pieces.
    pub memory_capacity: ByteSize,
    /// `s3fifo` (default) or `lru`.
    pub eviction: String,
    /// Certificates (PEM) trusted for an `https://` origin besides the
    /// system's roots (a private CA).
    pub origin_ca_file: Option<PathBuf>,
    pub origin_connect_timeout_ms: u64,
    /// Longest wait for origin response headers and for each body chunk.
    pub origin_read_timeout_ms: u64,
    pub manifest_bytes_max: u64,
    /// Largest run of pieces fetched by one origin request.
    pub fill_run_bytes_max: u64,
    /// How far ahead of a reader pieces are fetched.
    pub readahead_bytes: u64,
    /// Larger objects are passed through from the origin, not stored (bounds
    /// the per-object bookkeeping a HEAD response can make us allocate).
    pub object_bytes_max: u64,
    /// Largest response stored whole (statuses other than 200, bodies of
    /// unknown length, requests with a query or for a directory); larger
    /// ones are passed through.
    pub response_bytes_max: u64,
    /// Objects (200 with a length) smaller than this take the
    /// whole-response path instead of the piece path: one GET on a miss
    /// instead of a HEAD, a manifest and ranges, but no mesh sharing of
    /// pieces. 0 (the default): every object with a length takes the
    /// piece path.
    pub small_object_bytes_max: u64,
    /// Query parameters left out of the cache key (still sent to the
    /// origin): tracking tags (`utm_*`: a trailing `*` matches a prefix),
    /// cache busters. Never one that selects content (a session id, a user):
    /// its responses would be shared. A query left with none of its
    /// parameters keys like the bare path.
    pub ignored_query_params: Vec<String>,
    /// Delivery services with their own `ignored_query_params` (see
    /// [`key_policy`]), as `[[service]]` tables.
    #[serde(rename = "service")]
    pub services: Vec<key_policy::ServiceKeyRules>,
    /// How long a path keeps its version without asking the origin when
    /// the origin sends no freshness (`Cache-Control: max-age`, `Expires`):
    /// the longest a republished file can go unseen. 0: ask every time.
    pub freshness_default_s: u64,
    pub limits: ServerLimits,
    /// One line per request (`[access_log]`: `format` combined, json or
    /// off; `path`, standard output when unset).
    pub access_log: shoal_server::AccessLogConfig,
    /// An HTTPS listener beside the plain one (`[tls]`).
    pub tls: shoal_server::tls::TlsConfig,
    /// Joining a mesh of caches (off unless `mesh.gossip` is set).
    pub mesh: MeshSettings,
}

/// How this cache joins a mesh (`[mesh]` in TOML, `SHOAL_CACHE_MESH__*`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MeshSettings {
    /// UDP address for gossip; the mesh is off when unset.
    pub gossip: Option<SocketAddr>,
    /// Gossip address peers should use (when `gossip` is 0.0.0.0).
    pub gossip_advertise: Option<SocketAddr>,
    /// Gossip addresses (`host:port`) of members to contact first.
    pub seeds: Vec<String>,
    /// Shared by every member; requests and datagrams are authenticated
    /// with it. At least 16 bytes.
    pub cluster_secret: String,
    /// Unique name of this cache (default: derived from its HTTP address).
    pub node_id: Option<String>,
    pub region: String,
    /// What a GB sent from this cache costs, in US dollars.
    pub cost_per_gb: f64,
    /// HTTP address peers should use (default: the listen address).
    pub http_advertise: Option<SocketAddr>,
    /// `host:port` selectors send HTTPS clients to: a name the certificate
    /// covers (default: the `[tls]` listen address; its port on the
    /// `http_advertise` host when that address is unspecified).
    pub https_advertise: Option<String>,
    pub gossip_interval_ms: u64,
    pub phi_threshold: f64,
    pub peer_connect_timeout_ms: u64,
    pub peer_read_timeout_ms: u64,
    /// Wrong pieces a sibling may send before it is quarantined.
    pub peer_corrupt_pieces_max: u32,
    pub peer_quarantine_ms: u64,
    /// Longest lifetime an inter-cache request token may claim.
    pub auth_ttl_max_s: u64,
}

impl Default for MeshSettings {
    fn default() -> Self {
        Self {
            gossip: None,
            gossip_advertise: None,
            seeds: Vec::new(),
            cluster_secret: String::new(),
            node_id: None,
            region: "default".into(),
            cost_per_gb: 0.0,
            http_advertise: None,
            https_advertise: None,
            gossip_interval_ms: 500,
            phi_threshold: 8.0,
            peer_connect_timeout_ms: 1_000,
            peer_read_timeout_ms: 5_000,
            peer_corrupt_pieces_max: 3,
            peer_quarantine_ms: 600_000,
            auth_ttl_max_s: 300,
        }
    }
}

/// The name a cache goes by when none is configured: from its address.
pub fn default_node_id(http: SocketAddr) -> String {
    let text: String = format!("cache-{}-{}", http.ip(), http.port())
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    text.chars()
        .take(shoal_core::auth::NODE_NAME_LEN_MAX_BYTES)
        .collect()
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            origin: String::new(),
            data_dir: PathBuf::from("shoal-cache-data"),
            capacity: ByteSize(10 << 30),
            memory_capacity: ByteSize(512 << 20),
            eviction: "s3fifo".into(),
            origin_ca_file: None,
            origin_connect_timeout_ms: 3_000,
            origin_read_timeout_ms: 15_000,
            manifest_bytes_max: 16 << 20,
            fill_run_bytes_max: 16 << 20,
            readahead_bytes: 32 << 20,
            object_bytes_max: 1 << 40,
            response_bytes_max: 8 << 20,
            small_object_bytes_max: 0,
            ignored_query_params: Vec::new(),
            services: Vec::new(),
            freshness_default_s: 60,
            limits: ServerLimits::default(),
            access_log: Default::default(),
            tls: Default::default(),
            mesh: MeshSettings::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] shoal_store::StoreError),
    #[error(transparent)]
    Mesh(#[from] shoal_mesh::MeshError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl CacheConfig {
    /// Checks what the type system cannot.
    pub fn validate(&self) -> Result<(), CacheError> {
        key_policy::check_params("ignored_query_params", &self.ignored_query_params)
            .map_err(CacheError::Config)?;
        key_policy::check_services(&self.services).map_err(CacheError::Config)?;
        let origin = self.origin.trim();
        if origin.is_empty() {
            return Err(CacheError::Config(
                "an origin URL is required (--origin http://HOST:PORT)".into(),
            ));
        }
        if !(origin.starts_with("http://") || origin.starts_with("https://")) {
            return Err(CacheError::Config(format!(
                "origin `{origin}` must be an http:// or https:// URL"
            )));
        }
        if let Some(path) = &self.origin_ca_file {
            if std::fs::metadata(path).is_err() {
                return Err(CacheError::Config(format!(
                    "origin_ca_file {} cannot be read",
                    path.display()
                )));
            }
        }
        if reqwest::Url::parse(origin).is_err() {
            return Err(CacheError::Config(format!(
                "origin `{origin}` is not a valid URL"
            )));
        }
        if self.capacity.0 < 4 << 20 {
            return Err(CacheError::Config(format!(
                "capacity {} is below the 4 MiB minimum (one piece)",
                self.capacity
            )));
        }
        if self.eviction.parse::<PolicyKind>().is_err() {
            return Err(CacheError::Config(format!(
                "unknown eviction policy `{}` (s3fifo or lru)",
                self.eviction
            )));
        }
        for (name, value) in [
            ("origin_connect_timeout_ms", self.origin_connect_timeout_ms),
            ("origin_read_timeout_ms", self.origin_read_timeout_ms),
            ("fill_run_bytes_max", self.fill_run_bytes_max),
            ("manifest_bytes_max", self.manifest_bytes_max),
        ] {
            if value == 0 {
                return Err(CacheError::Config(format!("{name} must be positive")));
            }
        }
        let mesh = &self.mesh;
        if mesh.gossip.is_some() {
            if mesh.cluster_secret.len() < shoal_core::auth::CLUSTER_SECRET_LEN_MIN_BYTES {
                return Err(CacheError::Config(format!(
                    "a mesh needs a cluster secret of at least {} bytes (--cluster-secret, mesh.cluster_secret or SHOAL_CACHE_MESH__CLUSTER_SECRET)",
                    shoal_core::auth::CLUSTER_SECRET_LEN_MIN_BYTES
                )));
            }
            if !(mesh.cost_per_gb.is_finite() && (0.0..=1_000.0).contains(&mesh.cost_per_gb)) {
                return Err(CacheError::Config(format!(
                    "cost_per_gb {} must be between 0 and 1000 (US dollars per GB)",
                    mesh.cost_per_gb
                )));
            }
            if mesh.auth_ttl_max_s < peer::AUTH_TTL_MIN_S {
                return Err(CacheError::Config(format!(
                    "mesh.auth_ttl_max_s must be at least {} (caches sign tokens for {} s, plus clock skew)",
                    peer::AUTH_TTL_MIN_S,
                    peer::TOKEN_LIFETIME_S
                )));
            }
            for (name, value) in [
                ("mesh.peer_connect_timeout_ms", mesh.peer_connect_timeout_ms),
                ("mesh.peer_read_timeout_ms", mesh.peer_read_timeout_ms),
                ("mesh.auth_ttl_max_s", mesh.auth_ttl_max_s),
                (
                    "mesh.peer_corrupt_pieces_max",
                    mesh.peer_corrupt_pieces_max as u64,
                ),
            ] {
                if value == 0 {
                    return Err(CacheError::Config(format!("{name} must be positive")));
                }
            }
        } else if !mesh.seeds.is_empty() {
            return Err(CacheError::Config(
                "seeds are set but gossip is not (--gossip ADDR)".into(),
            ));
        }
        Ok(())
    }
}

/// How long a restarted cache with stored objects waits for a live member
/// to tell it the purges it missed.
const PURGE_CATCH_UP_WAIT_MS: u64 = 5_000;

/// A cache whose store is open and whose port is bound, ready to run.
pub struct BoundCache {
    pub local_addr: SocketAddr,
    pub service: Arc<CacheService>,
    listener: tokio::net::TcpListener,
    limits: ServerLimits,
    /// Whether the mesh was given seeds to join through.
    seeded: bool,
    /// The HTTPS listener, when `[tls]` sets one.
    tls: Option<shoal_server::tls::BoundTls>,
    force_stop: Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>,
}

/// In a mesh with seeds, a starting cache is ready once it hears another
/// member, or after this long alone (the others may all be down: it then
/// serves as its own shield).
pub const MESH_JOIN_WAIT_MS: u64 = 10_000;

impl BoundCache {
    pub async fn bind(config: CacheConfig) -> Result<Self, CacheError> {
        config.validate()?;
        let policy: PolicyKind = config
            .eviction
            .parse()
            .map_err(|_| CacheError::Config("eviction".into()))?;
        let store = {
            let store_config = StoreConfig {
                data_dir: config.data_dir.clone(),
                capacity_bytes: config.capacity.0,
                memory_capacity_bytes: config.memory_capacity.0,
                policy,
            };
            tokio::task::spawn_blocking(move || Store::open(store_config))
                .await
                .map_err(|e| CacheError::Config(format!("store open task failed: {e}")))??
        };
        let origin = Arc::new(
            origin_client::OriginClient::new(origin_client::OriginClientConfig {
                base_url: config.origin.trim().trim_end_matches('/').to_string(),
                connect_timeout_ms: config.origin_connect_timeout_ms,
                read_timeout_ms: config.origin_read_timeout_ms,
                manifest_bytes_max: config.manifest_bytes_max,
                ca_file: config.origin_ca_file.clone(),
            })
            .map_err(|e| CacheError::Config(shoal_proto::Chain(&e).to_string()))?,
        );
        let stats = Arc::new(stats::CacheStats::default());
        let server_stats = Arc::new(std::sync::OnceLock::new());
        let tls = shoal_server::tls::BoundTls::bind(&config.tls)
            .await
            .map_err(|e| CacheError::Config(e.to_string()))?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| CacheError::Listen {
                addr: config.listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| CacheError::Listen {
            addr: config.listen,
            source,
        })?;
        let mesh = match config.mesh.gossip {
            Some(gossip) => {
                let https = tls.as_ref().map(|t| t.local_addr);
                let local = Arc::new(local_state::CacheLocalState::new(
                    store.clone(),
                    stats.clone(),
                    server_stats.clone(),
                ));
                Some(join_mesh(&config, gossip, local_addr, https, local, stats.clone()).await?)
            }
            None => None,
        };
        let filler = fill::Filler::new(
            store.clone(),
            origin.clone(),
            stats.clone(),
            fill::FillConfig {
                run_bytes_max: config.fill_run_bytes_max,
            },
            mesh.clone(),
        );
        let service = Arc::new(CacheService {
            responses: response::ResponseStore::new(
                store.clone(),
                config.response_bytes_max,
                config.freshness_default_s,
            ),
            resolver: {
                let mut resolver = resolve::Resolver::new(
                    store,
                    origin.clone(),
                    stats.clone(),
                    config.object_bytes_max,
                    config.freshness_default_s,
                    mesh.clone(),
                );
                resolver.small_object_bytes_max = config.small_object_bytes_max;
                resolver
            },
            filler,
            origin,
            stats,
            readahead_bytes: config.readahead_bytes,
            key_policy: key_policy::KeyPolicy::new(
                config.ignored_query_params.clone(),
                config.services.clone(),
            ),
            mesh,
            egress: std::sync::OnceLock::new(),
            purges: std::sync::Mutex::new(purge::PurgeLog::load(&config.data_dir)),
            data_dir: config.data_dir.clone(),
            relays: serve::RelayState::default(),
            pass_verdicts: first_contact::PassVerdicts::default(),
            lifecycle: shoal_server::Lifecycle::new(),
            server_stats,
            started_unix_s: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            store_capacity_bytes: config.capacity.0,
            access_log: shoal_server::AccessLog::start(&config.access_log)
                .map_err(|e| CacheError::Config(e.to_string()))?,
            replays: Default::default(),
        });
        Ok(Self {
            local_addr,
            service,
            listener,
            seeded: !config.mesh.seeds.is_empty(),
            tls,
            limits: config.limits,
            force_stop: None,
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

    /// Serves until `shutdown` resolves, then drains (see
    /// [`shoal_server::Server::serve`]: `/readyz` turns 503, the mesh
    /// hears it, transfers in flight finish) and flushes the index.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()> + Send + 'static) {
        // What this cache stored before may have been purged while it was
        // down: learn that from a live member before serving any of it.
        let has_records = self
            .service
            .filler
            .store()
            .all_records()
            .is_ok_and(|r| !r.is_empty());
        if has_records {
            self.service
                .catch_up_purges(std::time::Duration::from_millis(PURGE_CATCH_UP_WAIT_MS))
                .await;
        }
        if let Some(mesh) = &self.service.mesh {
            let head = self
                .service
                .purges
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .newest_id();
            if let Some(head) = head {
                mesh.node.set_purge_head(head);
            }
        }
        let follower = tokio::spawn(self.service.clone().follow_purges());
        let readiness = tokio::spawn(self.service.clone().become_ready(self.seeded));
        let service = self.service.clone();
        let mesh = self.service.mesh.clone();
        let lifecycle = self.service.lifecycle.clone();
        // Load balancers (`/readyz`) and peers (gossip) hear we are
        // draining while we still serve; the server then waits for what
        // is in flight.
        let shutdown = async move {
            shutdown.await;
            lifecycle.begin_drain();
            if let Some(mesh) = mesh {
                mesh.node.drain().await;
            }
        };
        let server = shoal_server::Server::new(self.listener, self.limits).with_role(
            self.service.lifecycle.clone(),
            self.force_stop,
            self.service.access_log.as_ref(),
            self.tls,
        );
        let _ = self.service.egress.set(server.egress());
        let _ = self.service.server_stats.set(server.stats());
        server
            .serve(
                move |request, conn: shoal_server::ConnInfo| {
                    service.clone().handle(request, Some(conn.peer_addr.ip()))
                },
                shutdown,
            )
            .await;
        follower.abort();
        readiness.abort();
        if let Some(mesh) = &self.service.mesh {
            mesh.node.leave().await;
        }
        if let Err(error) = self.service.filler.store().flush().await {
            tracing::warn!(error = %shoal_proto::Chain(&error), "could not flush the index at shutdown");
        }
    }
}

async fn join_mesh(
    config: &CacheConfig,
    gossip: SocketAddr,
    listen: SocketAddr,
    https_listen: Option<SocketAddr>,
    local: Arc<local_state::CacheLocalState>,
    stats: Arc<stats::CacheStats>,
) -> Result<Arc<peer::MeshLink>, CacheError> {
    let settings = &config.mesh;
    let http_advertise = settings.http_advertise.unwrap_or(listen);
    if http_advertise.ip().is_unspecified() {
        return Err(CacheError::Config(format!(
            "the cache listens on {listen}: set mesh.http_advertise to the address peers should use"
        )));
    }
    let node_id = settings
        .node_id
        .clone()
        .unwrap_or_else(|| default_node_id(http_advertise));
    let key = shoal_core::auth::ClusterKey::from_secret(&settings.cluster_secret)
        .map_err(|e| CacheError::Config(e.to_string()))?;
    let node = shoal_mesh::MeshNode::start(
        shoal_mesh::MeshConfig {
            role: shoal_mesh::MeshRole::Cache,
            node_id: node_id.clone(),
            gossip_listen: gossip,
            gossip_advertise: settings.gossip_advertise,
            seeds: settings.seeds.clone(),
            cluster_secret: settings.cluster_secret.clone(),
            region: settings.region.clone(),
            http_advertise,
            https_advertise: settings.https_advertise.clone().or_else(|| {
                https_listen.map(|https| match https.ip().is_unspecified() {
                    true => SocketAddr::new(http_advertise.ip(), https.port()).to_string(),
                    false => https.to_string(),
                })
            }),
            egress_cap_bps: config.limits.egress_bytes_per_s.saturating_mul(8),
            cost_per_gb_microusd: (settings.cost_per_gb * 1e6).round() as u64,
            gossip_interval_ms: settings.gossip_interval_ms,
            phi_threshold: settings.phi_threshold,
        },
        local,
    )
    .await?;
    let link = peer::MeshLink::new(
        node,
        key,
        node_id,
        peer::PeerSettings {
            connect_timeout_ms: settings.peer_connect_timeout_ms,
            read_timeout_ms: settings.peer_read_timeout_ms,
            shield_read_timeout_ms: settings
                .peer_read_timeout_ms
                .saturating_add(config.origin_read_timeout_ms),
            corrupt_pieces_max: settings.peer_corrupt_pieces_max,
            quarantine_ms: settings.peer_quarantine_ms,
            auth_ttl_max_s: settings.auth_ttl_max_s,
        },
        stats.peer_counters.clone(),
    )
    .map_err(CacheError::Config)?;
    Ok(Arc::new(link))
}
