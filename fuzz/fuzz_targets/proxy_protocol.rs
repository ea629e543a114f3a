//! PROXY protocol headers: any bytes parse, ask for more, or are refused;
//! a parsed header never claims more bytes than it was given, a v1 header
//! never more than 107, and a written header parses back to itself.
#![no_main]

use apisix_stream::proxy::proxy_protocol::{parse, v1_header, Header, ParseError, V1_MAX, V2_MAX};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Ok((header, used)) => {
            assert!(used <= data.len());
            if data[0] == b'P' {
                assert!(used <= V1_MAX);
            } else {
                assert!(used <= V2_MAX);
            }
            // Every prefix of a complete header is incomplete, never invalid.
            for n in 0..used {
                assert_eq!(parse(&data[..n]), Err(ParseError::Incomplete));
            }
            if let Header::Proxy { src, dst } = header {
                let text = v1_header(src, dst);
                assert!(text.len() <= V1_MAX);
                assert!(parse(text.as_bytes()).is_ok());
            }
        }
        Err(ParseError::Incomplete) => assert!(data.len() < V2_MAX),
        Err(ParseError::Invalid(_)) => {}
    }
});
