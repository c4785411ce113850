//! The cache as a transparent reverse proxy (RFC 9110 §7.6, §9, §15; RFC
//! 9111 §4.4), against an origin that answers whatever a test asks
//! (`support::any_origin`), with curl as the client. The rows of
//! docs/conformance.md name these tests.

mod support;

use support::any_origin::AnyOrigin;
use support::*;

fn cache_for(origin: &AnyOrigin) -> (Proc, tempfile::TempDir) {
    let data = tempfile::tempdir().unwrap();
    let cache = start_cache(&origin.url, data.path(), "1GiB", &[]);
    (cache, data)
}

/// A cache whose objects under 1 MiB take the whole-response path.
fn cache_for_small(origin: &AnyOrigin) -> (Proc, tempfile::TempDir) {
    let data = tempfile::tempdir().unwrap();
    let cache = start_cache(
        &origin.url,
        data.path(),
        "1GiB",
        &[("SHOAL_CACHE_SMALL_OBJECT_BYTES_MAX", "1048576")],
    );
    (cache, data)
}

/// Every status comes through with the origin's body and headers, and no
/// `x-shoal-error` (that marks only the cache's own errors).
#[test]
fn any_status_passes_through_with_its_body_and_headers() {
    let origin = AnyOrigin::start();
    let (cache, _data) = cache_for(&origin);
    // (path, query, expected status, expected body)
    let rows: [(&str, &str, u16, &str); 8] = [
        (
            "/r/moved",
            "status=301&h=Location:/r/new&body=moved+away",
            301,
            "moved away",
        ),
        (
            "/r/found",
            "status=302&h=Location:http://elsewhere.example/x&body=see+there",
            302,
            "see there",
        ),
        (
            "/r/missing",
            "status=404&body=the+origin+says+no",
            404,
            "the origin says no",
        ),
        (
            "/r/gone",
            "status=410&body=gone+for+good",
            410,
            "gone for good",
        ),
        ("/r/forbidden", "status=403&body=nope", 403, "nope"),
        (
            "/r/teapot",
            "status=418&body=short+and+stout",
            418,
            "short and stout",
        ),
        (
            "/r/broken",
            "status=503&h=Retry-After:7&body=origin+overloaded",
            503,
            "origin overloaded",
        ),
        ("/r/empty", "status=204", 204, ""),
    ];
    for (path, query, status, body) in rows {
        origin.set(path, query);
        let got = curl(&format!("{}{path}", cache.url), &[]);
        assert_eq!(got.status, status, "{path}");
        assert_eq!(String::from_utf8_lossy(&got.body), body, "{path}");
        assert_eq!(
            got.header("x-shoal-error"),
            None,
            "{path}: origin's own answer"
        );
        assert!(
            got.header("via").is_some_and(|v| v.contains("shoal")),
            "{path}: Via names this hop"
        );
    }
    let moved = curl(&format!("{}/r/moved", cache.url), &[]);
    assert_eq!(moved.header("location"), Some("/r/new"));
    let broken = curl(&format!("{}/r/broken", cache.url), &[]);
    assert_eq!(broken.header("retry-after"), Some("7"));
}

/// Bodies of unknown length (chunked, or ended by closing) stream through
/// whole, for GET and for the cache's own probe.
#[test]
fn responses_of_unknown_length_stream_through() {
    let origin = AnyOrigin::start();
    let (cache, _data) = cache_for(&origin);
    for (path, len) in [("/u/chunked.bin", "chunked"), ("/u/closed.bin", "close")] {
        origin.set(
            path,
            &format!("size=300000&len={len}&h=Cache-Control:max-age%3D60"),
        );
        let got = curl(&format!("{}{path}", cache.url), &[]);
        assert_eq!(got.status, 200, "{path}");
        assert!(got.body == content(300_000, 7), "{path}: bytes differ");
        assert_eq!(got.header("x-shoal-cache"), Some("MISS"), "{path}");
        // Stored whole once complete: the next answer is the store's.
        let again = curl(&format!("{}{path}", cache.url), &[]);
        assert_eq!(again.header("x-shoal-cache"), Some("HIT"), "{path}");
        assert!(
            again.body == content(300_000, 7),
            "{path}: stored bytes differ"
        );
        assert_eq!(origin.count("GET", path), 1, "{path}");
    }
}

/// End-to-end fields reach the client, on a stored object too (miss and
/// hit); hop-by-hop ones and those `Connection` lists do not.
#[test]
fn end_to_end_headers_are_kept_and_hop_by_hop_ones_dropped() {
    let origin = AnyOrigin::start();
    let (cache, _data) = cache_for(&origin);
    let fields = [
        ("Access-Control-Allow-Origin", "https://player.example"),
        ("Access-Control-Expose-Headers", "Content-Range"),
        ("Content-Disposition", "attachment; filename=\"a.bin\""),
        ("Vary", "Origin"),
        ("X-Custom", "kept"),
    ];
    let mut query = String::from("size=600000&h=Connection:+x-hop&h=X-Hop:secret");
    for (name, value) in fields {
        query.push_str(&format!(
            "&h={}",
            percent_encoding::utf8_percent_encode(
                &format!("{name}:{value}"),
                percent_encoding::NON_ALPHANUMERIC
            )
        ));
    }
    origin.set("/e2e/a.bin", &query);
    let mut gets_after_miss = 0;
    for round in ["MISS", "HIT"] {
        let got = curl(&format!("{}/e2e/a.bin", cache.url), &[]);
        assert_eq!(got.status, 200);
        assert_eq!(got.header("x-shoal-cache"), Some(round));
        assert!(got.body == content(600_000, 7));
        for (name, value) in fields {
            assert_eq!(got.header(name), Some(value), "{round}: {name}");
        }
        assert_eq!(got.header("x-hop"), None, "{round}: listed in Connection");
        assert!(got.header("age").is_some(), "{round}: Age (RFC 9111 §5.1)");
        assert!(got.header("date").is_some(), "{round}: Date");
        if round == "MISS" {
            gets_after_miss = origin.count("GET", "/e2e/a.bin");
        }
    }
    // Stored: the origin was asked for the bytes once, and its fields came
    // with the first GET (no HEAD).
    assert_eq!(origin.count("HEAD", "/e2e/a.bin"), 0);
    assert_eq!(origin.count("GET", "/e2e/a.bin"), gets_after_miss);
}

