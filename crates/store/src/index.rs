//! The redb index and its single writer thread (group commit).
//!
//! All writes go through one thread that drains its queue and applies
//! everything waiting in one transaction: under load, many piece rows share
//! one fsync, so durability costs little per piece.

use crate::store::{PieceKey, PieceMeta};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use shoal_core::{ObjectId, PieceHash, PieceIndex};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, RwLock};
use tokio::sync::oneshot;

/// piece key (object id ++ index, big-endian) → len u32 ++ hash[32] ++ seq u64 ++ piece_size_log2 u8
pub(crate) const PIECES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("pieces");
/// object path → record bytes (owned by the cache crate)
pub(crate) const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("records");
/// object id → encoded manifest
pub(crate) const MANIFESTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("manifests");

/// At most this many queued operations are applied in one transaction.
const BATCH_OPS_MAX: usize = 4096;
/// How long the writer waits for more operations before committing.
const BATCH_WINDOW: std::time::Duration = std::time::Duration::from_millis(5);

pub(crate) enum WriteOp {
    PutPiece {
        key: PieceKey,
        meta: PieceMeta,
    },
    /// Removes rows, then frees the space (in that order, for crash safety).
    RemovePieces {
        pieces: Vec<(PieceKey, PieceMeta)>,
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
    /// Resolves once everything queued before it is committed.
    Flush {
        done: oneshot::Sender<()>,
    },
}

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

pub(crate) fn meta_bytes(meta: &PieceMeta) -> [u8; 45] {
    let mut out = [0u8; 45];
    out[..4].copy_from_slice(&meta.len.to_be_bytes());
    out[4..36].copy_from_slice(&meta.hash.0);
    out[36..44].copy_from_slice(&meta.seq.to_be_bytes());
    out[44] = meta.piece_size_log2;
    out
}

pub(crate) fn meta_from_bytes(bytes: &[u8]) -> Option<PieceMeta> {
    if bytes.len() != 45 {
        return None;
    }
    let meta = PieceMeta {
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
    fn reopen(&self) -> Result<(), redb::Error> {
        let mut guard = self.db.write().unwrap_or_else(|e| e.into_inner());
        // The old handle must be gone before the file is opened again.
        *guard = None;
        *guard = Some(open(&self.path)?);
        Ok(())
    }
}

/// Whether an index error leaves redb refusing further writes until the
/// database is reopened.
fn needs_reopen(error: &redb::Error) -> bool {
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
/// Good rows, and the raw keys of rows that do not decode.
pub(crate) struct LoadedPieces {
    pub good: Vec<(PieceKey, PieceMeta)>,
    pub malformed_keys: Vec<Vec<u8>>,
}

pub(crate) fn load_pieces(db: &Database) -> Result<LoadedPieces, redb::Error> {
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
    Ok(LoadedPieces {
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

/// Runs the writer loop until every sender is gone.
/// `reclaim` frees the disk space of removed pieces once their rows are
/// committed away; `health` hears whether commits succeed.
pub(crate) fn writer_loop(
    index: std::sync::Arc<Index>,
    ops: mpsc::Receiver<WriteOp>,
    reclaim: impl Fn(&[(PieceKey, PieceMeta)]),
    health: &crate::store::WriteHealth,
) {
    while let Ok(first) = ops.recv() {
        // Gather what arrives within a short window: one commit (and one
        // fsync) then covers a burst of pieces instead of each one.
        let deadline = std::time::Instant::now() + BATCH_WINDOW;
        let mut batch = vec![first];
        while batch.len() < BATCH_OPS_MAX {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match ops.recv_timeout(left) {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        // Flush acks leave the batch first, so a failed write cannot lose them.
        let mut flushes = Vec::new();
        batch.retain_mut(|op| match op {
            WriteOp::Flush { done } => {
                let (placeholder, _) = oneshot::channel();
                flushes.push(std::mem::replace(done, placeholder));
                false
            }
            _ => true,
        });
        // One retry, after reopening the database if the failure left
        // redb refusing writes: a transient failure (a full disk freeing
        // up, say) should not cost a whole batch.
        let mut result = index.with(|db| apply(db, &batch));
        if let Err(error) = &result {
            tracing::debug!(%error, "index write failed; retrying once");
            if needs_reopen(error) {
                if let Err(error) = index.reopen() {
                    tracing::debug!(%error, "reopening the index failed");
                }
            }
            result = index.with(|db| apply(db, &batch));
        }
        match result {
            Ok(()) => {
                health.index_ok();
                let removed: Vec<(PieceKey, PieceMeta)> = batch
                    .into_iter()
                    .filter_map(|op| match op {
                        WriteOp::RemovePieces { pieces } => Some(pieces),
                        _ => None,
                    })
                    .flatten()
                    .collect();
                if !removed.is_empty() {
                    reclaim(&removed);
                }
            }
            // The in-memory view stays authoritative for this run; space of
            // rows that could not be removed is reclaimed at the next start.
            Err(error) => {
                health.index_failed(&error.to_string());
                if needs_reopen(&error) {
                    let _ = index.reopen();
                }
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

/// Applies a batch in one transaction.
fn apply(db: &Database, batch: &[WriteOp]) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    {
        let mut pieces = txn.open_table(PIECES)?;
        let mut records = txn.open_table(RECORDS)?;
        let mut manifests = txn.open_table(MANIFESTS)?;
        for op in batch {
            match op {
                WriteOp::PutPiece { key, meta } => {
                    pieces.insert(piece_key_bytes(key).as_slice(), meta_bytes(meta).as_slice())?;
                }
                WriteOp::RemovePieces { pieces: gone } => {
                    for (key, _) in gone {
                        pieces.remove(piece_key_bytes(key).as_slice())?;
                    }
                }
                WriteOp::PutRecord { path, bytes } => {
                    records.insert(path.as_str(), bytes.as_slice())?;
                }
                WriteOp::RemoveRecord { path } => {
                    records.remove(path.as_str())?;
                }
                WriteOp::PutManifest { id, bytes } => {
                    manifests.insert(id.0.as_slice(), bytes.as_slice())?;
                }
                WriteOp::RemoveManifest { id } => {
                    manifests.remove(id.0.as_slice())?;
                }
                WriteOp::Flush { .. } => {}
            }
        }
    }
    txn.commit()?;
    Ok(())
}
