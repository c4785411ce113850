//! [`Store`]: the two-tier piece store (memory, then disk) with eviction.

use crate::eviction::{EvictionPolicy, PolicyKind};
use crate::index::{self, WriteOp};
use bytes::Bytes;
use redb::Database;
use shoal_core::{ObjectId, PieceHash, PieceIndex, VerifiedPiece};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};

/// One piece of one object version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PieceKey {
    pub object: ObjectId,
    pub index: PieceIndex,
}

/// What the index remembers of a stored piece.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PieceMeta {
    pub len: u32,
    pub hash: PieceHash,
    /// Insertion order, to rebuild the eviction queues after a restart.
    pub seq: u64,
}

#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub data_dir: PathBuf,
    /// Disk budget for piece data.
    pub capacity_bytes: u64,
    /// Budget of the in-memory tier of hot pieces.
    pub memory_capacity_bytes: u64,
    pub policy: PolicyKind,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store I/O error at {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("store index error: {0}")]
    Index(#[from] redb::Error),
    #[error("the store's writer thread has stopped")]
    WriterGone,
}

impl StoreError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        StoreError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Counters, readable at any time.
#[derive(Debug, Default)]
pub struct StoreStats {
    pub memory_hits: AtomicU64,
    pub disk_hits: AtomicU64,
    pub misses: AtomicU64,
    pub pieces_written: AtomicU64,
    pub bytes_written: AtomicU64,
    pub pieces_evicted: AtomicU64,
    pub bytes_evicted: AtomicU64,
    /// Pieces whose file did not match its recorded hash (dropped).
    pub corrupt_pieces: AtomicU64,
    /// Orphan or damaged files removed at start-up.
    pub recovered_files_removed: AtomicU64,
}

struct Tier {
    pieces: BTreeMap<PieceKey, PieceMeta>,
    policy: Box<dyn EvictionPolicy<PieceKey> + Send>,
    next_seq: u64,
}

struct MemoryTier {
    pieces: std::collections::HashMap<PieceKey, VerifiedPiece>,
    policy: Box<dyn EvictionPolicy<PieceKey> + Send>,
}

pub struct Store {
    config: StoreConfig,
    pieces_dir: PathBuf,
    tmp_dir: PathBuf,
    db: Arc<Database>,
    disk: Mutex<Tier>,
    memory: Mutex<MemoryTier>,
    /// `None` only while dropping.
    writer: Mutex<Option<mpsc::Sender<WriteOp>>>,
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    tmp_counter: AtomicU64,
    stats: StoreStats,
}

pub(crate) fn piece_file_path(pieces_dir: &Path, key: &PieceKey) -> PathBuf {
    let hex = key.object.to_hex();
    pieces_dir
        .join(&hex[..2])
        .join(&hex)
        .join(key.index.0.to_string())
}

