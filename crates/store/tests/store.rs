//! The piece store against a real directory: round trips, restart warmth,
//! crash leftovers, damaged files and the byte budget.

use bytes::Bytes;
use shoal_core::{Manifest, PieceIndex, PieceSize, Validators, VerifiedPiece};
use shoal_store::eviction::PolicyKind;
use shoal_store::{PieceKey, Store, StoreConfig};
use std::path::Path;

fn config(dir: &Path, capacity_bytes: u64) -> StoreConfig {
    StoreConfig {
        data_dir: dir.to_path_buf(),
        capacity_bytes,
        memory_capacity_bytes: 1 << 20,
        policy: PolicyKind::S3Fifo,
    }
}

fn object(pieces: usize, seed: u8) -> (Manifest, Vec<Bytes>) {
    let piece = PieceSize::MIN.bytes() as usize;
    let data: Vec<u8> = (0..pieces * piece)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    let manifest = Manifest::from_data(&data, PieceSize::MIN, Validators::default()).unwrap();
    let chunks = data.chunks(piece).map(Bytes::copy_from_slice).collect();
    (manifest, chunks)
}

fn data_file(dir: &Path, object: &shoal_core::ObjectId) -> std::path::PathBuf {
    let hex = object.to_hex();
    dir.join("objects")
        .join(&hex[..2])
        .join(format!("{hex}.data"))
}

#[tokio::test]
async fn round_trip_and_restart_is_warm() {
    let dir = tempfile::tempdir().unwrap();
    let (manifest, chunks) = object(4, 1);
    let id = manifest.id();
    {
        let store = Store::open(config(dir.path(), 1 << 30)).unwrap();
        for (i, chunk) in chunks.iter().enumerate() {
            let piece =
                VerifiedPiece::verify(&manifest, PieceIndex(i as u32), chunk.clone()).unwrap();
            store.put(id, PieceSize::MIN, piece).await.unwrap();
        }
        store.flush().await.unwrap();
        assert_eq!(store.piece_count(), 4);
    }
    let store = Store::open(config(dir.path(), 1 << 30)).unwrap();
    assert_eq!(store.pieces_of(&id).len(), 4);
    for (i, chunk) in chunks.iter().enumerate() {
        let got = store
            .get(PieceKey {
                object: id,
                index: PieceIndex(i as u32),
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.data(), chunk);
    }
    assert_eq!(
        store
            .stats()
            .disk_hits
            .load(std::sync::atomic::Ordering::Relaxed),
        4
    );
}

#[tokio::test]
async fn damaged_file_is_dropped_not_served() {
    let dir = tempfile::tempdir().unwrap();
    let (manifest, chunks) = object(2, 2);
    let id = manifest.id();
    let key = PieceKey {
        object: id,
        index: PieceIndex(1),
    };
    {
        let store = Store::open(config(dir.path(), 1 << 30)).unwrap();
        let piece = VerifiedPiece::verify(&manifest, PieceIndex(1), chunks[1].clone()).unwrap();
        store.put(id, PieceSize::MIN, piece).await.unwrap();
        store.flush().await.unwrap();
    }
    // Same length, one bit flipped: only the hash can tell.
    let path = data_file(dir.path(), &id);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[PieceSize::MIN.bytes() as usize + 1000] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let store = Store::open(config(dir.path(), 1 << 30)).unwrap();
    assert!(store.get(key).await.unwrap().is_none());
    assert_eq!(
        store
            .stats()
            .corrupt_pieces
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert!(!store.contains(&key));
}

#[tokio::test]
async fn crash_leftovers_are_cleaned_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let (manifest, chunks) = object(3, 3);
    let id = manifest.id();
    let (other, _) = object(1, 9);
    {
        let store = Store::open(config(dir.path(), 1 << 30)).unwrap();
        for index in [0, 1] {
            let piece =
                VerifiedPiece::verify(&manifest, PieceIndex(index), chunks[index as usize].clone())
                    .unwrap();
            store.put(id, PieceSize::MIN, piece).await.unwrap();
        }
        store.flush().await.unwrap();
    }
    let piece = PieceSize::MIN.bytes();
    // Piece 2 written but its row never committed (a crash in between); an
    // object file no row names; and piece 1 cut short (torn).
    let path = data_file(dir.path(), &id);
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &chunks[2], 2 * piece).unwrap();
    file.set_len(piece + 100).unwrap();
    drop(file);
    let orphan = data_file(dir.path(), &other.id());
    std::fs::create_dir_all(orphan.parent().unwrap()).unwrap();
    std::fs::write(&orphan, b"orphan").unwrap();

    let store = Store::open(config(dir.path(), 1 << 30)).unwrap();
    assert_eq!(
        store.pieces_of(&id),
        vec![PieceIndex(0)],
        "the torn piece's row is dropped"
    );
    assert!(!orphan.exists(), "the orphan file is removed");
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        piece,
        "space past the last indexed piece is freed"
    );
    let got = store
        .get(PieceKey {
            object: id,
            index: PieceIndex(0),
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.data(), &chunks[0]);
}

#[tokio::test]
async fn budget_is_enforced_at_piece_granularity() {
    let dir = tempfile::tempdir().unwrap();
    let piece = PieceSize::MIN.bytes();
    let store = Store::open(config(dir.path(), 5 * piece)).unwrap();
    let (manifest, chunks) = object(12, 4);
    let id = manifest.id();
    for (i, chunk) in chunks.iter().enumerate() {
        let piece = VerifiedPiece::verify(&manifest, PieceIndex(i as u32), chunk.clone()).unwrap();
        store.put(id, PieceSize::MIN, piece).await.unwrap();
        assert!(store.resident_bytes() <= 5 * PieceSize::MIN.bytes());
    }
    store.flush().await.unwrap();
    assert!(store.piece_count() <= 5);
    // Evicted pieces' space is really freed (holes punched).
    use std::os::unix::fs::MetadataExt;
    let allocated = std::fs::metadata(data_file(dir.path(), &id))
        .unwrap()
        .blocks()
        * 512;
    assert!(
        allocated <= 6 * PieceSize::MIN.bytes(),
        "{allocated} bytes allocated for a 5-piece budget"
    );
}
