//! One behaviour suite run over both media — the file medium (a real
//! directory, and a small tmpfs of its own for a full disk) and the memory
//! medium (with injected faults): round trips and reopening, verify-on-read,
//! the byte budget, removal, a full disk and failing writes. Each test is
//! written once against [`Bench`] and instantiated per medium at the end.

use bytes::Bytes;
use shoal_core::{Manifest, ObjectId, PieceIndex, PieceSize, Validators, VerifiedPiece};
use shoal_store::eviction::PolicyKind;
use shoal_store::{MemoryFaults, MemoryMedium, PieceKey, Store, StoreConfig};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The smallest piece size (256 KiB), used by every test object.
const PIECE: u64 = 1 << PieceSize::MIN_LOG2;

/// A medium to run the suite on, with its faults.
enum Bench {
    File {
        dir: tempfile::TempDir,
        /// Mounted for the fault tests (needs root, as `scripts/test` runs).
        small_disk: bool,
    },
    Memory(Arc<MemoryMedium>),
}

impl Bench {
    fn file() -> Self {
        Bench::File {
            dir: tempfile::tempdir().unwrap(),
            small_disk: false,
        }
    }

    /// A file medium on a tmpfs of `mib` MiB.
    fn file_on_small_disk(mib: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mounting a {mib} MiB tmpfs failed: the file medium's fault tests need root, as scripts/test runs"
        );
        Bench::File {
            dir,
            small_disk: true,
        }
    }

    fn memory() -> Self {
        Bench::Memory(MemoryMedium::new())
    }

    fn data_dir(&self) -> PathBuf {
        match self {
            Bench::File { dir, .. } => dir.path().join("data"),
            Bench::Memory(_) => PathBuf::from("/nonexistent/memory-medium"),
        }
    }

    fn open(&self, capacity_bytes: u64) -> Arc<Store> {
        let config = StoreConfig {
            data_dir: self.data_dir(),
            capacity_bytes,
            memory_capacity_bytes: 2 * PIECE,
            policy: PolicyKind::S3Fifo,
        };
        match self {
            Bench::File { .. } => Store::open(config).unwrap(),
            Bench::Memory(medium) => Store::open_on(config, medium.clone()).unwrap(),
        }
    }

    fn data_file(&self, object: &ObjectId) -> PathBuf {
        let hex = object.to_hex();
        self.data_dir()
            .join("objects")
            .join(&hex[..2])
            .join(format!("{hex}.data"))
    }

    /// Bytes of piece data the medium really holds (allocated, for files).
    fn data_bytes(&self, object: &ObjectId) -> u64 {
        use std::os::unix::fs::MetadataExt;
        match self {
            Bench::File { .. } => std::fs::metadata(self.data_file(object))
                .map(|m| m.blocks() * 512)
                .unwrap_or(0),
            Bench::Memory(medium) => medium.data_bytes(),
        }
    }

    /// Flips one bit of the stored bytes at `offset` of the object's data.
    fn flip_bit(&self, object: &ObjectId, offset: u64) {
        match self {
            Bench::File { .. } => {
                use std::os::unix::fs::FileExt;
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(self.data_file(object))
                    .unwrap();
                let mut byte = [0u8];
                file.read_exact_at(&mut byte, offset).unwrap();
                byte[0] ^= 1;
                file.write_all_at(&byte, offset).unwrap();
            }
            Bench::Memory(medium) => assert!(medium.flip_bit(object, offset)),
        }
    }

    /// No space is left: piece writes fail with ENOSPC, and so do index
    /// commits that need to grow the index.
    fn fill_up(&self) {
        match self {
            Bench::File { dir, small_disk } => {
                assert!(small_disk, "fill_up needs file_on_small_disk");
                use std::io::Write;
                let mut file = std::fs::File::create(dir.path().join("filler")).unwrap();
                let block = vec![0u8; 64 * 1024];
                while file.write_all(&block).is_ok() {}
                let _ = file.sync_all();
            }
            Bench::Memory(medium) => medium.set_faults(MemoryFaults {
                data_space_bytes: Some(medium.data_bytes()),
                fail_commits: true,
                ..MemoryFaults::default()
            }),
        }
    }

    fn free_up(&self) {
        match self {
            Bench::File { dir, .. } => std::fs::remove_file(dir.path().join("filler")).unwrap(),
            Bench::Memory(medium) => medium.set_faults(MemoryFaults::default()),
        }
    }

    /// Every write of `object`'s data fails (file: its shard directory is
    /// replaced by a plain file, so opening the data file fails; memory:
    /// EIO on every write). Undone by `heal`.
    fn fail_writes(&self, object: &ObjectId) {
        match self {
            Bench::File { .. } => {
                let shard = self.data_file(object).parent().unwrap().to_path_buf();
                assert!(!shard.exists(), "the shard must not exist yet");
                std::fs::write(&shard, b"not a directory").unwrap();
            }
            Bench::Memory(medium) => medium.set_faults(MemoryFaults {
                fail_writes: true,
                ..MemoryFaults::default()
            }),
        }
    }

    fn heal(&self, object: &ObjectId) {
        match self {
            Bench::File { .. } => {
                std::fs::remove_file(self.data_file(object).parent().unwrap()).unwrap()
            }
            Bench::Memory(medium) => medium.set_faults(MemoryFaults::default()),
        }
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        if let Bench::File {
            dir,
            small_disk: true,
        } = self
        {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(dir.path())
                .status();
        }
    }
}

