//! End-to-end tests of the edge cache with real processes: `shoal origin` and
//! nginx as origins, curl and aria2c as clients, byte-for-byte comparisons.

mod support;

use support::*;

const SIZES: [u64; 7] = [
    0,
    1,
    PIECE - 1,
    PIECE,
    PIECE + 1,
    3 * PIECE + 17,
    5 * 1024 * 1024 + 3,
];

fn sample_root(publish_them: bool) -> (tempfile::TempDir, Vec<(String, Vec<u8>)>) {
    let root = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (i, size) in SIZES.iter().enumerate() {
        let name = format!("files/size-{size}.bin");
        let data = content(*size, i as u64 + 1);
        write_file(root.path(), &name, &data);
        files.push((name, data));
    }
    if publish_them {
        publish(root.path());
    }
    (root, files)
}

fn check_all_clients(cache_url: &str, files: &[(String, Vec<u8>)]) {
    for (name, data) in files {
        let url = format!("{cache_url}/{name}");
        let got = curl(&url, &[]);
        assert_eq!(got.status, 200, "{url}");
        assert_eq!(
            got.header("content-length"),
            Some(data.len().to_string().as_str()),
            "{url}"
        );
        assert!(got.body == *data, "curl bytes differ for {url}");
        if !data.is_empty() {
            assert!(aria2c(&url) == *data, "aria2c bytes differ for {url}");
        }
    }
}

#[test]
fn published_objects_through_cache_match_source_with_shoal_origin() {
    let (root, files) = sample_root(true);
    let origin = start_origin(root.path());
    let data = tempfile::tempdir().unwrap();
    let cache = start_cache(&origin.url, data.path(), "1GiB", &[]);
    check_all_clients(&cache.url, &files);
    // Second round is served from the store: the origin sees no new bytes.
    let origin_bytes = stat(&cache.url, "origin_bytes");
    let total: u64 = files.iter().map(|(_, d)| d.len() as u64).sum();
    assert_eq!(
        origin_bytes, total,
        "each byte fetched from the origin exactly once"
    );
    check_all_clients(&cache.url, &files);
    assert_eq!(stat(&cache.url, "origin_bytes"), origin_bytes);
    assert_eq!(stat(&cache.url, "corrupt_pieces"), 0);
}

#[test]
fn unpublished_objects_through_cache_match_source_with_nginx_origin() {
    let (root, files) = sample_root(false);
    let (nginx, _dir) = start_nginx(root.path(), "");
    let data = tempfile::tempdir().unwrap();
    let cache = start_cache(&nginx.url, data.path(), "1GiB", &[]);
    check_all_clients(&cache.url, &files);
    let total: u64 = files.iter().map(|(_, d)| d.len() as u64).sum();
    assert_eq!(stat(&cache.url, "origin_bytes"), total);
}

#[test]
fn published_objects_with_nginx_origin_are_verified() {
    let (root, files) = sample_root(true);
    let (nginx, _dir) = start_nginx(root.path(), "");
    let data = tempfile::tempdir().unwrap();
    let cache = start_cache(&nginx.url, data.path(), "1GiB", &[]);
    check_all_clients(&cache.url, &files);
}

