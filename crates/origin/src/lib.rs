//! shoal-origin: the static origin server, and `shoal publish`.
//!
//! The origin serves the files under a root directory over HTTP/1.1 and
//! h2c with everything a CDN needs from its origin: strong validators,
//! conditional requests, single and multiple byte ranges, exact lengths,
//! and bodies streamed from disk in bounded chunks. It never serves
//! anything outside its root, through `..`, encodings or symlinks.
//!
//! [`publish`] writes a manifest (piece size, BLAKE3 of every piece, mtime)
//! for every file under a root, into `ROOT/.shoal/manifests/`, where the
//! origin (or any static server) serves them at [`manifest_path_for`] the
//! object's path. Caches then verify every byte end to end.
//!
//! ```no_run
//! # async fn demo() -> Result<(), shoal_origin::OriginError> {
//! use shoal_origin::{OriginConfig, OriginServer};
//! let config = OriginConfig::new("/srv/media", "127.0.0.1:0".parse().unwrap());
//! let server = OriginServer::bind(config).await?;
//! println!("origin on http://{}", server.local_addr());
//! server.serve(std::future::pending::<()>()).await;
//! # Ok(()) }
//! ```

mod config;
pub mod content_type;
mod file_body;
mod handler;
mod publish;
mod server;

pub use config::{
    OriginConfig, OriginError, READ_CHUNK_BYTES_DEFAULT, READ_CHUNK_BYTES_MAX, READ_CHUNK_BYTES_MIN,
};
pub use content_type::content_type_for;
pub use file_body::READS_IN_FLIGHT_MAX;
pub use handler::Origin;
pub use publish::{
    manifest_file_for, manifest_path_for, publish, FailedFile, PublishError, PublishOptions,
    PublishReport, SkipReason, SkippedFile, MANIFEST_DIR, MANIFEST_SUFFIX, MANIFEST_URL_PREFIX,
    MMAP_THRESHOLD_BYTES, SHOAL_DIR,
};
pub use server::{run, OriginServer};
