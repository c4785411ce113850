//! What only the file medium has: crash leftovers in its directory. The
//! behaviours every medium shares are in `suite.rs`.

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
