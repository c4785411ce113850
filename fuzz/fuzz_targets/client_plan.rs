//! What `shoal get` reads from servers: a selector's plan (JSON), a
//! cache's hash list, `Link` headers with duplicates, and URLs inside them: typed values or an
//! error, never a panic; every source and standby cache a parsed plan
//! keeps is an http URL for the path asked.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_client::discover::{duplicate_links, parse_plan, ObjectUrl, PLAN_SOURCES_MAX};
use shoal_http::path::RequestPath;

fuzz_target!(|data: &[u8]| {
    let Ok(path) = RequestPath::parse("/video/film.mp4") else {
        return;
    };
    if let Ok(plan) = parse_plan(data, &path) {
        assert!(plan.sources.len() <= PLAN_SOURCES_MAX);
        for source in &plan.sources {
            let url = ObjectUrl::parse(&source.url).expect("kept sources parse");
            assert_eq!(url.path, path);
            assert!(source.share > 0.0 && source.share.is_finite());
        }
        // Standby caches too: at most the limit, each for the path asked.
        assert!(plan.standby.len() <= PLAN_SOURCES_MAX);
        for reserve in &plan.standby {
            let url = ObjectUrl::parse(&reserve.url).expect("kept standby parses");
            assert_eq!(url.path, path);
        }
    }
    // A cache's hash list: a reference with exactly one slot per piece, or
    // an error.
    if let Ok(list) = serde_json::from_slice::<shoal_client::reference::HashList>(data) {
        if let Ok(reference) = shoal_client::reference::Reference::from_hash_list(
            &list,
            reqwest::Client::new(),
            "/video/film.mp4".into(),
        ) {
            assert_eq!(reference.piece_count() as usize, list.hashes_hex.len());
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let links = duplicate_links(text.lines());
        assert!(links.len() <= PLAN_SOURCES_MAX);
        // A URL (a selector's version pin included) prints back to itself.
        if let Ok(url) = ObjectUrl::parse(text) {
            assert_eq!(ObjectUrl::parse(&url.url()).expect("own URL parses"), url);
        }
    }
});
