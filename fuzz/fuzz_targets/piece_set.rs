//! Fuzzes the piece-set (bitfield) decoder: anything it accepts re-encodes
//! to the same bytes and counts no piece past its end.

#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_core::bitfield::PieceSet;

fuzz_target!(|data: &[u8]| {
    if let Ok(set) = PieceSet::decode(data) {
        assert_eq!(set.encode(), data);
        assert!(set.len() <= set.piece_count());
        assert!(set.iter().all(|i| i.0 < set.piece_count()));
    }
});
