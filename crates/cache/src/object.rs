//! What the cache knows about the current version of an object at a path.
//!
//! A [`ObjectRecord`] is the persisted form (JSON in the store's record table,
//! so fields can be added); an [`ObjectEntry`] is the live form, with the
//! piece layout, the published manifest if any, and the hashes learnt while
//! ingesting an object that has no manifest.

use bytes::Bytes;
use shoal_core::{
    Manifest, ObjectId, PieceHash, PieceIndex, PieceLayout, PieceSize, VerifiedPiece, VerifyError,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub use shoal_proto::record::{served_etag, ObjectRecord, RECORD_FORMAT};

/// The id of an object without a manifest: stable for the same validators.
pub fn unpublished_id(
    path: &str,
    size: u64,
    etag: Option<&str>,
    last_modified: Option<&str>,
) -> ObjectId {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"shoal unpublished object v1\0");
    hasher.update(path.as_bytes());
    hasher.update(&[0]);
    hasher.update(&size.to_be_bytes());
    hasher.update(etag.unwrap_or("").as_bytes());
    hasher.update(&[0]);
    hasher.update(last_modified.unwrap_or("").as_bytes());
    ObjectId(*hasher.finalize().as_bytes())
}

/// Why a piece from the origin was refused.
#[derive(Debug, thiserror::Error)]
pub enum PieceRejected {
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error(transparent)]
    Length(#[from] shoal_core::verified::PieceLengthError),
}

/// Reference hashes learnt while ingesting, with a count of the known ones.
struct LearntHashes {
    hashes: Vec<Option<PieceHash>>,
    known: usize,
}

/// The stored fields of one `Vary` variant (name, value), shared.
pub type VariantFields = Arc<Vec<(String, String)>>;

/// The version that replaced a retired one.
struct Successor {
    entry: Arc<ObjectEntry>,
    same_pieces: std::collections::HashMap<u32, u32>,
}

pub struct ObjectEntry {
    /// The decoded path (the cache key).
    pub path: String,
    /// The same path, percent-encoded for the origin URL.
    pub uri_path: String,
    pub record: ObjectRecord,
    pub id: ObjectId,
    pub layout: PieceLayout,
    pub etag: String,
    /// The published manifest, for objects that have one.
    pub manifest: Option<Manifest>,
    /// For objects without a manifest: the hash of each piece as first
    /// ingested; later copies must match it. Shared by every entry of the
    /// same version (a revalidation makes a new entry; fills still running
    /// on the old one keep teaching the new one).
    learnt_hashes: Arc<Mutex<LearntHashes>>,
    /// Set when the origin showed that this version is gone.
    invalidated: AtomicBool,
    /// Set when another version replaced this one at its path: it is
    /// served only to requests pinned to it, from pieces the mesh holds,
    /// never fetched from the shield or the origin again.
    retired: AtomicBool,
    /// For a retired version: the version that replaced it, and which of
    /// its pieces (old index -> new index) have the same hash, so they can
    /// be fetched through it.
    successor: Mutex<Option<Successor>>,
    /// When the shield was last asked for this version's hashes (ms since
    /// the entry was made), plus one; 0: never.
    hashes_asked_at_ms: std::sync::atomic::AtomicU64,
    /// Origin bytes disagreed with a learnt hash: the version's reference
    /// hashes (and pieces) are not to be trusted.
    hash_conflict: AtomicBool,
    /// Pieces whose origin bytes failed the published manifest, and when:
    /// requests needing them are refused before any header for a while
    /// instead of fetching them again. Shared by every entry of the
    /// version (re-probes make new entries).
    bad_pieces: Arc<Mutex<std::collections::HashMap<u32, std::time::Instant>>>,
    created: std::time::Instant,
    /// Pieces an earlier version of the path holds with the same hash:
    /// copied from there when needed instead of fetched.
    carried: Mutex<std::collections::HashMap<u32, shoal_store::PieceKey>>,
    /// When this cache gave up flash-crowd relays for this version (its
    /// shield failed), ms since the entry was made, plus one; 0: never.
    relays_lost_at_ms: std::sync::atomic::AtomicU64,
    /// Bumped when relays are given up: relay responses being served end,
    /// so no cache keeps waiting on a relay whose shield is gone.
    relay_epoch: tokio::sync::watch::Sender<u64>,
    /// The fields of other `Vary` variants than the record's, by secondary
    /// key (see [`crate::variants`]).
    variants: Mutex<std::collections::HashMap<String, VariantFields>>,
}