/// Every method reaches the origin with its body; a non-error answer to
/// an unsafe one makes the stored path stale (RFC 9111 §4.4).
#[test]
fn any_method_is_forwarded_and_unsafe_ones_invalidate() {
    let origin = AnyOrigin::start();
    let (cache, _data) = cache_for(&origin);
    origin.set("/m/doc.bin", "size=1000&h=Cache-Control:max-age%3D3600");
    let url = format!("{}/m/doc.bin", cache.url);
    assert_eq!(curl(&url, &[]).status, 200);
    assert_eq!(curl(&url, &[]).header("x-shoal-cache"), Some("HIT"));
    let heads_before = origin.count("HEAD", "/m/doc.bin");

    for method in ["POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
        let got = curl(
            &format!("{url}?status=201&body=done+{method}"),
            &[
                "-X",
                method,
                "--data-binary",
                &format!("payload of {method}"),
            ],
        );
        assert_eq!(got.status, 201, "{method}");
        assert_eq!(String::from_utf8_lossy(&got.body), format!("done {method}"));
        let seen = origin
            .seen()
            .into_iter()
            .rev()
            .find(|s| s.method == method)
            .unwrap_or_else(|| panic!("{method} reached the origin"));
        assert_eq!(
            String::from_utf8_lossy(&seen.body),
            format!("payload of {method}")
        );
        assert!(seen.header("x-forwarded-for").is_some());
        assert!(seen.header("via").is_some_and(|v| v.contains("shoal")));
    }
    // The stored version is stale now: the next GET asks the origin again.
    let got = curl(&url, &[]);
    assert_eq!(got.status, 200);
    assert!(origin.count("HEAD", "/m/doc.bin") > heads_before);
    assert!(stat(&cache.url, "invalidations") >= 1);
}

/// Queries and directory paths reach the origin as sent.
#[test]
fn queries_and_directory_paths_reach_the_origin() {
    let origin = AnyOrigin::start();
    let (cache, _data) = cache_for(&origin);
    origin.set("/", "body=index+page");
    origin.set("/docs/", "body=docs+index");
    let root = curl(&format!("{}/", cache.url), &[]);
    assert_eq!(
        (root.status, root.body.as_slice()),
        (200, &b"index page"[..])
    );
    let docs = curl(&format!("{}/docs/", cache.url), &[]);
    assert_eq!(
        (docs.status, docs.body.as_slice()),
        (200, &b"docs index"[..])
    );
    let query = curl(
        &format!("{}/search?q=big+buck&page=2&body=results", cache.url),
        &[],
    );
    assert_eq!(query.status, 200);
    assert!(origin
        .seen()
        .iter()
        .any(|s| s.target == "/search?q=big+buck&page=2&body=results"));
    // Still refused: paths that could name something else.
    assert_eq!(
        curl(&format!("{}/a/../b", cache.url), &["--path-as-is"]).status,
        400
    );
}

/// The cache's own errors say so; the origin's do not.
#[test]
fn cache_errors_are_marked_origin_errors_are_not() {
    let port = free_port();
    let data = tempfile::tempdir().unwrap();
    let cache = start_cache(
        &format!("http://127.0.0.1:{port}"),
        data.path(),
        "1GiB",
        &[],
    );
    let got = curl(&format!("{}/nothing/there", cache.url), &[]);
    assert_eq!(got.status, 502);
    assert_eq!(got.header("x-shoal-error"), Some("origin"));
    let posted = curl(&format!("{}/form", cache.url), &["-d", "x=1"]);
    assert_eq!(posted.status, 502);
    assert_eq!(posted.header("x-shoal-error"), Some("origin"));
    let bad = curl(&format!("{}/a//b", cache.url), &["--path-as-is"]);
    assert_eq!(bad.status, 400);
    assert_eq!(bad.header("x-shoal-error"), Some("client"));
}

/// RFC 9110 §14.2 (a Range on HEAD is ignored) and §14.1.1 (a last
/// position past 2^64 means "to the end").
#[test]
fn head_ignores_range_and_huge_last_positions_mean_the_end() {
    let origin = AnyOrigin::start();
    let (cache, _data) = cache_for(&origin);
    origin.set("/h/a.bin", "size=500000");
    let url = format!("{}/h/a.bin", cache.url);
    let head = curl(&url, &["-I", "-H", "Range: bytes=0-99"]);
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-range"), None);
    assert_eq!(head.header("content-length"), Some("500000"));
    let huge = curl(&url, &["-H", "Range: bytes=100-99999999999999999999999"]);
    assert_eq!(huge.status, 206);
    assert_eq!(
        huge.header("content-range"),
        Some("bytes 100-499999/500000")
    );
    assert!(huge.body == content(500_000, 7)[100..]);
}

/// A response the origin forbids storing is fetched anew every time. A
/// file (which the probe would send to the piece path) costs one probe
/// more the first time; its path is then passed straight through.
#[test]
fn no_store_responses_are_never_served_from_store() {
    let origin = AnyOrigin::start();
    let (cache, _data) = cache_for(&origin);
    origin.set("/ns/a.bin", "size=1000&h=Cache-Control:no-store");
    origin.set("/ns/page", "size=1000&ranges=0&h=Cache-Control:no-store");
    for _ in 0..3 {
        for path in ["/ns/a.bin", "/ns/page"] {
            let got = curl(&format!("{}{path}", cache.url), &[]);
            assert_eq!(got.status, 200);
            assert_eq!(got.header("x-shoal-cache"), Some("PASS"));
            assert_eq!(got.body.len(), 1000);
        }
    }
    assert_eq!(origin.count("GET", "/ns/a.bin"), 4);
    assert_eq!(origin.count("GET", "/ns/page"), 3);
    assert_eq!(
        origin.count("HEAD", "/ns/a.bin") + origin.count("HEAD", "/ns/page"),
        0
    );
}

/// RFC 9112 §3.2 through the cache: a request without Host is refused.
#[test]
fn requests_without_one_valid_host_are_refused() {
    use std::io::{Read, Write};
    let origin = AnyOrigin::start();
    let (cache, _data) = cache_for(&origin);
    let addr = cache.url.trim_start_matches("http://").to_string();
    for request in [
        "GET /x HTTP/1.1\r\n\r\n",
        "GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "GET /x HTTP/1.1\r\nHost: bad host\r\n\r\n",
    ] {
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        // (No half-close: the server would take it for the client leaving.)
        let mut answer = Vec::new();
        let mut buf = [0u8; 1024];
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 400"),
            "{request:?} → {answer:?}"
        );
    }
    assert_eq!(origin.count("GET", "/x") + origin.count("HEAD", "/x"), 0);
}

