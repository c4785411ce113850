//! Fuzzes the other header parsers a client or an upstream controls:
//! entity tags and lists, `If-Range`, `Cache-Control`, `Expires`,
//! `Content-Range` and HTTP-dates. None may panic; what parses must
//! format back to something that parses to the same value.

#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_http::cache_control::{freshness_lifetime_s, CacheControl, Expires};
use shoal_http::conditional::{parse_etag_list, EntityTag, EtagList, IfRange};
use shoal_http::content_range::{parse_content_range, ContentRangeHeader};
use shoal_http::date::{format_http_date_unix_s, parse_http_date_unix_s};

fuzz_target!(|data: &[u8]| {
    if let Ok(tag) = EntityTag::parse(data) {
        assert_eq!(EntityTag::parse(tag.to_string()).as_ref(), Ok(&tag));
    }
    if let Ok(EtagList::Tags(tags)) = parse_etag_list(data) {
        let text: Vec<String> = tags.iter().map(ToString::to_string).collect();
        assert_eq!(parse_etag_list(text.join(", ")), Ok(EtagList::Tags(tags)));
    }
    let _ = IfRange::parse(data);

    let cc = CacheControl::parse(data);
    let expires = Expires::parse(data);
    let _ = freshness_lifetime_s(&cc, Some(expires), Some(1), Some(0), u64::MAX);

    match parse_content_range(data) {
        Ok(ContentRangeHeader::Range(range)) => {
            assert!(!range.span().is_empty());
            assert!(range.span().end() <= range.complete_length());
            let text = range.to_string();
            assert_eq!(
                parse_content_range(text),
                Ok(ContentRangeHeader::Range(range))
            );
        }
        Ok(ContentRangeHeader::Unsatisfied { complete_length }) => {
            let text = shoal_http::content_range::format_unsatisfied(complete_length);
            assert_eq!(
                parse_content_range(text),
                Ok(ContentRangeHeader::Unsatisfied { complete_length })
            );
        }
        Err(_) => {}
    }

    if let Ok(unix_s) = parse_http_date_unix_s(data) {
        assert_eq!(
            parse_http_date_unix_s(format_http_date_unix_s(unix_s)),
            Ok(unix_s)
        );
    }
});
