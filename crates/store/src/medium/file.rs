//! [`FileMedium`]: piece bytes in one sparse data file per object version
//! and rows in a redb index, under the store's data directory.
//!
//! Piece `i` lives at offset `i × piece size` of its object's file. Writing
//! a piece is a `pwrite` into an existing file (no inode per piece: creating
//! one file per piece made the kernel's inode allocator the bottleneck of a
//! cold fill), and freeing one punches a hole, so space is freed at piece
//! granularity.

use super::redb_index::{self, Index};
use super::{IndexOp, LoadedRows, Medium, PieceRow};
use crate::store::{object_range, PieceKey, StoreError};
use shoal_core::ObjectId;
use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Data files under `<data_dir>/objects/`, the index at
/// `<data_dir>/index.redb`.
pub struct FileMedium {
    objects_dir: PathBuf,
    index: Index,
}

impl FileMedium {
    /// Opens (or creates) the directories and the index.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let objects_dir = data_dir.join("objects");
        for dir in [data_dir, &objects_dir] {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
        }
        let index = Index::open(&data_dir.join("index.redb"))?;
        Ok(Self { objects_dir, index })
    }

    fn data_file(&self, object: &ObjectId) -> PathBuf {
        let hex = object.to_hex();
        self.objects_dir.join(&hex[..2]).join(format!("{hex}.data"))
    }
}

impl Medium for FileMedium {
    fn location(&self, object: &ObjectId) -> PathBuf {
        self.data_file(object)
    }

    fn write_piece(&self, object: &ObjectId, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let path = self.data_file(object);
        let open = || {
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
        };
        let file = match open() {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                open()?
            }
            Err(error) => return Err(error),
        };
        file.write_all_at(data, offset)
    }

    fn read_piece(&self, object: &ObjectId, offset: u64, len: u32) -> std::io::Result<Vec<u8>> {
        let file = std::fs::File::open(self.data_file(object))?;
        let mut data = vec![0u8; len as usize];
        file.read_exact_at(&mut data, offset)?;
        Ok(data)
    }

    fn free(&self, object: &ObjectId, holes: &[(u64, u64)], whole: bool) {
        let path = self.data_file(object);
        if whole {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => {
                    tracing::warn!(%error, path = %path.display(), "could not delete a data file")
                }
            }
            return;
        }
        let Ok(file) = std::fs::OpenOptions::new().write(true).open(&path) else {
            return;
        };
        for &(offset, len) in holes {
            punch_hole(&file, offset, len);
        }
    }

    fn can_hold(&self, object: &ObjectId, rows: &[(PieceKey, PieceRow)]) -> Vec<bool> {
        let len = std::fs::metadata(self.data_file(object))
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len());
        rows.iter()
            .map(|(key, row)| len.is_some_and(|len| row.offset(key.index) + row.len as u64 <= len))
            .collect()
    }

    fn reconcile(&self, rows: &BTreeMap<PieceKey, PieceRow>) -> u64 {
        let mut removed = 0;
        let Ok(prefixes) = std::fs::read_dir(&self.objects_dir) else {
            return 0;
        };
        for prefix in prefixes.flatten() {
            let Ok(files) = std::fs::read_dir(prefix.path()) else {
                continue;
            };
            for file in files.flatten() {
                let id = file
                    .file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".data"))
                    .and_then(ObjectId::from_hex);
                let named: Vec<(&PieceKey, &PieceRow)> = match id {
                    Some(id) => rows.range(object_range(&id)).collect(),
                    None => Vec::new(),
                };
                if named.is_empty() {
                    if std::fs::remove_file(file.path()).is_ok() {
                        removed += 1;
                    }
                    continue;
                }
                let Ok(handle) = std::fs::OpenOptions::new().write(true).open(file.path()) else {
                    continue;
                };
                let mut next_free = 0;
                for (key, row) in named {
                    let start = row.offset(key.index);
                    if start > next_free {
                        punch_hole(&handle, next_free, start - next_free);
                    }
                    next_free = start + row.len as u64;
                }
                let _ = handle.set_len(next_free);
            }
        }
        removed
    }

    fn load_rows(&self) -> Result<LoadedRows, StoreError> {
        Ok(self.index.with(redb_index::load_rows)?)
    }

    fn remove_raw_rows(&self, keys: &[Vec<u8>]) -> Result<(), StoreError> {
        Ok(self
            .index
            .with(|db| redb_index::remove_raw_piece_rows(db, keys))?)
    }

    /// One retry, after reopening the database if the failure left redb
    /// refusing writes: a transient failure (a full disk freeing up, say)
    /// should not cost a whole batch, nor stop the index until a restart.
    fn commit(&self, batch: &[IndexOp]) -> Result<(), StoreError> {
        let mut result = self.index.with(|db| redb_index::apply(db, batch));
        if let Err(error) = &result {
            tracing::debug!(%error, "index write failed; retrying once");
            if redb_index::needs_reopen(error) {
                if let Err(error) = self.index.reopen() {
                    tracing::debug!(%error, "reopening the index failed");
                }
            }
            result = self.index.with(|db| redb_index::apply(db, batch));
        }
        if let Err(error) = &result {
            if redb_index::needs_reopen(error) {
                let _ = self.index.reopen();
            }
        }
        Ok(result?)
    }

    fn get_record(&self, path: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.index.with(|db| redb_index::get_record(db, path))?)
    }

    fn all_records(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        Ok(self.index.with(redb_index::all_records)?)
    }

    fn get_manifest(&self, id: &ObjectId) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.index.with(|db| redb_index::get_manifest(db, id))?)
    }
}

fn punch_hole(file: &std::fs::File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    if len == 0 {
        return;
    }
    // SAFETY: fallocate on a file descriptor we own, with plain integers.
    let result = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    if result != 0 {
        // Filesystems without hole punching keep the bytes; the budget
        // counts indexed pieces, so correctness does not depend on it.
        tracing::debug!(error = %std::io::Error::last_os_error(), "punching a hole failed");
    }
}