impl ObjectEntry {
    pub fn new(
        path: String,
        uri_path: String,
        record: ObjectRecord,
        manifest: Option<Manifest>,
    ) -> Result<Self, String> {
        let id = ObjectId::from_hex(&record.id).ok_or("bad object id in record")?;
        let piece_size = PieceSize::from_log2(record.piece_size_log2).map_err(|e| e.to_string())?;
        let layout = PieceLayout::new(record.size, piece_size).map_err(|e| e.to_string())?;
        if let Some(m) = &manifest {
            if m.layout() != layout {
                return Err("manifest does not match the object's layout".into());
            }
        }
        let etag = served_etag(&record);
        let learnt_hashes = Arc::new(Mutex::new(LearntHashes {
            hashes: vec![None; layout.piece_count() as usize],
            known: 0,
        }));
        Ok(Self {
            path,
            uri_path,
            record,
            id,
            layout,
            etag,
            manifest,
            learnt_hashes,
            invalidated: AtomicBool::new(false),
            retired: AtomicBool::new(false),
            successor: Mutex::new(None),
            hashes_asked_at_ms: Default::default(),
            hash_conflict: AtomicBool::new(false),
            bad_pieces: Arc::default(),
            created: std::time::Instant::now(),
            carried: Mutex::default(),
            relays_lost_at_ms: std::sync::atomic::AtomicU64::new(0),
            relay_epoch: tokio::sync::watch::Sender::new(0),
            variants: Mutex::default(),
        })
    }

    /// The fields of the variant with secondary key `key`, if learnt.
    pub fn variant(&self, key: &str) -> Option<VariantFields> {
        lock(&self.variants).get(key).cloned()
    }

    /// Keeps a variant's fields, up to
    /// [`crate::variants::VARIANTS_PER_OBJECT_MAX`] (beyond, they serve the
    /// request that asked and are asked again next time).
    pub fn remember_variant(&self, key: String, fields: VariantFields) {
        let mut variants = lock(&self.variants);
        if variants.len() < crate::variants::VARIANTS_PER_OBJECT_MAX {
            variants.insert(key, fields);
        }
    }

    /// The same entry, able to copy these pieces from an earlier version.
    pub fn carrying(self, carried: std::collections::HashMap<u32, shoal_store::PieceKey>) -> Self {
        *lock(&self.carried) = carried;
        self
    }

    /// Where piece `index` can be copied from, if an earlier version of
    /// the path holds it; forgotten once asked (copied, or gone).
    pub fn take_carried(&self, index: PieceIndex) -> Option<shoal_store::PieceKey> {
        let mut carried = lock(&self.carried);
        if carried.is_empty() {
            return None;
        }
        carried.remove(&index.0)
    }

    /// Whether piece `index` may be copied from an earlier version.
    pub fn is_carried(&self, index: PieceIndex) -> bool {
        let carried = lock(&self.carried);
        !carried.is_empty() && carried.contains_key(&index.0)
    }

    /// The same version with a new record (fresher): shares what was learnt.
    pub fn with_record(&self, record: ObjectRecord) -> Result<Self, String> {
        let mut entry = Self::new(
            self.path.clone(),
            self.uri_path.clone(),
            record,
            self.manifest.clone(),
        )?;
        if entry.layout == self.layout {
            entry.learnt_hashes = self.learnt_hashes.clone();
            entry.bad_pieces = self.bad_pieces.clone();
        }
        Ok(entry.carrying(lock(&self.carried).clone()))
    }

    /// Records hashes already known (pieces on disk, after a restart).
    pub fn learn_hash(&self, index: PieceIndex, hash: PieceHash) {
        let mut learnt = lock(&self.learnt_hashes);
        if let Some(slot) = learnt.hashes.get_mut(index.0 as usize) {
            if slot.is_none() {
                *slot = Some(hash);
                learnt.known += 1;
            }
        }
    }

