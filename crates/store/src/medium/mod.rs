//! [`Medium`]: where a [`Store`](crate::Store) keeps piece bytes and index
//! rows — the data files and redb index on disk ([`FileMedium`]), or memory
//! ([`MemoryMedium`], with faults that tests switch on).
//!
//! Everything that keeps the store's promises lives above this trait, in
//! the store, and so holds for every medium: the memory tier, the byte
//! budget and eviction, verify-on-read (a byte that does not match its
//! recorded hash is dropped, never returned), the write-health state (a
//! failing medium makes the store say so and serve through) and the single
//! writer that groups index rows into one commit. A medium only moves
//! bytes; it may fail any call, and the store copes.

mod file;
mod memory;
pub(crate) mod redb_index;

pub use file::FileMedium;
pub use memory::{MemoryFaults, MemoryMedium};

use crate::store::{PieceKey, StoreError};
use shoal_core::{ObjectId, PieceHash};
use std::collections::BTreeMap;

/// What the index remembers of a stored piece.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PieceRow {
    pub len: u32,
    pub hash: PieceHash,
    /// Insertion order, to rebuild the eviction queues after a restart.
    pub seq: u64,
    /// Piece size of the object, which places the piece in its data.
    pub piece_size_log2: u8,
}

impl PieceRow {
    /// Where the piece starts in its object's data.
    pub fn offset(&self, index: shoal_core::PieceIndex) -> u64 {
        (index.0 as u64) << self.piece_size_log2
    }
}

/// One change to the index; a batch of them is committed at once or not
/// at all.
#[derive(Clone, Debug)]
pub enum IndexOp {
    PutPiece {
        key: PieceKey,
        row: PieceRow,
    },
    /// Rows only: the store frees the bytes after the commit (see
    /// [`Medium::free`]), so a crash in between leaves bytes no row names
    /// (cleaned at the next open), never a row naming freed bytes.
    RemovePieces {
        pieces: Vec<(PieceKey, PieceRow)>,
    },
    PutRecord {
        path: String,
        bytes: Vec<u8>,
    },
    RemoveRecord {
        path: String,
    },
    PutManifest {
        id: ObjectId,
        bytes: Vec<u8>,
    },
    RemoveManifest {
        id: ObjectId,
    },
}

/// The piece rows read at open: good ones, and the raw keys of rows that
/// do not decode (to delete).
#[derive(Debug, Default)]
pub struct LoadedRows {
    pub good: Vec<(PieceKey, PieceRow)>,
    pub malformed_keys: Vec<Vec<u8>>,
}

/// Piece bytes by (object, offset) plus a transactional index of piece
/// rows, per-object records and manifests. Calls block (the store makes
/// them from blocking threads); any of them may fail.
pub trait Medium: Send + Sync + 'static {
    /// Where an object's bytes live, for error messages and logs.
    fn location(&self, object: &ObjectId) -> std::path::PathBuf;

    /// Writes piece bytes at `offset` of the object's data.
    fn write_piece(&self, object: &ObjectId, offset: u64, data: &[u8]) -> std::io::Result<()>;

    /// Reads `len` bytes at `offset` of the object's data (unverified: the
    /// store checks them against the row's hash).
    fn read_piece(&self, object: &ObjectId, offset: u64, len: u32) -> std::io::Result<Vec<u8>>;

    /// Frees the bytes of removed pieces (`(offset, len)` each), or all of
    /// the object's data when `whole` (no piece of it is stored or being
    /// written). Best effort: the budget counts rows, not bytes.
    fn free(&self, object: &ObjectId, holes: &[(u64, u64)], whole: bool);

    /// At open: for each of one object's rows, whether its bytes can be
    /// there (a row whose bytes cannot is dropped; damaged bytes are caught
    /// on read). Asked once per object, so a medium looks at each object's
    /// data once, not once per piece.
    fn can_hold(&self, object: &ObjectId, rows: &[(PieceKey, PieceRow)]) -> Vec<bool>;

    /// At open: deletes data no row names and frees space no row covers.
    /// Returns how many objects' data were deleted.
    fn reconcile(&self, rows: &BTreeMap<PieceKey, PieceRow>) -> u64;

    /// Every piece row.
    fn load_rows(&self) -> Result<LoadedRows, StoreError>;

    /// Deletes rows by raw key (malformed or stale ones found at open).
    fn remove_raw_rows(&self, keys: &[Vec<u8>]) -> Result<(), StoreError>;

    /// Applies a batch atomically.
    fn commit(&self, batch: &[IndexOp]) -> Result<(), StoreError>;

    fn get_record(&self, path: &str) -> Result<Option<Vec<u8>>, StoreError>;
    fn all_records(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    fn get_manifest(&self, id: &ObjectId) -> Result<Option<Vec<u8>>, StoreError>;
}
