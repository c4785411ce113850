//! Fuzzes the client side of the tracker protocol: a tracker's answer
//! (what `shoal get` reads back from an announce) decodes or is refused,
//! never panics, and never yields more peers than the bound or a port 0;
//! an answer that decodes re-encodes to one that decodes to the same.

#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_peer::tracker::{AnnounceAnswer, ANSWER_PEERS_MAX};

fuzz_target!(|data: &[u8]| {
    if let Ok(answer) = AnnounceAnswer::decode(data) {
        assert!(answer.peers.len() <= ANSWER_PEERS_MAX);
        assert!(answer.peers.iter().all(|p| p.port() != 0));
        assert!(answer.min_interval_s <= answer.interval_s);
        let again = AnnounceAnswer::decode(&answer.encode()).expect("re-encoded answer");
        assert_eq!(again.peers, answer.peers);
    }
});
