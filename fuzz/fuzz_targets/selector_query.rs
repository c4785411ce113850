//! The selector's `/plan` and `/explain` query strings: any bytes give a
//! typed request or a 400 with a reason, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::net::{IpAddr, Ipv4Addr};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (query, host) = text.split_once('\n').unwrap_or((text, ""));
    let client = IpAddr::V4(Ipv4Addr::LOCALHOST);
    match shoal_selector::api::parse_query(query, client, Some(host)) {
        Ok(ask) => {
            assert!(ask.path.as_str().starts_with('/'));
            assert!(ask.exclude.len() <= shoal_selector::decide::EXCLUDE_MAX);
        }
        Err(refusal) => {
            assert!(refusal.0.is_client_error());
            assert!(!refusal.1.is_empty());
        }
    }
});
