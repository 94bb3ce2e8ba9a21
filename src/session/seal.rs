//! The session cookie's value, and finding cookies in request headers.
//!
//! A value is `base64url(id ‖ tag)`: the 256-bit session id and the first 128
//! bits of HMAC-SHA256 over it. A forged or tampered value is refused here,
//! before any store or cache lookup. Only one spelling of a value opens: the
//! length is exact and base64 without padding has no spare bits at 48 bytes.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The length of a sealed value: 48 bytes in base64 without padding.
const SEALED_LEN: usize = 64;

/// Seals session ids into cookie values and opens them again.
#[derive(Clone)]
pub struct Seal {
    /// HMAC keyed once: cloning it skips the two key-pad compressions per cookie.
    mac: HmacSha256,
}

impl Seal {
    /// A seal with a key of its own, derived from the gateway secret.
    pub fn new(secret: &[u8; 32]) -> Seal {
        let mut derive = keyed(secret);
        derive.update(b"membergate session cookie v1");
        let key: [u8; 32] = derive.finalize().into_bytes().into();
        Seal { mac: keyed(&key) }
    }

    /// The cookie value for a session id.
    pub fn seal(&self, id: &[u8; 32]) -> String {
        let mut raw = [0u8; 48];
        raw[..32].copy_from_slice(id);
        raw[32..].copy_from_slice(&self.tag(id));
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// The session id inside a cookie value, if its tag is right (compared in
    /// constant time).
    pub fn open(&self, value: &str) -> Option<[u8; 32]> {
        if value.len() != SEALED_LEN {
            return None;
        }
        let raw = URL_SAFE_NO_PAD.decode(value).ok()?;
        let (id, tag) = raw.split_at(32);
        let id: [u8; 32] = id.try_into().ok()?;
        let mut mac = self.mac.clone();
        mac.update(&id);
        mac.verify_truncated_left(tag).ok()?;
        Some(id)
    }

    fn tag(&self, id: &[u8; 32]) -> [u8; 16] {
        let mut mac = self.mac.clone();
        mac.update(id);
        let full = mac.finalize().into_bytes();
        let mut tag = [0u8; 16];
        tag.copy_from_slice(&full[..16]);
        tag
    }
}

fn keyed(key: &[u8; 32]) -> HmacSha256 {
    match HmacSha256::new_from_slice(key) {
        Ok(mac) => mac,
        // HMAC takes keys of any length, so this arm never runs.
        Err(_) => unreachable!("HMAC-SHA256 accepts a 32-byte key"),
    }
}

/// Every value of cookie `name` across all `Cookie` headers.
pub fn cookie_values<'a>(
    headers: &'a http::HeaderMap,
    name: &'a str,
) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(move |pair| {
            let (k, v) = pair.split_once('=')?;
            (k.trim() == name).then(|| v.trim())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_id_opens_and_a_changed_character_does_not() {
        let seal = Seal::new(&[7; 32]);
        let value = seal.seal(&[1; 32]);
        assert_eq!(seal.open(&value), Some([1; 32]));
        let mut changed = value.into_bytes();
        changed[40] = if changed[40] == b'A' { b'B' } else { b'A' };
        let changed = String::from_utf8(changed).unwrap_or_default();
        assert_eq!(seal.open(&changed), None);
        assert_eq!(Seal::new(&[8; 32]).open(&seal.seal(&[1; 32])), None);
    }
}
