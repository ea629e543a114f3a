//! `stream_proxy.tcp` / `.udp` entries: any YAML value is accepted or
//! refused with an error, never a panic; every accepted spec has a port.
#![no_main]

use apisix_stream::config::listen::parse_entry;
use apisix_stream::config::ProxyProtocol;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(value) = serde_yaml::from_str::<serde_yaml::Value>(text) else {
        return;
    };
    for is_tcp in [true, false] {
        let defaults = ProxyProtocol {
            enable_tcp_pp: true,
            enable_tcp_pp_to_upstream: true,
        };
        if let Ok(specs) = parse_entry(&value, is_tcp, &defaults) {
            for s in specs {
                assert_ne!(s.addr.port(), 0, "a listener on port 0 from {text:?}");
                assert!(is_tcp || !s.proxy_protocol, "PROXY protocol on udp");
            }
        }
    }
});
