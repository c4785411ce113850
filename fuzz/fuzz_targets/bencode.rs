//! Fuzzes the bencode decoder: anything it accepts is canonical (re-encodes
//! to the same bytes), and nothing makes it panic or recurse past its depth.

#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_peer::bencode::Value;

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = Value::decode(data) {
        assert_eq!(value.encode(), data);
    }
});
