//! Fuzzes the object metadata a shield sends a sibling: the JSON, the
//! manifest inside it and the hex hashes must parse or fail cleanly.

#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_proto::link::{decode_manifest, PeerObject};

fuzz_target!(|data: &[u8]| {
    if let Ok(PeerObject::Cached {
        manifest_b64,
        hashes_hex,
        ..
    }) = serde_json::from_slice::<PeerObject>(data)
    {
        let _ = decode_manifest(manifest_b64.as_deref());
        for hash in &hashes_hex {
            let _ = shoal_core::PieceHash::from_hex(hash);
        }
    }
});
