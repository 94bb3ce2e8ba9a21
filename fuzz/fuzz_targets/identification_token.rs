//! Self-minted identification tokens: arbitrary strings never verify unless
//! minted with the key, every minted token verifies to what was minted, and
//! any one changed byte, another audience or a later clock refuses it.
#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use membergate::identity::token::{Identity, Key, Keys};

#[derive(Arbitrary, Debug)]
struct Input {
    /// Any text offered as a token.
    offered: String,
    email: String,
    first_name: String,
    last_name: String,
    audience: String,
    issued_at: u32,
    lifetime: u16,
    /// Which byte of the minted token to change, and to what.
    changed_at: u16,
    changed_to: u8,
}

fn keys() -> Keys {
    let key = Key::new("k1", b"fuzzing-key-fuzzing-key-fuzzing-key");
    Keys::new(vec![key.expect("a valid test key")]).expect("one key")
}

fuzz_target!(|input: Input| {
    let keys = keys();
    let now = i64::from(input.issued_at);
    if let Ok(claims) = keys.verify(&input.offered, None, now) {
        // Only a seed minted with this key can get here.
        let lifetime = claims.exp - claims.iat;
        let again = keys.mint(&claims.identity, &claims.aud, claims.iat, lifetime);
        assert_eq!(again, input.offered, "a second spelling verified");
    }

    let identity = Identity {
        email: input.email,
        first_name: input.first_name,
        last_name: input.last_name,
    };
    let lifetime = i64::from(input.lifetime) + 1;
    let token = keys.mint(&identity, &input.audience, now, lifetime);
    let Ok(claims) = keys.verify(&token, Some(&input.audience), now) else {
        assert!(
            token.len() > 4096,
            "a fresh token of {} bytes was refused",
            token.len()
        );
        return;
    };
    assert_eq!(claims.identity, identity);
    assert_eq!(
        (claims.aud.as_str(), claims.iat, claims.exp),
        (input.audience.as_str(), now, now + lifetime)
    );
    assert!(
        keys.verify(&token, None, now + lifetime).is_err(),
        "expired token verified"
    );
    let other_audience = format!("{}x", input.audience);
    assert!(
        keys.verify(&token, Some(&other_audience), now).is_err(),
        "wrong audience verified"
    );

    let mut changed = token.clone().into_bytes();
    let at = usize::from(input.changed_at) % changed.len();
    if changed[at] != input.changed_to {
        changed[at] = input.changed_to;
        if let Ok(changed) = String::from_utf8(changed) {
            assert!(
                keys.verify(&changed, None, now).is_err(),
                "tampered token verified: {changed}"
            );
        }
    }
});
