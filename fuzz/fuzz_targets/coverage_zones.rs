//! Fuzzes the selector's coverage-zone file parser: any text parses or
//! fails with an error; a parsed map answers lookups without panicking.

#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_select::zones::Zones;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(zones) = Zones::parse(text) {
            for addr in ["10.1.2.3", "::1", "2001:db8::1", "0.0.0.0"] {
                let zone = zones.zone_of(addr.parse().unwrap()).to_string();
                let _ = zones.reach(&zone, "eu-west");
            }
        }
    }
});
