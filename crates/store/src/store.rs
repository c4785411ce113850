//! [`Store`]: the two-tier piece store (memory, then a [`Medium`]) with
//! eviction, verify-on-read, write health and one index writer.
//!
//! All index writes go through one thread that drains its queue and
//! applies everything waiting in one commit: under load, many piece rows
//! share one fsync, so durability costs little per piece.

use crate::eviction::{EvictionPolicy, PolicyKind};
use crate::medium::{FileMedium, IndexOp, Medium, PieceRow};
use bytes::Bytes;
use shoal_core::{ObjectId, PieceHash, PieceIndex, PieceSize, VerifiedPiece};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use tokio::sync::oneshot;

/// One piece of one object version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PieceKey {
    pub object: ObjectId,
    pub index: PieceIndex,
}

/// What the writer thread is asked to do.
enum WriteOp {
    Index(IndexOp),
    /// Resolves once everything queued before it is committed, or with
    /// why the commit failed.
    Flush {
        done: oneshot::Sender<Result<(), String>>,
    },
}

/// Record and manifest changes of failed commits kept for the next one, at
/// most (piece rows are not kept: the in-memory view is authoritative for
/// this run, and a piece whose row is lost is only forgotten at restart).
const UNSAVED_OPS_MAX: usize = 4_096;

/// At most this many queued operations are applied in one commit.
const BATCH_OPS_MAX: usize = 4096;
/// How long the writer waits for more operations before committing.
const BATCH_WINDOW: std::time::Duration = std::time::Duration::from_millis(5);

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
    #[error("store I/O error at {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("store index error: {0}")]
    Index(#[from] redb::Error),
    #[error("the store's writer thread has stopped")]
    WriterGone,
    /// The index could not be committed; the record and manifest changes
    /// are kept and retried with the next commit.
    #[error("the index could not be written ({0}); retried with the next write")]
    Unsaved(String),
}