#[test]
fn range_semantics() {
    let (root, files) = sample_root(true);
    let origin = start_origin(root.path());
    let data = tempfile::tempdir().unwrap();
    let cache = start_cache(&origin.url, data.path(), "1GiB", &[]);
    let (name, body) = files
        .iter()
        .find(|(_, d)| d.len() as u64 == 3 * PIECE + 17)
        .unwrap();
    let url = format!("{}/{name}", cache.url);
    let len = body.len();

    let single = curl(&url, &["-r", "100-299999"]);
    assert_eq!(single.status, 206);
    assert_eq!(single.body, body[100..300_000]);
    assert_eq!(
        single.header("content-range"),
        Some(format!("bytes 100-299999/{len}").as_str())
    );

    let open = curl(&url, &["-H", "Range: bytes=500000-"]);
    assert_eq!(open.status, 206);
    assert_eq!(open.body, body[500_000..]);

    let suffix = curl(&url, &["-H", "Range: bytes=-1000"]);
    assert_eq!(suffix.status, 206);
    assert_eq!(suffix.body, body[len - 1000..]);

    let multi = curl(&url, &["-H", "Range: bytes=0-9,262140-262150,-5"]);
    assert_eq!(multi.status, 206);
    let content_types = multi
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .count();
    assert_eq!(
        content_types, 1,
        "exactly one Content-Type on a multipart response"
    );
    let content_type = multi.header("content-type").unwrap().to_string();
    assert!(
        content_type.starts_with("multipart/byteranges; boundary="),
        "{content_type}"
    );
    assert_eq!(
        multi.header("content-length"),
        Some(multi.body.len().to_string().as_str())
    );
    let boundary = content_type
        .split("boundary=")
        .nth(1)
        .unwrap()
        .trim_matches('"');
    let parts = split_multipart(&multi.body, boundary);
    assert_eq!(parts.len(), 3);
    assert_eq!(parts[0], (format!("bytes 0-9/{len}"), body[0..10].to_vec()));
    assert_eq!(
        parts[1],
        (
            format!("bytes 262140-262150/{len}"),
            body[262_140..262_151].to_vec()
        )
    );
    assert_eq!(
        parts[2],
        (
            format!("bytes {}-{}/{len}", len - 5, len - 1),
            body[len - 5..].to_vec()
        )
    );

    let unsatisfiable = curl(&url, &["-H", &format!("Range: bytes={len}-")]);
    assert_eq!(unsatisfiable.status, 416);
    assert_eq!(
        unsatisfiable.header("content-range"),
        Some(format!("bytes */{len}").as_str())
    );

    let absurd = curl(&url, &["-H", "Range: bytes=99999999999999999999999-"]);
    assert_eq!(absurd.status, 416);
    let too_many: Vec<String> = (0..17)
        .map(|i| format!("{}-{}", i * 10, i * 10 + 1))
        .collect();
    let too_many = curl(
        &url,
        &["-H", &format!("Range: bytes={}", too_many.join(","))],
    );
    assert_eq!(too_many.status, 416);

    let full = curl(&url, &[]);
    let etag = full.header("etag").unwrap().to_string();
    assert!(etag.starts_with('"'), "strong etag: {etag}");
    assert_eq!(full.header("accept-ranges"), Some("bytes"));

    let not_modified = curl(&url, &["-H", &format!("If-None-Match: {etag}")]);
    assert_eq!(not_modified.status, 304);
    assert!(not_modified.body.is_empty());

    let if_range_ok = curl(&url, &["-r", "0-9", "-H", &format!("If-Range: {etag}")]);
    assert_eq!(if_range_ok.status, 206);
    let if_range_stale = curl(&url, &["-r", "0-9", "-H", "If-Range: \"something-else\""]);
    assert_eq!(if_range_stale.status, 200);
    assert_eq!(if_range_stale.body, *body);

    // (curl -I writes the headers where the body would go.)
    let head = curl(&url, &["-I"]);
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-length"),
        Some(len.to_string().as_str())
    );
    assert!(head.body.len() < 1024, "HEAD carried a body");

    // Ranges at piece edges and on the empty object.
    for (start, end) in [
        (0, PIECE - 1),
        (PIECE - 1, PIECE),
        (PIECE, PIECE),
        (len as u64 - 1, len as u64 - 1),
    ] {
        let r = curl(&url, &["-r", &format!("{start}-{end}")]);
        assert_eq!(r.status, 206);
        assert_eq!(r.body, body[start as usize..=end as usize]);
    }
    let empty_url = format!("{}/files/size-0.bin", cache.url);
    assert_eq!(curl(&empty_url, &["-r", "0-0"]).status, 416);
    assert_eq!(curl(&empty_url, &[]).status, 200);

    // HTTP/2 with prior knowledge.
    let h2 = curl(&url, &["--http2-prior-knowledge", "-r", "5-10"]);
    assert_eq!(h2.status, 206);
    assert_eq!(h2.body, body[5..11]);
}