fn object(pieces: usize, seed: u8) -> (Manifest, Vec<Bytes>) {
    let data: Vec<u8> = (0..pieces * PIECE as usize)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 12) as u8)
        .collect();
    let manifest = Manifest::from_data(&data, PieceSize::MIN, Validators::default()).unwrap();
    let chunks = data
        .chunks(PIECE as usize)
        .map(Bytes::copy_from_slice)
        .collect();
    (manifest, chunks)
}

fn key(object: ObjectId, index: u32) -> PieceKey {
    PieceKey {
        object,
        index: PieceIndex(index),
    }
}

async fn put(
    store: &Arc<Store>,
    manifest: &Manifest,
    chunks: &[Bytes],
    index: u32,
) -> Result<(), shoal_store::StoreError> {
    let piece =
        VerifiedPiece::verify(manifest, PieceIndex(index), chunks[index as usize].clone()).unwrap();
    store.put(manifest.id(), PieceSize::MIN, piece).await
}

/// Reads a piece, and checks it came from the medium (the memory tier
/// holds two pieces; the tests read pieces it has evicted).
async fn read_from_medium(store: &Arc<Store>, at: PieceKey) -> Option<Bytes> {
    let before = store.stats().disk_hits.load(Ordering::Relaxed);
    let got = store.get(at).await.unwrap()?;
    assert_eq!(
        store.stats().disk_hits.load(Ordering::Relaxed),
        before + 1,
        "read from the medium"
    );
    Some(got.data().clone())
}

async fn round_trip_and_reopen_is_warm(bench: Bench) {
    let (manifest, chunks) = object(4, 1);
    let id = manifest.id();
    {
        let store = bench.open(1 << 30);
        for index in 0..4 {
            put(&store, &manifest, &chunks, index).await.unwrap();
        }
        store.put_record("/a.bin", b"record".to_vec()).unwrap();
        store.put_manifest(id, b"manifest".to_vec()).unwrap();
        store.flush().await.unwrap();
        assert_eq!(store.piece_count(), 4);
        assert_eq!(store.write_failure(), None);
    }
    let store = bench.open(1 << 30);
    assert_eq!(store.pieces_of(&id).len(), 4);
    for (index, chunk) in chunks.iter().enumerate() {
        let got = store.get(key(id, index as u32)).await.unwrap().unwrap();
        assert_eq!(got.data(), chunk);
    }
    assert_eq!(store.stats().disk_hits.load(Ordering::Relaxed), 4);
    assert_eq!(
        store.get_record("/a.bin").unwrap(),
        Some(b"record".to_vec())
    );
    assert_eq!(store.get_manifest(&id).unwrap(), Some(b"manifest".to_vec()));
    store.remove_record("/a.bin").unwrap();
    store.flush().await.unwrap();
    assert_eq!(store.all_records().unwrap(), vec![]);
}

