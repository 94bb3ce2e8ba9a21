//! Session cookies: any `Cookie` headers, split and matched by name, then
//! opened. A value opens only if the gateway sealed exactly that spelling.
#![no_main]

use http::HeaderValue;
use http::header::{COOKIE, HeaderMap};
use libfuzzer_sys::fuzz_target;
use membergate::session::{Seal, cookie_values};

/// The secret the seed corpus was sealed with (`cargo fuzz` finds valid
/// values only through the seeds: it cannot forge the tag).
const SECRET: [u8; 32] = [42; 32];
const NAME: &str = "__Host-membergate";

fuzz_target!(|data: &[u8]| {
    let seal = Seal::new(&SECRET);
    let mut headers = HeaderMap::new();
    for line in data.split(|&b| b == b'\n') {
        if let Ok(value) = HeaderValue::from_bytes(line) {
            headers.append(COOKIE, value);
        }
    }
    for value in cookie_values(&headers, NAME) {
        assert!(!value.contains(';'), "{value:?}");
        assert_eq!(value, value.trim(), "untrimmed value");
        if let Some(id) = seal.open(value) {
            assert_eq!(seal.seal(&id), value, "a second spelling opened");
        }
    }
});