impl Store {
    /// Opens (or creates) the store and reconciles the index with the files.
    pub fn open(config: StoreConfig) -> Result<Arc<Self>, StoreError> {
        let data_dir = config.data_dir.clone();
        let pieces_dir = data_dir.join("pieces");
        let tmp_dir = data_dir.join("tmp");
        for dir in [&data_dir, &pieces_dir] {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
        }
        // Half-written pieces from a previous run are never adopted.
        if tmp_dir.exists() {
            std::fs::remove_dir_all(&tmp_dir).map_err(|e| StoreError::io(&tmp_dir, e))?;
        }
        std::fs::create_dir_all(&tmp_dir).map_err(|e| StoreError::io(&tmp_dir, e))?;
        let db = Arc::new(index::open(&data_dir.join("index.redb"))?);
        let stats = StoreStats::default();

        let loaded = index::load_pieces(&db)?;
        let rows = loaded.good;
        let mut stale_rows: Vec<Vec<u8>> = loaded.malformed_keys;
        let mut pieces = BTreeMap::new();
        for (key, meta) in rows {
            let path = piece_file_path(&pieces_dir, &key);
            match std::fs::metadata(&path) {
                Ok(m) if m.is_file() && m.len() == meta.len as u64 => {
                    pieces.insert(key, meta);
                }
                _ => stale_rows.push(index::piece_key_bytes(&key).to_vec()),
            }
        }
        if !stale_rows.is_empty() {
            tracing::warn!(
                count = stale_rows.len(),
                "dropping index rows whose piece file is missing or torn"
            );
            index::remove_raw_piece_rows(&db, &stale_rows)?;
        }
        let removed = remove_orphan_files(&pieces_dir, &pieces);
        stats
            .recovered_files_removed
            .store(removed, Ordering::Relaxed);

        // Rebuild eviction state in insertion order; over budget (the budget
        // may have shrunk) evict right away.
        let mut policy = config.policy.build(config.capacity_bytes);
        let mut ordered: Vec<(&PieceKey, &PieceMeta)> = pieces.iter().collect();
        ordered.sort_by_key(|(_, m)| m.seq);
        let mut over_budget = Vec::new();
        for (key, meta) in ordered {
            over_budget.extend(policy.insert_resident(*key, meta.len as u64));
        }
        let next_seq = pieces.values().map(|m| m.seq + 1).max().unwrap_or(0);
        for key in &over_budget {
            pieces.remove(key);
        }

        let (sender, receiver) = mpsc::channel();
        let writer_thread = {
            let db = db.clone();
            let pieces_dir = pieces_dir.clone();
            std::thread::Builder::new()
                .name("shoal-index-writer".into())
                .spawn(move || index::writer_loop(db, pieces_dir, receiver))
                .map_err(|e| StoreError::io(&data_dir, e))?
        };
        if !over_budget.is_empty() {
            let _ = sender.send(WriteOp::RemovePieces { keys: over_budget });
        }
        let memory_policy = PolicyKind::Lru.build(config.memory_capacity_bytes);
        Ok(Arc::new(Self {
            pieces_dir,
            tmp_dir,
            db,
            disk: Mutex::new(Tier {
                pieces,
                policy,
                next_seq,
            }),
            memory: Mutex::new(MemoryTier {
                pieces: Default::default(),
                policy: memory_policy,
            }),
            writer: Mutex::new(Some(sender)),
            writer_thread: Mutex::new(Some(writer_thread)),
            tmp_counter: AtomicU64::new(0),
            stats,
            config,
        }))
    }

    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    pub fn stats(&self) -> &StoreStats {
        &self.stats
    }

    /// Bytes of piece data on disk.
    pub fn resident_bytes(&self) -> u64 {
        lock(&self.disk).policy.resident_bytes()
    }

    pub fn piece_count(&self) -> usize {
        lock(&self.disk).pieces.len()
    }

    pub fn contains(&self, key: &PieceKey) -> bool {
        lock(&self.disk).pieces.contains_key(key) || lock(&self.memory).pieces.contains_key(key)
    }

    /// The indices of the pieces of `object` held on disk.
    pub fn pieces_of(&self, object: &ObjectId) -> Vec<PieceIndex> {
        let tier = lock(&self.disk);
        let start = PieceKey {
            object: *object,
            index: PieceIndex(0),
        };
        let end = PieceKey {
            object: *object,
            index: PieceIndex(u32::MAX),
        };
        tier.pieces
            .range(start..=end)
            .map(|(k, _)| k.index)
            .collect()
    }

    /// The recorded hash of a stored piece.
    pub fn piece_hash(&self, key: &PieceKey) -> Option<PieceHash> {
        lock(&self.disk).pieces.get(key).map(|m| m.hash)
    }