/// A pinned request (the selector's URL) is served from the stored
/// version whatever else its query holds: never passed to the origin,
/// never another version.
#[test]
fn pinned_requests_with_other_query_parameters_stay_on_the_stored_version() {
    let origin = AnyOrigin::start();
    let (cache, _data) = cache_for(&origin);
    origin.set("/p/a.bin", "size=400000");
    let url = format!("{}/p/a.bin", cache.url);
    let first = curl(&url, &[]);
    assert_eq!(first.status, 200);
    let id = first
        .header("x-shoal-object-id")
        .expect("an object id")
        .to_string();
    let gets_before = origin.count("GET", "/p/a.bin");
    let pinned = curl(&format!("{url}?player=web&shoal-object={id}"), &[]);
    assert_eq!(pinned.status, 200);
    assert_eq!(pinned.header("x-shoal-cache"), Some("HIT"));
    assert_eq!(pinned.header("x-shoal-object-id"), Some(id.as_str()));
    assert!(pinned.body == content(400_000, 7));
    assert_eq!(origin.count("GET", "/p/a.bin"), gets_before);
    // Without the pin, the query is the origin's to answer.
    let unpinned = curl(&format!("{url}?player=web"), &[]);
    assert_eq!(unpinned.header("x-shoal-cache"), Some("MISS"));
    assert_eq!(origin.count("GET", "/p/a.bin"), gets_before + 1);
}

fn sleep_s(seconds: u64) {
    std::thread::sleep(std::time::Duration::from_secs(seconds));
}

/// RFC 9111 §3, §4.2.2: a 404 and a 301 are stored (negative caching,
/// heuristic freshness); a 503 and a 302 without freshness are not.
#[test]
fn errors_and_redirects_are_stored_by_their_rules() {
    let origin = AnyOrigin::start();
    let (cache, _data) = cache_for(&origin);
    for (path, query, stored) in [
        ("/s/missing", "status=404&body=not+here", true),
        ("/s/moved", "status=301&h=Location:/s/new", true),
        ("/s/found", "status=302&h=Location:/s/new", false),
        (
            "/s/found-60",
            "status=302&h=Location:/s/new&h=Cache-Control:max-age%3D60",
            true,
        ),
        ("/s/down", "status=503&body=later", false),
    ] {
        origin.set(path, query);
        let first = curl(&format!("{}{path}", cache.url), &[]);
        let second = curl(&format!("{}{path}", cache.url), &[]);
        assert_eq!(first.status, second.status, "{path}");
        assert_eq!(first.body, second.body, "{path}");
        let expected = if stored { "HIT" } else { "PASS" };
        assert_eq!(second.header("x-shoal-cache"), Some(expected), "{path}");
        assert_eq!(
            origin.count("GET", path),
            if stored { 1 } else { 2 },
            "{path}: origin GETs"
        );
        if stored {
            assert!(
                second.header("age").is_some(),
                "{path}: Age on a stored answer"
            );
        }
    }
}

/// The cache key holds the query; `Vary` keeps one variant per value of
/// the fields it names; `Vary: *` is never stored.
#[test]
fn queries_and_vary_select_stored_responses() {
    let origin = AnyOrigin::start();
    let (cache, _data) = cache_for(&origin);
    let get = |q: &str, args: &[&str]| curl(&format!("{}/k/page?{q}", cache.url), args);
    assert_eq!(
        get("body=one&h=Cache-Control:max-age%3D60", &[]).header("x-shoal-cache"),
        Some("MISS")
    );
    assert_eq!(
        get("body=one&h=Cache-Control:max-age%3D60", &[]).header("x-shoal-cache"),
        Some("HIT")
    );
    let two = get("body=two&h=Cache-Control:max-age%3D60", &[]);
    assert_eq!(
        (two.header("x-shoal-cache"), two.body.as_slice()),
        (Some("MISS"), &b"two"[..])
    );

    let vary = "body=cors&h=Vary:Origin&h=Cache-Control:max-age%3D60";
    let a = ["-H", "Origin: https://a.example"];
    let b = ["-H", "Origin: https://b.example"];
    assert_eq!(get(vary, &a).header("x-shoal-cache"), Some("MISS"));
    assert_eq!(get(vary, &a).header("x-shoal-cache"), Some("HIT"));
    assert_eq!(get(vary, &b).header("x-shoal-cache"), Some("MISS"));
    assert_eq!(get(vary, &b).header("x-shoal-cache"), Some("HIT"));
    assert_eq!(get(vary, &a).header("x-shoal-cache"), Some("HIT"));

    let star = "body=star&h=Vary:*&h=Cache-Control:max-age%3D60";
    get(star, &[]);
    assert_eq!(get(star, &[]).header("x-shoal-cache"), Some("PASS"));
}

