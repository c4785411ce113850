//! The origin over real sockets: byte-exact bodies for every kind of
//! range, conditional requests, HEAD, methods, and path tricks.

mod common;

use bytes::Bytes;
use common::{fetch, get, parse_multipart, pattern, raw_get, RunningOrigin, PIECE, TIMEOUT};
use http::StatusCode;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::fs;
use std::path::Path;
use tokio::net::TcpStream;

const SIZES: [usize; 6] = [0, 1, PIECE - 1, PIECE, PIECE + 1, 3 * PIECE + 12_345];

fn write_sizes(root: &Path) -> Vec<(String, Vec<u8>)> {
    SIZES
        .iter()
        .enumerate()
        .map(|(i, &size)| {
            let name = format!("file-{size}.bin");
            let data = pattern(size, i as u64 + 1);
            fs::write(root.join(&name), &data).expect("write");
            (name, data)
        })
        .collect()
}

#[tokio::test]
async fn full_responses_are_byte_exact_for_edge_sizes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = write_sizes(dir.path());
    let origin = RunningOrigin::start(dir.path()).await;
    for (name, data) in &files {
        let response = get(origin.addr, &format!("/{name}"), &[]).await;
        assert_eq!(response.status, StatusCode::OK, "{name}");
        assert_eq!(response.body.len(), data.len(), "{name}");
        assert!(response.body[..] == data[..], "{name}: body differs");
        assert_eq!(
            response.header("content-length"),
            Some(data.len().to_string().as_str())
        );
        assert_eq!(response.header("accept-ranges"), Some("bytes"));
        assert_eq!(
            response.header("content-type"),
            Some("application/octet-stream")
        );
        assert!(response.header("last-modified").is_some());
        assert!(response.header("date").is_some());
        let etag = response.header("etag").expect("etag");
        assert!(
            etag.starts_with('"') && etag.ends_with(&format!("-{:x}\"", data.len())),
            "{etag}"
        );
    }
    origin.stop().await;
}

#[tokio::test]
async fn content_type_from_extension() {
    let dir = tempfile::tempdir().expect("tempdir");
    for name in ["a.mp4", "b.m3u8", "c.json", "d"] {
        fs::write(dir.path().join(name), b"x").expect("write");
    }
    let origin = RunningOrigin::start(dir.path()).await;
    for (name, expected) in [
        ("a.mp4", "video/mp4"),
        ("b.m3u8", "application/vnd.apple.mpegurl"),
        ("c.json", "application/json"),
        ("d", "application/octet-stream"),
    ] {
        let response = get(origin.addr, &format!("/{name}"), &[]).await;
        assert_eq!(response.header("content-type"), Some(expected), "{name}");
    }
    origin.stop().await;
}

#[tokio::test]
async fn single_ranges_are_byte_exact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = write_sizes(dir.path());
    let origin = RunningOrigin::start(dir.path()).await;
    for (name, data) in files.iter().filter(|(_, d)| !d.is_empty()) {
        let size = data.len() as u64;
        let path = format!("/{name}");
        // (Range value, expected first byte, expected last byte inclusive)
        let mut cases = vec![
            ("bytes=0-0".to_string(), 0, 0),
            ("bytes=0-".to_string(), 0, size - 1),
            (format!("bytes={}-", size - 1), size - 1, size - 1),
            ("bytes=-1".to_string(), size - 1, size - 1),
            ("bytes=-99999999999".to_string(), 0, size - 1),
            (format!("bytes=0-{}", size + 1000), 0, size - 1),
        ];
        if size > 300 {
            cases.push(("bytes=100-299".to_string(), 100, 299));
            cases.push(("bytes=-200".to_string(), size - 200, size - 1));
            cases.push((format!("bytes={}-", size - 250), size - 250, size - 1));
        }
        if size > PIECE as u64 {
            let p = PIECE as u64;
            cases.push((format!("bytes={}-{p}", p - 10), p - 10, p));
        }
        for (range, first, last) in cases {
            let response = get(origin.addr, &path, &[("range", &range)]).await;
            assert_eq!(
                response.status,
                StatusCode::PARTIAL_CONTENT,
                "{name} {range}"
            );
            assert_eq!(
                response.header("content-range"),
                Some(format!("bytes {first}-{last}/{size}").as_str())
            );
            assert_eq!(
                response.header("content-length"),
                Some((last - first + 1).to_string().as_str())
            );
            assert!(
                response.body[..] == data[first as usize..=last as usize],
                "{name} {range}: body differs"
            );
        }
    }
    origin.stop().await;
}

