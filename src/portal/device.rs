//! Device cookies (OWASP, "Slow Down Online Guessing Attacks with Device
//! Cookies"): a browser that has logged in to an account carries a cookie
//! naming that account, and its login attempts for the account are not held
//! by the account-wide ceiling, which guesses from many addresses can reach.
//! The owner, on a browser they used before, is not locked out by someone
//! else's guessing (attack catalogue E1). The per-IP and per-(account, IP)
//! limits still apply to it.
//!
//! A value is `base64url(day ‖ tag)`: the day it was issued (days since the
//! epoch, 4 bytes little-endian) and the first 128 bits of HMAC-SHA256 over
//! the canonical email and that day. It says nothing readable about the
//! account, cannot be made for another account, and is good for a year.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// How long a browser stays known without logging in again.
const LIFETIME_DAYS: i64 = 365;

pub struct DeviceCookies {
    /// Keyed once; cloned per use.
    mac: HmacSha256,
    /// `<cookie_name>-device`.
    name: String,
    secure: bool,
}

impl DeviceCookies {
    /// `key` is derived from the gateway secret for this use alone.
    pub fn new(key: &[u8; 32], cookie_name: &str, secure: bool) -> DeviceCookies {
        let mac = match HmacSha256::new_from_slice(key) {
            Ok(mac) => mac,
            // HMAC takes keys of any length, so this arm never runs.
            Err(_) => unreachable!("HMAC-SHA256 accepts a 32-byte key"),
        };
        DeviceCookies {
            mac,
            name: format!("{cookie_name}-device"),
            secure,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The `Set-Cookie` value after `canonical` logged in at `now` (seconds).
    /// `Path=/` like the gateway's other cookies (a `__Host-` name requires
    /// it); origins never see it (`proxy::access::withhold_gateway_cookies`).
    pub fn set_cookie(&self, canonical: &str, now: i64) -> String {
        let day = day_of(now);
        let mut raw = [0u8; 20];
        raw[..4].copy_from_slice(&day.to_le_bytes());
        raw[4..].copy_from_slice(&self.mac_over(canonical, day).finalize().into_bytes()[..16]);
        self.cookie(
            URL_SAFE_NO_PAD.encode(raw),
            cookie::time::Duration::days(LIFETIME_DAYS),
        )
    }

    /// The `Set-Cookie` value that removes the cookie: its account is
    /// deleted, and the browser is known for it no longer.
    pub fn clear_cookie(&self) -> String {
        self.cookie(String::new(), cookie::time::Duration::ZERO)
    }

    /// The cookie with `value`, kept for `max_age`.
    fn cookie(&self, value: String, max_age: cookie::time::Duration) -> String {
        cookie::Cookie::build((self.name.as_str(), value))
            .path("/")
            .secure(self.secure)
            .http_only(true)
            .same_site(cookie::SameSite::Strict)
            .max_age(max_age)
            .build()
            .to_string()
    }

    /// Whether one of the request's device cookies was issued to `canonical`
    /// within the last year (tags compared in constant time).
    pub fn vouches_for(&self, headers: &http::HeaderMap, canonical: &str, now: i64) -> bool {
        crate::session::cookie_values(headers, &self.name).any(|value| {
            let Ok(raw) = URL_SAFE_NO_PAD.decode(value) else {
                return false;
            };
            let Some((day, tag)) = raw.split_first_chunk::<4>() else {
                return false;
            };
            let day = u32::from_le_bytes(*day);
            let age = day_of(now) as i64 - day as i64;
            if tag.len() != 16 || !(0..=LIFETIME_DAYS).contains(&age) {
                return false;
            }
            self.mac_over(canonical, day)
                .verify_truncated_left(tag)
                .is_ok()
        })
    }

    /// Whether the request carries a device cookie at all: with none that
    /// vouches for an account, the browser last logged in to another one.
    pub fn present(&self, headers: &http::HeaderMap) -> bool {
        crate::session::cookie_values(headers, &self.name)
            .next()
            .is_some()
    }

    /// The MAC of a cookie issued to `canonical` on `day`, ready to finish.
    fn mac_over(&self, canonical: &str, day: u32) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(&day.to_le_bytes());
        mac.update(canonical.as_bytes());
        mac
    }
}

fn day_of(now: i64) -> u32 {
    u32::try_from(now.max(0) / 86_400).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers_with(cookie: &str) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        let pair = cookie.split(';').next().unwrap();
        headers.insert(http::header::COOKIE, pair.parse().unwrap());
        headers
    }

    #[test]
    fn a_cookie_vouches_for_its_account_for_a_year() {
        let devices = DeviceCookies::new(&[7; 32], "mg", true);
        let now = 1_780_000_000;
        let cookie = devices.set_cookie("ada@example.com", now);
        assert!(cookie.starts_with("mg-device="), "{cookie}");
        assert!(
            cookie.contains("Path=/;") && cookie.contains("HttpOnly"),
            "{cookie}"
        );
        let headers = headers_with(&cookie);
        assert!(devices.vouches_for(&headers, "ada@example.com", now));
        assert!(devices.vouches_for(&headers, "ada@example.com", now + 364 * 86_400));
        assert!(!devices.vouches_for(&headers, "ada@example.com", now + 367 * 86_400));
        assert!(!devices.vouches_for(&headers, "bob@example.com", now));
        let other_key = DeviceCookies::new(&[8; 32], "mg", true);
        assert!(!other_key.vouches_for(&headers, "ada@example.com", now));
        for forged in [
            "mg-device=",
            "mg-device=AAAA",
            "mg-device=%%%",
            "mg-device=ada",
        ] {
            assert!(!devices.vouches_for(&headers_with(forged), "ada@example.com", now));
        }
    }
}
