//! shoal-core: the content model shared by every role.
//!
//! Objects are byte strings cut into fixed-size pieces; a [`Manifest`] names
//! each piece's BLAKE3 hash so that any byte can be verified wherever it came
//! from. This crate knows nothing about files, sockets or tokio: it is pure
//! computation, so tests, benchmarks and simulators drive the same code.

pub mod auth;
pub mod bitfield;
pub mod manifest;
pub mod piece;
pub mod rate;
pub mod rendezvous;
pub mod span;
pub mod units;
pub mod url_sign;
pub mod verified;

pub use manifest::{Manifest, ManifestError, ObjectId, PieceHash, Validators, VerifyError};
pub use piece::{PieceIndex, PieceLayout, PieceSize, PieceSizeError};
pub use rate::TokenBucket;
pub use span::ByteSpan;
pub use units::{ByteSize, ByteSizeError};
pub use verified::{PieceLengthError, VerifiedPiece};

/// Seconds since the Unix epoch on this machine's wall clock (0 if the
/// clock is before 1970): for token lifetimes and freshness, never for
/// measuring intervals.
pub fn now_unix_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
