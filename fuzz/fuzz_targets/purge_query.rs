//! Purge requests: the operator's query (`path=`/`prefix=`, `soft=`) and
//! the event form caches pass on (`id=`, `at=`) give a typed value or an
//! error, never a panic; an event read back from its own query is equal.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_proto::purge::{parse_request, PurgeEvent, PurgeTarget, PURGE_TARGET_LEN_MAX_BYTES};

fuzz_target!(|data: &[u8]| {
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok((target, _soft)) = parse_request(query) {
        match &target {
            PurgeTarget::Path(p) | PurgeTarget::Prefix(p) => {
                assert!(p.starts_with('/'));
                assert!(p.len() <= PURGE_TARGET_LEN_MAX_BYTES * 3);
            }
        }
    }
    if let Ok(event) = PurgeEvent::from_query(query) {
        let again = PurgeEvent::from_query(&event.to_query()).expect("own query parses");
        assert_eq!(again, event);
    }
});