/// Splits a multipart/byteranges body into (Content-Range, bytes) parts.
fn split_multipart(body: &[u8], boundary: &str) -> Vec<(String, Vec<u8>)> {
    let delimiter = format!("--{boundary}");
    let mut parts = Vec::new();
    let mut rest = body;
    while let Some(at) = find(rest, delimiter.as_bytes()) {
        rest = &rest[at + delimiter.len()..];
        if rest.starts_with(b"--") {
            break;
        }
        let header_end = find(rest, b"\r\n\r\n").expect("part headers");
        let headers = String::from_utf8_lossy(&rest[..header_end]).to_string();
        let content_range = headers
            .lines()
            .find_map(|l| {
                l.strip_prefix("Content-Range: ")
                    .or_else(|| l.strip_prefix("content-range: "))
            })
            .expect("part Content-Range")
            .trim()
            .to_string();
        let data_start = header_end + 4;
        let next =
            find(&rest[data_start..], format!("\r\n{delimiter}").as_bytes()).expect("part end");
        parts.push((content_range, rest[data_start..data_start + next].to_vec()));
        rest = &rest[data_start + next + 2..];
    }
    parts
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[test]
fn concurrent_cold_clients_share_one_origin_fetch() {
    let root = tempfile::tempdir().unwrap();
    let data = content(20 * 1024 * 1024 + 5, 9);
    write_file(root.path(), "big.bin", &data);
    let (nginx, _dir) = start_nginx(root.path(), "");
    let store = tempfile::tempdir().unwrap();
    let cache = start_cache(&nginx.url, store.path(), "1GiB", &[]);
    let url = format!("{}/big.bin", cache.url);
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let url = url.clone();
            std::thread::spawn(move || {
                if i % 2 == 0 {
                    curl(&url, &[]).body
                } else {
                    aria2c(&url)
                }
            })
        })
        .collect();
    for handle in handles {
        assert!(handle.join().unwrap() == data);
    }
    assert_eq!(
        stat(&cache.url, "origin_bytes"),
        data.len() as u64,
        "origin saw each byte once"
    );
}

#[test]
fn bad_requests_get_clear_4xx() {
    let (root, _files) = sample_root(true);
    std::fs::write(root.path().join("../secret-outside-root"), b"secret").ok();
    let origin = start_origin(root.path());
    let store = tempfile::tempdir().unwrap();
    let cache = start_cache(&origin.url, store.path(), "1GiB", &[]);
    for path in [
        "/../etc/passwd",
        "/%2e%2e/etc/passwd",
        "/files/%2E%2E/%2e%2e/x",
        "/files//size-1.bin",
        "/files/./size-1.bin",
        "/a%00b",
        "/a\\b",
    ] {
        let result = curl(&format!("{}{}", cache.url, path), &["--path-as-is"]);
        assert_eq!(result.status, 400, "{path} → {}", result.status);
    }
    assert_eq!(
        curl(&format!("{}/no/such/file.bin", cache.url), &[]).status,
        404
    );
    let huge = format!("X-Huge: {}", "a".repeat(100_000));
    let result = curl(&format!("{}/files/size-1.bin", cache.url), &["-H", &huge]);
    assert!(
        result.status == 431 || result.status == 400,
        "huge header → {}",
        result.status
    );
    let post = curl(
        &format!("{}/files/size-1.bin", cache.url),
        &["-X", "POST", "-d", "x"],
    );
    assert_eq!(post.status, 405);
    // Still healthy after all that.
    assert_eq!(
        curl(&format!("{}/files/size-1.bin", cache.url), &[]).status,
        200
    );
}

#[test]
fn origin_failures_become_502_or_504_and_cache_nothing() {
    // Nothing listens on this port: 502.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let store = tempfile::tempdir().unwrap();
    let cache = start_cache(&dead, store.path(), "1GiB", &[]);
    assert_eq!(curl(&format!("{}/x.bin", cache.url), &[]).status, 502);

    // An origin that accepts but never answers: 504.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("http://{}", silent.local_addr().unwrap());
    let _held = std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in silent.incoming().take(4) {
            held.push(stream);
        }
        std::thread::sleep(std::time::Duration::from_secs(30));
    });
    let store2 = tempfile::tempdir().unwrap();
    let cache2 = start_cache(
        &silent_url,
        store2.path(),
        "1GiB",
        &[("SHOAL_CACHE_ORIGIN_READ_TIMEOUT_MS", "500")],
    );
    assert_eq!(curl(&format!("{}/x.bin", cache2.url), &[]).status, 504);
    assert_eq!(stat(&cache2.url, "store_pieces"), 0);
}