#[tokio::test]
async fn multiple_ranges_are_multipart_and_byte_exact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = pattern(3 * PIECE + 7, 42);
    fs::write(dir.path().join("video.mp4"), &data).expect("write");
    let origin = RunningOrigin::start(dir.path()).await;
    let size = data.len();
    let response = get(
        origin.addr,
        "/video.mp4",
        &[(
            "range",
            &format!("bytes=0-9, 100-199, {}-{}, -5", PIECE - 3, PIECE + 2),
        )],
    )
    .await;
    assert_eq!(response.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        response.header("content-length"),
        Some(response.body.len().to_string().as_str())
    );
    let parts = parse_multipart(
        response.header("content-type").expect("type"),
        &response.body,
    );
    let expected = [
        (0, 9),
        (100, 199),
        (PIECE - 3, PIECE + 2),
        (size - 5, size - 1),
    ];
    assert_eq!(parts.len(), expected.len());
    for ((content_range, bytes), (first, last)) in parts.iter().zip(expected) {
        assert_eq!(content_range, &format!("bytes {first}-{last}/{size}"));
        assert!(
            bytes[..] == data[first..=last],
            "part {first}-{last} differs"
        );
    }

    // Overlapping ranges coalesce into one part: a plain 206.
    let response = get(origin.addr, "/video.mp4", &[("range", "bytes=0-10,5-20")]).await;
    assert_eq!(response.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        response.header("content-range"),
        Some(format!("bytes 0-20/{size}").as_str())
    );
    assert!(response.body[..] == data[..=20]);

    // Sixteen ranges are fine, seventeen are refused.
    let sixteen: Vec<String> = (0..16)
        .map(|i| format!("{}-{}", i * 10, i * 10 + 1))
        .collect();
    let response = get(
        origin.addr,
        "/video.mp4",
        &[("range", &format!("bytes={}", sixteen.join(",")))],
    )
    .await;
    assert_eq!(response.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        parse_multipart(
            response.header("content-type").expect("type"),
            &response.body
        )
        .len(),
        16
    );
    let seventeen: Vec<String> = (0..17)
        .map(|i| format!("{}-{}", i * 10, i * 10 + 1))
        .collect();
    let response = get(
        origin.addr,
        "/video.mp4",
        &[("range", &format!("bytes={}", seventeen.join(",")))],
    )
    .await;
    assert_eq!(response.status, StatusCode::RANGE_NOT_SATISFIABLE);
    origin.stop().await;
}

#[tokio::test]
async fn unsatisfiable_and_malformed_ranges_get_416() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("ten.bin"), b"0123456789").expect("write");
    fs::write(dir.path().join("empty.bin"), b"").expect("write");
    let origin = RunningOrigin::start(dir.path()).await;
    for (path, range, size) in [
        ("/ten.bin", "bytes=10-", 10),
        ("/ten.bin", "bytes=20-30", 10),
        ("/ten.bin", "bytes=-0", 10),
        ("/ten.bin", "bytes=abc", 10),
        ("/ten.bin", "bytes=5-1", 10),
        ("/ten.bin", "bytes=", 10),
        ("/empty.bin", "bytes=0-", 0),
        ("/empty.bin", "bytes=-5", 0),
    ] {
        let response = get(origin.addr, path, &[("range", range)]).await;
        assert_eq!(
            response.status,
            StatusCode::RANGE_NOT_SATISFIABLE,
            "{path} {range}"
        );
        assert_eq!(
            response.header("content-range"),
            Some(format!("bytes */{size}").as_str()),
            "{path} {range}"
        );
    }
    // An unknown unit is ignored: the whole file.
    let response = get(origin.addr, "/ten.bin", &[("range", "items=0-3")]).await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(&response.body[..], b"0123456789");
    origin.stop().await;
}