/// Revalidation (RFC 9111 §4.3): a stale response is asked about with its
/// ETag, a 304 refreshes it; `stale-if-error` serves it when the origin
/// fails, `stale-while-revalidate` serves it while asking (RFC 5861).
#[test]
fn stale_responses_revalidate_or_serve_stale_as_allowed() {
    let origin = AnyOrigin::start();
    let (cache, _data) = cache_for_small(&origin);
    let url = |path: &str| format!("{}{path}", cache.url);

    origin.set("/v/etag", "body=same&etag=v1&h=Cache-Control:max-age%3D1");
    assert_eq!(
        curl(&url("/v/etag"), &[]).header("x-shoal-cache"),
        Some("MISS")
    );
    sleep_s(2);
    let again = curl(&url("/v/etag"), &[]);
    assert_eq!(again.header("x-shoal-cache"), Some("REVALIDATED"));
    assert_eq!(again.body, b"same");
    let asked = origin
        .seen()
        .into_iter()
        .rev()
        .find(|s| s.target == "/v/etag")
        .unwrap();
    assert_eq!(asked.header("if-none-match"), Some("\"v1\""));

    origin.set(
        "/v/sie",
        "body=good&h=Cache-Control:max-age%3D1,+stale-if-error%3D60",
    );
    assert_eq!(curl(&url("/v/sie"), &[]).status, 200);
    origin.set("/v/sie", "status=500&body=broken");
    sleep_s(2);
    let stale = curl(&url("/v/sie"), &[]);
    assert_eq!((stale.status, stale.body.as_slice()), (200, &b"good"[..]));
    assert_eq!(stale.header("x-shoal-cache"), Some("STALE"));
    // Without stale-if-error the origin's error is what the client gets.
    origin.set("/v/strict", "body=good&h=Cache-Control:max-age%3D1");
    curl(&url("/v/strict"), &[]);
    origin.set("/v/strict", "status=500&body=broken");
    sleep_s(2);
    let strict = curl(&url("/v/strict"), &[]);
    assert_eq!(
        (strict.status, strict.body.as_slice()),
        (500, &b"broken"[..])
    );

    origin.set(
        "/v/swr",
        "body=old&h=Cache-Control:max-age%3D1,+stale-while-revalidate%3D60",
    );
    curl(&url("/v/swr"), &[]);
    origin.set("/v/swr", "body=new&h=Cache-Control:max-age%3D60");
    sleep_s(2);
    let served = curl(&url("/v/swr"), &[]);
    assert_eq!(
        (served.header("x-shoal-cache"), served.body.as_slice()),
        (Some("STALE"), &b"old"[..])
    );
    wait_until(
        "the background revalidation",
        std::time::Duration::from_secs(10),
        || curl(&url("/v/swr"), &[]).body == b"new",
    );
}

/// Request directives (RFC 9111 §5.2.1) and what is never stored.
#[test]
fn request_directives_and_private_answers() {
    let origin = AnyOrigin::start();
    let (cache, _data) = cache_for_small(&origin);
    let url = |path: &str| format!("{}{path}", cache.url);
    let only = ["-H", "Cache-Control: only-if-cached"];
    let nothing = curl(&url("/d/cold?body=x"), &only);
    assert_eq!(nothing.status, 504);
    origin.set("/d/page", "body=page&h=Cache-Control:max-age%3D600");
    curl(&url("/d/page"), &[]);
    assert_eq!(
        curl(&url("/d/page"), &only).header("x-shoal-cache"),
        Some("HIT")
    );
    let gets = origin.count("GET", "/d/page");
    let no_cache = curl(&url("/d/page"), &["-H", "Cache-Control: no-cache"]);
    assert_eq!(no_cache.status, 200);
    assert_eq!(
        origin.count("GET", "/d/page"),
        gets + 1,
        "no-cache asks the origin"
    );

    for (path, query, args) in [
        ("/d/cookie", "body=c&h=Set-Cookie:session%3D1", vec![]),
        ("/d/auth", "body=a", vec!["-H", "Authorization: Bearer t"]),
        ("/d/private", "body=p&h=Cache-Control:private", vec![]),
    ] {
        origin.set(path, query);
        curl(&url(path), &args);
        let second = curl(&url(path), &args);
        assert_eq!(second.header("x-shoal-cache"), Some("PASS"), "{path}");
        // Nor does another client get it.
        let gets = origin.count("GET", path);
        curl(&url(path), &[]);
        assert_eq!(origin.count("GET", path), gets + 1, "{path}: not shared");
    }
    // RFC 9213: CDN-Cache-Control decides for the CDN.
    origin.set(
        "/d/cdn",
        "body=c&h=Cache-Control:no-store&h=CDN-Cache-Control:max-age%3D60",
    );
    curl(&url("/d/cdn"), &[]);
    let cdn = curl(&url("/d/cdn"), &[]);
    assert_eq!(cdn.header("x-shoal-cache"), Some("HIT"));
    assert_eq!(
        cdn.header("cache-control"),
        Some("no-store"),
        "clients still get the origin's"
    );

    // The piece path honours them too.
    let (pieces, _pieces_data) = cache_for(&origin);
    origin.set("/d/big.bin", "size=600000&h=Cache-Control:max-age%3D600");
    let big = format!("{}/d/big.bin", pieces.url);
    assert_eq!(curl(&big, &only).status, 504);
    curl(&big, &[]);
    assert_eq!(curl(&big, &only).header("x-shoal-cache"), Some("HIT"));
    let heads = origin.count("HEAD", "/d/big.bin");
    assert_eq!(curl(&big, &["-H", "Cache-Control: no-cache"]).status, 200);
    assert_eq!(
        origin.count("HEAD", "/d/big.bin"),
        heads + 1,
        "no-cache revalidates"
    );
    curl(&big, &[]);
    assert_eq!(
        origin.count("HEAD", "/d/big.bin"),
        heads + 1,
        "then fresh again"
    );
}

/// A stored whole response answers HEAD, a single range (206), an
/// unsatisfiable one (416) and a matching If-None-Match (304) itself.
#[test]
fn stored_whole_responses_answer_head_ranges_and_conditionals() {
    let origin = AnyOrigin::start();
    let (cache, _data) = cache_for_small(&origin);
    origin.set(
        "/w/a.bin",
        "size=1000&etag=e1&h=Cache-Control:max-age%3D600",
    );
    let url = format!("{}/w/a.bin", cache.url);
    assert_eq!(curl(&url, &[]).header("x-shoal-cache"), Some("MISS"));
    let head = curl(&url, &["-I"]);
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("1000"));
    let part = curl(&url, &["-r", "10-19"]);
    assert_eq!(part.status, 206);
    assert_eq!(part.header("content-range"), Some("bytes 10-19/1000"));
    assert!(part.body == content(1000, 7)[10..20]);
    assert_eq!(curl(&url, &["-r", "5000-"]).status, 416);
    assert_eq!(curl(&url, &["-H", "If-None-Match: \"e1\""]).status, 304);
    assert_eq!(
        origin.count("GET", "/w/a.bin"),
        1,
        "all answered from the store"
    );
}