#[test]
fn corrupted_origin_bytes_are_never_served() {
    let root = tempfile::tempdir().unwrap();
    let data = content(4 * PIECE, 3);
    let path = write_file(root.path(), "video.mp4", &data);
    publish(root.path());
    // Change one byte of the third piece but keep size and mtime, so the
    // manifest still looks current: only hashing can tell.
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    let mut damaged = data.clone();
    damaged[2 * PIECE as usize + 10] ^= 0xff;
    std::fs::write(&path, &damaged).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();

    let origin = start_origin(root.path());
    let store = tempfile::tempdir().unwrap();
    let cache = start_cache(&origin.url, store.path(), "1GiB", &[]);
    let url = format!("{}/video.mp4", cache.url);
    let whole = curl(&url, &[]);
    // Headers may be out before the bad piece arrives: then the body is cut
    // short. Either way the client never receives the damaged piece.
    assert!(
        whole.exit_code != 0 || whole.status >= 500,
        "a damaged object must not download cleanly"
    );
    assert!(
        whole.body.len() <= 2 * PIECE as usize,
        "nothing past the damaged piece was sent"
    );
    assert!(data.starts_with(&whole.body), "every byte sent was correct");
    let bad_piece = curl(&url, &["-r", &format!("{}-{}", 2 * PIECE, 2 * PIECE + 100)]);
    assert_eq!(bad_piece.status, 502);
    assert!(stat(&cache.url, "corrupt_pieces") >= 1);
    // Good pieces still serve.
    let good = curl(&url, &["-r", "0-99"]);
    assert_eq!(good.status, 206);
    assert_eq!(good.body, data[..100]);
}

#[test]
fn restart_after_kill9_is_warm_and_correct() {
    let root = tempfile::tempdir().unwrap();
    let data = content(12 * 1024 * 1024 + 1, 5);
    write_file(root.path(), "a.bin", &data);
    publish(root.path());
    let origin = start_origin(root.path());
    let store = tempfile::tempdir().unwrap();
    let mut cache = start_cache(&origin.url, store.path(), "1GiB", &[]);
    let url = format!("{}/a.bin", cache.url);
    assert!(curl(&url, &[]).body == data);
    // Give the group-commit writer a moment, then kill -9.
    std::thread::sleep(std::time::Duration::from_millis(500));
    cache.kill9();
    let cache = start_cache(&origin.url, store.path(), "1GiB", &[]);
    let url = format!("{}/a.bin", cache.url);
    assert!(curl(&url, &[]).body == data);
    assert_eq!(
        stat(&cache.url, "origin_bytes"),
        0,
        "restarted cache is warm"
    );
}

#[test]
fn kill9_mid_transfer_never_serves_torn_bytes() {
    let root = tempfile::tempdir().unwrap();
    let data = content(48 * 1024 * 1024, 6);
    write_file(root.path(), "b.bin", &data);
    let (nginx, _dir) = start_nginx(root.path(), "limit_rate 16m;");
    let store = tempfile::tempdir().unwrap();
    for round in 0..3 {
        let mut cache = start_cache(&nginx.url, store.path(), "1GiB", &[]);
        let url = format!("{}/b.bin", cache.url);
        let downloader = std::thread::spawn(move || curl(&url, &[]));
        std::thread::sleep(std::time::Duration::from_millis(400 + 300 * round));
        cache.kill9();
        let partial = downloader.join().unwrap();
        assert!(
            data.starts_with(&partial.body),
            "bytes before the kill were correct"
        );
    }
    let cache = start_cache(&nginx.url, store.path(), "1GiB", &[]);
    let url = format!("{}/b.bin", cache.url);
    assert!(curl(&url, &[]).body == data);
    assert!(aria2c(&url) == data);
}

