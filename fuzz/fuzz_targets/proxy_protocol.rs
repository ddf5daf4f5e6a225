//! Fuzzes the PROXY protocol header parser: it never panics, a complete header never claims more
//! bytes than it was given, and a complete header reads the same whatever follows it (the bytes
//! after the header are the request's, and must not change where the header ends or what it says).
#![no_main]

use libfuzzer_sys::fuzz_target;
use seawall_http::server::proxy_protocol::{parse, Parse};

fuzz_target!(|data: &[u8]| {
    if let Parse::Complete { len, source } = parse(data) {
        assert!(len <= data.len());
        assert_eq!(parse(&data[..len]), Parse::Complete { len, source });
        for cut in 0..len {
            assert_eq!(parse(&data[..cut]), Parse::Partial, "a prefix of a header is partial");
        }
    }
});