/// The host is part of the key: a client naming another host cannot plant
/// an answer (built from `X-Forwarded-Host`) for everyone else. An unsafe
/// request drops the stored response of its target (RFC 9111 §4.4).
#[test]
fn keys_hold_the_host_and_unsafe_requests_drop_whole_responses() {
    let origin = AnyOrigin::start();
    let (cache, _data) = cache_for(&origin);
    let url = format!(
        "{}/h/page?x=1&body=hello&h=Cache-Control:max-age%3D60",
        cache.url
    );
    let evil = curl(&url, &["-H", "Host: evil.example"]);
    assert_eq!(evil.header("x-shoal-cache"), Some("MISS"));
    let seen = origin.seen().into_iter().last().unwrap();
    assert_eq!(seen.header("x-forwarded-host"), Some("evil.example"));
    assert_eq!(curl(&url, &[]).header("x-shoal-cache"), Some("MISS"));
    assert_eq!(curl(&url, &[]).header("x-shoal-cache"), Some("HIT"));

    let posted = curl(&url, &["-X", "POST", "--data-binary", "x"]);
    assert_eq!(posted.status, 200);
    wait_until(
        "the stored answer dropped",
        std::time::Duration::from_secs(5),
        || curl(&url, &[]).header("x-shoal-cache") == Some("MISS"),
    );
}

/// HTTPS origins (rustls): the system's roots plus a private CA named by
/// `origin_ca_file`; without it the origin's certificate is refused, and
/// the client is told it is the origin's fault.
#[test]
fn https_origins_are_verified_against_the_configured_ca() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new(find_tool("openssl"))
            .args(args)
            .current_dir(d)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=shoal test CA",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "origin.key",
        "-out",
        "origin.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(
        d.join("leaf.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "origin.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "origin.pem",
        "-days",
        "2",
        "-extfile",
        "leaf.ext",
    ]);
    let root = tempfile::tempdir().unwrap();
    let data = content(3 * PIECE + 5, 21);
    write_file(root.path(), "tls/a.bin", &data);
    let port = free_port();
    let extra = format!(
        "listen 127.0.0.1:{port} ssl; ssl_certificate {}; ssl_certificate_key {};",
        d.join("origin.pem").display(),
        d.join("origin.key").display()
    );
    let (_nginx, _conf) = start_nginx(root.path(), &extra);
    wait_for_port(format!("127.0.0.1:{port}").parse().unwrap());
    let https = format!("https://127.0.0.1:{port}");

    let store = tempfile::tempdir().unwrap();
    let ca = d.join("ca.pem");
    let cache = start_cache(
        &https,
        store.path(),
        "1GiB",
        &[("SHOAL_CACHE_ORIGIN_CA_FILE", ca.to_str().unwrap())],
    );
    let got = curl(&format!("{}/tls/a.bin", cache.url), &[]);
    assert_eq!(got.status, 200);
    assert!(got.body == data, "bytes through TLS differ");
    let again = curl(&format!("{}/tls/a.bin", cache.url), &["-r", "100-199"]);
    assert_eq!(again.body, data[100..200]);

    let other_store = tempfile::tempdir().unwrap();
    let untrusting = start_cache(&https, other_store.path(), "1GiB", &[]);
    let refused = curl(&format!("{}/tls/a.bin", untrusting.url), &[]);
    assert_eq!(refused.status, 502);
    assert_eq!(refused.header("x-shoal-error"), Some("origin"));
}

/// An upload may take longer than the origin read timeout as long as it
/// keeps moving (a PUT of a large file from a slow client).
#[test]
fn slow_uploads_are_not_cut_by_the_read_timeout() {
    let origin = AnyOrigin::start();
    let data = tempfile::tempdir().unwrap();
    let cache = start_cache(
        &origin.url,
        data.path(),
        "1GiB",
        &[("SHOAL_CACHE_ORIGIN_READ_TIMEOUT_MS", "2000")],
    );
    let dir = tempfile::tempdir().unwrap();
    let upload = write_file(dir.path(), "upload.bin", &content(400_000, 3));
    let got = curl(
        &format!("{}/u/put?status=201&body=stored", cache.url),
        &[
            "-X",
            "PUT",
            "--limit-rate",
            "100K",
            "--data-binary",
            &format!("@{}", upload.display()),
        ],
    );
    assert_eq!(got.status, 201, "a 4 s upload with a 2 s read timeout");
    let seen = origin
        .seen()
        .into_iter()
        .find(|s| s.method == "PUT")
        .expect("the PUT reached the origin");
    assert!(seen.body == content(400_000, 3), "the whole body arrived");
}