#[test]
fn capacity_is_enforced_and_bytes_stay_correct() {
    let root = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for i in 0..4 {
        let data = content(6 * 1024 * 1024, 20 + i);
        write_file(root.path(), &format!("v{i}.bin"), &data);
        files.push(data);
    }
    publish(root.path());
    let origin = start_origin(root.path());
    let store = tempfile::tempdir().unwrap();
    let cache = start_cache(
        &origin.url,
        store.path(),
        "8MiB",
        &[("SHOAL_CACHE_MEMORY_CAPACITY", "4MiB")],
    );
    for _ in 0..2 {
        for (i, data) in files.iter().enumerate() {
            assert!(curl(&format!("{}/v{i}.bin", cache.url), &[]).body == *data);
        }
    }
    let resident = stat(&cache.url, "store_resident_bytes");
    assert!(
        resident <= 8 * 1024 * 1024,
        "resident {resident} over the 8 MiB budget"
    );
    assert!(stat(&cache.url, "store_pieces_evicted") > 0);
}

#[test]
fn freshness_and_revalidation_follow_the_origin() {
    let root = tempfile::tempdir().unwrap();
    write_file(root.path(), "news.txt", b"version one");
    write_file(root.path(), "private.txt", b"not for caches");
    let (nginx, _dir) = start_nginx(
        root.path(),
        r#"location = /news.txt { add_header Cache-Control "max-age=1"; }
           location = /private.txt { add_header Cache-Control "no-store"; }"#,
    );
    let store = tempfile::tempdir().unwrap();
    let cache = start_cache(&nginx.url, store.path(), "1GiB", &[]);
    let url = format!("{}/news.txt", cache.url);
    assert_eq!(curl(&url, &[]).body, b"version one");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(curl(&url, &[]).body, b"version one");
    assert!(stat(&cache.url, "revalidations") >= 1);
    // A new version at the origin (different size, so a different ETag).
    std::thread::sleep(std::time::Duration::from_millis(1100));
    write_file(root.path(), "news.txt", b"version two, longer");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(curl(&url, &[]).body, b"version two, longer");

    let private = curl(&format!("{}/private.txt", cache.url), &[]);
    assert_eq!(private.body, b"not for caches");
    assert!(stat(&cache.url, "pass_through_requests") >= 1);
}

#[test]
fn an_object_removed_at_the_origin_is_reprobed_not_stuck() {
    let root = tempfile::tempdir().unwrap();
    let data = content(40 * 1024 * 1024, 11);
    let path = write_file(root.path(), "gone.bin", &data);
    publish(root.path());
    let origin = start_origin(root.path());
    let store = tempfile::tempdir().unwrap();
    let cache = start_cache(&origin.url, store.path(), "1GiB", &[]);
    let url = format!("{}/gone.bin", cache.url);
    assert_eq!(curl(&url, &["-r", "0-99"]).body, data[..100]);

    std::fs::rename(&path, root.path().join("moved-away")).unwrap();
    let tail = curl(&url, &["-r", "35000000-35000099"]);
    assert_eq!(tail.status, 404, "an uncached piece of a removed object");
    assert_eq!(
        curl(&url, &["-r", "0-99"]).status,
        404,
        "re-probed, not stuck"
    );

    // Back with the same bytes (and mtime): the cached pieces are kept.
    std::fs::rename(root.path().join("moved-away"), &path).unwrap();
    // The first request's fill run (up to 16 MiB, begun before the file
    // moved) may still be streaming from the origin's open file: let it end.
    let before = stable_stat(&cache.url, "origin_bytes");
    assert_eq!(curl(&url, &["-r", "0-99"]).body, data[..100]);
    assert_eq!(
        stat(&cache.url, "origin_bytes"),
        before,
        "same id: pieces reused"
    );
    assert!(curl(&url, &[]).body == data);
}

