//! `publish` on real directories: manifests verify every piece, are served
//! by the origin, are skipped when up to date, and odd entries are skipped.

mod common;

use common::{get, pattern, RunningOrigin, PIECE};
use http::StatusCode;
use shoal_core::{Manifest, PieceIndex, PieceSize};
use shoal_http::RequestPath;
use shoal_origin::{
    manifest_file_for, manifest_path_for, publish, PublishError, PublishOptions, SkipReason,
};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::UNIX_EPOCH;

const SIZES: [usize; 6] = [0, 1, PIECE - 1, PIECE, PIECE + 1, 3 * PIECE + 1_000];

/// Writes files of every edge size, some in nested directories; returns
/// their request paths and contents.
fn populate(root: &Path) -> Vec<(String, Vec<u8>)> {
    SIZES
        .iter()
        .enumerate()
        .map(|(i, &size)| {
            let relative = if i % 2 == 0 {
                format!("flat-{size}.bin")
            } else {
                format!("deep/er/dir {i}/f-{size}.mp4")
            };
            let path = root.join(&relative);
            fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            let data = pattern(size, 100 + i as u64);
            fs::write(&path, &data).expect("write");
            (format!("/{relative}"), data)
        })
        .collect()
}

fn object_path(request_path: &str) -> RequestPath {
    let encoded: String = request_path.replace(' ', "%20");
    RequestPath::parse(&encoded).expect("request path")
}

/// Decodes the manifest of `request_path` and checks every piece of `data`.
fn check_manifest(root: &Path, request_path: &str, data: &[u8]) -> Manifest {
    let file = manifest_file_for(root, &object_path(request_path));
    let bytes = fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let manifest = Manifest::decode(&bytes).expect("decodes");
    assert_eq!(manifest.object_size(), data.len() as u64, "{request_path}");
    let piece = manifest.piece_size().bytes() as usize;
    assert_eq!(
        manifest.piece_count() as usize,
        data.len().div_ceil(piece),
        "{request_path}"
    );
    for (i, chunk) in data.chunks(piece).enumerate() {
        manifest
            .verify_piece(PieceIndex(i as u32), chunk)
            .unwrap_or_else(|e| panic!("{request_path}: {e}"));
    }
    let mtime_s = fs::metadata(root.join(&request_path[1..]))
        .expect("stat")
        .modified()
        .expect("mtime")
        .duration_since(UNIX_EPOCH)
        .expect("after epoch")
        .as_secs();
    assert_eq!(manifest.validators().last_modified_unix_s, Some(mtime_s));
    assert_eq!(manifest.validators().etag, None);
    assert_eq!(
        fs::metadata(&file).expect("stat").permissions().mode() & 0o777,
        0o644
    );
    manifest
}

#[tokio::test]
async fn publish_round_trip_and_served_manifests() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = populate(dir.path());
    let report = publish(dir.path(), &PublishOptions::default()).expect("publish");
    assert_eq!(report.files_published, files.len() as u64, "{report}");
    assert_eq!(report.files_unchanged, 0);
    assert!(report.failed.is_empty(), "{report}");
    assert!(report.skipped.is_empty(), "{report}");
    assert_eq!(report.bytes_hashed, SIZES.iter().sum::<usize>() as u64);

    for (request_path, data) in &files {
        let manifest = check_manifest(dir.path(), request_path, data);
        assert_eq!(
            manifest.piece_size(),
            PieceSize::for_object_size(data.len() as u64)
        );
    }

    // The origin serves the manifests as plain files.
    let origin = RunningOrigin::start(dir.path()).await;
    for (request_path, _) in &files {
        let url = manifest_path_for(&object_path(request_path));
        let response = get(origin.addr, &url, &[]).await;
        assert_eq!(response.status, StatusCode::OK, "{url}");
        assert_eq!(
            response.header("content-type"),
            Some("application/vnd.shoal.manifest")
        );
        let on_disk =
            fs::read(manifest_file_for(dir.path(), &object_path(request_path))).expect("read");
        assert_eq!(&response.body[..], &on_disk[..]);
    }
    // Temporary files and other hidden names in the manifest tree are not.
    fs::write(
        dir.path().join(".shoal/manifests/.tmp-x.shoalmf"),
        b"partial",
    )
    .expect("write");
    assert_eq!(
        get(origin.addr, "/.shoal/manifests/.tmp-x.shoalmf", &[])
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(origin.addr, "/.shoal/other", &[]).await.status,
        StatusCode::NOT_FOUND
    );
    origin.stop().await;
}

