//! The redb index of the file medium: piece rows, records and manifests,
//! each batch of the store's writer applied in one transaction.

use super::{IndexOp, LoadedRows, PieceRow};
use crate::store::PieceKey;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use shoal_core::{ObjectId, PieceHash, PieceIndex};
use std::path::{Path, PathBuf};
use std::sync::RwLock;

/// piece key (object id ++ index, big-endian) → len u32 ++ hash[32] ++ seq u64 ++ piece_size_log2 u8
pub(crate) const PIECES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("pieces");
/// object path → record bytes (owned by the cache crate)
pub(crate) const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("records");
/// object id → encoded manifest
pub(crate) const MANIFESTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("manifests");

pub(crate) fn piece_key_bytes(key: &PieceKey) -> [u8; 36] {
    let mut out = [0u8; 36];
    out[..32].copy_from_slice(&key.object.0);
    out[32..].copy_from_slice(&key.index.0.to_be_bytes());
    out
}

pub(crate) fn piece_key_from_bytes(bytes: &[u8]) -> Option<PieceKey> {
    let id: [u8; 32] = bytes.get(..32)?.try_into().ok()?;
    let index: [u8; 4] = bytes.get(32..36)?.try_into().ok()?;
    (bytes.len() == 36).then_some(PieceKey {
        object: ObjectId(id),
        index: PieceIndex(u32::from_be_bytes(index)),
    })
}

pub(crate) fn meta_bytes(meta: &PieceRow) -> [u8; 45] {
    let mut out = [0u8; 45];
    out[..4].copy_from_slice(&meta.len.to_be_bytes());
    out[4..36].copy_from_slice(&meta.hash.0);
    out[36..44].copy_from_slice(&meta.seq.to_be_bytes());
    out[44] = meta.piece_size_log2;
    out
}

pub(crate) fn meta_from_bytes(bytes: &[u8]) -> Option<PieceRow> {
    if bytes.len() != 45 {
        return None;
    }
    let meta = PieceRow {
        len: u32::from_be_bytes(bytes[..4].try_into().ok()?),
        hash: PieceHash(bytes[4..36].try_into().ok()?),
        seq: u64::from_be_bytes(bytes[36..44].try_into().ok()?),
        piece_size_log2: bytes[44],
    };
    // A row that could not describe a real piece is treated as malformed.
    shoal_core::PieceSize::from_log2(meta.piece_size_log2).ok()?;
    (meta.len as u64 <= 1 << meta.piece_size_log2).then_some(meta)
}

/// The index database, reopened after an I/O error: once a commit fails
/// (a full disk, say), redb refuses every later transaction with
/// "previous I/O error" until the database is closed and opened again, so
/// without this one ENOSPC would stop the index until a restart.
pub(crate) struct Index {
    path: PathBuf,
    /// `None` while it could not be reopened (the next write tries again).
    db: RwLock<Option<Database>>,
}

impl Index {
    pub(crate) fn open(path: &Path) -> Result<Self, redb::Error> {
        Ok(Self {
            path: path.to_path_buf(),
            db: RwLock::new(Some(open(path)?)),
        })
    }

    /// Runs `f` on the database (readers share it; a reopen waits for them).
    pub(crate) fn with<T>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, redb::Error>,
    ) -> Result<T, redb::Error> {
        let guard = self.db.read().unwrap_or_else(|e| e.into_inner());
        match guard.as_ref() {
            Some(db) => f(db),
            None => Err(redb::Error::DatabaseClosed),
        }
    }

    /// Closes and reopens the database (redb repairs it on open if the
    /// failed commit left it inconsistent).
    pub(crate) fn reopen(&self) -> Result<(), redb::Error> {
        let mut guard = self.db.write().unwrap_or_else(|e| e.into_inner());
        // The old handle must be gone before the file is opened again.
        *guard = None;
        *guard = Some(open(&self.path)?);
        Ok(())
    }
}

/// Whether an index error leaves redb refusing further writes until the
/// database is reopened.
pub(crate) fn needs_reopen(error: &redb::Error) -> bool {
    matches!(
        error,
        redb::Error::PreviousIo | redb::Error::Io(_) | redb::Error::DatabaseClosed
    )
}

pub(crate) fn open(path: &Path) -> Result<Database, redb::Error> {
    let db = Database::create(path)?;
    let txn = db.begin_write()?;
    {
        txn.open_table(PIECES)?;
        txn.open_table(RECORDS)?;
        txn.open_table(MANIFESTS)?;
    }
    txn.commit()?;
    Ok(db)
}

/// Every piece row, for start-up recovery. Malformed rows are returned as
/// raw keys to delete.
pub(crate) fn load_rows(db: &Database) -> Result<LoadedRows, redb::Error> {
    let txn = db.begin_read()?;
    let table = txn.open_table(PIECES)?;
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for row in table.iter()? {
        let (k, v) = row?;
        match (piece_key_from_bytes(k.value()), meta_from_bytes(v.value())) {
            (Some(key), Some(meta)) => good.push((key, meta)),
            _ => bad.push(k.value().to_vec()),
        }
    }
    Ok(LoadedRows {
        good,
        malformed_keys: bad,
    })
}

pub(crate) fn remove_raw_piece_rows(db: &Database, keys: &[Vec<u8>]) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    {
        let mut table = txn.open_table(PIECES)?;
        for k in keys {
            table.remove(k.as_slice())?;
        }
    }
    txn.commit()?;
    Ok(())
}

pub(crate) fn get_record(db: &Database, path: &str) -> Result<Option<Vec<u8>>, redb::Error> {
    let txn = db.begin_read()?;
    let table = txn.open_table(RECORDS)?;
    Ok(table.get(path)?.map(|v| v.value().to_vec()))
}

pub(crate) fn all_records(db: &Database) -> Result<Vec<(String, Vec<u8>)>, redb::Error> {
    let txn = db.begin_read()?;
    let table = txn.open_table(RECORDS)?;
    let mut out = Vec::new();
    for row in table.iter()? {
        let (k, v) = row?;
        out.push((k.value().to_string(), v.value().to_vec()));
    }
    Ok(out)
}

pub(crate) fn get_manifest(db: &Database, id: &ObjectId) -> Result<Option<Vec<u8>>, redb::Error> {
    let txn = db.begin_read()?;
    let table = txn.open_table(MANIFESTS)?;
    Ok(table.get(id.0.as_slice())?.map(|v| v.value().to_vec()))
}

/// Applies a batch in one transaction.
pub(crate) fn apply(db: &Database, batch: &[IndexOp]) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    {
        let mut pieces = txn.open_table(PIECES)?;
        let mut records = txn.open_table(RECORDS)?;
        let mut manifests = txn.open_table(MANIFESTS)?;
        for op in batch {
            match op {
                IndexOp::PutPiece { key, row } => {
                    pieces.insert(piece_key_bytes(key).as_slice(), meta_bytes(row).as_slice())?;
                }
                IndexOp::RemovePieces { pieces: gone } => {
                    for (key, _) in gone {
                        pieces.remove(piece_key_bytes(key).as_slice())?;
                    }
                }
                IndexOp::PutRecord { path, bytes } => {
                    records.insert(path.as_str(), bytes.as_slice())?;
                }
                IndexOp::RemoveRecord { path } => {
                    records.remove(path.as_str())?;
                }
                IndexOp::PutManifest { id, bytes } => {
                    manifests.insert(id.0.as_slice(), bytes.as_slice())?;
                }
                IndexOp::RemoveManifest { id } => {
                    manifests.remove(id.0.as_slice())?;
                }
            }
        }
    }
    txn.commit()?;
    Ok(())
}