/// Parameters the operator lists leave the key (the origin still gets
/// them): a signature or a tracking tag does not make a new entry.
#[test]
fn ignored_query_parameters_do_not_split_the_cache() {
    let origin = AnyOrigin::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cache.toml");
    std::fs::write(
        &config,
        format!(
            concat!(
                "listen = \"127.0.0.1:0\"\norigin = \"{}\"\ndata_dir = \"{}\"\ncapacity = \"1GiB\"\n",
                "ignored_query_params = [\"token\", \"utm_*\"]\n",
                // A delivery service with its own rules: signatures are
                // not content, but `token` is (a different rule).
                "[[service]]\nname = \"video\"\nhosts = [\"video.example\"]\n",
                "path_prefix = \"/v/\"\nignored_query_params = [\"sig\", \"exp\"]\n",
            ),
            origin.url,
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let cache = start_shoal(&["cache", "--config", config.to_str().unwrap()], &[]);
    let get = |q: &str| {
        curl(
            &format!("{}/q/app.css?{q}&h=Cache-Control:max-age%3D60", cache.url),
            &[],
        )
    };
    assert_eq!(get("token=abc&v=2").header("x-shoal-cache"), Some("MISS"));
    assert_eq!(get("token=xyz&v=2").header("x-shoal-cache"), Some("HIT"));
    assert_eq!(
        get("utm_source=news&v=2").header("x-shoal-cache"),
        Some("HIT")
    );
    assert_eq!(get("v=3").header("x-shoal-cache"), Some("MISS"));
    assert!(origin.seen().iter().any(|s| s.target.contains("token=abc")));
    // The service's rules for its host and prefix; the cache-wide ones
    // elsewhere.
    let video = |q: &str, host: &str| {
        curl(
            &format!("{}/v/page?{q}&h=Cache-Control:max-age%3D60", cache.url),
            &["-H", &format!("Host: {host}")],
        )
        .header("x-shoal-cache")
        .map(str::to_string)
    };
    assert_eq!(
        video("sig=1&exp=9&token=a", "video.example").as_deref(),
        Some("MISS")
    );
    assert_eq!(
        video("sig=2&exp=8&token=a", "video.example").as_deref(),
        Some("HIT")
    );
    assert_eq!(
        video("sig=2&exp=8&token=b", "video.example").as_deref(),
        Some("MISS"),
        "token is content here"
    );
    assert_eq!(
        video("sig=1&exp=9&token=a", "other.example").as_deref(),
        Some("MISS")
    );
    assert_eq!(
        video("sig=2&exp=9&token=c", "other.example").as_deref(),
        Some("MISS"),
        "sig is content elsewhere"
    );
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        format!(
            "origin = \"{}\"\nignored_query_params = [\"a=b\"]\n",
            origin.url
        ),
    )
    .unwrap();
    let output = std::process::Command::new(shoal_bin())
        .args(["cache", "--config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("ignored_query_params"));
    std::fs::write(
        &bad,
        format!(
            "origin = \"{}\"\n[[service]]\nname = \"video\"\npath_prefix = \"v/\"\n",
            origin.url
        ),
    )
    .unwrap();
    let output = std::process::Command::new(shoal_bin())
        .args(["cache", "--config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("service `video`") && stderr.contains("path_prefix"),
        "{stderr}"
    );
}

/// In a mesh, whole responses come through the path's shield: however
/// many caches are asked, the origin answers one request.
#[test]
fn whole_responses_come_through_the_paths_shield() {
    let origin = AnyOrigin::start();
    let dir = tempfile::tempdir().unwrap();
    let names = ["t1", "t2", "t3"];
    let caches = start_mesh(
        &origin.url,
        dir.path(),
        &[("t1", "eu"), ("t2", "eu"), ("t3", "eu")],
        &[],
    );
    let path = "/t/page";
    let shield = shield_of(path, &names);
    let query = "?body=tiered&h=Cache-Control:max-age%3D60";
    // Every cache is reached under the site's one name, as in production.
    let host = ["-H", "Host: video.example"];
    for cache in caches.iter().filter(|c| c.name != shield) {
        let got = curl(&format!("{}{path}{query}", cache.url), &host);
        assert_eq!((got.status, got.body.as_slice()), (200, &b"tiered"[..]));
    }
    let at_shield = caches
        .iter()
        .find(|c| c.name == shield)
        .map(|c| curl(&format!("{}{path}{query}", c.url), &host))
        .unwrap();
    assert_eq!(at_shield.header("x-shoal-cache"), Some("HIT"));
    assert_eq!(origin.count("GET", path), 1, "one cache asked the origin");
    let asked = origin
        .seen()
        .into_iter()
        .find(|s| s.method == "GET")
        .unwrap();
    assert_eq!(
        asked.header("x-shoal-tier"),
        None,
        "shoal's fields stay in the mesh"
    );
    assert_eq!(
        asked.header("x-forwarded-host"),
        Some("video.example"),
        "the origin is told the client's host, not the shield's address"
    );
    // Another site's name is another entry, at the shield too.
    let other = caches
        .iter()
        .find(|c| c.name != shield)
        .map(|c| {
            curl(
                &format!("{}{path}{query}", c.url),
                &["-H", "Host: other.example"],
            )
        })
        .unwrap();
    assert_eq!(other.header("x-shoal-cache"), Some("MISS"));
    assert_eq!(origin.count("GET", path), 2);

    // A stranger's tier header (no cluster token) is not believed: the
    // cache still asks the path's shield, which then holds it.
    let stranger_path = "/t/stranger";
    let stranger_shield = shield_of(stranger_path, &names);
    let edge = caches.iter().find(|c| c.name != stranger_shield).unwrap();
    let got = curl(
        &format!("{}{stranger_path}{query}", edge.url),
        &["-H", "Host: video.example", "-H", "x-shoal-tier: 1"],
    );
    assert_eq!(got.status, 200);
    let at_shield = caches
        .iter()
        .find(|c| c.name == stranger_shield)
        .map(|c| curl(&format!("{}{stranger_path}{query}", c.url), &host))
        .unwrap();
    assert_eq!(
        at_shield.header("x-shoal-cache"),
        Some("HIT"),
        "the shield was asked"
    );
    assert_eq!(origin.count("GET", stranger_path), 1);
}

/// RFC 9110 §7.6.2, §9.3.6, §9.3.8: CONNECT and TRACE are refused;
/// `Max-Forwards: 0` on OPTIONS is answered by the cache, a larger one is
/// passed on one lower.
#[test]
fn connect_trace_and_max_forwards() {
    let origin = AnyOrigin::start();
    let (cache, _data) = cache_for(&origin);
    let url = format!("{}/mf/x", cache.url);
    for method in ["TRACE", "CONNECT"] {
        let got = curl(&url, &["-X", method]);
        assert_eq!(got.status, 405, "{method}");
        assert_eq!(got.header("x-shoal-error"), Some("client"), "{method}");
    }
    let here = curl(&url, &["-X", "OPTIONS", "-H", "Max-Forwards: 0"]);
    assert_eq!(here.status, 200);
    assert!(here.header("allow").is_some());
    assert_eq!(origin.count("OPTIONS", "/mf/x"), 0, "answered by the cache");
    let on = curl(&url, &["-X", "OPTIONS", "-H", "Max-Forwards: 3"]);
    assert_eq!(on.status, 200);
    let seen = origin
        .seen()
        .into_iter()
        .find(|s| s.method == "OPTIONS")
        .unwrap();
    assert_eq!(seen.header("max-forwards"), Some("2"));
    assert_eq!(
        origin.count("TRACE", "/mf/x") + origin.count("CONNECT", "/mf/x"),
        0
    );
}

/// The first GET of an unknown path is the client's own request with a
/// probe range: a file under `small_object_bytes_max` arrives whole in
/// that one answer and is stored; a larger one installs the piece path
/// from the probe's fields (no HEAD); a page from an origin that ignores
/// ranges is one request; concurrent first GETs of one path send the
/// origin one probe.
#[test]
fn the_first_get_of_a_path_is_one_origin_request() {
    let origin = AnyOrigin::start();
    let (cache, _data) = cache_for_small(&origin);
    origin.set("/fc/small.bin", "size=1000&h=Cache-Control:max-age=60");
    origin.set("/fc/large.bin", "size=3000000&h=Cache-Control:max-age=60");
    origin.set("/fc/page", "size=5000&ranges=0&h=Cache-Control:max-age=60");
    for round in ["MISS", "HIT"] {
        let small = curl(&format!("{}/fc/small.bin", cache.url), &[]);
        assert_eq!(small.status, 200, "{round}");
        assert_eq!(small.header("content-range"), None, "{round}");
        assert!(small.body == content(1000, 7), "{round}");
        assert_eq!(small.header("x-shoal-cache"), Some(round));
        let page = curl(&format!("{}/fc/page", cache.url), &[]);
        assert_eq!(page.status, 200, "{round}");
        assert!(page.body == content(5000, 7), "{round}");
        assert_eq!(page.header("x-shoal-cache"), Some(round));
    }
    assert_eq!(origin.count("GET", "/fc/small.bin"), 1);
    assert_eq!(origin.count("GET", "/fc/page"), 1);
    // The probe asked for the first 1 MiB; the client did not see a range.
    let probe = origin
        .seen()
        .into_iter()
        .find(|s| s.target.starts_with("/fc/small.bin"))
        .unwrap();
    assert_eq!(probe.header("range"), Some("bytes=0-1048575"));

    // Eight clients at once on a large file: one probe, then ranges.
    let url = format!("{}/fc/large.bin", cache.url);
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || curl(&url, &[]))
        })
        .collect();
    for client in clients {
        let got = client.join().unwrap();
        assert_eq!(got.status, 200);
        assert_eq!(got.header("content-range"), None);
        assert!(got.body == content(3_000_000, 7));
    }
    let probes = origin
        .seen()
        .into_iter()
        .filter(|s| {
            // A client's request carries X-Forwarded-For; the cache's own
            // piece fetches do not.
            s.target.starts_with("/fc/large.bin") && s.header("x-forwarded-for").is_some()
        })
        .count();
    assert_eq!(probes, 1, "concurrent first GETs share one probe");
    assert_eq!(origin.count("HEAD", "/fc/large.bin"), 0);
    let again = curl(&url, &[]);
    assert_eq!(again.header("x-shoal-cache"), Some("HIT"));
    assert!(again.body == content(3_000_000, 7));
}

/// A redirect to the origin's own address (nginx builds absolute ones
/// from its own host and port) would send clients around the cache and
/// tell them where the origin is: it reaches them relative to the cache.
/// Other hosts' URLs are left alone.
#[test]
fn redirects_to_the_origins_own_address_stay_on_the_cache() {
    let origin = AnyOrigin::start();
    let (cache, _data) = cache_for(&origin);
    let encode = |v: &str| {
        percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    origin.set(
        "/old",
        &format!(
            "status=301&h={}",
            encode(&format!("Location:{}/docs/?a=1", origin.url))
        ),
    );
    origin.set(
        "/away",
        &format!(
            "status=302&h={}",
            encode("Location:http://elsewhere.example/x")
        ),
    );
    for round in ["MISS", "HIT"] {
        let old = curl(&format!("{}/old", cache.url), &[]);
        assert_eq!(old.status, 301, "{round}");
        assert_eq!(old.header("location"), Some("/docs/?a=1"), "{round}");
        assert_eq!(old.header("x-shoal-cache"), Some(round));
    }
    let away = curl(&format!("{}/away", cache.url), &[]);
    assert_eq!(away.status, 302);
    assert_eq!(away.header("location"), Some("http://elsewhere.example/x"));
    // A POST's redirect too (passed through).
    let post = curl(&format!("{}/old", cache.url), &["-X", "POST", "-d", "x"]);
    assert_eq!(post.header("location"), Some("/docs/?a=1"));
}

/// Concurrent misses of one whole response (a slow origin page) send the
/// origin one request; the others are answered from what it stored.
#[test]
fn concurrent_misses_of_a_whole_response_send_one_request() {
    let origin = AnyOrigin::start();
    let (cache, _data) = cache_for(&origin);
    let url = format!(
        "{}/slow/page?body=made-once&delay_ms=700&h=Cache-Control:max-age%3D60",
        cache.url
    );
    let clients: Vec<_> = (0..6)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || curl(&url, &[]))
        })
        .collect();
    let mut statuses = Vec::new();
    for client in clients {
        let got = client.join().unwrap();
        assert_eq!((got.status, got.body.as_slice()), (200, &b"made-once"[..]));
        statuses.push(got.header("x-shoal-cache").unwrap_or("").to_string());
    }
    assert_eq!(origin.count("GET", "/slow/page"), 1, "{statuses:?}");
    assert_eq!(
        statuses.iter().filter(|s| *s == "MISS").count(),
        1,
        "{statuses:?}"
    );
}

