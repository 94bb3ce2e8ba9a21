//! Where a visitor is sent after login, logout or registration: whatever
//! `return_to::safe` keeps stays on this site when a browser resolves it
//! against any page of the site (a WHATWG URL parser: the `url` crate), and
//! it can always be sent as a `Location` header (attack catalogue C1).
#![no_main]

use http::HeaderValue;
use libfuzzer_sys::fuzz_target;
use membergate::portal::return_to::safe;
use url::Url;

fuzz_target!(|data: &[u8]| {
    // Form and query values reach `safe` as text, decoded once.
    let Ok(value) = std::str::from_utf8(data) else {
        return;
    };
    let kept = safe(Some(value));
    assert!(kept == "/" || kept == value, "{value:?} became {kept:?}");
    assert!(
        HeaderValue::from_str(&kept).is_ok(),
        "{kept:?} cannot be a Location"
    );
    for page in ["https://gw.example/", "https://gw.example/a/b?c#d"] {
        let base = Url::parse(page).expect("a fixed base URL");
        let resolved = base
            .join(&kept)
            .unwrap_or_else(|e| panic!("{kept:?} does not resolve against {page}: {e}"));
        assert_eq!(
            (
                resolved.scheme(),
                resolved.host_str(),
                resolved.port(),
                resolved.username(),
                resolved.password()
            ),
            ("https", Some("gw.example"), None, "", None),
            "{kept:?} leaves the site: {resolved}"
        );
    }
});
