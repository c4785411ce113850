//! The selector's TOML configuration: any text is a validated config or a
//! named error, never a panic; a valid config's services always match.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = toml::from_str::<shoal_selector::SelectorConfig>(text) else {
        return;
    };
    if config.validate().is_ok() {
        let table = shoal_selector::services::ServiceTable::new(config.effective_services());
        for service in table.all() {
            let host = service.hosts.first().map(String::as_str);
            let path = format!("{}x", service.path_prefix);
            assert!(table.find(host, &path).is_some());
        }
    }
});
