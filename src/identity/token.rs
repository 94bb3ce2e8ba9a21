//! Self-minted visitor identification tokens: compact, URL-safe, signed.
//!
//! ```text
//! mgv1.<key id>.<payload>.<signature>
//! payload   = base64url(JSON {"email","firstName","lastName","aud","iat","exp"})
//! signature = base64url(HMAC-SHA256(key, "mgv1.<key id>.<payload>"))
//! ```
//!
//! The first configured key signs; every configured key verifies, so a key is
//! rotated by adding the new one first and removing the old one a token
//! lifetime later. Like HubSpot's tokens, these identify a visitor to a chat
//! widget; they are not credentials and open nothing else.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

const VERSION: &str = "mgv1";
/// Clock difference tolerated between the minting and the verifying host.
const SKEW: i64 = 60;
/// Tokens longer than this are refused before any work.
const MAX_TOKEN_BYTES: usize = 4096;

/// Who a token identifies, in HubSpot's field names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub email: String,
    #[serde(rename = "firstName", default)]
    pub first_name: String,
    #[serde(rename = "lastName", default)]
    pub last_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    #[serde(flatten)]
    pub identity: Identity,
    /// The site the token was minted for.
    pub aud: String,
    pub iat: i64,
    pub exp: i64,
}

/// One signing or verification key.
#[derive(Clone)]
pub struct Key {
    pub id: String,
    mac: Hmac<Sha256>,
    /// Tells this key from another with the same id (a secret replaced in
    /// place), without keeping the secret: a MAC of a fixed label.
    fingerprint: Fingerprint,
}

/// Which key, id and secret, signed a token.
pub type Fingerprint = [u8; 16];

impl Key {
    pub fn new(id: &str, secret: &[u8]) -> Result<Key, String> {
        if id.is_empty()
            || id.len() > 32
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "key id {id:?}: use 1 to 32 letters, digits, - or _"
            ));
        }
        if secret.len() < 32 {
            return Err(format!("key {id:?}: the secret needs at least 32 bytes"));
        }
        let mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|e| e.to_string())?;
        let mut label = mac.clone();
        label.update(b"membergate key fingerprint ");
        label.update(id.as_bytes());
        let mut fingerprint = Fingerprint::default();
        fingerprint.copy_from_slice(&label.finalize().into_bytes()[..16]);
        Ok(Key {
            id: id.to_owned(),
            mac,
            fingerprint,
        })
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Why a token was refused. The messages are safe to show a caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    Malformed,
    UnknownKey,
    BadSignature,
    Expired,
    NotYetValid,
    WrongAudience,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Invalid::Malformed => "the token is malformed",
            Invalid::UnknownKey => "the token was signed with an unknown key",
            Invalid::BadSignature => "the token's signature does not match",
            Invalid::Expired => "the token has expired",
            Invalid::NotYetValid => "the token is not valid yet",
            Invalid::WrongAudience => "the token was minted for another site",
        })
    }
}

/// The configured keys: the first signs, all verify.
#[derive(Debug, Clone)]
pub struct Keys {
    keys: Vec<Key>,
}

impl Keys {
    pub fn new(keys: Vec<Key>) -> Result<Keys, String> {
        if keys.is_empty() {
            return Err("at least one identification key is needed".into());
        }
        Ok(Keys { keys })
    }

    /// The key new tokens are signed with, as its fingerprint.
    pub fn signer(&self) -> Fingerprint {
        self.keys
            .first()
            .map_or_else(Fingerprint::default, |k| k.fingerprint)
    }

    pub fn mint(&self, identity: &Identity, audience: &str, now: i64, lifetime: i64) -> String {
        let claims = Claims {
            identity: identity.clone(),
            aud: audience.to_owned(),
            iat: now,
            exp: now + lifetime,
        };
        // Serialising plain strings and integers cannot fail.
        let json = serde_json::to_vec(&claims).unwrap_or_default();
        let key = &self.keys[0];
        let signed = format!("{VERSION}.{}.{}", key.id, URL_SAFE_NO_PAD.encode(json));
        let mut mac = key.mac.clone();
        mac.update(signed.as_bytes());
        let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{signed}.{signature}")
    }