/// An origin's 5xx when a stale piece-path file is revalidated reaches the
/// client as the origin sent it; the stored version is kept, so once the
/// origin is back the file is served from its pieces, not fetched again.
#[test]
fn a_5xx_on_revalidation_keeps_the_stored_version() {
    let origin = AnyOrigin::start();
    let (cache, _data) = cache_for(&origin);
    let good = "size=400000&etag=v1&h=Cache-Control:max-age%3D1";
    origin.set("/rv/a.bin", good);
    let url = format!("{}/rv/a.bin", cache.url);
    let first = curl(&url, &[]);
    assert!(first.body == content(400_000, 7));
    let fetched = stable_stat(&cache.url, "origin_bytes");
    std::thread::sleep(std::time::Duration::from_millis(2_100));
    origin.set(
        "/rv/a.bin",
        "status=503&body=down+for+maintenance&h=Retry-After:5",
    );
    let asked = origin.seen().len();
    let failed = curl(&url, &[]);
    // The revalidation and the client's own request, nothing more.
    assert_eq!(origin.seen().len() - asked, 2);
    assert_eq!(failed.status, 503);
    assert_eq!(failed.body, b"down for maintenance");
    assert_eq!(failed.header("retry-after"), Some("5"));
    assert_eq!(
        failed.header("x-shoal-error"),
        None,
        "the origin's own error"
    );
    origin.set("/rv/a.bin", good);
    let back = curl(&url, &[]);
    assert_eq!(back.status, 200);
    assert!(back.body == content(400_000, 7));
    assert_eq!(
        stat(&cache.url, "origin_bytes"),
        fetched,
        "served from the pieces kept"
    );
}

