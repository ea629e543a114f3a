//! TLS ClientHello peeking: any bytes give an SNI, a request for more, or
//! a refusal, never a panic; an SNI is never longer than a DNS name.
#![no_main]

use apisix_stream::tls::clienthello::{parse, Hello};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Hello::Done(Some(name)) = parse(data) {
        assert!(name.len() <= 255, "{name}");
    }
});
