//! Fuzzes manifest decoding: it must never panic, and a manifest that
//! decodes must encode back to exactly the same bytes (the encoding is
//! canonical, so the object id, a hash of it, is well defined).

#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_core::Manifest;

fuzz_target!(|data: &[u8]| {
    if let Ok(manifest) = Manifest::decode(data) {
        let encoded = manifest.encode();
        assert_eq!(
            encoded.as_slice(),
            data,
            "decode/encode is not the identity"
        );
        assert_eq!(Manifest::decode(&encoded).as_ref(), Ok(&manifest));
    }
});