    /// Checks the signature (constant time), the lifetime and, when given,
    /// the audience.
    pub fn verify(&self, token: &str, audience: Option<&str>, now: i64) -> Result<Claims, Invalid> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Invalid::Malformed);
        }
        let (signed, signature) = token.rsplit_once('.').ok_or(Invalid::Malformed)?;
        let mut parts = signed.split('.');
        let (Some(VERSION), Some(key_id), Some(payload), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Invalid::Malformed);
        };
        let key = self
            .keys
            .iter()
            .find(|k| k.id == key_id)
            .ok_or(Invalid::UnknownKey)?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| Invalid::Malformed)?;
        let mut mac = key.mac.clone();
        mac.update(signed.as_bytes());
        mac.verify_slice(&signature)
            .map_err(|_| Invalid::BadSignature)?;
        let json = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| Invalid::Malformed)?;
        let claims: Claims = serde_json::from_slice(&json).map_err(|_| Invalid::Malformed)?;
        if now >= claims.exp {
            return Err(Invalid::Expired);
        }
        if claims.iat > now + SKEW {
            return Err(Invalid::NotYetValid);
        }
        if audience.is_some_and(|a| a != claims.aud) {
            return Err(Invalid::WrongAudience);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ada() -> Identity {
        Identity {
            email: "ada@example.com".into(),
            first_name: "Ada".into(),
            last_name: "Lovelace".into(),
        }
    }

    fn keys(ids: &[&str]) -> Keys {
        Keys::new(
            ids.iter()
                .map(|id| {
                    Key::new(id, format!("{id}-secret-{}", "x".repeat(32)).as_bytes()).unwrap()
                })
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn minted_tokens_verify_until_they_expire() {
        let k = keys(&["k1"]);
        let token = k.mint(&ada(), "demo", 1_000, 3_600);
        assert!(token.starts_with("mgv1.k1."));
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        );
        let claims = k.verify(&token, Some("demo"), 2_000).unwrap();
        assert_eq!(
            (claims.identity, claims.iat, claims.exp),
            (ada(), 1_000, 4_600)
        );
        assert_eq!(k.verify(&token, Some("demo"), 4_600), Err(Invalid::Expired));
        assert_eq!(
            k.verify(&token, Some("other"), 2_000),
            Err(Invalid::WrongAudience)
        );
        assert_eq!(
            k.verify(&token, Some("demo"), 900),
            Err(Invalid::NotYetValid)
        );
        assert!(k.verify(&token, None, 2_000).is_ok());
    }

    #[test]
    fn rotation_keeps_old_tokens_valid_until_the_old_key_goes() {
        let old = keys(&["k1"]);
        let token = old.mint(&ada(), "demo", 1_000, 3_600);
        let rotated = keys(&["k2", "k1"]);
        assert!(rotated.verify(&token, None, 1_001).is_ok());
        assert!(
            rotated
                .mint(&ada(), "demo", 1_000, 60)
                .starts_with("mgv1.k2.")
        );
        let retired = keys(&["k2"]);
        assert_eq!(
            retired.verify(&token, None, 1_001),
            Err(Invalid::UnknownKey)
        );
    }

    #[test]
    fn any_change_breaks_the_signature() {
        let k = keys(&["k1"]);
        let token = k.mint(&ada(), "demo", 1_000, 3_600);
        let (signed, _) = token.rsplit_once('.').unwrap();
        let forged_claims = Claims {
            identity: Identity {
                email: "eve@example.com".into(),
                ..ada()
            },
            aud: "demo".into(),
            iat: 1_000,
            exp: 9_999_999,
        };
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged_claims).unwrap());
        let (prefix, _) = signed.rsplit_once('.').unwrap();
        let forged = format!("{prefix}.{payload}.{}", token.rsplit_once('.').unwrap().1);
        assert_eq!(k.verify(&forged, None, 1_001), Err(Invalid::BadSignature));
        let other_key = keys(&["k1"]);
        let _ = other_key;
        let mut flipped = token.clone().into_bytes();
        let last = flipped.len() - 2;
        flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).unwrap();
        assert!(k.verify(&flipped, None, 1_001).is_err());
        for bad in [
            "",
            "mgv1",
            "mgv1.k1.x",
            "mgv2.k1.e30.AAAA",
            "mgv1.k1.e30.AAAA.x",
            "a.b.c.d",
        ] {
            assert!(k.verify(bad, None, 1_001).is_err(), "{bad}");
        }
        assert_eq!(
            k.verify(&"a".repeat(5000), None, 1),
            Err(Invalid::Malformed)
        );
    }

    #[test]
    fn keys_need_an_id_and_32_secret_bytes() {
        assert!(Key::new("k1", &[1; 31]).is_err());
        assert!(Key::new("", &[1; 32]).is_err());
        assert!(Key::new("k.1", &[1; 32]).is_err());
        assert!(Keys::new(vec![]).is_err());
    }
}