impl StoreError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        StoreError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Whether the store can write: a failed piece write (a full disk, a
/// failing device) or index commit makes it unhealthy until the next one
/// succeeds. Changes are logged once each way, not once per piece.
#[derive(Debug, Default)]
pub struct WriteHealth {
    state: Mutex<WriteState>,
}

#[derive(Debug, Default)]
struct WriteState {
    disk_error: Option<String>,
    /// Piece writes that succeeded since the last failure.
    disk_ok_run: u32,
    index_error: Option<String>,
}

/// Piece writes in a row that must succeed before a failing disk counts
/// as writable again: on a nearly full disk the odd write fits, and
/// health should not flap with it.
const DISK_RECOVERY_WRITES: u32 = 8;

impl WriteHealth {
    /// Why the store cannot write now, if it cannot.
    pub fn failure(&self) -> Option<String> {
        let state = lock(&self.state);
        match (&state.disk_error, &state.index_error) {
            (Some(disk), _) => Some(format!("cannot write pieces ({disk})")),
            (None, Some(index)) => Some(format!("cannot write the index ({index})")),
            (None, None) => None,
        }
    }

    pub(crate) fn disk_failed(&self, why: &str) {
        let mut state = lock(&self.state);
        if state.disk_error.is_none() {
            tracing::error!(error = %why, "the store cannot write pieces: serving without storing until it can");
        }
        state.disk_error = Some(why.to_string());
        state.disk_ok_run = 0;
    }

    pub(crate) fn disk_ok(&self) {
        let mut state = lock(&self.state);
        if state.disk_error.is_none() {
            return;
        }
        state.disk_ok_run += 1;
        if state.disk_ok_run >= DISK_RECOVERY_WRITES {
            state.disk_error = None;
            tracing::info!("the store writes pieces again");
        }
    }

    pub(crate) fn index_failed(&self, why: &str) {
        let mut state = lock(&self.state);
        if state.index_error.is_none() {
            tracing::error!(error = %why, "the store cannot write its index: pieces stored now are forgotten at restart until it can");
        }
        state.index_error = Some(why.to_string());
    }

    pub(crate) fn index_ok(&self) {
        let mut state = lock(&self.state);
        if state.index_error.take().is_some() {
            tracing::info!("the store writes its index again");
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
    /// Pieces whose bytes on disk did not match their recorded hash (dropped).
    pub corrupt_pieces: AtomicU64,
    /// Data files without any index row, deleted at start-up.
    pub recovered_files_removed: AtomicU64,
}

struct Tier {
    pieces: BTreeMap<PieceKey, PieceRow>,
    /// Pieces being written right now: their space must not be freed
    /// under them (see `free_space`).
    writing: std::collections::HashSet<PieceKey>,
    policy: Box<dyn EvictionPolicy<PieceKey> + Send>,
    next_seq: u64,
}

impl Tier {
    fn has_object(&self, object: &ObjectId) -> bool {
        self.pieces.range(object_range(object)).next().is_some()
            || self.writing.iter().any(|k| k.object == *object)
    }
}

struct MemoryTier {
    pieces: std::collections::HashMap<PieceKey, VerifiedPiece>,
    policy: Box<dyn EvictionPolicy<PieceKey> + Send>,
}

pub struct Store {
    config: StoreConfig,
    medium: Arc<dyn Medium>,
    /// Whether pieces and index rows can be written now.
    write_health: Arc<WriteHealth>,
    disk: Arc<Mutex<Tier>>,
    memory: Mutex<MemoryTier>,
    /// `None` only while dropping.
    writer: Mutex<Option<mpsc::Sender<WriteOp>>>,
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Serialises piece-data writes (see `put`).
    data_write_lock: Mutex<()>,
    stats: StoreStats,
}

pub(crate) fn object_range(object: &ObjectId) -> std::ops::RangeInclusive<PieceKey> {
    PieceKey {
        object: *object,
        index: PieceIndex(0),
    }..=PieceKey {
        object: *object,
        index: PieceIndex(u32::MAX),
    }
}

impl Store {
    /// Opens (or creates) the store in `config.data_dir` — data files and a
    /// redb index — and reconciles the index with the files.
    pub fn open(config: StoreConfig) -> Result<Arc<Self>, StoreError> {
        let medium = Arc::new(FileMedium::open(&config.data_dir)?);
        Self::open_on(config, medium)
    }

    /// Opens the store on any medium (`config.data_dir` is then unused):
    /// drops rows whose bytes cannot be there and bytes no row names.
    pub fn open_on(config: StoreConfig, medium: Arc<dyn Medium>) -> Result<Arc<Self>, StoreError> {
        let stats = StoreStats::default();
        let loaded = medium.load_rows()?;
        let mut stale_rows: Vec<Vec<u8>> = loaded.malformed_keys;
        let mut pieces = BTreeMap::new();
        let mut good = loaded.good;
        good.sort_unstable_by_key(|(key, _)| *key);
        // One object's rows at a time (one look at its data each). A row
        // whose bytes cannot be there is dropped; bytes that are there but
        // damaged are caught by verify-on-read.
        for rows in good.chunk_by(|a, b| a.0.object == b.0.object) {
            let holdable = medium.can_hold(&rows[0].0.object, rows);
            for ((key, meta), ok) in rows.iter().zip(holdable) {
                if ok {
                    pieces.insert(*key, *meta);
                } else {
                    stale_rows.push(crate::medium::redb_index::piece_key_bytes(key).to_vec());
                }
            }
        }
        if !stale_rows.is_empty() {
            tracing::warn!(
                count = stale_rows.len(),
                "dropping index rows whose piece data is missing"
            );
            medium.remove_raw_rows(&stale_rows)?;
        }
        let removed = medium.reconcile(&pieces);
        stats
            .recovered_files_removed
            .store(removed, Ordering::Relaxed);

        // Rebuild eviction state in insertion order; over budget (the budget
        // may have shrunk) evict right away.
        let mut policy = config.policy.build(config.capacity_bytes);
        let mut ordered: Vec<(&PieceKey, &PieceRow)> = pieces.iter().collect();
        ordered.sort_by_key(|(_, m)| m.seq);
        let mut over_budget = Vec::new();
        for (key, meta) in ordered {
            over_budget.extend(policy.insert_resident(*key, meta.len as u64));
        }
        let next_seq = pieces.values().map(|m| m.seq + 1).max().unwrap_or(0);
        let over_budget: Vec<(PieceKey, PieceRow)> = over_budget
            .into_iter()
            .filter_map(|key| pieces.remove(&key).map(|meta| (key, meta)))
            .collect();

        let disk = Arc::new(Mutex::new(Tier {
            pieces,
            writing: Default::default(),
            policy,
            next_seq,
        }));
        let (sender, receiver) = mpsc::channel();
        let write_health = Arc::new(WriteHealth::default());
        let writer_thread = {
            let medium = medium.clone();
            let disk = disk.clone();
            let health = write_health.clone();
            std::thread::Builder::new()
                .name("shoal-index-writer".into())
                .spawn(move || writer_loop(&*medium, receiver, &disk, &health))
                .map_err(|e| StoreError::io(&config.data_dir, e))?
        };
        if !over_budget.is_empty() {
            let _ = sender.send(WriteOp::Index(IndexOp::RemovePieces {
                pieces: over_budget,
            }));
        }
        let memory_policy = PolicyKind::Lru.build(config.memory_capacity_bytes);
        Ok(Arc::new(Self {
            medium,
            write_health,
            disk,
            memory: Mutex::new(MemoryTier {
                pieces: Default::default(),
                policy: memory_policy,
            }),
            writer: Mutex::new(Some(sender)),
            writer_thread: Mutex::new(Some(writer_thread)),
            data_write_lock: Mutex::new(()),
            stats,
            config,
        }))
    }

    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// Why the store cannot write now (a full disk, say), if it cannot:
    /// the cache serves without storing meanwhile and says it is degraded.
    pub fn write_failure(&self) -> Option<String> {
        self.write_health.failure()
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
        if lock(&self.disk).pieces.contains_key(key) {
            return true;
        }
        lock(&self.memory).pieces.contains_key(key)
    }

    /// The indices of the pieces of `object` held on disk.
    pub fn pieces_of(&self, object: &ObjectId) -> Vec<PieceIndex> {
        let tier = lock(&self.disk);
        tier.pieces
            .range(object_range(object))
            .map(|(k, _)| k.index)
            .collect()
    }

    /// The indices of the pieces of `object` held in memory or on disk
    /// (what a sibling may ask for), sorted.
    pub fn held_pieces(&self, object: &ObjectId) -> Vec<PieceIndex> {
        let mut held = self.pieces_of(object);
        {
            let memory = lock(&self.memory);
            held.extend(
                memory
                    .pieces
                    .keys()
                    .filter(|k| k.object == *object)
                    .map(|k| k.index),
            );
        }
        held.sort_unstable();
        held.dedup();
        held
    }

    /// Objects with pieces on disk, most bytes first, at most `max`.
    pub fn objects_by_bytes(&self, max: usize) -> Vec<(ObjectId, u64)> {
        let mut totals: Vec<(ObjectId, u64)> = Vec::new();
        {
            let tier = lock(&self.disk);
            // Keys are sorted by object, so each object's pieces are adjacent.
            for (key, meta) in tier.pieces.iter() {
                match totals.last_mut() {
                    Some((object, bytes)) if *object == key.object => *bytes += meta.len as u64,
                    _ => totals.push((key.object, meta.len as u64)),
                }
            }
        }
        totals.sort_by(|a, b| b.1.cmp(&a.1).then(a.0 .0.cmp(&b.0 .0)));
        totals.truncate(max);
        totals
    }

    /// The recorded hash of a stored piece.
    pub fn piece_hash(&self, key: &PieceKey) -> Option<PieceHash> {
        lock(&self.disk).pieces.get(key).map(|m| m.hash)
    }

    /// Reads a piece: from memory, else from disk (verified against its
    /// recorded hash). `Ok(None)` means "not here" — including damaged or
    /// vanished data, which is dropped from the index and counted.
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
        let read = {
            let medium = self.medium.clone();
            tokio::task::spawn_blocking(move || -> std::io::Result<Result<VerifiedPiece, _>> {
                let data = medium.read_piece(&key.object, meta.offset(key.index), meta.len)?;
                Ok(VerifiedPiece::verify_against(
                    key.index,
                    meta.hash,
                    Bytes::from(data),
                ))
            })
            .await
            .map_err(|e| {
                StoreError::io(&self.medium.location(&key.object), std::io::Error::other(e))
            })?
        };
        match read {
            Ok(Ok(piece)) => {
                self.stats.disk_hits.fetch_add(1, Ordering::Relaxed);
                self.put_in_memory(key, piece.clone());
                Ok(Some(piece))
            }
            Ok(Err(error)) => {
                tracing::error!(%error, object = %key.object, "stored piece failed verification; dropped, will refetch");
                self.stats.corrupt_pieces.fetch_add(1, Ordering::Relaxed);
                self.drop_piece(key, meta.seq);
                Ok(None)
            }
            Err(error) => {
                // Evicted between lookup and read, or the file is gone or
                // short: either way the index must stop naming it.
                if error.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(%error, piece = %key.index, object = %key.object, "piece read failed; dropping it");
                }
                self.stats.misses.fetch_add(1, Ordering::Relaxed);
                self.drop_piece(key, meta.seq);
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

    /// Stores a verified piece of an object with pieces of `piece_size`
    /// (memory and disk) and evicts what the budget requires. Storing a
    /// piece that is already present does nothing.
    pub async fn put(
        self: &Arc<Self>,
        object: ObjectId,
        piece_size: PieceSize,
        piece: VerifiedPiece,
    ) -> Result<(), StoreError> {
        let key = PieceKey {
            object,
            index: piece.index(),
        };
        self.put_in_memory(key, piece.clone());
        {
            let mut tier = lock(&self.disk);
            if tier.pieces.contains_key(&key) || !tier.writing.insert(key) {
                return Ok(()); // stored, or being stored by another task
            }
        }
        let path = self.medium.location(&object);
        let offset = (piece.index().0 as u64) << piece_size.log2();
        let data = piece.data().clone();
        let write = {
            let store = self.clone();
            tokio::task::spawn_blocking(move || {
                // One writer at a time: concurrent buffered writes to one
                // file contend on its inode lock and burn a core spinning.
                let _writing = lock(&store.data_write_lock);
                store.medium.write_piece(&object, offset, &data)
            })
            .await
            .map_err(|e| StoreError::io(&path, std::io::Error::other(e)))?
        };
        if let Err(error) = write {
            lock(&self.disk).writing.remove(&key);
            self.write_health
                .disk_failed(&format!("{}: {error}", path.display()));
            return Err(StoreError::io(&path, error));
        }
        self.write_health.disk_ok();

        let len = piece.len() as u64;
        let victims = {
            let mut tier = lock(&self.disk);
            tier.writing.remove(&key);
            let meta = PieceRow {
                len: piece.len() as u32,
                hash: piece.hash(),
                seq: tier.next_seq,
                piece_size_log2: piece_size.log2(),
            };
            tier.next_seq += 1;
            tier.pieces.insert(key, meta);
            let victims: Vec<(PieceKey, PieceRow)> = tier
                .policy
                .insert(key, len)
                .into_iter()
                .filter_map(|victim| tier.pieces.remove(&victim).map(|m| (victim, m)))
                .collect();
            if !victims.iter().any(|(k, _)| *k == key) {
                self.send(WriteOp::Index(IndexOp::PutPiece { key, row: meta }))?;
            }
            victims
        };
        self.stats.pieces_written.fetch_add(1, Ordering::Relaxed);
        self.stats.bytes_written.fetch_add(len, Ordering::Relaxed);
        if !victims.is_empty() {
            let evicted_bytes: u64 = victims.iter().map(|(_, m)| m.len as u64).sum();
            self.stats
                .pieces_evicted
                .fetch_add(victims.len() as u64, Ordering::Relaxed);
            self.stats
                .bytes_evicted
                .fetch_add(evicted_bytes, Ordering::Relaxed);
            let mut memory = lock(&self.memory);
            for (victim, _) in victims.iter().filter(|(v, _)| *v != key) {
                if memory.pieces.remove(victim).is_some() {
                    memory.policy.remove(victim);
                }
            }
            drop(memory);
            self.send(WriteOp::Index(IndexOp::RemovePieces { pieces: victims }))?;
        }
        Ok(())
    }

    /// Removes every piece of an object version (new version, purge).
    pub fn remove_object(&self, object: &ObjectId) -> Result<(), StoreError> {
        let gone: Vec<(PieceKey, PieceRow)> = {
            let mut tier = lock(&self.disk);
            let keys: Vec<PieceKey> = tier
                .pieces
                .range(object_range(object))
                .map(|(k, _)| *k)
                .collect();
            keys.into_iter()
                .filter_map(|key| {
                    tier.policy.remove(&key);
                    tier.pieces.remove(&key).map(|m| (key, m))
                })
                .collect()
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
        self.send(WriteOp::Index(IndexOp::RemoveManifest { id: *object }))?;
        if gone.is_empty() {
            return Ok(());
        }
        self.send(WriteOp::Index(IndexOp::RemovePieces { pieces: gone }))
    }

    /// Drops a piece whose bytes failed to read or verify — only if the row
    /// is still the one that was read (`seq`): a read racing an eviction and
    /// a re-store must not drop the newer, good copy.
    fn drop_piece(&self, key: PieceKey, seq: u64) {
        let removed = {
            let mut tier = lock(&self.disk);
            if tier.pieces.get(&key).map(|m| m.seq) != Some(seq) {
                return;
            }
            tier.policy.remove(&key);
            tier.pieces.remove(&key)
        };
        if let Some(meta) = removed {
            let _ = self.send(WriteOp::Index(IndexOp::RemovePieces {
                pieces: vec![(key, meta)],
            }));
        }
    }

    /// Small per-object records owned by the caller (the cache), by path.
    pub fn get_record(&self, path: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.medium.get_record(path)
    }

    /// Every record (for start-up bookkeeping).
    pub fn all_records(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.medium.all_records()
    }

    pub fn put_record(&self, path: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        self.send(WriteOp::Index(IndexOp::PutRecord {
            path: path.to_string(),
            bytes,
        }))
    }

    pub fn remove_record(&self, path: &str) -> Result<(), StoreError> {
        self.send(WriteOp::Index(IndexOp::RemoveRecord {
            path: path.to_string(),
        }))
    }

    pub fn get_manifest(&self, id: &ObjectId) -> Result<Option<Vec<u8>>, StoreError> {
        self.medium.get_manifest(id)
    }

    pub fn put_manifest(&self, id: ObjectId, bytes: Vec<u8>) -> Result<(), StoreError> {
        self.send(WriteOp::Index(IndexOp::PutManifest { id, bytes }))
    }

    /// Waits until every write queued so far is committed; an error if
    /// the commit failed (its record and manifest changes are retried with
    /// the next one).
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (done, wait) = tokio::sync::oneshot::channel();
        self.send(WriteOp::Flush { done })?;
        wait.await
            .map_err(|_| StoreError::WriterGone)?
            .map_err(StoreError::Unsaved)
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

/// Runs the writer loop until every sender is gone: gathers what arrives
/// within a short window into one commit, tells `health` whether commits
/// succeed, and frees the bytes of removed pieces once their rows are
/// committed away.
fn writer_loop(
    medium: &dyn Medium,
    ops: mpsc::Receiver<WriteOp>,
    disk: &Mutex<Tier>,
    health: &WriteHealth,
) {
    let mut unsaved: Vec<IndexOp> = Vec::new();
    while let Ok(first) = ops.recv() {
        let deadline = std::time::Instant::now() + BATCH_WINDOW;
        let mut waiting = vec![first];
        while waiting.len() < BATCH_OPS_MAX {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match ops.recv_timeout(left) {
                Ok(op) => waiting.push(op),
                Err(_) => break,
            }
        }
        // Flush acks leave the batch first, so a failed commit cannot lose them.
        let mut flushes = Vec::new();
        // What failed to commit before goes first, in its order.
        let mut batch = std::mem::take(&mut unsaved);
        for op in waiting {
            match op {
                WriteOp::Index(op) => batch.push(op),
                WriteOp::Flush { done } => flushes.push(done),
            }
        }
        let outcome = match medium.commit(&batch) {
            Ok(()) => {
                health.index_ok();
                let removed: Vec<(PieceKey, PieceRow)> = batch
                    .into_iter()
                    .filter_map(|op| match op {
                        IndexOp::RemovePieces { pieces } => Some(pieces),
                        _ => None,
                    })
                    .flatten()
                    .collect();
                if !removed.is_empty() {
                    free_space(medium, disk, &removed);
                }
                Ok(())
            }
            // Piece rows: the in-memory view stays authoritative for this
            // run, and space of rows that could not be removed is reclaimed
            // at the next open. Records and manifests (a purge, a new
            // version) have no other copy: they are kept for the next commit.
            Err(error) => {
                let why = error.to_string();
                health.index_failed(&why);
                unsaved = batch
                    .into_iter()
                    .filter(|op| {
                        !matches!(op, IndexOp::PutPiece { .. } | IndexOp::RemovePieces { .. })
                    })
                    .collect();
                if unsaved.len() > UNSAVED_OPS_MAX {
                    let dropped = unsaved.len() - UNSAVED_OPS_MAX;
                    tracing::error!(dropped, "index changes dropped after failed commits: the oldest are forgotten at restart");
                    unsaved.drain(..dropped);
                }
                Err(why)
            }
        };
        for done in flushes {
            let _ = done.send(outcome.clone());
        }
    }
}

/// Frees the space of pieces whose rows are gone, unless a piece was
/// stored again or is being written; an object's whole data goes once none
/// of its pieces is stored or being written. Runs under the disk lock, so
/// no write can start in between.
fn free_space(medium: &dyn Medium, disk: &Mutex<Tier>, gone: &[(PieceKey, PieceRow)]) {
    let tier = lock(disk);
    let mut objects: Vec<ObjectId> = gone.iter().map(|(k, _)| k.object).collect();
    objects.sort_unstable();
    objects.dedup();
    for object in objects {
        if !tier.has_object(&object) {
            medium.free(&object, &[], true);
            continue;
        }
        let holes: Vec<(u64, u64)> = gone
            .iter()
            .filter(|(k, _)| k.object == object)
            .filter(|(k, _)| !tier.pieces.contains_key(k) && !tier.writing.contains(k))
            .map(|(k, row)| (row.offset(k.index), row.len as u64))
            .collect();
        medium.free(&object, &holes, false);
    }
}
