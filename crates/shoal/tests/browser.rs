//! A browser through the cache: headless Chromium (Debian's `chromium`,
//! installed by `scripts/install-test-deps`) loads a page from one origin
//! and fetches a media file through the cache on another, as a web player
//! does: a simple CORS request and a preflighted one (a custom header and
//! a `Range`), the bytes checked in the page.

mod support;

use support::any_origin::AnyOrigin;
use support::*;

/// Sum of the bytes, as the page computes it.
fn byte_sum(bytes: &[u8]) -> u64 {
    bytes.iter().map(|&b| u64::from(b)).sum()
}

#[test]
fn a_page_elsewhere_fetches_media_through_the_cache_with_cors() {
    let media_origin = AnyOrigin::start();
    let pages = AnyOrigin::start_on("127.0.0.2");
    let data = tempfile::tempdir().unwrap();
    let cache = start_cache(&media_origin.url, data.path(), "1GiB", &[]);
    let page_origin = pages.url.clone();

    let size = 600_000u64;
    let expected = byte_sum(&content(size, 7));
    let expected_range = byte_sum(&content(size, 7)[10..20]);
    media_origin.set(
        "/media/clip.bin",
        &format!(
            "size={size}&h=Access-Control-Allow-Origin:{page}&h=Access-Control-Allow-Headers:x-player,range\
             &h=Access-Control-Allow-Methods:GET&h=Access-Control-Expose-Headers:Content-Range,X-Shoal-Cache\
             &h=Vary:Origin&h=Content-Type:video/mp4",
            page = percent_encoding::utf8_percent_encode(&page_origin, percent_encoding::NON_ALPHANUMERIC),
        ),
    );
    let script = format!(
        r#"<!doctype html><html><head><title>pending</title></head><body><script>
const media = "{cache}/media/clip.bin";
const sum = (buffer) => new Uint8Array(buffer).reduce((a, b) => a + b, 0);
(async () => {{
  try {{
    const whole = await fetch(media);
    const wholeSum = sum(await whole.arrayBuffer());
    const part = await fetch(media, {{ headers: {{ "X-Player": "web", "Range": "bytes=10-19" }} }});
    const partSum = sum(await part.arrayBuffer());
    document.title = ["done", whole.status, wholeSum, part.status, partSum,
      part.headers.get("content-range"), whole.headers.get("x-shoal-cache")].join("|");
  }} catch (error) {{
    document.title = "failed|" + error;
  }}
}})();
</script></body></html>"#,
        cache = cache.url
    );
    pages.set(
        "/player.html",
        &format!(
            "h=Content-Type:text/html&body={}",
            percent_encoding::utf8_percent_encode(&script, percent_encoding::NON_ALPHANUMERIC)
        ),
    );

    let (dom, log) = chromium(
        &format!("{page_origin}/player.html"),
        20_000,
        &["--dump-dom"],
    );
    let title = dom
        .split("<title>")
        .nth(1)
        .and_then(|rest| rest.split("</title>").next())
        .unwrap_or("(no title)")
        .to_string();
    assert!(
        title.starts_with("done|"),
        "the page says {title:?}; chromium: {log}"
    );
    let fields: Vec<&str> = title.split('|').collect();
    assert_eq!(fields[1], "200", "{title}");
    assert_eq!(fields[2], expected.to_string(), "{title}: whole body");
    assert_eq!(fields[3], "206", "{title}");
    assert_eq!(fields[4], expected_range.to_string(), "{title}: range");
    assert_eq!(fields[5], format!("bytes 10-19/{size}"), "{title}");
    // The preflight reached the origin through the cache.
    assert!(
        media_origin.count("OPTIONS", "/media/clip.bin") >= 1,
        "a preflight was sent"
    );
    let preflight = media_origin
        .seen()
        .into_iter()
        .find(|s| s.method == "OPTIONS")
        .unwrap();
    assert_eq!(
        preflight
            .header("access-control-request-headers")
            .map(|h| h.contains("x-player")),
        Some(true)
    );
}