#[test]
fn republish_skips_unchanged_and_redoes_changed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = populate(dir.path());
    let first = publish(dir.path(), &PublishOptions::default()).expect("publish");
    assert_eq!(first.files_published, files.len() as u64);

    let second = publish(dir.path(), &PublishOptions::default()).expect("publish");
    assert_eq!(second.files_published, 0, "{second}");
    assert_eq!(second.files_unchanged, files.len() as u64);
    assert_eq!(second.bytes_hashed, 0);

    // Change one file (size too), and corrupt another's manifest.
    let (changed_path, _) = &files[4];
    let new_data = pattern(PIECE + 77, 999);
    fs::write(dir.path().join(&changed_path[1..]), &new_data).expect("rewrite");
    let (corrupt_path, corrupt_data) = &files[2];
    fs::write(
        manifest_file_for(dir.path(), &object_path(corrupt_path)),
        b"garbage",
    )
    .expect("corrupt");
    let third = publish(dir.path(), &PublishOptions::default()).expect("publish");
    assert_eq!(third.files_published, 2, "{third}");
    assert_eq!(third.files_unchanged, files.len() as u64 - 2);
    check_manifest(dir.path(), changed_path, &new_data);
    check_manifest(dir.path(), corrupt_path, corrupt_data);

    let forced = publish(
        dir.path(),
        &PublishOptions {
            force: true,
            ..PublishOptions::default()
        },
    )
    .expect("publish");
    assert_eq!(forced.files_published, files.len() as u64);

    // A different piece size makes every manifest stale.
    let piece_size = PieceSize::from_log2(20).expect("1 MiB");
    let resized = publish(
        dir.path(),
        &PublishOptions {
            piece_size: Some(piece_size),
            ..PublishOptions::default()
        },
    )
    .expect("publish");
    assert_eq!(resized.files_published, files.len() as u64);
    for (request_path, data) in files.iter().filter(|(p, _)| p != changed_path) {
        assert_eq!(
            check_manifest(dir.path(), request_path, data).piece_size(),
            piece_size
        );
    }
}

#[test]
fn odd_entries_are_skipped_and_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    fs::write(root.join("real.bin"), b"real").expect("write");
    std::os::unix::fs::symlink(root.join("real.bin"), root.join("link.bin")).expect("symlink");
    std::os::unix::fs::symlink("/", root.join("link-dir")).expect("symlink");
    let _socket = std::os::unix::net::UnixListener::bind(root.join("socket")).expect("unix socket");
    fs::write(root.join(".env"), b"SECRET=1").expect("write");
    fs::create_dir_all(root.join(".shoal/cache")).expect("mkdir");
    fs::write(root.join(".shoal/cache/blob"), b"not an object").expect("write");
    let bad_name = std::ffi::OsStr::from_bytes(b"bad-\xff.bin");
    fs::write(root.join(bad_name), b"x").expect("write");
    fs::write(root.join("back\\slash.bin"), b"x").expect("write");

    let report = publish(root, &PublishOptions::default()).expect("publish");
    assert_eq!(report.files_published, 1, "{report}");
    assert!(report.failed.is_empty(), "{report}");
    let reason_of = |name: &[u8]| {
        report
            .skipped
            .iter()
            .find(|s| s.path.as_os_str().as_bytes() == name)
            .map(|s| s.reason.clone())
            .unwrap_or_else(|| panic!("{} not reported", String::from_utf8_lossy(name)))
    };
    assert_eq!(reason_of(b"link.bin"), SkipReason::Symlink);
    assert_eq!(reason_of(b"link-dir"), SkipReason::Symlink);
    assert_eq!(reason_of(b"socket"), SkipReason::NotRegular);
    assert_eq!(reason_of(b".env"), SkipReason::Hidden);
    assert!(matches!(
        reason_of(b"bad-\xff.bin"),
        SkipReason::UnservableName(_)
    ));
    assert!(matches!(
        reason_of(b"back\\slash.bin"),
        SkipReason::UnservableName(_)
    ));
    assert_eq!(report.skipped_non_regular(), 3);
    assert!(
        !report.skipped.iter().any(|s| s.path.starts_with(".shoal")),
        "the .shoal tree is not walked"
    );
    assert_eq!(report.skipped.len(), 6);
    let summary = report.to_string();
    assert!(
        summary.contains("skipped link.bin: symbolic link"),
        "{summary}"
    );

    let with_hidden = publish(
        root,
        &PublishOptions {
            include_hidden: true,
            ..PublishOptions::default()
        },
    )
    .expect("publish");
    assert_eq!(
        with_hidden.files_published, 1,
        "only .env is new: {with_hidden}"
    );
    assert_eq!(with_hidden.files_unchanged, 1);
}

#[test]
fn many_small_files_in_parallel() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files: Vec<(String, Vec<u8>)> = (0..64)
        .map(|i| {
            let relative = format!("d{}/small-{i}.ts", i % 4);
            let data = pattern(i * 1_000 + 1, i as u64);
            let path = dir.path().join(&relative);
            fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            fs::write(path, &data).expect("write");
            (format!("/{relative}"), data)
        })
        .collect();
    let report = publish(dir.path(), &PublishOptions::default()).expect("publish");
    assert_eq!(report.files_published, 64, "{report}");
    for (request_path, data) in &files {
        check_manifest(dir.path(), request_path, data);
    }
}

#[test]
fn unusable_roots_are_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing");
    assert!(matches!(
        publish(&missing, &PublishOptions::default()),
        Err(PublishError::Root { .. })
    ));
    let file = dir.path().join("file");
    fs::write(&file, b"x").expect("write");
    assert!(matches!(
        publish(&file, &PublishOptions::default()),
        Err(PublishError::RootNotDirectory(_))
    ));
}
