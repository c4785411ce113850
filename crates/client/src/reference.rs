//! What pieces are checked against: the object's manifest, or — for an
//! object its publisher did not publish — the piece hashes the caches
//! learnt from the origin (`GET /_shoal/hashes/<path>`), the same hashes
//! the caches check each other's pieces against.
//!
//! With learnt hashes, a piece may arrive before its hash is known here:
//! the cache that sent it knew it (it verified the piece before serving),
//! so that cache is asked again, at most every [`REFRESH_EVERY_MS`], and
//! the piece waits at most [`HASH_WAIT_MS`] in memory. Two caches naming
//! different hashes for one piece end the download: the object changed or
//! someone lies, and nothing is written on a guess.

use shoal_core::{Manifest, ObjectId, PieceHash, PieceIndex, PieceLayout, PieceSize};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::watch;

/// Largest hash list accepted (2^20 pieces of 67 JSON bytes).
pub const HASHES_BYTES_MAX: usize = 80 << 20;
/// A piece waits at most this long for its hash.
pub const HASH_WAIT_MS: u64 = 10_000;
/// A source is asked for hashes at most this often.
pub const REFRESH_EVERY_MS: u64 = 200;

/// Why a piece was not accepted.
#[derive(Debug, PartialEq)]
pub enum Rejected {
    /// Its bytes do not match its hash.
    Mismatch,
    /// Its hash never became known.
    Unknown,
}

pub struct Reference {
    layout: PieceLayout,
    id: ObjectId,
    kind: Kind,
}

enum Kind {
    Manifest(Manifest),
    Learnt(Learnt),
}

struct Learnt {
    hashes: Mutex<Vec<Option<PieceHash>>>,
    changed: watch::Sender<u64>,
    conflict: Mutex<Option<String>>,
    refreshing: AtomicBool,
    last_refresh_ms: AtomicU64,
    started: std::time::Instant,
    client: reqwest::Client,
    uri_path: String,
}

pub use shoal_proto::HashList;

fn parse_hashes(list: &HashList, count: u32) -> Result<Vec<Option<PieceHash>>, String> {
    if list.hashes_hex.len() != count as usize {
        return Err(format!(
            "{} hashes for {count} pieces",
            list.hashes_hex.len()
        ));
    }
    list.hashes_hex
        .iter()
        .map(|hex| match hex.as_str() {
            "" => Ok(None),
            hex => PieceHash::from_hex(hex).map(Some).ok_or_else(|| {
                format!(
                    "`{}` is not a piece hash",
                    hex.chars().take(70).collect::<String>()
                )
            }),
        })
        .collect()
}

impl Reference {
    pub fn from_manifest(manifest: Manifest) -> Self {
        Self {
            layout: manifest.layout(),
            id: manifest.id(),
            kind: Kind::Manifest(manifest),
        }
    }

    /// From a manifest a cache built while ingesting an unpublished
    /// object: its hashes are the reference, `id` the caches' name for it.
    pub fn from_built_manifest(manifest: Manifest, id: ObjectId) -> Self {
        Self {
            layout: manifest.layout(),
            id,
            kind: Kind::Manifest(manifest),
        }
    }

    /// From a cache's hash list (`uri_path`: the object's path, with its
    /// signed URL's query if any, for asking again).
    pub fn from_hash_list(
        list: &HashList,
        client: reqwest::Client,
        uri_path: String,
    ) -> Result<Self, String> {
        let id = ObjectId::from_hex(&list.id).ok_or("bad object id")?;
        let piece_size = PieceSize::from_log2(list.piece_size_log2).map_err(|e| e.to_string())?;
        let layout = PieceLayout::new(list.size, piece_size).map_err(|e| e.to_string())?;
        let hashes = parse_hashes(list, layout.piece_count())?;
        Ok(Self {
            layout,
            id,
            kind: Kind::Learnt(Learnt {
                hashes: Mutex::new(hashes),
                changed: watch::channel(0).0,
                conflict: Mutex::new(None),
                refreshing: AtomicBool::new(false),
                last_refresh_ms: AtomicU64::new(0),
                started: std::time::Instant::now(),
                client,
                uri_path,
            }),
        })
    }

    pub fn layout(&self) -> PieceLayout {
        self.layout
    }

    pub fn piece_count(&self) -> u32 {
        self.layout.piece_count()
    }

    /// The manifest id, or the caches' id of an unpublished object.
    pub fn id(&self) -> ObjectId {
        self.id
    }

    /// The manifest, when the reference is one (not learnt hashes).
    pub fn manifest(&self) -> Option<&Manifest> {
        match &self.kind {
            Kind::Manifest(manifest) => Some(manifest),
            Kind::Learnt(_) => None,
        }
    }

    pub fn is_published(&self) -> bool {
        matches!(self.kind, Kind::Manifest(_))
    }