    /// Turns bytes from the origin into a verified piece, or refuses them.
    pub fn accept_piece(
        &self,
        index: PieceIndex,
        data: Bytes,
    ) -> Result<VerifiedPiece, PieceRejected> {
        if let Some(manifest) = &self.manifest {
            return Ok(VerifiedPiece::verify(manifest, index, data)?);
        }
        let known = lock(&self.learnt_hashes)
            .hashes
            .get(index.0 as usize)
            .copied()
            .flatten();
        match known {
            Some(hash) => Ok(VerifiedPiece::verify_against(index, hash, data)?),
            None => {
                let piece = VerifiedPiece::ingest(&self.layout, index, data)?;
                self.learn_hash(index, piece.hash());
                Ok(piece)
            }
        }
    }

    /// The manifest built while ingesting, once every piece has been seen.
    pub fn built_manifest(&self) -> Option<Manifest> {
        if self.manifest.is_some() {
            return None;
        }
        let learnt = lock(&self.learnt_hashes);
        // Cheap test first: this runs after every fill run.
        if learnt.known != learnt.hashes.len() {
            return None;
        }
        let hashes: Option<Vec<PieceHash>> = learnt.hashes.iter().copied().collect();
        Manifest::new(
            self.layout.object_size(),
            self.layout.piece_size(),
            hashes?,
            Default::default(),
        )
        .ok()
    }

    /// True if the shield may be asked for hashes now (at most every
    /// `interval_ms`); records the time when it returns true.
    pub fn may_refresh_hashes(&self, interval_ms: u64) -> bool {
        let now = self.created.elapsed().as_millis() as u64 + 1;
        let last = self.hashes_asked_at_ms.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < interval_ms {
            return false;
        }
        self.hashes_asked_at_ms
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    /// The shield failed while serving this version: stop using and
    /// serving flash-crowd relays for it (a relay's wait could otherwise
    /// close a cycle through the fallback shields).
    pub fn lose_relays(&self) {
        let now = self.created.elapsed().as_millis() as u64 + 1;
        self.relays_lost_at_ms.store(now, Ordering::Relaxed);
        self.relay_epoch.send_modify(|epoch| *epoch += 1);
    }

    /// Whether relays were given up within the last `for_ms`.
    pub fn relays_off(&self, for_ms: u64) -> bool {
        let lost = self.relays_lost_at_ms.load(Ordering::Relaxed);
        let now = self.created.elapsed().as_millis() as u64 + 1;
        lost != 0 && now.saturating_sub(lost) < for_ms
    }

    /// Changes when relays are given up.
    pub fn relay_epoch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.relay_epoch.subscribe()
    }

    pub fn mark_hash_conflict(&self) {
        self.hash_conflict.store(true, Ordering::Relaxed);
    }

    pub fn has_hash_conflict(&self) -> bool {
        self.hash_conflict.load(Ordering::Relaxed)
    }

    /// Records that the origin's bytes for `index` failed the published
    /// manifest; true the first time for this version (so it is logged
    /// once, however many pieces turn out bad).
    pub fn mark_bad_piece(&self, index: PieceIndex) -> bool {
        let mut bad = lock(&self.bad_pieces);
        let first = bad.is_empty();
        bad.insert(index.0, std::time::Instant::now());
        first
    }

    /// The first of `pieces` whose origin bytes failed the manifest within
    /// the last `retry_after` (after that, one fetch may try again).
    pub fn known_bad_piece(
        &self,
        mut pieces: impl Iterator<Item = u32>,
        retry_after: std::time::Duration,
    ) -> Option<PieceIndex> {
        let bad = lock(&self.bad_pieces);
        if bad.is_empty() {
            return None;
        }
        pieces
            .find(|i| bad.get(i).is_some_and(|at| at.elapsed() < retry_after))
            .map(PieceIndex)
    }

    pub fn invalidate(&self) {
        self.invalidated.store(true, Ordering::Relaxed);
    }

    pub fn is_invalidated(&self) -> bool {
        self.invalidated.load(Ordering::Relaxed)
    }

