//! Origin configuration and the errors of setting an origin up.

use shoal_server::{ServerError, ServerLimits};
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Smallest accepted [`OriginConfig::read_chunk_bytes`].
pub const READ_CHUNK_BYTES_MIN: u64 = 4 * 1024;
/// Largest accepted [`OriginConfig::read_chunk_bytes`].
pub const READ_CHUNK_BYTES_MAX: u64 = 16 * 1024 * 1024;
/// Default [`OriginConfig::read_chunk_bytes`].
pub const READ_CHUNK_BYTES_DEFAULT: u64 = 256 * 1024;

/// How to run an origin.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct OriginConfig {
    /// The directory whose files are served.
    pub root: PathBuf,
    /// Where to listen, e.g. `127.0.0.1:8080` (port 0 picks one).
    pub listen: SocketAddr,
    #[serde(default)]
    pub limits: ServerLimits,
    /// Size of each file read while streaming a body. A response holds at
    /// most two such chunks (one being sent, one being read), on top of
    /// hyper's own send buffer.
    #[serde(default = "default_read_chunk_bytes")]
    pub read_chunk_bytes: u64,
    /// Serve files and directories whose name starts with `.` (other than
    /// the manifests under `/.shoal/manifests/`, always served). Off by
    /// default, so `.git` or `.env` left in a root do not leak.
    #[serde(default)]
    pub serve_hidden: bool,
    /// A `Cache-Control` value added to every 200, 206 and 304, e.g.
    /// `public, max-age=86400`. None by default.
    #[serde(default)]
    pub cache_control: Option<String>,
    /// One line per request (`format` combined, json or off; `path`,
    /// standard output when unset).
    #[serde(default)]
    pub access_log: shoal_server::AccessLogConfig,
    /// An HTTPS listener beside the plain one (`[tls]`).
    #[serde(default)]
    pub tls: shoal_server::tls::TlsConfig,
}

fn default_read_chunk_bytes() -> u64 {
    READ_CHUNK_BYTES_DEFAULT
}

impl OriginConfig {
    /// A configuration with defaults for everything but the root and the
    /// listening address.
    pub fn new(root: impl Into<PathBuf>, listen: SocketAddr) -> Self {
        Self {
            root: root.into(),
            listen,
            limits: ServerLimits::default(),
            read_chunk_bytes: READ_CHUNK_BYTES_DEFAULT,
            serve_hidden: false,
            cache_control: None,
            access_log: Default::default(),
            tls: Default::default(),
        }
    }
}

/// Why an origin could not start.
#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    #[error("origin root {path}: {source}")]
    Root { path: PathBuf, source: io::Error },
    #[error("origin root {0} is not a directory")]
    RootNotDirectory(PathBuf),
    #[error("invalid origin configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Server(#[from] ServerError),
}