    /// Why the download must stop, if two caches disagreed on a hash.
    pub fn conflict(&self) -> Option<String> {
        match &self.kind {
            Kind::Manifest(_) => None,
            Kind::Learnt(learnt) => learnt
                .conflict
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }

    fn known(&self, piece: PieceIndex) -> Option<PieceHash> {
        match &self.kind {
            Kind::Manifest(manifest) => manifest.piece_hash(piece),
            Kind::Learnt(learnt) => learnt
                .hashes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(piece.0 as usize)
                .copied()
                .flatten(),
        }
    }

    /// Checks `data` against a hash known now (resume, read-back).
    pub fn verify_known(&self, piece: PieceIndex, data: &[u8]) -> bool {
        self.layout.piece_len(piece) == data.len() as u64
            && self.known(piece) == Some(PieceHash::of(data))
    }

    /// Checks `data`, asking `source_base` (the cache that sent it) for
    /// hashes while this piece's is unknown.
    pub async fn verify(
        &self,
        piece: PieceIndex,
        data: &[u8],
        source_base: &str,
    ) -> Result<(), Rejected> {
        if self.layout.piece_len(piece) != data.len() as u64 {
            return Err(Rejected::Mismatch);
        }
        let Kind::Learnt(learnt) = &self.kind else {
            return if self.verify_known(piece, data) {
                Ok(())
            } else {
                Err(Rejected::Mismatch)
            };
        };
        let deadline = tokio::time::Instant::now() + Duration::from_millis(HASH_WAIT_MS);
        let mut changes = learnt.changed.subscribe();
        loop {
            if let Some(hash) = self.known(piece) {
                return if hash == PieceHash::of(data) {
                    Ok(())
                } else {
                    Err(Rejected::Mismatch)
                };
            }
            self.refresh(learnt, source_base).await;
            if self.known(piece).is_some() {
                continue;
            }
            let wait = Duration::from_millis(REFRESH_EVERY_MS);
            if tokio::time::Instant::now() + wait > deadline {
                return Err(Rejected::Unknown);
            }
            let _ = tokio::time::timeout(wait, changes.changed()).await;
        }
    }

    /// Asks `source_base` for its hashes (one request at a time, at most
    /// every [`REFRESH_EVERY_MS`]) and merges them.
    async fn refresh(&self, learnt: &Learnt, source_base: &str) {
        let now = learnt.started.elapsed().as_millis() as u64;
        let last = learnt.last_refresh_ms.load(Ordering::Relaxed);
        if now < last + REFRESH_EVERY_MS || learnt.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        learnt.last_refresh_ms.store(now, Ordering::Relaxed);
        let url = format!("{source_base}/_shoal/hashes{}", learnt.uri_path);
        let answer =
            fetch_hash_list(&learnt.client, &url, Duration::from_millis(HASH_WAIT_MS)).await;
        if let Ok(list) = answer {
            self.merge(learnt, &list, source_base);
        }
        learnt.refreshing.store(false, Ordering::Release);
    }

    fn merge(&self, learnt: &Learnt, list: &HashList, from: &str) {
        let same_object = ObjectId::from_hex(&list.id) == Some(self.id)
            && list.size == self.layout.object_size()
            && list.piece_size_log2 == self.layout.piece_size().log2();
        let Ok(fresh) = parse_hashes(list, self.layout.piece_count()) else {
            return;
        };
        if !same_object {
            *learnt.conflict.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!(
                "{from} now has another version of this object (id {}…)",
                list.id.chars().take(16).collect::<String>()
            ));
            return;
        }
        let mut hashes = learnt.hashes.lock().unwrap_or_else(|e| e.into_inner());
        for (index, (mine, theirs)) in hashes.iter_mut().zip(fresh).enumerate() {
            match (*mine, theirs) {
                (Some(a), Some(b)) if a != b => {
                    *learnt.conflict.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!(
                        "{from} names another hash for piece {index} than an earlier cache did"
                    ));
                }
                (None, Some(b)) => *mine = Some(b),
                _ => {}
            }
        }
        drop(hashes);
        learnt.changed.send_modify(|n| *n += 1);
    }
}

/// GETs and parses a hash list.
pub async fn fetch_hash_list(
    client: &reqwest::Client,
    url: &str,
    timeout: Duration,
) -> Result<HashList, String> {
    let fetch = async {
        let mut response = client.get(url).send().await.map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("{}", response.status()));
        }
        let body = crate::discover::read_limited(&mut response, HASHES_BYTES_MAX).await?;
        serde_json::from_slice::<HashList>(&body).map_err(|e| format!("hash list: {e}"))
    };
    tokio::time::timeout(timeout, fetch)
        .await
        .map_err(|_| "no answer".to_string())?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(hashes: Vec<String>) -> HashList {
        HashList {
            id: "ab".repeat(32),
            size: 3 << 18,
            piece_size_log2: 18,
            hashes_hex: hashes,
            published: false,
            complete: false,
        }
    }

    #[test]
    fn hash_lists_are_checked_and_merged_and_conflicts_stop_the_download() {
        let data = vec![7u8; 1 << 18];
        let good = PieceHash::of(&data).to_hex();
        let reference = Reference::from_hash_list(
            &list(vec![good.clone(), String::new(), String::new()]),
            reqwest::Client::new(),
            "/x".into(),
        )
        .unwrap();
        assert!(reference.verify_known(PieceIndex(0), &data));
        assert!(!reference.verify_known(PieceIndex(1), &data), "unknown yet");
        let Kind::Learnt(learnt) = &reference.kind else {
            panic!("learnt")
        };
        reference.merge(
            learnt,
            &list(vec![good.clone(), good.clone(), String::new()]),
            "c2",
        );
        assert!(reference.verify_known(PieceIndex(1), &data));
        assert!(reference.conflict().is_none());
        let other = PieceHash::of(b"other").to_hex();
        reference.merge(
            learnt,
            &list(vec![other, String::new(), String::new()]),
            "c3",
        );
        assert!(reference.conflict().unwrap().contains("piece 0"));
        // Malformed lists are refused.
        for bad in [
            list(vec![good.clone()]),
            list(vec!["zz".into(), String::new(), String::new()]),
        ] {
            assert!(Reference::from_hash_list(&bad, reqwest::Client::new(), "/x".into()).is_err());
        }
    }
}
