//! Whole config.yaml texts: parsed or refused with one error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = apisix_stream::config::Config::from_yaml(text);
    }
});