    /// Reads a piece: from memory, else from disk (verified against its
    /// recorded hash). `Ok(None)` means "not here" — including a damaged
    /// file, which is dropped and counted.
    pub async fn get(self: &Arc<Self>, key: PieceKey) -> Result<Option<VerifiedPiece>, StoreError> {
        if let Some(piece) = self.get_from_memory(&key) {
            self.stats.memory_hits.fetch_add(1, Ordering::Relaxed);
            lock(&self.disk).policy.on_hit(&key);
            return Ok(Some(piece));
        }
        let meta = {
            let mut tier = lock(&self.disk);
            match tier.pieces.get(&key).copied() {
                Some(meta) => {
                    tier.policy.on_hit(&key);
                    meta
                }
                None => {
                    self.stats.misses.fetch_add(1, Ordering::Relaxed);
                    return Ok(None);
                }
            }
        };
        let path = piece_file_path(&self.pieces_dir, &key);
        let read = tokio::task::spawn_blocking(move || std::fs::read(&path)).await;
        let data = match read {
            Ok(Ok(data)) => Bytes::from(data),
            Ok(Err(error)) if error.kind() == std::io::ErrorKind::NotFound => {
                // Evicted between the lookup and the read.
                self.stats.misses.fetch_add(1, Ordering::Relaxed);
                return Ok(None);
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, piece = %key.index, object = %key.object, "piece read failed; dropping it");
                self.drop_damaged(key);
                return Ok(None);
            }
            Err(join) => {
                return Err(StoreError::io(
                    &self.pieces_dir,
                    std::io::Error::other(join),
                ))
            }
        };
        let verified = {
            let hash = meta.hash;
            tokio::task::spawn_blocking(move || {
                VerifiedPiece::verify_against(key.index, hash, data)
            })
            .await
            .map_err(|e| StoreError::io(&self.pieces_dir, std::io::Error::other(e)))?
        };
        match verified {
            Ok(piece) => {
                self.stats.disk_hits.fetch_add(1, Ordering::Relaxed);
                self.put_in_memory(key, piece.clone());
                Ok(Some(piece))
            }
            Err(error) => {
                tracing::error!(%error, object = %key.object, "stored piece failed verification; dropped, will refetch");
                self.stats.corrupt_pieces.fetch_add(1, Ordering::Relaxed);
                self.drop_damaged(key);
                Ok(None)
            }
        }
    }

    fn get_from_memory(&self, key: &PieceKey) -> Option<VerifiedPiece> {
        let mut memory = lock(&self.memory);
        let piece = memory.pieces.get(key).cloned()?;
        memory.policy.on_hit(key);
        Some(piece)
    }

    fn put_in_memory(&self, key: PieceKey, piece: VerifiedPiece) {
        let mut memory = lock(&self.memory);
        if memory.pieces.contains_key(&key) {
            return;
        }
        let len = piece.len() as u64;
        memory.pieces.insert(key, piece);
        for victim in memory.policy.insert(key, len) {
            memory.pieces.remove(&victim);
        }
    }

    /// Stores a verified piece (memory and disk) and evicts what the budget
    /// requires. Storing a piece that is already present does nothing.
    pub async fn put(
        self: &Arc<Self>,
        object: ObjectId,
        piece: VerifiedPiece,
    ) -> Result<(), StoreError> {
        let key = PieceKey {
            object,
            index: piece.index(),
        };
        self.put_in_memory(key, piece.clone());
        if lock(&self.disk).pieces.contains_key(&key) {
            return Ok(());
        }
        let final_path = piece_file_path(&self.pieces_dir, &key);
        let tmp_path = self.tmp_dir.join(format!(
            "{}.tmp",
            self.tmp_counter.fetch_add(1, Ordering::Relaxed)
        ));
        let data = piece.data().clone();
        let write = {
            let (tmp, target) = (tmp_path.clone(), final_path.clone());
            tokio::task::spawn_blocking(move || write_piece_file(&tmp, &target, &data))
                .await
                .map_err(|e| StoreError::io(&tmp_path, std::io::Error::other(e)))?
        };
        write.map_err(|e| StoreError::io(&final_path, e))?;

        let len = piece.len() as u64;
        let (meta, victims) = {
            let mut tier = lock(&self.disk);
            if tier.pieces.contains_key(&key) {
                // Another writer won the race; same verified bytes.
                return Ok(());
            }
            let meta = PieceMeta {
                len: piece.len() as u32,
                hash: piece.hash(),
                seq: tier.next_seq,
            };
            tier.next_seq += 1;
            tier.pieces.insert(key, meta);
            let victims = tier.policy.insert(key, len);
            let mut evicted_bytes = 0;
            for victim in &victims {
                if let Some(m) = tier.pieces.remove(victim) {
                    evicted_bytes += m.len as u64;
                }
            }
            self.stats
                .pieces_evicted
                .fetch_add(victims.len() as u64, Ordering::Relaxed);
            self.stats
                .bytes_evicted
                .fetch_add(evicted_bytes, Ordering::Relaxed);
            (meta, victims)
        };
        self.stats.pieces_written.fetch_add(1, Ordering::Relaxed);
        self.stats.bytes_written.fetch_add(len, Ordering::Relaxed);
        let not_admitted = victims.contains(&key);
        if !not_admitted {
            self.send(WriteOp::PutPiece { key, meta })?;
        }
        if !victims.is_empty() {
            let mut memory = lock(&self.memory);
            for victim in victims.iter().filter(|v| **v != key) {
                if memory.pieces.remove(victim).is_some() {
                    memory.policy.remove(victim);
                }
            }
            drop(memory);
            self.send(WriteOp::RemovePieces { keys: victims })?;
        }
        Ok(())
    }

    /// Removes every piece of an object version (new version, purge).
    pub fn remove_object(&self, object: &ObjectId) -> Result<(), StoreError> {
        let keys: Vec<PieceKey> = {
            let mut tier = lock(&self.disk);
            let start = PieceKey {
                object: *object,
                index: PieceIndex(0),
            };
            let end = PieceKey {
                object: *object,
                index: PieceIndex(u32::MAX),
            };
            let keys: Vec<PieceKey> = tier.pieces.range(start..=end).map(|(k, _)| *k).collect();
            for key in &keys {
                tier.pieces.remove(key);
                tier.policy.remove(key);
            }
            keys
        };
        {
            let mut memory = lock(&self.memory);
            let in_memory: Vec<PieceKey> = memory
                .pieces
                .keys()
                .filter(|k| k.object == *object)
                .copied()
                .collect();
            for key in in_memory {
                memory.pieces.remove(&key);
                memory.policy.remove(&key);
            }
        }
        self.send(WriteOp::RemoveManifest { id: *object })?;
        if keys.is_empty() {
            return Ok(());
        }
        self.send(WriteOp::RemovePieces { keys })
    }

    fn drop_damaged(&self, key: PieceKey) {
        {
            let mut tier = lock(&self.disk);
            if tier.pieces.remove(&key).is_some() {
                tier.policy.remove(&key);
            }
        }
        let _ = self.send(WriteOp::RemovePieces { keys: vec![key] });
    }

    /// Small per-object records owned by the caller (the cache), by path.
    pub fn get_record(&self, path: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(index::get_record(&self.db, path)?)
    }

    pub fn put_record(&self, path: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        self.send(WriteOp::PutRecord {
            path: path.to_string(),
            bytes,
        })
    }

    pub fn remove_record(&self, path: &str) -> Result<(), StoreError> {
        self.send(WriteOp::RemoveRecord {
            path: path.to_string(),
        })
    }

    pub fn get_manifest(&self, id: &ObjectId) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(index::get_manifest(&self.db, id)?)
    }

    pub fn put_manifest(&self, id: ObjectId, bytes: Vec<u8>) -> Result<(), StoreError> {
        self.send(WriteOp::PutManifest { id, bytes })
    }

    /// Waits until every write queued so far is committed.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (done, wait) = tokio::sync::oneshot::channel();
        self.send(WriteOp::Flush { done })?;
        wait.await.map_err(|_| StoreError::WriterGone)
    }

    fn send(&self, op: WriteOp) -> Result<(), StoreError> {
        match lock(&self.writer).as_ref() {
            Some(sender) => sender.send(op).map_err(|_| StoreError::WriterGone),
            None => Err(StoreError::WriterGone),
        }
    }
}