#[test]
fn a_new_version_at_one_path_keeps_pieces_another_path_shares() {
    let root = tempfile::tempdir().unwrap();
    let data = content(3 * 1024 * 1024, 12);
    write_file(root.path(), "a.bin", &data);
    write_file(root.path(), "b.bin", &data);
    publish(root.path());
    let (nginx, _dir) = start_nginx(root.path(), r#"add_header Cache-Control "max-age=1";"#);
    let store = tempfile::tempdir().unwrap();
    let cache = start_cache(&nginx.url, store.path(), "1GiB", &[]);
    assert!(curl(&format!("{}/a.bin", cache.url), &[]).body == data);
    assert!(curl(&format!("{}/b.bin", cache.url), &[]).body == data);
    let fetched = stable_stat(&cache.url, "origin_bytes");
    assert_eq!(
        fetched,
        data.len() as u64,
        "same content, same object: fetched once"
    );

    std::thread::sleep(std::time::Duration::from_millis(1100));
    let changed = content(1024 * 1024, 13);
    write_file(root.path(), "a.bin", &changed);
    publish(root.path());
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert!(curl(&format!("{}/a.bin", cache.url), &[]).body == changed);
    let after_a = stat(&cache.url, "origin_bytes");
    assert!(curl(&format!("{}/b.bin", cache.url), &[]).body == data);
    assert_eq!(
        stat(&cache.url, "origin_bytes"),
        after_a,
        "b's pieces survived a's new version"
    );
}

#[test]
fn manifests_are_served_published_or_built() {
    let root = tempfile::tempdir().unwrap();
    let data = content(3 * PIECE + 5, 14);
    write_file(root.path(), "pub.bin", &data);
    publish(root.path());
    write_file(root.path(), "raw.bin", &data);
    let (nginx, _dir) = start_nginx(root.path(), "");
    let store = tempfile::tempdir().unwrap();
    let cache = start_cache(&nginx.url, store.path(), "1GiB", &[]);

    let published = curl(&format!("{}/_shoal/manifest/pub.bin", cache.url), &[]);
    assert_eq!(published.status, 200);
    let id = published.header("x-shoal-object-id").unwrap().to_string();
    assert_eq!(
        id,
        blake3::hash(&published.body).to_hex().to_string(),
        "the id is the manifest's hash"
    );
    let object = curl(&format!("{}/pub.bin", cache.url), &["-r", "0-0"]);
    assert_eq!(object.header("x-shoal-object-id"), Some(id.as_str()));
    assert_eq!(object.header("x-shoal-cache"), Some("MISS"));
    let again = curl(&format!("{}/pub.bin", cache.url), &["-r", "0-0"]);
    assert_eq!(again.header("x-shoal-cache"), Some("HIT"));

    // Not published: no manifest until every piece has been ingested.
    assert_eq!(
        curl(&format!("{}/_shoal/manifest/raw.bin", cache.url), &[]).status,
        404
    );
    assert!(curl(&format!("{}/raw.bin", cache.url), &[]).body == data);
    let built = curl(&format!("{}/_shoal/manifest/raw.bin", cache.url), &[]);
    assert_eq!(built.status, 200);
    // Same bytes, same piece size: the built manifest lists the same hashes.
    assert_eq!(
        built.body.len(),
        published.body.len() - (2 + 4 + 8),
        "same hashes, no last-modified extension"
    );
    // The 24-byte fixed header, then one 32-byte hash per piece.
    assert_eq!(built.body[24..24 + 4 * 32], published.body[24..24 + 4 * 32]);
    assert_eq!(
        curl(
            &format!("{}/_shoal/manifest/%2e%2e/x", cache.url),
            &["--path-as-is"]
        )
        .status,
        400
    );
}

/// A cold miss streams: the first bytes reach the client long before the
/// origin has sent the whole object (origin capped at 4 MB/s, 8 MiB object:
/// the whole takes about 2 s; the first byte needs only the first piece).
#[test]
fn a_cold_miss_starts_the_response_before_the_object_is_fetched() {
    let root = tempfile::tempdir().unwrap();
    let data = content(8 * 1024 * 1024, 15);
    write_file(root.path(), "slow.bin", &data);
    publish(root.path());
    let origin = start_shoal(
        &[
            "origin",
            "--root",
            root.path().to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        &[("SHOAL_ORIGIN_LIMITS__EGRESS_BYTES_PER_S", "4194304")],
    );
    let store = tempfile::tempdir().unwrap();
    let cache = start_cache(&origin.url, store.path(), "1GiB", &[]);
    let output = std::process::Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_download} %{time_starttransfer} %{time_total}",
        ])
        .arg(format!("{}/slow.bin", cache.url))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    let fields: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(fields[..2], ["200", &data.len().to_string()], "{text}");
    let first_byte_s: f64 = fields[2].parse().unwrap();
    let total_s: f64 = fields[3].parse().unwrap();
    assert!(total_s > 1.0, "the origin cap held ({total_s} s)");
    assert!(
        first_byte_s < total_s / 3.0,
        "first byte after {first_byte_s} s of {total_s} s: the response waited for the object"
    );
}

