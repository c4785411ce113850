//! Fuzzes the inter-cache auth token: parsing never panics, an accepted
//! token re-formats to the same text, and verification with a fixed key
//! never accepts a token it did not sign.

#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_core::auth::{parse, ClusterKey};

fuzz_target!(|data: &[u8]| {
    let key = ClusterKey::from_secret("fuzzing secret, sixteen+ bytes").expect("valid secret");
    if let Ok(token) = parse(data) {
        let hex: String = token.mac.iter().map(|b| format!("{b:02x}")).collect();
        let text = format!("v1.{}.{}.{}", token.node, token.expires_unix_s, hex);
        // Canonical form only: no leading zeros, lower-case hex.
        if text.as_bytes() == data {
            let signed = key.sign(token.node, token.expires_unix_s, "GET", "/x").expect("node name was valid");
            let accepted = key.verify(Some(data), "GET", "/x", token.expires_unix_s, 0).is_ok();
            assert_eq!(accepted, signed.as_bytes() == data);
        }
    }
});
