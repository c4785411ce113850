//! Fuzzes the tracker's announce and scrape query parsers, and the
//! tracker itself with what they accept: no panic, answers that decode as
//! bencoding, never more peers than asked for.

#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_peer::bencode::Value;
use shoal_peer::tracker::{parse_scrape, Announce, Locality, Tracker, TrackerLimits};

fuzz_target!(|data: &[u8]| {
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse_scrape(query, 64);
    if let Ok(announce) = Announce::parse(query) {
        let mut tracker = Tracker::new(TrackerLimits::default());
        let ip = "127.0.0.1".parse().unwrap();
        if let Ok(answer) = tracker.announce(&announce, ip, Locality::default(), 0) {
            assert!(answer.peers.len() <= announce.numwant.unwrap_or(50) as usize);
            assert!(Value::decode(&answer.encode()).is_ok());
        }
    }
});