#[tokio::test]
async fn conditional_requests() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = pattern(PIECE + 1, 9);
    fs::write(dir.path().join("obj.bin"), &data).expect("write");
    let origin = RunningOrigin::start(dir.path()).await;
    let first = get(origin.addr, "/obj.bin", &[]).await;
    let etag = first.header("etag").expect("etag").to_string();
    let last_modified = first
        .header("last-modified")
        .expect("last-modified")
        .to_string();

    for headers in [
        vec![("if-none-match", etag.as_str())],
        vec![("if-none-match", "*")],
        vec![("if-none-match", &format!("\"nope\", W/{etag}"))],
        vec![("if-modified-since", last_modified.as_str())],
    ] {
        let response = get(origin.addr, "/obj.bin", &headers).await;
        assert_eq!(response.status, StatusCode::NOT_MODIFIED, "{headers:?}");
        assert!(response.body.is_empty());
        assert_eq!(response.header("etag"), Some(etag.as_str()));
    }
    // If-None-Match wins over If-Modified-Since.
    let response = get(
        origin.addr,
        "/obj.bin",
        &[
            ("if-none-match", "\"other\""),
            ("if-modified-since", &last_modified),
        ],
    )
    .await;
    assert_eq!(response.status, StatusCode::OK);

    for headers in [
        vec![("if-match", "\"other\"")],
        vec![("if-match", &format!("W/{etag}") as &str)],
        vec![("if-unmodified-since", "Sun, 06 Nov 1994 08:49:37 GMT")],
    ] {
        let response = get(origin.addr, "/obj.bin", &headers).await;
        assert_eq!(
            response.status,
            StatusCode::PRECONDITION_FAILED,
            "{headers:?}"
        );
    }
    let response = get(origin.addr, "/obj.bin", &[("if-match", &etag)]).await;
    assert_eq!(response.status, StatusCode::OK);
    assert!(response.body[..] == data[..]);

    // If-Range: a matching strong tag keeps the range, anything else
    // gets the whole object.
    let response = get(
        origin.addr,
        "/obj.bin",
        &[("range", "bytes=5-9"), ("if-range", &etag)],
    )
    .await;
    assert_eq!(response.status, StatusCode::PARTIAL_CONTENT);
    assert!(response.body[..] == data[5..10]);
    let response = get(
        origin.addr,
        "/obj.bin",
        &[("range", "bytes=5-9"), ("if-range", &last_modified)],
    )
    .await;
    assert_eq!(response.status, StatusCode::PARTIAL_CONTENT);
    for if_range in [
        "\"stale\"",
        &format!("W/{etag}") as &str,
        "Sun, 06 Nov 1994 08:49:37 GMT",
    ] {
        let response = get(
            origin.addr,
            "/obj.bin",
            &[("range", "bytes=5-9"), ("if-range", if_range)],
        )
        .await;
        assert_eq!(response.status, StatusCode::OK, "{if_range}");
        assert!(response.body[..] == data[..]);
    }
    origin.stop().await;
}

#[tokio::test]
async fn head_has_headers_but_no_body() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = write_sizes(dir.path());
    let origin = RunningOrigin::start(dir.path()).await;
    for (name, data) in &files {
        let response = fetch(origin.addr, "HEAD", &format!("/{name}"), &[]).await;
        assert_eq!(response.status, StatusCode::OK);
        assert!(response.body.is_empty());
        assert_eq!(
            response.header("content-length"),
            Some(data.len().to_string().as_str()),
            "{name}"
        );
        assert!(response.header("etag").is_some());
        // Range is ignored on HEAD.
        let response = fetch(
            origin.addr,
            "HEAD",
            &format!("/{name}"),
            &[("range", "bytes=0-0")],
        )
        .await;
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(
            response.header("content-length"),
            Some(data.len().to_string().as_str()),
            "{name}"
        );
    }
    origin.stop().await;
}

