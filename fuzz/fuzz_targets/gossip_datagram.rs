//! Fuzzes what arrives at the gossip port: opening a sealed datagram
//! (never panics; accepts only what was sealed with the key) and parsing a
//! member from gossiped key-values (never panics on any text; a traffic
//! value that parses encodes back to a value that parses the same).

#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_mesh::transport::{open_sealed, seal};
use shoal_mesh::{Member, Traffic};

const KEY: [u8; 32] = [42; 32];

fuzz_target!(|data: &[u8]| {
    let now = 1_700_000_000;
    if let Some(payload) = open_sealed(&KEY, data, now) {
        // Only a datagram we sealed can open: sealing its payload again
        // gives back the same bytes.
        assert_eq!(seal(&KEY, payload, u64::from_be_bytes(data[payload.len()..payload.len() + 8].try_into().unwrap())), data);
    }
    let sealed = seal(&KEY, data, now);
    let expected = (!data.is_empty() && sealed.len() <= 65_507).then_some(data);
    assert_eq!(open_sealed(&KEY, &sealed, now), expected);

    // Key-values: split the input into up to 8 NUL-separated values.
    let text = String::from_utf8_lossy(data);
    let values: Vec<&str> = text.split('\0').collect();
    let keys = ["v", "http", "region", "egress_cap_bps", "egress_bps", "cost_per_gb_microusd", "health", "objs", "https", "traffic"];
    let get = |k: &str| keys.iter().position(|x| *x == k).and_then(|i| values.get(i).copied());
    let _ = Member::from_key_values(values.first().copied().unwrap_or(""), get, None);
    if let Some(traffic) = Traffic::parse(&text) {
        assert_eq!(Traffic::parse(&traffic.encode()), Some(traffic));
    }
});