/// Slow-loris and idle clients are cut off by the cache's limits.
#[test]
fn slow_and_idle_connections_are_timed_out() {
    use std::io::{Read, Write};
    let root = tempfile::tempdir().unwrap();
    write_file(root.path(), "x.bin", b"x");
    let origin = start_origin(root.path());
    let store = tempfile::tempdir().unwrap();
    let cache = start_cache(
        &origin.url,
        store.path(),
        "1GiB",
        &[
            ("SHOAL_CACHE_LIMITS__HEADER_READ_TIMEOUT_MS", "500"),
            ("SHOAL_CACHE_LIMITS__IDLE_TIMEOUT_MS", "800"),
        ],
    );
    let addr = cache.url.trim_start_matches("http://").to_string();
    for partial in [&b"GET /x.bin HTTP/1.1\r\nHost: a\r\n"[..], &b""[..]] {
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        stream.write_all(partial).unwrap();
        let started = std::time::Instant::now();
        let mut sink = Vec::new();
        let _ = stream.read_to_end(&mut sink);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(8),
            "connection was not closed"
        );
    }
    // A complete request still works.
    assert_eq!(curl(&format!("{}/x.bin", cache.url), &[]).body, b"x");
}

/// A small tmpfs of its own (needs root, as `scripts/test` runs), unmounted
/// when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(mib: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mounting a {mib} MiB tmpfs failed: this test needs root, as scripts/test runs"
        );
        Self { dir }
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Fills what is left with one file (removed to free the space).
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.path().join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let block = vec![0u8; 64 * 1024];
        while file.write_all(&block).is_ok() {}
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[test]
fn a_full_disk_serves_through_once_says_degraded_and_recovers_when_space_returns() {
    let root = tempfile::tempdir().unwrap();
    let big = content(64 * 1024 * 1024, 81);
    write_file(root.path(), "big.bin", &big);
    let small = content(8 * 1024 * 1024 + 5, 82);
    write_file(root.path(), "small.bin", &small);
    publish(root.path());
    let origin = start_origin(root.path());
    let disk = SmallDisk::mount(32);
    let data_dir = disk.path().join("data");
    let mut cache = start_cache(&origin.url, &data_dir, "1GiB", &[]);
    let health = |cache: &Proc| {
        String::from_utf8_lossy(&curl(&format!("{}/_shoal/health", cache.url), &[]).body)
            .to_string()
    };
    assert_eq!(health(&cache), "ok\n");
    // The disk fills up (another tenant, logs): every write fails.
    let filler = disk.fill();
    let got = curl(&format!("{}/big.bin", cache.url), &[]);
    assert_eq!(got.status, 200);
    assert!(got.body == big, "served through, byte-exact");
    // Each piece came from the origin once: nothing fetched again because
    // it could not be stored.
    assert_eq!(stat(&cache.url, "origin_bytes"), big.len() as u64);
    wait_until(
        "health says the store cannot write",
        std::time::Duration::from_secs(10),
        || health(&cache).starts_with("degraded: the store cannot write"),
    );
    let text = health(&cache);
    assert!(text.contains("No space left on device"), "{text}");
    // Space returns: the store writes (pieces and index) again, health is
    // ok, and what it stored survives a restart.
    std::fs::remove_file(filler).unwrap();
    let got = curl(&format!("{}/small.bin", cache.url), &[]);
    assert!(got.body == small);
    wait_until(
        "health is ok again",
        std::time::Duration::from_secs(10),
        || health(&cache) == "ok\n",
    );
    let origin_before = stat(&cache.url, "origin_bytes");
    assert!(curl(&format!("{}/small.bin", cache.url), &[]).body == small);
    assert_eq!(
        stat(&cache.url, "origin_bytes"),
        origin_before,
        "served from the store"
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    cache.kill9();
    let cache = start_cache(&origin.url, &data_dir, "1GiB", &[]);
    assert!(curl(&format!("{}/small.bin", cache.url), &[]).body == small);
    assert_eq!(
        stat(&cache.url, "origin_bytes"),
        0,
        "the index kept what was stored after the disk recovered"
    );
    assert_eq!(health(&cache), "ok\n");
}
