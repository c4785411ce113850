//! Fuzzes the BEP 10 extension-handshake reader: whatever it accepts
//! encodes to a handshake that reads back the same.

#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_peer::extension::ExtensionHandshake;

fuzz_target!(|data: &[u8]| {
    if let Ok(handshake) = ExtensionHandshake::decode(data) {
        let again = ExtensionHandshake::decode(&handshake.encode());
        assert_eq!(again.as_ref(), Ok(&handshake));
    }
});