async fn damaged_bytes_are_dropped_not_served(bench: Bench) {
    let (manifest, chunks) = object(2, 2);
    let id = manifest.id();
    {
        let store = bench.open(1 << 30);
        put(&store, &manifest, &chunks, 1).await.unwrap();
        store.flush().await.unwrap();
    }
    // Same length, one bit flipped: only the hash can tell.
    bench.flip_bit(&id, PIECE + 1000);
    let store = bench.open(1 << 30);
    assert!(store.contains(&key(id, 1)));
    assert!(store.get(key(id, 1)).await.unwrap().is_none());
    assert_eq!(store.stats().corrupt_pieces.load(Ordering::Relaxed), 1);
    assert!(!store.contains(&key(id, 1)));
    store.flush().await.unwrap();
    drop(store);
    assert_eq!(bench.open(1 << 30).piece_count(), 0, "the row is gone too");
}

async fn budget_is_enforced_at_piece_granularity(bench: Bench) {
    let store = bench.open(5 * PIECE);
    let (manifest, chunks) = object(12, 4);
    let id = manifest.id();
    for index in 0..12 {
        put(&store, &manifest, &chunks, index).await.unwrap();
        assert!(store.resident_bytes() <= 5 * PIECE);
    }
    store.flush().await.unwrap();
    assert!(store.piece_count() <= 5);
    // Evicted pieces' bytes are really freed.
    let held = bench.data_bytes(&id);
    assert!(held <= 6 * PIECE, "{held} bytes held for a 5-piece budget");
    // Whatever is indexed still reads back whole.
    drop(store);
    let store = bench.open(5 * PIECE);
    for index in store.pieces_of(&id) {
        let got = read_from_medium(&store, key(id, index.0)).await.unwrap();
        assert_eq!(got, chunks[index.0 as usize]);
    }
}

async fn removing_an_object_frees_its_rows_and_bytes(bench: Bench) {
    let (manifest, chunks) = object(3, 5);
    let (other, other_chunks) = object(1, 6);
    let id = manifest.id();
    {
        let store = bench.open(1 << 30);
        for index in 0..3 {
            put(&store, &manifest, &chunks, index).await.unwrap();
        }
        put(&store, &other, &other_chunks, 0).await.unwrap();
        store.put_manifest(id, b"m".to_vec()).unwrap();
        store.flush().await.unwrap();
        store.remove_object(&id).unwrap();
        assert!(!store.contains(&key(id, 0)), "gone from memory too");
        store.flush().await.unwrap();
    }
    let store = bench.open(1 << 30);
    assert_eq!(store.pieces_of(&id), vec![]);
    assert_eq!(store.get_manifest(&id).unwrap(), None);
    assert_eq!(store.pieces_of(&other.id()), vec![PieceIndex(0)]);
    if let Bench::File { .. } = bench {
        assert!(!bench.data_file(&id).exists(), "the data file is deleted");
    }
}