#[tokio::test]
async fn other_methods_get_405() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("a.txt"), b"a").expect("write");
    let origin = RunningOrigin::start(dir.path()).await;
    for method in ["POST", "PUT", "DELETE", "OPTIONS", "PATCH"] {
        let response = fetch(origin.addr, method, "/a.txt", &[]).await;
        assert_eq!(response.status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
        assert_eq!(response.header("allow"), Some("GET, HEAD"));
    }
    origin.stop().await;
}

#[tokio::test]
async fn path_tricks_never_leak() {
    let base = tempfile::tempdir().expect("tempdir");
    let root = base.path().join("root");
    fs::create_dir_all(root.join("sub")).expect("mkdir");
    fs::create_dir_all(root.join(".git")).expect("mkdir");
    let secret = b"TOP SECRET outside the root";
    fs::write(base.path().join("secret.txt"), secret).expect("write");
    fs::write(root.join("sub/inside.txt"), b"inside").expect("write");
    fs::write(root.join(".env"), b"PASSWORD=hunter2").expect("write");
    fs::write(root.join(".git/config"), b"[core]").expect("write");
    std::os::unix::fs::symlink(base.path().join("secret.txt"), root.join("escape.txt"))
        .expect("symlink");
    std::os::unix::fs::symlink(base.path(), root.join("escape-dir")).expect("symlink");
    std::os::unix::fs::symlink(root.join("sub/inside.txt"), root.join("alias.txt"))
        .expect("symlink");
    let origin = RunningOrigin::start(&root).await;

    for target in [
        "/../secret.txt",
        "/sub/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E/secret.txt",
        "/sub/%2e%2e/%2e%2e/secret.txt",
        "/sub/..%2f..%2fsecret.txt",
        "/..%5csecret.txt",
        "//secret.txt",
        "/sub//inside.txt",
        "/./sub/inside.txt",
        "/escape.txt",
        "/escape-dir/secret.txt",
        "/sub",
        "/sub/",
        "/",
        "/.env",
        "/.git/config",
        "/sub/inside.txt%00",
        "/%",
    ] {
        let (status, body) = raw_get(origin.addr, target).await;
        assert!(status == 400 || status == 404, "{target}: status {status}");
        assert!(
            !body.windows(secret.len()).any(|w| w == secret),
            "{target} leaked the secret"
        );
        assert!(
            !body.windows(7).any(|w| w == b"hunter2"),
            "{target} leaked a hidden file"
        );
    }
    // Plain paths and symlinks that stay inside the root work.
    let (status, body) = raw_get(origin.addr, "/sub/inside.txt").await;
    assert_eq!((status, body.as_slice()), (200, &b"inside"[..]));
    let (status, body) = raw_get(origin.addr, "/alias.txt").await;
    assert_eq!((status, body.as_slice()), (200, &b"inside"[..]));
    let (status, _) = raw_get(origin.addr, "/sub/inside%2Etxt").await;
    assert_eq!(status, 200, "an encoded dot in a name is just a dot");
    origin.stop().await;
}

#[tokio::test]
async fn http2_prior_knowledge_ranges() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = pattern(2 * PIECE + 3, 5);
    fs::write(dir.path().join("h2.bin"), &data).expect("write");
    let origin = RunningOrigin::start(dir.path()).await;
    let stream = TcpStream::connect(origin.addr).await.expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let request = http::Request::get("http://origin.test/h2.bin")
        .header("range", format!("bytes={}-", PIECE - 1))
        .body(Empty::<Bytes>::new())
        .expect("request");
    let response = tokio::time::timeout(TIMEOUT, sender.send_request(request))
        .await
        .expect("in time")
        .expect("response");
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(response.version(), http::Version::HTTP_2);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert!(body[..] == data[PIECE - 1..]);

    let request = http::Request::head("http://origin.test/h2.bin")
        .body(Empty::<Bytes>::new())
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok()),
        Some(data.len().to_string().as_str())
    );
    origin.stop().await;
}