impl Drop for Store {
    /// Lets the writer commit what is queued, then closes the database, so
    /// the same directory can be opened again right away.
    fn drop(&mut self) {
        lock(&self.writer).take();
        if let Some(thread) = lock(&self.writer_thread).take() {
            let _ = thread.join();
        }
    }
}

/// Poisoning only means another thread panicked mid-update of plain data
/// that stays structurally valid; keep serving.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write_piece_file(tmp_path: &Path, final_path: &Path, data: &[u8]) -> std::io::Result<()> {
    {
        let mut file = std::fs::File::create(tmp_path)?;
        file.write_all(data)?;
    }
    if let Some(parent) = final_path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::rename(tmp_path, final_path)
}

/// Deletes piece files that no index row names; returns how many.
fn remove_orphan_files(pieces_dir: &Path, pieces: &BTreeMap<PieceKey, PieceMeta>) -> u64 {
    let mut removed = 0;
    let Ok(prefixes) = std::fs::read_dir(pieces_dir) else {
        return 0;
    };
    for prefix in prefixes.flatten() {
        let Ok(objects) = std::fs::read_dir(prefix.path()) else {
            continue;
        };
        for object_dir in objects.flatten() {
            let id = object_dir.file_name().to_str().and_then(ObjectId::from_hex);
            let Ok(files) = std::fs::read_dir(object_dir.path()) else {
                continue;
            };
            let mut kept = 0;
            for file in files.flatten() {
                let index = file
                    .file_name()
                    .to_str()
                    .and_then(|n| n.parse::<u32>().ok());
                let known = match (id, index) {
                    (Some(object), Some(index)) => pieces.contains_key(&PieceKey {
                        object,
                        index: PieceIndex(index),
                    }),
                    _ => false,
                };
                if known {
                    kept += 1;
                } else if std::fs::remove_file(file.path()).is_ok() {
                    removed += 1;
                }
            }
            if kept == 0 {
                let _ = std::fs::remove_dir(object_dir.path());
            }
        }
    }
    removed
}