/// A full disk: every write fails cleanly and the store says why; what
/// was stored before still reads; nothing half-written is ever indexed;
/// when space returns the store writes again (index included) and says so.
async fn a_full_disk_fails_cleanly_and_recovers(bench: Bench) {
    let (manifest, chunks) = object(24, 7);
    let id = manifest.id();
    let store = bench.open(1 << 30);
    put(&store, &manifest, &chunks, 0).await.unwrap();
    store.flush().await.unwrap();
    bench.fill_up();

    let mut failed = Vec::new();
    for index in 1..12 {
        if put(&store, &manifest, &chunks, index).await.is_err() {
            failed.push(index);
        }
    }
    store.put_record("/while-full", vec![7; 64 * 1024]).unwrap();
    let flushed = store.flush().await;
    if let Bench::Memory(_) = bench {
        // (A full tmpfs may still fit a commit in space redb holds.)
        assert!(
            matches!(flushed, Err(shoal_store::StoreError::Unsaved(_))),
            "a failed commit is reported: {flushed:?}"
        );
    }
    assert!(
        failed.len() >= 10,
        "writes on a full disk fail (failed: {failed:?})"
    );
    let why = store
        .write_failure()
        .expect("the store says it cannot write");
    assert!(
        why.contains("space") || why.contains("ENOSPC") || why.contains("No space"),
        "the reason names the full disk: {why}"
    );
    for index in &failed {
        assert!(
            !store.pieces_of(&id).contains(&PieceIndex(*index)),
            "a piece that failed to write is not indexed"
        );
    }
    // What was stored before is still served.
    assert_eq!(
        read_from_medium(&store, key(id, 0)).await.unwrap(),
        chunks[0]
    );

    bench.free_up();
    for index in 12..24 {
        put(&store, &manifest, &chunks, index).await.unwrap();
    }
    store.put_record("/after", b"ok".to_vec()).unwrap();
    store.flush().await.unwrap();
    assert_eq!(store.write_failure(), None, "healthy once writes succeed");
    drop(store);

    // Reopened: everything written after recovery is there and verifies,
    // and no row names bytes that were never written.
    let store = bench.open(1 << 30);
    let held = store.pieces_of(&id);
    for index in 12..24 {
        assert!(held.contains(&PieceIndex(index)), "piece {index} kept");
    }
    for index in held {
        let got = store.get(key(id, index.0)).await.unwrap();
        assert_eq!(
            got.map(|p| p.data().clone()),
            Some(chunks[index.0 as usize].clone()),
            "piece {index} reads back whole"
        );
    }
    assert_eq!(store.stats().corrupt_pieces.load(Ordering::Relaxed), 0);
    assert_eq!(store.get_record("/after").unwrap(), Some(b"ok".to_vec()));
    assert_eq!(
        store.get_record("/while-full").unwrap(),
        Some(vec![7; 64 * 1024]),
        "a record whose commit failed is committed once space returns"
    );
}

/// A device that fails writes: the piece is not indexed, the store says
/// so, reads of other pieces go on, and it recovers after good writes.
async fn failing_writes_lose_nothing_stored(bench: Bench) {
    let (kept, kept_chunks) = object(1, 8);
    let (manifest, chunks) = object(12, 9);
    let id = manifest.id();
    let store = bench.open(1 << 30);
    put(&store, &kept, &kept_chunks, 0).await.unwrap();
    store.flush().await.unwrap();
    bench.fail_writes(&id);
    let error = put(&store, &manifest, &chunks, 0).await.unwrap_err();
    assert!(
        matches!(error, shoal_store::StoreError::Io { .. }),
        "an I/O error, naming where: {error}"
    );
    assert!(store.write_failure().is_some());
    assert!(!store.pieces_of(&id).contains(&PieceIndex(0)));
    let got = store.get(key(kept.id(), 0)).await.unwrap().unwrap();
    assert_eq!(got.data(), &kept_chunks[0]);
    bench.heal(&id);
    for index in 0..12 {
        put(&store, &manifest, &chunks, index).await.unwrap();
    }
    store.flush().await.unwrap();
    assert_eq!(store.write_failure(), None);
    drop(store);
    let store = bench.open(1 << 30);
    assert_eq!(store.pieces_of(&id).len(), 12);
}

macro_rules! over_both_media {
    ($($test:ident => $file:expr;)*) => {
        mod file {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test($file).await
                }
            )*
        }
        mod memory {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(super::Bench::memory()).await
                }
            )*
        }
    };
}

over_both_media! {
    round_trip_and_reopen_is_warm => super::Bench::file();
    damaged_bytes_are_dropped_not_served => super::Bench::file();
    budget_is_enforced_at_piece_granularity => super::Bench::file();
    removing_an_object_frees_its_rows_and_bytes => super::Bench::file();
    a_full_disk_fails_cleanly_and_recovers => super::Bench::file_on_small_disk(16);
    failing_writes_lose_nothing_stored => super::Bench::file();
}