    pub fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
    }

    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }

    pub fn set_successor(
        &self,
        entry: Arc<ObjectEntry>,
        same_pieces: std::collections::HashMap<u32, u32>,
    ) {
        *lock(&self.successor) = Some(Successor { entry, same_pieces });
    }

    /// The version that replaced this one, and the index there of a piece
    /// with the same hash as piece `index` here.
    pub fn through_successor(&self, index: PieceIndex) -> Option<(Arc<ObjectEntry>, PieceIndex)> {
        let successor = lock(&self.successor);
        let successor = successor.as_ref()?;
        let there = *successor.same_pieces.get(&index.0)?;
        Some((successor.entry.clone(), PieceIndex(there)))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl ObjectEntry {
    /// Whether a response's validators still name this version.
    pub fn matches_validators(&self, headers: &http::HeaderMap) -> bool {
        let header = |name| {
            headers
                .get(name)
                .and_then(|v: &http::HeaderValue| v.to_str().ok())
        };
        if let (Some(ours), Some(theirs)) = (&self.record.origin_etag, header(http::header::ETAG)) {
            return ours == theirs;
        }
        if let (Some(ours), Some(theirs)) = (
            &self.record.origin_last_modified,
            header(http::header::LAST_MODIFIED),
        ) {
            return ours == theirs;
        }
        true
    }
}

impl ObjectEntry {
    pub fn learnt_hash(&self, index: PieceIndex) -> Option<PieceHash> {
        lock(&self.learnt_hashes)
            .hashes
            .get(index.0 as usize)
            .copied()
            .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(etag: Option<&str>, last_modified: Option<&str>, strong: bool) -> ObjectRecord {
        ObjectRecord {
            format: RECORD_FORMAT,
            id: "ab".repeat(32),
            size: 1 << 20,
            piece_size_log2: 18,
            published: true,
            origin_etag: etag.map(str::to_string),
            origin_last_modified: last_modified.map(str::to_string),
            content_type: None,
            cache_control: None,
            fresh_until_unix_s: 0,
            manifest_etag: None,
            manifest_last_modified: None,
            manifest_validators_strong: false,
            origin_validators_strong: strong,
            headers: Vec::new(),
            validated_unix_s: 0,
            variant_key: None,
        }
    }

    #[test]
    fn the_served_etag_is_the_origins_only_when_strong() {
        let lm = Some("Tue, 01 Dec 2026 07:00:00 GMT");
        let id_tag = format!("\"{}\"", "ab".repeat(16));
        assert_eq!(served_etag(&record(Some("\"o1\""), lm, true)), "\"o1\"");
        // An mtime tag seen within its second may name two contents.
        assert_eq!(served_etag(&record(Some("\"o1\""), lm, false)), id_tag);
        assert_eq!(served_etag(&record(Some("W/\"o1\""), lm, true)), id_tag);
        // Without a modification time, the tag is content-based.
        assert_eq!(served_etag(&record(Some("\"o1\""), None, false)), "\"o1\"");
        assert_eq!(served_etag(&record(None, lm, true)), id_tag);
    }

    #[test]
    fn carried_pieces_are_handed_out_once_and_bad_pieces_expire() {
        let entry = ObjectEntry::new("/a".into(), "/a".into(), record(None, None, false), None)
            .unwrap()
            .carrying(
                [(
                    2,
                    shoal_store::PieceKey {
                        object: ObjectId([7; 32]),
                        index: PieceIndex(5),
                    },
                )]
                .into(),
            );
        assert!(entry.is_carried(PieceIndex(2)));
        assert_eq!(
            entry.take_carried(PieceIndex(2)).unwrap().index,
            PieceIndex(5)
        );
        assert!(entry.take_carried(PieceIndex(2)).is_none());
        assert!(entry.mark_bad_piece(PieceIndex(3)));
        assert!(
            !entry.mark_bad_piece(PieceIndex(1)),
            "logged once per version"
        );
        let long = std::time::Duration::from_secs(60);
        assert_eq!(entry.known_bad_piece(0..4, long), Some(PieceIndex(1)));
        assert_eq!(entry.known_bad_piece(4..9, long), None);
        assert_eq!(entry.known_bad_piece(0..4, std::time::Duration::ZERO), None);
        // A fresher record of the same version shares what was learnt.
        let fresher = entry.with_record(record(None, None, true)).unwrap();
        assert_eq!(fresher.known_bad_piece(3..4, long), Some(PieceIndex(3)));
    }
}