/// RFC 9111 §5.2.1 and RFC 5861 on the piece path: a client's `max-stale`
/// and `min-fresh`, the origin's `stale-while-revalidate` and
/// `stale-if-error`, and `only-if-cached` on a stale file.
#[test]
fn request_and_stale_directives_on_the_piece_path() {
    let origin = AnyOrigin::start();
    let (cache, _data) = cache_for(&origin);
    let size = 300_000;
    let files = [
        ("/ps/swr.bin", "max-age=1, stale-while-revalidate=30"),
        ("/ps/sie.bin", "max-age=1, stale-if-error=60"),
        ("/ps/plain.bin", "max-age=1"),
        ("/ps/long.bin", "max-age=600"),
    ];
    let good = |cc: &str| {
        format!(
            "size={size}&etag=v1&h=Cache-Control:{}",
            percent_encoding::utf8_percent_encode(cc, percent_encoding::NON_ALPHANUMERIC)
        )
    };
    for (path, cc) in files {
        origin.set(path, &good(cc));
        let got = curl(&format!("{}{path}", cache.url), &[]);
        assert!(got.body == content(size, 7), "{path}");
    }
    // min-fresh: a file fresh for 600 s more is not fresh enough for a
    // client that wants 1,000 s: the origin is asked first.
    let asked = origin.seen().len();
    let long = curl(
        &format!("{}/ps/long.bin", cache.url),
        &["-H", "Cache-Control: min-fresh=1000"],
    );
    assert_eq!(long.status, 200);
    assert!(
        origin.seen().len() > asked,
        "min-fresh: the origin was asked"
    );
    std::thread::sleep(std::time::Duration::from_millis(2_100));
    for (path, _) in files.iter().take(3) {
        origin.set(path, "status=503&body=down");
    }
    let asked = origin.seen().len();
    // max-stale: a stale file, and the client accepts it: no origin.
    let plain = format!("{}/ps/plain.bin", cache.url);
    let accepted = curl(&plain, &["-H", "Cache-Control: max-stale=60"]);
    assert_eq!(accepted.status, 200);
    assert_eq!(accepted.header("x-shoal-cache"), Some("STALE"));
    assert!(accepted.body == content(size, 7));
    assert_eq!(
        origin.seen().len(),
        asked,
        "max-stale: the origin was not asked"
    );
    // only-if-cached: stale needs the origin (504), unless max-stale.
    let only = curl(&plain, &["-H", "Cache-Control: only-if-cached"]);
    assert_eq!(only.status, 504);
    let only_stale = curl(&plain, &["-H", "Cache-Control: only-if-cached, max-stale"]);
    assert_eq!(only_stale.status, 200);
    // Without any of that, the origin's 503 reaches the client.
    assert_eq!(curl(&plain, &[]).status, 503);
    // stale-if-error: the origin fails, the stored file answers.
    let sie = curl(&format!("{}/ps/sie.bin", cache.url), &[]);
    assert_eq!(sie.status, 200);
    assert_eq!(sie.header("x-shoal-cache"), Some("STALE"));
    assert!(sie.body == content(size, 7));
    // stale-while-revalidate: answered at once from the store, the origin
    // asked in the background.
    let before = origin.count("HEAD", "/ps/swr.bin") + origin.count("GET", "/ps/swr.bin");
    let swr = curl(&format!("{}/ps/swr.bin", cache.url), &[]);
    assert_eq!(swr.status, 200);
    assert_eq!(swr.header("x-shoal-cache"), Some("STALE"));
    assert!(swr.body == content(size, 7));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while origin.count("HEAD", "/ps/swr.bin") + origin.count("GET", "/ps/swr.bin") == before {
        assert!(
            std::time::Instant::now() < deadline,
            "no background revalidation"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // A version an unsafe request made stale is never served stale, even
    // to a client that accepts staleness (RFC 9111 §4.4).
    let long = format!("{}/ps/long.bin", cache.url);
    assert_eq!(curl(&long, &["-X", "POST", "-d", "x"]).status, 200);
    let asked = origin.seen().len();
    let after = curl(&long, &["-H", "Cache-Control: max-stale=100000"]);
    assert_eq!(after.status, 200);
    assert_ne!(after.header("x-shoal-cache"), Some("STALE"));
    assert!(origin.seen().len() > asked, "revalidated after the POST");
}

/// `Vary` on the piece path: an origin that echoes each page's `Origin`
/// into `Access-Control-Allow-Origin` (S3's CORS rules) gets each
/// variant's fields served from the one stored body; `Vary: *` is never
/// served from the store.
#[test]
fn vary_variants_on_the_piece_path() {
    let origin = AnyOrigin::start();
    let (cache, _data) = cache_for(&origin);
    let size = 2_000_000;
    origin.set(
        "/va/film.mp4",
        &format!("size={size}&etag=f1&echo_origin=1&h=Cache-Control:max-age%3D600"),
    );
    let url = format!("{}/va/film.mp4", cache.url);
    let from = |page: Option<&str>| {
        let header = page.map(|p| format!("Origin: {p}"));
        let args: Vec<&str> = match &header {
            Some(h) => vec!["-H", h.as_str()],
            None => vec![],
        };
        curl(&url, &args)
    };
    let a = from(Some("https://a.example"));
    assert_eq!(a.status, 200);
    assert!(a.body == content(size, 7));
    assert_eq!(
        a.header("access-control-allow-origin"),
        Some("https://a.example")
    );
    let fetched = stable_stat(&cache.url, "origin_bytes");
    for _ in 0..2 {
        let b = from(Some("https://b.example"));
        assert!(b.body == content(size, 7));
        assert_eq!(
            b.header("access-control-allow-origin"),
            Some("https://b.example")
        );
        assert_eq!(b.header("vary"), Some("Origin"));
        let none = from(None);
        assert!(none.body == content(size, 7));
        assert_eq!(none.header("access-control-allow-origin"), None);
        let a = from(Some("https://a.example"));
        assert_eq!(
            a.header("access-control-allow-origin"),
            Some("https://a.example")
        );
        // A range of a variant: its fields too.
        let part = curl(&url, &["-H", "Origin: https://b.example", "-r", "10-19"]);
        assert_eq!(part.status, 206);
        assert_eq!(
            part.header("access-control-allow-origin"),
            Some("https://b.example")
        );
    }
    assert_eq!(
        stat(&cache.url, "origin_bytes"),
        fetched,
        "one body for every variant"
    );
    // Each new variant was asked about once (a HEAD), then remembered.
    assert_eq!(origin.count("HEAD", "/va/film.mp4"), 2);

    origin.set("/va/any.bin", "size=300000&h=Vary:*");
    for _ in 0..2 {
        let got = curl(&format!("{}/va/any.bin", cache.url), &[]);
        assert_eq!(got.header("x-shoal-cache"), Some("PASS"));
        assert!(got.body == content(300_000, 7));
    }
}
