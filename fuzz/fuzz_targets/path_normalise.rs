//! Path normalisation: whatever a client sends, an accepted path is in normal
//! form, and the path the origin is sent normalises to exactly the path that
//! was checked (no second interpretation downstream). The input goes through
//! `http`'s request-target parser first, as every request does, so the path
//! is what `Uri::path()` hands the pipeline (no query, no fragment).
#![no_main]

use libfuzzer_sys::fuzz_target;
use membergate::hygiene::path::normalise;

fuzz_target!(|data: &[u8]| {
    let Ok(target) = http::uri::PathAndQuery::try_from(data) else {
        return;
    };
    let Ok(path) = normalise(target.path()) else {
        return;
    };
    let decoded = &path.decoded;
    assert!(decoded.starts_with('/'), "{decoded:?}");
    assert!(!decoded.contains("//"), "{decoded:?}");
    assert!(
        decoded
            .split('/')
            .all(|segment| segment != "." && segment != ".."),
        "dot segment left in {decoded:?}"
    );
    assert!(
        !decoded.contains(['\\', ';', '?', '#']) && !decoded.chars().any(char::is_control),
        "separator or control character in {decoded:?}"
    );
    assert!(
        path.encoded.bytes().all(|b| b.is_ascii_graphic()),
        "unencoded byte in {:?}",
        path.encoded
    );
    let again = normalise(&path.encoded);
    assert_eq!(
        again.as_ref(),
        Ok(&path),
        "the origin would see another path"
    );
});
