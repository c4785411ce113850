//! shoal-cache: the edge cache service.
//!
//! `GET http://CACHE/<path>` serves `<origin>/<path>` from verified pieces:
//! a miss fetches piece-aligned ranges from the origin (one fetch per piece,
//! however many clients want it) and streams them on as they verify; a hit
//! comes from memory or disk. See ARCHITECTURE.md for the invariants.

pub mod fill;
pub mod object;
pub mod origin_client;
pub mod resolve;
pub mod serve;
pub mod stats;

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
    pub limits: ServerLimits,
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
            origin_connect_timeout_ms: 3_000,
            origin_read_timeout_ms: 15_000,
            manifest_bytes_max: 16 << 20,
            fill_run_bytes_max: 16 << 20,
            readahead_bytes: 32 << 20,
            object_bytes_max: 1 << 40,
            limits: ServerLimits::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] shoal_store::StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl CacheConfig {
    /// Checks what the type system cannot.
    pub fn validate(&self) -> Result<(), CacheError> {
        let origin = self.origin.trim();
        if origin.is_empty() {
            return Err(CacheError::Config(
                "an origin URL is required (--origin http://HOST:PORT)".into(),
            ));
        }
        if !origin.starts_with("http://") {
            return Err(CacheError::Config(format!(
                "origin `{origin}` must be an http:// URL"
            )));
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
        Ok(())
    }
}

/// A cache whose store is open and whose port is bound, ready to run.
pub struct BoundCache {
    pub local_addr: SocketAddr,
    pub service: Arc<CacheService>,
    listener: tokio::net::TcpListener,
    limits: ServerLimits,
}

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
            })
            .map_err(|e| CacheError::Config(e.to_string()))?,
        );
        let stats = Arc::new(stats::CacheStats::default());
        let filler = fill::Filler::new(
            store.clone(),
            origin.clone(),
            stats.clone(),
            fill::FillConfig {
                run_bytes_max: config.fill_run_bytes_max,
            },
        );
        let service = Arc::new(CacheService {
            resolver: resolve::Resolver::new(
                store,
                origin.clone(),
                stats.clone(),
                config.object_bytes_max,
            ),
            filler,
            origin,
            stats,
            readahead_bytes: config.readahead_bytes,
        });
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
        Ok(Self {
            local_addr,
            service,
            listener,
            limits: config.limits,
        })
    }

    /// Serves until `shutdown` resolves, then flushes the index.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()> + Send + 'static) {
        let service = self.service.clone();
        shoal_server::serve(
            self.listener,
            self.limits,
            move |request, _conn| service.clone().handle(request),
            shutdown,
        )
        .await;
        if let Err(error) = self.service.filler.store().flush().await {
            tracing::warn!(%error, "could not flush the index at shutdown");
        }
    }
}
