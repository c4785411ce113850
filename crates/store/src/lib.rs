//! shoal-store: verified pieces on disk, an embedded index, and eviction.
//!
//! The [`Store`] keeps its promises over any [`Medium`]: the file medium
//! (what a cache runs on) or the in-memory one (tests, with injected faults).
//! Layout of the file medium under the data directory:
//!
//! ```text
//! index.redb                       redb: piece rows, object records, manifests
//! objects/<id[0..2]>/<id>.data     one sparse file per object version
//! ```
//!
//! Crash safety (kill -9 at any moment): a piece's bytes are written before
//! its index row is committed; an evicted piece's row is committed away
//! before its bytes are freed. So after a crash there can be bytes no row
//! names (freed at open) but never a row naming bytes that were not
//! written. On top of that every piece read from the medium is hashed and
//! compared with its recorded hash before it is returned: bytes damaged by
//! anything (power loss, a bad disk, an operator) are dropped, never served.

pub mod eviction;
pub mod medium;
mod store;

pub use medium::{FileMedium, Medium, MemoryFaults, MemoryMedium};
pub use store::{PieceKey, Store, StoreConfig, StoreError, StoreStats};
