//! shoal-client: download one object from several caches at once.
//!
//! - [`schedule`]: which piece to ask which source for — a state machine
//!   without I/O (shares follow measured speed, sticky stripes, stall and
//!   degradation detection, endgame), driven by tokio here and by a fluid
//!   simulator in its tests.
//! - [`discover`]: the URL (a signed one keeps its signature on every
//!   request), the selector's plan (or a plain server and its mirrors),
//!   the manifest checked against the object id.
//! - [`reference`]: what pieces are checked against: the manifest, or the
//!   hashes caches learnt for an unpublished object.
//! - [`download`]: the tokio driver: one task per piece request, every
//!   piece verified before it is written, a resumable part file, sources
//!   replaced through the selector when they stall, degrade, fail or lie.
//! - [`stream`] and [`playback`]: stream mode — bytes in order to stdout or
//!   to a local HTTP endpoint for players, with a virtual player counting
//!   rebuffering.
//!
//! ```no_run
//! # async fn demo() -> Result<(), shoal_client::GetError> {
//! let options = shoal_client::GetOptions::new("http://selector:8070/video/film.mp4", "film.mp4");
//! let summary = shoal_client::get(options, |p| eprintln!("{} / {}", p.done_bytes, p.total_bytes)).await?;
//! println!("{:.1} Mbit/s from {} sources", summary.mbps, summary.sources.len());
//! # Ok(()) }
//! ```

pub mod discover;
pub mod download;
pub mod gap;
pub mod peers;
pub mod playback;
pub mod reference;
pub mod replan;
pub mod schedule;
pub mod standby;
pub mod stream;

pub use download::{get, GetOptions, Progress, SourceSummary, Summary};

/// Why a download could not be done; each names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum GetError {
    #[error("bad URL {0}")]
    BadUrl(String),
    #[error("cannot reach {url}: {why}")]
    Unreachable { url: String, why: String },
    #[error("not found: {0}")]
    NotFound(String),
    #[error("manifest: {0}")]
    Manifest(String),
    #[error("cannot write {path}: {why}")]
    Disk { path: String, why: String },
    #[error("{0}")]
    Failed(String),
}
