//! Fuzzes the gossiped object-summary (Bloom filter) decoder: anything it
//! accepts re-encodes to the same text.

#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_mesh::ObjectSummary;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(summary) = ObjectSummary::decode(text) {
            assert_eq!(summary.encode(), text);
        }
    }
});
