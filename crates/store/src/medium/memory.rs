//! [`MemoryMedium`]: piece bytes and index rows in memory, with faults a
//! test can switch on (a full disk, failing writes, failing commits, a
//! flipped bit), so the store's behaviour under each is tested without a
//! disk — and the same suite runs over [`FileMedium`](super::FileMedium).
//!
//! A store reopened on the same medium sees what was committed before, as
//! after a restart.

use super::{IndexOp, LoadedRows, Medium, PieceRow};
use crate::store::{object_range, PieceKey, StoreError};
use shoal_core::ObjectId;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Faults to inject; all off by default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemoryFaults {
    /// Piece bytes the medium can hold; a write that does not fit fails
    /// with `ENOSPC`, as on a full disk. `None`: unbounded.
    pub data_space_bytes: Option<u64>,
    /// Every piece write fails with `EIO`, as on a failing device.
    pub fail_writes: bool,
    /// Every index commit fails, as when the index file cannot grow.
    pub fail_commits: bool,
}

#[derive(Default)]
struct Contents {
    /// Per object, its pieces' bytes by offset.
    data: HashMap<ObjectId, BTreeMap<u64, Vec<u8>>>,
    rows: BTreeMap<PieceKey, PieceRow>,
    records: BTreeMap<String, Vec<u8>>,
    manifests: HashMap<ObjectId, Vec<u8>>,
}

impl Contents {
    fn data_bytes(&self) -> u64 {
        self.data
            .values()
            .flat_map(|pieces| pieces.values())
            .map(|bytes| bytes.len() as u64)
            .sum()
    }
}

/// See the module doc.
#[derive(Default)]
pub struct MemoryMedium {
    contents: Mutex<Contents>,
    faults: Mutex<MemoryFaults>,
}

impl MemoryMedium {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Replaces the injected faults.
    pub fn set_faults(&self, faults: MemoryFaults) {
        *lock(&self.faults) = faults;
    }

    /// Piece bytes held now (freed holes excluded).
    pub fn data_bytes(&self) -> u64 {
        lock(&self.contents).data_bytes()
    }

    /// Flips one bit of the stored bytes at `offset` of the object's data,
    /// as a bad disk would. False if no stored piece covers it.
    pub fn flip_bit(&self, object: &ObjectId, offset: u64) -> bool {
        let mut contents = lock(&self.contents);
        let Some(pieces) = contents.data.get_mut(object) else {
            return false;
        };
        let Some((start, bytes)) = pieces.range_mut(..=offset).next_back() else {
            return false;
        };
        match bytes.get_mut((offset - *start) as usize) {
            Some(byte) => {
                *byte ^= 1;
                true
            }
            None => false,
        }
    }

    fn faults(&self) -> MemoryFaults {
        lock(&self.faults).clone()
    }
}

impl Medium for MemoryMedium {
    fn location(&self, object: &ObjectId) -> PathBuf {
        PathBuf::from(format!("memory:{}", object.to_hex()))
    }

    fn write_piece(&self, object: &ObjectId, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let faults = self.faults();
        if faults.fail_writes {
            return Err(std::io::Error::from_raw_os_error(libc::EIO));
        }
        let mut contents = lock(&self.contents);
        if let Some(space) = faults.data_space_bytes {
            let replaced = contents
                .data
                .get(object)
                .and_then(|pieces| pieces.get(&offset))
                .map_or(0, |bytes| bytes.len() as u64);
            if contents.data_bytes() - replaced + data.len() as u64 > space {
                return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
            }
        }
        contents
            .data
            .entry(*object)
            .or_default()
            .insert(offset, data.to_vec());
        Ok(())
    }

    fn read_piece(&self, object: &ObjectId, offset: u64, len: u32) -> std::io::Result<Vec<u8>> {
        let contents = lock(&self.contents);
        contents
            .data
            .get(object)
            .and_then(|pieces| pieces.get(&offset))
            .and_then(|bytes| bytes.get(..len as usize))
            .map(<[u8]>::to_vec)
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
    }

    fn free(&self, object: &ObjectId, holes: &[(u64, u64)], whole: bool) {
        let mut contents = lock(&self.contents);
        if whole {
            contents.data.remove(object);
            return;
        }
        if let Some(pieces) = contents.data.get_mut(object) {
            for (offset, _) in holes {
                pieces.remove(offset);
            }
        }
    }

    fn can_hold(&self, object: &ObjectId, rows: &[(PieceKey, PieceRow)]) -> Vec<bool> {
        let contents = lock(&self.contents);
        let pieces = contents.data.get(object);
        rows.iter()
            .map(|(key, row)| {
                pieces
                    .and_then(|pieces| pieces.get(&row.offset(key.index)))
                    .is_some_and(|bytes| bytes.len() >= row.len as usize)
            })
            .collect()
    }

    fn reconcile(&self, rows: &BTreeMap<PieceKey, PieceRow>) -> u64 {
        let mut contents = lock(&self.contents);
        let before = contents.data.len();
        contents.data.retain(|object, pieces| {
            let named: std::collections::HashSet<u64> = rows
                .range(object_range(object))
                .map(|(key, row)| row.offset(key.index))
                .collect();
            pieces.retain(|offset, _| named.contains(offset));
            !named.is_empty()
        });
        (before - contents.data.len()) as u64
    }

    fn load_rows(&self) -> Result<LoadedRows, StoreError> {
        Ok(LoadedRows {
            good: lock(&self.contents)
                .rows
                .iter()
                .map(|(key, row)| (*key, *row))
                .collect(),
            malformed_keys: Vec::new(),
        })
    }

    fn remove_raw_rows(&self, keys: &[Vec<u8>]) -> Result<(), StoreError> {
        let mut contents = lock(&self.contents);
        for raw in keys {
            if let Some(key) = super::redb_index::piece_key_from_bytes(raw) {
                contents.rows.remove(&key);
            }
        }
        Ok(())
    }

    fn commit(&self, batch: &[IndexOp]) -> Result<(), StoreError> {
        if self.faults().fail_commits {
            return Err(StoreError::io(
                std::path::Path::new("memory:index"),
                std::io::Error::from_raw_os_error(libc::ENOSPC),
            ));
        }
        let mut contents = lock(&self.contents);
        for op in batch {
            match op {
                IndexOp::PutPiece { key, row } => {
                    contents.rows.insert(*key, *row);
                }
                IndexOp::RemovePieces { pieces } => {
                    for (key, _) in pieces {
                        contents.rows.remove(key);
                    }
                }
                IndexOp::PutRecord { path, bytes } => {
                    contents.records.insert(path.clone(), bytes.clone());
                }
                IndexOp::RemoveRecord { path } => {
                    contents.records.remove(path);
                }
                IndexOp::PutManifest { id, bytes } => {
                    contents.manifests.insert(*id, bytes.clone());
                }
                IndexOp::RemoveManifest { id } => {
                    contents.manifests.remove(id);
                }
            }
        }
        Ok(())
    }

    fn get_record(&self, path: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(lock(&self.contents).records.get(path).cloned())
    }

    fn all_records(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        Ok(lock(&self.contents)
            .records
            .iter()
            .map(|(path, bytes)| (path.clone(), bytes.clone()))
            .collect())
    }

    fn get_manifest(&self, id: &ObjectId) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(lock(&self.contents).manifests.get(id).cloned())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
