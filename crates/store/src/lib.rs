//! shoal-store: verified pieces on disk, an embedded index, and eviction.
//!
//! Layout under the data directory:
//!
//! ```text
//! index.redb                         redb: piece rows, object records, manifests
//! pieces/<id[0..2]>/<id>/<index>     one file per stored piece
//! tmp/                               pieces being written (cleared at start)
//! ```
//!
//! Crash safety (kill -9 at any moment): a piece file is written under `tmp/`
//! and renamed into place before its index row is committed; an evicted
//! piece's row is committed away before its file is deleted. So after a crash
//! there can be orphan files (deleted at start-up) but never a row naming a
//! torn file. On top of that every piece read from disk is hashed and compared
//! with its recorded hash before it is returned: a file damaged by anything
//! (power loss, a bad disk, an operator) is dropped, never served.

pub mod eviction;
mod index;
mod store;

pub use store::{PieceKey, Store, StoreConfig, StoreError, StoreStats};
